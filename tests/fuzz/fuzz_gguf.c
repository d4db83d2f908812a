/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader (qv_gguf_open_buffer). On success it
 * walks every KV through every getter (all array elements included) and touches the first and
 * last byte of every tensor, so any bounds bug in validation becomes an ASan report.
 */
#include <stddef.h>
#include <stdint.h>

#include "engine/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qv_gguf *g = NULL;
    qv_error err;
    if (qv_gguf_open_buffer(data, size, &g, &err) != QV_OK) return 0;
    volatile uint64_t sink = 0;
    for (size_t i = 0; i < qv_gguf_n_kv(g); i++) {
        const char *k = qv_gguf_key_at(g, i);
        int64_t iv;
        double dv;
        bool bv;
        const char *s;
        size_t sl;
        enum qv_gguf_type et;
        uint64_t n;
        if (!qv_gguf_has(g, k)) __builtin_trap();
        if (qv_gguf_get_int(g, k, &iv)) sink += (uint64_t)iv;
        if (qv_gguf_get_float(g, k, &dv)) sink += (uint64_t)(dv == dv);
        if (qv_gguf_get_bool(g, k, &bv)) sink += bv;
        if (qv_gguf_get_str(g, k, &s, &sl) && sl) sink += (uint8_t)s[0] + (uint8_t)s[sl - 1];
        if (qv_gguf_get_arr(g, k, &et, &n)) {
            for (uint64_t j = 0; j < n; j++) {
                if (qv_gguf_arr_str(g, k, j, &s, &sl) && sl) sink += (uint8_t)s[sl - 1];
                if (qv_gguf_arr_float(g, k, j, &dv)) sink += (uint64_t)(dv == dv);
                if (qv_gguf_arr_int(g, k, j, &iv)) sink += (uint64_t)iv;
            }
        }
        (void)qv_gguf_type_at(g, i);
    }
    for (size_t i = 0; i < qv_gguf_n_tensors(g); i++) {
        const qv_gguf_tensor *t = qv_gguf_tensor_at(g, i);
        if (qv_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        if (t->n_bytes) {
            const uint8_t *p = t->data;
            sink += p[0] + p[t->n_bytes - 1];
        }
    }
    (void)sink;
    qv_gguf_close(g);
    return 0;
}
