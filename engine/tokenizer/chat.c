/*
 * chat.c - chat templates by detection and formatting (TOKENIZER.md section 7): the family is
 * detected from substrings of the Jinja source (llama.cpp's approach) and the prompt is built by
 * C code; there is no Jinja interpreter.
 *
 * Formats:
 *  - chatml: <|im_start|>{role}\n{content}<|im_end|>\n per message, plus the template's default
 *    system prompt (SmolLM2, Qwen2/2.5) when the first message is not a system message.
 *  - llama3: bos + <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>.
 *  - llama3.1, llama3.2: Meta's Llama 3.1 / 3.2 templates (also 3.3's): the same turns after a
 *    system turn that is always there ("Cutting Knowledge Date: December 2023", "Today Date:"
 *    26 Jul 2024 for 3.1, today's date for 3.2 (strftime_now)), the tools in the first user turn
 *    (tojson(indent=4)), a call as {"name": ..., "parameters": ...}, tool results as ipython
 *    turns; builtin_tools (brave_search, ...) are not used by the OpenAI API and not rendered.
 *  - mistral-v0.3: Mistral-7B-Instruct-v0.3's template with tools: the system message joins
 *    the last message when that is a user turn ("[INST] {system}\n\n{user}[/INST]", else it is
 *    dropped), the tools ([AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]) go before the last user
 *    turn, calls as [TOOL_CALLS] [{"name", "arguments", "id"}]</s>, results as
 *    [TOOL_RESULTS] {"content": ..., "call_id": ...}[/TOOL_RESULTS]; ids must be 9 characters.
 *  - mistral-nemo: Mistral-Nemo-Instruct-2407's: the same without the space after [INST],
 *    [AVAILABLE_TOOLS], [TOOL_CALLS] and [TOOL_RESULTS], the assistant's content as it is.
 *  - llama2-chat: the official Llama-2-chat HF template (<<SYS>> in the first user turn, bos
 *    before every [INST], stripped contents, " {assistant} </s>").
 *  - llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip, mistral-v1, mistral-v3,
 *    mistral-v3-tekken, mistral-v7, mistral-v7-tekken: llama.cpp's formats (llama-chat.cpp),
 *    with the BOS text in front because quiver tokenizes the rendered prompt with
 *    add_special_tokens=false. The official Mistral-7B-Instruct v0.1/v0.2 template renders
 *    exactly like "llama2" with BOS.
 * Only the families above are supported; anything else is refused with a clear error. ChatML
 * and Llama 3 write any role's name (a "tool" message's too); the [INST] families refuse roles
 * other than system, user and assistant.
 * Thread: pure functions of their inputs (and of today's local date for Llama 3.2 when the
 * caller gives none).
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "json_text.h"
#include "tok_internal.h"

enum fam {
    F_NONE = 0,
    F_CHATML,
    F_QWEN25,
    F_LLAMA3,
    F_LLAMA31,
    F_LLAMA32,
    F_LLAMA2_CHAT,
    F_LLAMA2,
    F_LLAMA2_SYS,
    F_LLAMA2_SYS_BOS,
    F_LLAMA2_SYS_STRIP,
    F_MISTRAL_V1,
    F_MISTRAL_V3,
    F_MISTRAL_V3_TEKKEN,
    F_MISTRAL_V7,
    F_MISTRAL_V7_TEKKEN,
    F_MISTRAL_V03,
    F_MISTRAL_NEMO,
};

static const struct {
    const char *name;
    enum fam f;
} k_names[] = {
    {"chatml", F_CHATML},
    {"qwen2.5", F_QWEN25},
    {"llama3", F_LLAMA3},
    {"llama3.1", F_LLAMA31},
    {"llama3.2", F_LLAMA32},
    {"llama2-chat", F_LLAMA2_CHAT},
    {"llama2", F_LLAMA2},
    {"llama2-sys", F_LLAMA2_SYS},
    {"llama2-sys-bos", F_LLAMA2_SYS_BOS},
    {"llama2-sys-strip", F_LLAMA2_SYS_STRIP},
    {"mistral-v1", F_MISTRAL_V1},
    {"mistral-v3", F_MISTRAL_V3},
    {"mistral-v3-tekken", F_MISTRAL_V3_TEKKEN},
    {"mistral-v7", F_MISTRAL_V7},
    {"mistral-v7-tekken", F_MISTRAL_V7_TEKKEN},
    {"mistral-v0.3", F_MISTRAL_V03},
    {"mistral-nemo", F_MISTRAL_NEMO},
};

static const char *fam_name(enum fam f) {
    for (size_t i = 0; i < QV_ARRAY_LEN(k_names); i++)
        if (k_names[i].f == f) return k_names[i].name;
    return NULL;
}

static bool has(const char *t, const char *s) { return strstr(t, s) != NULL; }

/* Qwen2.5-Instruct's template (TOKENIZER.md 7.2): its default system prompt and the text
 * around the tools in the system turn. */
#define QWEN_SYSTEM "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
#define QWEN_TOOLS_LEAD "You may call one or more functions to assist with the user query."
static const char k_qwen_tools_head[] =
    "\n\n# Tools\n\n" QWEN_TOOLS_LEAD "\n\nYou are provided with function signatures within "
    "<tools></tools> XML tags:\n<tools>";
static const char k_qwen_tools_tail[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

static enum fam detect(const char *t) {
    if (!t || !*t) return F_NONE;
    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>") || has(t, "<end_of_utterance>")) return F_NONE;
        /* Qwen2.5's tool instructions: the template writes tools, calls and results */
        if (has(t, "<tool_call>") && has(t, QWEN_TOOLS_LEAD)) return F_QWEN25;
        return F_CHATML;
    }
    if (!strncmp(t, "mistral", 7) || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]")) return F_MISTRAL_V7;
        /* Mistral-7B-Instruct-v0.3's and Mistral-Nemo-Instruct-2407's own templates: tools,
         * call ids, the system in the last turn; Nemo's without the spaces */
        if (has(t, "[AVAILABLE_TOOLS]") && has(t, "[TOOL_RESULTS]") && has(t, "call_id")) {
            if (has(t, "\"[INST] \" + system_message")) return F_MISTRAL_V03;
            if (has(t, "\"[INST]\" + system_message") && has(t, "\"[TOOL_CALLS][\"") &&
                has(t, "message[\"content\"] + eos_token"))
                return F_MISTRAL_NEMO;
        }
        if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]")) return F_MISTRAL_V1;
            if (has(t, "\"[INST]\"")) return F_MISTRAL_V3_TEKKEN;
            return F_MISTRAL_V3;
        }
        bool sys = has(t, "<<SYS>>");
        bool bos = has(t, "bos_token + '[INST]");
        bool strip = has(t, "content.strip()");
        if (sys && bos && strip && has(t, "' '  + content.strip() + ' ' + eos_token"))
            return F_LLAMA2_CHAT;
        if (!sys) return F_LLAMA2;
        if (bos) return F_LLAMA2_SYS_BOS;
        if (strip) return F_LLAMA2_SYS_STRIP;
        return F_LLAMA2_SYS;
    }
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) {
        /* 3.1 / 3.3 print a fixed date, 3.2 today's */
        if (has(t, "Cutting Knowledge Date")) return has(t, "strftime_now") ? F_LLAMA32 : F_LLAMA31;
        return F_LLAMA3;
    }
    return F_NONE;
}

const char *qv_chat_detect(const qv_tokenizer *t) { return fam_name(detect(t->chat_template)); }

/* Appends Python's json.dumps of the JSON text s[0..n) (compact: separators "," and ":"). */
static qv_status put_py_json(qv__buf *b, const char *s, size_t n, bool compact) {
    char *txt = NULL;
    size_t len = 0;
    qv_status st = qv_json_py_dumps(s, n, compact, &txt, &len);
    if (!st) st = qv__buf_put(b, txt, len);
    qv_free(txt);
    return st;
}

/* Python str.isspace (Jinja trim / str.strip): White_Space plus U+001C..U+001F. */
static bool py_space(uint32_t cp) { return qv__uc_is_whitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

static void strip(const char *s, size_t n, size_t *a, size_t *b) {
    size_t i = 0, j = n;
    while (i < n) {
        uint32_t cp;
        size_t k = qv__utf8_decode(s + i, n - i, &cp);
        if (!k || !py_space(cp)) break;
        i += k;
    }
    while (j > i) {
        size_t p = j - 1;
        while (p > i && ((uint8_t)s[p] & 0xC0) == 0x80)
            p--;
        uint32_t cp;
        size_t k = qv__utf8_decode(s + p, j - p, &cp);
        if (!k || !py_space(cp)) break;
        j = p;
    }
    *a = i;
    *b = j;
}

static qv_status puts_(qv__buf *b, const char *s) { return qv__buf_put(b, s, s ? strlen(s) : 0); }

static qv_status put_stripped(qv__buf *b, const char *s) {
    size_t a, e;
    strip(s, strlen(s), &a, &e);
    return qv__buf_put(b, s + a, e - a);
}

/* The default system prompt a ChatML template emits when the conversation has none: the text
 * of a string literal "<|im_start|>system\n...<|im_end|>" (newline written raw or as \n). */
static qv_status default_system(const char *tmpl, qv__buf *out, bool *found) {
    *found = false;
    const char *key = "<|im_start|>system";
    for (const char *p = strstr(tmpl, key); p; p = strstr(p + 1, key)) {
        const char *q = p + strlen(key);
        if (*q == '\n')
            q++;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *e = strstr(q, "<|im_end|>");
        if (!e) continue;
        bool literal = e > q;
        for (const char *c = q; c < e; c++)
            if (*c == '\'' || *c == '"' || *c == '{' || *c == '}' || *c == '+') literal = false;
        if (!literal) continue;
        out->len = 0;
        for (const char *c = q; c < e; c++) {
            qv_status st;
            if (c[0] == '\\' && c + 1 < e) {
                char d = c[1];
                st = qv__buf_putc(out, d == 'n' ? '\n' : d == 't' ? '\t' : d);
                c++;
            } else {
                st = qv__buf_putc(out, *c);
            }
            if (st) return st;
        }
        *found = true;
        return QV_OK;
    }
    return QV_OK;
}

static bool is_role(const qv_chat_msg *m, const char *r) { return m->role && !strcmp(m->role, r); }

static qv_status render_llama2_chat(const qv_tokenizer *t, const qv_chat_msg *m, size_t n,
                                    qv__buf *b, qv_error *err) {
    size_t start = 0;
    const char *sys = NULL;
    qv_status st = QV_OK;
    if (n > 0 && is_role(&m[0], "system")) {
        sys = m[0].content;
        start = 1;
    }
    for (size_t i = start; i < n && !st; i++) {
        size_t k = i - start;
        if (is_role(&m[i], "user") != (k % 2 == 0))
            return qv_errorf(err, QV_ERR_INVALID,
                             "Conversation roles must alternate user/assistant/user/assistant/...");
        qv__buf content = {0};
        if (k == 0 && sys) {
            st = puts_(&content, "<<SYS>>\n");
            if (!st) st = puts_(&content, sys);
            if (!st) st = puts_(&content, "\n<</SYS>>\n\n");
        }
        if (!st) st = puts_(&content, m[i].content);
        if (!st && is_role(&m[i], "user")) {
            st = puts_(b, t->bos_text);
            if (!st) st = puts_(b, "[INST] ");
            if (!st) st = put_stripped(b, content.p ? content.p : "");
            if (!st) st = puts_(b, " [/INST]");
        } else if (!st && is_role(&m[i], "assistant")) {
            st = puts_(b, " ");
            if (!st) st = put_stripped(b, content.p ? content.p : "");
            if (!st) st = puts_(b, " ");
            if (!st) st = puts_(b, t->eos_text);
        }
        qv__buf_free(&content);
    }
    return st;
}

static qv_status render_llama2_cpp(const qv_tokenizer *t, enum fam f, const qv_chat_msg *m,
                                   size_t n, qv__buf *b) {
    bool sys_ok = f != F_LLAMA2, bos_hist = f == F_LLAMA2_SYS_BOS,
         strip_msg = f == F_LLAMA2_SYS_STRIP;
    bool inside = true;
    qv_status st = puts_(b, t->bos_text);
    if (n == 0) return st;
    if (!st) st = puts_(b, "[INST] ");
    for (size_t i = 0; i < n && !st; i++) {
        if (!inside) {
            inside = true;
            if (bos_hist) st = puts_(b, t->bos_text);
            if (!st) st = puts_(b, "[INST] ");
        }
        if (st) break;
        const char *c = m[i].content;
        qv__buf stripped = {0};
        if (strip_msg) {
            if ((st = put_stripped(&stripped, c))) break;
            c = stripped.p ? stripped.p : "";
        }
        if (is_role(&m[i], "system")) {
            if (sys_ok) {
                st = puts_(b, "<<SYS>>\n");
                if (!st) st = puts_(b, c);
                if (!st) st = puts_(b, "\n<</SYS>>\n\n");
            } else {
                st = puts_(b, c);
                if (!st) st = puts_(b, "\n");
            }
        } else if (is_role(&m[i], "user")) {
            st = puts_(b, c);
            if (!st) st = puts_(b, " [/INST]");
        } else {
            st = puts_(b, c);
            if (!st) st = puts_(b, t->eos_text ? t->eos_text : "</s>");
            inside = false;
        }
        qv__buf_free(&stripped);
    }
    return st;
}

static qv_status render_mistral(const qv_tokenizer *t, enum fam f, const qv_chat_msg *m, size_t n,
                                qv__buf *b) {
    qv_status st = puts_(b, t->bos_text);
    const char *eos = t->eos_text ? t->eos_text : "</s>";
    if (f == F_MISTRAL_V7 || f == F_MISTRAL_V7_TEKKEN) {
        const char *sp = f == F_MISTRAL_V7 ? " " : "";
        for (size_t i = 0; i < n && !st; i++) {
            if (is_role(&m[i], "system")) {
                st = puts_(b, "[SYSTEM_PROMPT]");
                if (!st) st = puts_(b, sp);
                if (!st) st = puts_(b, m[i].content);
                if (!st) st = puts_(b, "[/SYSTEM_PROMPT]");
            } else if (is_role(&m[i], "user")) {
                st = puts_(b, "[INST]");
                if (!st) st = puts_(b, sp);
                if (!st) st = puts_(b, m[i].content);
                if (!st) st = puts_(b, "[/INST]");
            } else {
                st = puts_(b, sp);
                if (!st) st = puts_(b, m[i].content);
                if (!st) st = puts_(b, eos);
            }
        }
        return st;
    }
    const char *lead = f == F_MISTRAL_V1 ? " " : "";
    const char *trail = f == F_MISTRAL_V3_TEKKEN ? "" : " ";
    bool trim_asst = f == F_MISTRAL_V3, inside = false;
    for (size_t i = 0; i < n && !st; i++) {
        if (!inside) {
            st = puts_(b, lead);
            if (!st) st = puts_(b, "[INST]");
            if (!st) st = puts_(b, trail);
            inside = true;
        }
        if (st) break;
        if (is_role(&m[i], "system")) {
            st = puts_(b, m[i].content);
            if (!st) st = puts_(b, "\n\n");
        } else if (is_role(&m[i], "user")) {
            st = puts_(b, m[i].content);
            if (!st) st = puts_(b, lead);
            if (!st) st = puts_(b, "[/INST]");
        } else {
            st = puts_(b, trail);
            if (!st) st = trim_asst ? put_stripped(b, m[i].content) : puts_(b, m[i].content);
            if (!st) st = puts_(b, eos);
            inside = false;
        }
    }
    return st;
}

/* The spans of the items of the JSON list text[0..len) (object: of its members' values): *k of
 * them, *off (qv_free; NULL when none) their offsets followed by their lengths. */
static qv_status spans(const char *text, size_t len, bool object, size_t **off, size_t *k) {
    size_t (*const f)(const char *, size_t, size_t *, size_t *, size_t) =
        object ? qv_json_object_values : qv_json_list_items;
    *off = NULL;
    *k = f(text, len, NULL, NULL, 0);
    if (*k == SIZE_MAX) return QV_ERR_INVALID;
    if (!*k) return QV_OK;
    if (!(*off = qv_malloc(2 * *k * sizeof(size_t)))) return QV_ERR_NOMEM;
    f(text, len, *off, *off + *k, *k);
    return QV_OK;
}

/* Appends each tool of the JSON list tools[0..len) as `tool | tojson` (indent < 0) or
 * `tool | tojson(indent=...)` writes it, each after `before` and followed by `after`. */
static qv_status put_tools(qv__buf *b, const char *tools, size_t len, int indent,
                           const char *before, const char *after) {
    size_t *off = NULL, k = 0;
    qv_status st = spans(tools, len, false, &off, &k);
    for (size_t i = 0; i < k && !st; i++) {
        st = puts_(b, before);
        if (st) break;
        if (indent < 0) {
            st = put_py_json(b, tools + off[i], off[k + i], false);
        } else {
            char *txt = NULL;
            size_t n = 0;
            st = qv_json_py_dumps_indent(tools + off[i], off[k + i], indent, &txt, &n);
            if (!st) st = qv__buf_put(b, txt, n);
            qv_free(txt);
        }
        if (!st) st = puts_(b, after);
    }
    qv_free(off);
    return st;
}

/* Jinja's `length` of a string: its code points. */
static size_t utf8_chars(const char *s) {
    size_t n = 0;
    for (; *s; s++)
        n += ((uint8_t)*s & 0xC0) != 0x80;
    return n;
}

/* Jinja's == of two message dicts, over what a qv_chat_msg holds. */
static bool same_msg(const qv_chat_msg *a, const qv_chat_msg *b) {
    return !strcmp(a->role, b->role) && !strcmp(a->content, b->content) && !a->n_calls &&
           !b->n_calls && !a->tool_call_id == !b->tool_call_id &&
           (!a->tool_call_id || !strcmp(a->tool_call_id, b->tool_call_id));
}

/* The raw text of member i of the JSON object text[0..len) (cJSON's i-th child), or false. */
static bool member_at(const char *text, size_t len, size_t i, size_t *off, size_t *n) {
    size_t *o = NULL, k = 0;
    if (spans(text, len, true, &o, &k) || i >= k) {
        qv_free(o);
        return false;
    }
    *off = o[i];
    *n = o[k + i];
    qv_free(o);
    return true;
}

/* Tool i's "function" member (text ft[0..fn)) written as Mistral v0.3's template does: each
 * member but "return" as "key": "value" when a string (raw: the template concatenates) and
 * "key": tojson otherwise. */
static qv_status put_mistral_function(qv__buf *b, const cJSON *f, const char *ft, size_t fn) {
    size_t *off = NULL, k = 0;
    qv_status st = spans(ft, fn, true, &off, &k);
    if (!st) st = puts_(b, "{\"type\": \"function\", \"function\": {");
    size_t i = 0;
    bool first = true;
    for (const cJSON *m = f->child; m && i < k && !st; m = m->next, i++) {
        if (!strcmp(m->string, "return")) continue;
        if (!first) st = puts_(b, ", ");
        first = false;
        if (!st) st = puts_(b, "\"");
        if (!st) st = puts_(b, m->string);
        if (cJSON_IsString(m)) {
            if (!st) st = puts_(b, "\": \"");
            if (!st) st = puts_(b, m->valuestring);
            if (!st) st = puts_(b, "\"");
        } else {
            if (!st) st = puts_(b, "\": ");
            if (!st) st = put_py_json(b, ft + off[i], off[k + i], false);
        }
    }
    qv_free(off);
    if (!st) st = puts_(b, "}}");
    return st;
}

/* Mistral v0.3's tools: [AVAILABLE_TOOLS] [{"type": "function", "function": {...}}, ...]
 * [/AVAILABLE_TOOLS] (`sp` after the first marker: " ", or "" for Nemo). */
static qv_status put_mistral_tools(qv__buf *b, const char *tools, size_t len, const char *sp) {
    size_t *off = NULL, k = 0;
    qv_status st = spans(tools, len, false, &off, &k);
    if (!st) st = puts_(b, "[AVAILABLE_TOOLS]");
    if (!st) st = puts_(b, sp);
    if (!st) st = puts_(b, "[");
    for (size_t i = 0; i < k && !st; i++) {
        const char *it = tools + off[i];
        cJSON *tool = cJSON_ParseWithLength(it, off[k + i]); /* the text is valid JSON */
        if (!tool) {
            st = QV_ERR_NOMEM;
            break;
        }
        size_t at = 0, fo = 0, fn = 0;
        const cJSON *f = cJSON_IsObject(tool) ? tool->child : NULL;
        for (; f && strcmp(f->string, "function"); f = f->next)
            at++;
        if (!cJSON_IsObject(f))
            st = QV_ERR_INVALID; /* a tool without a function object */
        else if (!member_at(it, off[k + i], at, &fo, &fn))
            st = QV_ERR_NOMEM;
        if (!st) st = put_mistral_function(b, f, it + fo, fn);
        cJSON_Delete(tool);
        if (!st) st = puts_(b, i + 1 < k ? ", " : "]");
    }
    qv_free(off);
    if (!st) st = puts_(b, "[/AVAILABLE_TOOLS]");
    return st;
}

#define MISTRAL_IDS "Tool call IDs should be alphanumeric strings with length 9!"

/* Mistral-7B-Instruct-v0.3's template (nemo: Mistral-Nemo-Instruct-2407's), statement by
 * statement. `tools` NULL: none given (an empty list is written, as `tools is not none`). */
static qv_status render_mistral_v03(const qv_tokenizer *t, bool nemo, const qv_chat_msg *m,
                                    size_t n, const char *tools, size_t tools_len, qv__buf *b,
                                    qv_error *err) {
    const char *sys = NULL, *eos = t->eos_text ? t->eos_text : "</s>", *sp = nemo ? "" : " ";
    if (n > 0 && is_role(&m[0], "system")) sys = m[0].content, m++, n--;
    size_t last_user = SIZE_MAX;
    for (size_t i = 0, k = 0; i < n; i++) {
        if (is_role(&m[i], "user")) last_user = i;
        if (is_role(&m[i], "tool") || is_role(&m[i], "tool_results") || m[i].n_calls) continue;
        if (is_role(&m[i], "user") != (k++ % 2 == 0))
            return qv_errorf(err, QV_ERR_INVALID,
                             "After the optional system message, conversation roles must "
                             "alternate user/assistant/user/assistant/...");
    }
    qv_status st = puts_(b, t->bos_text);
    for (size_t i = 0; i < n && !st; i++) {
        const qv_chat_msg *x = &m[i];
        if (is_role(x, "user")) {
            /* `message == user_messages[-1]`: an equal earlier message gets the tools too */
            if (tools && same_msg(x, &m[last_user]))
                st = put_mistral_tools(b, tools, tools_len, sp);
            if (!st) st = puts_(b, "[INST]");
            if (!st) st = puts_(b, sp);
            if (!st && sys && i + 1 == n) {
                st = puts_(b, sys);
                if (!st) st = puts_(b, "\n\n");
            }
            if (!st) st = puts_(b, x->content);
            if (!st) st = puts_(b, "[/INST]");
        } else if (x->n_calls) {
            st = puts_(b, "[TOOL_CALLS]");
            if (!st) st = puts_(b, sp);
            if (!st) st = puts_(b, "[");
            for (size_t k = 0; k < x->n_calls && !st; k++) {
                const qv_chat_call *c = &x->calls[k];
                char *q = NULL;
                st = puts_(b, "{\"name\": ");
                if (!st) st = qv_json_py_quote(c->name, strlen(c->name), &q);
                if (!st) st = puts_(b, q);
                qv_free(q);
                if (!st) st = puts_(b, ", \"arguments\": ");
                if (!st) st = put_py_json(b, c->arguments, strlen(c->arguments), false);
                if (st) break;
                if (!c->id || utf8_chars(c->id) != 9)
                    return qv_errorf(err, QV_ERR_INVALID,
                                     MISTRAL_IDS " (message %zu, call %zu: Mistral's template "
                                                 "writes each call's id)",
                                     i + (sys != NULL), k);
                st = puts_(b, ", \"id\": \"");
                if (!st) st = puts_(b, c->id);
                if (!st) st = puts_(b, "\"}");
                if (!st) st = puts_(b, k + 1 < x->n_calls ? ", " : "]");
            }
            if (!st) st = puts_(b, eos);
        } else if (is_role(x, "assistant")) {
            st = nemo ? puts_(b, x->content) : puts_(b, " ");
            if (!st && !nemo) st = put_stripped(b, x->content);
            if (!st) st = puts_(b, eos);
        } else if (is_role(x, "tool") || is_role(x, "tool_results")) {
            st = puts_(b, "[TOOL_RESULTS]");
            if (!st) st = puts_(b, sp);
            if (!st) st = puts_(b, "{\"content\": ");
            if (!st) st = puts_(b, x->content);
            if (!st) st = puts_(b, ", ");
            if (st) break;
            if (!x->tool_call_id || utf8_chars(x->tool_call_id) != 9)
                return qv_errorf(err, QV_ERR_INVALID,
                                 MISTRAL_IDS " (message %zu: a tool result's tool_call_id)",
                                 i + (sys != NULL));
            st = puts_(b, "\"call_id\": \"");
            if (!st) st = puts_(b, x->tool_call_id);
            if (!st) st = puts_(b, "\"}[/TOOL_RESULTS]");
        } else {
            return qv_errorf(err, QV_ERR_INVALID,
                             "Only user and assistant roles are supported, with the exception of "
                             "an initial optional system message! (message %zu is '%s')",
                             i + (sys != NULL), x->role);
        }
    }
    if (st) qv_errorf(err, st, st == QV_ERR_NOMEM ? "out of memory" : "invalid tools");
    return st;
}

/* Qwen2.5-Instruct's template, statement by statement: the system turn (with the tools when
 * there are some), user / later system / plain assistant turns, an assistant's calls as
 * <tool_call> blocks, consecutive tool results as <tool_response> blocks of one user turn;
 * other roles write nothing. */
static qv_status render_qwen(const char *sys, const qv_chat_msg *m, size_t n, const char *tools,
                             size_t tools_len, bool gen, qv__buf *b) {
    qv_status st = QV_OK;
    const bool first_sys = n > 0 && is_role(&m[0], "system");
    if (tools) {
        st = puts_(b, "<|im_start|>system\n");
        if (!st) st = puts_(b, first_sys ? m[0].content : sys);
        if (!st) st = puts_(b, k_qwen_tools_head);
        if (!st) st = put_tools(b, tools, tools_len, -1, "\n", ""); /* each as tool | tojson */
        if (!st) st = puts_(b, k_qwen_tools_tail);
    } else if (n > 0) {
        st = puts_(b, "<|im_start|>system\n");
        if (!st) st = puts_(b, first_sys ? m[0].content : sys);
        if (!st) st = puts_(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n && !st; i++) {
        const bool asst = is_role(&m[i], "assistant");
        if (is_role(&m[i], "user") || (is_role(&m[i], "system") && i > 0) ||
            (asst && !m[i].n_calls)) {
            st = puts_(b, "<|im_start|>");
            if (!st) st = puts_(b, m[i].role);
            if (!st) st = puts_(b, "\n");
            if (!st) st = puts_(b, m[i].content);
            if (!st) st = puts_(b, "<|im_end|>\n");
        } else if (asst) {
            st = puts_(b, "<|im_start|>assistant");
            if (!st && m[i].content[0]) st = puts_(b, "\n");
            if (!st) st = puts_(b, m[i].content);
            for (size_t k = 0; k < m[i].n_calls && !st; k++) {
                const qv_chat_call *c = &m[i].calls[k];
                st = puts_(b, "\n<tool_call>\n{\"name\": \"");
                if (!st) st = puts_(b, c->name);
                if (!st) st = puts_(b, "\", \"arguments\": ");
                if (!st) st = put_py_json(b, c->arguments, strlen(c->arguments), false);
                if (!st) st = puts_(b, "}\n</tool_call>");
            }
            if (!st) st = puts_(b, "<|im_end|>\n");
        } else if (is_role(&m[i], "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) st = puts_(b, "<|im_start|>user");
            if (!st) st = puts_(b, "\n<tool_response>\n");
            if (!st) st = puts_(b, m[i].content);
            if (!st) st = puts_(b, "\n</tool_response>");
            if (!st && (i + 1 == n || !is_role(&m[i + 1], "tool"))) st = puts_(b, "<|im_end|>\n");
        }
    }
    if (!st && gen) st = puts_(b, "<|im_start|>assistant\n");
    return st;
}

/* Today's date as Python's strftime("%d %b %Y") writes it in the C locale ("05 Mar 2026"),
 * local time, as transformers' strftime_now gives it to a template. */
static void today(char *buf, size_t cap) {
    static const char *const mon[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    const time_t now = time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm)) {
        snprintf(buf, cap, "26 Jul 2024");
        return;
    }
    snprintf(buf, cap, "%02d %s %d", tm.tm_mday, mon[tm.tm_mon % 12], tm.tm_year + 1900);
}

#define LLAMA_TOOLS_FORMAT                                                                         \
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument "      \
    "name and its value}.Do not use variables.\n\n"

/* Meta's Llama 3.1 / 3.2 template, statement by statement (tools_in_user_message true, no
 * builtin_tools): the system turn with the dates, the tools with the first message after it,
 * then plain turns (content trimmed), an assistant's single call as {"name", "parameters"},
 * tool / ipython results as ipython turns holding the content as `tojson` writes a string. */
static qv_status render_llama31(const qv_tokenizer *t, const char *date, const qv_chat_msg *m,
                                size_t n, const char *tools, size_t tools_len, bool gen, qv__buf *b,
                                qv_error *err) {
    size_t i = 0;
    qv_status st = puts_(b, t->bos_text);
    if (!st) st = puts_(b, "<|start_header_id|>system<|end_header_id|>\n\n");
    if (!st && tools) st = puts_(b, "Environment: ipython\n");
    if (!st) st = puts_(b, "Cutting Knowledge Date: December 2023\nToday Date: ");
    if (!st) st = puts_(b, date);
    if (!st) st = puts_(b, "\n\n");
    if (!st && n > 0 && is_role(&m[0], "system")) st = put_stripped(b, m[i++].content);
    if (!st) st = puts_(b, "<|eot_id|>");
    if (!st && tools) {
        if (i == n)
            return qv_errorf(err, QV_ERR_INVALID,
                             "Cannot put tools in the first user message when there's no first "
                             "user message!");
        st = puts_(b, "<|start_header_id|>user<|end_header_id|>\n\nGiven the following "
                      "functions, please respond with a JSON for a function call with its proper "
                      "arguments that best answers the given prompt.\n\n" LLAMA_TOOLS_FORMAT);
        if (!st) st = put_tools(b, tools, tools_len, 4, "", "\n\n");
        if (!st) st = put_stripped(b, m[i++].content);
        if (!st) st = puts_(b, "<|eot_id|>");
    }
    for (; i < n && !st; i++) {
        if (m[i].n_calls) {
            if (m[i].n_calls != 1)
                return qv_errorf(err, QV_ERR_INVALID,
                                 "This model only supports single tool-calls at once! (Llama "
                                 "3.1's template writes one call per assistant message; message "
                                 "%zu has %zu)",
                                 i, m[i].n_calls);
            st = puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"");
            if (!st) st = puts_(b, m[i].calls[0].name);
            if (!st) st = puts_(b, "\", \"parameters\": ");
            if (!st)
                st =
                    put_py_json(b, m[i].calls[0].arguments, strlen(m[i].calls[0].arguments), false);
            if (!st) st = puts_(b, "}<|eot_id|>");
        } else if (is_role(&m[i], "tool") || is_role(&m[i], "ipython")) {
            /* a string is `iterable` to Jinja: the template writes it through tojson */
            char *q = NULL;
            st = puts_(b, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            if (!st) st = qv_json_py_quote(m[i].content, strlen(m[i].content), &q);
            if (!st) st = puts_(b, q);
            qv_free(q);
            if (!st) st = puts_(b, "<|eot_id|>");
        } else {
            st = puts_(b, "<|start_header_id|>");
            if (!st) st = puts_(b, m[i].role);
            if (!st) st = puts_(b, "<|end_header_id|>\n\n");
            if (!st) st = put_stripped(b, m[i].content);
            if (!st) st = puts_(b, "<|eot_id|>");
        }
    }
    if (!st && gen) st = puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    if (st) qv_errorf(err, st, st == QV_ERR_NOMEM ? "out of memory" : "invalid message text");
    return st;
}

/* For templates without tools: each message whose calls are written after its content as
 * [{"name":...,"arguments":{...}}] (texts[i] holds the new content; NULL when it has none). */
static qv_status calls_as_text(const qv_chat_msg *m, size_t n, qv_chat_msg **out, qv__buf **texts) {
    *out = NULL;
    *texts = NULL;
    size_t with = 0;
    for (size_t i = 0; i < n; i++)
        with += m[i].n_calls > 0;
    if (!with) return QV_OK;
    qv_chat_msg *c = qv_malloc(n * sizeof(*c));
    qv__buf *t = qv_calloc(n, sizeof(*t));
    if (!c || !t) {
        qv_free(c);
        qv_free(t);
        return QV_ERR_NOMEM;
    }
    qv_status st = QV_OK;
    for (size_t i = 0; i < n && !st; i++) {
        c[i] = m[i];
        if (!m[i].n_calls) continue;
        st = puts_(&t[i], m[i].content);
        if (!st && m[i].content[0]) st = puts_(&t[i], "\n");
        if (!st) st = puts_(&t[i], "[");
        for (size_t k = 0; k < m[i].n_calls && !st; k++) {
            const qv_chat_call *call = &m[i].calls[k];
            st = puts_(&t[i], k ? ",{\"name\":" : "{\"name\":");
            char *q = NULL;
            if (!st) st = qv_json_py_quote(call->name, strlen(call->name), &q);
            if (!st) st = puts_(&t[i], q);
            qv_free(q);
            if (!st) st = puts_(&t[i], ",\"arguments\":");
            if (!st) st = put_py_json(&t[i], call->arguments, strlen(call->arguments), true);
            if (!st) st = puts_(&t[i], "}");
        }
        if (!st) st = puts_(&t[i], "]");
        if (!st) st = qv__buf_putc(&t[i], '\0');
        c[i].content = t[i].p;
        c[i].calls = NULL;
        c[i].n_calls = 0;
    }
    if (st) {
        for (size_t i = 0; i < n; i++)
            qv__buf_free(&t[i]);
        qv_free(t);
        qv_free(c);
        return st;
    }
    *out = c;
    *texts = t;
    return QV_OK;
}

static void free_texts(qv_chat_msg *with_text, qv__buf *texts, size_t n) {
    for (size_t i = 0; texts && i < n; i++)
        qv__buf_free(&texts[i]);
    qv_free(texts);
    qv_free(with_text);
}

static enum fam family_of(const qv_tokenizer *t, const char *template_name) {
    if (!template_name) return detect(t->chat_template);
    for (size_t i = 0; i < QV_ARRAY_LEN(k_names); i++)
        if (!strcmp(k_names[i].name, template_name)) return k_names[i].f;
    return F_NONE;
}

bool qv_chat_template_reads(const qv_tokenizer *t, const char *template_name, const char *var) {
    static const char *const llama31[] = {"date_string", "tools_in_user_message", "builtin_tools",
                                          "custom_tools"};
    const enum fam f = family_of(t, template_name);
    for (size_t i = 0; (f == F_LLAMA31 || f == F_LLAMA32) && i < QV_ARRAY_LEN(llama31); i++)
        if (!strcmp(var, llama31[i])) return true;
    return false;
}

qv_chat_tool_format qv_chat_tools_format(const qv_tokenizer *t, const char *template_name) {
    switch (family_of(t, template_name)) {
    case F_QWEN25: return QV_CHAT_TOOLS_HERMES;
    case F_LLAMA31:
    case F_LLAMA32: return QV_CHAT_TOOLS_LLAMA_JSON;
    case F_MISTRAL_V03:
    case F_MISTRAL_NEMO: return QV_CHAT_TOOLS_MISTRAL;
    default: return QV_CHAT_TOOLS_NONE;
    }
}

bool qv_chat_renders_tools(const qv_tokenizer *t, const char *template_name) {
    return qv_chat_tools_format(t, template_name) != QV_CHAT_TOOLS_NONE;
}

qv_status qv_chat_render(const qv_tokenizer *t, const char *template_name, const qv_chat_msg *msgs,
                         size_t n_msgs, bool add_generation_prompt, char **out, qv_error *err) {
    return qv_chat_render_tools(t, template_name, msgs, n_msgs, NULL, 0, add_generation_prompt, out,
                                err);
}

qv_status qv_chat_render_tools(const qv_tokenizer *t, const char *template_name,
                               const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                               size_t tools_len, bool add_generation_prompt, char **out,
                               qv_error *err) {
    return qv_chat_render_dated(t, template_name, msgs, n_msgs, tools, tools_len,
                                add_generation_prompt, NULL, out, err);
}

qv_status qv_chat_render_dated(const qv_tokenizer *t, const char *template_name,
                               const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                               size_t tools_len, bool add_generation_prompt, const char *date,
                               char **out, qv_error *err) {
    return qv_chat_render_kw(t, template_name, msgs, n_msgs, tools, tools_len,
                             add_generation_prompt, date, NULL, out, err);
}

qv_status qv_chat_render_kw(const qv_tokenizer *t, const char *template_name,
                            const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                            size_t tools_len, bool add_generation_prompt, const char *date,
                            const char *date_string, char **out, qv_error *err) {
    enum fam f = F_NONE;
    qv__buf b = {0}, sys = {0};
    qv_status st = QV_OK;
    *out = NULL;
    for (size_t i = 0; i < n_msgs; i++)
        if (!msgs[i].role || !msgs[i].content)
            return qv_errorf(err, QV_ERR_INVALID, "chat message %zu has no role or content", i);
    if (template_name) {
        for (size_t i = 0; i < QV_ARRAY_LEN(k_names); i++)
            if (!strcmp(k_names[i].name, template_name)) f = k_names[i].f;
        if (f == F_NONE)
            return qv_errorf(err, QV_ERR_UNSUPPORTED,
                             "unknown chat template name '%s' (supported: chatml, qwen2.5, llama3, "
                             "llama3.1, llama3.2, llama2-chat, llama2, llama2-sys, llama2-sys-bos, "
                             "llama2-sys-strip, "
                             "mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, "
                             "mistral-v7-tekken, mistral-v0.3, mistral-nemo)",
                             template_name);
    } else {
        f = detect(t->chat_template);
        if (f == F_NONE)
            return qv_errorf(err, QV_ERR_UNSUPPORTED,
                             t->chat_template ? "the model's chat template is not a supported "
                                                "family; pass a template name"
                                              : "the model has no chat template; pass a "
                                                "template name");
    }
    for (size_t i = 0; i < n_msgs; i++)
        for (size_t k = 0; k < msgs[i].n_calls; k++) {
            const qv_chat_call *c = &msgs[i].calls[k];
            st = c->name && c->arguments
                     ? qv_json_text_check(c->arguments, strlen(c->arguments), true)
                     : QV_ERR_INVALID;
            if (st)
                return qv_errorf(err, st,
                                 st == QV_ERR_NOMEM
                                     ? "out of memory"
                                     : "chat message %zu: tool call %zu needs a name "
                                       "and the text of a JSON object as arguments",
                                 i, k);
        }
    if (tools && (st = qv_json_text_check(tools, tools_len, false)))
        return qv_errorf(err, st, st == QV_ERR_NOMEM ? "out of memory" : "the tools are not JSON");
    size_t lead = 0;
    while (tools && lead < tools_len && strchr(" \t\r\n", tools[lead]))
        lead++;
    if (tools && (lead == tools_len || tools[lead] != '['))
        return qv_errorf(err, QV_ERR_INVALID, "the tools must be a JSON list");
    if (f == F_MISTRAL_V03 || f == F_MISTRAL_NEMO) { /* `tools is not none`: [] is written */
        st = render_mistral_v03(t, f == F_MISTRAL_NEMO, msgs, n_msgs, tools, tools_len, &b, err);
        if (!st && qv__buf_putc(&b, '\0')) st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        if (st) {
            qv__buf_free(&b);
            return st;
        }
        *out = b.p;
        return QV_OK;
    }
    if (tools && qv_json_list_items(tools, tools_len, NULL, NULL, 0) == 0)
        tools = NULL; /* an empty list is no tools, as Jinja's `if tools` reads it */
    if (f == F_QWEN25) {
        bool found = false;
        if (t->chat_template && detect(t->chat_template) == F_QWEN25)
            st = default_system(t->chat_template, &sys, &found);
        if (!st && !found) st = puts_(&sys, QWEN_SYSTEM);
        if (!st) st = qv__buf_putc(&sys, '\0');
        if (!st) st = render_qwen(sys.p, msgs, n_msgs, tools, tools_len, add_generation_prompt, &b);
        qv__buf_free(&sys);
        if (st) {
            qv__buf_free(&b);
            return qv_errorf(err, st, st == QV_ERR_NOMEM ? "out of memory" : "invalid tools");
        }
        if (qv__buf_putc(&b, '\0')) {
            qv__buf_free(&b);
            return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        }
        *out = b.p;
        return QV_OK;
    }
    if (f == F_LLAMA31 || f == F_LLAMA32) {
        char now[32];
        if (f == F_LLAMA32 && !date) today(now, sizeof(now));
        st = render_llama31(t,
                            date_string      ? date_string
                            : f == F_LLAMA31 ? "26 Jul 2024"
                            : date           ? date
                                             : now,
                            msgs, n_msgs, tools, tools_len, add_generation_prompt, &b, err);
        if (!st && qv__buf_putc(&b, '\0')) st = qv_errorf(err, QV_ERR_NOMEM, "out of memory");
        if (st) {
            qv__buf_free(&b);
            return st;
        }
        *out = b.p;
        return QV_OK;
    }
    /* ChatML and Llama 3 write any role's name; the [INST] families know three roles */
    for (size_t i = 0; i < n_msgs && f != F_CHATML && f != F_LLAMA3; i++)
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") &&
            !is_role(&msgs[i], "assistant"))
            return qv_errorf(err, QV_ERR_INVALID,
                             "the %s chat template has no role '%s' (only system, user and "
                             "assistant)",
                             fam_name(f), msgs[i].role);
    qv_chat_msg *with_text = NULL;
    qv__buf *texts = NULL;
    if ((st = calls_as_text(msgs, n_msgs, &with_text, &texts)))
        return qv_errorf(err, st, "out of memory");
    if (with_text) msgs = with_text;
    if (qv__buf_reserve(&b, 256)) {
        free_texts(with_text, texts, n_msgs);
        return qv_errorf(err, QV_ERR_NOMEM, "out of memory");
    }
    b.p[0] = 0; /* an empty rendering is a valid result */
    switch (f) {
    case F_CHATML: {
        bool found = false;
        /* the model's own ChatML template (detected or named) brings its default system prompt */
        if (t->chat_template &&
            (detect(t->chat_template) == F_CHATML || detect(t->chat_template) == F_QWEN25))
            st = default_system(t->chat_template, &sys, &found);
        /* SmolLM2 emits it from inside the message loop: nothing for an empty conversation */
        if (!st && found && n_msgs > 0 && !is_role(&msgs[0], "system")) {
            st = puts_(&b, "<|im_start|>system\n");
            if (!st) st = qv__buf_put(&b, sys.p, sys.len);
            if (!st) st = puts_(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n_msgs && !st; i++) {
            st = puts_(&b, "<|im_start|>");
            if (!st) st = puts_(&b, msgs[i].role);
            if (!st) st = puts_(&b, "\n");
            if (!st) st = puts_(&b, msgs[i].content);
            if (!st) st = puts_(&b, "<|im_end|>\n");
        }
        if (!st && add_generation_prompt) st = puts_(&b, "<|im_start|>assistant\n");
        break;
    }
    case F_LLAMA3:
        for (size_t i = 0; i < n_msgs && !st; i++) {
            if (i == 0) st = puts_(&b, t->bos_text);
            if (!st) st = puts_(&b, "<|start_header_id|>");
            if (!st) st = puts_(&b, msgs[i].role);
            if (!st) st = puts_(&b, "<|end_header_id|>\n\n");
            if (!st) st = put_stripped(&b, msgs[i].content);
            if (!st) st = puts_(&b, "<|eot_id|>");
        }
        if (!st && add_generation_prompt)
            st = puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case F_LLAMA2_CHAT: st = render_llama2_chat(t, msgs, n_msgs, &b, err); break;
    case F_LLAMA2:
    case F_LLAMA2_SYS:
    case F_LLAMA2_SYS_BOS:
    case F_LLAMA2_SYS_STRIP: st = render_llama2_cpp(t, f, msgs, n_msgs, &b); break;
    default: st = render_mistral(t, f, msgs, n_msgs, &b); break;
    }
    qv__buf_free(&sys);
    free_texts(with_text, texts, n_msgs);
    if (st) {
        qv__buf_free(&b);
        if (st == QV_ERR_NOMEM) qv_errorf(err, st, "out of memory");
        return st;
    }
    *out = b.p;
    return QV_OK;
}
