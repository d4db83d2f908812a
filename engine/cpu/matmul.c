/*
 * matmul.c - y (n, n_rows) = x (n, n_cols) · wᵀ (+ bias) for every weight dtype, fused
 * dequantize-and-dot, fp32 accumulation.
 *
 * Math: y[t, r] = Σ_c w[r, c] · x[t, c]. The weight row is consumed in chunks of 32 elements;
 * each chunk is dequantized into four 8-float registers (never into a matrix-sized buffer)
 * and FMA'd against the activations of up to 8 tokens, so one dequantization serves a whole
 * token tile. Activations are never quantized.
 *
 * Determinism contract (tested): every (row, token) pair owns exactly one 8-lane accumulator
 * that receives, chunk by chunk in column order, the same four FMAs whatever the token-tile
 * size (8/4/2/1), the row-tile size (8/NT or 1) or the thread that runs the row; the lanes are
 * then reduced in one fixed order. Hence y is bitwise identical for any n, any batch
 * composition and any thread count. The portable path keeps the same shape (8 scalar lanes
 * per pair); it is not bitwise equal to the AVX2 path, only to itself. The AVX-512 path (chosen
 * at backend creation where the CPU has it) has its own fixed shape: 16 lanes per pair, two
 * FMAs per chunk; bitwise equal to itself, not to the other two.
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

QV_AVX2_INLINE void deq_Q4_K(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 144 * (c >> 3);
    int sub = (int)(c & 7);
    const uint8_t *sc = p + 4;
    int s, m;
    if (sub < 4) {
        s = sc[sub] & 63;
        m = sc[sub + 4] & 63;
    } else {
        s = (sc[sub + 4] & 0xF) | ((sc[sub - 4] >> 6) << 4);
        m = (sc[sub + 4] >> 4) | ((sc[sub] >> 6) << 4);
    }
    float d1 = f16s(p) * (float)s, m1 = f16s(p + 2) * (float)m;
    const uint8_t *q = p + 16 + 32 * (sub >> 1);
    __m128i sh = _mm_cvtsi32_si128(4 * (sub & 1));
    __m256i m4 = _mm256_set1_epi32(0xF);
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * k)));
        W[k] = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srl_epi32(v, sh), m4));
    }
    affine4(W, d1, -m1);
}

QV_AVX2_INLINE void deq_Q6_K(const uint8_t *row, int64_t c, __m256 W[4]) {
    const uint8_t *p = row + 210 * (c >> 3);
    int sub = (int)(c & 7), h = sub >> 2, g = sub & 3;
    __m256i ql = _mm256_loadu_si256((const __m256i *)(p + 64 * h + 32 * (g & 1)));
    if (g >> 1) ql = _mm256_srli_epi16(ql, 4);
    ql = _mm256_and_si256(ql, _mm256_set1_epi8(0x0F));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(p + 128 + 32 * h));
    qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g));
    qh = _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(3)), 4);
    __m256i v = _mm256_sub_epi8(_mm256_or_si256(ql, qh), _mm256_set1_epi8(32));
    i8_to_f32(v, W);
    const int8_t *scl = (const int8_t *)(p + 192) + 8 * h + 2 * g;
    float d = f16s(p + 208);
    __m256 s0 = _mm256_set1_ps(d * (float)scl[0]), s1 = _mm256_set1_ps(d * (float)scl[1]);
    W[0] = _mm256_mul_ps(W[0], s0);
    W[1] = _mm256_mul_ps(W[1], s0);
    W[2] = _mm256_mul_ps(W[2], s1);
    W[3] = _mm256_mul_ps(W[3], s1);
}

QV_AVX2_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Software prefetch distance: the same column of the row PF_ROWS rows below, i.e. the next
 * 8-row tile (computed as an integer: it may point past the matrix, harmless for a prefetch). Rows
 * of a tile are read as 8 interleaved streams, which the hardware prefetchers of the test machines
 * follow poorly (Q8_0 n = 1 ran at ~7 GB/s from DRAM, 27 GB/s hot). */
#define PF_ROWS 8

typedef void (*tile_fn)(const struct mm_args *a, int64_t r0, int t0);

/* One tile of RT rows x NT tokens for the kernel family ISA; see the determinism contract at
 * the top of the file. A family supplies ATTR_<ISA> (target attribute), VEC_<ISA> (vector
 * type), NV_<ISA> (vectors per 32-element chunk), ZERO_/LOAD_/FMA_<ISA> (intrinsics),
 * DEQ_<ISA>(T) (the chunk dequantizer of dtype T) and HSUM_<ISA> (the fixed-order lane sum).
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
        for (int64_t c = 0; c < a->n_chunks; c++) {                                                \
            _Pragma("GCC unroll 8") for (int r = 0; r < RT; r++) {                                 \
                VEC_##ISA W[NV_##ISA];                                                             \
                _mm_prefetch((const char *)((uintptr_t)wr[r] + pf_dist + (size_t)c * chunk_bytes), \
                             _MM_HINT_T0);                                                         \
                DEQ_##ISA(T)(wr[r], c, W);                                                         \
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

#define ATTR_avx2 QV_AVX2
#define VEC_avx2 __m256
#define NV_avx2 4
#define ZERO_avx2 _mm256_setzero_ps
#define LOAD_avx2 _mm256_loadu_ps
#define FMA_avx2 _mm256_fmadd_ps
#define DEQ_avx2(T) deq_##T
#define HSUM_avx2 hsum8
#define DEF_TILE_AVX2(T, RT, NT) DEF_TILE(avx2, T, RT, NT)

#define DEF_TILES_AVX2(T)                                                                          \
    DEF_TILE_AVX2(T, 8, 1)                                                                         \
    DEF_TILE_AVX2(T, 1, 1)                                                                         \
    DEF_TILE_AVX2(T, 4, 2)                                                                         \
    DEF_TILE_AVX2(T, 1, 2)                                                                         \
    DEF_TILE_AVX2(T, 2, 4)                                                                         \
    DEF_TILE_AVX2(T, 1, 4)                                                                         \
    DEF_TILE_AVX2(T, 1, 8)

DEF_TILES_AVX2(F32)
DEF_TILES_AVX2(F16)
DEF_TILES_AVX2(BF16)
DEF_TILES_AVX2(Q8_0)
DEF_TILES_AVX2(Q4_0)
DEF_TILES_AVX2(Q4_1)
DEF_TILES_AVX2(Q5_0)
DEF_TILES_AVX2(Q5_1)
DEF_TILES_AVX2(Q4_K)
DEF_TILES_AVX2(Q6_K)

/* [dtype][log2 NT][0 = main row tile of 8/NT rows, 1 = single row] */
#define TILE_ROW_AVX2(T)                                                                           \
    [QV_DTYPE_##T] = {{tile_avx2_##T##_8_1, tile_avx2_##T##_1_1},                                  \
                      {tile_avx2_##T##_4_2, tile_avx2_##T##_1_2},                                  \
                      {tile_avx2_##T##_2_4, tile_avx2_##T##_1_4},                                  \
                      {tile_avx2_##T##_1_8, tile_avx2_##T##_1_8}}

static const tile_fn avx2_tiles[QV_DTYPE_COUNT][4][2] = {
    TILE_ROW_AVX2(F32),  TILE_ROW_AVX2(F16),  TILE_ROW_AVX2(BF16), TILE_ROW_AVX2(Q8_0),
    TILE_ROW_AVX2(Q4_0), TILE_ROW_AVX2(Q4_1), TILE_ROW_AVX2(Q5_0), TILE_ROW_AVX2(Q5_1),
    TILE_ROW_AVX2(Q4_K), TILE_ROW_AVX2(Q6_K),
};

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

/* Two AVX2 halves (elements 0..15 and 16..31) as 16-float vectors: for the dtypes without a
 * native 512-bit dequantization (the values are those of the AVX2 path). */
QV_AVX512_INLINE void join4(const __m256 W[4], __m512 V[2]) {
    V[0] = _mm512_insertf32x8(_mm512_castps256_ps512(W[0]), W[1], 1);
    V[1] = _mm512_insertf32x8(_mm512_castps256_ps512(W[2]), W[3], 1);
}

#define DEQ512_VIA_AVX2(T)                                                                         \
    QV_AVX512_INLINE void deq512_##T(const uint8_t *row, int64_t c, __m512 V[2]) {                 \
        __m256 W[4];                                                                               \
        deq_##T(row, c, W);                                                                        \
        join4(W, V);                                                                               \
    }
DEQ512_VIA_AVX2(Q5_0)
DEQ512_VIA_AVX2(Q5_1)
DEQ512_VIA_AVX2(Q4_K)
DEQ512_VIA_AVX2(Q6_K)

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

/* 16 packed bytes -> the 32 nibble values: low nibbles are elements 0..15, high 16..31. */
QV_AVX512_INLINE void nibbles512(const uint8_t *qs, __m512 V[2]) {
    __m512i a = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)qs));
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

QV_AVX512_INLINE float hsum16(__m512 v) {
    return hsum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* The AVX-512 family of DEF_TILE: 16-lane accumulators (up to 16 of the 32 registers). */
#define ATTR_avx512 QV_AVX512
#define VEC_avx512 __m512
#define NV_avx512 2
#define ZERO_avx512 _mm512_setzero_ps
#define LOAD_avx512 _mm512_loadu_ps
#define FMA_avx512 _mm512_fmadd_ps
#define DEQ_avx512(T) deq512_##T
#define HSUM_avx512 hsum16
#define DEF_TILE_AVX512(T, RT, NT) DEF_TILE(avx512, T, RT, NT)

/* Main tiles 8x1, 8x2, 4x4, 2x8 (8 to 16 accumulators; row counts divide a job's multiple of
 * 8 rows), plus the single-row tile of each token count. */
#define DEF_TILES_AVX512(T)                                                                        \
    DEF_TILE_AVX512(T, 8, 1)                                                                       \
    DEF_TILE_AVX512(T, 1, 1)                                                                       \
    DEF_TILE_AVX512(T, 8, 2)                                                                       \
    DEF_TILE_AVX512(T, 1, 2)                                                                       \
    DEF_TILE_AVX512(T, 4, 4)                                                                       \
    DEF_TILE_AVX512(T, 1, 4)                                                                       \
    DEF_TILE_AVX512(T, 2, 8)                                                                       \
    DEF_TILE_AVX512(T, 1, 8)

DEF_TILES_AVX512(F32)
DEF_TILES_AVX512(F16)
DEF_TILES_AVX512(BF16)
DEF_TILES_AVX512(Q8_0)
DEF_TILES_AVX512(Q4_0)
DEF_TILES_AVX512(Q4_1)
DEF_TILES_AVX512(Q5_0)
DEF_TILES_AVX512(Q5_1)
DEF_TILES_AVX512(Q4_K)
DEF_TILES_AVX512(Q6_K)

#define TILE_ROW_AVX512(T)                                                                         \
    [QV_DTYPE_##T] = {{tile_avx512_##T##_8_1, tile_avx512_##T##_1_1},                              \
                      {tile_avx512_##T##_8_2, tile_avx512_##T##_1_2},                              \
                      {tile_avx512_##T##_4_4, tile_avx512_##T##_1_4},                              \
                      {tile_avx512_##T##_2_8, tile_avx512_##T##_1_8}}

static const tile_fn avx512_tiles[QV_DTYPE_COUNT][4][2] = {
    TILE_ROW_AVX512(F32),  TILE_ROW_AVX512(F16),  TILE_ROW_AVX512(BF16), TILE_ROW_AVX512(Q8_0),
    TILE_ROW_AVX512(Q4_0), TILE_ROW_AVX512(Q4_1), TILE_ROW_AVX512(Q5_0), TILE_ROW_AVX512(Q5_1),
    TILE_ROW_AVX512(Q4_K), TILE_ROW_AVX512(Q6_K),
};

/* Rows of the main tile per log2(token tile), for each path. */
static const int avx2_rows[4] = {8, 4, 2, 1};
static const int avx512_rows[4] = {8, 8, 4, 2};

#endif /* QV_HAVE_X86 */

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
    enum qv__cpu_simd simd;
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
#if QV_HAVE_X86
            if (task->simd != QV_CPU_SIMD_NONE) {
                int lg = nt == 8 ? 3 : nt == 4 ? 2 : nt == 2 ? 1 : 0;
                bool wide = task->simd == QV_CPU_SIMD_AVX512;
                int rt = wide ? avx512_rows[lg] : avx2_rows[lg];
                tile_fn main_fn = (wide ? avx512_tiles : avx2_tiles)[a->dtype][lg][0];
                tile_fn one_fn = (wide ? avx512_tiles : avx2_tiles)[a->dtype][lg][1];
                int64_t r = rb;
                for (; r + rt <= re; r += rt)
                    main_fn(a, r, t0);
                for (; r < re; r++)
                    one_fn(a, r, t0);
                t0 += nt;
                continue;
            }
#endif
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
    struct mm_task task = {.a = &a, .simd = cx->matmul_simd};
    if (a.n_jobs == 1 || nth == 1)
        mm_task_fn(&task, 0, 1);
    else
        qv__cpu_pool_run(cx->pool, mm_task_fn, &task);
}
