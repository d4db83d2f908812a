/*
 * test_adapter_pool_threads.c - the device adapter pool's pinned host tier and its converter
 * thread under churn, on the host-memory CUDA runtime (tests/gpu/fake/fake_cudart.c: device
 * memory is host memory, copies happen when enqueued, events report "not ready" two times in
 * three). Built wherever the CUDA headers exist, also with ThreadSanitizer (tests/run.sh's
 * TSan step), so the hand-over between the engine thread and the converter thread is checked
 * for races; AddressSanitizer builds check that no conversion reads an adapter after
 * qv_cuda_adapter_pool_forget returned for it (the test frees and redraws the data then).
 *
 * 16 versions of 1 to 3 pages go through a 6-page device pool and a 10-page host tier for
 * 3000 random operations (prefetch, load, forget + redraw, hold/resume of the converter); after
 * every load the device image must equal the version's current data rounded to bf16, and a
 * version whose data was redrawn gets a new key (as the CUDA LoRA runtime does), so a stale
 * image is never served.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/adapter_pool.h"
#include "engine/dtype.h"

#define N_VER 16
#define PAGE 65536

typedef struct ver {
    float *data;
    int64_t n; /* values */
    uint64_t key;
} ver;

static uint32_t rng = 12345;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void draw(ver *v, uint64_t *next_key) {
    free(v->data);
    const int pages = 1 + (int)(next_u32() % 3);
    v->n = (int64_t)pages * PAGE / 2 - 64 - (int64_t)(next_u32() % 200);
    v->data = malloc((size_t)v->n * sizeof(float));
    assert_non_null(v->data);
    for (int64_t i = 0; i < v->n; i++)
        v->data[i] = (float)((int)(next_u32() % 20001) - 10000) * 1e-3f;
    v->key = ++*next_key;
}

static void check_image(qv_cuda_adapter_pool *pool, int slot, const ver *v) {
    qv_error err = {0};
    assert_int_equal(qv_cuda_adapter_pool_use(pool, slot, &err), QV_OK);
    const uint16_t *dev = qv_cuda_adapter_pool_mat(pool, slot, 0); /* host memory here */
    for (int64_t i = 0; i < v->n; i++)
        if (dev[i] != qv_f32_to_bf16(v->data[i]))
            fail_msg("version %llu: element %lld differs", (unsigned long long)v->key,
                     (long long)i);
}

static void test_churn(void **state) {
    (void)state;
    qv_cuda_pool_opts po = {.pool_bytes = 6 * PAGE, .host_bytes = 10 * PAGE, .max_entries = 32};
    qv_cuda_adapter_pool *pool = NULL;
    cudaStream_t stream;
    assert_int_equal(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
    qv_error err = {0};
    assert_int_equal(qv_cuda_adapter_pool_create(&po, stream, &pool, &err), QV_OK);
    ver v[N_VER] = {{0}};
    uint64_t next_key = 0;
    for (int i = 0; i < N_VER; i++)
        draw(&v[i], &next_key);
    int loads = 0, prefetch_ready = 0, forgets = 0, busy = 0;
    for (int it = 0; it < 3000; it++) {
        ver *x = &v[next_u32() % N_VER];
        const qv_cuda_pool_mat m = {x->data, x->n, QV_DTYPE_F32};
        const uint32_t op = next_u32() % 16;
        int slot = -1;
        if (op < 7) { /* prefetch */
            qv_status st = qv_cuda_adapter_pool_prefetch(pool, x->key, &m, 1, x, &slot, &err);
            if (st == QV_ERR_BUSY) {
                busy++;
                continue;
            }
            assert_int_equal(st, QV_OK);
            if (slot >= 0) {
                check_image(pool, slot, x);
                prefetch_ready++;
            }
        } else if (op < 13) { /* a step needs it now */
            assert_int_equal(qv_cuda_adapter_pool_load(pool, x->key, &m, 1, &slot, &err), QV_OK);
            check_image(pool, slot, x);
            loads++;
        } else if (op < 15) { /* the adapter is freed and another takes its place */
            qv_cuda_adapter_pool_forget(pool, x);
            draw(x, &next_key);
            forgets++;
        } else {
            qv_cuda_adapter_pool_hold_jobs(pool, next_u32() % 2 == 0);
        }
    }
    qv_cuda_adapter_pool_hold_jobs(pool, false);
    qv_cuda_pool_stats st;
    qv_cuda_adapter_pool_stats(pool, &st);
    printf("3000 operations: %d loads, %d prefetches found the version on the device, %d "
           "forgets, %d busy; host tier: %llu device loads from images, %llu conversions in "
           "the background, %llu on the caller, %llu waits, %llu cancelled, %llu evictions\n",
           loads, prefetch_ready, forgets, busy, (unsigned long long)st.host_hits,
           (unsigned long long)st.host_fills_async, (unsigned long long)st.host_fills_sync,
           (unsigned long long)st.host_job_waits, (unsigned long long)st.host_jobs_cancelled,
           (unsigned long long)st.host_pages.evictions);
    /* every path ran */
    assert_true(st.host_hits > 0 && st.host_fills_async > 0 && st.host_fills_sync > 0);
    assert_true(st.host_jobs_cancelled > 0 && st.host_pages.evictions > 0);
    assert_true(st.pages.evictions > 0 && prefetch_ready > 0);
    for (int i = 0; i < N_VER; i++)
        qv_cuda_adapter_pool_forget(pool, &v[i]);
    qv_cuda_adapter_pool_destroy(pool); /* joins the converter thread */
    for (int i = 0; i < N_VER; i++)
        free(v[i].data);
    cudaStreamDestroy(stream);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
