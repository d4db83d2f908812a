/*
 * test_store.c - the durable adapter store: SHA-256 against hashlib vectors
 * (tests/oracle/gen_store_vectors.py), publish/resolve/alias/delete/gc, rejection of bad
 * input, crash safety at every crash point (forked children killed mid-publish), and two
 * processes publishing one name concurrently.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "adapters/store.h"
#include "test_util.h"

/* ---- helpers ---- */

static void rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        assert_non_null(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char sub[4096];
            snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static char *make_root(void) {
    char *t = strdup("/tmp/qv-store-test-XXXXXX");
    assert_non_null(mkdtemp(t));
    return t;
}

static size_t count_entries(const char *root, const char *sub) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", root, sub);
    DIR *d = opendir(p);
    assert_non_null(d);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

static uint8_t *pattern(size_t n) {
    uint8_t *b = malloc(n ? n : 1);
    assert_non_null(b);
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)((7 * i + 3) % 256);
    return b;
}

static qv_store_options test_opts(void) {
    qv_store_options o = qv_store_default_options();
    return o;
}

/* Publishes config text (+ optional weights) as `name`; returns the status. */
static qv_status publish(qv_store_t *s, const char *name, const char *config, const void *w,
                         size_t w_len, char version[65], qv_error *err) {
    qv_store_txn_t *t = NULL;
    qv_status st = qv_store_begin(s, &t, err);
    if (st != QV_OK) return st;
    if ((st = qv_store_txn_write(t, "adapter_config.json", config, strlen(config), err)) != QV_OK) {
        qv_store_abort(t);
        return st;
    }
    if (w && (st = qv_store_txn_write(t, "adapter_model.safetensors", w, w_len, err)) != QV_OK) {
        qv_store_abort(t);
        return st;
    }
    return qv_store_commit(t, name, version, err);
}

/* ---- SHA-256 ---- */

static void test_sha256_vectors(void **state) {
    (void)state;
    FILE *f = fopen(qv_test_path("tests/fixtures/store/sha256_vectors.txt"), "r");
    assert_non_null(f);
    char line[512];
    int n_checked = 0;
    while (fgets(line, sizeof line, f)) {
        char kind[16], want[65], got[65];
        size_t n;
        unsigned byte;
        uint8_t *msg = NULL;
        if (sscanf(line, "msg %zu %64s", &n, want) == 2) {
            msg = pattern(n);
        } else if (sscanf(line, "rep %zu %u %64s", &n, &byte, want) == 3) {
            msg = malloc(n);
            memset(msg, (int)byte, n);
        } else {
            assert_int_equal(sscanf(line, "%15s", kind), 1);
            assert_string_equal(kind, "dir"); /* checked in test_publish_resolve */
            continue;
        }
        qv_sha256_hex(msg, n, got);
        if (strcmp(got, want)) fprintf(stderr, "sha256 of %zu bytes: %s != %s\n", n, got, want);
        assert_string_equal(got, want);
        /* The same digest fed in uneven pieces (crosses the 64-byte block edges). */
        qv_sha256 s;
        uint8_t d[32];
        qv_sha256_init(&s);
        size_t off = 0, step = 1;
        while (off < n) {
            size_t take = QV_MIN(step, n - off);
            qv_sha256_update(&s, msg + off, take);
            off += take;
            step = step * 3 + 1;
            if (step > 70000) step = 5;
        }
        qv_sha256_final(&s, d);
        char hex[65];
        for (int i = 0; i < 32; i++)
            snprintf(hex + 2 * i, 3, "%02x", d[i]);
        assert_string_equal(hex, want);
        free(msg);
        n_checked++;
    }
    fclose(f);
    assert_true(n_checked >= 130);
}

/* ---- names ---- */

static void test_name_validation(void **state) {
    (void)state;
    assert_true(qv_store_name_valid("a"));
    assert_true(qv_store_name_valid("Llama-3.1_sql-v2"));
    assert_true(qv_store_name_valid("0"));
    char longest[129];
    memset(longest, 'x', 128);
    longest[128] = '\0';
    assert_true(qv_store_name_valid(longest));
    char too_long[130];
    memset(too_long, 'x', 129);
    too_long[129] = '\0';
    assert_false(qv_store_name_valid(too_long));
    const char *bad[] = {"",    ".",    "..", ".hidden", "-x",     "_x",  "a/b", "a..b",
                         "a b", "a\\b", "é",  "a\nb",    "../etc", "a:b", "tmp/"};
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        if (qv_store_name_valid(bad[i])) fprintf(stderr, "accepted '%s'\n", bad[i]);
        assert_false(qv_store_name_valid(bad[i]));
    }
    assert_false(qv_store_name_valid(NULL));
    assert_true(
        qv_store_version_valid("0605070f03f2ef26d93e911eddf41ea87ec501b16616b8d143328ed88b4236b2"));
    assert_false(
        qv_store_version_valid("0605070F03f2ef26d93e911eddf41ea87ec501b16616b8d143328ed88b4236b2"));
    assert_false(qv_store_version_valid("0605"));
    assert_true(qv_store_filename_valid("adapter_config.json"));
    assert_true(qv_store_filename_valid("adapter_model.safetensors"));
    assert_true(qv_store_filename_valid("adapter.safetensors"));
    assert_false(qv_store_filename_valid("adapter_model.bin")); /* pickle: never */
    assert_false(qv_store_filename_valid("../adapter_config.json"));
    assert_false(qv_store_filename_valid("x/adapter_config.json"));
}

/* ---- publish, resolve, list, aliases, delete, gc ---- */

static const char *dir_golden(const char *which) {
    static char want[65];
    FILE *f = fopen(qv_test_path("tests/fixtures/store/sha256_vectors.txt"), "r");
    assert_non_null(f);
    char line[512], c[64];
    want[0] = '\0';
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "dir %63s %64s", c, want) == 2 && !strcmp(c, which)) break;
    fclose(f);
    assert_int_equal(strlen(want), 64);
    return want;
}

static void test_publish_resolve(void **state) {
    (void)state;
    char *root = make_root();
    qv_store_t *s = NULL;
    qv_error err = {0};
    qv_store_options o = test_opts();
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    const char *cfg = "{\"peft_type\": \"LORA\", \"r\": 8}\n";
    uint8_t *w = pattern(100000);
    char v1[65], v0[65], got[65];

    /* The version id is the oracle's directory hash; weights written in two appends. */
    qv_store_txn_t *t = NULL;
    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_model.safetensors", w, 4097, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", cfg, strlen(cfg), &err), QV_OK);
    assert_int_equal(
        qv_store_txn_write(t, "adapter_model.safetensors", w + 4097, 100000 - 4097, &err), QV_OK);
    assert_int_equal(qv_store_commit(t, "sql", v1, &err), QV_OK);
    assert_string_equal(v1, dir_golden("lora"));

    assert_int_equal(publish(s, "cfg", cfg, NULL, 0, v0, &err), QV_OK);
    assert_string_equal(v0, dir_golden("config_only"));

    /* "both": three files, written in unsorted order. */
    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_model.safetensors", w, 3, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter.safetensors", "", 0, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", "{}", 2, &err), QV_OK);
    assert_int_equal(qv_store_commit(t, "both", got, &err), QV_OK);
    assert_string_equal(got, dir_golden("both"));

    char *path = NULL;
    assert_int_equal(qv_store_resolve(s, "sql", got, &path, &err), QV_OK);
    assert_string_equal(got, v1);
    char want_path[4096];
    snprintf(want_path, sizeof want_path, "%s/objects/%s", root, v1);
    assert_string_equal(path, want_path);
    qv_free(path);
    assert_int_equal(qv_store_resolve(s, v1, got, NULL, &err), QV_OK); /* by version */
    assert_string_equal(got, v1);
    assert_int_equal(qv_store_verify(s, v1, &err), QV_OK);
    assert_int_equal(qv_store_resolve(s, "nope", got, NULL, &err), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_store_resolve(s, "../x", got, NULL, &err), QV_ERR_INVALID);

    /* Same content under another name: one object. */
    assert_int_equal(publish(s, "sql-copy", cfg, w, 100000, got, &err), QV_OK);
    assert_string_equal(got, v1);
    assert_int_equal(count_entries(root, "objects"), 3);
    assert_int_equal(count_entries(root, "tmp"), 0);

    /* Replace "sql": the old version stays resolvable by id (a running holder may use it). */
    char v2[65];
    assert_int_equal(publish(s, "sql", "{\"r\": 4}", w, 10, v2, &err), QV_OK);
    assert_string_not_equal(v1, v2);
    assert_int_equal(qv_store_resolve(s, "sql", got, NULL, &err), QV_OK);
    assert_string_equal(got, v2);
    assert_int_equal(qv_store_resolve(s, v1, got, NULL, &err), QV_OK);

    /* Aliases: to a name (follows it), to a version (pinned). */
    assert_int_equal(qv_store_alias_set(s, "prod", "sql", &err), QV_OK);
    assert_int_equal(qv_store_alias_set(s, "old", v1, &err), QV_OK);
    assert_int_equal(qv_store_resolve(s, "prod", got, NULL, &err), QV_OK);
    assert_string_equal(got, v2);
    assert_int_equal(qv_store_resolve(s, "old", got, NULL, &err), QV_OK);
    assert_string_equal(got, v1);
    assert_int_equal(qv_store_alias_set(s, "sql", "cfg", &err), QV_ERR_INVALID); /* shadow */
    assert_int_equal(qv_store_alias_set(s, "x", "missing", &err), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_store_alias_set(s, "x", "prod", &err), QV_ERR_NOT_FOUND); /* no chain */
    assert_int_equal(qv_store_alias_set(s, "x/y", "sql", &err), QV_ERR_INVALID);

    qv_store_entry *ents = NULL;
    size_t n = 0;
    assert_int_equal(qv_store_list(s, &ents, &n, &err), QV_OK);
    assert_int_equal(n, 6);
    const char *want_names[] = {"both", "cfg", "sql", "sql-copy", "old", "prod"};
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(ents[i].name, want_names[i]);
        assert_int_equal(ents[i].is_alias, i >= 4);
    }
    assert_string_equal(ents[2].version, v2);
    assert_string_equal(ents[4].version, v1);
    assert_string_equal(ents[5].target, "sql");
    qv_free(ents);

    /* gc: v1 is referenced by "sql-copy" and "old"; once both go, only a zero grace removes
     * it. */
    size_t removed = 9;
    assert_int_equal(qv_store_delete(s, "sql-copy", &err), QV_OK);
    assert_int_equal(qv_store_delete(s, "sql-copy", &err), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_store_resolve(s, "sql-copy", got, NULL, &err), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_store_gc(s, &removed, &err), QV_OK);
    assert_int_equal(removed, 0);
    assert_int_equal(qv_store_alias_delete(s, "old", &err), QV_OK);
    assert_int_equal(qv_store_gc(s, &removed, &err), QV_OK);
    assert_int_equal(removed, 0); /* unreferenced but inside the grace period */
    qv_store_close(s);
    o.gc_grace_s = 0.0;
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    assert_int_equal(qv_store_gc(s, &removed, &err), QV_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(qv_store_resolve(s, v1, got, NULL, &err), QV_ERR_NOT_FOUND);
    assert_int_equal(qv_store_resolve(s, "sql", got, NULL, &err), QV_OK);
    assert_int_equal(qv_store_resolve(s, "prod", got, NULL, &err), QV_OK);
    assert_int_equal(qv_store_verify(s, v2, &err), QV_OK);
    assert_int_equal(count_entries(root, "objects"), 3);

    qv_store_close(s);
    free(w);
    rm_rf(root);
    free(root);
}

static qv_status reject_all(const char *dir, void *user, qv_error *err) {
    int *calls = user;
    (*calls)++;
    char p[4096];
    snprintf(p, sizeof p, "%s/adapter_config.json", dir);
    assert_true(qv_test_exists(p)); /* the validator sees the complete directory */
    return qv_errorf(err, QV_ERR_INVALID, "rank 999 exceeds the limit");
}

static void test_rejections(void **state) {
    (void)state;
    char *root = make_root();
    qv_store_t *s = NULL;
    qv_error err = {0};
    qv_store_options o = test_opts();
    o.max_upload_bytes = 1000;
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    char v[65];
    qv_store_txn_t *t = NULL;

    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_model.bin", "x", 1, &err), QV_ERR_INVALID);
    assert_int_equal(qv_store_txn_write(t, "../names/evil", "x", 1, &err), QV_ERR_INVALID);
    assert_int_equal(qv_store_txn_write(t, "adapter_model.safetensors", "x", 1, &err), QV_OK);
    /* no adapter_config.json */
    assert_int_equal(qv_store_commit(t, "a", v, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "adapter_config.json"));

    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", "{}", 2, &err), QV_OK);
    assert_int_equal(qv_store_commit(t, "../a", v, &err), QV_ERR_INVALID);
    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", "{}", 2, &err), QV_OK);
    assert_int_equal(qv_store_commit(t, "", v, &err), QV_ERR_INVALID);

    /* Upload limit. */
    char big[1001];
    memset(big, 'x', sizeof big);
    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", big, 600, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter.safetensors", big, 401, &err), QV_ERR_LIMIT);
    qv_store_abort(t);

    /* Validator. */
    int calls = 0;
    qv_store_set_validator(s, reject_all, &calls);
    assert_int_equal(publish(s, "a", "{}", NULL, 0, v, &err), QV_ERR_INVALID);
    assert_int_equal(calls, 1);
    assert_non_null(strstr(err.msg, "rank 999"));
    qv_store_set_validator(s, NULL, NULL);

    /* Nothing became visible and no garbage is left. */
    assert_int_equal(count_entries(root, "objects"), 0);
    assert_int_equal(count_entries(root, "names"), 0);
    assert_int_equal(count_entries(root, "tmp"), 0);

    /* A stranger file inside an object directory fails verification by hashing. */
    assert_int_equal(publish(s, "a", "{}", NULL, 0, v, &err), QV_OK);
    char p[4096];
    snprintf(p, sizeof p, "%s/objects/%s/adapter_config.json", root, v);
    chmod(p, 0644);
    FILE *f = fopen(p, "a");
    assert_non_null(f);
    fputs(" ", f);
    fclose(f);
    assert_int_equal(qv_store_verify(s, v, &err), QV_ERR_IO);

    /* A corrupt name file is an error, not a crash or a path. */
    snprintf(p, sizeof p, "%s/names/b", root);
    f = fopen(p, "w");
    fputs("../../etc/passwd\n", f);
    fclose(f);
    assert_int_equal(qv_store_resolve(s, "b", v, NULL, &err), QV_ERR_IO);

    qv_store_close(s);
    rm_rf(root);
    free(root);
}

static void test_open_cleans_tmp(void **state) {
    (void)state;
    char *root = make_root();
    qv_store_t *s = NULL;
    qv_error err = {0};
    qv_store_options o = test_opts();
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    qv_store_txn_t *t = NULL;
    assert_int_equal(qv_store_begin(s, &t, &err), QV_OK);
    assert_int_equal(qv_store_txn_write(t, "adapter_config.json", "{}", 2, &err), QV_OK);
    char v[65];
    assert_int_equal(publish(s, "keep", "{}", "w", 1, v, &err), QV_OK);
    /* t is abandoned as a crashed writer would leave it. */
    assert_int_equal(count_entries(root, "tmp"), 1);
    qv_store_t *s2 = NULL;
    assert_int_equal(qv_store_open(root, &o, &s2, &err), QV_OK); /* young: kept */
    assert_int_equal(count_entries(root, "tmp"), 1);
    qv_store_close(s2);
    o.tmp_max_age_s = 0.0;
    assert_int_equal(qv_store_open(root, &o, &s2, &err), QV_OK);
    assert_int_equal(count_entries(root, "tmp"), 0);
    assert_int_equal(qv_store_resolve(s2, "keep", v, NULL, &err), QV_OK);
    assert_int_equal(qv_store_verify(s2, v, &err), QV_OK);
    qv_store_close(s2);
    qv_store_abort(t); /* its directory is already gone: must not fail */
    qv_store_close(s);
    rm_rf(root);
    free(root);
}

/* ---- crash safety ---- */

/* Every object under objects/ hashes to its name; tmp/ is empty after a cleaning open. */
static void check_store_consistent(const char *root) {
    qv_store_t *s = NULL;
    qv_error err = {0};
    qv_store_options o = test_opts();
    o.tmp_max_age_s = 0.0;
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    assert_int_equal(count_entries(root, "tmp"), 0);
    char p[4096];
    snprintf(p, sizeof p, "%s/objects", root);
    DIR *d = opendir(p);
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        assert_true(qv_store_version_valid(de->d_name));
        if (qv_store_verify(s, de->d_name, &err) != QV_OK) fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(qv_store_verify(s, de->d_name, &err), QV_OK);
    }
    closedir(d);
    qv_store_close(s);
}

static void test_crash_every_step(void **state) {
    (void)state;
    char *root = make_root();
    qv_store_t *s = NULL;
    qv_error err = {0};
    qv_store_options o = test_opts();
    o.gc_grace_s = 0.0;
    uint8_t *w2 = pattern(200000);
    char v1[65], v2[65], got[65];
    assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
    assert_int_equal(publish(s, "a", "{\"v\": 1}", "w1", 2, v1, &err), QV_OK);
    assert_int_equal(qv_store_alias_set(s, "prod", v1, &err), QV_OK);
    /* v2's id, computed in a scratch store so the real one never sees it. */
    {
        char *r2 = make_root();
        qv_store_t *s2 = NULL;
        assert_int_equal(qv_store_open(r2, &o, &s2, &err), QV_OK);
        assert_int_equal(publish(s2, "a", "{\"v\": 2}", w2, 200000, v2, &err), QV_OK);
        qv_store_close(s2);
        rm_rf(r2);
        free(r2);
    }
    qv_store_close(s);

    int k, n_old = 0, n_new = 0;
    bool seen_new = false;
    for (k = 1; k < 100; k++) {
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            qv_store_t *cs = NULL;
            qv_error cerr;
            if (qv_store_open(root, &o, &cs, &cerr) != QV_OK) _exit(2);
            qv_store_set_crash_point(k);
            char cv[65];
            if (publish(cs, "a", "{\"v\": 2}", w2, 200000, cv, &cerr) != QV_OK) _exit(3);
            if (strcmp(cv, v2)) _exit(4);
            if (qv_store_alias_set(cs, "prod", cv, &cerr) != QV_OK) _exit(5);
            _exit(0);
        }
        int status = 0;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        int code = WEXITSTATUS(status);
        if (code != 0 && code != QV_STORE_CRASH_EXIT) fprintf(stderr, "child exit %d\n", code);
        assert_true(code == 0 || code == QV_STORE_CRASH_EXIT);

        check_store_consistent(root);
        assert_int_equal(qv_store_open(root, &o, &s, &err), QV_OK);
        assert_int_equal(qv_store_resolve(s, "a", got, NULL, &err), QV_OK);
        bool is_new = !strcmp(got, v2);
        assert_true(is_new || !strcmp(got, v1));
        /* Crash points are ordered: once the name rename happened, later ones keep it. */
        if (seen_new) assert_true(is_new);
        seen_new = is_new;
        is_new ? n_new++ : n_old++;
        /* The alias moves after the name: old name implies old alias. */
        assert_int_equal(qv_store_resolve(s, "prod", got, NULL, &err), QV_OK);
        assert_true(!strcmp(got, v1) || (is_new && !strcmp(got, v2)));
        if (code == 0) assert_string_equal(got, v2);
        assert_int_equal(qv_store_alias_set(s, "prod", v1, &err), QV_OK);
        assert_int_equal(count_entries(root, "names"), 1);
        /* Back to the starting state for the next k. */
        assert_int_equal(publish(s, "a", "{\"v\": 1}", "w1", 2, got, &err), QV_OK);
        size_t removed;
        assert_int_equal(qv_store_gc(s, &removed, &err), QV_OK);
        assert_int_equal(count_entries(root, "objects"), 1);
        qv_store_close(s);
        if (code == 0) break;
    }
    fprintf(stderr, "crash test: %d crash points, old visible after %d, new after %d\n", k - 1,
            n_old, n_new);
    /* begin, 2 writes, hash, dir fsync, rename, fsync, 5 for the name, 5 for the alias */
    assert_true(k - 1 >= 17);
    assert_true(n_old >= 8);
    assert_true(n_new >= 2);
    free(w2);
    rm_rf(root);
    free(root);
}

/* ---- two processes publishing concurrently ---- */

enum { N_ROUNDS = 25 };

static void publisher(const char *root, int id, int out_fd) {
    qv_store_t *s = NULL;
    qv_error err;
    if (qv_store_open(root, NULL, &s, &err) != QV_OK) _exit(2);
    uint8_t *w = pattern(50000);
    char cfg[64], v[65];
    for (int i = 0; i < N_ROUNDS; i++) {
        snprintf(cfg, sizeof cfg, "{\"writer\": %d, \"round\": %d}", id, i);
        w[0] = (uint8_t)i;
        if (publish(s, "shared", cfg, w, 50000, v, &err) != QV_OK) _exit(3);
        /* Identical content from both writers: one object, both succeed. */
        if (publish(s, id ? "common-b" : "common-a", "{\"same\": 1}", w + 1, 40000, v, &err) !=
            QV_OK)
            _exit(4);
        if (write(out_fd, v, 64) != 64) _exit(5);
        if (qv_store_resolve(s, "shared", v, NULL, &err) != QV_OK) _exit(6);
    }
    qv_store_close(s);
    free(w);
    _exit(0);
}

static void test_concurrent_publishers(void **state) {
    (void)state;
    char *root = make_root();
    qv_store_t *s = NULL;
    qv_error err = {0};
    assert_int_equal(qv_store_open(root, NULL, &s, &err), QV_OK);
    int fds[2][2];
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pipe(fds[i]), 0);
        fflush(NULL);
        pids[i] = fork();
        assert_true(pids[i] >= 0);
        if (pids[i] == 0) {
            close(fds[i][0]);
            publisher(root, i, fds[i][1]);
        }
        close(fds[i][1]);
    }
    char common[2][65] = {{0}};
    for (int i = 0; i < 2; i++) {
        int status = 0;
        assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        char buf[64 * N_ROUNDS];
        size_t got = 0;
        ssize_t r;
        while ((r = read(fds[i][0], buf + got, sizeof buf - got)) > 0)
            got += (size_t)r;
        close(fds[i][0]);
        assert_int_equal(got, sizeof buf);
        memcpy(common[i], buf, 64);
    }
    assert_string_equal(common[0], common[1]);

    /* The final "shared" is the last round of one of the writers, complete. */
    char v[65], last[2][65];
    uint8_t *w = pattern(50000);
    w[0] = (uint8_t)(N_ROUNDS - 1);
    for (int i = 0; i < 2; i++) {
        char *r2 = make_root();
        qv_store_t *s2 = NULL;
        char cfg[64];
        snprintf(cfg, sizeof cfg, "{\"writer\": %d, \"round\": %d}", i, N_ROUNDS - 1);
        assert_int_equal(qv_store_open(r2, NULL, &s2, &err), QV_OK);
        assert_int_equal(publish(s2, "x", cfg, w, 50000, last[i], &err), QV_OK);
        qv_store_close(s2);
        rm_rf(r2);
        free(r2);
    }
    assert_int_equal(qv_store_resolve(s, "shared", v, NULL, &err), QV_OK);
    assert_true(!strcmp(v, last[0]) || !strcmp(v, last[1]));
    /* 2 writers x N_ROUNDS distinct objects + 1 shared one, all complete, no garbage. */
    assert_int_equal(count_entries(root, "objects"), 2 * N_ROUNDS + 1);
    assert_int_equal(count_entries(root, "tmp"), 0);
    qv_store_close(s);
    check_store_consistent(root);
    free(w);
    rm_rf(root);
    free(root);
}

/* Every allocation of open/publish/resolve/list/gc failing in turn: a clean error, no leak
 * (ASan), and the store stays consistent with the name either absent or complete. */
static void test_alloc_failures(void **state) {
    (void)state;
    char *root = make_root();
    int n_fail = 0, n_ok = 0;
    for (long k = 0; k < 400; k++) {
        qv_store_t *s = NULL;
        qv_error err = {0};
        char v[65];
        qv_alloc_fail_after(k);
        qv_status st = qv_store_open(root, NULL, &s, &err);
        if (st == QV_OK) st = publish(s, "a", "{\"k\": 1}", "w", 1, v, &err);
        if (st == QV_OK) st = qv_store_resolve(s, "a", v, NULL, &err);
        qv_store_entry *ents = NULL;
        size_t n = 0;
        if (st == QV_OK) st = qv_store_list(s, &ents, &n, &err);
        qv_free(ents);
        if (st == QV_OK) st = qv_store_alias_set(s, "b", "a", &err);
        if (st == QV_OK) st = qv_store_gc(s, NULL, &err);
        qv_alloc_fail_after(-1);
        if (st != QV_OK && st != QV_ERR_NOMEM) fprintf(stderr, "k=%ld: %s\n", k, err.msg);
        assert_true(st == QV_OK || st == QV_ERR_NOMEM);
        st == QV_OK ? n_ok++ : n_fail++;
        qv_store_close(s);
        check_store_consistent(root);
        if (st == QV_OK) break;
    }
    assert_int_equal(n_ok, 1);
    assert_true(n_fail >= 10);
    rm_rf(root);
    free(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_vectors),        cmocka_unit_test(test_name_validation),
        cmocka_unit_test(test_publish_resolve),       cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_open_cleans_tmp),       cmocka_unit_test(test_crash_every_step),
        cmocka_unit_test(test_concurrent_publishers), cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
