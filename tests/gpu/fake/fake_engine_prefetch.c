/*
 * fake_engine_prefetch.c - for tests/gpu/fake/run_fake.sh only: the engine's adapter prefetch
 * (engine.c -> qv_forward_prefetch_adapter -> lora_cuda.c -> adapter_pool.c) on the fake CUDA
 * runtime, with the CPU backend named "cuda" (fake_backend.c).
 *
 * Four requests on four LoRA fixtures of tiny-llama-gqa, a KV cache that admits two at a time:
 *  - the first step uploads the adapters of the two running sequences and prefetches those of
 *    the two waiting ones (host-to-device bytes counted by fake_cudart.c);
 *  - no later step uploads anything: the waiting sequences find their adapters resident when
 *    they are admitted;
 *  - every request completes with its max_tokens tokens, and its tokens equal those of the same
 *    request run alone on the same engine (prefetch changes no output).
 * Control: a request admitted as soon as it arrives uploads its adapter in a later step, so
 * the counter would see uploads there.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/engine.h"
#include "test_util.h"

#define MODEL "tests/fixtures/models/tiny-llama-gqa"
#define AD_DIR "tests/fixtures/adapters/tiny-llama-gqa/"
#define N_REQ 4
#define MAX_TOK 8

extern unsigned long long qv_fake_h2d_bytes;

static const char *const ad_names[N_REQ] = {"lora_qv_r4", "lora_all_r8_rslora", "lora_patterns",
                                            "lora_all_r8_f16"};

typedef struct out {
    int32_t toks[MAX_TOK];
    int n;
    int done;
} out;

static void on_token(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                     enum qv_finish_reason fin) {
    (void)seq_id;
    (void)lp;
    out *o = user;
    if (o->n < MAX_TOK) o->toks[o->n++] = tok;
    if (fin != QV_FINISH_NONE) o->done = 1;
}

static qv_engine *make_engine(size_t kv_pages) {
    const char *path = qv_test_path(MODEL);
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = path;
    c.load_tokenizer = false;
    c.n_threads = 2;
    c.device = "cuda";
    c.kv_page_size = 16;
    qv_engine *e = NULL;
    qv_error err = {0};
    /* bytes per token: 2 (K, V) x layers x kv dim x 4 */
    c.kv_bytes = kv_pages * 16 * 2 * 3 * 32 * 4;
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    return e;
}

static void load_adapters(qv_engine *e, qv_adapter **ads) {
    for (int i = 0; i < N_REQ; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, AD_DIR "%s", ad_names[i]);
        const char *path = qv_test_path(rel);
        qv_error err = {0};
        if (qv_adapter_load(path, qv_engine_model(e), NULL, &ads[i], &err) != QV_OK)
            fail_msg("adapter %s: %s", ad_names[i], err.msg);
    }
}

static void add(qv_engine *e, const qv_adapter *ad, out *o) {
    static const int32_t prompt[6] = {5, 17, 42, 99, 7, 23};
    qv_gen_params p;
    qv_gen_params_default(&p);
    p.max_tokens = MAX_TOK;
    p.ignore_eos = true;
    p.adapter = ad;
    qv_error err = {0};
    if (qv_engine_add(e, prompt, 6, &p, on_token, o, NULL, &err) != QV_OK)
        fail_msg("add: %s", err.msg);
}

/* Runs all requests; h2d[k] = bytes uploaded during step k. Returns the number of steps. */
static int run_all(qv_engine *e, unsigned long long *h2d, int max_steps) {
    int k = 0;
    while (qv_engine_n_active(e) > 0 && k < max_steps) {
        unsigned long long b0 = qv_fake_h2d_bytes;
        qv_error err = {0};
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
        h2d[k++] = qv_fake_h2d_bytes - b0;
    }
    assert_int_equal(qv_engine_n_active(e), 0);
    return k;
}

static void test_prefetch_waiting(void **state) {
    (void)state;
    unsetenv("QV_CUDA_ADAPTER_POOL_MB"); /* 512 MiB (fake): every adapter fits */
    /* 3 pages: two 1-page sequences run (the second with one page of headroom), two wait */
    qv_engine *e = make_engine(3);
    qv_adapter *ads[N_REQ];
    load_adapters(e, ads);
    out o[N_REQ];
    memset(o, 0, sizeof o);
    for (int i = 0; i < N_REQ; i++)
        add(e, ads[i], &o[i]);
    unsigned long long h2d[64] = {0};
    int n = run_all(e, h2d, 64);
    unsigned long long later = 0;
    for (int k = 1; k < n; k++)
        later += h2d[k];
    printf("prefetch: %d steps; uploaded %llu bytes in step 1, %llu after\n", n, h2d[0], later);
    /* step 1: 2 running + 2 prefetched adapter images; each image is at least its bf16 bytes */
    unsigned long long min_all = 0;
    for (int i = 0; i < N_REQ; i++) {
        unsigned long long half = 0;
        for (int l = 0; l < ads[i]->n_layers; l++)
            for (int p = 0; p < QV_PROJ_COUNT; p++) {
                const qv_lora *lo = &ads[i]->layers[l].lora[p];
                if (lo->rank > 0)
                    half += 2ull * (unsigned long long)lo->rank * (lo->n_in + lo->n_out);
            }
        min_all += half;
    }
    assert_true(h2d[0] >= min_all);
    assert_true(later == 0);
    /* each request alone on a fresh engine gives the same tokens */
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(o[i].n, MAX_TOK);
        assert_true(o[i].done);
        qv_engine *e1 = make_engine(3);
        out solo = {0};
        add(e1, ads[i], &solo);
        unsigned long long h[64];
        run_all(e1, h, 64);
        assert_memory_equal(solo.toks, o[i].toks, sizeof(solo.toks));
        qv_engine_destroy(e1);
    }
    qv_engine_destroy(e);
    for (int i = 0; i < N_REQ; i++)
        qv_adapter_free(ads[i]);
}

/* Control: a request admitted as soon as it arrives (nothing waits, nothing to prefetch)
 * uploads its adapter in a later step: the counter above would have seen such uploads. */
static void test_control_no_wait(void **state) {
    (void)state;
    unsetenv("QV_CUDA_ADAPTER_POOL_MB");
    qv_engine *e = make_engine(3);
    qv_adapter *ads[N_REQ];
    load_adapters(e, ads);
    out o[3];
    memset(o, 0, sizeof o);
    add(e, ads[0], &o[0]);
    add(e, ads[1], &o[1]);
    unsigned long long h2d[64] = {0};
    (void)run_all(e, h2d, 64);
    add(e, ads[2], &o[2]); /* admitted by the next step */
    unsigned long long b0 = qv_fake_h2d_bytes;
    qv_error err = {0};
    assert_int_equal(qv_engine_step(e, &err), QV_OK);
    const unsigned long long up = qv_fake_h2d_bytes - b0;
    (void)run_all(e, h2d, 64);
    printf("control: a request admitted on arrival uploads %llu bytes in its first step\n", up);
    assert_true(up > 0);
    assert_int_equal(o[2].n, MAX_TOK);
    qv_engine_destroy(e);
    for (int i = 0; i < N_REQ; i++)
        qv_adapter_free(ads[i]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefetch_waiting),
        cmocka_unit_test(test_control_no_wait),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
