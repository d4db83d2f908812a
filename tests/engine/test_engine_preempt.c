/*
 * test_engine_preempt.c - preemption by recompute in the engine's scheduler (issue 5, item 3).
 *
 * Requests (tiny-llama-gqa, fp32 HF directory): the 3 base prompts of
 * tests/fixtures/golden/tiny-llama-gqa.json, 2 prompts each with a LoRA (lora_qv_r4), a prefix-
 * tuning adapter (prefix_nvt5: shared, refcounted prefix pages) and a prompt-tuning adapter
 * (prompt_nvt4: virtual tokens) from tests/fixtures/adapter_golden/ (HF PEFT greedy, generated
 * by tests/oracle/gen_golden.py and tests/oracle/gen_adapters.py), plus 2 seeded sampled
 * requests (temperature, top-k/top-p, repetition penalty) whose sampler state must survive a
 * preemption. Each generates 32 tokens.
 *
 * Every request first runs alone in a roomy engine ("solo"); its greedy tokens must equal HF's
 * up to the first genuine near-tie (top-2 gap < 1e-3). Then all 11 run together in an engine
 * whose KV cache holds about a third of what they need at once (and, in the tight case, exactly
 * the largest request alone): each must report exactly 32 tokens (no repeated callback, finish
 * on the last one only) identical to its solo run, preemptions must happen (asserted > 0, so
 * the test fails if the scheduler never preempts), qv_engine_add must answer QV_ERR_BUSY while
 * a preempted sequence waits, and every page must be back in the pool at the end.
 *
 * Also: the newest admitted sequence is the one preempted; cancelling it while it waits leaves
 * the others (one shares its prefix pages) correct and frees everything; a request that can
 * never fit the cache alone (prefix positions included) is QV_ERR_LIMIT, one that exactly fits
 * completes next to others.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/adapter_apply.h"
#include "engine/engine.h"
#include "golden_util.h"
#include "test_util.h"

#define N_GEN 32
#define MAX_REQ 16
#define MAX_PROMPT 32

typedef struct req {
    char label[64];
    int32_t prompt[MAX_PROMPT];
    int n_prompt;
    qv_gen_params gp;
    int32_t hf[N_GEN]; /* HF greedy, when has_hf */
    double gap[N_GEN]; /* HF top-2 gap per step */
    bool has_hf;
    int32_t solo[N_GEN];
    /* filled by the callback */
    int32_t got[N_GEN + 4];
    int n_got;
    int finish;
    int late_calls; /* callbacks after the finishing one (must stay 0) */
    int id;
} req;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)lp;
    req *r = user;
    if (r->finish != QV_FINISH_NONE || seq_id != r->id) {
        r->late_calls++;
        return;
    }
    if (r->n_got < N_GEN + 4) r->got[r->n_got] = tok;
    r->n_got++;
    r->finish = (int)fin;
}

static size_t kv_bytes_per_token(const qv_model *m) {
    return (size_t)m->cfg.n_layers * 2 * (size_t)m->cfg.n_kv_heads * (size_t)m->cfg.head_dim *
           sizeof(float);
}

static qv_engine *open_engine(int page, int n_pages, int budget) {
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path("tests/fixtures/models/tiny-llama-gqa");
    c.load_tokenizer = false;
    c.n_threads = 2;
    c.kv_page_size = page;
    c.max_batch_tokens = budget;
    c.max_seqs = MAX_REQ;
    qv_engine *e = NULL;
    qv_error err = {0};
    /* The budget is n_pages pages exactly: the per-token KV size comes from the model. */
    qv_model *m = NULL;
    if (qv_model_load(c.model_path, &m, &err) != QV_OK) fail_msg("model: %s", err.msg);
    c.kv_bytes = kv_bytes_per_token(m) * (size_t)page * (size_t)n_pages;
    qv_model_free(m);
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    assert_int_equal(qv_engine_kv_pages(e), n_pages);
    return e;
}

static qv_adapter *load_ad(const qv_model *m, const char *name) {
    char path[256];
    snprintf(path, sizeof(path), "tests/fixtures/adapters/tiny-llama-gqa/%s", name);
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path(path), m, NULL, &ad, &err) != QV_OK)
        fail_msg("adapter %s: %s", name, err.msg);
    return ad;
}

static cJSON *read_json(const char *rel) {
    cJSON *root = json_read_fixture(rel);
    assert_non_null(root);
    return root;
}

/* Appends one greedy request per prompt of a golden file (adapter ad or NULL). */
static void add_golden_reqs(req *rs, int *n, const char *rel, const qv_adapter *ad,
                            const char *name) {
    cJSON *root = read_json(rel);
    const cJSON *p;
    int k = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
        req *r = &rs[(*n)++];
        assert_true(*n <= MAX_REQ);
        memset(r, 0, sizeof(*r));
        snprintf(r->label, sizeof(r->label), "%s #%d", name, k++);
        int n_ids, n_g;
        int32_t *ids = json_i32_array(cJSON_GetObjectItem(p, "ids"), &n_ids);
        int32_t *g = json_i32_array(cJSON_GetObjectItem(p, "greedy"), &n_g);
        assert_true(n_ids <= MAX_PROMPT && n_g >= N_GEN);
        memcpy(r->prompt, ids, (size_t)n_ids * sizeof(int32_t));
        r->n_prompt = n_ids;
        memcpy(r->hf, g, sizeof(r->hf));
        const cJSON *gaps = cJSON_GetObjectItem(p, "top2_gap");
        for (int s = 0; s < N_GEN; s++)
            r->gap[s] = cJSON_GetArrayItem(gaps, s)->valuedouble;
        r->has_hf = true;
        qv_gen_params_default(&r->gp);
        r->gp.max_tokens = N_GEN;
        r->gp.ignore_eos = true;
        r->gp.sampling.temperature = 0.0f;
        r->gp.adapter = ad;
        free(ids);
        free(g);
    }
    cJSON_Delete(root);
}

typedef struct fixture {
    qv_model *probe; /* for adapter loading */
    qv_adapter *lora, *prefix, *prompt;
    req reqs[MAX_REQ];
    int n;
} fixture;

static void fixture_open(fixture *f) {
    memset(f, 0, sizeof(*f));
    qv_error err = {0};
    assert_int_equal(
        qv_model_load(qv_test_path("tests/fixtures/models/tiny-llama-gqa"), &f->probe, &err),
        QV_OK);
    f->lora = load_ad(f->probe, "lora_qv_r4");
    f->prefix = load_ad(f->probe, "prefix_nvt5");
    f->prompt = load_ad(f->probe, "prompt_nvt4");
    add_golden_reqs(f->reqs, &f->n, "tests/fixtures/golden/tiny-llama-gqa.json", NULL, "base");
    add_golden_reqs(f->reqs, &f->n, "tests/fixtures/adapter_golden/tiny-llama-gqa__lora_qv_r4.json",
                    f->lora, "lora");
    add_golden_reqs(f->reqs, &f->n,
                    "tests/fixtures/adapter_golden/tiny-llama-gqa__prefix_nvt5.json", f->prefix,
                    "prefix");
    add_golden_reqs(f->reqs, &f->n,
                    "tests/fixtures/adapter_golden/tiny-llama-gqa__prompt_nvt4.json", f->prompt,
                    "prompt");
    /* Two sampled requests: seeded RNG and penalties live in the sampler, which a preemption
     * must keep. */
    for (int k = 0; k < 2; k++) {
        req *r = &f->reqs[f->n++];
        memset(r, 0, sizeof(*r));
        snprintf(r->label, sizeof(r->label), "sampled #%d", k);
        r->n_prompt = 6 + 5 * k;
        for (int i = 0; i < r->n_prompt; i++)
            r->prompt[i] = (int32_t)((37 * i + 11 * k + 5) % 280);
        qv_gen_params_default(&r->gp);
        r->gp.max_tokens = N_GEN;
        r->gp.ignore_eos = true;
        r->gp.sampling.temperature = 0.9f;
        r->gp.sampling.top_k = 40;
        r->gp.sampling.top_p = 0.95f;
        r->gp.sampling.repetition_penalty = 1.1f;
        r->gp.sampling.seed = 1234 + (uint64_t)k;
        r->gp.adapter = k ? f->lora : NULL;
    }
}

static void fixture_close(fixture *f) {
    qv_adapter_free(f->lora);
    qv_adapter_free(f->prefix);
    qv_adapter_free(f->prompt);
    qv_model_free(f->probe);
}

static void add_req(qv_engine *e, req *r) {
    qv_error err = {0};
    r->n_got = 0;
    r->finish = QV_FINISH_NONE;
    r->late_calls = 0;
    r->id = -1;
    if (qv_engine_add(e, r->prompt, (size_t)r->n_prompt, &r->gp, on_tok, r, &r->id, &err) != QV_OK)
        fail_msg("add %s: %s", r->label, err.msg);
}

static void check_complete(const req *r) {
    if (r->n_got != N_GEN || r->finish != QV_FINISH_LENGTH || r->late_calls != 0)
        fail_msg("%s: %d tokens, finish %d, %d late callbacks (want %d, LENGTH, 0)", r->label,
                 r->n_got, r->finish, r->late_calls, N_GEN);
}

/* Runs every request alone (no preemption possible: the cache is roomy) and checks HF. */
static void run_solo(fixture *f) {
    qv_engine *e = open_engine(4, 256, 16);
    qv_error err = {0};
    for (int i = 0; i < f->n; i++) {
        req *r = &f->reqs[i];
        add_req(e, r);
        for (int guard = 0; qv_engine_n_active(e) > 0; guard++) {
            assert_true(guard < 1000);
            assert_int_equal(qv_engine_step(e, &err), QV_OK);
        }
        check_complete(r);
        memcpy(r->solo, r->got, sizeof(r->solo));
        if (!r->has_hf) continue;
        for (int s = 0; s < N_GEN; s++) {
            if (r->solo[s] == r->hf[s]) continue;
            if (r->gap[s] > 1e-3)
                fail_msg("%s step %d: %d vs HF %d (gap %.3g)", r->label, s, r->solo[s], r->hf[s],
                         r->gap[s]);
            break; /* near-tie: continuations may legitimately diverge from here */
        }
    }
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    assert_int_equal((int)st.preemptions, 0);
    qv_engine_destroy(e);
}

/* Everything at once in a cache of n_pages pages; returns the number of preemptions. */
static uint64_t run_together(fixture *f, int page, int n_pages, int budget) {
    qv_engine *e = open_engine(page, n_pages, budget);
    qv_error err = {0};
    int need = 0; /* pages all requests would hold at once at their longest */
    for (int i = 0; i < f->n; i++) {
        int n_tok =
            qv_adapter_n_prefix_positions(f->reqs[i].gp.adapter) + f->reqs[i].n_prompt + N_GEN;
        need += (n_tok + page - 1) / page;
    }
    /* Like the server: a FIFO of pending requests admitted in order while the engine accepts
     * (max_seqs may be below the number of requests; BUSY while a preempted sequence waits). */
    int next = 0, steps = 0, max_running = 0, n_busy_preempted = 0;
    bool probed = false;
    qv_engine_stats st;
    for (;;) {
        while (next < f->n) {
            req *r = &f->reqs[next];
            r->n_got = 0;
            r->finish = QV_FINISH_NONE;
            r->late_calls = 0;
            qv_status s =
                qv_engine_add(e, r->prompt, (size_t)r->n_prompt, &r->gp, on_tok, r, &r->id, &err);
            if (s == QV_ERR_BUSY) {
                qv_engine_get_stats(e, &st);
                n_busy_preempted += st.n_waiting_preempted > 0;
                break;
            }
            if (s != QV_OK) fail_msg("add %s: %s", r->label, err.msg);
            next++;
        }
        if (qv_engine_n_active(e) == 0) break;
        assert_int_equal(qv_engine_step(e, &err), QV_OK);
        assert_true(++steps < 20000);
        qv_engine_get_stats(e, &st);
        assert_int_equal(st.n_running + st.n_waiting, qv_engine_n_active(e));
        if (st.n_running > max_running) max_running = st.n_running;
        if (st.n_waiting_preempted > 0 && !probed) {
            /* Even with free slots, a new arrival must not overtake a preempted sequence. */
            int32_t one = 7;
            qv_gen_params gp;
            qv_gen_params_default(&gp);
            assert_int_equal(qv_engine_add(e, &one, 1, &gp, NULL, NULL, NULL, &err), QV_ERR_BUSY);
            probed = true;
        }
    }
    qv_engine_get_stats(e, &st);
    for (int i = 0; i < f->n; i++) {
        req *r = &f->reqs[i];
        check_complete(r);
        for (int s = 0; s < N_GEN; s++)
            if (r->got[s] != r->solo[s])
                fail_msg("page %d, %d pages: %s token %d: %d together, %d alone", page, n_pages,
                         r->label, s, r->got[s], r->solo[s]);
    }
    assert_int_equal(st.kv_free_pages, n_pages);
    assert_int_equal(st.n_running + st.n_waiting + st.n_waiting_preempted, 0);
    printf("page %d, %d KV pages (%d needed at once, %.1fx), budget %d: %d requests in %d steps, "
           "at most %d running, %llu preemptions, %llu tokens recomputed, %d adds refused "
           "while a preempted sequence waited\n",
           page, n_pages, need, (double)need / n_pages, budget, f->n, steps, max_running,
           (unsigned long long)st.preemptions, (unsigned long long)st.recomputed_tokens,
           n_busy_preempted);
    assert_true(st.preemptions > 0);
    assert_true(st.recomputed_tokens > 0);
    assert_true(probed);
    qv_engine_destroy(e);
    return st.preemptions;
}

static void test_preemption_matches_solo(void **state) {
    (void)state;
    static fixture f;
    fixture_open(&f);
    run_solo(&f);
    /* About a third of the pages needed at once (123 at page 4). */
    run_together(&f, 4, 40, 16);
    /* Tight: exactly the largest request alone (19 + 32 tokens = 13 pages of 4), odd budget. */
    run_together(&f, 4, 13, 7);
    /* Page 5 = the prefix length: the prefix adapter's page is wholly shared. */
    run_together(&f, 5, 30, 32);
    fixture_close(&f);
}

/* The newest admitted sequence is preempted first; cancelling it while it waits frees it and
 * leaves the sequence sharing its prefix pages intact. */
static void test_cancel_preempted(void **state) {
    (void)state;
    static fixture f;
    fixture_open(&f);
    run_solo(&f);
    /* A: base 7-token prompt (39 tokens, 10 pages), D then B: prefix adapter, 5-token prompt
     * (5 + 5 + 32 = 42 tokens, 11 pages each); 16 pages hold all three only at first. */
    req *a = &f.reqs[1], *d = &f.reqs[5], *b = NULL;
    static req b_copy;
    b_copy = *d;
    snprintf(b_copy.label, sizeof(b_copy.label), "prefix #0 (copy)");
    b = &b_copy;
    assert_ptr_equal(d->gp.adapter, f.prefix);
    assert_int_equal(d->n_prompt, 5);
    qv_engine *e = open_engine(4, 16, 16);
    qv_error err = {0};
    add_req(e, a);
    add_req(e, d);
    add_req(e, b);
    assert_int_equal(qv_engine_seq_state(e, b->id), QV_SEQ_WAITING);
    int steps = 0;
    while (qv_engine_seq_state(e, b->id) != QV_SEQ_PREEMPTED) {
        assert_int_equal(qv_engine_step(e, &err), QV_OK);
        assert_true(++steps < 1000);
        assert_int_equal(b->finish, QV_FINISH_NONE);
    }
    assert_int_equal(qv_engine_seq_state(e, a->id), QV_SEQ_RUNNING);
    assert_int_equal(qv_engine_seq_state(e, d->id), QV_SEQ_RUNNING);
    int b_tokens = b->n_got;
    assert_true(b_tokens > 0);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    assert_int_equal((int)st.preemptions, 1);
    assert_int_equal(st.n_waiting_preempted, 1);
    int free_before = st.kv_free_pages;
    int32_t one = 9;
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    assert_int_equal(qv_engine_add(e, &one, 1, &gp, NULL, NULL, NULL, &err), QV_ERR_BUSY);
    qv_engine_cancel(e, b->id);
    assert_int_equal(qv_engine_seq_state(e, b->id), QV_SEQ_UNKNOWN);
    qv_engine_get_stats(e, &st);
    assert_int_equal(st.n_waiting_preempted, 0);
    assert_int_equal(st.n_running, 2);
    assert_int_equal(st.kv_free_pages, free_before); /* it held nothing */
    while (qv_engine_n_active(e) > 0) {
        assert_int_equal(qv_engine_step(e, &err), QV_OK);
        assert_true(++steps < 2000);
    }
    assert_int_equal(b->n_got, b_tokens); /* no callback after the cancel */
    for (int s = 0; s < b_tokens; s++)
        assert_int_equal(b->got[s], d->solo[s]);
    check_complete(a);
    check_complete(d);
    assert_memory_equal(a->got, a->solo, sizeof(a->solo));
    assert_memory_equal(d->got, d->solo, sizeof(d->solo));
    qv_engine_get_stats(e, &st);
    printf("cancel: B preempted after %d tokens (step %d); A and D finished, %llu preemptions\n",
           b_tokens, steps, (unsigned long long)st.preemptions);
    assert_int_equal(st.kv_free_pages, 16);
    qv_engine_destroy(e);
    fixture_close(&f);
}

/* Capacity limits count prefix positions; a request that exactly fills the cache completes
 * next to another one (which is preempted for it). */
static void test_limits(void **state) {
    (void)state;
    static fixture f;
    fixture_open(&f);
    const int page = 4, n_pages = 10, cap = page * n_pages;
    qv_engine *e = open_engine(page, n_pages, 16);
    qv_error err = {0};
    int32_t ids[8] = {90, 104, 132, 248, 245, 17, 3, 200};
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.sampling.temperature = 0.0f;
    gp.ignore_eos = true;
    gp.max_tokens = cap - 8 + 1;
    assert_int_equal(qv_engine_add(e, ids, 8, &gp, NULL, NULL, NULL, &err), QV_ERR_LIMIT);
    printf("refused: %s\n", err.msg);
    gp.adapter = f.prefix; /* 5 prefix positions count */
    gp.max_tokens = cap - 8 - 5 + 1;
    assert_int_equal(qv_engine_add(e, ids, 8, &gp, NULL, NULL, NULL, &err), QV_ERR_LIMIT);
    gp.adapter = f.prompt; /* 4 virtual tokens count */
    gp.max_tokens = cap - 8 - 4 + 1;
    assert_int_equal(qv_engine_add(e, ids, 8, &gp, NULL, NULL, NULL, &err), QV_ERR_LIMIT);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    assert_int_equal(st.n_waiting + st.n_running, 0);

    /* small (first) + full (exactly the whole cache with its prefix) */
    req small = {0}, full = {0};
    snprintf(small.label, sizeof(small.label), "small");
    snprintf(full.label, sizeof(full.label), "full");
    memcpy(small.prompt, ids, sizeof(ids));
    memcpy(full.prompt, ids, sizeof(ids));
    small.n_prompt = full.n_prompt = 8;
    qv_gen_params_default(&small.gp);
    small.gp.sampling.temperature = 0.0f;
    small.gp.ignore_eos = true;
    small.gp.max_tokens = 16;
    full.gp = small.gp;
    full.gp.adapter = f.prefix;
    full.gp.max_tokens = cap - 8 - 5;
    /* solo references in a roomy engine */
    qv_engine *solo = open_engine(page, 64, 16);
    for (int k = 0; k < 2; k++) {
        req *r = k ? &full : &small;
        add_req(solo, r);
        while (qv_engine_n_active(solo) > 0)
            assert_int_equal(qv_engine_step(solo, &err), QV_OK);
        assert_int_equal(r->finish, QV_FINISH_LENGTH);
        assert_true(r->n_got <= N_GEN);
        memcpy(r->solo, r->got, sizeof(r->solo));
    }
    qv_engine_destroy(solo);
    int n_full = full.gp.max_tokens;
    assert_true(n_full <= N_GEN);
    add_req(e, &small);
    add_req(e, &full);
    int steps = 0;
    while (qv_engine_n_active(e) > 0) {
        assert_int_equal(qv_engine_step(e, &err), QV_OK);
        assert_true(++steps < 2000);
    }
    assert_int_equal(small.n_got, 16);
    assert_int_equal(full.n_got, n_full);
    assert_memory_equal(small.got, small.solo, 16 * sizeof(int32_t));
    assert_memory_equal(full.got, full.solo, (size_t)n_full * sizeof(int32_t));
    qv_engine_get_stats(e, &st);
    assert_int_equal(st.kv_free_pages, n_pages);
    printf("limits: a %d-token request filling all %d pages ran beside another (%llu "
           "preemptions)\n",
           5 + 8 + n_full, n_pages, (unsigned long long)st.preemptions);
    qv_engine_destroy(e);
    fixture_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preemption_matches_solo),
        cmocka_unit_test(test_cancel_preempted),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
