/*
 * test_smollm2_golden.c - the real default model (SmolLM2-135M-Instruct Q4_1 GGUF) against HF
 * transformers running the same GGUF dequantized to fp32 (tests/oracle/gen_golden.py).
 *
 * Per prompt: last-position logits close to HF's, 32 greedy tokens (free running, quiver's own
 * argmax fed back) identical to HF's wherever HF's top-2 gap is not a near-tie, and the logits
 * of greedy step 8 (decode path through the paged cache) close to HF's. Run three times: with
 * F32 K/V pages (within 1e-4), again with attention in 16-key segments (the default 256 is
 * longer than these contexts), and with bf16 pages (--kv-dtype bf16: within 1e-2).
 * Skips (77) only when the model file is absent: `deploy/fetch-model.sh` puts it in
 * $QUIVER_HOME/models (the README test command runs it first).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "cpu/cpu_internal.h"
#include "golden_util.h"
#include "test_util.h"

#define REL_TOL 1e-4
#define REL_TOL_BF16 1e-2

static char model_path[4096];

static int read_f32_file(const char *rel, float *out, size_t n) {
    FILE *f = fopen(qv_test_path(rel), "rb");
    if (!f) return -1;
    size_t got = fread(out, sizeof(float), n, f);
    fclose(f);
    return got == n ? 0 : -1;
}

/* tol: the logits' relative error allowed, and the top-2 gap under which HF's greedy token
 * counts as a near-tie; seg: attention's key segment length (0: the default). */
static void run_goldens(bool kv_bf16, double tol, int seg) {
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(qv_test_path("tests/fixtures/smollm2/golden.json"), 64u << 20,
                                  &text, &len, &err),
                     QV_OK);
    cJSON *root = cJSON_Parse(text);
    qv_free(text);
    assert_non_null(root);
    golden_runner r;
    assert_int_equal(golden_open_kv(&r, model_path, 0, 256, 16, 128, kv_bf16), 0);
    if (seg) qv__cpu_set_attn_segments(r.be->ctx, seg, -1);
    const int V = r.m->cfg.n_vocab;
    assert_int_equal(V, 49152);
    float *cur = malloc(sizeof(float) * (size_t)V);
    float *want = malloc(sizeof(float) * (size_t)V);
    const cJSON *p;
    int pi = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
        int n_ids = 0, n_greedy = 0;
        int32_t *ids = json_i32_array(cJSON_GetObjectItem(p, "ids"), &n_ids);
        int32_t *greedy = json_i32_array(cJSON_GetObjectItem(p, "greedy"), &n_greedy);
        const cJSON *gap = cJSON_GetObjectItem(p, "top2_gap");
        assert_true(n_ids > 0 && n_ids <= 128 && n_greedy >= 24);
        qv_kv_seq seq = {0};
        assert_int_equal(golden_feed(&r, &seq, ids, n_ids, 0, 0, cur), 0);
        char rel[512];
        snprintf(rel, sizeof(rel), "tests/fixtures/smollm2/%s",
                 cJSON_GetObjectItem(p, "last_logits_file")->valuestring);
        assert_int_equal(read_f32_file(rel, want, (size_t)V), 0);
        double e0 = qv_test_max_rel_err(cur, want, (size_t)V);
        if (e0 > tol) {
            qv_test_compare_f32("smollm2 last prompt logits", cur, want, (size_t)V, 0, tol);
            fail_msg("prompt %d: last logits rel err %.3g > %.1g", pi, e0, tol);
        }
        const cJSON *s8 = cJSON_GetObjectItem(p, "step8_logits_file");
        double e8 = -1;
        int same = 0;
        for (int s = 0; s < n_greedy; s++) {
            if (s == 8 && cJSON_IsString(s8)) {
                snprintf(rel, sizeof(rel), "tests/fixtures/smollm2/%s", s8->valuestring);
                assert_int_equal(read_f32_file(rel, want, (size_t)V), 0);
                e8 = qv_test_max_rel_err(cur, want, (size_t)V);
                if (e8 > tol) fail_msg("prompt %d: step-8 logits rel err %.3g", pi, e8);
            }
            int mine = argmax_f32(cur, V);
            if (mine != greedy[s]) {
                double scale = 0;
                for (int i = 0; i < V; i++)
                    scale = fmax(scale, fabs((double)cur[i]));
                double g = cJSON_GetArrayItem(gap, s)->valuedouble;
                if (g > tol * scale)
                    fail_msg("prompt %d step %d: quiver chose %d, HF %d (HF top-2 gap %.3g)", pi, s,
                             mine, greedy[s], g);
                break; /* a genuine near-tie: the continuations may diverge from here */
            }
            same++;
            assert_int_equal(golden_feed(&r, &seq, &mine, 1, n_ids + s, 0, cur), 0);
        }
        printf("%s%s prompt %d (%d tokens): last-logit rel err %.2e, step-8 %.2e, greedy %d/%d "
               "same\n",
               kv_bf16 ? "bf16 K/V" : "f32 K/V", seg ? ", 16-key segments" : "", pi, n_ids, e0, e8,
               same, n_greedy);
        assert_true(same >= 24);
        qv_kv_seq_release(r.kv, &seq);
        free(ids);
        free(greedy);
        pi++;
    }
    assert_true(pi >= 3);
    free(cur);
    free(want);
    golden_close(&r);
    cJSON_Delete(root);
}

static void test_smollm2(void **state) {
    (void)state;
    run_goldens(false, REL_TOL, 0);
}

/* Attention in key segments of 16 (the default is 256, longer than these prompts): each row
 * over more than 16 keys combines up to 8 partial softmaxes, in single-token steps as work
 * units of their own, in prefill steps inside their tile's unit. */
static void test_smollm2_segments(void **state) {
    (void)state;
    run_goldens(false, REL_TOL, 16);
}

/* --kv-dtype bf16: K and V rounded to bf16 in the cache (2^-9 relative), the rest F32. */
static void test_smollm2_kv_bf16(void **state) {
    (void)state;
    run_goldens(true, REL_TOL_BF16, 0);
}

int main(void) {
    const char *home = getenv("QUIVER_HOME");
    if (home && *home)
        snprintf(model_path, sizeof(model_path), "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", home);
    else
        snprintf(model_path, sizeof(model_path),
                 "%s/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 getenv("HOME") ? getenv("HOME") : ".");
    if (!qv_test_exists(model_path)) {
        printf("SKIP: %s not found (run deploy/fetch-model.sh)\n", model_path);
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_smollm2),
                                       cmocka_unit_test(test_smollm2_segments),
                                       cmocka_unit_test(test_smollm2_kv_bf16)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
