/* bonsai run (one prompt, streamed) and bonsai chat (interactive, multi-turn). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STOP 16

/* Options of run and chat (chat has no prompt options). */
typedef struct gen_opts {
    const char *model, *prompt, *prompt_file, *schema_file, *system, *backend;
    const char *stop[MAX_STOP];
    uint32_t n_stop;
    int64_t n_predict; /* -1: until the end */
    int64_t top_k, repeat_last_n, n_ctx, threads;
    float temp, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
    uint64_t seed;
    bool seed_set; /* --seed was given */
    int kv_type;   /* index in cli_kv_types */
    bool json, chat, think, stats, special, no_display_prompt;
} gen_opts;

static int cmd_run(int argc, char **argv);
static int cmd_chat(int argc, char **argv);

/* The options run and chat share, in the order of the help page. */
#define OPTION_MODEL                                                                               \
    {                                                                                              \
        .names = "-m, --model", .value = "MODEL", .kind = CLI_STRING,                              \
        .offset = offsetof(gen_opts, model), .required = true, .help = "The GGUF model."           \
    }
#define OPTIONS_COMMON                                                                             \
    {.names = "-sys, --system-prompt",                                                             \
     .value = "TEXT",                                                                              \
     .kind = CLI_STRING,                                                                           \
     .offset = offsetof(gen_opts, system),                                                         \
     .help = "The system prompt of the chat format."},                                             \
        {.names = "--think",                                                                       \
         .kind = CLI_FLAG,                                                                         \
         .offset = offsetof(gen_opts, think),                                                      \
         .help = "Let the model think before it answers (the chat format's thinking mode)."},      \
        {.names = "-n, --n-predict",                                                               \
         .value = "N",                                                                             \
         .kind = CLI_INT,                                                                          \
         .offset = offsetof(gen_opts, n_predict),                                                  \
         .min = -1,                                                                                \
         .max = 1 << 30,                                                                           \
         .def = "-1, until the model ends or the context is full",                                 \
         .help = "The most tokens generated (per reply in a chat)."},                              \
        {.names = "--temp",                                                                        \
         .value = "T",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, temp),                                                       \
         .def = "0.5",                                                                             \
         .help = "The sampling temperature; 0 or less is greedy."},                                \
        {.names = "--top-k",                                                                       \
         .value = "K",                                                                             \
         .kind = CLI_INT,                                                                          \
         .offset = offsetof(gen_opts, top_k),                                                      \
         .min = 0,                                                                                 \
         .max = 1 << 30,                                                                           \
         .def = "20",                                                                              \
         .help = "Sample from the K most likely tokens; 0 is off."},                               \
        {.names = "--top-p",                                                                       \
         .value = "P",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, top_p),                                                      \
         .def = "0.85",                                                                            \
         .help = "Nucleus sampling: the smallest set of tokens whose probabilities reach P; 1 "    \
                 "or more is off."},                                                               \
        {.names = "--min-p",                                                                       \
         .value = "P",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, min_p),                                                      \
         .def = "0",                                                                               \
         .help = "Drop tokens less likely than P times the most likely one; 0 is off."},           \
        {.names = "--repeat-penalty",                                                              \
         .value = "R",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, repeat_penalty),                                             \
         .def = "1, off",                                                                          \
         .help = "Divide the positive logits of recent tokens by R and multiply the negative "     \
                 "ones."},                                                                         \
        {.names = "--repeat-last-n",                                                               \
         .value = "N",                                                                             \
         .kind = CLI_INT,                                                                          \
         .offset = offsetof(gen_opts, repeat_last_n),                                              \
         .min = -1,                                                                                \
         .max = 1 << 20,                                                                           \
         .def = "64",                                                                              \
         .help = "The recent tokens the penalties look at; -1 is the whole context."},             \
        {.names = "--presence-penalty",                                                            \
         .value = "P",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, presence_penalty),                                           \
         .def = "0",                                                                               \
         .help = "Subtract P from the logit of every recent token."},                              \
        {.names = "--frequency-penalty",                                                           \
         .value = "P",                                                                             \
         .kind = CLI_FLOAT,                                                                        \
         .offset = offsetof(gen_opts, frequency_penalty),                                          \
         .def = "0",                                                                               \
         .help = "Subtract P times its count from the logit of every recent token."},              \
        {.names = "-s, --seed",                                                                    \
         .value = "S",                                                                             \
         .kind = CLI_U64,                                                                          \
         .offset = offsetof(gen_opts, seed),                                                       \
         .def = "random",                                                                          \
         .help = "The seed of the sampler: the same seed, model and options give the same "        \
                 "text."},                                                                         \
        {.names = "-c, --ctx-size",                                                                \
         .value = "N",                                                                             \
         .kind = CLI_INT,                                                                          \
         .offset = offsetof(gen_opts, n_ctx),                                                      \
         .min = 0,                                                                                 \
         .max = 1 << 20,                                                                           \
         .def = "0, the model's context length, at most 4096",                                     \
         .help = "The context: the most tokens of prompt and output together."},                   \
        {.names = "-t, --threads",                                                                 \
         .value = "N",                                                                             \
         .kind = CLI_INT,                                                                          \
         .offset = offsetof(gen_opts, threads),                                                    \
         .min = 0,                                                                                 \
         .max = 1024,                                                                              \
         .def = "0, one per physical core",                                                        \
         .help = "Threads of the CPU backend."},                                                   \
        {.names = "--backend",                                                                     \
         .value = "NAME",                                                                          \
         .kind = CLI_STRING,                                                                       \
         .offset = offsetof(gen_opts, backend),                                                    \
         .def = "auto",                                                                            \
         .help = "Where it runs: auto, cpu, cuda or cuda:N."},                                     \
        {.names = "--cache-type-k, --kv-type",                                                     \
         .value = "TYPE",                                                                          \
         .kind = CLI_CHOICE,                                                                       \
         .offset = offsetof(gen_opts, kv_type),                                                    \
         .choices = cli_kv_types,                                                                  \
         .def = "f16",                                                                             \
         .help = "The type of the KV cache."},                                                     \
        {.names = "--json",                                                                        \
         .kind = CLI_FLAG,                                                                         \
         .offset = offsetof(gen_opts, json),                                                       \
         .help = "Constrain the output to a JSON object."},                                        \
        {.names = "--schema",                                                                      \
         .value = "FILE",                                                                          \
         .kind = CLI_STRING,                                                                       \
         .offset = offsetof(gen_opts, schema_file),                                                \
         .help = "Constrain the output to the JSON Schema in FILE (a subset: see the API "         \
                 "guide); excludes --json."},                                                      \
        {.names = "-r, --reverse-prompt, --stop",                                                  \
         .value = "TEXT",                                                                          \
         .kind = CLI_LIST,                                                                         \
         .offset = offsetof(gen_opts, stop),                                                       \
         .count_offset = offsetof(gen_opts, n_stop),                                               \
         .capacity = MAX_STOP,                                                                     \
         .help = "End the output before TEXT."},                                                   \
    {                                                                                              \
        .names = "--stats", .kind = CLI_FLAG, .offset = offsetof(gen_opts, stats),                 \
        .help = "Print token counts and speeds to standard error (after each reply in a chat)."    \
    }

static const cli_option run_options[] = {
    OPTION_MODEL,
    {.names = "-p, --prompt",
     .value = "PROMPT",
     .kind = CLI_STRING,
     .offset = offsetof(gen_opts, prompt),
     .help = "The prompt (or -f)."},
    {.names = "-f, --file",
     .value = "FILE",
     .kind = CLI_STRING,
     .offset = offsetof(gen_opts, prompt_file),
     .help = "Read the prompt from FILE (or -p)."},
    {.names = "--chat",
     .kind = CLI_FLAG,
     .offset = offsetof(gen_opts, chat),
     .help = "Wrap the prompt in the model's chat format as a user message."},
    {.names = "--special",
     .kind = CLI_FLAG,
     .offset = offsetof(gen_opts, special),
     .help = "Let the prompt contain special tokens such as <|im_start|>."},
    {.names = "--no-display-prompt",
     .kind = CLI_FLAG,
     .offset = offsetof(gen_opts, no_display_prompt),
     .help = "Do not print a plain prompt before its continuation."},
    OPTIONS_COMMON,
};

static const cli_option chat_options[] = {OPTION_MODEL, OPTIONS_COMMON};

const cli_command cli_run_command = {
    .name = "run",
    .summary = "generate text from a prompt, streamed (JSON output optional)",
    .synopsis = "-m MODEL (-p PROMPT | -f FILE) [-n N] [--temp T] [--top-k K] [--top-p P] "
                "[--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--presence-penalty P] "
                "[--frequency-penalty P] [--seed S] [-c N] [-t N] [--backend NAME] "
                "[--kv-type f16|q8_0] [--json | --schema FILE] [--chat] [--think] [-sys TEXT] "
                "[--stop TEXT]... [--special] [--no-display-prompt] [--stats]",
    .description =
        "Generates a continuation of PROMPT and streams it to standard output as it comes "
        "(whole UTF-8 characters only). Option names follow llama.cpp's llama-cli.\n\n"
        "Sampling defaults are PrismML's for Bonsai: --temp 0.5 --top-k 20 --top-p 0.85 --min-p "
        "0, no penalties; --temp 0 is greedy; without --seed the seed is random. The chain is: "
        "the JSON constraint, penalties, top-k, top-p, min-p, temperature, the draw.\n\n"
        "--chat wraps the prompt in the model's chat format as a user message (with -sys as the "
        "system prompt); thinking is off unless --think. --json constrains the output to a JSON "
        "object, --schema FILE to a JSON Schema; generation then ends when the document is "
        "complete, and the document is finished within -n and the context.\n\n"
        "A plain prompt is printed before its continuation (not with --chat, --json, --schema or "
        "--no-display-prompt). While the model loads, a progress bar is drawn on standard error "
        "when it is a terminal. Ctrl-C stops the generation; what was generated stays printed.",
    .options = run_options,
    .n_options = sizeof run_options / sizeof run_options[0],
    .exit_status = "0\tthe text was generated (also when stopped by Ctrl-C)\n"
                   "1\tthe model could not be loaded or run, the prompt does not fit the context, "
                   "a file could not be read (one line on standard error)\n"
                   "2\ta usage error (one line on standard error)",
    .examples = "Greedy, 60 tokens:\n"
                "$ bonsai run -m stories260K.gguf -p \"Once upon a time\" -n 60 --temp 0\n"
                "A JSON answer in the chat format:\n"
                "$ bonsai run -m Bonsai-1.7B.gguf --chat --json -p \"Describe a cat as JSON.\"\n"
                "A prompt from a file, stopping at \"The End\", with speeds:\n"
                "$ bonsai run -m model.gguf -f prompt.txt --stop \"The End\" --stats",
    .opts_size = sizeof(gen_opts),
    .run = cmd_run,
};

const cli_command cli_chat_command = {
    .name = "chat",
    .summary = "talk with a model, multi-turn, in the terminal",
    .synopsis = "-m MODEL [-sys TEXT] [--think] [-n N] [--temp T] [--top-k K] [--top-p P] "
                "[--min-p P] [--repeat-penalty R] [--seed S] [-c N] [-t N] [--backend NAME] "
                "[--json | --schema FILE] [--stop TEXT]... [--stats]",
    .description =
        "Talk with the model. Each line you type is a message (end a line with \\ to go on to "
        "the next); the conversation stays in the model's cache, so each turn only evaluates the "
        "new message. The sampling options are those of bonsai run.\n\n"
        "Commands: /reset forgets the conversation (keeping the system prompt); /system TEXT sets "
        "the system prompt (empty: none) and starts over; /exit or /quit leaves; //text sends a "
        "message that starts with /. Ctrl-C stops a reply; Ctrl-D or Ctrl-C at the prompt "
        "leaves.\n\n"
        "When the conversation no longer fits the context, the turn fails with a message and the "
        "conversation is kept: /reset, or use a larger -c. While the model loads, a progress bar "
        "is drawn on standard error when it is a terminal.",
    .options = chat_options,
    .n_options = sizeof chat_options / sizeof chat_options[0],
    .exit_status =
        "0\tthe conversation ended (end of input, /exit)\n"
        "1\tthe model could not be loaded, or a turn failed other than by a full context "
        "(one line on standard error)\n"
        "2\ta usage error (one line on standard error)",
    .examples = "A conversation with a system prompt:\n"
                "$ bonsai chat -m Bonsai-1.7B.gguf -sys \"You are terse.\" --stats\n"
                "Messages from a file, one per line:\n"
                "$ bonsai chat -m model.gguf -n 64 --seed 1 < questions.txt",
    .opts_size = sizeof(gen_opts),
    .run = cmd_chat,
};

static bonsai_session *volatile g_session; /* for the SIGINT handler */

static void on_sigint(int sig)
{
    (void)sig;
    bonsai_session *s = g_session;
    if (s)
        bonsai_session_cancel(s);
    else
        _exit(130);
}

static void catch_sigint(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

static void opts_init(gen_opts *o)
{
    bonsai_sampler_params sp;
    bonsai_sampler_params_init(&sp);
    memset(o, 0, sizeof *o);
    o->n_predict = -1;
    /* PrismML's defaults for Bonsai */
    o->temp = 0.5f;
    o->top_k = 20;
    o->top_p = 0.85f;
    o->min_p = 0.0f;
    /* the library's for the rest */
    o->repeat_penalty = sp.repeat_penalty;
    o->repeat_last_n = sp.penalty_last_n;
    o->presence_penalty = sp.presence_penalty;
    o->frequency_penalty = sp.frequency_penalty;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            char *p = realloc(buf, cap *= 2);
            if (!p) {
                free(buf);
                buf = NULL;
            }
            buf = p;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    if (len) *len = n;
    return buf;
}

/* The sampler chain: the JSON constraint first, then penalties, top-k, top-p, min-p,
 * temperature and the draw (or greedy at temperature <= 0). */
static bonsai_status make_sampler(const gen_opts *o, const bonsai_model *m, bonsai_sampler **out)
{
    bonsai_sampler_params sp;
    bonsai_sampler_params_init(&sp);
    sp.seed = o->seed_set ? o->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    sp.temperature = o->temp;
    sp.top_k = (int32_t)o->top_k;
    sp.top_p = o->top_p;
    sp.min_p = o->min_p;
    sp.repeat_penalty = o->repeat_penalty;
    sp.penalty_last_n = (int32_t)o->repeat_last_n;
    sp.presence_penalty = o->presence_penalty;
    sp.frequency_penalty = o->frequency_penalty;
    bonsai_sampler *s = NULL;
    bonsai_status st = bonsai_sampler_create(sp.seed, &s);
    if (!st && (o->json || o->schema_file)) {
        size_t len = 0;
        char *schema = NULL;
        if (o->schema_file && !(schema = read_file(o->schema_file, &len))) {
            st = bsi_fail(BONSAI_ERR_IO, "cannot read %s: %s", o->schema_file, strerror(errno));
            bonsai_sampler_free(s);
            return st;
        }
        st = bonsai_sampler_add_json(s, m, schema, len);
        free(schema);
    }
    if (!st &&
        (sp.repeat_penalty != 1.0f || sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f))
        st = bonsai_sampler_add_penalties(s, sp.penalty_last_n, sp.repeat_penalty,
                                          sp.frequency_penalty, sp.presence_penalty);
    if (sp.temperature <= 0.0f) {
        if (!st) st = bonsai_sampler_add_greedy(s);
    } else {
        if (!st && sp.top_k > 0) st = bonsai_sampler_add_top_k(s, sp.top_k);
        if (!st && sp.top_p < 1.0f) st = bonsai_sampler_add_top_p(s, sp.top_p, 1);
        if (!st && sp.min_p > 0.0f) st = bonsai_sampler_add_min_p(s, sp.min_p, 1);
        if (!st) st = bonsai_sampler_add_temperature(s, sp.temperature);
        if (!st) st = bonsai_sampler_add_dist(s);
    }
    if (st) {
        bonsai_sampler_free(s);
        return st;
    }
    *out = s;
    return BONSAI_OK;
}

static bonsai_status open_session(const gen_opts *o, bonsai_model **m, bonsai_session **s)
{
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = (uint32_t)o->n_ctx;
    sp.n_threads = (int32_t)o->threads;
    sp.kv_type = cli_kv_type_values[o->kv_type];
    if (o->backend) sp.backend = o->backend;
    bonsai_status st = cli_load_model(o->model, m);
    if (!st) st = bonsai_session_create(*m, &sp, s);
    return st;
}

static bool print_piece(int32_t token, const char *text, size_t len, float logprob, void *ud)
{
    (void)token, (void)logprob, (void)ud;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static const char *stop_name(bonsai_stop_reason r)
{
    switch (r) {
    case BONSAI_STOP_EOG: return "end of generation";
    case BONSAI_STOP_MAX_TOKENS: return "token limit";
    case BONSAI_STOP_STRING: return "stop string";
    case BONSAI_STOP_CANCELLED: return "cancelled";
    case BONSAI_STOP_CONTEXT_FULL: return "context full";
    case BONSAI_STOP_CONSTRAINT: return "JSON complete";
    default: return "none";
    }
}

static void print_stats(const bonsai_generate_stats *st)
{
    fprintf(stderr,
            "[prompt: %u tokens, %u reused, %u evaluated in %.1f ms (%.1f tok/s) | generated: %u "
            "tokens in %.1f ms (%.1f tok/s), sampling %.3f ms/token | stop: %s]\n",
            st->n_prompt, st->n_prompt_reused, st->n_prompt - st->n_prompt_reused, st->prompt_ms,
            st->prompt_tps, st->n_generated, st->generate_ms, st->generate_tps,
            st->n_generated ? st->sample_ms / st->n_generated : 0.0, stop_name(st->stop_reason));
}

static int cmd_run(int argc, char **argv)
{
    gen_opts o;
    opts_init(&o);
    cli_parsed parsed;
    int prc;
    if (!cli_begin(&cli_run_command, argc, argv, &o, &parsed, &prc)) return prc;
    o.seed_set = cli_given(&cli_run_command, &parsed, "--seed");
    if (!o.prompt == !o.prompt_file)
        return cli_usage_error(&cli_run_command, o.prompt ? "-p and -f exclude each other"
                                                          : "missing -p PROMPT or -f FILE");
    if (o.json && o.schema_file)
        return cli_usage_error(&cli_run_command, "--json and --schema exclude each other");
    char *file_text = NULL;
    if (o.prompt_file) {
        if (!(file_text = read_file(o.prompt_file, NULL))) {
            fprintf(stderr, "bonsai run: cannot read %s: %s\n", o.prompt_file, strerror(errno));
            return 1;
        }
        o.prompt = file_text;
    }
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_sampler *smp = NULL;
    char *rendered = NULL;
    int rc = 0;
    bonsai_status st = open_session(&o, &m, &s);
    if (!st) st = make_sampler(&o, m, &smp);
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = o.n_predict < 0 ? 0 : (uint32_t)o.n_predict;
    gp.sampler = smp;
    gp.stop = o.stop;
    gp.n_stop = o.n_stop;
    gp.on_token = print_piece;
    if (o.special) gp.tokenize_flags |= BONSAI_TOKENIZE_PARSE_SPECIAL;
    const char *prompt = o.prompt;
    int32_t *chat_tokens = NULL;
    uint32_t n_chat = 0;
    if (!st && o.chat) {
        bonsai_chat_message msgs[2];
        size_t n = 0, len = 0;
        if (o.system) msgs[n++] = (bonsai_chat_message){"system", o.system};
        msgs[n++] = (bonsai_chat_message){"user", o.prompt};
        uint32_t flags =
            BONSAI_CHAT_ADD_GENERATION_PROMPT | (o.think ? BONSAI_CHAT_ENABLE_THINKING : 0);
        if (o.special) { /* the prompt may hold special tokens: parse the whole text */
            st = bonsai_chat_render(msgs, n, flags, NULL, 0, &len);
            if (st == BONSAI_ERR_OUT_OF_RANGE) {
                if (!(rendered = malloc(len + 1)))
                    st = BONSAI_ERR_NO_MEMORY;
                else
                    st = bonsai_chat_render(msgs, n, flags, rendered, len + 1, &len);
            }
            prompt = rendered;
        } else { /* the template's markup only: the message stays text */
            st = bonsai_chat_tokenize(m, msgs, n, flags, NULL, 0, &n_chat);
            if (st == BONSAI_ERR_OUT_OF_RANGE) {
                if (!(chat_tokens = malloc(((size_t)n_chat + 1) * sizeof *chat_tokens)))
                    st = BONSAI_ERR_NO_MEMORY;
                else
                    st = bonsai_chat_tokenize(m, msgs, n, flags, chat_tokens, n_chat, &n_chat);
            }
        }
    }
    bonsai_generate_stats stats = {.struct_size = sizeof stats};
    if (!st) {
        g_session = s;
        catch_sigint();
        if (!o.no_display_prompt && !o.chat && !o.json && !o.schema_file) fputs(prompt, stdout);
        if (chat_tokens)
            st = bonsai_generate_tokens(s, chat_tokens, n_chat, &gp, &stats);
        else
            st = bonsai_generate(s, prompt, &gp, &stats);
        g_session = NULL;
        putchar('\n');
    }
    if (st)
        rc = cli_error("run", st);
    else if (o.stats)
        print_stats(&stats);
    free(rendered);
    free(chat_tokens);
    free(file_text);
    bonsai_sampler_free(smp);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}

/* Reads one message (lines ending in '\' continue it) into *buf; false at the end of input. */
static bool read_message(char **buf, size_t *cap, bool tty)
{
    size_t len = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t n;
    bool got = false;
    if (tty) fputs("> ", stdout), fflush(stdout);
    while ((n = getline(&line, &line_cap, stdin)) >= 0) {
        got = true;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        bool more = n > 0 && line[n - 1] == '\\';
        if (more) line[--n] = 0;
        if (len + (size_t)n + 2 > *cap) {
            size_t c = (len + (size_t)n + 2) * 2;
            char *p = realloc(*buf, c);
            if (!p) break;
            *buf = p;
            *cap = c;
        }
        memcpy(*buf + len, line, (size_t)n);
        len += (size_t)n;
        if (!more) break;
        (*buf)[len++] = '\n';
        if (tty) fputs(". ", stdout), fflush(stdout);
    }
    free(line);
    if (*buf) (*buf)[len] = 0;
    return got && *buf;
}

static int cmd_chat(int argc, char **argv)
{
    gen_opts o;
    opts_init(&o);
    cli_parsed parsed;
    int prc;
    if (!cli_begin(&cli_chat_command, argc, argv, &o, &parsed, &prc)) return prc;
    o.seed_set = cli_given(&cli_chat_command, &parsed, "--seed");
    if (o.json && o.schema_file)
        return cli_usage_error(&cli_chat_command, "--json and --schema exclude each other");
    bool tty = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO);
    bonsai_model *m = NULL;
    bonsai_session *s = NULL;
    bonsai_sampler *smp = NULL;
    bonsai_chat *chat = NULL;
    bonsai_status st = open_session(&o, &m, &s);
    if (!st) st = make_sampler(&o, m, &smp);
    if (!st) st = bonsai_chat_create(s, o.system, o.think ? BONSAI_CHAT_ENABLE_THINKING : 0, &chat);
    if (st) {
        int rc = cli_error("chat", st);
        bonsai_sampler_free(smp);
        bonsai_session_free(s);
        bonsai_model_free(m);
        return rc;
    }
    if (tty)
        printf("bonsai chat: %s (%s). /reset, /system TEXT, /exit; Ctrl-C stops a reply.\n",
               bonsai_model_name(m)[0] ? bonsai_model_name(m) : o.model, bonsai_session_backend(s));
    catch_sigint();
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = o.n_predict < 0 ? 0 : (uint32_t)o.n_predict;
    gp.sampler = smp;
    gp.stop = o.stop;
    gp.n_stop = o.n_stop;
    gp.on_token = print_piece;
    char *msg = NULL, *system = o.system ? strdup(o.system) : NULL;
    size_t cap = 0;
    int rc = 0;
    while (read_message(&msg, &cap, tty)) {
        if (!msg[0]) continue;
        if (!strcmp(msg, "/exit") || !strcmp(msg, "/quit")) break;
        if (!strcmp(msg, "/reset") || !strncmp(msg, "/system", 7)) {
            if (!strncmp(msg, "/system", 7)) {
                if (msg[7] && msg[7] != ' ') goto unknown;
                free(system);
                system = msg[7] && msg[8] ? strdup(msg + 8) : NULL;
            }
            st = bonsai_chat_reset(chat, system);
            if (st) {
                rc = cli_error("chat", st);
                break;
            }
            bonsai_sampler_reset(smp);
            if (tty) printf("(conversation reset)\n");
            continue;
        }
        if (msg[0] == '/' && msg[1] != '/') {
        unknown:
            fprintf(stderr, "unknown command %s (/reset, /system TEXT, /exit)\n", msg);
            continue;
        }
        bonsai_generate_stats stats = {.struct_size = sizeof stats};
        g_session = s;
        st = bonsai_chat_send(chat, msg[0] == '/' ? msg + 1 : msg, &gp, &stats);
        g_session = NULL;
        putchar('\n');
        fflush(stdout);
        bonsai_sampler_reset(smp);
        if (st == BONSAI_ERR_CONTEXT_FULL) {
            cli_error("chat", st);
            continue;
        }
        if (st) {
            rc = cli_error("chat", st);
            break;
        }
        if (o.stats) print_stats(&stats);
    }
    free(msg);
    free(system);
    bonsai_chat_free(chat);
    bonsai_sampler_free(smp);
    bonsai_session_free(s);
    bonsai_model_free(m);
    return rc;
}
