/*
 * test_detok.c - the streaming detokenizer: per-step output identical to HF
 * `tokenizers.decoders.DecodeStream` (skip_special on and off) for every fixture string and
 * tokenizer; stop strings (truncation, hold-back of partial matches, matches spanning tokens);
 * end-of-generation ids; UTF-8 hold-back and flush (U+FFFD for a dangling sequence).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "test_tokenizer_util.h"

static qv_tokenizer *load(const char *name) {
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/tokenizer/%s", name);
    qv_tokenizer *t = NULL;
    qv_error err = {0};
    if (qv_tokenizer_load_path(qv_test_path(rel), &t, &err)) fprintf(stderr, "%s\n", err.msg);
    assert_non_null(t);
    return t;
}

static size_t check_stream(const char *name) {
    qv_tokenizer *t = load(name);
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/tokenizer/cases_%s.json", name);
    cJSON *root = tt_load_json(rel);
    assert_non_null(root);
    size_t fails = 0, steps = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        if (!cJSON_GetObjectItem(c, "stream")) continue;
        size_t tn;
        char *text = tt_unhex(cJSON_GetObjectItem(c, "hex")->valuestring, &tn);
        for (int skip = 0; skip < 2; skip++) {
            const cJSON *want = cJSON_GetObjectItem(c, skip ? "stream_skip" : "stream");
            const cJSON *ids = cJSON_GetObjectItem(c, "ids");
            qv_detok *d = NULL;
            assert_int_equal(qv_detok_create(t, NULL, 0, skip == 1, &d), QV_OK);
            for (int i = 0; i < cJSON_GetArraySize(ids); i++) {
                int32_t id = (int32_t)cJSON_GetArrayItem(ids, i)->valuedouble;
                const char *out;
                size_t on;
                bool fin = false;
                assert_int_equal(qv_detok_push(d, id, &out, &on, &fin), QV_OK);
                steps++;
                if (qv_tokenizer_is_eog(t, id)) {
                    /* generation ends: the EOG id itself adds no text */
                    if (!fin) fails++;
                    break;
                }
                const cJSON *w = cJSON_GetArrayItem(want, i);
                const char *wh = cJSON_IsNull(w) ? "" : w->valuestring;
                char what[96];
                snprintf(what, sizeof(what), "stream step %d (skip=%d)", i, skip);
                if (fin || !tt_bytes_equal(what, text, tn, out, on, wh)) fails++;
            }
            qv_detok_free(d);
        }
        free(text);
    }
    fprintf(stderr, "[%s] %zu stream steps, %zu mismatches\n", name, steps, fails);
    cJSON_Delete(root);
    qv_tokenizer_free(t);
    return fails;
}

static void test_stream_all(void **s) {
    (void)s;
    const char *names[] = {"smollm2",   "gpt2",  "llama3", "qwen2",           "llama2", "spmunk",
                           "metaspace", "added", "spm",    "metaspace_split", "splits"};
    size_t fails = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        fails += check_stream(names[i]);
    assert_int_equal(fails, 0);
}

static bool g_include_stop; /* run_stream_min: vLLM include_stop_str_in_output */

/* Feeds the ids of `text` to a stream with stop strings armed after min_tokens pushes and
 * returns everything emitted (push + flush). */
static char *run_stream_min(const qv_tokenizer *t, const char *text, const char *const *stops,
                            size_t n_stops, size_t min_tokens, bool *stopped, int *stop_idx,
                            size_t *max_chunk_pending) {
    int32_t *ids = NULL;
    size_t n = 0;
    qv_error err = {0};
    assert_int_equal(qv_tokenizer_encode(t, text, strlen(text), false, &ids, &n, &err), QV_OK);
    qv_detok *d = NULL;
    assert_int_equal(qv_detok_create(t, stops, n_stops, true, &d), QV_OK);
    qv_detok_set_min_tokens(d, min_tokens);
    qv_detok_set_include_stop(d, g_include_stop);
    char *acc = calloc(1, 4096);
    size_t an = 0;
    bool fin = false;
    *max_chunk_pending = 0;
    for (size_t i = 0; i < n && !fin; i++) {
        const char *out;
        size_t on;
        assert_int_equal(qv_detok_push(d, ids[i], &out, &on, &fin), QV_OK);
        memcpy(acc + an, out, on);
        an += on;
    }
    *stopped = fin;
    if (!fin) {
        const char *out;
        size_t on;
        assert_int_equal(qv_detok_flush(d, &out, &on), QV_OK);
        memcpy(acc + an, out, on);
        an += on;
    }
    *stop_idx = qv_detok_stop_index(d);
    qv_detok_free(d);
    qv_free(ids);
    return acc;
}

static char *run_stream(const qv_tokenizer *t, const char *text, const char *const *stops,
                        size_t n_stops, bool *stopped, int *stop_idx, size_t *max_chunk_pending) {
    return run_stream_min(t, text, stops, n_stops, 0, stopped, stop_idx, max_chunk_pending);
}

static void test_stop_strings(void **s) {
    (void)s;
    qv_tokenizer *t = load("smollm2");
    const char *stops[] = {"\nUser:", "STOP", "🦙"};
    bool stopped;
    int idx;
    size_t mp;
    char *out = run_stream(t, "Hello there.\nUser: next question", stops, 3, &stopped, &idx, &mp);
    assert_true(stopped);
    assert_int_equal(idx, 0);
    assert_string_equal(out, "Hello there.");
    free(out);
    /* a partial stop at the end is flushed when generation ends without the match */
    out = run_stream(t, "almost \nUse", stops, 3, &stopped, &idx, &mp);
    assert_false(stopped);
    assert_int_equal(idx, -1);
    assert_string_equal(out, "almost \nUse");
    free(out);
    /* stop string made of a multi-token emoji */
    out = run_stream(t, "llama 🦙 after", stops, 3, &stopped, &idx, &mp);
    assert_true(stopped);
    assert_int_equal(idx, 2);
    assert_string_equal(out, "llama ");
    free(out);
    qv_tokenizer_free(t);
}

/* vLLM include_stop_str_in_output: the matched stop string ends the text; what follows it is
 * still cut, and text without a match is unchanged. */
static void test_include_stop(void **s) {
    (void)s;
    qv_tokenizer *t = load("smollm2");
    const char *stops[] = {"\nUser:", "STOP", "🦙"};
    static const struct {
        const char *text, *want;
        int idx;
    } cases[] = {{"Hello there.\nUser: next question", "Hello there.\nUser:", 0},
                 {"llama 🦙 after", "llama 🦙", 2},
                 {"aSTOPbSTOP", "aSTOP", 1},
                 {"almost \nUse", "almost \nUse", -1}};
    g_include_stop = true;
    for (size_t c = 0; c < QV_ARRAY_LEN(cases); c++) {
        bool stopped;
        int idx;
        size_t mp;
        char *out = run_stream(t, cases[c].text, stops, 3, &stopped, &idx, &mp);
        assert_int_equal(stopped, cases[c].idx >= 0);
        assert_int_equal(idx, cases[c].idx);
        assert_string_equal(out, cases[c].want);
        free(out);
    }
    g_include_stop = false;
    /* an end-of-generation token (<|im_end|>, 2): its text ends the answer only with
     * include_stop and the special tokens kept, as vLLM's detokenizer gives it */
    static const struct {
        bool include, skip;
        const char *want;
    } eog[] = {{true, false, "Hi there<|im_end|>"},
               {true, true, "Hi there"},
               {false, false, "Hi there"},
               {false, true, "Hi there"}};
    int32_t *ids = NULL;
    size_t n = 0;
    qv_error err = {0};
    assert_int_equal(qv_tokenizer_encode(t, "Hi there", 8, false, &ids, &n, &err), QV_OK);
    for (size_t c = 0; c < QV_ARRAY_LEN(eog); c++) {
        qv_detok *d = NULL;
        assert_int_equal(qv_detok_create(t, NULL, 0, eog[c].skip, &d), QV_OK);
        qv_detok_set_include_stop(d, eog[c].include);
        char out[64] = "";
        size_t o = 0;
        bool finished = false;
        for (size_t i = 0; i <= n; i++) {
            const char *text = NULL;
            size_t len = 0;
            assert_false(finished);
            assert_int_equal(qv_detok_push(d, i < n ? ids[i] : 2, &text, &len, &finished), QV_OK);
            assert_true(o + len < sizeof(out));
            memcpy(out + o, text, len);
            o += len;
        }
        out[o] = '\0';
        assert_true(finished);
        assert_string_equal(out, eog[c].want);
        qv_detok_free(d);
    }
    qv_free(ids);
    qv_tokenizer_free(t);
}

/* vLLM min_tokens: stop strings match only in text after the first n tokens. */
static void test_stop_after_min_tokens(void **s) {
    (void)s;
    qv_tokenizer *t = load("smollm2");
    const char *stops[] = {"."};
    /* "One", ".", " Two", ".", " Three", ...: the first '.' is token 2, the second token 4 */
    static const struct {
        size_t min;
        const char *want;
    } cases[] = {{0, "One"}, {2, "One. Two"}, {3, "One. Two"}, {4, "One. Two. Three"}};
    for (size_t c = 0; c < QV_ARRAY_LEN(cases); c++) {
        bool stopped;
        int idx;
        size_t mp;
        char *out = run_stream_min(t, "One. Two. Three. Four.", stops, 1, cases[c].min, &stopped,
                                   &idx, &mp);
        assert_true(stopped);
        assert_int_equal(idx, 0);
        assert_string_equal(out, cases[c].want);
        free(out);
    }
    qv_tokenizer_free(t);
}

static void test_holdback(void **s) {
    (void)s;
    qv_tokenizer *t = load("smollm2");
    const char *stops[] = {"STOP"};
    int32_t *ids = NULL;
    size_t n = 0;
    qv_error err = {0};
    const char *text = "xx ST and 🦙";
    assert_int_equal(qv_tokenizer_encode(t, text, strlen(text), false, &ids, &n, &err), QV_OK);
    qv_detok *d = NULL;
    assert_int_equal(qv_detok_create(t, stops, 1, false, &d), QV_OK);
    char acc[256] = {0};
    size_t an = 0;
    for (size_t i = 0; i < n; i++) {
        const char *out;
        size_t on;
        bool fin;
        assert_int_equal(qv_detok_push(d, ids[i], &out, &on, &fin), QV_OK);
        assert_false(fin);
        memcpy(acc + an, out, on);
        an += on;
        /* never emit the start of a possible stop string, never split a character */
        acc[an] = 0;
        assert_false(an >= 1 && acc[an - 1] == 'S');
        assert_false(an >= 2 && !memcmp(acc + an - 2, "ST", 2));
        assert_false(an >= 3 && !memcmp(acc + an - 3, "STO", 3));
        const char *f0 = strchr(acc, '\xF0');
        assert_true(!f0 || (size_t)(acc + an - f0) >= 4);
    }
    acc[an] = 0;
    assert_string_equal(acc, "xx ST and 🦙");
    /* the EOG id finishes the stream and adds no text */
    const char *out;
    size_t on;
    bool fin = false;
    assert_int_equal(qv_detok_push(d, 2 /* <|im_end|> */, &out, &on, &fin), QV_OK);
    assert_true(fin);
    assert_int_equal(on, 0);
    qv_detok_free(d);
    qv_free(ids);

    /* a dangling partial character becomes U+FFFD at flush */
    int32_t llama_first = -1;
    const char *emoji = "🦙";
    assert_int_equal(qv_tokenizer_encode(t, emoji, strlen(emoji), false, &ids, &n, &err), QV_OK);
    assert_true(n >= 2);
    llama_first = ids[0];
    assert_int_equal(qv_detok_create(t, NULL, 0, false, &d), QV_OK);
    assert_int_equal(qv_detok_push(d, llama_first, &out, &on, &fin), QV_OK);
    assert_int_equal(on, 0); /* held back: incomplete UTF-8 */
    assert_int_equal(qv_detok_flush(d, &out, &on), QV_OK);
    assert_int_equal(on, 3);
    assert_memory_equal(out, "\xEF\xBF\xBD", 3);
    qv_detok_free(d);
    qv_free(ids);
    qv_tokenizer_free(t);
}

/* A stream primed with the ids before the generated ones (qv_detok_prime) emits exactly
 * decode(all) - decode(before) (TOKENIZER.md 8.4: what an OpenAI-compatible server streams;
 * SentencePiece decoders would strip the leading space of a first token decoded alone). The
 * reference is the tokenizer's decode, itself checked against HF in test_tokenizer. */
static size_t check_primed(const char *name, size_t *compared) {
    qv_tokenizer *t = load(name);
    char rel[256];
    snprintf(rel, sizeof(rel), "tests/fixtures/tokenizer/cases_%s.json", name);
    cJSON *root = tt_load_json(rel);
    assert_non_null(root);
    size_t fails = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        if (!cJSON_GetObjectItem(c, "stream")) continue;
        const cJSON *jids = cJSON_GetObjectItem(c, "ids_special");
        const int n = cJSON_GetArraySize(jids);
        int32_t ids[512];
        if (n < 2 || n > 512) continue;
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)cJSON_GetArrayItem(jids, i)->valuedouble;
        for (int k = 1; k < n; k += (n / 2 > 1 ? n / 2 : 1)) {
            char *head = NULL, *full = NULL;
            size_t hn = 0, fn = 0;
            qv_error err = {0};
            assert_int_equal(qv_tokenizer_decode(t, ids, (size_t)k, true, &head, &hn, &err), 0);
            assert_int_equal(qv_tokenizer_decode(t, ids, (size_t)n, true, &full, &fn, &err), 0);
            bool eog = false;
            for (int i = k; i < n; i++)
                eog = eog || qv_tokenizer_is_eog(t, ids[i]);
            /* comparable: the prompt's text is a prefix of the whole, ends on a character */
            if (!eog && hn <= fn && !memcmp(head, full, hn) &&
                !(hn >= 3 && !memcmp(head + hn - 3, "\xEF\xBF\xBD", 3))) {
                qv_detok *d = NULL;
                assert_int_equal(qv_detok_create(t, NULL, 0, true, &d), QV_OK);
                assert_int_equal(qv_detok_prime(d, ids, (size_t)k), QV_OK);
                char *acc = calloc(1, fn + 64);
                size_t an = 0;
                const char *out;
                size_t on;
                bool fin = false;
                for (int i = k; i < n; i++) {
                    assert_int_equal(qv_detok_push(d, ids[i], &out, &on, &fin), QV_OK);
                    if (an + on > fn + 32) break;
                    memcpy(acc + an, out, on), an += on;
                }
                assert_int_equal(qv_detok_flush(d, &out, &on), QV_OK);
                if (an + on <= fn + 32) memcpy(acc + an, out, on), an += on;
                if (an != fn - hn || memcmp(acc, full + hn, an)) {
                    if (fails < 3)
                        fprintf(stderr, "[%s] primed with %d of %d ids: got '%.*s', want '%.*s'\n",
                                name, k, n, (int)an, acc, (int)(fn - hn), full + hn);
                    fails++;
                }
                (*compared)++;
                free(acc);
                qv_detok_free(d);
            }
            qv_free(head);
            qv_free(full);
        }
    }
    cJSON_Delete(root);
    qv_tokenizer_free(t);
    return fails;
}

static void test_primed(void **s) {
    (void)s;
    const char *names[] = {"smollm2",   "gpt2",  "llama3", "qwen2",           "llama2", "spmunk",
                           "metaspace", "added", "spm",    "metaspace_split", "splits"};
    size_t fails = 0, compared = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        fails += check_primed(names[i], &compared);
    fprintf(stderr, "primed streams: %zu compared, %zu mismatches\n", compared, fails);
    assert_true(compared >= 500);
    assert_int_equal(fails, 0);

    /* the case the priming exists for: a SentencePiece word after a prompt keeps its space */
    qv_tokenizer *t = load("llama2");
    int32_t *ids = NULL;
    size_t n = 0;
    qv_error err = {0};
    assert_int_equal(qv_tokenizer_encode(t, "Hello world", 11, true, &ids, &n, &err), QV_OK);
    assert_int_equal(n, 4); /* <s> ▁Hello ▁wo rld */
    const int32_t *p = ids, *g = ids + 2;
    const size_t np = 2, ng = 2;
    for (int primed = 0; primed < 2; primed++) {
        qv_detok *d = NULL;
        assert_int_equal(qv_detok_create(t, NULL, 0, true, &d), QV_OK);
        if (primed) assert_int_equal(qv_detok_prime(d, p, np), QV_OK);
        char acc[64] = "";
        const char *out;
        size_t on;
        bool fin;
        for (size_t i = 0; i < ng; i++) {
            assert_int_equal(qv_detok_push(d, g[i], &out, &on, &fin), QV_OK);
            strncat(acc, out, on);
        }
        assert_int_equal(qv_detok_flush(d, &out, &on), QV_OK);
        strncat(acc, out, on);
        assert_string_equal(acc, primed ? " world" : "world");
        if (primed) /* priming after a push is refused */
            assert_int_equal(qv_detok_prime(d, p, np), QV_ERR_INVALID);
        qv_detok_free(d);
    }
    qv_free(ids);
    qv_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_all),   cmocka_unit_test(test_include_stop),
        cmocka_unit_test(test_stop_strings), cmocka_unit_test(test_stop_after_min_tokens),
        cmocka_unit_test(test_holdback),     cmocka_unit_test(test_primed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
