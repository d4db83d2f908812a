/*
 * lora_cpu.h - internal: segmented LoRA shrink/expand kernels of the CPU backend (lora_cpu.c).
 *
 * What: for a batch whose token rows are grouped in segments (one adapter each), one shrink call
 * computes t = x·Aᵀ for every segment with its own rank, and one expand call accumulates
 * y += scale·(t·Bᵀ + b_bias) for every segment. No padding to a maximum rank.
 * What not: no knowledge of adapters, layers or DoRA (adapter_apply.c composes those).
 * Invariant (batch invariance): every output element is computed by one thread in an order that
 * depends only on its own token row, never on the batch size, segment layout or thread count.
 * Thread: the engine thread that owns the backend; the work is spread over the backend's pool.
 */
#ifndef QV_LORA_CPU_H
#define QV_LORA_CPU_H

#include "backend.h"

typedef struct qv__lora_seg {
    int t0, n;           /* token rows [t0, t0 + n) of x and y */
    int rank;            /* > 0 */
    float scale;         /* alpha / r (or rsLoRA) */
    const float *a;      /* (rank, n_in) */
    const float *b;      /* (n_out, rank) */
    const float *b_bias; /* (n_out) or NULL */
    /* Optional per-segment geometry, so one call can cover several projections: when x is
     * non-NULL the segment reads its rows from x (stride ldx, n_in columns) instead of the
     * call's input; when y is non-NULL it writes y (stride ldy, n_out columns). */
    const float *x;
    size_t ldx;
    int n_in;
    float *y;
    size_t ldy;
    int n_out;
} qv__lora_seg;

/* Floats of the shrink scratch the segments need: sum of n * rank. */
size_t qv__lora_tmp_floats(const qv__lora_seg *segs, int n_segs);

/* tmp (packed per segment, segment s after all earlier ones, rows of `rank` floats) =
 * x[t0..t0+n) · Aᵀ. x rows have stride ldx floats, n_in of them are read (per-segment x
 * overrides). `be` must be the CPU
 * backend (its pool is used); NULL runs single-threaded. */
void qv__lora_shrink(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                     size_t ldx, int n_in, float *tmp);

/* y[t, o] += scale * (Σ_r B[o, r] tmp[t, r] + b_bias[o]) for every segment's rows, o < n_out;
 * y rows have stride ldy floats. Same `be` rule as qv__lora_shrink. */
void qv__lora_expand(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *tmp,
                     int n_out, float *y, size_t ldy);

/* Dot product of n floats with a fixed summation order (8 lanes, then a fixed tree). */
float qv__lora_dot(const float *a, const float *b, int n);

#endif /* QV_LORA_CPU_H */
