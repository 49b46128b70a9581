/*
 * libFuzzer target for the option parser of the bonsai tool (tools/args.c) with the tables of
 * every command. The input, split on NUL bytes, is an argument list; for each command cli_parse
 * runs on it (after the command's name, as main() passes it) into a zeroed options struct, twice.
 * Checked:
 *  - the tables themselves (once): fields inside the struct, aligned and not overlapping, names
 *    that start with '-' and are unique, ranges, choices, capacities;
 *  - the result is one of the three, and the same both times with the same bytes written;
 *  - a usage error is one line "bonsai CMD: ..." without control bytes;
 *  - on success: integers in their range, choices among the words, flags 0 or 1, floats finite,
 *    list counts within capacity, every string pointing into the argument list, required options
 *    given, positional counts within their bounds, options not given left at zero;
 *  - the argument strings are not modified.
 * The help page of every command is printed once (to /dev/null) as well.
 */
#include "args.h"

#include <math.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_cli: %s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_CMD(cmd, cond)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_cli: command %s: %s:%d: invariant failed: %s\n", (cmd)->name,    \
                    __FILE__, __LINE__, #cond);                                                    \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

enum { MAX_ARGS = 128 };

/* ---- the tables ---- */

static size_t field_size(const cli_option *o)
{
    switch (o->kind) {
    case CLI_FLAG: return sizeof(bool);
    case CLI_STRING: return sizeof(const char *);
    case CLI_INT: return sizeof(int64_t);
    case CLI_FLOAT: return sizeof(float);
    case CLI_U64: return sizeof(uint64_t);
    case CLI_CHOICE: return sizeof(int);
    case CLI_LIST: return o->capacity * sizeof(const char *);
    case CLI_INT_LIST: return o->capacity * sizeof(int64_t);
    }
    return 0;
}

static size_t field_align(const cli_option *o)
{
    switch (o->kind) {
    case CLI_FLAG: return alignof(bool);
    case CLI_STRING:
    case CLI_LIST: return alignof(const char *);
    case CLI_INT:
    case CLI_INT_LIST: return alignof(int64_t);
    case CLI_FLOAT: return alignof(float);
    case CLI_U64: return alignof(uint64_t);
    case CLI_CHOICE: return alignof(int);
    }
    return 1;
}

static size_t n_choices(const cli_option *o)
{
    size_t n = 0;
    while (o->choices[n]) n++;
    return n;
}

/* Marks [offset, offset + size) as used; the range must be inside the struct and free. */
static void claim(const cli_command *cmd, unsigned char *used, size_t offset, size_t size,
                  size_t align)
{
    CHECK_CMD(cmd, size > 0 && offset % align == 0);
    CHECK_CMD(cmd, offset <= cmd->opts_size && size <= cmd->opts_size - offset);
    for (size_t i = 0; i < size; i++) {
        CHECK_CMD(cmd, !used[offset + i]);
        used[offset + i] = 1;
    }
}

static void check_names(const cli_command *cmd, const cli_option *o, const char **seen,
                        size_t *n_seen)
{
    char names[256];
    CHECK_CMD(cmd, strlen(o->names) < sizeof names);
    strcpy(names, o->names);
    for (char *save = NULL, *name = strtok_r(names, ", ", &save); name;
         name = strtok_r(NULL, ", ", &save)) {
        CHECK_CMD(cmd, name[0] == '-' && name[1] && strcmp(name, "--") && !strchr(name, '='));
        CHECK_CMD(cmd, strcmp(name, "-h") && strcmp(name, "--help"));
        for (size_t k = 0; k < *n_seen; k++) CHECK_CMD(cmd, strcmp(seen[k], name));
        CHECK_CMD(cmd, *n_seen < 256);
        char *copy = strdup(name);
        CHECK(copy);
        seen[(*n_seen)++] = copy;
    }
}

static void check_table(const cli_command *cmd)
{
    CHECK_CMD(cmd, cmd->name && cmd->summary && cmd->synopsis && cmd->description &&
                       cmd->exit_status && cmd->examples && cmd->run);
    CHECK_CMD(cmd, cmd->n_options <= CLI_MAX_OPTIONS);
    CHECK_CMD(cmd, cmd->n_positionals <= CLI_MAX_POSITIONALS);
    CHECK_CMD(cmd, cmd->opts_size > 0);
    unsigned char *used = calloc(1, cmd->opts_size);
    const char *seen[256];
    size_t n_seen = 0;
    CHECK(used);
    for (size_t i = 0; i < cmd->n_options; i++) {
        const cli_option *o = &cmd->options[i];
        CHECK_CMD(cmd, o->names && o->help);
        check_names(cmd, o, seen, &n_seen);
        CHECK_CMD(cmd, (o->kind == CLI_FLAG) == (o->value == NULL));
        CHECK_CMD(cmd, !(o->kind == CLI_FLAG && o->required));
        if (o->kind == CLI_INT || o->kind == CLI_INT_LIST) CHECK_CMD(cmd, o->min <= o->max);
        if (o->kind == CLI_CHOICE) CHECK_CMD(cmd, o->choices && n_choices(o) > 0);
        if (o->kind == CLI_LIST || o->kind == CLI_INT_LIST) {
            CHECK_CMD(cmd, o->capacity > 0);
            if (o->kind == CLI_INT_LIST) CHECK_CMD(cmd, o->capacity <= CLI_MAX_LIST);
            claim(cmd, used, o->count_offset, sizeof(uint32_t), alignof(uint32_t));
        }
        claim(cmd, used, o->offset, field_size(o), field_align(o));
    }
    for (size_t k = 0; k < cmd->n_positionals; k++) {
        const cli_positional *p = &cmd->positionals[k];
        CHECK_CMD(cmd, p->name && p->help && p->max >= 1 && p->min <= p->max);
        claim(cmd, used, p->offset, p->max * sizeof(const char *), alignof(const char *));
    }
    for (size_t k = 0; k < n_seen; k++) free((void *)seen[k]);
    free(used);
    /* the help page, under the sanitizers */
    FILE *f = fopen("/dev/null", "w");
    if (f) {
        cli_print_help(cmd, f);
        fclose(f);
    }
}

/* ---- one parse ---- */

/* Whether p points into one of the argument strings (its terminating NUL included). */
static bool in_args(const void *p, char *const *argv, int argc)
{
    uintptr_t x = (uintptr_t)p;
    for (int i = 0; i < argc; i++) {
        uintptr_t a = (uintptr_t)argv[i];
        if (x >= a && x <= a + strlen(argv[i])) return true;
    }
    return false;
}

static bool all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return false;
    return true;
}

static void check_parsed(const cli_command *cmd, const unsigned char *opts, const cli_parsed *p,
                         char *const *argv, int argc)
{
    CHECK_CMD(cmd, cmd->n_options == 64 || p->given >> cmd->n_options == 0);
    for (size_t i = 0; i < cmd->n_options; i++) {
        const cli_option *o = &cmd->options[i];
        const unsigned char *field = opts + o->offset;
        bool given = p->given >> i & 1;
        CHECK_CMD(cmd, given || !o->required);
        uint32_t count = 0;
        if (o->kind == CLI_LIST || o->kind == CLI_INT_LIST)
            memcpy(&count, opts + o->count_offset, sizeof count);
        if (!given) {
            CHECK_CMD(cmd, all_zero(field, field_size(o)) && count == 0);
            continue;
        }
        switch (o->kind) {
        case CLI_FLAG: CHECK_CMD(cmd, *field == 1); break;
        case CLI_STRING: {
            const char *s;
            memcpy(&s, field, sizeof s);
            CHECK_CMD(cmd, s && in_args(s, argv, argc));
            break;
        }
        case CLI_INT: {
            int64_t v;
            memcpy(&v, field, sizeof v);
            CHECK_CMD(cmd, v >= o->min && v <= o->max);
            break;
        }
        case CLI_FLOAT: {
            float v;
            memcpy(&v, field, sizeof v);
            CHECK_CMD(cmd, isfinite(v));
            break;
        }
        case CLI_U64: break;
        case CLI_CHOICE: {
            int v;
            memcpy(&v, field, sizeof v);
            CHECK_CMD(cmd, v >= 0 && (size_t)v < n_choices(o));
            break;
        }
        case CLI_LIST: {
            CHECK_CMD(cmd, count >= 1 && count <= o->capacity);
            for (uint32_t k = 0; k < o->capacity; k++) {
                const char *s;
                memcpy(&s, field + k * sizeof s, sizeof s);
                CHECK_CMD(cmd, k < count ? s && in_args(s, argv, argc) : !s);
            }
            break;
        }
        case CLI_INT_LIST: {
            CHECK_CMD(cmd, count >= 1 && count <= o->capacity);
            for (uint32_t k = 0; k < count; k++) {
                int64_t v;
                memcpy(&v, field + k * sizeof v, sizeof v);
                CHECK_CMD(cmd, v >= o->min && v <= o->max);
            }
            break;
        }
        }
    }
    for (size_t k = 0; k < cmd->n_positionals; k++) {
        const cli_positional *pos = &cmd->positionals[k];
        uint32_t n = 0;
        for (uint32_t j = 0; j < pos->max; j++) {
            const char *s;
            memcpy(&s, opts + pos->offset + j * sizeof s, sizeof s);
            if (s) {
                CHECK_CMD(cmd, j == n && in_args(s, argv, argc)); /* filled in order */
                n++;
            }
        }
        CHECK_CMD(cmd, n >= pos->min && n <= pos->max);
    }
}

static void check_error(const cli_command *cmd, const cli_parsed *p)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "bonsai %s: ", cmd->name);
    size_t len = strnlen(p->error, sizeof p->error);
    CHECK_CMD(cmd, len < sizeof p->error);
    CHECK_CMD(cmd, !strncmp(p->error, prefix, strlen(prefix)) && len > strlen(prefix));
    for (size_t i = 0; i < len; i++)
        CHECK_CMD(cmd, (unsigned char)p->error[i] >= 0x20 && p->error[i] != 0x7f);
}

static void parse_one(const cli_command *cmd, char **argv, int argc)
{
    unsigned char *a = calloc(1, cmd->opts_size), *b = calloc(1, cmd->opts_size);
    cli_parsed pa, pb;
    CHECK(a && b);
    cli_result ra = cli_parse(cmd, argc, argv, a, &pa);
    cli_result rb = cli_parse(cmd, argc, argv, b, &pb);
    CHECK_CMD(cmd, ra == CLI_PARSED || ra == CLI_HELP || ra == CLI_USAGE);
    CHECK_CMD(cmd, ra == rb && !memcmp(a, b, cmd->opts_size));
    if (ra == CLI_USAGE) {
        check_error(cmd, &pa);
        CHECK_CMD(cmd, !strcmp(pa.error, pb.error));
    } else if (ra == CLI_PARSED) {
        CHECK_CMD(cmd, pa.given == pb.given);
        check_parsed(cmd, a, &pa, argv, argc);
        for (size_t i = 0; i < cmd->n_options; i++) {
            /* cli_given agrees with the bits, by every name */
            char names[256];
            snprintf(names, sizeof names, "%s", cmd->options[i].names);
            for (char *save = NULL, *name = strtok_r(names, ", ", &save); name;
                 name = strtok_r(NULL, ", ", &save))
                CHECK_CMD(cmd, cli_given(cmd, &pa, name) == (bool)(pa.given >> i & 1));
        }
    }
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool tables_checked;
    if (!tables_checked) {
        for (size_t i = 0; i < cli_n_commands; i++) check_table(cli_commands[i]);
        tables_checked = true;
    }
    /* argv[0] is the command's name (set per command); the arguments are exact-size copies, so
     * that AddressSanitizer sees a read past any of them */
    char *argv[MAX_ARGS + 2];
    int argc = 1;
    size_t start = 0;
    for (size_t i = 0; size && i <= size && argc <= MAX_ARGS; i++) {
        if (i < size && data[i]) continue;
        size_t n = i - start;
        char *arg = malloc(n + 1);
        CHECK(arg);
        memcpy(arg, data + start, n);
        arg[n] = 0;
        argv[argc++] = arg;
        start = i + 1;
    }
    argv[argc] = NULL;
    /* a copy to check that nothing is written to the arguments */
    char *before[MAX_ARGS + 2];
    for (int i = 1; i < argc; i++) CHECK((before[i] = strdup(argv[i])));
    for (size_t c = 0; c < cli_n_commands; c++) {
        const cli_command *cmd = cli_commands[c];
        char *name = strdup(cmd->name);
        CHECK(name);
        argv[0] = name;
        parse_one(cmd, argv, argc);
        CHECK_CMD(cmd, !strcmp(argv[0], cmd->name));
        for (int i = 1; i < argc; i++) CHECK_CMD(cmd, !strcmp(argv[i], before[i]));
        free(name);
    }
    for (int i = 1; i < argc; i++) {
        free(argv[i]);
        free(before[i]);
    }
    return 0;
}
