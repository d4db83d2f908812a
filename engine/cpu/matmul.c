/*
 * matmul.c - y (n, n_rows) = x (n, n_cols) · wᵀ (+ bias) for every weight dtype, fused
 * dequantize-and-dot, fp32 accumulation.
 *
 * Math: y[t, r] = Σ_c w[r, c] · x[t, c]. The weight row is consumed in chunks of 32 elements;
 * each chunk is dequantized into four 8-float registers (never into a matrix-sized buffer)
 * and FMA'd against the activations of up to 8 tokens, so one dequantization serves a whole
 * token tile (the 256-element block types first decode their block's sub-scales once per row
 * and block: prep_<T>). Activations are never quantized.
 *
 * Determinism contract (tested): every (row, token) pair owns exactly one 8-lane accumulator
 * that receives, chunk by chunk in column order, the same four FMAs whatever the token-tile
 * size (8/4/2/1), the row-tile size (8/NT or 1) or the thread that runs the row; the lanes are
 * then reduced in one fixed order. Hence y is bitwise identical for any n, any batch
 * composition and any thread count. The portable path keeps the same shape (8 scalar lanes
 * per pair); it is not bitwise equal to the AVX2 path, only to itself. The AVX-512 path (chosen
 * at backend creation where the CPU has it) has its own fixed shape: 16 lanes per pair, two
 * FMAs per chunk; bitwise equal to itself, not to the other two. The NEON path (aarch64) has
 * 4 lanes per pair and eight FMAs per chunk, likewise equal only to itself.
 *
 * Parallelisation: over output rows only (never the reduction): threads pull chunks of rows
 * from an atomic counter; inside a chunk, tokens are tiled (8, 4, 2, 1) and rows are tiled so
 * that rows x tokens = 8 independent FMA chains hide the FMA latency at n = 1.
 * Thread: called on the backend's engine thread; runs on the backend's pool.
 */
#include <stdatomic.h>
#include <string.h>

#include "cpu/cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define QV_HAVE_X86 1
#include <immintrin.h>
#else
#define QV_HAVE_X86 0
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define QV_HAVE_NEON 1
#include <arm_neon.h>
#else
#define QV_HAVE_NEON 0
#endif

#define TILE_T_MAX 8 /* tokens per tile */

struct mm_args {
    const uint8_t *w;
    size_t row_bytes;
    int64_t n_rows;
    int64_t n_cols;
    int64_t n_chunks;   /* full 32-element chunks per row */
    int64_t n_tail;     /* leftover columns (float dtypes only) */
    size_t chunk_bytes; /* bytes of 32 weights (averaged over a block for K-quants) */
    enum qv_dtype dtype;
    const float *x;
    int n;
    float *y;
    const float *bias;
    int64_t rows_per_job;
    int64_t n_jobs;
    atomic_long next_job;
};

/* Scalar dot of columns [c0, c0+len) of a float-typed row: the tail after the last full
 * 32-chunk. Same sequential order in every path. Never inlined, so one compiled body serves
 * every tile (a compiler that contracts a*b+c into an FMA inside AVX2-target callers could
 * otherwise make tiles disagree). */
__attribute__((noinline)) static float tail_dot(enum qv_dtype dt, const uint8_t *row,
                                                const float *x, int64_t c0, int64_t len) {
    float s = 0.0f;
    for (int64_t c = c0; c < c0 + len; c++) {
        float w;
        if (dt == QV_DTYPE_F32) {
            memcpy(&w, row + 4 * c, 4);
        } else {
            uint16_t h;
            memcpy(&h, row + 2 * c, 2);
            w = dt == QV_DTYPE_F16 ? qv_f16_to_f32(h) : qv_bf16_to_f32(h);
        }
        s += w * x[c];
    }
    return s;
}

/* Chunks per super-block: 8 for the 256-element blocks, 1 for the others (no prep). */
enum {
    SB_F32 = 1,
    SB_F16 = 1,
    SB_BF16 = 1,
    SB_Q8_0 = 1,
    SB_Q4_0 = 1,
    SB_Q4_1 = 1,
    SB_Q5_0 = 1,
    SB_Q5_1 = 1,
    SB_IQ4_NL = 1,
    SB_Q4_K = 8,
    SB_Q6_K = 8,
    SB_Q2_K = 8,
    SB_Q3_K = 8,
    SB_Q5_K = 8,
    SB_IQ4_XS = 8,
};

/* Software prefetch distance: the same column of the row PF_ROWS rows below, i.e. the next
 * 8-row tile (computed as an integer: it may point past the matrix, harmless for a prefetch). Rows
 * of a tile are read as 8 interleaved streams, which the hardware prefetchers of the test machines
 * follow poorly (Q8_0 n = 1 ran at ~7 GB/s from DRAM, 27 GB/s hot). */
#define PF_ROWS 8

typedef void (*tile_fn)(const struct mm_args *a, int64_t r0, int t0);

/* One tile of RT rows x NT tokens for the kernel family ISA; see the determinism contract at
 * the top of the file. A family supplies ATTR_<ISA> (target attribute), VEC_<ISA> (vector
 * type), NV_<ISA> (vectors per 32-element chunk), ZERO_/LOAD_/FMA_<ISA> (intrinsics),
 * KS_<ISA> and PREP_<ISA>(T) (a row's per-super-block state and its decoder), DEQ_<ISA>(T) (the
 * chunk dequantizer of dtype T) and HSUM_<ISA> (the fixed-order lane sum).
 * A pair's accumulator gets the chunk's NV FMAs in order, chunk after chunk. */
#define DEF_TILE(ISA, T, RT, NT)                                                                   \
    static ATTR_##ISA void tile_##ISA##_##T##_##RT##_##NT(const struct mm_args *a, int64_t r0,     \
                                                          int t0) {                                \
        VEC_##ISA acc[RT][NT];                                                                     \
        const uint8_t *wr[RT];                                                                     \
        const float *xr[NT];                                                                       \
        _Pragma("GCC unroll 8") for (int r = 0; r < RT; r++) {                                     \
            wr[r] = a->w + (size_t)(r0 + r) * a->row_bytes;                                        \
            _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) acc[r][t] = ZERO_##ISA();         \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) xr[t] =                               \
            a->x + (size_t)(t0 + t) * (size_t)a->n_cols;                                           \
        const size_t pf_dist = PF_ROWS * a->row_bytes, chunk_bytes = a->chunk_bytes;               \
        KS_##ISA ks[RT];                                                                           \
        for (int64_t c = 0; c < a->n_chunks; c++) {                                                \
            if (c % SB_##T == 0)                                                                   \
                _Pragma("GCC unroll 8") for (int r = 0; r < RT; r++)                               \
                    PREP_##ISA(T)(wr[r], c / SB_##T, &ks[r]);                                      \
            _Pragma("GCC unroll 8") for (int r = 0; r < RT; r++) {                                 \
                VEC_##ISA W[NV_##ISA];                                                             \
                __builtin_prefetch(                                                                \
                    (const void *)((uintptr_t)wr[r] + pf_dist + (size_t)c * chunk_bytes), 0, 3);   \
                DEQ_##ISA(T)(wr[r], c, &ks[r], W);                                                 \
                _Pragma("GCC unroll 8") for (int t = 0; t < NT; t++) {                             \
                    const float *xp = xr[t] + 32 * c;                                              \
                    _Pragma("GCC unroll 4") for (int k = 0; k < NV_##ISA; k++) acc[r][t] =         \
                        FMA_##ISA(W[k], LOAD_##ISA(xp + k * (32 / NV_##ISA)), acc[r][t]);          \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < RT; r++)                                                               \
            for (int t = 0; t < NT; t++) {                                                         \
                float s = HSUM_##ISA(acc[r][t]);                                                   \
                if (a->n_tail) s += tail_dot(a->dtype, wr[r], xr[t], 32 * a->n_chunks, a->n_tail); \
                if (a->bias) s += a->bias[r0 + r];                                                 \
                a->y[(size_t)(t0 + t) * (size_t)a->n_rows + (size_t)(r0 + r)] = s;                 \
            }                                                                                      \
    }

/* M(ISA, T) for every weight dtype T: a family's tile definitions or its table rows. */
#define FOR_EACH_DTYPE(M, ISA)                                                                     \
    M(ISA, F32)                                                                                    \
    M(ISA, F16)                                                                                    \
    M(ISA, BF16)                                                                                   \
    M(ISA, Q8_0)                                                                                   \
    M(ISA, Q4_0)                                                                                   \
    M(ISA, Q4_1)                                                                                   \
    M(ISA, Q5_0)                                                                                   \
    M(ISA, Q5_1)                                                                                   \
    M(ISA, Q4_K)                                                                                   \
    M(ISA, Q6_K)                                                                                   \
    M(ISA, Q2_K)                                                                                   \
    M(ISA, Q3_K)                                                                                   \
    M(ISA, Q5_K)                                                                                   \
    M(ISA, IQ4_NL)                                                                                 \
    M(ISA, IQ4_XS)

/* The 8-accumulator tile set (AVX2, NEON): main tiles 8x1, 4x2, 2x4, 1x8 and the single-row
 * tile of each token count; table row [dtype][log2 NT][0 = main tile of 8/NT rows, 1 = one row]. */
#define DEF_TILES_8ACC(ISA, T)                                                                     \
    DEF_TILE(ISA, T, 8, 1)                                                                         \
    DEF_TILE(ISA, T, 1, 1)                                                                         \
    DEF_TILE(ISA, T, 4, 2)                                                                         \
    DEF_TILE(ISA, T, 1, 2)                                                                         \
    DEF_TILE(ISA, T, 2, 4)                                                                         \
    DEF_TILE(ISA, T, 1, 4)                                                                         \
    DEF_TILE(ISA, T, 1, 8)
#define TILE_ROW_8ACC(ISA, T)                                                                      \
    [QV_DTYPE_##T] = {{tile_##ISA##_##T##_8_1, tile_##ISA##_##T##_1_1},                            \
                      {tile_##ISA##_##T##_4_2, tile_##ISA##_##T##_1_2},                            \
                      {tile_##ISA##_##T##_2_4, tile_##ISA##_##T##_1_4},                            \
                      {tile_##ISA##_##T##_1_8, tile_##ISA##_##T##_1_8}},
#if QV_HAVE_X86 || QV_HAVE_NEON
/* Rows of the main tile per log2(token tile). */
static const int rows_8acc[4] = {8, 4, 2, 1};
#endif

/* ------------------------------------------------------------------------------------------ */
/* AVX2 + FMA + F16C kernels                                                                  */
/* ------------------------------------------------------------------------------------------ */
#if QV_HAVE_X86

#define QV_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QV_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

QV_AVX2_INLINE float f16s(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* 8 consecutive bytes starting at byte 8k of the 32-byte vector b (k = 0..3). */
QV_AVX2_INLINE __m128i quarter(__m256i b, int k) {
    __m128i h = k < 2 ? _mm256_castsi256_si128(b) : _mm256_extracti128_si256(b, 1);
    return (k & 1) ? _mm_srli_si128(h, 8) : h;
}

QV_AVX2_INLINE void u8_to_f32(__m256i b, __m256 W[4]) {
    W[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarter(b, 0)));
    W[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarter(b, 1)));
    W[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarter(b, 2)));
    W[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(quarter(b, 3)));
}

QV_AVX2_INLINE void i8_to_f32(__m256i b, __m256 W[4]) {
    W[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter(b, 0)));
    W[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter(b, 1)));
    W[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter(b, 2)));
    W[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(quarter(b, 3)));
}

/* 16 packed bytes -> 32 nibbles: low nibbles are elements 0..15, high nibbles 16..31. */
QV_AVX2_INLINE __m256i nibbles32(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(q, m);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
    return _mm256_set_m128i(hi, lo);
}

/* Bit j of qh -> 0x10 in byte j (j = 0..31). */
QV_AVX2_INLINE __m256i qh_bits(const uint8_t *p) {
    uint32_t qh;
    memcpy(&qh, p, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2,
                                          2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bitm = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), shuf);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bitm), bitm);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

QV_AVX2_INLINE void scale4(__m256 W[4], float d) {
    __m256 vd = _mm256_set1_ps(d);
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] = _mm256_mul_ps(W[k], vd);
}

QV_AVX2_INLINE void affine4(__m256 W[4], float d, float m) {
    __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] = _mm256_fmadd_ps(W[k], vd, vm);
}

/* deq_<T>(row, c, W): the 32 weights [32c, 32c+32) of `row` as four 8-float vectors. */

QV_AVX2_INLINE void deq_F32(const uint8_t *row, int64_t c, __m256 W[4]) {
    const float *p = (const float *)(const void *)row + 32 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] = _mm256_loadu_ps(p + 8 * k);
}

QV_AVX2_INLINE void deq_F16(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 64 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] =
        _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16 * k)));
}

QV_AVX2_INLINE void deq_BF16(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 64 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 16 * k)));
        W[k] = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    }
}

QV_AVX2_INLINE void deq_Q8_0(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 34 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] =
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 2 + 8 * k))));
    scale4(W, f16s(p));
}

/* 16 packed bytes -> 32 nibble values as floats, straight from memory: zero-extend 8 bytes to
 * 8 lanes twice, then mask (elements 0..15) or shift (elements 16..31). */
QV_AVX2_INLINE void nibbles_to_f32(const uint8_t *qs, __m256 W[4]) {
    __m256i a = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    __m256i m = _mm256_set1_epi32(0xF);
    W[0] = _mm256_cvtepi32_ps(_mm256_and_si256(a, m));
    W[1] = _mm256_cvtepi32_ps(_mm256_and_si256(b, m));
    W[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(a, 4));
    W[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
}

/* (q - 8) * d as fma(q, d, -8d): -8d is exact, so this is (q - 8) * d rounded once, bit for
 * bit the reference value. */
QV_AVX2_INLINE void deq_Q4_0(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 18 * c;
    float d = f16s(p);
    nibbles_to_f32(p + 2, W);
    affine4(W, d, -8.0f * d);
}

/* The adjacent f16 pair (d, m) at p converted with one vcvtph2ps and broadcast from
 * registers (exact conversions: the same values as two scalar f16s() calls). */
QV_AVX2_INLINE void dm_pair(const uint8_t *p, __m256 *vd, __m256 *vm) {
    int32_t dm;
    memcpy(&dm, p, 4);
    __m256 f = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(dm)));
    *vd = _mm256_permutevar8x32_ps(f, _mm256_setzero_si256());
    *vm = _mm256_permutevar8x32_ps(f, _mm256_set1_epi32(1));
}

QV_AVX2_INLINE void deq_Q4_1(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 20 * c;
    __m256 vd, vm;
    dm_pair(p, &vd, &vm);
    nibbles_to_f32(p + 4, W);
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) W[k] = _mm256_fmadd_ps(W[k], vd, vm);
}

QV_AVX2_INLINE void deq_Q5_0(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 22 * c;
    __m256i v = _mm256_or_si256(nibbles32(p + 6), qh_bits(p + 2));
    i8_to_f32(_mm256_sub_epi8(v, _mm256_set1_epi8(16)), W);
    scale4(W, f16s(p));
}

QV_AVX2_INLINE void deq_Q5_1(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 24 * c;
    u8_to_f32(_mm256_or_si256(nibbles32(p + 8), qh_bits(p + 4)), W);
    affine4(W, f16s(p), f16s(p + 2));
}

/* ---- K-quants and IQ4: super-block scales decoded once, chunks dequantized from them ---- */

/* The scales of one row's current 256-weight super-block: prep_<T> decodes them once per
 * super-block (products of the f16 super-scale and the small integer scales, exact in f32, so
 * the same values as the reference dequantizer's; `nm` holds the mins negated) and the chunk
 * dequantizers read them: for chunk `sub` (0..7) of the super-block, d[2 sub], d[2 sub + 1]
 * (and nm[...]) for the types with 16-element sub-blocks (Q2_K, Q3_K, Q6_K), d[sub] and
 * nm[sub] for 32-element ones. */
struct kscales {
    float d[16], nm[16];
};

/* 16 small integers (bytes of v, signed or not) times the f16 scales: lanes 0..7 times d into
 * out[0..7], lanes 8..15 times d2 into out2[0..7] (the products are exact). */
QV_AVX2_INLINE void scale16(__m128i v, bool is_signed, float d, float d2, float *out, float *out2) {
    const __m128i h[2] = {v, _mm_srli_si128(v, 8)};
    float *o[2] = {out, out2};
    const float s[2] = {d, d2};
    for (int k = 0; k < 2; k++) {
        __m256i w = is_signed ? _mm256_cvtepi8_epi32(h[k]) : _mm256_cvtepu8_epi32(h[k]);
        _mm256_storeu_ps(o[k], _mm256_mul_ps(_mm256_cvtepi32_ps(w), _mm256_set1_ps(s[k])));
    }
}

/* Q4_K / Q5_K: the 8 six-bit scales and 8 six-bit mins packed in 12 bytes (FORMATS.md 3.2),
 * unpacked with 32-bit masks into 8 scale bytes then 8 min bytes. */
QV_AVX2_INLINE void prep_k4(const uint8_t *p, struct kscales *ks) {
    uint32_t u[3], v[4];
    memcpy(u, p + 4, 12);
    v[0] = u[0] & 0x3f3f3f3fu;                                               /* scales 0..3 */
    v[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);        /* scales 4..7 */
    v[2] = u[1] & 0x3f3f3f3fu;                                               /* mins 0..3 */
    v[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4); /* mins 4..7 */
    __m128i b;
    memcpy(&b, v, 16);
    scale16(b, false, f16s(p), -f16s(p + 2), ks->d, ks->nm);
}

QV_AVX2_INLINE void prep_Q4_K(const uint8_t *row, int64_t sb, struct kscales *ks) {
    prep_k4(row + 144 * sb, ks);
}

QV_AVX2_INLINE void prep_Q5_K(const uint8_t *row, int64_t sb, struct kscales *ks) {
    prep_k4(row + 176 * sb, ks);
}

QV_AVX2_INLINE void prep_Q6_K(const uint8_t *row, int64_t sb, struct kscales *ks) {
    const uint8_t *p = row + 210 * sb;
    const float d = f16s(p + 208); /* 16 signed scales at p + 192 */
    scale16(_mm_loadu_si128((const __m128i *)(p + 192)), true, d, d, ks->d, ks->d + 8);
}

/* Q2_K: 16 bytes of (4-bit scale | 4-bit min << 4). */
QV_AVX2_INLINE void prep_Q2_K(const uint8_t *row, int64_t sb, struct kscales *ks) {
    const uint8_t *p = row + 84 * sb;
    float d = f16s(p + 80), ndmin = -f16s(p + 82);
    __m128i b = _mm_loadu_si128((const __m128i *)p), m4 = _mm_set1_epi8(0x0F);
    __m128i sc = _mm_and_si128(b, m4), mn = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    scale16(sc, false, d, d, ks->d, ks->d + 8);
    scale16(mn, false, ndmin, ndmin, ks->nm, ks->nm + 8);
}

/* Q3_K: 16 six-bit scales (minus 32) packed in 12 bytes: low nibbles in bytes 0..7 (scales
 * 0..7 low, 8..15 high nibble), the 2 high bits in bytes 8..11 (scale k: byte 8 + k % 4,
 * bits 2 (k / 4)). */
QV_AVX2_INLINE void prep_Q3_K(const uint8_t *row, int64_t sb, struct kscales *ks) {
    const uint8_t *p = row + 110 * sb;
    uint32_t u[3], v[4];
    memcpy(u, p + 96, 12);
    v[0] = (u[0] & 0x0f0f0f0fu) | ((u[2] & 0x03030303u) << 4);
    v[1] = (u[1] & 0x0f0f0f0fu) | (((u[2] >> 2) & 0x03030303u) << 4);
    v[2] = ((u[0] >> 4) & 0x0f0f0f0fu) | (((u[2] >> 4) & 0x03030303u) << 4);
    v[3] = ((u[1] >> 4) & 0x0f0f0f0fu) | (((u[2] >> 6) & 0x03030303u) << 4);
    __m128i b;
    memcpy(&b, v, 16);
    const float d = f16s(p + 108);
    scale16(_mm_sub_epi8(b, _mm_set1_epi8(32)), true, d, d, ks->d, ks->d + 8);
}

/* IQ4_XS: 8 six-bit scales (minus 32): the low nibbles in scales_l[4] (sub-block s: byte s / 2,
 * nibble s % 2), the 2 high bits in the u16 scales_h (bits 2s). */
QV_AVX2_INLINE void prep_IQ4_XS(const uint8_t *row, int64_t sb, struct kscales *ks) {
    const uint8_t *p = row + 136 * sb;
    uint16_t sh;
    uint32_t sl;
    memcpy(&sh, p + 2, 2);
    memcpy(&sl, p + 4, 4);
    __m128i l = _mm_cvtsi32_si128((int)sl), m4 = _mm_set1_epi8(0x0F);
    /* bytes s&F, s>>4 of each scales_l byte, in sub-block order */
    __m128i lo = _mm_unpacklo_epi8(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(l, 4), m4));
    __m256i hi =
        _mm256_srlv_epi32(_mm256_set1_epi32(sh), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    hi = _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(3)), 4);
    __m256i v =
        _mm256_sub_epi32(_mm256_or_si256(_mm256_cvtepu8_epi32(lo), hi), _mm256_set1_epi32(32));
    _mm256_storeu_ps(ks->d, _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(f16s(p))));
}

/* The types without super-blocks: no prep, and their chunk dequantizer ignores the scales. */
#define NO_PREP(T)                                                                                 \
    QV_AVX2_INLINE void prep_##T(const uint8_t *row, int64_t sb, struct kscales *ks) {             \
        (void)row;                                                                                 \
        (void)sb;                                                                                  \
        (void)ks;                                                                                  \
    }                                                                                              \
    QV_AVX2_INLINE void deqk_##T(const uint8_t *row, int64_t c, const struct kscales *ks,          \
                                 __m256 W[4]) {                                                    \
        (void)ks;                                                                                  \
        deq_##T(row, c, W);                                                                        \
    }
NO_PREP(F32)
NO_PREP(F16)
NO_PREP(BF16)
NO_PREP(Q8_0)
NO_PREP(Q4_0)
NO_PREP(Q4_1)
NO_PREP(Q5_0)
NO_PREP(Q5_1)

/* The 32 quant values of K-quant chunk c as bytes, from 32-byte loads and 16-bit shifts (the
 * mask drops the bits a shift brings in from the neighbouring byte): unsigned 0..15 (Q4_K),
 * 0..31 (Q5_K), 0..3 (Q2_K); signed -4..3 (Q3_K), -32..31 (Q6_K). Both kernel families widen
 * them. */
QV_AVX2_INLINE __m256i bits_at(const uint8_t *p, int shift, int mask) {
    return _mm256_and_si256(
        _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)p), _mm_cvtsi32_si128(shift)),
        _mm256_set1_epi8((char)mask));
}

QV_AVX2_INLINE __m256i q4k_bytes(const uint8_t *row, int64_t c) {
    int sub = (int)(c & 7);
    return bits_at(row + 144 * (c >> 3) + 16 + 32 * (sub >> 1), 4 * (sub & 1), 0xF);
}

QV_AVX2_INLINE __m256i q5k_bytes(const uint8_t *row, int64_t c) {
    const uint8_t *p = row + 176 * (c >> 3);
    int sub = (int)(c & 7);
    __m256i hi = _mm256_slli_epi16(bits_at(p + 16, sub, 1), 4); /* bit sub of qh[l] as 16 */
    return _mm256_or_si256(bits_at(p + 48 + 32 * (sub >> 1), 4 * (sub & 1), 0xF), hi);
}

QV_AVX2_INLINE __m256i q2k_bytes(const uint8_t *row, int64_t c) {
    int sub = (int)(c & 7);
    return bits_at(row + 84 * (c >> 3) + 16 + 32 * (sub >> 2), 2 * (sub & 3), 3);
}

/* low 2 bits - 4, plus 4 where the hmask bit 4h + j is set */
QV_AVX2_INLINE __m256i q3k_bytes(const uint8_t *row, int64_t c) {
    const uint8_t *p = row + 110 * (c >> 3);
    int sub = (int)(c & 7), h = sub >> 2, j = sub & 3;
    __m256i lo = bits_at(p + 32 + 32 * h, 2 * j, 3);
    __m256i hb = _mm256_slli_epi16(bits_at(p, 4 * h + j, 1), 2);
    return _mm256_sub_epi8(_mm256_or_si256(lo, hb), _mm256_set1_epi8(4));
}

QV_AVX2_INLINE __m256i q6k_bytes(const uint8_t *row, int64_t c) {
    const uint8_t *p = row + 210 * (c >> 3);
    int sub = (int)(c & 7), h = sub >> 2, g = sub & 3;
    __m256i ql = bits_at(p + 64 * h + 32 * (g & 1), 4 * (g >> 1), 0xF);
    __m256i qh = _mm256_slli_epi16(bits_at(p + 128 + 32 * h, 2 * g, 3), 4);
    return _mm256_sub_epi8(_mm256_or_si256(ql, qh), _mm256_set1_epi8(32));
}

/* W = W * d (- m, with nm = -m, as one FMA; nm NULL: no min), the scale per 16-element
 * sub-block (pairs: W[0..1] take d[0], W[2..3] d[1]) or one for the chunk (d[0]). */
QV_AVX2_INLINE void scale_ks(__m256 W[4], const float *d, const float *nm, bool pairs) {
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        const int i = pairs ? k >> 1 : 0;
        __m256 vd = _mm256_set1_ps(d[i]);
        W[k] = nm ? _mm256_fmadd_ps(W[k], vd, _mm256_set1_ps(nm[i])) : _mm256_mul_ps(W[k], vd);
    }
}

QV_AVX2_INLINE void deqk_Q4_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                              __m256 W[4]) {
    u8_to_f32(q4k_bytes(row, c), W);
    scale_ks(W, ks->d + (c & 7), ks->nm + (c & 7), false);
}

QV_AVX2_INLINE void deqk_Q5_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                              __m256 W[4]) {
    u8_to_f32(q5k_bytes(row, c), W);
    scale_ks(W, ks->d + (c & 7), ks->nm + (c & 7), false);
}

QV_AVX2_INLINE void deqk_Q6_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                              __m256 W[4]) {
    i8_to_f32(q6k_bytes(row, c), W);
    scale_ks(W, ks->d + 2 * (c & 7), NULL, true);
}

QV_AVX2_INLINE void deqk_Q2_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                              __m256 W[4]) {
    u8_to_f32(q2k_bytes(row, c), W);
    scale_ks(W, ks->d + 2 * (c & 7), ks->nm + 2 * (c & 7), true);
}

QV_AVX2_INLINE void deqk_Q3_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                              __m256 W[4]) {
    i8_to_f32(q3k_bytes(row, c), W);
    scale_ks(W, ks->d + 2 * (c & 7), NULL, true);
}

/* 16 packed IQ4 indices -> the 32 table values (low nibbles first) times d. */
QV_AVX2_INLINE void iq4_to_f32(const uint8_t *qs, float d, __m256 W[4]) {
    const __m128i tbl = _mm_loadu_si128((const __m128i *)qv_iq4_values);
    __m128i q = _mm_loadu_si128((const __m128i *)qs), m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_shuffle_epi8(tbl, _mm_and_si128(q, m));
    __m128i hi = _mm_shuffle_epi8(tbl, _mm_and_si128(_mm_srli_epi16(q, 4), m));
    __m256 vd = _mm256_set1_ps(d);
    W[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), vd);
    W[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), vd);
    W[2] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), vd);
    W[3] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), vd);
}

QV_AVX2_INLINE void deq_IQ4_NL(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 18 * c;
    iq4_to_f32(p + 2, f16s(p), W);
}
NO_PREP(IQ4_NL)

QV_AVX2_INLINE void deqk_IQ4_XS(const uint8_t *row, int64_t c, const struct kscales *ks,
                                __m256 W[4]) {
    int sub = (int)(c & 7);
    iq4_to_f32(row + 136 * (c >> 3) + 8 + 16 * sub, ks->d[sub], W);
}

QV_AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#define ATTR_avx2 QV_AVX2
#define KS_avx2 struct kscales
#define PREP_avx2(T) prep_##T
#define VEC_avx2 __m256
#define NV_avx2 4
#define ZERO_avx2 _mm256_setzero_ps
#define LOAD_avx2 _mm256_loadu_ps
#define FMA_avx2 _mm256_fmadd_ps
#define DEQ_avx2(T) deqk_##T
#define HSUM_avx2 hsum8
FOR_EACH_DTYPE(DEF_TILES_8ACC, avx2)

static const tile_fn avx2_tiles[QV_DTYPE_COUNT][4][2] = {FOR_EACH_DTYPE(TILE_ROW_8ACC, avx2)};

/* ------------------------------------------------------------------------------------------ */
/* AVX-512 (F, BW, DQ, VL) kernels: 16-float lanes, 32 vector registers.                      */
/* Same contract as the AVX2 path, with its own fixed shape: each (row, token) pair owns one  */
/* 16-lane accumulator that receives two FMAs per 32-element chunk in column order, reduced   */
/* by hsum16. Bitwise equal to itself for any n, tile and thread count, not to the AVX2 path. */
/* ------------------------------------------------------------------------------------------ */

#define QV_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")))
#define QV_AVX512_INLINE                                                                           \
    static inline                                                                                  \
        __attribute__((always_inline, target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")))

QV_AVX512_INLINE void deq512_F32(const uint8_t *row, int64_t c, __m512 V[2]) {
    const float *p = (const float *)(const void *)row + 32 * c;
    V[0] = _mm512_loadu_ps(p);
    V[1] = _mm512_loadu_ps(p + 16);
}

QV_AVX512_INLINE void deq512_F16(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 64 * c;
    V[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    V[1] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32)));
}

QV_AVX512_INLINE void deq512_BF16(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 64 * c;
    for (int k = 0; k < 2; k++) {
        __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p + 32 * k)));
        V[k] = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    }
}

QV_AVX512_INLINE void deq512_Q8_0(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 34 * c;
    __m512 vd = _mm512_set1_ps(f16s(p));
    for (int k = 0; k < 2; k++) {
        __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2 + 16 * k)));
        V[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(q), vd);
    }
}

/* 16 bytes at p zero-extended to 16 int32 lanes. */
QV_AVX512_INLINE __m512i u8x16(const uint8_t *p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* 16 packed bytes -> the 32 nibble values: low nibbles are elements 0..15, high 16..31. */
QV_AVX512_INLINE void nibbles512(const uint8_t *qs, __m512 V[2]) {
    __m512i a = u8x16(qs);
    V[0] = _mm512_cvtepi32_ps(_mm512_and_si512(a, _mm512_set1_epi32(0xF)));
    V[1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(a, 4));
}

/* fma(q, d, -8d), exact as in deq_Q4_0. */
QV_AVX512_INLINE void deq512_Q4_0(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 18 * c;
    float d = f16s(p);
    nibbles512(p + 2, V);
    __m512 vd = _mm512_set1_ps(d), vm = _mm512_set1_ps(-8.0f * d);
    V[0] = _mm512_fmadd_ps(V[0], vd, vm);
    V[1] = _mm512_fmadd_ps(V[1], vd, vm);
}

QV_AVX512_INLINE void deq512_Q4_1(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 20 * c;
    __m256 d8, m8; /* the AVX2 path's one conversion of the (d, m) pair, widened */
    dm_pair(p, &d8, &m8);
    __m512 vd = _mm512_broadcast_f32x8(d8), vm = _mm512_broadcast_f32x8(m8);
    nibbles512(p + 4, V);
    V[0] = _mm512_fmadd_ps(V[0], vd, vm);
    V[1] = _mm512_fmadd_ps(V[1], vd, vm);
}

/* Q5_0 / Q5_1: the 16 packed nibbles widened to 16 lanes, and bit j of qh (element j) as 16,
 * set through a lane mask: elements 0..15 take bits 0..15, elements 16..31 bits 16..31. */
QV_AVX512_INLINE void q5_512(const uint8_t *qh, const uint8_t *qs, __m512i Q[2]) {
    uint32_t h;
    memcpy(&h, qh, 4);
    __m512i a = u8x16(qs);
    const __m512i b16 = _mm512_set1_epi32(16);
    __m512i lo = _mm512_and_si512(a, _mm512_set1_epi32(0xF)), hi = _mm512_srli_epi32(a, 4);
    Q[0] = _mm512_mask_or_epi32(lo, (__mmask16)(h & 0xFFFF), lo, b16);
    Q[1] = _mm512_mask_or_epi32(hi, (__mmask16)(h >> 16), hi, b16);
}

/* (q - 16) * d, as the AVX2 path (an exact integer, one rounding). */
QV_AVX512_INLINE void deq512_Q5_0(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 22 * c;
    __m512i Q[2];
    q5_512(p + 2, p + 6, Q);
    __m512 vd = _mm512_set1_ps(f16s(p));
    for (int k = 0; k < 2; k++)
        V[k] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(Q[k], _mm512_set1_epi32(16))), vd);
}

/* fma(q, d, m), as the AVX2 path. */
QV_AVX512_INLINE void deq512_Q5_1(const uint8_t *row, int64_t c, __m512 V[2]) {
    const uint8_t *p = row + 24 * c;
    __m512i Q[2];
    q5_512(p + 4, p + 8, Q);
    __m512 vd = _mm512_set1_ps(f16s(p)), vm = _mm512_set1_ps(f16s(p + 2));
    for (int k = 0; k < 2; k++)
        V[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(Q[k]), vd, vm);
}

/* The types without super-blocks, as DEF_TILE calls them (no scales). */
#define NO_PREP512(T)                                                                              \
    QV_AVX512_INLINE void deqk512_##T(const uint8_t *row, int64_t c, const struct kscales *ks,     \
                                      __m512 V[2]) {                                               \
        (void)ks;                                                                                  \
        deq512_##T(row, c, V);                                                                     \
    }
NO_PREP512(F32)
NO_PREP512(F16)
NO_PREP512(BF16)
NO_PREP512(Q8_0)
NO_PREP512(Q4_0)
NO_PREP512(Q4_1)
NO_PREP512(Q5_0)
NO_PREP512(Q5_1)

/* K-quant chunks in 16 lanes: the 32 byte values of the AVX2 helpers widened, V[0] holding
 * elements 0..15 of the chunk (one 16-element sub-block where the type has them), V[1] 16..31;
 * the same per-element operations as the AVX2 dequantizers, so the same values. */
QV_AVX512_INLINE void widen512(__m256i b, bool is_signed, __m512 V[2]) {
    __m128i h[2] = {_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)};
    for (int k = 0; k < 2; k++)
        V[k] =
            _mm512_cvtepi32_ps(is_signed ? _mm512_cvtepi8_epi32(h[k]) : _mm512_cvtepu8_epi32(h[k]));
}

/* scale_ks in 16 lanes: V[k] takes d[k] (pairs: V[0] is one 16-element sub-block, V[1] the
 * next) or d[0]. */
QV_AVX512_INLINE void scale_ks512(__m512 V[2], const float *d, const float *nm, bool pairs) {
    for (int k = 0; k < 2; k++) {
        const int i = pairs ? k : 0;
        __m512 vd = _mm512_set1_ps(d[i]);
        V[k] = nm ? _mm512_fmadd_ps(V[k], vd, _mm512_set1_ps(nm[i])) : _mm512_mul_ps(V[k], vd);
    }
}

QV_AVX512_INLINE void deqk512_Q4_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                                   __m512 V[2]) {
    widen512(q4k_bytes(row, c), false, V);
    scale_ks512(V, ks->d + (c & 7), ks->nm + (c & 7), false);
}

QV_AVX512_INLINE void deqk512_Q5_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                                   __m512 V[2]) {
    widen512(q5k_bytes(row, c), false, V);
    scale_ks512(V, ks->d + (c & 7), ks->nm + (c & 7), false);
}

QV_AVX512_INLINE void deqk512_Q6_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                                   __m512 V[2]) {
    widen512(q6k_bytes(row, c), true, V);
    scale_ks512(V, ks->d + 2 * (c & 7), NULL, true);
}

QV_AVX512_INLINE void deqk512_Q2_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                                   __m512 V[2]) {
    widen512(q2k_bytes(row, c), false, V);
    scale_ks512(V, ks->d + 2 * (c & 7), ks->nm + 2 * (c & 7), true);
}

QV_AVX512_INLINE void deqk512_Q3_K(const uint8_t *row, int64_t c, const struct kscales *ks,
                                   __m512 V[2]) {
    widen512(q3k_bytes(row, c), true, V);
    scale_ks512(V, ks->d + 2 * (c & 7), NULL, true);
}

/* 16 packed IQ4 indices -> the 32 table values times d: the nibbles index a 16-float table. */
QV_AVX512_INLINE void iq4_512(const uint8_t *qs, float d, __m512 V[2]) {
    const __m512 tbl =
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)qv_iq4_values)));
    __m512i a = u8x16(qs);
    __m512 vd = _mm512_set1_ps(d);
    V[0] =
        _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(a, _mm512_set1_epi32(0xF)), tbl), vd);
    V[1] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(a, 4), tbl), vd);
}

QV_AVX512_INLINE void deqk512_IQ4_NL(const uint8_t *row, int64_t c, const struct kscales *ks,
                                     __m512 V[2]) {
    (void)ks;
    const uint8_t *p = row + 18 * c;
    iq4_512(p + 2, f16s(p), V);
}

QV_AVX512_INLINE void deqk512_IQ4_XS(const uint8_t *row, int64_t c, const struct kscales *ks,
                                     __m512 V[2]) {
    int sub = (int)(c & 7);
    iq4_512(row + 136 * (c >> 3) + 8 + 16 * sub, ks->d[sub], V);
}

QV_AVX512_INLINE float hsum16(__m512 v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* The AVX-512 family of DEF_TILE: 16-lane accumulators (up to 16 of the 32 registers). */
#define ATTR_avx512 QV_AVX512
#define KS_avx512 struct kscales
#define PREP_avx512(T) prep_##T
#define VEC_avx512 __m512
#define NV_avx512 2
#define ZERO_avx512 _mm512_setzero_ps
#define LOAD_avx512 _mm512_loadu_ps
#define FMA_avx512 _mm512_fmadd_ps
#define DEQ_avx512(T) deqk512_##T
#define HSUM_avx512 hsum16

/* Main tiles 8x1, 8x2, 4x4, 2x8 (8 to 16 accumulators; row counts divide a job's multiple of
 * 8 rows), plus the single-row tile of each token count. */
#define DEF_TILES_AVX512(ISA, T)                                                                   \
    DEF_TILE(ISA, T, 8, 1)                                                                         \
    DEF_TILE(ISA, T, 1, 1)                                                                         \
    DEF_TILE(ISA, T, 8, 2)                                                                         \
    DEF_TILE(ISA, T, 1, 2)                                                                         \
    DEF_TILE(ISA, T, 4, 4)                                                                         \
    DEF_TILE(ISA, T, 1, 4)                                                                         \
    DEF_TILE(ISA, T, 2, 8)                                                                         \
    DEF_TILE(ISA, T, 1, 8)

FOR_EACH_DTYPE(DEF_TILES_AVX512, avx512)

#define TILE_ROW_AVX512(ISA, T)                                                                    \
    [QV_DTYPE_##T] = {{tile_##ISA##_##T##_8_1, tile_##ISA##_##T##_1_1},                            \
                      {tile_##ISA##_##T##_8_2, tile_##ISA##_##T##_1_2},                            \
                      {tile_##ISA##_##T##_4_4, tile_##ISA##_##T##_1_4},                            \
                      {tile_##ISA##_##T##_2_8, tile_##ISA##_##T##_1_8}},

static const tile_fn avx512_tiles[QV_DTYPE_COUNT][4][2] = {FOR_EACH_DTYPE(TILE_ROW_AVX512, avx512)};
/* Rows of the main tile per log2(token tile). */
static const int avx512_rows[4] = {8, 8, 4, 2};

#endif /* QV_HAVE_X86 */

#if QV_HAVE_NEON

/* ------------------------------------------------------------------------------------------ */
/* NEON kernels (aarch64: Graviton, Ampere, Grace, Apple silicon under Docker): 4-float lanes, */
/* 32 vector registers. Same contract with its own fixed shape: each (row, token) pair owns    */
/* one 4-lane accumulator that receives the chunk's eight FMAs in column order, reduced by     */
/* vaddvq_f32. Bitwise equal to itself for any n, tile and thread count, not to the others.   */
/* The 32-element block types dequantize in registers; the 256-element ones (K-quants, IQ4_XS) */
/* decode a row's super-block once with the reference dequantizer (nprep) and the chunks load  */
/* from it.                                                                                   */
/* ------------------------------------------------------------------------------------------ */

#define QV_NEON_INLINE static inline __attribute__((always_inline))

/* A row's current super-block, dequantized (256-element types only). */
struct nscales {
    float w[256];
};

QV_NEON_INLINE float nf16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return qv_f16_to_f32(h);
}

/* 16 signed bytes -> four 4-float vectors, times d (exact products: the reference values). */
QV_NEON_INLINE void ni8_to_f32(int8x16_t b, float d, float32x4_t *W) {
    int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
    W[0] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), d);
    W[1] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))), d);
    W[2] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), d);
    W[3] = vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))), d);
}

/* 16 unsigned bytes -> four 4-float vectors as fma(q, d, m) (one rounding). */
QV_NEON_INLINE void nu8_affine(uint8x16_t b, float d, float m, float32x4_t *W) {
    uint16x8_t lo = vmovl_u8(vget_low_u8(b)), hi = vmovl_u8(vget_high_u8(b));
    float32x4_t vm = vdupq_n_f32(m);
    W[0] = vfmaq_n_f32(vm, vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), d);
    W[1] = vfmaq_n_f32(vm, vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))), d);
    W[2] = vfmaq_n_f32(vm, vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), d);
    W[3] = vfmaq_n_f32(vm, vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))), d);
}

/* Bits 16h..16h+15 of qh -> 0x10 in bytes 0..15 (the fifth bit of Q5_0/Q5_1). */
QV_NEON_INLINE uint8x16_t nqh_bits(uint32_t qh, int h) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x8_t b0 = vdup_n_u8((uint8_t)(qh >> (16 * h))),
              b1 = vdup_n_u8((uint8_t)(qh >> (16 * h + 8)));
    uint8x16_t set = vtstq_u8(vcombine_u8(b0, b1), vld1q_u8(bit));
    return vandq_u8(set, vdupq_n_u8(0x10));
}

QV_NEON_INLINE void ndeq_F32(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const float *p = (const float *)(const void *)row + 32 * c;
    _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) W[k] = vld1q_f32(p + 4 * k);
}

QV_NEON_INLINE void ndeq_F16(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 64 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(p + 16 * k));
        W[2 * k] = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
        W[2 * k + 1] = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
    }
}

QV_NEON_INLINE void ndeq_BF16(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 64 * c;
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        uint16x8_t h = vld1q_u16((const uint16_t *)(const void *)(p + 16 * k));
        W[2 * k] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
        W[2 * k + 1] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(h), 16));
    }
}

QV_NEON_INLINE void ndeq_Q8_0(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 34 * c;
    float d = nf16(p);
    ni8_to_f32(vld1q_s8((const int8_t *)(p + 2)), d, W);
    ni8_to_f32(vld1q_s8((const int8_t *)(p + 18)), d, W + 4);
}

/* (q - 8) * d as fma(q, d, -8d): -8d is exact, so this is the reference value bit for bit. */
QV_NEON_INLINE void ndeq_Q4_0(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 18 * c;
    float d = nf16(p);
    uint8x16_t q = vld1q_u8(p + 2);
    nu8_affine(vandq_u8(q, vdupq_n_u8(0x0F)), d, -8.0f * d, W);
    nu8_affine(vshrq_n_u8(q, 4), d, -8.0f * d, W + 4);
}

QV_NEON_INLINE void ndeq_Q4_1(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 20 * c;
    float d = nf16(p), m = nf16(p + 2);
    uint8x16_t q = vld1q_u8(p + 4);
    nu8_affine(vandq_u8(q, vdupq_n_u8(0x0F)), d, m, W);
    nu8_affine(vshrq_n_u8(q, 4), d, m, W + 4);
}

/* (q - 16) * d with q the 5-bit value: exact small integers times d. */
QV_NEON_INLINE void ndeq_Q5_0(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 22 * c;
    float d = nf16(p);
    uint32_t qh;
    memcpy(&qh, p + 2, 4);
    uint8x16_t q = vld1q_u8(p + 6), sixteen = vdupq_n_u8(16);
    uint8x16_t lo = vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), nqh_bits(qh, 0));
    uint8x16_t hi = vorrq_u8(vshrq_n_u8(q, 4), nqh_bits(qh, 1));
    ni8_to_f32(vreinterpretq_s8_u8(vsubq_u8(lo, sixteen)), d, W);
    ni8_to_f32(vreinterpretq_s8_u8(vsubq_u8(hi, sixteen)), d, W + 4);
}

QV_NEON_INLINE void ndeq_Q5_1(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 24 * c;
    float d = nf16(p), m = nf16(p + 2);
    uint32_t qh;
    memcpy(&qh, p + 4, 4);
    uint8x16_t q = vld1q_u8(p + 8);
    nu8_affine(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0F)), nqh_bits(qh, 0)), d, m, W);
    nu8_affine(vorrq_u8(vshrq_n_u8(q, 4), nqh_bits(qh, 1)), d, m, W + 4);
}

QV_NEON_INLINE void ndeq_IQ4_NL(const uint8_t *row, int64_t c, float32x4_t W[8]) {
    const uint8_t *p = row + 18 * c;
    float d = nf16(p);
    int8x16_t tbl = vld1q_s8(qv_iq4_values);
    uint8x16_t q = vld1q_u8(p + 2);
    ni8_to_f32(vqtbl1q_s8(tbl, vandq_u8(q, vdupq_n_u8(0x0F))), d, W);
    ni8_to_f32(vqtbl1q_s8(tbl, vshrq_n_u8(q, 4)), d, W + 4);
}

/* The 32-element types: no super-block state. */
#define NEON_NO_PREP(T)                                                                            \
    QV_NEON_INLINE void nprep_##T(const uint8_t *row, int64_t sb, struct nscales *ks) {            \
        (void)row;                                                                                 \
        (void)sb;                                                                                  \
        (void)ks;                                                                                  \
    }                                                                                              \
    QV_NEON_INLINE void ndeqk_##T(const uint8_t *row, int64_t c, const struct nscales *ks,         \
                                  float32x4_t W[8]) {                                              \
        (void)ks;                                                                                  \
        ndeq_##T(row, c, W);                                                                       \
    }
NEON_NO_PREP(F32)
NEON_NO_PREP(F16)
NEON_NO_PREP(BF16)
NEON_NO_PREP(Q8_0)
NEON_NO_PREP(Q4_0)
NEON_NO_PREP(Q4_1)
NEON_NO_PREP(Q5_0)
NEON_NO_PREP(Q5_1)
NEON_NO_PREP(IQ4_NL)

/* The 256-element types: the super-block through the reference dequantizer, chunks from it. */
#define NEON_SUPER(T)                                                                              \
    QV_NEON_INLINE void nprep_##T(const uint8_t *row, int64_t sb, struct nscales *ks) {            \
        size_t bb = qv_dtype_row_bytes(QV_DTYPE_##T, 256);                                         \
        qv_dequantize_row(QV_DTYPE_##T, row + (size_t)sb * bb, ks->w, 256);                        \
    }                                                                                              \
    QV_NEON_INLINE void ndeqk_##T(const uint8_t *row, int64_t c, const struct nscales *ks,         \
                                  float32x4_t W[8]) {                                              \
        (void)row;                                                                                 \
        const float *p = ks->w + 32 * (c & 7);                                                     \
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) W[k] = vld1q_f32(p + 4 * k);           \
    }
NEON_SUPER(Q4_K)
NEON_SUPER(Q6_K)
NEON_SUPER(Q2_K)
NEON_SUPER(Q3_K)
NEON_SUPER(Q5_K)
NEON_SUPER(IQ4_XS)

#define ATTR_neon
#define KS_neon struct nscales
#define PREP_neon(T) nprep_##T
#define VEC_neon float32x4_t
#define NV_neon 8
#define ZERO_neon() vdupq_n_f32(0.0f)
#define LOAD_neon vld1q_f32
#define FMA_neon(w, x, acc) vfmaq_f32(acc, w, x)
#define DEQ_neon(T) ndeqk_##T
#define HSUM_neon vaddvq_f32

FOR_EACH_DTYPE(DEF_TILES_8ACC, neon)

static const tile_fn neon_tiles[QV_DTYPE_COUNT][4][2] = {FOR_EACH_DTYPE(TILE_ROW_8ACC, neon)};

#endif /* QV_HAVE_NEON */

/* ------------------------------------------------------------------------------------------ */
/* Portable kernels: reference dequantization of one block into a stack buffer, then 8 scalar */
/* lanes per (row, token) that the compiler may vectorise.                                     */
/* ------------------------------------------------------------------------------------------ */

static void portable_row(const struct mm_args *a, int64_t r, int t0, int nt) {
    const uint8_t *wr = a->w + (size_t)r * a->row_bytes;
    int unit = QV_MAX(32, qv_dtype_block_elems(a->dtype)); /* 32, or 256 for K-quants */
    size_t unit_bytes = qv_dtype_row_bytes(a->dtype, unit);
    int64_t n_units = (32 * a->n_chunks) / unit;
    float acc[TILE_T_MAX][8];
    float buf[256];
    memset(acc, 0, sizeof acc);
    for (int64_t u = 0; u < n_units; u++) {
        qv_dequantize_row(a->dtype, wr + (size_t)u * unit_bytes, buf, unit);
        for (int t = 0; t < nt; t++) {
            const float *xp = a->x + (size_t)(t0 + t) * (size_t)a->n_cols + (size_t)u * unit;
            float *ac = acc[t];
            for (int l = 0; l < unit; l += 8)
                for (int k = 0; k < 8; k++)
                    ac[k] += buf[l + k] * xp[l + k];
        }
    }
    for (int t = 0; t < nt; t++) {
        const float *ac = acc[t];
        float s = ((ac[0] + ac[1]) + (ac[2] + ac[3])) + ((ac[4] + ac[5]) + (ac[6] + ac[7]));
        const float *xr = a->x + (size_t)(t0 + t) * (size_t)a->n_cols;
        if (a->n_tail) s += tail_dot(a->dtype, wr, xr, 32 * a->n_chunks, a->n_tail);
        if (a->bias) s += a->bias[r];
        a->y[(size_t)(t0 + t) * (size_t)a->n_rows + (size_t)r] = s;
    }
}

/* ------------------------------------------------------------------------------------------ */

static int token_tile(int left) { return left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1; }

struct mm_task {
    struct mm_args *a;
    const tile_fn (*tiles)[4][2]; /* the kernel family's table; NULL: the portable rows */
    const int *rows;              /* its main tile's rows per log2(token tile) */
};

static void mm_task_fn(void *arg, int part, int nth) {
    (void)part;
    (void)nth;
    const struct mm_task *task = arg;
    struct mm_args *a = task->a;
    for (;;) {
        long job = atomic_fetch_add_explicit(&a->next_job, 1, memory_order_relaxed);
        if (job >= a->n_jobs) break;
        int64_t rb = (int64_t)job * a->rows_per_job;
        int64_t re = QV_MIN(rb + a->rows_per_job, a->n_rows);
        for (int t0 = 0; t0 < a->n;) {
            int nt = token_tile(a->n - t0);
            if (task->tiles) {
                int lg = nt == 8 ? 3 : nt == 4 ? 2 : nt == 2 ? 1 : 0;
                int rt = task->rows[lg];
                tile_fn main_fn = task->tiles[a->dtype][lg][0],
                        one_fn = task->tiles[a->dtype][lg][1];
                int64_t r = rb;
                for (; r + rt <= re; r += rt)
                    main_fn(a, r, t0);
                for (; r < re; r++)
                    one_fn(a, r, t0);
                t0 += nt;
                continue;
            }
            for (int64_t r = rb; r < re; r++)
                portable_row(a, r, t0, nt);
            t0 += nt;
        }
    }
}

void qv__cpu_matmul(qv__cpu_ctx *cx, const qv_tensor *w, const float *x, int n, float *y,
                    const float *bias) {
    QV_ASSERT(w && w->data && x && y && n >= 0);
    QV_ASSERT((unsigned)w->dtype < QV_DTYPE_COUNT);
    if (n == 0 || w->n_rows == 0) return;
    int be = qv_dtype_block_elems(w->dtype);
    QV_ASSERT(w->n_cols % be == 0);
    QV_ASSERT(w->row_bytes >= qv_dtype_row_bytes(w->dtype, w->n_cols));
    struct mm_args a = {
        .w = w->data,
        .row_bytes = w->row_bytes,
        .n_rows = w->n_rows,
        .n_cols = w->n_cols,
        .n_chunks = w->n_cols / 32,
        .n_tail = w->n_cols % 32,
        .chunk_bytes = qv_dtype_row_bytes(w->dtype, QV_MAX(32, be)) / (size_t)(QV_MAX(32, be) / 32),
        .dtype = w->dtype,
        .x = x,
        .n = n,
        .y = y,
        .bias = bias,
    };
    /* Quantized rows are whole blocks, so a tail can only exist for float dtypes. */
    QV_ASSERT(a.n_tail == 0 || be == 1);
    /* Jobs of whole 8-row tiles, about 8 per thread so a slow (preempted) thread costs little. */
    int nth = cx->n_threads;
    int64_t rpj = (w->n_rows + (int64_t)nth * 8 - 1) / ((int64_t)nth * 8);
    rpj = (rpj + 7) / 8 * 8;
    rpj = QV_MAX(rpj, 8);
    rpj = QV_MIN(rpj, 256);
    a.rows_per_job = rpj;
    a.n_jobs = (w->n_rows + rpj - 1) / rpj;
    atomic_init(&a.next_job, 0);
    struct mm_task task = {.a = &a};
#if QV_HAVE_X86
    if (cx->matmul_simd == QV_CPU_SIMD_AVX2) {
        task.tiles = avx2_tiles;
        task.rows = rows_8acc;
    }
    if (cx->matmul_simd == QV_CPU_SIMD_AVX512) {
        task.tiles = avx512_tiles;
        task.rows = avx512_rows;
    }
#endif
#if QV_HAVE_NEON
    if (cx->matmul_simd == QV_CPU_SIMD_NEON) {
        task.tiles = neon_tiles;
        task.rows = rows_8acc;
    }
#endif
    if (a.n_jobs == 1 || nth == 1)
        mm_task_fn(&task, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, mm_task_fn, &task);
}
