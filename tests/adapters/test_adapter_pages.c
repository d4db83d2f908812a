/*
 * test_adapter_pages.c - the device adapter pool's page bookkeeping (engine/adapter_pages.c)
 * against a brute-force model: random alloc / ref / unref / pin / touch / remove sequences,
 * where the model predicts every placement (first fit, else the window whose newest occupant
 * is oldest, over every start page), every eviction (reported through the callback) and every
 * refusal; plus fragmentation, pinned and in-use entries that are never evicted, the entry-table
 * limit, and the image layout helper.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/adapter_pages.h"

/* ---- the model ---- */

#define MAXK 64 /* distinct keys */
typedef struct mentry {
    bool res;
    int first, n, refs;
    bool pinned;
    uint64_t last;
} mentry;

typedef struct model {
    int n_pages, max_entries;
    int owner[512]; /* key index or -1 */
    mentry k[MAXK];
    uint64_t clock;
    /* evictions reported by the callback since the last check */
    int evicted[MAXK];
    int n_evicted;
} model;

static model M;

static void on_evict(void *user, uint64_t key, int slot) {
    (void)slot;
    model *m = user;
    assert_true(key < MAXK);
    /* never an entry in use or pinned */
    assert_true(m->k[key].res);
    assert_int_equal(m->k[key].refs, 0);
    assert_false(m->k[key].pinned);
    m->evicted[m->n_evicted++] = (int)key;
}

static int n_res(const model *m) {
    int c = 0;
    for (int i = 0; i < MAXK; i++)
        c += m->k[i].res;
    return c;
}

static int model_first_fit(const model *m, int n) {
    int run = 0;
    for (int i = 0; i < m->n_pages; i++) {
        run = m->owner[i] < 0 ? run + 1 : 0;
        if (run == n) return i - n + 1;
    }
    return -1;
}

/* Every start page (not just boundaries): lowest start among the windows of minimal cost. */
static int model_window(const model *m, int n) {
    int best = -1;
    uint64_t best_cost = 0;
    for (int s = 0; s + n <= m->n_pages; s++) {
        uint64_t cost = 0;
        bool ok = true;
        for (int q = s; q < s + n && ok; q++) {
            int o = m->owner[q];
            if (o < 0) continue;
            if (m->k[o].refs > 0 || m->k[o].pinned) ok = false;
            if (m->k[o].last > cost) cost = m->k[o].last;
        }
        if (ok && (best < 0 || cost < best_cost)) {
            best = s;
            best_cost = cost;
        }
    }
    return best;
}

static void model_drop(model *m, int key) {
    for (int i = m->k[key].first; i < m->k[key].first + m->k[key].n; i++)
        m->owner[i] = -1;
    m->k[key].res = false;
}

static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

/* Checks the implementation against the model page by page. */
static void check_same(const qv_adapter_pages *p, const model *m) {
    qv_adapter_pages_stats st;
    qv_adapter_pages_stats_get(p, &st);
    int used = 0, run = 0, best_run = 0;
    for (int i = 0; i < m->n_pages; i++) {
        int o = qv_adapter_pages_owner(p, i);
        if (m->owner[i] < 0) {
            assert_int_equal(o, -1);
            run++;
            if (run > best_run) best_run = run;
        } else {
            run = 0;
            used++;
            assert_true(o >= 0);
            assert_int_equal((int)qv_adapter_pages_key(p, o), m->owner[i]);
        }
    }
    assert_int_equal(st.used_pages, used);
    assert_int_equal(st.largest_free_run, best_run);
    assert_int_equal(st.n_entries, n_res(m));
    for (int k = 0; k < MAXK; k++) {
        int s = qv_adapter_pages_find(p, (uint64_t)k);
        if (!m->k[k].res) {
            assert_int_equal(s, -1);
            continue;
        }
        assert_true(s >= 0);
        assert_int_equal(qv_adapter_pages_first(p, s), m->k[k].first);
        assert_int_equal(qv_adapter_pages_count(p, s), m->k[k].n);
        assert_int_equal(qv_adapter_pages_refs(p, s), m->k[k].refs);
    }
}

/* Allocation with the model's prediction checked. */
static void do_alloc(qv_adapter_pages *p, model *m, int key, int n) {
    qv_error err = {0};
    int slot = -1;
    m->n_evicted = 0;
    qv_status st = qv_adapter_pages_alloc(p, (uint64_t)key, n, &slot, &err);
    if (m->k[key].res) {
        assert_int_equal(st, QV_ERR_INVALID);
        assert_int_equal(m->n_evicted, 0);
        return;
    }
    if (n > m->n_pages) {
        assert_int_equal(st, QV_ERR_DEVICE_OOM);
        return;
    }
    int start = model_first_fit(m, n);
    int want_ev[MAXK], n_want = 0;
    if (start < 0) {
        start = model_window(m, n);
        if (start < 0) {
            assert_int_equal(st, QV_ERR_BUSY);
            assert_int_equal(m->n_evicted, 0);
            return;
        }
        for (int q = start; q < start + n; q++) {
            int o = m->owner[q];
            if (o >= 0 && (n_want == 0 || want_ev[n_want - 1] != o)) want_ev[n_want++] = o;
        }
        for (int i = 0; i < n_want; i++)
            model_drop(m, want_ev[i]);
    }
    if (n_res(m) == m->max_entries) {
        int v = -1;
        for (int i = 0; i < MAXK; i++)
            if (m->k[i].res && m->k[i].refs == 0 && !m->k[i].pinned &&
                (v < 0 || m->k[i].last < m->k[v].last))
                v = i;
        if (v < 0) {
            assert_int_equal(st, QV_ERR_BUSY);
            assert_int_equal(m->n_evicted, n_want); /* only when window evictions happened */
            return;
        }
        want_ev[n_want++] = v;
        model_drop(m, v);
    }
    assert_int_equal(st, QV_OK);
    assert_int_equal(m->n_evicted, n_want);
    qsort(want_ev, (size_t)n_want, sizeof(int), cmp_int);
    qsort(m->evicted, (size_t)m->n_evicted, sizeof(int), cmp_int);
    for (int i = 0; i < n_want; i++)
        assert_int_equal(m->evicted[i], want_ev[i]);
    assert_int_equal(qv_adapter_pages_first(p, slot), start);
    m->k[key] = (mentry){.res = true, .first = start, .n = n, .last = ++m->clock};
    for (int i = start; i < start + n; i++)
        m->owner[i] = key;
}

static uint32_t rng;
static uint32_t rnd(void) {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

static void random_run(int n_pages, int max_entries, int steps, uint32_t seed) {
    memset(&M, 0, sizeof(M));
    M.n_pages = n_pages;
    M.max_entries = max_entries;
    for (int i = 0; i < n_pages; i++)
        M.owner[i] = -1;
    rng = seed;
    qv_adapter_pages *p = NULL;
    qv_error err = {0};
    assert_int_equal(qv_adapter_pages_create(n_pages, max_entries, on_evict, &M, &p, &err), QV_OK);
    int n_busy = 0, n_ev = 0;
    for (int step = 0; step < steps; step++) {
        int key = (int)(rnd() % MAXK);
        int s = qv_adapter_pages_find(p, (uint64_t)key);
        mentry *e = &M.k[key];
        uint32_t op = rnd() % 100;
        if (op < 45) {
            /* sizes: mostly small (rank 8..16), sometimes large (rank 64..256) */
            int n = (rnd() % 4 == 0) ? 1 + (int)(rnd() % (uint32_t)(n_pages / 3 + 1))
                                     : 1 + (int)(rnd() % 4);
            if (rnd() % 50 == 0) n = n_pages + 1;
            int before = M.n_evicted = 0;
            (void)before;
            do_alloc(p, &M, key, n);
            n_ev += M.n_evicted;
            if (!M.k[key].res) n_busy++;
        } else if (op < 60) {
            if (!e->res) continue;
            qv_adapter_pages_ref(p, s);
            e->refs++;
            e->last = ++M.clock;
        } else if (op < 75) {
            if (!e->res || e->refs == 0) continue;
            qv_adapter_pages_unref(p, s);
            e->refs--;
        } else if (op < 82) {
            if (!e->res) continue;
            bool pin = rnd() % 3 != 0 && !e->pinned;
            qv_adapter_pages_pin(p, s, pin);
            e->pinned = pin;
        } else if (op < 92) {
            if (!e->res) continue;
            qv_adapter_pages_touch(p, s);
            e->last = ++M.clock;
        } else {
            if (!e->res) {
                assert_int_equal(qv_adapter_pages_remove(p, 7777, &err), QV_ERR_INVALID);
                continue;
            }
            qv_status st = qv_adapter_pages_remove(p, s, &err);
            if (e->refs > 0) {
                assert_int_equal(st, QV_ERR_BUSY);
            } else {
                assert_int_equal(st, QV_OK);
                model_drop(&M, key);
            }
        }
        check_same(p, &M);
    }
    qv_adapter_pages_stats st;
    qv_adapter_pages_stats_get(p, &st);
    printf("pages %d entries %d: %d steps, %llu allocs, %llu evictions (%d seen), %llu refusals\n",
           n_pages, max_entries, steps, (unsigned long long)st.allocs,
           (unsigned long long)st.evictions, n_ev, (unsigned long long)st.refusals);
    assert_int_equal((int)st.evictions, n_ev);
    /* the run must have exercised evictions and refusals */
    assert_true(st.evictions > 0);
    assert_true(n_busy > 0);
    qv_adapter_pages_destroy(p);
}

static void test_random_small(void **state) {
    (void)state;
    random_run(16, 8, 20000, 1u);
}
static void test_random_medium(void **state) {
    (void)state;
    random_run(96, 40, 20000, 2u);
}
static void test_random_large(void **state) {
    (void)state;
    random_run(500, MAXK, 10000, 3u);
}

/* Free pages scattered by removals do not make a run: the oldest window is evicted, the pinned
 * and the referenced entries stay. */
static void test_fragmentation(void **state) {
    (void)state;
    memset(&M, 0, sizeof(M));
    M.n_pages = 8;
    M.max_entries = 16;
    for (int i = 0; i < 8; i++)
        M.owner[i] = -1;
    qv_adapter_pages *p = NULL;
    qv_error err = {0};
    assert_int_equal(qv_adapter_pages_create(8, 16, on_evict, &M, &p, &err), QV_OK);
    for (int k = 0; k < 8; k++)
        do_alloc(p, &M, k, 1);
    /* remove keys 1, 3, 5, 7: 4 free pages, no run of 2 */
    for (int k = 1; k < 8; k += 2) {
        assert_int_equal(qv_adapter_pages_remove(p, qv_adapter_pages_find(p, (uint64_t)k), &err),
                         QV_OK);
        model_drop(&M, k);
    }
    qv_adapter_pages_stats st;
    qv_adapter_pages_stats_get(p, &st);
    assert_int_equal(st.used_pages, 4);
    assert_int_equal(st.largest_free_run, 1);
    /* key 0 (page 0) pinned, key 2 (page 2) in use: the window must be [3, 5) or later;
     * key 4 (page 4) is the oldest evictable */
    qv_adapter_pages_pin(p, qv_adapter_pages_find(p, 0), true);
    M.k[0].pinned = true;
    qv_adapter_pages_ref(p, qv_adapter_pages_find(p, 2));
    M.k[2].refs = 1;
    M.k[2].last = ++M.clock;
    do_alloc(p, &M, 20, 2);
    assert_int_equal(M.n_evicted, 1);
    assert_int_equal(M.evicted[0], 4);
    assert_int_equal(qv_adapter_pages_first(p, qv_adapter_pages_find(p, 20)), 3);
    /* 8 pages: cannot be made while 0 is pinned and 2 in use */
    do_alloc(p, &M, 21, 8);
    assert_false(M.k[21].res);
    assert_int_equal(qv_adapter_pages_alloc(p, 21, 8, &(int){0}, &err), QV_ERR_BUSY);
    assert_int_equal(qv_adapter_pages_alloc(p, 21, 9, &(int){0}, &err), QV_ERR_DEVICE_OOM);
    /* once released and unpinned it can */
    qv_adapter_pages_unref(p, qv_adapter_pages_find(p, 2));
    M.k[2].refs = 0;
    qv_adapter_pages_pin(p, qv_adapter_pages_find(p, 0), false);
    M.k[0].pinned = false;
    do_alloc(p, &M, 21, 8);
    assert_true(M.k[21].res);
    check_same(p, &M);
    qv_adapter_pages_destroy(p);
}

/* The entry table's limit: the LRU evictable entry makes room; with all in use, BUSY. */
static void test_entry_limit(void **state) {
    (void)state;
    memset(&M, 0, sizeof(M));
    M.n_pages = 100;
    M.max_entries = 3;
    for (int i = 0; i < 100; i++)
        M.owner[i] = -1;
    qv_adapter_pages *p = NULL;
    qv_error err = {0};
    assert_int_equal(qv_adapter_pages_create(100, 3, on_evict, &M, &p, &err), QV_OK);
    for (int k = 0; k < 3; k++)
        do_alloc(p, &M, k, 2);
    qv_adapter_pages_touch(p, qv_adapter_pages_find(p, 0));
    M.k[0].last = ++M.clock;
    do_alloc(p, &M, 3, 2); /* evicts 1, the least recently used */
    assert_int_equal(M.n_evicted, 1);
    assert_int_equal(M.evicted[0], 1);
    for (int k = 0; k < 4; k++)
        if (M.k[k].res) {
            qv_adapter_pages_ref(p, qv_adapter_pages_find(p, (uint64_t)k));
            M.k[k].refs++;
            M.k[k].last = ++M.clock;
        }
    do_alloc(p, &M, 4, 2);
    assert_false(M.k[4].res);
    check_same(p, &M);
    assert_int_equal(qv_adapter_pages_create(0, 3, NULL, NULL, &(qv_adapter_pages *){NULL}, &err),
                     QV_ERR_INVALID);
    qv_adapter_pages_destroy(p);
    qv_adapter_pages_destroy(NULL);
}

static void test_layout(void **state) {
    (void)state;
    size_t sizes[4] = {32, 1, 256, 0}, offs[4];
    size_t total = qv_adapter_pages_layout(sizes, 4, 256, offs);
    assert_int_equal(offs[0], 0);
    assert_int_equal(offs[1], 256);
    assert_int_equal(offs[2], 512);
    assert_int_equal(offs[3], 768);
    assert_int_equal(total, 768);
    assert_int_equal(qv_adapter_pages_needed(0, 65536), 1);
    assert_int_equal(qv_adapter_pages_needed(65536, 65536), 1);
    assert_int_equal(qv_adapter_pages_needed(65537, 65536), 2);
    /* rank 16 A and B of a 2048 x 2048 projection in bf16: 64 KiB each */
    assert_int_equal(qv_adapter_pages_needed(2 * 16 * 2048 * 2, 65536), 2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout),        cmocka_unit_test(test_fragmentation),
        cmocka_unit_test(test_entry_limit),   cmocka_unit_test(test_random_small),
        cmocka_unit_test(test_random_medium), cmocka_unit_test(test_random_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
