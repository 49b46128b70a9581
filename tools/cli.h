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

int cmd_info(int argc, char **argv);

#endif
