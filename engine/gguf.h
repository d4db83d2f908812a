/*
 * gguf.h - GGUF v2/v3 reader: validated metadata key/values and tensor infos over an mmapped
 * (or caller-provided) buffer. FORMATS.md section 3 is the spec; section 7 the checklist.
 *
 * Every length, count and offset is checked against the buffer before it is used; a malformed
 * file gives QV_ERR_INVALID (or QV_ERR_UNSUPPORTED for valid-but-unsupported content) with a
 * message naming the problem, never a crash. Immutable after open: any thread may read.
 */
#ifndef QV_GGUF_H
#define QV_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Metadata value types (gguf_metadata_value_type). */
enum qv_gguf_type {
    QV_GGUF_UINT8 = 0,
    QV_GGUF_INT8 = 1,
    QV_GGUF_UINT16 = 2,
    QV_GGUF_INT16 = 3,
    QV_GGUF_UINT32 = 4,
    QV_GGUF_INT32 = 5,
    QV_GGUF_FLOAT32 = 6,
    QV_GGUF_BOOL = 7,
    QV_GGUF_STRING = 8,
    QV_GGUF_ARRAY = 9,
    QV_GGUF_UINT64 = 10,
    QV_GGUF_INT64 = 11,
    QV_GGUF_FLOAT64 = 12,
};

typedef struct qv_gguf qv_gguf;

typedef struct qv_gguf_tensor {
    const char *name;    /* NUL-terminated copy (owned by the qv_gguf) */
    uint32_t ggml_type;  /* raw ggml type id */
    enum qv_dtype dtype; /* mapped dtype; QV_DTYPE_COUNT when quiver does not support it */
    int n_dims;
    int64_t ne[4];    /* GGML order: ne[0] is the contiguous dimension; missing dims = 1 */
    const void *data; /* into the buffer */
    uint64_t n_bytes;
} qv_gguf_tensor;

/* Opens and validates a file (mmapped read-only). Owner: caller, release with qv_gguf_close. */
qv_status qv_gguf_open(const char *path, qv_gguf **out, qv_error *err);
/* Parses a buffer that the caller keeps alive for the lifetime of the result (fuzzing, tests). */
qv_status qv_gguf_open_buffer(const void *buf, size_t len, qv_gguf **out, qv_error *err);
/* Accepts NULL. */
void qv_gguf_close(qv_gguf *g);

uint32_t qv_gguf_version(const qv_gguf *g);
size_t qv_gguf_n_tensors(const qv_gguf *g);
const qv_gguf_tensor *qv_gguf_tensor_at(const qv_gguf *g, size_t i);
const qv_gguf_tensor *qv_gguf_find_tensor(const qv_gguf *g, const char *name);

/* Metadata lookups. Each returns false when the key is absent or has an incompatible type.
 * get_int accepts any integer type (and bool); get_float accepts FLOAT32/FLOAT64. */
bool qv_gguf_has(const qv_gguf *g, const char *key);
bool qv_gguf_get_int(const qv_gguf *g, const char *key, int64_t *out);
bool qv_gguf_get_float(const qv_gguf *g, const char *key, double *out);
bool qv_gguf_get_bool(const qv_gguf *g, const char *key, bool *out);
/* String value (not NUL-terminated in the file: use len). */
bool qv_gguf_get_str(const qv_gguf *g, const char *key, const char **s, size_t *len);
/* Array: element type and count. */
bool qv_gguf_get_arr(const qv_gguf *g, const char *key, enum qv_gguf_type *elem_type, uint64_t *n);
/* Element i of a STRING array. */
bool qv_gguf_arr_str(const qv_gguf *g, const char *key, uint64_t i, const char **s, size_t *len);
/* Element i of a numeric array converted to double / int64. */
bool qv_gguf_arr_float(const qv_gguf *g, const char *key, uint64_t i, double *out);
bool qv_gguf_arr_int(const qv_gguf *g, const char *key, uint64_t i, int64_t *out);

/* Data alignment in bytes (general.alignment or 32) and mapped file size (0 for buffers). */
uint32_t qv_gguf_alignment(const qv_gguf *g);
size_t qv_gguf_file_size(const qv_gguf *g);
/* Name of a ggml type id ("Q4_1", "Q5_K", ...; "unknown" for ids ggml does not define). */
const char *qv_gguf_ggml_type_name(uint32_t ggml_type);

/* Iteration over all keys (for `quiver info` and debugging). */
size_t qv_gguf_n_kv(const qv_gguf *g);
const char *qv_gguf_key_at(const qv_gguf *g, size_t i);
enum qv_gguf_type qv_gguf_type_at(const qv_gguf *g, size_t i);

#ifdef __cplusplus
}
#endif
#endif /* QV_GGUF_H */
