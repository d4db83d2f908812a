/*
 * test_adapter_dtype.c - the LoRA weight dtypes the loader keeps (adapters/peft.c).
 *
 * A decoder projection whose lora_A and lora_B are both F16 or both BF16 stays in that dtype
 * (qv_lora.wtype, a16/b16 hold the file's exact bits, a/b are NULL, n_bytes counts 2 bytes per
 * element); F32 files and mixed pairs become F32 (the same values widened). Non-finite 16-bit
 * values are refused naming the tensor and element (NaN and Inf, F16 and BF16), while the largest
 * finite values load. DoRA norms computed from 16-bit weights equal, bit for bit, those computed
 * from the same values stored as F32.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter_test_util.h"
#include "adapters/adapters.h"
#include "test_util.h"

#define GQA "tiny-llama-gqa"
#define QA "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define QB "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
#define QM "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
#define N_A (4 * 64)
#define N_B (128 * 4)

static const char *cfg(bool dora) {
    return dora ? "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": "
                  "[\"q_proj\"], \"use_dora\": true, \"base_model_name_or_path\": \"" GQA "\"}"
                : "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": "
                  "[\"q_proj\"], \"base_model_name_or_path\": \"" GQA "\"}";
}

static int teardown(void **state) {
    (void)state;
    at_models_free();
    return 0;
}

static float *values(size_t n, float amp, uint32_t seed) {
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        v[i] = ((float)(seed >> 8) / (float)(1u << 24) * 2.0f - 1.0f) * amp;
    }
    return v;
}

/* Loads the given tensors with config c; returns the adapter or NULL (err filled). */
static qv_adapter *load(const char *c, const at_tensor *ts, size_t n, qv_error *err) {
    size_t wl;
    char *w = at_st_build(ts, n, &wl);
    qv_adapter *ad = NULL;
    qv_status s = qv_adapter_load_buffer(c, strlen(c), w, wl, at_model(GQA), NULL, &ad, err);
    free(w);
    return s == QV_OK ? ad : NULL;
}

static float widen(const char *dt, float v) {
    if (!strcmp(dt, "F16")) return qv_f16_to_f32(qv_f32_to_f16(v));
    if (!strcmp(dt, "BF16")) return qv_bf16_to_f32(qv_f32_to_bf16(v));
    return v;
}

static void test_dtype_kept(void **state) {
    (void)state;
    float *a = values(N_A, 0.3f, 1), *b = values(N_B, 0.2f, 2);
    static const struct {
        const char *da, *db;
        enum qv_dtype want;
    } cases[] = {{"F32", "F32", QV_DTYPE_F32},
                 {"F16", "F16", QV_DTYPE_F16},
                 {"BF16", "BF16", QV_DTYPE_BF16},
                 {"BF16", "F32", QV_DTYPE_F32},
                 {"F16", "BF16", QV_DTYPE_F32}};
    for (size_t k = 0; k < QV_ARRAY_LEN(cases); k++) {
        at_tensor ts[] = {{QA, cases[k].da, 2, {4, 64}, a}, {QB, cases[k].db, 2, {128, 4}, b}};
        qv_error err = {0};
        qv_adapter *ad = load(cfg(false), ts, 2, &err);
        if (!ad) fail_msg("%s/%s: %s", cases[k].da, cases[k].db, err.msg);
        const qv_lora *lo = &ad->layers[0].lora[QV_PROJ_Q];
        print_message("A %s, B %s: wtype %s, %zu bytes\n", cases[k].da, cases[k].db,
                      qv_dtype_name(lo->wtype), qv_adapter_n_bytes(ad));
        assert_int_equal(lo->wtype, cases[k].want);
        const bool w16 = cases[k].want != QV_DTYPE_F32;
        assert_true(w16 ? (lo->a16 && lo->b16 && !lo->a && !lo->b)
                        : (lo->a && lo->b && !lo->a16 && !lo->b16));
        assert_int_equal(qv_adapter_n_bytes(ad), (size_t)(N_A + N_B) * (w16 ? 2 : 4));
        for (size_t i = 0; i < N_A; i++)
            assert_true(qv_lora_a_at(lo, i) == widen(cases[k].da, a[i]));
        for (size_t i = 0; i < N_B; i++)
            assert_true(qv_lora_b_at(lo, i) == widen(cases[k].db, b[i]));
        if (w16) /* the raw bits are the file's */
            assert_int_equal(lo->a16[7], cases[k].want == QV_DTYPE_F16 ? qv_f32_to_f16(a[7])
                                                                       : qv_f32_to_bf16(a[7]));
        qv_adapter_free(ad);
    }
    free(a);
    free(b);
}

static void expect_nonfinite(const char *dt, bool in_a, size_t at, float v, const char *needle) {
    float *a = values(N_A, 0.3f, 3), *b = values(N_B, 0.2f, 4);
    (in_a ? a : b)[at] = v;
    at_tensor ts[] = {{QA, dt, 2, {4, 64}, a}, {QB, dt, 2, {128, 4}, b}};
    qv_error err = {0};
    qv_adapter *ad = load(cfg(false), ts, 2, &err);
    if (ad || err.status != QV_ERR_INVALID || !strstr(err.msg, needle))
        fail_msg("%s: got \"%s\", want \"%s\"", dt, err.msg, needle);
    free(a);
    free(b);
}

static void test_nonfinite_16bit(void **state) {
    (void)state;
    expect_nonfinite("F16", false, 77, NAN,
                     "tensor " QB " holds a non-finite value (NaN) at element 77");
    expect_nonfinite("F16", true, 5, INFINITY,
                     "tensor " QA " holds a non-finite value (Inf) at element 5");
    expect_nonfinite("BF16", true, 0, -INFINITY,
                     "tensor " QA " holds a non-finite value (Inf) at element 0");
    expect_nonfinite("BF16", false, 511, NAN,
                     "tensor " QB " holds a non-finite value (NaN) at element 511");
    /* the largest finite values are fine: 65504 (F16), 3.3895e38 (BF16 0x7F7F) */
    static const struct {
        const char *dt;
        float v;
    } big[] = {{"F16", 65504.0f}, {"F16", -65504.0f}, {"BF16", 3.38953139e38f}};
    for (size_t k = 0; k < QV_ARRAY_LEN(big); k++) {
        float *a = values(N_A, 0.3f, 5), *b = values(N_B, 0.2f, 6);
        a[9] = big[k].v;
        at_tensor ts[] = {{QA, big[k].dt, 2, {4, 64}, a}, {QB, big[k].dt, 2, {128, 4}, b}};
        qv_error err = {0};
        qv_adapter *ad = load(cfg(false), ts, 2, &err);
        if (!ad) fail_msg("%s %g: %s", big[k].dt, (double)big[k].v, err.msg);
        assert_true(qv_lora_a_at(&ad->layers[0].lora[QV_PROJ_Q], 9) == big[k].v);
        qv_adapter_free(ad);
        free(a);
        free(b);
    }
}

static void test_dora_16bit(void **state) {
    (void)state;
    float *a = values(N_A, 0.3f, 7), *b = values(N_B, 0.2f, 8), *m = values(128, 1.0f, 9);
    for (size_t i = 0; i < N_A; i++) /* values exactly representable in BF16 */
        a[i] = widen("BF16", a[i]);
    for (size_t i = 0; i < N_B; i++)
        b[i] = widen("BF16", b[i]);
    for (size_t i = 0; i < 128; i++)
        m[i] = 1.0f + fabsf(m[i]);
    at_tensor t16[] = {
        {QA, "BF16", 2, {4, 64}, a}, {QB, "BF16", 2, {128, 4}, b}, {QM, "F32", 1, {128}, m}};
    at_tensor t32[] = {
        {QA, "F32", 2, {4, 64}, a}, {QB, "F32", 2, {128, 4}, b}, {QM, "F32", 1, {128}, m}};
    qv_error err = {0};
    qv_adapter *x = load(cfg(true), t16, 3, &err);
    if (!x) fail_msg("bf16 DoRA: %s", err.msg);
    qv_adapter *y = load(cfg(true), t32, 3, &err);
    if (!y) fail_msg("f32 DoRA: %s", err.msg);
    const qv_lora *lx = &x->layers[0].lora[QV_PROJ_Q], *ly = &y->layers[0].lora[QV_PROJ_Q];
    assert_int_equal(lx->wtype, QV_DTYPE_BF16);
    assert_int_equal(ly->wtype, QV_DTYPE_F32);
    assert_non_null(lx->dora_scale);
    assert_memory_equal(lx->dora_scale, ly->dora_scale, 128 * sizeof(float));
    qv_adapter_free(x);
    qv_adapter_free(y);
    free(a);
    free(b);
    free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_dtype_kept),
                                       cmocka_unit_test(test_nonfinite_16bit),
                                       cmocka_unit_test(test_dora_16bit)};
    return cmocka_run_group_tests(tests, NULL, teardown);
}
