/*
 * json_regex.c - JSON Schema `pattern`s (and whole-answer regexes) as deterministic automata
 * (json_regex.h). A recursive-descent parser builds a small tree, quantifiers with counts
 * copying their operand; the Glushkov construction numbers its character occurrences as
 * positions and computes nullable / first / last / follow sets (no epsilon moves); the subset
 * construction over the alphabet's classes of equivalent code points then makes the DFA, whose
 * state is one index, with the fewest characters from each state to a match.
 *
 * Thread: pure functions; a compiled regex is immutable.
 */
#include "json_regex.h"
#include "tokenizer/tok_internal.h"

#include <string.h>

#define MAX_NODES 32768
#define MAX_CLASSES 4096 /* character atoms as written (counts share them) */
#define MAX_RANGES 4096
#define MAX_STATES 65536             /* DFA states */
#define MAX_CELLS (1u << 21)         /* DFA states x symbols (8 MiB of transitions) */
#define MAX_WORK ((uint64_t)1 << 30) /* set words combined while compiling (about 0.5 s) */
#define DEAD (-1)
#define BEYOND 0x110000u /* past the last code point: a symbol of its own, never taken */
#define NO_MATCH UINT32_MAX

typedef struct range {
    uint32_t lo, hi;
} range;

typedef struct cls {
    uint16_t off, n; /* in ranges[] */
    bool neg;
} cls;

/* The code points fall into intervals [bound[i], bound[i + 1]) that every class of the pattern
 * holds whole or not at all; intervals that the same classes hold are one symbol. */
struct qv_regex {
    int32_t *next;   /* [state * n_sym + symbol]: the state after it, DEAD when no match follows */
    uint32_t *dist;  /* per state: the fewest characters to a match (0: it matches) */
    uint32_t *bound; /* per interval: its first code point (bound[0] = 0) */
    uint32_t *sym;   /* per interval: its symbol */
    uint32_t ascii[128]; /* the symbol of each ASCII code point */
    uint32_t n_states, n_sym, n_int, start;
};

enum { N_EMPTY, N_CHAR, N_CAT, N_ALT, N_STAR, N_PLUS, N_OPT };

typedef struct rnode {
    uint8_t op;
    int a, b; /* children; N_CHAR: a = its class (an index into pos[]) */
} rnode;

/* Every node is made after its children, and every node but the root has one parent (counts
 * copy their operand), so the nodes in the order made are a post-order walk of the tree. */
typedef struct parser {
    const uint8_t *p, *end;
    rnode nodes[MAX_NODES];
    int n_nodes;
    cls classes[MAX_CLASSES]; /* of the N_CHAR nodes */
    int n_classes;
    range ranges[MAX_RANGES];
    int n_ranges;
    qv_error *err;
    qv_status st;
    int depth;
    bool anchor_start, anchor_end;
    uint64_t work; /* against MAX_WORK */
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
    if (ps->n_ranges >= MAX_RANGES) return fail(ps, QV_ERR_LIMIT, "too many classes"), false;
    ps->ranges[ps->n_ranges++] = (range){lo, hi};
    return true;
}

/* Opens a class whose ranges follow in ranges[]. */
static int class_open(parser *ps, bool neg) {
    if (ps->n_classes >= MAX_CLASSES) return fail(ps, QV_ERR_LIMIT, "too long");
    ps->classes[ps->n_classes] = (cls){(uint16_t)ps->n_ranges, 0, neg};
    return ps->n_classes++;
}

static void class_close(parser *ps, int k) {
    ps->classes[k].n = (uint16_t)(ps->n_ranges - ps->classes[k].off);
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

/* A copy of the operand whose nodes are [from, to] (all made for it: the subtree rooted at
 * `to`), children renumbered; its characters become new positions. Counts copy rather than
 * share their operand, so that each node keeps one parent. */
static int clone(parser *ps, int from, int to) {
    const int shift = ps->n_nodes - from;
    if (ps->n_nodes + (to - from + 1) > MAX_NODES) return fail(ps, QV_ERR_LIMIT, "too complex");
    for (int i = from; i <= to; i++) {
        rnode r = ps->nodes[i];
        if (r.op != N_EMPTY && r.op != N_CHAR) r.a += shift;
        if (r.op == N_CAT || r.op == N_ALT) r.b += shift;
        ps->nodes[ps->n_nodes++] = r;
    }
    return to + shift;
}

/* {n}, {n,}, {n,m} after the '{'; 0 with *p unchanged when it is not a quantifier. */
static bool parse_count(parser *ps, int *lo, int *hi) {
    const uint8_t *p = ps->p;
    int n = 0, m = -1, digits = 0;
    while (p < ps->end && *p >= '0' && *p <= '9') /* large counts saturate (and are refused) */
        n = n > QV_REGEX_MAX_COUNT ? n : n * 10 + (*p - '0'), p++, digits++;
    if (!digits) return false;
    if (p < ps->end && *p == ',') {
        p++;
        if (p < ps->end && *p >= '0' && *p <= '9') {
            m = 0;
            while (p < ps->end && *p >= '0' && *p <= '9')
                m = m > QV_REGEX_MAX_COUNT ? m : m * 10 + (*p - '0'), p++;
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
    const int from = ps->n_nodes, classes = ps->n_classes, ranges = ps->n_ranges;
    int a = parse_atom(ps);
    while (a >= 0 && ps->p < ps->end) {
        const uint8_t q = *ps->p;
        int lo, hi;
        if (q == '*' || q == '+' || q == '?') {
            ps->p++;
            a = node(ps, q == '*' ? N_STAR : q == '+' ? N_PLUS : N_OPT, a, 0);
        } else if (q == '{' && (ps->p++, parse_count(ps, &lo, &hi))) {
            if (lo > QV_REGEX_MAX_COUNT || hi > QV_REGEX_MAX_COUNT || (hi >= 0 && hi < lo))
                return fail(ps, QV_ERR_UNSUPPORTED, "a {n,m} count above 1000 or backwards");
            if (hi == 0) { /* {0}: the operand is dropped (it is the last thing made) */
                ps->n_nodes = from, ps->n_classes = classes, ps->n_ranges = ranges;
                a = node(ps, N_EMPTY, 0, 0);
                if (a >= 0 && ps->p < ps->end && *ps->p == '?') ps->p++;
                continue;
            }
            int r = node(ps, N_EMPTY, 0, 0);
            for (int i = 0; i < lo && r >= 0; i++) {
                const int c = i ? clone(ps, from, a) : a;
                r = c < 0 ? -1 : node(ps, N_CAT, r, c);
            }
            if (hi < 0 && r >= 0) { /* {n,}: then any number more */
                const int c = lo ? clone(ps, from, a) : a;
                const int star = c < 0 ? -1 : node(ps, N_STAR, c, 0);
                r = star < 0 ? -1 : node(ps, N_CAT, r, star);
            } else if (r >= 0 && hi > lo) { /* (a(a(a)?)?)? for the optional copies */
                int tail = -1;
                for (int i = hi - lo; i > 0 && r >= 0; i--) {
                    const int c = (lo || i > 1) ? clone(ps, from, a) : a;
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

/* Positions: how many, each one's class, and the Glushkov sets of the whole pattern (sets of
 * W words; bit n_pos is START and bit n_pos + 1 MATCHED in the DFA's sets). */
typedef struct glushkov {
    int n_pos, W;
    int *cls_of;      /* per position: its class */
    uint64_t *follow; /* per position: the positions that may come next */
    uint64_t *first, *last;
    bool nullable;
} glushkov;

static bool bit(const uint64_t *s, int i) { return (s[i >> 6] >> (i & 63)) & 1; }
static void set_bit(uint64_t *s, int i) { s[i >> 6] |= (uint64_t)1 << (i & 63); }

/* The first position of set s at or after p (below n_pos), -1 when none. */
static int next_pos(const uint64_t *s, int n_pos, int p) {
    for (int w = p >> 6; w << 6 < n_pos; w++) {
        const uint64_t m = s[w] & (w == p >> 6 ? ~(uint64_t)0 << (p & 63) : ~(uint64_t)0);
        if (m) {
            const int q = (w << 6) + __builtin_ctzll(m);
            return q < n_pos ? q : -1;
        }
    }
    return -1;
}

/* The Glushkov sets, each node's from its children's in the order the nodes were made; a
 * node's first / last sets live in a slot that its parent reuses or frees. */
static qv_status build_glushkov(parser *ps, glushkov *g) {
    int n_pos = 0;
    for (int n = 0; n < ps->n_nodes; n++)
        n_pos += ps->nodes[n].op == N_CHAR;
    if (n_pos > QV_REGEX_MAX_POS)
        return fail(ps, QV_ERR_LIMIT, "more than 4096 characters after expanding counts"),
               QV_ERR_LIMIT;
    const int W = (n_pos + 2 + 63) / 64;
    g->W = W;
    int *slot = qv_malloc((size_t)ps->n_nodes * sizeof(int) * 2 + 1);
    bool *nullable = qv_malloc((size_t)ps->n_nodes + 1);
    int *free_slots = slot ? slot + ps->n_nodes : NULL;
    g->cls_of = qv_malloc((size_t)n_pos * sizeof(int) + 1);
    g->follow = qv_calloc((size_t)n_pos * W + 1, sizeof(uint64_t));
    uint64_t *mem = NULL; /* slots of 2 W words: first, last */
    int n_slots = 0, cap = 0, n_free = 0;
    qv_status st = slot && nullable && g->cls_of && g->follow ? QV_OK : QV_ERR_NOMEM;
    for (int n = 0; st == QV_OK && n < ps->n_nodes; n++) {
        const rnode r = ps->nodes[n];
        if (ps->work > MAX_WORK) {
            fail(ps, QV_ERR_LIMIT, "too complex to compile");
            st = QV_ERR_LIMIT;
            break;
        }
        if (r.op == N_EMPTY || r.op == N_CHAR) { /* a new slot */
            int k;
            if (n_free) {
                k = free_slots[--n_free];
            } else {
                if (n_slots == cap) {
                    cap = cap ? 2 * cap : 16;
                    uint64_t *m2 = qv_realloc(mem, (size_t)cap * 2 * W * sizeof(uint64_t));
                    if (!m2) {
                        st = QV_ERR_NOMEM;
                        break;
                    }
                    mem = m2;
                }
                k = n_slots++;
            }
            memset(mem + (size_t)k * 2 * W, 0, 2 * W * sizeof(uint64_t));
            slot[n] = k;
            nullable[n] = r.op == N_EMPTY;
            if (r.op == N_CHAR) {
                const int p = g->n_pos++;
                g->cls_of[p] = r.a;
                set_bit(mem + (size_t)k * 2 * W, p);
                set_bit(mem + (size_t)k * 2 * W + W, p);
            }
            continue;
        }
        uint64_t *fa = mem + (size_t)slot[r.a] * 2 * W, *la = fa + W;
        const bool na = nullable[r.a];
        slot[n] = slot[r.a];
        if (r.op == N_CAT || r.op == N_ALT) {
            const uint64_t *fb = mem + (size_t)slot[r.b] * 2 * W, *lb = fb + W;
            const bool nb = nullable[r.b];
            if (r.op == N_CAT)
                for (int p = next_pos(la, g->n_pos, 0); p >= 0; p = next_pos(la, g->n_pos, p + 1))
                    for (int w = 0; w < W; w++)
                        g->follow[(size_t)p * W + w] |= fb[w], ps->work++;
            for (int w = 0; w < W; w++) {
                if (r.op == N_ALT) {
                    fa[w] |= fb[w], la[w] |= lb[w];
                } else {
                    fa[w] |= na ? fb[w] : 0;
                    la[w] = lb[w] | (nb ? la[w] : 0);
                }
            }
            nullable[n] = r.op == N_ALT ? na || nb : na && nb;
            free_slots[n_free++] = slot[r.b];
        } else { /* N_STAR, N_PLUS, N_OPT */
            if (r.op != N_OPT)
                for (int p = next_pos(la, g->n_pos, 0); p >= 0; p = next_pos(la, g->n_pos, p + 1))
                    for (int w = 0; w < W; w++)
                        g->follow[(size_t)p * W + w] |= fa[w], ps->work++;
            nullable[n] = r.op == N_PLUS ? na : true;
        }
    }
    if (st == QV_OK) { /* the root is the last node made */
        g->first = qv_calloc(2 * (size_t)W, sizeof(uint64_t));
        if (!g->first) st = QV_ERR_NOMEM;
    }
    if (st == QV_OK) {
        memcpy(g->first, mem + (size_t)slot[ps->n_nodes - 1] * 2 * W, 2 * W * sizeof(uint64_t));
        g->last = g->first + W;
        g->nullable = nullable[ps->n_nodes - 1];
    }
    qv_free(mem);
    qv_free(slot);
    qv_free(nullable);
    return st;
}

static void glushkov_free(glushkov *g) {
    qv_free(g->cls_of);
    qv_free(g->follow);
    qv_free(g->first);
}

static bool class_has(const parser *ps, int k, uint32_t cp) {
    const cls *c = &ps->classes[k];
    bool in = false;
    for (int i = 0; i < c->n && !in; i++)
        in = cp >= ps->ranges[c->off + i].lo && cp <= ps->ranges[c->off + i].hi;
    return in != c->neg;
}

static int cmp_u32(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* The interval holding cp. */
static uint32_t interval_of(const uint32_t *bound, uint32_t n_int, uint32_t cp) {
    uint32_t lo = 0, hi = n_int; /* bound[lo] <= cp < bound[hi] */
    while (hi - lo > 1) {
        const uint32_t mid = lo + (hi - lo) / 2;
        if (bound[mid] <= cp)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* Renumbers the symbols in use densely, in the order of their first interval; the new count. */
static uint32_t compact_symbols(qv_regex *re, uint32_t n_sym, uint32_t *map) {
    for (uint32_t s = 0; s < n_sym; s++)
        map[s] = UINT32_MAX;
    uint32_t used = 0;
    for (uint32_t j = 0; j < re->n_int; j++) {
        if (map[re->sym[j]] == UINT32_MAX) map[re->sym[j]] = used++;
        re->sym[j] = map[re->sym[j]];
    }
    return used;
}

/* The intervals (every range's ends cut the code points) and their symbols: the partition of
 * the intervals refined by each class's ranges in turn (a negated class cuts the same way). */
static qv_status build_alphabet(parser *ps, qv_regex *re) {
    const uint32_t max_b = 2 * (uint32_t)ps->n_ranges + 2, cap = 2 * max_b;
    re->bound = qv_malloc(max_b * sizeof(uint32_t));
    re->sym = qv_calloc(max_b, sizeof(uint32_t));
    uint32_t *split = qv_malloc(2 * cap * sizeof(uint32_t)), *stamp = split + cap;
    if (!re->bound || !re->sym || !split) {
        qv_free(split);
        return QV_ERR_NOMEM;
    }
    uint32_t nb = 0;
    re->bound[nb++] = 0;
    re->bound[nb++] = BEYOND;
    for (int i = 0; i < ps->n_ranges; i++) {
        re->bound[nb++] = ps->ranges[i].lo;
        if (ps->ranges[i].hi < UINT32_MAX) re->bound[nb++] = ps->ranges[i].hi + 1;
    }
    qsort(re->bound, nb, sizeof(uint32_t), cmp_u32);
    uint32_t n_int = 0;
    for (uint32_t i = 0; i < nb; i++)
        if (!n_int || re->bound[i] != re->bound[n_int - 1]) re->bound[n_int++] = re->bound[i];
    re->n_int = n_int;
    uint32_t n_sym = 2; /* every code point in symbol 0, what lies beyond in symbol 1 */
    re->sym[n_int - 1] = 1;
    for (int k = 0; k < ps->n_classes; k++) {
        if (k == 0 || n_sym + n_int > cap) { /* room for this class's new symbols */
            n_sym = compact_symbols(re, n_sym, split);
            for (uint32_t s = 0; s < cap; s++)
                stamp[s] = split[s] = UINT32_MAX;
        }
        const cls *c = &ps->classes[k];
        for (int i = 0; i < c->n; i++) {
            const range *rg = &ps->ranges[c->off + i];
            for (uint32_t j = interval_of(re->bound, n_int, rg->lo);
                 j < n_int && re->bound[j] <= rg->hi; j++) {
                const uint32_t s = re->sym[j];
                if (stamp[s] == (uint32_t)k) continue; /* moved by this class already */
                if (split[s] == UINT32_MAX || stamp[split[s]] != (uint32_t)k) {
                    split[s] = n_sym; /* the part of s this class holds */
                    split[n_sym] = UINT32_MAX;
                    stamp[n_sym++] = (uint32_t)k;
                }
                re->sym[j] = split[s];
            }
        }
    }
    re->n_sym = compact_symbols(re, n_sym, split);
    for (uint32_t cp = 0; cp < 128; cp++)
        re->ascii[cp] = re->sym[interval_of(re->bound, n_int, cp)];
    qv_free(split);
    return QV_OK;
}

/* The subset construction: states are sets of positions (with START: a match may begin at the
 * next character; MATCHED: a match ended and the pattern is open at the end, so anything may
 * follow), interned in a hash table. */
typedef struct dfa_build {
    const glushkov *g;
    int W;
    uint64_t *sets; /* per state, W words */
    int32_t *next;  /* per state, n_sym cells */
    uint32_t n, cap, n_sym;
    uint32_t *tab; /* state + 1, 0: empty */
    uint32_t tab_cap;
} dfa_build;

/* A set's hash: every word through a full 64-bit mix (MurmurHash3's finalizer), so that sets
 * differing in any bit spread over the table. */
static uint64_t set_hash(const uint64_t *s, int W) {
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int w = 0; w < W; w++)
        h = qv_fmix64(h ^ s[w]);
    return h;
}

/* The state of set s, added when new: its index, -1 on failure (ps->st set). */
static int32_t intern(parser *ps, dfa_build *d, const uint64_t *s) {
    const int W = d->W;
    uint32_t i = (uint32_t)set_hash(s, W) & (d->tab_cap - 1);
    for (; d->tab[i]; i = (i + 1) & (d->tab_cap - 1)) {
        ps->work += (uint64_t)W; /* a probe compares a whole set */
        if (!memcmp(d->sets + (size_t)(d->tab[i] - 1) * W, s, (size_t)W * sizeof(uint64_t)))
            return (int32_t)(d->tab[i] - 1);
    }
    if (d->n >= MAX_STATES || (size_t)(d->n + 1) * d->n_sym > MAX_CELLS)
        return fail(ps, QV_ERR_LIMIT, "too complex: its automaton has too many states");
    if (d->n == d->cap) {
        const uint32_t cap = d->cap ? 2 * d->cap : 64;
        uint64_t *sets = qv_realloc(d->sets, (size_t)cap * W * sizeof(uint64_t));
        if (sets) d->sets = sets;
        int32_t *next = sets ? qv_realloc(d->next, (size_t)cap * d->n_sym * sizeof(int32_t)) : NULL;
        if (next) d->next = next;
        if (!next) return fail(ps, QV_ERR_NOMEM, "out of memory");
        d->cap = cap;
    }
    memcpy(d->sets + (size_t)d->n * W, s, (size_t)W * sizeof(uint64_t));
    d->tab[i] = d->n + 1;
    if (2 * (d->n + 1) > d->tab_cap) { /* rehash at half full */
        const uint32_t tc = 2 * d->tab_cap;
        uint32_t *tab = qv_calloc(tc, sizeof(uint32_t));
        if (!tab) return fail(ps, QV_ERR_NOMEM, "out of memory");
        for (uint32_t k = 0; k <= d->n; k++) {
            uint32_t j = (uint32_t)set_hash(d->sets + (size_t)k * W, W) & (tc - 1);
            while (tab[j])
                j = (j + 1) & (tc - 1);
            tab[j] = k + 1;
        }
        qv_free(d->tab);
        d->tab = tab;
        d->tab_cap = tc;
    }
    return (int32_t)d->n++;
}

static bool accepting(const glushkov *g, const uint64_t *s) {
    if (bit(s, g->n_pos + 1) || (bit(s, g->n_pos) && g->nullable)) return true;
    for (int w = 0; w < g->W; w++)
        if (s[w] & g->last[w]) return true;
    return false;
}

/* Makes s the MATCHED state when the pattern is open at the end and s accepts. */
static void settle(const glushkov *g, uint64_t *s, bool anchor_end) {
    if (anchor_end || !accepting(g, s)) return;
    memset(s, 0, (size_t)g->W * sizeof(uint64_t));
    set_bit(s, g->n_pos + 1);
}

/* The fewest characters from each state to an accepting one (NO_MATCH: none), breadth first
 * over the reversed transitions; then transitions into states without a match are cut. */
static qv_status distances(qv_regex *re, const uint8_t *acc) {
    const uint32_t n = re->n_states, n_sym = re->n_sym;
    const size_t cells = (size_t)n * n_sym;
    uint32_t *off = qv_calloc((size_t)n + 1, sizeof(uint32_t));
    uint32_t *from = qv_malloc(cells * sizeof(uint32_t) + 1),
             *queue = qv_malloc(n * sizeof(uint32_t));
    re->dist = qv_malloc(n * sizeof(uint32_t));
    if (!off || !from || !queue || !re->dist) {
        qv_free(off);
        qv_free(from);
        qv_free(queue);
        return QV_ERR_NOMEM;
    }
    for (size_t c = 0; c < cells; c++)
        if (re->next[c] >= 0) off[re->next[c] + 1]++;
    for (uint32_t s = 0; s < n; s++)
        off[s + 1] += off[s];
    for (size_t c = 0; c < cells; c++) /* the sources into each state (off[t] advances) */
        if (re->next[c] >= 0) from[off[re->next[c]]++] = (uint32_t)(c / n_sym);
    for (uint32_t s = n; s > 0; s--) /* back to the starts */
        off[s] = off[s - 1];
    off[0] = 0;
    uint32_t head = 0, tail = 0;
    for (uint32_t s = 0; s < n; s++) {
        re->dist[s] = acc[s] ? 0 : NO_MATCH;
        if (acc[s]) queue[tail++] = s;
    }
    while (head < tail) {
        const uint32_t t = queue[head++];
        for (uint32_t k = off[t]; k < off[t + 1]; k++)
            if (re->dist[from[k]] == NO_MATCH)
                re->dist[from[k]] = re->dist[t] + 1, queue[tail++] = from[k];
    }
    for (size_t c = 0; c < cells; c++)
        if (re->next[c] >= 0 && re->dist[re->next[c]] == NO_MATCH) re->next[c] = DEAD;
    qv_free(off);
    qv_free(from);
    qv_free(queue);
    return QV_OK;
}

static qv_status build_dfa(parser *ps, const glushkov *g, qv_regex *re) {
    const int W = g->W, n_pos = g->n_pos;
    const uint32_t n_sym = re->n_sym;
    dfa_build d = {.g = g, .W = W, .n_sym = n_sym, .tab_cap = 256};
    d.tab = qv_calloc(d.tab_cap, sizeof(uint32_t));
    /* per symbol, the positions whose class holds it; per state being expanded, its candidates
     * and one successor */
    uint64_t *symset = qv_calloc((size_t)n_sym * W + 2 * (size_t)W, sizeof(uint64_t));
    uint8_t *acc = NULL;
    if (!d.tab || !symset) {
        qv_free(d.tab);
        qv_free(symset);
        return QV_ERR_NOMEM;
    }
    uint64_t *cand = symset + (size_t)n_sym * W, *nx = cand + W;
    uint32_t *rep = re->sym; /* a representative code point per symbol: its first interval's */
    {
        uint32_t *first_cp = qv_malloc(n_sym * sizeof(uint32_t) + 1);
        if (!first_cp) fail(ps, QV_ERR_NOMEM, "out of memory");
        for (uint32_t s = 0; first_cp && s < n_sym; s++)
            first_cp[s] = UINT32_MAX;
        for (uint32_t j = re->n_int; first_cp && j-- > 0;)
            first_cp[rep[j]] = re->bound[j];
        for (uint32_t s = 0; first_cp && s < n_sym; s++)
            for (int p = 0; p < n_pos; p++)
                if (class_has(ps, g->cls_of[p], first_cp[s])) set_bit(symset + (size_t)s * W, p);
        qv_free(first_cp);
    }
    memset(nx, 0, (size_t)W * sizeof(uint64_t));
    set_bit(nx, n_pos); /* START */
    settle(g, nx, ps->anchor_end);
    if (ps->st == QV_OK) re->start = (uint32_t)intern(ps, &d, nx);
    for (uint32_t s = 0; ps->st == QV_OK && s < d.n; s++) {
        const uint64_t *set = d.sets + (size_t)s * W;
        int32_t *out = d.next + (size_t)s * n_sym;
        if (bit(set, n_pos + 1)) { /* MATCHED takes anything */
            for (uint32_t a = 0; a < n_sym; a++)
                out[a] = (int32_t)s;
            continue;
        }
        for (int w = 0; w < W; w++)
            cand[w] = bit(set, n_pos) ? g->first[w] : 0;
        for (int p = next_pos(set, n_pos, 0); p >= 0; p = next_pos(set, n_pos, p + 1))
            for (int w = 0; w < W; w++)
                cand[w] |= g->follow[(size_t)p * W + w], ps->work++;
        ps->work += (uint64_t)n_sym * W;
        if (ps->work > MAX_WORK) fail(ps, QV_ERR_LIMIT, "too complex to compile");
        for (uint32_t a = 0; a < n_sym && ps->st == QV_OK; a++) {
            bool any = false;
            for (int w = 0; w < W; w++)
                any |= (nx[w] = cand[w] & symset[(size_t)a * W + w]) != 0;
            if ((!any && ps->anchor_start) || a == re->sym[re->n_int - 1]) {
                d.next[(size_t)s * n_sym + a] = DEAD;
                continue;
            }
            if (!ps->anchor_start) set_bit(nx, n_pos); /* a match may (re)start anywhere */
            settle(g, nx, ps->anchor_end);
            const int32_t t = intern(ps, &d, nx); /* may move d.sets and d.next */
            d.next[(size_t)s * n_sym + a] = t;
        }
    }
    if (ps->st == QV_OK) {
        re->n_states = d.n;
        re->next = d.next;
        d.next = NULL;
        acc = qv_malloc(d.n);
        if (!acc) fail(ps, QV_ERR_NOMEM, "out of memory");
        for (uint32_t s = 0; acc && s < d.n; s++)
            acc[s] = accepting(g, d.sets + (size_t)s * W);
    }
    if (ps->st == QV_OK) ps->st = distances(re, acc);
    if (ps->st == QV_OK && re->dist[re->start] == NO_MATCH)
        fail(ps, QV_ERR_UNSUPPORTED, "it matches nothing");
    qv_free(acc);
    qv_free(d.sets);
    qv_free(d.next);
    qv_free(d.tab);
    qv_free(symset);
    return ps->st;
}

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
    ps->err = err;
    if (ps->p < ps->end && *ps->p == '^') ps->anchor_start = true, ps->p++;
    const int root = parse_alt(ps);
    if (root >= 0 && ps->p < ps->end && *ps->p == '$' && ps->p + 1 == ps->end)
        ps->anchor_end = true, ps->p++;
    if (root >= 0 && ps->p < ps->end) fail(ps, QV_ERR_INVALID, "unmatched )");
    if (root >= 0 && (ps->anchor_start || ps->anchor_end) && ps->nodes[root].op == N_ALT)
        fail(ps, QV_ERR_UNSUPPORTED, "^ or $ beside a top-level |: write ^(a|b)$");
    glushkov g = {0};
    qv_status st = ps->st;
    if (st == QV_OK) st = build_glushkov(ps, &g);
    if (st == QV_OK) st = build_alphabet(ps, re);
    if (st == QV_OK) st = build_dfa(ps, &g, re);
    if (st != QV_OK && ps->st == QV_OK) fail(ps, st, "out of memory");
    glushkov_free(&g);
    qv_free(ps);
    if (st != QV_OK) {
        qv_regex_free(re);
        return st;
    }
    *out = re;
    return QV_OK;
}

void qv_regex_free(qv_regex *re) {
    if (!re) return;
    qv_free(re->next);
    qv_free(re->dist);
    qv_free(re->bound);
    qv_free(re->sym);
    qv_free(re);
}

uint64_t qv_regex_start(const qv_regex *re) { return re->start; }

static uint32_t symbol(const qv_regex *re, uint32_t cp) {
    return cp < 128 ? re->ascii[cp] : re->sym[interval_of(re->bound, re->n_int, cp)];
}

bool qv_regex_step(const qv_regex *re, uint64_t *state, uint32_t cp) {
    const int32_t t = re->next[*state * re->n_sym + symbol(re, cp)];
    if (t == DEAD) return false;
    *state = (uint64_t)t;
    return true;
}

bool qv_regex_accepts(const qv_regex *re, uint64_t state) { return re->dist[state] == 0; }

uint32_t qv_regex_min_left(const qv_regex *re, uint64_t state) { return re->dist[state]; }

bool qv_regex_can_step(const qv_regex *re, uint64_t state, uint32_t lo, uint32_t hi,
                       uint32_t budget) {
    const int32_t *next = re->next + state * re->n_sym;
    for (uint32_t j = interval_of(re->bound, re->n_int, lo); j < re->n_int && re->bound[j] <= hi;
         j++)
        if (next[re->sym[j]] != DEAD && re->dist[next[re->sym[j]]] <= budget) return true;
    return false;
}

uint32_t qv_regex_states(const qv_regex *re) { return re->n_states; }
