/* bonsai quantize IN.gguf OUT.gguf --type q1_0 [--keep] */
#include "cli.h"

#include "quantize.h"

#include <inttypes.h>
#include <string.h>

static void quantize_usage(FILE *f)
{
    fprintf(f, "usage: bonsai quantize IN.gguf OUT.gguf --type q1_0 [--keep]\n"
               "\n"
               "Convert every F32, F16 and BF16 matrix (2-D, rows a multiple of 128 values) to\n"
               "Q1_0 with the reference quantizer (per 128 weights: scale = mean |w| rounded to\n"
               "fp16, sign bit w >= 0). 1-D tensors (norms) and already quantized matrices are\n"
               "copied as they are, and so is all metadata. A matrix that cannot be converted is\n"
               "an error unless --keep copies it unchanged. OUT is written to a temporary file\n"
               "and renamed into place when complete.\n");
}

int cmd_quantize(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *type = NULL;
    bsi_quantize_options opt = {0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            quantize_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
            type = argv[++i];
        } else if (!strcmp(argv[i], "--keep")) {
            opt.keep_unconvertible = true;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "bonsai quantize: unknown option '%s'\n", argv[i]);
            quantize_usage(stderr);
            return 2;
        } else if (!in) {
            in = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            fprintf(stderr, "bonsai quantize: too many arguments\n");
            return 2;
        }
    }
    if (!in || !out || !type) {
        quantize_usage(stderr);
        return 2;
    }
    if (strcmp(type, "q1_0") && strcmp(type, "Q1_0")) {
        fprintf(stderr, "bonsai quantize: unsupported --type '%s' (only q1_0)\n", type);
        return 2;
    }
    cli_progress_begin(&opt.progress, &opt.progress_user_data, "quantize");
    uint64_t n = 0;
    bonsai_status st = bsi_quantize_file(in, out, &opt, &n);
    cli_progress_end();
    if (st) return cli_error("quantize", st);
    printf("%s: %" PRIu64 " matrices converted to Q1_0\n", out, n);
    return 0;
}
