/*
 * test_cuda_engine_lora.c - LoRA requests through the engine on the CUDA backend (the path of
 * `quiver serve --device cuda`), against the same requests on the CPU engine:
 *   1. fourteen requests batched together (the base model, the five PEFT LoRA fixtures, the IA3,
 *      DoRA, prompt-tuning (4 virtual tokens), P-tuning (3) and prefix-tuning (5, K/V stored
 *      into shared device KV pages) fixtures and the three AdapterHub bottleneck fixtures
 *      (Pfeiffer, Houlsby, parallel) of tiny-llama-gqa), greedy, 24 tokens each; and on
 *      tiny-llama the PEFT adaption-prompt fixture next to its prefix fixture and the base: every
 * request's tokens equal the CPU engine's up to the first place where the CPU's top two tokens are
 * a near tie (logprob gap below NEAR_TIE, the bf16 weights' logit error on these random tiny
 * models) and the CUDA run took the runner-up; after such a place the sequences are different
 * texts;
 *   2. a device adapter pool of 1 MiB (16 pages of 64 KiB) and four random rank-64 LoRAs of
 *      7 pages each, with two base requests: the engine admits at most one of those adapters at a
 *      time (their pages may take half the pool), so no step runs out of pool room; every request
 *      completes and matches the CPU engine by the same rule;
 *   3. what the CUDA path lacks (lora_bias, modules_to_save) is refused by qv_engine_add with
 *      QV_ERR_UNSUPPORTED naming it (and by qv_engine_adapter_supported, the upload
 *      validator's check), and runs on the CPU engine.
 * Skips (77) without CUDA or a device, after the CPU halves.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdlib.h>

#include "adapters/adapters.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "gpu_util.h"
#include "test_util.h"

#define MODEL "tests/fixtures/models/tiny-llama-gqa"
#define AD_DIR "tests/fixtures/adapters/tiny-llama-gqa/"
#define MAX_REQ 15
#define TOKENS 24
#define NEAR_TIE 0.25f
#define MIN_STOP_ID 3

typedef struct run_out {
    int32_t toks[MAX_REQ][TOKENS];
    int32_t top2[MAX_REQ][TOKENS]; /* CPU run: runner-up token */
    float gap[MAX_REQ][TOKENS];    /* CPU run: logprob gap between the top two */
    int n[MAX_REQ];
    int ids[MAX_REQ];
    int n_req;
    int step;               /* current step number */
    int last_step[MAX_REQ]; /* step of the request's latest token */
    const qv_adapter *ad[MAX_REQ];
    const qv_adapter *big[4]; /* case 2: adapters counted per step */
    int max_big_per_step;
    int arrive[MAX_REQ];         /* step before which the request is added (0: at once) */
    float temp[MAX_REQ];         /* > 0: the request samples at this temperature (seed 7) */
    bool lp[MAX_REQ];            /* the request asks for 2 logprobs on every device */
    qv_token_bias bias[MAX_REQ]; /* logit_bias of one id when n_bias[i] */
    int n_bias[MAX_REQ];
    int min_tokens[MAX_REQ]; /* vLLM min_tokens, with MIN_STOP_ID as a stop token id (the EOS
                                ids end nothing here: ignore_eos) */
    int prompt_as[MAX_REQ];  /* k > 0: request i sends request k - 1's prompt (0: its own) */
    int spec;                /* > 0: speculative decoding with this many draft tokens */
    int steps;               /* engine steps the run took */
    qv_engine_stats stats;   /* the engine's, after the run */
} run_out;

static void on_tok(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                   enum qv_finish_reason finish) {
    (void)finish;
    run_out *o = user;
    for (int i = 0; i < o->n_req; i++)
        if (o->ids[i] == seq_id && o->n[i] < TOKENS) {
            if (lp && lp->n_top >= 2) {
                o->top2[i][o->n[i]] = lp->top_ids[1];
                o->gap[i][o->n[i]] = lp->top_logprobs[0] - lp->top_logprobs[1];
            }
            o->toks[i][o->n[i]++] = token;
            o->last_step[i] = o->step;
        }
}

static qv_engine *open_model_spec(const char *device, const char *model, int spec) {
    qv_engine_config c;
    qv_engine_config_default(&c);
    c.model_path = qv_test_path(model);
    c.load_tokenizer = false;
    c.n_threads = 2;
    c.kv_bytes = (size_t)4 << 20;
    c.kv_page_size = 4;
    c.max_batch_tokens = 32;
    c.device = device;
    c.spec_tokens = spec;
    c.spec_ngram_min = 1; /* short random prompts: any repeated token proposes */
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine on %s: %s", device, err.msg);
    return e;
}
static qv_engine *open_model(const char *device, const char *model) {
    return open_model_spec(device, model, 0);
}
static qv_engine *open_engine(const char *device) { return open_model(device, MODEL); }

/* Runs the n requests (request i: adapter ads[i], a prompt of 3 + 4i tokens) to completion. */
static void run_model(const char *device, const char *model, const qv_adapter *const *ads, int n,
                      run_out *o) {
    qv_engine *e = open_model_spec(device, model, o->spec);
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.sampling.temperature = 0;
    gp.max_tokens = TOKENS;
    gp.ignore_eos = true;
    o->n_req = n;
    o->step = 0;
    o->max_big_per_step = 0;
    qv_error err = {0};
    for (int i = 0; i < n; i++) {
        o->ad[i] = ads[i];
        o->n[i] = 0;
        o->last_step[i] = -1;
        o->ids[i] = -1;
    }
    int n_added = 0;
    for (int guard = 0; (n_added < n || qv_engine_n_active(e) > 0) && guard < 2000; guard++) {
        for (int i = 0; i < n; i++) {
            if (o->ids[i] >= 0 || o->arrive[i] > o->step) continue;
            int32_t ids[3 + 4 * MAX_REQ];
            const int pi = o->prompt_as[i] ? o->prompt_as[i] - 1 : i;
            const int len = 3 + 4 * pi;
            for (int t = 0; t < len; t++)
                ids[t] = (int32_t)((t * 31 + pi * 17 + 7) % 250);
            gp.adapter = ads[i];
            gp.sampling.temperature = o->temp[i];
            gp.sampling.seed = 7;
            gp.logit_bias = &o->bias[i];
            gp.n_logit_bias = o->n_bias[i];
            gp.min_tokens = o->min_tokens[i];
            static const int32_t min_stop[1] = {MIN_STOP_ID};
            gp.min_tokens_ids = min_stop;
            gp.n_min_tokens_ids = o->min_tokens[i] ? 1 : 0;
            /* the CPU run reports the top two (near ties); the CUDA run: the device's argmax */
            gp.sampling.n_logprobs = strcmp(device, "cpu") == 0 || o->lp[i] ? 2 : 0;
            if (qv_engine_add(e, ids, (size_t)len, &gp, on_tok, o, &o->ids[i], &err) != QV_OK)
                fail_msg("request %d on %s: %s", i, device, err.msg);
            n_added++;
        }
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step on %s: %s", device, err.msg);
        int big = 0; /* distinct big adapters that produced a token in this step */
        for (int b = 0; b < 4; b++) {
            bool ran = false;
            for (int i = 0; i < n && o->big[b]; i++)
                ran |= o->ad[i] == o->big[b] && o->last_step[i] == o->step;
            big += ran;
        }
        if (big > o->max_big_per_step) o->max_big_per_step = big;
        o->step++;
    }
    assert_int_equal(n_added, n);
    assert_int_equal(qv_engine_n_active(e), 0);
    o->steps = o->step;
    qv_engine_get_stats(e, &o->stats);
    qv_engine_destroy(e);
}
static void run_requests(const char *device, const qv_adapter *const *ads, int n, run_out *o) {
    run_model(device, MODEL, ads, n, o);
}

/* Every request of the CUDA run completed and equals the CPU run's tokens up to a near tie
 * (see the file comment) or to the end. */
static void compare(const char *what, const run_out *cpu, const run_out *cu) {
    int same_total = 0, ties = 0;
    for (int i = 0; i < cpu->n_req; i++) {
        assert_int_equal(cpu->n[i], TOKENS);
        assert_int_equal(cu->n[i], TOKENS);
        if (cpu->temp[i] > 0) continue; /* sampled: bf16 logits may draw other tokens */
        int same = 0;
        while (same < TOKENS && cu->toks[i][same] == cpu->toks[i][same])
            same++;
        same_total += same;
        if (same == TOKENS) continue;
        const bool tie = cu->toks[i][same] == cpu->top2[i][same] && cpu->gap[i][same] < NEAR_TIE;
        printf("%s: request %d parts from the cpu at token %d (%d vs %d, cpu runner-up %d, "
               "gap %.3g): %s\n",
               what, i, same, cu->toks[i][same], cpu->toks[i][same], cpu->top2[i][same],
               (double)cpu->gap[i][same], tie ? "a near tie" : "NOT a near tie");
        if (!tie) fail_msg("%s: request %d differs from the cpu engine", what, i);
        ties++;
    }
    printf("%s: %d of %d tokens identical to the cpu engine; %d request(s) part at a near tie\n",
           what, same_total, cpu->n_req * TOKENS, ties);
}

static qv_adapter *load_from(const qv_model *m, const char *ad_dir, const char *name) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s%s", ad_dir, name);
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path(dir), m, NULL, &ad, &err) != QV_OK)
        fail_msg("%s: %s", name, err.msg);
    return ad;
}
static qv_adapter *load_fixture(const qv_model *m, const char *name) {
    return load_from(m, AD_DIR, name);
}

/* lora_qv_r4 made an activated LoRA that request `pi`'s prompt invokes at position 4
 * (run_model's prompt tokens there: (t * 31 + pi * 17 + 7) % 250), so the engine runs that
 * sequence's first chunk as a segment without the adapter and one with it. */
static qv_adapter *load_alora(const qv_model *m, int pi) {
    char *cfg = NULL, *w = NULL;
    size_t cl = 0, wl = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(qv_test_path(AD_DIR "lora_qv_r4/adapter_config.json"), 1 << 20,
                                  &cfg, &cl, &err),
                     QV_OK);
    assert_int_equal(qv_read_file(qv_test_path(AD_DIR "lora_qv_r4/adapter_model.safetensors"),
                                  64 << 20, &w, &wl, &err),
                     QV_OK);
    char *with = malloc(cl + 96);
    assert_non_null(with);
    snprintf(with, cl + 96, "{\"alora_invocation_tokens\": [%d, %d], %s",
             (4 * 31 + pi * 17 + 7) % 250, (5 * 31 + pi * 17 + 7) % 250, strchr(cfg, '{') + 1);
    qv_adapter *ad = NULL;
    if (qv_adapter_load_buffer(with, strlen(with), w, wl, m, NULL, &ad, &err) != QV_OK)
        fail_msg("alora: %s", err.msg);
    assert_int_equal(ad->n_alora_tokens, 2);
    free(with);
    qv_free(cfg);
    qv_free(w);
    return ad;
}

static void test_engine_lora_mix(void **state) {
    (void)state;
    enum { N = 13 };
    static const char *names[N] = {"lora_qv_r4",    "lora_all_r8_rslora",
                                   "lora_patterns", "lora_r16_mlp_bf16",
                                   "lora_r1_f16",   "ia3",
                                   "dora",          "prompt_nvt4",
                                   "ptuning_nvt3",  "prefix_nvt5",
                                   "seq_bn",        "double_seq_bn",
                                   "par_bn"};
    qv_engine *probe = open_engine("cpu");
    const qv_adapter *ads[N + 2] = {NULL};
    qv_adapter *own[N];
    for (int a = 0; a < N; a++)
        ads[a + 1] = own[a] = load_fixture(qv_engine_model(probe), names[a]);
    qv_adapter *alora = load_alora(qv_engine_model(probe), N + 1);
    ads[N + 1] = alora;
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    run_requests("cpu", ads, N + 2, &cpu);
    gpu_require_device();
    run_requests("cuda", ads, N + 2, &cu);
    compare("base + 5 LoRAs + IA3 + DoRA + prompt + P-tuning + prefix + 3 bottlenecks + aLoRA on "
            "cuda",
            &cpu, &cu);
    for (int a = 0; a < N; a++)
        qv_adapter_free(own[a]);
    qv_adapter_free(alora);
    qv_engine_destroy(probe);
}

static void test_engine_adaption_prompt(void **state) {
    (void)state;
    const char *model = "tests/fixtures/models/tiny-llama";
    const char *dir = "tests/fixtures/adapters/tiny-llama/";
    qv_engine *probe = open_model("cpu", model);
    qv_adapter *ap = load_from(qv_engine_model(probe), dir, "adaption_prompt");
    qv_adapter *pre = load_from(qv_engine_model(probe), dir, "prefix_nvt5");
    const qv_adapter *ads[4] = {NULL, ap, pre, ap};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    run_model("cpu", model, ads, 4, &cpu);
    gpu_require_device();
    run_model("cuda", model, ads, 4, &cu);
    compare("tiny-llama: base + adaption prompt (x2) + prefix on cuda", &cpu, &cu);
    qv_adapter_free(ap);
    qv_adapter_free(pre);
    qv_engine_destroy(probe);
}

static void test_engine_small_pool(void **state) {
    (void)state;
    qv_engine *probe = open_engine("cpu");
    const qv_model *m = qv_engine_model(probe);
    const size_t n_vals = (size_t)1 << 16;
    float *vals = malloc(n_vals * sizeof(float));
    assert_non_null(vals);
    uint32_t rng = 99;
    for (size_t i = 0; i < n_vals; i++)
        vals[i] = 0.08f * gpu_randf(&rng);
    qv_adapter *big[4];
    const qv_adapter *ads[6] = {NULL};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    for (int a = 0; a < 4; a++) {
        big[a] = qv_test_make_lora(m, 64, 4.0f / 64.0f, vals, n_vals, 500u + 77u * (unsigned)a);
        ads[a + 1] = big[a]; /* requests 1..4; 0 and 5 run the base model */
        cpu.big[a] = cu.big[a] = big[a];
    }
    run_requests("cpu", ads, 6, &cpu);
    printf("cpu engine: up to %d of the big adapters in one step\n", cpu.max_big_per_step);
    assert_true(cpu.max_big_per_step > 1); /* the CPU has no pool: they run together */
    gpu_require_device();
    setenv("QV_CUDA_ADAPTER_POOL_MB", "1", 1);
    run_requests("cuda", ads, 6, &cu);
    unsetenv("QV_CUDA_ADAPTER_POOL_MB");
    printf("cuda engine, 1 MiB adapter pool: up to %d of the big adapters in one step\n",
           cu.max_big_per_step);
    assert_int_equal(cu.max_big_per_step, 1);
    compare("4 rank-64 LoRAs through a 1 MiB pool", &cpu, &cu);
    for (int a = 0; a < 4; a++)
        qv_test_free_lora(big[a]);
    free(vals);
    qv_engine_destroy(probe);
}

/* A CUDA engine config on MODEL without tokenizer (the tests change what they need). */
static void cuda_config(qv_engine_config *c) {
    qv_engine_config_default(c);
    c->model_path = qv_test_path(MODEL);
    c->load_tokenizer = false;
    c->max_batch_tokens = 32;
    c->device = "cuda";
}

/* Start-up graph warm-up: qv_engine_warmup records the base model's decode-step graphs for
 * every padding bucket of up to min(max_seqs, max_batch_tokens) sequences; three requests then
 * decode (3 sequences: bucket 4) replaying them from their first decode step, and give the tokens
 * of the same requests on an engine without warm-up, which records its own graphs only once a
 * shape comes back. The same graphs serve greedy requests (token picked on the device) and
 * sampling ones (whole logits rows copied after the graph), at temperature `temp`. */
static void warm_run(bool warm, float temp, int32_t toks[3][TOKENS], qv_engine_stats *st,
                     int *n_shapes) {
    qv_engine *e = open_engine("cuda");
    *n_shapes = 0;
    if (warm) {
        double secs = 0;
        qv_error err = {0};
        if (qv_engine_warmup(e, n_shapes, &secs, &err) != QV_OK) fail_msg("warmup: %s", err.msg);
        printf("warm-up: %d decode-step graphs recorded in %.3f s\n", *n_shapes, secs);
    }
    qv_engine_stats s0;
    qv_engine_get_stats(e, &s0);
    run_out o;
    memset(&o, 0, sizeof(o));
    o.n_req = 3;
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.sampling.temperature = temp;
    gp.sampling.seed = 11;
    gp.max_tokens = TOKENS;
    gp.ignore_eos = true;
    qv_error err = {0};
    for (int i = 0; i < 3; i++) {
        const int32_t prompt[4] = {(int32_t)(5 + i), 17, 29, (int32_t)(40 + 3 * i)};
        if (qv_engine_add(e, prompt, 4, &gp, on_tok, &o, &o.ids[i], &err) != QV_OK)
            fail_msg("add: %s", err.msg);
    }
    while (qv_engine_n_active(e) > 0)
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step: %s", err.msg);
    qv_engine_get_stats(e, st);
    st->graph_captures -= s0.graph_captures; /* the requests' own */
    st->graph_replays -= s0.graph_replays;
    st->graph_eager_steps -= s0.graph_eager_steps;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(o.n[i], TOKENS);
        memcpy(toks[i], o.toks[i], sizeof(o.toks[i]));
    }
    qv_engine_destroy(e);
}

static void test_engine_warmup(void **state) {
    (void)state;
    gpu_require_device();
    int32_t warm[3][TOKENS], cold[3][TOKENS];
    qv_engine_stats sw, sc;
    int shapes = 0, none = 0;
    warm_run(true, 0.0f, warm, &sw, &shapes);
    warm_run(false, 0.0f, cold, &sc, &none);
    printf("3 greedy requests of %d tokens: after the warm-up %llu graphs recorded, %llu "
           "replays, %llu eager steps; without it %llu recorded, %llu replays, %llu eager\n",
           TOKENS, (unsigned long long)sw.graph_captures, (unsigned long long)sw.graph_replays,
           (unsigned long long)sw.graph_eager_steps, (unsigned long long)sc.graph_captures,
           (unsigned long long)sc.graph_replays, (unsigned long long)sc.graph_eager_steps);
    /* buckets 1, 2, 4, 8, 16, 24, 32 (max_batch_tokens 32; one logits chunk each) */
    assert_int_equal(shapes, 7);
    assert_int_equal(sw.graph_mismatches, 0);
    assert_int_equal(sw.graph_captures, 0); /* every decode shape was recorded already */
    assert_true(sw.graph_replays >= TOKENS - 2);
    assert_true(sw.graph_replays > sc.graph_replays);
    assert_memory_equal(warm, cold, sizeof(warm));
    /* sampling requests (sampled on the device, rows never copied) replay the same graphs */
    warm_run(true, 0.8f, warm, &sw, &shapes);
    warm_run(false, 0.8f, cold, &sc, &none);
    printf("3 requests sampling at 0.8: after the warm-up %llu graphs recorded, %llu replays, "
           "%llu eager; %llu rows to the host\n",
           (unsigned long long)sw.graph_captures, (unsigned long long)sw.graph_replays,
           (unsigned long long)sw.graph_eager_steps, (unsigned long long)sw.logits_rows_host);
    assert_int_equal(sw.graph_mismatches, 0);
    assert_int_equal(sw.graph_captures, 0);
    assert_true(sw.graph_replays >= TOKENS - 2);
    assert_int_equal(sw.logits_rows_host, 0);
    assert_int_equal(sw.logits_rows_device, 3 * TOKENS);
    assert_memory_equal(warm, cold, sizeof(warm)); /* same seed, same logits, same draws */
}

/* The CUDA engine holds one KV page for graph padding rows: it reports the pages sequences can
 * use, refuses a request that needs more (QV_ERR_LIMIT), and completes one that needs them all. */
static void test_engine_kv_reserved(void **state) {
    (void)state;
    gpu_require_device();
    qv_engine_config c;
    cuda_config(&c);
    c.kv_page_size = 4;
    qv_engine *probe = NULL;
    qv_error err = {0};
    c.kv_bytes = (size_t)1 << 20;
    if (qv_engine_create(&c, &probe, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    /* K/V pages are bf16 on CUDA unless kv_f32: half the F32 bytes, twice the pages */
    assert_int_equal(qv_engine_kv_elem_bytes(probe), 2);
    const size_t page_bytes =
        qv_kv_bytes_per_token(&qv_engine_model(probe)->cfg) / 2 * (size_t)c.kv_page_size;
    const int pages_bf16 = qv_engine_kv_pages(probe);
    qv_engine_destroy(probe);
    c.kv_f32 = true;
    if (qv_engine_create(&c, &probe, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    assert_int_equal(qv_engine_kv_elem_bytes(probe), 4);
    const int pages_f32 = qv_engine_kv_pages(probe);
    qv_engine_destroy(probe);
    c.kv_f32 = false;
    printf("a 1 MiB KV budget on cuda: %d pages of bf16, %d of f32 (one held for padding)\n",
           pages_bf16 + 1, pages_f32 + 1);
    assert_int_equal(pages_bf16 + 1, 2 * (pages_f32 + 1));
    c.kv_bytes = 6 * page_bytes; /* 6 pages, one held for padding */
    qv_engine *e = NULL;
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    const int usable = qv_engine_kv_pages(e);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    printf("6-page KV cache on cuda: %d pages for sequences, %d free\n", usable, st.kv_free_pages);
    assert_int_equal(usable, 5);
    assert_int_equal(st.kv_free_pages, 5);
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.sampling.temperature = 0;
    gp.ignore_eos = true;
    const int32_t prompt[4] = {3, 1, 4, 1};
    run_out o;
    memset(&o, 0, sizeof(o));
    o.n_req = 1;
    gp.max_tokens = 5 * 4 - 4 + 1; /* one token more than 5 pages hold */
    assert_int_equal(qv_engine_add(e, prompt, 4, &gp, on_tok, &o, &o.ids[0], &err), QV_ERR_LIMIT);
    gp.max_tokens = 5 * 4 - 4; /* every usable page */
    assert_int_equal(qv_engine_add(e, prompt, 4, &gp, on_tok, &o, &o.ids[0], &err), QV_OK);
    for (int guard = 0; qv_engine_n_active(e) > 0 && guard < 200; guard++)
        assert_int_equal(qv_engine_step(e, &err), QV_OK);
    assert_int_equal(qv_engine_n_active(e), 0);
    assert_int_equal(o.n[0], QV_MIN(gp.max_tokens, TOKENS));
    qv_engine_destroy(e);
}

/* The device adapter pool is one allocation made when the engine is created (--adapter-pool-mb),
 * reported by the engine's stats before any request; a size the device does not have fails the
 * creation with QV_ERR_DEVICE_OOM. */
static void test_engine_pool_at_startup(void **state) {
    (void)state;
    gpu_require_device();
    qv_engine_config c;
    cuda_config(&c);
    c.kv_bytes = (size_t)1 << 20;
    c.max_batch_tokens = 16;
    c.adapter_pool_bytes = (size_t)3 << 20;
    qv_engine *e = NULL;
    qv_error err = {0};
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("engine: %s", err.msg);
    qv_engine_stats st;
    qv_engine_get_stats(e, &st);
    printf("cuda engine created with a %zu-byte adapter pool; %d adapters resident\n",
           st.dev_adapter_pool_bytes, st.dev_adapters_resident);
    assert_int_equal(st.dev_adapter_pool_bytes, (size_t)3 << 20);
    assert_int_equal(st.dev_adapters_resident, 0);
    assert_int_equal(st.dev_adapter_loads, 0);
    qv_engine_destroy(e);
    c.adapter_pool_bytes = (size_t)64 << 30; /* more than the device has */
    e = NULL;
    assert_int_equal(qv_engine_create(&c, &e, &err), QV_ERR_DEVICE_OOM);
    assert_null(e);
    printf("a 64 GiB pool: %s\n", err.msg);
    /* the CPU engine has no device pool */
    c.device = "cpu";
    if (qv_engine_create(&c, &e, &err) != QV_OK) fail_msg("cpu engine: %s", err.msg);
    qv_engine_get_stats(e, &st);
    assert_int_equal(st.dev_adapter_pool_bytes, 0);
    qv_engine_destroy(e);
}

/* Cold adapters arriving while others decode: requests 1 and 2 name adapters on neither the
 * device nor the pinned host tier and arrive at step 4, beside a LoRA request and a base one.
 * Their adapters are converted on the pool's converter thread (not in a step) and copied from
 * the tier; the engine admits them only once on the device, so no step waits for their
 * conversion. Checked: the only conversion a step made is request 0's (admitted with nothing
 * else running), the two others were converted in the background, every device load came
 * from a tier image, admissions were put off, and every request equals the CPU engine's. */
static void test_engine_cold_adapter(void **state) {
    (void)state;
    static const char *names[3] = {"lora_qv_r4", "lora_r16_mlp_bf16", "lora_all_r8_rslora"};
    qv_engine *probe = open_engine("cpu");
    qv_adapter *own[3];
    for (int a = 0; a < 3; a++)
        own[a] = load_fixture(qv_engine_model(probe), names[a]);
    const qv_adapter *ads[4] = {own[0], own[1], own[2], NULL};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    cpu.arrive[1] = cpu.arrive[2] = cu.arrive[1] = cu.arrive[2] = 4;
    run_requests("cpu", ads, 4, &cpu);
    gpu_require_device();
    run_requests("cuda", ads, 4, &cu);
    const qv_engine_stats *st = &cu.stats;
    printf("cold adapters on cuda: %llu admissions put off, host tier %zu MiB: %llu images "
           "converted in the background, %llu by a step, %llu device loads from it (%llu loads)\n",
           (unsigned long long)st->admit_deferrals, st->dev_adapter_pinned_bytes >> 20,
           (unsigned long long)st->dev_adapter_pinned_fills_async,
           (unsigned long long)st->dev_adapter_pinned_fills_sync,
           (unsigned long long)st->dev_adapter_pinned_hits,
           (unsigned long long)st->dev_adapter_loads);
    assert_true(st->dev_adapter_pinned_bytes > 0);
    /* three versions resident: their pages (what /metrics reports as tier="device" bytes) */
    assert_int_equal(st->dev_adapters_resident, 3);
    assert_true(st->dev_adapter_used_bytes > 0 &&
                st->dev_adapter_used_bytes <= st->dev_adapter_pool_bytes);
    assert_true(st->dev_adapter_pinned_used_bytes >= st->dev_adapter_used_bytes);
    assert_true(st->admit_deferrals >= 2);
    assert_int_equal(st->dev_adapter_pinned_fills_sync, 1);
    assert_int_equal(st->dev_adapter_pinned_fills_async, 2);
    assert_int_equal(st->dev_adapter_pinned_hits, 3);
    assert_int_equal(st->dev_adapter_loads, 3);
    assert_int_equal(cpu.stats.admit_deferrals, 0); /* the CPU has nothing to wait for */
    compare("cold adapters arriving at step 4 on cuda", &cpu, &cu);
    for (int a = 0; a < 3; a++)
        qv_adapter_free(own[a]);
    qv_engine_destroy(probe);
}

/* On the device, every request gets its token from the device (argmax, or the sampler's draw,
 * logprobs included: engine/cuda/sample.cu) and its logits row never reaches the host. Checked
 * by the engine's row counters and the tokens against the CPU engine. */
static void test_engine_device_sampling(void **state) {
    (void)state;
    qv_engine *probe = open_engine("cpu");
    qv_adapter *lo = load_fixture(qv_engine_model(probe), "lora_qv_r4");
    const qv_adapter *ads[4] = {NULL, lo, NULL, lo};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    cpu.lp[2] = cu.lp[2] = true;     /* greedy with logprobs: a device row */
    cpu.temp[3] = cu.temp[3] = 0.8f; /* sampled: a device row */
    run_requests("cpu", ads, 4, &cpu);
    assert_int_equal(cpu.stats.logits_rows_device, 0);
    gpu_require_device();
    run_requests("cuda", ads, 4, &cu);
    printf("cuda engine: %llu logits rows picked on the device, %llu copied to the host\n",
           (unsigned long long)cu.stats.logits_rows_device,
           (unsigned long long)cu.stats.logits_rows_host);
    assert_int_equal(cu.stats.logits_rows_device, 4 * TOKENS);
    assert_int_equal(cu.stats.logits_rows_host, 0);
    compare("device argmax, sampling and logprobs on cuda", &cpu, &cu);
    qv_adapter_free(lo);
    qv_engine_destroy(probe);
}

/* Speculative decoding by prompt lookup (4 draft tokens) on the CUDA engine: a drafting
 * sequence's rows are plain device argmaxes (greedy, no logprobs) or all come to the host in
 * order (logprobs, sampling), and its drafts run through the multi-token attention path. Greedy
 * requests (base, a LoRA, logprobs) give the CPU engine's tokens (by the near-tie rule) with
 * drafts kept; the sampled one gives the tokens it gives without drafts, in fewer steps
 * (emulator). */
static void test_engine_spec(void **state) {
    (void)state;
    qv_engine *probe = open_engine("cpu");
    qv_adapter *lo = load_fixture(qv_engine_model(probe), "lora_qv_r4");
    const qv_adapter *ads[5] = {NULL, lo, NULL, NULL, lo};
    static run_out cpu, cu, cu0;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    memset(&cu0, 0, sizeof(cu0));
    cu.lp[2] = cu0.lp[2] = true;                   /* logprobs: host rows while drafting */
    cpu.temp[3] = cu.temp[3] = cu0.temp[3] = 0.8f; /* sampled: host rows while drafting */
    run_requests("cpu", ads, 5, &cpu);
    gpu_require_device();
    run_requests("cuda", ads, 5, &cu0);
    cu.spec = 4;
    run_requests("cuda", ads, 5, &cu);
    printf("cuda engine with 4 draft tokens: %llu drafts, %llu kept, %d steps (%d without "
           "drafts); rows %llu on the device, %llu on the host\n",
           (unsigned long long)cu.stats.spec_draft_tokens,
           (unsigned long long)cu.stats.spec_accepted_tokens, cu.steps, cu0.steps,
           (unsigned long long)cu.stats.logits_rows_device,
           (unsigned long long)cu.stats.logits_rows_host);
    assert_int_equal(cu0.stats.spec_draft_tokens, 0);
    assert_true(cu.stats.spec_accepted_tokens > 0);
    assert_true(cu.stats.logits_rows_device > 0 && cu.stats.logits_rows_host > 0);
    compare("speculative decoding on cuda", &cpu, &cu);
    compare("cuda without drafts", &cpu, &cu0);
    int same = 0;
    while (same < TOKENS && cu.toks[3][same] == cu0.toks[3][same])
        same++;
    printf("sampled request: %d of %d tokens as without drafts\n", same, TOKENS);
#ifdef QV_CUDA_EMU
    assert_true(cu.steps < cu0.steps); /* kept drafts shortened the longest request */
    /* the emulator's logits do not depend on the batch's shape, so the sampled request draws
     * the same numbers over the same rows: its tokens are the same (a draft's row sampled on
     * the device would spend a draw even when the draft is dropped). On a GPU the drafts'
     * attention path can move a logit by bf16 rounding, so only the count is printed. */
    assert_int_equal(same, TOKENS);
#endif
    qv_adapter_free(lo);
    qv_engine_destroy(probe);
}

/* logit_bias and min_tokens rows are sampled on the host (their logits copied there), the
 * others on the device; a min_tokens row goes back to the device once the minimum is reached.
 * Tokens as the CPU engine's. */
static void test_engine_logit_edits(void **state) {
    (void)state;
    const qv_adapter *ads[3] = {NULL, NULL, NULL};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    cpu.bias[1] = cu.bias[1] = (qv_token_bias){5, 100.0f};
    cpu.n_bias[1] = cu.n_bias[1] = 1;
    cpu.min_tokens[2] = cu.min_tokens[2] = 10;
    run_requests("cpu", ads, 3, &cpu);
    for (int t = 0; t < TOKENS; t++)
        assert_int_equal(cpu.toks[1][t], 5); /* +100 decides every step */
    gpu_require_device();
    run_requests("cuda", ads, 3, &cu);
    printf("cuda engine with logit edits: %llu rows on the device, %llu on the host\n",
           (unsigned long long)cu.stats.logits_rows_device,
           (unsigned long long)cu.stats.logits_rows_host);
    assert_int_equal(cu.stats.logits_rows_host, TOKENS + 10);
    assert_int_equal(cu.stats.logits_rows_device, 2 * TOKENS - 10);
    compare("logit_bias and min_tokens on cuda", &cpu, &cu);
}

/* The prefix cache on the engine's CUDA path: requests arriving after others with the same
 * prompt and adapter (base, LoRA) adopt their cached full KV pages (all but the page of the last
 * prompt token: 12 of 15 tokens, 20 of 23) and answer as the CPU engine does. */
static void test_engine_prefix_cache(void **state) {
    (void)state;
    qv_engine *probe = open_engine("cpu");
    qv_adapter *lora = load_fixture(qv_engine_model(probe), "lora_qv_r4");
    const qv_adapter *ads[4] = {NULL, NULL, lora, lora};
    static run_out cpu, cu;
    memset(&cpu, 0, sizeof(cpu));
    memset(&cu, 0, sizeof(cu));
    static const int prompt_as[4] = {4, 4, 6, 6}; /* prompts of 15 and 23 tokens */
    for (int i = 0; i < 4; i++) {
        cpu.prompt_as[i] = cu.prompt_as[i] = prompt_as[i];
        cpu.arrive[i] = cu.arrive[i] = i % 2 ? 60 : 0; /* the repeats come after the first */
    }
    run_requests("cpu", ads, 4, &cpu);
    assert_int_equal(cpu.stats.prefix_hit_tokens, 12 + 20);
    for (int t = 0; t < TOKENS; t++) { /* on the CPU, bitwise the same answer */
        assert_int_equal(cpu.toks[1][t], cpu.toks[0][t]);
        assert_int_equal(cpu.toks[3][t], cpu.toks[2][t]);
    }
    gpu_require_device();
    run_requests("cuda", ads, 4, &cu);
    printf("cuda engine: %llu of %llu prompt tokens from the prefix cache\n",
           (unsigned long long)cu.stats.prefix_hit_tokens,
           (unsigned long long)cu.stats.prefix_query_tokens);
    assert_int_equal(cu.stats.prefix_hit_tokens, 12 + 20);
    compare("prefix cache on cuda", &cpu, &cu);
    qv_adapter_free(lora);
    qv_engine_destroy(probe);
}

typedef struct plp_out {
    float lp[64];
    int32_t tok[64];
    int n;
} plp_out;

static void on_plp(void *user, int seq_id, int index, const qv_logprobs *lp, int rank) {
    (void)rank;
    (void)seq_id;
    plp_out *o = user;
    assert_int_equal(index, o->n + 1);
    o->tok[o->n] = lp->token;
    o->lp[o->n++] = lp->logprob;
}

static void on_tok_ignore(void *user, int seq_id, int32_t token, const qv_logprobs *lp,
                          enum qv_finish_reason finish) {
    (void)user, (void)seq_id, (void)token, (void)lp, (void)finish;
}

static void run_plp(const char *device, const qv_adapter *ad, const int32_t *ids, int n, plp_out *o,
                    qv_engine_stats *stats) {
    qv_engine *e = open_engine(device);
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.max_tokens = 1;
    gp.sampling.temperature = 0;
    gp.sampling.n_logprobs = 1;
    gp.prompt_lp_cb = on_plp;
    gp.adapter = ad;
    memset(o, 0, sizeof(*o));
    qv_error err = {0};
    int id;
    if (qv_engine_add(e, ids, (size_t)n, &gp, on_tok_ignore, o, &id, &err) != QV_OK)
        fail_msg("%s: %s", device, err.msg);
    for (int guard = 0; qv_engine_n_active(e) > 0 && guard < 100; guard++)
        if (qv_engine_step(e, &err) != QV_OK) fail_msg("step on %s: %s", device, err.msg);
    qv_engine_get_stats(e, stats);
    qv_engine_destroy(e);
    assert_int_equal(o->n, n - 1);
}

/* Prompt logprobs (OpenAI echo + logprobs) on cuda: every prompt position's row reaches the
 * host (a 60-token prompt in steps of 32 tokens), with a LoRA, within the bf16 tolerance of
 * the CPU engine. */
static void test_engine_prompt_logprobs(void **state) {
    (void)state;
    qv_engine *probe = open_engine("cpu");
    qv_adapter *lo = load_fixture(qv_engine_model(probe), "lora_qv_r4");
    int32_t ids[60];
    for (int t = 0; t < 60; t++)
        ids[t] = (int32_t)((t * 37 + 11) % 250);
    static plp_out cpu, cu;
    qv_engine_stats st;
    run_plp("cpu", lo, ids, 60, &cpu, &st);
    gpu_require_device();
    run_plp("cuda", lo, ids, 60, &cu, &st);
    double worst = 0.0;
    for (int j = 0; j < 59; j++) {
        assert_int_equal(cu.tok[j], ids[j + 1]);
        worst = fmax(worst, fabs((double)cu.lp[j] - (double)cpu.lp[j]));
    }
    printf("cuda prompt logprobs: worst |cuda - cpu| %.3g over 59 positions; %llu rows on the "
           "host\n",
           worst, (unsigned long long)st.logits_rows_host);
    assert_true(worst <
                (double)NEAR_TIE); /* bf16 weights and activations: the tolerance of compare() */
    assert_int_equal(st.logits_rows_host, 59); /* the sampled token is picked on the device */
    qv_adapter_free(lo);
    qv_engine_destroy(probe);
}

static void test_engine_refuses_other_kinds(void **state) {
    (void)state;
    qv_engine *cpu = open_engine("cpu");
    static const char *names[2] = {"lora_bias", "lora_mts_lm_head"};
    static const char *want[2] = {"lora_bias", "modules_to_save"};
    qv_adapter *ads[2];
    for (int a = 0; a < 2; a++)
        ads[a] = load_fixture(qv_engine_model(cpu), names[a]);
    qv_gen_params gp;
    qv_gen_params_default(&gp);
    gp.sampling.temperature = 0;
    gp.max_tokens = 4;
    const int32_t prompt[3] = {5, 6, 7};
    run_out o;
    memset(&o, 0, sizeof(o));
    o.n_req = 1;
    qv_error err = {0};
    for (int a = 0; a < 2; a++) { /* the CPU runs them */
        assert_int_equal(qv_engine_adapter_supported(cpu, ads[a], &err), QV_OK);
        gp.adapter = ads[a];
        assert_int_equal(qv_engine_add(cpu, prompt, 3, &gp, on_tok, &o, &o.ids[0], &err), QV_OK);
        while (qv_engine_n_active(cpu) > 0)
            assert_int_equal(qv_engine_step(cpu, &err), QV_OK);
    }
    gpu_require_device();
    qv_engine *cu = open_engine("cuda");
    for (int a = 0; a < 2; a++) {
        /* the upload validator's check says the same, without device work */
        assert_int_equal(qv_engine_adapter_supported(cu, ads[a], &err), QV_ERR_UNSUPPORTED);
        assert_non_null(strstr(err.msg, want[a]));
        gp.adapter = ads[a];
        int id = -1;
        assert_int_equal(qv_engine_add(cu, prompt, 3, &gp, on_tok, &o, &id, &err),
                         QV_ERR_UNSUPPORTED);
        printf("%s on cuda: %s\n", names[a], err.msg);
        assert_non_null(strstr(err.msg, want[a]));
    }
    assert_int_equal(qv_engine_n_active(cu), 0);
    qv_adapter *bn = load_fixture(qv_engine_model(cpu), "seq_bn"); /* runs on both */
    assert_int_equal(qv_engine_adapter_supported(cu, bn, &err), QV_OK);
    qv_adapter_free(bn);
    qv_engine_destroy(cu);
    for (int a = 0; a < 2; a++)
        qv_adapter_free(ads[a]);
    qv_engine_destroy(cpu);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_lora_mix),
        cmocka_unit_test(test_engine_adaption_prompt),
        cmocka_unit_test(test_engine_small_pool),
        cmocka_unit_test(test_engine_refuses_other_kinds),
        cmocka_unit_test(test_engine_pool_at_startup),
        cmocka_unit_test(test_engine_warmup),
        cmocka_unit_test(test_engine_kv_reserved),
        cmocka_unit_test(test_engine_cold_adapter),
        cmocka_unit_test(test_engine_device_sampling),
        cmocka_unit_test(test_engine_logit_edits),
        cmocka_unit_test(test_engine_prompt_logprobs),
        cmocka_unit_test(test_engine_prefix_cache),
        cmocka_unit_test(test_engine_spec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
