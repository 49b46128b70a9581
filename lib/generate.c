/*
 * Generation: prompt prefix reuse, the sample-evaluate loop, UTF-8-safe streaming with stop
 * strings held back until they can no longer match, cancellation and statistics.
 */
#define _POSIX_C_SOURCE 200809L
#include "sampler.h"
#include "session.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROMPT_CHUNK 512 /* prompt tokens per batch: bounds the activation memory */

void bonsai_generate_params_init(bonsai_generate_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->max_tokens = 256;
    params->tokenize_flags = BONSAI_TOKENIZE_ADD_BOS;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Text generated but not yet given to the callback. */
typedef struct text_buf {
    char *data;
    size_t len, cap;
} text_buf;

static bonsai_status text_append(text_buf *b, const char *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *d = bsi_realloc(b->data, cap);
        if (!d) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
        b->data = d;
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return BONSAI_OK;
}

/* Position of the first complete stop string in `b`, or -1. */
static ptrdiff_t find_stop(const text_buf *b, const char *const *stop, uint32_t n_stop)
{
    ptrdiff_t best = -1;
    for (uint32_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        if (!sl || sl > b->len) continue;
        for (size_t at = 0; at + sl <= b->len; at++)
            if (!memcmp(b->data + at, stop[i], sl)) {
                if (best < 0 || (ptrdiff_t)at < best) best = (ptrdiff_t)at;
                break;
            }
    }
    return best;
}

/* Length of the longest suffix of `b` that is a proper prefix of a stop string: those bytes may
 * still become a stop string and are held back. */
static size_t stop_prefix_len(const text_buf *b, const char *const *stop, uint32_t n_stop)
{
    size_t keep = 0;
    for (uint32_t i = 0; i < n_stop; i++) {
        size_t sl = strlen(stop[i]);
        if (!sl) continue;
        for (size_t k = sl > b->len + 1 ? b->len : sl - 1; k > keep; k--)
            if (!memcmp(b->data + b->len - k, stop[i], k)) {
                keep = k;
                break;
            }
    }
    return keep;
}

/* Makes sure the cache holds the prompt and the logits of its last token: keeps the common
 * prefix with what is cached, evaluates the rest in chunks. */
static bonsai_status eval_prompt(bonsai_session *s, const int32_t *prompt, uint32_t n,
                                 uint32_t *n_reused)
{
    uint32_t n_cached;
    const int32_t *cached = bonsai_session_tokens(s, &n_cached);
    uint32_t lcp = 0;
    while (lcp < n_cached && lcp < n && cached[lcp] == prompt[lcp]) lcp++;
    if (lcp == n) lcp--; /* the last token is evaluated again for its logits */
    bonsai_status st = bonsai_session_truncate(s, lcp);
    if (st) return st;
    *n_reused = lcp;
    uint32_t chunk = PROMPT_CHUNK;
    for (uint32_t at = lcp; at < n;) {
        uint32_t k = n - at < chunk ? n - at : chunk;
        st = bonsai_session_eval(s, prompt + at, k, 0);
        if (st == BONSAI_ERR_NO_MEMORY && k > 1) { /* a memory cap: smaller batches */
            chunk = k / 2;
            continue;
        }
        if (st) return st;
        at += k;
    }
    return BONSAI_OK;
}

bonsai_status bonsai_generate_tokens(bonsai_session *s, const int32_t *prompt, uint32_t n_prompt,
                                     const bonsai_generate_params *params,
                                     bonsai_generate_stats *stats)
{
    if (!s || !prompt)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_generate_tokens: NULL argument");
    if (!bsi_session_alive(s, "bonsai_generate_tokens")) return BONSAI_ERR_INVALID_ARGUMENT;
    if (!n_prompt)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_generate_tokens: the prompt needs at least one token");
    bonsai_generate_params defaults;
    bonsai_generate_params_init(&defaults);
    if (!params) params = &defaults;
    if (!BSI_STRUCT_SIZE_OK(params, sizeof(bonsai_generate_params)))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_generate: params->struct_size is %u; use "
                        "bonsai_generate_params_init()",
                        params->struct_size);
    if (stats && bsi_out_size_check(stats->struct_size, sizeof(uint32_t) * 4, sizeof *stats,
                                    "bonsai_generate: stats"))
        return BONSAI_ERR_INVALID_ARGUMENT;
    if (params->n_stop && !params->stop)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_generate: stop is NULL");
    for (uint32_t i = 0; i < params->n_stop; i++)
        if (!params->stop[i])
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_generate: stop[%u] is NULL", i);
    uint32_t n_ctx = bonsai_session_n_ctx(s);
    if (n_prompt > n_ctx)
        return bsi_fail(BONSAI_ERR_CONTEXT_FULL,
                        "the prompt has %u tokens and the context holds %u", n_prompt, n_ctx);
    const bonsai_model *model = bsi_session_model(s);

    bonsai_generate_stats st_out;
    memset(&st_out, 0, sizeof st_out);
    st_out.n_prompt = n_prompt;

    bonsai_detokenizer *detok = NULL;
    bonsai_sampler *greedy = NULL;
    bonsai_sampler *sampler = params->sampler;
    text_buf held = {0};
    bonsai_status st = bonsai_detokenizer_create(
        model, params->detokenize_flags | BONSAI_DETOKENIZE_CONTINUATION, &detok);
    if (!st && !sampler) {
        st = bonsai_sampler_create(0, &greedy);
        if (!st) st = bonsai_sampler_add_greedy(greedy);
        sampler = greedy;
    }
    double t0 = now_ms();
    bonsai_stop_reason reason = BONSAI_STOP_NONE;
    if (!st) {
        /* a cancel request stops the prompt too (between layers of the forward pass) */
        bsi_session_stop_on_cancel(s, true);
        st = eval_prompt(s, prompt, n_prompt, &st_out.n_prompt_reused);
        bsi_session_stop_on_cancel(s, false);
        if (st == BONSAI_ERR_ABORTED && bsi_session_take_cancel(s)) {
            st = BONSAI_OK;
            reason = BONSAI_STOP_CANCELLED;
        }
    }
    double t1 = now_ms();
    st_out.prompt_ms = t1 - t0;

    while (!st && reason == BONSAI_STOP_NONE) {
        if (bsi_session_take_cancel(s)) {
            reason = BONSAI_STOP_CANCELLED;
            break;
        }
        int32_t tok;
        float logprob = 0;
        /* tokens that may still be sampled: the last one sampled is not evaluated */
        uint32_t left = n_ctx - bonsai_session_n_past(s) + 1;
        if (params->max_tokens && params->max_tokens - st_out.n_generated < left)
            left = params->max_tokens - st_out.n_generated;
        bsi_sampler_set_budget(sampler, left);
        double ts = now_ms();
        st = bonsai_session_sample(s, sampler, &tok, &logprob); /* on the GPU when it can */
        st_out.sample_ms += now_ms() - ts;
        if (st) break;
        st_out.n_generated++;

        const char *piece;
        size_t piece_len;
        if ((st = bonsai_detokenizer_push(detok, tok, &piece, &piece_len))) break;
        if ((st = text_append(&held, piece, piece_len))) break;

        if (bonsai_token_is_eog(model, tok))
            reason = BONSAI_STOP_EOG;
        else if (bonsai_sampler_done(sampler))
            reason = BONSAI_STOP_CONSTRAINT;
        else if (params->max_tokens && st_out.n_generated >= params->max_tokens)
            reason = BONSAI_STOP_MAX_TOKENS;
        else if (bonsai_session_n_past(s) >= n_ctx)
            reason = BONSAI_STOP_CONTEXT_FULL;
        else if (bsi_session_take_cancel(s))
            reason = BONSAI_STOP_CANCELLED;
        if (reason != BONSAI_STOP_NONE) {
            bonsai_detokenizer_flush(detok, &piece, &piece_len);
            if ((st = text_append(&held, piece, piece_len))) break;
        }

        /* what can be shown now: up to a stop string, or all but a possible stop prefix */
        size_t emit = held.len;
        ptrdiff_t at = find_stop(&held, params->stop, params->n_stop);
        if (at >= 0) {
            emit = (size_t)at;
            reason = BONSAI_STOP_STRING;
        } else if (reason == BONSAI_STOP_NONE) {
            emit -= stop_prefix_len(&held, params->stop, params->n_stop);
        }
        if (params->on_token &&
            !params->on_token(tok, held.data ? held.data : "", emit, logprob, params->user_data) &&
            reason == BONSAI_STOP_NONE)
            reason = BONSAI_STOP_CANCELLED;
        memmove(held.data, held.data + emit, held.len - emit);
        held.len -= emit;
        if (reason != BONSAI_STOP_NONE) break;
        st = bonsai_session_eval(s, &tok, 1, 0);
    }
    /* a request that came in as this generation ended does not carry over to the next */
    (void)bsi_session_take_cancel(s);
    st_out.stop_reason = reason;
    st_out.generate_ms = now_ms() - t1;
    uint32_t n_eval = n_prompt - st_out.n_prompt_reused;
    if (st_out.prompt_ms > 0) st_out.prompt_tps = n_eval / (st_out.prompt_ms / 1e3);
    if (st_out.generate_ms > 0)
        st_out.generate_tps = st_out.n_generated / (st_out.generate_ms / 1e3);
    if (stats) bsi_out_copy(stats, &st_out);
    free(held.data);
    bonsai_detokenizer_free(detok);
    bonsai_sampler_free(greedy);
    return st;
}

bonsai_status bonsai_generate(bonsai_session *s, const char *prompt,
                              const bonsai_generate_params *params, bonsai_generate_stats *stats)
{
    if (!s || !prompt)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_generate: NULL argument");
    if (params && !BSI_STRUCT_SIZE_OK(params, sizeof(bonsai_generate_params)))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "bonsai_generate: params->struct_size is %u; use "
                        "bonsai_generate_params_init()",
                        params->struct_size);
    uint32_t flags = params ? params->tokenize_flags : BONSAI_TOKENIZE_ADD_BOS;
    const bonsai_model *model = bsi_session_model(s);
    size_t len = strlen(prompt);
    uint32_t n = 0;
    bonsai_status st = bonsai_tokenize(model, prompt, len, flags, NULL, 0, &n);
    if (st && st != BONSAI_ERR_OUT_OF_RANGE) return st;
    int32_t *tokens = bsi_malloc((n ? n : 1) * sizeof *tokens);
    if (!tokens) return bsi_fail(BONSAI_ERR_NO_MEMORY, "out of memory");
    st = bonsai_tokenize(model, prompt, len, flags, tokens, n, &n);
    if (!st) st = bonsai_generate_tokens(s, tokens, n, params, stats);
    free(tokens);
    return st;
}
