/*
 * adapter_apply.h - adapters inside the forward pass: per-segment application of every adapter
 * kind (FORMATS.md 4 and 5.4) at a few hook points of forward.c.
 *
 * What: a batch (qv_batch) may carry segments of contiguous tokens, each with its own adapter or
 * none. qv_adapter_rt_begin validates them for one step; the hooks then modify the base
 * computation for the tokens of each segment: LoRA / DoRA / rsLoRA / lora_bias on the seven
 * projections (one segmented shrink + expand per projection), IA³ scaling, embedding LoRA,
 * modules_to_save embed/lm_head, trainable tokens, lm_head LoRA, prompt/P-tuning virtual tokens
 * (token id -1-k = virtual token k), adaption prompt (gated attention over adapter tokens) and
 * bottleneck adapters. Prefix tuning acts through the KV cache: qv_adapter_prefix_store writes a
 * sequence's prefix K/V before its first real token.
 * What not: no scheduling (the engine orders sequences and builds segments), no device
 * backends (refused with QV_ERR_UNSUPPORTED), no adapter loading (adapters/adapters.h).
 * Invariant: tokens of segments without an adapter see exactly the base computation, and every
 * token's result depends only on its own row and its own adapter (batch invariance).
 * Thread: the engine thread that owns the backend; adapters are only read.
 */
#ifndef QV_ADAPTER_APPLY_H
#define QV_ADAPTER_APPLY_H

#include "adapters/adapters.h"
#include "backend.h"
#include "forward.h"
#include "kv_cache.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_adapter_rt qv_adapter_rt;

/* Creates the runtime for batches of up to max_tokens tokens of model `m` on backend `be`.
 * Owner: caller (qv_adapter_rt_destroy); m and be must outlive it. Errors: QV_ERR_UNSUPPORTED
 * when `be` is a device backend, QV_ERR_NOMEM. Thread: engine thread. */
qv_status qv_adapter_rt_create(const qv_model *m, qv_backend *be, int max_tokens,
                               qv_adapter_rt **out, qv_error *err);
/* Accepts NULL. */
void qv_adapter_rt_destroy(qv_adapter_rt *rt);

/* Starts a step: validates b's segments (seg_start covers [0, n_tokens) in order, adapters fit
 * the model, negative token ids only name virtual tokens of a prompt/P-tuning segment) and sizes
 * the scratch. Returns QV_OK with nothing to do when b->n_segs == 0.
 * Errors: QV_ERR_INVALID (malformed segments, mismatched adapter), QV_ERR_UNSUPPORTED (an adapter
 * feature not implemented here), QV_ERR_NOMEM. */
qv_status qv_adapter_rt_begin(qv_adapter_rt *rt, const qv_batch *b, qv_error *err);

/* True when the current step has at least one segment with an adapter. */
bool qv_adapter_rt_active(const qv_adapter_rt *rt);

/* Hooks, called by forward.c in this order per step (only when active). x and y are F32
 * row-major [n_tokens, width] host arrays. */

/* x (n, dim) = the embeddings of b's tokens, adapter embeddings applied (replaces get_rows). */
void qv_adapter_rt_embed(qv_adapter_rt *rt, float *x);
/* IA³ input scaling of projection p of `layer`: x_in (n, n_in) is scaled in place. Call just
 * before the projection's matmul (used for down_proj). */
void qv_adapter_rt_proj_input(qv_adapter_rt *rt, int layer, enum qv_proj p, float *x_in);
/* After y (n, n_out) = x_in · Wᵀ + bias for projection p of `layer`: adds LoRA, applies DoRA and
 * IA³ output scaling for each segment. bias is the base bias (or NULL). */
void qv_adapter_rt_proj(qv_adapter_rt *rt, int layer, enum qv_proj p, const float *x_in, float *y,
                        const float *bias);
/* The same for n_p (1..3) projections that share the input x_in (q,k,v or gate,up), with one
 * segmented shrink and one expand for all of them: ys[k] and biases[k] belong to ps[k]. */
void qv_adapter_rt_projs(qv_adapter_rt *rt, int layer, const enum qv_proj *ps, int n_p,
                         const float *x_in, float *const *ys, const float *const *biases);
/* After attention: att (n, n_heads*head_dim) += adaption-prompt attention of `layer`, from the
 * post-RoPE queries q. */
void qv_adapter_rt_attn(qv_adapter_rt *rt, int layer, const float *q, float *att);
/* After a sub-block's output h (n, dim) (where 0: o_proj, 1: down_proj), before x += h:
 * bottleneck adapters (and the adaption prompt's second o_proj bias) rewrite h so that x + h is
 * the adapted residual stream. x is the residual stream entering the sub-block. */
void qv_adapter_rt_block_out(qv_adapter_rt *rt, int layer, int where, const float *x, float *h);
/* After logits (n_logits, n_vocab) = y · lm_headᵀ with y (n_logits, dim) the normed rows:
 * lm_head modules_to_save and lm_head LoRA of each row's segment. */
void qv_adapter_rt_logits(qv_adapter_rt *rt, const float *y, float *logits);

/* Prefix tuning: writes the adapter's raw prefix K/V (no RoPE) into positions
 * 0 .. ad->n_virtual-1 of `seq` for every layer; the caller has reserved those positions and
 * feeds real tokens from position n_virtual on. Errors: QV_ERR_INVALID (not a prefix adapter,
 * shape mismatch, positions not reserved), QV_ERR_UNSUPPORTED (device backend). */
qv_status qv_adapter_prefix_store(qv_backend *be, qv_kv_cache *kv, const qv_kv_seq *seq,
                                  const qv_adapter *ad, qv_error *err);

/* Shared prefix pages. attach gives the empty sequence `seq` positions 0 .. nvt-1 of prefix
 * adapter ad: the full pages (nvt / page_size of them) are written once per adapter and shared,
 * refcounted, by every attached sequence; the partial last page, if any, is the sequence's own
 * copy. *pc is created on first use. Every successful attach is paired with a detach of 1 user
 * once the sequence is released; the cache drops its pages when the last user detaches.
 * Errors: as qv_adapter_prefix_store; QV_ERR_BUSY when the pool lacks pages (nothing taken).
 * Thread: engine thread. */
typedef struct qv_adapter_prefix_cache qv_adapter_prefix_cache;
qv_status qv_adapter_prefix_attach(qv_adapter_prefix_cache **pc, qv_backend *be, qv_kv_cache *kv,
                                   qv_kv_seq *seq, const qv_adapter *ad, qv_error *err);
/* Drops n_users users of ad's entry (no-op when ad has none, e.g. nvt < page_size). */
void qv_adapter_prefix_detach(qv_adapter_prefix_cache *pc, qv_kv_cache *kv, const qv_adapter *ad,
                              int n_users);
/* Releases every held page and the cache. Accepts NULL. */
void qv_adapter_prefix_cache_free(qv_adapter_prefix_cache *pc, qv_kv_cache *kv);

/* Regroups a batch built sequence by sequence so that the tokens of equal adapters are
 * contiguous, and fills its segment fields. ad_of(ctx, s, pos) names the adapter acting on the
 * token at position pos of batch sequence s (NULL: none; an activated LoRA acts only from its
 * sequence's activation position on, so one sequence's chunk may fall in two segments). tokens,
 * pos, seq and logits_idx are b's arrays, writable, permuted in place (logits_idx keeps its order,
 * its values follow the tokens). When no sequence has an adapter the batch is left as it is with
 * n_segs = 0. *g is the grouper's scratch, created on first use (free it with
 * qv_adapter_grouper_free). Errors: QV_ERR_NOMEM. Thread: engine thread. */
typedef struct qv_adapter_grouper qv_adapter_grouper;
typedef const qv_adapter *(*qv_adapter_of_fn)(void *ctx, int s, int32_t pos);
qv_status qv_adapter_group_batch(qv_adapter_grouper **g, qv_batch *b, int32_t *tokens, int32_t *pos,
                                 int32_t *seq, int32_t *logits_idx, qv_adapter_of_fn ad_of,
                                 void *ctx, qv_error *err);
/* Accepts NULL. */
void qv_adapter_grouper_free(qv_adapter_grouper *g);

/* Checks that `ad` fits model `m` (layers, dims, KV shape for prefix tuning, DoRA scales
 * computed against a base) and uses only features implemented here. Errors: QV_ERR_INVALID,
 * QV_ERR_UNSUPPORTED. Thread: any. */
qv_status qv_adapter_check_model(const qv_adapter *ad, const qv_model *m, qv_error *err);

/* Extra leading positions an adapter adds to a sequence: n_virtual for prefix, prompt and
 * P-tuning adapters, 0 otherwise (and for NULL). */
int qv_adapter_n_prefix_positions(const qv_adapter *ad);

#ifdef __cplusplus
}
#endif
#endif /* QV_ADAPTER_APPLY_H */
