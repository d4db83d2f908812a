/* cli_generate.c - placeholder; replaced by the generate/chat commands. */
#include <stdio.h>

#include "server/cli.h"

int qv_cli_generate(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "quiver generate: not built yet\n");
    return 1;
}

int qv_cli_chat(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "quiver chat: not built yet\n");
    return 1;
}
