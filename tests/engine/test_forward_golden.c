/*
 * test_forward_golden.c - the CPU forward pass against Hugging Face transformers.
 *
 * For every JSON case in tests/fixtures/golden/ (written by tests/oracle/gen_golden.py from HF
 * transformers in fp32; for GGUF files HF ran on the same dequantized, un-permuted weights):
 * - logits at every prompt position within 1e-4 of HF, relative to the row's largest |logit|;
 * - teacher-forced greedy decode over 32 steps: quiver's argmax equals HF's greedy token at
 *   every step (unless HF's own top-2 gap is below 1e-4 of the row scale, a genuine tie), and
 *   each step's logits match within 1e-4;
 * - a chunked prefill (chunks of 3 tokens) gives the same last-position logits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <math.h>

#include "golden_util.h"
#include "test_util.h"

#define REL_TOL 1e-4

static int n_cases;

static void check_case(const char *json_path) {
    char *text = NULL;
    size_t len = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(json_path, 256u << 20, &text, &len, &err), QV_OK);
    cJSON *root = cJSON_Parse(text);
    qv_free(text);
    assert_non_null(root);
    const cJSON *jm = cJSON_GetObjectItem(root, "model");
    assert_true(cJSON_IsString(jm));
    char rel[1024];
    snprintf(rel, sizeof(rel), "tests/fixtures/%s", jm->valuestring);
    golden_runner r;
    assert_int_equal(golden_open(&r, qv_test_path(rel), 2, 64, 4, 64), 0);
    const int V = r.m->cfg.n_vocab;
    assert_int_equal(V, cJSON_GetObjectItem(root, "vocab")->valueint);
    float *want = malloc(sizeof(float) * (size_t)V);
    float *got = malloc(sizeof(float) * (size_t)V * 64);
    const cJSON *prompt;
    int pi = 0;
    cJSON_ArrayForEach(prompt, cJSON_GetObjectItem(root, "prompts")) {
        int n_ids = 0, n_greedy = 0;
        int32_t *ids = json_i32_array(cJSON_GetObjectItem(prompt, "ids"), &n_ids);
        int32_t *greedy = json_i32_array(cJSON_GetObjectItem(prompt, "greedy"), &n_greedy);
        const cJSON *pl = cJSON_GetObjectItem(prompt, "prompt_logits");
        const cJSON *sl = cJSON_GetObjectItem(prompt, "step_logits");
        const cJSON *gap = cJSON_GetObjectItem(prompt, "top2_gap");
        assert_true(n_ids > 0 && n_ids <= 64 && n_greedy >= 32);
        assert_int_equal(cJSON_GetArraySize(pl), n_ids);

        /* Whole prompt in one chunk, logits everywhere. */
        qv_kv_seq seq = {0};
        assert_int_equal(golden_feed(&r, &seq, ids, n_ids, 0, 1, got), 0);
        double worst = 0;
        for (int t = 0; t < n_ids; t++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, t), want, V), 0);
            double e = qv_test_max_rel_err(got + (size_t)t * V, want, (size_t)V);
            if (e > worst) worst = e;
            if (e > REL_TOL) {
                char label[256];
                snprintf(label, sizeof(label), "%s prompt %d pos %d", jm->valuestring, pi, t);
                qv_test_compare_f32(label, got + (size_t)t * V, want, (size_t)V, 0, REL_TOL);
                fail_msg("prompt logits differ from HF: rel err %.3g > %.1g", e, REL_TOL);
            }
        }
        /* Teacher-forced greedy decode. */
        float *cur = malloc(sizeof(float) * (size_t)V);
        memcpy(cur, got + (size_t)(n_ids - 1) * V, sizeof(float) * (size_t)V);
        int n_agree = 0;
        for (int s = 0; s < 32; s++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(sl, s), want, V), 0);
            double e = qv_test_max_rel_err(cur, want, (size_t)V);
            if (e > worst) worst = e;
            if (e > REL_TOL) {
                char label[256];
                snprintf(label, sizeof(label), "%s prompt %d step %d", jm->valuestring, pi, s);
                qv_test_compare_f32(label, cur, want, (size_t)V, 0, REL_TOL);
                fail_msg("step logits differ from HF: rel err %.3g", e);
            }
            double scale = 0;
            for (int i = 0; i < V; i++)
                scale = fmax(scale, fabs((double)want[i]));
            int mine = argmax_f32(cur, V);
            double g = cJSON_GetArrayItem(gap, s)->valuedouble;
            if (mine != greedy[s] && g > REL_TOL * scale)
                fail_msg("%s prompt %d step %d: greedy token %d, HF %d (gap %.3g)", jm->valuestring,
                         pi, s, mine, greedy[s], g);
            n_agree += mine == greedy[s];
            assert_int_equal(golden_feed(&r, &seq, &greedy[s], 1, n_ids + s, 0, cur), 0);
        }
        qv_kv_seq_release(r.kv, &seq);

        /* Chunked prefill: chunks of 3, compare the last position. */
        qv_kv_seq seq2 = {0};
        for (int off = 0; off < n_ids; off += 3) {
            int c = n_ids - off < 3 ? n_ids - off : 3;
            assert_int_equal(golden_feed(&r, &seq2, ids + off, c, off, 0, cur), 0);
        }
        assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, n_ids - 1), want, V), 0);
        double ec = qv_test_max_rel_err(cur, want, (size_t)V);
        if (ec > REL_TOL) fail_msg("chunked prefill logits differ: %.3g", ec);
        qv_kv_seq_release(r.kv, &seq2);
        printf("%-40s prompt %d (%2d tokens): worst rel err %.2e, greedy %d/32 identical\n",
               jm->valuestring, pi, n_ids, worst, n_agree);
        free(cur);
        free(ids);
        free(greedy);
        pi++;
    }
    assert_true(pi >= 1);
    free(want);
    free(got);
    golden_close(&r);
    cJSON_Delete(root);
    n_cases++;
}

static void test_all_golden_cases(void **state) {
    (void)state;
    const char *dir = qv_test_path("tests/fixtures/golden");
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
    /* The oracle writes one case per model variant; fewer than this means fixtures are missing. */
    assert_true(n >= 8);
    for (int i = 0; i < n; i++) {
        char rel[300];
        snprintf(rel, sizeof(rel), "tests/fixtures/golden/%.250s", names[i]);
        check_case(qv_test_path(rel));
    }
    assert_int_equal(n_cases, n);
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_all_golden_cases)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
