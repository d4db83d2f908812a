/* cli_info.c - placeholder until the model loader lands (owned by the formats work). */
#include <stdio.h>

#include "server/cli.h"

int qv_cli_info(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "quiver info: not built yet\n");
    return 1;
}
