/*
 * sgmv_plan.h - the segment table of the device SGMV kernels (engine/cuda/sgmv.cu) and its
 * host-side validation, in plain C so that it is built and tested without CUDA.
 *
 * What: one qv_sgmv_seg per (adapter segment, projection) of a batch. A table covers every
 * segment of one kernel launch: the shrink computes tmp = x·Aᵀ for each segment with its own
 * rank, the expand adds scale·(tmp·Bᵀ) into each segment's output rows. Several projections
 * that share an input x (q/k/v, gate/up) are fused by putting their segments in one table, each
 * with its own B, y, ldy and n_out. The layout is shared bit for bit with the device (plain
 * pointers and sized integers, 64 bytes).
 * What not: no device memory, no kernel launch (engine/cuda/sgmv.h), no adapter knowledge.
 * Invariants (enforced by qv_sgmv_plan_build): 1 <= rank <= QV_SGMV_MAX_RANK; token rows
 * [t0, t0 + n) lie in [0, n_tokens); segments writing the same y never share a token row (the
 * expand adds without atomics); every segment's tmp block is its own (packed in table order).
 * Thread: any (pure functions on caller memory).
 */
#ifndef QV_SGMV_PLAN_H
#define QV_SGMV_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest LoRA rank the kernels take (ranks are never padded to it). */
#define QV_SGMV_MAX_RANK 256
/* Largest number of segments of one launch (grid z limit). */
#define QV_SGMV_MAX_SEGS 65535

typedef struct qv_sgmv_seg {
    const void *a;    /* (rank, n_in) half (bf16, or fp16), row stride n_in, device memory */
    const void *b;    /* (n_out, rank) half, row stride rank, device memory */
    float *y;         /* output: token row t (absolute) at y + t * ldy, n_out floats */
    int64_t ldy;      /* floats between rows of y, >= n_out */
    int64_t tmp_off;  /* floats: the segment's (n, rank) block of tmp (set by the plan) */
    int32_t t0, n;    /* token rows [t0, t0 + n) of x and y; n may be 0 (empty segment) */
    int32_t rank;     /* 1 .. QV_SGMV_MAX_RANK */
    int32_t n_out;    /* output columns written */
    float scale;      /* alpha / r (or rsLoRA's alpha / sqrt(r)) */
    int32_t reserved; /* 0 */
} qv_sgmv_seg;

/* One segment of a per-row scaling: rows [t0, t0 + n) of x, columns [0, n_cols):
 *   mode 0 (IA3):  x[t][c] *= vec[c];
 *   mode 1 (DoRA): x[t][c] = vec[c] * x[t][c] + (1 - vec[c]) * bias[c] (bias may be NULL: 0),
 *                  i.e. vec ⊙ (x - bias) + bias, the DoRA rescaling of W x + LoRA with the base
 *                  bias kept out of it;
 *   mode 2 (copy): x[t][c] = vec[c] (a virtual token's prompt embedding).
 * vec is half (bf16, or fp16) device memory, bias F32 device memory; n may be 0 (empty segment,
 * vec may be NULL). Shared bit for bit with the device (48 bytes). */
typedef struct qv_seg_scale {
    float *x;          /* backend memory; row t (absolute) at x + t * ldx */
    const void *vec;   /* (n_cols) half, device memory */
    const float *bias; /* (n_cols) or NULL; mode 1 only */
    int64_t ldx;       /* floats between rows, >= n_cols */
    int32_t t0, n;     /* token rows */
    int32_t n_cols;
    int32_t mode; /* 0 IA3, 1 DoRA, 2 copy */
} qv_seg_scale;

/* One segment of a bottleneck unit (FORMATS.md 5.4) at one location of one layer: token rows
 * [t0, t0 + n) of the sub-block output h and the block residual x (kernel arguments, shared by
 * every entry) become the adapter's output (x + h after the launch is the unit's output).
 * Weights are half (bf16, or fp16) device memory; the optional vectors (channel scaling, the
 * adapter LayerNorms) are NULL when absent; n may be 0 (empty segment). Shared bit for bit with
 * the device (96 bytes). */
typedef struct qv_bn_seg {
    const void *down_w;        /* (d, dim) */
    const void *down_b;        /* (d) */
    const void *up_w;          /* (dim, d) */
    const void *up_b;          /* (dim) */
    const void *scale_ch;      /* (dim) channel scaling, or NULL: `scaling` */
    const void *lnb_w, *lnb_b; /* (dim) LayerNorm before the unit, or NULL */
    const void *lna_w, *lna_b; /* (dim) LayerNorm after the unit, or NULL */
    int32_t t0, n;
    int32_t d;     /* bottleneck size */
    int32_t flags; /* QV_BN_F_* */
    float scaling;
    int32_t act; /* enum qv_bn_act */
} qv_bn_seg;

#define QV_BN_F_PARALLEL 1        /* input x, h += s·Up(act(Down(x))) (LN after) */
#define QV_BN_F_ORIG_LN_BEFORE 2  /* a = h + x, else a = h */
#define QV_BN_F_ORIG_LN_AFTER 4   /* output o + x, else o */
#define QV_BN_F_RES_BEFORE_LN 8   /* the unit's residual is h, else a */
#define QV_BN_F_ADAPTER_RES_LN 16 /* LN after of (u + residual), else LN(u) + residual */

/* One segment of adaption-prompt attention (PEFT LLaMA-Adapter) at one layer: for token rows
 * [t0, t0 + n), every query head attends (its own softmax) over the adapter's len prompt
 * positions, whose keys and values k, v ((len, n_kv_heads * head_dim) half device memory, no
 * RoPE) were computed through the layer's k/v projections, and adds gate times the result to
 * the attention output. n may be 0 (empty segment). Shared with the device (32 bytes). */
typedef struct qv_ap_seg {
    const void *k, *v;
    int32_t t0, n;
    int32_t len;
    float gate;
} qv_ap_seg;

/* Longest adaption prompt the kernel takes. */
#define QV_AP_MAX_LEN 1024

/* Arguments of the adaption-prompt attention launch of one layer (engine/cuda/sgmv.h): for every
 * entry of tab, the gated prompt attention of each of its rows of q (roped queries, (n_tokens,
 * n_heads * head_dim)) is added into att (same shape), and when bias != NULL (the o_proj bias,
 * device fp32) that bias is added into the residual rows x (n_tokens, dim) once more (PEFT projects
 * the adapter output through o_proj separately). */
typedef struct qv_ap_args {
    const qv_ap_seg *tab; /* device memory, n_tab entries */
    int n_tab, max_n;     /* max_n >= every entry's n */
    const float *q;
    float *att;
    float *x;
    const float *bias;
    int n_heads, n_kv_heads, head_dim, dim;
    float scale; /* 1 / sqrt(head_dim) */
    int fp16;    /* k and v are fp16, else bf16 */
} qv_ap_args;
/* Launch shape of a table: upper bounds over its segments. The kernels loop over whatever the
 * grid does not cover, so these only shape the grid; they are part of a CUDA graph's key. */
typedef struct qv_sgmv_plan {
    int n_segs;
    int max_n;         /* largest segment length (tokens) */
    int max_rank;      /* largest rank */
    int max_n_out;     /* largest n_out */
    size_t tmp_floats; /* sum of n * rank: floats of the shrink output */
} qv_sgmv_plan;

/* Validates segs[0..n_segs) for a batch of n_tokens rows, assigns each segment's tmp_off
 * (packed in table order, segment s after all earlier ones) and fills *plan.
 * Errors: QV_ERR_INVALID (a rank out of range, rows outside the batch, NULL weights or y for a
 * non-empty segment, ldy < n_out, two segments writing the same rows of the same y, too many
 * segments), with the offending segment named in err. Thread: any. */
qv_status qv_sgmv_plan_build(qv_sgmv_seg *segs, int n_segs, int n_tokens, qv_sgmv_plan *plan,
                             qv_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QV_SGMV_PLAN_H */
