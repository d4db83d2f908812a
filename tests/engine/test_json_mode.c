/*
 * test_json_mode.c - JSON mode (qv_gen_params.json_object) end to end in the engine on
 * SmolLM2-135M-Instruct: greedy and sampled generations, side by side in one batch with an
 * unconstrained sequence, must each be one JSON object that cJSON parses (an independent
 * parser), ended by an end-of-generation token, although the prompt asks for prose; no special
 * token may appear inside; the unconstrained sequence equals its solo run. Asked for JSON, the
 * constrained greedy answer equals the free one token for token (the mask removes only what
 * breaks the JSON). The refused combinations are refused.
 *
 * Exits 77 (skipped) when the model file is absent (QV_SMOLLM2_GGUF overrides
 * ~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf); the test command fetches it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "engine.h"
#include "test_util.h"

#define MAX_GEN 96
#define N_SEQ 5

static char model_path[4096];

typedef struct run {
    int id;
    int32_t toks[MAX_GEN];
    qv_logprobs lps[MAX_GEN]; /* when logprobs were asked */
    int n;
    int finish;
} run;

static run *runs;
static int n_runs;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)user;
    for (int i = 0; i < n_runs; i++)
        if (runs[i].id == seq_id) {
            assert_true(runs[i].n < MAX_GEN);
            if (lp) runs[i].lps[runs[i].n] = *lp;
            runs[i].toks[runs[i].n++] = tok;
            runs[i].finish = (int)fin;
            return;
        }
    fail_msg("callback for unknown sequence %d", seq_id);
}

static qv_engine *open_engine(void) {
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = model_path;
    c.n_threads = 2;
    c.kv_bytes = (size_t)64 << 20;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    return e;
}

static int32_t *chat_prompt(qv_engine *e, const char *user, size_t *n) {
    const qv_tokenizer *t = qv_engine_tokenizer(e);
    const qv_chat_msg msg = {.role = "user", .content = user};
    char *text = NULL;
    qv_error err = {0};
    if (qv_chat_render(t, NULL, &msg, 1, true, &text, &err) != QV_OK) fail_msg("%s", err.msg);
    int32_t *ids = NULL;
    if (qv_tokenizer_encode(t, text, strlen(text), false, &ids, n, &err) != QV_OK)
        fail_msg("%s", err.msg);
    qv_free(text);
    return ids;
}

static void run_all(qv_engine *e, const int32_t *prompt, size_t n_prompt, const qv_gen_params *gp,
                    int n) {
    qv_error err = {0};
    n_runs = n;
    for (int i = 0; i < n; i++) {
        runs[i] = (run){0};
        if (qv_engine_add(e, prompt, n_prompt, &gp[i], on_tok, NULL, &runs[i].id, &err) != QV_OK)
            fail_msg("add: %s", err.msg);
    }
    for (int steps = 0; qv_engine_n_active(e) > 0; steps++) {
        assert_true(steps < 4 * MAX_GEN);
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
    }
}

static void test_json_objects(void **state) {
    (void)state;
    qv_engine *e = open_engine();
    const qv_tokenizer *t = qv_engine_tokenizer(e);
    size_t n_prompt;
    int32_t *prompt = chat_prompt(e, "Tell me about cats in two sentences.", &n_prompt);
    run rs[N_SEQ];
    runs = rs;
    qv_gen_params gp[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        qv_gen_params_default(&gp[i]);
        gp[i].max_tokens = MAX_GEN;
        gp[i].json_object = i < N_SEQ - 1;
        if (i >= 1 && i < N_SEQ - 1) { /* sampled, with a seed each */
            gp[i].sampling.temperature = 1.0f;
            gp[i].sampling.top_p = 0.95f;
            gp[i].sampling.seed = 1000u + (uint64_t)i;
        } else {
            gp[i].sampling.temperature = 0.0f; /* greedy (constrained, and the free control) */
        }
    }
    gp[2].sampling.n_logprobs = 5; /* a logprobs row is masked like any other (and copied) */
    run_all(e, prompt, n_prompt, gp, N_SEQ);
    int n_objects = 0;
    for (int i = 0; i < N_SEQ - 1; i++) {
        const run *r = &rs[i];
        char *text = NULL;
        qv_error err = {0};
        const bool stopped = r->finish == QV_FINISH_STOP;
        int n_text = stopped ? r->n - 1 : r->n;
        for (int k = 0; k < n_text; k++)
            assert_false(qv_tokenizer_is_special(t, r->toks[k]) ||
                         qv_tokenizer_is_eog(t, r->toks[k]));
        assert_int_equal(qv_tokenizer_decode(t, r->toks, (size_t)n_text, false, &text, NULL, &err),
                         QV_OK);
        printf("json mode seq %d (%s, %d tokens): %s\n", i, stopped ? "stop" : "length", r->n,
               text);
        if (stopped) {
            assert_true(qv_tokenizer_is_eog(t, r->toks[r->n - 1]));
            const char *end = NULL;
            cJSON *j = cJSON_ParseWithOpts(text, &end, true);
            if (!j || !cJSON_IsObject(j)) fail_msg("seq %d: not one JSON object: %s", i, text);
            cJSON_Delete(j);
            n_objects++;
        }
        qv_free(text);
    }
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    printf("json masks: %llu from the cache, %llu computed\n",
           (unsigned long long)st.json_mask_hits, (unsigned long long)st.json_mask_misses);
    assert_true(st.json_mask_misses > 0 && st.json_mask_hits > 0);
    /* the greedy sequence must close its object well within the budget; sampled ones may run
     * long, but not all of them */
    assert_int_equal(rs[0].finish, QV_FINISH_STOP);
    assert_true(n_objects >= 2);

    /* the prompt asks for prose: unconstrained, the model writes no JSON object (so the
     * objects above are the constraint's doing) */
    {
        const run *r = &rs[N_SEQ - 1];
        char *text = NULL;
        qv_error err = {0};
        assert_int_equal(qv_tokenizer_decode(t, r->toks, (size_t)r->n, true, &text, NULL, &err),
                         QV_OK);
        printf("free greedy (%d tokens): %s\n", r->n, text);
        cJSON *j = cJSON_Parse(text);
        assert_false(j && cJSON_IsObject(j));
        cJSON_Delete(j);
        qv_free(text);
    }
    /* the unconstrained greedy sequence of the same batch equals its solo run */
    run solo_rs[1];
    runs = solo_rs;
    run_all(e, prompt, n_prompt, &gp[N_SEQ - 1], 1);
    assert_int_equal(solo_rs[0].n, rs[N_SEQ - 1].n);
    assert_memory_equal(solo_rs[0].toks, rs[N_SEQ - 1].toks, (size_t)rs[N_SEQ - 1].n * 4);

    /* constrained greedy alone equals constrained greedy in the batch */
    run solo_json[1];
    runs = solo_json;
    run_all(e, prompt, n_prompt, &gp[0], 1);
    assert_int_equal(solo_json[0].n, rs[0].n);
    assert_memory_equal(solo_json[0].toks, rs[0].toks, (size_t)rs[0].n * 4);
    qv_free(prompt);
    qv_engine_destroy(e);
}

/* Masking removes only tokens that break the JSON: asked for a JSON object, the model's free
 * greedy answer is one (checked with cJSON), so the constrained greedy run must pick exactly
 * the same tokens, strings, numbers, whitespace and end token included. */
static void test_mask_keeps_valid_path(void **state) {
    (void)state;
    qv_engine *e = open_engine();
    const qv_tokenizer *t = qv_engine_tokenizer(e);
    size_t n_prompt;
    int32_t *prompt = chat_prompt(
        e, "Output a JSON object with the keys \"name\" and \"age\" for Bob, 42.", &n_prompt);
    run rs[2];
    runs = rs;
    qv_gen_params gp[2];
    for (int i = 0; i < 2; i++) {
        qv_gen_params_default(&gp[i]);
        gp[i].max_tokens = MAX_GEN;
        gp[i].sampling.temperature = 0.0f;
        gp[i].sampling.n_logprobs = 4;
        gp[i].json_object = i == 0;
    }
    run_all(e, prompt, n_prompt, gp, 2);
    char *text = NULL;
    qv_error err = {0};
    assert_int_equal(rs[1].finish, QV_FINISH_STOP);
    assert_int_equal(qv_tokenizer_decode(t, rs[1].toks, (size_t)rs[1].n, true, &text, NULL, &err),
                     QV_OK);
    printf("free greedy (%d tokens): %s\n", rs[1].n, text);
    cJSON *j = cJSON_Parse(text);
    assert_true(j && cJSON_IsObject(j) && text[0] == '{');
    cJSON_Delete(j);
    qv_free(text);
    assert_int_equal(rs[0].n, rs[1].n);
    assert_memory_equal(rs[0].toks, rs[1].toks, (size_t)rs[1].n * 4);
    assert_int_equal(rs[0].finish, QV_FINISH_STOP);
    /* the logprobs are the model's, from the row before the mask: the same as the free run's,
     * alternatives included (even tokens the mask refused) */
    for (int k = 0; k < rs[0].n; k++) {
        const qv_logprobs *a = &rs[0].lps[k], *b = &rs[1].lps[k];
        assert_int_equal(a->token, b->token);
        assert_true(a->logprob == b->logprob && a->n_top == 4 && b->n_top == 4);
        assert_memory_equal(a->top_ids, b->top_ids, 4 * sizeof(int32_t));
        assert_memory_equal(a->top_logprobs, b->top_logprobs, 4 * sizeof(float));
    }
    qv_free(prompt);
    qv_engine_destroy(e);
}

static void test_refusals(void **state) {
    (void)state;
    qv_engine *e = open_engine();
    const int32_t prompt[] = {1, 2, 3};
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.json_object = true;
    gp.ignore_eos = true;
    qv_error err = {0};
    int id;
    assert_int_equal(qv_engine_add(e, prompt, 3, &gp, on_tok, NULL, &id, &err), QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "JSON mode"));
    gp.ignore_eos = false;
    gp.min_tokens = 2;
    assert_int_equal(qv_engine_add(e, prompt, 3, &gp, on_tok, NULL, &id, &err), QV_ERR_INVALID);
    assert_int_equal(qv_engine_n_active(e), 0);
    qv_engine_destroy(e);

    /* an engine without its tokenizer cannot know the tokens' bytes */
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path("tests/fixtures/models/tiny-llama");
    c.load_tokenizer = false;
    assert_int_equal(qv_engine_create(&c, &e, &err), QV_OK);
    gp.min_tokens = 0;
    assert_int_equal(qv_engine_add(e, prompt, 3, &gp, on_tok, NULL, &id, &err), QV_ERR_UNSUPPORTED);
    qv_engine_destroy(e);
}

int main(void) {
    const char *env = getenv("QV_SMOLLM2_GGUF");
    const char *home = getenv("HOME");
    if (env)
        snprintf(model_path, sizeof(model_path), "%s", env);
    else
        snprintf(model_path, sizeof(model_path),
                 "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf", home ? home : "");
    if (!qv_test_exists(model_path)) {
        fprintf(stderr, "SKIP: %s not found (deploy/fetch-model.sh fetches it)\n", model_path);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_objects),
        cmocka_unit_test(test_mask_keeps_valid_path),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
