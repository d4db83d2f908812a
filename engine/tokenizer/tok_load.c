/*
 * tok_load.c - building a qv_tokenizer from Hugging Face tokenizer.json (+ tokenizer_config.json),
 * the shared construction helpers, and the accessors.
 *
 * Not here: encoding (tok_encode.c), decoding (tok_decode.c), GGUF metadata (tok_gguf.c).
 * Components quiver does not implement (WordPiece, Unigram, Lowercase, BertPreTokenizer, ...)
 * are refused with QV_ERR_UNSUPPORTED naming them, never silently ignored.
 * Thread: loading is single-threaded; the result is immutable.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tok_internal.h"

const char qv__re_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char qv__re_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char qv__re_qwen2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                            "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* HF (Oniguruma / Rust) \s is the White_Space property; PCRE2's UCP \s also contains U+180E.
 * Patterns are rewritten to use this explicit class instead (TOKENIZER.md 6.3). */
#define WS_MEMBERS                                                                                 \
    "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}"       \
    "\\x{3000}"

/* Copies n bytes (which may contain NUL) and terminates them. */
static char *dupmem(const char *s, size_t n) {
    char *c = qv_malloc(n + 1);
    if (!c) return NULL;
    if (n) memcpy(c, s, n);
    c[n] = 0;
    return c;
}

/* cJSON strings end at the first NUL, but vocabularies may contain "\u0000". Before parsing, such
 * escapes are rewritten to U+10FFFF (a noncharacter no real vocabulary uses) and mapped back to
 * NUL here, in place; returns the true length. */
static size_t unmask_nul(char *s) {
    size_t r = 0, w = 0;
    while (s[r]) {
        if ((uint8_t)s[r] == 0xF4 && (uint8_t)s[r + 1] == 0x8F && (uint8_t)s[r + 2] == 0xBF &&
            (uint8_t)s[r + 3] == 0xBF) {
            s[w++] = 0;
            r += 4;
        } else {
            s[w++] = s[r++];
        }
    }
    s[w] = 0;
    return w;
}

static char *mask_nul(const char *json, size_t len, size_t *out_len) {
    size_t count = 0;
    for (size_t i = 0; i + 6 <= len; i++)
        if (!memcmp(json + i, "\\u0000", 6)) count++;
    char *o = qv_malloc(len + count * 6 + 1);
    if (!o) return NULL;
    size_t w = 0, bs = 0; /* bs: length of the run of backslashes before i */
    for (size_t i = 0; i < len; i++) {
        if (json[i] == '\\' && (bs % 2) == 0 && i + 6 <= len && !memcmp(json + i, "\\u0000", 6)) {
            memcpy(o + w, "\\udbff\\udfff", 12);
            w += 12;
            i += 5;
            bs = 0;
            continue;
        }
        bs = json[i] == '\\' ? bs + 1 : 0;
        o[w++] = json[i];
    }
    o[w] = 0;
    *out_len = w;
    return o;
}

qv_status qv__tok_alloc(qv_tokenizer **out) {
    qv_tokenizer *t = qv_calloc(1, sizeof(*t));
    if (!t) return QV_ERR_NOMEM;
    t->unk_id = -1;
    t->bos_id = -1;
    t->eos_id = -1;
    *out = t;
    return QV_OK;
}

static qv_status grow_vocab(qv_tokenizer *t, int32_t id) {
    if (id < t->cap_vocab) return QV_OK;
    int cap = t->cap_vocab ? t->cap_vocab : 1024;
    while (cap <= id)
        cap *= 2;
    char **v = qv_realloc(t->vocab, (size_t)cap * sizeof(*v));
    if (!v) return QV_ERR_NOMEM;
    t->vocab = v;
    uint32_t *l = qv_realloc(t->vocab_len, (size_t)cap * sizeof(*l));
    if (!l) return QV_ERR_NOMEM;
    t->vocab_len = l;
    for (int i = t->cap_vocab; i < cap; i++) {
        t->vocab[i] = NULL;
        t->vocab_len[i] = 0;
    }
    t->cap_vocab = cap;
    return QV_OK;
}

qv_status qv__tok_set_vocab(qv_tokenizer *t, int32_t id, const char *s, size_t len) {
    if (id < 0 || id > 0x7FFFFFF) return QV_ERR_INVALID;
    if (grow_vocab(t, id)) return QV_ERR_NOMEM;
    if (!t->vocab_map.cap && qv__strmap_init(&t->vocab_map, 1024)) return QV_ERR_NOMEM;
    char *c = dupmem(s, len);
    if (!c) return QV_ERR_NOMEM;
    if (t->vocab[id]) {
        /* Two strings with one id: keep the map entry of the first; the new one replaces the
         * id -> string direction only (HF vocab_r is built the same way, last wins). */
        qv_free(t->vocab[id]);
        t->vocab[id] = NULL;
    }
    t->vocab[id] = c;
    t->vocab_len[id] = (uint32_t)len;
    if (id >= t->n_vocab) t->n_vocab = id + 1;
    return qv__strmap_set(&t->vocab_map, c, len, id);
}

qv_status qv__tok_add_added(qv_tokenizer *t, const char *s, size_t len, int32_t id, bool special,
                            bool normalized, bool lstrip, bool rstrip, bool single_word) {
    if (id < 0 || id > 0x7FFFFFF || len == 0) return QV_ERR_INVALID;
    if (t->n_added == t->cap_added) {
        size_t cap = t->cap_added ? t->cap_added * 2 : 64;
        qv__added *a = qv_realloc(t->added, cap * sizeof(*a));
        if (!a) return QV_ERR_NOMEM;
        t->added = a;
        t->cap_added = cap;
    }
    qv__added *a = &t->added[t->n_added];
    memset(a, 0, sizeof(*a));
    a->content = dupmem(s, len);
    if (!a->content) return QV_ERR_NOMEM;
    a->len = len;
    a->id = id;
    a->special = special;
    a->normalized = normalized;
    a->lstrip = lstrip;
    a->rstrip = rstrip;
    a->single_word = single_word;
    t->n_added++;
    if (id >= t->n_vocab) t->n_vocab = id + 1;
    return QV_OK;
}

qv_status qv__tok_add_merge(qv_tokenizer *t, const char *a, size_t a_len, const char *b,
                            size_t b_len, int32_t rank, qv_error *err) {
    int32_t ia = qv__strmap_get(&t->vocab_map, a, a_len);
    int32_t ib = qv__strmap_get(&t->vocab_map, b, b_len);
    char stackbuf[256];
    char *cat = a_len + b_len <= sizeof(stackbuf) ? stackbuf : qv_malloc(a_len + b_len);
    if (!cat) return QV_ERR_NOMEM;
    memcpy(cat, a, a_len);
    memcpy(cat + a_len, b, b_len);
    int32_t im = qv__strmap_get(&t->vocab_map, cat, a_len + b_len);
    if (cat != stackbuf) qv_free(cat);
    if (ia < 0 || ib < 0 || im < 0)
        return qv_errorf(err, QV_ERR_INVALID,
                         "merge %d ('%.*s' '%.*s') uses a token missing from "
                         "the vocabulary",
                         (int)rank, (int)QV_MIN(a_len, 64), a, (int)QV_MIN(b_len, 64), b);
    if (!t->merges.cap && qv__pairmap_init(&t->merges, 1024)) return QV_ERR_NOMEM;
    return qv__pairmap_set(&t->merges, ia, ib, rank, im);
}

/* Code points HF's regex engine (Oniguruma with Unicode 16 tables, tokenizers 0.23.3) puts in
 * \p{L} / \p{N} that PCRE2 10.42 (Unicode 14) does not: measured by splitting every code point
 * with HF. Appended to those classes so the split matches HF on newer scripts too. */
#define L_EXTRA                                                                                    \
    "\\x{1C89}-\\x{1C8A}\\x{A7CB}-\\x{A7CD}\\x{A7DA}-\\x{A7DC}\\x{105C0}-\\x{105F3}"               \
    "\\x{10D4A}-\\x{10D65}\\x{10D6F}-\\x{10D85}\\x{10EC2}-\\x{10EC4}\\x{1123F}-\\x{11240}"         \
    "\\x{11380}-\\x{11389}\\x{1138B}\\x{1138E}\\x{11390}-\\x{113B5}\\x{113B7}\\x{113D1}\\x{113D3}" \
    "\\x{11BC0}-\\x{11BE0}\\x{11F02}\\x{11F04}-\\x{11F10}\\x{11F12}-\\x{11F33}\\x{1342F}"          \
    "\\x{13441}-\\x{13446}\\x{13460}-\\x{143FA}\\x{16100}-\\x{1611D}\\x{16D40}-\\x{16D6C}"         \
    "\\x{18CFF}\\x{1B132}\\x{1B155}\\x{1DF25}-\\x{1DF2A}\\x{1E030}-\\x{1E06D}\\x{1E4D0}-\\x{"      \
    "1E4EB}"                                                                                       \
    "\\x{1E5D0}-\\x{1E5ED}\\x{1E5F0}\\x{2B739}\\x{2EBF0}-\\x{2EE5D}\\x{31350}-\\x{323AF}"
#define N_EXTRA                                                                                    \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"         \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1D2C0}-\\x{1D2D3}"         \
    "\\x{1E4F0}-\\x{1E4F9}\\x{1E5F1}-\\x{1E5FA}"

#define D_EXTRA                                                                                    \
    "\\x{10D40}-\\x{10D49}\\x{116D0}-\\x{116E3}\\x{11BF0}-\\x{11BF9}\\x{11F50}-\\x{11F59}"         \
    "\\x{16130}-\\x{16139}\\x{16D70}-\\x{16D79}\\x{1CCF0}-\\x{1CCF9}\\x{1E4F0}-\\x{1E4F9}"         \
    "\\x{1E5F1}-\\x{1E5FA}"

/* Rewrites \s / \S to the White_Space class (see WS_MEMBERS) and widens \p{L}, \p{N}, \d. */
static qv_status rewrite_ws(const char *p, size_t n, qv__buf *out) {
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 4 < n && p[i + 1] == 'p' && p[i + 2] == '{' &&
            (p[i + 3] == 'L' || p[i + 3] == 'N') && p[i + 4] == '}') {
            const char *extra = p[i + 3] == 'L' ? L_EXTRA : N_EXTRA;
            qv_status st = QV_OK;
            if (!in_class) st = qv__buf_putc(out, '[');
            if (!st) st = qv__buf_put(out, p + i, 5);
            if (!st) st = qv__buf_put(out, extra, strlen(extra));
            if (!st && !in_class) st = qv__buf_putc(out, ']');
            if (st) return st;
            i += 4;
            continue;
        }
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            qv_status st;
            if (d == 'd') {
                st = in_class ? qv__buf_put(out, "\\d" D_EXTRA, strlen(D_EXTRA) + 2)
                              : qv__buf_put(out, "[\\d" D_EXTRA "]", strlen(D_EXTRA) + 4);
            } else if (d == 's')
                st = in_class ? qv__buf_put(out, WS_MEMBERS, strlen(WS_MEMBERS))
                              : qv__buf_put(out, "[" WS_MEMBERS "]", strlen(WS_MEMBERS) + 2);
            else if (d == 'S' && !in_class)
                st = qv__buf_put(out, "[^" WS_MEMBERS "]", strlen(WS_MEMBERS) + 3);
            else
                st = qv__buf_put(out, p + i, 2);
            if (st) return st;
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            if (qv__buf_putc(out, c)) return QV_ERR_NOMEM;
            /* a ']' right after '[' or '[^' is literal */
            if (i + 1 < n && p[i + 1] == '^') {
                if (qv__buf_putc(out, '^')) return QV_ERR_NOMEM;
                i++;
            }
            if (i + 1 < n && p[i + 1] == ']') {
                if (qv__buf_putc(out, ']')) return QV_ERR_NOMEM;
                i++;
            }
            continue;
        }
        if (in_class && c == ']') in_class = false;
        if (qv__buf_putc(out, c)) return QV_ERR_NOMEM;
    }
    return QV_OK;
}

qv_status qv__tok_compile_regex(qv__pre *p, const char *pattern, size_t len, qv_error *err) {
    qv__buf b = {0};
    if (rewrite_ws(pattern, len, &b)) return QV_ERR_NOMEM;
    int code;
    PCRE2_SIZE off;
    p->re = pcre2_compile((PCRE2_SPTR)b.p, b.len, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
    qv__buf_free(&b);
    if (!p->re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof(msg));
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "pre-tokenizer regex does not compile at %zu: %s",
                         (size_t)off, (const char *)msg);
    }
    pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter on failure */
    return QV_OK;
}

/* ---- finishing ---- */

static const char *const k_eog_texts[] = {
    "<|eot_id|>",    "<|im_end|>", "<|endoftext|>", "<|end_of_text|>",
    "<end_of_turn>", "<|eom_id|>", "<|end|>",       "<EOT>",
    "<|EOT|>",       "</s>",       "<|return|>",
};

static void add_eog(qv_tokenizer *t, int32_t id) {
    if (id < 0) return;
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return;
    if (t->n_eog < QV_TOK_MAX_EOG) t->eog[t->n_eog++] = id;
}

qv_status qv__tok_finish(qv_tokenizer *t, qv_error *err) {
    if (grow_vocab(t, t->n_vocab)) return QV_ERR_NOMEM;
    if (!t->vocab_map.cap && qv__strmap_init(&t->vocab_map, 16)) return QV_ERR_NOMEM;
    qv_free(t->is_special);
    qv_free(t->added_by_id);
    qv__strmap_free(&t->added_map);
    if (qv__strmap_init(&t->added_map, t->n_added + 1)) return QV_ERR_NOMEM;
    t->is_special = qv_calloc((size_t)t->n_vocab + 1, 1);
    t->added_by_id = qv_calloc((size_t)t->n_vocab + 1, sizeof(*t->added_by_id));
    if (!t->is_special || !t->added_by_id) return QV_ERR_NOMEM;
    t->has_normalized_added = false;
    for (size_t i = 0; i < t->n_added; i++) {
        qv__added *a = &t->added[i];
        if (qv__strmap_set(&t->added_map, a->content, a->len, a->id)) return QV_ERR_NOMEM;
        t->added_by_id[a->id] = a;
        if (a->normalized) t->has_normalized_added = true;
    }
    if (qv__tok_build_matchers(t)) return QV_ERR_NOMEM;
    /* HF's special set is by content: a token is special when any special added token has its
     * text. */
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].special) t->is_special[t->added[i].id] = 1;
    for (int id = 0; id < t->n_vocab; id++) {
        if (t->is_special[id] || !t->vocab[id]) continue;
        int32_t a = qv__strmap_get(&t->added_map, t->vocab[id], t->vocab_len[id]);
        if (a >= 0 && t->is_special[a]) t->is_special[id] = 1;
    }
    for (int b = 0; b < 256; b++) {
        qv__buf tmp = {0};
        if (qv__buf_put_cp(&tmp, qv__byte_to_cp((uint8_t)b))) return QV_ERR_NOMEM;
        t->byte_sym[b] = qv__strmap_get(&t->vocab_map, tmp.p, tmp.len);
        qv__buf_free(&tmp);
        char hex[8];
        snprintf(hex, sizeof(hex), "<0x%02X>", b);
        t->byte_tok[b] = qv__strmap_get(&t->vocab_map, hex, 6);
    }
    t->bytelevel_last = t->n_pres > 0 && t->pres[t->n_pres - 1].kind == QV_PRE_BYTELEVEL;
    add_eog(t, t->eos_id);
    for (size_t i = 0; i < QV_ARRAY_LEN(k_eog_texts); i++) {
        int32_t id = qv__strmap_get(&t->added_map, k_eog_texts[i], strlen(k_eog_texts[i]));
        if (id >= 0 && t->is_special[id]) add_eog(t, id);
    }
    if (!t->bos_text && t->bos_id >= 0) {
        const char *s = qv_tokenizer_token_text(t, t->bos_id, NULL);
        if (s && !(t->bos_text = qv_strdup(s))) return QV_ERR_NOMEM;
    }
    if (!t->eos_text && t->eos_id >= 0) {
        const char *s = qv_tokenizer_token_text(t, t->eos_id, NULL);
        if (s && !(t->eos_text = qv_strdup(s))) return QV_ERR_NOMEM;
    }
    (void)err;
    return QV_OK;
}

/* ---- JSON ---- */

static bool jbool(const cJSON *o, const char *k, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return dflt;
}

static const char *jstr(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A pattern object {"String": s} or {"Regex": r}. */
static qv_status jpattern(const cJSON *o, const char **s, bool *is_regex, qv_error *err) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const char *str = jstr(p, "String");
    if (str) {
        *s = str;
        *is_regex = false;
        return QV_OK;
    }
    str = jstr(p, "Regex");
    if (str) {
        *s = str;
        *is_regex = true;
        return QV_OK;
    }
    return qv_errorf(err, QV_ERR_INVALID, "pattern must be {\"String\":...} or {\"Regex\":...}");
}

static qv_status parse_normalizer(qv_tokenizer *t, const cJSON *n, qv_error *err) {
    if (!n || cJSON_IsNull(n)) return QV_OK;
    const char *type = jstr(n, "type");
    if (!type) return qv_errorf(err, QV_ERR_INVALID, "normalizer without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            qv_status st = parse_normalizer(t, it, err);
            if (st) return st;
        }
        return QV_OK;
    }
    if (t->n_norms >= QV_TOK_MAX_STEPS)
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "too many normalizer steps");
    qv__norm *m = &t->norms[t->n_norms];
    memset(m, 0, sizeof(*m));
    if (!strcmp(type, "NFC"))
        m->kind = QV_NORM_NFC;
    else if (!strcmp(type, "NFD"))
        m->kind = QV_NORM_NFD;
    else if (!strcmp(type, "NFKC"))
        m->kind = QV_NORM_NFKC;
    else if (!strcmp(type, "NFKD"))
        m->kind = QV_NORM_NFKD;
    else if (!strcmp(type, "Prepend")) {
        const char *p = jstr(n, "prepend");
        if (!p) return qv_errorf(err, QV_ERR_INVALID, "Prepend normalizer without 'prepend'");
        m->kind = QV_NORM_PREPEND;
        if (!(m->a = qv_strdup(p))) return QV_ERR_NOMEM;
        m->a_len = strlen(p);
    } else if (!strcmp(type, "Replace")) {
        const char *pat = NULL, *content = jstr(n, "content");
        bool is_re = false;
        qv_status st = jpattern(n, &pat, &is_re, err);
        if (st) return st;
        if (is_re || !content)
            return qv_errorf(err, QV_ERR_UNSUPPORTED, "Replace normalizer with a regex pattern");
        m->kind = QV_NORM_REPLACE;
        if (!(m->a = qv_strdup(pat)) || !(m->b = qv_strdup(content))) return QV_ERR_NOMEM;
        m->a_len = strlen(pat);
        m->b_len = strlen(content);
        if (!m->a_len)
            return qv_errorf(err, QV_ERR_INVALID, "Replace normalizer with empty pattern");
    } else {
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "normalizer '%s' is not supported", type);
    }
    t->n_norms++;
    return QV_OK;
}

static qv_status parse_split_behavior(const char *s, enum qv__split_behavior *b, qv_error *err) {
    if (!s || !strcmp(s, "Isolated"))
        *b = QV_SPLIT_ISOLATED;
    else if (!strcmp(s, "Removed"))
        *b = QV_SPLIT_REMOVED;
    else if (!strcmp(s, "MergedWithPrevious"))
        *b = QV_SPLIT_MERGED_PREV;
    else if (!strcmp(s, "MergedWithNext"))
        *b = QV_SPLIT_MERGED_NEXT;
    else if (!strcmp(s, "Contiguous"))
        *b = QV_SPLIT_CONTIGUOUS;
    else
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "split behavior '%s'", s);
    return QV_OK;
}

static qv_status parse_prepend_scheme(const cJSON *o, enum qv__prepend *ps) {
    const char *s = jstr(o, "prepend_scheme");
    if (s) {
        if (!strcmp(s, "first"))
            *ps = QV_PREPEND_FIRST;
        else if (!strcmp(s, "never"))
            *ps = QV_PREPEND_NEVER;
        else
            *ps = QV_PREPEND_ALWAYS;
    } else {
        *ps = jbool(o, "add_prefix_space", true) ? QV_PREPEND_ALWAYS : QV_PREPEND_NEVER;
    }
    return QV_OK;
}

static qv_status parse_replacement(const cJSON *o, char *dst, size_t *len, qv_error *err) {
    const char *r = jstr(o, "replacement");
    if (!r) r = "\xE2\x96\x81";
    uint32_t cp;
    size_t n = strlen(r);
    if (n == 0 || n > 4 || qv__utf8_decode(r, n, &cp) != n)
        return qv_errorf(err, QV_ERR_INVALID, "Metaspace replacement must be one character");
    memcpy(dst, r, n);
    dst[n] = 0;
    *len = n;
    return QV_OK;
}

static qv_status parse_pre(qv_tokenizer *t, const cJSON *n, qv_error *err) {
    if (!n || cJSON_IsNull(n)) return QV_OK;
    const char *type = jstr(n, "type");
    if (!type) return qv_errorf(err, QV_ERR_INVALID, "pre_tokenizer without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "pretokenizers");
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            qv_status st = parse_pre(t, it, err);
            if (st) return st;
        }
        return QV_OK;
    }
    if (t->n_pres >= QV_TOK_MAX_STEPS)
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "too many pre-tokenizer steps");
    qv__pre *p = &t->pres[t->n_pres];
    memset(p, 0, sizeof(*p));
    qv_status st = QV_OK;
    if (!strcmp(type, "Split")) {
        const char *pat = NULL;
        bool is_re = false;
        if ((st = jpattern(n, &pat, &is_re, err))) return st;
        p->kind = QV_PRE_SPLIT;
        if ((st = parse_split_behavior(jstr(n, "behavior"), &p->behavior, err))) return st;
        p->invert = jbool(n, "invert", false);
        if (is_re) {
            if ((st = qv__tok_compile_regex(p, pat, strlen(pat), err))) return st;
        } else {
            if (!*pat) return qv_errorf(err, QV_ERR_INVALID, "Split with an empty string pattern");
            if (!(p->literal = qv_strdup(pat))) return QV_ERR_NOMEM;
            p->literal_len = strlen(pat);
        }
    } else if (!strcmp(type, "ByteLevel")) {
        p->kind = QV_PRE_BYTELEVEL;
        p->add_prefix_space = jbool(n, "add_prefix_space", true);
        p->use_regex = jbool(n, "use_regex", true);
        if (p->use_regex && (st = qv__tok_compile_regex(p, qv__re_gpt2, strlen(qv__re_gpt2), err)))
            return st;
    } else if (!strcmp(type, "Digits")) {
        p->kind = QV_PRE_DIGITS;
        p->individual_digits = jbool(n, "individual_digits", false);
    } else if (!strcmp(type, "Metaspace")) {
        p->kind = QV_PRE_METASPACE;
        if ((st = parse_replacement(n, p->replacement, &p->replacement_len, err))) return st;
        parse_prepend_scheme(n, &p->prepend_scheme);
        p->split = jbool(n, "split", true);
    } else {
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "pre-tokenizer '%s' is not supported", type);
    }
    t->n_pres++;
    return QV_OK;
}

static qv_status post_token_ids(qv_tokenizer *t, const cJSON *special, const char *name,
                                int32_t *dst, int *n, qv_error *err) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(special, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(e, "ids");
    const cJSON *it;
    if (!cJSON_IsArray(ids))
        return qv_errorf(err, QV_ERR_INVALID, "TemplateProcessing: unknown special token '%s'",
                         name);
    cJSON_ArrayForEach(it, ids) {
        if (*n >= QV_TOK_MAX_POST)
            return qv_errorf(err, QV_ERR_UNSUPPORTED, "TemplateProcessing: too many tokens");
        dst[(*n)++] = (int32_t)it->valuedouble;
    }
    (void)t;
    return QV_OK;
}

static qv_status parse_post(qv_tokenizer *t, const cJSON *n, qv_error *err) {
    if (!n || cJSON_IsNull(n)) return QV_OK;
    const char *type = jstr(n, "type");
    if (!type) return qv_errorf(err, QV_ERR_INVALID, "post_processor without a type");
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "processors");
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            qv_status st = parse_post(t, it, err);
            if (st) return st;
        }
        return QV_OK;
    }
    if (!strcmp(type, "ByteLevel")) return QV_OK; /* offsets only */
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(n, "single");
        const cJSON *special = cJSON_GetObjectItemCaseSensitive(n, "special_tokens");
        const cJSON *it;
        bool seen_a = false;
        t->n_post_pre = t->n_post_post = 0;
        cJSON_ArrayForEach(it, single) {
            const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            if (sp) {
                const char *id = jstr(sp, "id");
                if (!id) return qv_errorf(err, QV_ERR_INVALID, "TemplateProcessing: bad item");
                qv_status st =
                    seen_a ? post_token_ids(t, special, id, t->post_post, &t->n_post_post, err)
                           : post_token_ids(t, special, id, t->post_pre, &t->n_post_pre, err);
                if (st) return st;
            } else if (cJSON_GetObjectItemCaseSensitive(it, "Sequence")) {
                if (seen_a) return qv_errorf(err, QV_ERR_UNSUPPORTED, "TemplateProcessing: two $A");
                seen_a = true;
            }
        }
        return QV_OK;
    }
    if (!strcmp(type, "RobertaProcessing") || !strcmp(type, "BertProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(n, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(n, "sep");
        if (cJSON_GetArraySize(cls) != 2 || cJSON_GetArraySize(sep) != 2)
            return qv_errorf(err, QV_ERR_INVALID, "%s: bad cls/sep", type);
        t->n_post_pre = t->n_post_post = 1;
        t->post_pre[0] = (int32_t)cJSON_GetArrayItem(cls, 1)->valuedouble;
        t->post_post[0] = (int32_t)cJSON_GetArrayItem(sep, 1)->valuedouble;
        return QV_OK;
    }
    return qv_errorf(err, QV_ERR_UNSUPPORTED, "post-processor '%s' is not supported", type);
}

static qv_status parse_decoder(qv_tokenizer *t, const cJSON *n, qv_error *err) {
    if (!n || cJSON_IsNull(n)) return QV_OK;
    const char *type = jstr(n, "type");
    if (!type) return qv_errorf(err, QV_ERR_INVALID, "decoder without a type");
    t->has_decoder = true;
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(n, "decoders");
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            qv_status st = parse_decoder(t, it, err);
            if (st) return st;
        }
        return QV_OK;
    }
    if (t->n_decs >= QV_TOK_MAX_STEPS)
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "too many decoder steps");
    qv__dec *d = &t->decs[t->n_decs];
    memset(d, 0, sizeof(*d));
    qv_status st;
    if (!strcmp(type, "ByteLevel"))
        d->kind = QV_DEC_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback"))
        d->kind = QV_DEC_BYTEFALLBACK;
    else if (!strcmp(type, "Fuse"))
        d->kind = QV_DEC_FUSE;
    else if (!strcmp(type, "Replace")) {
        const char *pat = NULL, *content = jstr(n, "content");
        bool is_re = false;
        if ((st = jpattern(n, &pat, &is_re, err))) return st;
        if (is_re || !content || !*pat)
            return qv_errorf(err, QV_ERR_UNSUPPORTED, "Replace decoder with a regex pattern");
        d->kind = QV_DEC_REPLACE;
        if (!(d->a = qv_strdup(pat)) || !(d->b = qv_strdup(content))) return QV_ERR_NOMEM;
        d->a_len = strlen(pat);
        d->b_len = strlen(content);
    } else if (!strcmp(type, "Strip")) {
        const char *c = jstr(n, "content");
        uint32_t cp = ' ';
        if (c && *c && !qv__utf8_decode(c, strlen(c), &cp))
            return qv_errorf(err, QV_ERR_INVALID, "Strip decoder content is not UTF-8");
        d->kind = QV_DEC_STRIP;
        d->strip_cp = cp;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(n, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(n, "stop");
        d->strip_start = cJSON_IsNumber(a) ? (int)a->valuedouble : 0;
        d->strip_stop = cJSON_IsNumber(b) ? (int)b->valuedouble : 0;
    } else if (!strcmp(type, "Metaspace")) {
        d->kind = QV_DEC_METASPACE;
        if ((st = parse_replacement(n, d->replacement, &d->replacement_len, err))) return st;
        parse_prepend_scheme(n, &d->prepend_scheme);
    } else {
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "decoder '%s' is not supported", type);
    }
    t->n_decs++;
    return QV_OK;
}

static qv_status parse_model(qv_tokenizer *t, const cJSON *m, qv_error *err) {
    const char *type = jstr(m, "type");
    if (type && strcmp(type, "BPE"))
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "model type '%s' is not supported (BPE only)",
                         type);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(m, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(m, "merges");
    if (!cJSON_IsObject(vocab)) return qv_errorf(err, QV_ERR_INVALID, "model.vocab is missing");
    const char *pfx = jstr(m, "continuing_subword_prefix"), *sfx = jstr(m, "end_of_word_suffix");
    if ((pfx && *pfx) || (sfx && *sfx))
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "BPE continuing_subword_prefix / end_of_word_suffix are not supported");
    t->byte_fallback = jbool(m, "byte_fallback", false);
    t->fuse_unk = jbool(m, "fuse_unk", false);
    t->ignore_merges = jbool(m, "ignore_merges", false);
    int n = cJSON_GetArraySize(vocab);
    qv__strmap_free(&t->vocab_map);
    if (qv__strmap_init(&t->vocab_map, (size_t)n)) return QV_ERR_NOMEM;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 0x7FFFFFF)
            return qv_errorf(err, QV_ERR_INVALID, "model.vocab: bad id for '%.64s'", it->string);
        qv_status st =
            qv__tok_set_vocab(t, (int32_t)it->valuedouble, it->string, unmask_nul(it->string));
        if (st) return st;
    }
    if (qv__pairmap_init(&t->merges, (size_t)cJSON_GetArraySize(merges) + 1)) return QV_ERR_NOMEM;
    int32_t rank = 0;
    cJSON_ArrayForEach(it, merges) {
        qv_status st;
        if (cJSON_IsString(it)) {
            char *s = it->valuestring;
            if (!strncmp(s, "#version", 8)) continue;
            size_t sl = unmask_nul(s);
            const char *sp = memchr(s, ' ', sl);
            if (!sp || memchr(sp + 1, ' ', sl - (size_t)(sp + 1 - s)))
                return qv_errorf(err, QV_ERR_INVALID, "merge %d '%.64s' is not 'a b'", (int)rank,
                                 s);
            st = qv__tok_add_merge(t, s, (size_t)(sp - s), sp + 1, sl - (size_t)(sp + 1 - s), rank,
                                   err);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            char *a = cJSON_GetArrayItem(it, 0)->valuestring;
            char *b = cJSON_GetArrayItem(it, 1)->valuestring;
            size_t al = unmask_nul(a), bl = unmask_nul(b);
            st = qv__tok_add_merge(t, a, al, b, bl, rank, err);
        } else {
            return qv_errorf(err, QV_ERR_INVALID, "merge %d has an unknown form", (int)rank);
        }
        if (st) return st;
        rank++;
    }
    const char *unk = jstr(m, "unk_token");
    if (unk) t->unk_id = qv__strmap_get(&t->vocab_map, unk, strlen(unk));
    return QV_OK;
}

static const char *token_content(const cJSON *v) {
    if (cJSON_IsString(v)) return v->valuestring;
    return jstr(v, "content");
}

static qv_status parse_config(qv_tokenizer *t, const cJSON *c, qv_error *err) {
    const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(c, "chat_template");
    const char *ts = NULL;
    if (cJSON_IsString(tmpl))
        ts = tmpl->valuestring;
    else if (cJSON_IsArray(tmpl)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, tmpl) {
            const char *name = jstr(it, "name");
            if (!ts || (name && !strcmp(name, "default"))) ts = jstr(it, "template");
        }
    }
    if (ts && !(t->chat_template = qv_strdup(ts))) return QV_ERR_NOMEM;
    const char *bos = token_content(cJSON_GetObjectItemCaseSensitive(c, "bos_token"));
    const char *eos = token_content(cJSON_GetObjectItemCaseSensitive(c, "eos_token"));
    if (bos) {
        if (!(t->bos_text = qv_strdup(bos))) return QV_ERR_NOMEM;
        t->bos_id = qv_tokenizer_token_id(t, bos, strlen(bos));
    }
    if (eos) {
        if (!(t->eos_text = qv_strdup(eos))) return QV_ERR_NOMEM;
        t->eos_id = qv_tokenizer_token_id(t, eos, strlen(eos));
    }
    (void)err;
    return QV_OK;
}

qv_status qv_tokenizer_load_json_str(const char *json, size_t len, const char *config_json,
                                     size_t config_len, qv_tokenizer **out, qv_error *err) {
    qv_tokenizer *t = NULL;
    cJSON *root = NULL, *cfg = NULL;
    qv_status st;
    *out = NULL;
    char *masked = NULL;
    size_t masked_len = 0;
    bool has_nul_escape = false;
    for (size_t i = 0; i + 6 <= len && !has_nul_escape; i++)
        has_nul_escape = json[i] == '\\' && !memcmp(json + i, "\\u0000", 6);
    if (has_nul_escape) {
        if (!(masked = mask_nul(json, len, &masked_len))) return QV_ERR_NOMEM;
        json = masked;
        len = masked_len;
    }
    root = cJSON_ParseWithLength(json, len);
    qv_free(masked);
    if (!root || !cJSON_IsObject(root)) {
        st = qv_errorf(err, QV_ERR_INVALID, "tokenizer.json is not a JSON object");
        goto fail;
    }
    if (config_json) {
        cfg = cJSON_ParseWithLength(config_json, config_len);
        if (!cfg || !cJSON_IsObject(cfg)) {
            st = qv_errorf(err, QV_ERR_INVALID, "tokenizer_config.json is not a JSON object");
            goto fail;
        }
    }
    if ((st = qv__tok_alloc(&t))) goto fail;
    if ((st = parse_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), err))) goto fail;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *it;
    cJSON_ArrayForEach(it, added) {
        cJSON *cj = cJSON_GetObjectItemCaseSensitive(it, "content");
        char *content = cJSON_IsString(cj) ? cj->valuestring : NULL;
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        if (!content || !cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > 0x7FFFFFF) {
            st = qv_errorf(err, QV_ERR_INVALID, "added_tokens: bad entry");
            goto fail;
        }
        if (!*content) continue;
        bool special = jbool(it, "special", false);
        st = qv__tok_add_added(t, content, unmask_nul(content), (int32_t)id->valuedouble, special,
                               jbool(it, "normalized", !special), jbool(it, "lstrip", false),
                               jbool(it, "rstrip", false), jbool(it, "single_word", false));
        if (st) goto fail;
    }
    if ((st = parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err)))
        goto fail;
    if ((st = parse_pre(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err)))
        goto fail;
    if ((st = parse_post(t, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), err)))
        goto fail;
    if ((st = parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), err))) goto fail;
    if ((st = qv__tok_finish(t, err))) goto fail;
    if (cfg && (st = parse_config(t, cfg, err))) goto fail;
    if (cfg && (st = qv__tok_finish(t, err))) goto fail; /* eog set with the config's eos */
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    *out = t;
    return QV_OK;
fail:
    if (st == QV_ERR_NOMEM && err && !err->msg[0]) qv_errorf(err, st, "out of memory");
    cJSON_Delete(root);
    cJSON_Delete(cfg);
    qv_tokenizer_free(t);
    return st;
}

#define QV_TOK_MAX_FILE (256u << 20)

qv_status qv_tokenizer_load_json(const char *tokenizer_json_path, const char *tokenizer_config_path,
                                 qv_tokenizer **out, qv_error *err) {
    char *js = NULL, *cs = NULL;
    size_t jn = 0, cn = 0;
    qv_status st = qv_read_file(tokenizer_json_path, QV_TOK_MAX_FILE, &js, &jn, err);
    if (st) return st;
    if (tokenizer_config_path) {
        st = qv_read_file(tokenizer_config_path, QV_TOK_MAX_FILE, &cs, &cn, err);
        if (st) {
            qv_free(js);
            return st;
        }
    }
    st = qv_tokenizer_load_json_str(js, jn, cs, cn, out, err);
    if (st) qv_error_prefix(err, "%s", tokenizer_json_path);
    qv_free(js);
    qv_free(cs);
    return st;
}

void qv_tokenizer_free(qv_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < t->cap_vocab; i++)
        qv_free(t->vocab[i]);
    qv_free(t->vocab);
    qv_free(t->vocab_len);
    qv__strmap_free(&t->vocab_map);
    qv__pairmap_free(&t->merges);
    qv_free(t->rank_by_id);
    for (size_t i = 0; i < t->n_added; i++) {
        qv_free(t->added[i].content);
        qv_free(t->added[i].ncontent);
    }
    qv_free(t->order[0]);
    qv_free(t->order[1]);
    qv_free(t->added);
    qv__strmap_free(&t->added_map);
    qv_free(t->is_special);
    qv_free(t->added_by_id);
    for (int i = 0; i < t->n_norms; i++) {
        qv_free(t->norms[i].a);
        qv_free(t->norms[i].b);
    }
    for (int i = 0; i < t->n_pres; i++) {
        pcre2_code_free(t->pres[i].re);
        qv_free(t->pres[i].literal);
    }
    for (int i = 0; i < t->n_decs; i++) {
        qv_free(t->decs[i].a);
        qv_free(t->decs[i].b);
    }
    qv_free(t->chat_template);
    qv_free(t->bos_text);
    qv_free(t->eos_text);
    qv_free(t);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

qv_status qv_tokenizer_load_path(const char *path, qv_tokenizer **out, qv_error *err) {
    struct stat sb;
    if (!path || stat(path, &sb) != 0)
        return qv_errorf(err, QV_ERR_NOT_FOUND, "%s: no such file or directory",
                         path ? path : "(null)");
    if (S_ISDIR(sb.st_mode)) {
        size_t n = strlen(path) + 32;
        char *tj = qv_malloc(n), *tc = qv_malloc(n);
        if (!tj || !tc) {
            qv_free(tj);
            qv_free(tc);
            return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        }
        snprintf(tj, n, "%s/tokenizer.json", path);
        snprintf(tc, n, "%s/tokenizer_config.json", path);
        qv_status st;
        if (stat(tj, &sb) != 0)
            st = qv_errorf(err, QV_ERR_NOT_FOUND, "%s: no tokenizer.json in the directory", path);
        else
            st = qv_tokenizer_load_json(tj, stat(tc, &sb) == 0 ? tc : NULL, out, err);
        qv_free(tj);
        qv_free(tc);
        return st;
    }
    if (ends_with(path, ".gguf")) {
        return qv__tok_load_gguf_file(path, out, err);
    }
    /* a tokenizer.json file: use the tokenizer_config.json next to it when there is one */
    size_t n = strlen(path);
    char *cfg = qv_malloc(n + 32);
    if (!cfg) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    memcpy(cfg, path, n + 1);
    char *slash = strrchr(cfg, '/');
    snprintf(slash ? slash + 1 : cfg, n + 32 - (size_t)(slash ? slash + 1 - cfg : 0),
             "tokenizer_config.json");
    qv_status st = qv_tokenizer_load_json(
        path, stat(cfg, &sb) == 0 && strcmp(cfg, path) ? cfg : NULL, out, err);
    qv_free(cfg);
    return st;
}

/* ---- accessors ---- */

int qv_tokenizer_n_vocab(const qv_tokenizer *t) { return t->n_vocab; }
int32_t qv_tokenizer_bos(const qv_tokenizer *t) { return t->bos_id; }
int32_t qv_tokenizer_eos(const qv_tokenizer *t) { return t->eos_id; }

bool qv_tokenizer_is_eog(const qv_tokenizer *t, int32_t id) {
    for (int i = 0; i < t->n_eog; i++)
        if (t->eog[i] == id) return true;
    return false;
}

int qv_tokenizer_eog_ids(const qv_tokenizer *t, const int32_t **ids) {
    *ids = t->eog;
    return t->n_eog;
}

bool qv_tokenizer_is_special(const qv_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->is_special && t->is_special[id];
}

const char *qv_tokenizer_token_text(const qv_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    if (t->added_by_id && t->added_by_id[id]) {
        /* HF returns the normalized content of a normalized added token (checked with
         * tokenizers 0.23: NFC "cafe\u0301!" decodes as "caf\u00e9!"). */
        const qv__added *a = t->added_by_id[id];
        if (len) *len = a->ncontent ? a->nlen : a->len;
        return a->ncontent ? a->ncontent : a->content;
    }
    if (id < t->cap_vocab && t->vocab[id]) {
        if (len) *len = t->vocab_len[id];
        return t->vocab[id];
    }
    return NULL;
}

int32_t qv_tokenizer_token_id(const qv_tokenizer *t, const char *text, size_t len) {
    int32_t id = qv__strmap_get(&t->added_map, text, len);
    if (id >= 0) return id;
    return qv__strmap_get(&t->vocab_map, text, len);
}

const char *qv_tokenizer_chat_template(const qv_tokenizer *t) { return t->chat_template; }
