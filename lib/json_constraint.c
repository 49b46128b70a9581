/*
 * JSON-constrained output: the byte-level matcher and token masking (see json_constraint.h; the
 * schema compiler is json_schema.c).
 *
 * The matcher is a pushdown automaton whose stack (bsi_jstate) holds one frame per open value:
 * the document (frame 0), the open objects and arrays, and at most one scalar (string, object key,
 * number, enum value, literal) on top. A frame's sub-state says where in its value the matcher is.
 * When a value is pushed, its parent's sub-state already says "after the value", so finishing a
 * value is a pop. Numbers, and enum values that are a prefix of another, have no closing byte:
 * they end when a byte arrives that cannot continue them, which is then fed to the parent.
 *
 * Masking walks a trie of the vocabulary's token strings (nodes in depth-first order, each with
 * the index just past its subtree) keeping one matcher state per depth: a token costs only its
 * bytes after the prefix it shares with the previous one, and a refused prefix skips its whole
 * subtree. Inside a string, where most tokens are allowed, tokens made only of plain string
 * characters (complete UTF-8, no quote, backslash or control byte) are allowed by copying a
 * bitset, and only the others are walked, in a second trie.
 */
#include "json_schema.h"

#include <stdlib.h>
#include <string.h>

/* Frame kinds and their sub-states. */
enum { K_ROOT, K_OBJ, K_ARR, K_STR, K_KEY, K_NUM, K_ENUM, K_LIT };
enum { R_START, R_DONE };
enum { O_START, O_KEY, O_COLON, O_VALUE, O_COMMA };
enum { A_START, A_VALUE, A_COMMA };
enum { S_CHARS, S_UTF8, S_ESC, S_HEX, S_LOW_BS, S_LOW_U };
enum { N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_EXP, N_ESIGN, N_EDIG };

/* Whitespace run (frame ws): spaces and tabs counted in the low bits. */
#define WS_COUNT 0x3f
#define WS_NL    0x40 /* a line break was seen */
#define WS_CR    0x80 /* '\r' just seen: '\n' must follow */

/* \u escape flags (frame aux in S_HEX); pos is the hex digit index. */
#define HX_LOW  1 /* must be a low surrogate (DC00-DFFF) */
#define HX_D    2 /* the first digit was D */
#define HX_HIGH 4 /* a high surrogate: another \u escape with the low one must follow */

static const char *const literal_text[3] = {"true", "false", "null"};
static const uint8_t literal_len[3] = {4, 5, 4};

/* ---------------------------------------------------------------------------------------- */
/* Matcher */

static inline bsi_jframe *push(bsi_jstate *st, uint16_t node, uint8_t kind, uint8_t sub)
{
    bsi_jframe *f = &st->frames[st->depth++];
    f->node = node;
    f->kind = kind;
    f->sub = sub;
    f->ws = 0;
    f->aux = 0;
    f->pos = 0;
    f->u.used = 0;
    return f;
}

static inline bool is_ws(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline bool ws_feed(bsi_jframe *f, uint8_t c)
{
    uint8_t w = f->ws;
    if (w & WS_CR) {
        if (c != '\n') return false;
        f->ws = (uint8_t)((w & ~WS_CR) | WS_NL);
        return true;
    }
    if (c == '\n' || c == '\r') {
        if (w & WS_NL) return false;
        f->ws = (uint8_t)(w | (c == '\n' ? WS_NL : WS_CR));
        return true;
    }
    if ((w & WS_COUNT) >= BSI_JSON_MAX_SPACES) return false;
    f->ws = (uint8_t)(w + 1);
    return true;
}

static inline int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Candidates [lo, hi) all share bytes [0, pos) and are longer than pos; narrows them to those
 * with byte c at pos. False if none. */
static inline bool narrow(const jstr *v, uint32_t *lo, uint32_t *hi, uint32_t pos, uint8_t c)
{
    uint32_t a = *lo, b = *hi;
    while (a < b) { /* first with byte >= c */
        uint32_t m = a + (b - a) / 2;
        if (v[m].s[pos] < c)
            a = m + 1;
        else
            b = m;
    }
    if (a == *hi || v[a].s[pos] != c) return false;
    uint32_t e = a + 1, z = *hi;
    while (e < z) { /* first with byte > c */
        uint32_t m = e + (z - e) / 2;
        if (v[m].s[pos] <= c)
            e = m + 1;
        else
            z = m;
    }
    *lo = a;
    *hi = e;
    return true;
}

#define FNV_BASIS 2166136261u
#define FNV_PRIME 16777619u

/* A key of an object with any keys (u.r.hi set; u.r.lo is the hash of its decoded bytes) is
 * complete: refuse it if the object (the frame below) already has it. */
static bool key_done(bsi_jstate *st, const bsi_jframe *f)
{
    const bsi_jframe *obj = f - 1;
    uint32_t h = f->u.r.lo;
    for (uint32_t i = obj->pos; i < st->n_keys; i++)
        if (st->keys[i] == h) return false;
    if (st->n_keys >= BSI_JSON_MAX_KEYS) return false;
    st->keys[st->n_keys++] = h;
    st->depth--;
    return true;
}

static bool str_feed(bsi_jstate *st, bsi_jframe *f, uint8_t c)
{
    bool key = f->u.r.hi;
    switch (f->sub) {
    case S_CHARS:
        if (c == '"') {
            if (key) return key_done(st, f);
            st->depth--;
            return true;
        }
        if (c == '\\') {
            f->sub = S_ESC;
            return true;
        }
        if (key) f->u.r.lo = (f->u.r.lo ^ c) * FNV_PRIME;
        if (c < 0x80) return c >= 0x20;
        /* a lead byte: continuation count in the low bits, the range of the first continuation
         * byte above (1: A0-BF, 2: 80-9F, 3: 90-BF, 4: 80-8F, 0: 80-BF) */
        if (c >= 0xC2 && c <= 0xDF)
            f->aux = 1;
        else if (c == 0xE0)
            f->aux = 2 | 1 << 2;
        else if (c == 0xED)
            f->aux = 2 | 2 << 2;
        else if (c >= 0xE1 && c <= 0xEF)
            f->aux = 2;
        else if (c == 0xF0)
            f->aux = 3 | 3 << 2;
        else if (c >= 0xF1 && c <= 0xF3)
            f->aux = 3;
        else if (c == 0xF4)
            f->aux = 3 | 4 << 2;
        else
            return false;
        f->sub = S_UTF8;
        return true;
    case S_UTF8: {
        uint8_t lo = 0x80, hi = 0xBF;
        switch (f->aux >> 2) {
        case 1: lo = 0xA0; break;
        case 2: hi = 0x9F; break;
        case 3: lo = 0x90; break;
        case 4: hi = 0x8F; break;
        default: break;
        }
        if (c < lo || c > hi) return false;
        if (key) f->u.r.lo = (f->u.r.lo ^ c) * FNV_PRIME;
        f->aux = (uint8_t)((f->aux & 3) - 1);
        if (!f->aux) f->sub = S_CHARS;
        return true;
    }
    case S_ESC: {
        uint8_t d;
        switch (c) {
        case '"':
        case '\\':
        case '/': d = c; break;
        case 'b': d = '\b'; break;
        case 'f': d = '\f'; break;
        case 'n': d = '\n'; break;
        case 'r': d = '\r'; break;
        case 't': d = '\t'; break;
        case 'u':
            f->sub = S_HEX;
            f->aux = 0;
            f->pos = 0;
            return true;
        default: return false;
        }
        if (key) f->u.r.lo = (f->u.r.lo ^ d) * FNV_PRIME;
        f->sub = S_CHARS;
        return true;
    }
    case S_HEX: {
        int h = hex_value(c);
        if (h < 0) return false;
        if (key) { /* only \u0000-\u007f, hashed as the byte it stands for (in aux) */
            if (f->pos < 2 ? h != 0 : f->pos == 2 && h > 7) return false;
            f->aux = (uint8_t)(f->aux << 4 | h);
            if (f->pos++ < 3) return true;
            f->u.r.lo = (f->u.r.lo ^ f->aux) * FNV_PRIME;
            f->sub = S_CHARS;
            f->aux = 0;
            f->pos = 0;
            return true;
        }
        uint8_t fl = f->aux;
        if (f->pos == 0) {
            if ((fl & HX_LOW) && h != 0xD) return false;
            if (h == 0xD) fl |= HX_D;
        } else if (f->pos == 1 && (fl & HX_D)) {
            if (fl & HX_LOW) {
                if (h < 0xC) return false;
            } else if (h >= 0xC) {
                return false; /* a lone low surrogate */
            } else if (h >= 0x8) {
                fl |= HX_HIGH;
            }
        }
        if (f->pos == 3) {
            f->sub = (fl & HX_HIGH) ? S_LOW_BS : S_CHARS;
            f->aux = 0;
            f->pos = 0;
        } else {
            f->pos++;
            f->aux = fl;
        }
        return true;
    }
    case S_LOW_BS:
        if (c != '\\') return false;
        f->sub = S_LOW_U;
        return true;
    case S_LOW_U:
        if (c != 'u') return false;
        f->sub = S_HEX;
        f->aux = HX_LOW;
        f->pos = 0;
        return true;
    default: return false;
    }
}

/* A property name of an object with listed properties; the object is the frame below. */
static bool key_feed(const bsi_jschema *s, bsi_jstate *st, bsi_jframe *f, uint8_t c)
{
    bsi_jframe *obj = f - 1;
    const jstr *p = s->props + s->nodes[obj->node].props;
    uint32_t lo = f->u.r.lo, hi = f->u.r.hi, pos = f->pos;
    if (!narrow(p, &lo, &hi, pos, c)) return false;
    if (!(bsi_jrange_bits(lo, hi) & ~obj->u.used)) return false; /* only names already used */
    if (pos + 1 == p[lo].len) {
        /* the closing quote (the only candidate left: no other name shares this prefix) */
        obj->aux = (uint8_t)lo;
        obj->u.used |= 1ull << lo;
        st->depth--;
        return true;
    }
    f->u.r.lo = lo;
    f->u.r.hi = hi;
    f->pos = (uint16_t)(pos + 1);
    return true;
}

/* 1: consumed; 0: the value is complete and `c` is not part of it; -1: refused. */
static int num_feed(bsi_jframe *f, uint8_t c)
{
    bool digit = c >= '0' && c <= '9';
    bool int_only = f->aux;
    switch (f->sub) {
    case N_MINUS:
        if (!digit) return -1;
        f->sub = c == '0' ? N_ZERO : N_INT;
        f->pos = 1;
        return 1;
    case N_ZERO:
    case N_INT:
        if (digit) {
            if (f->sub == N_ZERO || f->pos >= BSI_JSON_MAX_INT) return -1;
            f->pos++;
            return 1;
        }
        if (int_only) return 0;
        if (c == '.') {
            f->sub = N_DOT;
            return 1;
        }
        if (c == 'e' || c == 'E') {
            f->sub = N_EXP;
            return 1;
        }
        return 0;
    case N_DOT:
        if (!digit) return -1;
        f->sub = N_FRAC;
        f->pos = 1;
        return 1;
    case N_FRAC:
        if (digit) {
            if (f->pos >= BSI_JSON_MAX_FRAC) return -1;
            f->pos++;
            return 1;
        }
        if (c == 'e' || c == 'E') {
            f->sub = N_EXP;
            return 1;
        }
        return 0;
    case N_EXP:
        if (c == '+' || c == '-') {
            f->sub = N_ESIGN;
            return 1;
        }
        /* fall through */
    case N_ESIGN:
        if (!digit) return -1;
        f->sub = N_EDIG;
        f->pos = 1;
        return 1;
    case N_EDIG:
        if (digit) {
            if (f->pos >= BSI_JSON_MAX_EXP) return -1;
            f->pos++;
            return 1;
        }
        return 0;
    default: return -1;
    }
}

static inline bool num_can_end(const bsi_jframe *f)
{
    return f->sub == N_ZERO || f->sub == N_INT || f->sub == N_FRAC || f->sub == N_EDIG;
}

/* Like num_feed. A value that no other candidate extends is finished (popped) at once. */
static int enum_feed(const bsi_jschema *s, bsi_jstate *st, bsi_jframe *f, uint8_t c)
{
    const jstr *v = s->enums;
    uint32_t lo = f->u.r.lo, hi = f->u.r.hi, pos = f->pos;
    bool can_end = v[lo].len == pos; /* at most one candidate ends here, sorted first */
    uint32_t a = lo + can_end, b = hi;
    if (a == b || !narrow(v, &a, &b, pos, c)) return can_end ? 0 : -1;
    pos++;
    if (b - a == 1 && v[a].len == pos) {
        st->depth--;
        return 1;
    }
    f->u.r.lo = a;
    f->u.r.hi = b;
    f->pos = (uint16_t)pos;
    return 1;
}

/* The first byte of a value of schema `node` (the parent's sub-state already says "after it"). */
static bool start_value(const bsi_jschema *s, bsi_jstate *st, uint16_t node, uint8_t c)
{
    const jnode *n = &s->nodes[node];
    if (n->has_enum) {
        bsi_jframe *f = push(st, node, K_ENUM, 0);
        f->u.r.lo = n->enum_lo;
        f->u.r.hi = n->enum_hi;
        return enum_feed(s, st, f, c) > 0;
    }
    uint8_t t = n->types;
    bsi_jframe *f;
    switch (c) {
    case '{':
        /* containers below: st->depth - 1, so this one would be number st->depth */
        if (!(t & T_OBJ) || st->depth > BSI_JSON_MAX_NEST) return false;
        f = push(st, node, K_OBJ, O_START);
        f->pos = (uint16_t)st->n_keys; /* its keys, if any keys: keys[pos, n_keys) */
        return true;
    case '[':
        if (!(t & T_ARR) || st->depth > BSI_JSON_MAX_NEST) return false;
        push(st, node, K_ARR, A_START);
        return true;
    case '"':
        if (!(t & T_STR)) return false;
        push(st, node, K_STR, S_CHARS);
        return true;
    case 't':
    case 'f':
        if (!(t & T_BOOL)) return false;
        f = push(st, node, K_LIT, 0);
        f->aux = c == 't' ? 0 : 1;
        f->pos = 1;
        return true;
    case 'n':
        if (!(t & T_NULL)) return false;
        f = push(st, node, K_LIT, 0);
        f->aux = 2;
        f->pos = 1;
        return true;
    default:
        if (c != '-' && (c < '0' || c > '9')) return false;
        if (!(t & (T_INT | T_NUM))) return false;
        f = push(st, node, K_NUM, c == '-' ? N_MINUS : c == '0' ? N_ZERO : N_INT);
        f->aux = !(t & T_NUM);
        f->pos = c != '-';
        return true;
    }
}

/* A key's first byte (after the opening quote was seen). */
static inline void start_key(const jnode *n, bsi_jstate *st, uint16_t node)
{
    if (n->any_keys) {
        bsi_jframe *k = push(st, NODE_ANY, K_STR, S_CHARS);
        k->u.r.lo = FNV_BASIS;
        k->u.r.hi = 1;
    } else {
        bsi_jframe *k = push(st, node, K_KEY, 0);
        k->u.r.lo = 0;
        k->u.r.hi = n->n_props;
    }
}

static inline bool jfeed(const bsi_jschema *s, bsi_jstate *st, uint8_t c)
{
    for (;;) {
        bsi_jframe *f = &st->frames[st->depth - 1];
        int r;
        switch (f->kind) {
        case K_STR: return str_feed(st, f, c);
        case K_KEY: return key_feed(s, st, f, c);
        case K_NUM:
            r = num_feed(f, c);
            if (r) return r > 0;
            st->depth--; /* finished: the byte goes to the parent */
            continue;
        case K_ENUM:
            r = enum_feed(s, st, f, c);
            if (r) return r > 0;
            st->depth--;
            continue;
        case K_LIT:
            if (c != (uint8_t)literal_text[f->aux][f->pos]) return false;
            if (++f->pos == literal_len[f->aux]) st->depth--;
            return true;
        default: break;
        }
        /* structural: root, object, array */
        if (is_ws(c)) {
            if (f->kind == K_ROOT && f->sub == R_DONE) return false;
            return ws_feed(f, c);
        }
        if (f->ws & WS_CR) return false;
        f->ws = 0;
        if (f->kind == K_ROOT) {
            if (f->sub != R_START) return false;
            f->sub = R_DONE;
            return start_value(s, st, s->root, c);
        }
        const jnode *n = &s->nodes[f->node];
        if (f->kind == K_OBJ) {
            switch (f->sub) {
            case O_START:
                if (c == '}') {
                    if (n->required) return false;
                    st->depth--;
                    return true; /* no keys to forget */
                }
                if (c != '"' || (n->any_keys ? st->n_keys >= BSI_JSON_MAX_KEYS : !n->n_props))
                    return false;
                f->sub = O_KEY;
                start_key(n, st, f->node);
                return true;
            case O_KEY:
                if (c != ':') return false;
                f->sub = O_COLON;
                return true;
            case O_COLON:
                f->sub = O_VALUE;
                return start_value(s, st, n->any_keys ? NODE_ANY : s->props[n->props + f->aux].node,
                                   c);
            case O_VALUE:
                if (c == ',') {
                    /* only if another key can follow */
                    if (n->any_keys ? st->n_keys >= BSI_JSON_MAX_KEYS : f->u.used == n->all)
                        return false;
                    f->sub = O_COMMA;
                    return true;
                }
                if (c == '}') {
                    if (n->required & ~f->u.used) return false;
                    if (n->any_keys) st->n_keys = f->pos;
                    st->depth--;
                    return true;
                }
                return false;
            case O_COMMA:
                if (c != '"') return false;
                f->sub = O_KEY;
                start_key(n, st, f->node);
                return true;
            default: return false;
            }
        }
        /* array */
        switch (f->sub) {
        case A_START:
            if (c == ']') {
                st->depth--;
                return true;
            }
            f->sub = A_VALUE;
            return start_value(s, st, n->items, c);
        case A_VALUE:
            if (c == ',') {
                f->sub = A_COMMA;
                return true;
            }
            if (c == ']') {
                st->depth--;
                return true;
            }
            return false;
        case A_COMMA: f->sub = A_VALUE; return start_value(s, st, n->items, c);
        default: return false;
        }
    }
}

void bsi_jstate_init(const bsi_jschema *s, bsi_jstate *st)
{
    st->depth = 0;
    st->n_keys = 0;
    push(st, s->root, K_ROOT, R_START);
}

static inline void jcopy(bsi_jstate *dst, const bsi_jstate *src)
{
    memcpy(dst, src, offsetof(bsi_jstate, frames) + src->depth * sizeof(bsi_jframe));
    if (src->n_keys) memcpy(dst->keys, src->keys, src->n_keys * sizeof src->keys[0]);
}

void bsi_jstate_copy(bsi_jstate *dst, const bsi_jstate *src)
{
    jcopy(dst, src);
}

bool bsi_jstate_feed(const bsi_jschema *s, bsi_jstate *st, uint8_t byte)
{
    return jfeed(s, st, byte);
}

bool bsi_jstate_feed_bytes(const bsi_jschema *s, bsi_jstate *st, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!jfeed(s, st, p[i])) return false;
    return true;
}

static inline bool jclosed(const bsi_jstate *st)
{
    return st->depth == 1 && st->frames[0].sub == R_DONE;
}

static bool jcomplete(const bsi_jschema *s, const bsi_jstate *st)
{
    if (st->depth == 1) return st->frames[0].sub == R_DONE;
    if (st->depth != 2) return false;
    const bsi_jframe *f = &st->frames[1];
    if (f->kind == K_NUM) return num_can_end(f);
    if (f->kind == K_ENUM) return s->enums[f->u.r.lo].len == f->pos;
    return false;
}

bool bsi_jstate_complete(const bsi_jschema *s, const bsi_jstate *st)
{
    return jcomplete(s, st);
}

bool bsi_jstate_closed(const bsi_jschema *s, const bsi_jstate *st)
{
    (void)s;
    return jclosed(st);
}

/* ---------------------------------------------------------------------------------------- */
/* Finishing a document: the bytes that close it, for generation that must end soon. */

typedef struct bbuf {
    uint8_t *p;
    size_t n, cap;
} bbuf;

static bool bput(bbuf *b, const void *p, size_t n)
{
    if (b->cap - b->n < n) return false;
    memcpy(b->p + b->n, p, n);
    b->n += n;
    return true;
}

static inline bool bputc(bbuf *b, uint8_t c)
{
    return bput(b, &c, 1);
}

/* The cheapest kind of value of a node and its length ("0", "\"\"", "[]", "{...}", "null",
 * "true", or an enum value: index into s->enums). */
enum { MV_ENUM, MV_NUM, MV_STR, MV_ARR, MV_OBJ, MV_NULL, MV_BOOL };

static size_t min_value_len(const bsi_jschema *s, uint16_t node, int depth, int *kind,
                            uint32_t *which);

/* "{" + the required properties with their cheapest values + "}" */
static size_t min_object_len(const bsi_jschema *s, const jnode *n, int depth)
{
    size_t len = 2;
    bool first = true;
    for (uint32_t i = 0; i < n->n_props; i++) {
        if (!(n->required >> i & 1)) continue;
        const jstr *p = &s->props[n->props + i];
        int k;
        uint32_t w;
        size_t v = min_value_len(s, p->node, depth + 1, &k, &w);
        if (v == SIZE_MAX) return SIZE_MAX;
        len += !first + 1 + p->len + 1 + v; /* , " name" : value */
        first = false;
    }
    return len;
}

static size_t min_value_len(const bsi_jschema *s, uint16_t node, int depth, int *kind,
                            uint32_t *which)
{
    if (depth > BSI_JSON_MAX_NEST) return SIZE_MAX;
    const jnode *n = &s->nodes[node];
    size_t best = SIZE_MAX;
    if (n->has_enum) {
        for (uint32_t i = n->enum_lo; i < n->enum_hi; i++)
            if (s->enums[i].len < best) {
                best = s->enums[i].len;
                *kind = MV_ENUM;
                *which = i;
            }
        return best;
    }
    static const struct {
        uint8_t type, kind, len;
    } simple[] = {{T_INT | T_NUM, MV_NUM, 1},
                  {T_STR, MV_STR, 2},
                  {T_ARR, MV_ARR, 2},
                  {T_NULL, MV_NULL, 4},
                  {T_BOOL, MV_BOOL, 4}};
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if ((n->types & simple[i].type) && simple[i].len < best) {
            best = simple[i].len;
            *kind = simple[i].kind;
        }
    if (n->types & T_OBJ) {
        size_t o = min_object_len(s, n, depth);
        if (o < best) {
            best = o;
            *kind = MV_OBJ;
        }
    }
    return best;
}

static bool min_value(const bsi_jschema *s, uint16_t node, bbuf *b, int depth)
{
    int kind = MV_NULL;
    uint32_t which = 0;
    if (min_value_len(s, node, depth, &kind, &which) == SIZE_MAX) return false;
    switch (kind) {
    case MV_ENUM: return bput(b, s->enums[which].s, s->enums[which].len);
    case MV_NUM: return bputc(b, '0');
    case MV_STR: return bput(b, "\"\"", 2);
    case MV_ARR: return bput(b, "[]", 2);
    case MV_NULL: return bput(b, "null", 4);
    case MV_BOOL: return bput(b, "true", 4);
    default: break;
    }
    const jnode *n = &s->nodes[node];
    if (!bputc(b, '{')) return false;
    bool first = true;
    for (uint32_t i = 0; i < n->n_props; i++) {
        if (!(n->required >> i & 1)) continue;
        const jstr *p = &s->props[n->props + i];
        if ((!first && !bputc(b, ',')) || !bputc(b, '"') || !bput(b, p->s, p->len) ||
            !bputc(b, ':') || !min_value(s, p->node, b, depth + 1))
            return false;
        first = false;
    }
    return bputc(b, '}');
}

/* A property of object frame `f` to write next: a missing required one, else (any = true) the
 * unused one with the shortest name; -1 if none. */
static int next_prop(const bsi_jschema *s, const bsi_jframe *f, bool any)
{
    const jnode *n = &s->nodes[f->node];
    uint64_t missing = n->required & ~f->u.used;
    if (missing) return __builtin_ctzll(missing);
    if (!any) return -1;
    int best = -1;
    for (uint32_t i = 0; i < n->n_props; i++)
        if (!(f->u.used >> i & 1) &&
            (best < 0 || s->props[n->props + i].len < s->props[n->props + (uint32_t)best].len))
            best = (int)i;
    return best;
}

static bool put_prop(const bsi_jschema *s, const bsi_jframe *f, int i, bool quote, bbuf *b)
{
    const jstr *p = &s->props[s->nodes[f->node].props + (uint32_t)i];
    return (!quote || bputc(b, '"')) && bput(b, p->s, p->len) && bputc(b, ':');
}

/* Appends the next few bytes towards the end of the document in `st`. */
static bool finish_step(const bsi_jschema *s, const bsi_jstate *st, bbuf *b)
{
    const bsi_jframe *f = &st->frames[st->depth - 1];
    /* a number or enum value that may end here: what follows is its parent's */
    if ((f->kind == K_NUM && num_can_end(f)) ||
        (f->kind == K_ENUM && s->enums[f->u.r.lo].len == f->pos))
        f--;
    if ((f->kind == K_ROOT || f->kind == K_OBJ || f->kind == K_ARR) && (f->ws & WS_CR))
        return bputc(b, '\n');
    switch (f->kind) {
    case K_ROOT: return min_value(s, s->root, b, 0);
    case K_LIT:
        return bput(b, literal_text[f->aux] + f->pos, (size_t)(literal_len[f->aux] - f->pos));
    case K_NUM: return bputc(b, '0');
    case K_ENUM: {
        uint32_t best = f->u.r.lo;
        for (uint32_t i = f->u.r.lo; i < f->u.r.hi; i++)
            if (s->enums[i].len < s->enums[best].len) best = i;
        return bput(b, s->enums[best].s + f->pos, s->enums[best].len - f->pos);
    }
    case K_KEY: {
        /* a missing required name if one is still possible, else the shortest unused one */
        const bsi_jframe *obj = f - 1;
        const jstr *p = s->props + s->nodes[obj->node].props;
        uint64_t open = bsi_jrange_bits(f->u.r.lo, f->u.r.hi) & ~obj->u.used;
        uint64_t missing = open & s->nodes[obj->node].required;
        uint32_t best = UINT32_MAX;
        if (missing)
            best = (uint32_t)__builtin_ctzll(missing);
        else
            for (uint32_t i = f->u.r.lo; i < f->u.r.hi; i++)
                if ((open >> i & 1) && (best == UINT32_MAX || p[i].len < p[best].len)) best = i;
        return best != UINT32_MAX && bput(b, p[best].s + f->pos, p[best].len - f->pos);
    }
    case K_STR: {
        /* the first byte that keeps the string going: a quote closes it, the others complete
         * an escape or a character (or make a key that is already used different) */
        static const uint8_t try[] = {'"', '0', 'd', 'c', '\\', 'u', 'a'};
        bsi_jstate t;
        for (size_t i = 0; i < sizeof try + 64; i++) {
            uint8_t c = i < sizeof try ? try[i] : (uint8_t)(0x80 + i - sizeof try);
            jcopy(&t, st);
            if (jfeed(s, &t, c)) return bputc(b, c);
        }
        return false;
    }
    case K_ARR:
        if (f->sub == A_COMMA) return min_value(s, s->nodes[f->node].items, b, 0);
        return bputc(b, ']');
    case K_OBJ: {
        const jnode *n = &s->nodes[f->node];
        int i;
        switch (f->sub) {
        case O_START:
            i = next_prop(s, f, false);
            return i < 0 ? bputc(b, '}') : put_prop(s, f, i, true, b);
        case O_KEY: return bputc(b, ':');
        case O_COLON:
            return min_value(s, n->any_keys ? NODE_ANY : s->props[n->props + f->aux].node, b, 0);
        case O_VALUE:
            i = next_prop(s, f, false);
            return i < 0 ? bputc(b, '}') : bputc(b, ',') && put_prop(s, f, i, true, b);
        case O_COMMA:
            if (n->any_keys) return bputc(b, '"'); /* then a key as any string */
            i = next_prop(s, f, true);
            return i >= 0 && put_prop(s, f, i, true, b);
        default: return false;
        }
    }
    default: return false;
    }
}

size_t bsi_jstate_finish(const bsi_jschema *s, const bsi_jstate *st, uint8_t *out, size_t cap,
                         bool *closed)
{
    bsi_jstate t;
    jcopy(&t, st);
    bbuf b = {out, 0, cap};
    while (!jclosed(&t) && !(t.depth == 2 && jcomplete(s, &t))) {
        size_t at = b.n;
        if (!finish_step(s, &t, &b) || b.n == at) return SIZE_MAX;
        for (size_t i = at; i < b.n; i++)
            if (!jfeed(s, &t, out[i])) return SIZE_MAX;
    }
    if (closed) *closed = jclosed(&t);
    return b.n;
}

bool bsi_jstate_in_string(const bsi_jstate *st)
{
    const bsi_jframe *f = &st->frames[st->depth - 1];
    return f->kind == K_STR && f->sub == S_CHARS && !f->u.r.hi;
}

/* ---------------------------------------------------------------------------------------- */
/* Token masking */

/* A trie node, in depth-first order: its byte at position depth - 1 of the tokens below it. */
typedef struct tnode {
    uint32_t end; /* index just past this node's subtree */
    uint32_t tok; /* index in the trie's sorted ids of the first token below (or ending here) */
    uint16_t depth;
    uint8_t byte;
    uint8_t n_here; /* tokens ending here (identical byte strings) */
} tnode;

typedef struct trie {
    tnode *nodes;
    uint32_t n_nodes;
    uint32_t *ids; /* token ids in byte order */
    uint32_t n_ids;
} trie;

struct bsi_jvocab {
    uint32_t n;
    uint32_t words;   /* mask words */
    uint32_t max_len; /* longest token */
    uint8_t *kind;    /* bsi_jtok_kind per id */
    uint32_t *off;    /* bytes of id i: blob[off[i], off[i + 1]) */
    uint8_t *blob;
    uint64_t *plain; /* tokens of plain string characters only */
    uint32_t *eog;   /* EOG ids */
    uint32_t n_eog;
    trie all;      /* every text token */
    trie nonplain; /* text tokens that are not plain */
};

typedef struct sort_ent {
    const uint8_t *p;
    uint32_t len;
    uint32_t id;
} sort_ent;

/* Byte order from `depth` on (the bytes before are equal), shorter first; ties keep their order. */
static inline bool sort_less(const sort_ent *a, const sort_ent *b, uint32_t depth)
{
    uint32_t n = a->len < b->len ? a->len : b->len;
    for (uint32_t i = depth; i < n; i++)
        if (a->p[i] != b->p[i]) return a->p[i] < b->p[i];
    return a->len < b->len;
}

/* Stable MSD radix sort of entries that share their first `depth` bytes (tmp: n entries). */
static void radix_sort(sort_ent *a, sort_ent *tmp, uint32_t n, uint32_t depth)
{
    if (n < 48) { /* insertion sort */
        for (uint32_t i = 1; i < n; i++) {
            sort_ent x = a[i];
            uint32_t j = i;
            for (; j > 0 && sort_less(&x, &a[j - 1], depth); j--) a[j] = a[j - 1];
            a[j] = x;
        }
        return;
    }
    uint32_t count[258] = {0}; /* bucket 0: ends at depth; 1 + byte */
    for (uint32_t i = 0; i < n; i++) count[(a[i].len > depth ? a[i].p[depth] + 1u : 0u) + 1]++;
    for (int b = 1; b < 258; b++) count[b] += count[b - 1];
    for (uint32_t i = 0; i < n; i++)
        tmp[count[a[i].len > depth ? a[i].p[depth] + 1u : 0u]++] = a[i];
    memcpy(a, tmp, n * sizeof *a);
    /* count[b] is now the end of bucket b; bucket 0 (equal strings) stays in input order */
    for (int b = 1; b < 257; b++) {
        uint32_t lo = count[b - 1], hi = count[b];
        if (hi - lo > 1) radix_sort(a + lo, tmp, hi - lo, depth + 1);
    }
}

/* Builds a trie from entries sorted by bytes. */
static inline uint32_t common_prefix(const sort_ent *a, const sort_ent *b)
{
    uint32_t m = a->len < b->len ? a->len : b->len, l = 0;
    while (l < m && a->p[l] == b->p[l]) l++;
    return l;
}

static bonsai_status trie_build(trie *t, const sort_ent *e, uint32_t n, uint32_t max_len)
{
    memset(t, 0, sizeof *t);
    /* a node per byte after the prefix shared with the previous token */
    uint64_t total = 0;
    for (uint32_t k = 0; k < n; k++) total += e[k].len - (k ? common_prefix(&e[k - 1], &e[k]) : 0);
    if (total >= UINT32_MAX)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "vocabulary too large for the JSON constraint");
    t->ids = bsi_malloc((n ? n : 1) * sizeof *t->ids);
    t->nodes = bsi_malloc((size_t)(total ? total : 1) * sizeof *t->nodes);
    uint32_t *open = bsi_malloc(((size_t)max_len + 1) * sizeof *open); /* the node at each depth */
    bonsai_status st = BONSAI_OK;
    if (!t->ids || !open || !t->nodes) {
        st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory building the JSON token structure");
        goto out;
    }
    uint32_t depth = 0, n_nodes = 0;
    for (uint32_t k = 0; k < n; k++) {
        t->ids[k] = e[k].id;
        uint32_t l = k ? common_prefix(&e[k - 1], &e[k]) : 0;
        for (; depth > l; depth--) t->nodes[open[depth]].end = n_nodes;
        if (e[k].len == l) { /* the same bytes as the previous token */
            tnode *x = &t->nodes[open[l]];
            if (x->n_here == UINT8_MAX) {
                st = bsi_fail(BONSAI_ERR_UNSUPPORTED, "more than 255 tokens with the same bytes");
                goto out;
            }
            x->n_here++;
            continue;
        }
        for (uint32_t d = l + 1; d <= e[k].len; d++) {
            tnode *x = &t->nodes[n_nodes];
            x->end = 0;
            x->tok = k;
            x->depth = (uint16_t)d;
            x->byte = e[k].p[d - 1];
            x->n_here = 0;
            open[d] = n_nodes++;
        }
        t->nodes[open[e[k].len]].n_here = 1;
        depth = e[k].len;
    }
    for (; depth > 0; depth--) t->nodes[open[depth]].end = n_nodes;
    t->n_nodes = n_nodes;
    t->n_ids = n;
out:
    free(open);
    return st;
}

static void trie_free(trie *t)
{
    free(t->nodes);
    free(t->ids);
}

void bsi_jvocab_free(bsi_jvocab *v)
{
    if (!v) return;
    free(v->kind);
    free(v->off);
    free(v->blob);
    free(v->plain);
    free(v->eog);
    trie_free(&v->all);
    trie_free(&v->nonplain);
    free(v);
}

/* Made only of characters a string may hold as they are: complete UTF-8 (as str_feed accepts
 * it), no quote, backslash or control character? */
static bool plain_bytes(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c < 0x20 || c == '"' || c == '\\') return false;
            i++;
            continue;
        }
        size_t k;
        uint8_t lo = 0x80, hi = 0xBF; /* the first continuation byte */
        if (c >= 0xC2 && c <= 0xDF)
            k = 1;
        else if (c >= 0xE0 && c <= 0xEF)
            k = 2, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
            k = 3, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        else
            return false;
        if (n - i <= k || p[i + 1] < lo || p[i + 1] > hi) return false;
        for (size_t j = 2; j <= k; j++)
            if (p[i + j] < 0x80 || p[i + j] > 0xBF) return false;
        i += k + 1;
    }
    return true;
}

bonsai_status bsi_jvocab_build(uint32_t n_tokens, bsi_jtok_fn fn, void *ctx, bsi_jvocab **out)
{
    if (!fn || !out || n_tokens > (uint32_t)INT32_MAX)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bsi_jvocab_build: bad arguments");
    *out = NULL;
    bsi_jvocab *v = bsi_calloc(1, sizeof *v);
    sort_ent *ents = NULL;
    if (!v) goto oom;
    v->n = n_tokens;
    v->words = (n_tokens + 63) / 64;
    v->kind = bsi_calloc(n_tokens ? n_tokens : 1, 1);
    v->off = bsi_calloc((size_t)n_tokens + 1, sizeof *v->off);
    v->plain = bsi_calloc(v->words ? v->words : 1, sizeof *v->plain);
    v->eog = bsi_calloc(n_tokens ? n_tokens : 1, sizeof *v->eog);
    ents = bsi_malloc((n_tokens ? n_tokens : 1) * sizeof *ents);
    if (!v->kind || !v->off || !v->plain || !v->eog || !ents) goto oom;
    size_t blob_cap = (size_t)n_tokens * 8 + 64, blob_n = 0;
    v->blob = bsi_malloc(blob_cap);
    if (!v->blob) goto oom;
    for (uint32_t id = 0; id < n_tokens; id++) {
        const uint8_t *b = NULL;
        size_t len = 0;
        bsi_jtok_kind k = fn(ctx, id, &b, &len);
        if (k != BSI_JTOK_TEXT && k != BSI_JTOK_EOG) k = BSI_JTOK_NEVER;
        if (!b) len = 0;
        if (len > UINT16_MAX) len = 0, k = BSI_JTOK_NEVER; /* no such tokens in practice */
        v->kind[id] = (uint8_t)k;
        if (blob_cap - blob_n < len) {
            while (blob_cap - blob_n < len) blob_cap *= 2;
            uint8_t *q = bsi_realloc(v->blob, blob_cap);
            if (!q) goto oom;
            v->blob = q;
        }
        if (len) memcpy(v->blob + blob_n, b, len);
        blob_n += len;
        v->off[id + 1] = (uint32_t)blob_n;
        if (blob_n > UINT32_MAX - UINT16_MAX) {
            bsi_jvocab_free(v);
            free(ents);
            return bsi_fail(BONSAI_ERR_UNSUPPORTED, "vocabulary too large for the JSON constraint");
        }
    }
    uint32_t n_text = 0, max_len = 0;
    for (uint32_t id = 0; id < n_tokens; id++) {
        uint32_t len = v->off[id + 1] - v->off[id];
        if (v->kind[id] == BSI_JTOK_EOG) v->eog[v->n_eog++] = id;
        if (v->kind[id] != BSI_JTOK_TEXT || !len) continue;
        ents[n_text].p = v->blob + v->off[id];
        ents[n_text].len = len;
        ents[n_text].id = id;
        n_text++;
        if (len > max_len) max_len = len;
        if (plain_bytes(v->blob + v->off[id], len)) v->plain[id / 64] |= 1ull << (id % 64);
    }
    v->max_len = max_len;
    sort_ent *tmp = bsi_malloc((n_text ? n_text : 1) * sizeof *tmp);
    if (!tmp) goto oom;
    radix_sort(ents, tmp, n_text, 0); /* ids ascending, so equal strings stay by id */
    free(tmp);
    bonsai_status st = trie_build(&v->all, ents, n_text, max_len);
    if (st) goto fail;
    /* the same order, without the plain tokens */
    uint32_t k = 0;
    for (uint32_t i = 0; i < n_text; i++)
        if (!(v->plain[ents[i].id / 64] >> (ents[i].id % 64) & 1)) ents[k++] = ents[i];
    st = trie_build(&v->nonplain, ents, k, max_len);
    if (st) goto fail;
    free(ents);
    *out = v;
    return BONSAI_OK;
oom:
    st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory building the JSON token structure");
fail:
    free(ents);
    bsi_jvocab_free(v);
    return st;
}

uint32_t bsi_jvocab_n(const bsi_jvocab *v)
{
    return v->n;
}

size_t bsi_jvocab_scratch_size(const bsi_jvocab *v)
{
    return ((size_t)v->max_len + 1) * sizeof(bsi_jstate);
}

static void trie_walk(const trie *t, const bsi_jschema *s, bsi_jstate *states, uint64_t *mask)
{
    const tnode *nodes = t->nodes;
    const uint32_t *ids = t->ids;
    uint32_t n = t->n_nodes;
    for (uint32_t i = 0; i < n;) {
        const tnode *x = &nodes[i];
        bsi_jstate *dst = &states[x->depth];
        jcopy(dst, &states[x->depth - 1]);
        if (!jfeed(s, dst, x->byte)) {
            i = x->end;
            continue;
        }
        for (uint32_t k = 0; k < x->n_here; k++) {
            uint32_t id = ids[x->tok + k];
            mask[id / 64] |= 1ull << (id % 64);
        }
        i++;
    }
}

static inline bool in_plain_string(const bsi_jstate *st)
{
    const bsi_jframe *f = &st->frames[st->depth - 1];
    return f->kind == K_STR && f->sub == S_CHARS;
}

void bsi_jvocab_mask(const bsi_jvocab *v, const bsi_jschema *s, const bsi_jstate *st,
                     uint64_t *mask, void *scratch)
{
    bsi_jstate *states = scratch;
    if (in_plain_string(st)) {
        memcpy(mask, v->plain, v->words * sizeof *mask);
        jcopy(&states[0], st);
        trie_walk(&v->nonplain, s, states, mask);
    } else {
        memset(mask, 0, v->words * sizeof *mask);
        if (!jclosed(st)) {
            jcopy(&states[0], st);
            trie_walk(&v->all, s, states, mask);
        }
    }
    if (jcomplete(s, st))
        for (uint32_t i = 0; i < v->n_eog; i++) mask[v->eog[i] / 64] |= 1ull << (v->eog[i] % 64);
}

bool bsi_jvocab_check(const bsi_jvocab *v, const bsi_jschema *s, const bsi_jstate *st, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n) return false;
    if (v->kind[id] == BSI_JTOK_EOG) return jcomplete(s, st);
    uint32_t len = v->off[id + 1] - v->off[id];
    if (v->kind[id] != BSI_JTOK_TEXT || !len) return false;
    if ((v->plain[id / 64] >> (id % 64) & 1) && in_plain_string(st)) return true;
    bsi_jstate tmp;
    jcopy(&tmp, st);
    const uint8_t *p = v->blob + v->off[id];
    for (uint32_t i = 0; i < len; i++)
        if (!jfeed(s, &tmp, p[i])) return false;
    return true;
}

bool bsi_jvocab_accept(const bsi_jvocab *v, const bsi_jschema *s, bsi_jstate *st, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n) return false;
    if (v->kind[id] == BSI_JTOK_EOG) return jcomplete(s, st);
    uint32_t len = v->off[id + 1] - v->off[id];
    if (v->kind[id] != BSI_JTOK_TEXT || !len) return false;
    bsi_jstate tmp;
    jcopy(&tmp, st);
    const uint8_t *p = v->blob + v->off[id];
    for (uint32_t i = 0; i < len; i++)
        if (!jfeed(s, &tmp, p[i])) return false;
    jcopy(st, &tmp);
    return true;
}

const uint8_t *bsi_jvocab_bytes(const bsi_jvocab *v, int32_t id, size_t *len)
{
    if (id < 0 || (uint32_t)id >= v->n) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = v->off[id + 1] - v->off[id];
    return v->blob + v->off[id];
}

bsi_jtok_kind bsi_jvocab_kind(const bsi_jvocab *v, int32_t id)
{
    if (id < 0 || (uint32_t)id >= v->n) return BSI_JTOK_NEVER;
    return (bsi_jtok_kind)v->kind[id];
}

bool bsi_jvocab_is_plain(const bsi_jvocab *v, int32_t id)
{
    return id >= 0 && (uint32_t)id < v->n && (v->plain[id / 64] >> (id % 64) & 1);
}

int32_t bsi_jvocab_eog_token(const bsi_jvocab *v)
{
    return v->n_eog ? (int32_t)v->eog[0] : -1;
}

size_t bsi_jvocab_spell(const bsi_jvocab *v, const uint8_t *p, size_t n, int32_t *first)
{
    const trie *t = &v->all;
    size_t tokens = 0;
    if (first) *first = -1;
    for (size_t at = 0; at < n;) {
        /* the longest token that p[at ..] starts with: down the trie, children by sibling jumps */
        uint32_t lo = 0, hi = t->n_nodes; /* the children of the current node */
        size_t best_len = 0;
        int32_t best = -1;
        for (size_t d = 0; at + d < n && lo < hi;) {
            uint32_t j = lo;
            while (j < hi && t->nodes[j].byte != p[at + d]) j = t->nodes[j].end;
            if (j >= hi) break;
            d++;
            if (t->nodes[j].n_here) {
                best_len = d;
                best = (int32_t)t->ids[t->nodes[j].tok];
            }
            lo = j + 1;
            hi = t->nodes[j].end;
        }
        if (!best_len) return SIZE_MAX;
        if (!tokens && first) *first = best;
        tokens++;
        at += best_len;
    }
    return tokens;
}
