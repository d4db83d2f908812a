/*
 * merge.c - merges LoRA adapters into one (LoRAX's merged_adapters): linear, TIES and DARE
 * over lora_A and lora_B separately, with PEFT's merge_utils semantics (see adapters.h).
 *
 * Not here: where merged adapters are cached (the registry) or how requests name them (the
 * server). The inputs are only read; the result owns copies.
 *
 * Pruning is linear in the tensor size: TIES' top-k keeps the k largest magnitudes found by a
 * radix select over the bits of |t| (four counting passes, no sort), DARE's drop mask is a
 * counter-based hash, so a merge does not depend on thread timing or on an RNG's state.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "adapters/adapter_internal.h"

const char *qv_merge_strategy_name(enum qv_merge_strategy s) {
    static const char *const names[] = {"linear", "ties", "dare_linear", "dare_ties", "cat"};
    return (unsigned)s < QV_ARRAY_LEN(names) ? names[s] : NULL;
}

/* SplitMix64's output function. */
static uint64_t mix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static uint32_t abs_bits(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return u & 0x7fffffffu; /* finite values: the order of |v| is the order of these bits */
}

/* Keeps the k largest |t[e]| (among equal magnitudes the lowest indices), zeroes the rest. */
static void magnitude_prune(float *t, size_t n, size_t k) {
    if (k >= n) return;
    uint32_t prefix = 0, mask = 0;
    size_t need = k; /* how many of the elements matching prefix are still to keep */
    if (k > 0)
        for (int shift = 24; shift >= 0; shift -= 8) {
            size_t cnt[256] = {0};
            for (size_t e = 0; e < n; e++) {
                const uint32_t key = abs_bits(t[e]);
                if ((key & mask) == prefix) cnt[(key >> shift) & 255u]++;
            }
            int b = 255;
            while (cnt[b] < need) /* every element of bucket b is kept */
                need -= cnt[b--];
            prefix |= (uint32_t)b << shift;
            mask |= 255u << shift;
        }
    /* prefix is now the k-th largest key; `need` elements equal to it are kept */
    for (size_t e = 0; e < n; e++) {
        const uint32_t key = abs_bits(t[e]);
        if (k > 0 && key > prefix) continue;
        if (k > 0 && key == prefix && need > 0) {
            need--;
            continue;
        }
        t[e] = 0.0f;
    }
}

/* DARE: each element kept with probability density (a hash of its stream and index) and
 * divided by it. */
static void random_prune(float *t, size_t n, double density, uint64_t seed, uint64_t stream) {
    const uint64_t base = mix64(seed ^ mix64(stream));
    const float d = (float)density;
    for (size_t e = 0; e < n; e++) {
        const double u = (double)(mix64(base + e) >> 11) * 0x1.0p-53;
        t[e] = u < density ? t[e] / d : 0.0f;
    }
}

static float sign_of(float v) { return v > 0.0f ? 1.0f : v < 0.0f ? -1.0f : 0.0f; }

typedef struct merge_ctx {
    const qv_adapter *const *ads;
    const qv_merge_params *p;
    float *scratch; /* p->n task tensors of cap floats each */
    size_t cap;
    qv_error *err;
} merge_ctx;

/* Merges tensor `which` (0: A, 1: B) of projection `proj` of layer l over the m adapters idx[]
 * into out (n elements). */
static qv_status merge_tensor(merge_ctx *mc, int l, enum qv_proj proj, const int *idx, int m,
                              int which, size_t n, float *out) {
    const qv_merge_params *p = mc->p;
    if (n > mc->cap) {
        const size_t parts = (size_t)p->n; /* m <= p->n */
        if (n > SIZE_MAX / sizeof(float) / parts)
            return qv_errorf(mc->err, QV_ERR_LIMIT, "LoRA tensor of %zu elements is too large", n);
        float *s = qv_realloc(mc->scratch, n * parts * sizeof(float));
        if (!s) return qv_errorf(mc->err, QV_ERR_NOMEM, "out of memory merging adapters");
        mc->scratch = s;
        mc->cap = n;
    }
    const bool dare = p->strategy == QV_MERGE_DARE_LINEAR || p->strategy == QV_MERGE_DARE_TIES;
    const bool ties = p->strategy == QV_MERGE_TIES || p->strategy == QV_MERGE_DARE_TIES;
    for (int j = 0; j < m; j++) {
        const qv_lora *lo = &mc->ads[idx[j]]->layers[l].lora[proj];
        float *t = mc->scratch + (size_t)j * mc->cap;
        for (size_t e = 0; e < n; e++)
            t[e] = which ? qv_lora_b_at(lo, e) : qv_lora_a_at(lo, e);
        if (p->density >= 1.0) continue;
        if (dare) {
            const uint64_t stream =
                (((uint64_t)idx[j] * 65536u + (uint64_t)l) * 8u + (uint64_t)proj) * 2u +
                (uint64_t)which;
            random_prune(t, n, p->density, p->seed, stream);
        } else if (ties) {
            magnitude_prune(t, n, (size_t)(p->density * (double)n));
        }
    }
    for (size_t e = 0; e < n; e++) {
        if (!ties) {
            float acc = 0.0f;
            for (int j = 0; j < m; j++)
                acc += p->weights[idx[j]] * mc->scratch[(size_t)j * mc->cap + e];
            out[e] = acc;
            continue;
        }
        float vote = 0.0f;
        for (int j = 0; j < m; j++) {
            const float v = mc->scratch[(size_t)j * mc->cap + e];
            vote += p->sign == QV_MERGE_SIGN_TOTAL ? v : sign_of(v);
        }
        const float major = vote >= 0.0f ? 1.0f : -1.0f;
        float acc = 0.0f;
        int cnt = 0;
        for (int j = 0; j < m; j++) {
            const float v = mc->scratch[(size_t)j * mc->cap + e];
            if (sign_of(v) != major) continue;
            acc += p->weights[idx[j]] * v;
            cnt++;
        }
        out[e] = acc / (float)QV_MAX(cnt, 1);
    }
    return QV_OK;
}

/* "cat": the m adapters idx[] of projection proj of layer l side by side into lo (rank = the
 * sum of theirs, scale 1), A's rows of adapter i scaled by w_i * scale_i. */
static qv_status concat_lora(qv__adapter_ctx *c, const qv_adapter *const *ads,
                             const qv_merge_params *p, int l, enum qv_proj proj, const int *idx,
                             int m, qv_lora *lo) {
    const qv_lora *first = &ads[idx[0]]->layers[l].lora[proj];
    int rank = 0;
    for (int j = 0; j < m; j++)
        rank += ads[idx[j]]->layers[l].lora[proj].rank;
    lo->rank = rank;
    lo->n_in = first->n_in;
    lo->n_out = first->n_out;
    lo->scale = 1.0f;
    lo->wtype = QV_DTYPE_F32;
    const size_t n_in = (size_t)lo->n_in, n_out = (size_t)lo->n_out;
    if (!(lo->a = qv__adapter_alloc(c, (size_t)rank * n_in)) ||
        !(lo->b = qv__adapter_alloc(c, n_out * (size_t)rank)))
        return c->err ? c->err->status : QV_ERR_NOMEM;
    size_t r0 = 0;
    for (int j = 0; j < m; j++) {
        const qv_lora *src = &ads[idx[j]]->layers[l].lora[proj];
        const float f = p->weights[idx[j]] * src->scale;
        const size_t rj = (size_t)src->rank;
        for (size_t e = 0; e < rj * n_in; e++)
            lo->a[r0 * n_in + e] = qv_lora_a_at(src, e) * f;
        for (size_t o = 0; o < n_out; o++)
            for (size_t k = 0; k < rj; k++)
                lo->b[o * (size_t)rank + r0 + k] = qv_lora_b_at(src, o * rj + k);
        r0 += rj;
    }
    return QV_OK;
}

static qv_status check_params(const qv_merge_params *p, qv_error *err) {
    if (p->n < 1 || p->n > QV_MERGE_MAX)
        return qv_errorf(err, QV_ERR_INVALID, "a merge takes 1 to %d adapters, not %d",
                         QV_MERGE_MAX, p->n);
    if (!qv_merge_strategy_name(p->strategy))
        return qv_errorf(err, QV_ERR_INVALID, "unknown merge strategy %d", (int)p->strategy);
    if (!(p->density > 0.0 && p->density <= 1.0))
        return qv_errorf(err, QV_ERR_INVALID, "merge density must be in (0, 1]");
    if (p->sign != QV_MERGE_SIGN_TOTAL && p->sign != QV_MERGE_SIGN_FREQUENCY)
        return qv_errorf(err, QV_ERR_INVALID, "unknown majority sign method %d", (int)p->sign);
    for (int i = 0; i < p->n; i++)
        if (!isfinite(p->weights[i]))
            return qv_errorf(err, QV_ERR_INVALID, "merge weight %d is not finite", i + 1);
    return QV_OK;
}

/* Only plain LoRA on the decoder projections merges. */
static qv_status check_adapter(const qv_adapter *ad, int i, const qv_adapter *first,
                               qv_error *err) {
    const char *what = ad->kind != QV_ADAPTER_LORA  ? qv_adapter_kind_name(ad->kind)
                       : qv__adapter_lora_extra(ad) ? qv__adapter_lora_extra(ad)
                       : ad->lora_bias              ? "lora_bias"
                       : ad->n_alora_tokens         ? "aLoRA invocation tokens"
                                                    : NULL;
    if (what)
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "adapter %d of the merge has %s: only plain LoRA adapters merge", i + 1,
                         what);
    if (ad->n_layers != first->n_layers || ad->dim != first->dim)
        return qv_errorf(err, QV_ERR_INVALID,
                         "adapters 1 and %d of the merge were loaded for different base models",
                         i + 1);
    return QV_OK;
}

qv_status qv_adapter_merge(const qv_adapter *const *ads, const qv_merge_params *p, qv_adapter **out,
                           qv_error *err) {
    *out = NULL;
    qv_status s = check_params(p, err);
    if (s != QV_OK) return s;
    for (int i = 0; i < p->n; i++)
        if ((s = check_adapter(ads[i], i, ads[0], err)) != QV_OK) return s;
    const qv_adapter *first = ads[0];
    qv__adapter_ctx c = {.err = err};
    merge_ctx mc = {.ads = ads, .p = p, .err = err};
    if (!(c.ad = qv_calloc(1, sizeof(*c.ad)))) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_adapter *m = c.ad;
    m->kind = QV_ADAPTER_LORA;
    m->uid = qv__adapter_next_uid();
    m->n_layers = first->n_layers;
    m->dim = first->dim;
    m->n_vocab = first->n_vocab;
    m->n_kv_heads = first->n_kv_heads;
    m->head_dim = first->head_dim;
    m->has_base = true;
    for (int i = 0; i < p->n; i++)
        m->has_base = m->has_base && ads[i]->has_base;
    if ((first->base_name && !(m->base_name = qv_strdup(first->base_name))) ||
        !(m->layers = qv_calloc((size_t)QV_MAX(m->n_layers, 1), sizeof(*m->layers)))) {
        s = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    bool any = false;
    for (int l = 0; l < m->n_layers && s == QV_OK; l++)
        for (int pr = 0; pr < QV_PROJ_COUNT && s == QV_OK; pr++) {
            int idx[QV_MERGE_MAX], k = 0;
            for (int i = 0; i < p->n; i++)
                if (ads[i]->layers[l].lora[pr].rank > 0) idx[k++] = i;
            if (!k) continue;
            any = true;
            if (p->strategy == QV_MERGE_CAT) {
                s = concat_lora(&c, ads, p, l, (enum qv_proj)pr, idx, k, &m->layers[l].lora[pr]);
                continue;
            }
            const qv_lora *ref = &ads[idx[0]]->layers[l].lora[pr];
            for (int j = 1; j < k; j++) {
                const qv_lora *o = &ads[idx[j]]->layers[l].lora[pr];
                if (o->rank != ref->rank || o->n_in != ref->n_in || o->n_out != ref->n_out) {
                    s = qv_errorf(
                        err, QV_ERR_INVALID,
                        "adapters %d and %d of the merge have ranks %d and %d on "
                        "layers.%d.%s: merged adapters need equal ranks (merge_strategy \"cat\" "
                        "takes different ones)",
                        idx[0] + 1, idx[j] + 1, ref->rank, o->rank, l,
                        qv_proj_name((enum qv_proj)pr));
                    break;
                }
            }
            if (s != QV_OK) break;
            qv_lora *lo = &m->layers[l].lora[pr];
            lo->rank = ref->rank;
            lo->n_in = ref->n_in;
            lo->n_out = ref->n_out;
            lo->scale = ref->scale;
            lo->wtype = QV_DTYPE_F32;
            const size_t na = (size_t)ref->rank * (size_t)ref->n_in;
            const size_t nb = (size_t)ref->n_out * (size_t)ref->rank;
            if (!(lo->a = qv__adapter_alloc(&c, na)) || !(lo->b = qv__adapter_alloc(&c, nb))) {
                s = err ? err->status : QV_ERR_NOMEM;
                break;
            }
            s = merge_tensor(&mc, l, (enum qv_proj)pr, idx, k, 0, na, lo->a);
            if (s == QV_OK) s = merge_tensor(&mc, l, (enum qv_proj)pr, idx, k, 1, nb, lo->b);
        }
    if (s == QV_OK && !any)
        s = qv_errorf(err, QV_ERR_INVALID, "none of the merged adapters adapts a projection");
    if (s != QV_OK) goto fail;
    qv_free(mc.scratch);
    *out = m;
    return QV_OK;
fail:
    qv_free(mc.scratch);
    qv_adapter_free(m);
    return s;
}
