/*
 * bench_gpu_decode.c - decode throughput of the CUDA backend on synthetic models with real
 * shapes (SmolLM2-135M and a ~1B Llama: hidden 2048, 16 layers, 32/8 heads, ff 8192, vocab
 * 128256, tied), random bf16 weights generated on the device.
 *
 * Per model and batch B in {1, 32, 128}: B sequences are prefilled with 32-token prompts, then
 * 3 untimed and STEPS timed greedy decode steps run (qv_forward_run_greedy: the whole batch's
 * forward pass, lm_head and argmax on the device, B token ids read back per step). Reported:
 * ms per step, aggregate tokens/s, and the ratio to the HBM weight-read floor
 * B / (resident weight bytes / bandwidth), the bandwidth measured in the same run with a
 * device-to-device copy (read + write bytes). KV reads are not in the floor.
 * Then, at batch 32 on both real-shaped models, the same steps sampling at temperature 0.8 with
 * top-p 0.95: on the device (qv_forward_run_sample, B token ids read back) and on the host
 * (qv_forward_run_split with whole rows: B x n_vocab floats copied, then the host sampler per
 * row, the engine's path with host_sampling), printed side by side with the greedy step.
 * Last, speculative decoding's verify step at batch 1 on both real-shaped models: one sequence
 * whose step carries its token and k = 0, 4, 8 drafts, each with a logits row (argmax on the
 * device), the position advancing by k + 1 (every draft kept): ms per step, and tokens/s when
 * every draft is kept, against the plain step (what a kept draft costs on this device).
 * Usage: bench_gpu_decode [steps]   (built only with -DQV_CUDA=ON)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/cuda_probe.h"
#include "engine/cuda/synth_model.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"
#include "engine/sampler.h"

#define PROMPT 32
#define MAX_B 128
#define PAGE 16
#define MAX_TOKENS 256

typedef struct bench_model {
    const char *name;
    qv_model_config cfg;
} bench_model;

enum { MODE_GREEDY, MODE_DEVICE_SAMPLING, MODE_HOST_SAMPLING };

/* One decode step of mode `mode` (see the top comment); next[B] receives the tokens. */
static qv_status decode_step(qv_forward *fwd, const qv_batch *b, int V, int mode, uint64_t *u_state,
                             int32_t *next, qv_error *err) {
    static qv_sample_row rows[MAX_B];
    static qv_sampler *smp[MAX_B];
    static qv_sampler_scratch *scratch;
    static float *logits;
    static int logits_v;
    const int B = b->n_logits;
    if (mode == MODE_GREEDY) return qv_forward_run_greedy(fwd, b, next, err);
    if (mode == MODE_DEVICE_SAMPLING) {
        for (int j = 0; j < B; j++) {
            *u_state = *u_state * 6364136223846793005ull + 1442695040888963407ull;
            rows[j] = (qv_sample_row){.u = (double)(*u_state >> 11) * 0x1.0p-53,
                                      .temperature = 0.8f,
                                      .top_p = 0.95f,
                                      .repetition_penalty = 1.0f};
        }
        return qv_forward_run_sample(fwd, b, 0, NULL, rows, NULL, 0, next, NULL, err);
    }
    if (logits_v != V) { /* host sampling: buffers for MAX_B rows of this vocabulary */
        free(logits);
        for (int j = 0; j < MAX_B; j++)
            qv_sampler_free(smp[j]), smp[j] = NULL;
        qv_sampler_scratch_free(scratch);
        logits = malloc((size_t)MAX_B * (size_t)V * sizeof(float));
        qv_sampling_params p;
        qv_sampling_params_default(&p);
        p.temperature = 0.8f;
        p.top_p = 0.95f;
        if (!logits || qv_sampler_scratch_create(V, &scratch) != QV_OK)
            return qv_errorf(err, QV_ERR_NOMEM, "host sampling buffers");
        for (int j = 0; j < MAX_B; j++) {
            p.seed = (uint64_t)j;
            if (qv_sampler_create_with_scratch(&p, V, scratch, &smp[j]) != QV_OK)
                return qv_errorf(err, QV_ERR_NOMEM, "host samplers");
        }
        logits_v = V;
    }
    qv_status st = qv_forward_run_split(fwd, b, B, logits, next, err);
    for (int j = 0; st == QV_OK && j < B; j++)
        next[j] = qv_sampler_sample(smp[j], logits + (size_t)j * (size_t)V, NULL);
    return st;
}

static int run_batch(qv_backend *be, qv_forward *fwd, qv_kv_cache *kv, int V, int B, int steps,
                     int mode, double *ms_step, qv_cuda_stats *out) {
    qv_cuda_stats c0, c1;
    static qv_kv_seq seqs[MAX_B];
    static const qv_kv_seq *sp[MAX_B];
    static int32_t tok[MAX_TOKENS], pos[MAX_TOKENS], sq[MAX_TOKENS], li[MAX_TOKENS];
    static int32_t next[MAX_B];
    qv_error err = {0};
    memset(seqs, 0, sizeof(seqs));
    int rc = -1;
    uint32_t r = 12345u + (uint32_t)B;
    uint64_t u_state = 99;
    /* prefill, MAX_TOKENS / PROMPT sequences per batch */
    const int per = MAX_TOKENS / PROMPT;
    for (int s0 = 0; s0 < B; s0 += per) {
        int nb = B - s0 < per ? B - s0 : per, n = 0;
        for (int j = 0; j < nb; j++) {
            if (qv_kv_seq_reserve(kv, &seqs[s0 + j], PROMPT) != QV_OK) goto done;
            sp[j] = &seqs[s0 + j];
            for (int t = 0; t < PROMPT; t++) {
                r = r * 1664525u + 1013904223u;
                tok[n] = (int32_t)((r >> 8) % (uint32_t)V);
                pos[n] = t;
                sq[n] = j;
                n++;
            }
            li[j] = n - 1;
        }
        qv_batch b = {.n_tokens = n,
                      .tokens = tok,
                      .pos = pos,
                      .seq = sq,
                      .n_seqs = nb,
                      .seqs = sp,
                      .n_logits = nb,
                      .logits_idx = li};
        if (qv_forward_run_greedy(fwd, &b, next + s0, &err) != QV_OK) {
            fprintf(stderr, "prefill: %s\n", err.msg);
            goto done;
        }
    }
    /* decode */
    double t0 = 0;
    for (int st = 0; st < 3 + steps; st++) {
        if (st == 3) {
            t0 = qv_time_s();
            qv_backend_cuda_stats(be, &c0);
        }
        int p = PROMPT + st;
        for (int j = 0; j < B; j++) {
            if (qv_kv_seq_reserve(kv, &seqs[j], p + 1) != QV_OK) {
                fprintf(stderr, "KV cache full\n");
                goto done;
            }
            sp[j] = &seqs[j];
            tok[j] = next[j];
            pos[j] = p;
            sq[j] = j;
            li[j] = j;
        }
        qv_batch b = {.n_tokens = B,
                      .tokens = tok,
                      .pos = pos,
                      .seq = sq,
                      .n_seqs = B,
                      .seqs = sp,
                      .n_logits = B,
                      .logits_idx = li};
        if (decode_step(fwd, &b, V, mode, &u_state, next, &err) != QV_OK) {
            fprintf(stderr, "decode: %s\n", err.msg);
            goto done;
        }
    }
    *ms_step = (qv_time_s() - t0) * 1e3 / steps;
    qv_backend_cuda_stats(be, &c1);
    out->eager_steps = c1.eager_steps - c0.eager_steps;
    out->captures = c1.captures - c0.captures;
    out->replays = c1.replays - c0.replays;
    out->mismatches = c1.mismatches - c0.mismatches;
    out->enqueue_s = c1.enqueue_s - c0.enqueue_s;
    out->wait_s = c1.wait_s - c0.wait_s;
    out->instantiate_s = c1.instantiate_s - c0.instantiate_s;
    out->device_s = c1.device_s - c0.device_s;
    rc = 0;
done:
    for (int j = 0; j < B; j++)
        qv_kv_seq_release(kv, &seqs[j]);
    return rc;
}

/* Batch-1 steps of 1 + k tokens (the pending token and k drafts, every one with a logits row),
 * after a PROMPT-token prefill; the sequence advances by 1 + k a step. *ms_step: ms per step. */
static int run_drafts(qv_forward *fwd, qv_kv_cache *kv, int V, int k, int steps, double *ms_step) {
    qv_kv_seq seq;
    memset(&seq, 0, sizeof(seq));
    const qv_kv_seq *sp[1] = {&seq};
    static int32_t tok[MAX_TOKENS], pos[MAX_TOKENS], sq[MAX_TOKENS], li[MAX_TOKENS],
        next[MAX_TOKENS];
    qv_error err = {0};
    int rc = -1, p = 0;
    uint32_t r = 777u;
    double t0 = 0;
    for (int st = -1; st < 3 + steps; st++) {
        const int n = st < 0 ? PROMPT : 1 + k; /* st -1: the prefill */
        if (st == 3) t0 = qv_time_s();
        if (qv_kv_seq_reserve(kv, &seq, p + n) != QV_OK) {
            fprintf(stderr, "drafts: KV cache full\n");
            goto done;
        }
        for (int t = 0; t < n; t++) {
            r = r * 1664525u + 1013904223u;
            tok[t] = st < 0 || t > 0 ? (int32_t)((r >> 8) % (uint32_t)V) : next[0];
            pos[t] = p + t;
            sq[t] = 0;
            li[t] = t;
        }
        const int n_logits = st < 0 ? 1 : n;
        if (st < 0) li[0] = n - 1;
        qv_batch b = {.n_tokens = n,
                      .tokens = tok,
                      .pos = pos,
                      .seq = sq,
                      .n_seqs = 1,
                      .seqs = sp,
                      .n_logits = n_logits,
                      .logits_idx = li};
        if (qv_forward_run_greedy(fwd, &b, next, &err) != QV_OK) {
            fprintf(stderr, "drafts: %s\n", err.msg);
            goto done;
        }
        p += n;
    }
    *ms_step = (qv_time_s() - t0) * 1e3 / steps;
    rc = 0;
done:
    qv_kv_seq_release(kv, &seq);
    return rc;
}

/* Bandwidth of the projections alone: REPS y += x·Wᵀ on the 1B model's gate weight (8192 x
 * 2048 bf16, 32 MiB) at n = 1 (warp GEMV) and n = 32 (cuBLAS), eager launches. */
static void gemv_bandwidth(qv_backend *be, const qv_model *m, double bw, char *note, size_t len) {
    enum { REPS = 200 };
    const qv_tensor *w = &m->layers[0].w_gate;
    const size_t wbytes = (size_t)w->n_rows * (size_t)w->n_cols * 2;
    float *x = be->iface->alloc(be, sizeof(float) * 32 * (size_t)w->n_cols);
    float *y = be->iface->alloc(be, sizeof(float) * 32 * (size_t)w->n_rows);
    double gbs[2] = {0, 0};
    static const int ns[2] = {1, 32};
    qv_error err = {0};
    if (x && y) {
        for (int k = 0; k < 2; k++) {
            (void)be->iface->download(be, NULL, NULL, 0, &err);
            double t0 = qv_time_s();
            for (int r = 0; r < REPS; r++)
                be->iface->matmul_acc(be, w, x, ns[k], y, NULL);
            if (be->iface->download(be, NULL, NULL, 0, &err) != QV_OK) break;
            gbs[k] = (double)wbytes * REPS / (qv_time_s() - t0);
        }
    }
    snprintf(note, len,
             "projection bandwidth (8192x2048 bf16, %d back-to-back launches): n=1 warp GEMV "
             "%.0f GB/s (%.0f%% of the copy bandwidth), n=32 cuBLAS %.0f GB/s (%.0f%%)",
             REPS, gbs[0] / 1e9, 100.0 * gbs[0] / bw, gbs[1] / 1e9, 100.0 * gbs[1] / bw);
    if (y) be->iface->free(be, y);
    if (x) be->iface->free(be, x);
}

/* A table: its title and header, then its rows (one line each). */
static void print_table(const char *head, char (*rows)[200], int n) {
    printf("\n%s\n", head);
    for (int i = 0; i < n; i++)
        printf("%s\n", rows[i]);
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 32;
    if (steps <= 0) steps = 32;
    if (qv_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    char dev[256];
    int major = 0, minor = 0;
    if (qv_cuda_device_name(dev, sizeof dev, &major, &minor) != 0) snprintf(dev, sizeof dev, "?");
    double bw = qv_cuda_measure_d2d_bandwidth((size_t)1 << 30, 10);
    printf("device: %s (sm_%d%d); device-to-device copy bandwidth %.0f GB/s (read+write)\n", dev,
           major, minor, bw / 1e9);
    if (bw <= 0) return 1;

    bench_model models[3];
    memset(models, 0, sizeof(models));
    models[0].name = "SmolLM2-135M-shaped";
    models[0].cfg = qv_synth_config_smollm2_135m();
    models[1].name = "Llama-1B-shaped";
    models[1].cfg = qv_synth_config_llama_1b();
    /* weights of a few MB: the step time is the per-kernel cost of a 30-layer graph */
    models[2].name = "tiny-30-layer (overhead probe)";
    models[2].cfg = (qv_model_config){.n_vocab = 512,
                                      .dim = 128,
                                      .n_ff = 256,
                                      .n_layers = 30,
                                      .n_heads = 2,
                                      .n_kv_heads = 1,
                                      .head_dim = 64,
                                      .max_pos = 8192,
                                      .norm_eps = 1e-5f,
                                      .rope_theta = 10000.0f,
                                      .tie_embeddings = true};
    static const int batches[3] = {1, 32, 128};
    printf("\n| model | weights (MB) | batch | ms/step | tokens/s | weight-read floor tokens/s | "
           "ratio to floor | vs batch 1 |\n|---|---|---|---|---|---|---|---|\n");
    int rc = 0;
    static char notes[12][320], samp[2][200], spec[6][200];
    int n_notes = 0, n_samp = 0, n_spec = 0;
    for (int mi = 0; mi < 3; mi++) {
        qv_model *m = NULL;
        qv_backend *be = NULL;
        qv_kv_cache *kv = NULL;
        qv_forward *fwd = NULL;
        qv_error err = {0};
        qv_cuda_opts o;
        qv_cuda_opts_default(&o);
        o.random_seed = 0x5eed + (uint64_t)mi;
        o.max_tokens = MAX_TOKENS;
        const int ctx = PROMPT + 3 + steps + 1;
        const int pages_per_seq = (ctx + PAGE - 1) / PAGE;
        const int n_pages = MAX_B * pages_per_seq;
        size_t kv_bytes = qv_kv_bytes_per_token(&models[mi].cfg) * (size_t)PAGE * (size_t)n_pages;
        o.arena_bytes = kv_bytes + ((size_t)1 << 30);
        if (qv_synth_model_create(&models[mi].cfg, &m, &err) != QV_OK ||
            qv_backend_cuda_create(m, &o, &be, &err) != QV_OK ||
            qv_kv_cache_create(be, &m->cfg, n_pages, PAGE, &kv, &err) != QV_OK ||
            qv_forward_create(m, be, kv, MAX_TOKENS, &fwd, &err) != QV_OK) {
            fprintf(stderr, "%s: %s\n", models[mi].name, err.msg);
            rc = 1;
        } else {
            const double wbytes = (double)qv_backend_cuda_weight_bytes(be);
            double ms1 = 0;
            for (int bi = 0; bi < (mi == 2 ? 1 : 3); bi++) {
                const int B = batches[bi];
                double ms = 0;
                qv_cuda_stats cs;
                if (run_batch(be, fwd, kv, m->cfg.n_vocab, B, steps, MODE_GREEDY, &ms, &cs) != 0) {
                    rc = 1;
                    break;
                }
                snprintf(notes[n_notes++], sizeof notes[0],
                         "%s B=%d: per step %.3f ms enqueue (of which graph instantiation "
                         "%.3f) + %.3f ms wait; device span %.3f ms; steps eager %ld, "
                         "recorded %ld, replayed %ld, replay refused %ld",
                         models[mi].name, B, cs.enqueue_s * 1e3 / steps,
                         cs.instantiate_s * 1e3 / steps, cs.wait_s * 1e3 / steps,
                         cs.device_s * 1e3 / steps, cs.eager_steps, cs.captures, cs.replays,
                         cs.mismatches);
                if (B == 1) ms1 = ms;
                const double tps = B * 1e3 / ms, floor_tps = B / (wbytes / bw);
                printf("| %s | %.0f | %d | %.3f | %.0f | %.0f | %.2f | %.1fx |\n", models[mi].name,
                       wbytes / 1e6, B, ms, tps, floor_tps, tps / floor_tps,
                       ms1 > 0 ? tps / (1e3 / ms1) : 0.0);
                fflush(stdout);
            }
            if (mi == 1) gemv_bandwidth(be, m, bw, notes[n_notes++], sizeof notes[0]);
            if (mi < 2 && rc == 0) { /* sampling at batch 32: greedy, device, host side by side */
                double ms[3] = {0, 0, 0};
                qv_cuda_stats cs;
                for (int mode = 0; mode < 3 && rc == 0; mode++)
                    rc = run_batch(be, fwd, kv, m->cfg.n_vocab, 32, steps, mode, &ms[mode], &cs);
                if (rc == 0)
                    snprintf(samp[n_samp++], sizeof samp[0],
                             "| %s | %d | 32 | %.3f | %.3f | %.3f | %.2f | %.2f |", models[mi].name,
                             m->cfg.n_vocab, ms[0], ms[1], ms[2], ms[1] / ms[0], ms[2] / ms[1]);
            }
            double ms0 = 0;
            for (int k = 0; mi < 2 && rc == 0 && k <= 8; k += 4) { /* the verify step */
                double ms = 0;
                if ((rc = run_drafts(fwd, kv, m->cfg.n_vocab, k, steps, &ms)) != 0) break;
                if (k == 0) ms0 = ms;
                snprintf(spec[n_spec++], sizeof spec[0], "| %s | %d | %.3f | %.2f | %.0f | %.2fx |",
                         models[mi].name, k, ms, ms / ms0, (k + 1) * 1e3 / ms, (k + 1) * ms0 / ms);
            }
        }
        qv_forward_destroy(fwd);
        qv_kv_cache_destroy(kv);
        if (be) be->iface->destroy(be);
        qv_synth_model_free(m);
    }
    print_table("Sampling (temperature 0.8, top-p 0.95), ms per decode step:\n\n"
                "| model | vocab | batch | greedy (device argmax) | sampled on the device | "
                "sampled on the host (rows copied) | device / greedy | host / device |\n"
                "|---|---|---|---|---|---|---|---|",
                samp, n_samp);
    print_table("Speculative decoding's verify step at batch 1 (the token and k drafts, each with "
                "a logits row; every draft kept):\n\n"
                "| model | drafts k | ms/step | vs k = 0 | tokens/s, all kept | speed-up, all kept "
                "|\n|---|---|---|---|---|---|",
                spec, n_spec);
    printf("\n");
    for (int i = 0; i < n_notes; i++)
        printf("%s\n", notes[i]);
    return rc;
}
