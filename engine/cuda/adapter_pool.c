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
 * Host tier: the same image at the same offsets in pinned pages (adapter_pages.c again), so a
 * device load from it is one cudaMemcpyAsync; the tier entry holds a reference while it is
 * being converted and while a copy from it may be in flight (an event per entry, polled). The
 * converter thread takes queued jobs in order; job states change under `mu`, and the engine
 * thread integrates finished ones (harvest) at the start of every pool call.
 * Thread: the engine thread, plus the converter thread (conv_main).
 */
#include "cuda/adapter_pool.h"

#include <pthread.h>
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

#define MAX_JOBS 64
enum { J_FREE, J_QUEUED, J_RUNNING, J_DONE };

/* A host tier entry. */
typedef struct host_slot {
    size_t *offs; /* [n_mats] */
    int n_mats;
    size_t total; /* image bytes */
    int job;      /* its conversion job while the image is incomplete, else -1 */
    bool copying; /* a device copy from it may be in flight (holds a reference) */
} host_slot;

/* A conversion for the converter thread: mats into dst (a tier image). */
typedef struct conv_job {
    int state; /* J_*, under mu */
    uint64_t order;
    int hslot;
    unsigned char *dst;
    qv_cuda_pool_mat *mats; /* owned array; the data belongs to `owner` */
    size_t *offs;           /* owned */
    int n_mats;
    size_t total;
    const void *owner;
} conv_job;

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
    /* pinned host tier (hpages NULL: none) */
    qv_adapter_pages *hpages;
    unsigned char *hbase;
    host_slot *hslots;    /* [max_entries] */
    cudaEvent_t *hcopied; /* [max_entries]: recorded after a copy from the entry */
    int *hcopying;        /* [max_entries]: entries with copying set */
    int n_hcopying;
    uint64_t host_hits, fills_async, fills_sync, job_waits, jobs_cancelled;
    /* converter thread */
    pthread_t conv;
    bool conv_started;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;
    bool stop, hold;
    conv_job jobs[MAX_JOBS];
    uint64_t job_order;
};

static int cu_ok(cudaError_t e, const char *stmt, const char *file, int line) {
    if (e == cudaSuccess) return 1;
    QV_LOGE("cuda: %s failed: %s (%s:%d)", stmt, cudaGetErrorString(e), file, line);
    /* an API call's error is also the thread's last error: clear it, or the next kernel
     * launch's check (cudaGetLastError) would report it and fail the compute backend */
    (void)cudaGetLastError();
    return 0;
}
#define CU_OK(call) cu_ok((call), #call, __FILE__, __LINE__)

static void on_evict(void *user, uint64_t key, int slot) {
    (void)key;
    qv_cuda_adapter_pool *p = user;
    qv_free(p->slots[slot].offs);
    p->slots[slot] = (pool_slot){0};
}

static void on_evict_host(void *user, uint64_t key, int slot) {
    (void)key;
    qv_cuda_adapter_pool *p = user;
    qv_free(p->hslots[slot].offs);
    p->hslots[slot] = (host_slot){.job = -1};
}

/* ---- conversion to the pool's half type ---- */

/* Values [j0, j0 + n) of matrix m as the pool stores them (NULL F32 data: zeros). */
static void convert_run(uint16_t *out, const qv_cuda_pool_mat *m, int64_t j0, int64_t n, int fp16) {
    const enum qv_dtype want = fp16 ? QV_DTYPE_F16 : QV_DTYPE_BF16;
    if (m->dtype == want) { /* stored as the pool stores it: raw copy */
        memcpy(out, (const uint16_t *)m->data + j0, (size_t)n * 2u);
    } else if (m->dtype == QV_DTYPE_F32) {
        const float *d = m->data;
        if (!d) /* room the caller fills on the device: zeros until then */
            memset(out, 0, (size_t)n * 2u);
        else if (fp16)
            for (int64_t j = 0; j < n; j++)
                out[j] = qv_f32_to_f16(d[j0 + j]);
        else
            for (int64_t j = 0; j < n; j++)
                out[j] = qv_f32_to_bf16(d[j0 + j]);
    } else { /* the other 16-bit type: widen (exact), round */
        const uint16_t *d = m->data;
        const bool src_f16 = m->dtype == QV_DTYPE_F16;
        for (int64_t j = 0; j < n; j++) {
            float f = src_f16 ? qv_f16_to_f32(d[j0 + j]) : qv_bf16_to_f32(d[j0 + j]);
            out[j] = fp16 ? qv_f32_to_f16(f) : qv_f32_to_bf16(f);
        }
    }
}

/* The whole image into dst: matrices at offs, padding zeroed. Thread: any. */
static void fill_image(unsigned char *dst, const qv_cuda_pool_mat *mats, const size_t *offs,
                       int n_mats, size_t total, int fp16) {
    size_t pos = 0;
    for (int i = 0; i < n_mats; i++) {
        memset(dst + pos, 0, offs[i] - pos);
        convert_run((uint16_t *)(void *)(dst + offs[i]), &mats[i], 0, mats[i].n_elems, fp16);
        pos = offs[i] + (size_t)mats[i].n_elems * 2u;
    }
    memset(dst + pos, 0, total - pos);
}

/* ---- the converter thread ---- */

static int next_job(const qv_cuda_adapter_pool *p) {
    int best = -1;
    for (int j = 0; j < MAX_JOBS; j++)
        if (p->jobs[j].state == J_QUEUED && (best < 0 || p->jobs[j].order < p->jobs[best].order))
            best = j;
    return best;
}

static void *conv_main(void *arg) {
    qv_cuda_adapter_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        int j = -1;
        while (!p->stop && (p->hold || (j = next_job(p)) < 0))
            pthread_cond_wait(&p->cv_work, &p->mu);
        if (p->stop) break;
        conv_job *jb = &p->jobs[j];
        jb->state = J_RUNNING;
        pthread_mutex_unlock(&p->mu);
        fill_image(jb->dst, jb->mats, jb->offs, jb->n_mats, jb->total, p->fp16);
        pthread_mutex_lock(&p->mu);
        jb->state = J_DONE;
        pthread_cond_broadcast(&p->cv_done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void job_free(conv_job *jb) {
    qv_free(jb->mats);
    qv_free(jb->offs);
    *jb = (conv_job){.state = J_FREE};
}

/* Engine thread: integrates finished conversions and completed copies from the tier. */
static void harvest(qv_cuda_adapter_pool *p) {
    if (!p->hpages) return;
    pthread_mutex_lock(&p->mu);
    for (int j = 0; j < MAX_JOBS; j++) {
        conv_job *jb = &p->jobs[j];
        if (jb->state != J_DONE) continue;
        p->hslots[jb->hslot].job = -1;
        qv_adapter_pages_unref(p->hpages, jb->hslot);
        p->fills_async++;
        job_free(jb);
    }
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_hcopying;) {
        const int h = p->hcopying[i];
        cudaError_t e = cudaEventQuery(p->hcopied[h]);
        if (e == cudaErrorNotReady) {
            (void)cudaGetLastError();
            i++;
            continue;
        }
        CU_OK(e);
        p->hslots[h].copying = false;
        qv_adapter_pages_unref(p->hpages, h);
        p->hcopying[i] = p->hcopying[--p->n_hcopying];
    }
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
    const size_t h_pages = o->host_bytes / page;
    if (h_pages > 0) {
        if (h_pages > INT32_MAX) {
            st = qv_errorf(err, QV_ERR_INVALID, "cuda adapter pool: host tier of %zu bytes",
                           o->host_bytes);
            goto fail;
        }
        p->hslots = qv_calloc((size_t)max_entries, sizeof(host_slot));
        p->hcopied = qv_calloc((size_t)max_entries, sizeof(cudaEvent_t));
        p->hcopying = qv_calloc((size_t)max_entries, sizeof(int));
        if (!p->hslots || !p->hcopied || !p->hcopying) {
            st = qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
            goto fail;
        }
        for (int i = 0; i < max_entries; i++)
            p->hslots[i].job = -1;
        st = qv_adapter_pages_create((int)h_pages, max_entries, on_evict_host, p, &p->hpages, err);
        if (st != QV_OK) goto fail;
        st = QV_ERR_DEVICE;
        e = cudaHostAlloc((void **)&p->hbase, h_pages * page, cudaHostAllocDefault);
        if (e != cudaSuccess) {
            (void)cudaGetLastError();
            p->hbase = NULL;
            st = qv_errorf(err, QV_ERR_NOMEM,
                           "cuda adapter pool: cannot pin %zu bytes of host memory for the host "
                           "tier: %s",
                           h_pages * page, cudaGetErrorString(e));
            goto fail;
        }
        for (int i = 0; i < max_entries; i++)
            if (!CU_OK(cudaEventCreateWithFlags(&p->hcopied[i], cudaEventDisableTiming)))
                goto fail_dev;
        if (pthread_mutex_init(&p->mu, NULL) != 0) goto fail_dev;
        if (pthread_cond_init(&p->cv_work, NULL) != 0) {
            pthread_mutex_destroy(&p->mu);
            goto fail_dev;
        }
        if (pthread_cond_init(&p->cv_done, NULL) != 0) {
            pthread_cond_destroy(&p->cv_work);
            pthread_mutex_destroy(&p->mu);
            goto fail_dev;
        }
        if (pthread_create(&p->conv, NULL, conv_main, p) != 0) {
            pthread_cond_destroy(&p->cv_done);
            pthread_cond_destroy(&p->cv_work);
            pthread_mutex_destroy(&p->mu);
            goto fail_dev;
        }
        p->conv_started = true;
    }
    QV_LOGI("cuda adapter pool: %d pages of %zu KiB (%.1f MiB), %d x %zu KiB pinned staging, "
            "pinned host tier %.1f MiB, %d versions at most",
            n_pages, page >> 10, (double)((size_t)n_pages * page) / 1048576.0, N_STAGE,
            p->stage_bytes >> 10, (double)(h_pages * page) / 1048576.0, max_entries);
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
    if (p->conv_started) {
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_broadcast(&p->cv_work);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->conv, NULL);
        pthread_cond_destroy(&p->cv_done);
        pthread_cond_destroy(&p->cv_work);
        pthread_mutex_destroy(&p->mu);
    }
    for (int j = 0; j < MAX_JOBS; j++)
        job_free(&p->jobs[j]);
    if (p->copy) CU_OK(cudaStreamSynchronize(p->copy));
    if (p->hbase) CU_OK(cudaFreeHost(p->hbase));
    if (p->hcopied)
        for (int i = 0; i < p->max_entries; i++)
            if (p->hcopied[i]) CU_OK(cudaEventDestroy(p->hcopied[i]));
    if (p->hslots)
        for (int i = 0; i < p->max_entries; i++)
            qv_free(p->hslots[i].offs);
    qv_adapter_pages_destroy(p->hpages);
    qv_free(p->hslots);
    qv_free(p->hcopied);
    qv_free(p->hcopying);
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

/* Values [0, n) of matrix m (NULL: zeros) through the staging slots, a slot's room at a time. */
static void w_put(writer *w, const qv_cuda_pool_mat *m, int64_t n) {
    static const qv_cuda_pool_mat zeros = {.dtype = QV_DTYPE_F32};
    if (!m) m = &zeros;
    for (int64_t j0 = 0; j0 < n && w->ok;) {
        size_t room = (w->p->stage_bytes - w->used) / 2u;
        if (room == 0) {
            w_flush(w);
            continue;
        }
        const int64_t k = (int64_t)QV_MIN((size_t)(n - j0), room);
        convert_run((uint16_t *)(void *)(w->p->stage[w->p->stage_next] + w->used), m, j0, k,
                    w->p->fp16);
        w->used += (size_t)k * 2u;
        j0 += k;
    }
}

static qv_status check_mats(const qv_cuda_pool_mat *mats, int n_mats, qv_error *err) {
    if (n_mats < 1 || !mats)
        return qv_errorf(err, QV_ERR_INVALID, "cuda adapter pool: a version without matrices");
    for (int i = 0; i < n_mats; i++)
        if (mats[i].n_elems < 0 ||
            (mats[i].n_elems > 0 && !mats[i].data && mats[i].dtype != QV_DTYPE_F32) ||
            (mats[i].dtype != QV_DTYPE_F32 && mats[i].dtype != QV_DTYPE_F16 &&
             mats[i].dtype != QV_DTYPE_BF16))
            return qv_errorf(err, QV_ERR_INVALID, "cuda adapter pool: matrix %d is malformed", i);
    return QV_OK;
}

static qv_status not_capturing(qv_cuda_adapter_pool *p, qv_error *err) {
    enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    if (!CU_OK(cudaStreamIsCapturing(p->compute, &cap)))
        return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: stream query failed");
    if (cap != cudaStreamCaptureStatusNone)
        return qv_errorf(err, QV_ERR_BUSY, "cuda adapter pool: load during a graph capture");
    return QV_OK;
}

/* The image layout of mats: offsets (owned by the caller) and total bytes. NULL on NOMEM. */
static size_t *layout(const qv_cuda_pool_mat *mats, int n_mats, size_t *total) {
    size_t *offs = qv_malloc((size_t)n_mats * sizeof(size_t));
    size_t *sizes = qv_malloc((size_t)n_mats * sizeof(size_t));
    if (!offs || !sizes) {
        qv_free(offs);
        qv_free(sizes);
        return NULL;
    }
    for (int i = 0; i < n_mats; i++)
        sizes[i] = (size_t)mats[i].n_elems * 2u;
    *total = qv_adapter_pages_layout(sizes, n_mats, MAT_ALIGN, offs);
    qv_free(sizes);
    return offs;
}

/* Places `key` on device pages; *offs is taken over (freed on failure). */
static qv_status place(qv_cuda_adapter_pool *p, uint64_t key, size_t **offs, int n_mats,
                       size_t total, int *s, qv_error *err) {
    qv_status st = qv_adapter_pages_alloc(p->pages, key,
                                          qv_adapter_pages_needed(total, p->page_bytes), s, err);
    if (st != QV_OK) {
        qv_free(*offs);
        *offs = NULL;
        return st;
    }
    p->slots[*s] = (pool_slot){.offs = *offs, .n_mats = n_mats, .pending = true};
    *offs = NULL;
    /* copies after every compute operation enqueued so far (readers of evicted pages) */
    if (!CU_OK(cudaEventRecord(p->compute_mark, p->compute)) ||
        !CU_OK(cudaStreamWaitEvent(p->copy, p->compute_mark, 0)))
        return QV_ERR_DEVICE;
    return QV_OK;
}

static qv_status copy_failed(qv_cuda_adapter_pool *p, uint64_t key, int s, qv_error *err) {
    qv_free(p->slots[s].offs);
    p->slots[s] = (pool_slot){0};
    qv_adapter_pages_remove(p->pages, s, err);
    return qv_errorf(err, QV_ERR_DEVICE, "cuda adapter pool: copy of version %016llx failed",
                     (unsigned long long)key);
}

/* Device load of tier entry h (its image complete): one copy. */
static qv_status load_from_host(qv_cuda_adapter_pool *p, uint64_t key, int h, int *slot,
                                qv_error *err) {
    const host_slot *hs = &p->hslots[h];
    size_t *offs = qv_malloc((size_t)hs->n_mats * sizeof(size_t));
    if (!offs) return qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    memcpy(offs, hs->offs, (size_t)hs->n_mats * sizeof(size_t));
    int s = -1;
    qv_status st = place(p, key, &offs, hs->n_mats, hs->total, &s, err);
    if (st == QV_ERR_DEVICE) return copy_failed(p, key, s, err);
    if (st != QV_OK) return st;
    unsigned char *dev = p->base + (size_t)qv_adapter_pages_first(p->pages, s) * p->page_bytes;
    const unsigned char *src =
        p->hbase + (size_t)qv_adapter_pages_first(p->hpages, h) * p->page_bytes;
    if (!CU_OK(cudaMemcpyAsync(dev, src, hs->total, cudaMemcpyHostToDevice, p->copy)) ||
        !CU_OK(cudaEventRecord(p->ready[s], p->copy)) ||
        !CU_OK(cudaEventRecord(p->hcopied[h], p->copy)))
        return copy_failed(p, key, s, err);
    if (!hs->copying) { /* the tier keeps the image until the copy is done */
        p->hslots[h].copying = true;
        qv_adapter_pages_ref(p->hpages, h);
        p->hcopying[p->n_hcopying++] = h;
    } else {
        qv_adapter_pages_touch(p->hpages, h);
    }
    p->bytes_copied += hs->total;
    p->loads++;
    p->host_hits++;
    if (slot) *slot = s;
    return QV_OK;
}

/* Places `key` in the host tier (image not yet written; the entry holds a reference until it
 * is). Errors: QV_ERR_BUSY / QV_ERR_DEVICE_OOM (no room), QV_ERR_NOMEM. */
static qv_status host_place(qv_cuda_adapter_pool *p, uint64_t key, const qv_cuda_pool_mat *mats,
                            int n_mats, int *h, qv_error *err) {
    size_t total = 0;
    size_t *offs = layout(mats, n_mats, &total);
    if (!offs) return qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    qv_status st = qv_adapter_pages_alloc(p->hpages, key,
                                          qv_adapter_pages_needed(total, p->page_bytes), h, err);
    if (st != QV_OK) {
        *h = -1;
        qv_free(offs);
        return st;
    }
    p->hslots[*h] = (host_slot){.offs = offs, .n_mats = n_mats, .total = total, .job = -1};
    qv_adapter_pages_ref(p->hpages, *h);
    return QV_OK;
}

static unsigned char *host_image(qv_cuda_adapter_pool *p, int h) {
    return p->hbase + (size_t)qv_adapter_pages_first(p->hpages, h) * p->page_bytes;
}

/* Makes tier entry h's image complete for a load that needs it now: a queued conversion is
 * taken over (converted here), a running one waited for. */
static void host_complete(qv_cuda_adapter_pool *p, int h, const qv_cuda_pool_mat *mats) {
    pthread_mutex_lock(&p->mu);
    const int j = p->hslots[h].job;
    if (j >= 0 && p->jobs[j].state == J_QUEUED) {
        job_free(&p->jobs[j]);
        p->jobs_cancelled++;
        pthread_mutex_unlock(&p->mu);
        const host_slot *hs = &p->hslots[h];
        fill_image(host_image(p, h), mats, hs->offs, hs->n_mats, hs->total, p->fp16);
        p->hslots[h].job = -1;
        qv_adapter_pages_unref(p->hpages, h);
        p->fills_sync++;
        return;
    }
    if (j >= 0 && p->jobs[j].state == J_RUNNING) p->job_waits++;
    while (j >= 0 && p->jobs[j].state == J_RUNNING)
        pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    harvest(p);
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
    qv_status st = check_mats(mats, n_mats, err);
    if (st == QV_OK) st = not_capturing(p, err);
    if (st != QV_OK) return st;
    harvest(p);
    if (p->hpages) {
        int h = qv_adapter_pages_find(p->hpages, key);
        if (h >= 0 && p->hslots[h].job >= 0) {
            host_complete(p, h, mats);
        } else if (h < 0 && host_place(p, key, mats, n_mats, &h, err) == QV_OK) {
            const host_slot *hs = &p->hslots[h];
            fill_image(host_image(p, h), mats, hs->offs, hs->n_mats, hs->total, p->fp16);
            qv_adapter_pages_unref(p->hpages, h);
            p->fills_sync++;
        }
        /* no room in the tier (everything in use): through the staging slots */
        if (h >= 0) return load_from_host(p, key, h, slot, err);
    }
    size_t total = 0;
    size_t *offs = layout(mats, n_mats, &total);
    if (!offs) return qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    st = place(p, key, &offs, n_mats, total, &s, err);
    if (st == QV_ERR_DEVICE) return copy_failed(p, key, s, err);
    if (st != QV_OK) return st;
    const size_t *po = p->slots[s].offs;
    writer w = {.p = p,
                .dev = p->base + (size_t)qv_adapter_pages_first(p->pages, s) * p->page_bytes,
                .ok = 1};
    w_acquire(&w);
    size_t pos = 0;
    for (int i = 0; i < n_mats && w.ok; i++) {
        w_put(&w, NULL, (int64_t)(po[i] - pos) / 2);
        w_put(&w, &mats[i], mats[i].n_elems);
        pos = po[i] + (size_t)mats[i].n_elems * 2u;
    }
    w_flush(&w);
    if (!w.ok || !CU_OK(cudaEventRecord(p->ready[s], p->copy))) return copy_failed(p, key, s, err);
    p->loads++;
    if (slot) *slot = s;
    return QV_OK;
}

qv_status qv_cuda_adapter_pool_prefetch(qv_cuda_adapter_pool *p, uint64_t key,
                                        const qv_cuda_pool_mat *mats, int n_mats, const void *owner,
                                        int *slot, qv_error *err) {
    if (!p->hpages) return qv_cuda_adapter_pool_load(p, key, mats, n_mats, slot, err);
    *slot = -1;
    int s = qv_adapter_pages_find(p->pages, key);
    if (s >= 0) {
        qv_adapter_pages_touch(p->pages, s);
        p->hits++;
        *slot = s;
        return QV_OK;
    }
    qv_status st = check_mats(mats, n_mats, err);
    if (st == QV_OK) st = not_capturing(p, err);
    if (st != QV_OK) return st;
    harvest(p);
    int h = qv_adapter_pages_find(p->hpages, key);
    if (h >= 0) {
        if (p->hslots[h].job >= 0) return QV_OK; /* still converting */
        return load_from_host(p, key, h, slot, err);
    }
    pthread_mutex_lock(&p->mu);
    int j = 0;
    while (j < MAX_JOBS && p->jobs[j].state != J_FREE)
        j++;
    pthread_mutex_unlock(&p->mu);
    if (j == MAX_JOBS)
        return qv_errorf(err, QV_ERR_BUSY, "cuda adapter pool: %d conversions queued", MAX_JOBS);
    qv_cuda_pool_mat *m = qv_malloc((size_t)n_mats * sizeof(*m));
    size_t *offs = qv_malloc((size_t)n_mats * sizeof(size_t));
    if (!m || !offs || (st = host_place(p, key, mats, n_mats, &h, err)) != QV_OK) {
        qv_free(m);
        qv_free(offs);
        if (st == QV_ERR_DEVICE_OOM) /* larger than the whole tier: staged the old way */
            return qv_cuda_adapter_pool_load(p, key, mats, n_mats, slot, err);
        return st != QV_OK ? st : qv_errorf(err, QV_ERR_NOMEM, "cuda adapter pool: out of memory");
    }
    memcpy(m, mats, (size_t)n_mats * sizeof(*m));
    memcpy(offs, p->hslots[h].offs, (size_t)n_mats * sizeof(size_t));
    p->hslots[h].job = j;
    pthread_mutex_lock(&p->mu);
    p->jobs[j] = (conv_job){.state = J_QUEUED,
                            .order = ++p->job_order,
                            .hslot = h,
                            .dst = host_image(p, h),
                            .mats = m,
                            .offs = offs,
                            .n_mats = n_mats,
                            .total = p->hslots[h].total,
                            .owner = owner};
    pthread_cond_signal(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
    return QV_OK;
}

void qv_cuda_adapter_pool_forget(qv_cuda_adapter_pool *p, const void *owner) {
    if (!p || !p->hpages) return;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        bool running = false;
        for (int j = 0; j < MAX_JOBS; j++) {
            conv_job *jb = &p->jobs[j];
            if (jb->owner != owner) continue;
            if (jb->state == J_RUNNING) running = true;
            if (jb->state != J_QUEUED) continue;
            const int h = jb->hslot;
            job_free(jb);
            p->jobs_cancelled++;
            p->hslots[h].job = -1;
            qv_adapter_pages_unref(p->hpages, h);
            qv_adapter_pages_remove(p->hpages, h, NULL); /* never written: not an image */
            on_evict_host(p, 0, h);
        }
        if (!running) break;
        pthread_cond_wait(&p->cv_done, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    harvest(p);
}

void qv_cuda_adapter_pool_hold_jobs(qv_cuda_adapter_pool *p, bool hold) {
    if (!p->hpages) return;
    pthread_mutex_lock(&p->mu);
    p->hold = hold;
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
}

void qv_cuda_adapter_pool_drain_jobs(qv_cuda_adapter_pool *p) {
    if (!p->hpages) return;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        bool busy = false;
        for (int j = 0; j < MAX_JOBS; j++)
            busy |= p->jobs[j].state == J_QUEUED || p->jobs[j].state == J_RUNNING;
        if (!busy) break;
        pthread_cond_wait(&p->cv_done, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    harvest(p);
}
int qv_cuda_adapter_pool_find(const qv_cuda_adapter_pool *p, uint64_t key) {
    return qv_adapter_pages_find(p->pages, key);
}

bool qv_cuda_adapter_pool_known(const qv_cuda_adapter_pool *p, uint64_t key) {
    return qv_adapter_pages_find(p->pages, key) >= 0 ||
           (p->hpages && qv_adapter_pages_find(p->hpages, key) >= 0);
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
    if (p->hpages) qv_adapter_pages_stats_get(p->hpages, &out->host_pages);
    out->host_hits = p->host_hits;
    out->host_fills_async = p->fills_async;
    out->host_fills_sync = p->fills_sync;
    out->host_job_waits = p->job_waits;
    out->host_jobs_cancelled = p->jobs_cancelled;
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

size_t qv_cuda_adapter_pool_host_bytes(const qv_cuda_adapter_pool *p) {
    if (!p->hpages) return 0;
    qv_adapter_pages_stats st;
    qv_adapter_pages_stats_get(p->hpages, &st);
    return (size_t)st.n_pages * p->page_bytes;
}
