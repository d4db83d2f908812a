/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors header parser and validator
 * (qv_st_open_buffer). On success every tensor's first and last byte is touched, so a bounds
 * bug in validation shows up under ASan as an out-of-bounds read of the input buffer.
 */
#include <stddef.h>
#include <stdint.h>

#include "engine/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qv_st_file *f = NULL;
    qv_error err;
    if (qv_st_open_buffer(data, size, &f, &err) != QV_OK) return 0;
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < qv_st_n_tensors(f); i++) {
        const qv_st_tensor *t = qv_st_tensor_at(f, i);
        if (qv_st_find(f, t->name) != t) __builtin_trap();
        if (t->n_bytes) {
            const uint8_t *p = t->data;
            sink ^= p[0];
            sink ^= p[t->n_bytes - 1];
        }
    }
    (void)qv_st_metadata(f, "format");
    (void)sink;
    qv_st_close(f);
    return 0;
}
