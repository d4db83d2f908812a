/*
 * core.c - status strings, errors, the allocation hooks, assertion failure and logging.
 *
 * The allocation-failure injector is a process-wide atomic counter so that tests can make
 * the N-th allocation fail from any thread. Logging writes whole lines with one fprintf so
 * lines from different threads do not interleave.
 */
#include "core.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

const char *qv_status_str(qv_status s) {
    switch (s) {
    case QV_OK: return "ok";
    case QV_ERR_NOMEM: return "out of memory";
    case QV_ERR_INVALID: return "invalid input";
    case QV_ERR_NOT_FOUND: return "not found";
    case QV_ERR_BUSY: return "busy";
    case QV_ERR_DEVICE_OOM: return "device out of memory";
    case QV_ERR_IO: return "i/o error";
    case QV_ERR_UNSUPPORTED: return "unsupported";
    case QV_ERR_DEVICE: return "device error";
    case QV_ERR_LIMIT: return "limit exceeded";
    }
    return "unknown status";
}

qv_status qv_errorf(qv_error *err, qv_status s, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->status = s;
    }
    return s;
}

void qv_error_prefix(qv_error *err, const char *fmt, ...) {
    if (!err) return;
    char prefix[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    size_t lp = strlen(prefix), lm = strlen(err->msg);
    if (lp + 2 >= sizeof(err->msg)) lp = sizeof(err->msg) - 3;
    if (lp + 2 + lm >= sizeof(err->msg)) lm = sizeof(err->msg) - 3 - lp;
    memmove(err->msg + lp + 2, err->msg, lm);
    memcpy(err->msg, prefix, lp);
    err->msg[lp] = ':';
    err->msg[lp + 1] = ' ';
    err->msg[lp + 2 + lm] = '\0';
}

/* ---- allocation ---- */

static atomic_long alloc_budget = -1; /* < 0: unlimited */

void qv_alloc_fail_after(long after) { atomic_store(&alloc_budget, after); }

static bool alloc_allowed(void) {
    long b = atomic_load(&alloc_budget);
    while (b >= 0) {
        if (b == 0) return false;
        if (atomic_compare_exchange_weak(&alloc_budget, &b, b - 1)) return true;
    }
    return true;
}

void *qv_malloc(size_t n) {
    if (!alloc_allowed()) return NULL;
    return malloc(n ? n : 1);
}

void *qv_calloc(size_t n, size_t size) {
    if (!alloc_allowed()) return NULL;
    if (n == 0 || size == 0) return calloc(1, 1);
    return calloc(n, size);
}

void *qv_realloc(void *p, size_t n) {
    if (!alloc_allowed()) return NULL;
    return realloc(p, n ? n : 1);
}

void qv_free(void *p) { free(p); }

char *qv_strndup(const char *s, size_t n) {
    char *d = qv_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *qv_strdup(const char *s) { return qv_strndup(s, strlen(s)); }

/* ---- assertions and logging ---- */

void qv__assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "quiver: assertion failed: %s (%s:%d)\n", expr, file, line);
    fflush(stderr);
    abort();
}

static atomic_int log_level = QV_LOG_INFO;

void qv_log_set_level(enum qv_log_level lvl) { atomic_store(&log_level, (int)lvl); }
enum qv_log_level qv_log_get_level(void) { return (enum qv_log_level)atomic_load(&log_level); }

static atomic_int log_json;

void qv_log_set_json(bool on) { atomic_store(&log_json, on ? 1 : 0); }

/* One line to stderr, text or JSON; the formatted message is any bytes (a JSON line escapes
 * them). */
static void log_emit(enum qv_log_level lvl, const char *tag, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void log_emit(enum qv_log_level lvl, const char *tag, const char *fmt, va_list ap) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    char msg[4096];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (!atomic_load(&log_json)) {
        fprintf(stderr, "quiver %s: %s\n", tag ? tag : names[lvl], msg);
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char out[4096 + 256];
    size_t o =
        (size_t)snprintf(out, sizeof out,
                         "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
                         "\"logger\":\"%s\",\"msg\":\"",
                         tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                         tm.tm_sec, ts.tv_nsec / 1000000L, names[lvl], tag ? tag : "quiver");
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 12 < sizeof out; p++) {
        if (*p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            o += (size_t)snprintf(out + o, sizeof out - o, "\\u00%c%c", hex[*p >> 4], hex[*p & 15]);
        } else if (*p < 0x80) {
            out[o++] = (char)*p;
        } else { /* a whole valid UTF-8 sequence passes; an invalid byte becomes U+FFFD */
            const int n = *p >= 0xf0 && *p < 0xf5 ? 4 : *p >= 0xe0 ? 3 : *p >= 0xc2 ? 2 : 0;
            int k = 1;
            while (n && k < n && (p[k] & 0xc0) == 0x80)
                k++;
            if (n && k == n && *p < 0xf5 && !(*p == 0xe0 && p[1] < 0xa0) &&
                !(*p == 0xed && p[1] >= 0xa0) && !(*p == 0xf0 && p[1] < 0x90) &&
                !(*p == 0xf4 && p[1] >= 0x90)) {
                memcpy(out + o, p, (size_t)n);
                o += (size_t)n;
                p += n - 1;
            } else {
                memcpy(out + o, "\\ufffd", 6);
                o += 6;
            }
        }
    }
    memcpy(out + o, "\"}\n", 4);
    fputs(out, stderr);
}

void qv_log(enum qv_log_level lvl, const char *fmt, ...) {
    if ((int)lvl < atomic_load(&log_level)) return;
    va_list ap;
    va_start(ap, fmt);
    log_emit(lvl, NULL, fmt, ap);
    va_end(ap);
}

void qv_log_tagged(enum qv_log_level lvl, const char *tag, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_emit(lvl, tag, fmt, ap);
    va_end(ap);
}

uint64_t qv_splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double qv_time_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

char *qv_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = qv_malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

qv_status qv_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len,
                       qv_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        return qv_errorf(err, errno == ENOENT ? QV_ERR_NOT_FOUND : QV_ERR_IO, "%s: %s", path,
                         strerror(errno));
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qv_errorf(err, QV_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(f);
        return qv_errorf(err, QV_ERR_LIMIT, "%s: file is %lld bytes, limit is %zu", path,
                         (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = qv_malloc(n + 1);
    if (!buf) {
        fclose(f);
        return qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    if (n && fread(buf, 1, n, f) != n) {
        qv_free(buf);
        fclose(f);
        return qv_errorf(err, QV_ERR_IO, "%s: short read", path);
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    if (out_len) *out_len = n;
    return QV_OK;
}
