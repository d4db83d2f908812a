/*
 * fmt_test_helpers.h - helpers shared by the format/loader tests (test_safetensors.c,
 * test_gguf.c, test_model_load.c): a growable byte buffer with little-endian writers to craft
 * GGUF and safetensors files byte by byte, temp directories, file copy/patch, and a tiny JSON
 * fixture reader. Test-only code; static inline so each test includes only what it uses.
 */
#ifndef QV_FMT_TEST_HELPERS_H
#define QV_FMT_TEST_HELPERS_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/core.h"

typedef struct tbuf {
    uint8_t *p;
    size_t n, cap;
} tbuf;

static inline void tb_put(tbuf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    if (n) memcpy(b->p + b->n, d, n);
    b->n += n;
}
static inline void tb_u8(tbuf *b, uint8_t v) { tb_put(b, &v, 1); }
static inline void tb_u32(tbuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    tb_put(b, x, 4);
}
static inline void tb_u64(tbuf *b, uint64_t v) {
    tb_u32(b, (uint32_t)v);
    tb_u32(b, (uint32_t)(v >> 32));
}
static inline void tb_f32(tbuf *b, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    tb_u32(b, u);
}
static inline void tb_gstr(tbuf *b, const char *s) {
    tb_u64(b, strlen(s));
    tb_put(b, s, strlen(s));
}
static inline void tb_pad(tbuf *b, size_t align) {
    while (b->n % align)
        tb_u8(b, 0);
}
static inline void tb_free(tbuf *b) {
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* GGUF KV helpers. */
static inline void gg_kv_u32(tbuf *b, const char *k, uint32_t v) {
    tb_gstr(b, k);
    tb_u32(b, 4);
    tb_u32(b, v);
}
static inline void gg_kv_str(tbuf *b, const char *k, const char *v) {
    tb_gstr(b, k);
    tb_u32(b, 8);
    tb_gstr(b, v);
}
/* One tensor info: 1-D or 2-D. */
static inline void gg_tinfo(tbuf *b, const char *name, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                            uint32_t type, uint64_t off) {
    tb_gstr(b, name);
    tb_u32(b, n_dims);
    tb_u64(b, ne0);
    if (n_dims > 1) tb_u64(b, ne1);
    for (uint32_t i = 2; i < n_dims; i++)
        tb_u64(b, 1);
    tb_u32(b, type);
    tb_u64(b, off);
}

/* A safetensors file: 8-byte header length, the header text, then `data_len` bytes 0..255. */
static inline void st_build(tbuf *b, const char *header, size_t data_len) {
    tb_u64(b, strlen(header));
    tb_put(b, header, strlen(header));
    for (size_t i = 0; i < data_len; i++)
        tb_u8(b, (uint8_t)i);
}

static inline char *tmp_dir(void) {
    char tmpl[] = "/tmp/qv_fmt_XXXXXX";
    char *d = mkdtemp(tmpl);
    if (!d) abort();
    return strdup(d);
}

static inline void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(data, 1, n, f) != n) abort();
    fclose(f);
}

static inline uint8_t *read_all(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long l = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)l + 1);
    if (!p || fread(p, 1, (size_t)l, f) != (size_t)l) abort();
    p[l] = 0;
    fclose(f);
    *n = (size_t)l;
    return p;
}

static inline void copy_file(const char *src, const char *dst) {
    size_t n;
    uint8_t *p = read_all(src, &n);
    if (!p) abort();
    write_file(dst, p, n);
    free(p);
}

/* Replaces the first occurrence of `from` with `to` (same length) in a byte buffer. */
static inline int patch_bytes(uint8_t *p, size_t n, const char *from, const char *to) {
    size_t l = strlen(from);
    if (strlen(to) != l) abort();
    for (size_t i = 0; i + l <= n; i++) {
        if (!memcmp(p + i, from, l)) {
            memcpy(p + i, to, l);
            return (int)i;
        }
    }
    return -1;
}

/* Removes a directory tree of plain files (one level of subdirectories is enough here). */
static inline void rm_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
}

static inline cJSON *load_json_fixture(const char *path) {
    size_t n;
    uint8_t *p = read_all(path, &n);
    if (!p) {
        fprintf(stderr, "missing fixture %s (run tests/oracle/gen_formats_fixtures.py)\n", path);
        abort();
    }
    cJSON *j = cJSON_ParseWithLength((const char *)p, n);
    free(p);
    if (!j) abort();
    return j;
}

/* Floats of a JSON array into a malloc'ed buffer. */
static inline float *json_floats(const cJSON *arr, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    float *v = malloc((*n ? *n : 1) * sizeof(float));
    size_t i = 0;
    for (const cJSON *e = arr->child; e; e = e->next)
        v[i++] = (float)e->valuedouble;
    return v;
}

static inline uint8_t *hex_decode(const char *h, size_t *n) {
    size_t l = strlen(h) / 2;
    uint8_t *p = malloc(l ? l : 1);
    for (size_t i = 0; i < l; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1) abort();
        p[i] = (uint8_t)v;
    }
    *n = l;
    return p;
}

/* Routes cJSON allocations through qv_malloc so allocation-failure sweeps reach them. */
static inline void use_qv_cjson_hooks(void) {
    cJSON_Hooks h = {qv_malloc, qv_free};
    cJSON_InitHooks(&h);
}

#endif
