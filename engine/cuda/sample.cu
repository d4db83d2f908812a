/*
 * sample.cu - token sampling on the device and its extern "C" launcher (sample.h).
 *
 * k_sample      grid (rows), SAMPLE_THREADS threads, one block per row, nothing but the row and
 *               a few kilobytes of shared memory:
 *   0. log-probabilities (rows that want them, lp set): log Z of the raw row (expf summed in
 *      double), its n largest logits (radix select for the n-th, then the ones above it and the
 *      lowest-id ties), and the raw logits of the context ids, saved before
 *   0'. penalties: the row's context entries rewrite its logits in place (repetition, then
 *      frequency, then presence; float arithmetic of sampler.c, the products rounded before the
 *      subtraction so no FMA changes a bit);
 *   1. maximum of the row and its first index; a greedy row (or one without a finite
 *      maximum) takes that index, as argmax_first does, in this one pass;
 *   2. top-k: the k-th largest raw logit by a four-pass 8-bit radix select on order-preserving
 *      keys (histograms in shared memory); kept: y = x / T >= (k-th) / T;
 *   3. weights e = expf(y - max y) as integers in units of 2^-44 (a row of up to 2^19 tokens
 *      sums below 2^63), so every sum is exact and independent of the summation order;
 *   4. top-p: the same radix descent over the keys of y, histograms of weight instead of
 *      counts, finds the value at which the mass, taken in descending order, reaches
 *      ceil(top_p * total); tokens above it are kept, and of the tokens equal to it (ties,
 *      equal weights) the lowest ids as far as the cut needs (docs/sampling.md's tie rule);
 *   5. min-p: kept when e >= min_p (the maximum has e = 1);
 *   6. the draw: the first id, in ascending order, whose running kept weight exceeds
 *      floor(u * total): a block-wide scan over contiguous id ranges, then one thread walks the
 *      range that holds the target.
 * The host sampler sums doubles of expf; here the weights are truncated to 2^-44, so a token
 * can differ from the host's only when u lies within ~1e-7 of a boundary of the cumulative
 * distribution (expf may also differ in its last bit on the device).
 *
 * The chosen token's log-probability is its raw logit (saved one if penalised) minus log Z.
 * What not: no allocation, no synchronisation.
 * Thread: launchers run on the host thread that owns the stream.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime.h>

#include "launch.cuh"
#include "sample.h"

#define SAMPLE_THREADS 512
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
#define FIX_ONE 17592186044416.0 /* 2^44 */
#define MIN_TEMPERATURE 1e-5f    /* QV_SAMPLER_MIN_TEMPERATURE */

typedef unsigned long long u64;

/* -1 with a message when the last launch failed, else 0. */
static int launch_failed(const char *what) {
    const cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) return 0;
    fprintf(stderr, "quiver cuda: launch of %s failed: %s\n", what, cudaGetErrorString(e));
    return -1;
}

/* ---- sampling ---- */

/* Order-preserving float -> uint32 (NaN -> 0, the lowest), as sampler.c's float_key. */
static __device__ __forceinline__ uint32_t fkey(float f) {
    if (f != f) return 0;
    const uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static __device__ __forceinline__ float keyf(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* Shared state of one block. */
struct sample_shared {
    u64 hist[256];
    u64 wu[SAMPLE_WARPS];
    float wf[SAMPLE_WARPS];
    int wi[SAMPLE_WARPS];
    u64 sel_need; /* radix descent: remaining rank or mass */
    uint32_t sel;
    int tie_last; /* top-p: the last tie id kept */
    int tok;
    double wd[SAMPLE_WARPS];
    int n_col; /* logprobs: entries collected */
    int top_id[QV_SAMPLER_MAX_LOGPROBS];
    float top_v[QV_SAMPLER_MAX_LOGPROBS];
    float raw; /* logprobs: the chosen token's raw logit */
};

/* Maximum over the block and the lowest index holding it (NaN never enters: callers start at
 * -inf and compare with >); every thread gets both. */
static __device__ float block_argmax(float v, int *idx, sample_shared *sh) {
    int i = *idx;
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        const int wi = __shfl_xor_sync(0xffffffffu, i, o);
        if (w > v || (w == v && wi < i)) v = w, i = wi;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->wf[threadIdx.x >> 5] = v, sh->wi[threadIdx.x >> 5] = i;
    __syncthreads();
    float m = sh->wf[0];
    int mi = sh->wi[0];
    for (int k = 1; k < SAMPLE_WARPS; k++)
        if (sh->wf[k] > m || (sh->wf[k] == m && sh->wi[k] < mi)) m = sh->wf[k], mi = sh->wi[k];
    *idx = mi;
    return m;
}

static __device__ int block_min_int(int v, sample_shared *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        const int w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w < v ? w : v;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->wi[threadIdx.x >> 5] = v;
    __syncthreads();
    int m = sh->wi[0];
    for (int i = 1; i < SAMPLE_WARPS; i++)
        m = sh->wi[i] < m ? sh->wi[i] : m;
    return m;
}

/* Exclusive prefix sum of v over the threads in index order; *total receives the sum. */
static __device__ u64 block_scan(u64 v, sample_shared *sh, u64 *total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    u64 inc = v;
    for (int o = 1; o < 32; o <<= 1) {
        const u64 t = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += t;
    }
    __syncthreads();
    if (lane == 31) sh->wu[w] = inc;
    __syncthreads();
    u64 before = 0, all = 0;
    for (int i = 0; i < SAMPLE_WARPS; i++) {
        if (i < w) before += sh->wu[i];
        all += sh->wu[i];
    }
    *total = all;
    return before + inc - v;
}

/* The weight in fixed point of a token whose tempered logit is y; 0 when top-k drops it (y below
 * yk) or it underflows. *e_out receives the float weight. */
static __device__ __forceinline__ u64 weight_y(float y, float yk, float m, float *e_out) {
    *e_out = 0.0f;
    if (!(y >= yk)) return 0;
    const float e = expf(y - m);
    if (!(e > 0.0f)) return 0;
    *e_out = e;
    return (u64)((double)e * FIX_ONE);
}

/* The same for raw logit x at temperature t. */
static __device__ __forceinline__ u64 weight(float x, float t, float yk, float m, float *e_out) {
    return weight_y(x / t, yk, m, e_out);
}

/* What survives the filters of a row. */
struct cut {
    float t, yk, m; /* temperature, top-k threshold on y, maximum y */
    bool use_p;     /* top-p: keep key(y) > key_cut, and ties at key_cut up to id tie_last */
    uint32_t key_cut;
    int tie_last;
    float min_p; /* keep e >= min_p (0: off) */
};

/* The weight of token j with logit x after every filter (0: dropped). */
static __device__ __forceinline__ u64 kept_weight(float x, int j, const cut *c) {
    float e;
    const u64 q = weight(x, c->t, c->yk, c->m, &e);
    if (!q || (c->min_p > 0.0f && !(e >= c->min_p))) return 0;
    if (c->use_p) {
        const uint32_t k = fkey(x / c->t);
        if (k < c->key_cut || (k == c->key_cut && j > c->tie_last)) return 0;
    }
    return q;
}

/* One 8-bit step of a radix descent from the top, on thread 0: picks the highest bucket b at
 * which the running amount (counts or weights, from bucket 255 down) reaches `need`; sel_need
 * becomes the amount still needed inside b (ranks), or the amount above b (`mass`). */
static __device__ void pick(sample_shared *sh, bool mass, u64 need) {
    if (threadIdx.x != 0) return;
    u64 above = 0;
    int b = 255;
    for (; b > 0; b--) {
        if (mass ? above + sh->hist[b] >= need : sh->hist[b] >= need) break;
        if (mass)
            above += sh->hist[b];
        else
            need -= sh->hist[b];
    }
    sh->sel = (uint32_t)b;
    sh->sel_need = mass ? above : need;
}

/* Sum over the block (fixed order: per thread, xor tree per warp, warps in order). */
static __device__ double block_sum_double(double v, sample_shared *sh) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh->wd[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < SAMPLE_WARPS; i++)
        t += sh->wd[i];
    return t;
}

/* The key of the rank-th largest logit of row r (1 <= rank <= width) by a four-pass 8-bit radix
 * select; 0 when it is a NaN. */
static __device__ uint32_t kth_key(const float *r, int width, u64 rank, sample_shared *sh) {
    uint32_t prefix = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        const uint32_t hmask = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        for (int i = threadIdx.x; i < 256; i += SAMPLE_THREADS)
            sh->hist[i] = 0;
        __syncthreads();
        for (int j = threadIdx.x; j < width; j += SAMPLE_THREADS) {
            const uint32_t k = fkey(r[j]);
            if ((k & hmask) == prefix) atomicAdd(&sh->hist[(k >> shift) & 255u], 1ull);
        }
        __syncthreads();
        pick(sh, false, rank); /* thread 0's rank is the one that matters */
        __syncthreads();
        prefix |= sh->sel << shift;
        rank = sh->sel_need;
        __syncthreads(); /* everyone has read sel before the next pick */
    }
    return prefix;
}

/* Log-probability statistics of the raw row (sampler.c raw_log_z): returns log Z and leaves the
 * n_logprobs largest logits (NaN excluded; equal values: lower id first) in sh->top_id/top_v,
 * sh->n_col of them, in that order. [c0, c1) is the thread's contiguous id range. */
static __device__ double raw_stats(const float *r, int width, int n_logprobs, int c0, int c1,
                                   sample_shared *sh) {
    float mx = -INFINITY;
    int first = 0x7fffffff, nan = 0;
    for (int j = threadIdx.x; j < width; j += SAMPLE_THREADS) {
        if (r[j] > mx) mx = r[j], first = j;
        nan += r[j] != r[j];
    }
    mx = block_argmax(mx, &first, sh);
    double z = 0.0;
    for (int j = threadIdx.x; j < width; j += SAMPLE_THREADS)
        z += (double)expf(r[j] - mx);
    z = block_sum_double(z, sh);
    const double log_z = mx > -INFINITY ? (double)mx + log(z) : (double)INFINITY;
    u64 n_nan;
    (void)block_scan((u64)nan, sh, &n_nan);
    const int nn = (int)min((u64)n_logprobs, (u64)width - n_nan);
    if (threadIdx.x == 0) sh->n_col = 0;
    if (nn > 0) {
        const uint32_t cut = kth_key(r, width, (u64)nn, sh);
        u64 above = 0, ties = 0;
        for (int j = c0; j < c1; j++) {
            const uint32_t k = fkey(r[j]);
            above += k > cut;
            ties += k == cut;
        }
        u64 n_above, n_ties;
        (void)block_scan(above, sh, &n_above);
        u64 rank = block_scan(ties, sh, &n_ties); /* ties at lower ids than this range */
        const u64 need = (u64)nn - n_above;       /* fewer than nn lie above the nn-th */
        for (int j = c0; j < c1; j++) {
            const uint32_t k = fkey(r[j]);
            if (k > cut || (k == cut && rank++ < need)) {
                const int slot = atomicAdd(&sh->n_col, 1);
                sh->top_id[slot] = j;
                sh->top_v[slot] = r[j];
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) /* descending value, lower id first */
            for (int a = 1; a < sh->n_col; a++)
                for (int b = a; b > 0; b--) {
                    const float v = sh->top_v[b], w = sh->top_v[b - 1];
                    const int i = sh->top_id[b], h = sh->top_id[b - 1];
                    if (!(v > w || (v == w && i < h))) break;
                    sh->top_v[b] = w, sh->top_v[b - 1] = v;
                    sh->top_id[b] = h, sh->top_id[b - 1] = i;
                }
        __syncthreads();
    }
    return log_z;
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
    k_sample(float *x, int width, const qv_sample_row *rows, const qv_token_count *pen,
             float *pen_raw, int32_t *out, qv_logprobs *lp) {
    __shared__ sample_shared sh;
    const qv_sample_row p = rows[blockIdx.x];
    float *r = x + (size_t)blockIdx.x * (size_t)width;
    const int tid = threadIdx.x;
    /* contiguous id range of this thread, for the scans in id order */
    const int span = (width + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int c0 = min(width, tid * span), c1 = min(width, c0 + span);

    /* 0. log-probabilities of the raw row */
    const bool want_lp = lp && p.n_logprobs > 0;
    double log_z = 0.0;
    if (want_lp) {
        log_z = raw_stats(r, width, p.n_logprobs, c0, c1, &sh);
        if (tid == 0) {
            qv_logprobs *o = &lp[blockIdx.x];
            o->n_top = sh.n_col;
            for (int i = 0; i < sh.n_col; i++) {
                o->top_ids[i] = sh.top_id[i];
                o->top_logprobs[i] = (float)((double)sh.top_v[i] - log_z);
            }
        }
    }
    /* 0'. penalties, in place (the raw logits of the context saved first for logprobs) */
    if (pen && p.pen_n > 0) {
        for (int j = tid; j < p.pen_n; j += SAMPLE_THREADS) {
            const qv_token_count tc = pen[p.pen_off + j];
            if (tc.id < 0 || tc.id >= width) continue;
            float v = r[tc.id];
            if (want_lp) pen_raw[p.pen_off + j] = v;
            if (p.repetition_penalty != 1.0f)
                v = v < 0.0f ? __fmul_rn(v, p.repetition_penalty) : v / p.repetition_penalty;
            if (tc.count) {
                v = v - __fmul_rn(p.frequency_penalty, (float)tc.count);
                v = v - p.presence_penalty;
            }
            r[tc.id] = v; /* ids of one row are distinct: no two threads write one element */
        }
        __syncthreads(); /* the block's global writes are visible to it past the barrier */
    }

    float mx = -INFINITY;
    int first = 0x7fffffff; /* the first maximum (ids ascend per thread) */
    for (int j = tid; j < width; j += SAMPLE_THREADS)
        if (r[j] > mx) mx = r[j], first = j;
    mx = block_argmax(mx, &first, &sh);
    const float t = p.temperature;
    const float m = mx / t;
    bool greedy = !(t >= MIN_TEMPERATURE) || !(mx > -INFINITY) || !(m > -INFINITY);

    /* 2. top-k threshold on the raw logits */
    float yk = -INFINITY;
    if (!greedy && p.top_k > 0 && p.top_k < width) {
        const uint32_t prefix = kth_key(r, width, (u64)p.top_k, &sh);
        yk = prefix == 0 ? -INFINITY : keyf(prefix) / t; /* NaN: fewer than k numbers */
    }

    /* 4. top-p cut: keep key(y) > key_cut, and ties at key_cut up to id tie_last */
    uint32_t key_cut = 0;
    int tie_last = 0x7fffffff;
    if (!greedy && p.top_p < 1.0f) {
        u64 z = 0;
        float e;
        for (int j = tid; j < width; j += SAMPLE_THREADS)
            z += weight(r[j], t, yk, m, &e);
        u64 total;
        (void)block_scan(z, &sh, &total);
        if (total == 0) {
            greedy = true;
        } else {
            u64 limit = (u64)ceil((double)p.top_p * (double)total);
            limit = limit < 1 ? 1 : limit > total ? total : limit;
            uint32_t prefix = 0;
            u64 above = 0;
            for (int shift = 24; shift >= 0; shift -= 8) {
                const uint32_t hmask = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
                for (int i = tid; i < 256; i += SAMPLE_THREADS)
                    sh.hist[i] = 0;
                __syncthreads();
                for (int j = tid; j < width; j += SAMPLE_THREADS) {
                    const u64 q = weight(r[j], t, yk, m, &e);
                    const uint32_t k = fkey(r[j] / t);
                    if (q && (k & hmask) == prefix) atomicAdd(&sh.hist[(k >> shift) & 255u], q);
                }
                __syncthreads();
                pick(&sh, true, limit - above);
                __syncthreads();
                prefix |= sh.sel << shift;
                above += sh.sel_need;
                __syncthreads(); /* everyone has read sel before the next pick */
            }
            key_cut = prefix;
            /* ties at the cut: equal y, so equal weights (the weight of y = the cut value); the
             * lowest ids as far as needed */
            int cnt = 0;
            for (int j = c0; j < c1; j++)
                cnt += weight(r[j], t, yk, m, &e) && fkey(r[j] / t) == key_cut;
            u64 n_ties;
            const u64 before = block_scan((u64)cnt, &sh, &n_ties);
            const u64 need = limit - above; /* >= 1: the cut bucket reaches the limit */
            u64 q_tie = weight_y(keyf(key_cut), yk, m, &e);
            q_tie = q_tie ? q_tie : 1;
            const u64 keep = (need + q_tie - 1) / q_tie;
            if (keep > before && keep <= before + (u64)cnt) {
                u64 seen = before;
                for (int j = c0; j < c1; j++) {
                    const u64 q = weight(r[j], t, yk, m, &e);
                    if (q && fkey(r[j] / t) == key_cut && ++seen == keep) {
                        sh.tie_last = j;
                        break;
                    }
                }
            } else if (tid == 0 && keep > n_ties) {
                sh.tie_last = 0x7fffffff;
            }
            __syncthreads();
            tie_last = sh.tie_last;
        }
    }

    /* 6. the draw over the kept tokens in id order */
    if (!greedy) {
        const cut c = {t, yk, m, p.top_p < 1.0f, key_cut, tie_last, p.min_p};
        u64 s = 0;
        int last = -1;
        for (int j = c0; j < c1; j++) {
            const u64 q = kept_weight(r[j], j, &c);
            s += q;
            last = q ? j : last;
        }
        u64 total;
        const u64 before = block_scan(s, &sh, &total);
        const int last_kept = -block_min_int(-last, &sh);
        if (total == 0) {
            greedy = true;
        } else {
            const double target = p.u * (double)total;
            const u64 tq = target >= (double)total ? total : (u64)target;
            if (tid == 0) sh.tok = last_kept; /* the running sum never passed the target */
            __syncthreads();
            if (tq >= before && tq < before + s) {
                u64 acc = before;
                for (int j = c0; j < c1; j++) {
                    acc += kept_weight(r[j], j, &c);
                    if (acc > tq) {
                        sh.tok = j;
                        break;
                    }
                }
            }
        }
    }

    /* greedy: the first maximum of the (penalised) row; 0 when nothing is above -inf */
    if (greedy && tid == 0) sh.tok = mx > -INFINITY ? first : 0;
    __syncthreads();
    const int tok = sh.tok;
    if (tid == 0) {
        out[blockIdx.x] = tok;
        if (lp) lp[blockIdx.x].token = tok;
    }
    if (want_lp) { /* the chosen token's raw logit: saved if a penalty changed it */
        if (tid == 0) sh.raw = r[tok];
        __syncthreads();
        for (int j = tid; pen && j < p.pen_n; j += SAMPLE_THREADS)
            if (pen[p.pen_off + j].id == tok) sh.raw = pen_raw[p.pen_off + j];
        __syncthreads();
        if (tid == 0) lp[blockIdx.x].logprob = (float)((double)sh.raw - log_z);
    }
}

extern "C" int qv_cuda_sample(float *x, int n, int width, const qv_sample_row *rows,
                              const qv_token_count *pen, float *pen_raw, int32_t *out,
                              qv_logprobs *lp, cudaStream_t s) {
    if (n <= 0) return 0;
    if (width <= 0 || width > (1 << 19)) {
        fprintf(stderr, "quiver cuda: sample: width %d outside [1, 2^19]\n", width);
        return -1;
    }
    if (lp && pen && !pen_raw) {
        fprintf(stderr, "quiver cuda: sample: logprobs with penalties need pen_raw\n");
        return -1;
    }
    QV_LAUNCH(n, SAMPLE_THREADS, s, k_sample)(x, width, rows, pen, pen_raw, out, lp);
    return launch_failed("sample");
}
