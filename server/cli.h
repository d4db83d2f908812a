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

#endif
