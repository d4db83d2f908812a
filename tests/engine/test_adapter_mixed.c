/*
 * test_adapter_mixed.c - adapters do not break batch invariance.
 *
 * Forward level: for each base (tiny-llama-gqa with its 18 fixture adapters of every kind, and
 * tiny-llama with adaption prompt / embed+lm_head LoRA / prefix), 2 sequences per adapter plus
 * base-only ones (>= 24 sequences in all, >= 12 distinct adapters on the gqa base, ranks 1..16,
 * LoRA weights in F32, F16 and BF16)
 * with random prompts of 3..24 tokens and varied streams are run
 * (a) one at a time, the whole stream in one batch on 1 thread, and
 * (b) all together on 2 threads: every step takes a random chunk (1..6 tokens) of every
 *     unfinished sequence in a shuffled order, up to a 96-token step budget, and
 *     qv_adapter_group_batch groups the tokens by adapter (segments, chunked prefill and
 *     decode-sized chunks mix).
 * Logits at every position must agree within 1e-5 relative (the kernels make them bitwise
 * equal; the maximum difference is printed).
 * Shared prefix pages: same logits as an unshared copy, pages refcounted and returned.
 * Engine level: qv_engine generates greedily for 14 requests on 6 adapters + base at once; each
 * request's tokens equal those of the same request run alone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "adapters/adapters.h"
#include "engine/adapter_apply.h"
#include "engine/engine.h"
#include "golden_util.h"
#include "test_util.h"

#define MAX_SEQ 48
#define MAX_STREAM 40
#define TOL 1e-5

static uint32_t rng = 424242;
static uint32_t next_rand(void) {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

typedef struct mseq {
    const qv_adapter *ad;
    int32_t stream[MAX_STREAM]; /* virtual ids (-1-k) then real tokens */
    int n;                      /* entries of stream */
    int pos0;                   /* position of stream[0] (n_virtual for prefix, else 0) */
    int done;
    qv_kv_seq kv;
    float *solo; /* (n, V) */
} mseq;

static qv_adapter *load_ad(const qv_model *m, const char *rel) {
    char path[512];
    snprintf(path, sizeof(path), "tests/fixtures/adapters/%s", rel);
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path(path), m, NULL, &ad, &err) != QV_OK)
        fail_msg("load %s: %s", rel, err.msg);
    return ad;
}

static void begin_seq(golden_runner *r, mseq *s) {
    memset(&s->kv, 0, sizeof(s->kv));
    s->done = 0;
    if (s->ad && s->ad->kind == QV_ADAPTER_PREFIX_TUNING) {
        qv_error err = {0};
        assert_int_equal(qv_kv_seq_reserve(r->kv, &s->kv, s->ad->n_virtual), QV_OK);
        assert_int_equal(qv_adapter_prefix_store(r->be, r->kv, &s->kv, s->ad, &err), QV_OK);
    }
}

typedef struct step_ctx {
    const qv_adapter *seq_ad[MAX_SEQ];
} step_ctx;

static const qv_adapter *ad_of(void *ctx, int s, int32_t pos) {
    (void)pos;
    return ((step_ctx *)ctx)->seq_ad[s];
}

/* Runs one batch made of chunks[i] entries of sequence ids[i] (i < n_in), grouped by adapter;
 * logits of every token go back to each sequence's row in `out` ((n, V) per sequence). */
static void run_step(golden_runner *r, mseq *seqs, const int *ids, const int *chunks, int n_in,
                     float **out) {
    static int32_t tok[512], pos[512], sq[512], li[512];
    static float logits[512 * 300];
    const qv_kv_seq *kvs[MAX_SEQ];
    step_ctx ctx;
    int n = 0;
    for (int i = 0; i < n_in; i++) {
        mseq *s = &seqs[ids[i]];
        assert_int_equal(qv_kv_seq_reserve(r->kv, &s->kv, s->pos0 + s->done + chunks[i]), QV_OK);
        kvs[i] = &s->kv;
        ctx.seq_ad[i] = s->ad;
        for (int k = 0; k < chunks[i]; k++) {
            tok[n] = s->stream[s->done + k];
            pos[n] = s->pos0 + s->done + k;
            sq[n] = i;
            li[n] = n;
            n++;
        }
    }
    assert_true(n <= 128);
    qv_batch b = {.n_tokens = n,
                  .tokens = tok,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = n_in,
                  .seqs = kvs,
                  .n_logits = n,
                  .logits_idx = li};
    qv_adapter_grouper *g = NULL;
    qv_error err = {0};
    assert_int_equal(qv_adapter_group_batch(&g, &b, tok, pos, sq, li, ad_of, &ctx, &err), QV_OK);
    /* grouping: segments cover the batch and each holds one adapter */
    if (b.n_segs) {
        assert_int_equal(b.seg_start[0], 0);
        assert_int_equal(b.seg_start[b.n_segs], n);
        for (int s = 0; s < b.n_segs; s++)
            for (int t = b.seg_start[s]; t < b.seg_start[s + 1]; t++)
                assert_ptr_equal(ctx.seq_ad[sq[t]], b.seg_adapter[s]);
    }
    if (qv_forward_run(r->fwd, &b, logits, &err) != QV_OK) fail_msg("forward: %s", err.msg);
    const int V = r->m->cfg.n_vocab;
    /* logits row i belongs to the token now at li[i] (logits_idx keeps its order) */
    for (int i = 0; i < n; i++) {
        int t = li[i];
        mseq *s = &seqs[ids[sq[t]]];
        int idx = pos[t] - s->pos0;
        memcpy(out[ids[sq[t]]] + (size_t)idx * V, logits + (size_t)i * V, sizeof(float) * V);
    }
    for (int i = 0; i < n_in; i++)
        seqs[ids[i]].done += chunks[i];
    qv_adapter_grouper_free(g);
}

static void mixed_case(const char *model_rel, const char *const *ad_names, int n_ad, int n_seqs) {
    golden_runner solo, mix;
    char path[512];
    snprintf(path, sizeof(path), "tests/fixtures/models/%s", model_rel);
    assert_int_equal(golden_open(&solo, qv_test_path(path), 1, 1024, 4, 128), 0);
    assert_int_equal(golden_open(&mix, qv_test_path(path), 2, 1024, 4, 128), 0);
    const int V = solo.m->cfg.n_vocab;
    qv_adapter *ads[32];
    for (int i = 0; i < n_ad; i++)
        ads[i] = load_ad(solo.m, ad_names[i]);
    static mseq seqs[MAX_SEQ];
    float *got[MAX_SEQ];
    assert_true(n_seqs <= MAX_SEQ);
    for (int i = 0; i < n_seqs; i++) {
        mseq *s = &seqs[i];
        memset(s, 0, sizeof(*s));
        int a = i % (n_ad + 1); /* n_ad == base only */
        s->ad = a < n_ad ? ads[a] : NULL;
        int nvt = qv_adapter_n_prefix_positions(s->ad);
        bool prefix = s->ad && s->ad->kind == QV_ADAPTER_PREFIX_TUNING;
        int n_pre = prefix ? 0 : nvt;
        s->pos0 = prefix ? nvt : 0;
        for (int k = 0; k < n_pre; k++)
            s->stream[k] = -1 - k;
        s->n = n_pre + 3 + (int)(next_rand() % 22);
        assert_true(s->n <= MAX_STREAM);
        for (int k = n_pre; k < s->n; k++)
            s->stream[k] = (int32_t)(next_rand() % (uint32_t)V);
        s->solo = malloc(sizeof(float) * (size_t)V * MAX_STREAM);
        got[i] = malloc(sizeof(float) * (size_t)V * MAX_STREAM);
        /* (a) alone, the whole stream in one batch */
        begin_seq(&solo, s);
        int id = i, ch = s->n;
        float *outs[MAX_SEQ];
        outs[i] = s->solo;
        run_step(&solo, seqs, &id, &ch, 1, outs);
        qv_kv_seq_release(solo.kv, &s->kv);
    }
    /* (b) everything together, random chunks, shuffled order */
    for (int i = 0; i < n_seqs; i++)
        begin_seq(&mix, &seqs[i]);
    int n_steps = 0;
    for (;;) {
        int ids[MAX_SEQ], chunks[MAX_SEQ], n_in = 0;
        for (int i = 0; i < n_seqs; i++) {
            mseq *s = &seqs[i];
            if (s->done == s->n) continue;
            ids[n_in] = i;
            chunks[n_in] = QV_MIN(s->n - s->done, 1 + (int)(next_rand() % 6));
            n_in++;
        }
        if (!n_in) break;
        for (int i = n_in - 1; i > 0; i--) { /* shuffle */
            int j = (int)(next_rand() % (uint32_t)(i + 1));
            int t = ids[i], c = chunks[i];
            ids[i] = ids[j];
            chunks[i] = chunks[j];
            ids[j] = t;
            chunks[j] = c;
        }
        int budget = 96, kept = 0; /* a step budget: some sequences wait for the next step */
        for (int i = 0; i < n_in && chunks[i] <= budget; i++, kept++)
            budget -= chunks[i];
        run_step(&mix, seqs, ids, chunks, kept, got);
        n_steps++;
    }
    double worst = 0;
    for (int i = 0; i < n_seqs; i++) {
        mseq *s = &seqs[i];
        for (int t = 0; t < s->n; t++) {
            double e =
                qv_test_max_rel_err(got[i] + (size_t)t * V, s->solo + (size_t)t * V, (size_t)V);
            worst = fmax(worst, e);
            if (e > TOL) {
                char label[128];
                snprintf(label, sizeof(label), "%s seq %d (%s) pos %d", model_rel, i,
                         s->ad ? qv_adapter_kind_name(s->ad->kind) : "base", t);
                qv_test_compare_f32(label, got[i] + (size_t)t * V, s->solo + (size_t)t * V,
                                    (size_t)V, 0, TOL);
                fail_msg("%s: mixed batch differs from the solo run (%.3g)", label, e);
            }
        }
        qv_kv_seq_release(mix.kv, &s->kv);
        free(s->solo);
        free(got[i]);
    }
    printf("%s: %d sequences, %d adapters + base, %d mixed steps: max rel diff %.3g\n", model_rel,
           n_seqs, n_ad, n_steps, worst);
    for (int i = 0; i < n_ad; i++)
        qv_adapter_free(ads[i]);
    golden_close(&solo);
    golden_close(&mix);
}

static void test_mixed_forward(void **state) {
    (void)state;
    static const char *const gqa[] = {"tiny-llama-gqa/dora",
                                      "tiny-llama-gqa/double_seq_bn",
                                      "tiny-llama-gqa/ia3",
                                      "tiny-llama-gqa/lora_all_r8_f16",
                                      "tiny-llama-gqa/lora_all_r8_rslora",
                                      "tiny-llama-gqa/lora_bias",
                                      "tiny-llama-gqa/lora_embed_lm_head",
                                      "tiny-llama-gqa/lora_mts_lm_head",
                                      "tiny-llama-gqa/lora_patterns",
                                      "tiny-llama-gqa/lora_qv_r4",
                                      "tiny-llama-gqa/lora_r16_mlp_bf16",
                                      "tiny-llama-gqa/lora_r1_f16",
                                      "tiny-llama-gqa/par_bn",
                                      "tiny-llama-gqa/prefix_nvt5",
                                      "tiny-llama-gqa/prefix_nvt5_bf16",
                                      "tiny-llama-gqa/prompt_nvt4",
                                      "tiny-llama-gqa/ptuning_nvt3",
                                      "tiny-llama-gqa/seq_bn"};
    mixed_case("tiny-llama-gqa", gqa, (int)QV_ARRAY_LEN(gqa), 2 * ((int)QV_ARRAY_LEN(gqa) + 1));
    static const char *const tl[] = {"tiny-llama/adaption_prompt", "tiny-llama/lora_embed_lm_head",
                                     "tiny-llama/prefix_nvt5"};
    mixed_case("tiny-llama", tl, (int)QV_ARRAY_LEN(tl), 12);
}

/* ---- engine level ---- */

typedef struct gen_out {
    int32_t toks[16];
    int n;
    bool finished;
} gen_out;

static void on_token(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                     enum qv_finish_reason finish) {
    (void)seq_id;
    (void)lp;
    gen_out *o = user;
    o->toks[o->n++] = token;
    if (finish != QV_FINISH_NONE) o->finished = true;
}

static qv_engine *make_engine(void) {
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path("tests/fixtures/models/tiny-llama-gqa");
    c.load_tokenizer = false;
    c.n_threads = 2;
    c.kv_page_size = 4;
    c.max_batch_tokens = 32;
    c.kv_bytes = (size_t)8 << 20;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    return e;
}

static void run_all(qv_engine *e) {
    qv_error err = {0};
    for (int guard = 0; qv_engine_n_active(e) > 0; guard++) {
        assert_true(guard < 10000);
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
    }
}

static void test_mixed_engine(void **state) {
    (void)state;
    static const char *const names[] = {
        "tiny-llama-gqa/lora_all_r8_rslora", "tiny-llama-gqa/ia3",    "tiny-llama-gqa/prefix_nvt5",
        "tiny-llama-gqa/prompt_nvt4",        "tiny-llama-gqa/seq_bn", "tiny-llama-gqa/dora"};
    enum { N_AD = 6, N_REQ = 14 };
    qv_engine *e = make_engine();
    const qv_model *m = qv_engine_model(e);
    qv_adapter *ads[N_AD];
    for (int i = 0; i < N_AD; i++)
        ads[i] = load_ad(m, names[i]);
    int32_t prompts[N_REQ][20];
    int n_prompt[N_REQ];
    gen_out solo[N_REQ], mixed[N_REQ];
    qv_gen_params p[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        n_prompt[i] = 2 + (int)(next_rand() % 18);
        for (int k = 0; k < n_prompt[i]; k++)
            prompts[i][k] = (int32_t)(next_rand() % (uint32_t)m->cfg.n_vocab);
        qv_gen_params_default(&p[i]);
        p[i].sampling.temperature = 0.0f;
        p[i].max_tokens = 12;
        p[i].ignore_eos = true;
        p[i].adapter = i % (N_AD + 1) < N_AD ? ads[i % (N_AD + 1)] : NULL;
    }
    qv_error err = {0};
    memset(solo, 0, sizeof(solo));
    memset(mixed, 0, sizeof(mixed));
    for (int i = 0; i < N_REQ; i++) {
        if (qv_engine_add(e, prompts[i], (size_t)n_prompt[i], &p[i], on_token, &solo[i], NULL,
                          &err) != QV_OK)
            fail_msg("add: %s", err.msg);
        run_all(e);
        assert_true(solo[i].finished);
        assert_int_equal(solo[i].n, 12);
    }
    for (int i = 0; i < N_REQ; i++)
        if (qv_engine_add(e, prompts[i], (size_t)n_prompt[i], &p[i], on_token, &mixed[i], NULL,
                          &err) != QV_OK)
            fail_msg("add: %s", err.msg);
    run_all(e);
    int n_differ_from_base = 0;
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(mixed[i].n, 12);
        for (int k = 0; k < 12; k++)
            if (mixed[i].toks[k] != solo[i].toks[k])
                fail_msg("request %d (%s) token %d: %d mixed, %d alone", i,
                         p[i].adapter ? qv_adapter_kind_name(p[i].adapter->kind) : "base", k,
                         mixed[i].toks[k], solo[i].toks[k]);
    }
    /* the adapters matter: the same prompt on the base model gives other tokens */
    for (int i = 0; i < N_REQ; i++) {
        if (!p[i].adapter) continue;
        gen_out base = {0};
        qv_gen_params pb = p[i];
        pb.adapter = NULL;
        assert_int_equal(
            qv_engine_add(e, prompts[i], (size_t)n_prompt[i], &pb, on_token, &base, NULL, &err),
            QV_OK);
        run_all(e);
        n_differ_from_base += memcmp(base.toks, solo[i].toks, sizeof(base.toks)) != 0;
    }
    printf("engine: %d requests on %d adapters + base agree alone and mixed; %d of the adapted "
           "ones differ from the base\n",
           N_REQ, N_AD, n_differ_from_base);
    assert_true(n_differ_from_base >= N_REQ / 2);
    for (int i = 0; i < N_AD; i++)
        qv_adapter_free(ads[i]);
    qv_engine_destroy(e);
}

/* Shared prefix pages: two sequences of one prefix adapter share its full pages (refcounted),
 * own their partial last page, compute the same logits as an unshared copy, and every page is
 * back in the pool after release + detach. Page sizes 4 (nvt 5: 1 shared + 1 own page) and 5
 * (exactly 1 shared page). */
static void test_prefix_sharing(void **state) {
    (void)state;
    for (int ps = 4; ps <= 5; ps++) {
        golden_runner r;
        assert_int_equal(
            golden_open(&r, qv_test_path("tests/fixtures/models/tiny-llama-gqa"), 2, 64, ps, 32),
            0);
        qv_adapter *ad = load_ad(r.m, "tiny-llama-gqa/prefix_nvt5");
        const int nvt = ad->n_virtual, V = r.m->cfg.n_vocab, free0 = r.kv->n_free;
        qv_adapter_prefix_cache *pc = NULL;
        qv_error err = {0};
        qv_kv_seq a = {0}, b = {0}, c = {0};
        assert_int_equal(qv_adapter_prefix_attach(&pc, r.be, r.kv, &a, ad, &err), QV_OK);
        assert_int_equal(qv_adapter_prefix_attach(&pc, r.be, r.kv, &b, ad, &err), QV_OK);
        assert_int_equal(a.pages[0], b.pages[0]);
        assert_int_equal(r.kv->refcnt[a.pages[0]], 3); /* cache + 2 sequences */
        if (nvt % ps) assert_true(a.pages[1] != b.pages[1]);
        assert_int_equal(qv_kv_seq_reserve(r.kv, &c, nvt), QV_OK); /* unshared reference */
        assert_int_equal(qv_adapter_prefix_store(r.be, r.kv, &c, ad, &err), QV_OK);
        const int32_t ids[6] = {11, 40, 7, 99, 3, 250};
        float la[300], lb[300], lc[300];
        mseq sa = {.ad = ad, .n = 6, .pos0 = nvt}, sb = sa, sc = sa;
        memcpy(sa.stream, ids, sizeof(ids));
        memcpy(sb.stream, ids, sizeof(ids));
        memcpy(sc.stream, ids, sizeof(ids));
        sa.kv = a;
        sb.kv = b;
        sc.kv = c;
        mseq all[3] = {sa, sb, sc};
        float *outs[3] = {malloc(sizeof(float) * 6 * (size_t)V),
                          malloc(sizeof(float) * 6 * (size_t)V),
                          malloc(sizeof(float) * 6 * (size_t)V)};
        int idx[3] = {0, 1, 2}, ch[3] = {6, 6, 6};
        run_step(&r, all, idx, ch, 3, outs);
        memcpy(la, outs[0] + 5 * V, sizeof(float) * (size_t)V);
        memcpy(lb, outs[1] + 5 * V, sizeof(float) * (size_t)V);
        memcpy(lc, outs[2] + 5 * V, sizeof(float) * (size_t)V);
        assert_memory_equal(la, lc, sizeof(float) * (size_t)V);
        assert_memory_equal(lb, lc, sizeof(float) * (size_t)V);
        for (int i = 0; i < 3; i++) {
            qv_kv_seq_release(r.kv, &all[i].kv);
            free(outs[i]);
        }
        qv_adapter_prefix_detach(pc, r.kv, ad, 1);
        assert_true(r.kv->n_free < free0); /* one user left: the cache still holds the page */
        qv_adapter_prefix_detach(pc, r.kv, ad, 1);
        assert_int_equal(r.kv->n_free, free0);
        qv_adapter_prefix_cache_free(pc, r.kv);
        qv_adapter_free(ad);
        golden_close(&r);
    }
}

/* Malformed segments, stray virtual ids and adapters of another model are refused. */
static void test_refusals(void **state) {
    (void)state;
    golden_runner r;
    assert_int_equal(
        golden_open(&r, qv_test_path("tests/fixtures/models/tiny-llama-gqa"), 1, 64, 4, 16), 0);
    qv_adapter *lora = load_ad(r.m, "tiny-llama-gqa/lora_qv_r4");
    qv_adapter *prompt = load_ad(r.m, "tiny-llama-gqa/prompt_nvt4");
    qv_adapter *other = NULL; /* another model's adapter, loaded without a base */
    qv_error err = {0};
    assert_int_equal(qv_adapter_load(qv_test_path("tests/fixtures/adapters/tiny-llama/prefix_nvt5"),
                                     NULL, NULL, &other, &err),
                     QV_OK);
    qv_kv_seq seq = {0};
    assert_int_equal(qv_kv_seq_reserve(r.kv, &seq, 8), QV_OK);
    const qv_kv_seq *seqs[1] = {&seq};
    int32_t tok[4] = {5, 6, -1, 7}, pos[4] = {0, 1, 2, 3}, sq[4] = {0}, li[1] = {3};
    float logits[300];
    int32_t starts[3] = {0, 2, 4};
    const qv_adapter *ads[2] = {lora, prompt};
    qv_batch b = {.n_tokens = 4,
                  .tokens = tok,
                  .pos = pos,
                  .seq = sq,
                  .n_seqs = 1,
                  .seqs = seqs,
                  .n_logits = 1,
                  .logits_idx = li,
                  .n_segs = 2,
                  .seg_start = starts,
                  .seg_adapter = ads};
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_OK); /* -1 = prompt token 0 */
    ads[1] = lora; /* a LoRA segment has no virtual tokens */
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    printf("refused: %s\n", err.msg);
    ads[1] = prompt;
    tok[2] = -5; /* prompt_nvt4 has virtual tokens 0..3 */
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    tok[2] = 9;
    starts[2] = 3; /* segments must end at n_tokens */
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    starts[2] = 4;
    starts[1] = 5; /* out of order */
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    starts[1] = 2;
    ads[0] = other;
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    printf("refused: %s\n", err.msg);
    b.n_segs = 0; /* no segments: negative ids are invalid */
    tok[2] = -1;
    assert_int_equal(qv_forward_run(r.fwd, &b, logits, &err), QV_ERR_INVALID);
    qv_kv_seq_release(r.kv, &seq);
    golden_close(&r);

    qv_engine *e = make_engine();
    qv_gen_params p;
    qv_gen_params_default(&p);
    p.adapter = other;
    int32_t prompt_ids[2] = {1, 2};
    assert_int_equal(qv_engine_add(e, prompt_ids, 2, &p, NULL, NULL, NULL, &err), QV_ERR_INVALID);
    printf("refused: %s\n", err.msg);
    qv_engine_destroy(e);
    qv_adapter_free(lora);
    qv_adapter_free(prompt);
    qv_adapter_free(other);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_forward), cmocka_unit_test(test_mixed_engine),
        cmocka_unit_test(test_prefix_sharing), cmocka_unit_test(test_refusals)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
