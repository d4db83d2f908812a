/*
 * test_sampler.c - the token sampler against HF transformers goldens and basic statistics.
 *
 * Goldens (tests/fixtures/sampler/, from tests/oracle/gen_sampler_fixtures.py): for each case
 * the logit row is rebuilt here from the same integer PRNG formula as the script (its FNV-1a
 * hash must match), the sampler's final distribution is compared with HF's LogitsProcessorList
 * + softmax (1e-6 abs), its draws with the documented inverse-CDF draw over HF's distribution,
 * and its logprobs with torch.log_softmax of the raw row.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "sampler.h"
#include "test_util.h"

/* ------------------------------------------------------------------ fixtures ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Mirror of gen_logits() in the oracle script (exact double arithmetic, one rounding). */
static void gen_logits(uint64_t seed, int n, double scale, int n_spikes, float *out) {
    double *v = malloc((size_t)n * sizeof(*v));
    assert_non_null(v);
    uint64_t st = seed;
    for (int i = 0; i < n; i++) {
        uint64_t s = 0;
        for (int j = 0; j < 4; j++)
            s += splitmix64(&st) >> 40;
        v[i] = ((double)s / 16777216.0 - 2.0) * scale;
    }
    for (int j = 0; j < n_spikes; j++) {
        int idx = (int)(splitmix64(&st) % (uint64_t)n);
        double u = (double)(splitmix64(&st) >> 40) / 16777216.0;
        v[idx] = v[idx] + (u * 2.0 + 1.0) * scale;
    }
    for (int i = 0; i < n; i++)
        out[i] = (float)v[i];
    free(v);
}

static uint64_t fnv1a_f32(const float *x, int n) {
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *b = (const unsigned char *)x;
    for (size_t i = 0; i < (size_t)n * 4; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

typedef struct tcase {
    char name[64];
    int n_vocab;
    qv_sampling_params p;
    int32_t prompt[16], generated[16];
    int n_prompt, n_generated;
    qv_token_bias bias[8]; /* logit_bias entries as listed (a repeated id included) */
    int n_bias;
    int32_t suppress[4]; /* suppressed while fewer than min_tokens are generated */
    int n_suppress, min_tokens;
    int n_kept, n_ambiguous;
    int32_t raw_top_ids[20];
    float raw_top_lp[20];
    int32_t draws[16];
    int n_draws;
    float *logits; /* (n_vocab) raw row */
    float *want;   /* (n_vocab) HF probabilities */
} tcase;

static tcase g_cases[32];
static int g_n_cases;

static int read_ids(const cJSON *arr, int32_t *out, int cap) {
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) {
        assert_true(n < cap);
        out[n++] = (int32_t)it->valuedouble;
    }
    return n;
}

static float *read_f32(const char *rel, int n) {
    size_t len = 0;
    char *buf = NULL;
    qv_error err;
    if (qv_read_file(qv_test_path(rel), 64u << 20, &buf, &len, &err) != QV_OK) {
        fprintf(stderr, "%s\n", err.msg);
        fail();
    }
    assert_int_equal(len, (size_t)n * 4);
    float *f = malloc(len);
    assert_non_null(f);
    memcpy(f, buf, len);
    qv_free(buf);
    return f;
}

static int setup_cases(void **state) {
    (void)state;
    char *text = NULL;
    size_t len = 0;
    qv_error err;
    if (qv_read_file(qv_test_path("tests/fixtures/sampler/cases.json"), 1u << 24, &text, &len,
                     &err) != QV_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    cJSON *doc = cJSON_Parse(text);
    qv_free(text);
    if (!doc) return -1;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(doc, "cases")) {
        tcase *t = &g_cases[g_n_cases++];
        memset(t, 0, sizeof(*t));
        snprintf(t->name, sizeof(t->name), "%s", cJSON_GetObjectItem(c, "name")->valuestring);
        t->n_vocab = cJSON_GetObjectItem(c, "n_vocab")->valueint;
        const cJSON *pj = cJSON_GetObjectItem(c, "params");
        qv_sampling_params_default(&t->p);
        t->p.temperature = (float)cJSON_GetObjectItem(pj, "temperature")->valuedouble;
        t->p.top_k = cJSON_GetObjectItem(pj, "top_k")->valueint;
        t->p.top_p = (float)cJSON_GetObjectItem(pj, "top_p")->valuedouble;
        t->p.min_p = (float)cJSON_GetObjectItem(pj, "min_p")->valuedouble;
        t->p.repetition_penalty = (float)cJSON_GetObjectItem(pj, "repetition_penalty")->valuedouble;
        t->p.presence_penalty = (float)cJSON_GetObjectItem(pj, "presence_penalty")->valuedouble;
        t->p.frequency_penalty = (float)cJSON_GetObjectItem(pj, "frequency_penalty")->valuedouble;
        t->p.seed = (uint64_t)cJSON_GetObjectItem(pj, "seed")->valuedouble;
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(pj, "logit_bias")) {
            assert_true(t->n_bias < 8);
            t->bias[t->n_bias++] = (qv_token_bias){(int32_t)cJSON_GetArrayItem(it, 0)->valuedouble,
                                                   (float)cJSON_GetArrayItem(it, 1)->valuedouble};
        }
        t->min_tokens = cJSON_GetObjectItem(pj, "min_tokens")->valueint;
        t->n_suppress = read_ids(cJSON_GetObjectItem(pj, "suppress"), t->suppress, 4);
        t->n_prompt = read_ids(cJSON_GetObjectItem(c, "prompt"), t->prompt, 16);
        t->n_generated = read_ids(cJSON_GetObjectItem(c, "generated"), t->generated, 16);
        t->n_kept = cJSON_GetObjectItem(c, "n_kept")->valueint;
        t->n_ambiguous = cJSON_GetObjectItem(c, "n_ambiguous")->valueint;
        read_ids(cJSON_GetObjectItem(c, "raw_top_ids"), t->raw_top_ids, 20);
        int k = 0;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "raw_top_logprobs")) {
            t->raw_top_lp[k++] = (float)it->valuedouble;
        }
        t->n_draws = read_ids(cJSON_GetObjectItem(c, "draws"), t->draws, 16);

        t->logits = malloc((size_t)t->n_vocab * sizeof(float));
        gen_logits((uint64_t)cJSON_GetObjectItem(c, "logit_seed")->valuedouble, t->n_vocab,
                   cJSON_GetObjectItem(c, "scale")->valuedouble,
                   cJSON_GetObjectItem(c, "n_spikes")->valueint, t->logits);
        char hex[17];
        snprintf(hex, sizeof(hex), "%016llx", (unsigned long long)fnv1a_f32(t->logits, t->n_vocab));
        if (strcmp(hex, cJSON_GetObjectItem(c, "logits_fnv1a")->valuestring) != 0) {
            fprintf(stderr, "%s: rebuilt logits hash %s != fixture %s\n", t->name, hex,
                    cJSON_GetObjectItem(c, "logits_fnv1a")->valuestring);
            cJSON_Delete(doc);
            return -1;
        }
        char rel[160];
        snprintf(rel, sizeof(rel), "tests/fixtures/sampler/%s.f32", t->name);
        t->want = read_f32(rel, t->n_vocab);
    }
    cJSON_Delete(doc);
    return g_n_cases > 0 ? 0 : -1;
}

static int teardown_cases(void **state) {
    (void)state;
    for (int i = 0; i < g_n_cases; i++) {
        free(g_cases[i].logits);
        free(g_cases[i].want);
    }
    g_n_cases = 0;
    return 0;
}

static qv_sampler *case_sampler(const tcase *t, int n_logprobs) {
    qv_sampling_params p = t->p;
    p.n_logprobs = n_logprobs;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, t->n_vocab, &s), QV_OK);
    assert_int_equal(qv_sampler_set_edits(s, t->bias, t->n_bias, t->min_tokens, t->suppress,
                                          t->n_suppress, NULL),
                     QV_OK);
    qv_sampler_add_prompt(s, t->prompt, (size_t)t->n_prompt);
    for (int i = 0; i < t->n_generated; i++)
        qv_sampler_accept(s, t->generated[i]);
    return s;
}

static float *row_copy(const tcase *t) {
    float *x = malloc((size_t)t->n_vocab * sizeof(float));
    assert_non_null(x);
    memcpy(x, t->logits, (size_t)t->n_vocab * sizeof(float));
    return x;
}

/* ------------------------------------------------------------------ golden tests ---- */

static void test_golden_distributions(void **state) {
    (void)state;
    int failed = 0;
    for (int c = 0; c < g_n_cases; c++) {
        const tcase *t = &g_cases[c];
        qv_sampler *s = case_sampler(t, 0);
        float *x = row_copy(t);
        float *got = malloc((size_t)t->n_vocab * sizeof(float));
        qv_sampler_probs(s, x, got);
        int kept = 0;
        for (int i = 0; i < t->n_vocab; i++)
            kept += got[i] > 0.0f;
        size_t bad = qv_test_compare_f32(t->name, got, t->want, (size_t)t->n_vocab, 1e-6, 0.0);
        if (bad || abs(kept - t->n_kept) > t->n_ambiguous) {
            fprintf(stderr, "%s: %zu probabilities off, kept %d want %d (+-%d)\n", t->name, bad,
                    kept, t->n_kept, t->n_ambiguous);
            failed++;
        }
        free(got);
        free(x);
        qv_sampler_free(s);
    }
    assert_int_equal(failed, 0);
}

static void test_golden_draws(void **state) {
    (void)state;
    int failed = 0, checked = 0;
    for (int c = 0; c < g_n_cases; c++) {
        const tcase *t = &g_cases[c];
        qv_sampler *s = case_sampler(t, 0);
        for (int d = 0; d < t->n_draws; d++) {
            float *x = row_copy(t);
            int32_t tok = qv_sampler_sample(s, x, NULL);
            free(x);
            assert_true(tok >= 0 && tok < t->n_vocab);
            if (!(t->want[tok] > 0.0f)) {
                fprintf(stderr, "%s draw %d: token %d has HF probability 0\n", t->name, d, tok);
                failed++;
            }
            if (t->draws[d] < 0) continue;
            checked++;
            if (tok != t->draws[d]) {
                fprintf(stderr, "%s draw %d: got %d want %d\n", t->name, d, tok, t->draws[d]);
                failed++;
            }
        }
        qv_sampler_free(s);
    }
    printf("golden draws: %d checked\n", checked);
    assert_true(checked > 200);
    assert_int_equal(failed, 0);
}

static void test_golden_logprobs(void **state) {
    (void)state;
    for (int c = 0; c < g_n_cases; c++) {
        const tcase *t = &g_cases[c];
        qv_sampler *s = case_sampler(t, 20);
        float *x = row_copy(t);
        qv_logprobs lp;
        memset(&lp, 0, sizeof(lp));
        int32_t tok = qv_sampler_sample(s, x, &lp);
        free(x);
        assert_int_equal(lp.token, tok);
        assert_int_equal(lp.n_top, 20);
        for (int j = 0; j < 20; j++) {
            if (lp.top_ids[j] != t->raw_top_ids[j] ||
                fabsf(lp.top_logprobs[j] - t->raw_top_lp[j]) > 2e-5f) {
                fprintf(stderr, "%s top[%d]: got %d %.7g want %d %.7g\n", t->name, j, lp.top_ids[j],
                        (double)lp.top_logprobs[j], t->raw_top_ids[j], (double)t->raw_top_lp[j]);
                fail();
            }
            if (j > 0) assert_true(lp.top_logprobs[j] <= lp.top_logprobs[j - 1]);
        }
        /* The chosen token's logprob is of the raw row (not the penalised/filtered one). */
        double m = -(double)INFINITY, z = 0.0;
        for (int i = 0; i < t->n_vocab; i++)
            m = fmax(m, (double)t->logits[i]);
        for (int i = 0; i < t->n_vocab; i++)
            z += exp((double)t->logits[i] - m);
        double want = (double)t->logits[tok] - m - log(z);
        if (fabs((double)lp.logprob - want) > 2e-5) {
            fprintf(stderr, "%s chosen %d: logprob %.7g want %.7g\n", t->name, tok,
                    (double)lp.logprob, want);
            fail();
        }
        qv_sampler_free(s);
    }
}

/* Chi-square statistic of counts against probabilities, pooling cells with expected < 5.
 * Returns the statistic and writes the degrees of freedom. */
static double chi_square(const long *counts, const double *probs, int n, long total, int *df) {
    double stat = 0.0, pool_o = 0.0, pool_e = 0.0;
    int cells = 0;
    for (int i = 0; i < n; i++) {
        double e = probs[i] * (double)total;
        if (e < 5.0) {
            pool_o += (double)counts[i];
            pool_e += e;
            if (probs[i] == 0.0 && counts[i] != 0) return (double)INFINITY;
            continue;
        }
        stat += ((double)counts[i] - e) * ((double)counts[i] - e) / e;
        cells++;
    }
    if (pool_e >= 5.0) {
        stat += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    }
    *df = cells - 1;
    return stat;
}

/* Upper 0.999 quantile of chi-square(df), Wilson-Hilferty approximation. */
static double chi2_crit_999(int df) {
    double k = (double)df, z = 3.0902;
    double a = 1.0 - 2.0 / (9.0 * k) + z * sqrt(2.0 / (9.0 * k));
    return k * a * a * a;
}

/* 200k draws from golden cases with few kept tokens; their frequencies must fit HF's
 * distribution (fixed seeds, so the outcome is deterministic). */
static void test_golden_chi_square(void **state) {
    (void)state;
    const char *names[] = {"v1k_topk20", "v1k_k50_p09_minp002_t09", "v1k_topp09_t08"};
    for (size_t k = 0; k < QV_ARRAY_LEN(names); k++) {
        const tcase *t = NULL;
        for (int c = 0; c < g_n_cases; c++)
            if (strcmp(g_cases[c].name, names[k]) == 0) t = &g_cases[c];
        assert_non_null(t);
        long *counts = calloc((size_t)t->n_vocab, sizeof(long));
        double *probs = malloc((size_t)t->n_vocab * sizeof(double));
        float *x = malloc((size_t)t->n_vocab * sizeof(float));
        qv_sampler *s = case_sampler(t, 0);
        const long n_draws = 200000;
        for (long d = 0; d < n_draws; d++) {
            memcpy(x, t->logits, (size_t)t->n_vocab * sizeof(float));
            counts[qv_sampler_sample(s, x, NULL)]++;
        }
        for (int i = 0; i < t->n_vocab; i++)
            probs[i] = (double)t->want[i];
        int df = 0;
        double stat = chi_square(counts, probs, t->n_vocab, n_draws, &df);
        double crit = chi2_crit_999(df);
        printf("%s: chi2 %.2f df %d (0.999 critical %.2f)\n", t->name, stat, df, crit);
        assert_true(df >= 3);
        assert_true(stat < crit);
        qv_sampler_free(s);
        free(x);
        free(probs);
        free(counts);
    }
}

/* ------------------------------------------------------------------ unit tests ---- */

static void test_chi_square_small(void **state) {
    (void)state;
    const double p[8] = {0.4, 0.2, 0.15, 0.1, 0.08, 0.04, 0.02, 0.01};
    qv_sampling_params prm;
    qv_sampling_params_default(&prm);
    prm.seed = 12345;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&prm, 8, &s), QV_OK);
    long counts[8] = {0};
    const long n = 200000;
    for (long d = 0; d < n; d++) {
        float x[8];
        for (int i = 0; i < 8; i++)
            x[i] = (float)log(p[i]) + 3.0f; /* shift-invariant */
        counts[qv_sampler_sample(s, x, NULL)]++;
    }
    int df = 0;
    double stat = chi_square(counts, p, 8, n, &df);
    printf("small: chi2 %.3f df %d\n", stat, df);
    assert_int_equal(df, 7);
    assert_true(stat < 24.32); /* P(chi2_7 > 24.32) = 0.001 */
    assert_true(stat > 0.60);  /* P(chi2_7 < 0.60) = 0.001: not suspiciously perfect */
    qv_sampler_free(s);
}

/* logit_bias and min_tokens on greedy rows: the bias moves the argmax, the suppressed ids come
 * back after min_tokens accepted tokens (and after a reset only then), logprobs stay raw, and
 * bad lists leave the sampler as it was. */
static void test_edits_greedy(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.n_logprobs = 2;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 6, &s), QV_OK);
    const float x[6] = {1.0f, 5.0f, 3.0f, 4.5f, 0.0f, -2.0f};
    float y[6];
    assert_false(qv_sampler_has_edits(s));
    const qv_token_bias bias[3] = {{3, 10.0f}, {5, 1.0f}, {3, 0.75f}}; /* 3: the later wins */
    const int32_t sup[1] = {1};
    assert_int_equal(qv_sampler_set_edits(s, bias, 3, 2, sup, 1, NULL), QV_OK);
    assert_true(qv_sampler_has_edits(s));
    memcpy(y, x, sizeof(x));
    qv_logprobs lp;
    /* 1 suppressed: 3 (4.5 + 0.75) beats 2 (3.0) */
    assert_int_equal(qv_sampler_sample(s, y, &lp), 3);
    assert_true(isinf(y[1]) && y[1] < 0.0f && y[3] == 5.25f && y[5] == -1.0f);
    double z = 0;
    for (int i = 0; i < 6; i++)
        z += exp((double)x[i] - 5.0);
    assert_true(fabs((double)lp.logprob - (4.5 - 5.0 - log(z))) < 1e-6); /* raw row */
    assert_int_equal(lp.top_ids[0], 1);                                  /* raw row */
    qv_sampler_accept(s, 3);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 3); /* one accepted of two: still 3 */
    qv_sampler_accept(s, 3);
    assert_true(qv_sampler_has_edits(s)); /* the bias stays */
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 3); /* 5.25 > 5: the bias decides now */
    const qv_token_bias down[1] = {{3, -1.0f}};
    assert_int_equal(qv_sampler_set_edits(s, down, 1, 2, sup, 1, NULL), QV_OK);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 1); /* two accepted: 1 is back */
    qv_sampler_reset(s);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 3); /* 1 suppressed again after a reset */
    assert_int_equal(qv_sampler_set_edits(s, NULL, 0, 0, NULL, 0, NULL), QV_OK);
    assert_false(qv_sampler_has_edits(s));
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 1);

    /* refused lists change nothing */
    qv_error err = {0};
    const qv_token_bias bad_id[1] = {{6, 1.0f}}, bad_val[1] = {{2, 100.5f}},
                        nan_val[1] = {{2, NAN}};
    const int32_t bad_sup[1] = {-1};
    assert_int_equal(qv_sampler_set_edits(s, bad_id, 1, 0, NULL, 0, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "outside"));
    assert_int_equal(qv_sampler_set_edits(s, bad_val, 1, 0, NULL, 0, &err), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_set_edits(s, nan_val, 1, 0, NULL, 0, &err), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_set_edits(s, NULL, 0, 1, bad_sup, 1, &err), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_set_edits(s, NULL, 0, -1, NULL, 0, &err), QV_ERR_INVALID);
    assert_false(qv_sampler_has_edits(s));
    const qv_token_bias edge[2] = {{0, 100.0f}, {1, -100.0f}};
    assert_int_equal(qv_sampler_set_edits(s, edge, 2, 0, NULL, 0, &err), QV_OK);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 0);
    qv_sampler_free(s);
}

/* A greedy sampler over n_vocab ids reporting n_logprobs alternatives. */
static qv_sampler *greedy_sampler(int n_vocab, int n_logprobs) {
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.n_logprobs = n_logprobs;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, n_vocab, &s), QV_OK);
    return s;
}

/* vLLM allowed_token_ids: only the listed ids are drawn, greedy or sampled, whatever the row;
 * the bias applies among them; logprobs stay those of the raw row; a bad list changes nothing. */
static void test_allowed_ids(void **state) {
    (void)state;
    qv_sampler *s = greedy_sampler(6, 1);
    const float x[6] = {1.0f, 5.0f, 3.0f, 4.5f, 0.0f, -2.0f};
    float y[6];
    const int32_t allowed[3] = {5, 2, 5};
    assert_int_equal(qv_sampler_set_allowed(s, allowed, 3, NULL), QV_OK);
    assert_true(qv_sampler_has_edits(s));
    memcpy(y, x, sizeof(x));
    qv_logprobs lp;
    assert_int_equal(qv_sampler_sample(s, y, &lp), 2);
    assert_int_equal(lp.top_ids[0], 1); /* the raw row's best */
    for (int v = 0; v < 6; v++)
        assert_true(v == 2 || v == 5 ? isfinite(y[v]) : isinf(y[v]));
    const qv_token_bias up[1] = {{5, 6.0f}}; /* -2 + 6 > 3 */
    assert_int_equal(qv_sampler_set_edits(s, up, 1, 0, NULL, 0, NULL), QV_OK);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 5);
    qv_error err = {0};
    const int32_t bad[2] = {2, 6};
    assert_int_equal(qv_sampler_set_allowed(s, bad, 2, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "outside"));
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 5); /* unchanged */
    assert_int_equal(qv_sampler_set_allowed(s, NULL, 0, NULL), QV_OK);
    assert_int_equal(qv_sampler_set_edits(s, NULL, 0, 0, NULL, 0, NULL), QV_OK);
    assert_false(qv_sampler_has_edits(s));
    qv_sampler_free(s);
    /* sampled: 2000 draws at temperature 1 only ever give the allowed ids, in proportion */
    qv_sampling_params p;
    qv_sampling_params_default(&p); /* temperature 1 */
    p.seed = 7;
    assert_int_equal(qv_sampler_create(&p, 6, &s), QV_OK);
    const int32_t two[2] = {0, 2};
    assert_int_equal(qv_sampler_set_allowed(s, two, 2, NULL), QV_OK);
    int hits[6] = {0};
    for (int i = 0; i < 2000; i++) {
        memcpy(y, x, sizeof(x));
        hits[qv_sampler_sample(s, y, NULL)]++;
    }
    assert_int_equal(hits[0] + hits[2], 2000);
    const double p0 = 1.0 / (1.0 + exp(2.0)); /* e^1 / (e^1 + e^3) */
    assert_true(fabs(hits[0] / 2000.0 - p0) < 0.03);
    qv_sampler_free(s);
}

/* vLLM bad_words: a one-token word never comes; a longer word's last token cannot follow the
 * rest of it, also after the history ring has wrapped; bad lists change nothing. */
static void test_bad_words(void **state) {
    (void)state;
    qv_sampler *s = greedy_sampler(6, 0);
    const int32_t ids[6] = {3, 1, 2, 5, 0, 2}, lens[3] = {1, 2, 3}; /* [3] [1 2] [5 0 2] */
    assert_int_equal(qv_sampler_set_bad_words(s, ids, lens, 3, NULL), QV_OK);
    assert_true(qv_sampler_has_edits(s));
    const float y[6] = {0.0f, 1.0f, 9.0f, 8.0f, 2.0f, 0.5f};
    float z[6];
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 2); /* nothing before: 2 is free */
    qv_sampler_accept(s, 1);
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 4); /* 2 after 1 banned, 3 always */
    assert_true(isinf(z[2]) && isinf(z[3]) && z[4] == 2.0f);
    qv_sampler_accept(s, 4);
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 2); /* after 4: free again */
    for (int i = 0; i < 45; i++)                        /* past the ring's size */
        qv_sampler_accept(s, i % 4 == 3 ? 5 : 4);
    qv_sampler_accept(s, 5);
    qv_sampler_accept(s, 0);
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 4); /* 5 0 then 2: banned */
    qv_sampler_accept(s, 1);
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 4); /* ... 0 1 then 2: [1 2] */
    qv_sampler_reset(s);
    memcpy(z, y, sizeof(y));
    assert_int_equal(qv_sampler_sample(s, z, NULL), 2); /* a reset forgets the history */
    qv_error err = {0};
    const int32_t bad_len[1] = {0}, long_len[1] = {QV_SAMPLER_MAX_BAD_LEN + 1}, bad_id[1] = {6};
    const int32_t one[1] = {1};
    assert_int_equal(qv_sampler_set_bad_words(s, ids, bad_len, 1, &err), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_set_bad_words(s, ids, long_len, 1, &err), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_set_bad_words(s, bad_id, one, 1, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "outside"));
    assert_true(qv_sampler_has_edits(s)); /* the earlier words stay */
    assert_int_equal(qv_sampler_set_bad_words(s, NULL, NULL, 0, NULL), QV_OK);
    assert_false(qv_sampler_has_edits(s));
    qv_sampler_free(s);
}

static void test_greedy(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.temperature = 0.0f;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 6, &s), QV_OK);
    float x[6] = {1.0f, 5.0f, 3.0f, 5.0f, 5.0f, -2.0f};
    qv_logprobs lp;
    float y[6];
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, &lp), 1); /* lowest id among the tied maxima */
    assert_int_equal(lp.token, 1);
    assert_int_equal(lp.n_top, 0);
    double z = 0;
    for (int i = 0; i < 6; i++)
        z += exp((double)x[i] - 5.0);
    assert_true(fabs((double)lp.logprob - (0.0 - log(z))) < 1e-6);
    float ninf[6] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(qv_sampler_sample(s, ninf, NULL), 0);
    qv_sampler_free(s);

    /* Temperature 0 ignores the seed. */
    float big[1000];
    gen_logits(7, 1000, 2.0, 0, big);
    int32_t first = -1;
    for (uint64_t seed = 0; seed < 5; seed++) {
        p.seed = seed;
        assert_int_equal(qv_sampler_create(&p, 1000, &s), QV_OK);
        for (int r = 0; r < 5; r++) {
            float row[1000];
            memcpy(row, big, sizeof(row));
            int32_t t = qv_sampler_sample(s, row, NULL);
            if (first < 0) first = t;
            assert_int_equal(t, first);
        }
        qv_sampler_free(s);
    }
    int32_t am = 0;
    for (int i = 1; i < 1000; i++)
        if (big[i] > big[am]) am = i;
    assert_int_equal(first, am);

    /* A tiny temperature is greedy too; the repetition penalty still applies. */
    p.temperature = 1e-7f;
    p.repetition_penalty = 100.0f;
    assert_int_equal(qv_sampler_create(&p, 6, &s), QV_OK);
    int32_t ctx[2] = {1, 3};
    qv_sampler_add_prompt(s, ctx, 2);
    memcpy(y, x, sizeof(x));
    assert_int_equal(qv_sampler_sample(s, y, NULL), 4);
    qv_sampler_free(s);
}

static void draw_sequence(uint64_t seed, int32_t *out, int n) {
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.seed = seed;
    p.top_k = 200;
    p.top_p = 0.95f;
    p.frequency_penalty = 0.1f;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 1000, &s), QV_OK);
    float base[1000], row[1000];
    gen_logits(99, 1000, 0.5, 0, base);
    for (int i = 0; i < n; i++) {
        memcpy(row, base, sizeof(row));
        out[i] = qv_sampler_sample(s, row, NULL);
        qv_sampler_accept(s, out[i]);
    }
    /* reset replays the same sequence */
    qv_sampler_reset(s);
    for (int i = 0; i < n; i++) {
        memcpy(row, base, sizeof(row));
        int32_t t = qv_sampler_sample(s, row, NULL);
        assert_int_equal(t, out[i]);
        qv_sampler_accept(s, t);
    }
    qv_sampler_free(s);
}

static void test_reproducible(void **state) {
    (void)state;
    int32_t a[200], b[200], c[200];
    draw_sequence(42, a, 200);
    draw_sequence(42, b, 200);
    draw_sequence(43, c, 200);
    assert_memory_equal(a, b, sizeof(a));
    int differ = 0;
    for (int i = 0; i < 200; i++)
        differ += a[i] != c[i];
    printf("seeds 42 vs 43: %d/200 draws differ\n", differ);
    assert_true(differ > 100);
}

/* HF top-k keeps every score equal to the k-th largest; the kept mass is exp-weighted. */
static void test_top_k_ties_and_min_p(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.top_k = 2;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 5, &s), QV_OK);
    float x[5] = {2.0f, 3.0f, 2.0f, 2.0f, 1.0f}, probs[5];
    qv_sampler_probs(s, x, probs);
    double z = exp(3.0) + 3.0 * exp(2.0);
    float want[5] = {(float)(exp(2.0) / z), (float)(exp(3.0) / z), (float)(exp(2.0) / z),
                     (float)(exp(2.0) / z), 0.0f};
    assert_int_equal(qv_test_compare_f32("top-k ties", probs, want, 5, 1e-7, 0.0), 0);
    qv_sampler_free(s);

    /* min_p = 1 keeps the maximum only; min_p = exp(-1) keeps the tokens within 1 of it. */
    qv_sampling_params_default(&p);
    p.min_p = 1.0f;
    assert_int_equal(qv_sampler_create(&p, 5, &s), QV_OK);
    float y[5] = {0.0f, 4.0f, 3.5f, 3.0f, -1.0f};
    qv_sampler_probs(s, y, probs);
    float one[5] = {0, 1, 0, 0, 0};
    assert_int_equal(qv_test_compare_f32("min_p=1", probs, one, 5, 0.0, 0.0), 0);
    qv_sampler_free(s);
    p.min_p = 0.36f; /* ratios 1, exp(-0.5), exp(-1) = 0.368 kept; exp(-4.5) dropped */
    assert_int_equal(qv_sampler_create(&p, 5, &s), QV_OK);
    float w[5] = {0.0f, 4.0f, 3.5f, 3.0f, -1.0f};
    qv_sampler_probs(s, w, probs);
    double zz = exp(0.0) + exp(-0.5) + exp(-1.0);
    float want2[5] = {0, (float)(1.0 / zz), (float)(exp(-0.5) / zz), (float)(exp(-1.0) / zz), 0};
    assert_int_equal(qv_test_compare_f32("min_p=0.36", probs, want2, 5, 1e-7, 0.0), 0);
    qv_sampler_free(s);
}

static void test_penalty_context(void **state) {
    (void)state;
    /* Out-of-range ids are ignored; prompt tokens count for repetition only; generated tokens
     * count for presence and frequency; a penalty is applied once per id. */
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 4, &s), QV_OK);
    int32_t prompt[5] = {0, 0, -1, 4, 1000};
    qv_sampler_add_prompt(s, prompt, 5);
    qv_sampler_accept(s, 2);
    qv_sampler_accept(s, 2);
    qv_sampler_accept(s, 2);
    qv_sampler_accept(s, -5);
    qv_sampler_accept(s, 4);
    float x[4] = {4.0f, 4.0f, -4.0f, 1.0f}, probs[4];
    qv_sampler_probs(s, x, probs);
    /* x after: [2, 4, -8 - 0.75 - 0.5, 1] */
    float want_x[4] = {2.0f, 4.0f, -9.25f, 1.0f};
    assert_int_equal(qv_test_compare_f32("penalised row", x, want_x, 4, 0.0, 0.0), 0);
    qv_sampler_free(s);
}

static void test_validation(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_error err;
    qv_sampling_params_default(&p);
    assert_int_equal(qv_sampling_params_validate(&p, &err), QV_OK);
    /* Each case: one bad field; the message must name it. */
    for (int i = 0;; i++) {
        qv_sampling_params_default(&p);
        const char *field = NULL;
        switch (i) {
        case 0:
            p.temperature = -0.1f;
            field = "temperature";
            break;
        case 1:
            p.temperature = NAN;
            field = "temperature";
            break;
        case 2:
            p.temperature = INFINITY;
            field = "temperature";
            break;
        case 3:
            p.top_k = -2;
            field = "top_k";
            break;
        case 4:
            p.top_p = 0.0f;
            field = "top_p";
            break;
        case 5:
            p.top_p = 1.5f;
            field = "top_p";
            break;
        case 6:
            p.top_p = -0.5f;
            field = "top_p";
            break;
        case 7:
            p.top_p = NAN;
            field = "top_p";
            break;
        case 8:
            p.min_p = -0.1f;
            field = "min_p";
            break;
        case 9:
            p.min_p = 1.1f;
            field = "min_p";
            break;
        case 10:
            p.repetition_penalty = 0.0f;
            field = "repetition_penalty";
            break;
        case 11:
            p.repetition_penalty = -1.0f;
            field = "repetition_penalty";
            break;
        case 12:
            p.repetition_penalty = INFINITY;
            field = "repetition_penalty";
            break;
        case 13:
            p.presence_penalty = 2.5f;
            field = "presence_penalty";
            break;
        case 14:
            p.frequency_penalty = -3.0f;
            field = "frequency_penalty";
            break;
        case 15:
            p.frequency_penalty = NAN;
            field = "frequency_penalty";
            break;
        case 16:
            p.n_logprobs = 21;
            field = "logprobs";
            break;
        case 17:
            p.n_logprobs = -1;
            field = "logprobs";
            break;
        default: break;
        }
        if (!field) break;
        memset(&err, 0, sizeof(err));
        assert_int_equal(qv_sampling_params_validate(&p, &err), QV_ERR_INVALID);
        if (!strstr(err.msg, field)) {
            fprintf(stderr, "case %d: message '%s' does not name %s\n", i, err.msg, field);
            fail();
        }
        qv_sampler *s = (qv_sampler *)&err; /* must be overwritten with NULL */
        assert_int_equal(qv_sampler_create(&p, 10, &s), QV_ERR_INVALID);
        assert_null(s);
    }
    /* Accepted edge values. */
    qv_sampling_params_default(&p);
    p.temperature = 0.0f;
    p.top_k = -1;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.n_logprobs = 20;
    assert_int_equal(qv_sampling_params_validate(&p, &err), QV_OK);
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 0, &s), QV_ERR_INVALID);
    assert_null(s);
    qv_sampler_free(NULL);
}

static void test_alloc_failure(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    int failures = 0;
    for (long k = 0; k < 8; k++) {
        qv_sampler *s = NULL;
        qv_alloc_fail_after(k);
        qv_status st = qv_sampler_create(&p, 1000, &s);
        qv_alloc_fail_after(-1);
        if (st == QV_OK) {
            qv_sampler_free(s);
        } else {
            assert_int_equal(st, QV_ERR_NOMEM);
            assert_null(s);
            failures++;
        }
    }
    assert_true(failures >= 6);
    qv_sampler_scratch *w = NULL;
    qv_alloc_fail_after(2);
    assert_int_equal(qv_sampler_scratch_create(1000, &w), QV_ERR_NOMEM);
    qv_alloc_fail_after(-1);
    assert_null(w);
}

/* All-(-inf) rows and rows where a single token survives. */
static void test_degenerate_rows(void **state) {
    (void)state;
    qv_sampling_params p;
    qv_sampling_params_default(&p);
    p.top_p = 0.5f;
    qv_sampler *s = NULL;
    assert_int_equal(qv_sampler_create(&p, 4, &s), QV_OK);
    float a[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    assert_int_equal(qv_sampler_sample(s, a, NULL), 0);
    float b[4] = {-INFINITY, -INFINITY, 7.0f, -INFINITY};
    for (int i = 0; i < 10; i++) {
        float r[4];
        memcpy(r, b, sizeof(r));
        assert_int_equal(qv_sampler_sample(s, r, NULL), 2);
    }
    qv_sampler_free(s);
}

/* ------------------------------------------------------ naive reference (full sort) ---- */

/* The documented rules (docs/sampling.md) written the slow, obvious way: sort everything by
 * (value desc, id asc) and walk it. Checks the fast selection paths (heap / radix top-k,
 * thresholded top-p with retries, min-p prefilter) on rows full of ties and on odd sizes. The
 * HF goldens above check the rules themselves. */
static const float *g_sort_y;
static int cmp_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (g_sort_y[i] > g_sort_y[j]) return -1;
    if (g_sort_y[i] < g_sort_y[j]) return 1;
    return (i > j) - (i < j);
}

static void naive_probs(const qv_sampling_params *p, const int32_t *prompt, int n_prompt,
                        const int32_t *gen, int n_gen, const float *raw, int n, float *out) {
    float *x = malloc((size_t)n * sizeof(float)), *y = malloc((size_t)n * sizeof(float));
    float *e = calloc((size_t)n, sizeof(float));
    int *ord = malloc((size_t)n * sizeof(int));
    bool *keep = malloc((size_t)n * sizeof(bool));
    int *cnt = calloc((size_t)n, sizeof(int));
    bool *ctx = calloc((size_t)n, sizeof(bool));
    memcpy(x, raw, (size_t)n * sizeof(float));
    for (int i = 0; i < n_prompt; i++)
        ctx[prompt[i]] = true;
    for (int i = 0; i < n_gen; i++)
        ctx[gen[i]] = true, cnt[gen[i]]++;
    for (int i = 0; i < n; i++) {
        if (ctx[i] && p->repetition_penalty != 1.0f)
            x[i] = x[i] < 0.0f ? x[i] * p->repetition_penalty : x[i] / p->repetition_penalty;
        if (cnt[i]) {
            x[i] = x[i] - p->frequency_penalty * (float)cnt[i];
            x[i] = x[i] - p->presence_penalty;
        }
    }
    memset(out, 0, (size_t)n * sizeof(float));
    if (p->temperature < QV_SAMPLER_MIN_TEMPERATURE) {
        int am = 0;
        for (int i = 1; i < n; i++)
            if (x[i] > x[am]) am = i;
        out[am] = 1.0f;
        goto done;
    }
    for (int i = 0; i < n; i++)
        y[i] = x[i] / p->temperature, ord[i] = i, keep[i] = true;
    g_sort_y = y;
    qsort(ord, (size_t)n, sizeof(int), cmp_desc);
    float m = y[ord[0]];
    if (p->top_k > 0 && p->top_k < n)
        for (int i = 0; i < n; i++)
            keep[i] = y[i] >= y[ord[p->top_k - 1]];
    for (int i = 0; i < n; i++)
        e[i] = keep[i] ? expf(y[i] - m) : 0.0f;
    if (p->top_p < 1.0f) {
        double z = 0.0, mass = 0.0;
        for (int i = 0; i < n; i++)
            z += (double)e[i];
        int kept = 0;
        for (int r = 0; r < n; r++) {
            int i = ord[r];
            if (e[i] == 0.0f) continue;
            if (kept > 0 && !(mass < (double)p->top_p * z))
                e[i] = 0.0f;
            else
                mass += (double)e[i], kept++;
        }
    }
    if (p->min_p > 0.0f)
        for (int i = 0; i < n; i++)
            if (e[i] < p->min_p) e[i] = 0.0f;
    double w = 0.0;
    for (int i = 0; i < n; i++)
        w += (double)e[i];
    for (int i = 0; i < n; i++)
        out[i] = (float)((double)e[i] / w);
done:
    free(x), free(y), free(e), free(ord), free(keep), free(cnt), free(ctx);
}

static void test_naive_reference_random(void **state) {
    (void)state;
    uint64_t st = 2024;
    int fails = 0;
    for (int it = 0; it < 400; it++) {
        int n =
            it % 7 == 0 ? 1000 + (int)(splitmix64(&st) % 3000) : 1 + (int)(splitmix64(&st) % 300);
        float *raw = malloc((size_t)n * sizeof(float)), *got = malloc((size_t)n * sizeof(float));
        float *want = malloc((size_t)n * sizeof(float)), *row = malloc((size_t)n * sizeof(float));
        int style = (int)(splitmix64(&st) % 4);
        for (int i = 0; i < n; i++) {
            double u = (double)(splitmix64(&st) >> 11) * 0x1.0p-53;
            if (style == 0)
                raw[i] = (float)floor(u * 16.0) * 0.5f; /* heavy ties */
            else if (style == 1)
                raw[i] = (float)((u - 0.5) * 30.0);
            else if (style == 2)
                raw[i] = (float)(u * u * u * 25.0 - 5.0); /* long tail */
            else
                raw[i] = (float)(900.0 + u * 8.0); /* large values: y ~ 1e6 at T = 1e-3 */
        }
        qv_sampling_params p;
        qv_sampling_params_default(&p);
        uint64_t r = splitmix64(&st);
        const float temps[] = {0.0f, 0.3f, 0.7f, 1.0f, 1.7f, 1e-3f};
        const int ks[] = {0, 1, 2, 5, 40, 300, 257, 2000};
        const float ps[] = {1.0f, 0.999f, 0.95f, 0.9f, 0.5f, 0.1f};
        const float mps[] = {0.0f, 0.0f, 0.01f, 0.2f};
        p.temperature = temps[r % 6];
        p.top_k = ks[(r >> 8) % 8];
        p.top_p = ps[(r >> 16) % 6];
        p.min_p = mps[(r >> 24) % 4];
        p.repetition_penalty = (r >> 32) % 3 == 0 ? 1.3f : 1.0f;
        p.presence_penalty = (r >> 36) % 3 == 0 ? 0.5f : 0.0f;
        p.frequency_penalty = (r >> 40) % 3 == 0 ? -0.25f : 0.0f;
        int32_t prompt[8], gen[8];
        for (int i = 0; i < 8; i++) {
            prompt[i] = (int32_t)(splitmix64(&st) % (uint64_t)n);
            gen[i] = (int32_t)(splitmix64(&st) % (uint64_t)n);
        }
        naive_probs(&p, prompt, 8, gen, 8, raw, n, want);
        qv_sampler *s = NULL;
        assert_int_equal(qv_sampler_create(&p, n, &s), QV_OK);
        qv_sampler_add_prompt(s, prompt, 8);
        for (int i = 0; i < 8; i++)
            qv_sampler_accept(s, gen[i]);
        memcpy(row, raw, (size_t)n * sizeof(float));
        qv_sampler_probs(s, row, got);
        int zero_mismatch = 0;
        for (int i = 0; i < n; i++)
            zero_mismatch += (got[i] > 0.0f) != (want[i] > 0.0f);
        char label[128];
        snprintf(label, sizeof(label), "naive #%d n=%d style=%d T=%g k=%d p=%g minp=%g", it, n,
                 style, (double)p.temperature, p.top_k, (double)p.top_p, (double)p.min_p);
        size_t bad = 0;
        for (int i = 0; i < n; i++)
            bad += fabsf(got[i] - want[i]) > 1e-7f;
        if (bad || zero_mismatch) {
            qv_test_compare_f32(label, got, want, (size_t)n, 1e-7, 0.0);
            fprintf(stderr, "%s: %d kept-set mismatches\n", label, zero_mismatch);
            fails++;
        }
        /* Sampled tokens always have non-zero probability. */
        for (int d = 0; d < 20; d++) {
            memcpy(row, raw, (size_t)n * sizeof(float));
            int32_t tok = qv_sampler_sample(s, row, NULL);
            if (!(want[tok] > 0.0f)) {
                fprintf(stderr, "%s: sampled token %d has probability 0\n", label, tok);
                fails++;
            }
        }
        qv_sampler_free(s);
        free(raw), free(got), free(want), free(row);
    }
    assert_int_equal(fails, 0);
}

/* Samplers sharing one scratch, interleaved, give exactly what samplers with their own give. */
static void test_shared_scratch(void **state) {
    (void)state;
    enum { N_SEQ = 4, N_STEP = 40, V = 3000 };
    float base[V], row[V];
    gen_logits(5, V, 1.0, 10, base);
    qv_sampler_scratch *w = NULL;
    assert_int_equal(qv_sampler_scratch_create(0, &w), QV_ERR_INVALID);
    assert_int_equal(qv_sampler_scratch_create(V, &w), QV_OK);
    qv_sampler *own[N_SEQ], *shared[N_SEQ];
    for (int q = 0; q < N_SEQ; q++) {
        qv_sampling_params p;
        qv_sampling_params_default(&p);
        p.seed = 100 + (uint64_t)q;
        p.top_k = q == 0 ? 0 : 300 * q; /* heap and radix paths */
        p.top_p = q == 2 ? 1.0f : 0.9f;
        p.repetition_penalty = 1.2f;
        p.n_logprobs = 3;
        assert_int_equal(qv_sampler_create(&p, V, &own[q]), QV_OK);
        assert_int_equal(qv_sampler_create_with_scratch(&p, V, w, &shared[q]), QV_OK);
    }
    qv_sampler *tmp = NULL;
    qv_sampling_params dp;
    qv_sampling_params_default(&dp);
    assert_int_equal(qv_sampler_create_with_scratch(&dp, V + 1, w, &tmp), QV_ERR_INVALID);
    assert_null(tmp);
    for (int step = 0; step < N_STEP; step++) {
        for (int q = 0; q < N_SEQ; q++) {
            qv_logprobs a, b;
            memcpy(row, base, sizeof(row));
            int32_t ta = qv_sampler_sample(own[q], row, &a);
            memcpy(row, base, sizeof(row));
            int32_t tb = qv_sampler_sample(shared[q], row, &b);
            assert_int_equal(ta, tb);
            assert_true(a.logprob == b.logprob);
            qv_sampler_accept(own[q], ta);
            qv_sampler_accept(shared[q], tb);
        }
    }
    for (int q = 0; q < N_SEQ; q++) {
        qv_sampler_free(own[q]);
        qv_sampler_free(shared[q]);
    }
    qv_sampler_scratch_free(w);
    qv_sampler_scratch_free(NULL);
}

/* vLLM's rank: 1 + the tokens with a strictly larger logit; tied tokens share a rank. */
static void test_logprob_rank(void **state) {
    (void)state;
    const float row[7] = {0.5f, 2.0f, -1.0f, 2.0f, 0.5f, -INFINITY, 3.0f};
    const int want[7] = {4, 2, 6, 2, 4, 7, 1};
    for (int t = 0; t < 7; t++)
        assert_int_equal(qv_logprob_rank(row, 7, t), want[t]);
    /* the most likely token of a larger row is rank 1, the least likely rank n */
    enum { N = 1000 };
    static float big[N];
    for (int i = 0; i < N; i++)
        big[i] = (float)((i * 7919) % N);
    assert_int_equal(qv_logprob_rank(big, N, 0), N);
    for (int i = 0; i < N; i++)
        if (big[i] == N - 1) assert_int_equal(qv_logprob_rank(big, N, i), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logprob_rank),
        cmocka_unit_test(test_golden_distributions),
        cmocka_unit_test(test_golden_draws),
        cmocka_unit_test(test_golden_logprobs),
        cmocka_unit_test(test_golden_chi_square),
        cmocka_unit_test(test_chi_square_small),
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_edits_greedy),
        cmocka_unit_test(test_allowed_ids),
        cmocka_unit_test(test_bad_words),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_top_k_ties_and_min_p),
        cmocka_unit_test(test_penalty_context),
        cmocka_unit_test(test_validation),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_degenerate_rows),
        cmocka_unit_test(test_naive_reference_random),
        cmocka_unit_test(test_shared_scratch),
    };
    return cmocka_run_group_tests(tests, setup_cases, teardown_cases);
}
