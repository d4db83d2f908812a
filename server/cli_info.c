/*
 * cli_info.c - `quiver info --model PATH`: loads a model (HF directory or GGUF file) and prints
 * its architecture, sizes, dtypes and memory use (qv_model_print_info). Not a benchmark: it
 * never runs the forward pass. Main thread only.
 */
#include <stdio.h>
#include <string.h>

#include "engine/model.h"
#include "server/cli.h"

static void info_usage(FILE *f) {
    fprintf(f, "usage: quiver info --model PATH [--quiet]\n\n"
               "Loads PATH (a Hugging Face model directory with config.json and safetensors, or a\n"
               ".gguf file) and prints architecture, layers, dimensions, heads, vocab, RoPE,\n"
               "tensor dtypes, parameter count, weight memory and KV-cache bytes per token.\n\n"
               "options:\n"
               "  --model PATH   model directory or .gguf file (required)\n"
               "  --quiet        do not print load-time log lines\n"
               "  -h, --help     show this help\n");
}

int qv_cli_info(int argc, char **argv) {
    const char *model = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            info_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strncmp(argv[i], "--model=", 8)) {
            model = argv[i] + 8;
        } else if (!strcmp(argv[i], "--quiet")) {
            qv_log_set_level(QV_LOG_WARN);
        } else {
            fprintf(stderr, "quiver info: unknown or incomplete option '%s'\n", argv[i]);
            info_usage(stderr);
            return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "quiver info: --model PATH is required\n");
        info_usage(stderr);
        return 2;
    }
    qv_model *m = NULL;
    qv_error err = {0};
    qv_status st = qv_model_load(model, &m, &err);
    if (st != QV_OK) {
        fprintf(stderr, "quiver info: %s\n", err.msg);
        return 1;
    }
    qv_model_print_info(m, stdout);
    qv_model_free(m);
    return 0;
}
