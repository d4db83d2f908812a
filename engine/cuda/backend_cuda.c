/*
 * backend_cuda.c - the CUDA backend: creation and weight upload, the vtable (C, designated
 * initializers), cuBLAS projections, the device arena behind be->iface->alloc, and staging of
 * per-step host metadata. Kernels are in cuda_kernels.cu; see backend_cuda.h for the contract.
 *
 * Invariants: every CUDA/cuBLAS call goes through CU_OK/BLAS_OK (logs statement, file, line and
 * makes the failure sticky); after a failure every op returns at once and `download` reports
 * it. Metadata staging: host arrays are copied into a pinned ring and uploaded with
 * cudaMemcpyAsync on the compute stream; the ring is reset only after the stream has been
 * synchronised (download, or when it fills up), so a pinned slot is never rewritten while its
 * copy may still be pending. A staged array is reused within a step when the same host pointer
 * is staged again with identical bytes (compared on the host), so the positions and page tables
 * of a batch travel once per step, not once per layer. The bf16 copy of a GEMM input is cached
 * until the next op that writes backend memory, so q/k/v (and gate/up) share one conversion.
 * Deferred launches (flush_pending, run before any op that could read their outputs): GEMVs on
 * one input are grouped; with the issue-6 switches (qv_cuda_tuning) an RMSNorm waits to become
 * the next group's prologue, a gate/up group takes the SwiGLU that follows as its epilogue (its
 * half output goes to the second GEMM-input buffer; the two swap and are reset at step_begin so
 * recorded graphs see the same pointers), and the RoPE of q and k waits for the KV store. A
 * deferred launch never reads staging that a ring reset could overwrite (room_without_reset).
 * Thread: confined to the creating thread.
 */
#include "cuda/backend_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "cuda/cuda_kernels.h"
#include "cuda/sample.h"
#include "cuda/sgmv.h"

#define ALIGN 256
#define MAX_ALLOCS 256
#define MAX_STAGED 32
#define BLAS_WS_BYTES ((size_t)32 << 20)

typedef struct wentry {
    const void *key; /* host data pointer */
    void *dev;
    int is_f32; /* 1-D F32 (norms, biases) */
    int fp16;
    int64_t n_rows, n_cols;
} wentry;

typedef struct staged {
    const void *key;
    size_t off, bytes;
} staged;

enum cuda_mode { MODE_EAGER = 0, MODE_CAPTURE, MODE_REPLAY };

typedef struct graph_entry {
    uint64_t key, sig; /* forward's shape key; hash of every op's parameters */
    long launches;     /* kernels and GEMMs recorded */
    cudaGraphExec_t exec;
    uint64_t last_use;
} graph_entry;

/* recorded step shapes kept (LRU): a decode batch size is one shape per running count, so a
 * server whose batch drifts between sizes keeps up to this many (it was 8) */
#define MAX_GRAPHS 32

typedef struct cuda_ctx {
    int device;
    /* CUDA graphs of whole forward steps (step_begin .. download) */
    int graphs_on;
    enum cuda_mode mode;
    uint64_t sig, key, clock;
    graph_entry graphs[MAX_GRAPHS];
    int cur_graph;
    /* Deferred launches merged with the next compatible call: GEMVs on the same input (q/k/v,
     * gate/up) and the RoPE of q then k. Every other op flushes them first. */
    struct {
        int active, fp16, cols, nr;
        const float *xs;
        size_t ne;
        qv_cuda_gemv_segs g;
        /* fused RMSNorm prologue (norm != 0): input nx normalised with nw/eps into ny */
        int norm;
        const float *nx, *nw;
        float eps;
        float *ny;
        float *sw_out; /* fused SwiGLU epilogue output, or NULL */
    } pg;
    struct { /* a deferred RMSNorm (fuse_norm): folded into the next GEMV group on y */
        int active, n, dim;
        const float *x, *dw;
        float eps;
        float *y;
    } pn;
    struct {
        int active, n, heads, hd;
        float *x;
        const int32_t *dp;
        const float *df;
        int both; /* fuse_rope_kv: k (x2, h2) rotated too, waiting for kv_store */
        float *x2;
        int h2;
    } pr;
    qv_cuda_tuning tune;
    qv_cuda_stats stats;
    long step_launches;   /* kernels and GEMMs enqueued since step_begin (eager or capture) */
    double t_step;        /* qv_time_s() at step_begin, 0 outside a step */
    cudaEvent_t ev0, ev1; /* device span of a step: first op or graph launch .. download */
    int ev_pending;
    uint64_t seen[16]; /* keys seen once: recorded only when they come back */
    int seen_next;
    int act_fp16; /* half type of GEMM inputs written by fused kernels (the model's) */
    cudaStream_t stream;
    cublasHandle_t blas;
    int failed;
    /* weights */
    unsigned char *w_base;
    size_t w_size, w_used;
    wentry *wmap;
    int n_w, cap_w;
    int sorted;
    /* arena behind alloc/free */
    unsigned char *a_base;
    size_t a_size, a_used;
    struct {
        size_t off;
        int live;
    } allocs[MAX_ALLOCS];
    int n_allocs;
    /* GEMM input in half precision */
    void *blas_ws; /* cuBLAS workspace, set once so GEMMs never allocate */
    void *xh;
    void *xh_bufs[2]; /* xh is one of these; the fused SwiGLU writes the other, then they swap */
    size_t xh_elems;
    const float *xh_src;
    size_t xh_n;
    int xh_fp16;
    /* metadata staging */
    unsigned char *m_host, *m_dev;
    size_t m_size, m_used;
    staged st[MAX_STAGED];
    int n_st, st_next;
    int32_t *flat; /* host scratch for flattened page tables, m_size bytes */
} cuda_ctx;

static cuda_ctx *ctx_of(qv_backend *be) { return be->ctx; }

static int cu_ok(cuda_ctx *cx, cudaError_t e, const char *stmt, const char *file, int line) {
    if (e == cudaSuccess) return 1;
    QV_LOGE("cuda: %s failed: %s (%s:%d)", stmt, cudaGetErrorString(e), file, line);
    if (cx) cx->failed = 1;
    return 0;
}
static int blas_ok(cuda_ctx *cx, cublasStatus_t e, const char *stmt, const char *file, int line) {
    if (e == CUBLAS_STATUS_SUCCESS) return 1;
    QV_LOGE("cuda: %s failed: cublas status %d (%s:%d)", stmt, (int)e, file, line);
    if (cx) cx->failed = 1;
    return 0;
}
static int k_ok(cuda_ctx *cx, int rc, const char *stmt, const char *file, int line) {
    if (rc == 0) return 1;
    QV_LOGE("cuda: %s failed (%s:%d)", stmt, file, line);
    cx->failed = 1;
    return 0;
}
static int fail_msg(cuda_ctx *cx, const char *what) {
    QV_LOGE("cuda: %s", what);
    cx->failed = 1;
    return 0;
}
#define CU_OK(cx, call) cu_ok((cx), (call), #call, __FILE__, __LINE__)
#define BLAS_OK(cx, call) blas_ok((cx), (call), #call, __FILE__, __LINE__)
#define K_OK(cx, call) k_ok((cx), (call), #call, __FILE__, __LINE__)

static size_t align_up(size_t n) { return (n + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

/* ---- weight map ---- */

static int wcmp(const void *a, const void *b) {
    uintptr_t x = (uintptr_t)((const wentry *)a)->key, y = (uintptr_t)((const wentry *)b)->key;
    return x < y ? -1 : x > y;
}

static const wentry *wfind(cuda_ctx *cx, const void *key) {
    if (!key) return NULL;
    if (!cx->sorted) {
        qsort(cx->wmap, (size_t)cx->n_w, sizeof(wentry), wcmp);
        cx->sorted = 1;
    }
    int lo = 0, hi = cx->n_w - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        uintptr_t k = (uintptr_t)cx->wmap[mid].key;
        if (k == (uintptr_t)key) return &cx->wmap[mid];
        if (k < (uintptr_t)key)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

static int is_vector(const qv_tensor *t) { return t->n_rows == 1 && t->dtype == QV_DTYPE_F32; }

static size_t tensor_dev_bytes(const qv_tensor *t) {
    return align_up((size_t)t->n_rows * (size_t)t->n_cols * (is_vector(t) ? 4u : 2u));
}

/* Uploads (or, with seed != 0, generates) one tensor into the weight arena. */
static qv_status add_tensor(cuda_ctx *cx, const qv_tensor *t, int fp16, uint64_t seed,
                            qv_error *err) {
    if (!t->data) return QV_OK;
    for (int i = 0; i < cx->n_w; i++)
        if (cx->wmap[i].key == t->data) return QV_OK; /* tied / shared */
    size_t bytes = tensor_dev_bytes(t);
    if (cx->w_used + bytes > cx->w_size)
        return qv_errorf(err, QV_ERR_DEVICE_OOM, "cuda: weight arena full (%zu of %zu bytes)",
                         cx->w_used, cx->w_size);
    if (cx->n_w == cx->cap_w) {
        int cap = cx->cap_w ? cx->cap_w * 2 : 64;
        wentry *p = qv_realloc(cx->wmap, (size_t)cap * sizeof(wentry));
        if (!p) return qv_errorf(err, QV_ERR_NOMEM, "cuda: out of memory for the weight map");
        cx->wmap = p;
        cx->cap_w = cap;
    }
    void *dev = cx->w_base + cx->w_used;
    const int64_t R = t->n_rows, C = t->n_cols;
    const int vec = is_vector(t);
    if (seed) {
        int ok = vec ? K_OK(cx, qv_cuda_fill_f32(dev, (size_t)C, 1.0f, cx->stream))
                     : K_OK(cx, qv_cuda_fill_random_half(dev, (size_t)(R * C), fp16,
                                                         seed + (uint64_t)cx->n_w * 7919u,
                                                         1.0f / sqrtf((float)C), cx->stream));
        if (!ok) return qv_errorf(err, QV_ERR_DEVICE, "cuda: weight generation failed");
    } else if (vec) {
        if (!CU_OK(cx, cudaMemcpy(dev, t->data, (size_t)C * 4, cudaMemcpyHostToDevice)))
            return qv_errorf(err, QV_ERR_DEVICE, "cuda: weight upload failed");
    } else {
        /* Dequantize to f32 on the host, round to half, copy in chunks of rows. */
        int64_t rows_per = QV_MAX((int64_t)1, ((int64_t)4 << 20) / C);
        if (rows_per > R) rows_per = R;
        float *f = qv_malloc((size_t)C * sizeof(float));
        uint16_t *h = qv_malloc((size_t)(rows_per * C) * sizeof(uint16_t));
        qv_status st = QV_OK;
        if (!f || !h) {
            st = qv_errorf(err, QV_ERR_NOMEM, "cuda: out of memory for upload staging");
        } else {
            for (int64_t r0 = 0; r0 < R && st == QV_OK; r0 += rows_per) {
                int64_t nr = QV_MIN(rows_per, R - r0);
                for (int64_t r = 0; r < nr; r++) {
                    qv_dequantize_row(
                        t->dtype, (const unsigned char *)t->data + (size_t)(r0 + r) * t->row_bytes,
                        f, C);
                    uint16_t *o = h + (size_t)(r * C);
                    for (int64_t c = 0; c < C; c++)
                        o[c] = fp16 ? qv_f32_to_f16(f[c]) : qv_f32_to_bf16(f[c]);
                }
                if (!CU_OK(cx,
                           cudaMemcpy((uint16_t *)dev + (size_t)(r0 * C), h,
                                      (size_t)(nr * C) * sizeof(uint16_t), cudaMemcpyHostToDevice)))
                    st = qv_errorf(err, QV_ERR_DEVICE, "cuda: weight upload failed");
            }
        }
        qv_free(f);
        qv_free(h);
        if (st != QV_OK) return st;
    }
    cx->wmap[cx->n_w++] = (wentry){t->data, dev, vec, fp16, R, C};
    cx->sorted = 0;
    cx->w_used += bytes;
    return QV_OK;
}

/* Calls fn on every weight tensor of the model (biases included when present). */
static qv_status for_each_tensor(const qv_model *m,
                                 qv_status (*fn)(void *u, const qv_tensor *t, qv_error *err),
                                 void *u, qv_error *err) {
    qv_status st;
    const qv_tensor *top[] = {&m->tok_embd, &m->out_norm, &m->lm_head};
    for (size_t i = 0; i < QV_ARRAY_LEN(top); i++)
        if ((st = fn(u, top[i], err)) != QV_OK) return st;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const qv_layer_weights *w = &m->layers[l];
        const qv_tensor *ts[] = {&w->attn_norm, &w->wq,       &w->wk,     &w->wv,
                                 &w->wo,        &w->bq,       &w->bk,     &w->bv,
                                 &w->bo,        &w->ffn_norm, &w->w_gate, &w->w_up,
                                 &w->w_down,    &w->b_gate,   &w->b_up,   &w->b_down};
        for (size_t i = 0; i < QV_ARRAY_LEN(ts); i++)
            if ((st = fn(u, ts[i], err)) != QV_OK) return st;
    }
    return QV_OK;
}

struct size_walk {
    size_t bytes;
    const void *seen[4]; /* tied tensors share data: count once (lm_head vs tok_embd) */
};
static qv_status size_fn(void *u, const qv_tensor *t, qv_error *err) {
    (void)err;
    struct size_walk *w = u;
    if (!t->data) return QV_OK;
    if (t->data == w->seen[0]) return QV_OK;
    w->bytes += tensor_dev_bytes(t);
    return QV_OK;
}
struct upload_walk {
    cuda_ctx *cx;
    int fp16;
    uint64_t seed;
};
static qv_status upload_fn(void *u, const qv_tensor *t, qv_error *err) {
    struct upload_walk *w = u;
    return add_tensor(w->cx, t, w->fp16, w->seed, err);
}

/* ---- metadata staging ---- */

static void ring_reset(cuda_ctx *cx) {
    cx->m_used = 0;
    cx->n_st = 0;
    cx->st_next = 0;
}

/* Makes room for `bytes` of staging in one go (an op stages all its arrays after this call,
 * so a reset in the middle cannot overwrite an array the same op staged before). */
static int ensure_room(cuda_ctx *cx, size_t bytes) {
    if (cx->failed) return 0;
    if (bytes > cx->m_size) return fail_msg(cx, "metadata larger than the staging buffer");
    if (cx->m_used + bytes > cx->m_size) {
        if (cx->mode != MODE_EAGER)
            return fail_msg(cx, "metadata staging full inside a graph step");
        if (!CU_OK(cx, cudaStreamSynchronize(cx->stream))) return 0;
        ring_reset(cx);
    }
    return 1;
}

/* Device copy of host array `p` (bytes). NULL after a failure. */
static const void *stage(cuda_ctx *cx, const void *p, size_t bytes) {
    if (cx->failed) return NULL;
    for (int i = 0; i < cx->n_st; i++) {
        const staged *s = &cx->st[i];
        if (s->key == p && s->bytes == bytes && memcmp(cx->m_host + s->off, p, bytes) == 0)
            return cx->m_dev + s->off;
    }
    size_t need = align_up(bytes ? bytes : 1);
    if (need > cx->m_size) {
        fail_msg(cx, "metadata larger than the staging buffer (raise meta_bytes)");
        return NULL;
    }
    if (cx->m_used + need > cx->m_size) {
        if (cx->mode != MODE_EAGER) {
            fail_msg(cx, "metadata staging full inside a graph step");
            return NULL;
        }
        if (!CU_OK(cx, cudaStreamSynchronize(cx->stream))) return NULL;
        ring_reset(cx);
    }
    size_t off = cx->m_used;
    memcpy(cx->m_host + off, p, bytes);
    /* In a replay the recorded graph holds this copy (from the same pinned bytes). */
    if (cx->mode != MODE_REPLAY &&
        !CU_OK(cx, cudaMemcpyAsync(cx->m_dev + off, cx->m_host + off, bytes, cudaMemcpyHostToDevice,
                                   cx->stream)))
        return NULL;
    cx->m_used += need;
    staged s = {p, off, bytes};
    if (cx->n_st < MAX_STAGED) {
        cx->st[cx->n_st++] = s;
    } else {
        cx->st[cx->st_next] = s;
        cx->st_next = (cx->st_next + 1) % MAX_STAGED;
    }
    return cx->m_dev + off;
}

/* Device pointer of an F32 host vector: a resident weight, else staged. */
static const float *dev_f32(cuda_ctx *cx, const float *p, size_t n) {
    const wentry *e = wfind(cx, p);
    if (e) return e->dev;
    return stage(cx, p, n * sizeof(float));
}

static void invalidate_xh(cuda_ctx *cx) { cx->xh_src = NULL; }

/* Folds an op's parameters into the step signature (splitmix64 steps). */
static void sig_add(cuda_ctx *cx, const uint64_t *v, int n) {
    for (int i = 0; i < n; i++) {
        uint64_t z = cx->sig ^ v[i];
        z += 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        cx->sig = z ^ (z >> 31);
    }
}
#define U(x) ((uint64_t)(uintptr_t)(x))
#define SIG(cx, ...)                                                                               \
    sig_add((cx), (const uint64_t[]){__VA_ARGS__},                                                 \
            (int)(sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t)))
/* Enqueues a launcher call unless the step replays a recorded graph. */
#define RUN(cx, call) ((cx)->mode == MODE_REPLAY ? 1 : ((cx)->step_launches++, K_OK((cx), (call))))

static void set_xh(cuda_ctx *cx, const float *src, size_t n_elems);

/* Launches the deferred GEMV group (old or new kernel, with its fusions), RMSNorm and RoPE, if
 * any, in that order (a deferred RMSNorm and a GEMV group are never pending together: a group
 * on the norm's output takes it as its prologue, anything else flushes it first). */
static void flush_pending(cuda_ctx *cx) {
    if (cx->pn.active) {
        cx->pn.active = 0;
        SIG(cx, 5, U(cx->pn.x), U(cx->pn.dw), (uint64_t)cx->pn.n, (uint64_t)cx->pn.dim, U(cx->pn.y),
            1, U(cx->xh));
        if (!cx->failed)
            (void)RUN(cx,
                      qv_cuda_rmsnorm_half(cx->pn.x, cx->pn.dw, cx->pn.n, cx->pn.dim, cx->pn.eps,
                                           cx->pn.y, cx->xh, cx->act_fp16, cx->stream));
    }
    if (cx->pg.active) {
        const qv_cuda_gemv_segs *g = &cx->pg.g;
        cx->pg.active = 0;
        SIG(cx, 14, (uint64_t)g->n_segs, U(g->w[0]), U(g->y[0]), (uint64_t)g->rows[0], U(g->w[1]),
            U(g->y[1]), (uint64_t)g->rows[1], U(g->w[2]), U(g->y[2]), (uint64_t)g->rows[2],
            U(g->w[3]), U(g->y[3]), (uint64_t)g->rows[3], (uint64_t)cx->pg.nr,
            (uint64_t)cx->pg.cols, (uint64_t)cx->pg.fp16, (uint64_t)cx->tune.gemv_new,
            (uint64_t)cx->pg.norm, U(cx->pg.nx), U(cx->pg.nw), U(cx->pg.ny), U(cx->pg.sw_out),
            U(cx->xh));
        if (!cx->failed && cx->tune.gemv_new) {
            const int sw = cx->pg.sw_out != NULL;
            void *other = cx->xh == cx->xh_bufs[0] ? cx->xh_bufs[1] : cx->xh_bufs[0];
            const qv_cuda_gemv2_args a = {
                .g = *g,
                .xh = cx->xh,
                .x = cx->pg.norm ? cx->pg.nx : NULL,
                .norm_w = cx->pg.norm ? cx->pg.nw : NULL,
                .eps = cx->pg.eps,
                .norm_y = cx->pg.norm ? cx->pg.ny : NULL,
                .norm_yh = cx->pg.norm ? cx->xh : NULL,
                .swiglu_out = cx->pg.sw_out,
                .swiglu_oh = sw ? other : NULL,
                .cols = cx->pg.cols,
                .n = cx->pg.nr,
                .fp16 = cx->pg.fp16,
                .beta = 0.0f,
            };
            if (RUN(cx, qv_cuda_gemv2(&a, cx->stream)) && sw) {
                cx->xh = other; /* the SwiGLU output's half copy is the next GEMM's input */
                set_xh(cx, cx->pg.sw_out, (size_t)cx->pg.nr * (size_t)g->rows[0]);
            }
        } else if (!cx->failed) {
            (void)RUN(cx, qv_cuda_gemv_multi(g, cx->xh, cx->pg.cols, cx->pg.nr, 0.0f, cx->pg.fp16,
                                             cx->stream));
        }
    }
    if (cx->pr.active) {
        cx->pr.active = 0;
        if (cx->pr.both) {
            SIG(cx, 15, U(cx->pr.x), (uint64_t)cx->pr.heads, U(cx->pr.x2), (uint64_t)cx->pr.h2,
                (uint64_t)cx->pr.n, (uint64_t)cx->pr.hd, U(cx->pr.dp), U(cx->pr.df));
            if (!cx->failed)
                (void)RUN(cx, qv_cuda_rope2(cx->pr.x, cx->pr.heads, cx->pr.x2, cx->pr.h2, cx->pr.n,
                                            cx->pr.hd, cx->pr.dp, cx->pr.df, cx->stream));
            return;
        }
        SIG(cx, 6, U(cx->pr.x), (uint64_t)cx->pr.n, (uint64_t)cx->pr.heads, (uint64_t)cx->pr.hd,
            U(cx->pr.dp), U(cx->pr.df));
        if (!cx->failed)
            (void)RUN(cx, qv_cuda_rope(cx->pr.x, cx->pr.n, cx->pr.heads, cx->pr.hd, cx->pr.dp,
                                       cx->pr.df, cx->stream));
    }
}

/* Room for `bytes` of staging without a ring reset (a reset would let new arrays overwrite
 * ones a deferred launch still has to read). */
static int room_without_reset(const cuda_ctx *cx, size_t bytes) {
    return cx->m_used + bytes <= cx->m_size;
}

/* The half-precision GEMM-input cache now holds src (n_elems floats). */
static void set_xh(cuda_ctx *cx, const float *src, size_t n_elems) {
    cx->xh_src = src;
    cx->xh_n = n_elems;
    cx->xh_fp16 = cx->act_fp16;
}

/* ---- vtable ---- */

static void cu_destroy(qv_backend *be) {
    if (!be) return;
    cuda_ctx *cx = be->ctx;
    if (cx) {
        if (cx->mode == MODE_CAPTURE) {
            cudaGraph_t g = NULL;
            (void)CU_OK(NULL, cudaStreamEndCapture(cx->stream, &g));
            if (g) (void)CU_OK(NULL, cudaGraphDestroy(g));
        }
        if (cx->stream) (void)CU_OK(NULL, cudaStreamSynchronize(cx->stream));
        for (int i = 0; i < MAX_GRAPHS; i++)
            if (cx->graphs[i].exec) (void)CU_OK(NULL, cudaGraphExecDestroy(cx->graphs[i].exec));
        if (cx->blas) (void)BLAS_OK(NULL, cublasDestroy(cx->blas));
        if (cx->w_base) (void)CU_OK(NULL, cudaFree(cx->w_base));
        if (cx->a_base) (void)CU_OK(NULL, cudaFree(cx->a_base));
        if (cx->xh_bufs[0]) (void)CU_OK(NULL, cudaFree(cx->xh_bufs[0]));
        if (cx->xh_bufs[1]) (void)CU_OK(NULL, cudaFree(cx->xh_bufs[1]));
        if (cx->blas_ws) (void)CU_OK(NULL, cudaFree(cx->blas_ws));
        if (cx->m_dev) (void)CU_OK(NULL, cudaFree(cx->m_dev));
        if (cx->m_host) (void)CU_OK(NULL, cudaFreeHost(cx->m_host));
        if (cx->ev0) (void)CU_OK(NULL, cudaEventDestroy(cx->ev0));
        if (cx->ev1) (void)CU_OK(NULL, cudaEventDestroy(cx->ev1));
        if (cx->stream) (void)CU_OK(NULL, cudaStreamDestroy(cx->stream));
        qv_free(cx->wmap);
        qv_free(cx->flat);
        qv_free(cx);
    }
    qv_free(be);
}

static void *cu_alloc(qv_backend *be, size_t n_bytes) {
    cuda_ctx *cx = ctx_of(be);
    size_t need = align_up(n_bytes ? n_bytes : 1);
    if (cx->n_allocs == MAX_ALLOCS || need > cx->a_size - cx->a_used) {
        QV_LOGE("cuda: arena exhausted: %zu bytes requested, %zu of %zu free", n_bytes,
                cx->a_size - cx->a_used, cx->a_size);
        return NULL;
    }
    cx->allocs[cx->n_allocs].off = cx->a_used;
    cx->allocs[cx->n_allocs].live = 1;
    cx->n_allocs++;
    void *p = cx->a_base + cx->a_used;
    cx->a_used += need;
    return p;
}

/* Marks the block free; the top of the arena shrinks past every freed block at the top. */
static void cu_free(qv_backend *be, void *p) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    if (!p) return;
    size_t off = (size_t)((unsigned char *)p - cx->a_base);
    for (int i = cx->n_allocs - 1; i >= 0; i--)
        if (cx->allocs[i].off == off && cx->allocs[i].live) {
            cx->allocs[i].live = 0;
            break;
        }
    while (cx->n_allocs > 0 && !cx->allocs[cx->n_allocs - 1].live) {
        cx->a_used = cx->allocs[cx->n_allocs - 1].off;
        cx->n_allocs--;
    }
}

static void cu_get_rows(qv_backend *be, const qv_tensor *table, const int32_t *ids, int n,
                        float *out) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    const wentry *e = wfind(cx, table->data);
    if (!e || e->is_f32) {
        fail_msg(cx, "get_rows: table is not a resident 2-D weight");
        return;
    }
    if (!ensure_room(cx, align_up((size_t)n * sizeof(int32_t)))) return;
    const int32_t *d_ids = stage(cx, ids, (size_t)n * sizeof(int32_t));
    if (!d_ids) return;
    SIG(cx, 1, U(e->dev), U(d_ids), (uint64_t)n, U(out));
    (void)RUN(cx, qv_cuda_get_rows(e->dev, e->fp16, d_ids, n, (int)e->n_cols, out, cx->stream));
}

/* y = x·Wᵀ (beta 0) or y += x·Wᵀ (beta 1), then + bias. */
static void gemm(cuda_ctx *cx, const qv_tensor *w, const float *x, int n, float *y,
                 const float *bias, float beta) {
    if (cx->failed || n <= 0) return;
    const wentry *e = wfind(cx, w->data);
    if (!e || e->is_f32) {
        fail_msg(cx, "matmul: weight is not resident");
        return;
    }
    const int rows = (int)e->n_rows, cols = (int)e->n_cols;
    /* y overlapping the cached source invalidates it */
    if (cx->xh_src && (const float *)y < cx->xh_src + cx->xh_n &&
        (const float *)y + (size_t)n * (size_t)rows > cx->xh_src)
        invalidate_xh(cx);
    const int chunk = (int)QV_MIN((size_t)n, cx->xh_elems / (size_t)cols);
    if (chunk <= 0) {
        fail_msg(cx, "matmul: input row wider than the GEMM scratch");
        return;
    }
    const cudaDataType_t ht = e->fp16 ? CUDA_R_16F : CUDA_R_16BF;
    const float alpha = 1.0f;
    for (int r0 = 0; r0 < n; r0 += chunk) {
        const int nr = QV_MIN(chunk, n - r0);
        const float *xs = x + (size_t)r0 * (size_t)cols;
        const size_t ne = (size_t)nr * (size_t)cols;
        /* a deferred RMSNorm on this input becomes the prologue of a new GEMV group */
        const int pn_fuse = cx->pn.active && nr <= QV_CUDA_GEMV_MAX_N && cols % 8 == 0 &&
                            beta == 0.0f && cx->tune.gemv_new && xs == cx->pn.y &&
                            cols == cx->pn.dim && ne == (size_t)cx->pn.n * (size_t)cx->pn.dim &&
                            e->fp16 == cx->act_fp16;
        if (cx->pn.active && !pn_fuse) flush_pending(cx);
        /* a deferred GEMV group on another input must run before xh changes */
        if (cx->pg.active &&
            !(cx->pg.xs == xs && cx->pg.ne == ne && cx->pg.fp16 == e->fp16 && cx->pg.cols == cols))
            flush_pending(cx);
        if (pn_fuse) {
            set_xh(cx, xs, ne); /* block 0 of the fused launch writes it */
        } else if (!(cx->xh_src == xs && cx->xh_n == ne && cx->xh_fp16 == e->fp16)) {
            SIG(cx, 2, U(xs), (uint64_t)ne, (uint64_t)e->fp16);
            if (!RUN(cx, qv_cuda_f32_to_half(xs, cx->xh, ne, e->fp16, cx->stream))) return;
            cx->xh_src = xs;
            cx->xh_n = ne;
            cx->xh_fp16 = e->fp16;
        }
        float *ys = y + (size_t)r0 * (size_t)rows;
        if (nr <= QV_CUDA_GEMV_MAX_N && cols % 8 == 0) { /* decode: memory-bound warp GEMV */
            if (beta == 0.0f) { /* deferred: merged with GEMVs of the same input */
                if (cx->pg.active && cx->pg.g.n_segs == QV_CUDA_GEMV_MAX_SEGS) flush_pending(cx);
                /* block 0 of a fused-norm launch writes the F32 normalised rows while the
                 * other blocks write their outputs: an output over those rows runs after */
                if (cx->pg.active && cx->pg.norm && cx->pg.ny &&
                    (const float *)ys < cx->pg.ny + cx->pg.ne &&
                    cx->pg.ny < ys + (size_t)nr * (size_t)rows)
                    flush_pending(cx);
                if (!cx->pg.active) {
                    memset(&cx->pg, 0, sizeof(cx->pg));
                    cx->pg.active = 1;
                    cx->pg.fp16 = e->fp16;
                    cx->pg.cols = cols;
                    cx->pg.nr = nr;
                    cx->pg.xs = xs;
                    cx->pg.ne = ne;
                    if (pn_fuse && cx->pn.active) {
                        cx->pn.active = 0;
                        cx->pg.norm = 1;
                        cx->pg.nx = cx->pn.x;
                        cx->pg.nw = cx->pn.dw;
                        cx->pg.eps = cx->pn.eps;
                        cx->pg.ny = cx->pn.y;
                    }
                }
                qv_cuda_gemv_segs *g = &cx->pg.g;
                g->w[g->n_segs] = e->dev;
                g->y[g->n_segs] = ys;
                g->rows[g->n_segs] = rows;
                g->n_segs++;
                continue;
            }
            flush_pending(cx);
            SIG(cx, 13, U(e->dev), U(ys), (uint64_t)rows, (uint64_t)nr, (uint64_t)cols,
                (uint64_t)(beta != 0.0f), (uint64_t)cx->tune.gemv_new, U(cx->xh));
            if (cx->tune.gemv_new) {
                qv_cuda_gemv2_args a;
                memset(&a, 0, sizeof(a));
                a.g.n_segs = 1;
                a.g.w[0] = e->dev;
                a.g.y[0] = ys;
                a.g.rows[0] = rows;
                a.xh = cx->xh;
                a.cols = cols;
                a.n = nr;
                a.fp16 = e->fp16;
                a.beta = beta;
                if (!RUN(cx, qv_cuda_gemv2(&a, cx->stream))) return;
            } else if (!RUN(cx, qv_cuda_gemv(e->dev, cx->xh, ys, rows, cols, nr, beta, e->fp16,
                                             cx->stream))) {
                return;
            }
            continue;
        }
        flush_pending(cx);
        SIG(cx, 3, U(e->dev), U(ys), (uint64_t)rows, (uint64_t)nr, (uint64_t)cols,
            (uint64_t)(beta != 0.0f));
        /* Column-major view: yᵀ (rows, nr) = W (as (cols, rows))ᵀ · xᵀ (cols, nr). */
        if (cx->mode != MODE_REPLAY) cx->step_launches++;
        if (cx->mode != MODE_REPLAY &&
            !BLAS_OK(cx, cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, rows, nr, cols, &alpha,
                                      e->dev, ht, cols, cx->xh, ht, cols, &beta, ys, CUDA_R_32F,
                                      rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)))
            return;
    }
    if (bias) {
        flush_pending(cx);
        if (!ensure_room(cx, align_up((size_t)rows * sizeof(float)))) return;
        const float *db = dev_f32(cx, bias, (size_t)rows);
        if (!db) return;
        SIG(cx, 4, U(y), U(db), (uint64_t)n, (uint64_t)rows);
        (void)RUN(cx, qv_cuda_add_bias(y, db, n, rows, cx->stream));
    }
}

static void cu_matmul(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                      const float *bias) {
    gemm(ctx_of(be), w, x, n, y, bias, 0.0f);
}

static void cu_matmul_acc(qv_backend *be, const qv_tensor *w, const float *x, int n, float *y,
                          const float *bias) {
    gemm(ctx_of(be), w, x, n, y, bias, 1.0f); /* gemm drops the half cache if y overlaps it */
}

static void cu_rmsnorm(qv_backend *be, const float *x, const float *w, int n, int dim, float eps,
                       float *y) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    if (!ensure_room(cx, align_up((size_t)dim * sizeof(float)))) return;
    const float *dw = dev_f32(cx, w, (size_t)dim);
    if (!dw) return;
    const size_t ne = (size_t)n * (size_t)dim;
    /* fuse_norm: deferred; the next GEMV group on y takes it as its prologue (x and y must not
     * overlap: other blocks of that launch still read x while block 0 writes y) */
    if (cx->tune.fuse_norm && cx->tune.gemv_new && n <= QV_CUDA_GEMV_MAX_N && dim % 8 == 0 &&
        ne <= cx->xh_elems && (y + ne <= x || x + ne <= y) && ((uintptr_t)x & 15) == 0 &&
        ((uintptr_t)dw & 15) == 0) {
        cx->pn.active = 1;
        cx->pn.x = x;
        cx->pn.dw = dw;
        cx->pn.n = n;
        cx->pn.dim = dim;
        cx->pn.eps = eps;
        cx->pn.y = y;
        set_xh(cx, y, ne); /* whichever way it runs, xh ends up holding half(y) */
        return;
    }
    SIG(cx, 5, U(x), U(dw), (uint64_t)n, (uint64_t)dim, U(y), (uint64_t)(ne <= cx->xh_elems));
    if (ne <= cx->xh_elems) { /* also leave the next GEMM's half input */
        if (RUN(cx, qv_cuda_rmsnorm_half(x, dw, n, dim, eps, y, cx->xh, cx->act_fp16, cx->stream)))
            set_xh(cx, y, ne);
    } else {
        (void)RUN(cx, qv_cuda_rmsnorm(x, dw, n, dim, eps, y, cx->stream));
    }
}

static void cu_rope(qv_backend *be, float *x, int n, int n_heads, int head_dim, const int32_t *pos,
                    const float *inv_freq) {
    cuda_ctx *cx = ctx_of(be);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    const size_t room = align_up((size_t)n * 4) + align_up((size_t)head_dim * 2);
    if (!room_without_reset(cx, room)) flush_pending(cx); /* deferred launches read the ring */
    if (!ensure_room(cx, room)) return;
    const int32_t *dp = stage(cx, pos, (size_t)n * sizeof(int32_t));
    const float *df = dev_f32(cx, inv_freq, (size_t)head_dim / 2);
    if (!dp || !df) return;
    if (cx->pr.active && !cx->pr.both && cx->pr.n == n && cx->pr.hd == head_dim &&
        cx->pr.dp == dp && cx->pr.df == df && cx->pr.x != x) { /* k after q: one launch */
        if (cx->tune.fuse_rope_kv && !cx->pg.active && !cx->pn.active) {
            cx->pr.both = 1; /* waits for kv_store of this k */
            cx->pr.x2 = x;
            cx->pr.h2 = n_heads;
            return;
        }
        cx->pr.active = 0;
        flush_pending(cx); /* the GEMVs that produced q and k */
        SIG(cx, 15, U(cx->pr.x), (uint64_t)cx->pr.heads, U(x), (uint64_t)n_heads, (uint64_t)n,
            (uint64_t)head_dim, U(dp), U(df));
        (void)RUN(
            cx, qv_cuda_rope2(cx->pr.x, cx->pr.heads, x, n_heads, n, head_dim, dp, df, cx->stream));
        return;
    }
    flush_pending(cx);
    cx->pr.active = 1;
    cx->pr.both = 0;
    cx->pr.x = x;
    cx->pr.n = n;
    cx->pr.heads = n_heads;
    cx->pr.hd = head_dim;
    cx->pr.dp = dp;
    cx->pr.df = df;
}

static void cu_swiglu(qv_backend *be, const float *gate, const float *up, float *out,
                      size_t n_elems) {
    cuda_ctx *cx = ctx_of(be);
    /* fuse_swiglu: the pending gate/up group computes out in its epilogue */
    if (cx->tune.fuse_swiglu && cx->tune.gemv_new && cx->pg.active && !cx->failed &&
        cx->pg.g.n_segs == 2 && cx->pg.g.y[0] == gate && cx->pg.g.y[1] == up &&
        cx->pg.g.rows[0] == cx->pg.g.rows[1] &&
        n_elems == (size_t)cx->pg.nr * (size_t)cx->pg.g.rows[0] && n_elems <= cx->xh_elems) {
        cx->pg.sw_out = out;
        flush_pending(cx); /* sets the half cache to out */
        return;
    }
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || !n_elems) return;
    SIG(cx, 7, U(gate), U(up), U(out), (uint64_t)n_elems, (uint64_t)(n_elems <= cx->xh_elems));
    if (n_elems <= cx->xh_elems) {
        if (RUN(cx, qv_cuda_swiglu_half(gate, up, out, cx->xh, cx->act_fp16, n_elems, cx->stream)))
            set_xh(cx, out, n_elems);
    } else {
        (void)RUN(cx, qv_cuda_swiglu(gate, up, out, n_elems, cx->stream));
    }
}

static void cu_add(qv_backend *be, float *y, const float *x, size_t n_elems) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || !n_elems) return;
    SIG(cx, 8, U(y), U(x), (uint64_t)n_elems);
    (void)RUN(cx, qv_cuda_add(y, x, n_elems, cx->stream));
}

/* Start of a layer's K (or V) region, in floats from pool->k (pool->v). With kv_bf16 the
 * layers are packed at 2 bytes per element (layer l starts at l * elems * 2 bytes), so a pool of
 * half the F32 size holds them all (kv_dim is even: head_dim is). */
static size_t layer_offset(const qv_kv_pool *pool, int layer, int kv_bf16) {
    QV_ASSERT(kv_bf16 || pool->elem_bytes != 2);
    const size_t elems = (size_t)layer * (size_t)pool->n_pages * (size_t)pool->page_size *
                         (size_t)pool->n_kv_heads * (size_t)pool->head_dim;
    return kv_bf16 ? elems / 2 : elems;
}

/* Whether a pool holds bf16 K/V: its own element size, else (pools built by hand) the switch. */
static int pool_bf16(const cuda_ctx *cx, const qv_kv_pool *pool) {
    return pool->elem_bytes ? pool->elem_bytes == 2 : cx->tune.kv_bf16;
}

static void cu_kv_store(qv_backend *be, qv_kv_pool *pool, int layer, const float *k, const float *v,
                        int n, const int32_t *slot_page, const int32_t *slot_off) {
    cuda_ctx *cx = ctx_of(be);
    const size_t room = 2 * align_up((size_t)n * sizeof(int32_t));
    const int kv_bf16 = pool_bf16(cx, pool);
    const size_t lo = layer_offset(pool, layer, kv_bf16);
    /* fuse_rope_kv: the pending RoPE of q and this k runs with the store */
    if (cx->pr.active && cx->pr.both && !cx->pg.active && !cx->pn.active && !cx->failed &&
        k == cx->pr.x2 && n == cx->pr.n && pool->head_dim == cx->pr.hd &&
        pool->n_kv_heads == cx->pr.h2 && room_without_reset(cx, room)) {
        cx->pr.active = 0;
        invalidate_xh(cx);
        const int32_t *dp = stage(cx, slot_page, (size_t)n * sizeof(int32_t));
        const int32_t *doff = stage(cx, slot_off, (size_t)n * sizeof(int32_t));
        if (!dp || !doff) return;
        SIG(cx, 17, U(cx->pr.x), (uint64_t)cx->pr.heads, U(k), (uint64_t)cx->pr.h2, U(v),
            (uint64_t)n, (uint64_t)cx->pr.hd, U(cx->pr.dp), U(cx->pr.df), U(pool->k + lo),
            U(pool->v + lo), (uint64_t)pool->page_size, U(dp), U(doff), (uint64_t)kv_bf16);
        (void)RUN(cx, qv_cuda_rope2_kv_store(cx->pr.x, cx->pr.heads, cx->pr.x2, cx->pr.h2, v, n,
                                             cx->pr.hd, cx->pr.dp, cx->pr.df, pool->k + lo,
                                             pool->v + lo, pool->page_size, dp, doff, kv_bf16,
                                             cx->stream));
        return;
    }
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    if (!ensure_room(cx, room)) return;
    const int32_t *dp = stage(cx, slot_page, (size_t)n * sizeof(int32_t));
    const int32_t *doff = stage(cx, slot_off, (size_t)n * sizeof(int32_t));
    if (!dp || !doff) return;
    SIG(cx, 9, U(pool->k + lo), U(pool->v + lo), (uint64_t)pool->page_size, U(k), U(v), (uint64_t)n,
        U(dp), U(doff), (uint64_t)kv_bf16);
    (void)RUN(cx, qv_cuda_kv_store(pool->k + lo, pool->v + lo, pool->page_size,
                                   pool->n_kv_heads * pool->head_dim, k, v, n, dp, doff, kv_bf16,
                                   cx->stream));
}

static void cu_attention(qv_backend *be, const qv_kv_pool *pool, int layer, const qv_attn_batch *ab,
                         const float *q, float *out) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || ab->n_tokens <= 0) return;
    /* Flatten the page tables: stride = pages covering the furthest position of the batch,
     * rounded up to a power of two (>= 8) so that a decoding batch keeps its graph. */
    int need = 1;
    for (int t = 0; t < ab->n_tokens; t++)
        need = QV_MAX(need, ab->tok_pos[t] / pool->page_size + 1);
    int stride = 8;
    while (stride < need)
        stride *= 2;
    size_t n_flat = (size_t)ab->n_seqs * (size_t)stride;
    if (n_flat * sizeof(int32_t) > cx->m_size / 2) {
        fail_msg(cx, "attention: page tables larger than the staging buffer");
        return;
    }
    /* Only entries up to each token's page are read; the rest are 0. */
    memset(cx->flat, 0, n_flat * sizeof(int32_t));
    for (int t = 0; t < ab->n_tokens; t++) {
        const int s = ab->tok_seq[t];
        const int np = ab->tok_pos[t] / pool->page_size + 1;
        int32_t *row = cx->flat + (size_t)s * (size_t)stride;
        for (int p = 0; p < np; p++)
            row[p] = ab->page_table[s][p];
    }
    if (!ensure_room(cx, align_up(n_flat * sizeof(int32_t)) +
                             2 * align_up((size_t)ab->n_tokens * sizeof(int32_t))))
        return;
    const int32_t *d_tab = stage(cx, cx->flat, n_flat * sizeof(int32_t));
    const int32_t *d_seq = stage(cx, ab->tok_seq, (size_t)ab->n_tokens * sizeof(int32_t));
    const int32_t *d_pos = stage(cx, ab->tok_pos, (size_t)ab->n_tokens * sizeof(int32_t));
    if (!d_tab || !d_seq || !d_pos) return;
    const int kv_bf16 = pool_bf16(cx, pool);
    const size_t lo = layer_offset(pool, layer, kv_bf16);
    const size_t n_out = (size_t)ab->n_tokens * (size_t)ab->n_heads * (size_t)ab->head_dim;
    const int fuse = n_out <= cx->xh_elems;
    qv_cuda_attn_args a = {
        .q = q,
        .out = out,
        .k_layer = pool->k + lo,
        .v_layer = pool->v + lo,
        .tok_seq = d_seq,
        .tok_pos = d_pos,
        .tables = d_tab,
        .table_stride = stride,
        .out_half = fuse ? cx->xh : NULL,
        .fp16 = cx->act_fp16,
        .kv_bf16 = kv_bf16,
        .n_tokens = ab->n_tokens,
        .n_heads = ab->n_heads,
        .n_kv_heads = ab->n_kv_heads,
        .head_dim = ab->head_dim,
        .page_size = pool->page_size,
        .window = ab->window,
        .scale = ab->scale,
    };
    SIG(cx, 10, U(q), U(out), U(a.k_layer), U(a.v_layer), U(d_seq), U(d_pos), U(d_tab),
        (uint64_t)stride, (uint64_t)fuse, (uint64_t)ab->n_tokens, (uint64_t)ab->n_heads,
        (uint64_t)ab->n_kv_heads, (uint64_t)ab->head_dim, (uint64_t)pool->page_size,
        (uint64_t)ab->window, (uint64_t)kv_bf16);
    if (RUN(cx, qv_cuda_attention(&a, cx->stream)) && fuse) set_xh(cx, out, n_out);
}

/* Ends a graph step: on capture, instantiates and launches the graph; on replay, launches the
 * recorded graph if this step's signature equals it, else returns 0 (nothing has run). */
static int end_step(cuda_ctx *cx) {
    const enum cuda_mode mode = cx->mode;
    cx->mode = MODE_EAGER;
    if (mode == MODE_CAPTURE) {
        cudaGraph_t g = NULL;
        cudaGraphExec_t ex = NULL;
        /* A capture that fails (an op the capture does not allow, instantiation) only turns
         * graphs off: nothing has run, the caller reruns the step eagerly, and a real device
         * fault shows up again there. cx->failed was 0 when the capture began. */
        const double t0 = qv_time_s();
        cudaError_t e1 = cudaStreamEndCapture(cx->stream, &g);
        cudaError_t e2 = cudaErrorUnknown;
        if (e1 == cudaSuccess && !cx->failed) e2 = cudaGraphInstantiate(&ex, g, 0);
        if (g) (void)CU_OK(NULL, cudaGraphDestroy(g));
        if (e1 != cudaSuccess || cx->failed || e2 != cudaSuccess) {
            QV_LOGW("cuda: graph capture failed (%s / %s); CUDA graphs off, step rerun eagerly",
                    cudaGetErrorString(e1), cudaGetErrorString(e2));
            (void)cudaGetLastError();
            cx->failed = 0;
            cx->graphs_on = 0;
            ring_reset(cx);
            return 0;
        }
        /* replace the least recently used entry */
        int victim = 0;
        for (int i = 1; i < MAX_GRAPHS; i++)
            if (cx->graphs[i].last_use < cx->graphs[victim].last_use) victim = i;
        graph_entry *ge = &cx->graphs[victim];
        if (ge->exec) (void)CU_OK(cx, cudaGraphExecDestroy(ge->exec));
        *ge = (graph_entry){cx->key, cx->sig, cx->step_launches, ex, ++cx->clock};
        cx->stats.instantiate_s += qv_time_s() - t0;
        (void)CU_OK(cx, cudaEventRecord(cx->ev0, cx->stream));
        (void)CU_OK(cx, cudaGraphLaunch(ex, cx->stream));
        return 1;
    }
    if (mode == MODE_REPLAY) {
        graph_entry *ge = &cx->graphs[cx->cur_graph];
        if (cx->sig != ge->sig || cx->failed) {
            QV_LOGD("cuda: graph for key %llx does not match this step; rerun eagerly",
                    (unsigned long long)ge->key);
            (void)CU_OK(cx, cudaGraphExecDestroy(ge->exec));
            memset(ge, 0, sizeof(*ge));
            ring_reset(cx);
            return 0;
        }
        ge->last_use = ++cx->clock;
        cx->step_launches = ge->launches;
        (void)CU_OK(cx, cudaEventRecord(cx->ev0, cx->stream));
        (void)CU_OK(cx, cudaGraphLaunch(ge->exec, cx->stream));
    }
    return 1;
}

static qv_status cu_download(qv_backend *be, void *dst, const void *src, size_t n_bytes,
                             qv_error *err) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    const enum cuda_mode mode = cx->mode;
    const int ok = end_step(cx);
    double t1 = qv_time_s();
    if (cx->t_step > 0) {
        cx->stats.enqueue_s += t1 - cx->t_step;
        if (ok) cx->stats.launches += cx->step_launches;
        cx->t_step = 0;
        if (!ok)
            cx->stats.mismatches++;
        else if (mode == MODE_CAPTURE)
            cx->stats.captures++;
        else if (mode == MODE_REPLAY)
            cx->stats.replays++;
        else
            cx->stats.eager_steps++;
    }
    if (!ok && !cx->failed)
        return qv_errorf(err, QV_ERR_BUSY, "cuda: recorded graph does not match; rerun the step");
    if (!cx->failed && n_bytes)
        (void)CU_OK(cx, cudaMemcpyAsync(dst, src, n_bytes, cudaMemcpyDeviceToHost, cx->stream));
    if (cx->ev_pending && ok && !cx->failed) (void)CU_OK(cx, cudaEventRecord(cx->ev1, cx->stream));
    (void)CU_OK(cx, cudaStreamSynchronize(cx->stream));
    cx->stats.wait_s += qv_time_s() - t1;
    if (cx->ev_pending && ok && !cx->failed) {
        float ms = 0.0f;
        if (CU_OK(cx, cudaEventElapsedTime(&ms, cx->ev0, cx->ev1)))
            cx->stats.device_s += (double)ms * 1e-3;
    }
    cx->ev_pending = 0;
    ring_reset(cx);
    if (cx->failed)
        return qv_errorf(err, QV_ERR_DEVICE, "cuda backend failed (see the log for the call)");
    return QV_OK;
}

static int cu_step_begin(qv_backend *be, uint64_t key) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    if (cx->mode != MODE_EAGER) (void)end_step(cx); /* a step left open: close it */
    invalidate_xh(cx);
    cx->xh = cx->xh_bufs[0]; /* same buffers at every step start: recorded graphs stay valid */
    cx->step_launches = 0;
    cx->t_step = qv_time_s();
    cx->ev_pending = 0;
    if (!cx->failed && cx->ev0 && CU_OK(cx, cudaEventRecord(cx->ev0, cx->stream)))
        cx->ev_pending = 1; /* re-recorded right before a graph launch */
    if (cx->failed || !cx->graphs_on || key == 0) return 0;
    if (cx->m_used) { /* the graph's staging offsets must start at 0 */
        if (!CU_OK(cx, cudaStreamSynchronize(cx->stream))) return 0;
        ring_reset(cx);
    }
    cx->key = key;
    cx->sig = 0x51ed270b27c5a3f1ull;
    for (int i = 0; i < MAX_GRAPHS; i++)
        if (cx->graphs[i].exec && cx->graphs[i].key == key) {
            cx->cur_graph = i;
            cx->mode = MODE_REPLAY;
            return 1;
        }
    /* Record a shape the second time it comes (one-off prefill shapes stay eager). */
    int seen = 0;
    for (int i = 0; i < 16; i++)
        seen |= cx->seen[i] == key;
    if (!seen) {
        cx->seen[cx->seen_next] = key;
        cx->seen_next = (cx->seen_next + 1) % 16;
        return 0;
    }
    if (!CU_OK(cx, cudaStreamBeginCapture(cx->stream, cudaStreamCaptureModeRelaxed))) return 0;
    cx->mode = MODE_CAPTURE;
    return 0;
}

static void cu_upload(qv_backend *be, void *dst, const void *src, size_t n_bytes) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || !n_bytes) return;
    if (cx->mode != MODE_EAGER) {
        fail_msg(cx, "upload inside a graph step");
        return;
    }
    if (!CU_OK(cx, cudaMemcpyAsync(dst, src, n_bytes, cudaMemcpyHostToDevice, cx->stream))) return;
    (void)CU_OK(cx, cudaStreamSynchronize(cx->stream)); /* src may be reused on return */
}

static void cu_gather_rows(qv_backend *be, const float *src, const int32_t *idx, int n, int width,
                           float *dst) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    if (!ensure_room(cx, align_up((size_t)n * sizeof(int32_t)))) return;
    const int32_t *d = stage(cx, idx, (size_t)n * sizeof(int32_t));
    if (!d) return;
    SIG(cx, 11, U(src), U(d), (uint64_t)n, (uint64_t)width, U(dst));
    (void)RUN(cx, qv_cuda_gather_rows(src, d, n, width, dst, cx->stream));
}

static void cu_argmax(qv_backend *be, const float *x, int n, int width, int32_t *out) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    SIG(cx, 12, U(x), (uint64_t)n, (uint64_t)width, U(out));
    (void)RUN(cx, qv_cuda_argmax(x, n, width, out, cx->stream));
}

static void cu_sample(qv_backend *be, float *x, int n, int width, const qv_sample_row *rows,
                      const qv_token_count *pen, int pen_cap, float *pen_raw, int32_t *out,
                      qv_logprobs *lp) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    if (cx->failed || n <= 0) return;
    const size_t rb = (size_t)n * sizeof(*rows), pb = pen ? (size_t)pen_cap * sizeof(*pen) : 0;
    if (!ensure_room(cx, align_up(rb) + (pb ? align_up(pb) : 0))) return;
    const qv_sample_row *d_rows = stage(cx, rows, rb);
    const qv_token_count *d_pen = pb ? stage(cx, pen, pb) : NULL;
    if (!d_rows || (pb && !d_pen)) return;
    SIG(cx, 40, U(x), (uint64_t)n, (uint64_t)width, (uint64_t)pb, U(out), U(lp), U(pen_raw));
    (void)RUN(cx, qv_cuda_sample(x, n, width, d_rows, d_pen, pen_raw, out, lp, cx->stream));
}

static int cu_kv_elem_bytes(qv_backend *be) { return ctx_of(be)->tune.kv_bf16 ? 2 : 4; }

static const struct qv_backend_i cuda_iface = {
    .name = "cuda",
    .destroy = cu_destroy,
    .alloc = cu_alloc,
    .free = cu_free,
    .get_rows = cu_get_rows,
    .matmul = cu_matmul,
    .rmsnorm = cu_rmsnorm,
    .rope = cu_rope,
    .swiglu = cu_swiglu,
    .add = cu_add,
    .kv_store = cu_kv_store,
    .attention = cu_attention,
    .download = cu_download,
    .upload = cu_upload,
    .gather_rows = cu_gather_rows,
    .argmax = cu_argmax,
    .sample = cu_sample,
    .kv_elem_bytes = cu_kv_elem_bytes,
    .matmul_acc = cu_matmul_acc,
    .step_begin = cu_step_begin,
};

/* ---- run-time switches ---- */

static int env_flag(const char *name, int dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    if (strcmp(v, "0") == 0 || strcmp(v, "old") == 0 || strcmp(v, "off") == 0) return 0;
    return 1;
}

static void tuning_fix(qv_cuda_tuning *t) {
    t->gemv_new = !!t->gemv_new;
    t->fuse_norm = t->gemv_new && t->fuse_norm;
    t->fuse_swiglu = t->gemv_new && t->fuse_swiglu;
    t->fuse_rope_kv = !!t->fuse_rope_kv;
    t->kv_bf16 = !!t->kv_bf16;
    t->pdl = !!t->pdl;
}

static void tuning_from_env(qv_cuda_tuning *t) {
    const int all = env_flag("QV_CUDA_FUSE", 0);
    t->gemv_new = env_flag("QV_CUDA_GEMV", 0);
    t->fuse_norm = env_flag("QV_CUDA_FUSE_NORM", all);
    t->fuse_swiglu = env_flag("QV_CUDA_FUSE_SWIGLU", all);
    t->fuse_rope_kv = env_flag("QV_CUDA_FUSE_ROPE_KV", all);
    t->kv_bf16 = env_flag("QV_CUDA_KV_BF16", 1);
    t->pdl = env_flag("QV_CUDA_PDL", 0);
    tuning_fix(t);
}

void qv_backend_cuda_get_tuning(const qv_backend *be, qv_cuda_tuning *out) {
    *out = ((const cuda_ctx *)be->ctx)->tune;
}

void qv_backend_cuda_set_tuning(qv_backend *be, const qv_cuda_tuning *t) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    invalidate_xh(cx);
    cx->tune = *t;
    tuning_fix(&cx->tune);
    qv_cuda_set_pdl(cx->tune.pdl);
    if (cx->mode == MODE_EAGER) /* recorded graphs hold the old kernels */
        for (int i = 0; i < MAX_GRAPHS; i++)
            if (cx->graphs[i].exec) {
                (void)CU_OK(cx, cudaGraphExecDestroy(cx->graphs[i].exec));
                memset(&cx->graphs[i], 0, sizeof(cx->graphs[i]));
            }
}

int qv_backend_cuda_kv_elem_bytes(const qv_backend *be) {
    return ((const cuda_ctx *)be->ctx)->tune.kv_bf16 ? 2 : 4;
}

/* ---- creation ---- */

void qv_cuda_opts_default(qv_cuda_opts *o) { memset(o, 0, sizeof(*o)); }

static qv_status dev_malloc(cuda_ctx *cx, void **p, size_t bytes, const char *role, qv_error *err) {
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        *p = NULL;
        (void)cx;
        return qv_errorf(err, e == cudaErrorMemoryAllocation ? QV_ERR_DEVICE_OOM : QV_ERR_DEVICE,
                         "cuda: cannot allocate %.1f MiB for %s: %s", (double)bytes / 1048576.0,
                         role, cudaGetErrorString(e));
    }
    return QV_OK;
}

/* Common part: device, stream, cuBLAS, weight arena of weight_bytes, scratch for max_width. */
static qv_status create_common(const qv_cuda_opts *o_in, size_t weight_bytes, size_t max_width,
                               qv_backend **out, qv_error *err) {
    *out = NULL;
    qv_cuda_opts o;
    if (o_in)
        o = *o_in;
    else
        qv_cuda_opts_default(&o);
    if (!o.max_tokens) o.max_tokens = 512;
    if (!o.meta_bytes) o.meta_bytes = (size_t)8 << 20;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        (void)cudaGetLastError();
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "cuda: no CUDA device");
    }
    if (o.device < 0 || o.device >= n_dev)
        return qv_errorf(err, QV_ERR_INVALID, "cuda: device %d of %d", o.device, n_dev);
    qv_backend *be = qv_calloc(1, sizeof(*be));
    cuda_ctx *cx = qv_calloc(1, sizeof(*cx));
    qv_status st = QV_OK;
    if (!be || !cx) {
        qv_free(be);
        qv_free(cx);
        return qv_errorf(err, QV_ERR_NOMEM, "cuda: out of memory");
    }
    be->iface = &cuda_iface;
    be->ctx = cx;
    cx->device = o.device;
    const char *genv = getenv("QV_CUDA_GRAPHS");
    cx->graphs_on = !(genv && strcmp(genv, "0") == 0);
    tuning_from_env(&cx->tune);
    qv_cuda_set_pdl(cx->tune.pdl);
    if (!CU_OK(cx, cudaSetDevice(o.device)) ||
        !CU_OK(cx, cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking)) ||
        !BLAS_OK(cx, cublasCreate(&cx->blas)) ||
        !BLAS_OK(cx, cublasSetStream(cx->blas, cx->stream)) ||
        !CU_OK(cx, cudaEventCreate(&cx->ev0)) || !CU_OK(cx, cudaEventCreate(&cx->ev1))) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: cannot initialise the device / cuBLAS");
        goto fail;
    }
    /* Scratch and metadata first (small), then weights, then the arena from what is left. */
    if ((st = dev_malloc(cx, &cx->blas_ws, BLAS_WS_BYTES, "cuBLAS workspace", err)) != QV_OK)
        goto fail;
    if (!BLAS_OK(cx, cublasSetWorkspace(cx->blas, cx->blas_ws, BLAS_WS_BYTES))) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: cannot set the cuBLAS workspace");
        goto fail;
    }
    cx->xh_elems = (size_t)o.max_tokens * max_width;
    for (int i = 0; i < 2; i++)
        if ((st = dev_malloc(cx, &cx->xh_bufs[i], cx->xh_elems * 2, "GEMM scratch", err)) != QV_OK)
            goto fail;
    cx->xh = cx->xh_bufs[0];
    cx->m_size = o.meta_bytes;
    if ((st = dev_malloc(cx, (void **)&cx->m_dev, cx->m_size, "metadata", err)) != QV_OK) goto fail;
    if (!CU_OK(cx, cudaHostAlloc((void **)&cx->m_host, cx->m_size, cudaHostAllocDefault))) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: cannot allocate pinned staging");
        goto fail;
    }
    cx->flat = qv_malloc(cx->m_size);
    if (!cx->flat) {
        st = qv_errorf(err, QV_ERR_NOMEM, "cuda: out of memory");
        goto fail;
    }
    cx->w_size = weight_bytes ? weight_bytes : ALIGN;
    if ((st = dev_malloc(cx, (void **)&cx->w_base, cx->w_size, "weights", err)) != QV_OK) goto fail;
    size_t free_b = 0, total_b = 0;
    if (!CU_OK(cx, cudaMemGetInfo(&free_b, &total_b))) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: cudaMemGetInfo failed");
        goto fail;
    }
    cx->a_size =
        o.arena_bytes ? align_up(o.arena_bytes) : align_up(QV_MIN(free_b / 2, (size_t)8 << 30));
    if ((st = dev_malloc(cx, (void **)&cx->a_base, cx->a_size, "KV/scratch arena", err)) != QV_OK)
        goto fail;
    struct cudaDeviceProp prop;
    if (!CU_OK(cx, cudaGetDeviceProperties(&prop, o.device))) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: cannot read device properties");
        goto fail;
    }
    QV_LOGI("cuda backend: %s (sm_%d%d), %.1f GiB total, %.1f GiB free before the arena; "
            "weights %.1f MiB, arena %.1f MiB, GEMM scratch %.1f MiB, metadata %.1f MiB",
            prop.name, prop.major, prop.minor, (double)total_b / 1073741824.0,
            (double)free_b / 1073741824.0, (double)cx->w_size / 1048576.0,
            (double)cx->a_size / 1048576.0, (double)(cx->xh_elems * 4) / 1048576.0,
            (double)cx->m_size / 1048576.0);
    QV_LOGI("cuda backend: gemv %s, fusions norm %d swiglu %d rope+kv %d, KV %s, PDL %d",
            cx->tune.gemv_new ? "new" : "old", cx->tune.fuse_norm, cx->tune.fuse_swiglu,
            cx->tune.fuse_rope_kv, cx->tune.kv_bf16 ? "bf16" : "f32", cx->tune.pdl);
    *out = be;
    return QV_OK;
fail:
    cu_destroy(be);
    return st;
}

qv_status qv_backend_cuda_create_empty(size_t weight_bytes, const qv_cuda_opts *o, qv_backend **out,
                                       qv_error *err) {
    return create_common(o, align_up(weight_bytes), 16384, out, err);
}

qv_status qv_backend_cuda_create(const qv_model *m, const qv_cuda_opts *o, qv_backend **out,
                                 qv_error *err) {
    *out = NULL;
    const qv_model_config *c = &m->cfg;
    struct size_walk sw = {0, {m->tok_embd.data, NULL, NULL, NULL}};
    /* tok_embd counted explicitly; lm_head skipped when tied (same data). */
    sw.bytes = tensor_dev_bytes(&m->tok_embd);
    sw.seen[0] = m->tok_embd.data;
    qv_status st = for_each_tensor(m, size_fn, &sw, err);
    if (st != QV_OK) return st;
    const size_t inv_bytes = align_up((size_t)(c->head_dim / 2) * sizeof(float));
    size_t max_width = (size_t)QV_MAX(QV_MAX(c->dim, c->n_ff), c->n_heads * c->head_dim);
    qv_backend *be = NULL;
    double t0 = qv_time_s();
    if ((st = create_common(o, sw.bytes + inv_bytes, max_width, &be, err)) != QV_OK) return st;
    cuda_ctx *cx = be->ctx;
    const int fp16 = m->main_dtype == QV_DTYPE_F16;
    cx->act_fp16 = fp16;
    struct upload_walk uw = {cx, fp16, o ? o->random_seed : 0};
    if ((st = for_each_tensor(m, upload_fn, &uw, err)) != QV_OK) goto fail;
    /* RoPE inverse frequencies: a real host array even for synthetic models. */
    const qv_tensor inv = {QV_DTYPE_F32, 1, c->head_dim / 2,
                           (size_t)(c->head_dim / 2) * sizeof(float), m->rope_inv_freq};
    if ((st = add_tensor(cx, &inv, 0, 0, err)) != QV_OK) goto fail;
    /* The uploads are cudaMemcpy from pageable memory on the legacy stream, which may return
     * before the copy lands and is not ordered with the non-blocking compute stream: wait for
     * the whole device, not only the compute stream (the generated weights). */
    if (!CU_OK(cx, cudaDeviceSynchronize())) {
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: weight upload failed");
        goto fail;
    }
    QV_LOGI("cuda backend: %d weight tensors resident as %s (%.1f MiB) in %.2f s%s", cx->n_w,
            fp16 ? "fp16" : "bf16", (double)cx->w_used / 1048576.0, qv_time_s() - t0,
            uw.seed ? " (synthetic random weights)" : "");
    *out = be;
    return QV_OK;
fail:
    cu_destroy(be);
    return st;
}

qv_status qv_backend_cuda_add_tensor(qv_backend *be, const qv_tensor *t, int fp16, qv_error *err) {
    cuda_ctx *cx = ctx_of(be);
    qv_status st = add_tensor(cx, t, fp16, 0, err);
    if (st == QV_OK && !CU_OK(cx, cudaDeviceSynchronize())) /* as in create */
        st = qv_errorf(err, QV_ERR_DEVICE, "cuda: weight upload failed");
    return st;
}

void qv_backend_cuda_stats(const qv_backend *be, qv_cuda_stats *out) {
    *out = ((const cuda_ctx *)be->ctx)->stats;
}

size_t qv_backend_cuda_weight_bytes(const qv_backend *be) {
    return ((const cuda_ctx *)be->ctx)->w_used;
}
size_t qv_backend_cuda_arena_bytes(const qv_backend *be) {
    return ((const cuda_ctx *)be->ctx)->a_size;
}

/* LoRA over segments (sgmv.h): the input is converted to half through the GEMM-input cache
 * (usually a hit: the base projections just converted the same x), the host table travels
 * through the metadata staging (so a recorded graph replays it with this step's contents), and
 * the launch parameters go into the step signature. */
void qv_backend_cuda_sgmv(qv_backend *be, const qv_sgmv_seg *segs, const qv_sgmv_plan *plan,
                          const float *x, int n, int n_in, float *tmp) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx); /* deferred GEMVs write the outputs the expand adds to */
    if (cx->failed || n <= 0 || plan->n_segs == 0) return;
    const size_t ne = (size_t)n * (size_t)n_in;
    if (ne > cx->xh_elems) {
        fail_msg(cx, "sgmv: input wider than the GEMM scratch");
        return;
    }
    if (!(cx->xh_src == x && cx->xh_n == ne && cx->xh_fp16 == cx->act_fp16)) {
        SIG(cx, 2, U(x), (uint64_t)ne, (uint64_t)cx->act_fp16);
        if (!RUN(cx, qv_cuda_f32_to_half(x, cx->xh, ne, cx->act_fp16, cx->stream))) return;
        set_xh(cx, x, ne);
    }
    const size_t tb = (size_t)plan->n_segs * sizeof(qv_sgmv_seg);
    if (!ensure_room(cx, align_up(tb))) return;
    const qv_sgmv_seg *d = stage(cx, segs, tb);
    if (!d) return;
    const qv_sgmv_args g = {.segs = d, .plan = *plan, .fp16 = cx->act_fp16};
    /* not tmp_floats: the kernels find each segment's tmp block in the table */
    SIG(cx, 21, U(d), (uint64_t)plan->n_segs, (uint64_t)plan->max_n, (uint64_t)plan->max_rank,
        (uint64_t)plan->max_n_out, U(x), (uint64_t)n_in, U(tmp), (uint64_t)cx->act_fp16);
    if (!RUN(cx, qv_cuda_sgmv_shrink(&g, cx->xh, n_in, n_in, tmp, cx->stream))) return;
    (void)RUN(cx, qv_cuda_sgmv_expand(&g, tmp, cx->stream));
    /* an output overlapping the cached half source makes the cache stale */
    for (int i = 0; i < plan->n_segs && cx->xh_src; i++) {
        const float *y0 = segs[i].y + (size_t)segs[i].t0 * (size_t)segs[i].ldy;
        const float *y1 = y0 + (size_t)segs[i].n * (size_t)segs[i].ldy;
        if (segs[i].n > 0 && y0 < cx->xh_src + cx->xh_n && y1 > cx->xh_src) invalidate_xh(cx);
    }
}

/* IA3 row scaling over segments (sgmv.h), staged and signed like the SGMV table above. The
 * scaled rows may be the cached half source of the next GEMM: the cache is dropped. */
void qv_backend_cuda_seg_scale(qv_backend *be, qv_seg_scale *tab, int n_tab, int max_n,
                               int max_cols) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx); /* deferred work writes the rows scaled here */
    if (cx->failed || n_tab <= 0 || max_n <= 0) return;
    for (int i = 0; i < n_tab; i++)
        if (tab[i].bias) {
            const wentry *w = wfind(cx, tab[i].bias);
            if (!w) {
                fail_msg(cx, "seg_scale: a bias that is not a resident weight");
                return;
            }
            tab[i].bias = w->dev;
        }
    const size_t tb = (size_t)n_tab * sizeof(qv_seg_scale);
    if (!ensure_room(cx, align_up(tb))) return;
    const qv_seg_scale *d = stage(cx, tab, tb);
    if (!d) return;
    SIG(cx, 22, U(d), (uint64_t)n_tab, (uint64_t)max_n, (uint64_t)max_cols, (uint64_t)cx->act_fp16);
    (void)RUN(cx, qv_cuda_seg_scale(d, n_tab, max_n, max_cols, cx->act_fp16, cx->stream));
    invalidate_xh(cx);
}

void qv_backend_cuda_bottleneck(qv_backend *be, const qv_bn_seg *tab, int n_tab, int max_n,
                                const float *x, float *h, int dim, float *scratch_o,
                                float *scratch_t, int ld_scratch) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx); /* deferred work writes h (and the fused SwiGLU reads gate / up) */
    if (cx->failed || n_tab <= 0 || max_n <= 0) return;
    const size_t tb = (size_t)n_tab * sizeof(qv_bn_seg);
    if (!ensure_room(cx, align_up(tb))) return;
    const qv_bn_seg *d = stage(cx, tab, tb);
    if (!d) return;
    SIG(cx, 23, U(d), (uint64_t)n_tab, (uint64_t)max_n, U(x), U(h), (uint64_t)dim, U(scratch_o),
        U(scratch_t), (uint64_t)ld_scratch, (uint64_t)cx->act_fp16);
    (void)RUN(cx, qv_cuda_bottleneck(d, n_tab, max_n, x, h, dim, scratch_o, scratch_t, ld_scratch,
                                     cx->act_fp16, cx->stream));
    invalidate_xh(cx);
}

void qv_backend_cuda_adaption(qv_backend *be, const qv_ap_args *a) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx); /* the attention output and the residual rows may be pending */
    if (cx->failed || a->n_tab <= 0 || a->max_n <= 0) return;
    qv_ap_args g = *a;
    if (a->bias) {
        const wentry *w = wfind(cx, a->bias);
        if (!w) {
            fail_msg(cx, "adaption prompt: an o_proj bias that is not a resident weight");
            return;
        }
        g.bias = w->dev;
    }
    g.fp16 = cx->act_fp16;
    const size_t tb = (size_t)a->n_tab * sizeof(qv_ap_seg);
    if (!ensure_room(cx, align_up(tb))) return;
    g.tab = stage(cx, a->tab, tb);
    if (!g.tab) return;
    SIG(cx, 24, U(g.tab), (uint64_t)g.n_tab, (uint64_t)g.max_n, U(g.q), U(g.att), U(g.x), U(g.bias),
        (uint64_t)g.n_heads, (uint64_t)g.n_kv_heads, (uint64_t)g.head_dim, (uint64_t)g.dim,
        (uint64_t)g.fp16);
    (void)RUN(cx, qv_cuda_adaption(&g, cx->stream));
    invalidate_xh(cx); /* att may be the cached half input of o_proj */
}

int qv_backend_cuda_to_half(qv_backend *be, const float *src, void *dst, size_t n) {
    cuda_ctx *cx = ctx_of(be);
    flush_pending(cx);
    if (cx->failed) return -1;
    if (cx->mode != MODE_EAGER) {
        QV_LOGE("cuda: to_half inside a graph step");
        return -1;
    }
    return K_OK(cx, qv_cuda_f32_to_half(src, dst, n, cx->act_fp16, cx->stream)) ? 0 : -1;
}

bool qv_backend_cuda_graphs_on(const qv_backend *be) {
    const cuda_ctx *cx = be->ctx;
    return cx->graphs_on && !cx->failed;
}

int qv_backend_cuda_act_fp16(const qv_backend *be) { return ((const cuda_ctx *)be->ctx)->act_fp16; }

void *qv_backend_cuda_stream(const qv_backend *be) {
    return (void *)((const cuda_ctx *)be->ctx)->stream;
}

double qv_cuda_measure_d2d_bandwidth(size_t bytes, int reps) {
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double best = 0.0;
    if (!CU_OK(NULL, cudaMalloc(&a, bytes)) || !CU_OK(NULL, cudaMalloc(&b, bytes)) ||
        !CU_OK(NULL, cudaEventCreate(&e0)) || !CU_OK(NULL, cudaEventCreate(&e1)))
        goto done;
    if (!CU_OK(NULL, cudaMemset(a, 1, bytes))) goto done;
    for (int r = 0; r < reps + 1; r++) {
        float ms = 0.0f;
        if (!CU_OK(NULL, cudaEventRecord(e0, 0)) ||
            !CU_OK(NULL, cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0)) ||
            !CU_OK(NULL, cudaEventRecord(e1, 0)) || !CU_OK(NULL, cudaEventSynchronize(e1)) ||
            !CU_OK(NULL, cudaEventElapsedTime(&ms, e0, e1)))
            goto done;
        double bw = 2.0 * (double)bytes / ((double)ms * 1e-3);
        if (r > 0 && bw > best) best = bw; /* first copy is a warm-up */
    }
done:
    if (e0) (void)CU_OK(NULL, cudaEventDestroy(e0));
    if (e1) (void)CU_OK(NULL, cudaEventDestroy(e1));
    if (a) (void)CU_OK(NULL, cudaFree(a));
    if (b) (void)CU_OK(NULL, cudaFree(b));
    return best;
}
