/*
 * test_kv_cache.c - page pool bookkeeping: reserve/release, reuse order, sharing by refcount,
 * exhaustion without partial allocation, and allocation failure.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "engine/backend.h"
#include "engine/kv_cache.h"

static qv_model_config tiny_cfg(void) {
    qv_model_config c;
    memset(&c, 0, sizeof(c));
    c.n_layers = 2;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    return c;
}

static qv_backend *be;

static int setup(void **state) {
    (void)state;
    qv_error err;
    return qv_backend_cpu_create(1, &be, &err) == QV_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    be->iface->destroy(be);
    return 0;
}

static void test_reserve_release_reuse(void **state) {
    (void)state;
    qv_model_config c = tiny_cfg();
    qv_kv_cache *kv;
    qv_error err;
    assert_int_equal(qv_kv_cache_create(be, &c, 8, 4, &kv, &err), QV_OK);
    assert_int_equal(qv_kv_bytes_per_token(&c), 2 * 2 * 2 * 8 * 4);
    qv_kv_seq a = {0}, b = {0};
    assert_int_equal(qv_kv_seq_reserve(kv, &a, 1), QV_OK);
    assert_int_equal(a.n_pages, 1);
    assert_int_equal(qv_kv_seq_reserve(kv, &a, 4), QV_OK); /* still one page */
    assert_int_equal(a.n_pages, 1);
    assert_int_equal(qv_kv_seq_reserve(kv, &a, 9), QV_OK); /* 3 pages */
    assert_int_equal(a.n_pages, 3);
    assert_int_equal(kv->n_free, 5);
    assert_int_equal(qv_kv_seq_pages_needed(kv, &b, 20), 5);
    assert_int_equal(qv_kv_seq_reserve(kv, &b, 20), QV_OK);
    assert_int_equal(kv->n_free, 0);
    /* Exhausted: nothing partially allocated. */
    assert_int_equal(qv_kv_seq_reserve(kv, &a, 13), QV_ERR_BUSY);
    assert_int_equal(a.n_pages, 3);
    int32_t a_pages[3];
    memcpy(a_pages, a.pages, sizeof(a_pages));
    qv_kv_seq_release(kv, &a);
    assert_int_equal(kv->n_free, 3);
    assert_null(a.pages);
    /* A new sequence gets the released pages back, in the same order. */
    qv_kv_seq c2 = {0};
    assert_int_equal(qv_kv_seq_reserve(kv, &c2, 12), QV_OK);
    assert_memory_equal(c2.pages, a_pages, sizeof(a_pages));
    qv_kv_seq_release(kv, &b);
    qv_kv_seq_release(kv, &c2);
    assert_int_equal(kv->n_free, 8);
    qv_kv_cache_destroy(kv);
}

static void test_shared_pages(void **state) {
    (void)state;
    qv_model_config c = tiny_cfg();
    qv_kv_cache *kv;
    qv_error err;
    assert_int_equal(qv_kv_cache_create(be, &c, 4, 2, &kv, &err), QV_OK);
    qv_kv_seq a = {0};
    assert_int_equal(qv_kv_seq_reserve(kv, &a, 2), QV_OK);
    int32_t shared = a.pages[0];
    qv_kv_page_ref(kv, shared); /* a second holder */
    qv_kv_seq_release(kv, &a);
    assert_int_equal(kv->n_free, 3); /* still held once */
    qv_kv_page_unref(kv, shared);
    assert_int_equal(kv->n_free, 4);
    qv_kv_cache_destroy(kv);
}

static void test_bad_sizes_and_oom(void **state) {
    (void)state;
    qv_model_config c = tiny_cfg();
    qv_kv_cache *kv = (qv_kv_cache *)1;
    qv_error err;
    assert_int_equal(qv_kv_cache_create(be, &c, 0, 4, &kv, &err), QV_ERR_INVALID);
    assert_null(kv);
    for (long k = 0; k < 4; k++) {
        qv_alloc_fail_after(k);
        qv_status st = qv_kv_cache_create(be, &c, 4, 4, &kv, &err);
        qv_alloc_fail_after(-1);
        if (st == QV_OK)
            qv_kv_cache_destroy(kv);
        else
            assert_int_equal(st, QV_ERR_NOMEM);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserve_release_reuse),
        cmocka_unit_test(test_shared_pages),
        cmocka_unit_test(test_bad_sizes_and_oom),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
