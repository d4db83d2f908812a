/*
 * test_util.h - helpers shared by the cmocka test executables: fixture paths, tolerant array
 * comparison that reports the worst element, and small file helpers.
 */
#ifndef QV_TEST_UTIL_H
#define QV_TEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Absolute path of a file under the source tree (tests/fixtures/...). Static buffer rotation:
 * valid until 8 more calls. */
const char *qv_test_path(const char *rel);

/* Returns true if the file exists. */
bool qv_test_exists(const char *path);

/* Compares got to want elementwise with |got-want| <= atol + rtol*|want|. Prints the worst
 * element (index, values, abs and rel error) with `label` and returns the number of failures. */
size_t qv_test_compare_f32(const char *label, const float *got, const float *want, size_t n,
                           double atol, double rtol);

/* Max over i of |got-want| / max(max_j |want_j|, tiny): error relative to the row scale. */
double qv_test_max_rel_err(const float *got, const float *want, size_t n);

struct qv_adapter;
struct qv_model;
/* A LoRA of `rank` and `scale` on all seven projections of every layer of m (F32), its A and B
 * views into vals[n_vals] at offsets drawn from seed (the caller keeps vals alive); for tests
 * that need many adapters or large ones without files. Release with qv_test_free_lora. */
struct qv_adapter *qv_test_make_lora(const struct qv_model *m, int rank, float scale, float *vals,
                                     size_t n_vals, unsigned seed);
void qv_test_free_lora(struct qv_adapter *ad);

#endif
