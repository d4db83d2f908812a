/*
 * adapter.c - adapter loading entry points (directory and in-memory), format detection, pickle
 * refusal, base-name check, size limit, the shared helpers of adapter_internal.h, describe and
 * free.
 *
 * Not the format details: PEFT kinds live in peft.c, AdapterHub bottleneck adapters in
 * bottleneck.c. Invariant: on failure everything allocated so far is reachable from the
 * half-built adapter, which qv_adapter_free releases.
 * Thread: any; a load touches only its own context.
 */
#include <ctype.h>
#include <stdatomic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "adapters/adapter_internal.h"

#define QV_ADAPTER_MAX_CONFIG ((size_t)1 << 20)

/* ---- names ---- */

const char *qv_adapter_kind_name(enum qv_adapter_kind k) {
    static const char *const names[] = {"LORA",          "IA3",      "PREFIX_TUNING",
                                        "PROMPT_TUNING", "P_TUNING", "ADAPTION_PROMPT",
                                        "BOTTLENECK"};
    return (unsigned)k < QV_ARRAY_LEN(names) ? names[k] : "?";
}

const char *qv_proj_name(enum qv_proj p) {
    static const char *const names[] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                        "gate_proj", "up_proj", "down_proj"};
    return (unsigned)p < QV_ARRAY_LEN(names) ? names[p] : "?";
}

const char *qv_bn_act_name(enum qv_bn_act a) {
    static const char *const names[] = {"relu", "silu",    "gelu",      "gelu_new",
                                        "tanh", "sigmoid", "leakyrelu", "identity"};
    return (unsigned)a < QV_ARRAY_LEN(names) ? names[a] : "?";
}

/* ---- allocations ---- */

uint64_t qv__adapter_next_uid(void) {
    static atomic_uint_least64_t next_uid = 1;
    return atomic_fetch_add(&next_uid, 1);
}

const char *qv__adapter_lora_extra(const qv_adapter *ad) {
    return ad->use_dora                               ? "DoRA"
           : ad->embed_lora.rank                      ? "embedding LoRA"
           : ad->lm_head_lora.rank                    ? "lm_head LoRA"
           : ad->embed_replace || ad->lm_head_replace ? "modules_to_save"
           : ad->n_trainable_tokens                   ? "trainable tokens"
                                                      : NULL;
}

qv_status qv__adapter_own(qv_adapter *ad, void *p) {
    if (ad->priv_n == ad->priv_cap) {
        size_t cap = ad->priv_cap ? ad->priv_cap * 2 : 64;
        void **n = qv_realloc(ad->priv_allocs, cap * sizeof(*n));
        if (!n) {
            qv_free(p);
            return QV_ERR_NOMEM;
        }
        ad->priv_allocs = n;
        ad->priv_cap = cap;
    }
    ad->priv_allocs[ad->priv_n++] = p;
    return QV_OK;
}

/* n elements of elem_size bytes owned by ad and counted in n_bytes. */
static void *alloc_elems(qv__adapter_ctx *c, size_t n, size_t elem_size) {
    if (n > SIZE_MAX / sizeof(float) / 2) {
        qv_errorf(c->err, QV_ERR_LIMIT, "adapter array of %zu elements is too large", n);
        return NULL;
    }
    void *p = qv_malloc(n * elem_size);
    if (!p || qv__adapter_own(c->ad, p) != QV_OK) {
        qv_errorf(c->err, QV_ERR_NOMEM, "out of memory allocating %zu adapter elements", n);
        return NULL;
    }
    c->ad->n_bytes += n * elem_size;
    if (c->lim.max_n_bytes && c->ad->n_bytes > c->lim.max_n_bytes) {
        qv_errorf(c->err, QV_ERR_LIMIT, "adapter needs more than the %zu-byte limit (max_n_bytes)",
                  c->lim.max_n_bytes);
        return NULL;
    }
    return p;
}

float *qv__adapter_alloc(qv__adapter_ctx *c, size_t n) { return alloc_elems(c, n, sizeof(float)); }

void qv__adapter_release(qv__adapter_ctx *c, float *p, size_t n) {
    qv_adapter *ad = c->ad;
    for (size_t i = ad->priv_n; i-- > 0;) {
        if (ad->priv_allocs[i] != p) continue;
        qv_free(p);
        ad->priv_allocs[i] = ad->priv_allocs[--ad->priv_n];
        ad->n_bytes -= (n ? n : 1) * sizeof(float);
        return;
    }
    QV_ASSERT(!"qv__adapter_release: not an adapter allocation");
}

qv_status qv__adapter_ensure_layers(qv__adapter_ctx *c, int n) {
    qv_adapter *ad = c->ad;
    if (n <= ad->n_layers) return QV_OK;
    if (c->base) return QV_ERR_INVALID; /* caller checks the layer index against the base */
    if (n > 4096) return qv_errorf(c->err, QV_ERR_INVALID, "layer index %d is too large", n - 1);
    qv_adapter_layer *l = qv_realloc(ad->layers, (size_t)n * sizeof(*l));
    if (!l) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory growing adapter layers");
    memset(l + ad->n_layers, 0, (size_t)(n - ad->n_layers) * sizeof(*l));
    ad->layers = l;
    ad->n_layers = n;
    return QV_OK;
}

/* ---- tensors ---- */

const char *qv__adapter_shape_str(const qv_st_tensor *t, char *buf, size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < t->n_dims && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

static const char *want_str(int n_dims, const int64_t *shape, char *buf, size_t n) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < n_dims && o < n; i++) {
        if (shape[i] < 0)
            o += (size_t)snprintf(buf + o, n - o, "%s*", i ? ", " : "");
        else
            o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

static qv_status check_shape(qv__adapter_ctx *c, const qv_st_tensor *t, int n_dims,
                             const int64_t *shape) {
    bool ok = t->n_dims == n_dims;
    for (int i = 0; ok && i < n_dims; i++)
        if (shape[i] >= 0 && t->shape[i] != shape[i]) ok = false;
    if (ok) return QV_OK;
    char a[96], b[96];
    return qv_errorf(c->err, QV_ERR_INVALID, "tensor %s: expected shape %s, got %s", t->name,
                     want_str(n_dims, shape, a, sizeof(a)), qv__adapter_shape_str(t, b, sizeof(b)));
}

static qv_status not_finite(qv__adapter_ctx *c, const qv_st_tensor *t, float v, int64_t i) {
    return qv_errorf(c->err, QV_ERR_INVALID,
                     "tensor %s holds a non-finite value (%s) at "
                     "element %lld",
                     t->name, isnan(v) ? "NaN" : "Inf", (long long)i);
}

qv_status qv__adapter_take(qv__adapter_ctx *c, const qv_st_tensor *t, int n_dims,
                           const int64_t *shape, float **out) {
    qv_status s = check_shape(c, t, n_dims, shape);
    if (s) return s;
    float *p = qv__adapter_alloc(c, (size_t)(t->n_elems ? t->n_elems : 1));
    if (!p) return c->err ? c->err->status : QV_ERR_NOMEM;
    const unsigned char *src = t->data;
    for (int64_t i = 0; i < t->n_elems; i++) {
        float v;
        if (t->dtype == QV_DTYPE_F32) {
            memcpy(&v, src + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            v = t->dtype == QV_DTYPE_F16 ? qv_f16_to_f32(h) : qv_bf16_to_f32(h);
        }
        if (!isfinite(v)) return not_finite(c, t, v, i);
        p[i] = v;
    }
    *out = p;
    return QV_OK;
}

qv_status qv__adapter_take16(qv__adapter_ctx *c, const qv_st_tensor *t, int n_dims,
                             const int64_t *shape, uint16_t **out) {
    QV_ASSERT(t->dtype == QV_DTYPE_F16 || t->dtype == QV_DTYPE_BF16);
    qv_status s = check_shape(c, t, n_dims, shape);
    if (s) return s;
    uint16_t *p = alloc_elems(c, (size_t)(t->n_elems ? t->n_elems : 1), sizeof(uint16_t));
    if (!p) return c->err ? c->err->status : QV_ERR_NOMEM;
    if (t->n_elems) memcpy(p, t->data, (size_t)t->n_elems * sizeof(uint16_t));
    /* All exponent bits set = Inf or NaN, in both formats. */
    const uint16_t exp_mask = t->dtype == QV_DTYPE_F16 ? 0x7C00u : 0x7F80u;
    for (int64_t i = 0; i < t->n_elems; i++)
        if ((p[i] & exp_mask) == exp_mask)
            return not_finite(
                c, t, t->dtype == QV_DTYPE_F16 ? qv_f16_to_f32(p[i]) : qv_bf16_to_f32(p[i]), i);
    *out = p;
    return QV_OK;
}

static float lora_elem(enum qv_dtype wt, const float *f32, const uint16_t *h, size_t i) {
    switch (wt) {
    case QV_DTYPE_F16: return qv_f16_to_f32(h[i]);
    case QV_DTYPE_BF16: return qv_bf16_to_f32(h[i]);
    default: return f32[i];
    }
}

float qv_lora_a_at(const qv_lora *lo, size_t i) { return lora_elem(lo->wtype, lo->a, lo->a16, i); }
float qv_lora_b_at(const qv_lora *lo, size_t i) { return lora_elem(lo->wtype, lo->b, lo->b16, i); }

/* ---- config accessors ---- */

static const cJSON *get(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

qv_status qv__cfg_num(qv__adapter_ctx *c, const cJSON *o, const char *key, double def,
                      double *out) {
    const cJSON *v = get(o, key);
    if (!v) {
        *out = def;
        return QV_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"%s\" must be a finite number", key);
    *out = v->valuedouble;
    return QV_OK;
}

qv_status qv__cfg_int(qv__adapter_ctx *c, const cJSON *o, const char *key, int def, int *out) {
    double d = def;
    qv_status s = qv__cfg_num(c, o, key, def, &d);
    if (s) return s;
    if (d != floor(d) || d < -1e9 || d > 1e9)
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"%s\" must be an integer", key);
    *out = (int)d;
    return QV_OK;
}

qv_status qv__cfg_bool(qv__adapter_ctx *c, const cJSON *o, const char *key, bool def, bool *out) {
    const cJSON *v = get(o, key);
    if (!v) {
        *out = def;
        return QV_OK;
    }
    if (!cJSON_IsBool(v))
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"%s\" must be true or false", key);
    *out = cJSON_IsTrue(v);
    return QV_OK;
}

qv_status qv__cfg_str(qv__adapter_ctx *c, const cJSON *o, const char *key, const char **out) {
    const cJSON *v = get(o, key);
    *out = NULL;
    if (!v) return QV_OK;
    if (!cJSON_IsString(v))
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"%s\" must be a string", key);
    *out = v->valuestring;
    return QV_OK;
}

bool qv__cfg_set(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    if (!v || cJSON_IsFalse(v)) return false;
    if (cJSON_IsNumber(v)) return v->valuedouble != 0.0;
    if (cJSON_IsString(v)) return v->valuestring[0] != '\0';
    if (cJSON_IsArray(v) || cJSON_IsObject(v)) return v->child != NULL;
    return true;
}

/* ---- module paths ---- */

const char *qv__adapter_strip_prefix(const char *key) {
    static const char pre[] = "base_model.model.";
    return strncmp(key, pre, sizeof(pre) - 1) ? key : key + sizeof(pre) - 1;
}

const char *qv__adapter_parse_proj(const char *path, int *layer, enum qv_proj *proj) {
    static const char pre[] = "model.layers.";
    if (strncmp(path, pre, sizeof(pre) - 1)) return NULL;
    const char *p = path + sizeof(pre) - 1;
    if (!isdigit((unsigned char)*p)) return NULL;
    long n = 0;
    while (isdigit((unsigned char)*p)) {
        n = n * 10 + (*p++ - '0');
        if (n > 100000) return NULL;
    }
    static const struct {
        const char *s;
        enum qv_proj p;
    } map[] = {{".self_attn.q_proj", QV_PROJ_Q}, {".self_attn.k_proj", QV_PROJ_K},
               {".self_attn.v_proj", QV_PROJ_V}, {".self_attn.o_proj", QV_PROJ_O},
               {".mlp.gate_proj", QV_PROJ_GATE}, {".mlp.up_proj", QV_PROJ_UP},
               {".mlp.down_proj", QV_PROJ_DOWN}};
    for (size_t i = 0; i < QV_ARRAY_LEN(map); i++) {
        size_t l = strlen(map[i].s);
        if (!strncmp(p, map[i].s, l) && (p[l] == '\0' || p[l] == '.')) {
            *layer = (int)n;
            *proj = map[i].p;
            return p + l;
        }
    }
    return NULL;
}

void qv_proj_dims(const qv_model_config *m, enum qv_proj p, int *n_out, int *n_in) {
    int q = m->n_heads * m->head_dim, kv = m->n_kv_heads * m->head_dim;
    switch (p) {
    case QV_PROJ_Q: *n_out = q, *n_in = m->dim; break;
    case QV_PROJ_K:
    case QV_PROJ_V: *n_out = kv, *n_in = m->dim; break;
    case QV_PROJ_O: *n_out = m->dim, *n_in = q; break;
    case QV_PROJ_GATE:
    case QV_PROJ_UP: *n_out = m->n_ff, *n_in = m->dim; break;
    default: *n_out = m->dim, *n_in = m->n_ff; break;
    }
}

int qv_proj_n_in(const qv_model_config *c, enum qv_proj p) {
    int n_out, n_in;
    qv_proj_dims(c, p, &n_out, &n_in);
    return n_in;
}

int qv_proj_n_out(const qv_model_config *c, enum qv_proj p) {
    int n_out, n_in;
    qv_proj_dims(c, p, &n_out, &n_in);
    return n_out;
}

void qv__adapter_proj_dims(const qv_adapter *ad, const qv_model *base, enum qv_proj p, int *n_out,
                           int *n_in) {
    (void)ad;
    if (!base) {
        *n_out = *n_in = -1;
        return;
    }
    qv_proj_dims(&base->cfg, p, n_out, n_in);
}

/* ---- base name check ---- */

static const char *last_component(const char *s) {
    const char *p = strrchr(s, '/');
    return p && p[1] ? p + 1 : s;
}

/* Lower-cased alphanumeric tokens of the last path component: "HuggingFaceTB/SmolLM2-135M-
 * Instruct" -> "smollm2 135m instruct" (tokens separated by one space, at most cap-1 bytes). */
static void name_tokens(const char *s, char *out, size_t cap) {
    size_t n = 0;
    bool sep = false;
    for (s = last_component(s); *s && n + 2 < cap; s++) {
        if (isalnum((unsigned char)*s)) {
            if (sep && n) out[n++] = ' ';
            out[n++] = (char)tolower((unsigned char)*s);
            sep = false;
        } else {
            sep = true;
        }
    }
    out[n] = '\0';
}

/* The first token that looks like a parameter count ("135m", "8b", "1.7b" reads "7b"), or "". */
static void size_token(const char *toks, char *out, size_t cap) {
    out[0] = '\0';
    for (const char *t = toks; *t;) {
        size_t len = strcspn(t, " ");
        if (len >= 2 && len < cap && (t[len - 1] == 'm' || t[len - 1] == 'b') &&
            strspn(t, "0123456789") == len - 1) {
            memcpy(out, t, len);
            out[len] = '\0';
            return;
        }
        t += len;
        while (*t == ' ')
            t++;
    }
}

/* "Clearly differs": the first tokens (the model family) differ, or both names carry a
 * parameter count and the counts differ. So "org/Tiny-Llama-GQA" matches "tiny-llama-gqa",
 * "HuggingFaceTB/SmolLM2-135M-Instruct" matches a GGUF general.name "Smollm2 135M 8k Lc100K
 * Mix1 Ep2", but "meta-llama/Llama-3-8B" and "SmolLM2-360M" do not. Empty or unknown names
 * never differ. */
static bool names_differ(const char *want, const char *have) {
    if (!want || !have) return false;
    char a[256], b[256], sa[16], sb[16];
    name_tokens(want, a, sizeof(a));
    name_tokens(have, b, sizeof(b));
    if (!a[0] || !b[0]) return false;
    size_t la = strcspn(a, " "), lb = strcspn(b, " ");
    if (la != lb || memcmp(a, b, la)) return true;
    size_token(a, sa, sizeof(sa));
    size_token(b, sb, sizeof(sb));
    return sa[0] && sb[0] && strcmp(sa, sb);
}

/* Messages quote names from user files: control bytes become '?', so a message stays one line
 * (logs, HTTP error bodies) whatever the file holds. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = '?';
}

static qv_status check_base_name(qv__adapter_ctx *c) {
    if (!c->base || !names_differ(c->ad->base_name, c->base->name)) return QV_OK;
    if (c->lim.strict_base_name)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "adapter was trained on base model \"%.200s\" but the loaded model is "
                         "\"%.200s\"",
                         c->ad->base_name, c->base->name);
    char a[201], b[201];
    snprintf(a, sizeof(a), "%s", c->ad->base_name);
    snprintf(b, sizeof(b), "%s", c->base->name);
    one_line(a);
    one_line(b);
    QV_LOGW("adapter was trained on base model \"%s\" but the loaded model is \"%s\"", a, b);
    return QV_OK;
}

/* ---- entry points ---- */

static qv_status load_common(const char *config, size_t config_len, const qv_st_file *st,
                             const qv_model *base, const qv_adapter_limits *lim, bool bottleneck,
                             qv_adapter **out, qv_error *err) {
    qv__adapter_ctx c = {.base = base, .st = st, .err = err};
    if (lim) c.lim = *lim;
    cJSON *root = cJSON_ParseWithLength(config, config_len);
    qv_status s = QV_OK;
    if (!root || !cJSON_IsObject(root)) {
        s = qv_errorf(err, QV_ERR_INVALID, "adapter_config.json is not a JSON object");
        goto done;
    }
    c.root = root;
    c.cfg = root;
    c.ad = qv_calloc(1, sizeof(*c.ad));
    if (!c.ad) {
        s = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    c.ad->uid = qv__adapter_next_uid();
    if (base) {
        const qv_model_config *m = &base->cfg;
        c.ad->has_base = true;
        c.ad->dim = m->dim;
        c.ad->n_vocab = m->n_vocab;
        c.ad->n_kv_heads = m->n_kv_heads;
        c.ad->head_dim = m->head_dim;
        c.ad->layers = qv_calloc((size_t)m->n_layers, sizeof(*c.ad->layers));
        if (!c.ad->layers) {
            s = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
            goto done;
        }
        c.ad->n_layers = m->n_layers;
    }
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
    const cJSON *bc = cJSON_GetObjectItemCaseSensitive(root, "config");
    if (pt && !bottleneck) {
        s = qv__adapter_load_peft(&c);
    } else if (cJSON_IsObject(bc)) {
        c.cfg = bc;
        s = qv__adapter_load_bottleneck(&c);
    } else if (bottleneck) {
        s = qv_errorf(err, QV_ERR_INVALID,
                      "AdapterHub adapter_config.json has no \"config\" "
                      "object");
    } else {
        s = qv_errorf(err, QV_ERR_INVALID,
                      "adapter_config.json has neither \"peft_type\" (PEFT) "
                      "nor \"config\" (AdapterHub)");
    }
    if (s == QV_OK) s = check_base_name(&c);
done:
    cJSON_Delete(root);
    if (s != QV_OK) {
        qv_adapter_free(c.ad);
        *out = NULL;
        return s;
    }
    *out = c.ad;
    return QV_OK;
}

qv_status qv_adapter_load_buffer(const char *config, size_t config_len, const void *weights,
                                 size_t weights_len, const qv_model *base,
                                 const qv_adapter_limits *lim, qv_adapter **out, qv_error *err) {
    *out = NULL;
    qv_st_file *st = NULL;
    qv_status s = qv_st_open_buffer(weights, weights_len, &st, err);
    if (s != QV_OK) {
        qv_error_prefix(err, "adapter weights");
        if (err) one_line(err->msg);
        return s;
    }
    s = load_common(config, config_len, st, base, lim, false, out, err);
    qv_st_close(st);
    if (s != QV_OK && err) one_line(err->msg);
    return s;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

qv_status qv_adapter_load(const char *dir, const qv_model *base, const qv_adapter_limits *lim,
                          qv_adapter **out, qv_error *err) {
    *out = NULL;
    size_t dl = strlen(dir);
    char *path = qv_malloc(dl + 64);
    char *cfg = NULL;
    size_t cfg_len = 0;
    qv_st_file *st = NULL;
    qv_status s;
    if (!path) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    snprintf(path, dl + 64, "%s/adapter_config.json", dir);
    s = qv_read_file(path, QV_ADAPTER_MAX_CONFIG, &cfg, &cfg_len, err);
    if (s != QV_OK) goto fail;
    /* PEFT writes adapter_model.*, AdapterHub writes adapter.safetensors / pytorch_adapter.bin. */
    static const char *const st_names[] = {"adapter_model.safetensors", "adapter.safetensors"};
    bool bottleneck = false, found = false;
    for (int i = 0; i < 2 && !found; i++) {
        snprintf(path, dl + 64, "%s/%s", dir, st_names[i]);
        if (file_exists(path)) found = true, bottleneck = i == 1;
    }
    if (!found) {
        snprintf(path, dl + 64, "%s/adapter_model.bin", dir);
        if (file_exists(path)) {
            s = qv_errorf(err, QV_ERR_UNSUPPORTED,
                          "%s: adapter_model.bin is a pickle file, which quiver never loads; "
                          "convert it with PEFT: PeftModel.from_pretrained(base, dir)"
                          ".save_pretrained(out, safe_serialization=True)",
                          dir);
            goto fail;
        }
        snprintf(path, dl + 64, "%s/pytorch_adapter.bin", dir);
        if (file_exists(path)) {
            s = qv_errorf(err, QV_ERR_UNSUPPORTED,
                          "%s: pytorch_adapter.bin is a pickle file, which quiver never loads; "
                          "convert it with AdapterHub: model.load_adapter(dir) then "
                          "model.save_adapter(out, name, use_safetensors=True)",
                          dir);
            goto fail;
        }
        s = qv_errorf(err, QV_ERR_NOT_FOUND,
                      "%s: no adapter_model.safetensors (PEFT) or adapter.safetensors (AdapterHub)",
                      dir);
        goto fail;
    }
    s = qv_st_open(path, &st, err);
    if (s != QV_OK) goto fail;
    s = load_common(cfg, cfg_len, st, base, lim, bottleneck, out, err);
    if (s != QV_OK) qv_error_prefix(err, "%s", dir);
fail:
    if (s != QV_OK && err) one_line(err->msg);
    qv_st_close(st);
    qv_free(cfg);
    qv_free(path);
    return s;
}

void qv_adapter_free(qv_adapter *ad) {
    if (!ad) return;
    for (size_t i = 0; i < ad->priv_n; i++)
        qv_free(ad->priv_allocs[i]);
    qv_free(ad->priv_allocs);
    qv_free(ad->layers);
    qv_free(ad->base_name);
    qv_free(ad->name);
    qv_free(ad);
}

size_t qv_adapter_n_bytes(const qv_adapter *ad) { return ad ? ad->n_bytes : 0; }

int32_t qv_adapter_alora_start(const qv_adapter *ad, const int32_t *prompt, size_t n) {
    if (!ad || ad->n_alora_tokens <= 0) return 0;
    const size_t k = (size_t)ad->n_alora_tokens;
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;) /* the last occurrence */
        if (!memcmp(prompt + i, ad->alora_tokens, k * sizeof(*prompt))) return (int32_t)i;
    return INT32_MAX;
}

/* ---- describe ---- */

static void describe_lora(const qv_adapter *ad, FILE *f) {
    for (int p = 0; p < QV_PROJ_COUNT; p++) {
        int n = 0, rmin = 1 << 30, rmax = 0;
        float smin = INFINITY, smax = -INFINITY;
        bool dora = false, bias = false;
        for (int l = 0; l < ad->n_layers; l++) {
            const qv_lora *x = &ad->layers[l].lora[p];
            if (!x->rank) continue;
            n++;
            rmin = QV_MIN(rmin, x->rank), rmax = QV_MAX(rmax, x->rank);
            smin = fminf(smin, x->scale), smax = fmaxf(smax, x->scale);
            dora |= x->magnitude != NULL;
            bias |= x->b_bias != NULL;
        }
        if (!n) continue;
        fprintf(f, "  %-9s layers %d/%d  rank %d", qv_proj_name((enum qv_proj)p), n, ad->n_layers,
                rmin);
        if (rmax != rmin) fprintf(f, "..%d", rmax);
        fprintf(f, "  scale %g", (double)smin);
        if (smax != smin) fprintf(f, "..%g", (double)smax);
        fprintf(f, "%s%s\n", dora ? "  DoRA" : "", bias ? "  lora_bias" : "");
    }
    const qv_lora *e[2] = {&ad->embed_lora, &ad->lm_head_lora};
    static const char *const en[2] = {"embed_tokens", "lm_head"};
    for (int i = 0; i < 2; i++)
        if (e[i]->rank)
            fprintf(f, "  %-9s rank %d  scale %g%s\n", en[i], e[i]->rank, (double)e[i]->scale,
                    e[i]->magnitude ? "  DoRA" : "");
    if (ad->embed_replace) fprintf(f, "  modules_to_save: embed_tokens (full replacement)\n");
    if (ad->lm_head_replace) fprintf(f, "  modules_to_save: lm_head (full replacement)\n");
    if (ad->n_trainable_tokens)
        fprintf(f, "  trainable tokens: %d embedding rows replaced\n", ad->n_trainable_tokens);
}

void qv_adapter_describe(const qv_adapter *ad, FILE *f) {
    fprintf(f, "kind: %s\n", qv_adapter_kind_name(ad->kind));
    if (ad->name) fprintf(f, "name: %s\n", ad->name);
    if (ad->base_name) fprintf(f, "base model (from config): %s\n", ad->base_name);
    fprintf(f, "layers: %d\n", ad->n_layers);
    switch (ad->kind) {
    case QV_ADAPTER_LORA:
        fprintf(f, "rslora: %s  dora: %s  lora_bias: %s\n", ad->use_rslora ? "yes" : "no",
                ad->use_dora ? "yes" : "no", ad->lora_bias ? "yes" : "no");
        if (ad->n_alora_tokens) {
            fprintf(f, "activated LoRA: acts from the last occurrence of tokens [");
            for (int i = 0; i < ad->n_alora_tokens; i++)
                fprintf(f, "%s%d", i ? ", " : "", (int)ad->alora_tokens[i]);
            fprintf(f, "] in the prompt on\n");
        }
        fprintf(f, "targets:\n");
        describe_lora(ad, f);
        break;
    case QV_ADAPTER_IA3:
        fprintf(f, "targets:\n");
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            int n = 0;
            bool in = false;
            for (int l = 0; l < ad->n_layers; l++)
                if (ad->layers[l].ia3[p]) n++, in = ad->layers[l].ia3_input[p];
            if (n)
                fprintf(f, "  %-9s layers %d/%d  %s scaling\n", qv_proj_name((enum qv_proj)p), n,
                        ad->n_layers, in ? "input (feedforward)" : "output");
        }
        break;
    case QV_ADAPTER_PREFIX_TUNING:
        fprintf(f, "virtual tokens: %d (per-layer K/V, %d kv heads x %d)\n", ad->n_virtual,
                ad->n_kv_heads, ad->head_dim);
        break;
    case QV_ADAPTER_PROMPT_TUNING:
    case QV_ADAPTER_P_TUNING:
        fprintf(f, "virtual tokens: %d (input embeddings of dim %d)\n", ad->n_virtual, ad->dim);
        break;
    case QV_ADAPTER_ADAPTION_PROMPT:
        fprintf(f, "adapted layers: %d..%d  adapter_len: %d\n", ad->ap_first_layer,
                ad->n_layers - 1, ad->ap_len);
        break;
    case QV_ADAPTER_BOTTLENECK: {
        int na = 0, nf = 0, dmin = 1 << 30, dmax = 0;
        for (int l = 0; l < ad->n_layers; l++) {
            const qv_bn_unit *u[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
            for (int j = 0; j < 2; j++) {
                if (!u[j]->d) continue;
                j ? nf++ : na++;
                dmin = QV_MIN(dmin, u[j]->d), dmax = QV_MAX(dmax, u[j]->d);
            }
        }
        float sc = 1.0f;
        for (int l = 0; l < ad->n_layers; l++)
            if (ad->layers[l].bn_ffn.d || ad->layers[l].bn_attn.d) {
                sc = ad->layers[l].bn_ffn.d ? ad->layers[l].bn_ffn.scaling
                                            : ad->layers[l].bn_attn.scaling;
                break;
            }
        fprintf(f, "type: %s  activation: %s  scaling: %s",
                ad->bn_parallel ? "parallel (par_bn)"
                : ad->bn_mh_adapter && ad->bn_output_adapter
                    ? "sequential, attention + ffn (double_seq_bn)"
                : ad->bn_mh_adapter ? "sequential, attention only"
                                    : "sequential, ffn (seq_bn)",
                qv_bn_act_name(ad->bn_act), ad->bn_scaling_mode);
        if (strcmp(ad->bn_scaling_mode, "channel")) fprintf(f, " %g", (double)sc);
        fprintf(f,
                "\nflags: original_ln_before %d, original_ln_after %d, residual_before_ln %s, "
                "ln_before %d, ln_after %d, adapter_residual_before_ln %d\n",
                ad->bn_original_ln_before, ad->bn_original_ln_after,
                ad->bn_residual == QV_BN_RES_BEFORE_LN  ? "true"
                : ad->bn_residual == QV_BN_RES_POST_ADD ? "post_add"
                                                        : "false",
                ad->bn_ln_before, ad->bn_ln_after, ad->bn_adapter_residual_before_ln);
        fprintf(f, "units: attention %d, ffn %d  bottleneck %d", na, nf, na + nf ? dmin : 0);
        if (dmax > dmin) fprintf(f, "..%d", dmax);
        fprintf(f, "\n");
        break;
    }
    default: break;
    }
    enum qv_dtype wt = QV_DTYPE_F32;
    for (int l = 0; l < ad->n_layers && wt == QV_DTYPE_F32; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            if (ad->layers[l].lora[p].rank && ad->layers[l].lora[p].wtype != QV_DTYPE_F32)
                wt = ad->layers[l].lora[p].wtype;
    if (wt != QV_DTYPE_F32)
        fprintf(f, "size: %zu bytes (LoRA A/B in %s, the rest F32)\n", ad->n_bytes,
                qv_dtype_name(wt));
    else
        fprintf(f, "size: %zu bytes (F32)\n", ad->n_bytes);
    fprintf(f, "validated against a base model: %s\n", ad->has_base ? "yes" : "no");
}
