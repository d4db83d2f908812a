/*
 * sgmv.cu - segmented LoRA shrink/expand kernels (SGMV) and their extern "C" launchers
 * (sgmv.h). One launch per projection (or per fused group of projections sharing x) covers
 * every segment of the batch; each block reads its segment's row of the device table, so the
 * same launch (and a CUDA graph of it) serves any adapter mix of the same shape.
 *
 * Kernels, all 256 threads per block, every loop bounded by the segment's own n, rank and
 * n_out (the grid may be larger or smaller than the work: blocks without work return, missing
 * blocks are covered by grid-stride loops):
 *   k_shrink_warp<NT>  grid (segments, rank groups of 8): warp w of a block owns rank row r; lanes
 *                      stride n_in by 8 halfs (one 16-byte load of A and of each token's x),
 *                      NT token accumulators, then an xor-tree warp sum.
 *   k_shrink_tiled     grid (rank tiles, token tiles, segments): 32 tokens x 32 ranks per block,
 *                      k in steps of 32 through padded shared tiles (no bank conflicts).
 *   k_expand<TM>       grid (output tiles of 256, token tiles of TM, segments): the tile's tmp
 *                      rows in shared memory (broadcast reads), one output column per thread,
 *                      B's row read once per tile (16-byte loads when rank % 8 == 0).
 *   k_seg_scale        grid (column chunks, rows, entries): IA3 / DoRA row scaling, prompt rows.
 *   k_bottleneck       grid (rows, entries): one token row per block, down (a warp per
 *                      bottleneck channel), up (a warp per output channel), block-wide
 *                      LayerNorm reductions; the row's scratch is global memory.
 *   k_adaption         128 threads, grid (rows, entries): a warp per query head, its lanes over
 *                      the prompt positions (scores in shared memory), then over head_dim.
 * What not: no allocation, no synchronisation, no validation of the table (sgmv_plan.c).
 * Thread: launchers run on the host thread that owns the stream.
 */
#include <stdint.h>
#include <stdio.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "launch.cuh"
#include "sgmv.h"

#define THREADS 256
#define SH_WARPS (THREADS / 32)
#define TILE 32

#define SGMV_FAIL(...)                                                                             \
    do {                                                                                           \
        fprintf(stderr, "quiver cuda: sgmv: " __VA_ARGS__);                                        \
        fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__);                                         \
        return -1;                                                                                 \
    } while (0)

#define LAUNCH_CHECK(what)                                                                         \
    do {                                                                                           \
        cudaError_t e_ = cudaGetLastError();                                                       \
        if (e_ != cudaSuccess) SGMV_FAIL("launch of %s failed: %s", what, cudaGetErrorString(e_)); \
        return 0;                                                                                  \
    } while (0)

template <bool F16> static __device__ __forceinline__ float h2f(unsigned short v) {
    if (F16) return __half2float(__ushort_as_half(v));
    return __uint_as_float((unsigned)v << 16);
}

template <bool F16> static __device__ __forceinline__ float ld1(const unsigned short *p, size_t i) {
    return h2f<F16>(p[i]);
}

/* Eight halfs of one 16-byte load, in memory order. */
template <bool F16> static __device__ __forceinline__ void cvt8(uint4 u, float f[8]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        f[2 * j] = h2f<F16>((unsigned short)(w[j] & 0xffffu));
        f[2 * j + 1] = h2f<F16>((unsigned short)(w[j] >> 16));
    }
}

static __device__ __forceinline__ bool aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/* ---- shrink, decode shape ---- */

template <int NT, bool F16>
static __global__ void __launch_bounds__(THREADS)
    k_shrink_warp(const qv_sgmv_seg *segs, const unsigned short *x, long long ldx, int n_in,
                  int vec_x, float *tmp) {
    const qv_sgmv_seg sg = segs[blockIdx.x];
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const unsigned short *A = (const unsigned short *)sg.a;
    const bool vec = vec_x && aligned16(A);
    for (int r = (int)blockIdx.y * SH_WARPS + warp; r < sg.rank; r += (int)gridDim.y * SH_WARPS) {
        const unsigned short *ar = A + (size_t)r * (size_t)n_in;
        for (int tc = 0; tc < sg.n; tc += NT) {
            const int nt = min(NT, sg.n - tc);
            const unsigned short *xr = x + (size_t)(sg.t0 + tc) * (size_t)ldx;
            float acc[NT];
#pragma unroll
            for (int t = 0; t < NT; t++)
                acc[t] = 0.0f;
            if (vec) {
                /* unrolled so that several independent 16-byte loads are in flight per lane */
#pragma unroll 4
                for (int k = lane * 8; k < n_in; k += 32 * 8) {
                    float af[8];
                    cvt8<F16>(*(const uint4 *)(ar + k), af);
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (t < nt) {
                            float xf[8];
                            cvt8<F16>(*(const uint4 *)(xr + (size_t)t * (size_t)ldx + k), xf);
#pragma unroll
                            for (int j = 0; j < 8; j++)
                                acc[t] = fmaf(af[j], xf[j], acc[t]);
                        }
                    }
                }
            } else {
                for (int k = lane; k < n_in; k += 32) {
                    const float av = ld1<F16>(ar, (size_t)k);
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        if (t < nt)
                            acc[t] = fmaf(av, ld1<F16>(xr, (size_t)t * (size_t)ldx + k), acc[t]);
                }
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
#pragma unroll
                for (int o = 16; o > 0; o >>= 1)
                    acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], o);
            }
            if (lane == 0) {
#pragma unroll
                for (int t = 0; t < NT; t++)
                    if (t < nt) tmp[sg.tmp_off + (size_t)(tc + t) * (size_t)sg.rank + r] = acc[t];
            }
        }
    }
}

/* ---- shrink, prefill shape ---- */

template <bool F16>
static __global__ void __launch_bounds__(THREADS)
    k_shrink_tiled(const qv_sgmv_seg *segs, const unsigned short *x, long long ldx, int n_in,
                   float *tmp) {
    __shared__ float xs[TILE][TILE + 1];
    __shared__ float as[TILE][TILE + 1];
    const qv_sgmv_seg sg = segs[blockIdx.z];
    const unsigned short *A = (const unsigned short *)sg.a;
    const int tx = (int)(threadIdx.x & 31), ty = (int)(threadIdx.x >> 5); /* ty < 8 */
    for (int r0 = (int)blockIdx.x * TILE; r0 < sg.rank; r0 += (int)gridDim.x * TILE) {
        for (int m0 = (int)blockIdx.y * TILE; m0 < sg.n; m0 += (int)gridDim.y * TILE) {
            float acc[TILE / SH_WARPS];
#pragma unroll
            for (int i = 0; i < TILE / SH_WARPS; i++)
                acc[i] = 0.0f;
            for (int k0 = 0; k0 < n_in; k0 += TILE) {
                const int k = k0 + tx;
#pragma unroll
                for (int i = 0; i < TILE / SH_WARPS; i++) {
                    const int row = ty + SH_WARPS * i;
                    xs[row][tx] =
                        (m0 + row < sg.n && k < n_in)
                            ? ld1<F16>(x, (size_t)(sg.t0 + m0 + row) * (size_t)ldx + (size_t)k)
                            : 0.0f;
                    as[row][tx] = (r0 + row < sg.rank && k < n_in)
                                      ? ld1<F16>(A, (size_t)(r0 + row) * (size_t)n_in + (size_t)k)
                                      : 0.0f;
                }
                __syncthreads();
#pragma unroll 8
                for (int kk = 0; kk < TILE; kk++) {
                    const float av = as[tx][kk];
#pragma unroll
                    for (int i = 0; i < TILE / SH_WARPS; i++)
                        acc[i] = fmaf(xs[ty + SH_WARPS * i][kk], av, acc[i]);
                }
                __syncthreads();
            }
#pragma unroll
            for (int i = 0; i < TILE / SH_WARPS; i++) {
                const int t = m0 + ty + SH_WARPS * i, r = r0 + tx;
                if (t < sg.n && r < sg.rank)
                    tmp[sg.tmp_off + (size_t)t * (size_t)sg.rank + r] = acc[i];
            }
        }
    }
}

/* ---- expand ---- */

template <int TM, bool F16>
static __global__ void __launch_bounds__(THREADS)
    k_expand(const qv_sgmv_seg *segs, const float *tmp) {
    __shared__ float ts[TM * QV_SGMV_MAX_RANK];
    const qv_sgmv_seg sg = segs[blockIdx.z];
    const int rank = sg.rank;
    if (rank < 1 || rank > QV_SGMV_MAX_RANK) return; /* block-uniform, before any barrier */
    const unsigned short *B = (const unsigned short *)sg.b;
    const bool vec = (rank % 8) == 0 && aligned16(B);
    for (int m0 = (int)blockIdx.y * TM; m0 < sg.n; m0 += (int)gridDim.y * TM) {
        const int nt = min(TM, sg.n - m0);
        __syncthreads(); /* the previous tile's readers are done */
        const float *src = tmp + sg.tmp_off + (size_t)m0 * (size_t)rank;
        for (int i = (int)threadIdx.x; i < TM * rank; i += THREADS)
            ts[i] = (i / rank < nt) ? src[i] : 0.0f;
        __syncthreads();
        for (int o = (int)blockIdx.x * THREADS + (int)threadIdx.x; o < sg.n_out;
             o += (int)gridDim.x * THREADS) {
            const unsigned short *br = B + (size_t)o * (size_t)rank;
            float acc[TM];
#pragma unroll
            for (int t = 0; t < TM; t++)
                acc[t] = 0.0f;
            if (vec) {
#pragma unroll 2
                for (int r = 0; r < rank; r += 8) {
                    float bf[8];
                    cvt8<F16>(*(const uint4 *)(br + r), bf);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
#pragma unroll
                        for (int t = 0; t < TM; t++)
                            acc[t] = fmaf(bf[j], ts[t * rank + r + j], acc[t]);
                    }
                }
            } else {
                for (int r = 0; r < rank; r++) {
                    const float bv = ld1<F16>(br, (size_t)r);
#pragma unroll
                    for (int t = 0; t < TM; t++)
                        acc[t] = fmaf(bv, ts[t * rank + r], acc[t]);
                }
            }
#pragma unroll
            for (int t = 0; t < TM; t++) {
                if (t < nt) {
                    float *yp = sg.y + (size_t)(sg.t0 + m0 + t) * (size_t)sg.ldy + (size_t)o;
                    *yp += sg.scale * acc[t];
                }
            }
        }
    }
}

/* ---- IA3 / DoRA row scaling: block (column chunk, row, entry), grid-stride over both ---- */

template <bool F16> static __global__ void k_seg_scale(const qv_seg_scale *tab) {
    const qv_seg_scale e = tab[blockIdx.z];
    if (e.n <= 0 || !e.vec) return;
    const unsigned short *v = (const unsigned short *)e.vec;
    for (int t = blockIdx.y; t < e.n; t += gridDim.y) {
        float *row = e.x + (size_t)(e.t0 + t) * (size_t)e.ldx;
        for (int c = blockIdx.x * THREADS + threadIdx.x; c < e.n_cols; c += gridDim.x * THREADS) {
            const float s = ld1<F16>(v, (size_t)c);
            if (e.mode == 0)
                row[c] *= s;
            else if (e.mode == 1)
                row[c] = s * row[c] + (e.bias ? (1.0f - s) * e.bias[c] : 0.0f);
            else
                row[c] = s;
        }
    }
}

/* ---- bottleneck units: block (row of the segment, entry), grid-stride over rows ---- */

static __device__ float bn_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Every thread gets the block's sum (THREADS threads; red has SH_WARPS entries). */
static __device__ float bn_block_sum(float v, float *red) {
    const int lane = (int)(threadIdx.x & 31), wid = (int)(threadIdx.x >> 5);
    v = bn_warp_sum(v);
    __syncthreads(); /* red may still be read by a previous call */
    if (lane == 0) red[wid] = v;
    __syncthreads();
    return bn_warp_sum(lane < SH_WARPS ? red[lane] : 0.0f);
}

/* enum qv_bn_act (adapters.h), in its order */
static __device__ float bn_act(int a, float x) {
    switch (a) {
    case 0: return x > 0.0f ? x : 0.0f;
    case 1: return x / (1.0f + expf(-x));
    case 2: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 3: return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case 4: return tanhf(x);
    case 5: return 1.0f / (1.0f + expf(-x));
    case 6: return x > 0.0f ? x : 0.01f * x;
    default: return x;
    }
}

/* Mean and 1/sqrt(var + 1e-5) of row v (nn.LayerNorm, two passes). */
static __device__ void bn_ln_stats(const float *v, int dim, float *red, float *mean, float *rstd) {
    float s = 0.0f;
    for (int i = (int)threadIdx.x; i < dim; i += THREADS)
        s += v[i];
    const float mu = bn_block_sum(s, red) / (float)dim;
    float q = 0.0f;
    for (int i = (int)threadIdx.x; i < dim; i += THREADS)
        q += (v[i] - mu) * (v[i] - mu);
    *mean = mu;
    *rstd = 1.0f / sqrtf(bn_block_sum(q, red) / (float)dim + 1e-5f);
}

/* One token row per block, in four phases separated by block barriers (the row's scratch is
 * global memory of this block only: o (dim floats) and t (d floats)):
 *   0. o = z, the unit's input: x (parallel), else a = h (+ x), LayerNorm-before applied;
 *   1. t = act(Down z + b_down), a warp per bottleneck channel;
 *   2. o = s ⊙ (Up t + b_up), a warp per output channel;
 *   3. the residual / LayerNorm-after combinations of FORMATS.md 5.4, written into h so that
 *      x + h is the unit's output. */
template <bool F16>
static __global__ void __launch_bounds__(THREADS)
    k_bottleneck(const qv_bn_seg *tab, const float *x, float *h, int dim, float *so, float *st,
                 long long lds) {
    __shared__ float red[SH_WARPS];
    const qv_bn_seg e = tab[blockIdx.y];
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const bool par = (e.flags & QV_BN_F_PARALLEL) != 0;
    const bool add_x = (e.flags & QV_BN_F_ORIG_LN_BEFORE) != 0;
    const unsigned short *dw = (const unsigned short *)e.down_w;
    const unsigned short *uw = (const unsigned short *)e.up_w;
    for (int r = blockIdx.x; r < e.n; r += gridDim.x) {
        const size_t row = (size_t)(e.t0 + r);
        const float *xr = x + row * (size_t)dim;
        float *hr = h + row * (size_t)dim;
        float *o = so + row * (size_t)lds, *t = st + row * (size_t)lds;
        for (int i = (int)threadIdx.x; i < dim; i += THREADS)
            o[i] = par ? xr[i] : (add_x ? hr[i] + xr[i] : hr[i]);
        __syncthreads();
        if (!par && e.lnb_w) {
            float mu, rs;
            bn_ln_stats(o, dim, red, &mu, &rs);
            for (int i = (int)threadIdx.x; i < dim; i += THREADS)
                o[i] = (o[i] - mu) * rs * ld1<F16>((const unsigned short *)e.lnb_w, (size_t)i) +
                       ld1<F16>((const unsigned short *)e.lnb_b, (size_t)i);
            __syncthreads();
        }
        for (int j = warp; j < e.d; j += SH_WARPS) {
            const unsigned short *wr = dw + (size_t)j * (size_t)dim;
            float acc = 0.0f;
            for (int i = lane; i < dim; i += 32)
                acc += ld1<F16>(wr, (size_t)i) * o[i];
            acc = bn_warp_sum(acc);
            if (lane == 0)
                t[j] = bn_act(e.act, acc + ld1<F16>((const unsigned short *)e.down_b, (size_t)j));
        }
        __syncthreads();
        for (int i = warp; i < dim; i += SH_WARPS) {
            const unsigned short *wr = uw + (size_t)i * (size_t)e.d;
            float acc = 0.0f;
            for (int j = lane; j < e.d; j += 32)
                acc += ld1<F16>(wr, (size_t)j) * t[j];
            acc = bn_warp_sum(acc);
            if (lane == 0) {
                const float s = e.scale_ch ? ld1<F16>((const unsigned short *)e.scale_ch, (size_t)i)
                                           : e.scaling;
                o[i] = (acc + ld1<F16>((const unsigned short *)e.up_b, (size_t)i)) * s;
            }
        }
        __syncthreads();
        /* phase 3: each thread reads and rewrites only its own elements of o and h (h is
         * written last, so the residual can be read from it until then) */
        const bool ln_res = e.lna_w && (e.flags & QV_BN_F_ADAPTER_RES_LN);
        const bool res_first = !par && (!e.lna_w || ln_res); /* u + res before any LN */
        if (res_first)
            for (int i = (int)threadIdx.x; i < dim; i += THREADS)
                o[i] += (e.flags & QV_BN_F_RES_BEFORE_LN) || !add_x ? hr[i] : hr[i] + xr[i];
        if (e.lna_w) {
            float mu, rs;
            bn_ln_stats(o, dim, red, &mu, &rs);
            for (int i = (int)threadIdx.x; i < dim; i += THREADS)
                o[i] = (o[i] - mu) * rs * ld1<F16>((const unsigned short *)e.lna_w, (size_t)i) +
                       ld1<F16>((const unsigned short *)e.lna_b, (size_t)i);
        }
        for (int i = (int)threadIdx.x; i < dim; i += THREADS) {
            if (par) {
                hr[i] += o[i];
                continue;
            }
            float fin = o[i];
            if (!res_first) /* LN(u) + res */
                fin += (e.flags & QV_BN_F_RES_BEFORE_LN) || !add_x ? hr[i] : hr[i] + xr[i];
            hr[i] = (e.flags & QV_BN_F_ORIG_LN_AFTER) ? fin : fin - xr[i];
        }
        __syncthreads(); /* the next row of this block reuses red */
    }
}

/* ---- adaption prompt: block (row of the segment, entry), a warp per query head ---- */

#define AP_THREADS 128
#define AP_WARPS (AP_THREADS / 32)

template <bool F16> static __global__ void __launch_bounds__(AP_THREADS) k_adaption(qv_ap_args a) {
    __shared__ float p[AP_WARPS][QV_AP_MAX_LEN];
    const qv_ap_seg e = a.tab[blockIdx.y];
    const int warp = (int)(threadIdx.x >> 5), lane = (int)(threadIdx.x & 31);
    const int hd = a.head_dim, group = a.n_heads / a.n_kv_heads;
    const size_t qdim = (size_t)a.n_heads * (size_t)hd, kvdim = (size_t)a.n_kv_heads * (size_t)hd;
    const unsigned short *K = (const unsigned short *)e.k, *V = (const unsigned short *)e.v;
    float *pw = p[warp];
    for (int r = blockIdx.x; r < e.n; r += gridDim.x) {
        const size_t row = (size_t)(e.t0 + r);
        for (int hh = warp; hh < a.n_heads; hh += AP_WARPS) {
            const float *q = a.q + row * qdim + (size_t)hh * (size_t)hd;
            const size_t koff = (size_t)(hh / group) * (size_t)hd;
            float mx = -INFINITY;
            for (int j = lane; j < e.len; j += 32) {
                const unsigned short *kj = K + (size_t)j * kvdim + koff;
                float s = 0.0f;
                for (int i = 0; i < hd; i++)
                    s += q[i] * ld1<F16>(kj, (size_t)i);
                s *= a.scale;
                pw[j] = s;
                mx = fmaxf(mx, s);
            }
            for (int o = 16; o > 0; o >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float sum = 0.0f;
            for (int j = lane; j < e.len; j += 32) {
                const float v = expf(pw[j] - mx);
                pw[j] = v;
                sum += v;
            }
            sum = bn_warp_sum(sum);
            __syncwarp();
            const float g = e.gate / sum;
            float *out = a.att + row * qdim + (size_t)hh * (size_t)hd;
            for (int i = lane; i < hd; i += 32) {
                float acc = 0.0f;
                for (int j = 0; j < e.len; j++)
                    acc += pw[j] * ld1<F16>(V + (size_t)j * kvdim + koff, (size_t)i);
                out[i] += g * acc;
            }
            __syncwarp(); /* pw is rewritten by this warp's next head */
        }
        if (a.bias) /* PEFT adds o_proj of the adapter output, bias included, once more */
            for (int i = (int)threadIdx.x; i < a.dim; i += AP_THREADS)
                a.x[row * (size_t)a.dim + (size_t)i] += a.bias[i];
    }
}

/* ---- launchers ---- */

static unsigned clamp_grid(long long n, unsigned limit) {
    if (n < 1) return 1u;
    return n > (long long)limit ? limit : (unsigned)n;
}

static int check_args(const qv_sgmv_args *g) {
    if (!g) SGMV_FAIL("no arguments");
    if (g->plan.n_segs < 0 || g->plan.n_segs > QV_SGMV_MAX_SEGS)
        SGMV_FAIL("%d segments (limit %d)", g->plan.n_segs, QV_SGMV_MAX_SEGS);
    if (g->plan.n_segs > 0 && !g->segs) SGMV_FAIL("no device segment table");
    if (g->plan.max_rank > QV_SGMV_MAX_RANK)
        SGMV_FAIL("rank %d > %d", g->plan.max_rank, QV_SGMV_MAX_RANK);
    return 0;
}

extern "C" int qv_cuda_sgmv_shrink(const qv_sgmv_args *g, const void *x, int64_t ldx, int n_in,
                                   float *tmp, cudaStream_t s) {
    if (check_args(g)) return -1;
    const qv_sgmv_plan *p = &g->plan;
    if (p->n_segs == 0 || p->max_n == 0 || p->max_rank == 0) return 0;
    if (!x || !tmp || n_in < 1 || ldx < n_in) SGMV_FAIL("bad shrink arguments (n_in %d)", n_in);
    const unsigned short *xp = (const unsigned short *)x;
    const int f16 = g->fp16 != 0;
    if (p->max_n <= QV_SGMV_DECODE_MAX_N) {
        const int vec_x = (n_in % 8) == 0 && (ldx % 8) == 0 && (((uintptr_t)x) & 15u) == 0;
        dim3 grid((unsigned)p->n_segs, clamp_grid((p->max_rank + SH_WARPS - 1) / SH_WARPS, 65535));
#define SHRINK_W(NT)                                                                               \
    do {                                                                                           \
        if (f16) QV_LAUNCH(grid, THREADS, s, k_shrink_warp<NT, true>)                              \
        (g->segs, xp, ldx, n_in, vec_x, tmp);                                                      \
        else QV_LAUNCH(grid, THREADS, s, k_shrink_warp<NT, false>)(g->segs, xp, ldx, n_in, vec_x,  \
                                                                   tmp);                           \
    } while (0)
        if (p->max_n == 1)
            SHRINK_W(1);
        else if (p->max_n == 2)
            SHRINK_W(2);
        else
            SHRINK_W(4);
#undef SHRINK_W
        LAUNCH_CHECK("sgmv shrink (decode)");
    }
    dim3 grid(clamp_grid((p->max_rank + TILE - 1) / TILE, 65535),
              clamp_grid((p->max_n + TILE - 1) / TILE, 65535), (unsigned)p->n_segs);
    if (f16)
        QV_LAUNCH(grid, THREADS, s, k_shrink_tiled<true>)(g->segs, xp, ldx, n_in, tmp);
    else
        QV_LAUNCH(grid, THREADS, s, k_shrink_tiled<false>)(g->segs, xp, ldx, n_in, tmp);
    LAUNCH_CHECK("sgmv shrink (tiled)");
}

extern "C" int qv_cuda_sgmv_expand(const qv_sgmv_args *g, const float *tmp, cudaStream_t s) {
    if (check_args(g)) return -1;
    const qv_sgmv_plan *p = &g->plan;
    if (p->n_segs == 0 || p->max_n == 0 || p->max_rank == 0 || p->max_n_out == 0) return 0;
    if (!tmp) SGMV_FAIL("no tmp");
    const int f16 = g->fp16 != 0;
    const unsigned gx = clamp_grid((p->max_n_out + THREADS - 1) / THREADS, 0x7fffffffu);
#define EXPAND(TM)                                                                                 \
    do {                                                                                           \
        dim3 grid(gx, clamp_grid((p->max_n + (TM)-1) / (TM), 65535), (unsigned)p->n_segs);         \
        if (f16)                                                                                   \
            QV_LAUNCH(grid, THREADS, s, k_expand<TM, true>)(g->segs, tmp);                         \
        else                                                                                       \
            QV_LAUNCH(grid, THREADS, s, k_expand<TM, false>)(g->segs, tmp);                        \
    } while (0)
    if (p->max_n == 1)
        EXPAND(1);
    else if (p->max_n <= QV_SGMV_DECODE_MAX_N)
        EXPAND(QV_SGMV_DECODE_MAX_N);
    else
        EXPAND(TILE);
#undef EXPAND
    LAUNCH_CHECK("sgmv expand");
}

extern "C" int qv_cuda_seg_scale(const qv_seg_scale *tab, int n_tab, int max_n, int max_cols,
                                 int fp16, cudaStream_t s) {
    if (n_tab <= 0 || max_n <= 0 || max_cols <= 0) return 0;
    if (!tab || n_tab > QV_SGMV_MAX_SEGS) SGMV_FAIL("bad scaling table (%d entries)", n_tab);
    dim3 grid(clamp_grid((max_cols + THREADS - 1) / THREADS, 65535), clamp_grid(max_n, 65535),
              (unsigned)n_tab);
    if (fp16)
        QV_LAUNCH(grid, THREADS, s, k_seg_scale<true>)(tab);
    else
        QV_LAUNCH(grid, THREADS, s, k_seg_scale<false>)(tab);
    LAUNCH_CHECK("ia3 / dora row scaling");
}

extern "C" int qv_cuda_bottleneck(const qv_bn_seg *tab, int n_tab, int max_n, const float *x,
                                  float *h, int dim, float *scratch_o, float *scratch_t,
                                  int64_t ld_scratch, int fp16, cudaStream_t s) {
    if (n_tab <= 0 || max_n <= 0) return 0;
    if (!tab || n_tab > QV_SGMV_MAX_SEGS || !x || !h || !scratch_o || !scratch_t || dim < 1 ||
        ld_scratch < dim)
        SGMV_FAIL("bad bottleneck arguments (%d entries, dim %d)", n_tab, dim);
    dim3 grid(clamp_grid(max_n, 65535), (unsigned)n_tab);
    if (fp16) QV_LAUNCH(grid, THREADS, s, k_bottleneck<true>)
    (tab, x, h, dim, scratch_o, scratch_t, ld_scratch);
    else QV_LAUNCH(grid, THREADS, s, k_bottleneck<false>)(tab, x, h, dim, scratch_o, scratch_t,
                                                          ld_scratch);
    LAUNCH_CHECK("bottleneck");
}

extern "C" int qv_cuda_adaption(const qv_ap_args *a, cudaStream_t s) {
    if (!a || a->n_tab <= 0 || a->max_n <= 0) return 0;
    if (!a->tab || a->n_tab > QV_SGMV_MAX_SEGS || !a->q || !a->att || a->n_heads < 1 ||
        a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads || a->head_dim < 1 ||
        (a->bias && (!a->x || a->dim < 1)))
        SGMV_FAIL("bad adaption-prompt arguments (%d entries)", a->n_tab);
    dim3 grid(clamp_grid(a->max_n, 65535), (unsigned)a->n_tab);
    if (a->fp16)
        QV_LAUNCH(grid, AP_THREADS, s, k_adaption<true>)(*a);
    else
        QV_LAUNCH(grid, AP_THREADS, s, k_adaption<false>)(*a);
    LAUNCH_CHECK("adaption prompt");
}
