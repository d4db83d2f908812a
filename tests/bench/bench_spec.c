/*
 * bench_spec.c - speculative decoding by prompt lookup (qv_engine_config.spec_tokens), side by
 * side: engines on the same model, one without drafts and some with (draft tokens k, n-gram
 * sizes min..max, perhaps only in steps of at most 2 decoding sequences), run the same greedy
 * chat requests in rotating order, round after round.
 *
 * Workloads: "copy" (answers that repeat much of their prompt: rewrite, convert, repeat) and
 * "chat" (open questions whose answers do not), each with C requests in flight (closed loop).
 * Reported per engine and workload: generated tokens per second, steps, drafts checked and
 * kept; then the ratio of tokens per second to the engine without drafts (median over the
 * rounds), and whether every request produced the same tokens (they must: a kept draft is the
 * model's own greedy choice).
 *
 * usage: bench_spec [MODEL] [--threads N] [--concurrency C] [--gen G] [--rounds K]
 *                   [--temperature T]   (default 0: greedy; else seeded sampling)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"

#define MAX_GEN 256
#define N_PROMPTS 4

typedef struct req {
    int32_t *ids;
    size_t n_ids;
    int seq_id;
    int32_t toks[MAX_GEN];
    int n;
    bool done;
} req;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)seq_id;
    (void)lp;
    req *r = user;
    if (r->n < MAX_GEN) r->toks[r->n++] = tok;
    if (fin != QV_FINISH_NONE) r->done = true;
}

#define CHAT(q) "<|im_start|>user\n" q "<|im_end|>\n<|im_start|>assistant\n"

static const char *const k_copy[N_PROMPTS] = {
    CHAT("Rewrite this text with the spelling fixed, in full: The quick brown fox jumpd over the "
         "lazy dog. Then the dog woke up and chasd the fox acros the feild until both of them "
         "were tired and went home."),
    CHAT("Turn this list into a numbered list, one item per line: apples, pears, plums, "
         "cherries, apricots, peaches, figs, dates, lemons, limes, oranges, grapes."),
    CHAT("Repeat this sentence three times: Small models can run on a laptop."),
    CHAT("Add a comment line above each line of this C code:\nint add(int a, int b) {\n    int "
         "s = a + b;\n    return s;\n}"),
};

static const char *const k_chat[N_PROMPTS] = {
    CHAT("Why is the sky blue?"),
    CHAT("Write a short poem about autumn."),
    CHAT("Give three tips for learning a new language."),
    CHAT("What does a compiler do?"),
};

typedef struct spec_cfg {
    int k, g_min, g_max, max_batch;
    const char *name;
} spec_cfg;

static const spec_cfg k_cfgs[] = {
    {0, 0, 0, 0, "no drafts"},
    {4, 1, 4, 0, "k=4 n=1..4"},
    {4, 2, 4, 0, "k=4 n=2..4"},
    {3, 3, 5, 0, "k=3 n=3..5"},
    {4, 3, 5, 0, "k=4 n=3..5"},
    {6, 3, 5, 0, "k=6 n=3..5"},
    {4, 3, 5, 2, "k=4 n=3..5, batch <= 2 (the server's default)"},
};
#define N_CFG ((int)(sizeof(k_cfgs) / sizeof(k_cfgs[0])))

typedef struct result {
    double tps;
    int steps;
    unsigned long long drafts, kept;
} result;

/* Runs the requests, conc at a time; the tokens in rs. */
static void run(qv_engine *e, req *rs, int n, int conc, int gen, float temp, result *out) {
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = gen;
    gp.sampling.temperature = temp;
    qv_error err = {0};
    qv_engine_stats s0, s1;
    qv_engine_get_stats(e, &s0);
    for (int i = 0; i < n; i++)
        rs[i].n = 0, rs[i].done = false;
    int next = 0, steps = 0, tokens = 0;
    const double t0 = qv_time_s();
    while (next < n || qv_engine_n_active(e) > 0) {
        while (next < n && qv_engine_n_active(e) < conc) {
            gp.sampling.seed = 1000 + (uint64_t)next; /* each request its own, every round */
            if (qv_engine_add(e, rs[next].ids, rs[next].n_ids, &gp, on_tok, &rs[next],
                              &rs[next].seq_id, &err) != QV_OK) {
                fprintf(stderr, "add: %s\n", err.msg);
                exit(1);
            }
            next++;
        }
        if (qv_engine_step(e, &err) != QV_OK) {
            fprintf(stderr, "step: %s\n", err.msg);
            exit(1);
        }
        steps++;
    }
    const double wall = qv_time_s() - t0;
    for (int i = 0; i < n; i++)
        tokens += rs[i].n;
    qv_engine_get_stats(e, &s1);
    out->tps = tokens / wall;
    out->steps = steps;
    out->drafts = s1.spec_draft_tokens - s0.spec_draft_tokens;
    out->kept = s1.spec_accepted_tokens - s0.spec_accepted_tokens;
}

int main(int argc, char **argv) {
    char model_buf[1024];
    const char *model = bench_default_model(model_buf, sizeof model_buf);
    int threads = 2, conc = 1, gen = 128, rounds = 3;
    float temp = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--concurrency") && i + 1 < argc)
            conc = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && i + 1 < argc)
            gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--temperature") && i + 1 < argc)
            temp = (float)atof(argv[++i]);
        else if (argv[i][0] != '-')
            model = argv[i];
        else {
            fprintf(stderr,
                    "usage: %s [MODEL] [--threads N] [--concurrency C] [--gen G] "
                    "[--rounds K] [--temperature T]\n",
                    argv[0]);
            return 2;
        }
    }
    if (gen > MAX_GEN) gen = MAX_GEN;
    qv_engine *e[N_CFG];
    for (int c = 0; c < N_CFG; c++) {
        qv_engine_config ec;
        qv_engine_config_default(&ec);
        ec.model_path = model;
        ec.n_threads = threads;
        ec.no_prefix_cache = true; /* every round computes its prompts */
        ec.spec_tokens = k_cfgs[c].k;
        ec.spec_ngram_min = k_cfgs[c].g_min;
        ec.spec_ngram_max = k_cfgs[c].g_max;
        ec.spec_max_batch = k_cfgs[c].max_batch;
        qv_error err = {0};
        if (qv_engine_create(&ec, &e[c], &err) != QV_OK) {
            fprintf(stderr, "engine: %s\n", err.msg);
            return 1;
        }
    }
    static const char *const *const loads[] = {k_copy, k_chat};
    static const char *const load_names[] = {"copy", "chat"};
    printf("model %s, %d threads, %d request(s) in flight, at most %d tokens, temperature %.2f "
           "(seeded), %d rounds\n\n",
           model, threads, conc, gen, (double)temp, rounds);
    printf("| workload | engine | tokens/s (median) | vs no drafts (median, min-max) | steps | "
           "drafts kept / checked | same tokens |\n|---|---|---|---|---|---|---|\n");
    for (int w = 0; w < 2; w++) {
        req rs[N_CFG][N_PROMPTS];
        memset(rs, 0, sizeof(rs));
        for (int c = 0; c < N_CFG; c++)
            for (int i = 0; i < N_PROMPTS; i++) {
                qv_error err = {0};
                if (qv_tokenizer_encode(qv_engine_tokenizer(e[c]), loads[w][i], strlen(loads[w][i]),
                                        false, &rs[c][i].ids, &rs[c][i].n_ids, &err) != QV_OK) {
                    fprintf(stderr, "tokenize: %s\n", err.msg);
                    return 1;
                }
            }
        double tps[N_CFG][16], ratio[N_CFG][16];
        result last[N_CFG];
        bool same[N_CFG];
        for (int c = 0; c < N_CFG; c++)
            same[c] = true;
        for (int r = 0; r < rounds && r < 16; r++) {
            for (int j = 0; j < N_CFG; j++) { /* rotating order */
                const int c = (j + r) % N_CFG;
                run(e[c], rs[c], N_PROMPTS, conc, gen, temp, &last[c]);
                tps[c][r] = last[c].tps;
            }
            for (int c = 0; c < N_CFG; c++) {
                ratio[c][r] = tps[c][r] / tps[0][r];
                for (int i = 0; i < N_PROMPTS; i++)
                    same[c] =
                        same[c] && rs[c][i].n == rs[0][i].n &&
                        !memcmp(rs[c][i].toks, rs[0][i].toks, (size_t)rs[0][i].n * sizeof(int32_t));
            }
        }
        for (int c = 0; c < N_CFG; c++) {
            const int n = rounds < 16 ? rounds : 16;
            double lo = ratio[c][0], hi = ratio[c][0];
            for (int r = 1; r < n; r++)
                lo = ratio[c][r] < lo ? ratio[c][r] : lo, hi = ratio[c][r] > hi ? ratio[c][r] : hi;
            const double med_tps = bench_median(tps[c], n);
            const double med = bench_median(ratio[c], n);
            printf("| %s | %s | %.1f | %.2fx (%.2f-%.2f) | %d | %llu / %llu | %s |\n",
                   load_names[w], k_cfgs[c].name, med_tps, med, lo, hi, last[c].steps, last[c].kept,
                   last[c].drafts, same[c] ? "yes" : "NO");
        }
        for (int c = 0; c < N_CFG; c++)
            for (int i = 0; i < N_PROMPTS; i++)
                qv_free(rs[c][i].ids);
    }
    for (int c = 0; c < N_CFG; c++)
        qv_engine_destroy(e[c]);
    return 0;
}
