/*
 * The option parser of the bonsai subcommands, driven by tables.
 *
 * Each command declares a cli_command: its options (names with aliases, the kind of value and
 * its range or words, where the value goes in the command's options struct, a help line) and its
 * positional arguments. cli_parse() fills the struct from argv or says in one line what is wrong;
 * the help page (`bonsai help CMD`, `bonsai CMD --help`) is generated from the same table, so the
 * two cannot disagree.
 *
 * Syntax: options and positional arguments in any order; "--name value" or "--name=value" for
 * long options, "-n value" for short ones (the next argument is the value even when it starts
 * with '-', so "-n -1" works); "--" ends the options; "-" alone is a positional argument. A
 * repeated option replaces the earlier value, except lists (CLI_LIST), which collect every value.
 * "-h" and "--help" ask for the help page. Positional arguments fill the declared slots in order,
 * each slot taking up to its maximum.
 */
#ifndef BONSAI_CLI_ARGS_H
#define BONSAI_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum cli_kind {
    CLI_FLAG,     /* bool, set to true; takes no value */
    CLI_STRING,   /* const char *, pointing into argv */
    CLI_INT,      /* int64_t, decimal, within [min, max] */
    CLI_FLOAT,    /* float, finite */
    CLI_U64,      /* uint64_t, decimal, no minus sign */
    CLI_CHOICE,   /* int: the index of the value in `choices` (ASCII case ignored) */
    CLI_LIST,     /* const char *[capacity] and a uint32_t count: one value per occurrence */
    CLI_INT_LIST, /* int64_t[capacity] and a uint32_t count: comma-separated, within [min, max] */
} cli_kind;

typedef struct cli_option {
    const char *names; /* "-n, --n-predict": every name starts with '-' */
    const char *value; /* the value's placeholder ("N", "FILE"); NULL for CLI_FLAG */
    cli_kind kind;
    size_t offset;              /* of the field in the command's options struct */
    int64_t min, max;           /* CLI_INT, CLI_INT_LIST */
    const char *const *choices; /* CLI_CHOICE: the words, NULL-terminated */
    uint32_t capacity;          /* CLI_LIST, CLI_INT_LIST: most values */
    size_t count_offset;        /* CLI_LIST, CLI_INT_LIST: of the uint32_t count */
    bool required;              /* a usage error when absent */
    const char *def;            /* the default as the help page shows it; NULL: none shown */
    const char *help;           /* what it does (wrapped by the help printer) */
} cli_option;

typedef struct cli_positional {
    const char *name;  /* placeholder: "MODEL.gguf" */
    uint32_t min, max; /* how many (max >= 1) */
    size_t offset;     /* of a const char *[max] in the options struct; unused entries NULL */
    const char *help;
} cli_positional;

typedef struct cli_command {
    const char *name;    /* "run" */
    const char *summary; /* one line, for `bonsai help` */
    /* Forms of the command, one per line, each printed after "bonsai NAME " and wrapped (never
     * inside brackets, parentheses or quotes). */
    const char *synopsis;
    const char *description; /* paragraphs separated by blank lines; '\n' breaks a line */
    const cli_option *options;
    size_t n_options;
    const cli_positional *positionals;
    size_t n_positionals;
    const char *exit_status; /* lines "CODE<TAB>meaning" */
    const char *examples;    /* lines; those starting with "$ " are commands */
    size_t opts_size;        /* sizeof the options struct (for checks and the fuzzer) */
    int (*run)(int argc, char **argv);
} cli_command;

#define CLI_MAX_OPTIONS     64
#define CLI_MAX_POSITIONALS 8
#define CLI_MAX_LIST        64 /* capacity of a CLI_INT_LIST */
#define CLI_ERROR_SIZE      256

typedef enum cli_result {
    CLI_PARSED = 0, /* the options struct is filled */
    CLI_HELP = 1,   /* -h or --help was given */
    CLI_USAGE = 2,  /* a usage error: see cli_parsed.error */
} cli_result;

typedef struct cli_parsed {
    uint64_t given;             /* bit i: options[i] appeared */
    char error[CLI_ERROR_SIZE]; /* CLI_USAGE: "bonsai CMD: ..." (one line, no newline) */
} cli_parsed;

/*
 * Parses argv[1..argc-1] (argv[0] is the command's name) into `opts`, whose fields keep their
 * values (the defaults) unless given; positional slots are cleared first. Never prints, never
 * reads past argv[argc-1]; every string stored points into argv.
 */
cli_result cli_parse(const cli_command *cmd, int argc, char *const *argv, void *opts,
                     cli_parsed *out);

/* Whether the option with this name (any of its names) was given. */
bool cli_given(const cli_command *cmd, const cli_parsed *parsed, const char *name);

/*
 * cli_parse for a command's entry point: true to go on. False when the command is done: the help
 * page was printed on stdout (*exit_code 0) or a usage error line on stderr (*exit_code 2).
 */
bool cli_begin(const cli_command *cmd, int argc, char **argv, void *opts, cli_parsed *parsed,
               int *exit_code);

/* Prints "bonsai CMD: <message>" on one line to stderr and returns the exit code 2. */
int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The man-style page of a command: NAME, SYNOPSIS, DESCRIPTION, ARGUMENTS (when it has some),
 * OPTIONS, EXIT STATUS, EXAMPLES. */
void cli_print_help(const cli_command *cmd, FILE *f);

/* The commands, in the order `bonsai help` lists them (commands.c). */
extern const cli_command *const cli_commands[];
extern const size_t cli_n_commands;

/* The command of that name, or NULL. */
const cli_command *cli_find_command(const char *name);

/* `bonsai help`: the list of commands. */
void cli_print_commands(FILE *f);

#endif
