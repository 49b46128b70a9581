/*
 * The tokenizer: conformance with llama.cpp's reference cases (qwen2 on the real Qwen3 vocabulary,
 * gpt-2 on its real vocab-only GGUF), SentencePiece on stories260K, round trips on random bytes
 * and random UTF-8, the streaming detokenizer, special tokens, buffer rules, bad arguments and
 * hostile vocabularies written with the internal GGUF writer.
 *
 * What round-trips (detokenize(tokenize(x)) without PARSE_SPECIAL):
 *  - gpt-2 (no normalizer): any byte string, exactly;
 *  - qwen2: any byte string up to NFC: each maximal valid UTF-8 run comes back NFC-normalised,
 *    invalid bytes come back as they were (so exactly for NFC text);
 *  - SentencePiece (stories260K): any byte string, with each U+2581 of the text read back as a
 *    space (SentencePiece writes spaces so; one is added in front and dropped again; byte fallback
 *    covers the rest), hence exactly for text without U+2581.
 * With PARSE_SPECIAL and BONSAI_DETOKENIZE_SPECIAL, text containing control tokens round-trips for
 * BPE; SentencePiece adds a space after each special token (as llama.cpp does), which comes back.
 */
#include "test_util.h"

#include "gguf_writer.h"
#include "model.h"
#include "utf8.h"
#include "vocab.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>
#include "utf8_oracle.h"

/* ---- helpers ---- */

static bonsai_model *load(const char *path)
{
    bonsai_model *m = NULL;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s: %s", path, bonsai_last_error());
    return m;
}

/* The vocab-only GGUF made from qwen3-tokenizer.json at build time (tests/meson.build). */
static const char *qwen_vocab_path(void)
{
    const char *p = getenv("BONSAI_TEST_QWEN3_VOCAB");
    if (p && *p && access(p, R_OK) == 0) return p;
    const char *req = getenv("BONSAI_REQUIRE_TEST_DATA");
    if (req && !strcmp(req, "1")) fail_msg("required Qwen3 vocabulary missing (%s)", p ? p : "");
    print_message("SKIP: no Qwen3 vocabulary (BONSAI_TEST_QWEN3_VOCAB)\n");
    skip();
    return NULL;
}

static bonsai_model *load_qwen(void)
{
    return load(qwen_vocab_path());
}

static int32_t *tokenize(const bonsai_model *m, const char *text, size_t len, uint32_t flags,
                         uint32_t *n)
{
    uint32_t need = 0;
    bonsai_status st = bonsai_tokenize(m, text, len, flags, NULL, 0, &need);
    if (st != BONSAI_OK && st != BONSAI_ERR_OUT_OF_RANGE) fail_msg("%s", bonsai_last_error());
    int32_t *t = malloc((need + 1) * sizeof *t);
    assert_non_null(t);
    if (bonsai_tokenize(m, text, len, flags, t, need, n)) fail_msg("%s", bonsai_last_error());
    assert_int_equal(*n, need);
    return t;
}

static char *detokenize(const bonsai_model *m, const int32_t *t, uint32_t n, uint32_t flags,
                        size_t *len)
{
    size_t need = 0;
    bonsai_status st = bonsai_detokenize(m, t, n, flags, NULL, 0, &need);
    if (st != BONSAI_OK && st != BONSAI_ERR_OUT_OF_RANGE) fail_msg("%s", bonsai_last_error());
    char *s = malloc(need + 1);
    assert_non_null(s);
    if (bonsai_detokenize(m, t, n, flags, s, need + 1, len)) fail_msg("%s", bonsai_last_error());
    assert_int_equal(*len, need);
    assert_int_equal(s[need], 0);
    return s;
}

static void expect_ids(const bonsai_model *m, const char *text, uint32_t flags, const int32_t *want,
                       uint32_t n_want)
{
    uint32_t n;
    int32_t *t = tokenize(m, text, strlen(text), flags, &n);
    if (n != n_want || (n && memcmp(t, want, n * sizeof *t))) {
        for (uint32_t i = 0; i < n; i++) print_message("%d ", t[i]);
        print_message("\n");
        fail_msg("\"%s\": %u tokens (expected %u)", text, n, n_want);
    }
    free(t);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot open %s", path);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static char *nfc_runs(const char *s, size_t n, size_t *out_len)
{
    uint8_t *r = oracle_nfc_runs((const uint8_t *)s, n, out_len);
    assert_non_null(r);
    return (char *)r;
}

/* What SentencePiece gives back: U+2581 becomes a space. */
static char *spm_back(const char *s, size_t n, size_t *out_len)
{
    char *out = malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 2 < n && !memcmp(s + i, "\xe2\x96\x81", 3)) {
            out[o++] = ' ';
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    *out_len = o;
    return out;
}

/* Random valid UTF-8 of about n bytes, mixing ASCII, Latin, combining marks, CJK, emoji. */
static size_t random_utf8(char *buf, size_t n)
{
    static const uint32_t ranges[][2] = {{0x20, 0x7e},       {0x09, 0x0d},     {0xa0, 0x24f},
                                         {0x300, 0x36f},     {0x370, 0x52f},   {0x1100, 0x11ff},
                                         {0x3040, 0x30ff},   {0x4e00, 0x9fff}, {0xac00, 0xd7a3},
                                         {0x1f300, 0x1faff}, {0x80, 0x10ffff}};
    size_t o = 0;
    while (o + 4 < n) {
        const uint32_t *r = ranges[test_rand() % (sizeof ranges / sizeof ranges[0])];
        uint32_t cp = r[0] + (uint32_t)(test_rand() % (r[1] - r[0] + 1));
        if (cp >= 0xd800 && cp < 0xe000) continue;
        o += bsi_utf8_put(cp, (uint8_t *)buf + o);
    }
    return o;
}

static size_t random_bytes(char *buf, size_t n)
{
    size_t len = (size_t)(test_rand() % (n + 1));
    for (size_t i = 0; i < len; i++) {
        uint64_t r = test_rand();
        /* mostly text-like, with every byte value possible */
        if (r % 4 == 0)
            buf[i] = (char)((r >> 8) & 0xff);
        else
            buf[i] = " aeiouxyz.,'\n\t3"[(r >> 8) % 16];
    }
    return len;
}

/* The streaming detokenizer's pieces: each valid UTF-8; together the text of detokenize with
 * invalid bytes replaced. Returns the concatenation. */
static char *stream(const bonsai_model *m, const int32_t *t, uint32_t n, uint32_t flags,
                    size_t *len)
{
    bonsai_detokenizer *d = NULL;
    assert_int_equal(bonsai_detokenizer_create(m, flags, &d), 0);
    size_t cap = 64, o = 0;
    char *all = malloc(cap);
    for (uint32_t i = 0; i <= n; i++) {
        const char *piece;
        size_t pl;
        if (i < n)
            assert_int_equal(bonsai_detokenizer_push(d, t[i], &piece, &pl), 0);
        else
            bonsai_detokenizer_flush(d, &piece, &pl);
        assert_non_null(piece);
        if (!oracle_valid_utf8((const uint8_t *)piece, pl))
            fail_msg("piece %u is not valid UTF-8", i);
        while (o + pl + 1 > cap) all = realloc(all, cap *= 2);
        memcpy(all + o, piece, pl);
        o += pl;
    }
    bonsai_detokenizer_free(d);
    all[o] = 0;
    *len = o;
    return all;
}

/* Round trip of s through tokenize, detokenize and the streaming detokenizer. */
static void round_trip(const bonsai_model *m, const char *s, size_t n, const char *want,
                       size_t want_len)
{
    uint32_t nt;
    int32_t *t = tokenize(m, s, n, 0, &nt);
    size_t len, slen;
    char *back = detokenize(m, t, nt, 0, &len);
    if (len != want_len || memcmp(back, want, len)) {
        print_message("input (%zu bytes):", n);
        for (size_t i = 0; i < n; i++) print_message(" %02x", (uint8_t)s[i]);
        print_message("\noutput (%zu bytes):", len);
        for (size_t i = 0; i < len; i++) print_message(" %02x", (uint8_t)back[i]);
        print_message("\n");
        fail_msg("round trip differs");
    }
    char *streamed = stream(m, t, nt, 0, &slen);
    if (oracle_valid_utf8((const uint8_t *)back, len)) {
        assert_int_equal(slen, len);
        assert_memory_equal(streamed, back, len);
    }
    free(streamed);
    free(back);
    free(t);
}

/* ---- conformance with llama.cpp's test-tokenizer-0 files ---- */

/* Cases as llama.cpp's read_tests() cuts them: separated by "\n__ggml_vocab_test__\n". */
static void conformance(const bonsai_model *m, const char *name, bool nfc)
{
    char inp_name[256], out_name[256];
    snprintf(inp_name, sizeof inp_name, "%s.inp", name);
    snprintf(out_name, sizeof out_name, "%s.out", name);
    size_t inp_len, out_len;
    char *inp = read_file(test_data(inp_name), &inp_len);
    char *out = read_file(test_data(out_name), &out_len);
    static const char sep[] = "\n__ggml_vocab_test__\n";
    size_t pos = 0, cases = 0, passed = 0;
    char *line = out;
    while (pos < inp_len) {
        char *next = strstr(inp + pos, sep);
        size_t end = next ? (size_t)(next - inp) : inp_len;
        const char *text = inp + pos;
        size_t len = end - pos;
        pos = next ? end + strlen(sep) : inp_len;

        char *eol = strchr(line, '\n');
        assert_non_null(eol);
        *eol = 0;
        int32_t want[1024];
        uint32_t n_want = 0;
        for (char *p = line, *e; *p; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            want[n_want++] = (int32_t)v;
        }
        line = eol + 1;

        cases++;
        uint32_t n;
        int32_t *t = tokenize(m, text, len, 0, &n);
        if (n == n_want && !memcmp(t, want, n * sizeof *t)) {
            passed++;
        } else {
            print_message("case %zu \"%.*s\":\n  got ", cases, (int)len, text);
            for (uint32_t i = 0; i < n; i++) print_message(" %d", t[i]);
            print_message("\n  want");
            for (uint32_t i = 0; i < n_want; i++) print_message(" %d", want[i]);
            print_message("\n");
        }
        size_t nfc_len;
        char *expect = nfc ? nfc_runs(text, len, &nfc_len) : NULL;
        round_trip(m, text, len, expect ? expect : text, expect ? nfc_len : len);
        free(expect);
        free(t);
    }
    print_message("%s: %zu/%zu cases\n", name, passed, cases);
    assert_int_equal(passed, cases);
    assert_int_equal(cases, 46);
    free(inp);
    free(out);
}

static void test_conformance_qwen2(void **state)
{
    bonsai_model *m = load_qwen();
    conformance(m, "ggml-vocab-qwen2.gguf", true);
    bonsai_model_free(m);
}

static void test_conformance_gpt2(void **state)
{
    bonsai_model *m = load(test_data("ggml-vocab-gpt-2.gguf"));
    conformance(m, "ggml-vocab-gpt-2.gguf", false);
    bonsai_model_free(m);
}

/* ---- SentencePiece ---- */

static void test_stories(void **state)
{
    bonsai_model *m = load(test_data("stories260K.gguf"));
    static const int32_t once[] = {1, 403, 407, 261, 378}; /* <s> Once upon a time */
    expect_ids(m, "Once upon a time", BONSAI_TOKENIZE_ADD_BOS, once, 5);
    expect_ids(m, "Once upon a time", 0, once + 1, 4);
    expect_ids(m, "", BONSAI_TOKENIZE_ADD_BOS, once, 1);
    expect_ids(m, "", 0, NULL, 0);
    size_t len;
    char *s = detokenize(m, once, 5, 0, &len);
    assert_string_equal(s, "Once upon a time");
    free(s);
    /* the first non-empty piece loses the added space: here that is <s> rendered, not "▁Once" */
    s = detokenize(m, once, 5, BONSAI_DETOKENIZE_SPECIAL, &len);
    assert_string_equal(s, "<s> Once upon a time");
    free(s);
    /* a continuation keeps it */
    s = detokenize(m, once + 1, 4, BONSAI_DETOKENIZE_CONTINUATION, &len);
    assert_string_equal(s, " Once upon a time");
    free(s);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), 1);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOS), 2);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOT), -1);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_PAD), -1); /* 0xffffffff in the file */
    assert_int_equal(bonsai_model_token(m, (bonsai_special_token)99), -1);
    assert_true(bonsai_token_is_eog(m, 2));
    assert_false(bonsai_token_is_eog(m, 1));
    assert_true(bonsai_token_is_control(m, 1));
    assert_false(bonsai_token_is_control(m, 0)); /* <unk> is type 2 */
    assert_false(bonsai_token_is_control(m, 403));
    /* <unk> (unknown) renders like control tokens: only with SPECIAL */
    char buf[16];
    assert_int_equal(bonsai_token_to_piece(m, 0, 0, buf, sizeof buf, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(bonsai_token_to_piece(m, 0, BONSAI_DETOKENIZE_SPECIAL, buf, sizeof buf, &len),
                     0);
    assert_string_equal(buf, "<unk>");
    /* byte tokens are their byte; pieces keep the space */
    assert_int_equal(bonsai_token_to_piece(m, 3 + 'A', 0, buf, sizeof buf, &len), 0);
    assert_int_equal(len, 1);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(bonsai_token_to_piece(m, 403, 0, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, " Once");
    /* special tokens in the text: with PARSE_SPECIAL, and a space is added after them */
    static const int32_t parsed[] = {1, 403};
    expect_ids(m, "<s>Once", BONSAI_TOKENIZE_PARSE_SPECIAL, parsed, 2);
    uint32_t n;
    int32_t *t = tokenize(m, "<s>Once", 7, 0, &n);
    assert_true(n > 2);
    for (uint32_t i = 0; i < n; i++) assert_int_not_equal(t[i], 1);
    free(t);

    /* every byte string round-trips, U+2581 coming back as a space */
    char in[256];
    size_t wl;
    char *want = spm_back("a\xe2\x96\x81 b\xe2\x96\x81", 9, &wl);
    round_trip(m, "a\xe2\x96\x81 b\xe2\x96\x81", 9, "a  b ", 5);
    assert_int_equal(wl, 5);
    assert_memory_equal(want, "a  b ", 5);
    free(want);
    for (int k = 0; k < 1000; k++) {
        size_t l = random_bytes(in, 64);
        round_trip(m, in, l, in, l);
    }
    for (int k = 0; k < 300; k++) {
        size_t l = random_utf8(in, 1 + test_rand() % 80);
        want = spm_back(in, l, &wl);
        round_trip(m, in, l, want, wl);
        free(want);
    }
    bonsai_model_free(m);
}

/* ---- byte-level BPE ---- */

static void test_qwen_special_tokens(void **state)
{
    bonsai_model *m = load_qwen();
    assert_int_equal(bonsai_model_n_vocab(m), 151669);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOS), 151645);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_PAD), 151643);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), -1);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOT), 151645);
    assert_true(bonsai_token_is_eog(m, 151645));
    assert_true(bonsai_token_is_eog(m, 151643));
    assert_false(bonsai_token_is_eog(m, 151644));
    assert_false(bonsai_token_is_eog(m, 0));
    assert_false(bonsai_token_is_eog(m, -1));
    assert_false(bonsai_token_is_eog(m, 1 << 30));
    assert_true(bonsai_token_is_control(m, 151644));
    assert_false(bonsai_token_is_control(m, 151667)); /* <think>: user-defined */
    assert_false(bonsai_token_is_control(m, 9707));
    assert_false(bonsai_token_is_control(m, -5));
    assert_false(bonsai_token_is_control(m, 151669));

    const char *chat = "<|im_start|>user\nhi<|im_end|>";
    static const int32_t parsed[] = {151644, 872, 198, 6023, 151645};
    expect_ids(m, chat, BONSAI_TOKENIZE_PARSE_SPECIAL, parsed, 5);
    /* ADD_BOS does nothing: Qwen has no BOS */
    expect_ids(m, chat, BONSAI_TOKENIZE_PARSE_SPECIAL | BONSAI_TOKENIZE_ADD_BOS, parsed, 5);
    uint32_t n;
    int32_t *t = tokenize(m, chat, strlen(chat), 0, &n);
    assert_true(n > 5);
    for (uint32_t i = 0; i < n; i++) assert_true(t[i] < 151643);
    size_t len;
    char *s = detokenize(m, t, n, 0, &len);
    assert_string_equal(s, chat); /* typed as text, it stays text */
    free(s);
    free(t);
    s = detokenize(m, parsed, 5, 0, &len);
    assert_string_equal(s, "user\nhi");
    free(s);
    s = detokenize(m, parsed, 5, BONSAI_DETOKENIZE_SPECIAL, &len);
    assert_string_equal(s, chat);
    free(s);
    /* user-defined tokens are matched even without PARSE_SPECIAL, and always rendered */
    static const int32_t think[] = {151667, 198, 151668};
    expect_ids(m, "<think>\n</think>", 0, think, 3);
    s = detokenize(m, think, 3, 0, &len);
    assert_string_equal(s, "<think>\n</think>");
    free(s);
    /* longest match first: "<|im_start|>" is not cut short by a shorter token */
    static const int32_t two[] = {151644, 151644};
    expect_ids(m, "<|im_start|><|im_start|>", BONSAI_TOKENIZE_PARSE_SPECIAL, two, 2);
    /* the streaming detokenizer and SPECIAL */
    s = stream(m, parsed, 5, BONSAI_DETOKENIZE_SPECIAL, &len);
    assert_string_equal(s, chat);
    free(s);
    /* NFC: "e" + U+0301 is tokenized as U+00E9 */
    uint32_t n1, n2;
    int32_t *a = tokenize(m, "caf\x65\xcc\x81", 6, 0, &n1);
    int32_t *b = tokenize(m, "caf\xc3\xa9", 5, 0, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(a, b, n1 * sizeof *a);
    free(a);
    free(b);
    bonsai_model_free(m);
}

static void test_gpt2_specials(void **state)
{
    bonsai_model *m = load(test_data("ggml-vocab-gpt-2.gguf"));
    static const int32_t eot[] = {50256};
    expect_ids(m, "<|endoftext|>", BONSAI_TOKENIZE_PARSE_SPECIAL, eot, 1);
    /* BOS 50256 is in the file, but gpt2 tokenizers add no BOS by default */
    expect_ids(m, "<|endoftext|>", BONSAI_TOKENIZE_PARSE_SPECIAL | BONSAI_TOKENIZE_ADD_BOS, eot, 1);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), 50256);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOS), 50256);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOT), -1);
    assert_true(bonsai_token_is_eog(m, 50256));
    /* no NFC for gpt-2: the decomposed form stays decomposed */
    uint32_t n;
    int32_t *t = tokenize(m, "e\xcc\x81", 3, 0, &n);
    size_t len;
    char *s = detokenize(m, t, n, 0, &len);
    assert_string_equal(s, "e\xcc\x81");
    free(s);
    free(t);
    bonsai_model_free(m);
}

static void test_random_round_trips(void **state)
{
    bonsai_model *gpt2 = load(test_data("ggml-vocab-gpt-2.gguf"));
    bonsai_model *qwen = load_qwen();
    char in[512];
    for (int k = 0; k < 2000; k++) {
        size_t l = random_bytes(in, 96);
        round_trip(gpt2, in, l, in, l);
        size_t el = 0;
        char *want = nfc_runs(in, l, &el);
        round_trip(qwen, in, l, want, el);
        free(want);
    }
    for (int k = 0; k < 1000; k++) {
        size_t l = random_utf8(in, 1 + test_rand() % 200);
        round_trip(gpt2, in, l, in, l);
        size_t el = 0;
        char *want = nfc_runs(in, l, &el);
        round_trip(qwen, in, l, want, el);
        free(want);
    }
    bonsai_model_free(gpt2);
    bonsai_model_free(qwen);
}

/* Inputs that would be quadratic in a naive BPE, and regex worst cases: fast, and round trip. */
static void test_hostile_inputs(void **state)
{
    bonsai_model *qwen = load_qwen();
    bonsai_model *stories = load(test_data("stories260K.gguf"));
    size_t n = 1 << 20;
    char *s = malloc(n);
    const char fill[] = {'a', ' ', '!', '\n', '3', (char)0xff};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(s, fill[k], n);
        clock_t t0 = clock();
        round_trip(qwen, s, n, s, n);
        double sec = (double)(clock() - t0) / CLOCKS_PER_SEC;
        print_message("1 MiB of 0x%02x: %.2f s\n", (uint8_t)fill[k], sec);
        assert_true(sec < 30); /* seconds, even under sanitizers; quadratic would be hours */
        if (k < 3) round_trip(stories, s, n / 8, s, n / 8);
    }
    /* a 1 MiB word of letters that do merge */
    for (size_t i = 0; i < n; i++) s[i] = "ab"[(i / 3) % 2];
    round_trip(qwen, s, n, s, n);
    free(s);
    bonsai_model_free(qwen);
    bonsai_model_free(stories);
}

/* ---- streaming ---- */

static void test_streaming(void **state)
{
    bonsai_model *m = load(test_data("ggml-vocab-gpt-2.gguf"));
    /* "é" split over two byte tokens: nothing, then the character */
    uint32_t n;
    int32_t *t = tokenize(m, "\xc3\xa9", 2, 0, &n);
    bonsai_detokenizer *d = NULL;
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    const char *p;
    size_t len;
    if (n == 2) {
        assert_int_equal(bonsai_detokenizer_push(d, t[0], &p, &len), 0);
        assert_int_equal(len, 0);
        assert_int_equal(bonsai_detokenizer_push(d, t[1], &p, &len), 0);
        assert_int_equal(len, 2);
        assert_memory_equal(p, "\xc3\xa9", 2);
    }
    free(t);
    /* a lone lead byte is held, then replaced when the next byte cannot continue it */
    t = tokenize(m, "\xe2", 1, 0, &n);
    assert_int_equal(n, 1);
    int32_t lead = t[0];
    free(t);
    t = tokenize(m, "A", 1, 0, &n);
    int32_t a = t[0];
    free(t);
    assert_int_equal(bonsai_detokenizer_push(d, lead, &p, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(bonsai_detokenizer_push(d, a, &p, &len), 0);
    assert_int_equal(len, 4);
    assert_memory_equal(p,
                        "\xef\xbf\xbd"
                        "A",
                        4);
    /* held at the end: flushed as U+FFFD, then the detokenizer starts over */
    assert_int_equal(bonsai_detokenizer_push(d, lead, &p, &len), 0);
    assert_int_equal(len, 0);
    bonsai_detokenizer_flush(d, &p, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(p, "\xef\xbf\xbd", 3);
    bonsai_detokenizer_flush(d, &p, &len);
    assert_int_equal(len, 0);
    assert_string_equal(p, "");
    /* errors */
    assert_error(bonsai_detokenizer_push(d, 50257, &p, &len), BONSAI_ERR_OUT_OF_RANGE,
                 "outside the vocabulary");
    assert_null(p);
    assert_error(bonsai_detokenizer_push(d, -1, &p, &len), BONSAI_ERR_OUT_OF_RANGE, "-1");
    assert_error(bonsai_detokenizer_push(NULL, a, &p, &len), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_detokenizer_push(d, a, NULL, &len), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    bonsai_detokenizer_free(d);
    bonsai_detokenizer_free(NULL);
    bonsai_detokenizer_flush(NULL, &p, &len);
    assert_int_equal(len, 0);
    assert_error(bonsai_detokenizer_create(m, 0, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    d = (bonsai_detokenizer *)1;
    assert_error(bonsai_detokenizer_create(NULL, 0, &d), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_null(d);
    assert_error(bonsai_detokenizer_create(m, 0x100, &d), BONSAI_ERR_INVALID_ARGUMENT, "flags");

    /* the detokenizer keeps the model alive */
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    bonsai_model_free(m);
    assert_int_equal(bonsai_detokenizer_push(d, a, &p, &len), 0);
    assert_memory_equal(p, "A", 1);
    bonsai_detokenizer_free(d);

    /* SentencePiece: the first piece's space goes, unless CONTINUATION */
    m = load(test_data("stories260K.gguf"));
    assert_int_equal(bonsai_detokenizer_create(m, 0, &d), 0);
    assert_int_equal(bonsai_detokenizer_push(d, 1, &p, &len), 0);
    assert_int_equal(len, 0);
    assert_int_equal(bonsai_detokenizer_push(d, 403, &p, &len), 0);
    assert_string_equal(p, "Once");
    assert_int_equal(bonsai_detokenizer_push(d, 407, &p, &len), 0);
    assert_string_equal(p, " upon");
    bonsai_detokenizer_free(d);
    assert_int_equal(bonsai_detokenizer_create(m, BONSAI_DETOKENIZE_CONTINUATION, &d), 0);
    assert_int_equal(bonsai_detokenizer_push(d, 403, &p, &len), 0);
    assert_string_equal(p, " Once");
    bonsai_detokenizer_free(d);
    bonsai_model_free(m);
}

/* ---- buffers and arguments ---- */

static void test_buffers_and_arguments(void **state)
{
    bonsai_model *m = load(test_data("ggml-vocab-gpt-2.gguf"));
    const char *text = "Hello world";
    int32_t t[8] = {0};
    uint32_t n = 77;
    /* asking for the count */
    assert_error(bonsai_tokenize(m, text, 11, 0, NULL, 0, &n), BONSAI_ERR_OUT_OF_RANGE, "n_max");
    assert_int_equal(n, 2);
    n = 77;
    assert_error(bonsai_tokenize(m, text, 11, 0, t, 1, &n), BONSAI_ERR_OUT_OF_RANGE, "2 tokens");
    assert_int_equal(n, 2);
    assert_int_equal(bonsai_tokenize(m, text, 11, 0, t, 2, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(t[0], 15496);
    assert_int_equal(t[1], 995);
    assert_int_equal(bonsai_tokenize(m, NULL, 0, 0, NULL, 0, &n), 0); /* empty text */
    assert_int_equal(n, 0);
    assert_error(bonsai_tokenize(NULL, text, 11, 0, t, 8, &n), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_tokenize(m, NULL, 11, 0, t, 8, &n), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_tokenize(m, text, 11, 0, NULL, 8, &n), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_tokenize(m, text, 11, 0, t, 8, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_tokenize(m, text, 11, 4, t, 8, &n), BONSAI_ERR_INVALID_ARGUMENT, "flags");

    /* detokenize: room for the text (no NUL), for the NUL, and too little */
    char buf[16];
    size_t len = 99;
    memset(buf, 'x', sizeof buf);
    assert_int_equal(bonsai_detokenize(m, t, 2, 0, buf, 11, &len), 0);
    assert_int_equal(len, 11);
    assert_memory_equal(buf, "Hello world", 11);
    assert_int_equal(buf[11], 'x');
    assert_int_equal(bonsai_detokenize(m, t, 2, 0, buf, 12, &len), 0);
    assert_string_equal(buf, "Hello world");
    len = 99;
    assert_error(bonsai_detokenize(m, t, 2, 0, buf, 10, &len), BONSAI_ERR_OUT_OF_RANGE, "11 bytes");
    assert_int_equal(len, 11);
    len = 99;
    assert_error(bonsai_detokenize(m, t, 2, 0, NULL, 0, &len), BONSAI_ERR_OUT_OF_RANGE, "buffer");
    assert_int_equal(len, 11);
    assert_int_equal(bonsai_detokenize(m, NULL, 0, 0, buf, sizeof buf, &len), 0);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    int32_t bad[] = {15496, 50257};
    len = 99;
    assert_error(bonsai_detokenize(m, bad, 2, 0, buf, sizeof buf, &len), BONSAI_ERR_OUT_OF_RANGE,
                 "token 50257");
    assert_int_equal(len, 99);
    bad[1] = -3;
    assert_error(bonsai_detokenize(m, bad, 2, 0, buf, sizeof buf, &len), BONSAI_ERR_OUT_OF_RANGE,
                 "token -3");
    assert_error(bonsai_detokenize(NULL, t, 2, 0, buf, sizeof buf, &len),
                 BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_detokenize(m, NULL, 2, 0, buf, sizeof buf, &len),
                 BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_detokenize(m, t, 2, 0, NULL, 4, &len), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_detokenize(m, t, 2, 0, buf, sizeof buf, NULL), BONSAI_ERR_INVALID_ARGUMENT,
                 "NULL");
    assert_error(bonsai_detokenize(m, t, 2, 8, buf, sizeof buf, &len), BONSAI_ERR_INVALID_ARGUMENT,
                 "flags");

    /* token_to_piece */
    assert_int_equal(bonsai_token_to_piece(m, 995, 0, buf, sizeof buf, &len), 0);
    assert_string_equal(buf, " world");
    assert_int_equal(len, 6);
    len = 0;
    assert_error(bonsai_token_to_piece(m, 995, 0, buf, 5, &len), BONSAI_ERR_OUT_OF_RANGE,
                 "6 bytes");
    assert_int_equal(len, 6);
    assert_int_equal(bonsai_token_to_piece(m, 995, 0, buf, 6, &len), 0);
    assert_error(bonsai_token_to_piece(m, 50257, 0, buf, sizeof buf, &len), BONSAI_ERR_OUT_OF_RANGE,
                 "outside");
    assert_error(bonsai_token_to_piece(NULL, 1, 0, buf, sizeof buf, &len),
                 BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_token_to_piece(m, 1, 0, NULL, 3, &len), BONSAI_ERR_INVALID_ARGUMENT,
                 "NULL");
    assert_error(bonsai_token_to_piece(m, 1, 0, buf, 3, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    /* control tokens: empty, or their text with SPECIAL */
    assert_int_equal(bonsai_token_to_piece(m, 50256, 0, buf, sizeof buf, &len), 0);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    assert_int_equal(bonsai_token_to_piece(m, 50256, 0, NULL, 0, &len), 0);
    assert_error(bonsai_token_to_piece(m, 50256, BONSAI_DETOKENIZE_SPECIAL, buf, 12, &len),
                 BONSAI_ERR_OUT_OF_RANGE, "13 bytes");
    assert_int_equal(len, 13);
    assert_int_equal(bonsai_token_to_piece(m, 50256, BONSAI_DETOKENIZE_SPECIAL, buf, 14, &len), 0);
    assert_string_equal(buf, "<|endoftext|>");

    assert_int_equal(bonsai_model_token(NULL, BONSAI_TOKEN_EOS), -1);
    assert_false(bonsai_token_is_eog(NULL, 1));
    assert_false(bonsai_token_is_control(NULL, 1));
    bonsai_model_free(m);
}

/* ---- models without a tokenizer, and hostile ones ---- */

static void test_no_tokenizer(void **state)
{
    bonsai_model *m = load(test_data("hyllama-dummy.gguf"));
    uint32_t n = 5;
    assert_error(bonsai_tokenize(m, "a", 1, 0, NULL, 0, &n), BONSAI_ERR_UNSUPPORTED,
                 "no tokenizer");
    assert_int_equal(n, 5);
    /* the error is cached: the same status and message again */
    assert_error(bonsai_tokenize(m, "a", 1, 0, NULL, 0, &n), BONSAI_ERR_UNSUPPORTED,
                 "no tokenizer");
    size_t len;
    assert_error(bonsai_detokenize(m, NULL, 0, 0, NULL, 0, &len), BONSAI_ERR_UNSUPPORTED,
                 "no tokenizer");
    bonsai_detokenizer *d = NULL;
    assert_error(bonsai_detokenizer_create(m, 0, &d), BONSAI_ERR_UNSUPPORTED, "no tokenizer");
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_EOS), -1);
    assert_false(bonsai_token_is_eog(m, 0));
    const bsi_vocab *v = (const bsi_vocab *)1;
    assert_int_equal(bsi_vocab_get(m, &v), BONSAI_ERR_UNSUPPORTED);
    assert_null(v);
    bonsai_model_free(m);
}

static char tmp_dir[4096];

static int make_tmp_dir(void **state)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/bonsai-tokenizer-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state)
{
    return rmdir(tmp_dir);
}

/* A small vocabulary: the 256 GPT-2 byte characters, then "ab", "abc", "<|x|>", "<u>". */
#define SMALL_N 260

static const char *small_tokens[SMALL_N];
static char small_text[256][4];
static int32_t small_types[SMALL_N];

static void small_vocab(void)
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
        uint32_t cp = keep ? (uint32_t)b : next++;
        size_t l = bsi_utf8_put(cp, (uint8_t *)small_text[b]);
        small_text[b][l] = 0;
        small_tokens[b] = small_text[b];
        small_types[b] = 1;
    }
    small_tokens[256] = "ab";
    small_tokens[257] = "abc";
    small_tokens[258] = "<|x|>";
    small_tokens[259] = "<u>";
    small_types[256] = small_types[257] = 1;
    small_types[258] = 3;
    small_types[259] = 4;
}

typedef enum {
    F_NONE = 0,
    F_NO_PRE = 1,
    F_BAD_MODEL = 2,
    F_MODEL_U32 = 4,
    F_TYPES_SHORT = 8,
    F_TYPES_F32 = 16,
    F_MERGE_UNKNOWN = 32,
    F_MERGE_NO_SPACE = 64,
    F_MISSING_BYTE = 128,
    F_BOS_STRING = 256,
    F_BOS_RANGE = 512,
    F_ADD_BOS_U32 = 1024,
    F_NO_MERGES = 2048,
    F_PRE_UNKNOWN = 4096,
    F_NO_TOKENS = 8192,
    F_TOKENS_U32 = 16384,
    F_EMPTY_TOKEN = 32768,
} flaws;

static const char *write_vocab(const char *name, unsigned f)
{
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s.gguf", tmp_dir, name);
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    assert_non_null(w);
    small_vocab();
    const char *tokens[SMALL_N];
    memcpy(tokens, small_tokens, sizeof tokens);
    uint32_t n = SMALL_N;
    if (f & F_MISSING_BYTE) tokens['q'] = "qq";
    if (f & F_EMPTY_TOKEN) tokens[257] = "";
    if (f & F_MODEL_U32)
        assert_int_equal(bsi_gguf_writer_add_u32(w, "tokenizer.ggml.model", 2), 0);
    else
        assert_int_equal(bsi_gguf_writer_add_string(w, "tokenizer.ggml.model",
                                                    f & F_BAD_MODEL ? "bert" : "gpt2"),
                         0);
    if (!(f & F_NO_PRE))
        assert_int_equal(bsi_gguf_writer_add_string(w, "tokenizer.ggml.pre",
                                                    f & F_PRE_UNKNOWN ? "\x1b[31mevil" : "qwen2"),
                         0);
    if (f & F_TOKENS_U32)
        assert_int_equal(
            bsi_gguf_writer_add_array(w, "tokenizer.ggml.tokens", BONSAI_VALUE_U32, 4, small_types),
            0);
    else if (!(f & F_NO_TOKENS))
        assert_int_equal(bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", n, tokens),
                         0);
    if (f & F_TYPES_F32)
        assert_int_equal(bsi_gguf_writer_add_array(w, "tokenizer.ggml.token_type", BONSAI_VALUE_F32,
                                                   n, small_types),
                         0);
    else
        assert_int_equal(bsi_gguf_writer_add_array(w, "tokenizer.ggml.token_type", BONSAI_VALUE_I32,
                                                   f & F_TYPES_SHORT ? n - 1 : n, small_types),
                         0);
    const char *merges[] = {"a b", f & F_MERGE_UNKNOWN ? "ab zz" : "ab c",
                            f & F_MERGE_NO_SPACE ? "abc" : "a b"};
    if (!(f & F_NO_MERGES))
        assert_int_equal(bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.merges", 3, merges),
                         0);
    if (f & F_BOS_STRING)
        assert_int_equal(bsi_gguf_writer_add_string(w, "tokenizer.ggml.bos_token_id", "1"), 0);
    else
        assert_int_equal(
            bsi_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", f & F_BOS_RANGE ? 9999 : 258),
            0);
    if (f & F_ADD_BOS_U32)
        assert_int_equal(bsi_gguf_writer_add_u32(w, "tokenizer.ggml.add_bos_token", 1), 0);
    else
        assert_int_equal(bsi_gguf_writer_add_scalar(w, "tokenizer.ggml.add_bos_token",
                                                    BONSAI_VALUE_BOOL, &(bool){true}),
                         0);
    FILE *out = fopen(path, "wb");
    assert_non_null(out);
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, out), 0);
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    assert_int_equal(fclose(out), 0);
    bsi_gguf_writer_free(w);
    return path;
}

static void expect_vocab_error(const char *name, unsigned f, bonsai_status st, const char *needle)
{
    const char *path = write_vocab(name, f);
    bonsai_model *m = NULL;
    bonsai_status load_st = bonsai_model_load(path, NULL, &m);
    if (load_st) { /* refused at load (e.g. tokens of the wrong type): fine too */
        assert_error(load_st, st, needle);
    } else {
        uint32_t n;
        assert_error(bonsai_tokenize(m, "abc", 3, 0, NULL, 0, &n), st, needle);
        assert_error(bonsai_tokenize(m, "abc", 3, 0, NULL, 0, &n), st, needle);
        assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), -1);
        bonsai_model_free(m);
    }
    unlink(path);
}

static void test_hostile_vocabularies(void **state)
{
    expect_vocab_error("no-pre", F_NO_PRE, BONSAI_ERR_UNSUPPORTED, "tokenizer.ggml.pre");
    expect_vocab_error("bad-pre", F_PRE_UNKNOWN, BONSAI_ERR_UNSUPPORTED, "\"?[31mevil\"");
    expect_vocab_error("bert", F_BAD_MODEL, BONSAI_ERR_UNSUPPORTED, "\"bert\" is not supported");
    expect_vocab_error("model-u32", F_MODEL_U32, BONSAI_ERR_CORRUPT, "not string");
    expect_vocab_error("types-short", F_TYPES_SHORT, BONSAI_ERR_CORRUPT, "259 elements");
    expect_vocab_error("types-f32", F_TYPES_F32, BONSAI_ERR_CORRUPT, "array of i32");
    expect_vocab_error("merge-unknown", F_MERGE_UNKNOWN, BONSAI_ERR_CORRUPT,
                       "merge 1 (\"ab zz\") refers to a token that is not in the vocabulary");
    expect_vocab_error("merge-nospace", F_MERGE_NO_SPACE, BONSAI_ERR_CORRUPT,
                       "merge 2 (\"abc\") is not two tokens");
    expect_vocab_error("missing-byte", F_MISSING_BYTE, BONSAI_ERR_CORRUPT, "byte 0x71");
    expect_vocab_error("bos-string", F_BOS_STRING, BONSAI_ERR_CORRUPT, "not an integer");
    expect_vocab_error("add-bos-u32", F_ADD_BOS_U32, BONSAI_ERR_CORRUPT, "not bool");
    expect_vocab_error("no-merges", F_NO_MERGES, BONSAI_ERR_CORRUPT, "tokenizer.ggml.merges");
    expect_vocab_error("no-tokens", F_NO_TOKENS, BONSAI_ERR_UNSUPPORTED, "tokenizer.ggml.tokens");
    expect_vocab_error("tokens-u32", F_TOKENS_U32, BONSAI_ERR_CORRUPT, "tokenizer.ggml.tokens");

    /* a valid small vocabulary: merges by rank, a repeated merge, BOS, specials */
    const char *path = write_vocab("good", F_NONE);
    bonsai_model *m = load(path);
    /* token b < 256 is byte b; "a b" merges first, then "ab c" */
    static const int32_t abc[] = {258, 257, 256, 'x'};
    expect_ids(m, "abcabx", BONSAI_TOKENIZE_ADD_BOS, abc, 4);
    uint32_t n;
    int32_t *t;
    static const int32_t specials[] = {258, 259, 256};
    expect_ids(m, "<|x|><u>ab", BONSAI_TOKENIZE_PARSE_SPECIAL, specials, 3);
    t = tokenize(m, "<|x|><u>ab", 10, 0, &n);
    assert_true(n > 3);
    assert_int_equal(t[n - 2], 259); /* user-defined: always */
    free(t);
    bonsai_model_free(m);
    unlink(path);

    /* out-of-range BOS: none */
    path = write_vocab("bos-range", F_BOS_RANGE);
    m = load(path);
    assert_int_equal(bonsai_model_token(m, BONSAI_TOKEN_BOS), -1);
    expect_ids(m, "ab", BONSAI_TOKENIZE_ADD_BOS, abc + 2, 1);
    bonsai_model_free(m);
    unlink(path);
    /* an empty token text where a merge's result should be */
    expect_vocab_error("empty-merge-result", F_EMPTY_TOKEN, BONSAI_ERR_CORRUPT, "merge 1");
}

/* A SentencePiece vocabulary with no byte tokens and no <unk>: unknown bytes are dropped. */
static void test_spm_without_bytes(void **state)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/spm.gguf", tmp_dir);
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    const char *tokens[] = {"<s>", "\342\226\201", "a", "b", "\342\226\201a", "ab", ""};
    const float scores[] = {0, -1, -2, -3, -0.5f, -0.1f, 5};
    const int32_t types[] = {3, 1, 1, 1, 1, 1, 1};
    assert_int_equal(bsi_gguf_writer_add_string(w, "tokenizer.ggml.model", "llama"), 0);
    assert_int_equal(bsi_gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", 7, tokens), 0);
    assert_int_equal(
        bsi_gguf_writer_add_array(w, "tokenizer.ggml.scores", BONSAI_VALUE_F32, 7, scores), 0);
    assert_int_equal(
        bsi_gguf_writer_add_array(w, "tokenizer.ggml.token_type", BONSAI_VALUE_I32, 7, types), 0);
    assert_int_equal(bsi_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0), 0);
    FILE *out = fopen(path, "wb");
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, out), 0);
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    fclose(out);
    bsi_gguf_writer_free(w);
    bonsai_model *m = load(path);
    /* "ab" (-0.1) merges before "▁a" (-0.5); "▁ab" is no token; 0xff has no token: dropped */
    static const int32_t want[] = {0, 1, 5, 4};
    expect_ids(m, "ab\xff a", BONSAI_TOKENIZE_ADD_BOS, want, 4);
    size_t len;
    char *s = detokenize(m, want, 4, 0, &len);
    assert_string_equal(s, "ab a");
    free(s);
    bonsai_model_free(m);
    unlink(path);
}

/* ---- several threads build and use the vocabulary at once ---- */

typedef struct job {
    bonsai_model *m;
    uint32_t n;
    int32_t first;
} job;

static void *tokenize_job(void *arg)
{
    job *j = arg;
    int32_t t[64];
    if (bonsai_tokenize(j->m, "Hello, world! Hello again.", 26, 0, t, 64, &j->n)) j->n = 0;
    j->first = t[0];
    return NULL;
}

static void test_threads(void **state)
{
    bonsai_model *m = load(test_data("ggml-vocab-gpt-2.gguf"));
    pthread_t th[8];
    job jobs[8];
    for (int i = 0; i < 8; i++) {
        jobs[i] = (job){m, 0, -1};
        assert_int_equal(pthread_create(&th[i], NULL, tokenize_job, &jobs[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_true(jobs[i].n > 0);
        assert_int_equal(jobs[i].n, jobs[0].n);
        assert_int_equal(jobs[i].first, 15496);
    }
    bonsai_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conformance_qwen2),
        cmocka_unit_test(test_conformance_gpt2),
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_qwen_special_tokens),
        cmocka_unit_test(test_gpt2_specials),
        cmocka_unit_test(test_random_round_trips),
        cmocka_unit_test(test_hostile_inputs),
        cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_buffers_and_arguments),
        cmocka_unit_test(test_no_tokenizer),
        cmocka_unit_test(test_hostile_vocabularies),
        cmocka_unit_test(test_spm_without_bytes),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
