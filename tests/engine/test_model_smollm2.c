/*
 * test_model_smollm2.c - qv_model_load on the real default model,
 * ~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf (FORMATS.md 6.1 / 6.3): configuration
 * values of the HF config.json, every tensor's type and shape as the Python gguf reader lists
 * them (tests/fixtures/formats/smollm2.expect.json, from tests/oracle/gen_formats_fixtures.py),
 * and the un-permuted q/k bytes against sha256 of numpy's inverse permutation.
 * Exits 77 (skipped) with a message when the model file is absent (QV_SMOLLM2_GGUF overrides
 * the path).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "adapters/store.h" /* qv_sha256_hex */
#include "engine/gguf.h"
#include "engine/model.h"
#include "fmt_test_helpers.h"
#include "test_util.h"

static char model_path[4096];

static void test_sha256_known_answer(void **state) {
    (void)state;
    char hex[65];
    qv_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_config_and_tensors(void **state) {
    (void)state;
    qv_model *m = NULL;
    qv_error err = {0};
    qv_status st = qv_model_load(model_path, &m, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, QV_OK);
    const qv_model_config *c = &m->cfg;
    /* FORMATS.md 6.1 */
    assert_int_equal(c->arch, QV_ARCH_LLAMA);
    assert_int_equal(c->n_vocab, 49152);
    assert_int_equal(c->dim, 576);
    assert_int_equal(c->n_ff, 1536);
    assert_int_equal(c->n_layers, 30);
    assert_int_equal(c->n_heads, 9);
    assert_int_equal(c->n_kv_heads, 3);
    assert_int_equal(c->head_dim, 64);
    assert_int_equal(c->max_pos, 8192);
    assert_true(c->norm_eps == 1e-5f);
    assert_true(c->rope_theta == 100000.0f);
    assert_int_equal(c->rope_scaling, QV_ROPE_NONE);
    assert_true(c->tie_embeddings);
    assert_false(c->qkv_bias || c->o_bias || c->mlp_bias);
    assert_int_equal(c->bos_id, 1);
    assert_true(c->n_eos >= 1);
    assert_int_equal(c->eos_ids[0], 2);
    assert_int_equal(c->pad_id, 2);
    assert_int_equal(c->sliding_window, 0);
    /* dtypes of FORMATS.md 6.3 */
    assert_int_equal(m->tok_embd.dtype, QV_DTYPE_Q8_0);
    assert_ptr_equal(m->lm_head.data, m->tok_embd.data);
    assert_int_equal(m->main_dtype, QV_DTYPE_Q4_1);
    for (int i = 0; i < c->n_layers; i++) {
        const qv_layer_weights *l = &m->layers[i];
        const qv_tensor *w[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
        for (size_t k = 0; k < QV_ARRAY_LEN(w); k++)
            assert_int_equal(w[k]->dtype, QV_DTYPE_Q4_1);
        assert_int_equal(l->attn_norm.dtype, QV_DTYPE_F32);
        assert_int_equal(l->ffn_norm.dtype, QV_DTYPE_F32);
    }
    assert_int_equal(m->n_params, 134515008); /* ~134.5M */
    assert_int_equal(m->n_weight_bytes, 66355200 + 30081024 + 140544);
    /* inv_freq: default RoPE, theta 1e5, d 64 */
    assert_true(m->rope_inv_freq[0] == 1.0f);
    assert_true(m->rope_inv_freq[31] < 1e-4f && m->rope_inv_freq[31] > 1e-5f);

    const qv_gguf *g = m->gguf;
    assert_non_null(g);
    cJSON *e = load_json_fixture(qv_test_path("tests/fixtures/formats/smollm2.expect.json"));
    assert_int_equal(qv_gguf_file_size(g),
                     (size_t)cJSON_GetObjectItem(e, "file_size")->valuedouble);
    int64_t ft;
    assert_true(qv_gguf_get_int(g, "general.file_type", &ft));
    assert_int_equal(ft, 3);
    const char *s;
    size_t sl;
    assert_true(qv_gguf_get_str(g, "tokenizer.ggml.pre", &s, &sl));
    assert_int_equal(sl, 6);
    assert_memory_equal(s, "smollm", 6);
    assert_true(qv_gguf_get_str(g, "tokenizer.ggml.model", &s, &sl));
    assert_memory_equal(s, "gpt2", 4);
    assert_true(qv_gguf_has(g, "tokenizer.chat_template"));
    assert_null(qv_gguf_find_tensor(g, "output.weight"));
    /* every tensor as the Python reader lists it */
    const cJSON *ts = cJSON_GetObjectItem(e, "tensors");
    assert_int_equal(qv_gguf_n_tensors(g), (size_t)cJSON_GetArraySize(ts));
    for (const cJSON *t = ts->child; t; t = t->next) {
        const qv_gguf_tensor *gt = qv_gguf_find_tensor(g, t->string);
        assert_non_null(gt);
        assert_string_equal(qv_gguf_ggml_type_name(gt->ggml_type),
                            cJSON_GetObjectItem(t, "type")->valuestring);
        const cJSON *ne = cJSON_GetObjectItem(t, "ne");
        int d = 0;
        for (const cJSON *x = ne->child; x; x = x->next, d++) {
            assert_int_equal(gt->ne[d], (int64_t)x->valuedouble);
        }
    }
    /* HF-order q/k bytes = numpy inverse permutation (sha256) */
    const cJSON *sha = cJSON_GetObjectItem(e, "hf_order_sha256");
    struct {
        const char *name;
        const qv_tensor *t;
    } chk[] = {{"blk.0.attn_q.weight", &m->layers[0].wq},
               {"blk.0.attn_k.weight", &m->layers[0].wk},
               {"blk.29.attn_q.weight", &m->layers[29].wq},
               {"blk.29.attn_k.weight", &m->layers[29].wk},
               {"blk.0.attn_v.weight", &m->layers[0].wv}};
    for (size_t i = 0; i < QV_ARRAY_LEN(chk); i++) {
        char hex[65];
        qv_sha256_hex(chk[i].t->data, chk[i].t->row_bytes * (size_t)chk[i].t->n_rows, hex);
        const cJSON *want = cJSON_GetObjectItem(sha, chk[i].name);
        assert_non_null(want);
        if (strcmp(hex, want->valuestring)) fprintf(stderr, "%s: sha256 differs\n", chk[i].name);
        assert_string_equal(hex, want->valuestring);
    }
    cJSON_Delete(e);
    qv_model_free(m);
}

int main(void) {
    const char *env = getenv("QV_SMOLLM2_GGUF");
    const char *home = getenv("HOME");
    if (env) {
        snprintf(model_path, sizeof(model_path), "%s", env);
    } else {
        snprintf(model_path, sizeof(model_path),
                 "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    }
    if (!qv_test_exists(model_path)) {
        fprintf(stderr,
                "SKIP: %s not found (set QV_SMOLLM2_GGUF or download it, see FORMATS.md 6.3)\n",
                model_path);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answer),
        cmocka_unit_test(test_config_and_tensors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
