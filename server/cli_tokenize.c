/*
 * cli_tokenize.c - `quiver tokenize` (text -> JSON array of ids) and `quiver detokenize`
 * (JSON array of ids -> text). Only the tokenizer is loaded (tokenizer.json / GGUF metadata),
 * never the weights. Main thread only. Errors: one line on stderr, exit 1; usage errors exit 2.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "server/cli.h"

static void tokenize_usage(FILE *f) {
    fprintf(f, "usage: quiver tokenize --model PATH --text TEXT [--no-special] [--add-special]\n\n"
               "Prints the token ids of TEXT as a JSON array, like Hugging Face\n"
               "tokenizer.encode(TEXT, add_special_tokens=False).\n\n"
               "options:\n"
               "  --model PATH    HF model directory (tokenizer.json), tokenizer.json, or .gguf\n"
               "  --text TEXT     the text to encode (required)\n"
               "  --no-special    treat special-token text such as <|im_end|> as plain text\n"
               "  --add-special   apply the post-processor (e.g. BOS for Llama)\n"
               "  -h, --help      show this help\n");
}

static void detokenize_usage(FILE *f) {
    fprintf(f, "usage: quiver detokenize --model PATH --ids JSON [--skip-special]\n\n"
               "Prints the text of a JSON array of token ids (e.g. '[1, 2, 3]') followed by a\n"
               "newline, like Hugging Face tokenizer.decode(ids).\n\n"
               "options:\n"
               "  --model PATH      HF model directory (tokenizer.json), tokenizer.json, or .gguf\n"
               "  --ids JSON        the ids (required)\n"
               "  --skip-special    drop special tokens (skip_special_tokens=True)\n"
               "  -h, --help        show this help\n");
}

/* Matches "--name VALUE" or "--name=VALUE"; advances *i. */
static bool opt_value(int argc, char **argv, int *i, const char *name, const char **out) {
    size_t n = strlen(name);
    if (!strcmp(argv[*i], name) && *i + 1 < argc) {
        *out = argv[++*i];
        return true;
    }
    if (!strncmp(argv[*i], name, n) && argv[*i][n] == '=') {
        *out = argv[*i] + n + 1;
        return true;
    }
    return false;
}

static qv_tokenizer *load(const char *cmd, const char *model) {
    qv_tokenizer *t = NULL;
    qv_error err = {0};
    if (qv_tokenizer_load_path(model, &t, &err) != QV_OK) {
        fprintf(stderr, "quiver %s: %s\n", cmd, err.msg);
        return NULL;
    }
    return t;
}

int qv_cli_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL;
    bool parse_special = true, add_special = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--model", &model) ||
                   opt_value(argc, argv, &i, "--text", &text)) {
            continue;
        } else if (!strcmp(argv[i], "--no-special")) {
            parse_special = false;
        } else if (!strcmp(argv[i], "--add-special")) {
            add_special = true;
        } else {
            fprintf(stderr, "quiver tokenize: unknown or incomplete option '%s'\n", argv[i]);
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (!model || !text) {
        fprintf(stderr, "quiver tokenize: --model PATH and --text TEXT are required\n");
        tokenize_usage(stderr);
        return 2;
    }
    qv_tokenizer *t = load("tokenize", model);
    if (!t) return 1;
    int32_t *ids = NULL;
    size_t n = 0;
    qv_error err = {0};
    qv_status st =
        qv_tokenizer_encode_ex(t, text, strlen(text), add_special, parse_special, &ids, &n, &err);
    if (st != QV_OK) {
        fprintf(stderr, "quiver tokenize: %s\n", err.msg);
        qv_tokenizer_free(t);
        return 1;
    }
    fputc('[', stdout);
    for (size_t i = 0; i < n; i++)
        printf(i ? ", %d" : "%d", (int)ids[i]);
    fputs("]\n", stdout);
    qv_free(ids);
    qv_tokenizer_free(t);
    return 0;
}

int qv_cli_detokenize(int argc, char **argv) {
    const char *model = NULL, *json = NULL;
    bool skip = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            detokenize_usage(stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--model", &model) ||
                   opt_value(argc, argv, &i, "--ids", &json)) {
            continue;
        } else if (!strcmp(argv[i], "--skip-special")) {
            skip = true;
        } else {
            fprintf(stderr, "quiver detokenize: unknown or incomplete option '%s'\n", argv[i]);
            detokenize_usage(stderr);
            return 2;
        }
    }
    if (!model || !json) {
        fprintf(stderr, "quiver detokenize: --model PATH and --ids JSON are required\n");
        detokenize_usage(stderr);
        return 2;
    }
    cJSON *arr = cJSON_Parse(json);
    if (!cJSON_IsArray(arr)) {
        fprintf(stderr, "quiver detokenize: --ids must be a JSON array of integers\n");
        cJSON_Delete(arr);
        return 2;
    }
    size_t n = (size_t)cJSON_GetArraySize(arr), i = 0;
    int32_t *ids = qv_malloc((n + 1) * sizeof(*ids));
    const cJSON *it;
    int rc = 0;
    if (!ids) {
        fprintf(stderr, "quiver detokenize: out of memory\n");
        cJSON_Delete(arr);
        return 1;
    }
    cJSON_ArrayForEach(it, arr) {
        if (!cJSON_IsNumber(it) || it->valuedouble != (double)(int32_t)it->valuedouble) {
            fprintf(stderr, "quiver detokenize: --ids element %zu is not an integer\n", i);
            rc = 2;
            break;
        }
        ids[i++] = (int32_t)it->valuedouble;
    }
    cJSON_Delete(arr);
    qv_tokenizer *t = rc ? NULL : load("detokenize", model);
    if (!rc && !t) rc = 1;
    if (!rc) {
        char *text = NULL;
        size_t len = 0;
        qv_error err = {0};
        if (qv_tokenizer_decode(t, ids, n, skip, &text, &len, &err) != QV_OK) {
            fprintf(stderr, "quiver detokenize: %s\n", err.msg);
            rc = 1;
        } else {
            fwrite(text, 1, len, stdout);
            fputc('\n', stdout);
            qv_free(text);
        }
    }
    qv_tokenizer_free(t);
    qv_free(ids);
    return rc;
}
