/*
 * bench_matmul.c - CPU backend matmul throughput on SmolLM2-135M shapes, with a memory-read
 * bandwidth probe measured in the same run.
 *
 * Usage: bench_matmul [n_threads (0 = all cores)] [min_seconds_per_case (default 0.3)] [dtype]
 * (a dtype name such as Q4_1 restricts the table to that dtype; the model summary then only
 * covers models made of measured dtypes)
 * Prints one table: time per matmul, effective weight-read GB/s, GFLOP/s, and the n=8/n=32
 * time relative to n=1; then the per-token matmul time of a whole SmolLM2-135M forward
 * (Q4_1 projections + Q8_0 tied lm_head, and Q8_0 / F16 everywhere) against the weight-read
 * floor given by the probe. Weights are replicated into enough copies (>= 256 MiB) that every
 * timed call streams its matrix from DRAM, as a real decode step does. When the matmul runs the
 * AVX-512 kernels, every case is also timed on an AVX2 backend in the same run, and the last
 * column gives the AVX-512 speed-up (AVX2 time / AVX-512 time).
 * Not a test: never run by ctest.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "cpu/cpu_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define PROBE_BYTES ((size_t)512 << 20)
#define COPY_BYTES ((size_t)256 << 20)

static uint64_t rng = 88172645463325252ULL;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* ---- bandwidth probe: each thread sums its slice of a 512 MiB buffer ---- */

struct probe_arg {
    const float *p;
    size_t n;
    float sum;
};

#if HAVE_X86
__attribute__((target("avx2"))) static float sum_avx2(const float *p, size_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    float t[8];
    _mm256_storeu_ps(t, s);
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static float sum_plain(const float *p, size_t n) {
    float a[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            a[k] += p[i + k];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

static void *probe_main(void *v) {
    struct probe_arg *a = v;
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) {
        a->sum = sum_avx2(a->p, a->n);
        return NULL;
    }
#endif
    a->sum = sum_plain(a->p, a->n);
    return NULL;
}

/* ---- FMA peak probe: 10 independent FMA chains per thread, 8 or 16 lanes wide ---- */

#define FMA_ITERS 50000000L

#if HAVE_X86
__attribute__((target("avx2,fma"))) static float fma_chains(void) {
    __m256 a[10];
    __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
    for (int i = 0; i < 10; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long k = 0; k < FMA_ITERS; k++) {
        _Pragma("GCC unroll 10") for (int i = 0; i < 10; i++) a[i] = _mm256_fmadd_ps(a[i], m, c);
    }
    float t[8], s = 0.0f;
    for (int i = 0; i < 10; i++) {
        _mm256_storeu_ps(t, a[i]);
        s += t[0];
    }
    return s;
}
__attribute__((target("avx512f"))) static float fma_chains512(void) {
    __m512 a[10];
    __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(0.001f);
    for (int i = 0; i < 10; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long k = 0; k < FMA_ITERS; k++) {
        _Pragma("GCC unroll 10") for (int i = 0; i < 10; i++) a[i] = _mm512_fmadd_ps(a[i], m, c);
    }
    float s = 0.0f;
    for (int i = 0; i < 10; i++)
        s += _mm512_reduce_add_ps(a[i]);
    return s;
}
#endif

static bool fma_wide; /* the probe runs 16-lane FMAs (the matmul's AVX-512 kernels) */

#if HAVE_X86
static void *fma_main(void *v) {
    float *out = v;
    *out = fma_wide ? fma_chains512() : fma_chains();
    return NULL;
}
#endif

/* GFLOP/s of n_threads threads running FMA chains (0 when not x86/AVX2); 16-lane chains when
 * fma_wide is set. */
static double probe_fma(int n_threads) {
#if HAVE_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0.0;
    pthread_t tids[64];
    float out[64];
    int nt = n_threads < 64 ? n_threads : 64;
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = qv_time_s();
        for (int i = 0; i < nt; i++)
            pthread_create(&tids[i], NULL, fma_main, &out[i]);
        for (int i = 0; i < nt; i++)
            pthread_join(tids[i], NULL);
        double gf = (double)nt * (double)FMA_ITERS * 10.0 * (fma_wide ? 32.0 : 16.0) /
                    (qv_time_s() - t0) / 1e9;
        if (gf > best) best = gf;
    }
    return best;
#else
    (void)n_threads;
    return 0.0;
#endif
}

static double probe_bandwidth(int n_threads) {
    float *buf = NULL;
    if (posix_memalign((void **)&buf, 64, PROBE_BYTES) != 0) return 0.0;
    size_t n = PROBE_BYTES / sizeof(float);
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 7);
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        pthread_t tids[64];
        struct probe_arg args[64];
        int nt = n_threads < 64 ? n_threads : 64;
        double t0 = qv_time_s();
        for (int i = 0; i < nt; i++) {
            size_t b = n / (size_t)nt * (size_t)i,
                   e = i == nt - 1 ? n : n / (size_t)nt * (size_t)(i + 1);
            args[i] = (struct probe_arg){buf + b, e - b, 0.0f};
            pthread_create(&tids[i], NULL, probe_main, &args[i]);
        }
        float total = 0.0f;
        for (int i = 0; i < nt; i++) {
            pthread_join(tids[i], NULL);
            total += args[i].sum;
        }
        double dt = qv_time_s() - t0;
        if (total == -1.0f) printf("?"); /* keep the sum alive */
        double gbs = (double)PROBE_BYTES / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return best;
}

/* ---- matmul cases ---- */

static uint8_t *make_weights(enum qv_dtype dt, int64_t rows, int64_t cols) {
    size_t rb = qv_dtype_row_bytes(dt, cols);
    size_t nb = rb * (size_t)rows;
    uint8_t *w = malloc(nb);
    if (!w) abort();
    int bb = qv_dtype_block_bytes(dt);
    for (size_t i = 0; i < nb; i++)
        w[i] = (uint8_t)(rnd() >> 33);
    for (size_t b = 0; b < nb / (size_t)bb; b++) {
        uint8_t *p = w + b * (size_t)bb;
        uint16_t h = qv_f32_to_f16(0.01f), m = qv_f32_to_f16(-0.05f);
        if (dt == QV_DTYPE_F32) {
            float f = (float)(rnd() % 2001) / 1000.0f - 1.0f;
            memcpy(p, &f, 4);
        } else if (dt == QV_DTYPE_F16) {
            h = qv_f32_to_f16((float)(rnd() % 2001) / 1000.0f - 1.0f);
            memcpy(p, &h, 2);
        } else if (dt == QV_DTYPE_Q6_K) {
            memcpy(p + 208, &h, 2);
        } else if (dt == QV_DTYPE_Q3_K) {
            memcpy(p + 108, &h, 2);
        } else if (dt == QV_DTYPE_Q2_K) {
            memcpy(p + 80, &h, 2);
            memcpy(p + 82, &m, 2);
        } else {
            memcpy(p, &h, 2);
            if (dt == QV_DTYPE_Q4_1 || dt == QV_DTYPE_Q5_1 || dt == QV_DTYPE_Q4_K ||
                dt == QV_DTYPE_Q5_K)
                memcpy(p + 2, &m, 2);
        }
    }
    return w;
}

/* Seconds per matmul of (dt, rows, cols) at batch n, streaming weights from DRAM. */
static double time_matmul(qv_backend *be, enum qv_dtype dt, int64_t rows, int64_t cols, int n,
                          double min_s) {
    size_t rb = qv_dtype_row_bytes(dt, cols), mb = rb * (size_t)rows;
    int copies = (int)((COPY_BYTES + mb - 1) / mb);
    if (copies < 2) copies = 2;
    if (getenv("QV_BENCH_HOT")) copies = 1; /* cache-resident weights: kernel compute speed */
    uint8_t *base = make_weights(dt, rows, cols);
    uint8_t **w = malloc((size_t)copies * sizeof *w);
    for (int i = 0; i < copies; i++) {
        w[i] = malloc(mb);
        memcpy(w[i], base, mb);
    }
    /* 64-byte aligned like the backend's buffers (a malloc'd x splits the 16-lane loads across
     * cache lines) */
    float *x = be->iface->alloc(be, (size_t)n * (size_t)cols * sizeof(float));
    float *y = be->iface->alloc(be, (size_t)n * (size_t)rows * sizeof(float));
    for (size_t i = 0; i < (size_t)n * (size_t)cols; i++)
        x[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
    qv_tensor t = {.dtype = dt, .n_rows = rows, .n_cols = cols, .row_bytes = rb};
    for (int i = 0; i < copies; i++) { /* warm-up: page in, wake the pool */
        t.data = w[i];
        be->iface->matmul(be, &t, x, n, y, NULL);
    }
    double best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        long iters = 0;
        double t0 = qv_time_s(), dt_s;
        do {
            t.data = w[iters % copies];
            be->iface->matmul(be, &t, x, n, y, NULL);
            iters++;
            dt_s = qv_time_s() - t0;
        } while (dt_s < min_s / 3.0 || iters < copies);
        double per = dt_s / (double)iters;
        if (per < best) best = per;
    }
    for (int i = 0; i < copies; i++)
        free(w[i]);
    free(w);
    free(base);
    be->iface->free(be, x);
    be->iface->free(be, y);
    return best;
}

struct shape {
    const char *name;
    int64_t rows, cols;
    int per_layer; /* how many of this shape one SmolLM2 layer has */
};

static const struct shape shapes[] = {
    {"q/o 576x576", 576, 576, 2},         {"k/v 192x576", 192, 576, 2},
    {"gate/up 1536x576", 1536, 576, 2},   {"down 576x1536", 576, 1536, 1},
    {"lm_head 49152x576", 49152, 576, 0},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])
#define N_LAYERS 30

static const int batch[] = {1, 8, 32};
#define N_BATCH 3

/* The K-quants fit only the 1536-column shape (rows are whole 256-element blocks). */
static const enum qv_dtype dtypes[] = {
    QV_DTYPE_F32,    QV_DTYPE_F16,  QV_DTYPE_Q8_0, QV_DTYPE_Q4_1, QV_DTYPE_Q4_K,
    QV_DTYPE_Q6_K,   QV_DTYPE_Q5_K, QV_DTYPE_Q3_K, QV_DTYPE_Q2_K, QV_DTYPE_IQ4_XS,
    QV_DTYPE_IQ4_NL, QV_DTYPE_Q5_0, QV_DTYPE_Q5_1, QV_DTYPE_Q4_0,
};
#define N_DT (sizeof dtypes / sizeof dtypes[0])

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 0;
    double min_s = argc > 2 ? atof(argv[2]) : 0.3;
    const char *only = argc > 3 ? argv[3] : NULL;
    qv_backend *be = NULL;
    qv_error err = {0};
    if (qv_backend_cpu_create(n_threads, &be, &err) != QV_OK) {
        fprintf(stderr, "bench_matmul: %s\n", err.msg);
        return 1;
    }
    if (n_threads == 0) n_threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    enum qv__cpu_simd level = qv__cpu_simd_level();
    fma_wide = level == QV_CPU_SIMD_AVX512;
    /* The AVX2 backend timed side by side with the AVX-512 one. */
    qv_backend *be_avx2 = NULL;
    if (fma_wide) {
        setenv("QV_CPU_SIMD", "avx2", 1);
        qv_status st = qv_backend_cpu_create(n_threads, &be_avx2, &err);
        unsetenv("QV_CPU_SIMD");
        if (st != QV_OK) {
            fprintf(stderr, "bench_matmul: %s\n", err.msg);
            return 1;
        }
    }
    double bw = probe_bandwidth(n_threads);
    double peak = probe_fma(n_threads);
    printf("bench_matmul: %d threads, matmul kernels %s (QV_CPU_SIMD=0 portable, =avx2 no "
           "AVX-512); streaming-read probe %.1f GB/s (512 MiB, %d threads); FMA probe (%s) %.1f "
           "GFLOP/s\n\n",
           n_threads, qv__cpu_simd_name(level), bw, n_threads, fma_wide ? "16 lanes" : "8 lanes",
           peak);
    /* Per-op dispatch cost: a tiny matmul (64x32 F32, n=1: 8 jobs) on the pool vs on a
     * 1-thread backend that runs it inline. */
    {
        qv_backend *be1 = NULL;
        if (qv_backend_cpu_create(1, &be1, &err) != QV_OK) return 1;
        static float wtiny[64 * 32], xt[32], yt[64];
        for (int i = 0; i < 64 * 32; i++)
            wtiny[i] = (float)(i % 7) * 0.1f;
        qv_tensor tt = {
            .dtype = QV_DTYPE_F32, .n_rows = 64, .n_cols = 32, .row_bytes = 128, .data = wtiny};
        double per[2];
        qv_backend *bes[2] = {be, be1};
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < 1000; i++)
                bes[k]->iface->matmul(bes[k], &tt, xt, 1, yt, NULL);
            double t0 = qv_time_s();
            for (int i = 0; i < 20000; i++)
                bes[k]->iface->matmul(bes[k], &tt, xt, 1, yt, NULL);
            per[k] = (qv_time_s() - t0) / 20000.0;
        }
        printf("dispatch: tiny matmul %.2f us on the %d-thread pool, %.2f us inline (1 thread)\n\n",
               per[0] * 1e6, n_threads, per[1] * 1e6);
        be1->iface->destroy(be1);
    }
    printf("%-6s %-18s %4s %11s %9s %8s %9s %6s %8s %8s\n", "dtype", "shape", "n", "us/matmul",
           "W GB/s", "%probe", "GFLOP/s", "%peak", "t/t(n=1)", be_avx2 ? "x avx2" : "");
    /* times[dt][shape][batch] */
    static double times[N_DT][N_SHAPES][N_BATCH];
    for (size_t d = 0; d < N_DT; d++) {
        enum qv_dtype dt = dtypes[d];
        if (only && strcmp(only, qv_dtype_name(dt)) != 0) continue;
        for (size_t s = 0; s < N_SHAPES; s++) {
            const struct shape *sh = &shapes[s];
            if (sh->cols % qv_dtype_block_elems(dt) != 0) continue;
            if (s == N_SHAPES - 1 && dt != QV_DTYPE_Q8_0 && dt != QV_DTYPE_F16) continue;
            for (int b = 0; b < N_BATCH; b++) {
                int n = batch[b];
                double t = time_matmul(be, dt, sh->rows, sh->cols, n, min_s);
                times[d][s][b] = t;
                double bytes = (double)qv_dtype_row_bytes(dt, sh->cols) * (double)sh->rows;
                double flops = 2.0 * (double)n * (double)sh->rows * (double)sh->cols;
                printf("%-6s %-18s %4d %11.1f %9.2f %7.0f%% %9.1f %5.0f%% %8.2f", qv_dtype_name(dt),
                       sh->name, n, t * 1e6, bytes / t / 1e9, 100.0 * bytes / t / 1e9 / bw,
                       flops / t / 1e9, peak > 0.0 ? 100.0 * flops / t / 1e9 / peak : 0.0,
                       t / times[d][s][0]);
                if (be_avx2)
                    printf(" %7.2fx", time_matmul(be_avx2, dt, sh->rows, sh->cols, n, min_s) / t);
                printf("\n");
            }
        }
    }
    /* Whole-model per-token matmul time: projections of dtype P (Q4_K rows fall back to the
     * dtype of the other shapes, as llama.cpp's Q4_K_M does not apply here) + lm_head. */
    printf("\nSmolLM2-135M matmuls per decode step (30 layers + tied lm_head):\n");
    printf("%-22s %4s %10s %10s %12s %12s %9s\n", "weights", "n", "ms/step", "tok/s", "floor tok/s",
           "MB/token", "%floor");
    struct {
        const char *name;
        int proj, head; /* indices into dtypes[] */
    } models[] = {{"Q4_1 + Q8_0 lm_head", 3, 2}, {"Q8_0", 2, 2}, {"F16", 1, 1}};
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        double mb = 0.0;
        for (size_t s = 0; s < N_SHAPES; s++) {
            int d = s == N_SHAPES - 1 ? models[m].head : models[m].proj;
            int count = s == N_SHAPES - 1 ? 1 : shapes[s].per_layer * N_LAYERS;
            mb += (double)count * (double)qv_dtype_row_bytes(dtypes[d], shapes[s].cols) *
                  (double)shapes[s].rows / 1e6;
        }
        double floor_tok = bw * 1e3 / mb;
        for (int b = 0; b < N_BATCH; b++) {
            double ms = 0.0;
            bool measured = true;
            for (size_t s = 0; s < N_SHAPES; s++) {
                int d = s == N_SHAPES - 1 ? models[m].head : models[m].proj;
                int count = s == N_SHAPES - 1 ? 1 : shapes[s].per_layer * N_LAYERS;
                ms += (double)count * times[d][s][b] * 1e3;
                measured = measured && times[d][s][b] > 0.0;
            }
            if (!measured) continue;
            double tok = (double)batch[b] * 1e3 / ms;
            printf("%-22s %4d %10.2f %10.1f %12.1f %12.1f %8.0f%%\n", models[m].name, batch[b], ms,
                   tok, floor_tok, mb, 100.0 * tok / floor_tok);
        }
    }
    if (be_avx2) be_avx2->iface->destroy(be_avx2);
    be->iface->destroy(be);
    return 0;
}
