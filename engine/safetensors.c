/*
 * safetensors.c - see safetensors.h. Validation follows FORMATS.md 1.3 (the Rust reference
 * reader's `read_metadata` + `Metadata::validate`) step by step; the index handling follows 1.5.
 *
 * The header JSON is decoded with cJSON into plain tensor records and deleted immediately.
 * cJSON numbers are doubles, so integers are accepted only when integral and <= 2^53 (exact);
 * larger values cannot describe bytes of a real file anyway and are reported as too large.
 * Thread: open/close on any thread; an open file is immutable.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mmap_file.h"

#define MAX_EXACT_INT 9007199254740992.0 /* 2^53 */

struct qv_st_file {
    qv_mmap_file map;      /* zeroed for qv_st_open_buffer */
    qv_st_tensor *tensors; /* [n] sorted by name */
    size_t n;
    char **meta; /* [2 * n_meta] key, value pairs */
    size_t n_meta;
};

struct qv_st_set {
    qv_st_file **files; /* [n_files] */
    size_t n_files;
    const qv_st_tensor **index; /* [n_index] all tensors of all files, sorted by name */
    size_t n_index;
};

/* One tensor record while parsing: kept separately so we can sort by offsets. */
typedef struct st_rec {
    qv_st_tensor t;
    uint64_t begin, end;
    const char *dtype_str; /* static string from the dtype table */
    int bits;
} st_rec;

static const struct {
    const char *name;
    int bits;
} st_dtypes[] = {
    {"BOOL", 8},    {"U8", 8},          {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8},
    {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},
    {"F16", 16},    {"BF16", 16},       {"I32", 32},        {"U32", 32},    {"F32", 32},
    {"I64", 64},    {"U64", 64},        {"F64", 64},        {"C64", 64},    {"F4", 4},
    {"F6_E2M3", 6}, {"F6_E3M2", 6},
};

int qv_st_dtype_bits(const char *dtype) {
    for (size_t i = 0; i < QV_ARRAY_LEN(st_dtypes); i++) {
        if (!strcmp(st_dtypes[i].name, dtype)) return st_dtypes[i].bits;
    }
    return 0;
}

static const char *st_dtype_static(const char *dtype) {
    for (size_t i = 0; i < QV_ARRAY_LEN(st_dtypes); i++) {
        if (!strcmp(st_dtypes[i].name, dtype)) return st_dtypes[i].name;
    }
    return NULL;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF). Returns the offset of the first bad
 * byte or len when valid. */
static size_t utf8_check(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp, min;
        if ((c & 0xE0) == 0xC0) {
            n = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return i;
        }
        if (len - i < n) return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
        i += n;
    }
    return len;
}

static bool json_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* A JSON number that is a non-negative integer representable exactly. */
static bool json_uint(const cJSON *v, uint64_t *out) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0.0) || d > MAX_EXACT_INT || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

/* Frees a pointer held through a const-qualified field (the object owns it). */
static void free_const(const void *p) {
    void *q;
    memcpy(&q, &p, sizeof(q));
    qv_free(q);
}

static void file_free(qv_st_file *f) {
    if (!f) return;
    for (size_t i = 0; i < f->n; i++)
        free_const(f->tensors[i].name);
    qv_free(f->tensors);
    for (size_t i = 0; i < 2 * f->n_meta; i++)
        qv_free(f->meta[i]);
    qv_free(f->meta);
    qv_mmap_close(&f->map);
    qv_free(f);
}

void qv_st_close(qv_st_file *f) { file_free(f); }

static int cmp_rec_offset(const void *a, const void *b) {
    const st_rec *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    const qv_st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static qv_status parse_metadata(qv_st_file *f, const cJSON *meta, qv_error *err) {
    if (!cJSON_IsObject(meta)) {
        return qv_errorf(err, QV_ERR_INVALID, "__metadata__ is not an object of strings");
    }
    size_t n = (size_t)cJSON_GetArraySize(meta);
    if (n == 0) return QV_OK;
    f->meta = qv_calloc(2 * n, sizeof(char *));
    if (!f->meta) return qv_errorf(err, QV_ERR_NOMEM, "out of memory reading __metadata__");
    for (const cJSON *e = meta->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->string) {
            return qv_errorf(err, QV_ERR_INVALID, "__metadata__ value of '%s' is not a string",
                             e->string ? e->string : "?");
        }
        size_t i = f->n_meta;
        f->meta[2 * i] = qv_strdup(e->string);
        f->meta[2 * i + 1] = qv_strdup(e->valuestring);
        f->n_meta++;
        if (!f->meta[2 * i] || !f->meta[2 * i + 1]) {
            return qv_errorf(err, QV_ERR_NOMEM, "out of memory reading __metadata__");
        }
    }
    return QV_OK;
}

/* Fills rec from one header entry (everything but the offset walk). */
static qv_status parse_entry(const cJSON *e, st_rec *rec, qv_error *err) {
    const char *name = e->string;
    if (!cJSON_IsObject(e)) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': entry is not an object", name);
    }
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': missing or non-string dtype", name);
    }
    if (!cJSON_IsArray(shape)) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': missing or non-array shape", name);
    }
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': data_offsets must be [begin, end]",
                         name);
    }
    rec->dtype_str = st_dtype_static(dt->valuestring);
    if (!rec->dtype_str) {
        return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': unknown dtype '%.32s'", name,
                         dt->valuestring);
    }
    rec->bits = qv_st_dtype_bits(rec->dtype_str);
    int nd = cJSON_GetArraySize(shape);
    if (nd > QV_ST_MAX_DIMS) {
        return qv_errorf(err, QV_ERR_UNSUPPORTED, "tensor '%s': %d dimensions (max %d)", name, nd,
                         QV_ST_MAX_DIMS);
    }
    rec->t.n_dims = nd;
    uint64_t n_elems = 1;
    int k = 0;
    for (int i = 0; i < QV_ST_MAX_DIMS; i++)
        rec->t.shape[i] = 1;
    for (const cJSON *d = shape->child; d; d = d->next, k++) {
        uint64_t v;
        if (!json_uint(d, &v)) {
            return qv_errorf(err, QV_ERR_INVALID,
                             "tensor '%s': shape[%d] is not a non-negative integer", name, k);
        }
        if (__builtin_mul_overflow(n_elems, v, &n_elems) || n_elems > (uint64_t)INT64_MAX) {
            return qv_errorf(err, QV_ERR_INVALID, "tensor '%s': element count overflows", name);
        }
        rec->t.shape[k] = (int64_t)v;
    }
    rec->t.n_elems = (int64_t)n_elems;
    if (!json_uint(offs->child, &rec->begin) || !json_uint(offs->child->next, &rec->end)) {
        return qv_errorf(err, QV_ERR_INVALID,
                         "tensor '%s': data_offsets are not non-negative integers", name);
    }
    return QV_OK;
}

static qv_status parse_buffer(const uint8_t *buf, size_t len, qv_st_file *f, qv_error *err) {
    qv_status st = QV_OK;
    cJSON *root = NULL;
    st_rec *recs = NULL;
    if (len < 8) {
        return qv_errorf(err, QV_ERR_INVALID, "file is %zu bytes, too small for a header", len);
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | buf[i];
    if (hlen > QV_ST_MAX_HEADER) {
        return qv_errorf(err, QV_ERR_LIMIT, "header length %llu exceeds the %llu-byte limit",
                         (unsigned long long)hlen, (unsigned long long)QV_ST_MAX_HEADER);
    }
    if (hlen > (uint64_t)len - 8) {
        return qv_errorf(err, QV_ERR_INVALID,
                         "header length %llu runs past the end of the %zu-byte file",
                         (unsigned long long)hlen, len);
    }
    const uint8_t *hdr = buf + 8;
    size_t bad = utf8_check(hdr, (size_t)hlen);
    if (bad != hlen) {
        return qv_errorf(err, QV_ERR_INVALID, "header is not valid UTF-8 (byte %zu)", bad);
    }
    for (size_t i = 0; i < hlen; i++) {
        if (hdr[i] < 0x20 && !json_ws(hdr[i])) {
            return qv_errorf(err, QV_ERR_INVALID, "header has control byte 0x%02x at %zu", hdr[i],
                             i);
        }
    }
    size_t lead = 0;
    while (lead < hlen && json_ws(hdr[lead]))
        lead++;
    if (lead == hlen || hdr[lead] != '{') {
        return qv_errorf(err, QV_ERR_INVALID, "header does not start with a JSON object");
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts((const char *)hdr + lead, (size_t)hlen - lead, &end, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        size_t at = ep && ep >= (const char *)hdr && ep <= (const char *)hdr + hlen
                        ? (size_t)(ep - (const char *)hdr)
                        : 0;
        /* cJSON also fails on allocation failure; it cannot tell us which, so say both. */
        return qv_errorf(err, QV_ERR_INVALID, "header is not valid JSON (near byte %zu)", at);
    }
    for (const char *p = end; p < (const char *)hdr + hlen; p++) {
        if (!json_ws((uint8_t)*p)) {
            st = qv_errorf(err, QV_ERR_INVALID, "trailing bytes after the header JSON object");
            goto fail;
        }
    }
    if (!cJSON_IsObject(root)) {
        st = qv_errorf(err, QV_ERR_INVALID, "header is not a JSON object");
        goto fail;
    }
    size_t n_entries = (size_t)cJSON_GetArraySize(root);
    recs = qv_calloc(n_entries ? n_entries : 1, sizeof(*recs));
    if (!recs) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory reading the header");
        goto fail;
    }
    size_t n = 0;
    bool seen_meta = false;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!e->string) {
            st = qv_errorf(err, QV_ERR_INVALID, "header entry without a name");
            goto fail;
        }
        if (!strcmp(e->string, "__metadata__")) {
            if (seen_meta) {
                st = qv_errorf(err, QV_ERR_INVALID, "duplicate key '__metadata__'");
                goto fail;
            }
            seen_meta = true;
            if ((st = parse_metadata(f, e, err)) != QV_OK) goto fail;
            continue;
        }
        if ((st = parse_entry(e, &recs[n], err)) != QV_OK) goto fail;
        recs[n].t.name = e->string; /* borrowed from cJSON until copied below */
        n++;
    }
    qsort(recs, n, sizeof(*recs), cmp_rec_offset);
    uint64_t data_len = (uint64_t)len - 8 - hlen;
    uint64_t start = 0;
    for (size_t i = 0; i < n; i++) {
        st_rec *r = &recs[i];
        if (r->begin != start || r->end < r->begin) {
            st = qv_errorf(err, QV_ERR_INVALID,
                           "tensor '%s': data_offsets [%llu, %llu] leave a gap or overlap "
                           "(expected begin %llu)",
                           r->t.name, (unsigned long long)r->begin, (unsigned long long)r->end,
                           (unsigned long long)start);
            goto fail;
        }
        uint64_t nbits;
        if (__builtin_mul_overflow((uint64_t)r->t.n_elems, (uint64_t)r->bits, &nbits)) {
            st = qv_errorf(err, QV_ERR_INVALID, "tensor '%s': byte size overflows", r->t.name);
            goto fail;
        }
        if (nbits % 8 != 0) {
            st = qv_errorf(err, QV_ERR_INVALID, "tensor '%s': %llu bits is not whole bytes",
                           r->t.name, (unsigned long long)nbits);
            goto fail;
        }
        if (r->end - r->begin != nbits / 8) {
            st = qv_errorf(err, QV_ERR_INVALID,
                           "tensor '%s': data_offsets span %llu bytes, shape and dtype %s need "
                           "%llu",
                           r->t.name, (unsigned long long)(r->end - r->begin), r->dtype_str,
                           (unsigned long long)(nbits / 8));
            goto fail;
        }
        if (r->end > data_len) {
            st = qv_errorf(err, QV_ERR_INVALID,
                           "tensor '%s': data_offsets end %llu is past the %llu-byte buffer",
                           r->t.name, (unsigned long long)r->end, (unsigned long long)data_len);
            goto fail;
        }
        start = r->end;
    }
    if (start != data_len) {
        st = qv_errorf(err, QV_ERR_INVALID,
                       "tensors cover %llu bytes but the data buffer has %llu (not fully "
                       "indexed)",
                       (unsigned long long)start, (unsigned long long)data_len);
        goto fail;
    }
    /* Structure is valid; now refuse what quiver cannot use. */
    for (size_t i = 0; i < n; i++) {
        const char *d = recs[i].dtype_str;
        if (!strcmp(d, "F32")) {
            recs[i].t.dtype = QV_DTYPE_F32;
        } else if (!strcmp(d, "F16")) {
            recs[i].t.dtype = QV_DTYPE_F16;
        } else if (!strcmp(d, "BF16")) {
            recs[i].t.dtype = QV_DTYPE_BF16;
        } else {
            st = qv_errorf(err, QV_ERR_UNSUPPORTED,
                           "tensor '%s': dtype %s is not supported (quiver reads F32, F16, BF16)",
                           recs[i].t.name, d);
            goto fail;
        }
    }
    f->tensors = qv_calloc(n ? n : 1, sizeof(*f->tensors));
    if (!f->tensors) {
        st = qv_errorf(err, QV_ERR_NOMEM, "out of memory reading the header");
        goto fail;
    }
    const uint8_t *data = buf + 8 + hlen;
    for (size_t i = 0; i < n; i++) {
        qv_st_tensor *t = &f->tensors[i];
        *t = recs[i].t;
        t->data = data + recs[i].begin;
        t->n_bytes = recs[i].end - recs[i].begin;
        t->name = qv_strdup(recs[i].t.name);
        if (!t->name) {
            st = qv_errorf(err, QV_ERR_NOMEM, "out of memory reading the header");
            goto fail;
        }
        f->n++;
    }
    qsort(f->tensors, f->n, sizeof(*f->tensors), cmp_tensor_name);
    for (size_t i = 1; i < f->n; i++) {
        if (!strcmp(f->tensors[i].name, f->tensors[i - 1].name)) {
            st = qv_errorf(err, QV_ERR_INVALID, "duplicate tensor name '%s'", f->tensors[i].name);
            goto fail;
        }
    }
fail:
    qv_free(recs);
    cJSON_Delete(root);
    return st;
}

qv_status qv_st_open_buffer(const void *buf, size_t len, qv_st_file **out, qv_error *err) {
    *out = NULL;
    qv_st_file *f = qv_calloc(1, sizeof(*f));
    if (!f) return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    qv_status st = parse_buffer(buf, len, f, err);
    if (st != QV_OK) {
        file_free(f);
        return st;
    }
    *out = f;
    return QV_OK;
}

qv_status qv_st_open(const char *path, qv_st_file **out, qv_error *err) {
    *out = NULL;
    qv_st_file *f = qv_calloc(1, sizeof(*f));
    if (!f) return qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", path);
    qv_status st = qv_mmap_open(path, &f->map, err);
    if (st == QV_OK) {
        st = parse_buffer(f->map.data, f->map.len, f, err);
        if (st != QV_OK) qv_error_prefix(err, "%s", path);
    }
    if (st != QV_OK) {
        file_free(f);
        return st;
    }
    *out = f;
    return QV_OK;
}

size_t qv_st_n_tensors(const qv_st_file *f) { return f->n; }

const qv_st_tensor *qv_st_tensor_at(const qv_st_file *f, size_t i) {
    return i < f->n ? &f->tensors[i] : NULL;
}

const qv_st_tensor *qv_st_find(const qv_st_file *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[mid].name, name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

const char *qv_st_metadata(const qv_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++) {
        if (!strcmp(f->meta[2 * i], key)) return f->meta[2 * i + 1];
    }
    return NULL;
}

/* ---- sharded sets ---- */

void qv_st_set_close(qv_st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++)
        qv_st_close(s->files[i]);
    qv_free(s->files);
    qv_free(s->index);
    qv_free(s);
}

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    const qv_st_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Builds the name-sorted index over every file; rejects a name present in two shards. */
static qv_status build_index(qv_st_set *s, qv_error *err) {
    size_t n = 0;
    for (size_t i = 0; i < s->n_files; i++)
        n += s->files[i]->n;
    s->index = qv_calloc(n ? n : 1, sizeof(*s->index));
    if (!s->index) return qv_errorf(err, QV_ERR_NOMEM, "out of memory indexing tensors");
    for (size_t i = 0; i < s->n_files; i++) {
        for (size_t k = 0; k < s->files[i]->n; k++)
            s->index[s->n_index++] = &s->files[i]->tensors[k];
    }
    qsort(s->index, s->n_index, sizeof(*s->index), cmp_tensor_ptr_name);
    for (size_t i = 1; i < s->n_index; i++) {
        if (!strcmp(s->index[i]->name, s->index[i - 1]->name)) {
            return qv_errorf(err, QV_ERR_INVALID, "tensor '%s' appears in two shards",
                             s->index[i]->name);
        }
    }
    return QV_OK;
}

static qv_status open_sharded(qv_st_set *s, const char *dir, const char *index_path,
                              qv_error *err) {
    qv_status st;
    char *text = NULL, *shard_path = NULL;
    cJSON *root = NULL;
    const char **shard_names = NULL;
    size_t len = 0;
    if ((st = qv_read_file(index_path, 64u << 20, &text, &len, err)) != QV_OK) return st;
    root = cJSON_ParseWithLength(text, len);
    if (!root || !cJSON_IsObject(root)) {
        st = qv_errorf(err, QV_ERR_INVALID, "%s: not a valid JSON object", index_path);
        goto fail;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        st = qv_errorf(err, QV_ERR_INVALID, "%s: missing \"weight_map\" object", index_path);
        goto fail;
    }
    size_t n_keys = (size_t)cJSON_GetArraySize(wm);
    shard_names = qv_calloc(n_keys ? n_keys : 1, sizeof(*shard_names));
    s->files = qv_calloc(n_keys ? n_keys : 1, sizeof(*s->files));
    if (!shard_names || !s->files) {
        st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", index_path);
        goto fail;
    }
    /* The unique shard file names, in order of first appearance. */
    size_t n_shards = 0;
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || !e->string) {
            st = qv_errorf(err, QV_ERR_INVALID, "%s: weight_map value of '%s' is not a string",
                           index_path, e->string ? e->string : "?");
            goto fail;
        }
        const char *v = e->valuestring;
        if (!v[0] || strchr(v, '/') || strchr(v, '\\') || !strcmp(v, "..") || !strcmp(v, ".")) {
            st = qv_errorf(err, QV_ERR_INVALID, "%s: shard name '%.64s' is not a plain file name",
                           index_path, v);
            goto fail;
        }
        size_t k = 0;
        while (k < n_shards && strcmp(shard_names[k], v))
            k++;
        if (k == n_shards) shard_names[n_shards++] = v;
    }
    for (size_t k = 0; k < n_shards; k++) {
        shard_path = qv_path_join(dir, shard_names[k]);
        if (!shard_path) {
            st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", index_path);
            goto fail;
        }
        if ((st = qv_st_open(shard_path, &s->files[s->n_files], err)) != QV_OK) goto fail;
        s->n_files++;
        qv_free(shard_path);
        shard_path = NULL;
    }
    if ((st = build_index(s, err)) != QV_OK) {
        qv_error_prefix(err, "%s", index_path);
        goto fail;
    }
    /* Union check: each weight_map entry is in the shard it names, and nothing else exists. */
    size_t n_entries = 0;
    for (const cJSON *e = wm->child; e; e = e->next, n_entries++) {
        size_t k = 0;
        while (strcmp(shard_names[k], e->valuestring))
            k++;
        if (!qv_st_find(s->files[k], e->string)) {
            st = qv_errorf(err, QV_ERR_INVALID, "%s: tensor '%s' is not in shard %s", index_path,
                           e->string, e->valuestring);
            goto fail;
        }
    }
    if (n_entries != s->n_index) {
        /* Duplicate keys in weight_map, or tensors the index does not list. */
        for (size_t i = 0; i < s->n_index; i++) {
            if (!cJSON_GetObjectItemCaseSensitive(wm, s->index[i]->name)) {
                st = qv_errorf(err, QV_ERR_INVALID,
                               "%s: tensor '%s' is in a shard but not in "
                               "weight_map",
                               index_path, s->index[i]->name);
                goto fail;
            }
        }
        st = qv_errorf(err, QV_ERR_INVALID, "%s: weight_map has duplicate keys", index_path);
        goto fail;
    }
    st = QV_OK;
fail:
    qv_free(shard_path);
    qv_free(shard_names);
    cJSON_Delete(root);
    qv_free(text);
    return st;
}

qv_status qv_st_set_open_dir(const char *dir, qv_st_set **out, qv_error *err) {
    *out = NULL;
    qv_status st;
    char *index_path = NULL, *single_path = NULL;
    qv_st_set *s = qv_calloc(1, sizeof(*s));
    index_path = qv_path_join(dir, "model.safetensors.index.json");
    single_path = qv_path_join(dir, "model.safetensors");
    if (!s || !index_path || !single_path) {
        st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", dir);
        goto fail;
    }
    struct stat sb;
    if (stat(index_path, &sb) == 0) {
        if ((st = open_sharded(s, dir, index_path, err)) != QV_OK) goto fail;
    } else {
        s->files = qv_calloc(1, sizeof(*s->files));
        if (!s->files) {
            st = qv_errorf(err, QV_ERR_NOMEM, "%s: out of memory", dir);
            goto fail;
        }
        if ((st = qv_st_open(single_path, &s->files[0], err)) != QV_OK) goto fail;
        s->n_files = 1;
        if ((st = build_index(s, err)) != QV_OK) goto fail;
    }
    qv_free(index_path);
    qv_free(single_path);
    *out = s;
    return QV_OK;
fail:
    qv_free(index_path);
    qv_free(single_path);
    qv_st_set_close(s);
    return st;
}

const qv_st_tensor *qv_st_set_find(const qv_st_set *s, const char *name) {
    size_t lo = 0, hi = s->n_index;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(s->index[mid]->name, name);
        if (c == 0) return s->index[mid];
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}

size_t qv_st_set_n_files(const qv_st_set *s) { return s->n_files; }

const qv_st_file *qv_st_set_file_at(const qv_st_set *s, size_t i) {
    return i < s->n_files ? s->files[i] : NULL;
}

size_t qv_st_set_mapped_bytes(const qv_st_set *s) {
    size_t b = 0;
    for (size_t i = 0; i < s->n_files; i++)
        b += s->files[i]->map.len;
    return b;
}
