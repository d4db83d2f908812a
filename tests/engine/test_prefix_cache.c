/*
 * test_prefix_cache.c - the engine's prefix cache end to end on tiny models: a request whose
 * prompt starts with full KV pages computed earlier (same adapter version) adopts them instead
 * of computing them, and its tokens and log-probabilities are exactly those of an engine without
 * the cache (the CPU forward pass is bitwise batch- and chunk-invariant) and HF's greedy tokens
 * (tests/fixtures/golden, tests/fixtures/adapter_golden, from tests/oracle/gen_golden.py).
 * Covered: repeats and shared prefixes, adapters as namespaces (another adapter or a reload of
 * the same directory never matches; prompt tuning's virtual tokens do; prefix tuning never
 * adopts), prompt-logprob requests (rows are computed, not adopted), eviction under a small
 * cache, and the reset.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/engine.h"
#include "golden_util.h"
#include "test_util.h"

#define N_GEN 32
#define PAGE 4

typedef struct run_out {
    qv_engine *e;
    int seq_id;
    int32_t toks[N_GEN];
    qv_logprobs lp[N_GEN];
    int n;
    int cached; /* qv_engine_seq_cached_tokens at the first token */
    int n_plp;  /* prompt-logprob rows reported */
} run_out;

static void on_tok(void *user, int seq_id, int32_t tok, const qv_logprobs *lp,
                   enum qv_finish_reason fin) {
    (void)fin;
    run_out *o = user;
    assert_int_equal(seq_id, o->seq_id);
    if (o->n == 0) o->cached = qv_engine_seq_cached_tokens(o->e, seq_id);
    assert_true(o->n < N_GEN);
    o->lp[o->n] = *lp;
    o->toks[o->n++] = tok;
}

static void on_plp(void *user, int seq_id, int index, const qv_logprobs *lp, int rank) {
    (void)rank;
    (void)lp;
    run_out *o = user;
    assert_int_equal(seq_id, o->seq_id);
    assert_int_equal(index, o->n_plp + 1);
    o->n_plp++;
}

static qv_engine *open_engine(const char *model_rel, size_t kv_bytes, bool cache) {
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path(model_rel);
    c.load_tokenizer = false;
    c.max_batch_tokens = 8; /* prompts are prefilled in several chunks */
    c.kv_bytes = kv_bytes;
    c.kv_page_size = PAGE;
    c.n_threads = 2;
    c.no_prefix_cache = !cache;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    return e;
}

/* Adds one greedy request (N_GEN tokens, 3 logprobs) to e. */
static void start(qv_engine *e, const int32_t *ids, int n_ids, const qv_adapter *ad, bool plp,
                  run_out *o) {
    memset(o, 0, sizeof(*o));
    o->e = e;
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = N_GEN;
    gp.ignore_eos = true;
    gp.sampling.temperature = 0;
    gp.sampling.n_logprobs = 3;
    gp.adapter = ad;
    if (plp) gp.prompt_lp_cb = on_plp;
    qv_error err = {0};
    if (qv_engine_add(e, ids, (size_t)n_ids, &gp, on_tok, o, &o->seq_id, &err) != QV_OK)
        fail_msg("add: %s", err.msg);
}

/* Steps e until every sequence finished. */
static void finish(qv_engine *e) {
    qv_error err = {0};
    for (int steps = 0; qv_engine_n_active(e) > 0; steps++) {
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
        assert_true(steps < 10000);
    }
}

/* Runs one greedy request alone to completion. */
static void run(qv_engine *e, const int32_t *ids, int n_ids, const qv_adapter *ad, bool plp,
                run_out *o) {
    start(e, ids, n_ids, ad, plp, o);
    finish(e);
    assert_int_equal(o->n, N_GEN);
}

/* Same tokens and bitwise the same log-probabilities. */
static void assert_same(const run_out *a, const run_out *b, const char *what) {
    for (int i = 0; i < N_GEN; i++) {
        if (a->toks[i] != b->toks[i])
            fail_msg("%s: token %d: %d vs %d", what, i, a->toks[i], b->toks[i]);
        if (memcmp(&a->lp[i].logprob, &b->lp[i].logprob, sizeof(float)) != 0 ||
            a->lp[i].n_top != b->lp[i].n_top ||
            memcmp(a->lp[i].top_logprobs, b->lp[i].top_logprobs,
                   (size_t)a->lp[i].n_top * sizeof(float)) != 0)
            fail_msg("%s: logprobs of token %d differ (%.9g vs %.9g)", what, i,
                     (double)a->lp[i].logprob, (double)b->lp[i].logprob);
    }
}

/* HF's greedy tokens up to the first genuine near-tie. */
static void assert_hf(const run_out *o, const cJSON *prompt, const char *what) {
    int n_g;
    int32_t *greedy = json_i32_array(cJSON_GetObjectItem(prompt, "greedy"), &n_g);
    const cJSON *gaps = cJSON_GetObjectItem(prompt, "top2_gap");
    for (int s = 0; s < N_GEN && s < n_g; s++) {
        if (o->toks[s] == greedy[s]) continue;
        if (cJSON_GetArrayItem(gaps, s)->valuedouble > 1e-3)
            fail_msg("%s step %d: %d vs HF %d", what, s, o->toks[s], greedy[s]);
        break;
    }
    free(greedy);
}

static cJSON *load_json(const char *rel) {
    cJSON *root = json_read_fixture(rel);
    assert_non_null(root);
    return root;
}

static qv_adapter *load_adapter(qv_engine *e, const char *golden_rel, cJSON **root) {
    *root = load_json(golden_rel);
    char rel[512];
    snprintf(rel, sizeof(rel), "tests/fixtures/%s",
             cJSON_GetObjectItem(*root, "adapter")->valuestring);
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path(rel), qv_engine_model(e), NULL, &ad, &err) != QV_OK)
        fail_msg("load %s: %s", rel, err.msg);
    assert_true(ad->uid != 0);
    return ad;
}

static const cJSON *prompt_at(const cJSON *golden, int k) {
    return cJSON_GetArrayItem(cJSON_GetObjectItem(golden, "prompts"), k);
}

static int32_t *ids_of(const cJSON *prompt, int *n) {
    return json_i32_array(cJSON_GetObjectItem(prompt, "ids"), n);
}

static int full_pages_below(int n_tokens) { return (n_tokens - 1) / PAGE * PAGE; }

/* Base model: a repeat adopts every full page but the one holding the last prompt token; a
 * prompt sharing a prefix adopts the shared full pages; outputs equal the uncached engine's. */
static void test_base_repeat_and_shared_prefix(void **state) {
    (void)state;
    cJSON *g = load_json("tests/fixtures/golden/tiny-llama-gqa.json");
    qv_engine *e = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, true);
    qv_engine *ref = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, false);
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(g, "prompts")) {
        int n;
        int32_t *ids = ids_of(p, &n);
        run_out a, b, r;
        run(ref, ids, n, NULL, false, &r);
        assert_int_equal(r.cached, 0);
        run(e, ids, n, NULL, false, &a);
        run(e, ids, n, NULL, false, &b);
        assert_hf(&r, p, "uncached");
        assert_same(&r, &a, "first run");
        assert_same(&r, &b, "repeat");
        /* the first run's generated tokens are cached too, but the repeat only shares the
         * prompt: its last token's page is computed */
        assert_int_equal(b.cached, full_pages_below(n));
        printf("prompt of %d tokens: repeat took %d from the cache\n", n, b.cached);
        free(ids);
    }
    /* the 19-token prompt's first 9 tokens, then other tokens: the 2 full pages are shared */
    int n;
    int32_t *ids = ids_of(prompt_at(g, 2), &n);
    assert_int_equal(n, 19);
    int32_t mixed[14];
    memcpy(mixed, ids, 9 * sizeof(int32_t));
    for (int i = 9; i < 14; i++)
        mixed[i] = (ids[i] + 17) % 288;
    run_out a, r;
    run(e, mixed, 14, NULL, false, &a);
    run(ref, mixed, 14, NULL, false, &r);
    assert_int_equal(a.cached, 8);
    assert_same(&r, &a, "shared prefix");
    /* a different first token shares nothing */
    mixed[0] = (mixed[0] + 1) % 288;
    run(e, mixed, 14, NULL, false, &a);
    assert_int_equal(a.cached, 0);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    assert_true(st.prefix_hit_tokens > 0 && st.prefix_hit_tokens < st.prefix_query_tokens);
    assert_true(st.kv_cached_pages > 0);
    assert_int_equal(st.kv_cached_pages, st.kv_evictable_pages); /* nothing runs */
    assert_int_equal(st.kv_free_pages, qv_engine_kv_pages(e));
    /* the reset frees every cached page; nothing matches afterwards */
    assert_int_equal(qv_engine_prefix_cache_reset(e), st.kv_evictable_pages);
    qv_engine_get_stats(e, &st);
    assert_int_equal(st.kv_cached_pages, 0);
    run(e, ids, n, NULL, false, &a);
    assert_int_equal(a.cached, 0);
    free(ids);
    qv_engine_destroy(e);
    qv_engine_destroy(ref);
    cJSON_Delete(g);
}

/* Adapters: each loaded version is its own namespace. */
static void test_adapter_namespaces(void **state) {
    (void)state;
    qv_engine *e = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, true);
    qv_engine *ref = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, false);
    cJSON *gl, *gl2, *gp, *gx;
    qv_adapter *lora =
        load_adapter(e, "tests/fixtures/adapter_golden/tiny-llama-gqa__lora_qv_r4.json", &gl);
    qv_adapter *lora_again =
        load_adapter(e, "tests/fixtures/adapter_golden/tiny-llama-gqa__lora_qv_r4.json", &gl2);
    qv_adapter *prompt =
        load_adapter(e, "tests/fixtures/adapter_golden/tiny-llama-gqa__prompt_nvt4.json", &gp);
    qv_adapter *prefix =
        load_adapter(e, "tests/fixtures/adapter_golden/tiny-llama-gqa__prefix_nvt5.json", &gx);
    assert_true(lora->uid != lora_again->uid);
    const cJSON *p1 = prompt_at(gl, 1);
    int n;
    int32_t *ids = ids_of(p1, &n);
    assert_int_equal(n, 13);
    run_out a, b, r;

    run(e, ids, n, NULL, false, &a); /* base pages of this prompt are cached now */
    run(e, ids, n, lora, false, &a);
    assert_int_equal(a.cached, 0); /* base K/V are not the adapter's */
    run(e, ids, n, lora, false, &b);
    assert_int_equal(b.cached, 12);
    run(ref, ids, n, lora, false, &r);
    assert_hf(&r, p1, "lora uncached");
    assert_same(&r, &a, "lora first run");
    assert_same(&r, &b, "lora repeat");
    /* the same directory loaded again (a reload) is a new version: no stale K/V */
    run(e, ids, n, lora_again, false, &b);
    assert_int_equal(b.cached, 0);
    assert_same(&r, &b, "reloaded lora");

    /* prompt tuning: the 4 virtual positions lead; they are part of the cached prefix (not
     * counted as prompt tokens) */
    const cJSON *pp = prompt_at(gp, 1);
    int np;
    int32_t *pids = ids_of(pp, &np);
    run(e, pids, np, prompt, false, &a);
    run(e, pids, np, prompt, false, &b);
    assert_int_equal(b.cached, full_pages_below(4 + np) - 4);
    run(ref, pids, np, prompt, false, &r);
    assert_hf(&r, pp, "prompt tuning uncached");
    assert_same(&r, &b, "prompt tuning repeat");

    /* prefix tuning's positions come from its attached pages: never adopted */
    const cJSON *px = prompt_at(gx, 1);
    int nx;
    int32_t *xids = ids_of(px, &nx);
    run(e, xids, nx, prefix, false, &a);
    run(e, xids, nx, prefix, false, &b);
    assert_int_equal(b.cached, 0);
    run(ref, xids, nx, prefix, false, &r);
    assert_same(&r, &b, "prefix tuning");

    /* prompt logprobs: every row is computed, so nothing is adopted */
    run(e, ids, n, lora, true, &a);
    assert_int_equal(a.cached, 0);
    assert_int_equal(a.n_plp, n - 1);
    run(ref, ids, n, lora, false, &r);
    assert_same(&r, &a, "lora with prompt logprobs");

    free(ids);
    free(pids);
    free(xids);
    qv_engine_destroy(e);
    qv_engine_destroy(ref);
    qv_adapter_free(lora);
    qv_adapter_free(lora_again);
    qv_adapter_free(prompt);
    qv_adapter_free(prefix);
    cJSON_Delete(gl);
    cJSON_Delete(gl2);
    cJSON_Delete(gp);
    cJSON_Delete(gx);
}

/* A cache of a few pages: admissions evict the least recently released pages, outputs stay
 * exact, and concurrent sequences sharing a prefix each finish. */
static void test_eviction_small_cache(void **state) {
    (void)state;
    cJSON *g = load_json("tests/fixtures/golden/tiny-llama-gqa.json");
    int n;
    int32_t *ids = ids_of(prompt_at(g, 2), &n);
    qv_engine *ref = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, false);
    run_out r[4], a;
    int32_t variants[4][19];
    for (int v = 0; v < 4; v++) {
        memcpy(variants[v], ids, sizeof(variants[v]));
        variants[v][0] = (ids[0] + 31 * v) % 288;
        run(ref, variants[v], n, NULL, false, &r[v]);
    }
    /* 19 + 32 tokens take 13 pages; the cache has 20 */
    const qv_model_config *mc = &qv_engine_model(ref)->cfg;
    const size_t page_bytes =
        (size_t)mc->n_layers * 2 * (size_t)mc->n_kv_heads * (size_t)mc->head_dim * 4 * PAGE;
    qv_engine *e = open_engine("tests/fixtures/models/tiny-llama-gqa", 20 * page_bytes, true);
    assert_int_equal(qv_engine_kv_pages(e), 20);
    for (int round = 0; round < 2; round++)
        for (int v = 0; v < 4; v++) {
            run(e, variants[v], n, NULL, false, &a);
            assert_same(&r[v], &a, "small cache");
            /* 13 pages per run in a 20-page cache: the previous variant's pages are partly
             * evicted, never the ones just used */
            assert_int_equal(a.cached, 0);
            run(e, variants[v], n, NULL, false, &a);
            assert_int_equal(a.cached, full_pages_below(n));
            assert_same(&r[v], &a, "small cache repeat");
        }
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    assert_true(st.prefix_evictions > 0);
    assert_int_equal(st.kv_free_pages, qv_engine_kv_pages(e));
    printf("20-page cache: %llu evictions, %llu of %llu prompt tokens from the cache\n",
           (unsigned long long)st.prefix_evictions, (unsigned long long)st.prefix_hit_tokens,
           (unsigned long long)st.prefix_query_tokens);

    /* three sequences with the same prompt at once (none cached) in a cache too small for
     * them: preempted ones adopt their own registered pages at re-admission; all are exact */
    run_out m[3];
    qv_engine_prefix_cache_reset(e);
    const uint64_t pre0 = st.preemptions;
    for (int i = 0; i < 3; i++)
        start(e, variants[1], n, NULL, false, &m[i]);
    finish(e);
    for (int i = 0; i < 3; i++)
        assert_same(&r[1], &m[i], "concurrent");
    qv_engine_get_stats(e, &st);
    printf("3 at once: %llu preemptions, %llu tokens recomputed\n",
           (unsigned long long)(st.preemptions - pre0), (unsigned long long)st.recomputed_tokens);
    assert_true(st.preemptions > pre0);
    free(ids);
    qv_engine_destroy(e);
    qv_engine_destroy(ref);
    cJSON_Delete(g);
}

/* Three sequences with the same new prompt added at once: the first computes the shared pages
 * while the others wait for them (prefix_waits) and adopt them; a fourth with another prompt is
 * not held back. All answer exactly as alone without the cache. */
static void test_same_prefix_at_once(void **state) {
    (void)state;
    cJSON *g = load_json("tests/fixtures/golden/tiny-llama-gqa.json");
    int n;
    int32_t *ids = ids_of(prompt_at(g, 2), &n);
    int32_t other[19];
    for (int i = 0; i < 19; i++)
        other[i] = (ids[i] + 5) % 288;
    qv_engine *ref = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, false);
    qv_engine *e = open_engine("tests/fixtures/models/tiny-llama-gqa", 1 << 20, true);
    run_out r, r_other, m[4];
    run(ref, ids, n, NULL, false, &r);
    run(ref, other, n, NULL, false, &r_other);
    for (int i = 0; i < 4; i++)
        start(e, i == 2 ? other : ids, n, NULL, false, &m[i]);
    /* after the first step: the first and the other prompt run, the two repeats wait */
    qv_error err = {0};
    assert_int_equal(qv_engine_step(e, &err), QV_OK);
    static const enum qv_seq_state want[4] = {QV_SEQ_RUNNING, QV_SEQ_WAITING, QV_SEQ_RUNNING,
                                              QV_SEQ_WAITING};
    for (int i = 0; i < 4; i++)
        assert_int_equal(qv_engine_seq_state(e, m[i].seq_id), want[i]);
    finish(e);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    printf("4 at once: cached %d %d %d %d, %llu prefix waits\n", m[0].cached, m[1].cached,
           m[2].cached, m[3].cached, (unsigned long long)st.prefix_waits);
    assert_int_equal(m[0].cached, 0);
    assert_int_equal(m[1].cached, full_pages_below(n));
    assert_int_equal(m[3].cached, full_pages_below(n));
    assert_int_equal(m[2].cached, 0);
    assert_true(st.prefix_waits > 0);
    assert_same(&r, &m[0], "first of three");
    assert_same(&r, &m[1], "second of three");
    assert_same(&r, &m[3], "third of three");
    assert_same(&r_other, &m[2], "the other prompt");
    free(ids);
    qv_engine_destroy(e);
    qv_engine_destroy(ref);
    cJSON_Delete(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base_repeat_and_shared_prefix),
        cmocka_unit_test(test_adapter_namespaces),
        cmocka_unit_test(test_eviction_small_cache),
        cmocka_unit_test(test_same_prefix_at_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
