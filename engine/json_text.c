/*
 * json_text.c - JSON re-written as Python's json.dumps writes it (json_text.h): a recursive
 * descent over the text that writes as it reads (or only reads: a NULL buffer skips a value).
 */
#include "json_text.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer/tok_internal.h"

#define MAX_NESTING 512

typedef struct reader {
    const char *p, *end;
    qv__buf *out; /* NULL: read only */
    bool compact;
    int indent;   /* >= 0: json.dumps(indent=...) layout (separators "," and ": "); < 0: one line */
    qv_status st; /* first failure */
} reader;

static bool bad(reader *r, qv_status st) {
    if (r->st == QV_OK) r->st = st;
    return false;
}

static bool put(reader *r, const char *s, size_t n) {
    if (!r->out || !n) return true;
    return qv__buf_put(r->out, s, n) == QV_OK || bad(r, QV_ERR_NOMEM);
}

static bool puts_(reader *r, const char *s) { return put(r, s, strlen(s)); }

static void skip_ws(reader *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hex4(const char *p) {
    int v = 0;
    for (int i = 0; i < 4; i++) {
        const char c = p[i];
        const int d = c >= '0' && c <= '9'   ? c - '0'
                      : c >= 'a' && c <= 'f' ? c - 'a' + 10
                      : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                             : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool put_cp(reader *r, uint32_t cp) {
    char u[8];
    if (cp == '"') return puts_(r, "\\\"");
    if (cp == '\\') return puts_(r, "\\\\");
    if (cp < 0x20) {
        static const char *const short_esc[0x20] = {
            ['\b'] = "\\b", ['\f'] = "\\f", ['\n'] = "\\n", ['\r'] = "\\r", ['\t'] = "\\t"};
        if (short_esc[cp]) return puts_(r, short_esc[cp]);
        snprintf(u, sizeof(u), "\\u%04x", (unsigned)cp);
        return puts_(r, u);
    }
    if (!r->out) return true;
    return qv__buf_put_cp(r->out, cp) == QV_OK || bad(r, QV_ERR_NOMEM);
}

/* A string at r->p (its opening quote), re-escaped. */
static bool string(reader *r) {
    r->p++;
    if (!puts_(r, "\"")) return false;
    for (;;) {
        if (r->p >= r->end) return bad(r, QV_ERR_INVALID);
        const unsigned char c = (unsigned char)*r->p;
        if (c == '"') {
            r->p++;
            return puts_(r, "\"");
        }
        if (c < 0x20) return bad(r, QV_ERR_INVALID);
        uint32_t cp;
        if (c == '\\') {
            if (r->end - r->p < 2) return bad(r, QV_ERR_INVALID);
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char e = r->p[1];
            const char *m = e ? strchr(from, e) : NULL;
            if (m) {
                cp = (unsigned char)to[m - from];
                r->p += 2;
            } else if (e == 'u' && r->end - r->p >= 6 &&
                       (cp = (uint32_t)hex4(r->p + 2)) <= 0xFFFF) {
                r->p += 6;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return bad(r, QV_ERR_INVALID); /* lone low */
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    int lo = r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u'
                                 ? hex4(r->p + 2)
                                 : -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) return bad(r, QV_ERR_INVALID);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
                    r->p += 6;
                }
            } else {
                return bad(r, QV_ERR_INVALID);
            }
        } else {
            const size_t k = qv__utf8_decode(r->p, (size_t)(r->end - r->p), &cp);
            if (!k) return bad(r, QV_ERR_INVALID);
            r->p += k;
        }
        if (!put_cp(r, cp)) return false;
    }
}

/* Python's repr of a double (float_repr_style 'short'): the shortest digits that read back
 * to d; fixed notation when the decimal exponent is in [-4, 16), else d.ddde+XX. */
static void float_repr(double d, char *buf, size_t cap) {
    if (isinf(d)) {
        snprintf(buf, cap, "%s", d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    if (d == 0) {
        snprintf(buf, cap, "%s", signbit(d) ? "-0.0" : "0.0");
        return;
    }
    char e[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(e, sizeof(e), "%.*e", p - 1, d);
        if (strtod(e, NULL) == d) break;
    }
    const char *s = e + (e[0] == '-');
    char dig[24];
    int nd = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9') dig[nd++] = *s;
    const int exp = atoi(s + 1);
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    size_t o = 0;
#define OUT(c)                                                                                     \
    do {                                                                                           \
        if (o + 1 < cap) buf[o++] = (c);                                                           \
    } while (0)
    if (d < 0) OUT('-');
    const int decpt = exp + 1; /* value = 0.dig x 10^decpt */
    if (exp >= -4 && exp < 16) {
        if (decpt <= 0) {
            OUT('0');
            OUT('.');
            for (int i = 0; i < -decpt; i++)
                OUT('0');
            for (int i = 0; i < nd; i++)
                OUT(dig[i]);
        } else {
            for (int i = 0; i < decpt; i++)
                OUT(i < nd ? dig[i] : '0');
            OUT('.');
            if (decpt >= nd) OUT('0');
            for (int i = decpt; i < nd; i++)
                OUT(dig[i]);
        }
    } else {
        OUT(dig[0]);
        if (nd > 1) OUT('.');
        for (int i = 1; i < nd; i++)
            OUT(dig[i]);
        char x[16];
        snprintf(x, sizeof(x), "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
        for (const char *q = x; *q; q++)
            OUT(*q);
    }
#undef OUT
    buf[o] = '\0';
}

static bool digits(reader *r) {
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    return r->p > s;
}

static bool number(reader *r) {
    const char *s = r->p;
    if (*r->p == '-') r->p++;
    if (r->p < r->end && *r->p == '0')
        r->p++;
    else if (!digits(r))
        return bad(r, QV_ERR_INVALID);
    bool is_float = false;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (!digits(r)) return bad(r, QV_ERR_INVALID);
        is_float = true;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-')) r->p++;
        if (!digits(r)) return bad(r, QV_ERR_INVALID);
        is_float = true;
    }
    const size_t n = (size_t)(r->p - s);
    if (!is_float) /* Python ints are exact; "-0" is 0 */
        return n == 2 && s[0] == '-' && s[1] == '0' ? puts_(r, "0") : put(r, s, n);
    char tmp[512], buf[64];
    if (n >= sizeof(tmp)) return bad(r, QV_ERR_INVALID);
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    float_repr(strtod(tmp, NULL), buf, sizeof(buf));
    return puts_(r, buf);
}

static bool value(reader *r, int depth);

/* With an indent: a newline and `level` indents. */
static bool newline(reader *r, int level) {
    if (r->indent < 0) return true;
    if (!puts_(r, "\n")) return false;
    for (int i = 0; i < level * r->indent; i++)
        if (!puts_(r, " ")) return false;
    return true;
}

static bool container(reader *r, int depth, char close) {
    if (depth >= MAX_NESTING) return bad(r, QV_ERR_LIMIT);
    const bool obj = close == '}';
    r->p++;
    if (!put(r, obj ? "{" : "[", 1)) return false;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        return put(r, &close, 1);
    }
    const char *item_sep = r->indent >= 0 ? "," : r->compact ? "," : ", ";
    if (!newline(r, depth + 1)) return false;
    for (;;) {
        skip_ws(r);
        if (obj) {
            if (r->p >= r->end || *r->p != '"' || !string(r)) return bad(r, QV_ERR_INVALID);
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':') return bad(r, QV_ERR_INVALID);
            r->p++;
            if (!puts_(r, r->compact ? ":" : ": ")) return false;
        }
        if (!value(r, depth + 1)) return false;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            if (!puts_(r, item_sep) || !newline(r, depth + 1)) return false;
            continue;
        }
        if (r->p < r->end && *r->p == close) {
            r->p++;
            return newline(r, depth) && put(r, &close, 1);
        }
        return bad(r, QV_ERR_INVALID);
    }
}

static bool literal(reader *r, const char *word) {
    const size_t n = strlen(word);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, word, n)) return bad(r, QV_ERR_INVALID);
    r->p += n;
    return put(r, word, n);
}

static bool value(reader *r, int depth) {
    skip_ws(r);
    if (r->p >= r->end) return bad(r, QV_ERR_INVALID);
    switch (*r->p) {
    case '{': return container(r, depth, '}');
    case '[': return container(r, depth, ']');
    case '"': return string(r);
    case 't': return literal(r, "true");
    case 'f': return literal(r, "false");
    case 'n': return literal(r, "null");
    default:
        return *r->p == '-' || (*r->p >= '0' && *r->p <= '9') ? number(r) : bad(r, QV_ERR_INVALID);
    }
}

static qv_status dumps(const char *text, size_t len, bool compact, int indent, char **out,
                       size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    qv__buf b = {0};
    reader r = {.p = text, .end = text + len, .out = &b, .compact = compact, .indent = indent};
    if (value(&r, 0)) {
        skip_ws(&r);
        if (r.p != r.end) bad(&r, QV_ERR_INVALID);
    }
    if (r.st == QV_OK && qv__buf_reserve(&b, 1)) r.st = QV_ERR_NOMEM;
    if (r.st != QV_OK) {
        qv__buf_free(&b);
        return r.st;
    }
    b.p[b.len] = '\0';
    *out = b.p;
    if (out_len) *out_len = b.len;
    return QV_OK;
}

qv_status qv_json_py_dumps(const char *text, size_t len, bool compact, char **out,
                           size_t *out_len) {
    return dumps(text, len, compact, -1, out, out_len);
}

qv_status qv_json_py_dumps_indent(const char *text, size_t len, int indent, char **out,
                                  size_t *out_len) {
    if (indent < 0 || indent > 64) return QV_ERR_INVALID;
    return dumps(text, len, false, indent, out, out_len);
}

bool qv_json_member_span(const char *text, size_t len, const char *key, size_t *off, size_t *n) {
    reader r = {.p = text, .end = text + len, .indent = -1};
    skip_ws(&r);
    if (r.p >= r.end || *r.p != '{') return false;
    r.p++;
    bool found = false;
    const size_t klen = strlen(key);
    for (bool first = true;; first = false) {
        skip_ws(&r);
        if (first && r.p < r.end && *r.p == '}') return false;
        if (r.p >= r.end || *r.p != '"') return false;
        qv__buf name = {0}; /* the decoded key (escapes as Python writes them) */
        r.out = &name;
        const bool ok = string(&r);
        r.out = NULL;
        const bool match = ok && name.len == klen + 2 && !memcmp(name.p + 1, key, klen) &&
                           !memchr(key, '"', klen) && !memchr(key, '\\', klen);
        qv__buf_free(&name);
        if (!ok) return false;
        skip_ws(&r);
        if (r.p >= r.end || *r.p != ':') return false;
        r.p++;
        skip_ws(&r);
        const char *v = r.p;
        if (!value(&r, 1)) return false;
        if (match && !found) {
            found = true;
            *off = (size_t)(v - text);
            *n = (size_t)(r.p - v);
        }
        skip_ws(&r);
        if (r.p < r.end && *r.p == ',') {
            r.p++;
            continue;
        }
        if (r.p < r.end && *r.p == '}') return found;
        return false;
    }
}

qv_status qv_json_py_quote(const char *s, size_t n, char **out) {
    *out = NULL;
    qv__buf b = {0};
    reader r = {.out = &b, .indent = -1};
    qv_status st = qv__buf_putc(&b, '"');
    for (size_t i = 0; !st && i < n;) {
        uint32_t cp;
        const size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k) st = QV_ERR_INVALID;
        if (!st && !put_cp(&r, cp)) st = r.st;
        i += k ? k : 1;
    }
    if (!st) st = qv__buf_put(&b, "\"", 2); /* and the NUL */
    if (st) {
        qv__buf_free(&b);
        return st;
    }
    *out = b.p;
    return QV_OK;
}

bool qv_json_value_span(const char *text, size_t len, size_t *off, size_t *n) {
    reader r = {.p = text, .end = text + len, .indent = -1};
    skip_ws(&r);
    const char *v = r.p;
    if (!value(&r, 0)) return false;
    *off = (size_t)(v - text);
    *n = (size_t)(r.p - v);
    return true;
}

/* The values of the list (keyed false) or object (keyed true) text[0..len) begins with. */
static size_t values_of(const char *text, size_t len, bool keyed, size_t *off, size_t *n,
                        size_t max) {
    reader r = {.p = text, .end = text + len, .indent = -1}; /* r.out NULL: nothing allocated */
    const char open = keyed ? '{' : '[', close = keyed ? '}' : ']';
    skip_ws(&r);
    if (r.p >= r.end || *r.p != open) return SIZE_MAX;
    r.p++;
    size_t k = 0;
    skip_ws(&r);
    if (r.p < r.end && *r.p == close) return 0;
    for (;;) {
        skip_ws(&r);
        if (keyed) {
            if (r.p >= r.end || *r.p != '"' || !string(&r)) return SIZE_MAX;
            skip_ws(&r);
            if (r.p >= r.end || *r.p != ':') return SIZE_MAX;
            r.p++;
            skip_ws(&r);
        }
        const char *v = r.p;
        if (!value(&r, 1)) return SIZE_MAX;
        if (k < max) {
            off[k] = (size_t)(v - text);
            n[k] = (size_t)(r.p - v);
        }
        k++;
        skip_ws(&r);
        if (r.p < r.end && *r.p == ',') {
            r.p++;
            continue;
        }
        return r.p < r.end && *r.p == close ? k : SIZE_MAX;
    }
}

size_t qv_json_list_items(const char *text, size_t len, size_t *off, size_t *n, size_t max) {
    return values_of(text, len, false, off, n, max);
}

size_t qv_json_object_values(const char *text, size_t len, size_t *off, size_t *n, size_t max) {
    return values_of(text, len, true, off, n, max);
}

qv_status qv_json_text_check(const char *text, size_t len, bool object) {
    reader r = {.p = text, .end = text + len, .indent = -1}; /* read only: nothing allocated */
    skip_ws(&r);
    if (object && (r.p >= r.end || *r.p != '{')) return QV_ERR_INVALID;
    if (!value(&r, 0)) return QV_ERR_INVALID;
    skip_ws(&r);
    return r.p == r.end ? QV_OK : QV_ERR_INVALID;
}
