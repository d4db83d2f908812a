/*
 * tok_util.c - small building blocks of the tokenizer: a growable byte buffer, UTF-8 decoding
 * and repair, the Unicode classes HF's Rust code uses, the GPT-2 byte<->char map and two
 * open-addressing hash maps (token string -> id, merge pair -> rank/merged id).
 *
 * Not here: any pipeline logic. Invariants: hash map capacities are powers of two and at most
 * half full. Thread: the tables are const; maps are read-only after load.
 */
#include <string.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* ---- buffer ---- */

qv_status qv__buf_reserve(qv__buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap) return QV_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = qv_realloc(b->p, cap);
    if (!p) return QV_ERR_NOMEM;
    b->p = p;
    b->cap = cap;
    return QV_OK;
}

qv_status qv__buf_put(qv__buf *b, const void *s, size_t n) {
    if (qv__buf_reserve(b, n)) return QV_ERR_NOMEM;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return QV_OK;
}

qv_status qv__buf_putc(qv__buf *b, char c) { return qv__buf_put(b, &c, 1); }

qv_status qv__buf_put_cp(qv__buf *b, uint32_t cp) {
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    return qv__buf_put(b, u, n);
}

void qv__buf_free(qv__buf *b) {
    qv_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- UTF-8 ---- */

size_t qv__utf8_decode(const char *s, size_t n, uint32_t *cp) {
    const uint8_t *u = (const uint8_t *)s;
    if (n == 0) return 0;
    uint8_t c = u[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t need;
    uint32_t v;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < need) return 0;
    if (u[1] < lo || u[1] > hi) return 0;
    v = (v << 6) | (u[1] & 0x3F);
    for (size_t i = 2; i < need; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (u[i] & 0x3F);
    }
    *cp = v;
    return need;
}

size_t qv__utf8_invalid_len(const char *s, size_t n) {
    /* Maximal subpart: the longest prefix that could start a valid sequence, at least 1. */
    const uint8_t *u = (const uint8_t *)s;
    uint8_t c = u[0];
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return 1;
    size_t i = 1;
    if (i < n && u[i] >= lo && u[i] <= hi) {
        i++;
        while (i < need && i < n && (u[i] & 0xC0) == 0x80)
            i++;
    }
    return i;
}

bool qv__utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        if ((uint8_t)s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k) return false;
        i += k;
    }
    return true;
}

qv_status qv__utf8_repair(const char *s, size_t n, qv__buf *out) {
    size_t i = 0, run = 0;
    uint32_t cp;
    if (qv__buf_reserve(out, n)) return QV_ERR_NOMEM;
    while (i < n) {
        if ((uint8_t)s[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (k) {
            i += k;
            continue;
        }
        if (qv__buf_put(out, s + run, i - run)) return QV_ERR_NOMEM;
        if (qv__buf_put(out, "\xEF\xBF\xBD", 3)) return QV_ERR_NOMEM;
        i += qv__utf8_invalid_len(s + i, n - i);
        run = i;
    }
    return qv__buf_put(out, s + run, n - run);
}

size_t qv__utf8_incomplete_tail(const char *s, size_t n) {
    /* Look back at most 3 bytes for a lead byte whose sequence is not complete yet. */
    for (size_t back = 1; back <= 3 && back <= n; back++) {
        uint8_t c = (uint8_t)s[n - back];
        if ((c & 0xC0) == 0x80) continue; /* continuation */
        size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        if (need > back && qv__utf8_invalid_len(s + n - back, back) == back) return back;
        return 0;
    }
    return 0;
}

/* ---- Unicode classes ---- */

bool qv__uc_is_whitespace(uint32_t cp) {
    if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D);
    if (cp < 0x85) return false;
    switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000: return true;
    default: return cp >= 0x2000 && cp <= 0x200A;
    }
}

size_t qv_py_lstrip_len(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint32_t cp = 0;
        const size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k || !(qv__uc_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F))) break;
        i += k;
    }
    return i;
}

/* Numeric code points HF knows (Rust std, Unicode 16+) that are unassigned in Unicode 14/15:
 * measured by running every code point through tokenizers 0.23.3 Digits(individual_digits). */
static const uint32_t k_new_numeric[][2] = {
    {0x10D40, 0x10D49}, {0x116D0, 0x116E3}, {0x11BF0, 0x11BF9}, {0x11DE0, 0x11DE9},
    {0x11F50, 0x11F59}, {0x16130, 0x16139}, {0x16D70, 0x16D79}, {0x16FF4, 0x16FF6},
    {0x1CCF0, 0x1CCF9}, {0x1D2C0, 0x1D2D3}, {0x1E4F0, 0x1E4F9}, {0x1E5F1, 0x1E5FA},
};

bool qv__uc_is_numeric(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    if (cp >= 0x10D40)
        for (size_t i = 0; i < sizeof(k_new_numeric) / sizeof(k_new_numeric[0]); i++)
            if (cp >= k_new_numeric[i][0] && cp <= k_new_numeric[i][1]) return true;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

bool qv__uc_is_word(uint32_t cp) {
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
               cp == '_';
    if (cp == 0x200C || cp == 0x200D) return true;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC: return true;
    default: return false;
    }
}

/* ---- GPT-2 byte map ---- */

static bool byte_is_printable(unsigned b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t qv__byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    /* The 68 other bytes map, in increasing order, to U+0100.. */
    unsigned k;
    if (b <= 0x20)
        k = b; /* 0x00..0x20 -> 0..32 */
    else if (b <= 0xA0)
        k = 33 + (b - 0x7F); /* 0x7F..0xA0 -> 33..66 */
    else
        k = 67; /* 0xAD */
    return 0x100 + k;
}

int qv__cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable(cp) ? (int)cp : -1;
    if (cp > 0x143) return -1;
    unsigned k = cp - 0x100;
    if (k <= 32) return (int)k;
    if (k <= 66) return (int)(0x7F + (k - 33));
    return 0xAD;
}

/* ---- hash maps ---- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a, then a finalizer mix */
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static size_t pow2_cap(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 2)
        cap *= 2;
    return cap;
}

qv_status qv__strmap_init(qv__strmap *m, size_t expected) {
    memset(m, 0, sizeof(*m));
    m->cap = pow2_cap(expected);
    m->keys = qv_calloc(m->cap, sizeof(*m->keys));
    m->key_lens = qv_calloc(m->cap, sizeof(*m->key_lens));
    m->vals = qv_calloc(m->cap, sizeof(*m->vals));
    if (!m->keys || !m->key_lens || !m->vals) {
        qv__strmap_free(m);
        return QV_ERR_NOMEM;
    }
    return QV_OK;
}

static qv_status strmap_grow(qv__strmap *m) {
    qv__strmap n;
    if (qv__strmap_init(&n, m->cap)) return QV_ERR_NOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i]) qv__strmap_set(&n, m->keys[i], m->key_lens[i], m->vals[i]);
    qv__strmap_free(m);
    *m = n;
    return QV_OK;
}

qv_status qv__strmap_set(qv__strmap *m, const char *key, size_t len, int32_t val) {
    if ((m->n + 1) * 2 > m->cap && strmap_grow(m)) return QV_ERR_NOMEM;
    size_t mask = m->cap - 1, i = (size_t)hash_bytes(key, len) & mask;
    while (m->keys[i]) {
        if (m->key_lens[i] == len && !memcmp(m->keys[i], key, len)) {
            m->vals[i] = val;
            return QV_OK;
        }
        i = (i + 1) & mask;
    }
    m->keys[i] = key;
    m->key_lens[i] = (uint32_t)len;
    m->vals[i] = val;
    m->n++;
    return QV_OK;
}

int32_t qv__strmap_get(const qv__strmap *m, const char *key, size_t len) {
    if (!m->cap) return -1;
    size_t mask = m->cap - 1, i = (size_t)hash_bytes(key, len) & mask;
    while (m->keys[i]) {
        if (m->key_lens[i] == len && !memcmp(m->keys[i], key, len)) return m->vals[i];
        i = (i + 1) & mask;
    }
    return -1;
}

void qv__strmap_free(qv__strmap *m) {
    qv_free(m->keys);
    qv_free(m->key_lens);
    qv_free(m->vals);
    memset(m, 0, sizeof(*m));
}

qv_status qv__pairmap_init(qv__pairmap *m, size_t expected) {
    memset(m, 0, sizeof(*m));
    m->cap = pow2_cap(expected);
    m->keys = qv_malloc(m->cap * sizeof(*m->keys));
    m->ranks = qv_malloc(m->cap * sizeof(*m->ranks));
    m->merged = qv_malloc(m->cap * sizeof(*m->merged));
    if (!m->keys || !m->ranks || !m->merged) {
        qv__pairmap_free(m);
        return QV_ERR_NOMEM;
    }
    memset(m->keys, 0xFF, m->cap * sizeof(*m->keys));
    return QV_OK;
}

static qv_status pairmap_grow(qv__pairmap *m) {
    qv__pairmap n;
    if (qv__pairmap_init(&n, m->cap)) return QV_ERR_NOMEM;
    for (size_t i = 0; i < m->cap; i++)
        if (m->keys[i] != UINT64_MAX)
            qv__pairmap_set(&n, (int32_t)(m->keys[i] >> 32), (int32_t)(uint32_t)m->keys[i],
                            m->ranks[i], m->merged[i]);
    qv__pairmap_free(m);
    *m = n;
    return QV_OK;
}

qv_status qv__pairmap_set(qv__pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    if ((m->n + 1) * 2 > m->cap && pairmap_grow(m)) return QV_ERR_NOMEM;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1, i = (size_t)qv_fmix64(k) & mask;
    while (m->keys[i] != UINT64_MAX) {
        if (m->keys[i] == k) break;
        i = (i + 1) & mask;
    }
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = k;
    m->ranks[i] = rank;
    m->merged[i] = merged;
    return QV_OK;
}

bool qv__pairmap_get(const qv__pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *merged) {
    if (!m->cap) return false;
    uint64_t k = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = m->cap - 1, i = (size_t)qv_fmix64(k) & mask;
    while (m->keys[i] != UINT64_MAX) {
        if (m->keys[i] == k) {
            *rank = m->ranks[i];
            *merged = m->merged[i];
            return true;
        }
        i = (i + 1) & mask;
    }
    return false;
}

void qv__pairmap_free(qv__pairmap *m) {
    qv_free(m->keys);
    qv_free(m->ranks);
    qv_free(m->merged);
    memset(m, 0, sizeof(*m));
}
