/*
 * bench_lora.c - cost of LoRA adapters in decode (CPU backend).
 *
 * Part 1: decode throughput of 16 sequences on 16 distinct rank-16 LoRA adapters (q,k,v,o,gate,
 * up,down of every layer; random weights made here, held in each requested dtype: F32, BF16,
 * F16, as the loader keeps them) against the same 16 sequences with no adapter, on
 * SmolLM2-135M-Instruct Q4_1. Runs are interleaved rounds (base, lora dtype 1, lora dtype 2,
 * ...); each dtype's ratio lora/base is taken against the base run of its own round, and the
 * median over rounds is reported (target >= 0.75), with the min..max spread.
 * Part 2: the LoRA work of one decode step alone (the qv__lora_apply calls of every layer for
 * 1 token on each of the 16 adapters), per dtype: ms and GB/s of adapter weights read.
 * Part 3: the segmented shrink+expand (one qv__lora_apply call for all segments) against a
 * per-adapter loop (one call per adapter) on a 576 -> 576 rank-16 projection with 64 tokens
 * spread over 1, 4, 16 and 64 distinct adapters, per dtype (skipped with --no-kernel).
 *
 * usage: bench_lora [MODEL] [--threads N] [--pairs P] [--gen G] [--prompt L] [--same]
 *                   [--dtypes f32,bf16,f16] [--no-kernel]
 * (--same: all 16 sequences share one adapter, to separate bandwidth from compute cost;
 *  --dtypes: the adapter weight dtypes measured side by side, default f32,bf16)
 * Prints a table and one JSON line per measurement.
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

/* n bytes 64-byte aligned like the backend's buffers (a 16-byte aligned malloc block splits
 * vector loads across cache lines, by how much depending on the heap). free() releases it. */
static void *amalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) abort();
    return p;
}

static float *rand_arr(size_t n, float amp) {
    float *a = amalloc(n * sizeof(float));
    if (!a) abort();
    for (size_t i = 0; i < n; i++)
        a[i] = frand(amp);
    return a;
}

static uint16_t *rand_arr16(size_t n, float amp, enum qv_dtype wt) {
    uint16_t *a = amalloc(n * sizeof(uint16_t));
    if (!a) abort();
    for (size_t i = 0; i < n; i++)
        a[i] = wt == QV_DTYPE_F16 ? qv_f32_to_f16(frand(amp)) : qv_f32_to_bf16(frand(amp));
    return a;
}

/* Fills lo's A (rank, n_in) and B (n_out, rank) with random weights of dtype wt. */
static void fill_lora(qv_lora *lo, enum qv_dtype wt, float amp) {
    const size_t na = (size_t)lo->rank * (size_t)lo->n_in, nb = (size_t)lo->n_out * lo->rank;
    lo->wtype = wt;
    if (wt == QV_DTYPE_F32) {
        lo->a = rand_arr(na, amp);
        lo->b = rand_arr(nb, amp);
    } else {
        lo->a16 = rand_arr16(na, amp, wt);
        lo->b16 = rand_arr16(nb, amp, wt);
    }
}

static void free_weights(qv_lora *lo) {
    free(lo->a);
    free(lo->b);
    free(lo->a16);
    free(lo->b16);
}

/* A LoRA adapter on all 7 projections, built in memory (not through the loader): freed with
 * free_lora, not qv_adapter_free. */
static qv_adapter *make_lora(const qv_model_config *c, enum qv_dtype wt) {
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
            fill_lora(lo, wt, 0.02f);
        }
    return ad;
}

static void free_lora(qv_adapter *ad) {
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            free_weights(&ad->layers[l].lora[p]);
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

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Decode tok/s of N_SEQ sequences (wall clock over the decode steps); ads[i] (or NULL) is
 * sequence i's adapter. *step_tps = tokens per step / the median step time: a step that another
 * process preempted is an outlier there, not a shift of the whole run. */
static double run_decode(qv_engine *e, qv_adapter *const *ads, int n_prompt, int n_gen,
                         double *step_tps) {
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
    int at_t1 = c.n_tokens, n_steps = 0;
    double steps[1024];
    while (qv_engine_n_active(e) > 0) {
        const double t = qv_time_s();
        if (qv_engine_step(e, &err) != QV_OK) exit(1);
        if (n_steps < 1024) steps[n_steps++] = qv_time_s() - t;
    }
    const double wall = (double)(c.n_tokens - at_t1) / (qv_time_s() - t1);
    qsort(steps, (size_t)n_steps, sizeof(double), cmp_d);
    if (step_tps) *step_tps = n_steps ? N_SEQ / steps[n_steps / 2] : 0.0;
    return wall;
}

/* Part 2: seconds of the LoRA work of one decode step alone (every layer: q,k,v / o / gate,up /
 * down as adapter_apply.c calls them), one token on each of N_SEQ adapters. Best of `reps`. */
static double pass_bench(qv_backend *be, const qv_model_config *c, qv_adapter *const *ads,
                         int reps) {
    static const enum qv_proj groups[4][3] = {
        {QV_PROJ_Q, QV_PROJ_K, QV_PROJ_V}, {QV_PROJ_O}, {QV_PROJ_GATE, QV_PROJ_UP}, {QV_PROJ_DOWN}};
    static const int n_group[4] = {3, 1, 2, 1};
    const size_t w = (size_t)QV_MAX(c->n_ff, c->n_heads * c->head_dim);
    float *x = rand_arr(N_SEQ * w, 1.0f), *y[3], *tmp = amalloc(sizeof(float) * 3 * N_SEQ * RANK);
    for (int k = 0; k < 3; k++)
        y[k] = rand_arr(N_SEQ * w, 1.0f);
    qv__lora_seg segs[3 * N_SEQ];
    double best = 1e30;
    for (int rep = 0; rep < reps; rep++) {
        const double t0 = qv_time_s();
        for (int l = 0; l < c->n_layers; l++)
            for (int g = 0; g < 4; g++) {
                int n = 0;
                for (int k = 0; k < n_group[g]; k++)
                    for (int s = 0; s < N_SEQ; s++) {
                        const qv_lora *lo = &ads[s]->layers[l].lora[groups[g][k]];
                        segs[n++] = (qv__lora_seg){.t0 = s,
                                                   .n = 1,
                                                   .rank = lo->rank,
                                                   .scale = lo->scale,
                                                   .a = lo->a,
                                                   .b = lo->b,
                                                   .y = y[k],
                                                   .ldy = (size_t)lo->n_out,
                                                   .n_out = lo->n_out,
                                                   .wtype = lo->wtype,
                                                   .a16 = lo->a16,
                                                   .b16 = lo->b16};
                    }
                const int n_in = ads[0]->layers[l].lora[groups[g][0]].n_in;
                qv__lora_apply(be, segs, n, x, (size_t)n_in, n_in, tmp, 0, NULL, 0);
            }
        const double dt = qv_time_s() - t0;
        if (dt < best) best = dt;
    }
    free(x);
    free(tmp);
    for (int k = 0; k < 3; k++)
        free(y[k]);
    return best;
}

/* Part 3: seconds per call of the segmented kernel and of the per-adapter loop. */
static void kernel_bench(qv_backend *be, int n_adapters, enum qv_dtype wt, double *t_seg,
                         double *t_loop) {
    enum { T = 64, D = 576 };
    qv__lora_seg segs[64];
    qv_lora w[64];
    const int per = T / n_adapters;
    for (int s = 0; s < n_adapters; s++) {
        w[s] = (qv_lora){.rank = RANK, .n_in = D, .n_out = D};
        fill_lora(&w[s], wt, 0.1f);
        segs[s] = (qv__lora_seg){.t0 = s * per,
                                 .n = per,
                                 .rank = RANK,
                                 .scale = 1.0f,
                                 .a = w[s].a,
                                 .b = w[s].b,
                                 .wtype = wt,
                                 .a16 = w[s].a16,
                                 .b16 = w[s].b16};
    }
    float *x = rand_arr((size_t)T * D, 1.0f), *y = rand_arr((size_t)T * D, 1.0f);
    float *tmp = amalloc(sizeof(float) * (size_t)T * RANK);
    const int iters = 2000;
    double best_seg = 1e30, best_loop = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = qv_time_s();
        for (int it = 0; it < iters; it++)
            qv__lora_apply(be, segs, n_adapters, x, D, D, tmp, D, y, D);
        double t1 = qv_time_s();
        for (int it = 0; it < iters; it++)
            for (int s = 0; s < n_adapters; s++)
                qv__lora_apply(be, &segs[s], 1, x, D, D, tmp, D, y, D);
        double t2 = qv_time_s();
        if (t1 - t0 < best_seg) best_seg = t1 - t0;
        if (t2 - t1 < best_loop) best_loop = t2 - t1;
    }
    *t_seg = best_seg / iters;
    *t_loop = best_loop / iters;
    for (int s = 0; s < n_adapters; s++)
        free_weights(&w[s]);
    free(x);
    free(y);
    free(tmp);
}

static bool parse_dtypes(const char *arg, enum qv_dtype *out, int *n) {
    *n = 0;
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", arg);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (*n == 3) return false;
        if (!strcmp(tok, "f32"))
            out[(*n)++] = QV_DTYPE_F32;
        else if (!strcmp(tok, "bf16"))
            out[(*n)++] = QV_DTYPE_BF16;
        else if (!strcmp(tok, "f16"))
            out[(*n)++] = QV_DTYPE_F16;
        else
            return false;
    }
    return *n > 0;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int n_threads = 0, pairs = 5, n_gen = 32, n_prompt = 16;
    bool same = false; /* --same: all 16 sequences on one adapter (bandwidth vs compute probe) */
    bool kernel = true;
    enum qv_dtype dts[3] = {QV_DTYPE_F32, QV_DTYPE_BF16};
    int n_dt = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--pairs") && i + 1 < argc)
            pairs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            n_gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--same"))
            same = true;
        else if (!strcmp(argv[i], "--no-kernel"))
            kernel = false;
        else if (!strcmp(argv[i], "--prompt") && i + 1 < argc)
            n_prompt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dtypes") && i + 1 < argc) {
            if (!parse_dtypes(argv[++i], dts, &n_dt)) {
                fprintf(stderr, "bench_lora: --dtypes takes a list of f32, bf16, f16\n");
                return 2;
            }
        } else
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
    const qv_model_config mcfg = qv_engine_model(e)->cfg, *mc = &mcfg; /* outlives e */
    qv_adapter *ads[3][N_SEQ];
    size_t n_params = 0;
    for (int d = 0; d < n_dt; d++)
        for (int i = 0; i < N_SEQ; i++)
            ads[d][i] = (same && i) ? ads[d][0] : make_lora(mc, dts[d]);
    for (int l = 0; l < mc->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            n_params += (size_t)RANK * (size_t)(ads[0][0]->layers[l].lora[p].n_in +
                                                ads[0][0]->layers[l].lora[p].n_out);
    printf("bench_lora: %s, %d sequences, %d distinct rank-%d LoRA adapters on all 7 projections "
           "(%.1f MiB F32 / %.1f MiB 16-bit each), prompt %d, gen %d, %d rounds\n",
           model, N_SEQ, same ? 1 : N_SEQ, RANK, (double)(n_params * 4) / (1 << 20),
           (double)(n_params * 2) / (1 << 20), n_prompt, n_gen, pairs);
    run_decode(e, NULL, n_prompt, 4, NULL); /* warm-up */
    for (int d = 0; d < n_dt; d++)
        run_decode(e, ads[d], n_prompt, 4, NULL);
    double ratio[3][64], lora_tps[3][64], base_tps[64];
    double sratio[3][64], slora_tps[3][64], sbase_tps[64];
    for (int p = 0; p < pairs; p++) {
        base_tps[p] = run_decode(e, NULL, n_prompt, n_gen, &sbase_tps[p]);
        printf("  round %2d: base %.1f tok/s [step median %.1f]", p, base_tps[p], sbase_tps[p]);
        for (int d = 0; d < n_dt; d++) {
            lora_tps[d][p] = run_decode(e, ads[d], n_prompt, n_gen, &slora_tps[d][p]);
            ratio[d][p] = lora_tps[d][p] / base_tps[p];
            sratio[d][p] = slora_tps[d][p] / sbase_tps[p];
            printf(", %s %.1f (%.3f) [%.1f (%.3f)]", qv_dtype_name(dts[d]), lora_tps[d][p],
                   ratio[d][p], slora_tps[d][p], sratio[d][p]);
        }
        printf("\n");
        fflush(stdout);
    }
    qsort(base_tps, (size_t)pairs, sizeof(double), cmp_d);
    qsort(sbase_tps, (size_t)pairs, sizeof(double), cmp_d);
    printf("decode, medians over %d rounds (target ratio >= 0.75); wall clock [step median]:\n"
           "  base %.1f tok/s [%.1f]\n",
           pairs, base_tps[pairs / 2], sbase_tps[pairs / 2]);
    for (int d = 0; d < n_dt; d++) {
        qsort(ratio[d], (size_t)pairs, sizeof(double), cmp_d);
        qsort(lora_tps[d], (size_t)pairs, sizeof(double), cmp_d);
        qsort(sratio[d], (size_t)pairs, sizeof(double), cmp_d);
        qsort(slora_tps[d], (size_t)pairs, sizeof(double), cmp_d);
        const double med = ratio[d][pairs / 2], smed = sratio[d][pairs / 2];
        printf("  16 LoRA %-4s %.1f tok/s, ratio %.3f (spread %.3f..%.3f) [%.1f tok/s, ratio %.3f "
               "(spread %.3f..%.3f)]\n",
               qv_dtype_name(dts[d]), lora_tps[d][pairs / 2], med, ratio[d][0], ratio[d][pairs - 1],
               slora_tps[d][pairs / 2], smed, sratio[d][0], sratio[d][pairs - 1]);
        printf("{\"bench\":\"lora_decode\",\"dtype\":\"%s\",\"n_seqs\":%d,\"n_adapters\":%d,"
               "\"rank\":%d,\"base_tok_s\":%.2f,\"lora_tok_s\":%.2f,\"median_ratio\":%.4f,"
               "\"min_ratio\":%.4f,\"max_ratio\":%.4f,\"step_median_ratio\":%.4f}\n",
               qv_dtype_name(dts[d]), N_SEQ, same ? 1 : N_SEQ, RANK, base_tps[pairs / 2],
               lora_tps[d][pairs / 2], med, ratio[d][0], ratio[d][pairs - 1], smed);
    }
    qv_engine_destroy(e);
    qv_backend *be = NULL;
    if (qv_backend_cpu_create(n_threads, &be, &err) != QV_OK) return 1;
    printf("\nLoRA work of one decode step alone (%d layers x 7 projections, 1 token on each of "
           "%d adapters), best of 20; base decode step at the median base rate: %.2f ms\n",
           mc->n_layers, N_SEQ, 1e3 * N_SEQ / base_tps[pairs / 2]);
    for (int d = 0; d < n_dt; d++) {
        const double t = pass_bench(be, mc, ads[d], 20);
        const double mb = (double)n_params * (dts[d] == QV_DTYPE_F32 ? 4 : 2) * (same ? 1 : N_SEQ);
        printf("  %-4s %.2f ms, %.1f MB read, %.1f GB/s\n", qv_dtype_name(dts[d]), t * 1e3,
               mb / 1e6, mb / t / 1e9);
        printf("{\"bench\":\"lora_pass\",\"dtype\":\"%s\",\"ms\":%.3f,\"mb\":%.1f}\n",
               qv_dtype_name(dts[d]), t * 1e3, mb / 1e6);
    }
    for (int d = 0; d < n_dt; d++)
        for (int i = 0; i < N_SEQ; i++)
            if (!same || i == 0) free_lora(ads[d][i]);
    if (!kernel) {
        be->iface->destroy(be);
        return 0;
    }

    printf("\nkernel: 64 tokens, 576 -> 576, rank %d\n  dtype  adapters   segmented us   "
           "per-adapter loop us   loop/segmented\n",
           RANK);
    const int ks[4] = {1, 4, 16, 64};
    for (int d = 0; d < n_dt; d++)
        for (int i = 0; i < 4; i++) {
            double ts, tl;
            kernel_bench(be, ks[i], dts[d], &ts, &tl);
            printf("  %-5s  %8d   %12.2f   %19.2f   %14.2f\n", qv_dtype_name(dts[d]), ks[i],
                   ts * 1e6, tl * 1e6, tl / ts);
            printf("{\"bench\":\"lora_kernel\",\"dtype\":\"%s\",\"n_adapters\":%d,"
                   "\"segmented_us\":%.3f,\"loop_us\":%.3f}\n",
                   qv_dtype_name(dts[d]), ks[i], ts * 1e6, tl * 1e6);
        }
    be->iface->destroy(be);
    return 0;
}
