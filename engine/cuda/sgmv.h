/*
 * sgmv.h - extern "C" launchers of the segmented LoRA kernels (sgmv.cu): SGMV shrink and
 * expand over a segment table in device memory (layout and validation: engine/sgmv_plan.h).
 *
 * What: shrink  tmp[seg block](t, r) = Σ_k x[t0 + t, k] · A[r, k]       (fp32 accumulate)
 *       expand  y[t0 + t, o]        += scale · Σ_r tmp[seg block](t, r) · B[o, r]
 * for every segment of the table in one launch each, every segment with its own rank (no
 * padding), scale, weights and (expand) output. x, A and B are half (bf16, or fp16 when
 * fp16 != 0); tmp and y are fp32 (the CUDA backend keeps activations in fp32).
 * Two shapes: max_n <= QV_SGMV_DECODE_MAX_N uses the decode kernels (shrink: one warp per rank
 * row with 16-byte loads along n_in, all the segment's tokens per warp; expand: one thread per
 * output column, the segment's tmp rows in shared memory); longer segments use the tiled
 * shrink (32x32 tiles of tokens x ranks through shared memory) and the expand with 32-token
 * tiles. Each token's expand sums r = 0..rank-1 in order in both shapes; the shrink's order
 * differs between the shapes (decode: lane partial sums + a fixed xor tree; tiled: k in order),
 * so a token's result is identical in any batch of the same shape and within fp32 rounding
 * across shapes.
 * What not: no validation of the device table (build it with qv_sgmv_plan_build), no
 * allocation, no synchronisation, no bias (lora_bias) and no DoRA.
 * Also here: the per-row adapter kernels that are not low-rank products (IA3 / DoRA row
 * scaling, bottleneck units, adaption-prompt attention), each over a segment table too.
 * Errors: launchers return 0, or -1 after logging a bad argument or a failed launch
 * (cudaGetLastError).
 * Thread: the host thread that owns the stream.
 */
#ifndef QV_CUDA_SGMV_H
#define QV_CUDA_SGMV_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "sgmv_plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Longest segment the decode kernels take. */
#define QV_SGMV_DECODE_MAX_N 4

/* One launch: the device table and its plan (sgmv_plan.h; the plan's bounds only shape the
 * grid, any values >= 1 give the same result). */
typedef struct qv_sgmv_args {
    const qv_sgmv_seg *segs; /* device memory, plan.n_segs entries */
    qv_sgmv_plan plan;
    int fp16; /* 0: bf16 A, B and x; 1: fp16 */
} qv_sgmv_args;

/* tmp = x·Aᵀ per segment. x (n_tokens, ldx) half on the device, n_in columns read; tmp device
 * fp32 of plan.tmp_floats. 16-byte loads are used when n_in % 8 == 0, ldx % 8 == 0 and x and
 * the segment's A are 16-byte aligned; other shapes take a scalar path. */
int qv_cuda_sgmv_shrink(const qv_sgmv_args *g, const void *x, int64_t ldx, int n_in, float *tmp,
                        cudaStream_t s);

/* y += scale · tmp·Bᵀ per segment (y, ldy and n_out from each segment). */
int qv_cuda_sgmv_expand(const qv_sgmv_args *g, const float *tmp, cudaStream_t s);

/* IA3 / DoRA row scaling: for each of the n_tab entries of tab (device memory), the scaling of
 * its mode (sgmv_plan.h). max_n >= every entry's n and max_cols >= every n_cols only shape the
 * grid; fp16: vec is fp16, else bf16. Entries must not overlap. */
int qv_cuda_seg_scale(const qv_seg_scale *tab, int n_tab, int max_n, int max_cols, int fp16,
                      cudaStream_t s);

/* Bottleneck units (sgmv_plan.h qv_bn_seg): for every entry of tab (device memory), rows
 * [t0, t0 + n) of h (n_tokens, dim) are rewritten so that x + h is the unit's output; x is read
 * only. Scratch (device fp32, for this launch only): token row t's unit output at
 * scratch_o + t * ld_scratch (dim floats) and its bottleneck activations at
 * scratch_t + t * ld_scratch (d floats), so ld_scratch >= max(dim, d). max_n >= every entry's n
 * only shapes the grid; fp16: the weights are fp16, else bf16. Entries must not overlap. */
int qv_cuda_bottleneck(const qv_bn_seg *tab, int n_tab, int max_n, const float *x, float *h,
                       int dim, float *scratch_o, float *scratch_t, int64_t ld_scratch, int fp16,
                       cudaStream_t s);

/* Adaption-prompt attention of one layer (arguments: sgmv_plan.h qv_ap_args). */
int qv_cuda_adaption(const qv_ap_args *a, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_SGMV_H */
