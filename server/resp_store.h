/*
 * resp_store.h - the Responses API's stored responses: what previous_response_id continues and
 * GET / DELETE /v1/responses/{id} read; and its conversations (/v1/conversations), records of
 * the same kind (the conversation object and its items) under "conv_" ids. In the process's memory,
 * bounded in bytes, least recently used out first; with a directory (--responses-dir), each
 * record is also a file there, which is the truth: records survive restarts, and replicas that
 * share the directory see each other's (a read checks the file's stamp, so a record changed or
 * deleted by another process is read again or forgotten; edits hold a flock on DIR/.lock).
 * Each response belongs to the API key that made it (a digest of the key): another key finds
 * nothing.
 *
 * Thread: every function may run on any thread (one mutex inside).
 */
#ifndef QV_RESP_STORE_H
#define QV_RESP_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/core.h"

typedef struct qv_resp_store qv_resp_store;

/* A store of at most max_bytes of records in memory (NULL when out of memory). */
qv_resp_store *qv_resp_store_create(size_t max_bytes);
/* The same, backed by files in `dir` (an existing directory; NULL: memory only). Records whose
 * id is not made of letters, digits, '_' and '-' (at most 160) stay in memory. A file that
 * cannot be written leaves its record in this process only (logged). */
qv_resp_store *qv_resp_store_create_dir(size_t max_bytes, const char *dir);
/* With a directory: removes the oldest files (by modification time) until the records' files
 * take at most max_disk_bytes, and temporary files older than an hour (a writer that died).
 * Returns the files removed. Records in memory stay until a read finds their file gone. */
size_t qv_resp_store_sweep(qv_resp_store *s, uint64_t max_disk_bytes);
void qv_resp_store_free(qv_resp_store *s);

/* Keeps id's record (replacing one of the same id): the response object and the
 * conversation's items (JSON texts, copied), owned by `owner`. Older records leave to make
 * room; a record larger than the store is not kept (false), nor one when out of memory. */
bool qv_resp_store_put(qv_resp_store *s, const char *id, const char *owner, const char *response,
                       const char *items);

/* Copies (qv_free) of id's response and / or items (either pointer may be NULL) when it
 * exists and belongs to owner: QV_OK, and the record becomes the most recently used;
 * QV_ERR_NOT_FOUND, or QV_ERR_NOMEM. */
qv_status qv_resp_store_get(qv_resp_store *s, const char *id, const char *owner, char **response,
                            char **items);

/* An edit of a record (qv_resp_store_edit): from its texts, sets the new ones (qv_malloc'd;
 * NULL leaves that one as it is) and returns QV_OK, or an error that leaves the record as it
 * was. Runs under the store's lock: no calls back into the store. */
typedef qv_status (*qv_resp_store_edit_fn)(const char *response, const char *items, void *user,
                                           char **new_response, char **new_items);

/* Changes id's record in place, atomically with respect to every other call, when it exists
 * and belongs to owner: QV_OK (the record becomes the most recently used; others leave to
 * make room), edit's error, QV_ERR_LIMIT when the edited record would not fit in the store
 * (it stays as it was), or QV_ERR_NOT_FOUND. */
qv_status qv_resp_store_edit(qv_resp_store *s, const char *id, const char *owner,
                             qv_resp_store_edit_fn edit, void *user);

/* Removes id's record if it belongs to owner; false when there is none. */
bool qv_resp_store_delete(qv_resp_store *s, const char *id, const char *owner);

/* Records and bytes held (for logs and tests). */
void qv_resp_store_stats(qv_resp_store *s, size_t *n, size_t *bytes);
/* The size it was created with, and the records evicted so far to make room (for /metrics). */
size_t qv_resp_store_max_bytes(const qv_resp_store *s);
unsigned long long qv_resp_store_evictions(qv_resp_store *s);

#endif
