/*
 * test_gguf.c - the GGUF reader (engine/gguf.c): values written by the Python `gguf` package
 * read back exactly (every KV type, F32/F16/Q8_0/Q4_1 tensors dequantized = gguf.quants; one
 * tensor of every block type Q4_0 ... IQ4_XS of random blocks, likewise), the FORMATS.md 3.1/7
 * checklist on crafted files, every truncation of a valid file, and an allocation-failure sweep.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "engine/gguf.h"
#include "fmt_test_helpers.h"
#include "test_util.h"

/* Every tensor of the fixture's "tensors" object: dtype, shape, alignment, size, and its rows
 * dequantized by qv_dequantize_row bit for bit equal to gguf.quants.dequantize's values. */
static void check_tensors(const qv_gguf *g, const cJSON *exp) {
    const cJSON *ts = cJSON_GetObjectItem(exp, "tensors");
    assert_int_equal(qv_gguf_n_tensors(g), (size_t)cJSON_GetArraySize(ts));
    for (const cJSON *e = ts->child; e; e = e->next) {
        const qv_gguf_tensor *t = qv_gguf_find_tensor(g, e->string);
        assert_non_null(t);
        assert_string_equal(qv_dtype_name(t->dtype), cJSON_GetObjectItem(e, "type")->valuestring);
        const cJSON *ne = cJSON_GetObjectItem(e, "ne");
        assert_int_equal(t->n_dims, cJSON_GetArraySize(ne));
        int64_t n_elems = 1;
        int d = 0;
        for (const cJSON *x = ne->child; x; x = x->next, d++) {
            assert_int_equal(t->ne[d], (int64_t)x->valuedouble);
            n_elems *= t->ne[d];
        }
        assert_true(((uintptr_t)t->data % 32) == 0);
        size_t n;
        float *want = json_floats(cJSON_GetObjectItem(e, "values"), &n);
        assert_int_equal((size_t)n_elems, n);
        float *got = malloc(n * sizeof(float));
        size_t row = qv_dtype_row_bytes(t->dtype, t->ne[0]);
        assert_int_equal(row * (size_t)(n_elems / t->ne[0]), t->n_bytes);
        for (int64_t r = 0; r < n_elems / t->ne[0]; r++) {
            qv_dequantize_row(t->dtype, (const uint8_t *)t->data + (size_t)r * row,
                              got + r * t->ne[0], t->ne[0]);
        }
        assert_int_equal(qv_test_compare_f32(e->string, got, want, n, 0.0, 0.0), 0);
        free(got);
        free(want);
    }
}

/* Opens tests/fixtures/formats/<name> and its expected values <name>.json. */
static qv_gguf *open_fixture(const char *name, cJSON **exp) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/formats/%s.json", name);
    *exp = load_json_fixture(qv_test_path(path));
    snprintf(path, sizeof path, "tests/fixtures/formats/%s", name);
    qv_gguf *g = NULL;
    qv_error err = {0};
    qv_status st = qv_gguf_open(qv_test_path(path), &g, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, QV_OK);
    return g;
}

static void test_roundtrip(void **state) {
    (void)state;
    cJSON *exp;
    qv_gguf *g = open_fixture("roundtrip.gguf", &exp);
    assert_int_equal(qv_gguf_version(g), 3);
    assert_int_equal(qv_gguf_alignment(g), 32);
    const cJSON *kv = cJSON_GetObjectItem(exp, "kv");
    int64_t iv;
    double dv;
    bool bv;
    const char *s;
    size_t sl;
    for (const cJSON *e = kv->child; e; e = e->next) {
        const char *k = e->string;
        assert_true(qv_gguf_has(g, k));
        if (cJSON_IsBool(e)) {
            assert_true(qv_gguf_get_bool(g, k, &bv));
            assert_int_equal(bv, cJSON_IsTrue(e));
        } else if (cJSON_IsString(e)) {
            assert_true(qv_gguf_get_str(g, k, &s, &sl));
            assert_int_equal(sl, strlen(e->valuestring));
            assert_memory_equal(s, e->valuestring, sl);
            assert_false(qv_gguf_get_int(g, k, &iv));
        } else if (cJSON_IsArray(e)) {
            enum qv_gguf_type et;
            uint64_t n;
            assert_true(qv_gguf_get_arr(g, k, &et, &n));
            assert_int_equal(n, (uint64_t)cJSON_GetArraySize(e));
            uint64_t i = 0;
            for (const cJSON *x = e->child; x; x = x->next, i++) {
                if (cJSON_IsString(x)) {
                    assert_int_equal(et, QV_GGUF_STRING);
                    assert_true(qv_gguf_arr_str(g, k, i, &s, &sl));
                    assert_int_equal(sl, strlen(x->valuestring));
                    assert_memory_equal(s, x->valuestring, sl);
                } else {
                    assert_true(qv_gguf_arr_float(g, k, i, &dv));
                    assert_true(dv == x->valuedouble);
                    if (et != QV_GGUF_FLOAT32) {
                        assert_true(qv_gguf_arr_int(g, k, i, &iv));
                        assert_int_equal(iv, (int64_t)x->valuedouble);
                    }
                }
            }
            assert_false(qv_gguf_arr_str(g, k, n, &s, &sl));
            assert_false(qv_gguf_arr_float(g, k, n, &dv));
        } else if (!strcmp(k, "t.f32") || !strcmp(k, "t.f64")) {
            assert_true(qv_gguf_get_float(g, k, &dv));
            if (!strcmp(k, "t.f32")) {
                assert_true((float)dv == (float)e->valuedouble);
            } else {
                assert_true(dv == e->valuedouble);
            }
        } else {
            assert_true(qv_gguf_get_int(g, k, &iv));
            assert_int_equal(iv, (int64_t)e->valuedouble);
        }
    }
    assert_false(qv_gguf_has(g, "t.missing"));
    assert_false(qv_gguf_get_int(g, "t.missing", &iv));
    /* general.architecture written by the writer */
    assert_true(qv_gguf_get_str(g, "general.architecture", &s, &sl));
    assert_int_equal(sl, 5);
    assert_memory_equal(s, "llama", 5);
    /* iteration covers all keys */
    size_t seen = 0;
    for (size_t i = 0; i < qv_gguf_n_kv(g); i++) {
        if (cJSON_GetObjectItem(kv, qv_gguf_key_at(g, i))) seen++;
    }
    assert_int_equal(seen, (size_t)cJSON_GetArraySize(kv));

    check_tensors(g, exp);
    assert_null(qv_gguf_find_tensor(g, "nope"));
    qv_gguf_close(g);
    cJSON_Delete(exp);
}

/* One tensor of every block type (Q4_0 ... IQ4_XS) of random block bytes: the reference
 * dequantizers against gguf.quants, exactly (tests/oracle/gen_formats_fixtures.py). */
static void test_quant_types(void **state) {
    (void)state;
    cJSON *exp;
    qv_gguf *g = open_fixture("quants.gguf", &exp);
    check_tensors(g, exp);
    assert_int_equal(qv_gguf_n_tensors(g), 10);
    qv_gguf_close(g);
    cJSON_Delete(exp);
}

/* A small valid GGUF: two KVs (+ optional alignment), two F32 tensors. */
typedef struct craft {
    uint32_t version;
    uint32_t align;      /* 0 = no general.alignment key; UINT32_MAX = a key holding 0 */
    uint32_t align_type; /* value type of general.alignment */
    uint64_t off_b;      /* offset of the second tensor */
    uint32_t type_b;     /* ggml type of the second tensor */
    uint64_t ne0_b;
    const char *name_b;
    uint32_t ndims_b;
    bool dup_key, nested, bad_bool;
    uint32_t kv_type_override; /* 0 = none; otherwise replaces the type of t.u32 */
    uint32_t data_len;         /* bytes of tensor data written (0 = 64: exactly a and b) */
} craft;

static craft craft_default(void) {
    craft c = {3, 0, 4, 32, 0, 8, "b", 1, false, false, false, 0, 0};
    return c;
}

static void build_gguf(tbuf *b, const craft *c) {
    tb_u32(b, 0x46554747u);
    tb_u32(b, c->version);
    tb_u64(b, 2); /* tensors */
    uint64_t n_kv =
        2 + (c->align ? 1 : 0) + (c->dup_key ? 1 : 0) + (c->nested ? 1 : 0) + (c->bad_bool ? 1 : 0);
    tb_u64(b, n_kv);
    gg_kv_str(b, "general.architecture", "llama");
    tb_gstr(b, "t.u32");
    tb_u32(b, c->kv_type_override ? c->kv_type_override : 4);
    tb_u32(b, 7);
    if (c->align) {
        tb_gstr(b, "general.alignment");
        tb_u32(b, c->align_type);
        if (c->align_type == 10) {
            tb_u64(b, c->align);
        } else {
            tb_u32(b, c->align == UINT32_MAX ? 0 : c->align);
        }
    }
    if (c->dup_key) gg_kv_u32(b, "t.u32", 8);
    if (c->nested) {
        tb_gstr(b, "t.nested");
        tb_u32(b, 9);
        tb_u32(b, 9); /* array of arrays */
        tb_u64(b, 1);
        tb_u32(b, 4);
        tb_u64(b, 1);
        tb_u32(b, 1);
    }
    if (c->bad_bool) {
        tb_gstr(b, "t.bool");
        tb_u32(b, 7);
        tb_u8(b, 2);
    }
    gg_tinfo(b, "a", 1, 8, 0, 0, 0);
    gg_tinfo(b, c->name_b, c->ndims_b, c->ne0_b, 1, c->type_b, c->off_b);
    tb_pad(b, c->align && c->align_type == 4 && (c->align & (c->align - 1)) == 0 ? c->align : 32);
    uint32_t n_data = c->data_len ? c->data_len : 64;
    for (uint32_t i = 0; i < n_data / 4; i++)
        tb_f32(b, (float)i);
}

static qv_status open_craft(const craft *c, qv_error *err) {
    tbuf b = {0};
    build_gguf(&b, c);
    qv_gguf *g = NULL;
    qv_status st = qv_gguf_open_buffer(b.p, b.n, &g, err);
    if (st == QV_OK) {
        assert_non_null(g);
    } else {
        assert_null(g);
        assert_null(strchr(err->msg, '\n'));
    }
    qv_gguf_close(g);
    tb_free(&b);
    return st;
}

static void expect_craft(const craft *c, qv_status want, const char *word, int line) {
    qv_error e = {0};
    qv_status st = open_craft(c, &e);
    if (st != want || (word && !strstr(e.msg, word))) {
        fprintf(stderr, "line %d: status %d '%s'\n", line, st, e.msg);
    }
    assert_int_equal(st, want);
    if (word) assert_non_null(strstr(e.msg, word));
}
#define EXPECT_CRAFT(c, want, word) expect_craft(&(c), (want), (word), __LINE__)

static void test_crafted(void **state) {
    (void)state;
    craft c = craft_default();
    EXPECT_CRAFT(c, QV_OK, NULL);
    c.version = 2;
    EXPECT_CRAFT(c, QV_OK, NULL);
    c.version = 1;
    EXPECT_CRAFT(c, QV_ERR_UNSUPPORTED, "version 1");
    c.version = 4;
    EXPECT_CRAFT(c, QV_ERR_UNSUPPORTED, "version 4");
    c.version = 0;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "version 0");
    c.version = 0x03000000u; /* a big-endian v3 file read as little-endian */
    EXPECT_CRAFT(c, QV_ERR_UNSUPPORTED, "byte-swapped");
    c = craft_default();
    c.dup_key = true;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "duplicate key 't.u32'");
    c = craft_default();
    c.nested = true;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "nested arrays");
    c = craft_default();
    c.bad_bool = true;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "bool");
    c = craft_default();
    c.kv_type_override = 13;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "unknown value type 13");
    c = craft_default();
    c.align = 64;
    c.off_b = 64;
    c.data_len = 96;
    EXPECT_CRAFT(c, QV_OK, NULL);
    c.align = 48;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "power of two");
    c.align = UINT32_MAX; /* written as an explicit 0 */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "power of two");
    c = craft_default();
    c.align = 32;
    c.align_type = 10; /* UINT64: must be UINT32 */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "UINT32");
    c = craft_default();
    c.off_b = 36; /* misaligned */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "not a multiple of the alignment");
    c.ne0_b = 0; /* an empty tensor at tensor a's offset (ggml's running offsets) is fine */
    c.off_b = 0;
    EXPECT_CRAFT(c, QV_OK, NULL);
    c.ne0_b = 8;
    c.off_b = 0; /* overlaps tensor a */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "overlap");
    c.off_b = 64; /* out of bounds */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "outside");
    c = craft_default();
    c.name_b = "a";
    EXPECT_CRAFT(c, QV_ERR_INVALID, "duplicate tensor name 'a'");
    c.name_b = "0123456789012345678901234567890123456789012345678901234567890123"; /* 64 bytes */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "1..63");
    c.name_b = "012345678901234567890123456789012345678901234567890123456789012"; /* 63 */
    EXPECT_CRAFT(c, QV_OK, NULL);
    c = craft_default();
    c.ndims_b = 0;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "dimensions");
    c.ndims_b = 5;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "dimensions");
    c = craft_default();
    c.type_b = 8; /* Q8_0 with ne0 = 8: not a multiple of 32 */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "block size");
    c.type_b = 4; /* removed id */
    EXPECT_CRAFT(c, QV_ERR_INVALID, "unknown ggml type 4");
    c.type_b = 99;
    EXPECT_CRAFT(c, QV_ERR_INVALID, "unknown ggml type 99");
    c.type_b = 24; /* I8: known, accepted by the reader, flagged unsupported for quiver */
    {
        tbuf b = {0};
        build_gguf(&b, &c);
        qv_gguf *g = NULL;
        qv_error err = {0};
        assert_int_equal(qv_gguf_open_buffer(b.p, b.n, &g, &err), QV_OK);
        assert_int_equal(qv_gguf_find_tensor(g, "b")->dtype, QV_DTYPE_COUNT);
        assert_int_equal(qv_gguf_find_tensor(g, "b")->n_bytes, 8);
        assert_string_equal(qv_gguf_ggml_type_name(24), "I8");
        qv_gguf_close(g);
        tb_free(&b);
    }
}

static void test_caps_and_truncation(void **state) {
    (void)state;
    qv_error err = {0};
    qv_gguf *g = NULL;
    /* bad magic */
    uint8_t junk[32] = "GGML";
    assert_int_equal(qv_gguf_open_buffer(junk, sizeof(junk), &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "magic"));
    /* huge counts are rejected against the file size before any allocation */
    tbuf b = {0};
    tb_u32(&b, 0x46554747u);
    tb_u32(&b, 3);
    tb_u64(&b, 0);
    tb_u64(&b, UINT64_MAX / 2);
    assert_int_equal(qv_gguf_open_buffer(b.p, b.n, &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "metadata count"));
    b.n = 8;
    tb_u64(&b, (uint64_t)1 << 40);
    tb_u64(&b, 0);
    assert_int_equal(qv_gguf_open_buffer(b.p, b.n, &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "tensor count"));
    /* huge string length */
    b.n = 8;
    tb_u64(&b, 0);
    tb_u64(&b, 1);
    tb_u64(&b, (uint64_t)1 << 40);
    for (int i = 0; i < 16; i++)
        tb_u8(&b, 'a');
    assert_int_equal(qv_gguf_open_buffer(b.p, b.n, &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "exceeds"));
    /* huge array count */
    b.n = 8;
    tb_u64(&b, 0);
    tb_u64(&b, 1);
    tb_gstr(&b, "t.arr");
    tb_u32(&b, 9);
    tb_u32(&b, 4);
    tb_u64(&b, (uint64_t)1 << 31);
    for (int i = 0; i < 16; i++)
        tb_u8(&b, 0);
    assert_int_equal(qv_gguf_open_buffer(b.p, b.n, &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "array"));
    tb_free(&b);

    /* every strict prefix of a valid file (crafted and Python-written) fails cleanly */
    craft c = craft_default();
    build_gguf(&b, &c);
    for (size_t n = 0; n < b.n; n++) {
        g = NULL;
        qv_status st = qv_gguf_open_buffer(b.p, n, &g, &err);
        if (st == QV_OK) fprintf(stderr, "prefix %zu of %zu accepted\n", n, b.n);
        assert_int_not_equal(st, QV_OK);
        assert_null(g);
    }
    tb_free(&b);
    size_t n_file;
    uint8_t *p = read_all(qv_test_path("tests/fixtures/formats/roundtrip.gguf"), &n_file);
    assert_non_null(p);
    /* the writer pads after the last tensor; cutting only padding leaves a valid file */
    assert_int_equal(qv_gguf_open_buffer(p, n_file, &g, &err), QV_OK);
    size_t data_end = 0;
    for (size_t i = 0; i < qv_gguf_n_tensors(g); i++) {
        const qv_gguf_tensor *t = qv_gguf_tensor_at(g, i);
        size_t e = (size_t)((const uint8_t *)t->data - p) + (size_t)t->n_bytes;
        if (e > data_end) data_end = e;
    }
    qv_gguf_close(g);
    assert_true(data_end > n_file / 2);
    for (size_t n = 0; n < data_end; n++) {
        g = NULL;
        assert_int_not_equal(qv_gguf_open_buffer(p, n, &g, &err), QV_OK);
        assert_null(g);
    }
    free(p);
}

static void test_file_errors_name_file(void **state) {
    (void)state;
    char *d = tmp_dir();
    char path[512];
    snprintf(path, sizeof(path), "%s/trunc.gguf", d);
    size_t n;
    uint8_t *p = read_all(qv_test_path("tests/fixtures/formats/qwen2_tiny.q4_1.gguf"), &n);
    write_file(path, p, n / 2);
    qv_gguf *g = NULL;
    qv_error err = {0};
    assert_int_equal(qv_gguf_open(path, &g, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, path));
    assert_null(strchr(err.msg, '\n'));
    snprintf(path, sizeof(path), "%s/missing.gguf", d);
    assert_int_equal(qv_gguf_open(path, &g, &err), QV_ERR_NOT_FOUND);
    assert_non_null(strstr(err.msg, path));
    free(p);
    rm_tree(d);
    free(d);
}

static void test_alloc_failure_sweep(void **state) {
    (void)state;
    const char *path = qv_test_path("tests/fixtures/formats/roundtrip.gguf");
    bool ok = false;
    for (long k = 0; k < 1000 && !ok; k++) {
        qv_gguf *g = NULL;
        qv_error err = {0};
        qv_alloc_fail_after(k);
        qv_status st = qv_gguf_open(path, &g, &err);
        qv_alloc_fail_after(-1);
        if (st == QV_OK) {
            ok = true;
            qv_gguf_close(g);
        } else {
            assert_int_equal(st, QV_ERR_NOMEM);
            assert_null(g);
        }
    }
    assert_true(ok);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_quant_types),
        cmocka_unit_test(test_crafted),
        cmocka_unit_test(test_caps_and_truncation),
        cmocka_unit_test(test_file_errors_name_file),
        cmocka_unit_test(test_alloc_failure_sweep),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
