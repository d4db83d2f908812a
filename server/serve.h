/*
 * serve.h - `quiver serve` entry point (server/serve.c). Takes argc/argv starting at the
 * subcommand name; returns the exit status (0 after a clean drain, 1 runtime error, 2 usage).
 * Thread: main thread.
 */
#ifndef QV_SERVER_SERVE_H
#define QV_SERVER_SERVE_H

int qv_cli_serve(int argc, char **argv);

#endif
