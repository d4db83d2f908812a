/*
 * test_model_load.c - qv_model_load on tiny HF directories and GGUF files written by
 * tests/oracle/gen_formats_fixtures.py (transformers + safetensors + gguf packages):
 * configuration values and HF rotary inv_freq, GGUF Q/K un-permutation proven against the HF
 * original rows (exact bytes for F32 and for quantize(HF rows) in Q8_0 / Q4_1; exact biases),
 * llama3 rope via rope_freqs, qwen2 (not permuted), mistral sliding window, bad inputs with a
 * one-line error naming file and problem, and an allocation-failure sweep (no leak under ASan).
 */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/gguf.h"
#include "engine/model.h"
#include "fmt_test_helpers.h"
#include "test_util.h"

#define FX "tests/fixtures/formats/"

static qv_model *load_ok(const char *rel) {
    qv_model *m = NULL;
    qv_error err = {0};
    qv_status st = qv_model_load(qv_test_path(rel), &m, &err);
    if (st != QV_OK) fprintf(stderr, "load %s: %s\n", rel, err.msg);
    assert_int_equal(st, QV_OK);
    assert_non_null(m);
    return m;
}

static int jint(const cJSON *j, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(j, k);
    assert_non_null(v);
    return (int)v->valuedouble;
}

static void check_config(const qv_model *m, const cJSON *e) {
    const qv_model_config *c = &m->cfg;
    assert_int_equal(c->n_vocab, jint(e, "vocab_size"));
    assert_int_equal(c->dim, jint(e, "hidden_size"));
    assert_int_equal(c->n_ff, jint(e, "intermediate_size"));
    assert_int_equal(c->n_layers, jint(e, "num_hidden_layers"));
    assert_int_equal(c->n_heads, jint(e, "num_attention_heads"));
    assert_int_equal(c->n_kv_heads, jint(e, "num_key_value_heads"));
    assert_int_equal(c->head_dim, jint(e, "head_dim"));
    assert_int_equal(c->max_pos, jint(e, "max_position_embeddings"));
    assert_true(c->norm_eps == (float)cJSON_GetObjectItem(e, "rms_norm_eps")->valuedouble);
    assert_true(c->rope_theta == (float)cJSON_GetObjectItem(e, "rope_theta")->valuedouble);
    assert_int_equal(c->tie_embeddings,
                     cJSON_IsTrue(cJSON_GetObjectItem(e, "tie_word_embeddings")));
}

static void check_inv_freq(const qv_model *m, const cJSON *e, double rtol) {
    size_t n;
    float *want = json_floats(cJSON_GetObjectItem(e, "inv_freq"), &n);
    assert_int_equal(n, (size_t)m->cfg.head_dim / 2);
    assert_int_equal(qv_test_compare_f32("inv_freq", m->rope_inv_freq, want, n, 0.0, rtol), 0);
    free(want);
}

/* Whole-matrix byte equality of two views with the same dtype and shape. */
static void same_tensor(const char *what, const qv_tensor *a, const qv_tensor *b) {
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->n_rows, b->n_rows);
    assert_int_equal(a->n_cols, b->n_cols);
    size_t n = a->row_bytes * (size_t)a->n_rows;
    if (memcmp(a->data, b->data, n) != 0) {
        size_t r = 0;
        while (!memcmp((const uint8_t *)a->data + r * a->row_bytes,
                       (const uint8_t *)b->data + r * a->row_bytes, a->row_bytes)) {
            r++;
        }
        fprintf(stderr, "%s: first differing row %zu of %lld\n", what, r, (long long)a->n_rows);
    }
    assert_memory_equal(a->data, b->data, n);
}

/* Both as F32 (dequantized), compared elementwise. */
static void close_tensor(const char *what, const qv_tensor *a, const qv_tensor *b, double atol) {
    assert_int_equal(a->n_rows, b->n_rows);
    assert_int_equal(a->n_cols, b->n_cols);
    size_t n = (size_t)(a->n_rows * a->n_cols);
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    for (int64_t r = 0; r < a->n_rows; r++) {
        qv_dequantize_row(a->dtype, (const uint8_t *)a->data + r * a->row_bytes, x + r * a->n_cols,
                          a->n_cols);
        qv_dequantize_row(b->dtype, (const uint8_t *)b->data + r * b->row_bytes, y + r * b->n_cols,
                          b->n_cols);
    }
    assert_int_equal(qv_test_compare_f32(what, x, y, n, atol, 0.0), 0);
    free(x);
    free(y);
}

static void same_hex(const char *what, const qv_tensor *t, const cJSON *e, const char *key) {
    size_t n;
    uint8_t *want = hex_decode(cJSON_GetObjectItem(e, key)->valuestring, &n);
    assert_int_equal(n, t->row_bytes * (size_t)t->n_rows);
    if (memcmp(t->data, want, n))
        fprintf(stderr, "%s: bytes differ from quantize(HF rows)\n", what);
    assert_memory_equal(t->data, want, n);
    free(want);
}

static void same_floats(const char *what, const qv_tensor *t, const cJSON *e, const char *key) {
    size_t n;
    float *want = json_floats(cJSON_GetObjectItem(e, key), &n);
    assert_int_equal(t->dtype, QV_DTYPE_F32);
    assert_int_equal((size_t)t->n_cols, n);
    assert_int_equal(qv_test_compare_f32(what, t->data, want, n, 0.0, 0.0), 0);
    free(want);
}

static void test_llama_tied(void **state) {
    (void)state;
    cJSON *e = load_json_fixture(qv_test_path(FX "llama_tied.expect.json"));
    qv_model *hf = load_ok(FX "llama_tied");
    assert_int_equal(hf->format, QV_FORMAT_SAFETENSORS);
    assert_int_equal(hf->cfg.arch, QV_ARCH_LLAMA);
    check_config(hf, e);
    check_inv_freq(hf, e, 0.0);
    assert_ptr_equal(hf->lm_head.data, hf->tok_embd.data);
    assert_int_equal(hf->n_params, (size_t)jint(e, "n_params"));
    assert_int_equal(hf->n_weight_bytes, hf->n_params * 4);
    assert_int_equal(hf->cfg.bos_id, 1);
    assert_int_equal(hf->cfg.n_eos, 1);
    assert_int_equal(hf->cfg.eos_ids[0], 2);
    assert_false(hf->cfg.qkv_bias || hf->cfg.o_bias || hf->cfg.mlp_bias);
    assert_null(hf->layers[0].bq.data);
    assert_non_null(hf->dir);
    assert_null(hf->gguf);
    assert_int_equal(hf->main_dtype, QV_DTYPE_F32);
    assert_int_equal(hf->out_norm.dtype, QV_DTYPE_F32);
    assert_int_equal(hf->out_norm.n_cols, 64);

    /* F32 GGUF written with llama.cpp's Q/K permutation: every tensor equals the HF one. */
    qv_model *gg = load_ok(FX "llama_tied.f32.gguf");
    assert_int_equal(gg->format, QV_FORMAT_GGUF);
    assert_non_null(gg->gguf);
    check_config(gg, e); /* vocab comes from the token list: no llama.vocab_size key */
    check_inv_freq(gg, e, 0.0);
    assert_true(gg->cfg.tie_embeddings);
    assert_ptr_equal(gg->lm_head.data, gg->tok_embd.data);
    assert_int_equal(gg->n_params, hf->n_params);
    same_tensor("tok_embd", &gg->tok_embd, &hf->tok_embd);
    same_tensor("out_norm", &gg->out_norm, &hf->out_norm);
    char what[64];
    for (int i = 0; i < hf->cfg.n_layers; i++) {
        const qv_layer_weights *a = &gg->layers[i], *b = &hf->layers[i];
        snprintf(what, sizeof(what), "layer %d wq", i);
        same_tensor(what, &a->wq, &b->wq);
        snprintf(what, sizeof(what), "layer %d wk", i);
        same_tensor(what, &a->wk, &b->wk);
        same_tensor("wv", &a->wv, &b->wv);
        same_tensor("wo", &a->wo, &b->wo);
        same_tensor("w_gate", &a->w_gate, &b->w_gate);
        same_tensor("w_up", &a->w_up, &b->w_up);
        same_tensor("w_down", &a->w_down, &b->w_down);
        same_tensor("attn_norm", &a->attn_norm, &b->attn_norm);
        same_tensor("ffn_norm", &a->ffn_norm, &b->ffn_norm);
    }
    /* ... and the raw GGUF rows really are permuted (the test can fail). */
    const qv_gguf_tensor *raw = qv_gguf_find_tensor(gg->gguf, "blk.0.attn_q.weight");
    assert_non_null(raw);
    assert_memory_not_equal(raw->data, hf->layers[0].wq.data, hf->layers[0].wq.row_bytes * 64);

    /* Q8_0 GGUF: un-permuted rows are byte-identical to quantize(HF q/k). */
    qv_model *q8 = load_ok(FX "llama_tied.q8_0.gguf");
    check_config(q8, e);
    assert_int_equal(q8->main_dtype, QV_DTYPE_Q8_0);
    assert_int_equal(q8->layers[0].wq.dtype, QV_DTYPE_Q8_0);
    assert_int_equal(q8->layers[0].attn_norm.dtype, QV_DTYPE_F32);
    same_hex("q8_0 wq0", &q8->layers[0].wq, e, "q8_0_wq0_hex");
    same_hex("q8_0 wk0", &q8->layers[0].wk, e, "q8_0_wk0_hex");
    same_hex("q8_0 wk1", &q8->layers[1].wk, e, "q8_0_wk1_hex");
    close_tensor("q8_0 wv0 vs HF", &q8->layers[0].wv, &hf->layers[0].wv, 0.01);
    assert_int_equal(q8->cfg.bos_id, 1);
    assert_int_equal(q8->cfg.pad_id, 2);

    qv_model_free(q8);
    qv_model_free(gg);
    qv_model_free(hf);
    cJSON_Delete(e);
}

static void test_llama_bias_llama3_sharded(void **state) {
    (void)state;
    cJSON *e = load_json_fixture(qv_test_path(FX "llama_bias.expect.json"));
    qv_model *hf = load_ok(FX "llama_bias");
    check_config(hf, e);
    assert_int_equal(hf->cfg.rope_scaling, QV_ROPE_LLAMA3);
    assert_true(hf->cfg.rope_factor == 8.0f);
    assert_true(hf->cfg.rope_low_freq_factor == 1.0f);
    assert_true(hf->cfg.rope_high_freq_factor == 4.0f);
    assert_int_equal(hf->cfg.rope_orig_max_pos, 256);
    check_inv_freq(hf, e, 1e-6);
    assert_true(hf->cfg.qkv_bias && hf->cfg.o_bias && hf->cfg.mlp_bias);
    assert_int_equal(hf->main_dtype, QV_DTYPE_BF16);
    assert_int_equal(hf->tok_embd.dtype, QV_DTYPE_BF16);
    assert_ptr_not_equal(hf->lm_head.data, hf->tok_embd.data);
    assert_int_equal(hf->n_params, (size_t)jint(e, "n_params"));
    assert_int_equal(hf->n_weight_bytes, hf->n_params * 2);
    /* generation_config.json: bos 5, eos [6, 7] */
    assert_int_equal(hf->cfg.bos_id, 5);
    assert_int_equal(hf->cfg.n_eos, 2);
    assert_int_equal(hf->cfg.eos_ids[0], 6);
    assert_int_equal(hf->cfg.eos_ids[1], 7);
    same_floats("hf bq0", &hf->layers[0].bq, e, "bq0");
    same_floats("hf bk0", &hf->layers[0].bk, e, "bk0");
    same_floats("hf bo1", &hf->layers[1].bo, e, "bo1");
    same_floats("hf bdown1", &hf->layers[1].b_down, e, "bdown1");

    qv_model *gg = load_ok(FX "llama_bias.f16.gguf");
    check_config(gg, e);
    assert_true(gg->cfg.qkv_bias && gg->cfg.o_bias && gg->cfg.mlp_bias);
    assert_false(gg->cfg.tie_embeddings);
    /* inv_freq = base / rope_freqs (converter factors) ~ HF llama3 inv_freq */
    check_inv_freq(gg, e, 2e-6);
    /* permuted biases restored exactly */
    same_floats("gguf bq0", &gg->layers[0].bq, e, "bq0");
    same_floats("gguf bk0", &gg->layers[0].bk, e, "bk0");
    same_floats("gguf bo1", &gg->layers[1].bo, e, "bo1");
    same_floats("gguf bdown1", &gg->layers[1].b_down, e, "bdown1");
    /* F16 rows of bf16 values: equal up to f16 subnormal rounding; a wrong row order is O(0.02) */
    char what[64];
    for (int i = 0; i < 2; i++) {
        snprintf(what, sizeof(what), "f16 gguf wq%d vs HF bf16", i);
        close_tensor(what, &gg->layers[i].wq, &hf->layers[i].wq, 1e-7);
        snprintf(what, sizeof(what), "f16 gguf wk%d vs HF bf16", i);
        close_tensor(what, &gg->layers[i].wk, &hf->layers[i].wk, 1e-7);
        close_tensor("wo", &gg->layers[i].wo, &hf->layers[i].wo, 1e-7);
    }
    close_tensor("lm_head", &gg->lm_head, &hf->lm_head, 1e-7);
    qv_model_free(gg);
    qv_model_free(hf);
    cJSON_Delete(e);
}

static void test_qwen2(void **state) {
    (void)state;
    cJSON *e = load_json_fixture(qv_test_path(FX "qwen2_tiny.expect.json"));
    qv_model *hf = load_ok(FX "qwen2_tiny");
    assert_int_equal(hf->cfg.arch, QV_ARCH_QWEN2);
    check_config(hf, e);
    check_inv_freq(hf, e, 0.0);
    assert_true(hf->cfg.qkv_bias);
    assert_false(hf->cfg.o_bias || hf->cfg.mlp_bias);
    assert_null(hf->layers[0].bo.data);
    assert_int_equal(hf->cfg.bos_id, -1);
    assert_int_equal(hf->cfg.n_eos, 1);
    assert_int_equal(hf->cfg.eos_ids[0], 3);
    assert_int_equal(hf->main_dtype, QV_DTYPE_F16);
    same_floats("hf bq0", &hf->layers[0].bq, e, "bq0");

    qv_model *gg = load_ok(FX "qwen2_tiny.q4_1.gguf");
    assert_int_equal(gg->cfg.arch, QV_ARCH_QWEN2);
    check_config(gg, e);
    check_inv_freq(gg, e, 0.0);
    assert_true(gg->cfg.qkv_bias);
    /* qwen2 is not permuted: rows as stored = quantize(HF rows) */
    same_hex("q4_1 wq0", &gg->layers[0].wq, e, "q4_1_wq0_hex");
    same_hex("q4_1 wk0", &gg->layers[0].wk, e, "q4_1_wk0_hex");
    same_floats("gguf bq0", &gg->layers[0].bq, e, "bq0");
    const qv_gguf_tensor *raw = qv_gguf_find_tensor(gg->gguf, "blk.0.attn_q.weight");
    assert_ptr_equal(raw->data, gg->layers[0].wq.data); /* used in place */
    qv_model_free(gg);
    qv_model_free(hf);
    cJSON_Delete(e);
}

static void test_mistral(void **state) {
    (void)state;
    cJSON *e = load_json_fixture(qv_test_path(FX "mistral_tiny.expect.json"));
    qv_model *m = load_ok(FX "mistral_tiny");
    assert_int_equal(m->cfg.arch, QV_ARCH_MISTRAL);
    check_config(m, e);
    check_inv_freq(m, e, 0.0);
    assert_int_equal(m->cfg.sliding_window, 32);
    assert_int_equal(m->cfg.head_dim, 8); /* != hidden / heads = 16 */
    assert_int_equal(m->layers[0].wq.n_rows, 16);
    assert_int_equal(m->layers[0].wo.n_cols, 16);
    assert_false(m->cfg.qkv_bias);
    qv_model_free(m);
    cJSON_Delete(e);
}

static void test_print_info(void **state) {
    (void)state;
    qv_model *m = load_ok(FX "llama_tied.q8_0.gguf");
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    qv_model_print_info(m, f);
    fclose(f);
    assert_non_null(strstr(buf, "architecture:   llama"));
    assert_non_null(strstr(buf, "Q8_0"));
    assert_non_null(strstr(buf, "kv heads 2, head_dim 16"));
    assert_non_null(strstr(buf, "bytes per token"));
    free(buf);
    qv_model_free(m);
    assert_string_equal(qv_arch_name(QV_ARCH_QWEN2), "qwen2");
}

static void copy_hf(const char *rel, const char *dst);
static void set_config(const char *dir, const char *key, cJSON *value);

/* rope_parameters (transformers 5) and legacy rope_theta + rope_scaling {"type": ...}. Linear
 * divides HF's default inv_freq by the factor (exact for a power of two); dynamic leaves it. */
static void test_rope_variants(void **state) {
    (void)state;
    cJSON *e = load_json_fixture(qv_test_path(FX "llama_tied.expect.json"));
    size_t n;
    float *base = json_floats(cJSON_GetObjectItem(e, "inv_freq"), &n);
    char *d = tmp_dir();
    copy_hf(FX "llama_tied", d);
    for (int c = 0; c < 3; c++) {
        set_config(d, "rope_parameters", NULL);
        cJSON *rs = cJSON_CreateObject();
        if (c == 0) { /* new style */
            cJSON_AddStringToObject(rs, "rope_type", "linear");
            cJSON_AddNumberToObject(rs, "factor", 4.0);
            cJSON_AddNumberToObject(rs, "rope_theta", 10000.0);
            set_config(d, "rope_parameters", rs);
        } else { /* legacy */
            cJSON_AddStringToObject(rs, "type", c == 1 ? "linear" : "dynamic");
            cJSON_AddNumberToObject(rs, "factor", 4.0);
            set_config(d, "rope_theta", cJSON_CreateNumber(10000.0));
            set_config(d, "rope_scaling", rs);
        }
        qv_model *m = NULL;
        qv_error err = {0};
        qv_status st = qv_model_load(d, &m, &err);
        if (st) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(st, QV_OK);
        assert_int_equal(m->cfg.rope_scaling, c == 2 ? QV_ROPE_DYNAMIC : QV_ROPE_LINEAR);
        assert_true(m->cfg.rope_factor == 4.0f);
        float *want = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++)
            want[i] = c == 2 ? base[i] : base[i] / 4.0f;
        assert_int_equal(
            qv_test_compare_f32("rope variant inv_freq", m->rope_inv_freq, want, n, 0.0, 0.0), 0);
        free(want);
        qv_model_free(m);
    }
    free(base);
    cJSON_Delete(e);
    rm_tree(d);
    free(d);
}

/* safetensors guarantees no alignment: a header padded by one byte puts every F32 tensor at
 * an odd address; the loader must copy (not alias) them and the values must not change. */
static void test_unaligned_safetensors(void **state) {
    (void)state;
    char *d = tmp_dir();
    char src[512], dst[512];
    snprintf(src, sizeof(src), "%s/config.json", qv_test_path(FX "llama_tied"));
    snprintf(dst, sizeof(dst), "%s/config.json", d);
    copy_file(src, dst);
    snprintf(src, sizeof(src), "%s/model.safetensors", qv_test_path(FX "llama_tied"));
    size_t n;
    uint8_t *b = read_all(src, &n);
    if (!b) abort();
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | b[i];
    tbuf t = {0};
    tb_u64(&t, hlen + 1);
    tb_put(&t, b + 8, (size_t)hlen);
    tb_u8(&t, ' ');
    tb_put(&t, b + 8 + hlen, n - 8 - (size_t)hlen);
    snprintf(dst, sizeof(dst), "%s/model.safetensors", d);
    write_file(dst, t.p, t.n);
    qv_model *ref = load_ok(FX "llama_tied");
    qv_model *m = NULL;
    qv_error err = {0};
    assert_int_equal(qv_model_load(d, &m, &err), QV_OK);
    for (int i = 0; i < m->cfg.n_layers; i++) {
        assert_true((uintptr_t)m->layers[i].wq.data % 4 == 0);
        assert_true((uintptr_t)m->layers[i].w_down.data % 4 == 0);
        same_tensor("unaligned wq", &m->layers[i].wq, &ref->layers[i].wq);
        same_tensor("unaligned w_down", &m->layers[i].w_down, &ref->layers[i].w_down);
        same_tensor("unaligned attn_norm", &m->layers[i].attn_norm, &ref->layers[i].attn_norm);
    }
    assert_true((uintptr_t)m->tok_embd.data % 4 == 0);
    same_tensor("unaligned tok_embd", &m->tok_embd, &ref->tok_embd);
    qv_model_free(m);
    qv_model_free(ref);
    tb_free(&t);
    free(b);
    rm_tree(d);
    free(d);
}

/* Every model of the oracle engineer's tests/fixtures/models/ loads; each <name>.f32.gguf
 * (their converter, llama.cpp permutation) equals the HF F32 directory <name> exactly. */
static void test_oracle_models(void **state) {
    (void)state;
    const char *root = qv_test_path("tests/fixtures/models");
    DIR *dir = opendir(root);
    if (!dir) {
        fprintf(stderr, "no %s yet: skipping\n", root);
        skip();
    }
    qv_log_set_level(QV_LOG_WARN);
    struct dirent *de;
    int n = 0, compared = 0;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", root, de->d_name);
        qv_model *m = NULL;
        qv_error err = {0};
        qv_status st = qv_model_load(p, &m, &err);
        if (st) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(st, QV_OK);
        n++;
        size_t l = strlen(de->d_name);
        const char *suf = ".f32.gguf";
        if (l > strlen(suf) && !strcmp(de->d_name + l - strlen(suf), suf)) {
            char hp[1024];
            snprintf(hp, sizeof(hp), "%s/%.*s", root, (int)(l - strlen(suf)), de->d_name);
            qv_model *h = NULL;
            if (qv_test_exists(hp) && qv_model_load(hp, &h, &err) == QV_OK &&
                h->main_dtype == QV_DTYPE_F32) {
                for (int i = 0; i < h->cfg.n_layers; i++) {
                    same_tensor("oracle wq", &m->layers[i].wq, &h->layers[i].wq);
                    same_tensor("oracle wk", &m->layers[i].wk, &h->layers[i].wk);
                    same_tensor("oracle wo", &m->layers[i].wo, &h->layers[i].wo);
                    if (h->cfg.qkv_bias) {
                        same_tensor("oracle bq", &m->layers[i].bq, &h->layers[i].bq);
                        same_tensor("oracle bk", &m->layers[i].bk, &h->layers[i].bk);
                    }
                }
                same_tensor("oracle tok_embd", &m->tok_embd, &h->tok_embd);
                compared++;
            }
            qv_model_free(h);
        }
        qv_model_free(m);
    }
    closedir(dir);
    qv_log_set_level(QV_LOG_INFO);
    fprintf(stderr, "loaded %d oracle models, %d f32 GGUF/HF pairs compared\n", n, compared);
    assert_true(n > 0);
}

/* ---- bad inputs ---- */

static void expect_fail(const char *path, qv_status want, const char *w1, const char *w2) {
    qv_model *m = (qv_model *)0x1;
    qv_error err = {0};
    qv_status st = qv_model_load(path, &m, &err);
    bool ok =
        st == want && strstr(err.msg, w1) && (!w2 || strstr(err.msg, w2)) && !strchr(err.msg, '\n');
    if (!ok) {
        fprintf(stderr, "%s: status %d '%s', want %d with '%s' '%s'\n", path, st, err.msg, want, w1,
                w2 ? w2 : "");
    }
    assert_true(ok);
    assert_null(m);
}

/* Copies an HF fixture directory into a temp dir, optionally replacing config.json text. */
static void copy_hf(const char *rel, const char *dst) {
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors"};
    for (size_t i = 0; i < QV_ARRAY_LEN(files); i++) {
        char s[512], d[512];
        snprintf(s, sizeof(s), "%s/%s", qv_test_path(rel), files[i]);
        snprintf(d, sizeof(d), "%s/%s", dst, files[i]);
        copy_file(s, d);
    }
}

static void set_config(const char *dir, const char *key, cJSON *value) {
    char p[512];
    snprintf(p, sizeof(p), "%s/config.json", dir);
    cJSON *j = load_json_fixture(p);
    if (value) {
        if (cJSON_GetObjectItem(j, key)) {
            cJSON_ReplaceItemInObject(j, key, value);
        } else {
            cJSON_AddItemToObject(j, key, value);
        }
    } else {
        cJSON_DeleteItemFromObject(j, key);
    }
    char *t = cJSON_Print(j);
    write_file(p, t, strlen(t));
    free(t);
    cJSON_Delete(j);
}

static void test_bad_hf(void **state) {
    (void)state;
    char *d = tmp_dir();
    char sub[512], p[600];
    expect_fail("/nonexistent/quiver/model", QV_ERR_NOT_FOUND, "/nonexistent/quiver/model", NULL);
    expect_fail(d, QV_ERR_NOT_FOUND, "config.json", NULL);

#define FRESH(name)                                                                                \
    do {                                                                                           \
        snprintf(sub, sizeof(sub), "%s/%s", d, name);                                              \
        mkdir(sub, 0700);                                                                          \
        copy_hf(FX "llama_tied", sub);                                                             \
    } while (0)

    FRESH("badjson");
    snprintf(p, sizeof(p), "%s/config.json", sub);
    write_file(p, "{\"model_type\": ", 15);
    expect_fail(sub, QV_ERR_INVALID, "config.json", "invalid JSON");

    FRESH("arch");
    set_config(sub, "model_type", cJSON_CreateString("gpt2"));
    expect_fail(sub, QV_ERR_UNSUPPORTED, "config.json", "model_type 'gpt2'");

    FRESH("notype");
    set_config(sub, "model_type", NULL);
    expect_fail(sub, QV_ERR_INVALID, "config.json", "missing \"model_type\"");

    FRESH("hidden");
    set_config(sub, "hidden_size", cJSON_CreateNumber(48));
    set_config(sub, "head_dim", cJSON_CreateNumber(16));
    expect_fail(sub, QV_ERR_INVALID, "model.embed_tokens.weight",
                "has shape [64, 64], expected [64, 48]");

    FRESH("heads");
    set_config(sub, "num_attention_heads", cJSON_CreateNumber(3));
    expect_fail(sub, QV_ERR_INVALID, "num_attention_heads 3", "num_key_value_heads 2");

    FRESH("layers");
    set_config(sub, "num_hidden_layers", cJSON_CreateNumber(3));
    expect_fail(sub, QV_ERR_NOT_FOUND, "missing tensor 'model.layers.2.input_layernorm.weight'",
                sub);

    FRESH("untied");
    set_config(sub, "tie_word_embeddings", cJSON_CreateFalse());
    expect_fail(sub, QV_ERR_NOT_FOUND, "missing tensor 'lm_head.weight'", NULL);

    FRESH("nonint");
    set_config(sub, "vocab_size", cJSON_CreateString("64"));
    expect_fail(sub, QV_ERR_INVALID, "\"vocab_size\" must be an integer", NULL);

    FRESH("yarn");
    cJSON *rp = cJSON_CreateObject();
    cJSON_AddStringToObject(rp, "rope_type", "yarn");
    cJSON_AddNumberToObject(rp, "factor", 4);
    cJSON_AddNumberToObject(rp, "rope_theta", 10000);
    set_config(sub, "rope_parameters", rp);
    expect_fail(sub, QV_ERR_UNSUPPORTED, "rope scaling type 'yarn'", NULL);

    FRESH("llama3_missing");
    rp = cJSON_CreateObject();
    cJSON_AddStringToObject(rp, "rope_type", "llama3");
    cJSON_AddNumberToObject(rp, "factor", 8);
    set_config(sub, "rope_parameters", rp);
    expect_fail(sub, QV_ERR_INVALID, "llama3 rope scaling needs", NULL);

    FRESH("act");
    set_config(sub, "hidden_act", cJSON_CreateString("gelu"));
    expect_fail(sub, QV_ERR_UNSUPPORTED, "hidden_act 'gelu'", NULL);

    /* truncated safetensors */
    FRESH("trunc");
    snprintf(p, sizeof(p), "%s/model.safetensors", sub);
    size_t n;
    uint8_t *b = read_all(p, &n);
    write_file(p, b, n - 100);
    free(b);
    expect_fail(sub, QV_ERR_INVALID, p, "past the");

    /* unsupported safetensors dtype */
    FRESH("dtype");
    tbuf t = {0};
    st_build(&t,
             "{\"model.embed_tokens.weight\":{\"dtype\":\"I64\",\"shape\":[1],"
             "\"data_offsets\":[0,8]}}",
             8);
    snprintf(p, sizeof(p), "%s/dtype/model.safetensors", d);
    write_file(p, t.p, t.n);
    tb_free(&t);
    expect_fail(sub, QV_ERR_UNSUPPORTED, "dtype I64", "model.safetensors");

    /* missing weights file */
    FRESH("noweights");
    snprintf(p, sizeof(p), "%s/model.safetensors", sub);
    unlink(p);
    expect_fail(sub, QV_ERR_NOT_FOUND, "model.safetensors", NULL);
#undef FRESH
    rm_tree(d);
    free(d);
}

/* Writes a byte-patched copy of a GGUF fixture and expects the load to fail. */
static void gguf_patch_fail(const char *dir, const char *rel, const char *from, const char *to,
                            size_t truncate_to, qv_status want, const char *w1, const char *w2) {
    size_t n;
    uint8_t *b = read_all(qv_test_path(rel), &n);
    assert_non_null(b);
    if (from) assert_true(patch_bytes(b, n, from, to) >= 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/patched.gguf", dir);
    write_file(p, b, truncate_to ? truncate_to : n);
    expect_fail(p, want, w1, w2);
    free(b);
}

static void test_bad_gguf(void **state) {
    (void)state;
    char *d = tmp_dir();
    const char *q8 = FX "llama_tied.q8_0.gguf";
    char p[512];
    snprintf(p, sizeof(p), "%s/patched.gguf", d);
    gguf_patch_fail(d, q8, NULL, NULL, 1000, QV_ERR_INVALID, p, NULL);
    gguf_patch_fail(d, q8, "GGUF", "GGML", 0, QV_ERR_INVALID, p, "magic");
    gguf_patch_fail(d, q8, "llama", "bloom", 0, QV_ERR_UNSUPPORTED, "architecture 'bloom'", p);
    gguf_patch_fail(d, q8, "llama.block_count", "llama.block_cnnnt", 0, QV_ERR_INVALID,
                    "missing metadata key 'llama.block_count'", NULL);
    gguf_patch_fail(d, q8, "output_norm.weight", "output_norm.weighx", 0, QV_ERR_NOT_FOUND,
                    "missing tensor 'output_norm.weight'", NULL);
    /* version field: 3 -> 1 */
    {
        size_t n;
        uint8_t *b = read_all(qv_test_path(q8), &n);
        b[4] = 1;
        write_file(p, b, n);
        expect_fail(p, QV_ERR_UNSUPPORTED, "version 1", p);
        b[4] = 0;
        b[7] = 3; /* byte-swapped */
        write_file(p, b, n);
        expect_fail(p, QV_ERR_UNSUPPORTED, "byte-swapped", NULL);
        free(b);
    }
    /* inconsistent shape: feed_forward_length 96 -> 64 (value right after the key and type) */
    {
        size_t n;
        uint8_t *b = read_all(qv_test_path(q8), &n);
        if (!b) abort();
        int at = patch_bytes(b, n, "llama.feed_forward_length", "llama.feed_forward_length");
        assert_true(at > 0);
        size_t v = (size_t)at + strlen("llama.feed_forward_length") + 4;
        assert_true(v < n);
        assert_int_equal(b[v], 96);
        b[v] = 64;
        write_file(p, b, n);
        expect_fail(p, QV_ERR_INVALID, "blk.0.ffn_gate.weight",
                    "ne=[64, 96], expected ne=[64, 64]");
        free(b);
    }
    /* unsupported tensor type: attn_v F32 -> I8 in the F32 file (reader-valid, loader refuses) */
    {
        size_t n;
        uint8_t *b = read_all(qv_test_path(FX "llama_tied.f32.gguf"), &n);
        if (!b) abort();
        int at = patch_bytes(b, n, "blk.0.attn_v.weight", "blk.0.attn_v.weight");
        assert_true(at > 0);
        size_t tp = (size_t)at + strlen("blk.0.attn_v.weight") + 4 + 16;
        assert_true(tp < n);
        assert_int_equal(b[tp], 0);
        b[tp] = 24;
        write_file(p, b, n);
        expect_fail(p, QV_ERR_UNSUPPORTED, "blk.0.attn_v.weight", "dtype I8");
        free(b);
    }
    rm_tree(d);
    free(d);
}

static void test_alloc_failure_sweep(void **state) {
    (void)state;
    use_qv_cjson_hooks();
    const char *paths[] = {FX "llama_bias", FX "llama_tied.q8_0.gguf", FX "llama_bias.f16.gguf"};
    qv_log_set_level(QV_LOG_WARN);
    for (size_t i = 0; i < QV_ARRAY_LEN(paths); i++) {
        bool ok = false;
        long k;
        for (k = 0; k < 5000 && !ok; k++) {
            qv_model *m = NULL;
            qv_error err = {0};
            qv_alloc_fail_after(k);
            qv_status st = qv_model_load(qv_test_path(paths[i]), &m, &err);
            qv_alloc_fail_after(-1);
            if (st == QV_OK) {
                ok = true;
                qv_model_free(m);
            } else {
                assert_null(m);
                assert_true(err.msg[0] != 0);
            }
        }
        fprintf(stderr, "%s: loads after %ld allocations\n", paths[i], k - 1);
        assert_true(ok);
    }
    qv_log_set_level(QV_LOG_INFO);
    cJSON_InitHooks(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_tied),
        cmocka_unit_test(test_llama_bias_llama3_sharded),
        cmocka_unit_test(test_qwen2),
        cmocka_unit_test(test_mistral),
        cmocka_unit_test(test_print_info),
        cmocka_unit_test(test_unaligned_safetensors),
        cmocka_unit_test(test_rope_variants),
        cmocka_unit_test(test_oracle_models),
        cmocka_unit_test(test_bad_hf),
        cmocka_unit_test(test_bad_gguf),
        cmocka_unit_test(test_alloc_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
