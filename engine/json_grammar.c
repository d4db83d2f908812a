/*
 * json_grammar.c - the JSON prefix recogniser of json_grammar.h: a pushdown automaton over
 * bytes (the stack is one bit per open container), following RFC 8259's grammar exactly,
 * UTF-8 ranges included (Unicode 3.9 table 3-7: no overlong forms, no surrogates, nothing
 * above U+10FFFF).
 *
 * Thread: pure functions on caller-owned state.
 */
#include "json_grammar.h"
#include "json_regex.h"
#include "tokenizer/tok_internal.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

_Static_assert(sizeof(qv_json_state) == 24, "qv_json_state has padding");
_Static_assert(sizeof(qv_json_frame) == 8 &&
                   sizeof(qv_json_sstate) == 40 + 8 * QV_JSON_SCHEMA_MAX_FRAMES,
               "qv_json_sstate has padding");

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
    s->arrays &= ~((uint64_t)1 << s->depth); /* equal positions are equal states */
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

/* ---- JSON Schema: compiled nodes ----
 *
 * A schema compiles to a graph of nodes. K_LEAF values (scalars, and objects or arrays the
 * schema leaves free) are read by the free recogniser above in qv_json_sstate.leaf;
 * structured nodes keep their position in a frame. $ref and one-member compositions compile to
 * K_REF nodes that the final pass replaces by their targets everywhere, so a frame never holds
 * one. */

enum kind { K_LEAF, K_OBJECT, K_MAP, K_ARRAY, K_ENUM, K_ANYOF, K_REF, K_RAW };

/* What a value begins with: its first byte says which. */
enum {
    C_OBJECT = 1,
    C_ARRAY = 2,
    C_STRING = 4,
    C_NUMBER = 8,
    C_BOOL = 16,
    C_NULL = 32,
    C_ALL = 63
};

/* Frame phases. Phase 0 of every kind is "before the value's first byte". */
enum { LF_START, LF_IN };
enum { EN_START, EN_IN };
enum { OB_OPEN, OB_FIRST, OB_KEYQ, OB_KEY, OB_COLON, OB_AFTER };
enum { MP_OPEN, MP_FIRST, MP_KEYQ, MP_COLON, MP_AFTER };
enum { AR_OPEN, AR_FIRST, AR_AFTER };
enum { AN_START, AN_FIRST, AN_KEY, AN_COLON, AN_VALUE, AN_VAL_IN }; /* tagged / keyed anyOf */
enum { AN_PLAIN, AN_TAGGED, AN_KEYED };                             /* snode.tagged */

#define NO_LIMIT UINT32_MAX
#define MAX_COUNT 65535u /* frame counters saturate here */
#define MAX_PROPS 255u   /* properties of one object, values of one enum (frame.cur) */
#define MAX_ALTS 128u
#define MAX_LITERAL 4096u /* bytes of one key or enum value */

typedef struct snode {
    uint8_t kind;
    uint8_t classes;   /* K_LEAF: the kinds of value allowed; all: what it may begin with */
    uint8_t integer;   /* K_LEAF: numbers have no fraction or exponent */
    uint8_t tagged;    /* K_ANYOF: how its object members are told apart (AN_TAGGED: the value
                        * of their first property; AN_KEYED: the first key written) */
    uint32_t min, max; /* K_LEAF strings: characters; K_ARRAY: items */
    /* K_LEAF numbers: bounds (integer values, |v| < 2^31; for integers inclusive) */
    bool lo_on, hi_on, lo_strict, hi_strict;
    int64_t lo, hi;
    uint32_t mult;     /* K_LEAF numbers: multipleOf (> 1: values are its multiples; 0: any) */
    uint32_t re;       /* K_LEAF strings, K_RAW: 1 + the index of their pattern in regexes[] */
    uint32_t first, n; /* K_OBJECT: props; K_ENUM: lits; K_ANYOF: alts */
    uint32_t child;    /* K_ARRAY: items; K_MAP: values; K_REF: target */
    uint32_t lead;     /* K_OBJECT: the properties it may begin with (up to its first required
                        * one): a keyed anyOf's member is told by them */
} snode;

typedef struct sspan {
    uint32_t off, len; /* in bytes[] */
} sspan;

typedef struct sprop {
    sspan key; /* the name as written between the quotes (JSON-escaped) */
    uint32_t node;
    bool required;
} sprop;

struct qv_json_schema {
    atomic_int refs;
    snode *nodes;
    sprop *props;
    sspan *lits;
    uint32_t *alts;
    uint8_t *bytes;
    qv_regex **regexes;
    uint32_t n_nodes, n_props, n_lits, n_alts, n_bytes, n_regexes;
    uint32_t cap_nodes, cap_props, cap_lits, cap_alts, cap_bytes, cap_regexes;
    uint32_t root;
    uint32_t key_node; /* a string: the keys of K_MAP objects */
    bool compact;      /* QV_JSON_COMPACT: no whitespace outside strings */
    uint64_t hash;
    char *text;
};

static const sspan *lit_of(const qv_json_schema *s, const snode *nd, uint32_t j) {
    return &s->lits[nd->first + j];
}

static const sprop *prop_of(const qv_json_schema *s, const snode *nd, uint32_t j) {
    return &s->props[nd->first + j];
}

static int byte_class(uint8_t c) {
    switch (c) {
    case '{': return C_OBJECT;
    case '[': return C_ARRAY;
    case '"': return C_STRING;
    case 't':
    case 'f': return C_BOOL;
    case 'n': return C_NULL;
    default: return c == '-' || is_digit(c) ? C_NUMBER : 0;
    }
}

/* ---- JSON Schema: compiling ---- */

typedef struct compiler {
    qv_json_schema *s;
    const cJSON *root;
    const cJSON **memo_src; /* schema objects compiled so far, for $ref and recursion */
    uint32_t *memo_node;
    uint32_t n_memo, cap_memo;
    qv_error *err;
    qv_status st;   /* first failure */
    char path[256]; /* where in the schema (JSON pointer), for messages */
    size_t path_len;
    const cJSON *const *sub_roots; /* documents of their own inside root: their $refs start */
    size_t n_sub_roots;            /* at them (tool parameters) */
} compiler;

/* Records the first failure: "<pre><word><post> (at <JSON pointer>)". */
static qv_status cfail(compiler *c, qv_status st, const char *pre, const char *word,
                       const char *post) {
    if (c->st == QV_OK) {
        c->st = st;
        qv_errorf(c->err, st, "%s%s%s (at %s)", pre, word ? word : "", post,
                  c->path_len ? c->path : "/");
    }
    return st;
}

static bool grow(compiler *c, void **p, uint32_t *cap, uint32_t need, size_t elem) {
    if (need <= *cap) return true;
    uint32_t n = *cap ? *cap : 16;
    while (n < need)
        n *= 2;
    void *q = qv_realloc(*p, (size_t)n * elem);
    if (!q) {
        cfail(c, QV_ERR_NOMEM, "out of memory", NULL, "");
        return false;
    }
    *p = q;
    *cap = n;
    return true;
}

/* A new node (zeroed but for kind); UINT32_MAX on failure. */
static uint32_t new_node(compiler *c, enum kind k) {
    qv_json_schema *s = c->s;
    if (s->n_nodes >= QV_JSON_SCHEMA_MAX_NODES) {
        cfail(c, QV_ERR_LIMIT, "the schema has too many parts", NULL, "");
        return UINT32_MAX;
    }
    if (!grow(c, (void **)&s->nodes, &s->cap_nodes, s->n_nodes + 1, sizeof(snode)))
        return UINT32_MAX;
    s->nodes[s->n_nodes] = (snode){.kind = (uint8_t)k, .max = NO_LIMIT, .child = UINT32_MAX};
    return s->n_nodes++;
}

static uint32_t new_leaf(compiler *c, int classes) {
    const uint32_t id = new_node(c, K_LEAF);
    if (id != UINT32_MAX) c->s->nodes[id].classes = (uint8_t)classes;
    return id;
}

/* Appends n bytes; false on failure. */
static bool add_bytes(compiler *c, const void *p, size_t n, sspan *out) {
    qv_json_schema *s = c->s;
    if (n > MAX_LITERAL) {
        cfail(c, QV_ERR_LIMIT, "a key or enum value is longer than 4096 bytes", NULL, "");
        return false;
    }
    if (!grow(c, (void **)&s->bytes, &s->cap_bytes, s->n_bytes + (uint32_t)n, 1)) return false;
    if (n) memcpy(s->bytes + s->n_bytes, p, n); /* an empty one may come with no buffer */
    *out = (sspan){s->n_bytes, (uint32_t)n};
    s->n_bytes += (uint32_t)n;
    return true;
}

static void path_push(compiler *c, const char *a, const char *b) {
    const size_t room = sizeof(c->path) - c->path_len;
    const int k = snprintf(c->path + c->path_len, room, "/%s%s%s", a, b ? "/" : "", b ? b : "");
    if (k > 0) c->path_len += (size_t)k < room ? (size_t)k : room - 1;
}

static void path_pop(compiler *c, size_t len) {
    c->path_len = len;
    c->path[len] = '\0';
}

static const char *const annotations[] = {
    "title",        "description", "default",    "examples",        "format",
    "$schema",      "$id",         "$comment",   "$defs",           "definitions",
    "readOnly",     "writeOnly",   "deprecated", "contentEncoding", "contentMediaType",
    "discriminator"};
static const char *const keywords[] = {"type",
                                       "properties",
                                       "required",
                                       "additionalProperties",
                                       "items",
                                       "prefixItems",
                                       "minProperties",
                                       "maxProperties",
                                       "minItems",
                                       "maxItems",
                                       "minLength",
                                       "maxLength",
                                       "enum",
                                       "const",
                                       "anyOf",
                                       "oneOf",
                                       "allOf",
                                       "$ref",
                                       "minimum",
                                       "maximum",
                                       "exclusiveMinimum",
                                       "exclusiveMaximum",
                                       "multipleOf",
                                       "pattern"};

static const cJSON *kw(const cJSON *j, const char *name) {
    return cJSON_GetObjectItemCaseSensitive(j, name);
}

#define BOUND_LIMIT 2147483648.0 /* |bounds| below 2^31: magnitudes above it exceed them all */

/* multipleOf (a whole number from 1 to 2^31 - 1): values are its multiples, written as integers
 * (a number's fraction, if any, all zeros) of magnitude below 2^31 (the bounds, when absent,
 * become +-(2^31 - 1)); refused when no multiple lies within the bounds. */
static bool compile_multiple(compiler *c, const cJSON *j, snode *nd, bool integer) {
    const cJSON *v = kw(j, "multipleOf");
    if (!v) return true;
    const double d = cJSON_IsNumber(v) ? v->valuedouble : 0.0;
    if (!(d > 0.0))
        return cfail(c, QV_ERR_INVALID, "'multipleOf' must be a number above 0", NULL, ""), false;
    if (d != floor(d) || d >= BOUND_LIMIT)
        return cfail(c, QV_ERR_UNSUPPORTED,
                     "'multipleOf' must be a whole number below 2^31 (for steps such as 0.01, "
                     "scale the value to an integer)",
                     NULL, ""),
               false;
    if (d == 1.0 && integer) return true; /* every integer */
    nd->mult = (uint32_t)d;
    if (!nd->lo_on) nd->lo_on = true, nd->lo = -(int64_t)(BOUND_LIMIT - 1), nd->lo_strict = false;
    if (!nd->hi_on) nd->hi_on = true, nd->hi = (int64_t)(BOUND_LIMIT - 1), nd->hi_strict = false;
    const int64_t k = nd->mult, lo = nd->lo + (nd->lo_strict ? 1 : 0),
                  hi = nd->hi - (nd->hi_strict ? 1 : 0);
    const int64_t first = lo >= 0 ? (lo + k - 1) / k * k : -(-lo / k * k); /* >= lo */
    if (first > hi)
        return cfail(c, QV_ERR_INVALID, "no multiple of 'multipleOf' lies within the bounds", NULL,
                     ""),
               false;
    return true;
}

/* minimum / maximum / exclusiveMinimum / exclusiveMaximum of a number or integer leaf: the
 * tighter of each pair; integers round to inclusive integer bounds, numbers need integer
 * values. */
static bool compile_bounds(compiler *c, const cJSON *j, snode *nd, bool integer) {
    static const char *const names[4] = {"minimum", "exclusiveMinimum", "maximum",
                                         "exclusiveMaximum"};
    for (int k = 0; k < 4; k++) {
        const cJSON *v = kw(j, names[k]);
        if (!v) continue;
        const double d = cJSON_IsNumber(v) ? v->valuedouble : BOUND_LIMIT;
        if (!(fabs(d) < BOUND_LIMIT))
            return cfail(c, QV_ERR_UNSUPPORTED, "'", names[k],
                         "' must be a number between -2^31 and 2^31"),
                   false;
        const bool upper = k >= 2, strict = k & 1;
        double r = d;
        bool st = strict;
        if (integer) { /* inclusive integer bound */
            r = upper ? floor(d) : ceil(d);
            if (strict && r == d) r += upper ? -1 : 1;
            st = false;
        } else if (d != floor(d)) {
            return cfail(c, QV_ERR_UNSUPPORTED, "'", names[k],
                         "' of a number must be a whole number (use type integer, or scale)"),
                   false;
        }
        const int64_t b = (int64_t)r;
        if (!upper && (!nd->lo_on || b > nd->lo || (b == nd->lo && st))) {
            nd->lo_on = true, nd->lo = b, nd->lo_strict = st;
        } else if (upper && (!nd->hi_on || b < nd->hi || (b == nd->hi && st))) {
            nd->hi_on = true, nd->hi = b, nd->hi_strict = st;
        }
    }
    if (nd->lo_on && nd->hi_on &&
        (nd->lo > nd->hi || (nd->lo == nd->hi && (nd->lo_strict || nd->hi_strict))))
        return cfail(c, QV_ERR_INVALID, "no number lies within the bounds", NULL, ""), false;
    return compile_multiple(c, j, nd, integer);
}

static bool in_list(const char *w, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(w, list[i])) return true;
    return false;
}

/* A non-negative integer keyword (absent: dflt); false on a bad value. */
static bool count_kw(compiler *c, const cJSON *j, const char *name, uint32_t dflt, uint32_t *out) {
    const cJSON *v = kw(j, name);
    *out = dflt;
    if (!v) return true;
    const double d = cJSON_IsNumber(v) ? v->valuedouble : -1.0;
    if (!(d >= 0.0) || d != floor(d)) {
        cfail(c, QV_ERR_INVALID, "'", name, "' must be a non-negative integer");
        return false;
    }
    *out = d >= (double)MAX_COUNT ? MAX_COUNT : (uint32_t)d;
    if (*out == MAX_COUNT && strncmp(name, "min", 3) == 0) {
        cfail(c, QV_ERR_LIMIT, "'", name, "' above 65534 is not supported");
        return false;
    }
    if (*out == MAX_COUNT) *out = NO_LIMIT; /* a maximum this large limits nothing here */
    return true;
}

/* Follows a local JSON pointer ("#", "#/a/b", ~0 and ~1 escapes) from the document root. */
static const cJSON *resolve_pointer(compiler *c, const char *ref) {
    if (ref[0] != '#') {
        cfail(c, QV_ERR_UNSUPPORTED, "$ref '", ref, "' is not a pointer into this schema");
        return NULL;
    }
    const cJSON *j = c->root;
    const char *p = ref + 1;
    while (*p) {
        if (*p != '/') break;
        char seg[128];
        size_t n = 0;
        for (p++; *p && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && (p[1] == '0' || p[1] == '1')) ch = *++p == '0' ? '~' : '/';
            if (n + 1 >= sizeof(seg)) break;
            seg[n++] = ch;
        }
        seg[n] = '\0';
        j = cJSON_IsObject(j) ? kw(j, seg) : NULL;
        if (!j) break;
    }
    if (!j || *p) cfail(c, QV_ERR_INVALID, "$ref '", ref, "' points at nothing");
    return j;
}

static uint32_t compile_node(compiler *c, const cJSON *j, int depth);

/* Compiles child schema j of the current one, reached by keyword a (and member b). */
static uint32_t compile_child(compiler *c, const cJSON *j, int depth, const char *a,
                              const char *b) {
    const size_t len = c->path_len;
    path_push(c, a, b);
    const uint32_t id = compile_node(c, j, depth + 1);
    path_pop(c, len);
    return id;
}

/* Whether a JSON value (an enum member) has one of the type bits in `types`. */
enum {
    T_OBJECT = 1,
    T_ARRAY = 2,
    T_STRING = 4,
    T_NUMBER = 8,
    T_INTEGER = 16,
    T_BOOLEAN = 32,
    T_NULL = 64,
    T_ALL = 127
};

static int value_types(const cJSON *v) {
    if (cJSON_IsObject(v)) return T_OBJECT;
    if (cJSON_IsArray(v)) return T_ARRAY;
    if (cJSON_IsString(v)) return T_STRING;
    if (cJSON_IsBool(v)) return T_BOOLEAN;
    if (cJSON_IsNull(v)) return T_NULL;
    const double d = v->valuedouble;
    return d == floor(d) ? T_NUMBER | T_INTEGER : T_NUMBER;
}

static int type_bit(const char *name) {
    static const char *const names[] = {"object",  "array",   "string", "number",
                                        "integer", "boolean", "null"};
    for (size_t i = 0; i < QV_ARRAY_LEN(names); i++)
        if (!strcmp(name, names[i])) return 1 << i;
    return 0;
}

/* The type bits of j's "type" (0: absent); -1 on a bad value. */
static int parse_types(compiler *c, const cJSON *j) {
    const cJSON *t = kw(j, "type");
    if (!t) return 0;
    int types = 0;
    if (cJSON_IsString(t)) {
        types = type_bit(t->valuestring);
    } else if (cJSON_IsArray(t) && cJSON_GetArraySize(t) > 0) {
        const cJSON *e;
        cJSON_ArrayForEach(e, t) {
            const int b = cJSON_IsString(e) ? type_bit(e->valuestring) : 0;
            if (!b) {
                types = 0;
                break;
            }
            types |= b;
        }
    }
    if (!types) {
        cfail(c, QV_ERR_INVALID, "'type' must name JSON types", NULL, "");
        return -1;
    }
    return types;
}

/* enum / const: the members of the allowed types, each written compactly. */
static bool compile_enum(compiler *c, const cJSON *j, uint32_t id, int types) {
    const cJSON *e = kw(j, "enum"), *k = kw(j, "const");
    if (e && k) return cfail(c, QV_ERR_UNSUPPORTED, "enum with const", NULL, ""), false;
    if (e && (!cJSON_IsArray(e) || cJSON_GetArraySize(e) == 0))
        return cfail(c, QV_ERR_INVALID, "'enum' must be a non-empty array", NULL, ""), false;
    static const char *const others[] = {"properties",
                                         "required",
                                         "additionalProperties",
                                         "items",
                                         "prefixItems",
                                         "minItems",
                                         "maxItems",
                                         "minLength",
                                         "maxLength",
                                         "minimum",
                                         "maximum",
                                         "exclusiveMinimum",
                                         "exclusiveMaximum",
                                         "multipleOf",
                                         "pattern"};
    for (size_t i = 0; i < QV_ARRAY_LEN(others); i++)
        if (kw(j, others[i]))
            return cfail(c, QV_ERR_UNSUPPORTED, "'", others[i], "' beside enum or const"), false;
    if (!types) types = T_ALL;
    qv_json_schema *s = c->s;
    const uint32_t first = s->n_lits;
    const cJSON *v = e ? e->child : k;
    for (; v; v = e ? v->next : NULL) {
        if (!(value_types(v) & types)) continue;
        char *txt = cJSON_PrintUnformatted(v);
        if (!txt) return cfail(c, QV_ERR_NOMEM, "out of memory", NULL, ""), false;
        const size_t n = strlen(txt);
        /* the literal must be JSON this recogniser takes (strings: valid UTF-8) */
        qv_json_state t = {.mode = M_VALUE};
        bool ok = qv_json_feed(&t, (const uint8_t *)txt, n);
        ok = ok && (t.mode == M_DONE || (t.mode == M_NUMBER && t.depth == 0));
        bool dup = false;
        for (uint32_t i = first; ok && i < s->n_lits; i++)
            dup |= s->lits[i].len == n && !memcmp(s->bytes + s->lits[i].off, txt, n);
        sspan sp;
        if (ok && !dup) {
            if (s->n_lits - first >= MAX_PROPS) {
                cJSON_free(txt);
                return cfail(c, QV_ERR_LIMIT, "more than 255 enum values", NULL, ""), false;
            }
            ok = add_bytes(c, txt, n, &sp) &&
                 grow(c, (void **)&s->lits, &s->cap_lits, s->n_lits + 1, sizeof(sspan));
            if (ok)
                s->lits[s->n_lits++] = sp;
            else {
                cJSON_free(txt);
                return false;
            }
        } else if (!ok) {
            cJSON_free(txt);
            return cfail(c, QV_ERR_INVALID, "an enum value is not valid UTF-8 JSON", NULL, ""),
                   false;
        }
        cJSON_free(txt);
    }
    if (s->n_lits == first)
        return cfail(c, QV_ERR_INVALID, "no enum value has the schema's type", NULL, ""), false;
    snode *nd = &s->nodes[id];
    nd->kind = K_ENUM;
    nd->first = first;
    nd->n = s->n_lits - first;
    return true;
}

/* Node id becomes its one part (through a K_REF), or an anyOf of its n parts. */
static bool set_alternatives(compiler *c, uint32_t id, const uint32_t *parts, int n) {
    qv_json_schema *s = c->s;
    if (n == 1) {
        s->nodes[id].kind = K_REF;
        s->nodes[id].child = parts[0];
        return true;
    }
    if (!grow(c, (void **)&s->alts, &s->cap_alts, s->n_alts + (uint32_t)n, sizeof(uint32_t)))
        return false;
    memcpy(s->alts + s->n_alts, parts, (size_t)n * sizeof(uint32_t));
    s->nodes[id].kind = K_ANYOF;
    s->nodes[id].first = s->n_alts;
    s->nodes[id].n = (uint32_t)n;
    s->n_alts += (uint32_t)n;
    return true;
}

/* anyOf / oneOf / allOf (one member): alternatives told apart by their first byte (checked in
 * the final pass). */
static bool compile_anyof(compiler *c, const cJSON *j, uint32_t id, int depth, const char *name) {
    const cJSON *a = kw(j, name);
    const int n = cJSON_IsArray(a) ? cJSON_GetArraySize(a) : 0;
    if (n <= 0) return cfail(c, QV_ERR_INVALID, "'", name, "' must be a non-empty array"), false;
    if (n > (int)MAX_ALTS)
        return cfail(c, QV_ERR_LIMIT, "'", name, "' has more than 128 members"), false;
    if (!strcmp(name, "allOf") && n != 1)
        return cfail(c, QV_ERR_UNSUPPORTED, "'", name, "' with more than one member"), false;
    static const char *const others[] = {
        "type",      "properties",  "required", "additionalProperties",
        "items",     "prefixItems", "minItems", "maxItems",
        "minLength", "maxLength",   "enum",     "const",
        "pattern"};
    for (size_t i = 0; i < QV_ARRAY_LEN(others); i++)
        if (kw(j, others[i]))
            return cfail(c, QV_ERR_UNSUPPORTED, "'", others[i], "' beside anyOf / oneOf / allOf"),
                   false;
    uint32_t alts[MAX_ALTS];
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, a) {
        char idx[16];
        snprintf(idx, sizeof(idx), "%d", i);
        alts[i] = compile_child(c, m, depth, name, idx);
        if (alts[i] == UINT32_MAX) return false;
        i++;
    }
    return set_alternatives(c, id, alts, n);
}

/* A property name as written between quotes: JSON-escaped the way cJSON writes strings. */
static bool add_key(compiler *c, const char *name, sspan *out) {
    cJSON *str = cJSON_CreateString(name);
    char *txt = str ? cJSON_PrintUnformatted(str) : NULL;
    cJSON_Delete(str);
    if (!txt) return cfail(c, QV_ERR_NOMEM, "out of memory", NULL, ""), false;
    const size_t n = strlen(txt);
    qv_json_state t = {.mode = M_VALUE};
    bool ok = qv_json_feed(&t, (const uint8_t *)txt, n) && t.mode == M_DONE;
    ok = ok ? add_bytes(c, txt + 1, n - 2, out)
            : (cfail(c, QV_ERR_INVALID, "property '", name, "' is not valid UTF-8"), false);
    cJSON_free(txt);
    return ok;
}

static bool compile_object(compiler *c, const cJSON *j, uint32_t id, int depth) {
    const cJSON *props = kw(j, "properties"), *req = kw(j, "required");
    const cJSON *addl = kw(j, "additionalProperties");
    if (props && !cJSON_IsObject(props))
        return cfail(c, QV_ERR_INVALID, "'properties' must be an object", NULL, ""), false;
    if (req && !cJSON_IsArray(req))
        return cfail(c, QV_ERR_INVALID, "'required' must be an array", NULL, ""), false;
    if (addl && !cJSON_IsBool(addl) && !cJSON_IsObject(addl))
        return cfail(c, QV_ERR_INVALID, "'additionalProperties' must be a schema", NULL, ""), false;
    const int n = props ? cJSON_GetArraySize(props) : 0;
    qv_json_schema *s = c->s;
    if (n == 0 && cJSON_IsObject(addl)) { /* a map: free keys, values under addl */
        if (req && cJSON_GetArraySize(req) > 0)
            return cfail(c, QV_ERR_UNSUPPORTED, "'required' without 'properties'", NULL, ""), false;
        uint32_t lo, hi;
        if (!count_kw(c, j, "minProperties", 0, &lo) ||
            !count_kw(c, j, "maxProperties", NO_LIMIT, &hi))
            return false;
        if (lo > hi)
            return cfail(c, QV_ERR_INVALID, "minProperties above maxProperties", NULL, ""), false;
        const uint32_t v = compile_child(c, addl, depth, "additionalProperties", NULL);
        if (v == UINT32_MAX) return false;
        s->nodes[id].kind = K_MAP;
        s->nodes[id].child = v;
        s->nodes[id].min = lo; /* members, each occurrence of a key counted */
        s->nodes[id].max = hi;
        return true;
    }
    if ((uint32_t)n > MAX_PROPS)
        return cfail(c, QV_ERR_LIMIT, "more than 255 properties", NULL, ""), false;
    sprop tmp[MAX_PROPS];
    int i = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, props) {
        for (int k = 0; k < i; k++)
            if (!strcmp(cJSON_GetArrayItem(props, k)->string, p->string))
                return cfail(c, QV_ERR_INVALID, "property '", p->string, "' is declared twice"),
                       false;
        tmp[i].required = false;
        if (!add_key(c, p->string, &tmp[i].key)) return false;
        tmp[i].node = compile_child(c, p, depth, "properties", p->string);
        if (tmp[i].node == UINT32_MAX) return false;
        i++;
    }
    const cJSON *r;
    cJSON_ArrayForEach(r, req) {
        int k = 0;
        const cJSON *q = props ? props->child : NULL;
        for (; q && (!cJSON_IsString(r) || strcmp(q->string, r->valuestring)); q = q->next)
            k++;
        if (!q)
            return cfail(c, QV_ERR_UNSUPPORTED, "required property '",
                         cJSON_IsString(r) ? r->valuestring : "?", "' is not in 'properties'"),
                   false;
        tmp[k].required = true;
    }
    /* declared properties only: minProperties / maxProperties hold whatever is written when
     * the required ones reach the minimum and all of them stay within the maximum */
    uint32_t lo, hi, n_req = 0;
    for (int k = 0; k < n; k++)
        n_req += tmp[k].required;
    if (!count_kw(c, j, "minProperties", 0, &lo) || !count_kw(c, j, "maxProperties", NO_LIMIT, &hi))
        return false;
    if (lo > n_req)
        return cfail(c, QV_ERR_UNSUPPORTED,
                     "'minProperties' above the number of required properties", NULL, ""),
               false;
    if (hi < (uint32_t)n)
        return cfail(c, QV_ERR_UNSUPPORTED, "'maxProperties' below the number of properties", NULL,
                     ""),
               false;
    if (!grow(c, (void **)&s->props, &s->cap_props, s->n_props + (uint32_t)n, sizeof(sprop)))
        return false;
    if (n) memcpy(s->props + s->n_props, tmp, (size_t)n * sizeof(sprop));
    snode *nd = &s->nodes[id];
    nd->kind = K_OBJECT;
    nd->first = s->n_props;
    nd->n = (uint32_t)n;
    nd->lead = (uint32_t)n;
    for (int k = 0; k < n; k++)
        if (tmp[k].required) {
            nd->lead = (uint32_t)k + 1;
            break;
        }
    s->n_props += (uint32_t)n;
    return true;
}

/* An array: prefixItems (the schemas of the first items, in order: a tuple), then items for
 * the rest; the prefix's node ids are kept in alts[first .. first + n). */
static bool compile_array(compiler *c, const cJSON *j, uint32_t id, int depth) {
    const cJSON *items = kw(j, "items"), *prefix = kw(j, "prefixItems");
    uint32_t lo, hi;
    if (!count_kw(c, j, "minItems", 0, &lo) || !count_kw(c, j, "maxItems", NO_LIMIT, &hi))
        return false;
    if (items && !cJSON_IsBool(items) && !cJSON_IsObject(items))
        return cfail(c, QV_ERR_UNSUPPORTED, "'items' must be one schema", NULL, ""), false;
    if (prefix && !cJSON_IsArray(prefix))
        return cfail(c, QV_ERR_INVALID, "'prefixItems' must be an array of schemas", NULL, ""),
               false;
    const int np = prefix ? cJSON_GetArraySize(prefix) : 0;
    if (np > (int)MAX_PROPS)
        return cfail(c, QV_ERR_LIMIT, "'prefixItems' has more than 255 schemas", NULL, ""), false;
    uint32_t parts[MAX_PROPS];
    for (int i = 0; i < np; i++) {
        char idx[16];
        snprintf(idx, sizeof(idx), "%d", i);
        parts[i] = compile_child(c, cJSON_GetArrayItem(prefix, i), depth, "prefixItems", idx);
        if (parts[i] == UINT32_MAX) return false;
    }
    if (cJSON_IsFalse(items)) hi = QV_MIN(hi, (uint32_t)np); /* nothing after the prefix */
    const uint32_t child = items && cJSON_IsObject(items)
                               ? compile_child(c, items, depth, "items", NULL)
                               : new_leaf(c, C_ALL);
    if (child == UINT32_MAX) return false;
    qv_json_schema *s = c->s;
    if (np && !grow(c, (void **)&s->alts, &s->cap_alts, s->n_alts + (uint32_t)np, sizeof(uint32_t)))
        return false;
    snode *nd = &s->nodes[id];
    if (np) {
        memcpy(s->alts + s->n_alts, parts, (size_t)np * sizeof(uint32_t));
        nd->first = s->n_alts;
        nd->n = (uint32_t)np;
        s->n_alts += (uint32_t)np;
    }
    nd->kind = K_ARRAY;
    nd->child = child;
    nd->min = lo;
    nd->max = hi;
    if (lo > hi) return cfail(c, QV_ERR_INVALID, "minItems above maxItems", NULL, ""), false;
    return true;
}

/* Adds a compiled regex to the schema's regexes, referred to by node id (taking it; freed on
 * failure). */
static bool add_regex(compiler *c, qv_regex *re, uint32_t id) {
    qv_json_schema *s = c->s;
    if (!grow(c, (void **)&s->regexes, &s->cap_regexes, s->n_regexes + 1, sizeof(qv_regex *))) {
        qv_regex_free(re);
        return false;
    }
    s->regexes[s->n_regexes++] = re;
    s->nodes[id].re = s->n_regexes;
    return true;
}

/* A regular expression (json_regex.h) compiled into the schema's regexes, referred to by leaf
 * node id. */
static bool compile_regex(compiler *c, const char *src, uint32_t id) {
    qv_regex *re = NULL;
    qv_error e = {0};
    const qv_status st = qv_regex_compile(src, &re, &e);
    if (st != QV_OK) return cfail(c, st, e.msg, NULL, ""), false;
    return add_regex(c, re, id);
}

/* The `format`s quiver enforces, as patterns: RFC 3339
 * dates and times as Python's jsonschema checks them (rfc3339-validator), except that year 0000
 * and 29 February of any year pass; UUIDs (any hex case); dotted-quad IPv4 without leading
 * zeros (Python's ipaddress); IPv6 (the same); e-mail addresses in a plain form (local part of
 * ASCII letters, digits and ._%+-, a domain of dot-separated labels). Other formats are
 * annotations. */
#define RE_DATE                                                                                    \
    "\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|"   \
    "02-(?:0[1-9]|[12]\\d))"
#define RE_TIME                                                                                    \
    "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d+)?(?:[Zz]|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)"
#define RE_OCTET "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)"
#define RE_LABEL "[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
#define RE_HOST_LABEL "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?" /* RFC 1123, 1-63 */
#define RE_IPV4 "(?:" RE_OCTET "\\.){3}" RE_OCTET
#define RE_H "[0-9a-fA-F]{1,4}"
/* IPv6 as Python's ipaddress reads it (jsonschema's check): eight groups, or fewer around one
 * "::" that stands for at least one, the last two groups possibly a dotted quad */
#define RE_IPV6                                                                                    \
    "(?:" RE_H ":){7}" RE_H "|(?:" RE_H ":){1,7}:|(?:" RE_H ":){1,6}:" RE_H "|(?:" RE_H            \
    ":){1,5}(?::" RE_H "){1,2}|(?:" RE_H ":){1,4}(?::" RE_H "){1,3}|(?:" RE_H ":){1,3}(?::" RE_H   \
    "){1,4}|(?:" RE_H ":){1,2}(?::" RE_H "){1,5}|" RE_H ":(?::" RE_H "){1,6}|:(?:(?::" RE_H        \
    "){1,7}|:)|(?:" RE_H ":){6}" RE_IPV4 "|::(?:" RE_H ":){0,5}" RE_IPV4 "|(?:" RE_H ":):(?:" RE_H \
    ":){0,4}" RE_IPV4 "|(?:" RE_H ":){2}:(?:" RE_H ":){0,3}" RE_IPV4 "|(?:" RE_H ":){3}:(?:" RE_H  \
    ":){0,2}" RE_IPV4 "|(?:" RE_H ":){4}:(?:" RE_H ":)?" RE_IPV4 "|(?:" RE_H ":){5}:" RE_IPV4
/* URIs as RFC 3986 writes them (what jsonschema's check, rfc3986-validator, takes): a scheme,
 * then "//" and an authority (user info, a host: a bracketed IPv6 or IPvFuture address or a
 * registered name, which includes dotted quads; a port) with a path, or a path alone; a query
 * and a fragment. Characters outside the unreserved, sub-delims, ":" and "@" ones (a space,
 * non-ASCII) only percent-encoded. */
#define RE_PCT "%[0-9A-Fa-f]{2}"
#define RE_PCHAR "(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|" RE_PCT ")"
#define RE_URI                                                                                     \
    "[A-Za-z][A-Za-z0-9+.-]*:(?://(?:(?:[A-Za-z0-9._~!$&'()*+,;=:-]|" RE_PCT                       \
    ")*@)?(?:\\[(?:" RE_IPV6                                                                       \
    "|v[0-9A-Fa-f]+\\.[A-Za-z0-9._~!$&'()*+,;=:-]+)\\]|(?:[A-Za-z0-9._~!$&'()*+,;=-]|" RE_PCT      \
    ")*)(?::\\d*)?(?:/" RE_PCHAR "*)*|/(?:" RE_PCHAR "+(?:/" RE_PCHAR "*)*)?|" RE_PCHAR            \
    "+(?:/" RE_PCHAR "*)*)?(?:\\?(?:" RE_PCHAR "|[/?])*)?(?:#(?:" RE_PCHAR "|[/?])*)?"
/* ISO 8601 durations as JSON Schema's `duration` (what jsonschema's check, isoduration, takes):
 * "P", then whole numbers of years, months, days in that order (any of them), then "T" and
 * hours, minutes, seconds in order (at least one); or weeks alone. Each number has at most 6
 * digits: a model cannot run on in digits, and every value fits pydantic's timedelta. */
#define RE_DUR_N "\\d{1,6}"
#define RE_DUR_TIME                                                                                \
    "T(?:" RE_DUR_N "H(?:" RE_DUR_N "M)?(?:" RE_DUR_N "S)?|" RE_DUR_N "M(?:" RE_DUR_N              \
    "S)?|" RE_DUR_N "S)"
#define RE_DURATION                                                                                \
    "P(?:(?:" RE_DUR_N "Y(?:" RE_DUR_N "M)?(?:" RE_DUR_N "D)?|" RE_DUR_N "M(?:" RE_DUR_N           \
    "D)?|" RE_DUR_N "D)(?:" RE_DUR_TIME ")?|" RE_DUR_TIME "|" RE_DUR_N "W)"
static const struct {
    const char *name, *re;
    uint32_t max_len; /* characters the format allows at most besides its pattern (0: any) */
} k_formats[] = {
    {"date", "^" RE_DATE "$", 0},
    {"time", "^" RE_TIME "$", 0},
    {"date-time", "^" RE_DATE "[Tt]" RE_TIME "$", 0},
    {"uuid", "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", 0},
    {"ipv4", "^" RE_IPV4 "$", 0},
    {"ipv6", "^(?:" RE_IPV6 ")$", 0},
    {"uri", "^" RE_URI "$", 0},
    {"email", "^[A-Za-z0-9._%+-]+@" RE_LABEL "(?:\\." RE_LABEL ")+$", 0},
    {"hostname", "^" RE_HOST_LABEL "(?:\\." RE_HOST_LABEL ")*\\.?$", 253},
    {"duration", "^" RE_DURATION "$", 0},
};

/* pattern, or else a known format, of a string leaf. */
static bool compile_string_regex(compiler *c, const cJSON *j, uint32_t id) {
    const cJSON *pat = kw(j, "pattern"), *fmt = kw(j, "format");
    if (pat) {
        if (!cJSON_IsString(pat))
            return cfail(c, QV_ERR_INVALID, "'pattern' must be a string", NULL, ""), false;
        return compile_regex(c, pat->valuestring, id);
    }
    for (size_t i = 0; cJSON_IsString(fmt) && i < QV_ARRAY_LEN(k_formats); i++)
        if (!strcmp(fmt->valuestring, k_formats[i].name)) {
            snode *nd = &c->s->nodes[id];
            if (k_formats[i].max_len && nd->max > k_formats[i].max_len)
                nd->max = k_formats[i].max_len;
            return compile_regex(c, k_formats[i].re, id);
        }
    return true;
}

/* The parts of a typed schema: one structured node per structured type, the scalar and free
 * types in one leaf; one part is the node itself (through a K_REF), several an anyOf. */
static bool compile_typed(compiler *c, const cJSON *j, uint32_t id, int depth, int types) {
    if (!types) { /* inferred from the keywords */
        if (kw(j, "properties") || kw(j, "required") || kw(j, "additionalProperties") ||
            kw(j, "minProperties") || kw(j, "maxProperties"))
            types |= T_OBJECT;
        if (kw(j, "items") || kw(j, "prefixItems") || kw(j, "minItems") || kw(j, "maxItems"))
            types |= T_ARRAY;
        if (kw(j, "minLength") || kw(j, "maxLength") || kw(j, "pattern")) types |= T_STRING;
        if (kw(j, "minimum") || kw(j, "maximum") || kw(j, "exclusiveMinimum") ||
            kw(j, "exclusiveMaximum") || kw(j, "multipleOf"))
            types |= T_NUMBER;
        if (!types) types = T_ALL;
    }
    uint32_t parts[3];
    int n = 0, leaf = 0;
    const cJSON *addl = kw(j, "additionalProperties");
    if (types & T_OBJECT) {
        if (kw(j, "properties") || cJSON_IsFalse(addl) || cJSON_IsObject(addl)) {
            const uint32_t o = new_node(c, K_OBJECT);
            if (o == UINT32_MAX || !compile_object(c, j, o, depth)) return false;
            parts[n++] = o;
        } else if (kw(j, "required") && cJSON_GetArraySize(kw(j, "required")) > 0) {
            return cfail(c, QV_ERR_UNSUPPORTED, "'required' without 'properties'", NULL, ""), false;
        } else if (kw(j, "minProperties") || kw(j, "maxProperties")) {
            return cfail(c, QV_ERR_UNSUPPORTED,
                         "'minProperties' / 'maxProperties' need 'properties' or a schema in "
                         "'additionalProperties'",
                         NULL, ""),
                   false;
        } else {
            leaf |= C_OBJECT;
        }
    }
    if (types & T_ARRAY) {
        if (kw(j, "items") || kw(j, "prefixItems") || kw(j, "minItems") || kw(j, "maxItems")) {
            const uint32_t a = new_node(c, K_ARRAY);
            if (a == UINT32_MAX || !compile_array(c, j, a, depth)) return false;
            parts[n++] = a;
        } else {
            leaf |= C_ARRAY;
        }
    }
    uint32_t lo = 0, hi = NO_LIMIT;
    if (types & T_STRING) {
        leaf |= C_STRING;
        if (!count_kw(c, j, "minLength", 0, &lo) || !count_kw(c, j, "maxLength", NO_LIMIT, &hi))
            return false;
        if (lo > hi) return cfail(c, QV_ERR_INVALID, "minLength above maxLength", NULL, ""), false;
    }
    if (types & (T_NUMBER | T_INTEGER)) leaf |= C_NUMBER;
    if (types & T_BOOLEAN) leaf |= C_BOOL;
    if (types & T_NULL) leaf |= C_NULL;
    if (leaf) {
        const uint32_t l = new_leaf(c, leaf);
        if (l == UINT32_MAX) return false;
        snode *nd = &c->s->nodes[l];
        nd->integer = (types & T_INTEGER) && !(types & T_NUMBER);
        nd->min = lo;
        nd->max = hi;
        if ((leaf & C_NUMBER) && !compile_bounds(c, j, nd, nd->integer)) return false;
        if ((leaf & C_STRING) && !compile_string_regex(c, j, l)) return false;
        parts[n++] = l;
    }
    return set_alternatives(c, id, parts, n);
}

static uint32_t compile_schema(compiler *c, const cJSON *j, int depth);

/* Compiles schema j; a document of its own (c->sub_roots) is the root of its $refs. */
static uint32_t compile_node(compiler *c, const cJSON *j, int depth) {
    const cJSON *saved = c->root;
    for (size_t i = 0; i < c->n_sub_roots; i++)
        if (c->sub_roots[i] == j) c->root = j;
    const uint32_t id = compile_schema(c, j, depth);
    c->root = saved;
    return id;
}

static uint32_t compile_schema(compiler *c, const cJSON *j, int depth) {
    if (depth > 64) {
        cfail(c, QV_ERR_LIMIT, "the schema is nested too deeply", NULL, "");
        return UINT32_MAX;
    }
    for (uint32_t i = 0; i < c->n_memo; i++)
        if (c->memo_src[i] == j) return c->memo_node[i];
    if (cJSON_IsTrue(j)) return new_leaf(c, C_ALL);
    if (!cJSON_IsObject(j)) {
        cfail(c, cJSON_IsFalse(j) ? QV_ERR_UNSUPPORTED : QV_ERR_INVALID,
              "a schema must be an object or true", NULL, "");
        return UINT32_MAX;
    }
    const uint32_t id = new_node(c, K_REF);
    if (id == UINT32_MAX ||
        !grow(c, (void **)&c->memo_src, &c->cap_memo, c->n_memo + 1, sizeof(*c->memo_src)))
        return UINT32_MAX;
    uint32_t *mn = qv_realloc(c->memo_node, (size_t)c->cap_memo * sizeof(uint32_t));
    if (!mn) {
        cfail(c, QV_ERR_NOMEM, "out of memory", NULL, "");
        return UINT32_MAX;
    }
    c->memo_node = mn;
    c->memo_src[c->n_memo] = j;
    c->memo_node[c->n_memo++] = id;

    const cJSON *k;
    cJSON_ArrayForEach(k, j) {
        if (in_list(k->string, annotations, QV_ARRAY_LEN(annotations))) continue;
        if (!in_list(k->string, keywords, QV_ARRAY_LEN(keywords))) {
            cfail(c, QV_ERR_UNSUPPORTED, "keyword '", k->string, "' is not supported");
            return UINT32_MAX;
        }
    }
    const cJSON *ref = kw(j, "$ref");
    if (ref) {
        cJSON_ArrayForEach(k, j) {
            if (strcmp(k->string, "$ref") &&
                !in_list(k->string, annotations, QV_ARRAY_LEN(annotations))) {
                cfail(c, QV_ERR_UNSUPPORTED, "'", k->string, "' beside $ref");
                return UINT32_MAX;
            }
        }
        if (!cJSON_IsString(ref)) {
            cfail(c, QV_ERR_INVALID, "'$ref' must be a string", NULL, "");
            return UINT32_MAX;
        }
        const cJSON *t = resolve_pointer(c, ref->valuestring);
        const uint32_t target = t ? compile_child(c, t, depth, "$ref", NULL) : UINT32_MAX;
        if (target == UINT32_MAX) return UINT32_MAX;
        c->s->nodes[id].child = target; /* kind K_REF */
        return id;
    }
    const int types = parse_types(c, j);
    if (types < 0) return UINT32_MAX;
    bool ok;
    if (kw(j, "enum") || kw(j, "const"))
        ok = compile_enum(c, j, id, types);
    else if (kw(j, "anyOf") || kw(j, "oneOf") || kw(j, "allOf")) {
        int n = !!kw(j, "anyOf") + !!kw(j, "oneOf") + !!kw(j, "allOf");
        if (n > 1) {
            cfail(c, QV_ERR_UNSUPPORTED, "more than one of anyOf, oneOf, allOf", NULL, "");
            return UINT32_MAX;
        }
        ok = compile_anyof(c, j, id, depth,
                           kw(j, "anyOf")   ? "anyOf"
                           : kw(j, "oneOf") ? "oneOf"
                                            : "allOf");
    } else
        ok = compile_typed(c, j, id, depth, types);
    return ok ? id : UINT32_MAX;
}

/* The node a reference ends at (K_REF chains followed); UINT32_MAX for a cycle. */
static uint32_t final_node(const qv_json_schema *s, uint32_t id) {
    for (uint32_t i = 0; i <= s->n_nodes; i++) {
        if (s->nodes[id].kind != K_REF) return id;
        id = s->nodes[id].child;
    }
    return UINT32_MAX;
}

static int popcount(unsigned x) {
    int n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}

/* A tagged anyOf: its members that begin with '{' are objects whose first property is
 * required, has the same name in each, and whose value is a string enum (or const), no value
 * in two members (pydantic's discriminated unions, tool calls). The tag's value picks the
 * member; at most MAX_PROPS tag values in all. */
static int node_classes(compiler *c, uint32_t id, int depth);

static int tag_fail(compiler *c) {
    cfail(c, QV_ERR_UNSUPPORTED,
          "anyOf / oneOf members must begin differently (an object, an array, a string, a "
          "number, a boolean, null), or be objects told apart by the string enum or const of "
          "their first property (required, of the same name in each, each value in one member "
          "only), or by the first property written (each member's properties up to its first "
          "required one named in that member only)",
          NULL, "");
    return -1;
}

static bool same_span(const qv_json_schema *s, const sspan *x, const sspan *y) {
    return x->len == y->len && !memcmp(s->bytes + x->off, s->bytes + y->off, x->len);
}

/* Whether the members of anyOf id that may begin with '{' are all K_OBJECT (1, 0 if not, -1:
 * an error, set). */
static int objects_only(compiler *c, uint32_t id, int depth) {
    const qv_json_schema *s = c->s;
    for (uint32_t i = 0; i < s->nodes[id].n; i++) {
        const uint32_t mi = s->alts[s->nodes[id].first + i];
        if (s->nodes[mi].kind == K_OBJECT) continue;
        const int k = node_classes(c, mi, depth + 1);
        if (k < 0) return -1;
        if (k & C_OBJECT) return 0;
    }
    return 1;
}

/* Tagged (1): each object member's first property is required, of the same name in each, and
 * a string enum or const, no value in two members. 0: not so; -1: an error, set. */
static int tag_check(compiler *c, uint32_t id, int depth) {
    const qv_json_schema *s = c->s;
    const sspan *key = NULL;
    uint32_t lits = 0;
    const int only = objects_only(c, id, depth);
    if (only <= 0) return only;
    for (uint32_t i = 0; i < s->nodes[id].n; i++) {
        const snode *m = &s->nodes[s->alts[s->nodes[id].first + i]];
        if (m->kind != K_OBJECT) continue;
        const sprop *p = m->n ? prop_of(s, m, 0) : NULL;
        const snode *v = p ? &s->nodes[p->node] : NULL;
        if (!p || !p->required || v->kind != K_ENUM || (key && !same_span(s, key, &p->key)))
            return 0;
        for (uint32_t j = 0; j < v->n; j++) {
            const sspan *x = lit_of(s, v, j);
            if (s->bytes[x->off] != '"') return 0;
            for (uint32_t k = 0; k < i; k++) { /* the value in an earlier member too */
                const snode *o = &s->nodes[s->alts[s->nodes[id].first + k]];
                if (o->kind != K_OBJECT) continue;
                const snode *ov = &s->nodes[prop_of(s, o, 0)->node];
                for (uint32_t q = 0; q < ov->n; q++)
                    if (same_span(s, lit_of(s, ov, q), x)) return 0;
            }
        }
        key = &p->key;
        lits += v->n;
    }
    if (lits > MAX_PROPS)
        return cfail(c, QV_ERR_LIMIT, "more than 255 tag values in one anyOf", NULL, ""), -1;
    return 1;
}

/* Keyed (1): the object members' possible first properties (lead) are each named in one
 * member only, so the first key written picks the member. 0: not so; -1: an error, set. */
static int key_check(compiler *c, uint32_t id, int depth) {
    const qv_json_schema *s = c->s;
    const snode *nd = &s->nodes[id];
    uint32_t keys = 0;
    const int only = objects_only(c, id, depth);
    if (only <= 0) return only;
    for (uint32_t i = 0; i < nd->n; i++) {
        const snode *m = &s->nodes[s->alts[nd->first + i]];
        if (m->kind != K_OBJECT) continue;
        for (uint32_t j = 0; j < m->lead; j++)
            for (uint32_t k = 0; k < i; k++) { /* named in an earlier member too */
                const snode *o = &s->nodes[s->alts[nd->first + k]];
                for (uint32_t q = 0; o->kind == K_OBJECT && q < o->lead; q++)
                    if (same_span(s, &prop_of(s, o, q)->key, &prop_of(s, m, j)->key)) return 0;
            }
        keys += m->lead;
    }
    if (keys > MAX_PROPS)
        return cfail(c, QV_ERR_LIMIT, "more than 255 first properties in one anyOf", NULL, ""), -1;
    return 1;
}

/* The first-byte classes of node id (recursing into anyOf); -1: alternatives overlap or
 * cycle. */
static int node_classes(compiler *c, uint32_t id, int depth) {
    const qv_json_schema *s = c->s;
    const snode *nd = &s->nodes[id];
    switch (nd->kind) {
    case K_LEAF: return nd->classes;
    case K_OBJECT:
    case K_MAP: return C_OBJECT;
    case K_ARRAY: return C_ARRAY;
    case K_ENUM: {
        int m = 0;
        for (uint32_t i = 0; i < nd->n; i++)
            m |= byte_class(s->bytes[s->lits[nd->first + i].off]);
        return m;
    }
    case K_ANYOF: {
        if (depth > 64) {
            cfail(c, QV_ERR_UNSUPPORTED, "anyOf refers to itself", NULL, "");
            return -1;
        }
        int m = 0, sum = 0, objects = 0;
        for (uint32_t i = 0; i < nd->n; i++) {
            const int k = node_classes(c, s->alts[nd->first + i], depth + 1);
            if (k < 0) return -1;
            m |= k;
            sum += popcount((unsigned)k);
            objects += (k & C_OBJECT) != 0;
        }
        if (objects > 1 && sum - popcount((unsigned)m) == objects - 1) {
            const int t = tag_check(c, id, depth), k = t == 0 ? key_check(c, id, depth) : 0;
            if (t < 0 || k < 0) return -1;
            if (!t && !k) return tag_fail(c);
            c->s->nodes[id].tagged = t ? AN_TAGGED : AN_KEYED;
            return m;
        }
        if (sum != popcount((unsigned)m)) {
            cfail(c, QV_ERR_UNSUPPORTED,
                  "anyOf / oneOf members must begin differently (an object, an array, a string, a "
                  "number, a boolean, null)",
                  NULL, "");
            return -1;
        }
        return m;
    }
    default: return -1;
    }
}

/* Replaces every reference by its final node and fills in classes. */
static bool finish(compiler *c) {
    qv_json_schema *s = c->s;
    c->path_len = 0;
    c->path[0] = '\0';
#define FINAL(x)                                                                                   \
    do {                                                                                           \
        const uint32_t f_ = final_node(s, (x));                                                    \
        if (f_ == UINT32_MAX)                                                                      \
            return cfail(c, QV_ERR_INVALID, "$ref cycle without a value", NULL, ""), false;        \
        (x) = f_;                                                                                  \
    } while (0)
    FINAL(s->root);
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        snode *nd = &s->nodes[i];
        if ((nd->kind == K_ARRAY || nd->kind == K_MAP)) FINAL(nd->child);
    }
    for (uint32_t i = 0; i < s->n_props; i++)
        FINAL(s->props[i].node);
    for (uint32_t i = 0; i < s->n_alts; i++)
        FINAL(s->alts[i]);
#undef FINAL
    for (uint32_t i = 0; i < s->n_nodes; i++) {
        if (s->nodes[i].kind == K_REF) continue;
        const int k = node_classes(c, i, 0);
        if (k < 0) return false;
        s->nodes[i].classes = (uint8_t)k;
    }
    return true;
}

/* The canonical text (prefix + compact JSON of root) and its hash. */
static qv_status set_text(qv_json_schema *s, const char *prefix, const cJSON *root, qv_error *err) {
    char *t = cJSON_PrintUnformatted(root);
    const size_t np = strlen(prefix), nt = t ? strlen(t) : 0;
    s->text = t ? qv_malloc(np + nt + 1) : NULL;
    if (s->text) {
        memcpy(s->text, prefix, np);
        memcpy(s->text + np, t, nt + 1);
    }
    cJSON_free(t);
    if (!s->text) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = s->text; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    s->hash = h;
    return QV_OK;
}

/* Parses text (at most max_bytes) and starts a schema and its compiler (c->st: the outcome). */
/* A new schema for the compiler, whose canonical source is root (taken; deleted on failure,
 * NULL: out of memory). Returns root, or NULL with c->st set. */
static cJSON *schema_start(compiler *c, cJSON *root, qv_error *err) {
    if (!root || !(c->s = qv_calloc(1, sizeof(*c->s)))) {
        cJSON_Delete(root);
        c->st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    atomic_init(&c->s->refs, 1);
    c->root = root;
    c->s->key_node = new_leaf(c, C_STRING);
    return root;
}

static cJSON *schema_begin(const char *text, size_t len, const char *what, compiler *c,
                           qv_error *err) {
    *c = (compiler){.err = err};
    if (len > QV_JSON_SCHEMA_MAX_BYTES) {
        c->st = qv_errorf(err, QV_ERR_LIMIT, "the %s is larger than %u bytes", what,
                          QV_JSON_SCHEMA_MAX_BYTES);
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        c->st = qv_errorf(err, QV_ERR_INVALID, "the %s is not valid JSON", what);
        return NULL;
    }
    return schema_start(c, root, err);
}

/* Ends what schema_begin started: the canonical text on success, *out or the error. */
static qv_status schema_end(compiler *c, cJSON *root, const char *prefix, qv_json_schema **out) {
    if (c->st == QV_OK) c->st = set_text(c->s, prefix, root, c->err);
    qv_free(c->memo_src);
    qv_free(c->memo_node);
    cJSON_Delete(root);
    if (c->st != QV_OK) {
        qv_json_schema_unref(c->s);
        return c->st;
    }
    *out = c->s;
    return QV_OK;
}

qv_status qv_json_schema_compile(const char *text, size_t len, qv_json_schema **out,
                                 qv_error *err) {
    return qv_json_schema_compile_flags(text, len, 0, out, err);
}

qv_status qv_json_schema_compile_flags(const char *text, size_t len, unsigned flags,
                                       qv_json_schema **out, qv_error *err) {
    *out = NULL;
    compiler c;
    cJSON *root = schema_begin(text, len, "schema", &c, err);
    if (!root) return c.st;
    qv_json_schema *s = c.s;
    s->compact = flags & QV_JSON_COMPACT;
    s->root = s->key_node == UINT32_MAX ? UINT32_MAX : compile_node(&c, root, 0);
    if (s->root != UINT32_MAX) finish(&c);
    return schema_end(&c, root, s->compact ? "compact:" : "", out);
}

bool qv_json_schema_object_only(const qv_json_schema *s) {
    return s->nodes[s->root].classes == C_OBJECT;
}

/* The schema of a function's arguments: its parameters; {} (any value): any object; absent
 * (OpenAI: an empty parameter list): no arguments. */
static cJSON *call_parameters(const cJSON *fn) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(fn, "parameters");
    const bool absent = !p || cJSON_IsNull(p), any = cJSON_IsObject(p) && !p->child;
    if (!absent && !any) return cJSON_Duplicate(p, true);
    cJSON *o = cJSON_CreateObject();
    if (o && (!cJSON_AddStringToObject(o, "type", "object") ||
              (absent && !cJSON_AddObjectToObject(o, "properties")))) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* {"name": {"const": name}, "arguments": parameters}, both required. */
static cJSON *call_schema(const cJSON *fn, const char *name, const cJSON **args) {
    cJSON *o = cJSON_CreateObject(), *props = NULL, *req = NULL, *nm = NULL;
    cJSON *params = call_parameters(fn);
    *args = params;
    if (!o || !params || !cJSON_AddStringToObject(o, "type", "object") ||
        !(props = cJSON_AddObjectToObject(o, "properties")) ||
        !(nm = cJSON_AddObjectToObject(props, "name")) ||
        !cJSON_AddStringToObject(nm, "const", name) ||
        !cJSON_AddItemToObject(props, "arguments", params) ||
        !(req = cJSON_AddArrayToObject(o, "required")) ||
        !cJSON_AddItemToArray(req, cJSON_CreateString("name")) ||
        !cJSON_AddItemToArray(req, cJSON_CreateString("arguments"))) {
        if (!cJSON_GetObjectItemCaseSensitive(props, "arguments")) cJSON_Delete(params);
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

qv_status qv_json_schema_compile_calls(const char *tools, size_t len, bool parallel, unsigned flags,
                                       qv_json_schema **out, qv_error *err) {
    *out = NULL;
    compiler c;
    cJSON *list = schema_begin(tools, len, "list of tools", &c, err);
    if (!list) return c.st;
    const int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : 0;
    cJSON *root = cJSON_CreateObject(), *alts = NULL, *items = NULL;
    const cJSON **args = qv_calloc((size_t)QV_MAX(n, 1), sizeof(*args));
    if (!root || !args || !cJSON_AddStringToObject(root, "type", "array") ||
        !cJSON_AddNumberToObject(root, "minItems", 1) ||
        (!parallel && !cJSON_AddNumberToObject(root, "maxItems", 1)) ||
        !(items = cJSON_AddObjectToObject(root, "items")) ||
        !(alts = cJSON_AddArrayToObject(items, "anyOf")))
        c.st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    if (c.st == QV_OK && (n <= 0 || (uint32_t)n > MAX_ALTS))
        c.st = qv_errorf(err, QV_ERR_INVALID, "the tools must be a list of 1 to %u functions",
                         MAX_ALTS);
    const cJSON *t;
    int i = 0;
    cJSON_ArrayForEach(t, list) {
        if (c.st != QV_OK) break;
        const cJSON *fn = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
        if (!cJSON_IsObject(fn) || !cJSON_IsString(name)) {
            c.st = qv_errorf(err, QV_ERR_INVALID, "tool %d has no function name", i);
            break;
        }
        cJSON *m = call_schema(fn, name->valuestring, &args[i]);
        if (!m || !cJSON_AddItemToArray(alts, m)) {
            cJSON_Delete(m);
            c.st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        }
        i++;
    }
    cJSON_Delete(list);
    c.root = root;
    c.sub_roots = args;
    c.n_sub_roots = (size_t)i;
    qv_json_schema *s = c.s;
    if (c.st == QV_OK) {
        s->root = compile_node(&c, root, 0);
        if (s->root != UINT32_MAX && finish(&c)) {
            /* every call's arguments must be a JSON object */
            const uint32_t it = s->nodes[s->root].child;
            const bool one = s->nodes[it].kind == K_OBJECT;
            for (uint32_t k = 0; k < (one ? 1 : s->nodes[it].n) && c.st == QV_OK; k++) {
                const snode *m = &s->nodes[one ? it : s->alts[s->nodes[it].first + k]];
                if (s->nodes[prop_of(s, m, 1)->node].classes != C_OBJECT)
                    c.st = qv_errorf(err, QV_ERR_INVALID,
                                     "the parameters of tool %u must be an object schema", k);
            }
        }
    }
    qv_free(args);
    s->compact = flags & QV_JSON_COMPACT;
    return schema_end(&c, root, s->compact ? "compact:calls:" : "calls:", out);
}

qv_status qv_json_schema_compile_choice(const char *text, size_t len, qv_json_schema **out,
                                        qv_error *err) {
    *out = NULL;
    compiler c;
    cJSON *root = schema_begin(text, len, "list of choices", &c, err);
    if (!root) return c.st;
    qv_json_schema *s = c.s;
    const int n = cJSON_IsArray(root) ? cJSON_GetArraySize(root) : 0;
    if (n <= 0 || (uint32_t)n > MAX_PROPS)
        c.st = qv_errorf(err, QV_ERR_INVALID, "the choices must be a list of 1 to %u strings",
                         MAX_PROPS);
    if (c.st == QV_OK) s->root = new_node(&c, K_ENUM);
    const cJSON *v;
    cJSON_ArrayForEach(v, root) {
        if (c.st != QV_OK) break;
        const size_t k = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
        if (!k || !qv__utf8_valid(v->valuestring, k)) {
            c.st = qv_errorf(err, QV_ERR_INVALID, "every choice must be a non-empty UTF-8 string");
            break;
        }
        bool dup = false;
        for (uint32_t i = 0; i < s->n_lits; i++)
            dup |= s->lits[i].len == k && !memcmp(s->bytes + s->lits[i].off, v->valuestring, k);
        sspan sp;
        if (!dup && add_bytes(&c, v->valuestring, k, &sp) &&
            grow(&c, (void **)&s->lits, &s->cap_lits, s->n_lits + 1, sizeof(sspan)))
            s->lits[s->n_lits++] = sp;
    }
    if (c.st == QV_OK) {
        s->nodes[s->root].n = s->n_lits;
        s->nodes[s->root].classes = C_ALL; /* no anyOf refers to it */
    }
    return schema_end(&c, root, "choice:", out);
}

qv_status qv_json_schema_compile_regex(const char *pattern, size_t len, qv_json_schema **out,
                                       qv_error *err) {
    *out = NULL;
    if (len > QV_JSON_SCHEMA_MAX_BYTES)
        return qv_errorf(err, QV_ERR_LIMIT, "the regex is larger than %u bytes",
                         QV_JSON_SCHEMA_MAX_BYTES);
    if (!qv__utf8_valid(pattern, len) || memchr(pattern, 0, len))
        return qv_errorf(err, QV_ERR_INVALID, "the regex is not UTF-8 text");
    /* the whole text matches: anchored, an anchor the pattern already has dropped */
    size_t b = 0, e = len;
    if (e > b && pattern[b] == '^') b++;
    size_t bs = 0; /* backslashes before the last byte: a "\$" is a literal */
    while (e - bs > b + 1 && pattern[e - 2 - bs] == '\\')
        bs++;
    if (e > b && pattern[e - 1] == '$' && bs % 2 == 0) e--;
    char *src = qv_malloc(e - b + 8), *lit = qv_malloc(len + 1);
    cJSON *root = NULL;
    compiler c = {.err = err};
    if (src && lit) {
        memcpy(src, "^(?:", 4);
        memcpy(src + 4, pattern + b, e - b);
        memcpy(src + 4 + (e - b), ")$", 3);
        memcpy(lit, pattern, len);
        lit[len] = '\0';
        root = cJSON_CreateString(lit);
    }
    qv_free(lit);
    if (!(root = schema_start(&c, root, err))) {
        qv_free(src);
        return c.st;
    }
    if (c.st == QV_OK) c.s->root = new_node(&c, K_RAW);
    qv_regex *re = NULL; /* compiled here (not compile_regex), for the regex's own message */
    if (c.st == QV_OK) c.st = qv_regex_compile(src, &re, err);
    if (c.st == QV_OK && add_regex(&c, re, c.s->root)) c.s->nodes[c.s->root].classes = C_ALL;
    qv_free(src);
    return schema_end(&c, root, "regex:", out);
}

qv_json_schema *qv_json_schema_ref(qv_json_schema *s) {
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void qv_json_schema_unref(qv_json_schema *s) {
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
    qv_free(s->nodes);
    qv_free(s->props);
    qv_free(s->lits);
    qv_free(s->alts);
    qv_free(s->bytes);
    for (uint32_t i = 0; i < s->n_regexes; i++)
        qv_regex_free(s->regexes[i]);
    qv_free(s->regexes);
    qv_free(s->text);
    qv_free(s);
}

const char *qv_json_schema_text(const qv_json_schema *s) { return s->text; }
uint64_t qv_json_schema_hash(const qv_json_schema *s) { return s->hash; }

/* ---- JSON Schema: recognising ---- */

/* Whether spans x and y both have at least n bytes and agree on them. */
static bool same_prefix(const qv_json_schema *s, const sspan *x, const sspan *y, uint32_t n) {
    return x->len >= n && y->len >= n && !memcmp(s->bytes + x->off, s->bytes + y->off, n);
}

static uint16_t inc(uint16_t a) { return a < MAX_COUNT ? (uint16_t)(a + 1) : a; }

/* Whether a string's characters or an array's items are counted: only when limited, so that
 * the positions of an unlimited one are one state (and one cached mask). */
static bool counted(const snode *nd) {
    return nd->min > 0 || nd->max != NO_LIMIT || (nd->kind == K_ARRAY && nd->n);
}

/* The schema of an array's item at index i: its prefixItems entry, else items. */
static uint32_t item_node(const qv_json_schema *s, const snode *nd, uint32_t i) {
    return i < nd->n ? s->alts[nd->first + i] : nd->child;
}

static bool push(qv_json_sstate *st, uint32_t node) {
    if (st->depth >= QV_JSON_SCHEMA_MAX_FRAMES) return false;
    st->f[st->depth++] = (qv_json_frame){.node = (uint16_t)node};
    return true;
}

static void pop(qv_json_sstate *st) { st->f[--st->depth] = (qv_json_frame){0}; }

static void leaf_pop(qv_json_sstate *st) {
    st->leaf = (qv_json_state){0};
    st->cp = 0;
    st->re = 0;
    pop(st);
}

/* A string with a pattern: the code point that byte c completes (given the string's
 * lexer state before it: sub, utf8), or -1 while a character is still being read. */
static int64_t string_cp(qv_json_sstate *st, uint8_t sub, uint8_t utf8, uint8_t c) {
    if (utf8) {
        st->cp = st->cp << 6 | (c & 0x3Fu);
        return utf8 == 1 ? (int64_t)st->cp : -1;
    }
    if (sub == 1) {
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        if (c == 'u') return st->cp = 0, -1;
        return (uint8_t)to[strchr(from, c) - from];
    }
    if (sub >= 2) {
        st->cp = st->cp << 4 | (uint32_t)(is_digit(c) ? c - '0' : (c | 32) - 'a' + 10);
        return sub == 2 ? (int64_t)st->cp : -1;
    }
    if (c == '\\') return -1;
    if (c < 0x80) return c;
    st->cp = c & (c >= 0xF0 ? 0x07u : c >= 0xE0 ? 0x0Fu : 0x1Fu);
    return -1;
}

/* Strings under a pattern are written plainly: a printable ASCII character (U+0020..U+007E) is
 * never a \u escape or \/ (\" and \\ stay), so that a model cannot drift into escaping what
 * it could write. Whether some code point of [lo, hi] that an escape may still give steps re. */
static bool escape_can_step(const qv_regex *re, uint64_t state, uint32_t lo, uint32_t hi,
                            uint32_t budget) {
    return (lo < 0x20 && qv_regex_can_step(re, state, lo, QV_MIN(hi, 0x1Fu), budget)) ||
           (hi > 0x7E && qv_regex_can_step(re, state, QV_MAX(lo, 0x7Fu), hi, budget));
}

/* A character still being read (after a '\', inside a \u escape or a UTF-8 sequence): whether
 * some character it may still become can follow in the pattern within the string's length
 * budget, so that no accepted prefix is a dead end (the model would find no token to go on
 * with). l: the lexer after the byte. */
static bool partial_can_match(const qv_regex *re, const qv_json_sstate *st, const qv_json_state *l,
                              uint32_t budget) {
    if (l->utf8) {
        const uint32_t lo = st->cp << (6 * l->utf8);
        return qv_regex_can_step(re, st->re, lo, lo | ((1u << (6 * l->utf8)) - 1), budget);
    }
    if (l->sub >= 2) { /* \u: sub - 1 hex digits to come */
        const uint32_t lo = st->cp << (4 * (l->sub - 1));
        return escape_can_step(re, st->re, lo, lo | ((1u << (4 * (l->sub - 1))) - 1), budget);
    }
    /* after '\': \" \\, or an escape of a control or non-ASCII character */
    return qv_regex_can_step(re, st->re, '"', '"', budget) ||
           qv_regex_can_step(re, st->re, '\\', '\\', budget) ||
           escape_can_step(re, st->re, 0, 0xFFFF, budget);
}

static bool number_can_end(const qv_json_state *l) {
    return l->sub == N_ZERO || l->sub == N_INT || l->sub == N_FRAC || l->sub == N_EXP;
}

/* Whether a required property comes at index from or later. */
static bool required_from(const qv_json_schema *s, const snode *nd, uint32_t from) {
    for (uint32_t j = from; j < nd->n; j++)
        if (prop_of(s, nd, j)->required) return true;
    return false;
}

/* Enum: a value equal to the bytes read so far, and one that goes on. */
static bool enum_exact(const qv_json_schema *s, const snode *nd, const qv_json_frame *fr) {
    const sspan *cur = lit_of(s, nd, fr->cur);
    for (uint32_t j = 0; j < nd->n; j++) {
        const sspan *x = lit_of(s, nd, j);
        if (x->len == fr->a && same_prefix(s, x, cur, fr->a)) return true;
    }
    return false;
}

static bool enum_longer(const qv_json_schema *s, const snode *nd, const qv_json_frame *fr) {
    const sspan *cur = lit_of(s, nd, fr->cur);
    for (uint32_t j = 0; j < nd->n; j++) {
        const sspan *x = lit_of(s, nd, j);
        if (x->len > fr->a && same_prefix(s, x, cur, fr->a)) return true;
    }
    return false;
}

/* Results of the frame steps below. */
enum {
    R_NO = 0,
    R_YES = 1,
    R_AGAIN = -1 /* the byte goes to the new top frame */,
    R_BETWEEN = 2 /* not inside a token: whitespace and structure come next */
};

/* ---- numeric bounds: the value read so far is in the frame (cur: flags, a:b the integer
 * part's magnitude below 2^31). Magnitudes x of the sign read must satisfy x >= L (> when
 * strict) and x <= U (< when strict); a prefix is kept while some completion can. */
enum { NB_NEG = 1, NB_FRAC = 2, NB_ZEROS = 4, NB_NZ = 8, NB_BIG = 16 };

typedef struct mbounds {
    bool l_on, u_on, ls, us;
    int64_t l, u;
    int64_t k; /* multipleOf (> 1), else 0 */
} mbounds;

static bool bounded(const snode *nd) { return nd->lo_on || nd->hi_on; }

static mbounds mag_bounds(const snode *nd, bool neg) {
    if (!neg)
        return (mbounds){nd->lo_on, nd->hi_on, nd->lo_strict, nd->hi_strict,
                         nd->lo,    nd->hi,    nd->mult};
    return (mbounds){nd->hi_on, nd->lo_on, nd->hi_strict, nd->lo_strict,
                     -nd->hi,   -nd->lo,   nd->mult};
}

static int64_t get_mag(const qv_json_frame *fr) { return (int64_t)fr->a << 16 | fr->b; }

/* Whether some magnitude in [a, b) (integers: [a, b - 1]) meets the bounds; under multipleOf
 * a multiple among the integers of [a, b - 1] (multipleOf always sets both bounds). */
static bool span_ok(const mbounds *m, bool integer, int64_t a, int64_t b) {
    if (m->k) {
        const int64_t lo = QV_MAX(a, m->ls ? m->l + 1 : m->l),
                      hi = QV_MIN(b - 1, m->us ? m->u - 1 : m->u);
        return lo <= hi && (lo + m->k - 1) / m->k * m->k <= hi; /* lo >= a >= 0 */
    }
    if (m->u_on && (m->us && !integer ? a >= m->u : a > m->u)) return false;
    return !m->l_on || (integer ? b - 1 >= m->l : b > m->l);
}

/* Whether an integer part that starts with magnitude x (more: more digits may follow) can
 * still meet the bounds, with a fraction when the leaf is not integer. */
static bool prefix_ok(const mbounds *m, bool integer, int64_t x, bool more, bool big) {
    if (big) return !m->u_on;
    for (int64_t p = 1; p <= (int64_t)BOUND_LIMIT * 10; p *= 10) {
        const int64_t a = x * p, b = (x + 1) * p;
        if (m->u_on && a > m->u) return false;
        if (span_ok(m, integer, a, b)) return true;
        if (!more) return false;
        if (!m->u_on) return true; /* longer ones grow past any lower bound */
    }
    return false;
}

/* Whether the number may end here. */
static bool bound_end(const snode *nd, const qv_json_frame *fr) {
    if (fr->cur & NB_FRAC) return !(fr->cur & NB_NZ); /* '.' checked a multiple's integer part */
    const mbounds m = mag_bounds(nd, fr->cur & NB_NEG);
    if (fr->cur & NB_BIG) return !m.u_on;
    const int64_t x = get_mag(fr);
    if (m.k && x % m.k) return false;
    return (!m.l_on || (m.ls ? x > m.l : x >= m.l)) && (!m.u_on || (m.us ? x < m.u : x <= m.u));
}

/* Byte c of a bounded number (first: its first byte; sub: the lexer's number part before
 * c). Updates the frame; false when no completion could meet the bounds. */
static bool bound_byte(const snode *nd, qv_json_frame *fr, bool first, uint8_t sub, uint8_t c) {
    const bool integer = nd->integer;
    if (first && c == '-') {
        const mbounds m = mag_bounds(nd, true);
        if (!prefix_ok(&m, integer, 0, true, false) && !span_ok(&m, integer, 0, 1)) return false;
        fr->cur |= NB_NEG;
        return true;
    }
    const mbounds m = mag_bounds(nd, fr->cur & NB_NEG);
    if (is_digit(c) && !(fr->cur & NB_FRAC)) {
        const bool none = first || sub == N_MINUS;
        bool big = fr->cur & NB_BIG;
        int64_t x = none ? 0 : get_mag(fr);
        if (!big) x = x * 10 + (c - '0');
        if (x >= (int64_t)BOUND_LIMIT) big = true, x = 0;
        if (!prefix_ok(&m, integer, x, x != 0 || big, big)) return false;
        if (big) fr->cur |= NB_BIG;
        fr->a = (uint16_t)(x >> 16);
        fr->b = (uint16_t)(x & 0xFFFF);
        return true;
    }
    if (c == '.') { /* the magnitude will be in [x, x + 1) */
        const int64_t x = get_mag(fr);
        uint8_t f = NB_FRAC;
        if (fr->cur & NB_BIG) {
            if (m.u_on) return false;
        } else {
            if (m.u_on && (x > m.u || (x == m.u && m.us))) return false;
            if (m.u_on && x == m.u) f |= NB_ZEROS;
            if (m.l_on && x < m.l) return false;
            if (m.l_on && x == m.l && m.ls) f |= NB_NZ;
            if (m.k) { /* a whole multiple: zeros only after the point */
                if (x % m.k || (f & NB_NZ)) return false;
                f |= NB_ZEROS;
            }
        }
        fr->cur |= f;
        return true;
    }
    if (is_digit(c)) { /* a fraction digit */
        if ((fr->cur & NB_ZEROS) && c != '0') return false;
        if (c != '0') fr->cur &= (uint8_t)~NB_NZ;
        return true;
    }
    return false; /* no exponent with bounds */
}

/* Inside a free value or scalar. */
static int leaf_in(const qv_json_schema *s, qv_json_sstate *st, qv_json_frame *fr, const snode *nd,
                   uint8_t c) {
    qv_json_state *l = &st->leaf;
    if (l->depth == 0 && l->mode == M_NUMBER) { /* it ends at the first byte not its own */
        qv_json_state t = *l;
        const int r = number_byte(&t, c);
        if (r == 1) {
            if (nd->integer && (c == '.' || c == 'e' || c == 'E')) return R_NO;
            if (bounded(nd) && !bound_byte(nd, fr, false, l->sub, c)) return R_NO;
            *l = t;
            return R_YES;
        }
        if (r == 0 || !number_can_end(l) || (bounded(nd) && !bound_end(nd, fr))) return R_NO;
        leaf_pop(st);
        return R_AGAIN;
    }
    if (l->depth == 0 && l->mode == M_STRING) { /* count characters */
        const bool between = !l->sub && !l->utf8;
        const qv_regex *re = nd->re ? s->regexes[nd->re - 1] : NULL;
        if (between && c == '"') {
            if (fr->a < nd->min || (re && !qv_regex_accepts(re, st->re))) return R_NO;
        } else if (between && fr->a >= nd->max) {
            return R_NO;
        }
        const uint8_t sub = l->sub, utf8 = l->utf8;
        if (!step(l, c)) return R_NO;
        if (l->mode == M_STRING) {
            if (re) {
                /* characters a string may still take after this one */
                const uint32_t budget = nd->max == NO_LIMIT ? NO_LIMIT : nd->max - fr->a - 1;
                const int64_t cp = string_cp(st, sub, utf8, c);
                const bool plain = cp == '"' || cp == '\\' ? sub <= 1 : sub == 0;
                if (cp >= 0x20 && cp <= 0x7E && !plain) return R_NO; /* see escape_can_step */
                if (cp >= 0 && (!qv_regex_step(re, &st->re, (uint32_t)cp) ||
                                qv_regex_min_left(re, st->re) > budget))
                    return R_NO;
                if (cp >= 0) st->cp = 0;
                if (cp < 0 && !partial_can_match(re, st, l, budget)) return R_NO;
            }
            if (!l->sub && !l->utf8 && counted(nd)) fr->a = inc(fr->a);
        } else {
            leaf_pop(st);
        }
        return R_YES;
    }
    if (s->compact && is_ws(c) && l->mode != M_STRING) return R_NO;
    if (!step(l, c)) return R_NO;
    if (l->mode == M_DONE) leaf_pop(st);
    return R_YES;
}

/* Inside an enum value: the first value (by index) that agrees with the bytes read. */
static int enum_in(const qv_json_schema *s, qv_json_sstate *st, qv_json_frame *fr, const snode *nd,
                   uint8_t c) {
    const sspan *cur = lit_of(s, nd, fr->cur);
    for (uint32_t j = 0; j < nd->n; j++) {
        const sspan *x = lit_of(s, nd, j);
        if (x->len > fr->a && s->bytes[x->off + fr->a] == c && same_prefix(s, x, cur, fr->a)) {
            fr->cur = (uint8_t)j;
            fr->a++;
            if (enum_exact(s, nd, fr) && !enum_longer(s, nd, fr)) pop(st);
            return R_YES;
        }
    }
    if (!enum_exact(s, nd, fr)) return R_NO;
    pop(st); /* a number that a longer value would have continued */
    return R_AGAIN;
}

/* Inside a property name: the first allowed property (by index) that agrees with the bytes
 * read. Allowed: a = the first not yet passed, up to the first required one. */
static int key_in(const qv_json_schema *s, qv_json_frame *fr, const snode *nd, uint8_t c) {
    uint32_t hi = fr->a;
    while (hi + 1 < nd->n && !prop_of(s, nd, hi)->required)
        hi++;
    const sspan *cur = &prop_of(s, nd, fr->cur)->key;
    for (uint32_t j = fr->a; j <= hi; j++) {
        const sspan *x = &prop_of(s, nd, j)->key;
        if (x->len > fr->b && s->bytes[x->off + fr->b] == c && same_prefix(s, x, cur, fr->b)) {
            fr->cur = (uint8_t)j;
            fr->b++;
            return R_YES;
        }
    }
    if (c != '"') return R_NO;
    for (uint32_t j = fr->a; j <= hi; j++) {
        const sspan *x = &prop_of(s, nd, j)->key;
        if (x->len == fr->b && same_prefix(s, x, cur, fr->b)) {
            *fr = (qv_json_frame){.node = fr->node, .phase = OB_COLON, .cur = (uint8_t)j};
            return R_YES;
        }
    }
    return R_NO;
}

/* A tagged anyOf (tag_check): the key of its first object member's first property. */
static const sspan *tag_key(const qv_json_schema *s, const snode *nd) {
    for (uint32_t i = 0;; i++) {
        const snode *m = &s->nodes[s->alts[nd->first + i]];
        if (m->kind == K_OBJECT) return &prop_of(s, m, 0)->key;
    }
}

/* Tag value g (numbered over the object members in order): its text and its member. */
static const sspan *tag_value(const qv_json_schema *s, const snode *nd, uint32_t g,
                              uint32_t *member) {
    for (uint32_t i = 0; i < nd->n; i++) {
        const snode *m = &s->nodes[s->alts[nd->first + i]];
        if (m->kind != K_OBJECT) continue;
        const snode *v = &s->nodes[prop_of(s, m, 0)->node];
        if (g < v->n) {
            *member = s->alts[nd->first + i];
            return lit_of(s, v, g);
        }
        g -= v->n;
    }
    return NULL;
}

/* Byte c of a tagged anyOf's tag value (fr->a bytes matched, fr->cur the first value that
 * agrees): once a value is whole, the frame becomes its member's, after the first property. */
static int tag_value_in(const qv_json_schema *s, qv_json_frame *fr, const snode *nd, uint8_t c) {
    uint32_t member;
    const sspan *cur = fr->a ? tag_value(s, nd, fr->cur, &member) : NULL;
    uint32_t g = 0; /* one pass over the values, member by member */
    for (uint32_t i = 0; i < nd->n; i++) {
        const snode *m = &s->nodes[s->alts[nd->first + i]];
        if (m->kind != K_OBJECT) continue;
        const snode *v = &s->nodes[prop_of(s, m, 0)->node];
        for (uint32_t j = 0; j < v->n; j++, g++) {
            const sspan *x = lit_of(s, v, j);
            if (x->len <= fr->a || s->bytes[x->off + fr->a] != c ||
                (cur && !same_prefix(s, x, cur, fr->a)))
                continue;
            if (fr->a + 1u == x->len) /* the closing quote: strings are prefix-free */
                *fr = (qv_json_frame){.node = (uint16_t)s->alts[nd->first + i], .phase = OB_AFTER};
            else
                fr->cur = (uint8_t)g, fr->a++, fr->phase = AN_VAL_IN;
            return R_YES;
        }
    }
    return R_NO;
}

/* First key g of a keyed anyOf (key_check; numbered over its object members' lead properties in
 * order): its name, its member and the property's index there; NULL past the last. */
static const sspan *keyed_key(const qv_json_schema *s, const snode *nd, uint32_t g,
                              uint32_t *member, uint32_t *prop) {
    for (uint32_t i = 0; i < nd->n; i++) {
        const uint32_t mi = s->alts[nd->first + i];
        const snode *m = &s->nodes[mi];
        const uint32_t k = m->kind == K_OBJECT ? m->lead : 0;
        if (g < k) {
            *member = mi;
            *prop = g;
            return &prop_of(s, m, g)->key;
        }
        g -= k;
    }
    return NULL;
}

/* Whether a keyed anyOf may be the empty object: one of its object members requires nothing. */
static bool keyed_empty(const qv_json_schema *s, const snode *nd) {
    for (uint32_t i = 0; i < nd->n; i++) {
        const snode *m = &s->nodes[s->alts[nd->first + i]];
        if (m->kind == K_OBJECT && !required_from(s, m, 0)) return true;
    }
    return false;
}

/* Byte c of the first key of a keyed anyOf (fr->b bytes matched, fr->cur the first key that
 * agrees with them): once the key is whole, the frame becomes its member's, before the colon,
 * as if the member had read the key. */
static int keyed_in(const qv_json_schema *s, qv_json_frame *fr, const snode *nd, uint8_t c) {
    uint32_t member, prop;
    const sspan *cur = keyed_key(s, nd, fr->cur, &member, &prop);
    for (int closing = 0; closing < 2 && (!closing || c == '"'); closing++) {
        uint32_t g = 0; /* one pass over the keys, member by member */
        for (uint32_t i = 0; i < nd->n; i++) {
            const uint32_t mi = s->alts[nd->first + i];
            const snode *m = &s->nodes[mi];
            const uint32_t k = m->kind == K_OBJECT ? m->lead : 0;
            for (uint32_t j = 0; j < k; j++, g++) {
                const sspan *x = &prop_of(s, m, j)->key;
                if (g < fr->cur || !same_prefix(s, x, cur, fr->b)) continue;
                if (!closing && x->len > fr->b && s->bytes[x->off + fr->b] == c) {
                    fr->cur = (uint8_t)g;
                    fr->b++;
                    return R_YES;
                }
                if (closing && x->len == fr->b) {
                    *fr =
                        (qv_json_frame){.node = (uint16_t)mi, .phase = OB_COLON, .cur = (uint8_t)j};
                    return R_YES;
                }
            }
        }
    }
    return R_NO;
}

/* A raw-text document (qv_json_schema_compile_regex): every byte is its text, read as UTF-8
 * (frame: phase 1 once begun, b the continuation bytes still due, cur the lead byte until the
 * first of them; st->cp the code point so far) and each whole character steps the regex. A
 * character being read must still be able to step it. */
static int raw_in(const qv_json_schema *s, qv_json_sstate *st, qv_json_frame *fr, const snode *nd,
                  uint8_t c) {
    const qv_regex *re = s->regexes[nd->re - 1];
    if (fr->phase == 0) {
        st->re = qv_regex_start(re);
        fr->phase = 1;
    }
    uint32_t cp;
    if (fr->b == 0) { /* a lead byte */
        if (c < 0x80) return qv_regex_step(re, &st->re, c) ? R_YES : R_NO;
        const int need = c >= 0xC2 && c <= 0xDF   ? 1
                         : c >= 0xE0 && c <= 0xEF ? 2
                         : c >= 0xF0 && c <= 0xF4 ? 3
                                                  : 0;
        if (!need) return R_NO;
        cp = c & (need == 1 ? 0x1Fu : need == 2 ? 0x0Fu : 0x07u);
        fr->b = (uint16_t)need;
        fr->cur = c;
    } else { /* a continuation byte; the first one is limited by the lead (no overlong form,
              * surrogate or code point above U+10FFFF) */
        const uint8_t lead = fr->cur;
        const uint8_t lo = lead == 0xE0 ? 0xA0 : lead == 0xF0 ? 0x90 : 0x80;
        const uint8_t hi = lead == 0xED ? 0x9F : lead == 0xF4 ? 0x8F : 0xBF;
        if (c < (lead ? lo : 0x80) || c > (lead ? hi : 0xBF)) return R_NO;
        cp = (st->cp << 6) | (c & 0x3Fu);
        fr->b--;
        fr->cur = 0;
        if (fr->b == 0) {
            st->cp = 0;
            return qv_regex_step(re, &st->re, cp) ? R_YES : R_NO;
        }
    }
    /* the code points the character can still be (a lead byte's range without the overlong
     * forms, the surrogates or what lies above U+10FFFF) */
    uint32_t lo = cp << (6 * fr->b), hi = lo | ((1u << (6 * fr->b)) - 1);
    if (fr->cur) { /* the lead byte alone so far */
        lo = QV_MAX(lo, fr->b == 2 ? 0x800u : fr->b == 3 ? 0x10000u : 0x80u);
        if (fr->cur == 0xED) hi = 0xD7FF;
        hi = QV_MIN(hi, 0x10FFFFu);
    }
    if (!qv_regex_can_step(re, st->re, lo, hi, UINT32_MAX)) return R_NO;
    st->cp = cp;
    return R_YES;
}

static int in_token(const qv_json_schema *s, qv_json_sstate *st, qv_json_frame *fr, const snode *nd,
                    uint8_t c) {
    if (nd->kind == K_RAW) return raw_in(s, st, fr, nd, c);
    if (nd->kind == K_ANYOF && fr->phase == AN_KEY) {
        if (nd->tagged == AN_KEYED) return keyed_in(s, fr, nd, c);
        const sspan *k = tag_key(s, nd);
        if (fr->b < k->len) return s->bytes[k->off + fr->b] == c ? (fr->b++, R_YES) : R_NO;
        return c == '"' ? (fr->phase = AN_COLON, fr->b = 0, R_YES) : R_NO;
    }
    if (nd->kind == K_ANYOF && fr->phase == AN_VAL_IN) return tag_value_in(s, fr, nd, c);
    if (nd->kind == K_LEAF && fr->phase == LF_IN) return leaf_in(s, st, fr, nd, c);
    if (nd->kind == K_ENUM && fr->phase == EN_IN) return enum_in(s, st, fr, nd, c);
    if (nd->kind == K_OBJECT && fr->phase == OB_KEY) return key_in(s, fr, nd, c);
    return R_BETWEEN;
}

/* A structural byte (not whitespace) between tokens. */
static int between(const qv_json_schema *s, qv_json_sstate *st, qv_json_frame *fr, const snode *nd,
                   uint8_t c) {
    switch (nd->kind) {
    case K_LEAF: /* LF_START */
        if (!(byte_class(c) & nd->classes)) return R_NO;
        if (byte_class(c) == C_NUMBER && bounded(nd) && !bound_byte(nd, fr, true, 0, c))
            return R_NO;
        st->leaf = (qv_json_state){.mode = M_VALUE};
        if (!step(&st->leaf, c)) return R_NO;
        fr->phase = LF_IN;
        if (c == '"' && nd->re) st->re = qv_regex_start(s->regexes[nd->re - 1]);
        return R_YES;
    case K_ENUM: /* EN_START */
        for (uint32_t j = 0; j < nd->n; j++) {
            if (s->bytes[lit_of(s, nd, j)->off] != c) continue;
            fr->phase = EN_IN;
            fr->cur = (uint8_t)j;
            fr->a = 1;
            if (enum_exact(s, nd, fr) && !enum_longer(s, nd, fr)) pop(st);
            return R_YES;
        }
        return R_NO;
    case K_ANYOF: /* phase 0: the first byte picks the alternative, or the tag does */
        if (nd->tagged && fr->phase != AN_START) {
            uint32_t member, prop;
            if (fr->phase == AN_FIRST && c == '}' && nd->tagged == AN_KEYED)
                return keyed_empty(s, nd) ? (pop(st), R_YES) : R_NO;
            if (fr->phase == AN_FIRST)
                return c == '"' && (nd->tagged == AN_TAGGED || keyed_key(s, nd, 0, &member, &prop))
                           ? (fr->phase = AN_KEY, R_YES)
                           : R_NO;
            if (fr->phase == AN_COLON) return c == ':' ? (fr->phase = AN_VALUE, R_YES) : R_NO;
            return fr->phase == AN_VALUE ? tag_value_in(s, fr, nd, c) : R_NO;
        }
        if (nd->tagged && c == '{') return fr->phase = AN_FIRST, R_YES;
        for (uint32_t j = 0; j < nd->n; j++) {
            const uint32_t alt = s->alts[nd->first + j];
            if (s->nodes[alt].classes & byte_class(c)) {
                fr->node = (uint16_t)alt;
                return R_AGAIN;
            }
        }
        return R_NO;
    case K_OBJECT:
        switch (fr->phase) {
        case OB_OPEN: return c == '{' ? (fr->phase = OB_FIRST, R_YES) : R_NO;
        case OB_FIRST:
            if (c == '}') return required_from(s, nd, 0) ? R_NO : (pop(st), R_YES);
            if (c != '"' || !nd->n) return R_NO;
            fr->phase = OB_KEY;
            return R_YES;
        case OB_KEYQ: return c == '"' ? (fr->phase = OB_KEY, R_YES) : R_NO;
        case OB_COLON:
            if (c != ':') return R_NO;
            fr->phase = OB_AFTER;
            return push(st, prop_of(s, nd, fr->cur)->node) ? R_YES : R_NO;
        case OB_AFTER:
            if (c == '}') return required_from(s, nd, fr->cur + 1u) ? R_NO : (pop(st), R_YES);
            if (c != ',' || fr->cur + 1u >= nd->n) return R_NO;
            *fr = (qv_json_frame){.node = fr->node, .phase = OB_KEYQ, .a = fr->cur + 1u};
            return R_YES;
        default: return R_NO;
        }
    case K_MAP:
        switch (fr->phase) {
        case MP_OPEN: return c == '{' ? (fr->phase = MP_FIRST, R_YES) : R_NO;
        case MP_FIRST:
            if (c == '}') return nd->min ? R_NO : (pop(st), R_YES);
            if (c != '"' || !nd->max) return R_NO;
            fr->a = counted(nd);
            fr->phase = MP_COLON;
            return push(st, s->key_node) ? R_AGAIN : R_NO;
        case MP_KEYQ:
            if (c != '"') return R_NO;
            fr->phase = MP_COLON;
            return push(st, s->key_node) ? R_AGAIN : R_NO;
        case MP_COLON:
            if (c != ':') return R_NO;
            fr->phase = MP_AFTER;
            return push(st, nd->child) ? R_YES : R_NO;
        case MP_AFTER:
            if (c == '}') return fr->a < nd->min ? R_NO : (pop(st), R_YES);
            if (c != ',' || fr->a >= nd->max) return R_NO;
            if (counted(nd)) fr->a = inc(fr->a);
            return fr->phase = MP_KEYQ, R_YES;
        default: return R_NO;
        }
    case K_ARRAY:
        switch (fr->phase) {
        case AR_OPEN: return c == '[' ? (fr->phase = AR_FIRST, R_YES) : R_NO;
        case AR_FIRST:
            if (c == ']') return nd->min ? R_NO : (pop(st), R_YES);
            if (!nd->max) return R_NO;
            fr->phase = AR_AFTER;
            fr->a = counted(nd);
            return push(st, item_node(s, nd, 0)) ? R_AGAIN : R_NO;
        case AR_AFTER:
            if (c == ']') return fr->a < nd->min ? R_NO : (pop(st), R_YES);
            if (c != ',' || fr->a >= nd->max) return R_NO;
            if (counted(nd)) fr->a = inc(fr->a);
            return push(st, item_node(s, nd, fr->a - 1u)) ? R_YES : R_NO;
        default: return R_NO;
        }
    default: return R_NO;
    }
}

static bool sstep(const qv_json_schema *s, qv_json_sstate *st, uint8_t c) {
    for (;;) { /* a value that ends before c hands c to its container */
        if (!st->depth) return false;
        qv_json_frame *fr = &st->f[st->depth - 1];
        const snode *nd = &s->nodes[fr->node];
        int r = in_token(s, st, fr, nd, c);
        if (r == R_AGAIN) continue;
        if (r != R_BETWEEN) return r == R_YES;
        if (is_ws(c)) {
            if (s->compact) return false;
            if (st->depth == 1 && fr->phase == 0) return false; /* before the document */
            if (st->ws >= QV_JSON_MAX_WS) return false;
            st->ws++;
            return true;
        }
        st->ws = 0;
        r = between(s, st, fr, nd, c);
        if (r != R_AGAIN) return r == R_YES;
    }
}

void qv_json_schema_init(const qv_json_schema *sch, qv_json_sstate *s) {
    memset(s, 0, sizeof(*s));
    push(s, sch->root);
}

/* Steps a copy of s through n bytes; the copy is left in *t (advanced only on success). */
static bool feed_copy(const qv_json_schema *sch, const qv_json_sstate *s, qv_json_sstate *t,
                      const uint8_t *p, size_t n) {
    *t = *s;
    for (size_t i = 0; i < n; i++)
        if (!sstep(sch, t, p[i])) return false;
    return true;
}

bool qv_json_schema_feed(const qv_json_schema *sch, qv_json_sstate *s, const uint8_t *p, size_t n) {
    qv_json_sstate t;
    if (!feed_copy(sch, s, &t, p, n)) return false;
    *s = t;
    return true;
}

bool qv_json_schema_accepts(const qv_json_schema *sch, const qv_json_sstate *s, const uint8_t *p,
                            size_t n) {
    qv_json_sstate t;
    return feed_copy(sch, s, &t, p, n);
}

bool qv_json_schema_done(const qv_json_schema *sch, const qv_json_sstate *s) {
    if (!s->depth) return true;
    if (s->depth > 1) return false;
    const qv_json_frame *fr = &s->f[0];
    const snode *nd = &sch->nodes[fr->node];
    if (nd->kind == K_LEAF && fr->phase == LF_IN)
        return s->leaf.depth == 0 && s->leaf.mode == M_NUMBER && number_can_end(&s->leaf) &&
               (!bounded(nd) || bound_end(nd, fr));
    if (nd->kind == K_RAW)
        return fr->b == 0 &&
               qv_regex_accepts(sch->regexes[nd->re - 1],
                                fr->phase ? s->re : qv_regex_start(sch->regexes[nd->re - 1]));
    return nd->kind == K_ENUM && fr->phase == EN_IN && enum_exact(sch, nd, fr);
}

int qv_json_plain_chars(const uint8_t *p, size_t n) {
    qv_json_state t = {.mode = M_STRING};
    int chars = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '"' || p[i] == '\\' || !string_byte(&t, p[i])) return -1;
        chars += !t.utf8;
    }
    return t.utf8 || n > INT32_MAX ? -1 : chars;
}

int32_t qv_json_schema_string_room(const qv_json_schema *sch, const qv_json_sstate *s) {
    if (!s->depth) return -1;
    const qv_json_frame *fr = &s->f[s->depth - 1];
    const snode *nd = &sch->nodes[fr->node];
    const qv_json_state *l = &s->leaf;
    if (nd->kind != K_LEAF || fr->phase != LF_IN || l->mode != M_STRING || l->sub || l->utf8 ||
        (nd->re && l->depth == 0))
        return -1;
    if (l->depth > 0 || !counted(nd)) return INT32_MAX;
    return fr->a >= nd->max ? 0 : (int32_t)QV_MIN(nd->max - fr->a, (uint32_t)INT32_MAX);
}
