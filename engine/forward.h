/*
 * forward.h - one forward pass of the base model over a mixed batch: prefill chunks and decode
 * tokens of many sequences at different positions, through any backend.
 *
 * The caller (the engine's step, or a test) has already reserved KV pages covering every
 * position in the batch. The pass writes the batch's K/V into those pages and returns logits
 * only for the tokens that ask for them (usually the last token of each sequence).
 *
 * Thread: confined to the engine thread that owns the backend.
 */
#ifndef QV_FORWARD_H
#define QV_FORWARD_H

#include "backend.h"
#include "kv_cache.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_batch {
    int n_tokens;
    const int32_t *tokens; /* [n_tokens] token ids */
    const int32_t *pos;    /* [n_tokens] absolute positions */
    const int32_t *seq;    /* [n_tokens] index into seqs */
    int n_seqs;
    const qv_kv_seq *const *seqs; /* [n_seqs] page tables covering every position used */
    int n_logits;
    const int32_t *logits_idx; /* [n_logits] batch indices whose logits are wanted */
    /* Adapters (engine/adapter_apply.h on the CPU backend; LoRA, DoRA, IA3, prompt and prefix
     * tuning on CUDA, see engine/cuda/lora_cuda.h). n_segs == 0: the base model for every token.
     * Otherwise segment s covers tokens [seg_start[s], seg_start[s+1]) (seg_start[0] == 0,
     * seg_start[n_segs] == n_tokens) and runs seg_adapter[s] (NULL: none). In a prompt/P-tuning
     * segment, token id -1-k is the adapter's virtual token k. */
    int n_segs;
    const int32_t *seg_start;                    /* [n_segs + 1] */
    const struct qv_adapter *const *seg_adapter; /* [n_segs] */
} qv_batch;

typedef struct qv_forward qv_forward;

/* Creates scratch for batches of up to max_tokens tokens on backend `be`.
 * Owner: caller (qv_forward_destroy); `m`, `be` and `kv` must outlive it. */
qv_status qv_forward_create(const qv_model *m, qv_backend *be, qv_kv_cache *kv, int max_tokens,
                            qv_forward **out, qv_error *err);
void qv_forward_destroy(qv_forward *f);
int qv_forward_max_tokens(const qv_forward *f);

/* Runs the batch. logits (n_logits, n_vocab) receives F32 logits in logits_idx order.
 * Errors: QV_ERR_INVALID for a malformed batch (token id out of range, too many tokens, a
 * position not covered by its page table). */
qv_status qv_forward_run(qv_forward *f, const qv_batch *b, float *logits, qv_error *err);

/* Like qv_forward_run, but only the greedy choice (first maximum of each wanted row's logits)
 * is computed, on the device, and tokens[n_logits] receives it; the logits never leave the
 * device. Errors: as qv_forward_run; QV_ERR_UNSUPPORTED on host-memory backends (CPU). */
qv_status qv_forward_run_greedy(qv_forward *f, const qv_batch *b, int32_t *tokens, qv_error *err);

/* Both at once: rows [0, n_full) of b->logits_idx get their logits in logits (n_full, n_vocab)
 * as qv_forward_run gives them, rows [n_full, n_logits) only their greedy choice in
 * tokens[n_logits - n_full] as qv_forward_run_greedy does, so only the rows a sampler needs
 * whole are copied to the host. n_full 0 is qv_forward_run_greedy. Errors: as
 * qv_forward_run_greedy; QV_ERR_INVALID when n_full is outside [0, n_logits]. */
qv_status qv_forward_run_split(qv_forward *f, const qv_batch *b, int n_full, float *logits,
                               int32_t *tokens, qv_error *err);

/* Whether the backend computes logits in device memory and can pick greedy tokens there
 * (qv_forward_run_greedy / qv_forward_run_split work). */
bool qv_forward_device_logits(const qv_forward *f);

/* Most penalty context entries (qv_token_count) one qv_forward_run_sample step takes. */
#define QV_FORWARD_MAX_PEN (1 << 18)

/* qv_forward_run_split where rows [n_full, n_logits) are sampled on the device instead of
 * taking their argmax: row n_full + i with rows[i] (temperature, top-k, top-p, min-p, the
 * uniform number u of its draw, and penalties over pen[pen_off, pen_off + pen_n)), exactly as
 * qv_sampler_sample would from the same logits and u (engine/sampler.h; see
 * engine/cuda/sample.cu for the one difference: weights summed in 2^-44 fixed point). A row
 * with temperature 0 is the argmax. rows NULL: every row's argmax (qv_forward_run_split).
 * A row with n_logprobs > 0 also gets, in lp[i] (host, n_logits - n_full entries, may be NULL),
 * the log-probabilities qv_sampler_sample reports for it (of the raw logits).
 * Errors: as qv_forward_run_split; QV_ERR_UNSUPPORTED when the backend cannot sample
 * (qv_forward_device_sampling false) and rows is not NULL; QV_ERR_INVALID for a row's penalty
 * range outside [0, n_pen), n_pen above QV_FORWARD_MAX_PEN or n_logprobs outside [0, 20]. */
qv_status qv_forward_run_sample(qv_forward *f, const qv_batch *b, int n_full, float *logits,
                                const qv_sample_row *rows, const qv_token_count *pen, int n_pen,
                                int32_t *tokens, qv_logprobs *lp, qv_error *err);

/* Whether qv_forward_run_sample can sample on the device (CUDA); false on host backends. */
bool qv_forward_device_sampling(const qv_forward *f);

/* Most adapters queued by qv_forward_prefetch_adapter between two runs. */
#define QV_FORWARD_MAX_PREFETCH 8

/* Queues adapter `ad` for prefetch: the next qv_forward_run / qv_forward_run_greedy, once it
 * holds its own batch's adapters (so a prefetch never evicts them), moves `ad` one stage toward
 * the device when it is not resident there (device backends with an adapter pool: CUDA): a
 * version in neither the device pool nor its pinned host tier is queued for conversion on the
 * pool's converter thread; one whose tier image is complete is copied to the device,
 * asynchronously on the pool's copy stream, overlapping that run's work. Nothing waits for it
 * and nothing holds it (it may be evicted again before use); a later step that uses `ad` waits
 * on the device only while the copy is still in flight. Queue it on each step until
 * qv_forward_adapter_ready says it is on the device. Without a host tier the run converts into
 * pinned staging itself before its work is enqueued. Meant for requests waiting for admission
 * (the engine calls it for the first waiting sequences of each step).
 * The queue is emptied by the next run whatever its outcome; errors of a queued prefetch
 * (an adapter kind the device lacks, no room beside the adapters in use) are logged at debug
 * level and counted, never returned by the run. The caller keeps `ad` alive until a run after
 * which qv_forward_adapter_ready is true, or calls qv_forward_adapter_forget(ad) before freeing
 * it. Adapters already queued are not queued twice.
 * CPU backend and builds without CUDA: a no-op returning QV_OK (nothing is queued).
 * Errors: QV_ERR_BUSY when QV_FORWARD_MAX_PREFETCH adapters are queued already.
 * Thread: the engine thread. */
qv_status qv_forward_prefetch_adapter(qv_forward *f, const struct qv_adapter *ad, qv_error *err);

/* Whether a step using `ad` would wait for nothing of it: always on the CPU backend and for
 * NULL; CUDA: resident in the device pool with its copy complete. Never blocks. Thread: the
 * engine thread. */
bool qv_forward_adapter_ready(qv_forward *f, const struct qv_adapter *ad);

/* Before `ad` is freed: waits until no background conversion of a prefetch reads it (queued
 * ones are dropped). A no-op on the CPU backend. Thread: the engine thread. */
void qv_forward_adapter_forget(qv_forward *f, const struct qv_adapter *ad);

/* Device backends: creates the device adapter pool now, of pool_bytes (0: the default of
 * engine/cuda/lora_cuda.h) with a pinned host tier of host_bytes (SIZE_MAX: the default there,
 * 0: none), instead of at the first adapter. A no-op on the CPU backend or when the pool exists.
 * Errors: QV_ERR_DEVICE_OOM, QV_ERR_DEVICE, QV_ERR_NOMEM. Thread: the engine thread. */
qv_status qv_forward_adapter_pool_init(qv_forward *f, size_t pool_bytes, size_t host_bytes,
                                       qv_error *err);

/* CUDA backend with graphs on: records the base model's decode-step graphs of
 * qv_forward_run_split (the engine's step; greedy, and for buckets above one logits chunk also
 * with whole rows) for every padding bucket up to max_batch rows at early positions (contexts
 * under 8 pages), so the first decode steps of a server replay instead of recording. The padding
 * rows' own KV page is all they touch. *n_shapes: graphs recorded. A no-op elsewhere.
 * Errors: QV_ERR_DEVICE, QV_ERR_NOMEM. Thread: the engine thread, before any request. */
qv_status qv_forward_warmup_graphs(qv_forward *f, int max_batch, int *n_shapes, qv_error *err);

/* KV pages the forward pass holds for itself (CUDA graph padding rows: 1, else 0); they are
 * never free for sequences. */
int qv_forward_kv_reserved_pages(const qv_forward *f);

/* Whether this forward pass runs adapter `ad` at all (the kinds and features of its backend;
 * not its size): QV_OK, or QV_ERR_UNSUPPORTED / QV_ERR_INVALID naming what is missing. No
 * device work. Thread: any (reads only what creation fixed). */
qv_status qv_forward_adapter_supported(const qv_forward *f, const struct qv_adapter *ad,
                                       qv_error *err);

/* Whether this forward pass can run adapter `ad`, and what it takes on the device. CPU backend:
 * every adapter kind runs; *dev_bytes = *pool_bytes = 0 (no device pool). CUDA backend: what
 * engine/cuda/lora_cuda.h runs; *dev_bytes =
 * the device adapter pool bytes it occupies when resident, *pool_bytes = the pool's size (the pool
 * is created on first use). Errors: QV_ERR_UNSUPPORTED (a kind or feature the device path lacks,
 * named in err), QV_ERR_DEVICE_OOM (larger than the whole pool), QV_ERR_DEVICE, QV_ERR_NOMEM.
 * Thread: the engine thread. */
qv_status qv_forward_adapter_check(qv_forward *f, const struct qv_adapter *ad, size_t *dev_bytes,
                                   size_t *pool_bytes, qv_error *err);

/* Device adapter residency counters since creation (all 0 on the CPU backend, and before the
 * first batch with adapter segments or prefetch on a device backend). */
typedef struct qv_forward_adapter_stats {
    uint64_t loads;             /* adapter uploads started (by steps and prefetches) */
    uint64_t hits;              /* lookups that found the adapter resident */
    uint64_t bytes_copied;      /* host-to-device bytes */
    uint64_t evictions;         /* adapters evicted to make room */
    uint64_t prefetches;        /* queued prefetches issued by runs */
    uint64_t prefetch_uploads;  /* of those, the ones that started an upload */
    uint64_t prefetch_failures; /* of those, the ones refused (see qv_forward_prefetch_adapter) */
    int resident;               /* adapters on the device now */
    size_t pool_bytes;          /* the device pool's size (0 before it exists) */
    size_t used_bytes;          /* of which pages held by resident adapters */
    /* the pool's pinned host tier (adapter_pool.h) */
    size_t host_bytes;         /* its size (0: none) */
    size_t host_used_bytes;    /* of which held by images */
    int host_resident;         /* adapter images in it */
    uint64_t host_hits;        /* device loads copied from a complete image */
    uint64_t host_fills_async; /* images converted by the converter thread */
    uint64_t host_fills_sync;  /* images converted by a step that needed them at once */
    uint64_t host_evictions;   /* images evicted from it */
} qv_forward_adapter_stats;

/* Fills *out. Thread: the engine thread. */
void qv_forward_adapter_stats_get(const qv_forward *f, qv_forward_adapter_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* QV_FORWARD_H */
