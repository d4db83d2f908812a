/*
 * lora_cuda.h - adapters in the CUDA forward pass (LoRA, DoRA, IA3, prompt / P-tuning,
 * bottleneck units, adaption prompts; prefix tuning needs nothing here: its K/V are stored at
 * admission): the device counterpart of engine/adapter_apply.h, called by forward.c when the
 * backend is "cuda".
 *
 * What: per step, validates the batch's adapter segments (LoRA, rsLoRA and DoRA, ranks 1..256
 * on any of the seven decoder projections; IA3 output vectors on any projection and input
 * vectors on down_proj), makes every adapter resident in the device adapter pool
 * (engine/cuda/adapter_pool.h, created on first use) and, at each hook, builds the SGMV segment
 * table of one projection group (q/k/v together, o, gate/up together, down) and runs one shrink
 * and one expand for all segments of the batch (qv_backend_cuda_sgmv), and one row-scaling
 * launch for the group's IA3 vectors or DoRA scales (qv_backend_cuda_seg_scale).
 * Prompt / P-tuning: virtual tokens (ids -1 - k) take row k of the adapter's prompt embeddings
 * (kept in the pool) after the embedding lookup (qv_cuda_lora_rt_ids / qv_cuda_lora_rt_embed).
 * Bottleneck adapters (AdapterHub; FORMATS.md 5.4): their weights and LayerNorms live in the
 * pool, one launch per sub-block and layer rewrites the sub-block output of every segment with
 * a unit there (qv_cuda_lora_rt_block_out). Adaption prompts (LLaMA-Adapter): each adapted
 * layer's prompt keys and values are computed once per load through the layer's own k/v
 * projections and kept in the pool; one launch per layer adds every segment's gated prompt
 * attention to the attention output (qv_cuda_lora_rt_attn).
 * What not: lora_bias, embedding / lm_head LoRA, modules_to_save, trainable tokens, IA3 on
 * inputs other than down_proj, adaption prompts longer than QV_AP_MAX_LEN, bottleneck sizes
 * above n_ff (or any on a model whose n_ff < dim): refused at begin with QV_ERR_UNSUPPORTED naming
 * the kind or feature. LoRA weights stored as F32, F16 or BF16 are all accepted (copied as they are
 * when they match the model's half type). Residency key: an adapter is identified by its address
 * plus a fingerprint (n_bytes, ranks and sampled weight values), so a freed adapter whose address
 * is reused by another is uploaded again, never served stale. Thread: the engine thread that owns
 * the backend.
 */
#ifndef QV_CUDA_LORA_H
#define QV_CUDA_LORA_H

#include <stdbool.h>
#include <stdint.h>

#include "adapters/adapters.h"
#include "backend.h"
#include "forward.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_cuda_lora_rt qv_cuda_lora_rt;

/* Creates the runtime for batches of up to max_tokens tokens of `m` on the CUDA backend `be`
 * (both must outlive it). pool_bytes 0: $QV_CUDA_ADAPTER_POOL_MB MiB, default 512 MiB, capped
 * at a quarter of the free device memory. Owner: caller (qv_cuda_lora_rt_destroy, before the
 * backend). Errors: QV_ERR_DEVICE_OOM, QV_ERR_DEVICE, QV_ERR_NOMEM. */
qv_status qv_cuda_lora_rt_create(const qv_model *m, qv_backend *be, int max_tokens,
                                 size_t pool_bytes, qv_cuda_lora_rt **out, qv_error *err);
/* Accepts NULL. */
void qv_cuda_lora_rt_destroy(qv_cuda_lora_rt *rt);

/* Creates the device adapter pool now (it is otherwise created by the first begin, prefetch
 * or check that needs it); logs its size. Errors: QV_ERR_DEVICE_OOM, QV_ERR_DEVICE,
 * QV_ERR_NOMEM. */
qv_status qv_cuda_lora_rt_init_pool(qv_cuda_lora_rt *rt, qv_error *err);

/* Starts a step: releases the previous step's adapters, validates b's segments (seg_start
 * covers [0, n_tokens) in order; no negative token ids), loads missing adapters (asynchronous
 * copies; the compute stream waits for them) and holds them until the next begin. b->n_segs
 * == 0 makes the runtime inactive. Must run before the step's first op (outside graph capture).
 * Errors: QV_ERR_INVALID, QV_ERR_UNSUPPORTED (see above), QV_ERR_BUSY (the adapters of this
 * batch do not fit in the pool together), QV_ERR_DEVICE, QV_ERR_NOMEM. */
qv_status qv_cuda_lora_rt_begin(qv_cuda_lora_rt *rt, const qv_batch *b, qv_error *err);

/* Size of the pool's pinned host tier, before the pool exists: SIZE_MAX (the default) =
 * $QV_CUDA_ADAPTER_PINNED_MB MiB, else twice the device pool; 0 = none. */
void qv_cuda_lora_rt_set_host_bytes(qv_cuda_lora_rt *rt, size_t bytes);

/* Prefetch for a queued request: validates `ad` like begin and moves it one stage toward the
 * device without converting on this thread (adapter_pool.h): queued for conversion into the
 * pinned host tier, or copied from its complete image there to the device pool (asynchronous;
 * nothing waits, nothing is held, so it may be evicted again before use). Call it again on later
 * steps until qv_cuda_lora_rt_ready; `ad` must stay valid until then or until
 * qv_cuda_lora_rt_forget(ad). Errors: as qv_cuda_lora_rt_begin. Not during a step's capture. */
qv_status qv_cuda_lora_rt_prefetch(qv_cuda_lora_rt *rt, const qv_adapter *ad, qv_error *err);

/* True when `ad` is resident in the device pool with its copy complete (or has nothing to
 * upload): a step using it waits for nothing. Never blocks. */
bool qv_cuda_lora_rt_ready(qv_cuda_lora_rt *rt, const qv_adapter *ad);

/* Before `ad` may be freed: waits until no background conversion reads it (queued ones are
 * dropped). rt may be NULL. */
void qv_cuda_lora_rt_forget(qv_cuda_lora_rt *rt, const qv_adapter *ad);

/* Whether the CUDA path runs `ad` (see above) for batches of up to max_tokens tokens of `m`:
 * QV_OK, or QV_ERR_UNSUPPORTED / QV_ERR_INVALID naming what it lacks. No device work, no
 * runtime: for validating an upload. Thread: any (reads m and ad only). */
qv_status qv_cuda_adapter_supported(const qv_model *m, int max_tokens, const qv_adapter *ad,
                                    qv_error *err);

/* Whether the CUDA path runs `ad` (see above), and what it takes: *bytes = the device pool bytes
 * its matrices occupy when resident (0 when it has none), *pool_bytes = the pool's size. Creates
 * the pool when it does not exist yet. Errors: QV_ERR_UNSUPPORTED (naming the kind or feature),
 * QV_ERR_DEVICE_OOM (it alone exceeds the pool, or the pool cannot be made), QV_ERR_DEVICE,
 * QV_ERR_NOMEM. */
qv_status qv_cuda_lora_rt_check(qv_cuda_lora_rt *rt, const qv_adapter *ad, size_t *bytes,
                                size_t *pool_bytes, qv_error *err);

/* Counters of the device adapter pool (adapter_pool.h); all 0 before the pool exists (it is
 * created by the first begin with an adapter or the first prefetch). */
struct qv_cuda_pool_stats;
void qv_cuda_lora_rt_stats(const qv_cuda_lora_rt *rt, struct qv_cuda_pool_stats *out);

/* True when the current step has a segment with an adapter. */
bool qv_cuda_lora_rt_active(const qv_cuda_lora_rt *rt);

/* Hash of the step's launch shapes (segment lengths, rank bucket, projections touched): equal
 * for steps whose LoRA launches have equal parameters apart from the table contents. */
uint64_t qv_cuda_lora_rt_shape(const qv_cuda_lora_rt *rt);

/* After the base projections ps[0..n_p) of `layer` (1..3, all reading x_in (n, n_in) backend
 * memory): ys[k] (n, n_out of ps[k]) += LoRA of each segment's adapter (one shrink + one expand
 * for the whole group), then ys[k]'s rows are scaled by each segment's IA3 output vector or DoRA
 * scale (one launch; DoRA keeps the base bias out of the scaling). */
void qv_cuda_lora_rt_projs(qv_cuda_lora_rt *rt, int layer, const enum qv_proj *ps, int n_p,
                           const float *x_in, float *const *ys);

/* The ids the base embedding lookup should use: `tokens`, or when the step has virtual tokens
 * (prompt / P-tuning adapters, ids -1 - k) a copy with them replaced by 0. rt may be NULL. */
const int32_t *qv_cuda_lora_rt_ids(const qv_cuda_lora_rt *rt, const int32_t *tokens);
/* After that lookup into x (n, dim) backend memory: the rows of virtual tokens become their
 * adapter's prompt embeddings (one launch). */
void qv_cuda_lora_rt_embed(qv_cuda_lora_rt *rt, float *x);

/* True when the step scales the output of projection p (IA3 or DoRA vectors): forward.c then
 * keeps that projection's output out of the residual stream until it is scaled. */
bool qv_cuda_lora_rt_scales_output(const qv_cuda_lora_rt *rt, enum qv_proj p);

/* Before projection p of `layer` reads x (n, n_in of p) backend memory: x's rows *= each
 * segment's IA3 input vector of p (PEFT's feedforward modules: down_proj). One launch. */
void qv_cuda_lora_rt_scale_input(qv_cuda_lora_rt *rt, int layer, enum qv_proj p, float *x);

/* True when the step has a bottleneck unit after sub-block `where` (0 attention, 1 FFN) in
 * some segment: forward.c then keeps that sub-block's output h out of the residual stream until
 * qv_cuda_lora_rt_block_out has run. */
bool qv_cuda_lora_rt_has_block_out(const qv_cuda_lora_rt *rt, int where);
/* After sub-block `where` of `layer` wrote h (n, dim) and before x (n, dim, the residual stream
 * entering it) += h: every segment's bottleneck unit there rewrites its rows of h so that x + h
 * is the unit's output (one launch). scratch_o, scratch_t: backend memory of n rows of
 * ld_scratch >= max(dim, d) floats, free for the call (forward.c passes the gate and up
 * buffers, ld_scratch n_ff). */
void qv_cuda_lora_rt_block_out(qv_cuda_lora_rt *rt, int layer, int where, const float *x, float *h,
                               float *scratch_o, float *scratch_t, int ld_scratch);
/* After the attention of `layer` wrote att (n, n_heads * head_dim) from the roped queries q:
 * att += every adaption-prompt segment's gated prompt attention, and the residual rows x of
 * those segments += the o_proj bias (PEFT projects the adapter output, bias included, apart).
 * One launch per layer while the step has an adaption prompt. */
void qv_cuda_lora_rt_attn(qv_cuda_lora_rt *rt, int layer, const float *q, float *att, float *x);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_LORA_H */
