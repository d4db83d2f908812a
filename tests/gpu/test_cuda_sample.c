/*
 * test_cuda_sample.c - token sampling on the device (engine/cuda/sample.cu) against the host
 * sampler (engine/sampler.c), the reference whose distributions match HF transformers
 * (tests/engine/test_sampler.c).
 *
 * Kernel: for each case (temperature, top-k, top-p with ties at the cut, min-p, penalties over
 * a context, greedy with penalties, rows with NaN / -inf / +inf, vocabularies of 1000 to
 * 49152), the host sampler's distribution over the same row gives each kept token its interval
 * of the cumulative distribution in id order; the device, given u inside a token's interval
 * (its middle and 2 % from either end), must return that token, and on a grid of u it must never
 * return a token the host drops. Then a seeded host sampler and a device fed with the uniform
 * numbers of a twin sampler (qv_sampler_next_uniform) must produce the same tokens row by row.
 * Engine: the same requests (sampled, top-k/top-p/min-p, penalties, greedy with penalties,
 * logprobs) on device "cuda" sampled on the device and with host_sampling give the same tokens.
 * Skips (77) without CUDA or without a device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "gpu_util.h"
#include "test_util.h"

#ifdef QV_HAVE_CUDA
#include "engine/cuda/backend_cuda.h"
#include "engine/engine.h"
#include "engine/sampler.h"

static qv_backend *cu;
static uint32_t rng = 20261129u;

typedef struct sample_case {
    const char *name;
    int n_vocab;
    qv_sampling_params p;
    int n_ctx;   /* prompt tokens in the repetition context */
    int n_gen;   /* generated tokens (counted by presence / frequency) */
    int shape;   /* 0 random, 1 ties at a top-p cut, 2 NaN and -inf sprinkled */
    float scale; /* logit spread */
} sample_case;

static void make_row(const sample_case *c, float *x) {
    for (int i = 0; i < c->n_vocab; i++)
        x[i] = gpu_randf(&rng) * c->scale;
    if (c->shape == 1) { /* one leader and 20 equal runners-up: the cut lands among them */
        for (int i = 0; i < c->n_vocab; i++)
            x[i] = -6.0f + gpu_randf(&rng);
        x[c->n_vocab / 2] = 3.0f;
        for (int j = 0; j < 20; j++)
            x[(j * 37 + 11) % c->n_vocab] = 2.0f;
    } else if (c->shape == 2) {
        for (int i = 0; i < c->n_vocab; i += 7)
            x[i] = (i / 7) % 2 ? -INFINITY : NAN;
    }
}

/* A host sampler for the case, its context filled the same way every time. */
static qv_sampler *make_sampler(const sample_case *c) {
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&c->p, c->n_vocab, &s), QV_OK);
    for (int i = 0; i < c->n_ctx; i++) {
        int32_t id = (int32_t)(((uint32_t)i * 2654435761u >> 7) % (uint32_t)c->n_vocab);
        qv_sampler_add_prompt(s, &id, 1);
    }
    for (int i = 0; i < c->n_gen; i++) /* repeats: counts above 1 */
        qv_sampler_accept(s, (int32_t)((i % 5) * 13 % c->n_vocab));
    return s;
}

/* Runs the device op on n copies of row x with uniform numbers u[n]; tokens into out, and
 * (c->p.n_logprobs > 0, lp not NULL) the log-probabilities into lp[n]. */
static void device_sample_lp(const sample_case *c, qv_sampler *s, const float *x, const double *u,
                             int n, int32_t *out, qv_logprobs *lp) {
    const size_t V = (size_t)c->n_vocab;
    float *h = malloc((size_t)n * V * sizeof(float));
    for (int i = 0; i < n; i++)
        memcpy(h + (size_t)i * V, x, V * sizeof(float));
    float *d = cu->iface->alloc(cu, (size_t)n * V * sizeof(float));
    int32_t *dout = cu->iface->alloc(cu, (size_t)n * sizeof(int32_t));
    qv_logprobs *dlp = cu->iface->alloc(cu, (size_t)n * sizeof(qv_logprobs));
    float *draw = cu->iface->alloc(cu, (size_t)(qv_sampler_context_size(s) + 3) * sizeof(float));
    assert_non_null(dlp);
    assert_non_null(draw);
    assert_non_null(d);
    assert_non_null(dout);
    cu->iface->upload(cu, d, h, (size_t)n * V * sizeof(float));
    const int n_ctx = qv_sampler_context_size(s);
    const int pen_cap = n_ctx + 3; /* padding the op must ignore */
    qv_token_count *pen = calloc((size_t)pen_cap, sizeof(*pen));
    assert_int_equal(qv_sampler_context(s, pen, pen_cap), n_ctx);
    for (int j = n_ctx; j < pen_cap; j++)
        pen[j] = (qv_token_count){(int32_t)j % c->n_vocab, 99};
    const bool has_pen = qv_sampler_has_penalties(s);
    qv_sample_row *rows = calloc((size_t)n, sizeof(*rows));
    for (int i = 0; i < n; i++)
        rows[i] = (qv_sample_row){.u = u[i],
                                  .temperature = c->p.temperature,
                                  .top_p = c->p.top_p,
                                  .min_p = c->p.min_p,
                                  .repetition_penalty = c->p.repetition_penalty,
                                  .presence_penalty = c->p.presence_penalty,
                                  .frequency_penalty = c->p.frequency_penalty,
                                  .top_k = c->p.top_k,
                                  .pen_off = 0,
                                  .pen_n = has_pen ? n_ctx : 0,
                                  .n_logprobs = lp ? c->p.n_logprobs : 0};
    cu->iface->sample(cu, d, n, c->n_vocab, rows, has_pen ? pen : NULL, pen_cap, draw, dout, dlp);
    qv_error err = {0};
    assert_int_equal(cu->iface->download(cu, out, dout, (size_t)n * sizeof(int32_t), &err), QV_OK);
    if (lp)
        assert_int_equal(cu->iface->download(cu, lp, dlp, (size_t)n * sizeof(qv_logprobs), &err),
                         QV_OK);
    cu->iface->free(cu, draw);
    cu->iface->free(cu, dlp);
    cu->iface->free(cu, dout);
    cu->iface->free(cu, d);
    free(rows);
    free(pen);
    free(h);
}

static void device_sample(const sample_case *c, qv_sampler *s, const float *x, const double *u,
                          int n, int32_t *out) {
    device_sample_lp(c, s, x, u, n, out, NULL);
}

/* The device's log-probabilities equal the host sampler's: same top ids in the same order, and
 * values within 1e-5 (log Z summed in another order); NaN where the host has NaN. */
static void check_lp(const char *what, const qv_logprobs *got, const qv_logprobs *want) {
    bool ok = got->token == want->token && got->n_top == want->n_top &&
              (got->logprob == want->logprob || (isnan(got->logprob) && isnan(want->logprob)) ||
               fabsf(got->logprob - want->logprob) <= 1e-5f * fmaxf(1.0f, fabsf(want->logprob)));
    for (int i = 0; ok && i < want->n_top; i++)
        ok = got->top_ids[i] == want->top_ids[i] &&
             (got->top_logprobs[i] == want->top_logprobs[i] ||
              fabsf(got->top_logprobs[i] - want->top_logprobs[i]) <=
                  1e-5f * fmaxf(1.0f, fabsf(want->top_logprobs[i])));
    if (!ok)
        fail_msg("%s: device token %d logprob %g n_top %d (top %d %g), host %d %g %d (top %d %g)",
                 what, got->token, (double)got->logprob, got->n_top, got->top_ids[0],
                 (double)got->top_logprobs[0], want->token, (double)want->logprob, want->n_top,
                 want->top_ids[0], (double)want->top_logprobs[0]);
}

#define MAX_U 300

static int cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

static void run_case(const sample_case *c) {
    const int V = c->n_vocab;
    float *x = malloc((size_t)V * sizeof(float)), *xc = malloc((size_t)V * sizeof(float));
    float *probs = malloc((size_t)V * sizeof(float));
    make_row(c, x);
    qv_sampler *s = make_sampler(c);
    memcpy(xc, x, (size_t)V * sizeof(float));
    qv_sampler_probs(s, xc, probs); /* the host's distribution after penalties and filters */

    /* u inside each kept token's interval, expecting that token: the 100 most likely tokens
     * (in id order), at their middle and, where the margin is above the ~1e-7 that float expf
     * differences can move a boundary, 2 % from either end */
    static double u[MAX_U];
    static int32_t want[MAX_U], got[MAX_U];
    float *sorted = malloc((size_t)V * sizeof(float));
    memcpy(sorted, probs, (size_t)V * sizeof(float));
    qsort(sorted, (size_t)V, sizeof(float), cmp_desc);
    const double thr = fmax(4e-6, (double)sorted[QV_MIN(V, 100) - 1]);
    free(sorted);
    int n = 0, kept = 0;
    double cum = 0.0;
    for (int j = 0; j < V; j++) {
        const double pj = probs[j];
        if (pj > 0) kept++;
        if (pj >= thr && n + 3 <= MAX_U) {
            u[n] = cum + 0.5 * pj;
            want[n++] = j;
            if (pj > 1e-4) {
                u[n] = cum + 0.02 * pj;
                want[n++] = j;
                u[n] = cum + 0.98 * pj;
                want[n++] = j;
            }
        }
        cum += pj;
    }
    assert_true(n > 0);
    device_sample(c, s, x, u, n, got);
    int bad = 0;
    for (int i = 0; i < n; i++)
        if (got[i] != want[i] && bad++ < 5)
            printf("  %s: u=%.9f: device %d, host interval of %d (p %.3g)\n", c->name, u[i], got[i],
                   want[i], (double)probs[want[i]]);

    /* a grid of u: never a token the host drops */
    int n_grid = 64;
    for (int i = 0; i < n_grid; i++)
        u[i] = (i + 0.5) / n_grid;
    device_sample(c, s, x, u, n_grid, got);
    int dropped = 0;
    for (int i = 0; i < n_grid; i++)
        if (!(probs[got[i]] > 0) && dropped++ < 3)
            printf("  %s: u=%.4f gave token %d, which the host drops\n", c->name, u[i], got[i]);
    printf("%-28s V %6d: %4d tokens kept, %3d draws in their intervals: %d wrong, %d grid draws "
           "outside the kept set\n",
           c->name, V, kept, n, bad, dropped);
    if (bad || dropped) fail_msg("%s: device sampling differs from the host sampler", c->name);
    qv_sampler_free(s);
    free(x);
    free(xc);
    free(probs);
}

static qv_sampling_params params(float t, int k, float p, float min_p) {
    qv_sampling_params sp;
    qv_sampling_params_default(&sp);
    sp.temperature = t;
    sp.top_k = k;
    sp.top_p = p;
    sp.min_p = min_p;
    return sp;
}

static void test_sample_cases(void **state) {
    (void)state;
    qv_sampling_params pen = params(0.9f, 0, 1.0f, 0.0f);
    pen.repetition_penalty = 1.3f;
    pen.presence_penalty = 0.7f;
    pen.frequency_penalty = 0.4f;
    qv_sampling_params pen_k = pen;
    pen_k.top_k = 30;
    pen_k.top_p = 0.9f;
    const sample_case cases[] = {
        {"temperature 1", 1000, params(1.0f, 0, 1.0f, 0.0f), 0, 0, 0, 4.0f},
        {"temperature 0.5", 4099, params(0.5f, 0, 1.0f, 0.0f), 0, 0, 0, 3.0f},
        {"top-k 1", 1000, params(1.0f, 1, 1.0f, 0.0f), 0, 0, 0, 4.0f},
        {"top-k 40", 1000, params(0.8f, 40, 1.0f, 0.0f), 0, 0, 0, 4.0f},
        {"top-k 300 (radix)", 4099, params(1.2f, 300, 1.0f, 0.0f), 0, 0, 0, 2.0f},
        {"top-p 0.9", 4099, params(1.0f, 0, 0.9f, 0.0f), 0, 0, 0, 6.0f},
        {"top-p 0.5, ties at the cut", 1000, params(1.0f, 0, 0.5f, 0.0f), 0, 0, 1, 1.0f},
        {"top-p 0.999, ties", 1000, params(1.0f, 0, 0.999f, 0.0f), 0, 0, 1, 1.0f},
        {"min-p 0.05", 4099, params(0.7f, 0, 1.0f, 0.05f), 0, 0, 0, 5.0f},
        {"top-k 50 + top-p + min-p", 4099, params(1.1f, 50, 0.8f, 0.1f), 0, 0, 0, 5.0f},
        {"penalties", 1000, pen, 60, 40, 0, 3.0f},
        {"penalties + top-k + top-p", 4099, pen_k, 200, 100, 0, 3.0f},
        {"NaN and -inf in the row", 1000, params(1.0f, 20, 0.95f, 0.0f), 0, 0, 2, 4.0f},
        {"top-p 0.95, 49152 tokens", 49152, params(0.8f, 0, 0.95f, 0.0f), 0, 0, 0, 8.0f},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_case(&cases[i]);
}

/* Greedy rows (with and without penalties) and degenerate rows: the host sampler's token. */
static void test_sample_greedy_and_degenerate(void **state) {
    (void)state;
    const int V = 777;
    qv_sampling_params g = params(0.0f, 0, 1.0f, 0.0f);
    qv_sampling_params gp = g;
    gp.repetition_penalty = 3.0f;
    gp.frequency_penalty = 2.0f;
    const sample_case cases[] = {
        {"greedy", V, g, 0, 0, 0, 4.0f},
        {"greedy + penalties", V, gp, 0, 6, 0, 1.0f},
        {"sampled, all -inf", V, params(1.0f, 0, 0.9f, 0.0f), 0, 0, 0, 0.0f},
        {"sampled, +inf at 7", V, params(1.0f, 5, 1.0f, 0.0f), 0, 0, 0, 1.0f},
        {"greedy, maximum at 3 ids", V, g, 0, 0, 0, 1.0f},
    };
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        const sample_case *c = &cases[ci];
        float *x = malloc(V * sizeof(float)), *xc = malloc(V * sizeof(float));
        make_row(c, x);
        if (ci == 1) { /* the context holds the argmax: the penalty moves it */
            int a = gpu_argmax(x, V, NULL);
            x[a] += 0.5f;
            qv_sampling_params q = c->p;
            qv_sampler *s = NULL;
            assert_int_equal(qv_sampler_create(&q, V, &s), QV_OK);
            qv_sampler_accept(s, a);
            memcpy(xc, x, V * sizeof(float));
            int32_t want = qv_sampler_sample(s, xc, NULL), got;
            double u = 0.3;
            device_sample(c, s, x, &u, 1, &got);
            printf("%-28s: host %d, device %d (argmax before penalties %d)\n", c->name, want, got,
                   a);
            assert_int_not_equal(want, a);
            assert_int_equal(got, want);
            qv_sampler_free(s);
        } else {
            if (ci == 2)
                for (int i = 0; i < V; i++)
                    x[i] = -INFINITY;
            if (ci == 3) x[7] = INFINITY;
            if (ci == 4) /* ties: the lowest id wins, wherever the threads meet them */
                x[700] = x[123] = x[641] = 5.0f;
            qv_sampler *s = make_sampler(c);
            memcpy(xc, x, V * sizeof(float));
            int32_t want = qv_sampler_sample(s, xc, NULL), got;
            double u = 0.6;
            device_sample(c, s, x, &u, 1, &got);
            printf("%-28s: host %d, device %d\n", c->name, want, got);
            assert_int_equal(got, want);
            if (ci == 4) assert_int_equal(got, 123);
            qv_sampler_free(s);
        }
        free(x);
        free(xc);
    }
}

/* A seeded request's stream: the host sampler and the device fed by a twin sampler's uniform
 * numbers draw the same token from each of 40 fresh rows, penalties following the tokens. */
static void test_sample_stream(void **state) {
    (void)state;
    sample_case c = {"stream", 2000, params(0.9f, 0, 0.92f, 0.02f), 0, 0, 0, 5.0f};
    c.p.seed = 12345;
    c.p.repetition_penalty = 1.2f;
    c.p.frequency_penalty = 0.3f;
    c.p.n_logprobs = 5;
    qv_sampler *host = NULL, *twin = NULL;
    assert_int_equal(qv_sampler_create(&c.p, c.n_vocab, &host), QV_OK);
    assert_int_equal(qv_sampler_create(&c.p, c.n_vocab, &twin), QV_OK);
    float *x = malloc(2000 * sizeof(float)), *xc = malloc(2000 * sizeof(float));
    int same = 0;
    for (int step = 0; step < 40; step++) {
        make_row(&c, x);
        memcpy(xc, x, sizeof(float) * 2000);
        qv_logprobs lw, lg;
        int32_t want = qv_sampler_sample(host, xc, &lw), got;
        double u = qv_sampler_next_uniform(twin);
        device_sample_lp(&c, twin, x, &u, 1, &got, &lg);
        same += got == want;
        if (got == want) check_lp("stream", &lg, &lw);
        if (got != want) printf("  step %d: host %d, device %d\n", step, want, got);
        qv_sampler_accept(host, want);
        qv_sampler_accept(twin, want);
    }
    printf("seeded stream: %d of 40 tokens identical, with their top-5 logprobs\n", same);
    assert_int_equal(same, 40);
    qv_sampler_free(host);
    qv_sampler_free(twin);
    free(x);
    free(xc);
}

/* Log-probabilities on the device against the host sampler's: ties among the largest logits
 * (lower id first), -inf in the row, 20 alternatives, a sampled row with penalties, a
 * greedy row whose chosen token is penalised (its logprob is of the raw logit), a row of -inf
 * and NaN only. */
static void test_sample_logprobs(void **state) {
    (void)state;
    for (int ci = 0; ci < 4; ci++) {
        sample_case c = {"logprobs", ci == 1 ? 4099 : 1000, params(0.0f, 0, 1.0f, 0.0f), 0, 0, 0,
                         3.0f};
        c.p.n_logprobs = 20;
        if (ci == 1) {
            c.p = params(0.7f, 0, 0.9f, 0.0f);
            c.p.repetition_penalty = 1.5f;
            c.p.frequency_penalty = 0.2f;
            c.p.n_logprobs = 3;
            c.n_ctx = 300;
            c.n_gen = 30;
        }
        float *x = malloc((size_t)c.n_vocab * sizeof(float));
        float *xc = malloc((size_t)c.n_vocab * sizeof(float));
        make_row(&c, x);
        if (ci == 0) { /* five equal maxima, NaNs and -inf among the rest */
            const int tied[5] = {700, 3, 512, 250, 999};
            for (int i = 0; i < 5; i++)
                x[tied[i]] = 9.0f;
            x[8] = -INFINITY, x[9] = -INFINITY; /* (a NaN makes log Z NaN on both sides) */
        }
        qv_sampler *s = make_sampler(&c);
        if (ci == 2) { /* greedy, its argmax in the context: a mild penalty keeps it first */
            c.p.repetition_penalty = 1.05f;
            qv_sampler_free(s);
            assert_int_equal(qv_sampler_create(&c.p, c.n_vocab, &s), QV_OK);
            const int32_t a = gpu_argmax(x, c.n_vocab, NULL);
            x[a] += 2.0f;
            qv_sampler_accept(s, a);
        }
        if (ci == 3)
            for (int i = 0; i < c.n_vocab; i++)
                x[i] = i % 3 ? -INFINITY : NAN;
        memcpy(xc, x, (size_t)c.n_vocab * sizeof(float));
        qv_logprobs lw, lg;
        double u = 0.0; /* a sampled row's draw: the next number of the sampler's stream */
        if (ci == 1) {
            qv_sampler *twin = make_sampler(&c);
            u = qv_sampler_next_uniform(twin);
            qv_sampler_free(twin);
        }
        const int32_t want = qv_sampler_sample(s, xc, &lw);
        int32_t got;
        device_sample_lp(&c, s, x, &u, 1, &got, &lg);
        printf("logprobs case %d: host token %d (logprob %g, %d alternatives, first %d %g), "
               "device token %d (logprob %g, %d, first %d %g)\n",
               ci, want, (double)lw.logprob, lw.n_top, lw.top_ids[0], (double)lw.top_logprobs[0],
               got, (double)lg.logprob, lg.n_top, lg.top_ids[0], (double)lg.top_logprobs[0]);
        assert_int_equal(got, want);
        check_lp("logprobs", &lg, &lw);
        if (ci == 0) assert_int_equal(lg.top_ids[0], 3); /* the lowest id of the five */
        qv_sampler_free(s);
        free(x);
        free(xc);
    }
}

/* The engine on "cuda": the same requests sampled on the device and on the host. */
#define E_SEQS 6
#define E_TOKENS 20
typedef struct eng_out {
    int32_t toks[E_SEQS][E_TOKENS];
    int n[E_SEQS];
    int ids[E_SEQS];
    int n_lp;
    qv_logprobs lp[E_TOKENS]; /* the logprobs request's */
} eng_out;

static void on_tok(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                   enum qv_finish_reason finish) {
    (void)finish;
    eng_out *o = user;
    if (lp && o->n_lp < E_TOKENS) o->lp[o->n_lp] = *lp;
    o->n_lp += lp != NULL;
    for (int i = 0; i < E_SEQS; i++)
        if (o->ids[i] == seq_id && o->n[i] < E_TOKENS) o->toks[i][o->n[i]++] = token;
}

static void run_engine(bool host_sampling, eng_out *o, qv_engine_stats *st) {
    memset(o, 0, sizeof(*o));
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path("tests/fixtures/models/tiny-llama-gqa.q4_1.gguf");
    c.load_tokenizer = false;
    c.kv_bytes = (size_t)4 << 20;
    c.kv_page_size = 4;
    c.max_batch_tokens = 16;
    c.device = "cuda";
    c.host_sampling = host_sampling;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    for (int i = 0; i < E_SEQS; i++) {
        qv_gen_params gp;
        qv_gen_params_default(&gp);
        gp.max_tokens = E_TOKENS;
        gp.ignore_eos = true;
        qv_sampling_params *p = &gp.sampling;
        p->seed = 100 + (uint64_t)i;
        switch (i) {
        case 0: p->temperature = 1.0f; break;
        case 1: p->temperature = 0.8f, p->top_p = 0.9f; break;
        case 2: p->temperature = 1.3f, p->top_k = 10, p->min_p = 0.05f; break;
        case 3:
            p->temperature = 0.9f, p->repetition_penalty = 1.5f, p->presence_penalty = 0.5f;
            p->frequency_penalty = 0.5f;
            break;
        case 4: p->temperature = 0.0f, p->repetition_penalty = 2.0f; break;
        case 5: p->temperature = 1.0f, p->n_logprobs = 3; break; /* host: wants its row */
        }
        int32_t ids[20];
        int n = 2 + 3 * i;
        for (int t = 0; t < n; t++)
            ids[t] = (int32_t)((t * 29 + i * 7 + 3) % 200);
        assert_int_equal(qv_engine_add(e, ids, (size_t)n, &gp, on_tok, o, &o->ids[i], &err), QV_OK);
    }
    for (int guard = 0; qv_engine_n_active(e) > 0 && guard < 1000; guard++)
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
    qv_engine_get_stats(e, st);
    qv_engine_destroy(e);
}

static void test_engine_device_vs_host_sampling(void **state) {
    (void)state;
    static eng_out dev, host;
    qv_engine_stats sd, sh;
    run_engine(false, &dev, &sd);
    run_engine(true, &host, &sh);
    for (int i = 0; i < E_SEQS; i++) {
        assert_int_equal(dev.n[i], E_TOKENS);
        assert_int_equal(host.n[i], E_TOKENS);
        for (int t = 0; t < E_TOKENS; t++)
            if (dev.toks[i][t] != host.toks[i][t])
                fail_msg("seq %d token %d: device sampling %d, host sampling %d", i, t,
                         dev.toks[i][t], host.toks[i][t]);
    }
    /* device: every row sampled there, the logprobs request's too; host_sampling: every row
     * goes to the host (there is no plain-greedy request here) */
    printf("engine: %d x %d tokens identical; rows on device / host: %llu / %llu (device "
           "sampling), %llu / %llu (host sampling)\n",
           E_SEQS, E_TOKENS, (unsigned long long)sd.logits_rows_device,
           (unsigned long long)sd.logits_rows_host, (unsigned long long)sh.logits_rows_device,
           (unsigned long long)sh.logits_rows_host);
    assert_int_equal(sd.logits_rows_host, 0);
    assert_int_equal(sd.logits_rows_device, E_SEQS * E_TOKENS);
    assert_int_equal(sh.logits_rows_device, 0);
    assert_int_equal(dev.n_lp, E_TOKENS);
    assert_int_equal(host.n_lp, E_TOKENS);
    for (int t = 0; t < E_TOKENS; t++)
        check_lp("engine logprobs", &dev.lp[t], &host.lp[t]);
}

static int setup(void **state) {
    (void)state;
    cu = gpu_cuda_empty((size_t)16 << 20, (size_t)320 << 20);
    return cu ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    if (cu) cu->iface->destroy(cu);
    return 0;
}
#endif

int main(void) {
    gpu_require_device();
#ifdef QV_HAVE_CUDA
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sample_cases),
        cmocka_unit_test(test_sample_greedy_and_degenerate),
        cmocka_unit_test(test_sample_stream),
        cmocka_unit_test(test_sample_logprobs),
        cmocka_unit_test(test_engine_device_vs_host_sampling),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
#else
    return 77;
#endif
}
