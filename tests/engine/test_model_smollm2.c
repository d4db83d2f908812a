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

#include "engine/gguf.h"
#include "engine/model.h"
#include "fmt_test_helpers.h"
#include "test_util.h"

static char model_path[4096];

/* ---- a compact SHA-256 (FIPS 180-4) for comparing the un-permuted bytes ---- */
static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            k + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

static void sha256_hex(const void *data, size_t n, char out[65]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    const uint8_t *p = data;
    size_t full = n / 64 * 64;
    for (size_t i = 0; i < full; i += 64)
        sha256_block(h, p + i);
    uint8_t tail[128] = {0};
    size_t r = n - full;
    memcpy(tail, p + full, r);
    tail[r] = 0x80;
    size_t tl = r + 9 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++)
        tail[tl - 1 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(h, tail);
    if (tl == 128) sha256_block(h, tail + 64);
    for (int i = 0; i < 8; i++)
        snprintf(out + 8 * i, 9, "%08x", h[i]);
}

static void test_sha256_known_answer(void **state) {
    (void)state;
    char hex[65];
    sha256_hex("abc", 3, hex);
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
        sha256_hex(chk[i].t->data, chk[i].t->row_bytes * (size_t)chk[i].t->n_rows, hex);
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
