/*
 * fuzz_proto.c - fuzz target for the HTTP request decoders (proto/): the first input byte
 * picks the endpoint (bits 0-1: completions, chat, TGI / LoRAX generate, or tokenize; bit 2
 * with tokenize: detokenize; bit 3 with chat: the Responses API), the rest is the request
 * body. Invariants checked:
 * no crash or sanitizer report; a successful decode yields a consistent struct (exactly one
 * prompt form, non-empty stop strings, ranges the server relies on); a failure carries a
 * message. Successful decodes are also re-encoded through the response encoder.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "adapters/adapters.h"
#include "engine/core.h"
#include "proto/proto.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "fuzz_proto: check failed at line %d: %s\n", __LINE__, #x);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* An encoder's output must be valid JSON. */
static void check_json(char *out) {
    CHECK(out != NULL);
    cJSON *back = cJSON_Parse(out);
    CHECK(back != NULL);
    cJSON_Delete(back);
    qv_free(out);
}

/* Whether the text may hold a Llama call with both "parameters" and "arguments" (spelled out,
 * or a lowercase letter escaped): the one answer whose reading can change what an earlier one
 * gave ("arguments" counts once it is there). */
static bool both_keys(const char *text) {
    const bool esc = strstr(text, "\\u006") || strstr(text, "\\u007");
    return (esc || strstr(text, "parameters")) && (esc || strstr(text, "arguments"));
}

/* Whether the text is a Mistral list alone followed by "[TOOL_CALLS]": the reading keeps the
 * list it began with, the finished answer reads the list after the marker. */
static bool mistral_list_then_marker(const char *text) {
    const char *p = text + strspn(text, " \t\r\n");
    return p[0] == '[' && strncmp(p, "[TOOL_CALLS]", strlen(p) < 12 ? strlen(p) : 12) != 0 &&
           strstr(p, "[TOOL_CALLS]") != NULL;
}

/* The prompt read as an answer being written in each format that streams calls: every
 * prefix's calls are whole (id, name, arguments), each prefix's calls have the names of an
 * earlier prefix's and arguments that begin with its, and when the whole text parses as calls
 * the last prefix gives exactly them, and once calls are read the content before them is the
 * finished answer's (but for the two answers named above). */
static void check_partial_calls(const char *text) {
    if (!text) return;
    static const enum qv_proto_tool_choice hows[4] = {QV_PROTO_TOOLS_REQUIRED, QV_PROTO_TOOLS_AUTO,
                                                      QV_PROTO_TOOLS_AUTO_JSON,
                                                      QV_PROTO_TOOLS_AUTO_MISTRAL};
    const size_t len = strlen(text);
    const size_t cuts[4] = {len / 3, len / 2, len - (len > 0), len};
    for (int h = 0; h < 4; h++) {
        const enum qv_proto_tool_choice how = hows[h];
        const bool grows = how != QV_PROTO_TOOLS_AUTO_JSON || !both_keys(text);
        const bool agrees = how != QV_PROTO_TOOLS_AUTO_MISTRAL || !mistral_list_then_marker(text);
        qv_proto_tool_call *whole = NULL, *got[4] = {NULL};
        size_t n_whole = 0, n[4] = {0}, content = 0;
        const bool parsed = qv_proto_tool_calls_parse(how, NULL, text, len, "f", &whole, &n_whole,
                                                      &content) == QV_OK;
        for (int c = 0; c < 4; c++) {
            if (qv_proto_tool_calls_partial(how, text, cuts[c], "f", &got[c], &n[c]) != QV_OK) {
                CHECK(!got[c] && !n[c]); /* out of memory only */
                continue;
            }
            for (size_t k = 0; k < n[c]; k++) {
                char id[32];
                snprintf(id, sizeof(id), "call_f_%zu", k);
                CHECK(got[c][k].name && got[c][k].arguments && got[c][k].index == (int)k &&
                      got[c][k].id && !strcmp(got[c][k].id, id));
                for (int e = 0; e < c && grows; e++)
                    if (k < n[e])
                        CHECK(!strcmp(got[c][k].name, got[e][k].name) &&
                              !strncmp(got[c][k].arguments, got[e][k].arguments,
                                       strlen(got[e][k].arguments)));
            }
            if (parsed && agrees && grows && n[c] && how != QV_PROTO_TOOLS_REQUIRED)
                CHECK(qv_proto_tool_text_len(how, text, cuts[c]) == content);
            if (c == 3 && parsed && agrees) {
                CHECK(n[c] == n_whole);
                for (size_t k = 0; k < n[c]; k++)
                    CHECK(!strcmp(got[c][k].arguments, whole[k].arguments) &&
                          !strcmp(got[c][k].name, whole[k].name) &&
                          !strcmp(got[c][k].id, whole[k].id));
            }
        }
        for (int c = 0; c < 4; c++)
            qv_proto_tool_calls_free(got[c], n[c]);
        qv_proto_tool_calls_free(whole, n_whole);
    }
}

/* Every event of a Responses API stream is "event: <type>\ndata: <JSON>\n\n". */
static void check_events(char *ev, size_t len) {
    CHECK(ev != NULL && strlen(ev) == len);
    for (char *p = ev; *p;) {
        CHECK(!strncmp(p, "event: ", 7));
        char *data = strstr(p, "\ndata: "), *end = data ? strstr(data, "\n\n") : NULL;
        CHECK(data && end);
        cJSON *j = cJSON_ParseWithLength(data + 7, (size_t)(end - data - 7));
        CHECK(j != NULL);
        cJSON_Delete(j);
        p = end + 2;
    }
    qv_free(ev);
}

/* The Responses API (first byte: chat with bit 3): a decode is a chat request with messages
 * and a JSON echo; its response and its events, streamed in two steps, are valid JSON. */
/* The Conversations API on the same body: a conversation, a metadata update, items added;
 * what is accepted is JSON that the items functions read. */
static void fuzz_conversation(const char *body, size_t len) {
    qv_proto_error e;
    char *conv = NULL, *items = NULL, *out = NULL, *added = NULL;
    qv_status s = qv_proto_conversation_create(body, len, "conv_f", 1, "n", &conv, &items, &e);
    CHECK(s == QV_OK ? conv && items : !conv && !items && e.message[0]);
    if (s == QV_OK) {
        s = qv_proto_conversation_update(body, len, conv, &out, &e);
        CHECK(s == QV_OK ? out != NULL : out == NULL);
        if (out) check_json(out);
    }
    s = qv_proto_conversation_add(body, len, "m", &added, &e);
    CHECK(s == QV_OK ? added != NULL : added == NULL);
    if (added && items) {
        char *joined = qv_proto_items_join(items, added, 0);
        bool found;
        char *less = joined ? qv_proto_items_find(joined, "msg_m_in0", true, &found) : NULL;
        CHECK(!joined || found || !less);
        const qv_proto_items_query q = {.order = "asc", .limit = "3"};
        char *page = joined ? qv_proto_conversation_items(joined, &q, &e) : NULL;
        if (page) check_json(page);
        if (less) check_json(less);
        if (joined) check_json(joined);
    }
    qv_free(conv);
    qv_free(items);
    qv_free(added);
}

/* Item references: every id is found, as a message holding the id as its text. */
static char *echo_lookup(void *user, const char *id, bool *nomem) {
    (void)user;
    *nomem = false;
    cJSON *m = cJSON_CreateObject();
    char *text =
        m && cJSON_AddStringToObject(m, "role", "user") && cJSON_AddStringToObject(m, "content", id)
            ? cJSON_PrintUnformatted(m)
            : NULL;
    cJSON_Delete(m);
    *nomem = !text;
    return text;
}

static int fuzz_responses(const char *body, size_t len) {
    qv_proto_request r;
    qv_proto_error e;
    qv_proto_responses_extra x;
    static const char prior[] = "[{\"role\":\"user\",\"content\":\"p\"}]";
    fuzz_conversation(body, len);
    char *resolved = NULL;
    qv_proto_error re;
    const qv_status rs = qv_proto_responses_resolve(body, len, echo_lookup, NULL, &resolved, &re);
    CHECK(rs == QV_OK || (!resolved && (rs == QV_ERR_NOMEM || rs == QV_ERR_INVALID)));
    if (resolved) { /* what the server decodes in the body's place */
        qv_proto_request rr;
        qv_proto_responses_extra rx;
        qv_proto_responses_decode(resolved, strlen(resolved), NULL, false, &rr, &rx, &re);
        qv_free(rx.echo);
        qv_free(rx.items);
        qv_proto_request_free(&rr);
        qv_free(resolved);
    }
    qv_status s =
        qv_proto_responses_decode(body, len, len % 2 ? prior : NULL, len % 3 == 0, &r, &x, &e);
    char *echo = x.echo;
    if (s != QV_OK) {
        CHECK((s == QV_ERR_INVALID || s == QV_ERR_NOMEM) && e.message[0] && !echo && !x.items);
        qv_proto_request_free(&r);
        return 0;
    }
    CHECK(r.endpoint == QV_PROTO_RESPONSES && r.n_messages > 0 && r.n == 1 && echo && x.items);
    char *text = r.messages[0].content, id[] = "call_x";
    qv_proto_tool_call call = {.id = id, .name = r.messages[0].role, .arguments = text};
    char tok[] = "tok";
    qv_proto_logprob lp = {.token = tok, .logprob = -1.0f};
    qv_proto_response_out o = {.id = "resp_x",
                               .model = "m",
                               .echo = echo,
                               .text = text,
                               .text_len = strlen(text) / 2,
                               .logprobs = r.logprobs,
                               .lps = &lp,
                               .n_lps = 1,
                               .output_tokens = 1};
    qv_proto_response_stream st = {0};
    size_t n;
    char *half = qv_strndup(text, strlen(text) / 2); /* a call being written */
    qv_proto_tool_call partial = {.id = id, .name = r.messages[0].role, .arguments = half};
    o.calls = half ? &partial : NULL;
    o.n_calls = half && r.tool_choice ? 1 : 0;
    char *ev = qv_proto_response_events(&st, &o, &n);
    check_events(ev, n);
    o.done = true;
    o.finish = r.max_tokens == 1 ? "length" : "stop";
    o.text_len = strlen(text);
    o.calls = &call;
    o.n_calls = r.tool_choice ? 1 : 0;
    qv_free(half);
    ev = qv_proto_response_events(&st, &o, &n);
    check_events(ev, n);
    CHECK(st.finished);
    check_json(qv_proto_response_encode(&o));
    if (x.background) { /* its other states: queued, cancelled, failed with an error */
        static const char *const states[] = {"queued", "cancelled", "failed"};
        const qv_proto_response_out plain = o;
        o.status = states[len % 3];
        o.error_code = o.status[0] == 'f' ? "server_error" : NULL;
        o.error_message = text;
        char *json = qv_proto_response_encode(&o);
        CHECK(json && qv_proto_response_background(json));
        check_json(json);
        o = plain;
    }
    ev = qv_proto_response_error_event(&st, "x", text, &n);
    check_events(ev, n);
    char *conv = qv_proto_response_conversation(x.items, &o);
    if (conv) { /* the kept conversation reads back (a call's arguments may be no object here) */
        static const char next[] = "{\"input\":\"n\",\"previous_response_id\":\"resp_x\"}";
        qv_proto_request r2;
        qv_proto_responses_extra x2;
        s = qv_proto_responses_decode(next, sizeof(next) - 1, conv, false, &r2, &x2, &e);
        CHECK(s == QV_OK || s == QV_ERR_NOMEM || (s == QV_ERR_INVALID && o.n_calls));
        qv_free(x2.echo);
        qv_free(x2.items);
        qv_proto_request_free(&r2);
        /* and its input items page, ascending from its first item, or with a bad cursor */
        char *resp = qv_proto_response_encode(&o);
        const qv_proto_items_query q = {.limit = len % 5 ? "2" : NULL,
                                        .order = len % 7 ? "asc" : NULL,
                                        .after = len % 11 ? NULL : "msg_x_in0"};
        char *page = resp ? qv_proto_response_input_items(resp, conv, &q, &e) : NULL;
        CHECK(page || !resp || e.status == QV_ERR_NOMEM || e.status == QV_ERR_INVALID);
        if (page) check_json(page);
        qv_free(resp);
    }
    check_json(conv);
    qv_free(x.items);
    qv_free(echo);
    qv_proto_request_free(&r);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int hooked;
    if (!hooked) {
        cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
        cJSON_InitHooks(&hooks);
        hooked = 1;
    }
    if (size == 0) return 0;
    static const enum qv_proto_endpoint eps[4] = {QV_PROTO_COMPLETIONS, QV_PROTO_CHAT,
                                                  QV_PROTO_GENERATE, QV_PROTO_TOKENIZE};
    enum qv_proto_endpoint ep = eps[data[0] & 3];
    if (ep == QV_PROTO_TOKENIZE && (data[0] & 4)) ep = QV_PROTO_DETOKENIZE;
    qv_proto_request r;
    qv_proto_error e;
    qv_proto_tgi tgi;
    const char *body = (const char *)data + 1;
    if (ep == QV_PROTO_CHAT && (data[0] & 8)) return fuzz_responses(body, size - 1);
    qv_status s = ep == QV_PROTO_GENERATE ? qv_proto_tgi_decode(body, size - 1, &r, &tgi, &e)
                                          : qv_proto_request_decode(ep, body, size - 1, &r, &e);
    if (s == QV_OK) { /* merged_adapters: a bounded list of names, never beside an adapter */
        CHECK(r.n_merge <= QV_MERGE_MAX && (!r.n_merge || !r.adapter));
        CHECK(!r.n_merge || (r.merge_density > 0.0 && r.merge_density <= 1.0 &&
                             r.merge_strategy >= 0 && r.merge_strategy < QV_MERGE_STRATEGY_COUNT));
        for (size_t i = 0; i < r.n_merge; i++)
            CHECK(r.merge_ids[i][0] && isfinite(r.merge_weights[i]));
    }
    if (s == QV_OK && ep == QV_PROTO_GENERATE) {
        CHECK(r.prompt && r.max_tokens >= 1 && r.temperature >= 0.0f);
        CHECK(r.top_p > 0.0f && r.top_p <= 1.0f && r.repetition_penalty > 0.0f);
        CHECK(tgi.truncate >= 0 && tgi.n_alternatives >= 0 &&
              tgi.n_alternatives <= QV_PROTO_MAX_LOGPROBS);
        for (size_t i = 0; i < r.n_stop; i++)
            CHECK(r.stop[i] && r.stop[i][0]);
        /* the answer and the events encode whatever the prompt holds, as valid JSON */
        int32_t alt_id[1] = {7};
        const char *alt_text[1] = {r.prompt};
        float alt_lp[1] = {-1.0f};
        qv_proto_tgi_token tok = {.id = 1,
                                  .text = r.prompt,
                                  .logprob = -0.5f,
                                  .n_alt = 1,
                                  .alt_id = alt_id,
                                  .alt_text = alt_text,
                                  .alt_logprob = alt_lp};
        qv_proto_tgi_result res = {.generated_text = r.prompt,
                                   .generated_len = r.prompt_len,
                                   .finish_reason = "length",
                                   .details = tgi.details,
                                   .has_seed = r.has_seed,
                                   .seed = r.seed,
                                   .tokens = &tok,
                                   .n_tokens = 1};
        char *outs[3] = {qv_proto_tgi_encode_response(&res, r.stream),
                         qv_proto_tgi_encode_event(&tok, 1, &res),
                         qv_proto_tgi_encode_error(r.prompt, "validation")};
        for (int i = 0; i < 3; i++)
            check_json(outs[i]);
        qv_proto_request_free(&r);
        return 0;
    }
    if (s == QV_OK && (ep == QV_PROTO_TOKENIZE || ep == QV_PROTO_DETOKENIZE)) {
        if (ep == QV_PROTO_TOKENIZE) CHECK((r.prompt != NULL) != (r.n_messages > 0));
        const char *strs[2] = {r.prompt, NULL};
        check_json(ep == QV_PROTO_TOKENIZE
                       ? qv_proto_encode_tokenize(r.prompt_ids, r.n_prompt_ids, 8192, strs)
                       : qv_proto_encode_detokenize(r.prompt));
        qv_proto_request_free(&r);
        return 0;
    }
    if (s != QV_OK) {
        CHECK(s == QV_ERR_INVALID || s == QV_ERR_NOMEM);
        CHECK(e.message[0] != '\0');
    } else {
        if (ep == QV_PROTO_COMPLETIONS) {
            CHECK((r.prompt != NULL) != (r.n_prompt_ids > 0));
            for (size_t i = 0; i < r.n_prompt_ids; i++)
                CHECK(r.prompt_ids[i] >= 0);
        } else {
            CHECK(r.n_messages > 0 && r.messages);
            for (size_t i = 0; i < r.n_messages; i++)
                CHECK(r.messages[i].role && r.messages[i].content);
        }
        CHECK(r.max_tokens == -1 || r.max_tokens >= 1 || (r.max_tokens == 0 && r.echo));
        CHECK(!r.echo || ep == QV_PROTO_COMPLETIONS);
        CHECK(!r.chat_echo || (ep == QV_PROTO_CHAT && r.tool_choice == QV_PROTO_TOOLS_NONE));
        CHECK(r.n >= 1 && r.n <= QV_PROTO_MAX_CHOICES);
        CHECK((1 + r.n_more) * (size_t)r.n <= QV_PROTO_MAX_CHOICES);
        for (size_t i = 0; i < r.n_more; i++)
            CHECK((r.more[i].text != NULL) != (r.more[i].n_ids > 0));
        CHECK(r.n_bias <= QV_PROTO_MAX_LOGIT_BIAS && r.min_tokens >= 0);
        for (size_t i = 0; i < r.n_bias; i++)
            CHECK(r.bias_ids[i] >= 0 && fabsf(r.bias_values[i]) <= (float)QV_PROTO_MAX_BIAS);
        CHECK(r.temperature >= 0.0f && r.top_p > 0.0f && r.top_p <= 1.0f);
        CHECK(r.top_logprobs >= 0 && r.top_logprobs <= QV_PROTO_MAX_LOGPROBS);
        CHECK(r.n_stop <= QV_PROTO_MAX_STOPS);
        for (size_t i = 0; i < r.n_stop; i++)
            CHECK(r.stop[i] && r.stop[i][0]);
        CHECK(!r.prompt_lps ||
              (r.prompt_logprobs >= 0 && r.prompt_logprobs <= QV_PROTO_MAX_LOGPROBS && !r.stream));
        CHECK(!r.continuous_usage || r.include_usage);
        const char *text = ep == QV_PROTO_CHAT ? r.messages[0].content : r.prompt;
        check_partial_calls(text);
        qv_proto_result res = {.endpoint = ep,
                               .id = "x",
                               .model = r.model,
                               .text = text,
                               .text_len = text ? strlen(text) : 0,
                               .usage = true};
        check_json(qv_proto_encode_response(&res));
    }
    qv_proto_request_free(&r);
    return 0;
}
