/*
 * safetensors.h - validated reader for safetensors files (FORMATS.md 1) and sharded HF
 * checkpoints (model.safetensors.index.json, FORMATS.md 1.5).
 *
 * Open = parse + validate everything once: header size caps, UTF-8 + JSON, no duplicate names,
 * offsets contiguous from 0 with no gaps or overlaps, byte sizes = prod(shape) * dtype bits / 8
 * with overflow checks, buffer fully indexed. After a successful open every tensor's bytes lie
 * inside the buffer, so callers never re-check bounds. Only F32, F16 and BF16 tensors are
 * accepted; other known dtypes (I64, F8_*, ...) are refused by name (QV_ERR_UNSUPPORTED).
 * Tensor data may be unaligned (the format guarantees no alignment): read with memcpy.
 * Not a writer. Immutable after open: any thread may read; only the owner closes.
 */
#ifndef QV_SAFETENSORS_H
#define QV_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QV_ST_MAX_DIMS 8
#define QV_ST_MAX_HEADER ((uint64_t)100000000) /* MAX_HEADER_SIZE of the reference reader */

typedef struct qv_st_file qv_st_file;

typedef struct qv_st_tensor {
    const char *name;              /* NUL-terminated, owned by the file object */
    enum qv_dtype dtype;           /* F32, F16 or BF16 */
    int n_dims;                    /* 0 (scalar) .. QV_ST_MAX_DIMS */
    int64_t shape[QV_ST_MAX_DIMS]; /* PyTorch order, last dim contiguous; unused dims = 1 */
    int64_t n_elems;
    const void *data; /* into the buffer; n_bytes long; may be unaligned */
    uint64_t n_bytes;
} qv_st_tensor;

/* Maps and validates `path`. Owner: caller, release with qv_st_close. Errors (one line, naming
 * the file): QV_ERR_NOT_FOUND / QV_ERR_IO (file), QV_ERR_INVALID (malformed),
 * QV_ERR_UNSUPPORTED (dtype), QV_ERR_LIMIT (header too large), QV_ERR_NOMEM. Any thread. */
qv_status qv_st_open(const char *path, qv_st_file **out, qv_error *err);

/* Same over a caller-owned buffer that must outlive the result (fuzzing, adapters in memory).
 * Error messages are not prefixed with a file name. */
qv_status qv_st_open_buffer(const void *buf, size_t len, qv_st_file **out, qv_error *err);

/* Accepts NULL. */
void qv_st_close(qv_st_file *f);

/* Number of tensors and tensor i in name order (i < n). */
size_t qv_st_n_tensors(const qv_st_file *f);
const qv_st_tensor *qv_st_tensor_at(const qv_st_file *f, size_t i);
/* Lookup by exact name (binary search); NULL when absent. */
const qv_st_tensor *qv_st_find(const qv_st_file *f, const char *name);
/* Value of a `__metadata__` entry, or NULL. The string is owned by the file object. */
const char *qv_st_metadata(const qv_st_file *f, const char *key);

/*
 * A set of safetensors files seen as one name space: either a single `model.safetensors` or
 * the shards named by `model.safetensors.index.json` (whose weight_map key set must equal the
 * union of the shards' tensor names, and whose entries must name the shard holding them).
 */
typedef struct qv_st_set qv_st_set;

/* Opens `dir`/model.safetensors.index.json if present, else `dir`/model.safetensors.
 * Owner: caller, release with qv_st_set_close. Errors as qv_st_open, naming the file. */
qv_status qv_st_set_open_dir(const char *dir, qv_st_set **out, qv_error *err);
/* Accepts NULL. */
void qv_st_set_close(qv_st_set *s);
/* Lookup across all shards; NULL when absent. */
const qv_st_tensor *qv_st_set_find(const qv_st_set *s, const char *name);
size_t qv_st_set_n_files(const qv_st_set *s);
const qv_st_file *qv_st_set_file_at(const qv_st_set *s, size_t i);
/* Total mapped bytes of all shards. */
size_t qv_st_set_mapped_bytes(const qv_st_set *s);

/* Element size in bits of a safetensors dtype string ("F32" -> 32, "F4" -> 4), or 0 when the
 * string is not a safetensors dtype. Pure; any thread. */
int qv_st_dtype_bits(const char *dtype);

#ifdef __cplusplus
}
#endif
#endif /* QV_SAFETENSORS_H */
