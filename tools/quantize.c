/* bonsai quantize IN.gguf OUT.gguf --type q1_0 [--keep] */
#include "cli.h"

#include "quantize.h"

#include <inttypes.h>
#include <stddef.h>
#include <string.h>

typedef struct quantize_opts {
    int type; /* index in quantize_types */
    bool keep;
    const char *in[1], *out[1];
} quantize_opts;

static int cmd_quantize(int argc, char **argv);

static const char *const quantize_types[] = {"q1_0", NULL};

static const cli_option quantize_options[] = {
    {.names = "--type",
     .value = "TYPE",
     .kind = CLI_CHOICE,
     .offset = offsetof(quantize_opts, type),
     .choices = quantize_types,
     .required = true,
     .help = "The type to convert matrices to (case is ignored)."},
    {.names = "--keep",
     .kind = CLI_FLAG,
     .offset = offsetof(quantize_opts, keep),
     .help = "Copy a matrix that cannot be converted unchanged instead of failing."},
};

static const cli_positional quantize_positionals[] = {
    {"IN.gguf", 1, 1, offsetof(quantize_opts, in), "The model to convert."},
    {"OUT.gguf", 1, 1, offsetof(quantize_opts, out),
     "The file to write (may be IN.gguf: it is replaced only when complete)."},
};

const cli_command cli_quantize_command = {
    .name = "quantize",
    .summary = "convert a model's matrices to Q1_0",
    .synopsis = "IN.gguf OUT.gguf --type q1_0 [--keep]",
    .description =
        "Converts every F32, F16 and BF16 matrix (2-D, rows a multiple of 128 values) to Q1_0 "
        "with the reference quantizer: per block of 128 weights the scale is the mean absolute "
        "value rounded to fp16, and the sign bit is w >= 0. 1-D tensors (norms) and matrices "
        "already in Q1_0 are copied as they are, and so is all metadata.\n\n"
        "A matrix that cannot be converted (rows not a multiple of 128, or Q8_0) is an error "
        "naming the tensor, unless --keep copies it unchanged. OUT is written to a temporary file "
        "and renamed into place when complete, so a failure leaves nothing behind. A progress "
        "bar is drawn on standard error when it is a terminal.",
    .options = quantize_options,
    .n_options = sizeof quantize_options / sizeof quantize_options[0],
    .positionals = quantize_positionals,
    .n_positionals = sizeof quantize_positionals / sizeof quantize_positionals[0],
    .exit_status = "0\tconverted: the number of matrices converted is printed\n"
                   "1\tthe library's error on standard error (nothing is written)\n"
                   "2\ta usage error: missing arguments, a --type other than q1_0",
    .examples = "Convert a model, copying what cannot be converted:\n"
                "$ bonsai quantize model-f16.gguf model-q1_0.gguf --type q1_0 --keep",
    .opts_size = sizeof(quantize_opts),
    .run = cmd_quantize,
};

static int cmd_quantize(int argc, char **argv)
{
    quantize_opts o = {0};
    cli_parsed parsed;
    int rc;
    if (!cli_begin(&cli_quantize_command, argc, argv, &o, &parsed, &rc)) return rc;
    bsi_quantize_options opt = {.keep_unconvertible = o.keep};
    cli_progress_begin(&opt.progress, &opt.progress_user_data, "quantize");
    uint64_t n = 0;
    bonsai_status st = bsi_quantize_file(o.in[0], o.out[0], &opt, &n);
    cli_progress_end();
    if (st) return cli_error("quantize", st);
    printf("%s: %" PRIu64 " matrices converted to Q1_0\n", o.out[0], n);
    return 0;
}
