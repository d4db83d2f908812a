/*
 * test_tokenizer_misc.c - tokenizer robustness and API behaviour: huge inputs (1 MiB of one
 * character, 10^5 spaces / digits, NULs, mixed text) encode and decode under every pipeline,
 * byte-level round trips, accessors (vocab size, BOS/EOS/EOG, token text/id), clear load errors,
 * and injected allocation failures (every failure point returns QV_ERR_NOMEM, no leak/crash).
 */
#include <pthread.h>
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

static double encode_time(const qv_tokenizer *t, const char *s, size_t n, size_t *n_ids) {
    int32_t *ids = NULL;
    qv_error err = {0};
    double t0 = qv_time_s();
    qv_status st = qv_tokenizer_encode(t, s, n, false, &ids, n_ids, &err);
    double dt = qv_time_s() - t0;
    if (st) fprintf(stderr, "encode failed: %s\n", err.msg);
    assert_int_equal(st, QV_OK);
    /* whatever the input, decoding must give valid text without crashing */
    char *out = NULL;
    size_t on = 0;
    assert_int_equal(qv_tokenizer_decode(t, ids, *n_ids, false, &out, &on, &err), QV_OK);
    qv_free(out);
    qv_free(ids);
    return dt;
}

/* No wall-clock bound here: a sanitizer build on a loaded machine is 30x slower than release,
 * and speed is the benchmark's business (bench_tokenizer --adversarial prints these inputs'
 * MB/s and their 1 MiB / 128 KiB time ratio). A quadratic path would run for many minutes on
 * 1 MiB and hit ctest's timeout in the sanitizer builds. */
static void test_stress_inputs(void **s) {
    (void)s;
    const char *names[] = {"smollm2", "llama3", "qwen2", "llama2", "metaspace", "gpt2"};
    const size_t big = 1u << 20;
    char *buf = malloc(big + 1);
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        qv_tokenizer *t = load(names[k]);
        struct {
            const char *what;
            char c;
            size_t n;
        } runs[] = {{"1 MiB 'a'", 'a', big},
                    {"1e5 spaces", ' ', 100000},
                    {"1e5 digits", '7', 100000},
                    {"1 MiB NUL", 0, big},
                    {"1e5 newlines", '\n', 100000}};
        for (size_t r = 0; r < sizeof(runs) / sizeof(runs[0]); r++) {
            memset(buf, runs[r].c, runs[r].n);
            size_t n_ids;
            double dt = encode_time(t, buf, runs[r].n, &n_ids);
            fprintf(stderr, "[%s] %s: %zu ids in %.3f s\n", names[k], runs[r].what, n_ids, dt);
            assert_true(n_ids > 0);
        }
        /* 1 MiB of mixed text with invalid bytes sprinkled in */
        uint32_t x = 12345;
        const char *alphabet[] = {"a", "b",  " ", "  ",   "\n",       "1",          "é",  "你",
                                  "😀", "'s", ",", "\xff", "\xe2\x82", "<|im_end|>", "<s>"};
        size_t n = 0;
        while (n + 16 < big) {
            x = x * 1103515245u + 12345u;
            const char *a = alphabet[(x >> 16) % (sizeof(alphabet) / sizeof(alphabet[0]))];
            memcpy(buf + n, a, strlen(a));
            n += strlen(a);
        }
        size_t n_ids;
        double dt = encode_time(t, buf, n, &n_ids);
        fprintf(stderr, "[%s] 1 MiB mixed: %zu ids in %.3f s\n", names[k], n_ids, dt);
        assert_true(n_ids > 0);
        qv_tokenizer_free(t);
    }
    free(buf);
}

static void test_roundtrip(void **s) {
    (void)s;
    /* byte-level BPE without missing bytes is lossless (TOKENIZER.md 10) */
    const char *names[] = {"gpt2", "llama3"};
    for (size_t k = 0; k < 2; k++) {
        qv_tokenizer *t = load(names[k]);
        uint32_t x = 99;
        for (int i = 0; i < 300; i++) {
            char text[64];
            size_t n = 0;
            const char *pieces[] = {"a", "Z",  " ",    "\t", "\n", "9",        "é",
                                    "ж", "你", "🦙", "'",  "!",  "\xc2\xa0", "<|eot_id|>"};
            for (int j = 0; j < 8; j++) {
                x = x * 1664525u + 1013904223u;
                const char *p = pieces[(x >> 20) % 14];
                memcpy(text + n, p, strlen(p));
                n += strlen(p);
            }
            int32_t *ids = NULL;
            size_t ni = 0;
            qv_error err = {0};
            assert_int_equal(qv_tokenizer_encode(t, text, n, false, &ids, &ni, &err), QV_OK);
            char *out = NULL;
            size_t on = 0;
            assert_int_equal(qv_tokenizer_decode(t, ids, ni, false, &out, &on, &err), QV_OK);
            assert_int_equal(on, n);
            assert_memory_equal(out, text, n);
            qv_free(out);
            qv_free(ids);
        }
        qv_tokenizer_free(t);
    }
}

static void test_accessors(void **s) {
    (void)s;
    qv_tokenizer *t = load("smollm2");
    assert_int_equal(qv_tokenizer_n_vocab(t), 49152);
    assert_int_equal(qv_tokenizer_bos(t), 1); /* Instruct: bos_token <|im_start|> */
    assert_int_equal(qv_tokenizer_eos(t), 2);
    assert_true(qv_tokenizer_is_eog(t, 2));
    assert_true(qv_tokenizer_is_eog(t, 0)); /* <|endoftext|> */
    assert_false(qv_tokenizer_is_eog(t, 1));
    assert_false(qv_tokenizer_is_eog(t, 100));
    assert_true(qv_tokenizer_is_special(t, 16));
    assert_false(qv_tokenizer_is_special(t, 17));
    size_t len;
    assert_string_equal(qv_tokenizer_token_text(t, 1, &len), "<|im_start|>");
    assert_null(qv_tokenizer_token_text(t, 49152, &len));
    assert_null(qv_tokenizer_token_text(t, -1, &len));
    assert_int_equal(qv_tokenizer_token_id(t, "<|im_end|>", 10), 2);
    assert_int_equal(qv_tokenizer_token_id(t, "no such token", 13), -1);
    assert_string_equal(qv_chat_detect(t), "chatml");
    /* unknown ids are skipped by decode, like HF */
    int32_t ids[] = {-5, 49999, 28, 1000000};
    char *out = NULL;
    qv_error err = {0};
    assert_int_equal(qv_tokenizer_decode(t, ids, 4, false, &out, NULL, &err), QV_OK);
    assert_string_equal(out, ","); /* id 28 */
    qv_free(out);
    /* empty input */
    int32_t *e = NULL;
    size_t n = 5;
    assert_int_equal(qv_tokenizer_encode(t, "", 0, true, &e, &n, &err), QV_OK);
    assert_non_null(e);
    assert_int_equal(n, 0);
    qv_free(e);
    qv_tokenizer_free(t);

    /* a tokenizer.json path picks up the tokenizer_config.json next to it */
    t = load("smollm2/tokenizer.json");
    assert_int_equal(qv_tokenizer_bos(t), 1);
    assert_non_null(qv_tokenizer_chat_template(t));
    qv_tokenizer_free(t);

    t = load("llama3");
    assert_int_equal(qv_tokenizer_bos(t), qv_tokenizer_token_id(t, "<|begin_of_text|>", 17));
    assert_true(qv_tokenizer_is_eog(t, qv_tokenizer_token_id(t, "<|eot_id|>", 10)));
    assert_true(qv_tokenizer_is_eog(t, qv_tokenizer_token_id(t, "<|end_of_text|>", 15)));
    qv_tokenizer_free(t);
}

static qv_status load_str(const char *json, qv_error *err) {
    qv_tokenizer *t = NULL;
    qv_status st = qv_tokenizer_load_json_str(json, strlen(json), NULL, 0, &t, err);
    qv_tokenizer_free(t);
    if (st) fprintf(stderr, "  (expected) %s: %s\n", qv_status_str(st), err->msg);
    return st;
}

static void test_load_errors(void **s) {
    (void)s;
    qv_error err = {0};
    assert_int_equal(load_str("{", &err), QV_ERR_INVALID);
    assert_int_equal(load_str("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", &err),
                     QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "WordPiece"));
    assert_int_equal(load_str("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                              "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"}}",
                              &err),
                     QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "BertPreTokenizer"));
    assert_int_equal(load_str("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":"
                              "[\"a b\"]}}",
                              &err),
                     QV_ERR_INVALID);
    assert_int_equal(load_str("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                              "\"normalizer\":{\"type\":\"Lowercase\"}}",
                              &err),
                     QV_ERR_UNSUPPORTED);
    assert_int_equal(load_str("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},"
                              "\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                              "\"behavior\":\"Isolated\"}}",
                              &err),
                     QV_ERR_UNSUPPORTED);
    qv_tokenizer *t = NULL;
    assert_int_equal(qv_tokenizer_load_path("/nonexistent/dir", &t, &err), QV_ERR_NOT_FOUND);
    assert_null(t);
    /* a minimal valid tokenizer: no pre-tokenizer, no decoder (pieces joined with spaces) */
    const char *mini = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},"
                       "\"merges\":[[\"a\",\"b\"]]}}";
    assert_int_equal(qv_tokenizer_load_json_str(mini, strlen(mini), NULL, 0, &t, &err), QV_OK);
    int32_t *ids = NULL;
    size_t n = 0;
    assert_int_equal(qv_tokenizer_encode(t, "abxa", 4, true, &ids, &n, &err), QV_OK);
    assert_int_equal(n, 2); /* "x" is dropped: no unk token */
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 0);
    char *out = NULL;
    assert_int_equal(qv_tokenizer_decode(t, ids, n, false, &out, NULL, &err), QV_OK);
    assert_string_equal(out, "ab a");
    qv_free(out);
    qv_free(ids);
    qv_tokenizer_free(t);
}

static void test_alloc_failures(void **s) {
    (void)s;
    char *js = NULL, *cs = NULL;
    size_t jn = 0, cn = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(qv_test_path("tests/fixtures/tokenizer/llama3/tokenizer.json"),
                                  1u << 24, &js, &jn, &err),
                     QV_OK);
    const char *cfg = "{\"bos_token\":\"<|begin_of_text|>\",\"chat_template\":"
                      "\"<|start_header_id|><|end_header_id|>\"}";
    cs = qv_strdup(cfg);
    cn = strlen(cs);
    const char *text = "Hello <|eot_id|> wörld 123 🦙!";
    int ok_at = -1;
    for (int k = 0; k < 100000 && ok_at < 0; k += (k < 200 ? 1 : 97)) {
        qv_tokenizer *t = NULL;
        qv_alloc_fail_after(k);
        qv_status st = qv_tokenizer_load_json_str(js, jn, cs, cn, &t, &err);
        if (st == QV_OK) {
            int32_t *ids = NULL;
            size_t n = 0;
            st = qv_tokenizer_encode(t, text, strlen(text), true, &ids, &n, &err);
            char *out = NULL;
            if (st == QV_OK) st = qv_tokenizer_decode(t, ids, n, false, &out, NULL, &err);
            qv_chat_msg m = {.role = "user", .content = "hi"};
            char *prompt = NULL;
            if (st == QV_OK) st = qv_chat_render(t, NULL, &m, 1, true, &prompt, &err);
            qv_detok *d = NULL;
            if (st == QV_OK) st = qv_detok_create(t, &text, 1, false, &d);
            for (size_t i = 0; st == QV_OK && i < n; i++) {
                const char *o;
                size_t on;
                bool fin;
                st = qv_detok_push(d, ids[i], &o, &on, &fin);
            }
            qv_detok_free(d);
            qv_free(prompt);
            qv_free(out);
            qv_free(ids);
            if (st == QV_OK) ok_at = k;
        }
        qv_alloc_fail_after(-1);
        if (st != QV_OK) assert_int_equal(st, QV_ERR_NOMEM);
        qv_tokenizer_free(t);
    }
    fprintf(stderr, "all steps succeeded with %d allocations allowed\n", ok_at);
    assert_true(ok_at > 0);
    qv_free(js);
    qv_free(cs);
}

/* One tokenizer shared by several threads: every thread must get the single-threaded ids. */
typedef struct mt_arg {
    const qv_tokenizer *t;
    const char *text;
    size_t len;
    const int32_t *want;
    size_t n_want;
    int bad;
} mt_arg;

static void *mt_worker(void *p) {
    mt_arg *a = p;
    for (int r = 0; r < 20; r++) {
        int32_t *ids = NULL;
        size_t n = 0;
        qv_error err = {0};
        if (qv_tokenizer_encode(a->t, a->text, a->len, true, &ids, &n, &err) != QV_OK ||
            n != a->n_want || memcmp(ids, a->want, n * sizeof(*ids)))
            a->bad++;
        char *out = NULL;
        if (qv_tokenizer_decode(a->t, ids, n, false, &out, NULL, &err) != QV_OK) a->bad++;
        qv_free(out);
        qv_free(ids);
    }
    return NULL;
}

static void test_threads(void **s) {
    (void)s;
    const char *names[] = {"smollm2", "qwen2", "llama2"};
    const char *text =
        "Hello <|im_end|> wörld 12345, ‘quotes’ 你好 🦙\n\n  def f(x): return x";
    for (size_t k = 0; k < 3; k++) {
        qv_tokenizer *t = load(names[k]);
        int32_t *want = NULL;
        size_t n = 0;
        qv_error err = {0};
        assert_int_equal(qv_tokenizer_encode(t, text, strlen(text), true, &want, &n, &err), QV_OK);
        pthread_t th[4];
        mt_arg args[4];
        for (int i = 0; i < 4; i++) {
            args[i] = (mt_arg){t, text, strlen(text), want, n, 0};
            assert_int_equal(pthread_create(&th[i], NULL, mt_worker, &args[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(args[i].bad, 0);
        }
        qv_free(want);
        qv_tokenizer_free(t);
    }
}

/* qv_py_lstrip_len against Python's str.isspace(): the code points below are
 * [c for c in range(0x110000) if chr(c).isspace()] (Python 3.11); every other code point, each
 * encoded alone, is not stripped. */
static void test_py_lstrip(void **state) {
    (void)state;
    static const uint32_t py_space[] = {
        0x9,    0xa,    0xb,    0xc,    0xd,    0x1c,   0x1d,   0x1e,   0x1f,   0x20,
        0x85,   0xa0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
        0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000};
    size_t k = 0, n_space = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        char b[8];
        size_t n = cp < 0x80      ? (b[0] = (char)cp, 1)
                   : cp < 0x800   ? (b[0] = (char)(0xC0 | cp >> 6), 2)
                   : cp < 0x10000 ? (b[0] = (char)(0xE0 | cp >> 12), 3)
                                  : (b[0] = (char)(0xF0 | cp >> 18), 4);
        for (size_t j = 1; j < n; j++)
            b[j] = (char)(0x80 | ((cp >> (6 * (n - 1 - j))) & 0x3F));
        b[n] = 'x';
        const bool want = k < QV_ARRAY_LEN(py_space) && py_space[k] == cp;
        k += want;
        n_space += want;
        if (qv_py_lstrip_len(b, n + 1) != (want ? n : 0))
            fail_msg("U+%04X: stripped %zu bytes, want %zu", (unsigned)cp,
                     qv_py_lstrip_len(b, n + 1), want ? n : 0);
    }
    assert_int_equal(n_space, QV_ARRAY_LEN(py_space));
    /* runs of them; invalid UTF-8 and NUL stop it */
    assert_int_equal(qv_py_lstrip_len(" \t\xc2\xa0\xe3\x80\x80word ", 9), 7);
    assert_int_equal(qv_py_lstrip_len("  \xe3\x80", 4), 2);
    assert_int_equal(qv_py_lstrip_len(" \0 ", 3), 1);
    assert_int_equal(qv_py_lstrip_len("", 0), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stress_inputs),  cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_accessors),      cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_alloc_failures), cmocka_unit_test(test_threads),
        cmocka_unit_test(test_py_lstrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
