/*
 * json_grammar.h - byte-level recognisers of JSON text prefixes (RFC 8259), used to constrain
 * generation: before a constrained sequence samples, every token whose bytes would leave the
 * text no valid continuation is masked, and once the value is complete only end-of-generation
 * tokens remain.
 *
 * Two recognisers:
 * - qv_json_state: one JSON object of any shape (OpenAI `response_format: {"type":
 *   "json_object"}`). Not a parser (it builds nothing, reads no values). Strings must be valid
 *   UTF-8 without raw control characters; nesting is limited to QV_JSON_MAX_DEPTH containers.
 *   Stricter than RFC 8259 on whitespace, so that a model cannot pad forever: none before the
 *   opening '{' or after the closing '}', and at most QV_JSON_MAX_WS bytes in a row elsewhere
 *   outside strings.
 * - qv_json_schema + qv_json_sstate: one JSON value valid under a JSON Schema (OpenAI
 *   `response_format: {"type": "json_schema"}`), compiled from the supported subset
 *   documented at qv_json_schema_compile. Same whitespace rules; an object's properties come
 *   in the schema's order; values the schema leaves free use the first recogniser.
 *
 * Invariants: states are small values (copy them to try bytes); a feed leaves the state
 * unchanged when it returns false; equal grammar positions are equal bytes (memcmp), because
 * the engine caches masks by state. A compiled schema is immutable and reference counted.
 * Thread: pure functions on caller-owned state; a schema may be shared by threads.
 */
#ifndef QV_JSON_GRAMMAR_H
#define QV_JSON_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

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

/* ---- JSON Schema ---- */

#define QV_JSON_SCHEMA_MAX_FRAMES 24  /* nested schema containers in one document */
#define QV_JSON_SCHEMA_MAX_NODES 4096 /* compiled schema nodes */
#define QV_JSON_SCHEMA_MAX_BYTES (256u * 1024u)

typedef struct qv_json_schema qv_json_schema;

/* One open schema container (or the value being read) of a qv_json_sstate. */
typedef struct qv_json_frame {
    uint16_t node; /* compiled schema node */
    uint8_t phase; /* where in it (json_grammar.c) */
    uint8_t cur;   /* property or enum value being read */
    uint16_t a, b; /* counters: items or characters so far, bytes of a key or literal matched */
} qv_json_frame;

/* No implicit padding; unused frames and the leaf when no free value is being read are zero,
 * so equal positions compare equal with memcmp. */
typedef struct qv_json_sstate {
    qv_json_state leaf; /* the value being read when the top frame is free JSON or a scalar */
    uint8_t depth;      /* frames in use; 0: the document is complete */
    uint8_t ws;         /* whitespace bytes in a row between tokens */
    uint8_t reserved[2];
    uint32_t cp; /* a string with a pattern: the code point being decoded */
    uint64_t re; /* and its pattern's match so far (json_regex.h) */
    qv_json_frame f[QV_JSON_SCHEMA_MAX_FRAMES];
} qv_json_sstate;

/* Compiles a JSON Schema given as JSON text (len bytes, need not be NUL-terminated) into *out
 * (one reference). Supported:
 * - type (a name or a list of names: object, array, string, number, integer, boolean, null);
 *   without type, it is inferred from the keywords (properties -> object, items -> array,
 *   minLength/maxLength/pattern -> string, bounds -> number), else any value;
 * - object: properties (written in the schema's order; only declared properties are written),
 *   required, additionalProperties (false, true, or a schema when there are no properties:
 *   free keys with values under it); an object with neither is any object;
 * - array: items, minItems, maxItems; string: minLength, maxLength (characters; an escape
 *   counts as one), pattern (json_regex.h; matched on the decoded characters); integer: no fraction
 * or exponent; numbers: minimum, maximum, exclusiveMinimum, exclusiveMaximum (within +-2^31, whole
 * numbers for type number; a bounded number is written without exponent);
 * - enum and const (values written compactly, as Python's json.dumps(separators=(',', ':'),
 *   ensure_ascii=False) would, keys in their given order);
 * - anyOf / oneOf (at most 128 members) whose alternatives begin with different bytes (an
 *   object, an array, a string, a number, a boolean, null: Optional[X] is fine), except for
 *   objects told apart by their first property: required, of the same name in each, a string
 *   enum or const with values in one member only (a discriminated union);
 *   allOf with one member;
 * - $ref to "#", "#/$defs/..." or "#/definitions/..." (JSON pointers into this document),
 *   recursion included (nesting is limited to QV_JSON_SCHEMA_MAX_FRAMES);
 * - annotations are ignored: title, description, default, examples, format, $schema, $id,
 *   $comment, $defs, definitions, readOnly, writeOnly, deprecated, contentEncoding,
 *   contentMediaType.
 * Any other keyword, a malformed schema or one over the limits: QV_ERR_INVALID or
 * QV_ERR_UNSUPPORTED with a message naming the keyword and where it is. */
qv_status qv_json_schema_compile(const char *text, size_t len, qv_json_schema **out, qv_error *err);
/* Flags of the compilers below. QV_JSON_COMPACT: no whitespace outside strings (vLLM's
 * disable_any_whitespace), so the document is compact JSON; part of the canonical text. */
#define QV_JSON_COMPACT 1u
qv_status qv_json_schema_compile_flags(const char *text, size_t len, unsigned flags,
                                       qv_json_schema **out, qv_error *err);
/* vLLM's guided_choice: text is a JSON array of 1..255 non-empty strings; the document is one
 * of them, as raw text (not JSON), byte for byte. Same limits and errors as above. */
qv_status qv_json_schema_compile_choice(const char *text, size_t len, qv_json_schema **out,
                                        qv_error *err);
/* vLLM's guided_regex (TGI's regex grammar): the document is raw text (not JSON), valid UTF-8,
 * whose characters match the pattern (len bytes) as a whole: json_regex.h's dialect and
 * position limit, anchored at both ends (a leading ^ and a trailing $ may be written). A
 * character can only be begun when some way to finish the match remains. Errors as
 * qv_regex_compile (QV_ERR_UNSUPPORTED for what it refuses, QV_ERR_LIMIT over its positions),
 * QV_ERR_INVALID for text that is not UTF-8, QV_ERR_LIMIT over QV_JSON_SCHEMA_MAX_BYTES. */
qv_status qv_json_schema_compile_regex(const char *pattern, size_t len, qv_json_schema **out,
                                       qv_error *err);
/* Tool calls (OpenAI tool_choice "required"): tools is the JSON text of an OpenAI `tools`
 * list ({"type": "function", "function": {"name", "parameters"}}; 1..128 functions, names
 * distinct); the document is a JSON array of 1 (parallel: 1 or more) calls
 * {"name": <one of the names>, "arguments": <an object valid under its parameters>}. Each
 * function's parameters are a schema of their own (their $refs start there); absent
 * parameters take no arguments ({}), empty ones ({}) any object. Same subset, limits and
 * errors as above; parameters
 * that allow other values than objects are QV_ERR_INVALID. */
qv_status qv_json_schema_compile_calls(const char *tools, size_t len, bool parallel, unsigned flags,
                                       qv_json_schema **out, qv_error *err);
/* Whether every document the schema accepts is a JSON object. */
bool qv_json_schema_object_only(const qv_json_schema *s);
qv_json_schema *qv_json_schema_ref(qv_json_schema *s); /* adds a reference; returns s */
void qv_json_schema_unref(qv_json_schema *s);          /* NULL is a no-op */
/* The schema's canonical text (compact JSON of what was compiled) and its hash: two schemas
 * with the same text recognise the same documents. */
const char *qv_json_schema_text(const qv_json_schema *s);
uint64_t qv_json_schema_hash(const qv_json_schema *s);

/* The state before the first byte of the document. */
void qv_json_schema_init(const qv_json_schema *sch, qv_json_sstate *s);
/* Feeds n bytes: true when the text so far is still a prefix of a document the schema accepts
 * (s advanced), false otherwise (s unchanged). */
bool qv_json_schema_feed(const qv_json_schema *sch, qv_json_sstate *s, const uint8_t *p, size_t n);
/* Whether n more bytes would keep s a valid prefix (s itself unchanged): feed without the
 * result, one state copy instead of two (the engine's mask loop). */
bool qv_json_schema_accepts(const qv_json_schema *sch, const qv_json_sstate *s, const uint8_t *p,
                            size_t n);
/* Whether the text so far is a whole document (the text may end here; a number may also go
 * on). */
bool qv_json_schema_done(const qv_json_schema *sch, const qv_json_sstate *s);

/* Shortcut for masks inside strings. qv_json_plain_chars: the characters of n bytes that are
 * plain string content (valid UTF-8, no control character, quote or backslash, ending between
 * characters), or -1. qv_json_schema_string_room: when s is inside a string between two
 * characters, how many more characters it may take (INT32_MAX: no limit), else -1. Feeding
 * plain bytes of c characters there succeeds exactly when c <= room. */
int qv_json_plain_chars(const uint8_t *p, size_t n);
int32_t qv_json_schema_string_room(const qv_json_schema *sch, const qv_json_sstate *s);

#ifdef __cplusplus
}
#endif

#endif /* QV_JSON_GRAMMAR_H */
