/*
 * cli_adapter.c - `quiver adapter inspect PATH [--model BASE]`: loads one adapter directory
 * (PEFT or AdapterHub) and prints its kind, targets, ranks, scales, virtual tokens and size;
 * with --model it also validates the adapter against that base model and prints either
 * "compatible" or the exact refusal. Never runs the model. Main thread only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/adapters.h"
#include "engine/model.h"
#include "server/cli.h"

static void adapter_usage(FILE *f) {
    fprintf(f,
            "usage: quiver adapter inspect PATH [--model BASE] [--max-rank N] "
            "[--strict-base-name] [--quiet]\n\n"
            "Loads the adapter directory PATH (PEFT adapter_config.json +\n"
            "adapter_model.safetensors, or AdapterHub adapter_config.json + adapter.safetensors)\n"
            "and prints kind, targets, ranks, scales, virtual tokens and size in bytes.\n"
            "Pickle files (adapter_model.bin, pytorch_adapter.bin) are refused.\n\n"
            "options:\n"
            "  --model BASE          also check compatibility with this base model (HF\n"
            "                        directory or .gguf); prints the exact refusal if any\n"
            "  --max-rank N          refuse LoRA ranks above N\n"
            "  --strict-base-name    refuse (not just warn) when the adapter names another base\n"
            "  --quiet               do not print load-time log lines\n"
            "  -h, --help            show this help\n\n"
            "exit status: 0 loaded (and compatible), 1 refused or failed, 2 usage error\n");
}

static int inspect(int argc, char **argv) {
    const char *path = NULL, *model = NULL;
    qv_adapter_limits lim = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            adapter_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--model") && i + 1 < argc) {
            model = argv[++i];
        } else if (!strncmp(argv[i], "--model=", 8)) {
            model = argv[i] + 8;
        } else if (!strcmp(argv[i], "--max-rank") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1 << 20) {
                fprintf(stderr, "quiver adapter: --max-rank needs a positive integer\n");
                return 2;
            }
            lim.max_rank = (int)v;
        } else if (!strcmp(argv[i], "--strict-base-name")) {
            lim.strict_base_name = true;
        } else if (!strcmp(argv[i], "--quiet")) {
            qv_log_set_level(QV_LOG_WARN);
        } else if (argv[i][0] != '-' && !path) {
            path = argv[i];
        } else {
            fprintf(stderr, "quiver adapter: unknown or incomplete option '%s'\n", argv[i]);
            adapter_usage(stderr);
            return 2;
        }
    }
    if (!path) {
        fprintf(stderr, "quiver adapter inspect: PATH is required\n");
        adapter_usage(stderr);
        return 2;
    }
    qv_model *base = NULL;
    qv_adapter *ad = NULL;
    qv_error err = {0};
    int rc = 1;
    if (model && qv_model_load(model, &base, &err) != QV_OK) {
        fprintf(stderr, "quiver adapter: %s\n", err.msg);
        return 1;
    }
    if (qv_adapter_load(path, base, &lim, &ad, &err) != QV_OK) {
        if (base)
            printf("compatible with %s: no: %s\n", model, err.msg);
        else
            fprintf(stderr, "quiver adapter: %s\n", err.msg);
        goto done;
    }
    printf("adapter: %s\n", path);
    qv_adapter_describe(ad, stdout);
    if (base)
        printf("compatible with %s: yes\n", model);
    else
        printf("compatibility: not checked (pass --model BASE)\n");
    rc = 0;
done:
    qv_adapter_free(ad);
    qv_model_free(base);
    return rc;
}

int qv_cli_adapter(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        adapter_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "inspect")) return inspect(argc - 1, argv + 1);
    fprintf(stderr, "quiver adapter: unknown subcommand '%s'\n", argv[1]);
    adapter_usage(stderr);
    return 2;
}
