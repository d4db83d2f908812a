/*
 * adapter_pool.c - the CUDA device adapter pool (adapter_pool.h): the device region, the
 * pinned staging slots and the copy stream around the page bookkeeping of
 * engine/adapter_pages.c.
 *
 * A version's image is its matrices converted to half, each at a 256-byte aligned offset,
 * padding zeroed; it is streamed through the staging slots in order, one cudaMemcpyAsync per
 * filled slot, each followed by the slot's event so that the slot is rewritten only after its
 * copy (the host waits there, on the copy stream only). The version's `ready` event is
 * recorded after its last copy. Before the first copy the copy stream waits for an event
 * recorded on the compute stream: every kernel enqueued so far (including readers of evicted
 * versions whose pages are about to be overwritten) runs before the copy.
 * Thread: the engine thread.
 */
#include "cuda/adapter_pool.h"

#include <stdint.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "dtype.h"

#define N_STAGE 4
#define MAT_ALIGN 256

typedef struct pool_slot {
    size_t *offs; /* [n_mats] byte offsets in the image */
    int n_mats;
    bool pending; /* the copy may still be in flight */
} pool_slot;

struct qv_cuda_adapter_pool {
    qv_adapter_pages *pages;
    size_t page_bytes;
    int fp16;
    unsigned char *base; /* device region */
    cudaStream_t compute, copy;
    cudaEvent_t compute_mark;
    unsigned char *stage[N_STAGE]; /* pinned */
    cudaEvent_t stage_ev[N_STAGE];
    bool stage_busy[N_STAGE];
    size_t stage_bytes; /* per slot */
    int stage_next;
    int max_entries;
    pool_slot *slots;   /* [max_entries] */
    cudaEvent_t *ready; /* [max_entries] */
    uint64_t loads, hits, bytes_copied, staging_waits;
};

static int cu_ok(cudaError_t e, const char *stmt, const char *file, int line) {
    if (e == cudaSuccess) return 1;
    QV_LOGE("cuda: %s failed: %s (%s:%d)", stmt, cudaGetErrorString(e), file, line);
    return 0;
}
#define CU_OK(call) cu_ok((call), #call, __FILE__, __LINE__)

static void on_evict(void *user, uint64_t key, int slot) {
    (void)key;
    qv_cuda_adapter_pool *p = user;
    qv_free(p->slots[slot].offs);
    p->slots[slot] = (pool_slot){0};
}

qv_status qv_cuda_adapter_pool_create(const qv_cuda_pool_opts *o, cudaStream_t compute,
                                      qv_cuda_adapter_pool **out, qv_error *err) {
    *out = NULL;
    size_t page = o->page_bytes ? o->page_bytes : (size_t)64 << 10;
    size_t staging = o->staging_bytes ? o->staging_bytes : (size_t)16 << 20;
    int max_entries = o->max_entries > 0 ? o->max_entries : 1024;
    if (page % MAT_ALIGN != 0 || o->pool_bytes < page || o->pool_bytes / page > INT32_MAX ||
        staging < N_STAGE * (size_t)MAT_ALIGN)
        return qv_errorf(err, QV_ERR_INVALID,
                         "cuda adapter pool: %zu bytes in pages of %zu, staging %zu", o->pool_bytes,
                         page, staging);
    qv_status st = QV_ERR_DEVICE;
    qv_cuda_adapter_pool *p = qv_calloc(1, sizeof(*p));
    if (!p) return qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    p->page_bytes = page;
    p->fp16 = o->fp16 != 0;
    p->compute = compute;
    p->max_entries = max_entries;
    p->stage_bytes = (staging / N_STAGE) & ~(size_t)(MAT_ALIGN - 1);
    int n_pages = (int)(o->pool_bytes / page);
    p->slots = qv_calloc((size_t)max_entries, sizeof(pool_slot));
    p->ready = qv_calloc((size_t)max_entries, sizeof(cudaEvent_t));
    if (!p->slots || !p->ready) {
        st = qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
        goto fail;
    }
    st = qv_adapter_pages_create(n_pages, max_entries, on_evict, p, &p->pages, err);
    if (st != QV_OK) goto fail;
    st = QV_ERR_DEVICE;
    cudaError_t e = cudaMalloc((void **)&p->base, (size_t)n_pages * page);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        p->base = NULL;
        st = qv_errorf(err, QV_ERR_DEVICE_OOM, "cuda adapter pool: cannot allocate %zu bytes",
                       (size_t)n_pages * page);
        goto fail;
    }
    if (!CU_OK(e) || !CU_OK(cudaStreamCreateWithFlags(&p->copy, cudaStreamNonBlocking)) ||
        !CU_OK(cudaEventCreateWithFlags(&p->compute_mark, cudaEventDisableTiming)))
        goto fail_dev;
    for (int i = 0; i < N_STAGE; i++)
        if (!CU_OK(cudaHostAlloc((void **)&p->stage[i], p->stage_bytes, cudaHostAllocDefault)) ||
            !CU_OK(cudaEventCreateWithFlags(&p->stage_ev[i], cudaEventDisableTiming)))
            goto fail_dev;
    for (int i = 0; i < max_entries; i++)
        if (!CU_OK(cudaEventCreateWithFlags(&p->ready[i], cudaEventDisableTiming))) goto fail_dev;
    QV_LOGI("cuda adapter pool: %d pages of %zu KiB (%.1f MiB), %d x %zu KiB pinned staging, "
            "%d versions at most",
            n_pages, page >> 10, (double)((size_t)n_pages * page) / 1048576.0, N_STAGE,
            p->stage_bytes >> 10, max_entries);
    *out = p;
    return QV_OK;
fail_dev:
    st = qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: device setup failed");
fail:
    qv_cuda_adapter_pool_destroy(p);
    return st;
}

void qv_cuda_adapter_pool_destroy(qv_cuda_adapter_pool *p) {
    if (!p) return;
    if (p->copy) CU_OK(cudaStreamSynchronize(p->copy));
    for (int i = 0; i < N_STAGE; i++) {
        if (p->stage[i]) CU_OK(cudaFreeHost(p->stage[i]));
        if (p->stage_ev[i]) CU_OK(cudaEventDestroy(p->stage_ev[i]));
    }
    if (p->ready)
        for (int i = 0; i < p->max_entries; i++)
            if (p->ready[i]) CU_OK(cudaEventDestroy(p->ready[i]));
    if (p->slots)
        for (int i = 0; i < p->max_entries; i++)
            qv_free(p->slots[i].offs);
    if (p->compute_mark) CU_OK(cudaEventDestroy(p->compute_mark));
    if (p->copy) CU_OK(cudaStreamDestroy(p->copy));
    if (p->base) CU_OK(cudaFree(p->base));
    qv_adapter_pages_destroy(p->pages);
    qv_free(p->slots);
    qv_free(p->ready);
    qv_free(p);
}

/* ---- streaming an image through the staging slots ---- */

typedef struct writer {
    qv_cuda_adapter_pool *p;
    unsigned char *dev; /* next device byte */
    size_t used;        /* bytes in the current slot */
    int ok;
} writer;

/* Makes the current slot writable: waits for its previous copy. */
static void w_acquire(writer *w) {
    qv_cuda_adapter_pool *p = w->p;
    int s = p->stage_next;
    if (p->stage_busy[s]) {
        if (cudaEventQuery(p->stage_ev[s]) != cudaSuccess) {
            (void)cudaGetLastError(); /* cudaErrorNotReady is not sticky */
            p->staging_waits++;
            if (!CU_OK(cudaEventSynchronize(p->stage_ev[s]))) w->ok = 0;
        }
        p->stage_busy[s] = false;
    }
}

static void w_flush(writer *w) {
    qv_cuda_adapter_pool *p = w->p;
    if (!w->ok || w->used == 0) return;
    int s = p->stage_next;
    if (!CU_OK(cudaMemcpyAsync(w->dev, p->stage[s], w->used, cudaMemcpyHostToDevice, p->copy)) ||
        !CU_OK(cudaEventRecord(p->stage_ev[s], p->copy))) {
        w->ok = 0;
        return;
    }
    p->stage_busy[s] = true;
    p->bytes_copied += w->used;
    w->dev += w->used;
    w->used = 0;
    p->stage_next = (s + 1) % N_STAGE;
    w_acquire(w);
}

static inline void w_put(writer *w, uint16_t v) {
    if (w->used + 2 > w->p->stage_bytes) w_flush(w);
    memcpy(w->p->stage[w->p->stage_next] + w->used, &v, 2);
    w->used += 2;
}

/* n values copied as they are, a staging slot at a time (a memcpy per slot, not per value). */
static void w_put_raw(writer *w, const uint16_t *d, int64_t n) {
    while (n > 0 && w->ok) {
        size_t room = (w->p->stage_bytes - w->used) / 2u;
        if (room == 0) {
            w_flush(w);
            continue;
        }
        size_t k = (size_t)n < room ? (size_t)n : room;
        memcpy(w->p->stage[w->p->stage_next] + w->used, d, k * 2u);
        w->used += k * 2u;
        d += k;
        n -= (int64_t)k;
    }
}

qv_status qv_cuda_adapter_pool_load(qv_cuda_adapter_pool *p, uint64_t key,
                                    const qv_cuda_pool_mat *mats, int n_mats, int *slot,
                                    qv_error *err) {
    if (slot) *slot = -1;
    int s = qv_adapter_pages_find(p->pages, key);
    if (s >= 0) {
        qv_adapter_pages_touch(p->pages, s);
        p->hits++;
        if (slot) *slot = s;
        return QV_OK;
    }
    if (n_mats < 1 || !mats)
        return qv_errorf(err, QV_ERR_INVALID, "cuda adapter pool: a version without matrices");
    for (int i = 0; i < n_mats; i++)
        if (mats[i].n_elems < 0 ||
            (mats[i].n_elems > 0 && !mats[i].data && mats[i].dtype != QV_DTYPE_F32) ||
            (mats[i].dtype != QV_DTYPE_F32 && mats[i].dtype != QV_DTYPE_F16 &&
             mats[i].dtype != QV_DTYPE_BF16))
            return qv_errorf(err, QV_ERR_INVALID, "cuda adapter pool: matrix %d is malformed", i);
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (!CU_OK(cudaStreamIsCapturing(p->compute, &cap)))
        return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: stream query failed");
    if (cap != cudaStreamCaptureStatusNone)
        return qv_errorf(err, QV_ERR_BUSY, "cuda adapter pool: load during a graph capture");
    size_t *offs = qv_malloc((size_t)n_mats * sizeof(size_t));
    size_t *sizes = qv_malloc((size_t)n_mats * sizeof(size_t));
    if (!offs || !sizes) {
        qv_free(offs);
        qv_free(sizes);
        return qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    }
    for (int i = 0; i < n_mats; i++)
        sizes[i] = (size_t)mats[i].n_elems * 2u;
    size_t total = qv_adapter_pages_layout(sizes, n_mats, MAT_ALIGN, offs);
    qv_free(sizes);
    qv_status st = qv_adapter_pages_alloc(p->pages, key,
                                          qv_adapter_pages_needed(total, p->page_bytes), &s, err);
    if (st != QV_OK) {
        qv_free(offs);
        return st;
    }
    p->slots[s] = (pool_slot){.offs = offs, .n_mats = n_mats, .pending = true};
    /* copies after every compute operation enqueued so far (readers of evicted pages) */
    if (!CU_OK(cudaEventRecord(p->compute_mark, p->compute)) ||
        !CU_OK(cudaStreamWaitEvent(p->copy, p->compute_mark, 0)))
        goto fail;
    writer w = {.p = p,
                .dev = p->base + (size_t)qv_adapter_pages_first(p->pages, s) * p->page_bytes,
                .ok = 1};
    w_acquire(&w);
    size_t pos = 0;
    for (int i = 0; i < n_mats && w.ok; i++) {
        for (; pos < offs[i]; pos += 2)
            w_put(&w, 0);
        const int64_t n = mats[i].n_elems;
        const enum qv_dtype want = p->fp16 ? QV_DTYPE_F16 : QV_DTYPE_BF16;
        if (mats[i].dtype == want) { /* stored as the pool stores it: raw copy */
            w_put_raw(&w, mats[i].data, n);
        } else if (mats[i].dtype == QV_DTYPE_F32) {
            const float *d = mats[i].data;
            if (!d) /* room the caller fills on the device: zeros until then */
                for (int64_t j = 0; j < n; j++)
                    w_put(&w, 0);
            else if (p->fp16)
                for (int64_t j = 0; j < n; j++)
                    w_put(&w, qv_f32_to_f16(d[j]));
            else
                for (int64_t j = 0; j < n; j++)
                    w_put(&w, qv_f32_to_bf16(d[j]));
        } else { /* the other 16-bit type: widen (exact), round */
            const uint16_t *d = mats[i].data;
            const bool src_f16 = mats[i].dtype == QV_DTYPE_F16;
            for (int64_t j = 0; j < n; j++) {
                float f = src_f16 ? qv_f16_to_f32(d[j]) : qv_bf16_to_f32(d[j]);
                w_put(&w, p->fp16 ? qv_f32_to_f16(f) : qv_f32_to_bf16(f));
            }
        }
        pos += (size_t)n * 2u;
    }
    w_flush(&w);
    if (!w.ok || !CU_OK(cudaEventRecord(p->ready[s], p->copy))) goto fail;
    p->loads++;
    if (slot) *slot = s;
    return QV_OK;
fail:
    qv_free(p->slots[s].offs);
    p->slots[s] = (pool_slot){0};
    qv_adapter_pages_remove(p->pages, s, err);
    return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: copy of version %016llx failed",
                     (unsigned long long)key);
}

int qv_cuda_adapter_pool_find(const qv_cuda_adapter_pool *p, uint64_t key) {
    return qv_adapter_pages_find(p->pages, key);
}

const void *qv_cuda_adapter_pool_mat(const qv_cuda_adapter_pool *p, int slot, int i) {
    QV_ASSERT(slot >= 0 && slot < p->max_entries && p->slots[slot].offs);
    QV_ASSERT(i >= 0 && i < p->slots[slot].n_mats);
    return p->base + (size_t)qv_adapter_pages_first(p->pages, slot) * p->page_bytes +
           p->slots[slot].offs[i];
}

void *qv_cuda_adapter_pool_room(qv_cuda_adapter_pool *p, int slot, int i) {
    QV_ASSERT(slot >= 0 && slot < p->max_entries && p->slots[slot].offs);
    QV_ASSERT(i >= 0 && i < p->slots[slot].n_mats);
    return p->base + (size_t)qv_adapter_pages_first(p->pages, slot) * p->page_bytes +
           p->slots[slot].offs[i];
}

void qv_cuda_adapter_pool_acquire(qv_cuda_adapter_pool *p, int slot) {
    qv_adapter_pages_ref(p->pages, slot);
}

void qv_cuda_adapter_pool_release(qv_cuda_adapter_pool *p, int slot) {
    qv_adapter_pages_unref(p->pages, slot);
}

void qv_cuda_adapter_pool_pin(qv_cuda_adapter_pool *p, int slot, bool pinned) {
    qv_adapter_pages_pin(p->pages, slot, pinned);
}

bool qv_cuda_adapter_pool_ready(qv_cuda_adapter_pool *p, int slot) {
    QV_ASSERT(slot >= 0 && slot < p->max_entries && p->slots[slot].offs);
    pool_slot *ps = &p->slots[slot];
    if (!ps->pending) return true;
    cudaError_t e = cudaEventQuery(p->ready[slot]);
    if (e == cudaSuccess) {
        ps->pending = false;
        return true;
    }
    if (e == cudaErrorNotReady)
        (void)cudaGetLastError();
    else
        CU_OK(e);
    return false;
}

qv_status qv_cuda_adapter_pool_use(qv_cuda_adapter_pool *p, int slot, qv_error *err) {
    if (qv_cuda_adapter_pool_ready(p, slot)) return QV_OK;
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (!CU_OK(cudaStreamIsCapturing(p->compute, &cap)))
        return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: stream query failed");
    if (cap != cudaStreamCaptureStatusNone)
        return qv_errorf(err, QV_ERR_BUSY, "cuda adapter pool: copy pending during a capture");
    if (!CU_OK(cudaStreamWaitEvent(p->compute, p->ready[slot], 0)))
        return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: stream wait failed");
    return QV_OK;
}

void qv_cuda_adapter_pool_stats(const qv_cuda_adapter_pool *p, qv_cuda_pool_stats *out) {
    memset(out, 0, sizeof(*out));
    qv_adapter_pages_stats_get(p->pages, &out->pages);
    out->page_bytes = p->page_bytes;
    out->loads = p->loads;
    out->hits = p->hits;
    out->bytes_copied = p->bytes_copied;
    out->staging_waits = p->staging_waits;
}

size_t qv_cuda_adapter_pool_footprint(const qv_cuda_adapter_pool *p, const qv_cuda_pool_mat *mats,
                                      int n_mats) {
    size_t *sizes = qv_malloc((size_t)(n_mats > 0 ? n_mats : 1) * 2 * sizeof(size_t));
    if (!sizes) return SIZE_MAX;
    for (int i = 0; i < n_mats; i++)
        sizes[i] = (size_t)mats[i].n_elems * 2u;
    size_t total = qv_adapter_pages_layout(sizes, n_mats, MAT_ALIGN, sizes + n_mats);
    qv_free(sizes);
    return (size_t)qv_adapter_pages_needed(total, p->page_bytes) * p->page_bytes;
}

size_t qv_cuda_adapter_pool_bytes(const qv_cuda_adapter_pool *p) {
    qv_adapter_pages_stats st;
    qv_adapter_pages_stats_get(p->pages, &st);
    return (size_t)st.n_pages * p->page_bytes;
}
