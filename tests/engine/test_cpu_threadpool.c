/*
 * test_cpu_threadpool.c - the CPU backend's worker pool: every part of every run is done exactly
 * once with the right nth, results written by workers are visible when run() returns,
 * both hand-off paths work (spinning workers and workers asleep on the condition variable),
 * and create/destroy cycles (including destroy while workers sleep) neither hang nor leak.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "cpu/threadpool.h"

#define MAX_T 8

struct count_task {
    int runs[MAX_T]; /* slot p written only by the thread running part p */
    int seen_nth[MAX_T];
    long payload[MAX_T];
    long round;
};

static void count_fn(void *arg, int part, int nth) {
    struct count_task *t = arg;
    t->runs[part]++;
    t->seen_nth[part] = nth;
    t->payload[part] = t->round * 1000 + part; /* read back by the driver after run() */
}

static qv__cpu_pool *make_pool(int n) {
    qv__cpu_pool *p = NULL;
    qv_error err = {0};
    assert_int_equal(qv__cpu_pool_create(n, &p, &err), QV_OK);
    assert_non_null(p);
    assert_int_equal(qv__cpu_pool_size(p), n);
    return p;
}

static void sleep_ms(int ms) {
    struct timespec ts = {0, (long)ms * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_every_thread_once(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) {
        qv__cpu_pool *p = make_pool(n);
        struct count_task t;
        memset(&t, 0, sizeof t);
        long rounds = 20000;
        for (t.round = 0; t.round < rounds; t.round++) {
            qv__cpu_pool_run(p, count_fn, &t);
            for (int i = 0; i < n; i++) {
                if (t.payload[i] != t.round * 1000 + i) {
                    fprintf(stderr, "n=%d round %ld: thread %d result not visible\n", n, t.round,
                            i);
                    fail();
                }
            }
        }
        for (int i = 0; i < n; i++) {
            assert_int_equal(t.runs[i], rounds);
            assert_int_equal(t.seen_nth[i], n);
        }
        for (int i = n; i < MAX_T; i++)
            assert_int_equal(t.runs[i], 0);
        qv__cpu_pool_destroy(p);
    }
}

static void test_sleeping_workers(void **state) {
    (void)state;
    qv__cpu_pool *p = make_pool(3);
    struct count_task t;
    memset(&t, 0, sizeof t);
    for (t.round = 0; t.round < 20; t.round++) {
        sleep_ms(5); /* longer than the spin budget: workers are asleep on the condvar */
        qv__cpu_pool_run(p, count_fn, &t);
        for (int i = 0; i < 3; i++)
            assert_int_equal(t.payload[i], t.round * 1000 + i);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(t.runs[i], 20);
    qv__cpu_pool_destroy(p);
}

static void test_create_destroy_cycles(void **state) {
    (void)state;
    for (int k = 0; k < 50; k++) {
        qv__cpu_pool *p = make_pool(1 + k % 4);
        if (k % 3 == 0) {
            struct count_task t;
            memset(&t, 0, sizeof t);
            qv__cpu_pool_run(p, count_fn, &t);
        }
        if (k % 5 == 0) sleep_ms(3); /* destroy while workers sleep */
        qv__cpu_pool_destroy(p);
    }
    qv__cpu_pool_destroy(NULL);
    qv__cpu_pool *p = NULL;
    qv_error err = {0};
    assert_int_equal(qv__cpu_pool_create(0, &p, &err), QV_ERR_INVALID);
    assert_null(p);
    qv_alloc_fail_after(0);
    assert_int_equal(qv__cpu_pool_create(2, &p, &err), QV_ERR_NOMEM);
    qv_alloc_fail_after(1); /* pool succeeds, worker array fails */
    assert_int_equal(qv__cpu_pool_create(2, &p, &err), QV_ERR_NOMEM);
    qv_alloc_fail_after(-1);
    assert_null(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_thread_once),
        cmocka_unit_test(test_sleeping_workers),
        cmocka_unit_test(test_create_destroy_cycles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
