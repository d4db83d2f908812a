/*
 * test_cuda_ops.c - every op of the CUDA backend against the CPU backend on fresh random
 * inputs. Weights are resident in bf16/fp16 and GEMM inputs are rounded to bf16, so matmul
 * and get_rows are compared with a bf16 tolerance (1e-2 of the output's scale); the fp32 ops
 * (rmsnorm, rope, swiglu, add, kv_store + paged attention) with 1e-5..1e-4. Each comparison
 * prints its worst element. Skips (77) without CUDA or without a device.
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
#include "engine/cuda/backend_cuda.h"

static qv_backend *cpu, *cu;
static uint32_t rng = 20261128u;
/* Host weights stay alive until teardown: the backend's weight map keys on their addresses. */
static void *keep[512];
static int n_keep;

static float *rand_host(size_t n, float scale) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = gpu_randf(&rng) * scale;
    return p;
}
static float *to_dev(const float *h, size_t n) {
    float *d = cu->iface->alloc(cu, n * sizeof(float));
    assert_non_null(d);
    cu->iface->upload(cu, d, h, n * sizeof(float));
    return d;
}
static float *from_dev(const float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    qv_error err = {0};
    assert_int_equal(cu->iface->download(cu, h, d, n * sizeof(float), &err), QV_OK);
    return h;
}
static double absmax(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i]));
    return m;
}
/* |got - want| <= rel * max|want| + rel * |want|, worst element printed. */
static void check(const char *label, const float *got, const float *want, size_t n, double rel) {
    size_t bad = qv_test_compare_f32(label, got, want, n, rel * absmax(want, n), rel);
    if (bad) fail_msg("%s: %zu of %zu elements outside tolerance %.1g", label, bad, n, rel);
}

/* Q8_0 blocks: f16 scale + 32 int8. */
static void *make_q8_0(int rows, int cols) {
    size_t rb = qv_dtype_row_bytes(QV_DTYPE_Q8_0, cols);
    uint8_t *w = malloc(rb * (size_t)rows);
    for (int r = 0; r < rows; r++)
        for (int b = 0; b < cols / 32; b++) {
            uint8_t *blk = w + (size_t)r * rb + (size_t)b * 34;
            uint16_t d = qv_f32_to_f16(0.004f + 0.002f * (gpu_randf(&rng) + 1.0f));
            memcpy(blk, &d, 2);
            for (int i = 0; i < 32; i++)
                blk[2 + i] = (uint8_t)(int8_t)(gpu_randf(&rng) * 127.0f);
        }
    return w;
}

/* acc != 0: matmul_acc onto a random y (y += x·Wᵀ + bias), else matmul. */
static void matmul_case2(enum qv_dtype dt, int rows, int cols, int n, int with_bias, int acc) {
    char label[128];
    snprintf(label, sizeof label, "%s %s %dx%d n=%d%s", acc ? "matmul_acc" : "matmul",
             qv_dtype_name(dt), rows, cols, n, with_bias ? " +bias" : "");
    void *wdata;
    size_t rb;
    if (dt == QV_DTYPE_Q8_0) {
        wdata = make_q8_0(rows, cols);
        rb = qv_dtype_row_bytes(dt, cols);
    } else {
        float *wf = rand_host((size_t)rows * (size_t)cols, 0.1f);
        if (dt == QV_DTYPE_F16) {
            uint16_t *h = malloc((size_t)rows * (size_t)cols * 2);
            for (size_t i = 0; i < (size_t)rows * (size_t)cols; i++)
                h[i] = qv_f32_to_f16(wf[i]);
            free(wf);
            wdata = h;
            rb = (size_t)cols * 2;
        } else {
            wdata = wf;
            rb = (size_t)cols * 4;
        }
    }
    qv_tensor w = {dt, rows, cols, rb, wdata};
    qv_error err = {0};
    assert_int_equal(qv_backend_cuda_add_tensor(cu, &w, dt == QV_DTYPE_F16, &err), QV_OK);
    float *x = rand_host((size_t)n * (size_t)cols, 1.0f);
    float *bias = with_bias ? rand_host((size_t)rows, 1.0f) : NULL;
    float *want = malloc((size_t)n * (size_t)rows * sizeof(float));
    cpu->iface->matmul(cpu, &w, x, n, want, bias);
    float *dx = to_dev(x, (size_t)n * (size_t)cols);
    float *dy;
    if (acc) {
        float *y0 = rand_host((size_t)n * (size_t)rows, 1.0f);
        dy = to_dev(y0, (size_t)n * (size_t)rows);
        for (size_t i = 0; i < (size_t)n * (size_t)rows; i++)
            want[i] += y0[i];
        free(y0);
        cu->iface->matmul_acc(cu, &w, dx, n, dy, bias);
    } else {
        dy = cu->iface->alloc(cu, (size_t)n * (size_t)rows * sizeof(float));
        assert_non_null(dy);
        cu->iface->matmul(cu, &w, dx, n, dy, bias);
    }
    float *got = from_dev(dy, (size_t)n * (size_t)rows);
    check(label, got, want, (size_t)n * (size_t)rows, 1e-2);
    cu->iface->free(cu, dy);
    cu->iface->free(cu, dx);
    free(got);
    free(want);
    free(bias);
    free(x);
    assert_true(n_keep < 512);
    keep[n_keep++] = wdata;
}

static void matmul_case(enum qv_dtype dt, int rows, int cols, int n, int with_bias) {
    matmul_case2(dt, rows, cols, n, with_bias, 0);
}

static void test_matmul(void **state) {
    (void)state;
    /* n <= 8 with cols % 8 == 0 take the warp GEMV, the others cuBLAS */
    matmul_case(QV_DTYPE_F32, 200, 256, 1, 0);
    matmul_case(QV_DTYPE_F32, 300, 2048, 2, 1);
    matmul_case(QV_DTYPE_F32, 96, 512, 37, 1);
    matmul_case(QV_DTYPE_Q8_0, 130, 320, 5, 0);
    matmul_case(QV_DTYPE_F16, 64, 192, 17, 0);
    matmul_case(QV_DTYPE_F16, 70, 8192, 3, 0);
    matmul_case(QV_DTYPE_F32, 50, 100, 4, 0);    /* cols % 8 != 0: cuBLAS at small n */
    matmul_case(QV_DTYPE_F32, 8, 16384, 300, 0); /* more rows than the GEMM scratch: chunks */
    matmul_case2(QV_DTYPE_F32, 128, 256, 1, 1, 1);
    matmul_case2(QV_DTYPE_F32, 128, 256, 40, 0, 1);
}

/* Three projections of one input (q/k/v-like), n = 3: the backend runs them as one grouped
 * GEMV launch; each output must match the CPU. */
static void test_gemv_group(void **state) {
    (void)state;
    const int cols = 512, n = 3;
    const int rows[3] = {256, 64, 64};
    qv_error err = {0};
    float *x = rand_host((size_t)n * cols, 1.0f);
    float *dx = to_dev(x, (size_t)n * cols);
    float *dy[3], *want[3];
    qv_tensor w[3];
    for (int i = 0; i < 3; i++) {
        float *wf = rand_host((size_t)rows[i] * cols, 0.1f);
        w[i] = (qv_tensor){QV_DTYPE_F32, rows[i], cols, (size_t)cols * 4, wf};
        assert_int_equal(qv_backend_cuda_add_tensor(cu, &w[i], 0, &err), QV_OK);
        keep[n_keep++] = wf;
        want[i] = malloc(sizeof(float) * (size_t)n * rows[i]);
        cpu->iface->matmul(cpu, &w[i], x, n, want[i], NULL);
        dy[i] = cu->iface->alloc(cu, sizeof(float) * (size_t)n * rows[i]);
    }
    for (int i = 0; i < 3; i++)
        cu->iface->matmul(cu, &w[i], dx, n, dy[i], NULL);
    for (int i = 0; i < 3; i++) {
        float *got = from_dev(dy[i], (size_t)n * rows[i]);
        char label[64];
        snprintf(label, sizeof label, "grouped gemv part %d (%dx%d)", i, rows[i], cols);
        check(label, got, want[i], (size_t)n * rows[i], 1e-2);
        free(got);
        free(want[i]);
    }
    for (int i = 2; i >= 0; i--)
        cu->iface->free(cu, dy[i]);
    cu->iface->free(cu, dx);
    free(x);
}

static int pdl_on; /* test_pdl: every set_tuning keeps programmatic dependent launch on */
static void set_tuning(int gemv_new, int norm, int swiglu, int rope_kv, int kv_bf16) {
    const qv_cuda_tuning t = {gemv_new, norm, swiglu, rope_kv, kv_bf16, pdl_on};
    qv_backend_cuda_set_tuning(cu, &t);
}
static long launches(void) {
    qv_cuda_stats st;
    qv_backend_cuda_stats(cu, &st);
    return st.launches;
}

/* The new GEMV (QV_CUDA_GEMV=new): n = 1..8, rows not a multiple of the block's 4 rows, cols of
 * one partial pass (8, 200) up to several passes with a half pass left (2048 + 8, 8192), beta 1,
 * fp16, and a grouped launch whose segments end mid-block. */
static void test_gemv_new(void **state) {
    (void)state;
    set_tuning(1, 0, 0, 0, 0);
    for (int n = 1; n <= 8; n++)
        matmul_case(QV_DTYPE_F32, 37 + n, 512, n, n == 3);
    matmul_case(QV_DTYPE_F32, 5, 8, 1, 0);
    matmul_case(QV_DTYPE_F32, 131, 200, 2, 0);
    matmul_case(QV_DTYPE_F32, 64, 2056, 1, 0);
    matmul_case(QV_DTYPE_F32, 33, 8192, 8, 0);
    matmul_case(QV_DTYPE_Q8_0, 130, 4096 + 2048, 4, 0);
    matmul_case(QV_DTYPE_F16, 70, 8192, 3, 0);
    matmul_case(QV_DTYPE_F16, 71, 1032, 7, 0);
    matmul_case2(QV_DTYPE_F32, 129, 256, 1, 1, 1);
    matmul_case2(QV_DTYPE_F32, 66, 4096, 6, 0, 1);
    test_gemv_group(state);
    set_tuning(0, 0, 0, 0, 0);
}

/* One layer's worth of the fused ops against the CPU, n tokens, dim -> q/k/v (rows qr, kr, kr)
 * and dim -> gate/up (ff) -> down: rmsnorm output (F32, as later readers see it), q/k/v, the
 * SwiGLU output and the residual after down (matmul_acc). With the fusions on, the step must
 * also take fewer launches than without. */
static void fused_layer_case(int n, int dim, int qr, int kr, int ff, int norm, int swiglu,
                             long *n_launch) {
    char label[160];
    qv_error err = {0};
    const int rows[3] = {qr, kr, kr};
    float *x = rand_host((size_t)n * dim, 2.0f), *nw = rand_host((size_t)dim, 1.0f);
    float *res = rand_host((size_t)n * dim, 1.0f);
    qv_tensor w[6];
    const int wr[6] = {qr, kr, kr, ff, ff, dim}, wc[6] = {dim, dim, dim, dim, dim, ff};
    for (int i = 0; i < 6; i++) {
        float *wf = rand_host((size_t)wr[i] * (size_t)wc[i], 0.1f);
        w[i] = (qv_tensor){QV_DTYPE_F32, wr[i], wc[i], (size_t)wc[i] * 4, wf};
        assert_int_equal(qv_backend_cuda_add_tensor(cu, &w[i], 0, &err), QV_OK);
        assert_true(n_keep < 512);
        keep[n_keep++] = wf;
    }
    /* CPU reference */
    float *y = malloc(sizeof(float) * (size_t)n * dim);
    float *qkv[3], *gate = malloc(sizeof(float) * (size_t)n * ff),
                   *up = malloc(sizeof(float) * (size_t)n * ff);
    cpu->iface->rmsnorm(cpu, x, nw, n, dim, 1e-5f, y);
    for (int i = 0; i < 3; i++) {
        qkv[i] = malloc(sizeof(float) * (size_t)n * rows[i]);
        cpu->iface->matmul(cpu, &w[i], y, n, qkv[i], NULL);
    }
    cpu->iface->matmul(cpu, &w[3], y, n, gate, NULL);
    cpu->iface->matmul(cpu, &w[4], y, n, up, NULL);
    cpu->iface->swiglu(cpu, gate, up, gate, (size_t)n * ff);
    float *down = malloc(sizeof(float) * (size_t)n * dim);
    cpu->iface->matmul(cpu, &w[5], gate, n, down, NULL);
    for (size_t i = 0; i < (size_t)n * dim; i++)
        down[i] += res[i];
    /* device: the forward pass's op order */
    float *dx = to_dev(x, (size_t)n * dim), *dres = to_dev(res, (size_t)n * dim);
    float *dy = cu->iface->alloc(cu, sizeof(float) * (size_t)n * dim);
    float *dqkv[3];
    for (int i = 0; i < 3; i++)
        dqkv[i] = cu->iface->alloc(cu, sizeof(float) * (size_t)n * rows[i]);
    float *dg = cu->iface->alloc(cu, sizeof(float) * (size_t)n * ff);
    float *du = cu->iface->alloc(cu, sizeof(float) * (size_t)n * ff);
    set_tuning(norm || swiglu, norm, swiglu, 0, 0);
    const long l0 = launches();
    cu->iface->step_begin(cu, 0);
    cu->iface->rmsnorm(cu, dx, nw, n, dim, 1e-5f, dy);
    for (int i = 0; i < 3; i++)
        cu->iface->matmul(cu, &w[i], dy, n, dqkv[i], NULL);
    cu->iface->rmsnorm(cu, dx, nw, n, dim, 1e-5f, dy);
    cu->iface->matmul(cu, &w[3], dy, n, dg, NULL);
    cu->iface->matmul(cu, &w[4], dy, n, du, NULL);
    cu->iface->swiglu(cu, dg, du, dg, (size_t)n * ff);
    cu->iface->matmul_acc(cu, &w[5], dg, n, dres, NULL);
    float *gy = from_dev(dy, (size_t)n * dim); /* download ends the step */
    *n_launch = launches() - l0;
    set_tuning(0, 0, 0, 0, 0);
    snprintf(label, sizeof label, "n=%d dim=%d norm=%d swiglu=%d: rmsnorm output", n, dim, norm,
             swiglu);
    check(label, gy, y, (size_t)n * dim, 1e-5);
    for (int i = 0; i < 3; i++) {
        float *got = from_dev(dqkv[i], (size_t)n * rows[i]);
        snprintf(label, sizeof label, "n=%d norm=%d: projection %d (%dx%d)", n, norm, i, rows[i],
                 dim);
        check(label, got, qkv[i], (size_t)n * rows[i], 1e-2);
        free(got);
    }
    float *gg = from_dev(dg, (size_t)n * ff), *gd = from_dev(dres, (size_t)n * dim);
    snprintf(label, sizeof label, "n=%d ff=%d swiglu=%d: silu(gate)*up", n, ff, swiglu);
    check(label, gg, gate, (size_t)n * ff, 1e-2);
    snprintf(label, sizeof label, "n=%d ff=%d swiglu=%d: residual + down", n, ff, swiglu);
    check(label, gd, down, (size_t)n * dim, 1e-2);
    free(gg), free(gd), free(gy);
    cu->iface->free(cu, du);
    cu->iface->free(cu, dg);
    for (int i = 2; i >= 0; i--)
        cu->iface->free(cu, dqkv[i]);
    cu->iface->free(cu, dy);
    cu->iface->free(cu, dres);
    cu->iface->free(cu, dx);
    for (int i = 0; i < 3; i++)
        free(qkv[i]);
    free(x), free(nw), free(res), free(y), free(gate), free(up), free(down);
}

static void test_fused_norm_swiglu(void **state) {
    (void)state;
    static const int ns[3] = {1, 3, 8};
    for (int i = 0; i < 3; i++) {
        long plain = 0, fused = 0, part = 0;
        /* ff = 705: odd rows (a half-filled last SwiGLU block), down then takes cuBLAS */
        const int ff = i == 1 ? 705 : 712;
        fused_layer_case(ns[i], 256, 202, 34, ff, 0, 0, &plain);
        fused_layer_case(ns[i], 256, 202, 34, ff, 1, 0, &part);
        fused_layer_case(ns[i], 256, 202, 34, ff, 1, 1, &fused);
        printf("n=%d: launches plain %ld, norm fused %ld, norm+swiglu fused %ld\n", ns[i], plain,
               part, fused);
        if (!(part < plain && fused < part))
            fail_msg("fusions did not remove launches (%ld, %ld, %ld)", plain, part, fused);
    }
    long a = 0;
    fused_layer_case(2, 2048, 2048, 512, 1024, 1, 1, &a); /* dim of the ~1B config */
}

static void test_rope_kv_fused(void **state);

/* Programmatic dependent launch (QV_CUDA_PDL=1): the chained ops above with every kernel
 * allowed to start while its predecessor drains; a missing wait would show as wrong values. */
static void test_pdl(void **state) {
    pdl_on = 1;
    set_tuning(0, 0, 0, 0, 0);
    matmul_case(QV_DTYPE_F32, 300, 2048, 2, 1);
    matmul_case2(QV_DTYPE_F32, 128, 256, 1, 1, 1);
    test_gemv_new(state);
    test_fused_norm_swiglu(state);
    test_rope_kv_fused(state);
    pdl_on = 0;
    set_tuning(0, 0, 0, 0, 0);
}

static void test_get_rows_gather_argmax(void **state) {
    (void)state;
    const int rows = 300, cols = 96, n = 9;
    float *table = rand_host((size_t)rows * cols, 2.0f);
    qv_tensor t = {QV_DTYPE_F32, rows, cols, (size_t)cols * 4, table};
    qv_error err = {0};
    assert_int_equal(qv_backend_cuda_add_tensor(cu, &t, 0, &err), QV_OK);
    int32_t ids[9] = {0, 299, 5, 5, 123, 77, 1, 298, 150};
    float *want = malloc(sizeof(float) * n * cols);
    cpu->iface->get_rows(cpu, &t, ids, n, want);
    float *d = cu->iface->alloc(cu, sizeof(float) * n * cols);
    cu->iface->get_rows(cu, &t, ids, n, d);
    float *got = from_dev(d, (size_t)n * cols);
    /* bf16 keeps 8 significant bits: round-to-nearest relative error <= 2^-8 */
    size_t bad = qv_test_compare_f32("get_rows", got, want, (size_t)n * cols, 0, 1.0 / 256);
    assert_int_equal(bad, 0);

    /* gather rows 8, 2, 2 of the gathered block and take their argmax */
    int32_t idx[3] = {8, 2, 2};
    float *g = cu->iface->alloc(cu, sizeof(float) * 3 * cols);
    cu->iface->gather_rows(cu, d, idx, 3, cols, g);
    float *gh = from_dev(g, 3 * (size_t)cols);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(gh + (size_t)i * cols, got + (size_t)idx[i] * cols,
                            sizeof(float) * cols);
    int32_t *am = cu->iface->alloc(cu, 3 * sizeof(int32_t));
    cu->iface->argmax(cu, g, 3, cols, am);
    int32_t amh[3];
    assert_int_equal(cu->iface->download(cu, amh, am, sizeof amh, &err), QV_OK);
    for (int i = 0; i < 3; i++) {
        int want_i = gpu_argmax(gh + (size_t)i * cols, cols, NULL);
        if (amh[i] != want_i) fail_msg("argmax row %d: got %d want %d", i, amh[i], want_i);
    }
    cu->iface->free(cu, am);
    cu->iface->free(cu, g);
    cu->iface->free(cu, d);
    free(gh);
    free(got);
    free(want);
    keep[n_keep++] = table;
}

static void test_rmsnorm_rope_swiglu_add(void **state) {
    (void)state;
    qv_error err = {0};
    /* rmsnorm */
    {
        const int n = 5, dim = 576;
        float *x = rand_host((size_t)n * dim, 3.0f), *w = rand_host(dim, 1.0f);
        float *want = malloc(sizeof(float) * n * dim);
        cpu->iface->rmsnorm(cpu, x, w, n, dim, 1e-5f, want);
        float *dx = to_dev(x, (size_t)n * dim);
        cu->iface->rmsnorm(cu, dx, w, n, dim, 1e-5f, dx); /* in place, host weight staged */
        float *got = from_dev(dx, (size_t)n * dim);
        check("rmsnorm", got, want, (size_t)n * dim, 1e-5);
        cu->iface->free(cu, dx);
        free(x), free(w), free(want), free(got);
    }
    /* rope at large positions */
    for (int hd = 16; hd <= 128; hd *= 2) {
        const int n = 7, nh = 4;
        float *x = rand_host((size_t)n * nh * hd, 1.0f);
        float *inv = malloc(sizeof(float) * (size_t)hd / 2);
        for (int i = 0; i < hd / 2; i++)
            inv[i] = powf(10000.0f, -2.0f * (float)i / (float)hd);
        int32_t pos[7] = {0, 1, 17, 255, 1000, 4097, 8191};
        /* q then k at the same positions: the backend merges them into one launch */
        float *x2 = rand_host((size_t)n * 2 * hd, 1.0f);
        float *dx = to_dev(x, (size_t)n * nh * hd), *dx2 = to_dev(x2, (size_t)n * 2 * hd);
        cpu->iface->rope(cpu, x, n, nh, hd, pos, inv);
        cpu->iface->rope(cpu, x2, n, 2, hd, pos, inv);
        cu->iface->rope(cu, dx, n, nh, hd, pos, inv);
        cu->iface->rope(cu, dx2, n, 2, hd, pos, inv);
        float *got = from_dev(dx, (size_t)n * nh * hd), *got2 = from_dev(dx2, (size_t)n * 2 * hd);
        char label[64];
        snprintf(label, sizeof label, "rope head_dim %d (q)", hd);
        check(label, got, x, (size_t)n * nh * hd, 1e-5);
        snprintf(label, sizeof label, "rope head_dim %d (k)", hd);
        check(label, got2, x2, (size_t)n * 2 * hd, 1e-5);
        cu->iface->free(cu, dx2);
        cu->iface->free(cu, dx);
        free(x), free(x2), free(inv), free(got), free(got2);
    }
    /* swiglu (out aliases gate) and add */
    {
        const size_t n = 100003;
        float *g = rand_host(n, 8.0f), *u = rand_host(n, 2.0f);
        float *dg = to_dev(g, n), *du = to_dev(u, n);
        cpu->iface->swiglu(cpu, g, u, g, n);
        cu->iface->swiglu(cu, dg, du, dg, n);
        float *got = from_dev(dg, n);
        check("swiglu", got, g, n, 1e-6);
        cpu->iface->add(cpu, g, u, n);
        cu->iface->add(cu, dg, du, n);
        free(got);
        got = from_dev(dg, n);
        check("add", got, g, n, 1e-6);
        cu->iface->free(cu, du);
        cu->iface->free(cu, dg);
        free(g), free(u), free(got);
    }
    assert_int_equal(cu->iface->download(cu, NULL, NULL, 0, &err), QV_OK);
}

/* Paged attention: 3 sequences (600, 37, 5 tokens) with shuffled pages, GQA 8/2, a batch
 * mixing decode tokens, a prefill chunk and a long context (several 256-key chunks). */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = qv_bf16_to_f32(qv_f32_to_bf16(x[i]));
}

/* kv_bf16: the device pool holds bf16 K/V (QV_CUDA_KV_BF16). round_kv: K/V are rounded to bf16
 * before both backends store them, so the device's bf16 copy is exact and the comparison keeps
 * the fp32 tolerance; otherwise bf16 storage error is allowed (1e-2). */
static void attention_case2(int head_dim, int window, int kv_bf16, int round_kv) {
    const int n_layers = 2, n_pages = 256, page_size = 4, nh = 8, nkv = 2, layer = 1;
    const int kv_dim = nkv * head_dim;
    const size_t pool_elems = (size_t)n_layers * n_pages * page_size * kv_dim;
    qv_kv_pool hp = {n_layers, n_pages, page_size, nkv, head_dim, NULL, NULL, 4};
    qv_kv_pool dp = hp;
    dp.elem_bytes = kv_bf16 ? 2 : 4;
    hp.k = cpu->iface->alloc(cpu, pool_elems * 4);
    hp.v = cpu->iface->alloc(cpu, pool_elems * 4);
    /* a bf16 pool needs half the bytes: each half-size pool is followed by a guard block (the
     * arena is a bump allocator) that must come back untouched */
    enum { GUARD = 4096 };
    dp.k = cu->iface->alloc(cu, pool_elems * (size_t)(kv_bf16 ? 2 : 4));
    float *guard_want[2] = {rand_host(GUARD, 1.0f), rand_host(GUARD, 1.0f)};
    float *guard_k = to_dev(guard_want[0], GUARD);
    dp.v = cu->iface->alloc(cu, pool_elems * (size_t)(kv_bf16 ? 2 : 4));
    float *guard_v = to_dev(guard_want[1], GUARD);
    assert_true(hp.k && hp.v && dp.k && dp.v);
    static const int lens[3] = {600, 37, 5};
    int32_t perm[256];
    for (int i = 0; i < n_pages; i++)
        perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)((gpu_randf(&rng) + 1.0f) * 0.5f * (float)(i + 1)) % (i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *tables[3];
    int next = 0;
    for (int s = 0; s < 3; s++) {
        int np = (lens[s] + page_size - 1) / page_size;
        tables[s] = malloc(sizeof(int32_t) * (size_t)np);
        for (int p = 0; p < np; p++)
            tables[s][p] = perm[next++];
    }
    /* store every position's K/V (in 2 calls per sequence, as prefill chunks would) */
    for (int s = 0; s < 3; s++) {
        for (int half = 0; half < 2; half++) {
            int p0 = half ? lens[s] / 2 : 0, p1 = half ? lens[s] : lens[s] / 2;
            int n = p1 - p0;
            if (n <= 0) continue;
            float *k = rand_host((size_t)n * kv_dim, 1.0f),
                  *v = rand_host((size_t)n * kv_dim, 1.0f);
            if (round_kv) {
                round_bf16(k, (size_t)n * kv_dim);
                round_bf16(v, (size_t)n * kv_dim);
            }
            int32_t *pg = malloc(sizeof(int32_t) * (size_t)n),
                    *off = malloc(sizeof(int32_t) * (size_t)n);
            for (int i = 0; i < n; i++) {
                pg[i] = tables[s][(p0 + i) / page_size];
                off[i] = (p0 + i) % page_size;
            }
            cpu->iface->kv_store(cpu, &hp, layer, k, v, n, pg, off);
            float *dk = to_dev(k, (size_t)n * kv_dim), *dv = to_dev(v, (size_t)n * kv_dim);
            set_tuning(0, 0, 0, 0, kv_bf16);
            cu->iface->kv_store(cu, &dp, layer, dk, dv, n, pg, off);
            set_tuning(0, 0, 0, 0, 0);
            cu->iface->free(cu, dv);
            cu->iface->free(cu, dk);
            free(k), free(v), free(pg), free(off);
        }
    }
    /* batch: seq0 positions 597..599, seq1 30..36, seq2 4 */
    int32_t tok_seq[11], tok_pos[11];
    int n = 0;
    for (int p = 597; p < 600; p++)
        tok_seq[n] = 0, tok_pos[n++] = p;
    for (int p = 30; p < 37; p++)
        tok_seq[n] = 1, tok_pos[n++] = p;
    tok_seq[n] = 2, tok_pos[n++] = 4;
    const int32_t *pt[3] = {tables[0], tables[1], tables[2]};
    qv_attn_batch ab = {n,  tok_seq, tok_pos,  3,      pt,
                        nh, nkv,     head_dim, window, 1.0f / sqrtf((float)head_dim)};
    const size_t qn = (size_t)n * nh * head_dim;
    float *q = rand_host(qn, 1.0f);
    float *want = malloc(qn * sizeof(float));
    cpu->iface->attention(cpu, &hp, layer, &ab, q, want);
    float *dq = to_dev(q, qn);
    float *dout = cu->iface->alloc(cu, qn * sizeof(float));
    set_tuning(0, 0, 0, 0, kv_bf16);
    cu->iface->attention(cu, &dp, layer, &ab, dq, dout);
    float *got = from_dev(dout, qn);
    set_tuning(0, 0, 0, 0, 0);
    char label[96];
    snprintf(label, sizeof label, "attention head_dim %d window %d kv %s%s", head_dim, window,
             kv_bf16 ? "bf16" : "f32", round_kv ? " (inputs bf16-exact)" : "");
    check(label, got, want, qn, kv_bf16 && !round_kv ? 1e-2 : 1e-4);
    for (int i = 0; i < 2; i++) {
        float *gg = from_dev(i ? guard_v : guard_k, GUARD);
        if (memcmp(gg, guard_want[i], GUARD * sizeof(float)) != 0)
            fail_msg("%s: the store wrote past the %s pool", label, i ? "V" : "K");
        free(gg);
        free(guard_want[i]);
    }
    cu->iface->free(cu, dout);
    cu->iface->free(cu, dq);
    cu->iface->free(cu, guard_v);
    cu->iface->free(cu, dp.v);
    cu->iface->free(cu, guard_k);
    cu->iface->free(cu, dp.k);
    cpu->iface->free(cpu, hp.k);
    cpu->iface->free(cpu, hp.v);
    for (int s = 0; s < 3; s++)
        free(tables[s]);
    free(q), free(want), free(got);
}

static void attention_case(int head_dim, int window) { attention_case2(head_dim, window, 0, 0); }

/* A batch of more tokens than a grid's y dimension holds (65535): the launcher splits it, each
 * launch over its own tokens' rows. One sequence of 8 positions on 2 shuffled pages, every
 * token at position t % 8, so each attends to a different prefix. */
static void test_attention_many_tokens(void **state) {
    (void)state;
    const int n = 65535 + 37, hd = 16, nh = 2, nkv = 1, page_size = 4, n_pages = 4;
    const size_t pool_elems = (size_t)n_pages * page_size * nkv * hd;
    qv_kv_pool hp = {1, n_pages, page_size, nkv, hd, NULL, NULL, 4};
    qv_kv_pool dp = hp;
    hp.k = cpu->iface->alloc(cpu, pool_elems * 4);
    hp.v = cpu->iface->alloc(cpu, pool_elems * 4);
    dp.k = cu->iface->alloc(cu, pool_elems * 4);
    dp.v = cu->iface->alloc(cu, pool_elems * 4);
    assert_true(hp.k && hp.v && dp.k && dp.v);
    const int32_t table[2] = {3, 1};
    int32_t pg[8], off[8];
    for (int i = 0; i < 8; i++)
        pg[i] = table[i / page_size], off[i] = i % page_size;
    float *k = rand_host((size_t)8 * hd, 1.0f), *v = rand_host((size_t)8 * hd, 1.0f);
    cpu->iface->kv_store(cpu, &hp, 0, k, v, 8, pg, off);
    float *dk = to_dev(k, (size_t)8 * hd), *dv = to_dev(v, (size_t)8 * hd);
    set_tuning(0, 0, 0, 0, 0);
    cu->iface->kv_store(cu, &dp, 0, dk, dv, 8, pg, off);
    int32_t *tok_seq = calloc((size_t)n, sizeof(int32_t)), *tok_pos = malloc((size_t)n * 4);
    for (int t = 0; t < n; t++)
        tok_pos[t] = t % 8;
    const int32_t *pt[1] = {table};
    qv_attn_batch ab = {n, tok_seq, tok_pos, 1, pt, nh, nkv, hd, 0, 0.25f};
    const size_t qn = (size_t)n * nh * hd;
    float *q = rand_host(qn, 1.0f), *want = malloc(qn * sizeof(float));
    cpu->iface->attention(cpu, &hp, 0, &ab, q, want);
    float *dq = to_dev(q, qn), *dout = cu->iface->alloc(cu, qn * sizeof(float));
    cu->iface->attention(cu, &dp, 0, &ab, dq, dout);
    float *got = from_dev(dout, qn);
    check("attention, 65572 tokens in one batch", got, want, qn, 1e-4);
    /* the last launch's rows are there too (not left at the allocation's contents) */
    const size_t last = (size_t)(n - 1) * nh * hd;
    assert_true(fabsf(got[last] - want[last]) <= 1e-4f * (1.0f + fabsf(want[last])));
    cu->iface->free(cu, dout);
    cu->iface->free(cu, dq);
    cu->iface->free(cu, dv);
    cu->iface->free(cu, dk);
    cu->iface->free(cu, dp.v);
    cu->iface->free(cu, dp.k);
    cpu->iface->free(cpu, hp.k);
    cpu->iface->free(cpu, hp.v);
    free(k), free(v), free(tok_seq), free(tok_pos), free(q), free(want), free(got);
}

static void test_attention(void **state) {
    (void)state;
    attention_case(16, 0);
    attention_case(64, 0);
    attention_case(128, 0);
    attention_case(256, 0);
    attention_case(64, 100);
}

/* bf16 K/V pages (QV_CUDA_KV_BF16=1) against the CPU attention. */
static void test_attention_kv_bf16(void **state) {
    (void)state;
    static const int hds[5] = {16, 64, 128, 256, 64};
    for (int i = 0; i < 5; i++) {
        attention_case2(hds[i], i == 4 ? 100 : 0, 1, 1);
        attention_case2(hds[i], i == 4 ? 100 : 0, 1, 0);
    }
}

/* RoPE of q and k fused with the KV store (QV_CUDA_FUSE_ROPE_KV=1), F32 and bf16 pools: a
 * 12-token prefill chunk then 2 decode tokens of one sequence on shuffled pages; rotated q/k and
 * the attention output against the CPU; the fused step takes one launch fewer. */
static void rope_kv_case(int head_dim, int kv_bf16) {
    const int nh = 4, nkv = 2, page_size = 4, n_pages = 8, kv_dim = nkv * head_dim;
    const size_t pool_elems = (size_t)n_pages * page_size * kv_dim;
    qv_kv_pool hp = {1, n_pages, page_size, nkv, head_dim, NULL, NULL, 4}, dp = hp;
    dp.elem_bytes = kv_bf16 ? 2 : 4;
    hp.k = cpu->iface->alloc(cpu, pool_elems * 4);
    hp.v = cpu->iface->alloc(cpu, pool_elems * 4);
    dp.k = cu->iface->alloc(cu, pool_elems * (size_t)(kv_bf16 ? 2 : 4));
    dp.v = cu->iface->alloc(cu, pool_elems * (size_t)(kv_bf16 ? 2 : 4));
    assert_true(hp.k && hp.v && dp.k && dp.v);
    static const int32_t table[4] = {5, 2, 7, 0};
    const int32_t *pt[1] = {table};
    float *inv = malloc(sizeof(float) * (size_t)head_dim / 2);
    for (int i = 0; i < head_dim / 2; i++)
        inv[i] = powf(500000.0f, -2.0f * (float)i / (float)head_dim);
    keep[n_keep++] = inv; /* staged by address within a step */
    for (int chunk = 0; chunk < 3; chunk++) {
        const int p0 = chunk == 0 ? 0 : 11 + chunk, n = chunk == 0 ? 12 : 1;
        int32_t pos[12], seq[12], pg[12], off[12];
        for (int i = 0; i < n; i++) {
            pos[i] = p0 + i, seq[i] = 0;
            pg[i] = table[(p0 + i) / page_size], off[i] = (p0 + i) % page_size;
        }
        const size_t qn = (size_t)n * nh * head_dim, kn = (size_t)n * kv_dim;
        float *q = rand_host(qn, 1.0f), *k = rand_host(kn, 1.0f), *v = rand_host(kn, 1.0f);
        float *dq = to_dev(q, qn), *dk = to_dev(k, kn), *dv = to_dev(v, kn);
        float *dout = cu->iface->alloc(cu, qn * sizeof(float));
        qv_attn_batch ab = {n,  seq, pos,      1, pt,
                            nh, nkv, head_dim, 0, 1.0f / sqrtf((float)head_dim)};
        float *want = malloc(qn * sizeof(float));
        cpu->iface->rope(cpu, q, n, nh, head_dim, pos, inv);
        cpu->iface->rope(cpu, k, n, nkv, head_dim, pos, inv);
        cpu->iface->kv_store(cpu, &hp, 0, k, v, n, pg, off);
        cpu->iface->attention(cpu, &hp, 0, &ab, q, want);
        set_tuning(0, 0, 0, 1, kv_bf16);
        const long l0 = launches();
        cu->iface->step_begin(cu, 0);
        cu->iface->rope(cu, dq, n, nh, head_dim, pos, inv);
        cu->iface->rope(cu, dk, n, nkv, head_dim, pos, inv);
        cu->iface->kv_store(cu, &dp, 0, dk, dv, n, pg, off);
        cu->iface->attention(cu, &dp, 0, &ab, dq, dout);
        float *got = from_dev(dout, qn);
        const long nl = launches() - l0;
        set_tuning(0, 0, 0, 0, 0);
        float *gq = from_dev(dq, qn), *gk = from_dev(dk, kn);
        char label[96];
        snprintf(label, sizeof label, "rope+kv fused hd %d kv %s chunk %d: q", head_dim,
                 kv_bf16 ? "bf16" : "f32", chunk);
        check(label, gq, q, qn, 1e-5);
        snprintf(label, sizeof label, "rope+kv fused hd %d kv %s chunk %d: k", head_dim,
                 kv_bf16 ? "bf16" : "f32", chunk);
        check(label, gk, k, kn, 1e-5);
        snprintf(label, sizeof label, "rope+kv fused hd %d kv %s chunk %d: attention", head_dim,
                 kv_bf16 ? "bf16" : "f32", chunk);
        check(label, got, want, qn, kv_bf16 ? 1e-2 : 1e-4);
        if (nl != 2) fail_msg("rope+kv fused step: %ld launches, want 2", nl);
        cu->iface->free(cu, dout);
        cu->iface->free(cu, dv);
        cu->iface->free(cu, dk);
        cu->iface->free(cu, dq);
        free(q), free(k), free(v), free(want), free(got), free(gq), free(gk);
    }
    cu->iface->free(cu, dp.v);
    cu->iface->free(cu, dp.k);
    cpu->iface->free(cpu, hp.k);
    cpu->iface->free(cpu, hp.v);
}

static void test_rope_kv_fused(void **state) {
    (void)state;
    for (int hd = 32; hd <= 128; hd *= 2) {
        rope_kv_case(hd, 0);
        rope_kv_case(hd, 1);
    }
}

static int setup(void **state) {
    (void)state;
    qv_error err = {0};
    if (qv_backend_cpu_create(2, &cpu, &err) != QV_OK) return -1;
    cu = gpu_cuda_empty((size_t)128 << 20, (size_t)256 << 20);
    return cu ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    if (cu) cu->iface->destroy(cu);
    if (cpu) cpu->iface->destroy(cpu);
    for (int i = 0; i < n_keep; i++)
        free(keep[i]);
    return 0;
}
#endif

int main(void) {
    gpu_require_device();
#ifdef QV_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_gemv_group),
        cmocka_unit_test(test_get_rows_gather_argmax),
        cmocka_unit_test(test_rmsnorm_rope_swiglu_add),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_many_tokens),
        cmocka_unit_test(test_gemv_new),
        cmocka_unit_test(test_fused_norm_swiglu),
        cmocka_unit_test(test_attention_kv_bf16),
        cmocka_unit_test(test_rope_kv_fused),
        cmocka_unit_test(test_pdl),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
#else
    return 77;
#endif
}
