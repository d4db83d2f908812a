/*
 * test_cuda_sgmv.c - the SGMV shrink/expand kernels (engine/cuda/sgmv.cu) with their weights in
 * the device adapter pool (engine/cuda/adapter_pool.c), against the CPU reference
 * qv__lora_shrink / qv__lora_expand (engine/cpu/lora_cpu.c), over the batch mixes of STYLE.md:
 * none, one shared, all distinct, uniform, Zipf 1.5, mixed ranks 1..256, empty segments; in
 * decode shape (one token per segment), prefill shape (long segments) and both at once; bf16
 * and fp16; n_in that takes the 16-byte path and one that does not; odd n_out; a fused table
 * (q/k/v outputs over one x). Inputs are rounded to half before both sides see them, so the
 * only differences are fp32 summation orders: tmp and y are compared at 1e-4 of their scale,
 * worst element printed. Rows of segments without an adapter must be bitwise unchanged, and a
 * segment's rows bitwise equal to its solo run in a table of the same shape (batch invariance).
 * The pool is also checked on its own: stored bytes equal the host conversion, LRU eviction,
 * references and pins hold, ready/use. Skips (77) without CUDA or without a device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "gpu_util.h"
#include "test_util.h"

#ifdef QV_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "engine/cpu/lora_cpu.h"
#include "engine/cuda/adapter_pool.h"
#include "engine/cuda/sgmv.h"
#include "engine/dtype.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            fail_msg("%s: %s (line %d)", #call, cudaGetErrorString(e_), __LINE__);                 \
    } while (0)

static uint32_t rng = 20261128u;
static cudaStream_t stream;
static uint64_t next_key = 1;

static float round_half(float v, int fp16) {
    return fp16 ? qv_f16_to_f32(qv_f32_to_f16(v)) : qv_bf16_to_f32(qv_f32_to_bf16(v));
}
static float *rand_half(size_t n, float scale, int fp16) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = round_half(gpu_randf(&rng) * scale, fp16);
    return p;
}
static void *to_dev(const void *h, size_t bytes) {
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 4));
    if (bytes && h) CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}
static double absmax(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i]));
    return m;
}

#define MAX_PROJ 3
#define MAX_AD 256

typedef struct mix {
    const char *name;
    int n_segs;
    int seg_n[512];
    int seg_ad[512]; /* adapter index, -1: none */
    int n_ad;
    int rank[MAX_AD];
    int n_in, n_proj, n_out[MAX_PROJ];
    int fp16;
} mix;

typedef struct result {
    float *y[MAX_PROJ]; /* device result (host copy) */
    int n_tokens;
} result;

/* Runs one mix on both sides and compares. solo >= 0: only batch segment `solo` gets a table
 * entry (the batch invariance run); the result is returned in *out (freed by the caller). */
static void run_mix(const mix *m, int solo, result *out) {
    char label[160];
    const int fp16 = m->fp16, n_in = m->n_in;
    int n_tok = 0;
    for (int s = 0; s < m->n_segs; s++)
        n_tok += m->seg_n[s];
    /* adapters: A_p (rank, n_in), B_p (n_out_p, rank) per projection, in one pool version */
    float *A[MAX_AD][MAX_PROJ], *B[MAX_AD][MAX_PROJ];
    float scale[MAX_AD];
    int slot[MAX_AD];
    size_t pool_bytes = 0;
    for (int a = 0; a < m->n_ad; a++)
        for (int p = 0; p < m->n_proj; p++)
            pool_bytes += ((size_t)m->rank[a] * (size_t)(n_in + m->n_out[p]) * 2 + 512 + 65535) &
                          ~(size_t)65535;
    qv_cuda_pool_opts po = {.pool_bytes = pool_bytes + ((size_t)1 << 20),
                            .fp16 = fp16,
                            .max_entries = MAX_AD,
                            .staging_bytes = (size_t)1 << 20};
    qv_cuda_adapter_pool *pool = NULL;
    qv_error err = {0};
    if (qv_cuda_adapter_pool_create(&po, stream, &pool, &err) != QV_OK)
        fail_msg("pool: %s", err.msg);
    for (int a = 0; a < m->n_ad; a++) {
        qv_cuda_pool_mat mats[2 * MAX_PROJ];
        for (int p = 0; p < m->n_proj; p++) {
            A[a][p] = rand_half((size_t)m->rank[a] * (size_t)n_in, 1.0f / sqrtf((float)n_in), fp16);
            B[a][p] = rand_half((size_t)m->n_out[p] * (size_t)m->rank[a],
                                1.0f / sqrtf((float)m->rank[a]), fp16);
            mats[2 * p] = (qv_cuda_pool_mat){A[a][p], (int64_t)m->rank[a] * n_in, QV_DTYPE_F32};
            mats[2 * p + 1] =
                (qv_cuda_pool_mat){B[a][p], (int64_t)m->n_out[p] * m->rank[a], QV_DTYPE_F32};
        }
        scale[a] = 0.25f + 0.5f * (gpu_randf(&rng) + 1.0f);
        if (qv_cuda_adapter_pool_load(pool, next_key++, mats, 2 * m->n_proj, &slot[a], &err) !=
            QV_OK)
            fail_msg("load: %s", err.msg);
        qv_cuda_adapter_pool_acquire(pool, slot[a]);
        if (qv_cuda_adapter_pool_use(pool, slot[a], &err) != QV_OK) fail_msg("use: %s", err.msg);
    }
    /* x, y */
    float *x = rand_half((size_t)n_tok * (size_t)n_in, 1.0f, fp16);
    uint16_t *xh = malloc((size_t)n_tok * (size_t)n_in * 2 + 2);
    for (size_t i = 0; i < (size_t)n_tok * (size_t)n_in; i++)
        xh[i] = fp16 ? qv_f32_to_f16(x[i]) : qv_f32_to_bf16(x[i]);
    void *dx = to_dev(xh, (size_t)n_tok * (size_t)n_in * 2);
    float *y0[MAX_PROJ], *yref[MAX_PROJ], *dy[MAX_PROJ];
    for (int p = 0; p < m->n_proj; p++) {
        size_t ny = (size_t)n_tok * (size_t)m->n_out[p];
        y0[p] = rand_half(ny, 0.5f, 0);
        yref[p] = malloc(ny * sizeof(float) + 4);
        memcpy(yref[p], y0[p], ny * sizeof(float));
        dy[p] = to_dev(y0[p], ny * sizeof(float));
    }
    /* tables: segment-major, projections inside (fused) */
    int n_tab = 0;
    qv__lora_seg *cs = calloc((size_t)m->n_segs * MAX_PROJ + 1, sizeof(qv__lora_seg));
    qv_sgmv_seg *gs = calloc((size_t)m->n_segs * MAX_PROJ + 1, sizeof(qv_sgmv_seg));
    for (int s = 0, t0 = 0; s < m->n_segs; t0 += m->seg_n[s], s++) {
        const int a = m->seg_ad[s];
        if (a < 0 || (solo >= 0 && s != solo)) continue;
        for (int p = 0; p < m->n_proj; p++) {
            cs[n_tab] = (qv__lora_seg){.t0 = t0,
                                       .n = m->seg_n[s],
                                       .rank = m->rank[a],
                                       .scale = scale[a],
                                       .a = A[a][p],
                                       .b = B[a][p],
                                       .y = yref[p],
                                       .ldy = (size_t)m->n_out[p],
                                       .n_out = m->n_out[p]};
            gs[n_tab] = (qv_sgmv_seg){.a = qv_cuda_adapter_pool_mat(pool, slot[a], 2 * p),
                                      .b = qv_cuda_adapter_pool_mat(pool, slot[a], 2 * p + 1),
                                      .y = dy[p],
                                      .ldy = m->n_out[p],
                                      .t0 = t0,
                                      .n = m->seg_n[s],
                                      .rank = m->rank[a],
                                      .n_out = m->n_out[p],
                                      .scale = scale[a]};
            n_tab++;
        }
    }
    qv_sgmv_args g = {.fp16 = fp16};
    if (qv_sgmv_plan_build(gs, n_tab, n_tok, &g.plan, &err) != QV_OK) fail_msg("plan: %s", err.msg);
    assert_int_equal(g.plan.tmp_floats, qv__lora_tmp_floats(cs, n_tab));
    float *tref = calloc(g.plan.tmp_floats + 1, sizeof(float));
    qv__lora_shrink(NULL, cs, n_tab, x, (size_t)n_in, n_in, tref);
    qv__lora_expand(NULL, cs, n_tab, tref, 0, NULL, 0);
    g.segs = to_dev(gs, (size_t)n_tab * sizeof(qv_sgmv_seg));
    float *dtmp = to_dev(NULL, (g.plan.tmp_floats + 1) * sizeof(float));
    assert_int_equal(qv_cuda_sgmv_shrink(&g, dx, n_in, n_in, dtmp, stream), 0);
    assert_int_equal(qv_cuda_sgmv_expand(&g, dtmp, stream), 0);
    CK(cudaStreamSynchronize(stream));
    float *tgot = malloc((g.plan.tmp_floats + 1) * sizeof(float));
    CK(cudaMemcpy(tgot, dtmp, g.plan.tmp_floats * sizeof(float), cudaMemcpyDeviceToHost));
    snprintf(label, sizeof label, "%s%s: tmp (%zu floats, %d table rows, max_n %d, max rank %d)",
             m->name, solo >= 0 ? " solo" : "", g.plan.tmp_floats, n_tab, g.plan.max_n,
             g.plan.max_rank);
    size_t bad = qv_test_compare_f32(label, tgot, tref, g.plan.tmp_floats,
                                     1e-4 * absmax(tref, g.plan.tmp_floats), 1e-4);
    if (bad) fail_msg("%s: %zu elements outside tolerance", label, bad);
    out->n_tokens = n_tok;
    for (int p = 0; p < m->n_proj; p++) {
        size_t ny = (size_t)n_tok * (size_t)m->n_out[p];
        float *yg = malloc(ny * sizeof(float) + 4);
        CK(cudaMemcpy(yg, dy[p], ny * sizeof(float), cudaMemcpyDeviceToHost));
        double dmax = 0;
        for (size_t i = 0; i < ny; i++)
            dmax = fmax(dmax, fabs((double)yref[p][i] - (double)y0[p][i]));
        snprintf(label, sizeof label, "%s%s: y of projection %d (%d x %d)", m->name,
                 solo >= 0 ? " solo" : "", p, n_tok, m->n_out[p]);
        bad = qv_test_compare_f32(label, yg, yref[p], ny, 1e-4 * dmax + 1e-6, 0.0);
        if (bad) fail_msg("%s: %zu elements outside tolerance", label, bad);
        /* rows without a table entry: bitwise unchanged */
        for (int s = 0, t0 = 0; s < m->n_segs; t0 += m->seg_n[s], s++) {
            if (m->seg_ad[s] >= 0 && (solo < 0 || s == solo)) continue;
            size_t o = (size_t)t0 * (size_t)m->n_out[p];
            if (memcmp(yg + o, y0[p] + o, (size_t)m->seg_n[s] * (size_t)m->n_out[p] * 4) != 0)
                fail_msg("%s: segment %d without an adapter was modified", label, s);
        }
        out->y[p] = yg;
    }
    /* cleanup */
    for (int a = 0; a < m->n_ad; a++) {
        qv_cuda_adapter_pool_release(pool, slot[a]);
        for (int p = 0; p < m->n_proj; p++) {
            free(A[a][p]);
            free(B[a][p]);
        }
    }
    qv_cuda_adapter_pool_destroy(pool);
    for (int p = 0; p < m->n_proj; p++) {
        free(y0[p]);
        free(yref[p]);
        CK(cudaFree(dy[p]));
    }
    CK(cudaFree(dx));
    CK(cudaFree(dtmp));
    CK(cudaFree((void *)(uintptr_t)g.segs));
    free(x);
    free(xh);
    free(cs);
    free(gs);
    free(tref);
    free(tgot);
}

static void run_and_free(const mix *m) {
    result r = {0};
    run_mix(m, -1, &r);
    for (int p = 0; p < MAX_PROJ; p++)
        free(r.y[p]);
}

/* Segment lengths: decode 1 each, prefill from `lens`, or a blend. */
static void base_mix(mix *m, const char *name, int n_segs, int seg_len, int n_in, int n_out,
                     int fp16) {
    memset(m, 0, sizeof(*m));
    m->name = name;
    m->n_segs = n_segs;
    for (int s = 0; s < n_segs; s++)
        m->seg_n[s] = seg_len;
    m->n_in = n_in;
    m->n_proj = 1;
    m->n_out[0] = n_out;
    m->fp16 = fp16;
}

/* Zipf(alpha) index in [0, n) by inverting the CDF. */
static int zipf(int n, double alpha) {
    double h = 0;
    for (int i = 1; i <= n; i++)
        h += pow(i, -alpha);
    double u = ((double)gpu_randf(&rng) + 1.0) * 0.5 * h, c = 0;
    for (int i = 1; i <= n; i++) {
        c += pow(i, -alpha);
        if (u <= c) return i - 1;
    }
    return n - 1;
}

/* Adapter indices must be contiguous runs per segment (the engine groups them); here each
 * batch segment is one sequence, so equal adapters may appear in several segments. */
static void mixes_for_shape(int seg_len, int n_in, int n_out, int fp16) {
    mix m;
    char names[8][96];
    const char *shape = seg_len == 1 ? "decode" : "prefill";
    const int S = seg_len == 1 ? 32 : 6;
    /* none */
    snprintf(names[0], 96, "none %s %s", shape, fp16 ? "fp16" : "bf16");
    base_mix(&m, names[0], S, seg_len, n_in, n_out, fp16);
    m.n_ad = 0;
    for (int s = 0; s < S; s++)
        m.seg_ad[s] = -1;
    run_and_free(&m);
    /* one shared */
    snprintf(names[1], 96, "one shared %s", shape);
    base_mix(&m, names[1], S, seg_len, n_in, n_out, fp16);
    m.n_ad = 1;
    m.rank[0] = 16;
    for (int s = 0; s < S; s++)
        m.seg_ad[s] = 0;
    run_and_free(&m);
    /* all distinct, every other sequence without an adapter */
    snprintf(names[2], 96, "all distinct %s", shape);
    base_mix(&m, names[2], S, seg_len, n_in, n_out, fp16);
    m.n_ad = S;
    for (int s = 0; s < S; s++) {
        m.rank[s] = 16;
        m.seg_ad[s] = s % 5 == 4 ? -1 : s;
    }
    run_and_free(&m);
    /* uniform over 8 */
    snprintf(names[3], 96, "uniform %s", shape);
    base_mix(&m, names[3], S, seg_len, n_in, n_out, fp16);
    m.n_ad = 8;
    for (int a = 0; a < 8; a++)
        m.rank[a] = 8 << (a % 3);
    for (int s = 0; s < S; s++)
        m.seg_ad[s] = (int)((uint32_t)((gpu_randf(&rng) + 1.0f) * 4.0f) % 8u);
    run_and_free(&m);
    /* Zipf 1.5 over 32 */
    snprintf(names[4], 96, "zipf 1.5 %s", shape);
    base_mix(&m, names[4], S, seg_len, n_in, n_out, fp16);
    m.n_ad = 32;
    for (int a = 0; a < 32; a++)
        m.rank[a] = 16;
    for (int s = 0; s < S; s++)
        m.seg_ad[s] = zipf(32, 1.5);
    run_and_free(&m);
    /* mixed ranks 1..256 */
    static const int ranks[] = {1, 2, 3, 5, 7, 8, 9, 16, 17, 31, 32, 33, 64, 100, 128, 255, 256};
    const int nr = (int)(sizeof ranks / sizeof ranks[0]);
    snprintf(names[5], 96, "mixed ranks %s", shape);
    base_mix(&m, names[5], seg_len == 1 ? nr : 6, seg_len, n_in, n_out, fp16);
    m.n_ad = nr;
    for (int a = 0; a < nr; a++)
        m.rank[a] = ranks[a];
    for (int s = 0; s < m.n_segs; s++)
        m.seg_ad[s] = seg_len == 1 ? s : (s * 3 + 1) % nr;
    run_and_free(&m);
    /* empty segments between others */
    snprintf(names[6], 96, "empty segments %s", shape);
    base_mix(&m, names[6], 8, seg_len, n_in, n_out, fp16);
    m.n_ad = 4;
    for (int a = 0; a < 4; a++)
        m.rank[a] = 4 + 4 * a;
    for (int s = 0; s < 8; s++) {
        m.seg_ad[s] = s % 4;
        if (s % 3 == 1) m.seg_n[s] = 0;
    }
    run_and_free(&m);
}

static void test_decode_bf16(void **state) {
    (void)state;
    mixes_for_shape(1, 2048, 2048, 0);
}
static void test_prefill_bf16(void **state) {
    (void)state;
    mixes_for_shape(37, 1024, 768, 0);
}
static void test_decode_fp16_odd(void **state) {
    (void)state;
    /* n_in % 8 != 0: the scalar shrink path; odd n_out */
    mixes_for_shape(1, 1004, 300, 1);
}
static void test_prefill_fp16_odd(void **state) {
    (void)state;
    mixes_for_shape(33, 1004, 301, 1);
}

/* Decode and prefill segments in one table, and small multi-token segments (decode kernels
 * with 2..4 tokens). */
static void test_blend(void **state) {
    (void)state;
    mix m;
    base_mix(&m, "blend prefill + decode", 12, 1, 896, 640, 0);
    m.n_ad = 5;
    static const int r5[5] = {8, 16, 64, 1, 256};
    for (int a = 0; a < 5; a++)
        m.rank[a] = r5[a];
    static const int lens[12] = {1, 1, 100, 1, 7, 1, 1, 300, 1, 0, 1, 2};
    for (int s = 0; s < 12; s++) {
        m.seg_n[s] = lens[s];
        m.seg_ad[s] = s % 6 == 5 ? -1 : s % 5;
    }
    run_and_free(&m);
    base_mix(&m, "short multi-token", 10, 3, 2048, 512, 0);
    m.n_ad = 3;
    m.rank[0] = 16, m.rank[1] = 32, m.rank[2] = 5;
    for (int s = 0; s < 10; s++) {
        m.seg_ad[s] = s % 3;
        m.seg_n[s] = 1 + s % 4;
    }
    run_and_free(&m);
}

/* q/k/v outputs of different widths over one x: one shrink + one expand for all three. */
static void test_fused_qkv(void **state) {
    (void)state;
    mix m;
    base_mix(&m, "fused q/k/v decode", 16, 1, 2048, 2048, 0);
    m.n_proj = 3;
    m.n_out[1] = 512;
    m.n_out[2] = 512;
    m.n_ad = 6;
    for (int a = 0; a < 6; a++)
        m.rank[a] = a == 5 ? 64 : 16;
    for (int s = 0; s < 16; s++)
        m.seg_ad[s] = s % 7 == 6 ? -1 : s % 6;
    run_and_free(&m);
    m.name = "fused q/k/v prefill";
    for (int s = 0; s < 16; s++)
        m.seg_n[s] = 1 + (s * 13) % 40;
    run_and_free(&m);
}

/* A segment's rows in the full table equal its solo run bitwise (same launch shape). */
static void test_batch_invariance(void **state) {
    (void)state;
    for (int shape = 0; shape < 2; shape++) {
        mix m;
        base_mix(&m, shape ? "invariance prefill" : "invariance decode", 24, shape ? 40 : 1, 2048,
                 1024, 0);
        m.n_ad = 24;
        for (int a = 0; a < 24; a++) {
            m.rank[a] = 8 + 8 * (a % 4);
            m.seg_ad[a] = a;
        }
        uint32_t keep = rng;
        result full = {0}, solo = {0};
        run_mix(&m, -1, &full);
        rng = keep; /* identical weights and inputs */
        run_mix(&m, 7, &solo);
        const int t0 = 7 * m.seg_n[0];
        const size_t o = (size_t)t0 * 1024, n = (size_t)m.seg_n[7] * 1024;
        if (memcmp(full.y[0] + o, solo.y[0] + o, n * sizeof(float)) != 0)
            fail_msg("%s: segment 7 differs between the batch and its solo run", m.name);
        printf("%s: segment 7 bitwise equal alone and in a batch of 24\n", m.name);
        free(full.y[0]);
        free(solo.y[0]);
    }
}

/* The pool by itself: bytes, eviction order, references, pins, capacity errors. */
static void test_pool(void **state) {
    (void)state;
    const int n_in = 2048, rank = 16;
    /* 2 pages per version (A and B of 64 KiB each), 9 pages: 4 versions fit */
    qv_cuda_pool_opts po = {.pool_bytes = 9 * 65536,
                            .max_entries = 16,
                            .staging_bytes = 4 * 16384 /* forces many staging round trips */};
    qv_cuda_adapter_pool *pool = NULL;
    qv_error err = {0};
    assert_int_equal(qv_cuda_adapter_pool_create(&po, stream, &pool, &err), QV_OK);
    float *a[6];
    int slot[6];
    for (int v = 0; v < 6; v++)
        a[v] = rand_half((size_t)rank * n_in, 1.0f, 0);
    for (int v = 0; v < 4; v++) {
        qv_cuda_pool_mat mats[2] = {{a[v], (int64_t)rank * n_in, QV_DTYPE_F32},
                                    {a[v], 7, QV_DTYPE_F32}};
        assert_int_equal(qv_cuda_adapter_pool_load(pool, 100 + v, mats, 2, &slot[v], &err), QV_OK);
    }
    CK(cudaStreamSynchronize(stream));
    /* every byte as converted on the host, the 7-element tail after 256-byte alignment */
    uint16_t *got = malloc((size_t)rank * n_in * 2);
    for (int v = 0; v < 4; v++) {
        assert_true(qv_cuda_adapter_pool_ready(pool, slot[v]) ||
                    qv_cuda_adapter_pool_use(pool, slot[v], &err) == QV_OK);
        CK(cudaStreamSynchronize(stream));
        assert_true(qv_cuda_adapter_pool_ready(pool, slot[v]));
        CK(cudaMemcpy(got, qv_cuda_adapter_pool_mat(pool, slot[v], 0), (size_t)rank * n_in * 2,
                      cudaMemcpyDeviceToHost));
        for (int i = 0; i < rank * n_in; i++)
            if (got[i] != qv_f32_to_bf16(a[v][i])) fail_msg("version %d element %d differs", v, i);
        const unsigned char *m0 = qv_cuda_adapter_pool_mat(pool, slot[v], 0);
        const unsigned char *m1 = qv_cuda_adapter_pool_mat(pool, slot[v], 1);
        assert_int_equal(m1 - m0, rank * n_in * 2);
        CK(cudaMemcpy(got, m1, 14, cudaMemcpyDeviceToHost));
        for (int i = 0; i < 7; i++)
            assert_int_equal(got[i], qv_f32_to_bf16(a[v][i]));
    }
    /* 100 in use, 101 pinned, 102 touched: the 5th version evicts 103 */
    qv_cuda_adapter_pool_acquire(pool, slot[0]);
    qv_cuda_adapter_pool_pin(pool, slot[1], true);
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 102, NULL, 0, NULL, &err), QV_OK); /* hit */
    qv_cuda_pool_mat m4[2] = {{a[4], (int64_t)rank * n_in, QV_DTYPE_F32},
                              {a[4], (int64_t)rank * n_in, QV_DTYPE_F32}};
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 104, m4, 2, &slot[4], &err), QV_OK);
    assert_int_equal(qv_cuda_adapter_pool_find(pool, 103), -1);
    assert_true(qv_cuda_adapter_pool_find(pool, 100) >= 0);
    assert_true(qv_cuda_adapter_pool_find(pool, 101) >= 0);
    /* a version as large as the region: only after everything is released */
    float *big = calloc((size_t)9 * 65536 / 2, sizeof(float));
    qv_cuda_pool_mat mb[1] = {{big, (int64_t)9 * 65536 / 2, QV_DTYPE_F32}};
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 200, mb, 1, NULL, &err), QV_ERR_BUSY);
    mb[0].n_elems += 1;
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 201, mb, 1, NULL, &err), QV_ERR_DEVICE_OOM);
    mb[0].n_elems -= 1;
    qv_cuda_adapter_pool_release(pool, slot[0]);
    qv_cuda_adapter_pool_pin(pool, slot[1], false);
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 200, mb, 1, &slot[5], &err), QV_OK);
    assert_int_equal(qv_cuda_adapter_pool_use(pool, slot[5], &err), QV_OK);
    CK(cudaStreamSynchronize(stream));
    qv_cuda_pool_stats st;
    qv_cuda_adapter_pool_stats(pool, &st);
    printf("pool: %llu loads, %llu hits, %llu bytes copied, %llu staging waits, %d entries\n",
           (unsigned long long)st.loads, (unsigned long long)st.hits,
           (unsigned long long)st.bytes_copied, (unsigned long long)st.staging_waits,
           st.pages.n_entries);
    assert_int_equal(st.pages.n_entries, 1);
    assert_int_equal(st.loads, 6);
    qv_cuda_adapter_pool_destroy(pool);
    pool = NULL;
    po.pool_bytes = 4 * 65536;
    assert_int_equal(qv_cuda_adapter_pool_create(&po, stream, &pool, &err), QV_OK);
    uint16_t raw_bf[300], raw_h[300];
    for (int i = 0; i < 300; i++) {
        raw_bf[i] = qv_f32_to_bf16(a[5][i]);
        raw_h[i] = qv_f32_to_f16(a[5][i] * 0.37f);
    }
    qv_cuda_pool_mat m16[2] = {{raw_bf, 300, QV_DTYPE_BF16}, {raw_h, 300, QV_DTYPE_F16}};
    int s16 = -1;
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 300, m16, 2, &s16, &err), QV_OK);
    assert_int_equal(qv_cuda_adapter_pool_use(pool, s16, &err), QV_OK);
    CK(cudaStreamSynchronize(stream));
    CK(cudaMemcpy(got, qv_cuda_adapter_pool_mat(pool, s16, 0), 600, cudaMemcpyDeviceToHost));
    assert_memory_equal(got, raw_bf, 600);
    CK(cudaMemcpy(got, qv_cuda_adapter_pool_mat(pool, s16, 1), 600, cudaMemcpyDeviceToHost));
    for (int i = 0; i < 300; i++)
        assert_int_equal(got[i], qv_f32_to_bf16(qv_f16_to_f32(raw_h[i])));
    m16[0].dtype = QV_DTYPE_Q8_0;
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 301, m16, 2, NULL, &err), QV_ERR_INVALID);
    free(big);
    free(got);
    for (int v = 0; v < 6; v++)
        free(a[v]);
    qv_cuda_adapter_pool_destroy(pool);
}

/* Device content of matrix 0 (n values) of the version at slot equals a's bf16 rounding. */
static void expect_image(qv_cuda_adapter_pool *pool, int slot, const float *a, int n,
                         const char *what) {
    qv_error err = {0};
    assert_int_equal(qv_cuda_adapter_pool_use(pool, slot, &err), QV_OK);
    CK(cudaStreamSynchronize(stream));
    uint16_t *got = malloc((size_t)n * 2);
    CK(cudaMemcpy(got, qv_cuda_adapter_pool_mat(pool, slot, 0), (size_t)n * 2,
                  cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++)
        if (got[i] != qv_f32_to_bf16(a[i])) fail_msg("%s: element %d differs", what, i);
    free(got);
}

/* The pinned host tier: a prefetch converts on the converter thread, never on the caller; a
 * later prefetch copies the complete image; a load that needs a queued version converts it
 * itself; a device eviction keeps the image, so the next load copies it without converting;
 * forget drops queued conversions; a version larger than the tier goes through staging. */
static void test_pool_host_tier(void **state) {
    (void)state;
    const int n = 16 * 2048; /* 64 KiB in bf16: one page, two with the tail matrix */
    qv_cuda_pool_opts po = {.pool_bytes = 4 * 65536, .host_bytes = 8 * 65536, .max_entries = 16};
    qv_cuda_adapter_pool *pool = NULL;
    qv_error err = {0};
    assert_int_equal(qv_cuda_adapter_pool_create(&po, stream, &pool, &err), QV_OK);
    assert_int_equal(qv_cuda_adapter_pool_host_bytes(pool), (size_t)8 * 65536);
    float *a[5];
    qv_cuda_pool_mat m[5][2];
    for (int v = 0; v < 5; v++) {
        a[v] = rand_half((size_t)n, 1.0f, 0);
        m[v][0] = (qv_cuda_pool_mat){a[v], n, QV_DTYPE_F32};
        m[v][1] = (qv_cuda_pool_mat){a[v], 5, QV_DTYPE_F32};
    }
    const void *owner = &po;
    int slot = -7;
    qv_cuda_pool_stats st;
    /* held converter: the prefetch only queues; a load then converts it on this thread */
    qv_cuda_adapter_pool_hold_jobs(pool, true);
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 100, m[0], 2, owner, &slot, &err), QV_OK);
    assert_int_equal(slot, -1);
    assert_true(qv_cuda_adapter_pool_known(pool, 100));
    assert_int_equal(qv_cuda_adapter_pool_find(pool, 100), -1);
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 100, m[0], 2, owner, &slot, &err), QV_OK);
    assert_int_equal(slot, -1); /* still queued */
    qv_cuda_adapter_pool_stats(pool, &st);
    assert_int_equal(st.host_fills_async + st.host_fills_sync, 0);
    int s100 = -1;
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 100, m[0], 2, &s100, &err), QV_OK);
    assert_true(s100 >= 0);
    expect_image(pool, s100, a[0], n, "queued version taken over by a load");
    qv_cuda_adapter_pool_stats(pool, &st);
    assert_int_equal(st.host_fills_sync, 1);
    assert_int_equal(st.host_jobs_cancelled, 1);
    assert_int_equal(st.host_hits, 1);
    /* a prefetch converted in the background, then copied by the next prefetch */
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 101, m[1], 2, owner, &slot, &err), QV_OK);
    assert_int_equal(slot, -1);
    qv_cuda_adapter_pool_hold_jobs(pool, false);
    qv_cuda_adapter_pool_drain_jobs(pool);
    qv_cuda_adapter_pool_stats(pool, &st);
    assert_int_equal(st.host_fills_async, 1);
    assert_int_equal(qv_cuda_adapter_pool_find(pool, 101), -1);
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 101, m[1], 2, owner, &slot, &err), QV_OK);
    assert_true(slot >= 0);
    assert_int_equal(qv_cuda_adapter_pool_find(pool, 101), slot);
    expect_image(pool, slot, a[1], n, "background conversion");
    /* two more versions evict 100 from the device (2 pages each, 4 pages): its image stays */
    for (int v = 2; v < 4; v++)
        assert_int_equal(qv_cuda_adapter_pool_load(pool, 100 + v, m[v], 2, NULL, &err), QV_OK);
    assert_int_equal(qv_cuda_adapter_pool_find(pool, 100), -1);
    assert_true(qv_cuda_adapter_pool_known(pool, 100));
    qv_cuda_adapter_pool_stats(pool, &st);
    const uint64_t fills = st.host_fills_sync + st.host_fills_async, hits = st.host_hits;
    assert_int_equal(qv_cuda_adapter_pool_load(pool, 100, m[0], 2, &s100, &err), QV_OK);
    expect_image(pool, s100, a[0], n, "reloaded from the host tier");
    qv_cuda_adapter_pool_stats(pool, &st);
    assert_int_equal(st.host_fills_sync + st.host_fills_async, fills); /* no conversion */
    assert_int_equal(st.host_hits, hits + 1);
    printf("host tier: %d images, %llu device loads copied from it, %llu conversions in the "
           "background, %llu on the caller, %llu cancelled\n",
           st.host_pages.n_entries, (unsigned long long)st.host_hits,
           (unsigned long long)st.host_fills_async, (unsigned long long)st.host_fills_sync,
           (unsigned long long)st.host_jobs_cancelled);
    /* forget drops a queued conversion and its tier place */
    qv_cuda_adapter_pool_hold_jobs(pool, true);
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 104, m[4], 2, a[4], &slot, &err), QV_OK);
    assert_true(qv_cuda_adapter_pool_known(pool, 104));
    qv_cuda_adapter_pool_forget(pool, a[4]);
    assert_false(qv_cuda_adapter_pool_known(pool, 104));
    qv_cuda_adapter_pool_hold_jobs(pool, false);
    /* larger than the whole tier (9 pages): staged directly, nothing kept on the host */
    float *big = calloc((size_t)5 * 65536 / 2, sizeof(float));
    for (int i = 0; i < 5 * 65536 / 2; i++)
        big[i] = (float)(i % 97) * 0.25f;
    qv_cuda_pool_mat mb[3] = {{big, (int64_t)65536, QV_DTYPE_F32},
                              {big, (int64_t)65536, QV_DTYPE_F32},
                              {big, 5 * 65536 / 2, QV_DTYPE_F32}};
    qv_cuda_adapter_pool_destroy(pool);
    po.pool_bytes = 16 * 65536;
    assert_int_equal(qv_cuda_adapter_pool_create(&po, stream, &pool, &err), QV_OK);
    int sb = -1;
    assert_int_equal(qv_cuda_adapter_pool_prefetch(pool, 200, mb, 3, owner, &sb, &err), QV_OK);
    assert_true(sb >= 0);
    expect_image(pool, sb, big, 65536, "version larger than the tier");
    assert_false(qv_cuda_adapter_pool_find(pool, 200) < 0);
    qv_cuda_adapter_pool_stats(pool, &st);
    assert_int_equal(st.host_pages.n_entries, 0);
    assert_int_equal(st.host_hits, 0);
    qv_cuda_adapter_pool_destroy(pool);
    free(big);
    for (int v = 0; v < 5; v++)
        free(a[v]);
}

static int setup(void **state) {
    (void)state;
    return cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    return cudaStreamDestroy(stream) == cudaSuccess ? 0 : -1;
}
#endif

int main(void) {
    gpu_require_device();
#ifdef QV_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool),
        cmocka_unit_test(test_pool_host_tier),
        cmocka_unit_test(test_decode_bf16),
        cmocka_unit_test(test_prefill_bf16),
        cmocka_unit_test(test_decode_fp16_odd),
        cmocka_unit_test(test_prefill_fp16_odd),
        cmocka_unit_test(test_blend),
        cmocka_unit_test(test_fused_qkv),
        cmocka_unit_test(test_batch_invariance),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
#else
    return 77;
#endif
}
