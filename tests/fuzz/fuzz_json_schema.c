/*
 * fuzz_json_schema.c - fuzz target for the structured-output schema compiler and recogniser
 * (engine/json_grammar.c): request schemas come from clients. The input is a schema's text, a
 * NUL byte, then a document; the text is also compiled as a tools list (tool calls) and as a
 * guided_regex pattern (a raw-text document), and compact when the document's length is odd.
 * Invariants checked: no crash or sanitizer report; a refused schema carries a message; a refused
 * byte leaves the state unchanged; a state that says the document is complete at depth 0 refuses
 * every further byte; the string shortcut (qv_json_schema_string_room) agrees with feeding plain
 * characters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine/core.h"
#include "engine/json_grammar.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "fuzz_json_schema: check failed at line %d: %s\n", __LINE__, #x);      \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Feeds the document byte by byte (skipping refused bytes), checking the invariants. */
static void run(const qv_json_schema *sch, const uint8_t *doc, size_t n_doc, bool raw) {
    CHECK(qv_json_schema_text(sch) != NULL);
    qv_json_sstate s;
    qv_json_schema_init(sch, &s);
    static const uint8_t probe[] = "ab";
    for (size_t i = 0; i < n_doc; i++) {
        const int32_t room = qv_json_schema_string_room(sch, &s);
        if (room >= 0) {
            qv_json_sstate t = s;
            CHECK(qv_json_schema_feed(sch, &t, probe, 2) == (room >= 2));
        }
        qv_json_sstate before = s;
        if (!qv_json_schema_feed(sch, &s, doc + i, 1)) {
            CHECK(!memcmp(&before, &s, sizeof s));
            continue; /* skip the byte, try the rest */
        }
        if (raw && !qv_json_schema_done(sch, &s)) { /* a regex document has no dead end */
            bool more = false;
            for (int b = 0; b < 256 && !more; b++) {
                const uint8_t by = (uint8_t)b;
                more = qv_json_schema_accepts(sch, &s, &by, 1);
            }
            CHECK(more);
        }
        if (s.depth == 0) {
            CHECK(qv_json_schema_done(sch, &s));
            qv_json_sstate t = s;
            CHECK(!qv_json_schema_feed(sch, &t, (const uint8_t *)" ", 1));
            CHECK(!qv_json_schema_feed(sch, &t, (const uint8_t *)"1", 1));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int hooked;
    if (!hooked) {
        cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
        cJSON_InitHooks(&hooks);
        hooked = 1;
    }
    const uint8_t *nul = memchr(data, 0, size);
    const size_t n_schema = nul ? (size_t)(nul - data) : size;
    const uint8_t *doc = nul ? nul + 1 : data + size;
    const size_t n_doc = (size_t)(data + size - doc);
    /* the schema, compact when the document's length is odd, and the same text as a tools
     * list (tool calls) */
    const unsigned flags = n_doc & 1 ? QV_JSON_COMPACT : 0;
    for (int kind = 0; kind < 3; kind++) {
        qv_json_schema *sch = NULL;
        qv_error err = {0};
        const qv_status st =
            kind == 1 ? qv_json_schema_compile_calls((const char *)data, n_schema, n_doc & 2, flags,
                                                     &sch, &err)
            : kind == 2
                ? qv_json_schema_compile_regex((const char *)data, n_schema, &sch, &err)
                : qv_json_schema_compile_flags((const char *)data, n_schema, flags, &sch, &err);
        if (st != QV_OK) {
            CHECK(sch == NULL && err.msg[0]);
            continue;
        }
        run(sch, doc, n_doc, kind == 2);
        qv_json_schema_unref(sch);
    }
    return 0;
}
