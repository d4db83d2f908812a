/*
 * test_cpu_ops.c - the CPU backend's ops against naive double-precision references built on
 * qv_dequantize_row (the scalar reference dequantizer), on the portable kernels (QV_CPU_SIMD=0),
 * the AVX2 ones and, for the matmul, the AVX-512 and NEON ones (where the CPU has them), plus the
 * bitwise contracts: a matmul row of token t is identical whether t is alone or inside a batch of
 * any size, and for any thread count.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "cpu/cpu_internal.h"
#include "test_util.h"

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint64_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}
static float rng_unit(void) { return (float)(rng_next() >> 40) / (float)(1 << 24); } /* [0,1) */
static float rng_sym(void) { return 2.0f * rng_unit() - 1.0f; }

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFF);
    p[1] = (uint8_t)(v >> 8);
}

/* A random but valid weight matrix: random bytes with sane f16 scales (and random floats for
 * the float dtypes). Owner: the caller (free). */
static uint8_t *make_weights(enum qv_dtype dt, int64_t rows, int64_t cols, size_t *row_bytes) {
    size_t rb = qv_dtype_row_bytes(dt, cols);
    uint8_t *w = malloc(rb * (size_t)rows + 64);
    assert_non_null(w);
    for (size_t i = 0; i < rb * (size_t)rows; i++)
        w[i] = (uint8_t)(rng_next() >> 33);
    int bb = qv_dtype_block_bytes(dt);
    size_t n_blocks = rb * (size_t)rows / (size_t)bb;
    for (size_t b = 0; b < n_blocks; b++) {
        uint8_t *p = w + b * (size_t)bb;
        uint16_t d = qv_f32_to_f16(0.002f + 0.02f * rng_unit());
        uint16_t m = qv_f32_to_f16(0.2f * rng_sym());
        switch (dt) {
        case QV_DTYPE_F32: {
            float f = rng_sym();
            memcpy(p, &f, 4);
            break;
        }
        case QV_DTYPE_F16: put16(p, qv_f32_to_f16(rng_sym())); break;
        case QV_DTYPE_BF16: put16(p, qv_f32_to_bf16(rng_sym())); break;
        case QV_DTYPE_Q8_0:
        case QV_DTYPE_Q4_0:
        case QV_DTYPE_Q5_0:
        case QV_DTYPE_IQ4_NL: put16(p, d); break;
        case QV_DTYPE_IQ4_XS: put16(p, qv_f32_to_f16(0.0005f + 0.002f * rng_unit())); break;
        case QV_DTYPE_Q4_1:
        case QV_DTYPE_Q5_1: put16(p, d), put16(p + 2, m); break;
        case QV_DTYPE_Q4_K:
        case QV_DTYPE_Q5_K:
            put16(p, qv_f32_to_f16(0.002f + 0.01f * rng_unit()));
            put16(p + 2, qv_f32_to_f16(0.002f + 0.01f * rng_unit()));
            break;
        case QV_DTYPE_Q6_K: put16(p + 208, qv_f32_to_f16(0.0005f + 0.002f * rng_unit())); break;
        case QV_DTYPE_Q2_K:
            put16(p + 80, qv_f32_to_f16(0.002f + 0.01f * rng_unit()));
            put16(p + 82, qv_f32_to_f16(0.002f + 0.01f * rng_unit()));
            break;
        case QV_DTYPE_Q3_K: put16(p + 108, qv_f32_to_f16(0.001f + 0.004f * rng_unit())); break;
        case QV_DTYPE_COUNT: fail();
        }
    }
    *row_bytes = rb;
    return w;
}

static float *make_acts(size_t n) {
    float *x = malloc(n * sizeof(float) + 4);
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_sym();
    return x;
}

/* A backend whose matmul runs the kernels of `level`: QV_CPU_SIMD_NONE (portable),
 * QV_CPU_SIMD_AVX2 or QV_CPU_SIMD_AVX512 (the caller checks that the CPU has them). Other ops
 * use AVX2 unless the level is NONE. */
static qv_backend *make_backend_level(int n_threads, enum qv__cpu_simd level) {
    qv_backend *be = NULL;
    qv_error err = {0};
    setenv("QV_CPU_SIMD",
           level == QV_CPU_SIMD_NONE   ? "0"
           : level == QV_CPU_SIMD_AVX2 ? "avx2"
                                       : "",
           1);
    qv_status st = qv_backend_cpu_create(n_threads, &be, &err);
    unsetenv("QV_CPU_SIMD");
    if (st != QV_OK) fprintf(stderr, "cpu create: %s\n", err.msg);
    assert_int_equal(st, QV_OK);
    assert_non_null(be);
    assert_int_equal(((qv__cpu_ctx *)be->ctx)->matmul_simd, level);
    return be;
}

static enum qv__cpu_simd avx2_or_none(void) {
    return qv__cpu_has_avx2() ? QV_CPU_SIMD_AVX2 : QV_CPU_SIMD_NONE;
}

/* simd: the CPU's AVX2 kernels (portable where it has none); else the portable ones. */
static qv_backend *make_backend(int n_threads, bool simd) {
    return make_backend_level(n_threads, simd ? avx2_or_none() : QV_CPU_SIMD_NONE);
}

/* False (with a note) when the CPU lacks the level's instructions. */
static bool level_available(enum qv__cpu_simd level) {
    bool ok = level == QV_CPU_SIMD_NONE || (level == QV_CPU_SIMD_AVX2 && qv__cpu_has_avx2()) ||
              (level == QV_CPU_SIMD_AVX512 && qv__cpu_has_avx512()) ||
              (level == QV_CPU_SIMD_NEON && qv__cpu_has_neon());
    if (!ok)
        fprintf(stderr, "note: this CPU has no %s: those kernels not run\n",
                qv__cpu_simd_name(level));
    return ok;
}

/* ---- matmul vs reference ---- */

static const enum qv_dtype all_dtypes[] = {
    QV_DTYPE_F32,  QV_DTYPE_F16,  QV_DTYPE_BF16, QV_DTYPE_Q8_0,   QV_DTYPE_Q4_0,
    QV_DTYPE_Q4_1, QV_DTYPE_Q5_0, QV_DTYPE_Q5_1, QV_DTYPE_Q4_K,   QV_DTYPE_Q6_K,
    QV_DTYPE_Q2_K, QV_DTYPE_Q3_K, QV_DTYPE_Q5_K, QV_DTYPE_IQ4_NL, QV_DTYPE_IQ4_XS,
};

struct shape {
    int64_t rows, cols;
};

#define MAX_N 33
static const int ns[] = {1, 2, 3, 5, 8, 9, 17, 33};

/* Runs every n of `ns` on one (dtype, shape) and compares with the double reference.
 * Tolerance: fp32 accumulation error is bounded by ~cols * eps * Σ|w x|; we ask for
 * 2e-6 of the row's Σ|w x| (random-sign sums are ~sqrt(cols) smaller than Σ|w x|, so the
 * typical relative error seen is ~1e-7; a wrong nibble, scale or block order gives O(1)). */
static void check_matmul_shape(qv_backend *be, enum qv_dtype dt, struct shape sh,
                               const char *path) {
    size_t rb;
    uint8_t *wd = make_weights(dt, sh.rows, sh.cols, &rb);
    qv_tensor w = {.dtype = dt, .n_rows = sh.rows, .n_cols = sh.cols, .row_bytes = rb, .data = wd};
    float *wf = malloc((size_t)(sh.rows * sh.cols) * sizeof(float));
    for (int64_t r = 0; r < sh.rows; r++)
        qv_dequantize_row(dt, wd + (size_t)r * rb, wf + r * sh.cols, sh.cols);
    float *x = make_acts((size_t)(MAX_N * sh.cols));
    float *bias = make_acts((size_t)sh.rows);
    float *want = malloc((size_t)(MAX_N * sh.rows) * sizeof(float));
    float *want_b = malloc((size_t)(MAX_N * sh.rows) * sizeof(float));
    double max_abs = 0.0;
    for (int t = 0; t < MAX_N; t++)
        for (int64_t r = 0; r < sh.rows; r++) {
            double s = 0.0, sa = 0.0;
            for (int64_t c = 0; c < sh.cols; c++) {
                double p = (double)wf[r * sh.cols + c] * (double)x[t * sh.cols + c];
                s += p;
                sa += fabs(p);
            }
            want[t * sh.rows + r] = (float)s;
            want_b[t * sh.rows + r] = (float)(s + (double)bias[r]);
            max_abs = fmax(max_abs, sa);
        }
    float *y = malloc((size_t)(MAX_N * sh.rows) * sizeof(float));
    for (size_t k = 0; k < QV_ARRAY_LEN(ns); k++) {
        int n = ns[k];
        bool with_bias = (k & 1) != 0;
        for (int i = 0; i < n * sh.rows; i++)
            y[i] = NAN;
        be->iface->matmul(be, &w, x, n, y, with_bias ? bias : NULL);
        char label[128];
        snprintf(label, sizeof label, "matmul %s %s %lldx%lld n=%d%s", path, qv_dtype_name(dt),
                 (long long)sh.rows, (long long)sh.cols, n, with_bias ? " +bias" : "");
        size_t bad = qv_test_compare_f32(label, y, with_bias ? want_b : want, (size_t)(n * sh.rows),
                                         2e-6 * max_abs, 0.0);
        assert_int_equal(bad, 0);
    }
    free(y);
    free(want_b);
    free(want);
    free(bias);
    free(x);
    free(wf);
    free(wd);
}

static void matmul_all(enum qv__cpu_simd level) {
    static const struct shape blk32_shapes[] = {
        {576, 576}, {192, 576}, {1536, 576}, {576, 1536}, {37, 96}};
    static const struct shape float_extra[] = {{37, 45}, {5, 7}};
    static const struct shape k_shapes[] = {{576, 1536}, {37, 512}};
    if (!level_available(level)) return;
    qv_backend *be = make_backend_level(2, level);
    const char *path = qv__cpu_simd_name(level);
    for (size_t d = 0; d < QV_ARRAY_LEN(all_dtypes); d++) {
        enum qv_dtype dt = all_dtypes[d];
        if (qv_dtype_block_elems(dt) == 256) {
            for (size_t s = 0; s < QV_ARRAY_LEN(k_shapes); s++)
                check_matmul_shape(be, dt, k_shapes[s], path);
        } else {
            for (size_t s = 0; s < QV_ARRAY_LEN(blk32_shapes); s++)
                check_matmul_shape(be, dt, blk32_shapes[s], path);
            if (qv_dtype_block_elems(dt) == 1)
                for (size_t s = 0; s < QV_ARRAY_LEN(float_extra); s++)
                    check_matmul_shape(be, dt, float_extra[s], path);
        }
    }
    be->iface->destroy(be);
}

static void test_matmul_avx512(void **state) {
    (void)state;
    matmul_all(QV_CPU_SIMD_AVX512);
}
static void test_matmul_avx2(void **state) {
    (void)state;
    matmul_all(QV_CPU_SIMD_AVX2);
}
static void test_matmul_neon(void **state) {
    (void)state;
    matmul_all(QV_CPU_SIMD_NEON);
}
static void test_matmul_portable(void **state) {
    (void)state;
    matmul_all(QV_CPU_SIMD_NONE);
}

/* ---- bitwise batch and thread-count invariance ---- */

static void invariance(enum qv__cpu_simd level) {
    if (!level_available(level)) return;
    qv_backend *be1 = make_backend_level(1, level), *be2 = make_backend_level(2, level),
               *be3 = make_backend_level(3, level);
    for (size_t d = 0; d < QV_ARRAY_LEN(all_dtypes); d++) {
        enum qv_dtype dt = all_dtypes[d];
        /* ragged row count: row tiles and thread jobs end mid-tile */
        struct shape sh = qv_dtype_block_elems(dt) == 256 ? (struct shape){203, 512}
                          : qv_dtype_block_elems(dt) == 1 ? (struct shape){203, 200}
                                                          : (struct shape){203, 576};
        size_t rb;
        uint8_t *wd = make_weights(dt, sh.rows, sh.cols, &rb);
        qv_tensor w = {
            .dtype = dt, .n_rows = sh.rows, .n_cols = sh.cols, .row_bytes = rb, .data = wd};
        float *x = make_acts((size_t)(MAX_N * sh.cols));
        float *bias = make_acts((size_t)sh.rows);
        size_t ny = (size_t)(MAX_N * sh.rows);
        float *y33 = malloc(ny * sizeof(float)), *yb = malloc(ny * sizeof(float));
        be2->iface->matmul(be2, &w, x, MAX_N, y33, bias);
        /* every token alone */
        for (int t = 0; t < MAX_N; t++) {
            be2->iface->matmul(be2, &w, x + t * sh.cols, 1, yb, bias);
            if (memcmp(yb, y33 + t * sh.rows, (size_t)sh.rows * sizeof(float)) != 0) {
                fprintf(stderr, "%s %s: token %d alone differs from batch of 33\n",
                        qv__cpu_simd_name(level), qv_dtype_name(dt), t);
                fail();
            }
        }
        /* sub-batches with every tile mix, at different offsets */
        for (size_t k = 0; k < QV_ARRAY_LEN(ns); k++) {
            int n = ns[k], off = (int)(k % 3);
            if (off + n > MAX_N) off = 0;
            be2->iface->matmul(be2, &w, x + off * sh.cols, n, yb, bias);
            assert_memory_equal(yb, y33 + off * sh.rows, (size_t)(n * sh.rows) * sizeof(float));
        }
        /* thread counts */
        be1->iface->matmul(be1, &w, x, MAX_N, yb, bias);
        assert_memory_equal(yb, y33, ny * sizeof(float));
        be3->iface->matmul(be3, &w, x, MAX_N, yb, bias);
        assert_memory_equal(yb, y33, ny * sizeof(float));
        free(yb);
        free(y33);
        free(bias);
        free(x);
        free(wd);
    }
    be1->iface->destroy(be1);
    be2->iface->destroy(be2);
    be3->iface->destroy(be3);
}

static void test_invariance_avx512(void **state) {
    (void)state;
    invariance(QV_CPU_SIMD_AVX512);
}
static void test_invariance_avx2(void **state) {
    (void)state;
    invariance(QV_CPU_SIMD_AVX2);
}
static void test_invariance_neon(void **state) {
    (void)state;
    invariance(QV_CPU_SIMD_NEON);
}
static void test_invariance_portable(void **state) {
    (void)state;
    invariance(QV_CPU_SIMD_NONE);
}

/* ---- small ops ---- */

/* Rows further apart than their packed size (row_bytes > packed), and n = 0 (a no-op). */
static void test_matmul_padded_rows(void **state) {
    (void)state;
    for (int lv = QV_CPU_SIMD_NONE; lv <= QV_CPU_SIMD_AVX512; lv++) {
        if (!level_available((enum qv__cpu_simd)lv)) continue;
        qv_backend *be = make_backend_level(2, (enum qv__cpu_simd)lv);
        for (size_t d = 0; d < QV_ARRAY_LEN(all_dtypes); d++) {
            enum qv_dtype dt = all_dtypes[d];
            int64_t rows = 77, cols = 512;
            size_t rb;
            uint8_t *packed = make_weights(dt, rows, cols, &rb);
            size_t pad = rb + 40; /* odd padding: unaligned row starts */
            uint8_t *wd = malloc(pad * (size_t)rows);
            memset(wd, 0xFF, pad * (size_t)rows); /* garbage in the gaps */
            for (int64_t r = 0; r < rows; r++)
                memcpy(wd + (size_t)r * pad, packed + (size_t)r * rb, rb);
            qv_tensor wp = {
                .dtype = dt, .n_rows = rows, .n_cols = cols, .row_bytes = pad, .data = wd};
            qv_tensor wq = {
                .dtype = dt, .n_rows = rows, .n_cols = cols, .row_bytes = rb, .data = packed};
            float *x = make_acts((size_t)(5 * cols));
            float y1[5 * 77], y2[5 * 77];
            be->iface->matmul(be, &wp, x, 5, y1, NULL);
            be->iface->matmul(be, &wq, x, 5, y2, NULL);
            assert_memory_equal(y1, y2, sizeof y1);
            y1[0] = 42.0f;
            be->iface->matmul(be, &wp, x, 0, y1, NULL);
            assert_true(y1[0] == 42.0f);
            free(x);
            free(wd);
            free(packed);
        }
        be->iface->destroy(be);
    }
}

static void test_get_rows(void **state) {
    (void)state;
    qv_backend *be = make_backend(2, true);
    for (size_t d = 0; d < QV_ARRAY_LEN(all_dtypes); d++) {
        enum qv_dtype dt = all_dtypes[d];
        int64_t cols = 512, rows = 9;
        size_t rb;
        uint8_t *wd = make_weights(dt, rows, cols, &rb);
        qv_tensor tb = {.dtype = dt, .n_rows = rows, .n_cols = cols, .row_bytes = rb, .data = wd};
        int32_t ids[4] = {8, 0, 3, 8};
        float out[4 * 512], want[512];
        be->iface->get_rows(be, &tb, ids, 4, out);
        for (int i = 0; i < 4; i++) {
            qv_dequantize_row(dt, wd + (size_t)ids[i] * rb, want, cols);
            assert_memory_equal(out + i * cols, want, sizeof want);
        }
        free(wd);
    }
    be->iface->destroy(be);
}

static void test_rmsnorm(void **state) {
    (void)state;
    for (int simd = 0; simd < 2; simd++) {
        qv_backend *be = make_backend(2, simd);
        int n = 70, dim = 576; /* large enough to run on the pool */
        float eps = 1e-5f;
        float *x = make_acts((size_t)(n * dim)), *w = make_acts((size_t)dim);
        float *y = malloc((size_t)(n * dim) * sizeof(float));
        float *want = malloc((size_t)(n * dim) * sizeof(float));
        for (int i = 0; i < n * dim; i++)
            x[i] *= (float)(1 + i / dim); /* rows of different scale */
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int i = 0; i < dim; i++)
                ss += (double)x[r * dim + i] * (double)x[r * dim + i];
            double inv = 1.0 / sqrt(ss / dim + (double)eps);
            for (int i = 0; i < dim; i++)
                want[r * dim + i] = (float)((double)w[i] * (double)x[r * dim + i] * inv);
        }
        be->iface->rmsnorm(be, x, w, n, dim, eps, y);
        assert_int_equal(qv_test_compare_f32("rmsnorm", y, want, (size_t)(n * dim), 1e-6, 1e-6), 0);
        be->iface->rmsnorm(be, x, w, 1, dim, eps, x); /* in place, one row */
        assert_memory_equal(x, y, (size_t)dim * sizeof(float));
        free(want);
        free(y);
        free(w);
        free(x);
        be->iface->destroy(be);
    }
}

static void test_rope(void **state) {
    (void)state;
    qv_backend *be = make_backend(2, true);
    int n = 40, nh = 9, hd = 64;
    float inv_freq[32];
    for (int i = 0; i < hd / 2; i++)
        inv_freq[i] = (float)(1.0 / pow(100000.0, 2.0 * i / hd));
    int32_t pos[40];
    for (int i = 0; i < n; i++)
        pos[i] = i < 20 ? i : 1000 + 37 * i;
    float *x = make_acts((size_t)(n * nh * hd));
    float *want = malloc((size_t)(n * nh * hd) * sizeof(float));
    for (int t = 0; t < n; t++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd / 2; i++) {
                float ang = (float)pos[t] * inv_freq[i]; /* HF: fp32 angle */
                double c = cos((double)ang), s = sin((double)ang);
                const float *v = x + (t * nh + h) * hd;
                want[(t * nh + h) * hd + i] = (float)((double)v[i] * c - (double)v[i + hd / 2] * s);
                want[(t * nh + h) * hd + i + hd / 2] =
                    (float)((double)v[i + hd / 2] * c + (double)v[i] * s);
            }
    be->iface->rope(be, x, n, nh, hd, pos, inv_freq);
    assert_int_equal(qv_test_compare_f32("rope", x, want, (size_t)(n * nh * hd), 1e-6, 1e-6), 0);
    free(want);
    free(x);
    be->iface->destroy(be);
}

static void test_swiglu_add(void **state) {
    (void)state;
    qv_backend *be = make_backend(2, true);
    size_t n = 70000; /* above the parallel threshold */
    float *g = make_acts(n), *u = make_acts(n), *out = malloc(n * sizeof(float));
    float *want = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        g[i] *= 12.0f;
    for (size_t i = 0; i < n; i++)
        want[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * (double)u[i]);
    be->iface->swiglu(be, g, u, out, n);
    assert_int_equal(qv_test_compare_f32("swiglu", out, want, n, 1e-7, 1e-6), 0);
    be->iface->swiglu(be, g, u, g, 5); /* out aliases gate */
    assert_memory_equal(g, out, 5 * sizeof(float));
    for (size_t i = 0; i < n; i++)
        want[i] = out[i] + u[i];
    be->iface->add(be, out, u, n);
    assert_memory_equal(out, want, n * sizeof(float));
    size_t big = 300000;
    float *a = make_acts(big), *b = make_acts(big), *wb = malloc(big * sizeof(float));
    for (size_t i = 0; i < big; i++)
        wb[i] = a[i] + b[i];
    be->iface->add(be, a, b, big);
    assert_memory_equal(a, wb, big * sizeof(float));
    free(wb);
    free(b);
    free(a);
    free(want);
    free(out);
    free(u);
    free(g);
    be->iface->destroy(be);
}

static void test_alloc(void **state) {
    (void)state;
    qv_backend *be = make_backend(1, true);
    for (size_t n = 1; n < 5000; n = n * 3 + 1) {
        unsigned char *p = be->iface->alloc(be, n);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 64, 0);
        memset(p, 0xAB, n);
        be->iface->free(be, p);
    }
    be->iface->free(be, NULL);
    be->iface->destroy(be);
}

/* ---- paged attention vs dense reference ---- */

#define A_LAYERS 2
#define A_PAGES 24
#define A_PAGE 4
#define A_NKV 2
#define A_HD_MAX 128
#define A_NSEQ 3
#define A_MAXLEN 80 /* > 2 x 32 keys: several blocks of the weighted sum */

struct attn_fixture {
    int hd; /* head_dim of this case */
    qv_kv_pool pool;
    int seq_len[A_NSEQ];
    int32_t pages[A_NSEQ][A_MAXLEN / A_PAGE + 1];
    const int32_t *pt[A_NSEQ];
    float dk[A_NSEQ][A_MAXLEN][A_NKV * A_HD_MAX]; /* dense copies for the reference (layer 1) */
    float dv[A_NSEQ][A_MAXLEN][A_NKV * A_HD_MAX];
};

static void attn_setup(qv_backend *be, struct attn_fixture *f, int hd) {
    memset(f, 0, sizeof *f);
    f->hd = hd;
    f->pool = (qv_kv_pool){.n_layers = A_LAYERS,
                           .n_pages = A_PAGES,
                           .page_size = A_PAGE,
                           .n_kv_heads = A_NKV,
                           .head_dim = hd};
    size_t n = (size_t)A_LAYERS * A_PAGES * A_PAGE * A_NKV * (size_t)hd;
    f->pool.k = be->iface->alloc(be, n * sizeof(float));
    f->pool.v = be->iface->alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        f->pool.k[i] = f->pool.v[i] = NAN; /* unused slots poison */
    int perm[A_PAGES];
    for (int i = 0; i < A_PAGES; i++)
        perm[i] = i;
    for (int i = A_PAGES - 1; i > 0; i--) { /* shuffled, non-contiguous pages */
        int j = (int)(rng_next() % (uint64_t)(i + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int lens[A_NSEQ] = {77, 6, 1};
    int next = 0;
    for (int s = 0; s < A_NSEQ; s++) {
        f->seq_len[s] = lens[s];
        for (int p = 0; p < (lens[s] + A_PAGE - 1) / A_PAGE; p++)
            f->pages[s][p] = perm[next++];
        f->pt[s] = f->pages[s];
        for (int layer = 0; layer < A_LAYERS; layer++) {
            /* store in two chunks (prefill then the rest) to exercise kv_store offsets */
            for (int j = 0; j < lens[s]; j++) {
                float k[A_NKV * A_HD_MAX], v[A_NKV * A_HD_MAX];
                for (int i = 0; i < A_NKV * hd; i++)
                    k[i] = rng_sym(), v[i] = rng_sym();
                int32_t sp = f->pages[s][j / A_PAGE], so = j % A_PAGE;
                be->iface->kv_store(be, &f->pool, layer, k, v, 1, &sp, &so);
                if (layer == 1) {
                    memcpy(f->dk[s][j], k, sizeof(float) * A_NKV * (size_t)hd);
                    memcpy(f->dv[s][j], v, sizeof(float) * A_NKV * (size_t)hd);
                }
            }
        }
    }
}

static void attn_reference(const struct attn_fixture *f, const qv_attn_batch *ab, const float *q,
                           float *out) {
    int nh = ab->n_heads, g = nh / ab->n_kv_heads, hd = f->hd;
    for (int t = 0; t < ab->n_tokens; t++)
        for (int h = 0; h < nh; h++) {
            int s = ab->tok_seq[t], p = ab->tok_pos[t];
            int j0 = ab->window ? (p - ab->window + 1 > 0 ? p - ab->window + 1 : 0) : 0;
            double sc[A_MAXLEN], mx = -(double)INFINITY, sum = 0;
            const float *qv = q + (t * nh + h) * hd;
            for (int j = j0; j <= p; j++) {
                double d = 0;
                for (int i = 0; i < hd; i++)
                    d += (double)qv[i] * (double)f->dk[s][j][(h / g) * hd + i];
                sc[j] = d * (double)ab->scale;
                mx = fmax(mx, sc[j]);
            }
            for (int j = j0; j <= p; j++)
                sum += (sc[j] = exp(sc[j] - mx));
            for (int i = 0; i < hd; i++) {
                double o = 0;
                for (int j = j0; j <= p; j++)
                    o += sc[j] / sum * (double)f->dv[s][j][(h / g) * hd + i];
                out[(t * nh + h) * hd + i] = (float)o;
            }
        }
}

#define A_NHEADS 6 /* GQA: 3 query heads per kv head */

/* A mixed step over the fixture's sequences: seq 0 decodes at 76 and re-reads 7..12 (as a
 * chunked prefill would), seq 1 prefills 0..5, seq 2 decodes its first token. seq and pos:
 * 32 entries each, filled. */
static qv_attn_batch mixed_step(const struct attn_fixture *f, int32_t *seq, int32_t *pos,
                                int window) {
    int n = 0;
    seq[n] = 0, pos[n++] = 76;
    for (int j = 0; j < 6; j++)
        seq[n] = 1, pos[n++] = j;
    for (int j = 7; j < 13; j++)
        seq[n] = 0, pos[n++] = j;
    seq[n] = 2, pos[n++] = 0;
    return (qv_attn_batch){.n_tokens = n,
                           .tok_seq = seq,
                           .tok_pos = pos,
                           .n_seqs = A_NSEQ,
                           .page_table = f->pt,
                           .n_heads = A_NHEADS,
                           .n_kv_heads = A_NKV,
                           .head_dim = f->hd,
                           .window = window,
                           .scale = 1.0f / sqrtf((float)f->hd)};
}

/* Key segments of seg keys (0: the default) and split mode (-1 auto, 0 never, 1 always) on
 * a backend. */
static void set_segments(qv_backend *be, int seg, int split) {
    qv__cpu_set_attn_segments(be->ctx, seg ? seg : QV_ATTN_SEG, split);
}

/* The mixed step against the double reference, then bitwise: on 3 threads, each token alone,
 * and (segs, the segment lengths to try besides the default) every segment length with its
 * segments as units of their own and inside their tile's unit. */
static void attention_case(bool simd, int window, int hd) {
    qv_backend *be = make_backend(2, simd), *be3 = make_backend(3, simd);
    struct attn_fixture *f = malloc(sizeof *f);
    attn_setup(be, f, hd);
    int32_t seq[32], pos[32];
    qv_attn_batch ab = mixed_step(f, seq, pos, window);
    const int n = ab.n_tokens, nh = ab.n_heads;
    size_t nq = (size_t)(n * nh * hd);
    float *q = make_acts(nq);
    for (size_t i = 0; i < nq; i++)
        q[i] *= 3.0f; /* peaky softmax */
    float *out = malloc(nq * sizeof(float)), *want = malloc(nq * sizeof(float));
    float *out3 = malloc(nq * sizeof(float)), *other = malloc(nq * sizeof(float));
    attn_reference(f, &ab, q, want);
    /* 0: 256 keys (every row here in one segment); 16: the 77-key row spans 5 segments; 7: not a
     * power of two, windows of 5 straddle segment edges */
    static const int segs[] = {0, 16, 7};
    for (size_t si = 0; si < QV_ARRAY_LEN(segs); si++) {
        for (int split = -1; split <= 1; split++) {
            set_segments(be, segs[si], split);
            set_segments(be3, segs[si], split);
            be->iface->attention(be, &f->pool, 1, &ab, q, out);
            char label[96];
            snprintf(label, sizeof label, "attention %s window=%d hd=%d seg=%d split=%d",
                     simd ? "simd" : "portable", window, hd, segs[si], split);
            assert_int_equal(qv_test_compare_f32(label, out, want, nq, 1e-6, 1e-5), 0);
            if (split == -1)
                memcpy(other, out, nq * sizeof(float));
            else /* segments as units of their own or not: the same bits */
                assert_memory_equal(out, other, nq * sizeof(float));
            be3->iface->attention(be3, &f->pool, 1, &ab, q, out3);
            assert_memory_equal(out, out3, nq * sizeof(float));
            /* each token alone gives the same bits */
            for (int t = 0; t < n; t++) {
                qv_attn_batch one = ab;
                one.n_tokens = 1;
                one.tok_seq = seq + t;
                one.tok_pos = pos + t;
                be->iface->attention(be, &f->pool, 1, &one, q + t * nh * hd, out3);
                assert_memory_equal(out3, out + t * nh * hd, (size_t)(nh * hd) * sizeof(float));
            }
        }
    }
    free(other);
    free(out3);
    free(want);
    free(out);
    free(q);
    be->iface->free(be, f->pool.k);
    be->iface->free(be, f->pool.v);
    free(f);
    be3->iface->destroy(be3);
    be->iface->destroy(be);
}

static void test_attention(void **state) {
    (void)state;
    for (int hd = 32; hd <= 128; hd *= 2) { /* 64, 128: the register-blocked V sum */
        attention_case(true, 0, hd);
        attention_case(false, 0, hd);
        attention_case(true, 5, hd);
        attention_case(false, 5, hd);
    }
}

/* The attention's softmax against a double-precision one: rows of scores spread over
 * [-120, 0] below their maximum (so some exponentials fall under the smallest normal float),
 * lengths 1..40 (the 8-lane groups and a padded last group), both kernels. */
static void test_softmax(void **state) {
    (void)state;
    for (int simd = 0; simd < 2; simd++) {
        if (simd && !qv__cpu_has_avx2()) continue;
        for (int len = 1; len <= 40; len++) {
            float sc[40], want[40];
            double e[40], sum = 0.0;
            for (int i = 0; i < len; i++)
                sc[i] = 3.0f - 123.0f * rng_unit() * rng_unit();     /* many near the top */
            sc[len - 1] = 3.0f;                                      /* the maximum */
            if (len > 3) sc[1] = 3.0f - 87.3f, sc[2] = 3.0f - 87.4f; /* around the cut */
            for (int i = 0; i < len; i++)
                sum += (e[i] = exp((double)sc[i] - 3.0));
            for (int i = 0; i < len; i++)
                want[i] = (float)(e[i] / sum);
            qv__cpu_softmax(simd, sc, len, 3.0f);
            char label[64];
            snprintf(label, sizeof label, "softmax %s len=%d", simd ? "avx2" : "portable", len);
            /* 4 ulp of each probability; below 2^-126 of the maximum a flush to zero is fine */
            assert_int_equal(qv_test_compare_f32(label, sc, want, (size_t)len, 1.2e-38, 5e-7), 0);
        }
    }
}

/* bf16 pools (--kv-dtype bf16 on the CPU): kv_store rounds every element to nearest even, and
 * attention over the pool gives exactly the bits of attention over an F32 pool holding the
 * rounded values (each element widened exactly, then the F32 path's operations). */
static void attention_bf16_case(bool simd, int hd) {
    qv_backend *be = make_backend(2, simd);
    struct attn_fixture *f = malloc(sizeof *f);
    attn_setup(be, f, hd);
    const size_t kv_dim = (size_t)A_NKV * (size_t)hd, n_slots = (size_t)A_PAGES * A_PAGE;
    const size_t n = (size_t)A_LAYERS * n_slots * kv_dim;
    qv_kv_pool p16 = f->pool, pr = f->pool;
    p16.elem_bytes = 2;
    p16.k = be->iface->alloc(be, n * 2);
    p16.v = be->iface->alloc(be, n * 2);
    pr.elem_bytes = 4;
    pr.k = be->iface->alloc(be, n * sizeof(float));
    pr.v = be->iface->alloc(be, n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        pr.k[i] = qv_bf16_to_f32(qv_f32_to_bf16(f->pool.k[i]));
        pr.v[i] = qv_bf16_to_f32(qv_f32_to_bf16(f->pool.v[i]));
    }
    /* every slot of every page through kv_store, one layer at a time */
    int32_t *sp = malloc(n_slots * sizeof(int32_t)), *so = malloc(n_slots * sizeof(int32_t));
    for (size_t i = 0; i < n_slots; i++)
        sp[i] = (int32_t)(i / A_PAGE), so[i] = (int32_t)(i % A_PAGE);
    for (int layer = 0; layer < A_LAYERS; layer++) {
        const float *k = f->pool.k + (size_t)layer * n_slots * kv_dim;
        const float *v = f->pool.v + (size_t)layer * n_slots * kv_dim;
        be->iface->kv_store(be, &p16, layer, k, v, (int)n_slots, sp, so);
    }
    const uint16_t *k16 = (const uint16_t *)(const void *)p16.k;
    const uint16_t *v16 = (const uint16_t *)(const void *)p16.v;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(k16[i], qv_f32_to_bf16(f->pool.k[i]));
        assert_int_equal(v16[i], qv_f32_to_bf16(f->pool.v[i]));
    }
    int32_t seq[32], pos[32];
    for (int window = 0; window <= 5; window += 5) {
        qv_attn_batch ab = mixed_step(f, seq, pos, window);
        size_t nq = (size_t)(ab.n_tokens * ab.n_heads * hd);
        float *q = make_acts(nq);
        float *o16 = malloc(nq * sizeof(float)), *orr = malloc(nq * sizeof(float));
        be->iface->attention(be, &p16, 1, &ab, q, o16);
        be->iface->attention(be, &pr, 1, &ab, q, orr);
        if (memcmp(o16, orr, nq * sizeof(float)) != 0) {
            fprintf(stderr,
                    "attention bf16 %s hd=%d window=%d: differs from the rounded F32 pool\n",
                    simd ? "simd" : "portable", hd, window);
            fail();
        }
        free(orr);
        free(o16);
        free(q);
    }
    free(so);
    free(sp);
    be->iface->free(be, pr.k);
    be->iface->free(be, pr.v);
    be->iface->free(be, p16.k);
    be->iface->free(be, p16.v);
    be->iface->free(be, f->pool.k);
    be->iface->free(be, f->pool.v);
    free(f);
    be->iface->destroy(be);
}

static void test_attention_bf16(void **state) {
    (void)state;
    for (int hd = 32; hd <= 128; hd *= 2) {
        attention_bf16_case(true, hd);
        attention_bf16_case(false, hd);
    }
    attention_bf16_case(true, 36); /* head_dim not a multiple of 8: the row-at-a-time path */
}

static void test_create_errors(void **state) {
    (void)state;
    qv_backend *be = NULL;
    qv_error err = {0};
    assert_int_equal(qv_backend_cpu_create(-1, &be, &err), QV_ERR_INVALID);
    assert_null(be);
    qv_alloc_fail_after(1); /* the backend struct succeeds, the context fails */
    assert_int_equal(qv_backend_cpu_create(2, &be, &err), QV_ERR_NOMEM);
    qv_alloc_fail_after(-1);
    assert_null(be);
    assert_int_equal(qv_backend_cpu_create(0, &be, &err), QV_OK); /* all cores */
    be->iface->destroy(be);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_avx512),
        cmocka_unit_test(test_matmul_avx2),
        cmocka_unit_test(test_matmul_neon),
        cmocka_unit_test(test_matmul_portable),
        cmocka_unit_test(test_invariance_avx512),
        cmocka_unit_test(test_invariance_avx2),
        cmocka_unit_test(test_invariance_neon),
        cmocka_unit_test(test_invariance_portable),
        cmocka_unit_test(test_matmul_padded_rows),
        cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu_add),
        cmocka_unit_test(test_alloc),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_bf16),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_create_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
