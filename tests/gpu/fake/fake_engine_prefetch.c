/*
 * fake_engine_prefetch.c - for tests/gpu/fake/run_fake.sh only: the engine's adapter prefetch
 * (engine.c -> qv_forward_prefetch_adapter -> lora_cuda.c -> adapter_pool.c) on the real CUDA
 * backend with its kernels on the CPU emulator (tests/gpu/emu/) and fake_cudart.c's memory.
 *
 * Four requests on four LoRA fixtures of tiny-llama-gqa, a KV cache that admits two at a time:
 *  - the first step admits the first request (nothing else runs) and converts and uploads its
 *    adapter; the other three wait until their adapters are on the device (the second for its
 *    adapter only, the last two for KV pages too): those are converted on the pool's converter
 *    thread (never by a step) and copied from the pinned host tier by later prefetches: four
 *    device loads in all, every one a copy of a tier image (qv_engine_get_stats);
 *  - every request completes with its max_tokens tokens, and its tokens equal those of the same
 *    request run alone on the same engine (prefetch changes no output).
 * Control: a request admitted as soon as it arrives uploads its adapter in a later step, so
 * the counter would see uploads there.
 * Forward level (pool without a host tier, so that a prefetch uploads in the run that issues
 * it): with a pool that holds two adapters, a prefetch queued before a run whose adapter is
 * resident but least recently used evicts the other (previous run's) adapter, not the one the
 * run uses (the queue is issued after the run holds its adapters).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/engine.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "test_util.h"

#define MODEL "tests/fixtures/models/tiny-llama-gqa"
#define AD_DIR "tests/fixtures/adapters/tiny-llama-gqa/"
#define N_REQ 4
#define MAX_TOK 8

/* adapter bytes uploaded to the device pool so far (the engine's device adapter counters) */
static unsigned long long pool_bytes_up(const qv_engine *e) {
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    return st.dev_adapter_bytes;
}

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
        unsigned long long b0 = pool_bytes_up(e);
        qv_error err = {0};
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
        h2d[k++] = pool_bytes_up(e) - b0;
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
    qv_engine_stats es;
    qv_engine_get_stats(e, &es);
    printf("prefetch: %d steps; uploaded %llu bytes in step 1, %llu after; %llu device loads, "
           "%llu from tier images; %llu images converted in the background, %llu by a step\n",
           n, h2d[0], later, (unsigned long long)es.dev_adapter_loads,
           (unsigned long long)es.dev_adapter_pinned_hits,
           (unsigned long long)es.dev_adapter_pinned_fills_async,
           (unsigned long long)es.dev_adapter_pinned_fills_sync);
    assert_int_equal(es.dev_adapter_loads, N_REQ);
    assert_int_equal(es.dev_adapter_pinned_hits, N_REQ);
    assert_int_equal(es.dev_adapter_pinned_fills_sync, 1);  /* the first request's */
    assert_int_equal(es.dev_adapter_pinned_fills_async, 3); /* those of the three others */
    assert_true(es.admit_deferrals >= 1);
    /* step 1: the first adapter's image; each image is at least its bf16 bytes */
    unsigned long long min_run = 0, min_all = 0;
    for (int i = 0; i < N_REQ; i++) {
        unsigned long long half = 0;
        for (int l = 0; l < ads[i]->n_layers; l++)
            for (int p = 0; p < QV_PROJ_COUNT; p++) {
                const qv_lora *lo = &ads[i]->layers[l].lora[p];
                if (lo->rank > 0)
                    half += 2ull * (unsigned long long)lo->rank * (lo->n_in + lo->n_out);
            }
        min_all += half;
        if (i < 1) min_run += half;
    }
    assert_true(h2d[0] >= min_run);
    assert_true(h2d[0] + later >= min_all);
    /* each request alone on a fresh engine gives the same first tokens (a request run with
     * another adapter's weights would not); later ones may part where the bf16 rounding of a
     * batched step (GEMM) and a solo one (GEMV) meets a near tie */
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(o[i].n, MAX_TOK);
        assert_true(o[i].done);
        qv_engine *e1 = make_engine(3);
        out solo = {0};
        add(e1, ads[i], &solo);
        unsigned long long h[64];
        run_all(e1, h, 64);
        int same = 0;
        while (same < MAX_TOK && solo.toks[same] == o[i].toks[same])
            same++;
        printf("request %d: %d of %d tokens equal its solo run\n", i, same, MAX_TOK);
        assert_true(same >= 2);
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
    unsigned long long b0 = pool_bytes_up(e);
    qv_error err = {0};
    assert_int_equal(qv_engine_step(e, &err), QV_OK);
    const unsigned long long up = pool_bytes_up(e) - b0;
    (void)run_all(e, h2d, 64);
    printf("control: a request admitted on arrival uploads %llu bytes in its first step\n", up);
    assert_true(up > 0);
    assert_int_equal(o[2].n, MAX_TOK);
    qv_engine_destroy(e);
    for (int i = 0; i < N_REQ; i++)
        qv_adapter_free(ads[i]);
}

/* ---- forward level: a prefetch never evicts the adapters of the run that issues it ---- */

/* A rank-64 LoRA on all seven projections of tiny-llama-gqa (F32, small random values):
 * 3456 * 64 * 2 bytes = 432 KiB as bf16, 7 pages of 64 KiB, so a 1 MiB pool (16 pages) holds
 * two of them and not three. */
static qv_adapter *big_adapter(const qv_model *m, float *vals, size_t n_vals, unsigned seed) {
    return qv_test_make_lora(m, 64, 0.5f, vals, n_vals, seed);
}

static void test_prefetch_keeps_running_adapters(void **state) {
    (void)state;
    setenv("QV_CUDA_ADAPTER_POOL_MB", "1", 1);
    setenv("QV_CUDA_ADAPTER_PINNED_MB", "0", 1);
    qv_error err = {0};
    qv_model *m = NULL;
    qv_backend *be = NULL;
    qv_kv_cache *kv = NULL;
    qv_forward *f = NULL;
    if (qv_model_load(qv_test_path(MODEL), &m, &err) != QV_OK ||
        qv_backend_cuda_create(m, NULL, &be, &err) != QV_OK ||
        qv_kv_cache_create(be, &m->cfg, 4, 16, &kv, &err) != QV_OK ||
        qv_forward_create(m, be, kv, 16, &f, &err) != QV_OK)
        fail_msg("setup: %s", err.msg);
    const size_t n_vals = (size_t)1 << 18;
    float *vals = malloc(n_vals * sizeof(float));
    for (size_t i = 0; i < n_vals; i++)
        vals[i] = (float)((i * 2654435761u) % 1000u) * 1e-5f - 0.005f;
    qv_adapter *X = big_adapter(m, vals, n_vals, 1), *W = big_adapter(m, vals, n_vals, 2),
               *Y = big_adapter(m, vals, n_vals, 3);
    qv_kv_seq seq = {0};
    assert_int_equal(qv_kv_seq_reserve(kv, &seq, 8), QV_OK);
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.n_vocab);
    unsigned long long up[4];
    const qv_adapter *use[4] = {X, W, X, X};
    for (int k = 0; k < 4; k++) {
        if (k == 2) assert_int_equal(qv_forward_prefetch_adapter(f, Y, &err), QV_OK);
        const int32_t tok = 5, pos = k, sq = 0, li = 0, seg_start[2] = {0, 1};
        const qv_kv_seq *sp[1] = {&seq};
        const struct qv_adapter *seg_ad[1] = {use[k]};
        qv_batch b = {.n_tokens = 1,
                      .tokens = &tok,
                      .pos = &pos,
                      .seq = &sq,
                      .n_seqs = 1,
                      .seqs = sp,
                      .n_logits = 1,
                      .logits_idx = &li,
                      .n_segs = 1,
                      .seg_start = seg_start,
                      .seg_adapter = seg_ad};
        qv_forward_adapter_stats s0, s1;
        qv_forward_adapter_stats_get(f, &s0);
        if (qv_forward_run(f, &b, logits, &err) != QV_OK) fail_msg("run %d: %s", k, err.msg);
        qv_forward_adapter_stats_get(f, &s1);
        up[k] = s1.bytes_copied - s0.bytes_copied;
    }
    qv_forward_adapter_stats fs;
    qv_forward_adapter_stats_get(f, &fs);
    printf("forward prefetch: uploads per run %llu %llu %llu %llu; pool %zu bytes, %llu "
           "evictions, prefetches %llu (uploads %llu)\n",
           up[0], up[1], up[2], up[3], fs.pool_bytes, (unsigned long long)fs.evictions,
           (unsigned long long)fs.prefetches, (unsigned long long)fs.prefetch_uploads);
    /* run 2 (X, resident but least recently used, W held by run 1 until run 2 begins): only
     * Y's image is uploaded (it evicts W, not X); run 3 finds X resident */
    assert_true(up[0] > 0 && up[1] == up[0]);
    assert_true(up[2] == up[0]);
    assert_true(up[3] == 0);
    assert_int_equal(fs.prefetches, 1);
    assert_int_equal(fs.prefetch_uploads, 1);
    assert_int_equal(fs.evictions, 1);
    qv_kv_seq_release(kv, &seq);
    free(logits);
    qv_adapter *all[3] = {X, W, Y};
    for (int i = 0; i < 3; i++) {
        qv_test_free_lora(all[i]);
    }
    free(vals);
    qv_forward_destroy(f);
    qv_kv_cache_destroy(kv);
    be->iface->destroy(be);
    qv_model_free(m);
    unsetenv("QV_CUDA_ADAPTER_POOL_MB");
    unsetenv("QV_CUDA_ADAPTER_PINNED_MB");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefetch_waiting),
        cmocka_unit_test(test_control_no_wait),
        cmocka_unit_test(test_prefetch_keeps_running_adapters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
