/*
 * metrics.c - Prometheus counters, gauges and fixed-bucket histograms for the server.
 *
 * Invariant: every field is guarded by `mu`. Status codes are counted in a fixed table
 * (100..599) and adapter names in a table of QV_METRICS_MAX_ADAPTER_LABELS plus "other", so
 * the label cardinality is bounded. Thread: any.
 */
#include "server/metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/core.h"

#define N_BUCKETS 14
static const double bucket_le[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,  0.25, 0.5,
                                            1.0,   2.5,  5.0,   10.0, 30.0, 60.0, 120.0};

typedef struct histogram {
    unsigned long long counts[N_BUCKETS + 1]; /* last: +Inf */
    double sum;
    unsigned long long n;
} histogram;

/* What one adapter label counts: finished generation requests, their tokens, and their
 * time to first token and time per output token. */
typedef struct adapter_stats {
    unsigned long long requests, tokens_in, tokens_out;
    histogram ttft, tpot;
} adapter_stats;

struct qv_metrics {
    pthread_mutex_t mu;
    unsigned long long by_status[600];
    unsigned long long tokens_in, tokens_out;
    histogram ttft, tpot, e2e;
    int queue_depth, running, kv_used, kv_total;
    unsigned long long preemptions, recomputed_tokens;
    qv_metrics_prefix_cache pc;
    size_t rs_records, rs_bytes, rs_max; /* kept responses and conversations */
    unsigned long long rs_evictions;
    unsigned long long g_captures, g_replays, g_eager, g_refused;
    unsigned long long rows_host, rows_device; /* sampled tokens by where their row was used */
    unsigned long long masks_computed, masks_cached, dead_ends; /* JSON masks */
    unsigned long long steps, spec_drafts, spec_kept; /* engine steps, speculative decoding */
    double g_capture_s;
    /* adapters */
    qv_metrics_adapter_stats ad;
    char lora_running[1024], lora_waiting[1024];
    int max_lora;
    double lora_info_time;
    char adapter_name[QV_METRICS_MAX_ADAPTER_LABELS][136];
    adapter_stats per_adapter[QV_METRICS_MAX_ADAPTER_LABELS];
    int n_adapter_names;
    adapter_stats other, base;
    char version[64], commit[64], device[64];
    qv_tenant_stats *tenants; /* [n_tenants], qv_metrics_tenants' last copy */
    int n_tenants;
};

qv_metrics *qv_metrics_create(void) {
    qv_metrics *m = qv_calloc(1, sizeof(*m));
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void qv_metrics_destroy(qv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    qv_free(m->tenants);
    qv_free(m);
}

static void observe(histogram *h, double v) {
    if (v < 0) return;
    int i = 0;
    while (i < N_BUCKETS && v > bucket_le[i])
        i++;
    h->counts[i]++;
    h->sum += v;
    h->n++;
}

void qv_metrics_request(qv_metrics *m, int http_status, int n_in, int n_out, double ttft_s,
                        double tpot_s, double e2e_s) {
    pthread_mutex_lock(&m->mu);
    if (http_status >= 100 && http_status < 600) m->by_status[http_status]++;
    if (n_in > 0) m->tokens_in += (unsigned long long)n_in;
    if (n_out > 0) m->tokens_out += (unsigned long long)n_out;
    observe(&m->ttft, ttft_s);
    observe(&m->tpot, tpot_s);
    observe(&m->e2e, e2e_s);
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_gauges(qv_metrics *m, int queue_depth, int running, int kv_used, int kv_total) {
    pthread_mutex_lock(&m->mu);
    m->queue_depth = queue_depth;
    m->running = running;
    m->kv_used = kv_used;
    m->kv_total = kv_total;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_scheduler(qv_metrics *m, unsigned long long preemptions,
                          unsigned long long recomputed_tokens) {
    pthread_mutex_lock(&m->mu);
    m->preemptions = preemptions;
    m->recomputed_tokens = recomputed_tokens;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_prefix(qv_metrics *m, const qv_metrics_prefix_cache *pc) {
    pthread_mutex_lock(&m->mu);
    m->pc = *pc;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_resp_store(qv_metrics *m, size_t records, size_t bytes, size_t max_bytes,
                           unsigned long long evictions) {
    pthread_mutex_lock(&m->mu);
    m->rs_records = records;
    m->rs_bytes = bytes;
    m->rs_max = max_bytes;
    m->rs_evictions = evictions;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_sampling(qv_metrics *m, unsigned long long rows_host,
                         unsigned long long rows_device, unsigned long long masks_computed,
                         unsigned long long masks_cached, unsigned long long dead_ends) {
    pthread_mutex_lock(&m->mu);
    m->rows_host = rows_host;
    m->rows_device = rows_device;
    m->masks_computed = masks_computed;
    m->masks_cached = masks_cached;
    m->dead_ends = dead_ends;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_steps(qv_metrics *m, unsigned long long steps, unsigned long long drafts,
                      unsigned long long kept) {
    pthread_mutex_lock(&m->mu);
    m->steps = steps;
    m->spec_drafts = drafts;
    m->spec_kept = kept;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_graphs(qv_metrics *m, unsigned long long captures, unsigned long long replays,
                       unsigned long long eager, unsigned long long refused, double capture_s) {
    pthread_mutex_lock(&m->mu);
    m->g_captures = captures;
    m->g_replays = replays;
    m->g_eager = eager;
    m->g_refused = refused;
    m->g_capture_s = capture_s;
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_adapters(qv_metrics *m, const qv_metrics_adapter_stats *st, const char *running,
                         const char *waiting, int max_lora) {
    pthread_mutex_lock(&m->mu);
    m->ad = *st;
    snprintf(m->lora_running, sizeof(m->lora_running), "%s", running ? running : "");
    snprintf(m->lora_waiting, sizeof(m->lora_waiting), "%s", waiting ? waiting : "");
    m->max_lora = max_lora;
    m->lora_info_time = (double)time(NULL);
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_adapter_request(qv_metrics *m, const char *adapter, int n_in, int n_out,
                                double ttft_s, double tpot_s) {
    pthread_mutex_lock(&m->mu);
    adapter_stats *a = &m->base;
    if (adapter) {
        int i = 0;
        while (i < m->n_adapter_names && strcmp(m->adapter_name[i], adapter) != 0)
            i++;
        if (i == m->n_adapter_names && i < QV_METRICS_MAX_ADAPTER_LABELS &&
            strlen(adapter) < sizeof(m->adapter_name[i]) && strcmp(adapter, "other") != 0) {
            snprintf(m->adapter_name[i], sizeof(m->adapter_name[i]), "%s", adapter);
            m->n_adapter_names++;
        }
        a = i < m->n_adapter_names ? &m->per_adapter[i] : &m->other;
    }
    a->requests++;
    if (n_in > 0) a->tokens_in += (unsigned long long)n_in;
    if (n_out > 0) a->tokens_out += (unsigned long long)n_out;
    observe(&a->ttft, ttft_s);
    observe(&a->tpot, tpot_s);
    pthread_mutex_unlock(&m->mu);
}

void qv_metrics_tenants(qv_metrics *m, const qv_tenant_stats *rows, int n) {
    pthread_mutex_lock(&m->mu);
    if (n > m->n_tenants) {
        qv_tenant_stats *p = qv_realloc(m->tenants, (size_t)n * sizeof(*p));
        if (!p)
            n = m->n_tenants; /* keep the rows there is room for */
        else
            m->tenants = p;
    }
    if (n > 0) memcpy(m->tenants, rows, (size_t)n * sizeof(*rows));
    m->n_tenants = n;
    pthread_mutex_unlock(&m->mu);
}

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...) {
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *np = qv_realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* The series of histogram h with the label adapter="label" (no HELP / TYPE lines). */
static void put_hist_labeled(sbuf *b, const char *name, const char *label, const histogram *h) {
    unsigned long long cum = 0;
    for (int i = 0; i < N_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{adapter=\"%s\",le=\"%g\"} %llu\n", name, label, bucket_le[i], cum);
    }
    cum += h->counts[N_BUCKETS];
    put(b,
        "%s_bucket{adapter=\"%s\",le=\"+Inf\"} %llu\n%s_sum{adapter=\"%s\"} %.6f\n"
        "%s_count{adapter=\"%s\"} %llu\n",
        name, label, cum, name, label, h->sum, name, label, h->n);
}

static void put_hist(sbuf *b, const char *name, const char *help, const histogram *h) {
    put(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    unsigned long long cum = 0;
    for (int i = 0; i < N_BUCKETS; i++) {
        cum += h->counts[i];
        put(b, "%s_bucket{le=\"%g\"} %llu\n", name, bucket_le[i], cum);
    }
    cum += h->counts[N_BUCKETS];
    put(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, cum, name, h->sum,
        name, h->n);
}

void qv_metrics_build_info(qv_metrics *m, const char *version, const char *commit,
                           const char *device) {
    pthread_mutex_lock(&m->mu);
    snprintf(m->version, sizeof m->version, "%s", version ? version : "");
    snprintf(m->commit, sizeof m->commit, "%s", commit ? commit : "");
    snprintf(m->device, sizeof m->device, "%s", device ? device : "");
    pthread_mutex_unlock(&m->mu);
}

/* process_* as the Prometheus client libraries export them, from /proc (Linux); a value that
 * cannot be read is left out. */
static void put_process(sbuf *b) {
    const long page = sysconf(_SC_PAGESIZE), ticks = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        /* fields after the command name, which may hold spaces: from the last ')' on */
        const char *p = strrchr(buf, ')');
        unsigned long long ut = 0, st = 0, start = 0, vsize = 0;
        long long rss = 0;
        if (p && ticks > 0 &&
            sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d %*d "
                   "%llu %llu %lld",
                   &ut, &st, &start, &vsize, &rss) == 5) {
            double btime = 0;
            FILE *fs = fopen("/proc/stat", "r");
            char line[256];
            while (fs && fgets(line, sizeof line, fs))
                if (sscanf(line, "btime %lf", &btime) == 1) break;
            if (fs) fclose(fs);
            put(b,
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in "
                "seconds.\n# TYPE process_cpu_seconds_total counter\n"
                "process_cpu_seconds_total %.2f\n"
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                "# TYPE process_resident_memory_bytes gauge\n"
                "process_resident_memory_bytes %lld\n"
                "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                "# TYPE process_virtual_memory_bytes gauge\n"
                "process_virtual_memory_bytes %llu\n",
                (double)(ut + st) / (double)ticks, rss * (long long)page, vsize);
            if (btime > 0)
                put(b,
                    "# HELP process_start_time_seconds Start time of the process since unix "
                    "epoch in seconds.\n# TYPE process_start_time_seconds gauge\n"
                    "process_start_time_seconds %.2f\n",
                    btime + (double)start / (double)ticks);
        }
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long n_fd = 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.') n_fd++;
        closedir(d);
        put(b,
            "# HELP process_open_fds Number of open file descriptors.\n"
            "# TYPE process_open_fds gauge\nprocess_open_fds %ld\n",
            n_fd - 1); /* less the directory's own */
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        put(b,
            "# HELP process_max_fds Maximum number of open file descriptors.\n"
            "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
            (unsigned long long)rl.rlim_cur);
}

char *qv_metrics_render(qv_metrics *m, size_t *len) {
    sbuf b = {0};
    pthread_mutex_lock(&m->mu);
    if (m->version[0])
        put(&b,
            "# HELP quiver_build_info The running build: version, commit, device.\n"
            "# TYPE quiver_build_info gauge\n"
            "quiver_build_info{version=\"%s\",commit=\"%s\",device=\"%s\"} 1\n",
            m->version, m->commit, m->device);
    put_process(&b);
    put(&b, "# HELP quiver_requests_total HTTP requests by status code.\n"
            "# TYPE quiver_requests_total counter\n");
    for (int s = 100; s < 600; s++)
        if (m->by_status[s])
            put(&b, "quiver_requests_total{status=\"%d\"} %llu\n", s, m->by_status[s]);
    put(&b,
        "# HELP quiver_prompt_tokens_total Prompt tokens of finished requests.\n"
        "# TYPE quiver_prompt_tokens_total counter\nquiver_prompt_tokens_total %llu\n"
        "# HELP quiver_generation_tokens_total Generated tokens of finished requests.\n"
        "# TYPE quiver_generation_tokens_total counter\nquiver_generation_tokens_total %llu\n",
        m->tokens_in, m->tokens_out);
    put_hist(&b, "quiver_time_to_first_token_seconds", "Time to the first generated token.",
             &m->ttft);
    put_hist(&b, "quiver_time_per_output_token_seconds",
             "Mean time per generated token after the first.", &m->tpot);
    put_hist(&b, "quiver_e2e_request_latency_seconds", "Request latency, arrival to last byte.",
             &m->e2e);
    put(&b,
        "# HELP quiver_queue_depth Requests waiting for admission.\n"
        "# TYPE quiver_queue_depth gauge\nquiver_queue_depth %d\n"
        "# HELP quiver_running_sequences Sequences in the running batch.\n"
        "# TYPE quiver_running_sequences gauge\nquiver_running_sequences %d\n"
        "# HELP quiver_kv_pages_used KV cache pages in use.\n"
        "# TYPE quiver_kv_pages_used gauge\nquiver_kv_pages_used %d\n"
        "# HELP quiver_kv_pages_total KV cache pages in the pool.\n"
        "# TYPE quiver_kv_pages_total gauge\nquiver_kv_pages_total %d\n",
        m->queue_depth, m->running, m->kv_used, m->kv_total);
    put(&b,
        "# HELP quiver_preemptions_total Sequences preempted by recompute when KV ran out.\n"
        "# TYPE quiver_preemptions_total counter\nquiver_preemptions_total %llu\n"
        "# HELP quiver_recomputed_tokens_total Tokens computed again after preemptions.\n"
        "# TYPE quiver_recomputed_tokens_total counter\nquiver_recomputed_tokens_total %llu\n",
        m->preemptions, m->recomputed_tokens);
    put(&b,
        "# HELP quiver_prefix_cache_query_tokens_total Prompt tokens looked up in the prefix "
        "cache at admission.\n"
        "# TYPE quiver_prefix_cache_query_tokens_total counter\n"
        "quiver_prefix_cache_query_tokens_total %llu\n"
        "# HELP quiver_prefix_cache_hit_tokens_total Prompt tokens whose K/V came from the prefix "
        "cache (not computed).\n"
        "# TYPE quiver_prefix_cache_hit_tokens_total counter\n"
        "quiver_prefix_cache_hit_tokens_total %llu\n"
        "# HELP quiver_prefix_cache_pages KV pages held by the prefix cache (state=evictable: "
        "used by no sequence).\n"
        "# TYPE quiver_prefix_cache_pages gauge\n"
        "quiver_prefix_cache_pages{state=\"all\"} %d\n"
        "quiver_prefix_cache_pages{state=\"evictable\"} %d\n"
        "# HELP quiver_prefix_cache_evictions_total Prefix cache pages evicted to make room.\n"
        "# TYPE quiver_prefix_cache_evictions_total counter\n"
        "quiver_prefix_cache_evictions_total %llu\n",
        m->pc.query_tokens, m->pc.hit_tokens, m->pc.pages, m->pc.evictable_pages, m->pc.evictions);
    put(&b,
        "# HELP quiver_responses_store_records Responses and conversations kept in memory "
        "(--responses-store-mb).\n"
        "# TYPE quiver_responses_store_records gauge\nquiver_responses_store_records %zu\n"
        "# HELP quiver_responses_store_bytes Bytes they take.\n"
        "# TYPE quiver_responses_store_bytes gauge\nquiver_responses_store_bytes %zu\n"
        "# HELP quiver_responses_store_limit_bytes The store's size (0: nothing is kept).\n"
        "# TYPE quiver_responses_store_limit_bytes gauge\n"
        "quiver_responses_store_limit_bytes %zu\n"
        "# HELP quiver_responses_store_evictions_total Records forgotten to make room, least "
        "recently used first.\n"
        "# TYPE quiver_responses_store_evictions_total counter\n"
        "quiver_responses_store_evictions_total %llu\n",
        m->rs_records, m->rs_bytes, m->rs_max, m->rs_evictions);
    put(&b,
        "# HELP quiver_cuda_graph_steps_total Forward steps per CUDA-graph mode (0 on the CPU).\n"
        "# TYPE quiver_cuda_graph_steps_total counter\n"
        "quiver_cuda_graph_steps_total{mode=\"recorded\"} %llu\n"
        "quiver_cuda_graph_steps_total{mode=\"replayed\"} %llu\n"
        "quiver_cuda_graph_steps_total{mode=\"eager\"} %llu\n"
        "quiver_cuda_graph_steps_total{mode=\"refused\"} %llu\n"
        "# HELP quiver_cuda_graph_capture_seconds_total Time spent recording CUDA graphs.\n"
        "# TYPE quiver_cuda_graph_capture_seconds_total counter\n"
        "quiver_cuda_graph_capture_seconds_total %.6f\n",
        m->g_captures, m->g_replays, m->g_eager, m->g_refused, m->g_capture_s);
    put(&b,
        "# HELP quiver_sampled_tokens_total Sampled tokens by where their logits row was used: "
        "host (whole row copied: sampling, logprobs, penalties) or device (greedy argmax taken "
        "on the GPU, row never copied).\n"
        "# TYPE quiver_sampled_tokens_total counter\n"
        "quiver_sampled_tokens_total{where=\"host\"} %llu\n"
        "quiver_sampled_tokens_total{where=\"device\"} %llu\n"
        "# HELP quiver_json_masks_total Token masks of JSON mode and structured output: computed "
        "(one pass over the vocabulary) or taken from the per-state cache.\n"
        "# TYPE quiver_json_masks_total counter\n"
        "quiver_json_masks_total{source=\"computed\"} %llu\n"
        "quiver_json_masks_total{source=\"cache\"} %llu\n"
        "# HELP quiver_structured_dead_ends_total Constrained sequences (JSON mode, structured "
        "output, tool calls) ended unfinished because no token the request allows could "
        "continue them.\n"
        "# TYPE quiver_structured_dead_ends_total counter\n"
        "quiver_structured_dead_ends_total %llu\n",
        m->rows_host, m->rows_device, m->masks_computed, m->masks_cached, m->dead_ends);
    put(&b,
        "# HELP quiver_engine_steps_total Engine steps that ran a forward pass (each decodes "
        "one token per running sequence, or more with speculative decoding).\n"
        "# TYPE quiver_engine_steps_total counter\n"
        "quiver_engine_steps_total %llu\n"
        "# HELP quiver_spec_draft_tokens_total Speculative decoding (--speculative-config): "
        "draft tokens checked.\n"
        "# TYPE quiver_spec_draft_tokens_total counter\n"
        "quiver_spec_draft_tokens_total %llu\n"
        "# HELP quiver_spec_accepted_tokens_total Draft tokens that were the model's own choice "
        "(each one a step saved).\n"
        "# TYPE quiver_spec_accepted_tokens_total counter\n"
        "quiver_spec_accepted_tokens_total %llu\n"
        "# HELP vllm:spec_decode_num_draft_tokens_total Draft tokens checked (vLLM-compatible).\n"
        "# TYPE vllm:spec_decode_num_draft_tokens_total counter\n"
        "vllm:spec_decode_num_draft_tokens_total %llu\n"
        "# HELP vllm:spec_decode_num_accepted_tokens_total Draft tokens accepted "
        "(vLLM-compatible).\n"
        "# TYPE vllm:spec_decode_num_accepted_tokens_total counter\n"
        "vllm:spec_decode_num_accepted_tokens_total %llu\n",
        m->steps, m->spec_drafts, m->spec_kept, m->spec_drafts, m->spec_kept);
    const qv_metrics_adapter_stats *a = &m->ad;
    put(&b,
        "# HELP quiver_adapter_resident Loaded adapter versions per residency tier.\n"
        "# TYPE quiver_adapter_resident gauge\n"
        "quiver_adapter_resident{tier=\"host\"} %llu\n"
        "quiver_adapter_resident{tier=\"device\"} %llu\n"
        "quiver_adapter_resident{tier=\"pinned\"} %llu\n"
        "quiver_adapter_resident{tier=\"loading\"} %llu\n"
        "# HELP quiver_adapter_bytes Bytes of loaded adapters per tier.\n"
        "# TYPE quiver_adapter_bytes gauge\n"
        "quiver_adapter_bytes{tier=\"host\"} %llu\nquiver_adapter_bytes{tier=\"device\"} %llu\n"
        "quiver_adapter_bytes{tier=\"pinned\"} %llu\n"
        "# HELP quiver_adapter_loads_total Adapter loads started.\n"
        "# TYPE quiver_adapter_loads_total counter\nquiver_adapter_loads_total %llu\n"
        "# HELP quiver_adapter_load_failures_total Adapter loads that failed.\n"
        "# TYPE quiver_adapter_load_failures_total counter\n"
        "quiver_adapter_load_failures_total %llu\n"
        "# HELP quiver_adapter_evictions_total Adapter versions evicted per tier.\n"
        "# TYPE quiver_adapter_evictions_total counter\n"
        "quiver_adapter_evictions_total{tier=\"host\"} %llu\n"
        "quiver_adapter_evictions_total{tier=\"device\"} %llu\n"
        "quiver_adapter_evictions_total{tier=\"pinned\"} %llu\n"
        "# HELP quiver_adapter_admission_deferrals_total Admissions put off (per request and "
        "step) while the request's adapter was still being copied to the device.\n"
        "# TYPE quiver_adapter_admission_deferrals_total counter\n"
        "quiver_adapter_admission_deferrals_total %llu\n"
        "# HELP quiver_adapter_acquires_total Adapter acquisitions: hit (loaded) or miss (load).\n"
        "# TYPE quiver_adapter_acquires_total counter\n"
        "quiver_adapter_acquires_total{result=\"hit\"} %llu\n"
        "quiver_adapter_acquires_total{result=\"miss\"} %llu\n"
        "# HELP quiver_adapter_load_seconds Adapter load latency (sum and max), start to use.\n"
        "# TYPE quiver_adapter_load_seconds gauge\n"
        "quiver_adapter_load_seconds{stat=\"sum\"} %.6f\n"
        "quiver_adapter_load_seconds{stat=\"max\"} %.6f\n",
        a->n_host, a->n_device, a->n_pinned, a->n_loading, a->host_bytes, a->device_bytes,
        a->pinned_bytes, a->loads, a->load_failures, a->evictions_host, a->evictions_device,
        a->evictions_pinned, a->admit_deferrals, a->hits, a->misses, a->load_latency_sum_s,
        a->load_latency_max_s);
    /* per adapter: "" = the base model, the first QV_METRICS_MAX_ADAPTER_LABELS names, then
     * "other" (bounded cardinality) */
    const int n_lab = m->n_adapter_names + 2;
    static const struct {
        const char *name, *help, *type;
        int what; /* 0 requests, 1 prompt tokens, 2 generated tokens, 3 ttft, 4 tpot */
    } per[] = {
        {"quiver_adapter_requests_total", "Finished generation requests per adapter", "counter", 0},
        {"quiver_adapter_prompt_tokens_total", "Prompt tokens of finished requests per adapter",
         "counter", 1},
        {"quiver_adapter_generation_tokens_total",
         "Generated tokens of finished requests per adapter", "counter", 2},
        {"quiver_adapter_time_to_first_token_seconds", "Time to the first token per adapter",
         "histogram", 3},
        {"quiver_adapter_time_per_output_token_seconds",
         "Mean time per generated token after the first, per adapter", "histogram", 4},
    };
    for (size_t k = 0; k < QV_ARRAY_LEN(per); k++) {
        put(&b,
            "# HELP %s %s (adapter \"\" = the base model; \"other\" = beyond the first %d "
            "names).\n# TYPE %s %s\n",
            per[k].name, per[k].help, QV_METRICS_MAX_ADAPTER_LABELS, per[k].name, per[k].type);
        for (int i = 0; i < n_lab; i++) {
            const adapter_stats *st = i == 0           ? &m->base
                                      : i == n_lab - 1 ? &m->other
                                                       : &m->per_adapter[i - 1];
            const char *label = i == 0 ? "" : i == n_lab - 1 ? "other" : m->adapter_name[i - 1];
            if (per[k].what <= 2)
                put(&b, "%s{adapter=\"%s\"} %llu\n", per[k].name, label,
                    per[k].what == 0   ? st->requests
                    : per[k].what == 1 ? st->tokens_in
                                       : st->tokens_out);
            else
                put_hist_labeled(&b, per[k].name, label, per[k].what == 3 ? &st->ttft : &st->tpot);
        }
    }
    static const struct {
        const char *name, *help, *type;
    } ten[] = {
        {"quiver_tenant_requests_total", "Generation requests accepted", "counter"},
        {"quiver_tenant_refused_total",
         "Generation requests refused by a limit (rpm, tpm, max_inflight)", "counter"},
        {"quiver_tenant_prompt_tokens_total", "Prompt tokens of accepted requests", "counter"},
        {"quiver_tenant_generation_tokens_total", "Tokens generated", "counter"},
        {"quiver_tenant_inflight", "Requests queued or running", "gauge"},
        {"quiver_tenant_virtual_tokens",
         "Fair-share counter: (prompt + 2 x generated tokens) / weight, lifted when idle", "gauge"},
    };
    static const char *const refusal[QV_TENANT_N_REFUSALS] = {NULL, "rpm", "tpm", "max_inflight"};
    for (size_t k = 0; k < QV_ARRAY_LEN(ten) && m->n_tenants > 0; k++) {
        put(&b, "# HELP %s %s, per tenant (--api-keys-file).\n# TYPE %s %s\n", ten[k].name,
            ten[k].help, ten[k].name, ten[k].type);
        for (int i = 0; i < m->n_tenants; i++) {
            const qv_tenant_stats *t = &m->tenants[i];
            if (k == 0) put(&b, "%s{tenant=\"%s\"} %llu\n", ten[k].name, t->name, t->requests);
            for (int r = 1; k == 1 && r < QV_TENANT_N_REFUSALS; r++)
                put(&b, "%s{tenant=\"%s\",reason=\"%s\"} %llu\n", ten[k].name, t->name, refusal[r],
                    t->refused[r]);
            if (k == 2 || k == 3)
                put(&b, "%s{tenant=\"%s\"} %llu\n", ten[k].name, t->name,
                    k == 2 ? t->prompt_tokens : t->generation_tokens);
            if (k == 4) put(&b, "%s{tenant=\"%s\"} %d\n", ten[k].name, t->name, t->inflight);
            if (k == 5) put(&b, "%s{tenant=\"%s\"} %.1f\n", ten[k].name, t->name, t->vtc);
        }
    }
    put(&b,
        "# HELP vllm:lora_requests_info Running stats on LoRA requests (vLLM-compatible).\n"
        "# TYPE vllm:lora_requests_info gauge\n"
        "vllm:lora_requests_info{running_lora_adapters=\"%s\",waiting_lora_adapters=\"%s\","
        "max_lora=\"%d\"} %.3f\n",
        m->lora_running, m->lora_waiting, m->max_lora, m->lora_info_time);
    pthread_mutex_unlock(&m->mu);
    if (b.oom) {
        qv_free(b.p);
        return NULL;
    }
    if (len) *len = b.len;
    return b.p;
}
