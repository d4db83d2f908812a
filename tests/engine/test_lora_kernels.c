/*
 * test_lora_kernels.c - the segmented LoRA shrink/expand kernels (engine/cpu/lora_cpu.c).
 *
 * Against a double-precision reference: segments of ranks 1..64 (incl. empty segments and
 * lora_B bias), n_in / n_out not multiples of the vector or block widths; results within 1e-5
 * of the largest output. Batch invariance: a row computed inside a 9-segment batch on 2 threads is
 * bitwise equal to the same row computed alone on 1 thread.
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
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_reference),
                                       cmocka_unit_test(test_dot_order)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
