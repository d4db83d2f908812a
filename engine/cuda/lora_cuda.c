/*
 * lora_cuda.c - LoRA, DoRA and IA3 in the CUDA forward pass (lora_cuda.h): adapter residency in the
 * device adapter pool, per-step segment bookkeeping, and one SGMV shrink + expand per projection
 * group.
 *
 * A pool version holds, for every (layer, projection) with rank > 0 in layer-major order, A
 * (rank, n_in) then B (n_out, rank) as half matrices; ent->mat[layer * 7 + proj] names A's
 * index (B is the next one). Tables are built at each hook from the step's segments and staged
 * by the backend (so the one host table buffer is reused at once).
 *
 * CUDA graphs: a step's launches depend only on the batch's segment lengths, the projections
 * some adapter of the batch touches, and the batch's largest rank rounded up to a power of two
 * (at least 8): every table has one entry per (segment, projection of the group), empty (n = 0)
 * where a segment has no LoRA there, and the plan's launch bounds are those bucketed values. So
 * the recorded decode graph of a batch shape replays for any adapter mix within a rank bucket
 * (qv_cuda_lora_rt_shape is the part of the graph key that says so); the weights, ranks and
 * scales travel in the staged table.
 * Thread: the engine thread.
 */
#include "cuda/lora_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "cuda/adapter_pool.h"
#include "cuda/backend_cuda.h"
#include "sgmv_plan.h"

#define N_PROJ QV_PROJ_COUNT
/* proj_mask bits beyond the projections' (0-6 LoRA, 8-14 output vectors, 16-22 input vectors) */
#define MASK_BN_ATTN (1u << 24) /* a bottleneck unit after the attention sub-block */
#define MASK_BN_FFN (1u << 25)  /* a bottleneck unit after the FFN sub-block */
#define MASK_AP (1u << 26)      /* adaption-prompt attention */

/* the kernels' activation numbering is enum qv_bn_act's */
_Static_assert(QV_BN_ACT_RELU == 0 && QV_BN_ACT_SILU == 1 && QV_BN_ACT_GELU == 2 &&
                   QV_BN_ACT_GELU_TANH == 3 && QV_BN_ACT_TANH == 4 && QV_BN_ACT_SIGMOID == 5 &&
                   QV_BN_ACT_LEAKY_RELU == 6 && QV_BN_ACT_IDENTITY == 7,
               "bn activations");
/* bottleneck and adaption-prompt tables live in the SGMV table's room (2 entries per segment) */
_Static_assert(sizeof(qv_bn_seg) <= 2 * sizeof(qv_sgmv_seg) &&
                   sizeof(qv_ap_seg) <= sizeof(qv_sgmv_seg) &&
                   sizeof(qv_seg_scale) <= sizeof(qv_sgmv_seg),
               "adapter tables");

typedef struct lora_ent {
    const qv_adapter *ad;
    uint64_t fp;        /* content fingerprint */
    int max_rank;       /* largest rank over layers and projections */
    unsigned proj_mask; /* bit p: projection p has rank > 0 in some layer; bit 8 + p: an IA3
                           output vector on p; bit 16 + p: an IA3 input vector on p */
    int *vec;           /* [n_layers * N_PROJ]: index of the IA3 vector in the version, or -1 */
    int embd;           /* index of the prompt embeddings (n_virtual, dim) in the version, or -1 */
    int *bn;            /* [n_layers * 2]: index of the bottleneck unit's down_w (attention side,
                           then FFN side; the unit's other arrays follow it), or -1 */
    int ap;             /* index of the first adaption-prompt layer's K (then its V, then the
                           next layer's K...), or -1 */
    uint64_t key;       /* pool key */
    int *mat;           /* [n_layers * N_PROJ]: index of A in the version, or -1 */
} lora_ent;

struct qv_cuda_lora_rt {
    const qv_model *m;
    qv_backend *be;
    int max_tokens;
    size_t pool_bytes;
    size_t host_bytes;          /* pinned host tier: SIZE_MAX = default, 0 = none */
    qv_cuda_adapter_pool *pool; /* created by the first begin with an adapter */
    float *tmp;                 /* backend memory, tmp_cap floats */
    size_t tmp_cap;
    qv_sgmv_seg *tab; /* host table of one launch */
    int tab_cap;
    lora_ent *ents;
    int n_ents, cap_ents;
    uint64_t next_key;
    /* the current step */
    bool active;
    int n_tokens, n_segs, cap_segs;
    int *seg_t0, *seg_n, *seg_ent, *seg_slot;
    int *held;
    int n_held, cap_held;
    int32_t *ids;       /* [max_tokens] the step's token ids, virtual ones replaced by 0 */
    const int32_t *tok; /* the step's token ids (the batch's, valid during the step) */
    bool has_virtual;   /* the step has virtual tokens */
    uint64_t shape;
    int rank_bucket;    /* launch bound: the step's largest rank, next power of two >= 8 */
    int max_seg_n;      /* launch bound: the step's longest segment */
    unsigned proj_mask; /* projections some adapter of the step touches */
};

static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ull; }
/* Floats of the runtime's scratch: at most 3 projections of rank QV_SGMV_MAX_RANK per token in
 * one launch (also the adaption prompt's K/V computation, in chunks of rows). */
static size_t tmp_floats(int max_tokens) { return (size_t)max_tokens * 3u * QV_SGMV_MAX_RANK; }
static uint64_t fbits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

qv_status qv_cuda_lora_rt_create(const qv_model *m, qv_backend *be, int max_tokens,
                                 size_t pool_bytes, qv_cuda_lora_rt **out, qv_error *err) {
    *out = NULL;
    if (max_tokens <= 0)
        return qv_errorf(err, QV_ERR_INVALID, "cuda lora: max_tokens %d", max_tokens);
    qv_cuda_lora_rt *rt = qv_calloc(1, sizeof(*rt));
    if (!rt) return qv_errorf(err, QV_ERR_NOMEM, "cuda lora: out of memory");
    rt->m = m;
    rt->be = be;
    rt->max_tokens = max_tokens;
    rt->pool_bytes = pool_bytes;
    rt->host_bytes = SIZE_MAX;
    rt->tmp_cap = tmp_floats(max_tokens);
    rt->tmp = be->iface->alloc(be, rt->tmp_cap * sizeof(float));
    rt->ids = qv_malloc((size_t)max_tokens * sizeof(int32_t));
    if (!rt->ids) {
        if (rt->tmp) be->iface->free(be, rt->tmp);
        qv_free(rt);
        return qv_errorf(err, QV_ERR_NOMEM, "cuda lora: out of memory");
    }
    if (!rt->tmp) {
        qv_free(rt->ids);
        qv_free(rt);
        return qv_errorf(err, QV_ERR_DEVICE_OOM, "cuda lora: no backend memory for %zu floats",
                         rt->tmp_cap);
    }
    *out = rt;
    return QV_OK;
}

void qv_cuda_lora_rt_destroy(qv_cuda_lora_rt *rt) {
    if (!rt) return;
    if (rt->pool)
        for (int i = 0; i < rt->n_held; i++)
            qv_cuda_adapter_pool_release(rt->pool, rt->held[i]);
    qv_cuda_adapter_pool_destroy(rt->pool);
    if (rt->tmp) rt->be->iface->free(rt->be, rt->tmp);
    for (int i = 0; i < rt->n_ents; i++) {
        qv_free(rt->ents[i].mat);
        qv_free(rt->ents[i].vec);
        qv_free(rt->ents[i].bn);
    }
    qv_free(rt->ents);
    qv_free(rt->tab);
    qv_free(rt->seg_t0);
    qv_free(rt->seg_n);
    qv_free(rt->seg_ent);
    qv_free(rt->seg_slot);
    qv_free(rt->held);
    qv_free(rt->ids);
    qv_free(rt);
}

void qv_cuda_lora_rt_stats(const qv_cuda_lora_rt *rt, qv_cuda_pool_stats *out) {
    if (rt && rt->pool)
        qv_cuda_adapter_pool_stats(rt->pool, out);
    else
        memset(out, 0, sizeof(*out));
}

bool qv_cuda_lora_rt_active(const qv_cuda_lora_rt *rt) { return rt && rt->active; }
uint64_t qv_cuda_lora_rt_shape(const qv_cuda_lora_rt *rt) { return rt ? rt->shape : 0; }

/* Limits of the bottleneck and adaption-prompt kernels on this model; NULL when `ad` fits,
 * else what does not (for the message). */
static const char *kernel_limits(const qv_model *m, int max_tokens, const qv_adapter *ad, char *buf,
                                 size_t n) {
    const qv_model_config *c = &m->cfg;
    if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT) {
        const size_t row = (size_t)c->dim + 2u * (size_t)c->n_kv_heads * (size_t)c->head_dim;
        if (ad->ap_len > QV_AP_MAX_LEN)
            snprintf(buf, n, "an adapter_len of %d (the CUDA kernel takes up to %d)", ad->ap_len,
                     QV_AP_MAX_LEN);
        else if (row > tmp_floats(max_tokens))
            snprintf(buf, n, "adaption prompts with max_batch_tokens %d", max_tokens);
        else
            return NULL;
        return buf;
    }
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_bn_unit *u[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++)
            if (u[w]->d > 0 && (u[w]->d > c->n_ff || c->dim > c->n_ff)) { /* n_ff-row scratch */
                snprintf(buf, n,
                         "a bottleneck of size %d (the CUDA kernel takes up to n_ff = %d, on "
                         "models with n_ff >= dim)",
                         u[w]->d, c->n_ff);
                return buf;
            }
    }
    return NULL;
}

/* What the CUDA path implements: LoRA / rsLoRA / DoRA (F32, F16 or BF16 weights) on the decoder
 * projections, IA3 (output scaling of any projection, input scaling of down_proj: PEFT's Llama
 * defaults), prompt / P-tuning, prefix tuning, bottleneck units and adaption prompts. The
 * message names the kind or feature that is missing. */
qv_status qv_cuda_adapter_supported(const qv_model *m, int max_tokens, const qv_adapter *ad,
                                    qv_error *err) {
    const qv_model_config *c = &m->cfg;
    const bool prompt = ad->kind == QV_ADAPTER_PROMPT_TUNING || ad->kind == QV_ADAPTER_P_TUNING;
    /* prefix tuning: its K/V fill the first KV positions (engine admission, adapter_apply.c);
     * the forward pass then runs the base model for its segment */
    const bool prefix = ad->kind == QV_ADAPTER_PREFIX_TUNING && ad->prefix_k && ad->prefix_v;
    const bool ap = ad->kind == QV_ADAPTER_ADAPTION_PROMPT;
    if (ad->kind != QV_ADAPTER_LORA && ad->kind != QV_ADAPTER_IA3 && !prompt && !prefix && !ap &&
        ad->kind != QV_ADAPTER_BOTTLENECK)
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "cuda: adapter kind %s is not supported on the CUDA backend (use --device "
                         "cpu)",
                         qv_adapter_kind_name(ad->kind));
    if (ap && (ad->ap_len < 1 || ad->ap_n_layers < 1 || !ad->ap_prompt || !ad->ap_gate ||
               ad->ap_first_layer < 0 || ad->ap_first_layer + ad->ap_n_layers != c->n_layers))
        return qv_errorf(err, QV_ERR_INVALID, "cuda: adaption prompt does not fit the model");
    if (ad->kind == QV_ADAPTER_BOTTLENECK &&
        ((unsigned)ad->bn_act > (unsigned)QV_BN_ACT_IDENTITY || ad->n_layers != c->n_layers))
        return qv_errorf(err, QV_ERR_INVALID, "cuda: bottleneck adapter does not fit the model");
    char lim[160];
    const char *feat = kernel_limits(m, max_tokens, ad, lim, sizeof lim);
    if (ad->lora_bias)
        feat = "lora_bias";
    else if (ad->embed_lora.rank > 0)
        feat = "embedding LoRA";
    else if (ad->lm_head_lora.rank > 0)
        feat = "lm_head LoRA";
    else if (ad->embed_replace || ad->lm_head_replace)
        feat = "modules_to_save";
    else if (ad->n_trainable_tokens > 0)
        feat = "trainable tokens";
    else if (ad->n_virtual > 0 && !(prompt && ad->prompt_embd) && !prefix)
        feat = "virtual tokens";
    if (!feat && ad->n_layers != c->n_layers)
        return qv_errorf(err, QV_ERR_INVALID, "cuda: adapter has %d layers, the model %d",
                         ad->n_layers, c->n_layers);
    for (int l = 0; l < ad->n_layers && !feat; l++) {
        const qv_adapter_layer *L = &ad->layers[l];
        for (int p = 0; p < N_PROJ && !feat; p++) {
            const qv_lora *lo = &L->lora[p];
            if (L->ia3[p] && L->ia3_input[p] && p != QV_PROJ_DOWN)
                feat = "IA3 input scaling of a projection other than down_proj";
            if (lo->rank <= 0 || feat) continue;
            if (lo->b_bias)
                feat = "lora_bias";
            else if (lo->magnitude && !lo->dora_scale)
                feat = "DoRA without its precomputed scale";
            else if (lo->wtype == QV_DTYPE_F32
                         ? (!lo->a || !lo->b)
                         : ((lo->wtype != QV_DTYPE_F16 && lo->wtype != QV_DTYPE_BF16) || !lo->a16 ||
                            !lo->b16))
                return qv_errorf(err, QV_ERR_INVALID, "cuda: LoRA on layer %d %s lacks weights", l,
                                 qv_proj_name((enum qv_proj)p));
            else if (lo->rank > QV_SGMV_MAX_RANK)
                return qv_errorf(err, QV_ERR_UNSUPPORTED,
                                 "cuda: LoRA rank %d on layer %d %s exceeds %d", lo->rank, l,
                                 qv_proj_name((enum qv_proj)p), QV_SGMV_MAX_RANK);
            else if (lo->n_in != qv_proj_n_in(c, (enum qv_proj)p) ||
                     lo->n_out != qv_proj_n_out(c, (enum qv_proj)p))
                return qv_errorf(
                    err, QV_ERR_INVALID,
                    "cuda: LoRA on layer %d %s is (%d -> %d), the model has (%d -> %d)", l,
                    qv_proj_name((enum qv_proj)p), lo->n_in, lo->n_out,
                    qv_proj_n_in(c, (enum qv_proj)p), qv_proj_n_out(c, (enum qv_proj)p));
        }
    }
    if (feat)
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "cuda: %s adapter uses %s, not supported on the CUDA backend (use "
                         "--device cpu)",
                         qv_adapter_kind_name(ad->kind), feat);
    return QV_OK;
}

/* The per-feature vector of (l, p), or NULL: an IA3 vector (IA3 adapters) or the DoRA scale
 * m / ||W + s·B·A|| (LoRA adapters; an adapter is one kind, so at most one per projection). */
static const float *vec_of(const qv_adapter *ad, int l, int p) {
    const qv_adapter_layer *L = &ad->layers[l];
    if (ad->kind == QV_ADAPTER_IA3) return L->ia3[p];
    return L->lora[p].rank > 0 ? L->lora[p].dora_scale : NULL;
}
/* Whether that vector scales the projection's input (IA3 feedforward) rather than its output. */
static bool vec_is_input(const qv_adapter *ad, int l, int p) {
    return ad->kind == QV_ADAPTER_IA3 && ad->layers[l].ia3_input[p];
}
/* Its length: the projection's input or output width. */
static int vec_len(const qv_model_config *c, const qv_adapter *ad, int l, int p) {
    return vec_is_input(ad, l, p) ? qv_proj_n_in(c, (enum qv_proj)p)
                                  : qv_proj_n_out(c, (enum qv_proj)p);
}

static void fingerprint(const qv_model_config *c, const qv_adapter *ad, uint64_t *fp) {
    uint64_t h = 1469598103934665603ull, r = 1469598103934665603ull;
    h = mix(h, (uint64_t)ad->n_bytes);
    h = mix(h, (uint64_t)ad->n_layers);
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const qv_lora *lo = &ad->layers[l].lora[p];
            r = mix(r, (uint64_t)(lo->rank > 0 ? lo->rank : 0));
            if (lo->rank <= 0) continue;
            const size_t na = (size_t)lo->rank * (size_t)lo->n_in;
            const size_t nb = (size_t)lo->n_out * (size_t)lo->rank;
            const uint64_t v[7] = {fbits(lo->scale),
                                   (uint64_t)lo->wtype,
                                   fbits(qv_lora_a_at(lo, 0)),
                                   fbits(qv_lora_a_at(lo, na / 2)),
                                   fbits(qv_lora_a_at(lo, na - 1)),
                                   fbits(qv_lora_b_at(lo, 0)),
                                   fbits(qv_lora_b_at(lo, nb - 1))};
            for (int i = 0; i < 7; i++)
                h = mix(h, v[i]);
        }
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const float *v = vec_of(ad, l, p);
            if (!v) continue;
            const size_t n = (size_t)vec_len(c, ad, l, p);
            h = mix(mix(mix(h, fbits(v[0])), fbits(v[n / 2])), fbits(v[n - 1]));
        }
    if (ad->prompt_embd) {
        const size_t n = (size_t)ad->n_virtual * (size_t)c->dim;
        h = mix(mix(mix(mix(h, (uint64_t)ad->n_virtual), fbits(ad->prompt_embd[0])),
                    fbits(ad->prompt_embd[n / 2])),
                fbits(ad->prompt_embd[n - 1]));
    }
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++) {
            const qv_bn_unit *u = us[w];
            if (u->d <= 0) continue;
            const size_t nw = (size_t)u->d * (size_t)c->dim;
            h = mix(mix(mix(mix(mix(h, (uint64_t)u->d), fbits(u->down_w[nw / 2])),
                            fbits(u->up_w[nw - 1])),
                        fbits(u->scaling)),
                    (uint64_t)(u->scaling_ch != NULL) | (uint64_t)(u->ln_before_w != NULL) << 1 |
                        (uint64_t)(u->ln_after_w != NULL) << 2);
        }
    }
    if (ad->kind == QV_ADAPTER_BOTTLENECK)
        h = mix(h, (uint64_t)ad->bn_parallel | (uint64_t)ad->bn_original_ln_before << 1 |
                       (uint64_t)ad->bn_original_ln_after << 2 | (uint64_t)ad->bn_residual << 3 |
                       (uint64_t)ad->bn_adapter_residual_before_ln << 5 |
                       (uint64_t)ad->bn_act << 6);
    if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT && ad->ap_prompt && ad->ap_gate) {
        const size_t n = (size_t)ad->ap_n_layers * (size_t)ad->ap_len * (size_t)c->dim;
        h = mix(mix(mix(mix(h, (uint64_t)ad->ap_len), fbits(ad->ap_prompt[n / 2])),
                    fbits(ad->ap_prompt[n - 1])),
                fbits(ad->ap_gate[ad->ap_n_layers - 1]));
    }
    *fp = mix(h, r);
}

static qv_status ensure_pool(qv_cuda_lora_rt *rt, qv_error *err) {
    if (rt->pool) return QV_OK;
    size_t bytes = rt->pool_bytes;
    if (!bytes) {
        const char *env = getenv("QV_CUDA_ADAPTER_POOL_MB");
        long mb = env ? strtol(env, NULL, 10) : 512;
        if (mb <= 0) mb = 512;
        bytes = (size_t)mb << 20;
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
            (void)cudaGetLastError(); /* not left for the next launch check */
        else if (bytes > free_b / 4)
            bytes = free_b / 4;
        bytes &= ~(size_t)0xffff;
    }
    size_t host = rt->host_bytes;
    if (host == SIZE_MAX) {
        const char *env = getenv("QV_CUDA_ADAPTER_PINNED_MB");
        host = env ? (size_t)QV_MAX(strtol(env, NULL, 10), 0L) << 20 : 2 * bytes;
    }
    qv_cuda_pool_opts o = {
        .pool_bytes = bytes, .host_bytes = host, .fp16 = qv_backend_cuda_act_fp16(rt->be)};
    return qv_cuda_adapter_pool_create(&o, (cudaStream_t)qv_backend_cuda_stream(rt->be), &rt->pool,
                                       err);
}

/* Pool matrices of a bottleneck unit (0 when absent): down_w, down_b, up_w, up_b, then the
 * channel scaling and the LayerNorms before / after (weight, bias) where it has them. */
static int bn_n_mats(const qv_bn_unit *u) {
    if (u->d <= 0) return 0;
    return 4 + (u->scaling_ch != NULL) + 2 * (u->ln_before_w != NULL) + 2 * (u->ln_after_w != NULL);
}

qv_status qv_cuda_lora_rt_init_pool(qv_cuda_lora_rt *rt, qv_error *err) {
    return ensure_pool(rt, err);
}

void qv_cuda_lora_rt_set_host_bytes(qv_cuda_lora_rt *rt, size_t bytes) { rt->host_bytes = bytes; }

/* The map entry of `ad` (created or refreshed when its fingerprint changed). -1 on NOMEM. */
static int entry_of(qv_cuda_lora_rt *rt, const qv_adapter *ad) {
    uint64_t fp;
    fingerprint(&rt->m->cfg, ad, &fp);
    int e = -1;
    for (int i = 0; i < rt->n_ents; i++)
        if (rt->ents[i].ad == ad) e = i;
    if (e >= 0 && rt->ents[e].fp == fp) return e;
    if (e < 0) {
        /* Reuse an entry whose version left the pool. Entries never move: the current step's
         * segments name theirs by index (begin assigns them one segment at a time, and a
         * prefetch may come after begin), and their versions are held, so never reused. */
        for (int i = 0; i < rt->n_ents && e < 0; i++)
            if (!qv_cuda_adapter_pool_known(rt->pool, rt->ents[i].key)) e = i;
        if (e < 0) {
            if (rt->n_ents == rt->cap_ents) {
                int cap = rt->cap_ents ? 2 * rt->cap_ents : 16;
                lora_ent *p = qv_realloc(rt->ents, (size_t)cap * sizeof(lora_ent));
                if (!p) return -1;
                rt->ents = p;
                rt->cap_ents = cap;
            }
            e = rt->n_ents++;
            rt->ents[e] = (lora_ent){0};
        }
    }
    lora_ent *en = &rt->ents[e];
    if (!en->mat) en->mat = qv_malloc((size_t)ad->n_layers * N_PROJ * sizeof(int));
    if (!en->vec) en->vec = qv_malloc((size_t)ad->n_layers * N_PROJ * sizeof(int));
    if (!en->bn) en->bn = qv_malloc((size_t)ad->n_layers * 2 * sizeof(int));
    if (!en->mat || !en->vec || !en->bn) {
        qv_free(en->mat);
        qv_free(en->vec);
        qv_free(en->bn);
        *en = (lora_ent){0}; /* key 0 is never resident: a free entry */
        return -1;
    }
    en->ad = ad;
    en->fp = fp;
    en->key = ++rt->next_key; /* a new version: the old one (if any) ages out of the pool */
    en->max_rank = 0;
    en->proj_mask = 0;
    int k = 0;
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const int r = ad->layers[l].lora[p].rank;
            en->mat[l * N_PROJ + p] = r > 0 ? k : -1;
            if (r <= 0) continue;
            k += 2;
            en->max_rank = QV_MAX(en->max_rank, r);
            en->proj_mask |= 1u << p;
        }
    /* IA3 / DoRA vectors follow every LoRA matrix in the version (pool_mats' order) */
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            en->vec[l * N_PROJ + p] = vec_of(ad, l, p) ? k : -1;
            if (!vec_of(ad, l, p)) continue;
            k++;
            en->proj_mask |= 1u << (vec_is_input(ad, l, p) ? 16 + p : 8 + p);
        }
    en->embd = ad->prompt_embd && ad->n_virtual > 0 ? k++ : -1;
    /* then the bottleneck units (pool_mats' order) and the adaption prompt's K and V */
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++) {
            en->bn[l * 2 + w] = us[w]->d > 0 ? k : -1;
            if (us[w]->d <= 0) continue;
            k += bn_n_mats(us[w]);
            en->proj_mask |= w ? MASK_BN_FFN : MASK_BN_ATTN;
        }
    }
    en->ap = -1;
    if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT) {
        en->ap = k;
        k += 2 * ad->ap_n_layers;
        en->proj_mask |= MASK_AP;
    }
    return e;
}

/* The pool matrices of `ad` (A then B of every adapted (layer, projection), layer-major), in a
 * new array (caller frees); *n receives their count (0: no LoRA matrices, NULL returned). */
static qv_cuda_pool_mat *pool_mats(const qv_model_config *c, const qv_adapter *ad, int *n,
                                   qv_error *err) {
    *n = 0;
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++)
            *n += (ad->layers[l].lora[p].rank > 0 ? 2 : 0) + (vec_of(ad, l, p) ? 1 : 0);
    *n += ad->prompt_embd && ad->n_virtual > 0;
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++)
            *n += bn_n_mats(us[w]);
    }
    if (ad->kind == QV_ADAPTER_ADAPTION_PROMPT) *n += 2 * ad->ap_n_layers;
    if (*n == 0) return NULL;
    qv_cuda_pool_mat *mats = qv_malloc((size_t)*n * sizeof(*mats));
    if (!mats) {
        qv_errorf(err, QV_ERR_NOMEM, "cuda lora: out of memory");
        return NULL;
    }
    int k = 0;
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++) {
            const qv_lora *lo = &ad->layers[l].lora[p];
            if (lo->rank <= 0) continue;
            const bool f32 = lo->wtype == QV_DTYPE_F32;
            mats[k++] = (qv_cuda_pool_mat){f32 ? (const void *)lo->a : (const void *)lo->a16,
                                           (int64_t)lo->rank * lo->n_in, lo->wtype};
            mats[k++] = (qv_cuda_pool_mat){f32 ? (const void *)lo->b : (const void *)lo->b16,
                                           (int64_t)lo->n_out * lo->rank, lo->wtype};
        }
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < N_PROJ; p++)
            if (vec_of(ad, l, p))
                mats[k++] =
                    (qv_cuda_pool_mat){vec_of(ad, l, p), vec_len(c, ad, l, p), QV_DTYPE_F32};
    if (ad->prompt_embd && ad->n_virtual > 0)
        mats[k++] =
            (qv_cuda_pool_mat){ad->prompt_embd, (int64_t)ad->n_virtual * c->dim, QV_DTYPE_F32};
    const int64_t dim = c->dim;
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++) {
            const qv_bn_unit *u = us[w];
            if (u->d <= 0) continue;
            mats[k++] = (qv_cuda_pool_mat){u->down_w, (int64_t)u->d * dim, QV_DTYPE_F32};
            mats[k++] = (qv_cuda_pool_mat){u->down_b, u->d, QV_DTYPE_F32};
            mats[k++] = (qv_cuda_pool_mat){u->up_w, dim * u->d, QV_DTYPE_F32};
            mats[k++] = (qv_cuda_pool_mat){u->up_b, dim, QV_DTYPE_F32};
            if (u->scaling_ch) mats[k++] = (qv_cuda_pool_mat){u->scaling_ch, dim, QV_DTYPE_F32};
            if (u->ln_before_w) {
                mats[k++] = (qv_cuda_pool_mat){u->ln_before_w, dim, QV_DTYPE_F32};
                mats[k++] = (qv_cuda_pool_mat){u->ln_before_b, dim, QV_DTYPE_F32};
            }
            if (u->ln_after_w) {
                mats[k++] = (qv_cuda_pool_mat){u->ln_after_w, dim, QV_DTYPE_F32};
                mats[k++] = (qv_cuda_pool_mat){u->ln_after_b, dim, QV_DTYPE_F32};
            }
        }
    }
    /* adaption prompt: K and V of each adapted layer, (ap_len, kv_dim), computed on the device
     * after the load (ap_compute); zeros until then */
    const int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
    for (int j = 0; ad->kind == QV_ADAPTER_ADAPTION_PROMPT && j < 2 * ad->ap_n_layers; j++)
        mats[k++] = (qv_cuda_pool_mat){NULL, (int64_t)ad->ap_len * kv, QV_DTYPE_F32};
    QV_ASSERT(k == *n);
    return mats;
}

/* The adaption prompt's keys and values of every adapted layer, through that layer's own k/v
 * projections (biases included, no RoPE: PEFT's AdaptedAttention), written into the version's
 * room in half. Runs between steps, once per load: the prompt rows go through the runtime's
 * scratch in chunks, the projections are the backend's, the compute stream orders it after the
 * version's copy and before any step that reads it. */
static qv_status ap_compute(qv_cuda_lora_rt *rt, const lora_ent *en, int slot, qv_error *err) {
    const qv_model *m = rt->m;
    const qv_model_config *c = &m->cfg;
    const qv_adapter *ad = en->ad;
    const struct qv_backend_i *bi = rt->be->iface;
    const size_t dim = (size_t)c->dim, kvdim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    qv_status st = qv_cuda_adapter_pool_use(rt->pool, slot, err);
    if (st != QV_OK) return st;
    const int chunk = (int)QV_MIN(rt->tmp_cap / (dim + 2 * kvdim), (size_t)ad->ap_len);
    QV_ASSERT(chunk >= 1); /* kernel_limits */
    float *P = rt->tmp, *K = P + (size_t)chunk * dim, *V = K + (size_t)chunk * kvdim;
    for (int al = 0; al < ad->ap_n_layers; al++) {
        const qv_layer_weights *w = &m->layers[ad->ap_first_layer + al];
        unsigned short *kd = qv_cuda_adapter_pool_room(rt->pool, slot, en->ap + 2 * al);
        unsigned short *vd = qv_cuda_adapter_pool_room(rt->pool, slot, en->ap + 2 * al + 1);
        for (int r0 = 0; r0 < ad->ap_len; r0 += chunk) {
            const int nr = QV_MIN(chunk, ad->ap_len - r0);
            const float *src = ad->ap_prompt + ((size_t)al * (size_t)ad->ap_len + (size_t)r0) * dim;
            bi->upload(rt->be, P, src, (size_t)nr * dim * sizeof(float));
            bi->matmul(rt->be, &w->wk, P, nr, K, w->bk.data ? (const float *)w->bk.data : NULL);
            bi->matmul(rt->be, &w->wv, P, nr, V, w->bv.data ? (const float *)w->bv.data : NULL);
            if (qv_backend_cuda_to_half(rt->be, K, kd + (size_t)r0 * kvdim, (size_t)nr * kvdim) ||
                qv_backend_cuda_to_half(rt->be, V, vd + (size_t)r0 * kvdim, (size_t)nr * kvdim))
                return qv_errorf(err, QV_ERR_DEVICE, "cuda: adaption prompt K/V failed");
        }
    }
    return QV_OK;
}

static qv_status load(qv_cuda_lora_rt *rt, const lora_ent *en, int *slot, qv_error *err) {
    *slot = qv_cuda_adapter_pool_find(rt->pool, en->key);
    if (*slot >= 0) return qv_cuda_adapter_pool_load(rt->pool, en->key, NULL, 0, slot, err);
    int n = 0;
    qv_cuda_pool_mat *mats = pool_mats(&rt->m->cfg, en->ad, &n, err);
    if (n == 0) return QV_OK; /* nothing to upload: the segment acts as the base model */
    if (!mats) return QV_ERR_NOMEM;
    qv_status st = qv_cuda_adapter_pool_load(rt->pool, en->key, mats, n, slot, err);
    qv_free(mats);
    if (st == QV_OK && en->ap >= 0) st = ap_compute(rt, en, *slot, err);
    return st;
}

qv_status qv_cuda_lora_rt_check(qv_cuda_lora_rt *rt, const qv_adapter *ad, size_t *bytes,
                                size_t *pool_bytes, qv_error *err) {
    *bytes = 0;
    *pool_bytes = 0;
    qv_status st = qv_cuda_adapter_supported(rt->m, rt->max_tokens, ad, err);
    if (st == QV_OK) st = ensure_pool(rt, err);
    if (st != QV_OK) return st;
    *pool_bytes = qv_cuda_adapter_pool_bytes(rt->pool);
    int n = 0;
    qv_cuda_pool_mat *mats = pool_mats(&rt->m->cfg, ad, &n, err);
    if (n == 0) return QV_OK;
    if (!mats) return QV_ERR_NOMEM;
    *bytes = qv_cuda_adapter_pool_footprint(rt->pool, mats, n);
    qv_free(mats);
    if (*bytes > *pool_bytes)
        return qv_errorf(err, QV_ERR_DEVICE_OOM,
                         "cuda: the adapter needs %zu MiB of the device adapter pool, which has "
                         "%zu MiB (QV_CUDA_ADAPTER_POOL_MB)",
                         (*bytes + (1u << 20) - 1) >> 20, *pool_bytes >> 20);
    return QV_OK;
}

static int grow(void **p, int *cap, int need, size_t elem, int n_arrays) {
    (void)n_arrays;
    if (need <= *cap) return 1;
    int c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    void *q = qv_realloc(*p, (size_t)c * elem);
    if (!q) return 0;
    *p = q;
    *cap = c;
    return 1;
}

qv_status qv_cuda_lora_rt_begin(qv_cuda_lora_rt *rt, const qv_batch *b, qv_error *err) {
    for (int i = 0; i < rt->n_held; i++)
        qv_cuda_adapter_pool_release(rt->pool, rt->held[i]);
    rt->n_held = 0;
    rt->active = false;
    rt->shape = 0;
    if (b->n_segs == 0) return QV_OK;
    const int S = b->n_segs;
    if (S < 0 || !b->seg_start || !b->seg_adapter || b->seg_start[0] != 0 ||
        b->seg_start[S] != b->n_tokens)
        return qv_errorf(err, QV_ERR_INVALID, "cuda lora: segments do not cover the batch");
    for (int s = 0; s < S; s++)
        if (b->seg_start[s + 1] < b->seg_start[s])
            return qv_errorf(err, QV_ERR_INVALID, "cuda lora: segment %d ends before it starts", s);
    if (b->n_tokens > rt->max_tokens)
        return qv_errorf(err, QV_ERR_INVALID, "cuda lora: %d tokens (limit %d)", b->n_tokens,
                         rt->max_tokens);
    for (int s = 0; s < S; s++) {
        const qv_adapter *ad = b->seg_adapter[s];
        if (!ad) continue;
        qv_status st = qv_cuda_adapter_supported(rt->m, rt->max_tokens, ad, err);
        if (st != QV_OK) return st;
    }
    /* virtual tokens (ids -1 - k) only where the segment's adapter has k-th prompt embedding */
    rt->has_virtual = false;
    rt->tok = b->tokens;
    for (int s = 0; s < S; s++)
        for (int i = b->seg_start[s]; i < b->seg_start[s + 1]; i++) {
            const int32_t id = b->tokens[i];
            rt->ids[i] = id < 0 ? 0 : id;
            if (id >= 0) continue;
            const qv_adapter *ad = b->seg_adapter[s];
            if (!ad || !ad->prompt_embd || -1 - id >= ad->n_virtual)
                return qv_errorf(err, QV_ERR_INVALID,
                                 "cuda: virtual token %d without a prompt embedding", id);
            rt->has_virtual = true;
        }
    if (S > rt->cap_segs) {
        int c = rt->cap_segs;
        if (!grow((void **)&rt->seg_t0, &c, S, sizeof(int), 1)) goto nomem;
        c = rt->cap_segs;
        if (!grow((void **)&rt->seg_n, &c, S, sizeof(int), 1)) goto nomem;
        c = rt->cap_segs;
        if (!grow((void **)&rt->seg_ent, &c, S, sizeof(int), 1)) goto nomem;
        c = rt->cap_segs;
        if (!grow((void **)&rt->seg_slot, &c, S, sizeof(int), 1)) goto nomem;
        rt->cap_segs = c;
    }
    if (!grow((void **)&rt->held, &rt->cap_held, S, sizeof(int), 1)) goto nomem;
    /* tables: 3 entries per segment (SGMV, scaling), or one per token (prompt embeddings) */
    if (QV_MAX(3 * S, b->n_tokens) > rt->tab_cap) {
        int c = rt->tab_cap;
        if (!grow((void **)&rt->tab, &c, QV_MAX(3 * S, b->n_tokens), sizeof(qv_sgmv_seg), 1))
            goto nomem;
        rt->tab_cap = c;
    }
    qv_status st = ensure_pool(rt, err);
    if (st != QV_OK) return st;
    bool any = false;
    int max_rank = 0, max_n = 0;
    unsigned mask = 0;
    for (int s = 0; s < S; s++) {
        const qv_adapter *ad = b->seg_adapter[s];
        rt->seg_t0[s] = b->seg_start[s];
        rt->seg_n[s] = b->seg_start[s + 1] - b->seg_start[s];
        rt->seg_ent[s] = -1;
        rt->seg_slot[s] = -1;
        max_n = QV_MAX(max_n, rt->seg_n[s]);
        if (!ad) continue;
        int e = entry_of(rt, ad);
        if (e < 0) goto nomem;
        int slot = -1;
        st = load(rt, &rt->ents[e], &slot, err);
        if (st != QV_OK) goto fail;
        if (slot < 0) continue; /* no LoRA matrices at all */
        qv_cuda_adapter_pool_acquire(rt->pool, slot);
        rt->held[rt->n_held++] = slot;
        st = qv_cuda_adapter_pool_use(rt->pool, slot, err);
        if (st != QV_OK) goto fail;
        rt->seg_ent[s] = e;
        rt->seg_slot[s] = slot;
        max_rank = QV_MAX(max_rank, rt->ents[e].max_rank);
        mask |= rt->ents[e].proj_mask;
        any = true;
    }
    int bucket = 8;
    while (bucket < max_rank)
        bucket *= 2;
    rt->rank_bucket = QV_MIN(bucket, QV_SGMV_MAX_RANK);
    rt->max_seg_n = max_n;
    rt->proj_mask = mask;
    /* the launch shape: segment lengths (the batch key has only their count and the total),
     * rank bucket, projections touched */
    uint64_t shape = 1469598103934665603ull;
    for (int s = 0; s < S; s++)
        shape = mix(shape, (uint64_t)rt->seg_n[s]);
    shape =
        mix(mix(mix(shape, (uint64_t)rt->rank_bucket), (uint64_t)mask), (uint64_t)rt->has_virtual);
    rt->n_segs = S;
    rt->n_tokens = b->n_tokens;
    rt->active = any;
    rt->shape = any ? (shape ? shape : 1) : 0;
    return QV_OK;
nomem:
    st = qv_errorf(err, QV_ERR_NOMEM, "cuda lora: out of memory");
fail:
    for (int i = 0; i < rt->n_held; i++)
        qv_cuda_adapter_pool_release(rt->pool, rt->held[i]);
    rt->n_held = 0;
    return st;
}

qv_status qv_cuda_lora_rt_prefetch(qv_cuda_lora_rt *rt, const qv_adapter *ad, qv_error *err) {
    qv_status st = qv_cuda_adapter_supported(rt->m, rt->max_tokens, ad, err);
    if (st == QV_OK) st = ensure_pool(rt, err);
    if (st != QV_OK) return st;
    int e = entry_of(rt, ad);
    if (e < 0) return qv_errorf(err, QV_ERR_NOMEM, "cuda lora: out of memory");
    const lora_ent *en = &rt->ents[e];
    if (qv_cuda_adapter_pool_find(rt->pool, en->key) >= 0)
        return qv_cuda_adapter_pool_load(rt->pool, en->key, NULL, 0, NULL, err); /* touch */
    int n = 0;
    qv_cuda_pool_mat *mats = pool_mats(&rt->m->cfg, ad, &n, err);
    if (n == 0) return QV_OK;
    if (!mats) return QV_ERR_NOMEM;
    int slot = -1;
    st = qv_cuda_adapter_pool_prefetch(rt->pool, en->key, mats, n, ad, &slot, err);
    qv_free(mats);
    if (st == QV_OK && slot >= 0 && en->ap >= 0) st = ap_compute(rt, en, slot, err);
    return st;
}

bool qv_cuda_lora_rt_ready(qv_cuda_lora_rt *rt, const qv_adapter *ad) {
    if (!rt->pool) return false;
    uint64_t fp;
    fingerprint(&rt->m->cfg, ad, &fp);
    for (int i = 0; i < rt->n_ents; i++) {
        const lora_ent *en = &rt->ents[i];
        if (en->ad != ad || en->fp != fp) continue;
        const int slot = qv_cuda_adapter_pool_find(rt->pool, en->key);
        if (slot >= 0) return qv_cuda_adapter_pool_ready(rt->pool, slot);
    }
    int n = 0;
    qv_error e = {0};
    qv_cuda_pool_mat *mats = pool_mats(&rt->m->cfg, ad, &n, &e);
    qv_free(mats);
    return n == 0; /* nothing to upload */
}

void qv_cuda_lora_rt_forget(qv_cuda_lora_rt *rt, const qv_adapter *ad) {
    if (rt && rt->pool) qv_cuda_adapter_pool_forget(rt->pool, ad);
}

/* Host pointer of the base bias of (layer, p), or NULL. */
static const float *proj_bias(const qv_model *m, int layer, enum qv_proj p) {
    const qv_layer_weights *w = &m->layers[layer];
    const qv_tensor *t = p == QV_PROJ_Q      ? &w->bq
                         : p == QV_PROJ_K    ? &w->bk
                         : p == QV_PROJ_V    ? &w->bv
                         : p == QV_PROJ_O    ? &w->bo
                         : p == QV_PROJ_GATE ? &w->b_gate
                         : p == QV_PROJ_UP   ? &w->b_up
                                             : &w->b_down;
    return t->data ? (const float *)t->data : NULL;
}

/* Scaling of rows of xs[j] (the input (in != 0) or output of projection ps[j]) by each
 * segment's vector there (IA3: x ⊙ l; DoRA: scale ⊙ (x - b) + b): one launch for the group,
 * one entry per (segment, projection), empty where a segment has no vector (the table depends
 * on the batch shape only). */
static void vec_scale(qv_cuda_lora_rt *rt, int layer, const enum qv_proj *ps, int n_p, int in,
                      float *const *xs) {
    const qv_model_config *c = &rt->m->cfg;
    qv_seg_scale *tab = (qv_seg_scale *)(void *)rt->tab; /* 48 of the 64-byte entries' room */
    int k = 0, max_cols = 0;
    for (int s = 0; s < rt->n_segs; s++) {
        const lora_ent *en = rt->seg_slot[s] >= 0 ? &rt->ents[rt->seg_ent[s]] : NULL;
        for (int j = 0; j < n_p; j++) {
            const int p = (int)ps[j];
            const int vi = en ? en->vec[layer * N_PROJ + p] : -1;
            const bool match = vi >= 0 && vec_is_input(en->ad, layer, p) == (in != 0);
            const bool dora = match && en->ad->kind == QV_ADAPTER_LORA;
            const int cols =
                in ? qv_proj_n_in(c, (enum qv_proj)p) : qv_proj_n_out(c, (enum qv_proj)p);
            max_cols = QV_MAX(max_cols, cols);
            tab[k++] = (qv_seg_scale){
                .x = xs[j],
                .vec = match ? qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], vi) : NULL,
                .bias = dora ? proj_bias(rt->m, layer, (enum qv_proj)p) : NULL,
                .ldx = cols,
                .t0 = rt->seg_t0[s],
                .n = match ? rt->seg_n[s] : 0,
                .n_cols = cols,
                .mode = dora,
            };
        }
    }
    qv_backend_cuda_seg_scale(rt->be, tab, k, rt->max_seg_n, max_cols);
}

const int32_t *qv_cuda_lora_rt_ids(const qv_cuda_lora_rt *rt, const int32_t *tokens) {
    return rt && rt->active && rt->has_virtual ? rt->ids : tokens;
}

void qv_cuda_lora_rt_embed(qv_cuda_lora_rt *rt, float *x) {
    if (!rt->active || !rt->has_virtual) return;
    const int dim = rt->m->cfg.dim;
    qv_seg_scale *tab = (qv_seg_scale *)(void *)rt->tab;
    /* one entry per token (the table depends on the batch shape only), copies for virtual ones */
    QV_ASSERT(rt->n_tokens <= rt->tab_cap);
    int k = 0;
    for (int s = 0; s < rt->n_segs; s++) {
        const lora_ent *en = rt->seg_slot[s] >= 0 ? &rt->ents[rt->seg_ent[s]] : NULL;
        for (int t = rt->seg_t0[s]; t < rt->seg_t0[s] + rt->seg_n[s]; t++) {
            const int32_t id = rt->tok[t];
            const bool v = id < 0 && en && en->embd >= 0;
            const unsigned short *base =
                v ? qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], en->embd) : NULL;
            tab[k++] = (qv_seg_scale){.x = x,
                                      .vec = v ? base + (size_t)(-1 - id) * (size_t)dim : NULL,
                                      .ldx = dim,
                                      .t0 = t,
                                      .n = v ? 1 : 0,
                                      .n_cols = dim,
                                      .mode = 2};
        }
    }
    qv_backend_cuda_seg_scale(rt->be, tab, k, 1, dim);
}

bool qv_cuda_lora_rt_scales_output(const qv_cuda_lora_rt *rt, enum qv_proj p) {
    return rt && rt->active && (rt->proj_mask & (1u << (8 + p)));
}

void qv_cuda_lora_rt_scale_input(qv_cuda_lora_rt *rt, int layer, enum qv_proj p, float *x) {
    if (!rt->active || !(rt->proj_mask & (1u << (16 + p)))) return;
    vec_scale(rt, layer, &p, 1, 1, &x);
}

/* One SGMV shrink + expand for every LoRA of the group ps[0..n_p). */
static void lora_group(qv_cuda_lora_rt *rt, int layer, const enum qv_proj *ps, int n_p,
                       const float *x_in, float *const *ys) {
    const qv_model_config *c = &rt->m->cfg;
    /* one entry per (segment, projection), empty where there is no LoRA: the table's length
     * and the launch bounds depend on the batch shape only, not on the adapter mix */
    int k = 0, max_n_out = 0;
    for (int s = 0; s < rt->n_segs; s++) {
        const lora_ent *en = rt->seg_slot[s] >= 0 ? &rt->ents[rt->seg_ent[s]] : NULL;
        for (int j = 0; j < n_p; j++) {
            const int p = (int)ps[j];
            const int mi = en ? en->mat[layer * N_PROJ + p] : -1;
            const int n_out = qv_proj_n_out(c, (enum qv_proj)p);
            max_n_out = QV_MAX(max_n_out, n_out);
            if (mi < 0) {
                rt->tab[k++] = (qv_sgmv_seg){.y = ys[j],
                                             .ldy = n_out,
                                             .t0 = rt->seg_t0[s],
                                             .n = 0,
                                             .rank = 1,
                                             .n_out = n_out};
                continue;
            }
            const qv_lora *lo = &en->ad->layers[layer].lora[p];
            rt->tab[k++] = (qv_sgmv_seg){
                .a = qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], mi),
                .b = qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], mi + 1),
                .y = ys[j],
                .ldy = n_out,
                .t0 = rt->seg_t0[s],
                .n = rt->seg_n[s],
                .rank = lo->rank,
                .n_out = n_out,
                .scale = lo->scale,
            };
        }
    }
    if (k == 0) return;
    qv_sgmv_plan plan;
    qv_error err = {0};
    /* begin validated every field the plan checks: a failure here is a broken invariant */
    qv_status st = qv_sgmv_plan_build(rt->tab, k, rt->n_tokens, &plan, &err);
    if (st != QV_OK) QV_LOGE("cuda lora: %s", err.msg);
    QV_ASSERT(st == QV_OK);
    QV_ASSERT(plan.tmp_floats <= rt->tmp_cap);
    /* launch bounds from the step's shape (each >= the table's own) */
    QV_ASSERT(plan.max_rank <= rt->rank_bucket && plan.max_n <= rt->max_seg_n);
    plan.max_rank = rt->rank_bucket;
    plan.max_n = rt->max_seg_n;
    plan.max_n_out = max_n_out;
    qv_backend_cuda_sgmv(rt->be, rt->tab, &plan, x_in, rt->n_tokens, qv_proj_n_in(c, ps[0]),
                         rt->tmp);
}

void qv_cuda_lora_rt_projs(qv_cuda_lora_rt *rt, int layer, const enum qv_proj *ps, int n_p,
                           const float *x_in, float *const *ys) {
    if (!rt->active) return;
    QV_ASSERT(n_p >= 1 && n_p <= 3);
    unsigned group = 0;
    for (int j = 0; j < n_p; j++)
        group |= 1u << ps[j];
    if (group & rt->proj_mask) lora_group(rt, layer, ps, n_p, x_in, ys);
    /* then the output vectors: IA3 scales (W x + b); DoRA rescales W x + the LoRA delta */
    if (group & (rt->proj_mask >> 8) & 0xffu) vec_scale(rt, layer, ps, n_p, 0, ys);
}

bool qv_cuda_lora_rt_has_block_out(const qv_cuda_lora_rt *rt, int where) {
    return rt && rt->active && (rt->proj_mask & (where ? MASK_BN_FFN : MASK_BN_ATTN));
}

void qv_cuda_lora_rt_block_out(qv_cuda_lora_rt *rt, int layer, int where, const float *x, float *h,
                               float *scratch_o, float *scratch_t, int ld_scratch) {
    if (!qv_cuda_lora_rt_has_block_out(rt, where)) return;
    const int dim = rt->m->cfg.dim;
    qv_bn_seg *tab = (qv_bn_seg *)(void *)rt->tab; /* 96 of two 64-byte entries' room */
    int k = 0;
    for (int s = 0; s < rt->n_segs; s++) {
        const lora_ent *en = rt->seg_slot[s] >= 0 ? &rt->ents[rt->seg_ent[s]] : NULL;
        int i = en ? en->bn[layer * 2 + where] : -1;
        if (i < 0) { /* one entry per segment: the table depends on the batch shape only */
            tab[k++] = (qv_bn_seg){.t0 = rt->seg_t0[s], .n = 0};
            continue;
        }
        const qv_adapter *ad = en->ad;
        const qv_bn_unit *u = where ? &ad->layers[layer].bn_ffn : &ad->layers[layer].bn_attn;
        const qv_cuda_adapter_pool *P = rt->pool;
        const int sl = rt->seg_slot[s];
        qv_bn_seg e = {.t0 = rt->seg_t0[s], .n = rt->seg_n[s], .d = u->d, .scaling = u->scaling};
        e.down_w = qv_cuda_adapter_pool_mat(P, sl, i++);
        e.down_b = qv_cuda_adapter_pool_mat(P, sl, i++);
        e.up_w = qv_cuda_adapter_pool_mat(P, sl, i++);
        e.up_b = qv_cuda_adapter_pool_mat(P, sl, i++);
        if (u->scaling_ch) e.scale_ch = qv_cuda_adapter_pool_mat(P, sl, i++);
        if (u->ln_before_w) {
            e.lnb_w = qv_cuda_adapter_pool_mat(P, sl, i++);
            e.lnb_b = qv_cuda_adapter_pool_mat(P, sl, i++);
        }
        if (u->ln_after_w) {
            e.lna_w = qv_cuda_adapter_pool_mat(P, sl, i++);
            e.lna_b = qv_cuda_adapter_pool_mat(P, sl, i++);
        }
        e.flags = (ad->bn_parallel ? QV_BN_F_PARALLEL : 0) |
                  (ad->bn_original_ln_before ? QV_BN_F_ORIG_LN_BEFORE : 0) |
                  (ad->bn_original_ln_after ? QV_BN_F_ORIG_LN_AFTER : 0) |
                  (ad->bn_residual == QV_BN_RES_BEFORE_LN ? QV_BN_F_RES_BEFORE_LN : 0) |
                  (ad->bn_adapter_residual_before_ln ? QV_BN_F_ADAPTER_RES_LN : 0);
        e.act = (int32_t)ad->bn_act;
        tab[k++] = e;
    }
    qv_backend_cuda_bottleneck(rt->be, tab, k, rt->max_seg_n, x, h, dim, scratch_o, scratch_t,
                               ld_scratch);
}

void qv_cuda_lora_rt_attn(qv_cuda_lora_rt *rt, int layer, const float *q, float *att, float *x) {
    if (!rt->active || !(rt->proj_mask & MASK_AP)) return;
    const qv_model_config *c = &rt->m->cfg;
    qv_ap_seg *tab = (qv_ap_seg *)(void *)rt->tab;
    int k = 0;
    for (int s = 0; s < rt->n_segs; s++) {
        const lora_ent *en = rt->seg_slot[s] >= 0 ? &rt->ents[rt->seg_ent[s]] : NULL;
        const bool on = en && en->ap >= 0 && layer >= en->ad->ap_first_layer;
        if (!on) { /* one entry per segment, at every layer: the launches depend on the shape */
            tab[k++] = (qv_ap_seg){.t0 = rt->seg_t0[s], .n = 0};
            continue;
        }
        const int al = layer - en->ad->ap_first_layer;
        tab[k++] = (qv_ap_seg){
            .k = qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], en->ap + 2 * al),
            .v = qv_cuda_adapter_pool_mat(rt->pool, rt->seg_slot[s], en->ap + 2 * al + 1),
            .t0 = rt->seg_t0[s],
            .n = rt->seg_n[s],
            .len = en->ad->ap_len,
            .gate = en->ad->ap_gate[al],
        };
    }
    const qv_ap_args a = {.tab = tab,
                          .n_tab = k,
                          .max_n = rt->max_seg_n,
                          .q = q,
                          .att = att,
                          .x = x,
                          .bias = proj_bias(rt->m, layer, QV_PROJ_O),
                          .n_heads = c->n_heads,
                          .n_kv_heads = c->n_kv_heads,
                          .head_dim = c->head_dim,
                          .dim = c->dim,
                          .scale = 1.0f / sqrtf((float)c->head_dim)};
    qv_backend_cuda_adaption(rt->be, &a);
}
