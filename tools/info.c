/* bonsai info MODEL.gguf: metadata (long arrays summarised) and a tensor table, like gguf-dump. */
#include "cli.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define SHOW_STRING 80 /* bytes of a string shown */
#define SHOW_HEAD   5  /* long arrays: first elements shown */
#define SHOW_TAIL   2  /* ... and last */
#define SHOW_ALL    8  /* arrays up to this many elements are shown whole */

static void print_value(const bonsai_value *v);

static void print_scalar_element(const bonsai_value *arr, bonsai_value_type t, uint64_t i)
{
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f32;
        double f64;
        bool b;
    } x;
    if (bonsai_value_array_copy(arr, t, i, 1, &x, sizeof x)) {
        fputs("?", stdout);
        return;
    }
    switch (t) {
    case BONSAI_VALUE_U8: printf("%u", x.u8); break;
    case BONSAI_VALUE_I8: printf("%d", x.i8); break;
    case BONSAI_VALUE_U16: printf("%u", x.u16); break;
    case BONSAI_VALUE_I16: printf("%d", x.i16); break;
    case BONSAI_VALUE_U32: printf("%" PRIu32, x.u32); break;
    case BONSAI_VALUE_I32: printf("%" PRId32, x.i32); break;
    case BONSAI_VALUE_U64: printf("%" PRIu64, x.u64); break;
    case BONSAI_VALUE_I64: printf("%" PRId64, x.i64); break;
    case BONSAI_VALUE_F32: printf("%.9g", x.f32); break;
    case BONSAI_VALUE_F64: printf("%.17g", x.f64); break;
    case BONSAI_VALUE_BOOL: fputs(x.b ? "true" : "false", stdout); break;
    default: fputs("?", stdout);
    }
}

static void print_element(const bonsai_value *arr, bonsai_value_type t, uint64_t i)
{
    if (t == BONSAI_VALUE_STRING) {
        const char *s;
        uint64_t len;
        if (!bonsai_value_array_string(arr, i, &s, &len)) cli_print_escaped(stdout, s, len, 40);
    } else if (t == BONSAI_VALUE_ARRAY) {
        const bonsai_value *sub;
        if (!bonsai_value_array_array(arr, i, &sub)) print_value(sub);
    } else {
        print_scalar_element(arr, t, i);
    }
}

static void print_value(const bonsai_value *v)
{
    bonsai_value_type t = bonsai_value_type_of(v);
    if (t == BONSAI_VALUE_ARRAY) {
        bonsai_value_type et;
        uint64_t n;
        bonsai_value_array_info(v, &et, &n);
        putchar('[');
        for (uint64_t i = 0; i < n; i++) {
            if (n > SHOW_ALL && i == SHOW_HEAD) {
                printf(", ...");
                i = n - SHOW_TAIL;
            }
            if (i) fputs(", ", stdout);
            print_element(v, et, i);
        }
        putchar(']');
        return;
    }
    if (t == BONSAI_VALUE_STRING) {
        const char *s;
        uint64_t len;
        bonsai_value_get_string(v, &s, &len);
        cli_print_escaped(stdout, s, len, SHOW_STRING);
        return;
    }
    /* a scalar: reuse the array printer on a one-element view is not possible; convert */
    double d;
    int64_t i64;
    uint64_t u64;
    bool b;
    if (!bonsai_value_get_bool(v, &b))
        fputs(b ? "true" : "false", stdout);
    else if (t == BONSAI_VALUE_F32 || t == BONSAI_VALUE_F64) {
        bonsai_value_to_f64(v, &d);
        printf(t == BONSAI_VALUE_F32 ? "%.9g" : "%.17g", d);
    } else if (!bonsai_value_to_i64(v, &i64))
        printf("%" PRId64, i64);
    else if (!bonsai_value_to_u64(v, &u64))
        printf("%" PRIu64, u64);
    else
        fputs("?", stdout);
}

static const char *type_label(const bonsai_value *v, char *buf, size_t size)
{
    bonsai_value_type t = bonsai_value_type_of(v);
    if (t != BONSAI_VALUE_ARRAY) return bonsai_value_type_name(t);
    bonsai_value_type et;
    uint64_t n;
    bonsai_value_array_info(v, &et, &n);
    snprintf(buf, size, "%s[%" PRIu64 "]", bonsai_value_type_name(et), n);
    return buf;
}

static void print_size(uint64_t bytes)
{
    if (bytes >= (1u << 30))
        printf("%.2f GiB", bytes / 1073741824.0);
    else if (bytes >= (1u << 20))
        printf("%.2f MiB", bytes / 1048576.0);
    else if (bytes >= 1024)
        printf("%.2f KiB", bytes / 1024.0);
    else
        printf("%" PRIu64 " B", bytes);
}

static void print_summary(const char *path, const bonsai_model *m)
{
    printf("file:          %s\n", path);
    printf("size:          %" PRIu64 " bytes (", bonsai_model_file_size(m));
    print_size(bonsai_model_file_size(m));
    printf(")\ngguf version:  %u\n", bonsai_model_gguf_version(m));
    printf("architecture:  %s\n",
           bonsai_model_architecture(m)[0] ? bonsai_model_architecture(m) : "(none)");
    printf("name:          %s\n", bonsai_model_name(m)[0] ? bonsai_model_name(m) : "(none)");
    printf("parameters:    %" PRIu64 "\n", bonsai_model_n_params(m));
    printf("vocabulary:    %u tokens\n", bonsai_model_n_vocab(m));
    printf("metadata keys: %" PRIu64 "\n", bonsai_model_meta_count(m));
    printf("tensors:       %" PRIu64 "\n", bonsai_model_tensor_count(m));
    bonsai_model_hparams h = {.struct_size = sizeof h};
    if (bonsai_model_architecture(m)[0] && !bonsai_model_hparams_get(m, &h) && h.n_layer) {
        printf("hparams:       n_layer %u, n_embd %u, n_ff %u, n_head %u, n_head_kv %u, "
               "head_dim %u, n_ctx_train %u, rms_eps %g",
               h.n_layer, h.n_embd, h.n_ff, h.n_head, h.n_head_kv, h.head_dim_k, h.n_ctx_train,
               (double)h.rms_eps);
        if (h.rope_freq_base) printf(", rope_base %g", (double)h.rope_freq_base);
        if (h.rope_scaling_factor)
            printf(", rope scaling %s x%g (orig ctx %u)", h.rope_scaling_yarn ? "yarn" : "other",
                   (double)h.rope_scaling_factor, h.rope_scaling_orig_ctx);
        putchar('\n');
    }
}

static void print_metadata(const bonsai_model *m)
{
    uint64_t n = bonsai_model_meta_count(m);
    printf("\nmetadata (%" PRIu64 " keys):\n", n);
    for (uint64_t i = 0; i < n; i++) {
        const char *key;
        const bonsai_value *v;
        char label[64];
        if (bonsai_model_meta_at(m, i, &key, &v)) continue;
        printf("%5" PRIu64 ": %-14s %-44s = ", i + 1, type_label(v, label, sizeof label), key);
        print_value(v);
        putchar('\n');
    }
}

static void print_tensors(const bonsai_model *m)
{
    uint64_t n = bonsai_model_tensor_count(m);
    printf("\ntensors (%" PRIu64 "):\n", n);
    printf("%5s  %-40s %-6s %-28s %12s %12s %12s\n", "#", "name", "type", "dims", "elements",
           "bytes", "offset");
    for (uint64_t i = 0; i < n; i++) {
        bonsai_tensor_info t = {.struct_size = sizeof t};
        if (bonsai_model_tensor_at(m, i, &t)) continue;
        char dims[64];
        int k = 0;
        for (uint32_t d = 0; d < t.n_dims; d++)
            k += snprintf(dims + k, sizeof dims - (size_t)k, "%s%" PRIu64, d ? " x " : "",
                          t.dims[d]);
        const char *tn = bonsai_tensor_type_name(t.type);
        printf("%5" PRIu64 "  %-40s %-6s %-28s %12" PRIu64 " %12" PRIu64 " %12" PRIu64 "\n", i + 1,
               t.name, tn ? tn : "?", dims, t.n_elements, t.n_bytes, t.file_offset);
    }
}

static int print_backends(void)
{
    uint32_t n = bonsai_backend_count();
    printf("%-8s %-8s %5s  %s\n", "backend", "status", "score", "detail");
    for (uint32_t i = 0; i < n; i++) {
        bonsai_backend_info b = {.struct_size = sizeof b};
        if (bonsai_backend_get(i, &b)) continue;
        const char *detail = b.usable ? b.path : b.reason;
        printf("%-8s %-8s %5d  %s\n", b.name, b.usable ? "usable" : "unusable", (int)b.score,
               detail && *detail ? detail : (b.usable ? "built in" : ""));
    }
    return 0;
}

typedef struct info_opts {
    bool no_metadata, no_tensors, backends;
    const char *file[1];
} info_opts;

static int cmd_info(int argc, char **argv);

static const cli_option info_options[] = {
    {.names = "--no-metadata",
     .kind = CLI_FLAG,
     .offset = offsetof(info_opts, no_metadata),
     .help = "Leave out the metadata listing."},
    {.names = "--no-tensors",
     .kind = CLI_FLAG,
     .offset = offsetof(info_opts, no_tensors),
     .help = "Leave out the tensor table."},
    {.names = "--backends",
     .kind = CLI_FLAG,
     .offset = offsetof(info_opts, backends),
     .help = "List the compute backends instead of describing a file: whether each is usable, "
             "its preference score, where it was loaded from or why it cannot be used. Takes no "
             "other argument."},
};

static const cli_positional info_positionals[] = {
    {"MODEL.gguf", 0, 1, offsetof(info_opts, file),
     "The GGUF file to validate and describe (required unless --backends)."},
};

const cli_command cli_info_command = {
    .name = "info",
    .summary = "show a GGUF file's metadata and tensors",
    .synopsis = "[--no-metadata] [--no-tensors] MODEL.gguf\n--backends",
    .description =
        "Validates a GGUF file (it is loaded with bonsai_model_load, memory-mapped, so every "
        "check of the format runs) and prints a summary (file size, GGUF version, architecture, "
        "name, parameter count, vocabulary, hyper-parameters), every metadata key with its type "
        "and value, and a table of tensors with type, dimensions, element count, size and file "
        "offset.\n\n"
        "Long arrays show their first 5 and last 2 elements, strings are cut after 80 bytes, and "
        "control bytes are escaped, so hostile metadata cannot drive the terminal. Options may "
        "come before or after the file name.\n\n"
        "With --backends it lists the compute backends instead.",
    .options = info_options,
    .n_options = sizeof info_options / sizeof info_options[0],
    .positionals = info_positionals,
    .n_positionals = 1,
    .exit_status = "0\tthe file loaded: the description is on standard output\n"
                   "1\tthe library refused the file or could not read it: one line on standard "
                   "error, \"bonsai info: \" followed by the library's message and status\n"
                   "2\ta usage error: no file, two files, an unknown option (one line on standard "
                   "error)",
    .examples = "Describe the TinyStories test model:\n"
                "$ bonsai info stories260K.gguf\n"
                "Only the summary:\n"
                "$ bonsai info --no-metadata --no-tensors model.gguf\n"
                "Which backends this machine can use:\n"
                "$ bonsai info --backends",
    .opts_size = sizeof(info_opts),
    .run = cmd_info,
};

static int cmd_info(int argc, char **argv)
{
    info_opts o = {0};
    cli_parsed parsed;
    int rc;
    if (!cli_begin(&cli_info_command, argc, argv, &o, &parsed, &rc)) return rc;
    if (o.backends) {
        if (o.no_metadata || o.no_tensors || o.file[0])
            return cli_usage_error(&cli_info_command, "--backends takes no other argument");
        return print_backends();
    }
    if (!o.file[0]) return cli_usage_error(&cli_info_command, "missing MODEL.gguf");
    const char *path = o.file[0];
    bonsai_model *m;
    bonsai_status st = cli_load_model(path, &m);
    if (st) return cli_error("info", st);
    print_summary(path, m);
    if (!o.no_metadata) print_metadata(m);
    if (!o.no_tensors) print_tensors(m);
    bonsai_model_free(m);
    return 0;
}
