/*
 * json_grammar.h - a byte-level recogniser of JSON text prefixes (RFC 8259), used to constrain
 * generation to one JSON object (OpenAI `response_format: {"type": "json_object"}`): before a
 * constrained sequence samples, every token whose bytes would leave the text no valid
 * continuation is masked, and once the object is closed only end-of-generation tokens remain.
 *
 * What it is not: not a parser (it builds nothing, reads no values) and not a schema validator.
 * The top-level value must be an object; strings must be valid UTF-8 without raw control
 * characters; nesting is limited to QV_JSON_MAX_DEPTH containers. Stricter than RFC 8259 on
 * whitespace, so that a model cannot pad forever: none before the opening '{' or after the
 * closing '}', and at most QV_JSON_MAX_WS bytes in a row elsewhere outside strings.
 *
 * Invariants: a qv_json_state is a small value (copy it to try bytes); qv_json_feed leaves it
 * unchanged when it returns false. Thread: pure functions on caller-owned state.
 */
#ifndef QV_JSON_GRAMMAR_H
#define QV_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QV_JSON_MAX_DEPTH 64
#define QV_JSON_MAX_WS 32

/* No implicit padding (reserved is zeroed by qv_json_init and kept by qv_json_feed), so two
 * states are equal exactly when their bytes are (memcmp): the engine caches masks by state. */
typedef struct qv_json_state {
    uint64_t arrays;     /* bit d: the container at depth d is an array (else an object) */
    uint8_t depth;       /* open containers */
    uint8_t mode;        /* what comes next (json_grammar.c: enum mode) */
    uint8_t sub;         /* number part, literal index, or escape state of a string */
    uint8_t lit;         /* which literal (true, false, null) */
    uint8_t ws;          /* whitespace bytes in a row */
    uint8_t utf8;        /* UTF-8 continuation bytes still expected in a string */
    uint8_t lo, hi;      /* the range of the next continuation byte */
    uint8_t key;         /* 1: the string being read is an object key */
    uint8_t reserved[7]; /* zero */
} qv_json_state;

/* The state before the first byte (which must be '{'). */
void qv_json_init(qv_json_state *s);

/* Feeds n bytes. Returns true when the text so far is still a prefix of some JSON object
 * (s advanced), false otherwise (s unchanged). n == 0 returns true. */
bool qv_json_feed(qv_json_state *s, const uint8_t *p, size_t n);

/* Whether a whole object has been read (only the end of the text may follow). */
bool qv_json_done(const qv_json_state *s);

#ifdef __cplusplus
}
#endif

#endif /* QV_JSON_GRAMMAR_H */
