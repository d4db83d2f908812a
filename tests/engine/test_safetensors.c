/*
 * test_safetensors.c - the safetensors reader (engine/safetensors.c) against files written by
 * the Python `safetensors` package (tests/oracle/gen_formats_fixtures.py), every validation
 * rule of FORMATS.md 1.3 on crafted headers, sharded index checks, and an allocation-failure
 * sweep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/safetensors.h"
#include "fmt_test_helpers.h"
#include "test_util.h"

/* Values of a tensor as F32 (fixture tensors are F32/F16/BF16). */
static float *tensor_f32(const qv_st_tensor *t) {
    float *v = malloc((size_t)(t->n_elems ? t->n_elems : 1) * sizeof(float));
    qv_dequantize_row(t->dtype, t->data, v, t->n_elems);
    return v;
}

static void test_roundtrip(void **state) {
    (void)state;
    cJSON *exp = load_json_fixture(qv_test_path("tests/fixtures/formats/roundtrip.st.json"));
    qv_st_file *f = NULL;
    qv_error err = {0};
    qv_status st =
        qv_st_open(qv_test_path("tests/fixtures/formats/roundtrip.safetensors"), &f, &err);
    if (st != QV_OK) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, QV_OK);
    const cJSON *tensors = cJSON_GetObjectItem(exp, "tensors");
    assert_int_equal(qv_st_n_tensors(f), cJSON_GetArraySize(tensors));
    for (const cJSON *e = tensors->child; e; e = e->next) {
        const qv_st_tensor *t = qv_st_find(f, e->string);
        assert_non_null(t);
        assert_string_equal(t->name, e->string);
        assert_string_equal(qv_dtype_name(t->dtype), cJSON_GetObjectItem(e, "dtype")->valuestring);
        const cJSON *shape = cJSON_GetObjectItem(e, "shape");
        assert_int_equal(t->n_dims, cJSON_GetArraySize(shape));
        int k = 0;
        for (const cJSON *d = shape->child; d; d = d->next, k++) {
            assert_int_equal(t->shape[k], (int64_t)d->valuedouble);
        }
        size_t n;
        float *want = json_floats(cJSON_GetObjectItem(e, "values"), &n);
        assert_int_equal((size_t)t->n_elems, n);
        float *got = tensor_f32(t);
        assert_int_equal(qv_test_compare_f32(e->string, got, want, n, 0.0, 0.0), 0);
        free(got);
        free(want);
    }
    assert_null(qv_st_find(f, "nope"));
    assert_string_equal(qv_st_metadata(f, "format"), "pt");
    assert_string_equal(qv_st_metadata(f, "note"), "quiver fixture");
    assert_null(qv_st_metadata(f, "missing"));
    /* tensor_at iterates in name order */
    for (size_t i = 1; i < qv_st_n_tensors(f); i++) {
        assert_true(strcmp(qv_st_tensor_at(f, i - 1)->name, qv_st_tensor_at(f, i)->name) < 0);
    }
    qv_st_close(f);
    cJSON_Delete(exp);
}

/* Opens a crafted buffer and checks the status and a word of the message. */
static void expect_buf(const char *header, size_t data_len, qv_status want, const char *word) {
    tbuf b = {0};
    st_build(&b, header, data_len);
    qv_st_file *f = NULL;
    qv_error err = {0};
    qv_status st = qv_st_open_buffer(b.p, b.n, &f, &err);
    if (st != want || (word && !strstr(err.msg, word))) {
        fprintf(stderr, "header %s: got status %d msg '%s', want %d with '%s'\n", header, st,
                err.msg, want, word ? word : "");
    }
    assert_int_equal(st, want);
    if (word) assert_non_null(strstr(err.msg, word));
    if (st == QV_OK) {
        assert_non_null(f);
    } else {
        assert_null(f);
        assert_null(strchr(err.msg, '\n'));
    }
    qv_st_close(f);
    tb_free(&b);
}

static void test_valid_crafted(void **state) {
    (void)state;
    expect_buf("{}", 0, QV_OK, NULL);
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, QV_OK, NULL);
    /* leading and trailing JSON whitespace (writers pad) */
    expect_buf("  \n{\"a\":{\"dtype\":\"F16\",\"shape\":[1,2],\"data_offsets\":[0,4]}}    ", 4,
               QV_OK, NULL);
    /* name order differs from offset order; unknown extra fields ignored */
    expect_buf("{\"z\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[4,8],\"x\":1}}",
               8, QV_OK, NULL);
    /* scalar and empty tensors */
    expect_buf("{\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[0,4]},"
               "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]}}",
               4, QV_OK, NULL);
    expect_buf("{\"__metadata__\":{\"format\":\"pt\"}}", 0, QV_OK, NULL);
}

static void test_bad_headers(void **state) {
    (void)state;
    /* file shorter than the length prefix */
    {
        uint8_t tiny[5] = {1, 0, 0, 0, 0};
        qv_st_file *f = NULL;
        qv_error err = {0};
        assert_int_equal(qv_st_open_buffer(tiny, sizeof(tiny), &f, &err), QV_ERR_INVALID);
        assert_non_null(strstr(err.msg, "too small"));
    }
    /* huge header length, and a header length past the end of the file */
    {
        tbuf b = {0};
        tb_u64(&b, 100000001);
        tb_put(&b, "{}", 2);
        qv_st_file *f = NULL;
        qv_error err = {0};
        assert_int_equal(qv_st_open_buffer(b.p, b.n, &f, &err), QV_ERR_LIMIT);
        b.n = 0;
        tb_u64(&b, 50);
        tb_put(&b, "{}", 2);
        assert_int_equal(qv_st_open_buffer(b.p, b.n, &f, &err), QV_ERR_INVALID);
        assert_non_null(strstr(err.msg, "past the end"));
        b.n = 0;
        tb_u64(&b, UINT64_MAX); /* 8 + N would overflow */
        assert_int_equal(qv_st_open_buffer(b.p, b.n, &f, &err), QV_ERR_LIMIT);
        tb_free(&b);
    }
    expect_buf("{\"a\xff\":{}}", 0, QV_ERR_INVALID, "UTF-8");
    expect_buf("{\"a\xc0\x80\":{}}", 0, QV_ERR_INVALID, "UTF-8");     /* overlong NUL */
    expect_buf("{\"a\xed\xa0\x80\":{}}", 0, QV_ERR_INVALID, "UTF-8"); /* surrogate */
    expect_buf("{\"a\":", 0, QV_ERR_INVALID, "JSON");
    expect_buf("[]", 0, QV_ERR_INVALID, "JSON object");
    expect_buf("{} x", 0, QV_ERR_INVALID, "trailing");
    expect_buf("{\"a\":1}", 0, QV_ERR_INVALID, "not an object");
    expect_buf("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, QV_ERR_INVALID, "dtype");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, QV_ERR_INVALID, "shape");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4,
               QV_ERR_INVALID, "data_offsets");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
               QV_ERR_INVALID, "shape[0]");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
               QV_ERR_INVALID, "shape[0]");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.5]}}", 4,
               QV_ERR_INVALID, "data_offsets");
    expect_buf("{\"a\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
               QV_ERR_INVALID, "unknown dtype 'F17'");
    /* known dtypes quiver does not read: refused by name */
    expect_buf("{\"a\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               QV_ERR_UNSUPPORTED, "dtype I64");
    expect_buf("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2,
               QV_ERR_UNSUPPORTED, "F8_E4M3");
    /* gap, overlap, size mismatch, out of bounds, not fully indexed */
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8,
               QV_ERR_INVALID, "gap or overlap");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
               "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
               12, QV_ERR_INVALID, "gap or overlap");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
               QV_ERR_INVALID, "need 4");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8,
               QV_ERR_INVALID, "past the");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 12,
               QV_ERR_INVALID, "fully indexed");
    expect_buf("{}", 3, QV_ERR_INVALID, "fully indexed");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 2,
               QV_ERR_INVALID, "past the");
    /* sub-byte dtype with an odd bit count */
    expect_buf("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, QV_ERR_INVALID,
               "whole bytes");
    /* element-count overflow */
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],"
               "\"data_offsets\":[0,4]}}",
               4, QV_ERR_INVALID, "overflows");
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
               4, QV_ERR_UNSUPPORTED, "dimensions");
    /* duplicate names */
    expect_buf("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
               "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
               8, QV_ERR_INVALID, "duplicate");
    expect_buf("{\"__metadata__\":{\"a\":1}}", 0, QV_ERR_INVALID, "__metadata__");
    expect_buf("{\"__metadata__\":{},\"__metadata__\":{}}", 0, QV_ERR_INVALID, "duplicate");
}

static void test_file_errors_name_file(void **state) {
    (void)state;
    char *d = tmp_dir();
    char path[512];
    snprintf(path, sizeof(path), "%s/bad.safetensors", d);
    tbuf b = {0};
    st_build(&b, "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    write_file(path, b.p, b.n - 1); /* truncated */
    qv_st_file *f = NULL;
    qv_error err = {0};
    assert_int_equal(qv_st_open(path, &f, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, path));
    assert_null(f);
    snprintf(path, sizeof(path), "%s/none.safetensors", d);
    assert_int_equal(qv_st_open(path, &f, &err), QV_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, path));
    /* an empty file is too small, not a crash */
    snprintf(path, sizeof(path), "%s/empty.safetensors", d);
    write_file(path, "", 0);
    assert_int_equal(qv_st_open(path, &f, &err), QV_ERR_INVALID);
    tb_free(&b);
    rm_tree(d);
    free(d);
}

static void test_sharded(void **state) {
    (void)state;
    const char *dir = qv_test_path("tests/fixtures/formats/llama_bias");
    qv_st_set *s = NULL;
    qv_error err = {0};
    qv_status st = qv_st_set_open_dir(dir, &s, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, QV_OK);
    assert_int_equal(qv_st_set_n_files(s), 3);
    /* every name of the index resolves, with the right shard, and nothing else exists */
    char idx[512];
    snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", dir);
    cJSON *j = load_json_fixture(idx);
    const cJSON *wm = cJSON_GetObjectItem(j, "weight_map");
    size_t n = 0, total = 0;
    for (const cJSON *e = wm->child; e; e = e->next, n++) {
        const qv_st_tensor *t = qv_st_set_find(s, e->string);
        assert_non_null(t);
        total += t->n_bytes;
    }
    size_t all = 0;
    for (size_t i = 0; i < qv_st_set_n_files(s); i++)
        all += qv_st_n_tensors(qv_st_set_file_at(s, i));
    assert_int_equal(all, n);
    const cJSON *ts = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "total_size");
    assert_int_equal(total, (size_t)ts->valuedouble);
    assert_null(qv_st_set_find(s, "model.layers.9.mlp.up_proj.weight"));
    qv_st_set_close(s);

    /* broken copies of the index: missing entry, extra entry, wrong shard, path escape */
    char *d = tmp_dir();
    for (int i = 1; i <= 3; i++) {
        char src[512], dst[512];
        snprintf(src, sizeof(src), "%s/model-%05d-of-00003.safetensors", dir, i);
        snprintf(dst, sizeof(dst), "%s/model-%05d-of-00003.safetensors", d, i);
        copy_file(src, dst);
    }
    const char *first = wm->child->string;
    const char *cases[4] = {"missing", "extra", "wrong", "escape"};
    for (int c = 0; c < 4; c++) {
        cJSON *k = cJSON_Duplicate(j, 1);
        cJSON *m = cJSON_GetObjectItem(k, "weight_map");
        const char *want = NULL;
        if (c == 0) {
            cJSON_DeleteItemFromObject(m, first);
            want = "not in weight_map";
        } else if (c == 1) {
            cJSON_AddStringToObject(m, "ghost.weight", "model-00001-of-00003.safetensors");
            want = "ghost.weight";
        } else if (c == 2) {
            const char *cur = cJSON_GetObjectItem(m, first)->valuestring;
            const char *other = strcmp(cur, "model-00001-of-00003.safetensors")
                                    ? "model-00001-of-00003.safetensors"
                                    : "model-00002-of-00003.safetensors";
            cJSON_ReplaceItemInObject(m, first, cJSON_CreateString(other));
            want = "is not in shard";
        } else {
            cJSON_ReplaceItemInObject(m, first, cJSON_CreateString("../x.safetensors"));
            want = "plain file name";
        }
        char *text = cJSON_Print(k);
        snprintf(idx, sizeof(idx), "%s/model.safetensors.index.json", d);
        write_file(idx, text, strlen(text));
        qv_error e2 = {0};
        st = qv_st_set_open_dir(d, &s, &e2);
        if (st == QV_OK || !strstr(e2.msg, want)) {
            fprintf(stderr, "case %s: status %d '%s'\n", cases[c], st, e2.msg);
        }
        assert_int_not_equal(st, QV_OK);
        assert_null(s);
        assert_non_null(strstr(e2.msg, want));
        free(text);
        cJSON_Delete(k);
    }
    cJSON_Delete(j);
    rm_tree(d);
    free(d);
}

static void test_alloc_failure_sweep(void **state) {
    (void)state;
    use_qv_cjson_hooks();
    const char *dir = qv_test_path("tests/fixtures/formats/llama_bias");
    const char *file = qv_test_path("tests/fixtures/formats/roundtrip.safetensors");
    int ok_dir = 0, ok_file = 0;
    for (long k = 0; k < 2000 && !(ok_dir && ok_file); k++) {
        qv_error err = {0};
        if (!ok_file) {
            qv_st_file *f = NULL;
            qv_alloc_fail_after(k);
            qv_status st = qv_st_open(file, &f, &err);
            qv_alloc_fail_after(-1);
            if (st == QV_OK) {
                ok_file = 1;
                qv_st_close(f);
            } else {
                assert_null(f);
                assert_true(err.msg[0] != 0);
            }
        }
        if (!ok_dir) {
            qv_st_set *s = NULL;
            qv_alloc_fail_after(k);
            qv_status st = qv_st_set_open_dir(dir, &s, &err);
            qv_alloc_fail_after(-1);
            if (st == QV_OK) {
                ok_dir = 1;
                qv_st_set_close(s);
            } else {
                assert_null(s);
            }
        }
    }
    assert_true(ok_dir && ok_file);
    cJSON_InitHooks(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),   cmocka_unit_test(test_valid_crafted),
        cmocka_unit_test(test_bad_headers), cmocka_unit_test(test_file_errors_name_file),
        cmocka_unit_test(test_sharded),     cmocka_unit_test(test_alloc_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
