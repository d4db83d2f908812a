/*
 * kv_cache.h - the paged KV cache: one pool of fixed-size pages (blocks of `page_size` token
 * slots for every layer), a free list, per-page reference counts, and per-sequence page tables.
 *
 * A sequence owns a page table mapping position j to page pages[j / page_size]. Pages are
 * refcounted so read-only pages (e.g. an adapter's prefix-tuning K/V) can be shared by many
 * sequences; a page returns to the free list when its count drops to zero and is reused by the
 * next allocation. Bookkeeping lives on the host; the K/V storage itself is backend memory.
 *
 * Prefix reuse (qv_kv_reuse_enable): a full page whose K/V are computed can be registered under
 * its content: the page before it (id and generation), a namespace (the adapter that shaped the
 * K/V) and its page_size tokens, so the key names the whole token prefix up to the page's end.
 * The cache holds one reference to each registered page. When no sequence holds it any more the
 * page stays registered and becomes evictable (an LRU list); a later sequence with the same
 * prefix, namespace and page boundaries adopts it instead of computing it again. Allocation
 * takes free pages first, then evicts the least recently released registered page (its
 * generation changes, so pages registered after it no longer match). Keys compare exactly
 * (no hash-only matches).
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
    /* prefix reuse (all NULL / 0 until qv_kv_reuse_enable) */
    bool reuse;
    int n_evictable;     /* registered pages only the cache holds (in the LRU list) */
    int n_registered;    /* registered pages */
    uint64_t n_evicted;  /* registered pages evicted to make room */
    uint8_t *registered; /* [n_pages] */
    uint32_t *gen;       /* [n_pages] bumped when a registered page is evicted */
    int32_t *parent;     /* [n_pages] key: previous page of the prefix or -1 */
    uint32_t *parent_gen;
    uint64_t *ns;
    int32_t *toks;                /* [n_pages * page_size] */
    int32_t *lru_prev, *lru_next; /* [n_pages] evictable pages, head = least recent */
    int32_t lru_head, lru_tail;   /* -1 when empty */
    int32_t *bucket, *chain;      /* hash chains: [n_buckets] heads, [n_pages] next */
    uint32_t bucket_mask;
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

/* Pages an allocation can take now: free ones plus evictable registered ones. */
int qv_kv_available(const qv_kv_cache *kv);

/* Turns prefix reuse on (idempotent). Errors: QV_ERR_NOMEM. */
qv_status qv_kv_reuse_enable(qv_kv_cache *kv, qv_error *err);
/* Looks up the registered pages holding tokens[0, k * page_size) for the largest k <= max_pages
 * (k * page_size <= n_tokens) under namespace ns; writes their ids to pages[0..k) and, when
 * n_evictable is not NULL, how many of them only the cache holds. Returns k (0 without reuse). */
int qv_kv_reuse_match(const qv_kv_cache *kv, uint64_t ns, const int32_t *tokens, int n_tokens,
                      int max_pages, int32_t *pages, int *n_evictable);
/* Appends n matched pages to seq's page table (one more holder each; seq must hold no pages).
 * Errors: QV_ERR_NOMEM (nothing taken). */
qv_status qv_kv_seq_adopt(qv_kv_cache *kv, qv_kv_seq *seq, const int32_t *pages, int n);
/* Registers seq's full pages [*n_reg, n_done / page_size) under ns (tokens: the sequence's
 * tokens, positions = indices). Pages registered already (adopted) are skipped. Stops for good
 * (*n_reg = -1) at a page whose predecessor is not registered or whose key another page holds
 * already. No-op without reuse or when *n_reg < 0. */
void qv_kv_reuse_register(qv_kv_cache *kv, const qv_kv_seq *seq, uint64_t ns, const int32_t *tokens,
                          int n_done, int *n_reg);
/* Evicts every evictable registered page (they become free). Returns how many. */
int qv_kv_reuse_clear(qv_kv_cache *kv);

/* Shares page `page` with one more holder. */
void qv_kv_page_ref(qv_kv_cache *kv, int32_t page);
/* Drops one holder; the page is freed at zero. */
void qv_kv_page_unref(qv_kv_cache *kv, int32_t page);

#ifdef __cplusplus
}
#endif
#endif /* QV_KV_CACHE_H */
