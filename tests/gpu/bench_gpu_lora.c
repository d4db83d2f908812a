/*
 * bench_gpu_lora.c - the multi-adapter benchmarks of issue 7 on the CUDA backend, driven through
 * the real forward path: qv_forward_run_greedy over batches with adapter segments (grouped by
 * adapter as the engine groups them), engine/cuda/lora_cuda.c, the device adapter pool and
 * qv_forward_prefetch_adapter. Synthetic rank-16 LoRA adapters on all seven projections (bf16
 * values drawn from one random bank, each adapter at its own offsets) are built in memory.
 *
 * Sections (one table each; every ratio printed next to its target):
 *  A. decode throughput at batch 32 with 32 distinct adapters / one shared adapter / none,
 *     paired rounds (none, shared, distinct rotated), median of the per-round ratios, against
 *     BENCH.md's roofline ratio R = (W + KV) / (W + KV + D·A) computed from this run's bytes
 *     (W resident weight bytes, KV bytes the batch's attention reads, A bytes per adapter);
 *     targets: distinct >= 0.85 R, shared >= 0.95.
 *  B. closed-loop continuous batching (32 slots, 32-token prompts, 16..48 output tokens, a
 *     finished request replaced at once) with adapters drawn by Zipf popularity from 1,000
 *     registered adapters vs from 5, the device pool holding about 90 adapters (evictions and
 *     copies happen); 1,000 with the engine's policy (prefetch of the waiting requests'
 *     adapters, conversion on the pool's converter thread, a request admitted once its adapter
 *     is on the device) and without it (admitted at once, its step loads the adapter);
 *     each variant on a new, empty pool, the same request stream for both 1,000 variants;
 *     target 1000/5 >= 0.9.
 *  C. cold adapter: time from a request's arrival (the step that admits it beside 31 decoding
 *     sequences) to its first token, adapter not on the device vs resident vs prefetched during
 *     the previous step (converted in the background there; copied by the admitting step);
 *     median of TRIALS.
 *  D. CUDA-graph capture: per batch size, the step that records the graph (capture +
 *     instantiation) against eager and replayed steps, with and without adapters (run first,
 *     so that its step shapes have not been seen before).
 *  E. decode throughput at batch 32 with 32 distinct bottleneck adapters (both sub-blocks,
 *     size dim / 32) and with 32 distinct adaption prompts (10 positions on every layer),
 *     each against none in paired rounds (reported: issue 7 sets no target for them).
 * Time: each section checks a deadline (DEADLINE_S overall; not with --quick) and reports
 * "skipped (time)" past it.
 * Usage: bench_gpu_lora [--model PATH] [--quick]
 *   default: the synthetic ~1B Llama (synth_model.h, random bf16 weights on the device);
 *   --model: a real model directory or GGUF; --quick: few steps (host-logic check, e.g. under
 *   tests/gpu/fake/run_fake.sh, whose timings mean nothing).
 * Thread: single.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "adapters/adapters.h"
#include "engine/cuda/backend_cuda.h"
#include "engine/cuda/cuda_probe.h"
#include "engine/cuda/synth_model.h"
#include "engine/dtype.h"
#include "engine/forward.h"
#include "engine/kv_cache.h"

#define MAX_B 128
#define PAGE 16
#define MAX_TOKENS 256
#define PROMPT 32
#define RANK 16
#define N_REG 1000       /* registered adapters (section B) */
#define POOL_ADAPTERS 90 /* the device pool holds about this many adapters (--quick: 40) */
#define DEADLINE_S 150.0
#define BANK_VALUES ((size_t)32 << 20) /* random bf16 values shared by all adapters */

typedef struct slot {
    qv_kv_seq kv;
    const qv_adapter *ad;
    int n_prompt;   /* prompt tokens (positions 0..n_prompt-1) */
    int n_gen;      /* generated tokens so far (0: prefill pending) */
    int target;     /* tokens to generate, then the request ends (0: no limit) */
    int32_t last;   /* last generated token */
    bool active;    /* holds a request */
    bool prefilled; /* the prompt is in the KV cache */
    double t_arrive;
} slot;

typedef struct bench {
    qv_model *m;
    qv_backend *be;
    qv_kv_cache *kv;
    qv_forward *fwd;
    bool quick;
    double t_start;
    uint32_t rng;
    uint16_t *bank;
    size_t bank_n;
    size_t ad_bytes; /* device bytes of one adapter (bf16 A and B of every projection) */
    slot s[MAX_B];
    /* step scratch */
    int32_t tok[MAX_TOKENS], pos[MAX_TOKENS], sq[MAX_TOKENS], li[MAX_TOKENS], out[MAX_TOKENS];
    int32_t seg_start[MAX_B + 1];
    const qv_adapter *seg_ad[MAX_B];
    const qv_kv_seq *sp[MAX_B];
    int order[MAX_B], bslot[MAX_B];
    int32_t prompt[PROMPT];
    double h2d_bw; /* pinned host-to-device bytes/s, measured at start */
    char summary[12][256];
    int n_summary;
} bench;

/* One row of the closing summary table (tests/gpu/run.sh copies it into its own). */
static void summary(bench *bx, const char *what, const char *value, const char *target,
                    const char *met) {
    if (bx->n_summary < 12)
        snprintf(bx->summary[bx->n_summary++], sizeof bx->summary[0], "| %s | %s | %s | %s |", what,
                 value, target, met);
}

/* Pinned host-to-device copy bandwidth (bytes/s), best of 3 synchronous 64 MiB copies. */
static double h2d_bandwidth(void) {
    const size_t n = (size_t)64 << 20;
    void *h = NULL, *d = NULL;
    double best = 0;
    if (cudaHostAlloc(&h, n, cudaHostAllocDefault) != cudaSuccess) h = NULL;
    if (h && cudaMalloc(&d, n) != cudaSuccess) d = NULL;
    if (h && d) {
        memset(h, 1, n);
        for (int r = 0; r < 3; r++) {
            double t0 = qv_time_s();
            if (cudaMemcpy(d, h, n, cudaMemcpyHostToDevice) != cudaSuccess) break;
            double dt = qv_time_s() - t0;
            if (dt > 0 && (double)n / dt > best) best = (double)n / dt;
        }
    }
    if (d) (void)cudaFree(d);
    if (h) (void)cudaFreeHost(h);
    return best;
}

static uint32_t rnd(bench *bx) {
    bx->rng = bx->rng * 1664525u + 1013904223u;
    return bx->rng >> 8;
}

static double elapsed(const bench *bx) { return qv_time_s() - bx->t_start; }
/* --quick checks the host logic of every section, however slow the device (an emulator) is */
static bool past_deadline(const bench *bx) { return !bx->quick && elapsed(bx) > DEADLINE_S; }

/* ---- synthetic adapters ---- */

/* A rank-RANK LoRA on all seven projections of every layer; A and B point into the bank at
 * random offsets (the struct owns only its layer array). NULL on NOMEM. */
/* An empty adapter of `kind` for the model (the struct owns only its layer array). */
static qv_adapter *syn_base(bench *bx, enum qv_adapter_kind kind) {
    const qv_model_config *c = &bx->m->cfg;
    qv_adapter *ad = qv_calloc(1, sizeof(*ad));
    if (!ad) return NULL;
    ad->layers = qv_calloc((size_t)c->n_layers, sizeof(qv_adapter_layer));
    if (!ad->layers) {
        qv_free(ad);
        return NULL;
    }
    ad->kind = kind;
    ad->n_layers = c->n_layers;
    ad->dim = c->dim;
    ad->n_vocab = c->n_vocab;
    ad->n_kv_heads = c->n_kv_heads;
    ad->head_dim = c->head_dim;
    ad->has_base = true;
    return ad;
}

static qv_adapter *syn_adapter(bench *bx) {
    const qv_model_config *c = &bx->m->cfg;
    qv_adapter *ad = syn_base(bx, QV_ADAPTER_LORA);
    if (!ad) return NULL;
    for (int l = 0; l < c->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            qv_lora *lo = &ad->layers[l].lora[p];
            lo->rank = RANK;
            lo->scale = 2.0f; /* alpha 32 / r 16 */
            lo->n_in = qv_proj_n_in(c, (enum qv_proj)p);
            lo->n_out = qv_proj_n_out(c, (enum qv_proj)p);
            lo->wtype = QV_DTYPE_BF16;
            const size_t na = (size_t)RANK * (size_t)lo->n_in;
            const size_t nb = (size_t)lo->n_out * RANK;
            lo->a16 = bx->bank + rnd(bx) % (bx->bank_n - na);
            lo->b16 = bx->bank + rnd(bx) % (bx->bank_n - nb);
            ad->n_bytes += 2 * (na + nb);
        }
    return ad;
}

static void syn_free(qv_adapter *ad) {
    if (!ad) return;
    qv_free(ad->layers);
    qv_free(ad);
}

/* ---- one step over the active slots ---- */

/* Runs one step: every active slot either prefills its prompt (when the token budget allows;
 * at most max_prefill prompts) or decodes one token. Batch sequences are grouped by adapter in
 * order of first appearance in slot order (deterministic shapes). Returns the tokens generated
 * (-1 on error); *ms the step's wall time; done[i] set when slot i got its first token. */
static int step(bench *bx, int n_slots, int max_prefill, double *ms, bool *first) {
    qv_error err = {0};
    int n = 0, nb = 0, n_pre = 0;
    /* pick the batch's slots */
    int cand[MAX_B], nc = 0;
    for (int i = 0; i < n_slots; i++) {
        slot *s = &bx->s[i];
        if (first) first[i] = false;
        if (!s->active) continue;
        int need = s->prefilled ? 1 : s->n_prompt;
        if (!s->prefilled && (n_pre >= max_prefill || n + need > MAX_TOKENS)) continue;
        if (n + need > MAX_TOKENS) continue;
        const int pos_end = s->prefilled ? s->n_prompt + s->n_gen : s->n_prompt;
        if (qv_kv_seq_reserve(bx->kv, &s->kv, pos_end) != QV_OK) {
            fprintf(stderr, "KV cache full\n");
            return -1;
        }
        n += need;
        n_pre += !s->prefilled;
        cand[nc++] = i;
    }
    if (nc == 0) {
        *ms = 0;
        return 0;
    }
    /* group by adapter, first appearance first */
    bool taken[MAX_B] = {false};
    int n_segs = 0;
    for (int a = 0; a < nc; a++) {
        if (taken[a]) continue;
        const qv_adapter *ad = bx->s[cand[a]].ad;
        bx->seg_ad[n_segs] = ad;
        n_segs++;
        for (int b = a; b < nc; b++)
            if (!taken[b] && bx->s[cand[b]].ad == ad) {
                taken[b] = true;
                bx->order[nb++] = cand[b];
            }
    }
    /* tokens in that order; segment starts */
    n = 0;
    int seg = 0;
    for (int j = 0; j < nb; j++) {
        slot *s = &bx->s[bx->order[j]];
        if (j == 0 || s->ad != bx->s[bx->order[j - 1]].ad) bx->seg_start[seg++] = n;
        bx->sp[j] = &s->kv;
        bx->bslot[j] = bx->order[j];
        if (!s->prefilled) {
            for (int t = 0; t < s->n_prompt; t++) {
                bx->tok[n] = bx->prompt[t % PROMPT];
                bx->pos[n] = t;
                bx->sq[n] = j;
                n++;
            }
        } else {
            bx->tok[n] = s->last;
            bx->pos[n] = s->n_prompt + s->n_gen - 1;
            bx->sq[n] = j;
            n++;
        }
        bx->li[j] = n - 1;
    }
    QV_ASSERT(seg == n_segs);
    bx->seg_start[n_segs] = n;
    bool any_ad = false;
    for (int i = 0; i < n_segs; i++)
        any_ad |= bx->seg_ad[i] != NULL;
    qv_batch b = {.n_tokens = n,
                  .tokens = bx->tok,
                  .pos = bx->pos,
                  .seq = bx->sq,
                  .n_seqs = nb,
                  .seqs = bx->sp,
                  .n_logits = nb,
                  .logits_idx = bx->li,
                  .n_segs = any_ad ? n_segs : 0,
                  .seg_start = bx->seg_start,
                  .seg_adapter = bx->seg_ad};
    const double t0 = qv_time_s();
    if (qv_forward_run_greedy(bx->fwd, &b, bx->out, &err) != QV_OK) {
        fprintf(stderr, "step: %s\n", err.msg);
        return -1;
    }
    *ms = (qv_time_s() - t0) * 1e3;
    int gen = 0;
    for (int j = 0; j < nb; j++) {
        slot *s = &bx->s[bx->bslot[j]];
        if (!s->prefilled && first) first[bx->bslot[j]] = true;
        s->prefilled = true;
        s->last = bx->out[j];
        s->n_gen++;
        gen++;
    }
    return gen;
}

static void slot_start(bench *bx, int i, const qv_adapter *ad, int n_prompt, int target) {
    slot *s = &bx->s[i];
    qv_kv_seq_release(bx->kv, &s->kv);
    memset(s, 0, sizeof(*s));
    s->ad = ad;
    s->n_prompt = n_prompt;
    s->target = target;
    s->active = true;
    s->t_arrive = qv_time_s();
}

static void slots_clear(bench *bx) {
    for (int i = 0; i < MAX_B; i++) {
        qv_kv_seq_release(bx->kv, &bx->s[i].kv);
        memset(&bx->s[i], 0, sizeof(bx->s[i]));
    }
}

/* Prefills slots [0, n) (no adapters unless set) until every one has its first token. */
static int prefill_all(bench *bx, int n) {
    for (int guard = 0; guard < 64; guard++) {
        int pending = 0;
        for (int i = 0; i < n; i++)
            pending += bx->s[i].active && !bx->s[i].prefilled;
        if (!pending) return 0;
        double ms;
        /* prefill only: decodes of already prefilled slots wait */
        bool saved[MAX_B];
        for (int i = 0; i < n; i++) {
            saved[i] = bx->s[i].active;
            if (bx->s[i].prefilled) bx->s[i].active = false;
        }
        int r = step(bx, n, MAX_TOKENS / PROMPT, &ms, NULL);
        for (int i = 0; i < n; i++)
            bx->s[i].active = saved[i];
        if (r < 0) return -1;
    }
    return -1;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    return n ? (n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2])) : 0.0;
}

static void stats_delta(const qv_cuda_stats *a, const qv_cuda_stats *b, qv_cuda_stats *d) {
    d->eager_steps = b->eager_steps - a->eager_steps;
    d->captures = b->captures - a->captures;
    d->replays = b->replays - a->replays;
    d->mismatches = b->mismatches - a->mismatches;
    d->enqueue_s = b->enqueue_s - a->enqueue_s;
    d->instantiate_s = b->instantiate_s - a->instantiate_s;
    d->wait_s = b->wait_s - a->wait_s;
    d->device_s = b->device_s - a->device_s;
}

/* ---- A: distinct / shared / none at batch 32 ---- */

static int section_a(bench *bx, qv_adapter **ads, double wbytes) {
    const int B = 32, rounds = bx->quick ? 2 : 5, steps = bx->quick ? 3 : 24, warm = 2;
    printf("\n### A. decode at batch %d: %d distinct rank-%d adapters (all 7 projections) / one "
           "shared / none\n\n",
           B, B, RANK);
    if (past_deadline(bx)) {
        printf("skipped (time)\n");
        return 0;
    }
    slots_clear(bx);
    for (int i = 0; i < B; i++)
        slot_start(bx, i, NULL, PROMPT, 0);
    if (prefill_all(bx, B) != 0) return -1;
    double tps[3][8], ratio[2][8];
    double ctx_sum = 0;
    int ctx_n = 0;
    static const char *names[3] = {"none", "one shared adapter", "32 distinct adapters"};
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < 3; k++) {
            const int cfg = (k + r) % 3;
            for (int i = 0; i < B; i++)
                bx->s[i].ad = cfg == 0 ? NULL : cfg == 1 ? ads[0] : ads[i];
            double ms = 0, tot = 0;
            for (int st = 0; st < warm + steps; st++) {
                if (step(bx, B, 0, &ms, NULL) < 0) return -1;
                if (st >= warm) tot += ms;
            }
            tps[cfg][r] = B * steps * 1e3 / tot;
            ctx_sum += bx->s[0].n_prompt + bx->s[0].n_gen;
            ctx_n++;
        }
        ratio[0][r] = tps[1][r] / tps[0][r];
        ratio[1][r] = tps[2][r] / tps[0][r];
    }
    const qv_model_config *c = &bx->m->cfg;
    /* F32 pages; QV_CUDA_KV_BF16=1 stores them as bf16 */
    const char *kvb = getenv("QV_CUDA_KV_BF16");
    const double kv_scale = kvb && strcmp(kvb, "1") == 0 ? 0.5 : 1.0;
    const double kv = (double)B * (ctx_sum / ctx_n) * (double)qv_kv_bytes_per_token(c) * kv_scale;
    const double A = (double)bx->ad_bytes;
    const double R32 = (wbytes + kv) / (wbytes + kv + 32.0 * A);
    const double R1 = (wbytes + kv) / (wbytes + kv + A);
    double t_none[8], r_sh[8], r_di[8];
    for (int r = 0; r < rounds; r++) {
        t_none[r] = tps[0][r];
        r_sh[r] = ratio[0][r];
        r_di[r] = ratio[1][r];
    }
    double lo_sh = 1e9, hi_sh = 0, lo_di = 1e9, hi_di = 0;
    for (int r = 0; r < rounds; r++) {
        lo_sh = fmin(lo_sh, r_sh[r]);
        hi_sh = fmax(hi_sh, r_sh[r]);
        lo_di = fmin(lo_di, r_di[r]);
        hi_di = fmax(hi_di, r_di[r]);
    }
    const double mn = median(t_none, rounds), msh = median(r_sh, rounds),
                 mdi = median(r_di, rounds);
    printf("W = %.1f MB resident weights, KV read per step = %.1f MB (mean context %.0f), A = %.2f "
           "MB per adapter\n\n",
           wbytes / 1e6, kv / 1e6, ctx_sum / ctx_n, A / 1e6);
    printf("| batch | adapters | tokens/s (median of %d rounds) | ratio to none (min-max) | "
           "roofline R | ratio / R | target | met |\n|---|---|---|---|---|---|---|---|\n",
           rounds);
    printf("| %d | %s | %.0f | 1 | 1 | - | - | - |\n", B, names[0], mn);
    printf("| %d | %s | %.0f | %.3f (%.3f-%.3f) | %.3f | %.3f | ratio >= 0.95 | %s |\n", B,
           names[1], mn * msh, msh, lo_sh, hi_sh, R1, msh / R1, msh >= 0.95 ? "yes" : "NO");
    printf("| %d | %s | %.0f | %.3f (%.3f-%.3f) | %.3f | %.3f | ratio >= 0.85 R = %.3f | %s |\n", B,
           names[2], mn * mdi, mdi, lo_di, hi_di, R32, mdi / R32, 0.85 * R32,
           mdi >= 0.85 * R32 ? "yes" : "NO");
    printf("\nR = (W + KV) / (W + KV + D*A) (BENCH.md 4.4), D = adapters in the batch.\n");
    char v[64], t[64];
    snprintf(v, sizeof v, "%.3f", msh);
    summary(bx, "A. batch 32, one shared adapter / none", v, ">= 0.95", msh >= 0.95 ? "yes" : "NO");
    snprintf(v, sizeof v, "%.3f (R = %.3f)", mdi, R32);
    snprintf(t, sizeof t, ">= 0.85 R = %.3f", 0.85 * R32);
    summary(bx, "A. batch 32, 32 distinct adapters / none", v, t, mdi >= 0.85 * R32 ? "yes" : "NO");
    fflush(stdout);
    slots_clear(bx);
    return 0;
}

/* ---- B: 1000 registered adapters under Zipf vs 5 ---- */

typedef struct req {
    int adapter; /* index into the registered set */
    int out_len;
} req;

/* Steps a request may wait for its adapter to reach the device (the engine's
 * QV_ADMIT_DEFER_STEPS). */
#define DEFER_STEPS 64

/* Zipf(s) over n: the CDF once, then inverse sampling. */
static int zipf_draw(bench *bx, const double *cdf, int n) {
    double u = (double)(rnd(bx) & 0xffffff) / 16777216.0;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

typedef struct loop_result {
    double tps, ms_step;
    int distinct_mean10; /* mean distinct adapters per step x10 */
    qv_forward_adapter_stats ad0, ad1;
    qv_cuda_stats cs;
    double ttft_p50_ms, ttft_p90_ms;
} loop_result;

/* A new forward pass (and with it a new, empty device adapter pool), so that every variant
 * starts from the same pool state. */
static int reset_forward(bench *bx) {
    qv_error err = {0};
    slots_clear(bx);
    qv_forward_destroy(bx->fwd);
    bx->fwd = NULL;
    if (qv_forward_create(bx->m, bx->be, bx->kv, MAX_TOKENS, &bx->fwd, &err) != QV_OK) {
        fprintf(stderr, "forward: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int closed_loop(bench *bx, qv_adapter **ads, int n_ads, double zipf_s, bool prefetch,
                       int warm, int steps, loop_result *res) {
    const int B = 32;
    if (reset_forward(bx) != 0) return -1;
    double *cdf = qv_malloc(sizeof(double) * (size_t)n_ads);
    double *ttft = qv_malloc(sizeof(double) * (size_t)(steps * B + B));
    if (!cdf || !ttft) {
        qv_free(cdf);
        qv_free(ttft);
        return -1;
    }
    double z = 0;
    for (int k = 0; k < n_ads; k++)
        z += pow(k + 1, -zipf_s);
    double acc = 0;
    for (int k = 0; k < n_ads; k++) {
        acc += pow(k + 1, -zipf_s) / z;
        cdf[k] = acc;
    }
    bx->rng = 0xbe5eedu; /* the same request stream for every variant with this n */
    enum { QN = 8 };
    req queue[QN];
    for (int q = 0; q < QN; q++)
        queue[q] = (req){zipf_draw(bx, cdf, n_ads), 16 + (int)(rnd(bx) % 33)};
    slots_clear(bx);
    /* start with staggered remaining lengths so completions spread over the steps */
    for (int i = 0; i < B; i++) {
        req r = queue[0];
        memmove(queue, queue + 1, sizeof(req) * (QN - 1));
        queue[QN - 1] = (req){zipf_draw(bx, cdf, n_ads), 16 + (int)(rnd(bx) % 33)};
        slot_start(bx, i, ads[r.adapter], PROMPT, 1 + (int)(rnd(bx) % (unsigned)r.out_len));
    }
    if (prefill_all(bx, B) != 0) goto fail;
    int n_ttft = 0;
    long gen_total = 0, distinct_sum = 0;
    double t_total = 0;
    qv_cuda_stats c0, c1;
    bool first[MAX_B];
    req pend[MAX_B];
    bool waiting[MAX_B] = {false};
    int waited[MAX_B] = {0};
    double t_wait[MAX_B] = {0};
    for (int st = 0; st < warm + steps; st++) {
        if (st == warm) {
            qv_forward_adapter_stats_get(bx->fwd, &res->ad0);
            qv_backend_cuda_stats(bx->be, &c0);
        }
        /* finished requests are replaced by the next queued ones; with prefetch, the engine's
         * policy: a request whose adapter is not on the device yet waits (its slot idle, up to
         * DEFER_STEPS steps) while the adapter is converted and copied, so no step waits for
         * it; its time to first token counts from the slot's release */
        for (int i = 0; i < B; i++) {
            slot *s = &bx->s[i];
            if (!waiting[i] && s->active && s->n_gen < s->target) continue;
            if (!waiting[i]) {
                pend[i] = queue[0];
                memmove(queue, queue + 1, sizeof(req) * (QN - 1));
                queue[QN - 1] = (req){zipf_draw(bx, cdf, n_ads), 16 + (int)(rnd(bx) % 33)};
                waiting[i] = true;
                waited[i] = 0;
                t_wait[i] = qv_time_s();
                s->active = false;
            }
            if (prefetch && waited[i] < DEFER_STEPS &&
                !qv_forward_adapter_ready(bx->fwd, ads[pend[i].adapter])) {
                waited[i]++;
                continue;
            }
            slot_start(bx, i, ads[pend[i].adapter], PROMPT, pend[i].out_len);
            s->t_arrive = t_wait[i];
            waiting[i] = false;
        }
        /* the engine's policy: prefetch the adapters of the first 4 waiting requests (idle
         * slots, then the queue) that are not on the device */
        if (prefetch)
            for (int k = 0, n_pf = 0; k < B + QN && n_pf < 4; k++) {
                if (k < B && !waiting[k]) continue;
                const qv_adapter *ad = ads[k < B ? pend[k].adapter : queue[k - B].adapter];
                if (qv_forward_adapter_ready(bx->fwd, ad)) continue;
                qv_error e = {0};
                n_pf += qv_forward_prefetch_adapter(bx->fwd, ad, &e) == QV_OK;
            }
        double ms = 0;
        int g = step(bx, B, 4, &ms, first);
        if (g < 0) goto fail;
        if (st >= warm) {
            gen_total += g;
            t_total += ms;
            const qv_adapter *seen[MAX_B];
            int nd = 0;
            for (int i = 0; i < B; i++) {
                bool dup = false;
                for (int k = 0; k < nd; k++)
                    dup |= seen[k] == bx->s[i].ad;
                if (!dup) seen[nd++] = bx->s[i].ad;
                if (first[i]) ttft[n_ttft++] = (qv_time_s() - bx->s[i].t_arrive) * 1e3;
            }
            distinct_sum += nd;
        }
    }
    qv_forward_adapter_stats_get(bx->fwd, &res->ad1);
    qv_backend_cuda_stats(bx->be, &c1);

    stats_delta(&c0, &c1, &res->cs);
    res->tps = gen_total * 1e3 / t_total;
    res->ms_step = t_total / steps;
    res->distinct_mean10 = (int)(10 * distinct_sum / steps);
    qsort(ttft, (size_t)n_ttft, sizeof(double), cmp_d);
    res->ttft_p50_ms = n_ttft ? ttft[n_ttft / 2] : 0;
    res->ttft_p90_ms = n_ttft ? ttft[(n_ttft * 9) / 10] : 0;
    qv_free(cdf);
    qv_free(ttft);
    slots_clear(bx);
    return 0;
fail:
    qv_free(cdf);
    qv_free(ttft);
    slots_clear(bx);
    return -1;
}

static int section_b(bench *bx, qv_adapter **ads) {
    const int warm = bx->quick ? 4 : 40, steps = bx->quick ? 48 : 128;
    const double s = 1.0;
    printf("\n### B. %d registered adapters vs 5, Zipf %.1f popularity, closed loop (32 slots, "
           "%d-token prompts, 16-48 output tokens), device pool of about %d adapters\n\n",
           N_REG, s, PROMPT, bx->quick ? 40 : POOL_ADAPTERS);
    if (past_deadline(bx)) {
        printf("skipped (time)\n");
        return 0;
    }
    loop_result r[3];
    memset(r, 0, sizeof(r));
    static const int ns[3] = {5, N_REG, N_REG};
    static const bool pf[3] = {true, true, false};
    for (int v = 0; v < 3; v++)
        if (closed_loop(bx, ads, ns[v], s, pf[v], warm, steps, &r[v]) != 0) return -1;
    printf("| adapters | prefetch | tokens/s | ms/step | distinct per step | TTFT p50 / p90 ms | "
           "uploads | MB copied | evictions | hits | prefetch uploads | graph steps eager / "
           "recorded / replayed |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (int v = 0; v < 3; v++) {
        const qv_forward_adapter_stats *a = &r[v].ad0, *b = &r[v].ad1;
        printf("| %d | %s | %.0f | %.3f | %.1f | %.2f / %.2f | %llu | %.1f | %llu | %llu | %llu | "
               "%ld / %ld / %ld |\n",
               ns[v], pf[v] ? "on" : "off", r[v].tps, r[v].ms_step, r[v].distinct_mean10 / 10.0,
               r[v].ttft_p50_ms, r[v].ttft_p90_ms, (unsigned long long)(b->loads - a->loads),
               (double)(b->bytes_copied - a->bytes_copied) / 1e6,
               (unsigned long long)(b->evictions - a->evictions),
               (unsigned long long)(b->hits - a->hits),
               (unsigned long long)(b->prefetch_uploads - a->prefetch_uploads), r[v].cs.eager_steps,
               r[v].cs.captures, r[v].cs.replays);
    }
    const double q = r[1].tps / r[0].tps, q2 = r[2].tps / r[0].tps;
    printf("\n| ratio | value | target | met |\n|---|---|---|---|\n");
    printf("| T(%d adapters, prefetch) / T(5) | %.3f | >= 0.9 | %s |\n", N_REG, q,
           q >= 0.9 ? "yes" : "NO");
    printf("| T(%d adapters, no prefetch) / T(5) | %.3f | (reference) | - |\n", N_REG, q2);
    char v[64];
    snprintf(v, sizeof v, "%.3f (no prefetch %.3f)", q, q2);
    char what[96];
    snprintf(what, sizeof what, "B. %d adapters (Zipf %.1f, pool of ~%d) / 5 adapters", N_REG, s,
             bx->quick ? 40 : POOL_ADAPTERS);
    summary(bx, what, v, ">= 0.9", q >= 0.9 ? "yes" : "NO");
    printf("\npool: %.0f MiB, %d adapters resident at the end\n",
           (double)r[1].ad1.pool_bytes / 1048576.0, r[1].ad1.resident);
    fflush(stdout);
    return 0;
}

/* ---- C: cold adapter time to first token ---- */

static int section_c(bench *bx, qv_adapter **ads) {
    const int B = 32, trials = bx->quick ? 2 : 7;
    printf("\n### C. cold adapter: arrival to first token beside %d decoding sequences\n\n", B - 1);
    if (past_deadline(bx)) {
        printf("skipped (time)\n");
        return 0;
    }
    slots_clear(bx);
    /* the background: 31 sequences on 8 adapters */
    for (int i = 0; i < B - 1; i++)
        slot_start(bx, i, ads[i % 8], PROMPT, 0);
    if (prefill_all(bx, B - 1) != 0) return -1;
    /* adapters never seen by the device: new structs at new bank offsets */
    enum { N_FRESH = 3 * 8 };
    qv_adapter *fresh[N_FRESH] = {NULL};
    for (int i = 0; i < N_FRESH; i++)
        if (!(fresh[i] = syn_adapter(bx))) goto fail;
    double t[3][16], dec[16], pf_prev[16];
    int n_dec = 0;
    int next_fresh = 0;
    qv_forward_adapter_stats a0, a1;
    double bytes_cold = 0;
    /* variant 0 warm, 1 cold, 2 prefetched during the previous step; one untimed round first */
    for (int tr = -1; tr < trials; tr++) {
        for (int v = 0; v < 3; v++) {
            double ms = 0;
            qv_adapter *ad = fresh[next_fresh++];
            if (v == 0) { /* warm: prefetched until it is on the device */
                for (int k = 0; k < 2 || (k < 64 && !qv_forward_adapter_ready(bx->fwd, ad)); k++) {
                    qv_error e = {0};
                    (void)qv_forward_prefetch_adapter(bx->fwd, ad, &e);
                    if (step(bx, B - 1, 0, &ms, NULL) < 0) goto fail;
                }
            } else if (v == 2) { /* prefetched with the previous (decode-only) step */
                qv_error e = {0};
                (void)qv_forward_prefetch_adapter(bx->fwd, ad, &e);
                if (step(bx, B - 1, 0, &ms, NULL) < 0) goto fail;
                if (tr >= 0) pf_prev[tr] = ms;
            } else {
                if (step(bx, B - 1, 0, &ms, NULL) < 0) goto fail;
                if (tr >= 0 && n_dec < 16) dec[n_dec++] = ms;
            }
            qv_forward_adapter_stats_get(bx->fwd, &a0);
            slot_start(bx, B - 1, ad, PROMPT, 0);
            bool first[MAX_B];
            if (step(bx, B, 1, &ms, first) < 0) goto fail;
            qv_forward_adapter_stats_get(bx->fwd, &a1);
            if (!first[B - 1]) {
                fprintf(stderr, "cold: the request was not admitted\n");
                goto fail;
            }
            if (tr >= 0) t[v][tr] = (qv_time_s() - bx->s[B - 1].t_arrive) * 1e3;
            if (v == 1 && tr >= 0) bytes_cold = (double)(a1.bytes_copied - a0.bytes_copied);
            bx->s[B - 1].active = false;
            qv_kv_seq_release(bx->kv, &bx->s[B - 1].kv);
        }
    }
    const double w = median(t[0], trials), cold = median(t[1], trials), pre = median(t[2], trials),
                 d = median(dec, n_dec), pp = median(pf_prev, trials);
    printf("| adapter | time to first token, ms (median of %d) | vs warm |\n|---|---|---|\n",
           trials);
    printf("| warm (resident) | %.3f | 1.00x |\n", w);
    printf("| cold (not on the device; %.1f MB uploaded in the step) | %.3f | %.2fx |\n",
           bytes_cold / 1e6, cold, cold / w);
    printf("| prefetched during the previous step | %.3f | %.2fx |\n", pre, pre / w);
    const double h2d_ms = bx->h2d_bw > 0 ? bytes_cold / bx->h2d_bw * 1e3 : 0.0;
    printf("\ndecode step of the 31 others alone: %.3f ms (with a prefetch issued: %.3f ms); "
           "cold penalty %.3f ms = %.1f GB/s of adapter bytes; the adapter's H2D time at the "
           "measured %.1f GB/s: %.3f ms (target G6: penalty <= H2D time + one decode step = "
           "%.3f ms)\n",
           d, pp, cold - w, (cold - w) > 0 ? bytes_cold / ((cold - w) * 1e-3) / 1e9 : 0.0,
           bx->h2d_bw / 1e9, h2d_ms, h2d_ms + d);
    char v[128], tg[64];
    snprintf(v, sizeof v, "cold %.2f ms / warm %.2f ms = %.2fx; prefetched %.2fx", cold, w,
             cold / w, pre / w);
    snprintf(tg, sizeof tg, "penalty %.2f ms <= %.2f ms (G6)", cold - w, h2d_ms + d);
    summary(bx, "C. cold adapter, time to first token", v, tg,
            cold - w <= h2d_ms + d ? "yes" : "NO");
    fflush(stdout);
    slots_clear(bx);
    for (int i = 0; i < N_FRESH; i++) {
        qv_forward_adapter_forget(bx->fwd, fresh[i]); /* no conversion may still read it */
        syn_free(fresh[i]);
    }
    return 0;
fail:
    slots_clear(bx);
    for (int i = 0; i < N_FRESH; i++) {
        if (fresh[i]) qv_forward_adapter_forget(bx->fwd, fresh[i]);
        syn_free(fresh[i]);
    }
    return -1;
}

/* ---- D: CUDA-graph capture per batch size ---- */

static int section_d(bench *bx, qv_adapter **ads) {
    static const int bs[5] = {1, 8, 32, 64, 128};
    printf("\n### D. CUDA-graph capture per batch size (decode steps; step 1 eager, step 2 "
           "recorded, then replays)\n\n");
    if (past_deadline(bx)) {
        printf("skipped (time)\n");
        return 0;
    }
    printf("| batch | adapters | eager step ms | recording step ms (of which instantiate) | "
           "replay step ms | recorded / replayed |\n|---|---|---|---|---|---|\n");
    for (int k = 0; k < 6; k++) {
        const int B = k < 5 ? bs[k] : 32;
        const bool lora = k == 5;
        if (bx->quick && B > 32) continue;
        slots_clear(bx);
        for (int i = 0; i < B; i++)
            slot_start(bx, i, lora ? ads[i] : NULL, 16, 0);
        if (prefill_all(bx, B) != 0) return -1;
        double ms[6] = {0};
        qv_cuda_stats c0, c1, c2, d1, d;
        qv_backend_cuda_stats(bx->be, &c0);
        for (int st = 0; st < 6; st++) {
            if (step(bx, B, 0, &ms[st], NULL) < 0) return -1;
            if (st == 1) qv_backend_cuda_stats(bx->be, &c1);
        }
        qv_backend_cuda_stats(bx->be, &c2);
        stats_delta(&c0, &c1, &d1);
        stats_delta(&c0, &c2, &d);
        double rep[4] = {ms[2], ms[3], ms[4], ms[5]};
        const double mr = median(rep, 4);
        printf("| %d | %s | %.3f | %.3f (%.3f) | %.3f | %ld / %ld |\n", B,
               lora ? "32 distinct" : "none", ms[0], ms[1], d1.instantiate_s * 1e3, mr, d.captures,
               d.replays);
        if (B == 32) {
            char v[128];
            snprintf(v, sizeof v, "recording step %.2f ms (instantiate %.2f), replay %.3f ms",
                     ms[1], d1.instantiate_s * 1e3, mr);
            summary(bx,
                    lora ? "D. graph capture, batch 32, 32 adapters" : "D. graph capture, batch 32",
                    v, "reported", "-");
        }
    }
    fflush(stdout);
    slots_clear(bx);
    return 0;
}

/* ---- E: the other adapter kinds at decode ---- */

#define E_AP_LEN 10
#define E_VALS ((size_t)1 << 22) /* F32 values shared by E's adapters (own offsets each) */

/* A bottleneck adapter (Houlsby: a unit after both sub-blocks of every layer, size dim / 32,
 * silu) or an adaption prompt (E_AP_LEN positions on every layer), its arrays pointing into
 * vals at random offsets. NULL on NOMEM. */
static qv_adapter *syn_other(bench *bx, bool bottleneck, float *vals) {
    const qv_model_config *c = &bx->m->cfg;
    qv_adapter *ad = syn_base(bx, bottleneck ? QV_ADAPTER_BOTTLENECK : QV_ADAPTER_ADAPTION_PROMPT);
    if (!ad) return NULL;
    const size_t dim = (size_t)c->dim;
#define AT(n) (vals + rnd(bx) % (E_VALS - (n)))
    if (!bottleneck) {
        ad->ap_n_layers = c->n_layers;
        ad->ap_first_layer = 0;
        ad->ap_len = E_AP_LEN;
        ad->ap_prompt = AT((size_t)c->n_layers * E_AP_LEN * dim);
        ad->ap_gate = AT((size_t)c->n_layers);
        return ad;
    }
    ad->bn_act = QV_BN_ACT_SILU;
    ad->bn_residual = QV_BN_RES_BEFORE_LN;
    ad->bn_original_ln_after = true;
    const int d = QV_MAX(c->dim / 32, 1);
    for (int l = 0; l < c->n_layers; l++) {
        qv_bn_unit *us[2] = {&ad->layers[l].bn_attn, &ad->layers[l].bn_ffn};
        for (int w = 0; w < 2; w++) {
            us[w]->d = d;
            us[w]->down_w = AT((size_t)d * dim);
            us[w]->down_b = AT((size_t)d);
            us[w]->up_w = AT((size_t)d * dim);
            us[w]->up_b = AT(dim);
            us[w]->scaling = 1.0f;
        }
    }
#undef AT
    return ad;
}

static int section_e(bench *bx) {
    const int B = 32, rounds = bx->quick ? 1 : 3, steps = bx->quick ? 3 : 16, warm = 2;
    const qv_model_config *c = &bx->m->cfg;
    printf("\n### E. decode at batch %d: %d distinct bottleneck adapters (both sub-blocks, size "
           "%d) / %d distinct adaption prompts (%d positions, every layer) / none\n\n",
           B, B, QV_MAX(c->dim / 32, 1), B, E_AP_LEN);
    if (past_deadline(bx)) {
        printf("skipped (time)\n");
        return 0;
    }
    float *vals = qv_malloc(E_VALS * sizeof(float));
    qv_adapter *bn[32] = {NULL}, *ap[32] = {NULL};
    int rc = -1;
    if (!vals) goto out;
    for (size_t i = 0; i < E_VALS; i++) /* uniform in about +-0.02 */
        vals[i] = ((float)(rnd(bx) & 0xffff) / 65536.0f - 0.5f) * 0.04f;
    for (int i = 0; i < B; i++)
        if (!(bn[i] = syn_other(bx, true, vals)) || !(ap[i] = syn_other(bx, false, vals))) goto out;
    slots_clear(bx);
    for (int i = 0; i < B; i++)
        slot_start(bx, i, NULL, PROMPT, 0);
    if (prefill_all(bx, B) != 0) goto out;
    double tps[3][8];
    static const char *names[3] = {"none", "32 distinct bottleneck adapters",
                                   "32 distinct adaption prompts"};
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 3; k++) {
            const int cfg = (k + r) % 3;
            for (int i = 0; i < B; i++)
                bx->s[i].ad = cfg == 0 ? NULL : cfg == 1 ? bn[i] : ap[i];
            double ms = 0, tot = 0;
            for (int st = 0; st < warm + steps; st++) {
                if (step(bx, B, 0, &ms, NULL) < 0) goto out;
                if (st >= warm) tot += ms;
            }
            tps[cfg][r] = B * steps * 1e3 / tot;
        }
    double r_bn[8], r_ap[8], t0[8];
    for (int r = 0; r < rounds; r++) {
        t0[r] = tps[0][r];
        r_bn[r] = tps[1][r] / tps[0][r];
        r_ap[r] = tps[2][r] / tps[0][r];
    }
    const double mn = median(t0, rounds), mbn = median(r_bn, rounds), map = median(r_ap, rounds);
    printf("| batch | adapters | tokens/s (median of %d rounds) | ratio to none |\n"
           "|---|---|---|---|\n| %d | %s | %.0f | 1 |\n| %d | %s | %.0f | %.3f |\n"
           "| %d | %s | %.0f | %.3f |\n",
           rounds, B, names[0], mn, B, names[1], mn * mbn, mbn, B, names[2], mn * map, map);
    char v[64];
    snprintf(v, sizeof v, "%.3f", mbn);
    summary(bx, "E. batch 32, 32 distinct bottleneck adapters / none", v, "reported", "-");
    snprintf(v, sizeof v, "%.3f", map);
    summary(bx, "E. batch 32, 32 distinct adaption prompts / none", v, "reported", "-");
    fflush(stdout);
    rc = 0;
out:
    slots_clear(bx);
    for (int i = 0; i < B; i++) {
        syn_free(bn[i]);
        syn_free(ap[i]);
    }
    qv_free(vals);
    if (rc) fprintf(stderr, "section E failed\n");
    return rc;
}

int main(int argc, char **argv) {
    const char *model_path = NULL;
    bench *bx = qv_calloc(1, sizeof(*bx));
    if (!bx) return 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_path = argv[++i];
        else if (!strcmp(argv[i], "--quick"))
            bx->quick = true;
        else {
            fprintf(stderr, "usage: bench_gpu_lora [--model PATH] [--quick]\n");
            return 2;
        }
    }
    if (qv_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device\n");
        qv_free(bx);
        return 77;
    }
    bx->t_start = qv_time_s();
    char dev[256];
    int major = 0, minor = 0;
    if (qv_cuda_device_name(dev, sizeof dev, &major, &minor) != 0) snprintf(dev, sizeof dev, "?");
    int rc = 1;
    qv_error err = {0};
    qv_adapter **ads = NULL;
    qv_model_config cfg = qv_synth_config_llama_1b();
    qv_cuda_opts o;
    qv_cuda_opts_default(&o);
    o.max_tokens = MAX_TOKENS;
    qv_status st;
    if (model_path) {
        st = qv_model_load(model_path, &bx->m, &err);
    } else {
        o.random_seed = 0x10ade5;
        st = qv_synth_model_create(&cfg, &bx->m, &err);
    }
    if (st != QV_OK) {
        fprintf(stderr, "model: %s\n", err.msg);
        goto done;
    }
    const qv_model_config *c = &bx->m->cfg;
    /* KV: 128 sequences of up to 256 tokens */
    const int n_pages = MAX_B * (256 / PAGE);
    const size_t kv_bytes = qv_kv_bytes_per_token(c) * (size_t)PAGE * (size_t)n_pages;
    o.arena_bytes = kv_bytes + ((size_t)1 << 30);
    /* bank and the adapter size, then the pool: about POOL_ADAPTERS adapters */
    bx->bank_n = BANK_VALUES;
    {
        size_t widest = 0;
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            size_t na = (size_t)RANK * (size_t)qv_proj_n_in(c, (enum qv_proj)p),
                   nb = (size_t)qv_proj_n_out(c, (enum qv_proj)p) * RANK;
            widest = QV_MAX(widest, QV_MAX(na, nb));
            bx->ad_bytes += 2 * (na + nb);
        }
        bx->ad_bytes *= (size_t)c->n_layers;
        if (bx->bank_n < 4 * widest) bx->bank_n = 4 * widest;
    }
    bx->bank = qv_malloc(bx->bank_n * sizeof(uint16_t));
    if (!bx->bank) goto done;
    bx->rng = 0x5eed;
    for (size_t i = 0; i < bx->bank_n; i++) /* uniform in about +-0.02 */
        bx->bank[i] = qv_f32_to_bf16(((float)(rnd(bx) & 0xffff) / 65536.0f - 0.5f) * 0.04f);
    {
        /* matrices are 256-byte aligned in 64 KiB pages: round each adapter up to its pages */
        const size_t page = (size_t)64 << 10;
        const size_t per =
            (bx->ad_bytes + (size_t)QV_PROJ_COUNT * c->n_layers * 2 * 256 + page - 1) / page * page;
        const size_t n_fit = bx->quick ? 40 : POOL_ADAPTERS; /* >= 32: section A holds 32 */
        const size_t mb = (per * n_fit + ((size_t)1 << 20) - 1) >> 20;
        char buf[32];
        snprintf(buf, sizeof buf, "%zu", mb);
        setenv("QV_CUDA_ADAPTER_POOL_MB", buf, 1);
    }
    if (qv_backend_cuda_create(bx->m, &o, &bx->be, &err) != QV_OK ||
        qv_kv_cache_create(bx->be, c, n_pages, PAGE, &bx->kv, &err) != QV_OK ||
        qv_forward_create(bx->m, bx->be, bx->kv, MAX_TOKENS, &bx->fwd, &err) != QV_OK) {
        fprintf(stderr, "setup: %s\n", err.msg);
        goto done;
    }
    const double wbytes = (double)qv_backend_cuda_weight_bytes(bx->be);
    bx->h2d_bw = h2d_bandwidth();
    printf("device: %s (sm_%d%d); model %s: dim %d, %d layers, ff %d, vocab %d, %.1f MB "
           "resident; rank-%d LoRA on q,k,v,o,gate,up,down = %.2f MB per adapter (bf16); "
           "adapter pool %s MiB; pinned host-to-device copy %.1f GB/s\n",
           dev, major, minor, model_path ? model_path : "Llama-1B-shaped (synthetic)", c->dim,
           c->n_layers, c->n_ff, c->n_vocab, wbytes / 1e6, RANK, (double)bx->ad_bytes / 1e6,
           getenv("QV_CUDA_ADAPTER_POOL_MB"), bx->h2d_bw / 1e9);
    ads = qv_calloc(N_REG, sizeof(*ads));
    if (!ads) goto done;
    for (int i = 0; i < N_REG; i++)
        if (!(ads[i] = syn_adapter(bx))) goto done;
    for (int i = 0; i < PROMPT; i++)
        bx->prompt[i] = (int32_t)(rnd(bx) % (uint32_t)c->n_vocab);
    fflush(stdout);
    /* D first: its step shapes are new then, so its first steps are really recorded */
    if (section_d(bx, ads) != 0 || section_a(bx, ads, wbytes) != 0 || section_b(bx, ads) != 0 ||
        section_c(bx, ads) != 0 || section_e(bx) != 0)
        goto done;
    printf("\n| benchmark | value | target | met |\n|---|---|---|---|\n");
    for (int i = 0; i < bx->n_summary; i++)
        printf("SUMMARY%s\n", bx->summary[i]);
    qv_forward_adapter_stats fs;
    qv_forward_adapter_stats_get(bx->fwd, &fs);
    printf("\nadapter pool of the last forward pass (B's last variant, then C): %llu uploads, %.0f "
           "MB copied, "
           "%llu evictions, %llu hits, "
           "%llu prefetches (%llu uploads, %llu refused); %.1f s\n",
           (unsigned long long)fs.loads, (double)fs.bytes_copied / 1e6,
           (unsigned long long)fs.evictions, (unsigned long long)fs.hits,
           (unsigned long long)fs.prefetches, (unsigned long long)fs.prefetch_uploads,
           (unsigned long long)fs.prefetch_failures, elapsed(bx));
    rc = 0;
done:
    if (rc) fprintf(stderr, "bench_gpu_lora: failed\n");
    if (bx->kv) slots_clear(bx);
    if (ads)
        for (int i = 0; i < N_REG; i++) {
            if (ads[i] && bx->fwd) qv_forward_adapter_forget(bx->fwd, ads[i]);
            syn_free(ads[i]);
        }
    qv_free(ads);
    qv_forward_destroy(bx->fwd);
    qv_kv_cache_destroy(bx->kv);
    if (bx->be) bx->be->iface->destroy(bx->be);
    if (bx->m) {
        if (model_path)
            qv_model_free(bx->m);
        else
            qv_synth_model_free(bx->m);
    }
    qv_free(bx->bank);
    qv_free(bx);
    return rc;
}
