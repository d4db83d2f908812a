/*
 * test_adapter_golden.c - adapters in the CPU forward pass against HF PEFT.
 *
 * For every JSON case in tests/fixtures/adapter_golden/ (written by tests/oracle/gen_adapters.py
 * from PEFT 0.21.2 on the fp32 base): load the base model and the adapter, run the prompt as one
 * segment carrying the adapter and check
 * - logits at every real prompt position within 1e-4 of PEFT, relative to the row's largest
 *   |logit| (prompt/P-tuning virtual tokens are fed as ids -1-k at positions 0..nvt-1; prefix
 *   K/V are stored at positions 0..nvt-1 first; real tokens start at position n_virtual);
 * - 32 teacher-forced greedy steps: argmax equals PEFT's greedy token (unless PEFT's own top-2
 *   gap is below 1e-4 of the row scale) and the step logits match within 1e-4;
 * - a chunked prefill (chunks of 3) gives the same last-position logits;
 * - an activated LoRA (aLoRA) acts from the last occurrence of its invocation tokens in the
 *   prompt on: earlier positions run as a segment without it (a prompt without them: never);
 * - a LoRA file stored in F16 or BF16 is held in that dtype (its kernels are what is tested);
 *   PEFT widens such adapters to fp32 on load, so the tolerance stays 1e-4 (observed ~2e-6).
 * Then the SmolLM2 Q4_1 cases (tests/fixtures/adapter_golden/smollm2/golden.json): last prompt
 * position logits and 32 greedy tokens (skipped when the model file is absent).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <math.h>

#include "adapters/adapters.h"
#include "engine/adapter_apply.h"
#include "golden_util.h"
#include "test_util.h"

#define REL_TOL 1e-4

/* Starts a sequence for adapter ad: prefix K/V stored, or the virtual tokens prepended to
 * `ids` (written to *all, n_all). Returns the position of the first real token. */
static int start_seq(golden_runner *r, qv_kv_seq *seq, const qv_adapter *ad, const int32_t *ids,
                     int n_ids, int32_t **all, int *n_all) {
    int nvt = qv_adapter_n_prefix_positions(ad);
    int n_pre = ad->kind == QV_ADAPTER_PREFIX_TUNING ? 0 : nvt;
    *n_all = n_pre + n_ids;
    *all = malloc(sizeof(int32_t) * (size_t)*n_all);
    for (int k = 0; k < n_pre; k++)
        (*all)[k] = -1 - k;
    memcpy(*all + n_pre, ids, sizeof(int32_t) * (size_t)n_ids);
    if (ad->kind == QV_ADAPTER_PREFIX_TUNING) {
        qv_error err = {0};
        assert_int_equal(qv_kv_seq_reserve(r->kv, seq, nvt), QV_OK);
        qv_status st = qv_adapter_prefix_store(r->be, r->kv, seq, ad, &err);
        if (st != QV_OK) fail_msg("prefix store: %s", err.msg);
    }
    return ad->kind == QV_ADAPTER_PREFIX_TUNING ? nvt : 0;
}

static void fail_cmp(const char *what, const char *name, int pi, int t, const float *got,
                     const float *want, int V, double e) {
    char label[256];
    snprintf(label, sizeof(label), "%s prompt %d %s %d", name, pi, what, t);
    qv_test_compare_f32(label, got, want, (size_t)V, 0, REL_TOL);
    fail_msg("%s: logits differ from PEFT: rel err %.3g > %.1g", label, e, REL_TOL);
}

static int n_cases;

/* A LoRA file stored in one 16-bit dtype keeps it in memory (qv_lora.wtype), so its golden
 * runs the F16 / BF16 kernels, not an F32 copy. */
static void check_lora_dtype(const qv_adapter *ad, const cJSON *dtypes) {
    if (ad->kind != QV_ADAPTER_LORA || cJSON_GetArraySize(dtypes) != 1) return;
    const char *d = cJSON_GetArrayItem(dtypes, 0)->valuestring;
    const enum qv_dtype want = !strcmp(d, "float16")    ? QV_DTYPE_F16
                               : !strcmp(d, "bfloat16") ? QV_DTYPE_BF16
                                                        : QV_DTYPE_F32;
    for (int l = 0; l < ad->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++)
            if (ad->layers[l].lora[p].rank) assert_int_equal(ad->layers[l].lora[p].wtype, want);
}

static void check_case(const char *json_path) {
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(json_path, 256u << 20, &text, &len, &err), QV_OK);
    cJSON *root = cJSON_Parse(text);
    qv_free(text);
    assert_non_null(root);
    const char *model = cJSON_GetObjectItem(root, "model")->valuestring;
    const char *adir = cJSON_GetObjectItem(root, "adapter")->valuestring;
    const int nvt_json = cJSON_GetObjectItem(root, "n_virtual")->valueint;
    const int off_json = cJSON_GetObjectItem(root, "position_offset")->valueint;
    char rel[1024];
    snprintf(rel, sizeof(rel), "tests/fixtures/%s", model);
    golden_runner r;
    assert_int_equal(golden_open(&r, qv_test_path(rel), 2, 128, 4, 96), 0);
    snprintf(rel, sizeof(rel), "tests/fixtures/%s", adir);
    qv_adapter *ad = NULL;
    if (qv_adapter_load(qv_test_path(rel), r.m, NULL, &ad, &err) != QV_OK)
        fail_msg("load %s: %s", adir, err.msg);
    assert_int_equal(qv_adapter_n_prefix_positions(ad), nvt_json);
    check_lora_dtype(ad, cJSON_GetObjectItem(root, "adapter_dtypes"));
    const int V = r.m->cfg.n_vocab;
    float *want = malloc(sizeof(float) * (size_t)V);
    float *got = malloc(sizeof(float) * (size_t)V * 96);
    float *cur = malloc(sizeof(float) * (size_t)V);
    const cJSON *prompt;
    int pi = 0;
    bool base_checked = false;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItem(root, "prompts")) {
        int n_ids = 0, n_greedy = 0, n_all = 0;
        int32_t *ids = json_i32_array(cJSON_GetObjectItem(prompt, "ids"), &n_ids);
        int32_t *greedy = json_i32_array(cJSON_GetObjectItem(prompt, "greedy"), &n_greedy);
        const cJSON *pl = cJSON_GetObjectItem(prompt, "prompt_logits");
        const cJSON *sl = cJSON_GetObjectItem(prompt, "step_logits");
        const cJSON *gap = cJSON_GetObjectItem(prompt, "top2_gap");
        assert_true(n_ids > 0 && n_ids <= 64 && n_greedy >= 32);
        assert_int_equal(cJSON_GetArraySize(pl), n_ids);
        /* an activated LoRA acts from its invocation in the prompt on (never without one) */
        const int act = qv_adapter_alora_start(ad, ids, (size_t)n_ids);

        /* Whole prompt in one chunk, logits everywhere. */
        qv_kv_seq seq = {0};
        int32_t *all = NULL;
        int pos0 = start_seq(&r, &seq, ad, ids, n_ids, &all, &n_all);
        const int n_pre = n_all - n_ids;
        assert_int_equal(pos0 + n_pre, off_json);
        assert_int_equal(golden_feed_adapter(&r, &seq, ad, act, all, n_all, pos0, 1, got), 0);
        double worst = 0;
        for (int t = 0; t < n_ids; t++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, t), want, V), 0);
            const float *g = got + (size_t)(n_pre + t) * V;
            double e = qv_test_max_rel_err(g, want, (size_t)V);
            worst = fmax(worst, e);
            if (e > REL_TOL) fail_cmp("pos", adir, pi, t, g, want, V, e);
        }
        /* the case can fail: the base model alone is far from PEFT here (on the first prompt
           where the adapter acts; where an activated LoRA does not, PEFT gives the base's) */
        if (!base_checked || act == INT32_MAX) {
            qv_kv_seq sb = {0};
            assert_int_equal(golden_feed(&r, &sb, ids, n_ids, 0, 0, cur), 0);
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, n_ids - 1), want, V), 0);
            double eb = qv_test_max_rel_err(cur, want, (size_t)V);
            if (act == INT32_MAX && eb > REL_TOL)
                fail_msg("%s prompt %d: no invocation, yet PEFT is not the base (%.3g)", adir, pi,
                         eb);
            if (act != INT32_MAX && eb < 1e-3)
                fail_msg("%s: base logits already match PEFT (%.3g)", adir, eb);
            base_checked = base_checked || act != INT32_MAX;
            qv_kv_seq_release(r.kv, &sb);
        }
        /* Teacher-forced greedy decode. */
        memcpy(cur, got + (size_t)(n_all - 1) * V, sizeof(float) * (size_t)V);
        int n_agree = 0;
        for (int s = 0; s < 32; s++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(sl, s), want, V), 0);
            double e = qv_test_max_rel_err(cur, want, (size_t)V);
            worst = fmax(worst, e);
            if (e > REL_TOL) fail_cmp("step", adir, pi, s, cur, want, V, e);
            double scale = 0;
            for (int i = 0; i < V; i++)
                scale = fmax(scale, fabs((double)want[i]));
            int mine = argmax_f32(cur, V);
            double g = cJSON_GetArrayItem(gap, s)->valuedouble;
            if (mine != greedy[s] && g > REL_TOL * scale)
                fail_msg("%s prompt %d step %d: greedy token %d, PEFT %d (gap %.3g)", adir, pi, s,
                         mine, greedy[s], g);
            n_agree += mine == greedy[s];
            assert_int_equal(
                golden_feed_adapter(&r, &seq, ad, act, &greedy[s], 1, pos0 + n_all + s, 0, cur), 0);
        }
        qv_kv_seq_release(r.kv, &seq);

        /* Chunked prefill: chunks of 3, compare the last position. */
        qv_kv_seq seq2 = {0};
        int32_t *all2 = NULL;
        pos0 = start_seq(&r, &seq2, ad, ids, n_ids, &all2, &n_all);
        for (int o = 0; o < n_all; o += 3) {
            int c = n_all - o < 3 ? n_all - o : 3;
            assert_int_equal(golden_feed_adapter(&r, &seq2, ad, act, all2 + o, c, pos0 + o, 0, cur),
                             0);
        }
        assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, n_ids - 1), want, V), 0);
        double ec = qv_test_max_rel_err(cur, want, (size_t)V);
        if (ec > REL_TOL) fail_cmp("chunked", adir, pi, n_ids - 1, cur, want, V, ec);
        qv_kv_seq_release(r.kv, &seq2);
        printf("%-44s prompt %d (%2d tokens, nvt %d): worst rel err %.2e, greedy %d/32\n", adir, pi,
               n_ids, nvt_json, worst, n_agree);
        free(all);
        free(all2);
        free(ids);
        free(greedy);
        pi++;
    }
    assert_true(pi >= 1);
    free(want);
    free(got);
    free(cur);
    qv_adapter_free(ad);
    golden_close(&r);
    cJSON_Delete(root);
    n_cases++;
}

static void test_tiny_cases(void **state) {
    (void)state;
    const char *dir = qv_test_path("tests/fixtures/adapter_golden");
    DIR *d = opendir(dir);
    assert_non_null(d);
    char names[64][256];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        size_t l = strlen(e->d_name);
        if (l > 5 && !strcmp(e->d_name + l - 5, ".json"))
            snprintf(names[n++], 256, "%s", e->d_name);
    }
    closedir(d);
    assert_true(n >= 20); /* fewer means fixtures are missing */
    for (int i = 0; i < n; i++) {
        char rel[300];
        snprintf(rel, sizeof(rel), "tests/fixtures/adapter_golden/%.250s", names[i]);
        check_case(qv_test_path(rel));
    }
    assert_int_equal(n_cases, n);
}

static const char *smollm2_path(void) {
    static char buf[1024];
    const char *env = getenv("QV_SMOLLM2_GGUF");
    if (env) return env;
    const char *home = getenv("HOME");
    snprintf(buf, sizeof(buf), "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
             home ? home : "");
    return buf;
}

/* SmolLM2-135M-Instruct Q4_1 with LoRA / prefix / IA3 adapters: last prompt position within
 * 1e-4 of PEFT (which ran on the dequantized GGUF), 32 teacher-forced greedy tokens. */
static void test_smollm2(void **state) {
    (void)state;
    const char *mpath = smollm2_path();
    if (!qv_test_exists(mpath)) {
        printf("SKIP: %s absent\n", mpath);
        skip();
    }
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(qv_test_path("tests/fixtures/adapter_golden/smollm2/golden.json"),
                                  64u << 20, &text, &len, &err),
                     QV_OK);
    cJSON *root = cJSON_Parse(text);
    qv_free(text);
    assert_non_null(root);
    golden_runner r;
    assert_int_equal(golden_open(&r, mpath, 2, 64, 16, 64), 0);
    const int V = r.m->cfg.n_vocab;
    assert_int_equal(V, cJSON_GetObjectItem(root, "vocab")->valueint);
    float *want = malloc(sizeof(float) * (size_t)V);
    float *cur = malloc(sizeof(float) * (size_t)V);
    const cJSON *cs;
    int n_done = 0;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases")) {
        const char *adir = cJSON_GetObjectItem(cs, "adapter")->valuestring;
        char rel[1024];
        snprintf(rel, sizeof(rel), "tests/fixtures/%s", adir);
        qv_adapter *ad = NULL;
        if (qv_adapter_load(qv_test_path(rel), r.m, NULL, &ad, &err) != QV_OK)
            fail_msg("load %s: %s", adir, err.msg);
        const cJSON *prompt;
        int pi = 0;
        cJSON_ArrayForEach(prompt, cJSON_GetObjectItem(cs, "prompts")) {
            int n_ids = 0, n_greedy = 0, n_all = 0;
            int32_t *ids = json_i32_array(cJSON_GetObjectItem(prompt, "ids"), &n_ids);
            int32_t *greedy = json_i32_array(cJSON_GetObjectItem(prompt, "greedy"), &n_greedy);
            const cJSON *gap = cJSON_GetObjectItem(prompt, "top2_gap");
            const int act = qv_adapter_alora_start(ad, ids, (size_t)n_ids);
            snprintf(rel, sizeof(rel), "tests/fixtures/adapter_golden/smollm2/%s",
                     cJSON_GetObjectItem(prompt, "last_logits_file")->valuestring);
            char *raw = NULL;
            size_t raw_len = 0;
            assert_int_equal(qv_read_file(qv_test_path(rel), 1u << 20, &raw, &raw_len, &err),
                             QV_OK);
            assert_int_equal(raw_len, sizeof(float) * (size_t)V);
            memcpy(want, raw, raw_len);
            qv_free(raw);
            qv_kv_seq seq = {0};
            int32_t *all = NULL;
            int pos0 = start_seq(&r, &seq, ad, ids, n_ids, &all, &n_all);
            assert_int_equal(golden_feed_adapter(&r, &seq, ad, act, all, n_all, pos0, 0, cur), 0);
            double e = qv_test_max_rel_err(cur, want, (size_t)V);
            if (e > REL_TOL) fail_cmp("last", adir, pi, n_ids - 1, cur, want, V, e);
            int n_agree = 0;
            for (int s = 0; s < 32; s++) {
                double scale = 0;
                for (int i = 0; i < V; i++)
                    scale = fmax(scale, fabs((double)cur[i]));
                int mine = argmax_f32(cur, V);
                double g = cJSON_GetArrayItem(gap, s)->valuedouble;
                if (mine != greedy[s] && g > REL_TOL * scale)
                    fail_msg("%s prompt %d step %d: greedy token %d, PEFT %d (gap %.3g)", adir, pi,
                             s, mine, greedy[s], g);
                n_agree += mine == greedy[s];
                assert_int_equal(
                    golden_feed_adapter(&r, &seq, ad, act, &greedy[s], 1, pos0 + n_all + s, 0, cur),
                    0);
            }
            qv_kv_seq_release(r.kv, &seq);
            printf("smollm2 %-28s prompt %d (%2d tokens): last rel err %.2e, greedy %d/32\n", adir,
                   pi, n_ids, e, n_agree);
            free(all);
            free(ids);
            free(greedy);
            pi++;
        }
        assert_int_equal(pi, 2);
        qv_adapter_free(ad);
        n_done++;
    }
    assert_int_equal(n_done, 3);
    free(want);
    free(cur);
    golden_close(&r);
    cJSON_Delete(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_tiny_cases),
                                       cmocka_unit_test(test_smollm2)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
