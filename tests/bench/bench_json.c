/*
 * bench_json.c - the cost of JSON mode, side by side: the same chat requests, each asking for a
 * small JSON object, run as one batch without and with response_format json_object, in
 * alternating rounds on one engine (prefix cache off, so both modes compute their prompts).
 *
 * When the model's free answer is already a JSON object, the constrained answer is the same
 * tokens (the mask removes only what breaks the JSON), so the two modes do the same model
 * work and the difference is the masking: one pass over the vocabulary for each grammar state
 * not in the engine's mask cache, and one pass applying a cached mask per row and step (JSON
 * rows are also sampled on the host). Reported per mode: wall time, generated tokens, ms per
 * engine step; then the ratio JSON / free (median over the rounds), the masks computed and
 * taken from the cache, and how many answers were identical in both modes.
 *
 * usage: bench_json [MODEL] [--threads N] [--requests R] [--gen G] [--rounds K]
 *                   [--device cpu|cuda]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "engine/engine.h"

#define MAX_REQ 32
#define MAX_GEN 128

typedef struct req {
    int32_t *ids;
    size_t n_ids;
    int32_t toks[2][MAX_GEN]; /* [mode] */
    int n[2];
    int mode;
} req;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)seq_id;
    (void)lp;
    (void)fin;
    req *r = user;
    if (r->n[r->mode] < MAX_GEN) r->toks[r->mode][r->n[r->mode]++] = tok;
}

/* One batch of every request in `mode` (1: JSON). Returns the wall time, or < 0. */
static double run_mode(qv_engine *e, req *rs, int n_req, int gen, int mode, int *steps) {
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = gen;
    gp.sampling.temperature = 0;
    gp.json_object = mode == 1;
    qv_error err = {0};
    const double t0 = qv_time_s();
    for (int i = 0; i < n_req; i++) {
        rs[i].mode = mode;
        rs[i].n[mode] = 0;
        if (qv_engine_add(e, rs[i].ids, rs[i].n_ids, &gp, on_tok, &rs[i], NULL, &err) != QV_OK) {
            fprintf(stderr, "bench_json: add: %s\n", err.msg);
            return -1;
        }
    }
    *steps = 0;
    while (qv_engine_n_active(e) > 0) {
        if (qv_engine_step(e, &err) != QV_OK) {
            fprintf(stderr, "bench_json: step: %s\n", err.msg);
            return -1;
        }
        ++*steps;
    }
    return qv_time_s() - t0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *device = NULL;
    int n_threads = 0, n_req = 8, gen = 64, rounds = 3;
    for (int i = 1; i < argc; i++) {
        const bool more = i + 1 < argc;
        if (!strcmp(argv[i], "--threads") && more)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && more)
            n_req = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && more)
            gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && more)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && more)
            device = argv[++i];
        else if (argv[i][0] != '-')
            model = argv[i];
        else {
            fprintf(stderr, "bench_json: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n_req < 1 || n_req > MAX_REQ || gen < 1 || gen > MAX_GEN || rounds < 1 || rounds > 32) {
        fprintf(stderr, "bench_json: out-of-range option\n");
        return 2;
    }
    static char def[4096];
    if (!model) model = bench_default_model(def, sizeof(def));
    qv_log_set_level(QV_LOG_WARN);
    qv_engine_config cfg;
    qv_engine_config_default(&cfg);
    cfg.model_path = model;
    cfg.n_threads = n_threads;
    cfg.no_prefix_cache = true;
    cfg.device = device;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&cfg, &e, &err) != QV_OK) {
        fprintf(stderr, "bench_json: %s\n", err.msg);
        return 1;
    }
    static const char *const names[] = {"Bob",  "Alice", "Carol", "Dave",
                                        "Erin", "Frank", "Grace", "Heidi"};
    req rs[MAX_REQ];
    memset(rs, 0, sizeof(rs));
    const qv_tokenizer *tok = qv_engine_tokenizer(e);
    for (int i = 0; i < n_req; i++) {
        char user[160];
        snprintf(user, sizeof(user),
                 "Output a JSON object with the keys \"name\" and \"age\" for %s, %d.",
                 names[i % 8], 20 + 3 * i);
        const qv_chat_msg msg = {.role = "user", .content = user};
        char *text = NULL;
        if (qv_chat_render(tok, NULL, &msg, 1, true, &text, &err) != QV_OK ||
            qv_tokenizer_encode(tok, text, strlen(text), false, &rs[i].ids, &rs[i].n_ids, &err) !=
                QV_OK) {
            fprintf(stderr, "bench_json: prompt: %s\n", err.msg);
            return 1;
        }
        qv_free(text);
    }
    printf("model %s on %s, %d chat requests in one batch, greedy, at most %d tokens, %d "
           "rounds\n\n",
           model, device ? device : "cpu", n_req, gen, rounds);
    printf("| round | mode | wall s | tokens | steps | ms per step |\n|---|---|---|---|---|---|\n");
    double ratio[32];
    qv_engine_stats s0, s1;
    qv_engine_get_stats(e, &s0);
    for (int round = 0; round < rounds; round++) {
        double wall[2];
        int steps[2], toks[2] = {0, 0};
        for (int t = 0; t < 2; t++) { /* alternate which mode goes first */
            const int mode = (round + t) % 2;
            wall[mode] = run_mode(e, rs, n_req, gen, mode, &steps[mode]);
            if (wall[mode] < 0) return 1;
            for (int i = 0; i < n_req; i++)
                toks[mode] += rs[i].n[mode];
        }
        for (int mode = 0; mode < 2; mode++)
            printf("| %d | %s | %.2f | %d | %d | %.1f |\n", round + 1, mode ? "JSON mode" : "free",
                   wall[mode], toks[mode], steps[mode], wall[mode] * 1e3 / steps[mode]);
        ratio[round] = (wall[1] / steps[1]) / (wall[0] / steps[0]);
        fprintf(stderr, "{\"round\":%d,\"wall_s\":[%.4f,%.4f],\"steps\":[%d,%d]}\n", round + 1,
                wall[0], wall[1], steps[0], steps[1]);
    }
    qv_engine_get_stats(e, &s1);
    int same = 0;
    for (int i = 0; i < n_req; i++)
        same += rs[i].n[0] == rs[i].n[1] &&
                !memcmp(rs[i].toks[0], rs[i].toks[1], (size_t)rs[i].n[0] * sizeof(int32_t));
    const double med = bench_median(ratio, rounds);
    printf("\nJSON mode / free, time per step (median of %d rounds): %.3fx; masks computed %llu, "
           "from the cache %llu; identical answers in both modes: %d of %d\n",
           rounds, med, (unsigned long long)(s1.json_mask_misses - s0.json_mask_misses),
           (unsigned long long)(s1.json_mask_hits - s0.json_mask_hits), same, n_req);
    for (int i = 0; i < n_req; i++)
        qv_free(rs[i].ids);
    qv_engine_destroy(e);
    return 0;
}
