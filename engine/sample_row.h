/*
 * sample_row.h - what a device backend needs to sample one row of logits the way the host
 * sampler (sampler.h) does: the row's parameters, the uniform number of its draw, and its
 * repetition context as (token id, times generated) pairs.
 *
 * What it is not: no code; plain C structs shared by the engine, the forward pass, the backend
 * vtable and the CUDA kernels (engine/cuda/sample.cu), so their layout must not depend on the
 * compiler (fixed-width 4- and 8-byte fields, sizes multiples of their alignment).
 */
#ifndef QV_SAMPLE_ROW_H
#define QV_SAMPLE_ROW_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest accepted n_logprobs (OpenAI's limit). */
#define QV_SAMPLER_MAX_LOGPROBS 20

/* Log-probabilities reported with a sampled token (sampler.h: qv_sampler_sample). */
typedef struct qv_logprobs {
    int32_t token;
    float logprob;                            /* of the chosen token */
    int32_t n_top;                            /* min(n_logprobs, n_vocab) */
    int32_t top_ids[QV_SAMPLER_MAX_LOGPROBS]; /* descending logprob, lower id first on ties */
    float top_logprobs[QV_SAMPLER_MAX_LOGPROBS];
} qv_logprobs;

/* One token of a sequence's repetition context: its id and how many times it was generated
 * (0 for a prompt-only token; the presence/frequency penalties count generated tokens only). */
typedef struct qv_token_count {
    int32_t id;
    uint32_t count;
} qv_token_count;

/* Sampling parameters of one logits row (semantics of qv_sampling_params, docs/sampling.md). */
typedef struct qv_sample_row {
    double u;                 /* the draw's uniform number in [0, 1) (qv_sampler_next_uniform) */
    float temperature;        /* below QV_SAMPLER_MIN_TEMPERATURE: greedy (argmax, lowest id) */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    int32_t top_k;            /* <= 0 or >= n_vocab = off */
    int32_t pen_off;          /* the row's context: pen[pen_off, pen_off + pen_n) */
    int32_t pen_n;            /* 0 = no penalties for this row */
    int32_t n_logprobs;       /* 0..QV_SAMPLER_MAX_LOGPROBS alternatives to report (0: none) */
} qv_sample_row;

#ifdef __cplusplus
}
#endif
#endif /* QV_SAMPLE_ROW_H */
