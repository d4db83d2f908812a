/*
 * threadpool.h - the CPU backend's persistent worker pool (internal to engine/cpu/).
 *
 * What: n_threads - 1 pthreads that stay alive for the backend's lifetime; qv__cpu_pool_run()
 * splits a task into n_threads parts, runs them on whichever threads are available (the
 * caller included) and returns when all parts are done. Handoff is a generation counter: idle
 * workers spin on it for a short while (sub-microsecond wake-up between the ~10 ops of a
 * layer) and then block on a condition variable so an idle server does not burn CPU. A worker
 * that is late (descheduled) does not join the run; the caller does its parts instead.
 * What not: no queue, no futures, no nested runs; work splitting is the task's business
 * (tasks typically pull row chunks from an atomic counter).
 * Thread: a pool is driven by one thread at a time (the backend's engine thread).
 */
#ifndef QV_CPU_THREADPOOL_H
#define QV_CPU_THREADPOOL_H

#include "core.h"

typedef struct qv__cpu_pool qv__cpu_pool;

/* Task body: called exactly once for every part = 0 .. nth-1 of a run, each part on one thread
 * (a thread may run several parts one after the other; parts of one run may run
 * concurrently). Per-part scratch indexed by `part` is therefore race-free. */
typedef void (*qv__cpu_task_fn)(void *arg, int part, int nth);

/* Creates a pool of n_threads threads in total (n_threads - 1 workers; the caller of run is
 * the last one). n_threads must be >= 1. Owner: the caller (qv__cpu_pool_destroy).
 * Errors: QV_ERR_NOMEM, QV_ERR_INVALID (thread creation failed). */
qv_status qv__cpu_pool_create(int n_threads, qv__cpu_pool **out, qv_error *err);

/* Stops and joins the workers and frees the pool. Accepts NULL. */
void qv__cpu_pool_destroy(qv__cpu_pool *pool);

/* Total thread count (workers + caller). */
int qv__cpu_pool_size(const qv__cpu_pool *pool);

/* Runs fn(arg, part, nth) for every part and waits for all of them. Memory written by the
 * task on any thread is visible to the caller when this returns. Not reentrant. */
void qv__cpu_pool_run(qv__cpu_pool *pool, qv__cpu_task_fn fn, void *arg);

#endif /* QV_CPU_THREADPOOL_H */
