/*
 * peft.c - PEFT adapter formats (FORMATS.md 4): LORA (rsLoRA, rank/alpha patterns, DoRA,
 * lora_bias, embedding and lm_head LoRA, modules_to_save, trainable tokens), IA3,
 * PREFIX_TUNING, PROMPT_TUNING, P_TUNING and ADAPTION_PROMPT.
 *
 * Not the common container (adapter.c) and not the forward pass. Every tensor key of the file
 * must be claimed by exactly one rule below; anything else is refused as unexpected, so a file
 * quiver half-understands is never served. Options quiver does not implement are refused by
 * name when they hold non-default values; unknown keys are ignored like PEFT does.
 * Thread: any; one load context per call.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "adapters/adapter_internal.h"

/* ---- shared helpers ---- */

static bool ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static qv_status unexpected(qv__adapter_ctx *c, const char *key, const char *why) {
    return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s%s%s", key, why ? ": " : "",
                     why ? why : "");
}

/* Refuses options that change semantics quiver does not implement (by name). */
static qv_status reject_options(qv__adapter_ctx *c, const char *const *names, size_t n,
                                const char *peft_type) {
    for (size_t i = 0; i < n; i++)
        if (qv__cfg_set(c->cfg, names[i]))
            return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                             "%s option \"%s\" is set, which quiver does not implement", peft_type,
                             names[i]);
    return QV_OK;
}

static qv_status check_task_type(qv__adapter_ctx *c) {
    const char *tt;
    qv_status s = qv__cfg_str(c, c->cfg, "task_type", &tt);
    if (s) return s;
    if (tt && strcmp(tt, "CAUSAL_LM") && strcmp(tt, "FEATURE_EXTRACTION"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "task_type \"%s\" is not served (quiver serves CAUSAL_LM adapters)", tt);
    return QV_OK;
}

/* ---- rank / alpha patterns: PEFT get_pattern_key, re.match(r"(.*\.)?(K)$", key) ---- */

typedef struct pattern_set {
    pcre2_code **re;
    const cJSON **val;
    int n;
} pattern_set;

static void patterns_free(pattern_set *p) {
    for (int i = 0; i < p->n; i++)
        pcre2_code_free(p->re[i]);
    qv_free(p->re);
    qv_free(p->val);
    memset(p, 0, sizeof(*p));
}

static qv_status patterns_compile(qv__adapter_ctx *c, const char *key, pattern_set *p) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(c->cfg, key);
    memset(p, 0, sizeof(*p));
    if (!o || cJSON_IsNull(o)) return QV_OK;
    if (!cJSON_IsObject(o))
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"%s\" must be an object", key);
    int n = cJSON_GetArraySize(o);
    if (!n) return QV_OK;
    p->re = qv_calloc((size_t)n, sizeof(*p->re));
    p->val = qv_calloc((size_t)n, sizeof(*p->val));
    if (!p->re || !p->val) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    const cJSON *e;
    cJSON_ArrayForEach(e, o) {
        if (!cJSON_IsNumber(e) || !isfinite(e->valuedouble) || e->valuedouble <= 0)
            return qv_errorf(c->err, QV_ERR_INVALID, "%s[\"%s\"] must be a positive number", key,
                             e->string);
        size_t kl = strlen(e->string);
        char *src = qv_malloc(kl + 16);
        if (!src) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
        snprintf(src, kl + 16, "(.*\\.)?(%s)$", e->string);
        int code;
        PCRE2_SIZE off;
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
        qv_free(src);
        if (!re) {
            PCRE2_UCHAR msg[120];
            pcre2_get_error_message(code, msg, sizeof(msg));
            return qv_errorf(c->err, QV_ERR_INVALID, "%s key \"%s\" is not a valid regex: %s", key,
                             e->string, (const char *)msg);
        }
        p->re[p->n] = re;
        p->val[p->n] = e;
        p->n++;
    }
    return QV_OK;
}

/* Runs an anchored match of re on path under match/depth limits, so a hostile pattern from an
 * uploaded config cannot backtrack for ever (ReDoS). */
static qv_status regex_run(qv__adapter_ctx *c, const pcre2_code *re, const char *what,
                           const char *path, bool *hit) {
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    qv_status s = QV_OK;
    *hit = false;
    if (!md || !mc) {
        s = qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    pcre2_set_match_limit(mc, 100000);
    pcre2_set_depth_limit(mc, 10000);
    int rc = pcre2_match(re, (PCRE2_SPTR)path, strlen(path), 0, PCRE2_ANCHORED, md, mc);
    if (rc >= 0)
        *hit = true;
    else if (rc != PCRE2_ERROR_NOMATCH)
        s = qv_errorf(c->err, QV_ERR_INVALID, "%s: regex match failed on %s (pcre2 error %d)", what,
                      path, rc);
done:
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
    return s;
}

/* The value of the first pattern matching module path `path`, or NULL in *out. */
static qv_status patterns_match(qv__adapter_ctx *c, const pattern_set *p, const char *what,
                                const char *path, const cJSON **out) {
    *out = NULL;
    for (int i = 0; i < p->n; i++) {
        bool hit;
        qv_status s = regex_run(c, p->re[i], what, path, &hit);
        if (s) return s;
        if (hit) {
            *out = p->val[i];
            return QV_OK;
        }
    }
    return QV_OK;
}

/* ---- LoRA ---- */

enum { SLOT_EMBED = QV_PROJ_COUNT, SLOT_LM_HEAD, SLOTS_PER_LAYER = QV_PROJ_COUNT };

typedef struct lora_slot {
    const qv_st_tensor *a, *b, *bias, *mag;
} lora_slot;

typedef struct lora_state {
    int r_default;
    double alpha_default;
    pattern_set rank_pat, alpha_pat;
    lora_slot *slots; /* [n_layers * 7 + 2]: per-layer projections, then embed, lm_head */
    const qv_st_tensor *embed_repl, *lm_head_repl, *tt_delta;
    bool save_embed, save_lm_head;
} lora_state;

static qv_status dora_scale(qv__adapter_ctx *c, qv_lora *x, const qv_tensor *w, const char *path) {
    if (!w->data || w->n_rows != x->n_out || w->n_cols != x->n_in)
        return qv_errorf(c->err, QV_ERR_INVALID, "%s: the base weight does not fit DoRA", path);
    const size_t n_a = (size_t)x->rank * (size_t)x->n_in;
    float *row = qv_malloc((size_t)x->n_in * sizeof(float));
    /* A widened to F32 once when the adapter keeps it in 16 bits (exact). */
    float *a32 = x->wtype == QV_DTYPE_F32 ? NULL : qv_malloc(n_a * sizeof(float));
    const float *a = a32 ? a32 : x->a;
    qv_status st = QV_OK;
    if (!row || (x->wtype != QV_DTYPE_F32 && !a32)) {
        st = qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; a32 && i < n_a; i++)
        a32[i] = qv_lora_a_at(x, i);
    x->dora_scale = qv__adapter_alloc(c, (size_t)x->n_out);
    if (!x->dora_scale) {
        st = c->err ? c->err->status : QV_ERR_NOMEM;
        goto done;
    }
    for (int o = 0; o < x->n_out; o++) {
        qv_dequantize_row(w->dtype, (const char *)w->data + (size_t)o * w->row_bytes, row, x->n_in);
        /* W_c[o,:] = W[o,:] + s * sum_k B[o,k] A[k,:]: contiguous axpys over the rows of A
         * (vectorizable; O(out*in*r) is the cost of DoRA, paid once per adapter load). */
        for (int k = 0; k < x->rank; k++) {
            float coef = x->scale * qv_lora_b_at(x, (size_t)o * (size_t)x->rank + (size_t)k);
            const float *ak = a + (size_t)k * x->n_in;
            for (int j = 0; j < x->n_in; j++)
                row[j] += coef * ak[j];
        }
        double ss = 0.0;
        for (int j = 0; j < x->n_in; j++)
            ss += (double)row[j] * (double)row[j];
        double n = sqrt(ss);
        if (!(n > 0.0)) {
            st = qv_errorf(c->err, QV_ERR_INVALID, "%s: DoRA weight norm of row %d is zero", path,
                           o);
            goto done;
        }
        x->dora_scale[o] = (float)((double)x->magnitude[o] / n);
    }
done:
    qv_free(row);
    qv_free(a32);
    return st;
}

static const qv_tensor *base_weight(const qv_model *m, int layer, int slot) {
    if (slot == SLOT_LM_HEAD) return &m->lm_head;
    if (slot == SLOT_EMBED) return &m->tok_embd;
    const qv_layer_weights *l = &m->layers[layer];
    const qv_tensor *t[] = {&l->wq, &l->wk, &l->wv, &l->wo, &l->w_gate, &l->w_up, &l->w_down};
    return t[slot];
}

static qv_status lora_module(qv__adapter_ctx *c, lora_state *st, int layer, int slot, qv_lora *x) {
    lora_slot *sl = &st->slots[layer < 0 ? c->ad->n_layers * SLOTS_PER_LAYER + slot - SLOT_EMBED
                                         : layer * SLOTS_PER_LAYER + slot];
    char path[96];
    if (slot == SLOT_EMBED)
        snprintf(path, sizeof(path), "model.embed_tokens");
    else if (slot == SLOT_LM_HEAD)
        snprintf(path, sizeof(path), "lm_head");
    else
        snprintf(path, sizeof(path), "model.layers.%d.%s.%s", layer,
                 slot <= QV_PROJ_O ? "self_attn" : "mlp", qv_proj_name((enum qv_proj)slot));
    bool emb = slot == SLOT_EMBED;
    if (!sl->a && !sl->b) {
        if (sl->bias || sl->mag)
            return qv_errorf(c->err, QV_ERR_NOT_FOUND, "missing tensor %s.%s", path,
                             emb ? "lora_embedding_A" : "lora_A.weight");
        return QV_OK;
    }
    if (!sl->a || !sl->b)
        return qv_errorf(c->err, QV_ERR_NOT_FOUND, "missing tensor %s.%s", path,
                         !sl->a ? (emb ? "lora_embedding_A" : "lora_A.weight")
                                : (emb ? "lora_embedding_B" : "lora_B.weight"));
    if (c->ad->use_dora && !sl->mag)
        return qv_errorf(c->err, QV_ERR_NOT_FOUND,
                         "missing tensor %s.lora_magnitude_vector "
                         "(use_dora is true)",
                         path);
    if (c->ad->lora_bias && !sl->bias && !emb)
        return qv_errorf(c->err, QV_ERR_NOT_FOUND,
                         "missing tensor %s.lora_B.bias (lora_bias is "
                         "true)",
                         path);
    if (emb && sl->mag)
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED, "DoRA on embed_tokens is not implemented");
    if (sl->a->n_dims != 2 || sl->a->shape[0] < 1)
        return qv_errorf(c->err, QV_ERR_INVALID, "tensor %s must be 2-D [rank, in]", sl->a->name);
    int rank = (int)QV_MIN(sl->a->shape[0], (int64_t)1 << 30);
    if (c->lim.max_rank > 0 && rank > c->lim.max_rank)
        return qv_errorf(c->err, QV_ERR_LIMIT, "tensor %s: rank %d exceeds the limit max_rank=%d",
                         sl->a->name, rank, c->lim.max_rank);
    const cJSON *rp, *ap;
    qv_status s = patterns_match(c, &st->rank_pat, "rank_pattern", path, &rp);
    if (s || (s = patterns_match(c, &st->alpha_pat, "alpha_pattern", path, &ap))) return s;
    int r_cfg = rp ? (int)rp->valuedouble : st->r_default;
    if (rank != r_cfg)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "tensor %s has rank %d but the config gives r=%d for %s%s", sl->a->name,
                         rank, r_cfg, path, rp ? " (rank_pattern)" : "");
    double alpha = ap ? ap->valuedouble : st->alpha_default;
    x->rank = rank;
    x->scale = (float)(c->ad->use_rslora ? alpha / sqrt((double)rank) : alpha / rank);
    int n_out = -1, n_in = -1;
    if (c->base) {
        if (slot < QV_PROJ_COUNT) {
            qv__adapter_proj_dims(c->ad, c->base, (enum qv_proj)slot, &n_out, &n_in);
        } else if (emb) {
            n_out = c->base->cfg.dim, n_in = c->base->cfg.n_vocab;
        } else {
            n_out = c->base->cfg.n_vocab, n_in = c->base->cfg.dim;
        }
    }
    /* Decoder projections keep A and B in the file's 16-bit dtype when both share it: the
     * kernels widen them in registers (exact), so only memory and bandwidth change. */
    const enum qv_dtype fdt = sl->a->dtype;
    const bool keep16 = slot < QV_PROJ_COUNT && sl->b->dtype == fdt &&
                        (fdt == QV_DTYPE_F16 || fdt == QV_DTYPE_BF16);
    x->wtype = keep16 ? fdt : QV_DTYPE_F32;
    int64_t sa[2] = {rank, n_in};
    s = keep16 ? qv__adapter_take16(c, sl->a, 2, sa, &x->a16)
               : qv__adapter_take(c, sl->a, 2, sa, &x->a);
    if (s) return s;
    x->n_in = (int)sl->a->shape[1];
    int64_t sb[2] = {n_out, rank};
    s = keep16 ? qv__adapter_take16(c, sl->b, 2, sb, &x->b16)
               : qv__adapter_take(c, sl->b, 2, sb, &x->b);
    if (s) return s;
    x->n_out = (int)sl->b->shape[0];
    int64_t sv[1] = {x->n_out};
    if (sl->bias && (s = qv__adapter_take(c, sl->bias, 1, sv, &x->b_bias))) return s;
    if (sl->mag && (s = qv__adapter_take(c, sl->mag, 1, sv, &x->magnitude))) return s;
    if (x->magnitude && c->base) {
        s = dora_scale(c, x, base_weight(c->base, layer, slot), path);
        if (s) return s;
    }
    return QV_OK;
}

/* modules_to_save entries quiver can serve: lm_head and embed_tokens (full replacements). */
static qv_status lora_modules_to_save(qv__adapter_ctx *c, lora_state *st) {
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(c->cfg, "modules_to_save");
    if (!m || cJSON_IsNull(m)) return QV_OK;
    if (!cJSON_IsArray(m))
        return qv_errorf(c->err, QV_ERR_INVALID, "config key \"modules_to_save\" must be a list");
    const cJSON *e;
    cJSON_ArrayForEach(e, m) {
        if (!cJSON_IsString(e))
            return qv_errorf(c->err, QV_ERR_INVALID, "modules_to_save entries must be strings");
        if (ends_with(e->valuestring, "lm_head"))
            st->save_lm_head = true;
        else if (ends_with(e->valuestring, "embed_tokens"))
            st->save_embed = true;
        else
            return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                             "modules_to_save entry \"%s\" is not supported (only lm_head and "
                             "embed_tokens)",
                             e->valuestring);
    }
    return QV_OK;
}

/* Claims one tensor of a LoRA file; refuses anything it does not know. */
static qv_status lora_classify(qv__adapter_ctx *c, lora_state *st, const qv_st_tensor *t) {
    const char *k = qv__adapter_strip_prefix(t->name);
    int layer;
    enum qv_proj p;
    const char *rest = qv__adapter_parse_proj(k, &layer, &p);
    lora_slot *sl = NULL;
    if (rest) {
        if (layer >= c->ad->n_layers)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "tensor %s: layer %d does not exist in the base model (%d layers)",
                             t->name, layer, c->ad->n_layers);
        sl = &st->slots[layer * SLOTS_PER_LAYER + p];
    } else if (!strncmp(k, "model.embed_tokens.", 19)) {
        rest = k + 18;
        sl = &st->slots[c->ad->n_layers * SLOTS_PER_LAYER + 0];
    } else if (!strncmp(k, "lm_head.", 8)) {
        rest = k + 7;
        sl = &st->slots[c->ad->n_layers * SLOTS_PER_LAYER + 1];
    } else {
        return unexpected(c, t->name, NULL);
    }
    bool is_embed = sl == &st->slots[c->ad->n_layers * SLOTS_PER_LAYER + 0];
    bool is_head = sl == &st->slots[c->ad->n_layers * SLOTS_PER_LAYER + 1];
    const qv_st_tensor **dst = NULL;
    if (!strcmp(rest, ".lora_A.weight") && !is_embed)
        dst = &sl->a;
    else if (!strcmp(rest, ".lora_B.weight") && !is_embed)
        dst = &sl->b;
    else if (!strcmp(rest, ".lora_embedding_A") && is_embed)
        dst = &sl->a;
    else if (!strcmp(rest, ".lora_embedding_B") && is_embed)
        dst = &sl->b;
    else if (!strcmp(rest, ".lora_B.bias")) {
        if (!c->ad->lora_bias) return unexpected(c, t->name, "lora_bias is false");
        dst = &sl->bias;
    } else if (!strcmp(rest, ".lora_magnitude_vector") ||
               !strcmp(rest, ".lora_magnitude_vector.weight")) {
        if (!c->ad->use_dora) return unexpected(c, t->name, "use_dora is false");
        dst = &sl->mag;
    } else if ((is_embed || is_head) && !strcmp(rest, ".weight")) {
        bool save = is_embed ? st->save_embed : st->save_lm_head;
        if (save) {
            dst = is_embed ? &st->embed_repl : &st->lm_head_repl;
        } else if (c->base && (t->n_dims != 2 || t->shape[0] != c->base->cfg.n_vocab)) {
            return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                             "tensor %s: the adapter resizes the vocabulary (%lld rows, base has "
                             "%d), which quiver does not support",
                             t->name, (long long)t->shape[0], c->base->cfg.n_vocab);
        } else {
            return QV_OK; /* redundant embedding side-file (save_embedding_layers) */
        }
    } else if ((is_embed || is_head) && !strcmp(rest, ".base_layer.weight")) {
        if (c->base && (t->n_dims != 2 || t->shape[0] != c->base->cfg.n_vocab))
            return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                             "tensor %s: the adapter resizes the vocabulary (%lld rows, base has "
                             "%d), which quiver does not support",
                             t->name, (long long)t->shape[0], c->base->cfg.n_vocab);
        return QV_OK; /* the base embedding saved alongside a targeted embed_tokens */
    } else if (is_embed && !strcmp(rest, ".token_adapter.trainable_tokens_delta")) {
        dst = &st->tt_delta;
    } else if (!strcmp(rest, ".base_layer.bias") || !strcmp(rest, ".bias")) {
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "tensor %s: trained base biases (bias \"all\" / \"lora_only\") are not "
                         "implemented",
                         t->name);
    } else {
        return unexpected(c, t->name, NULL);
    }
    if (*dst) return unexpected(c, t->name, "duplicate of another key");
    *dst = t;
    return QV_OK;
}

/* The array `list` of token ids of the base vocabulary (any int32 without a base) as a new
 * array owned by the adapter; an error names `what` and the index of a bad entry. */
static qv_status token_ids(qv__adapter_ctx *c, const cJSON *list, const char *what, int32_t **out) {
    int32_t *ids = qv_malloc((size_t)QV_MAX(cJSON_GetArraySize(list), 1) * sizeof(*ids));
    if (!ids || qv__adapter_own(c->ad, ids) != QV_OK)
        return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    *out = ids;
    const int64_t lim = c->base ? c->base->cfg.n_vocab : ((int64_t)1 << 31) - 1;
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const double v = cJSON_IsNumber(e) ? e->valuedouble : -1;
        if (v != floor(v) || v < 0 || v >= (double)lim)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "%s[%d] is not a token id of the base vocabulary", what, i);
        ids[i++] = (int32_t)v;
    }
    return QV_OK;
}

/* trainable_token_indices: a list, or {"embed_tokens": [ids]}. */
static qv_status lora_trainable_tokens(qv__adapter_ctx *c, lora_state *st) {
    const cJSON *ti = cJSON_GetObjectItemCaseSensitive(c->cfg, "trainable_token_indices");
    bool have_cfg = ti && !cJSON_IsNull(ti);
    if (!have_cfg && !st->tt_delta) return QV_OK;
    if (!have_cfg) return unexpected(c, st->tt_delta->name, "trainable_token_indices is not set");
    if (cJSON_IsObject(ti)) {
        const cJSON *e, *list = NULL;
        cJSON_ArrayForEach(e, ti) {
            if (!ends_with(e->string, "embed_tokens"))
                return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                                 "trainable_token_indices for \"%s\" is not supported", e->string);
            list = e;
        }
        ti = list;
    }
    if (!ti || !cJSON_IsArray(ti))
        return qv_errorf(c->err, QV_ERR_INVALID, "trainable_token_indices must be a list of ids");
    int n = cJSON_GetArraySize(ti);
    if (!n) return QV_OK;
    if (!st->tt_delta)
        return qv_errorf(
            c->err, QV_ERR_NOT_FOUND,
            "missing tensor "
            "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta");
    int64_t shape[2] = {n, c->base ? c->base->cfg.dim : -1};
    qv_status s = qv__adapter_take(c, st->tt_delta, 2, shape, &c->ad->trainable_rows);
    if (s) return s;
    if ((s = token_ids(c, ti, "trainable_token_indices", &c->ad->trainable_ids))) return s;
    c->ad->n_trainable_tokens = n;
    return QV_OK;
}

/* Activated LoRA: alora_invocation_tokens, 1..QV_ALORA_MAX_TOKENS token ids of the base
 * vocabulary. The LoRA then acts on the decoder projections only (PEFT's aLoRA variant is for
 * linear layers; DoRA with it has no variant), so the other parts are refused beside it. */
static qv_status lora_alora(qv__adapter_ctx *c) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(c->cfg, "alora_invocation_tokens");
    if (!t || cJSON_IsNull(t)) return QV_OK;
    qv_adapter *ad = c->ad;
    const int n = cJSON_IsArray(t) ? cJSON_GetArraySize(t) : -1;
    if (n < 1 || n > QV_ALORA_MAX_TOKENS)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "alora_invocation_tokens must be a list of 1 to %d token ids",
                         QV_ALORA_MAX_TOKENS);
    const char *with = qv__adapter_lora_extra(ad);
    if (with)
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "alora_invocation_tokens with %s is not implemented (PEFT's aLoRA acts "
                         "on linear projections only)",
                         with);
    qv_status s = token_ids(c, t, "alora_invocation_tokens", &ad->alora_tokens);
    if (s) return s;
    ad->n_alora_tokens = n;
    return QV_OK;
}

static qv_status load_lora(qv__adapter_ctx *c) {
    static const char *const rejected[] = {"layer_replication", "target_parameters", "use_qalora",
                                           "use_bdlora",        "monteclora_config", "kasa_config",
                                           "arrow_config"};
    qv_adapter *ad = c->ad;
    lora_state st = {0};
    qv_status s = reject_options(c, rejected, QV_ARRAY_LEN(rejected), "LORA");
    if (s) goto done;
    const char *str;
    if ((s = qv__cfg_str(c, c->cfg, "init_lora_weights", &str))) {
        /* init_lora_weights is usually a bool; only the string "mica" matters here */
        if (!cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(c->cfg, "init_lora_weights"))) goto done;
        s = QV_OK, str = NULL;
    }
    if (str && !strcmp(str, "mica")) {
        s = qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                      "LORA option \"init_lora_weights\" = \"mica\" "
                      "is not implemented");
        goto done;
    }
    bool fifo;
    if ((s = qv__cfg_bool(c, c->cfg, "fan_in_fan_out", false, &fifo))) goto done;
    if (fifo) {
        s = qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                      "LORA option \"fan_in_fan_out\" is true, but "
                      "Llama projections are nn.Linear (it applies to GPT-2 Conv1D only)");
        goto done;
    }
    if ((s = qv__cfg_str(c, c->cfg, "bias", &str))) goto done;
    if (str && strcmp(str, "none")) {
        s = qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                      "LORA option \"bias\" = \"%s\" (trained base "
                      "biases) is not implemented; only \"none\"",
                      str);
        goto done;
    }
    double alpha;
    if ((s = qv__cfg_int(c, c->cfg, "r", 8, &st.r_default)) ||
        (s = qv__cfg_num(c, c->cfg, "lora_alpha", 8.0, &alpha)) ||
        (s = qv__cfg_bool(c, c->cfg, "use_rslora", false, &ad->use_rslora)) ||
        (s = qv__cfg_bool(c, c->cfg, "use_dora", false, &ad->use_dora)) ||
        (s = qv__cfg_bool(c, c->cfg, "lora_bias", false, &ad->lora_bias)))
        goto done;
    st.alpha_default = alpha;
    if (st.r_default < 1) {
        s = qv_errorf(c->err, QV_ERR_INVALID, "config key \"r\" must be positive");
        goto done;
    }
    if (ad->use_dora && ad->lora_bias) {
        s = qv_errorf(c->err, QV_ERR_INVALID, "use_dora and lora_bias cannot both be true");
        goto done;
    }
    if ((s = lora_modules_to_save(c, &st))) goto done;
    if ((s = patterns_compile(c, "rank_pattern", &st.rank_pat)) ||
        (s = patterns_compile(c, "alpha_pattern", &st.alpha_pat)))
        goto done;
    /* Without a base the layer count comes from the keys. */
    size_t nt = qv_st_n_tensors(c->st);
    if (!c->base) {
        for (size_t i = 0; i < nt; i++) {
            int layer;
            enum qv_proj p;
            if (qv__adapter_parse_proj(qv__adapter_strip_prefix(qv_st_tensor_at(c->st, i)->name),
                                       &layer, &p) &&
                (s = qv__adapter_ensure_layers(c, layer + 1)))
                goto done;
        }
    }
    st.slots = qv_calloc((size_t)ad->n_layers * SLOTS_PER_LAYER + 2, sizeof(*st.slots));
    if (!st.slots) {
        s = qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < nt; i++)
        if ((s = lora_classify(c, &st, qv_st_tensor_at(c->st, i)))) goto done;
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            if ((s = lora_module(c, &st, l, p, &ad->layers[l].lora[p]))) goto done;
    if ((s = lora_module(c, &st, -1, SLOT_EMBED, &ad->embed_lora)) ||
        (s = lora_module(c, &st, -1, SLOT_LM_HEAD, &ad->lm_head_lora)))
        goto done;
    /* ensure_weight_tying: a tied lm_head shares the embedding adapter, transposed. */
    if (ad->embed_lora.rank && !ad->lm_head_lora.rank &&
        qv__cfg_set(c->cfg, "target_modules_to_tie")) {
        qv_lora *e = &ad->embed_lora, *h = &ad->lm_head_lora;
        int r = e->rank, dim = e->n_out, nv = e->n_in;
        h->a = qv__adapter_alloc(c, (size_t)r * dim);
        h->b = qv__adapter_alloc(c, (size_t)nv * r);
        if (!h->a || !h->b) {
            s = c->err ? c->err->status : QV_ERR_NOMEM;
            goto done;
        }
        for (int k = 0; k < r; k++)
            for (int j = 0; j < dim; j++)
                h->a[(size_t)k * dim + j] = e->b[(size_t)j * r + k];
        for (int v = 0; v < nv; v++)
            for (int k = 0; k < r; k++)
                h->b[(size_t)v * r + k] = e->a[(size_t)k * nv + v];
        h->rank = r, h->scale = e->scale, h->n_in = dim, h->n_out = nv;
    }
    int64_t full[2] = {c->base ? c->base->cfg.n_vocab : -1, c->base ? c->base->cfg.dim : -1};
    if (st.save_embed && !st.embed_repl) {
        s = qv_errorf(c->err, QV_ERR_NOT_FOUND,
                      "missing tensor base_model.model.model."
                      "embed_tokens.weight (modules_to_save)");
        goto done;
    }
    if (st.save_lm_head && !st.lm_head_repl) {
        s = qv_errorf(c->err, QV_ERR_NOT_FOUND,
                      "missing tensor base_model.model.lm_head.weight (modules_to_save)");
        goto done;
    }
    if (st.embed_repl && (s = qv__adapter_take(c, st.embed_repl, 2, full, &ad->embed_replace)))
        goto done;
    if (st.lm_head_repl &&
        (s = qv__adapter_take(c, st.lm_head_repl, 2, full, &ad->lm_head_replace)))
        goto done;
    if ((s = lora_trainable_tokens(c, &st))) goto done;
    s = lora_alora(c);
done:
    patterns_free(&st.rank_pat);
    patterns_free(&st.alpha_pat);
    qv_free(st.slots);
    return s;
}

/* ---- IA3 ---- */

/* feedforward_modules: a list -> suffix match; a string -> full regex match. */
static qv_status ia3_is_ff(qv__adapter_ctx *c, const char *path, bool *out) {
    const cJSON *ff = cJSON_GetObjectItemCaseSensitive(c->cfg, "feedforward_modules");
    *out = false;
    if (!ff || cJSON_IsNull(ff)) {
        *out = ends_with(path, "down_proj"); /* PEFT's llama default */
        return QV_OK;
    }
    if (cJSON_IsArray(ff)) {
        const cJSON *e;
        cJSON_ArrayForEach(e, ff) if (cJSON_IsString(e) && ends_with(path, e->valuestring)) *out =
            true;
        return QV_OK;
    }
    if (!cJSON_IsString(ff))
        return qv_errorf(c->err, QV_ERR_INVALID, "feedforward_modules must be a list or a string");
    size_t l = strlen(ff->valuestring);
    char *src = qv_malloc(l + 8);
    if (!src) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    snprintf(src, l + 8, "(?:%s)\\z", ff->valuestring);
    int code;
    PCRE2_SIZE off;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, 0, &code, &off, NULL);
    qv_free(src);
    if (!re) return qv_errorf(c->err, QV_ERR_INVALID, "feedforward_modules is not a valid regex");
    qv_status s = regex_run(c, re, "feedforward_modules", path, out);
    pcre2_code_free(re);
    return s;
}

static qv_status load_ia3(qv__adapter_ctx *c) {
    bool fifo;
    qv_status s = qv__cfg_bool(c, c->cfg, "fan_in_fan_out", false, &fifo);
    if (s) return s;
    if (fifo)
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "IA3 option \"fan_in_fan_out\" is true, but "
                         "Llama projections are nn.Linear");
    if (qv__cfg_set(c->cfg, "modules_to_save"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "IA3 option \"modules_to_save\" is set, which quiver does not implement");
    size_t nt = qv_st_n_tensors(c->st);
    for (int pass = c->base ? 1 : 0; pass < 2; pass++) {
        for (size_t i = 0; i < nt; i++) {
            const qv_st_tensor *t = qv_st_tensor_at(c->st, i);
            const char *k = qv__adapter_strip_prefix(t->name);
            int layer;
            enum qv_proj p;
            const char *rest = qv__adapter_parse_proj(k, &layer, &p);
            if (!rest || strcmp(rest, ".ia3_l")) return unexpected(c, t->name, NULL);
            if (pass == 0) {
                if ((s = qv__adapter_ensure_layers(c, layer + 1))) return s;
                continue;
            }
            if (layer >= c->ad->n_layers)
                return qv_errorf(c->err, QV_ERR_INVALID,
                                 "tensor %s: layer %d does not exist in "
                                 "the base model (%d layers)",
                                 t->name, layer, c->ad->n_layers);
            char path[96];
            snprintf(path, sizeof(path), "%.*s", (int)(rest - k), k);
            bool ff;
            if ((s = ia3_is_ff(c, path, &ff))) return s;
            int n_out, n_in;
            qv__adapter_proj_dims(c->ad, c->base, p, &n_out, &n_in);
            bool shaped_in =
                t->n_dims == 2 && t->shape[0] == 1 && (n_in < 0 || t->shape[1] == n_in);
            bool shaped_out =
                t->n_dims == 2 && t->shape[1] == 1 && (n_out < 0 || t->shape[0] == n_out);
            if (ff ? !shaped_in : !shaped_out) {
                char b[64];
                return qv_errorf(c->err, QV_ERR_INVALID,
                                 "tensor %s: shape %s does not match %s scaling (%s is %sin "
                                 "feedforward_modules)",
                                 t->name, qv__adapter_shape_str(t, b, sizeof(b)),
                                 ff ? "input" : "output", path, ff ? "" : "not ");
            }
            int64_t shape[2] = {ff ? 1 : n_out, ff ? n_in : 1};
            qv_adapter_layer *L = &c->ad->layers[layer];
            if (L->ia3[p]) return unexpected(c, t->name, "duplicate");
            if ((s = qv__adapter_take(c, t, 2, shape, &L->ia3[p]))) return s;
            L->ia3_input[p] = ff;
        }
    }
    return QV_OK;
}

/* ---- prompt learning ---- */

static qv_status load_prompt(qv__adapter_ctx *c, enum qv_adapter_kind kind) {
    qv_adapter *ad = c->ad;
    const char *kn = qv_adapter_kind_name(kind);
    int nvt, nts, token_dim, n_layers, n_heads;
    qv_status s;
    if ((s = qv__cfg_int(c, c->cfg, "num_virtual_tokens", 0, &nvt)) ||
        (s = qv__cfg_int(c, c->cfg, "num_transformer_submodules", 1, &nts)) ||
        (s = qv__cfg_int(c, c->cfg, "token_dim", -1, &token_dim)) ||
        (s = qv__cfg_int(c, c->cfg, "num_layers", -1, &n_layers)) ||
        (s = qv__cfg_int(c, c->cfg, "num_attention_heads", -1, &n_heads)))
        return s;
    if (nvt < 1) return qv_errorf(c->err, QV_ERR_INVALID, "num_virtual_tokens must be positive");
    if (c->lim.max_virtual > 0 && nvt > c->lim.max_virtual)
        return qv_errorf(c->err, QV_ERR_LIMIT, "num_virtual_tokens %d exceeds the limit %d", nvt,
                         c->lim.max_virtual);
    if (nts != 1)
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "num_transformer_submodules %d is not "
                         "supported (causal LMs use 1)",
                         nts);
    if (qv__cfg_set(c->cfg, "modules_to_save"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "%s option \"modules_to_save\" is set, which quiver does not implement",
                         kn);
    size_t nt = qv_st_n_tensors(c->st);
    const qv_st_tensor *t = qv_st_find(c->st, "prompt_embeddings");
    for (size_t i = 0; i < nt; i++)
        if (qv_st_tensor_at(c->st, i) != t)
            return unexpected(c, qv_st_tensor_at(c->st, i)->name,
                              "a prompt-learning file holds "
                              "only prompt_embeddings");
    if (!t) return qv_errorf(c->err, QV_ERR_NOT_FOUND, "missing tensor prompt_embeddings");
    ad->n_virtual = nvt;
    if (kind != QV_ADAPTER_PREFIX_TUNING) {
        int dim = c->base ? c->base->cfg.dim : token_dim;
        if (c->base && token_dim > 0 && token_dim != dim)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "%s token_dim %d does not match the base "
                             "hidden size %d",
                             kn, token_dim, dim);
        int64_t shape[2] = {nvt, dim};
        if ((s = qv__adapter_take(c, t, 2, shape, &ad->prompt_embd))) return s;
        ad->dim = (int)t->shape[1];
        return QV_OK;
    }
    /* Prefix tuning: per layer (key, value) for each KV head (PEFT >= 0.12 GQA layout). */
    if (token_dim < 1 || n_layers < 1 || n_heads < 1)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "PREFIX_TUNING config needs token_dim, "
                         "num_layers and num_attention_heads");
    if (c->base) {
        const qv_model_config *m = &c->base->cfg;
        if (n_layers != m->n_layers)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "PREFIX_TUNING num_layers %d does not match "
                             "the base (%d layers)",
                             n_layers, m->n_layers);
        if (n_heads != m->n_kv_heads || token_dim != m->n_kv_heads * m->head_dim)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "PREFIX_TUNING num_attention_heads %d / token_dim %d do not fit the "
                             "base (expected %d kv heads x %d = %d; pre-0.12 PEFT GQA layout?)",
                             n_heads, token_dim, m->n_kv_heads, m->head_dim,
                             m->n_kv_heads * m->head_dim);
    } else {
        if (token_dim % n_heads)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "PREFIX_TUNING token_dim %d is not a "
                             "multiple of num_attention_heads %d",
                             token_dim, n_heads);
        if ((s = qv__adapter_ensure_layers(c, n_layers))) return s;
        ad->n_kv_heads = n_heads;
        ad->head_dim = token_dim / n_heads;
    }
    if ((int64_t)n_layers * 2 * token_dim > ((int64_t)1 << 31))
        return qv_errorf(c->err, QV_ERR_INVALID, "PREFIX_TUNING dimensions are too large");
    int64_t shape[2] = {nvt, (int64_t)n_layers * 2 * token_dim};
    float *e = NULL;
    /* Validate (shape, finiteness) through a temporary conversion, then scatter. */
    if ((s = qv__adapter_take(c, t, 2, shape, &e))) return s;
    size_t per = (size_t)n_layers * nvt * token_dim;
    ad->prefix_k = qv__adapter_alloc(c, per);
    ad->prefix_v = qv__adapter_alloc(c, per);
    if (!ad->prefix_k || !ad->prefix_v) return c->err ? c->err->status : QV_ERR_NOMEM;
    for (int l = 0; l < n_layers; l++)
        for (int v = 0; v < nvt; v++) {
            const float *row = e + (size_t)v * shape[1];
            size_t dst = ((size_t)l * nvt + v) * token_dim;
            memcpy(ad->prefix_k + dst, row + (size_t)(l * 2 + 0) * token_dim,
                   (size_t)token_dim * sizeof(float));
            memcpy(ad->prefix_v + dst, row + (size_t)(l * 2 + 1) * token_dim,
                   (size_t)token_dim * sizeof(float));
        }
    qv__adapter_release(c, e, (size_t)t->n_elems);
    return QV_OK;
}

/* ---- adaption prompt ---- */

static qv_status load_adaption_prompt(qv__adapter_ctx *c) {
    qv_adapter *ad = c->ad;
    int len, n;
    const char *tm;
    qv_status s;
    if ((s = qv__cfg_int(c, c->cfg, "adapter_len", 0, &len)) ||
        (s = qv__cfg_int(c, c->cfg, "adapter_layers", 0, &n)) ||
        (s = qv__cfg_str(c, c->cfg, "target_modules", &tm)))
        return s;
    if (tm && strcmp(tm, "self_attn"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "ADAPTION_PROMPT target_modules \"%s\" is "
                         "not supported (only self_attn)",
                         tm);
    if (c->base && c->base->cfg.arch == QV_ARCH_QWEN2)
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "ADAPTION_PROMPT supports llama and mistral "
                         "bases only (PEFT has no qwen2 support)");
    if (len < 1 || n < 1)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "ADAPTION_PROMPT needs positive adapter_len and "
                         "adapter_layers");
    if (c->lim.max_virtual > 0 && len > c->lim.max_virtual)
        return qv_errorf(c->err, QV_ERR_LIMIT, "adapter_len %d exceeds the limit %d", len,
                         c->lim.max_virtual);
    size_t nt = qv_st_n_tensors(c->st);
    if (!c->base) {
        for (size_t i = 0; i < nt; i++) {
            int layer;
            const char *k = qv__adapter_strip_prefix(qv_st_tensor_at(c->st, i)->name);
            if (!strncmp(k, "model.layers.", 13) && sscanf(k + 13, "%d", &layer) == 1 &&
                layer >= 0 && layer < 4096 && (s = qv__adapter_ensure_layers(c, layer + 1)))
                return s;
        }
    }
    if (n > ad->n_layers)
        return qv_errorf(c->err, QV_ERR_INVALID, "adapter_layers %d exceeds the base's %d layers",
                         n, ad->n_layers);
    ad->ap_n_layers = n, ad->ap_len = len, ad->ap_first_layer = ad->n_layers - n;
    const qv_st_tensor **pr = qv_calloc((size_t)n * 2, sizeof(*pr));
    if (!pr) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < nt && !s; i++) {
        const qv_st_tensor *t = qv_st_tensor_at(c->st, i);
        const char *k = qv__adapter_strip_prefix(t->name);
        int layer = -1, used = 0;
        char what[32] = "";
        if (sscanf(k, "model.layers.%d.self_attn.%31s%n", &layer, what, &used) != 2 ||
            k[used] != '\0' || (strcmp(what, "adaption_prompt") && strcmp(what, "adaption_gate"))) {
            s = unexpected(c, t->name, NULL);
        } else if (layer < ad->ap_first_layer || layer >= ad->n_layers) {
            s = unexpected(c, t->name, "outside the adapted top layers");
        } else {
            int j = (layer - ad->ap_first_layer) * 2 + (what[9] == 'g');
            if (pr[j])
                s = unexpected(c, t->name, "duplicate");
            else
                pr[j] = t;
        }
    }
    /* Without a base the hidden size comes from the first prompt tensor. */
    if (!s && !c->base) {
        if (pr[0] && pr[0]->n_dims == 3 && pr[0]->shape[2] > 0 && pr[0]->shape[2] < (1 << 20))
            ad->dim = (int)pr[0]->shape[2];
        else if (pr[0])
            s = qv_errorf(c->err, QV_ERR_INVALID, "tensor %s must be [1, adapter_len, hidden]",
                          pr[0]->name);
    }
    if (!s) {
        ad->ap_prompt = qv__adapter_alloc(c, (size_t)n * len * (size_t)QV_MAX(ad->dim, 0) + 1);
        ad->ap_gate = qv__adapter_alloc(c, (size_t)n);
        if (!ad->ap_prompt || !ad->ap_gate) s = c->err ? c->err->status : QV_ERR_NOMEM;
    }
    for (int j = 0; j < n && !s; j++) {
        const qv_st_tensor *p = pr[2 * j], *g = pr[2 * j + 1];
        if (!p || !g) {
            s = qv_errorf(c->err, QV_ERR_NOT_FOUND,
                          "missing tensor base_model.model.model.layers."
                          "%d.self_attn.%s",
                          ad->ap_first_layer + j, !p ? "adaption_prompt" : "adaption_gate");
            break;
        }
        int64_t sp[3] = {1, len, ad->dim}, sg[1] = {1};
        float *pv = NULL, *gv = NULL;
        if ((s = qv__adapter_take(c, p, 3, sp, &pv)) || (s = qv__adapter_take(c, g, 1, sg, &gv)))
            break;
        memcpy(ad->ap_prompt + (size_t)j * len * ad->dim, pv,
               (size_t)len * ad->dim * sizeof(float));
        ad->ap_gate[j] = gv[0];
        qv__adapter_release(c, gv, 1);
        qv__adapter_release(c, pv, (size_t)len * ad->dim);
    }
    qv_free(pr);
    return s;
}

/* ---- entry ---- */

qv_status qv__adapter_load_peft(qv__adapter_ctx *c) {
    const char *pt, *bn;
    qv_status s = qv__cfg_str(c, c->cfg, "peft_type", &pt);
    if (s) return s;
    if (!pt) return qv_errorf(c->err, QV_ERR_INVALID, "adapter_config.json: peft_type is null");
    if ((s = qv__cfg_str(c, c->cfg, "base_model_name_or_path", &bn))) return s;
    if (bn && !(c->ad->base_name = qv_strdup(bn)))
        return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    static const struct {
        const char *name;
        enum qv_adapter_kind kind;
    } kinds[] = {{"LORA", QV_ADAPTER_LORA},
                 {"IA3", QV_ADAPTER_IA3},
                 {"PREFIX_TUNING", QV_ADAPTER_PREFIX_TUNING},
                 {"PROMPT_TUNING", QV_ADAPTER_PROMPT_TUNING},
                 {"P_TUNING", QV_ADAPTER_P_TUNING},
                 {"ADAPTION_PROMPT", QV_ADAPTER_ADAPTION_PROMPT}};
    size_t i = 0;
    while (i < QV_ARRAY_LEN(kinds) && strcmp(kinds[i].name, pt))
        i++;
    if (i == QV_ARRAY_LEN(kinds))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "peft_type \"%s\" is not supported (LORA, IA3, PREFIX_TUNING, "
                         "PROMPT_TUNING, P_TUNING, ADAPTION_PROMPT)",
                         pt);
    c->ad->kind = kinds[i].kind;
    if ((s = check_task_type(c))) return s;
    switch (c->ad->kind) {
    case QV_ADAPTER_LORA: return load_lora(c);
    case QV_ADAPTER_IA3: return load_ia3(c);
    case QV_ADAPTER_ADAPTION_PROMPT: return load_adaption_prompt(c);
    default: return load_prompt(c, c->ad->kind);
    }
}
