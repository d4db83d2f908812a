/*
 * test_adapter_cli.c - `quiver adapter inspect` (server/cli_adapter.c, compiled into this test
 * directly because server/ is not part of quiver_core): output for each kind, compatibility
 * with --model, the exact refusal for a mismatched base, pickle refusal, usage errors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/cli_adapter.c"
#include "test_util.h"

/* Runs qv_cli_adapter with stdout captured into out (NUL-terminated). Returns the exit code. */
static int run(char *out, size_t cap, int argc, const char **argv) {
    fflush(stdout);
    int saved = dup(1);
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    dup2(fileno(tmp), 1);
    char *args[16];
    assert_true(argc <= 16);
    for (int i = 0; i < argc; i++)
        args[i] = strdup(argv[i]);
    int rc = qv_cli_adapter(argc, args);
    for (int i = 0; i < argc; i++)
        free(args[i]);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    rewind(tmp);
    size_t n = fread(out, 1, cap - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return rc;
}

static char buf[16384];

static void test_inspect_kinds(void **state) {
    (void)state;
    static const struct {
        const char *dir, *needles[3];
    } cases[] = {
        {"tests/fixtures/adapters/tiny-llama-gqa/lora_patterns",
         {"kind: LORA", "down_proj layers 3/3  rank 6  scale 1.33333",
          "q_proj    layers 3/3  rank 2..4"}},
        {"tests/fixtures/adapters/tiny-llama-gqa/dora", {"dora: yes", "DoRA", "size: "}},
        {"tests/fixtures/adapters/tiny-llama-gqa/prefix_nvt5",
         {"kind: PREFIX_TUNING", "virtual tokens: 5 (per-layer K/V, 2 kv heads x 16)", "size: "}},
        {"tests/fixtures/adapters/tiny-llama-gqa/ia3",
         {"kind: IA3", "down_proj layers 3/3  input (feedforward) scaling",
          "k_proj    layers 3/3  output scaling"}},
        {"tests/fixtures/adapters/tiny-llama-gqa/par_bn",
         {"kind: BOTTLENECK", "parallel (par_bn)", "scaling: fixed 4"}},
        {"tests/fixtures/adapters/tiny-llama/adaption_prompt",
         {"kind: ADAPTION_PROMPT", "adapted layers: 0..1  adapter_len: 6", "size: "}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *argv[] = {"adapter", "inspect", qv_test_path(cases[i].dir), "--quiet"};
        assert_int_equal(run(buf, sizeof(buf), 4, argv), 0);
        for (int j = 0; j < 3; j++)
            if (!strstr(buf, cases[i].needles[j]))
                fail_msg("%s: missing \"%s\" in:\n%s", cases[i].dir, cases[i].needles[j], buf);
        assert_non_null(strstr(buf, "compatibility: not checked"));
    }
}

static void test_inspect_with_model(void **state) {
    (void)state;
    const char *ok[] = {"adapter",
                        "inspect",
                        qv_test_path("tests/fixtures/adapters/tiny-llama-gqa/lora_qv_r4"),
                        "--model",
                        qv_test_path("tests/fixtures/models/tiny-llama-gqa"),
                        "--quiet"};
    assert_int_equal(run(buf, sizeof(buf), 6, ok), 0);
    assert_non_null(strstr(buf, "compatible with "));
    assert_non_null(strstr(buf, ": yes"));
    assert_non_null(strstr(buf, "validated against a base model: yes"));
    /* the same adapter against a base with other shapes: the exact refusal */
    const char *bad[] = {"adapter",
                         "inspect",
                         qv_test_path("tests/fixtures/adapters/tiny-llama-gqa/lora_qv_r4"),
                         "--model",
                         qv_test_path("tests/fixtures/models/tiny-llama"),
                         "--quiet"};
    assert_int_equal(run(buf, sizeof(buf), 6, bad), 1);
    assert_non_null(strstr(buf, ": no: "));
    assert_non_null(strstr(buf, "layer 2 does not exist in the base model (2 layers)"));
    /* rank limit */
    const char *lim[] = {"adapter",
                         "inspect",
                         qv_test_path("tests/fixtures/adapters/tiny-llama-gqa/lora_qv_r4"),
                         "--model",
                         qv_test_path("tests/fixtures/models/tiny-llama-gqa"),
                         "--max-rank",
                         "2",
                         "--quiet"};
    assert_int_equal(run(buf, sizeof(buf), 8, lim), 1);
    assert_non_null(strstr(buf, "exceeds the limit max_rank=2"));
}

static void test_errors(void **state) {
    (void)state;
    const char *pk[] = {"adapter", "inspect",
                        qv_test_path("tests/fixtures/adapters_bad/pickle_peft")};
    assert_int_equal(run(buf, sizeof(buf), 3, pk), 1);
    const char *none[] = {"adapter", "inspect"};
    assert_int_equal(run(buf, sizeof(buf), 2, none), 2);
    const char *unk[] = {"adapter", "frobnicate"};
    assert_int_equal(run(buf, sizeof(buf), 2, unk), 2);
    const char *badopt[] = {"adapter", "inspect", "x", "--max-rank", "zero"};
    assert_int_equal(run(buf, sizeof(buf), 5, badopt), 2);
    const char *help[] = {"adapter", "--help"};
    assert_int_equal(run(buf, sizeof(buf), 2, help), 0);
    assert_non_null(strstr(buf, "usage: quiver adapter inspect"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inspect_kinds),
        cmocka_unit_test(test_inspect_with_model),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
