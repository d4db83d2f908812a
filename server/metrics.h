/*
 * metrics.h - the server's Prometheus metrics: request counts by HTTP status, TTFT / TPOT /
 * end-to-end latency histograms, token counters and gauges (queue depth, running sequences,
 * KV pages), rendered as Prometheus text exposition format.
 *
 * Not here: HTTP or engine access; callers push numbers in.
 * Thread: every function may be called from any thread (one mutex inside).
 */
#ifndef QV_SERVER_METRICS_H
#define QV_SERVER_METRICS_H

#include <stddef.h>

#include "server/tenant.h"

typedef struct qv_metrics qv_metrics;

/* Owner: caller (qv_metrics_destroy). Returns NULL when out of memory. */
qv_metrics *qv_metrics_create(void);
/* Accepts NULL. */
void qv_metrics_destroy(qv_metrics *m);

/* One finished HTTP request on a generation endpoint (or any endpoint: ttft_s/tpot_s < 0
 * skip those histograms). */
void qv_metrics_request(qv_metrics *m, int http_status, int n_in, int n_out, double ttft_s,
                        double tpot_s, double e2e_s);
/* Gauges, overwritten by the engine thread after each step. */
void qv_metrics_gauges(qv_metrics *m, int queue_depth, int running, int kv_used, int kv_total);
/* Scheduler counters (engine/engine.h qv_engine_stats, totals since start), overwritten by the
 * engine thread after each step. */
/* CUDA graph counters of the engine (qv_engine_stats; all 0 on the CPU backend). */
/* Engine step counters: logits rows sampled on the host / picked on the device; JSON-mode and
 * structured-output masks computed (a pass over the vocabulary) / taken from the cache, and
 * constrained sequences that ended unfinished (no allowed token left). */
void qv_metrics_sampling(qv_metrics *m, unsigned long long rows_host,
                         unsigned long long rows_device, unsigned long long masks_computed,
                         unsigned long long masks_cached, unsigned long long dead_ends);
/* Engine steps (forward passes); speculative decoding: draft tokens checked, and kept. */
void qv_metrics_steps(qv_metrics *m, unsigned long long steps, unsigned long long drafts,
                      unsigned long long kept);
void qv_metrics_graphs(qv_metrics *m, unsigned long long captures, unsigned long long replays,
                       unsigned long long eager, unsigned long long refused, double capture_s);

/* The engine's prefix cache (qv_engine_stats prefix_* and kv_cached/evictable_pages). */
typedef struct qv_metrics_prefix_cache {
    unsigned long long query_tokens, hit_tokens, evictions;
    int pages, evictable_pages;
} qv_metrics_prefix_cache;
void qv_metrics_prefix(qv_metrics *m, const qv_metrics_prefix_cache *pc);
/* The Responses API's store of kept responses and conversations (server/resp_store.c). */
void qv_metrics_resp_store(qv_metrics *m, size_t records, size_t bytes, size_t max_bytes,
                           unsigned long long evictions);
void qv_metrics_scheduler(qv_metrics *m, unsigned long long preemptions,
                          unsigned long long recomputed_tokens);

/* Adapter registry numbers (adapters/registry.h stats), overwritten by the engine thread. */
typedef struct qv_metrics_adapter_stats {
    unsigned long long hits, misses, loads, load_failures, evictions_host, evictions_device;
    double load_latency_sum_s, load_latency_max_s;
    unsigned long long host_bytes, device_bytes, n_entries, n_loading;
    unsigned long long n_host, n_device; /* loaded versions per residency tier */
    /* the CUDA adapter pool's pinned host tier (0 on the CPU): images, their bytes, evictions;
     * and admissions put off while an adapter travelled to the device */
    unsigned long long n_pinned, pinned_bytes, evictions_pinned, admit_deferrals;
} qv_metrics_adapter_stats;

/* Registry counters plus vLLM's lora_requests_info labels: comma-separated names of adapters
 * with running / waiting requests (copied, truncated at 1 KiB) and max_lora. */
void qv_metrics_adapters(qv_metrics *m, const qv_metrics_adapter_stats *st, const char *running,
                         const char *waiting, int max_lora);

/* Counts one finished generation request on `adapter` (NULL = the base model): the request,
 * its prompt and generated tokens, its time to first token and time per output token (< 0:
 * none). The first QV_METRICS_MAX_ADAPTER_LABELS distinct names get their own label; later ones
 * are counted under adapter="other", so the label cardinality stays bounded. */
#define QV_METRICS_MAX_ADAPTER_LABELS 32
void qv_metrics_adapter_request(qv_metrics *m, const char *adapter, int n_in, int n_out,
                                double ttft_s, double tpot_s);

/* quiver_build_info{version,commit,device} 1 (the strings are copied, cut at 63 bytes). */
void qv_metrics_build_info(qv_metrics *m, const char *version, const char *commit,
                           const char *device);

/* Per-tenant counters (tenant.h), copied; the HTTP thread of a scrape pushes them just before
 * rendering. */
void qv_metrics_tenants(qv_metrics *m, const qv_tenant_stats *rows, int n);

/* Renders the exposition text, with the standard process_* metrics of the Prometheus client
 * libraries (resident and virtual memory, CPU seconds, start time, open and maximum file
 * descriptors; Linux /proc). Owner: caller (qv_free). NULL when out of memory. */
char *qv_metrics_render(qv_metrics *m, size_t *len);

#endif
