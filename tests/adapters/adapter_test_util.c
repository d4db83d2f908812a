/*
 * adapter_test_util.c - see adapter_test_util.h. Test-only code; plain malloc is fine here
 * because the allocation-failure sweeps only count qv_malloc calls made by quiver.
 */
#include "adapter_test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dtype.h"
#include "test_util.h"

char *at_read(const char *rel, size_t *len) {
    const char *p = qv_test_path(rel);
    FILE *f = fopen(p, "rb");
    if (!f) {
        fprintf(stderr, "missing fixture %s\n", p);
        abort();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (!b || fread(b, 1, (size_t)n, f) != (size_t)n) abort();
    b[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return b;
}

char *at_st_build(const at_tensor *ts, size_t n, size_t *len) {
    char hdr[16384];
    size_t h = 0, off = 0;
    h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "{");
    for (size_t i = 0; i < n; i++) {
        int64_t ne = 1;
        for (int d = 0; d < ts[i].n_dims; d++)
            ne *= ts[i].shape[d];
        size_t es = strcmp(ts[i].dtype, "F32") ? 2 : 4;
        h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[",
                              i ? "," : "", ts[i].name, ts[i].dtype);
        for (int d = 0; d < ts[i].n_dims; d++)
            h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "%s%lld", d ? "," : "",
                                  (long long)ts[i].shape[d]);
        h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "],\"data_offsets\":[%zu,%zu]}", off,
                              off + (size_t)ne * es);
        off += (size_t)ne * es;
    }
    h += (size_t)snprintf(hdr + h, sizeof(hdr) - h, "}");
    while (h % 8)
        hdr[h++] = ' ';
    char *b = calloc(1, 8 + h + off + 1);
    uint64_t hl = h;
    memcpy(b, &hl, 8);
    memcpy(b + 8, hdr, h);
    char *p = b + 8 + h;
    for (size_t i = 0; i < n; i++) {
        int64_t ne = 1;
        for (int d = 0; d < ts[i].n_dims; d++)
            ne *= ts[i].shape[d];
        for (int64_t j = 0; j < ne; j++) {
            float v = ts[i].data ? ts[i].data[j] : 0.0f;
            if (!strcmp(ts[i].dtype, "F32")) {
                memcpy(p, &v, 4);
                p += 4;
            } else {
                uint16_t x = strcmp(ts[i].dtype, "F16") ? qv_f32_to_bf16(v) : qv_f32_to_f16(v);
                memcpy(p, &x, 2);
                p += 2;
            }
        }
    }
    *len = 8 + h + off;
    return b;
}

const char *at_smollm2_path(void) {
    static char path[512];
    const char *home = getenv("QUIVER_HOME");
    if (home && *home)
        snprintf(path, sizeof(path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    else
        snprintf(path, sizeof(path), "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    return path;
}

static struct {
    char name[64];
    qv_model *m;
} models[8];

const qv_model *at_model(const char *name) {
    for (int i = 0; i < 8; i++)
        if (models[i].m && !strcmp(models[i].name, name)) return models[i].m;
    for (int i = 0; i < 8; i++) {
        if (models[i].m) continue;
        char rel[512];
        const char *path;
        if (!strcmp(name, "smollm2")) {
            path = at_smollm2_path();
            if (!qv_test_exists(path)) return NULL;
        } else {
            snprintf(rel, sizeof(rel), "tests/fixtures/models/%s", name);
            path = qv_test_path(rel);
        }
        qv_error err;
        if (qv_model_load(path, &models[i].m, &err) != QV_OK) {
            fprintf(stderr, "base model %s: %s\n", name, err.msg);
            abort();
        }
        snprintf(models[i].name, sizeof(models[i].name), "%s", name);
        return models[i].m;
    }
    abort();
}

void at_models_free(void) {
    for (int i = 0; i < 8; i++) {
        qv_model_free(models[i].m);
        models[i].m = NULL;
    }
}
