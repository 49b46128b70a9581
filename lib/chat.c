/*
 * Chat: the Qwen3 ChatML renderer (the model's Jinja template, for conversations without tools),
 * the <think> parser, and a conversation kept in a session's KV cache.
 */
#define _POSIX_C_SOURCE 200809L
#include "handle.h"
#include "session.h"
#include "vocab.h"

#include <stdlib.h>
#include <string.h>

typedef struct strbuf {
    char *data;
    size_t len, cap;
    bool oom;
} strbuf;

static void sb_add(strbuf *b, const char *p, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = bsi_realloc(b->data, cap);
        if (!d) {
            b->oom = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void sb_str(strbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Spans [v[2k], v[2k + 1]) of rendered text that are message contents, not template markup. */
typedef struct spans {
    size_t *v;
    size_t n, cap;
    bool oom;
} spans;

static void span_add(spans *sp, size_t a, size_t b)
{
    if (!sp || sp->oom || b <= a) return;
    if (sp->n == sp->cap) {
        size_t cap = sp->cap ? 2 * sp->cap : 16;
        size_t *v = bsi_realloc(sp->v, 2 * cap * sizeof *v);
        if (!v) {
            sp->oom = true;
            return;
        }
        sp->v = v;
        sp->cap = cap;
    }
    sp->v[2 * sp->n] = a;
    sp->v[2 * sp->n + 1] = b;
    sp->n++;
}

/* Appends message content: text that is never parsed for control tokens. */
static void sb_content(strbuf *b, spans *sp, const char *p, size_t n)
{
    size_t at = b->len;
    sb_add(b, p, n);
    span_add(sp, at, b->len);
}

static bool starts_with(const char *s, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    return n >= k && !memcmp(s, prefix, k);
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && !memcmp(s + n - k, suffix, k);
}

/* First occurrence of `needle` in s[0 .. n), or NULL. */
static const char *find(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* Last occurrence of `needle` in s[0 .. n), or NULL. */
static const char *find_last(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;)
        if (!memcmp(s + i, needle, k)) return s + i;
    return NULL;
}

/* Jinja's lstrip/rstrip/strip with a set of characters. */
static void strip(const char **s, size_t *n, const char *chars, bool left, bool right)
{
    while (left && *n && strchr(chars, (*s)[0])) (*s)++, (*n)--;
    while (right && *n && strchr(chars, (*s)[*n - 1])) (*n)--;
}

static bool is_tool_response(const char *c)
{
    size_t n = strlen(c);
    return starts_with(c, n, "<tool_response>") && ends_with(c, n, "</tool_response>");
}

static bonsai_status render(const bonsai_chat_message *m, size_t n, uint32_t flags, strbuf *out,
                            spans *content)
{
    static const char *const roles[] = {"system", "user", "assistant", "tool"};
    for (size_t i = 0; i < n; i++) {
        if (!m[i].role || !m[i].content)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "chat message %zu: NULL role or content",
                            i);
        bool known = false;
        for (size_t r = 0; r < 4; r++) known |= !strcmp(m[i].role, roles[r]);
        if (!known)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "chat message %zu: unknown role '%s' (system, user, assistant, tool)",
                            i, m[i].role);
    }
    if (n && !strcmp(m[0].role, "system")) {
        sb_str(out, "<|im_start|>system\n");
        sb_content(out, content, m[0].content, strlen(m[0].content));
        sb_str(out, "<|im_end|>\n");
    }
    /* the last user message that is not a tool response: reasoning is kept after it */
    size_t last_query = n ? n - 1 : 0;
    for (size_t i = n; i-- > 0;)
        if (!strcmp(m[i].role, "user") && !is_tool_response(m[i].content)) {
            last_query = i;
            break;
        }
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role, *c = m[i].content;
        size_t cn = strlen(c);
        if (!strcmp(role, "user") || (!strcmp(role, "system") && i > 0)) {
            sb_str(out, "<|im_start|>");
            sb_str(out, role);
            sb_str(out, "\n");
            sb_content(out, content, c, cn);
            sb_str(out, "<|im_end|>\n");
        } else if (!strcmp(role, "assistant")) {
            const char *answer = c, *reason = "";
            size_t answer_n = cn, reason_n = 0;
            const char *end = find(c, cn, "</think>");
            if (end) {
                /* content: after the last </think>; reasoning: before the first one, after the
                 * last <think> there */
                const char *last = find_last(c, cn, "</think>");
                answer = last + 8;
                answer_n = cn - (size_t)(answer - c);
                strip(&answer, &answer_n, "\n", true, false);
                reason = c;
                reason_n = (size_t)(end - c);
                strip(&reason, &reason_n, "\n", false, true);
                const char *open = find_last(reason, reason_n, "<think>");
                if (open) {
                    reason_n -= (size_t)(open + 7 - reason);
                    reason = open + 7;
                }
                strip(&reason, &reason_n, "\n", true, false);
            }
            sb_str(out, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || reason_n)) {
                strip(&reason, &reason_n, "\n", true, true);
                strip(&answer, &answer_n, "\n", true, false);
                sb_str(out, "<think>\n");
                sb_content(out, content, reason, reason_n);
                sb_str(out, "\n</think>\n\n");
            }
            sb_content(out, content, answer, answer_n);
            sb_str(out, "<|im_end|>\n");
        } else if (!strcmp(role, "tool")) {
            if (i == 0 || strcmp(m[i - 1].role, "tool")) sb_str(out, "<|im_start|>user");
            sb_str(out, "\n<tool_response>\n");
            sb_content(out, content, c, cn);
            sb_str(out, "\n</tool_response>");
            if (i == n - 1 || strcmp(m[i + 1].role, "tool")) sb_str(out, "<|im_end|>\n");
        }
    }
    if (flags & BONSAI_CHAT_ADD_GENERATION_PROMPT) {
        sb_str(out, "<|im_start|>assistant\n");
        if (!(flags & BONSAI_CHAT_ENABLE_THINKING)) sb_str(out, "<think>\n\n</think>\n\n");
    }
    sb_add(out, "", 0);
    return out->oom || (content && content->oom) ? bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory")
                                                 : BONSAI_OK;
}

bonsai_status bonsai_chat_render(const bonsai_chat_message *messages, size_t n, uint32_t flags,
                                 char *buf, size_t buf_size, size_t *len)
{
    if ((!messages && n) || !len || (!buf && buf_size))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_render: NULL argument");
    strbuf out = {0};
    bonsai_status st = render(messages, n, flags, &out, NULL);
    if (!st) {
        *len = out.len;
        if (out.len > buf_size)
            st = bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                          "bonsai_chat_render: the text needs %zu bytes, the buffer has %zu",
                          out.len, buf_size);
        else if (buf_size) /* with the terminator when it fits */
            memcpy(buf, out.data, out.len < buf_size ? out.len + 1 : out.len);
    }
    free(out.data);
    return st;
}

bonsai_status bonsai_chat_tokenize(const bonsai_model *model, const bonsai_chat_message *messages,
                                   size_t n, uint32_t flags, int32_t *tokens, uint32_t n_max,
                                   uint32_t *n_tokens)
{
    if (!model || (!messages && n) || !n_tokens || (!tokens && n_max))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_tokenize: NULL argument");
    strbuf text = {0};
    spans content = {0};
    int32_t *toks = NULL;
    uint32_t count = 0;
    bonsai_status st = render(messages, n, flags, &text, &content);
    if (!st)
        st = bsi_tokenize_markup(model, text.data, text.len, BONSAI_TOKENIZE_ADD_BOS, content.v,
                                 content.n, &toks, &count);
    if (!st) {
        *n_tokens = count;
        if (count > n_max)
            st = bsi_fail(BONSAI_ERR_OUT_OF_RANGE,
                          "bonsai_chat_tokenize: the conversation has %u tokens, more than n_max "
                          "(%u)",
                          count, n_max);
        else if (count)
            memcpy(tokens, toks, count * sizeof *toks);
    }
    free(toks);
    free(text.data);
    free(content.v);
    return st;
}

void bonsai_chat_parse(const char *text, size_t len, const char **reasoning, size_t *reasoning_len,
                       const char **content, size_t *content_len)
{
    static const char ws[] = " \t\r\n";
    const char *r = "", *c = text ? text : "";
    size_t rn = 0, cn = text ? len : 0;
    const char *open = find(c, cn, "<think>");
    const char *close = find(c, cn, "</think>");
    if (close && (!open || open > close)) {
        /* the opening tag was in the prompt: everything before </think> is reasoning */
        r = c;
        rn = (size_t)(close - c);
        cn -= (size_t)(close + 8 - c);
        c = close + 8;
    } else if (open) {
        const char *before = c;
        size_t before_n = (size_t)(open - c);
        strip(&before, &before_n, ws, true, true);
        if (!before_n) { /* only whitespace before <think> */
            r = open + 7;
            if (close) {
                rn = (size_t)(close - r);
                cn -= (size_t)(close + 8 - c);
                c = close + 8;
            } else { /* cut off while thinking */
                rn = cn - (size_t)(r - c);
                cn = 0;
                c = r + rn;
            }
        }
    }
    strip(&r, &rn, ws, true, true);
    strip(&c, &cn, ws, true, true);
    if (reasoning) *reasoning = r;
    if (reasoning_len) *reasoning_len = rn;
    if (content) *content = c;
    if (content_len) *content_len = cn;
}

/* ---- the chat object ---- */

struct bonsai_chat {
    uint32_t magic; /* BSI_MAGIC_CHAT (handle.h) */
    bonsai_session *s;
    uint32_t flags;
    char *system;
    int32_t *tokens; /* the conversation: in the cache, but for the last reply's last token */
    uint32_t n_tokens, cap;
    strbuf reply;
    /* during bonsai_chat_send: the caller's callback */
    bonsai_token_fn user_fn;
    void *user_data;
    uint32_t n_turn_start; /* tokens before this turn, to roll back on failure */
    bool oom;
};

static bonsai_status chat_push(bonsai_chat *c, const int32_t *t, uint32_t n)
{
    if (c->n_tokens + (uint64_t)n > c->cap) {
        uint64_t cap = c->cap ? c->cap : 1024;
        while (cap < c->n_tokens + (uint64_t)n) cap *= 2;
        if (cap > UINT32_MAX) return bsi_fail(BONSAI_ERR_OUT_OF_RANGE, "conversation too long");
        int32_t *p = bsi_realloc(c->tokens, cap * sizeof *p);
        if (!p) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        c->tokens = p;
        c->cap = (uint32_t)cap;
    }
    memcpy(c->tokens + c->n_tokens, t, n * sizeof *t);
    c->n_tokens += n;
    return BONSAI_OK;
}

static bonsai_status set_system(bonsai_chat *c, const char *system)
{
    char *copy = NULL;
    if (system && !(copy = bsi_strdup(system)))
        return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    free(c->system);
    c->system = copy;
    c->n_tokens = 0;
    c->reply.len = 0;
    return BONSAI_OK;
}

bonsai_status bonsai_chat_create(bonsai_session *session, const char *system_prompt, uint32_t flags,
                                 bonsai_chat **out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_create: out is NULL");
    *out = NULL;
    if (!session)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_create: session is NULL");
    if (flags & ~(uint32_t)BONSAI_CHAT_ENABLE_THINKING)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_create: unknown flags 0x%x",
                        flags);
    if (!bsi_session_alive(session, "bonsai_chat_create")) return BONSAI_ERR_INVALID_ARGUMENT;
    bonsai_chat *c = bsi_calloc(1, sizeof *c);
    if (!c) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    c->magic = BSI_MAGIC_CHAT;
    c->s = session;
    c->flags = flags;
    bonsai_status st = set_system(c, system_prompt);
    if (st) {
        free(c);
        return st;
    }
    *out = c;
    return BONSAI_OK;
}

void bonsai_chat_free(bonsai_chat *c)
{
    if (!c || !bsi_handle_alive(&c->magic, BSI_MAGIC_CHAT, "bonsai_chat_free")) return;
    free(c->system);
    free(c->tokens);
    free(c->reply.data);
    bsi_handle_retire(c, &c->magic);
}

bonsai_status bonsai_chat_reset(bonsai_chat *c, const char *system_prompt)
{
    if (!c) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_reset: NULL");
    if (!bsi_handle_alive(&c->magic, BSI_MAGIC_CHAT, "bonsai_chat_reset"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    return set_system(c, system_prompt);
}

static bool chat_on_token(int32_t token, const char *text, size_t len, float logprob, void *ud)
{
    bonsai_chat *c = ud;
    if (chat_push(c, &token, 1)) c->oom = true;
    sb_add(&c->reply, text, len);
    return c->user_fn ? c->user_fn(token, text, len, logprob, c->user_data) : true;
}

bonsai_status bonsai_chat_send(bonsai_chat *c, const char *user_message,
                               const bonsai_generate_params *params, bonsai_generate_stats *stats)
{
    if (!c || !user_message)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_chat_send: NULL argument");
    if (!bsi_handle_alive(&c->magic, BSI_MAGIC_CHAT, "bonsai_chat_send"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    bonsai_generate_params p;
    bonsai_generate_params_init(&p);
    if (params) {
        if (!BSI_STRUCT_SIZE_OK(params, sizeof(bonsai_generate_params)))
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "bonsai_chat_send: params->struct_size is %u; use "
                            "bonsai_generate_params_init()",
                            params->struct_size);
        memcpy(&p, params, params->struct_size);
        p.struct_size = sizeof p;
    }
    const bonsai_model *model = bsi_session_model(c->s);
    uint32_t render_flags = BONSAI_CHAT_ADD_GENERATION_PROMPT | c->flags;

    /* the new text: the whole conversation so far on the first turn, else what follows the
     * previous reply (closing it unless it ended with the end-of-turn token) */
    strbuf text = {0};
    bonsai_chat_message msgs[2];
    size_t n_msgs = 0;
    uint32_t tok_flags = BONSAI_TOKENIZE_PARSE_SPECIAL;
    if (!c->n_tokens) {
        if (c->system) msgs[n_msgs++] = (bonsai_chat_message){"system", c->system};
        tok_flags |= BONSAI_TOKENIZE_ADD_BOS;
    } else {
        int32_t last = c->tokens[c->n_tokens - 1];
        sb_str(&text, last == bonsai_model_token(model, BONSAI_TOKEN_EOT) ? "\n" : "<|im_end|>\n");
    }
    msgs[n_msgs++] = (bonsai_chat_message){"user", user_message};
    spans content = {0};
    bonsai_status st = render(msgs, n_msgs, render_flags, &text, &content);

    /* control tokens are parsed in the template's markup only: a message that contains
     * "<|im_end|>" stays text and cannot forge turns */
    uint32_t n_new = 0;
    int32_t *toks = NULL;
    if (!st)
        st = bsi_tokenize_markup(model, text.data, text.len, tok_flags, content.v, content.n, &toks,
                                 &n_new);
    free(text.data);
    free(content.v);
    c->n_turn_start = c->n_tokens;
    if (!st) st = chat_push(c, toks, n_new);
    free(toks);
    if (!st && c->n_tokens >= bonsai_session_n_ctx(c->s))
        st = bsi_fail(BONSAI_ERR_CONTEXT_FULL,
                      "the conversation (%u tokens with this message) fills the context of %u; "
                      "reset the chat or use a larger context",
                      c->n_tokens, bonsai_session_n_ctx(c->s));
    if (!st) {
        c->reply.len = 0;
        c->reply.oom = false; /* a failure of an earlier send is over */
        c->user_fn = p.on_token;
        c->user_data = p.user_data;
        c->oom = false;
        p.on_token = chat_on_token;
        p.user_data = c;
        /* chat_on_token appends to c->tokens, so generate from a stable copy of the prompt */
        uint32_t n_prompt = c->n_tokens;
        int32_t *prompt = bsi_malloc(n_prompt * sizeof *prompt);
        if (!prompt)
            st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        else {
            memcpy(prompt, c->tokens, n_prompt * sizeof *prompt);
            st = bonsai_generate_tokens(c->s, prompt, n_prompt, &p, stats);
            free(prompt);
        }
        if (!st && (c->oom || c->reply.oom)) st = bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        c->user_fn = NULL;
        c->user_data = NULL;
    }
    if (st) { /* the conversation stays as it was before this message */
        c->n_tokens = c->n_turn_start;
        c->reply.len = 0;
    }
    if (c->reply.data) c->reply.data[c->reply.len] = 0;
    return st;
}

const char *bonsai_chat_last_reply(const bonsai_chat *c, size_t *len)
{
    if (len) *len = c ? c->reply.len : 0;
    return c && c->reply.data ? c->reply.data : "";
}
