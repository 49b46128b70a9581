/* The JSON schema compiler (see json_constraint.h): a schema parsed by json.h becomes a table of
 * nodes, with the object property names (as their shortest JSON encoding plus the closing
 * quote) and the enum values (compact canonical serialisations) sorted for the matcher. */
#include "json_schema.h"

#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct jbuf {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} jbuf;

static void buf_put(jbuf *b, const void *src, size_t n)
{
    if (b->oom || !n) return;
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n) cap *= 2;
        uint8_t *p = bsi_realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void buf_putc(jbuf *b, uint8_t c)
{
    buf_put(b, &c, 1);
}

/* The shortest JSON encoding of a string's content (without quotes). */
static void encode_string(jbuf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default: break;
        }
        if (esc) {
            buf_put(b, esc, 2);
        } else if (c < 0x20) {
            char u[8];
            snprintf(u, sizeof u, "\\u%04x", c);
            buf_put(b, u, 6);
        } else {
            buf_putc(b, c);
        }
    }
}

/* A value's compact canonical serialisation. */
static void serialize(jbuf *b, const bsi_json *v)
{
    size_t n;
    const char *s;
    bool flag;
    switch (bsi_json_type_of(v)) {
    case BSI_JSON_NULL: buf_put(b, "null", 4); break;
    case BSI_JSON_BOOL:
        bsi_json_bool(v, &flag);
        if (flag)
            buf_put(b, "true", 4);
        else
            buf_put(b, "false", 5);
        break;
    case BSI_JSON_NUMBER:
        s = bsi_json_number_text(v, &n);
        buf_put(b, s, n);
        break;
    case BSI_JSON_STRING:
        s = bsi_json_string(v, &n);
        buf_putc(b, '"');
        encode_string(b, s, n);
        buf_putc(b, '"');
        break;
    case BSI_JSON_ARRAY:
        buf_putc(b, '[');
        for (size_t i = 0; i < bsi_json_array_len(v); i++) {
            if (i) buf_putc(b, ',');
            serialize(b, bsi_json_array_at(v, i));
        }
        buf_putc(b, ']');
        break;
    case BSI_JSON_OBJECT:
        buf_putc(b, '{');
        for (size_t i = 0; i < bsi_json_object_len(v); i++) {
            const bsi_json *m = bsi_json_object_at(v, i, &s, &n);
            if (i) buf_putc(b, ',');
            buf_putc(b, '"');
            encode_string(b, s, n);
            buf_put(b, "\":", 2);
            serialize(b, m);
        }
        buf_putc(b, '}');
        break;
    default: break;
    }
}

typedef struct jcomp {
    bsi_jschema *s;
    char path[512]; /* JSON pointer of the schema being compiled */
    size_t path_len;
} jcomp;

static bonsai_status comp_oom(void)
{
    return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory compiling a JSON schema");
}

static const char *path_of(jcomp *c)
{
    return c->path_len ? c->path : "#";
}

static void path_push(jcomp *c, const char *seg, size_t n)
{
    size_t k = c->path_len;
    if (!k) c->path[k++] = '#';
    if (k < sizeof c->path - 1) c->path[k++] = '/';
    for (size_t i = 0; i < n && k < sizeof c->path - 3; i++) {
        if (seg[i] == '~' || seg[i] == '/') {
            c->path[k++] = '~';
            c->path[k++] = seg[i] == '~' ? '0' : '1';
        } else if (seg[i] == 0) {
            c->path[k++] = '?';
        } else {
            c->path[k++] = seg[i];
        }
    }
    c->path[k] = 0;
    c->path_len = k;
}

static void path_pop(jcomp *c, size_t len)
{
    c->path_len = len;
    c->path[len] = 0;
}

static bool grow(void **p, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap) return true;
    uint32_t cap2 = *cap ? *cap : 16;
    while (cap2 < need) cap2 *= 2;
    void *q = bsi_realloc(*p, (size_t)cap2 * elem);
    if (!q) return false;
    *p = q;
    *cap = cap2;
    return true;
}

static int jstr_cmp(const void *pa, const void *pb)
{
    const jstr *a = pa, *b = pb;
    uint32_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->s, b->s, n);
    if (r) return r;
    return (a->len > b->len) - (a->len < b->len);
}

static const uint8_t *arena_copy(bsi_arena *a, const void *p, size_t n)
{
    uint8_t *q = bsi_arena_alloc(a, n ? n : 1);
    if (q && n) memcpy(q, p, n);
    return q;
}

static bool type_matches(uint8_t types, const bsi_json *v)
{
    double d;
    switch (bsi_json_type_of(v)) {
    case BSI_JSON_NULL: return types & T_NULL;
    case BSI_JSON_BOOL: return types & T_BOOL;
    case BSI_JSON_NUMBER:
        if (types & T_NUM) return true;
        /* a whole number (beyond the int64 range left out) */
        return (types & T_INT) && bsi_json_number(v, &d) && d > -9.2e18 && d < 9.2e18 &&
               d == (double)(int64_t)d;
    case BSI_JSON_STRING: return types & T_STR;
    case BSI_JSON_ARRAY: return types & T_ARR;
    case BSI_JSON_OBJECT: return types & T_OBJ;
    default: return false;
    }
}

static bonsai_status parse_type(jcomp *c, const bsi_json *t, uint8_t *out)
{
    static const struct {
        const char *name;
        uint8_t bits;
    } names[] = {{"null", T_NULL},  {"boolean", T_BOOL}, {"integer", T_INT}, {"number", T_NUM},
                 {"string", T_STR}, {"array", T_ARR},    {"object", T_OBJ}};
    size_t n = bsi_json_type_of(t) == BSI_JSON_ARRAY ? bsi_json_array_len(t) : 1;
    if (bsi_json_type_of(t) == BSI_JSON_ARRAY && n == 0)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "JSON schema: empty \"type\" array at %s",
                        path_of(c));
    uint8_t bits = 0;
    for (size_t i = 0; i < n; i++) {
        const bsi_json *e = bsi_json_type_of(t) == BSI_JSON_ARRAY ? bsi_json_array_at(t, i) : t;
        const char *name = bsi_json_string(e, NULL);
        if (!name)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "JSON schema: \"type\" at %s is not a string or an array of strings",
                            path_of(c));
        size_t k = 0;
        while (k < sizeof names / sizeof names[0] && strcmp(names[k].name, name)) k++;
        if (k == sizeof names / sizeof names[0])
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "JSON schema: unknown type \"%s\" at %s",
                            name, path_of(c));
        bits |= names[k].bits;
    }
    *out = bits;
    return BONSAI_OK;
}

static bonsai_status compile_node(jcomp *c, const bsi_json *sch, int nest, uint16_t *out);

static bonsai_status compile_child(jcomp *c, const char *seg, size_t seg_len, const char *seg2,
                                   size_t seg2_len, const bsi_json *sch, int nest, uint16_t *out)
{
    size_t saved = c->path_len;
    path_push(c, seg, seg_len);
    if (seg2) path_push(c, seg2, seg2_len);
    bonsai_status st = compile_node(c, sch, nest, out);
    path_pop(c, saved);
    return st;
}

static bonsai_status compile_enum(jcomp *c, jnode *node, const bsi_json *values, size_t n_values,
                                  const bsi_json *single, uint8_t types, bool typed)
{
    bsi_jschema *s = c->s;
    jstr *list = bsi_calloc(n_values ? n_values : 1, sizeof *list);
    if (!list) return comp_oom();
    jbuf b = {0};
    size_t n = 0;
    bonsai_status st = BONSAI_OK;
    for (size_t i = 0; i < n_values; i++) {
        const bsi_json *v = single ? single : bsi_json_array_at(values, i);
        if (typed && !type_matches(types, v)) continue;
        b.n = 0;
        serialize(&b, v);
        if (b.oom) {
            st = comp_oom();
            goto out;
        }
        if (b.n > UINT16_MAX) {
            st = bsi_fail(BONSAI_ERR_UNSUPPORTED,
                          "JSON schema: an enum value at %s is longer than %u bytes", path_of(c),
                          (unsigned)UINT16_MAX);
            goto out;
        }
        list[n].s = arena_copy(s->arena, b.p, b.n);
        list[n].len = (uint32_t)b.n;
        if (!list[n].s) {
            st = comp_oom();
            goto out;
        }
        n++;
    }
    if (!n) {
        st =
            bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "JSON schema: no %s value at %s matches its type",
                     single ? "const" : "enum", path_of(c));
        goto out;
    }
    qsort(list, n, sizeof *list, jstr_cmp);
    size_t u = 1;
    for (size_t i = 1; i < n; i++)
        if (jstr_cmp(&list[i], &list[u - 1])) list[u++] = list[i];
    if ((uint64_t)s->n_enums + u > UINT32_MAX ||
        !grow((void **)&s->enums, &s->cap_enums, s->n_enums + (uint32_t)u, sizeof(jstr))) {
        st = comp_oom();
        goto out;
    }
    memcpy(s->enums + s->n_enums, list, u * sizeof *list);
    node->has_enum = 1;
    node->enum_lo = s->n_enums;
    s->n_enums += (uint32_t)u;
    node->enum_hi = s->n_enums;
out:
    free(b.p);
    free(list);
    return st;
}

static bonsai_status compile_object(jcomp *c, uint32_t idx, const bsi_json *sch, int nest)
{
    bsi_jschema *s = c->s;
    const bsi_json *props = bsi_json_object_get(sch, "properties");
    const bsi_json *req = bsi_json_object_get(sch, "required");
    const bsi_json *addl = bsi_json_object_get(sch, "additionalProperties");
    if (props && bsi_json_type_of(props) != BSI_JSON_OBJECT)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON schema: \"properties\" at %s is not an object", path_of(c));
    size_t n = bsi_json_object_len(props);
    if (n > BSI_JSON_MAX_PROPS)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "JSON schema: %zu properties at %s, at most %d are supported", n,
                        path_of(c), BSI_JSON_MAX_PROPS);
    bool closed = false;
    if (addl) {
        bool b = true;
        if (bsi_json_bool(addl, &b) && !b) {
            closed = true;
        } else if ((bsi_json_type_of(addl) == BSI_JSON_BOOL ||
                    (bsi_json_type_of(addl) == BSI_JSON_OBJECT && !bsi_json_object_len(addl))) &&
                   !n) {
            /* any properties, as without "properties" */
        } else {
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "JSON schema: \"additionalProperties\" at %s: only false is supported "
                            "(or true without \"properties\")",
                            path_of(c));
        }
    }
    jstr list[BSI_JSON_MAX_PROPS];
    jbuf b = {0};
    for (size_t i = 0; i < n; i++) {
        const char *key;
        size_t key_len;
        const bsi_json *sub = bsi_json_object_at(props, i, &key, &key_len);
        b.n = 0;
        encode_string(&b, key, key_len);
        buf_putc(&b, '"');
        if (b.oom || b.n > UINT16_MAX) {
            free(b.p);
            if (b.oom) return comp_oom();
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "JSON schema: a property name at %s is too long", path_of(c));
        }
        list[i].s = arena_copy(s->arena, b.p, b.n);
        list[i].len = (uint32_t)b.n;
        if (!list[i].s) {
            free(b.p);
            return comp_oom();
        }
        bonsai_status st =
            compile_child(c, "properties", 10, key, key_len, sub, nest + 1, &list[i].node);
        if (st) {
            free(b.p);
            return st;
        }
    }
    qsort(list, n, sizeof *list, jstr_cmp);
    uint64_t required = 0;
    if (req) {
        if (bsi_json_type_of(req) != BSI_JSON_ARRAY) {
            free(b.p);
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "JSON schema: \"required\" at %s is not an array", path_of(c));
        }
        for (size_t i = 0; i < bsi_json_array_len(req); i++) {
            size_t name_len;
            const char *name = bsi_json_string(bsi_json_array_at(req, i), &name_len);
            if (!name) {
                free(b.p);
                return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                                "JSON schema: \"required\" at %s holds a non-string", path_of(c));
            }
            b.n = 0;
            encode_string(&b, name, name_len);
            buf_putc(&b, '"');
            if (b.oom) {
                free(b.p);
                return comp_oom();
            }
            jstr key = {b.p, (uint32_t)b.n, 0};
            const jstr *hit = bsearch(&key, list, n, sizeof *list, jstr_cmp);
            if (!hit) {
                free(b.p);
                return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                                "JSON schema: required property \"%s\" at %s is not in "
                                "\"properties\"",
                                name, path_of(c));
            }
            required |= 1ull << (hit - list);
        }
    }
    free(b.p);
    if (!grow((void **)&s->props, &s->cap_props, s->n_props + (uint32_t)n, sizeof(jstr)))
        return comp_oom();
    if (n) memcpy(s->props + s->n_props, list, n * sizeof *list);
    jnode *node = &s->nodes[idx];
    node->props = s->n_props;
    node->n_props = (uint8_t)n;
    node->required = required;
    node->all = bsi_jrange_bits(0, (uint32_t)n);
    node->any_keys = !n && !closed;
    s->n_props += (uint32_t)n;
    return BONSAI_OK;
}

static bonsai_status compile_node(jcomp *c, const bsi_json *sch, int nest, uint16_t *out)
{
    static const char *const known[] = {
        "type",  "properties",  "required", "items", "enum",     "const",   "additionalProperties",
        "title", "description", "$schema",  "$id",   "$comment", "default", "examples"};
    bsi_jschema *s = c->s;
    bool flag;
    if (bsi_json_bool(sch, &flag)) {
        if (flag) {
            *out = NODE_ANY;
            return BONSAI_OK;
        }
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "JSON schema: false (no value allowed) at %s is not supported", path_of(c));
    }
    if (bsi_json_type_of(sch) != BSI_JSON_OBJECT)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON schema: the schema at %s is a %s, not an object", path_of(c),
                        bsi_json_type_name(bsi_json_type_of(sch)));
    for (size_t i = 0; i < bsi_json_object_len(sch); i++) {
        const char *key;
        size_t key_len;
        bsi_json_object_at(sch, i, &key, &key_len);
        size_t k = 0;
        while (k < sizeof known / sizeof known[0] &&
               !(strlen(known[k]) == key_len && !memcmp(known[k], key, key_len)))
            k++;
        if (k == sizeof known / sizeof known[0])
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "JSON schema: unsupported keyword \"%.*s\" at %s", (int)key_len, key,
                            path_of(c));
    }
    const bsi_json *type = bsi_json_object_get(sch, "type");
    const bsi_json *items = bsi_json_object_get(sch, "items");
    const bsi_json *en = bsi_json_object_get(sch, "enum");
    const bsi_json *cst = bsi_json_object_get(sch, "const");
    bool objectish = bsi_json_object_get(sch, "properties") ||
                     bsi_json_object_get(sch, "required") ||
                     bsi_json_object_get(sch, "additionalProperties");
    uint8_t types = 0;
    if (type) {
        bonsai_status st = parse_type(c, type, &types);
        if (st) return st;
    } else {
        if (objectish) types |= T_OBJ;
        if (items) types |= T_ARR;
        if (!types && !en && !cst) {
            *out = NODE_ANY; /* only annotations */
            return BONSAI_OK;
        }
        if (!types) types = T_ANY;
    }
    if (en && cst)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "JSON schema: \"enum\" and \"const\" together at %s", path_of(c));
    if (en && (bsi_json_type_of(en) != BSI_JSON_ARRAY || !bsi_json_array_len(en)))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON schema: \"enum\" at %s is not a non-empty array", path_of(c));
    if (!en && !cst && (types & (T_OBJ | T_ARR)) && nest >= BSI_JSON_MAX_NEST)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                        "JSON schema: containers nested deeper than %d at %s", BSI_JSON_MAX_NEST,
                        path_of(c));
    if (s->n_nodes >= UINT16_MAX)
        return bsi_fail(BONSAI_ERR_UNSUPPORTED, "JSON schema: too many subschemas (at %s)",
                        path_of(c));
    if (!grow((void **)&s->nodes, &s->cap_nodes, s->n_nodes + 1, sizeof(jnode))) return comp_oom();
    uint32_t idx = s->n_nodes++;
    memset(&s->nodes[idx], 0, sizeof(jnode));
    s->nodes[idx].types = types;
    s->nodes[idx].items = NODE_ANY;
    bonsai_status st = BONSAI_OK;
    if (en || cst) {
        /* an enum: only its values, of the given types */
        st = compile_enum(c, &s->nodes[idx], en, en ? bsi_json_array_len(en) : 1, cst, types,
                          type != NULL);
        if (st) return st;
        *out = (uint16_t)idx;
        return BONSAI_OK;
    }
    if (types & T_OBJ) {
        st = compile_object(c, idx, sch, nest);
        if (st) return st;
    }
    if ((types & T_ARR) && items) {
        if (bsi_json_type_of(items) == BSI_JSON_ARRAY)
            return bsi_fail(BONSAI_ERR_UNSUPPORTED,
                            "JSON schema: \"items\" as an array (tuple) at %s is not supported",
                            path_of(c));
        uint16_t item;
        st = compile_child(c, "items", 5, NULL, 0, items, nest + 1, &item);
        if (st) return st;
        s->nodes[idx].items = item;
    }
    *out = (uint16_t)idx;
    return BONSAI_OK;
}

void bsi_jschema_free(bsi_jschema *s)
{
    if (!s) return;
    free(s->nodes);
    free(s->props);
    free(s->enums);
    bsi_arena_free(s->arena);
    free(s);
}

bonsai_status bsi_jschema_compile(const char *text, size_t len, bsi_jschema **out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "JSON schema: NULL output");
    *out = NULL;
    bsi_jschema *s = bsi_calloc(1, sizeof *s);
    if (!s) return comp_oom();
    s->arena = bsi_arena_new();
    if (!s->arena || !grow((void **)&s->nodes, &s->cap_nodes, 2, sizeof(jnode))) {
        bsi_jschema_free(s);
        return comp_oom();
    }
    /* node 0: any value */
    memset(&s->nodes[0], 0, sizeof(jnode));
    s->nodes[0].types = T_ANY;
    s->nodes[0].any_keys = 1;
    s->nodes[0].items = NODE_ANY;
    s->n_nodes = 1;
    bonsai_status st = BONSAI_OK;
    if (!text) {
        /* JSON mode: any object */
        s->nodes[1] = s->nodes[0];
        s->nodes[1].types = T_OBJ;
        s->n_nodes = 2;
        s->root = 1;
    } else {
        bsi_arena *tmp = bsi_arena_new();
        if (!tmp) {
            bsi_jschema_free(s);
            return comp_oom();
        }
        const bsi_json *root = NULL;
        st = bsi_json_parse(tmp, text, len, "schema", &root);
        if (st) {
            if (st != BONSAI_ERR_NO_MEMORY) {
                char msg[1024];
                snprintf(msg, sizeof msg, "%s", bonsai_last_error());
                st =
                    bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "JSON schema is not valid JSON: %s", msg);
            }
        } else {
            jcomp c = {.s = s};
            st = compile_node(&c, root, 0, &s->root);
        }
        bsi_arena_free(tmp);
    }
    if (st) {
        bsi_jschema_free(s);
        return st;
    }
    *out = s;
    return BONSAI_OK;
}
