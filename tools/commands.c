/* The table of bonsai's subcommands (shared by main.c and the parser's fuzzer), and the two
 * commands about the tool itself: help and version. */
#include "cli.h"

#include <string.h>

/* ---- bonsai version ---- */

typedef struct version_opts {
    char unused;
} version_opts;

static int cmd_version(int argc, char **argv);

static const cli_command cli_version_command = {
    .name = "version",
    .summary = "print the library version",
    .synopsis = "",
    .description = "Prints the version of the library the tool runs with and its ABI version, as "
                   "\"bonsai VERSION (ABI N)\". `bonsai --version` does the same.",
    .exit_status = "0\tthe version was printed\n2\ta usage error (an argument was given)",
    .examples = "The version, such as \"bonsai 0.1.0 (ABI 1)\":\n$ bonsai version",
    .opts_size = sizeof(version_opts),
    .run = cmd_version,
};

static int cmd_version(int argc, char **argv)
{
    version_opts o = {0};
    cli_parsed p;
    int rc;
    if (!cli_begin(&cli_version_command, argc, argv, &o, &p, &rc)) return rc;
    printf("bonsai %s (ABI %u)\n", bonsai_version_string(), bonsai_abi_version());
    return 0;
}

/* ---- bonsai help ---- */

typedef struct help_opts {
    const char *command[1];
} help_opts;

static int cmd_help(int argc, char **argv);

static const cli_positional help_positionals[] = {
    {"COMMAND", 0, 1, offsetof(help_opts, command), "The command to describe."},
};

static const cli_command cli_help_command = {
    .name = "help",
    .summary = "list the commands, or describe one",
    .synopsis = "[COMMAND]",
    .description = "Without COMMAND, lists the commands with a line about each. With COMMAND, "
                   "prints its manual page: synopsis, description, every option with its value, "
                   "range and default, exit status and examples. `bonsai COMMAND --help` prints "
                   "the same page, and `bonsai --help` the list.",
    .positionals = help_positionals,
    .n_positionals = 1,
    .exit_status = "0\tthe list or the page was printed on standard output\n"
                   "2\ta usage error: an unknown command, more than one argument",
    .examples = "List the commands:\n$ bonsai help\nThe options of bonsai run:\n$ bonsai help run",
    .opts_size = sizeof(help_opts),
    .run = cmd_help,
};

static int cmd_help(int argc, char **argv)
{
    help_opts o = {{0}};
    cli_parsed p;
    int rc;
    if (!cli_begin(&cli_help_command, argc, argv, &o, &p, &rc)) return rc;
    if (!o.command[0]) {
        cli_print_commands(stdout);
        return 0;
    }
    const cli_command *c = cli_find_command(o.command[0]);
    if (!c) {
        /* the name as cli_parse would quote it: one line, no control bytes */
        char name[64];
        size_t n = 0;
        for (const char *s = o.command[0]; *s && n < sizeof name - 4; s++)
            name[n++] = (unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s;
        name[n] = 0;
        return cli_usage_error(&cli_help_command, "unknown command '%s%s' (bonsai help lists them)",
                               name, o.command[0][n] ? "..." : "");
    }
    cli_print_help(c, stdout);
    return 0;
}

/* ---- the table ---- */

const cli_command *const cli_commands[] = {
    &cli_info_command,     &cli_quantize_command, &cli_bench_kernels_command, &cli_synth_command,
    &cli_eval_command,     &cli_bench_command,    &cli_run_command,           &cli_chat_command,
    &cli_tokenize_command, &cli_version_command,  &cli_help_command,
};
const size_t cli_n_commands = sizeof cli_commands / sizeof cli_commands[0];

const cli_command *cli_find_command(const char *name)
{
    for (size_t i = 0; i < cli_n_commands; i++)
        if (!strcmp(name, cli_commands[i]->name)) return cli_commands[i];
    return NULL;
}

void cli_print_commands(FILE *f)
{
    fprintf(f, "usage: bonsai COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < cli_n_commands; i++)
        fprintf(f, "  %-14s %s\n", cli_commands[i]->name, cli_commands[i]->summary);
    fprintf(f, "\n`bonsai help COMMAND` or `bonsai COMMAND --help` describes a command.\n");
}
