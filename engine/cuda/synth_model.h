/*
 * synth_model.h - a qv_model built from a configuration alone, for GPU benchmarks: no file and
 * no host weight data. Every tensor's `data` is a distinct dummy host address (a key, never
 * dereferenced) so the CUDA backend, created with qv_cuda_opts.random_seed != 0, fills the
 * device weights with deterministic uniform values (projections bf16, scale 1/sqrt(n_cols);
 * norm weights 1). rope_inv_freq is real (theta^(-2i/head_dim), no scaling).
 * What not: never use it with the CPU backend or a CUDA backend without random_seed (they
 * would read the dummy addresses). Thread: any; immutable after creation.
 */
#ifndef QV_SYNTH_MODEL_H
#define QV_SYNTH_MODEL_H

#include "model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Builds the model for cfg (n_vocab, dim, n_ff, n_layers, n_heads, n_kv_heads, head_dim,
 * norm_eps, rope_theta, tie_embeddings are used; head_dim 0 = dim / n_heads).
 * Owner: caller, release with qv_synth_model_free. Errors: QV_ERR_INVALID, QV_ERR_NOMEM. */
qv_status qv_synth_model_create(const qv_model_config *cfg, qv_model **out, qv_error *err);
void qv_synth_model_free(qv_model *m);

/* The benchmark shapes (BENCH.md): SmolLM2-135M and a ~1B Llama 3 (Llama-3.2-1B layout). */
qv_model_config qv_synth_config_smollm2_135m(void);
qv_model_config qv_synth_config_llama_1b(void);

#ifdef __cplusplus
}
#endif
#endif /* QV_SYNTH_MODEL_H */
