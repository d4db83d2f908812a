/*
 * cuda_kernels.cu - the CUDA backend's kernels and their extern "C" launchers
 * (cuda_kernels.h).
 *
 * Math mirrors engine/cpu/ops.c and attention.c in fp32 (rmsnorm sums squares in double, RoPE
 * and softmax use the accurate sincosf/expf, no fast-math). Attention: one 128-thread block per
 * (token, head); keys are visited in chunks of ATT_CHUNK positions with an online softmax
 * (running max and sum rescaled per chunk); threads split the dot products by position and the
 * value sums by (position group, dimension); K/V come from an F32 or a bf16 pool. Skinny GEMMs:
 * the warp-per-row k_gemv and the split-K k_gemv2 with its fused RMSNorm prologue and SwiGLU
 * epilogue (cuda_kernels.h). Launches go through launch(), which adds the programmatic
 * dependent launch attribute when qv_cuda_set_pdl(1) was called; every kernel starts with
 * griddepcontrol (no-ops otherwise). What not: no allocation, no synchronisation.
 * Thread: launchers run on the host thread that owns the stream.
 */
#include <stdio.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_kernels.h"
#include "launch.cuh"

#define LAUNCH_CHECK(what)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = cudaGetLastError();                                                       \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "quiver cuda: launch of %s failed: %s (%s:%d)\n", what,                \
                    cudaGetErrorString(e_), __FILE__, __LINE__);                                   \
            return -1;                                                                             \
        }                                                                                          \
        return 0;                                                                                  \
    } while (0)

/* Programmatic dependent launch (QV_CUDA_PDL=1, sm_90): launches carry the programmatic
 * stream serialization attribute, so a kernel's blocks may start while the previous kernel's
 * last blocks still run. Every kernel here first lets its own dependents launch, then waits
 * (griddepcontrol.wait: the previous grid complete and its memory visible) before it touches
 * memory another kernel writes; only the GEMVs prefetch their weight rows into L2 before the
 * wait (weights are read-only). Without the attribute both instructions are no-ops. */
static int g_pdl;

static __device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
static __device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
#define PDL_ENTER()                                                                                \
    do {                                                                                           \
        pdl_trigger();                                                                             \
        pdl_wait();                                                                                \
    } while (0)

/* Prefetches bytes [p, p + n) into L2, 128-byte lines spread over the block's threads. */
static __device__ __forceinline__ void prefetch_l2(const void *p, size_t n) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    for (size_t o = (size_t)threadIdx.x * 128; o < n; o += (size_t)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"((const char *)p + o));
#endif
}

extern "C" void qv_cuda_set_pdl(int on) { g_pdl = on; }

/* kernel<<<grid, block, 0, s>>>(args...), with the PDL attribute when g_pdl is set. A failed
 * launch is left for cudaGetLastError (LAUNCH_CHECK). */
template <typename... KArgs, typename... Args>
static void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, cudaStream_t s, Args... args) {
#ifndef QV_CUDA_EMU /* the emulator runs launches in order: nothing to overlap */
    if (g_pdl) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1] = {};
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = 0;
        cfg.stream = s;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        (void)cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
        return;
    }
#endif
    QV_LAUNCH(grid, block, s, kernel)(args...);
}

static unsigned blocks_for(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    if (b > 65535u * 16u) b = 65535u * 16u; /* grid-stride loops cover the rest */
    return b ? (unsigned)b : 1u;
}

static __device__ __forceinline__ float half_load(const void *p, size_t i, int fp16) {
    return fp16 ? __half2float(((const __half *)p)[i])
                : __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

/* ---- conversions, fills ---- */

static __global__ void k_f32_to_half(const float *x, void *y, size_t n, int fp16) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        if (fp16)
            ((__half *)y)[i] = __float2half_rn(x[i]);
        else
            ((__nv_bfloat16 *)y)[i] = __float2bfloat16_rn(x[i]);
    }
}

extern "C" int qv_cuda_f32_to_half(const float *x, void *y, size_t n, int fp16, cudaStream_t s) {
    launch(k_f32_to_half, blocks_for(n, 256), 256, s, x, y, n, fp16);
    LAUNCH_CHECK("f32_to_half");
}

static __device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static __global__ void k_fill_random(void *dst, size_t n, int fp16, uint64_t seed, float scale) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint64_t r = mix64(seed * 0x100000001b3ull + i);
        float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        float v = (2.0f * u - 1.0f) * scale;
        if (fp16)
            ((__half *)dst)[i] = __float2half_rn(v);
        else
            ((__nv_bfloat16 *)dst)[i] = __float2bfloat16_rn(v);
    }
}

extern "C" int qv_cuda_fill_random_half(void *dst, size_t n, int fp16, uint64_t seed, float scale,
                                        cudaStream_t s) {
    launch(k_fill_random, blocks_for(n, 256), 256, s, dst, n, fp16, seed, scale);
    LAUNCH_CHECK("fill_random_half");
}

static __global__ void k_fill_f32(float *dst, size_t n, float value) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = value;
}

extern "C" int qv_cuda_fill_f32(float *dst, size_t n, float value, cudaStream_t s) {
    launch(k_fill_f32, blocks_for(n, 256), 256, s, dst, n, value);
    LAUNCH_CHECK("fill_f32");
}

/* ---- embedding, gathers ---- */

static __global__ void k_get_rows(const void *table, int fp16, const int32_t *ids, int cols,
                                  float *out) {
    PDL_ENTER();
    const size_t src = (size_t)ids[blockIdx.x] * (size_t)cols;
    float *o = out + (size_t)blockIdx.x * (size_t)cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x)
        o[c] = half_load(table, src + (size_t)c, fp16);
}

extern "C" int qv_cuda_get_rows(const void *table, int fp16, const int32_t *ids, int n, int cols,
                                float *out, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_get_rows, n, 256, s, table, fp16, ids, cols, out);
    LAUNCH_CHECK("get_rows");
}

static __global__ void k_gather_rows(const float *src, const int32_t *idx, int width, float *dst) {
    PDL_ENTER();
    const float *a = src + (size_t)idx[blockIdx.x] * (size_t)width;
    float *o = dst + (size_t)blockIdx.x * (size_t)width;
    for (int c = threadIdx.x; c < width; c += blockDim.x)
        o[c] = a[c];
}

extern "C" int qv_cuda_gather_rows(const float *src, const int32_t *idx, int n, int width,
                                   float *dst, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_gather_rows, n, 256, s, src, idx, width, dst);
    LAUNCH_CHECK("gather_rows");
}

/* ---- block reductions (blockDim.x a multiple of 32, at most 1024) ---- */

template <typename T> static __device__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Every thread gets the block's sum. red has 32 entries. */
template <typename T> static __device__ T block_sum(T v, T *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_sum(v);
    __syncthreads(); /* red may still be read from a previous call */
    if (lane == 0) red[wid] = v;
    __syncthreads();
    T t = lane < nw ? red[lane] : (T)0;
    return warp_sum(t);
}
static __device__ float block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : -INFINITY;
    return warp_max(t);
}

/* ---- rmsnorm ---- */

static __global__ void k_rmsnorm(const float *x, const float *w, int dim, float eps, float *y) {
    PDL_ENTER();
    __shared__ double red[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)dim;
    float *yr = y + (size_t)blockIdx.x * (size_t)dim;
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)xr[i] * (double)xr[i];
    ss = block_sum(ss, red);
    const float mean = (float)(ss / (double)dim);
    const float inv = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = w[i] * (xr[i] * inv);
}

extern "C" int qv_cuda_rmsnorm(const float *x, const float *w, int n, int dim, float eps, float *y,
                               cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_rmsnorm, n, 256, s, x, w, dim, eps, y);
    LAUNCH_CHECK("rmsnorm");
}

static __device__ __forceinline__ void half_store(void *p, size_t i, float v, int fp16) {
    if (fp16)
        ((__half *)p)[i] = __float2half_rn(v);
    else
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}

static __global__ void k_rmsnorm_half(const float *x, const float *w, int dim, float eps, float *y,
                                      void *yh, int fp16) {
    PDL_ENTER();
    __shared__ double red[32];
    const float *xr = x + (size_t)blockIdx.x * (size_t)dim;
    float *yr = y + (size_t)blockIdx.x * (size_t)dim;
    const size_t base = (size_t)blockIdx.x * (size_t)dim;
    double ss = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)xr[i] * (double)xr[i];
    ss = block_sum(ss, red);
    const float mean = (float)(ss / (double)dim);
    const float inv = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = w[i] * (xr[i] * inv);
        yr[i] = v;
        half_store(yh, base + (size_t)i, v, fp16);
    }
}

extern "C" int qv_cuda_rmsnorm_half(const float *x, const float *w, int n, int dim, float eps,
                                    float *y, void *yh, int fp16, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_rmsnorm_half, n, 256, s, x, w, dim, eps, y, yh, fp16);
    LAUNCH_CHECK("rmsnorm_half");
}

static __global__ void k_swiglu_half(const float *g, const float *u, float *o, void *oh, int fp16,
                                     size_t n) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float a = g[i];
        const float v = a / (1.0f + expf(-a)) * u[i];
        o[i] = v;
        half_store(oh, i, v, fp16);
    }
}

extern "C" int qv_cuda_swiglu_half(const float *gate, const float *up, float *out, void *oh,
                                   int fp16, size_t n, cudaStream_t s) {
    launch(k_swiglu_half, blocks_for(n, 256), 256, s, gate, up, out, oh, fp16, n);
    LAUNCH_CHECK("swiglu_half");
}

/* ---- rope: one block per token, threads over (head, i < half) ---- */

static __global__ void k_rope(float *x1, int h1, float *x2, int h2, int head_dim,
                              const int32_t *pos, const float *inv_freq) {
    PDL_ENTER();
    const int half = head_dim / 2;
    const float p = (float)pos[blockIdx.x];
    float *r1 = x1 + (size_t)blockIdx.x * (size_t)h1 * (size_t)head_dim;
    float *r2 = x2 ? x2 + (size_t)blockIdx.x * (size_t)h2 * (size_t)head_dim : NULL;
    for (int k = threadIdx.x; k < (h1 + h2) * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        float sn, cs;
        sincosf(p * inv_freq[i], &sn, &cs);
        float *v =
            h < h1 ? r1 + (size_t)h * (size_t)head_dim : r2 + (size_t)(h - h1) * (size_t)head_dim;
        const float a = v[i], b = v[i + half];
        v[i] = a * cs - b * sn;
        v[i + half] = b * cs + a * sn;
    }
}

extern "C" int qv_cuda_rope(float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                            const float *inv_freq, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_rope, n, 128, s, x, n_heads, (float *)NULL, 0, head_dim, pos, inv_freq);
    LAUNCH_CHECK("rope");
}

extern "C" int qv_cuda_rope2(float *x1, int h1, float *x2, int h2, int n, int head_dim,
                             const int32_t *pos, const float *inv_freq, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_rope, n, 128, s, x1, h1, x2, h2, head_dim, pos, inv_freq);
    LAUNCH_CHECK("rope2");
}

/* ---- element-wise ---- */

static __global__ void k_swiglu(const float *g, const float *u, float *o, size_t n) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float a = g[i];
        o[i] = a / (1.0f + expf(-a)) * u[i];
    }
}

extern "C" int qv_cuda_swiglu(const float *gate, const float *up, float *out, size_t n,
                              cudaStream_t s) {
    launch(k_swiglu, blocks_for(n, 256), 256, s, gate, up, out, n);
    LAUNCH_CHECK("swiglu");
}

static __global__ void k_add(float *y, const float *x, size_t n) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

extern "C" int qv_cuda_add(float *y, const float *x, size_t n, cudaStream_t s) {
    launch(k_add, blocks_for(n, 256), 256, s, y, x, n);
    LAUNCH_CHECK("add");
}

static __global__ void k_add_bias(float *y, const float *b, int n_cols, size_t n) {
    PDL_ENTER();
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] += b[i % (size_t)n_cols];
}

extern "C" int qv_cuda_add_bias(float *y, const float *bias, int n_rows, int n_cols,
                                cudaStream_t s) {
    const size_t n = (size_t)n_rows * (size_t)n_cols;
    launch(k_add_bias, blocks_for(n, 256), 256, s, y, bias, n_cols, n);
    LAUNCH_CHECK("add_bias");
}

/* ---- KV store (F32 or bf16 pool) ---- */

static __device__ __forceinline__ void kv_put(float *base, size_t i, float v, int kv_bf16) {
    if (kv_bf16)
        reinterpret_cast<__nv_bfloat16 *>(base)[i] = __float2bfloat16_rn(v);
    else
        base[i] = v;
}

static __global__ void k_kv_store(float *kl, float *vl, int page_size, int kv_dim, const float *k,
                                  const float *v, const int32_t *page, const int32_t *off,
                                  int kv_bf16) {
    PDL_ENTER();
    const int t = blockIdx.x;
    const size_t dst = ((size_t)page[t] * (size_t)page_size + (size_t)off[t]) * (size_t)kv_dim;
    const size_t src = (size_t)t * (size_t)kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        kv_put(kl, dst + i, k[src + i], kv_bf16);
        kv_put(vl, dst + i, v[src + i], kv_bf16);
    }
}

extern "C" int qv_cuda_kv_store(float *k_layer, float *v_layer, int page_size, int kv_dim,
                                const float *k, const float *v, int n, const int32_t *page,
                                const int32_t *off, int kv_bf16, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_kv_store, n, 128, s, k_layer, v_layer, page_size, kv_dim, k, v, page, off, kv_bf16);
    LAUNCH_CHECK("kv_store");
}

/* rope2 + kv_store: one block per token. Each (head, i < half) pair is rotated by one thread
 * with the same expression as k_rope; k's rotated pair is also written to the pool slot. */
static __global__ void k_rope_kv(float *q, int hq, float *k, int hk, const float *v, int head_dim,
                                 const int32_t *pos, const float *inv_freq, float *kl, float *vl,
                                 int page_size, const int32_t *page, const int32_t *off,
                                 int kv_bf16) {
    PDL_ENTER();
    const int t = blockIdx.x, half = head_dim / 2, kv_dim = hk * head_dim;
    const float p = (float)pos[t];
    float *rq = q + (size_t)t * (size_t)hq * (size_t)head_dim;
    float *rk = k + (size_t)t * (size_t)kv_dim;
    const size_t dst = ((size_t)page[t] * (size_t)page_size + (size_t)off[t]) * (size_t)kv_dim;
    for (int j = threadIdx.x; j < (hq + hk) * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        float sn, cs;
        sincosf(p * inv_freq[i], &sn, &cs);
        const int is_k = h >= hq;
        float *r = is_k ? rk + (size_t)(h - hq) * (size_t)head_dim : rq + (size_t)h * head_dim;
        const float a = r[i], b = r[i + half];
        const float o0 = a * cs - b * sn, o1 = b * cs + a * sn;
        r[i] = o0;
        r[i + half] = o1;
        if (is_k) {
            const size_t d = dst + (size_t)(h - hq) * (size_t)head_dim;
            kv_put(kl, d + (size_t)i, o0, kv_bf16);
            kv_put(kl, d + (size_t)(i + half), o1, kv_bf16);
        }
    }
    const float *rv = v + (size_t)t * (size_t)kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
        kv_put(vl, dst + (size_t)i, rv[i], kv_bf16);
}

extern "C" int qv_cuda_rope2_kv_store(float *q, int hq, float *k, int hk, const float *v, int n,
                                      int head_dim, const int32_t *pos, const float *inv_freq,
                                      float *k_layer, float *v_layer, int page_size,
                                      const int32_t *page, const int32_t *off, int kv_bf16,
                                      cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_rope_kv, n, 128, s, q, hq, k, hk, v, head_dim, pos, inv_freq, k_layer, v_layer,
           page_size, page, off, kv_bf16);
    LAUNCH_CHECK("rope2_kv_store");
}

/* ---- argmax: one block per row ---- */

static __global__ void k_argmax(const float *x, int width, int32_t *out) {
    PDL_ENTER();
    __shared__ float sv[256];
    __shared__ int si[256];
    const float *r = x + (size_t)blockIdx.x * (size_t)width;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < width; j += blockDim.x) {
        const float v = r[j];
        if (v > best) {
            best = v;
            bi = j;
        } /* j ascending per thread: first maximum kept */
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) {
            const float v = sv[threadIdx.x + o];
            const int i = si[threadIdx.x + o];
            if (v > sv[threadIdx.x] || (v == sv[threadIdx.x] && i < si[threadIdx.x])) {
                sv[threadIdx.x] = v;
                si[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] == 0x7fffffff ? 0 : si[0];
}

extern "C" int qv_cuda_argmax(const float *x, int n, int width, int32_t *out, cudaStream_t s) {
    if (n <= 0) return 0;
    launch(k_argmax, n, 256, s, x, width, out);
    LAUNCH_CHECK("argmax");
}

/* ---- skinny GEMM (decode): one warp per output row ---- */

#define GEMV_THREADS 128

static __device__ __forceinline__ void dot8(const uint4 &w, const uint4 &x, float &acc, int fp16) {
    const unsigned wv[4] = {w.x, w.y, w.z, w.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 a, b;
        if (fp16) {
            a = __half22float2(*reinterpret_cast<const __half2 *>(&wv[k]));
            b = __half22float2(*reinterpret_cast<const __half2 *>(&xv[k]));
        } else {
            a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&wv[k]));
            b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&xv[k]));
        }
        acc = fmaf(a.x, b.x, acc);
        acc = fmaf(a.y, b.y, acc);
    }
}

template <int NT>
static __global__ void __launch_bounds__(GEMV_THREADS)
    k_gemv(qv_cuda_gemv_segs g, const uint16_t *x, int cols, int n, float beta, int fp16) {
    PDL_ENTER();
    const int lane = threadIdx.x & 31;
    int r = blockIdx.x * (GEMV_THREADS / 32) + (threadIdx.x >> 5);
    int sg = 0;
    while (sg < g.n_segs && r >= g.rows[sg])
        r -= g.rows[sg++];
    if (sg >= g.n_segs) return;
    const int rows = g.rows[sg];
    float *y = g.y[sg];
    const uint16_t *wr = (const uint16_t *)g.w[sg] + (size_t)r * (size_t)cols;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        acc[t] = 0.0f;
#pragma unroll 8 /* 8 independent 16-byte weight loads in flight per lane */
    for (int c = lane * 8; c < cols; c += 32 * 8) {
        const uint4 wv = __ldg(reinterpret_cast<const uint4 *>(wr + c));
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (t < n) {
                const uint4 xv = __ldg(reinterpret_cast<const uint4 *>(x + (size_t)t * cols + c));
                dot8(wv, xv, acc[t], fp16);
            }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        float v = warp_sum(acc[t]);
        if (lane == 0 && t < n) {
            float *o = y + (size_t)t * (size_t)rows + r;
            *o = beta != 0.0f ? v + beta * *o : v;
        }
    }
}

extern "C" int qv_cuda_gemv(const void *w, const void *x, float *y, int rows, int cols, int n,
                            float beta, int fp16, cudaStream_t s) {
    qv_cuda_gemv_segs g;
    memset(&g, 0, sizeof(g));
    g.n_segs = 1;
    g.w[0] = w;
    g.y[0] = y;
    g.rows[0] = rows;
    return qv_cuda_gemv_multi(&g, x, cols, n, beta, fp16, s);
}

/* The warp GEMVs load 16 bytes at a time: rows of a multiple of 8 halves, 16-byte aligned
 * bases. A real device faults on a misaligned vector load (the CPU emulator does not), so the
 * launchers refuse it rather than launch. */
static bool misaligned16(const void *p) { return ((uintptr_t)p & 15u) != 0; }

extern "C" int qv_cuda_gemv_multi(const qv_cuda_gemv_segs *g, const void *x, int cols, int n,
                                  float beta, int fp16, cudaStream_t s) {
    if (n <= 0) return 0;
    bool bad =
        cols % 8 != 0 || misaligned16(x) || g->n_segs < 1 || g->n_segs > QV_CUDA_GEMV_MAX_SEGS;
    int total = 0;
    for (int i = 0; !bad && i < g->n_segs; i++) {
        bad = misaligned16(g->w[i]);
        total += g->rows[i];
    }
    if (bad) {
        fprintf(stderr, "quiver cuda: gemv: cols %d or a pointer not 16-byte aligned (%s:%d)\n",
                cols, __FILE__, __LINE__);
        return -1;
    }
    const unsigned blocks = (unsigned)((total + GEMV_THREADS / 32 - 1) / (GEMV_THREADS / 32));
    const uint16_t *xp = (const uint16_t *)x;
    if (n == 1)
        launch(k_gemv<1>, blocks, GEMV_THREADS, s, *g, xp, cols, n, beta, fp16);
    else if (n == 2)
        launch(k_gemv<2>, blocks, GEMV_THREADS, s, *g, xp, cols, n, beta, fp16);
    else if (n <= 4)
        launch(k_gemv<4>, blocks, GEMV_THREADS, s, *g, xp, cols, n, beta, fp16);
    else if (n <= QV_CUDA_GEMV_MAX_N)
        launch(k_gemv<QV_CUDA_GEMV_MAX_N>, blocks, GEMV_THREADS, s, *g, xp, cols, n, beta, fp16);
    else {
        fprintf(stderr, "quiver cuda: gemv: n %d > %d (%s:%d)\n", n, QV_CUDA_GEMV_MAX_N, __FILE__,
                __LINE__);
        return -1;
    }
    LAUNCH_CHECK("gemv");
}

/* ---- skinny GEMM, "new" version: split-K over the block's warps, several rows per block ---- */

#define G2_THREADS 256
#define G2_WARPS (G2_THREADS / 32)
#define G2_R QV_CUDA_GEMV2_ROWS
#define G2_STEP (G2_THREADS * 8) /* columns one pass of the block covers */
#define G2_NORM 1
#define G2_SWIGLU 2

static __device__ __forceinline__ void half8_to_f32(const uint4 &v, float *f, int fp16) {
    const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        float2 p;
        if (fp16)
            p = __half22float2(*reinterpret_cast<const __half2 *>(&u[k]));
        else
            p = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&u[k]));
        f[2 * k] = p.x;
        f[2 * k + 1] = p.y;
    }
}

static __device__ __forceinline__ float round_half(float v, int fp16) {
    return fp16 ? __half2float(__float2half_rn(v)) : __bfloat162float(__float2bfloat16_rn(v));
}

/* x values of token t at columns c .. c+7 as the GEMM sees them (rounded to half). */
template <int MODE>
static __device__ __forceinline__ void g2_load_x(const qv_cuda_gemv2_args &a, int t, int c,
                                                 const float *nw, float inv, float *xf) {
    if (MODE & G2_NORM) {
        const float4 *xp = reinterpret_cast<const float4 *>(a.x + (size_t)t * a.cols + c);
        const float4 x0 = __ldg(xp), x1 = __ldg(xp + 1);
        const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int k = 0; k < 8; k++)
            xf[k] = round_half(nw[k] * (xv[k] * inv), a.fp16);
    } else {
        const uint4 xv =
            __ldg(reinterpret_cast<const uint4 *>((const uint16_t *)a.xh + (size_t)t * a.cols + c));
        half8_to_f32(xv, xf, a.fp16);
    }
}

template <int NT, int MODE>
static __device__ __forceinline__ void g2_step(const qv_cuda_gemv2_args &a, int c, const uint4 *w,
                                               const float *inv, float (*acc)[NT]) {
    float nw[8];
    if (MODE & G2_NORM) {
        const float4 *np = reinterpret_cast<const float4 *>(a.norm_w + c);
        const float4 n0 = __ldg(np), n1 = __ldg(np + 1);
        nw[0] = n0.x, nw[1] = n0.y, nw[2] = n0.z, nw[3] = n0.w;
        nw[4] = n1.x, nw[5] = n1.y, nw[6] = n1.z, nw[7] = n1.w;
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        if (t >= a.n) break;
        float xf[8];
        g2_load_x<MODE>(a, t, c, nw, (MODE & G2_NORM) ? inv[t] : 0.0f, xf);
#pragma unroll
        for (int i = 0; i < G2_R; i++) {
            float wf[8];
            half8_to_f32(w[i], wf, a.fp16);
            float s = acc[i][t];
#pragma unroll
            for (int k = 0; k < 8; k++)
                s = fmaf(wf[k], xf[k], s);
            acc[i][t] = s;
        }
    }
}

template <int NT, int MODE>
static __global__ void __launch_bounds__(G2_THREADS, NT == 1   ? 4
                                                     : NT == 2 ? 3
                                                               : 2) k_gemv2(qv_cuda_gemv2_args a) {
    __shared__ float part[G2_WARPS][G2_R][NT];
    __shared__ double red[G2_WARPS][NT];
    __shared__ float inv_s[NT];
    const int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
    const int cols = a.cols;

    /* Rows of this block: ROWS consecutive rows of one segment, or (SwiGLU) ROWS/2 rows of the
     * gate segment and the same rows of the up segment. Rows past a segment's end are clamped
     * for loading and not written. */
    int seg[G2_R], row[G2_R];
    if (MODE & G2_SWIGLU) {
        const int j0 = (int)blockIdx.x * (G2_R / 2);
#pragma unroll
        for (int i = 0; i < G2_R; i++) {
            seg[i] = i < G2_R / 2 ? 0 : 1;
            row[i] = j0 + (i % (G2_R / 2));
        }
    } else {
        int b = (int)blockIdx.x, sg = 0;
        while (sg < a.g.n_segs - 1) {
            const int nb = (a.g.rows[sg] + G2_R - 1) / G2_R;
            if (b < nb) break;
            b -= nb;
            sg++;
        }
#pragma unroll
        for (int i = 0; i < G2_R; i++) {
            seg[i] = sg;
            row[i] = b * G2_R + i;
        }
    }
    const uint16_t *wr[G2_R];
#pragma unroll
    for (int i = 0; i < G2_R; i++) {
        const int rows = a.g.rows[seg[i]];
        wr[i] = (const uint16_t *)a.g.w[seg[i]] + (size_t)min(row[i], rows - 1) * (size_t)cols;
    }

    /* Weights do not depend on earlier kernels: under PDL their first bytes stream into L2
     * while the previous kernel finishes. */
    pdl_trigger();
    if (a.prefetch) {
#pragma unroll
        for (int i = 0; i < G2_R; i++)
            prefetch_l2(wr[i], (size_t)cols * 2);
    }
    pdl_wait();

    /* Fused RMSNorm prologue: each token's 1/rms (squares in double, fixed order). */
    float inv[NT];
    if (MODE & G2_NORM) {
        double ss[NT];
#pragma unroll
        for (int t = 0; t < NT; t++)
            ss[t] = 0.0;
        for (int c = tid; c < cols; c += G2_THREADS)
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t < a.n) {
                    const double v = (double)a.x[(size_t)t * cols + c];
                    ss[t] += v * v;
                }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const double v = warp_sum(ss[t]);
            if (lane == 0) red[wid][t] = v;
        }
        __syncthreads();
        if (tid < NT) {
            double v = 0.0;
            for (int w = 0; w < G2_WARPS; w++)
                v += red[w][tid];
            const float mean = (float)(v / (double)cols);
            inv_s[tid] = 1.0f / sqrtf(mean + a.eps);
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < NT; t++)
            inv[t] = inv_s[t];
        if (blockIdx.x == 0) { /* leave the normalised rows where later consumers expect them */
            for (int t = 0; t < a.n && t < NT; t++)
                for (int c = tid; c < cols; c += G2_THREADS) {
                    const size_t i = (size_t)t * cols + c;
                    const float v = a.norm_w[c] * (a.x[i] * inv_s[t]);
                    if (a.norm_y) a.norm_y[i] = v;
                    if (a.norm_yh) {
                        if (a.fp16)
                            ((__half *)a.norm_yh)[i] = __float2half_rn(v);
                        else
                            ((__nv_bfloat16 *)a.norm_yh)[i] = __float2bfloat16_rn(v);
                    }
                }
        }
    }

    float acc[G2_R][NT];
#pragma unroll
    for (int i = 0; i < G2_R; i++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            acc[i][t] = 0.0f;

    /* Two column chunks per iteration: 2 x ROWS independent 16-byte weight loads per lane
     * issued before the first multiply. */
    for (int c0 = tid * 8; c0 < cols; c0 += 2 * G2_STEP) {
        const int c1 = c0 + G2_STEP;
        const bool has1 = c1 < cols;
        uint4 w0[G2_R], w1[G2_R];
#pragma unroll
        for (int i = 0; i < G2_R; i++)
            w0[i] = __ldcs(reinterpret_cast<const uint4 *>(wr[i] + c0));
        if (has1) {
#pragma unroll
            for (int i = 0; i < G2_R; i++)
                w1[i] = __ldcs(reinterpret_cast<const uint4 *>(wr[i] + c1));
        }
        g2_step<NT, MODE>(a, c0, w0, inv, acc);
        if (has1) g2_step<NT, MODE>(a, c1, w1, inv, acc);
    }

    /* Split-K reduction: warp sums, then the warps' partials in warp order. */
#pragma unroll
    for (int i = 0; i < G2_R; i++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float v = warp_sum(acc[i][t]);
            if (lane == 0) part[wid][i][t] = v;
        }
    __syncthreads();
    if (MODE & G2_SWIGLU) {
        if (tid < (G2_R / 2) * NT) {
            const int i = tid / NT, t = tid % NT;
            const int rows = a.g.rows[0];
            if (t < a.n && row[0] + i < rows) {
                float gv = 0.0f, uv = 0.0f;
                for (int w = 0; w < G2_WARPS; w++) {
                    gv += part[w][i][t];
                    uv += part[w][i + G2_R / 2][t];
                }
                const size_t o = (size_t)t * (size_t)rows + (size_t)(row[0] + i);
                a.g.y[0][o] = gv;
                a.g.y[1][o] = uv;
                const float v = gv / (1.0f + expf(-gv)) * uv;
                a.swiglu_out[o] = v;
                if (a.fp16)
                    ((__half *)a.swiglu_oh)[o] = __float2half_rn(v);
                else
                    ((__nv_bfloat16 *)a.swiglu_oh)[o] = __float2bfloat16_rn(v);
            }
        }
    } else if (tid < G2_R * NT) {
        const int i = tid / NT, t = tid % NT;
        const int rows = a.g.rows[seg[0]];
        const int r = row[0] + i;
        if (t < a.n && r < rows) {
            float v = 0.0f;
            for (int w = 0; w < G2_WARPS; w++)
                v += part[w][i][t];
            float *o = a.g.y[seg[0]] + (size_t)t * (size_t)rows + (size_t)r;
            *o = a.beta != 0.0f ? v + a.beta * *o : v;
        }
    }
}

template <int NT>
static int launch_gemv2(const qv_cuda_gemv2_args *a, unsigned blocks, cudaStream_t s) {
    const int mode = (a->norm_w ? G2_NORM : 0) | (a->swiglu_out ? G2_SWIGLU : 0);
    switch (mode) {
    case 0: launch(k_gemv2<NT, 0>, blocks, G2_THREADS, s, *a); break;
    case G2_NORM: launch(k_gemv2<NT, G2_NORM>, blocks, G2_THREADS, s, *a); break;
    case G2_SWIGLU: launch(k_gemv2<NT, G2_SWIGLU>, blocks, G2_THREADS, s, *a); break;
    default: launch(k_gemv2<NT, G2_NORM | G2_SWIGLU>, blocks, G2_THREADS, s, *a); break;
    }
    return 0;
}

extern "C" int qv_cuda_gemv2(const qv_cuda_gemv2_args *a, cudaStream_t s) {
    if (a->n <= 0) return 0;
    if (a->n > QV_CUDA_GEMV_MAX_N || a->cols % 8 != 0 || a->g.n_segs < 1 ||
        a->g.n_segs > QV_CUDA_GEMV_MAX_SEGS ||
        (a->swiglu_out && (a->g.n_segs != 2 || a->g.rows[0] != a->g.rows[1] || a->beta != 0.0f)) ||
        (a->norm_w ? misaligned16(a->x) || misaligned16(a->norm_w) : misaligned16(a->xh)) ||
        misaligned16(a->g.w[0]) || (a->g.n_segs > 1 && misaligned16(a->g.w[1])) ||
        (a->g.n_segs > 2 && misaligned16(a->g.w[2])) ||
        (a->g.n_segs > 3 && misaligned16(a->g.w[3]))) {
        fprintf(stderr,
                "quiver cuda: gemv2: unsupported shape (n %d, cols %d, segs %d) or a pointer not "
                "16-byte aligned (%s:%d)\n",
                a->n, a->cols, a->g.n_segs, __FILE__, __LINE__);
        return -1;
    }
    qv_cuda_gemv2_args b = *a;
    b.prefetch = g_pdl;
    a = &b;
    unsigned blocks = 0;
    if (a->swiglu_out)
        blocks = (unsigned)((a->g.rows[0] + G2_R / 2 - 1) / (G2_R / 2));
    else
        for (int i = 0; i < a->g.n_segs; i++)
            blocks += (unsigned)((a->g.rows[i] + G2_R - 1) / G2_R);
    if (a->n == 1)
        launch_gemv2<1>(a, blocks, s);
    else if (a->n == 2)
        launch_gemv2<2>(a, blocks, s);
    else if (a->n <= 4)
        launch_gemv2<4>(a, blocks, s);
    else
        launch_gemv2<QV_CUDA_GEMV_MAX_N>(a, blocks, s);
    LAUNCH_CHECK("gemv2");
}

/* ---- paged attention ---- */

#define ATT_THREADS 128
#define ATT_CHUNK 256
#define ATT_DPT (QV_CUDA_MAX_HEAD_DIM / ATT_THREADS) /* dims per thread when head_dim >= 128 */

/* K/V element access for an F32 or a bf16 pool. */
static __device__ __forceinline__ float4 kv_load4(const float *p) {
    return *reinterpret_cast<const float4 *>(p);
}
static __device__ __forceinline__ float4 kv_load4(const __nv_bfloat16 *p) {
    const uint2 u = *reinterpret_cast<const uint2 *>(p);
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}
static __device__ __forceinline__ float kv_load1(const float *p) { return *p; }
static __device__ __forceinline__ float kv_load1(const __nv_bfloat16 *p) {
    return __bfloat162float(*p);
}

template <typename KV>
static __global__ void __launch_bounds__(ATT_THREADS) k_attention(qv_cuda_attn_args a) {
    PDL_ENTER();
    __shared__ float qs[QV_CUDA_MAX_HEAD_DIM];
    __shared__ float sc[ATT_CHUNK];
    __shared__ float red[32];
    __shared__ float part[ATT_THREADS * ATT_DPT];

    const int t = blockIdx.y, h = blockIdx.x, tid = threadIdx.x;
    const int hd = a.head_dim;
    const int kv_dim = a.n_kv_heads * hd;
    const int g = h / (a.n_heads / a.n_kv_heads);
    const int pos = a.tok_pos[t];
    const int32_t *table = a.tables + (size_t)a.tok_seq[t] * (size_t)a.table_stride;
    const int j0 = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    const float *q = a.q + ((size_t)t * (size_t)a.n_heads + (size_t)h) * (size_t)hd;
    for (int i = tid; i < hd; i += ATT_THREADS)
        qs[i] = q[i];

    /* Value-sum layout: n_grp groups of hd threads (hd < 128), or one group where each thread
     * owns dims tid, tid + 128 (hd >= 128). */
    const int n_grp = hd < ATT_THREADS ? ATT_THREADS / hd : 1;
    const int grp = hd < ATT_THREADS ? tid / hd : 0;
    const int d0 = hd < ATT_THREADS ? tid % hd : tid;
    const bool active = grp < n_grp;
    float acc[ATT_DPT];
    for (int k = 0; k < ATT_DPT; k++)
        acc[k] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    __syncthreads();

    for (int c0 = j0; c0 <= pos; c0 += ATT_CHUNK) {
        const int len = min(ATT_CHUNK, pos - c0 + 1);
        float cmax = -INFINITY;
        for (int jj = tid; jj < len; jj += ATT_THREADS) {
            const int j = c0 + jj;
            const KV *kr =
                reinterpret_cast<const KV *>(a.k_layer) +
                ((size_t)table[j / a.page_size] * (size_t)a.page_size + (size_t)(j % a.page_size)) *
                    (size_t)kv_dim +
                (size_t)g * hd;
            float d = 0.0f;
            if ((hd & 3) == 0) { /* 16-byte loads, several in flight */
#pragma unroll 8
                for (int i = 0; i < hd / 4; i++) {
                    const float4 kv = kv_load4(kr + 4 * i);
                    d += qs[4 * i] * kv.x + qs[4 * i + 1] * kv.y + qs[4 * i + 2] * kv.z +
                         qs[4 * i + 3] * kv.w;
                }
            } else {
                for (int i = 0; i < hd; i++)
                    d += qs[i] * kv_load1(kr + i);
            }
            d *= a.scale;
            sc[jj] = d;
            cmax = fmaxf(cmax, d);
        }
        cmax = block_max(cmax, red);
        const float m_new = fmaxf(m, cmax);
        const float f = expf(m - m_new); /* 0 on the first chunk (m = -inf) */
        float psum = 0.0f;
        for (int jj = tid; jj < len; jj += ATT_THREADS) {
            const float p = expf(sc[jj] - m_new);
            sc[jj] = p;
            psum += p;
        }
        psum = block_sum(psum, red); /* its barriers also publish sc */
        l = l * f + psum;
        m = m_new;
        for (int k = 0; k < ATT_DPT; k++)
            acc[k] *= f;
        if (active) {
#pragma unroll 4
            for (int jj = grp; jj < len; jj += n_grp) {
                const int j = c0 + jj;
                const KV *vr = reinterpret_cast<const KV *>(a.v_layer) +
                               ((size_t)table[j / a.page_size] * (size_t)a.page_size +
                                (size_t)(j % a.page_size)) *
                                   (size_t)kv_dim +
                               (size_t)g * hd;
                const float p = sc[jj];
                for (int k = 0; k < ATT_DPT; k++) {
                    const int d = d0 + k * ATT_THREADS;
                    if (d < hd && (k == 0 || hd >= ATT_THREADS)) acc[k] += p * kv_load1(vr + d);
                }
            }
        }
        __syncthreads(); /* sc is rewritten by the next chunk */
    }
    /* Combine the groups' partial sums. */
    for (int k = 0; k < ATT_DPT; k++)
        part[tid + k * ATT_THREADS] = active ? acc[k] : 0.0f;
    __syncthreads();
    const size_t obase = ((size_t)t * (size_t)a.n_heads + (size_t)h) * (size_t)hd;
    float *o = a.out + obase;
    const float inv_l = 1.0f / l;
    if (hd < ATT_THREADS) {
        for (int d = tid; d < hd; d += ATT_THREADS) {
            float s = 0.0f;
            for (int gg = 0; gg < n_grp; gg++)
                s += part[gg * hd + d];
            o[d] = s * inv_l;
            if (a.out_half) half_store(a.out_half, obase + (size_t)d, s * inv_l, a.fp16);
        }
    } else {
        for (int k = 0; k < ATT_DPT; k++) {
            const int d = tid + k * ATT_THREADS;
            if (d < hd) {
                o[d] = part[tid + k * ATT_THREADS] * inv_l;
                if (a.out_half) half_store(a.out_half, obase + (size_t)d, o[d], a.fp16);
            }
        }
    }
}

extern "C" int qv_cuda_attention(const qv_cuda_attn_args *a, cudaStream_t s) {
    if (a->n_tokens <= 0) return 0;
    if (a->head_dim > QV_CUDA_MAX_HEAD_DIM || a->n_kv_heads <= 0 ||
        a->n_heads % a->n_kv_heads != 0) {
        fprintf(stderr, "quiver cuda: attention: unsupported head_dim %d / heads %d/%d (%s:%d)\n",
                a->head_dim, a->n_heads, a->n_kv_heads, __FILE__, __LINE__);
        return -1;
    }
    /* Heads on x, so the query heads of one K/V group run side by side and share its reads
     * in L2; tokens on y, at most 65535 per launch: a larger batch takes several launches,
     * each over its own tokens' rows. */
    const int max_y = 65535;
    for (int t0 = 0; t0 < a->n_tokens; t0 += max_y) {
        qv_cuda_attn_args b = *a;
        const size_t row = (size_t)t0 * (size_t)a->n_heads * (size_t)a->head_dim;
        b.n_tokens = min(max_y, a->n_tokens - t0);
        b.tok_seq += t0;
        b.tok_pos += t0;
        b.q += row;
        b.out += row;
        if (b.out_half) b.out_half = (uint16_t *)b.out_half + row;
        dim3 grid((unsigned)a->n_heads, (unsigned)b.n_tokens);
        if (a->kv_bf16)
            launch(k_attention<__nv_bfloat16>, grid, ATT_THREADS, s, b);
        else
            launch(k_attention<float>, grid, ATT_THREADS, s, b);
    }
    LAUNCH_CHECK("attention");
}
