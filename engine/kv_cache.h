/*
 * kv_cache.h - the paged KV cache: one pool of fixed-size pages (blocks of `page_size` token
 * slots for every layer), a free list, per-page reference counts, and per-sequence page tables.
 *
 * A sequence owns a page table mapping position j to page pages[j / page_size]. Pages are
 * refcounted so read-only pages (e.g. an adapter's prefix-tuning K/V) can be shared by many
 * sequences; a page returns to the free list when its count drops to zero and is reused by the
 * next allocation. Bookkeeping lives on the host; the K/V storage itself is backend memory.
 *
 * Thread: confined to the engine thread (no locks).
 */
#ifndef QV_KV_CACHE_H
#define QV_KV_CACHE_H

#include "backend.h"
#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_kv_cache {
    qv_backend *be;
    qv_kv_pool pool;    /* k/v storage allocated from `be` */
    int32_t *free_list; /* [n_pages] stack of free page ids; top at n_free - 1 */
    int n_free;
    int32_t *refcnt; /* [n_pages] */
} qv_kv_cache;

/* A sequence's view of the cache. Zero-initialise before first use. */
typedef struct qv_kv_seq {
    int32_t *pages; /* [cap] page ids, pages[i] holds positions [i*page_size, (i+1)*page_size) */
    int n_pages;
    int cap;
} qv_kv_seq;

/* Creates a cache of n_pages pages of page_size tokens for the model's layers and KV heads.
 * Owner: caller (qv_kv_cache_destroy). Errors: QV_ERR_NOMEM / QV_ERR_INVALID. */
qv_status qv_kv_cache_create(qv_backend *be, const qv_model_config *cfg, int n_pages, int page_size,
                             qv_kv_cache **out, qv_error *err);
/* Accepts NULL. All sequences must have been released first. */
void qv_kv_cache_destroy(qv_kv_cache *kv);

/* Bytes of K+V storage per token slot (all layers) in F32. */
size_t qv_kv_bytes_per_token(const qv_model_config *cfg);
/* The same for a pool created on `be` now (bf16 pools on CUDA by default: half). */
size_t qv_kv_cache_bytes_per_token(qv_backend *be, const qv_model_config *cfg);

/* Makes seq's page table cover positions [0, n_tokens). Allocates pages as needed (refcount 1).
 * Returns QV_ERR_BUSY when the pool has too few free pages (nothing is allocated then). */
qv_status qv_kv_seq_reserve(qv_kv_cache *kv, qv_kv_seq *seq, int n_tokens);
/* Pages a reserve of n_tokens would still need. */
int qv_kv_seq_pages_needed(const qv_kv_cache *kv, const qv_kv_seq *seq, int n_tokens);
/* Drops every page of seq (refcounts decremented, pages at zero freed) and frees the table. */
void qv_kv_seq_release(qv_kv_cache *kv, qv_kv_seq *seq);

/* Shares page `page` with one more holder. */
void qv_kv_page_ref(qv_kv_cache *kv, int32_t page);
/* Drops one holder; the page is freed at zero. */
void qv_kv_page_unref(qv_kv_cache *kv, int32_t page);

#ifdef __cplusplus
}
#endif
#endif /* QV_KV_CACHE_H */
