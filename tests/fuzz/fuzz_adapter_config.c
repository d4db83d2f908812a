/*
 * fuzz_adapter_config.c - libFuzzer target for the adapter loader over (config JSON, weights)
 * pairs (qv_adapter_load_buffer). Input layout: byte 0 = flags (bit 0: validate against a
 * synthetic base shaped like tests/fixtures/models/tiny-llama-gqa, so DoRA norms, prefix GQA
 * checks and shape checks run), then the config text, a NUL byte, then the safetensors bytes.
 * Seeds (tests/fuzz/corpus/fuzz_adapter_config/) are real PEFT / AdapterHub fixtures packed this
 * way. On success every array the adapter claims is read end to end, so a wrong size becomes
 * an ASan report; describe is run too.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "adapters/adapters.h"

enum { DIM = 64, NH = 8, NKV = 2, HD = 16, NFF = 128, NL = 3, NV = 288 };

static float ones[NV * DIM];
static qv_layer_weights layers[NL];
static qv_model base;

static qv_tensor mat(int64_t rows, int64_t cols) {
    qv_tensor t = {QV_DTYPE_F32, rows, cols, (size_t)cols * sizeof(float), ones};
    return t;
}

static const qv_model *synthetic_base(void) {
    if (base.layers) return &base;
    for (size_t i = 0; i < sizeof(ones) / sizeof(ones[0]); i++)
        ones[i] = 0.01f * (float)(i % 97);
    base.cfg = (qv_model_config){.arch = QV_ARCH_LLAMA,
                                 .n_vocab = NV,
                                 .dim = DIM,
                                 .n_ff = NFF,
                                 .n_layers = NL,
                                 .n_heads = NH,
                                 .n_kv_heads = NKV,
                                 .head_dim = HD};
    for (int l = 0; l < NL; l++) {
        layers[l].wq = mat(NH * HD, DIM);
        layers[l].wk = mat(NKV * HD, DIM);
        layers[l].wv = mat(NKV * HD, DIM);
        layers[l].wo = mat(DIM, NH * HD);
        layers[l].w_gate = mat(NFF, DIM);
        layers[l].w_up = mat(NFF, DIM);
        layers[l].w_down = mat(DIM, NFF);
    }
    base.tok_embd = base.lm_head = mat(NV, DIM);
    base.layers = layers;
    base.name = (char *)(uintptr_t) "tiny-llama-gqa";
    return &base;
}

static volatile float sink;

static void touch(const float *p, size_t n) {
    if (p && n) sink += p[0] + p[n - 1];
}

static void touch_lora(const qv_lora *x) {
    if (!x->rank) return;
    touch(x->a, (size_t)x->rank * (size_t)x->n_in);
    touch(x->b, (size_t)x->rank * (size_t)x->n_out);
    touch(x->b_bias, (size_t)x->n_out);
    touch(x->magnitude, (size_t)x->n_out);
    touch(x->dora_scale, (size_t)x->n_out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    const qv_model *b = (data[0] & 1) ? synthetic_base() : NULL;
    const char *cfg = (const char *)data + 1;
    const uint8_t *nul = memchr(data + 1, 0, size - 1);
    size_t cfg_len = nul ? (size_t)(nul - (data + 1)) : size - 1;
    const uint8_t *w = nul ? nul + 1 : data + size;
    size_t wl = (size_t)(data + size - w);
    qv_adapter *ad = NULL;
    qv_error err;
    qv_adapter_limits lim = {.max_rank = 64, .max_n_bytes = (size_t)64 << 20};
    if (qv_adapter_load_buffer(cfg, cfg_len, w, wl, b, &lim, &ad, &err) != QV_OK) return 0;
    for (int l = 0; l < ad->n_layers; l++) {
        const qv_adapter_layer *L = &ad->layers[l];
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            touch_lora(&L->lora[p]);
        const qv_bn_unit *u[2] = {&L->bn_attn, &L->bn_ffn};
        for (int j = 0; j < 2; j++) {
            if (!u[j]->d) continue;
            touch(u[j]->down_w, (size_t)u[j]->d * (size_t)ad->dim);
            touch(u[j]->up_w, (size_t)u[j]->d * (size_t)ad->dim);
            touch(u[j]->up_b, (size_t)ad->dim);
            touch(u[j]->scaling_ch, (size_t)ad->dim);
        }
    }
    touch_lora(&ad->embed_lora);
    touch_lora(&ad->lm_head_lora);
    if (ad->prefix_k) {
        size_t n = (size_t)ad->n_layers * (size_t)ad->n_virtual * (size_t)ad->n_kv_heads *
                   (size_t)ad->head_dim;
        touch(ad->prefix_k, n);
        touch(ad->prefix_v, n);
    }
    touch(ad->prompt_embd, (size_t)ad->n_virtual * (size_t)ad->dim);
    touch(ad->trainable_rows, (size_t)ad->n_trainable_tokens * (size_t)ad->dim);
    FILE *f = fopen("/dev/null", "w");
    if (f) {
        qv_adapter_describe(ad, f);
        fclose(f);
    }
    qv_adapter_free(ad);
    return 0;
}
