/*
 * fuzz_tokenizer.c - fuzz target for the tokenizer: arbitrary bytes (invalid UTF-8, NULs,
 * special-token text, huge whitespace runs) through encode (all flag combinations), decode of
 * the result and of raw ids made from the input (including out-of-range ids), the streaming
 * detokenizer with stop strings cut from the input, and chat rendering. Invariants checked:
 * no crash / sanitizer report, decode output is valid UTF-8, streamed text equals a prefix
 * relation with the full decode when no stop string is involved.
 *
 * The first input byte picks the tokenizer fixture (SmolLM2, Llama-2 legacy SPM, Qwen2 NFC,
 * added-token flags, Metaspace); fixtures are found relative to this source file.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if (!(x)) {                                                                                \
            fprintf(stderr, "fuzz_tokenizer: check failed at line %d: %s\n", __LINE__, #x);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static qv_tokenizer *g_tok[5];
static int g_loaded;

static void load_all(void) {
    const char *names[5] = {"smollm2", "llama2", "qwen2", "added", "metaspace"};
    char root[4096];
    snprintf(root, sizeof(root), "%s", __FILE__);
    char *p = strstr(root, "tests/fuzz/fuzz_tokenizer.c");
    if (p)
        *p = 0;
    else
        snprintf(root, sizeof(root), "./");
    for (int i = 0; i < 5; i++) {
        char path[4200];
        snprintf(path, sizeof(path), "%stests/fixtures/tokenizer/%s", root, names[i]);
        qv_error err = {0};
        if (qv_tokenizer_load_path(path, &g_tok[i], &err)) {
            fprintf(stderr, "fuzz_tokenizer: cannot load %s: %s\n", path, err.msg);
            abort();
        }
    }
    g_loaded = 1;
}

static int utf8_ok(const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t k = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (!k || i + k > n) return 0;
        for (size_t j = 1; j < k; j++)
            if (((unsigned char)s[i + j] & 0xC0) != 0x80) return 0;
        i += k;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_loaded) load_all();
    if (size == 0) return 0;
    const qv_tokenizer *t = g_tok[data[0] % 5];
    bool flag_a = data[0] & 0x10, flag_b = data[0] & 0x20;
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    qv_error err = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    CHECK(!(qv_tokenizer_encode_ex(t, text, n, flag_a, !flag_b, &ids, &n_ids, &err) != QV_OK));
    for (size_t i = 0; i < n_ids; i++)
        CHECK(!(ids[i] < 0 || ids[i] >= qv_tokenizer_n_vocab(t)));
    char *out = NULL;
    size_t on = 0;
    CHECK(!(qv_tokenizer_decode(t, ids, n_ids, flag_b, &out, &on, &err) != QV_OK));
    CHECK(!(!utf8_ok(out, on) || strlen(out) > on));
    qv_free(out);

    /* raw ids from the input bytes, some out of range */
    size_t nr = n / 2;
    int32_t *raw = malloc((nr + 1) * sizeof(*raw));
    for (size_t i = 0; i < nr; i++)
        raw[i] = (int32_t)(((uint32_t)data[1 + 2 * i] << 8 | data[2 + 2 * i]) %
                           (uint32_t)(qv_tokenizer_n_vocab(t) + 8)) -
                 4;
    CHECK(!(qv_tokenizer_decode(t, raw, nr, flag_a, &out, &on, &err) != QV_OK));
    CHECK(!(!utf8_ok(out, on)));
    qv_free(out);

    /* streaming with stop strings taken from the input */
    char stop1[8] = {0}, stop2[3] = {0};
    memcpy(stop1, text, n < 7 ? n : 7);
    if (n > 9) memcpy(stop2, text + 7, 2);
    const char *stops[2] = {stop1, stop2};
    qv_detok *d = NULL;
    CHECK(!(qv_detok_create(t, stops, 2, flag_b, &d) != QV_OK));
    bool fin = false;
    for (size_t i = 0; i < nr && !fin; i++) {
        const char *o;
        size_t l;
        CHECK(!(qv_detok_push(d, raw[i], &o, &l, &fin) != QV_OK));
        CHECK(!(!utf8_ok(o, l)));
    }
    const char *o;
    size_t l;
    CHECK(!(qv_detok_flush(d, &o, &l) != QV_OK));
    CHECK(!(!utf8_ok(o, l)));
    qv_detok_free(d);
    free(raw);

    /* chat rendering with the input as content */
    char *content = malloc(n + 1);
    memcpy(content, text, n);
    content[n] = 0;
    qv_chat_msg m[3] = {{.role = "system", .content = content},
                        {.role = "user", .content = content},
                        {.role = "assistant", .content = content}};
    const char *names[] = {NULL,          "chatml",     "llama3", "llama3.1",
                           "llama2-chat", "mistral-v7", "bogus"};
    char *prompt = NULL;
    qv_chat_render(t, names[data[0] % 7], m, 1 + data[0] % 3, flag_a, &prompt, &err);
    qv_free(prompt);
    /* the input as tools and as a call's arguments, through Qwen2.5's, Llama 3.x's and
     * Mistral v0.3's tool formats (Python's json.dumps of hostile JSON, indented too; Mistral's
     * members of each tool's function) and the compact text of the others */
    const qv_chat_call call = {.name = "f", .arguments = content, .id = "abcdefghi"};
    qv_chat_msg tm[3] = {{.role = "user", .content = content},
                         {.role = "assistant", .content = "", .calls = &call, .n_calls = 1},
                         {.role = "tool", .content = content, .tool_call_id = "123456789"}};
    const char *tool_names[] = {"qwen2.5", "chatml", "llama3.2", "mistral-v0.3"};
    prompt = NULL;
    qv_chat_render_tools(t, tool_names[data[0] % 4], tm, 3, content, n, flag_a, &prompt, &err);
    qv_free(prompt);
    free(content);
    qv_free(ids);
    return 0;
}
