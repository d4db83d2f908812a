/*
 * test_lora_kernels.c - the segmented LoRA shrink/expand kernels (engine/cpu/lora_cpu.c).
 *
 * Against a double-precision reference: segments of ranks 1..64 (incl. empty segments and
 * lora_B bias), n_in / n_out not multiples of the vector or block widths; results within 1e-5
 * of the largest output. Batch invariance: a row computed inside a 9-segment batch on 2 threads is
 * bitwise equal to the same row computed alone on 1 thread. 16-bit weights (F16, BF16): bitwise
 * equal to the F32 kernels on the widened weights (AVX2 and portable paths), so within the same
 * tolerance of the reference. qv__lora_apply (fused, one pool run) is bitwise equal to shrink +
 * expand, for several projections sharing one call, on both its fused and its two-run paths.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/cpu/lora_cpu.h"
#include "test_util.h"

static uint32_t rng = 7;
static float frand(void) {
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / (float)(1u << 24) * 2.0f - 1.0f;
}

static float *rand_arr(size_t n) {
    float *a = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        a[i] = frand();
    return a;
}

enum { N_IN = 203, N_OUT = 301, N_SEG = 9 };

static void test_against_reference(void **state) {
    (void)state;
    static const int ranks[N_SEG] = {1, 8, 3, 16, 64, 2, 8, 5, 33};
    static const int lens[N_SEG] = {1, 7, 0, 1, 12, 3, 1, 2, 4};
    qv__lora_seg segs[N_SEG];
    int T = 0;
    for (int s = 0; s < N_SEG; s++) {
        segs[s] = (qv__lora_seg){.t0 = T,
                                 .n = lens[s],
                                 .rank = ranks[s],
                                 .scale = 0.5f + 0.25f * (float)s,
                                 .a = rand_arr((size_t)ranks[s] * N_IN),
                                 .b = rand_arr((size_t)N_OUT * (size_t)ranks[s]),
                                 .b_bias = s % 3 == 0 ? rand_arr(N_OUT) : NULL};
        T += lens[s];
    }
    float *x = rand_arr((size_t)T * N_IN);
    float *y0 = rand_arr((size_t)T * N_OUT);
    float *y = malloc(sizeof(float) * (size_t)T * N_OUT);
    float *ref = malloc(sizeof(float) * (size_t)T * N_OUT);
    memcpy(y, y0, sizeof(float) * (size_t)T * N_OUT);
    qv_backend *be = NULL;
    qv_error err = {0};
    assert_int_equal(qv_backend_cpu_create(2, &be, &err), QV_OK);
    float *tmp = malloc(sizeof(float) * qv__lora_tmp_floats(segs, N_SEG));
    qv__lora_shrink(be, segs, N_SEG, x, N_IN, N_IN, tmp);
    qv__lora_expand(be, segs, N_SEG, tmp, N_OUT, y, N_OUT);
    for (int s = 0; s < N_SEG; s++) {
        const qv__lora_seg *g = &segs[s];
        for (int t = g->t0; t < g->t0 + g->n; t++) {
            double z[64];
            for (int r = 0; r < g->rank; r++) {
                double acc = 0;
                for (int i = 0; i < N_IN; i++)
                    acc += (double)x[(size_t)t * N_IN + i] * (double)g->a[(size_t)r * N_IN + i];
                z[r] = acc;
            }
            for (int o = 0; o < N_OUT; o++) {
                double acc = 0;
                for (int r = 0; r < g->rank; r++)
                    acc += (double)g->b[(size_t)o * g->rank + r] * z[r];
                if (g->b_bias) acc += (double)g->b_bias[o];
                ref[(size_t)t * N_OUT + o] =
                    (float)((double)y0[(size_t)t * N_OUT + o] + (double)g->scale * acc);
            }
        }
    }
    double scale = 0; /* tolerance relative to the largest output (sums cancel) */
    for (size_t i = 0; i < (size_t)T * N_OUT; i++)
        scale = fmax(scale, fabs((double)ref[i]));
    assert_int_equal(
        qv_test_compare_f32("lora shrink+expand", y, ref, (size_t)T * N_OUT, 1e-5 * scale, 1e-5),
        0);

    /* Batch invariance: each row again, alone, on a 1-thread backend: bitwise equal. */
    qv_backend *be1 = NULL;
    assert_int_equal(qv_backend_cpu_create(1, &be1, &err), QV_OK);
    float one[N_OUT];
    for (int s = 0; s < N_SEG; s++) {
        for (int t = segs[s].t0; t < segs[s].t0 + segs[s].n; t++) {
            qv__lora_seg g = segs[s];
            g.t0 = 0;
            g.n = 1;
            memcpy(one, y0 + (size_t)t * N_OUT, sizeof(one));
            qv__lora_shrink(be1, &g, 1, x + (size_t)t * N_IN, N_IN, N_IN, tmp);
            qv__lora_expand(be1, &g, 1, tmp, N_OUT, one, N_OUT);
            assert_memory_equal(one, y + (size_t)t * N_OUT, sizeof(one));
        }
    }
    be->iface->destroy(be);
    be1->iface->destroy(be1);
    for (int s = 0; s < N_SEG; s++) {
        free((void *)(uintptr_t)segs[s].a);
        free((void *)(uintptr_t)segs[s].b);
        free((void *)(uintptr_t)segs[s].b_bias);
    }
    free(tmp);
    free(x);
    free(y0);
    free(y);
    free(ref);
}

/* Segments of N_SEG ranks over T rows with 16-bit weights of dtype wt (random values rounded to
 * it) in s16, and the same weights widened to F32 in s32. */
static int make_pair(enum qv_dtype wt, qv__lora_seg *s16, qv__lora_seg *s32) {
    static const int ranks[N_SEG] = {1, 8, 3, 16, 64, 2, 8, 5, 33};
    static const int lens[N_SEG] = {1, 7, 0, 1, 12, 3, 1, 2, 4};
    int T = 0;
    for (int s = 0; s < N_SEG; s++) {
        size_t na = (size_t)ranks[s] * N_IN, nb = (size_t)N_OUT * (size_t)ranks[s];
        uint16_t *a16 = malloc(na * 2), *b16 = malloc(nb * 2);
        float *a = malloc(na * sizeof(float)), *b = malloc(nb * sizeof(float));
        for (size_t i = 0; i < na + nb; i++) {
            float v = frand();
            uint16_t h = wt == QV_DTYPE_F16 ? qv_f32_to_f16(v) : qv_f32_to_bf16(v);
            float w = wt == QV_DTYPE_F16 ? qv_f16_to_f32(h) : qv_bf16_to_f32(h);
            if (i < na)
                a16[i] = h, a[i] = w;
            else
                b16[i - na] = h, b[i - na] = w;
        }
        s32[s] = (qv__lora_seg){.t0 = T,
                                .n = lens[s],
                                .rank = ranks[s],
                                .scale = 0.75f + 0.5f * (float)s,
                                .a = a,
                                .b = b,
                                .b_bias = s % 4 == 1 ? rand_arr(N_OUT) : NULL};
        s16[s] = s32[s];
        s16[s].a = s16[s].b = NULL;
        s16[s].wtype = wt;
        s16[s].a16 = a16;
        s16[s].b16 = b16;
        T += lens[s];
    }
    return T;
}

static void free_pair(qv__lora_seg *s16, qv__lora_seg *s32) {
    for (int s = 0; s < N_SEG; s++) {
        free((void *)(uintptr_t)s16[s].a16);
        free((void *)(uintptr_t)s16[s].b16);
        free((void *)(uintptr_t)s32[s].a);
        free((void *)(uintptr_t)s32[s].b);
        free((void *)(uintptr_t)s32[s].b_bias);
    }
}

static void test_16bit_weights(void **state) {
    (void)state;
    qv_backend *be = NULL;
    qv_error err = {0};
    assert_int_equal(qv_backend_cpu_create(2, &be, &err), QV_OK);
    const enum qv_dtype wts[2] = {QV_DTYPE_F16, QV_DTYPE_BF16};
    for (int w = 0; w < 2; w++) {
        qv__lora_seg s16[N_SEG], s32[N_SEG];
        const int T = make_pair(wts[w], s16, s32);
        float *x = rand_arr((size_t)T * N_IN), *y0 = rand_arr((size_t)T * N_OUT);
        const size_t ny = (size_t)T * N_OUT;
        float *ya = malloc(ny * sizeof(float)), *yb = malloc(ny * sizeof(float));
        float *tmp = malloc(sizeof(float) * qv__lora_tmp_floats(s16, N_SEG));
        for (int path = 0; path < 2; path++) { /* the backend's kernels, then the portable ones */
            qv_backend *b = path ? NULL : be;
            memcpy(ya, y0, ny * sizeof(float));
            memcpy(yb, y0, ny * sizeof(float));
            qv__lora_shrink(b, s16, N_SEG, x, N_IN, N_IN, tmp);
            qv__lora_expand(b, s16, N_SEG, tmp, N_OUT, ya, N_OUT);
            qv__lora_shrink(b, s32, N_SEG, x, N_IN, N_IN, tmp);
            qv__lora_expand(b, s32, N_SEG, tmp, N_OUT, yb, N_OUT);
            print_message("%s weights, %s kernels: 16-bit vs widened F32\n", qv_dtype_name(wts[w]),
                          path ? "portable" : "backend");
            assert_int_equal(qv_test_compare_f32("16-bit vs F32 weights", ya, yb, ny, 0, 0), 0);
        }
        /* and against a double reference on the widened weights */
        double scale = 0, worst = 0;
        for (int s = 0; s < N_SEG; s++) {
            const qv__lora_seg *g = &s32[s];
            for (int t = g->t0; t < g->t0 + g->n; t++)
                for (int o = 0; o < N_OUT; o++) {
                    double acc = g->b_bias ? (double)g->b_bias[o] : 0.0;
                    for (int r = 0; r < g->rank; r++) {
                        double z = 0;
                        for (int i = 0; i < N_IN; i++)
                            z += (double)x[(size_t)t * N_IN + i] *
                                 (double)g->a[(size_t)r * N_IN + i];
                        acc += (double)g->b[(size_t)o * g->rank + r] * z;
                    }
                    double ref = (double)y0[(size_t)t * N_OUT + o] + (double)g->scale * acc;
                    scale = fmax(scale, fabs(ref));
                    worst = fmax(worst, fabs(ref - (double)ya[(size_t)t * N_OUT + o]));
                }
        }
        print_message("%s: worst abs err %.3g (largest output %.3g)\n", qv_dtype_name(wts[w]),
                      worst, scale);
        assert_true(worst <= 1e-5 * scale);
        free_pair(s16, s32);
        free(x);
        free(y0);
        free(ya);
        free(yb);
        free(tmp);
    }
    be->iface->destroy(be);
}

/* qv__lora_apply against shrink + expand: three "projections" of different widths sharing x
 * (per-segment y geometry, as adapter_apply's q,k,v call), F32 and 16-bit segments mixed; with
 * all rows (fused path) and with a single row (two-run path), on 2 threads and on 1. */
static void test_apply_fused(void **state) {
    (void)state;
    enum { NP = 3 };
    static const int n_outs[NP] = {N_OUT, 64, 40};
    qv_backend *be2 = NULL, *be1 = NULL;
    qv_error err = {0};
    assert_int_equal(qv_backend_cpu_create(2, &be2, &err), QV_OK);
    assert_int_equal(qv_backend_cpu_create(1, &be1, &err), QV_OK);
    qv__lora_seg s16[N_SEG], s32[N_SEG], all[NP * N_SEG];
    const int T = make_pair(QV_DTYPE_BF16, s16, s32);
    float *x = rand_arr((size_t)T * N_IN);
    float *y0[NP], *ya[NP], *yb[NP];
    for (int p = 0; p < NP; p++) {
        const size_t ny = (size_t)T * (size_t)n_outs[p];
        y0[p] = rand_arr(ny);
        ya[p] = malloc(ny * sizeof(float));
        yb[p] = malloc(ny * sizeof(float));
    }
    int n = 0;
    for (int p = 0; p < NP; p++)
        for (int s = 0; s < N_SEG; s++) {
            qv__lora_seg g = (s + p) % 2 ? s16[s] : s32[s];
            g.y = ya[p]; /* rebased below per run */
            g.ldy = (size_t)n_outs[p];
            g.n_out = n_outs[p];
            all[n++] = g;
        }
    float *tmp = malloc(sizeof(float) * qv__lora_tmp_floats(all, n));
    qv_backend *bes[2] = {be2, be1};
    for (int rows = 0; rows < 2; rows++) { /* all rows, then only the first segment's row */
        for (int bi = 0; bi < 2; bi++) {
            qv__lora_seg run[NP * N_SEG];
            memcpy(run, all, sizeof(run));
            int n_run = rows ? 1 : n;
            for (int p = 0; p < NP; p++) {
                memcpy(ya[p], y0[p], (size_t)T * (size_t)n_outs[p] * sizeof(float));
                memcpy(yb[p], y0[p], (size_t)T * (size_t)n_outs[p] * sizeof(float));
            }
            for (int i = 0; i < n_run; i++)
                run[i].y = ya[i / N_SEG];
            qv__lora_apply(bes[bi], run, n_run, x, N_IN, N_IN, tmp, 0, NULL, 0);
            for (int i = 0; i < n_run; i++)
                run[i].y = yb[i / N_SEG];
            qv__lora_shrink(be1, run, n_run, x, N_IN, N_IN, tmp);
            qv__lora_expand(be1, run, n_run, tmp, 0, NULL, 0);
            for (int p = 0; p < NP; p++)
                assert_int_equal(qv_test_compare_f32("apply vs shrink+expand", ya[p], yb[p],
                                                     (size_t)T * (size_t)n_outs[p], 0, 0),
                                 0);
        }
    }
    free_pair(s16, s32);
    for (int p = 0; p < NP; p++) {
        free(y0[p]);
        free(ya[p]);
        free(yb[p]);
    }
    free(x);
    free(tmp);
    be2->iface->destroy(be2);
    be1->iface->destroy(be1);
}

static void test_dot_order(void **state) {
    (void)state;
    /* qv__lora_dot against a double sum, for lengths around the 8-lane width */
    for (int n = 0; n < 40; n++) {
        float *a = rand_arr((size_t)n + 1), *b = rand_arr((size_t)n + 1);
        double ref = 0;
        for (int i = 0; i < n; i++)
            ref += (double)a[i] * (double)b[i];
        assert_true(fabs((double)qv__lora_dot(a, b, n) - ref) <= 1e-5 * (1 + fabs(ref)));
        free(a);
        free(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_reference), cmocka_unit_test(test_16bit_weights),
        cmocka_unit_test(test_apply_fused), cmocka_unit_test(test_dot_order)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
