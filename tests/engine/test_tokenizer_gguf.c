/*
 * test_tokenizer_gguf.c - SmolLM2's tokenizer loaded from the real GGUF metadata
 * (~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf, or $QV_SMOLLM2_GGUF) must give the
 * HF oracle's ids and decodes for every fixture string, and the same ids as the committed
 * tokenizer.json rebuild; BOS/EOS/EOG ids and the chat template come from the metadata.
 * Exits 77 (skipped) with a message when the model file is absent; the tokenizer.json-based
 * tests (test_tokenizer) still cover SmolLM2's pipeline then.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_tokenizer_util.h"

static char g_path[4096];

static void test_gguf_matches_oracle(void **s) {
    (void)s;
    qv_tokenizer *tg = NULL, *tj = NULL;
    qv_error err = {0};
    qv_status st = qv_tokenizer_load_path(g_path, &tg, &err);
    if (st) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, QV_OK);
    assert_int_equal(
        qv_tokenizer_load_path(qv_test_path("tests/fixtures/tokenizer/smollm2"), &tj, &err), QV_OK);
    assert_int_equal(qv_tokenizer_n_vocab(tg), 49152);
    assert_int_equal(qv_tokenizer_bos(tg), 1);
    assert_int_equal(qv_tokenizer_eos(tg), 2);
    assert_true(qv_tokenizer_is_eog(tg, 2));
    assert_string_equal(qv_chat_detect(tg), "chatml");
    assert_string_equal(qv_tokenizer_chat_template(tg), qv_tokenizer_chat_template(tj));

    cJSON *root = tt_load_json("tests/fixtures/tokenizer/cases_smollm2.json");
    assert_non_null(root);
    size_t fails = 0, n_checks = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        size_t tn;
        char *text = tt_unhex(cJSON_GetObjectItem(c, "hex")->valuestring, &tn);
        for (int sp = 0; sp < 2; sp++) {
            int32_t *a = NULL, *b = NULL;
            size_t na = 0, nb = 0;
            assert_int_equal(qv_tokenizer_encode(tg, text, tn, sp, &a, &na, &err), QV_OK);
            assert_int_equal(qv_tokenizer_encode(tj, text, tn, sp, &b, &nb, &err), QV_OK);
            n_checks++;
            if (!tt_ids_equal("gguf encode vs HF", text, tn, a, na,
                              cJSON_GetObjectItem(c, sp ? "ids_special" : "ids")))
                fails++;
            if (na != nb || memcmp(a, b, na * sizeof(*a))) {
                fprintf(stderr, "  gguf and tokenizer.json paths differ\n");
                fails++;
            }
            if (sp && cJSON_GetObjectItem(c, "dec")) {
                char *out = NULL;
                size_t on = 0;
                assert_int_equal(qv_tokenizer_decode(tg, a, na, false, &out, &on, &err), QV_OK);
                if (!tt_bytes_equal("gguf decode", text, tn, out, on,
                                    cJSON_GetObjectItem(c, "dec")->valuestring))
                    fails++;
                qv_free(out);
            }
            qv_free(a);
            qv_free(b);
        }
        free(text);
    }
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "single")) {
        int32_t id = (int32_t)cJSON_GetArrayItem(c, 0)->valuedouble;
        char *out = NULL;
        size_t on = 0;
        assert_int_equal(qv_tokenizer_decode(tg, &id, 1, true, &out, &on, &err), QV_OK);
        n_checks++;
        const cJSON *w = cJSON_GetArrayItem(c, 2);
        if (cJSON_IsNull(w)) w = cJSON_GetArrayItem(c, 1);
        if (!tt_bytes_equal("gguf single decode", "", 0, out, on, w->valuestring)) fails++;
        qv_free(out);
    }
    const cJSON *lc = cJSON_GetObjectItem(root, "long");
    size_t tn;
    char *text = tt_unhex(cJSON_GetObjectItem(lc, "hex")->valuestring, &tn);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(qv_tokenizer_encode(tg, text, tn, false, &ids, &n, &err), QV_OK);
    if (!tt_ids_equal("gguf long", text, tn, ids, n, cJSON_GetObjectItem(lc, "ids"))) fails++;
    qv_free(ids);
    free(text);
    fprintf(stderr, "gguf: %zu checks, %zu mismatches\n", n_checks, fails);
    assert_int_equal(fails, 0);

    /* the GGUF's template renders like jinja2 did for the same template */
    cJSON *chat = tt_load_json("tests/fixtures/tokenizer/chat.json");
    size_t n_chat = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(chat, "cases")) {
        if (strcmp(cJSON_GetObjectItem(c, "template_name")->valuestring, "smollm2")) continue;
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        size_t nm = (size_t)cJSON_GetArraySize(msgs);
        qv_chat_msg m[8];
        memset(m, 0, sizeof(m));
        for (size_t i = 0; i < nm && i < 8; i++) {
            m[i].role = cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, (int)i), "role")->valuestring;
            m[i].content =
                cJSON_GetObjectItem(cJSON_GetArrayItem(msgs, (int)i), "content")->valuestring;
        }
        char *out = NULL;
        assert_int_equal(
            qv_chat_render(tg, NULL, m, nm,
                           cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")), &out,
                           &err),
            QV_OK);
        assert_string_equal(out, cJSON_GetObjectItem(c, "expected")->valuestring);
        qv_free(out);
        n_chat++;
    }
    assert_true(n_chat > 5);
    cJSON_Delete(chat);
    cJSON_Delete(root);
    qv_tokenizer_free(tg);
    qv_tokenizer_free(tj);
}

int main(void) {
    const char *p = getenv("QV_SMOLLM2_GGUF");
    if (p)
        snprintf(g_path, sizeof(g_path), "%s", p);
    else
        snprintf(g_path, sizeof(g_path), "%s/%s", getenv("HOME") ? getenv("HOME") : "",
                 QV_SMOLLM2_GGUF_REL);
    if (!qv_test_exists(g_path)) {
        fprintf(stderr,
                "SKIP: %s not found (run scripts that fetch the model, or set "
                "QV_SMOLLM2_GGUF); tokenizer.json-based SmolLM2 tests still run\n",
                g_path);
        return 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_gguf_matches_oracle)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
