/*
 * registry.h - the adapter registry: resolves adapter references through the store and keeps
 * loaded adapter versions in memory tiers (disk -> host -> device) under byte budgets.
 *
 * Entries are keyed by version id (content hash), never by name, so replacing an adapter can
 * never serve stale weights. Loading happens on a small pthread worker pool that only runs
 * the loader callback; finished loads are handed back through a mutex-protected queue and
 * integrated by qv_registry_poll on the engine thread. The registry does not know adapter
 * formats: the loader callback (the PEFT loader, a fake in tests) turns a version directory
 * into an opaque host object, and an optional device interface uploads it.
 *
 * Tiers and eviction: each tier (host, device) is an LRU under its byte budget. An entry with
 * refcount > 0 (acquired by a running sequence) or pinned is never evicted. Evicting from host
 * also drops the device copy (the device copy is made from the host copy); evicting from
 * device keeps the host copy. Disk is the store and is never evicted by the registry.
 *
 * Threads: every function here except those marked otherwise must be called on one thread,
 * the engine thread (the registry object and its entries are confined to it). The loader's
 * load (and notify) callbacks run on worker threads; free and the device callbacks run on the
 * engine thread.
 */
#ifndef QV_ADAPTERS_REGISTRY_H
#define QV_ADAPTERS_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/store.h"
#include "engine/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_registry qv_registry_t;
/* A held adapter version: valid from a successful qv_registry_acquire until the matching
 * qv_registry_release, even if its name is deleted or replaced meanwhile. */
typedef struct qv_registry_entry qv_registry_handle;

typedef struct qv_registry_loader {
    /* Worker thread. Loads the version directory `path` (id `version`) into a host object
     * (*obj, owned by the registry afterwards) of *n_bytes bytes. On error fills err, returns
     * its status and leaves *obj NULL. Must not touch the registry. */
    qv_status (*load)(void *user, const char *path, const char *version, void **obj,
                      uint64_t *n_bytes, qv_error *err);
    /* Engine thread (or qv_registry_destroy's caller). Frees an object returned by load. */
    void (*free)(void *user, void *obj);
    /* Optional, worker thread: called after a finished load was queued, e.g. uv_async_send
     * to wake the engine loop, which then calls qv_registry_poll. */
    void (*notify)(void *user);
    /* Optional, worker thread: makes a new host object (*obj, *n_bytes, owned by the registry
     * afterwards) out of the loaded objects objs[0..n) (held by the registry while it runs) and
     * the bytes `spec` given to qv_registry_acquire_merged. Errors as load. */
    qv_status (*merge)(void *user, void *const *objs, size_t n, const void *spec, void **obj,
                       uint64_t *n_bytes, qv_error *err);
    void *user;
} qv_registry_loader;

/* Device tier. When a registry has none, the device tier is the host tier (CPU backend):
 * handles report the host object as their device object and no device bytes are counted. */
typedef struct qv_registry_device_i {
    /* Engine thread. Copies a loaded host object (n_bytes as reported by load) to the device;
     * *dev is owned by the registry. QV_ERR_DEVICE_OOM is recoverable. */
    qv_status (*upload)(void *user, const void *host_obj, uint64_t n_bytes, void **dev,
                        qv_error *err);
    void (*free)(void *user, void *dev); /* engine thread */
    void *user;
} qv_registry_device_i;

typedef struct qv_registry_budgets {
    uint64_t host_bytes;   /* sum of loaded n_bytes kept in host memory */
    uint64_t device_bytes; /* sum of n_bytes uploaded to the device (ignored without device) */
    int n_workers;         /* loader threads; <= 0 means 2 */
    int max_merging;       /* merges queued or running at once; <= 0: no limit */
} qv_registry_budgets;

enum qv_registry_tier {
    QV_REGISTRY_TIER_HOST = 1 << 0,
    QV_REGISTRY_TIER_DEVICE = 1 << 1,
    QV_REGISTRY_LOADING = 1 << 2,
    QV_REGISTRY_PINNED = 1 << 3,
};

/* Counters for /metrics. Loads are counted when they start, latency when they finish. */
typedef struct qv_registry_stats {
    uint64_t hits;             /* acquires served at once */
    uint64_t misses;           /* acquires answered QV_ERR_BUSY because the version loads */
    uint64_t loads;            /* loads started */
    uint64_t load_failures;    /* loader errors, budget refusals, deleted while loading */
    uint64_t evictions_host;   /* entries dropped from host memory to make room */
    uint64_t evictions_device; /* device copies dropped to make room */
    double load_latency_sum_s; /* load start (acquire) to integration (poll) */
    double load_latency_max_s;
    uint64_t host_bytes_used;
    uint64_t device_bytes_used;
    uint64_t n_entries; /* loaded or loading versions */
    uint64_t n_loading;
    uint64_t n_merging; /* of n_loading, merges (qv_registry_acquire_merged) */
} qv_registry_stats;

enum qv_registry_event_kind { QV_REGISTRY_EV_LOADED = 0, QV_REGISTRY_EV_LOAD_FAILED };

typedef struct qv_registry_event {
    enum qv_registry_event_kind kind;
    char version[QV_STORE_VERSION_LEN + 1];
    char ref[QV_STORE_NAME_MAX + 1]; /* the reference whose acquire or pin started the load */
    qv_status status;                /* QV_OK for LOADED */
    char msg[512];                   /* the loader's message for LOAD_FAILED (a qv_error message) */
} qv_registry_event;

/* Creates a registry over `store` (borrowed; must outlive the registry) and starts its worker
 * threads. loader->load and loader->free are required; device may be NULL. *out is owned by
 * the caller (qv_registry_destroy). Errors: QV_ERR_INVALID, QV_ERR_NOMEM. */
qv_status qv_registry_create(qv_store_t *store, const qv_registry_loader *loader,
                             const qv_registry_budgets *budgets, const qv_registry_device_i *device,
                             qv_registry_t **out, qv_error *err);

/* Stops the workers (waiting for loads in progress), frees every loaded object and entry.
 * Handles still held become invalid. Accepts NULL. */
void qv_registry_destroy(qv_registry_t *reg);

/* Resolves `ref` (name, alias or version id) through the store (reads one small file) and:
 * - if that version is in host memory (and, with a device interface, can be placed on the
 *   device): takes a reference, returns QV_OK and the handle;
 * - otherwise returns QV_ERR_BUSY; the first such call starts one asynchronous load, later
 *   ones while it runs start nothing. Retry after qv_registry_poll reports the load.
 * Other errors: QV_ERR_NOT_FOUND / QV_ERR_INVALID (resolution), QV_ERR_LIMIT (larger than
 * the device budget), a device upload error. */
qv_status qv_registry_acquire(qv_registry_t *reg, const char *ref, qv_registry_handle **out,
                              qv_error *err);

#define QV_REGISTRY_MERGE_MAX 16 /* parts of one merged object */

/* Acquires the object that loader->merge makes of the held versions parts[0..n) and `spec`
 * (spec_len bytes, copied), cached under `key`: QV_STORE_VERSION_LEN characters chosen by the
 * caller to name the parts' versions and the spec (a hash), never a store version id.
 * - In host memory: takes a reference and returns QV_OK (as acquire does).
 * - Otherwise QV_ERR_BUSY; the first such call starts the merge on a worker, which holds its
 *   own reference on every part until qv_registry_poll integrates the result (a merged entry
 *   then lives, and is evicted, like a loaded version; its events carry `key` and the ref
 *   "(merge)").
 * The caller keeps its part handles. Errors: QV_ERR_UNSUPPORTED without loader->merge,
 * QV_ERR_INVALID (n outside 1..QV_REGISTRY_MERGE_MAX, a bad key), QV_ERR_LIMIT (a new merge
 * while budgets.max_merging are being made: retry later), QV_ERR_NOMEM, device errors as
 * acquire. */
qv_status qv_registry_acquire_merged(qv_registry_t *reg, const char *key,
                                     qv_registry_handle *const *parts, size_t n, const void *spec,
                                     size_t spec_len, qv_registry_handle **out, qv_error *err);

/* Drops a reference taken by acquire. */
void qv_registry_release(qv_registry_handle *h);

/* Accessors; valid while the handle is held. */
const char *qv_registry_handle_version(const qv_registry_handle *h);
void *qv_registry_handle_host(const qv_registry_handle *h);
void *qv_registry_handle_device(const qv_registry_handle *h);
uint64_t qv_registry_handle_n_bytes(const qv_registry_handle *h);

/* Integrates finished loads (at most `cap`) into the host tier, evicting LRU entries to fit
 * the budget, and writes one event per finished load. A load that does not fit even after
 * evicting everything evictable fails with QV_ERR_BUSY (QV_ERR_LIMIT if larger than the whole
 * budget) and caches nothing. Returns the number of events written. */
size_t qv_registry_poll(qv_registry_t *reg, qv_registry_event *events, size_t cap);

/* Blocks until a finished load waits for qv_registry_poll or timeout_ms passes; returns true
 * in the first case. For loops without a notify callback, and tests. */
bool qv_registry_wait(qv_registry_t *reg, int timeout_ms);

/* Pins the version `ref` resolves to: never evicted until unpinned (pins nest). Starts a load
 * when the version is not in memory. Errors as for resolution, QV_ERR_NOMEM. */
qv_status qv_registry_pin(qv_registry_t *reg, const char *ref, qv_error *err);

/* Removes one pin of the version `ref` resolves to. QV_ERR_NOT_FOUND if it has none. */
qv_status qv_registry_unpin(qv_registry_t *reg, const char *ref, qv_error *err);

/* Deletes `name` from the store at once (later acquires fail with QV_ERR_NOT_FOUND) and drops
 * that version from memory when its last holder releases it (its pins are removed). A load in
 * progress is discarded when it finishes. Errors: those of qv_store_delete. */
qv_status qv_registry_delete(qv_registry_t *reg, const char *name, qv_error *err);

/* QV_REGISTRY_* flags of a version id (0 when the registry does not hold it). */
unsigned qv_registry_tiers(const qv_registry_t *reg, const char *version);

/* Copies the counters. */
void qv_registry_get_stats(const qv_registry_t *reg, qv_registry_stats *out);

#ifdef __cplusplus
}
#endif
#endif /* QV_ADAPTERS_REGISTRY_H */
