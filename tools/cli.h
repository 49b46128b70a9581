/* The bonsai command-line tool: one file per subcommand, sharing these helpers. */
#ifndef BONSAI_CLI_H
#define BONSAI_CLI_H

#include "bonsai/bonsai.h"

#include <stdio.h>

/* Prints "bonsai CMD: <last error> (<status>)" to stderr and returns the exit code 1. */
int cli_error(const char *cmd, bonsai_status status);

/* Prints `s` (len bytes) with quotes, escaping control bytes, quotes and backslashes, so that
 * hostile metadata cannot send terminal escape sequences. At most `max` bytes are shown. */
void cli_print_escaped(FILE *f, const char *s, uint64_t len, uint64_t max);

/* A progress bar on stderr when it is a terminal (nothing otherwise): sets *fn and *user_data
 * for a library call; cli_progress_end() finishes the line. */
void cli_progress_begin(bonsai_progress_fn *fn, void **user_data, const char *label);
void cli_progress_end(void);

int cmd_info(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_bench_kernels(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);

#endif
