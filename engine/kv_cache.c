/*
 * kv_cache.c - page pool bookkeeping for the paged KV cache (see kv_cache.h).
 *
 * The free list is a LIFO stack so a page freed by a finished sequence is the first one reused:
 * tests rely on this to check that reused pages never leak stale K/V into a new sequence.
 *
 * Prefix reuse: a registered page carries one reference of the cache's own, so it never reaches
 * the free list while registered; at refcount 1 it sits in the LRU list (evictable). Hash chains
 * find a key's page; the key is compared in full.
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

/* Frees the prefix-reuse arrays (NULL after). */
static void reuse_free(qv_kv_cache *kv) {
#define QV_FREE_NULL(p) (qv_free(p), (p) = NULL)
    QV_FREE_NULL(kv->registered);
    QV_FREE_NULL(kv->gen);
    QV_FREE_NULL(kv->parent);
    QV_FREE_NULL(kv->parent_gen);
    QV_FREE_NULL(kv->ns);
    QV_FREE_NULL(kv->toks);
    QV_FREE_NULL(kv->lru_prev);
    QV_FREE_NULL(kv->lru_next);
    QV_FREE_NULL(kv->bucket);
    QV_FREE_NULL(kv->chain);
#undef QV_FREE_NULL
}

void qv_kv_cache_destroy(qv_kv_cache *kv) {
    if (!kv) return;
    if (kv->be) {
        if (kv->pool.k) kv->be->iface->free(kv->be, kv->pool.k);
        if (kv->pool.v) kv->be->iface->free(kv->be, kv->pool.v);
    }
    qv_free(kv->free_list);
    qv_free(kv->refcnt);
    reuse_free(kv);
    qv_free(kv);
}

int qv_kv_seq_pages_needed(const qv_kv_cache *kv, const qv_kv_seq *seq, int n_tokens) {
    int need = (n_tokens + kv->pool.page_size - 1) / kv->pool.page_size;
    return need > seq->n_pages ? need - seq->n_pages : 0;
}

int qv_kv_available(const qv_kv_cache *kv) { return kv->n_free + kv->n_evictable; }

/* ---- prefix reuse ---- */

static void lru_remove(qv_kv_cache *kv, int32_t page) {
    int32_t p = kv->lru_prev[page], n = kv->lru_next[page];
    if (p >= 0)
        kv->lru_next[p] = n;
    else
        kv->lru_head = n;
    if (n >= 0)
        kv->lru_prev[n] = p;
    else
        kv->lru_tail = p;
    kv->lru_prev[page] = kv->lru_next[page] = -1;
    kv->n_evictable--;
}

static void lru_push(qv_kv_cache *kv, int32_t page) { /* most recent at the tail */
    kv->lru_prev[page] = kv->lru_tail;
    kv->lru_next[page] = -1;
    if (kv->lru_tail >= 0)
        kv->lru_next[kv->lru_tail] = page;
    else
        kv->lru_head = page;
    kv->lru_tail = page;
    kv->n_evictable++;
}

static uint64_t mix64(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}

static uint32_t key_bucket(const qv_kv_cache *kv, int32_t parent, uint32_t pgen, uint64_t ns,
                           const int32_t *toks) {
    uint64_t h = mix64(mix64(mix64(0, (uint64_t)(uint32_t)parent), pgen), ns);
    for (int i = 0; i < kv->pool.page_size; i++)
        h = mix64(h, (uint64_t)(uint32_t)toks[i]);
    return (uint32_t)h & kv->bucket_mask;
}

static int32_t key_find(const qv_kv_cache *kv, int32_t parent, uint32_t pgen, uint64_t ns,
                        const int32_t *toks) {
    const size_t ps = (size_t)kv->pool.page_size;
    for (int32_t p = kv->bucket[key_bucket(kv, parent, pgen, ns, toks)]; p >= 0; p = kv->chain[p])
        if (kv->parent[p] == parent && kv->parent_gen[p] == pgen && kv->ns[p] == ns &&
            memcmp(kv->toks + (size_t)p * ps, toks, ps * sizeof(int32_t)) == 0)
            return p;
    return -1;
}

/* Unregisters an evictable page (refcount 1, the cache's) and frees it for reuse. */
static void evict(qv_kv_cache *kv, int32_t page) {
    const size_t ps = (size_t)kv->pool.page_size;
    uint32_t b = key_bucket(kv, kv->parent[page], kv->parent_gen[page], kv->ns[page],
                            kv->toks + (size_t)page * ps);
    int32_t *link = &kv->bucket[b];
    while (*link != page) {
        QV_ASSERT(*link >= 0);
        link = &kv->chain[*link];
    }
    *link = kv->chain[page];
    lru_remove(kv, page);
    kv->registered[page] = 0;
    kv->gen[page]++;
    kv->n_registered--;
    kv->n_evicted++;
    QV_ASSERT(kv->refcnt[page] == 1);
    kv->refcnt[page] = 0;
    kv->free_list[kv->n_free++] = page;
}

qv_status qv_kv_reuse_enable(qv_kv_cache *kv, qv_error *err) {
    if (kv->reuse) return QV_OK;
    const size_t n = (size_t)kv->pool.n_pages;
    size_t nb = 16;
    while (nb < 2 * n)
        nb *= 2;
    kv->registered = qv_calloc(n, 1);
    kv->gen = qv_calloc(n, sizeof(uint32_t));
    kv->parent = qv_malloc(n * sizeof(int32_t));
    kv->parent_gen = qv_malloc(n * sizeof(uint32_t));
    kv->ns = qv_malloc(n * sizeof(uint64_t));
    kv->toks = qv_malloc(n * (size_t)kv->pool.page_size * sizeof(int32_t));
    kv->lru_prev = qv_malloc(n * sizeof(int32_t));
    kv->lru_next = qv_malloc(n * sizeof(int32_t));
    kv->bucket = qv_malloc(nb * sizeof(int32_t));
    kv->chain = qv_malloc(n * sizeof(int32_t));
    if (!kv->registered || !kv->gen || !kv->parent || !kv->parent_gen || !kv->ns || !kv->toks ||
        !kv->lru_prev || !kv->lru_next || !kv->bucket || !kv->chain) {
        reuse_free(kv); /* a later call starts afresh */
        return qv_errorf(err, QV_ERR_NOMEM, "kv cache: no memory for prefix reuse");
    }
    for (size_t i = 0; i < nb; i++)
        kv->bucket[i] = -1;
    for (size_t i = 0; i < n; i++)
        kv->lru_prev[i] = kv->lru_next[i] = kv->chain[i] = -1;
    kv->lru_head = kv->lru_tail = -1;
    kv->bucket_mask = (uint32_t)(nb - 1);
    kv->reuse = true;
    return QV_OK;
}

int qv_kv_reuse_match(const qv_kv_cache *kv, uint64_t ns, const int32_t *tokens, int n_tokens,
                      int max_pages, int32_t *pages, int *n_evictable) {
    int k = 0, ev = 0;
    const int ps = kv->pool.page_size;
    if (kv->reuse) {
        int32_t parent = -1;
        uint32_t pgen = 0;
        while (k < max_pages && (k + 1) * ps <= n_tokens) {
            int32_t p = key_find(kv, parent, pgen, ns, tokens + (size_t)k * ps);
            if (p < 0) break;
            pages[k++] = p;
            ev += kv->refcnt[p] == 1;
            parent = p;
            pgen = kv->gen[p];
        }
    }
    if (n_evictable) *n_evictable = ev;
    return k;
}

static qv_status grow_table(qv_kv_seq *seq, int want) {
    if (want <= seq->cap) return QV_OK;
    int cap = seq->cap ? seq->cap : 4;
    while (cap < want)
        cap *= 2;
    int32_t *p = qv_realloc(seq->pages, (size_t)cap * sizeof(int32_t));
    if (!p) return QV_ERR_NOMEM;
    seq->pages = p;
    seq->cap = cap;
    return QV_OK;
}

qv_status qv_kv_seq_adopt(qv_kv_cache *kv, qv_kv_seq *seq, const int32_t *pages, int n) {
    QV_ASSERT(seq->n_pages == 0);
    if (n == 0) return QV_OK;
    if (grow_table(seq, n) != QV_OK) return QV_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        qv_kv_page_ref(kv, pages[i]);
        seq->pages[seq->n_pages++] = pages[i];
    }
    return QV_OK;
}

void qv_kv_reuse_register(qv_kv_cache *kv, const qv_kv_seq *seq, uint64_t ns, const int32_t *tokens,
                          int n_done, int *n_reg) {
    if (!kv->reuse) return;
    const int ps = kv->pool.page_size;
    while (*n_reg >= 0 && (*n_reg + 1) * ps <= n_done && *n_reg < seq->n_pages) {
        const int i = *n_reg;
        const int32_t page = seq->pages[i];
        if (kv->registered[page]) { /* adopted */
            (*n_reg)++;
            continue;
        }
        const int32_t parent = i > 0 ? seq->pages[i - 1] : -1;
        if (parent >= 0 && !kv->registered[parent]) {
            *n_reg = -1;
            break;
        }
        const uint32_t pgen = parent >= 0 ? kv->gen[parent] : 0;
        const int32_t *t = tokens + (size_t)i * ps;
        if (key_find(kv, parent, pgen, ns, t) >= 0) { /* another sequence's copy is registered */
            *n_reg = -1;
            break;
        }
        kv->registered[page] = 1;
        kv->parent[page] = parent;
        kv->parent_gen[page] = pgen;
        kv->ns[page] = ns;
        memcpy(kv->toks + (size_t)page * ps, t, (size_t)ps * sizeof(int32_t));
        uint32_t b = key_bucket(kv, parent, pgen, ns, t);
        kv->chain[page] = kv->bucket[b];
        kv->bucket[b] = page;
        kv->refcnt[page]++; /* the cache's reference */
        kv->n_registered++;
        (*n_reg)++;
    }
}

int qv_kv_reuse_clear(qv_kv_cache *kv) {
    int n = 0;
    while (kv->reuse && kv->lru_head >= 0) {
        evict(kv, kv->lru_head);
        kv->n_evicted--; /* not an eviction for room */
        n++;
    }
    return n;
}

/* ---- pages of sequences ---- */

qv_status qv_kv_seq_reserve(qv_kv_cache *kv, qv_kv_seq *seq, int n_tokens) {
    int extra = qv_kv_seq_pages_needed(kv, seq, n_tokens);
    if (extra == 0) return QV_OK;
    if (extra > qv_kv_available(kv)) return QV_ERR_BUSY;
    if (grow_table(seq, seq->n_pages + extra) != QV_OK) return QV_ERR_NOMEM;
    for (int i = 0; i < extra; i++) {
        if (kv->n_free == 0) evict(kv, kv->lru_head); /* least recently released first */
        int32_t page = kv->free_list[--kv->n_free];
        QV_ASSERT(kv->refcnt[page] == 0);
        kv->refcnt[page] = 1;
        seq->pages[seq->n_pages++] = page;
    }
    return QV_OK;
}

void qv_kv_page_ref(qv_kv_cache *kv, int32_t page) {
    QV_ASSERT(page >= 0 && page < kv->pool.n_pages && kv->refcnt[page] > 0);
    if (kv->reuse && kv->registered[page] && kv->refcnt[page] == 1) lru_remove(kv, page);
    kv->refcnt[page]++;
}

void qv_kv_page_unref(qv_kv_cache *kv, int32_t page) {
    QV_ASSERT(page >= 0 && page < kv->pool.n_pages && kv->refcnt[page] > 0);
    if (--kv->refcnt[page] == 0)
        kv->free_list[kv->n_free++] = page;
    else if (kv->refcnt[page] == 1 && kv->reuse && kv->registered[page])
        lru_push(kv, page);
}

void qv_kv_seq_release(qv_kv_cache *kv, qv_kv_seq *seq) {
    /* Release in reverse so the pages come back in the order they were taken. */
    for (int i = seq->n_pages - 1; i >= 0; i--)
        qv_kv_page_unref(kv, seq->pages[i]);
    qv_free(seq->pages);
    memset(seq, 0, sizeof(*seq));
}
