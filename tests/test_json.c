/* The strict JSON parser: every kind of value, escapes, numbers, limits, every class of invalid
 * input (never a crash, always BONSAI_ERR_CORRUPT), and the real 11 MB Qwen3 tokenizer.json. */
#include "test_util.h"

#include "arena.h"
#include "json.h"

#include <math.h>
#include <time.h>

static bsi_arena *arena;

static int setup(void **state)
{
    (void)state;
    arena = bsi_arena_new();
    return arena ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    bsi_arena_free(arena);
    arena = NULL;
    return 0;
}

/* Parses n bytes from an exact-size heap copy, so that any over-read trips the sanitizers. */
static bonsai_status parse_n(const char *text, size_t n, const bsi_json **root)
{
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, text, n);
    bonsai_status st = bsi_json_parse(arena, copy, n, "t", root);
    free(copy);
    return st;
}

static const bsi_json *parse_ok(const char *text)
{
    const bsi_json *root = NULL;
    bonsai_status st = parse_n(text, strlen(text), &root);
    if (st) fail_msg("parsing %s: %s", text, bonsai_last_error());
    assert_non_null(root);
    return root;
}

static void parse_bad(const char *text, size_t n, const char *needle)
{
    const bsi_json *root = (const bsi_json *)1;
    bonsai_status st = parse_n(text, n, &root);
    if (st != BONSAI_ERR_CORRUPT)
        fail_msg("input \"%.*s\" (%zu bytes): status %d, expected CORRUPT", (int)n, text, n, st);
    assert_null(root);
    if (needle && !strstr(bonsai_last_error(), needle))
        fail_msg("input \"%.*s\": error \"%s\" lacks \"%s\"", (int)n, text, bonsai_last_error(),
                 needle);
}

#define BAD(lit, needle) parse_bad(lit, sizeof(lit) - 1, needle)

static void assert_string(const bsi_json *v, const char *expected, size_t expected_len)
{
    size_t len = 0;
    const char *s = bsi_json_string(v, &len);
    assert_non_null(s);
    assert_int_equal(len, expected_len);
    assert_memory_equal(s, expected, expected_len);
    assert_int_equal(s[len], 0);
}

static double number_of(const char *text)
{
    double d = NAN;
    assert_true(bsi_json_number(parse_ok(text), &d));
    return d;
}

static void test_scalars(void **state)
{
    (void)state;
    assert_int_equal(bsi_json_type_of(parse_ok("null")), BSI_JSON_NULL);
    bool b = false;
    assert_true(bsi_json_bool(parse_ok(" true "), &b));
    assert_true(b);
    assert_true(bsi_json_bool(parse_ok("\t\r\nfalse\n"), &b));
    assert_false(b);
    assert_int_equal(bsi_json_type_of(parse_ok("42")), BSI_JSON_NUMBER);
    assert_string(parse_ok("\"hi\""), "hi", 2);
    assert_string(parse_ok("\"\""), "", 0);
    /* a leading byte order mark is skipped */
    assert_string(parse_ok("\xEF\xBB\xBF\"x\""), "x", 1);
    /* accessors on the wrong type or NULL */
    const bsi_json *n = parse_ok("1");
    assert_null(bsi_json_string(n, NULL));
    assert_false(bsi_json_bool(n, &b));
    assert_int_equal(bsi_json_array_len(n), 0);
    assert_null(bsi_json_array_at(n, 0));
    assert_null(bsi_json_object_get(n, "a"));
    assert_null(bsi_json_object_get(NULL, "a"));
    assert_int_equal(bsi_json_type_of(NULL), BSI_JSON_INVALID);
    assert_false(bsi_json_number(parse_ok("\"1\""), NULL));
    assert_string_equal(bsi_json_type_name(BSI_JSON_OBJECT), "object");
    assert_string_equal(bsi_json_type_name(BSI_JSON_INVALID), "invalid");
}

static void test_containers(void **state)
{
    (void)state;
    const bsi_json *r =
        parse_ok("{\"z\": [1, \"two\", [], {}, null, true], \"a\": {\"b\": {\"c\": 3}}, \"m\": 0}");
    assert_int_equal(bsi_json_type_of(r), BSI_JSON_OBJECT);
    assert_int_equal(bsi_json_object_len(r), 3);
    const char *key;
    size_t key_len;
    /* source order kept */
    const bsi_json *z = bsi_json_object_at(r, 0, &key, &key_len);
    assert_int_equal(key_len, 1);
    assert_string_equal(key, "z");
    bsi_json_object_at(r, 2, &key, NULL);
    assert_string_equal(key, "m");
    assert_null(bsi_json_object_at(r, 3, NULL, NULL));
    assert_ptr_equal(bsi_json_object_get(r, "z"), z);
    assert_int_equal(bsi_json_array_len(z), 6);
    int64_t i = 0;
    assert_true(bsi_json_int64(bsi_json_array_at(z, 0), &i));
    assert_int_equal(i, 1);
    assert_string(bsi_json_array_at(z, 1), "two", 3);
    assert_int_equal(bsi_json_type_of(bsi_json_array_at(z, 2)), BSI_JSON_ARRAY);
    assert_int_equal(bsi_json_array_len(bsi_json_array_at(z, 2)), 0);
    assert_int_equal(bsi_json_type_of(bsi_json_array_at(z, 3)), BSI_JSON_OBJECT);
    assert_int_equal(bsi_json_object_len(bsi_json_array_at(z, 3)), 0);
    assert_int_equal(bsi_json_type_of(bsi_json_array_at(z, 4)), BSI_JSON_NULL);
    assert_int_equal(bsi_json_type_of(bsi_json_array_at(z, 5)), BSI_JSON_BOOL);
    assert_null(bsi_json_array_at(z, 6));
    /* chained lookups, NULL-safe */
    const bsi_json *c =
        bsi_json_object_get(bsi_json_object_get(bsi_json_object_get(r, "a"), "b"), "c");
    assert_true(bsi_json_int64(c, &i));
    assert_int_equal(i, 3);
    assert_null(bsi_json_object_get(bsi_json_object_get(r, "nope"), "c"));
    assert_null(bsi_json_object_get(r, "Z"));
    assert_null(bsi_json_object_get(r, ""));
}

/* Objects large enough for the hash index, with keys differing only after a NUL. */
static void test_large_object(void **state)
{
    (void)state;
    enum { N = 2000 };
    char *text = malloc(N * 32 + 64);
    assert_non_null(text);
    size_t k = 0;
    text[k++] = '{';
    for (int j = 0; j < N; j++)
        k += (size_t)sprintf(text + k, "%s\"key%d\\u0000x\": %d", j ? "," : "", j, j);
    text[k++] = '}';
    text[k] = 0;
    const bsi_json *r = parse_ok(text);
    assert_int_equal(bsi_json_object_len(r), N);
    for (int j = 0; j < N; j++) {
        char key[32];
        int n = sprintf(key, "key%d", j);
        key[n] = 0;
        key[n + 1] = 'x';
        int64_t v = -1;
        assert_true(bsi_json_int64(bsi_json_object_getn(r, key, (size_t)n + 2), &v));
        assert_int_equal(v, j);
        assert_null(bsi_json_object_getn(r, key, (size_t)n)); /* "keyN" alone is absent */
        const char *got;
        size_t got_len;
        bsi_json_object_at(r, (size_t)j, &got, &got_len);
        assert_int_equal(got_len, (size_t)n + 2);
        assert_memory_equal(got, key, got_len);
    }
    /* a duplicate in a large object is found too */
    text[k - 1] = ',';
    sprintf(text + k, "\"key7\\u0000x\": 1}");
    parse_bad(text, strlen(text), "duplicate key \"key7");
    free(text);
}

static void test_escapes(void **state)
{
    (void)state;
    assert_string(parse_ok("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\""), "\" \\ / \b \f \n \r \t", 15);
    assert_string(parse_ok("\"\\u0041\\u00e9\\u20AC\""), "A\xC3\xA9\xE2\x82\xAC", 6);
    assert_string(parse_ok("\"\\u0000\""), "\0", 1);
    assert_string(parse_ok("\"a\\u0000b\""), "a\0b", 3);
    assert_string(parse_ok("\"\\uD83D\\uDE00\""), "\xF0\x9F\x98\x80", 4);
    assert_string(parse_ok("\"\\udbff\\udfff\""), "\xF4\x8F\xBF\xBF", 4);
    assert_string(parse_ok("\"\\uD800\\uDC00x\""), "\xF0\x90\x80\x80x", 5);
    assert_string(parse_ok("\"\\uFFFF\\u07FF\\u0080\\u007f\""), "\xEF\xBF\xBF\xDF\xBF\xC2\x80\x7F",
                  8);
    /* raw UTF-8 of every length, DEL, the largest code point */
    assert_string(parse_ok("\"\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\x7F\xF4\x8F\xBF\xBF\""),
                  "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\x7F\xF4\x8F\xBF\xBF", 14);
    assert_string(parse_ok("\"\xEF\xBF\xBF\xED\x9F\xBF\xEE\x80\x80\""),
                  "\xEF\xBF\xBF\xED\x9F\xBF\xEE\x80\x80", 9);
    /* keys are decoded the same way */
    const bsi_json *r = parse_ok("{\"\\u00e9t\\u00e9\": 1, \"a\\nb\": 2}");
    assert_non_null(bsi_json_object_get(r, "\xC3\xA9t\xC3\xA9"));
    assert_non_null(bsi_json_object_get(r, "a\nb"));
}

static void test_numbers(void **state)
{
    (void)state;
    assert_true(number_of("0") == 0.0 && !signbit(number_of("0")));
    assert_true(number_of("-0") == 0.0 && signbit(number_of("-0")));
    assert_true(signbit(number_of("-0.0e5")));
    assert_true(number_of("1") == 1.0);
    assert_true(number_of("-17") == -17.0);
    assert_true(number_of("1.5e3") == 1500.0);
    assert_true(number_of("1E-2") == 0.01);
    assert_true(number_of("2.5E+2") == 250.0);
    assert_true(number_of("0.1") == 0.1);
    assert_true(number_of("0.000001") == 1e-6);
    assert_true(number_of("3.141592653589793") == 3.141592653589793);
    assert_true(number_of("2.2250738585072014e-308") == 2.2250738585072014e-308);
    assert_true(number_of("4.9e-324") == 4.9e-324);
    assert_true(number_of("1.7976931348623157e308") == 1.7976931348623157e308);
    assert_true(number_of("123456789012345678901234567890") == 123456789012345678901234567890.0);
    assert_true(number_of("9007199254740993") == 9007199254740992.0); /* rounds to even */
    assert_true(number_of("0.30000000000000004") == 0.30000000000000004);
    assert_true(isinf(number_of("1e400")) && number_of("1e400") > 0);
    assert_true(isinf(number_of("-1e400")) && number_of("-1e400") < 0);
    assert_true(number_of("1e-400") == 0.0);
    assert_true(number_of("1e99999999999999999999") > 1e308);
    /* the text is kept exactly */
    size_t len;
    const char *text = bsi_json_number_text(parse_ok(" -12.50e+003 "), &len);
    assert_string_equal(text, "-12.50e+003");
    assert_int_equal(len, 11);
    const char *big = "123456789012345678901234567890.123456789e-5";
    assert_string_equal(bsi_json_number_text(parse_ok(big), NULL), big);
    assert_null(bsi_json_number_text(parse_ok("null"), NULL));
    /* integers */
    int64_t i;
    assert_true(bsi_json_int64(parse_ok("151668"), &i));
    assert_int_equal(i, 151668);
    assert_true(bsi_json_int64(parse_ok("-3.0"), &i));
    assert_int_equal(i, -3);
    assert_true(bsi_json_int64(parse_ok("3e2"), &i));
    assert_int_equal(i, 300);
    assert_true(bsi_json_int64(parse_ok("9007199254740992"), &i));
    assert_int_equal(i, 9007199254740992ll);
    assert_false(bsi_json_int64(parse_ok("1.5"), &i));
    assert_false(bsi_json_int64(parse_ok("1e300"), &i));
    assert_false(bsi_json_int64(parse_ok("\"1\""), &i));
}

static void nested(int depth, const char *open, const char *close, bool ok)
{
    size_t ol = strlen(open), cl = strlen(close);
    char *text = malloc((size_t)depth * (ol + cl) + 2);
    assert_non_null(text);
    size_t k = 0;
    for (int i = 0; i < depth; i++, k += ol) memcpy(text + k, open, ol);
    text[k++] = '0'; /* the innermost value */
    for (int i = 0; i < depth; i++, k += cl) memcpy(text + k, close, cl);
    const bsi_json *root = NULL;
    bonsai_status st = parse_n(text, k, &root);
    free(text);
    if (ok) {
        assert_int_equal(st, BONSAI_OK);
        const bsi_json *v = root;
        for (int i = 0; i < depth; i++)
            for (const char *c = open; *c; c++)
                if (*c == '[')
                    v = bsi_json_array_at(v, 0);
                else if (*c == '{')
                    v = bsi_json_object_get(v, "k");
        assert_int_equal(bsi_json_type_of(v), BSI_JSON_NUMBER);
    } else {
        assert_error(st, BONSAI_ERR_CORRUPT, "nesting deeper than 256");
    }
}

static void test_depth(void **state)
{
    (void)state;
    nested(BSI_JSON_MAX_DEPTH, "[", "]", true);
    nested(BSI_JSON_MAX_DEPTH + 1, "[", "]", false);
    nested(BSI_JSON_MAX_DEPTH, "{\"k\":", "}", true);
    nested(BSI_JSON_MAX_DEPTH + 1, "{\"k\":", "}", false);
    nested(100000, "[", "]", false); /* no stack overflow */
    nested(BSI_JSON_MAX_DEPTH / 2, "[{\"k\":", "}]", true);
}

static void test_invalid(void **state)
{
    (void)state;
    BAD("", "end of input");
    BAD("   \n", "t:2:1: unexpected end of input");
    BAD("[1,]", "trailing comma");
    BAD("[1,\n ]", "t:2:2: trailing comma");
    BAD("{\"a\":1,}", "trailing comma");
    BAD("{a:1}", "object key");
    BAD("{'a':1}", "object key");
    BAD("{\"a\" 1}", "':'");
    BAD("{\"a\":}", "a value");
    BAD("{\"a\":1 \"b\":2}", "',' or '}'");
    BAD("[1 2]", "',' or ']'");
    BAD("[,1]", "a value");
    BAD("{,}", "object key");
    BAD("[1]]", "end of the input");
    BAD("[1] x", "end of the input");
    BAD("1 2", "end of the input");
    BAD("{} {}", "end of the input");
    BAD("'a'", "a value");
    BAD("nul", "literal");
    BAD("True", "a value");
    BAD("nulll", "end of the input");
    BAD("NaN", "a value");
    BAD("Infinity", "a value");
    BAD("-Infinity", "digit");
    BAD("undefined", "a value");
    /* control characters must be escaped */
    BAD("\"a\x01\"", "control character 0x01");
    BAD("\"a\nb\"", "control character 0x0a");
    BAD("\"\t\"", "control character 0x09");
    BAD("[\"\x1f\"]", "control character");
    BAD("\"a\0b\"", "control character 0x00");
    BAD("\0", "byte 0x00");
    /* escapes */
    BAD("\"\\x41\"", "invalid escape '\\x'");
    BAD("\"\\a\"", "invalid escape");
    BAD("\"\\'\"", "invalid escape");
    BAD("\"\\U0041\"", "invalid escape");
    BAD("\"\\u12\"", "four hex digits");
    BAD("\"\\u12G4\"", "four hex digits");
    BAD("\"\\u\"", "four hex digits");
    BAD("\"\\\"", "unterminated string");
    BAD("\"\\\xC3\xA9\"", "invalid escape");
    /* lone and reversed surrogates */
    BAD("\"\\uD800\"", "not followed by a low one");
    BAD("\"\\uD800x\"", "not followed by a low one");
    BAD("\"\\uDBFF\\n\"", "not followed by a low one");
    BAD("\"\\uD800\\u0041\"", "not followed by a low one");
    BAD("\"\\uD800\\uD800\"", "not followed by a low one");
    BAD("\"\\uDC00\"", "lone low surrogate");
    BAD("\"\\uDFFF\\uD800\"", "lone low surrogate");
    BAD("\"\\uD800\\uDC0\"", "four hex digits");
    /* invalid UTF-8 */
    BAD("\"\x80\"", "invalid UTF-8");
    BAD("\"\xBF\"", "invalid UTF-8");
    BAD("\"\xC0\x80\"", "invalid UTF-8");         /* overlong NUL */
    BAD("\"\xC1\xBF\"", "invalid UTF-8");         /* overlong */
    BAD("\"\xE0\x80\xAF\"", "invalid UTF-8");     /* overlong '/' */
    BAD("\"\xF0\x8F\xBF\xBF\"", "invalid UTF-8"); /* overlong U+FFFF */
    BAD("\"\xED\xA0\x80\"", "invalid UTF-8");     /* encoded surrogate U+D800 */
    BAD("\"\xED\xBF\xBF\"", "invalid UTF-8");     /* encoded surrogate U+DFFF */
    BAD("\"\xF4\x90\x80\x80\"", "invalid UTF-8"); /* above U+10FFFF */
    BAD("\"\xF5\x80\x80\x80\"", "invalid UTF-8");
    BAD("\"\xF8\x88\x80\x80\x80\"", "invalid UTF-8");
    BAD("\"\xFE\"", "invalid UTF-8");
    BAD("\"\xFF\"", "invalid UTF-8");
    BAD("\"\xC3\"", "invalid UTF-8"); /* truncated sequences */
    BAD("\"\xE2\x82\"", "invalid UTF-8");
    BAD("\"\xF0\x9F\x98\"", "invalid UTF-8");
    BAD("\"\xC3x\"", "invalid UTF-8");
    BAD("\"\xE2\x82x\"", "invalid UTF-8");
    BAD("{\"\xC3\":1}", "invalid UTF-8");
    BAD("\xC3\xA9", "byte 0xc3");
    BAD("\xEF\xBB", "byte 0xef");
    /* numbers */
    BAD("01", "leading zeros");
    BAD("-01", "leading zeros");
    BAD("00", "leading zeros");
    BAD("[0123]", "leading zeros");
    BAD("1.", "digit after '.'");
    BAD("1.e5", "digit after '.'");
    BAD(".5", "a value");
    BAD("-", "digit");
    BAD("-a", "digit");
    BAD("--1", "digit");
    BAD("+1", "a value");
    BAD("1e", "exponent");
    BAD("1e+", "exponent");
    BAD("1E-x", "exponent");
    BAD("0x10", "end of the input");
    BAD("1.5.2", "end of the input");
    BAD("[1,2", "',' or ']'");
    BAD("{\"a\":1", "',' or '}'");
    BAD("\"abc", "unterminated string");
    /* duplicate keys are refused, with the position of the second one */
    BAD("{\"a\": 1,\n \"a\": 2}", "t:2:2: duplicate key \"a\"");
    BAD("{\"a\": {\"x\": 1, \"x\": 1}}", "duplicate key \"x\"");
    BAD("{\"\\u0061\": 1, \"a\": 2}", "duplicate key");
    /* line and column */
    BAD("{\n  \"a\": 1,\n  \"b\" 2}", "t:3:7: unexpected '2', expected ':'");
}

/* Keys differing only in escapes are the same key; keys differing after a NUL are not. */
static void test_keys(void **state)
{
    (void)state;
    const bsi_json *r = parse_ok("{\"a\": 1, \"a\\u0000\": 2, \"\": 3}");
    assert_int_equal(bsi_json_object_len(r), 3);
    int64_t v;
    assert_true(bsi_json_int64(bsi_json_object_get(r, "a"), &v));
    assert_int_equal(v, 1);
    assert_true(bsi_json_int64(bsi_json_object_getn(r, "a\0", 2), &v));
    assert_int_equal(v, 2);
    assert_true(bsi_json_int64(bsi_json_object_get(r, ""), &v));
    assert_int_equal(v, 3);
}

static const char small_doc[] =
    "{\"name\": \"caf\\u00e9 \xE2\x82\xAC \\uD83D\\uDE00\", \"n\": [0, -1.5e-3, 12, true, false, "
    "null], \"o\": {\"k\": [], \"e\": {}}, \"s\": \"a\\\"b\\\\c\\n\"}";

/* Every proper prefix of an object is invalid: a clean CORRUPT, never a crash or over-read. */
static void test_truncated(void **state)
{
    (void)state;
    size_t n = sizeof small_doc - 1;
    parse_ok(small_doc);
    for (size_t cut = 0; cut < n; cut++) parse_bad(small_doc, cut, NULL);
}

/* Random damage: OK or CORRUPT, nothing else (run under the sanitizers). */
static void test_damaged(void **state)
{
    (void)state;
    size_t n = sizeof small_doc - 1;
    char buf[sizeof small_doc];
    static const char interesting[] = "{}[],:\"\\u0eE.-+ \x80\xC3\xED\xF4\xFF\x01";
    for (int round = 0; round < 20000; round++) {
        memcpy(buf, small_doc, n);
        int edits = 1 + (int)(test_rand() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)(test_rand() % n);
            buf[at] = test_rand() & 1 ? (char)(test_rand() & 0xFF)
                                      : interesting[test_rand() % (sizeof interesting - 1)];
        }
        const bsi_json *root = NULL;
        bonsai_status st = parse_n(buf, n - (size_t)(test_rand() % 3), &root);
        assert_true(st == BONSAI_OK || st == BONSAI_ERR_CORRUPT);
        assert_true((st == BONSAI_OK) == (root != NULL));
    }
}

static void test_bad_arguments(void **state)
{
    (void)state;
    const bsi_json *root;
    assert_int_equal(bsi_json_parse(NULL, "1", 1, "t", &root), BONSAI_ERR_INVALID_ARGUMENT);
    assert_int_equal(bsi_json_parse(arena, NULL, 1, "t", &root), BONSAI_ERR_INVALID_ARGUMENT);
    assert_int_equal(bsi_json_parse(arena, "1", 1, "t", NULL), BONSAI_ERR_INVALID_ARGUMENT);
    assert_error(bsi_json_parse(arena, NULL, 0, NULL, &root), BONSAI_ERR_CORRUPT, "json:1:1");
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long size = ftell(f);
    assert_true(size > 0);
    rewind(f);
    char *buf = malloc((size_t)size);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *len = (size_t)size;
    return buf;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_real_tokenizer(void **state)
{
    (void)state;
    const char *path = test_data("qwen3-tokenizer.json");
    size_t len;
    char *buf = read_all(path, &len);
    const bsi_json *root = NULL;
    double t0 = now();
    bonsai_status st = bsi_json_parse(arena, buf, len, path, &root);
    double t = now() - t0;
    free(buf);
    if (st) fail_msg("%s", bonsai_last_error());
    print_message("parsed %zu bytes in %.3f s\n", len, t);
    const bsi_json *model = bsi_json_object_get(root, "model");
    assert_string(bsi_json_object_get(model, "type"), "BPE", 3);
    const bsi_json *vocab = bsi_json_object_get(model, "vocab");
    assert_int_equal(bsi_json_object_len(vocab), 151643);
    assert_int_equal(bsi_json_array_len(bsi_json_object_get(model, "merges")), 151387);
    const bsi_json *added = bsi_json_object_get(root, "added_tokens");
    assert_int_equal(bsi_json_array_len(added), 26);
    int64_t id;
    assert_true(bsi_json_int64(bsi_json_object_get(vocab, "!"), &id));
    assert_int_equal(id, 0);
    assert_true(bsi_json_int64(bsi_json_object_get(vocab, "\xC4\xA0the"), &id)); /* "Ġthe" */
    assert_int_equal(id, 279);
    /* every vocab entry found by key, and ids 0..151642 each once */
    size_t n = bsi_json_object_len(vocab);
    unsigned char *seen = calloc(n, 1);
    assert_non_null(seen);
    for (size_t i = 0; i < n; i++) {
        const char *key;
        size_t key_len;
        const bsi_json *v = bsi_json_object_at(vocab, i, &key, &key_len);
        assert_ptr_equal(bsi_json_object_getn(vocab, key, key_len), v);
        assert_true(bsi_json_int64(v, &id));
        assert_true(id >= 0 && (size_t)id < n && !seen[id]);
        seen[id] = 1;
    }
    free(seen);
    const bsi_json *first = bsi_json_array_at(added, 0);
    assert_string(bsi_json_object_get(first, "content"), "<|endoftext|>", 13);
    assert_true(bsi_json_int64(bsi_json_object_get(first, "id"), &id));
    assert_int_equal(id, 151643);
    bool special = false;
    assert_true(bsi_json_bool(bsi_json_object_get(first, "special"), &special));
    assert_true(special);
    const bsi_json *merge0 = bsi_json_array_at(bsi_json_object_get(model, "merges"), 0);
    assert_string(bsi_json_array_at(merge0, 0), "\xC4\xA0", 2);
    assert_string(bsi_json_array_at(merge0, 1), "\xC4\xA0", 2);
    /* well under a second in an optimised build; generous for sanitizer/debug builds */
    assert_true(t < 5.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_scalars, setup, teardown),
        cmocka_unit_test_setup_teardown(test_containers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_object, setup, teardown),
        cmocka_unit_test_setup_teardown(test_escapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_tokenizer, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
