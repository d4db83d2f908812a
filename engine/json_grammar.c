/*
 * json_grammar.c - the JSON prefix recogniser of json_grammar.h: a pushdown automaton over
 * bytes (the stack is one bit per open container), following RFC 8259's grammar exactly,
 * UTF-8 ranges included (Unicode 3.9 table 3-7: no overlong forms, no surrogates, nothing
 * above U+10FFFF).
 *
 * Thread: pure functions on caller-owned state.
 */
#include "json_grammar.h"

_Static_assert(sizeof(qv_json_state) == 24, "qv_json_state has padding");

enum mode {
    M_START,     /* the top-level '{' */
    M_OBJ_FIRST, /* after '{': a key or '}' */
    M_KEY,       /* after ',' in an object: a key */
    M_COLON,     /* after a key */
    M_VALUE,     /* after ':' or ',' in an array */
    M_ARR_FIRST, /* after '[': a value or ']' */
    M_AFTER,     /* after a value inside a container: ',' or the container's close */
    M_STRING,
    M_NUMBER,
    M_LITERAL,
    M_DONE /* the top-level object is closed */
};

/* Number parts: after '-', a leading 0, integer digits, '.', fraction digits, 'e', the
 * exponent's sign, exponent digits. A number may end after N_ZERO, N_INT, N_FRAC or N_EXP. */
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_ESIGN, N_EXP };

static const char *const literals[3] = {"true", "false", "null"};

static bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static bool is_hex(uint8_t c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Leaves a string, number or literal for `mode`, clearing what only mattered inside it, so
 * that equal grammar positions are equal states (the engine caches masks by state). */
static void settle(qv_json_state *s, enum mode mode) {
    s->mode = (uint8_t)mode;
    s->sub = s->lit = s->key = s->utf8 = 0;
    s->lo = s->hi = 0;
}

static void value_done(qv_json_state *s) { settle(s, s->depth ? M_AFTER : M_DONE); }

static bool top_is_array(const qv_json_state *s) {
    return s->depth && ((s->arrays >> (s->depth - 1)) & 1u);
}

static bool open_container(qv_json_state *s, bool array) {
    if (s->depth >= QV_JSON_MAX_DEPTH) return false;
    if (array)
        s->arrays |= (uint64_t)1 << s->depth;
    else
        s->arrays &= ~((uint64_t)1 << s->depth);
    s->depth++;
    s->mode = array ? M_ARR_FIRST : M_OBJ_FIRST;
    return true;
}

static bool close_container(qv_json_state *s, bool array) {
    if (!s->depth || top_is_array(s) != array) return false;
    s->depth--;
    value_done(s);
    return true;
}

static void start_string(qv_json_state *s, bool key) {
    s->mode = M_STRING;
    s->key = key;
    s->sub = 0;
    s->utf8 = 0;
}

static bool start_value(qv_json_state *s, uint8_t c) {
    switch (c) {
    case '{': return open_container(s, false);
    case '[': return open_container(s, true);
    case '"': start_string(s, false); return true;
    case '-': s->mode = M_NUMBER, s->sub = N_MINUS; return true;
    case 't':
    case 'f':
    case 'n':
        s->mode = M_LITERAL;
        s->lit = c == 't' ? 0 : c == 'f' ? 1 : 2;
        s->sub = 1;
        return true;
    default:
        if (!is_digit(c)) return false;
        s->mode = M_NUMBER;
        s->sub = c == '0' ? N_ZERO : N_INT;
        return true;
    }
}

/* 1: the byte continues the number; 0: it cannot; -1: the number ended before it. */
static int number_byte(qv_json_state *s, uint8_t c) {
    const bool digit = is_digit(c), e = c == 'e' || c == 'E';
    switch (s->sub) {
    case N_MINUS:
        if (!digit) return 0;
        s->sub = c == '0' ? N_ZERO : N_INT;
        return 1;
    case N_ZERO:
    case N_INT:
        if (digit && s->sub == N_INT) return 1;
        if (c == '.') return s->sub = N_DOT, 1;
        if (e) return s->sub = N_E, 1;
        return -1;
    case N_DOT: return digit ? (s->sub = N_FRAC, 1) : 0;
    case N_FRAC:
        if (digit) return 1;
        if (e) return s->sub = N_E, 1;
        return -1;
    case N_E:
        if (c == '+' || c == '-') return s->sub = N_ESIGN, 1;
        return digit ? (s->sub = N_EXP, 1) : 0;
    case N_ESIGN: return digit ? (s->sub = N_EXP, 1) : 0;
    default: return digit ? 1 : -1; /* N_EXP */
    }
}

/* A byte inside a string. sub: 0 plain, 1 after '\', 5..2 hex digits of a \u escape to come
 * (5: four). */
static bool string_byte(qv_json_state *s, uint8_t c) {
    if (s->utf8) {
        if (c < s->lo || c > s->hi) return false;
        s->utf8--;
        s->lo = s->utf8 ? 0x80 : 0, s->hi = s->utf8 ? 0xBF : 0; /* 0: a character ended */
        return true;
    }
    if (s->sub == 1) {
        switch (c) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': s->sub = 0; return true;
        case 'u': s->sub = 5; return true;
        default: return false;
        }
    }
    if (s->sub >= 2) {
        if (!is_hex(c)) return false;
        s->sub = s->sub == 2 ? 0 : (uint8_t)(s->sub - 1);
        return true;
    }
    if (c == '"') {
        if (s->key)
            settle(s, M_COLON);
        else
            value_done(s);
        return true;
    }
    if (c == '\\') return s->sub = 1, true;
    if (c < 0x20) return false;
    if (c < 0x80) return true;
    s->lo = 0x80, s->hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        s->utf8 = 1;
    else if (c == 0xE0)
        s->utf8 = 2, s->lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
        s->utf8 = 2;
    else if (c == 0xED)
        s->utf8 = 2, s->hi = 0x9F;
    else if (c == 0xF0)
        s->utf8 = 3, s->lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        s->utf8 = 3;
    else if (c == 0xF4)
        s->utf8 = 3, s->hi = 0x8F;
    else
        return false; /* a continuation byte without a lead, C0, C1, F5..FF */
    return true;
}

static bool step(qv_json_state *s, uint8_t c) {
    switch (s->mode) {
    case M_STRING: return string_byte(s, c);
    case M_LITERAL: {
        const char *w = literals[s->lit];
        if (c != (uint8_t)w[s->sub]) return false;
        if (!w[++s->sub]) value_done(s);
        return true;
    }
    case M_NUMBER: {
        const int r = number_byte(s, c);
        if (r >= 0) return r == 1;
        if (s->sub != N_ZERO && s->sub != N_INT && s->sub != N_FRAC && s->sub != N_EXP)
            return false;
        value_done(s); /* the byte after the number is read below */
        break;
    }
    case M_DONE: return false;
    case M_START: return c == '{' && open_container(s, false); /* no whitespace before it */
    default: break;
    }
    if (is_ws(c)) {
        if (s->ws >= QV_JSON_MAX_WS) return false;
        s->ws++;
        return true;
    }
    s->ws = 0;
    switch (s->mode) {
    case M_OBJ_FIRST:
        if (c == '}') return close_container(s, false);
        if (c != '"') return false;
        start_string(s, true);
        return true;
    case M_KEY:
        if (c != '"') return false;
        start_string(s, true);
        return true;
    case M_COLON:
        if (c != ':') return false;
        s->mode = M_VALUE;
        return true;
    case M_ARR_FIRST:
        if (c == ']') return close_container(s, true);
        return start_value(s, c);
    case M_VALUE: return start_value(s, c);
    case M_AFTER:
        if (c == ',') {
            s->mode = top_is_array(s) ? M_VALUE : M_KEY;
            return true;
        }
        if (c == '}' || c == ']') return close_container(s, c == ']');
        return false;
    default: return false;
    }
}

void qv_json_init(qv_json_state *s) { *s = (qv_json_state){.mode = M_START}; }

bool qv_json_feed(qv_json_state *s, const uint8_t *p, size_t n) {
    qv_json_state t = *s;
    for (size_t i = 0; i < n; i++)
        if (!step(&t, p[i])) return false;
    *s = t;
    return true;
}

bool qv_json_done(const qv_json_state *s) { return s->mode == M_DONE; }
