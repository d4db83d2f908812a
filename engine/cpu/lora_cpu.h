/*
 * lora_cpu.h - internal: segmented LoRA shrink/expand kernels of the CPU backend (lora_cpu.c).
 *
 * What: for a batch whose token rows are grouped in segments (one adapter each), one shrink call
 * computes t = x·Aᵀ for every segment with its own rank, and one expand call accumulates
 * y += scale·(t·Bᵀ + b_bias) for every segment; qv__lora_apply does both in one pool run. No
 * padding to a maximum rank. Weights are F32, F16 or BF16 (per segment, as the adapter file
 * stores them); 16-bit weights are widened to F32 in registers (exact) and every sum is F32.
 * What not: no knowledge of adapters, layers or DoRA (adapter_apply.c composes those).
 * Invariant (batch invariance): every output element is computed by one thread in an order that
 * depends only on its own token row, never on the batch size, segment layout, thread count or
 * entry point. For a given backend, a 16-bit segment gives bitwise the result of the F32
 * segment holding the widened weights.
 * Thread: the engine thread that owns the backend; the work is spread over the backend's pool.
 */
#ifndef QV_LORA_CPU_H
#define QV_LORA_CPU_H

#include <stdint.h>

#include "backend.h"

typedef struct qv__lora_seg {
    int t0, n;           /* token rows [t0, t0 + n) of x and y */
    int rank;            /* > 0 */
    float scale;         /* alpha / r (or rsLoRA) */
    const float *a;      /* (rank, n_in), when wtype == QV_DTYPE_F32 */
    const float *b;      /* (n_out, rank), when wtype == QV_DTYPE_F32 */
    const float *b_bias; /* (n_out) or NULL; always F32 */
    /* Optional per-segment geometry, so one call can cover several projections: when x is
     * non-NULL the segment reads its rows from x (stride ldx, n_in columns) instead of the
     * call's input; when y is non-NULL it writes y (stride ldy, n_out columns). */
    const float *x;
    size_t ldx;
    int n_in;
    float *y;
    size_t ldy;
    int n_out;
    /* Weight dtype: QV_DTYPE_F32 (the zero default) reads a and b; QV_DTYPE_F16 or
     * QV_DTYPE_BF16 reads the raw 16-bit values a16 (rank, n_in) and b16 (n_out, rank). */
    enum qv_dtype wtype;
    const uint16_t *a16;
    const uint16_t *b16;
} qv__lora_seg;

/* Floats of the shrink scratch the segments need: sum of n * rank. */
size_t qv__lora_tmp_floats(const qv__lora_seg *segs, int n_segs);

/* tmp (packed per segment, segment s after all earlier ones, rows of `rank` floats) =
 * x[t0..t0+n) · Aᵀ. x rows have stride ldx floats, n_in of them are read (per-segment x
 * overrides). `be` must be the CPU backend (its pool is used); NULL runs single-threaded with
 * the portable kernels. */
void qv__lora_shrink(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                     size_t ldx, int n_in, float *tmp);

/* y[t, o] += scale * (Σ_r B[o, r] tmp[t, r] + b_bias[o]) for every segment's rows, o < n_out;
 * y rows have stride ldy floats. Same `be` rule as qv__lora_shrink. */
void qv__lora_expand(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *tmp,
                     int n_out, float *y, size_t ldy);

/* qv__lora_shrink(x, ldx, n_in → tmp) then qv__lora_expand(tmp → n_out, y, ldy), bitwise equal
 * to the two calls. When the segments have enough rows to keep the pool busy, every row's
 * shrink and expand run back to back on one thread in a single pool run, rows dealt to the
 * threads by their weight bytes; otherwise it makes the two calls. Same `be` rule. */
void qv__lora_apply(qv_backend *be, const qv__lora_seg *segs, int n_segs, const float *x,
                    size_t ldx, int n_in, float *tmp, int n_out, float *y, size_t ldy);

/* Dot product of n floats with a fixed summation order (8 lanes, then a fixed tree). */
float qv__lora_dot(const float *a, const float *b, int n);

#endif /* QV_LORA_CPU_H */
