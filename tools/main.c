/* bonsai: the command-line tool. `bonsai help` lists the subcommands. */
#include "cli.h"

#include <inttypes.h>
#include <string.h>
#include <unistd.h>

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"info", cmd_info, "show a GGUF file's metadata and tensors"},
    {"quantize", cmd_quantize, "convert a model's matrices to Q1_0"},
    {"bench-kernels", cmd_bench_kernels, "measure memory bandwidth and the 1-bit kernels"},
    {"synth", cmd_synth, "write a Bonsai-shaped test model with random weights"},
    {"eval", cmd_eval, "evaluate token ids: logits and the greedy next token"},
    {"bench", cmd_bench, "prompt and generation speed (pp/tg tokens/s)"},
    {"run", cmd_run, "generate text from a prompt, streamed (JSON output optional)"},
    {"chat", cmd_chat, "talk with a model, multi-turn, in the terminal"},
    {"tokenize", cmd_tokenize, "print the token ids of a text, or the tokenizer's speed"},
};

static int usage(FILE *f)
{
    fprintf(f, "usage: bonsai COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "  %-10s %s\n", "version", "print the library version");
    fprintf(f, "\n`bonsai COMMAND --help` describes a command.\n");
    return f == stderr ? 2 : 0;
}

int cli_error(const char *cmd, bonsai_status status)
{
    fprintf(stderr, "bonsai %s: %s (%s)\n", cmd, bonsai_last_error(), bonsai_status_string(status));
    return 1;
}

void cli_print_escaped(FILE *f, const char *s, uint64_t len, uint64_t max)
{
    fputc('"', f);
    for (uint64_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
    if (len > max) fprintf(f, "...(%" PRIu64 " bytes)", len);
}

typedef struct progress_state {
    const char *label;
    int last;
} progress_state;

static progress_state progress;

static bool draw_progress(float p, void *user_data)
{
    progress_state *s = user_data;
    int pct = (int)(p * 100.0f + 0.5f);
    if (pct == s->last) return true;
    s->last = pct;
    int filled = pct * 30 / 100;
    fprintf(stderr, "\r%s [%.*s%*s] %3d%%", s->label, filled, "##############################",
            30 - filled, "", pct);
    fflush(stderr);
    return true;
}

void cli_progress_begin(bonsai_progress_fn *fn, void **user_data, const char *label)
{
    *fn = NULL;
    *user_data = NULL;
    if (!isatty(fileno(stderr))) return;
    progress = (progress_state){label, -1};
    *fn = draw_progress;
    *user_data = &progress;
}

void cli_progress_end(void)
{
    if (progress.label && progress.last >= 0) fputc('\n', stderr);
    progress.label = NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(stderr);
    const char *name = argv[1];
    if (!strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h"))
        return usage(stdout);
    if (!strcmp(name, "version") || !strcmp(name, "--version")) {
        printf("bonsai %s (ABI %u)\n", bonsai_version_string(), bonsai_abi_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(name, commands[i].name)) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "bonsai: unknown command '%s'\n\n", name);
    return usage(stderr);
}
