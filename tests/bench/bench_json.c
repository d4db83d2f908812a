/*
 * bench_json.c - the cost of JSON mode and of structured output, side by side: the same chat
 * requests, each asking for a small JSON object, run as one batch free, with response_format
 * json_object, and with a json_schema that the answers fit (each request compiling its own
 * copy of the schema, as the server does), in rotating rounds on one engine (prefix cache off,
 * so every mode computes its prompts).
 *
 * When the model's free answer is already such an object, the constrained answer is the same
 * tokens (the mask removes only what breaks the JSON or the schema), so the modes do the same
 * model work and the difference is the masking: one pass over the vocabulary for each grammar
 * state not in the engine's mask cache, and one pass applying a cached mask per row and step
 * (constrained rows are also sampled on the host). Reported per mode: wall time, generated
 * tokens, ms per engine step, masks computed and taken from the cache; then the ratios to free
 * (median over the rounds) and how many answers were identical to the free ones.
 *
 * A fourth mode, tool calls (tool_choice "required" over --tools N functions, default 64),
 * times the calls grammar: its answers are calls, so only its time per step and its masks are
 * comparable. A fifth, guided_regex, asks for the same objects as a pattern (raw text: the
 * keys in order, any whitespace), so its answers compare with the free ones too.
 *
 * usage: bench_json [MODEL] [--threads N] [--requests R] [--gen G] [--rounds K] [--tools N]
 *                   [--device cpu|cuda]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "engine/engine.h"
#include "engine/json_grammar.h"

#define MAX_REQ 32
#define MAX_GEN 128

enum { FREE, JSON_MODE, SCHEMA, TOOLS, REGEX, N_MODES };
static const char *const mode_names[N_MODES] = {"free", "JSON mode", "json_schema", "tool calls",
                                                "guided_regex"};

typedef struct req {
    int32_t *ids;
    size_t n_ids;
    int32_t toks[N_MODES][MAX_GEN];
    int n[N_MODES];
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

/* tool_choice "required" over n_tools functions (get_0 ... get_<n-1>, three parameters each):
 * the calls schema the server compiles, compact. The answers are calls, not the free ones. */
static char *tools_text(int n_tools) {
    const size_t cap = (size_t)n_tools * 256 + 16;
    char *t = malloc(cap);
    if (!t) return NULL;
    size_t o = (size_t)snprintf(t, cap, "[");
    for (int i = 0; i < n_tools; i++)
        o += (size_t)snprintf(t + o, cap - o,
                              "%s{\"type\":\"function\",\"function\":{\"name\":\"get_%d\","
                              "\"parameters\":{\"type\":\"object\",\"properties\":{\"name\":"
                              "{\"type\":\"string\"},\"age\":{\"type\":\"integer\"},\"city\":"
                              "{\"enum\":[\"Paris\",\"Rome\"]}},\"required\":[\"name\"]}}}",
                              i ? "," : "", i);
    snprintf(t + o, cap - o, "]");
    return t;
}

/* What the prompts ask for, as a schema (the server compiles one per request). */
static const char person_schema[] =
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\",\"maxLength\":40},"
    "\"age\":{\"type\":\"integer\"}},\"required\":[\"name\",\"age\"],"
    "\"additionalProperties\":false}";

/* The same objects as a guided_regex pattern (a raw-text document): the keys in order, any
 * whitespace between the tokens. */
static const char person_regex[] =
    "\\{\\s*\"name\"\\s*:\\s*\"[^\"\\\\\\n]+\"\\s*,\\s*\"age\"\\s*:\\s*\\d+\\s*\\}";

/* One batch of every request in `mode`. Returns the wall time, or < 0. */
static double run_mode(qv_engine *e, req *rs, int n_req, int gen, int mode, const char *tools,
                       int *steps) {
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = gen;
    gp.sampling.temperature = 0;
    gp.json_object = mode == JSON_MODE;
    qv_error err = {0};
    const double t0 = qv_time_s();
    for (int i = 0; i < n_req; i++) {
        rs[i].mode = mode;
        rs[i].n[mode] = 0;
        gp.json_schema = NULL;
        if ((mode == SCHEMA && qv_json_schema_compile(person_schema, sizeof(person_schema) - 1,
                                                      &gp.json_schema, &err) != QV_OK) ||
            (mode == TOOLS &&
             qv_json_schema_compile_calls(tools, strlen(tools), false, QV_JSON_COMPACT,
                                          &gp.json_schema, &err) != QV_OK) ||
            (mode == REGEX && qv_json_schema_compile_regex(person_regex, sizeof(person_regex) - 1,
                                                           &gp.json_schema, &err) != QV_OK)) {
            fprintf(stderr, "bench_json: schema: %s\n", err.msg);
            return -1;
        }
        const qv_status st =
            qv_engine_add(e, rs[i].ids, rs[i].n_ids, &gp, on_tok, &rs[i], NULL, &err);
        qv_json_schema_unref(gp.json_schema); /* the engine keeps its own reference */
        if (st != QV_OK) {
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
    int n_threads = 0, n_req = 8, gen = 64, rounds = 3, n_tools = 64;
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
        else if (!strcmp(argv[i], "--tools") && more)
            n_tools = atoi(argv[++i]);
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
    char *tools = tools_text(n_tools > 0 && n_tools <= 128 ? n_tools : 64);
    if (!tools) return 1;
    printf("model %s on %s, %d chat requests in one batch, greedy, at most %d tokens, %d "
           "rounds\n\n",
           model, device ? device : "cpu", n_req, gen, rounds);
    printf("| round | mode | wall s | tokens | steps | ms per step | masks computed | from the "
           "cache |\n|---|---|---|---|---|---|---|---|\n");
    double ratio[N_MODES][32];
    unsigned long long computed[N_MODES] = {0}, cached[N_MODES] = {0};
    double mask_s[N_MODES] = {0};
    for (int round = 0; round < rounds; round++) {
        double wall[N_MODES];
        int steps[N_MODES], toks[N_MODES] = {0};
        unsigned long long miss[N_MODES], hit[N_MODES];
        for (int t = 0; t < N_MODES; t++) { /* rotate which mode goes first */
            const int mode = (round + t) % N_MODES;
            qv_engine_stats s0, s1;
            qv_engine_get_stats(e, &s0);
            wall[mode] = run_mode(e, rs, n_req, gen, mode, tools, &steps[mode]);
            if (wall[mode] < 0) return 1;
            qv_engine_get_stats(e, &s1);
            miss[mode] = (unsigned long long)(s1.json_mask_misses - s0.json_mask_misses);
            hit[mode] = (unsigned long long)(s1.json_mask_hits - s0.json_mask_hits);
            computed[mode] += miss[mode];
            mask_s[mode] += s1.json_mask_s - s0.json_mask_s;
            cached[mode] += hit[mode];
            for (int i = 0; i < n_req; i++)
                toks[mode] += rs[i].n[mode];
        }
        for (int mode = 0; mode < N_MODES; mode++) {
            printf("| %d | %s | %.2f | %d | %d | %.1f | %llu | %llu |\n", round + 1,
                   mode_names[mode], wall[mode], toks[mode], steps[mode],
                   wall[mode] * 1e3 / steps[mode], miss[mode], hit[mode]);
            ratio[mode][round] = (wall[mode] / steps[mode]) / (wall[FREE] / steps[FREE]);
        }
        fprintf(stderr, "{\"round\":%d,\"wall_s\":[", round + 1);
        for (int mode = 0; mode < N_MODES; mode++)
            fprintf(stderr, "%s%.4f", mode ? "," : "", wall[mode]);
        fprintf(stderr, "],\"steps\":[");
        for (int mode = 0; mode < N_MODES; mode++)
            fprintf(stderr, "%s%d", mode ? "," : "", steps[mode]);
        fprintf(stderr, "]}\n");
    }
    printf("\n");
    for (int mode = JSON_MODE; mode < N_MODES; mode++) {
        int same = 0;
        for (int i = 0; i < n_req; i++)
            same +=
                rs[i].n[FREE] == rs[i].n[mode] && !memcmp(rs[i].toks[FREE], rs[i].toks[mode],
                                                          (size_t)rs[i].n[FREE] * sizeof(int32_t));
        printf("%s / free, time per step (median of %d rounds): %.3fx; masks computed %llu "
               "(%.2f ms each), from the cache %llu; ",
               mode_names[mode], rounds, bench_median(ratio[mode], rounds), computed[mode],
               computed[mode] ? mask_s[mode] * 1e3 / (double)computed[mode] : 0.0, cached[mode]);
        if (mode == TOOLS)
            printf("%d tools, answers are calls (not compared)\n", n_tools);
        else
            printf("answers identical to the free ones: %d of %d\n", same, n_req);
    }
    for (int i = 0; i < n_req; i++)
        qv_free(rs[i].ids);
    free(tools);
    qv_engine_destroy(e);
    return 0;
}
