/*
 * test_adapter_merge.c - merged LoRA adapters (qv_adapter_merge, LoRAX's merged_adapters)
 * against PEFT.
 *
 * For every case of tests/fixtures/adapter_merge/cases.json (tests/oracle/gen_merge_fixtures.py:
 * PEFT 0.21.2's merge_utils on each projection's lora_A and lora_B, DARE's drop by the
 * documented hash; "cat" by PEFT's own add_weighted_adapter, mixed ranks included): load the
 * adapters against tiny-llama-gqa, merge them here and check
 * - every merged projection's rank and scale, and its A and B within 1e-5 of PEFT's (relative
 *   to the tensor's largest |value|); projections no adapter adapts stay without LoRA;
 * - the merged adapter in the forward pass: logits at every prompt position and 8
 *   teacher-forced greedy steps within 1e-4 of the PEFT model holding the merged weights.
 * Then what a merge refuses: different ranks on one projection, non-LoRA kinds, DoRA, bad
 * parameters; and properties no fixture needs: one adapter with weight 1 is itself, TIES'
 * pruning keeps exactly int(density * n) values, DARE's mask depends on the seed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>

#include "adapters/adapters.h"
#include "engine/safetensors.h"
#include "golden_util.h"
#include "test_util.h"

#define TENSOR_TOL 1e-5
#define LOGIT_TOL 1e-4

static cJSON *cases;
static golden_runner run;

static int setup(void **state) {
    (void)state;
    cases = json_read_fixture("tests/fixtures/adapter_merge/cases.json");
    if (!cases) return -1;
    return golden_open(&run, qv_test_path("tests/fixtures/models/tiny-llama-gqa"), 2, 128, 4, 96);
}

static int teardown(void **state) {
    (void)state;
    golden_close(&run);
    cJSON_Delete(cases);
    return 0;
}

static qv_adapter *load(const char *rel) {
    char path[512];
    snprintf(path, sizeof(path), "tests/fixtures/%s", rel);
    qv_adapter *ad = NULL;
    qv_error err = {0};
    if (qv_adapter_load(qv_test_path(path), run.m, NULL, &ad, &err) != QV_OK)
        fail_msg("load %s: %s", rel, err.msg);
    return ad;
}

static enum qv_merge_strategy strategy_of(const char *s) {
    for (int i = 0; i < QV_MERGE_STRATEGY_COUNT; i++)
        if (!strcmp(s, qv_merge_strategy_name((enum qv_merge_strategy)i)))
            return (enum qv_merge_strategy)i;
    fail_msg("unknown strategy %s", s);
    return QV_MERGE_LINEAR;
}

/* Merges a case's adapters here. */
static qv_adapter *merge_case(const cJSON *c, qv_adapter **ads) {
    qv_merge_params p = {0};
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "adapters")) ads[p.n++] = load(it->valuestring);
    int k = 0;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(c, "weights")) p.weights[k++] =
        (float)it->valuedouble;
    assert_int_equal(k, p.n);
    p.strategy = strategy_of(cJSON_GetObjectItem(c, "strategy")->valuestring);
    p.density = cJSON_GetObjectItem(c, "density")->valuedouble;
    p.sign = strcmp(cJSON_GetObjectItem(c, "sign")->valuestring, "frequency") == 0
                 ? QV_MERGE_SIGN_FREQUENCY
                 : QV_MERGE_SIGN_TOTAL;
    p.seed = (uint64_t)cJSON_GetObjectItem(c, "seed")->valuedouble;
    qv_adapter *m = NULL;
    qv_error err = {0};
    if (qv_adapter_merge((const qv_adapter *const *)ads, &p, &m, &err) != QV_OK)
        fail_msg("merge %s: %s", cJSON_GetObjectItem(c, "name")->valuestring, err.msg);
    return m;
}

/* Compares the merged tensors with the oracle's file. */
static void check_tensors(const cJSON *c, const qv_adapter *m) {
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/%s", cJSON_GetObjectItem(c, "tensors")->valuestring);
    qv_st_file *st = NULL;
    qv_error err = {0};
    assert_int_equal(qv_st_open(qv_test_path(rel), &st, &err), QV_OK);
    const cJSON *scales = cJSON_GetObjectItem(c, "scales");
    int n_proj = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            const qv_lora *lo = &m->layers[l].lora[p];
            char key[96];
            snprintf(key, sizeof(key), "layers.%d.%s", l, qv_proj_name((enum qv_proj)p));
            const cJSON *sc = cJSON_GetObjectItem(scales, key);
            if (!sc) {
                assert_int_equal(lo->rank, 0);
                continue;
            }
            n_proj++;
            assert_true(fabs((double)lo->scale - sc->valuedouble) <= 1e-6 * fabs(sc->valuedouble));
            for (int which = 0; which < 2; which++) {
                char name[128];
                snprintf(name, sizeof(name), "%s.%s", key, which ? "B" : "A");
                const qv_st_tensor *t = qv_st_find(st, name);
                assert_non_null(t);
                assert_int_equal(t->dtype, QV_DTYPE_F32);
                assert_int_equal(t->shape[which ? 1 : 0], lo->rank);
                const size_t n = (size_t)t->n_elems;
                float *want = malloc(n * sizeof(float));
                memcpy(want, t->data, n * sizeof(float));
                const float *got = which ? lo->b : lo->a;
                assert_int_equal(lo->wtype, QV_DTYPE_F32);
                double e = qv_test_max_rel_err(got, want, n);
                if (e > TENSOR_TOL) {
                    qv_test_compare_f32(name, got, want, n, 0, TENSOR_TOL);
                    fail_msg("%s %s: rel err %.3g", cJSON_GetObjectItem(c, "name")->valuestring,
                             name, e);
                }
                free(want);
            }
        }
    assert_int_equal(n_proj, cJSON_GetArraySize(scales));
    qv_st_close(st);
}

/* Prompt logits at every position and teacher-forced greedy steps against PEFT. */
static double check_logits(const cJSON *c, const qv_adapter *m) {
    const int V = run.m->cfg.n_vocab;
    float *want = malloc(sizeof(float) * (size_t)V), *cur = malloc(sizeof(float) * (size_t)V);
    double worst = 0;
    const cJSON *pr;
    cJSON_ArrayForEach(pr, cJSON_GetObjectItem(c, "prompts")) {
        int n_ids = 0, n_greedy = 0;
        int32_t *ids = json_i32_array(cJSON_GetObjectItem(pr, "ids"), &n_ids);
        int32_t *greedy = json_i32_array(cJSON_GetObjectItem(pr, "greedy"), &n_greedy);
        const cJSON *pl = cJSON_GetObjectItem(pr, "prompt_logits");
        const cJSON *sl = cJSON_GetObjectItem(pr, "step_logits");
        float *got = malloc(sizeof(float) * (size_t)V * (size_t)n_ids);
        qv_kv_seq seq = {0};
        assert_int_equal(golden_feed_adapter(&run, &seq, m, 0, ids, n_ids, 0, 1, got), 0);
        for (int t = 0; t < n_ids; t++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(pl, t), want, V), 0);
            worst = fmax(worst, qv_test_max_rel_err(got + (size_t)t * V, want, (size_t)V));
        }
        memcpy(cur, got + (size_t)(n_ids - 1) * V, sizeof(float) * (size_t)V);
        for (int s = 0; s < n_greedy; s++) {
            assert_int_equal(json_f32_array(cJSON_GetArrayItem(sl, s), want, V), 0);
            worst = fmax(worst, qv_test_max_rel_err(cur, want, (size_t)V));
            assert_int_equal(
                golden_feed_adapter(&run, &seq, m, 0, &greedy[s], 1, n_ids + s, 0, cur), 0);
        }
        qv_kv_seq_release(run.kv, &seq);
        free(got);
        free(ids);
        free(greedy);
    }
    free(want);
    free(cur);
    return worst;
}

static void test_cases(void **state) {
    (void)state;
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(cases, "cases")) {
        qv_adapter *ads[QV_MERGE_MAX] = {0};
        qv_adapter *m = merge_case(c, ads);
        check_tensors(c, m);
        double e = check_logits(c, m);
        printf("%-20s worst logits rel err %.2e\n", cJSON_GetObjectItem(c, "name")->valuestring, e);
        if (e > LOGIT_TOL)
            fail_msg("%s: logits differ from PEFT (%.3g)",
                     cJSON_GetObjectItem(c, "name")->valuestring, e);
        qv_adapter_free(m);
        for (int i = 0; i < QV_MERGE_MAX; i++)
            qv_adapter_free(ads[i]);
        n++;
    }
    assert_true(n >= 8);
}

static qv_status try_merge(const char *a, const char *b, const qv_merge_params *p, char *msg) {
    qv_adapter *ads[2] = {load(a), b ? load(b) : NULL};
    qv_adapter *m = NULL;
    qv_error err = {0};
    qv_status s = qv_adapter_merge((const qv_adapter *const *)ads, p, &m, &err);
    if (msg) snprintf(msg, 512, "%s", err.msg);
    if (s != QV_OK) assert_null(m);
    qv_adapter_free(m);
    qv_adapter_free(ads[0]);
    qv_adapter_free(ads[1]);
    return s;
}

static void test_refusals(void **state) {
    (void)state;
    char msg[512];
    qv_merge_params p = {.n = 2, .weights = {1, 1}, .strategy = QV_MERGE_LINEAR, .density = 1};
    /* lora_patterns has rank 2 on layers.1.q_proj, lora_qv_r4 rank 4 */
    assert_int_equal(try_merge("adapters/tiny-llama-gqa/lora_qv_r4",
                               "adapters/tiny-llama-gqa/lora_patterns", &p, msg),
                     QV_ERR_INVALID);
    assert_non_null(strstr(msg, "layers.1.q_proj"));
    assert_int_equal(
        try_merge("adapters/tiny-llama-gqa/lora_qv_r4", "adapters/tiny-llama-gqa/ia3", &p, msg),
        QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(msg, "adapter 2"));
    assert_int_equal(
        try_merge("adapters/tiny-llama-gqa/dora", "adapters/tiny-llama-gqa/lora_qv_r4", &p, msg),
        QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(msg, "DoRA"));
    assert_int_equal(try_merge("adapters/tiny-llama-gqa/lora_bias",
                               "adapters/tiny-llama-gqa/lora_qv_r4", &p, msg),
                     QV_ERR_UNSUPPORTED);
    const char *qv = "adapters/tiny-llama-gqa/lora_qv_r4";
    qv_merge_params bad = p;
    bad.density = 0;
    assert_int_equal(try_merge(qv, qv, &bad, NULL), QV_ERR_INVALID);
    bad.density = 1.5;
    assert_int_equal(try_merge(qv, qv, &bad, NULL), QV_ERR_INVALID);
    bad = p;
    bad.weights[1] = NAN;
    assert_int_equal(try_merge(qv, qv, &bad, NULL), QV_ERR_INVALID);
    bad = p;
    bad.strategy = QV_MERGE_STRATEGY_COUNT;
    assert_int_equal(try_merge(qv, qv, &bad, NULL), QV_ERR_INVALID);
    bad = p;
    bad.n = 0;
    assert_int_equal(try_merge(qv, qv, &bad, NULL), QV_ERR_INVALID);
}

/* Counts the non-zero elements of every A and B. */
static size_t nonzeros(const qv_adapter *m, size_t *total) {
    size_t nz = 0, n = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int p = 0; p < QV_PROJ_COUNT; p++) {
            const qv_lora *lo = &m->layers[l].lora[p];
            const size_t na = (size_t)lo->rank * (size_t)lo->n_in;
            const size_t nb = (size_t)lo->rank * (size_t)lo->n_out;
            for (size_t i = 0; i < na; i++)
                nz += lo->a[i] != 0.0f;
            for (size_t i = 0; i < nb; i++)
                nz += lo->b[i] != 0.0f;
            n += na + nb;
        }
    *total = n;
    return nz;
}

static void test_properties(void **state) {
    (void)state;
    qv_adapter *ads[2] = {load("adapters/tiny-llama-gqa/lora_all_r8_f16"), NULL};
    const qv_adapter *const *in = (const qv_adapter *const *)ads;
    qv_error err = {0};
    /* one adapter, weight 1, linear: the same numbers */
    qv_merge_params p = {.n = 1, .weights = {1}, .strategy = QV_MERGE_LINEAR, .density = 1};
    qv_adapter *m = NULL;
    assert_int_equal(qv_adapter_merge(in, &p, &m, &err), QV_OK);
    assert_true(m->uid != 0 && m->uid != ads[0]->uid);
    for (int l = 0; l < m->n_layers; l++)
        for (int q = 0; q < QV_PROJ_COUNT; q++) {
            const qv_lora *a = &ads[0]->layers[l].lora[q], *b = &m->layers[l].lora[q];
            assert_int_equal(a->rank, b->rank);
            assert_true(a->scale == b->scale);
            for (size_t i = 0; i < (size_t)a->rank * (size_t)a->n_in; i++)
                assert_true(qv_lora_a_at(a, i) == b->a[i]);
            for (size_t i = 0; i < (size_t)a->rank * (size_t)a->n_out; i++)
                assert_true(qv_lora_b_at(a, i) == b->b[i]);
        }
    qv_adapter_free(m);
    /* TIES of one adapter keeps int(density * n) values of each tensor */
    p.strategy = QV_MERGE_TIES;
    p.density = 0.25;
    assert_int_equal(qv_adapter_merge(in, &p, &m, &err), QV_OK);
    size_t total = 0, nz = nonzeros(m, &total), want = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (int q = 0; q < QV_PROJ_COUNT; q++) {
            const qv_lora *lo = &m->layers[l].lora[q];
            want += (size_t)(0.25 * lo->rank * lo->n_in) + (size_t)(0.25 * lo->rank * lo->n_out);
        }
    assert_int_equal(nz, want);
    qv_adapter_free(m);
    /* DARE keeps about density of the values, and the mask follows the seed */
    p.strategy = QV_MERGE_DARE_LINEAR;
    p.density = 0.5;
    p.seed = 1;
    qv_adapter *m2 = NULL, *m3 = NULL;
    assert_int_equal(qv_adapter_merge(in, &p, &m, &err), QV_OK);
    assert_int_equal(qv_adapter_merge(in, &p, &m2, &err), QV_OK);
    p.seed = 2;
    assert_int_equal(qv_adapter_merge(in, &p, &m3, &err), QV_OK);
    nz = nonzeros(m, &total);
    assert_true(fabs((double)nz / (double)total - 0.5) < 0.02);
    const qv_lora *l1 = &m->layers[0].lora[QV_PROJ_Q], *l2 = &m2->layers[0].lora[QV_PROJ_Q],
                  *l3 = &m3->layers[0].lora[QV_PROJ_Q];
    const size_t na = (size_t)l1->rank * (size_t)l1->n_in;
    assert_memory_equal(l1->a, l2->a, na * sizeof(float));
    assert_memory_not_equal(l1->a, l3->a, na * sizeof(float));
    for (size_t i = 0; i < na; i++) /* kept values are divided by the density */
        if (l1->a[i] != 0.0f)
            assert_true(fabsf(l1->a[i] - 2.0f * qv_lora_a_at(&ads[0]->layers[0].lora[QV_PROJ_Q],
                                                             i)) <= 1e-6f * fabsf(l1->a[i]));
    qv_adapter_free(m);
    qv_adapter_free(m2);
    qv_adapter_free(m3);
    qv_adapter_free(ads[0]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cases),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_properties),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
