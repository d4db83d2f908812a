/*
 * tok_encode.c - text -> ids: added-token extraction (HF leftmost-longest, lstrip/rstrip/
 * single_word), normalizers, pre-tokenizers (Split, ByteLevel, Digits, Metaspace), the BPE
 * merge loop and the TemplateProcessing post-processor. TOKENIZER.md sections 1, 2 and 4.
 *
 * Not here: loading (tok_load.c), decoding (tok_decode.c).
 * Invariants: the input is repaired to valid UTF-8 first, so every regex match runs with
 * PCRE2_NO_UTF_CHECK and every later step sees valid UTF-8. The BPE merge loop is a binary heap
 * ordered by (rank, position): O(n log n) per pre-token.
 * Thread: any number of threads may encode with one tokenizer; all scratch is per call.
 */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* ---- growable vectors ---- */

typedef struct ivec {
    int32_t *p;
    size_t n, cap;
} ivec;

static qv_status ivec_push(ivec *v, int32_t x) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int32_t *p = qv_realloc(v->p, cap * sizeof(*p));
        if (!p) return QV_ERR_NOMEM;
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = x;
    return QV_OK;
}

/* A list of pieces, each a byte range of its own buffer. `first` marks a piece that starts at
 * original offset 0 (Metaspace prepend_scheme "first"). */
typedef struct piece {
    size_t off, len;
    bool first;
} piece;

typedef struct plist {
    qv__buf buf;
    piece *p;
    size_t n, cap;
} plist;

static qv_status plist_add(plist *l, const char *s, size_t n, bool first) {
    if (n == 0) return QV_OK; /* HF drops empty splits */
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        piece *p = qv_realloc(l->p, cap * sizeof(*p));
        if (!p) return QV_ERR_NOMEM;
        l->p = p;
        l->cap = cap;
    }
    size_t off = l->buf.len;
    if (qv__buf_put(&l->buf, s, n)) return QV_ERR_NOMEM;
    l->p[l->n++] = (piece){off, n, first};
    return QV_OK;
}

static void plist_clear(plist *l) {
    l->n = 0;
    l->buf.len = 0;
}

static void plist_free(plist *l) {
    qv__buf_free(&l->buf);
    qv_free(l->p);
}

/* Matches of a split pattern: ranges covering the piece, flagged as match or gap. */
typedef struct span {
    size_t a, b;
    bool m;
} span;

typedef struct spans {
    span *p;
    size_t n, cap;
} spans;

static qv_status spans_add(spans *s, size_t a, size_t b, bool m) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        span *p = qv_realloc(s->p, cap * sizeof(*p));
        if (!p) return QV_ERR_NOMEM;
        s->p = p;
        s->cap = cap;
    }
    s->p[s->n++] = (span){a, b, m};
    return QV_OK;
}

/* Per-call scratch. */
typedef struct ectx {
    const qv_tokenizer *t;
    ivec out;
    plist l[2];
    spans sp;
    pcre2_match_data *md;
    pcre2_match_context *mc;
    qv__buf tmp;
    bool parse_special;
    /* BPE */
    int32_t *sym, *prev, *next;
    size_t sym_cap;
    struct hent *heap;
    size_t heap_cap;
    qv_error *err;
} ectx;

/* ---- added tokens ---- */

static const char *akey(const qv__added *a, int phase, size_t *len) {
    if (phase == 1 && a->ncontent) {
        *len = a->nlen;
        return a->ncontent;
    }
    *len = a->len;
    return a->content;
}

static _Thread_local qv_tokenizer *g_sort_tok; /* qsort context of the loading thread */
static _Thread_local int g_sort_phase;

static int cmp_order(const void *x, const void *y) {
    const qv__added *a = &g_sort_tok->added[*(const uint32_t *)x];
    const qv__added *b = &g_sort_tok->added[*(const uint32_t *)y];
    size_t la, lb;
    const char *ka = akey(a, g_sort_phase, &la), *kb = akey(b, g_sort_phase, &lb);
    if ((uint8_t)ka[0] != (uint8_t)kb[0]) return (uint8_t)ka[0] < (uint8_t)kb[0] ? -1 : 1;
    if (la != lb) return la > lb ? -1 : 1;
    /* identical text: the later definition wins (HF map overwrite) */
    return *(const uint32_t *)x > *(const uint32_t *)y ? -1 : 1;
}

qv_status qv__tok_build_matchers(qv_tokenizer *t) {
    for (int ph = 0; ph < 2; ph++) {
        qv_free(t->order[ph]);
        t->order[ph] = qv_malloc((t->n_added + 1) * sizeof(uint32_t));
        if (!t->order[ph]) return QV_ERR_NOMEM;
    }
    size_t n[2] = {0, 0};
    for (size_t i = 0; i < t->n_added; i++) {
        qv__added *a = &t->added[i];
        if (a->normalized && t->n_norms > 0 && !a->ncontent) {
            qv__buf b = {0};
            if (qv__tok_normalize(t, a->content, a->len, &b)) return QV_ERR_NOMEM;
            if (b.len && (b.len != a->len || memcmp(b.p, a->content, b.len))) {
                a->ncontent = b.p;
                a->nlen = b.len;
            } else {
                qv__buf_free(&b);
            }
        }
        int ph = a->normalized ? 1 : 0;
        t->order[ph][n[ph]++] = (uint32_t)i;
    }
    g_sort_tok = t;
    for (int ph = 0; ph < 2; ph++) {
        g_sort_phase = ph;
        if (n[ph]) qsort(t->order[ph], n[ph], sizeof(uint32_t), cmp_order);
        memset(t->first[ph], 0, sizeof(t->first[ph]));
        for (size_t i = 0; i < n[ph]; i++) {
            size_t l;
            const char *k = akey(&t->added[t->order[ph][i]], ph, &l);
            t->first[ph][(uint8_t)k[0] + 1]++;
        }
        for (int b = 0; b < 256; b++)
            t->first[ph][b + 1] += t->first[ph][b];
    }
    g_sort_tok = NULL;
    return QV_OK;
}

static bool ends_with_word(const char *s, size_t n) {
    if (n == 0) return false;
    size_t i = n - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80)
        i--;
    uint32_t cp;
    if (!qv__utf8_decode(s + i, n - i, &cp)) return false;
    return qv__uc_is_word(cp);
}

static bool starts_with_word(const char *s, size_t n) {
    uint32_t cp;
    if (!n || !qv__utf8_decode(s, n, &cp)) return false;
    return qv__uc_is_word(cp);
}

/* Start of the whitespace run that ends at n. */
static size_t ws_run_start(const char *s, size_t n) {
    size_t i = n;
    while (i > 0) {
        size_t j = i - 1;
        while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80)
            j--;
        uint32_t cp;
        if (!qv__utf8_decode(s + j, i - j, &cp) || !qv__uc_is_whitespace(cp)) break;
        i = j;
    }
    return i;
}

static size_t ws_run_len(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k || !qv__uc_is_whitespace(cp)) break;
        i += k;
    }
    return i;
}

typedef qv_status (*seg_fn)(ectx *c, const char *s, size_t n, bool first, int32_t id);

/* Splits s by the added tokens of `phase` (HF find_matches): calls fn for text segments
 * (id -1) and for tokens. `first` tells whether s starts at original offset 0. */
static qv_status split_added(ectx *c, const char *s, size_t n, int phase, bool first, seg_fn fn) {
    const qv_tokenizer *t = c->t;
    size_t start_offset = 0, i = 0;
    qv_status st;
    const uint32_t *fb = t->first[phase];
    if (fb[256] == 0) return fn(c, s, n, first, -1);
    while (i < n) {
        uint8_t b = (uint8_t)s[i];
        const qv__added *best = NULL;
        size_t blen = 0;
        for (uint32_t k = fb[b]; k < fb[b + 1]; k++) {
            const qv__added *a = &t->added[t->order[phase][k]];
            size_t l;
            const char *key = akey(a, phase, &l);
            if (l <= n - i && !memcmp(s + i, key, l)) {
                best = a;
                blen = l;
                break;
            }
        }
        if (!best) {
            i++;
            continue;
        }
        size_t start = i, stop = i + blen;
        if (best->special && !c->parse_special) {
            i = stop; /* HF encode_special_tokens: the match is consumed and skipped */
            continue;
        }
        if (best->single_word) {
            bool start_space = start == 0 || !ends_with_word(s, start);
            bool stop_space = stop == n || !starts_with_word(s + stop, n - stop);
            if (!start_space || !stop_space) {
                i = stop;
                continue;
            }
        }
        if (best->lstrip) {
            size_t ns = ws_run_start(s, start);
            start = QV_MAX(ns, start_offset);
        }
        if (best->rstrip) stop += ws_run_len(s + stop, n - stop);
        if (start_offset < start &&
            (st = fn(c, s + start_offset, start - start_offset, first && start_offset == 0, -1)))
            return st;
        if ((st = fn(c, NULL, 0, false, best->id))) return st;
        start_offset = stop;
        i = stop;
    }
    if (start_offset < n)
        return fn(c, s + start_offset, n - start_offset, first && !start_offset, -1);
    return QV_OK;
}

/* ---- normalizers ---- */

static qv_status replace_all(const char *s, size_t n, const char *a, size_t al, const char *b,
                             size_t bl, qv__buf *out) {
    size_t i = 0, run = 0;
    while (i + al <= n) {
        if (s[i] == a[0] && !memcmp(s + i, a, al)) {
            if (qv__buf_put(out, s + run, i - run) || qv__buf_put(out, b, bl)) return QV_ERR_NOMEM;
            i += al;
            run = i;
        } else {
            i++;
        }
    }
    return qv__buf_put(out, s + run, n - run);
}

qv_status qv__tok_normalize(const qv_tokenizer *t, const char *s, size_t n, qv__buf *out) {
    qv__buf cur = {0}, nxt = {0};
    qv_status st = QV_OK;
    if ((st = qv__buf_put(&cur, s, n))) goto done;
    for (int k = 0; k < t->n_norms; k++) {
        const qv__norm *m = &t->norms[k];
        nxt.len = 0;
        if (qv__buf_reserve(&nxt, cur.len)) {
            st = QV_ERR_NOMEM;
            goto done;
        }
        switch (m->kind) {
        case QV_NORM_NFC:
        case QV_NORM_NFD:
        case QV_NORM_NFKC:
        case QV_NORM_NFKD: {
            if (cur.len == 0) break;
            int opt = UTF8PROC_STABLE;
            if (m->kind == QV_NORM_NFC)
                opt |= UTF8PROC_COMPOSE;
            else if (m->kind == QV_NORM_NFD)
                opt |= UTF8PROC_DECOMPOSE;
            else if (m->kind == QV_NORM_NFKC)
                opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
            else
                opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t r =
                utf8proc_map((const utf8proc_uint8_t *)cur.p, (utf8proc_ssize_t)cur.len, &dst,
                             (utf8proc_option_t)opt);
            if (r < 0) { /* cannot happen on valid UTF-8; keep the text unchanged */
                st = qv__buf_put(&nxt, cur.p, cur.len);
            } else {
                st = qv__buf_put(&nxt, dst, (size_t)r);
            }
            free(dst);
            break;
        }
        case QV_NORM_PREPEND:
            if (cur.len) st = qv__buf_put(&nxt, m->a, m->a_len);
            if (!st) st = qv__buf_put(&nxt, cur.p, cur.len);
            break;
        case QV_NORM_REPLACE:
            st = replace_all(cur.p, cur.len, m->a, m->a_len, m->b, m->b_len, &nxt);
            break;
        }
        if (st) goto done;
        qv__buf tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    st = qv__buf_put(out, cur.p, cur.len);
done:
    qv__buf_free(&cur);
    qv__buf_free(&nxt);
    return st;
}

/* ---- pre-tokenizers ---- */

static qv_status regex_spans(ectx *c, const pcre2_code *re, const char *s, size_t n, spans *sp) {
    size_t pos = 0, prev = 0;
    sp->n = 0;
    if (!c->md) {
        c->md = pcre2_match_data_create(4, NULL);
        c->mc = pcre2_match_context_create(NULL);
        if (!c->md || !c->mc) return QV_ERR_NOMEM;
        pcre2_set_match_limit(c->mc, 100000000u);
    }
    while (pos < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, c->mc);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return qv_errorf(c->err, QV_ERR_LIMIT, "pre-tokenizer regex failed: %s",
                             (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t a = ov[0], b = ov[1];
        if (b == a) { /* empty match: step over one character */
            size_t k = 1;
            while (a + k < n && ((uint8_t)s[a + k] & 0xC0) == 0x80)
                k++;
            pos = a + k;
            continue;
        }
        if (prev != a && spans_add(sp, prev, a, false)) return QV_ERR_NOMEM;
        if (spans_add(sp, a, b, true)) return QV_ERR_NOMEM;
        prev = pos = b;
    }
    if (prev != n && spans_add(sp, prev, n, false)) return QV_ERR_NOMEM;
    return QV_OK;
}

static qv_status literal_spans(const char *lit, size_t ll, const char *s, size_t n, spans *sp) {
    size_t i = 0, prev = 0;
    sp->n = 0;
    while (i + ll <= n) {
        if (!memcmp(s + i, lit, ll)) {
            if (prev != i && spans_add(sp, prev, i, false)) return QV_ERR_NOMEM;
            if (spans_add(sp, i, i + ll, true)) return QV_ERR_NOMEM;
            i += ll;
            prev = i;
        } else {
            i++;
        }
    }
    if (prev != n && spans_add(sp, prev, n, false)) return QV_ERR_NOMEM;
    return QV_OK;
}

/* Every character matching pred is its own match (HF char-predicate pattern). */
static qv_status char_spans(bool (*pred)(uint32_t), const char *s, size_t n, spans *sp) {
    size_t i = 0, prev = 0;
    sp->n = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k) k = 1, cp = 0xFFFD;
        if (pred(cp)) {
            if (prev != i && spans_add(sp, prev, i, false)) return QV_ERR_NOMEM;
            if (spans_add(sp, i, i + k, true)) return QV_ERR_NOMEM;
            prev = i + k;
        }
        i += k;
    }
    if (prev != n && spans_add(sp, prev, n, false)) return QV_ERR_NOMEM;
    return QV_OK;
}

/* Applies invert + behavior to the spans of piece s and appends the resulting pieces. */
static qv_status emit_splits(plist *out, const char *s, spans *sp, bool invert,
                             enum qv__split_behavior beh, bool first) {
    if (invert)
        for (size_t i = 0; i < sp->n; i++)
            sp->p[i].m = !sp->p[i].m;
    size_t w = 0; /* merged spans are compacted in place; m=true marks "remove" afterwards */
    bool prev_m = false;
    switch (beh) {
    case QV_SPLIT_ISOLATED:
        for (size_t i = 0; i < sp->n; i++)
            sp->p[i].m = false;
        w = sp->n;
        break;
    case QV_SPLIT_REMOVED: w = sp->n; break;
    case QV_SPLIT_CONTIGUOUS:
        for (size_t i = 0; i < sp->n; i++) {
            bool m = sp->p[i].m;
            if (m == prev_m && w > 0)
                sp->p[w - 1].b = sp->p[i].b;
            else
                sp->p[w++] = (span){sp->p[i].a, sp->p[i].b, false};
            prev_m = m;
        }
        break;
    case QV_SPLIT_MERGED_PREV:
        for (size_t i = 0; i < sp->n; i++) {
            bool m = sp->p[i].m;
            if (m && !prev_m && w > 0)
                sp->p[w - 1].b = sp->p[i].b;
            else
                sp->p[w++] = (span){sp->p[i].a, sp->p[i].b, false};
            prev_m = m;
        }
        break;
    case QV_SPLIT_MERGED_NEXT: {
        /* walk backwards (HF folds over the reversed list), then reverse */
        span *tmp = qv_malloc((sp->n + 1) * sizeof(*tmp));
        if (!tmp) return QV_ERR_NOMEM;
        size_t k = 0;
        prev_m = false;
        for (size_t r = sp->n; r-- > 0;) {
            bool m = sp->p[r].m;
            if (m && !prev_m && k > 0)
                tmp[k - 1].a = sp->p[r].a;
            else
                tmp[k++] = (span){sp->p[r].a, sp->p[r].b, false};
            prev_m = m;
        }
        for (size_t i = 0; i < k; i++)
            sp->p[i] = tmp[k - 1 - i];
        qv_free(tmp);
        w = k;
        break;
    }
    }
    for (size_t i = 0; i < w; i++) {
        if (sp->p[i].m) continue;
        qv_status st =
            plist_add(out, s + sp->p[i].a, sp->p[i].b - sp->p[i].a, first && sp->p[i].a == 0);
        if (st) return st;
    }
    return QV_OK;
}

static qv_status map_bytes(const char *s, size_t n, qv__buf *out) {
    for (size_t i = 0; i < n; i++)
        if (qv__buf_put_cp(out, qv__byte_to_cp((uint8_t)s[i]))) return QV_ERR_NOMEM;
    return QV_OK;
}

static qv_status pre_step(ectx *c, const qv__pre *p, bool last, const plist *in, plist *out) {
    qv_status st = QV_OK;
    for (size_t k = 0; k < in->n && !st; k++) {
        const char *s = in->buf.p + in->p[k].off;
        size_t n = in->p[k].len;
        bool first = in->p[k].first;
        switch (p->kind) {
        case QV_PRE_SPLIT:
            st = p->re ? regex_spans(c, p->re, s, n, &c->sp)
                       : literal_spans(p->literal, p->literal_len, s, n, &c->sp);
            if (!st) st = emit_splits(out, s, &c->sp, p->invert, p->behavior, first);
            break;
        case QV_PRE_DIGITS:
            st = char_spans(qv__uc_is_numeric, s, n, &c->sp);
            if (!st)
                st = emit_splits(out, s, &c->sp, false,
                                 p->individual_digits ? QV_SPLIT_ISOLATED : QV_SPLIT_CONTIGUOUS,
                                 first);
            break;
        case QV_PRE_BYTELEVEL: {
            const char *src = s;
            size_t sn = n;
            c->tmp.len = 0;
            if (p->add_prefix_space && (n == 0 || s[0] != ' ')) {
                if (qv__buf_putc(&c->tmp, ' ') || qv__buf_put(&c->tmp, s, n)) return QV_ERR_NOMEM;
                src = c->tmp.p;
                sn = c->tmp.len;
            }
            size_t start = out->n;
            if (p->use_regex) {
                st = regex_spans(c, p->re, src, sn, &c->sp);
                if (!st) st = emit_splits(out, src, &c->sp, false, QV_SPLIT_ISOLATED, first);
            } else {
                st = plist_add(out, src, sn, first);
            }
            if (!st && !last) { /* map bytes now; otherwise BPE maps them */
                plist mapped = {0};
                for (size_t i = start; i < out->n && !st; i++) {
                    qv__buf m = {0};
                    st = map_bytes(out->buf.p + out->p[i].off, out->p[i].len, &m);
                    if (!st) st = plist_add(&mapped, m.p, m.len, out->p[i].first);
                    qv__buf_free(&m);
                }
                out->n = start;
                for (size_t i = 0; i < mapped.n && !st; i++)
                    st = plist_add(out, mapped.buf.p + mapped.p[i].off, mapped.p[i].len,
                                   mapped.p[i].first);
                plist_free(&mapped);
            }
            break;
        }
        case QV_PRE_METASPACE: {
            qv__buf m = {0};
            bool prepend = false;
            if (p->prepend_scheme != QV_PREPEND_NEVER) {
                bool starts =
                    n >= p->replacement_len && !memcmp(s, p->replacement, p->replacement_len);
                /* after ' ' -> replacement the text starts with it iff it started with ' ' */
                if (n > 0 && s[0] == ' ') starts = true;
                prepend = !starts && (p->prepend_scheme == QV_PREPEND_ALWAYS || first);
            }
            if (prepend) st = qv__buf_put(&m, p->replacement, p->replacement_len);
            if (!st) st = replace_all(s, n, " ", 1, p->replacement, p->replacement_len, &m);
            if (!st) {
                if (p->split) {
                    st = literal_spans(p->replacement, p->replacement_len, m.p, m.len, &c->sp);
                    if (!st) st = emit_splits(out, m.p, &c->sp, false, QV_SPLIT_MERGED_NEXT, first);
                } else {
                    st = plist_add(out, m.p, m.len, first);
                }
            }
            qv__buf_free(&m);
            break;
        }
        }
    }
    return st;
}

/* ---- BPE ---- */

typedef struct hent {
    int32_t rank, pos, id;
} hent;

static bool hless(const hent *a, const hent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(hent *h, size_t *n, hent e) {
    size_t i = (*n)++;
    h[i] = e;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&h[i], &h[p])) break;
        hent tmp = h[i];
        h[i] = h[p];
        h[p] = tmp;
        i = p;
    }
}

static hent heap_pop(hent *h, size_t *n) {
    hent top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && hless(&h[l], &h[m])) m = l;
        if (r < *n && hless(&h[r], &h[m])) m = r;
        if (m == i) break;
        hent tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
    return top;
}

static bool pair_lookup(const qv_tokenizer *t, int32_t a, int32_t b, int32_t *rank,
                        int32_t *merged) {
    if (!t->spm_merges) return qv__pairmap_get(&t->merges, a, b, rank, merged);
    if (a < 0 || b < 0 || a >= t->cap_vocab || b >= t->cap_vocab || !t->vocab[a] || !t->vocab[b])
        return false;
    size_t la = t->vocab_len[a], lb = t->vocab_len[b];
    char stackbuf[512];
    if (la + lb > sizeof(stackbuf)) return false;
    memcpy(stackbuf, t->vocab[a], la);
    memcpy(stackbuf + la, t->vocab[b], lb);
    int32_t m = qv__strmap_get(&t->vocab_map, stackbuf, la + lb);
    if (m < 0 || t->rank_by_id[m] < 0) return false;
    *merged = m;
    *rank = t->rank_by_id[m];
    return true;
}

static qv_status bpe_reserve(ectx *c, size_t n) {
    if (n <= c->sym_cap) return QV_OK;
    size_t cap = c->sym_cap ? c->sym_cap : 64;
    while (cap < n)
        cap *= 2;
    int32_t *a = qv_realloc(c->sym, cap * sizeof(*a));
    if (!a) return QV_ERR_NOMEM;
    c->sym = a;
    a = qv_realloc(c->prev, cap * sizeof(*a));
    if (!a) return QV_ERR_NOMEM;
    c->prev = a;
    a = qv_realloc(c->next, cap * sizeof(*a));
    if (!a) return QV_ERR_NOMEM;
    c->next = a;
    hent *h = qv_realloc(c->heap, cap * 2 * sizeof(*h));
    if (!h) return QV_ERR_NOMEM;
    c->heap = h;
    c->heap_cap = cap * 2;
    c->sym_cap = cap;
    return QV_OK;
}

/* Unknown-character handling state (HF merge_word). */
typedef struct unk_state {
    bool pending;
} unk_state;

static void add_sym(ectx *c, size_t *ns, int32_t id) { c->sym[(*ns)++] = id; }

static void unk_char(ectx *c, size_t *ns, unk_state *u) {
    const qv_tokenizer *t = c->t;
    if (t->unk_id < 0) return; /* dropped */
    if (u->pending && t->fuse_unk) return;
    if (u->pending) add_sym(c, ns, t->unk_id);
    u->pending = true;
}

static void known_char(ectx *c, size_t *ns, unk_state *u, int32_t id) {
    if (u->pending) {
        add_sym(c, ns, c->t->unk_id);
        u->pending = false;
    }
    add_sym(c, ns, id);
}

/* Encodes one pre-token. raw: s holds raw bytes that map 1:1 to byte-level symbols. */
static qv_status bpe_piece(ectx *c, const char *s, size_t n, bool raw) {
    const qv_tokenizer *t = c->t;
    qv_status st;
    if (n == 0) return QV_OK;
    if (t->ignore_merges) {
        int32_t id;
        if (raw) {
            c->tmp.len = 0;
            if (map_bytes(s, n, &c->tmp)) return QV_ERR_NOMEM;
            id = qv__strmap_get(&t->vocab_map, c->tmp.p, c->tmp.len);
        } else {
            id = qv__strmap_get(&t->vocab_map, s, n);
        }
        if (id >= 0) return ivec_push(&c->out, id);
    }
    if ((st = bpe_reserve(c, n * 4 + 2))) return st; /* byte fallback: up to 4 per char */
    size_t ns = 0;
    unk_state u = {false};
    if (raw) {
        for (size_t i = 0; i < n; i++) {
            uint8_t b = (uint8_t)s[i];
            int32_t id = t->byte_sym[b];
            if (id >= 0)
                known_char(c, &ns, &u, id);
            else if (t->byte_fallback && t->byte_tok[b] >= 0)
                add_sym(c, &ns, t->byte_tok[b]);
            else
                unk_char(c, &ns, &u);
        }
    } else {
        size_t i = 0;
        while (i < n) {
            uint32_t cp;
            size_t k = qv__utf8_decode(s + i, n - i, &cp);
            if (!k) k = 1;
            int32_t id = qv__strmap_get(&t->vocab_map, s + i, k);
            if (id >= 0) {
                known_char(c, &ns, &u, id);
            } else {
                bool all = t->byte_fallback;
                for (size_t j = 0; j < k && all; j++)
                    if (t->byte_tok[(uint8_t)s[i + j]] < 0) all = false;
                if (all) {
                    for (size_t j = 0; j < k; j++)
                        add_sym(c, &ns, t->byte_tok[(uint8_t)s[i + j]]);
                } else {
                    unk_char(c, &ns, &u);
                }
            }
            i += k;
        }
    }
    if (u.pending) add_sym(c, &ns, t->unk_id);
    if (ns == 0) return QV_OK;
    /* merge loop */
    for (size_t i = 0; i < ns; i++) {
        c->prev[i] = (int32_t)i - 1;
        c->next[i] = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        int32_t rank, merged;
        if (pair_lookup(t, c->sym[i], c->sym[i + 1], &rank, &merged))
            heap_push(c->heap, &hn, (hent){rank, (int32_t)i, merged});
    }
    while (hn > 0) {
        hent top = heap_pop(c->heap, &hn);
        int32_t p = top.pos;
        if (c->sym[p] < 0) continue; /* consumed */
        int32_t q = c->next[p];
        if (q < 0) continue;
        int32_t rank, merged;
        if (!pair_lookup(t, c->sym[p], c->sym[q], &rank, &merged) || merged != top.id) continue;
        c->sym[p] = merged;
        c->sym[q] = -1;
        c->next[p] = c->next[q];
        if (c->next[q] >= 0) c->prev[c->next[q]] = p;
        if (hn + 2 > c->heap_cap) {
            hent *h = qv_realloc(c->heap, c->heap_cap * 2 * sizeof(*h));
            if (!h) return QV_ERR_NOMEM;
            c->heap = h;
            c->heap_cap *= 2;
        }
        if (c->prev[p] >= 0 && pair_lookup(t, c->sym[c->prev[p]], c->sym[p], &rank, &merged))
            heap_push(c->heap, &hn, (hent){rank, c->prev[p], merged});
        if (c->next[p] >= 0 && pair_lookup(t, c->sym[p], c->sym[c->next[p]], &rank, &merged))
            heap_push(c->heap, &hn, (hent){rank, p, merged});
    }
    for (int32_t i = 0; i >= 0; i = c->next[i])
        if ((st = ivec_push(&c->out, c->sym[i]))) return st;
    return QV_OK;
}

/* ---- pipeline ---- */

static qv_status pretok_and_bpe(ectx *c, const char *s, size_t n, bool first) {
    const qv_tokenizer *t = c->t;
    qv_status st;
    if (n == 0) return QV_OK;
    if (t->n_pres == 0) return bpe_piece(c, s, n, false);
    plist *in = &c->l[0], *out = &c->l[1];
    plist_clear(in);
    if ((st = plist_add(in, s, n, first))) return st;
    for (int k = 0; k < t->n_pres; k++) {
        plist_clear(out);
        if ((st = pre_step(c, &t->pres[k], k == t->n_pres - 1, in, out))) return st;
        plist *tmp = in;
        in = out;
        out = tmp;
    }
    for (size_t i = 0; i < in->n; i++)
        if ((st = bpe_piece(c, in->buf.p + in->p[i].off, in->p[i].len, t->bytelevel_last)))
            return st;
    return QV_OK;
}

static qv_status on_normalized_seg(ectx *c, const char *s, size_t n, bool first, int32_t id) {
    if (id >= 0) return ivec_push(&c->out, id);
    return pretok_and_bpe(c, s, n, first);
}

static qv_status on_raw_seg(ectx *c, const char *s, size_t n, bool first, int32_t id) {
    const qv_tokenizer *t = c->t;
    if (id >= 0) return ivec_push(&c->out, id);
    if (n == 0) return QV_OK;
    const char *ns = s;
    size_t nn = n;
    qv__buf norm = {0};
    qv_status st;
    if (t->n_norms) {
        if ((st = qv__tok_normalize(t, s, n, &norm))) return st;
        ns = norm.p;
        nn = norm.len;
    }
    st = split_added(c, ns, nn, 1, first, on_normalized_seg);
    qv__buf_free(&norm);
    return st;
}

qv_status qv_tokenizer_encode(const qv_tokenizer *t, const char *text, size_t len,
                              bool add_special_tokens, int32_t **ids, size_t *n_ids,
                              qv_error *err) {
    return qv_tokenizer_encode_ex(t, text, len, add_special_tokens, true, ids, n_ids, err);
}

qv_status qv_tokenizer_encode_ex(const qv_tokenizer *t, const char *text, size_t len,
                                 bool add_special_tokens, bool parse_special, int32_t **ids,
                                 size_t *n_ids, qv_error *err) {
    ectx c;
    memset(&c, 0, sizeof(c));
    c.t = t;
    c.parse_special = parse_special;
    c.err = err;
    qv__buf clean = {0};
    qv_status st = QV_OK;
    *ids = NULL;
    *n_ids = 0;
    if (!text) len = 0;
    if (len && !qv__utf8_valid(text, len)) {
        if ((st = qv__utf8_repair(text, len, &clean))) goto done;
        text = clean.p;
        len = clean.len;
    }
    if (add_special_tokens)
        for (int i = 0; i < t->n_post_pre && !st; i++)
            st = ivec_push(&c.out, t->post_pre[i]);
    if (!st && len) st = split_added(&c, text, len, 0, true, on_raw_seg);
    if (add_special_tokens)
        for (int i = 0; i < t->n_post_post && !st; i++)
            st = ivec_push(&c.out, t->post_post[i]);
    if (!st && !c.out.p) st = ivec_push(&c.out, 0), c.out.n = 0;
done:
    qv__buf_free(&clean);
    qv__buf_free(&c.tmp);
    plist_free(&c.l[0]);
    plist_free(&c.l[1]);
    qv_free(c.sp.p);
    qv_free(c.sym);
    qv_free(c.prev);
    qv_free(c.next);
    qv_free(c.heap);
    if (c.md) pcre2_match_data_free(c.md);
    if (c.mc) pcre2_match_context_free(c.mc);
    if (st) {
        qv_free(c.out.p);
        if (st == QV_ERR_NOMEM) qv_errorf(err, st, "out of memory while encoding");
        return st;
    }
    *ids = c.out.p;
    *n_ids = c.out.n;
    return QV_OK;
}
