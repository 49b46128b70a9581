/* bonsai run (one prompt, streamed) and bonsai chat (interactive, multi-turn). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STOP 16

/* Options shared by run and chat. */
typedef struct gen_opts {
    const char *model, *prompt, *prompt_file, *schema_file, *system, *backend;
    const char *stop[MAX_STOP];
    uint32_t n_stop;
    long n_predict; /* -1: until the end */
    bonsai_sampler_params sp;
    bool seed_set, json, chat, think, stats, special, echo;
    long n_ctx, threads;
    uint32_t kv_type;
} gen_opts;

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
    memset(o, 0, sizeof *o);
    o->n_predict = -1;
    o->echo = true;
    o->kv_type = BONSAI_TENSOR_F16;
    bonsai_sampler_params_init(&o->sp);
    /* PrismML's defaults for Bonsai */
    o->sp.temperature = 0.5f;
    o->sp.top_k = 20;
    o->sp.top_p = 0.85f;
    o->sp.min_p = 0.0f;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || v != v) return false;
    *out = v;
    return true;
}

/* Parses one shared option at argv[*i]: 1 if taken, 0 if not an option of ours, -1 on a bad
 * value (message printed). */
static int parse_common(const char *cmd, int argc, char **argv, int *i, gen_opts *o)
{
    const char *a = argv[*i];
    const char *v = *i + 1 < argc ? argv[*i + 1] : NULL;
    long l = 0;
    bool ok = true;
#define IS(name) (!strcmp(a, name))
    if (IS("-m") || IS("--model")) {
        if (!v) goto missing;
        o->model = v;
    } else if (IS("-n") || IS("--n-predict")) {
        if (!v) goto missing;
        ok = parse_long(v, -1, 1L << 30, &o->n_predict);
    } else if (IS("--temp")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.temperature);
    } else if (IS("--top-k")) {
        if (!v) goto missing;
        ok = parse_long(v, 0, 1L << 30, &l);
        o->sp.top_k = (int32_t)l;
    } else if (IS("--top-p")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.top_p);
    } else if (IS("--min-p")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.min_p);
    } else if (IS("--repeat-penalty")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.repeat_penalty);
    } else if (IS("--repeat-last-n")) {
        if (!v) goto missing;
        ok = parse_long(v, -1, 1L << 20, &l);
        o->sp.penalty_last_n = (int32_t)l;
    } else if (IS("--presence-penalty")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.presence_penalty);
    } else if (IS("--frequency-penalty")) {
        if (!v) goto missing;
        ok = parse_float(v, &o->sp.frequency_penalty);
    } else if (IS("--seed") || IS("-s")) {
        if (!v) goto missing;
        char *end;
        errno = 0;
        unsigned long long s = strtoull(v, &end, 10);
        ok = !errno && end != v && !*end && v[0] != '-';
        o->sp.seed = s;
        o->seed_set = true;
    } else if (IS("-c") || IS("--ctx-size")) {
        if (!v) goto missing;
        ok = parse_long(v, 0, 1L << 20, &o->n_ctx);
    } else if (IS("-t") || IS("--threads")) {
        if (!v) goto missing;
        ok = parse_long(v, 0, 1024, &o->threads);
    } else if (IS("--backend")) {
        if (!v) goto missing;
        o->backend = v;
    } else if (IS("--schema")) {
        if (!v) goto missing;
        o->schema_file = v;
    } else if (IS("-sys") || IS("--system-prompt")) {
        if (!v) goto missing;
        o->system = v;
    } else if (IS("-r") || IS("--reverse-prompt") || IS("--stop")) {
        if (!v) goto missing;
        if (o->n_stop == MAX_STOP) {
            fprintf(stderr, "bonsai %s: at most %d stop strings\n", cmd, MAX_STOP);
            return -1;
        }
        o->stop[o->n_stop++] = v;
    } else if (IS("--cache-type-k") || IS("--kv-type")) {
        if (!v) goto missing;
        if (!strcmp(v, "f16"))
            o->kv_type = BONSAI_TENSOR_F16;
        else if (!strcmp(v, "q8_0"))
            o->kv_type = BONSAI_TENSOR_Q8_0;
        else
            ok = false;
    } else if (IS("--json")) {
        o->json = true;
        return 1;
    } else if (IS("--think")) {
        o->think = true;
        return 1;
    } else if (IS("--stats")) {
        o->stats = true;
        return 1;
    } else {
        return 0;
    }
#undef IS
    if (!ok) {
        fprintf(stderr, "bonsai %s: bad value '%s' for %s\n", cmd, v, a);
        return -1;
    }
    (*i)++;
    return 1;
missing:
    fprintf(stderr, "bonsai %s: %s needs a value\n", cmd, a);
    return -1;
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
    bonsai_sampler_params sp = o->sp;
    if (!o->seed_set) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    bonsai_sampler *s = NULL;
    bonsai_status st = bonsai_sampler_create(sp.seed, &s);
    if (!st && (o->json || o->schema_file)) {
        size_t len = 0;
        char *schema = NULL;
        if (o->schema_file && !(schema = read_file(o->schema_file, &len))) {
            fprintf(stderr, "cannot read %s: %s\n", o->schema_file, strerror(errno));
            bonsai_sampler_free(s);
            return BONSAI_ERR_IO;
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
    sp.kv_type = o->kv_type;
    if (o->backend) sp.backend = o->backend;
    bonsai_status st = bonsai_model_load(o->model, NULL, m);
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

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: bonsai run -m MODEL (-p PROMPT | -f FILE) [-n N] [--temp T] [--top-k K]\n"
            "                  [--top-p P] [--min-p P] [--repeat-penalty R] [--repeat-last-n N]\n"
            "                  [--presence-penalty P] [--frequency-penalty P] [--seed S]\n"
            "                  [-c N] [-t N] [--backend NAME] [--json | --schema FILE] [--chat]\n"
            "                  [--think]\n"
            "                  [-sys TEXT] [--stop TEXT]... [--special] [--no-display-prompt]\n"
            "                  [--stats]\n"
            "\n"
            "Generate a continuation of PROMPT and stream it to stdout. -n limits the new tokens\n"
            "(-1, the default: until the model ends or the context is full). Sampling defaults\n"
            "are PrismML's for Bonsai: --temp 0.5 --top-k 20 --top-p 0.85 --min-p 0; --temp 0\n"
            "is greedy; without --seed the seed is random. --chat wraps the prompt in the\n"
            "model's chat format (thinking off unless --think; -sys sets a system prompt).\n"
            "--json constrains the output to a JSON object, --schema FILE to a JSON Schema.\n"
            "--special lets PROMPT contain special tokens such as <|im_start|>. A plain prompt\n"
            "is printed before its continuation unless --no-display-prompt. --stop ends the\n"
            "output before TEXT (repeatable). --stats prints token counts and speeds to\n"
            "stderr. --backend picks where it runs: auto (default), cpu, cuda or cuda:N.\n"
            "Ctrl-C stops the generation.\n");
}

int cmd_run(int argc, char **argv)
{
    gen_opts o;
    opts_init(&o);
    for (int i = 1; i < argc; i++) {
        int r = parse_common("run", argc, argv, &i, &o);
        if (r < 0) return 2;
        if (r) continue;
        if ((!strcmp(argv[i], "-p") || !strcmp(argv[i], "--prompt")) && i + 1 < argc)
            o.prompt = argv[++i];
        else if ((!strcmp(argv[i], "-f") || !strcmp(argv[i], "--file")) && i + 1 < argc)
            o.prompt_file = argv[++i];
        else if (!strcmp(argv[i], "--chat"))
            o.chat = true;
        else if (!strcmp(argv[i], "--special"))
            o.special = true;
        else if (!strcmp(argv[i], "--no-display-prompt"))
            o.echo = false;
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            run_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "bonsai run: unknown argument '%s'\n", argv[i]);
            run_usage(stderr);
            return 2;
        }
    }
    if (!o.model || !o.prompt == !o.prompt_file || (o.json && o.schema_file)) {
        run_usage(stderr);
        return 2;
    }
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
        if (o.echo && !o.chat && !o.json && !o.schema_file) fputs(prompt, stdout);
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

static void chat_usage(FILE *f)
{
    fprintf(f,
            "usage: bonsai chat -m MODEL [-sys TEXT] [--think] [-n N] [--temp T] [--top-k K]\n"
            "                   [--top-p P] [--min-p P] [--repeat-penalty R] [--seed S]\n"
            "                   [-c N] [-t N] [--backend NAME] [--json | --schema FILE] [--stats]\n"
            "\n"
            "Talk with the model. Each line you type is a message (end a line with \\ to go\n"
            "on to the next); the conversation stays in the model's cache, so each turn only\n"
            "evaluates the new message. Commands: /reset (forget the conversation),\n"
            "/system TEXT (set the system prompt and reset), /exit. Ctrl-C stops a reply;\n"
            "Ctrl-D or Ctrl-C at the prompt exits. --stats prints token counts and speeds\n"
            "after each reply.\n");
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

int cmd_chat(int argc, char **argv)
{
    gen_opts o;
    opts_init(&o);
    for (int i = 1; i < argc; i++) {
        int r = parse_common("chat", argc, argv, &i, &o);
        if (r < 0) return 2;
        if (r) continue;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            chat_usage(stdout);
            return 0;
        }
        fprintf(stderr, "bonsai chat: unknown argument '%s'\n", argv[i]);
        chat_usage(stderr);
        return 2;
    }
    if (!o.model || (o.json && o.schema_file)) {
        chat_usage(stderr);
        return 2;
    }
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
