/*
 * adapter_pool.h - the device adapter pool of the CUDA backend: one device region split into
 * fixed pages, adapter versions resident on runs of pages, asynchronous host-to-device copies.
 *
 * What: an adapter version (a 64-bit key chosen by the caller, e.g. from its content hash) is
 * a list of host matrices (LoRA A and B of every adapted projection; F32, F16 or BF16). Loading
 * converts them to half (bf16, or fp16) into pinned host staging and copies them on the pool's own
 * copy stream; each matrix then has a plain device pointer (qv_cuda_adapter_pool_mat) that the SGMV
 * segment table can name. Placement, LRU eviction, refcounts and pins are
 * engine/adapter_pages.c (pure C, tested on the CPU): a version takes a contiguous run of the
 * pages its real size needs (so the kernels index plain pointers, no page table), and
 * unreferenced, unpinned versions are evicted least recently used first when a run is missing.
 * Ordering: a load's copies wait (on the device, by event) for every compute-stream operation
 * enqueued before the load, so pages of an evicted version are never overwritten under a kernel
 * still reading them; the compute stream waits for a version's copy only when a step uses it
 * (qv_cuda_adapter_pool_use) and only while the copy may be pending, so a request never waits
 * for another adapter's copy. Prefetch is a load issued early (for queued requests).
 * Pinned host tier (opts.host_bytes > 0): a second region, in pinned host memory and paged the
 * same way, holds versions already converted to their device image. A device eviction leaves
 * the image there, so loading it again is one cudaMemcpyAsync and no host work. A prefetch of a
 * version in neither place places it in the tier and hands the conversion to the pool's
 * converter thread: the engine thread does not convert, and the device copy is issued by a
 * later prefetch once the image is complete. A load that needs the version now converts it on
 * the calling thread into the tier (taking over a queued conversion, or waiting for a running
 * one). The tier evicts least recently used first, never an image being written or copied.
 * What not: no adapter formats (the caller lists the matrices), no kernels.
 * Memory: the region, the pinned staging and the pinned tier are allocated once at creation;
 * loads allocate only small host arrays (matrix offsets, a queued conversion's matrix list).
 * Errors: CUDA failures are logged with statement/file/line and returned as QV_ERR_DEVICE.
 * Thread: confined to the engine thread that owns the compute stream; the converter thread
 * only reads the matrices of queued conversions and writes their tier pages.
 */
#ifndef QV_CUDA_ADAPTER_POOL_H
#define QV_CUDA_ADAPTER_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "adapter_pages.h"
#include "core.h"
#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_cuda_adapter_pool qv_cuda_adapter_pool;

typedef struct qv_cuda_pool_opts {
    size_t pool_bytes;    /* device region (rounded down to whole pages); required */
    size_t page_bytes;    /* 0 = 64 KiB; a multiple of 256 */
    size_t staging_bytes; /* pinned host staging, split into 4 copy slots; 0 = 16 MiB */
    int max_entries;      /* resident versions at most (in each tier); 0 = 1024 */
    int fp16;             /* 1: store fp16, 0: bf16 */
    size_t host_bytes;    /* pinned host tier (rounded down to whole pages); 0 = none */
} qv_cuda_pool_opts;

/* One matrix of a version: n_elems values in row-major order, stored in the pool's half type.
 * dtype QV_DTYPE_F32 (the zero default): data is float; QV_DTYPE_F16 / QV_DTYPE_BF16: data is
 * the raw 16-bit values (copied as they are when they match the pool's type, else converted
 * through F32, which is exact from either to F32). F32 with data NULL: zeros (room that the
 * caller fills on the device, on the compute stream after qv_cuda_adapter_pool_use). */
typedef struct qv_cuda_pool_mat {
    const void *data;
    int64_t n_elems;
    enum qv_dtype dtype;
} qv_cuda_pool_mat;

typedef struct qv_cuda_pool_stats {
    qv_adapter_pages_stats pages;
    size_t page_bytes;
    uint64_t loads, hits, bytes_copied;
    uint64_t staging_waits; /* times a load waited (host) for a staging slot's earlier copy */
    /* pinned host tier (zero without one) */
    qv_adapter_pages_stats host_pages;
    uint64_t host_hits;           /* device loads copied from a complete tier image */
    uint64_t host_fills_async;    /* images converted by the converter thread */
    uint64_t host_fills_sync;     /* images converted by a load that needed them at once */
    uint64_t host_job_waits;      /* loads that waited for a running conversion */
    uint64_t host_jobs_cancelled; /* queued conversions dropped (taken over or forgotten) */
} qv_cuda_pool_stats;

/* Creates the pool on the current device; `compute` is the stream the kernels that read the
 * pool run on. Owner: caller (qv_cuda_adapter_pool_destroy), before the stream is destroyed.
 * Errors: QV_ERR_INVALID, QV_ERR_DEVICE_OOM (the region does not fit), QV_ERR_DEVICE,
 * QV_ERR_NOMEM. */
qv_status qv_cuda_adapter_pool_create(const qv_cuda_pool_opts *o, cudaStream_t compute,
                                      qv_cuda_adapter_pool **out, qv_error *err);
/* Waits for pending copies, frees everything. Accepts NULL. */
void qv_cuda_adapter_pool_destroy(qv_cuda_adapter_pool *p);

/* Makes version `key` resident: when it already is, marks it used and returns its handle;
 * otherwise places it (evicting as adapter_pages.h says) and enqueues its copy: from its host
 * tier image when there is one (converted first, on this thread, when it is missing), else
 * through the staging slots. Returns without waiting for the copy (the host waits only when all
 * 4 staging slots hold copies still in flight, or for a conversion of this version that the
 * converter thread is running). *slot may be NULL.
 * Not while `compute` is being captured into a CUDA graph (QV_ERR_BUSY).
 * Errors: QV_ERR_BUSY (no room beside versions in use or pinned: retry after a release),
 * QV_ERR_DEVICE_OOM (larger than the region), QV_ERR_INVALID, QV_ERR_DEVICE, QV_ERR_NOMEM. */
qv_status qv_cuda_adapter_pool_load(qv_cuda_adapter_pool *p, uint64_t key,
                                    const qv_cuda_pool_mat *mats, int n_mats, int *slot,
                                    qv_error *err);

/* Prefetch of version `key` for a queued request; never converts on the calling thread and
 * never waits for a conversion. Resident: marks it used, *slot = its handle. In the host tier
 * with its image complete: places it and enqueues the device copy, *slot = the new handle.
 * Otherwise *slot = -1: the image is being converted (call again later), or it was just placed
 * in the tier and queued for the converter thread. The matrices' data must stay valid until
 * that conversion finished or qv_cuda_adapter_pool_forget(owner) returned. Without a host
 * tier it is qv_cuda_adapter_pool_load. Errors: as load; QV_ERR_BUSY also when the tier has no
 * room beside images in use or the conversion queue is full. */
qv_status qv_cuda_adapter_pool_prefetch(qv_cuda_adapter_pool *p, uint64_t key,
                                        const qv_cuda_pool_mat *mats, int n_mats, const void *owner,
                                        int *slot, qv_error *err);

/* Waits until no conversion reads data of `owner` (queued ones are dropped, with their tier
 * places; a running one is waited for). Call before freeing what a prefetch named. */
void qv_cuda_adapter_pool_forget(qv_cuda_adapter_pool *p, const void *owner);

/* Tests: holds (true) or resumes the converter thread; queued conversions wait meanwhile. */
void qv_cuda_adapter_pool_hold_jobs(qv_cuda_adapter_pool *p, bool hold);
/* Tests: waits until the conversion queue is empty (nothing queued or running). */
void qv_cuda_adapter_pool_drain_jobs(qv_cuda_adapter_pool *p);

/* Handle of resident `key`, or -1. */
int qv_cuda_adapter_pool_find(const qv_cuda_adapter_pool *p, uint64_t key);
/* Whether `key` is on the device or in the host tier (complete or being converted). */
bool qv_cuda_adapter_pool_known(const qv_cuda_adapter_pool *p, uint64_t key);

/* Device pointer of matrix i of the version at `slot` (valid while it stays resident: hold a
 * reference while kernels may be enqueued with it). */
const void *qv_cuda_adapter_pool_mat(const qv_cuda_adapter_pool *p, int slot, int i);

/* Writable device pointer of matrix i of the version at `slot`: for room loaded as zeros (F32
 * with data NULL) that the caller fills on the compute stream. */
void *qv_cuda_adapter_pool_room(qv_cuda_adapter_pool *p, int slot, int i);

/* References: a version with references is never evicted. */
void qv_cuda_adapter_pool_acquire(qv_cuda_adapter_pool *p, int slot);
void qv_cuda_adapter_pool_release(qv_cuda_adapter_pool *p, int slot);
void qv_cuda_adapter_pool_pin(qv_cuda_adapter_pool *p, int slot, bool pinned);

/* True when the version's copy has completed (never blocks). */
bool qv_cuda_adapter_pool_ready(qv_cuda_adapter_pool *p, int slot);

/* Orders the compute stream after the version's copy (a device-side wait, only while the copy
 * may be pending). Call before enqueueing work that reads it. Errors: QV_ERR_BUSY when the copy
 * is pending and the compute stream is being captured (run the step eagerly), QV_ERR_DEVICE. */
qv_status qv_cuda_adapter_pool_use(qv_cuda_adapter_pool *p, int slot, qv_error *err);

void qv_cuda_adapter_pool_stats(const qv_cuda_adapter_pool *p, qv_cuda_pool_stats *out);

/* Bytes of the pages a version with these matrices would take (its run of pages, alignment
 * padding included), and the size of the whole region. */
size_t qv_cuda_adapter_pool_footprint(const qv_cuda_adapter_pool *p, const qv_cuda_pool_mat *mats,
                                      int n_mats);
size_t qv_cuda_adapter_pool_bytes(const qv_cuda_adapter_pool *p);
/* Size of the pinned host tier (0 without one). */
size_t qv_cuda_adapter_pool_host_bytes(const qv_cuda_adapter_pool *p);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_ADAPTER_POOL_H */
