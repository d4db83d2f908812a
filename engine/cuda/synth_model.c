/*
 * synth_model.c - configuration-only models for GPU benchmarks (synth_model.h).
 *
 * Invariant: tensor data pointers are consecutive bytes of one owned key block (block + i for
 * the i-th tensor, tok_embd first), so they are distinct and the block is found again at free.
 */
#include "cuda/synth_model.h"

#include <math.h>
#include <string.h>

static void mat(qv_tensor *t, int64_t rows, int64_t cols, const unsigned char **key) {
    *t = (qv_tensor){QV_DTYPE_BF16, rows, cols, (size_t)cols * 2, *key};
    (*key)++;
}
static void vec(qv_tensor *t, int64_t n, const unsigned char **key) {
    *t = (qv_tensor){QV_DTYPE_F32, 1, n, (size_t)n * 4, *key};
    (*key)++;
}

qv_status qv_synth_model_create(const qv_model_config *cfg, qv_model **out, qv_error *err) {
    *out = NULL;
    qv_model_config c = *cfg;
    if (!c.head_dim && c.n_heads > 0) c.head_dim = c.dim / c.n_heads;
    if (c.n_vocab <= 0 || c.dim <= 0 || c.n_ff <= 0 || c.n_layers <= 0 || c.n_heads <= 0 ||
        c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads || c.head_dim <= 0 || c.head_dim % 2)
        return qv_errorf(err, QV_ERR_INVALID, "synthetic model: inconsistent configuration");
    if (c.norm_eps <= 0.0f) c.norm_eps = 1e-5f;
    if (c.rope_theta <= 0.0f) c.rope_theta = 10000.0f;
    if (!c.max_pos) c.max_pos = 8192;
    c.bos_id = c.pad_id = -1;
    qv_model *m = qv_calloc(1, sizeof(*m));
    unsigned char *keys = qv_calloc((size_t)c.n_layers * 16 + 8, 1);
    if (m) {
        m->layers = qv_calloc((size_t)c.n_layers, sizeof(qv_layer_weights));
        m->rope_inv_freq = qv_malloc((size_t)(c.head_dim / 2) * sizeof(float));
        m->name = qv_strdup("synthetic");
    }
    if (!m || !keys || !m->layers || !m->rope_inv_freq || !m->name) {
        qv_free(keys);
        qv_model_free(m);
        return qv_errorf(err, QV_ERR_NOMEM, "synthetic model: out of memory");
    }
    m->cfg = c;
    m->format = QV_FORMAT_SAFETENSORS;
    m->main_dtype = QV_DTYPE_BF16;
    const unsigned char *k = keys;
    const int64_t qd = (int64_t)c.n_heads * c.head_dim, kvd = (int64_t)c.n_kv_heads * c.head_dim;
    mat(&m->tok_embd, c.n_vocab, c.dim, &k); /* first: keys == tok_embd.data */
    vec(&m->out_norm, c.dim, &k);
    if (c.tie_embeddings)
        m->lm_head = m->tok_embd;
    else
        mat(&m->lm_head, c.n_vocab, c.dim, &k);
    size_t params = (size_t)c.n_vocab * (size_t)c.dim * (c.tie_embeddings ? 1u : 2u);
    for (int l = 0; l < c.n_layers; l++) {
        qv_layer_weights *w = &m->layers[l];
        vec(&w->attn_norm, c.dim, &k);
        mat(&w->wq, qd, c.dim, &k);
        mat(&w->wk, kvd, c.dim, &k);
        mat(&w->wv, kvd, c.dim, &k);
        mat(&w->wo, c.dim, qd, &k);
        vec(&w->ffn_norm, c.dim, &k);
        mat(&w->w_gate, c.n_ff, c.dim, &k);
        mat(&w->w_up, c.n_ff, c.dim, &k);
        mat(&w->w_down, c.dim, c.n_ff, &k);
        params += (size_t)(2 * qd * c.dim + 2 * kvd * c.dim + 3 * (int64_t)c.n_ff * c.dim);
    }
    for (int i = 0; i < c.head_dim / 2; i++)
        m->rope_inv_freq[i] = 1.0f / powf(c.rope_theta, (float)(2 * i) / (float)c.head_dim);
    m->n_params = params;
    m->n_weight_bytes = params * 2;
    *out = m;
    return QV_OK;
}

void qv_synth_model_free(qv_model *m) {
    if (!m) return;
    qv_free((void *)(uintptr_t)m->tok_embd.data);
    qv_model_free(m);
}

qv_model_config qv_synth_config_smollm2_135m(void) {
    return (qv_model_config){.n_vocab = 49152,
                             .dim = 576,
                             .n_ff = 1536,
                             .n_layers = 30,
                             .n_heads = 9,
                             .n_kv_heads = 3,
                             .head_dim = 64,
                             .max_pos = 8192,
                             .norm_eps = 1e-5f,
                             .rope_theta = 100000.0f,
                             .tie_embeddings = true};
}

qv_model_config qv_synth_config_llama_1b(void) {
    return (qv_model_config){.n_vocab = 128256,
                             .dim = 2048,
                             .n_ff = 8192,
                             .n_layers = 16,
                             .n_heads = 32,
                             .n_kv_heads = 8,
                             .head_dim = 64,
                             .max_pos = 8192,
                             .norm_eps = 1e-5f,
                             .rope_theta = 500000.0f,
                             .tie_embeddings = true};
}
