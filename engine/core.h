/*
 * core.h - status codes, error messages, allocation hooks, assertions and logging shared by
 * every module of quiver.
 *
 * Not a grab bag: only what every module needs. No module state lives here except the
 * allocation-failure injector used by tests and the log level.
 * Thread safety: every function here may be called from any thread.
 */
#ifndef QV_CORE_H
#define QV_CORE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One status enum for the whole project: 0 is success, errors are negative. */
typedef enum qv_status {
    QV_OK = 0,
    QV_ERR_NOMEM = -1,       /* host allocation failed */
    QV_ERR_INVALID = -2,     /* bad input: malformed file, bad argument, inconsistent config */
    QV_ERR_NOT_FOUND = -3,   /* a file, tensor, key or name does not exist */
    QV_ERR_BUSY = -4,        /* resource in use or capacity exhausted; retry later */
    QV_ERR_DEVICE_OOM = -5,  /* device allocation failed (recoverable) */
    QV_ERR_IO = -6,          /* read/write/mmap failed */
    QV_ERR_UNSUPPORTED = -7, /* valid input that quiver does not implement */
    QV_ERR_DEVICE = -8,      /* sticky device failure */
    QV_ERR_LIMIT = -9,       /* a configured limit was exceeded */
} qv_status;

/* Static English name of a status ("ok", "out of memory", ...). Never NULL. */
const char *qv_status_str(qv_status s);

/* An error: a status plus a one-line human-readable message naming the problem.
 * Functions that can fail on user input take a `qv_error *err` (may be NULL) and fill it. */
typedef struct qv_error {
    qv_status status;
    char msg[512];
} qv_error;

/* Formats `fmt` into err->msg (when err is not NULL), stores `s` and returns `s`, so a caller
 * can write `return qv_errorf(err, QV_ERR_INVALID, "bad magic %x", m);`. */
qv_status qv_errorf(qv_error *err, qv_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (used to add file names as errors propagate). */
void qv_error_prefix(qv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- allocation: every host allocation goes through these so tests can inject failures ---- */
void *qv_malloc(size_t n);
void *qv_calloc(size_t n, size_t size);
void *qv_realloc(void *p, size_t n);
void qv_free(void *p);
char *qv_strdup(const char *s);
char *qv_strndup(const char *s, size_t n);

/* Test hook: the next `after` allocations succeed, every later one fails (-1 disables). */
void qv_alloc_fail_after(long after);

/* ---- assertions: broken invariants abort, in every build type ---- */
void qv__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define QV_ASSERT(x)                                                                               \
    do {                                                                                           \
        if (!(x)) qv__assert_fail(#x, __FILE__, __LINE__);                                         \
    } while (0)

/* ---- logging to stderr ---- */
enum qv_log_level { QV_LOG_DEBUG = 0, QV_LOG_INFO = 1, QV_LOG_WARN = 2, QV_LOG_ERROR = 3 };
void qv_log_set_level(enum qv_log_level lvl);
enum qv_log_level qv_log_get_level(void);
void qv_log(enum qv_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A program's own lifecycle line (start-up, budgets, listening, stop; `tag` names the program
 * part, e.g. "serve"): printed at every log level, as "quiver TAG: msg", or in JSON with
 * "logger": TAG. */
void qv_log_tagged(enum qv_log_level lvl, const char *tag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* JSON lines instead of text: {"time": RFC 3339 UTC with milliseconds, "level", "logger",
 * "msg"} per line, one write each (for log collectors). */
void qv_log_set_json(bool on);
#define QV_LOGD(...) qv_log(QV_LOG_DEBUG, __VA_ARGS__)
#define QV_LOGI(...) qv_log(QV_LOG_INFO, __VA_ARGS__)
#define QV_LOGW(...) qv_log(QV_LOG_WARN, __VA_ARGS__)
#define QV_LOGE(...) qv_log(QV_LOG_ERROR, __VA_ARGS__)

/* ---- small helpers ---- */
#define QV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QV_MAX(a, b) ((a) > (b) ? (a) : (b))
#define QV_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic clock in seconds. */
double qv_time_s(void);
/* SplitMix64: advances *state and returns its next 64-bit output (seeding, hashing to ids). */
uint64_t qv_splitmix64(uint64_t *state);
/* MurmurHash3's 64-bit finalizer: every input bit moves every output bit (hash tables). */
static inline uint64_t qv_fmix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xFF51AFD7ED558CCDull;
    x ^= x >> 33;
    x *= 0xC4CEB9FE1A85EC53ull;
    return x ^ (x >> 33);
}

/* CPUs this process may use (engine/cgroup.c): its affinity mask, capped by the CPU quota of
 * its control group (cgroup v2 cpu.max or v1 cpu.cfs_quota_us, on its group and the group's
 * ancestors), rounded down, at least 1. `why` (may be NULL) gets a short account for logs. */
int qv_cpus_available(char *why, size_t why_len);
/* The CPU quota in CPUs (quota / period) binding this process, 0 when none; `root` prefixes
 * every path read (NULL: the real /proc and /sys; tests point it at a fake tree). */
double qv_cgroup_cpu_limit(const char *root);
/* min(affinity, floor(limit)) (limit 0: none), at least 1. */
int qv_cpus_from(int affinity, double limit);
/* The memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes, on
 * its group and the group's ancestors) in bytes, 0 when none; `root` as above. */
uint64_t qv_cgroup_memory_limit(const char *root);

/* Returns "dir/name" in a new buffer owned by the caller (qv_free); NULL when out of memory. */
char *qv_path_join(const char *dir, const char *name);

/* Reads a whole file into a NUL-terminated buffer owned by the caller (qv_free).
 * Refuses files larger than max_bytes with QV_ERR_LIMIT. */
qv_status qv_read_file(const char *path, size_t max_bytes, char **out, size_t *out_len,
                       qv_error *err);

#ifdef __cplusplus
}
#endif
#endif /* QV_CORE_H */
