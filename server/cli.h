/*
 * cli.h - quiver subcommands. Each takes argc/argv starting at the subcommand name and
 * returns the process exit status (0 ok, 1 runtime error, 2 usage error).
 */
#ifndef QV_SERVER_CLI_H
#define QV_SERVER_CLI_H

int qv_cli_generate(int argc, char **argv);   /* server/cli_generate.c */
int qv_cli_chat(int argc, char **argv);       /* server/cli_generate.c */
int qv_cli_info(int argc, char **argv);       /* server/cli_info.c */
int qv_cli_tokenize(int argc, char **argv);   /* server/cli_tokenize.c */
int qv_cli_detokenize(int argc, char **argv); /* server/cli_tokenize.c */
int qv_cli_adapter(int argc, char **argv);    /* server/cli_adapter.c */

#include <stdbool.h>
#include <stddef.h>

/* vLLM's --speculative-config JSON for prompt lookup, {"method": "ngram",
 * "num_speculative_tokens": K, "prompt_lookup_min": N, "prompt_lookup_max": N,
 * "disable_by_batch_size": N}, read into spec[4] = {K, min, max, batch limit} (defaults 3, 5 and
 * 2 filled in), for qv_engine_config's spec_* fields. False with msg[cap] for another method, an
 * unknown key or a value out of range. server/serve.c. */
bool qv_cli_spec_config(const char *json, int spec[4], char *msg, size_t cap);

#endif
