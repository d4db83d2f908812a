/*
 * adapter_test_util.h - helpers for the adapter tests: read fixture files, build small
 * safetensors buffers in memory (for refusal cases), and load base models once.
 */
#ifndef QV_ADAPTER_TEST_UTIL_H
#define QV_ADAPTER_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

typedef struct at_tensor {
    const char *name;
    const char *dtype; /* "F32", "F16", "BF16" (values converted from f32) */
    int n_dims;
    int64_t shape[4];
    const float *data; /* prod(shape) values, or NULL for zeros */
} at_tensor;

/* Reads a file under the source tree (NUL-terminated, free()). Aborts the test when missing. */
char *at_read(const char *rel, size_t *len);
/* Builds a safetensors file image (malloc'd; free()). */
char *at_st_build(const at_tensor *ts, size_t n, size_t *len);
/* Loads tests/fixtures/models/<name> once per process (never freed until at_models_free).
 * "smollm2" is the downloaded SmolLM2-135M-Instruct Q4_1 GGUF (at_smollm2_path); NULL when that
 * file is absent. */
const qv_model *at_model(const char *name);
/* $QUIVER_HOME/models/... or ~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf. */
const char *at_smollm2_path(void);
void at_models_free(void);

#endif
