/* chat: a multi-turn conversation with streamed replies.
 *
 *   cc chat.c $(pkg-config --cflags --libs bonsai) -o chat
 *   ./chat -s "You are a helpful assistant." model.gguf
 *   printf 'Hello!\nTell me more.\n/exit\n' | ./chat model.gguf
 *
 * Each line read from stdin is a user message; the reply streams to stdout. /reset starts a new
 * conversation, /exit (or the end of the input) quits, Ctrl-C stops a reply. The conversation
 * stays in the session's KV cache (bonsai_chat), so a turn only evaluates its new tokens.
 */
#define _POSIX_C_SOURCE 200809L /* getline, isatty */
#include <bonsai/bonsai.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The session of the reply being generated, for the Ctrl-C handler. bonsai_session_cancel() only
 * sets an atomic flag, so it may be called from a signal handler or another thread. */
static bonsai_session *volatile g_replying;

static void on_sigint(int sig)
{
    (void)sig;
    if (g_replying) bonsai_session_cancel(g_replying);
}

static bool print_piece(int32_t token, const char *text, size_t len, float logprob, void *user_data)
{
    (void)token, (void)logprob, (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true;
}

static const char *stop_reason_name(bonsai_stop_reason r)
{
    switch (r) {
    case BONSAI_STOP_EOG: return "end of turn";
    case BONSAI_STOP_MAX_TOKENS: return "token limit";
    case BONSAI_STOP_STRING: return "stop string";
    case BONSAI_STOP_CANCELLED: return "cancelled";
    case BONSAI_STOP_CONTEXT_FULL: return "context full";
    case BONSAI_STOP_CONSTRAINT: return "constraint done";
    default: return "none";
    }
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-s SYSTEM_PROMPT] [--think] [-n MAX_TOKENS] [--temp T] [--seed S]\n"
            "       [-c N_CTX] [--stats] MODEL.gguf\n"
            "  -s TEXT    system prompt (kept by /reset)\n"
            "  --think    let the model reason in <think>...</think> before answering\n"
            "  -n N       at most N tokens per reply (default 512)\n"
            "  --temp T   temperature (default 0.7; 0: greedy)\n"
            "  --seed S   random seed (default 0)\n"
            "  -c N       context length in tokens (default: the model's, at most 4096)\n"
            "  --stats    print token counts and speed after each reply (stderr)\n"
            "Commands: /reset starts a new conversation, /exit quits.\n",
            argv0);
}

int main(int argc, char **argv)
{
    const char *model_path = NULL, *system_prompt = NULL;
    bool think = false, show_stats = false, ok = true;
    long max_tokens = 512, n_ctx = 0;
    float temperature = 0.7f;
    unsigned long long seed = 0;
    for (int i = 1; i < argc && ok; i++) {
        const char *a = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "-s") && value) {
            system_prompt = value;
            i++;
        } else if (!strcmp(a, "--think")) {
            think = true;
        } else if (!strcmp(a, "--stats")) {
            show_stats = true;
        } else if (!strcmp(a, "-n") && value) {
            max_tokens = strtol(value, &end, 10);
            ok = max_tokens > 0 && max_tokens <= 1L << 24;
        } else if (!strcmp(a, "-c") && value) {
            n_ctx = strtol(value, &end, 10);
            ok = n_ctx >= 0 && n_ctx <= 1L << 24;
        } else if (!strcmp(a, "--temp") && value) {
            temperature = strtof(value, &end);
            ok = temperature >= 0.0f;
        } else if (!strcmp(a, "--seed") && value) {
            seed = strtoull(value, &end, 10);
        } else if (a[0] == '-' || model_path) {
            ok = false;
        } else {
            model_path = a;
        }
        if (end) { /* a numeric option: the whole value must be a number */
            ok = ok && end != value && *end == 0;
            i++;
        }
    }
    if (!ok || !model_path) {
        usage(argv[0]);
        return 2;
    }

    bonsai_model *model = NULL;
    bonsai_session *session = NULL;
    bonsai_sampler *sampler = NULL;
    bonsai_chat *chat = NULL;
    bonsai_status st = bonsai_model_load(model_path, NULL, &model);
    if (st == BONSAI_OK) {
        bonsai_session_params params;
        bonsai_session_params_init(&params);
        params.n_ctx = (uint32_t)n_ctx;
        st = bonsai_session_create(model, &params, &session);
    }
    if (st == BONSAI_OK) {
        bonsai_sampler_params sp;
        bonsai_sampler_params_init(&sp);
        sp.temperature = temperature;
        sp.seed = seed;
        st = bonsai_sampler_create_default(&sp, &sampler);
    }
    if (st == BONSAI_OK)
        st = bonsai_chat_create(session, system_prompt, think ? BONSAI_CHAT_ENABLE_THINKING : 0,
                                &chat);
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n", bonsai_last_error());
        bonsai_sampler_free(sampler);
        bonsai_session_free(session);
        bonsai_model_free(model);
        return 1;
    }

    /* In a terminal the user sees a "> " prompt and types; from a pipe each message is echoed
     * after "> " instead, so the transcript reads the same way. */
    bool interactive = isatty(STDIN_FILENO);
    if (interactive)
        printf("Chatting with %s. /reset starts over, /exit quits, Ctrl-C stops a reply.\n",
               bonsai_model_name(model)[0] ? bonsai_model_name(model) : model_path);

    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = (uint32_t)max_tokens;
    gp.sampler = sampler;
    gp.on_token = print_piece;

    char *line = NULL;
    size_t line_cap = 0;
    int rc = 0, turn = 0;
    for (;;) {
        if (interactive) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t n = getline(&line, &line_cap, stdin);
        if (n < 0) break; /* end of input */
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        if (n == 0) continue;
        if (!interactive) printf("> %s\n", line);

        if (!strcmp(line, "/exit") || !strcmp(line, "/quit")) break;
        if (!strcmp(line, "/reset")) {
            st = bonsai_chat_reset(chat, system_prompt);
            if (st != BONSAI_OK) {
                fprintf(stderr, "error: %s\n", bonsai_last_error());
                rc = 1;
                break;
            }
            bonsai_sampler_reset(sampler); /* same seed, same replies as a fresh start */
            printf("(new conversation)\n");
            continue;
        }
        if (line[0] == '/') {
            fprintf(stderr, "unknown command '%s' (/reset, /exit)\n", line);
            continue;
        }

        bonsai_generate_stats stats = {.struct_size = sizeof stats};
        g_replying = session;
        signal(SIGINT, on_sigint); /* Ctrl-C stops the reply, not the program */
        st = bonsai_chat_send(chat, line, &gp, &stats);
        signal(SIGINT, SIG_DFL);
        g_replying = NULL;
        printf("\n");
        fflush(stdout);
        if (st == BONSAI_ERR_CONTEXT_FULL) { /* the conversation is kept as it was */
            fprintf(stderr, "error: %s\n", bonsai_last_error());
            continue;
        }
        if (st != BONSAI_OK) {
            fprintf(stderr, "error: %s\n", bonsai_last_error());
            rc = 1;
            break;
        }
        turn++;
        if (show_stats)
            fprintf(stderr,
                    "[turn %d: prompt %u tokens (%u reused from the cache), reply %u tokens, "
                    "%.1f tok/s, stop: %s]\n",
                    turn, stats.n_prompt, stats.n_prompt_reused, stats.n_generated,
                    stats.generate_tps, stop_reason_name(stats.stop_reason));
    }
    if (rc == 0 && ferror(stdin)) {
        perror("error: reading stdin");
        rc = 1;
    }

    free(line);
    bonsai_chat_free(chat);
    bonsai_sampler_free(sampler);
    bonsai_session_free(session);
    bonsai_model_free(model);
    return rc;
}
