/*
 * model.c - qv_model_load for HF model directories (config.json + safetensors, FORMATS.md 2 and
 * 1.5) and GGUF files (FORMATS.md 3), producing one HF-layout qv_model.
 *
 * Both paths end in the same tensor-mapping code (`bind_weights`), which sees tensors through a
 * small `src_tensor` view so the shape checks, Q/K un-permutation (3.6-A), 1-D -> F32
 * conversion and accounting exist once. 2-D weights stay in their stored dtype and point into
 * the mapping; copies are made only for un-permuted GGUF q/k (rows move whole, any dtype) and
 * for data that is not aligned to its element size (safetensors guarantees no alignment).
 * Not the forward pass and not the tokenizer (which reads m->gguf / m->dir itself).
 * Thread: loading may run on any thread; the result is immutable.
 */
#include "model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gguf.h"
#include "safetensors.h"

#define CONFIG_MAX_BYTES (16u << 20)

struct qv_model_priv {
    qv_st_set *st; /* HF safetensors files (NULL for GGUF) */
    void **owned;  /* [n_owned] buffers owned by the model (copies, F32 vectors) */
    size_t n_owned, cap_owned;
    size_t owned_bytes;                    /* bytes of weight data held in owned buffers */
    size_t mapped_bytes;                   /* bytes of weight data used in place from the mapping */
    size_t file_bytes;                     /* total bytes mapped */
    int stored_count[QV_DTYPE_COUNT];      /* weight tensors by stored dtype */
    uint64_t stored_bytes[QV_DTYPE_COUNT]; /* their bytes as stored */
    bool permuted;                         /* GGUF llama arch: q/k rows were un-permuted */
    bool rope_freqs;                       /* GGUF rope_freqs tensor applied */
    uint32_t gguf_version;
};

/* A tensor as a file stores it, independent of the container. */
typedef struct src_tensor {
    const char *name;
    enum qv_dtype dtype; /* QV_DTYPE_COUNT when unsupported */
    const char *dtype_name;
    int n_dims;
    int64_t dims[4]; /* safetensors: PyTorch order; GGUF: ne order (contiguous first) */
    const void *data;
    uint64_t n_bytes;
} src_tensor;

typedef struct loader {
    qv_model *m;
    const char *file; /* file named in messages */
    qv_error *err;
    bool is_gguf;
} loader;

const char *qv_arch_name(enum qv_arch a) {
    switch (a) {
    case QV_ARCH_LLAMA: return "llama";
    case QV_ARCH_MISTRAL: return "mistral";
    case QV_ARCH_QWEN2: return "qwen2";
    }
    return "?";
}

static const char *rope_name(enum qv_rope_scaling s) {
    switch (s) {
    case QV_ROPE_NONE: return "none";
    case QV_ROPE_LINEAR: return "linear";
    case QV_ROPE_LLAMA3: return "llama3";
    case QV_ROPE_DYNAMIC: return "dynamic";
    }
    return "?";
}

/* ---- ownership helpers ---- */

static void *own_alloc(qv_model *m, size_t n_bytes) {
    struct qv_model_priv *p = m->priv;
    if (p->n_owned == p->cap_owned) {
        size_t cap = p->cap_owned ? 2 * p->cap_owned : 64;
        void **o = qv_realloc(p->owned, cap * sizeof(*o));
        if (!o) return NULL;
        p->owned = o;
        p->cap_owned = cap;
    }
    void *b = qv_malloc(n_bytes ? n_bytes : 1);
    if (!b) return NULL;
    p->owned[p->n_owned++] = b;
    return b;
}

void qv_model_free(qv_model *m) {
    if (!m) return;
    if (m->priv) {
        for (size_t i = 0; i < m->priv->n_owned; i++)
            qv_free(m->priv->owned[i]);
        qv_free(m->priv->owned);
        qv_st_set_close(m->priv->st);
        qv_free(m->priv);
    }
    qv_gguf_close(m->gguf);
    qv_free(m->layers);
    qv_free(m->rope_inv_freq);
    qv_free(m->path);
    qv_free(m->name);
    qv_free(m->dir);
    qv_free(m);
}

/* ---- tensor lookup through either container ---- */

static bool find_src(loader *L, const char *name, src_tensor *s) {
    memset(s, 0, sizeof(*s));
    if (L->is_gguf) {
        const qv_gguf_tensor *t = qv_gguf_find_tensor(L->m->gguf, name);
        if (!t) return false;
        s->name = t->name;
        s->dtype = t->dtype;
        s->dtype_name = qv_gguf_ggml_type_name(t->ggml_type);
        s->n_dims = t->n_dims;
        for (int i = 0; i < 4; i++)
            s->dims[i] = t->ne[i];
        s->data = t->data;
        s->n_bytes = t->n_bytes;
        return true;
    }
    const qv_st_tensor *t = qv_st_set_find(L->m->priv->st, name);
    if (!t) return false;
    s->name = t->name;
    s->dtype = t->dtype;
    s->dtype_name = qv_dtype_name(t->dtype);
    s->n_dims = t->n_dims;
    for (int i = 0; i < 4; i++)
        s->dims[i] = i < t->n_dims ? t->shape[i] : 1;
    if (t->n_dims > 4) s->n_dims = 5; /* reported as a shape mismatch below */
    s->data = t->data;
    s->n_bytes = t->n_bytes;
    return true;
}

/* "[a, b]" (safetensors) or "ne=[a, b]" (GGUF) for messages. */
static void fmt_dims(const loader *L, const src_tensor *s, char *buf, size_t n) {
    int k = snprintf(buf, n, "%s[", L->is_gguf ? "ne=" : "");
    int nd = s->n_dims > 4 ? 4 : s->n_dims;
    for (int i = 0; i < nd && k > 0 && (size_t)k < n; i++) {
        k += snprintf(buf + k, n - (size_t)k, "%s%lld", i ? ", " : "", (long long)s->dims[i]);
    }
    if (k > 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, "%s]", s->n_dims > 4 ? ", ..." : "");
}

static qv_status shape_error(loader *L, const src_tensor *s, const char *want) {
    char got[96];
    fmt_dims(L, s, got, sizeof(got));
    return qv_errorf(L->err, QV_ERR_INVALID, "%s: tensor '%s' has shape %s, expected %s%s", L->file,
                     s->name, got, L->is_gguf ? "ne=" : "", want);
}

static qv_status missing_error(loader *L, const char *name) {
    return qv_errorf(L->err, QV_ERR_NOT_FOUND, "%s: missing tensor '%s'", L->file, name);
}

static qv_status dtype_check(loader *L, const src_tensor *s) {
    if (s->dtype == QV_DTYPE_COUNT) {
        return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                         "%s: tensor '%s' has dtype %s, which quiver does not support", L->file,
                         s->name, s->dtype_name);
    }
    return QV_OK;
}

static void account(loader *L, const src_tensor *s, int64_t n_elems) {
    struct qv_model_priv *p = L->m->priv;
    p->stored_count[s->dtype]++;
    p->stored_bytes[s->dtype] += s->n_bytes;
    L->m->n_weight_bytes += (size_t)s->n_bytes;
    L->m->n_params += (size_t)n_elems;
}

/* Un-permutes rows (FORMATS.md 3.6 inverse map) of a [n_rows, row_bytes] matrix:
 * HF_row[h*d + t*(d/2) + j] = GGUF_row[h*d + 2j + t]. */
static void unpermute_rows(const uint8_t *src, uint8_t *dst, int64_t n_rows, size_t row_bytes,
                           int head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_rows / head_dim; h++) {
        for (int t = 0; t < 2; t++) {
            for (int64_t j = 0; j < half; j++) {
                int64_t hf = h * head_dim + t * half + j;
                int64_t gg = h * head_dim + 2 * j + t;
                memcpy(dst + (size_t)hf * row_bytes, src + (size_t)gg * row_bytes, row_bytes);
            }
        }
    }
}

/* Binds a 2-D weight [rows, cols] (HF order). `permute` un-permutes q/k rows of GGUF llama.
 * Absent + !required -> out->data == NULL. */
static qv_status bind_matrix(loader *L, const char *name, int64_t rows, int64_t cols, bool permute,
                             bool required, qv_tensor *out) {
    memset(out, 0, sizeof(*out));
    src_tensor s;
    if (!find_src(L, name, &s)) return required ? missing_error(L, name) : QV_OK;
    char want[64];
    if (L->is_gguf) {
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)cols, (long long)rows);
        if (s.dims[0] != cols || s.dims[1] != rows || s.dims[2] != 1 || s.dims[3] != 1) {
            return shape_error(L, &s, want);
        }
    } else {
        snprintf(want, sizeof(want), "[%lld, %lld]", (long long)rows, (long long)cols);
        if (s.n_dims != 2 || s.dims[0] != rows || s.dims[1] != cols)
            return shape_error(L, &s, want);
    }
    qv_status st = dtype_check(L, &s);
    if (st != QV_OK) return st;
    out->dtype = s.dtype;
    out->n_rows = rows;
    out->n_cols = cols;
    out->row_bytes = qv_dtype_row_bytes(s.dtype, cols);
    QV_ASSERT((uint64_t)out->row_bytes * (uint64_t)rows == s.n_bytes);
    account(L, &s, rows * cols);
    /* Element loads need 4-byte alignment for F32 and 2 for the rest (f16 scales). */
    size_t align = s.dtype == QV_DTYPE_F32 ? 4 : 2;
    bool misaligned = ((uintptr_t)s.data % align) != 0;
    if (!permute && !misaligned) {
        out->data = s.data;
        L->m->priv->mapped_bytes += (size_t)s.n_bytes;
        return QV_OK;
    }
    uint8_t *copy = own_alloc(L->m, (size_t)s.n_bytes);
    if (!copy)
        return qv_errorf(L->err, QV_ERR_NOMEM, "%s: out of memory copying '%s'", L->file, name);
    if (permute) {
        unpermute_rows(s.data, copy, rows, out->row_bytes, L->m->cfg.head_dim);
    } else {
        memcpy(copy, s.data, (size_t)s.n_bytes);
    }
    L->m->priv->owned_bytes += (size_t)s.n_bytes;
    out->data = copy;
    return QV_OK;
}

/* Binds a 1-D tensor [len] as an owned F32 vector (optionally un-permuted like q/k rows). */
static qv_status bind_vector(loader *L, const char *name, int64_t len, bool permute, bool required,
                             qv_tensor *out) {
    memset(out, 0, sizeof(*out));
    src_tensor s;
    if (!find_src(L, name, &s)) return required ? missing_error(L, name) : QV_OK;
    char want[32];
    snprintf(want, sizeof(want), "[%lld]", (long long)len);
    bool ok = L->is_gguf ? s.dims[0] == len && s.dims[1] == 1 && s.dims[2] == 1 && s.dims[3] == 1
                         : s.n_dims == 1 && s.dims[0] == len;
    if (!ok) return shape_error(L, &s, want);
    qv_status st = dtype_check(L, &s);
    if (st != QV_OK) return st;
    account(L, &s, len);
    float *v = own_alloc(L->m, (size_t)len * sizeof(float));
    if (!v)
        return qv_errorf(L->err, QV_ERR_NOMEM, "%s: out of memory converting '%s'", L->file, name);
    qv_dequantize_row(s.dtype, s.data, v, len);
    if (permute) {
        float *tmp = qv_malloc((size_t)len * sizeof(float));
        if (!tmp) return qv_errorf(L->err, QV_ERR_NOMEM, "%s: out of memory", L->file);
        unpermute_rows((const uint8_t *)v, (uint8_t *)tmp, len, sizeof(float), L->m->cfg.head_dim);
        memcpy(v, tmp, (size_t)len * sizeof(float));
        qv_free(tmp);
    }
    L->m->priv->owned_bytes += (size_t)len * sizeof(float);
    out->dtype = QV_DTYPE_F32;
    out->n_rows = 1;
    out->n_cols = len;
    out->row_bytes = (size_t)len * sizeof(float);
    out->data = v;
    return QV_OK;
}

/* Tensor names of one container. */
typedef struct names {
    const char *embd, *norm, *lm_head;
    const char *attn_norm, *q, *k, *v, *o, *ffn_norm, *gate, *up, *down; /* "%d" patterns */
    const char *bq, *bk, *bv, *bo, *bgate, *bup, *bdown;
} names;

static const names hf_names = {
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "model.layers.%d.input_layernorm.weight",
    "model.layers.%d.self_attn.q_proj.weight",
    "model.layers.%d.self_attn.k_proj.weight",
    "model.layers.%d.self_attn.v_proj.weight",
    "model.layers.%d.self_attn.o_proj.weight",
    "model.layers.%d.post_attention_layernorm.weight",
    "model.layers.%d.mlp.gate_proj.weight",
    "model.layers.%d.mlp.up_proj.weight",
    "model.layers.%d.mlp.down_proj.weight",
    "model.layers.%d.self_attn.q_proj.bias",
    "model.layers.%d.self_attn.k_proj.bias",
    "model.layers.%d.self_attn.v_proj.bias",
    "model.layers.%d.self_attn.o_proj.bias",
    "model.layers.%d.mlp.gate_proj.bias",
    "model.layers.%d.mlp.up_proj.bias",
    "model.layers.%d.mlp.down_proj.bias",
};

static const names gguf_names = {
    "token_embd.weight",       "output_norm.weight",        "output.weight",
    "blk.%d.attn_norm.weight", "blk.%d.attn_q.weight",      "blk.%d.attn_k.weight",
    "blk.%d.attn_v.weight",    "blk.%d.attn_output.weight", "blk.%d.ffn_norm.weight",
    "blk.%d.ffn_gate.weight",  "blk.%d.ffn_up.weight",      "blk.%d.ffn_down.weight",
    "blk.%d.attn_q.bias",      "blk.%d.attn_k.bias",        "blk.%d.attn_v.bias",
    "blk.%d.attn_output.bias", "blk.%d.ffn_gate.bias",      "blk.%d.ffn_up.bias",
    "blk.%d.ffn_down.bias",
};

static void lname(char *buf, size_t n, const char *pattern, int layer) {
    /* The patterns are the constant tables above, each with exactly one %d. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    snprintf(buf, n, pattern, layer);
#pragma GCC diagnostic pop
}

static qv_status bind_weights(loader *L, const names *nm, bool permute) {
    qv_model *m = L->m;
    const qv_model_config *c = &m->cfg;
    qv_status st;
    int64_t q_out = (int64_t)c->n_heads * c->head_dim,
            kv_out = (int64_t)c->n_kv_heads * c->head_dim;
    if ((st = bind_matrix(L, nm->embd, c->n_vocab, c->dim, false, true, &m->tok_embd))) return st;
    if ((st = bind_vector(L, nm->norm, c->dim, false, true, &m->out_norm))) return st;
    if (c->tie_embeddings) {
        m->lm_head = m->tok_embd;
    } else if ((st = bind_matrix(L, nm->lm_head, c->n_vocab, c->dim, false, true, &m->lm_head))) {
        return st;
    }
    /* Every layer needs >= 9 tensors: refuse an absurd layer count before allocating for it. */
    size_t n_tensors = 0;
    if (L->is_gguf) {
        n_tensors = qv_gguf_n_tensors(m->gguf);
    } else {
        for (size_t i = 0; i < qv_st_set_n_files(m->priv->st); i++) {
            n_tensors += qv_st_n_tensors(qv_st_set_file_at(m->priv->st, i));
        }
    }
    if ((size_t)c->n_layers > n_tensors / 9) {
        char n0[128];
        lname(n0, sizeof(n0), nm->attn_norm, c->n_layers - 1);
        return qv_errorf(L->err, QV_ERR_NOT_FOUND,
                         "%s: %d layers need more than the %zu tensors present (missing tensor "
                         "'%s')",
                         L->file, c->n_layers, n_tensors, n0);
    }
    m->layers = qv_calloc((size_t)c->n_layers, sizeof(*m->layers));
    if (!m->layers) return qv_errorf(L->err, QV_ERR_NOMEM, "%s: out of memory", L->file);
    char n[128];
#define MAT(field, pat, r, cc, perm)                                                               \
    do {                                                                                           \
        lname(n, sizeof(n), nm->pat, i);                                                           \
        if ((st = bind_matrix(L, n, r, cc, perm, true, &ly->field))) return st;                    \
    } while (0)
#define VEC(field, pat, len, perm, req)                                                            \
    do {                                                                                           \
        lname(n, sizeof(n), nm->pat, i);                                                           \
        if ((st = bind_vector(L, n, len, perm, req, &ly->field))) return st;                       \
    } while (0)
    for (int i = 0; i < c->n_layers; i++) {
        qv_layer_weights *ly = &m->layers[i];
        VEC(attn_norm, attn_norm, c->dim, false, true);
        MAT(wq, q, q_out, c->dim, permute);
        MAT(wk, k, kv_out, c->dim, permute);
        MAT(wv, v, kv_out, c->dim, false);
        MAT(wo, o, c->dim, q_out, false);
        VEC(ffn_norm, ffn_norm, c->dim, false, true);
        MAT(w_gate, gate, c->n_ff, c->dim, false);
        MAT(w_up, up, c->n_ff, c->dim, false);
        MAT(w_down, down, c->dim, c->n_ff, false);
        if (c->qkv_bias) {
            VEC(bq, bq, q_out, permute, true);
            VEC(bk, bk, kv_out, permute, true);
            VEC(bv, bv, kv_out, false, true);
        }
        if (c->o_bias) VEC(bo, bo, c->dim, false, true);
        if (c->mlp_bias) {
            VEC(b_gate, bgate, c->n_ff, false, true);
            VEC(b_up, bup, c->n_ff, false, true);
            VEC(b_down, bdown, c->dim, false, true);
        }
    }
#undef MAT
#undef VEC
    /* main dtype: the stored dtype holding most bytes of layer projections. */
    uint64_t by[QV_DTYPE_COUNT] = {0};
    for (int i = 0; i < c->n_layers; i++) {
        const qv_tensor *ts[] = {&m->layers[i].wq,    &m->layers[i].wk,     &m->layers[i].wv,
                                 &m->layers[i].wo,    &m->layers[i].w_gate, &m->layers[i].w_up,
                                 &m->layers[i].w_down};
        for (size_t k = 0; k < QV_ARRAY_LEN(ts); k++)
            by[ts[k]->dtype] += ts[k]->row_bytes * (uint64_t)ts[k]->n_rows;
    }
    m->main_dtype = m->tok_embd.dtype;
    uint64_t best = 0;
    for (int d = 0; d < QV_DTYPE_COUNT; d++) {
        if (by[d] > best) best = by[d], m->main_dtype = (enum qv_dtype)d;
    }
    return QV_OK;
}

/* ---- configuration checks shared by both formats ---- */

static qv_status check_config(loader *L) {
    qv_model_config *c = &L->m->cfg;
    struct {
        const char *name;
        long long v;
    } pos[] = {{"vocab_size", c->n_vocab},          {"hidden_size", c->dim},
               {"intermediate_size", c->n_ff},      {"num_hidden_layers", c->n_layers},
               {"num_attention_heads", c->n_heads}, {"num_key_value_heads", c->n_kv_heads},
               {"head_dim", c->head_dim},           {"max_position_embeddings", c->max_pos}};
    for (size_t i = 0; i < QV_ARRAY_LEN(pos); i++) {
        if (pos[i].v <= 0 || pos[i].v > (1 << 24)) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: %s = %lld is out of range", L->file,
                             pos[i].name, pos[i].v);
        }
    }
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0) {
        return qv_errorf(L->err, QV_ERR_INVALID,
                         "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                         L->file, c->n_heads, c->n_kv_heads);
    }
    if (c->head_dim % 2 != 0) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: head_dim %d is odd (RoPE needs pairs)",
                         L->file, c->head_dim);
    }
    if (!(c->norm_eps > 0.0f) || !(c->rope_theta > 0.0f) || !isfinite(c->rope_theta)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: rms_norm_eps and rope_theta must be > 0",
                         L->file);
    }
    if (c->rope_scaling != QV_ROPE_NONE && !(c->rope_factor > 0.0f) &&
        !(c->rope_scaling == QV_ROPE_LLAMA3 && L->m->priv->rope_freqs)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: rope scaling factor must be > 0", L->file);
    }
    if (c->rope_scaling == QV_ROPE_LLAMA3 && !L->m->priv->rope_freqs &&
        (!(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_orig_max_pos <= 0 ||
         !(c->rope_low_freq_factor > 0.0f))) {
        return qv_errorf(L->err, QV_ERR_INVALID,
                         "%s: llama3 rope_scaling needs high_freq_factor > low_freq_factor > 0 "
                         "and original_max_position_embeddings > 0",
                         L->file);
    }
    return QV_OK;
}

/* inv_freq exactly as HF computes it in fp32 (FORMATS.md 2.3), then static scaling. */
static qv_status compute_inv_freq(loader *L) {
    qv_model *m = L->m;
    const qv_model_config *c = &m->cfg;
    int half = c->head_dim / 2;
    m->rope_inv_freq = qv_malloc((size_t)half * sizeof(float));
    if (!m->rope_inv_freq) return qv_errorf(L->err, QV_ERR_NOMEM, "%s: out of memory", L->file);
    for (int i = 0; i < half; i++) {
        m->rope_inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
    }
    if (c->rope_scaling == QV_ROPE_LINEAR) {
        for (int i = 0; i < half; i++)
            m->rope_inv_freq[i] /= c->rope_factor;
    } else if (c->rope_scaling == QV_ROPE_LLAMA3 && !m->priv->rope_freqs) {
        float old = (float)c->rope_orig_max_pos;
        float low_wl = old / c->rope_low_freq_factor, high_wl = old / c->rope_high_freq_factor;
        const float two_pi = 6.283185307179586f;
        for (int i = 0; i < half; i++) {
            float f = m->rope_inv_freq[i];
            float wl = two_pi / f;
            if (wl < high_wl) continue;
            if (wl > low_wl) {
                m->rope_inv_freq[i] = f / c->rope_factor;
            } else {
                float s = (old / wl - c->rope_low_freq_factor) /
                          (c->rope_high_freq_factor - c->rope_low_freq_factor);
                m->rope_inv_freq[i] = (1.0f - s) * f / c->rope_factor + s * f;
            }
        }
    }
    /* dynamic: depends on the sequence length; the forward pass rescales when needed. */
    return QV_OK;
}

/* ---- HF directory ---- */

/* Reads `name` in an int config field: absent or null keeps *out (the default). */
static qv_status cfg_int(loader *L, const cJSON *root, const char *key, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return QV_OK;
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || d != floor(d) || d < -2147483648.0 || d > 2147483647.0) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"%s\" must be an integer", L->file, key);
    }
    *out = (int)d;
    return QV_OK;
}

static qv_status cfg_float(loader *L, const cJSON *root, const char *key, float *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return QV_OK;
    if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) <= (double)FLT_MAX)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"%s\" must be a finite float", L->file, key);
    }
    *out = (float)v->valuedouble;
    return QV_OK;
}

static qv_status cfg_bool(loader *L, const cJSON *root, const char *key, bool *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return QV_OK;
    if (!cJSON_IsBool(v)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"%s\" must be true or false", L->file, key);
    }
    *out = cJSON_IsTrue(v);
    return QV_OK;
}

/* bos / eos (int or list) / pad from a config or generation_config object. Keys that are
 * present override; explicit null clears. */
static qv_status cfg_special_ids(loader *L, const cJSON *root) {
    qv_model_config *c = &L->m->cfg;
    qv_status st;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(root, "bos_token_id");
    if (b && cJSON_IsNull(b)) c->bos_id = -1;
    if ((st = cfg_int(L, root, "bos_token_id", &c->bos_id))) return st;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "pad_token_id");
    if (p && cJSON_IsNull(p)) c->pad_id = -1;
    if ((st = cfg_int(L, root, "pad_token_id", &c->pad_id))) return st;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (!e) return QV_OK;
    c->n_eos = 0;
    if (cJSON_IsNull(e)) return QV_OK;
    if (cJSON_IsNumber(e)) {
        int v = -1;
        if ((st = cfg_int(L, root, "eos_token_id", &v))) return st;
        c->eos_ids[c->n_eos++] = v;
        return QV_OK;
    }
    if (!cJSON_IsArray(e)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"eos_token_id\" must be an int or a list",
                         L->file);
    }
    for (const cJSON *x = e->child; x; x = x->next) {
        if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 0 ||
            x->valuedouble > 2147483647.0) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"eos_token_id\" has a non-integer",
                             L->file);
        }
        if (c->n_eos == QV_MAX_EOS) {
            return qv_errorf(L->err, QV_ERR_LIMIT, "%s: more than %d eos_token_id values", L->file,
                             QV_MAX_EOS);
        }
        c->eos_ids[c->n_eos++] = (int)x->valuedouble;
    }
    return QV_OK;
}

static qv_status parse_rope(loader *L, const cJSON *root) {
    qv_model_config *c = &L->m->cfg;
    qv_status st;
    /* transformers >= 5 writes "rope_parameters" (with rope_theta inside); older configs have
     * top-level "rope_theta" and a "rope_scaling" dict or null. */
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (rp && !cJSON_IsNull(rp) && !cJSON_IsObject(rp)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"rope_parameters\" must be an object",
                         L->file);
    }
    if ((st = cfg_float(L, root, "rope_theta", &c->rope_theta))) return st;
    const cJSON *rs =
        cJSON_IsObject(rp) ? rp : cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (!rs || cJSON_IsNull(rs)) return QV_OK;
    if (!cJSON_IsObject(rs)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: \"rope_scaling\" must be an object or null",
                         L->file);
    }
    if ((st = cfg_float(L, rs, "rope_theta", &c->rope_theta))) return st;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
    if (!t) t = cJSON_GetObjectItemCaseSensitive(rs, "type");
    const char *type = cJSON_IsString(t) ? t->valuestring : "default";
    if (!strcmp(type, "default")) return QV_OK;
    bool need_factor = true;
    if (!strcmp(type, "linear")) {
        c->rope_scaling = QV_ROPE_LINEAR;
    } else if (!strcmp(type, "dynamic")) {
        c->rope_scaling = QV_ROPE_DYNAMIC;
    } else if (!strcmp(type, "llama3")) {
        c->rope_scaling = QV_ROPE_LLAMA3;
        const char *req[] = {"low_freq_factor", "high_freq_factor",
                             "original_max_position_embeddings"};
        for (size_t i = 0; i < QV_ARRAY_LEN(req); i++) {
            if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rs, req[i]))) {
                return qv_errorf(L->err, QV_ERR_INVALID, "%s: llama3 rope scaling needs \"%s\"",
                                 L->file, req[i]);
            }
        }
        if ((st = cfg_float(L, rs, "low_freq_factor", &c->rope_low_freq_factor))) return st;
        if ((st = cfg_float(L, rs, "high_freq_factor", &c->rope_high_freq_factor))) return st;
        if ((st = cfg_int(L, rs, "original_max_position_embeddings", &c->rope_orig_max_pos)))
            return st;
    } else {
        return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                         "%s: rope scaling type '%.32s' is not supported "
                         "(default, linear, dynamic, llama3)",
                         L->file, type);
    }
    if (need_factor && !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(rs, "factor"))) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: rope scaling '%s' needs \"factor\"", L->file,
                         type);
    }
    return cfg_float(L, rs, "factor", &c->rope_factor);
}

static qv_status parse_hf_config(loader *L, const cJSON *root) {
    qv_model_config *c = &L->m->cfg;
    qv_status st;
    if (!cJSON_IsObject(root))
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: not a JSON object", L->file);
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: missing \"model_type\"", L->file);
    }
    /* Defaults of LlamaConfig / MistralConfig / Qwen2Config. */
    c->n_vocab = 32000, c->dim = 4096, c->n_layers = 32, c->n_heads = 32;
    c->rope_theta = 10000.0f, c->bos_id = 1, c->pad_id = -1, c->n_eos = 1, c->eos_ids[0] = 2;
    if (!strcmp(mt->valuestring, "llama")) {
        c->arch = QV_ARCH_LLAMA, c->n_ff = 11008, c->max_pos = 2048, c->norm_eps = 1e-6f;
    } else if (!strcmp(mt->valuestring, "mistral")) {
        c->arch = QV_ARCH_MISTRAL, c->n_ff = 14336, c->max_pos = 4096 * 32, c->norm_eps = 1e-6f;
        c->sliding_window = 4096;
    } else if (!strcmp(mt->valuestring, "qwen2")) {
        c->arch = QV_ARCH_QWEN2, c->n_vocab = 151936, c->n_ff = 22016, c->max_pos = 32768;
        c->norm_eps = 1e-6f, c->bos_id = -1, c->n_eos = 0;
    } else {
        return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                         "%s: model_type '%.64s' is not supported (llama, mistral, qwen2)", L->file,
                         mt->valuestring);
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0) {
        return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                         "%s: hidden_act '%.32s' is not supported (silu)", L->file,
                         act->valuestring);
    }
    if ((st = cfg_int(L, root, "vocab_size", &c->n_vocab))) return st;
    if ((st = cfg_int(L, root, "hidden_size", &c->dim))) return st;
    if ((st = cfg_int(L, root, "intermediate_size", &c->n_ff))) return st;
    if ((st = cfg_int(L, root, "num_hidden_layers", &c->n_layers))) return st;
    if ((st = cfg_int(L, root, "num_attention_heads", &c->n_heads))) return st;
    c->n_kv_heads = c->arch == QV_ARCH_MISTRAL ? 8 : c->n_heads;
    if ((st = cfg_int(L, root, "num_key_value_heads", &c->n_kv_heads))) return st;
    if (c->n_heads <= 0) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: num_attention_heads must be > 0", L->file);
    }
    c->head_dim = c->dim / c->n_heads;
    if ((st = cfg_int(L, root, "head_dim", &c->head_dim))) return st;
    if ((st = cfg_int(L, root, "max_position_embeddings", &c->max_pos))) return st;
    if ((st = cfg_float(L, root, "rms_norm_eps", &c->norm_eps))) return st;
    if ((st = parse_rope(L, root))) return st;
    if ((st = cfg_bool(L, root, "tie_word_embeddings", &c->tie_embeddings))) return st;
    if (c->arch == QV_ARCH_LLAMA) {
        bool ab = false;
        if ((st = cfg_bool(L, root, "attention_bias", &ab))) return st;
        if ((st = cfg_bool(L, root, "mlp_bias", &c->mlp_bias))) return st;
        c->qkv_bias = c->o_bias = ab;
    } else if (c->arch == QV_ARCH_QWEN2) {
        c->qkv_bias = true;
        bool use_sw = false;
        if ((st = cfg_bool(L, root, "use_sliding_window", &use_sw))) return st;
        if (use_sw) {
            return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                             "%s: qwen2 use_sliding_window is not supported", L->file);
        }
    } else {
        const cJSON *sw = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
        if (sw && cJSON_IsNull(sw)) c->sliding_window = 0;
        if ((st = cfg_int(L, root, "sliding_window", &c->sliding_window))) return st;
        if (c->sliding_window < 0) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: sliding_window must be >= 0", L->file);
        }
    }
    return cfg_special_ids(L, root);
}

static qv_status read_json(const char *path, cJSON **out, qv_error *err) {
    char *text = NULL;
    size_t len = 0;
    *out = NULL;
    qv_status st = qv_read_file(path, CONFIG_MAX_BYTES, &text, &len, err);
    if (st != QV_OK) return st;
    *out = cJSON_ParseWithLength(text, len);
    qv_free(text);
    if (!*out) return qv_errorf(err, QV_ERR_INVALID, "%s: invalid JSON", path);
    return QV_OK;
}

static qv_status load_hf(qv_model *m, const char *dir, qv_error *err) {
    qv_status st;
    cJSON *cfg = NULL, *gen = NULL;
    char *cfg_path = qv_path_join(dir, "config.json");
    char *gen_path = qv_path_join(dir, "generation_config.json");
    loader L = {m, cfg_path, err, false};
    m->format = QV_FORMAT_SAFETENSORS;
    m->dir = qv_strdup(dir);
    if (!cfg_path || !gen_path || !m->dir) {
        st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((st = read_json(cfg_path, &cfg, err))) goto fail;
    if ((st = parse_hf_config(&L, cfg))) goto fail;
    struct stat sb;
    if (stat(gen_path, &sb) == 0) {
        L.file = gen_path;
        if ((st = read_json(gen_path, &gen, err))) goto fail;
        if (!cJSON_IsObject(gen)) {
            st = qv_errorf(err, QV_ERR_INVALID, "%s: not a JSON object", gen_path);
            goto fail;
        }
        if ((st = cfg_special_ids(&L, gen))) goto fail;
        L.file = cfg_path;
    }
    if ((st = check_config(&L))) goto fail;
    const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cfg, "_name_or_path");
    if (cJSON_IsString(nm) && nm->valuestring[0]) {
        m->name = qv_strdup(nm->valuestring);
    } else {
        const char *base = strrchr(dir, '/');
        base = base && base[1] ? base + 1 : dir;
        m->name = qv_strdup(base);
    }
    if (!m->name) {
        st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    if ((st = qv_st_set_open_dir(dir, &m->priv->st, err))) goto fail;
    m->priv->file_bytes = qv_st_set_mapped_bytes(m->priv->st);
    L.file = dir;
    if ((st = bind_weights(&L, &hf_names, false))) goto fail;
    if ((st = compute_inv_freq(&L))) goto fail;
    QV_LOGI("loaded %s: model_type %s, %d layers, hidden %d, heads %d/%d, head_dim %d, vocab %d, "
            "%zu safetensors file(s), main dtype %s",
            dir, qv_arch_name(m->cfg.arch), m->cfg.n_layers, m->cfg.dim, m->cfg.n_heads,
            m->cfg.n_kv_heads, m->cfg.head_dim, m->cfg.n_vocab, qv_st_set_n_files(m->priv->st),
            qv_dtype_name(m->main_dtype));
fail:
    cJSON_Delete(cfg);
    cJSON_Delete(gen);
    qv_free(cfg_path);
    qv_free(gen_path);
    return st;
}

/* ---- GGUF ---- */

static bool gkey(const loader *L, const char *arch, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", arch, suffix);
    return qv_gguf_has(L->m->gguf, buf);
}

/* Integer metadata that may also be a per-layer array whose entries must all be equal. */
static qv_status gguf_int(loader *L, const char *arch, const char *suffix, bool required,
                          int *out) {
    char key[160];
    const qv_gguf *g = L->m->gguf;
    if (!gkey(L, arch, suffix, key, sizeof(key))) {
        if (required) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: missing metadata key '%s'", L->file, key);
        }
        return QV_OK;
    }
    int64_t v;
    enum qv_gguf_type et;
    uint64_t n;
    if (qv_gguf_get_arr(g, key, &et, &n)) {
        if (n == 0 || !qv_gguf_arr_int(g, key, 0, &v)) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: '%s' is not an integer array", L->file,
                             key);
        }
        for (uint64_t i = 1; i < n; i++) {
            int64_t w;
            if (!qv_gguf_arr_int(g, key, i, &w) || w != v) {
                return qv_errorf(L->err, QV_ERR_UNSUPPORTED,
                                 "%s: per-layer '%s' values differ (not supported)", L->file, key);
            }
        }
    } else if (!qv_gguf_get_int(g, key, &v)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: '%s' is not an integer", L->file, key);
    }
    if (v < 0 || v > INT32_MAX) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: '%s' = %lld is out of range", L->file, key,
                         (long long)v);
    }
    *out = (int)v;
    return QV_OK;
}

static qv_status gguf_float(loader *L, const char *arch, const char *suffix, bool required,
                            float *out) {
    char key[160];
    if (!gkey(L, arch, suffix, key, sizeof(key))) {
        if (required) {
            return qv_errorf(L->err, QV_ERR_INVALID, "%s: missing metadata key '%s'", L->file, key);
        }
        return QV_OK;
    }
    double d;
    if (!qv_gguf_get_float(L->m->gguf, key, &d) || !(fabs(d) <= (double)FLT_MAX)) {
        return qv_errorf(L->err, QV_ERR_INVALID, "%s: '%s' is not a finite float", L->file, key);
    }
    *out = (float)d;
    return QV_OK;
}

static int gguf_token_id(const qv_gguf *g, const char *key) {
    int64_t v;
    if (!qv_gguf_get_int(g, key, &v) || v < 0 || v > INT32_MAX) return -1;
    return (int)v;
}

static void add_eos(qv_model_config *c, int id) {
    if (id < 0 || c->n_eos == QV_MAX_EOS) return;
    for (int i = 0; i < c->n_eos; i++) {
        if (c->eos_ids[i] == id) return;
    }
    c->eos_ids[c->n_eos++] = id;
}

static void log_gguf_facts(const qv_model *m, const char *arch) {
    const qv_gguf *g = m->gguf;
    int64_t file_type = -1, ntok = 0;
    const char *tm = "?", *pre = "?";
    size_t tml = 1, prel = 1;
    enum qv_gguf_type et;
    uint64_t n = 0;
    bool add_bos = false,
         has_add_bos = qv_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos);
    qv_gguf_get_int(g, "general.file_type", &file_type);
    qv_gguf_get_str(g, "tokenizer.ggml.model", &tm, &tml);
    qv_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &prel);
    if (qv_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n)) ntok = (int64_t)n;
    const qv_model_config *c = &m->cfg;
    QV_LOGI("gguf v%u (%zu bytes): general.architecture=%s file_type=%lld context_length=%d "
            "embedding_length=%d block_count=%d feed_forward_length=%d head_count=%d "
            "head_count_kv=%d rms_eps=%g freq_base=%g head_dim=%d",
            qv_gguf_version(g), qv_gguf_file_size(g), arch, (long long)file_type, c->max_pos,
            c->dim, c->n_layers, c->n_ff, c->n_heads, c->n_kv_heads, (double)c->norm_eps,
            (double)c->rope_theta, c->head_dim);
    QV_LOGI("gguf tokenizer: model=%.*s pre=%.*s tokens=%lld bos=%d eos=%d unk=%d pad=%d "
            "add_bos_token=%s chat_template=%s",
            (int)tml, tm, (int)prel, pre, (long long)ntok, c->bos_id, c->n_eos ? c->eos_ids[0] : -1,
            gguf_token_id(g, "tokenizer.ggml.unknown_token_id"), c->pad_id,
            has_add_bos ? (add_bos ? "true" : "false") : "absent",
            qv_gguf_has(g, "tokenizer.chat_template") ? "present" : "absent");
    QV_LOGI("gguf tensors: token_embd %s, blk.0.attn_q %s, blk.0.ffn_down %s, output_norm %s, "
            "output.weight %s, q/k %s, rope_freqs %s",
            qv_dtype_name(m->tok_embd.dtype), qv_dtype_name(m->layers[0].wq.dtype),
            qv_dtype_name(m->layers[0].w_down.dtype),
            qv_gguf_find_tensor(g, "output_norm.weight")
                ? qv_gguf_ggml_type_name(qv_gguf_find_tensor(g, "output_norm.weight")->ggml_type)
                : "?",
            c->tie_embeddings ? "absent (tied to token_embd)" : "present",
            m->priv->permuted ? "un-permuted (llama)" : "not permuted",
            m->priv->rope_freqs ? "applied" : "absent");
}

static qv_status load_gguf(qv_model *m, const char *path, qv_error *err) {
    qv_status st;
    loader L = {m, path, err, true};
    m->format = QV_FORMAT_GGUF;
    if ((st = qv_gguf_open(path, &m->gguf, err))) return st;
    const qv_gguf *g = m->gguf;
    m->priv->file_bytes = qv_gguf_file_size(g);
    m->priv->gguf_version = qv_gguf_version(g);
    const char *as;
    size_t al;
    if (!qv_gguf_get_str(g, "general.architecture", &as, &al)) {
        return qv_errorf(err, QV_ERR_INVALID, "%s: missing string 'general.architecture'", path);
    }
    char arch[32];
    if (al >= sizeof(arch) || memchr(as, 0, al)) {
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "%s: architecture '%.*s' is not supported "
                         "(llama, qwen2)",
                         path, (int)QV_MIN(al, 64), as);
    }
    memcpy(arch, as, al);
    arch[al] = '\0';
    qv_model_config *c = &m->cfg;
    if (!strcmp(arch, "llama")) {
        c->arch = QV_ARCH_LLAMA;
    } else if (!strcmp(arch, "qwen2")) {
        c->arch = QV_ARCH_QWEN2;
    } else {
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "%s: architecture '%s' is not supported (llama, qwen2)", path, arch);
    }
    bool permute = c->arch == QV_ARCH_LLAMA;
    if ((st = gguf_int(&L, arch, "context_length", true, &c->max_pos))) return st;
    if ((st = gguf_int(&L, arch, "embedding_length", true, &c->dim))) return st;
    if ((st = gguf_int(&L, arch, "block_count", true, &c->n_layers))) return st;
    if ((st = gguf_int(&L, arch, "feed_forward_length", true, &c->n_ff))) return st;
    if ((st = gguf_int(&L, arch, "attention.head_count", true, &c->n_heads))) return st;
    if (c->n_heads <= 0) {
        return qv_errorf(err, QV_ERR_INVALID, "%s: %s.attention.head_count must be > 0", path,
                         arch);
    }
    c->n_kv_heads = c->n_heads;
    if ((st = gguf_int(&L, arch, "attention.head_count_kv", false, &c->n_kv_heads))) return st;
    if ((st = gguf_float(&L, arch, "attention.layer_norm_rms_epsilon", true, &c->norm_eps)))
        return st;
    c->head_dim = c->dim / c->n_heads;
    if ((st = gguf_int(&L, arch, "attention.key_length", false, &c->head_dim))) return st;
    int v_len = c->head_dim, rope_dim = c->head_dim;
    if ((st = gguf_int(&L, arch, "attention.value_length", false, &v_len))) return st;
    if ((st = gguf_int(&L, arch, "rope.dimension_count", false, &rope_dim))) return st;
    if (v_len != c->head_dim || rope_dim != c->head_dim) {
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "%s: key_length %d, value_length %d and rope.dimension_count %d differ "
                         "(partial rotary / asymmetric heads are not supported)",
                         path, c->head_dim, v_len, rope_dim);
    }
    c->rope_theta = 10000.0f;
    if ((st = gguf_float(&L, arch, "rope.freq_base", false, &c->rope_theta))) return st;
    char key[160];
    const char *rs;
    size_t rsl;
    snprintf(key, sizeof(key), "%s.rope.scaling.type", arch);
    if (qv_gguf_get_str(g, key, &rs, &rsl) && !(rsl == 4 && !memcmp(rs, "none", 4))) {
        if (rsl == 6 && !memcmp(rs, "linear", 6)) {
            c->rope_scaling = QV_ROPE_LINEAR;
            if ((st = gguf_float(&L, arch, "rope.scaling.factor", true, &c->rope_factor)))
                return st;
        } else {
            return qv_errorf(err, QV_ERR_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported",
                             path, (int)QV_MIN(rsl, 32), rs);
        }
    } else {
        float lin = 1.0f;
        if ((st = gguf_float(&L, arch, "rope.scale_linear", false, &lin))) return st;
        if (lin != 1.0f) c->rope_scaling = QV_ROPE_LINEAR, c->rope_factor = lin;
    }
    /* vocab: {arch}.vocab_size, else the token list, else token_embd rows. */
    enum qv_gguf_type et;
    uint64_t ntok = 0;
    const qv_gguf_tensor *te = qv_gguf_find_tensor(g, "token_embd.weight");
    c->n_vocab = 0;
    if ((st = gguf_int(&L, arch, "vocab_size", false, &c->n_vocab))) return st;
    if (!c->n_vocab && qv_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &ntok) &&
        ntok <= INT32_MAX) {
        c->n_vocab = (int)ntok;
    }
    if (!c->n_vocab && te && te->ne[1] <= INT32_MAX) c->n_vocab = (int)te->ne[1];
    c->tie_embeddings = qv_gguf_find_tensor(g, "output.weight") == NULL;
    c->qkv_bias = qv_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL || c->arch == QV_ARCH_QWEN2;
    c->o_bias = qv_gguf_find_tensor(g, "blk.0.attn_output.bias") != NULL;
    c->mlp_bias = qv_gguf_find_tensor(g, "blk.0.ffn_gate.bias") != NULL;
    c->bos_id = gguf_token_id(g, "tokenizer.ggml.bos_token_id");
    c->pad_id = gguf_token_id(g, "tokenizer.ggml.padding_token_id");
    add_eos(c, gguf_token_id(g, "tokenizer.ggml.eos_token_id"));
    add_eos(c, gguf_token_id(g, "tokenizer.ggml.eot_token_id"));
    add_eos(c, gguf_token_id(g, "tokenizer.ggml.eom_token_id"));
    /* rope_freqs (llama3 factors): divides the angle, so divides inv_freq. */
    const qv_gguf_tensor *rf = qv_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf) {
        m->priv->rope_freqs = true;
        c->rope_scaling = QV_ROPE_LLAMA3; /* factors themselves are not stored in GGUF */
    }
    if ((st = check_config(&L))) return st;
    const char *nm;
    size_t nml;
    if (qv_gguf_get_str(g, "general.name", &nm, &nml) && nml > 0) {
        m->name = qv_strndup(nm, nml);
    } else {
        const char *base = strrchr(path, '/');
        m->name = qv_strdup(base ? base + 1 : path);
    }
    if (!m->name) return qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", path);
    m->priv->permuted = permute;
    if ((st = bind_weights(&L, &gguf_names, permute))) return st;
    if ((st = compute_inv_freq(&L))) return st;
    if (rf) {
        qv_tensor f;
        if ((st = bind_vector(&L, "rope_freqs.weight", c->head_dim / 2, false, true, &f)))
            return st;
        const float *ff = f.data;
        for (int i = 0; i < c->head_dim / 2; i++) {
            if (!(ff[i] > 0.0f)) {
                return qv_errorf(err, QV_ERR_INVALID, "%s: rope_freqs[%d] is not positive", path,
                                 i);
            }
            m->rope_inv_freq[i] /= ff[i];
        }
    }
    log_gguf_facts(m, arch);
    return QV_OK;
}

/* ---- entry points ---- */

qv_status qv_model_load(const char *path, qv_model **out, qv_error *err) {
    *out = NULL;
    qv_status st;
    qv_model *m = qv_calloc(1, sizeof(*m));
    if (!m) return qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", path);
    m->priv = qv_calloc(1, sizeof(*m->priv));
    m->path = qv_strdup(path);
    if (!m->priv || !m->path) {
        st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    struct stat sb;
    if (stat(path, &sb) != 0) {
        st = qv_errorf(err, errno == ENOENT ? QV_ERR_NOT_FOUND : QV_ERR_IO, "%s: %s", path,
                       strerror(errno));
        goto fail;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = load_hf(m, path, err);
    } else {
        st = load_gguf(m, path, err);
    }
    if (st != QV_OK) goto fail;
    *out = m;
    return QV_OK;
fail:
    qv_model_free(m);
    return st;
}

static void fmt_bytes(char *buf, size_t n, uint64_t b) {
    if (b >= 1000000000ull) {
        snprintf(buf, n, "%.2f GB", (double)b / 1e9);
    } else if (b >= 1000000ull) {
        snprintf(buf, n, "%.2f MB", (double)b / 1e6);
    } else if (b >= 1000ull) {
        snprintf(buf, n, "%.2f kB", (double)b / 1e3);
    } else {
        snprintf(buf, n, "%llu B", (unsigned long long)b);
    }
}

void qv_model_print_info(const qv_model *m, FILE *f) {
    const qv_model_config *c = &m->cfg;
    const struct qv_model_priv *p = m->priv;
    char b1[32], b2[32], b3[32];
    fprintf(f, "model:          %s\n", m->name ? m->name : "?");
    if (m->format == QV_FORMAT_GGUF) {
        fprintf(f, "file:           %s (GGUF v%u%s)\n", m->path, p->gguf_version,
                p->permuted ? ", q/k un-permuted to HF layout" : "");
    } else {
        fprintf(f, "directory:      %s (safetensors, %zu file%s)\n", m->path,
                qv_st_set_n_files(p->st), qv_st_set_n_files(p->st) == 1 ? "" : "s");
    }
    fprintf(f, "architecture:   %s\n", qv_arch_name(c->arch));
    fprintf(f, "layers:         %d\n", c->n_layers);
    fprintf(f, "hidden size:    %d\n", c->dim);
    fprintf(f, "ffn size:       %d\n", c->n_ff);
    fprintf(f, "heads:          %d (kv heads %d, head_dim %d, GQA group %d)\n", c->n_heads,
            c->n_kv_heads, c->head_dim, c->n_heads / c->n_kv_heads);
    fprintf(f, "vocab:          %d\n", c->n_vocab);
    fprintf(f, "context length: %d\n", c->max_pos);
    fprintf(f, "rms_norm_eps:   %g\n", (double)c->norm_eps);
    fprintf(f, "rope:           theta %g, scaling %s", (double)c->rope_theta,
            rope_name(c->rope_scaling));
    if (c->rope_scaling == QV_ROPE_LLAMA3 && p->rope_freqs) {
        fprintf(f, " (GGUF rope_freqs)");
    } else if (c->rope_scaling == QV_ROPE_LLAMA3) {
        fprintf(f, " (factor %g, low %g, high %g, original %d)", (double)c->rope_factor,
                (double)c->rope_low_freq_factor, (double)c->rope_high_freq_factor,
                c->rope_orig_max_pos);
    } else if (c->rope_scaling != QV_ROPE_NONE) {
        fprintf(f, " (factor %g)", (double)c->rope_factor);
    }
    fprintf(f, "\n");
    fprintf(f, "sliding window: %s", c->sliding_window ? "" : "none\n");
    if (c->sliding_window) fprintf(f, "%d\n", c->sliding_window);
    fprintf(f, "tied embedding: %s\n", c->tie_embeddings ? "yes" : "no");
    fprintf(f, "biases:         qkv %s, o %s, mlp %s\n", c->qkv_bias ? "yes" : "no",
            c->o_bias ? "yes" : "no", c->mlp_bias ? "yes" : "no");
    fprintf(f, "special ids:    bos %d, eos", c->bos_id);
    for (int i = 0; i < c->n_eos; i++)
        fprintf(f, "%s%d", i ? "," : " ", c->eos_ids[i]);
    if (!c->n_eos) fprintf(f, " none");
    fprintf(f, ", pad %d\n", c->pad_id);
    fprintf(f, "tensors by stored dtype:\n");
    for (int d = 0; d < QV_DTYPE_COUNT; d++) {
        if (!p->stored_count[d]) continue;
        fmt_bytes(b1, sizeof(b1), p->stored_bytes[d]);
        fprintf(f, "  %-5s %5d tensors %12llu bytes (%s)\n", qv_dtype_name((enum qv_dtype)d),
                p->stored_count[d], (unsigned long long)p->stored_bytes[d], b1);
    }
    fprintf(f, "main dtype:     %s\n", qv_dtype_name(m->main_dtype));
    fprintf(f, "parameters:     %zu (%.1fM)\n", m->n_params, (double)m->n_params / 1e6);
    fmt_bytes(b1, sizeof(b1), m->n_weight_bytes);
    fmt_bytes(b2, sizeof(b2), p->mapped_bytes);
    fmt_bytes(b3, sizeof(b3), p->owned_bytes);
    fprintf(f, "weight bytes:   %zu (%s): %s used in place from the mapping, %s in owned copies\n",
            m->n_weight_bytes, b1, b2, b3);
    fmt_bytes(b1, sizeof(b1), p->file_bytes);
    fprintf(f, "file bytes:     %zu mapped (%s)\n", p->file_bytes, b1);
    size_t kv =
        2u * (size_t)c->n_layers * (size_t)c->n_kv_heads * (size_t)c->head_dim * sizeof(float);
    fmt_bytes(b1, sizeof(b1), (uint64_t)kv * (uint64_t)c->max_pos);
    fprintf(f, "KV cache:       %zu bytes per token (F32 K+V, all layers); %s at context %d\n", kv,
            b1, c->max_pos);
}
