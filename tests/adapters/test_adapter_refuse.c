/*
 * test_adapter_refuse.c - every refusal of the adapter loader produces its specific one-line
 * message and status, and nothing leaks (ASan/LSan build): pickle files, unknown peft_type,
 * unimplemented options by name, shapes that do not fit the base, rank limit, NaN/Inf, missing
 * and unexpected tensors, corrupted safetensors headers, base-name mismatch (warn vs strict),
 * prefix-tuning GQA layout, IA3 feedforward cross-check, bottleneck gating/inv/phm/hidden size.
 * Also an allocation-failure sweep over loading real LoRA / DoRA / bottleneck adapters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "adapter_test_util.h"
#include "adapters/adapters.h"
#include "test_util.h"

#define GQA "tiny-llama-gqa"
#define FIX "tests/fixtures/adapters/tiny-llama-gqa/"

static int teardown(void **state) {
    (void)state;
    at_models_free();
    return 0;
}

/* Config text of a fixture with `key` set to the JSON `value` (NULL: removed). free(). */
static char *cfg_with(const char *fixture, const char *key, const char *value) {
    char rel[256];
    snprintf(rel, sizeof(rel), "%s/adapter_config.json", fixture);
    char *txt = at_read(rel, NULL);
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    assert_non_null(root);
    cJSON *target = root;
    if (!strncmp(key, "config.", 7)) target = cJSON_GetObjectItem(root, "config"), key += 7;
    cJSON_DeleteItemFromObjectCaseSensitive(target, key);
    if (value) {
        cJSON *v = cJSON_Parse(value);
        assert_non_null(v);
        cJSON_AddItemToObject(target, key, v);
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

static char *weights_of(const char *fixture, const char *file, size_t *len) {
    char rel[256];
    snprintf(rel, sizeof(rel), "%s/%s", fixture, file);
    return at_read(rel, len);
}

/* Loads (config, weights) from memory and expects status `want` with `needle` in the message. */
static void expect_refusal(const char *cfg, const char *w, size_t wl, const qv_model *base,
                           const qv_adapter_limits *lim, qv_status want, const char *needle) {
    qv_adapter *ad = (qv_adapter *)(uintptr_t)1;
    qv_error err = {0};
    qv_status s = qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, base, lim, &ad, &err);
    if (s != want || !strstr(err.msg, needle) || strchr(err.msg, '\n')) {
        fprintf(stderr, "status %d (want %d), message: %s\n  expected to contain: %s\n", s, want,
                err.msg, needle);
        fail();
    }
    assert_null(ad);
}

static void refuse_cfg(const char *fixture, const char *key, const char *value, qv_status want,
                       const char *needle) {
    size_t wl;
    char *cfg = cfg_with(fixture, key, value);
    int bn = strstr(fixture, "_bn") != NULL;
    char *w = weights_of(fixture, bn ? "adapter.safetensors" : "adapter_model.safetensors", &wl);
    expect_refusal(cfg, w, wl, at_model(GQA), NULL, want, needle);
    free(cfg);
    free(w);
}

static void refuse_weights(const at_tensor *ts, size_t n, const char *cfg_key, const char *cfg_val,
                           qv_status want, const char *needle);
static void refuse_weights_(const at_tensor *ts, size_t n, qv_status want, const char *needle) {
    refuse_weights(ts, n, NULL, NULL, want, needle);
}

static void test_pickle(void **state) {
    (void)state;
    qv_adapter *ad = NULL;
    qv_error err;
    assert_int_equal(qv_adapter_load(qv_test_path("tests/fixtures/adapters_bad/pickle_peft"),
                                     at_model(GQA), NULL, &ad, &err),
                     QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "adapter_model.bin is a pickle file"));
    assert_non_null(strstr(err.msg, "save_pretrained(out, safe_serialization=True)"));
    assert_null(ad);
    assert_int_equal(qv_adapter_load(qv_test_path("tests/fixtures/adapters_bad/pickle_adapterhub"),
                                     at_model(GQA), NULL, &ad, &err),
                     QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "pytorch_adapter.bin is a pickle file"));
    assert_non_null(strstr(err.msg, "use_safetensors=True"));
    assert_int_equal(qv_adapter_load(qv_test_path("tests/fixtures/adapters_bad/does_not_exist"),
                                     at_model(GQA), NULL, &ad, &err),
                     QV_ERR_NOT_FOUND);
}

static void test_corrupt_header(void **state) {
    (void)state;
    qv_adapter *ad = NULL;
    qv_error err;
    /* from a directory: the reader's own message, with the file name */
    assert_int_equal(qv_adapter_load(qv_test_path("tests/fixtures/adapters_bad/corrupt_header"),
                                     at_model(GQA), NULL, &ad, &err),
                     QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "adapter_model.safetensors: header is not valid JSON"));
    /* from memory: truncated and oversized headers */
    size_t wl;
    char *cfg = cfg_with(FIX "lora_qv_r4", "r", "4");
    char *w = weights_of(FIX "lora_qv_r4", "adapter_model.safetensors", &wl);
    expect_refusal(cfg, w, 5, at_model(GQA), NULL, QV_ERR_INVALID, "adapter weights: ");
    uint64_t big = (uint64_t)1 << 40;
    memcpy(w, &big, 8);
    qv_status s = qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err);
    assert_true(s == QV_ERR_LIMIT || s == QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "adapter weights: "));
    expect_refusal("{\"peft_type\": ", "", 0, at_model(GQA), NULL, QV_ERR_INVALID,
                   "adapter weights");
    free(cfg);
    free(w);
    /* a valid file with a broken config */
    w = weights_of(FIX "lora_qv_r4", "adapter_model.safetensors", &wl);
    expect_refusal("{\"peft_type\": \"LORA\"", w, wl, at_model(GQA), NULL, QV_ERR_INVALID,
                   "adapter_config.json is not a JSON object");
    expect_refusal("{\"r\": 4}", w, wl, at_model(GQA), NULL, QV_ERR_INVALID,
                   "neither \"peft_type\"");
    free(w);
}

/* rank_pattern / alpha_pattern keys are regexes from an uploaded file: a bad regex is named,
 * and a catastrophically backtracking one hits the match limit instead of hanging. */
static void test_hostile_patterns(void **state) {
    (void)state;
    refuse_cfg(FIX "lora_qv_r4", "rank_pattern", "{\"q_proj(\": 4}", QV_ERR_INVALID,
               "rank_pattern key \"q_proj(\" is not a valid regex");
    refuse_cfg(FIX "lora_qv_r4", "alpha_pattern", "{\"(.|.)*j_\": 4}", QV_ERR_INVALID,
               "alpha_pattern: regex match failed on model.layers.0");
    refuse_cfg(FIX "lora_qv_r4", "rank_pattern", "{\"q_proj\": \"four\"}", QV_ERR_INVALID,
               "rank_pattern[\"q_proj\"] must be a positive number");
    /* a pattern that matches gives the rank it names; the file holds rank 4 */
    refuse_cfg(FIX "lora_qv_r4", "rank_pattern", "{\"(q|v)_proj\": 8}", QV_ERR_INVALID,
               "has rank 4 but the config gives r=8 for model.layers.0.self_attn.q_proj "
               "(rank_pattern)");
}

/* Names quoted from the file never break the one-line message (expect_refusal checks for
 * newlines): a peft_type and a tensor name with control characters. */
static void test_one_line_messages(void **state) {
    (void)state;
    refuse_cfg(FIX "lora_qv_r4", "peft_type", "\"LO\\nRA\\r\"", QV_ERR_UNSUPPORTED,
               "peft_type \"LO?RA?\" is not supported");
    float v[4] = {0};
    at_tensor t[] = {{"base_model.model.lm_head.evil\\nname", "F32", 1, {4}, v}};
    refuse_weights_(t, 1, QV_ERR_INVALID, "unexpected tensor base_model.model.lm_head.evil?name");
}

static void test_unknown_type_and_task(void **state) {
    (void)state;
    refuse_cfg(FIX "lora_qv_r4", "peft_type", "\"LOHA\"", QV_ERR_UNSUPPORTED,
               "peft_type \"LOHA\" is not supported");
    refuse_cfg(FIX "lora_qv_r4", "task_type", "\"SEQ_CLS\"", QV_ERR_UNSUPPORTED,
               "task_type \"SEQ_CLS\" is not served");
}

/* The adapter in dir with config key set to value (JSON text), which must load. */
static qv_adapter *load_with(const char *dir, const char *key, const char *value) {
    size_t wl;
    char *cfg = cfg_with(dir, key, value);
    char *w = weights_of(dir, "adapter_model.safetensors", &wl);
    qv_adapter *ad = NULL;
    qv_error err;
    if (qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err) != QV_OK)
        fail_msg("%s with %s = %s: %s", dir, key, value, err.msg);
    free(cfg);
    free(w);
    return ad;
}

static void test_unimplemented_options(void **state) {
    (void)state;
    static const struct {
        const char *key, *value, *needle;
    } cases[] = {
        {"layer_replication", "[[0, 2], [1, 3]]", "\"layer_replication\""},
        {"target_parameters", "[\"experts.gate_up_proj\"]", "\"target_parameters\""},
        {"use_qalora", "true", "\"use_qalora\""},
        {"use_bdlora", "true", "\"use_bdlora\""},
        {"fan_in_fan_out", "true", "\"fan_in_fan_out\" is true"},
        {"bias", "\"all\"", "\"bias\" = \"all\""},
        {"bias", "\"lora_only\"", "\"bias\" = \"lora_only\""},
        {"init_lora_weights", "\"mica\"", "\"init_lora_weights\" = \"mica\""},
        {"modules_to_save", "[\"score\"]", "modules_to_save entry \"score\""},
        {"trainable_token_indices", "{\"lm_head\": [1]}",
         "trainable_token_indices for \"lm_head\""},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(cases); i++)
        refuse_cfg(FIX "lora_qv_r4", cases[i].key, cases[i].value, QV_ERR_UNSUPPORTED,
                   cases[i].needle);
    /* default values of those options are fine */
    qv_adapter_free(load_with(FIX "lora_qv_r4", "layer_replication", "null"));
}

/* Activated LoRA: its invocation tokens load (the activation position is the start of their
 * last occurrence in a prompt); a bad list and the parts PEFT's aLoRA does not cover are
 * refused. */
static void test_alora(void **state) {
    (void)state;
    qv_adapter *ad = load_with(FIX "lora_qv_r4", "alora_invocation_tokens", "[5, 6]");
    assert_int_equal(ad->n_alora_tokens, 2);
    const int32_t p1[] = {1, 5, 6, 2, 5, 6, 3}, p2[] = {5, 7, 6, 5};
    assert_int_equal(qv_adapter_alora_start(ad, p1, 7), 4);
    assert_int_equal(qv_adapter_alora_start(ad, p1, 6), 4);
    assert_int_equal(qv_adapter_alora_start(ad, p1, 5), 1);
    assert_int_equal(qv_adapter_alora_start(ad, p2, 4), INT32_MAX);
    assert_int_equal(qv_adapter_alora_start(ad, p2, 1), INT32_MAX);
    assert_int_equal(qv_adapter_alora_start(NULL, p1, 7), 0);
    qv_adapter_free(ad);
    static const struct {
        const char *dir, *value;
        qv_status st;
        const char *needle;
    } bad[] = {
        {FIX "lora_qv_r4", "[]", QV_ERR_INVALID, "1 to 64 token ids"},
        {FIX "lora_qv_r4", "[5, \"x\"]", QV_ERR_INVALID, "alora_invocation_tokens[1]"},
        {FIX "lora_qv_r4", "[5, 100000]", QV_ERR_INVALID, "alora_invocation_tokens[1]"},
        {FIX "lora_qv_r4", "5", QV_ERR_INVALID, "alora_invocation_tokens must be a list"},
        {FIX "dora", "[5]", QV_ERR_UNSUPPORTED, "with DoRA"},
        {FIX "lora_embed_lm_head", "[5]", QV_ERR_UNSUPPORTED, "with embedding LoRA"},
        {FIX "lora_mts_lm_head", "[5]", QV_ERR_UNSUPPORTED, "modules_to_save"},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++)
        refuse_cfg(bad[i].dir, "alora_invocation_tokens", bad[i].value, bad[i].st, bad[i].needle);
}

static float *fill(size_t n, float v) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = v + 0.001f * (float)i;
    return p;
}

#define QA "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
#define QB "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

/* Synthetic weights: layer-0 q_proj LoRA (r=4) with the given tensors, against the GQA base. */
static void refuse_weights(const at_tensor *ts, size_t n, const char *cfg_key, const char *cfg_val,
                           qv_status want, const char *needle) {
    size_t wl;
    char *w = at_st_build(ts, n, &wl);
    char *cfg = cfg_with(FIX "lora_qv_r4", cfg_key ? cfg_key : "r", cfg_key ? cfg_val : "4");
    expect_refusal(cfg, w, wl, at_model(GQA), NULL, want, needle);
    free(w);
    free(cfg);
}

static void test_tensor_refusals(void **state) {
    (void)state;
    float *a = fill(4 * 64, 0.01f), *b = fill(128 * 4, 0.02f), *big = fill(300 * 64, 0.0f);
    /* baseline: these synthetic tensors load */
    {
        at_tensor ts[] = {{QA, "F32", 2, {4, 64}, a}, {QB, "F32", 2, {128, 4}, b}};
        size_t wl;
        char *w = at_st_build(ts, 2, &wl);
        char *cfg = cfg_with(FIX "lora_qv_r4", "r", "4");
        qv_adapter *ad = NULL;
        qv_error err;
        assert_int_equal(
            qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err), QV_OK);
        assert_int_equal(ad->layers[0].lora[QV_PROJ_Q].rank, 4);
        assert_true(ad->layers[0].lora[QV_PROJ_Q].a[3] == a[3]);
        qv_adapter_free(ad);
        /* rank limit */
        qv_adapter_limits lim = {.max_rank = 2};
        expect_refusal(cfg, w, wl, at_model(GQA), &lim, QV_ERR_LIMIT,
                       "tensor " QA ": rank 4 exceeds the limit max_rank=2");
        lim = (qv_adapter_limits){.max_n_bytes = 1000};
        expect_refusal(cfg, w, wl, at_model(GQA), &lim, QV_ERR_LIMIT, "max_n_bytes");
        free(w);
        free(cfg);
    }
    /* shape that does not fit the base: q_proj out is 8 heads x 16 = 128 */
    at_tensor bad_shape[] = {{QA, "F32", 2, {4, 64}, a}, {QB, "F32", 2, {100, 4}, b}};
    refuse_weights(bad_shape, 2, NULL, NULL, QV_ERR_INVALID,
                   "tensor " QB ": expected shape [128, 4], got [100, 4]");
    at_tensor bad_in[] = {{QA, "F32", 2, {4, 32}, a}, {QB, "F32", 2, {128, 4}, b}};
    refuse_weights(bad_in, 2, NULL, NULL, QV_ERR_INVALID,
                   "tensor " QA ": expected shape [4, 64], got [4, 32]");
    /* rank disagreeing with the config */
    refuse_weights(bad_in, 2, "r", "8", QV_ERR_INVALID,
                   "tensor " QA " has rank 4 but the config gives r=8");
    /* NaN and Inf, in F32 and BF16 */
    float *nan_b = fill(128 * 4, 0.0f);
    nan_b[77] = NAN;
    at_tensor nan_t[] = {{QA, "F32", 2, {4, 64}, a}, {QB, "F32", 2, {128, 4}, nan_b}};
    refuse_weights(nan_t, 2, NULL, NULL, QV_ERR_INVALID,
                   "tensor " QB " holds a non-finite value (NaN) at element 77");
    nan_b[77] = INFINITY;
    at_tensor inf_t[] = {{QA, "F32", 2, {4, 64}, a}, {QB, "BF16", 2, {128, 4}, nan_b}};
    refuse_weights(inf_t, 2, NULL, NULL, QV_ERR_INVALID,
                   "tensor " QB " holds a non-finite value (Inf) at element 77");
    /* missing and unexpected tensors */
    at_tensor only_a[] = {{QA, "F32", 2, {4, 64}, a}};
    refuse_weights(only_a, 1, NULL, NULL, QV_ERR_NOT_FOUND,
                   "missing tensor model.layers.0.self_attn.q_proj.lora_B.weight");
    at_tensor extra[] = {
        {QA, "F32", 2, {4, 64}, a},
        {QB, "F32", 2, {128, 4}, b},
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight", "F32", 2, {4, 4}, a}};
    refuse_weights(extra, 3, NULL, NULL, QV_ERR_INVALID,
                   "unexpected tensor base_model.model.model.layers.0.self_attn.q_proj.lora_C");
    at_tensor stray[] = {{"base_model.model.model.norm.weight", "F32", 1, {64}, a}};
    refuse_weights(stray, 1, NULL, NULL, QV_ERR_INVALID,
                   "unexpected tensor base_model.model.model.norm.weight");
    at_tensor layer9[] = {
        {"base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", "F32", 2, {4, 64}, a}};
    refuse_weights(layer9, 1, NULL, NULL, QV_ERR_INVALID,
                   "layer 9 does not exist in the base model (3 layers)");
    /* DoRA without magnitude; magnitude without DoRA; lora_bias without bias */
    at_tensor ab[] = {{QA, "F32", 2, {4, 64}, a}, {QB, "F32", 2, {128, 4}, b}};
    refuse_weights(ab, 2, "use_dora", "true", QV_ERR_NOT_FOUND,
                   "missing tensor model.layers.0.self_attn.q_proj.lora_magnitude_vector");
    refuse_weights(ab, 2, "lora_bias", "true", QV_ERR_NOT_FOUND,
                   "missing tensor model.layers.0.self_attn.q_proj.lora_B.bias");
    at_tensor mag[] = {{QA, "F32", 2, {4, 64}, a},
                       {QB, "F32", 2, {128, 4}, b},
                       {"base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
                        "F32",
                        1,
                        {128},
                        b}};
    refuse_weights(mag, 3, NULL, NULL, QV_ERR_INVALID, "lora_magnitude_vector: use_dora is false");
    /* trained base bias (bias="all" output) and a resized vocabulary */
    at_tensor bb[] = {
        {"base_model.model.model.layers.0.self_attn.q_proj.base_layer.bias", "F32", 1, {128}, b}};
    refuse_weights(bb, 1, NULL, NULL, QV_ERR_UNSUPPORTED, "trained base biases");
    at_tensor resized[] = {
        {"base_model.model.model.embed_tokens.weight", "F32", 2, {300, 64}, big}};
    refuse_weights(resized, 1, NULL, NULL, QV_ERR_UNSUPPORTED,
                   "resizes the vocabulary (300 rows, base has 288)");
    /* modules_to_save lm_head without the tensor */
    refuse_weights(ab, 2, "modules_to_save", "[\"lm_head\"]", QV_ERR_NOT_FOUND,
                   "missing tensor base_model.model.lm_head.weight (modules_to_save)");
    free(a);
    free(b);
    free(big);
    free(nan_b);
}

static void test_base_name(void **state) {
    (void)state;
    size_t wl;
    char *cfg = cfg_with(FIX "lora_qv_r4", "base_model_name_or_path", "\"meta-llama/Llama-3-8B\"");
    char *w = weights_of(FIX "lora_qv_r4", "adapter_model.safetensors", &wl);
    qv_adapter_limits strict = {.strict_base_name = true};
    expect_refusal(cfg, w, wl, at_model(GQA), &strict, QV_ERR_INVALID,
                   "adapter was trained on base model \"meta-llama/Llama-3-8B\" but the loaded "
                   "model is");
    qv_adapter *ad = NULL;
    qv_error err;
    /* default: a warning only */
    assert_int_equal(
        qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err), QV_OK);
    qv_adapter_free(ad);
    free(cfg);
    /* a matching name (org prefix, case, separators) passes strict mode */
    cfg = cfg_with(FIX "lora_qv_r4", "base_model_name_or_path", "\"Some Org/Tiny Llama GQA\"");
    assert_int_equal(
        qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), &strict, &ad, &err), QV_OK);
    qv_adapter_free(ad);
    free(cfg);
    cfg = cfg_with(FIX "lora_qv_r4", "base_model_name_or_path", "\"someorg/Tiny-Llama-GQA\"");
    assert_int_equal(
        qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), &strict, &ad, &err), QV_OK);
    qv_adapter_free(ad);
    free(cfg);
    /* same family, other parameter count: refused in strict mode */
    cfg = cfg_with(FIX "lora_qv_r4", "base_model_name_or_path", "\"org/tiny-llama-gqa-7B\"");
    assert_int_equal(
        qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), &strict, &ad, &err),
        QV_OK); /* the base has no parameter count in its name: not clearly other */
    qv_adapter_free(ad);
    free(cfg);
    free(w);
}

static void test_other_kinds(void **state) {
    (void)state;
    /* prefix tuning saved with the pre-0.12 (non-GQA) layout */
    refuse_cfg(FIX "prefix_nvt5", "num_attention_heads", "8", QV_ERR_INVALID,
               "PREFIX_TUNING num_attention_heads 8 / token_dim 32 do not fit the base (expected 2 "
               "kv heads x 16 = 32");
    refuse_cfg(FIX "prefix_nvt5", "num_layers", "2", QV_ERR_INVALID,
               "PREFIX_TUNING num_layers 2 does not match the base (3 layers)");
    refuse_cfg(FIX "prefix_nvt5", "num_virtual_tokens", "6", QV_ERR_INVALID,
               "tensor prompt_embeddings: expected shape [6, 192], got [5, 192]");
    refuse_cfg(FIX "prompt_nvt4", "num_transformer_submodules", "2", QV_ERR_UNSUPPORTED,
               "num_transformer_submodules 2");
    refuse_cfg(FIX "prompt_nvt4", "token_dim", "32", QV_ERR_INVALID,
               "PROMPT_TUNING token_dim 32 does not match the base hidden size 64");
    {
        size_t wl;
        char *cfg = cfg_with(FIX "prompt_nvt4", "r", NULL);
        char *w = weights_of(FIX "prompt_nvt4", "adapter_model.safetensors", &wl);
        qv_adapter_limits lim = {.max_virtual = 3};
        expect_refusal(cfg, w, wl, at_model(GQA), &lim, QV_ERR_LIMIT,
                       "num_virtual_tokens 4 exceeds the limit 3");
        free(cfg);
        free(w);
    }
    /* IA3: down_proj holds [1, in] (input scaling) but feedforward_modules does not list it */
    refuse_cfg(FIX "ia3", "feedforward_modules", "[]", QV_ERR_INVALID,
               "mlp.down_proj.ia3_l: shape [1, 128] does not match output scaling");
    refuse_cfg(FIX "ia3", "feedforward_modules", "[\"k_proj\", \"down_proj\"]", QV_ERR_INVALID,
               "k_proj.ia3_l: shape [32, 1] does not match input scaling");
    refuse_cfg(FIX "ia3", "fan_in_fan_out", "true", QV_ERR_UNSUPPORTED, "\"fan_in_fan_out\"");
    /* regex form of feedforward_modules (re.fullmatch) is accepted */
    {
        size_t wl;
        char *cfg = cfg_with(FIX "ia3", "feedforward_modules", "\".*down_proj\"");
        char *w = weights_of(FIX "ia3", "adapter_model.safetensors", &wl);
        qv_adapter *ad = NULL;
        qv_error err;
        assert_int_equal(
            qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err), QV_OK);
        assert_true(ad->layers[0].ia3_input[QV_PROJ_DOWN]);
        assert_false(ad->layers[0].ia3_input[QV_PROJ_K]);
        qv_adapter_free(ad);
        free(cfg);
        free(w);
    }
    /* bottleneck */
    refuse_cfg(FIX "seq_bn", "config.use_gating", "true", QV_ERR_UNSUPPORTED, "\"use_gating\"");
    refuse_cfg(FIX "seq_bn", "config.inv_adapter", "\"nice\"", QV_ERR_UNSUPPORTED,
               "\"inv_adapter\"");
    refuse_cfg(FIX "seq_bn", "config.phm_layer", "true", QV_ERR_UNSUPPORTED, "\"phm_layer\"");
    refuse_cfg(FIX "seq_bn", "hidden_size", "128", QV_ERR_INVALID,
               "adapter hidden_size 128 does not match the base model's 64");
    refuse_cfg(FIX "seq_bn", "config.non_linearity", "\"mish2\"", QV_ERR_UNSUPPORTED,
               "non_linearity \"mish2\"");
    refuse_cfg(FIX "seq_bn", "config.reduction_factor", "8", QV_ERR_INVALID,
               "expected shape [8, 64], got [4, 64]");
    refuse_cfg(FIX "seq_bn", "config.leave_out", "[1]", QV_ERR_INVALID, "(layer is in leave_out)");
    refuse_cfg(FIX "seq_bn", "config.mh_adapter", "true", QV_ERR_NOT_FOUND,
               "missing tensor model.layers.0.attention_adapters.adapters.seq_bn.adapter_down");
    refuse_cfg(FIX "seq_bn", "config.scaling", "\"learned\"", QV_ERR_NOT_FOUND, ".scaling");
    /* reduction_factor as a per-layer mapping with a default */
    {
        size_t wl;
        char *cfg = cfg_with(FIX "seq_bn", "config.reduction_factor", "{\"default\": 16}");
        char *w = weights_of(FIX "seq_bn", "adapter.safetensors", &wl);
        qv_adapter *ad = NULL;
        qv_error err;
        assert_int_equal(
            qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, at_model(GQA), NULL, &ad, &err), QV_OK);
        assert_int_equal(ad->layers[2].bn_ffn.d, 4);
        qv_adapter_free(ad);
        free(cfg);
        free(w);
    }
}

/* Synthetic LoRA extras whose expected values follow from the tensors built here:
 * trainable_token_indices and ensure_weight_tying (lm_head derived from the embedding pair). */
static void test_lora_extras(void **state) {
    (void)state;
    const qv_model *base = at_model(GQA);
    float *rows = fill(2 * 64, 0.5f), *ea = fill(4 * 288, 0.1f), *eb = fill(64 * 4, 0.2f);
    at_tensor tt[] = {{"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta",
                       "F32",
                       2,
                       {2, 64},
                       rows}};
    size_t wl;
    char *w = at_st_build(tt, 1, &wl);
    char *cfg = cfg_with(FIX "lora_qv_r4", "trainable_token_indices", "[7, 280]");
    qv_adapter *ad = NULL;
    qv_error err;
    assert_int_equal(qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, base, NULL, &ad, &err), QV_OK);
    assert_int_equal(ad->n_trainable_tokens, 2);
    assert_int_equal(ad->trainable_ids[1], 280);
    assert_true(ad->trainable_rows[64 + 3] == rows[64 + 3]);
    qv_adapter_free(ad);
    free(cfg);
    cfg = cfg_with(FIX "lora_qv_r4", "trainable_token_indices", "{\"embed_tokens\": [7, 999]}");
    expect_refusal(cfg, w, wl, base, NULL, QV_ERR_INVALID,
                   "trainable_token_indices[1] is not a token id of the base vocabulary");
    free(cfg);
    cfg = cfg_with(FIX "lora_qv_r4", "trainable_token_indices", "[1, 2, 3]");
    expect_refusal(cfg, w, wl, base, NULL, QV_ERR_INVALID, "expected shape [3, 64], got [2, 64]");
    free(cfg);
    free(w);

    at_tensor emb[] = {
        {"base_model.model.model.embed_tokens.lora_embedding_A", "F32", 2, {4, 288}, ea},
        {"base_model.model.model.embed_tokens.lora_embedding_B", "F32", 2, {64, 4}, eb}};
    w = at_st_build(emb, 2, &wl);
    cfg = cfg_with(FIX "lora_qv_r4", "target_modules_to_tie", "[\"lm_head\"]");
    assert_int_equal(qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, base, NULL, &ad, &err), QV_OK);
    const qv_lora *h = &ad->lm_head_lora;
    assert_int_equal(h->rank, 4);
    assert_int_equal(h->n_in, 64);
    assert_int_equal(h->n_out, 288);
    /* lm_head A = embedding Bᵀ (r, H); lm_head B = embedding Aᵀ (V, r) */
    assert_true(h->a[2 * 64 + 5] == eb[5 * 4 + 2]);
    assert_true(h->b[100 * 4 + 3] == ea[3 * 288 + 100]);
    assert_true(h->scale == ad->embed_lora.scale);
    qv_adapter_free(ad);
    free(cfg);
    /* without tying the lm_head stays untouched */
    cfg = cfg_with(FIX "lora_qv_r4", "r", "4");
    assert_int_equal(qv_adapter_load_buffer(cfg, strlen(cfg), w, wl, base, NULL, &ad, &err), QV_OK);
    assert_int_equal(ad->lm_head_lora.rank, 0);
    assert_int_equal(ad->embed_lora.rank, 4);
    qv_adapter_free(ad);
    free(cfg);
    free(w);
    free(rows);
    free(ea);
    free(eb);
}

/* Allocation-failure sweep: every failing allocation point returns an error and leaks nothing
 * (checked by LeakSanitizer in the ASan build). */
static void sweep(const char *dir) {
    const qv_model *base = at_model(GQA);
    cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
    cJSON_InitHooks(&hooks);
    long k;
    for (k = 0; k < 100000; k++) {
        qv_adapter *ad = NULL;
        qv_error err;
        qv_alloc_fail_after(k);
        qv_status s = qv_adapter_load(qv_test_path(dir), base, NULL, &ad, &err);
        qv_alloc_fail_after(-1);
        if (s == QV_OK) {
            qv_adapter_free(ad);
            break;
        }
        assert_null(ad);
        /* cJSON cannot tell an allocation failure from a syntax error, so a failed parse of the
         * config or of the safetensors header reads as invalid JSON. */
        bool json_nomem = s == QV_ERR_INVALID && (strstr(err.msg, "not valid JSON") ||
                                                  strstr(err.msg, "not a JSON object"));
        if (s != QV_ERR_NOMEM && !json_nomem)
            fail_msg("%s at failure point %ld: %d %s", dir, k, s, err.msg);
    }
    cJSON_InitHooks(NULL);
    print_message("%s: %ld failure points\n", dir, k);
    assert_true(k > 5 && k < 100000);
}

static void test_alloc_failures(void **state) {
    (void)state;
    sweep(FIX "lora_patterns");
    sweep(FIX "dora");
    sweep(FIX "seq_bn");
    sweep(FIX "prefix_nvt5");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pickle),
        cmocka_unit_test(test_corrupt_header),
        cmocka_unit_test(test_unknown_type_and_task),
        cmocka_unit_test(test_one_line_messages),
        cmocka_unit_test(test_hostile_patterns),
        cmocka_unit_test(test_unimplemented_options),
        cmocka_unit_test(test_alora),
        cmocka_unit_test(test_tensor_refusals),
        cmocka_unit_test(test_base_name),
        cmocka_unit_test(test_other_kinds),
        cmocka_unit_test(test_lora_extras),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
