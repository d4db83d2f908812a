/*
 * adapter_apply.c - per-segment adapter application in the forward pass (see adapter_apply.h).
 *
 * LoRA: for projection p of layer l, the segments whose adapter has rank > 0 there become one
 * list of qv__lora_seg, and one shrink + one expand (engine/cpu/lora_cpu.c, fused into one pool
 * run by qv__lora_apply) cover them all, reading A/B in the adapter's dtype (F32, F16, BF16).
 * DoRA rows are rescaled afterwards: y = (m/n) ⊙ (W x + s·B A x) + b, with m/n precomputed by
 * the loader. Everything else (IA³, bottleneck, adaption prompt, embeddings, lm_head) is small
 * per-row work done segment by segment in plain loops whose order depends only on the row.
 * What not: no device memory (the CUDA backend runs LoRA, DoRA, IA3 and prompt embeddings in
 * engine/cuda/lora_cuda.c; prefix K/V are stored here through the backend's upload + kv_store).
 * Thread: the engine thread.
 */
#include "adapter_apply.h"

#include <math.h>
#include <string.h>

#include "cpu/lora_cpu.h"

struct qv_adapter_rt {
    const qv_model *m;
    qv_backend *be;
    int max_tokens;
    const qv_batch *b; /* the current step's batch */
    bool active;
    qv__lora_seg *lsegs; /* [3 * max_tokens]: segments of up to 3 projections */
    int32_t *ids;        /* [max_tokens] sanitized token ids */
    int32_t *tok_seg;    /* [max_tokens] segment of each token */
    float *tmp;          /* LoRA shrink scratch / bottleneck scratch */
    size_t tmp_cap;      /* floats */
    float *ap_kv;        /* (2, ap_len, kv_dim) adaption prompt K/V */
    size_t ap_cap;       /* floats */
};

static const qv_adapter *seg_ad(const qv_adapter_rt *rt, int s) {
    return rt->b->seg_adapter ? rt->b->seg_adapter[s] : NULL;
}

qv_status qv_adapter_rt_create(const qv_model *m, qv_backend *be, int max_tokens,
                               qv_adapter_rt **out, qv_error *err) {
    *out = NULL;
    if (be->iface->download)
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "adapters: only the CPU backend runs adapters for now (backend %s)",
                         be->iface->name);
    qv_adapter_rt *rt = qv_calloc(1, sizeof(*rt));
    if (!rt) return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
    rt->m = m;
    rt->be = be;
    rt->max_tokens = max_tokens;
    rt->lsegs = qv_malloc(3 * (size_t)max_tokens * sizeof(*rt->lsegs));
    rt->ids = qv_malloc((size_t)max_tokens * sizeof(*rt->ids));
    rt->tok_seg = qv_malloc((size_t)max_tokens * sizeof(*rt->tok_seg));
    if (!rt->lsegs || !rt->ids || !rt->tok_seg) {
        qv_adapter_rt_destroy(rt);
        return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
    }
    *out = rt;
    return QV_OK;
}

void qv_adapter_rt_destroy(qv_adapter_rt *rt) {
    if (!rt) return;
    qv_free(rt->lsegs);
    qv_free(rt->ids);
    qv_free(rt->tok_seg);
    qv_free(rt->tmp);
    qv_free(rt->ap_kv);
    qv_free(rt);
}

bool qv_adapter_rt_active(const qv_adapter_rt *rt) { return rt && rt->active; }

int qv_adapter_n_prefix_positions(const qv_adapter *ad) {
    if (!ad) return 0;
    switch (ad->kind) {
    case QV_ADAPTER_PREFIX_TUNING:
    case QV_ADAPTER_PROMPT_TUNING:
    case QV_ADAPTER_P_TUNING: return ad->n_virtual;
    default: return 0;
    }
}

static bool grow(float **p, size_t *cap, size_t need) {
    if (need <= *cap) return true;
    float *q = qv_realloc(*p, need * sizeof(float));
    if (!q) return false;
    *p = q;
    *cap = need;
    return true;
}

qv_status qv_adapter_check_model(const qv_adapter *ad, const qv_model *m, qv_error *err) {
    const qv_model_config *c = &m->cfg;
    if (ad->n_layers != c->n_layers || (ad->dim && ad->dim != c->dim))
        return qv_errorf(err, QV_ERR_INVALID,
                         "adapters: adapter has %d layers / dim %d, model %d / %d", ad->n_layers,
                         ad->dim, c->n_layers, c->dim);
    if (ad->use_dora && !ad->has_base)
        return qv_errorf(err, QV_ERR_INVALID,
                         "adapters: DoRA adapter was loaded without the base model");
    if (ad->embed_lora.rank && ad->embed_lora.dora_scale)
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "adapters: DoRA on embeddings");
    if (ad->kind == QV_ADAPTER_PREFIX_TUNING &&
        (ad->n_kv_heads != c->n_kv_heads || ad->head_dim != c->head_dim))
        return qv_errorf(err, QV_ERR_INVALID, "adapters: prefix K/V shape does not fit the model");
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_adapter_layer *al = &ad->layers[l];
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            if (al->lora[p].rank && al->lora[p].magnitude && !al->lora[p].dora_scale)
                return qv_errorf(err, QV_ERR_INVALID, "adapters: DoRA scale missing (layer %d)", l);
    }
    return QV_OK;
}

qv_status qv_adapter_rt_begin(qv_adapter_rt *rt, const qv_batch *b, qv_error *err) {
    rt->b = b;
    rt->active = false;
    if (b->n_segs == 0) return QV_OK;
    const int n = b->n_tokens;
    const qv_model_config *c = &rt->m->cfg;
    if (b->n_segs < 0 || b->n_segs > n || !b->seg_start || b->seg_start[0] != 0 ||
        b->seg_start[b->n_segs] != n)
        return qv_errorf(err, QV_ERR_INVALID, "adapters: segments must cover [0, %d) in order", n);
    for (int s = 0; s < b->n_segs; s++)
        if (b->seg_start[s + 1] < b->seg_start[s] || b->seg_start[s + 1] > n)
            return qv_errorf(err, QV_ERR_INVALID, "adapters: segment %d is out of order", s);
    size_t need_tmp = 0, need_ap = 0;
    for (int s = 0; s < b->n_segs; s++) {
        int t0 = b->seg_start[s], t1 = b->seg_start[s + 1];
        const qv_adapter *ad = seg_ad(rt, s);
        if (ad) {
            qv_status st = qv_adapter_check_model(ad, rt->m, err);
            if (st != QV_OK) return st;
            rt->active = true;
            int max_rank = QV_MAX(ad->embed_lora.rank, ad->lm_head_lora.rank);
            int max_bn = 0;
            for (int l = 0; l < ad->n_layers; l++) {
                for (int p = 0; p < QV_PROJ_COUNT; p++)
                    max_rank = QV_MAX(max_rank, ad->layers[l].lora[p].rank);
                max_bn = QV_MAX(max_bn, QV_MAX(ad->layers[l].bn_attn.d, ad->layers[l].bn_ffn.d));
            }
            need_tmp += 3u * (size_t)(t1 - t0) * (size_t)max_rank; /* up to 3 projections */
            /* bottleneck rows are done one at a time: d + 3 * dim floats */
            need_tmp = QV_MAX(need_tmp, (size_t)max_bn + 3u * (size_t)c->dim);
            if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT)
                need_ap = QV_MAX(need_ap,
                                 2u * (size_t)ad->ap_len * (size_t)(c->n_kv_heads * c->head_dim) +
                                     (size_t)ad->ap_len);
        }
        for (int t = t0; t < t1; t++) {
            rt->tok_seg[t] = s;
            int32_t id = b->tokens[t];
            rt->ids[t] = id;
            if (id >= 0) continue;
            bool prompt =
                ad && (ad->kind == QV_ADAPTER_PROMPT_TUNING || ad->kind == QV_ADAPTER_P_TUNING);
            if (!prompt || -1 - id >= ad->n_virtual)
                return qv_errorf(err, QV_ERR_INVALID,
                                 "adapters: token %d has id %d but its segment has no such "
                                 "virtual token",
                                 t, id);
            rt->ids[t] = 0;
        }
    }
    if (!grow(&rt->tmp, &rt->tmp_cap, need_tmp ? need_tmp : 1) ||
        !grow(&rt->ap_kv, &rt->ap_cap, need_ap ? need_ap : 1))
        return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory for scratch");
    return QV_OK;
}

/* ---- embeddings ---- */

void qv_adapter_rt_embed(qv_adapter_rt *rt, float *x) {
    const qv_batch *b = rt->b;
    const qv_model *m = rt->m;
    const size_t dim = (size_t)m->cfg.dim;
    const size_t V = (size_t)m->cfg.n_vocab;
    rt->be->iface->get_rows(rt->be, &m->tok_embd, rt->ids, b->n_tokens, x);
    for (int s = 0; s < b->n_segs; s++) {
        const qv_adapter *ad = seg_ad(rt, s);
        if (!ad) continue;
        for (int t = b->seg_start[s]; t < b->seg_start[s + 1]; t++) {
            float *row = x + (size_t)t * dim;
            int32_t id = b->tokens[t];
            if (id < 0) { /* virtual token of a prompt / P-tuning adapter */
                memcpy(row, ad->prompt_embd + (size_t)(-1 - id) * dim, dim * sizeof(float));
                continue;
            }
            if (ad->embed_replace)
                memcpy(row, ad->embed_replace + (size_t)id * dim, dim * sizeof(float));
            for (int k = 0; k < ad->n_trainable_tokens; k++)
                if (ad->trainable_ids[k] == id)
                    memcpy(row, ad->trainable_rows + (size_t)k * dim, dim * sizeof(float));
            const qv_lora *el = &ad->embed_lora;
            if (el->rank) { /* e += s * B · A[:, id] */
                for (size_t o = 0; o < dim; o++) {
                    float acc = 0.0f;
                    for (int r = 0; r < el->rank; r++)
                        acc += el->b[o * (size_t)el->rank + (size_t)r] *
                               el->a[(size_t)r * V + (size_t)id];
                    row[o] += el->scale * acc;
                }
            }
        }
    }
}

/* ---- projections ---- */

void qv_adapter_rt_proj_input(qv_adapter_rt *rt, int layer, enum qv_proj p, float *x_in) {
    const qv_batch *b = rt->b;
    const size_t n_in = (size_t)qv_proj_n_in(&rt->m->cfg, p);
    for (int s = 0; s < b->n_segs; s++) {
        const qv_adapter *ad = seg_ad(rt, s);
        if (!ad || !ad->layers[layer].ia3[p] || !ad->layers[layer].ia3_input[p]) continue;
        const float *l = ad->layers[layer].ia3[p];
        for (int t = b->seg_start[s]; t < b->seg_start[s + 1]; t++) {
            float *row = x_in + (size_t)t * n_in;
            for (size_t i = 0; i < n_in; i++)
                row[i] *= l[i];
        }
    }
}

void qv_adapter_rt_projs(qv_adapter_rt *rt, int layer, const enum qv_proj *ps, int n_p,
                         const float *x_in, float *const *ys, const float *const *biases) {
    const qv_batch *b = rt->b;
    const qv_model_config *c = &rt->m->cfg;
    QV_ASSERT(n_p >= 1 && n_p <= 3);
    const int n_in = qv_proj_n_in(c, ps[0]);
    int n_l = 0;
    for (int k = 0; k < n_p; k++) {
        const enum qv_proj p = ps[k];
        const int n_out = qv_proj_n_out(c, p);
        QV_ASSERT(qv_proj_n_in(c, p) == n_in);
        for (int s = 0; s < b->n_segs; s++) {
            const qv_adapter *ad = seg_ad(rt, s);
            int t0 = b->seg_start[s], t1 = b->seg_start[s + 1];
            if (!ad || t1 == t0) continue;
            const qv_lora *lo = &ad->layers[layer].lora[p];
            if (!lo->rank) continue;
            if (lo->dora_scale && biases[k]) /* DoRA works on W x without the base bias */
                for (int t = t0; t < t1; t++)
                    for (int o = 0; o < n_out; o++)
                        ys[k][(size_t)t * (size_t)n_out + (size_t)o] -= biases[k][o];
            rt->lsegs[n_l++] = (qv__lora_seg){.t0 = t0,
                                              .n = t1 - t0,
                                              .rank = lo->rank,
                                              .scale = lo->scale,
                                              .a = lo->a,
                                              .b = lo->b,
                                              .b_bias = lo->b_bias,
                                              .y = ys[k],
                                              .ldy = (size_t)n_out,
                                              .n_out = n_out,
                                              .wtype = lo->wtype,
                                              .a16 = lo->a16,
                                              .b16 = lo->b16};
        }
    }
    if (n_l) /* one shrink and one expand (one pool run) for every segment of every projection */
        qv__lora_apply(rt->be, rt->lsegs, n_l, x_in, (size_t)n_in, n_in, rt->tmp, 0, NULL, 0);
    for (int k = 0; k < n_p; k++) {
        const enum qv_proj p = ps[k];
        const int n_out = qv_proj_n_out(c, p);
        const float *bias = biases[k];
        for (int s = 0; s < b->n_segs; s++) {
            const qv_adapter *ad = seg_ad(rt, s);
            if (!ad) continue;
            const qv_adapter_layer *al = &ad->layers[layer];
            const float *dora = al->lora[p].rank ? al->lora[p].dora_scale : NULL;
            const float *ia3 = al->ia3_input[p] ? NULL : al->ia3[p];
            if (!dora && !ia3) continue;
            for (int t = b->seg_start[s]; t < b->seg_start[s + 1]; t++) {
                float *row = ys[k] + (size_t)t * (size_t)n_out;
                if (dora)
                    for (int o = 0; o < n_out; o++)
                        row[o] = dora[o] * row[o] + (bias ? bias[o] : 0.0f);
                if (ia3) /* (W x + b) ⊙ l: the bias is scaled too */
                    for (int o = 0; o < n_out; o++)
                        row[o] *= ia3[o];
            }
        }
    }
}

void qv_adapter_rt_proj(qv_adapter_rt *rt, int layer, enum qv_proj p, const float *x_in, float *y,
                        const float *bias) {
    qv_adapter_rt_projs(rt, layer, &p, 1, x_in, &y, &bias);
}

/* ---- adaption prompt ---- */

void qv_adapter_rt_attn(qv_adapter_rt *rt, int layer, const float *q, float *att) {
    const qv_batch *b = rt->b;
    const qv_model *m = rt->m;
    const qv_model_config *c = &m->cfg;
    const qv_layer_weights *w = &m->layers[layer];
    const int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    const size_t qdim = (size_t)nh * (size_t)hd, kvdim = (size_t)nkv * (size_t)hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int s = 0; s < b->n_segs; s++) {
        const qv_adapter *ad = seg_ad(rt, s);
        int t0 = b->seg_start[s], t1 = b->seg_start[s + 1];
        if (!ad || ad->kind != QV_ADAPTER_ADAPTION_PROMPT || layer < ad->ap_first_layer || t1 == t0)
            continue;
        const int al = layer - ad->ap_first_layer, L = ad->ap_len;
        const float *P = ad->ap_prompt + (size_t)al * (size_t)L * (size_t)c->dim;
        const float gate = ad->ap_gate[al];
        float *ka = rt->ap_kv, *va = ka + (size_t)L * kvdim, *p = va + (size_t)L * kvdim;
        /* K_a, V_a through the layer's own k/v projections (biases included, no RoPE). */
        rt->be->iface->matmul(rt->be, &w->wk, P, L, ka, (const float *)w->bk.data);
        rt->be->iface->matmul(rt->be, &w->wv, P, L, va, (const float *)w->bv.data);
        const int group = nh / nkv;
        for (int t = t0; t < t1; t++) {
            for (int h = 0; h < nh; h++) {
                const float *qh = q + (size_t)t * qdim + (size_t)h * (size_t)hd;
                const size_t koff = (size_t)(h / group) * (size_t)hd;
                float mx = -INFINITY;
                for (int j = 0; j < L; j++) {
                    p[j] = qv__lora_dot(qh, ka + (size_t)j * kvdim + koff, hd) * scale;
                    mx = fmaxf(mx, p[j]);
                }
                float sum = 0.0f;
                for (int j = 0; j < L; j++) {
                    p[j] = expf(p[j] - mx);
                    sum += p[j];
                }
                float *out = att + (size_t)t * qdim + (size_t)h * (size_t)hd;
                for (int j = 0; j < L; j++) {
                    const float pj = gate * (p[j] / sum);
                    const float *vj = va + (size_t)j * kvdim + koff;
                    for (int i = 0; i < hd; i++)
                        out[i] += pj * vj[i];
                }
            }
        }
    }
}

/* ---- bottleneck ---- */

static float bn_act(enum qv_bn_act a, float x) {
    switch (a) {
    case QV_BN_ACT_RELU: return x > 0.0f ? x : 0.0f;
    case QV_BN_ACT_SILU: return x / (1.0f + expf(-x));
    case QV_BN_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case QV_BN_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case QV_BN_ACT_TANH: return tanhf(x);
    case QV_BN_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case QV_BN_ACT_LEAKY_RELU: return x > 0.0f ? x : 0.01f * x;
    case QV_BN_ACT_IDENTITY: return x;
    }
    return x;
}

/* nn.LayerNorm(dim, eps 1e-5) of x into y (may alias). */
static void layer_norm(const float *x, const float *w, const float *bias, int dim, float *y) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < dim; i++)
        mean += x[i];
    mean /= (float)dim;
    for (int i = 0; i < dim; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= (float)dim;
    const float inv = 1.0f / sqrtf(var + 1e-5f);
    for (int i = 0; i < dim; i++)
        y[i] = (x[i] - mean) * inv * w[i] + bias[i];
}

/* u (dim) = s · Up(act(Down(z))); tmp holds d floats. */
static void bn_core(const qv_adapter *ad, const qv_bn_unit *u, const float *z, int dim, float *tmp,
                    float *out) {
    for (int j = 0; j < u->d; j++)
        tmp[j] = bn_act(ad->bn_act,
                        qv__lora_dot(u->down_w + (size_t)j * (size_t)dim, z, dim) + u->down_b[j]);
    for (int i = 0; i < dim; i++) {
        float v = qv__lora_dot(u->up_w + (size_t)i * (size_t)u->d, tmp, u->d) + u->up_b[i];
        out[i] = v * (u->scaling_ch ? u->scaling_ch[i] : u->scaling);
    }
}

/* One token row of a bottleneck unit (FORMATS.md 5.4): h is rewritten so that x + h is the
 * adapter's output. */
static void bn_row(const qv_adapter *ad, const qv_bn_unit *u, const float *x, float *h, int dim,
                   float *tmp) {
    float *a = tmp + u->d, *res = a + dim, *o = res + dim;
    if (ad->bn_parallel) {
        bn_core(ad, u, x, dim, tmp, o);
        if (u->ln_after_w) layer_norm(o, u->ln_after_w, u->ln_after_b, dim, o);
        for (int i = 0; i < dim; i++)
            h[i] += o[i];
        return;
    }
    for (int i = 0; i < dim; i++)
        a[i] = ad->bn_original_ln_before ? h[i] + x[i] : h[i];
    const float *r = ad->bn_residual == QV_BN_RES_BEFORE_LN ? h : a;
    memcpy(res, r, (size_t)dim * sizeof(float));
    if (u->ln_before_w) layer_norm(a, u->ln_before_w, u->ln_before_b, dim, a);
    bn_core(ad, u, a, dim, tmp, o);
    if (u->ln_after_w && ad->bn_adapter_residual_before_ln) {
        for (int i = 0; i < dim; i++)
            o[i] += res[i];
        layer_norm(o, u->ln_after_w, u->ln_after_b, dim, o);
    } else {
        if (u->ln_after_w) layer_norm(o, u->ln_after_w, u->ln_after_b, dim, o);
        for (int i = 0; i < dim; i++)
            o[i] += res[i];
    }
    /* out = o + x (original_ln_after) or o; the caller adds x back. */
    for (int i = 0; i < dim; i++)
        h[i] = ad->bn_original_ln_after ? o[i] : o[i] - x[i];
}

void qv_adapter_rt_block_out(qv_adapter_rt *rt, int layer, int where, const float *x, float *h) {
    const qv_batch *b = rt->b;
    const int dim = rt->m->cfg.dim;
    const float *bo = (const float *)rt->m->layers[layer].bo.data;
    for (int s = 0; s < b->n_segs; s++) {
        const qv_adapter *ad = seg_ad(rt, s);
        if (!ad) continue;
        int t0 = b->seg_start[s], t1 = b->seg_start[s + 1];
        if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT && where == 0 && bo &&
            layer >= ad->ap_first_layer) /* o + o_proj(U): o_proj's bias counts twice */
            for (int t = t0; t < t1; t++)
                for (int i = 0; i < dim; i++)
                    h[(size_t)t * (size_t)dim + (size_t)i] += bo[i];
        if (ad->kind != QV_ADAPTER_BOTTLENECK) continue;
        const qv_bn_unit *u = where == 0 ? &ad->layers[layer].bn_attn : &ad->layers[layer].bn_ffn;
        if (!u->d) continue;
        for (int t = t0; t < t1; t++)
            bn_row(ad, u, x + (size_t)t * (size_t)dim, h + (size_t)t * (size_t)dim, dim, rt->tmp);
    }
}

/* ---- lm_head ---- */

void qv_adapter_rt_logits(qv_adapter_rt *rt, const float *y, float *logits) {
    const qv_batch *b = rt->b;
    const int dim = rt->m->cfg.dim, V = rt->m->cfg.n_vocab;
    for (int i = 0; i < b->n_logits; i++) {
        const qv_adapter *ad = seg_ad(rt, rt->tok_seg[b->logits_idx[i]]);
        if (!ad) continue;
        const float *yi = y + (size_t)i * (size_t)dim;
        float *li = logits + (size_t)i * (size_t)V;
        if (ad->lm_head_replace) { /* the adapter's own lm_head replaces the base one */
            const qv_tensor w = {.dtype = QV_DTYPE_F32,
                                 .n_rows = V,
                                 .n_cols = dim,
                                 .row_bytes = (size_t)dim * sizeof(float),
                                 .data = ad->lm_head_replace};
            rt->be->iface->matmul(rt->be, &w, yi, 1, li, NULL);
        }
        const qv_lora *lo = &ad->lm_head_lora;
        if (lo->rank) {
            qv__lora_seg g = {.t0 = 0,
                              .n = 1,
                              .rank = lo->rank,
                              .scale = lo->scale,
                              .a = lo->a,
                              .b = lo->b,
                              .b_bias = lo->b_bias};
            qv__lora_shrink(NULL, &g, 1, yi, (size_t)dim, dim, rt->tmp);
            qv__lora_expand(rt->be, &g, 1, rt->tmp, V, li, (size_t)V);
        }
    }
}

/* ---- prefix tuning ---- */

static qv_status prefix_check(qv_backend *be, const qv_kv_cache *kv, const qv_adapter *ad,
                              qv_error *err) {
    (void)be;
    const qv_kv_pool *pool = &kv->pool;
    if (!ad || ad->kind != QV_ADAPTER_PREFIX_TUNING || !ad->prefix_k || ad->n_virtual <= 0)
        return qv_errorf(err, QV_ERR_INVALID, "adapters: not a prefix-tuning adapter");
    if (ad->n_layers != pool->n_layers || ad->n_kv_heads != pool->n_kv_heads ||
        ad->head_dim != pool->head_dim)
        return qv_errorf(err, QV_ERR_INVALID, "adapters: prefix K/V shape does not fit the cache");
    return QV_OK;
}

/* Stores prefix positions [j0, j1) through the page table `pages` (covering them). */
static qv_status prefix_store_range(qv_backend *be, qv_kv_cache *kv, const int32_t *pages,
                                    const qv_adapter *ad, int j0, int j1, qv_error *err) {
    const qv_kv_pool *pool = &kv->pool;
    const int ps = pool->page_size, n = j1 - j0;
    if (n <= 0) return QV_OK;
    int32_t *page = qv_malloc((size_t)n * sizeof(int32_t));
    int32_t *off = qv_malloc((size_t)n * sizeof(int32_t));
    if (!page || !off) {
        qv_free(page);
        qv_free(off);
        return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
    }
    for (int j = j0; j < j1; j++) {
        page[j - j0] = pages[j / ps];
        off[j - j0] = j % ps;
    }
    const size_t kvd = (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    const size_t per_layer = (size_t)ad->n_virtual * kvd;
    /* device backends store from backend memory: each layer's rows are uploaded first (upload
     * waits for the copy, so the scratch is free again for the next layer) */
    float *dev = NULL;
    const size_t rows = (size_t)n * kvd;
    if (be->iface->upload && !(dev = be->iface->alloc(be, 2 * rows * sizeof(float)))) {
        qv_free(page);
        qv_free(off);
        return qv_errorf(err, QV_ERR_DEVICE_OOM, "adapters: no backend memory for prefix K/V");
    }
    for (int l = 0; l < ad->n_layers; l++) {
        const float *k = ad->prefix_k + (size_t)l * per_layer + (size_t)j0 * kvd;
        const float *v = ad->prefix_v + (size_t)l * per_layer + (size_t)j0 * kvd;
        if (dev) {
            be->iface->upload(be, dev, k, rows * sizeof(float));
            be->iface->upload(be, dev + rows, v, rows * sizeof(float));
            k = dev;
            v = dev + rows;
        }
        be->iface->kv_store(be, &kv->pool, l, k, v, n, page, off);
    }
    if (dev) {
        /* the last store must have read the scratch before it is released */
        qv_status st = be->iface->download(be, NULL, NULL, 0, err);
        be->iface->free(be, dev);
        if (st != QV_OK) {
            qv_free(page);
            qv_free(off);
            return st;
        }
    }
    qv_free(page);
    qv_free(off);
    return QV_OK;
}

qv_status qv_adapter_prefix_store(qv_backend *be, qv_kv_cache *kv, const qv_kv_seq *seq,
                                  const qv_adapter *ad, qv_error *err) {
    qv_status st = prefix_check(be, kv, ad, err);
    if (st != QV_OK) return st;
    const int nvt = ad->n_virtual;
    if ((nvt - 1) / kv->pool.page_size >= seq->n_pages)
        return qv_errorf(err, QV_ERR_INVALID, "adapters: %d prefix positions not reserved", nvt);
    return prefix_store_range(be, kv, seq->pages, ad, 0, nvt, err);
}

/* ---- shared prefix pages ---- */

typedef struct prefix_entry {
    const qv_adapter *ad;
    int n_users;    /* sequences attached */
    qv_kv_seq held; /* the full pages of the prefix, one reference held by the cache */
} prefix_entry;

struct qv_adapter_prefix_cache {
    prefix_entry *e; /* [n] */
    int n, cap;
};

static prefix_entry *find_entry(qv_adapter_prefix_cache *pc, const qv_adapter *ad) {
    for (int i = 0; pc && i < pc->n; i++)
        if (pc->e[i].ad == ad) return &pc->e[i];
    return NULL;
}

qv_status qv_adapter_prefix_attach(qv_adapter_prefix_cache **ppc, qv_backend *be, qv_kv_cache *kv,
                                   qv_kv_seq *seq, const qv_adapter *ad, qv_error *err) {
    qv_status st = prefix_check(be, kv, ad, err);
    if (st != QV_OK) return st;
    if (seq->n_pages != 0)
        return qv_errorf(err, QV_ERR_INVALID, "adapters: prefix attach to a non-empty sequence");
    const int ps = kv->pool.page_size, nvt = ad->n_virtual, n_full = nvt / ps;
    if (!*ppc && !(*ppc = qv_calloc(1, sizeof(**ppc))))
        return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
    qv_adapter_prefix_cache *pc = *ppc;
    prefix_entry *en = find_entry(pc, ad);
    if (!en && n_full > 0) { /* first sequence of this adapter: write the full pages once */
        if (pc->n == pc->cap) {
            int cap = pc->cap ? 2 * pc->cap : 4;
            prefix_entry *ne = qv_realloc(pc->e, (size_t)cap * sizeof(*ne));
            if (!ne) return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
            pc->e = ne;
            pc->cap = cap;
        }
        prefix_entry tmp = {.ad = ad};
        if ((st = qv_kv_seq_reserve(kv, &tmp.held, n_full * ps)) != QV_OK)
            return qv_errorf(err, st, "adapters: no KV pages for a %d-token prefix", nvt);
        if ((st = prefix_store_range(be, kv, tmp.held.pages, ad, 0, n_full * ps, err)) != QV_OK) {
            qv_kv_seq_release(kv, &tmp.held);
            return st;
        }
        pc->e[pc->n] = tmp;
        en = &pc->e[pc->n++];
    }
    if (en) { /* share the full pages: the table starts with them, one more reference each */
        if (seq->cap < n_full) {
            int32_t *p = qv_realloc(seq->pages, (size_t)n_full * sizeof(int32_t));
            if (!p) return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory");
            seq->pages = p;
            seq->cap = n_full;
        }
        for (int i = 0; i < n_full; i++) {
            qv_kv_page_ref(kv, en->held.pages[i]);
            seq->pages[seq->n_pages++] = en->held.pages[i];
        }
    }
    /* The partial last page (if any) is the sequence's own: real tokens fill the rest of it. */
    if ((st = qv_kv_seq_reserve(kv, seq, nvt)) != QV_OK ||
        (st = prefix_store_range(be, kv, seq->pages, ad, n_full * ps, nvt, err)) != QV_OK) {
        qv_kv_seq_release(kv, seq);
        if (en) qv_adapter_prefix_detach(pc, kv, ad, 0);
        return qv_errorf(err, st, "adapters: no KV pages for a %d-token prefix", nvt);
    }
    if (en) en->n_users++;
    return QV_OK;
}

void qv_adapter_prefix_detach(qv_adapter_prefix_cache *pc, qv_kv_cache *kv, const qv_adapter *ad,
                              int n_users) {
    prefix_entry *en = find_entry(pc, ad);
    if (!en) return;
    en->n_users -= n_users;
    QV_ASSERT(en->n_users >= 0);
    if (en->n_users > 0) return;
    qv_kv_seq_release(kv, &en->held);
    *en = pc->e[--pc->n];
}

void qv_adapter_prefix_cache_free(qv_adapter_prefix_cache *pc, qv_kv_cache *kv) {
    if (!pc) return;
    for (int i = 0; i < pc->n; i++)
        qv_kv_seq_release(kv, &pc->e[i].held);
    qv_free(pc->e);
    qv_free(pc);
}

/* ---- batch grouping ---- */

struct qv_adapter_grouper {
    int cap_tokens, cap_seqs;
    int32_t *perm;             /* [cap_tokens] new index -> old index */
    int32_t *inv;              /* [cap_tokens] old index -> new index */
    int32_t *tmp;              /* [cap_tokens] */
    int32_t *seg_start;        /* [cap_tokens + 1] */
    const qv_adapter **seg_ad; /* [cap_tokens] */
    const qv_adapter **tok_ad; /* [cap_tokens] the adapter acting on each token */
};

void qv_adapter_grouper_free(qv_adapter_grouper *g) {
    if (!g) return;
    qv_free(g->perm);
    qv_free(g->inv);
    qv_free(g->tmp);
    qv_free(g->seg_start);
    qv_free(g->seg_ad);
    qv_free(g->tok_ad);
    qv_free(g);
}

static qv_status grouper_fit(qv_adapter_grouper **pg, int n, qv_error *err) {
    qv_adapter_grouper *g = *pg;
    if (g && g->cap_tokens >= n) return QV_OK;
    qv_adapter_grouper_free(g);
    *pg = g = qv_calloc(1, sizeof(*g));
    if (!g) return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory for grouping");
    g->cap_tokens = n;
    size_t T = (size_t)n;
    g->perm = qv_malloc(T * sizeof(int32_t));
    g->inv = qv_malloc(T * sizeof(int32_t));
    g->tmp = qv_malloc(T * sizeof(int32_t));
    g->seg_start = qv_malloc((T + 1) * sizeof(int32_t));
    g->seg_ad = qv_malloc(T * sizeof(*g->seg_ad));
    g->tok_ad = qv_malloc(T * sizeof(*g->tok_ad));
    if (!g->perm || !g->inv || !g->tmp || !g->seg_start || !g->seg_ad || !g->tok_ad) {
        qv_adapter_grouper_free(g);
        *pg = NULL;
        return qv_errorf(err, QV_ERR_NOMEM, "adapters: out of memory for grouping");
    }
    return QV_OK;
}

static void permute(int32_t *a, const int32_t *perm, int n, int32_t *tmp) {
    for (int j = 0; j < n; j++)
        tmp[j] = a[perm[j]];
    memcpy(a, tmp, (size_t)n * sizeof(int32_t));
}

qv_status qv_adapter_group_batch(qv_adapter_grouper **pg, qv_batch *b, int32_t *tokens,
                                 int32_t *pos, int32_t *seq, int32_t *logits_idx,
                                 qv_adapter_of_fn ad_of, void *ctx, qv_error *err) {
    b->n_segs = 0;
    b->seg_start = NULL;
    b->seg_adapter = NULL;
    const int n = b->n_tokens;
    /* A base-only batch (the common case without adapters) needs no scratch and no grouping. */
    int first = 0;
    const qv_adapter *ad0 = NULL;
    while (first < n && !(ad0 = ad_of(ctx, seq[first], pos[first])))
        first++;
    if (first >= n) return QV_OK;
    qv_status st = grouper_fit(pg, n, err);
    if (st != QV_OK) return st;
    qv_adapter_grouper *g = *pg;
    for (int t = 0; t < first; t++)
        g->tok_ad[t] = NULL;
    g->tok_ad[first] = ad0;
    for (int t = first + 1; t < n; t++)
        g->tok_ad[t] = ad_of(ctx, seq[t], pos[t]);
    /* Distinct adapters in order of first appearance; each becomes one segment holding its
     * tokens in their original order. */
    int n_segs = 0, j = 0;
    for (int t = 0; t < n; t++) {
        const qv_adapter *key = g->tok_ad[t];
        bool seen = false;
        for (int s = 0; s < n_segs && !seen; s++)
            seen = g->seg_ad[s] == key;
        if (seen) continue;
        g->seg_ad[n_segs] = key;
        g->seg_start[n_segs++] = j;
        for (int u = t; u < n; u++)
            if (g->tok_ad[u] == key) g->perm[j++] = u;
    }
    QV_ASSERT(j == n);
    g->seg_start[n_segs] = n;
    for (int k = 0; k < n; k++)
        g->inv[g->perm[k]] = k;
    permute(tokens, g->perm, n, g->tmp);
    permute(pos, g->perm, n, g->tmp);
    permute(seq, g->perm, n, g->tmp);
    for (int i = 0; i < b->n_logits; i++)
        logits_idx[i] = g->inv[logits_idx[i]];
    b->n_segs = n_segs;
    b->seg_start = g->seg_start;
    b->seg_adapter = g->seg_ad;
    return QV_OK;
}
