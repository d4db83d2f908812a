/*
 * attention.c - paged causal attention over the KV pool (HF eager_attention_forward in fp32).
 *
 * Math, per query token t (sequence s, position p) and head h, kv head g = h / (nh / nkv):
 *   j in [j0, p], j0 = window ? max(0, p - window + 1) : 0; key/value j of sequence s live in
 *   page page_table[s][j / page_size], slot j % page_size.
 *   score_j = (q_h · k_j) * scale;  prob_j = exp(score_j - max) / Σ exp(score - max);
 *   out_h = Σ_j prob_j v_j   (j ascending).
 * Parallelisation: over units pulled in small chunks from an atomic counter; a unit is one
 * token and 1 to 8 query heads sharing a kv head (GQA), so that the keys and values it reads
 * serve all its heads. Each head's result is computed by one thread in a fixed order that
 * depends neither on the unit size nor on the batch or the thread count. Scores go to per-thread
 * scratch rows (one per head of a unit) owned by the backend context.
 * What not: no KV writes (kv_store in ops.c), no mask tensors: causality comes from positions.
 * Thread: called on the backend's engine thread.
 */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu/cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define QV_HAVE_X86 1
#include <immintrin.h>
#else
#define QV_HAVE_X86 0
#endif

#define PAIRS_PER_JOB 4     /* (token, head) pairs per job in big prefill batches */
#define QV_ATTN_MAX_GROUP 8 /* query heads per unit at most (GQA groups of 7 or 8 heads) */
#define QV_ATTN_MAX_HD 1024 /* head_dim bound of the bf16 pools' row conversion buffer */

struct attn_task {
    const qv_kv_pool *pool;
    int layer;
    const qv_attn_batch *ab;
    const float *q;
    float *out;
    float *scratch;
    size_t scratch_per_thread;
    bool simd;
    int eb;       /* bytes per stored K/V element: 4 (F32) or 2 (bf16) */
    int ps_shift; /* log2(page_size) when a power of two, else -1 */
    int hpu;      /* query heads per unit: a divisor of the GQA group size n_heads / n_kv_heads */
    int n_units;  /* n_tokens * n_heads / hpu */
    int units_per_job; /* 1 for a decode step (few, long units), more for big prefill batches */
    atomic_int next;
};

static float dot_portable(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            acc[k] += a[i + k] * b[i + k];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void axpy_portable(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

#if QV_HAVE_X86
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float s = _mm_cvtss_f32(s4);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) static void axpy_avx2(float *y, float a, const float *x,
                                                          int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i,
                         _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}
#endif

/* sc[i] = exp(sc[i] - mx) / Σ exp(sc - mx), i < len: sequential sum, per-element division. */
static void softmax_portable(float *sc, int len, float mx) {
    float sum = 0.0f;
    for (int i = 0; i < len; i++) {
        sc[i] = expf(sc[i] - mx);
        sum += sc[i];
    }
    for (int i = 0; i < len; i++)
        sc[i] = sc[i] / sum;
}

#if QV_HAVE_X86
/* e^x in 8 lanes for the softmax's x = score - max <= 0 (Cephes' expf: x = n ln2 + r with
 * |r| <= ln2/2, ln2 split in two constants, a degree-5 polynomial for (e^r - 1 - r) / r^2, and
 * 2^n built in the exponent bits; within 2 ulp of e^x). x below -87.33 (e^x under the
 * smallest normal float) gives 0; NaN stays NaN. Every lane computes the same function of its
 * own input, so a probability depends only on its score. */
__attribute__((target("avx2,fma"))) static __m256 exp8_avx2(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654475f);
    __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ), nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 xc = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e =
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    y = _mm256_andnot_ps(under, y);
    return _mm256_blendv_ps(y, x, nan);
}

/* softmax_portable's operations with the exponential in 8 lanes (exp8_avx2, a short last
 * group padded) and the sum in 8 lanes (then the lanes in a fixed order, then the tail): a
 * scalar expf and add chain over a long context cost more than the dot products. The division
 * stays a true division (as HF's softmax). */
__attribute__((target("avx2,fma"))) static void softmax_avx2(float *sc, int len, float mx) {
    const __m256 vmx = _mm256_set1_ps(mx);
    int i0 = 0;
    for (; i0 + 8 <= len; i0 += 8)
        _mm256_storeu_ps(sc + i0, exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(sc + i0), vmx)));
    if (i0 < len) {
        float t[8] = {0};
        memcpy(t, sc + i0, (size_t)(len - i0) * sizeof(float));
        _mm256_storeu_ps(t, exp8_avx2(_mm256_sub_ps(_mm256_loadu_ps(t), vmx)));
        memcpy(sc + i0, t, (size_t)(len - i0) * sizeof(float));
    }
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= len; i += 8)
        acc = _mm256_add_ps(acc, _mm256_loadu_ps(sc + i));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    float sum = _mm_cvtss_f32(s4);
    for (; i < len; i++)
        sum += sc[i];
    __m256 vs = _mm256_set1_ps(sum);
    i = 0;
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_ps(sc + i, _mm256_div_ps(_mm256_loadu_ps(sc + i), vs));
    for (; i < len; i++)
        sc[i] = sc[i] / sum;
}
#endif

void qv__cpu_softmax(bool simd, float *sc, int len, float mx) {
#if QV_HAVE_X86
    if (simd) {
        softmax_avx2(sc, len, mx);
        return;
    }
#else
    (void)simd;
#endif
    softmax_portable(sc, len, mx);
}

/* Float offset of position j's slot (all kv heads) in this layer of the pool (shifts when the
 * page size is a power of two). */
static inline size_t slot_at(const struct attn_task *tk, const int32_t *pt, int j) {
    const qv_kv_pool *pool = tk->pool;
    const size_t kv_dim = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    int pi, off;
    if (tk->ps_shift >= 0) {
        pi = j >> tk->ps_shift;
        off = j & (pool->page_size - 1);
    } else {
        pi = j / pool->page_size;
        off = j % pool->page_size;
    }
    const size_t page = (size_t)tk->layer * (size_t)pool->n_pages + (size_t)pt[pi];
    return (page * (size_t)pool->page_size + (size_t)off) * kv_dim;
}

/* Prefetches the n bytes at p into the caches (whole lines). */
static inline void prefetch_bytes(const void *p, size_t n) {
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch((const char *)p + o, 0, 3);
}

/* Address of element `off` of a K or V array (F32 or bf16 elements). */
static inline const void *kv_at(const struct attn_task *tk, const float *base, size_t off) {
    return (const char *)base + off * (size_t)tk->eb;
}

/* The n elements at p as floats: p itself for F32, else converted into buf (exact). */
static const float *row_f32(const struct attn_task *tk, const void *p, int n, float *buf) {
    if (tk->eb == 4) return p;
    const uint16_t *h = p;
    for (int i = 0; i < n; i++)
        buf[i] = qv_bf16_to_f32(h[i]);
    return buf;
}

#if QV_HAVE_X86
#define WSUM_KEYS 32 /* keys per block: 32 V rows of one kv head stay in L1 across the heads */

#define QV_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

/* 8 K/V elements at p as floats (bf16: exact widening). */
QV_AVX2_INLINE __m256 ld8(const void *p, bool bf16) {
    if (bf16)
        return _mm256_castsi256_ps(
            _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
    return _mm256_loadu_ps((const float *)p);
}

/* o_u = Σ_j prob_u[j] v_j for the nh query heads u of one kv head (prob_u = prob + u * ldp,
 * o_u = o + u * hd), head_dim a multiple of 64: 64 output columns at a time live in eight
 * registers across a block of keys; each head runs over the block in turn (the block's V rows
 * are read from memory once), and its registers are parked in o_u between blocks (exact).
 * Per element: one fma per j, j ascending, from zero, as axpy_avx2: identical bits, and
 * independent of nh. */
QV_AVX2_INLINE void wsum64_body(const struct attn_task *tk, const int32_t *pt, int j0, int p,
                                size_t head_off, const float *prob, size_t ldp, float *o, int hd,
                                int nh, bool bf16) {
    const size_t eb = bf16 ? 2 : 4;
    for (int c0 = 0; c0 < hd; c0 += 64) {
        for (int jb = j0; jb <= p; jb += WSUM_KEYS) {
            const int je = QV_MIN(p, jb + WSUM_KEYS - 1);
            const char *vp[WSUM_KEYS];
            for (int j = jb; j <= je; j++)
                vp[j - jb] = kv_at(tk, tk->pool->v, slot_at(tk, pt, j) + head_off + (size_t)c0);
            for (int j = je + 1; j <= QV_MIN(p, je + WSUM_KEYS); j++) /* the next block */
                prefetch_bytes(kv_at(tk, tk->pool->v, slot_at(tk, pt, j) + head_off + (size_t)c0),
                               64 * eb);
            for (int u = 0; u < nh; u++) {
                float *ou = o + (size_t)u * (size_t)hd + c0;
                const float *pu = prob + (size_t)u * ldp;
                __m256 acc[8];
                if (jb == j0) {
                    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                        _mm256_setzero_ps();
                } else {
                    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                        _mm256_loadu_ps(ou + 8 * k);
                }
                for (int j = jb; j <= je; j++) {
                    __m256 pj = _mm256_set1_ps(pu[j - j0]);
                    const char *v = vp[j - jb];
                    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                        _mm256_fmadd_ps(pj, ld8(v + 8 * k * eb, bf16), acc[k]);
                }
                _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++)
                    _mm256_storeu_ps(ou + 8 * k, acc[k]);
            }
        }
    }
}

/* One compiled body per element type. */
__attribute__((target("avx2,fma"))) static void wsum64_avx2(const struct attn_task *tk,
                                                            const int32_t *pt, int j0, int p,
                                                            size_t head_off, const float *prob,
                                                            size_t ldp, float *o, int hd, int nh) {
    if (tk->eb == 2)
        wsum64_body(tk, pt, j0, p, head_off, prob, ldp, o, hd, nh, true);
    else
        wsum64_body(tk, pt, j0, p, head_off, prob, ldp, o, hd, nh, false);
}

/* sc_u[j - j0] = (q_u · k_j) * scale for j in [j0, p] and the nh query heads u of one kv head
 * (q_u = q + u * hd, sc_u = sc + u * ldp; mx[u] gets each head's maximum), head_dim a multiple
 * of 8: eight keys at a time, each with its own accumulator over head_dim, reduced together by
 * a transpose-hadd tree; each head runs over the eight keys in turn (read from memory once).
 * Every key goes through exactly the same operations whatever its slot in the group (a short
 * last group repeats its last key) and whatever nh, so a score depends only on q_u and k_j. */
QV_AVX2_INLINE void scores8_body(const struct attn_task *tk, const int32_t *pt, int j0, int p,
                                 size_t head_off, const float *q, int hd, float scale, float *sc,
                                 size_t ldp, int nh, float *mx, bool bf16) {
    const size_t eb = bf16 ? 2 : 4;
    __m256 vscale = _mm256_set1_ps(scale);
    for (int u = 0; u < nh; u++)
        mx[u] = -INFINITY;
    const char *kn[8]; /* the next group's keys, prefetched one group ahead */
    _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) kn[i] =
        kv_at(tk, tk->pool->k, slot_at(tk, pt, QV_MIN(j0 + i, p)) + head_off);
    for (int j = j0; j <= p; j += 8) {
        const char *kp[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) kp[i] = kn[i];
        if (j + 8 <= p) {
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                kn[i] = kv_at(tk, tk->pool->k, slot_at(tk, pt, QV_MIN(j + 8 + i, p)) + head_off);
                prefetch_bytes(kn[i], (size_t)hd * eb);
            }
        }
        const int nk = QV_MIN(8, p - j + 1);
        for (int u = 0; u < nh; u++) {
            const float *qu = q + (size_t)u * (size_t)hd;
            __m256 acc[8];
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
            for (int d = 0; d < hd; d += 8) {
                __m256 qd = _mm256_loadu_ps(qu + d);
                _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) acc[i] =
                    _mm256_fmadd_ps(qd, ld8(kp[i] + (size_t)d * eb, bf16), acc[i]);
            }
            __m256 s01 = _mm256_hadd_ps(acc[0], acc[1]), s23 = _mm256_hadd_ps(acc[2], acc[3]);
            __m256 s45 = _mm256_hadd_ps(acc[4], acc[5]), s67 = _mm256_hadd_ps(acc[6], acc[7]);
            __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
            __m256 lo = _mm256_permute2f128_ps(s0123, s4567, 0x20);
            __m256 hi = _mm256_permute2f128_ps(s0123, s4567, 0x31);
            __m256 dots = _mm256_mul_ps(_mm256_add_ps(lo, hi), vscale);
            float tmp[8];
            _mm256_storeu_ps(tmp, dots);
            float *su = sc + (size_t)u * ldp + (j - j0);
            for (int i = 0; i < nk; i++) {
                su[i] = tmp[i];
                if (tmp[i] > mx[u]) mx[u] = tmp[i];
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void
scores8_avx2(const struct attn_task *tk, const int32_t *pt, int j0, int p, size_t head_off,
             const float *q, int hd, float scale, float *sc, size_t ldp, int nh, float *mx) {
    if (tk->eb == 2)
        scores8_body(tk, pt, j0, p, head_off, q, hd, scale, sc, ldp, nh, mx, true);
    else
        scores8_body(tk, pt, j0, p, head_off, q, hd, scale, sc, ldp, nh, mx, false);
}
#endif

/* One unit: token t and the hpu query heads h0 .. h0+hpu-1, all on kv head g. sc: the thread's
 * scratch, hpu rows of ldp floats. Each head's result is the same whatever hpu. */
static void attn_unit(const struct attn_task *tk, int unit, float *sc, size_t ldp) {
    const qv_attn_batch *ab = tk->ab;
    const qv_kv_pool *pool = tk->pool;
    const int nh = tk->hpu, units_per_tok = ab->n_heads / nh;
    const int t = unit / units_per_tok, h0 = (unit % units_per_tok) * nh;
    const int hd = ab->head_dim;
    const int s = ab->tok_seq[t], p = ab->tok_pos[t];
    const int j0 = ab->window > 0 ? QV_MAX(0, p - ab->window + 1) : 0, len = p - j0 + 1;
    const int g = h0 / (ab->n_heads / ab->n_kv_heads);
    const size_t head_off = (size_t)g * (size_t)hd;
    const int32_t *pt = ab->page_table[s];
    const size_t row0 = ((size_t)t * (size_t)ab->n_heads + (size_t)h0) * (size_t)hd;
    const float *q = tk->q + row0; /* the nh heads' rows are adjacent */
    float *o = tk->out + row0;
    float mx[QV_ATTN_MAX_GROUP];
    float rowbuf[QV_ATTN_MAX_HD]; /* a bf16 row as floats, for the row-at-a-time paths */

#if QV_HAVE_X86
    if (tk->simd && hd % 8 == 0)
        scores8_avx2(tk, pt, j0, p, head_off, q, hd, ab->scale, sc, ldp, nh, mx);
    else
#endif
        for (int u = 0; u < nh; u++) {
            const float *qu = q + (size_t)u * (size_t)hd;
            float *su = sc + (size_t)u * ldp;
            mx[u] = -INFINITY;
            for (int j = j0; j <= p; j++) {
                const float *kp =
                    row_f32(tk, kv_at(tk, pool->k, slot_at(tk, pt, j) + head_off), hd, rowbuf);
#if QV_HAVE_X86
                float d = tk->simd ? dot_avx2(qu, kp, hd) : dot_portable(qu, kp, hd);
#else
            float d = dot_portable(qu, kp, hd);
#endif
                float v = d * ab->scale;
                su[j - j0] = v;
                if (v > mx[u]) mx[u] = v;
            }
        }
    for (int u = 0; u < nh; u++)
        qv__cpu_softmax(tk->simd, sc + (size_t)u * ldp, len, mx[u]);
#if QV_HAVE_X86
    if (tk->simd && hd % 64 == 0) {
        wsum64_avx2(tk, pt, j0, p, head_off, sc, ldp, o, hd, nh);
        return;
    }
#endif
    for (int u = 0; u < nh; u++) {
        float *ou = o + (size_t)u * (size_t)hd;
        const float *su = sc + (size_t)u * ldp;
        memset(ou, 0, (size_t)hd * sizeof(float));
        for (int j = j0; j <= p; j++) {
            const float *vp =
                row_f32(tk, kv_at(tk, pool->v, slot_at(tk, pt, j) + head_off), hd, rowbuf);
#if QV_HAVE_X86
            if (tk->simd)
                axpy_avx2(ou, su[j - j0], vp, hd);
            else
                axpy_portable(ou, su[j - j0], vp, hd);
#else
            axpy_portable(ou, su[j - j0], vp, hd);
#endif
        }
    }
}

static void attn_fn(void *arg, int part, int nth) {
    (void)nth;
    struct attn_task *tk = arg;
    const size_t ldp = tk->scratch_per_thread / (size_t)tk->hpu;
    float *sc = tk->scratch + (size_t)part * tk->scratch_per_thread;
    for (;;) {
        int job = atomic_fetch_add_explicit(&tk->next, tk->units_per_job, memory_order_relaxed);
        if (job >= tk->n_units) break;
        int end = QV_MIN(job + tk->units_per_job, tk->n_units);
        for (int un = job; un < end; un++)
            attn_unit(tk, un, sc, ldp);
    }
}

/* Query heads per unit: the largest divisor of the GQA group size (at most QV_ATTN_MAX_GROUP)
 * that still leaves a unit per thread; 1 without GQA. A unit reads its kv head's K and V once
 * for all its heads, which at long contexts outweighs an uneven split over the threads
 * (SmolLM2 at batch 1 on 2 threads: 3 units of 3 heads beat 9 units of 1 by 11-16 % at a
 * 1,024-token context, bench_decode). */
static int heads_per_unit(const qv_attn_batch *ab, int n_threads) {
    const int group = ab->n_heads / ab->n_kv_heads;
    int best = 1;
    for (int d = 2; d <= QV_MIN(group, QV_ATTN_MAX_GROUP); d++)
        if (group % d == 0 && ab->n_tokens * (ab->n_heads / d) >= n_threads) best = d;
    return best;
}

void qv__cpu_attention(qv__cpu_ctx *cx, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                       const float *q, float *out) {
    QV_ASSERT(layer >= 0 && layer < pool->n_layers);
    QV_ASSERT(ab->n_kv_heads == pool->n_kv_heads && ab->head_dim == pool->head_dim);
    QV_ASSERT(ab->n_kv_heads > 0 && ab->n_heads % ab->n_kv_heads == 0);
    QV_ASSERT(ab->head_dim <= QV_ATTN_MAX_HD);
    if (ab->n_tokens == 0) return;
    size_t need = 1;
    for (int t = 0; t < ab->n_tokens; t++) {
        QV_ASSERT(ab->tok_pos[t] >= 0 && ab->tok_seq[t] >= 0 && ab->tok_seq[t] < ab->n_seqs);
        size_t span = (size_t)ab->tok_pos[t] + 1;
        if (ab->window > 0) span = QV_MIN(span, (size_t)ab->window);
        need = QV_MAX(need, span);
    }
    const int hpu = heads_per_unit(ab, cx->n_threads);
    need *= (size_t)hpu; /* one score row per head of a unit */
    if (need > cx->scratch_per_thread) {
        size_t grow = QV_MAX(need, 2 * cx->scratch_per_thread);
        float *s = qv_malloc(grow * (size_t)cx->n_threads * sizeof(float));
        QV_ASSERT(s != NULL); /* a few floats per context position; no graceful path here */
        qv_free(cx->scratch);
        cx->scratch = s;
        cx->scratch_per_thread = grow;
    }
    const int n_units = ab->n_tokens * (ab->n_heads / hpu);
    struct attn_task tk = {
        .pool = pool,
        .layer = layer,
        .ab = ab,
        .q = q,
        .out = out,
        .scratch = cx->scratch,
        .scratch_per_thread = cx->scratch_per_thread,
        .simd = cx->simd,
        .eb = qv__cpu_pool_bf16(cx, pool) ? 2 : 4,
        .ps_shift = (pool->page_size & (pool->page_size - 1)) == 0
                        ? __builtin_ctz((unsigned)pool->page_size)
                        : -1,
        .hpu = hpu,
        .n_units = n_units,
        .units_per_job = n_units * hpu >= 256 ? QV_MAX(1, PAIRS_PER_JOB / hpu) : 1,
    };
    atomic_init(&tk.next, 0);
    if (tk.n_units == 1)
        attn_fn(&tk, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, attn_fn, &tk);
}
