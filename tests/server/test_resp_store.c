/*
 * test_resp_store.c - the Responses API's response store (server/resp_store.c): records by id
 * and owner, replacement, least-recently-used eviction within the byte budget, deletes, a
 * record larger than the store, allocation failures, threads using it at once, and edits in
 * place (the Conversations API's appends) from several threads.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/core.h"
#include "server/resp_store.h"

static void test_put_get_delete(void **state) {
    (void)state;
    qv_resp_store *s = qv_resp_store_create(1 << 20);
    assert_non_null(s);
    char *resp, *items;
    assert_int_equal(qv_resp_store_get(s, "resp_a", "k1", &resp, &items), QV_ERR_NOT_FOUND);
    assert_null(resp);
    assert_true(qv_resp_store_put(s, "resp_a", "k1", "{\"id\":\"resp_a\"}", "[1]"));
    assert_int_equal(qv_resp_store_get(s, "resp_a", "k1", &resp, &items), QV_OK);
    assert_string_equal(resp, "{\"id\":\"resp_a\"}");
    assert_string_equal(items, "[1]");
    qv_free(resp);
    qv_free(items);
    /* another owner finds nothing, and cannot delete it */
    assert_int_equal(qv_resp_store_get(s, "resp_a", "k2", &resp, NULL), QV_ERR_NOT_FOUND);
    assert_false(qv_resp_store_delete(s, "resp_a", "k2"));
    /* the same id again replaces it */
    assert_true(qv_resp_store_put(s, "resp_a", "k1", "{\"v\":2}", "[2]"));
    assert_int_equal(qv_resp_store_get(s, "resp_a", "k1", NULL, &items), QV_OK);
    assert_string_equal(items, "[2]");
    qv_free(items);
    size_t n, bytes;
    qv_resp_store_stats(s, &n, &bytes);
    assert_int_equal(n, 1);
    assert_true(qv_resp_store_delete(s, "resp_a", "k1"));
    assert_false(qv_resp_store_delete(s, "resp_a", "k1"));
    qv_resp_store_stats(s, &n, &bytes);
    assert_int_equal(n, 0);
    assert_int_equal(bytes, 0);
    qv_resp_store_free(s);
}

/* The byte budget: the least recently used (put or read) leave first; a record larger than
 * the store is not kept; many records rehash the table. */
static void test_eviction(void **state) {
    (void)state;
    char big[1000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    qv_resp_store *s = qv_resp_store_create(4 * 1200); /* about four records */
    char id[32];
    for (int i = 0; i < 4; i++) {
        snprintf(id, sizeof(id), "resp_%d", i);
        assert_true(qv_resp_store_put(s, id, "", big, "[]"));
    }
    size_t n, bytes;
    qv_resp_store_stats(s, &n, &bytes);
    assert_int_equal(n, 4);
    assert_int_equal(qv_resp_store_get(s, "resp_0", "", NULL, NULL), QV_OK); /* 0 is fresh */
    assert_true(qv_resp_store_put(s, "resp_4", "", big, "[]"));              /* 1 leaves */
    assert_int_equal(qv_resp_store_get(s, "resp_1", "", NULL, NULL), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_resp_store_get(s, "resp_0", "", NULL, NULL), QV_OK);
    assert_int_equal(qv_resp_store_get(s, "resp_2", "", NULL, NULL), QV_OK);
    qv_resp_store_stats(s, &n, &bytes);
    assert_true(n == 4 && bytes <= 4 * 1200);
    assert_int_equal(qv_resp_store_evictions(s), 1);
    assert_int_equal(qv_resp_store_max_bytes(s), 4 * 1200);
    char huge[6000];
    memset(huge, 'y', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    assert_false(qv_resp_store_put(s, "resp_h", "", huge, "[]"));
    assert_int_equal(qv_resp_store_get(s, "resp_h", "", NULL, NULL), QV_ERR_NOT_FOUND);
    qv_resp_store_stats(s, &n, &bytes);
    assert_int_equal(n, 4); /* nothing was pushed out for it */
    qv_resp_store_free(s);

    s = qv_resp_store_create(1 << 24);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "resp_%d", i);
        assert_true(qv_resp_store_put(s, id, "o", id, "[]"));
    }
    for (int i = 0; i < 5000; i += 7) {
        snprintf(id, sizeof(id), "resp_%d", i);
        char *resp;
        assert_int_equal(qv_resp_store_get(s, id, "o", &resp, NULL), QV_OK);
        assert_string_equal(resp, id);
        qv_free(resp);
    }
    qv_resp_store_free(s);
}

static void test_alloc_failures(void **state) {
    (void)state;
    qv_resp_store *s = qv_resp_store_create(1 << 20);
    assert_true(qv_resp_store_put(s, "resp_a", "o", "{}", "[]"));
    for (int k = 0; k < 8; k++) {
        qv_alloc_fail_after(k);
        const bool put = qv_resp_store_put(s, "resp_b", "o", "{\"b\":1}", "[]");
        char *resp = NULL, *items = NULL;
        const qv_status st = qv_resp_store_get(s, "resp_a", "o", &resp, &items);
        qv_alloc_fail_after(-1);
        assert_true(st == QV_OK || (st == QV_ERR_NOMEM && !resp && !items));
        qv_free(resp);
        qv_free(items);
        (void)put;
    }
    char *resp;
    assert_int_equal(qv_resp_store_get(s, "resp_a", "o", &resp, NULL), QV_OK);
    assert_string_equal(resp, "{}");
    qv_free(resp);
    qv_resp_store_free(s);
}

typedef struct worker {
    qv_resp_store *s;
    int t;
    int found;
} worker;

/* An edit appending "x" to the items text (a counter of edits), or failing on request. */
static qv_status append_x(const char *response, const char *items, void *user, char **new_response,
                          char **new_items) {
    (void)response;
    const int *mode = user;
    *new_response = NULL;
    if (*mode == 1) return QV_ERR_INVALID;
    const size_t n = strlen(items) + (*mode == 2 ? 4000 : 1);
    if (!(*new_items = qv_malloc(n + 1))) return QV_ERR_NOMEM;
    memset(*new_items, 'x', n);
    memcpy(*new_items, items, strlen(items));
    (*new_items)[n] = '\0';
    return QV_OK;
}

/* Edits in place: the owner's only, errors leave the record, a record that would outgrow the
 * store stays as it was, other records leave to make room, and 4 threads appending to one
 * record lose no edit. */
static void test_edit(void **state) {
    (void)state;
    qv_resp_store *s = qv_resp_store_create(3000);
    int mode = 0;
    assert_true(qv_resp_store_put(s, "conv_a", "me", "{}", ""));
    assert_int_equal(qv_resp_store_edit(s, "conv_a", "me", append_x, &mode), QV_OK);
    assert_int_equal(qv_resp_store_edit(s, "conv_a", "you", append_x, &mode), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_resp_store_edit(s, "conv_b", "me", append_x, &mode), QV_ERR_NOT_FOUND);
    mode = 1;
    assert_int_equal(qv_resp_store_edit(s, "conv_a", "me", append_x, &mode), QV_ERR_INVALID);
    mode = 2;
    assert_int_equal(qv_resp_store_edit(s, "conv_a", "me", append_x, &mode), QV_ERR_LIMIT);
    char *items = NULL;
    assert_int_equal(qv_resp_store_get(s, "conv_a", "me", NULL, &items), QV_OK);
    assert_string_equal(items, "x");
    qv_free(items);
    /* growing one record pushes the least recently used others out */
    char big[1001];
    memset(big, 'b', 1000);
    big[1000] = '\0';
    assert_true(qv_resp_store_put(s, "resp_old", "me", "{}", big));
    assert_true(qv_resp_store_put(s, "resp_new", "me", "{}", big));
    mode = 0;
    for (int i = 0; i < 900; i++)
        assert_int_equal(qv_resp_store_edit(s, "conv_a", "me", append_x, &mode), QV_OK);
    assert_int_equal(qv_resp_store_get(s, "resp_old", "me", NULL, NULL), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_resp_store_evictions(s), 1);
    assert_int_equal(qv_resp_store_get(s, "conv_a", "me", NULL, &items), QV_OK);
    assert_int_equal(strlen(items), 901);
    qv_free(items);
    size_t n, bytes;
    qv_resp_store_stats(s, &n, &bytes);
    assert_true(bytes <= 3000);
    qv_resp_store_free(s);
}

/* A thread appending n "x" to conv_t, one edit each. */
typedef struct appender_arg {
    qv_resp_store *s;
    int n;
} appender_arg;

static void *appender(void *arg) {
    const appender_arg *a = arg;
    int mode = 0;
    for (int i = 0; i < a->n; i++)
        if (qv_resp_store_edit(a->s, "conv_t", "me", append_x, &mode) != QV_OK) return NULL;
    return NULL;
}

static void test_edit_threads(void **state) {
    (void)state;
    qv_resp_store *s = qv_resp_store_create(1 << 20);
    assert_true(qv_resp_store_put(s, "conv_t", "me", "{}", ""));
    pthread_t th[4];
    appender_arg a = {s, 500};
    for (int t = 0; t < 4; t++)
        assert_int_equal(pthread_create(&th[t], NULL, appender, &a), 0);
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    char *items = NULL;
    assert_int_equal(qv_resp_store_get(s, "conv_t", "me", NULL, &items), QV_OK);
    assert_int_equal(strlen(items), 2000); /* no edit lost between threads */
    qv_free(items);
    qv_resp_store_free(s);
}

static void *work(void *arg) {
    worker *w = arg;
    char id[32], owner[8];
    snprintf(owner, sizeof(owner), "t%d", w->t);
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof(id), "resp_%d_%d", w->t, i % 50);
        if (!qv_resp_store_put(w->s, id, owner, id, "[]")) return NULL;
        char *resp = NULL;
        if (qv_resp_store_get(w->s, id, owner, &resp, NULL) == QV_OK) {
            w->found += !strcmp(resp, id);
            qv_free(resp);
        }
        if (i % 9 == 0) qv_resp_store_delete(w->s, id, owner);
    }
    return NULL;
}

/* Four threads putting, reading and deleting at once (TSan runs this too). */
static void test_threads(void **state) {
    (void)state;
    qv_resp_store *s = qv_resp_store_create(1 << 16); /* small: evictions under contention */
    pthread_t th[4];
    worker w[4];
    for (int t = 0; t < 4; t++) {
        w[t] = (worker){.s = s, .t = t};
        assert_int_equal(pthread_create(&th[t], NULL, work, &w[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        assert_true(w[t].found > 0);
    }
    size_t n, bytes;
    qv_resp_store_stats(s, &n, &bytes);
    assert_true(bytes <= 1 << 16);
    qv_resp_store_free(s);
}

/* ---- a directory shared by two stores (two replicas) ---- */

static char *tmp_dir(void) {
    static char d[64];
    snprintf(d, sizeof(d), "/tmp/qv-resp-test-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void rm_dir(const char *d) {
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
    assert_int_equal(system(cmd), 0);
}

static bool file_exists(const char *d, const char *name) {
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", d, name);
    return access(p, F_OK) == 0;
}

/* Records written by one store are read by another on the same directory, survive a restart,
 * follow edits and deletes made elsewhere, and stay the owner's; ids that are no file name stay
 * in memory; a file that is not a record is nothing. */
static void test_dir_shared(void **state) {
    (void)state;
    const char *d = tmp_dir();
    qv_resp_store *a = qv_resp_store_create_dir(1 << 20, d),
                  *b = qv_resp_store_create_dir(1 << 20, d);
    assert_true(qv_resp_store_put(a, "resp_1", "me", "{\"id\":1}", "[1]"));
    assert_true(file_exists(d, "resp_1"));
    char *resp = NULL, *items = NULL;
    assert_int_equal(qv_resp_store_get(b, "resp_1", "me", &resp, &items), QV_OK);
    assert_string_equal(resp, "{\"id\":1}");
    assert_string_equal(items, "[1]");
    qv_free(resp), qv_free(items);
    assert_int_equal(qv_resp_store_get(b, "resp_1", "you", NULL, NULL), QV_ERR_NOT_FOUND);
    /* edits alternate between the two: each sees the other's */
    assert_true(qv_resp_store_put(a, "conv_c", "me", "{}", ""));
    int mode = 0;
    for (int i = 0; i < 10; i++)
        assert_int_equal(qv_resp_store_edit(i % 2 ? a : b, "conv_c", "me", append_x, &mode), QV_OK);
    assert_int_equal(qv_resp_store_get(a, "conv_c", "me", NULL, &items), QV_OK);
    assert_string_equal(items, "xxxxxxxxxx");
    qv_free(items);
    /* deleted through b: a forgets its copy */
    assert_false(qv_resp_store_delete(b, "resp_1", "you"));
    assert_true(qv_resp_store_delete(b, "resp_1", "me"));
    assert_false(file_exists(d, "resp_1"));
    assert_int_equal(qv_resp_store_get(a, "resp_1", "me", NULL, NULL), QV_ERR_NOT_FOUND);
    /* a restart reads the directory */
    qv_resp_store_free(a);
    qv_resp_store *c = qv_resp_store_create_dir(1 << 20, d);
    assert_int_equal(qv_resp_store_get(c, "conv_c", "me", NULL, &items), QV_OK);
    assert_int_equal(strlen(items), 10);
    qv_free(items);
    /* no file for an id that is not a plain name; such a name reaches no file */
    assert_true(qv_resp_store_put(c, "../qv-resp-escape", "me", "{}", ""));
    assert_int_equal(qv_resp_store_get(c, "../qv-resp-escape", "me", NULL, NULL), QV_OK);
    assert_int_equal(qv_resp_store_get(b, "../qv-resp-escape", "me", NULL, NULL), QV_ERR_NOT_FOUND);
    assert_false(file_exists(d, "../qv-resp-escape"));
    FILE *f = fopen("/tmp/qv-resp-test-junk", "w");
    assert_non_null(f);
    fputs("QVRESP1\nme\n2\n{}[]", f);
    fclose(f);
    assert_int_equal(qv_resp_store_get(c, "../qv-resp-test-junk", "me", NULL, NULL),
                     QV_ERR_NOT_FOUND);
    unlink("/tmp/qv-resp-test-junk");
    char p[256];
    snprintf(p, sizeof(p), "%s/resp_bad", d);
    assert_non_null(f = fopen(p, "w"));
    fputs("QVRESP1\nme\n999\n{}", f); /* a length past the end */
    fclose(f);
    assert_int_equal(qv_resp_store_get(c, "resp_bad", "me", NULL, NULL), QV_ERR_NOT_FOUND);
    qv_resp_store_free(b);
    qv_resp_store_free(c);
    rm_dir(d);
}

/* Two stores on one directory, two threads each, appending to one conversation: the
 * directory's lock loses no edit. */
static void test_dir_edit_threads(void **state) {
    (void)state;
    const char *d = tmp_dir();
    qv_resp_store *s[2] = {qv_resp_store_create_dir(1 << 20, d),
                           qv_resp_store_create_dir(1 << 20, d)};
    assert_true(qv_resp_store_put(s[0], "conv_t", "me", "{}", ""));
    pthread_t th[4];
    appender_arg a[2] = {{s[0], 100}, {s[1], 100}};
    for (int t = 0; t < 4; t++)
        assert_int_equal(pthread_create(&th[t], NULL, appender, &a[t % 2]), 0);
    for (int t = 0; t < 4; t++)
        pthread_join(th[t], NULL);
    for (int i = 0; i < 2; i++) {
        char *items = NULL;
        assert_int_equal(qv_resp_store_get(s[i], "conv_t", "me", NULL, &items), QV_OK);
        assert_int_equal(strlen(items), 400);
        qv_free(items);
        qv_resp_store_free(s[i]);
    }
    rm_dir(d);
}

/* The sweep keeps the newest files within the byte limit and removes a dead writer's
 * temporary file; a swept record is gone for every store. */
static void test_dir_sweep(void **state) {
    (void)state;
    const char *d = tmp_dir();
    qv_resp_store *s = qv_resp_store_create_dir(1 << 20, d);
    char big[1001], id[32], p[256];
    memset(big, 'b', 1000);
    big[1000] = '\0';
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "resp_%d", i);
        assert_true(qv_resp_store_put(s, id, "me", "{}", big));
        snprintf(p, sizeof(p), "%s/%s", d, id);
        const struct timespec t[2] = {{.tv_sec = 1000000 + i}, {.tv_sec = 1000000 + i}};
        assert_int_equal(utimensat(AT_FDCWD, p, t, 0), 0); /* resp_0 the oldest */
    }
    snprintf(p, sizeof(p), "%s/.tmp-resp_x-1-0", d);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fclose(f);
    const struct timespec old[2] = {{.tv_sec = 1000}, {.tv_sec = 1000}};
    assert_int_equal(utimensat(AT_FDCWD, p, old, 0), 0);
    assert_int_equal(qv_resp_store_sweep(s, 1 << 20), 1); /* within the limit: the temporary */
    assert_false(file_exists(d, ".tmp-resp_x-1-0"));
    assert_int_equal(qv_resp_store_sweep(s, 4 * 1030), 6);
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "resp_%d", i);
        assert_int_equal(file_exists(d, id), i >= 6);
        assert_int_equal(qv_resp_store_get(s, id, "me", NULL, NULL),
                         i >= 6 ? QV_OK : QV_ERR_NOT_FOUND);
    }
    qv_resp_store_free(s);
    rm_dir(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_delete), cmocka_unit_test(test_eviction),
        cmocka_unit_test(test_alloc_failures), cmocka_unit_test(test_threads),
        cmocka_unit_test(test_edit),           cmocka_unit_test(test_edit_threads),
        cmocka_unit_test(test_dir_shared),     cmocka_unit_test(test_dir_edit_threads),
        cmocka_unit_test(test_dir_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
