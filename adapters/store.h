/*
 * store.h - the durable adapter store: immutable content-addressed adapter versions on disk,
 * mutable names and aliases pointing at them, published with atomic renames only.
 *
 * Layout under the root directory (docs/adapter-store.md has the full argument):
 *   objects/<sha256>/   one published adapter version: the files of a PEFT directory
 *                       (adapter_config.json + weights), complete and immutable
 *   names/<name>        a small file holding "<sha256>\n": the name's current version
 *   aliases/<alias>     a small file holding "<name or sha256>\n"
 *   tmp/                uploads in progress and temp files of the atomic replacements
 *
 * Not here: parsing or validating adapter formats (a validator callback does that, see
 * qv_store_set_validator), caching in memory (adapters/registry.h).
 *
 * Invariants: whatever a reader sees under objects/, names/ and aliases/ is complete; a crash
 * at any point leaves either the old or the new state visible plus garbage under tmp/ that
 * qv_store_open removes. Several processes (and hosts, on a shared volume) may use one root:
 * readers never lock, writers only rename; two publishers of one name: the last rename wins
 * and both objects are complete.
 *
 * Threads: a qv_store_t may be used from any thread at once (its only mutable state is an
 * atomic counter). A transaction belongs to one thread at a time.
 */
#ifndef QV_ADAPTERS_STORE_H
#define QV_ADAPTERS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- SHA-256 (FIPS 180-4), used for version ids ---- */
typedef struct qv_sha256 {
    uint32_t h[8];
    uint64_t n_bytes;
    uint8_t buf[64];
    size_t n_buf;
} qv_sha256;

void qv_sha256_init(qv_sha256 *s);
void qv_sha256_update(qv_sha256 *s, const void *data, size_t n);
/* Writes the 32-byte digest. The state must be re-initialised before reuse. */
void qv_sha256_final(qv_sha256 *s, uint8_t out[32]);
/* One-shot digest as 64 lowercase hex characters plus NUL. */
void qv_sha256_hex(const void *data, size_t n, char out[65]);

/* ---- the store ---- */
typedef struct qv_store qv_store_t;
typedef struct qv_store_txn qv_store_txn_t;

#define QV_STORE_NAME_MAX 128   /* longest name or alias, in bytes */
#define QV_STORE_VERSION_LEN 64 /* hex sha256 */

typedef struct qv_store_options {
    double tmp_max_age_s;      /* tmp/ entries older than this are deleted by open and gc */
    double gc_grace_s;         /* unreferenced objects younger than this survive gc */
    uint64_t max_upload_bytes; /* sum of the file sizes of one transaction */
} qv_store_options;

/* Defaults: tmp_max_age_s 3600, gc_grace_s 3600, max_upload_bytes 16 GiB. */
qv_store_options qv_store_default_options(void);

/* Validator run on the complete temp directory before a commit publishes it (e.g. the PEFT
 * loader checking format, dtypes and shapes against the base model). Return QV_OK to accept;
 * anything else aborts the commit with that status and err. Runs on the committing thread. */
typedef qv_status (*qv_store_validate_cb)(const char *dir, void *user, qv_error *err);

/* Opens (creating when missing) the store at `root` and removes tmp/ entries older than
 * opts->tmp_max_age_s. Never touches objects/, names/ or aliases/. opts may be NULL (defaults).
 * *out is owned by the caller (qv_store_close). Errors: QV_ERR_IO, QV_ERR_NOMEM. */
qv_status qv_store_open(const char *root, const qv_store_options *opts, qv_store_t **out,
                        qv_error *err);

/* Frees the handle; accepts NULL. Nothing on disk changes. */
void qv_store_close(qv_store_t *store);

/* Root directory as given to open; owned by the store. */
const char *qv_store_root(const qv_store_t *store);

/* Installs the validator used by every later commit (NULL removes it). Not thread-safe with
 * concurrent commits: call it once after open. */
void qv_store_set_validator(qv_store_t *store, qv_store_validate_cb cb, void *user);

/* True if `s` is a valid name or alias: ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ without "..". */
bool qv_store_name_valid(const char *s);

/* True if `s` is a version id: exactly 64 lowercase hex digits. */
bool qv_store_version_valid(const char *s);

/* True if `filename` may be part of an adapter version: adapter_config.json,
 * adapter_model.safetensors or adapter.safetensors. */
bool qv_store_filename_valid(const char *filename);

/* Starts a publication: creates a fresh directory under tmp/. *out is owned by the caller
 * until qv_store_commit or qv_store_abort consumes it. Errors: QV_ERR_IO, QV_ERR_NOMEM. */
qv_status qv_store_begin(qv_store_t *store, qv_store_txn_t **out, qv_error *err);

/* Appends `len` bytes to `filename` in the transaction (created on first write).
 * Errors: QV_ERR_INVALID (filename not allowed), QV_ERR_LIMIT (max_upload_bytes), QV_ERR_IO.
 * After an error the transaction may still be aborted or committed by the caller. */
qv_status qv_store_txn_write(qv_store_txn_t *txn, const char *filename, const void *buf, size_t len,
                             qv_error *err);

/* Path of the transaction's temp directory (for validators or streaming writers that want the
 * files themselves); owned by the transaction. */
const char *qv_store_txn_dir(const qv_store_txn_t *txn);

/* Publishes the transaction as the new version of `name`: runs the validator, fsyncs the files,
 * computes the version id (qv_store_hash_dir), renames the temp directory to objects/<sha>
 * (discarding it when that version already exists), then atomically points names/<name> at it.
 * Consumes txn in every case. version_out (may be NULL) receives the 64 hex digits + NUL.
 * Errors: QV_ERR_INVALID (bad name, missing adapter_config.json, validator), QV_ERR_IO. */
qv_status qv_store_commit(qv_store_txn_t *txn, const char *name, char version_out[65],
                          qv_error *err);

/* Deletes the transaction's temp directory and frees it; accepts NULL. */
void qv_store_abort(qv_store_txn_t *txn);

/* Version id of a directory of adapter files: sha256 over the files sorted by name (bytewise),
 * each contributing name bytes, one NUL byte, its size as 8 bytes little endian, then its
 * contents. Rejects files whose names are not allowed (QV_ERR_INVALID). If fsync_files is true
 * every file is made read-only (0444) and fsynced while it is read (the publishing path). */
qv_status qv_store_hash_dir(const char *dir, bool fsync_files, char version_out[65], qv_error *err);

/* Resolves a version id, a name or an alias (in that order; an alias names one name or one
 * version, never another alias). version_out receives the id; path_out (may be NULL) receives
 * "<root>/objects/<id>", owned by the caller (qv_free). Never locks. Errors: QV_ERR_NOT_FOUND,
 * QV_ERR_INVALID (malformed reference), QV_ERR_IO (unreadable or corrupt name file). */
qv_status qv_store_resolve(qv_store_t *store, const char *ref, char version_out[65],
                           char **path_out, qv_error *err);

/* Recomputes the id of a published version and compares it with its directory name.
 * Errors: QV_ERR_NOT_FOUND, QV_ERR_IO (mismatch or unreadable). */
qv_status qv_store_verify(qv_store_t *store, const char *version, qv_error *err);

typedef struct qv_store_entry {
    char name[QV_STORE_NAME_MAX + 1];
    char version[QV_STORE_VERSION_LEN + 1]; /* "" when an alias's target no longer resolves */
    bool is_alias;
    char target[QV_STORE_NAME_MAX + 1]; /* aliases: the name or version it points at */
} qv_store_entry;

/* Lists names then aliases, each group sorted by name. *entries (owned by the caller, qv_free;
 * NULL when *n is 0). A name or alias replaced or deleted while listing may be missing or show
 * either version. Errors: QV_ERR_IO, QV_ERR_NOMEM. */
qv_status qv_store_list(qv_store_t *store, qv_store_entry **entries, size_t *n, qv_error *err);

/* Removes a name (the object stays until gc). Errors: QV_ERR_INVALID, QV_ERR_NOT_FOUND,
 * QV_ERR_IO. */
qv_status qv_store_delete(qv_store_t *store, const char *name, qv_error *err);

/* Points `alias` at `target` (a name or a version that must resolve now), replacing any
 * previous alias atomically. An alias may not shadow a name. Errors: QV_ERR_INVALID,
 * QV_ERR_NOT_FOUND, QV_ERR_IO. */
qv_status qv_store_alias_set(qv_store_t *store, const char *alias, const char *target,
                             qv_error *err);

/* Removes an alias. Errors: QV_ERR_INVALID, QV_ERR_NOT_FOUND, QV_ERR_IO. */
qv_status qv_store_alias_delete(qv_store_t *store, const char *alias, qv_error *err);

/* Garbage collection: removes objects that no name or alias references and that are older than
 * gc_grace_s (a commit that reuses an existing object refreshes its age), and stale tmp/
 * entries. n_removed (may be NULL) counts removed objects. Errors: QV_ERR_IO. */
qv_status qv_store_gc(qv_store_t *store, size_t *n_removed, qv_error *err);

/* Test hook for crash-safety tests: the k-th crash point reached in this process (counting
 * from 1 after the call) calls _exit(QV_STORE_CRASH_EXIT). k <= 0 disables. Process-wide. */
#define QV_STORE_CRASH_EXIT 86
void qv_store_set_crash_point(int k);

#ifdef __cplusplus
}
#endif
#endif /* QV_ADAPTERS_STORE_H */
