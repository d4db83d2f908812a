/*
 * bench_prefix.c - the prefix cache on a shared-system-prompt workload, side by side: two
 * engines on the same model, one with the prefix cache (the default) and one without
 * (no_prefix_cache), run the same requests in alternating rounds.
 *
 * Workload: R requests, each a shared prefix of S tokens (a system prompt / few-shot block,
 * fresh random ids every round so each round starts cold) followed by U tokens of its own, G
 * greedy tokens generated, C requests in flight (closed loop: a finished request is replaced
 * by the next). Reported per engine: wall time of the round, mean and p90 time to first token,
 * prompt tokens computed; then the ratios (no cache / cache), medians over the rounds, and
 * whether every request produced the same tokens in both engines.
 *
 * usage: bench_prefix [MODEL] [--threads N] [--shared S] [--unique U] [--gen G]
 *                     [--requests R] [--concurrency C] [--rounds K] [--device cpu|cuda]
 * On cuda the engines' outputs may part at near ties (bf16); "identical tokens" reports it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "engine/engine.h"

#define MAX_REQ 256
#define MAX_GEN 128

typedef struct req {
    int32_t *ids;
    int n_ids;
    int seq_id;
    double t_add, ttft;
    int32_t toks[MAX_GEN];
    int n;
    bool done;
} req;

typedef struct round_result {
    double wall_s, ttft_mean, ttft_p90;
    unsigned long long computed; /* prompt tokens computed (not from the cache) */
} round_result;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)seq_id;
    (void)lp;
    req *r = user;
    if (r->n == 0) r->ttft = qv_time_s() - r->t_add;
    if (r->n < MAX_GEN) r->toks[r->n++] = tok;
    if (fin != QV_FINISH_NONE) r->done = true;
}

static int run_round(qv_engine *e, req *rs, int n_req, int conc, int gen, round_result *out) {
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = gen;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0;
    qv_error err = {0};
    qv_engine_stats s0, s1;
    qv_engine_get_stats(e, &s0);
    int next = 0, in_flight = 0;
    const double t0 = qv_time_s();
    while (next < n_req || in_flight > 0) {
        while (next < n_req && in_flight < conc) {
            req *r = &rs[next];
            r->n = 0;
            r->done = false;
            r->t_add = qv_time_s();
            if (qv_engine_add(e, r->ids, (size_t)r->n_ids, &gp, on_tok, r, &r->seq_id, &err) !=
                QV_OK) {
                fprintf(stderr, "bench_prefix: add: %s\n", err.msg);
                return -1;
            }
            next++;
            in_flight++;
        }
        if (qv_engine_step(e, &err) != QV_OK) {
            fprintf(stderr, "bench_prefix: step: %s\n", err.msg);
            return -1;
        }
        in_flight = 0;
        for (int i = 0; i < next; i++)
            in_flight += !rs[i].done;
    }
    out->wall_s = qv_time_s() - t0;
    qv_engine_get_stats(e, &s1);
    double t[MAX_REQ], sum = 0;
    for (int i = 0; i < n_req; i++) {
        t[i] = rs[i].ttft;
        sum += t[i];
    }
    qsort(t, (size_t)n_req, sizeof(double), bench_cmp_double);
    out->ttft_mean = sum / n_req;
    out->ttft_p90 = t[(int)(0.9 * (n_req - 1) + 0.5)];
    out->computed = (unsigned long long)((s1.prefix_query_tokens - s0.prefix_query_tokens) -
                                         (s1.prefix_hit_tokens - s0.prefix_hit_tokens));
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    int n_threads = 0, shared = 512, unique = 32, gen = 16, n_req = 16, conc = 4, rounds = 3;
    const char *device = NULL;
    for (int i = 1; i < argc; i++) {
        const bool more = i + 1 < argc;
        if (!strcmp(argv[i], "--threads") && more)
            n_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--shared") && more)
            shared = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--unique") && more)
            unique = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gen") && more)
            gen = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && more)
            n_req = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--concurrency") && more)
            conc = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && more)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && more)
            device = argv[++i];
        else if (argv[i][0] != '-')
            model = argv[i];
        else {
            fprintf(stderr, "bench_prefix: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (n_req < 1 || n_req > MAX_REQ || gen < 1 || gen > MAX_GEN || conc < 1 || rounds < 1 ||
        rounds > 32 || shared < 0 || unique < 1) {
        fprintf(stderr, "bench_prefix: out-of-range option\n");
        return 2;
    }
    static char def[4096];
    if (!model) model = bench_default_model(def, sizeof(def));
    qv_log_set_level(QV_LOG_WARN);
    qv_engine *eng[2] = {NULL, NULL}; /* [0] cache on, [1] off */
    for (int k = 0; k < 2; k++) {
        qv_engine_config cfg;
        qv_engine_config_default(&cfg);
        cfg.model_path = model;
        cfg.n_threads = n_threads;
        cfg.load_tokenizer = false;
        cfg.kv_bytes = (size_t)1 << 30;
        cfg.no_prefix_cache = k == 1;
        cfg.device = device;
        qv_error err = {0};
        if (qv_engine_create(&cfg, &eng[k], &err) != QV_OK) {
            fprintf(stderr, "bench_prefix: %s\n", err.msg);
            return 1;
        }
    }
    const int n_vocab = qv_engine_model(eng[0])->cfg.n_vocab;
    req rs[2][MAX_REQ];
    memset(rs, 0, sizeof(rs));
    const int n_ids = shared + unique;
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < n_req; i++) {
            rs[k][i].ids = malloc((size_t)n_ids * sizeof(int32_t));
            rs[k][i].n_ids = n_ids;
            if (!rs[k][i].ids) return 1;
        }
    printf("model %s on %s, %d requests of %d shared + %d own prompt tokens, %d generated, %d in "
           "flight, %d rounds\n\n",
           model, device ? device : "cpu", n_req, shared, unique, gen, conc, rounds);
    printf("| round | engine | wall s | TTFT mean ms | TTFT p90 ms | prompt tokens computed |\n"
           "|---|---|---|---|---|---|\n");
    double r_wall[32], r_ttft[32];
    int32_t *ids = malloc((size_t)(shared > 0 ? shared : 1) * sizeof(int32_t));
    if (!ids) return 1;
    bool same = true;
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    for (int round = 0; round < rounds; round++) {
        /* a fresh shared prefix and fresh own tokens each round (ids 100.. avoid specials) */
        for (int j = 0; j < shared; j++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            ids[j] = 100 + (int32_t)((rng >> 33) % (uint64_t)(n_vocab - 100));
        }
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        for (int i = 0; i < n_req; i++)
            for (int k = 0; k < 2; k++) {
                memcpy(rs[k][i].ids, ids, (size_t)shared * sizeof(int32_t));
                for (int j = shared; j < n_ids; j++) {
                    uint64_t h = rng + (uint64_t)i * 0x100000001B3ull + (uint64_t)j * 7919u;
                    h ^= h >> 29;
                    rs[k][i].ids[j] = 100 + (int32_t)(h % (uint64_t)(n_vocab - 100));
                }
            }
        round_result res[2];
        for (int t = 0; t < 2; t++) { /* alternate which engine goes first */
            const int k = (round + t) % 2;
            if (run_round(eng[k], rs[k], n_req, conc, gen, &res[k]) != 0) return 1;
        }
        for (int k = 0; k < 2; k++)
            printf("| %d | %s | %.2f | %.1f | %.1f | %llu |\n", round + 1,
                   k == 0 ? "prefix cache" : "no cache", res[k].wall_s, res[k].ttft_mean * 1e3,
                   res[k].ttft_p90 * 1e3, res[k].computed);
        for (int i = 0; i < n_req; i++)
            same = same && rs[0][i].n == rs[1][i].n &&
                   !memcmp(rs[0][i].toks, rs[1][i].toks, (size_t)rs[0][i].n * sizeof(int32_t));
        r_wall[round] = res[1].wall_s / res[0].wall_s;
        r_ttft[round] = res[1].ttft_mean / res[0].ttft_mean;
        fprintf(stderr,
                "{\"round\":%d,\"wall_s\":[%.4f,%.4f],\"ttft_mean_s\":[%.5f,%.5f],"
                "\"computed\":[%llu,%llu]}\n",
                round + 1, res[0].wall_s, res[1].wall_s, res[0].ttft_mean, res[1].ttft_mean,
                res[0].computed, res[1].computed);
    }
    printf("\nno cache / prefix cache (median of %d rounds): wall time %.2fx, mean TTFT %.2fx; "
           "identical tokens in both engines: %s\n",
           rounds, bench_median(r_wall, rounds), bench_median(r_ttft, rounds), same ? "yes" : "NO");
    free(ids);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < n_req; i++)
            free(rs[k][i].ids);
        qv_engine_destroy(eng[k]);
    }
    return same || device ? 0 : 1;
}
