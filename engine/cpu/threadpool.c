/*
 * threadpool.c - persistent spin-then-block worker pool; see threadpool.h.
 *
 * Protocol: a run is split into nth parts, fn(arg, part, nth). The driver publishes (fn, arg),
 * resets the part counter, opens nth - 1 join tickets (`open`, release) and bumps `gen`. A
 * worker that observes a new generation takes a ticket with a CAS; only then does it read
 * fn/arg, pull parts from the counter, and finally bump `n_done` (release). The driver pulls
 * parts too; when none are left it closes the run by taking the remaining tickets
 * (`exchange(open, 0)`) and waits only for the workers that joined. So a worker that is
 * descheduled (a loaded machine) never delays a run it did not join: the driver does its
 * parts. Workers spin on `gen` for up to SPIN_S seconds after their last run before sleeping
 * on `cond`; the driver bumps `gen` and broadcasts under `mutex`, and a worker re-checks `gen`
 * under the mutex before waiting, so no wake-up is lost.
 * Invariants: at most one run is in flight; fn/arg are written only when no joined worker is
 * running; part p is processed by exactly one thread, so tasks may index per-part scratch.
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

    qv__cpu_task_fn fn; /* written by the driver before opening the run */
    void *arg;

    _Alignas(64) atomic_uint gen;
    _Alignas(64) atomic_int open;      /* join tickets left in the current run */
    _Alignas(64) atomic_int next_part; /* next part to hand out */
    _Alignas(64) atomic_int n_done;    /* joined workers that finished */
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

static void run_parts(struct qv__cpu_pool *pool) {
    int nth = pool->n_threads;
    for (;;) {
        int part = atomic_fetch_add_explicit(&pool->next_part, 1, memory_order_relaxed);
        if (part >= nth) break;
        pool->fn(pool->arg, part, nth);
    }
}

static void *worker_main(void *p) {
    struct worker *w = p;
    struct qv__cpu_pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        seen = wait_for_work(pool, seen);
        if (atomic_load_explicit(&pool->quit, memory_order_acquire)) break;
        int v = atomic_load_explicit(&pool->open, memory_order_acquire);
        while (v > 0 && !atomic_compare_exchange_weak_explicit(
                            &pool->open, &v, v - 1, memory_order_acq_rel, memory_order_acquire)) {
        }
        if (v <= 0) continue; /* the run was already closed (or full) */
        run_parts(pool);
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
    atomic_init(&pool->open, 0);
    atomic_init(&pool->next_part, 0);
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
    atomic_store_explicit(&pool->next_part, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->n_done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->open, nth - 1, memory_order_release);
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool->cond);
    pthread_mutex_unlock(&pool->mutex);

    run_parts(pool);

    int left = atomic_exchange_explicit(&pool->open, 0, memory_order_acq_rel);
    int joined = nth - 1 - left;
    for (unsigned i = 0; atomic_load_explicit(&pool->n_done, memory_order_acquire) < joined; i++) {
        cpu_relax();
        if ((i & 1023) == 1023) sched_yield();
    }
}
