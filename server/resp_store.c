/*
 * resp_store.c - stored Responses API responses and conversations (see resp_store.h): a hash table
 * of records chained per bucket, and a doubly linked list in use order (head: most recent).
 * With a directory, each record is also a file there, named by its id:
 *   "QVRESP1\n" owner "\n" strlen(response) "\n" response items
 * written to a temporary name and renamed into place, so a reader sees a whole file or none.
 * The file is the truth: a record in memory carries the stamp (inode, size, mtime) of the file
 * it came from, and a read whose file has another stamp (rewritten by another process) or is
 * gone (deleted there) reads the file again or forgets the record. Edits hold an exclusive
 * flock on DIR/.lock from reading the file to renaming the new one.
 */
#include "server/resp_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct stamp {
    uint64_t ino, size;
    int64_t mtime_ns;
} stamp;

typedef struct rec {
    struct rec *next_hash;
    struct rec *prev, *next; /* use order */
    char *id, *owner, *response, *items;
    size_t bytes;
    bool on_disk; /* its file was written or read (st is that file's) */
    stamp st;
} rec;

struct qv_resp_store {
    pthread_mutex_t mu;
    rec **buckets;
    size_t n_buckets, n, bytes, max_bytes;
    unsigned long long evictions; /* records dropped to make room */
    rec *head, *tail;
    char *dir; /* NULL: memory only */
};

#define ID_MAX 160 /* longest id kept in a file */

static uint64_t hash_str(const char *s) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (; *s; s++)
        h = qv_fmix64(h ^ (uint8_t)*s);
    return h;
}

qv_resp_store *qv_resp_store_create(size_t max_bytes) {
    return qv_resp_store_create_dir(max_bytes, NULL);
}

qv_resp_store *qv_resp_store_create_dir(size_t max_bytes, const char *dir) {
    qv_resp_store *s = qv_calloc(1, sizeof(*s));
    if (!s) return NULL;
    if (dir && !(s->dir = qv_strdup(dir))) {
        qv_free(s);
        return NULL;
    }
    s->n_buckets = 256;
    if (!(s->buckets = qv_calloc(s->n_buckets, sizeof(*s->buckets)))) {
        qv_free(s->dir);
        qv_free(s);
        return NULL;
    }
    s->max_bytes = max_bytes;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

static void rec_free(rec *r) {
    qv_free(r->id);
    qv_free(r->owner);
    qv_free(r->response);
    qv_free(r->items);
    qv_free(r);
}

void qv_resp_store_free(qv_resp_store *s) {
    if (!s) return;
    for (rec *r = s->head, *next; r; r = next) {
        next = r->next;
        rec_free(r);
    }
    qv_free(s->buckets);
    qv_free(s->dir);
    pthread_mutex_destroy(&s->mu);
    qv_free(s);
}

static rec **slot_of(qv_resp_store *s, const char *id) {
    rec **p = &s->buckets[hash_str(id) & (s->n_buckets - 1)];
    while (*p && strcmp((*p)->id, id))
        p = &(*p)->next_hash;
    return p;
}

static void unlink_use(qv_resp_store *s, rec *r) {
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    r->prev = r->next = NULL;
}

static void push_front(qv_resp_store *s, rec *r) {
    r->next = s->head;
    r->prev = NULL;
    if (s->head)
        s->head->prev = r;
    else
        s->tail = r;
    s->head = r;
}

/* Removes r (found at *slot) and frees it. */
static void drop(qv_resp_store *s, rec **slot, rec *r) {
    *slot = r->next_hash;
    unlink_use(s, r);
    s->n--;
    s->bytes -= r->bytes;
    rec_free(r);
}

/* Doubles the table when it averages more than two records a bucket (best effort). */
static void grow(qv_resp_store *s) {
    if (s->n <= 2 * s->n_buckets) return;
    const size_t nb = s->n_buckets * 2;
    rec **b = qv_calloc(nb, sizeof(*b));
    if (!b) return;
    for (size_t i = 0; i < s->n_buckets; i++)
        for (rec *r = s->buckets[i], *next; r; r = next) {
            next = r->next_hash;
            rec **p = &b[hash_str(r->id) & (nb - 1)];
            r->next_hash = *p;
            *p = r;
        }
    qv_free(s->buckets);
    s->buckets = b;
    s->n_buckets = nb;
}

/* Evicts the least recently used records (never keep) until `need` more bytes fit. */
static void make_room(qv_resp_store *s, size_t need, const rec *keep) {
    while (s->tail && s->tail != keep && s->bytes + need > s->max_bytes) {
        drop(s, slot_of(s, s->tail->id), s->tail);
        s->evictions++;
    }
}

/* A record's bytes with these texts. */
static size_t rec_bytes(const char *id, const char *owner, const char *response,
                        const char *items) {
    return sizeof(rec) + strlen(id) + strlen(owner) + strlen(response) + strlen(items) + 4;
}

/* ---- files ---- */

/* Ids kept in files: letters, digits, '_' and '-' (the server's own ids; anything else, such
 * as a client's id that is not one, is never a file name). */
static bool id_ok(const char *id) {
    size_t n = 0;
    for (; id[n]; n++) {
        const char c = id[n];
        if (n >= ID_MAX || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                             (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return n > 0;
}

/* Whether id's record is (also) a file: a directory, and an id that can name one. */
static bool in_dir(const qv_resp_store *s, const char *id) { return s->dir && id_ok(id); }

static void path_of(const qv_resp_store *s, const char *id, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s", s->dir, id);
}

static stamp stamp_of(const struct stat *sb) {
    return (stamp){.ino = (uint64_t)sb->st_ino,
                   .size = (uint64_t)sb->st_size,
                   .mtime_ns = (int64_t)sb->st_mtim.tv_sec * 1000000000 + sb->st_mtim.tv_nsec};
}

static bool same_stamp(const stamp *a, const stamp *b) {
    return a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns;
}

static bool write_all(int fd, const char *p, size_t n) {
    while (n) {
        const ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Writes id's file (a temporary file renamed over it); its stamp in *st. */
static bool write_rec(const qv_resp_store *s, const char *id, const char *owner,
                      const char *response, const char *items, stamp *st) {
    static atomic_uint seq;
    char path[4096], tmp[4096], head[256];
    path_of(s, id, path, sizeof(path));
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%s-%ld-%u", s->dir, id, (long)getpid(),
             atomic_fetch_add(&seq, 1));
    const int hn = snprintf(head, sizeof(head), "QVRESP1\n%s\n%zu\n", owner, strlen(response));
    if (hn < 0 || (size_t)hn >= sizeof(head)) return false;
    const int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return false;
    struct stat sb;
    bool ok = write_all(fd, head, (size_t)hn) && write_all(fd, response, strlen(response)) &&
              write_all(fd, items, strlen(items)) && fstat(fd, &sb) == 0;
    ok = close(fd) == 0 && ok;
    if (ok) ok = rename(tmp, path) == 0;
    if (!ok) {
        unlink(tmp);
        return false;
    }
    *st = stamp_of(&sb);
    return true;
}

/* Reads id's file: QV_OK and new texts (qv_free) with its stamp, QV_ERR_NOT_FOUND when there is
 * none (or it is not such a file), QV_ERR_NOMEM. */
static qv_status read_rec(const qv_resp_store *s, const char *id, char **owner, char **response,
                          char **items, stamp *st) {
    *owner = *response = *items = NULL;
    char path[4096];
    path_of(s, id, path, sizeof(path));
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return QV_ERR_NOT_FOUND;
    struct stat sb;
    char *buf = NULL;
    qv_status res = QV_ERR_NOT_FOUND;
    /* a file larger than this store's records (another replica's limit may be higher) is not
     * read: it could not be kept here anyway */
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > 0 &&
        (uint64_t)sb.st_size <= (uint64_t)s->max_bytes + 512) {
        const size_t n = (size_t)sb.st_size;
        res = (buf = qv_malloc(n + 1)) ? QV_OK : QV_ERR_NOMEM;
        for (size_t got = 0; res == QV_OK && got < n;) {
            const ssize_t r = read(fd, buf + got, n - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) res = QV_ERR_NOT_FOUND;
            got += r > 0 ? (size_t)r : 0;
        }
        if (res == QV_OK) {
            buf[n] = '\0';
            /* "QVRESP1\n" owner "\n" len "\n" response items */
            char *o = strncmp(buf, "QVRESP1\n", 8) ? NULL : buf + 8;
            char *oe = o ? memchr(o, '\n', n - 8) : NULL;
            char *end = NULL;
            const unsigned long long len = oe ? strtoull(oe + 1, &end, 10) : 0;
            char *body = end && *end == '\n' ? end + 1 : NULL;
            if (!body || len > (unsigned long long)(n - (size_t)(body - buf))) {
                res = QV_ERR_NOT_FOUND;
            } else if (!(*owner = qv_strndup(o, (size_t)(oe - o))) ||
                       !(*response = qv_strndup(body, (size_t)len)) ||
                       !(*items = qv_strdup(body + len))) {
                res = QV_ERR_NOMEM;
            }
            *st = stamp_of(&sb);
        }
    }
    close(fd);
    qv_free(buf);
    if (res != QV_OK) {
        qv_free(*owner), qv_free(*response), qv_free(*items);
        *owner = *response = *items = NULL;
    }
    return res;
}

/* ---- records ---- */

static rec *rec_new(const char *id, const char *owner, const char *response, const char *items) {
    rec *r = qv_calloc(1, sizeof(*r));
    if (!r || !(r->id = qv_strdup(id)) || !(r->owner = qv_strdup(owner)) ||
        !(r->response = qv_strdup(response)) || !(r->items = qv_strdup(items))) {
        if (r) rec_free(r);
        return NULL;
    }
    r->bytes = rec_bytes(id, owner, response, items);
    return r;
}

/* Puts r in the table (replacing a record of its id), making room. Caller holds mu. */
static void insert_locked(qv_resp_store *s, rec *r) {
    rec **slot = slot_of(s, r->id);
    if (*slot) drop(s, slot, *slot);
    make_room(s, r->bytes, NULL);
    slot = slot_of(s, r->id);
    r->next_hash = *slot;
    *slot = r;
    push_front(s, r);
    s->n++;
    s->bytes += r->bytes;
    grow(s);
}

/* With a directory: brings id's record in memory in line with its file (read when missing or
 * changed, forgotten when the file is gone). A record that never had a file stays. */
static void refresh(qv_resp_store *s, const char *id) {
    if (!in_dir(s, id)) return;
    char path[4096];
    path_of(s, id, path, sizeof(path));
    struct stat sb;
    const bool exists = stat(path, &sb) == 0;
    const stamp now = exists ? stamp_of(&sb) : (stamp){0};
    pthread_mutex_lock(&s->mu);
    rec **slot = slot_of(s, id), *r = *slot;
    if (r && r->on_disk && (!exists || !same_stamp(&r->st, &now))) {
        drop(s, slot, r);
        r = NULL;
    }
    pthread_mutex_unlock(&s->mu);
    if (r || !exists) return;
    char *owner, *response, *items;
    stamp st;
    if (read_rec(s, id, &owner, &response, &items, &st) != QV_OK) return;
    rec *n = rec_bytes(id, owner, response, items) <= s->max_bytes
                 ? rec_new(id, owner, response, items)
                 : NULL;
    qv_free(owner), qv_free(response), qv_free(items);
    if (!n) return;
    n->on_disk = true;
    n->st = st;
    pthread_mutex_lock(&s->mu);
    insert_locked(s, n);
    pthread_mutex_unlock(&s->mu);
}

bool qv_resp_store_put(qv_resp_store *s, const char *id, const char *owner, const char *response,
                       const char *items) {
    if (rec_bytes(id, owner, response, items) > s->max_bytes) return false;
    rec *r = rec_new(id, owner, response, items);
    if (!r) return false;
    if (in_dir(s, id)) {
        r->on_disk = write_rec(s, id, owner, response, items, &r->st);
        if (!r->on_disk)
            QV_LOGW("responses: %s not written to %s (%s); kept in this process only", id, s->dir,
                    strerror(errno));
    }
    pthread_mutex_lock(&s->mu);
    insert_locked(s, r);
    pthread_mutex_unlock(&s->mu);
    return true;
}

qv_status qv_resp_store_get(qv_resp_store *s, const char *id, const char *owner, char **response,
                            char **items) {
    if (response) *response = NULL;
    if (items) *items = NULL;
    refresh(s, id);
    pthread_mutex_lock(&s->mu);
    rec *r = *slot_of(s, id);
    qv_status st = r && !strcmp(r->owner, owner) ? QV_OK : QV_ERR_NOT_FOUND;
    if (st == QV_OK) {
        unlink_use(s, r);
        push_front(s, r);
        if ((response && !(*response = qv_strdup(r->response))) ||
            (items && !(*items = qv_strdup(r->items))))
            st = QV_ERR_NOMEM;
    }
    pthread_mutex_unlock(&s->mu);
    if (st == QV_ERR_NOMEM) {
        if (response) qv_free(*response), *response = NULL;
        if (items) qv_free(*items), *items = NULL;
    }
    return st;
}

/* The directory's edit lock (an exclusive flock on DIR/.lock), or -1 (none, or it failed:
 * the edit then runs unlocked, as without a directory). */
static int lock_dir(const qv_resp_store *s) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/.lock", s->dir);
    const int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    while (flock(fd, LOCK_EX) != 0)
        if (errno != EINTR) {
            close(fd);
            return -1;
        }
    return fd;
}

qv_status qv_resp_store_edit(qv_resp_store *s, const char *id, const char *owner,
                             qv_resp_store_edit_fn edit, void *user) {
    char *resp2 = NULL, *items2 = NULL;
    const int lk = in_dir(s, id) ? lock_dir(s) : -1;
    refresh(s, id);
    pthread_mutex_lock(&s->mu);
    rec *r = *slot_of(s, id);
    qv_status st = r && !strcmp(r->owner, owner) ? QV_OK : QV_ERR_NOT_FOUND;
    if (st == QV_OK) st = edit(r->response, r->items, user, &resp2, &items2);
    if (st == QV_OK) {
        const size_t bytes =
            rec_bytes(r->id, r->owner, resp2 ? resp2 : r->response, items2 ? items2 : r->items);
        if (bytes > s->max_bytes) {
            st = QV_ERR_LIMIT;
        } else {
            unlink_use(s, r);
            push_front(s, r);
            s->bytes = s->bytes - r->bytes + bytes;
            r->bytes = bytes;
            if (resp2) qv_free(r->response), r->response = resp2, resp2 = NULL;
            if (items2) qv_free(r->items), r->items = items2, items2 = NULL;
            make_room(s, 0, r);
            /* the file follows (a failure leaves the record in this process only) */
            if (r->on_disk)
                r->on_disk = write_rec(s, r->id, r->owner, r->response, r->items, &r->st);
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (lk >= 0) close(lk); /* releases the flock */
    qv_free(resp2);
    qv_free(items2);
    return st;
}

bool qv_resp_store_delete(qv_resp_store *s, const char *id, const char *owner) {
    refresh(s, id);
    pthread_mutex_lock(&s->mu);
    rec **slot = slot_of(s, id);
    const bool found = *slot && !strcmp((*slot)->owner, owner);
    if (found) {
        if ((*slot)->on_disk) {
            char path[4096];
            path_of(s, id, path, sizeof(path));
            unlink(path);
        }
        drop(s, slot, *slot);
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

typedef struct file_ent {
    char name[ID_MAX + 1];
    uint64_t size;
    int64_t mtime_ns;
} file_ent;

static int by_mtime(const void *a, const void *b) {
    const int64_t x = ((const file_ent *)a)->mtime_ns, y = ((const file_ent *)b)->mtime_ns;
    return (x > y) - (x < y);
}

size_t qv_resp_store_sweep(qv_resp_store *s, uint64_t max_disk_bytes) {
    if (!s->dir) return 0;
    DIR *d = opendir(s->dir);
    if (!d) return 0;
    file_ent *v = NULL;
    size_t n = 0, cap = 0, removed = 0;
    uint64_t total = 0;
    const struct dirent *de;
    char path[4096];
    while ((de = readdir(d))) {
        const bool tmp = !strncmp(de->d_name, ".tmp-", 5);
        if ((!tmp && !id_ok(de->d_name)) || strlen(de->d_name) > ID_MAX) continue;
        snprintf(path, sizeof(path), "%s/%s", s->dir, de->d_name);
        struct stat sb;
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        if (tmp) { /* a writer that died between writing and renaming */
            if (time(NULL) - sb.st_mtim.tv_sec > 3600 && unlink(path) == 0) removed++;
            continue;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            file_ent *nv = qv_realloc(v, cap * sizeof(*v));
            if (!nv) break;
            v = nv;
        }
        memcpy(v[n].name, de->d_name, strlen(de->d_name) + 1); /* <= ID_MAX, checked */
        v[n].size = (uint64_t)sb.st_size;
        v[n].mtime_ns = stamp_of(&sb).mtime_ns;
        total += v[n++].size;
    }
    closedir(d);
    if (total > max_disk_bytes && n) qsort(v, n, sizeof(*v), by_mtime);
    for (size_t i = 0; total > max_disk_bytes && i < n; i++) { /* the oldest first */
        snprintf(path, sizeof(path), "%s/%s", s->dir, v[i].name);
        if (unlink(path) == 0) removed++;
        total -= v[i].size;
    }
    qv_free(v);
    return removed;
}

size_t qv_resp_store_max_bytes(const qv_resp_store *s) { return s->max_bytes; }

unsigned long long qv_resp_store_evictions(qv_resp_store *s) {
    pthread_mutex_lock(&s->mu);
    const unsigned long long n = s->evictions;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void qv_resp_store_stats(qv_resp_store *s, size_t *n, size_t *bytes) {
    pthread_mutex_lock(&s->mu);
    *n = s->n;
    *bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
}
