/*
 * proto.h - quiver's wire contract in C: OpenAI-compatible request structs decoded from JSON,
 * response and streaming-chunk encoders, Server-Sent-Events framing and OpenAI error objects.
 * proto/openapi.yaml is the same contract for humans and client generators.
 *
 * What it is not: no I/O, no threads, no HTTP, no model. Decoders check JSON types and value
 * ranges that need no model (n == 1, logprobs <= 20, temperature >= 0, ...); limits that need
 * the model or the server's budgets (prompt tokens, context length, adapter names) are the
 * server's job.
 *
 * Invariants: every string a decoder returns is NUL-terminated and owned by the struct it sits
 * in (freed by the matching _free); cJSON trees never outlive a call. Encoders return
 * NUL-terminated JSON owned by the caller (qv_free) or NULL when out of memory.
 * Thread: every function is pure (no shared state) and may run on any thread; cJSON must have
 * been given its allocation hooks before threads start (main does it).
 */
#ifndef QV_PROTO_H
#define QV_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Upper bounds the decoders enforce on their own. */
#define QV_PROTO_MAX_STOPS 16           /* OpenAI allows 4; we allow a few more */
#define QV_PROTO_MAX_STOP_BYTES 256     /* one stop string */
#define QV_PROTO_MAX_LOGPROBS 20        /* completions `logprobs`, chat `top_logprobs` */
#define QV_PROTO_MAX_MESSAGES 4096      /* chat messages */
#define QV_PROTO_MAX_STOP_IDS 64        /* vLLM stop_token_ids */
#define QV_PROTO_MAX_BAD_WORDS 64       /* vLLM bad_words */
#define QV_PROTO_MAX_ALLOWED_IDS 262144 /* vLLM allowed_token_ids (any vocabulary's size) */
#define QV_PROTO_MAX_LOGIT_BIAS 1024    /* OpenAI logit_bias entries */
#define QV_PROTO_MAX_CHOICES 64         /* `n`: choices of one request */
#define QV_PROTO_MAX_BIAS 100.0         /* OpenAI: each bias is in [-100, 100] */
#define QV_PROTO_MAX_TOOLS 128          /* chat `tools` (OpenAI's limit) */

/* What a chat request's tool_choice makes of the answer. */
enum qv_proto_tool_choice {
    QV_PROTO_TOOLS_NONE = 0,         /* text (no tools, or tool_choice "none") */
    QV_PROTO_TOOLS_NAMED = 1,        /* one call of tool_name: the text is its arguments object */
    QV_PROTO_TOOLS_REQUIRED = 2,     /* the text is [{"name", "arguments"}, ...] (1 or more) */
    QV_PROTO_TOOLS_AUTO = 3,         /* free text, which may hold <tool_call> blocks (templates that
                                        write tools; the server checks) */
    QV_PROTO_TOOLS_AUTO_JSON = 4,    /* "auto" for Llama 3.1+ templates (set by the server, never
                                        decoded): free text, or calls as {"name": ..., "parameters":
                                        {...}} objects separated by ';' */
    QV_PROTO_TOOLS_AUTO_MISTRAL = 5, /* "auto" for Mistral v0.3's template (set by the server):
                                        free text, then maybe [TOOL_CALLS] [{"name": ...,
                                        "arguments": {...}}, ...] */
};

enum qv_proto_endpoint {
    QV_PROTO_COMPLETIONS = 0, /* POST /v1/completions */
    QV_PROTO_CHAT = 1,        /* POST /v1/chat/completions */
    QV_PROTO_TOKENIZE = 2,    /* POST /tokenize (vLLM): `prompt` or `messages` */
    QV_PROTO_DETOKENIZE = 3,  /* POST /detokenize (vLLM): `tokens` into prompt_ids */
    QV_PROTO_GENERATE = 4,    /* POST /generate, /generate_stream, / (TGI, LoRAX) */
    QV_PROTO_RESPONSES = 5,   /* POST /v1/responses (OpenAI's Responses API, on chat) */
};

/* A decoding failure: status (QV_ERR_INVALID for bad input, QV_ERR_NOMEM), an English
 * one-line message and the offending request field ("" when none), as OpenAI's `param`. */
typedef struct qv_proto_error {
    qv_status status;
    char message[384];
    char param[64];
} qv_proto_error;

/* One tool call of an assistant message in the history. */
typedef struct qv_proto_call {
    char *name;
    char *arguments; /* the text of a JSON object, as sent */
    char *id;        /* the call's id, or NULL */
} qv_proto_call;

typedef struct qv_proto_message {
    char *role;           /* "system", "user", "assistant", "tool", ... */
    char *content;        /* text ("" for null); array-of-parts content is joined */
    qv_proto_call *calls; /* an assistant's tool_calls */
    size_t n_calls;
    char *tool_call_id; /* a tool result's tool_call_id, or NULL */
} qv_proto_message;

/* One further prompt of a completions batch: a text or token ids. */
typedef struct qv_proto_prompt {
    char *text;
    size_t len;
    int32_t *ids;
    size_t n_ids;
} qv_proto_prompt;

/* One generation request (completions or chat). Unset numbers keep the defaults written by
 * the decoder (see each field). */
typedef struct qv_proto_request {
    enum qv_proto_endpoint endpoint;
    char *model;   /* as sent; NULL when absent */
    char *base;    /* part of `model` before ':' (the whole of it without ':'); NULL = absent */
    char *adapter; /* part after ':' or `adapter_id`; NULL = the base model */
    /* LoRAX's merged_adapters ({ids, weights, merge_strategy, density, majority_sign_method},
     * plus quiver's `seed`; /generate's parameters.merged_adapters, or the same object at the
     * top level of completions, chat and responses): the adapters `merge_ids` merged into one
     * for this request (adapters.h, qv_adapter_merge). n_merge = 0: none; never with
     * `adapter`. */
    char **merge_ids;
    size_t n_merge;
    float *merge_weights; /* [n_merge]; 1 each when not given */
    int merge_strategy;   /* enum qv_merge_strategy (default linear) */
    double merge_density; /* (0, 1], default 1 */
    int merge_sign;       /* enum qv_merge_sign (default total) */
    uint64_t merge_seed;  /* DARE's drop mask (default 0) */
    /* completions: exactly one of prompt (text) or prompt_ids */
    char *prompt;
    size_t prompt_len;
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    /* completions: the batch's further prompts when `prompt` is a list of 2+ texts or of 2+ id
     * lists (prompt / prompt_ids hold the first); choice j of prompt p has index p * n + j,
     * and (1 + n_more) * n <= QV_PROTO_MAX_CHOICES */
    qv_proto_prompt *more;
    size_t n_more;
    /* chat */
    qv_proto_message *messages;
    size_t n_messages;
    int n;                    /* choices (default 1, at most QV_PROTO_MAX_CHOICES) */
    int max_tokens;           /* -1 = not given (the server picks) */
    float temperature;        /* default 1 */
    float top_p;              /* default 1 */
    int top_k;                /* default 0 (off); -1 accepted as off */
    float min_p;              /* default 0 */
    float presence_penalty;   /* default 0, [-2, 2] */
    float frequency_penalty;  /* default 0, [-2, 2] */
    float repetition_penalty; /* default 1, > 0 */
    bool has_seed;
    uint64_t seed;
    char **stop; /* n_stop non-empty strings */
    size_t n_stop;
    int32_t *stop_ids; /* vLLM stop_token_ids: generation ends at any of them (no text) */
    size_t n_stop_ids;
    int32_t *allowed_ids; /* vLLM allowed_token_ids: only these can be drawn (none: all) */
    size_t n_allowed_ids;
    char **bad_words; /* vLLM bad_words: n_bad_words non-empty strings the answer must avoid */
    size_t n_bad_words;
    /* OpenAI logit_bias: bias_values[i] is added to token bias_ids[i]'s logit (ids as sent,
     * possibly repeated: the later entry wins; range checks against the vocabulary are the
     * server's) */
    int32_t *bias_ids;
    float *bias_values;
    size_t n_bias;
    int min_tokens;   /* vLLM extension: no end-of-generation / stop before this many tokens */
    bool json_object; /* response_format {"type": "json_object"}: the text is one JSON object */
    /* response_format {"type": "json_schema", "json_schema": {"schema": ...}} or vLLM's
     * guided_json: the text is one value valid under it (compiled; one reference) */
    struct qv_json_schema *json_schema;
    /* chat tools: tool_choice "required" or a named function constrains the answer through
     * json_schema (qv_json_schema_compile_calls, or the function's parameters) */
    enum qv_proto_tool_choice tool_choice;
    char *tool_name;  /* QV_PROTO_TOOLS_NAMED: the function */
    char *tools_text; /* chat, /tokenize: the raw JSON text of a non-empty `tools` list
                         (for templates that write tools), or NULL */
    size_t tools_len;
    bool parallel_tool_calls; /* default true: "required" may make more than one call */
    bool echo;                /* completions: the text starts with the prompt, and with logprobs the
                                 prompt tokens come first in them; max_tokens may then be 0 */
    bool chat_echo;           /* vLLM chat echo: a last assistant message leads the answer's
                                 content (continue_final_message's companion); not with tools */
    bool logprobs;            /* token log-probabilities requested */
    int top_logprobs;         /* alternatives per token, 0..20 */
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    /* stream_options.continuous_usage_stats (vLLM; only with include_usage, as vLLM): every
     * chunk also carries its choice's usage so far */
    bool continuous_usage;
    bool ignore_eos; /* vLLM extension: keep generating past end-of-generation tokens */
    bool has_priority;
    int priority; /* vLLM extension: scheduling priority, lower = sooner (|priority| <= 1e9) */
    /* vLLM extensions: add the tokenizer's special tokens (BOS...) when encoding the text
     * (default: true for a completion's prompt, false for chat, whose template writes them);
     * chat: end the rendered prompt with the assistant's turn header (default true) */
    bool add_special_tokens, add_generation_prompt;
    bool continue_final_message; /* chat: the prompt ends inside the last (assistant) message */
    /* chat: vLLM's chat_template_kwargs (its add_generation_prompt / continue_final_message
     * set the two above): date_string for the templates that print it (or NULL), and the name
     * of a variable whose value asks for what quiver's Llama 3.1 / 3.2 rendering lacks
     * (tools_in_user_message false, builtin_tools, custom_tools), or NULL */
    char *tmpl_date_string;
    const char *tmpl_unrendered;
    bool return_token_strs; /* tokenize: also return each id's vocabulary piece */
    /* vLLM's output options: skip_special_tokens (default true: added special tokens write
     * no text), include_stop_str_in_output (a matched stop string, or a stop_token_ids
     * token's text, ends the text), return_tokens_as_token_ids (logprobs name tokens
     * "token_id:<id>"); truncate_prompt_tokens: keep only the prompt's last ids (0: all;
     * -1: as many as the context holds) */
    bool skip_special_tokens, include_stop_str, tokens_as_ids;
    int truncate_prompt_tokens;
    /* vLLM prompt_logprobs (asked when prompt_lps): each prompt token's logprob and rank with
     * prompt_logprobs alternatives (0..20); refused with stream */
    bool prompt_lps;
    int prompt_logprobs;
} qv_proto_request;

/* Decodes a request body of `len` bytes (need not be NUL-terminated) for `endpoint` into *out
 * (overwritten; free it with qv_proto_request_free even on failure). Unknown fields are
 * ignored, as OpenAI clients send many. QV_PROTO_TOKENIZE takes a text `prompt` or a chat's
 * `messages` (n_messages > 0 then), add_special_tokens (default: true for a prompt, false for
 * messages), add_generation_prompt and return_token_strs; QV_PROTO_DETOKENIZE takes
 * `tokens` (ids) into prompt_ids. Both take `model` / `adapter_id`. Errors: QV_ERR_INVALID
 * with the message naming the field in e->param, QV_ERR_NOMEM. */
qv_status qv_proto_request_decode(enum qv_proto_endpoint endpoint, const char *body, size_t len,
                                  qv_proto_request *out, qv_proto_error *e);
/* Frees everything the request holds and zeroes it. Accepts NULL and half-decoded requests. */
void qv_proto_request_free(qv_proto_request *r);

/* One generated token's log-probabilities, as the server hands them to the encoders. */
typedef struct qv_proto_logprob {
    char *token; /* token text (valid UTF-8, owned by whoever built the array) */
    int32_t id;  /* its id (TGI's prefill tokens) */
    bool none;   /* no logprob (an echoed prompt's first token): null, null */
    float logprob;
    int rank; /* prompt_logprobs: its rank in the vocabulary (1 = most likely) */
    int n_top;
    char *top_token[QV_PROTO_MAX_LOGPROBS];
    float top_logprob[QV_PROTO_MAX_LOGPROBS];
    int32_t top_id[QV_PROTO_MAX_LOGPROBS]; /* prompt_logprobs: the alternatives' ids */
} qv_proto_logprob;

/* One tool call of an answer (message.tool_calls), or a piece of one in a streamed chunk's
 * delta (id and name NULL after the call's first piece; arguments: the new text). */
typedef struct qv_proto_tool_call {
    int index;       /* the call's place in the answer */
    char *id;        /* "call_..." */
    char *name;      /* the function */
    char *arguments; /* JSON text of an object (or its piece) */
} qv_proto_tool_call;

/* The tool calls a finished answer's text (len bytes) makes: QV_PROTO_TOOLS_REQUIRED reads a
 * JSON array of {"name", "arguments": {...}}; QV_PROTO_TOOLS_AUTO reads the Hermes / Qwen2.5
 * blocks "<tool_call>{"name": ..., "arguments": {...}}</tool_call>" (the last one may be
 * unclosed), *content_len (may be NULL) getting the length of the text before the first (the
 * answer's content); QV_PROTO_TOOLS_AUTO_JSON reads an answer that is nothing but Llama 3.x
 * calls, {"name": ..., "parameters" (or "arguments"): {...}} objects separated by ';' (after
 * whitespace and an optional "<|python_tag|>", as vLLM's llama3_json parser);
 * QV_PROTO_TOOLS_AUTO_MISTRAL reads Mistral's "[TOOL_CALLS] [{"name": ..., "arguments": {...}},
 * ...]" after the content (*content_len), or such a list alone (the marker is a special token
 * that decoding may skip); all re-write the arguments as Python's compact json.dumps.
 * QV_PROTO_TOOLS_NAMED makes one call of `name` whose arguments are the text itself (a JSON
 * object). Ids are "call_<id_base>_<i>". *calls is owned by the caller
 * (qv_proto_tool_calls_free). Errors: QV_ERR_INVALID (the text is not such calls: e.g. cut by
 * max_tokens; for AUTO, no block or one that is not a call: the text is the content),
 * QV_ERR_NOMEM. */
qv_status qv_proto_tool_calls_parse(enum qv_proto_tool_choice how, const char *name,
                                    const char *text, size_t len, const char *id_base,
                                    qv_proto_tool_call **calls, size_t *n, size_t *content_len);
void qv_proto_tool_calls_free(qv_proto_tool_call *calls, size_t n);
/* The calls an unfinished answer (text[0..len)) has begun, as far as they are final, read as
 * qv_proto_tool_calls_parse reads the finished one: QV_PROTO_TOOLS_REQUIRED's JSON array;
 * AUTO's <tool_call> blocks after the content (a block ends at "</tool_call>", at the next
 * "<tool_call>" or before an end that may begin either); AUTO_JSON's objects joined by ';'
 * (the first "arguments", else "parameters"); AUTO_MISTRAL's list after "[TOOL_CALLS]", or at
 * the start when the answer begins with "[" that does not begin the marker (a later marker is
 * not looked for then). Each call whose name is complete, with its id as
 * qv_proto_tool_calls_parse gives it ("call_<id_base>_<i>") and `arguments` the beginning of
 * the text the finished call will have (a key, number or escape still being written waits).
 * Stops at the first call without its name, or at one that is not a call. So each later
 * result extends the earlier ones, and the finished answer's calls extend them all, when the
 * answer turns out to be those calls. Otherwise a later result may have fewer calls (a whole
 * object that is not a call), and the finished answer may be text or other calls (garbage
 * after the calls; Llama's "parameters" followed by an "arguments" key, which then counts;
 * Mistral's list alone followed by "[TOOL_CALLS]"): a stream must check that what it sent is
 * extended. The text before the calls is qv_proto_tool_text_len's. NAMED and NONE: no calls.
 * *n may be 0 (calls NULL). Errors: QV_ERR_NOMEM only. */
qv_status qv_proto_tool_calls_partial(enum qv_proto_tool_choice how, const char *text, size_t len,
                                      const char *id_base, qv_proto_tool_call **calls, size_t *n);

/* How much of an unfinished "auto" answer (text[0..len)) is surely content. AUTO: the bytes
 * before its first "<tool_call>", and before an end that may begin one; AUTO_JSON: all of it
 * once it begins with something else than whitespace, "{" or "<|python_tag|>", else none;
 * AUTO_MISTRAL: the bytes before "[TOOL_CALLS]" (or an end that may begin it), none while the
 * answer is whitespace or begins with "[". */
size_t qv_proto_tool_text_len(enum qv_proto_tool_choice how, const char *text, size_t len);

/* Call i's id in Mistral's form: 9 letters and digits (its template refuses any other length),
 * a function of (base, i) so that a stream and its final answer agree. */
void qv_proto_mistral_call_id(const char *base, size_t i, char out[10]);

/* A (partial or full) result to encode. */
typedef struct qv_proto_result {
    enum qv_proto_endpoint endpoint;
    const char *id;    /* "cmpl-..." / "chatcmpl-..." */
    const char *model; /* echoed model name */
    int index;         /* the choice's index */
    int64_t created;   /* unix seconds */
    const char *text;  /* full text (response) or the delta (chunk) */
    size_t text_len;
    const char *finish_reason; /* "stop", "length" or NULL (still running) */
    bool logprobs;             /* emit the logprobs object (possibly empty) */
    const qv_proto_logprob *lps;
    size_t n_lps;
    size_t text_offset; /* completions chunk: byte offset of text in the whole completion */
    bool usage;         /* emit usage (a chunk: the usage chunk, without choices) */
    bool chunk_usage;   /* a choice's chunk also carries usage (continuous_usage_stats) */
    int prompt_tokens, completion_tokens;
    int cached_tokens; /* usage.prompt_tokens_details.cached_tokens (prefix cache) */
    /* chat: tool calls instead of text (message.content null; a chunk's delta.tool_calls) */
    const qv_proto_tool_call *calls;
    size_t n_calls;
    /* vLLM prompt_logprobs (response only): [null, {"<id>": {"logprob", "rank",
     * "decoded_token"}, ...}, ...], the prompt token first, then its alternatives (ranks 1..).
     * Completions: in each choice; chat: once, at the top, from the first result. */
    bool prompt_logprobs;
    const qv_proto_logprob *plps;
    size_t n_plps;
} qv_proto_result;

/* Whole non-streamed response: "text_completion" or "chat.completion". */
char *qv_proto_encode_response(const qv_proto_result *r);
/* The same with the choices r[0..n) (their index, text, finish and logprobs); the header and
 * usage come from r[0]. */
char *qv_proto_encode_response_choices(const qv_proto_result *r, size_t n);
/* One streamed chunk ("text_completion" / "chat.completion.chunk"); `first` adds the chat
 * delta's role. r->usage gives the final usage-only chunk (choices: []) instead. */
char *qv_proto_encode_chunk(const qv_proto_result *r, bool first);
/* {"error": {"message", "type", "param", "code"}}; param/code NULL give JSON null. Bytes of
 * `message` that are not valid UTF-8 (e.g. a client's name cut mid-character) become U+FFFD. */
char *qv_proto_encode_error(const char *message, const char *type, const char *param,
                            const char *code);
/* GET /v1/models: a list with one model object per id. */
/* POST /tokenize's answer (vLLM): {"count", "max_model_len", "tokens", "token_strs"}; strs
 * NULL gives token_strs null. POST /detokenize's: {"prompt": text}. NULL when out of memory. */
char *qv_proto_encode_tokenize(const int32_t *ids, size_t n, int max_model_len,
                               const char *const *strs);
char *qv_proto_encode_detokenize(const char *text);
char *qv_proto_encode_models(const char *const *ids, size_t n, int64_t created,
                             const char *owned_by);

/* One adapter as the adapter endpoints and GET /v1/models show it. Strings are borrowed. */
typedef struct qv_proto_adapter_info {
    const char *name;     /* name or alias in the store */
    const char *version;  /* sha256 hex of its files; "" when an alias no longer resolves */
    const char *kind;     /* "LORA", "IA3", "PREFIX_TUNING", ..., or NULL (unknown) */
    int rank;             /* LoRA rank `r`, 0 when not applicable */
    const char *tier;     /* residency: "device", "host", "loading" or "disk" */
    const char *alias_of; /* aliases: the name or version it points at; NULL for names */
} qv_proto_adapter_info;

/* GET /v1/models: the base model, then one model object per adapter (id = adapter name, with
 * parent = base and an "adapter" object: kind, rank, version, tier). */
char *qv_proto_encode_model_list(const char *base, const qv_proto_adapter_info *a, size_t n,
                                 int64_t created);
/* GET /v1/models/{id}: one model object of that list (a == NULL: the base). */
char *qv_proto_encode_model(const char *base, const qv_proto_adapter_info *a, int64_t created);
/* GET /v1/adapters ({"object":"list","data":[...]}) and one adapter object
 * ({"object":"adapter","name",..., "kind","rank","version","tier"}). */
char *qv_proto_encode_adapter_list(const qv_proto_adapter_info *a, size_t n);
char *qv_proto_encode_adapter(const qv_proto_adapter_info *a);

/* Reads the adapter kind and LoRA rank out of an adapter_config.json text (len bytes): kind
 * gets peft_type ("LORA", "IA3", ...) or "BOTTLENECK" for AdapterHub configs ("" when neither
 * is present), *rank the LoRA `r` (0 otherwise). Errors: QV_ERR_INVALID (not a JSON object). */
qv_status qv_proto_adapter_config_summary(const char *json, size_t len, char *kind, size_t kind_cap,
                                          int *rank);

/* vLLM's POST /v1/load_lora_adapter {"lora_name", "lora_path"} and /v1/unload_lora_adapter
 * {"lora_name"} bodies. path == NULL: lora_path is not read. *name and *path are owned by the
 * caller (qv_free), NULL on failure. Errors: QV_ERR_INVALID naming the field, QV_ERR_NOMEM. */
qv_status qv_proto_lora_request_decode(const char *body, size_t len, char **name, char **path,
                                       qv_proto_error *e);

/* SSE framing: "data: <payload>\n\n". Returns a buffer owned by the caller (qv_free) with its
 * length in *out_len, or NULL when out of memory. */
/* ---- OpenAI's Responses API (proto/responses.c) ---- */

/* What a Responses API request brings beside its chat request. Owned strings (qv_free). */
typedef struct qv_proto_responses_extra {
    char *echo;      /* the JSON text of the request's settings a response object repeats */
    char *items;     /* the conversation's items so far: the earlier ones, then this input (a JSON
                        array of items; a string input as a user message) */
    bool store;      /* the response is to be kept (the server stores, and `store` is not false) */
    bool truncate;   /* `truncation: "auto"`: the earliest turns may be left out to fit */
    bool background; /* `background: true`: the server answers at once, the response runs on */
    size_t n_prior;  /* items of `items` that came from prior (previous_response_id's or the
                        conversation's) */
} qv_proto_responses_extra;

/* Decodes a POST /v1/responses body into *r as the chat request it means (endpoint
 * QV_PROTO_RESPONSES): `instructions` becomes a system message, then the earlier conversation
 * (prior: the JSON array of items a stored response continues, for previous_response_id; NULL
 * when there is none: a previous_response_id is then "not found"), then `input` (a string: one
 * user message; or a list of items: messages with string or input_text / output_text content,
 * role "developer" read as "system"; function_call items as an assistant's tool calls;
 * function_call_output items as tool results); max_output_tokens, temperature, top_p, stream,
 * parallel_tool_calls; `tools` (function tools, flat), `tool_choice` ("auto", "none",
 * "required", {"type": "function", "name"}); `text.format` (text, json_object, json_schema with
 * name / schema / strict); include ["message.output_text.logprobs"] with top_logprobs. The
 * vLLM sampling extensions chat takes (top_k, min_p, seed, stop, penalties, priority,
 * adapter_id, ...) are read as chat reads them; truncation "auto" sets x->truncate (the
 * server fits the conversation); background true sets x->background (refused with store false
 * or when the server keeps nothing). Refused, never ignored: prompt templates, reasoning
 * effort / summary, include values the API does not define, tool and item types other than
 * function ones, image / file / audio input (max_tool_calls and the other includes concern
 * items quiver never makes: taken). storing: the server keeps responses (x->store, the
 * echo's "store"). Errors as qv_proto_request_decode, naming the Responses API's
 * fields; *x is empty then. */
qv_status qv_proto_responses_decode(const char *body, size_t len, const char *prior, bool storing,
                                    qv_proto_request *r, qv_proto_responses_extra *x,
                                    qv_proto_error *e);
/* Looks up an item by id for qv_proto_responses_resolve: its JSON text (qv_malloc'd), or NULL
 * when there is none (*nomem set when that is for want of memory). */
typedef char *(*qv_proto_item_lookup)(void *user, const char *id, bool *nomem);
/* A Responses body whose `input` list holds item references ({"type": "item_reference",
 * "id"}, what clients send for items the server keeps) with each replaced by the item lookup
 * finds: *out is the new body (qv_free), or NULL when the body has no reference (decode it as
 * it is; a body that is not JSON is left to the decoder too). An unknown reference is
 * QV_ERR_INVALID naming input[i]. */
qv_status qv_proto_responses_resolve(const char *body, size_t len, qv_proto_item_lookup lookup,
                                     void *user, char **out, qv_proto_error *e);
/* The body's previous_response_id when it is a string shorter than cap (copied into id). */
bool qv_proto_responses_previous(const char *body, size_t len, char *id, size_t cap);

/* A response as it stands (whole, or so far while streaming). */
typedef struct qv_proto_response_out {
    const char *id;       /* "resp_..." */
    const char *model;    /* echoed model name */
    int64_t created;      /* unix seconds */
    int64_t completed_at; /* unix seconds once done (0: null) */
    const char *echo;     /* qv_proto_responses_extra.echo */
    bool done;            /* finished: the status is "completed" or "incomplete" */
    const char *finish;   /* the chat finish reason once done ("length": incomplete) */
    const char *text;     /* the message's text (so far), before any calls */
    size_t text_len;
    bool logprobs; /* output_text.logprobs asked */
    const qv_proto_logprob *lps;
    size_t n_lps;
    const qv_proto_tool_call *calls; /* once done: the function calls, after the message */
    size_t n_calls;
    int input_tokens, output_tokens, cached_tokens;
    /* A background response's state when it is not derived from done / finish: "queued",
       "in_progress", "cancelled" or "failed" (NULL: derived); a failed one's error */
    const char *status;
    const char *error_code, *error_message;
} qv_proto_response_out;

/* The response object {"id", "object": "response", "status", "output": [message,
 * function_call...], "usage", ...the request's settings}. NULL when out of memory. A message
 * item is written when there is text, or no call once done. A response not yet done (a
 * background one read while it runs) has the output so far and usage null; o->status, when
 * set, is its status, and a failed one's error is {"code", "message"}. */
char *qv_proto_response_encode(const qv_proto_response_out *o);

/* What a response stream has sent. Zero it before the first call; it owns `args` until the
 * stream finishes (qv_proto_response_stream_free frees it earlier). */
typedef struct qv_proto_response_stream {
    int seq;          /* sequence_number of the next event */
    bool started;     /* response.created sent (with response.queued when queued) */
    bool in_progress; /* response.in_progress sent */
    bool msg_open;    /* the message item and its output_text part were added */
    bool msg_done;    /* ... and closed */
    int msg_index;    /* its output_index */
    bool finished;    /* response.completed / response.incomplete sent */
    size_t text_sent; /* bytes of the message's text sent as deltas */
    size_t lps_sent;
    int calls_open, calls_done; /* function_call items added, and closed */
    int call_base;              /* output_index of the first call */
    char *args;                 /* the last added call's arguments as sent */
    size_t args_sent;
} qv_proto_response_stream;

/* The typed server-sent events ("event: <type>\ndata: {...}\n\n" each) that take a client
 * from what st says it has to o: response.created and response.in_progress first (a queued
 * background response: response.created and response.queued with status "queued", then
 * nothing until it starts, and response.in_progress once it has); the message
 * (output_item.added, content_part.added, output_text.delta for its new text with its
 * logprobs), closed (output_text.done, content_part.done, output_item.done) when the first
 * call appears or the answer is done; each function call as it is read (o->calls while not
 * done: names whole, arguments their final beginning): output_item.added,
 * function_call_arguments.delta for new argument bytes, and .done plus output_item.done once
 * a later call begins or the answer is done; last response.completed or response.incomplete
 * with the whole response (o's final calls: a call begun that the finished answer does not
 * make is closed as incomplete). Returns "" (len 0) when there is nothing new, NULL when out
 * of memory; the caller frees it (qv_free). */
char *qv_proto_response_events(qv_proto_response_stream *st, const qv_proto_response_out *o,
                               size_t *len);
/* An "error" event {"type": "error", "code", "message", "param": null, "sequence_number"}
 * that ends a response stream. NULL when out of memory. */
char *qv_proto_response_error_event(qv_proto_response_stream *st, const char *code,
                                    const char *message, size_t *len);
/* The conversation after a response: items (qv_proto_responses_extra.items) followed by the
 * response's output items, as a JSON array of items that a later request's `input` could hold
 * (what previous_response_id continues). Items are put in the API's item shape: an item
 * without an id gets one (derived from the response's id and its place), a message its type
 * and its string content as one text part, every item a status. NULL when out of memory. */
char *qv_proto_response_conversation(const char *items, const qv_proto_response_out *o);
/* GET /v1/responses/{id}/input_items's query: each NULL when absent. */
typedef struct qv_proto_items_query {
    const char *after, *before; /* item ids: the page starts after / ends before that item */
    const char *limit;          /* 1 to 100 (default 20) */
    const char *order;          /* "asc" or "desc" (the default: the latest item first) */
} qv_proto_items_query;
/* GET /v1/responses/{id}/input_items's answer {"object": "list", "data", "first_id",
 * "last_id", "has_more"}: the items a kept response was generated from (the conversation it
 * kept, qv_proto_response_conversation's, without the response's own output items), one page
 * of them. NULL with *e set: 400 for a bad limit / order or an unknown after / before id,
 * QV_ERR_NOMEM. */
char *qv_proto_response_input_items(const char *response, const char *items,
                                    const qv_proto_items_query *q, qv_proto_error *e);
/* POST /v1/responses/input_tokens's answer: {"object": "response.input_tokens",
 * "input_tokens": n}. NULL when out of memory. */
char *qv_proto_response_input_tokens(size_t n);
/* Whether a kept response object (qv_proto_response_encode's) was a background one. */
bool qv_proto_response_background(const char *json);
/* DELETE /v1/responses/{id}'s answer: {"id", "object": "response", "deleted": true}. */
char *qv_proto_response_deleted(const char *id);
/* Frees what a stream that did not finish holds. */
void qv_proto_response_stream_free(qv_proto_response_stream *st);

/* ---- the Conversations API (/v1/conversations), records the server keeps ---- */

/* POST /v1/conversations's body {"items"?, "metadata"?}: the conversation object {"id",
 * "object": "conversation", "created_at", "metadata"} (*conv) and its items (*items: a JSON
 * array in the API's item shape, see qv_proto_response_conversation; items without an id get
 * "msg_" / "fc_" / "fco_", nonce, "_in" and their place). At most 20 items, each one a
 * request's `input` could hold; metadata at most 16 strings. 400-class errors name the field
 * (items[i], metadata). */
qv_status qv_proto_conversation_create(const char *body, size_t len, const char *id,
                                       int64_t created, const char *nonce, char **conv,
                                       char **items, qv_proto_error *e);
/* POST /v1/conversations/{id}'s body {"metadata"}: the object conv with it replaced (*out). */
qv_status qv_proto_conversation_update(const char *body, size_t len, const char *conv, char **out,
                                       qv_proto_error *e);
/* POST /v1/conversations/{id}/items's body {"items": [1 to 20 items]}: the items in the API's
 * shape (*added, a JSON array; ids from nonce as above). */
qv_status qv_proto_conversation_add(const char *body, size_t len, const char *nonce, char **added,
                                    qv_proto_error *e);
/* The JSON array items followed by more's items from index `from` on (NULL when out of
 * memory, or either is not an array). */
char *qv_proto_items_join(const char *items, const char *more, size_t from);
/* The item of items whose id is item_id (a copy), or with remove, items without it. *found
 * says whether it is there; NULL with *found is out of memory. */
char *qv_proto_items_find(const char *items, const char *item_id, bool remove, bool *found);
/* GET /v1/conversations/{id}/items's answer: one page of items (a JSON array), as for
 * qv_proto_response_input_items. */
char *qv_proto_conversation_items(const char *items, const qv_proto_items_query *q,
                                  qv_proto_error *e);
/* DELETE /v1/conversations/{id}'s answer {"id", "object": "conversation.deleted",
 * "deleted": true}. */
char *qv_proto_conversation_deleted(const char *id);
/* The body's `conversation` id (a string, or {"id": ...}) when shorter than cap. */
bool qv_proto_responses_conversation(const char *body, size_t len, char *id, size_t cap);

/* ---- TGI / LoRAX text-generation API ---- */

/* What a TGI request asks beyond qv_proto_request. */
typedef struct qv_proto_tgi {
    bool details;               /* the answer carries details (finish reason, tokens...) */
    bool return_full_text;      /* generated_text starts with the inputs */
    int truncate;               /* keep only the last `truncate` input tokens (0: all) */
    int n_alternatives;         /* LoRAX return_k_alternatives: top tokens per generated token */
    bool decoder_input_details; /* details.prefill: the input tokens and their logprobs */
} qv_proto_tgi;

/* Decodes {"inputs": text, "parameters": {...}, "stream": bool} (TGI's /generate and
 * /generate_stream, LoRAX's /) into *r (endpoint QV_PROTO_GENERATE, prompt = inputs, adapter =
 * parameters.adapter_id, max_tokens = max_new_tokens (default 20), stop, seed, penalties,
 * ignore_eos = ignore_eos_token; greedy (temperature 0) unless do_sample or a sampling
 * parameter is given, as TGI does), merged_adapters, and *t. Parameters quiver does not offer
 * (typical_p, best_of > 1, watermark, top_n_tokens, adapter_source s3 / pbase) are refused,
 * never ignored. Unknown fields are
 * ignored; null means absent. Errors as qv_proto_request_decode (param "parameters.<name>"). */
qv_status qv_proto_tgi_decode(const char *body, size_t len, qv_proto_request *r, qv_proto_tgi *t,
                              qv_proto_error *e);

/* One generated token of a TGI answer. */
typedef struct qv_proto_tgi_token {
    int32_t id;
    const char *text; /* the text it added (its vocabulary text for special tokens) */
    float logprob;
    bool special;
    int n_alt; /* alternatives (LoRAX alternative_tokens) */
    const int32_t *alt_id;
    const char *const *alt_text;
    const float *alt_logprob;
} qv_proto_tgi_token;

/* A finished generation. */
typedef struct qv_proto_tgi_result {
    const char *generated_text;
    size_t generated_len;
    const char *finish_reason; /* "length", "eos_token", "stop_sequence" */
    int prompt_tokens, generated_tokens;
    bool has_seed; /* sampled: the seed it used */
    uint64_t seed;
    bool details;
    const qv_proto_tgi_token *tokens; /* details.tokens */
    size_t n_tokens;
    const qv_proto_logprob *prefill; /* details.prefill (id, token, logprob; none: null) */
    size_t n_prefill;
} qv_proto_tgi_result;

/* {"generated_text", "details"} (details only when asked); in_list wraps it in [ ] (LoRAX's
 * POST /). NULL when out of memory. */
char *qv_proto_tgi_encode_response(const qv_proto_tgi_result *r, bool in_list);
/* One server-sent event: {"index", "token", "generated_text", "details"}; `final` (NULL
 * before the last token) gives generated_text and the stream details. */
char *qv_proto_tgi_encode_event(const qv_proto_tgi_token *tok, int index,
                                const qv_proto_tgi_result *final);
/* {"error": message, "error_type": type}: TGI's error object ("validation", "overloaded",
 * "generation", or quiver's error code). */
char *qv_proto_tgi_encode_error(const char *message, const char *error_type);

char *qv_proto_sse_frame(const char *payload, size_t payload_len, size_t *out_len);
/* The final SSE frame, "data: [DONE]\n\n" (static storage). */
#define QV_PROTO_SSE_DONE "data: [DONE]\n\n"

#ifdef __cplusplus
}
#endif
#endif /* QV_PROTO_H */
