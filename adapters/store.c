/*
 * store.c - the durable adapter store (see store.h for the layout and guarantees, and
 * docs/adapter-store.md for the crash-safety argument) and a small SHA-256.
 *
 * Not here: adapter format knowledge (the validator callback), in-memory caching.
 *
 * Invariants: objects/, names/ and aliases/ are only ever changed by rename(2) of a complete,
 * fsynced file or directory from tmp/ (same file system), by unlink of a name or alias, or by
 * gc moving an unreferenced object back into tmp/ before deleting it. Every step that changes
 * disk state is followed by a crash point so tests can kill the process there.
 *
 * Threads: any thread; the handle's only mutable field is an atomic counter.
 */
#include "adapters/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* SHA-256                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(uint32_t h[8], const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    }
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 =
            hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void qv_sha256_init(qv_sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->n_bytes = 0;
    s->n_buf = 0;
}

void qv_sha256_update(qv_sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->n_bytes += n;
    if (s->n_buf) {
        size_t take = QV_MIN(n, 64 - s->n_buf);
        memcpy(s->buf + s->n_buf, p, take);
        s->n_buf += take;
        p += take;
        n -= take;
        if (s->n_buf < 64) return;
        sha_block(s->h, s->buf);
        s->n_buf = 0;
    }
    for (; n >= 64; n -= 64, p += 64)
        sha_block(s->h, p);
    if (n) {
        memcpy(s->buf, p, n);
        s->n_buf = n;
    }
}

void qv_sha256_final(qv_sha256 *s, uint8_t out[32]) {
    uint64_t n_bits = s->n_bytes * 8;
    uint8_t pad[72] = {0x80};
    size_t n_pad = (s->n_buf < 56 ? 56 : 120) - s->n_buf;
    for (int i = 0; i < 8; i++)
        pad[n_pad + (size_t)i] = (uint8_t)(n_bits >> (56 - 8 * i));
    qv_sha256_update(s, pad, n_pad + 8);
    QV_ASSERT(s->n_buf == 0);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

static void to_hex(const uint8_t d[32], char out[65]) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[64] = '\0';
}

void qv_sha256_hex(const void *data, size_t n, char out[65]) {
    qv_sha256 s;
    uint8_t d[32];
    qv_sha256_init(&s);
    qv_sha256_update(&s, data, n);
    qv_sha256_final(&s, d);
    to_hex(d, out);
}

/* ------------------------------------------------------------------------------------------ */
/* crash points (tests only)                                                                  */
/* ------------------------------------------------------------------------------------------ */

static atomic_int crash_at;      /* 0: disabled */
static atomic_int crash_reached; /* crash points passed since the last set */

void qv_store_set_crash_point(int k) {
    atomic_store(&crash_reached, 0);
    atomic_store(&crash_at, k > 0 ? k : 0);
}

static void crash_point(void) {
    int at = atomic_load(&crash_at);
    if (at == 0) return;
    if (atomic_fetch_add(&crash_reached, 1) + 1 == at) _exit(QV_STORE_CRASH_EXIT);
}

/* ------------------------------------------------------------------------------------------ */
/* small file-system helpers                                                                  */
/* ------------------------------------------------------------------------------------------ */

struct qv_store {
    char *root;
    qv_store_options opts;
    qv_store_validate_cb validate;
    void *validate_user;
    atomic_uint_fast64_t seq; /* makes temp names unique within the process */
};

struct qv_store_txn {
    qv_store_t *store;
    char *dir;
    uint64_t n_bytes;
};

static char *path_join(const char *a, const char *b, const char *c) {
    size_t n = strlen(a) + 1 + strlen(b) + (c ? 1 + strlen(c) : 0) + 1;
    char *p = qv_malloc(n);
    if (!p) return NULL;
    if (c)
        snprintf(p, n, "%s/%s/%s", a, b, c);
    else
        snprintf(p, n, "%s/%s", a, b);
    return p;
}

static qv_status io_err(qv_error *err, const char *what, const char *path) {
    int e = errno;
    return qv_errorf(err, e == ENOENT ? QV_ERR_NOT_FOUND : QV_ERR_IO, "%s %s: %s", what, path,
                     strerror(e));
}

static qv_status fsync_path(const char *path, bool dir, qv_error *err) {
    int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) return io_err(err, "open", path);
    if (fsync(fd) != 0) {
        close(fd);
        return io_err(err, "fsync", path);
    }
    close(fd);
    return QV_OK;
}

static qv_status mkdir_p1(const char *path, qv_error *err) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return io_err(err, "mkdir", path);
    struct stat st;
    if (stat(path, &st) != 0) return io_err(err, "stat", path);
    if (!S_ISDIR(st.st_mode)) return qv_errorf(err, QV_ERR_IO, "%s is not a directory", path);
    return QV_OK;
}

/* Removes a file or a directory tree. Objects are flat, but tmp/ may hold anything a crashed
 * writer left, so this recurses. */
static int remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
    DIR *d = opendir(path);
    if (!d) return -1;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char sub[4096]; /* no allocation: cleanup must work when memory is short */
        int n = snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        if (n < 0 || (size_t)n >= sizeof sub || remove_tree(sub) != 0) rc = -1;
    }
    closedir(d);
    if (rmdir(path) != 0 && errno != ENOENT) rc = -1;
    return rc;
}

/* Unique temp path under tmp/: "<kind>-<pid>-<seq>-<random>". */
static char *tmp_path(qv_store_t *store, const char *kind) {
    char leaf[96];
    uint64_t seq = atomic_fetch_add(&store->seq, 1);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(leaf, sizeof leaf, "%s-%ld-%llu-%lx", kind, (long)getpid(), (unsigned long long)seq,
             (unsigned long)ts.tv_nsec);
    return path_join(store->root, "tmp", leaf);
}

/* Writes `len` bytes to a new file in tmp/, fsyncs it and renames it over `dst`, then fsyncs
 * dst's directory: the replacement is atomic and durable. */
static qv_status replace_file(qv_store_t *store, const char *dst, const char *dst_dir,
                              const char *data, size_t len, qv_error *err) {
    qv_status st = QV_OK;
    char *tmp = tmp_path(store, "file");
    if (!tmp) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        st = io_err(err, "create", tmp);
        goto fail;
    }
    crash_point();
    size_t half = len / 2;
    if (write(fd, data, half) != (ssize_t)half) {
        st = io_err(err, "write", tmp);
        close(fd);
        goto fail;
    }
    crash_point(); /* a torn temp file must never become visible */
    if (write(fd, data + half, len - half) != (ssize_t)(len - half)) {
        st = io_err(err, "write", tmp);
        close(fd);
        goto fail;
    }
    if (fsync(fd) != 0) {
        st = io_err(err, "fsync", tmp);
        close(fd);
        goto fail;
    }
    close(fd);
    crash_point();
    if (rename(tmp, dst) != 0) {
        st = io_err(err, "rename to", dst);
        goto fail;
    }
    crash_point();
    st = fsync_path(dst_dir, true, err);
    crash_point();
    qv_free(tmp);
    return st;
fail:
    unlink(tmp);
    qv_free(tmp);
    return st;
}

/* Reads a small pointer file ("<text>\n") into out (without the newline). */
static qv_status read_ref_file(const char *path, char *out, size_t cap, qv_error *err) {
    char *buf = NULL;
    size_t n = 0;
    qv_status st = qv_read_file(path, cap + 1, &buf, &n, err);
    if (st != QV_OK) return st;
    if (n < 2 || buf[n - 1] != '\n' || n - 1 > cap - 1 || memchr(buf, '\0', n)) {
        qv_free(buf);
        return qv_errorf(err, QV_ERR_IO, "%s: corrupt reference file", path);
    }
    memcpy(out, buf, n - 1);
    out[n - 1] = '\0';
    qv_free(buf);
    return QV_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* validation                                                                                 */
/* ------------------------------------------------------------------------------------------ */

bool qv_store_name_valid(const char *s) {
    if (!s) return false;
    size_t n = strlen(s);
    if (n < 1 || n > QV_STORE_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (i == 0 ? !alnum : !(alnum || c == '.' || c == '_' || c == '-')) return false;
    }
    return strstr(s, "..") == NULL;
}

bool qv_store_version_valid(const char *s) {
    if (!s || strlen(s) != QV_STORE_VERSION_LEN) return false;
    for (size_t i = 0; i < QV_STORE_VERSION_LEN; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    }
    return true;
}

bool qv_store_filename_valid(const char *f) {
    return f && (!strcmp(f, "adapter_config.json") || !strcmp(f, "adapter_model.safetensors") ||
                 !strcmp(f, "adapter.safetensors"));
}

/* ------------------------------------------------------------------------------------------ */
/* open / close                                                                               */
/* ------------------------------------------------------------------------------------------ */

qv_store_options qv_store_default_options(void) {
    qv_store_options o = {
        .tmp_max_age_s = 3600.0, .gc_grace_s = 3600.0, .max_upload_bytes = (uint64_t)16 << 30};
    return o;
}

static double now_wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double mtime_s(const struct stat *st) {
    return (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec * 1e-9;
}

/* Deletes tmp/ entries older than tmp_max_age_s. Entries of live writers in other processes
 * are younger than that by configuration; see docs/adapter-store.md. */
static qv_status clean_tmp(qv_store_t *store, qv_error *err) {
    char *dir = path_join(store->root, "tmp", NULL);
    if (!dir) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    DIR *d = opendir(dir);
    if (!d) {
        qv_status st = io_err(err, "opendir", dir);
        qv_free(dir);
        return st;
    }
    double now = now_wall_s();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *p = path_join(dir, de->d_name, NULL);
        struct stat st;
        if (p && lstat(p, &st) == 0 && now - mtime_s(&st) >= store->opts.tmp_max_age_s) {
            if (remove_tree(p) != 0) QV_LOGW("store: could not remove stale %s", p);
        }
        qv_free(p);
    }
    closedir(d);
    qv_free(dir);
    return QV_OK;
}

qv_status qv_store_open(const char *root, const qv_store_options *opts, qv_store_t **out,
                        qv_error *err) {
    *out = NULL;
    if (!root || !*root) return qv_errorf(err, QV_ERR_INVALID, "store root is empty");
    qv_status st = QV_OK;
    qv_store_t *s = qv_calloc(1, sizeof *s);
    if (!s || !(s->root = qv_strdup(root))) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    size_t n = strlen(s->root);
    while (n > 1 && s->root[n - 1] == '/')
        s->root[--n] = '\0';
    s->opts = opts ? *opts : qv_store_default_options();
    atomic_init(&s->seq, 0);
    if ((st = mkdir_p1(s->root, err)) != QV_OK) goto fail;
    static const char *const subs[] = {"objects", "names", "aliases", "tmp"};
    for (size_t i = 0; i < QV_ARRAY_LEN(subs); i++) {
        char *p = path_join(s->root, subs[i], NULL);
        if (!p) {
            st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
            goto fail;
        }
        st = mkdir_p1(p, err);
        qv_free(p);
        if (st != QV_OK) goto fail;
    }
    if ((st = clean_tmp(s, err)) != QV_OK) goto fail;
    *out = s;
    return QV_OK;
fail:
    qv_store_close(s);
    return st;
}

void qv_store_close(qv_store_t *store) {
    if (!store) return;
    qv_free(store->root);
    qv_free(store);
}

const char *qv_store_root(const qv_store_t *store) { return store->root; }

void qv_store_set_validator(qv_store_t *store, qv_store_validate_cb cb, void *user) {
    store->validate = cb;
    store->validate_user = user;
}

/* ------------------------------------------------------------------------------------------ */
/* hashing a directory                                                                        */
/* ------------------------------------------------------------------------------------------ */

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

qv_status qv_store_hash_dir(const char *dir, bool fsync_files, char version_out[65],
                            qv_error *err) {
    qv_status st = QV_OK;
    char *names[4] = {0};
    size_t n_names = 0;
    uint8_t *buf = NULL;
    DIR *d = opendir(dir);
    if (!d) return io_err(err, "opendir", dir);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (!qv_store_filename_valid(de->d_name) || n_names == QV_ARRAY_LEN(names)) {
            st = qv_errorf(err, QV_ERR_INVALID, "%s: unexpected file '%s'", dir, de->d_name);
            goto done;
        }
        if (!(names[n_names++] = qv_strdup(de->d_name))) {
            st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    qsort(names, n_names, sizeof names[0], cmp_str);
    const size_t buf_len = 1 << 16;
    if (!(buf = qv_malloc(buf_len))) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    qv_sha256 sha;
    qv_sha256_init(&sha);
    for (size_t i = 0; i < n_names; i++) {
        char *p = path_join(dir, names[i], NULL);
        if (!p) {
            st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
            goto done;
        }
        int fd = open(p, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        struct stat sb;
        if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            st = fd < 0 ? io_err(err, "open", p)
                        : qv_errorf(err, QV_ERR_INVALID, "%s: not a regular file", p);
            if (fd >= 0) close(fd);
            qv_free(p);
            goto done;
        }
        uint8_t hdr[8];
        uint64_t size = (uint64_t)sb.st_size, got = 0;
        for (int b = 0; b < 8; b++)
            hdr[b] = (uint8_t)(size >> (8 * b));
        qv_sha256_update(&sha, names[i], strlen(names[i]) + 1);
        qv_sha256_update(&sha, hdr, 8);
        for (;;) {
            ssize_t r = read(fd, buf, buf_len);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) {
                st = io_err(err, "read", p);
                break;
            }
            if (r == 0) break;
            qv_sha256_update(&sha, buf, (size_t)r);
            got += (uint64_t)r;
        }
        if (st == QV_OK && got != size)
            st = qv_errorf(err, QV_ERR_IO, "%s: size changed while hashing", p);
        /* Publishing: the file becomes read-only (objects are immutable) and durable. */
        if (st == QV_OK && fsync_files && (fchmod(fd, 0444) != 0 || fsync(fd) != 0))
            st = io_err(err, "fsync", p);
        close(fd);
        qv_free(p);
        if (st != QV_OK) goto done;
    }
    uint8_t dig[32];
    qv_sha256_final(&sha, dig);
    to_hex(dig, version_out);
done:
    closedir(d);
    for (size_t i = 0; i < n_names; i++)
        qv_free(names[i]);
    qv_free(buf);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* transactions                                                                               */
/* ------------------------------------------------------------------------------------------ */

qv_status qv_store_begin(qv_store_t *store, qv_store_txn_t **out, qv_error *err) {
    *out = NULL;
    qv_store_txn_t *t = qv_calloc(1, sizeof *t);
    if (!t || !(t->dir = tmp_path(store, "up"))) {
        qv_free(t);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    t->store = store;
    if (mkdir(t->dir, 0755) != 0) {
        qv_status st = io_err(err, "mkdir", t->dir);
        qv_free(t->dir);
        qv_free(t);
        return st;
    }
    crash_point();
    *out = t;
    return QV_OK;
}

const char *qv_store_txn_dir(const qv_store_txn_t *txn) { return txn->dir; }

qv_status qv_store_txn_write(qv_store_txn_t *txn, const char *filename, const void *buf, size_t len,
                             qv_error *err) {
    if (!qv_store_filename_valid(filename))
        return qv_errorf(err, QV_ERR_INVALID, "file name '%s' is not allowed in an adapter",
                         filename ? filename : "(null)");
    if (len > txn->store->opts.max_upload_bytes - txn->n_bytes)
        return qv_errorf(err, QV_ERR_LIMIT, "upload exceeds %llu bytes",
                         (unsigned long long)txn->store->opts.max_upload_bytes);
    char *p = path_join(txn->dir, filename, NULL);
    if (!p) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_status st = QV_OK;
    int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
        st = io_err(err, "open", p);
        goto done;
    }
    const char *c = buf;
    size_t left = len;
    bool crashed_mid = false;
    while (left) {
        size_t chunk = left;
        if (!crashed_mid && len > 1) chunk = QV_MIN(left, len / 2);
        ssize_t w = write(fd, c, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            st = io_err(err, "write", p);
            break;
        }
        c += w;
        left -= (size_t)w;
        txn->n_bytes += (uint64_t)w;
        if (!crashed_mid) {
            crashed_mid = true;
            crash_point(); /* a torn upload must never become visible */
        }
    }
    close(fd);
done:
    qv_free(p);
    return st;
}

void qv_store_abort(qv_store_txn_t *txn) {
    if (!txn) return;
    if (remove_tree(txn->dir) != 0) QV_LOGW("store: could not remove %s", txn->dir);
    qv_free(txn->dir);
    qv_free(txn);
}

qv_status qv_store_commit(qv_store_txn_t *txn, const char *name, char version_out[65],
                          qv_error *err) {
    qv_store_t *store = txn->store;
    qv_status st = QV_OK;
    char version[65];
    char *cfg = NULL, *obj = NULL, *objects = NULL, *names = NULL, *name_path = NULL;
    bool published = false;
    if (!qv_store_name_valid(name)) {
        st = qv_errorf(err, QV_ERR_INVALID, "invalid adapter name '%s'", name ? name : "(null)");
        goto done;
    }
    if (!(cfg = path_join(txn->dir, "adapter_config.json", NULL)) ||
        !(objects = path_join(store->root, "objects", NULL)) ||
        !(names = path_join(store->root, "names", NULL)) ||
        !(name_path = path_join(names, name, NULL))) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (access(cfg, F_OK) != 0) {
        st = qv_errorf(err, QV_ERR_INVALID, "adapter '%s' has no adapter_config.json", name);
        goto done;
    }
    if (store->validate && (st = store->validate(txn->dir, store->validate_user, err)) != QV_OK)
        goto done;
    /* Files are complete and durable before the directory becomes visible. */
    if ((st = qv_store_hash_dir(txn->dir, true, version, err)) != QV_OK) goto done;
    crash_point();
    if ((st = fsync_path(txn->dir, true, err)) != QV_OK) goto done;
    crash_point();
    if (!(obj = path_join(objects, version, NULL))) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (rename(txn->dir, obj) == 0) {
        published = true;
    } else if (errno == EEXIST || errno == ENOTEMPTY) {
        /* Same id, same bytes: someone published this content already. Refresh its age so a
         * concurrent gc keeps it for another grace period, then drop our copy. */
        if (utimensat(AT_FDCWD, obj, NULL, 0) != 0 && errno == ENOENT) {
            /* gc removed it between our rename and now: retry once with our copy. */
            if (rename(txn->dir, obj) == 0) published = true;
        }
    } else {
        st = io_err(err, "rename to", obj);
        goto done;
    }
    crash_point();
    if (published) utimensat(AT_FDCWD, obj, NULL, 0);
    if (!published && access(obj, F_OK) != 0) {
        st = io_err(err, "publish", obj);
        goto done;
    }
    if ((st = fsync_path(objects, true, err)) != QV_OK) goto done;
    crash_point();
    char line[66];
    memcpy(line, version, 64);
    line[64] = '\n';
    line[65] = '\0';
    if ((st = replace_file(store, name_path, names, line, 65, err)) != QV_OK) goto done;
    if (version_out) memcpy(version_out, version, 65);
    QV_LOGD("store: published %s as %s", name, version);
done:
    if (!published) remove_tree(txn->dir);
    qv_free(txn->dir);
    qv_free(txn);
    qv_free(cfg);
    qv_free(obj);
    qv_free(objects);
    qv_free(names);
    qv_free(name_path);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* lookups                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static qv_status object_exists(qv_store_t *store, const char *version, char **path_out,
                               qv_error *err) {
    char *p = path_join(store->root, "objects", version);
    if (!p) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    struct stat st;
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
        qv_free(p);
        return qv_errorf(err, QV_ERR_NOT_FOUND, "adapter version %s not found", version);
    }
    if (path_out)
        *path_out = p;
    else
        qv_free(p);
    return QV_OK;
}

/* Reads names/<name> or aliases/<name> into out. */
static qv_status read_pointer(qv_store_t *store, const char *sub, const char *name, char *out,
                              size_t cap, qv_error *err) {
    char *p = path_join(store->root, sub, name);
    if (!p) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_status st = read_ref_file(p, out, cap, err);
    qv_free(p);
    return st;
}

static qv_status resolve_name(qv_store_t *store, const char *name, char version[65],
                              qv_error *err) {
    qv_status st = read_pointer(store, "names", name, version, 65, err);
    if (st == QV_OK && !qv_store_version_valid(version))
        st = qv_errorf(err, QV_ERR_IO, "name '%s': corrupt version id", name);
    return st;
}

qv_status qv_store_resolve(qv_store_t *store, const char *ref, char version_out[65],
                           char **path_out, qv_error *err) {
    if (path_out) *path_out = NULL;
    if (qv_store_version_valid(ref)) {
        memcpy(version_out, ref, 65);
        return object_exists(store, ref, path_out, err);
    }
    if (!qv_store_name_valid(ref))
        return qv_errorf(err, QV_ERR_INVALID, "invalid adapter reference '%s'",
                         ref ? ref : "(null)");
    char version[65];
    qv_status st = resolve_name(store, ref, version, err);
    if (st == QV_ERR_NOT_FOUND) {
        char target[QV_STORE_NAME_MAX + 1];
        st = read_pointer(store, "aliases", ref, target, sizeof target, err);
        if (st == QV_ERR_NOT_FOUND)
            return qv_errorf(err, QV_ERR_NOT_FOUND, "adapter '%s' not found", ref);
        if (st != QV_OK) return st;
        if (qv_store_version_valid(target))
            memcpy(version, target, 65);
        else if (qv_store_name_valid(target))
            st = resolve_name(store, target, version, err);
        else
            st = qv_errorf(err, QV_ERR_IO, "alias '%s': corrupt target", ref);
        if (st == QV_ERR_NOT_FOUND)
            return qv_errorf(err, QV_ERR_NOT_FOUND, "alias '%s' points at missing '%s'", ref,
                             target);
    }
    if (st != QV_OK) return st;
    memcpy(version_out, version, 65);
    return object_exists(store, version, path_out, err);
}

qv_status qv_store_verify(qv_store_t *store, const char *version, qv_error *err) {
    char *p = NULL;
    if (!qv_store_version_valid(version))
        return qv_errorf(err, QV_ERR_INVALID, "invalid version id");
    qv_status st = object_exists(store, version, &p, err);
    if (st != QV_OK) return st;
    char got[65];
    st = qv_store_hash_dir(p, false, got, err);
    if (st == QV_OK && strcmp(got, version) != 0)
        st = qv_errorf(err, QV_ERR_IO, "object %s hashes to %s", version, got);
    qv_free(p);
    return st;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const qv_store_entry *)a)->name, ((const qv_store_entry *)b)->name);
}

/* Reads the entries of names/ or aliases/, skipping anything that is not a valid name. */
static qv_status list_dir(qv_store_t *store, const char *sub, bool is_alias, qv_store_entry **v,
                          size_t *n, size_t *cap, qv_error *err) {
    char *dir = path_join(store->root, sub, NULL);
    if (!dir) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    DIR *d = opendir(dir);
    if (!d) {
        qv_status st = io_err(err, "opendir", dir);
        qv_free(dir);
        return st;
    }
    qv_free(dir);
    size_t first = *n;
    qv_status st = QV_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!qv_store_name_valid(de->d_name)) continue;
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 16;
            qv_store_entry *nv = qv_realloc(*v, nc * sizeof *nv);
            if (!nv) {
                st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
                break;
            }
            *v = nv;
            *cap = nc;
        }
        qv_store_entry *e = &(*v)[*n];
        memset(e, 0, sizeof *e);
        memcpy(e->name, de->d_name, strlen(de->d_name) + 1); /* valid names fit */
        e->is_alias = is_alias;
        qv_error lerr;
        if (is_alias) {
            if (read_pointer(store, "aliases", e->name, e->target, sizeof e->target, &lerr) !=
                QV_OK)
                continue; /* deleted while listing */
            char ver[65];
            if (qv_store_resolve(store, e->name, ver, NULL, &lerr) == QV_OK)
                memcpy(e->version, ver, 65);
        } else if (resolve_name(store, e->name, e->version, &lerr) != QV_OK) {
            continue;
        }
        (*n)++;
    }
    closedir(d);
    if (st == QV_OK && *n > first) {
        qsort(*v + first, *n - first, sizeof **v, cmp_entry);
    }
    return st;
}

qv_status qv_store_list(qv_store_t *store, qv_store_entry **entries, size_t *n, qv_error *err) {
    *entries = NULL;
    *n = 0;
    size_t cap = 0;
    qv_status st = list_dir(store, "names", false, entries, n, &cap, err);
    if (st == QV_OK) st = list_dir(store, "aliases", true, entries, n, &cap, err);
    if (st != QV_OK || *n == 0) {
        qv_free(*entries);
        *entries = NULL;
        *n = 0;
    }
    return st;
}

static qv_status unlink_pointer(qv_store_t *store, const char *sub, const char *name,
                                qv_error *err) {
    if (!qv_store_name_valid(name))
        return qv_errorf(err, QV_ERR_INVALID, "invalid name '%s'", name ? name : "(null)");
    char *dir = path_join(store->root, sub, NULL);
    char *p = path_join(store->root, sub, name);
    qv_status st = QV_OK;
    if (!dir || !p) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    } else if (unlink(p) != 0) {
        st = errno == ENOENT ? qv_errorf(err, QV_ERR_NOT_FOUND, "'%s' not found", name)
                             : io_err(err, "unlink", p);
    } else {
        crash_point();
        st = fsync_path(dir, true, err);
    }
    qv_free(dir);
    qv_free(p);
    return st;
}

qv_status qv_store_delete(qv_store_t *store, const char *name, qv_error *err) {
    return unlink_pointer(store, "names", name, err);
}

qv_status qv_store_alias_delete(qv_store_t *store, const char *alias, qv_error *err) {
    return unlink_pointer(store, "aliases", alias, err);
}

qv_status qv_store_alias_set(qv_store_t *store, const char *alias, const char *target,
                             qv_error *err) {
    if (!qv_store_name_valid(alias))
        return qv_errorf(err, QV_ERR_INVALID, "invalid alias '%s'", alias ? alias : "(null)");
    char ver[65];
    qv_error lerr;
    qv_status shadow = resolve_name(store, alias, ver, &lerr);
    if (shadow == QV_OK || shadow == QV_ERR_IO) /* IO: a name file exists but is corrupt */
        return qv_errorf(err, QV_ERR_INVALID, "alias '%s' would shadow a name", alias);
    if (shadow != QV_ERR_NOT_FOUND) {
        if (err) *err = lerr;
        return shadow;
    }
    if (!qv_store_version_valid(target)) {
        if (!qv_store_name_valid(target))
            return qv_errorf(err, QV_ERR_INVALID, "invalid alias target '%s'",
                             target ? target : "(null)");
        qv_status st = resolve_name(store, target, ver, err);
        if (st != QV_OK) return st; /* no alias chains: the target must be a name */
    } else {
        qv_status st = object_exists(store, target, NULL, err);
        if (st != QV_OK) return st;
    }
    char *dir = path_join(store->root, "aliases", NULL);
    char *p = path_join(store->root, "aliases", alias);
    size_t n = strlen(target);
    char line[QV_STORE_NAME_MAX + 2];
    memcpy(line, target, n);
    line[n] = '\n';
    qv_status st = (dir && p) ? replace_file(store, p, dir, line, n + 1, err)
                              : qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_free(dir);
    qv_free(p);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* garbage collection                                                                         */
/* ------------------------------------------------------------------------------------------ */

qv_status qv_store_gc(qv_store_t *store, size_t *n_removed, qv_error *err) {
    if (n_removed) *n_removed = 0;
    qv_store_entry *ents = NULL;
    size_t n = 0;
    char *objects = NULL;
    DIR *d = NULL;
    qv_status st = qv_store_list(store, &ents, &n, err);
    if (st != QV_OK) return st;
    if (!(objects = path_join(store->root, "objects", NULL))) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (!(d = opendir(objects))) {
        st = io_err(err, "opendir", objects);
        goto done;
    }
    double now = now_wall_s();
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!qv_store_version_valid(de->d_name)) continue;
        bool referenced = false;
        for (size_t i = 0; i < n && !referenced; i++)
            referenced = !strcmp(ents[i].version, de->d_name);
        if (referenced) continue;
        char *p = path_join(objects, de->d_name, NULL);
        struct stat sb;
        if (p && stat(p, &sb) == 0 && now - mtime_s(&sb) >= store->opts.gc_grace_s) {
            /* Make it disappear atomically first, then delete it at leisure. */
            char *t = tmp_path(store, "gc");
            if (t && rename(p, t) == 0) {
                crash_point();
                remove_tree(t);
                if (n_removed) (*n_removed)++;
            }
            qv_free(t);
        }
        qv_free(p);
    }
    st = clean_tmp(store, err);
done:
    if (d) closedir(d);
    qv_free(objects);
    qv_free(ents);
    return st;
}
