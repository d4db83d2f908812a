/*
 * engine.h - quiver's public engine API: load a model and its tokenizer onto a backend, add
 * generation requests, and advance all of them together one step at a time (continuous
 * batching with chunked prefill under a token budget, admission by free KV pages, preemption by
 * recompute when the pages run out; see docs/scheduling.md).
 *
 * Not here: HTTP, JSON, threads for callers. The engine is confined to the thread that created
 * it (the server's engine thread, or the CLI's main thread); callbacks run on that thread
 * inside qv_engine_step().
 */
#ifndef QV_ENGINE_H
#define QV_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_engine qv_engine;

typedef struct qv_engine_config {
    const char *model_path;      /* HF directory or .gguf file */
    int n_threads;               /* CPU worker threads; 0 = all online cores */
    size_t kv_bytes;             /* KV cache budget in bytes; 0 = 256 MiB */
    int kv_page_size;            /* tokens per KV page; 0 = 16 */
    int max_batch_tokens;        /* token budget of one step (prefill chunks + decodes); 0 = 256 */
    int max_seqs;                /* concurrently running sequences; 0 = 64 */
    bool load_tokenizer;         /* false: engine works on ids only (tests) */
    const char *device;          /* "cpu" (default, NULL) or "cuda" (QV_ERR_UNSUPPORTED when the
                                    build has no CUDA or there is no device) */
    size_t adapter_pool_bytes;   /* "cuda": the device adapter pool, allocated at creation;
                                    0 = $QV_CUDA_ADAPTER_POOL_MB MiB, else 512 MiB, at most a
                                    quarter of the free device memory (QV_ERR_DEVICE_OOM when
                                    a size asked for does not fit) */
    size_t adapter_pinned_bytes; /* "cuda": the adapter pool's pinned host tier (converted images;
                                  device loads from it are one copy), allocated at creation;
                                  0 = $QV_CUDA_ADAPTER_PINNED_MB MiB, else twice the device pool;
                                  SIZE_MAX = none */
    bool kv_f32;                 /* "cuda": K/V pages in F32 instead of bf16 (twice the bytes per
                                    token; $QV_CUDA_KV_BF16=0 does the same) */
    bool kv_bf16;                /* "cpu": K/V pages in bf16 instead of F32 (half the bytes per
                                    token; attention reads them widened exactly to F32) */
    bool host_sampling;          /* device backends: sample every non-greedy row on the host
                                    (copying its logits) instead of on the device; the tokens
                                    are the same (docs/sampling.md); for tests and comparison */
    bool no_prefix_cache;        /* do not keep computed K/V pages for reuse by later sequences
                                    with the same prefix (the prefix cache is on by default;
                                    docs/scheduling.md) */
    /* Speculative decoding by prompt lookup (vLLM's "ngram" method; docs/scheduling.md): a
     * decoding sequence whose last n tokens (n from spec_ngram_max down to spec_ngram_min)
     * occurred before in its prompt or output proposes the tokens that followed, up to
     * spec_tokens of them; one forward pass checks them all, each row read in order as a step
     * of its own would (sampling with the sequence's next random draw, penalties, logprobs,
     * structured output), and keeps the drafts the sequence picks, so the tokens are the same
     * as without it. Off with 0. The CPU backend only (device backends pick tokens on the
     * device: ignored there). */
    int spec_tokens;    /* draft tokens per sequence and step, at most QV_SPEC_MAX_TOKENS */
    int spec_ngram_min; /* 0 = 3 */
    int spec_ngram_max; /* 0 = max(5, spec_ngram_min) */
    int spec_max_batch; /* no drafts in a step with more decoding sequences (0: no limit) */
} qv_engine_config;

#define QV_SPEC_MAX_TOKENS 16

void qv_engine_config_default(qv_engine_config *c);

/* Loads the model (and tokenizer) and creates the backend and the KV cache.
 * Owner: caller (qv_engine_destroy). Errors carry a one-line message. */
qv_status qv_engine_create(const qv_engine_config *c, qv_engine **out, qv_error *err);
/* Cancels everything still running (no callbacks) and frees all. Accepts NULL. */
void qv_engine_destroy(qv_engine *e);

const qv_model *qv_engine_model(const qv_engine *e);
/* Whether this engine's backend runs adapter `ad` (kinds and features, not size; see
 * qv_engine_add): QV_OK, or QV_ERR_UNSUPPORTED / QV_ERR_INVALID naming what is missing. For
 * validating uploads. Thread: any. */
struct qv_adapter;
qv_status qv_engine_adapter_supported(const qv_engine *e, const struct qv_adapter *ad,
                                      qv_error *err);
/* NULL when created without a tokenizer. */
const qv_tokenizer *qv_engine_tokenizer(const qv_engine *e);
/* Pages and tokens of KV capacity (for reports). */
int qv_engine_kv_pages(const qv_engine *e);
int qv_engine_kv_page_size(const qv_engine *e);
int qv_engine_kv_free_pages(const qv_engine *e);
/* Bytes per stored K/V element: 4 (F32), or 2 (bf16: the CUDA default, see kv_f32). */
int qv_engine_kv_elem_bytes(const qv_engine *e);

enum qv_finish_reason {
    QV_FINISH_NONE = 0, /* still running */
    QV_FINISH_STOP,     /* end-of-generation token */
    QV_FINISH_LENGTH,   /* max_tokens or the context limit */
    QV_FINISH_CANCELLED,
};

/* Called with the log-probabilities of prompt token `index` (1..n_prompt-1, in order, each
 * once, before the first generated token's qv_token_cb) given the tokens before it: lp->token
 * is that prompt token, lp->logprob its raw log-softmax value, lp->top_* the most likely
 * tokens at that position, max(sampling.n_logprobs, prompt_n_logprobs) of them (sampler.h:
 * qv_logprobs_of_row), and `rank` the token's rank in the vocabulary (1 + the number of
 * tokens more likely; qv_logprob_rank). */
typedef void (*qv_prompt_lp_cb)(void *user, int seq_id, int index, const qv_logprobs *lp, int rank);

typedef struct qv_gen_params {
    qv_sampling_params sampling;
    int max_tokens;  /* generated tokens; must be > 0 */
    bool ignore_eos; /* keep going past end-of-generation tokens (benchmarks) */
    /* Adapter of this request (adapters/adapters.h, loaded against this model) or NULL. The
     * caller keeps it alive until the sequence finishes. Every kind on the CPU backend; on the
     * CUDA backend every kind too, less some LoRA extras (lora_bias, embedding / lm_head LoRA,
     * modules_to_save, trainable tokens: qv_engine_add refuses them, see engine/cuda/lora_cuda.h).
     * Prefix, prompt and P-tuning adapters add n_virtual positions that count toward the
     * context. */
    const struct qv_adapter *adapter;
    /* OpenAI logit_bias, copied by qv_engine_add: added to these tokens' logits before the
     * penalties (ids in the vocabulary, |bias| <= QV_SAMPLER_MAX_BIAS; the last entry of an
     * id wins). A row with a bias is sampled on the host (its logits are copied there). */
    const qv_token_bias *logit_bias;
    int n_logit_bias;
    /* vLLM min_tokens (0..max_tokens): until this many tokens are generated, the
     * end-of-generation tokens (unless ignore_eos) and min_tokens_ids (the caller's stop token
     * ids; copied) cannot be drawn. Host-sampled like a bias until then. */
    int min_tokens;
    const int32_t *min_tokens_ids;
    int n_min_tokens_ids;
    /* vLLM allowed_token_ids (copied; NULL / 0: every id): only these ids can be drawn, end-
     * of-generation ids included only when listed. Host-sampled. Not with JSON mode or
     * structured output. */
    const int32_t *allowed_ids;
    int n_allowed_ids;
    /* vLLM bad_words as token ids (copied; sampler.h qv_sampler_set_bad_words): word w's last
     * id cannot follow its others among the generated tokens. Host-sampled. */
    const int32_t *bad_word_ids, *bad_word_lens;
    int n_bad_words;
    /* Non-NULL: the prompt tokens' log-probabilities go to it (called with qv_engine_add's
     * `user`). Their logits rows are computed during the prefill (at most QV_PROMPT_LP_ROWS
     * per step, a row buffer of that many vocabulary rows allocated with the first such
     * request) and read on the host. */
    qv_prompt_lp_cb prompt_lp_cb;
    int prompt_n_logprobs; /* alternatives for prompt_lp_cb beyond sampling.n_logprobs (0..20) */
    /* JSON mode (OpenAI response_format {"type": "json_object"}): the generated text is one
     * JSON object (json_grammar.h) followed by an end-of-generation token, or a prefix of one
     * when max_tokens ends it first. Before each draw, tokens that would leave no valid
     * continuation are masked (logprobs stay those of the raw row), and once the object
     * is closed only end-of-generation tokens remain. Needs the tokenizer; refused with
     * ignore_eos or min_tokens (both would fight the forced end). Host-sampled. */
    bool json_object;
    /* Structured output (OpenAI response_format {"type": "json_schema"}): as JSON mode, but
     * the text is one value valid under this compiled schema (json_grammar.h; the engine
     * keeps its own reference, the caller keeps its). Takes precedence over json_object. */
    struct qv_json_schema *json_schema;
} qv_gen_params;

/* Prompt-logprob rows per engine step (on top of one sampling row per sequence). */
#define QV_PROMPT_LP_ROWS 64

void qv_gen_params_default(qv_gen_params *p);

/* Called once per generated token. `lp` is non-NULL when logprobs were requested. When
 * finish != QV_FINISH_NONE this is the sequence's last call; an end-of-generation token is
 * reported with finish == QV_FINISH_STOP (callers decide whether to show it). */
typedef void (*qv_token_cb)(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                            enum qv_finish_reason finish);

/* Adds a request. The prompt is copied. The sequence waits in the engine until the step that
 * admits it (see qv_engine_step). Returns QV_ERR_BUSY when max_seqs sequences are in the engine
 * or while a preempted sequence waits for re-admission (new arrivals never overtake it; retry
 * after a step), QV_ERR_LIMIT when the prompt + max_tokens can never fit the context or the
 * whole KV cache, QV_ERR_INVALID for bad ids or parameters. A sequence that fits the KV cache
 * alone always completes (by preemption of others if needed); it never fails for lack of pages.
 * Adapters on the CUDA backend: what engine/cuda/lora_cuda.h runs, else QV_ERR_UNSUPPORTED
 * naming what is missing; QV_ERR_DEVICE_OOM when one adapter exceeds the whole device adapter pool.
 * Thread: the engine's thread. */
qv_status qv_engine_add(qv_engine *e, const int32_t *prompt, size_t n_prompt,
                        const qv_gen_params *p, qv_token_cb cb, void *user, int *seq_id,
                        qv_error *err);
/* Cancels a sequence, waiting (also after a preemption) or running: its KV pages and its share
 * of adapter prefix pages are freed at once; no more callbacks. Unknown ids are ignored. */
void qv_engine_cancel(qv_engine *e, int seq_id);
/* Number of sequences not yet finished (running and waiting). */
int qv_engine_n_active(const qv_engine *e);
/* Runs one step:
 *  1. decode tokens of running sequences, oldest admitted first; when a decode needs a new KV
 *     page and none is free, the most recently admitted running sequence is preempted by
 *     recompute (pages freed, tokens and sampler kept, back at its arrival rank in the wait
 *     order; it may be the one asking) until the page fits;
 *  2. unless step 1 preempted, admission of waiting sequences in arrival order while the pages
 *     for all their tokens fit beside one page of headroom and, on a device backend, the
 *     distinct adapters of the running sequences take at most half of the device adapter pool
 *     (or the newcomer's adapter would be the only one) — the first that does not fit stops
 *     admission; admission reserves those pages;
 *  3. prefill chunks (re-prefill of all tokens for a preempted sequence) under the remaining
 *     token budget. The chunk reaching a sequence's last token samples its next token.
 * Preemption is invisible to callbacks: no token is repeated, output is the same as without it.
 * Errors: QV_ERR_NOMEM, backend errors (the caller should cancel every sequence then). */
qv_status qv_engine_step(qv_engine *e, qv_error *err);

/* Where a sequence is in the scheduler. */
enum qv_seq_state {
    QV_SEQ_UNKNOWN = 0, /* no such sequence (finished, cancelled or never added) */
    QV_SEQ_WAITING,     /* added, not admitted yet */
    QV_SEQ_RUNNING,     /* admitted: holds KV pages */
    QV_SEQ_PREEMPTED,   /* preempted by recompute, waiting for re-admission */
};
/* State of sequence seq_id. Thread: the engine's thread. */
enum qv_seq_state qv_engine_seq_state(const qv_engine *e, int seq_id);
/* Tokens of sequence seq_id's prompt (as given to qv_engine_add: an adapter's virtual tokens
 * are not counted) whose K/V came from the prefix cache at its first admission; 0 before
 * admission and for unknown ids. Thread: the engine's thread. */
int qv_engine_seq_cached_tokens(const qv_engine *e, int seq_id);
/* Empties the prefix cache of pages no sequence holds; returns how many pages were freed.
 * Thread: the engine's thread. */
int qv_engine_prefix_cache_reset(qv_engine *e);

/* Scheduler counters and gauges (for /metrics). */
typedef struct qv_engine_stats {
    uint64_t preemptions;       /* sequences preempted by recompute since creation */
    uint64_t recomputed_tokens; /* tokens computed again after a preemption (prompt + generated) */
    int n_running;              /* admitted sequences (hold KV pages) */
    int n_waiting;              /* added, not admitted (new or preempted) */
    int n_waiting_preempted;    /* of n_waiting, preempted ones (qv_engine_add is BUSY then) */
    int kv_pages;               /* pages in the KV cache */
    int kv_free_pages;          /* of which free or held only by the prefix cache (evictable) */
    int kv_cached_pages;        /* pages registered in the prefix cache (in use or evictable) */
    int kv_evictable_pages;     /* of which held by no sequence */
    uint64_t prefix_query_tokens; /* prompt tokens (virtual ones included) of admitted sequences */
    uint64_t prefix_hit_tokens;   /* of which taken from the prefix cache, not computed */
    uint64_t prefix_evictions;    /* cached pages evicted to make room */
    uint64_t prefix_waits;   /* admissions put off (per sequence and step) while a running sequence
                                computed a prefix page the waiting one shares */
    uint64_t json_mask_hits; /* JSON mode: masks taken from the per-state cache */
    uint64_t json_mask_misses;  /* and computed (one pass over the vocabulary each) */
    double json_mask_s;         /* time spent computing them */
    uint64_t json_dead_ends;    /* constrained sequences ended unfinished: no allowed token left */
    uint64_t steps;             /* steps that ran a forward pass */
    uint64_t spec_draft_tokens; /* speculative decoding: draft tokens checked */
    uint64_t spec_accepted_tokens; /* of which the model's own choice (each saved a step) */
    /* device adapter pool (CUDA backend; all 0 on the CPU and before its first adapter) */
    int dev_adapters_resident;       /* adapter versions on the device now */
    uint64_t dev_adapter_loads;      /* uploads started (steps and prefetches) */
    uint64_t dev_adapter_hits;       /* lookups that found the adapter resident */
    uint64_t dev_adapter_evictions;  /* versions evicted to make room */
    uint64_t dev_adapter_bytes;      /* host-to-device bytes uploaded */
    uint64_t dev_adapter_prefetches; /* prefetches issued for queued requests */
    size_t dev_adapter_pool_bytes;   /* the pool's size */
    size_t dev_adapter_used_bytes;   /* of which pages held by resident versions */
    /* its pinned host tier: size, images held, device loads copied from an image, images
     * converted in the background (prefetch) and on the step that needed them, evictions */
    size_t dev_adapter_pinned_bytes, dev_adapter_pinned_used_bytes;
    int dev_adapter_pinned_resident;
    uint64_t dev_adapter_pinned_hits, dev_adapter_pinned_fills_async, dev_adapter_pinned_fills_sync;
    uint64_t dev_adapter_pinned_evictions;
    /* admissions put off because the sequence's adapter was still on its way to the device
     * while other sequences ran (one per sequence and step) */
    uint64_t admit_deferrals;
    /* logits rows (one per sampled token): sampled on the host from the whole row, or on the
     * device (device backends: every sequence without logprobs, unless host_sampling) */
    uint64_t logits_rows_host, logits_rows_device;
    /* CUDA graphs (CUDA backend; 0 elsewhere): forward steps recorded, replayed, run eagerly,
     * and replays refused (the step did not match; rerun eagerly); seconds spent ending
     * captures and instantiating graphs */
    uint64_t graph_captures, graph_replays, graph_eager_steps, graph_mismatches;
    double graph_capture_s;
} qv_engine_stats;

/* Fills *out. Thread: the engine's thread (plain reads; no locks). */
void qv_engine_get_stats(const qv_engine *e, qv_engine_stats *out);

/* CUDA backend: records the CUDA graphs of base-model decode steps of 1 .. min(max_seqs,
 * max_batch_tokens) sequences (padding buckets, short contexts) before any request, so the
 * first decode steps replay. *n_shapes receives the graphs recorded, *seconds the time taken.
 * A no-op (0 shapes) on the CPU or with graphs off. Errors: QV_ERR_DEVICE, QV_ERR_NOMEM.
 * Thread: the engine's thread, before the first qv_engine_add. */
qv_status qv_engine_warmup(qv_engine *e, int *n_shapes, double *seconds, qv_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QV_ENGINE_H */
