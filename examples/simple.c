/* simple: load a model, continue a prompt, stream the text to stdout.
 *
 *   cc simple.c $(pkg-config --cflags --libs bonsai) -o simple
 *   ./simple -n 64 --temp 0 model.gguf "Once upon a time"
 *
 * The text goes to stdout as it is generated; token counts and speeds go to stderr.
 */
#include <bonsai/bonsai.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Called by bonsai_generate() for every new token with its text (whole UTF-8 characters). */
static bool print_piece(int32_t token, const char *text, size_t len, float logprob, void *user_data)
{
    (void)token, (void)logprob, (void)user_data;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    return true; /* false would stop the generation */
}

static void usage(const char *argv0)
{
    fprintf(stderr,
            "usage: %s [-n MAX_TOKENS] [--temp T] [--seed S] MODEL.gguf PROMPT\n"
            "  -n N       generate at most N tokens (default 128)\n"
            "  --temp T   sampling temperature (default 0.8; 0 picks the most likely token)\n"
            "  --seed S   random seed (default 0: the same seed gives the same text)\n",
            argv0);
}

int main(int argc, char **argv)
{
    long max_tokens = 128;
    float temperature = 0.8f;
    unsigned long long seed = 0;
    const char *model_path = NULL, *prompt = NULL;
    bool ok = true;
    for (int i = 1; i < argc && ok; i++) {
        const char *a = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (!strcmp(a, "-n") && value) {
            max_tokens = strtol(value, &end, 10);
            ok = max_tokens > 0 && max_tokens <= 1L << 24;
        } else if (!strcmp(a, "--temp") && value) {
            temperature = strtof(value, &end);
            ok = temperature >= 0.0f;
        } else if (!strcmp(a, "--seed") && value) {
            seed = strtoull(value, &end, 10);
        } else if (a[0] == '-' && a[1]) {
            ok = false; /* an unknown option, or one without its value */
        } else if (!model_path) {
            model_path = a;
        } else if (!prompt) {
            prompt = a;
        } else {
            ok = false;
        }
        if (end) { /* the option took the next argument: a number, nothing after it */
            ok = ok && end != value && *end == 0;
            i++;
        }
    }
    if (!ok || !model_path || !prompt) {
        usage(argv[0]);
        return 2;
    }

    /* 1. The model: weights are mapped from the file, nothing is converted. */
    bonsai_model *model = NULL;
    bonsai_status st = bonsai_model_load(model_path, NULL, &model);
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n", bonsai_last_error());
        return 1;
    }

    /* 2. A session: the compute backend and the KV cache (default context and threads). */
    bonsai_session *session = NULL;
    st = bonsai_session_create(model, NULL, &session);

    /* 3. A sampler: the usual chain (top-k, top-p, min-p, temperature, random draw). */
    bonsai_sampler *sampler = NULL;
    if (st == BONSAI_OK) {
        bonsai_sampler_params sp;
        bonsai_sampler_params_init(&sp);
        sp.temperature = temperature; /* <= 0: greedy */
        sp.seed = seed;
        st = bonsai_sampler_create_default(&sp, &sampler);
    }

    /* 4. Generate, streaming each piece through print_piece(). */
    bonsai_generate_stats stats = {.struct_size = sizeof stats};
    if (st == BONSAI_OK) {
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp);
        gp.max_tokens = (uint32_t)max_tokens;
        gp.sampler = sampler;
        gp.on_token = print_piece;
        fputs(prompt, stdout);
        st = bonsai_generate(session, prompt, &gp, &stats);
        putchar('\n');
    }

    int rc = 0;
    if (st != BONSAI_OK) {
        fprintf(stderr, "error: %s\n", bonsai_last_error());
        rc = 1;
    } else {
        static const char *const reasons[] = {"none",         "end of text", "token limit",
                                              "stop string",  "cancelled",   "context full",
                                              "JSON complete"};
        unsigned r = (unsigned)stats.stop_reason;
        fprintf(stderr,
                "prompt: %u tokens in %.1f ms (%.1f tok/s); generated: %u tokens in %.1f ms "
                "(%.1f tok/s); stopped: %s; backend: %s\n",
                stats.n_prompt, stats.prompt_ms, stats.prompt_tps, stats.n_generated,
                stats.generate_ms, stats.generate_tps,
                r < sizeof reasons / sizeof *reasons ? reasons[r] : "?",
                bonsai_session_backend(session));
    }

    /* 5. Free in any order: a session keeps its model alive until it goes. */
    bonsai_sampler_free(sampler);
    bonsai_session_free(session);
    bonsai_model_free(model);
    return rc;
}
