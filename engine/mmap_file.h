/*
 * mmap_file.h - read-only whole-file memory mapping used by the weight loaders.
 *
 * Not a general I/O layer: one regular file, mapped once, read-only, released once.
 * An empty file maps to a non-NULL zero-length buffer so callers need no special case.
 * Thread: a mapping is immutable; any thread may read it, only the owner closes it.
 */
#ifndef QV_MMAP_FILE_H
#define QV_MMAP_FILE_H

#include <stddef.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qv_mmap_file {
    const void *data; /* mapped bytes (read-only) */
    size_t len;       /* file length in bytes */
    void *map_base;   /* what munmap needs (NULL for an empty file) */
} qv_mmap_file;

/* Maps `path` read-only into *m. On failure *m is zeroed and err names the file and the
 * problem (QV_ERR_NOT_FOUND, QV_ERR_IO). Release with qv_mmap_close. Any thread. */
qv_status qv_mmap_open(const char *path, qv_mmap_file *m, qv_error *err);

/* Unmaps; accepts a zeroed or already-closed mapping. */
void qv_mmap_close(qv_mmap_file *m);

#ifdef __cplusplus
}
#endif
#endif /* QV_MMAP_FILE_H */
