/*
 * sampler.h - the token sampler: turns one row of next-token logits into a token id, with
 * HF-transformers-compatible repetition penalty, temperature, top-k, top-p and min-p, OpenAI
 * presence/frequency penalties, a seeded PRNG and optional log-probabilities.
 *
 * What it is not: it does not run the model, batch rows, detokenize or check stop strings.
 * Grammar masks belong to the caller (set masked logits to -INFINITY first); the OpenAI
 * logit_bias and vLLM min_tokens edits are the sampler's (qv_sampler_set_edits).
 *
 * Invariants: a sampler holds every buffer it needs from qv_sampler_create on, so
 * qv_sampler_sample never allocates and cannot fail. Same parameters + same seed + same
 * sequence of logits and accepted tokens => same tokens (the PRNG is xoshiro256** seeded with
 * splitmix64; the draw is an inverse CDF over the kept tokens in ascending id order).
 * The processing order and its exact semantics are documented in docs/sampling.md.
 *
 * Thread: a qv_sampler is confined to one thread at a time (it has no locks). Different
 * samplers may be used concurrently unless they share a qv_sampler_scratch. The parameter
 * functions are pure.
 */
#ifndef QV_SAMPLER_H
#define QV_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "sample_row.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Temperatures in (0, this) are treated as greedy: dividing logits by a tiny temperature
 * overflows to inf (vLLM uses the same cut-off). */
#define QV_SAMPLER_MIN_TEMPERATURE 1e-5f

typedef struct qv_sampling_params {
    float temperature;        /* 0 = greedy (argmax, lowest id on ties) */
    int top_k;                /* 0 (or -1) = off; keeps every token >= the k-th largest value */
    float top_p;              /* 1 = off; (0, 1] */
    float min_p;              /* 0 = off; [0, 1] */
    float repetition_penalty; /* 1 = off; HF semantics (divide positive logits, multiply
                                 negative ones) over prompt + generated tokens; > 0 */
    float presence_penalty;   /* 0 = off; OpenAI semantics over generated tokens; [-2, 2] */
    float frequency_penalty;  /* 0 = off; OpenAI semantics over generated tokens; [-2, 2] */
    uint64_t seed;            /* same seed + same logits => same tokens */
    int n_logprobs;           /* 0..20 top alternatives to report */
} qv_sampling_params;

/* Fills *p with temperature 1, every filter and penalty off, seed 0, n_logprobs 0. */
void qv_sampling_params_default(qv_sampling_params *p);

/* Checks every field's range (see the field comments; NaN and infinities are rejected).
 * Returns QV_OK or QV_ERR_INVALID with a one-line message naming the field and its value. */
qv_status qv_sampling_params_validate(const qv_sampling_params *p, qv_error *err);

typedef struct qv_sampler qv_sampler;

/* One OpenAI logit_bias entry: `bias` is added to token `id`'s logit. */
typedef struct qv_token_bias {
    int32_t id;
    float bias;
} qv_token_bias;

/* Largest accepted bias magnitude (OpenAI's range is [-100, 100]). */
#define QV_SAMPLER_MAX_BIAS 100.0f
#define QV_SAMPLER_MAX_BAD_LEN 32 /* tokens of one vLLM bad word */

/* Per-call buffers of a sampler (20 bytes per vocabulary entry: 3 MB at 152k). Every sampler
 * created with qv_sampler_create owns one; an engine running many sequences on one thread can
 * create one scratch and share it between all their samplers instead, leaving 8 bytes per
 * vocabulary entry of context state per sampler. */
typedef struct qv_sampler_scratch qv_sampler_scratch;

/* Creates scratch for samplers of up to n_vocab entries. Ownership: the caller's, freed with
 * qv_sampler_scratch_free after every sampler borrowing it. Thread: samplers sharing one scratch
 * must not sample concurrently (the scratch holds nothing between calls, so they may take
 * turns on different threads). Errors: QV_ERR_INVALID (n_vocab <= 0), QV_ERR_NOMEM. */
qv_status qv_sampler_scratch_create(int n_vocab, qv_sampler_scratch **out);

/* Frees the scratch; NULL is accepted. */
void qv_sampler_scratch_free(qv_sampler_scratch *w);

/* Creates a sampler for rows of n_vocab logits with a copy of *p. Allocates O(n_vocab) context
 * state and its own scratch (about 28 bytes per vocabulary entry in all) once, here.
 * Ownership: *out belongs to the caller, freed with qv_sampler_free.
 * Errors: QV_ERR_INVALID (bad parameters or n_vocab <= 0), QV_ERR_NOMEM. *out is NULL then. */
qv_status qv_sampler_create(const qv_sampling_params *p, int n_vocab, qv_sampler **out);

/* Like qv_sampler_create, but the sampler borrows `scratch` (created for >= n_vocab entries,
 * outliving the sampler) instead of allocating its own; NULL scratch = qv_sampler_create.
 * Errors: as qv_sampler_create; QV_ERR_INVALID also when the scratch is too small. */
qv_status qv_sampler_create_with_scratch(const qv_sampling_params *p, int n_vocab,
                                         qv_sampler_scratch *scratch, qv_sampler **out);

/* Frees the sampler; NULL is accepted. */
void qv_sampler_free(qv_sampler *s);

/* Forgets the prompt and generated tokens and re-seeds the PRNG from the parameters, so the
 * sampler behaves as if just created. */
void qv_sampler_reset(qv_sampler *s);

/* Adds prompt tokens to the repetition-penalty context (not to the presence/frequency counts,
 * which cover generated tokens only). Ids outside [0, n_vocab) are ignored (as HF does). */
void qv_sampler_add_prompt(qv_sampler *s, const int32_t *ids, size_t n);

/* Records a generated token: it joins the repetition context and its presence/frequency count
 * grows by one. Ids outside [0, n_vocab) are ignored (but count toward min_tokens). */
void qv_sampler_accept(qv_sampler *s, int32_t token);

/* Sets the edits made to every row before the penalties (HF's order: SequenceBias first,
 * MinNewTokensLength's -inf commutes with the penalties): bias[j].bias is added to the logit
 * of bias[j].id (OpenAI logit_bias; a later entry for the same id replaces an earlier one),
 * and while fewer than min_tokens tokens have been accepted every id of suppress[n_suppress]
 * is set to -inf (vLLM min_tokens: the end-of-generation and stop token ids). Logprobs stay
 * those of the raw row. Copies both lists and replaces earlier edits.
 * Errors: QV_ERR_INVALID (an id outside [0, n_vocab), a bias that is not finite or beyond
 * +-QV_SAMPLER_MAX_BIAS, negative counts), QV_ERR_NOMEM; the sampler is unchanged then. */
qv_status qv_sampler_set_edits(qv_sampler *s, const qv_token_bias *bias, int n_bias, int min_tokens,
                               const int32_t *suppress, int n_suppress, qv_error *err);
/* vLLM allowed_token_ids: every id but ids[n] gets -inf before the other edits (end-of-
 * generation ids too, unless listed); n 0 lifts the restriction. Copies the list; logprobs
 * stay those of the raw row. Errors: QV_ERR_INVALID (an id outside [0, n_vocab)),
 * QV_ERR_NOMEM; the sampler is unchanged then. */
qv_status qv_sampler_set_allowed(qv_sampler *s, const int32_t *ids, int n, qv_error *err);
/* vLLM bad_words: word w is the ids ids[off .. off + lens[w]) (words one after another in
 * ids); its last id gets -inf when the tokens accepted so far end with the ones before it (a
 * one-token word: always). Applied after the allowed set, before logit_bias. Copies the
 * lists; n_words 0 removes them. Errors: QV_ERR_INVALID (an id outside [0, n_vocab), a word of
 * 0 or more than QV_SAMPLER_MAX_BAD_LEN ids), QV_ERR_NOMEM; the sampler is unchanged then. */
qv_status qv_sampler_set_bad_words(qv_sampler *s, const int32_t *ids, const int32_t *lens,
                                   int n_words, qv_error *err);
/* Whether the next row is edited: a logit bias, ids still suppressed by min_tokens, an
 * allowed set or bad words. */
bool qv_sampler_has_edits(const qv_sampler *s);

/* For callers that sample a row elsewhere (a device backend, engine/cuda/sample.cu) with the
 * sampler's semantics and stream: */
/* The parameters the sampler was created with. */
const qv_sampling_params *qv_sampler_params(const qv_sampler *s);
/* Whether a repetition, presence or frequency penalty is on. */
bool qv_sampler_has_penalties(const qv_sampler *s);
/* Advances the PRNG by one draw and returns the uniform number in [0, 1) that
 * qv_sampler_sample would have used for a sampled (temperature > 0) row now. */
double qv_sampler_next_uniform(qv_sampler *s);
/* Number of distinct ids in the repetition context (prompt + generated tokens). */
int qv_sampler_context_size(const qv_sampler *s);
/* Writes the first min(cap, context size) context ids, in first-seen order, with how many
 * times each was generated, into out; returns how many it wrote. */
int qv_sampler_context(const qv_sampler *s, qv_token_count *out, int cap);

/* Samples one token from logits[n_vocab]. The row is modified in place (penalties and
 * temperature are applied to it). When lp is not NULL it receives log-softmax values of the
 * raw, unmodified logits (the model's distribution, not the filtered one): the chosen token's
 * and the n_logprobs largest. Does not record the token: call qv_sampler_accept for that.
 * Never allocates, never fails: a row with no finite logit gives token 0. */
int32_t qv_sampler_sample(qv_sampler *s, float *logits, qv_logprobs *lp);

/* The log-probabilities of one raw row for a token chosen elsewhere (a prompt token): its
 * log-softmax value and the n_top (0..QV_SAMPLER_MAX_LOGPROBS) most likely tokens, as
 * qv_sampler_sample reports them. The row is not modified. */
void qv_logprobs_of_row(const float *row, int n_vocab, int32_t token, int n_top, qv_logprobs *lp);
/* vLLM's rank of `token` in a raw logits row: 1 + the number of tokens with a larger logit
 * (ties share the rank). */
int qv_logprob_rank(const float *row, int n_vocab, int32_t token);

/* Writes into probs[n_vocab] the distribution qv_sampler_sample would draw from for this row
 * (after penalties, temperature, top-k, top-p and min-p; zero for filtered tokens; one-hot on
 * the argmax for greedy). Modifies logits like qv_sampler_sample; draws nothing. For tests and
 * debugging. */
void qv_sampler_probs(qv_sampler *s, float *logits, float *probs);

#ifdef __cplusplus
}
#endif
#endif /* QV_SAMPLER_H */
