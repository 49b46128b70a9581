/* Helpers shared by the bonsai subcommands: error lines, escaped strings, the progress bar. */
#include "cli.h"

#include <inttypes.h>
#include <unistd.h>

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
    if (pct < 0) pct = 0;
    if (pct > 100) pct = 100;
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

const char *const cli_kv_types[] = {"f16", "q8_0", NULL};
const uint32_t cli_kv_type_values[] = {BONSAI_TENSOR_F16, BONSAI_TENSOR_Q8_0};

bonsai_status cli_load_model(const char *path, bonsai_model **out)
{
    bonsai_model_params mp;
    bonsai_model_params_init(&mp);
    cli_progress_begin(&mp.progress, &mp.progress_user_data, "load");
    bonsai_status st = bonsai_model_load(path, &mp, out);
    cli_progress_end();
    return st;
}
