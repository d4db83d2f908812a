/*
 * registry.c - adapter registry: version-keyed entries in host/device tiers with LRU eviction,
 * refcounts and pins, loads on a pthread worker pool (see registry.h).
 *
 * Not here: adapter formats (loader callback), device memory management (device callbacks),
 * durable storage (store.c).
 *
 * Invariants (engine thread): every entry is in the hash table and in the LRU list (least
 * recently used first); LOADING entries have exactly one job in flight (todo, running or
 * done) and are never removed before poll integrates that job; host_used is the sum of
 * n_bytes of READY entries, device_used the sum over entries with a device copy; both stay
 * within their budgets.
 *
 * Threads: the registry, its entries and counters belong to the engine thread. Workers only
 * see jobs: the todo/done queues and the stop flag are guarded by `mu`; a job's result fields
 * are written by its worker before it is queued on done and read by the engine thread after
 * it is dequeued (the mutex orders the two).
 */
#include "adapters/registry.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

enum entry_state { ENTRY_LOADING = 0, ENTRY_READY };

struct qv_registry_entry {
    qv_registry_t *reg;
    char version[QV_STORE_VERSION_LEN + 1];
    char ref[QV_STORE_NAME_MAX + 1]; /* reference that started the load (for events) */
    enum entry_state state;
    void *host;       /* loader object, READY only */
    uint64_t n_bytes; /* as reported by the loader */
    void *dev;        /* device copy or NULL */
    bool on_device;
    int refcount; /* holders: acquire/release */
    int pins;
    bool doomed; /* name deleted: drop when no longer held */
    struct qv_registry_entry *hnext, *prev, *next;
};

typedef struct job {
    struct job *next;
    char version[QV_STORE_VERSION_LEN + 1];
    char *path;
    double t_start;
    /* a merge (n_parts > 0): the parts it holds a reference on, their objects, the spec */
    struct qv_registry_entry *parts[QV_REGISTRY_MERGE_MAX];
    void *part_objs[QV_REGISTRY_MERGE_MAX];
    size_t n_parts;
    void *spec;
    /* results, written by the worker */
    void *obj;
    uint64_t n_bytes;
    qv_status status;
    qv_error err;
} job;

#define N_BUCKETS 1024

struct qv_registry {
    qv_store_t *store;
    qv_registry_loader loader;
    qv_registry_device_i device;
    bool has_device;
    qv_registry_budgets budgets;
    struct qv_registry_entry *buckets[N_BUCKETS];
    struct qv_registry_entry *lru_head, *lru_tail; /* head: least recently used */
    qv_registry_stats stats;

    pthread_mutex_t mu;     /* guards the fields below */
    pthread_cond_t todo_cv; /* workers wait for jobs */
    pthread_cond_t done_cv; /* qv_registry_wait waits for results */
    job *todo_head, *todo_tail;
    job *done_head, *done_tail;
    bool stop;

    pthread_t *threads; /* n_threads started workers */
    int n_threads;
    bool sync_ok; /* mutex and conds initialised */
};

/* ---- worker pool ---- */

static void *worker_main(void *arg) {
    qv_registry_t *reg = arg;
    for (;;) {
        pthread_mutex_lock(&reg->mu);
        while (!reg->stop && !reg->todo_head)
            pthread_cond_wait(&reg->todo_cv, &reg->mu);
        if (reg->stop) {
            pthread_mutex_unlock(&reg->mu);
            return NULL;
        }
        job *j = reg->todo_head;
        reg->todo_head = j->next;
        if (!reg->todo_head) reg->todo_tail = NULL;
        pthread_mutex_unlock(&reg->mu);

        j->obj = NULL;
        j->n_bytes = 0;
        memset(&j->err, 0, sizeof j->err);
        j->status = j->n_parts ? reg->loader.merge(reg->loader.user, j->part_objs, j->n_parts,
                                                   j->spec, &j->obj, &j->n_bytes, &j->err)
                               : reg->loader.load(reg->loader.user, j->path, j->version, &j->obj,
                                                  &j->n_bytes, &j->err);
        if (j->status != QV_OK && j->obj) {
            reg->loader.free(reg->loader.user, j->obj); /* a sloppy loader must not leak */
            j->obj = NULL;
        }
        if (j->status == QV_OK && !j->obj)
            j->status = qv_errorf(&j->err, QV_ERR_INVALID, "loader returned no object");
        j->next = NULL;
        pthread_mutex_lock(&reg->mu);
        if (reg->done_tail)
            reg->done_tail->next = j;
        else
            reg->done_head = j;
        reg->done_tail = j;
        pthread_cond_broadcast(&reg->done_cv);
        pthread_mutex_unlock(&reg->mu);
        if (reg->loader.notify) reg->loader.notify(reg->loader.user);
    }
}

static void job_free(qv_registry_t *reg, job *j) {
    if (!j) return;
    if (j->obj) reg->loader.free(reg->loader.user, j->obj);
    qv_free(j->path);
    qv_free(j->spec);
    qv_free(j);
}

/* ---- entries ---- */

static size_t bucket_of(const char *version) {
    uint32_t h = 2166136261u;
    for (const char *p = version; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % N_BUCKETS;
}

static struct qv_registry_entry *find(const qv_registry_t *reg, const char *version) {
    for (struct qv_registry_entry *e = reg->buckets[bucket_of(version)]; e; e = e->hnext)
        if (!strcmp(e->version, version)) return e;
    return NULL;
}

static void lru_unlink(qv_registry_t *reg, struct qv_registry_entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        reg->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        reg->lru_tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_tail(qv_registry_t *reg, struct qv_registry_entry *e) {
    e->prev = reg->lru_tail;
    e->next = NULL;
    if (reg->lru_tail)
        reg->lru_tail->next = e;
    else
        reg->lru_head = e;
    reg->lru_tail = e;
}

static void touch(qv_registry_t *reg, struct qv_registry_entry *e) {
    lru_unlink(reg, e);
    lru_push_tail(reg, e);
}

static void drop_device(qv_registry_t *reg, struct qv_registry_entry *e) {
    if (!e->on_device) return;
    if (reg->has_device) {
        reg->device.free(reg->device.user, e->dev);
        QV_ASSERT(reg->stats.device_bytes_used >= e->n_bytes);
        reg->stats.device_bytes_used -= e->n_bytes;
    }
    e->dev = NULL;
    e->on_device = false;
}

/* Unlinks and frees an entry with its objects. LOADING entries only from poll. */
static void entry_remove(qv_registry_t *reg, struct qv_registry_entry *e) {
    struct qv_registry_entry **pp = &reg->buckets[bucket_of(e->version)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(reg, e);
    drop_device(reg, e);
    if (e->state == ENTRY_READY) {
        reg->loader.free(reg->loader.user, e->host);
        QV_ASSERT(reg->stats.host_bytes_used >= e->n_bytes);
        reg->stats.host_bytes_used -= e->n_bytes;
    }
    reg->stats.n_entries--;
    qv_free(e);
}

static bool evictable(const struct qv_registry_entry *e) {
    return e->state == ENTRY_READY && e->refcount == 0 && e->pins == 0;
}

/* Frees host room for `need` more bytes by evicting LRU entries (never `keep`). Evicts nothing
 * unless the room can be made. */
static bool make_host_room(qv_registry_t *reg, uint64_t need,
                           const struct qv_registry_entry *keep) {
    uint64_t budget = reg->budgets.host_bytes, used = reg->stats.host_bytes_used;
    if (need > budget) return false;
    if (used + need <= budget) return true;
    uint64_t freeable = 0;
    for (struct qv_registry_entry *e = reg->lru_head; e; e = e->next)
        if (e != keep && evictable(e)) freeable += e->n_bytes;
    if (used - freeable + need > budget) return false;
    struct qv_registry_entry *e = reg->lru_head;
    while (e && reg->stats.host_bytes_used + need > budget) {
        struct qv_registry_entry *next = e->next;
        if (e != keep && evictable(e)) {
            QV_LOGD("registry: evicting %s from host", e->version);
            entry_remove(reg, e);
            reg->stats.evictions_host++;
        }
        e = next;
    }
    return true;
}

static bool make_device_room(qv_registry_t *reg, uint64_t need,
                             const struct qv_registry_entry *keep) {
    uint64_t budget = reg->budgets.device_bytes, used = reg->stats.device_bytes_used;
    if (used + need <= budget) return true;
    uint64_t freeable = 0;
    for (struct qv_registry_entry *e = reg->lru_head; e; e = e->next)
        if (e != keep && e->on_device && evictable(e)) freeable += e->n_bytes;
    if (used - freeable + need > budget) return false;
    for (struct qv_registry_entry *e = reg->lru_head;
         e && reg->stats.device_bytes_used + need > budget; e = e->next) {
        if (e != keep && e->on_device && evictable(e)) {
            drop_device(reg, e);
            reg->stats.evictions_device++;
        }
    }
    return true;
}

/* Places a READY entry on the device (no-op without a device interface). */
static qv_status ensure_device(qv_registry_t *reg, struct qv_registry_entry *e, qv_error *err) {
    if (e->on_device) return QV_OK;
    if (!reg->has_device) {
        e->dev = e->host;
        e->on_device = true;
        return QV_OK;
    }
    if (e->n_bytes > reg->budgets.device_bytes)
        return qv_errorf(err, QV_ERR_LIMIT, "adapter %s needs %llu device bytes, budget is %llu",
                         e->version, (unsigned long long)e->n_bytes,
                         (unsigned long long)reg->budgets.device_bytes);
    if (!make_device_room(reg, e->n_bytes, e))
        return qv_errorf(err, QV_ERR_BUSY, "device adapter memory is held by running requests");
    void *dev = NULL;
    qv_status st = reg->device.upload(reg->device.user, e->host, e->n_bytes, &dev, err);
    if (st != QV_OK) return st;
    e->dev = dev;
    e->on_device = true;
    reg->stats.device_bytes_used += e->n_bytes;
    return QV_OK;
}

/* Creates a LOADING entry for `version` and queues job j (its path or parts filled in; owned
 * from here on, freed on failure). */
static qv_status start_job(qv_registry_t *reg, const char *ref, const char *version, job *j,
                           struct qv_registry_entry **out, qv_error *err) {
    struct qv_registry_entry *e = qv_calloc(1, sizeof *e);
    if (!e) {
        job_free(reg, j);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    e->reg = reg;
    memcpy(e->version, version, sizeof e->version);
    snprintf(e->ref, sizeof e->ref, "%s", ref);
    e->state = ENTRY_LOADING;
    size_t b = bucket_of(version);
    e->hnext = reg->buckets[b];
    reg->buckets[b] = e;
    lru_push_tail(reg, e);
    reg->stats.n_entries++;
    reg->stats.n_loading++;
    reg->stats.loads++;
    if (j->n_parts) reg->stats.n_merging++;

    memcpy(j->version, version, sizeof j->version);
    j->t_start = qv_time_s();
    for (size_t i = 0; i < j->n_parts; i++) { /* the parts stay in memory while it runs */
        j->parts[i]->refcount++;
        j->part_objs[i] = j->parts[i]->host;
    }
    pthread_mutex_lock(&reg->mu);
    if (reg->todo_tail)
        reg->todo_tail->next = j;
    else
        reg->todo_head = j;
    reg->todo_tail = j;
    pthread_cond_signal(&reg->todo_cv);
    pthread_mutex_unlock(&reg->mu);
    QV_LOGD("registry: %s %s (%s)", j->n_parts ? "merging" : "loading", ref, version);
    *out = e;
    return QV_OK;
}

/* The same for a load of the version directory `path` (owned from here on). */
static qv_status start_load(qv_registry_t *reg, const char *ref, const char *version, char *path,
                            struct qv_registry_entry **out, qv_error *err) {
    job *j = qv_calloc(1, sizeof *j);
    if (!j) {
        qv_free(path);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    j->path = path;
    return start_job(reg, ref, version, j, out, err);
}

/* ---- public API ---- */

qv_status qv_registry_create(qv_store_t *store, const qv_registry_loader *loader,
                             const qv_registry_budgets *budgets, const qv_registry_device_i *device,
                             qv_registry_t **out, qv_error *err) {
    *out = NULL;
    if (!store || !loader || !loader->load || !loader->free || !budgets)
        return qv_errorf(err, QV_ERR_INVALID, "registry needs a store, a loader and budgets");
    if (device && (!device->upload || !device->free))
        return qv_errorf(err, QV_ERR_INVALID, "device interface needs upload and free");
    qv_registry_t *reg = qv_calloc(1, sizeof *reg);
    if (!reg) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_status st = QV_OK;
    reg->store = store;
    reg->loader = *loader;
    reg->budgets = *budgets;
    if (reg->budgets.n_workers <= 0) reg->budgets.n_workers = 2;
    if (device) {
        reg->device = *device;
        reg->has_device = true;
    }
    if (pthread_mutex_init(&reg->mu, NULL) != 0) {
        qv_free(reg);
        return qv_errorf(err, QV_ERR_NOMEM, "pthread_mutex_init failed");
    }
    if (pthread_cond_init(&reg->todo_cv, NULL) != 0) {
        pthread_mutex_destroy(&reg->mu);
        qv_free(reg);
        return qv_errorf(err, QV_ERR_NOMEM, "pthread_cond_init failed");
    }
    if (pthread_cond_init(&reg->done_cv, NULL) != 0) {
        pthread_cond_destroy(&reg->todo_cv);
        pthread_mutex_destroy(&reg->mu);
        qv_free(reg);
        return qv_errorf(err, QV_ERR_NOMEM, "pthread_cond_init failed");
    }
    reg->sync_ok = true;
    reg->threads = qv_calloc((size_t)reg->budgets.n_workers, sizeof *reg->threads);
    if (!reg->threads) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int i = 0; i < reg->budgets.n_workers; i++) {
        int rc = pthread_create(&reg->threads[i], NULL, worker_main, reg);
        if (rc != 0) {
            st = qv_errorf(err, QV_ERR_NOMEM, "pthread_create: %s", strerror(rc));
            goto fail;
        }
        reg->n_threads++;
    }
    *out = reg;
    return QV_OK;
fail:
    qv_registry_destroy(reg);
    return st;
}

void qv_registry_destroy(qv_registry_t *reg) {
    if (!reg) return;
    if (reg->sync_ok) {
        pthread_mutex_lock(&reg->mu);
        reg->stop = true;
        pthread_cond_broadcast(&reg->todo_cv);
        pthread_mutex_unlock(&reg->mu);
    }
    for (int i = 0; i < reg->n_threads; i++)
        pthread_join(reg->threads[i], NULL);
    qv_free(reg->threads);
    for (int q = 0; q < 2; q++)
        for (job *j = q ? reg->done_head : reg->todo_head, *n; j; j = n) {
            n = j->next;
            for (size_t i = 0; i < j->n_parts; i++) /* a merge's references on its parts */
                j->parts[i]->refcount--;
            job_free(reg, j);
        }
    while (reg->lru_head) {
        struct qv_registry_entry *e = reg->lru_head;
        if (e->refcount) QV_LOGW("registry: destroyed while %s is held", e->version);
        entry_remove(reg, e);
    }
    if (reg->sync_ok) {
        pthread_cond_destroy(&reg->done_cv);
        pthread_cond_destroy(&reg->todo_cv);
        pthread_mutex_destroy(&reg->mu);
    }
    qv_free(reg);
}

/* A READY entry found by acquire: placed on the device and referenced. */
static qv_status take(qv_registry_t *reg, struct qv_registry_entry *e, qv_registry_handle **out,
                      qv_error *err) {
    qv_status st = ensure_device(reg, e, err);
    if (st != QV_OK) return st;
    e->doomed = false;
    e->refcount++;
    reg->stats.hits++;
    touch(reg, e);
    *out = e;
    return QV_OK;
}

qv_status qv_registry_acquire(qv_registry_t *reg, const char *ref, qv_registry_handle **out,
                              qv_error *err) {
    *out = NULL;
    char version[QV_STORE_VERSION_LEN + 1];
    char *path = NULL;
    qv_status st = qv_store_resolve(reg->store, ref, version, &path, err);
    if (st != QV_OK) return st;
    struct qv_registry_entry *e = find(reg, version);
    if (!e) {
        st = start_load(reg, ref, version, path, &e, err);
        if (st != QV_OK) return st;
        reg->stats.misses++;
        return qv_errorf(err, QV_ERR_BUSY, "adapter '%s' is loading", ref);
    }
    qv_free(path);
    if (e->state == ENTRY_LOADING) {
        e->doomed = false; /* it resolved again: the version is wanted */
        reg->stats.misses++;
        return qv_errorf(err, QV_ERR_BUSY, "adapter '%s' is loading", ref);
    }
    return take(reg, e, out, err);
}

qv_status qv_registry_acquire_merged(qv_registry_t *reg, const char *key,
                                     qv_registry_handle *const *parts, size_t n, const void *spec,
                                     size_t spec_len, qv_registry_handle **out, qv_error *err) {
    *out = NULL;
    if (!reg->loader.merge)
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "this registry does not merge adapters");
    if (n < 1 || n > QV_REGISTRY_MERGE_MAX || strlen(key) != QV_STORE_VERSION_LEN)
        return qv_errorf(err, QV_ERR_INVALID, "a merge takes 1 to %d parts and a %d-character key",
                         QV_REGISTRY_MERGE_MAX, QV_STORE_VERSION_LEN);
    struct qv_registry_entry *e = find(reg, key);
    if (e && e->state == ENTRY_READY) return take(reg, e, out, err);
    reg->stats.misses++;
    if (e) return qv_errorf(err, QV_ERR_BUSY, "the merged adapter is being made");
    if (reg->budgets.max_merging > 0 && reg->stats.n_merging >= (uint64_t)reg->budgets.max_merging)
        return qv_errorf(err, QV_ERR_LIMIT,
                         "the limit of %d adapter merges made at once is reached; retry shortly",
                         reg->budgets.max_merging);
    job *j = qv_calloc(1, sizeof *j);
    if (!j || !(j->spec = qv_malloc(spec_len ? spec_len : 1))) {
        qv_free(j);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    if (spec_len) memcpy(j->spec, spec, spec_len);
    j->n_parts = n;
    for (size_t i = 0; i < n; i++) {
        QV_ASSERT(parts[i]->state == ENTRY_READY && parts[i]->refcount > 0);
        j->parts[i] = parts[i];
    }
    qv_status st = start_job(reg, "(merge)", key, j, &e, err);
    if (st != QV_OK) return st;
    return qv_errorf(err, QV_ERR_BUSY, "the merged adapter is being made");
}

void qv_registry_release(qv_registry_handle *h) {
    qv_registry_t *reg = h->reg;
    QV_ASSERT(h->refcount > 0);
    h->refcount--;
    if (h->refcount == 0 && h->doomed && h->pins == 0) {
        entry_remove(reg, h);
        return;
    }
    touch(reg, h);
}

const char *qv_registry_handle_version(const qv_registry_handle *h) { return h->version; }
void *qv_registry_handle_host(const qv_registry_handle *h) { return h->host; }
void *qv_registry_handle_device(const qv_registry_handle *h) { return h->dev; }
uint64_t qv_registry_handle_n_bytes(const qv_registry_handle *h) { return h->n_bytes; }

static void fill_event(qv_registry_event *ev, enum qv_registry_event_kind kind,
                       const struct qv_registry_entry *e, qv_status st, const char *msg) {
    memset(ev, 0, sizeof *ev);
    ev->kind = kind;
    memcpy(ev->version, e->version, sizeof ev->version);
    memcpy(ev->ref, e->ref, sizeof ev->ref);
    ev->status = st;
    snprintf(ev->msg, sizeof ev->msg, "%s", msg ? msg : "");
}

size_t qv_registry_poll(qv_registry_t *reg, qv_registry_event *events, size_t cap) {
    size_t n_ev = 0;
    while (n_ev < cap) {
        pthread_mutex_lock(&reg->mu);
        job *j = reg->done_head;
        if (j) {
            reg->done_head = j->next;
            if (!reg->done_head) reg->done_tail = NULL;
        }
        pthread_mutex_unlock(&reg->mu);
        if (!j) break;

        for (size_t i = 0; i < j->n_parts; i++) /* a merge's parts: its references end */
            qv_registry_release(j->parts[i]);
        if (j->n_parts) reg->stats.n_merging--;
        j->n_parts = 0;
        struct qv_registry_entry *e = find(reg, j->version);
        QV_ASSERT(e && e->state == ENTRY_LOADING);
        reg->stats.n_loading--;
        double dt = qv_time_s() - j->t_start;
        reg->stats.load_latency_sum_s += dt;
        if (dt > reg->stats.load_latency_max_s) reg->stats.load_latency_max_s = dt;
        qv_registry_event *ev = &events[n_ev++];
        qv_error lerr = {0};
        qv_status st = j->status;
        const char *msg = j->err.msg;
        if (st == QV_OK && e->doomed) {
            st = qv_errorf(&lerr, QV_ERR_NOT_FOUND, "adapter %s was deleted while loading",
                           e->version);
            msg = lerr.msg;
        } else if (st == QV_OK && j->n_bytes > reg->budgets.host_bytes) {
            st = qv_errorf(&lerr, QV_ERR_LIMIT, "adapter %s needs %llu bytes, host budget is %llu",
                           e->version, (unsigned long long)j->n_bytes,
                           (unsigned long long)reg->budgets.host_bytes);
            msg = lerr.msg;
        } else if (st == QV_OK && !make_host_room(reg, j->n_bytes, e)) {
            st = qv_errorf(&lerr, QV_ERR_BUSY,
                           "adapter %s (%llu bytes) does not fit: host adapter memory is held",
                           e->version, (unsigned long long)j->n_bytes);
            msg = lerr.msg;
        }
        if (st != QV_OK) {
            reg->stats.load_failures++;
            QV_LOGW("registry: load of '%s' failed: %s", e->ref, msg);
            fill_event(ev, QV_REGISTRY_EV_LOAD_FAILED, e, st, msg);
            entry_remove(reg, e); /* LOADING: nothing cached */
            job_free(reg, j);
            continue;
        }
        e->state = ENTRY_READY;
        e->host = j->obj;
        e->n_bytes = j->n_bytes;
        j->obj = NULL;
        reg->stats.host_bytes_used += e->n_bytes;
        touch(reg, e);
        fill_event(ev, QV_REGISTRY_EV_LOADED, e, QV_OK, NULL);
        job_free(reg, j);
    }
    return n_ev;
}

bool qv_registry_wait(qv_registry_t *reg, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&reg->mu);
    while (!reg->done_head) {
        if (pthread_cond_timedwait(&reg->done_cv, &reg->mu, &until) == ETIMEDOUT) break;
    }
    bool ready = reg->done_head != NULL;
    pthread_mutex_unlock(&reg->mu);
    return ready;
}

qv_status qv_registry_pin(qv_registry_t *reg, const char *ref, qv_error *err) {
    char version[QV_STORE_VERSION_LEN + 1];
    char *path = NULL;
    qv_status st = qv_store_resolve(reg->store, ref, version, &path, err);
    if (st != QV_OK) return st;
    struct qv_registry_entry *e = find(reg, version);
    if (e) {
        qv_free(path);
    } else if ((st = start_load(reg, ref, version, path, &e, err)) != QV_OK) {
        return st;
    }
    e->doomed = false;
    e->pins++;
    return QV_OK;
}

qv_status qv_registry_unpin(qv_registry_t *reg, const char *ref, qv_error *err) {
    char version[QV_STORE_VERSION_LEN + 1];
    qv_status st = qv_store_resolve(reg->store, ref, version, NULL, err);
    if (st != QV_OK) return st;
    struct qv_registry_entry *e = find(reg, version);
    if (!e || e->pins == 0) return qv_errorf(err, QV_ERR_NOT_FOUND, "'%s' is not pinned", ref);
    e->pins--;
    return QV_OK;
}

qv_status qv_registry_delete(qv_registry_t *reg, const char *name, qv_error *err) {
    char version[QV_STORE_VERSION_LEN + 1];
    bool known = qv_store_resolve(reg->store, name, version, NULL, NULL) == QV_OK;
    qv_status st = qv_store_delete(reg->store, name, err);
    if (st != QV_OK || !known) return st;
    struct qv_registry_entry *e = find(reg, version);
    if (!e) return QV_OK;
    e->doomed = true;
    e->pins = 0;
    if (e->state == ENTRY_READY && e->refcount == 0) entry_remove(reg, e);
    return QV_OK;
}

unsigned qv_registry_tiers(const qv_registry_t *reg, const char *version) {
    const struct qv_registry_entry *e = find(reg, version);
    if (!e) return 0;
    unsigned t = 0;
    if (e->state == ENTRY_LOADING) t |= QV_REGISTRY_LOADING;
    if (e->state == ENTRY_READY) t |= QV_REGISTRY_TIER_HOST;
    if (e->on_device) t |= QV_REGISTRY_TIER_DEVICE;
    if (e->pins) t |= QV_REGISTRY_PINNED;
    return t;
}

void qv_registry_get_stats(const qv_registry_t *reg, qv_registry_stats *out) { *out = reg->stats; }
