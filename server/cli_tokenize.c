/* cli_tokenize.c - placeholder until the tokenizer lands (owned by the tokenizer work). */
#include <stdio.h>

#include "server/cli.h"

int qv_cli_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "quiver tokenize: not built yet\n");
    return 1;
}

int qv_cli_detokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "quiver detokenize: not built yet\n");
    return 1;
}
