/*
 * test_chat.c - chat templates: the C formatter's output must be byte-identical to jinja2's
 * rendering of the real template texts (SmolLM2 from its GGUF, Qwen2.5, Llama-3, Llama-2-chat,
 * Mistral-7B-Instruct; fixture tests/fixtures/tokenizer/chat.json), family detection, name
 * overrides, llama.cpp-style Mistral formats, and clear errors for unknown templates/names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <time.h>
#include <cmocka.h>

#include "test_tokenizer_util.h"

/* The gpt2 fixture tokenizer with a config carrying the template and bos/eos strings. */
static qv_tokenizer *tok_with_template(const char *tmpl, const char *bos, const char *eos) {
    char *js = NULL;
    size_t jn = 0;
    qv_error err = {0};
    assert_int_equal(qv_read_file(qv_test_path("tests/fixtures/tokenizer/gpt2/tokenizer.json"),
                                  1u << 24, &js, &jn, &err),
                     QV_OK);
    cJSON *cfg = cJSON_CreateObject();
    if (tmpl) cJSON_AddStringToObject(cfg, "chat_template", tmpl);
    if (bos) cJSON_AddStringToObject(cfg, "bos_token", bos);
    if (eos) cJSON_AddStringToObject(cfg, "eos_token", eos);
    char *cs = cJSON_PrintUnformatted(cfg);
    qv_tokenizer *t = NULL;
    assert_int_equal(qv_tokenizer_load_json_str(js, jn, cs, strlen(cs), &t, &err), QV_OK);
    free(cs);
    cJSON_Delete(cfg);
    qv_free(js);
    return t;
}

static const char *jstr_or_null(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Whether a rendering is the golden one; prints both when not. */
static bool same_render(const cJSON *c, const char *what, bool gen, int named, qv_status st,
                        const char *out, const char *want, const qv_error *err) {
    if (!st && !strcmp(out, want)) return true;
    fprintf(stderr, "  MISMATCH %s / %s %s gen=%d named=%d: %s\n", jstr_or_null(c, "template_name"),
            jstr_or_null(c, "conversation"), what, gen, named, st ? err->msg : "");
    tt_print_bytes("got ", out ? out : "", out ? strlen(out) : 0);
    tt_print_bytes("want", want, strlen(want));
    return false;
}

static void test_chat_golden(void **s) {
    (void)s;
    cJSON *root = tt_load_json("tests/fixtures/tokenizer/chat.json");
    assert_non_null(root);
    size_t fails = 0, n = 0;
    const cJSON *c;
    const cJSON *templates = cJSON_GetObjectItem(root, "templates");
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *fam = jstr_or_null(c, "family");
        const char *tname = jstr_or_null(c, "template_name");
        qv_tokenizer *t =
            tok_with_template(jstr_or_null(templates, tname), jstr_or_null(c, "bos_token"),
                              jstr_or_null(c, "eos_token"));
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        size_t nm = (size_t)cJSON_GetArraySize(msgs);
        qv_chat_msg *m = calloc(nm + 1, sizeof(*m));
        for (size_t i = 0; i < nm; i++) {
            const cJSON *x = cJSON_GetArrayItem(msgs, (int)i);
            m[i].role = jstr_or_null(x, "role");
            m[i].content = jstr_or_null(x, "content");
        }
        bool gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        const char *want = jstr_or_null(c, "expected");
        const char *det = qv_chat_detect(t);
        if (!det || strcmp(det, fam)) {
            fprintf(stderr, "  %s: detected %s, want %s\n", jstr_or_null(c, "template_name"),
                    det ? det : "(none)", fam);
            fails++;
        }
        for (int ov = 0; ov < 2; ov++) {
            char *out = NULL;
            qv_error err = {0};
            qv_status st = qv_chat_render(t, ov ? fam : NULL, m, nm, gen, &out, &err);
            n++;
            fails += !same_render(c, "", gen, ov, st, out, want, &err);
            qv_free(out);
        }
        free(m);
        qv_tokenizer_free(t);
    }
    fprintf(stderr, "chat: %zu renderings, %zu mismatches\n", n, fails);
    assert_true(n > 40);
    assert_int_equal(fails, 0);
    cJSON_Delete(root);
}

static char *render(qv_tokenizer *t, const char *name, const qv_chat_msg *m, size_t n, bool gen) {
    char *out = NULL;
    qv_error err = {0};
    qv_status st = qv_chat_render(t, name, m, n, gen, &out, &err);
    if (st) fprintf(stderr, "render %s: %s\n", name ? name : "(detect)", err.msg);
    assert_int_equal(st, QV_OK);
    return out;
}

static void test_mistral_formats(void **s) {
    (void)s;
    qv_tokenizer *t = tok_with_template(NULL, "<s>", "</s>");
    qv_chat_msg m[] = {{.role = "system", .content = "S"},
                       {.role = "user", .content = "U1"},
                       {.role = "assistant", .content = "A1"},
                       {.role = "user", .content = "U2"}};
    /* llama.cpp formats (llama-chat.cpp, Mistral cookbook), with the BOS text first */
    struct {
        const char *name, *want;
    } cases[] = {
        {"mistral-v1", "<s> [INST] S\n\nU1 [/INST] A1</s> [INST] U2 [/INST]"},
        {"mistral-v3", "<s>[INST] S\n\nU1[/INST] A1</s>[INST] U2[/INST]"},
        {"mistral-v3-tekken", "<s>[INST]S\n\nU1[/INST]A1</s>[INST]U2[/INST]"},
        {"mistral-v7",
         "<s>[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U1[/INST] A1</s>[INST] U2[/INST]"},
        {"mistral-v7-tekken",
         "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]U1[/INST]A1</s>[INST]U2[/INST]"},
        {"llama2", "<s>[INST] S\nU1 [/INST]A1</s>[INST] U2 [/INST]"},
        {"llama2-sys", "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s>[INST] U2 [/INST]"},
        {"llama2-sys-bos",
         "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s><s>[INST] U2 [/INST]"},
        {"llama2-sys-strip", "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]A1</s>[INST] U2 [/INST]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = render(t, cases[i].name, m, 4, true);
        if (strcmp(out, cases[i].want)) {
            fprintf(stderr, "%s:\n", cases[i].name);
            tt_print_bytes("got ", out, strlen(out));
            tt_print_bytes("want", cases[i].want, strlen(cases[i].want));
        }
        assert_string_equal(out, cases[i].want);
        qv_free(out);
    }
    qv_tokenizer_free(t);
}

static void test_detection_and_errors(void **s) {
    (void)s;
    struct {
        const char *tmpl, *want;
    } det[] = {
        {"{{ '<|im_start|>' }}", "chatml"},
        {"<|im_start|><|im_sep|>", NULL}, /* phi4 */
        {"{{ bos_token }}[SYSTEM_PROMPT][INST]", "mistral-v7"},
        {"{{ ' [INST] ' + system_message }}", "mistral-v1"},
        {"{{ '[INST]' }}[AVAILABLE_TOOLS]", "mistral-v3"},
        {"{{ \"[INST]\" }}[AVAILABLE_TOOLS]", "mistral-v3-tekken"},
        {"<|start_header_id|>x<|end_header_id|>", "llama3"},
        {"<|start_header_id|>x<|end_header_id|>Cutting Knowledge Date: ", "llama3.1"},
        {"<|start_header_id|><|end_header_id|>Cutting Knowledge Date: strftime_now", "llama3.2"},
        {"{% for m in messages %}{{ m.content }}{% endfor %}", NULL},
    };
    for (size_t i = 0; i < sizeof(det) / sizeof(det[0]); i++) {
        qv_tokenizer *t = tok_with_template(det[i].tmpl, NULL, NULL);
        const char *got = qv_chat_detect(t);
        if (!det[i].want)
            assert_null(got);
        else {
            assert_non_null(got);
            assert_string_equal(got, det[i].want);
        }
        qv_tokenizer_free(t);
    }
    qv_tokenizer *t = tok_with_template("{{ messages }}", NULL, NULL);
    qv_chat_msg m[] = {{.role = "user", .content = "hi"}};
    char *out = NULL;
    qv_error err = {0};
    assert_int_equal(qv_chat_render(t, NULL, m, 1, true, &out, &err), QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "template"));
    assert_int_equal(qv_chat_render(t, "no-such-format", m, 1, true, &out, &err),
                     QV_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "no-such-format"));
    /* a name on a tokenizer without a ChatML template: the bare format */
    out = render(t, "chatml", m, 1, true);
    assert_string_equal(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    qv_free(out);
    qv_tokenizer_free(t);
    /* Llama-2-chat refuses non-alternating roles like the Jinja template */
    t = tok_with_template(NULL, "<s>", "</s>");
    qv_chat_msg bad[] = {{.role = "user", .content = "a"}, {.role = "user", .content = "b"}};
    assert_int_equal(qv_chat_render(t, "llama2-chat", bad, 2, false, &out, &err), QV_ERR_INVALID);
    /* a tool result: ChatML and Llama 3 write the role's name, the [INST] families refuse it */
    qv_chat_msg tool[] = {{.role = "user", .content = "w?"},
                          {.role = "assistant", .content = "[{\"name\":\"f\",\"arguments\":{}}]"},
                          {.role = "tool", .content = "sunny"}};
    out = render(t, "chatml", tool, 3, true);
    assert_string_equal(out,
                        "<|im_start|>user\nw?<|im_end|>\n<|im_start|>assistant\n[{\"name\":"
                        "\"f\",\"arguments\":{}}]<|im_end|>\n<|im_start|>tool\nsunny<|im_end|>\n"
                        "<|im_start|>assistant\n");
    qv_free(out);
    out = render(t, "llama3", tool + 2, 1, false);
    assert_string_equal(out, "<s><|start_header_id|>tool<|end_header_id|>\n\nsunny<|eot_id|>");
    qv_free(out);
    static const char *const inst[] = {"llama2-chat", "llama2",     "llama2-sys",
                                       "mistral-v1",  "mistral-v3", "mistral-v7"};
    for (size_t i = 0; i < QV_ARRAY_LEN(inst); i++) {
        assert_int_equal(qv_chat_render(t, inst[i], tool, 3, true, &out, &err), QV_ERR_INVALID);
        assert_non_null(strstr(err.msg, "no role 'tool'"));
    }
    qv_tokenizer_free(t);
}

/* Tools, calls and tool results by the Qwen2.5, Llama 3.1 / 3.2, Mistral v0.3 and Nemo templates
 * (tests/fixtures/tokenizer/chat_tools.json, from tests/oracle/gen_chat_tools_fixtures.py:
 * jinja2 with transformers' environment), detected and named; where the template raised an
 * exception, quiver must refuse. */
static void test_chat_tools_golden(void **s) {
    (void)s;
    cJSON *root = tt_load_json("tests/fixtures/tokenizer/chat_tools.json");
    cJSON *plain = tt_load_json("tests/fixtures/tokenizer/chat.json");
    assert_non_null(root);
    assert_non_null(plain);
    const cJSON *templates = cJSON_GetObjectItem(plain, "templates");
    const cJSON *own = cJSON_GetObjectItem(root, "templates");
    size_t fails = 0, n = 0, n_calls = 0, refused = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *tname = jstr_or_null(c, "template_name"), *fam = jstr_or_null(c, "family");
        const char *src =
            jstr_or_null(own, tname) ? jstr_or_null(own, tname) : jstr_or_null(templates, tname);
        const char *eos = jstr_or_null(c, "eos_token");
        qv_tokenizer *t =
            tok_with_template(src, jstr_or_null(c, "bos_token"), eos ? eos : "<|im_end|>");
        assert_true(qv_chat_renders_tools(t, NULL));
        assert_string_equal(qv_chat_detect(t), fam);
        assert_int_equal(qv_chat_tools_format(t, NULL),
                         !strcmp(fam, "qwen2.5")       ? QV_CHAT_TOOLS_HERMES
                         : !strncmp(fam, "mistral", 7) ? QV_CHAT_TOOLS_MISTRAL
                                                       : QV_CHAT_TOOLS_LLAMA_JSON);
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        const size_t nm = (size_t)cJSON_GetArraySize(msgs);
        qv_chat_msg *m = calloc(nm + 1, sizeof(*m));
        qv_chat_call *calls = calloc(64, sizeof(*calls));
        size_t used = 0;
        for (size_t i = 0; i < nm; i++) {
            const cJSON *x = cJSON_GetArrayItem(msgs, (int)i);
            m[i].role = jstr_or_null(x, "role");
            m[i].content = jstr_or_null(x, "content");
            m[i].tool_call_id = jstr_or_null(x, "tool_call_id");
            m[i].calls = calls + used;
            const cJSON *k;
            cJSON_ArrayForEach(k, cJSON_GetObjectItem(x, "calls")) {
                calls[used].name = jstr_or_null(k, "name");
                calls[used].id = jstr_or_null(k, "id");
                calls[used++].arguments = jstr_or_null(k, "arguments_text");
                m[i].n_calls++;
            }
        }
        n_calls += used;
        const char *tools = jstr_or_null(c, "tools_text");
        const bool gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        const char *want = jstr_or_null(c, "expected");
        for (int named = 0; named < 2; named++) {
            char *out = NULL;
            qv_error err = {0};
            const qv_status st = qv_chat_render_kw(
                t, named ? fam : NULL, m, nm, tools, tools ? strlen(tools) : 0, gen,
                jstr_or_null(c, "date"), jstr_or_null(c, "date_string"), &out, &err);
            n++;
            if (!want) { /* the template raised: refused with its message */
                const char *raised = jstr_or_null(c, "error");
                const bool ok = st == QV_ERR_INVALID && !out && raised &&
                                !strncmp(err.msg, raised, strlen(raised));
                if (!ok)
                    fprintf(stderr, "  NOT REFUSED %s / %s: %d '%s' (want '%s')\n", tname,
                            jstr_or_null(c, "conversation"), st, err.msg, raised);
                fails += !ok;
                refused += ok;
            } else {
                fails +=
                    !same_render(c, tools ? "tools" : "no tools", gen, named, st, out, want, &err);
            }
            qv_free(out);
        }
        free(calls);
        free(m);
        qv_tokenizer_free(t);
    }
    fprintf(stderr,
            "chat tools: %zu renderings (%zu calls, %zu refused as the template), %zu "
            "mismatches\n",
            n, n_calls, refused, fails);
    assert_true(n >= 300);
    assert_true(refused >= 100);
    assert_int_equal(fails, 0);
    cJSON_Delete(root);
    cJSON_Delete(plain);
}

/* Renders with the allocator failing after k allocations, k = 0, 1, ... (names alternating):
 * each attempt fails with QV_ERR_NOMEM and no output, or succeeds (with `must_hold` in it). */
static void oom_sweep(qv_tokenizer *t, const char *const names[2], const qv_chat_msg *m, size_t n,
                      const char *tools, const char *date, const char *must_hold) {
    for (long k = 0; k < 400; k++) {
        char *out = NULL;
        qv_error err = {0};
        qv_alloc_fail_after(k);
        const qv_status st = qv_chat_render_dated(t, names[k % 2], m, n, tools, strlen(tools), true,
                                                  date, &out, &err);
        qv_alloc_fail_after(-1);
        if (st == QV_OK) {
            if (must_hold) assert_non_null(strstr(out, must_hold));
            qv_free(out);
            if (k > 200) break;
            continue;
        }
        assert_int_equal(st, QV_ERR_NOMEM);
        assert_null(out);
    }
}

/* Templates that do not write tools: calls after the content as compact JSON, tools ignored;
 * bad calls and tools refused. */
static void test_calls_as_text(void **s) {
    (void)s;
    qv_tokenizer *t = tok_with_template(NULL, "<s>", "</s>");
    assert_false(qv_chat_renders_tools(t, "chatml"));
    assert_true(qv_chat_renders_tools(t, "qwen2.5"));
    const qv_chat_call calls[] = {{.name = "f", .arguments = "{ \"a\": 1.50, \"b\": [ ] }"},
                                  {.name = "g\"h", .arguments = "{}"}};
    qv_chat_msg m[] = {{.role = "user", .content = "q"},
                       {.role = "assistant", .content = "", .calls = calls, .n_calls = 2},
                       {.role = "assistant", .content = "x", .calls = calls + 1, .n_calls = 1}};
    static const char tools[] = "[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]";
    char *out = NULL;
    qv_error err = {0};
    assert_int_equal(
        qv_chat_render_tools(t, "chatml", m, 3, tools, strlen(tools), false, &out, &err), QV_OK);
    assert_string_equal(
        out, "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n[{\"name\":\"f\","
             "\"arguments\":{\"a\":1.5,\"b\":[]}},{\"name\":\"g\\\"h\",\"arguments\":{}}]"
             "<|im_end|>\n<|im_start|>assistant\nx\n[{\"name\":\"g\\\"h\",\"arguments\":{}}]"
             "<|im_end|>\n");
    qv_free(out);
    assert_int_equal(qv_chat_render_tools(t, "llama2-chat", m, 2, NULL, 0, false, &out, &err),
                     QV_OK);
    assert_string_equal(out,
                        "<s>[INST] q [/INST] [{\"name\":\"f\",\"arguments\":{\"a\":1.5,\"b\":[]}},"
                        "{\"name\":\"g\\\"h\",\"arguments\":{}}] </s>");
    qv_free(out);
    const qv_chat_call bad[] = {{.name = "f", .arguments = "[1]"},
                                {.name = "f", .arguments = "{"},
                                {.name = NULL, .arguments = "{}"}};
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        qv_chat_msg b[] = {{.role = "assistant", .content = "", .calls = bad + i, .n_calls = 1}};
        assert_int_equal(qv_chat_render_tools(t, "qwen2.5", b, 1, NULL, 0, false, &out, &err),
                         QV_ERR_INVALID);
        assert_int_equal(qv_chat_render_tools(t, "chatml", b, 1, NULL, 0, false, &out, &err),
                         QV_ERR_INVALID);
        assert_null(out);
    }
    assert_int_equal(qv_chat_render_tools(t, "qwen2.5", m, 1, "{\"a\":1}", 7, false, &out, &err),
                     QV_ERR_INVALID);
    /* an empty list is no tools */
    char *none = NULL;
    assert_int_equal(qv_chat_render_tools(t, "qwen2.5", m, 1, " [ ] ", 5, true, &out, &err), QV_OK);
    assert_int_equal(qv_chat_render_tools(t, "qwen2.5", m, 1, NULL, 0, true, &none, &err), QV_OK);
    assert_string_equal(out, none);
    assert_null(strstr(out, "# Tools"));
    qv_free(out);
    qv_free(none);
    assert_int_equal(qv_chat_render_tools(t, "qwen2.5", m, 1, "[1,", 3, false, &out, &err),
                     QV_ERR_INVALID);
    /* out of memory anywhere: an error, nothing leaked */
    const char *const names[] = {"chatml", "qwen2.5"};
    oom_sweep(t, names, m, 3, tools, NULL, NULL);
    qv_tokenizer_free(t);
}

/* Llama 3.1 / 3.2 beyond the goldens: today's date when none is given, an empty conversation,
 * refusals and allocation failures. */
static void test_llama31_misc(void **s) {
    (void)s;
    qv_tokenizer *t = tok_with_template(NULL, "<|begin_of_text|>", "<|eot_id|>");
    assert_int_equal(qv_chat_tools_format(t, "llama3.1"), QV_CHAT_TOOLS_LLAMA_JSON);
    assert_int_equal(qv_chat_tools_format(t, "llama3"), QV_CHAT_TOOLS_NONE);
    assert_int_equal(qv_chat_tools_format(t, "qwen2.5"), QV_CHAT_TOOLS_HERMES);
    qv_chat_msg m[] = {{.role = "user", .content = "hi"}};
    char *out = NULL;
    qv_error err = {0};
    /* 3.2 prints today's date (strftime("%d %b %Y") in the C locale), 3.1 a fixed one */
    char before[32], after[32], want[128];
    for (int pass = 0; pass < 2; pass++) {
        time_t now = time(NULL);
        strftime(pass ? after : before, 32, "%d %b %Y", localtime(&now));
        if (!pass) assert_int_equal(qv_chat_render(t, "llama3.2", m, 1, true, &out, &err), QV_OK);
    }
    snprintf(want, sizeof(want), "Today Date: %s\n\n<|eot_id|>", before);
    const bool today = strstr(out, want) != NULL;
    snprintf(want, sizeof(want), "Today Date: %s\n\n<|eot_id|>", after);
    assert_true(today || strstr(out, want)); /* midnight may pass in between */
    qv_free(out);
    out = render(t, "llama3.1", m, 1, false);
    assert_string_equal(out, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                             "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
                             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>");
    qv_free(out);
    /* no messages (the server's start-up probe): the system turn alone */
    out = render(t, "llama3.1", NULL, 0, false);
    assert_non_null(strstr(out, "Today Date: 26 Jul 2024\n\n<|eot_id|>"));
    qv_free(out);
    /* tools need a message after the system turn */
    static const char tools[] = "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}]";
    qv_chat_msg sys[] = {{.role = "system", .content = "S"}};
    assert_int_equal(
        qv_chat_render_tools(t, "llama3.1", sys, 1, tools, strlen(tools), true, &out, &err),
        QV_ERR_INVALID);
    assert_null(out);
    const qv_chat_call calls[] = {{.name = "f", .arguments = "{\"a\": [1, 2.50]}"},
                                  {.name = "g", .arguments = "{}"}};
    qv_chat_msg conv[] = {{.role = "system", .content = " S "},
                          {.role = "user", .content = "q"},
                          {.role = "assistant", .content = "", .calls = calls, .n_calls = 1},
                          {.role = "tool", .content = "r\u00e9sultat \"1\""},
                          {.role = "assistant", .content = "", .calls = calls, .n_calls = 2}};
    assert_int_equal(
        qv_chat_render_tools(t, "llama3.2", conv, 5, tools, strlen(tools), true, &out, &err),
        QV_ERR_INVALID);
    assert_non_null(strstr(err.msg, "single tool-calls"));
    /* out of memory anywhere: an error, nothing leaked */
    const char *const names[] = {"llama3.2", "llama3.1"};
    oom_sweep(t, names, conv, 4, tools, "01 Jan 2027", "\"r\u00e9sultat \\\"1\\\"\"<|eot_id|>");
    qv_tokenizer_free(t);
}

/* Mistral v0.3 and Nemo beyond the goldens: an empty conversation, a tool's "return" member
 * (skipped by the template), bad tools, allocation failures. */
static void test_mistral_v03_misc(void **s) {
    (void)s;
    qv_tokenizer *t = tok_with_template(NULL, "<s>", "</s>");
    assert_int_equal(qv_chat_tools_format(t, "mistral-v0.3"), QV_CHAT_TOOLS_MISTRAL);
    assert_int_equal(qv_chat_tools_format(t, "mistral-v3"), QV_CHAT_TOOLS_NONE);
    char *out = render(t, "mistral-v0.3", NULL, 0, true); /* the server's start-up probe */
    assert_string_equal(out, "<s>");
    qv_free(out);
    qv_chat_msg m[] = {{.role = "user", .content = "q"}};
    static const char tools[] =
        "[{\"type\": \"function\", \"function\": {\"name\": \"f\", "
        "\"return\": {\"type\": \"string\"}, \"description\": \"a \\\"b\\\"\", "
        "\"parameters\": {\"type\": \"object\", \"properties\": {}}}}]";
    qv_error err = {0};
    assert_int_equal(
        qv_chat_render_tools(t, "mistral-v0.3", m, 1, tools, strlen(tools), true, &out, &err),
        QV_OK);
    assert_string_equal(out, "<s>[AVAILABLE_TOOLS] [{\"type\": \"function\", \"function\": "
                             "{\"name\": \"f\", \"description\": \"a \"b\"\", \"parameters\": "
                             "{\"type\": \"object\", \"properties\": {}}}}][/AVAILABLE_TOOLS]"
                             "[INST] q[/INST]");
    qv_free(out);
    static const char no_function[] = "[{\"type\": \"function\"}]";
    assert_int_equal(qv_chat_render_tools(t, "mistral-v0.3", m, 1, no_function, strlen(no_function),
                                          true, &out, &err),
                     QV_ERR_INVALID);
    assert_null(out);
    const qv_chat_call calls[] = {
        {.name = "f", .arguments = "{\"a\": [1, 2.50]}", .id = "A1b2C3d4E"},
        {.name = "g", .arguments = "{}", .id = "999999999"}};
    qv_chat_msg conv[] = {{.role = "system", .content = "S"},
                          {.role = "user", .content = "q"},
                          {.role = "assistant", .content = "", .calls = calls, .n_calls = 2},
                          {.role = "tool", .content = "r\u00e9sultat", .tool_call_id = "A1b2C3d4E"},
                          {.role = "assistant", .content = " ok "},
                          {.role = "user", .content = "q2"}};
    /* out of memory anywhere: an error, nothing leaked */
    const char *const names[] = {"mistral-v0.3", "mistral-nemo"};
    oom_sweep(t, names, conv, 6, tools, NULL, "S\n\nq2[/INST]");
    qv_tokenizer_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_golden),          cmocka_unit_test(test_mistral_formats),
        cmocka_unit_test(test_detection_and_errors), cmocka_unit_test(test_chat_tools_golden),
        cmocka_unit_test(test_calls_as_text),        cmocka_unit_test(test_llama31_misc),
        cmocka_unit_test(test_mistral_v03_misc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
