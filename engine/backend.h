/*
 * backend.h - the internal compute backend vtable (struct qv_backend_i).
 *
 * The forward pass (forward.c) is written once against this interface; engine/cpu/ implements
 * it on the host (always built, the numerical reference) and engine/cuda/ on the GPU.
 * Activations are F32 row-major [n_tokens, width]. Weights are qv_tensor views in any dtype.
 *
 * Numerical contract (tested): every op computes each output element from its own inputs in an
 * order that does not depend on how many tokens are in the batch or on the thread count, so a
 * sequence's logits are bitwise identical alone or inside any batch.
 *
 * Thread: a backend instance is confined to the engine thread that created it; it may use its
 * own worker threads internally.
 */
#ifndef QV_BACKEND_H
#define QV_BACKEND_H

#include "core.h"
#include "dtype.h"
#include "sample_row.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_backend qv_backend;

/* Paged KV pool of one backend. Page p of layer l holds `page_size` token slots:
 * k[((l * n_pages + p) * page_size + slot) * kv_dim + i], kv_dim = n_kv_heads * head_dim,
 * elements of elem_bytes each (F32; a device backend may store bf16, see kv_elem_bytes). */
typedef struct qv_kv_pool {
    int n_layers;
    int n_pages;
    int page_size; /* tokens per page */
    int n_kv_heads;
    int head_dim;
    float *k;       /* (n_layers, n_pages, page_size, n_kv_heads, head_dim) */
    float *v;       /* (n_layers, n_pages, page_size, n_kv_heads, head_dim) */
    int elem_bytes; /* 4 (F32) or 2 (bf16, as the backend chose at creation); 0: the backend's
                       current choice (pools built by hand in tests) */
} qv_kv_pool;

/* Attention work for one step. Token t belongs to sequence tok_seq[t] and sits at absolute
 * position tok_pos[t]; it attends causally to positions [max(0, pos-window+1), pos] of its own
 * sequence, whose K/V (including the current step's, already stored) are found through the
 * sequence's page table: position j lives in page page_table[seq][j / page_size], slot
 * j % page_size. */
typedef struct qv_attn_batch {
    int n_tokens;
    const int32_t *tok_seq; /* [n_tokens] index into the per-sequence arrays */
    const int32_t *tok_pos; /* [n_tokens] absolute position */
    int n_seqs;
    const int32_t *const *page_table; /* [n_seqs] -> [pages of that sequence] */
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int window;  /* sliding window in tokens, 0 = unlimited */
    float scale; /* 1/sqrt(head_dim) */
} qv_attn_batch;

struct qv_backend_i {
    const char *name;
    void (*destroy)(qv_backend *be);

    /* Memory owned by the backend (host memory on the CPU backend). NULL on failure. */
    void *(*alloc)(qv_backend *be, size_t n_bytes);
    void (*free)(qv_backend *be, void *p);

    /* out[i, :] = table row ids[i] dequantized to F32. out (n, table.n_cols). */
    void (*get_rows)(qv_backend *be, const qv_tensor *table, const int32_t *ids, int n, float *out);
    /* y (n, w.n_rows) = x (n, w.n_cols) · wᵀ (+ bias when bias != NULL, bias F32 [n_rows]).
     * fp32 accumulation; weights are read in their stored dtype (fused dequantize-and-dot). */
    void (*matmul)(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                   const float *bias);
    /* y (n, dim) = x / sqrt(mean(x^2) + eps) * w. x and y may alias. */
    void (*rmsnorm)(qv_backend *be, const float *x, const float *w, int n, int dim, float eps,
                    float *y);
    /* In-place HF rotate_half RoPE on x (n, n_heads*head_dim) at positions pos[n];
     * angle_i = (float)pos * inv_freq[i], i < head_dim/2. */
    void (*rope)(qv_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                 const float *inv_freq);
    /* out[i] = silu(gate[i]) * up[i] for i < n_elems. out may alias gate. */
    void (*swiglu)(qv_backend *be, const float *gate, const float *up, float *out, size_t n_elems);
    /* y[i] += x[i] for i < n_elems. */
    void (*add)(qv_backend *be, float *y, const float *x, size_t n_elems);
    /* Stores k, v (n, kv_dim) of `layer` into pool slots: token i goes to page slot_page[i],
     * slot slot_off[i]. */
    void (*kv_store)(qv_backend *be, qv_kv_pool *pool, int layer, const float *k, const float *v,
                     int n, const int32_t *slot_page, const int32_t *slot_off);
    /* out (n_tokens, n_heads*head_dim) = softmax(q kᵀ · scale + causal mask) v over the
     * paged cache of `layer`; softmax in fp32. */
    void (*attention)(qv_backend *be, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                      const float *q, float *out);

    /* Bytes per stored K/V element of pools created now: 4 (F32) or 2 (bf16). NULL: 4. */
    int (*kv_elem_bytes)(qv_backend *be);

    /* Device backends only; NULL on host-memory backends (the CPU), whose memory callers read
     * and write directly. */
    /* Waits for all enqueued work, then copies n_bytes of backend memory src to host dst
     * (n_bytes 0: only waits). Returns the first error of any op since the last call
     * (QV_ERR_DEVICE, sticky). The only place where the host waits for the device. */
    qv_status (*download)(qv_backend *be, void *dst, const void *src, size_t n_bytes,
                          qv_error *err);
    /* Copies n_bytes of host src into backend memory dst; src may be reused on return. */
    void (*upload)(qv_backend *be, void *dst, const void *src, size_t n_bytes);
    /* dst[i, :] = src[idx[i], :] (width floats); idx is a host array. */
    void (*gather_rows)(qv_backend *be, const float *src, const int32_t *idx, int n, int width,
                        float *dst);
    /* out[i] = index of the first maximum of x[i, :] (x (n, width)); out in backend memory. */
    void (*argmax)(qv_backend *be, const float *x, int n, int width, int32_t *out);
    /* out[i] = the token the host sampler (sampler.h) draws from row i of x (n, width) with
     * parameters rows[i] and its uniform number rows[i].u; rows[i].temperature 0 is the argmax.
     * Penalties rewrite the rows in place from pen (pen_cap entries, rows index into it; NULL
     * when no row has any). lp (n entries, or NULL): every row's token, and for rows with
     * n_logprobs > 0 the log-probabilities the host sampler reports; pen_raw (pen_cap floats)
     * is scratch for them. rows and pen are host arrays; x, out, lp and pen_raw backend memory.
     * NULL on backends that sample on the host (callers use argmax, or the host sampler). */
    void (*sample)(qv_backend *be, float *x, int n, int width, const qv_sample_row *rows,
                   const qv_token_count *pen, int pen_cap, float *pen_raw, int32_t *out,
                   qv_logprobs *lp);
    /* y (n, w.n_rows) += x · wᵀ (+ bias). NULL: callers use matmul then add. */
    void (*matmul_acc)(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                       const float *bias);
    /* A forward step whose batch shape hashes to `key` (0 = run eagerly, record nothing)
     * begins; it ends at the next download. The backend may record the step's ops as a CUDA
     * graph and replay it for later steps with the same key: then the ops only stage their host
     * arrays and the download launches the graph. Returns 1 when replaying. If a replayed step's
     * ops differ from the recording, nothing has run and download returns QV_ERR_BUSY: the
     * caller reruns the step with key 0. NULL: no graphs. */
    int (*step_begin)(qv_backend *be, uint64_t key);
};

struct qv_backend {
    const struct qv_backend_i *iface;
    void *ctx; /* implementation state */
};

/* Creates the CPU backend with n_threads worker threads (0 = all online cores).
 * Owner: the caller, release with be->iface->destroy(be). */
qv_status qv_backend_cpu_create(int n_threads, qv_backend **out, qv_error *err);

/* The CPU kernels a backend created now runs, for logs: "avx512" (AVX2 kernels, AVX-512
 * matmul), "avx2" or "portable": the CPU's widest, capped by QV_CPU_SIMD ("0" or "avx2"). */
const char *qv_backend_cpu_kernels(void);

/* K/V pools created on `be` from now on store bf16 (round to nearest even; attention widens
 * them exactly to F32) instead of F32: half the bytes per token. Pools already made keep
 * their type (qv_kv_pool.elem_bytes). */
void qv_backend_cpu_set_kv_bf16(qv_backend *be, bool on);

#ifdef __cplusplus
}
#endif
#endif /* QV_BACKEND_H */
