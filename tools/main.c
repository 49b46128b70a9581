/* bonsai: the command-line tool. `bonsai help` lists the subcommands (commands.c). */
#include "cli.h"

#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        cli_print_commands(stderr);
        return 2;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h")) name = "help";
    if (!strcmp(name, "--version")) name = "version";
    const cli_command *c = cli_find_command(name);
    if (!c) {
        fprintf(stderr, "bonsai: unknown command ");
        cli_print_escaped(stderr, name, strlen(name), 60);
        fprintf(stderr, " (bonsai help lists the commands)\n");
        return 2;
    }
    return c->run(argc - 1, argv + 1);
}
