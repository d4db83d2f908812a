/*
 * golden_util.h - shared by the golden tests: run a model through qv_forward with a private KV
 * cache, one sequence at a time, and read float arrays out of cJSON fixtures.
 * Linked into every test of tests/engine/: tests/CMakeLists.txt links each area's
 * *_util.c files into that area's tests.
 */
#ifndef QV_TEST_GOLDEN_UTIL_H
#define QV_TEST_GOLDEN_UTIL_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/backend.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

typedef struct golden_runner {
    qv_model *m;
    qv_backend *be;
    qv_kv_cache *kv;
    qv_forward *fwd;
} golden_runner;

int golden_open(golden_runner *r, const char *path, int n_threads, int n_pages, int page_size,
                int max_tokens);
/* The same with the K/V pages in bf16 (kv_bf16) or F32. */
int golden_open_kv(golden_runner *r, const char *path, int n_threads, int n_pages, int page_size,
                   int max_tokens, bool kv_bf16);
void golden_close(golden_runner *r);
int golden_feed(golden_runner *r, qv_kv_seq *seq, const int32_t *ids, int n, int pos0,
                int all_logits, float *logits);
/* The same with adapter ad (NULL: none) acting on the chunk's positions from act on (0: all
 * of them; an activated LoRA's qv_adapter_alora_start); earlier ones in a segment without it. */
struct qv_adapter;
int golden_feed_adapter(golden_runner *r, qv_kv_seq *seq, const struct qv_adapter *ad, int act,
                        const int32_t *ids, int n, int pos0, int all_logits, float *logits);
int json_f32_array(const cJSON *a, float *out, int n);
int32_t *json_i32_array(const cJSON *a, int *n);
int argmax_f32(const float *x, int n);
/* Parses the JSON fixture at rel (relative to the source tree, at most 64 MiB); NULL (with a
 * message on stderr) when it cannot be read or parsed. Owner: caller (cJSON_Delete). */
cJSON *json_read_fixture(const char *rel);
/* Decodes the hex string h into out (at most cap bytes); returns the byte count, or SIZE_MAX
 * when h is not hex or does not fit. */
size_t hex_decode(const char *h, uint8_t *out, size_t cap);

#endif
