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
    /* Adapters (engine/adapter_apply.h; CPU backend only). n_segs == 0: the base model for
     * every token. Otherwise segment s covers tokens [seg_start[s], seg_start[s+1])
     * (seg_start[0] == 0, seg_start[n_segs] == n_tokens) and runs seg_adapter[s] (NULL: none).
     * In a prompt/P-tuning segment, token id -1-k is the adapter's virtual token k. */
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

#ifdef __cplusplus
}
#endif
#endif /* QV_FORWARD_H */
