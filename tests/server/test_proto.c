/*
 * test_proto.c - the proto/ codecs: request decoding (defaults, every field, every type and
 * range error naming its field), response / chunk / error / models encoding checked by
 * parsing the JSON back, SSE framing, and allocation failures (no leaks, clean errors).
 */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "adapters/adapters.h"
#include "engine/core.h"
#include "engine/json_grammar.h"
#include "proto/proto.h"

static qv_status dec(enum qv_proto_endpoint ep, const char *json, qv_proto_request *r,
                     qv_proto_error *e) {
    return qv_proto_request_decode(ep, json, strlen(json), r, e);
}

static void test_completion_defaults(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":\"hi\"}", &r, &e), QV_OK);
    assert_string_equal(r.prompt, "hi");
    assert_int_equal(r.prompt_len, 2);
    assert_null(r.model);
    assert_null(r.adapter);
    assert_int_equal(r.max_tokens, -1);
    assert_true(r.temperature == 1.0f && r.top_p == 1.0f && r.repetition_penalty == 1.0f);
    assert_int_equal(r.top_k, 0);
    assert_false(r.stream || r.logprobs || r.has_seed || r.include_usage || r.ignore_eos ||
                 r.continuous_usage);
    assert_true(r.skip_special_tokens);
    assert_false(r.include_stop_str || r.tokens_as_ids);
    assert_int_equal(r.truncate_prompt_tokens, 0);
    assert_false(r.prompt_lps);
    assert_int_equal(r.n_stop, 0);
    qv_proto_request_free(&r);
}

/* TGI / LoRAX bodies get the same defaults as OpenAI ones where the server shares the code:
 * special tokens write no text, the prompt gets BOS, 20 new tokens. */
/* chat_template_kwargs: add_generation_prompt / continue_final_message override the request's,
 * date_string is kept, what quiver's Llama rendering lacks is named, the rest changes nothing. */
static void test_template_kwargs(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    assert_int_equal(
        dec(QV_PROTO_CHAT,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\","
            "\"content\":\"Par\"}],\"add_generation_prompt\":true,\"chat_template_kwargs\":{"
            "\"enable_thinking\":false,\"continue_final_message\":true,\"add_generation_prompt\":"
            "false,\"date_string\":\"01 Jan 2026\",\"tools_in_user_message\":true,"
            "\"custom_tools\":[]}}",
            &r, &e),
        QV_OK);
    assert_true(r.continue_final_message && !r.add_generation_prompt);
    assert_string_equal(r.tmpl_date_string, "01 Jan 2026");
    assert_null(r.tmpl_unrendered);
    qv_proto_request_free(&r);
    static const struct {
        const char *kw, *name;
    } cases[] = {{"{\"tools_in_user_message\":false}", "tools_in_user_message"},
                 {"{\"builtin_tools\":[\"wolfram_alpha\"]}", "builtin_tools"},
                 {"{\"custom_tools\":[{}]}", "custom_tools"},
                 {"{\"reasoning_effort\":\"low\",\"thinking\":true}", NULL}};
    for (size_t i = 0; i < QV_ARRAY_LEN(cases); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":"
                 "%s}",
                 cases[i].kw);
        assert_int_equal(dec(QV_PROTO_CHAT, body, &r, &e), QV_OK);
        if (cases[i].name)
            assert_string_equal(r.tmpl_unrendered, cases[i].name);
        else
            assert_null(r.tmpl_unrendered);
        assert_true(r.add_generation_prompt);
        qv_proto_request_free(&r);
    }
}

static void test_tgi_defaults(void **state) {
    (void)state;
    static const char body[] = "{\"inputs\":\"hi\"}";
    qv_proto_request r;
    qv_proto_tgi t;
    qv_proto_error e;
    assert_int_equal(qv_proto_tgi_decode(body, strlen(body), &r, &t, &e), QV_OK);
    assert_true(r.skip_special_tokens && r.add_special_tokens);
    assert_false(r.include_stop_str || r.tokens_as_ids);
    assert_int_equal(r.max_tokens, 20);
    assert_int_equal(r.truncate_prompt_tokens, 0);
    qv_proto_request_free(&r);
}

/* Whether the calls schema takes text as the beginning of a document. */
static bool schema_takes(const qv_json_schema *sch, const char *text) {
    qv_json_sstate st;
    qv_json_schema_init(sch, &st);
    return qv_json_schema_feed(sch, &st, (const uint8_t *)text, strlen(text));
}

/* A chat body with tools (the first %s) and a tool_choice (the second). */
#define ALLOWED_BODY "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],%s,\"tool_choice\":%s}"

/* tool_choice allowed_tools (chat's, and the Responses API's shape through its decoder):
 * "required" calls only the allowed functions, "auto" shows the template only them (the raw
 * items as sent); unknown names, bad modes and other shapes are 400 naming tool_choice. */
static void test_allowed_tools(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    static const char tools[] =
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\"}},{\"type\":\"function\","
        "\"function\":{\"name\":\"b\",\"parameters\":{\"type\":\"object\"}}},{\"type\":"
        "\"function\",\"function\":{\"name\":\"c\"}}]";
    char body[1024];
    snprintf(body, sizeof(body), ALLOWED_BODY, tools,
             "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"required\",\"tools\":[{"
             "\"type\":\"function\",\"function\":{\"name\":\"c\"}},{\"type\":\"function\","
             "\"function\":{\"name\":\"b\"}}]}}");
    assert_int_equal(dec(QV_PROTO_CHAT, body, &r, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_REQUIRED);
    assert_true(schema_takes(r.json_schema, "[{\"name\":\"b\""));
    assert_true(schema_takes(r.json_schema, "[{\"name\":\"c\""));
    assert_false(schema_takes(r.json_schema, "[{\"name\":\"a\""));
    assert_string_equal(r.tools_text,
                        "[{\"type\":\"function\",\"function\":{\"name\":\"b\",\"parameters\":{"
                        "\"type\":\"object\"}}}, {\"type\":\"function\",\"function\":{\"name\":"
                        "\"c\"}}]");
    qv_proto_request_free(&r);
    snprintf(body, sizeof(body), ALLOWED_BODY, tools,
             "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"auto\",\"tools\":[{"
             "\"type\":\"function\",\"function\":{\"name\":\"a\"}}]}}");
    assert_int_equal(dec(QV_PROTO_CHAT, body, &r, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_AUTO);
    assert_null(r.json_schema);
    assert_string_equal(r.tools_text, "[{\"type\":\"function\",\"function\":{\"name\":\"a\"}}]");
    qv_proto_request_free(&r);
    static const char *const bad[] = {
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"auto\",\"tools\":[{\"type\":"
        "\"function\",\"function\":{\"name\":\"z\"}}]}}",
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"none\",\"tools\":[{\"type\":"
        "\"function\",\"function\":{\"name\":\"a\"}}]}}",
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"auto\",\"tools\":[]}}",
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"auto\",\"tools\":[{\"type\":"
        "\"mcp\",\"server_label\":\"x\"}]}}",
        "{\"type\":\"allowed_tools\",\"allowed_tools\":{\"mode\":\"auto\"}}",
        "{\"type\":\"allowed_tools\"}",
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        snprintf(body, sizeof(body), ALLOWED_BODY, tools, bad[i]);
        assert_int_equal(dec(QV_PROTO_CHAT, body, &r, &e), QV_ERR_INVALID);
        assert_string_equal(e.param, "tool_choice");
        qv_proto_request_free(&r);
    }
    /* the Responses API's shape */
    static const char resp[] =
        "{\"model\":\"m\",\"input\":\"hi\",\"tools\":[{\"type\":\"function\",\"name\":\"a\"},{"
        "\"type\":\"function\",\"name\":\"b\"}],\"tool_choice\":{\"type\":\"allowed_tools\","
        "\"mode\":\"required\",\"tools\":[{\"type\":\"function\",\"name\":\"a\"}]}}";
    qv_proto_responses_extra x;
    assert_int_equal(qv_proto_responses_decode(resp, strlen(resp), NULL, true, &r, &x, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_REQUIRED);
    assert_true(schema_takes(r.json_schema, "[{\"name\":\"a\""));
    assert_false(schema_takes(r.json_schema, "[{\"name\":\"b\""));
    assert_non_null(strstr(x.echo, "\"allowed_tools\""));
    qv_proto_request_free(&r);
    qv_free(x.echo);
    qv_free(x.items);
}

/* LoRAX's merged_adapters: parameters.merged_adapters on /generate, the same object at the top
 * level of the OpenAI routes; defaults, and every refusal naming it. */
static void test_merged_adapters(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_tgi t;
    qv_proto_error e;
    static const char tgi[] =
        "{\"inputs\":\"hi\",\"parameters\":{\"merged_adapters\":{\"ids\":[\"a\",\"b\"],"
        "\"weights\":[0.5,-2],\"merge_strategy\":\"dare_ties\",\"density\":0.25,"
        "\"majority_sign_method\":\"frequency\",\"seed\":9}}}";
    assert_int_equal(qv_proto_tgi_decode(tgi, strlen(tgi), &r, &t, &e), QV_OK);
    assert_int_equal(r.n_merge, 2);
    assert_string_equal(r.merge_ids[1], "b");
    assert_true(r.merge_weights[0] == 0.5f && r.merge_weights[1] == -2.0f);
    assert_int_equal(r.merge_strategy, QV_MERGE_DARE_TIES);
    assert_true(r.merge_density == 0.25);
    assert_int_equal(r.merge_sign, QV_MERGE_SIGN_FREQUENCY);
    assert_true(r.merge_seed == 9);
    assert_null(r.adapter);
    qv_proto_request_free(&r);
    /* lorax-client sends null for the options it was not given */
    static const char chat[] =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"merged_adapters\":{\"ids\":"
        "[\"a\"],\"weights\":[],\"merge_strategy\":null,\"majority_sign_method\":null}}";
    assert_int_equal(dec(QV_PROTO_CHAT, chat, &r, &e), QV_OK);
    assert_int_equal(r.n_merge, 1);
    assert_true(r.merge_weights[0] == 1.0f && r.merge_density == 1.0);
    assert_int_equal(r.merge_strategy, QV_MERGE_LINEAR);
    assert_int_equal(r.merge_sign, QV_MERGE_SIGN_TOTAL);
    qv_proto_request_free(&r);
    static const char *const bad[] = {
        "{\"prompt\":\"x\",\"merged_adapters\":[\"a\"]}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[]}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\",\"\"]}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\",\"b\"],\"weights\":[1]}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"weights\":[\"1\"]}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"merge_strategy\":\"svd\"}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"merge_strategy\":\"TIES\"}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"density\":0}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"density\":1.5}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"majority_sign_method\":\"x\"}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\"],\"seed\":-1}}",
        "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
        "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}}",
        "{\"prompt\":\"x\",\"model\":\"base:a\",\"merged_adapters\":{\"ids\":[\"b\"]}}",
    };
    for (size_t i = 0; i < QV_ARRAY_LEN(bad); i++) {
        assert_int_equal(dec(QV_PROTO_COMPLETIONS, bad[i], &r, &e), QV_ERR_INVALID);
        assert_string_equal(e.param, "merged_adapters");
        qv_proto_request_free(&r);
    }
    static const char both[] =
        "{\"inputs\":\"hi\",\"parameters\":{\"adapter_id\":\"a\",\"merged_adapters\":{\"ids\":"
        "[\"b\"]}}}";
    assert_int_equal(qv_proto_tgi_decode(both, strlen(both), &r, &t, &e), QV_ERR_INVALID);
    assert_string_equal(e.param, "parameters.merged_adapters");
    assert_non_null(strstr(e.message, "adapter_id"));
    qv_proto_request_free(&r);
    /* tokenizing ignores it */
    static const char tok[] = "{\"prompt\":\"x\",\"merged_adapters\":{\"ids\":[]}}";
    assert_int_equal(dec(QV_PROTO_TOKENIZE, tok, &r, &e), QV_OK);
    assert_int_equal(r.n_merge, 0);
    qv_proto_request_free(&r);
}

static void test_completion_all_fields(void **state) {
    (void)state;
    const char *json =
        "{\"model\":\"base:my-lora\",\"prompt\":[\"text\"],\"max_tokens\":7,\"temperature\":0,"
        "\"top_p\":0.5,\"top_k\":-1,\"min_p\":0.1,\"presence_penalty\":-1.5,"
        "\"frequency_penalty\":2,\"repetition_penalty\":1.3,\"seed\":-1,\"stop\":[\"a\",\"bc\"],"
        "\"logprobs\":3,\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_"
        "usage_stats\":true},\"n\":1,"
        "\"user\":\"ignored\",\"echo\":false,\"ignore_eos\":true,\"min_tokens\":4,"
        "\"skip_special_tokens\":false,\"include_stop_str_in_output\":true,"
        "\"return_tokens_as_token_ids\":true,\"truncate_prompt_tokens\":9,"
        "\"spaces_between_special_tokens\":false,\"use_beam_search\":false,\"bad_words\":[\"a\",\" "
        "b\"],"
        "\"allowed_token_ids\":[3,1,3],"
        "\"logit_bias\":{\"42\":-100,\"7\":2.5,\"42\":1}}";
    qv_proto_request r;
    qv_proto_error e;
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, json, &r, &e), QV_OK);
    assert_string_equal(r.model, "base:my-lora");
    assert_string_equal(r.base, "base");
    assert_string_equal(r.adapter, "my-lora");
    assert_string_equal(r.prompt, "text");
    assert_int_equal(r.max_tokens, 7);
    assert_true(r.temperature == 0.0f && r.top_p == 0.5f && r.min_p == 0.1f);
    assert_int_equal(r.top_k, 0);
    assert_true(r.presence_penalty == -1.5f && r.frequency_penalty == 2.0f);
    assert_true(r.repetition_penalty == 1.3f);
    assert_true(r.has_seed);
    assert_true(r.seed == UINT64_MAX);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[1], "bc");
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 3);
    assert_true(r.stream && r.include_usage && r.continuous_usage);
    assert_true(r.ignore_eos);
    assert_int_equal(r.min_tokens, 4);
    assert_false(r.skip_special_tokens);
    assert_true(r.include_stop_str && r.tokens_as_ids);
    assert_int_equal(r.truncate_prompt_tokens, 9);
    assert_int_equal(r.n_bad_words, 2);
    assert_string_equal(r.bad_words[1], " b");
    assert_int_equal(r.n_allowed_ids, 3);
    assert_true(r.allowed_ids[0] == 3 && r.allowed_ids[1] == 1 && r.allowed_ids[2] == 3);
    /* every entry as sent, a repeated id included (the sampler keeps the later one) */
    assert_int_equal(r.n_bias, 3);
    assert_true(r.bias_ids[0] == 42 && r.bias_values[0] == -100.0f);
    assert_true(r.bias_ids[1] == 7 && r.bias_values[1] == 2.5f);
    assert_true(r.bias_ids[2] == 42 && r.bias_values[2] == 1.0f);
    qv_proto_request_free(&r);
}

static void test_prompt_ids_and_adapter_id(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    assert_int_equal(dec(QV_PROTO_COMPLETIONS,
                         "{\"prompt\":[[1,2,49151]],\"adapter_id\":\"x\",\"stop\":\"s\"}", &r, &e),
                     QV_OK);
    assert_null(r.prompt);
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[2], 49151);
    assert_string_equal(r.adapter, "x");
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "s");
    qv_proto_request_free(&r);
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":[5,6],\"model\":\"m\"}", &r, &e),
                     QV_OK);
    assert_int_equal(r.n_prompt_ids, 2);
    assert_string_equal(r.base, "m");
    assert_null(r.adapter);
    qv_proto_request_free(&r);
}

static void test_chat(void **state) {
    (void)state;
    const char *json = "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
                       "{\"type\":\"text\",\"text\":\"b\"}]}],\"logprobs\":true,"
                       "\"top_logprobs\":2,\"max_completion_tokens\":5}";
    qv_proto_request r;
    qv_proto_error e;
    assert_int_equal(dec(QV_PROTO_CHAT, json, &r, &e), QV_OK);
    assert_int_equal(r.n_messages, 2);
    assert_string_equal(r.messages[0].role, "system");
    assert_string_equal(r.messages[1].content, "ab");
    assert_true(r.logprobs);
    assert_int_equal(r.top_logprobs, 2);
    assert_int_equal(r.max_tokens, 5);
    qv_proto_request_free(&r);
}

/* Each bad body must fail with QV_ERR_INVALID and name `param`. */
static void expect_bad(enum qv_proto_endpoint ep, const char *json, const char *param) {
    qv_proto_request r;
    qv_proto_error e;
    qv_status s = dec(ep, json, &r, &e);
    if (s != QV_ERR_INVALID || strcmp(e.param, param) != 0)
        fail_msg("body %s: status %d param '%s' (want '%s'), message '%s'", json, s, e.param, param,
                 e.message);
    assert_true(e.message[0] != '\0');
    qv_proto_request_free(&r);
}

static void test_errors(void **state) {
    (void)state;
    enum qv_proto_endpoint C = QV_PROTO_COMPLETIONS, H = QV_PROTO_CHAT;
    expect_bad(C, "{", "");
    expect_bad(C, "[1]", "");
    expect_bad(C, "{}", "prompt");
    expect_bad(C, "{\"prompt\":3}", "prompt");
    expect_bad(C, "{\"prompt\":[]}", "prompt");
    expect_bad(C, "{\"prompt\":[1,\"a\"]}", "prompt");
    expect_bad(C, "{\"prompt\":[-1]}", "prompt");
    expect_bad(C, "{\"prompt\":[1.5]}", "prompt");
    expect_bad(C, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "max_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"temperature\":-1}", "temperature");
    expect_bad(C, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
    expect_bad(C, "{\"prompt\":\"x\",\"top_p\":0}", "top_p");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":[1]}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"\":1}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"+5\":1}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"5e2\":1}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"99999999999\":1}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"4294967295\":1}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":-100.5}}", "logit_bias");
    expect_bad(C, "{\"prompt\":\"x\",\"logit_bias\":{\"5\":null}}", "logit_bias");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"min_tokens\":-1}",
               "min_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"min_tokens\":1.5}", "min_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"top_p\":1.5}", "top_p");
    expect_bad(C, "{\"prompt\":\"x\",\"top_k\":-2}", "top_k");
    expect_bad(C, "{\"prompt\":\"x\",\"min_p\":2}", "min_p");
    expect_bad(C, "{\"prompt\":\"x\",\"presence_penalty\":3}", "presence_penalty");
    expect_bad(C, "{\"prompt\":\"x\",\"frequency_penalty\":-3}", "frequency_penalty");
    expect_bad(C, "{\"prompt\":\"x\",\"repetition_penalty\":0}", "repetition_penalty");
    expect_bad(C, "{\"prompt\":\"x\",\"seed\":1.5}", "seed");
    expect_bad(C, "{\"prompt\":\"x\",\"ignore_eos\":1}", "ignore_eos");
    expect_bad(C, "{\"prompt\":\"x\",\"skip_special_tokens\":0}", "skip_special_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"truncate_prompt_tokens\":0}", "truncate_prompt_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"truncate_prompt_tokens\":-2}", "truncate_prompt_tokens");
    expect_bad(C, "{\"prompt\":\"x\",\"use_beam_search\":true}", "use_beam_search");
    expect_bad(C, "{\"prompt\":\"x\",\"allowed_token_ids\":[-1]}", "allowed_token_ids");
    expect_bad(C, "{\"prompt\":\"x\",\"allowed_token_ids\":5}", "allowed_token_ids");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"allowed_token_ids\":[1],"
               "\"response_format\":{\"type\":\"json_object\"}}",
               "allowed_token_ids");
    /* chat_template_kwargs: an object; the template's own variables refused */
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":1}",
               "chat_template_kwargs");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":{"
               "\"messages\":[]}}",
               "chat_template_kwargs");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":{"
               "\"date_string\":5}}",
               "chat_template_kwargs");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"chat_template_kwargs\":{"
               "\"add_generation_prompt\":\"no\"}}",
               "chat_template_kwargs");
    expect_bad(C, "{\"prompt\":\"x\",\"stream_options\":{\"continuous_usage_stats\":1}}",
               "stream_options.continuous_usage_stats");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"modalities\":[\"text\","
               "\"audio\"],\"audio\":{\"voice\":\"alloy\",\"format\":\"wav\"}}",
               "modalities");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"audio\":{\"voice\":"
               "\"alloy\"}}",
               "audio");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"web_search_options\":{}}",
               "web_search_options");
    { /* text only, and no audio asked: they pass */
        qv_proto_request q;
        qv_proto_error pe;
        assert_int_equal(dec(H,
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                             "\"modalities\":[\"text\"],\"audio\":null,\"web_search_options\":null,"
                             "\"prediction\":{\"type\":\"content\",\"content\":\"x\"}}",
                             &q, &pe),
                         QV_OK);
        qv_proto_request_free(&q);
    }
    expect_bad(C, "{\"prompt\":\"x\",\"seed\":\"1\"}", "seed");
    expect_bad(C, "{\"prompt\":\"x\",\"stop\":5}", "stop");
    expect_bad(C, "{\"prompt\":\"x\",\"stop\":[\"\"]}", "stop");
    expect_bad(C, "{\"prompt\":\"x\",\"stop\":[1]}", "stop");
    expect_bad(C,
               "{\"prompt\":\"x\",\"stop\":[\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\","
               "\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
               "stop");
    expect_bad(C, "{\"prompt\":\"x\",\"logprobs\":21}", "logprobs");
    expect_bad(C, "{\"prompt\":\"x\",\"logprobs\":true}", "logprobs");
    expect_bad(C, "{\"prompt\":\"x\",\"stream\":1}", "stream");
    expect_bad(C, "{\"prompt\":\"x\",\"stream_options\":1}", "stream_options");
    expect_bad(C, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":\"y\"}}",
               "stream_options.include_usage");
    expect_bad(C, "{\"prompt\":\"x\",\"n\":0}", "n");
    expect_bad(C, "{\"prompt\":\"x\",\"model\":5}", "model");
    expect_bad(C, "{\"prompt\":\"x\",\"model\":\"b:one\",\"adapter_id\":\"two\"}", "adapter_id");
    expect_bad(H, "{}", "messages");
    expect_bad(H, "{\"messages\":[]}", "messages");
    expect_bad(H, "{\"messages\":[{\"content\":\"x\"}]}", "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}",
               "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":3}",
               "logprobs");
    expect_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
               "top_logprobs");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"logprobs\":true,"
               "\"top_logprobs\":21}",
               "top_logprobs");
}

static cJSON *parse(char *json) {
    assert_non_null(json);
    cJSON *o = cJSON_Parse(json);
    qv_free(json);
    assert_non_null(o);
    return o;
}

static const cJSON *path(const cJSON *o, const char *a, const char *b) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, a);
    if (b) x = cJSON_GetObjectItemCaseSensitive(x, b);
    assert_non_null(x);
    return x;
}

#define TOOLS                                                                                      \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"    \
    "\"d\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}},"   \
    "\"required\":[\"city\"]},\"strict\":true}},{\"type\":\"function\",\"function\":{\"name\":"    \
    "\"now\"}}]"
#define USER "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"

/* tools and tool_choice; the history's tool calls and tool messages. */
static void test_tools(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    enum qv_proto_endpoint H = QV_PROTO_CHAT, C = QV_PROTO_COMPLETIONS;
    /* required: the calls schema, compact, parallel by default */
    assert_int_equal(dec(H, "{" USER "," TOOLS ",\"tool_choice\":\"required\"}", &r, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_REQUIRED);
    assert_true(r.parallel_tool_calls);
    assert_non_null(r.json_schema);
    assert_true(strncmp(qv_json_schema_text(r.json_schema), "compact:calls:", 14) == 0);
    qv_proto_request_free(&r);
    /* named: the function's parameters */
    assert_int_equal(dec(H,
                         "{" USER "," TOOLS ",\"parallel_tool_calls\":false,\"tool_choice\":{"
                         "\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}}",
                         &r, &e),
                     QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_NAMED);
    assert_string_equal(r.tool_name, "get_weather");
    assert_false(r.parallel_tool_calls);
    assert_string_equal(qv_json_schema_text(r.json_schema),
                        "compact:{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
                        "\"string\"}},\"required\":[\"city\"]}");
    qv_proto_request_free(&r);
    /* a named function with parameters {}: any object; without parameters: {} only */
    assert_int_equal(dec(H,
                         "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
                         "\"f\",\"parameters\":{}}}],\"tool_choice\":{\"type\":\"function\","
                         "\"function\":{\"name\":\"f\"}}}",
                         &r, &e),
                     QV_OK);
    assert_string_equal(qv_json_schema_text(r.json_schema), "compact:{\"type\":\"object\"}");
    qv_proto_request_free(&r);
    assert_int_equal(dec(H,
                         "{" USER "," TOOLS ",\"tool_choice\":{\"type\":\"function\","
                         "\"function\":{\"name\":\"now\"}}}",
                         &r, &e),
                     QV_OK);
    assert_string_equal(qv_json_schema_text(r.json_schema),
                        "compact:{\"type\":\"object\",\"properties\":{}}");
    qv_proto_request_free(&r);
    /* none: text, tools ignored; empty tools ask for nothing */
    assert_int_equal(dec(H, "{" USER "," TOOLS ",\"tool_choice\":\"none\"}", &r, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_NONE);
    assert_null(r.json_schema);
    qv_proto_request_free(&r);
    assert_int_equal(dec(H, "{" USER ",\"tools\":[]}", &r, &e), QV_OK);
    qv_proto_request_free(&r);
    assert_int_equal(dec(C, "{\"prompt\":\"x\",\"tools\":[]}", &r, &e), QV_OK);
    qv_proto_request_free(&r);

    /* the history: an assistant's calls become their required-form text; tool messages keep
     * their role */
    assert_int_equal(
        dec(H,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"w?\"},{\"role\":\"assistant\","
            "\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":"
            "{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},"
            "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"sunny\"},{\"role\":"
            "\"assistant\",\"content\":\"ok\",\"tool_calls\":[{\"function\":{\"name\":\"now\","
            "\"arguments\":\"{}\"}},{\"function\":{\"name\":\"now\",\"arguments\":\"{}\"}}]}]}",
            &r, &e),
        QV_OK);
    assert_int_equal(r.n_messages, 4);
    assert_string_equal(r.messages[1].content, "");
    assert_int_equal(r.messages[1].n_calls, 1);
    assert_string_equal(r.messages[1].calls[0].name, "get_weather");
    assert_string_equal(r.messages[1].calls[0].arguments, "{\"city\": \"Paris\"}"); /* as sent */
    assert_string_equal(r.messages[1].calls[0].id, "c1");
    assert_string_equal(r.messages[2].role, "tool");
    assert_string_equal(r.messages[2].content, "sunny");
    assert_string_equal(r.messages[2].tool_call_id, "c1");
    assert_null(r.messages[1].tool_call_id);
    assert_string_equal(r.messages[3].content, "ok");
    assert_int_equal(r.messages[3].n_calls, 2);
    assert_null(r.messages[3].calls[0].id);
    assert_null(r.tools_text);
    qv_proto_request_free(&r);
    /* auto: decoded (the server checks the template), the raw tools kept for the template */
    assert_int_equal(dec(H, "{" USER ",  " TOOLS " , \"tool_choice\":\"auto\"}", &r, &e), QV_OK);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_AUTO);
    assert_null(r.json_schema);
    assert_non_null(r.tools_text);
    assert_true(r.tools_text[0] == '[' && r.tools_text[r.tools_len - 1] == ']');
    assert_non_null(strstr(r.tools_text, "\"strict\":true"));
    qv_proto_request_free(&r);
    assert_int_equal(dec(H, "{" USER "," TOOLS "}", &r, &e), QV_OK); /* auto by default */
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_AUTO);
    qv_proto_request_free(&r);
    assert_int_equal(dec(QV_PROTO_TOKENIZE, "{" USER "," TOOLS "}", &r, &e), QV_OK);
    assert_non_null(r.tools_text);
    qv_proto_request_free(&r);

    expect_bad(H, "{" USER "," TOOLS ",\"tool_choice\":\"auto\",\"guided_json\":{}}",
               "tool_choice");
    expect_bad(QV_PROTO_TOKENIZE, "{" USER ",\"tools\":{}}", "tools");
    expect_bad(H, "{" USER "," TOOLS ",\"tool_choice\":\"always\"}", "tool_choice");
    expect_bad(H, "{" USER ",\"tool_choice\":\"required\"}", "tool_choice");
    expect_bad(H, "{" USER "," TOOLS ",\"tool_choice\":{\"type\":\"function\"}}", "tool_choice");
    expect_bad(H,
               "{" USER "," TOOLS ",\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":"
               "\"nope\"}}}",
               "tool_choice");
    expect_bad(H,
               "{" USER "," TOOLS ",\"tool_choice\":\"required\",\"response_format\":{\"type\":"
               "\"json_object\"}}",
               "tool_choice");
    expect_bad(H, "{" USER "," TOOLS ",\"tool_choice\":\"required\",\"parallel_tool_calls\":1}",
               "parallel_tool_calls");
    expect_bad(H, "{" USER ",\"tools\":{},\"tool_choice\":\"required\"}", "tools");
    expect_bad(H, "{" USER ",\"tools\":[{\"type\":\"code\"}],\"tool_choice\":\"required\"}",
               "tools");
    expect_bad(H,
               "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a b\"}}],"
               "\"tool_choice\":\"required\"}",
               "tools");
    expect_bad(
        H,
        "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"required\"}",
        "tools");
    expect_bad(H,
               "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
               "\"parameters\":{\"type\":\"object\",\"not\":{}}}}],\"tool_choice\":\"required\"}",
               "tools");
    expect_bad(H,
               "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
               "\"parameters\":{\"type\":\"array\"}}}],\"tool_choice\":{\"type\":\"function\","
               "\"function\":{\"name\":\"f\"}}}",
               "tools");
    expect_bad(H,
               "{" USER ",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
               "\"parameters\":[]}}],\"tool_choice\":\"required\"}",
               "tools");
    expect_bad(C, "{\"prompt\":\"x\"," TOOLS ",\"tool_choice\":\"required\"}", "tools");
    expect_bad(H, "{" USER ",\"functions\":[{\"name\":\"f\"}]}", "functions");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{\"name\":"
               "\"f\",\"arguments\":\"[1]\"}}]}]}",
               "messages");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{"
               "\"arguments\":\"{}\"}}]}]}",
               "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":{}}]}", "messages");
    expect_bad(H,
               "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"id\":5,\"function\":{"
               "\"name\":\"f\",\"arguments\":\"{}\"}}]}]}",
               "messages");
    expect_bad(H, "{\"messages\":[{\"role\":\"tool\",\"tool_call_id\":5,\"content\":\"x\"}]}",
               "messages");
    expect_bad(H, "{" USER ",\"structured_outputs\":{\"disable_any_whitespace\":1}}",
               "structured_outputs");
    /* vLLM's disable_any_whitespace: a compact schema, and compact JSON mode */
    assert_int_equal(dec(H,
                         "{" USER ",\"structured_outputs\":{\"json_object\":true,"
                         "\"disable_any_whitespace\":true}}",
                         &r, &e),
                     QV_OK);
    assert_false(r.json_object);
    assert_string_equal(qv_json_schema_text(r.json_schema), "compact:{\"type\":\"object\"}");
    qv_proto_request_free(&r);
}

/* Reading calls out of an answer, and encoding them in responses and chunks. */
/* Answers that are not calls for `how`: refused, nothing returned, no content split. */
static void assert_not_calls(enum qv_proto_tool_choice how, const char *const *texts, size_t k) {
    for (size_t i = 0; i < k; i++) {
        qv_proto_tool_call *calls = NULL;
        size_t n = 0, content = 99;
        assert_int_equal(qv_proto_tool_calls_parse(how, NULL, texts[i], strlen(texts[i]), "z",
                                                   &calls, &n, &content),
                         QV_ERR_INVALID);
        assert_null(calls);
        assert_int_equal(content, 0);
    }
}

static void test_tool_call_results(void **state) {
    (void)state;
    qv_proto_tool_call *calls = NULL;
    size_t n = 0;
    static const char req[] = "[{\"name\":\"a\",\"arguments\":{\"x\": 1.50, \"y\":[ "
                              "]}},{\"name\":\"b\",\"arguments\":{}}]";
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_REQUIRED, NULL, req, strlen(req),
                                               "ab12_0", &calls, &n, NULL),
                     QV_OK);
    assert_int_equal(n, 2);
    assert_string_equal(calls[0].id, "call_ab12_0_0");
    assert_string_equal(calls[1].id, "call_ab12_0_1");
    assert_string_equal(calls[0].name, "a");
    assert_string_equal(calls[0].arguments, "{\"x\":1.5,\"y\":[]}");
    assert_string_equal(calls[1].arguments, "{}");
    qv_proto_result r = {.endpoint = QV_PROTO_CHAT,
                         .id = "chatcmpl-1",
                         .model = "m",
                         .text = req,
                         .text_len = 0, /* no text before the calls: content null */
                         .finish_reason = "tool_calls",
                         .calls = calls,
                         .n_calls = n};
    cJSON *o = parse(qv_proto_encode_response(&r));
    const cJSON *m = path(cJSON_GetArrayItem(path(o, "choices", NULL), 0), "message", NULL);
    assert_true(cJSON_IsNull(path(m, "content", NULL)));
    const cJSON *t1 = cJSON_GetArrayItem(path(m, "tool_calls", NULL), 1);
    assert_string_equal(path(t1, "id", NULL)->valuestring, "call_ab12_0_1");
    assert_string_equal(path(t1, "type", NULL)->valuestring, "function");
    assert_string_equal(path(t1, "function", "name")->valuestring, "b");
    assert_string_equal(path(t1, "function", "arguments")->valuestring, "{}");
    assert_null(cJSON_GetObjectItemCaseSensitive(t1, "index")); /* chunks only */
    cJSON_Delete(o);
    /* a chunk continuing a call: index and arguments only */
    qv_proto_tool_call piece = {.index = 0, .arguments = "ty\":"};
    r.calls = &piece;
    r.n_calls = 1;
    o = parse(qv_proto_encode_chunk(&r, false));
    const cJSON *d = path(cJSON_GetArrayItem(path(o, "choices", NULL), 0), "delta", NULL);
    assert_null(cJSON_GetObjectItemCaseSensitive(d, "content"));
    const cJSON *p0 = cJSON_GetArrayItem(path(d, "tool_calls", NULL), 0);
    assert_int_equal(path(p0, "index", NULL)->valueint, 0);
    assert_null(cJSON_GetObjectItemCaseSensitive(p0, "id"));
    assert_null(cJSON_GetObjectItemCaseSensitive(path(p0, "function", NULL), "name"));
    assert_string_equal(path(p0, "function", "arguments")->valuestring, "ty\":");
    cJSON_Delete(o);
    qv_proto_tool_calls_free(calls, n);

    /* named: the text is the arguments, as written */
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_NAMED, "f", "{\"q\": 1}", 8, "z_1",
                                               &calls, &n, NULL),
                     QV_OK);
    assert_int_equal(n, 1);
    assert_string_equal(calls[0].name, "f");
    assert_string_equal(calls[0].arguments, "{\"q\": 1}");
    qv_proto_tool_calls_free(calls, n);
    /* texts that are not calls (cut by max_tokens) */
    static const char *const bad[] = {"[{\"name\":\"a\",\"argu", "[]", "{}", "[{\"name\":1}]",
                                      "[{\"name\":\"a\",\"arguments\":[]}]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_REQUIRED, NULL, bad[i],
                                                   strlen(bad[i]), "z", &calls, &n, NULL),
                         QV_ERR_INVALID);
    assert_int_equal(
        qv_proto_tool_calls_parse(QV_PROTO_TOOLS_NAMED, "f", "{\"q\":", 5, "z", &calls, &n, NULL),
        QV_ERR_INVALID);
    assert_int_equal(
        qv_proto_tool_calls_parse(QV_PROTO_TOOLS_NAMED, "f", "[1]", 3, "z", &calls, &n, NULL),
        QV_ERR_INVALID);
    assert_null(calls);

    /* auto: Hermes / Qwen2.5 blocks, the text before them is the content */
    static const char hermes[] =
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
        "\"Paris\", \"days\": 2.50}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", "
        "\"arguments\": {}}\n";
    size_t content = 99;
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_AUTO, NULL, hermes, strlen(hermes),
                                               "q_0", &calls, &n, &content),
                     QV_OK);
    assert_int_equal(n, 2);
    assert_int_equal(content, strlen("Let me check.\n"));
    assert_string_equal(calls[0].name, "get_weather");
    assert_string_equal(calls[0].arguments, "{\"city\":\"Paris\",\"days\":2.5}");
    assert_string_equal(calls[1].name, "now"); /* the last block may be unclosed */
    assert_string_equal(calls[1].arguments, "{}");
    assert_string_equal(calls[1].id, "call_q_0_1");
    qv_proto_tool_calls_free(calls, n);
    static const char *const not_calls[] = {
        "no calls here", "<tool_call>\nnot json\n</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>{\"name\": 1, "
        "\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {}} extra</tool_call>"};
    assert_not_calls(QV_PROTO_TOOLS_AUTO, not_calls, sizeof(not_calls) / sizeof(not_calls[0]));
    /* streaming "auto": what is surely content before the answer ends */
    static const struct {
        const char *text;
        size_t want;
    } held[] = {{"plain text", 10},
                {"text <tool_", 5},
                {"<tool_call>{", 0},
                {"a<tool_call>b", 1},
                {"a <tool_response>", 17},
                {"<", 0},
                {"x<tool_call", 1},
                {"", 0},
                {"<tool_call><tool_call>", 0},
                {"a<b<tool_c", 3}};
    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]); i++)
        assert_int_equal(
            qv_proto_tool_text_len(QV_PROTO_TOOLS_AUTO, held[i].text, strlen(held[i].text)),
            held[i].want);

    /* auto on Llama 3.x templates: the answer is calls {"name", "parameters"} joined by ';' */
    static const char llama[] = " <|python_tag|>{\"name\": \"get_weather\", \"parameters\": "
                                "{\"city\": \"Paris\", \"days\": 2.50}} ;\n{\"name\": \"now\", "
                                "\"arguments\": {}, \"parameters\": {\"x\": 1}}\n";
    content = 99;
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_AUTO_JSON, NULL, llama, strlen(llama),
                                               "l_0", &calls, &n, &content),
                     QV_OK);
    assert_int_equal(n, 2);
    assert_int_equal(content, 0);
    assert_string_equal(calls[0].name, "get_weather");
    assert_string_equal(calls[0].arguments, "{\"city\":\"Paris\",\"days\":2.5}");
    assert_string_equal(calls[1].name, "now"); /* "arguments" wins over "parameters" (vLLM) */
    assert_string_equal(calls[1].arguments, "{}");
    assert_string_equal(calls[1].id, "call_l_0_1");
    qv_proto_tool_calls_free(calls, n);
    static const char *const not_llama[] = {
        "Sure: {\"name\": \"f\", \"parameters\": {}}", /* text first: content */
        "{\"name\": \"f\", \"parameters\": {}} and more",
        "{\"name\": \"f\", \"parameters\": [1]}",
        "{\"name\": \"f\"}",
        "{\"name\": \"f\", \"parameters\": {}};",
        "{\"name\": \"f\", \"parameters\": {}}; [1]",
        "{\"name\": \"f\", \"parameters\": {\"a\": ",
        "<|python_tag|>",
        "   ",
        ""};
    assert_not_calls(QV_PROTO_TOOLS_AUTO_JSON, not_llama, sizeof(not_llama) / sizeof(not_llama[0]));
    static const struct {
        const char *text;
        size_t want;
    } held_json[] = {{"plain text", 10},      {" \n", 0},  {" {\"name", 0}, {"<|python", 0},
                     {"<|python_tag|> {", 0}, {"<|im", 4}, {"", 0},         {"x {", 3}};
    for (size_t i = 0; i < sizeof(held_json) / sizeof(held_json[0]); i++)
        assert_int_equal(qv_proto_tool_text_len(QV_PROTO_TOOLS_AUTO_JSON, held_json[i].text,
                                                strlen(held_json[i].text)),
                         held_json[i].want);

    /* auto on Mistral v0.3's template: content, then [TOOL_CALLS] and a list of calls (the
     * marker may have been skipped as a special token: then the list is the whole answer) */
    static const char mistral[] = "Checking.\n[TOOL_CALLS] [{\"name\": \"get_weather\", "
                                  "\"arguments\": {\"city\": \"Zürich\", \"days\": 1e0}}, "
                                  "{\"name\": \"now\", \"arguments\": {}}] \n";
    content = 99;
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_AUTO_MISTRAL, NULL, mistral,
                                               strlen(mistral), "m_0", &calls, &n, &content),
                     QV_OK);
    assert_int_equal(n, 2);
    assert_int_equal(content, strlen("Checking.\n"));
    assert_string_equal(calls[0].name, "get_weather");
    assert_string_equal(calls[0].arguments, "{\"city\":\"Zürich\",\"days\":1.0}");
    assert_string_equal(calls[1].name, "now");
    assert_string_equal(calls[1].arguments, "{}");
    qv_proto_tool_calls_free(calls, n);
    static const char *const lists[] = {" [{\"name\": \"f\", \"arguments\": {\"a\": [1]}}]",
                                        " \n[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {}}]"};
    for (size_t i = 0; i < 2; i++) {
        content = 99;
        assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_AUTO_MISTRAL, NULL, lists[i],
                                                   strlen(lists[i]), "m_0", &calls, &n, &content),
                         QV_OK);
        assert_int_equal(n, 1);
        assert_int_equal(content, 0); /* whitespace before the marker is no content */
        assert_string_equal(calls[0].name, "f");
        qv_proto_tool_calls_free(calls, n);
    }
    static const char *const not_mistral[] = {
        "Sure: [{\"name\": \"f\", \"arguments\": {}}]", /* no marker: the list must be all */
        "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}] and more",
        "[TOOL_CALLS] {\"name\": \"f\", \"arguments\": {}}",
        "[TOOL_CALLS] [{\"name\": \"f\", \"parameters\": {}}]",
        "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": \"{}\"}]",
        "[TOOL_CALLS] []",
        "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a\": ",
        "[TOOL_CALLS]",
        "[1, 2]",
        ""};
    assert_not_calls(QV_PROTO_TOOLS_AUTO_MISTRAL, not_mistral,
                     sizeof(not_mistral) / sizeof(not_mistral[0]));
    static const struct {
        const char *text;
        size_t want;
    } held_mistral[] = {{"plain text", 10},        {" \n", 0},      {" [{\"name", 0},
                        {"[TOOL_CA", 0},           {"ok [TOOL", 3}, {"ok [TOOL_CALLS] [", 3},
                        {"ok [1] and [TOOL_", 11}, {"", 0},         {"ok [x", 5}};
    for (size_t i = 0; i < sizeof(held_mistral) / sizeof(held_mistral[0]); i++)
        assert_int_equal(qv_proto_tool_text_len(QV_PROTO_TOOLS_AUTO_MISTRAL, held_mistral[i].text,
                                                strlen(held_mistral[i].text)),
                         held_mistral[i].want);
    /* Mistral's ids: 9 letters or digits, the same for the same (base, i), distinct otherwise */
    char id[10], id2[10];
    qv_proto_mistral_call_id("abc_0", 0, id);
    qv_proto_mistral_call_id("abc_0", 0, id2);
    assert_string_equal(id, id2);
    assert_int_equal(strlen(id), 9);
    for (int i = 0; i < 9; i++)
        assert_true(isalnum((unsigned char)id[i]));
    char seen[200][10];
    for (size_t i = 0; i < 200; i++) {
        qv_proto_mistral_call_id(i % 2 ? "abc_0" : "abc_1", i / 2, seen[i]);
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(seen[i], seen[j]);
    }

    /* a response with content and calls */
    assert_int_equal(qv_proto_tool_calls_parse(QV_PROTO_TOOLS_AUTO, NULL, hermes, strlen(hermes),
                                               "q_0", &calls, &n, &content),
                     QV_OK);
    qv_proto_result ar = {.endpoint = QV_PROTO_CHAT,
                          .id = "chatcmpl-2",
                          .model = "m",
                          .text = hermes,
                          .text_len = content,
                          .finish_reason = "tool_calls",
                          .calls = calls,
                          .n_calls = n};
    o = parse(qv_proto_encode_response(&ar));
    const cJSON *msg = path(cJSON_GetArrayItem(path(o, "choices", NULL), 0), "message", NULL);
    assert_string_equal(path(msg, "content", NULL)->valuestring, "Let me check.\n");
    assert_int_equal(cJSON_GetArraySize(path(msg, "tool_calls", NULL)), 2);
    cJSON_Delete(o);
    qv_proto_tool_calls_free(calls, n);
}

static void test_encode_completion(void **state) {
    (void)state;
    qv_proto_logprob lps[2] = {{.token = "He",
                                .logprob = -0.5f,
                                .n_top = 2,
                                .top_token = {"He", "She"},
                                .top_logprob = {-0.5f, -1.0f}},
                               {.token = "llo", .logprob = -0.25f}};
    qv_proto_result r = {.endpoint = QV_PROTO_COMPLETIONS,
                         .id = "cmpl-1",
                         .model = "m",
                         .created = 42,
                         .text = "Hello\"\n",
                         .text_len = 7,
                         .finish_reason = "length",
                         .logprobs = true,
                         .lps = lps,
                         .n_lps = 2,
                         .usage = true,
                         .prompt_tokens = 3,
                         .completion_tokens = 2};
    cJSON *o = parse(qv_proto_encode_response(&r));
    assert_string_equal(path(o, "object", NULL)->valuestring, "text_completion");
    assert_int_equal(path(o, "created", NULL)->valueint, 42);
    const cJSON *ch = cJSON_GetArrayItem(path(o, "choices", NULL), 0);
    assert_string_equal(path(ch, "text", NULL)->valuestring, "Hello\"\n");
    assert_string_equal(path(ch, "finish_reason", NULL)->valuestring, "length");
    const cJSON *lp = path(ch, "logprobs", NULL);
    assert_string_equal(cJSON_GetArrayItem(path(lp, "tokens", NULL), 1)->valuestring, "llo");
    assert_true(cJSON_GetArrayItem(path(lp, "token_logprobs", NULL), 0)->valuedouble == -0.5);
    assert_int_equal(cJSON_GetArrayItem(path(lp, "text_offset", NULL), 1)->valueint, 2);
    const cJSON *top0 = cJSON_GetArrayItem(path(lp, "top_logprobs", NULL), 0);
    assert_true(path(top0, "She", NULL)->valuedouble == -1.0);
    assert_int_equal(path(o, "usage", "total_tokens")->valueint, 5);
    cJSON_Delete(o);
    /* an echoed prompt's first token: null logprob, null alternatives, offset 0 */
    lps[0].none = true;
    o = parse(qv_proto_encode_response(&r));
    lp = path(cJSON_GetArrayItem(path(o, "choices", NULL), 0), "logprobs", NULL);
    assert_true(cJSON_IsNull(cJSON_GetArrayItem(path(lp, "token_logprobs", NULL), 0)));
    assert_true(cJSON_IsNull(cJSON_GetArrayItem(path(lp, "top_logprobs", NULL), 0)));
    assert_true(cJSON_GetArrayItem(path(lp, "token_logprobs", NULL), 1)->valuedouble == -0.25);
    assert_int_equal(cJSON_GetArrayItem(path(lp, "text_offset", NULL), 1)->valueint, 2);
    cJSON_Delete(o);
    /* echo: completions only, and it allows max_tokens 0 */
    qv_proto_request q;
    qv_proto_error e;
    assert_int_equal(
        dec(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"echo\":true,\"max_tokens\":0}", &q, &e),
        QV_OK);
    assert_true(q.echo);
    assert_int_equal(q.max_tokens, 0);
    qv_proto_request_free(&q);
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"max_tokens\":0}", "max_tokens");
    /* n choices: each with its index, usage from the first */
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"n\":64}", &q, &e), QV_OK);
    assert_int_equal(q.n, 64);
    qv_proto_request_free(&q);
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"n\":65}", "n");
    /* a batch of prompts: the first in prompt / prompt_ids, the others in more */
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":[\"a\",\"bc\",\"d\"],\"n\":2}", &q, &e),
                     QV_OK);
    assert_string_equal(q.prompt, "a");
    assert_int_equal(q.n_more, 2);
    assert_true(q.more[0].len == 2 && !strcmp(q.more[0].text, "bc") && !q.more[1].ids);
    qv_proto_request_free(&q);
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":[[1,2],[3]]}", &q, &e), QV_OK);
    assert_true(q.n_prompt_ids == 2 && q.prompt_ids[1] == 2 && q.n_more == 1);
    assert_true(q.more[0].n_ids == 1 && q.more[0].ids[0] == 3 && !q.more[0].text);
    qv_proto_request_free(&q);
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":[\"a\",\"b\"],\"n\":33}", "n");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":[\"a\",[1]]}", "prompt");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":[[1],\"a\"]}", "prompt");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":[[1],[]]}", "prompt");
    qv_proto_result two[2] = {r, r};
    two[0].logprobs = two[1].logprobs = false;
    two[1].index = 1;
    two[1].text = "Bye";
    two[1].text_len = 3;
    two[1].finish_reason = "stop";
    o = parse(qv_proto_encode_response_choices(two, 2));
    const cJSON *chs = path(o, "choices", NULL);
    assert_int_equal(cJSON_GetArraySize(chs), 2);
    assert_int_equal(path(cJSON_GetArrayItem(chs, 1), "index", NULL)->valueint, 1);
    assert_string_equal(path(cJSON_GetArrayItem(chs, 1), "text", NULL)->valuestring, "Bye");
    assert_string_equal(path(cJSON_GetArrayItem(chs, 1), "finish_reason", NULL)->valuestring,
                        "stop");
    assert_int_equal(path(o, "usage", "total_tokens")->valueint, 5);
    cJSON_Delete(o);
    /* vLLM's chat echo: decoded apart from completions' (no max_tokens 0, not with tools) */
    assert_int_equal(dec(QV_PROTO_CHAT,
                         "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true}", &q,
                         &e),
                     QV_OK);
    assert_true(q.chat_echo && !q.echo);
    qv_proto_request_free(&q);
    expect_bad(QV_PROTO_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":1}",
               "echo");
    expect_bad(QV_PROTO_CHAT,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true,"
               "\"max_tokens\":0}",
               "max_tokens");
    expect_bad(QV_PROTO_CHAT,
               "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"echo\":true," TOOLS
               ",\"tool_choice\":\"required\"}",
               "echo");
}

static void test_encode_chat_and_chunks(void **state) {
    (void)state;
    qv_proto_logprob lp = {.token = "\xc3\xa9",
                           .logprob = -0.1f,
                           .n_top = 1,
                           .top_token = {"\xc3\xa9"},
                           .top_logprob = {-0.1f}};
    qv_proto_result r = {.endpoint = QV_PROTO_CHAT,
                         .id = "chatcmpl-1",
                         .model = "m",
                         .text = "\xc3\xa9",
                         .text_len = 2,
                         .finish_reason = "stop",
                         .logprobs = true,
                         .lps = &lp,
                         .n_lps = 1,
                         .usage = true,
                         .prompt_tokens = 1,
                         .completion_tokens = 1};
    cJSON *o = parse(qv_proto_encode_response(&r));
    assert_string_equal(path(o, "object", NULL)->valuestring, "chat.completion");
    const cJSON *ch = cJSON_GetArrayItem(path(o, "choices", NULL), 0);
    assert_string_equal(path(ch, "message", "role")->valuestring, "assistant");
    assert_string_equal(path(ch, "message", "content")->valuestring, "\xc3\xa9");
    const cJSON *c0 = cJSON_GetArrayItem(path(ch, "logprobs", "content"), 0);
    assert_int_equal(cJSON_GetArraySize(path(c0, "bytes", NULL)), 2);
    assert_int_equal(cJSON_GetArrayItem(path(c0, "bytes", NULL), 0)->valueint, 0xc3);
    assert_int_equal(cJSON_GetArraySize(path(c0, "top_logprobs", NULL)), 1);
    cJSON_Delete(o);

    /* First chunk carries the role; a running chunk has a null finish_reason. */
    r.usage = false;
    r.finish_reason = NULL;
    r.logprobs = false;
    o = parse(qv_proto_encode_chunk(&r, true));
    assert_string_equal(path(o, "object", NULL)->valuestring, "chat.completion.chunk");
    ch = cJSON_GetArrayItem(path(o, "choices", NULL), 0);
    assert_string_equal(path(ch, "delta", "role")->valuestring, "assistant");
    assert_true(cJSON_IsNull(path(ch, "finish_reason", NULL)));
    assert_true(cJSON_IsNull(path(ch, "logprobs", NULL)));
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "usage"));
    cJSON_Delete(o);
    /* Later chunk: no role. */
    o = parse(qv_proto_encode_chunk(&r, false));
    ch = cJSON_GetArrayItem(path(o, "choices", NULL), 0);
    assert_null(cJSON_GetObjectItemCaseSensitive(path(ch, "delta", NULL), "role"));
    cJSON_Delete(o);
    /* Usage chunk: empty choices. */
    r.usage = true;
    r.prompt_tokens = 4;
    r.completion_tokens = 6;
    o = parse(qv_proto_encode_chunk(&r, false));
    assert_int_equal(cJSON_GetArraySize(path(o, "choices", NULL)), 0);
    assert_int_equal(path(o, "usage", "total_tokens")->valueint, 10);
    cJSON_Delete(o);
    /* continuous_usage_stats: a choice's chunk with its usage so far */
    r.usage = false;
    r.chunk_usage = true;
    r.completion_tokens = 2;
    o = parse(qv_proto_encode_chunk(&r, false));
    assert_int_equal(cJSON_GetArraySize(path(o, "choices", NULL)), 1);
    assert_int_equal(path(o, "usage", "prompt_tokens")->valueint, 4);
    assert_int_equal(path(o, "usage", "completion_tokens")->valueint, 2);
    assert_int_equal(path(o, "usage", "total_tokens")->valueint, 6);
    cJSON_Delete(o);
}

static void test_encode_error_models_sse(void **state) {
    (void)state;
    cJSON *o = parse(qv_proto_encode_error("bad \"x\"", "invalid_request_error", "x", NULL));
    assert_string_equal(path(o, "error", "message")->valuestring, "bad \"x\"");
    assert_string_equal(path(o, "error", "type")->valuestring, "invalid_request_error");
    assert_string_equal(path(o, "error", "param")->valuestring, "x");
    assert_true(cJSON_IsNull(path(o, "error", "code")));
    cJSON_Delete(o);
    o = parse(qv_proto_encode_error("m", "t", NULL, "c"));
    assert_true(cJSON_IsNull(path(o, "error", "param")));
    assert_string_equal(path(o, "error", "code")->valuestring, "c");
    cJSON_Delete(o);
    const char *ids[2] = {"a", "b"};
    o = parse(qv_proto_encode_models(ids, 2, 7, NULL));
    assert_string_equal(path(o, "object", NULL)->valuestring, "list");
    assert_string_equal(path(cJSON_GetArrayItem(path(o, "data", NULL), 1), "id", NULL)->valuestring,
                        "b");
    cJSON_Delete(o);
    size_t n = 0;
    char *f = qv_proto_sse_frame("{\"a\":1}", 7, &n);
    assert_non_null(f);
    assert_int_equal(n, strlen("data: {\"a\":1}\n\n"));
    assert_string_equal(f, "data: {\"a\":1}\n\n");
    qv_free(f);
    assert_string_equal(QV_PROTO_SSE_DONE, "data: [DONE]\n\n");
}

/* Every allocation failure point of a full decode and encode fails cleanly (ASan: no leak). */
/* Encodes r with the k-th allocation failing, k = 0, 1, ... until it succeeds (at most max
 * tries): how many failed. Each failure must give NULL, never a partial answer. */
static long encode_failures(const qv_proto_result *r, long max) {
    long k = 0;
    for (; k < max; k++) {
        qv_alloc_fail_after(k);
        char *out = qv_proto_encode_response(r);
        qv_alloc_fail_after(-1);
        if (out) {
            qv_free(out);
            break;
        }
    }
    return k;
}

/* vLLM's guided_whitespace_pattern "": the JSON is compact; another pattern is refused. */
static void test_whitespace_pattern(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    static const char *const bodies[] = {
        "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"},"
        "\"guided_whitespace_pattern\":\"\"}",
        "{\"prompt\":\"x\",\"guided_json\":{\"type\":\"object\"},\"guided_whitespace_pattern\":"
        "\"\"}"};
    for (size_t i = 0; i < QV_ARRAY_LEN(bodies); i++) {
        assert_int_equal(dec(QV_PROTO_COMPLETIONS, bodies[i], &r, &e), QV_OK);
        assert_false(r.json_object);
        assert_non_null(r.json_schema);
        assert_true(!strncmp(qv_json_schema_text(r.json_schema), "compact:", 8));
        qv_proto_request_free(&r);
    }
    assert_int_equal(dec(QV_PROTO_COMPLETIONS,
                         "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"}}", &r,
                         &e),
                     QV_OK);
    assert_true(r.json_object && !r.json_schema);
    qv_proto_request_free(&r);
    expect_bad(QV_PROTO_COMPLETIONS,
               "{\"prompt\":\"x\",\"response_format\":{\"type\":\"json_object\"},"
               "\"guided_whitespace_pattern\":\"[ ]?\"}",
               "guided_whitespace_pattern");
}

/* vLLM prompt_logprobs: decoded for completions and chat (null = not asked; 0..20; refused
 * with stream), and encoded per choice (completions) or once at the top (chat): null first, then
 * {"<id>": {"logprob", "rank", "decoded_token"}} with the prompt token first and its
 * alternatives ranked 1.., the token taking its place's rank when it is one of them. */
static void test_prompt_logprobs(void **state) {
    (void)state;
    qv_proto_request q;
    qv_proto_error e;
    assert_int_equal(dec(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":0}", &q, &e),
                     QV_OK);
    assert_true(q.prompt_lps);
    assert_int_equal(q.prompt_logprobs, 0);
    qv_proto_request_free(&q);
    assert_int_equal(
        dec(QV_PROTO_CHAT,
            "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"prompt_logprobs\":20}", &q,
            &e),
        QV_OK);
    assert_true(q.prompt_lps);
    assert_int_equal(q.prompt_logprobs, 20);
    qv_proto_request_free(&q);
    assert_int_equal(
        dec(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":null}", &q, &e), QV_OK);
    assert_false(q.prompt_lps);
    qv_proto_request_free(&q);
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":21}",
               "prompt_logprobs");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":-1}",
               "prompt_logprobs");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":true}",
               "prompt_logprobs");
    expect_bad(QV_PROTO_COMPLETIONS, "{\"prompt\":\"x\",\"prompt_logprobs\":1,\"stream\":true}",
               "prompt_logprobs");

    qv_proto_logprob plps[3] = {{.none = true, .id = 1},
                                {.token = "He",
                                 .id = 7,
                                 .logprob = -0.5f,
                                 .rank = 1,
                                 .n_top = 2,
                                 .top_id = {7, 9},
                                 .top_token = {"He", "She"},
                                 .top_logprob = {-0.5f, -1.0f}},
                                {.token = "llo",
                                 .id = 4,
                                 .logprob = -3.0f,
                                 .rank = 5,
                                 .n_top = 1,
                                 .top_id = {2},
                                 .top_token = {"y"},
                                 .top_logprob = {-0.1f}}};
    qv_proto_result r = {.endpoint = QV_PROTO_COMPLETIONS,
                         .text = "t",
                         .text_len = 1,
                         .usage = true,
                         .prompt_logprobs = true,
                         .plps = plps,
                         .n_plps = 3};
    cJSON *o = parse(qv_proto_encode_response(&r));
    const cJSON *pl =
        path(cJSON_GetArrayItem(path(o, "choices", NULL), 0), "prompt_logprobs", NULL);
    assert_int_equal(cJSON_GetArraySize(pl), 3);
    assert_true(cJSON_IsNull(cJSON_GetArrayItem(pl, 0)));
    const cJSON *p1 = cJSON_GetArrayItem(pl, 1), *p2 = cJSON_GetArrayItem(pl, 2);
    assert_int_equal(cJSON_GetArraySize(p1), 2); /* the token is its first alternative */
    assert_string_equal(p1->child->string, "7");
    assert_int_equal(path(p1, "7", "rank")->valueint, 1);
    assert_string_equal(path(p1, "7", "decoded_token")->valuestring, "He");
    assert_int_equal(path(p1, "9", "rank")->valueint, 2);
    assert_true(path(p1, "9", "logprob")->valuedouble == -1.0);
    assert_int_equal(cJSON_GetArraySize(p2), 2); /* the token, then one alternative */
    assert_string_equal(p2->child->string, "4");
    assert_int_equal(path(p2, "4", "rank")->valueint, 5);
    assert_true(path(p2, "4", "logprob")->valuedouble == -3.0);
    assert_int_equal(path(p2, "2", "rank")->valueint, 1);
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "prompt_logprobs"));
    cJSON_Delete(o);
    /* chat: once, beside usage */
    r.endpoint = QV_PROTO_CHAT;
    o = parse(qv_proto_encode_response(&r));
    assert_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(path(o, "choices", NULL), 0),
                                                 "prompt_logprobs"));
    assert_int_equal(cJSON_GetArraySize(path(o, "prompt_logprobs", NULL)), 3);
    cJSON_Delete(o);
    /* not asked: no field */
    r.prompt_logprobs = false;
    o = parse(qv_proto_encode_response(&r));
    assert_null(cJSON_GetObjectItemCaseSensitive(o, "prompt_logprobs"));
    cJSON_Delete(o);
    /* allocation failure anywhere in the list: NULL, never a partial answer */
    r.prompt_logprobs = true;
    r.endpoint = QV_PROTO_COMPLETIONS;
    const long failures = encode_failures(&r, 400);
    assert_true(failures > 10 && failures < 400);
}

/* qv_proto_tool_calls_partial(how) over every prefix of the finished answer t: calls appear in
 * order once their name is whole, each one's arguments only ever grow, at the end they are
 * exactly what qv_proto_tool_calls_parse gives (numbers, escapes and surrogate pairs re-written
 * as Python does, whitespace or not), and the content before the calls is final once a call has
 * begun. Returns in how many prefixes some call's arguments grew. */
static size_t check_prefixes(enum qv_proto_tool_choice how, const char *t) {
    const size_t len = strlen(t);
    qv_proto_tool_call *want = NULL;
    size_t n_want = 0, content = 0;
    if (qv_proto_tool_calls_parse(how, NULL, t, len, "b", &want, &n_want, &content) != QV_OK)
        fail_msg("not calls: '%s'", t);
    qv_proto_tool_call *prev = NULL;
    size_t n_prev = 0, grew = 0;
    for (size_t p = 0; p <= len; p++) {
        qv_proto_tool_call *got = NULL;
        size_t n = 0;
        assert_int_equal(qv_proto_tool_calls_partial(how, t, p, "b", &got, &n), QV_OK);
        if (n < n_prev || n > n_want)
            fail_msg("'%s' prefix %zu: %zu calls after %zu", t, p, n, n_prev);
        if (n && how != QV_PROTO_TOOLS_REQUIRED && qv_proto_tool_text_len(how, t, p) != content)
            fail_msg("'%s' prefix %zu: content %zu, not %zu", t, p,
                     qv_proto_tool_text_len(how, t, p), content);
        for (size_t k = 0; k < n; k++) {
            assert_int_equal(got[k].index, (int)k);
            assert_string_equal(got[k].id, want[k].id);
            assert_string_equal(got[k].name, want[k].name);
            const size_t g = strlen(got[k].arguments);
            if (memcmp(got[k].arguments, want[k].arguments, g) != 0)
                fail_msg("'%s' prefix %zu: call %zu arguments '%s' are not a prefix of '%s'", t, p,
                         k, got[k].arguments, want[k].arguments);
            if (k < n_prev) {
                const size_t pg = strlen(prev[k].arguments);
                if (g < pg)
                    fail_msg("'%s' prefix %zu: '%s' after '%s'", t, p, got[k].arguments,
                             prev[k].arguments);
                grew += g > pg;
            }
            if (k + 1 < n) assert_string_equal(got[k].arguments, want[k].arguments);
        }
        if (p == len) {
            assert_int_equal(n, n_want);
            for (size_t k = 0; k < n; k++)
                assert_string_equal(got[k].arguments, want[k].arguments);
        }
        qv_proto_tool_calls_free(prev, n_prev);
        prev = got;
        n_prev = n;
    }
    printf("%d '%.30s...': %zu calls, arguments grew in %zu of %zu prefixes ('%s')\n", (int)how, t,
           n_want, grew, len, want[0].arguments);
    qv_proto_tool_calls_free(prev, n_prev);
    qv_proto_tool_calls_free(want, n_want);
    return grew;
}

/* Allocation failure anywhere in a partial reading of t[0..len): NOMEM and nothing held; returns
 * how many allocations failed before it succeeded. */
static long partial_failures(enum qv_proto_tool_choice how, const char *t, size_t len) {
    long k = 0;
    for (; k < 400; k++) {
        qv_proto_tool_call *got = NULL;
        size_t n = 0;
        qv_alloc_fail_after(k);
        qv_status st = qv_proto_tool_calls_partial(how, t, len, "b", &got, &n);
        qv_alloc_fail_after(-1);
        assert_true(n == 0 || n == 2);
        qv_proto_tool_calls_free(got, n);
        if (st == QV_OK) break;
        assert_int_equal(st, QV_ERR_NOMEM);
        assert_true(!got && !n);
    }
    return k;
}

static void test_tool_calls_partial(void **state) {
    (void)state;
    static const struct {
        enum qv_proto_tool_choice how;
        const char *text;
    } answers[] = {
        {QV_PROTO_TOOLS_REQUIRED,
         "[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Par\\u00e9s \\\"x\\\"\\n\","
         "\"unit\":\"celsius\",\"n\":[1.50,1e2,-0,true,null,{}],\"e\":\"\\ud83d\\ude00!\"}},"
         "{\"name\":\"now\",\"arguments\":{}}]"},
        {QV_PROTO_TOOLS_REQUIRED,
         "[ { \"name\" : \"a\\u0062\" , \"arguments\" : { \"k\" : { \"x\" : [ 10 , \"\" ] } , "
         "\"\\u00e9\" : 0.25 } } ]"},
        {QV_PROTO_TOOLS_REQUIRED,
         "[{\"name\":\"f\",\"arguments\":{\"s\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}}]"},
        /* Hermes: content, then blocks; the last one unclosed; markers' beginnings in strings */
        {QV_PROTO_TOOLS_AUTO,
         "Let me check <b>.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
         "\"Par\\u00e9s \\\"x\\\"\\n\", \"n\": [1.50, 1e2, -0, true, null, {}], \"e\": "
         "\"\\ud83d\\ude00!\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": "
         "{}}\n</tool_call>"},
        {QV_PROTO_TOOLS_AUTO,
         "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"s\": \"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98"
         "\x80 <tool_response> </b> <\", \"k\": [{\"a\": 1}]}}\n"},
        /* Llama: whitespace, the python tag, objects joined by ';' */
        {QV_PROTO_TOOLS_AUTO_JSON,
         " <|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Z\\u00fcrich\", "
         "\"days\": 2.50, \"e\": \"\\ud83d\\ude00\"}} ;\n{\"name\": \"now\", \"arguments\": {}, "
         "\"parameters\": {\"x\": 1}}\n"},
        {QV_PROTO_TOOLS_AUTO_JSON,
         "{\"name\":\"f\",\"parameters\":{\"s\":\"\xc3\xa9\xe2\x82\xac;\\\"\",\"k\":[1,{\"a\":"
         "null}]}};{\"name\":\"g\",\"arguments\":{\"x\":-1.5e-7}}"},
        /* Mistral: content then the marker, the marker alone, the list alone */
        {QV_PROTO_TOOLS_AUTO_MISTRAL,
         "Checking [1].\n[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": "
         "\"Z\xc3\xbcrich\", \"days\": 1e0, \"q\": \"\\\"\\u00e9\\ud83d\\ude00\"}}, {\"name\": "
         "\"now\", \"arguments\": {}}] \n"},
        {QV_PROTO_TOOLS_AUTO_MISTRAL,
         " [{\"name\": \"f\", \"arguments\": {\"a\": [1, 2.0], \"s\": \"[TOOL\\n\"}}, "
         "{\"name\": \"g\", \"arguments\": {\"t\": \"\xe2\x82\xac\"}}]"},
        {QV_PROTO_TOOLS_AUTO_MISTRAL,
         "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {\"x\": \"y\", \"z\": {\"w\": []}}}]"},
    };
    for (size_t a = 0; a < QV_ARRAY_LEN(answers); a++)
        assert_true(check_prefixes(answers[a].how, answers[a].text) > 3);
    /* nothing until a name is whole; not an array; a half-written key or number waits */
    static const struct {
        enum qv_proto_tool_choice how;
        const char *text;
        size_t n;
        const char *args; /* the last call's */
    } cases[] = {
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"get_w", 0, NULL},
        {QV_PROTO_TOOLS_REQUIRED, "{\"name\":\"x\"", 0, NULL},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\"", 1, ""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":", 1, ""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"ci", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"city\":", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"city\":\"P", 1,
         "{\"city\":\"P"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":1.5", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":1.50,", 1, "{\"a\":1.5"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"\\u00", 1, "{\"a\":\""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"\\ud83d\\ude", 1,
         "{\"a\":\""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"\xe2\x82", 1,
         "{\"a\":\""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":[tr", 1, "{\"a\":["},
        /* where the text leaves JSON, nothing after that point */
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"b\\udv3d and more", 1,
         "{\"a\":\"b"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"\\ud83dx\"", 1,
         "{\"a\":\""},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"b\\q\"", 1,
         "{\"a\":\"b"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"b\x01\"", 1,
         "{\"a\":\"b"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":\"b\xc3\x28\"", 1,
         "{\"a\":\"b"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\" \"b\",\"c\":1}", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":1.2.3,\"c\":1", 1, "{"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":1,,\"c\":1", 1,
         "{\"a\":1"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{\"a\":[1}", 1, "{\"a\":[1"},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"n\\u0061me\",\"n\\u0061me\":\"y\",\"arguments\":{",
         1, "{"},
        /* not a call: the calls end before it (a name that is not a string, arguments that
         * are not an object, a whole object without arguments, no ',' between calls) */
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":1,\"arguments\":{\"a\":1", 0, NULL},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":[1", 0, NULL},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\"},{\"name\":\"y\",\"arguments\":{}}]", 0, NULL},
        {QV_PROTO_TOOLS_REQUIRED, "[{\"name\":\"x\",\"arguments\":{}}{\"name\":\"y\"", 1, "{}"},
        {QV_PROTO_TOOLS_NAMED, "{\"a\":1}", 0, NULL},
        {QV_PROTO_TOOLS_NONE, "[{\"name\":\"x\",\"arguments\":{}}]", 0, NULL},
        /* Hermes: a block that is not JSON, or not a call, ends the calls; a marker's
         * beginning in a string waits; the next block ends an unclosed one */
        {QV_PROTO_TOOLS_AUTO, "no calls [{\"name\":\"x\",\"arguments\":{}}]", 0, NULL},
        {QV_PROTO_TOOLS_AUTO, "<tool_call>\nnot json\n</tool_call>", 0, NULL},
        {QV_PROTO_TOOLS_AUTO,
         "<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": \"g\", \"arguments\": {}}",
         0, NULL},
        {QV_PROTO_TOOLS_AUTO,
         "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call> and <tool_call>[1]", 1, "{}"},
        {QV_PROTO_TOOLS_AUTO, "a <tool_call>{\"name\": 1, \"arguments\": {", 0, NULL},
        {QV_PROTO_TOOLS_AUTO, "<tool_call>{\"name\": \"f\", \"arguments\": [", 0, NULL},
        {QV_PROTO_TOOLS_AUTO, "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"a<tool_c", 1,
         "{\"s\":\"a"},
        {QV_PROTO_TOOLS_AUTO, "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"a</tool_", 1,
         "{\"s\":\"a"},
        {QV_PROTO_TOOLS_AUTO, "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"a<tool_x", 1,
         "{\"s\":\"a<tool_x"},
        {QV_PROTO_TOOLS_AUTO,
         "<tool_call>{\"name\": \"f\", \"arguments\": {\"s\": \"a<tool_call>{\"name\": \"g\"", 1,
         "{\"s\":\"a"},
        {QV_PROTO_TOOLS_AUTO, "<tool_call><tool_call>{\"name\": \"g\", \"arguments\": {", 0, NULL},
        /* read as calls, though the finished answer will not be (garbage after the object) */
        {QV_PROTO_TOOLS_AUTO, "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}} extra", 1,
         "{\"a\":1}"},
        /* Llama: text first is content; the calls end at what is not ';' */
        {QV_PROTO_TOOLS_AUTO_JSON, "Sure {\"name\": \"f\", \"parameters\": {", 0, NULL},
        {QV_PROTO_TOOLS_AUTO_JSON, "<|python_ta", 0, NULL},
        {QV_PROTO_TOOLS_AUTO_JSON, "<|python_tag|>{\"name\": \"f\", \"parameters\": {\"a\": \"b", 1,
         "{\"a\":\"b"},
        {QV_PROTO_TOOLS_AUTO_JSON, "{\"name\": \"f\", \"parameters\": {\"a\": 1}} and {\"name\"", 1,
         "{\"a\":1}"},
        {QV_PROTO_TOOLS_AUTO_JSON, "{\"name\": \"f\", \"parameters\": {}}; {\"name\": \"g\"", 2,
         ""},
        {QV_PROTO_TOOLS_AUTO_JSON, "{\"name\": \"f\", \"parameters\": 5, \"arguments\": {\"a\"", 1,
         "{"},
        {QV_PROTO_TOOLS_AUTO_JSON, "{\"name\": \"f\", \"arguments\": 5, \"parameters\": {\"a\"", 0,
         NULL},
        /* "arguments" after "parameters" counts (as the finished call reads it) */
        {QV_PROTO_TOOLS_AUTO_JSON,
         "{\"name\": \"f\", \"parameters\": {\"a\": 1}, \"arguments\": {\"b\": 2,", 1, "{\"b\":2"},
        /* Mistral: content until the marker; after it, a list; the list alone */
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "Sure: [{\"name\": \"f\", \"arguments\": {}}]", 0, NULL},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "[", 0, NULL},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "[TOOL_CA", 0, NULL},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "[TOOL_CALLS] garbage [{\"name\": \"f\", \"arguments\": {", 0,
         NULL},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "ok [TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"a", 1,
         "{"},
        {QV_PROTO_TOOLS_AUTO_MISTRAL,
         "[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {}}] and more", 1, "{}"},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "[TOOL_CALLS] [{\"name\": \"f\", \"parameters\": {}}]", 0,
         NULL},
        {QV_PROTO_TOOLS_AUTO_MISTRAL, "[TX, {\"name\": \"f\", \"arguments\": {}}]", 0, NULL},
        /* the list alone is the calls read, whatever follows it */
        {QV_PROTO_TOOLS_AUTO_MISTRAL,
         "[{\"name\": \"f\", \"arguments\": {}}] [TOOL_CALLS] [{\"name\": \"g\", \"arguments\": "
         "{}}]",
         1, "{}"},
    };
    for (size_t c = 0; c < QV_ARRAY_LEN(cases); c++) {
        qv_proto_tool_call *got = NULL;
        size_t n = 0;
        assert_int_equal(qv_proto_tool_calls_partial(cases[c].how, cases[c].text,
                                                     strlen(cases[c].text), "b", &got, &n),
                         QV_OK);
        if (n != cases[c].n) fail_msg("case %zu '%s': %zu calls", c, cases[c].text, n);
        if (n) assert_string_equal(got[n - 1].arguments, cases[c].args);
        if (n && cases[c].how != QV_PROTO_TOOLS_REQUIRED) assert_string_equal(got[0].name, "f");
        qv_proto_tool_calls_free(got, n);
    }
    /* allocation failure anywhere, two calls read in each format: NOMEM and nothing held */
    for (size_t a = 0; a < QV_ARRAY_LEN(answers); a++) {
        const char *t = answers[a].text;
        if (a == 1 || a == 2 || a == 4 || a == 9) continue; /* one call */
        const long failures = partial_failures(answers[a].how, t, strlen(t) - 12);
        if (failures <= 4 || failures >= 400) fail_msg("answer %zu: %ld failures", a, failures);
    }
}

static void test_alloc_failures(void **state) {
    (void)state;
    const char *json = "{\"model\":\"b:a\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                       "\"text\",\"text\":\"a\"}]}],\"stop\":[\"x\",\"y\"],\"logprobs\":true}";
    int failures = 0;
    for (long k = 0; k < 200; k++) {
        qv_proto_request r;
        qv_proto_error e;
        qv_alloc_fail_after(k);
        qv_status s = dec(QV_PROTO_CHAT, json, &r, &e);
        qv_alloc_fail_after(-1);
        qv_proto_request_free(&r);
        if (s == QV_OK) break;
        /* cJSON's parse failing looks like invalid JSON; ours report NOMEM. */
        assert_true(s == QV_ERR_NOMEM || s == QV_ERR_INVALID);
        failures++;
    }
    assert_true(failures > 3);
    /* tools: the schema compiles, the history's calls are rewritten */
    const char *tools = "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":"
                        "{\"name\":\"now\",\"arguments\":\"{\\\"a\\\":[1]}\"}}]}]," TOOLS
                        ",\"tool_choice\":\"required\"}";
    failures = 0;
    for (long k = 0; k < 2000; k++) {
        qv_proto_request r;
        qv_proto_error e;
        qv_alloc_fail_after(k);
        qv_status s = dec(QV_PROTO_CHAT, tools, &r, &e);
        qv_alloc_fail_after(-1);
        qv_proto_request_free(&r);
        if (s == QV_OK) break;
        assert_true(s == QV_ERR_NOMEM || s == QV_ERR_INVALID);
        failures++;
    }
    assert_true(failures > 10 && failures < 2000);
    static const char answer[] = "[{\"name\":\"a\",\"arguments\":{\"x\":[1,{}]}}]";
    for (long k = 0; k < 200; k++) {
        qv_proto_tool_call *calls = NULL;
        size_t n = 0;
        qv_alloc_fail_after(k);
        qv_status s = qv_proto_tool_calls_parse(QV_PROTO_TOOLS_REQUIRED, NULL, answer,
                                                strlen(answer), "b", &calls, &n, NULL);
        qv_alloc_fail_after(-1);
        qv_proto_tool_calls_free(calls, n);
        if (s == QV_OK) break;
        assert_true(s == QV_ERR_NOMEM || s == QV_ERR_INVALID);
    }
    qv_proto_logprob lp = {
        .token = "a", .logprob = -1.0f, .n_top = 1, .top_token = {"b"}, .top_logprob = {-2.0f}};
    qv_proto_result res = {.endpoint = QV_PROTO_COMPLETIONS,
                           .text = "t",
                           .text_len = 1,
                           .logprobs = true,
                           .lps = &lp,
                           .n_lps = 1,
                           .usage = true};
    assert_true(encode_failures(&res, 200) < 200);
}

/* The Responses API's requests read as the chat requests they mean. */
static void test_responses_decode(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_error e;
    qv_proto_responses_extra x = {0};
    const char *body =
        "{\"model\":\"base:ad\",\"instructions\":\"be brief\",\"max_output_tokens\":7,"
        "\"temperature\":0.5,\"top_k\":3,\"input\":[{\"role\":\"developer\",\"content\":\"d\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"a\"},{\"type\":"
        "\"input_text\",\"text\":\"b\"}]},{\"type\":\"message\",\"role\":\"assistant\","
        "\"content\":[{\"type\":\"output_text\",\"text\":\"x\"}]},{\"type\":\"function_call\","
        "\"call_id\":\"c1\",\"name\":\"f\",\"arguments\":\"{}\"},{\"type\":\"function_call\","
        "\"call_id\":\"c2\",\"name\":\"g\",\"arguments\":\"{\\\"k\\\":1}\"},{\"type\":"
        "\"function_call_output\",\"call_id\":\"c1\",\"output\":\"ok\"}],"
        "\"tools\":[{\"type\":\"function\",\"name\":\"f\",\"parameters\":{\"type\":\"object\"}},"
        "{\"type\":\"function\",\"name\":\"g\"}],\"tool_choice\":\"required\","
        "\"include\":[\"message.output_text.logprobs\"],\"top_logprobs\":2,"
        "\"metadata\":{\"k\":\"v\"},\"n\":5,\"max_tokens\":99,\"messages\":[]}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_int_equal(r.endpoint, QV_PROTO_RESPONSES);
    assert_string_equal(r.adapter, "ad");
    assert_int_equal(r.max_tokens, 7); /* chat's own max_tokens and n are not read */
    assert_int_equal(r.n, 1);
    assert_true(r.temperature == 0.5f && r.top_k == 3 && r.logprobs && r.top_logprobs == 2);
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_REQUIRED);
    assert_non_null(r.tools_text);
    assert_non_null(strstr(r.tools_text, "\"function\":{\"name\":\"f\""));
    assert_int_equal(r.n_messages, 5);
    const char *roles[5] = {"system", "system", "user", "assistant", "tool"};
    const char *texts[5] = {"be brief", "d", "ab", "x", "ok"};
    for (int i = 0; i < 5; i++) {
        assert_string_equal(r.messages[i].role, roles[i]);
        assert_string_equal(r.messages[i].content, texts[i]);
    }
    assert_int_equal(r.messages[3].n_calls, 2); /* both calls join the assistant's turn */
    assert_string_equal(r.messages[3].calls[1].id, "c2");
    assert_string_equal(r.messages[3].calls[1].arguments, "{\"k\":1}");
    assert_string_equal(r.messages[4].tool_call_id, "c1");
    cJSON *j = cJSON_Parse(x.echo);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItem(j, "instructions")->valuestring, "be brief");
    assert_int_equal(cJSON_GetObjectItem(j, "max_output_tokens")->valueint, 7);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "metadata"), "k")->valuestring,
                        "v");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItem(j, "store")));
    cJSON_Delete(j);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);

    /* a string input; a named tool choice; the echo's defaults */
    body = "{\"input\":\"hi\",\"tools\":[{\"type\":\"function\",\"name\":\"f\"}],\"tool_choice\":"
           "{\"type\":\"function\",\"name\":\"f\"}}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_int_equal(r.n_messages, 1);
    assert_string_equal(r.messages[0].role, "user");
    assert_int_equal(r.tool_choice, QV_PROTO_TOOLS_NAMED);
    assert_string_equal(r.tool_name, "f");
    assert_int_equal(r.max_tokens, -1);
    j = cJSON_Parse(x.echo);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "instructions")));
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "parallel_tool_calls")));
    assert_int_equal(cJSON_GetObjectItem(j, "temperature")->valueint, 1);
    cJSON_Delete(j);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    body = "{\"input\":\"hi\",\"text\":{\"format\":{\"type\":\"json_schema\",\"name\":\"s\","
           "\"schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_non_null(r.json_schema);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);

    /* previous_response_id: the stored items come before the input, the echo names it */
    const char *prior = "[{\"role\":\"user\",\"content\":\"a\"},{\"type\":\"message\",\"role\":"
                        "\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"b\"}]}]";
    body = "{\"previous_response_id\":\"resp_1\",\"instructions\":\"i\",\"input\":\"c\"}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), prior, true, &r, &x, &e), QV_OK);
    assert_int_equal(r.n_messages, 4);
    const char *roles2[4] = {"system", "user", "assistant", "user"};
    const char *texts2[4] = {"i", "a", "b", "c"};
    for (int i = 0; i < 4; i++) {
        assert_string_equal(r.messages[i].role, roles2[i]);
        assert_string_equal(r.messages[i].content, texts2[i]);
    }
    assert_true(x.store);
    j = cJSON_Parse(x.items);
    assert_int_equal(cJSON_GetArraySize(j), 3);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 2), "content")->valuestring, "c");
    cJSON_Delete(j);
    j = cJSON_Parse(x.echo);
    assert_string_equal(cJSON_GetObjectItem(j, "previous_response_id")->valuestring, "resp_1");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "store")));
    cJSON_Delete(j);
    /* the conversation after the answer: the items, then the output */
    char id0[] = "call_9", fname[] = "f", fargs[] = "{}";
    qv_proto_tool_call call = {.id = id0, .name = fname, .arguments = fargs};
    qv_proto_response_out out = {.id = "resp_2",
                                 .text = "d",
                                 .text_len = 1,
                                 .done = true,
                                 .finish = "stop",
                                 .calls = &call,
                                 .n_calls = 1};
    char *conv = qv_proto_response_conversation(x.items, &out);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    j = cJSON_Parse(conv);
    assert_int_equal(cJSON_GetArraySize(j), 5);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 3), "type")->valuestring,
                        "message");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 4), "call_id")->valuestring,
                        "call_9");
    cJSON_Delete(j);
    /* ... which a later request continues: the call comes back as the assistant's */
    body = "{\"previous_response_id\":\"resp_2\",\"input\":[{\"type\":\"function_call_output\","
           "\"call_id\":\"call_9\",\"output\":\"ok\"}],\"store\":false}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), conv, true, &r, &x, &e), QV_OK);
    assert_int_equal(r.n_messages, 5);
    assert_string_equal(r.messages[3].role, "assistant");
    assert_string_equal(r.messages[3].content, "d");
    assert_int_equal(r.messages[3].n_calls, 1);
    assert_string_equal(r.messages[4].tool_call_id, "call_9");
    assert_false(x.store);
    qv_free(conv);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);

    /* includes of items quiver never makes, and a bound on built-in tool calls, change nothing:
     * taken (max_tool_calls repeated in the response) */
    body = "{\"input\":\"x\",\"max_tool_calls\":3,\"include\":[\"reasoning.encrypted_content\","
           "\"file_search_call.results\",\"message.input_image.image_url\"]}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_false(r.logprobs);
    assert_non_null(strstr(x.echo, "\"max_tool_calls\":3"));
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);

    /* refusals name the Responses API's fields */
    static const struct {
        const char *body, *param;
    } bad[] = {
        {"{\"input\":\"x\",\"previous_response_id\":\"r\"}", "previous_response_id"},
        {"{\"input\":\"x\",\"reasoning\":{\"effort\":\"low\"}}", "reasoning"},
        {"{\"input\":\"x\",\"truncation\":\"middle\"}", "truncation"},
        {"{\"input\":\"x\",\"text\":{\"verbosity\":\"low\"}}", "text.verbosity"},
        {"{\"input\":\"x\",\"max_output_tokens\":0}", "max_output_tokens"},
        {"{\"input\":\"x\",\"text\":{\"format\":{\"type\":\"json_schema\",\"schema\":1}}}",
         "text.format.schema"},
        {"{\"input\":\"x\",\"include\":[\"reasoning.summary\"]}", "include"},
        {"{\"input\":\"x\",\"include\":[1]}", "include"},
        {"{\"input\":\"x\",\"max_tool_calls\":-1}", "max_tool_calls"},
        {"{\"input\":\"x\",\"max_tool_calls\":1.5}", "max_tool_calls"},
        {"{\"input\":\"x\",\"tools\":[{\"type\":\"file_search\"}]}", "tools"},
        {"{\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_file\"}]}]}", "input[0]"},
        {"{\"input\":[{\"type\":\"item_reference\",\"id\":\"x\"}]}", "input[0]"},
        {"{\"input\":[\"x\"]}", "input[0]"},
        {"{\"input\":[{\"type\":\"function_call_output\",\"output\":\"o\"}]}", "input[0]"},
        {"{\"input\":5}", "input"},
        {"{\"instructions\":\"x\"}", "input"},
        {"[1]", ""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(
            qv_proto_responses_decode(bad[i].body, strlen(bad[i].body), NULL, false, &r, &x, &e),
            QV_ERR_INVALID);
        assert_string_equal(e.param, bad[i].param);
        assert_true(e.message[0] != '\0');
        assert_null(x.echo);
        assert_null(x.items);
        qv_proto_request_free(&r);
    }
    /* allocation failures anywhere fail cleanly */
    body = "{\"instructions\":\"i\",\"input\":[{\"role\":\"user\",\"content\":\"a\"},{\"type\":"
           "\"function_call\",\"call_id\":\"c\",\"name\":\"f\",\"arguments\":\"{}\"}],\"tools\":"
           "[{\"type\":\"function\",\"name\":\"f\"}],\"tool_choice\":\"none\",\"text\":{\"format\":"
           "{\"type\":\"json_object\"}}}";
    for (int k = 0;; k++) {
        qv_alloc_fail_after(k);
        qv_status s = qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e);
        qv_alloc_fail_after(-1);
        qv_free(x.echo);
        qv_free(x.items);
        qv_proto_request_free(&r);
        if (s == QV_OK) break;
        /* a parse cut short by a failed allocation reads as invalid JSON, as in chat */
        assert_true(s == QV_ERR_NOMEM || s == QV_ERR_INVALID);
        assert_true(k < 5000);
    }
}

/* The ids of a list page's items, joined by spaces. */
static void page_ids(const char *page, char *out, size_t cap) {
    cJSON *j = cJSON_Parse(page), *it;
    out[0] = '\0';
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, "data"))
        snprintf(out + strlen(out), cap - strlen(out), "%s%s", out[0] ? " " : "",
                 cJSON_GetObjectItem(it, "id")->valuestring);
    cJSON_Delete(j);
}

/* A kept conversation's items in the API's shape (ids, types, text parts, statuses), and
 * GET /v1/responses/{id}/input_items's pages over them. */
static void test_response_input_items(void **state) {
    (void)state;
    const char *items = "[{\"role\":\"user\",\"content\":\"a\"},"
                        "{\"type\":\"message\",\"role\":\"assistant\",\"content\":\"b\"},"
                        "{\"type\":\"function_call\",\"id\":\"fc_x\",\"call_id\":\"c\","
                        "\"name\":\"f\",\"arguments\":\"{}\",\"status\":\"completed\"},"
                        "{\"type\":\"function_call_output\",\"call_id\":\"c\",\"output\":\"o\"}]";
    qv_proto_response_out out = {
        .id = "resp_7", .text = "d", .text_len = 1, .done = true, .finish = "stop"};
    char *conv = qv_proto_response_conversation(items, &out);
    char *resp = qv_proto_response_encode(&out);
    assert_non_null(conv);
    assert_non_null(resp);
    cJSON *j = cJSON_Parse(conv), *m = cJSON_GetArrayItem(j, 0);
    assert_int_equal(cJSON_GetArraySize(j), 5);
    assert_string_equal(cJSON_GetObjectItem(m, "id")->valuestring, "msg_7_in0");
    assert_string_equal(cJSON_GetObjectItem(m, "type")->valuestring, "message");
    assert_string_equal(cJSON_GetObjectItem(m, "status")->valuestring, "completed");
    cJSON *part = cJSON_GetArrayItem(cJSON_GetObjectItem(m, "content"), 0);
    assert_string_equal(cJSON_GetObjectItem(part, "type")->valuestring, "input_text");
    assert_string_equal(cJSON_GetObjectItem(part, "text")->valuestring, "a");
    part = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 1), "content"), 0);
    assert_string_equal(cJSON_GetObjectItem(part, "type")->valuestring, "output_text");
    assert_true(cJSON_IsArray(cJSON_GetObjectItem(part, "annotations")));
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 3), "id")->valuestring,
                        "fco_7_in3");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 4), "id")->valuestring, "msg_7");
    cJSON_Delete(j);
    /* the shape reads back as the same conversation */
    qv_proto_request r;
    qv_proto_responses_extra x;
    qv_proto_error e;
    const char *body = "{\"previous_response_id\":\"resp_7\",\"input\":\"e\"}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), conv, true, &r, &x, &e), QV_OK);
    assert_int_equal(r.n_messages, 5);
    assert_string_equal(r.messages[0].content, "a");
    assert_string_equal(r.messages[1].content, "b");
    assert_int_equal(r.messages[1].n_calls, 1);
    assert_string_equal(r.messages[2].tool_call_id, "c");
    assert_string_equal(r.messages[3].content, "d");
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);

    /* pages: the latest first by default; limit, after, before, ascending */
    static const struct {
        qv_proto_items_query q;
        const char *ids;
        bool more;
    } pages[] = {
        {{0}, "fco_7_in3 fc_x msg_7_in1 msg_7_in0", false},
        {{.limit = "2"}, "fco_7_in3 fc_x", true},
        {{.limit = "2", .after = "fc_x"}, "msg_7_in1 msg_7_in0", false},
        {{.order = "asc", .limit = "3"}, "msg_7_in0 msg_7_in1 fc_x", true},
        {{.order = "asc", .after = "msg_7_in0", .before = "fco_7_in3"}, "msg_7_in1 fc_x", false},
        {{.order = "desc", .after = "msg_7_in0"}, "", false},
        {{.before = "fco_7_in3"}, "", false},
    };
    char got[256];
    for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
        char *page = qv_proto_response_input_items(resp, conv, &pages[i].q, &e);
        assert_non_null(page);
        page_ids(page, got, sizeof(got));
        assert_string_equal(got, pages[i].ids);
        j = cJSON_Parse(page);
        assert_string_equal(cJSON_GetObjectItem(j, "object")->valuestring, "list");
        assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(j, "has_more")), pages[i].more);
        assert_true(pages[i].ids[0] ? cJSON_IsString(cJSON_GetObjectItem(j, "first_id"))
                                    : cJSON_IsNull(cJSON_GetObjectItem(j, "first_id")));
        cJSON_Delete(j);
        qv_free(page);
    }
    static const struct {
        qv_proto_items_query q;
        const char *param;
    } bad[] = {
        {{.limit = "0"}, "limit"},      {{.limit = "101"}, "limit"}, {{.limit = "2x"}, "limit"},
        {{.limit = ""}, "limit"},       {{.order = "up"}, "order"},  {{.after = "msg_7"}, "after"},
        {{.before = "nope"}, "before"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_null(qv_proto_response_input_items(resp, conv, &bad[i].q, &e));
        assert_int_equal(e.status, QV_ERR_INVALID);
        assert_string_equal(e.param, bad[i].param);
    }
    /* allocation failures anywhere fail cleanly */
    const qv_proto_items_query q = {.limit = "2", .after = "fc_x"};
    for (int k = 0;; k++) {
        qv_alloc_fail_after(k);
        char *c2 = qv_proto_response_conversation(items, &out);
        char *page = qv_proto_response_input_items(resp, conv, &q, &e);
        qv_alloc_fail_after(-1);
        const bool done = c2 && page;
        assert_true(page || e.status == QV_ERR_NOMEM);
        if (c2) assert_string_equal(c2, conv);
        qv_free(c2);
        qv_free(page);
        if (done) break;
        assert_true(k < 5000);
    }
    qv_free(conv);
    qv_free(resp);
    /* truncation "auto" is the server's to apply: flagged, and repeated in the response */
    body = "{\"input\":\"x\",\"truncation\":\"auto\"}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_true(x.truncate);
    j = cJSON_Parse(x.echo);
    assert_string_equal(cJSON_GetObjectItem(j, "truncation")->valuestring, "auto");
    cJSON_Delete(j);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    body = "{\"input\":\"x\"}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, false, &r, &x, &e), QV_OK);
    assert_false(x.truncate);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    char *count = qv_proto_response_input_tokens(42);
    assert_string_equal(count, "{\"object\":\"response.input_tokens\",\"input_tokens\":42}");
    qv_free(count);
}

/* The Conversations API's records: a conversation and its items, metadata updates, items
 * added, found, removed and paged, and a response in a conversation. */
static void test_conversations(void **state) {
    (void)state;
    qv_proto_error e;
    char *conv = NULL, *items = NULL, *out = NULL, *added = NULL;
    const char *body = "{\"metadata\":{\"k\":\"v\"},\"items\":[{\"role\":\"user\",\"content\":"
                       "\"a\"},{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"f\","
                       "\"arguments\":\"{}\"}]}";
    assert_int_equal(
        qv_proto_conversation_create(body, strlen(body), "conv_1", 7, "n0", &conv, &items, &e),
        QV_OK);
    assert_string_equal(conv, "{\"id\":\"conv_1\",\"object\":\"conversation\",\"created_at\":7,"
                              "\"metadata\":{\"k\":\"v\"}}");
    cJSON *j = cJSON_Parse(items);
    assert_int_equal(cJSON_GetArraySize(j), 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 0), "id")->valuestring,
                        "msg_n0_in0");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(j, 1), "id")->valuestring,
                        "fc_n0_in1");
    cJSON_Delete(j);
    /* metadata replaced */
    body = "{\"metadata\":{\"x\":\"y\"}}";
    assert_int_equal(qv_proto_conversation_update(body, strlen(body), conv, &out, &e), QV_OK);
    assert_non_null(strstr(out, "\"metadata\":{\"x\":\"y\"}"));
    qv_free(out);
    /* items added after the others, found, removed */
    body = "{\"items\":[{\"role\":\"assistant\",\"content\":\"b\"}]}";
    assert_int_equal(qv_proto_conversation_add(body, strlen(body), "n1", &added, &e), QV_OK);
    char *joined = qv_proto_items_join(items, added, 0);
    bool found;
    char *one = qv_proto_items_find(joined, "msg_n1_in0", false, &found);
    assert_true(found);
    assert_non_null(strstr(one, "\"output_text\""));
    qv_free(one);
    char *less = qv_proto_items_find(joined, "msg_n0_in0", true, &found);
    assert_true(found);
    j = cJSON_Parse(less);
    assert_int_equal(cJSON_GetArraySize(j), 2);
    cJSON_Delete(j);
    assert_null(qv_proto_items_find(joined, "msg_none", true, &found));
    assert_false(found);
    const qv_proto_items_query q = {.order = "asc", .after = "msg_n0_in0"};
    char *page = qv_proto_conversation_items(joined, &q, &e), got[256];
    page_ids(page, got, sizeof(got));
    assert_string_equal(got, "fc_n0_in1 msg_n1_in0");
    qv_free(page);
    char *tail = qv_proto_items_join("[]", joined, 2); /* a response's new items only */
    assert_non_null(strstr(tail, "msg_n1_in0"));
    assert_null(strstr(tail, "fc_n0_in1"));
    qv_free(tail);
    char *gone = qv_proto_conversation_deleted("conv_1");
    assert_string_equal(gone, "{\"id\":\"conv_1\",\"object\":\"conversation.deleted\","
                              "\"deleted\":true}");
    qv_free(gone);

    /* a response in the conversation: its items are the prior ones, its echo names it */
    qv_proto_request r;
    qv_proto_responses_extra x;
    char id[64];
    body = "{\"conversation\":{\"id\":\"conv_1\"},\"input\":\"q\"}";
    assert_true(qv_proto_responses_conversation(body, strlen(body), id, sizeof(id)));
    assert_string_equal(id, "conv_1");
    assert_false(qv_proto_responses_conversation(body, strlen(body), id, 4));
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), joined, true, &r, &x, &e),
                     QV_OK);
    assert_int_equal(x.n_prior, 3);
    assert_int_equal(r.n_messages, 4); /* a, the call (an assistant message), b, q */
    j = cJSON_Parse(x.echo);
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "conversation"), "id")->valuestring, "conv_1");
    cJSON_Delete(j);
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, true, &r, &x, &e),
                     QV_ERR_INVALID);
    assert_string_equal(e.param, "conversation");
    qv_proto_request_free(&r);

    static const struct {
        int kind; /* 0 create, 1 update, 2 add, 3 response */
        const char *body, *param;
    } bad[] = {
        {0, "{\"items\":{}}", "items"},
        {0, "{\"items\":[{\"role\":\"robot\",\"content\":\"x\"}]}", "items[0]"},
        {0, "{\"items\":[{\"type\":\"function_call_output\"}]}", "items[0]"},
        {0, "{\"metadata\":{\"k\":1}}", "metadata"},
        {0, "{\"metadata\":[]}", "metadata"},
        {0, "[]", ""},
        {0, "{", ""},
        {1, "{}", "metadata"},
        {1,
         "{\"metadata\":{\"k\":\"v\","
         "\"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk"
         "kkkkkk\":\"v\"}}",
         "metadata"},
        {2, "{\"items\":[]}", "items"},
        {2, "{}", "items"},
        {3, "{\"conversation\":5,\"input\":\"q\"}", "conversation"},
        {3, "{\"conversation\":\"conv_1\",\"previous_response_id\":\"resp_1\",\"input\":\"q\"}",
         "conversation"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *b = bad[i].body;
        char *o1 = NULL, *o2 = NULL;
        qv_status st =
            bad[i].kind == 0
                ? qv_proto_conversation_create(b, strlen(b), "conv_2", 1, "n", &o1, &o2, &e)
            : bad[i].kind == 1 ? qv_proto_conversation_update(b, strlen(b), conv, &o1, &e)
            : bad[i].kind == 2 ? qv_proto_conversation_add(b, strlen(b), "n", &o1, &e)
                               : qv_proto_responses_decode(b, strlen(b), joined, true, &r, &x, &e);
        assert_int_equal(st, QV_ERR_INVALID);
        assert_string_equal(e.param, bad[i].param);
        assert_null(o1);
        assert_null(o2);
        if (bad[i].kind == 3) qv_proto_request_free(&r);
    }
    /* 21 items are too many */
    char many[1024] = "{\"items\":[";
    for (int i = 0; i < 21; i++)
        strcat(many, i ? ",\"x\"" : "\"x\"");
    strcat(many, "]}");
    assert_int_equal(qv_proto_conversation_add(many, strlen(many), "n", &out, &e), QV_ERR_INVALID);
    assert_string_equal(e.param, "items");
    /* allocation failures anywhere fail cleanly */
    body = "{\"metadata\":{\"k\":\"v\"},\"items\":[{\"role\":\"user\",\"content\":\"a\"}]}";
    for (int k = 0;; k++) {
        char *c2 = NULL, *i2 = NULL, *u = NULL, *a = NULL;
        qv_alloc_fail_after(k);
        const qv_status s1 =
            qv_proto_conversation_create(body, strlen(body), "conv_3", 1, "n", &c2, &i2, &e);
        const qv_status s2 = qv_proto_conversation_update(body, strlen(body), conv, &u, &e);
        const qv_status s3 = qv_proto_conversation_add(body, strlen(body), "n", &a, &e);
        char *jn = qv_proto_items_join(items, added, 0);
        char *fd = qv_proto_items_find(joined, "msg_n1_in0", true, &found);
        char *pg = qv_proto_conversation_items(joined, &q, &e);
        qv_alloc_fail_after(-1);
        const bool done = !s1 && !s2 && !s3 && jn && fd && pg;
        assert_true((s1 == QV_OK || s1 == QV_ERR_NOMEM || s1 == QV_ERR_INVALID) &&
                    (s2 == QV_OK || s2 == QV_ERR_NOMEM || s2 == QV_ERR_INVALID) &&
                    (s3 == QV_OK || s3 == QV_ERR_NOMEM || s3 == QV_ERR_INVALID));
        qv_free(c2);
        qv_free(i2);
        qv_free(u);
        qv_free(a);
        qv_free(jn);
        qv_free(fd);
        qv_free(pg);
        if (done) break;
        assert_true(k < 5000);
    }
    qv_free(less);
    qv_free(joined);
    qv_free(added);
    qv_free(conv);
    qv_free(items);
}

/* A lookup for item references: "msg_a" is a message, "oom" runs out of memory, the rest
 * are unknown. */
static char *stub_lookup(void *user, const char *id, bool *nomem) {
    (*(int *)user)++;
    *nomem = !strcmp(id, "oom");
    return strcmp(id, "msg_a") ? NULL
                               : qv_strdup("{\"type\":\"message\",\"id\":\"msg_a\",\"role\":"
                                           "\"assistant\",\"content\":\"hello\"}");
}

/* Item references in `input` replaced by what the lookup finds; nothing to do without any;
 * unknown ones are 400 naming their place. */
static void test_responses_resolve(void **state) {
    (void)state;
    qv_proto_error e;
    char *out = NULL;
    int calls = 0;
    const char *body = "{\"input\":[{\"role\":\"user\",\"content\":\"q\"}]}";
    assert_int_equal(qv_proto_responses_resolve(body, strlen(body), stub_lookup, &calls, &out, &e),
                     QV_OK);
    assert_null(out);
    assert_int_equal(calls, 0);
    body = "{\"input\":\"q\"}";
    assert_int_equal(qv_proto_responses_resolve(body, strlen(body), stub_lookup, &calls, &out, &e),
                     QV_OK);
    assert_null(out);
    body = "{\"model\":\"m\",\"input\":[{\"type\":\"item_reference\",\"id\":\"msg_a\"},{\"role\":"
           "\"user\",\"content\":\"q\"},{\"type\":\"item_reference\",\"id\":\"msg_a\"}]}";
    assert_int_equal(qv_proto_responses_resolve(body, strlen(body), stub_lookup, &calls, &out, &e),
                     QV_OK);
    assert_int_equal(calls, 2);
    qv_proto_request r;
    qv_proto_responses_extra x;
    assert_int_equal(qv_proto_responses_decode(out, strlen(out), NULL, false, &r, &x, &e), QV_OK);
    assert_int_equal(r.n_messages, 3);
    assert_string_equal(r.messages[0].role, "assistant");
    assert_string_equal(r.messages[0].content, "hello");
    assert_string_equal(r.messages[2].content, "hello");
    qv_free(x.echo);
    qv_free(x.items);
    qv_proto_request_free(&r);
    qv_free(out);
    static const struct {
        const char *body, *param;
        qv_status st;
    } bad[] = {
        {"{\"input\":[{\"role\":\"user\",\"content\":\"q\"},{\"type\":\"item_reference\",\"id\":"
         "\"msg_b\"}]}",
         "input[1]", QV_ERR_INVALID},
        {"{\"input\":[{\"type\":\"item_reference\"}]}", "input[0]", QV_ERR_INVALID},
        {"{\"input\":[{\"type\":\"item_reference\",\"id\":\"oom\"}]}", "", QV_ERR_NOMEM},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(qv_proto_responses_resolve(bad[i].body, strlen(bad[i].body), stub_lookup,
                                                    &calls, &out, &e),
                         bad[i].st);
        assert_null(out);
        assert_string_equal(e.param, bad[i].param);
    }
    /* allocation failures anywhere fail cleanly */
    for (int k = 0;; k++) {
        qv_alloc_fail_after(k);
        const qv_status st =
            qv_proto_responses_resolve(body, strlen(body), stub_lookup, &calls, &out, &e);
        qv_alloc_fail_after(-1);
        /* a parse cut short reads as a body with no reference, left to the decoder */
        assert_true(st == QV_OK || (out == NULL && (st == QV_ERR_NOMEM || st == QV_ERR_INVALID)));
        const bool done = out != NULL;
        qv_free(out);
        if (done) break;
        assert_true(k < 5000);
    }
}

/* The event names of an SSE text, in order, joined by spaces. */
static void event_names(const char *ev, char *out, size_t cap) {
    out[0] = '\0';
    for (const char *p = ev; (p = strstr(p, "event: ")); p += 7) {
        const size_t n = strcspn(p + 7, "\n");
        snprintf(out + strlen(out), cap - strlen(out), "%s%.*s", out[0] ? " " : "", (int)n, p + 7);
    }
}

/* A response streamed in three steps: the events in the API's order, nothing when nothing is
 * new, sequence numbers that go on across calls, and a last event holding the response. */
static void test_response_events(void **state) {
    (void)state;
    char tok[] = "He", tok2[] = "llo";
    qv_proto_logprob lps[2] = {{.token = tok, .logprob = -0.5f}, {.token = tok2, .logprob = -1.0f}};
    qv_proto_response_out o = {.id = "resp_ab",
                               .model = "m",
                               .echo = "{\"instructions\":null}",
                               .text = "Hello",
                               .text_len = 2,
                               .logprobs = true,
                               .lps = lps,
                               .n_lps = 1,
                               .input_tokens = 3,
                               .output_tokens = 2};
    qv_proto_response_stream st = {0};
    size_t len;
    char names[1024];
    char *ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.created response.in_progress response.output_item.added "
                               "response.content_part.added response.output_text.delta");
    assert_non_null(strstr(ev, "\"delta\":\"He\""));
    assert_non_null(strstr(ev, "\"sequence_number\":4"));
    assert_non_null(strstr(ev, "\"item_id\":\"msg_ab\""));
    qv_free(ev);
    ev = qv_proto_response_events(&st, &o, &len); /* nothing new */
    assert_int_equal(len, 0);
    qv_free(ev);
    char id[] = "call_1", name[] = "f", args[] = "{\"a\":1}";
    qv_proto_tool_call call = {.id = id, .name = name, .arguments = args};
    o.text_len = 5;
    o.n_lps = 2;
    o.done = true;
    o.finish = "stop";
    o.calls = &call;
    o.n_calls = 1;
    ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.output_text.delta response.output_text.done "
                               "response.content_part.done response.output_item.done "
                               "response.output_item.added "
                               "response.function_call_arguments.delta "
                               "response.function_call_arguments.done response.output_item.done "
                               "response.completed");
    assert_non_null(strstr(ev, "\"type\":\"response.output_text.delta\",\"sequence_number\":5}"));
    assert_non_null(strstr(ev, "\"type\":\"response.completed\",\"sequence_number\":13}"));
    assert_non_null(strstr(ev, "\"delta\":\"llo\""));
    assert_non_null(strstr(ev, "\"item_id\":\"fc_ab_0\",\"arguments\":\"{\\\"a\\\":1}\""));
    /* the last event: the whole response */
    const char *last = strstr(ev, "event: response.completed\ndata: ") + 32;
    cJSON *r = cJSON_ParseWithLength(last, strlen(last) - 2);
    cJSON *resp = cJSON_GetObjectItem(r, "response");
    assert_string_equal(cJSON_GetObjectItem(resp, "status")->valuestring, "completed");
    cJSON *out = cJSON_GetObjectItem(resp, "output");
    assert_int_equal(cJSON_GetArraySize(out), 2);
    cJSON *part = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(out, 0), "content"), 0);
    assert_string_equal(cJSON_GetObjectItem(part, "text")->valuestring, "Hello");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(part, "logprobs")), 2);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(out, 1), "call_id")->valuestring,
                        "call_1");
    assert_int_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(resp, "usage"), "total_tokens")->valueint, 5);
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(resp, "instructions")));
    cJSON_Delete(r);
    qv_free(ev);
    ev = qv_proto_response_events(&st, &o, &len); /* finished: nothing more */
    assert_int_equal(len, 0);
    qv_free(ev);

    /* cut by max_output_tokens, calls only: incomplete, no message item */
    o = (qv_proto_response_out){.id = "resp_c", .done = true, .finish = "length", .text = ""};
    char *json = qv_proto_response_encode(&o);
    assert_non_null(strstr(json, "\"status\":\"incomplete\""));
    assert_non_null(strstr(json, "\"incomplete_details\":{\"reason\":\"max_output_tokens\"}"));
    assert_non_null(strstr(json, "\"type\":\"message\"")); /* no call: an empty message */
    qv_free(json);
    o.finish = "stop";
    o.calls = &call;
    o.n_calls = 1;
    json = qv_proto_response_encode(&o);
    assert_null(strstr(json, "\"type\":\"message\""));
    assert_non_null(strstr(json, "\"type\":\"function_call\""));
    qv_free(json);
    memset(&st, 0, sizeof(st));
    ev = qv_proto_response_error_event(&st, "server_error", "boom", &len);
    assert_string_equal(ev, "event: error\ndata: {\"code\":\"server_error\",\"message\":\"boom\","
                            "\"param\":null,\"type\":\"error\",\"sequence_number\":0}\n\n");
    qv_free(ev);
    /* allocation failures: NULL, never a partial stream */
    for (int k = 0;; k++) {
        qv_proto_response_stream s2 = {0};
        qv_alloc_fail_after(k);
        ev = qv_proto_response_events(&s2, &o, &len);
        qv_alloc_fail_after(-1);
        if (ev) {
            qv_free(ev);
            break;
        }
        assert_true(k < 5000);
    }
}

/* Background responses: decoded (refused with store false, without a store, or not a
 * boolean), echoed; their objects while queued, running (output so far, usage null),
 * cancelled (items incomplete) and failed (the error); a cancelled stream's last event. */
static void test_response_background(void **state) {
    (void)state;
    qv_proto_request r;
    qv_proto_responses_extra x;
    qv_proto_error e;
    const char *body = "{\"model\":\"m\",\"input\":\"hi\",\"background\":true}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, true, &r, &x, &e), QV_OK);
    assert_true(x.background && x.store);
    assert_non_null(strstr(x.echo, "\"background\":true"));
    qv_proto_response_out o = {.id = "resp_bg", .model = "m", .echo = x.echo, .status = "queued"};
    char *json = qv_proto_response_encode(&o);
    cJSON *j = cJSON_Parse(json);
    assert_string_equal(cJSON_GetObjectItem(j, "status")->valuestring, "queued");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "background")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "output")), 0); /* no text yet */
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "error")));
    cJSON_Delete(j);
    qv_free(json);
    assert_true(qv_proto_response_background(json = qv_proto_response_encode(&o)));
    qv_free(json);
    o.status = "in_progress";
    o.text = "Hel";
    o.text_len = 3;
    j = cJSON_Parse(json = qv_proto_response_encode(&o));
    cJSON *msg = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "output"), 0);
    assert_string_equal(cJSON_GetObjectItem(msg, "status")->valuestring, "in_progress");
    assert_string_equal(
        cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(msg, "content"), 0), "text")
            ->valuestring,
        "Hel");
    assert_true(cJSON_IsNull(cJSON_GetObjectItem(j, "usage")));
    cJSON_Delete(j);
    qv_free(json);
    o.status = "cancelled";
    o.done = true;
    o.finish = "stop";
    o.output_tokens = 2;
    j = cJSON_Parse(json = qv_proto_response_encode(&o));
    msg = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "output"), 0);
    assert_string_equal(cJSON_GetObjectItem(j, "status")->valuestring, "cancelled");
    assert_string_equal(cJSON_GetObjectItem(msg, "status")->valuestring, "incomplete");
    assert_int_equal(
        cJSON_GetObjectItem(cJSON_GetObjectItem(j, "usage"), "output_tokens")->valueint, 2);
    cJSON_Delete(j);
    qv_free(json);
    o.status = "failed";
    o.error_code = "server_error";
    o.error_message = "out of memory";
    j = cJSON_Parse(json = qv_proto_response_encode(&o));
    cJSON *err = cJSON_GetObjectItem(j, "error");
    assert_string_equal(cJSON_GetObjectItem(err, "code")->valuestring, "server_error");
    assert_string_equal(cJSON_GetObjectItem(err, "message")->valuestring, "out of memory");
    cJSON_Delete(j);
    qv_free(json);
    /* a stream's last event is named after the status */
    qv_proto_response_stream st = {0};
    o = (qv_proto_response_out){
        .id = "resp_bg", .echo = x.echo, .done = true, .finish = "stop", .status = "cancelled"};
    size_t len;
    char *ev = qv_proto_response_events(&st, &o, &len), names[512];
    event_names(ev, names, sizeof(names));
    assert_non_null(strstr(names, " response.cancelled"));
    assert_null(strstr(names, "response.completed"));
    qv_free(ev);
    /* a queued background stream: created and queued (status queued), nothing while it stays
       queued, in_progress once it runs; one cancelled while queued never says in_progress */
    for (int cancel = 0; cancel < 2; cancel++) {
        qv_proto_response_stream sq = {0};
        o = (qv_proto_response_out){.id = "resp_bg", .echo = x.echo, .status = "queued"};
        ev = qv_proto_response_events(&sq, &o, &len);
        event_names(ev, names, sizeof(names));
        assert_string_equal(names, "response.created response.queued");
        assert_non_null(strstr(ev, "\"status\":\"queued\""));
        assert_null(strstr(ev, "in_progress"));
        qv_free(ev);
        ev = qv_proto_response_events(&sq, &o, &len);
        assert_int_equal(len, 0);
        qv_free(ev);
        o = cancel ? (qv_proto_response_out){.id = "resp_bg",
                                             .echo = x.echo,
                                             .done = true,
                                             .finish = "stop",
                                             .status = "cancelled",
                                             .text = ""}
                   : (qv_proto_response_out){.id = "resp_bg",
                                             .echo = x.echo,
                                             .status = "in_progress",
                                             .text = "Hi",
                                             .text_len = 2};
        ev = qv_proto_response_events(&sq, &o, &len);
        event_names(ev, names, sizeof(names));
        if (cancel) {
            assert_string_equal(names, "response.cancelled");
        } else {
            assert_true(!strncmp(names, "response.in_progress response.output_item.added", 47));
            assert_non_null(strstr(names, "response.output_text.delta"));
            assert_null(strstr(names, "response.created"));
        }
        qv_free(ev);
        qv_proto_response_stream_free(&sq);
    }
    qv_proto_request_free(&r);
    qv_free(x.echo);
    qv_free(x.items);
    /* a plain response says background false */
    o = (qv_proto_response_out){.id = "resp_p", .done = true, .finish = "stop", .text = ""};
    assert_false(qv_proto_response_background(json = qv_proto_response_encode(&o)));
    assert_non_null(strstr(json, "\"background\":false"));
    qv_free(json);
    static const struct {
        const char *body, *param;
        bool storing;
    } bad[] = {
        {"{\"model\":\"m\",\"input\":\"hi\",\"background\":true,\"store\":false}", "store", true},
        {"{\"model\":\"m\",\"input\":\"hi\",\"background\":1}", "background", true},
        {"{\"model\":\"m\",\"input\":\"hi\",\"background\":true}", "background", false},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(qv_proto_responses_decode(bad[i].body, strlen(bad[i].body), NULL,
                                                   bad[i].storing, &r, &x, &e),
                         QV_ERR_INVALID);
        assert_string_equal(e.param, bad[i].param);
        assert_null(x.echo);
        qv_proto_request_free(&r);
    }
    body = "{\"model\":\"m\",\"input\":\"hi\",\"background\":false,\"store\":false}";
    assert_int_equal(qv_proto_responses_decode(body, strlen(body), NULL, true, &r, &x, &e), QV_OK);
    assert_false(x.background);
    qv_proto_request_free(&r);
    qv_free(x.echo);
    qv_free(x.items);
}

/* Calls streamed as they are read: the message closes when the first call appears, each
 * call's arguments go out in pieces, a call closes when the next begins; a call begun that
 * the finished answer does not make closes as incomplete. */
static void test_response_call_events(void **state) {
    (void)state;
    char id0[] = "call_0", id1[] = "call_1", f[] = "f", g[] = "g";
    char a0[] = "{\"a\":", a0w[] = "{\"a\":1}", a1[] = "{", a1w[] = "{\"b\":2}";
    qv_proto_tool_call calls[2] = {{.id = id0, .name = f, .arguments = a0},
                                   {.id = id1, .name = g, .arguments = a1}};
    qv_proto_response_out o = {.id = "resp_z", .text = "Hi <tool_call>", .text_len = 2};
    qv_proto_response_stream st = {0};
    size_t len;
    char names[2048];
    char *ev = qv_proto_response_events(&st, &o, &len);
    qv_free(ev);
    o.calls = calls; /* the first call begins: the message closes, its arguments start */
    o.n_calls = 1;
    ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.output_text.done response.content_part.done "
                               "response.output_item.done response.output_item.added "
                               "response.function_call_arguments.delta");
    assert_non_null(strstr(ev, "\"text\":\"Hi\""));
    assert_non_null(strstr(ev, "\"output_index\":1,\"item_id\":\"fc_z_0\""));
    assert_non_null(strstr(ev, "\"delta\":\"{\\\"a\\\":\""));
    qv_free(ev);
    calls[0].arguments = a0w; /* the second begins: the first is whole */
    o.n_calls = 2;
    ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.function_call_arguments.delta "
                               "response.function_call_arguments.done response.output_item.done "
                               "response.output_item.added response.function_call_arguments.delta");
    assert_non_null(strstr(ev, "\"delta\":\"1}\""));
    assert_non_null(strstr(ev, "\"output_index\":2,\"item_id\":\"fc_z_1\""));
    qv_free(ev);
    calls[1].arguments = a1w; /* done */
    o.done = true;
    o.finish = "stop";
    ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.function_call_arguments.delta "
                               "response.function_call_arguments.done response.output_item.done "
                               "response.completed");
    assert_non_null(strstr(ev, "\"delta\":\"\\\"b\\\":2}\""));
    qv_free(ev);
    assert_null(st.args);

    /* begun, then cut: the call closes as incomplete, the response holds the text */
    memset(&st, 0, sizeof(st));
    o = (qv_proto_response_out){
        .id = "resp_y", .text = "[{\"name\":\"f\"", .calls = calls, .n_calls = 1};
    calls[0].arguments = a0;
    ev = qv_proto_response_events(&st, &o, &len);
    qv_free(ev);
    o = (qv_proto_response_out){.id = "resp_y",
                                .text = "[{\"name\":\"f\"",
                                .text_len = 12,
                                .done = true,
                                .finish = "length"};
    ev = qv_proto_response_events(&st, &o, &len);
    event_names(ev, names, sizeof(names));
    assert_string_equal(names, "response.output_item.added response.content_part.added "
                               "response.output_text.delta response.output_text.done "
                               "response.content_part.done response.output_item.done "
                               "response.output_item.done response.incomplete");
    assert_non_null(strstr(ev, "\"status\":\"incomplete\"},\"output_index\":0,"
                               "\"type\":\"response.output_item.done\""));
    qv_free(ev);
    /* a stream dropped early frees what it holds */
    memset(&st, 0, sizeof(st));
    o = (qv_proto_response_out){.id = "resp_x", .text = "", .calls = calls, .n_calls = 1};
    ev = qv_proto_response_events(&st, &o, &len);
    qv_free(ev);
    assert_non_null(st.args);
    qv_proto_response_stream_free(&st);
    assert_null(st.args);
}

int main(void) {
    cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
    cJSON_InitHooks(&hooks);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_defaults),
        cmocka_unit_test(test_tgi_defaults),
        cmocka_unit_test(test_completion_all_fields),
        cmocka_unit_test(test_prompt_ids_and_adapter_id),
        cmocka_unit_test(test_merged_adapters),
        cmocka_unit_test(test_allowed_tools),
        cmocka_unit_test(test_chat),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_encode_completion),
        cmocka_unit_test(test_encode_chat_and_chunks),
        cmocka_unit_test(test_encode_error_models_sse),
        cmocka_unit_test(test_alloc_failures),
        cmocka_unit_test(test_tools),
        cmocka_unit_test(test_tool_call_results),
        cmocka_unit_test(test_prompt_logprobs),
        cmocka_unit_test(test_tool_calls_partial),
        cmocka_unit_test(test_template_kwargs),
        cmocka_unit_test(test_whitespace_pattern),
        cmocka_unit_test(test_responses_decode),
        cmocka_unit_test(test_response_input_items),
        cmocka_unit_test(test_conversations),
        cmocka_unit_test(test_responses_resolve),
        cmocka_unit_test(test_response_events),
        cmocka_unit_test(test_response_call_events),
        cmocka_unit_test(test_response_background),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
