/*
 * test_json_grammar.c - the JSON-mode recogniser (engine/json_grammar.c) against Python's json
 * module, and its own documented limits.
 *
 * Fixtures (tests/fixtures/json_grammar/cases.json, from
 * tests/oracle/gen_json_grammar_fixtures.py): texts Python accepts as a JSON object must be
 * accepted byte by byte (fed one byte at a time and in random chunks), and be complete exactly
 * at their last byte; texts Python refuses must never be accepted as a complete object.
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
#include "json_grammar.h"

static size_t unhex(const char *h, uint8_t *out, size_t cap) {
    const size_t n = hex_decode(h, out, cap);
    assert_true(n != SIZE_MAX);
    return n;
}

/* Feeds doc in chunks of 1..max_chunk bytes. Returns the index of the first chunk's start that
 * was refused (or n when all were accepted); *done: complete after the last accepted chunk. */
static size_t feed_all(const uint8_t *doc, size_t n, size_t max_chunk, uint64_t *rng, bool *done,
                       size_t *first_done) {
    qv_json_state s;
    qv_json_init(&s);
    *first_done = SIZE_MAX;
    size_t i = 0;
    while (i < n) {
        size_t k = 1;
        if (max_chunk > 1) {
            *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
            k = 1 + (size_t)((*rng >> 33) % max_chunk);
        }
        if (k > n - i) k = n - i;
        qv_json_state before = s;
        if (!qv_json_feed(&s, doc + i, k)) {
            /* a refusal leaves the state as it was */
            assert_memory_equal(&before, &s, sizeof s);
            break;
        }
        i += k;
        if (qv_json_done(&s) && *first_done == SIZE_MAX) *first_done = i;
    }
    *done = qv_json_done(&s);
    return i;
}

static void test_python_verdicts(void **state) {
    (void)state;
    cJSON *root = json_read_fixture("tests/fixtures/json_grammar/cases.json");
    assert_non_null(root);
    static uint8_t doc[4096];
    uint64_t rng = 42;
    int n_valid = 0, n_invalid = 0, bad = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "valid_hex")) {
        size_t n = unhex(v->valuestring, doc, sizeof doc), first_done;
        for (size_t chunk = 1; chunk <= 16; chunk += 15) {
            bool done;
            size_t got = feed_all(doc, n, chunk, &rng, &done, &first_done);
            if (got != n || !done || first_done != n) {
                fprintf(stderr,
                        "valid text refused at byte %zu of %zu (done %d, first done %zu): %.*s\n",
                        got, n, done, first_done, (int)n, (const char *)doc);
                bad++;
            }
        }
        n_valid++;
    }
    cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, "invalid_hex")) {
        size_t n = unhex(v->valuestring, doc, sizeof doc), first_done;
        bool done;
        size_t got = feed_all(doc, n, 1, &rng, &done, &first_done);
        if (got == n && done) {
            fprintf(stderr, "invalid text accepted as an object: %.*s\n", (int)n,
                    (const char *)doc);
            bad++;
        }
        n_invalid++;
    }
    printf("json grammar: %d valid and %d invalid texts from Python's json module, %d wrong\n",
           n_valid, n_invalid, bad);
    assert_true(n_valid >= 200 && n_invalid >= 500);
    assert_int_equal(bad, 0);
    cJSON_Delete(root);
}

/* Where a text is refused, from RFC 8259's grammar (not from the code): the first byte after
 * which no JSON object can follow. */
static void test_refusal_points(void **state) {
    (void)state;
    static const struct {
        const char *text;
        size_t at; /* bytes accepted before the refusal */
    } cases[] = {
        {"[", 0},
        {" {", 0}, /* nothing before the object either */
        {"{ }x", 3},
        {"{\"a\":01", 6},
        {"{\"a\":1,}", 7},
        {"{\"a\" 1", 5},
        {"{\"a\":-x", 6},
        {"{\"a\":1.e", 7},
        {"{\"a\":tx", 6},
        {"{\"a\":[1 2", 8},
        {"{\"a\":\"\x01", 6},
        {"{\"a\":\"\xc0", 6},
        {"{\"a\":\"\xe0\x9f", 7},
        {"{\"a\":\"\xed\xa0", 7},
        {"{\"a\":\"\xf4\x90", 7},
        {"{\"a\":\"\\q", 7},
        {"{\"a\":\"\\u12g", 10},
        {"{\"a\":[}", 6},
        {"{}}", 2},
        {"{} ", 2}, /* nothing after the object, not even whitespace: the end is forced */
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const uint8_t *t = (const uint8_t *)cases[c].text;
        size_t n = strlen(cases[c].text), first_done;
        bool done;
        uint64_t rng = 0;
        size_t got = feed_all(t, n, 1, &rng, &done, &first_done);
        if (got != cases[c].at)
            fprintf(stderr, "%s: refused after %zu bytes\n", cases[c].text, got);
        assert_int_equal(got, cases[c].at);
    }
}

/* quiver's own limits: QV_JSON_MAX_WS whitespace bytes in a row, QV_JSON_MAX_DEPTH containers. */
static void test_limits(void **state) {
    (void)state;
    qv_json_state s;
    qv_json_init(&s);
    uint8_t ws[QV_JSON_MAX_WS + 1];
    memset(ws, ' ', sizeof ws);
    assert_true(qv_json_feed(&s, (const uint8_t *)"{", 1));
    assert_true(qv_json_feed(&s, ws, QV_JSON_MAX_WS));
    assert_false(qv_json_feed(&s, ws, 1));
    assert_true(qv_json_feed(&s, (const uint8_t *)"\"k\":", 4));
    assert_true(qv_json_feed(&s, ws, QV_JSON_MAX_WS)); /* the run starts again after '"k":' */
    assert_false(qv_json_feed(&s, ws, 1));
    /* inside strings whitespace is content, not counted */
    assert_true(qv_json_feed(&s, (const uint8_t *)"\"", 1));
    for (int i = 0; i < 4; i++)
        assert_true(qv_json_feed(&s, ws, sizeof ws));
    assert_true(qv_json_feed(&s, (const uint8_t *)"\"}", 2));
    assert_true(qv_json_done(&s));

    qv_json_init(&s);
    assert_true(qv_json_feed(&s, (const uint8_t *)"{\"a\":", 5));
    for (int d = 1; d < QV_JSON_MAX_DEPTH; d++)
        assert_true(qv_json_feed(&s, (const uint8_t *)"[", 1));
    assert_false(qv_json_feed(&s, (const uint8_t *)"[", 1)); /* depth 65 */
    assert_false(qv_json_feed(&s, (const uint8_t *)"{", 1));
    for (int d = 1; d < QV_JSON_MAX_DEPTH; d++)
        assert_true(qv_json_feed(&s, (const uint8_t *)"]", 1));
    assert_false(qv_json_done(&s));
    assert_true(qv_json_feed(&s, (const uint8_t *)"}", 1));
    assert_true(qv_json_done(&s));
    assert_true(qv_json_feed(&s, NULL, 0));
}

/* Equal grammar positions are equal states (the engine's mask cache compares bytes): a closed
 * array leaves no trace. */
static void test_equal_positions(void **state) {
    (void)state;
    static const char *const pairs[][2] = {
        {"{\"a\":[[]],\"b\":{", "{\"a\":{\"c\":{}},\"b\":{"},
        {"{\"a\":[1,2],", "{\"a\":\"x\","},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        qv_json_state x, y;
        qv_json_init(&x);
        qv_json_init(&y);
        assert_true(qv_json_feed(&x, (const uint8_t *)pairs[i][0], strlen(pairs[i][0])));
        assert_true(qv_json_feed(&y, (const uint8_t *)pairs[i][1], strlen(pairs[i][1])));
        assert_memory_equal(&x, &y, sizeof x);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_verdicts),
        cmocka_unit_test(test_refusal_points),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_equal_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
