/*
 * fake_lora_churn.c - for tests/gpu/fake/run_fake.sh only: many adapters of different ranks
 * through a small device pool (evictions, re-uploads, the runtime's adapter map growing and
 * reusing entries, prefetches between steps), every step's logits against the CPU backend's
 * LoRA path on the same batch. The real CUDA backend, its kernels on the CPU emulator
 * (tests/gpu/emu/), runs lora_cuda.c and the pool (fake_cudart.c's memory); the weights reach
 * it rounded to bf16, the CPU keeps F32.
 * Fails when a segment runs another adapter's weights (e.g. stale map indices after the map is
 * compacted while a step's segments name its entries).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "test_util.h"

#define MODEL "tests/fixtures/models/tiny-llama-gqa"
#define N_AD 40
#define N_SEQ 4
#define STEPS 40
#define TOL 5e-3 /* vs the CPU; QV_CHURN_TOL overrides (the real backend_cuda.c rounds more) */

typedef struct side {
    qv_backend *be;
    qv_kv_cache *kv;
    qv_forward *f;
    qv_kv_seq seq[N_SEQ];
} side;

static void side_init(side *s, const qv_model *m, int cuda) {
    qv_error err = {0};
    memset(s, 0, sizeof(*s));
    qv_cuda_opts o;
    qv_cuda_opts_default(&o);
    o.arena_bytes = (size_t)64 << 20;
    o.max_tokens = 16;
    qv_status st =
        cuda ? qv_backend_cuda_create(m, &o, &s->be, &err) : qv_backend_cpu_create(2, &s->be, &err);
    if (st != QV_OK || qv_kv_cache_create(s->be, &m->cfg, 64, 16, &s->kv, &err) != QV_OK ||
        qv_forward_create(m, s->be, s->kv, 16, &s->f, &err) != QV_OK)
        fail_msg("setup: %s", err.msg);
}

static void side_free(side *s) {
    for (int i = 0; i < N_SEQ; i++)
        qv_kv_seq_release(s->kv, &s->seq[i]);
    qv_forward_destroy(s->f);
    qv_kv_cache_destroy(s->kv);
    s->be->iface->destroy(s->be);
}

static void run(side *s, int step, const qv_adapter *const *ads, float *logits) {
    qv_error err = {0};
    int32_t tok[N_SEQ], pos[N_SEQ], sq[N_SEQ], li[N_SEQ], seg_start[N_SEQ + 1];
    const qv_kv_seq *sp[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        assert_int_equal(qv_kv_seq_reserve(s->kv, &s->seq[i], step + 1), QV_OK);
        tok[i] = (int32_t)((step * 7 + i * 13) % 200 + 3);
        pos[i] = step;
        sq[i] = i;
        li[i] = i;
        seg_start[i] = i;
        sp[i] = &s->seq[i];
    }
    seg_start[N_SEQ] = N_SEQ;
    qv_batch b = {.n_tokens = N_SEQ,
                  .tokens = tok,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = N_SEQ,
                  .seqs = sp,
                  .n_logits = N_SEQ,
                  .logits_idx = li,
                  .n_segs = N_SEQ,
                  .seg_start = seg_start,
                  .seg_adapter = (const struct qv_adapter *const *)ads};
    if (qv_forward_run(s->f, &b, logits, &err) != QV_OK) fail_msg("step %d: %s", step, err.msg);
}

static void test_churn(void **state) {
    (void)state;
    const char *tol_env = getenv("QV_CHURN_TOL");
    const double tol = tol_env ? atof(tol_env) : TOL;
    qv_error err = {0};
    qv_model *m = NULL;
    if (qv_model_load(qv_test_path(MODEL), &m, &err) != QV_OK) fail_msg("model: %s", err.msg);
    const size_t n_vals = (size_t)1 << 18;
    float *vals = malloc(n_vals * sizeof(float));
    unsigned r = 12345u;
    for (size_t i = 0; i < n_vals; i++) {
        r = r * 1664525u + 1013904223u;
        vals[i] = ((float)(r >> 8) / 16777216.0f - 0.5f) * 0.2f;
    }
    static const int ranks[5] = {2, 4, 8, 16, 32};
    qv_adapter *ads[N_AD];
    for (int i = 0; i < N_AD; i++)
        ads[i] = qv_test_make_lora(m, ranks[i % 5], 4.0f / (float)ranks[i % 5], vals, n_vals,
                                   1000u + (unsigned)i);
    side cpu, dev, roomy;
    side_init(&cpu, m, 0);
    side_init(&dev, m, 1);
    side_init(&roomy, m, 1);
    const int V = m->cfg.n_vocab;
    float *lc = malloc(sizeof(float) * (size_t)(N_SEQ * V));
    float *ld = malloc(sizeof(float) * (size_t)(N_SEQ * V));
    float *lb = malloc(sizeof(float) * (size_t)(N_SEQ * V));
    float *lr = malloc(sizeof(float) * (size_t)(N_SEQ * V));
    double worst = 0, min_effect = 1e9, worst_roomy = 0;
    unsigned pick = 777u;
    for (int st = 0; st < STEPS; st++) {
        const qv_adapter *use[N_SEQ];
        for (int i = 0; i < N_SEQ; i++) {
            /* a popular head (0..5) and a long tail */
            pick = pick * 1664525u + 1013904223u;
            int k = (pick >> 8) % 3 ? (int)((pick >> 12) % 6) : (int)((pick >> 12) % N_AD);
            use[i] = ads[k];
        }
        /* next step's first adapter, prefetched */
        pick = pick * 1664525u + 1013904223u;
        assert_int_equal(qv_forward_prefetch_adapter(dev.f, ads[(pick >> 8) % N_AD], &err), QV_OK);
        run(&cpu, st, use, lc);
        /* the pools are created by the first run: 16 pages of 64 KiB, and one that never evicts */
        if (st == 0) setenv("QV_CUDA_ADAPTER_POOL_MB", "1", 1);
        run(&dev, st, use, ld);
        if (st == 0) setenv("QV_CUDA_ADAPTER_POOL_MB", "64", 1);
        run(&roomy, st, use, lr);
        for (int j = 0; j < N_SEQ * V; j++) /* same numerics, other placement: bitwise equal */
            if (fabs(ld[j] - lr[j]) > worst_roomy) worst_roomy = fabs(ld[j] - lr[j]);
        for (int i = 0; i < N_SEQ; i++) {
            double amax = 0, dmax = 0;
            for (int j = 0; j < V; j++) {
                const float a = lc[(size_t)i * V + j], d = ld[(size_t)i * V + j];
                amax = fabs(a) > amax ? fabs(a) : amax;
                dmax = fabs(a - d) > dmax ? fabs(a - d) : dmax;
            }
            const double e = amax > 0 ? dmax / amax : dmax;
            if (e > worst) worst = e;
            if (e > tol)
                print_error("step %d sequence %d (adapter rank %d): logits error %.4f > %.2g\n", st,
                            i, use[i]->layers[0].lora[0].rank, e, tol);
        }
    }
    /* the adapters matter: the same batch without them differs a lot */
    {
        const qv_adapter *none[N_SEQ] = {ads[0], ads[1], ads[2], ads[3]};
        run(&cpu, STEPS, none, lc);
        for (int i = 0; i < N_SEQ; i++)
            none[i] = NULL;
        side base;
        side_init(&base, m, 0);
        for (int st = 0; st <= STEPS; st++)
            run(&base, st, none, lb);
        double amax = 0, dmax = 0;
        for (int j = 0; j < N_SEQ * V; j++) {
            amax = fabs(lc[j]) > amax ? fabs(lc[j]) : amax;
            dmax = fabs(lc[j] - lb[j]) > dmax ? fabs(lc[j] - lb[j]) : dmax;
        }
        min_effect = dmax / amax;
        side_free(&base);
    }
    qv_forward_adapter_stats fs;
    qv_forward_adapter_stats_get(dev.f, &fs);
    printf("churn: %d steps x %d adapters of ranks 2..32 from %d through a %zu-byte pool: %llu "
           "uploads, %llu evictions, %llu hits, %llu prefetches (%llu uploads); worst logits "
           "error vs the CPU %.4f (tolerance %.2g), vs a pool that never evicts %g (must be 0); "
           "adapters change the logits by %.2f\n",
           STEPS, N_SEQ, N_AD, fs.pool_bytes, (unsigned long long)fs.loads,
           (unsigned long long)fs.evictions, (unsigned long long)fs.hits,
           (unsigned long long)fs.prefetches, (unsigned long long)fs.prefetch_uploads, worst, tol,
           worst_roomy, min_effect);
    assert_true(fs.evictions > 20);
    assert_true(worst <= tol);
    assert_true(worst_roomy == 0.0);
    assert_true(min_effect > 10 * TOL);
    free(lc);
    free(ld);
    free(lb);
    free(lr);
    side_free(&roomy);
    side_free(&dev);
    side_free(&cpu);
    for (int i = 0; i < N_AD; i++) {
        qv_test_free_lora(ads[i]);
    }
    free(vals);
    qv_model_free(m);
    unsetenv("QV_CUDA_ADAPTER_POOL_MB");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
