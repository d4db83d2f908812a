/*
 * test_json_schema.c - the structured-output recogniser (engine/json_grammar.c,
 * qv_json_schema_*) against the jsonschema package, plus the compiler's refusals.
 *
 * Fixtures (tests/fixtures/json_schema/cases.json, from
 * tests/oracle/gen_json_schema_fixtures.py): for each schema, documents the judge accepts must
 * be accepted byte by byte (one byte at a time and in random chunks) and be complete at their
 * last byte; documents it refuses must never be accepted as complete. The judge is jsonschema
 * plus quiver's documented rules (whitespace, integers without fraction, property order,
 * type inference), all in the Python script.
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

static qv_json_schema *compile(const char *text) {
    qv_json_schema *s = NULL;
    qv_error err = {0};
    if (qv_json_schema_compile(text, strlen(text), &s, &err) != QV_OK)
        fprintf(stderr, "compile %s: %s\n", text, err.msg);
    assert_non_null(s);
    return s;
}

/* Feeds doc in chunks of 1..max_chunk bytes; returns the bytes accepted (n: all) and sets
 * *done to whether the text so far is a whole document. A refused chunk leaves the state. */
static size_t feed_all(const qv_json_schema *sch, const uint8_t *doc, size_t n, size_t max_chunk,
                       uint64_t *rng, bool *done) {
    qv_json_sstate s;
    qv_json_schema_init(sch, &s);
    size_t i = 0;
    while (i < n) {
        size_t k = 1;
        if (max_chunk > 1) {
            *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
            k = 1 + (size_t)((*rng >> 33) % max_chunk);
        }
        if (k > n - i) k = n - i;
        qv_json_sstate before = s;
        if (!qv_json_schema_feed(sch, &s, doc + i, k)) {
            assert_memory_equal(&before, &s, sizeof s);
            break;
        }
        i += k;
    }
    *done = qv_json_schema_done(sch, &s);
    return i;
}

static void test_jsonschema_verdicts(void **state) {
    (void)state;
    cJSON *root = json_read_fixture("tests/fixtures/json_schema/cases.json");
    assert_non_null(root);
    static uint8_t doc[8192];
    uint64_t rng = 7;
    int n_schemas = 0, n_valid = 0, n_invalid = 0, bad = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "schema"));
        qv_json_schema *sch = compile(text);
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "valid_hex")) {
            const size_t n = unhex(v->valuestring, doc, sizeof doc);
            for (size_t chunk = 1; chunk <= 16; chunk += 15) {
                bool done;
                const size_t got = feed_all(sch, doc, n, chunk, &rng, &done);
                if (got != n || !done) {
                    fprintf(stderr,
                            "schema %s: valid document refused at byte %zu of %zu "
                            "(done %d): %.*s\n",
                            text, got, n, done, (int)n, (const char *)doc);
                    bad++;
                }
            }
            n_valid++;
        }
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "invalid_hex")) {
            const size_t n = unhex(v->valuestring, doc, sizeof doc);
            bool done;
            if (feed_all(sch, doc, n, 1, &rng, &done) == n && done) {
                fprintf(stderr, "schema %s: invalid document accepted: %.*s\n", text, (int)n,
                        (const char *)doc);
                bad++;
            }
            n_invalid++;
        }
        qv_json_schema_unref(sch);
        cJSON_free(text);
        n_schemas++;
    }
    printf("json schema: %d schemas, %d valid and %d invalid documents judged by jsonschema, "
           "%d wrong\n",
           n_schemas, n_valid, n_invalid, bad);
    assert_true(n_schemas >= 12 && n_valid >= 1000 && n_invalid >= 2000);
    assert_int_equal(bad, 0);
    cJSON_Delete(root);
}

/* {"type": "object"} is JSON mode: the same verdicts as qv_json_state on its fixtures (Python's
 * json module). The engine runs JSON mode through this schema. */
static void test_object_schema_is_json_mode(void **state) {
    (void)state;
    cJSON *root = json_read_fixture("tests/fixtures/json_grammar/cases.json");
    assert_non_null(root);
    qv_json_schema *sch = compile("{\"type\":\"object\"}");
    static uint8_t doc[4096];
    uint64_t rng = 1;
    int n = 0;
    static const char *const lists[] = {"valid_hex", "invalid_hex"};
    for (int l = 0; l < 2; l++) {
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(root, lists[l])) {
            const size_t len = unhex(v->valuestring, doc, sizeof doc);
            bool done;
            const bool whole = feed_all(sch, doc, len, 1, &rng, &done) == len && done;
            assert_int_equal(whole, l == 0);
            n++;
        }
    }
    printf("{\"type\":\"object\"}: %d texts, the json module's verdict on each\n", n);
    qv_json_schema_unref(sch);
    cJSON_Delete(root);
}

static bool feeds(const qv_json_schema *sch, qv_json_sstate *s, const char *t) {
    return qv_json_schema_feed(sch, s, (const uint8_t *)t, strlen(t));
}

/* Equal grammar positions are equal states (the engine's mask cache compares bytes). */
static void test_equal_positions(void **state) {
    (void)state;
    qv_json_schema *sch =
        compile("{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":{\"type\":\"string\"},"
                "\"c\":{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}}}");
    static const char *const pairs[][2] = {
        {"{\"a\":[1,{\"x\":[]}],", "{\"a\":{\"y\":\"z\"},"},
        {"{\"a\":1  ,", "{\"a\":\"q\\n\u00e9\" ,"},
        {"{\"c\":[12", "{\"c\":[3,4"},
        {"{\"c\":[]}", "{}"},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(pairs); i++) {
        qv_json_sstate x, y;
        qv_json_schema_init(sch, &x);
        qv_json_schema_init(sch, &y);
        assert_true(feeds(sch, &x, pairs[i][0]));
        assert_true(feeds(sch, &y, pairs[i][1]));
        if (memcmp(&x, &y, sizeof x) != 0) fprintf(stderr, "%s vs %s\n", pairs[i][0], pairs[i][1]);
        assert_memory_equal(&x, &y, sizeof x);
    }
    qv_json_schema_unref(sch);
}

/* What only hand-written cases reach: object-valued enums, nesting limits, where a number or
 * an enum value may end, keys chosen by their bytes. */
static void test_hand_cases(void **state) {
    (void)state;
    qv_json_sstate s;
    qv_json_schema *sch = compile("{\"enum\":[{\"a\":[1,2]},[true],\"x\"],\"title\":\"t\"}");
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "{\"a\":[1,2]}"));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "{\"a\": [1,2]}")); /* enum values are written compactly */
    assert_false(feeds(sch, &s, " ["));             /* nothing before the document */
    assert_true(feeds(sch, &s, "[true]"));
    assert_false(feeds(sch, &s, " ")); /* nor after it */
    qv_json_schema_unref(sch);

    /* a number ends where the text may end, and may also go on */
    sch = compile("{\"type\":\"integer\"}");
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "-12"));
    assert_true(qv_json_schema_done(sch, &s));
    assert_false(feeds(sch, &s, "."));
    assert_false(feeds(sch, &s, "e"));
    assert_true(feeds(sch, &s, "0"));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);

    /* recursion is limited by QV_JSON_SCHEMA_MAX_FRAMES: one frame per open array and per
     * open object */
    sch = compile("{\"type\":\"array\",\"items\":{\"$ref\":\"#\"}}");
    qv_json_schema_init(sch, &s);
    int depth = 0;
    while (feeds(sch, &s, "["))
        depth++;
    assert_int_equal(depth, QV_JSON_SCHEMA_MAX_FRAMES);
    for (int i = 0; i < depth; i++)
        assert_true(feeds(sch, &s, "]"));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);

    /* keys: the first allowed property that matches the bytes; a required one stops the
     * skipping */
    sch = compile("{\"properties\":{\"ab\":{},\"a\":{},\"b\":{},\"c\":{}},\"required\":[\"b\"]}");
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "{\"a\":1,\"b\":2}"));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "{\"c\"")); /* 'b' is required before 'c' */
    assert_false(feeds(sch, &s, "{\"a\":1}"));
    assert_true(feeds(sch, &s, "{\"ab\":1,\"a\":2,\"b\":3,\"c\":4}"));
    qv_json_schema_unref(sch);

    /* numeric bounds, by JSON Schema's definitions: a prefix stays while some completion is
     * in range */
    sch = compile("{\"type\":\"number\",\"exclusiveMinimum\":0,\"maximum\":1}");
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "-"));
    assert_true(feeds(sch, &s, "0"));
    assert_false(qv_json_schema_done(sch, &s)); /* 0 is not > 0 */
    assert_true(feeds(sch, &s, ".00"));
    assert_false(qv_json_schema_done(sch, &s)); /* nor is 0.00 */
    assert_true(feeds(sch, &s, "5"));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "2"));
    assert_true(feeds(sch, &s, "1.0"));
    assert_false(feeds(sch, &s, "1")); /* 1.01 > 1 */
    assert_true(qv_json_schema_done(sch, &s));
    assert_false(feeds(sch, &s, "e")); /* no exponent under bounds */
    qv_json_schema_unref(sch);
    sch = compile("{\"type\":\"integer\",\"minimum\":100}");
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "-"));
    assert_true(feeds(sch, &s, "1"));
    assert_false(qv_json_schema_done(sch, &s));
    assert_true(feeds(sch, &s, "2345678901234")); /* no upper bound: any length */
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);
    sch = compile("{\"type\":\"integer\",\"minimum\":-5,\"exclusiveMaximum\":0}");
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "0"));
    assert_true(feeds(sch, &s, "-"));
    assert_false(feeds(sch, &s, "0"));
    assert_false(feeds(sch, &s, "6"));
    assert_true(feeds(sch, &s, "5"));
    assert_true(qv_json_schema_done(sch, &s));
    assert_false(feeds(sch, &s, "0"));
    qv_json_schema_unref(sch);

    /* patterns: a string is refused at the first character no match can follow; without ^
     * a match may start anywhere, without $ end anywhere */
    sch = compile("{\"type\":\"string\",\"pattern\":\"^a[0-9]{2}$\"}");
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "\"a"));
    assert_false(feeds(sch, &s, "\""));
    assert_false(feeds(sch, &s, "x"));
    assert_false(feeds(sch, &s, "\\u0034")); /* printable ASCII is written plainly */
    assert_false(feeds(sch, &s, "\\u"));     /* ... so no escape can follow here */
    assert_true(feeds(sch, &s, "4"));
    assert_true(feeds(sch, &s, "2"));
    assert_false(feeds(sch, &s, "3"));
    assert_true(feeds(sch, &s, "\""));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);
    sch = compile("{\"pattern\":\"b\\\\d\"}");
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "\"\\n\\t\\\"\\\\\\u00e9\\ud83d\\ude00")); /* other escapes */
    assert_false(feeds(sch, &s, "\\/"));
    assert_false(feeds(sch, &s, "\\u0020"));
    assert_false(feeds(sch, &s, "\\u007e"));
    assert_true(feeds(sch, &s, "\\u007f"));
    assert_true(feeds(sch, &s, "xx b"));
    assert_false(feeds(sch, &s, "\""));
    assert_true(feeds(sch, &s, "9 and anything after"));
    assert_true(feeds(sch, &s, "\""));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);

    /* string lengths count characters: a 4-byte character and an escape are one each */
    sch = compile("{\"type\":\"string\",\"minLength\":2,\"maxLength\":3}");
    qv_json_schema_init(sch, &s);
    assert_false(feeds(sch, &s, "\"\xf0\x9f\x98\x80\""));
    assert_true(feeds(sch, &s, "\"\xf0\x9f\x98\x80\\u00e9\\n"));
    assert_false(feeds(sch, &s, "x"));
    assert_true(feeds(sch, &s, "\""));
    assert_true(qv_json_schema_done(sch, &s));
    qv_json_schema_unref(sch);
}

/* The engine's shortcut inside strings (qv_json_plain_chars + qv_json_schema_string_room)
 * agrees with feeding the bytes, at every position of the fixture documents. */
static void test_string_shortcut(void **state) {
    (void)state;
    static const char *const plain[] = {"a",
                                        "hello",
                                        " world",
                                        "\xc3\xa9t\xc3\xa9",
                                        "\xe4\xb8\xad\xe6\x96\x87",
                                        "\xf0\x9f\x98\x80!",
                                        "0123456789abcdefghij"};
    static const char *const not_plain[] = {"a\"",      "\\n",      "x\n",          "\xc3",
                                            "\xe4\xb8", "\xc0\x80", "\xed\xa0\x80", "\x7f\x01"};
    for (size_t i = 0; i < QV_ARRAY_LEN(not_plain); i++)
        assert_int_equal(qv_json_plain_chars((const uint8_t *)not_plain[i], strlen(not_plain[i])),
                         -1);
    assert_int_equal(qv_json_plain_chars((const uint8_t *)plain[3], strlen(plain[3])), 3);
    assert_int_equal(qv_json_plain_chars((const uint8_t *)plain[5], strlen(plain[5])), 2);
    cJSON *root = json_read_fixture("tests/fixtures/json_schema/cases.json");
    assert_non_null(root);
    static uint8_t doc[8192];
    long checked = 0, in_strings = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "schema"));
        qv_json_schema *sch = compile(text);
        const cJSON *v;
        cJSON_ArrayForEach(v, cJSON_GetObjectItem(c, "valid_hex")) {
            const size_t n = unhex(v->valuestring, doc, sizeof doc);
            qv_json_sstate st;
            qv_json_schema_init(sch, &st);
            for (size_t i = 0; i <= n; i++) {
                const int32_t room = qv_json_schema_string_room(sch, &st);
                for (size_t k = 0; k < QV_ARRAY_LEN(plain); k++) {
                    const size_t len = strlen(plain[k]);
                    const int chars = qv_json_plain_chars((const uint8_t *)plain[k], len);
                    assert_true(chars > 0);
                    qv_json_sstate t = st;
                    const bool fed = qv_json_schema_feed(sch, &t, (const uint8_t *)plain[k], len);
                    if (room >= 0) assert_int_equal(fed, chars <= room);
                    checked++;
                }
                in_strings += room >= 0;
                if (i < n) assert_true(qv_json_schema_feed(sch, &st, doc + i, 1));
            }
        }
        qv_json_schema_unref(sch);
        cJSON_free(text);
    }
    printf("string shortcut: %ld positions inside strings, %ld feeds compared\n", in_strings,
           checked);
    assert_true(in_strings > 1000);
    cJSON_Delete(root);
}

/* guided_choice: one of the strings, as raw text, byte for byte. */
static void test_choices(void **state) {
    (void)state;
    static const char list[] = "[\"positive\",\"neg\",\"negative\",\"a b\\n\\\"q\\\"\","
                               "\"neg\"]";
    qv_json_schema *sch = NULL;
    qv_error err = {0};
    assert_int_equal(qv_json_schema_compile_choice(list, strlen(list), &sch, &err), QV_OK);
    qv_json_sstate s;
    qv_json_schema_init(sch, &s);
    assert_false(qv_json_schema_done(sch, &s));
    assert_false(feeds(sch, &s, " "));
    assert_true(feeds(sch, &s, "neg"));
    assert_true(qv_json_schema_done(sch, &s)); /* "neg" is whole, "negative" may go on */
    assert_false(feeds(sch, &s, "x"));
    assert_true(feeds(sch, &s, "ative"));
    assert_true(qv_json_schema_done(sch, &s));
    assert_false(feeds(sch, &s, "s"));
    qv_json_schema_init(sch, &s);
    assert_true(feeds(sch, &s, "a b\n\"q\"")); /* raw text, not JSON */
    assert_true(qv_json_schema_done(sch, &s) && s.depth == 0);
    assert_non_null(strstr(qv_json_schema_text(sch), "choice:"));
    qv_json_schema_unref(sch);
    static const char *const bad[] = {"[]", "[\"\"]", "[1]", "{\"a\":1}", "[\"\xc3\"]", "[\"a\""};
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        assert_int_equal(qv_json_schema_compile_choice(bad[i], strlen(bad[i]), &sch, &err),
                         QV_ERR_INVALID);
        assert_null(sch);
    }
}

/* Schemas quiver cannot follow are refused, saying what and where. */
static void test_refusals(void **state) {
    (void)state;
    static const struct {
        const char *schema;
        qv_status st;
        const char *msg; /* a part of the message */
    } cases[] = {
        {"{\"type\":\"string\",\"format\":\"x\",\"uniqueItems\":true}", QV_ERR_UNSUPPORTED,
         "'uniqueItems'"},
        {"{\"pattern\":\"(a)\\\\1\"}", QV_ERR_UNSUPPORTED, "backreferences"},
        {"{\"pattern\":\"(?=a)b\"}", QV_ERR_UNSUPPORTED, "lookaround"},
        {"{\"pattern\":\"\\\\bword\"}", QV_ERR_UNSUPPORTED, "word boundaries"},
        {"{\"pattern\":\"^a|b\"}", QV_ERR_UNSUPPORTED, "^(a|b)$"},
        {"{\"pattern\":\"a^b\"}", QV_ERR_UNSUPPORTED, "only at the very start"},
        {"{\"pattern\":\"[z-a]\"}", QV_ERR_INVALID, "backwards"},
        {"{\"pattern\":\"(ab\"}", QV_ERR_INVALID, "unclosed ("},
        {"{\"pattern\":\"ab)\"}", QV_ERR_INVALID, "unmatched )"},
        {"{\"pattern\":\"a{1001}\"}", QV_ERR_UNSUPPORTED, "above 1000"},
        {"{\"pattern\":\"a{2,100000}\"}", QV_ERR_UNSUPPORTED, "above 1000"},
        {"{\"pattern\":\"(?:(?:(?:){64}){64}){64}\"}", QV_ERR_LIMIT, "too complex"},
        {"{\"pattern\":\"^.{1000}.{1000}.{1000}.{1000}.{1000}$\"}", QV_ERR_LIMIT, "more than 4096"},
        {"{\"pattern\":\"[ab]*a[ab]{20}\"}", QV_ERR_LIMIT, "too many states"},
        {"{\"pattern\":\"x[^\\\\u0000-\xf4\x8f\xbf\xbf]\"}", QV_ERR_UNSUPPORTED, "matches nothing"},
        {"{\"pattern\":\"*a\"}", QV_ERR_INVALID, "nothing to repeat"},
        {"{\"pattern\":5}", QV_ERR_INVALID, "'pattern' must be a string"},
        {"{\"prefixItems\":{\"type\":\"integer\"}}", QV_ERR_INVALID, "array of schemas"},
        {"{\"prefixItems\":[{\"type\":\"integer\"},{\"minimum\":\"x\"}]}", QV_ERR_UNSUPPORTED,
         "(at /prefixItems/1)"},
        {"{\"enum\":[[1]],\"prefixItems\":[{}]}", QV_ERR_UNSUPPORTED, "'prefixItems' beside enum"},
        {"{\"properties\":{\"n\":{\"type\":\"number\",\"multipleOf\":0.5}}}", QV_ERR_UNSUPPORTED,
         "'multipleOf' must be a whole number below 2^31"},
        {"{\"multipleOf\":0}", QV_ERR_INVALID, "'multipleOf' must be a number above 0"},
        {"{\"type\":\"integer\",\"multipleOf\":10,\"minimum\":1,\"maximum\":9}", QV_ERR_INVALID,
         "no multiple of 'multipleOf' lies within the bounds"},
        {"{\"type\":\"integer\",\"multipleOf\":4,\"exclusiveMinimum\":-4,\"exclusiveMaximum\":0}",
         QV_ERR_INVALID, "no multiple"},
        {"{\"type\":\"number\",\"maximum\":2.5}", QV_ERR_UNSUPPORTED, "whole number"},
        {"{\"type\":\"integer\",\"minimum\":-1e10}", QV_ERR_UNSUPPORTED, "2^31"},
        {"{\"type\":\"integer\",\"minimum\":\"1\"}", QV_ERR_UNSUPPORTED, "'minimum'"},
        {"{\"type\":\"integer\",\"exclusiveMinimum\":1,\"maximum\":1}", QV_ERR_INVALID,
         "no number"},
        {"{\"type\":\"number\",\"minimum\":1,\"exclusiveMaximum\":1}", QV_ERR_INVALID, "no number"},
        {"{\"anyOf\":[{\"type\":\"object\"},{\"properties\":{\"a\":{}}}]}", QV_ERR_UNSUPPORTED,
         "begin differently"},
        {"{\"anyOf\":[{\"type\":\"integer\"},{\"enum\":[1,\"x\"]}]}", QV_ERR_UNSUPPORTED,
         "begin differently"},
        /* objects told apart only by a first property that is required, named alike and a
         * string enum or const found in one member */
        {"{\"anyOf\":[{\"properties\":{\"k\":{\"const\":\"a\"}}},"
         "{\"properties\":{\"k\":{\"const\":\"b\"}},\"required\":[\"k\"]}]}",
         QV_ERR_UNSUPPORTED, "first property"},
        /* nor by the first key written: "k" may begin both (the second's "x" is optional) */
        {"{\"anyOf\":[{\"properties\":{\"k\":{\"const\":\"a\"}},\"required\":[\"k\"]},"
         "{\"properties\":{\"x\":{},\"k\":{\"const\":\"b\"}},\"required\":[\"k\"]}]}",
         QV_ERR_UNSUPPORTED, "named in that member only"},
        {"{\"anyOf\":[{\"properties\":{\"k\":{\"enum\":[\"a\",\"b\"]}},\"required\":[\"k\"]},"
         "{\"properties\":{\"k\":{\"const\":\"b\"}},\"required\":[\"k\"]}]}",
         QV_ERR_UNSUPPORTED, "one member"},
        {"{\"anyOf\":[{\"properties\":{\"k\":{\"const\":1}},\"required\":[\"k\"]},"
         "{\"properties\":{\"k\":{\"const\":2}},\"required\":[\"k\"]}]}",
         QV_ERR_UNSUPPORTED, "string enum"},
        {"{\"anyOf\":[{\"properties\":{\"k\":{\"const\":\"a\"}},\"required\":[\"k\"]},"
         "{\"properties\":{\"k\":{\"const\":\"b\"}},\"required\":[\"k\"]},"
         "{\"type\":\"object\"}]}",
         QV_ERR_UNSUPPORTED, "begin differently"},
        {"{\"$ref\":\"#/$defs/nope\"}", QV_ERR_INVALID, "points at nothing"},
        {"{\"$ref\":\"http://x/s.json\"}", QV_ERR_UNSUPPORTED, "not a pointer"},
        {"{\"$ref\":\"#\"}", QV_ERR_INVALID, "cycle"},
        {"{\"$defs\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/$defs/a\"},{\"type\":\"null\"}]}},"
         "\"$ref\":\"#/$defs/a\"}",
         QV_ERR_UNSUPPORTED, "itself"},
        {"false", QV_ERR_UNSUPPORTED, "object or true"},
        {"{\"type\":\"object\"", QV_ERR_INVALID, "not valid JSON"},
        {"{\"type\":\"strin\"}", QV_ERR_INVALID, "'type'"},
        {"{\"required\":[\"x\"],\"properties\":{\"y\":{}}}", QV_ERR_UNSUPPORTED,
         "required property 'x'"},
        {"{\"minLength\":3,\"maxLength\":2}", QV_ERR_INVALID, "minLength above maxLength"},
        {"{\"minItems\":-1}", QV_ERR_INVALID, "'minItems'"},
        {"{\"allOf\":[{},{}]}", QV_ERR_UNSUPPORTED, "'allOf' with more than one"},
        {"{\"enum\":[]}", QV_ERR_INVALID, "non-empty"},
        {"{\"type\":\"string\",\"enum\":[1,2]}", QV_ERR_INVALID, "no enum value"},
        {"{\"enum\":[\"a\"],\"maxLength\":1}", QV_ERR_UNSUPPORTED, "beside enum"},
        {"{\"$ref\":\"#/$defs/a\",\"type\":\"string\",\"$defs\":{\"a\":{}}}", QV_ERR_UNSUPPORTED,
         "beside $ref"},
        {"{\"items\":[{},{}]}", QV_ERR_UNSUPPORTED, "'items' must be one schema"},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(cases); i++) {
        qv_json_schema *s = NULL;
        qv_error err = {0};
        const qv_status st =
            qv_json_schema_compile(cases[i].schema, strlen(cases[i].schema), &s, &err);
        if (st != cases[i].st || !strstr(err.msg, cases[i].msg))
            fprintf(stderr, "%s: status %d, message '%s'\n", cases[i].schema, st, err.msg);
        assert_int_equal(st, cases[i].st);
        assert_null(s);
        assert_non_null(strstr(err.msg, cases[i].msg));
    }
    /* an enum of 256 values is over the limit */
    char big[4096] = "{\"enum\":[0";
    for (int i = 1; i < 256; i++)
        snprintf(big + strlen(big), sizeof(big) - strlen(big), ",%d", i);
    strcat(big, "]}");
    qv_json_schema *s = NULL;
    qv_error err = {0};
    assert_int_equal(qv_json_schema_compile(big, strlen(big), &s, &err), QV_ERR_LIMIT);
}

/* Whether the whole text t is a document of sch. */
static bool whole(const qv_json_schema *sch, const char *t) {
    qv_json_sstate s;
    qv_json_schema_init(sch, &s);
    return feeds(sch, &s, t) && qv_json_schema_done(sch, &s);
}

/* Tagged unions: equal positions after the tag are the member's own positions. */
static void test_tagged_positions(void **state) {
    (void)state;
    qv_json_schema *sch = compile(
        "{\"anyOf\":[{\"type\":\"object\",\"properties\":{\"t\":{\"const\":\"ab\"},"
        "\"x\":{\"type\":\"integer\"}},\"required\":[\"t\"]},"
        "{\"type\":\"object\",\"properties\":{\"t\":{\"enum\":[\"a\",\"abc\"]},"
        "\"y\":{\"type\":\"boolean\"}},\"required\":[\"t\",\"y\"]},{\"type\":\"string\"}]}");
    assert_true(whole(sch, "{\"t\":\"ab\",\"x\":1}"));
    assert_true(whole(sch, "{ \"t\" : \"ab\"}"));
    assert_true(whole(sch, "{\"t\":\"abc\",\"y\":true}"));
    assert_true(whole(sch, "{\"t\":\"a\",\"y\":false}"));
    assert_true(whole(sch, "\"free\""));
    assert_false(whole(sch, "{\"t\":\"a\"}"));           /* y is required in that member */
    assert_false(whole(sch, "{\"t\":\"abc\",\"x\":1}")); /* x is the other member's */
    assert_false(whole(sch, "{\"t\":\"b\"}"));
    assert_false(whole(sch, "{\"x\":1,\"t\":\"ab\"}")); /* the tag comes first */
    assert_false(whole(sch, "{}"));
    /* after the tag, the state is the member's: as if the member were the whole schema */
    qv_json_sstate x, y;
    qv_json_schema_init(sch, &x);
    qv_json_schema_init(sch, &y);
    assert_true(feeds(sch, &x, "{\"t\":\"ab\""));
    assert_true(feeds(sch, &y, "{  \"t\":\n\"ab\"  "));
    y.ws = 0;
    assert_memory_equal(&x, &y, sizeof x);
    qv_json_schema_unref(sch);
}

/* QV_JSON_COMPACT: no whitespace outside strings, in schema frames and free values alike. */
static void test_compact(void **state) {
    (void)state;
    static const char text[] = "{\"type\":\"object\",\"properties\":{\"a\":{},\"b\":"
                               "{\"type\":\"array\",\"items\":{\"type\":\"integer\"}}}}";
    qv_json_schema *loose = compile(text), *tight = NULL;
    qv_error err = {0};
    assert_int_equal(
        qv_json_schema_compile_flags(text, strlen(text), QV_JSON_COMPACT, &tight, &err), QV_OK);
    assert_string_equal(qv_json_schema_text(tight) + strlen("compact:"),
                        qv_json_schema_text(loose));
    assert_true(qv_json_schema_hash(tight) != qv_json_schema_hash(loose));
    static const char *const spaced[] = {
        "{ \"a\":1}",     "{\"a\" :1}",          "{\"a\": 1}",         "{\"a\":1 }",
        "{\"a\":[1, 2]}", "{\"a\":{\"k\": 1}}",  "{\"a\":{\"k\":1 }}", "{\"b\":[ 1]}",
        "{\"b\":[1 ,2]}", "{\"a\":1,\n\"b\":[]}"};
    for (size_t i = 0; i < QV_ARRAY_LEN(spaced); i++) {
        assert_true(whole(loose, spaced[i]));
        assert_false(whole(tight, spaced[i]));
    }
    static const char *const compact[] = {"{\"a\":{\"k\":\"x y\\n z\"},\"b\":[1,2]}", "{}",
                                          "{\"a\":\" \"}", "{\"a\":[{\"q\":null}]}"};
    for (size_t i = 0; i < QV_ARRAY_LEN(compact); i++) {
        assert_true(whole(loose, compact[i]));
        assert_true(whole(tight, compact[i]));
    }
    qv_json_schema_unref(loose);
    qv_json_schema_unref(tight);
}

/* Tool calls: each function's parameters are a schema of their own. */
static void test_tool_calls(void **state) {
    (void)state;
    static const char tools[] =
        "[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":"
        "{\"type\":\"object\",\"properties\":{\"city\":{\"$ref\":\"#/$defs/City\"}},"
        "\"required\":[\"city\"],\"$defs\":{\"City\":{\"type\":\"string\",\"maxLength\":5}}}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"get\",\"parameters\":"
        "{\"type\":\"object\",\"properties\":{\"n\":{\"$ref\":\"#/$defs/City\"}},"
        "\"$defs\":{\"City\":{\"type\":\"integer\"}}}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"now\"}}]";
    qv_json_schema *one = NULL, *many = NULL;
    qv_error err = {0};
    assert_int_equal(qv_json_schema_compile_calls(tools, strlen(tools), false, 0, &one, &err),
                     QV_OK);
    assert_int_equal(qv_json_schema_compile_calls(tools, strlen(tools), true, 0, &many, &err),
                     QV_OK);
    static const char call1[] = "[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}]";
    assert_true(whole(one, call1));
    assert_true(whole(one, "[{\"name\":\"get\",\"arguments\":{\"n\":5}}]"));
    assert_true(whole(one, "[{\"name\":\"now\",\"arguments\":{}}]"));
    assert_true(whole(one, "[ {\"name\": \"get\", \"arguments\": {}} ]"));
    /* each $ref resolved in its own function's parameters */
    assert_false(whole(one, "[{\"name\":\"get\",\"arguments\":{\"n\":\"x\"}}]"));
    assert_false(whole(one, "[{\"name\":\"get_weather\",\"arguments\":{\"city\":5}}]"));
    assert_false(whole(one, "[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Lisbon\"}}]"));
    assert_false(whole(one, "[{\"name\":\"get_weather\",\"arguments\":{}}]"));
    assert_false(whole(one, "[{\"name\":\"now\",\"arguments\":{\"x\":1}}]"));
    assert_false(whole(one, "[{\"name\":\"nope\",\"arguments\":{}}]"));
    assert_false(whole(one, "[{\"name\":\"now\"}]"));
    assert_false(whole(one, "[]"));
    static const char two[] =
        "[{\"name\":\"now\",\"arguments\":{}},{\"name\":\"get\",\"arguments\":{}}]";
    assert_false(whole(one, two)); /* not parallel: one call */
    assert_true(whole(many, two));
    assert_true(whole(many, call1));
    assert_true(strncmp(qv_json_schema_text(one), "calls:", 6) == 0);
    assert_true(qv_json_schema_hash(one) != qv_json_schema_hash(many));
    qv_json_schema_unref(one);
    qv_json_schema_unref(many);

    /* parameters {} (any value): any object as arguments */
    static const char any[] = "[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                              "\"parameters\":{}}}]";
    assert_int_equal(qv_json_schema_compile_calls(any, strlen(any), true, 0, &one, &err), QV_OK);
    assert_true(whole(one, "[{\"name\":\"f\",\"arguments\":{\"x\":[1,{}]}}]"));
    assert_false(whole(one, "[{\"name\":\"f\",\"arguments\":[1]}]"));
    qv_json_schema_unref(one);

    /* a single tool: no anyOf at all */
    static const char single[] = "[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                                 "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":"
                                 "{\"type\":\"boolean\"}},\"required\":[\"a\"]}}}]";
    assert_int_equal(qv_json_schema_compile_calls(single, strlen(single), true, 0, &one, &err),
                     QV_OK);
    assert_true(whole(one, "[{\"name\":\"f\",\"arguments\":{\"a\":true}}]"));
    assert_false(whole(one, "[{\"name\":\"f\",\"arguments\":{\"a\":1}}]"));
    qv_json_schema_unref(one);

    static const struct {
        const char *tools;
        qv_status st;
        const char *msg;
    } bad[] = {
        {"[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
         "{\"type\":\"string\"}}}]",
         QV_ERR_INVALID, "must be an object schema"},
        {"[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":"
         "{\"type\":\"object\",\"not\":{}}}}]",
         QV_ERR_UNSUPPORTED, "'not'"},
        {"[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
         "{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]",
         QV_ERR_UNSUPPORTED, "one member"},
        {"[{\"type\":\"function\"}]", QV_ERR_INVALID, "no function name"},
        {"[]", QV_ERR_INVALID, "1 to 128"},
        {"{}", QV_ERR_INVALID, "1 to 128"},
        {"[", QV_ERR_INVALID, "not valid JSON"},
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        qv_json_schema *s = NULL;
        const qv_status st =
            qv_json_schema_compile_calls(bad[i].tools, strlen(bad[i].tools), true, 0, &s, &err);
        if (st != bad[i].st || !strstr(err.msg, bad[i].msg))
            fprintf(stderr, "%s: status %d, message '%s'\n", bad[i].tools, st, err.msg);
        assert_int_equal(st, bad[i].st);
        assert_null(s);
        assert_non_null(strstr(err.msg, bad[i].msg));
    }
}

/* The canonical text: the same schema written differently has one text and hash. */
static void test_text_and_refs(void **state) {
    (void)state;
    qv_json_schema *a = compile("{ \"type\" : \"object\" ,\n \"properties\": {\"x\": {}} }");
    qv_json_schema *b = compile("{\"type\":\"object\",\"properties\":{\"x\":{}}}");
    assert_string_equal(qv_json_schema_text(a), qv_json_schema_text(b));
    assert_true(qv_json_schema_hash(a) == qv_json_schema_hash(b));
    assert_ptr_equal(qv_json_schema_ref(a), a);
    qv_json_schema_unref(a);
    qv_json_schema_unref(a);
    qv_json_schema_unref(b);
    qv_json_schema_unref(NULL);
}

/* `format`: the enforced ones at their edges (the documented deviations included), an unknown
 * one as an annotation, pattern before format. */
static void test_formats(void **state) {
    (void)state;
    static const struct {
        const char *format, *text;
        bool ok;
    } cases[] = {
        {"date", "\"2026-11-29\"", true},
        {"date", "\"2024-02-29\"", true},
        {"date", "\"2023-02-29\"", true}, /* documented: 29 February of any year */
        {"date", "\"0000-01-01\"", true}, /* documented: year 0000 */
        {"date", "\"2024-02-30\"", false},
        {"date", "\"2024-04-31\"", false},
        {"date", "\"2024-13-01\"", false},
        {"date", "\"2024-00-10\"", false},
        {"date", "\"2024-1-01\"", false},
        {"date", "\"2024-01-01T00:00:00Z\"", false},
        {"date-time", "\"2026-11-29T22:30:00Z\"", true},
        {"date-time", "\"2026-11-29t22:30:00.123456+05:30\"", true},
        {"date-time", "\"2026-11-29T22:30:00\"", false}, /* RFC 3339 needs an offset */
        {"date-time", "\"2026-11-29T24:00:00Z\"", false},
        {"date-time", "\"2026-11-29T23:59:60Z\"", false},
        {"date-time", "\"2026-11-29 22:30:00Z\"", false},
        {"date-time", "\"2026-11-29T22:30:00.Z\"", false},
        {"time", "\"23:59:59-08:00\"", true},
        {"time", "\"23:59:59+24:00\"", false},
        {"time", "\"7:00:00Z\"", false},
        {"uuid", "\"123e4567-E89B-12d3-a456-426614174000\"", true},
        {"uuid", "\"123e4567e89b12d3a456426614174000\"", false},
        {"uuid", "\"123e4567-e89b-12d3-a456-42661417400g\"", false},
        {"ipv4", "\"255.255.255.255\"", true},
        {"ipv4", "\"0.0.0.0\"", true},
        {"ipv4", "\"256.0.0.1\"", false},
        {"ipv4", "\"01.2.3.4\"", false},
        {"ipv4", "\"1.2.3\"", false},
        {"email", "\"a.b+c@mail-1.example.org\"", true},
        {"email", "\"a@b\"", false},
        {"email", "\"a@-b.c\"", false},
        {"email", "\"a b@c.d\"", false},
        {"uri", "\"https://example.com/a%20b?q=1#f\"", true},
        {"uri", "\"not a uri\"", false},
        {"uri", "\"https://example.com/a b\"", false},
        {"duration", "\"P1Y2M3DT4H5M6S\"", true},
        {"duration", "\"P1Y3D\"", true},
        {"duration", "\"P1DT1H1S\"", true},
        {"duration", "\"PT36H\"", true},
        {"duration", "\"P2W\"", true},
        {"duration", "\"P1W2D\"", false}, /* weeks stand alone */
        {"duration", "\"P\"", false},
        {"duration", "\"PT\"", false},
        {"duration", "\"P1DT\"", false},
        {"duration", "\"P1S\"", false},
        {"duration", "\"p1y\"", false},
        {"duration", "\"P0.5Y\"", false}, /* documented: whole numbers only */
        {"duration", "\"P999999DT999999H\"", true},
        {"duration", "\"P1234567D\"", false},     /* documented: at most 6 digits */
        {"uri-reference", "\"not a uri\"", true}, /* not enforced: an annotation */
        {"no-such-format", "\"x\"", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char schema[128];
        snprintf(schema, sizeof(schema), "{\"type\":\"string\",\"format\":\"%s\"}",
                 cases[i].format);
        qv_json_schema *sch = compile(schema);
        if (whole(sch, cases[i].text) != cases[i].ok)
            fprintf(stderr, "format %s: %s should be %s\n", cases[i].format, cases[i].text,
                    cases[i].ok ? "accepted" : "refused");
        assert_int_equal(whole(sch, cases[i].text), cases[i].ok);
        qv_json_schema_unref(sch);
    }
    /* a pattern wins over a format; a format does not make a non-string invalid */
    qv_json_schema *sch = compile("{\"type\":\"string\",\"format\":\"date\",\"pattern\":\"^x$\"}");
    assert_true(whole(sch, "\"x\""));
    assert_false(whole(sch, "\"2026-11-29\""));
    qv_json_schema_unref(sch);
    qv_json_schema *sch2 = NULL;
    sch = compile("{\"type\":[\"string\",\"integer\"],\"format\":\"ipv4\"}");
    assert_true(whole(sch, "17"));
    assert_true(whole(sch, "\"1.2.3.4\""));
    assert_false(whole(sch, "\"1.2.3.4.5\""));
    qv_json_schema_unref(sch);
    sch = compile("{\"type\":\"string\",\"format\":\"date\",\"maxLength\":9}");
    assert_false(whole(sch, "\"2026-11-29\"")); /* both apply */
    qv_json_schema_unref(sch);
    /* a character still being read must be able to become one the pattern takes: no dead end
     * after "\u2" or a UTF-8 lead byte where only T / t can come */
    sch = compile("{\"type\":\"string\",\"format\":\"date-time\"}");
    assert_true(whole(sch, "\"2026-11-29T22:30:00Z\""));
    assert_false(whole(sch, "\"2026-11-29\\u0054\\u0032\\u0032:30:00Z\"")); /* written plainly */
    static const char *const dead[] = {"\"2026-11-29\\",   "\"2026-11-29\\u0", "\"2026-11-29\\u2",
                                       "\"2026-11-29\xE2", "\"2026-11-29\xC3", "\"2026-11-29\\n"};
    sch2 = compile("{\"type\":\"string\",\"pattern\":\"^[a\u00e9\u4e2d\\\\n]+$\"}");
    static const char *const alive[] = {"\"\\",   "\"\\u",    "\"\\u0", "\"\\u00",   "\"\\u00e",
                                        "\"\\u4", "\"\\u4e2", "\"\xE4", "\"\xE4\xB8"};
    for (size_t i = 0; i < sizeof(dead) / sizeof(dead[0]); i++) {
        qv_json_sstate st;
        qv_json_schema_init(sch, &st);
        const bool fed = feeds(sch, &st, dead[i]);
        if (fed) fprintf(stderr, "dead end accepted: %s\n", dead[i]);
        assert_false(fed);
    }
    for (size_t i = 0; i < sizeof(alive) / sizeof(alive[0]); i++) {
        qv_json_sstate st;
        qv_json_schema_init(sch2, &st);
        const bool fed = feeds(sch2, &st, alive[i]);
        if (!fed) fprintf(stderr, "refused: %s\n", alive[i]);
        assert_true(fed);
    }
    qv_json_schema_unref(sch);
    qv_json_schema_unref(sch2);
}

/* No dead ends: random walks over an alphabet that covers the patterns (with the escape and
 * UTF-8 bytes a model may write) never reach an accepted prefix from which no byte of the
 * alphabet goes on, unless the document is done. Strings with a pattern, a format and a
 * maxLength the pattern must be met within. */
static void test_no_dead_ends(void **state) {
    (void)state;
    static const char *const schemas[] = {
        "{\"type\":\"string\",\"format\":\"date-time\"}",
        "{\"type\":\"string\",\"format\":\"email\",\"maxLength\":9}",
        "{\"type\":\"string\",\"pattern\":\"^a+b$\",\"maxLength\":3}",
        "{\"type\":\"string\",\"format\":\"ipv4\",\"maxLength\":9}",
        "{\"type\":\"string\",\"pattern\":\"ab\",\"maxLength\":4}",
        "{\"type\":\"string\",\"format\":\"uuid\"}",
    };
    static const char alphabet[] = "\"\\u0123456789abcdefABTZtz-:.+@x \xC3\xA9\xE2\x82\xAC";
    const size_t na = sizeof(alphabet) - 1;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    size_t walks = 0, done = 0;
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++) {
        qv_json_schema *sch = compile(schemas[i]);
        for (int w = 0; w < 3000; w++, walks++) {
            qv_json_sstate st;
            qv_json_schema_init(sch, &st);
            char text[128];
            size_t n = 0;
            while (!qv_json_schema_done(sch, &st) && n < sizeof(text) - 1) {
                uint8_t ok[64];
                size_t k = 0;
                for (size_t a = 0; a < na; a++) {
                    qv_json_sstate t = st;
                    if (qv_json_schema_feed(sch, &t, (const uint8_t *)alphabet + a, 1))
                        ok[k++] = (uint8_t)alphabet[a];
                }
                if (!k) {
                    text[n] = 0;
                    fprintf(stderr, "%s: dead end after %s\n", schemas[i], text);
                }
                assert_true(k > 0);
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                const uint8_t c = ok[(rng >> 33) % k];
                assert_true(qv_json_schema_feed(sch, &st, &c, 1));
                text[n++] = (char)c;
            }
            done += qv_json_schema_done(sch, &st);
        }
        qv_json_schema_unref(sch);
    }
    fprintf(stderr, "no dead ends: %zu random walks, %zu whole documents\n", walks, done);
    assert_true(done > walks / 2);
}

/* The same property over every fixture schema (and each compiled compact too): random walks
 * over the bytes of JSON, digits, whitespace, every byte of the schema's own text (its keys,
 * enum values and pattern characters) and a few non-ASCII characters never reach a prefix
 * from which no byte goes on while the document is unfinished. */
static void test_no_dead_ends_fixtures(void **state) {
    (void)state;
    cJSON *root = json_read_fixture("tests/fixtures/json_schema/cases.json");
    assert_non_null(root);
    uint64_t rng = 12345;
    size_t walks = 0, done = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        char *text = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "schema"));
        bool seen[256] = {false};
        uint8_t alphabet[256];
        size_t na = 0;
        static const char base[] = "{}[],:\"\\/ \n\t0123456789.-+eEtrufalsn\xC3\xA9\xE4\xB8\xAD";
        for (const char *p = base; *p; p++)
            if (!seen[(uint8_t)*p]) seen[(uint8_t)*p] = true, alphabet[na++] = (uint8_t)*p;
        for (const char *p = text; *p; p++)
            if (!seen[(uint8_t)*p]) seen[(uint8_t)*p] = true, alphabet[na++] = (uint8_t)*p;
        for (int compact = 0; compact < 2; compact++) {
            qv_json_schema *sch = NULL;
            qv_error err = {0};
            assert_int_equal(qv_json_schema_compile_flags(
                                 text, strlen(text), compact ? QV_JSON_COMPACT : 0, &sch, &err),
                             QV_OK);
            for (int w = 0; w < 150; w++, walks++) {
                qv_json_sstate st;
                qv_json_schema_init(sch, &st);
                for (int n = 0; n < 600 && !qv_json_schema_done(sch, &st); n++) {
                    uint8_t ok[256];
                    size_t k = 0;
                    for (size_t a = 0; a < na; a++) {
                        qv_json_sstate t = st;
                        if (qv_json_schema_feed(sch, &t, alphabet + a, 1)) ok[k++] = alphabet[a];
                    }
                    if (!k)
                        fprintf(stderr, "%s (compact %d): dead end after %d bytes\n", text, compact,
                                n);
                    assert_true(k > 0);
                    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                    uint8_t pick = ok[(rng >> 33) % k];
                    /* one step in three closes what it can, so that walks get far */
                    for (size_t a = 0; a < k && (rng >> 20) % 3 == 0; a++)
                        if (ok[a] == '"' || ok[a] == '}' || ok[a] == ']') pick = ok[a];
                    assert_true(qv_json_schema_feed(sch, &st, &pick, 1));
                }
                done += qv_json_schema_done(sch, &st);
            }
            qv_json_schema_unref(sch);
        }
        cJSON_free(text);
    }
    fprintf(stderr, "no dead ends (fixture schemas): %zu random walks, %zu whole documents\n",
            walks, done);
    cJSON_Delete(root);
}

/* minProperties / maxProperties: counted in maps (every member); in objects with declared
 * properties accepted where they always hold, refused elsewhere. */
static void test_property_counts(void **state) {
    (void)state;
    qv_json_schema *sch = compile("{\"additionalProperties\":{\"type\":\"integer\"},"
                                  "\"minProperties\":1,\"maxProperties\":2}");
    assert_false(whole(sch, "{}"));
    assert_true(whole(sch, "{\"a\":1}"));
    assert_true(whole(sch, "{\"a\":1, \"b\":2}"));
    assert_true(whole(sch, "{\"a\":1,\"a\":2}")); /* each occurrence counts */
    assert_false(whole(sch, "{\"a\":1,\"b\":2,\"c\":3}"));
    qv_json_sstate st;
    qv_json_schema_init(sch, &st);
    assert_true(feeds(sch, &st, "{\"a\":1,\"b\":2"));
    assert_false(feeds(sch, &st, ",")); /* refused at the comma, not later */
    qv_json_schema_unref(sch);
    sch = compile("{\"additionalProperties\":{\"type\":\"integer\"},\"maxProperties\":0}");
    assert_true(whole(sch, "{ }"));
    assert_false(whole(sch, "{\"a\":1}"));
    qv_json_schema_unref(sch);
    sch = compile("{\"properties\":{\"a\":{},\"b\":{}},\"required\":[\"a\"],"
                  "\"minProperties\":1,\"maxProperties\":5}");
    assert_true(whole(sch, "{\"a\":1}"));
    assert_true(whole(sch, "{\"a\":1,\"b\":2}"));
    qv_json_schema_unref(sch);
    static const struct {
        const char *schema, *msg;
    } refused[] = {
        {"{\"properties\":{\"a\":{},\"b\":{}},\"minProperties\":1}", "required properties"},
        {"{\"properties\":{\"a\":{},\"b\":{}},\"maxProperties\":1}", "below the number"},
        {"{\"type\":\"object\",\"minProperties\":1}", "need 'properties'"},
        {"{\"additionalProperties\":{},\"minProperties\":3,\"maxProperties\":2}",
         "above maxProperties"},
        {"{\"additionalProperties\":{},\"maxProperties\":-1}", "maxProperties"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        qv_json_schema *r = NULL;
        qv_error err = {0};
        assert_int_not_equal(
            qv_json_schema_compile(refused[i].schema, strlen(refused[i].schema), &r, &err), QV_OK);
        if (!strstr(err.msg, refused[i].msg))
            fprintf(stderr, "%s: '%s'\n", refused[i].schema, err.msg);
        assert_non_null(strstr(err.msg, refused[i].msg));
        assert_null(r);
    }
}

/* guided_regex documents (qv_json_schema_compile_regex) against Python's re.fullmatch
 * (tests/fixtures/json_schema/regex_docs.json, tests/oracle/gen_regex_doc_fixtures.py): a text
 * matches when every byte feeds, in one-byte steps and in random chunks, and the end is whole;
 * from every state a random walk reaches, some byte goes on or the text may end (no dead end). */
static void test_regex_docs(void **state) {
    (void)state;
    qv_error err = {0};
    cJSON *root = json_read_fixture("tests/fixtures/json_schema/regex_docs.json");
    assert_non_null(root);
    uint64_t rng = 7;
    int n_docs = 0, n_match = 0, n_walks = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *pattern = cJSON_GetObjectItem(c, "pattern")->valuestring;
        qv_json_schema *sch = NULL;
        if (qv_json_schema_compile_regex(pattern, strlen(pattern), &sch, &err) != QV_OK)
            fail_msg("%s: %s", pattern, err.msg);
        assert_non_null(strstr(qv_json_schema_text(sch), "regex:"));
        const cJSON *d;
        cJSON_ArrayForEach(d, cJSON_GetObjectItem(c, "docs")) {
            const char *t = cJSON_GetObjectItem(d, "text")->valuestring;
            const bool want = cJSON_IsTrue(cJSON_GetObjectItem(d, "match"));
            const size_t n = strlen(t);
            for (size_t chunk = 1; chunk <= 5; chunk += 4) {
                bool done = false;
                const size_t fed = feed_all(sch, (const uint8_t *)t, n, chunk, &rng, &done);
                if ((fed == n && done) != want)
                    fail_msg("pattern %s, text '%s' (chunks of %zu): %s, Python says %s", pattern,
                             t, chunk, fed == n && done ? "matches" : "does not match",
                             want ? "match" : "no match");
            }
            n_docs++;
            n_match += want;
        }
        for (int w = 0; w < 40; w++, n_walks++) { /* random walks over the accepted bytes */
            qv_json_sstate s;
            qv_json_schema_init(sch, &s);
            for (int step = 0; step < 40; step++) {
                uint8_t ok[256];
                int n_ok = 0;
                for (int b = 0; b < 256; b++) {
                    const uint8_t by = (uint8_t)b;
                    if (qv_json_schema_accepts(sch, &s, &by, 1)) ok[n_ok++] = by;
                }
                if (!n_ok && !qv_json_schema_done(sch, &s))
                    fail_msg("pattern %s: a dead end after %d bytes", pattern, step);
                if (!n_ok) break;
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                assert_true(qv_json_schema_feed(sch, &s, &ok[(rng >> 33) % (uint64_t)n_ok], 1));
            }
        }
        qv_json_schema_unref(sch);
    }
    printf("regex documents: %d texts (%d match) as Python judges them, %d walks without a "
           "dead end\n",
           n_docs, n_match, n_walks);
    assert_true(n_docs > 500 && n_match > 100);
    cJSON_Delete(root);
    /* anchors as written or implied; a literal \$ is not an anchor; refusals */
    static const struct {
        const char *pattern, *text;
        bool match;
    } hand[] = {{"^ab$", "ab", true},    {"ab", "xab", false},
                {"ab", "abx", false},    {"a\\$", "a$", true},
                {"a\\\\$", "a\\", true}, {"", "", true},
                {"", "a", false},        {"x|", "", true},
                {"é+", "éé", true},      {"[^a]", "\xf0\x9f\x98\x80", true},
                {"[^a]", "\xc3", false}};
    for (size_t i = 0; i < QV_ARRAY_LEN(hand); i++) {
        qv_json_schema *sch = NULL;
        assert_int_equal(
            qv_json_schema_compile_regex(hand[i].pattern, strlen(hand[i].pattern), &sch, &err),
            QV_OK);
        bool done = false;
        const size_t n = strlen(hand[i].text);
        const size_t fed = feed_all(sch, (const uint8_t *)hand[i].text, n, 1, &rng, &done);
        if ((fed == n && done) != hand[i].match)
            fail_msg("hand case %zu: /%s/ on '%s'", i, hand[i].pattern, hand[i].text);
        qv_json_schema_unref(sch);
    }
    /* counts past the old 62-position automaton: 1,000 letters exactly, and a pattern that must
     * remember its last 10 characters (a DFA of 2^10 subsets) */
    {
        char text[1002];
        memset(text, 'q', sizeof(text));
        qv_json_schema *sch = NULL;
        assert_int_equal(qv_json_schema_compile_regex("[a-z]{1000}", 11, &sch, &err), QV_OK);
        for (size_t n = 999; n <= 1001; n++) {
            bool done = false;
            const size_t fed = feed_all(sch, (const uint8_t *)text, n, 7, &rng, &done);
            assert_int_equal(fed == n && done, n == 1000);
        }
        qv_json_schema_unref(sch);
        assert_int_equal(qv_json_schema_compile_regex("[ab]*a[ab]{9}", 13, &sch, &err), QV_OK);
        const char *yes = "bbbabbbbbbbbb", *no = "bbabbbbbbbbbb";
        bool done = false;
        assert_int_equal(feed_all(sch, (const uint8_t *)yes, 13, 1, &rng, &done), 13);
        assert_true(done);
        done = false;
        assert_int_equal(feed_all(sch, (const uint8_t *)no, 13, 1, &rng, &done), 13);
        assert_false(done);
        qv_json_schema_unref(sch);
    }
    /* allocation failure at every point: NOMEM and nothing held, until it compiles (the second
     * pattern's 513 states grow the automaton's tables and rehash its state set) */
    static const char *const grown[] = {"a+b?", "[ab]*a[ab]{8}"};
    for (size_t i = 0; i < QV_ARRAY_LEN(grown); i++) {
        int failures = 0;
        for (long k = 0; k < 200; k++) {
            qv_json_schema *sch = NULL;
            qv_alloc_fail_after(k);
            const qv_status st =
                qv_json_schema_compile_regex(grown[i], strlen(grown[i]), &sch, &err);
            qv_alloc_fail_after(-1);
            if (st == QV_OK) {
                qv_json_schema_unref(sch);
                break;
            }
            assert_int_equal(st, QV_ERR_NOMEM);
            assert_null(sch);
            failures++;
        }
        assert_true(failures > 3 + 10 * (int)i && failures < 200);
    }
    static const char *const refused[] = {"(a)\\1", "(?=a)b", "a{2,1}",
                                          "\xc3",   "(ab",    "[ab]*a[ab]{20}"};
    for (size_t i = 0; i < QV_ARRAY_LEN(refused); i++) {
        qv_json_schema *sch = NULL;
        const qv_status st =
            qv_json_schema_compile_regex(refused[i], strlen(refused[i]), &sch, &err);
        if (st != QV_ERR_INVALID && st != QV_ERR_UNSUPPORTED && st != QV_ERR_LIMIT)
            fail_msg("'%s' compiled (%d)", refused[i], st);
        assert_null(sch);
        assert_true(err.msg[0] != '\0');
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jsonschema_verdicts),
        cmocka_unit_test(test_object_schema_is_json_mode),
        cmocka_unit_test(test_equal_positions),
        cmocka_unit_test(test_hand_cases),
        cmocka_unit_test(test_string_shortcut),
        cmocka_unit_test(test_choices),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_text_and_refs),
        cmocka_unit_test(test_tagged_positions),
        cmocka_unit_test(test_tool_calls),
        cmocka_unit_test(test_compact),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_no_dead_ends),
        cmocka_unit_test(test_no_dead_ends_fixtures),
        cmocka_unit_test(test_property_counts),
        cmocka_unit_test(test_regex_docs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
