/*
 * adapter_pages.c - page bookkeeping of the device adapter pool (adapter_pages.h).
 *
 * Placement: first fit on free pages. When no free run is long enough, every window of
 * n_pages pages that starts at a run boundary (a page whose left neighbour belongs to another
 * entry or run) and whose occupants are all evictable is a candidate; the one whose most
 * recently used occupant is the oldest wins (ties: the lower start), and exactly its occupants
 * are evicted. That is LRU eviction restricted to sets that actually make a contiguous run:
 * nothing newer than necessary is dropped, and nothing is dropped when no run can be made.
 * (Windows starting inside an entry or free run are never better than the one starting at that
 * run's boundary: shifting left keeps a subset of the occupants.)
 * Cost: O(n_pages) per first-fit scan; O(n_pages * n) for the window search, only on the
 * eviction path. Thread: the pool owner's thread.
 */
#include "adapter_pages.h"

#include <string.h>

typedef struct page_entry {
    uint64_t key;
    uint64_t last_use;
    int first, n;
    int refs;
    bool pinned, used;
} page_entry;

struct qv_adapter_pages {
    int n_pages, max_entries, n_entries;
    int *owner; /* [n_pages] entry handle or -1 */
    page_entry *e;
    uint64_t clock;
    uint64_t allocs, evictions, refusals;
    qv_adapter_pages_evict_fn on_evict;
    void *user;
};

qv_status qv_adapter_pages_create(int n_pages, int max_entries, qv_adapter_pages_evict_fn on_evict,
                                  void *user, qv_adapter_pages **out, qv_error *err) {
    *out = NULL;
    if (n_pages < 1 || max_entries < 1)
        return qv_errorf(err, QV_ERR_INVALID, "adapter pages: %d pages, %d entries", n_pages,
                         max_entries);
    qv_adapter_pages *p = qv_calloc(1, sizeof(*p));
    if (!p) goto fail;
    p->owner = qv_malloc((size_t)n_pages * sizeof(int));
    p->e = qv_calloc((size_t)max_entries, sizeof(page_entry));
    if (!p->owner || !p->e) goto fail;
    for (int i = 0; i < n_pages; i++)
        p->owner[i] = -1;
    p->n_pages = n_pages;
    p->max_entries = max_entries;
    p->on_evict = on_evict;
    p->user = user;
    *out = p;
    return QV_OK;
fail:
    qv_adapter_pages_destroy(p);
    return qv_errorf(err, QV_ERR_NOMEM, "adapter pages: out of memory");
}

void qv_adapter_pages_destroy(qv_adapter_pages *p) {
    if (!p) return;
    qv_free(p->owner);
    qv_free(p->e);
    qv_free(p);
}

int qv_adapter_pages_needed(size_t n_bytes, size_t page_bytes) {
    QV_ASSERT(page_bytes > 0);
    size_t n = (n_bytes + page_bytes - 1) / page_bytes;
    if (n == 0) n = 1;
    return n > (size_t)INT32_MAX ? INT32_MAX : (int)n;
}

static bool valid(const qv_adapter_pages *p, int slot) {
    return slot >= 0 && slot < p->max_entries && p->e[slot].used;
}

int qv_adapter_pages_find(const qv_adapter_pages *p, uint64_t key) {
    for (int i = 0; i < p->max_entries; i++)
        if (p->e[i].used && p->e[i].key == key) return i;
    return -1;
}

static bool evictable(const page_entry *e) { return e->refs == 0 && !e->pinned; }

static void drop(qv_adapter_pages *p, int slot) {
    page_entry *e = &p->e[slot];
    for (int i = e->first; i < e->first + e->n; i++)
        p->owner[i] = -1;
    e->used = false;
    p->n_entries--;
}

static void evict(qv_adapter_pages *p, int slot) {
    uint64_t key = p->e[slot].key;
    drop(p, slot);
    p->evictions++;
    if (p->on_evict) p->on_evict(p->user, key, slot);
}

/* First page of the first free run of n pages, or -1. */
static int first_fit(const qv_adapter_pages *p, int n) {
    int run = 0;
    for (int i = 0; i < p->n_pages; i++) {
        run = p->owner[i] < 0 ? run + 1 : 0;
        if (run == n) return i - n + 1;
    }
    return -1;
}

/* The best window to evict (see the file comment), or -1 when none is feasible. */
static int best_window(const qv_adapter_pages *p, int n) {
    int best = -1;
    uint64_t best_cost = 0;
    for (int b = 0; b + n <= p->n_pages;) {
        /* walk the window [b, b + n) */
        uint64_t cost = 0;
        bool ok = true;
        for (int q = b; q < b + n;) {
            int o = p->owner[q];
            if (o < 0) {
                q++;
                continue;
            }
            const page_entry *e = &p->e[o];
            if (!evictable(e)) {
                ok = false;
                break;
            }
            if (e->last_use > cost) cost = e->last_use;
            q = e->first + e->n;
        }
        if (ok && (best < 0 || cost < best_cost)) {
            best = b;
            best_cost = cost;
        }
        /* next boundary */
        int o = p->owner[b];
        if (o >= 0) {
            b = p->e[o].first + p->e[o].n;
        } else {
            while (b < p->n_pages && p->owner[b] < 0)
                b++;
        }
    }
    return best;
}

static int lru_evictable(const qv_adapter_pages *p) {
    int best = -1;
    for (int i = 0; i < p->max_entries; i++) {
        const page_entry *e = &p->e[i];
        if (e->used && evictable(e) && (best < 0 || e->last_use < p->e[best].last_use)) best = i;
    }
    return best;
}

qv_status qv_adapter_pages_alloc(qv_adapter_pages *p, uint64_t key, int n_pages, int *slot,
                                 qv_error *err) {
    *slot = -1;
    if (n_pages < 1)
        return qv_errorf(err, QV_ERR_INVALID, "adapter pages: allocation of %d pages", n_pages);
    if (qv_adapter_pages_find(p, key) >= 0)
        return qv_errorf(err, QV_ERR_INVALID, "adapter pages: key %016llx already resident",
                         (unsigned long long)key);
    if (n_pages > p->n_pages)
        return qv_errorf(err, QV_ERR_DEVICE_OOM,
                         "adapter pages: %d pages needed, the pool has %d in all", n_pages,
                         p->n_pages);
    int start = first_fit(p, n_pages);
    if (start < 0) {
        start = best_window(p, n_pages);
        if (start < 0) {
            p->refusals++;
            return qv_errorf(err, QV_ERR_BUSY,
                             "adapter pages: no run of %d pages beside the adapters in use",
                             n_pages);
        }
        for (int q = start; q < start + n_pages;) {
            int o = p->owner[q];
            if (o < 0) {
                q++;
                continue;
            }
            q = p->e[o].first + p->e[o].n;
            evict(p, o);
        }
    }
    if (p->n_entries == p->max_entries) {
        int v = lru_evictable(p);
        if (v < 0) {
            p->refusals++;
            return qv_errorf(err, QV_ERR_BUSY, "adapter pages: all %d entries in use",
                             p->max_entries);
        }
        evict(p, v); /* its pages lie outside [start, start + n_pages): they were not free */
    }
    int s = 0;
    while (p->e[s].used)
        s++;
    page_entry *e = &p->e[s];
    memset(e, 0, sizeof(*e));
    e->used = true;
    e->key = key;
    e->first = start;
    e->n = n_pages;
    e->last_use = ++p->clock;
    for (int i = start; i < start + n_pages; i++)
        p->owner[i] = s;
    p->n_entries++;
    p->allocs++;
    *slot = s;
    return QV_OK;
}

qv_status qv_adapter_pages_remove(qv_adapter_pages *p, int slot, qv_error *err) {
    if (!valid(p, slot))
        return qv_errorf(err, QV_ERR_INVALID, "adapter pages: bad handle %d", slot);
    if (p->e[slot].refs > 0)
        return qv_errorf(err, QV_ERR_BUSY, "adapter pages: entry %d has %d users", slot,
                         p->e[slot].refs);
    drop(p, slot);
    return QV_OK;
}

void qv_adapter_pages_touch(qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    p->e[slot].last_use = ++p->clock;
}

void qv_adapter_pages_ref(qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    p->e[slot].refs++;
    p->e[slot].last_use = ++p->clock;
}

void qv_adapter_pages_unref(qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    QV_ASSERT(p->e[slot].refs > 0);
    p->e[slot].refs--;
}

int qv_adapter_pages_refs(const qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    return p->e[slot].refs;
}

void qv_adapter_pages_pin(qv_adapter_pages *p, int slot, bool pinned) {
    QV_ASSERT(valid(p, slot));
    p->e[slot].pinned = pinned;
}

int qv_adapter_pages_first(const qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    return p->e[slot].first;
}

int qv_adapter_pages_count(const qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    return p->e[slot].n;
}

uint64_t qv_adapter_pages_key(const qv_adapter_pages *p, int slot) {
    QV_ASSERT(valid(p, slot));
    return p->e[slot].key;
}

int qv_adapter_pages_owner(const qv_adapter_pages *p, int page) {
    QV_ASSERT(page >= 0 && page < p->n_pages);
    return p->owner[page];
}

void qv_adapter_pages_stats_get(const qv_adapter_pages *p, qv_adapter_pages_stats *out) {
    memset(out, 0, sizeof(*out));
    out->n_pages = p->n_pages;
    out->n_entries = p->n_entries;
    out->max_entries = p->max_entries;
    out->allocs = p->allocs;
    out->evictions = p->evictions;
    out->refusals = p->refusals;
    int run = 0;
    for (int i = 0; i < p->n_pages; i++) {
        if (p->owner[i] >= 0) {
            out->used_pages++;
            run = 0;
        } else {
            run++;
            if (run > out->largest_free_run) out->largest_free_run = run;
        }
    }
}

size_t qv_adapter_pages_layout(const size_t *sizes, int n, size_t align, size_t *offs) {
    QV_ASSERT(align > 0 && (align & (align - 1)) == 0);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        off = (off + align - 1) & ~(align - 1);
        offs[i] = off;
        off += sizes[i];
    }
    return (off + align - 1) & ~(align - 1);
}
