/*
 * json_regex.h - the regular expressions of JSON Schema's `pattern` keyword and of whole-answer
 * regexes (guided_regex), for structured output: a pattern compiles to a deterministic
 * automaton (Glushkov positions, then the subset construction over classes of equivalent code
 * points), whose state is one index, so a match so far fits in a grammar state and equal
 * states compare equal. Each state knows the fewest characters to a match, and no transition
 * leads to a state without one.
 *
 * Supported (ECMA-262 syntax, the dialect JSON Schema names, matched on Unicode code points):
 * literals, `.` (anything but a line terminator), classes `[...]` / `[^...]` with ranges and
 * `\d \w \s` inside, `\d \D \w \W \s \S`, escaped punctuation, `\t \n \r \f \v \0 \uXXXX`,
 * groups `( )` and `(?: )`, `|`, quantifiers `* + ? {n} {n,} {n,m}` (lazy forms too: the same
 * language; counts up to QV_REGEX_MAX_COUNT). `^` may only start and `$` only end the pattern;
 * without them the match may start / end anywhere in the string, as in JSON Schema. Refused
 * (QV_ERR_UNSUPPORTED): backreferences, lookaround, `\b`, named groups, flags, a pattern that
 * matches nothing; QV_ERR_LIMIT: over QV_REGEX_MAX_POS characters once counts are expanded,
 * or an automaton over 65,536 states or 2^21 transitions (e.g. `(a|b)*a(a|b){20}`).
 *
 * Thread: a compiled regex is immutable; the functions are pure.
 */
#ifndef QV_JSON_REGEX_H
#define QV_JSON_REGEX_H

#include <stdbool.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QV_REGEX_MAX_POS 4096   /* character occurrences, counts expanded */
#define QV_REGEX_MAX_COUNT 1000 /* {n,m} bounds */

typedef struct qv_regex qv_regex;

qv_status qv_regex_compile(const char *pattern, qv_regex **out, qv_error *err);
void qv_regex_free(qv_regex *re);

/* The state before the first character. */
uint64_t qv_regex_start(const qv_regex *re);
/* Advances *state by code point cp: false (state unchanged) when no string with the
 * characters so far can match. */
bool qv_regex_step(const qv_regex *re, uint64_t *state, uint32_t cp);
/* Whether some code point of [lo, hi] advances the state to one from which a match is at most
 * `budget` more characters away (UINT32_MAX: no limit): the test for a character still being
 * read (after '\', a \u escape's first hex digits, a UTF-8 lead byte), so that no accepted
 * prefix is a dead end. */
bool qv_regex_can_step(const qv_regex *re, uint64_t state, uint32_t lo, uint32_t hi,
                       uint32_t budget);
/* The fewest characters still needed for a match from the state (0: it matches now;
 * UINT32_MAX: never), so that a string with a maxLength does not take a character after which
 * the pattern cannot be met in time. */
uint32_t qv_regex_min_left(const qv_regex *re, uint64_t state);
/* Whether the characters so far match (the string may end here). */
bool qv_regex_accepts(const qv_regex *re, uint64_t state);
/* The automaton's number of states (for tests and limits). */
uint32_t qv_regex_states(const qv_regex *re);

#ifdef __cplusplus
}
#endif

#endif /* QV_JSON_REGEX_H */
