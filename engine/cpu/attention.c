/*
 * attention.c - paged causal attention over the KV pool (HF eager_attention_forward in fp32).
 *
 * Math, per query token t (sequence s, position p) and head h, kv head g = h / (nh / nkv):
 *   j in [j0, p], j0 = window ? max(0, p - window + 1) : 0; key/value j of sequence s live in
 *   page page_table[s][j / page_size], slot j % page_size.
 *   score_j = (q_h · k_j) * scale;  prob_j = exp(score_j - max) / Σ exp(score - max);
 *   out_h = Σ_j prob_j v_j   (j ascending).
 * Parallelisation: over units pulled from an atomic counter; a unit is a tile of 1 to 8
 * consecutive tokens of one sequence and 1 to 8 query heads sharing a kv head (GQA), so that
 * the keys and values it reads serve all its (token, head) rows. Each row is computed by one
 * thread in a fixed order that depends neither on the unit's shape nor on the batch or the
 * thread count. Scores go to per-thread scratch rows owned by the backend context.
 * What not: no KV writes (kv_store in ops.c), no mask tensors: causality comes from positions.
 * Thread: called on the backend's engine thread.
 */
#include <limits.h>
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

#define QV_ATTN_MAX_GROUP 8 /* query heads per unit at most (GQA groups of 7 or 8 heads) */
#define QV_ATTN_MAX_HD 1024 /* head_dim bound of the bf16 pools' row conversion buffer */
#define QV_ATTN_TILE 8      /* consecutive tokens of one sequence per unit at most (prefill) */

struct attn_task {
    const qv_kv_pool *pool;
    int layer;
    const qv_attn_batch *ab;
    const float *q;
    float *out;
    float *scratch;
    size_t scratch_per_thread;
    size_t ldp; /* floats between two score rows of a unit */
    bool simd;
    int eb;       /* bytes per stored K/V element: 4 (F32) or 2 (bf16) */
    int ps_shift; /* log2(page_size) when a power of two, else -1 */
    int hpu;      /* query heads per unit: a divisor of the GQA group size n_heads / n_kv_heads */
    const int32_t *tile_start; /* token tiles: tokens [tile_start[i], tile_start[i+1]) */
    int seg;                   /* keys per segment */
    bool split;                /* a unit is one segment of a (tile, head group) */
    const int32_t *rec;        /* split: per token, its first partial record (-1: one segment) */
    const int32_t *units;      /* split: unit i = (tile, head group, segment) at 3 i */
    atomic_int *left;          /* split: per (tile, head group), segment units still running */
    float *part;               /* partials: shared records (split) or per-thread areas */
    size_t n_rec;              /* split: records in part */
    size_t part_per_thread;    /* not split: floats of a thread's area */
    int max_segs;              /* not split: segments of one token's keys at most */
    int n_units;
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

/* sc[i] = exp(sc[i] - mx), i < len; returns their sequential sum. */
static float exp_sum_portable(float *sc, int len, float mx) {
    float sum = 0.0f;
    for (int i = 0; i < len; i++) {
        sc[i] = expf(sc[i] - mx);
        sum += sc[i];
    }
    return sum;
}

/* sc[i] = sc[i] / sum, a true division per element (as HF's softmax). */
static void divide_portable(float *sc, int len, float sum) {
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

/* exp_sum_portable's operations with the exponential in 8 lanes (exp8_avx2, a short last
 * group padded) and the sum in 8 lanes (then the lanes in a fixed order, then the tail): a
 * scalar expf and add chain over a long context cost more than the dot products. */
__attribute__((target("avx2,fma"))) static float exp_sum_avx2(float *sc, int len, float mx) {
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
    return sum;
}

/* scale_add's 8-lane part: returns the elements done. */
__attribute__((target("avx2,fma"))) static int scale_add_avx2(float *o, float w, const float *a,
                                                              int n, bool first) {
    const __m256 vw = _mm256_set1_ps(w);
    int d = 0;
    for (; d + 8 <= n; d += 8) {
        __m256 wa = _mm256_mul_ps(vw, _mm256_loadu_ps(a + d));
        _mm256_storeu_ps(o + d, first ? wa : _mm256_add_ps(_mm256_loadu_ps(o + d), wa));
    }
    return d;
}

__attribute__((target("avx2,fma"))) static void divide_avx2(float *sc, int len, float sum) {
    __m256 vs = _mm256_set1_ps(sum);
    int i = 0;
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_ps(sc + i, _mm256_div_ps(_mm256_loadu_ps(sc + i), vs));
    for (; i < len; i++)
        sc[i] = sc[i] / sum;
}
#endif

float qv__cpu_exp_sum(bool simd, float *sc, int len, float mx) {
#if QV_HAVE_X86
    if (simd) return exp_sum_avx2(sc, len, mx);
#else
    (void)simd;
#endif
    return exp_sum_portable(sc, len, mx);
}

void qv__cpu_softmax(bool simd, float *sc, int len, float mx) {
    const float sum = qv__cpu_exp_sum(simd, sc, len, mx);
#if QV_HAVE_X86
    if (simd) {
        divide_avx2(sc, len, sum);
        return;
    }
#endif
    divide_portable(sc, len, sum);
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

/* The rows of a unit: token ti of the tile (position J0 + off[ti] .. p[ti], where off[ti] =
 * j0[ti] - J0) and head u, row r = ti * nh + u; a row's probabilities sit at
 * prob + r * ldp + (j - J0), its output at o[ti] + u * hd. */
struct unit_rows {
    int nt, nh, J0, P; /* tokens, heads, the keys [J0, P] any row reads */
    int Pf;            /* prefetching may run to key Pf >= P (the next segment's keys) */
    int j0[QV_ATTN_TILE], p[QV_ATTN_TILE];
    const float *q[QV_ATTN_TILE]; /* head 0's query row of each token; heads follow */
    float *o[QV_ATTN_TILE];
};

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

/* o = Σ_j prob[j] v_j for every row of a unit, head_dim a multiple of 64: 64 output columns at
 * a time live in eight registers across a block of keys; each row runs over the part of the
 * block in its range in turn (the block's V rows are read from memory once per unit), and its
 * registers are parked in its output between blocks (exact). Per element: one fma per j, j
 * ascending, from zero, as axpy_avx2: identical bits, whatever the unit's shape. */
QV_AVX2_INLINE void wsum64_body(const struct attn_task *tk, const int32_t *pt, size_t head_off,
                                const struct unit_rows *ur, const float *prob, size_t ldp, int hd,
                                bool bf16) {
    const size_t eb = bf16 ? 2 : 4;
    const int J0 = ur->J0, P = ur->P;
    for (int c0 = 0; c0 < hd; c0 += 64) {
        for (int jb = J0; jb <= P; jb += WSUM_KEYS) {
            const int je = QV_MIN(P, jb + WSUM_KEYS - 1);
            const char *vp[WSUM_KEYS];
            for (int j = jb; j <= je; j++)
                vp[j - jb] = kv_at(tk, tk->pool->v, slot_at(tk, pt, j) + head_off + (size_t)c0);
            for (int j = je + 1; j <= QV_MIN(ur->Pf, je + WSUM_KEYS); j++) /* the next block */
                prefetch_bytes(kv_at(tk, tk->pool->v, slot_at(tk, pt, j) + head_off + (size_t)c0),
                               64 * eb);
            for (int ti = 0; ti < ur->nt; ti++) {
                const int a = QV_MAX(jb, ur->j0[ti]), b = QV_MIN(je, ur->p[ti]);
                if (a > b) continue; /* no key of this block in the token's range */
                for (int u = 0; u < ur->nh; u++) {
                    float *ou = ur->o[ti] + (size_t)u * (size_t)hd + c0;
                    const float *pu = prob + (size_t)(ti * ur->nh + u) * ldp;
                    __m256 acc[8];
                    if (a == ur->j0[ti]) { /* the row's first key */
                        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                            _mm256_setzero_ps();
                    } else {
                        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) acc[k] =
                            _mm256_loadu_ps(ou + 8 * k);
                    }
                    for (int j = a; j <= b; j++) {
                        __m256 pj = _mm256_set1_ps(pu[j - J0]);
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
}

/* One compiled body per element type. */
__attribute__((target("avx2,fma"))) static void wsum64_avx2(const struct attn_task *tk,
                                                            const int32_t *pt, size_t head_off,
                                                            const struct unit_rows *ur,
                                                            const float *prob, size_t ldp, int hd) {
    if (tk->eb == 2)
        wsum64_body(tk, pt, head_off, ur, prob, ldp, hd, true);
    else
        wsum64_body(tk, pt, head_off, ur, prob, ldp, hd, false);
}

/* Every row's scores (q · k_j) * scale for j in its range (stored at prob + r * ldp + (j - J0),
 * rows as in struct unit_rows; mx[r] gets each row's maximum), head_dim a multiple of 8: eight
 * keys of [J0, P] at a time, each with its own accumulator over head_dim, reduced together by a
 * transpose-hadd tree; each row whose range meets the eight keys runs over them in turn (they
 * are read from memory once per unit). A key's score is the same whatever its slot in the
 * group (the lanes past P hold keys up to Pf, or repeat the last one; a row keeps only its
 * range's) and whatever the unit's shape, so a score depends only on its query and k_j. */
QV_AVX2_INLINE void scores8_body(const struct attn_task *tk, const int32_t *pt, size_t head_off,
                                 const struct unit_rows *ur, int hd, float scale, float *sc,
                                 size_t ldp, float *mx, bool bf16) {
    const size_t eb = bf16 ? 2 : 4;
    const int J0 = ur->J0, P = ur->P, nh = ur->nh;
    __m256 vscale = _mm256_set1_ps(scale);
    for (int r = 0; r < ur->nt * nh; r++)
        mx[r] = -INFINITY;
    const char *kn[8]; /* the next group's keys, prefetched one group ahead */
    _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) kn[i] =
        kv_at(tk, tk->pool->k, slot_at(tk, pt, QV_MIN(J0 + i, P)) + head_off);
    for (int j = J0; j <= P; j += 8) {
        const char *kp[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) kp[i] = kn[i];
        if (j + 8 <= ur->Pf) {
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                kn[i] =
                    kv_at(tk, tk->pool->k, slot_at(tk, pt, QV_MIN(j + 8 + i, ur->Pf)) + head_off);
                prefetch_bytes(kn[i], (size_t)hd * eb);
            }
        }
        for (int ti = 0; ti < ur->nt; ti++) {
            const int a = QV_MAX(j, ur->j0[ti]), b = QV_MIN(j + 7, ur->p[ti]);
            if (a > b) continue; /* none of the eight keys in the token's range */
            for (int u = 0; u < nh; u++) {
                const float *qu = ur->q[ti] + (size_t)u * (size_t)hd;
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
                const int r = ti * nh + u;
                float *su = sc + (size_t)r * ldp;
                for (int jj = a; jj <= b; jj++) {
                    su[jj - J0] = tmp[jj - j];
                    if (tmp[jj - j] > mx[r]) mx[r] = tmp[jj - j];
                }
            }
        }
    }
}

__attribute__((target("avx2,fma"))) static void
scores8_avx2(const struct attn_task *tk, const int32_t *pt, size_t head_off,
             const struct unit_rows *ur, int hd, float scale, float *sc, size_t ldp, float *mx) {
    if (tk->eb == 2)
        scores8_body(tk, pt, head_off, ur, hd, scale, sc, ldp, mx, true);
    else
        scores8_body(tk, pt, head_off, ur, hd, scale, sc, ldp, mx, false);
}
#endif

/* Where a unit's multi-segment rows keep their partial results: token ti's record of its
 * first segment for the unit's head 0 (heads follow at head_dim floats; NULL for a token whose
 * keys lie in one segment), the record of its next segment acc_stride floats further, and the
 * (max, sum) pairs likewise in ml. */
struct unit_parts {
    float *acc[QV_ATTN_TILE];
    float *ml[QV_ATTN_TILE];
    size_t acc_stride, ml_stride;
};

/* Token t's key range [j0, p] and its segment count. */
static inline int token_keys(const struct attn_task *tk, int t, int *j0, int *p) {
    const qv_attn_batch *ab = tk->ab;
    *p = ab->tok_pos[t];
    *j0 = ab->window > 0 ? QV_MAX(0, *p - ab->window + 1) : 0;
    return *p / tk->seg - *j0 / tk->seg + 1;
}

/* Segment k of one unit: the tokens of one tile (consecutive positions of one sequence), the
 * hpu query heads h0 .. h0+hpu-1 (all on one kv head), the keys [k S, (k+1) S) of each
 * token's range. A row whose keys lie in this one segment gets its result here (scores,
 * softmax, weighted sum: the unsegmented arithmetic); a row spanning several segments gets
 * this segment's partial: its maximum m, the sum l of exp(score - m) and Σ exp(score - m) v_j,
 * combined later in segment order (combine_rows). sc: the thread's scratch, tile x hpu rows of
 * ldp floats. A row's result is the same whatever the unit's shape and the batch. */
static void attn_segment(const struct attn_task *tk, int tile, int h0, int k, float *sc, size_t ldp,
                         const struct unit_parts *up) {
    const qv_attn_batch *ab = tk->ab;
    const qv_kv_pool *pool = tk->pool;
    const int nh = tk->hpu, S = tk->seg, ks = k * S, ke = ks + S - 1;
    const int ta = tk->tile_start[tile], nt = tk->tile_start[tile + 1] - ta;
    const int hd = ab->head_dim;
    const int g = h0 / (ab->n_heads / ab->n_kv_heads);
    const size_t head_off = (size_t)g * (size_t)hd;
    const int32_t *pt = ab->page_table[ab->tok_seq[ta]];
    struct unit_rows ur = {.nt = nt, .nh = nh, .J0 = INT_MAX, .P = -1};
    int k0[QV_ATTN_TILE];
    for (int ti = 0; ti < nt; ti++) {
        const int t = ta + ti;
        int j0, p;
        token_keys(tk, t, &j0, &p);
        k0[ti] = j0 / S;
        ur.j0[ti] = QV_MAX(j0, ks); /* empty (j0 > p) when the token has no key here */
        ur.p[ti] = QV_MIN(p, ke);
        const size_t row0 = ((size_t)t * (size_t)ab->n_heads + (size_t)h0) * (size_t)hd;
        ur.q[ti] = tk->q + row0; /* the nh heads' rows are adjacent */
        ur.o[ti] = NULL;
        if (ur.j0[ti] <= ur.p[ti]) { /* k is one of the token's segments */
            ur.o[ti] =
                up->acc[ti] ? up->acc[ti] + (size_t)(k - k0[ti]) * up->acc_stride : tk->out + row0;
            ur.J0 = QV_MIN(ur.J0, ur.j0[ti]);
            ur.P = QV_MAX(ur.P, ur.p[ti]);
        }
    }
    if (ur.P < 0) return; /* no key of the tile in this segment */
    {
        int j0, p;
        token_keys(tk, ta + nt - 1, &j0, &p);
        ur.Pf = p; /* the tile's last key: prefetching runs on into the next segment */
    }
    float mx[QV_ATTN_MAX_GROUP * QV_ATTN_TILE];
    float rowbuf[QV_ATTN_MAX_HD]; /* a bf16 row as floats, for the row-at-a-time paths */

#if QV_HAVE_X86
    if (tk->simd && hd % 8 == 0)
        scores8_avx2(tk, pt, head_off, &ur, hd, ab->scale, sc, ldp, mx);
    else
#endif
        for (int ti = 0; ti < nt; ti++)
            for (int u = 0; u < nh; u++) {
                const float *qu = ur.q[ti] + (size_t)u * (size_t)hd;
                const int r = ti * nh + u;
                float *su = sc + (size_t)r * ldp;
                mx[r] = -INFINITY;
                for (int j = ur.j0[ti]; j <= ur.p[ti]; j++) {
                    const float *kp =
                        row_f32(tk, kv_at(tk, pool->k, slot_at(tk, pt, j) + head_off), hd, rowbuf);
#if QV_HAVE_X86
                    float d = tk->simd ? dot_avx2(qu, kp, hd) : dot_portable(qu, kp, hd);
#else
                float d = dot_portable(qu, kp, hd);
#endif
                    float v = d * ab->scale;
                    su[j - ur.J0] = v;
                    if (v > mx[r]) mx[r] = v;
                }
            }
    for (int ti = 0; ti < nt; ti++) {
        if (ur.j0[ti] > ur.p[ti]) continue;
        const int len = ur.p[ti] - ur.j0[ti] + 1;
        for (int u = 0; u < nh; u++) {
            const int r = ti * nh + u;
            float *row = sc + (size_t)r * ldp + (ur.j0[ti] - ur.J0);
            if (!up->acc[ti]) {
                qv__cpu_softmax(tk->simd, row, len, mx[r]);
            } else {
                float *ml = up->ml[ti] + (size_t)(k - k0[ti]) * up->ml_stride + 2 * (size_t)u;
                ml[0] = mx[r];
                ml[1] = qv__cpu_exp_sum(tk->simd, row, len, mx[r]);
            }
        }
    }
#if QV_HAVE_X86
    if (tk->simd && hd % 64 == 0) {
        wsum64_avx2(tk, pt, head_off, &ur, sc, ldp, hd);
        return;
    }
#endif
    for (int ti = 0; ti < nt; ti++) {
        if (ur.j0[ti] > ur.p[ti]) continue;
        for (int u = 0; u < nh; u++) {
            float *ou = ur.o[ti] + (size_t)u * (size_t)hd;
            const float *su = sc + (size_t)(ti * nh + u) * ldp;
            memset(ou, 0, (size_t)hd * sizeof(float));
            for (int j = ur.j0[ti]; j <= ur.p[ti]; j++) {
                const float *vp =
                    row_f32(tk, kv_at(tk, pool->v, slot_at(tk, pt, j) + head_off), hd, rowbuf);
#if QV_HAVE_X86
                if (tk->simd)
                    axpy_avx2(ou, su[j - ur.J0], vp, hd);
                else
                    axpy_portable(ou, su[j - ur.J0], vp, hd);
#else
                axpy_portable(ou, su[j - ur.J0], vp, hd);
#endif
            }
        }
    }
}

/* o[d] = w * a[d] (first) or o[d] + w * a[d]: the product rounded, then the sum (no fma), in
 * 8 lanes or one at a time: the same bits. */
static void scale_add(bool simd, float *o, float w, const float *a, int n, bool first) {
    int d = 0;
#if QV_HAVE_X86
    if (simd) d = scale_add_avx2(o, w, a, n, first);
#else
    (void)simd;
#endif
    for (; d < n; d++) {
        const float wa = w * a[d];
        o[d] = first ? wa : o[d] + wa;
    }
}

static void divide_row(bool simd, float *o, int n, float L) {
#if QV_HAVE_X86
    if (simd) {
        divide_avx2(o, n, L);
        return;
    }
#else
    (void)simd;
#endif
    divide_portable(o, n, L);
}

/* The results of a unit's multi-segment rows from their partials, segments in ascending
 * order: M = max m_i, w_i = exp(m_i - M), out = (Σ w_i acc_i) / (Σ w_i l_i), each sum from
 * the first segment, a product and a sum rounded apart (no fma), then a true division. */
static void combine_rows(const struct attn_task *tk, int tile, int h0,
                         const struct unit_parts *up) {
    const qv_attn_batch *ab = tk->ab;
    const int ta = tk->tile_start[tile], nt = tk->tile_start[tile + 1] - ta;
    const int hd = ab->head_dim;
    for (int ti = 0; ti < nt; ti++) {
        if (!up->acc[ti]) continue;
        int j0, p;
        const int n = token_keys(tk, ta + ti, &j0, &p);
        for (int u = 0; u < tk->hpu; u++) {
            float *ml = up->ml[ti] + 2 * (size_t)u;
            float M = -INFINITY, L = 0.0f;
            for (int i = 0; i < n; i++)
                M = QV_MAX(M, ml[(size_t)i * up->ml_stride]);
            float *o =
                tk->out + ((size_t)(ta + ti) * (size_t)ab->n_heads + (size_t)(h0 + u)) * (size_t)hd;
            for (int i = 0; i < n; i++) {
                float *mi = ml + (size_t)i * up->ml_stride;
                const float w = expf(mi[0] - M);
                const float wl = w * mi[1];
                L = L + wl;
                const float *a = up->acc[ti] + (size_t)i * up->acc_stride + (size_t)u * (size_t)hd;
                scale_add(tk->simd, o, w, a, hd, i == 0);
            }
            divide_row(tk->simd, o, hd, L);
        }
    }
}

/* Not split: unit = (tile, head group); it runs every segment of its tokens' keys, its
 * multi-segment rows' partials in the thread's area tp, then combines them. */
static void attn_unit(const struct attn_task *tk, int unit, float *sc, size_t ldp, float *tp) {
    const int upt = tk->ab->n_heads / tk->hpu;
    const int tile = unit / upt, h0 = (unit % upt) * tk->hpu;
    const int ta = tk->tile_start[tile], nt = tk->tile_start[tile + 1] - ta;
    const size_t rec_acc = (size_t)tk->hpu * (size_t)tk->ab->head_dim, rec_ml = 2 * (size_t)tk->hpu;
    struct unit_parts up = {.acc_stride = rec_acc, .ml_stride = rec_ml};
    float *ml_area = tp + (size_t)QV_ATTN_TILE * (size_t)tk->max_segs * rec_acc;
    int kk0 = INT_MAX, kk1 = -1;
    for (int ti = 0; ti < nt; ti++) {
        int j0, p;
        const int n = token_keys(tk, ta + ti, &j0, &p);
        kk0 = QV_MIN(kk0, j0 / tk->seg);
        kk1 = QV_MAX(kk1, p / tk->seg);
        up.acc[ti] = n > 1 ? tp + (size_t)ti * (size_t)tk->max_segs * rec_acc : NULL;
        up.ml[ti] = n > 1 ? ml_area + (size_t)ti * (size_t)tk->max_segs * rec_ml : NULL;
    }
    for (int k = kk0; k <= kk1; k++)
        attn_segment(tk, tile, h0, k, sc, ldp, &up);
    combine_rows(tk, tile, h0, &up);
}

/* Split: unit = one segment of a (tile, head group), partials in the shared records; the
 * last of the group's segment units to finish combines its rows. */
static void attn_split_unit(const struct attn_task *tk, int unit, float *sc, size_t ldp) {
    const qv_attn_batch *ab = tk->ab;
    const int tile = tk->units[3 * unit], gi = tk->units[3 * unit + 1], k = tk->units[3 * unit + 2];
    const int h0 = gi * tk->hpu, upt = ab->n_heads / tk->hpu;
    const int ta = tk->tile_start[tile], nt = tk->tile_start[tile + 1] - ta;
    const size_t rec_acc = (size_t)ab->n_heads * (size_t)ab->head_dim;
    const size_t rec_ml = 2 * (size_t)ab->n_heads;
    float *ml_area = tk->part + tk->n_rec * rec_acc;
    struct unit_parts up = {.acc_stride = rec_acc, .ml_stride = rec_ml};
    for (int ti = 0; ti < nt; ti++) {
        const int32_t r = tk->rec[ta + ti];
        up.acc[ti] =
            r >= 0 ? tk->part + (size_t)r * rec_acc + (size_t)h0 * (size_t)ab->head_dim : NULL;
        up.ml[ti] = r >= 0 ? ml_area + (size_t)r * rec_ml + 2 * (size_t)h0 : NULL;
    }
    attn_segment(tk, tile, h0, k, sc, ldp, &up);
    /* release this segment's partials; the last one acquires them all */
    if (atomic_fetch_sub_explicit(&tk->left[tile * upt + gi], 1, memory_order_acq_rel) == 1)
        combine_rows(tk, tile, h0, &up);
}

static void attn_fn(void *arg, int part, int nth) {
    (void)nth;
    struct attn_task *tk = arg;
    const size_t ldp = tk->ldp;
    float *sc = tk->scratch + (size_t)part * tk->scratch_per_thread;
    float *tp = tk->split ? NULL : tk->part + (size_t)part * tk->part_per_thread;
    for (;;) {
        int un = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
        if (un >= tk->n_units) break;
        if (tk->split)
            attn_split_unit(tk, un, sc, ldp);
        else
            attn_unit(tk, un, sc, ldp, tp);
    }
}

/* Query heads per unit: the largest divisor of the GQA group size (at most QV_ATTN_MAX_GROUP)
 * that still leaves a unit per thread; 1 without GQA. A unit reads its kv head's K and V once
 * for all its heads, which at long contexts outweighs an uneven split over the threads
 * (SmolLM2 at batch 1 on 2 threads: 3 units of 3 heads beat 9 units of 1 by 11-16 % at a
 * 1,024-token context, bench_decode). */
static int heads_per_unit(const qv_attn_batch *ab, int n_tiles, int n_threads) {
    const int group = ab->n_heads / ab->n_kv_heads;
    int best = 1;
    for (int d = 2; d <= QV_MIN(group, QV_ATTN_MAX_GROUP); d++)
        if (group % d == 0 && n_tiles * (ab->n_heads / d) >= n_threads) best = d;
    return best;
}

/* Splits the step's tokens into tiles of up to QV_ATTN_TILE consecutive positions of one
 * sequence (a prefill chunk; decode tokens stay alone), tile i = tokens [ts[i], ts[i+1]).
 * Returns the number of tiles; *span gets the longest key range [J0, P] of a tile. */
static int make_tiles(const qv_attn_batch *ab, int32_t *ts, size_t *span) {
    int n = 0;
    *span = 1;
    for (int t = 0; t < ab->n_tokens;) {
        const int a = t++;
        while (t < ab->n_tokens && t - a < QV_ATTN_TILE && ab->tok_seq[t] == ab->tok_seq[t - 1] &&
               ab->tok_pos[t] == ab->tok_pos[t - 1] + 1)
            t++;
        const int p0 = ab->tok_pos[a], p1 = ab->tok_pos[t - 1];
        const int j0 = ab->window > 0 ? QV_MAX(0, p0 - ab->window + 1) : 0;
        *span = QV_MAX(*span, (size_t)(p1 - j0 + 1));
        ts[n++] = a;
    }
    ts[n] = ab->n_tokens;
    return n;
}

void qv__cpu_set_attn_segments(qv__cpu_ctx *cx, int seg, int split) {
    QV_ASSERT(seg > 0 && split >= -1 && split <= 1);
    cx->attn_seg = seg;
    cx->attn_split = split;
}

/* *buf holds at least n elements of `size` bytes (grown, contents lost); aborts when out of
 * memory (a few bytes per token and context segment of a step; no graceful path here). */
static void *grow(void *buf, size_t *cap, size_t n, size_t size) {
    if (n <= *cap) return buf;
    size_t c = QV_MAX(n, 2 * *cap);
    void *b = qv_malloc(c * size);
    QV_ASSERT(b != NULL);
    qv_free(buf);
    *cap = c;
    return b;
}

void qv__cpu_attention(qv__cpu_ctx *cx, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                       const float *q, float *out) {
    QV_ASSERT(layer >= 0 && layer < pool->n_layers);
    QV_ASSERT(ab->n_kv_heads == pool->n_kv_heads && ab->head_dim == pool->head_dim);
    QV_ASSERT(ab->n_kv_heads > 0 && ab->n_heads % ab->n_kv_heads == 0);
    QV_ASSERT(ab->head_dim <= QV_ATTN_MAX_HD);
    if (ab->n_tokens == 0) return;
    for (int t = 0; t < ab->n_tokens; t++)
        QV_ASSERT(ab->tok_pos[t] >= 0 && ab->tok_seq[t] >= 0 && ab->tok_seq[t] < ab->n_seqs);
    if ((size_t)ab->n_tokens + 1 > (size_t)cx->tiles_cap) {
        size_t cap = (size_t)cx->tiles_cap;
        cx->tiles = grow(cx->tiles, &cap, (size_t)ab->n_tokens + 1, sizeof(int32_t));
        cx->tiles_cap = (int)cap;
    }
    size_t span;
    const int n_tiles = make_tiles(ab, cx->tiles, &span);
    struct attn_task tk = {
        .pool = pool,
        .layer = layer,
        .ab = ab,
        .q = q,
        .out = out,
        .simd = cx->simd,
        .eb = qv__cpu_pool_bf16(cx, pool) ? 2 : 4,
        .ps_shift = (pool->page_size & (pool->page_size - 1)) == 0
                        ? __builtin_ctz((unsigned)pool->page_size)
                        : -1,
        .tile_start = cx->tiles,
        .seg = cx->attn_seg,
    };
    /* Segments: per tile (the union of its tokens' ranges is contiguous) and per token. */
    const int S = cx->attn_seg, group = ab->n_heads / ab->n_kv_heads;
    int total_segs = 0, max_segs = 1;
    size_t n_rec = 0;
    for (int i = 0; i < n_tiles; i++) {
        int j0, p, jf, pl;
        token_keys(&tk, cx->tiles[i], &jf, &p);
        token_keys(&tk, cx->tiles[i + 1] - 1, &j0, &pl);
        total_segs += pl / S - jf / S + 1;
    }
    for (int t = 0; t < ab->n_tokens; t++) {
        int j0, p;
        const int n = token_keys(&tk, t, &j0, &p);
        max_segs = QV_MAX(max_segs, n);
        if (n > 1) n_rec += (size_t)n;
    }
    int hpu = heads_per_unit(ab, n_tiles, cx->n_threads);
    tk.split = cx->attn_split >= 0 ? cx->attn_split == 1
                                   : n_rec > 0 && n_tiles * (ab->n_heads / hpu) < 4 * cx->n_threads;
    if (tk.split) { /* more units: the segments'; the widest head groups that fill the threads */
        hpu = 1;
        for (int d = 2; d <= QV_MIN(group, QV_ATTN_MAX_GROUP); d++)
            if (group % d == 0 && total_segs * (ab->n_heads / d) >= cx->n_threads) hpu = d;
    }
    tk.hpu = hpu;
    const int upt = ab->n_heads / hpu;
    /* one score row per (token, head) of a unit, over one segment's keys at most; rows an odd
     * number of cache lines apart (a power-of-two stride would map them to few cache sets) */
    tk.ldp = (QV_MIN(span, (size_t)S) + 15) / 32 * 32 + 16;
    const size_t need = tk.ldp * (size_t)hpu * QV_ATTN_TILE;
    if (need > cx->scratch_per_thread) {
        size_t grow_to = QV_MAX(need, 2 * cx->scratch_per_thread);
        float *s = qv_malloc(grow_to * (size_t)cx->n_threads * sizeof(float));
        QV_ASSERT(s != NULL); /* a few floats per context position; no graceful path here */
        qv_free(cx->scratch);
        cx->scratch = s;
        cx->scratch_per_thread = grow_to;
    }
    tk.scratch = cx->scratch;
    tk.scratch_per_thread = cx->scratch_per_thread;
    const size_t hd = (size_t)ab->head_dim;
    if (tk.split) {
        /* token records, then the unit list (tile, head group, segment) */
        const size_t n_units = (size_t)total_segs * (size_t)upt;
        cx->attn_idx = grow(cx->attn_idx, &cx->attn_idx_cap, (size_t)ab->n_tokens + 3 * n_units,
                            sizeof(int32_t));
        int32_t *rec = cx->attn_idx, *units = cx->attn_idx + ab->n_tokens;
        size_t r = 0;
        for (int t = 0; t < ab->n_tokens; t++) {
            int j0, p;
            const int n = token_keys(&tk, t, &j0, &p);
            rec[t] = n > 1 ? (int32_t)r : -1;
            if (n > 1) r += (size_t)n;
        }
        cx->attn_left = grow(cx->attn_left, &cx->attn_left_cap, (size_t)n_tiles * (size_t)upt,
                             sizeof(atomic_int));
        size_t u = 0;
        for (int i = 0; i < n_tiles; i++) {
            int j0, p, jf, pl;
            token_keys(&tk, cx->tiles[i], &jf, &p);
            token_keys(&tk, cx->tiles[i + 1] - 1, &j0, &pl);
            for (int gi = 0; gi < upt; gi++) {
                atomic_init(&cx->attn_left[(size_t)i * (size_t)upt + (size_t)gi],
                            pl / S - jf / S + 1);
                for (int k = jf / S; k <= pl / S; k++, u++) {
                    units[3 * u] = i;
                    units[3 * u + 1] = gi;
                    units[3 * u + 2] = k;
                }
            }
        }
        cx->attn_part = grow(cx->attn_part, &cx->attn_part_cap,
                             QV_MAX(n_rec, 1) * (size_t)ab->n_heads * (hd + 2), sizeof(float));
        tk.rec = rec;
        tk.units = units;
        tk.left = cx->attn_left;
        tk.n_rec = n_rec;
        tk.n_units = (int)n_units;
    } else {
        tk.max_segs = max_segs;
        tk.part_per_thread = (size_t)QV_ATTN_TILE * (size_t)max_segs * (size_t)hpu * (hd + 2);
        cx->attn_part = grow(cx->attn_part, &cx->attn_part_cap,
                             tk.part_per_thread * (size_t)cx->n_threads, sizeof(float));
        tk.n_units = n_tiles * upt;
    }
    tk.part = cx->attn_part;
    atomic_init(&tk.next, 0);
    if (tk.n_units == 1)
        attn_fn(&tk, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, attn_fn, &tk);
}
