/*
 * json_text.h - JSON text as Python writes it: chat templates render tool definitions and tool
 * call arguments with Jinja's `tojson` (transformers: json.dumps(x, ensure_ascii=False)), so a
 * byte-exact prompt needs the same text from the JSON the client sent.
 *
 * qv_json_py_dumps re-writes a JSON text as json.dumps(json.loads(text), ensure_ascii=False)
 * would: ", " and ": " separators (compact: "," and ":"), keys in their order, strings
 * re-escaped (\" \\ \n \r \t \b \f, other control characters as \u00xx, the rest raw UTF-8),
 * integers as written (-0 as 0), other numbers as Python's float repr (1.50 -> 1.5, 1e2 ->
 * 100.0, 1e-5 -> 1e-05; overflow -> Infinity). Not handled: a key repeated in one object
 * (Python keeps the last value at the first key's place; here both are written).
 *
 * Thread: pure functions.
 */
#ifndef QV_JSON_TEXT_H
#define QV_JSON_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* *out (NUL-terminated, qv_free; *out_len its length) is the Python text of the JSON value in
 * text[0..len) (surrounding whitespace allowed). Errors: QV_ERR_INVALID (not one JSON value,
 * or invalid UTF-8 / escapes in a string), QV_ERR_LIMIT (nested over 512 deep), QV_ERR_NOMEM. */
qv_status qv_json_py_dumps(const char *text, size_t len, bool compact, char **out, size_t *out_len);

/* The same as json.dumps(..., ensure_ascii=False, indent=indent) writes it (Jinja's
 * `tojson(indent=4)`): each member or item on its own line, `indent` spaces per level, ","
 * after an item and ": " after a key; empty containers stay "{}" and "[]". indent 0..64. */
qv_status qv_json_py_dumps_indent(const char *text, size_t len, int indent, char **out,
                                  size_t *out_len);

/* QV_OK when text[0..len) is exactly one JSON value Python reads (an object when `object`),
 * else QV_ERR_INVALID (nesting over 512 deep included). Allocates nothing. */
qv_status qv_json_text_check(const char *text, size_t len, bool object);

/* *out (NUL-terminated, qv_free) is the UTF-8 text s[0..n) as a JSON string the way Python
 * writes it. Errors: QV_ERR_INVALID (not UTF-8), QV_ERR_NOMEM. */
qv_status qv_json_py_quote(const char *s, size_t n, char **out);

/* The raw text of member `key` of the JSON object in text[0..len) (the first one with that
 * key, as cJSON finds it): *off and *n. False when text is not an object of valid JSON or has
 * no such member. */
bool qv_json_member_span(const char *text, size_t len, const char *key, size_t *off, size_t *n);

/* The JSON value at the start of text[0..len) (after whitespace; what follows it is not read):
 * *off and *n its raw span. False when no valid value begins there. */
bool qv_json_value_span(const char *text, size_t len, size_t *off, size_t *n);

/* The items of the JSON list in text[0..len): returns their count (SIZE_MAX when text does not
 * begin with a valid list) and the raw span of each of the first `max` in off[] / n[]. */
size_t qv_json_list_items(const char *text, size_t len, size_t *off, size_t *n, size_t max);

/* The members of the JSON object in text[0..len), in order (a repeated key counted each time,
 * as cJSON lists them): returns their count (SIZE_MAX when text does not begin with a valid
 * object) and the raw span of the first `max` values in off[] / n[]. Allocates nothing. */
size_t qv_json_object_values(const char *text, size_t len, size_t *off, size_t *n, size_t max);

#ifdef __cplusplus
}
#endif

#endif /* QV_JSON_TEXT_H */
