/* The bonsai command-line tool: one file per subcommand, sharing these helpers. */
#ifndef BONSAI_CLI_H
#define BONSAI_CLI_H

#include "bonsai/bonsai.h"

#include "args.h"

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

/* bonsai_model_load with a progress bar ("load") on stderr when it is a terminal. */
bonsai_status cli_load_model(const char *path, bonsai_model **out);

/* The KV cache types the commands take (--kv-type): names (NULL-terminated, as a CLI_CHOICE's
 * choices) and the bonsai_tensor_type of each. */
extern const char *const cli_kv_types[];
extern const uint32_t cli_kv_type_values[];

/* The commands (each in its own file). */
extern const cli_command cli_info_command, cli_quantize_command, cli_bench_kernels_command,
    cli_synth_command, cli_eval_command, cli_bench_command, cli_run_command, cli_chat_command,
    cli_tokenize_command;

#endif
