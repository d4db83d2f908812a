/*
 * main.c - the quiver command line: subcommand dispatch. The only file that may call exit().
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "engine/core.h"

#include "server/cli.h"
#include "server/serve.h"

#include "qv_version.h" /* generated at build time: QV_VERSION, QV_GIT_COMMIT */

static void usage(FILE *f) {
    fprintf(f, "usage: quiver <command> [options]\n\n"
               "commands:\n"
               "  serve       run the OpenAI-compatible HTTP server\n"
               "  generate    generate a continuation of a prompt\n"
               "  chat        chat with the model (interactive, or --message once)\n"
               "  info        print a model's architecture, sizes, dtypes and memory use\n"
               "  tokenize    print the token ids of a text as JSON\n"
               "  detokenize  print the text of a JSON list of token ids\n"
               "  adapter     inspect an adapter directory (adapter inspect PATH [--model BASE])\n"
               "  version     print the version and the commit built (also --version)\n\n"
               "run `quiver <command> --help` for a command's options\n");
}

int main(int argc, char **argv) {
    /* Every host allocation, cJSON's included, goes through qv_malloc (STYLE.md). */
    cJSON_Hooks hooks = {.malloc_fn = qv_malloc, .free_fn = qv_free};
    cJSON_InitHooks(&hooks);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
#ifdef QV_HAVE_CUDA
        const char *cuda = "cuda";
#else
        const char *cuda = "cpu only";
#endif
        printf("quiver %s (commit %s, %s)\n", QV_VERSION, QV_GIT_COMMIT, cuda);
        return 0;
    }
    if (!strcmp(cmd, "serve")) return qv_cli_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate")) return qv_cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "chat")) return qv_cli_chat(argc - 1, argv + 1);
    if (!strcmp(cmd, "info")) return qv_cli_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return qv_cli_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "detokenize")) return qv_cli_detokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "adapter")) return qv_cli_adapter(argc - 1, argv + 1);
    fprintf(stderr, "quiver: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
