/*
 * bench_lora.c - cost of LoRA adapters in decode (CPU backend).
 *
 * Part 1: decode throughput of 16 sequences on 16 distinct rank-16 LoRA adapters (q,k,v,o,gate,
 * up,down of every layer; random F32 weights made here) against the same 16 sequences with no
 * adapter, on SmolLM2-135M-Instruct Q4_1. Runs alternate (base, lora) in interleaved pairs; the
 * median of the per-pair ratios lora/base is reported (target >= 0.75).
 * Part 2: the segmented shrink+expand (one call for all segments) against a per-adapter loop
 * (one call per adapter) on a 576 -> 576 rank-16 projection with 64 tokens spread over 1, 4, 16
 * and 64 distinct adapters.
 *
 * usage: bench_lora [MODEL] [--threads N] [--pairs P] [--gen G] [--prompt L] [--same]
 * (--same: all 16 sequences share one adapter, to separate bandwidth from compute cost)
 * Prints a table and one JSON line per part.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapters.h"
#include "engine/backend.h"
#include "engine/cpu/lora_cpu.h"
#include "engine/engine.h"

#define N_SEQ 16
#define RANK 16

static uint32_t rng = 99;
static float frand(float amp) {
    rng = rng * 1664525u + 1013904223u;
    return ((float)(rng >> 8) / (float)(1u << 24) * 2.0f - 1.0f) * amp;
}

static float *rand_arr(size_t n, float amp) {
    float *a = malloc(n * sizeof(float));
    if (!a) abort();
    for (size_t i = 0; i < n; i++)
        a[i] = frand(amp);
    return a;
}

/* A LoRA adapter on all 7 projections, built in memory (not through the loader): freed with
 * free_lora, not qv_adapter_free. */
static qv_adapter *make_lora(const qv_model_config *c) {
    qv_adapter *ad = calloc(1, sizeof(*ad));
    ad->kind = QV_ADAPTER_LORA;
    ad->n_layers = c->n_layers;
    ad->dim = c->dim;
    ad->n_vocab = c->n_vocab;
    ad->layers = calloc((size_t)c->n_layers, sizeof(*ad->layers));
    const int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    const int n_in[QV_PROJ_COUNT] = {c->dim, c->dim, c->dim, qd, c->dim, c->dim, c->n_ff};
    const int n_out[QV_PROJ_COUNT] = {qd, kvd, kvd, c->dim, c->n_ff, c->n_ff, c->dim};
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            qv_lora *lo = &ad->layers[l].lora[p];
            lo->rank = RANK;
            lo->scale = 2.0f;
            lo->n_in = n_in[p];
            lo->n_out = n_out[p];
            lo->a = rand_arr((size_t)RANK * (size_t)n_in[p], 0.02f);
            lo->b = rand_arr((size_t)n_out[p] * RANK, 0.02f);
        }
    return ad;
}

static void free_lora(qv_adapter *ad) {
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            free(ad->layers[l].lora[p].a);
            free(ad->layers[l].lora[p].b);
        }
    free(ad->layers);
    free(ad);
}

typedef struct counter {
    int n_tokens;
} counter;

static void on_tok(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                   enum qv_finish_reason finish) {
    (void)seq_id;
    (void)token;
    (void)lp;
    (void)finish;
    ((counter *)user)->n_tokens++;
}

/* Decode tok/s of N_SEQ sequences; ads[i] (or NULL) is sequence i's adapter. */
static double run_decode(qv_engine *e, qv_adapter *const *ads, int n_prompt, int n_gen) {
    const qv_model *m = qv_engine_model(e);
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = n_gen;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0;
    counter c = {0};
    qv_error err = {0};
    int32_t prompt[512];
    uint32_t s = 5;
    for (int b = 0; b < N_SEQ; b++) {
        for (int i = 0; i < n_prompt; i++) {
            s = s * 1664525u + 1013904223u;
            prompt[i] = (int32_t)((s >> 8) % (uint32_t)m->cfg.n_vocab);
        }
        gp.adapter = ads ? ads[b] : NULL;
        if (qv_engine_add(e, prompt, (size_t)n_prompt, &gp, on_tok, &c, NULL, &err) != QV_OK) {
            fprintf(stderr, "add: %s\n", err.msg);
            exit(1);
        }
    }
    while (c.n_tokens < N_SEQ)
        if (qv_engine_step(e, &err) != QV_OK) exit(1);
    double t1 = qv_time_s();
    int at_t1 = c.n_tokens;
    while (qv_engine_n_active(e) > 0)
        if (qv_engine_step(e, &err) != QV_OK) exit(1);
    return (double)(c.n_tokens - at_t1) / (qv_time_s() - t1);
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Part 2: seconds per call of the segmented kernel and of the per-adapter loop. */
static void kernel_bench(qv_backend *be, int n_adapters, double *t_seg, double *t_loop) {
    enum { T = 64, D = 576 };
    qv__lora_seg segs[64];
    const int per = T / n_adapters;
    for (int s = 0; s < n_adapters; s++)
        segs[s] = (qv__lora_seg){.t0 = s * per,
                                 .n = per,
                                 .rank = RANK,
                                 .scale = 1.0f,
                                 .a = rand_arr((size_t)RANK * D, 0.1f),
                                 .b = rand_arr((size_t)D * RANK, 0.1f)};
    float *x = rand_arr((size_t)T * D, 1.0f), *y = rand_arr((size_t)T * D, 1.0f);
    float *tmp = malloc(sizeof(float) * (size_t)T * RANK);
    const int iters = 2000;
    double best_seg = 1e30, best_loop = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = qv_time_s();
        for (int it = 0; it < iters; it++) {
            qv__lora_shrink(be, segs, n_adapters, x, D, D, tmp);
            qv__lora_expand(be, segs, n_adapters, tmp, D, y, D);
        }
        double t1 = qv_time_s();
        for (int it = 0; it < iters; it++)
            for (int s = 0; s < n_adapters; s++) {
                qv__lora_shrink(be, &segs[s], 1, x, D, D, tmp);
                qv__lora_expand(be, &segs[s], 1, tmp, D, y, D);
            }
        double t2 = qv_time_s();
        if (t1 - t0 < best_seg) best_seg = t1 - t0;
        if (t2 - t1 < best_loop) best_loop = t2 - t1;
    }
    *t_seg = best_seg / iters;
    *t_loop = best_loop / iters;
    for (int s = 0; s < n_adapters; s++) {
        free((void *)(uintptr_t)segs[s].a);
        free((void *)(uintptr_t)segs[s].b);
    }
    free(x);
    free(y);
    free(tmp);
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int n_threads = 0, pairs = 5, n_gen = 32, n_prompt = 16;
    bool same = false; /* --same: all 16 sequences on one adapter (bandwidth vs compute probe) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc)
            pairs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--same"))
            same = true;
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else
            model = argv[i];
    }
    static char path[1024];
    if (!model) {
        const char *home = getenv("HOME");
        snprintf(path, sizeof(path), "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : ".");
        model = path;
    }
    if (pairs < 1 || pairs > 64 || n_prompt < 1 || n_prompt > 512 || n_gen < 2) {
        fprintf(stderr, "bench_lora: bad arguments\n");
        return 2;
    }
    qv_log_set_level(QV_LOG_WARN);
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = model;
    c.n_threads = n_threads;
    c.load_tokenizer = false;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) {
        fprintf(stderr, "bench_lora: %s\n", err.msg);
        return 1;
    }
    const qv_model_config *mc = &qv_engine_model(e)->cfg;
    qv_adapter *ads[N_SEQ];
    size_t ad_bytes = 0;
    for (int i = 0; i < N_SEQ; i++)
        ads[i] = (same && i) ? ads[0] : make_lora(mc);
    for (int l = 0; l < mc->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            ad_bytes += (size_t)RANK *
                        (size_t)(ads[0]->layers[l].lora[p].n_in + ads[0]->layers[l].lora[p].n_out) *
                        sizeof(float);
    printf("bench_lora: %s, %d sequences, %d distinct rank-%d LoRA adapters on all 7 projections "
           "(%.1f MiB F32 each), prompt %d, gen %d, %d pairs\n",
           model, N_SEQ, same ? 1 : N_SEQ, RANK, (double)ad_bytes / (1 << 20), n_prompt, n_gen,
           pairs);
    run_decode(e, NULL, n_prompt, 4); /* warm-up */
    run_decode(e, ads, n_prompt, 4);
    double ratio[64], base_tps[64], lora_tps[64];
    for (int p = 0; p < pairs; p++) {
        base_tps[p] = run_decode(e, NULL, n_prompt, n_gen);
        lora_tps[p] = run_decode(e, ads, n_prompt, n_gen);
        ratio[p] = lora_tps[p] / base_tps[p];
        printf("  pair %d: base %.1f tok/s, lora %.1f tok/s, ratio %.3f\n", p, base_tps[p],
               lora_tps[p], ratio[p]);
    }
    qsort(ratio, (size_t)pairs, sizeof(double), cmp_d);
    qsort(base_tps, (size_t)pairs, sizeof(double), cmp_d);
    qsort(lora_tps, (size_t)pairs, sizeof(double), cmp_d);
    double med = ratio[pairs / 2];
    printf("decode: base %.1f tok/s, 16 LoRA %.1f tok/s (medians), median ratio %.3f (target "
           ">= 0.75)\n",
           base_tps[pairs / 2], lora_tps[pairs / 2], med);
    printf("{\"bench\":\"lora_decode\",\"n_seqs\":%d,\"rank\":%d,\"base_tok_s\":%.2f,"
           "\"lora_tok_s\":%.2f,\"median_ratio\":%.4f}\n",
           N_SEQ, RANK, base_tps[pairs / 2], lora_tps[pairs / 2], med);
    for (int i = 0; i < N_SEQ; i++)
        if (!same || i == 0) free_lora(ads[i]);
    qv_engine_destroy(e);

    qv_backend *be = NULL;
    if (qv_backend_cpu_create(n_threads, &be, &err) != QV_OK) return 1;
    printf("\nkernel: 64 tokens, 576 -> 576, rank %d\n  adapters   segmented us   per-adapter "
           "loop us   loop/segmented\n",
           RANK);
    const int ks[4] = {1, 4, 16, 64};
    for (int i = 0; i < 4; i++) {
        double ts, tl;
        kernel_bench(be, ks[i], &ts, &tl);
        printf("  %8d   %12.2f   %19.2f   %14.2f\n", ks[i], ts * 1e6, tl * 1e6, tl / ts);
        printf("{\"bench\":\"lora_kernel\",\"n_adapters\":%d,\"segmented_us\":%.3f,"
               "\"loop_us\":%.3f}\n",
               ks[i], ts * 1e6, tl * 1e6);
    }
    be->iface->destroy(be);
    return 0;
}
