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

#endif
