/*
 * test_json_text.c - engine/json_text.c against Python: every fixture text
 * (tests/fixtures/json_text/cases.json, from tests/oracle/gen_json_text_fixtures.py) must be
 * re-written byte for byte as json.dumps(json.loads(text), ensure_ascii=False) wrote it, with
 * the default separators, compact ones and indent=4; texts Python refuses must be refused; and a
 * member's raw span is found as cJSON finds the member.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "golden_util.h"
#include "json_text.h"

static void test_python_dumps(void **state) {
    (void)state;
    cJSON *root = json_read_fixture("tests/fixtures/json_text/cases.json");
    assert_non_null(root);
    static uint8_t text[1 << 16];
    int n = 0, numbers = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const size_t len =
            hex_decode(cJSON_GetObjectItem(c, "in_hex")->valuestring, text, sizeof(text));
        assert_true(len != SIZE_MAX);
        for (int mode = 0; mode < 3; mode++) { /* default, compact, indent=4 */
            static const char *const keys[] = {"py", "py_compact", "py_indent4"};
            const char *want = cJSON_GetObjectItem(c, keys[mode])->valuestring;
            char *got = NULL;
            size_t got_len = 0;
            const qv_status st =
                mode == 2 ? qv_json_py_dumps_indent((const char *)text, len, 4, &got, &got_len)
                          : qv_json_py_dumps((const char *)text, len, mode == 1, &got, &got_len);
            if (st != QV_OK || strcmp(got, want))
                fprintf(stderr, "%.*s\n  got  %s\n  want %s\n", (int)len, text, got ? got : "-",
                        want);
            assert_int_equal(st, QV_OK);
            assert_string_equal(got, want);
            assert_int_equal(got_len, strlen(want));
            qv_free(got);
        }
        assert_int_equal(qv_json_text_check((const char *)text, len, false), QV_OK);
        assert_int_equal(qv_json_text_check((const char *)text, len, true),
                         cJSON_GetObjectItem(c, "py")->valuestring[0] == '{' ? QV_OK
                                                                             : QV_ERR_INVALID);
        for (size_t i = 0; i < len; i++)
            numbers += text[i] == ',';
        n++;
    }
    int refused = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "invalid_hex")) {
        const size_t len = hex_decode(c->valuestring, text, sizeof(text));
        char *got = NULL;
        size_t got_len = 0;
        if (qv_json_py_dumps((const char *)text, len, false, &got, &got_len) == QV_OK)
            fprintf(stderr, "accepted %.*s as %s\n", (int)len, text, got);
        assert_null(got);
        assert_int_equal(qv_json_py_dumps_indent((const char *)text, len, 4, &got, &got_len),
                         QV_ERR_INVALID);
        assert_null(got);
        assert_int_equal(qv_json_text_check((const char *)text, len, false), QV_ERR_INVALID);
        refused++;
    }
    printf("json text: %d texts (%d commas) as Python writes them, %d invalid refused\n", n,
           numbers, refused);
    cJSON_Delete(root);
}

static void test_member_span(void **state) {
    (void)state;
    static const char body[] =
        " { \"model\" : \"m\", \"tools\\u0022x\": 1, \"tools\" :[ {\"a\": 1.0} ] , \"tools\": 2 } ";
    size_t off = 0, n = 0;
    assert_true(qv_json_member_span(body, strlen(body), "tools", &off, &n));
    assert_int_equal(n, strlen("[ {\"a\": 1.0} ]"));
    assert_memory_equal(body + off, "[ {\"a\": 1.0} ]", n);
    assert_true(qv_json_member_span(body, strlen(body), "model", &off, &n));
    assert_memory_equal(body + off, "\"m\"", n);
    assert_false(qv_json_member_span(body, strlen(body), "nope", &off, &n));
    /* the value at the start of a text, whatever follows it */
    static const char two[] = " \n{\"a\": [1, \"}\"]} ; {\"b\": 2}";
    assert_true(qv_json_value_span(two, strlen(two), &off, &n));
    assert_int_equal(off, 2);
    assert_memory_equal(two + off, "{\"a\": [1, \"}\"]}", n);
    assert_int_equal(n, strlen("{\"a\": [1, \"}\"]}"));
    assert_false(qv_json_value_span(" {\"a\": ", 7, &off, &n));
    assert_false(qv_json_value_span(" ; 1", 4, &off, &n));
    assert_false(qv_json_value_span("", 0, &off, &n));
    assert_false(qv_json_member_span("{}", 2, "a", &off, &n));
    assert_false(qv_json_member_span("[1]", 3, "a", &off, &n));
    assert_false(qv_json_member_span("{\"a\":1", 6, "a", &off, &n));
    assert_false(qv_json_member_span("{\"a\":01}", 8, "a", &off, &n));
    /* a key written with escapes is the same key */
    assert_true(qv_json_member_span("{\"\\u0061\":[]}", 13, "a", &off, &n));
    assert_int_equal(n, 2);
    /* every member's value in order, a repeated key each time (as cJSON lists them) */
    static const char obj[] = " { \"a\" : 1.50 ,\"b\":[1, {\"c\": \"}\"}], \"a\":\"x\\\"y\"}";
    size_t offs[4], ns[4];
    assert_int_equal(qv_json_object_values(obj, strlen(obj), offs, ns, 4), 3);
    assert_int_equal(qv_json_object_values(obj, strlen(obj), NULL, NULL, 0), 3);
    assert_memory_equal(obj + offs[0], "1.50", ns[0]);
    assert_int_equal(ns[0], 4);
    assert_memory_equal(obj + offs[1], "[1, {\"c\": \"}\"}]", ns[1]);
    assert_int_equal(ns[1], strlen("[1, {\"c\": \"}\"}]"));
    assert_memory_equal(obj + offs[2], "\"x\\\"y\"", ns[2]);
    assert_int_equal(qv_json_object_values("{ }", 3, offs, ns, 4), 0);
    static const char *const not_objects[] = {"[1]",   "{\"a\":1",   "{\"a\" 1}",
                                              "{a:1}", "{\"a\":1,}", ""};
    for (size_t i = 0; i < sizeof(not_objects) / sizeof(not_objects[0]); i++)
        assert_int_equal(qv_json_object_values(not_objects[i], strlen(not_objects[i]), offs, ns, 4),
                         SIZE_MAX);
    /* nesting is bounded */
    static char deep[2000];
    memset(deep, '[', 1000);
    memset(deep + 1000, ']', 1000);
    char *out = NULL;
    assert_int_equal(qv_json_py_dumps(deep, 2000, false, &out, NULL), QV_ERR_LIMIT);
    assert_int_equal(qv_json_text_check(deep, 2000, false), QV_ERR_INVALID);
    assert_null(out);
}

static void test_alloc_failures(void **state) {
    (void)state;
    static const char text[] = "{\"a\": [1.5, \"\\u00e9x\", {\"b\": null}], \"c\": 1e400}";
    int failures = 0;
    for (long k = 0; k < 100; k++) {
        char *out = NULL;
        qv_alloc_fail_after(k);
        const qv_status st = qv_json_py_dumps(text, strlen(text), false, &out, NULL);
        qv_alloc_fail_after(-1);
        if (st == QV_OK) {
            assert_string_equal(out, "{\"a\": [1.5, \"\u00e9x\", {\"b\": null}], \"c\": Infinity}");
            qv_free(out);
            break;
        }
        assert_int_equal(st, QV_ERR_NOMEM);
        assert_null(out);
        failures++;
    }
    assert_true(failures > 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_dumps),
        cmocka_unit_test(test_member_span),
        cmocka_unit_test(test_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
