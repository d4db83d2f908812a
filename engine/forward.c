/*
 * forward.c - the Llama-family forward pass (FORMATS.md 2.3) written once against the backend
 * vtable.
 *
 * Per layer, for all n tokens of the batch at once:
 *   a = RMSNorm(x); q,k,v = a·Wqᵀ,a·Wkᵀ,a·Wvᵀ (+bias); RoPE(q,k); store k,v in the pages;
 *   x += Attn(q, paged K/V)·Woᵀ; m = RMSNorm(x); x += (silu(m·Wgᵀ) ⊙ m·Wuᵀ)·Wdᵀ.
 * Then only the rows that want logits are normalised and projected through lm_head.
 *
 * Every op computes each token's row independently of the others (backend contract), so a
 * sequence's logits do not depend on what else is in the batch.
 *
 * Adapters: on the CPU backend every kind runs through adapter_apply.h; on the CUDA backend
 * through engine/cuda/lora_cuda.h: LoRA as one SGMV shrink + expand per projection group (o and
 * down adding straight into the residual stream unless a vector scales their output or a
 * bottleneck unit rewrites it), IA3 / DoRA vectors, prompt embeddings, adaption-prompt attention
 * after the base attention, bottleneck units before each residual add. What lora_cuda.h does
 * not run is refused there.
 */
#include "forward.h"

#include "adapter_apply.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef QV_HAVE_CUDA
#include "cuda/adapter_pool.h"
#include "cuda/backend_cuda.h"
#include "cuda/lora_cuda.h"
#endif

struct qv_forward {
    const qv_model *m;
    qv_backend *be;
    qv_kv_cache *kv;
    int max_tokens;
    /* scratch, all (max_tokens, width) F32 in backend memory */
    float *x;    /* (T, dim) residual stream */
    float *xb;   /* (T, dim) normed input of a sub-block */
    float *xb2;  /* (T, dim) sub-block output */
    float *q;    /* (T, n_heads*head_dim) */
    float *k;    /* (T, kv_dim) */
    float *v;    /* (T, kv_dim) */
    float *att;  /* (T, n_heads*head_dim) */
    float *gate; /* (T, n_ff) */
    float *up;   /* (T, n_ff) */
    /* device backends only (iface->download != NULL): logits rows in chunks of logit_rows */
    float *logits_dev;   /* (logit_rows, n_vocab) */
    int32_t *argmax_dev; /* [max_tokens] */
    int logit_rows;
    qv_sample_row *srows; /* [max_tokens] every wanted row's sampling parameters (device) */
    qv_logprobs *lp_dev;  /* [max_tokens] tokens and log-probabilities sampled on the device */
    float *pen_raw;       /* [QV_FORWARD_MAX_PEN] device scratch: raw logits of penalised ids */
    qv_token_count *pen;  /* [pen_cap] penalty contexts of the step, padded (device) */
    int pen_cap;
    /* host-side per-step metadata */
    int32_t *slot_page;         /* [T] */
    int32_t *slot_off;          /* [T] */
    const int32_t **tables;     /* [T] page tables, one per sequence of the batch (n_seqs <= T) */
    qv_adapter_rt *ad;          /* adapter runtime, created by the first batch with segments */
    struct qv_cuda_lora_rt *dl; /* CUDA LoRA runtime (device backend "cuda"), same rule */
    /* prefetch queue (qv_forward_prefetch_adapter), issued and emptied by the next run */
    const struct qv_adapter *pf[QV_FORWARD_MAX_PREFETCH];
    int n_pf;
    uint64_t pf_issued, pf_uploads, pf_failures;
    /* CUDA graphs: decode steps padded to a bucket size (pad_decode), with one segment per
     * token; pad_kv holds the one KV page every padding row writes and reads */
    bool pad_on;
    qv_kv_seq pad_kv;
    qv_batch pad_b;
    int32_t *p_tok, *p_pos, *p_seq, *p_li, *p_ss; /* [max_tokens (+1 for p_ss)] */
    const qv_kv_seq **p_seqs;                     /* [max_tokens] */
    const struct qv_adapter **p_ad;               /* [max_tokens] */
};

static void *balloc(qv_backend *be, size_t n) { return be->iface->alloc(be, n); }

#ifdef QV_HAVE_CUDA
static bool is_cuda(const qv_forward *f) { return strcmp(f->be->iface->name, "cuda") == 0; }

/* ---- CUDA graphs across decode batch sizes and adapter mixes ----
 * A recorded step replays only for a step of the same shape (step_key). A decode step (every
 * sequence of the batch contributes its one next token, and wants its logits) is therefore
 * padded to a bucket size (1, 2, 4, then multiples of 8) with rows of token 0 at position 0,
 * each its own sequence on the one KV page pad_kv holds (they all write the same values there
 * and read only it), and its adapter segments are split into one segment per token (the padding
 * rows without adapter; a batch with one adapter keeps one segment, over the padding too):
 * its shape then depends on the bucket, the longest context (in powers of two of pages), the
 * rank bucket and the adapter kinds present, not on how many sequences share which adapter. Padding
 * rows cost compute; their logits are never downloaded. Only while the backend records graphs;
 * QV_CUDA_GRAPH_PAD=0 turns it off. */
static void pad_setup(qv_forward *f) {
    if (!is_cuda(f) || !qv_backend_cuda_graphs_on(f->be)) return;
    const char *env = getenv("QV_CUDA_GRAPH_PAD");
    if (env && strcmp(env, "0") == 0) return;
    const size_t T = (size_t)f->max_tokens;
    f->p_tok = qv_malloc(T * sizeof(int32_t));
    f->p_pos = qv_malloc(T * sizeof(int32_t));
    f->p_seq = qv_malloc(T * sizeof(int32_t));
    f->p_li = qv_malloc(T * sizeof(int32_t));
    f->p_ss = qv_malloc((T + 1) * sizeof(int32_t));
    f->p_seqs = qv_malloc(T * sizeof(*f->p_seqs));
    f->p_ad = qv_malloc(T * sizeof(*f->p_ad));
    if (!f->p_tok || !f->p_pos || !f->p_seq || !f->p_li || !f->p_ss || !f->p_seqs || !f->p_ad ||
        qv_kv_seq_reserve(f->kv, &f->pad_kv, 1) != QV_OK) {
        QV_LOGW("forward: no room for decode padding; CUDA graphs per exact batch size");
        return;
    }
    f->pad_on = true;
}

static int pad_bucket(int n) {
    if (n <= 4) {
        int b = 1;
        while (b < n)
            b *= 2;
        return b;
    }
    return (n + 7) / 8 * 8;
}

/* The padded form of decode batch b (forward-owned arrays), or b itself. */
static const qv_batch *pad_decode(qv_forward *f, const qv_batch *b) {
    const int n = b->n_tokens;
    if (!f->pad_on || n <= 0 || n != b->n_seqs || n != b->n_logits) return b;
    const int B = pad_bucket(n);
    if (B > f->max_tokens) return b;
    for (int i = 0; i < n; i++)
        if (b->seq[i] != i || b->logits_idx[i] != i || b->tokens[i] < 0) return b;
    if (b->n_segs > 0 &&
        (!b->seg_start || !b->seg_adapter || b->seg_start[0] != 0 || b->seg_start[b->n_segs] != n))
        return b; /* validation reports it */
    int s = 0;
    for (int i = 0; i < B; i++) {
        const bool real = i < n;
        f->p_tok[i] = real ? b->tokens[i] : 0;
        f->p_pos[i] = real ? b->pos[i] : 0;
        f->p_seq[i] = i;
        f->p_li[i] = i;
        f->p_seqs[i] = real ? b->seqs[i] : &f->pad_kv;
        f->p_ss[i] = i;
        if (b->n_segs > 0) {
            while (real && b->seg_start[s + 1] <= i)
                s++;
            f->p_ad[i] = real ? b->seg_adapter[s] : NULL;
        }
    }
    f->p_ss[B] = B;
    /* one adapter for the whole batch: one segment over every row, padding included (its rows'
     * outputs are dropped), so that the SGMV reads that adapter once, not once per token */
    const bool one = b->n_segs == 1;
    if (one) f->p_ss[1] = B, f->p_ad[0] = b->seg_adapter[0];
    f->pad_b = (qv_batch){.n_tokens = B,
                          .tokens = f->p_tok,
                          .pos = f->p_pos,
                          .seq = f->p_seq,
                          .n_seqs = B,
                          .seqs = f->p_seqs,
                          .n_logits = B,
                          .logits_idx = f->p_li,
                          .n_segs = one             ? 1
                                    : b->n_segs > 0 ? B
                                                    : 0,
                          .seg_start = f->p_ss,
                          .seg_adapter = f->p_ad};
    return &f->pad_b;
}
#endif

qv_status qv_forward_create(const qv_model *m, qv_backend *be, qv_kv_cache *kv, int max_tokens,
                            qv_forward **out, qv_error *err) {
    *out = NULL;
    if (max_tokens <= 0) return qv_errorf(err, QV_ERR_INVALID, "forward: max_tokens must be > 0");
    const qv_model_config *c = &m->cfg;
    qv_forward *f = qv_calloc(1, sizeof(*f));
    if (!f) return qv_errorf(err, QV_ERR_NOMEM, "forward: out of memory");
    f->m = m;
    f->be = be;
    f->kv = kv;
    f->max_tokens = max_tokens;
    size_t T = (size_t)max_tokens;
    size_t qdim = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t kvdim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    f->x = balloc(be, T * (size_t)c->dim * sizeof(float));
    f->xb = balloc(be, T * (size_t)c->dim * sizeof(float));
    f->xb2 = balloc(be, T * (size_t)c->dim * sizeof(float));
    f->q = balloc(be, T * qdim * sizeof(float));
    f->k = balloc(be, T * kvdim * sizeof(float));
    f->v = balloc(be, T * kvdim * sizeof(float));
    f->att = balloc(be, T * qdim * sizeof(float));
    f->gate = balloc(be, T * (size_t)c->n_ff * sizeof(float));
    f->up = balloc(be, T * (size_t)c->n_ff * sizeof(float));
    f->slot_page = qv_malloc(T * sizeof(int32_t));
    f->slot_off = qv_malloc(T * sizeof(int32_t));
    f->tables = qv_malloc(T * sizeof(*f->tables));
    if (be->iface->download) {
        f->logit_rows = QV_MIN(max_tokens, 64);
        f->logits_dev = balloc(be, (size_t)f->logit_rows * (size_t)c->n_vocab * sizeof(float));
        f->argmax_dev = balloc(be, T * sizeof(int32_t));
        f->srows = qv_calloc(T, sizeof(*f->srows));
        if (be->iface->sample) {
            f->lp_dev = balloc(be, T * sizeof(qv_logprobs));
            f->pen_raw = balloc(be, (size_t)QV_FORWARD_MAX_PEN * sizeof(float));
        }
        if (!f->logits_dev || !f->argmax_dev || !f->srows ||
            (be->iface->sample && (!f->lp_dev || !f->pen_raw))) {
            qv_forward_destroy(f);
            return qv_errorf(err, QV_ERR_NOMEM, "forward: cannot allocate device logits");
        }
    }
    if (!f->x || !f->xb || !f->xb2 || !f->q || !f->k || !f->v || !f->att || !f->gate || !f->up ||
        !f->slot_page || !f->slot_off || !f->tables) {
        qv_forward_destroy(f);
        return qv_errorf(err, QV_ERR_NOMEM, "forward: cannot allocate scratch for %d tokens",
                         max_tokens);
    }
#ifdef QV_HAVE_CUDA
    pad_setup(f);
#endif
    *out = f;
    return QV_OK;
}

void qv_forward_destroy(qv_forward *f) {
    if (!f) return;
    void *bufs[] = {f->pen_raw, f->lp_dev, f->argmax_dev, f->logits_dev, f->up, f->gate, f->att,
                    f->v,       f->k,      f->q,          f->xb2,        f->xb, f->x};
    for (size_t i = 0; i < QV_ARRAY_LEN(bufs); i++) /* reverse order: stack-like arenas */
        if (bufs[i]) f->be->iface->free(f->be, bufs[i]);
    qv_free(f->slot_page);
    qv_free(f->slot_off);
    qv_free(f->tables);
    qv_free(f->srows);
    qv_free(f->pen);
    qv_adapter_rt_destroy(f->ad);
#ifdef QV_HAVE_CUDA
    qv_cuda_lora_rt_destroy(f->dl);
    if (f->pad_kv.pages) qv_kv_seq_release(f->kv, &f->pad_kv);
    qv_free(f->p_tok);
    qv_free(f->p_pos);
    qv_free(f->p_seq);
    qv_free(f->p_li);
    qv_free(f->p_ss);
    qv_free(f->p_seqs);
    qv_free(f->p_ad);
#endif
    qv_free(f);
}

int qv_forward_max_tokens(const qv_forward *f) { return f->max_tokens; }

static const float *bias_of(const qv_tensor *t) { return t->data ? (const float *)t->data : NULL; }

qv_status qv_forward_prefetch_adapter(qv_forward *f, const struct qv_adapter *ad, qv_error *err) {
#ifdef QV_HAVE_CUDA
    if (!ad || !is_cuda(f)) return QV_OK;
    for (int i = 0; i < f->n_pf; i++)
        if (f->pf[i] == ad) return QV_OK;
    if (f->n_pf == QV_FORWARD_MAX_PREFETCH)
        return qv_errorf(err, QV_ERR_BUSY, "forward: %d prefetches queued already", f->n_pf);
    f->pf[f->n_pf++] = ad;
#else
    (void)f;
    (void)ad;
    (void)err;
#endif
    return QV_OK;
}

#ifdef QV_HAVE_CUDA
/* Issues and empties the prefetch queue (device backends); called by a run after its own
 * batch's adapters are held. Errors are logged and counted only. */
static void issue_prefetches(qv_forward *f) {
    for (int i = 0; i < f->n_pf; i++) {
        qv_error e = {0};
        qv_status st = QV_OK;
        if (!f->dl) st = qv_cuda_lora_rt_create(f->m, f->be, f->max_tokens, 0, &f->dl, &e);
        uint64_t loads0 = 0;
        if (st == QV_OK) {
            qv_cuda_pool_stats ps;
            qv_cuda_lora_rt_stats(f->dl, &ps);
            loads0 = ps.loads;
            st = qv_cuda_lora_rt_prefetch(f->dl, f->pf[i], &e);
        }
        f->pf_issued++;
        if (st != QV_OK) {
            f->pf_failures++;
            QV_LOGD("forward: prefetch refused: %s", e.msg);
            continue;
        }
        qv_cuda_pool_stats ps;
        qv_cuda_lora_rt_stats(f->dl, &ps);
        f->pf_uploads += ps.loads > loads0;
    }
    f->n_pf = 0;
}
#endif

qv_status qv_forward_adapter_pool_init(qv_forward *f, size_t pool_bytes, size_t host_bytes,
                                       qv_error *err) {
#ifdef QV_HAVE_CUDA
    if (!is_cuda(f)) return QV_OK;
    qv_status st = QV_OK;
    if (!f->dl) st = qv_cuda_lora_rt_create(f->m, f->be, f->max_tokens, pool_bytes, &f->dl, err);
    if (st != QV_OK) return st;
    qv_cuda_lora_rt_set_host_bytes(f->dl, host_bytes);
    return qv_cuda_lora_rt_init_pool(f->dl, err);
#else
    (void)f;
    (void)pool_bytes;
    (void)host_bytes;
    (void)err;
    return QV_OK;
#endif
}

bool qv_forward_adapter_ready(qv_forward *f, const struct qv_adapter *ad) {
#ifdef QV_HAVE_CUDA
    if (!ad || !is_cuda(f)) return true;
    return f->dl && qv_cuda_lora_rt_ready(f->dl, ad);
#else
    (void)f;
    (void)ad;
    return true;
#endif
}

void qv_forward_adapter_forget(qv_forward *f, const struct qv_adapter *ad) {
#ifdef QV_HAVE_CUDA
    if (ad && is_cuda(f)) qv_cuda_lora_rt_forget(f->dl, ad);
#else
    (void)f;
    (void)ad;
#endif
}

qv_status qv_forward_warmup_graphs(qv_forward *f, int max_batch, int *n_shapes, qv_error *err) {
    *n_shapes = 0;
#ifdef QV_HAVE_CUDA
    if (!f->pad_on || !qv_backend_cuda_graphs_on(f->be)) return QV_OK;
    max_batch = QV_MIN(max_batch, f->max_tokens);
    if (max_batch < 1) return QV_OK;
    /* the largest bucket a step of max_batch rows pads to (pad_decode pads within max_tokens) */
    const int top = pad_bucket(max_batch) <= f->max_tokens ? pad_bucket(max_batch) : max_batch;
    const size_t V = (size_t)f->m->cfg.n_vocab;
    float *logits = qv_malloc((size_t)top * V * sizeof(float));
    int32_t *z = qv_calloc((size_t)top, sizeof(int32_t));
    int32_t *idx = qv_malloc((size_t)top * sizeof(int32_t));
    int32_t *out = qv_malloc((size_t)top * sizeof(int32_t));
    const qv_kv_seq **seqs = qv_malloc((size_t)top * sizeof(*seqs));
    qv_status st = QV_OK;
    if (!logits || !z || !idx || !out || !seqs)
        st = qv_errorf(err, QV_ERR_NOMEM, "forward: out of memory for the graph warm-up");
    for (int i = 0; i < top && st == QV_OK; i++)
        idx[i] = i, seqs[i] = &f->pad_kv;
    qv_cuda_stats s0, s1;
    qv_backend_cuda_stats(f->be, &s0);
    for (int B = 1; st == QV_OK && B <= top; B = pad_bucket(B + 1)) {
        /* B rows, each its own sequence at position 0 of the padding page: the shape of a
         * decode step of B sequences of the base model */
        const qv_batch b = {.n_tokens = B,
                            .tokens = z,
                            .pos = z,
                            .seq = idx,
                            .n_seqs = B,
                            .seqs = seqs,
                            .n_logits = B,
                            .logits_idx = idx};
        /* seen, then recorded: the greedy graph serves every split of at most logit_rows
         * rows; above that, a split with whole rows ends its graph after the first chunk */
        for (int rep = 0; rep < 2 && st == QV_OK; rep++)
            st = qv_forward_run_greedy(f, &b, out, err);
        for (int rep = 0; rep < 2 && st == QV_OK && B > f->logit_rows; rep++)
            st = qv_forward_run_split(f, &b, B, logits, out, err);
    }
    qv_backend_cuda_stats(f->be, &s1);
    *n_shapes = (int)(s1.captures - s0.captures);
    qv_free(logits);
    qv_free(z);
    qv_free(idx);
    qv_free(out);
    qv_free(seqs);
    return st;
#else
    (void)f;
    (void)max_batch;
    (void)err;
    return QV_OK;
#endif
}

int qv_forward_kv_reserved_pages(const qv_forward *f) {
#ifdef QV_HAVE_CUDA
    return f->pad_on ? f->pad_kv.n_pages : 0;
#else
    (void)f;
    return 0;
#endif
}

qv_status qv_forward_adapter_supported(const qv_forward *f, const struct qv_adapter *ad,
                                       qv_error *err) {
    if (!ad || !f->be->iface->download) return QV_OK; /* the CPU runs every kind */
#ifdef QV_HAVE_CUDA
    if (is_cuda(f)) return qv_cuda_adapter_supported(f->m, f->max_tokens, ad, err);
#endif
    return qv_errorf(err, QV_ERR_UNSUPPORTED, "adapters: backend %s runs no adapters",
                     f->be->iface->name);
}

qv_status qv_forward_adapter_check(qv_forward *f, const struct qv_adapter *ad, size_t *dev_bytes,
                                   size_t *pool_bytes, qv_error *err) {
    *dev_bytes = 0;
    *pool_bytes = 0;
    if (!ad || !f->be->iface->download) return QV_OK;
#ifdef QV_HAVE_CUDA
    if (is_cuda(f)) {
        qv_status st = QV_OK;
        if (!f->dl) st = qv_cuda_lora_rt_create(f->m, f->be, f->max_tokens, 0, &f->dl, err);
        return st == QV_OK ? qv_cuda_lora_rt_check(f->dl, ad, dev_bytes, pool_bytes, err) : st;
    }
#endif
    return qv_errorf(err, QV_ERR_UNSUPPORTED, "adapters: backend %s runs no adapters",
                     f->be->iface->name);
}

void qv_forward_adapter_stats_get(const qv_forward *f, qv_forward_adapter_stats *out) {
    memset(out, 0, sizeof(*out));
    out->prefetches = f->pf_issued;
    out->prefetch_uploads = f->pf_uploads;
    out->prefetch_failures = f->pf_failures;
#ifdef QV_HAVE_CUDA
    if (f->dl) {
        qv_cuda_pool_stats ps;
        qv_cuda_lora_rt_stats(f->dl, &ps);
        out->loads = ps.loads;
        out->hits = ps.hits;
        out->bytes_copied = ps.bytes_copied;
        out->evictions = ps.pages.evictions;
        out->resident = ps.pages.n_entries;
        out->pool_bytes = (size_t)ps.pages.n_pages * ps.page_bytes;
        out->used_bytes = (size_t)ps.pages.used_pages * ps.page_bytes;
        out->host_bytes = (size_t)ps.host_pages.n_pages * ps.page_bytes;
        out->host_used_bytes = (size_t)ps.host_pages.used_pages * ps.page_bytes;
        out->host_resident = ps.host_pages.n_entries;
        out->host_hits = ps.host_hits;
        out->host_fills_async = ps.host_fills_async;
        out->host_fills_sync = ps.host_fills_sync;
        out->host_evictions = ps.host_pages.evictions;
    }
#endif
}

/* Validates the batch and fills the slot arrays and page-table list. */
static qv_status validate(qv_forward *f, const qv_batch *b, qv_error *err) {
    const qv_model_config *c = &f->m->cfg;
    const int n = b->n_tokens;
    const int page_size = f->kv->pool.page_size;

    if (n <= 0 || n > f->max_tokens)
        return qv_errorf(err, QV_ERR_INVALID, "batch of %d tokens (limit %d)", n, f->max_tokens);
    if (b->n_seqs <= 0 || b->n_seqs > f->max_tokens)
        return qv_errorf(err, QV_ERR_INVALID, "batch with %d sequences", b->n_seqs);
    for (int i = 0; i < n; i++) {
        int s = b->seq[i];
        /* negative ids (virtual tokens) are checked by qv_adapter_rt_begin */
        if ((b->tokens[i] < 0 && b->n_segs == 0) || b->tokens[i] >= c->n_vocab)
            return qv_errorf(err, QV_ERR_INVALID, "token id %d out of range [0, %d)", b->tokens[i],
                             c->n_vocab);
        if (s < 0 || s >= b->n_seqs)
            return qv_errorf(err, QV_ERR_INVALID, "token %d names sequence %d", i, s);
        int p = b->pos[i];
        if (p < 0 || p / page_size >= b->seqs[s]->n_pages)
            return qv_errorf(err, QV_ERR_INVALID, "position %d not covered by the page table", p);
        f->slot_page[i] = b->seqs[s]->pages[p / page_size];
        f->slot_off[i] = p % page_size;
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logits_idx[i] < 0 || b->logits_idx[i] >= n)
            return qv_errorf(err, QV_ERR_INVALID, "logits index %d out of range", b->logits_idx[i]);
    for (int s = 0; s < b->n_seqs; s++)
        f->tables[s] = b->seqs[s]->pages;
#ifdef QV_HAVE_CUDA
    if (is_cuda(f)) {
        if (b->n_segs != 0 && !f->dl) {
            qv_status st = qv_cuda_lora_rt_create(f->m, f->be, f->max_tokens, 0, &f->dl, err);
            if (st != QV_OK) return st;
        }
        qv_status st = f->dl ? qv_cuda_lora_rt_begin(f->dl, b, err) : QV_OK;
        /* this step's adapters are held now: prefetches cannot evict them */
        if (st == QV_OK) issue_prefetches(f);
        return st;
    }
#endif
    if (b->n_segs != 0) { /* adapters: CPU (other device backends are refused) */
        if (!f->ad) {
            qv_status st = qv_adapter_rt_create(f->m, f->be, f->max_tokens, &f->ad, err);
            if (st != QV_OK) return st;
        }
        return qv_adapter_rt_begin(f->ad, b, err);
    }
    if (f->ad) qv_adapter_rt_begin(f->ad, b, err); /* marks the runtime inactive */
    return QV_OK;
}

/* Graph key of a device step: everything that shapes its ops (0 is reserved for "eager"). */
static uint64_t step_key(const qv_forward *f, const qv_batch *b, int greedy) {
    uint64_t lora = 0;
#ifdef QV_HAVE_CUDA
    lora = qv_cuda_lora_rt_shape(f->dl);
#endif
    int max_page = 0;
    for (int i = 0; i < b->n_tokens; i++)
        max_page = QV_MAX(max_page, b->pos[i] / f->kv->pool.page_size);
    /* the CUDA backend's page-table stride grows in powers of two: so does the key */
    int bucket = 8;
    while (bucket < max_page + 1)
        bucket *= 2;
    max_page = bucket;
    uint64_t k = 1469598103934665603ull;
    const uint64_t v[6] = {(uint64_t)b->n_tokens, (uint64_t)b->n_seqs, (uint64_t)b->n_logits,
                           (uint64_t)max_page,    (uint64_t)greedy,    lora};
    for (int i = 0; i < 6; i++)
        k = (k ^ v[i]) * 1099511628211ull;
    return k ? k : 1;
}

/* Runs every layer over a validated batch; the final hidden states are left in f->x. */
static void run_layers(qv_forward *f, const qv_batch *b) {
    const qv_model *m = f->m;
    const qv_model_config *c = &m->cfg;
    const struct qv_backend_i *be = f->be->iface;
    qv_backend *B = f->be;
    const int n = b->n_tokens;

    const qv_attn_batch ab = {
        .n_tokens = n,
        .tok_seq = b->seq,
        .tok_pos = b->pos,
        .n_seqs = b->n_seqs,
        .page_table = f->tables,
        .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads,
        .head_dim = c->head_dim,
        .window = c->sliding_window,
        .scale = 1.0f / sqrtf((float)c->head_dim),
    };
    const size_t dim = (size_t)c->dim;

    qv_adapter_rt *ad = qv_adapter_rt_active(f->ad) ? f->ad : NULL;
#ifdef QV_HAVE_CUDA
    struct qv_cuda_lora_rt *dl = qv_cuda_lora_rt_active(f->dl) ? f->dl : NULL;
#define DEV_LORA(layer, ps, n_p, x_in, ys)                                                         \
    do {                                                                                           \
        if (dl) qv_cuda_lora_rt_projs(dl, (layer), (ps), (n_p), (x_in), (ys));                     \
    } while (0)
#define DEV_SCALE_IN(layer, p, x)                                                                  \
    do {                                                                                           \
        if (dl) qv_cuda_lora_rt_scale_input(dl, (layer), (p), (x));                                \
    } while (0)
    const int32_t *embed_ids = qv_cuda_lora_rt_ids(dl, b->tokens); /* virtual tokens: 0 */
    /* a projection whose output an adapter scales (IA3, DoRA) cannot add into the residual
     * stream directly */
    /* and neither can a sub-block output that a bottleneck unit rewrites */
    const bool sep_o =
        qv_cuda_lora_rt_scales_output(dl, QV_PROJ_O) || qv_cuda_lora_rt_has_block_out(dl, 0);
    const bool sep_down =
        qv_cuda_lora_rt_scales_output(dl, QV_PROJ_DOWN) || qv_cuda_lora_rt_has_block_out(dl, 1);
#define DEV_ATTN(layer)                                                                            \
    do {                                                                                           \
        if (dl) qv_cuda_lora_rt_attn(dl, (layer), f->q, f->att, f->x);                             \
    } while (0)
    /* gate and up are free at both hooks (the down projection has read the SwiGLU output) */
#define DEV_BLOCK_OUT(layer, where)                                                                \
    do {                                                                                           \
        if (dl)                                                                                    \
            qv_cuda_lora_rt_block_out(dl, (layer), (where), f->x, f->xb2, f->gate, f->up,          \
                                      c->n_ff);                                                    \
    } while (0)
#else
    const bool sep_o = false, sep_down = false;
    const int32_t *embed_ids = b->tokens;
#define DEV_LORA(layer, ps, n_p, x_in, ys) ((void)(ps), (void)(ys))
#define DEV_SCALE_IN(layer, p, x) ((void)0)
#define DEV_ATTN(layer) ((void)0)
#define DEV_BLOCK_OUT(layer, where) ((void)0)
#endif
    static const enum qv_proj p_qkv[3] = {QV_PROJ_Q, QV_PROJ_K, QV_PROJ_V};
    static const enum qv_proj p_o[1] = {QV_PROJ_O};
    static const enum qv_proj p_gu[2] = {QV_PROJ_GATE, QV_PROJ_UP};
    static const enum qv_proj p_down[1] = {QV_PROJ_DOWN};
    if (ad) {
        qv_adapter_rt_embed(ad, f->x);
    } else {
        be->get_rows(B, &m->tok_embd, embed_ids, n, f->x);
#ifdef QV_HAVE_CUDA
        if (dl) qv_cuda_lora_rt_embed(dl, f->x); /* prompt embeddings of virtual tokens */
#endif
    }
    for (int l = 0; l < c->n_layers; l++) {
        const qv_layer_weights *w = &m->layers[l];
        be->rmsnorm(B, f->x, w->attn_norm.data, n, c->dim, c->norm_eps, f->xb);
        be->matmul(B, &w->wq, f->xb, n, f->q, bias_of(&w->bq));
        be->matmul(B, &w->wk, f->xb, n, f->k, bias_of(&w->bk));
        be->matmul(B, &w->wv, f->xb, n, f->v, bias_of(&w->bv));
        if (ad) {
            const enum qv_proj ps[3] = {QV_PROJ_Q, QV_PROJ_K, QV_PROJ_V};
            float *const ys[3] = {f->q, f->k, f->v};
            const float *const bs[3] = {bias_of(&w->bq), bias_of(&w->bk), bias_of(&w->bv)};
            qv_adapter_rt_projs(ad, l, ps, 3, f->xb, ys, bs);
        }
        {
            float *const ys[3] = {f->q, f->k, f->v};
            DEV_LORA(l, p_qkv, 3, f->xb, ys);
        }
        be->rope(B, f->q, n, c->n_heads, c->head_dim, b->pos, m->rope_inv_freq);
        be->rope(B, f->k, n, c->n_kv_heads, c->head_dim, b->pos, m->rope_inv_freq);
        be->kv_store(B, &f->kv->pool, l, f->k, f->v, n, f->slot_page, f->slot_off);
        be->attention(B, &f->kv->pool, l, &ab, f->q, f->att);
        if (ad) qv_adapter_rt_attn(ad, l, f->q, f->att);
        DEV_ATTN(l);
        if (be->matmul_acc && !ad && !sep_o) {
            be->matmul_acc(B, &w->wo, f->att, n, f->x, bias_of(&w->bo));
            float *const ys[1] = {f->x}; /* the LoRA delta adds into the residual stream too */
            DEV_LORA(l, p_o, 1, f->att, ys);
        } else {
            be->matmul(B, &w->wo, f->att, n, f->xb2, bias_of(&w->bo));
            if (ad) {
                qv_adapter_rt_proj(ad, l, QV_PROJ_O, f->att, f->xb2, bias_of(&w->bo));
                qv_adapter_rt_block_out(ad, l, 0, f->x, f->xb2);
            }
            float *const ys[1] = {f->xb2};
            DEV_LORA(l, p_o, 1, f->att, ys);
            DEV_BLOCK_OUT(l, 0);
            be->add(B, f->x, f->xb2, (size_t)n * dim);
        }

        be->rmsnorm(B, f->x, w->ffn_norm.data, n, c->dim, c->norm_eps, f->xb);
        be->matmul(B, &w->w_gate, f->xb, n, f->gate, bias_of(&w->b_gate));
        be->matmul(B, &w->w_up, f->xb, n, f->up, bias_of(&w->b_up));
        if (ad) {
            const enum qv_proj ps[2] = {QV_PROJ_GATE, QV_PROJ_UP};
            float *const ys[2] = {f->gate, f->up};
            const float *const bs[2] = {bias_of(&w->b_gate), bias_of(&w->b_up)};
            qv_adapter_rt_projs(ad, l, ps, 2, f->xb, ys, bs);
        }
        {
            float *const ys[2] = {f->gate, f->up};
            DEV_LORA(l, p_gu, 2, f->xb, ys);
        }
        be->swiglu(B, f->gate, f->up, f->gate, (size_t)n * (size_t)c->n_ff);
        DEV_SCALE_IN(l, QV_PROJ_DOWN, f->gate);
        if (be->matmul_acc && !ad && !sep_down) {
            be->matmul_acc(B, &w->w_down, f->gate, n, f->x, bias_of(&w->b_down));
            float *const ys[1] = {f->x};
            DEV_LORA(l, p_down, 1, f->gate, ys);
        } else {
            if (ad) qv_adapter_rt_proj_input(ad, l, QV_PROJ_DOWN, f->gate);
            be->matmul(B, &w->w_down, f->gate, n, f->xb2, bias_of(&w->b_down));
            if (ad) {
                qv_adapter_rt_proj(ad, l, QV_PROJ_DOWN, f->gate, f->xb2, bias_of(&w->b_down));
                qv_adapter_rt_block_out(ad, l, 1, f->x, f->xb2);
            }
            float *const ys[1] = {f->xb2};
            DEV_LORA(l, p_down, 1, f->gate, ys);
            DEV_BLOCK_OUT(l, 1);
            be->add(B, f->x, f->xb2, (size_t)n * dim);
        }
    }
}

#undef DEV_LORA
#undef DEV_SCALE_IN
#undef DEV_ATTN
#undef DEV_BLOCK_OUT

/* Device path: logits of rows [r0, r0 + nr) of logits_idx into f->logits_dev. */
static void device_logits(qv_forward *f, const qv_batch *b, int r0, int nr) {
    const qv_model *m = f->m;
    const struct qv_backend_i *be = f->be->iface;
    be->gather_rows(f->be, f->x, b->logits_idx + r0, nr, m->cfg.dim, f->xb);
    be->rmsnorm(f->be, f->xb, m->out_norm.data, nr, m->cfg.dim, m->cfg.norm_eps, f->xb);
    be->matmul(f->be, &m->lm_head, f->xb, nr, f->logits_dev, NULL);
}

qv_status qv_forward_run(qv_forward *f, const qv_batch *b, float *logits, qv_error *err) {
    const qv_model *m = f->m;
    const qv_model_config *c = &m->cfg;
    const struct qv_backend_i *be = f->be->iface;
    qv_backend *B = f->be;
    const size_t dim = (size_t)c->dim;
    const int n_out = b->n_logits; /* rows the caller wants (a padded batch has more) */
#ifdef QV_HAVE_CUDA
    b = pad_decode(f, b);
#endif
    qv_status st = validate(f, b, err);
    f->n_pf = 0; /* issued by validate, or dropped */
    if (st != QV_OK) return st;
    if (be->download) {
        /* Device: the step (and its first logits chunk) may be a recorded graph; a replay that
         * does not match reruns eagerly (key 0). Padding rows are computed, not downloaded. */
        const size_t V = (size_t)c->n_vocab;
        for (int attempt = 0; attempt < 2; attempt++) {
            if (be->step_begin) be->step_begin(B, attempt ? 0 : step_key(f, b, 0));
            run_layers(f, b);
            for (int r0 = 0; r0 < n_out; r0 += f->logit_rows) {
                int nr = QV_MIN(f->logit_rows, b->n_logits - r0);
                device_logits(f, b, r0, nr);
                const size_t want = (size_t)QV_MIN(nr, n_out - r0);
                st = be->download(B, logits + (size_t)r0 * V, f->logits_dev,
                                  want * V * sizeof(float), err);
                if (st != QV_OK) break;
            }
            if (n_out == 0) st = be->download(B, NULL, NULL, 0, err);
            if (st != QV_ERR_BUSY) return st;
        }
        return st;
    }
    run_layers(f, b);
    if (b->n_logits == 0) return QV_OK;
    /* Gather the rows that want logits (xb is free now), normalise and project. */
    for (int i = 0; i < b->n_logits; i++) {
        const float *src = f->x + (size_t)b->logits_idx[i] * dim;
        float *dst = f->xb + (size_t)i * dim;
        for (size_t j = 0; j < dim; j++)
            dst[j] = src[j];
    }
    be->rmsnorm(B, f->xb, m->out_norm.data, b->n_logits, c->dim, c->norm_eps, f->xb);
    be->matmul(B, &m->lm_head, f->xb, b->n_logits, logits, NULL);
    if (qv_adapter_rt_active(f->ad)) qv_adapter_rt_logits(f->ad, f->xb, logits);
    return QV_OK;
}

bool qv_forward_device_logits(const qv_forward *f) {
    return f->be->iface->download && f->be->iface->argmax;
}

bool qv_forward_device_sampling(const qv_forward *f) {
    return qv_forward_device_logits(f) && f->be->iface->sample;
}

/* Penalty entries a step's staging holds: a power of two, at least QV_FORWARD_PEN_MIN, so
 * that graphs recorded with one size serve the steps of similar contexts. */
#define QV_FORWARD_PEN_MIN 1024

qv_status qv_forward_run_sample(qv_forward *f, const qv_batch *b, int n_full, float *logits,
                                const qv_sample_row *rows, const qv_token_count *pen, int n_pen,
                                int32_t *tokens, qv_logprobs *lp, qv_error *err) {
    const struct qv_backend_i *be = f->be->iface;
    if (!qv_forward_device_logits(f) || (rows && !be->sample)) {
        f->n_pf = 0;
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "forward: %s on the device needs a device backend (%s)",
                         rows ? "sampling" : "greedy", be->name);
    }
    const int n_out = b->n_logits; /* rows the caller wants (a padded batch has more) */
    if (n_full < 0 || n_full > n_out || n_pen < 0 || n_pen > QV_FORWARD_MAX_PEN ||
        (n_pen > 0 && !pen)) {
        f->n_pf = 0;
        return qv_errorf(err, QV_ERR_INVALID, "forward: %d full logits rows of %d, %d penalty ids",
                         n_full, n_out, n_pen);
    }
    /* every wanted row's parameters: rows [n_full, n_out) the caller's, the rest argmax */
    int pen_cap = 0;
    bool want_lp = false;
    if (be->sample) {
        for (int i = n_full; rows && i < n_out; i++) {
            const qv_sample_row *r = &rows[i - n_full];
            if (r->pen_n < 0 || r->pen_off < 0 || r->pen_n > n_pen - r->pen_off ||
                r->n_logprobs < 0 || r->n_logprobs > QV_SAMPLER_MAX_LOGPROBS) {
                f->n_pf = 0;
                return qv_errorf(err, QV_ERR_INVALID,
                                 "forward: row %d's penalty ids [%d, +%d) outside %d, or %d "
                                 "logprobs",
                                 i, r->pen_off, r->pen_n, n_pen, r->n_logprobs);
            }
            want_lp |= r->n_logprobs > 0;
        }
        if (n_pen > 0) {
            pen_cap = QV_FORWARD_PEN_MIN;
            while (pen_cap < n_pen)
                pen_cap *= 2;
            if (pen_cap > f->pen_cap) {
                qv_token_count *np = qv_calloc((size_t)pen_cap, sizeof(*np));
                if (!np) {
                    f->n_pf = 0;
                    return qv_errorf(err, QV_ERR_NOMEM, "forward: no memory for %d penalty ids",
                                     pen_cap);
                }
                qv_free(f->pen);
                f->pen = np;
                f->pen_cap = pen_cap;
            }
            memcpy(f->pen, pen, (size_t)n_pen * sizeof(*pen));
        }
    }
#ifdef QV_HAVE_CUDA
    b = pad_decode(f, b);
#endif
    qv_status st = validate(f, b, err);
    f->n_pf = 0; /* issued by validate, or dropped */
    if (st != QV_OK) return st;
    if (be->sample) {
        for (int i = 0; i < b->n_logits; i++)
            f->srows[i] = rows && i >= n_full && i < n_out ? rows[i - n_full]
                                                           : (qv_sample_row){.temperature = 0.0f};
    }
    const size_t V = (size_t)f->m->cfg.n_vocab;
    int pen_log = 0;
    while (pen_cap >> pen_log > 1)
        pen_log++;
    for (int attempt = 0; attempt < 2; attempt++) {
        /* Host copies come after a graph ends (download), so the recorded ops are the same for
         * every n_full while the rows fit one chunk: the greedy step's graphs serve them all.
         * With more chunks, whole rows end the graph after the first chunk (its own key). The
         * penalty staging size is part of the key too. */
        const int multi = n_full > 0 && b->n_logits > f->logit_rows;
        if (be->step_begin)
            be->step_begin(f->be, attempt ? 0 : step_key(f, b, (1 + multi) | pen_log << 4));
        run_layers(f, b);
        st = QV_OK;
        for (int r0 = 0; r0 < b->n_logits && st == QV_OK; r0 += f->logit_rows) {
            const int nr = QV_MIN(f->logit_rows, b->n_logits - r0);
            device_logits(f, b, r0, nr);
            if (be->sample)
                be->sample(f->be, f->logits_dev, nr, f->m->cfg.n_vocab, f->srows + r0,
                           pen_cap ? f->pen : NULL, pen_cap, f->pen_raw, f->argmax_dev + r0,
                           f->lp_dev + r0);
            else
                be->argmax(f->be, f->logits_dev, nr, f->m->cfg.n_vocab, f->argmax_dev + r0);
            const int nf = QV_MIN(nr, n_full - r0);
            if (nf > 0)
                st = be->download(f->be, logits + (size_t)r0 * V, f->logits_dev,
                                  (size_t)nf * V * sizeof(float), err);
        }
        if (st == QV_OK && want_lp && lp) { /* the tokens come with their logprobs */
            st = be->download(f->be, lp, f->lp_dev + n_full,
                              (size_t)(n_out - n_full) * sizeof(qv_logprobs), err);
            for (int i = 0; st == QV_OK && i < n_out - n_full; i++)
                tokens[i] = lp[i].token;
        } else if (st == QV_OK && (n_out > n_full || n_full == 0)) {
            st = be->download(f->be, tokens, f->argmax_dev + n_full,
                              (size_t)(n_out - n_full) * sizeof(int32_t), err);
        }
        if (st != QV_ERR_BUSY) return st;
    }
    return st;
}

qv_status qv_forward_run_split(qv_forward *f, const qv_batch *b, int n_full, float *logits,
                               int32_t *tokens, qv_error *err) {
    return qv_forward_run_sample(f, b, n_full, logits, NULL, NULL, 0, tokens, NULL, err);
}

qv_status qv_forward_run_greedy(qv_forward *f, const qv_batch *b, int32_t *tokens, qv_error *err) {
    return qv_forward_run_split(f, b, 0, NULL, tokens, err);
}
