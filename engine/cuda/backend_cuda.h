/*
 * backend_cuda.h - the CUDA implementation of struct qv_backend_i (backend.h), callable from C.
 *
 * What: weights resident on the device in bf16 (fp16 when the model's projections are F16),
 * uploaded once at creation (quantized GGUF weights are dequantized on the host with
 * qv_dequantize_row, rounded to bf16 and copied); projections through cuBLAS (cublasGemmEx,
 * bf16 x bf16 -> fp32 with fp32 accumulation: activations are F32 in backend memory and are
 * rounded to bf16 right before each GEMM); every other op is a kernel in cuda_kernels.cu.
 * All work is enqueued on one compute stream; the host blocks only in `download`.
 *
 * Memory: one device allocation per role, made at creation and reported in the log:
 * weights (exact size), the arena that serves be->iface->alloc (KV pages and forward scratch;
 * bump allocator), the internal scratch (bf16 activations for max_tokens rows) and a
 * pinned/device pair for per-step metadata (token ids, positions, page tables). Nothing is
 * allocated on the request path.
 *
 * Weight lookup: ops receive the model's host qv_tensor views / norm pointers; the backend maps
 * each host data pointer to its device copy. Host arrays that are not model weights (positions,
 * page tables, norm weights in op tests) are staged through the metadata buffer.
 *
 * Errors: ops cannot return errors (vtable); the first CUDA/cuBLAS failure is logged with
 * statement/file/line and made sticky; `download` reports it (QV_ERR_DEVICE).
 * Thread: confined to the creating thread (backend.h).
 */
#ifndef QV_BACKEND_CUDA_H
#define QV_BACKEND_CUDA_H

#include <stdbool.h>

#include <stdint.h>

#include "backend.h"
#include "model.h"
#include "sgmv_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_cuda_opts {
    int device;           /* CUDA device ordinal (default 0) */
    size_t arena_bytes;   /* backend memory for KV pages + scratch; 0 = auto: half of the free
                             memory after the weights, capped at 8 GiB */
    int max_tokens;       /* largest batch (tokens) a projection sees; 0 = 512 */
    size_t meta_bytes;    /* per-step metadata staging; 0 = 8 MiB */
    uint64_t random_seed; /* != 0: do not read the model's weight data; fill every projection
                             with deterministic uniform values (scale 1/sqrt(n_cols)) and norm
                             weights with 1 (synthetic benchmark models) */
} qv_cuda_opts;

void qv_cuda_opts_default(qv_cuda_opts *o);

/* Creates the CUDA backend and uploads the model's weights. `m` must outlive the backend (its
 * host pointers are the lookup keys). Owner: caller, release with be->iface->destroy(be).
 * Errors: QV_ERR_UNSUPPORTED (no device), QV_ERR_DEVICE_OOM, QV_ERR_DEVICE, QV_ERR_INVALID. */
qv_status qv_backend_cuda_create(const qv_model *m, const qv_cuda_opts *o, qv_backend **out,
                                 qv_error *err);

/* Creates the CUDA backend with no model (op tests): weights are added with
 * qv_backend_cuda_add_tensor. weight_bytes is the size of the weight arena. */
qv_status qv_backend_cuda_create_empty(size_t weight_bytes, const qv_cuda_opts *o, qv_backend **out,
                                       qv_error *err);

/* Makes a host tensor (2-D: stored as bf16, or fp16 when fp16 != 0; 1-D F32: kept F32)
 * resident; later ops find it by t->data. Errors: QV_ERR_DEVICE_OOM when the weight arena is
 * full, QV_ERR_DEVICE. */
qv_status qv_backend_cuda_add_tensor(qv_backend *be, const qv_tensor *t, int fp16, qv_error *err);

/* Device bytes of the weights / arena (for reports). */
size_t qv_backend_cuda_weight_bytes(const qv_backend *be);
size_t qv_backend_cuda_arena_bytes(const qv_backend *be);

/* Counters since creation (benchmarks): forward steps run eagerly / recorded / replayed /
 * replays refused (rerun eagerly); seconds the host spent enqueueing steps (step_begin to
 * download), ending captures and instantiating graphs (part of enqueue), waiting in download
 * for the device, and the device span of steps (first op or graph launch to the end of the
 * step's work, CUDA events; in eager steps it includes gaps where the device waits for the
 * host). Steps are counted from step_begin to download. */
typedef struct qv_cuda_stats {
    long eager_steps, captures, replays, mismatches;
    double enqueue_s, instantiate_s, wait_s, device_s;
    long launches; /* kernels + cuBLAS GEMMs of the steps counted above (a replay counts the
                      recorded graph's); divide by the steps for kernels per step */
} qv_cuda_stats;
void qv_backend_cuda_stats(const qv_backend *be, qv_cuda_stats *out);

/* Segmented LoRA on the backend's stream: for every segment of the host table `segs` (plan
 * built by qv_sgmv_plan_build; A/B pointers in device memory, y in backend memory),
 * y[t0 + t] += scale * (x[t0 + t] · Aᵀ) · Bᵀ, with x (n, n_in) F32 backend memory rounded to
 * the model's half type and tmp backend memory of plan->tmp_floats floats. One shrink and one
 * expand launch (engine/cuda/sgmv.h); the table is staged like other per-step host arrays, so
 * it may be reused as soon as the call returns and CUDA-graph replays take its new contents.
 * Errors are sticky (reported by `download`). Thread: the backend's thread. */
void qv_backend_cuda_sgmv(qv_backend *be, const qv_sgmv_seg *segs, const qv_sgmv_plan *plan,
                          const float *x, int n, int n_in, float *tmp);
/* IA3 / DoRA row scaling on the backend's stream: for each entry of the host table `tab`
 * (sgmv_plan.h; vec in device memory, x backend memory, bias the HOST pointer of a resident F32
 * weight, replaced in tab by its device copy), the scaling of its mode; max_n and max_cols
 * bound the entries (they shape the launch). Staged like qv_backend_cuda_sgmv. */
void qv_backend_cuda_seg_scale(qv_backend *be, qv_seg_scale *tab, int n_tab, int max_n,
                               int max_cols);
/* Bottleneck units over segments (sgmv.h qv_cuda_bottleneck): h (n_tokens, dim) rows of each
 * entry become the unit's output minus x; scratch_o and scratch_t are backend memory of
 * ld_scratch >= max(dim, d) floats per token row, free for the call. Staged like
 * qv_backend_cuda_sgmv. */
void qv_backend_cuda_bottleneck(qv_backend *be, const qv_bn_seg *tab, int n_tab, int max_n,
                                const float *x, float *h, int dim, float *scratch_o,
                                float *scratch_t, int ld_scratch);
/* Adaption-prompt attention over segments (sgmv.h qv_cuda_adaption); a->tab is the HOST table
 * (staged here) and a->bias the HOST pointer of the resident o_proj bias or NULL. */
void qv_backend_cuda_adaption(qv_backend *be, const qv_ap_args *a);
/* dst (device half, the activation type) = src (backend memory, n floats), enqueued now. Only
 * between steps (not inside a recorded or replayed step). Returns 0, or -1 (logged; the
 * backend's failure is sticky). */
int qv_backend_cuda_to_half(qv_backend *be, const float *src, void *dst, size_t n);
/* Run-time switches of the batch-1 work (issue 6), so that one device run can time old and new
 * side by side. Read from the environment at creation (defaults: all 0, the measured path,
 * except kv_bf16, 1):
 *   QV_CUDA_GEMV=new        gemv_new: the split-K multi-row GEMV (qv_cuda_gemv2) for n <= 8
 *   QV_CUDA_FUSE=1          all three fusions below (each also alone: QV_CUDA_FUSE_NORM=1,
 *                           QV_CUDA_FUSE_SWIGLU=1, QV_CUDA_FUSE_ROPE_KV=1)
 *     fuse_norm:    RMSNorm folded into the prologue of the next GEMV group (needs gemv_new)
 *     fuse_swiglu:  SwiGLU folded into the gate/up GEMV group's epilogue (needs gemv_new)
 *     fuse_rope_kv: RoPE of q and k and the KV store in one launch
 *   QV_CUDA_KV_BF16=0       kv_bf16 (on by default): K/V pages stored bf16 (attention sums in
 *                           fp32), layers packed at 2 bytes per element; pools made by
 *                           qv_kv_cache_create take 2 bytes per element (iface kv_elem_bytes)
 *                           and keep their element type if the switch changes later
 *   QV_CUDA_PDL=1           pdl: programmatic dependent launch for the backend's own kernels
 *                           (process-wide, qv_cuda_set_pdl): a kernel's blocks start while the
 *                           previous kernel drains; GEMVs prefetch weights into L2 meanwhile
 * A value 0/old turns a switch off. */
typedef struct qv_cuda_tuning {
    int gemv_new, fuse_norm, fuse_swiglu, fuse_rope_kv, kv_bf16, pdl;
} qv_cuda_tuning;
/* The switches in effect. Thread: the backend's thread. */
void qv_backend_cuda_get_tuning(const qv_backend *be, qv_cuda_tuning *out);
/* Changes the switches (op tests, benchmarks): pending work is enqueued first and recorded CUDA
 * graphs are dropped. Changing kv_bf16 makes K/V already stored unreadable: only call it with no
 * live sequences. Fusions that need gemv_new are ignored without it. Thread: the backend's. */
void qv_backend_cuda_set_tuning(qv_backend *be, const qv_cuda_tuning *t);
/* Bytes per stored K/V element (4, or 2 with kv_bf16): what a pool really needs per element. */
int qv_backend_cuda_kv_elem_bytes(const qv_backend *be);

/* 1 when activations are rounded to fp16 (fp16 models), 0 for bf16. */
int qv_backend_cuda_act_fp16(const qv_backend *be);
/* True while steps may be recorded as CUDA graphs (QV_CUDA_GRAPHS is not 0 and no capture has
 * failed). */
bool qv_backend_cuda_graphs_on(const qv_backend *be);
/* The compute stream (a cudaStream_t), for the adapter pool's event ordering. */
void *qv_backend_cuda_stream(const qv_backend *be);

/* Measures device-to-device copy bandwidth in bytes/s over `bytes` (read + write counted,
 * i.e. 2*bytes per copy), best of `reps`. Returns 0 on error. Uses its own buffers. */
double qv_cuda_measure_d2d_bandwidth(size_t bytes, int reps);

#ifdef __cplusplus
}
#endif
#endif /* QV_BACKEND_CUDA_H */
