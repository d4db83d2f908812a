/*
 * bottleneck.c - AdapterHub bottleneck adapters (FORMATS.md 5): seq_bn (Pfeiffer),
 * double_seq_bn (Houlsby) and par_bn / scaled_par_bn, with fixed, learned or channel scaling,
 * leave_out, per-layer reduction factors, adapter LayerNorms and the residual flags.
 *
 * Not implemented (refused by name): use_gating, inv_adapter, phm_layer (Compacter),
 * cross_adapter, non-bottleneck "architecture" values. Keys are matched by their suffix after
 * "layers.{i}."; every key of the file must belong to a unit that the config enables.
 * Thread: any; one load context per call.
 */
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "adapters/adapter_internal.h"

typedef struct bn_slot {
    const qv_st_tensor *dw, *db, *uw, *ub, *lnb_w, *lnb_b, *lna_w, *lna_b, *sc;
} bn_slot;

static qv_status parse_act(qv__adapter_ctx *c, const char *name, enum qv_bn_act *out) {
    static const struct {
        const char *n;
        enum qv_bn_act a;
    } map[] = {{"relu", QV_BN_ACT_RELU},
               {"swish", QV_BN_ACT_SILU},
               {"silu", QV_BN_ACT_SILU},
               {"gelu", QV_BN_ACT_GELU},
               {"gelu_new", QV_BN_ACT_GELU_TANH},
               {"gelu_pytorch_tanh", QV_BN_ACT_GELU_TANH},
               {"tanh", QV_BN_ACT_TANH},
               {"sigmoid", QV_BN_ACT_SIGMOID},
               {"leakyrelu", QV_BN_ACT_LEAKY_RELU},
               {"linear", QV_BN_ACT_IDENTITY},
               {"identity", QV_BN_ACT_IDENTITY}};
    char low[32];
    size_t i = 0;
    for (; name[i] && i < sizeof(low) - 1; i++)
        low[i] = (char)tolower((unsigned char)name[i]);
    low[i] = '\0';
    for (i = 0; i < QV_ARRAY_LEN(map); i++)
        if (!strcmp(map[i].n, low)) {
            *out = map[i].a;
            return QV_OK;
        }
    return qv_errorf(c->err, QV_ERR_UNSUPPORTED, "bottleneck non_linearity \"%s\" is not supported",
                     name);
}

/* reduction_factor: a number, or {"<layer>": rf, "default": rf}. D = int(H // rf), min 1. */
static qv_status bottleneck_dim(qv__adapter_ctx *c, int layer, int hidden, int *d) {
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(c->cfg, "reduction_factor");
    double v = 16.0;
    if (cJSON_IsObject(rf)) {
        char key[16];
        snprintf(key, sizeof(key), "%d", layer);
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(rf, key);
        if (!e) e = cJSON_GetObjectItemCaseSensitive(rf, "default");
        if (!e)
            return qv_errorf(c->err, QV_ERR_INVALID,
                             "reduction_factor has no entry for layer %d "
                             "and no \"default\"",
                             layer);
        rf = e;
    }
    if (rf && !cJSON_IsNull(rf)) {
        if (!cJSON_IsNumber(rf) || !isfinite(rf->valuedouble) || rf->valuedouble <= 0)
            return qv_errorf(c->err, QV_ERR_INVALID, "reduction_factor must be a positive number");
        v = rf->valuedouble;
    }
    double q = floor((double)hidden / v);
    *d = q < 1 ? 1 : q > 1e9 ? (int)1e9 : (int)q;
    return QV_OK;
}

/* Claims one tensor: "<any>layers.{i}.(attention|output)_adapters.adapters.{N}.<rest>". */
static qv_status classify(qv__adapter_ctx *c, const qv_st_tensor *t, bn_slot *slots, bool ln_before,
                          const char **name, size_t *name_len) {
    const char *k = t->name, *p = strstr(k, "layers.");
    while (p && !isdigit((unsigned char)p[7]))
        p = strstr(p + 1, "layers.");
    if (!p) return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s", k);
    p += 7;
    long layer = 0;
    while (isdigit((unsigned char)*p) && layer < 100000)
        layer = layer * 10 + (*p++ - '0');
    int loc;
    if (!strncmp(p, ".attention_adapters.adapters.", 29))
        loc = 0, p += 29;
    else if (!strncmp(p, ".output_adapters.adapters.", 26))
        loc = 1, p += 26;
    else
        return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s", k);
    const char *dot = strchr(p, '.');
    if (!dot || dot == p) return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s", k);
    if (!*name) {
        *name = p, *name_len = (size_t)(dot - p);
    } else if ((size_t)(dot - p) != *name_len || strncmp(p, *name, *name_len)) {
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "tensor %s belongs to another adapter than "
                         "\"%.*s\" (one adapter per file)",
                         k, (int)*name_len, *name);
    }
    const char *rest = dot + 1;
    if (layer >= c->ad->n_layers)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "tensor %s: layer %ld does not exist in the base "
                         "model (%d layers)",
                         k, layer, c->ad->n_layers);
    bn_slot *s = &slots[layer * 2 + loc];
    const char *lin = ln_before ? "adapter_down.1." : "adapter_down.0.";
    const qv_st_tensor **dst = NULL;
    if (!strncmp(rest, lin, 15) && !strcmp(rest + 15, "weight"))
        dst = &s->dw;
    else if (!strncmp(rest, lin, 15) && !strcmp(rest + 15, "bias"))
        dst = &s->db;
    else if (ln_before && !strcmp(rest, "adapter_down.0.weight"))
        dst = &s->lnb_w;
    else if (ln_before && !strcmp(rest, "adapter_down.0.bias"))
        dst = &s->lnb_b;
    else if (!strcmp(rest, "adapter_up.weight"))
        dst = &s->uw;
    else if (!strcmp(rest, "adapter_up.bias"))
        dst = &s->ub;
    else if (!strcmp(rest, "adapter_norm_after.weight"))
        dst = &s->lna_w;
    else if (!strcmp(rest, "adapter_norm_after.bias"))
        dst = &s->lna_b;
    else if (!strcmp(rest, "scaling"))
        dst = &s->sc;
    if (!dst || *dst) return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s", k);
    *dst = t;
    return QV_OK;
}

static bool in_list(const cJSON *list, int v) {
    const cJSON *e;
    cJSON_ArrayForEach(e, list) if (cJSON_IsNumber(e) && e->valuedouble == v) return true;
    return false;
}

static qv_status unit(qv__adapter_ctx *c, bn_slot *s, int layer, int loc, int hidden,
                      double scaling, qv_bn_unit *u) {
    qv_adapter *ad = c->ad;
    const char *where = loc ? "output_adapters" : "attention_adapters";
    const qv_st_tensor *need[4] = {s->dw, s->db, s->uw, s->ub};
    static const char *const need_n[4] = {"adapter_down.*.weight", "adapter_down.*.bias",
                                          "adapter_up.weight", "adapter_up.bias"};
    for (int i = 0; i < 4; i++)
        if (!need[i])
            return qv_errorf(c->err, QV_ERR_NOT_FOUND,
                             "missing tensor model.layers.%d.%s."
                             "adapters.%s.%s",
                             layer, where, ad->name ? ad->name : "?", need_n[i]);
    if ((ad->bn_ln_before && (!s->lnb_w || !s->lnb_b)) ||
        (ad->bn_ln_after && (!s->lna_w || !s->lna_b)))
        return qv_errorf(c->err, QV_ERR_NOT_FOUND,
                         "missing LayerNorm tensors of model.layers.%d.%s "
                         "(ln_before / ln_after)",
                         layer, where);
    if (!ad->bn_ln_after && (s->lna_w || s->lna_b))
        return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s (ln_after is false)",
                         (s->lna_w ? s->lna_w : s->lna_b)->name);
    bool learned = !strcmp(ad->bn_scaling_mode, "learned"),
         channel = !strcmp(ad->bn_scaling_mode, "channel");
    if ((learned || channel) && !s->sc)
        return qv_errorf(c->err, QV_ERR_NOT_FOUND,
                         "missing tensor model.layers.%d.%s.adapters.%s."
                         "scaling",
                         layer, where, ad->name ? ad->name : "?");
    if (!learned && !channel && s->sc)
        return qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s (scaling is a number)",
                         s->sc->name);
    int d = 1;
    qv_status st = bottleneck_dim(c, layer, hidden, &d);
    if (st) return st;
    int64_t sdh[2] = {d, hidden}, shd[2] = {hidden, d}, sd[1] = {d}, sh[1] = {hidden}, s1[1] = {1};
    if ((st = qv__adapter_take(c, s->dw, 2, sdh, &u->down_w)) ||
        (st = qv__adapter_take(c, s->db, 1, sd, &u->down_b)) ||
        (st = qv__adapter_take(c, s->uw, 2, shd, &u->up_w)) ||
        (st = qv__adapter_take(c, s->ub, 1, sh, &u->up_b)))
        return st;
    if (ad->bn_ln_before && ((st = qv__adapter_take(c, s->lnb_w, 1, sh, &u->ln_before_w)) ||
                             (st = qv__adapter_take(c, s->lnb_b, 1, sh, &u->ln_before_b))))
        return st;
    if (ad->bn_ln_after && ((st = qv__adapter_take(c, s->lna_w, 1, sh, &u->ln_after_w)) ||
                            (st = qv__adapter_take(c, s->lna_b, 1, sh, &u->ln_after_b))))
        return st;
    u->scaling = (float)scaling;
    if (learned) {
        float *v;
        if ((st = qv__adapter_take(c, s->sc, 1, s1, &v))) return st;
        u->scaling = v[0];
        qv__adapter_release(c, v, 1);
    } else if (channel) {
        if ((st = qv__adapter_take(c, s->sc, 1, sh, &u->scaling_ch))) return st;
        u->scaling = 1.0f;
    }
    u->d = d;
    return QV_OK;
}

qv_status qv__adapter_load_bottleneck(qv__adapter_ctx *c) {
    qv_adapter *ad = c->ad;
    const cJSON *cfg = c->cfg;
    qv_status s;
    bn_slot *slots = NULL;
    ad->kind = QV_ADAPTER_BOTTLENECK;
    const char *arch, *mt, *mn, *nl;
    if ((s = qv__cfg_str(c, cfg, "architecture", &arch))) return s;
    if (arch && strcmp(arch, "bottleneck"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "AdapterHub architecture \"%s\" is not "
                         "supported (bottleneck adapters only)",
                         arch);
    static const char *const rejected[] = {"use_gating", "inv_adapter", "phm_layer",
                                           "cross_adapter"};
    for (size_t i = 0; i < QV_ARRAY_LEN(rejected); i++)
        if (qv__cfg_set(cfg, rejected[i]))
            return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                             "bottleneck option \"%s\" is set, which "
                             "quiver does not implement",
                             rejected[i]);
    if ((s = qv__cfg_str(c, c->root, "model_type", &mt)) ||
        (s = qv__cfg_str(c, c->root, "model_name", &mn)))
        return s;
    if (mt && strcmp(mt, "llama") && strcmp(mt, "mistral") && strcmp(mt, "qwen2"))
        return qv_errorf(c->err, QV_ERR_UNSUPPORTED,
                         "AdapterHub model_type \"%s\" is not a "
                         "Llama-family model",
                         mt);
    if (mn && !(ad->base_name = qv_strdup(mn)))
        return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    int hidden;
    if ((s = qv__cfg_int(c, c->root, "hidden_size", c->base ? c->base->cfg.dim : -1, &hidden)))
        return s;
    if (hidden < 1)
        return qv_errorf(c->err, QV_ERR_INVALID, "adapter_config.json has no hidden_size");
    if (c->base && hidden != c->base->cfg.dim)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "adapter hidden_size %d does not match the base "
                         "model's %d",
                         hidden, c->base->cfg.dim);
    ad->dim = hidden;
    bool ln_before, ln_after;
    if ((s = qv__cfg_bool(c, cfg, "is_parallel", false, &ad->bn_parallel)) ||
        (s = qv__cfg_bool(c, cfg, "mh_adapter", false, &ad->bn_mh_adapter)) ||
        (s = qv__cfg_bool(c, cfg, "output_adapter", false, &ad->bn_output_adapter)) ||
        (s = qv__cfg_bool(c, cfg, "original_ln_before", false, &ad->bn_original_ln_before)) ||
        (s = qv__cfg_bool(c, cfg, "original_ln_after", true, &ad->bn_original_ln_after)) ||
        (s = qv__cfg_bool(c, cfg, "ln_before", false, &ln_before)) ||
        (s = qv__cfg_bool(c, cfg, "ln_after", false, &ln_after)) ||
        (s = qv__cfg_bool(c, cfg, "adapter_residual_before_ln", false,
                          &ad->bn_adapter_residual_before_ln)) ||
        (s = qv__cfg_str(c, cfg, "non_linearity", &nl)))
        return s;
    ad->bn_ln_before = ln_before, ad->bn_ln_after = ln_after;
    if ((s = parse_act(c, nl ? nl : "relu", &ad->bn_act))) return s;
    const cJSON *rb = cJSON_GetObjectItemCaseSensitive(cfg, "residual_before_ln");
    if (!rb || cJSON_IsNull(rb) || cJSON_IsTrue(rb))
        ad->bn_residual = QV_BN_RES_BEFORE_LN;
    else if (cJSON_IsFalse(rb))
        ad->bn_residual = QV_BN_RES_AFTER_LN;
    else if (cJSON_IsString(rb) && !strcmp(rb->valuestring, "post_add"))
        ad->bn_residual = QV_BN_RES_POST_ADD;
    else
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "residual_before_ln must be true, false or "
                         "\"post_add\"");
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(cfg, "scaling");
    double scaling = 1.0;
    snprintf(ad->bn_scaling_mode, sizeof(ad->bn_scaling_mode), "fixed");
    if (cJSON_IsString(sc) &&
        (!strcmp(sc->valuestring, "learned") || !strcmp(sc->valuestring, "channel")))
        snprintf(ad->bn_scaling_mode, sizeof(ad->bn_scaling_mode), "%s", sc->valuestring);
    else if ((s = qv__cfg_num(c, cfg, "scaling", 1.0, &scaling)))
        return s;
    const cJSON *leave = cJSON_GetObjectItemCaseSensitive(cfg, "leave_out");
    if (leave && !cJSON_IsNull(leave) && !cJSON_IsArray(leave))
        return qv_errorf(c->err, QV_ERR_INVALID, "leave_out must be a list of layer ids");
    if (!ad->bn_mh_adapter && !ad->bn_output_adapter)
        return qv_errorf(c->err, QV_ERR_INVALID,
                         "bottleneck config enables neither mh_adapter "
                         "nor output_adapter");
    size_t nt = qv_st_n_tensors(c->st);
    if (!c->base) {
        for (size_t i = 0; i < nt; i++) {
            const char *p = strstr(qv_st_tensor_at(c->st, i)->name, "layers.");
            int layer;
            if (p && sscanf(p + 7, "%d", &layer) == 1 && layer >= 0 && layer < 4096 &&
                (s = qv__adapter_ensure_layers(c, layer + 1)))
                return s;
        }
    }
    slots = qv_calloc((size_t)ad->n_layers * 2 + 1, sizeof(*slots));
    if (!slots) return qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    const char *name = NULL;
    size_t name_len = 0;
    for (size_t i = 0; i < nt && !s; i++)
        s = classify(c, qv_st_tensor_at(c->st, i), slots, ln_before, &name, &name_len);
    if (!s && name && !(ad->name = qv_strndup(name, name_len)))
        s = qv_errorf(c->err, QV_ERR_NOMEM, "out of memory");
    for (int l = 0; l < ad->n_layers && !s; l++) {
        bool skip = leave && in_list(leave, l);
        for (int loc = 0; loc < 2 && !s; loc++) {
            bn_slot *sl = &slots[l * 2 + loc];
            bool on = !skip && (loc ? ad->bn_output_adapter : ad->bn_mh_adapter);
            const qv_st_tensor *any = sl->dw   ? sl->dw
                                      : sl->db ? sl->db
                                      : sl->uw ? sl->uw
                                      : sl->ub ? sl->ub
                                      : sl->sc ? sl->sc
                                               : sl->lna_w;
            if (!on) {
                if (any)
                    s = qv_errorf(c->err, QV_ERR_INVALID, "unexpected tensor %s (%s)", any->name,
                                  skip  ? "layer is in leave_out"
                                  : loc ? "output_adapter is false"
                                        : "mh_adapter is false");
                continue;
            }
            if (!c->base && !any) continue; /* inspection: layers beyond the keys */
            s = unit(c, sl, l, loc, hidden, scaling,
                     loc ? &ad->layers[l].bn_ffn : &ad->layers[l].bn_attn);
        }
    }
    qv_free(slots);
    return s;
}
