/*
 * test_registry.c - the adapter registry over a real store with a fake loader: one load for
 * many acquires of a cold adapter, loads on worker threads, LRU order and budgets, pins and
 * refcounts protecting from eviction, delete while running, failing loads caching nothing,
 * the device tier, and a multi-adapter stress loop (run it under TSan).
 *
 * The fake loader reads adapter_config.json of the version directory: {"bytes": N, "fail": F}
 * and reports N bytes; a gate lets a test hold loads in progress.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adapters/registry.h"
#include "adapters/store.h"
#include "test_util.h"

/* ---- fake loader ---- */

typedef struct fake {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool gate_open;       /* loads block until this is true */
    bool merge_gate_open; /* merges block until this is true */
    int n_loads;          /* loader calls */
    int n_frees;          /* objects freed */
    int n_live;           /* objects alive */
    pthread_t threads[256];
    int n_threads; /* thread ids seen by the loader (first 256) */
    atomic_int n_notify;
} fake;

typedef struct fake_obj {
    char version[65];
    uint64_t n_bytes;
} fake_obj;

static qv_status fake_load(void *user, const char *path, const char *version, void **obj,
                           uint64_t *n_bytes, qv_error *err) {
    fake *f = user;
    pthread_mutex_lock(&f->mu);
    f->n_loads++;
    if (f->n_threads < 256) f->threads[f->n_threads++] = pthread_self();
    while (!f->gate_open)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);

    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", path);
    char *text = NULL;
    size_t len = 0;
    qv_status st = qv_read_file(p, 4096, &text, &len, err);
    if (st != QV_OK) return st;
    unsigned long long bytes = 0;
    int fail = 0;
    int n = sscanf(text, "{\"bytes\": %llu, \"fail\": %d", &bytes, &fail);
    qv_free(text);
    if (n != 2) return qv_errorf(err, QV_ERR_INVALID, "%s: bad fake config", p);
    if (fail) return qv_errorf(err, QV_ERR_INVALID, "lora_B shape [7, 3] does not match [8, 3]");
    fake_obj *o = qv_malloc(sizeof *o);
    if (!o) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    memcpy(o->version, version, 65);
    o->n_bytes = bytes;
    *obj = o;
    *n_bytes = bytes;
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    pthread_mutex_unlock(&f->mu);
    return QV_OK;
}

/* The fake merge: spec = {bytes, fail}; the object's version lists the parts' first letters. */
typedef struct fake_spec {
    uint64_t bytes;
    int fail;
} fake_spec;

static qv_status fake_merge(void *user, void *const *objs, size_t n, const void *spec, void **obj,
                            uint64_t *n_bytes, qv_error *err) {
    fake *f = user;
    pthread_mutex_lock(&f->mu);
    f->n_loads++;
    while (!f->merge_gate_open)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
    const fake_spec *fs = spec;
    if (fs->fail) return qv_errorf(err, QV_ERR_INVALID, "ranks 8 and 4 on layers.1.q_proj");
    fake_obj *o = qv_calloc(1, sizeof *o);
    if (!o) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n && i < 64; i++) /* reads every part's object */
        o->version[i] = ((const fake_obj *)objs[i])->version[0];
    o->n_bytes = fs->bytes;
    *obj = o;
    *n_bytes = fs->bytes;
    pthread_mutex_lock(&f->mu);
    f->n_live++;
    pthread_mutex_unlock(&f->mu);
    return QV_OK;
}

static void fake_free(void *user, void *obj) {
    fake *f = user;
    pthread_mutex_lock(&f->mu);
    f->n_frees++;
    f->n_live--;
    pthread_mutex_unlock(&f->mu);
    qv_free(obj);
}

static void fake_notify(void *user) {
    fake *f = user;
    atomic_fetch_add(&f->n_notify, 1);
}

static void gate(fake *f, bool open) {
    pthread_mutex_lock(&f->mu);
    f->gate_open = open;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void gate_merge(fake *f, bool open) {
    pthread_mutex_lock(&f->mu);
    f->merge_gate_open = open;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static int fake_get(fake *f, const int *field) {
    pthread_mutex_lock(&f->mu);
    int v = *field;
    pthread_mutex_unlock(&f->mu);
    return v;
}

/* ---- fake device ---- */

typedef struct fake_dev {
    int n_uploads, n_frees, n_live;
} fake_dev;

static qv_status dev_upload(void *user, const void *host, uint64_t n_bytes, void **dev,
                            qv_error *err) {
    (void)err;
    (void)n_bytes;
    fake_dev *d = user;
    d->n_uploads++;
    d->n_live++;
    *dev = (void *)((uintptr_t)host + 1); /* a distinct, recognisable token */
    return QV_OK;
}

static void dev_free(void *user, void *dev) {
    (void)dev;
    fake_dev *d = user;
    d->n_frees++;
    d->n_live--;
}

/* ---- fixture ---- */

typedef struct fix {
    char root[64];
    qv_store_t *store;
    fake f;
    qv_registry_t *reg;
    char versions[32][65];
} fix;

static void rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            rm_rf(sub);
        }
        if (d) closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void put(fix *x, const char *name, unsigned long long bytes, int fail, char version[65]) {
    char cfg[128];
    snprintf(cfg, sizeof cfg, "{\"bytes\": %llu, \"fail\": %d, \"name\": \"%s\"}", bytes, fail,
             name);
    qv_store_txn_t *t = NULL;
    qv_error err = {0};
    assert_int_equal(qv_store_begin(x->store, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", cfg, strlen(cfg), &err), QV_OK);
    assert_int_equal(qv_store_commit(t, name, version, &err), QV_OK);
}

static fix *fix_new_merging(uint64_t host_bytes, const qv_registry_device_i *dev,
                            uint64_t dev_bytes, int n_workers, bool gate_open, int max_merging) {
    fix *x = calloc(1, sizeof *x);
    assert_non_null(x);
    snprintf(x->root, sizeof x->root, "/tmp/qv-registry-test-XXXXXX");
    assert_non_null(mkdtemp(x->root));
    qv_error err = {0};
    assert_int_equal(qv_store_open(x->root, NULL, &x->store, &err), QV_OK);
    pthread_mutex_init(&x->f.mu, NULL);
    pthread_cond_init(&x->f.cv, NULL);
    x->f.gate_open = gate_open;
    x->f.merge_gate_open = true;
    atomic_init(&x->f.n_notify, 0);
    qv_registry_loader l = {.load = fake_load,
                            .free = fake_free,
                            .notify = fake_notify,
                            .merge = fake_merge,
                            .user = &x->f};
    qv_registry_budgets b = {.host_bytes = host_bytes,
                             .device_bytes = dev_bytes,
                             .n_workers = n_workers,
                             .max_merging = max_merging};
    assert_int_equal(qv_registry_create(x->store, &l, &b, dev, &x->reg, &err), QV_OK);
    return x;
}

static fix *fix_new(uint64_t host_bytes, const qv_registry_device_i *dev, uint64_t dev_bytes,
                    int n_workers, bool gate_open) {
    return fix_new_merging(host_bytes, dev, dev_bytes, n_workers, gate_open, 0);
}

static void fix_free(fix *x) {
    gate(&x->f, true);
    gate_merge(&x->f, true);
    qv_registry_destroy(x->reg);
    assert_int_equal(x->f.n_live, 0); /* every loaded object freed */
    qv_store_close(x->store);
    rm_rf(x->root);
    pthread_cond_destroy(&x->f.cv);
    pthread_mutex_destroy(&x->f.mu);
    free(x);
}

/* Waits for and integrates exactly `n` finished loads into ev. */
static void poll_n(fix *x, qv_registry_event *ev, size_t n) {
    size_t got = 0;
    for (int tries = 0; got < n && tries < 500; tries++) {
        if (!qv_registry_wait(x->reg, 20)) continue;
        got += qv_registry_poll(x->reg, ev + got, n - got);
    }
    assert_int_equal(got, n);
}

/* Acquire that must succeed after a load: BUSY, poll one LOADED event, then OK. */
static qv_registry_handle *load_and_acquire(fix *x, const char *ref) {
    qv_registry_handle *h = NULL;
    qv_error err = {0};
    qv_status st = qv_registry_acquire(x->reg, ref, &h, &err);
    if (st == QV_OK) return h;
    assert_int_equal(st, QV_ERR_BUSY);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOADED);
    assert_int_equal(qv_registry_acquire(x->reg, ref, &h, &err), QV_OK);
    return h;
}

static unsigned tiers(fix *x, const char *ref) {
    char v[65];
    qv_error err;
    if (qv_store_resolve(x->store, ref, v, NULL, &err) != QV_OK) return 0;
    return qv_registry_tiers(x->reg, v);
}

static qv_registry_stats stats(fix *x) {
    qv_registry_stats s;
    qv_registry_get_stats(x->reg, &s);
    return s;
}

/* ---- tests ---- */

static void test_one_load_many_acquires(void **state) {
    (void)state;
    fix *x = fix_new(1000, NULL, 0, 4, false);
    char v[65];
    put(x, "a", 100, 0, v);
    qv_error err = {0};
    qv_registry_handle *h = NULL;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(qv_registry_acquire(x->reg, i % 2 ? "a" : v, &h, &err), QV_ERR_BUSY);
        assert_null(h);
    }
    /* Wait until the (single) load is inside the loader, then check nothing else started. */
    for (int i = 0; i < 1000 && fake_get(&x->f, &x->f.n_loads) == 0; i++)
        usleep(1000);
    usleep(20000);
    assert_int_equal(fake_get(&x->f, &x->f.n_loads), 1);
    qv_registry_stats s = stats(x);
    assert_int_equal(s.loads, 1);
    assert_int_equal(s.misses, 100);
    assert_int_equal(s.n_loading, 1);
    assert_int_equal(tiers(x, "a"), QV_REGISTRY_LOADING);
    assert_false(qv_registry_wait(x->reg, 10)); /* gate closed: nothing finished */

    gate(&x->f, true);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOADED);
    assert_string_equal(ev.version, v);
    assert_string_equal(ev.ref, v); /* the first acquire used the version id */
    /* notify runs after the result is queued, so it may trail the poll a little. */
    for (int i = 0; i < 2000 && atomic_load(&x->f.n_notify) < 1; i++)
        usleep(1000);
    assert_int_equal(atomic_load(&x->f.n_notify), 1);

    /* The load ran on a worker thread, not on this (engine) thread. */
    assert_false(pthread_equal(x->f.threads[0], pthread_self()));

    for (int i = 0; i < 3; i++) {
        assert_int_equal(qv_registry_acquire(x->reg, "a", &h, &err), QV_OK);
        assert_string_equal(qv_registry_handle_version(h), v);
        fake_obj *o = qv_registry_handle_host(h);
        assert_string_equal(o->version, v);
        assert_int_equal(qv_registry_handle_n_bytes(h), 100);
        assert_ptr_equal(qv_registry_handle_device(h), o); /* CPU: device tier = host */
        qv_registry_release(h);
    }
    s = stats(x);
    assert_int_equal(s.hits, 3);
    assert_int_equal(s.loads, 1);
    assert_int_equal(s.host_bytes_used, 100);
    assert_true(s.load_latency_sum_s > 0.0);
    assert_true(s.load_latency_max_s >= s.load_latency_sum_s);
    assert_int_equal(tiers(x, "a"), QV_REGISTRY_TIER_HOST | QV_REGISTRY_TIER_DEVICE);
    assert_int_equal(qv_registry_acquire(x->reg, "nope", &h, &err), QV_ERR_NOT_FOUND);
    fix_free(x);
}

static void test_lru_and_budget(void **state) {
    (void)state;
    fix *x = fix_new(300, NULL, 0, 2, true);
    char v[4][65];
    const char *names[] = {"a", "b", "c", "d"};
    for (int i = 0; i < 4; i++)
        put(x, names[i], 100, 0, v[i]);
    for (int i = 0; i < 3; i++)
        qv_registry_release(load_and_acquire(x, names[i]));
    /* Touch a: LRU order is now b, c, a. */
    qv_registry_release(load_and_acquire(x, "a"));
    qv_registry_release(load_and_acquire(x, "d"));
    assert_int_equal(tiers(x, "b"), 0);
    assert_true(tiers(x, "a") & QV_REGISTRY_TIER_HOST);
    assert_true(tiers(x, "c") & QV_REGISTRY_TIER_HOST);
    assert_true(tiers(x, "d") & QV_REGISTRY_TIER_HOST);
    qv_registry_stats s = stats(x);
    assert_int_equal(s.evictions_host, 1);
    assert_int_equal(s.host_bytes_used, 300);
    assert_int_equal(x->f.n_frees, 1);
    /* Next victim is c. */
    qv_registry_release(load_and_acquire(x, "b"));
    assert_int_equal(tiers(x, "c"), 0);
    assert_int_equal(stats(x).evictions_host, 2);
    assert_int_equal(stats(x).loads, 5);
    fix_free(x);
}

static void test_refcount_and_pin_protect(void **state) {
    (void)state;
    fix *x = fix_new(300, NULL, 0, 2, true);
    char v[5][65];
    const char *names[] = {"a", "b", "c", "d", "huge"};
    for (int i = 0; i < 4; i++)
        put(x, names[i], 100, 0, v[i]);
    put(x, "huge", 301, 0, v[4]);
    qv_error err = {0};
    qv_registry_handle *ha = load_and_acquire(x, "a"); /* held */
    qv_registry_handle *hb = load_and_acquire(x, "b"); /* held */
    qv_registry_release(load_and_acquire(x, "c"));
    assert_int_equal(qv_registry_pin(x->reg, "c", &err), QV_OK);
    assert_true(tiers(x, "c") & QV_REGISTRY_PINNED);

    /* d does not fit: a, b held, c pinned. The load fails and caches nothing. */
    qv_registry_handle *h = NULL;
    assert_int_equal(qv_registry_acquire(x->reg, "d", &h, &err), QV_ERR_BUSY);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_int_equal(ev.status, QV_ERR_BUSY);
    assert_string_equal(ev.ref, "d");
    assert_int_equal(tiers(x, "d"), 0);
    assert_int_equal(stats(x).evictions_host, 0);
    assert_int_equal(stats(x).load_failures, 1);
    assert_int_equal(stats(x).host_bytes_used, 300);

    /* Larger than the whole budget: QV_ERR_LIMIT. */
    assert_int_equal(qv_registry_acquire(x->reg, "huge", &h, &err), QV_ERR_BUSY);
    poll_n(x, &ev, 1);
    assert_int_equal(ev.status, QV_ERR_LIMIT);

    /* Releasing a makes it the only victim. */
    qv_registry_release(ha);
    qv_registry_release(load_and_acquire(x, "d"));
    assert_int_equal(tiers(x, "a"), 0);
    assert_true(tiers(x, "b") & QV_REGISTRY_TIER_HOST);
    assert_true(tiers(x, "c") & QV_REGISTRY_TIER_HOST);

    /* Unpin c: now c (older than d) is evicted for a. */
    assert_int_equal(qv_registry_unpin(x->reg, "c", &err), QV_OK);
    assert_int_equal(qv_registry_unpin(x->reg, "c", &err), QV_ERR_NOT_FOUND);
    qv_registry_release(load_and_acquire(x, "a"));
    assert_int_equal(tiers(x, "c"), 0);
    qv_registry_release(hb);

    /* Pin of a cold adapter starts its load and keeps it. */
    assert_int_equal(qv_registry_pin(x->reg, "c", &err), QV_OK);
    assert_true(tiers(x, "c") & QV_REGISTRY_LOADING);
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOADED);
    assert_int_equal(tiers(x, "c"), QV_REGISTRY_TIER_HOST | QV_REGISTRY_PINNED);
    for (int i = 0; i < 3; i++) {
        const char *other = i == 1 ? "b" : i == 2 ? "d" : "a";
        qv_registry_release(load_and_acquire(x, other));
    }
    assert_true(tiers(x, "c") & QV_REGISTRY_TIER_HOST);
    assert_true(stats(x).host_bytes_used <= 300);
    fix_free(x);
}

static void test_failing_loader(void **state) {
    (void)state;
    fix *x = fix_new(1000, NULL, 0, 1, true);
    char v[65];
    put(x, "bad", 100, 1, v);
    qv_error err = {0};
    qv_registry_handle *h = NULL;
    assert_int_equal(qv_registry_acquire(x->reg, "bad", &h, &err), QV_ERR_BUSY);
    assert_int_equal(qv_registry_acquire(x->reg, "bad", &h, &err), QV_ERR_BUSY);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_int_equal(ev.status, QV_ERR_INVALID);
    assert_non_null(strstr(ev.msg, "lora_B shape"));
    assert_string_equal(ev.version, v);
    assert_int_equal(tiers(x, "bad"), 0);
    qv_registry_stats s = stats(x);
    assert_int_equal(s.load_failures, 1);
    assert_int_equal(s.host_bytes_used, 0);
    assert_int_equal(s.n_entries, 0);
    assert_int_equal(s.n_loading, 0);
    /* Nothing was cached: the next acquire tries again. */
    assert_int_equal(qv_registry_acquire(x->reg, "bad", &h, &err), QV_ERR_BUSY);
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_int_equal(stats(x).loads, 2);
    fix_free(x);
}

static void test_delete_while_running(void **state) {
    (void)state;
    fix *x = fix_new(1000, NULL, 0, 2, true);
    char va[65], vb[65], va2[65];
    put(x, "a", 100, 0, va);
    put(x, "b", 100, 0, vb);
    qv_error err = {0};
    qv_registry_handle *h = load_and_acquire(x, "a");
    qv_registry_handle *h2 = NULL;
    assert_int_equal(qv_registry_delete(x->reg, "a", &err), QV_OK);
    /* The name is gone at once ... */
    assert_int_equal(qv_registry_acquire(x->reg, "a", &h2, &err), QV_ERR_NOT_FOUND);
    /* ... but the running holder keeps its version. */
    fake_obj *o = qv_registry_handle_host(h);
    assert_string_equal(o->version, va);
    assert_true(qv_registry_tiers(x->reg, va) & QV_REGISTRY_TIER_HOST);
    assert_int_equal(x->f.n_frees, 0);
    qv_registry_release(h);
    assert_int_equal(qv_registry_tiers(x->reg, va), 0);
    assert_int_equal(x->f.n_frees, 1);
    assert_int_equal(stats(x).host_bytes_used, 0);
    assert_int_equal(qv_registry_delete(x->reg, "a", &err), QV_ERR_NOT_FOUND);

    /* Delete while loading: the finished load is discarded. */
    gate(&x->f, false);
    assert_int_equal(qv_registry_acquire(x->reg, "b", &h2, &err), QV_ERR_BUSY);
    assert_int_equal(qv_registry_delete(x->reg, "b", &err), QV_OK);
    gate(&x->f, true);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(ev.kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_int_equal(ev.status, QV_ERR_NOT_FOUND);
    assert_int_equal(qv_registry_tiers(x->reg, vb), 0);

    /* Replacing a name: holders of the old version keep it, new acquires get the new one. */
    put(x, "a", 50, 0, va);
    h = load_and_acquire(x, "a");
    put(x, "a", 60, 0, va2);
    assert_string_not_equal(va, va2);
    h2 = load_and_acquire(x, "a");
    assert_string_equal(qv_registry_handle_version(h), va);
    assert_string_equal(qv_registry_handle_version(h2), va2);
    assert_int_equal(stats(x).host_bytes_used, 110);
    qv_registry_release(h);
    qv_registry_release(h2);
    fix_free(x);
}

/* Merged objects: made once on a worker from held parts, cached under their key, evicted like
 * loads; the parts stay in memory while the merge runs; a failed merge caches nothing. */
static void test_merged(void **state) {
    (void)state;
    fix *x = fix_new(250, NULL, 0, 2, true);
    char va[65], vb[65], vc[65];
    put(x, "a", 100, 0, va);
    put(x, "b", 100, 0, vb);
    put(x, "c", 100, 0, vc);
    qv_registry_handle *parts[2] = {load_and_acquire(x, "a"), load_and_acquire(x, "b")};
    char key[65];
    memset(key, 'f', 64);
    key[64] = '\0';
    const fake_spec spec = {.bytes = 50};
    qv_error err = {0};
    qv_registry_handle *h = NULL;
    gate_merge(&x->f, false);
    const uint64_t loads0 = stats(x).loads;
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            qv_registry_acquire_merged(x->reg, key, parts, 2, &spec, sizeof spec, &h, &err),
            QV_ERR_BUSY);
    assert_null(h);
    assert_int_equal(stats(x).loads, loads0 + 1); /* one merge for many acquires */
    assert_int_equal(qv_registry_tiers(x->reg, key), QV_REGISTRY_LOADING);
    /* the caller lets go of its parts while the merge runs: the merge still holds them, so c
       (which needs the room of one of them) does not fit */
    qv_registry_release(parts[0]);
    qv_registry_release(parts[1]);
    assert_int_equal(qv_registry_acquire(x->reg, "c", &h, &err), QV_ERR_BUSY);
    qv_registry_event ev[2];
    poll_n(x, ev, 1);
    assert_string_equal(ev[0].version, vc);
    assert_int_equal(ev[0].kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_int_equal(ev[0].status, QV_ERR_BUSY);
    assert_true(qv_registry_tiers(x->reg, va) & QV_REGISTRY_TIER_HOST);
    assert_true(qv_registry_tiers(x->reg, vb) & QV_REGISTRY_TIER_HOST);
    gate_merge(&x->f, true);
    poll_n(x, ev, 1);
    assert_string_equal(ev[0].version, key);
    assert_string_equal(ev[0].ref, "(merge)");
    assert_int_equal(ev[0].kind, QV_REGISTRY_EV_LOADED);
    assert_int_equal(
        qv_registry_acquire_merged(x->reg, key, parts, 2, &spec, sizeof spec, &h, &err), QV_OK);
    fake_obj *o = qv_registry_handle_host(h);
    assert_int_equal(qv_registry_handle_n_bytes(h), 50);
    assert_int_equal(o->version[0], va[0]);
    assert_int_equal(o->version[1], vb[0]);
    assert_int_equal(stats(x).host_bytes_used, 250);
    qv_registry_release(h);
    /* the parts are evictable again: c loads in place of the least recently used (a) */
    qv_registry_release(load_and_acquire(x, "c"));
    assert_int_equal(qv_registry_tiers(x->reg, va), 0);
    assert_true(qv_registry_tiers(x->reg, key) & QV_REGISTRY_TIER_HOST);
    /* a failed merge reports its message under the key and caches nothing */
    parts[0] = load_and_acquire(x, "b");
    parts[1] = load_and_acquire(x, "c");
    char key2[65];
    memset(key2, 'e', 64);
    key2[64] = '\0';
    const fake_spec bad = {.bytes = 10, .fail = 1};
    assert_int_equal(qv_registry_acquire_merged(x->reg, key2, parts, 2, &bad, sizeof bad, &h, &err),
                     QV_ERR_BUSY);
    poll_n(x, ev, 1);
    assert_int_equal(ev[0].kind, QV_REGISTRY_EV_LOAD_FAILED);
    assert_non_null(strstr(ev[0].msg, "layers.1.q_proj"));
    assert_int_equal(qv_registry_tiers(x->reg, key2), 0);
    assert_int_equal(qv_registry_acquire_merged(x->reg, key2, parts, 0, &bad, sizeof bad, &h, &err),
                     QV_ERR_INVALID);
    assert_int_equal(
        qv_registry_acquire_merged(x->reg, "short", parts, 2, &bad, sizeof bad, &h, &err),
        QV_ERR_INVALID);
    /* destroyed while a merge waits: its references go with it */
    gate_merge(&x->f, false);
    assert_int_equal(
        qv_registry_acquire_merged(x->reg, key2, parts, 2, &spec, sizeof spec, &h, &err),
        QV_ERR_BUSY);
    qv_registry_release(parts[0]);
    qv_registry_release(parts[1]);
    fix_free(x);
}

/* budgets.max_merging: a new merge beyond it is refused (QV_ERR_LIMIT) and leaves nothing
 * behind; waiting for a merge in progress is not a new one; the room comes back when a merge
 * is integrated. */
static void test_merge_limit(void **state) {
    (void)state;
    fix *x = fix_new_merging(1000, NULL, 0, 2, true, 1);
    char va[65], vb[65], vc[65];
    put(x, "a", 100, 0, va);
    put(x, "b", 100, 0, vb);
    put(x, "c", 100, 0, vc);
    qv_registry_handle *ab[2] = {load_and_acquire(x, "a"), load_and_acquire(x, "b")};
    qv_registry_handle *ac[2] = {load_and_acquire(x, "a"), load_and_acquire(x, "c")};
    char k1[65], k2[65];
    memset(k1, '1', 64);
    memset(k2, '2', 64);
    k1[64] = k2[64] = '\0';
    const fake_spec spec = {.bytes = 10};
    qv_error err = {0};
    qv_registry_handle *h = NULL;
    gate_merge(&x->f, false);
    assert_int_equal(qv_registry_acquire_merged(x->reg, k1, ab, 2, &spec, sizeof spec, &h, &err),
                     QV_ERR_BUSY);
    assert_int_equal(stats(x).n_merging, 1);
    assert_int_equal(qv_registry_acquire_merged(x->reg, k1, ab, 2, &spec, sizeof spec, &h, &err),
                     QV_ERR_BUSY);
    const uint64_t loads = stats(x).loads, entries = stats(x).n_entries;
    assert_int_equal(qv_registry_acquire_merged(x->reg, k2, ac, 2, &spec, sizeof spec, &h, &err),
                     QV_ERR_LIMIT);
    assert_non_null(strstr(err.msg, "limit of 1 adapter merges"));
    assert_null(h);
    assert_int_equal(stats(x).loads, loads);
    assert_int_equal(stats(x).n_entries, entries);
    assert_int_equal(qv_registry_tiers(x->reg, k2), 0);
    /* plain loads are not merges: they go on */
    char vd[65];
    put(x, "d", 100, 0, vd);
    qv_registry_release(load_and_acquire(x, "d"));
    gate_merge(&x->f, true);
    qv_registry_event ev[1];
    poll_n(x, ev, 1);
    assert_string_equal(ev[0].version, k1);
    assert_int_equal(stats(x).n_merging, 0);
    assert_int_equal(qv_registry_acquire_merged(x->reg, k2, ac, 2, &spec, sizeof spec, &h, &err),
                     QV_ERR_BUSY);
    poll_n(x, ev, 1);
    assert_string_equal(ev[0].version, k2);
    assert_int_equal(ev[0].kind, QV_REGISTRY_EV_LOADED);
    assert_int_equal(qv_registry_acquire_merged(x->reg, k2, ac, 2, &spec, sizeof spec, &h, &err),
                     QV_OK);
    qv_registry_release(h);
    for (int i = 0; i < 2; i++) {
        qv_registry_release(ab[i]);
        qv_registry_release(ac[i]);
    }
    fix_free(x);
}

static void test_device_tier(void **state) {
    (void)state;
    fake_dev d = {0};
    qv_registry_device_i di = {.upload = dev_upload, .free = dev_free, .user = &d};
    fix *x = fix_new(1000, &di, 200, 2, true);
    char v[4][65];
    const char *names[] = {"a", "b", "c", "big"};
    for (int i = 0; i < 3; i++)
        put(x, names[i], 100, 0, v[i]);
    put(x, "big", 201, 0, v[3]);
    qv_registry_handle *ha = load_and_acquire(x, "a");
    assert_ptr_equal(qv_registry_handle_device(ha),
                     (void *)((uintptr_t)qv_registry_handle_host(ha) + 1));
    qv_registry_release(ha);
    qv_registry_release(load_and_acquire(x, "b"));
    assert_int_equal(stats(x).device_bytes_used, 200);
    /* c pushes a (LRU) off the device; a stays in host memory. */
    qv_registry_handle *hc = load_and_acquire(x, "c");
    assert_int_equal(tiers(x, "a"), QV_REGISTRY_TIER_HOST);
    assert_int_equal(tiers(x, "b"), QV_REGISTRY_TIER_HOST | QV_REGISTRY_TIER_DEVICE);
    assert_int_equal(stats(x).evictions_device, 1);
    assert_int_equal(stats(x).evictions_host, 0);
    assert_int_equal(d.n_live, 2);
    /* Hold b and c: a cannot get onto the device until one is released. */
    qv_registry_handle *hb = NULL, *h = NULL;
    qv_error err = {0};
    assert_int_equal(qv_registry_acquire(x->reg, "b", &hb, &err), QV_OK);
    assert_int_equal(qv_registry_acquire(x->reg, "a", &h, &err), QV_ERR_BUSY);
    assert_int_equal(stats(x).loads, 3); /* no reload from disk for a device miss */
    qv_registry_release(hb);
    assert_int_equal(qv_registry_acquire(x->reg, "a", &h, &err), QV_OK); /* upload from host */
    assert_int_equal(d.n_uploads, 4);
    assert_int_equal(stats(x).loads, 3);
    qv_registry_release(h);
    qv_registry_release(hc);
    /* Larger than the device budget. */
    assert_int_equal(qv_registry_acquire(x->reg, "big", &h, &err), QV_ERR_BUSY);
    qv_registry_event ev;
    poll_n(x, &ev, 1);
    assert_int_equal(qv_registry_acquire(x->reg, "big", &h, &err), QV_ERR_LIMIT);
    assert_true(stats(x).device_bytes_used <= 200);
    fix_free(x);
    assert_int_equal(d.n_live, 0);
}

/* Many adapters, small budget, several workers, random acquire/poll/release from the engine
 * thread: invariants hold and every object is freed (the TSan build checks the handoff). */
static void test_stress(void **state) {
    (void)state;
    fix *x = fix_new(1000, NULL, 0, 4, true);
    enum qv_log_level lvl = qv_log_get_level();
    qv_log_set_level(QV_LOG_ERROR); /* ad07's failures are expected */
    enum { N = 24 };
    char names[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "ad%02d", i);
        put(x, names[i], 100 + (unsigned)(i % 5) * 50, i == 7, x->versions[i]);
    }
    qv_registry_handle *held[8] = {0};
    unsigned rng = 12345;
    size_t n_loaded = 0, n_failed = 0;
    for (int it = 0; it < 3000; it++) {
        rng = rng * 1103515245u + 12345u;
        int slot = (int)((rng >> 8) % 8);
        int which = (int)((rng >> 16) % N);
        if (held[slot]) {
            qv_registry_release(held[slot]);
            held[slot] = NULL;
        } else {
            qv_error err;
            qv_status st = qv_registry_acquire(x->reg, names[which], &held[slot], &err);
            assert_true(st == QV_OK || st == QV_ERR_BUSY);
        }
        qv_registry_event ev[8];
        size_t n = qv_registry_poll(x->reg, ev, 8);
        for (size_t i = 0; i < n; i++)
            ev[i].kind == QV_REGISTRY_EV_LOADED ? n_loaded++ : n_failed++;
        qv_registry_stats s = stats(x);
        assert_true(s.host_bytes_used <= 1000);
        if (it % 100 == 0) usleep(500);
    }
    for (int i = 0; i < 8; i++)
        if (held[i]) qv_registry_release(held[i]);
    qv_registry_stats s = stats(x);
    fprintf(stderr, "stress: %llu loads, %zu loaded, %zu failed, %llu evictions, %llu hits\n",
            (unsigned long long)s.loads, n_loaded, n_failed, (unsigned long long)s.evictions_host,
            (unsigned long long)s.hits);
    assert_true(s.hits > 0);
    assert_true(s.evictions_host > 0);
    assert_true(n_failed > 0); /* ad07 always fails */
    qv_log_set_level(lvl);
    /* Every loader thread id is a worker. */
    for (int i = 0; i < fake_get(&x->f, &x->f.n_threads); i++)
        assert_false(pthread_equal(x->f.threads[i], pthread_self()));
    fix_free(x);
}

/* Allocation failures in create/acquire/pin/poll: clean errors, nothing leaked (ASan), and
 * the registry still works once allocations succeed again. */
static void test_alloc_failures(void **state) {
    (void)state;
    fix *x = fix_new(1000, NULL, 0, 2, true);
    char v[65];
    put(x, "a", 100, 0, v);
    put(x, "b", 100, 0, v);
    qv_error err = {0};
    for (long k = 0; k < 40; k++) {
        qv_registry_t *reg = NULL;
        qv_registry_loader l = {.load = fake_load, .free = fake_free, .user = &x->f};
        qv_registry_budgets b = {.host_bytes = 1000, .n_workers = 3};
        qv_alloc_fail_after(k);
        qv_status st = qv_registry_create(x->store, &l, &b, NULL, &reg, &err);
        qv_alloc_fail_after(-1);
        assert_true(st == QV_OK || st == QV_ERR_NOMEM);
        qv_registry_destroy(reg);
    }
    qv_registry_handle *h = NULL;
    for (long k = 0; k < 40; k++) {
        qv_alloc_fail_after(k);
        qv_status st = qv_registry_acquire(x->reg, "a", &h, &err);
        qv_status st2 = qv_registry_pin(x->reg, "b", &err);
        qv_alloc_fail_after(-1);
        assert_true(st == QV_ERR_NOMEM || st == QV_ERR_BUSY || st == QV_OK);
        assert_true(st2 == QV_ERR_NOMEM || st2 == QV_OK);
        if (st == QV_OK) qv_registry_release(h);
        qv_registry_event ev[4];
        while (qv_registry_wait(x->reg, 10))
            qv_registry_poll(x->reg, ev, 4);
    }
    qv_registry_release(load_and_acquire(x, "a"));
    assert_true(stats(x).loads >= 2);
    assert_int_equal(stats(x).n_loading, 0);
    fix_free(x);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_one_load_many_acquires),
        cmocka_unit_test(test_lru_and_budget),
        cmocka_unit_test(test_refcount_and_pin_protect),
        cmocka_unit_test(test_failing_loader),
        cmocka_unit_test(test_delete_while_running),
        cmocka_unit_test(test_merged),
        cmocka_unit_test(test_merge_limit),
        cmocka_unit_test(test_device_tier),
        cmocka_unit_test(test_stress),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
