/*
 * threadpool.c - persistent spin-then-block worker pool; see threadpool.h.
 *
 * Protocol: the driver publishes (fn, arg) and bumps `gen` (release); a worker that observes
 * a new generation (acquire) runs the task and bumps `n_done` (release); the driver runs its
 * own share as thread 0 and then spins until n_done == nth - 1 (acquire). Workers spin on
 * `gen` for up to SPIN_S seconds after their last task before sleeping on `cond`; the driver
 * always broadcasts under `mutex` after bumping `gen`, so a worker that checks `gen` under the
 * mutex before waiting can never miss a wake-up.
 * Invariant: at most one run is in flight; `fn`/`arg` are only written while all workers are
 * idle (between runs).
 */
#include "cpu/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define SPIN_S 0.002 /* worker spin budget after a task before blocking */

struct worker {
    struct qv__cpu_pool *pool;
    int ith;
    pthread_t tid;
    bool started;
};

struct qv__cpu_pool {
    int n_threads;
    struct worker *workers; /* [n_threads - 1] */

    qv__cpu_task_fn fn; /* written by the driver before bumping gen */
    void *arg;

    _Alignas(64) atomic_uint gen;
    _Alignas(64) atomic_int n_done;
    _Alignas(64) atomic_bool quit;

    pthread_mutex_t mutex; /* guards sleeping on cond */
    pthread_cond_t cond;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Waits until pool->gen differs from `seen` or quit is set; returns the new generation. */
static unsigned wait_for_work(struct qv__cpu_pool *pool, unsigned seen) {
    double t0 = 0.0;
    for (unsigned i = 0;; i++) {
        unsigned g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&pool->quit, memory_order_acquire)) return g;
        cpu_relax();
        if ((i & 255) == 255) {
            double t = qv_time_s();
            if (t0 == 0.0) t0 = t;
            if (t - t0 > SPIN_S) break;
            sched_yield(); /* oversubscribed pools (tests with 3 threads on 2 cores) */
        }
    }
    pthread_mutex_lock(&pool->mutex);
    unsigned g;
    while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&pool->quit, memory_order_acquire))
        pthread_cond_wait(&pool->cond, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
    return g;
}

static void *worker_main(void *p) {
    struct worker *w = p;
    struct qv__cpu_pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_work(pool, seen);
        if (atomic_load_explicit(&pool->quit, memory_order_acquire)) break;
        pool->fn(pool->arg, w->ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

qv_status qv__cpu_pool_create(int n_threads, qv__cpu_pool **out, qv_error *err) {
    *out = NULL;
    if (n_threads < 1)
        return qv_errorf(err, QV_ERR_INVALID, "cpu pool: n_threads %d < 1", n_threads);
    struct qv__cpu_pool *pool = qv_calloc(1, sizeof *pool);
    if (!pool) return qv_errorf(err, QV_ERR_NOMEM, "cpu pool: out of memory");
    pool->n_threads = n_threads;
    atomic_init(&pool->gen, 0);
    atomic_init(&pool->n_done, 0);
    atomic_init(&pool->quit, false);
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->cond, NULL);
    if (n_threads > 1) {
        pool->workers = qv_calloc((size_t)n_threads - 1, sizeof *pool->workers);
        if (!pool->workers) {
            qv__cpu_pool_destroy(pool);
            return qv_errorf(err, QV_ERR_NOMEM, "cpu pool: out of memory");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            struct worker *w = &pool->workers[i];
            w->pool = pool;
            w->ith = i + 1;
            if (pthread_create(&w->tid, NULL, worker_main, w) != 0) {
                qv__cpu_pool_destroy(pool);
                return qv_errorf(err, QV_ERR_INVALID, "cpu pool: pthread_create failed");
            }
            w->started = true;
        }
    }
    *out = pool;
    return QV_OK;
}

void qv__cpu_pool_destroy(qv__cpu_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store_explicit(&pool->quit, true, memory_order_release);
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mutex);
    if (pool->workers) {
        for (int i = 0; i < pool->n_threads - 1; i++)
            if (pool->workers[i].started) pthread_join(pool->workers[i].tid, NULL);
        qv_free(pool->workers);
    }
    pthread_cond_destroy(&pool->cond);
    pthread_mutex_destroy(&pool->mutex);
    qv_free(pool);
}

int qv__cpu_pool_size(const qv__cpu_pool *pool) { return pool->n_threads; }

void qv__cpu_pool_run(qv__cpu_pool *pool, qv__cpu_task_fn fn, void *arg) {
    int nth = pool->n_threads;
    if (nth == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mutex);

    fn(arg, 0, nth);

    for (unsigned i = 0; atomic_load_explicit(&pool->n_done, memory_order_acquire) < nth - 1; i++) {
        cpu_relax();
        if ((i & 1023) == 1023) sched_yield();
    }
}
