/*
 * kv_cache.c - page pool bookkeeping for the paged KV cache (see kv_cache.h).
 *
 * The free list is a LIFO stack so a page freed by a finished sequence is the first one reused:
 * tests rely on this to check that reused pages never leak stale K/V into a new sequence.
 */
#include "kv_cache.h"

#include <string.h>

size_t qv_kv_bytes_per_token(const qv_model_config *cfg) {
    return (size_t)cfg->n_layers * 2 * (size_t)cfg->n_kv_heads * (size_t)cfg->head_dim *
           sizeof(float);
}

static int elem_bytes(qv_backend *be) {
    return be->iface->kv_elem_bytes ? be->iface->kv_elem_bytes(be) : (int)sizeof(float);
}

size_t qv_kv_cache_bytes_per_token(qv_backend *be, const qv_model_config *cfg) {
    return qv_kv_bytes_per_token(cfg) / sizeof(float) * (size_t)elem_bytes(be);
}

qv_status qv_kv_cache_create(qv_backend *be, const qv_model_config *cfg, int n_pages, int page_size,
                             qv_kv_cache **out, qv_error *err) {
    *out = NULL;
    if (n_pages <= 0 || page_size <= 0)
        return qv_errorf(err, QV_ERR_INVALID, "kv cache: need at least one page (got %d x %d)",
                         n_pages, page_size);
    qv_kv_cache *kv = qv_calloc(1, sizeof(*kv));
    if (!kv) return qv_errorf(err, QV_ERR_NOMEM, "kv cache: out of memory");
    kv->be = be;
    qv_kv_pool *p = &kv->pool;
    p->n_layers = cfg->n_layers;
    p->n_pages = n_pages;
    p->page_size = page_size;
    p->n_kv_heads = cfg->n_kv_heads;
    p->head_dim = cfg->head_dim;
    p->elem_bytes = elem_bytes(be);
    size_t n_bytes = (size_t)p->n_layers * (size_t)n_pages * (size_t)page_size *
                     (size_t)p->n_kv_heads * (size_t)p->head_dim * (size_t)p->elem_bytes;
    p->k = be->iface->alloc(be, n_bytes);
    p->v = be->iface->alloc(be, n_bytes);
    kv->free_list = qv_malloc((size_t)n_pages * sizeof(int32_t));
    kv->refcnt = qv_calloc((size_t)n_pages, sizeof(int32_t));
    if (!p->k || !p->v || !kv->free_list || !kv->refcnt) {
        qv_kv_cache_destroy(kv);
        return qv_errorf(err, QV_ERR_NOMEM, "kv cache: cannot allocate %zu bytes for %d pages",
                         2 * n_bytes, n_pages);
    }
    /* Page 0 on top of the stack: allocation order 0, 1, 2, ... for a fresh cache. */
    for (int i = 0; i < n_pages; i++)
        kv->free_list[i] = n_pages - 1 - i;
    kv->n_free = n_pages;
    *out = kv;
    return QV_OK;
}

void qv_kv_cache_destroy(qv_kv_cache *kv) {
    if (!kv) return;
    if (kv->be) {
        if (kv->pool.k) kv->be->iface->free(kv->be, kv->pool.k);
        if (kv->pool.v) kv->be->iface->free(kv->be, kv->pool.v);
    }
    qv_free(kv->free_list);
    qv_free(kv->refcnt);
    qv_free(kv);
}

int qv_kv_seq_pages_needed(const qv_kv_cache *kv, const qv_kv_seq *seq, int n_tokens) {
    int need = (n_tokens + kv->pool.page_size - 1) / kv->pool.page_size;
    return need > seq->n_pages ? need - seq->n_pages : 0;
}

qv_status qv_kv_seq_reserve(qv_kv_cache *kv, qv_kv_seq *seq, int n_tokens) {
    int extra = qv_kv_seq_pages_needed(kv, seq, n_tokens);
    if (extra == 0) return QV_OK;
    if (extra > kv->n_free) return QV_ERR_BUSY;
    int want = seq->n_pages + extra;
    if (want > seq->cap) {
        int cap = seq->cap ? seq->cap : 4;
        while (cap < want)
            cap *= 2;
        int32_t *p = qv_realloc(seq->pages, (size_t)cap * sizeof(int32_t));
        if (!p) return QV_ERR_NOMEM;
        seq->pages = p;
        seq->cap = cap;
    }
    for (int i = 0; i < extra; i++) {
        int32_t page = kv->free_list[--kv->n_free];
        QV_ASSERT(kv->refcnt[page] == 0);
        kv->refcnt[page] = 1;
        seq->pages[seq->n_pages++] = page;
    }
    return QV_OK;
}

void qv_kv_page_ref(qv_kv_cache *kv, int32_t page) {
    QV_ASSERT(page >= 0 && page < kv->pool.n_pages && kv->refcnt[page] > 0);
    kv->refcnt[page]++;
}

void qv_kv_page_unref(qv_kv_cache *kv, int32_t page) {
    QV_ASSERT(page >= 0 && page < kv->pool.n_pages && kv->refcnt[page] > 0);
    if (--kv->refcnt[page] == 0) kv->free_list[kv->n_free++] = page;
}

void qv_kv_seq_release(qv_kv_cache *kv, qv_kv_seq *seq) {
    /* Release in reverse so the pages come back in the order they were taken. */
    for (int i = seq->n_pages - 1; i >= 0; i--)
        qv_kv_page_unref(kv, seq->pages[i]);
    qv_free(seq->pages);
    memset(seq, 0, sizeof(*seq));
}
