/*
 * tokenizer.h - quiver's tokenizer: text <-> token ids, byte-exact with Hugging Face
 * `tokenizers`, plus the streaming detokenizer and chat-template formatting.
 *
 * What it is: the generic HF pipeline (added-token split -> normalizer -> pre-tokenizer -> BPE
 * -> post-processor; decoder chain for output) loaded from a `tokenizer.json` (optionally with
 * `tokenizer_config.json`) or from GGUF `tokenizer.ggml.*` metadata. See docs/tokenizer.md and
 * /work/shared/TOKENIZER.md for the rules it follows.
 * What it is not: a trainer, a WordPiece/Unigram implementation, or a Jinja engine (chat
 * templates are detected and formatted by C code per family).
 *
 * Invariants: a qv_tokenizer is immutable after load; every encode/decode/render call may run
 * concurrently from any thread on the same tokenizer. A qv_detok is confined to one thread.
 * Input text that is not valid UTF-8 is repaired first: each maximal invalid subsequence becomes
 * U+FFFD (the same policy as Python's errors="replace" and Rust's from_utf8_lossy).
 */
#ifndef QV_TOKENIZER_H
#define QV_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct qv_gguf;
typedef struct qv_tokenizer qv_tokenizer;

/* Loads a tokenizer.json (BPE model) and optionally a tokenizer_config.json (chat_template,
 * bos_token, eos_token). Owner: caller (qv_tokenizer_free). Errors: QV_ERR_IO / NOT_FOUND for
 * files, QV_ERR_INVALID for malformed JSON, QV_ERR_UNSUPPORTED for components quiver does not
 * implement (the message names the component). Thread: any. */
qv_status qv_tokenizer_load_json(const char *tokenizer_json_path,
                                 const char *tokenizer_config_path /* NULL ok */,
                                 qv_tokenizer **out, qv_error *err);

/* Same from an in-memory tokenizer.json text (and optional tokenizer_config.json text, NULL ok).
 * The buffers are not retained. */
qv_status qv_tokenizer_load_json_str(const char *json, size_t len, const char *config_json,
                                     size_t config_len, qv_tokenizer **out, qv_error *err);

/* Builds the tokenizer from GGUF `tokenizer.ggml.*` metadata. `tokenizer.ggml.model` "gpt2"
 * with pre in {smollm, llama-bpe, llama3, qwen2, gpt-2, default}, or "llama" (SentencePiece
 * vocab with scores). Unknown names give QV_ERR_UNSUPPORTED. The gguf may be closed afterwards
 * (everything is copied). */
qv_status qv_tokenizer_load_gguf(const struct qv_gguf *g, qv_tokenizer **out, qv_error *err);

/* path = HF model dir (tokenizer.json [+ tokenizer_config.json]), a tokenizer.json file, or a
 * .gguf file (only metadata is read; the weights are not touched). */
qv_status qv_tokenizer_load_path(const char *path, qv_tokenizer **out, qv_error *err);

/* Accepts NULL. */
void qv_tokenizer_free(qv_tokenizer *t);

/* Encodes `len` bytes of text. Special/added tokens written in the text are recognised (HF
 * default, split_special_tokens=false). add_special_tokens applies the post-processor
 * (e.g. BOS for Llama). *ids is owned by the caller (qv_free); it is non-NULL on success even
 * when *n_ids is 0. Errors: QV_ERR_NOMEM, QV_ERR_LIMIT (regex engine limit). Thread: any. */
qv_status qv_tokenizer_encode(const qv_tokenizer *t, const char *text, size_t len,
                              bool add_special_tokens, int32_t **ids, size_t *n_ids, qv_error *err);

/* Like qv_tokenizer_encode; parse_special=false treats the text of special added tokens as
 * plain text (HF split_special_tokens / encode_special_tokens=true); non-special added tokens
 * are still recognised. */
qv_status qv_tokenizer_encode_ex(const qv_tokenizer *t, const char *text, size_t len,
                                 bool add_special_tokens, bool parse_special, int32_t **ids,
                                 size_t *n_ids, qv_error *err);

/* Decodes ids to text like HF `Tokenizer.decode` (clean_up_tokenization_spaces is not applied).
 * Unknown ids are skipped. *text is owned by the caller (qv_free), NUL-terminated, valid UTF-8;
 * *len excludes the NUL (len may be NULL). Thread: any. */
qv_status qv_tokenizer_decode(const qv_tokenizer *t, const int32_t *ids, size_t n,
                              bool skip_special_tokens, char **text, size_t *len, qv_error *err);

int qv_tokenizer_n_vocab(const qv_tokenizer *t);
int32_t qv_tokenizer_bos(const qv_tokenizer *t);             /* -1 if none */
int32_t qv_tokenizer_eos(const qv_tokenizer *t);             /* -1 if none */
bool qv_tokenizer_is_eog(const qv_tokenizer *t, int32_t id); /* EOS/EOT/<|im_end|>... */
/* The end-of-generation ids (at most 16): *ids is borrowed; returns how many. */
int qv_tokenizer_eog_ids(const qv_tokenizer *t, const int32_t **ids);
/* True for added tokens marked special (skipped by skip_special_tokens). */
bool qv_tokenizer_is_special(const qv_tokenizer *t, int32_t id);
/* Token text as stored in the vocabulary (e.g. "Ġthe"); NULL for unknown ids. Borrowed. */
const char *qv_tokenizer_token_text(const qv_tokenizer *t, int32_t id, size_t *len);
/* The bytes token `id` adds to a text it follows: the decoder chain applied to the token as
 * for a token in the middle of a text (byte-level characters to bytes, <0xXX> byte tokens,
 * Replace, the metaspace as a space, or dropped when a Fuse precedes it as HF does for the
 * first element, Strip unless a Fuse precedes it), written to buf[cap] with the
 * length in *len. Raw: a byte-level token may hold part of a UTF-8 character. Returns false for
 * special tokens, unknown ids and tokens of more than cap bytes. Thread: any. */
bool qv_tokenizer_token_bytes(const qv_tokenizer *t, int32_t id, uint8_t *buf, size_t cap,
                              size_t *len);
/* Id of an exact token text (added tokens first, then the model vocabulary); -1 if absent. */
int32_t qv_tokenizer_token_id(const qv_tokenizer *t, const char *text, size_t len);
/* Raw chat template source (tokenizer_config.json / GGUF) or NULL. Borrowed. */
const char *qv_tokenizer_chat_template(const qv_tokenizer *t);

/* ---- streaming detokenizer (TOKENIZER.md section 8) ---- */
typedef struct qv_detok qv_detok;

/* Creates a streaming decoder. `stops` are copied. Owner: caller (qv_detok_free).
 * Errors: QV_ERR_NOMEM, QV_ERR_INVALID (NULL tokenizer). Thread: the result is confined to the
 * calling thread; the tokenizer must outlive it. */
qv_status qv_detok_create(const qv_tokenizer *t, const char *const *stops, size_t n_stops,
                          bool skip_special_tokens, qv_detok **out);
/* Gives the stream the ids that precede the generated ones (the prompt; its last few are
 * kept), so the first generated tokens decode in context: a SentencePiece "▁Paris" after a
 * prompt streams " Paris" as `decode(prompt + generated) - decode(prompt)` does, where decoding
 * it alone would strip the space. Context ending inside a character is shortened (or dropped).
 * Call before the first qv_detok_push. Errors: QV_ERR_INVALID after a push, QV_ERR_NOMEM. */
qv_status qv_detok_prime(qv_detok *d, const int32_t *ids, size_t n);
/* Feeds one generated id. Sets *text and *len to newly emittable bytes (valid UTF-8, never
 * the start of a possible stop string); pointer valid until the next call. *finished is
 * set when a stop string matched (text truncated before it) or id is end-of-generation. */
qv_status qv_detok_push(qv_detok *d, int32_t id, const char **text, size_t *len, bool *finished);
/* End of generation for another reason (max tokens): flush held-back text
 * (incomplete UTF-8 becomes U+FFFD). */
qv_status qv_detok_flush(qv_detok *d, const char **text, size_t *len);
/* Index (0-based) of the stop string that matched, or -1. */
int qv_detok_stop_index(const qv_detok *d);
/* vLLM min_tokens: stop strings match only in text that arrives after the first n pushed
 * tokens (text before is sent as it comes). Call before the first push. */
void qv_detok_set_min_tokens(qv_detok *d, size_t n);
/* vLLM include_stop_str_in_output: a matched stop string ends the text instead of being cut
 * off with what follows it. Call before the first push. */
void qv_detok_set_include_stop(qv_detok *d, bool on);
void qv_detok_free(qv_detok *d);

/* ---- chat templates (TOKENIZER.md section 7) ---- */
/* One tool call of an assistant message (OpenAI's tool_calls[i].function). */
typedef struct qv_chat_call {
    const char *name;
    const char *arguments; /* the text of a JSON object */
    const char *id;        /* the call's id, or NULL (only Mistral's template writes it) */
} qv_chat_call;

typedef struct qv_chat_msg {
    const char *role;
    const char *content;
    const qv_chat_call *calls; /* an assistant's tool calls (n_calls of them), or NULL */
    size_t n_calls;
    const char *tool_call_id; /* a tool result's call id, or NULL (Mistral's template) */
} qv_chat_msg;

/* Renders messages to a prompt string like transformers' apply_chat_template(tokenize=False).
 * template_name: NULL detects the family from the tokenizer's template source; otherwise a
 * llama.cpp-compatible name: chatml, llama3, llama3.1, llama3.2, llama2, llama2-sys,
 * llama2-sys-bos, llama2-sys-strip, mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7,
 * mistral-v7-tekken, mistral-v0.3 / mistral-nemo (Mistral-7B-Instruct-v0.3's and
 * Mistral-Nemo-Instruct-2407's own templates, with tools), or qwen2.5 (ChatML with Qwen2.5's
 * default system prompt and tool format). The rendered text contains the special-token strings
 * (e.g. "<|im_start|>"); encode it with add_special_tokens=false. *out owned by caller (qv_free).
 * Errors: QV_ERR_UNSUPPORTED for an unknown name or an undetectable template, QV_ERR_INVALID for
 * bad messages (e.g. non-alternating roles where the format requires it). Thread: any. */
qv_status qv_chat_render(const qv_tokenizer *t, const char *template_name /* NULL: detect */,
                         const qv_chat_msg *msgs, size_t n_msgs, bool add_generation_prompt,
                         char **out, qv_error *err);
/* The same with tools: the JSON text of an OpenAI `tools` list (NULL: none). Templates that
 * render tools write them byte for byte as the Jinja template (`tojson` = Python's json.dumps):
 * Qwen2.5's (detected by its tool instructions, or named "qwen2.5") into the system turn, calls
 * as <tool_call> blocks and tool results as <tool_response> blocks of a user turn; Llama 3.1's
 * and 3.2's into the first user turn, one call per assistant message; Mistral v0.3's / Nemo's as
 * [AVAILABLE_TOOLS] before the last user turn, calls as [TOOL_CALLS] with their 9-character
 * ids, results as [TOOL_RESULTS] with their tool_call_id; the
 * others ignore the tools, as their templates do, and write an assistant's calls after its
 * content as the compact JSON text [{"name":...,"arguments":{...}}] (quiver's convention: what
 * a tool_choice "required" answer is). Errors as above; QV_ERR_INVALID for tools or arguments
 * that are not valid JSON. */
qv_status qv_chat_render_tools(const qv_tokenizer *t, const char *template_name,
                               const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                               size_t tools_len, bool add_generation_prompt, char **out,
                               qv_error *err);
/* The same, with the date a template prints as today's (Llama 3.2's strftime_now("%d %b %Y"),
 * e.g. "05 Mar 2026"); NULL: today's local date. Llama 3.1 / 3.3 print a fixed date. */
qv_status qv_chat_render_dated(const qv_tokenizer *t, const char *template_name,
                               const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                               size_t tools_len, bool add_generation_prompt, const char *date,
                               char **out, qv_error *err);
/* The same, with the chat_template_kwargs quiver renders (vLLM passes them to the Jinja
 * template as variables): date_string (NULL: none), which Llama 3.1 / 3.2's templates print
 * in place of their own date. */
qv_status qv_chat_render_kw(const qv_tokenizer *t, const char *template_name,
                            const qv_chat_msg *msgs, size_t n_msgs, const char *tools,
                            size_t tools_len, bool add_generation_prompt, const char *date,
                            const char *date_string, char **out, qv_error *err);
/* Whether the template (NULL: detected) reads variable `var` of chat_template_kwargs: Llama
 * 3.1 / 3.2's date_string, tools_in_user_message, builtin_tools and custom_tools. The other
 * templates quiver renders read none, so such kwargs change nothing there, as with Jinja. */
bool qv_chat_template_reads(const qv_tokenizer *t, const char *template_name, const char *var);

/* How a template writes tools and calls, so that a free answer's calls can be read back:
 * HERMES: <tool_call>{"name": ..., "arguments": ...}</tool_call> blocks (Qwen2.5);
 * LLAMA_JSON: {"name": ..., "parameters": ...} as the whole answer (Llama 3.1 / 3.2 / 3.3);
 * MISTRAL: [TOOL_CALLS] [{"name": ..., "arguments": ...}, ...] (Mistral v0.3, Nemo), whose call ids
 * must be 9 letters or digits. */
typedef enum qv_chat_tool_format {
    QV_CHAT_TOOLS_NONE = 0,
    QV_CHAT_TOOLS_HERMES,
    QV_CHAT_TOOLS_LLAMA_JSON,
    QV_CHAT_TOOLS_MISTRAL,
} qv_chat_tool_format;
qv_chat_tool_format qv_chat_tools_format(const qv_tokenizer *t, const char *template_name);

/* Whether the template qv_chat_render would use (template_name NULL: detected) writes tools
 * into the prompt. */
bool qv_chat_renders_tools(const qv_tokenizer *t, const char *template_name);

/* The template family name that qv_chat_render would use with template_name NULL ("chatml",
 * "llama3", ...), or NULL when the template is missing or unknown. */
const char *qv_chat_detect(const qv_tokenizer *t);

/* Bytes of leading whitespace in s[0..n) as Python's str.lstrip() removes it (str.isspace:
 * ASCII \t-\r, \x1c-\x1f and space, U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029,
 * U+202F, U+205F, U+3000); stops at invalid UTF-8. */
size_t qv_py_lstrip_len(const char *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* QV_TOKENIZER_H */
