/*
 * adapter_pages.h - bookkeeping of the byte-paged device adapter pool, in plain C (no CUDA):
 * which pages each resident adapter version holds, LRU order, refcounts and pins. The CUDA pool
 * (engine/cuda/adapter_pool.h) owns the device region and the copies and calls this for every
 * placement decision, so all of the policy is tested on the CPU.
 *
 * What: a region of n_pages fixed-size pages. An adapter version (a 64-bit key) takes one run of
 * contiguous pages, as many as its real bytes need (its rank decides, no padding to a maximum
 * rank). Contiguous runs keep the kernels simple: every A/B matrix is a plain device pointer
 * (base + first page * page size + offset), with no page-table indirection inside the SGMV
 * loops; the price is external fragmentation, which allocation answers by evicting
 * least-recently-used unreferenced, unpinned entries until a run fits (first fit).
 * What not: no device memory, no copies, no knowledge of adapter formats.
 * Invariants: an entry with refs > 0 or pinned is never evicted; a page belongs to at most one
 * entry; entries and free pages partition the region.
 * Thread: confined to the thread that owns the pool (the engine thread); refcounts are plain
 * integers.
 */
#ifndef QV_ADAPTER_PAGES_H
#define QV_ADAPTER_PAGES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_adapter_pages qv_adapter_pages;

/* Called for each entry removed to make room (never for qv_adapter_pages_remove), before its
 * pages are reused; slot is the entry's handle, which becomes invalid on return. */
typedef void (*qv_adapter_pages_evict_fn)(void *user, uint64_t key, int slot);

typedef struct qv_adapter_pages_stats {
    int n_pages, used_pages, largest_free_run;
    int n_entries, max_entries;
    uint64_t allocs, evictions, refusals; /* refusals: allocations answered BUSY */
} qv_adapter_pages_stats;

/* Creates the bookkeeping for n_pages pages (>= 1) and at most max_entries resident entries
 * (>= 1). on_evict may be NULL. Owner: caller (qv_adapter_pages_destroy).
 * Errors: QV_ERR_INVALID, QV_ERR_NOMEM. */
qv_status qv_adapter_pages_create(int n_pages, int max_entries, qv_adapter_pages_evict_fn on_evict,
                                  void *user, qv_adapter_pages **out, qv_error *err);
/* Accepts NULL. Does not call on_evict. */
void qv_adapter_pages_destroy(qv_adapter_pages *p);

/* Pages needed for n_bytes with pages of page_bytes (at least 1). */
int qv_adapter_pages_needed(size_t n_bytes, size_t page_bytes);

/* Handle of the entry with `key`, or -1. Does not change the LRU order. */
int qv_adapter_pages_find(const qv_adapter_pages *p, uint64_t key);

/* Places a new entry `key` on a run of n_pages contiguous pages (first fit), evicting LRU
 * entries with refs == 0 and not pinned, oldest first, until a run fits. The new entry is the
 * most recently used, refs 0, not pinned; *slot receives its handle.
 * Errors: QV_ERR_INVALID (key already present, n_pages < 1), QV_ERR_DEVICE_OOM (n_pages larger
 * than the whole region: can never fit), QV_ERR_BUSY (does not fit beside the entries in use or
 * pinned, or every entry slot is held; nothing was evicted in that case only when no eviction
 * could have helped). */
qv_status qv_adapter_pages_alloc(qv_adapter_pages *p, uint64_t key, int n_pages, int *slot,
                                 qv_error *err);

/* Removes an unreferenced entry now (pinned or not) and frees its pages. on_evict is not called.
 * Errors: QV_ERR_BUSY (refs > 0), QV_ERR_INVALID (bad handle). */
qv_status qv_adapter_pages_remove(qv_adapter_pages *p, int slot, qv_error *err);

/* Marks the entry most recently used. */
void qv_adapter_pages_touch(qv_adapter_pages *p, int slot);
/* Reference counting (a running sequence holds a reference while it may use the entry);
 * unref asserts refs > 0. ref also touches. */
void qv_adapter_pages_ref(qv_adapter_pages *p, int slot);
void qv_adapter_pages_unref(qv_adapter_pages *p, int slot);
int qv_adapter_pages_refs(const qv_adapter_pages *p, int slot);
/* Pinned entries are never evicted (they may still be removed). */
void qv_adapter_pages_pin(qv_adapter_pages *p, int slot, bool pinned);

/* The entry's first page, page count and key. */
int qv_adapter_pages_first(const qv_adapter_pages *p, int slot);
int qv_adapter_pages_count(const qv_adapter_pages *p, int slot);
uint64_t qv_adapter_pages_key(const qv_adapter_pages *p, int slot);
/* Owner of page i: an entry handle, or -1 when free (tests). */
int qv_adapter_pages_owner(const qv_adapter_pages *p, int page);

void qv_adapter_pages_stats_get(const qv_adapter_pages *p, qv_adapter_pages_stats *out);

/* Layout of an adapter image: n matrices of sizes[i] bytes placed back to back, each at an
 * offset aligned to `align` (a power of two); offs[i] receives the offsets. Returns the total
 * bytes (the last end, rounded up to align). Thread: any. */
size_t qv_adapter_pages_layout(const size_t *sizes, int n, size_t align, size_t *offs);

#ifdef __cplusplus
}
#endif
#endif /* QV_ADAPTER_PAGES_H */
