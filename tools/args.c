/* The table-driven option parser and help printer of the bonsai subcommands (see args.h). */
#include "args.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define SHOW_VALUE 60 /* bytes of a bad value quoted in an error */
#define HELP_WIDTH 80 /* columns of the help page */

/* ---- a bounded string builder: appends never overflow, the text stays NUL-terminated ---- */

typedef struct text {
    char *buf;
    size_t size, len;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->len + 1 >= t->size) return;
    size_t room = t->size - 1 - t->len;
    if (n > room) n = room;
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = 0;
}

static void puts_(text *t, const char *s)
{
    put(t, s, strlen(s));
}

static void putf(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(text *t, const char *fmt, ...)
{
    char tmp[CLI_ERROR_SIZE];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(t, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* `s` (at most n bytes of it) in quotes, control bytes escaped so that the message stays one
 * line and cannot drive the terminal; cut after SHOW_VALUE bytes. */
static void put_quoted(text *t, const char *s, size_t n)
{
    puts_(t, "'");
    for (size_t i = 0; i < n && s[i]; i++) {
        if (i == SHOW_VALUE) {
            puts_(t, "...");
            break;
        }
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            putf(t, "\\x%02x", c);
        else
            put(t, (const char *)&c, 1);
    }
    puts_(t, "'");
}

/* ---- names ---- */

/* Calls back for each name of "-n, --n-predict"; stops when it returns true. */
static bool each_name(const char *names, bool (*fn)(const char *name, size_t len, void *ctx),
                      void *ctx)
{
    const char *p = names;
    while (*p) {
        while (*p == ',' || *p == ' ') p++;
        const char *q = p;
        while (*q && *q != ',' && *q != ' ') q++;
        if (q > p && fn(p, (size_t)(q - p), ctx)) return true;
        p = q;
    }
    return false;
}

typedef struct name_query {
    const char *s;
    size_t len;
} name_query;

static bool same_name(const char *name, size_t len, void *ctx)
{
    const name_query *q = ctx;
    return len == q->len && !memcmp(name, q->s, len);
}

static bool has_name(const cli_option *o, const char *s, size_t len)
{
    name_query q = {s, len};
    return each_name(o->names, same_name, &q);
}

static bool last_name_fn(const char *name, size_t len, void *ctx)
{
    *(name_query *)ctx = (name_query){name, len};
    return false;
}

/* The last (longest) name, for messages about an option that was not typed. */
static name_query long_name(const cli_option *o)
{
    name_query q = {o->names, 0};
    each_name(o->names, last_name_fn, &q);
    return q;
}

static int find_option(const cli_command *cmd, const char *s, size_t len)
{
    for (size_t i = 0; i < cmd->n_options; i++)
        if (has_name(&cmd->options[i], s, len)) return (int)i;
    return -1;
}

bool cli_given(const cli_command *cmd, const cli_parsed *parsed, const char *name)
{
    int i = find_option(cmd, name, strlen(name));
    return i >= 0 && (parsed->given >> i & 1);
}

/* ---- values ---- */

/* Decimal digits only, at least one, without overflow. */
static bool parse_digits(const char *s, uint64_t *out)
{
    if (!*s) return false;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return false;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

static bool parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    bool neg = *s == '-';
    if (*s == '-' || *s == '+') s++;
    uint64_t v;
    if (!parse_digits(s, &v)) return false;
    int64_t x;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return false;
        x = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    } else {
        if (v > (uint64_t)INT64_MAX) return false;
        x = (int64_t)v;
    }
    if (x < min || x > max) return false;
    *out = x;
    return true;
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (*s == '+') s++;
    return parse_digits(s, out);
}

static bool parse_float(const char *s, float *out)
{
    /* strtof would skip leading spaces; a value is the whole argument */
    if (!*s || *s == ' ' || (*s >= '\t' && *s <= '\r')) return false;
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool same_word(const char *a, const char *b)
{
    for (;; a++, b++) {
        char x = *a >= 'A' && *a <= 'Z' ? (char)(*a - 'A' + 'a') : *a;
        char y = *b >= 'A' && *b <= 'Z' ? (char)(*b - 'A' + 'a') : *b;
        if (x != y) return false;
        if (!x) return true;
    }
}

/* "1,4,16": every item an integer in range, at most `cap` of them; spaces around items are
 * allowed. */
static bool parse_int_list(const char *s, int64_t min, int64_t max, uint32_t cap, int64_t *out,
                           uint32_t *n)
{
    uint32_t count = 0;
    char item[24];
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma ? (size_t)(comma - s) : strlen(s);
        while (len && *s == ' ') s++, len--;
        while (len && s[len - 1] == ' ') len--;
        if (!len || len >= sizeof item || count == cap) return false;
        memcpy(item, s, len);
        item[len] = 0;
        if (!parse_int(item, min, max, &out[count])) return false;
        count++;
        if (!comma) break;
        s = comma + 1;
    }
    *n = count;
    return true;
}

/* ---- parsing ---- */

static void field_put(void *opts, size_t offset, const void *value, size_t size)
{
    memcpy((char *)opts + offset, value, size);
}

/* Describes the accepted values of an option, after "expected ". */
static void put_expected(text *t, const cli_option *o)
{
    switch (o->kind) {
    case CLI_INT: putf(t, "an integer from %" PRId64 " to %" PRId64, o->min, o->max); break;
    case CLI_FLOAT: puts_(t, "a finite number"); break;
    case CLI_U64: puts_(t, "an integer from 0 to 18446744073709551615"); break;
    case CLI_CHOICE:
        puts_(t, "one of ");
        for (size_t k = 0; o->choices[k]; k++) {
            if (k) puts_(t, ", ");
            puts_(t, o->choices[k]);
        }
        break;
    case CLI_INT_LIST:
        putf(t, "up to %" PRIu32 " comma-separated integers from %" PRId64 " to %" PRId64,
             o->capacity, o->min, o->max);
        break;
    default: puts_(t, "a value"); break;
    }
}

/* Stores `value` for option `o` (typed as name[0..len)); false with the message in t. */
static bool store(const cli_option *o, const char *name, size_t len, const char *value, void *opts,
                  text *t)
{
    bool ok = true;
    switch (o->kind) {
    case CLI_FLAG: {
        bool yes = true;
        field_put(opts, o->offset, &yes, sizeof yes);
        return true;
    }
    case CLI_STRING: field_put(opts, o->offset, &value, sizeof value); return true;
    case CLI_INT: {
        int64_t v;
        if ((ok = parse_int(value, o->min, o->max, &v))) field_put(opts, o->offset, &v, sizeof v);
        break;
    }
    case CLI_FLOAT: {
        float v;
        if ((ok = parse_float(value, &v))) field_put(opts, o->offset, &v, sizeof v);
        break;
    }
    case CLI_U64: {
        uint64_t v;
        if ((ok = parse_u64(value, &v))) field_put(opts, o->offset, &v, sizeof v);
        break;
    }
    case CLI_CHOICE: {
        ok = false;
        for (int k = 0; o->choices[k]; k++)
            if (same_word(value, o->choices[k])) {
                field_put(opts, o->offset, &k, sizeof k);
                ok = true;
                break;
            }
        break;
    }
    case CLI_LIST: {
        uint32_t n;
        memcpy(&n, (char *)opts + o->count_offset, sizeof n);
        if (n >= o->capacity) {
            puts_(t, "too many ");
            put(t, name, len);
            putf(t, " (at most %" PRIu32 ")", o->capacity);
            return false;
        }
        field_put(opts, o->offset + n * sizeof value, &value, sizeof value);
        n++;
        field_put(opts, o->count_offset, &n, sizeof n);
        return true;
    }
    case CLI_INT_LIST: {
        int64_t items[CLI_MAX_LIST];
        uint32_t n = 0;
        ok = o->capacity <= CLI_MAX_LIST &&
             parse_int_list(value, o->min, o->max, o->capacity, items, &n);
        if (ok) {
            field_put(opts, o->offset, items, n * sizeof *items);
            field_put(opts, o->count_offset, &n, sizeof n);
        }
        break;
    }
    default: ok = false;
    }
    if (!ok) {
        puts_(t, "bad value ");
        put_quoted(t, value, strlen(value));
        puts_(t, " for ");
        put(t, name, len);
        puts_(t, ": expected ");
        put_expected(t, o);
    }
    return ok;
}

cli_result cli_parse(const cli_command *cmd, int argc, char *const *argv, void *opts,
                     cli_parsed *out)
{
    text t = {out->error, sizeof out->error, 0};
    out->given = 0;
    out->error[0] = 0;
    putf(&t, "bonsai %s: ", cmd->name);
    if (cmd->n_options > CLI_MAX_OPTIONS || cmd->n_positionals > CLI_MAX_POSITIONALS) {
        puts_(&t, "internal error: too many options");
        return CLI_USAGE;
    }
    uint32_t filled[CLI_MAX_POSITIONALS] = {0};
    for (size_t k = 0; k < cmd->n_positionals; k++)
        memset((char *)opts + cmd->positionals[k].offset, 0,
               cmd->positionals[k].max * sizeof(const char *));
    size_t slot = 0;
    bool options_done = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options_done || a[0] != '-' || !a[1]) { /* a positional argument */
            while (slot < cmd->n_positionals && filled[slot] == cmd->positionals[slot].max) slot++;
            if (slot == cmd->n_positionals) {
                puts_(&t, "unexpected argument ");
                put_quoted(&t, a, strlen(a));
                return CLI_USAGE;
            }
            const cli_positional *p = &cmd->positionals[slot];
            field_put(opts, p->offset + filled[slot] * sizeof a, &a, sizeof a);
            filled[slot]++;
            continue;
        }
        if (!strcmp(a, "--")) {
            options_done = true;
            continue;
        }
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return CLI_HELP;
        size_t len = strlen(a);
        const char *value = NULL;
        if (a[1] == '-') { /* --name=value */
            const char *eq = strchr(a, '=');
            if (eq) {
                len = (size_t)(eq - a);
                value = eq + 1;
            }
        }
        int k = find_option(cmd, a, len);
        if (k < 0) {
            puts_(&t, "unknown option ");
            put_quoted(&t, a, len);
            putf(&t, " (see 'bonsai help %s')", cmd->name);
            return CLI_USAGE;
        }
        const cli_option *o = &cmd->options[k];
        if (o->kind == CLI_FLAG && value) {
            put(&t, a, len);
            puts_(&t, " takes no value");
            return CLI_USAGE;
        }
        if (o->kind != CLI_FLAG && !value) {
            if (i + 1 >= argc) {
                puts_(&t, "missing value for ");
                put(&t, a, len);
                putf(&t, " (%s)", o->value ? o->value : "VALUE");
                return CLI_USAGE;
            }
            value = argv[++i];
        }
        if (!store(o, a, len, value, opts, &t)) return CLI_USAGE;
        out->given |= (uint64_t)1 << k;
    }
    for (size_t k = 0; k < cmd->n_options; k++)
        if (cmd->options[k].required && !(out->given >> k & 1)) {
            name_query q = long_name(&cmd->options[k]);
            puts_(&t, "missing required option ");
            put(&t, q.s, q.len);
            if (cmd->options[k].value) putf(&t, " %s", cmd->options[k].value);
            return CLI_USAGE;
        }
    for (size_t k = 0; k < cmd->n_positionals; k++)
        if (filled[k] < cmd->positionals[k].min) {
            putf(&t, "missing %s", cmd->positionals[k].name);
            return CLI_USAGE;
        }
    t.buf[0] = 0;
    return CLI_PARSED;
}

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    char msg[CLI_ERROR_SIZE];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "bonsai %s: %s\n", cmd->name, msg);
    return 2;
}

bool cli_begin(const cli_command *cmd, int argc, char **argv, void *opts, cli_parsed *parsed,
               int *exit_code)
{
    switch (cli_parse(cmd, argc, argv, opts, parsed)) {
    case CLI_PARSED: return true;
    case CLI_HELP:
        cli_print_help(cmd, stdout);
        *exit_code = 0;
        return false;
    default:
        fprintf(stderr, "%s\n", parsed->error);
        *exit_code = 2;
        return false;
    }
}

/* ---- the help page ---- */

/* Prints `s` wrapped at HELP_WIDTH, lines indented by `indent` spaces; '\n' breaks a line, "\n\n"
 * leaves a blank one. `col` is the column already reached on the first line (after a label). */
static void wrap(FILE *f, const char *s, int indent, int col)
{
    bool fresh = true; /* no word yet on this line */
    char prev = 0;
    while (*s) {
        if (*s == '\n') {
            if (col || prev == '\n') fputc('\n', f);
            col = 0;
            fresh = true;
            prev = *s++;
            continue;
        }
        prev = *s;
        if (*s == ' ') {
            s++;
            continue;
        }
        int n = (int)strcspn(s, " \n");
        if (!fresh && col + 1 + n > HELP_WIDTH) {
            fputc('\n', f);
            col = 0;
        }
        if (!col) {
            fprintf(f, "%*s", indent, "");
            col = indent;
        } else if (!fresh) {
            fputc(' ', f);
            col++;
        }
        fwrite(s, 1, (size_t)n, f);
        col += n;
        fresh = false;
        s += n;
    }
    if (col) fputc('\n', f);
}

static void print_option(FILE *f, const cli_option *o)
{
    fprintf(f, "    %s%s%s\n", o->names, o->value ? " " : "", o->value ? o->value : "");
    char buf[2048];
    text t = {buf, sizeof buf, 0};
    buf[0] = 0;
    puts_(&t, o->help);
    bool open = false;
#define NOTE(...)                                                                                  \
    do {                                                                                           \
        puts_(&t, open ? "; " : " (");                                                             \
        putf(&t, __VA_ARGS__);                                                                     \
        open = true;                                                                               \
    } while (0)
    if (o->required) NOTE("required");
    switch (o->kind) {
    case CLI_INT: NOTE("%s: %" PRId64 " to %" PRId64, o->value, o->min, o->max); break;
    case CLI_CHOICE:
        NOTE("%s", "one of ");
        for (size_t k = 0; o->choices[k]; k++) putf(&t, "%s%s", k ? ", " : "", o->choices[k]);
        break;
    case CLI_LIST: NOTE("repeatable, at most %" PRIu32 " times", o->capacity); break;
    case CLI_INT_LIST:
        NOTE("up to %" PRIu32 " values, each %" PRId64 " to %" PRId64, o->capacity, o->min, o->max);
        break;
    default: break;
    }
    if (o->def) NOTE("default: %s", o->def);
#undef NOTE
    if (open) puts_(&t, ")");
    wrap(f, buf, 8, 0);
}

/* One form of the synopsis, "bonsai NAME " then the form wrapped under its start; spaces inside
 * brackets, parentheses or quotes do not break ("[--seed N]" stays whole). */
static void print_form(FILE *f, const char *name, const char *form, size_t len)
{
    int indent = 4 + 7 + (int)strlen(name), col = fprintf(f, "    bonsai %s", name);
    size_t i = 0;
    while (i < len) {
        while (i < len && form[i] == ' ') i++;
        size_t start = i;
        int depth = 0;
        bool quoted = false;
        for (; i < len && (form[i] != ' ' || depth > 0 || quoted); i++) {
            if (form[i] == '"') quoted = !quoted;
            if (!quoted && (form[i] == '[' || form[i] == '(')) depth++;
            if (!quoted && (form[i] == ']' || form[i] == ')') && depth > 0) depth--;
        }
        int n = (int)(i - start);
        if (!n) break;
        if (col > indent && col + 1 + n > HELP_WIDTH) col = fprintf(f, "\n%*s", indent, "") - 1;
        col += fprintf(f, " %.*s", n, form + start);
    }
    fputc('\n', f);
}

void cli_print_help(const cli_command *cmd, FILE *f)
{
    fprintf(f, "NAME\n    bonsai %s - %s\n\nSYNOPSIS\n", cmd->name, cmd->summary);
    if (!*cmd->synopsis) fprintf(f, "    bonsai %s\n", cmd->name);
    for (const char *s = cmd->synopsis; *s;) {
        size_t n = strcspn(s, "\n");
        print_form(f, cmd->name, s, n);
        s += n;
        if (*s) s++;
    }
    fputs("\nDESCRIPTION\n", f);
    wrap(f, cmd->description, 4, 0);
    if (cmd->n_positionals) {
        fputs("\nARGUMENTS\n", f);
        for (size_t k = 0; k < cmd->n_positionals; k++) {
            const cli_positional *p = &cmd->positionals[k];
            fprintf(f, "    %s\n", p->name);
            wrap(f, p->help, 8, 0);
        }
    }
    fputs("\nOPTIONS\n", f);
    for (size_t k = 0; k < cmd->n_options; k++) print_option(f, &cmd->options[k]);
    fputs("    -h, --help\n        Print this page and exit.\n", f);
    fputs("\nEXIT STATUS\n", f);
    for (const char *s = cmd->exit_status; *s;) {
        size_t n = strcspn(s, "\n");
        const char *tab = memchr(s, '\t', n);
        size_t code = tab ? (size_t)(tab - s) : 0;
        char meaning[512];
        snprintf(meaning, sizeof meaning, "%.*s", (int)(n - (tab ? code + 1 : 0)),
                 tab ? tab + 1 : s);
        fprintf(f, "    %-4.*s", (int)code, s);
        wrap(f, meaning, 8, 8);
        s += n;
        if (*s) s++;
    }
    fputs("\nEXAMPLES\n", f);
    for (const char *s = cmd->examples; *s;) {
        size_t n = strcspn(s, "\n");
        if (n >= 2 && !strncmp(s, "$ ", 2))
            fprintf(f, "        %.*s\n", (int)n - 2, s + 2);
        else if (n)
            fprintf(f, "    %.*s\n", (int)n, s);
        else
            fputc('\n', f);
        s += n;
        if (*s) s++;
    }
}
