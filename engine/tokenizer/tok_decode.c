/*
 * tok_decode.c - ids -> text (HF Tokenizer.decode: token strings, special-token skipping, the
 * decoder chain) and the streaming detokenizer (HF DecodeStream prefix-offset algorithm plus
 * stop-string hold-back, TOKENIZER.md section 8).
 *
 * Not here: clean_up_tokenization_spaces (a transformers-only post-edit; deliberately not
 * applied). Invariants: every string this file returns is valid UTF-8 (lossy decoding turns
 * invalid byte sequences into U+FFFD). Thread: decode is reentrant; a qv_detok is confined to
 * one thread.
 */
#include <string.h>

#include "tok_internal.h"

/* A list of strings stored back to back in one buffer. */
typedef struct slist {
    qv__buf buf;
    size_t *off, *len;
    size_t n, cap;
} slist;

static qv_status slist_add(slist *l, const char *s, size_t n) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 32;
        size_t *o = qv_realloc(l->off, cap * sizeof(*o));
        if (!o) return QV_ERR_NOMEM;
        l->off = o;
        size_t *q = qv_realloc(l->len, cap * sizeof(*q));
        if (!q) return QV_ERR_NOMEM;
        l->len = q;
        l->cap = cap;
    }
    l->off[l->n] = l->buf.len;
    l->len[l->n] = n;
    l->n++;
    return qv__buf_put(&l->buf, s, n);
}

/* Appends to the last string (which must be the most recently added). */
static qv_status slist_append_last(slist *l, const char *s, size_t n) {
    l->len[l->n - 1] += n;
    return qv__buf_put(&l->buf, s, n);
}

static void slist_clear(slist *l) {
    l->n = 0;
    l->buf.len = 0;
}

static void slist_free(slist *l) {
    qv__buf_free(&l->buf);
    qv_free(l->off);
    qv_free(l->len);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "<0xXX>" -> byte, else -1 (HF: len 6, starts with "<0x", ends with ">", u8 from hex). */
static int byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int h = hexval(s[3]), l = hexval(s[4]);
    if (h < 0 || l < 0) return -1;
    return h * 16 + l;
}

static qv_status flush_bytes(slist *out, qv__buf *bytes) {
    qv_status st = QV_OK;
    if (!bytes->len) return QV_OK;
    if (qv__utf8_valid(bytes->p, bytes->len)) {
        st = slist_add(out, bytes->p, bytes->len);
    } else {
        for (size_t i = 0; i < bytes->len && !st; i++)
            st = slist_add(out, "\xEF\xBF\xBD", 3);
    }
    bytes->len = 0;
    return st;
}

/* The span [*a, *b) of s[n] that a Strip decoder keeps: up to strip_start copies of
 * strip_cp removed from the start, up to strip_stop from the end. */
static void strip_span(const qv__dec *d, const char *s, size_t n, size_t *a_out, size_t *b_out) {
    size_t a = 0, b = n;
    for (int k = 0; k < d->strip_start && a < n; k++) {
        uint32_t cp;
        size_t l = qv__utf8_decode(s + a, n - a, &cp);
        if (!l || cp != d->strip_cp) break;
        a += l;
    }
    for (int k = 0; k < d->strip_stop && b > a; k++) {
        size_t j = b - 1;
        while (j > a && ((uint8_t)s[j] & 0xC0) == 0x80)
            j--;
        uint32_t cp;
        size_t l = qv__utf8_decode(s + j, b - j, &cp);
        if (!l || cp != d->strip_cp) break;
        b = j;
    }
    *a_out = a;
    *b_out = b;
}

static qv_status dec_step(const qv__dec *d, const slist *in, slist *out) {
    qv_status st = QV_OK;
    switch (d->kind) {
    case QV_DEC_BYTELEVEL: {
        qv__buf raw = {0};
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = in->buf.p + in->off[i];
            size_t n = in->len[i], j = 0, start = raw.len;
            bool ok = true;
            while (j < n) {
                uint32_t cp;
                size_t k = qv__utf8_decode(s + j, n - j, &cp);
                int b = k ? qv__cp_to_byte(cp) : -1;
                if (b < 0) {
                    ok = false;
                    break;
                }
                if ((st = qv__buf_putc(&raw, (char)b))) break;
                j += k;
            }
            if (!st && !ok) {
                raw.len = start;
                st = qv__buf_put(&raw, s, n);
            }
        }
        qv__buf fixed = {0};
        if (!st) st = qv__utf8_repair(raw.p ? raw.p : "", raw.len, &fixed);
        if (!st) st = slist_add(out, fixed.p ? fixed.p : "", fixed.len);
        qv__buf_free(&raw);
        qv__buf_free(&fixed);
        return st;
    }
    case QV_DEC_REPLACE:
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = in->buf.p + in->off[i];
            size_t n = in->len[i], j = 0, run = 0;
            if ((st = slist_add(out, "", 0))) break;
            while (j + d->a_len <= n && !st) {
                if (!memcmp(s + j, d->a, d->a_len)) {
                    st = slist_append_last(out, s + run, j - run);
                    if (!st) st = slist_append_last(out, d->b, d->b_len);
                    j += d->a_len;
                    run = j;
                } else {
                    j++;
                }
            }
            if (!st) st = slist_append_last(out, s + run, n - run);
        }
        return st;
    case QV_DEC_BYTEFALLBACK: {
        qv__buf bytes = {0};
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = in->buf.p + in->off[i];
            int b = byte_token(s, in->len[i]);
            if (b >= 0) {
                st = qv__buf_putc(&bytes, (char)b);
            } else {
                st = flush_bytes(out, &bytes);
                if (!st) st = slist_add(out, s, in->len[i]);
            }
        }
        if (!st) st = flush_bytes(out, &bytes);
        qv__buf_free(&bytes);
        return st;
    }
    case QV_DEC_FUSE:
        if ((st = slist_add(out, "", 0))) return st;
        for (size_t i = 0; i < in->n && !st; i++)
            st = slist_append_last(out, in->buf.p + in->off[i], in->len[i]);
        return st;
    case QV_DEC_STRIP:
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = in->buf.p + in->off[i];
            size_t a, b;
            strip_span(d, s, in->len[i], &a, &b);
            st = slist_add(out, s + a, b - a);
        }
        return st;
    case QV_DEC_METASPACE:
        for (size_t i = 0; i < in->n && !st; i++) {
            const char *s = in->buf.p + in->off[i];
            size_t n = in->len[i], j = 0, run = 0;
            bool drop = i == 0 && d->prepend_scheme != QV_PREPEND_NEVER;
            if ((st = slist_add(out, "", 0))) break;
            while (j + d->replacement_len <= n && !st) {
                if (!memcmp(s + j, d->replacement, d->replacement_len)) {
                    st = slist_append_last(out, s + run, j - run);
                    if (!st && !drop) st = slist_append_last(out, " ", 1);
                    j += d->replacement_len;
                    run = j;
                } else {
                    j++;
                }
            }
            if (!st) st = slist_append_last(out, s + run, n - run);
        }
        return st;
    }
    return QV_ERR_INVALID;
}

qv_status qv__tok_decode_buf(const qv_tokenizer *t, const int32_t *ids, size_t n, bool skip_special,
                             qv__buf *out) {
    slist a = {0}, b = {0};
    qv_status st = QV_OK;
    for (size_t i = 0; i < n && !st; i++) {
        size_t len;
        const char *s = qv_tokenizer_token_text(t, ids[i], &len);
        if (!s) continue;
        if (skip_special && t->is_special[ids[i]]) continue;
        if (!t->has_decoder && a.n > 0) st = slist_add(&a, " ", 1);
        if (!st) st = slist_add(&a, s, len);
    }
    slist *cur = &a, *nxt = &b;
    for (int k = 0; k < t->n_decs && !st; k++) {
        slist_clear(nxt);
        st = dec_step(&t->decs[k], cur, nxt);
        slist *tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    if (!st) {
        /* Join; vocab strings from GGUF may be invalid UTF-8, so repair (no-op when valid). */
        qv__buf joined = {0};
        for (size_t i = 0; i < cur->n && !st; i++)
            st = qv__buf_put(&joined, cur->buf.p + cur->off[i], cur->len[i]);
        if (!st) st = qv__utf8_repair(joined.p ? joined.p : "", joined.len, out);
        qv__buf_free(&joined);
    }
    slist_free(&a);
    slist_free(&b);
    return st;
}

/* One decoder step on one token's bytes, src[n] -> dst[cap]; false when dst is too small.
 * fused: a Fuse came before, so the token is inside the list's first (only) element, where
 * the metaspace decoder drops every replacement character (as dec_step does). */
static bool token_step(const qv__dec *d, bool fused, const char *src, size_t n, char *dst,
                       size_t cap, size_t *out) {
    size_t m = 0, j = 0;
    switch (d->kind) {
    case QV_DEC_BYTELEVEL:
        while (j < n) {
            uint32_t cp;
            size_t k = qv__utf8_decode(src + j, n - j, &cp);
            int b = k ? qv__cp_to_byte(cp) : -1;
            if (b < 0) break; /* as dec_step: a token with an unmapped character stays as is */
            if (m == cap) return false;
            dst[m++] = (char)b;
            j += k;
        }
        if (j < n) {
            if (n > cap) return false;
            memcpy(dst, src, n);
            m = n;
        }
        break;
    case QV_DEC_BYTEFALLBACK: {
        const int b = byte_token(src, n);
        if (b >= 0) {
            if (!cap) return false;
            dst[m++] = (char)b;
            break;
        }
        if (n > cap) return false;
        memcpy(dst, src, n);
        m = n;
        break;
    }
    case QV_DEC_REPLACE:
    case QV_DEC_METASPACE: {
        const char *a = d->kind == QV_DEC_REPLACE ? d->a : d->replacement;
        const bool drop =
            d->kind == QV_DEC_METASPACE && fused && d->prepend_scheme != QV_PREPEND_NEVER;
        const char *b = d->kind == QV_DEC_REPLACE ? d->b : " ";
        const size_t a_len = d->kind == QV_DEC_REPLACE ? d->a_len : d->replacement_len;
        const size_t b_len = d->kind == QV_DEC_REPLACE ? d->b_len : drop ? 0 : 1;
        while (j < n) {
            const bool hit = a_len && j + a_len <= n && !memcmp(src + j, a, a_len);
            const size_t k = hit ? b_len : 1;
            if (m + k > cap) return false;
            memcpy(dst + m, hit ? b : src + j, k);
            m += k;
            j += hit ? a_len : 1;
        }
        break;
    }
    case QV_DEC_STRIP: { /* per token (token_bytes skips it once a Fuse made the list one text) */
        size_t a, b;
        strip_span(d, src, n, &a, &b);
        if (b - a > cap) return false;
        memcpy(dst, src + a, b - a);
        m = b - a;
        break;
    }
    default: /* FUSE */
        if (n > cap) return false;
        memcpy(dst, src, n);
        m = n;
        break;
    }
    *out = m;
    return true;
}

bool qv_tokenizer_token_bytes(const qv_tokenizer *t, int32_t id, uint8_t *buf, size_t cap,
                              size_t *len) {
    size_t n;
    const char *s = qv_tokenizer_token_text(t, id, &n);
    if (!s || t->is_special[id]) return false;
    char a[512], b[512];
    size_t m = 0;
    if (!t->has_decoder) a[m++] = ' '; /* tokens are joined with spaces then */
    if (n + m > sizeof a) return false;
    memcpy(a + m, s, n);
    n += m;
    char *cur = a, *nxt = b;
    bool fused = false; /* after a Fuse the list is one text: Strip only trims its ends */
    for (int k = 0; k < t->n_decs; k++) {
        fused = fused || t->decs[k].kind == QV_DEC_FUSE;
        if (fused && t->decs[k].kind == QV_DEC_STRIP) continue;
        if (!token_step(&t->decs[k], fused, cur, n, nxt, sizeof a, &n)) return false;
        char *tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    if (n > cap) return false;
    memcpy(buf, cur, n);
    *len = n;
    return true;
}

qv_status qv_tokenizer_decode(const qv_tokenizer *t, const int32_t *ids, size_t n,
                              bool skip_special_tokens, char **text, size_t *len, qv_error *err) {
    qv__buf out = {0};
    qv_status st = qv__tok_decode_buf(t, ids, n, skip_special_tokens, &out);
    if (!st) st = qv__buf_reserve(&out, 0);
    if (st) {
        qv__buf_free(&out);
        *text = NULL;
        return qv_errorf(err, st, "out of memory while decoding");
    }
    out.p[out.len] = 0;
    *text = out.p;
    if (len) *len = out.len;
    return QV_OK;
}

/* ---- streaming ---- */

struct qv_detok {
    const qv_tokenizer *t;
    bool skip;
    int32_t *ids; /* DecodeStream window */
    size_t n_ids, cap_ids, prefix_index;
    qv__buf prefix;  /* decode(ids) at the last emission */
    qv__buf pending; /* text produced but not yet sent (stop / UTF-8 hold-back) */
    qv__buf outbuf;  /* returned to the caller */
    qv__buf scratch;
    char **stops;
    size_t *stop_lens;
    size_t n_stops;
    size_t n_pushed, min_tokens; /* stop strings match in text after min_tokens pushes */
    bool finished;
    bool include_stop; /* a matched stop string stays at the end of the text */
    int stop_index;
};

qv_status qv_detok_create(const qv_tokenizer *t, const char *const *stops, size_t n_stops,
                          bool skip_special_tokens, qv_detok **out) {
    *out = NULL;
    if (!t) return QV_ERR_INVALID;
    qv_detok *d = qv_calloc(1, sizeof(*d));
    if (!d) return QV_ERR_NOMEM;
    d->t = t;
    d->skip = skip_special_tokens;
    d->stop_index = -1;
    if (n_stops) {
        d->stops = qv_calloc(n_stops, sizeof(*d->stops));
        d->stop_lens = qv_calloc(n_stops, sizeof(*d->stop_lens));
        if (!d->stops || !d->stop_lens) goto nomem;
        for (size_t i = 0; i < n_stops; i++) {
            if (!stops[i] || !*stops[i]) continue; /* empty stop strings never match */
            d->stops[d->n_stops] = qv_strdup(stops[i]);
            if (!d->stops[d->n_stops]) goto nomem;
            d->stop_lens[d->n_stops] = strlen(stops[i]);
            d->n_stops++;
        }
    }
    if (qv__buf_reserve(&d->outbuf, 16)) goto nomem;
    *out = d;
    return QV_OK;
nomem:
    qv_detok_free(d);
    return QV_ERR_NOMEM;
}

void qv_detok_free(qv_detok *d) {
    if (!d) return;
    if (d->stops)
        for (size_t i = 0; i < d->n_stops; i++)
            qv_free(d->stops[i]);
    qv_free(d->stops);
    qv_free(d->stop_lens);
    qv_free(d->ids);
    qv__buf_free(&d->prefix);
    qv__buf_free(&d->pending);
    qv__buf_free(&d->outbuf);
    qv__buf_free(&d->scratch);
    qv_free(d);
}

int qv_detok_stop_index(const qv_detok *d) { return d->stop_index; }

void qv_detok_set_min_tokens(qv_detok *d, size_t n) { d->min_tokens = n; }

void qv_detok_set_include_stop(qv_detok *d, bool on) { d->include_stop = on; }

static bool ends_with_fffd(const qv__buf *b) {
    return b->len >= 3 && !memcmp(b->p + b->len - 3, "\xEF\xBF\xBD", 3);
}

/* Longest context window used by qv_detok_prime: enough for any decoder's look-behind (a
 * leading-space strip needs one token, byte-fallback pieces of one character at most 4). */
#define DETOK_CONTEXT 4

qv_status qv_detok_prime(qv_detok *d, const int32_t *ids, size_t n) {
    if (d->n_ids || d->finished) return QV_ERR_INVALID;
    /* the last ids (at most DETOK_CONTEXT) whose text does not end inside a character */
    for (size_t k = QV_MIN(n, (size_t)DETOK_CONTEXT); k > 0; k--) {
        if (k > d->cap_ids) {
            int32_t *p = qv_realloc(d->ids, 16 * sizeof(*p));
            if (!p) return QV_ERR_NOMEM;
            d->ids = p;
            d->cap_ids = 16;
        }
        memcpy(d->ids, ids + n - k, k * sizeof(*ids));
        d->prefix.len = 0;
        qv_status st = qv__tok_decode_buf(d->t, d->ids, k, d->skip, &d->prefix);
        if (st) return st;
        if (!ends_with_fffd(&d->prefix)) {
            d->n_ids = k;
            d->prefix_index = 0;
            return QV_OK;
        }
    }
    d->prefix.len = 0; /* no usable context: decode from the start of the stream */
    return QV_OK;
}

/* HF DecodeStream::step: appends newly decodable text to d->pending. `final` accepts a tail
 * ending in U+FFFD (end of stream). */
static qv_status stream_step(qv_detok *d, bool final) {
    qv__buf *s = &d->scratch;
    s->len = 0;
    qv_status st = qv__tok_decode_buf(d->t, d->ids, d->n_ids, d->skip, s);
    if (st) return st;
    if (s->len > d->prefix.len && (final || !ends_with_fffd(s))) {
        size_t from = d->prefix.len;
        if (memcmp(s->p, d->prefix.p ? d->prefix.p : "", d->prefix.len)) {
            /* The window's text changed retroactively (HF raises InvalidPrefix); emit the
             * text from the last character boundary instead of failing the stream. */
            while (from > 0 && ((uint8_t)s->p[from] & 0xC0) == 0x80)
                from--;
        }
        if ((st = qv__buf_put(&d->pending, s->p + from, s->len - from))) return st;
        size_t new_prefix_index = d->n_ids - d->prefix_index;
        if (d->prefix_index && d->n_ids > d->prefix_index)
            memmove(d->ids, d->ids + d->prefix_index,
                    (d->n_ids - d->prefix_index) * sizeof(int32_t));
        d->n_ids -= d->prefix_index;
        d->prefix.len = 0;
        if ((st = qv__tok_decode_buf(d->t, d->ids, d->n_ids, d->skip, &d->prefix))) return st;
        d->prefix_index = new_prefix_index;
    }
    return QV_OK;
}

/* Longest suffix of s that is a proper prefix of some stop string. */
static size_t partial_stop(const qv_detok *d, const char *s, size_t n) {
    size_t best = 0;
    for (size_t k = 0; k < d->n_stops; k++) {
        size_t sl = d->stop_lens[k];
        for (size_t l = QV_MIN(n, sl - 1); l > best; l--)
            if (!memcmp(s + n - l, d->stops[k], l)) {
                best = l;
                break;
            }
    }
    return best;
}

static const char *find_bytes(const char *h, size_t hn, const char *nd, size_t nn) {
    if (nn == 0 || nn > hn) return NULL;
    for (size_t i = 0; i + nn <= hn; i++)
        if (h[i] == nd[0] && !memcmp(h + i, nd, nn)) return h + i;
    return NULL;
}

/* Moves what can be sent from pending to outbuf. at_end: no more text will come. */
static qv_status emit(qv_detok *d, bool at_end) {
    const char *p = d->pending.p ? d->pending.p : "";
    size_t n = d->pending.len, cut = n;
    const char *hit = NULL;
    const size_t n_stops = d->n_pushed > d->min_tokens ? d->n_stops : 0;
    for (size_t k = 0; k < n_stops; k++) {
        const char *h = find_bytes(p, n, d->stops[k], d->stop_lens[k]);
        if (h && (!hit || h < hit)) {
            hit = h;
            d->stop_index = (int)k;
        }
    }
    if (hit) {
        cut = (size_t)(hit - p) + (d->include_stop ? d->stop_lens[d->stop_index] : 0);
        d->finished = true;
    } else if (!at_end) {
        cut = n - (n_stops ? partial_stop(d, p, n) : 0);
        cut -= qv__utf8_incomplete_tail(p, cut);
    }
    /* A stop string that is not valid UTF-8 may match inside a character: never cut there. */
    while (cut > 0 && cut < n && ((uint8_t)p[cut] & 0xC0) == 0x80)
        cut--;
    if (qv__buf_put(&d->outbuf, p, cut)) return QV_ERR_NOMEM;
    if (n > cut) memmove(d->pending.p, p + cut, n - cut);
    d->pending.len = n - cut;
    if (d->finished) d->pending.len = 0;
    return QV_OK;
}

qv_status qv_detok_push(qv_detok *d, int32_t id, const char **text, size_t *len, bool *finished) {
    qv_status st = QV_OK;
    d->outbuf.len = 0;
    d->outbuf.p[0] = 0;
    *text = d->outbuf.p;
    *len = 0;
    if (d->finished) {
        *finished = true;
        return QV_OK;
    }
    const bool eog = qv_tokenizer_is_eog(d->t, id);
    /* End of generation adds no text, except as vLLM's include_stop_str_in_output with the
     * special tokens kept (its text ends the answer); what was held back is final. */
    if (!eog || (d->include_stop && !d->skip)) {
        if (d->n_ids == d->cap_ids) {
            size_t cap = d->cap_ids ? d->cap_ids * 2 : 16;
            int32_t *p = qv_realloc(d->ids, cap * sizeof(*p));
            if (!p) return QV_ERR_NOMEM;
            d->ids = p;
            d->cap_ids = cap;
        }
        d->ids[d->n_ids++] = id;
        d->n_pushed++;
    }
    st = stream_step(d, eog);
    if (!st) st = emit(d, eog);
    if (eog) d->finished = true;
    *text = d->outbuf.p;
    *len = d->outbuf.len;
    *finished = d->finished;
    return st;
}

qv_status qv_detok_flush(qv_detok *d, const char **text, size_t *len) {
    qv_status st = QV_OK;
    d->outbuf.len = 0;
    d->outbuf.p[0] = 0;
    if (!d->finished) {
        st = stream_step(d, true);
        if (!st) st = emit(d, true);
        d->finished = true;
    }
    *text = d->outbuf.p;
    *len = d->outbuf.len;
    return st;
}
