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
    bool simd;
    int eb;       /* bytes per stored K/V element: 4 (F32) or 2 (bf16) */
    int ps_shift; /* log2(page_size) when a power of two, else -1 */
    int hpu;      /* query heads per unit: a divisor of the GQA group size n_heads / n_kv_heads */
    const int32_t *tile_start; /* token tiles: tokens [tile_start[i], tile_start[i+1]) */
    int n_units;               /* n_tiles * n_heads / hpu */
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

/* The rows of a unit: token ti of the tile (position J0 + off[ti] .. p[ti], where off[ti] =
 * j0[ti] - J0) and head u, row r = ti * nh + u; a row's probabilities sit at
 * prob + r * ldp + (j - J0), its output at o[ti] + u * hd. */
struct unit_rows {
    int nt, nh, J0, P; /* tokens, heads, the keys [J0, P] any row reads */
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
            for (int j = je + 1; j <= QV_MIN(P, je + WSUM_KEYS); j++) /* the next block */
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
 * group (the lanes past P repeat key P; a row keeps only its range's) and whatever the unit's
 * shape, so a score depends only on its query and k_j. */
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
        if (j + 8 <= P) {
            _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
                kn[i] = kv_at(tk, tk->pool->k, slot_at(tk, pt, QV_MIN(j + 8 + i, P)) + head_off);
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

/* One unit: the tokens of one tile (consecutive positions of one sequence) and the hpu query
 * heads h0 .. h0+hpu-1, all on kv head g. sc: the thread's scratch, tile x hpu rows of ldp
 * floats. Each head's result for each token is the same whatever the unit's shape. */
static void attn_unit(const struct attn_task *tk, int unit, float *sc, size_t ldp) {
    const qv_attn_batch *ab = tk->ab;
    const qv_kv_pool *pool = tk->pool;
    const int nh = tk->hpu, units_per_tile = ab->n_heads / nh;
    const int tile = unit / units_per_tile, h0 = (unit % units_per_tile) * nh;
    const int ta = tk->tile_start[tile], nt = tk->tile_start[tile + 1] - ta;
    const int hd = ab->head_dim;
    const int g = h0 / (ab->n_heads / ab->n_kv_heads);
    const size_t head_off = (size_t)g * (size_t)hd;
    const int32_t *pt = ab->page_table[ab->tok_seq[ta]];
    struct unit_rows ur = {.nt = nt, .nh = nh};
    for (int ti = 0; ti < nt; ti++) {
        const int t = ta + ti, p = ab->tok_pos[t];
        ur.p[ti] = p;
        ur.j0[ti] = ab->window > 0 ? QV_MAX(0, p - ab->window + 1) : 0;
        const size_t row0 = ((size_t)t * (size_t)ab->n_heads + (size_t)h0) * (size_t)hd;
        ur.q[ti] = tk->q + row0; /* the nh heads' rows are adjacent */
        ur.o[ti] = tk->out + row0;
    }
    ur.J0 = ur.j0[0]; /* positions ascend along the tile, and so do the window starts */
    ur.P = ur.p[nt - 1];
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
    for (int ti = 0; ti < nt; ti++)
        for (int u = 0; u < nh; u++) {
            const int r = ti * nh + u;
            qv__cpu_softmax(tk->simd, sc + (size_t)r * ldp + (ur.j0[ti] - ur.J0),
                            ur.p[ti] - ur.j0[ti] + 1, mx[r]);
        }
#if QV_HAVE_X86
    if (tk->simd && hd % 64 == 0) {
        wsum64_avx2(tk, pt, head_off, &ur, sc, ldp, hd);
        return;
    }
#endif
    for (int ti = 0; ti < nt; ti++)
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

static void attn_fn(void *arg, int part, int nth) {
    (void)nth;
    struct attn_task *tk = arg;
    const size_t ldp = tk->scratch_per_thread / (size_t)(tk->hpu * QV_ATTN_TILE);
    float *sc = tk->scratch + (size_t)part * tk->scratch_per_thread;
    for (;;) {
        int un = atomic_fetch_add_explicit(&tk->next, 1, memory_order_relaxed);
        if (un >= tk->n_units) break;
        attn_unit(tk, un, sc, ldp);
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

void qv__cpu_attention(qv__cpu_ctx *cx, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                       const float *q, float *out) {
    QV_ASSERT(layer >= 0 && layer < pool->n_layers);
    QV_ASSERT(ab->n_kv_heads == pool->n_kv_heads && ab->head_dim == pool->head_dim);
    QV_ASSERT(ab->n_kv_heads > 0 && ab->n_heads % ab->n_kv_heads == 0);
    QV_ASSERT(ab->head_dim <= QV_ATTN_MAX_HD);
    if (ab->n_tokens == 0) return;
    for (int t = 0; t < ab->n_tokens; t++)
        QV_ASSERT(ab->tok_pos[t] >= 0 && ab->tok_seq[t] >= 0 && ab->tok_seq[t] < ab->n_seqs);
    if (ab->n_tokens + 1 > cx->tiles_cap) {
        int cap = QV_MAX(ab->n_tokens + 1, 2 * cx->tiles_cap);
        int32_t *ts = qv_malloc((size_t)cap * sizeof(int32_t));
        QV_ASSERT(ts != NULL); /* a few bytes per token of the step; no graceful path here */
        qv_free(cx->tiles);
        cx->tiles = ts;
        cx->tiles_cap = cap;
    }
    size_t span;
    const int n_tiles = make_tiles(ab, cx->tiles, &span);
    const int hpu = heads_per_unit(ab, n_tiles, cx->n_threads);
    /* one score row per (token, head) of a unit */
    const size_t need = span * (size_t)hpu * QV_ATTN_TILE;
    if (need > cx->scratch_per_thread) {
        size_t grow = QV_MAX(need, 2 * cx->scratch_per_thread);
        float *s = qv_malloc(grow * (size_t)cx->n_threads * sizeof(float));
        QV_ASSERT(s != NULL); /* a few floats per context position; no graceful path here */
        qv_free(cx->scratch);
        cx->scratch = s;
        cx->scratch_per_thread = grow;
    }
    const int n_units = n_tiles * (ab->n_heads / hpu);
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
        .tile_start = cx->tiles,
        .n_units = n_units,
    };
    atomic_init(&tk.next, 0);
    if (tk.n_units == 1)
        attn_fn(&tk, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, attn_fn, &tk);
}
