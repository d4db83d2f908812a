/*
 * gguf.c - see gguf.h. A single validating pass over the buffer (FORMATS.md 3.1 and the
 * checklist of 7) builds the KV table and the tensor table; lookups afterwards are binary
 * searches over name-sorted index arrays, so the object is immutable and lock-free to read.
 *
 * Bounds: every read goes through the `rd` cursor, which checks the remaining length first.
 * Counts are capped both by fixed limits (2^30 like ggml) and by the bytes left, so a tiny
 * file cannot make us allocate much. STRING arrays get an offsets table so element i is O(1)
 * (the tokenizer reads ~50k of them).
 * Thread: open/close on any thread; an open file is immutable.
 */
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

#include "mmap_file.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" read as LE u32 */
#define GGUF_MAX_STR ((uint64_t)1 << 30)
#define GGUF_MAX_ARR ((uint64_t)1 << 30)
#define GGUF_MAX_KEY 65535u
#define GGUF_MAX_NAME 64 /* GGML_MAX_NAME: names must be shorter */
#define GGUF_DEFAULT_ALIGN 32u

typedef struct gguf_kv {
    char *key;              /* owned, NUL-terminated */
    enum qv_gguf_type type; /* value type */
    enum qv_gguf_type elem; /* element type when type == ARRAY */
    uint64_t n;             /* element count (arrays) or string length */
    const uint8_t *val;     /* value bytes (after the type / array header) in the buffer */
    uint64_t *str_off;      /* STRING arrays: offset of element i's u64 length from val */
} gguf_kv;

struct qv_gguf {
    qv_mmap_file map; /* zeroed for qv_gguf_open_buffer */
    uint32_t version;
    gguf_kv *kv; /* [n_kv] in file order */
    size_t n_kv;
    size_t *kv_sorted;       /* [n_kv] indices sorted by key */
    qv_gguf_tensor *tensors; /* [n_tensors] in file order */
    size_t n_tensors;
    size_t *t_sorted; /* [n_tensors] indices sorted by name */
    uint32_t alignment;
};

typedef struct rd {
    const uint8_t *p;
    size_t len, pos;
} rd;

static size_t rd_left(const rd *r) { return r->len - r->pos; }

static bool rd_bytes(rd *r, size_t n, const uint8_t **out) {
    if (rd_left(r) < n) return false;
    *out = r->p + r->pos;
    r->pos += n;
    return true;
}

/* Frees a pointer held through a const-qualified field (the object owns it). */
static void free_const(const void *p) {
    void *q;
    memcpy(&q, &p, sizeof(q));
    qv_free(q);
}

static uint64_t le(const uint8_t *b, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static bool rd_u32(rd *r, uint32_t *v) {
    const uint8_t *b;
    if (!rd_bytes(r, 4, &b)) return false;
    *v = (uint32_t)le(b, 4);
    return true;
}

static bool rd_u64(rd *r, uint64_t *v) {
    const uint8_t *b;
    if (!rd_bytes(r, 8, &b)) return false;
    *v = le(b, 8);
    return true;
}

/* ---- ggml type table (block elements, block bytes); 0 = unknown/removed id ---- */
static const struct {
    int blck, size;
    enum qv_dtype dtype;
    const char *name;
} ggml_types[] = {
    [0] = {1, 4, QV_DTYPE_F32, "F32"},           [1] = {1, 2, QV_DTYPE_F16, "F16"},
    [2] = {32, 18, QV_DTYPE_Q4_0, "Q4_0"},       [3] = {32, 20, QV_DTYPE_Q4_1, "Q4_1"},
    [6] = {32, 22, QV_DTYPE_Q5_0, "Q5_0"},       [7] = {32, 24, QV_DTYPE_Q5_1, "Q5_1"},
    [8] = {32, 34, QV_DTYPE_Q8_0, "Q8_0"},       [9] = {32, 40, QV_DTYPE_COUNT, "Q8_1"},
    [10] = {256, 84, QV_DTYPE_Q2_K, "Q2_K"},     [11] = {256, 110, QV_DTYPE_Q3_K, "Q3_K"},
    [12] = {256, 144, QV_DTYPE_Q4_K, "Q4_K"},    [13] = {256, 176, QV_DTYPE_Q5_K, "Q5_K"},
    [14] = {256, 210, QV_DTYPE_Q6_K, "Q6_K"},    [15] = {256, 292, QV_DTYPE_COUNT, "Q8_K"},
    [16] = {256, 66, QV_DTYPE_COUNT, "IQ2_XXS"}, [17] = {256, 74, QV_DTYPE_COUNT, "IQ2_XS"},
    [18] = {256, 98, QV_DTYPE_COUNT, "IQ3_XXS"}, [19] = {256, 50, QV_DTYPE_COUNT, "IQ1_S"},
    [20] = {32, 18, QV_DTYPE_IQ4_NL, "IQ4_NL"},  [21] = {256, 110, QV_DTYPE_COUNT, "IQ3_S"},
    [22] = {256, 82, QV_DTYPE_COUNT, "IQ2_S"},   [23] = {256, 136, QV_DTYPE_IQ4_XS, "IQ4_XS"},
    [24] = {1, 1, QV_DTYPE_COUNT, "I8"},         [25] = {1, 2, QV_DTYPE_COUNT, "I16"},
    [26] = {1, 4, QV_DTYPE_COUNT, "I32"},        [27] = {1, 8, QV_DTYPE_COUNT, "I64"},
    [28] = {1, 8, QV_DTYPE_COUNT, "F64"},        [29] = {256, 56, QV_DTYPE_COUNT, "IQ1_M"},
    [30] = {1, 2, QV_DTYPE_BF16, "BF16"},        [34] = {256, 54, QV_DTYPE_COUNT, "TQ1_0"},
    [35] = {256, 66, QV_DTYPE_COUNT, "TQ2_0"},   [39] = {32, 17, QV_DTYPE_COUNT, "MXFP4"},
    [40] = {64, 36, QV_DTYPE_COUNT, "type40"},   [41] = {128, 18, QV_DTYPE_COUNT, "type41"},
};

const char *qv_gguf_ggml_type_name(uint32_t t) {
    if (t < QV_ARRAY_LEN(ggml_types) && ggml_types[t].blck) return ggml_types[t].name;
    return "unknown";
}

/* Size in bytes of one scalar value of a non-string, non-array type; 0 otherwise. */
static size_t scalar_size(uint32_t t) {
    switch (t) {
    case QV_GGUF_UINT8:
    case QV_GGUF_INT8:
    case QV_GGUF_BOOL: return 1;
    case QV_GGUF_UINT16:
    case QV_GGUF_INT16: return 2;
    case QV_GGUF_UINT32:
    case QV_GGUF_INT32:
    case QV_GGUF_FLOAT32: return 4;
    case QV_GGUF_UINT64:
    case QV_GGUF_INT64:
    case QV_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Reads a string header (u64 length + bytes) and returns the bytes. */
static qv_status rd_string(rd *r, const uint8_t **s, uint64_t *n, const char *what, qv_error *err) {
    size_t at = r->pos;
    if (!rd_u64(r, n)) {
        return qv_errorf(err, QV_ERR_INVALID, "truncated %s length at byte %zu", what, at);
    }
    if (*n > GGUF_MAX_STR || *n > rd_left(r)) {
        return qv_errorf(err, QV_ERR_INVALID,
                         "%s length %llu at byte %zu exceeds the file or the 2^30 cap", what,
                         (unsigned long long)*n, at);
    }
    rd_bytes(r, (size_t)*n, s);
    return QV_OK;
}

static qv_status read_value(rd *r, gguf_kv *kv, qv_error *err) {
    uint32_t t = kv->type;
    if (t == QV_GGUF_STRING) {
        kv->val = r->p + r->pos;
        const uint8_t *s;
        return rd_string(r, &s, &kv->n, "string value", err);
    }
    if (t == QV_GGUF_ARRAY) {
        uint32_t et;
        uint64_t n;
        if (!rd_u32(r, &et) || !rd_u64(r, &n)) {
            return qv_errorf(err, QV_ERR_INVALID, "key '%s': truncated array header", kv->key);
        }
        if (et == QV_GGUF_ARRAY) {
            return qv_errorf(err, QV_ERR_INVALID, "key '%s': nested arrays are not supported",
                             kv->key);
        }
        if (et != QV_GGUF_STRING && !scalar_size(et)) {
            return qv_errorf(err, QV_ERR_INVALID, "key '%s': unknown array element type %u",
                             kv->key, et);
        }
        size_t min_elem = et == QV_GGUF_STRING ? 8 : scalar_size(et);
        if (n > GGUF_MAX_ARR || n > rd_left(r) / min_elem) {
            return qv_errorf(err, QV_ERR_INVALID,
                             "key '%s': array of %llu elements exceeds the file or the 2^30 cap",
                             kv->key, (unsigned long long)n);
        }
        kv->elem = (enum qv_gguf_type)et;
        kv->n = n;
        kv->val = r->p + r->pos;
        if (et != QV_GGUF_STRING) {
            const uint8_t *b = NULL;
            if (!rd_bytes(r, (size_t)n * min_elem, &b)) {
                return qv_errorf(err, QV_ERR_INVALID, "key '%s': truncated array", kv->key);
            }
            if (et == QV_GGUF_BOOL) {
                for (uint64_t i = 0; i < n; i++) {
                    if (b[i] > 1) {
                        return qv_errorf(err, QV_ERR_INVALID, "key '%s': bool element %llu is %u",
                                         kv->key, (unsigned long long)i, b[i]);
                    }
                }
            }
            return QV_OK;
        }
        kv->str_off = qv_malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
        if (!kv->str_off) return qv_errorf(err, QV_ERR_NOMEM, "key '%s': out of memory", kv->key);
        for (uint64_t i = 0; i < n; i++) {
            kv->str_off[i] = (uint64_t)(r->p + r->pos - kv->val);
            const uint8_t *s;
            uint64_t sl;
            qv_status st = rd_string(r, &s, &sl, "array string", err);
            if (st != QV_OK) {
                qv_error_prefix(err, "key '%s' element %llu", kv->key, (unsigned long long)i);
                return st;
            }
        }
        return QV_OK;
    }
    size_t sz = scalar_size(t);
    if (!sz) return qv_errorf(err, QV_ERR_INVALID, "key '%s': unknown value type %u", kv->key, t);
    const uint8_t *b;
    if (!rd_bytes(r, sz, &b)) {
        return qv_errorf(err, QV_ERR_INVALID, "key '%s': truncated value", kv->key);
    }
    kv->val = b;
    if (t == QV_GGUF_BOOL && b[0] > 1) {
        return qv_errorf(err, QV_ERR_INVALID, "key '%s': bool value is %u", kv->key, b[0]);
    }
    return QV_OK;
}

static void gguf_free(qv_gguf *g) {
    if (!g) return;
    for (size_t i = 0; i < g->n_kv; i++) {
        qv_free(g->kv[i].key);
        qv_free(g->kv[i].str_off);
    }
    qv_free(g->kv);
    qv_free(g->kv_sorted);
    for (size_t i = 0; i < g->n_tensors; i++)
        free_const(g->tensors[i].name);
    qv_free(g->tensors);
    qv_free(g->t_sorted);
    qv_mmap_close(&g->map);
    qv_free(g);
}

void qv_gguf_close(qv_gguf *g) { gguf_free(g); }

/* Merge sort of index arrays with a comparator that sees the object (qsort has no context
 * argument in C11 and a static context would not be thread-safe). */
typedef int (*idx_cmp)(const qv_gguf *g, size_t a, size_t b);

static void merge_sort_idx(size_t *a, size_t *tmp, size_t n, idx_cmp cmp, const qv_gguf *g) {
    if (n < 2) return;
    size_t h = n / 2;
    merge_sort_idx(a, tmp, h, cmp, g);
    merge_sort_idx(a + h, tmp, n - h, cmp, g);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = cmp(g, a[i], a[j]) <= 0 ? a[i++] : a[j++];
    while (i < h)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, n * sizeof(*a));
}

static int cmp_kv_key(const qv_gguf *g, size_t a, size_t b) {
    return strcmp(g->kv[a].key, g->kv[b].key);
}
static int cmp_t_name(const qv_gguf *g, size_t a, size_t b) {
    return strcmp(g->tensors[a].name, g->tensors[b].name);
}
static int cmp_t_data(const qv_gguf *g, size_t a, size_t b) {
    /* By start; at equal starts zero-size tensors first, so they never "overlap". */
    const qv_gguf_tensor *x = &g->tensors[a], *y = &g->tensors[b];
    const uint8_t *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return (x->n_bytes > y->n_bytes) - (x->n_bytes < y->n_bytes);
}

static qv_status sorted_index(qv_gguf *g, size_t n, size_t **out, idx_cmp cmp, qv_error *err) {
    size_t *idx = qv_malloc((n ? n : 1) * sizeof(size_t));
    size_t *tmp = qv_malloc((n ? n : 1) * sizeof(size_t));
    if (!idx || !tmp) {
        qv_free(idx);
        qv_free(tmp);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    merge_sort_idx(idx, tmp, n, cmp, g);
    qv_free(tmp);
    *out = idx;
    return QV_OK;
}

static const gguf_kv *find_kv(const qv_gguf *g, const char *key);

static qv_status parse_tensor_info(rd *r, qv_gguf *g, qv_gguf_tensor *t, uint64_t *offset,
                                   qv_error *err) {
    size_t at = r->pos;
    const uint8_t *s;
    uint64_t n;
    qv_status st = rd_string(r, &s, &n, "tensor name", err);
    if (st != QV_OK) return st;
    if (n == 0 || n >= GGUF_MAX_NAME || memchr(s, 0, (size_t)n)) {
        return qv_errorf(err, QV_ERR_INVALID,
                         "tensor info at byte %zu: name must be 1..63 bytes without NUL", at);
    }
    t->name = qv_strndup((const char *)s, (size_t)n);
    if (!t->name) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    g->n_tensors++;
    uint32_t nd;
    if (!rd_u32(r, &nd)) return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': truncated", t->name);
    if (nd < 1 || nd > 4) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': %u dimensions (must be 1..4)", t->name,
                         nd);
    }
    t->n_dims = (int)nd;
    for (int i = 0; i < 4; i++)
        t->ne[i] = 1;
    int64_t n_elems = 1;
    for (uint32_t i = 0; i < nd; i++) {
        uint64_t v;
        if (!rd_u64(r, &v))
            return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': truncated", t->name);
        if (v > (uint64_t)INT64_MAX || __builtin_mul_overflow(n_elems, (int64_t)v, &n_elems)) {
            return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': element count overflows", t->name);
        }
        t->ne[i] = (int64_t)v;
    }
    uint32_t type;
    if (!rd_u32(r, &type) || !rd_u64(r, offset)) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': truncated", t->name);
    }
    if (type >= QV_ARRAY_LEN(ggml_types) || !ggml_types[type].blck) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': unknown ggml type %u", t->name, type);
    }
    t->ggml_type = type;
    t->dtype = ggml_types[type].dtype;
    int64_t blck = ggml_types[type].blck;
    if (t->ne[0] % blck != 0) {
        return qv_errorf(err, QV_ERR_INVALID,
                         "tensor '%s': ne[0]=%lld is not a multiple of the %s block size %lld",
                         t->name, (long long)t->ne[0], ggml_types[type].name, (long long)blck);
    }
    uint64_t nb = (uint64_t)(t->ne[0] / blck);
    for (int i = 1; i < 4; i++)
        nb *= (uint64_t)t->ne[i]; /* product <= n_elems: no overflow */
    if (__builtin_mul_overflow(nb, (uint64_t)ggml_types[type].size, &t->n_bytes)) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': byte size overflows", t->name);
    }
    return QV_OK;
}

static qv_status gguf_parse(const uint8_t *buf, size_t len, qv_gguf *g, qv_error *err) {
    rd r = {buf, len, 0};
    qv_status st;
    uint64_t *offsets = NULL;
    size_t *by_off = NULL;
    uint32_t magic;
    if (!rd_u32(&r, &magic) || magic != GGUF_MAGIC) {
        return qv_errorf(err, QV_ERR_INVALID, "not a GGUF file (bad magic)");
    }
    if (!rd_u32(&r, &g->version)) return qv_errorf(err, QV_ERR_INVALID, "truncated header");
    if (g->version != 0 && (g->version & 0xFFFFu) == 0) {
        return qv_errorf(err, QV_ERR_UNSUPPORTED,
                         "byte-swapped (big-endian) GGUF is not supported (version field 0x%08x)",
                         g->version);
    }
    if (g->version == 0) return qv_errorf(err, QV_ERR_INVALID, "GGUF version 0 is invalid");
    if (g->version == 1 || g->version > 3) {
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "GGUF version %u is not supported (2 or 3)",
                         g->version);
    }
    uint64_t n_tensors, n_kv;
    if (!rd_u64(&r, &n_tensors) || !rd_u64(&r, &n_kv)) {
        return qv_errorf(err, QV_ERR_INVALID, "truncated header");
    }
    /* A KV needs >= 8+1+4+1 bytes, a tensor info >= 8+1+4+8+4+8. */
    if (n_kv > rd_left(&r) / 14) {
        return qv_errorf(err, QV_ERR_INVALID, "metadata count %llu is impossible for the file size",
                         (unsigned long long)n_kv);
    }
    if (n_tensors > rd_left(&r) / 33) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor count %llu is impossible for the file size",
                         (unsigned long long)n_tensors);
    }
    g->kv = qv_calloc(n_kv ? (size_t)n_kv : 1, sizeof(*g->kv));
    g->tensors = qv_calloc(n_tensors ? (size_t)n_tensors : 1, sizeof(*g->tensors));
    offsets = qv_calloc(n_tensors ? (size_t)n_tensors : 1, sizeof(*offsets));
    if (!g->kv || !g->tensors || !offsets) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[g->n_kv];
        size_t at = r.pos;
        const uint8_t *k;
        uint64_t kl;
        if ((st = rd_string(&r, &k, &kl, "key", err)) != QV_OK) goto fail;
        if (kl == 0 || kl > GGUF_MAX_KEY) {
            st = qv_errorf(err, QV_ERR_INVALID, "key at byte %zu has length %llu", at,
                           (unsigned long long)kl);
            goto fail;
        }
        for (uint64_t c = 0; c < kl; c++) {
            if (k[c] < 0x20 || k[c] == 0x7f) {
                st = qv_errorf(err, QV_ERR_INVALID, "key at byte %zu has a control byte", at);
                goto fail;
            }
        }
        kv->key = qv_strndup((const char *)k, (size_t)kl);
        if (!kv->key) {
            st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
            goto fail;
        }
        g->n_kv++;
        uint32_t type;
        if (!rd_u32(&r, &type)) {
            st = qv_errorf(err, QV_ERR_INVALID, "key '%s': truncated type", kv->key);
            goto fail;
        }
        if (type > QV_GGUF_FLOAT64) {
            st = qv_errorf(err, QV_ERR_INVALID, "key '%s': unknown value type %u", kv->key, type);
            goto fail;
        }
        kv->type = (enum qv_gguf_type)type;
        if ((st = read_value(&r, kv, err)) != QV_OK) goto fail;
    }
    if ((st = sorted_index(g, g->n_kv, &g->kv_sorted, cmp_kv_key, err)) != QV_OK) goto fail;
    for (size_t i = 1; i < g->n_kv; i++) {
        if (!strcmp(g->kv[g->kv_sorted[i]].key, g->kv[g->kv_sorted[i - 1]].key)) {
            st = qv_errorf(err, QV_ERR_INVALID, "duplicate key '%s'", g->kv[g->kv_sorted[i]].key);
            goto fail;
        }
    }
    g->alignment = GGUF_DEFAULT_ALIGN;
    const gguf_kv *akv = find_kv(g, "general.alignment");
    if (akv) {
        uint32_t a = akv->type == QV_GGUF_UINT32 ? (uint32_t)le(akv->val, 4) : 0;
        if (a == 0 || (a & (a - 1)) != 0) {
            st = qv_errorf(err, QV_ERR_INVALID, "general.alignment must be a UINT32 power of two");
            goto fail;
        }
        g->alignment = a;
    }
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((st = parse_tensor_info(&r, g, &g->tensors[i], &offsets[i], err)) != QV_OK) goto fail;
    }
    if ((st = sorted_index(g, g->n_tensors, &g->t_sorted, cmp_t_name, err)) != QV_OK) goto fail;
    for (size_t i = 1; i < g->n_tensors; i++) {
        if (!strcmp(g->tensors[g->t_sorted[i]].name, g->tensors[g->t_sorted[i - 1]].name)) {
            st = qv_errorf(err, QV_ERR_INVALID, "duplicate tensor name '%s'",
                           g->tensors[g->t_sorted[i]].name);
            goto fail;
        }
    }
    if (n_tensors == 0) {
        st = QV_OK;
        goto fail; /* no data section needed */
    }
    size_t A = g->alignment;
    size_t data_start = r.pos + (A - r.pos % A) % A;
    if (data_start > len) {
        st = qv_errorf(err, QV_ERR_INVALID, "file ends before the aligned data section");
        goto fail;
    }
    uint64_t data_len = (uint64_t)(len - data_start);
    for (size_t i = 0; i < g->n_tensors; i++) {
        qv_gguf_tensor *t = &g->tensors[i];
        if (offsets[i] % A != 0) {
            st = qv_errorf(err, QV_ERR_INVALID,
                           "tensor '%s': offset %llu is not a multiple of the alignment %zu",
                           t->name, (unsigned long long)offsets[i], A);
            goto fail;
        }
        if (offsets[i] > data_len || t->n_bytes > data_len - offsets[i]) {
            st = qv_errorf(err, QV_ERR_INVALID,
                           "tensor '%s': data [%llu, +%llu) is outside the %llu-byte data "
                           "section (truncated file?)",
                           t->name, (unsigned long long)offsets[i], (unsigned long long)t->n_bytes,
                           (unsigned long long)data_len);
            goto fail;
        }
        t->data = buf + data_start + offsets[i];
    }
    if ((st = sorted_index(g, g->n_tensors, &by_off, cmp_t_data, err)) != QV_OK) goto fail;
    for (size_t i = 1; i < g->n_tensors; i++) {
        const qv_gguf_tensor *a = &g->tensors[by_off[i - 1]], *b = &g->tensors[by_off[i]];
        if ((const uint8_t *)a->data + a->n_bytes > (const uint8_t *)b->data) {
            st = qv_errorf(err, QV_ERR_INVALID, "tensors '%s' and '%s' overlap", a->name, b->name);
            goto fail;
        }
    }
    st = QV_OK;
fail:
    qv_free(by_off);
    qv_free(offsets);
    return st;
}

qv_status qv_gguf_open_buffer(const void *buf, size_t len, qv_gguf **out, qv_error *err) {
    *out = NULL;
    qv_gguf *g = qv_calloc(1, sizeof(*g));
    if (!g) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_status st = gguf_parse(buf, len, g, err);
    if (st != QV_OK) {
        gguf_free(g);
        return st;
    }
    *out = g;
    return QV_OK;
}

qv_status qv_gguf_open(const char *path, qv_gguf **out, qv_error *err) {
    *out = NULL;
    qv_gguf *g = qv_calloc(1, sizeof(*g));
    if (!g) return qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", path);
    qv_status st = qv_mmap_open(path, &g->map, err);
    if (st == QV_OK) {
        st = gguf_parse(g->map.data, g->map.len, g, err);
        if (st != QV_OK) qv_error_prefix(err, "%s", path);
    }
    if (st != QV_OK) {
        gguf_free(g);
        return st;
    }
    *out = g;
    return QV_OK;
}

uint32_t qv_gguf_version(const qv_gguf *g) { return g->version; }
size_t qv_gguf_n_tensors(const qv_gguf *g) { return g->n_tensors; }
uint32_t qv_gguf_alignment(const qv_gguf *g) { return g->alignment; }
size_t qv_gguf_file_size(const qv_gguf *g) { return g->map.len; }

const qv_gguf_tensor *qv_gguf_tensor_at(const qv_gguf *g, size_t i) {
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

const qv_gguf_tensor *qv_gguf_find_tensor(const qv_gguf *g, const char *name) {
    size_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const qv_gguf_tensor *t = &g->tensors[g->t_sorted[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

static const gguf_kv *find_kv(const qv_gguf *g, const char *key) {
    size_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const gguf_kv *kv = &g->kv[g->kv_sorted[mid]];
        int c = strcmp(kv->key, key);
        if (c == 0) return kv;
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

/* Scalar at p of type t as int64 / double; false for non-numeric types. */
static bool scalar_int(uint32_t t, const uint8_t *p, int64_t *out) {
    switch (t) {
    case QV_GGUF_UINT8:
    case QV_GGUF_BOOL: *out = p[0]; return true;
    case QV_GGUF_INT8: *out = (int8_t)p[0]; return true;
    case QV_GGUF_UINT16: *out = (int64_t)le(p, 2); return true;
    case QV_GGUF_INT16: *out = (int16_t)(uint16_t)le(p, 2); return true;
    case QV_GGUF_UINT32: *out = (int64_t)le(p, 4); return true;
    case QV_GGUF_INT32: *out = (int32_t)(uint32_t)le(p, 4); return true;
    case QV_GGUF_UINT64: {
        uint64_t v = le(p, 8);
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
        return true;
    }
    case QV_GGUF_INT64: *out = (int64_t)le(p, 8); return true;
    default: return false;
    }
}

static bool scalar_float(uint32_t t, const uint8_t *p, double *out) {
    if (t == QV_GGUF_FLOAT32) {
        uint32_t b = (uint32_t)le(p, 4);
        float f;
        memcpy(&f, &b, 4);
        *out = (double)f;
        return true;
    }
    if (t == QV_GGUF_FLOAT64) {
        uint64_t b = le(p, 8);
        memcpy(out, &b, 8);
        return true;
    }
    return false;
}

bool qv_gguf_has(const qv_gguf *g, const char *key) { return find_kv(g, key) != NULL; }

bool qv_gguf_get_int(const qv_gguf *g, const char *key, int64_t *out) {
    const gguf_kv *kv = find_kv(g, key);
    return kv && scalar_int(kv->type, kv->val, out);
}

bool qv_gguf_get_float(const qv_gguf *g, const char *key, double *out) {
    const gguf_kv *kv = find_kv(g, key);
    return kv && scalar_float(kv->type, kv->val, out);
}

bool qv_gguf_get_bool(const qv_gguf *g, const char *key, bool *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_BOOL) return false;
    *out = kv->val[0] != 0;
    return true;
}

bool qv_gguf_get_str(const qv_gguf *g, const char *key, const char **s, size_t *len) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_STRING) return false;
    *s = (const char *)kv->val + 8;
    *len = (size_t)kv->n;
    return true;
}

bool qv_gguf_get_arr(const qv_gguf *g, const char *key, enum qv_gguf_type *elem_type, uint64_t *n) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_ARRAY) return false;
    *elem_type = kv->elem;
    *n = kv->n;
    return true;
}

bool qv_gguf_arr_str(const qv_gguf *g, const char *key, uint64_t i, const char **s, size_t *len) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_ARRAY || kv->elem != QV_GGUF_STRING || i >= kv->n) {
        return false;
    }
    const uint8_t *p = kv->val + kv->str_off[i];
    *len = (size_t)le(p, 8);
    *s = (const char *)p + 8;
    return true;
}

bool qv_gguf_arr_float(const qv_gguf *g, const char *key, uint64_t i, double *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_ARRAY || i >= kv->n) return false;
    const uint8_t *p = kv->val + i * scalar_size(kv->elem);
    if (scalar_float(kv->elem, p, out)) return true;
    int64_t v;
    if (!scalar_int(kv->elem, p, &v)) return false;
    *out = (double)v;
    return true;
}

bool qv_gguf_arr_int(const qv_gguf *g, const char *key, uint64_t i, int64_t *out) {
    const gguf_kv *kv = find_kv(g, key);
    if (!kv || kv->type != QV_GGUF_ARRAY || kv->elem == QV_GGUF_STRING || i >= kv->n) {
        return false;
    }
    return scalar_int(kv->elem, kv->val + i * scalar_size(kv->elem), out);
}

size_t qv_gguf_n_kv(const qv_gguf *g) { return g->n_kv; }

const char *qv_gguf_key_at(const qv_gguf *g, size_t i) { return i < g->n_kv ? g->kv[i].key : NULL; }

enum qv_gguf_type qv_gguf_type_at(const qv_gguf *g, size_t i) { return g->kv[i].type; }
