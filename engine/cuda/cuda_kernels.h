/*
 * cuda_kernels.h - extern "C" launchers of the CUDA backend's kernels (cuda_kernels.cu).
 *
 * What: element-wise and row-wise ops on device memory, enqueued on the given stream. Every
 * launcher checks the launch with cudaGetLastError, logs statement/file/line on failure and
 * returns -1 (0 on success); none synchronises. What not: no allocation, no cuBLAS (the
 * projections are in backend_cuda.c). Activations are F32; "half" weights are bf16, or fp16
 * when `fp16` is non-zero.
 * Thread: any host thread that owns the stream.
 */
#ifndef QV_CUDA_KERNELS_H
#define QV_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[i] = half(x[i]) (round to nearest even), i < n. */
int qv_cuda_f32_to_half(const float *x, void *y, size_t n, int fp16, cudaStream_t s);
/* out[i, :] = float(table[ids[i], :]), table (rows, cols) half. ids on the device. */
int qv_cuda_get_rows(const void *table, int fp16, const int32_t *ids, int n, int cols, float *out,
                     cudaStream_t s);
/* y = x / sqrt(mean(x^2) + eps) * w per row (sum of squares in double). x may alias y. */
int qv_cuda_rmsnorm(const float *x, const float *w, int n, int dim, float eps, float *y,
                    cudaStream_t s);
/* rmsnorm that also writes y rounded to half into yh (the next GEMM's input). */
int qv_cuda_rmsnorm_half(const float *x, const float *w, int n, int dim, float eps, float *y,
                         void *yh, int fp16, cudaStream_t s);
/* swiglu that also writes out rounded to half into oh. */
int qv_cuda_swiglu_half(const float *gate, const float *up, float *out, void *oh, int fp16,
                        size_t n, cudaStream_t s);
/* HF rotate_half RoPE in place; pos and inv_freq on the device. */
int qv_cuda_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                 const float *inv_freq, cudaStream_t s);
/* RoPE of two tensors at the same positions in one launch (q and k). */
int qv_cuda_rope2(float *x1, int h1, float *x2, int h2, int n, int head_dim, const int32_t *pos,
                  const float *inv_freq, cudaStream_t s);
/* out = silu(gate) * up; out may alias gate. */
int qv_cuda_swiglu(const float *gate, const float *up, float *out, size_t n, cudaStream_t s);
/* y += x. */
int qv_cuda_add(float *y, const float *x, size_t n, cudaStream_t s);
/* y[r, c] += bias[c] for r < n_rows, c < n_cols. */
int qv_cuda_add_bias(float *y, const float *bias, int n_rows, int n_cols, cudaStream_t s);
/* Programmatic dependent launch for every launcher below (process-wide; QV_CUDA_PDL): each
 * kernel may start while the previous one drains and waits (griddepcontrol.wait) before it
 * touches memory that kernel writes. Off by default. Thread: set before launching. */
void qv_cuda_set_pdl(int on);

/* Pool slot of token i: ((page[i]) * page_size + off[i]) * kv_dim within the layer's base.
 * kv_bf16 != 0: the pool holds bf16 elements (same slot index, 2-byte elements: a layer uses the
 * first half of its F32-sized region), k/v rounded to nearest even. */
int qv_cuda_kv_store(float *k_layer, float *v_layer, int page_size, int kv_dim, const float *k,
                     const float *v, int n, const int32_t *page, const int32_t *off, int kv_bf16,
                     cudaStream_t s);
/* RoPE of q (hq heads) and k (hk heads) at the same positions, then k (rotated) and v stored
 * in the pool as qv_cuda_kv_store does (kv_dim = hk * head_dim): one launch for rope2 +
 * kv_store. q and k are rotated in place (k keeps its rotated values, as after rope2). */
int qv_cuda_rope2_kv_store(float *q, int hq, float *k, int hk, const float *v, int n, int head_dim,
                           const int32_t *pos, const float *inv_freq, float *k_layer,
                           float *v_layer, int page_size, const int32_t *page, const int32_t *off,
                           int kv_bf16, cudaStream_t s);
/* dst[i, :] = src[idx[i], :] (width floats), idx on the device. */
int qv_cuda_gather_rows(const float *src, const int32_t *idx, int n, int width, float *dst,
                        cudaStream_t s);
/* out[i] = argmax_j x[i, j] (first of equal maxima). */
int qv_cuda_argmax(const float *x, int n, int width, int32_t *out, cudaStream_t s);
/* Deterministic uniform values in [-scale, scale) from (seed, index), written as half. */
int qv_cuda_fill_random_half(void *dst, size_t n, int fp16, uint64_t seed, float scale,
                             cudaStream_t s);
/* dst[i] = value. */
int qv_cuda_fill_f32(float *dst, size_t n, float value, cudaStream_t s);

/* Skinny GEMM for n <= QV_CUDA_GEMV_MAX_N rows: y (n, rows) = x (n, cols) · Wᵀ + beta * y,
 * W (rows, cols) and x both half (bf16, or fp16 when fp16 != 0), fp32 accumulation, one warp
 * per output row with 16-byte loads. Requires cols % 8 == 0 and 16-byte aligned W and x. */
#define QV_CUDA_GEMV_MAX_N 8
int qv_cuda_gemv(const void *w, const void *x, float *y, int rows, int cols, int n, float beta,
                 int fp16, cudaStream_t s);
/* Several weights applied to the same x in one launch (q/k/v, gate/up): segment i computes
 * y[i] (n, rows[i]) = x · w[i]ᵀ + beta * y[i]. */
#define QV_CUDA_GEMV_MAX_SEGS 4
typedef struct qv_cuda_gemv_segs {
    const void *w[QV_CUDA_GEMV_MAX_SEGS];
    float *y[QV_CUDA_GEMV_MAX_SEGS];
    int rows[QV_CUDA_GEMV_MAX_SEGS];
    int n_segs;
} qv_cuda_gemv_segs;
int qv_cuda_gemv_multi(const qv_cuda_gemv_segs *g, const void *x, int cols, int n, float beta,
                       int fp16, cudaStream_t s);

/* The "new" skinny GEMM (QV_CUDA_GEMV=new) for n <= QV_CUDA_GEMV_MAX_N rows, with optional
 * fusions. One 256-thread block per QV_CUDA_GEMV2_ROWS output rows of one segment; the 8 warps
 * split the reduction (cols) and each lane keeps 2 x ROWS independent 16-byte weight loads in
 * flight (streaming loads: weights are read once per step); x is loaded once per column chunk
 * for all ROWS rows; the warps' partial sums are added in a fixed order through shared memory
 * (deterministic, and a token's result does not depend on n). Requires cols % 8 == 0 and
 * 16-byte aligned pointers.
 *  - norm_w != NULL (fused RMSNorm prologue): the input is x (n, cols) F32; every block computes
 *    each token's 1/rms (squares summed in double, as qv_cuda_rmsnorm) and uses
 *    half(norm_w[i] * (x[i] * inv)), the exact value qv_cuda_rmsnorm_half would have written;
 *    block 0 also writes that normalised row to norm_y (F32, unless NULL; must not overlap x)
 *    and norm_yh (half), so later consumers find them as after qv_cuda_rmsnorm_half.
 *    Otherwise the input is xh (n, cols) half.
 *  - swiglu_out != NULL (fused SwiGLU epilogue): g has exactly 2 segments with equal rows (gate,
 *    up), beta must be 0; a block takes ROWS/2 rows of each, writes gate and up as the plain
 *    GEMV would, then swiglu_out = silu(gate) * up (may alias gate) and its half copy
 *    swiglu_oh (must not overlap xh or norm_yh). */
#define QV_CUDA_GEMV2_ROWS 4
typedef struct qv_cuda_gemv2_args {
    qv_cuda_gemv_segs g;
    const void *xh;      /* half input when norm_w == NULL */
    const float *x;      /* F32 input when norm_w != NULL */
    const float *norm_w; /* fused RMSNorm weights (F32, cols) or NULL */
    float eps;
    float *norm_y;     /* fused RMSNorm: F32 normalised rows (block 0), or NULL */
    void *norm_yh;     /* fused RMSNorm: half normalised rows (block 0), or NULL */
    float *swiglu_out; /* fused SwiGLU output (n, rows) F32, or NULL */
    void *swiglu_oh;   /* fused SwiGLU output rounded to half */
    int cols, n, fp16;
    float beta;
    int prefetch; /* set by qv_cuda_gemv2 (PDL on: weight rows prefetched into L2 before the
                     wait for the previous kernel) */
} qv_cuda_gemv2_args;
int qv_cuda_gemv2(const qv_cuda_gemv2_args *a, cudaStream_t s);

/* Paged causal attention (backend.h semantics), all pointers on the device. */
typedef struct qv_cuda_attn_args {
    const float *q;       /* (n_tokens, n_heads*head_dim) */
    float *out;           /* (n_tokens, n_heads*head_dim) */
    const float *k_layer; /* the layer's pool base: (n_pages, page_size, kv_dim) */
    const float *v_layer;
    const int32_t *tok_seq;
    const int32_t *tok_pos;
    const int32_t *tables; /* (n_seqs, table_stride) page ids */
    int table_stride;
    void *out_half; /* non-NULL: out is also written rounded to half here (fp16 or bf16) */
    int fp16;
    int kv_bf16; /* the pool holds bf16 K/V (qv_cuda_kv_store); sums stay fp32 */
    int n_tokens, n_heads, n_kv_heads, head_dim, page_size, window;
    float scale;
} qv_cuda_attn_args;

/* Largest head_dim the attention kernel takes. */
#define QV_CUDA_MAX_HEAD_DIM 256

int qv_cuda_attention(const qv_cuda_attn_args *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_KERNELS_H */
