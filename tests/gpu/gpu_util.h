/*
 * gpu_util.h - shared by the gpu-labelled tests (linked into every tests/gpu/test_*.c):
 * the skip rule (no CUDA build / no device -> exit 77 with the reason printed), a seeded
 * random generator, and one model opened on a backend with its own KV cache and forward pass.
 */
#ifndef QV_TEST_GPU_UTIL_H
#define QV_TEST_GPU_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

/* Returns normally when a CUDA build runs on a machine with a device; otherwise prints
 * "SKIP: <reason>" and exits 77. */
void gpu_require_device(void);

/* Uniform float in [-1, 1) from a 32-bit LCG state. */
float gpu_randf(uint32_t *state);

typedef struct gpu_runner {
    qv_model *m;
    qv_backend *be;
    qv_kv_cache *kv;
    qv_forward *fwd;
    int on_cuda;
} gpu_runner;

/* Loads `path` and opens it on the CPU (cuda = 0, 2 threads) or the CUDA (cuda = 1)
 * backend with n_pages pages of page_size and batches of up to max_tokens. 0 on success. */
int gpu_runner_open(gpu_runner *r, const char *path, int cuda, int n_pages, int page_size,
                    int max_tokens);
void gpu_runner_close(gpu_runner *r);

/* A CUDA backend without a model (room for weight_bytes of test weights added later, an arena
 * of arena_bytes, batches of 256 tokens); NULL with the reason on stderr. */
qv_backend *gpu_cuda_empty(size_t weight_bytes, size_t arena_bytes);

/* Index of the largest element (first of equal maxima) and the gap to the second largest. */
int gpu_argmax(const float *x, int n, float *gap);

#endif

/* End-to-end check of one model: 3 sequences (prompts of 1, 11, 23 random tokens) generate
 * n_steps greedy tokens on the CPU backend (the reference); the CUDA backend is then
 * teacher-forced along the CPU's tokens, (a) one sequence at a time and (b) all three in
 * mixed batches (prefill chunks of <= 5 beside other sequences' decode tokens). At every step
 * the CUDA logits must be within `tol` of the CPU's (max error relative to the row's largest
 * |logit|) and the CUDA argmax must equal the CPU token unless the CPU's top-2 gap is within
 * twice the step's largest absolute logit error (a near tie). Prints the worst error.
 * Returns the number of failures (0 = pass). */
int gpu_check_model(const char *path, int n_steps, double tol);
