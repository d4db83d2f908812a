/*
 * sample.h - token sampling on the device (sample.cu): one block per logits row draws the token
 * the host sampler (engine/sampler.c) would draw from the same row with the same uniform number,
 * so a sequence's tokens do not depend on where it was sampled (up to expf's last bit).
 *
 * What it is not: it does not own the PRNG (the engine draws u from the sequence's sampler).
 * Thread: launchers run on the host thread that owns the stream.
 */
#ifndef QV_CUDA_SAMPLE_H
#define QV_CUDA_SAMPLE_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#include "sample_row.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i] = the token sampled from row i of x (n, width) with rows[i] (device memory), in the
 * order of docs/sampling.md: penalties (from pen, device memory, NULL when no row has any;
 * they rewrite x's row in place), greedy argmax or temperature, top-k, top-p, min-p and the
 * inverse-CDF draw in ascending id order. Weights are summed in 2^-44 fixed point, so the
 * result is deterministic and independent of the launch shape. width <= 2^19.
 * lp (device memory, n entries, or NULL): lp[i].token for every row, and for rows with
 * n_logprobs > 0 the log-probabilities qv_sampler_sample reports (of the raw row); pen_raw
 * (device memory, as many floats as pen entries) then receives the context's raw logits.
 * Returns 0, or -1 when a launch failed (message on stderr). */
int qv_cuda_sample(float *x, int n, int width, const qv_sample_row *rows, const qv_token_count *pen,
                   float *pen_raw, int32_t *out, qv_logprobs *lp, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif /* QV_CUDA_SAMPLE_H */
