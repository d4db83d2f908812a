/*
 * responses.c - OpenAI's Responses API (POST /v1/responses) on top of chat completions.
 *
 * A request is rewritten as the chat request it means (a cJSON tree printed and handed to
 * qv_proto_request_decode), so every sampling option, tool and structured-output rule is
 * chat's. The answer is encoded as a response object, or streamed as the API's typed events
 * from a small record of what the client has (qv_proto_response_stream).
 * Also the records a kept response leaves (the conversation, its input items). Not here: the
 * store that keeps them (server/resp_store.c), I/O.
 * Thread: pure functions.
 */
#include "proto/proto.h"
#include "proto/proto_internal.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qv_status rfail(qv_proto_error *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static qv_status rfail(qv_proto_error *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qv_status s = qv__proto_failv(e, QV_ERR_INVALID, param, fmt, ap);
    va_end(ap);
    return s;
}

static const char *type_of(const cJSON *o) {
    const cJSON *t = cJSON_IsObject(o) ? qv__proto_field(o, "type") : NULL;
    return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* Adds a copy of `from` under key (nothing when from is NULL). */
static bool put_copy(cJSON *to, const char *key, const cJSON *from) {
    return !from || qv__proto_put_item(to, key, cJSON_Duplicate(from, true));
}

/* A content value (a string, or a list of input_text / output_text parts) as chat's text
 * parts [{"type": "text", "text"}] or its string; NULL with *e set when it is neither. */
static cJSON *content_of(const cJSON *c, const char *param, qv_proto_error *e) {
    if (cJSON_IsString(c)) {
        cJSON *s = cJSON_CreateString(c->valuestring);
        if (!s) qv__proto_nomem(e);
        return s;
    }
    if (!cJSON_IsArray(c)) {
        rfail(e, param, "%s must be a string or a list of input_text parts", param);
        return NULL;
    }
    cJSON *parts = cJSON_CreateArray();
    if (!parts) return qv__proto_nomem(e), NULL;
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const char *t = type_of(p);
        const cJSON *text = cJSON_IsObject(p) ? qv__proto_field(p, "text") : NULL;
        if (!t || (strcmp(t, "input_text") && strcmp(t, "output_text")) || !cJSON_IsString(text)) {
            cJSON_Delete(parts);
            rfail(e, param,
                  "%s: only input_text and output_text parts are supported (quiver reads "
                  "text; '%s' is not)",
                  param, t ? t : "(no type)");
            return NULL;
        }
        cJSON *q = cJSON_CreateObject();
        if (!q || !cJSON_AddItemToArray(parts, q)) {
            cJSON_Delete(q);
            cJSON_Delete(parts);
            return qv__proto_nomem(e), NULL;
        }
        if (!cJSON_AddStringToObject(q, "type", "text") ||
            !cJSON_AddStringToObject(q, "text", text->valuestring)) {
            cJSON_Delete(parts);
            return qv__proto_nomem(e), NULL;
        }
    }
    return parts;
}

/* Appends {"role", "content"} to msgs; content is taken (NULL: null). */
static cJSON *add_message(cJSON *msgs, const char *role, cJSON *content, qv_proto_error *e) {
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddItemToArray(msgs, m)) {
        cJSON_Delete(m);
        cJSON_Delete(content);
        return qv__proto_nomem(e), NULL;
    }
    if (!cJSON_AddStringToObject(m, "role", role)) {
        cJSON_Delete(content);
        return qv__proto_nomem(e), NULL;
    }
    if (!qv__proto_put_item(m, "content", content ? content : cJSON_CreateNull()))
        return qv__proto_nomem(e), NULL;
    return m;
}

/* One function_call item: a call of the assistant message before it (made when the item
 * before is not an assistant message). */
static qv_status add_call(cJSON *msgs, const cJSON *it, const char *param, qv_proto_error *e) {
    const cJSON *id = qv__proto_field(it, "call_id"), *name = qv__proto_field(it, "name"),
                *args = qv__proto_field(it, "arguments");
    cJSON *parsed = cJSON_IsString(args) ? cJSON_Parse(args->valuestring) : NULL;
    const bool ok = cJSON_IsString(id) && cJSON_IsString(name) && cJSON_IsObject(parsed);
    cJSON_Delete(parsed);
    if (!ok)
        return rfail(e, param,
                     "%s: a function_call item needs a string call_id, a name and arguments "
                     "(the text of a JSON object)",
                     param);
    cJSON *last = cJSON_GetArrayItem(msgs, cJSON_GetArraySize(msgs) - 1);
    const cJSON *role = last ? qv__proto_field(last, "role") : NULL;
    if (!cJSON_IsString(role) || strcmp(role->valuestring, "assistant"))
        if (!(last = add_message(msgs, "assistant", NULL, e))) return QV_ERR_NOMEM;
    cJSON *calls = cJSON_GetObjectItemCaseSensitive(last, "tool_calls");
    if (!calls && !(calls = cJSON_AddArrayToObject(last, "tool_calls"))) return qv__proto_nomem(e);
    cJSON *c = cJSON_CreateObject(), *fn = NULL;
    if (!c || !cJSON_AddItemToArray(calls, c)) {
        cJSON_Delete(c);
        return qv__proto_nomem(e);
    }
    if (!cJSON_AddStringToObject(c, "id", id->valuestring) ||
        !cJSON_AddStringToObject(c, "type", "function") ||
        !(fn = cJSON_AddObjectToObject(c, "function")) ||
        !cJSON_AddStringToObject(fn, "name", name->valuestring) ||
        !cJSON_AddStringToObject(fn, "arguments", args->valuestring))
        return qv__proto_nomem(e);
    return QV_OK;
}

/* `input` (and `instructions` before it) as chat messages. */
/* One input item (a message, function_call or function_call_output) as chat messages. */
static qv_status item_messages(cJSON *msgs, const cJSON *it, const char *param, qv_proto_error *e) {
    const char *t = type_of(it);
    if (!cJSON_IsObject(it)) return rfail(e, param, "%s must be an object", param);
    if (!t || !strcmp(t, "message")) {
        const cJSON *role = qv__proto_field(it, "role"), *c = qv__proto_field(it, "content");
        const char *rs = cJSON_IsString(role) ? role->valuestring : "";
        if (strcmp(rs, "user") && strcmp(rs, "system") && strcmp(rs, "developer") &&
            strcmp(rs, "assistant"))
            return rfail(e, param,
                         "%s: a message's role must be \"user\", \"system\", \"developer\" or "
                         "\"assistant\"",
                         param);
        if (!c) return rfail(e, param, "%s: a message needs 'content'", param);
        cJSON *content = content_of(c, param, e);
        if (!content) return e->status;
        return add_message(msgs, strcmp(rs, "developer") ? rs : "system", content, e)
                   ? QV_OK
                   : QV_ERR_NOMEM;
    }
    if (!strcmp(t, "function_call")) return add_call(msgs, it, param, e);
    if (!strcmp(t, "function_call_output")) {
        const cJSON *id = qv__proto_field(it, "call_id"), *out = qv__proto_field(it, "output");
        if (!cJSON_IsString(id) || !out)
            return rfail(e, param,
                         "%s: a function_call_output item needs a string call_id and output",
                         param);
        cJSON *content = content_of(out, param, e);
        cJSON *m = content ? add_message(msgs, "tool", content, e) : NULL;
        if (!m) return e->status;
        return cJSON_AddStringToObject(m, "tool_call_id", id->valuestring) ? QV_OK
                                                                           : qv__proto_nomem(e);
    }
    return rfail(e, param,
                 "%s: items of type '%s' are not supported by quiver (messages, function_call "
                 "and function_call_output items are)",
                 param, t);
}

/* How many items `input` adds to the conversation (a string: one user message). */
static size_t input_count(const cJSON *root) {
    const cJSON *in = qv__proto_field(root, "input");
    return cJSON_IsArray(in) ? (size_t)cJSON_GetArraySize(in) : 1;
}

/* `instructions` (a system message), the earlier conversation's items (prior, a JSON array
 * of items, or NULL), then `input`, as chat messages; *items gets prior's items and input's
 * (a string as a user message) as a JSON array. */
static qv_status input_messages(const cJSON *root, const char *prior, cJSON *msgs, cJSON **items,
                                qv_proto_error *e) {
    const cJSON *ins = qv__proto_field(root, "instructions"), *in = qv__proto_field(root, "input");
    if (ins && !cJSON_IsString(ins))
        return rfail(e, "instructions", "'instructions' must be a string");
    cJSON *text = ins ? cJSON_CreateString(ins->valuestring) : NULL;
    if (ins && (!text || !add_message(msgs, "system", text, e))) return qv__proto_nomem(e);
    if (!in) return rfail(e, "input", "'input' is required");
    if (!cJSON_IsString(in) && (!cJSON_IsArray(in) || !cJSON_GetArraySize(in)))
        return rfail(e, "input", "'input' must be a string or a non-empty list of items");
    if (!(*items = prior ? cJSON_Parse(prior) : cJSON_CreateArray())) return qv__proto_nomem(e);
    if (!cJSON_IsArray(*items))
        return rfail(e, "previous_response_id", "the stored conversation is not a list of items");
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, *items) { /* read like input, which was checked when stored */
        char param[48];
        snprintf(param, sizeof(param), "previous_response_id (item %d)", i++);
        const qv_status s = item_messages(msgs, it, param, e);
        if (s) return s;
    }
    if (cJSON_IsString(in)) {
        cJSON *m = cJSON_CreateObject();
        if (!m || !cJSON_AddItemToArray(*items, m)) {
            cJSON_Delete(m);
            return qv__proto_nomem(e);
        }
        if (!cJSON_AddStringToObject(m, "role", "user") ||
            !cJSON_AddStringToObject(m, "content", in->valuestring))
            return qv__proto_nomem(e);
        text = cJSON_CreateString(in->valuestring);
        return text && add_message(msgs, "user", text, e) ? QV_OK : qv__proto_nomem(e);
    }
    if (cJSON_GetArraySize(in) + cJSON_GetArraySize(*items) > QV_PROTO_MAX_MESSAGES)
        return rfail(e, "input", "'input' and the earlier conversation have over %d items",
                     QV_PROTO_MAX_MESSAGES);
    i = 0;
    cJSON_ArrayForEach(it, in) {
        char param[40];
        snprintf(param, sizeof(param), "input[%d]", i++);
        qv_status s = item_messages(msgs, it, param, e);
        if (s) return s;
        if (!cJSON_AddItemToArray(*items, cJSON_Duplicate(it, true))) return qv__proto_nomem(e);
    }
    return QV_OK;
}

/* Function tools [{"type": "function", "name", "description", "parameters", "strict"}] as
 * chat's [{"type": "function", "function": {...}}]. */
static qv_status chat_tools(const cJSON *tools, cJSON *chat, qv_proto_error *e) {
    if (!cJSON_IsArray(tools)) return rfail(e, "tools", "'tools' must be a list");
    cJSON *list = cJSON_AddArrayToObject(chat, "tools");
    if (!list) return qv__proto_nomem(e);
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, tools) {
        const char *ty = type_of(t);
        if (!ty || strcmp(ty, "function"))
            return rfail(e, "tools",
                         "tools[%d]: tools of type '%s' are not supported by quiver (function "
                         "tools only)",
                         i, ty ? ty : "(none)");
        if (!cJSON_IsString(qv__proto_field(t, "name")))
            return rfail(e, "tools", "tools[%d]: a function tool needs a string 'name'", i);
        cJSON *o = cJSON_CreateObject(), *fn = NULL;
        if (!o || !cJSON_AddItemToArray(list, o)) {
            cJSON_Delete(o);
            return qv__proto_nomem(e);
        }
        if (!cJSON_AddStringToObject(o, "type", "function") ||
            !(fn = cJSON_AddObjectToObject(o, "function")))
            return qv__proto_nomem(e);
        static const char *const keys[] = {"name", "description", "parameters", "strict"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            if (!put_copy(fn, keys[k], qv__proto_field(t, keys[k]))) return qv__proto_nomem(e);
        i++;
    }
    return QV_OK;
}

/* {"type": "allowed_tools", "mode", "tools": [{"type": "function", "name"}, ...]} as chat's
 * {"type": "allowed_tools", "allowed_tools": {"mode", "tools": [{"type": "function",
 * "function": {"name"}}, ...]}} (the chat decoder checks the rest). */
static qv_status chat_allowed_tools(const cJSON *tc, cJSON *chat, qv_proto_error *e) {
    const cJSON *list = qv__proto_field(tc, "tools"), *it;
    if (!cJSON_IsArray(list))
        return rfail(e, "tool_choice",
                     "'tool_choice' {\"type\": \"allowed_tools\"} needs \"mode\" and \"tools\": "
                     "[{\"type\": \"function\", \"name\": ...}, ...]");
    cJSON *o = cJSON_AddObjectToObject(chat, "tool_choice"), *at = NULL, *tools = NULL;
    if (!o || !cJSON_AddStringToObject(o, "type", "allowed_tools") ||
        !(at = cJSON_AddObjectToObject(o, "allowed_tools")) ||
        !put_copy(at, "mode", qv__proto_field(tc, "mode")) ||
        !(tools = cJSON_AddArrayToObject(at, "tools")))
        return qv__proto_nomem(e);
    cJSON_ArrayForEach(it, list) {
        const char *t = type_of(it);
        const cJSON *name = t ? qv__proto_field(it, "name") : NULL;
        if (!t || strcmp(t, "function") || !cJSON_IsString(name))
            return rfail(e, "tool_choice",
                         "'tool_choice.tools' lists {\"type\": \"function\", \"name\": ...} "
                         "entries (quiver has no other tools)");
        cJSON *f = cJSON_CreateObject(), *fn = NULL;
        if (!f || !cJSON_AddItemToArray(tools, f) ||
            !cJSON_AddStringToObject(f, "type", "function") ||
            !(fn = cJSON_AddObjectToObject(f, "function")) ||
            !cJSON_AddStringToObject(fn, "name", name->valuestring))
            return qv__proto_nomem(e);
    }
    return QV_OK;
}

static qv_status chat_tool_choice(const cJSON *tc, cJSON *chat, qv_proto_error *e) {
    if (cJSON_IsString(tc)) return put_copy(chat, "tool_choice", tc) ? QV_OK : qv__proto_nomem(e);
    const char *t = type_of(tc);
    if (t && !strcmp(t, "allowed_tools")) return chat_allowed_tools(tc, chat, e);
    const cJSON *name = t ? qv__proto_field(tc, "name") : NULL;
    if (!t || strcmp(t, "function") || !cJSON_IsString(name))
        return rfail(e, "tool_choice",
                     "'tool_choice' must be \"auto\", \"none\", \"required\", {\"type\": "
                     "\"function\", \"name\": ...} or {\"type\": \"allowed_tools\", ...}");
    cJSON *o = cJSON_AddObjectToObject(chat, "tool_choice"), *fn = NULL;
    if (!o || !cJSON_AddStringToObject(o, "type", "function") ||
        !(fn = cJSON_AddObjectToObject(o, "function")) ||
        !cJSON_AddStringToObject(fn, "name", name->valuestring))
        return qv__proto_nomem(e);
    return QV_OK;
}

/* text.format as chat's response_format. */
static qv_status chat_format(const cJSON *text, cJSON *chat, qv_proto_error *e) {
    if (!cJSON_IsObject(text)) return rfail(e, "text", "'text' must be an object");
    const cJSON *v = qv__proto_field(text, "verbosity");
    if (v && !(cJSON_IsString(v) && !strcmp(v->valuestring, "medium")))
        return rfail(e, "text.verbosity",
                     "'text.verbosity' may only be \"medium\" (the models quiver serves take no "
                     "verbosity setting)");
    const cJSON *f = qv__proto_field(text, "format");
    if (!f) return QV_OK;
    const char *t = type_of(f);
    if (t && !strcmp(t, "text")) return QV_OK;
    cJSON *rf = cJSON_AddObjectToObject(chat, "response_format");
    if (!rf) return qv__proto_nomem(e);
    if (t && !strcmp(t, "json_object"))
        return cJSON_AddStringToObject(rf, "type", "json_object") ? QV_OK : qv__proto_nomem(e);
    if (!t || strcmp(t, "json_schema"))
        return rfail(e, "text.format",
                     "'text.format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} "
                     "or {\"type\": \"json_schema\", \"name\": ..., \"schema\": {...}}");
    if (!cJSON_IsObject(qv__proto_field(f, "schema")))
        return rfail(e, "text.format.schema", "'text.format.schema' must be a JSON schema object");
    cJSON *js = NULL;
    if (!cJSON_AddStringToObject(rf, "type", "json_schema") ||
        !(js = cJSON_AddObjectToObject(rf, "json_schema")))
        return qv__proto_nomem(e);
    static const char *const keys[] = {"name", "description", "schema", "strict"};
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        if (!put_copy(js, keys[k], qv__proto_field(f, keys[k]))) return qv__proto_nomem(e);
    return QV_OK;
}

/* `metadata`: at most 16 string values, keys of at most 64 characters, values of at most 512
 * (OpenAI's limits). */
static qv_status check_metadata(const cJSON *m, qv_proto_error *e) {
    if (!cJSON_IsObject(m)) return rfail(e, "metadata", "'metadata' must be an object of strings");
    int n = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, m) {
        if (++n > 16) return rfail(e, "metadata", "'metadata' has over 16 keys");
        if (strlen(v->string) > 64)
            return rfail(e, "metadata", "'metadata' keys have at most 64 characters");
        if (!cJSON_IsString(v) || strlen(v->valuestring) > 512)
            return rfail(e, "metadata", "'metadata' values are strings of at most 512 characters");
    }
    return QV_OK;
}

/* `conversation`'s id: the string, or the "id" of {"id": ...}; NULL when neither. */
static const char *conversation_id(const cJSON *f) {
    const cJSON *id = cJSON_IsObject(f) ? qv__proto_field(f, "id") : f;
    return cJSON_IsString(id) ? id->valuestring : NULL;
}

/* What quiver cannot do, refused by name. */
static qv_status refuse(const cJSON *root, qv_proto_error *e) {
    static const struct {
        const char *name, *why;
    } k_never[] = {
        {"prompt", "stored prompt templates are not supported by quiver"},
    };
    for (size_t i = 0; i < sizeof(k_never) / sizeof(k_never[0]); i++)
        if (qv__proto_field(root, k_never[i].name))
            return rfail(e, k_never[i].name, "%s", k_never[i].why);
    const cJSON *f = qv__proto_field(root, "background");
    if (f && !cJSON_IsBool(f)) return rfail(e, "background", "'background' must be a boolean");
    if (cJSON_IsTrue(f) && cJSON_IsFalse(qv__proto_field(root, "store")))
        return rfail(e, "store",
                     "a background response is kept until it is read: 'store' "
                     "cannot be false with 'background' true");
    if ((f = qv__proto_field(root, "reasoning"))) {
        if (!cJSON_IsObject(f)) return rfail(e, "reasoning", "'reasoning' must be an object");
        if (qv__proto_field(f, "effort") || qv__proto_field(f, "summary") ||
            qv__proto_field(f, "generate_summary"))
            return rfail(e, "reasoning",
                         "'reasoning' options are not supported: the base models quiver serves "
                         "do not reason separately");
    }
    /* it bounds calls to built-in tools, which quiver has none of: always met */
    int max_calls;
    qv_status s = qv__proto_get_int(root, "max_tool_calls", 0, 1e9, &max_calls, e);
    if (s) return s;
    if ((f = qv__proto_field(root, "truncation")) &&
        !(cJSON_IsString(f) &&
          (!strcmp(f->valuestring, "disabled") || !strcmp(f->valuestring, "auto"))))
        return rfail(e, "truncation", "'truncation' must be \"disabled\" or \"auto\"");
    if ((f = qv__proto_field(root, "metadata")) && (s = check_metadata(f, e))) return s;
    if ((f = qv__proto_field(root, "conversation")) && !conversation_id(f))
        return rfail(e, "conversation",
                     "'conversation' must be a conversation's id or {\"id\": ...}");
    if (f && qv__proto_field(root, "previous_response_id"))
        return rfail(e, "conversation",
                     "'conversation' and 'previous_response_id' cannot be used together");
    if ((f = qv__proto_field(root, "store")) && !cJSON_IsBool(f))
        return rfail(e, "store", "'store' must be a boolean");
    if ((f = qv__proto_field(root, "user")) && !cJSON_IsString(f))
        return rfail(e, "user", "'user' must be a string");
    return QV_OK;
}

/* include and top_logprobs: logprobs of the output text. The other values the API defines ask
 * for parts of items quiver never makes (built-in tools' calls, input images, reasoning): they
 * add nothing. */
static qv_status chat_logprobs(const cJSON *root, cJSON *chat, qv_proto_error *e) {
    static const char *const k_includable[] = {"message.output_text.logprobs", /* the one read */
                                               "file_search_call.results",
                                               "web_search_call.results",
                                               "web_search_call.action.sources",
                                               "message.input_image.image_url",
                                               "computer_call_output.output.image_url",
                                               "code_interpreter_call.outputs",
                                               "reasoning.encrypted_content"};
    const cJSON *inc = qv__proto_field(root, "include"),
                *top = qv__proto_field(root, "top_logprobs");
    bool lps = false;
    if (inc && !cJSON_IsArray(inc)) return rfail(e, "include", "'include' must be a list");
    const cJSON *x;
    cJSON_ArrayForEach(x, inc) {
        size_t i = 0;
        while (cJSON_IsString(x) && i < QV_ARRAY_LEN(k_includable) &&
               strcmp(x->valuestring, k_includable[i]))
            i++;
        lps = lps || i == 0;
        if (!cJSON_IsString(x) || i == QV_ARRAY_LEN(k_includable))
            return rfail(e, "include", "'include' holds %s, which is not an includable field",
                         cJSON_IsString(x) ? "an unknown value" : "a value that is not a string");
    }
    if (top && !(cJSON_IsNumber(top) && top->valuedouble == 0)) lps = true;
    if (lps && !cJSON_AddTrueToObject(chat, "logprobs")) return qv__proto_nomem(e);
    return put_copy(chat, "top_logprobs", top) ? QV_OK : qv__proto_nomem(e);
}

/* The settings a response object repeats, with the API's defaults. */
static char *echo_of(const cJSON *root, bool stored) {
    cJSON *o = cJSON_CreateObject();
    static const char *const copied[] = {"instructions", "max_output_tokens", "user",
                                         "top_logprobs", "max_tool_calls"};
    bool ok = o != NULL;
    for (size_t i = 0; ok && i < sizeof(copied) / sizeof(copied[0]); i++) {
        const cJSON *f = qv__proto_field(root, copied[i]);
        ok = f ? put_copy(o, copied[i], f) : cJSON_AddNullToObject(o, copied[i]) != NULL;
    }
    const cJSON *f;
    cJSON *r = NULL, *t = NULL, *fmt = NULL;
    ok = ok &&
         ((f = qv__proto_field(root, "metadata")) ? put_copy(o, "metadata", f)
                                                  : cJSON_AddObjectToObject(o, "metadata") != NULL);
    ok = ok && ((f = qv__proto_field(root, "parallel_tool_calls"))
                    ? put_copy(o, "parallel_tool_calls", f)
                    : cJSON_AddTrueToObject(o, "parallel_tool_calls") != NULL);
    ok = ok && ((f = qv__proto_field(root, "temperature"))
                    ? put_copy(o, "temperature", f)
                    : cJSON_AddNumberToObject(o, "temperature", 1) != NULL);
    ok = ok &&
         ((f = qv__proto_field(root, "top_p")) ? put_copy(o, "top_p", f)
                                               : cJSON_AddNumberToObject(o, "top_p", 1) != NULL);
    ok = ok && ((f = qv__proto_field(root, "text"))
                    ? put_copy(o, "text", f)
                    : (t = cJSON_AddObjectToObject(o, "text")) &&
                          (fmt = cJSON_AddObjectToObject(t, "format")) &&
                          cJSON_AddStringToObject(fmt, "type", "text") != NULL);
    ok = ok && ((f = qv__proto_field(root, "tool_choice"))
                    ? put_copy(o, "tool_choice", f)
                    : cJSON_AddStringToObject(o, "tool_choice", "auto") != NULL);
    ok = ok && ((f = qv__proto_field(root, "tools")) ? put_copy(o, "tools", f)
                                                     : cJSON_AddArrayToObject(o, "tools") != NULL);
    ok =
        ok &&
        ((f = qv__proto_field(root, "truncation"))
             ? put_copy(o, "truncation", f)
             : cJSON_AddStringToObject(o, "truncation", "disabled") != NULL) &&
        cJSON_AddBoolToObject(o, "store", stored) &&
        cJSON_AddBoolToObject(o, "background", cJSON_IsTrue(qv__proto_field(root, "background"))) &&
        ((f = qv__proto_field(root, "conversation"))
             ? (t = cJSON_AddObjectToObject(o, "conversation")) &&
                   cJSON_AddStringToObject(t, "id", conversation_id(f))
             : cJSON_AddNullToObject(o, "conversation") != NULL) &&
        ((f = qv__proto_field(root, "previous_response_id"))
             ? put_copy(o, "previous_response_id", f)
             : cJSON_AddNullToObject(o, "previous_response_id") != NULL) &&
        (r = cJSON_AddObjectToObject(o, "reasoning")) && cJSON_AddNullToObject(r, "effort") &&
        cJSON_AddNullToObject(r, "summary") &&
        cJSON_AddStringToObject(o, "service_tier", "default");
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

/* A chat error's field, named as the Responses API names it. */
static void rename_param(qv_proto_error *e) {
    static const struct {
        const char *chat, *resp;
    } k_map[] = {{"messages", "input"},
                 {"max_tokens", "max_output_tokens"},
                 {"response_format", "text.format"},
                 {"stream_options", "stream"}};
    for (size_t i = 0; i < sizeof(k_map) / sizeof(k_map[0]); i++) {
        const size_t n = strlen(k_map[i].chat);
        if (!strncmp(e->param, k_map[i].chat, n) && (!e->param[n] || e->param[n] == '.')) {
            char rest[64];
            snprintf(rest, sizeof(rest), "%s", e->param + n);
            snprintf(e->param, sizeof(e->param), "%s%s", k_map[i].resp, rest);
            return;
        }
    }
}

/* A body's previous_response_id (a string) or conversation (its id: a string or {"id"}) when
 * shorter than cap, copied into id. */
static bool body_id(const char *body, size_t len, const char *name, char *id, size_t cap) {
    cJSON *root = cJSON_ParseWithLength(body, len);
    const cJSON *f = cJSON_IsObject(root) ? qv__proto_field(root, name) : NULL;
    const char *s = !f                              ? NULL
                    : !strcmp(name, "conversation") ? conversation_id(f)
                    : cJSON_IsString(f)             ? f->valuestring
                                                    : NULL;
    const bool ok = s && strlen(s) < cap;
    if (ok) memcpy(id, s, strlen(s) + 1);
    cJSON_Delete(root);
    return ok;
}

qv_status qv_proto_responses_resolve(const char *body, size_t len, qv_proto_item_lookup lookup,
                                     void *user, char **out, qv_proto_error *e) {
    *out = NULL;
    memset(e, 0, sizeof(*e));
    cJSON *root = cJSON_ParseWithLength(body, len);
    cJSON *in = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "input") : NULL;
    qv_status s = QV_OK;
    bool changed = false;
    int i = 0;
    for (cJSON *it = cJSON_IsArray(in) ? in->child : NULL; it; i++) {
        cJSON *next = it->next;
        const char *t = type_of(it);
        const cJSON *id = t && !strcmp(t, "item_reference") ? qv__proto_field(it, "id") : NULL;
        if (t && !strcmp(t, "item_reference")) {
            bool nomem = false;
            char *text = cJSON_IsString(id) ? lookup(user, id->valuestring, &nomem) : NULL;
            cJSON *item = text ? cJSON_Parse(text) : NULL;
            nomem = nomem || (text && !item); /* the server's own JSON: only memory fails */
            qv_free(text);
            if (!item) {
                s = nomem ? qv__proto_nomem(e)
                    : cJSON_IsString(id)
                        ? rfail(e, "",
                                "input[%d]: no item '%.100s' (a reference reads an item "
                                "of a response kept for this API key)",
                                i, id->valuestring)
                        : rfail(e, "", "input[%d]: an item_reference needs a string id", i);
                if (s == QV_ERR_INVALID) snprintf(e->param, sizeof(e->param), "input[%d]", i);
                goto done;
            }
            if (!cJSON_ReplaceItemViaPointer(in, it, item)) cJSON_Delete(item); /* cannot be */
            changed = true;
        }
        it = next;
    }
    if (changed && !(*out = cJSON_PrintUnformatted(root))) s = qv__proto_nomem(e);
done:
    cJSON_Delete(root);
    return s;
}

bool qv_proto_responses_previous(const char *body, size_t len, char *id, size_t cap) {
    return body_id(body, len, "previous_response_id", id, cap);
}

qv_status qv_proto_responses_decode(const char *body, size_t len, const char *prior, bool storing,
                                    qv_proto_request *r, qv_proto_responses_extra *x,
                                    qv_proto_error *e) {
    memset(r, 0, sizeof(*r));
    memset(x, 0, sizeof(*x));
    cJSON *items = NULL;
    qv_proto_error local;
    if (!e) e = &local; /* the helpers report through it */
    memset(e, 0, sizeof(*e));
    cJSON *root = cJSON_ParseWithLength(body, len), *chat = NULL;
    char *text = NULL;
    qv_status s;
    if (!root) return rfail(e, NULL, "the request body is not valid JSON");
    if (!cJSON_IsObject(root)) {
        s = rfail(e, NULL, "the request body must be a JSON object");
        goto done;
    }
    if ((s = refuse(root, e))) goto done;
    x->background = cJSON_IsTrue(qv__proto_field(root, "background"));
    if (x->background && !storing) {
        s = rfail(e, "background",
                  "background responses need the server to keep responses "
                  "(it was started with --responses-store-mb 0)");
        goto done;
    }
    const cJSON *prev = qv__proto_field(root, "previous_response_id");
    if (prev && !cJSON_IsString(prev)) {
        s = rfail(e, "previous_response_id", "'previous_response_id' must be a string");
        goto done;
    }
    if (prev && !prior) {
        s = rfail(e, "previous_response_id", "response '%.100s' not found", prev->valuestring);
        goto done;
    }
    const cJSON *conv = qv__proto_field(root, "conversation");
    if (conv && !prior) {
        s = rfail(e, "conversation", "conversation '%.100s' not found", conversation_id(conv));
        goto done;
    }
    /* chat's fields that the Responses API does not have are not read from its body */
    static const char *const k_dropped[] = {"input",
                                            "instructions",
                                            "max_output_tokens",
                                            "text",
                                            "tools",
                                            "tool_choice",
                                            "include",
                                            "top_logprobs",
                                            "store",
                                            "previous_response_id",
                                            "metadata",
                                            "reasoning",
                                            "truncation",
                                            "background",
                                            "user",
                                            "service_tier",
                                            "stream_options",
                                            "safety_identifier",
                                            "prompt_cache_key",
                                            "prompt_cache_retention",
                                            "messages",
                                            "n",
                                            "max_tokens",
                                            "max_completion_tokens",
                                            "response_format",
                                            "logprobs",
                                            "echo",
                                            "functions",
                                            "function_call",
                                            "prompt_logprobs",
                                            "modalities",
                                            "audio"};
    if (!(chat = cJSON_Duplicate(root, true))) goto oom;
    for (size_t i = 0; i < sizeof(k_dropped) / sizeof(k_dropped[0]); i++)
        cJSON_DeleteItemFromObjectCaseSensitive(chat, k_dropped[i]);
    cJSON *msgs = cJSON_AddArrayToObject(chat, "messages");
    if (!msgs) goto oom;
    if ((s = input_messages(root, prev || conv ? prior : NULL, msgs, &items, e))) goto done;
    x->n_prior = prev || conv ? (size_t)cJSON_GetArraySize(items) - input_count(root) : 0;
    const cJSON *f;
    if ((f = qv__proto_field(root, "max_output_tokens")) && !put_copy(chat, "max_tokens", f))
        goto oom;
    if ((f = qv__proto_field(root, "tools")) && (s = chat_tools(f, chat, e))) goto done;
    if ((f = qv__proto_field(root, "tool_choice")) && (s = chat_tool_choice(f, chat, e))) goto done;
    if ((f = qv__proto_field(root, "text")) && (s = chat_format(f, chat, e))) goto done;
    if ((s = chat_logprobs(root, chat, e))) goto done;
    if (!(text = cJSON_PrintUnformatted(chat))) goto oom;
    if ((s = qv_proto_request_decode(QV_PROTO_CHAT, text, strlen(text), r, e))) {
        rename_param(e);
        goto done;
    }
    r->endpoint = QV_PROTO_RESPONSES;
    const cJSON *st = qv__proto_field(root, "store");
    x->store = storing && !cJSON_IsFalse(st);
    const cJSON *tr = qv__proto_field(root, "truncation");
    x->truncate = cJSON_IsString(tr) && !strcmp(tr->valuestring, "auto");
    if (!(x->echo = echo_of(root, x->store)) || !(x->items = cJSON_PrintUnformatted(items)))
        goto oom;
    s = QV_OK;
    goto done;
oom:
    s = qv__proto_nomem(e);
done:
    if (s) {
        qv_free(x->echo);
        qv_free(x->items);
        memset(x, 0, sizeof(*x));
    }
    cJSON_Delete(items);
    cJSON_free(text);
    cJSON_Delete(chat);
    cJSON_Delete(root);
    return s;
}

/* ---- encoding ---- */

static const char *suffix_of(const qv_proto_response_out *o) {
    const char *id = o->id ? o->id : "";
    return strncmp(id, "resp_", 5) ? id : id + 5;
}

static const char *status_of(const qv_proto_response_out *o) {
    if (o->status) return o->status;
    if (!o->done) return "in_progress";
    return o->finish && !strcmp(o->finish, "length") ? "incomplete" : "completed";
}

/* {"type": "output_text", "text", "annotations": [], "logprobs": [...]} over text[0..len) and
 * lps[0..n_lps). */
static cJSON *text_part(const char *text, size_t len, const qv_proto_logprob *lps, size_t n_lps) {
    cJSON *p = cJSON_CreateObject();
    if (p && cJSON_AddStringToObject(p, "type", "output_text") &&
        qv__proto_add_text(p, "text", text, len) && cJSON_AddArrayToObject(p, "annotations") &&
        qv__proto_put_item(p, "logprobs", qv__proto_logprobs_list(lps, n_lps)))
        return p;
    cJSON_Delete(p);
    return NULL;
}

/* The message item: with its content part when `whole`, else content [] (just added). */
static cJSON *message_item(const qv_proto_response_out *o, const char *status, bool whole) {
    char id[128];
    snprintf(id, sizeof(id), "msg_%s", suffix_of(o));
    cJSON *m = cJSON_CreateObject(), *content = NULL;
    if (!m || !cJSON_AddStringToObject(m, "id", id) ||
        !cJSON_AddStringToObject(m, "type", "message") ||
        !cJSON_AddStringToObject(m, "status", status) ||
        !cJSON_AddStringToObject(m, "role", "assistant") ||
        !(content = cJSON_AddArrayToObject(m, "content")))
        goto oom;
    if (whole) {
        cJSON *p = text_part(o->text, o->text_len, o->logprobs ? o->lps : NULL,
                             o->logprobs ? o->n_lps : 0);
        if (!p || !cJSON_AddItemToArray(content, p)) {
            cJSON_Delete(p);
            goto oom;
        }
    }
    return m;
oom:
    cJSON_Delete(m);
    return NULL;
}

/* Function call i's item; arguments "" and in_progress when !whole (just added). */
static cJSON *call_item(const qv_proto_response_out *o, size_t i, bool whole) {
    char id[128];
    snprintf(id, sizeof(id), "fc_%s_%zu", suffix_of(o), i);
    const qv_proto_tool_call *c = &o->calls[i];
    cJSON *m = cJSON_CreateObject();
    if (m && cJSON_AddStringToObject(m, "id", id) &&
        cJSON_AddStringToObject(m, "type", "function_call") &&
        cJSON_AddStringToObject(m, "status", whole ? "completed" : "in_progress") &&
        cJSON_AddStringToObject(m, "call_id", c->id ? c->id : "") &&
        cJSON_AddStringToObject(m, "name", c->name ? c->name : "") &&
        cJSON_AddStringToObject(m, "arguments", whole && c->arguments ? c->arguments : ""))
        return m;
    cJSON_Delete(m);
    return NULL;
}

/* A background response cancelled or failed: it ended before (or without) its answer. */
static bool ended_early(const qv_proto_response_out *o) {
    return o->status && (!strcmp(o->status, "cancelled") || !strcmp(o->status, "failed"));
}

/* Whether the output holds the message: its text so far, or an empty answer that finished
 * (not one cut short with nothing written). */
static bool has_message(const qv_proto_response_out *o) {
    return o->text_len || (!o->n_calls && o->done && !ended_early(o));
}

/* An output item's status under a response's: cancelled and failed ones leave it incomplete. */
static const char *item_status(const char *status) {
    return !strcmp(status, "completed") || !strcmp(status, "in_progress") ? status : "incomplete";
}

static bool is_queued(const qv_proto_response_out *o) {
    return o->status && !strcmp(o->status, "queued");
}

/* The response object; `whole`: with its output and usage (else output [] and usage null, and
 * the status in_progress, or queued while it is). */
static cJSON *response_obj(const qv_proto_response_out *o, bool whole) {
    cJSON *r = o->echo ? cJSON_Parse(o->echo) : cJSON_CreateObject();
    cJSON *out = NULL, *u = NULL, *d = NULL;
    const char *status = whole ? status_of(o) : is_queued(o) ? "queued" : "in_progress";
    if (!r || !cJSON_AddStringToObject(r, "id", o->id ? o->id : "") ||
        !cJSON_AddStringToObject(r, "object", "response") ||
        !cJSON_AddNumberToObject(r, "created_at", (double)o->created) ||
        !(whole && o->completed_at
              ? cJSON_AddNumberToObject(r, "completed_at", (double)o->completed_at)
              : cJSON_AddNullToObject(r, "completed_at")) ||
        !cJSON_AddStringToObject(r, "status", status) ||
        (!cJSON_HasObjectItem(r, "background") && !cJSON_AddFalseToObject(r, "background")))
        goto oom;
    cJSON *err = o->error_code ? cJSON_AddObjectToObject(r, "error") : NULL;
    if ((o->error_code ? !err || !cJSON_AddStringToObject(err, "code", o->error_code) ||
                             !cJSON_AddStringToObject(err, "message",
                                                      o->error_message ? o->error_message : "")
                       : !cJSON_AddNullToObject(r, "error")) ||
        !cJSON_AddStringToObject(r, "model", o->model ? o->model : "") ||
        !(out = cJSON_AddArrayToObject(r, "output")))
        goto oom;
    if (!strcmp(status, "incomplete")) {
        cJSON *why = cJSON_AddObjectToObject(r, "incomplete_details");
        if (!why || !cJSON_AddStringToObject(why, "reason", "max_output_tokens")) goto oom;
    } else if (!cJSON_AddNullToObject(r, "incomplete_details")) {
        goto oom;
    }
    if (!whole) return cJSON_AddNullToObject(r, "usage") ? r : (cJSON_Delete(r), NULL);
    if (has_message(o)) {
        cJSON *m = message_item(o, item_status(status), true);
        if (!m || !cJSON_AddItemToArray(out, m)) {
            cJSON_Delete(m);
            goto oom;
        }
    }
    for (size_t i = 0; i < o->n_calls; i++) {
        cJSON *c = call_item(o, i, true);
        if (!c || !cJSON_AddItemToArray(out, c)) {
            cJSON_Delete(c);
            goto oom;
        }
    }
    if (!o->done) return cJSON_AddNullToObject(r, "usage") ? r : (cJSON_Delete(r), NULL);
    if (!(u = cJSON_AddObjectToObject(r, "usage")) ||
        !cJSON_AddNumberToObject(u, "input_tokens", o->input_tokens) ||
        !(d = cJSON_AddObjectToObject(u, "input_tokens_details")) ||
        !cJSON_AddNumberToObject(d, "cached_tokens", o->cached_tokens) ||
        !cJSON_AddNumberToObject(u, "output_tokens", o->output_tokens) ||
        !(d = cJSON_AddObjectToObject(u, "output_tokens_details")) ||
        !cJSON_AddNumberToObject(d, "reasoning_tokens", 0) ||
        !cJSON_AddNumberToObject(u, "total_tokens", o->input_tokens + o->output_tokens))
        goto oom;
    return r;
oom:
    cJSON_Delete(r);
    return NULL;
}

bool qv_proto_response_background(const char *json) {
    cJSON *r = cJSON_Parse(json ? json : "");
    const bool bg = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "background"));
    cJSON_Delete(r);
    return bg;
}

char *qv_proto_response_encode(const qv_proto_response_out *o) {
    cJSON *r = response_obj(o, true);
    char *s = r ? cJSON_PrintUnformatted(r) : NULL;
    cJSON_Delete(r);
    return s;
}

/* Item i of the conversation in the shape the API returns (input_items, and what the next
 * request reads back): an id when it has none ("msg_" / "fc_" / "fco_", the response's id,
 * "_in" and i), type "message" when it has none, a message's string content as one
 * input_text part (output_text for the assistant's), status "completed" when it has none. */
static bool canonical_item(cJSON *it, const char *suffix, int i) {
    if (!cJSON_IsObject(it)) return true; /* checked when read: cannot happen */
    const char *t = type_of(it);
    if (!t) {
        if (!cJSON_AddStringToObject(it, "type", "message")) return false;
        t = "message";
    }
    if (!cJSON_IsString(qv__proto_field(it, "id"))) {
        char id[160];
        snprintf(id, sizeof(id), "%s_%s_in%d",
                 !strcmp(t, "message")         ? "msg"
                 : !strcmp(t, "function_call") ? "fc"
                                               : "fco",
                 suffix, i);
        cJSON_DeleteItemFromObjectCaseSensitive(it, "id");
        if (!cJSON_AddStringToObject(it, "id", id)) return false;
    }
    if (!cJSON_IsString(qv__proto_field(it, "status"))) {
        cJSON_DeleteItemFromObjectCaseSensitive(it, "status");
        if (!cJSON_AddStringToObject(it, "status", "completed")) return false;
    }
    const cJSON *c = qv__proto_field(it, "content"), *role = qv__proto_field(it, "role");
    if (strcmp(t, "message") || !cJSON_IsString(c)) return true;
    const bool out = cJSON_IsString(role) && !strcmp(role->valuestring, "assistant");
    cJSON *parts = cJSON_CreateArray(), *part = cJSON_CreateObject();
    if (!parts || !part || !cJSON_AddItemToArray(parts, part)) {
        cJSON_Delete(parts);
        cJSON_Delete(part);
        return false;
    }
    if (!cJSON_AddStringToObject(part, "type", out ? "output_text" : "input_text") ||
        !cJSON_AddStringToObject(part, "text", c->valuestring) ||
        (out && !cJSON_AddArrayToObject(part, "annotations")) ||
        !cJSON_ReplaceItemInObjectCaseSensitive(it, "content", parts)) {
        cJSON_Delete(parts);
        return false;
    }
    return true;
}

char *qv_proto_response_conversation(const char *items, const qv_proto_response_out *o) {
    cJSON *list = cJSON_Parse(items ? items : "[]"), *r = response_obj(o, true);
    cJSON *out = r ? cJSON_GetObjectItemCaseSensitive(r, "output") : NULL;
    char *text = NULL;
    if (cJSON_IsArray(list) && out) {
        cJSON *it;
        bool ok = true;
        int i = 0;
        cJSON_ArrayForEach(it, list) ok = ok && canonical_item(it, suffix_of(o), i++);
        cJSON_ArrayForEach(it, out) ok =
            ok && cJSON_AddItemToArray(list, cJSON_Duplicate(it, true));
        if (ok) text = cJSON_PrintUnformatted(list);
    }
    cJSON_Delete(list);
    cJSON_Delete(r);
    return text;
}

/* The index of the item whose id is `id` among the first n of list, or -1. */
static int item_index(const cJSON *list, int n, const char *id) {
    for (int i = 0; i < n; i++) {
        const cJSON *v = qv__proto_field(cJSON_GetArrayItem(list, i), "id");
        if (cJSON_IsString(v) && !strcmp(v->valuestring, id)) return i;
    }
    return -1;
}

/* One page of the first n items of list, as q asks: {"object": "list", "data", "first_id",
 * "last_id", "has_more"}. what names those items in an unknown cursor's message. */
static char *items_page(const cJSON *list, int n, const qv_proto_items_query *q, const char *what,
                        qv_proto_error *e) {
    long limit = 20;
    if (q->limit) {
        char *end = NULL;
        limit = strtol(q->limit, &end, 10);
        if (end == q->limit || *end || limit < 1 || limit > 100) {
            rfail(e, "limit", "'limit' must be an integer from 1 to 100");
            return NULL;
        }
    }
    const bool asc = q->order && !strcmp(q->order, "asc");
    if (q->order && !asc && strcmp(q->order, "desc")) {
        rfail(e, "order", "'order' must be \"asc\" or \"desc\"");
        return NULL;
    }
    int lo = 0, hi = n; /* the window of positions (in the asked order) after / before allow */
    const char *cursor[2] = {q->after, q->before};
    for (int k = 0; k < 2; k++) {
        if (!cursor[k]) continue;
        const int at = item_index(list, n, cursor[k]);
        if (at < 0) {
            rfail(e, k ? "before" : "after", "no item '%.100s' among %s", cursor[k], what);
            return NULL;
        }
        const int pos = asc ? at : n - 1 - at;
        if (k == 0)
            lo = QV_MAX(lo, pos + 1);
        else
            hi = QV_MIN(hi, pos);
    }
    cJSON *page = cJSON_CreateObject(), *data = NULL;
    char *text = NULL;
    if (!page || !cJSON_AddStringToObject(page, "object", "list") ||
        !(data = cJSON_AddArrayToObject(page, "data")))
        goto done;
    const int end = (int)QV_MIN((long)hi, lo + limit);
    for (int pos = lo; pos < end; pos++) {
        const cJSON *it = cJSON_GetArrayItem(list, asc ? pos : n - 1 - pos);
        if (!cJSON_AddItemToArray(data, cJSON_Duplicate(it, true))) goto done;
    }
    const cJSON *first = qv__proto_field(cJSON_GetArrayItem(data, 0), "id");
    const cJSON *last = qv__proto_field(cJSON_GetArrayItem(data, end - lo - 1), "id");
    if (qv__proto_put_item(page, "first_id",
                           cJSON_IsString(first) ? cJSON_CreateString(first->valuestring)
                                                 : cJSON_CreateNull()) &&
        qv__proto_put_item(page, "last_id",
                           cJSON_IsString(last) ? cJSON_CreateString(last->valuestring)
                                                : cJSON_CreateNull()) &&
        cJSON_AddBoolToObject(page, "has_more", end < hi))
        text = cJSON_PrintUnformatted(page);
done:
    cJSON_Delete(page);
    if (!text) qv__proto_nomem(e);
    return text;
}

char *qv_proto_response_input_items(const char *response, const char *items,
                                    const qv_proto_items_query *q, qv_proto_error *e) {
    cJSON *r = cJSON_Parse(response ? response : ""), *list = cJSON_Parse(items ? items : "");
    const cJSON *output = r ? qv__proto_field(r, "output") : NULL;
    char *text = NULL;
    if (!cJSON_IsArray(list) || !cJSON_IsArray(output)) /* the records are this file's JSON */
        qv__proto_nomem(e);                             /* so only memory can fail */
    else /* the conversation up to this response's own output */
        text = items_page(list, QV_MAX(cJSON_GetArraySize(list) - cJSON_GetArraySize(output), 0), q,
                          "this response's input items", e);
    cJSON_Delete(r);
    cJSON_Delete(list);
    return text;
}

char *qv_proto_response_input_tokens(size_t n) {
    cJSON *o = cJSON_CreateObject();
    char *s = o && cJSON_AddStringToObject(o, "object", "response.input_tokens") &&
                      cJSON_AddNumberToObject(o, "input_tokens", (double)n)
                  ? cJSON_PrintUnformatted(o)
                  : NULL;
    cJSON_Delete(o);
    return s;
}

/* {"id", "object": object, "deleted": true}: what a DELETE answers. */
static char *deleted_obj(const char *id, const char *object) {
    cJSON *o = cJSON_CreateObject();
    char *s = o && cJSON_AddStringToObject(o, "id", id) &&
                      cJSON_AddStringToObject(o, "object", object) &&
                      cJSON_AddTrueToObject(o, "deleted")
                  ? cJSON_PrintUnformatted(o)
                  : NULL;
    cJSON_Delete(o);
    return s;
}

char *qv_proto_response_deleted(const char *id) { return deleted_obj(id, "response"); }

/* ---- the Conversations API ---- */

/* The conversation object {"id", "object": "conversation", "created_at", "metadata"}. */
static cJSON *conversation_obj(const char *id, int64_t created, const cJSON *metadata) {
    cJSON *o = cJSON_CreateObject();
    if (o && cJSON_AddStringToObject(o, "id", id) &&
        cJSON_AddStringToObject(o, "object", "conversation") &&
        cJSON_AddNumberToObject(o, "created_at", (double)created) &&
        (metadata ? put_copy(o, "metadata", metadata)
                  : cJSON_AddObjectToObject(o, "metadata") != NULL))
        return o;
    cJSON_Delete(o);
    return NULL;
}

/* A body's `items` (at most 20, each readable as input) in the API's shape, with ids made of
 * nonce and their place: a JSON array, or NULL with *e set. Absent items: an empty list when
 * optional. */
static cJSON *new_items(const cJSON *root, bool optional, const char *nonce, qv_proto_error *e) {
    const cJSON *list = qv__proto_field(root, "items");
    if (!list && optional) {
        cJSON *none = cJSON_CreateArray();
        if (!none) qv__proto_nomem(e);
        return none;
    }
    if (!cJSON_IsArray(list) || (!optional && !cJSON_GetArraySize(list)) ||
        cJSON_GetArraySize(list) > 20) {
        rfail(e, "items", "'items' must be a list of 1 to 20 items");
        return NULL;
    }
    cJSON *msgs = cJSON_CreateArray(), *out = cJSON_Duplicate(list, true);
    if (!msgs || !out) {
        qv__proto_nomem(e);
        goto fail;
    }
    int i = 0;
    cJSON *it;
    cJSON_ArrayForEach(it, out) {
        char param[32];
        snprintf(param, sizeof(param), "items[%d]", i);
        if (item_messages(msgs, it, param, e)) goto fail; /* readable as a request's input */
        if (!canonical_item(it, nonce, i++)) {
            qv__proto_nomem(e);
            goto fail;
        }
    }
    cJSON_Delete(msgs);
    return out;
fail:
    cJSON_Delete(msgs);
    cJSON_Delete(out);
    return NULL;
}

/* The body of a Conversations API POST: a JSON object, or NULL with *e set. */
static cJSON *conv_body(const char *body, size_t len, qv_proto_error *e) {
    memset(e, 0, sizeof(*e));
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root)
        rfail(e, NULL, "the request body is not valid JSON");
    else if (!cJSON_IsObject(root)) {
        rfail(e, NULL, "the request body must be a JSON object");
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

qv_status qv_proto_conversation_create(const char *body, size_t len, const char *id,
                                       int64_t created, const char *nonce, char **conv,
                                       char **items, qv_proto_error *e) {
    *conv = *items = NULL;
    cJSON *root = conv_body(body, len, e), *list = NULL, *o = NULL;
    const cJSON *meta = root ? qv__proto_field(root, "metadata") : NULL;
    if (root && (!meta || !check_metadata(meta, e)) && (list = new_items(root, true, nonce, e))) {
        if (!(o = conversation_obj(id, created, meta)) || !(*conv = cJSON_PrintUnformatted(o)) ||
            !(*items = cJSON_PrintUnformatted(list))) {
            qv_free(*conv);
            *conv = NULL;
            qv__proto_nomem(e);
        }
    }
    cJSON_Delete(root);
    cJSON_Delete(list);
    cJSON_Delete(o);
    return *conv ? QV_OK : e->status;
}

qv_status qv_proto_conversation_update(const char *body, size_t len, const char *conv, char **out,
                                       qv_proto_error *e) {
    *out = NULL;
    cJSON *root = conv_body(body, len, e), *o = NULL;
    const cJSON *meta = root ? qv__proto_field(root, "metadata") : NULL;
    if (root && !meta) rfail(e, "metadata", "'metadata' is required");
    if (meta && !check_metadata(meta, e)) {
        if (!(o = cJSON_Parse(conv)) ||
            !cJSON_ReplaceItemInObjectCaseSensitive(o, "metadata", cJSON_Duplicate(meta, true)) ||
            !(*out = cJSON_PrintUnformatted(o)))
            qv__proto_nomem(e);
    }
    cJSON_Delete(root);
    cJSON_Delete(o);
    return *out ? QV_OK : e->status;
}

qv_status qv_proto_conversation_add(const char *body, size_t len, const char *nonce, char **added,
                                    qv_proto_error *e) {
    *added = NULL;
    cJSON *root = conv_body(body, len, e), *list = NULL;
    if (root && (list = new_items(root, false, nonce, e)) &&
        !(*added = cJSON_PrintUnformatted(list)))
        qv__proto_nomem(e);
    cJSON_Delete(root);
    cJSON_Delete(list);
    return *added ? QV_OK : e->status;
}

char *qv_proto_items_join(const char *items, const char *more, size_t from) {
    cJSON *a = cJSON_Parse(items), *b = cJSON_Parse(more);
    char *text = NULL;
    bool ok = cJSON_IsArray(a) && cJSON_IsArray(b);
    for (int i = (int)from; ok && i < cJSON_GetArraySize(b); i++)
        ok = cJSON_AddItemToArray(a, cJSON_Duplicate(cJSON_GetArrayItem(b, i), true));
    if (ok) text = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    cJSON_Delete(b);
    return text;
}

char *qv_proto_items_find(const char *items, const char *item_id, bool remove, bool *found) {
    cJSON *list = cJSON_Parse(items);
    char *text = NULL;
    /* items are this file's JSON: a parse can only fail for memory, which is no "not found" */
    const int at = cJSON_IsArray(list) ? item_index(list, cJSON_GetArraySize(list), item_id) : -1;
    *found = at >= 0 || !list;
    if (at >= 0) {
        if (remove) cJSON_DeleteItemFromArray(list, at);
        text = cJSON_PrintUnformatted(remove ? list : cJSON_GetArrayItem(list, at));
    }
    cJSON_Delete(list);
    return text;
}

char *qv_proto_conversation_items(const char *items, const qv_proto_items_query *q,
                                  qv_proto_error *e) {
    memset(e, 0, sizeof(*e));
    cJSON *list = cJSON_Parse(items ? items : "");
    char *text = cJSON_IsArray(list)
                     ? items_page(list, cJSON_GetArraySize(list), q, "this conversation's items", e)
                     : (qv__proto_nomem(e), NULL);
    cJSON_Delete(list);
    return text;
}

char *qv_proto_conversation_deleted(const char *id) {
    return deleted_obj(id, "conversation.deleted");
}

bool qv_proto_responses_conversation(const char *body, size_t len, char *id, size_t cap) {
    return body_id(body, len, "conversation", id, cap);
}

/* ---- streaming ---- */

typedef struct evbuf {
    char *p;
    size_t len, cap;
    bool oom;
} evbuf;

static void ev_put(evbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = qv_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* Appends event `type` with payload o (taken; NULL: out of memory), which gets its "type" and
 * "sequence_number". */
static void ev(evbuf *b, qv_proto_response_stream *st, const char *type, cJSON *o) {
    char *json = NULL;
    if (o && cJSON_AddStringToObject(o, "type", type) &&
        cJSON_AddNumberToObject(o, "sequence_number", st->seq))
        json = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!json) {
        b->oom = true;
        return;
    }
    st->seq++;
    ev_put(b, "event: ", 7);
    ev_put(b, type, strlen(type));
    ev_put(b, "\ndata: ", 7);
    ev_put(b, json, strlen(json));
    ev_put(b, "\n\n", 2);
    cJSON_free(json);
}

/* {"<key>": item (taken)} plus output_index, and for message events item_id / content_index. */
static cJSON *ev_obj(const char *key, cJSON *item, int output_index, const char *item_id,
                     bool content_index) {
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        cJSON_Delete(item);
        return NULL;
    }
    if ((!key || qv__proto_put_item(o, key, item)) &&
        cJSON_AddNumberToObject(o, "output_index", output_index) &&
        (!item_id || cJSON_AddStringToObject(o, "item_id", item_id)) &&
        (!content_index || cJSON_AddNumberToObject(o, "content_index", 0)))
        return o;
    cJSON_Delete(o);
    return NULL;
}

static char *ev_done(evbuf *b, size_t *len) {
    if (b->oom) {
        qv_free(b->p);
        return NULL;
    }
    if (!b->p) b->p = qv_strdup("");
    *len = b->len;
    return b->p;
}

/* The message's closing events over text[0..len) (its logprobs: all of o's so far). */
static void message_close(evbuf *b, qv_proto_response_stream *st, const qv_proto_response_out *o,
                          const char *mid, size_t len, const char *status) {
    const size_t n_lps = o->logprobs ? o->n_lps : 0;
    const int at = st->msg_index;
    cJSON *d = ev_obj(NULL, NULL, at, mid, true);
    if (d && (!qv__proto_add_text(d, "text", o->text, len) ||
              !qv__proto_put_item(d, "logprobs", qv__proto_logprobs_list(o->lps, n_lps)))) {
        cJSON_Delete(d);
        d = NULL;
    }
    ev(b, st, "response.output_text.done", d);
    ev(b, st, "response.content_part.done",
       ev_obj("part", text_part(o->text, len, o->lps, n_lps), at, mid, true));
    qv_proto_response_out whole = *o;
    whole.text_len = len;
    ev(b, st, "response.output_item.done",
       ev_obj("item", message_item(&whole, status, true), at, NULL, false));
    st->msg_done = true;
}

/* Call i's events from what st says was sent: its item (added once), its new argument bytes
 * (when they continue those sent), and once `whole` its .done events. */
static void call_events(evbuf *b, qv_proto_response_stream *st, const qv_proto_response_out *o,
                        size_t i, bool whole) {
    char fid[128];
    snprintf(fid, sizeof(fid), "fc_%s_%zu", suffix_of(o), i);
    const char *args = o->calls[i].arguments ? o->calls[i].arguments : "";
    const size_t n = strlen(args);
    if (!st->calls_open) st->call_base = st->msg_open ? 1 : 0;
    const int at = st->call_base + (int)i;
    if ((int)i >= st->calls_open) {
        ev(b, st, "response.output_item.added",
           ev_obj("item", call_item(o, i, false), at, NULL, false));
        st->calls_open = (int)i + 1;
        st->args_sent = 0;
    }
    if (n > st->args_sent && (!st->args_sent || !strncmp(args, st->args, st->args_sent))) {
        cJSON *d = ev_obj(NULL, NULL, at, fid, false);
        if (d && !qv__proto_add_text(d, "delta", args + st->args_sent, n - st->args_sent)) {
            cJSON_Delete(d);
            d = NULL;
        }
        ev(b, st, "response.function_call_arguments.delta", d);
        char *copy = qv_strdup(args);
        if (!copy) b->oom = true;
        qv_free(st->args);
        st->args = copy;
        st->args_sent = n;
    }
    if (!whole) return;
    cJSON *d = ev_obj(NULL, NULL, at, fid, false);
    if (d && (!cJSON_AddStringToObject(d, "arguments", args) ||
              !cJSON_AddStringToObject(d, "name", o->calls[i].name ? o->calls[i].name : ""))) {
        cJSON_Delete(d);
        d = NULL;
    }
    ev(b, st, "response.function_call_arguments.done", d);
    ev(b, st, "response.output_item.done", ev_obj("item", call_item(o, i, true), at, NULL, false));
    st->calls_done = (int)i + 1;
}

char *qv_proto_response_events(qv_proto_response_stream *st, const qv_proto_response_out *o,
                               size_t *len) {
    evbuf b = {0};
    *len = 0;
    if (st->finished) return ev_done(&b, len);
    if (!st->started) {
        ev(&b, st, "response.created", ev_obj("response", response_obj(o, false), 0, NULL, false));
        if (is_queued(o))
            ev(&b, st, "response.queued",
               ev_obj("response", response_obj(o, false), 0, NULL, false));
        st->started = true;
    }
    if (is_queued(o)) return ev_done(&b, len); /* nothing more happens before it starts */
    /* a background response cancelled (or failed) before its first event never showed as
       started: it goes from queued to its end */
    if (!st->in_progress && !ended_early(o)) {
        qv_proto_response_out running = *o;
        running.status = NULL; /* whatever it is now, this event says it has started */
        ev(&b, st, "response.in_progress",
           ev_obj("response", response_obj(&running, false), 0, NULL, false));
        st->in_progress = true;
    }
    char mid[128];
    snprintf(mid, sizeof(mid), "msg_%s", suffix_of(o));
    const bool more_text =
        !st->msg_done && (o->text_len > st->text_sent || (o->logprobs && o->n_lps > st->lps_sent));
    if (!st->msg_open && (more_text || (o->done && has_message(o)))) {
        st->msg_index = st->calls_open; /* after the calls only when they came first */
        ev(&b, st, "response.output_item.added",
           ev_obj("item", message_item(o, "in_progress", false), st->msg_index, NULL, false));
        ev(&b, st, "response.content_part.added",
           ev_obj("part", text_part("", 0, NULL, 0), st->msg_index, mid, true));
        st->msg_open = true;
    }
    if (more_text) {
        cJSON *d = ev_obj(NULL, NULL, st->msg_index, mid, true);
        if (d && (!qv__proto_add_text(d, "delta", o->text + st->text_sent,
                                      o->text_len - st->text_sent) ||
                  !qv__proto_put_item(
                      d, "logprobs",
                      qv__proto_logprobs_list(o->lps + st->lps_sent,
                                              o->logprobs ? o->n_lps - st->lps_sent : 0)))) {
            cJSON_Delete(d);
            d = NULL;
        }
        ev(&b, st, "response.output_text.delta", d);
        st->text_sent = o->text_len;
        if (o->logprobs) st->lps_sent = o->n_lps;
    }
    const char *status = status_of(o);
    /* the message ends where the calls begin, or with the answer */
    if (st->msg_open && !st->msg_done && (o->n_calls || o->done))
        message_close(&b, st, o, mid, o->done ? o->text_len : st->text_sent,
                      o->done ? item_status(status) : "completed");
    for (size_t i = (size_t)st->calls_done; i < o->n_calls; i++)
        call_events(&b, st, o, i, o->done || i + 1 < o->n_calls);
    if (o->done) {
        for (int i = st->calls_done; i < st->calls_open; i++) { /* begun, then not a call */
            char fid[128];
            snprintf(fid, sizeof(fid), "fc_%s_%d", suffix_of(o), i);
            cJSON *item = cJSON_CreateObject();
            if (item && (!cJSON_AddStringToObject(item, "id", fid) ||
                         !cJSON_AddStringToObject(item, "type", "function_call") ||
                         !cJSON_AddStringToObject(item, "status", "incomplete"))) {
                cJSON_Delete(item);
                item = NULL;
            }
            ev(&b, st, "response.output_item.done",
               ev_obj("item", item, st->call_base + i, NULL, false));
        }
        cJSON *r = cJSON_CreateObject();
        if (r && !qv__proto_put_item(r, "response", response_obj(o, true))) {
            cJSON_Delete(r);
            r = NULL;
        }
        char type[48]; /* response.completed, .incomplete, .cancelled (a background one's) */
        snprintf(type, sizeof(type), "response.%s", status);
        ev(&b, st, type, r);
        st->finished = true;
        qv_proto_response_stream_free(st);
    }
    return ev_done(&b, len);
}

char *qv_proto_response_error_event(qv_proto_response_stream *st, const char *code,
                                    const char *message, size_t *len) {
    evbuf b = {0};
    *len = 0;
    cJSON *o = cJSON_CreateObject();
    if (o &&
        (!(code ? cJSON_AddStringToObject(o, "code", code) : cJSON_AddNullToObject(o, "code")) ||
         !cJSON_AddStringToObject(o, "message", message ? message : "") ||
         !cJSON_AddNullToObject(o, "param"))) {
        cJSON_Delete(o);
        o = NULL;
    }
    ev(&b, st, "error", o);
    st->finished = true;
    qv_proto_response_stream_free(st);
    return ev_done(&b, len);
}

void qv_proto_response_stream_free(qv_proto_response_stream *st) {
    qv_free(st->args);
    st->args = NULL;
}
