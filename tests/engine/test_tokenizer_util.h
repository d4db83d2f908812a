/*
 * test_tokenizer_util.h - helpers shared by the tokenizer tests: reading the JSON fixtures of
 * tests/oracle/gen_tokenizer_fixtures.py, hex strings, id-array comparison with a readable
 * first-difference report.
 */
#ifndef QV_TEST_TOKENIZER_UTIL_H
#define QV_TEST_TOKENIZER_UTIL_H

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "test_util.h"
#include "tokenizer.h"

#define QV_SMOLLM2_GGUF_REL ".cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf"

static inline cJSON *tt_load_json(const char *rel) {
    char *s = NULL;
    size_t n = 0;
    qv_error err = {0};
    if (qv_read_file(qv_test_path(rel), 64u << 20, &s, &n, &err)) {
        fprintf(stderr, "cannot read %s: %s\n", rel, err.msg);
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(s, n);
    qv_free(s);
    return j;
}

/* Hex string -> malloc'd bytes (NUL-terminated); *n = length. */
static inline char *tt_unhex(const char *h, size_t *n) {
    size_t l = strlen(h) / 2;
    char *b = malloc(l + 1);
    for (size_t i = 0; i < l; i++) {
        unsigned v;
        sscanf(h + 2 * i, "%2x", &v);
        b[i] = (char)v;
    }
    b[l] = 0;
    *n = l;
    return b;
}

static inline void tt_print_bytes(const char *label, const char *s, size_t n) {
    fprintf(stderr, "    %s (%zu bytes): \"", label, n);
    for (size_t i = 0; i < n && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fprintf(stderr, "%s\"\n", n > 200 ? "..." : "");
}

/* Compares ids with a JSON array; prints the first difference. Returns true when equal. */
static inline bool tt_ids_equal(const char *what, const char *text, size_t text_len,
                                const int32_t *got, size_t n, const cJSON *want) {
    size_t wn = (size_t)cJSON_GetArraySize(want);
    size_t i = 0;
    const cJSON *it;
    bool ok = wn == n;
    cJSON_ArrayForEach(it, want) {
        if (i >= n || got[i] != (int32_t)it->valuedouble) {
            ok = false;
            break;
        }
        i++;
    }
    if (ok) return true;
    fprintf(stderr, "  MISMATCH %s: first difference at index %zu (got %zu ids, want %zu)\n", what,
            i, n, wn);
    tt_print_bytes("text", text, text_len);
    fprintf(stderr, "    got :");
    for (size_t k = i >= 3 ? i - 3 : 0; k < n && k < i + 6; k++)
        fprintf(stderr, " %d", got[k]);
    fprintf(stderr, "\n    want:");
    for (size_t k = i >= 3 ? i - 3 : 0; k < wn && k < i + 6; k++)
        fprintf(stderr, " %d", (int)cJSON_GetArrayItem(want, (int)k)->valuedouble);
    fprintf(stderr, "\n");
    return false;
}

static inline bool tt_bytes_equal(const char *what, const char *input, size_t input_len,
                                  const char *got, size_t gn, const char *want_hex) {
    size_t wn;
    char *want = tt_unhex(want_hex, &wn);
    bool ok = gn == wn && !memcmp(got, want, wn);
    if (!ok) {
        fprintf(stderr, "  MISMATCH %s\n", what);
        tt_print_bytes("input", input, input_len);
        tt_print_bytes("got ", got, gn);
        tt_print_bytes("want", want, wn);
    }
    free(want);
    return ok;
}

#endif
