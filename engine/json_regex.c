/*
 * json_regex.c - JSON Schema `pattern`s as position (Glushkov) automata: one state per
 * character occurrence of the expression, a 64-bit set of them per match in progress
 * (json_regex.h). Built by a recursive-descent parser into a small tree; quantifiers with
 * counts copy their operand; then nullable / first / last / follow sets, the classic
 * construction without epsilon moves.
 *
 * Thread: pure functions; a compiled regex is immutable.
 */
#include "json_regex.h"
#include "tokenizer/tok_internal.h"

#include <string.h>

#define START_BIT ((uint64_t)1 << 62)   /* nothing read yet */
#define MATCHED_BIT ((uint64_t)1 << 63) /* a match ended and the pattern is open at the end */
#define POS_MASK (START_BIT - 1)        /* the character positions */
#define MAX_NODES 4096
#define MAX_RANGES 4096
#define MAX_COUNT 64 /* {n,m} bounds */

typedef struct range {
    uint32_t lo, hi;
} range;

typedef struct cls {
    uint16_t off, n; /* in ranges[] */
    bool neg;
} cls;

struct qv_regex {
    uint64_t first, last, follow[QV_REGEX_MAX_POS];
    uint64_t ascii[128]; /* the positions whose class holds ASCII code point c */
    cls pos[QV_REGEX_MAX_POS];
    uint32_t dist[QV_REGEX_MAX_POS]; /* characters after position p to a match (NO_MATCH: none) */
    uint32_t first_dist;             /* characters from the start to a match, the first included */
    range ranges[MAX_RANGES];
    int n_pos, n_ranges;
    bool nullable, anchor_start, anchor_end;
};

enum { N_EMPTY, N_CHAR, N_CAT, N_ALT, N_STAR, N_PLUS, N_OPT };

typedef struct rnode {
    uint8_t op;
    int a, b; /* children; N_CHAR: a = its class (an index into pos[]) */
} rnode;

typedef struct parser {
    const uint8_t *p, *end;
    qv_regex *re;
    rnode nodes[MAX_NODES];
    int n_nodes;
    cls classes[MAX_NODES]; /* classes of N_CHAR nodes (copied into pos[] per position) */
    int n_classes;
    qv_error *err;
    qv_status st;
    int depth;
} parser;

static int fail(parser *ps, qv_status st, const char *what) {
    if (ps->st == QV_OK) {
        ps->st = st;
        qv_errorf(ps->err, st, "pattern: %s", what);
    }
    return -1;
}

static int node(parser *ps, int op, int a, int b) {
    if (ps->n_nodes >= MAX_NODES) return fail(ps, QV_ERR_LIMIT, "too complex");
    ps->nodes[ps->n_nodes] = (rnode){(uint8_t)op, a, b};
    return ps->n_nodes++;
}

static bool add_range(parser *ps, uint32_t lo, uint32_t hi) {
    qv_regex *re = ps->re;
    if (re->n_ranges >= MAX_RANGES) return fail(ps, QV_ERR_LIMIT, "too many classes"), false;
    re->ranges[re->n_ranges++] = (range){lo, hi};
    return true;
}

/* Opens a class whose ranges follow in ranges[]. */
static int class_open(parser *ps, bool neg) {
    if (ps->n_classes >= MAX_NODES) return fail(ps, QV_ERR_LIMIT, "too complex");
    ps->classes[ps->n_classes] = (cls){(uint16_t)ps->re->n_ranges, 0, neg};
    return ps->n_classes++;
}

static void class_close(parser *ps, int k) {
    ps->classes[k].n = (uint16_t)(ps->re->n_ranges - ps->classes[k].off);
}

/* Decodes one UTF-8 code point (the tokenizer's strict decoder); -1 when invalid. */
static int64_t utf8(parser *ps) {
    uint32_t cp;
    const size_t n = qv__utf8_decode((const char *)ps->p, (size_t)(ps->end - ps->p), &cp);
    if (!n) return -1;
    ps->p += n;
    return cp;
}

static int hexval(uint8_t c) {
    return c >= '0' && c <= '9'                 ? c - '0'
           : (c | 32) >= 'a' && (c | 32) <= 'f' ? (c | 32) - 'a' + 10
                                                : -1;
}

/* \d \w \s (and their negations when neg_ok): adds the ranges; 0: not a class escape, -1:
 * refused. */
static int class_escape(parser *ps, uint8_t e, bool *neg) {
    static const range digit[] = {{'0', '9'}};
    static const range word[] = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
    static const range space[] = {
        {9, 13},          {' ', ' '},       {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
        {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
    const range *r;
    int n;
    switch (e | 32) {
    case 'd': r = digit, n = 1; break;
    case 'w': r = word, n = 4; break;
    case 's': r = space, n = (int)(sizeof(space) / sizeof(space[0])); break;
    default: return 0;
    }
    *neg = e < 'a';
    for (int i = 0; i < n; i++)
        if (!add_range(ps, r[i].lo, r[i].hi)) return -1;
    return 1;
}

/* The code point of a character escape after '\' (not a class); -1 refused. */
static int64_t char_escape(parser *ps) {
    if (ps->p >= ps->end) return fail(ps, QV_ERR_INVALID, "ends with '\\'");
    const uint8_t e = *ps->p++;
    switch (e) {
    case 't': return 9;
    case 'n': return 10;
    case 'v': return 11;
    case 'f': return 12;
    case 'r': return 13;
    case '0': return 0;
    case 'x':
    case 'u': {
        const int digits = e == 'x' ? 2 : 4;
        uint32_t v = 0;
        for (int i = 0; i < digits; i++) {
            const int h = ps->p < ps->end ? hexval(*ps->p) : -1;
            if (h < 0) return fail(ps, QV_ERR_INVALID, "bad \\x or \\u escape");
            v = v << 4 | (uint32_t)h;
            ps->p++;
        }
        return v;
    }
    default:
        if (e < 0x80 && strchr("^$\\.*+?()[]{}|/-,:=!<>#&~'\"%@;` ", e) && e) return e;
        return fail(ps, QV_ERR_UNSUPPORTED,
                    e == 'b' || e == 'B'   ? "word boundaries are not supported"
                    : e >= '1' && e <= '9' ? "backreferences are not supported"
                                           : "this escape is not supported");
    }
}

static int parse_alt(parser *ps);

/* [...] after the '['. */
static int parse_class(parser *ps) {
    bool neg = false;
    if (ps->p < ps->end && *ps->p == '^') neg = true, ps->p++;
    const int k = class_open(ps, neg);
    if (k < 0) return -1;
    bool any = false;
    while (ps->p < ps->end && *ps->p != ']') {
        int64_t lo;
        if (*ps->p == '\\') {
            ps->p++;
            bool n2 = false;
            const int r = ps->p < ps->end ? class_escape(ps, *ps->p, &n2) : 0;
            if (r < 0) return -1;
            if (r > 0) {
                if (n2)
                    return fail(ps, QV_ERR_UNSUPPORTED,
                                "\\D, \\W or \\S inside [] is not supported");
                ps->p++;
                any = true;
                continue;
            }
            lo = char_escape(ps);
        } else {
            lo = utf8(ps);
            if (lo < 0) return fail(ps, QV_ERR_INVALID, "not valid UTF-8");
        }
        if (lo < 0) return -1;
        int64_t hi = lo;
        if (ps->p + 1 < ps->end && *ps->p == '-' && ps->p[1] != ']') {
            ps->p++;
            if (*ps->p == '\\') {
                ps->p++;
                hi = char_escape(ps);
            } else {
                hi = utf8(ps);
            }
            if (hi < 0) return ps->st ? -1 : fail(ps, QV_ERR_INVALID, "bad range in []");
            if (hi < lo) return fail(ps, QV_ERR_INVALID, "a range in [] runs backwards");
        }
        if (!add_range(ps, (uint32_t)lo, (uint32_t)hi)) return -1;
        any = true;
    }
    if (ps->p >= ps->end) return fail(ps, QV_ERR_INVALID, "unclosed [");
    ps->p++;
    if (!any && !neg) return fail(ps, QV_ERR_UNSUPPORTED, "[] matches nothing");
    class_close(ps, k);
    return node(ps, N_CHAR, k, 0);
}

static int char_node(parser *ps, uint32_t lo, uint32_t hi, bool neg) {
    const int k = class_open(ps, neg);
    if (k < 0 || !add_range(ps, lo, hi)) return -1;
    class_close(ps, k);
    return node(ps, N_CHAR, k, 0);
}

static int parse_atom(parser *ps) {
    const uint8_t c = *ps->p;
    if (c == '(') {
        ps->p++;
        if (ps->p < ps->end && *ps->p == '?') {
            if (ps->p + 1 < ps->end && ps->p[1] == ':')
                ps->p += 2;
            else
                return fail(ps, QV_ERR_UNSUPPORTED,
                            "lookaround and named groups are not supported");
        }
        if (++ps->depth > 64) return fail(ps, QV_ERR_LIMIT, "nested too deeply");
        const int a = parse_alt(ps);
        ps->depth--;
        if (a < 0) return -1;
        if (ps->p >= ps->end || *ps->p != ')') return fail(ps, QV_ERR_INVALID, "unclosed (");
        ps->p++;
        return a;
    }
    if (c == '[') {
        ps->p++;
        return parse_class(ps);
    }
    if (c == '.') {
        ps->p++;
        const int k = class_open(ps, true);
        if (k < 0 || !add_range(ps, 10, 10) || !add_range(ps, 13, 13) ||
            !add_range(ps, 0x2028, 0x2029))
            return -1;
        class_close(ps, k);
        return node(ps, N_CHAR, k, 0);
    }
    if (c == '\\') {
        ps->p++;
        bool neg = false;
        const int k0 = ps->p < ps->end ? class_open(ps, false) : -1;
        const int r = ps->p < ps->end ? class_escape(ps, *ps->p, &neg) : 0;
        if (r < 0) return -1;
        if (r > 0) {
            ps->p++;
            ps->classes[k0].neg = neg;
            class_close(ps, k0);
            return node(ps, N_CHAR, k0, 0);
        }
        if (k0 >= 0) ps->n_classes--; /* not a class escape: drop the empty class */
        const int64_t v = char_escape(ps);
        return v < 0 ? -1 : char_node(ps, (uint32_t)v, (uint32_t)v, false);
    }
    if (c == '^' || c == '$')
        return fail(ps, QV_ERR_UNSUPPORTED, "^ and $ only at the very start and end");
    if (c == '*' || c == '+' || c == '?') return fail(ps, QV_ERR_INVALID, "nothing to repeat");
    const int64_t v = utf8(ps);
    if (v < 0) return fail(ps, QV_ERR_INVALID, "not valid UTF-8");
    return char_node(ps, (uint32_t)v, (uint32_t)v, false);
}

/* A copy of subtree n (its characters become new positions when numbered). Counts copy
 * rather than share their operand so that the tree, and the numbering pass's work, stays
 * within MAX_NODES: a shared subtree would be walked once per reference, and nested counts of
 * an empty group would multiply the walks without adding a position. */
static int clone(parser *ps, int n) {
    const rnode r = ps->nodes[n];
    int a = r.a, b = r.b;
    if (r.op == N_CAT || r.op == N_ALT || r.op == N_STAR || r.op == N_PLUS || r.op == N_OPT) {
        a = clone(ps, r.a);
        if (a < 0) return -1;
        if (r.op == N_CAT || r.op == N_ALT) {
            b = clone(ps, r.b);
            if (b < 0) return -1;
        }
    }
    return node(ps, r.op, a, b);
}

/* {n}, {n,}, {n,m} after the '{'; 0 with *p unchanged when it is not a quantifier. */
static bool parse_count(parser *ps, int *lo, int *hi) {
    const uint8_t *p = ps->p;
    int n = 0, m = -1, digits = 0;
    while (p < ps->end && *p >= '0' && *p <= '9') /* large counts saturate (and are refused) */
        n = n > MAX_COUNT ? n : n * 10 + (*p - '0'), p++, digits++;
    if (!digits) return false;
    if (p < ps->end && *p == ',') {
        p++;
        if (p < ps->end && *p >= '0' && *p <= '9') {
            m = 0;
            while (p < ps->end && *p >= '0' && *p <= '9')
                m = m > MAX_COUNT ? m : m * 10 + (*p - '0'), p++;
        }
    } else {
        m = n;
    }
    if (p >= ps->end || *p != '}') return false;
    ps->p = p + 1;
    *lo = n, *hi = m;
    return true;
}

static int parse_repeat(parser *ps) {
    int a = parse_atom(ps);
    while (a >= 0 && ps->p < ps->end) {
        const uint8_t q = *ps->p;
        int lo, hi;
        if (q == '*' || q == '+' || q == '?') {
            ps->p++;
            a = node(ps, q == '*' ? N_STAR : q == '+' ? N_PLUS : N_OPT, a, 0);
        } else if (q == '{' && (ps->p++, parse_count(ps, &lo, &hi))) {
            if (lo > MAX_COUNT || hi > MAX_COUNT || (hi >= 0 && hi < lo))
                return fail(ps, QV_ERR_UNSUPPORTED, "a {n,m} count above 64 or backwards");
            int r = node(ps, N_EMPTY, 0, 0);
            for (int i = 0; i < lo && r >= 0; i++) {
                const int c = i ? clone(ps, a) : a;
                r = c < 0 ? -1 : node(ps, N_CAT, r, c);
            }
            if (hi < 0 && r >= 0) { /* {n,}: then any number more */
                const int c = lo ? clone(ps, a) : a;
                r = c < 0 ? -1 : node(ps, N_CAT, r, node(ps, N_STAR, c, 0));
            } else if (r >= 0 && hi > lo) { /* (a(a(a)?)?)? for the optional copies */
                int tail = -1;
                for (int i = hi - lo; i > 0 && r >= 0; i--) {
                    const int c = (lo || i > 1) ? clone(ps, a) : a;
                    if (c < 0) return -1;
                    const int body = tail < 0 ? c : node(ps, N_CAT, c, tail);
                    tail = node(ps, N_OPT, body, 0);
                }
                r = node(ps, N_CAT, r, tail);
            }
            a = r;
        } else {
            if (q == '{') ps->p--; /* a literal '{' */
            break;
        }
        if (a >= 0 && ps->p < ps->end && *ps->p == '?') ps->p++; /* lazy: same language */
    }
    return a;
}

static int parse_cat(parser *ps) {
    int r = node(ps, N_EMPTY, 0, 0);
    while (r >= 0 && ps->p < ps->end && *ps->p != '|' && *ps->p != ')') {
        if (*ps->p == '$' && ps->p + 1 == ps->end && ps->depth == 0) break; /* the end anchor */
        const int a = parse_repeat(ps);
        r = a < 0 ? -1 : node(ps, N_CAT, r, a);
    }
    return r;
}

static int parse_alt(parser *ps) {
    int r = parse_cat(ps);
    while (r >= 0 && ps->p < ps->end && *ps->p == '|') {
        ps->p++;
        const int b = parse_cat(ps);
        r = b < 0 ? -1 : node(ps, N_ALT, r, b);
    }
    return r;
}

/* Numbers the characters of n as positions and computes its sets (follow into re). */
static bool glushkov(parser *ps, int n, bool *nullable, uint64_t *first, uint64_t *last) {
    qv_regex *re = ps->re;
    const rnode r = ps->nodes[n];
    bool na, nb;
    uint64_t fa, la, fb, lb;
    switch (r.op) {
    case N_EMPTY: *nullable = true, *first = *last = 0; return true;
    case N_CHAR:
        if (re->n_pos >= QV_REGEX_MAX_POS)
            return fail(ps, QV_ERR_LIMIT, "more than 62 characters after expanding counts"), false;
        re->pos[re->n_pos] = ps->classes[r.a];
        *nullable = false;
        *first = *last = (uint64_t)1 << re->n_pos++;
        return true;
    case N_CAT:
    case N_ALT:
        if (!glushkov(ps, r.a, &na, &fa, &la) || !glushkov(ps, r.b, &nb, &fb, &lb)) return false;
        if (r.op == N_ALT) {
            *nullable = na || nb, *first = fa | fb, *last = la | lb;
            return true;
        }
        for (int p = 0; p < re->n_pos; p++)
            if ((la >> p) & 1) re->follow[p] |= fb;
        *nullable = na && nb;
        *first = fa | (na ? fb : 0);
        *last = lb | (nb ? la : 0);
        return true;
    default: /* N_STAR, N_PLUS, N_OPT */
        if (!glushkov(ps, r.a, &na, &fa, &la)) return false;
        if (r.op != N_OPT)
            for (int p = 0; p < re->n_pos; p++)
                if ((la >> p) & 1) re->follow[p] |= fa;
        *nullable = r.op == N_PLUS ? na : true;
        *first = fa, *last = la;
        return true;
    }
}

#define NO_MATCH UINT32_MAX

/* The least of 1 + dist[q] over the positions q of set. */
static uint32_t min_next(const qv_regex *re, uint64_t set) {
    uint32_t m = NO_MATCH;
    for (int q = 0; q < re->n_pos; q++)
        if (((set >> q) & 1) && re->dist[q] != NO_MATCH) m = QV_MIN(m, re->dist[q] + 1);
    return m;
}

/* Shortest ways to a match: dist[p] = 0 for the last positions, else 1 + the least dist of
 * what may follow (a fixed point over at most n_pos rounds). */
static void distances(qv_regex *re) {
    for (int p = 0; p < re->n_pos; p++)
        re->dist[p] = (re->last >> p) & 1 ? 0 : NO_MATCH;
    for (bool changed = true; changed;) {
        changed = false;
        for (int p = 0; p < re->n_pos; p++) {
            const uint32_t d = min_next(re, re->follow[p]);
            if (d < re->dist[p]) re->dist[p] = d, changed = true;
        }
    }
    re->first_dist = min_next(re, re->first);
}

static bool has(const qv_regex *re, int p, uint32_t cp);

qv_status qv_regex_compile(const char *pattern, qv_regex **out, qv_error *err) {
    *out = NULL;
    qv_regex *re = qv_calloc(1, sizeof(*re));
    parser *ps = qv_calloc(1, sizeof(*ps));
    if (!re || !ps) {
        qv_free(re);
        qv_free(ps);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    const size_t len = strlen(pattern);
    ps->p = (const uint8_t *)pattern;
    ps->end = ps->p + len;
    ps->re = re;
    ps->err = err;
    if (ps->p < ps->end && *ps->p == '^') re->anchor_start = true, ps->p++;
    const int root = parse_alt(ps);
    if (root >= 0 && ps->p < ps->end && *ps->p == '$' && ps->p + 1 == ps->end)
        re->anchor_end = true, ps->p++;
    if (root >= 0 && ps->p < ps->end) fail(ps, QV_ERR_INVALID, "unmatched )");
    if (root >= 0 && (re->anchor_start || re->anchor_end) && ps->nodes[root].op == N_ALT)
        fail(ps, QV_ERR_UNSUPPORTED, "^ or $ beside a top-level |: write ^(a|b)$");
    if (root >= 0 && ps->st == QV_OK) glushkov(ps, root, &re->nullable, &re->first, &re->last);
    if (ps->st == QV_OK) distances(re);
    for (uint32_t c = 0; ps->st == QV_OK && c < 128; c++)
        for (int p = 0; p < re->n_pos; p++)
            if (has(re, p, c)) re->ascii[c] |= (uint64_t)1 << p;
    const qv_status st = ps->st;
    qv_free(ps);
    if (st != QV_OK) {
        qv_free(re);
        return st;
    }
    *out = re;
    return QV_OK;
}

void qv_regex_free(qv_regex *re) { qv_free(re); }

static bool accepting(const qv_regex *re, uint64_t s) {
    return (s & MATCHED_BIT) || ((s & START_BIT) && re->nullable) || (s & re->last);
}

uint64_t qv_regex_start(const qv_regex *re) {
    return re->nullable && !re->anchor_end ? MATCHED_BIT : START_BIT;
}

static bool has(const qv_regex *re, int p, uint32_t cp) {
    const cls *k = &re->pos[p];
    bool in = false;
    for (int i = 0; i < k->n && !in; i++)
        in = cp >= re->ranges[k->off + i].lo && cp <= re->ranges[k->off + i].hi;
    return in != k->neg;
}

bool qv_regex_step(const qv_regex *re, uint64_t *state, uint32_t cp) {
    const uint64_t s = *state;
    if (s & MATCHED_BIT) return true;
    uint64_t cand = (s & START_BIT) || !re->anchor_start ? re->first : 0;
    for (uint64_t m = s & POS_MASK; m; m &= m - 1)
        cand |= re->follow[__builtin_ctzll(m)];
    uint64_t next = 0;
    if (cp < 128) {
        next = cand & re->ascii[cp];
    } else {
        for (uint64_t m = cand & POS_MASK; m; m &= m - 1)
            if (has(re, __builtin_ctzll(m), cp)) next |= m & -m;
    }
    if (!next && re->anchor_start) return false; /* no match can start again */
    if (!re->anchor_end && accepting(re, next)) next = MATCHED_BIT;
    *state = next;
    return true;
}

bool qv_regex_accepts(const qv_regex *re, uint64_t state) { return accepting(re, state); }

/* Whether position p's class holds a code point of [lo, hi]. */
static bool meets(const qv_regex *re, int p, uint32_t lo, uint32_t hi) {
    const cls *k = &re->pos[p];
    if (!k->neg) {
        for (int i = 0; i < k->n; i++)
            if (re->ranges[k->off + i].lo <= hi && re->ranges[k->off + i].hi >= lo) return true;
        return false;
    }
    /* a negated class: some code point of [lo, hi] outside all its ranges */
    for (uint32_t cur = lo;;) {
        bool moved = false;
        for (int i = 0; i < k->n; i++) {
            const range *r = &re->ranges[k->off + i];
            if (r->lo <= cur && r->hi >= cur) {
                if (r->hi >= hi) return false;
                cur = r->hi + 1;
                moved = true;
            }
        }
        if (!moved) return true;
    }
}

uint32_t qv_regex_min_left(const qv_regex *re, uint64_t state) {
    if (accepting(re, state)) return 0;
    uint32_t m = NO_MATCH;
    for (int p = 0; p < re->n_pos; p++)
        if (((state >> p) & 1) && re->dist[p] != NO_MATCH) m = QV_MIN(m, re->dist[p]);
    if ((state & START_BIT) || !re->anchor_start) m = QV_MIN(m, re->first_dist); /* (re)start */
    return m;
}

bool qv_regex_can_step(const qv_regex *re, uint64_t state, uint32_t lo, uint32_t hi,
                       uint32_t budget) {
    if (state & MATCHED_BIT) return true;
    /* unanchored: a character no position takes is skipped, and a match may start after it */
    if (!re->anchor_start && re->first_dist <= budget) return true;
    uint64_t cand = (state & START_BIT) || !re->anchor_start ? re->first : 0;
    for (int p = 0; p < re->n_pos; p++)
        if ((state >> p) & 1) cand |= re->follow[p];
    for (int q = 0; q < re->n_pos; q++)
        if (((cand >> q) & 1) && re->dist[q] <= budget && meets(re, q, lo, hi)) return true;
    return false;
}
