#include "json.h"

#include <locale.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct member member;

struct bsi_json {
    uint8_t type;
    bool boolean;
    uint8_t index_bits; /* objects: log2 of the hash index size, 0 = no index */
    size_t n;           /* string/number text bytes, array elements, object members */
    union {
        const char *s; /* string (decoded) or number (source text), NUL-terminated */
        const bsi_json *items;
        const member *members;
    } p;
    union {
        double number;
        const uint32_t *index; /* member index + 1, 0 = empty slot */
    } x;
};

struct member {
    const char *key;
    size_t key_len;
    bsi_json value;
};

/* Objects with more members than this get a hash index; smaller ones are scanned. */
#define INDEX_MIN_MEMBERS 8

typedef struct slot {
    member m;
    size_t pos; /* offset of the key, for error messages */
} slot;

typedef struct parser {
    const unsigned char *buf, *p, *end;
    const char *label;
    bsi_arena *arena;
    slot *stack; /* children of the open arrays and objects */
    size_t sp, cap;
    int depth;
} parser;

static bonsai_status perr(const parser *ps, const unsigned char *at, const char *fmt, ...)
    BSI_PRINTF(3, 4);

static bonsai_status perr(const parser *ps, const unsigned char *at, const char *fmt, ...)
{
    size_t line = 1;
    const unsigned char *line_start = ps->buf;
    for (const unsigned char *q = ps->buf; q < at; q++)
        if (*q == '\n') {
            line++;
            line_start = q + 1;
        }
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return bsi_fail(BONSAI_ERR_CORRUPT, "%s:%zu:%zu: %s", ps->label, line,
                    (size_t)(at - line_start) + 1, msg);
}

static bonsai_status oom(void)
{
    return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory parsing JSON");
}

/* An unexpected byte (or the end of the input) where `what` was expected. */
static bonsai_status unexpected(const parser *ps, const unsigned char *at, const char *what)
{
    if (at >= ps->end) return perr(ps, at, "unexpected end of input, expected %s", what);
    if (*at >= 0x21 && *at < 0x7f) return perr(ps, at, "unexpected '%c', expected %s", *at, what);
    return perr(ps, at, "unexpected byte 0x%02x, expected %s", *at, what);
}

static void skip_ws(parser *ps)
{
    const unsigned char *p = ps->p;
    while (p < ps->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    ps->p = p;
}

static int hex_value(unsigned c)
{
    if (c >= '0' && c <= '9') return (int)(c - '0');
    c |= 0x20;
    if (c >= 'a' && c <= 'f') return (int)(c - 'a' + 10);
    return -1;
}

/* Four hex digits at q (stopping at the first non-digit, so never past the closing quote). */
static long hex4(const parser *ps, const unsigned char *q)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(q[i]);
        if (h < 0) return perr(ps, q + i, "\\u must be followed by four hex digits"), -1;
        v = v << 4 | h;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at q (lead byte >= 0x80) ending before `end`, 0 if none. */
static int utf8_len(const unsigned char *q, const unsigned char *end)
{
    unsigned c = q[0], lo = 0x80, hi = 0xBF;
    int n;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else
        return 0;
    if (end - q < n) return 0;
    if (q[1] < lo || q[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if ((q[i] & 0xC0) != 0x80) return 0;
    return n;
}

static char *put_utf8(char *o, unsigned long cp)
{
    if (cp < 0x80) {
        *o++ = (char)cp;
    } else if (cp < 0x800) {
        *o++ = (char)(0xC0 | cp >> 6);
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *o++ = (char)(0xE0 | cp >> 12);
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *o++ = (char)(0xF0 | cp >> 18);
        *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
        *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
        *o++ = (char)(0x80 | (cp & 0x3F));
    }
    return o;
}

/* The string at ps->p (on its opening quote), decoded into the arena. */
static bonsai_status parse_string(parser *ps, const char **out, size_t *out_len)
{
    const unsigned char *open = ps->p, *q = open + 1, *end = ps->end;
    bool plain = true; /* printable ASCII without escapes: copied as is */
    while (q < end && *q != '"') {
        if (*q == '\\') {
            plain = false;
            q++;
        } else if (*q < 0x20 || *q >= 0x7F)
            plain = false;
        q++;
    }
    if (q >= end) return perr(ps, open, "unterminated string");
    const unsigned char *close = q;
    size_t raw = (size_t)(close - open - 1);
    char *s = bsi_arena_alloc(ps->arena, raw + 1);
    if (!s) return oom();
    if (plain) {
        memcpy(s, open + 1, raw);
        s[raw] = 0;
        *out = s;
        *out_len = raw;
        ps->p = close + 1;
        return BONSAI_OK;
    }
    char *o = s;
    for (q = open + 1; q < close;) {
        unsigned c = *q;
        if (c == '\\') {
            unsigned e = q[1]; /* q + 1 < close: a backslash never escapes the closing quote */
            switch (e) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                long cp = hex4(ps, q + 2);
                if (cp < 0) return BONSAI_ERR_CORRUPT;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return perr(ps, q, "lone low surrogate \\u%04lX", cp);
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (q[6] != '\\' || q[7] != 'u')
                        return perr(ps, q, "high surrogate \\u%04lX not followed by a low one", cp);
                    long lo = hex4(ps, q + 8);
                    if (lo < 0) return BONSAI_ERR_CORRUPT;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return perr(ps, q, "high surrogate \\u%04lX not followed by a low one", cp);
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    q += 6;
                }
                o = put_utf8(o, (unsigned long)cp);
                q += 4;
                break;
            }
            default:
                if (e >= 0x21 && e < 0x7F) return perr(ps, q, "invalid escape '\\%c'", e);
                return perr(ps, q, "invalid escape (byte 0x%02x after a backslash)", e);
            }
            q += 2;
        } else if (c < 0x20) {
            return perr(ps, q, "control character 0x%02x in a string (must be escaped)", c);
        } else if (c < 0x80) {
            *o++ = (char)c;
            q++;
        } else {
            int n = utf8_len(q, close);
            if (!n) return perr(ps, q, "invalid UTF-8 (byte 0x%02x) in a string", c);
            memcpy(o, q, (size_t)n);
            o += n;
            q += n;
        }
    }
    *o = 0;
    *out = s;
    *out_len = (size_t)(o - s);
    ps->p = close + 1;
    return BONSAI_OK;
}

static const double pow10_exact[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* strtod in the "C" locale on a NUL-terminated number text. */
static double c_strtod(const char *text, size_t len)
{
    const char *dp = localeconv()->decimal_point;
    if (!dp || (dp[0] == '.' && !dp[1]) || !memchr(text, '.', len)) return strtod(text, NULL);
    char tmp[512], *buf = len + strlen(dp) < sizeof tmp ? tmp : bsi_malloc(len + strlen(dp) + 1);
    if (!buf) return strtod(text, NULL); /* out of memory: best effort */
    const char *dot = memchr(text, '.', len);
    size_t k = (size_t)(dot - text);
    memcpy(buf, text, k);
    strcpy(buf + k, dp);
    strcat(buf, dot + 1);
    double v = strtod(buf, NULL);
    if (buf != tmp) free(buf);
    return v;
}

static bonsai_status parse_number(parser *ps, bsi_json *v)
{
    const unsigned char *start = ps->p, *q = start, *end = ps->end;
    bool neg = false;
    uint64_t m = 0;
    int digits = 0; /* significant digits accumulated in m */
    long e10 = 0;
    if (*q == '-') {
        neg = true;
        q++;
    }
    if (q >= end || *q < '0' || *q > '9') return unexpected(ps, q, "a digit");
    if (*q == '0') {
        q++;
        if (q < end && *q >= '0' && *q <= '9')
            return perr(ps, q - 1, "leading zeros are not allowed in numbers");
    } else {
        for (; q < end && *q >= '0' && *q <= '9'; q++) {
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                digits++;
            } else {
                digits++; /* too many: the slow path converts */
            }
        }
    }
    if (q < end && *q == '.') {
        q++;
        if (q >= end || *q < '0' || *q > '9') return unexpected(ps, q, "a digit after '.'");
        for (; q < end && *q >= '0' && *q <= '9'; q++) {
            if (m == 0 && *q == '0') {
                e10--; /* leading zeros of the fraction are not significant */
                continue;
            }
            if (digits < 19) {
                m = m * 10 + (uint64_t)(*q - '0');
                e10--;
            }
            digits++;
        }
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        bool eneg = false;
        if (q < end && (*q == '+' || *q == '-')) eneg = *q++ == '-';
        if (q >= end || *q < '0' || *q > '9') return unexpected(ps, q, "a digit in the exponent");
        long x = 0;
        for (; q < end && *q >= '0' && *q <= '9'; q++)
            if (x < 100000) x = x * 10 + (*q - '0');
        e10 += eneg ? -x : x;
    }
    size_t len = (size_t)(q - start);
    char *text = bsi_arena_alloc(ps->arena, len + 1);
    if (!text) return oom();
    memcpy(text, start, len);
    text[len] = 0;
    double d;
    if (m == 0)
        d = 0.0;
    else if (digits <= 15 && e10 >= -22 && e10 <= 22)
        /* both operands exact, so the one rounding is correct (Clinger's fast path) */
        d = e10 >= 0 ? (double)m * pow10_exact[e10] : (double)m / pow10_exact[-e10];
    else
        d = c_strtod(text, len);
    if (neg && d > 0) d = -d;
    if (neg && d == 0) d = -0.0;
    v->type = BSI_JSON_NUMBER;
    v->n = len;
    v->p.s = text;
    v->x.number = d;
    ps->p = q;
    return BONSAI_OK;
}

static bonsai_status push(parser *ps, const slot *s)
{
    if (ps->sp == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 256;
        slot *st = bsi_realloc(ps->stack, cap * sizeof *st);
        if (!st) return oom();
        ps->stack = st;
        ps->cap = cap;
    }
    ps->stack[ps->sp++] = *s;
    return BONSAI_OK;
}

static uint64_t hash_key(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ h >> 29;
}

static bool key_eq(const member *m, const char *key, size_t len)
{
    return m->key_len == len && !memcmp(m->key, key, len);
}

static bonsai_status duplicate(const parser *ps, const slot *s)
{
    return perr(ps, ps->buf + s->pos, "duplicate key \"%.*s\"",
                s->m.key_len > 60 ? 60 : (int)s->m.key_len, s->m.key);
}

/* Moves the members base.. of the stack into the arena as object `v`, checking for duplicates. */
static bonsai_status close_object(parser *ps, size_t base, bsi_json *v)
{
    size_t n = ps->sp - base;
    const slot *sl = n ? ps->stack + base : NULL; /* the stack may not exist yet */
    if (n > UINT32_MAX / 4) return perr(ps, ps->p, "too many object members");
    member *ms = bsi_arena_alloc(ps->arena, n * sizeof *ms + 1);
    if (!ms) return oom();
    for (size_t i = 0; i < n; i++) ms[i] = sl[i].m;
    v->type = BSI_JSON_OBJECT;
    v->n = n;
    v->p.members = ms;
    if (n <= INDEX_MIN_MEMBERS) {
        for (size_t i = 1; i < n; i++)
            for (size_t j = 0; j < i; j++)
                if (key_eq(&ms[j], ms[i].key, ms[i].key_len)) return duplicate(ps, &sl[i]);
        return BONSAI_OK;
    }
    unsigned bits = 4;
    while (((size_t)1 << bits) < 2 * n) bits++;
    size_t size = (size_t)1 << bits, mask = size - 1;
    uint32_t *index = bsi_arena_calloc(ps->arena, size, sizeof *index);
    if (!index) return oom();
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)hash_key(ms[i].key, ms[i].key_len) & mask;
        for (; index[h]; h = (h + 1) & mask)
            if (key_eq(&ms[index[h] - 1], ms[i].key, ms[i].key_len)) return duplicate(ps, &sl[i]);
        index[h] = (uint32_t)(i + 1);
    }
    v->index_bits = (uint8_t)bits;
    v->x.index = index;
    return BONSAI_OK;
}

static bonsai_status parse_value(parser *ps, bsi_json *v);

static bonsai_status parse_array(parser *ps, bsi_json *v)
{
    const unsigned char *open = ps->p;
    if (++ps->depth > BSI_JSON_MAX_DEPTH)
        return perr(ps, open, "nesting deeper than %d arrays/objects", BSI_JSON_MAX_DEPTH);
    size_t base = ps->sp;
    bonsai_status st;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
    } else {
        for (;;) {
            slot s = {0};
            if ((st = parse_value(ps, &s.m.value)) || (st = push(ps, &s))) return st;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                skip_ws(ps);
                if (ps->p < ps->end && *ps->p == ']')
                    return perr(ps, ps->p, "trailing comma in an array");
                continue;
            }
            if (ps->p < ps->end && *ps->p == ']') {
                ps->p++;
                break;
            }
            return unexpected(ps, ps->p, "',' or ']' in an array");
        }
    }
    size_t n = ps->sp - base;
    bsi_json *items = bsi_arena_alloc(ps->arena, n * sizeof *items + 1);
    if (!items) return oom();
    for (size_t i = 0; i < n; i++) items[i] = ps->stack[base + i].m.value;
    ps->sp = base;
    v->type = BSI_JSON_ARRAY;
    v->n = n;
    v->p.items = items;
    ps->depth--;
    return BONSAI_OK;
}

static bonsai_status parse_object(parser *ps, bsi_json *v)
{
    const unsigned char *open = ps->p;
    if (++ps->depth > BSI_JSON_MAX_DEPTH)
        return perr(ps, open, "nesting deeper than %d arrays/objects", BSI_JSON_MAX_DEPTH);
    size_t base = ps->sp;
    bonsai_status st;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
    } else {
        for (;;) {
            slot s = {0};
            if (ps->p >= ps->end || *ps->p != '"')
                return unexpected(ps, ps->p, "a string (an object key in double quotes)");
            s.pos = (size_t)(ps->p - ps->buf);
            if ((st = parse_string(ps, &s.m.key, &s.m.key_len))) return st;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':')
                return unexpected(ps, ps->p, "':' after an object key");
            ps->p++;
            if ((st = parse_value(ps, &s.m.value)) || (st = push(ps, &s))) return st;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                skip_ws(ps);
                if (ps->p < ps->end && *ps->p == '}')
                    return perr(ps, ps->p, "trailing comma in an object");
                continue;
            }
            if (ps->p < ps->end && *ps->p == '}') {
                ps->p++;
                break;
            }
            return unexpected(ps, ps->p, "',' or '}' in an object");
        }
    }
    if ((st = close_object(ps, base, v))) return st;
    ps->sp = base;
    ps->depth--;
    return BONSAI_OK;
}

static bonsai_status literal(parser *ps, const char *word, bsi_json_type t, bool b, bsi_json *v)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n))
        return perr(ps, ps->p, "invalid literal (expected '%s')", word);
    ps->p += n;
    v->type = (uint8_t)t;
    v->boolean = b;
    return BONSAI_OK;
}

static bonsai_status parse_value(parser *ps, bsi_json *v)
{
    skip_ws(ps);
    if (ps->p >= ps->end) return unexpected(ps, ps->p, "a value");
    memset(v, 0, sizeof *v);
    switch (*ps->p) {
    case '{': return parse_object(ps, v);
    case '[': return parse_array(ps, v);
    case '"': v->type = BSI_JSON_STRING; return parse_string(ps, &v->p.s, &v->n);
    case 't': return literal(ps, "true", BSI_JSON_BOOL, true, v);
    case 'f': return literal(ps, "false", BSI_JSON_BOOL, false, v);
    case 'n': return literal(ps, "null", BSI_JSON_NULL, false, v);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps, v);
        return unexpected(ps, ps->p, "a value");
    }
}

bonsai_status bsi_json_parse(bsi_arena *arena, const char *buf, size_t len, const char *label,
                             const bsi_json **root)
{
    if (!arena || (!buf && len) || !root)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bsi_json_parse: NULL argument");
    *root = NULL;
    static const char empty[1] = "";
    const unsigned char *b = (const unsigned char *)(buf ? buf : empty);
    parser ps = {.buf = b, .p = b, .end = b + len, .label = label ? label : "json", .arena = arena};
    if (len >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF) ps.p += 3;
    bsi_json *v = bsi_arena_alloc(arena, sizeof *v);
    if (!v) return oom();
    bonsai_status st = parse_value(&ps, v);
    if (!st) {
        skip_ws(&ps);
        if (ps.p < ps.end) st = unexpected(&ps, ps.p, "the end of the input after the value");
    }
    free(ps.stack);
    if (!st) *root = v;
    return st;
}

bsi_json_type bsi_json_type_of(const bsi_json *v)
{
    return v ? (bsi_json_type)v->type : BSI_JSON_INVALID;
}

const char *bsi_json_type_name(bsi_json_type t)
{
    switch (t) {
    case BSI_JSON_NULL: return "null";
    case BSI_JSON_BOOL: return "boolean";
    case BSI_JSON_NUMBER: return "number";
    case BSI_JSON_STRING: return "string";
    case BSI_JSON_ARRAY: return "array";
    case BSI_JSON_OBJECT: return "object";
    default: return "invalid";
    }
}

size_t bsi_json_array_len(const bsi_json *v)
{
    return v && v->type == BSI_JSON_ARRAY ? v->n : 0;
}

const bsi_json *bsi_json_array_at(const bsi_json *v, size_t i)
{
    return v && v->type == BSI_JSON_ARRAY && i < v->n ? &v->p.items[i] : NULL;
}

size_t bsi_json_object_len(const bsi_json *v)
{
    return v && v->type == BSI_JSON_OBJECT ? v->n : 0;
}

const bsi_json *bsi_json_object_at(const bsi_json *v, size_t i, const char **key, size_t *key_len)
{
    if (!v || v->type != BSI_JSON_OBJECT || i >= v->n) return NULL;
    const member *m = &v->p.members[i];
    if (key) *key = m->key;
    if (key_len) *key_len = m->key_len;
    return &m->value;
}

const bsi_json *bsi_json_object_getn(const bsi_json *v, const char *key, size_t key_len)
{
    if (!v || v->type != BSI_JSON_OBJECT || (!key && key_len)) return NULL;
    const member *ms = v->p.members;
    if (!v->index_bits) {
        for (size_t i = 0; i < v->n; i++)
            if (key_eq(&ms[i], key, key_len)) return &ms[i].value;
        return NULL;
    }
    size_t mask = ((size_t)1 << v->index_bits) - 1;
    for (size_t h = (size_t)hash_key(key, key_len) & mask; v->x.index[h]; h = (h + 1) & mask)
        if (key_eq(&ms[v->x.index[h] - 1], key, key_len)) return &ms[v->x.index[h] - 1].value;
    return NULL;
}

const bsi_json *bsi_json_object_get(const bsi_json *v, const char *key)
{
    return key ? bsi_json_object_getn(v, key, strlen(key)) : NULL;
}

const char *bsi_json_string(const bsi_json *v, size_t *len)
{
    if (!v || v->type != BSI_JSON_STRING) return NULL;
    if (len) *len = v->n;
    return v->p.s;
}

bool bsi_json_number(const bsi_json *v, double *out)
{
    if (!v || v->type != BSI_JSON_NUMBER) return false;
    if (out) *out = v->x.number;
    return true;
}

const char *bsi_json_number_text(const bsi_json *v, size_t *len)
{
    if (!v || v->type != BSI_JSON_NUMBER) return NULL;
    if (len) *len = v->n;
    return v->p.s;
}

bool bsi_json_int64(const bsi_json *v, int64_t *out)
{
    if (!v || v->type != BSI_JSON_NUMBER) return false;
    double d = v->x.number;
    if (!(d >= -9007199254740992.0 && d <= 9007199254740992.0) || d != (double)(int64_t)d)
        return false;
    if (out) *out = (int64_t)d;
    return true;
}

bool bsi_json_bool(const bsi_json *v, bool *out)
{
    if (!v || v->type != BSI_JSON_BOOL) return false;
    if (out) *out = v->boolean;
    return true;
}
