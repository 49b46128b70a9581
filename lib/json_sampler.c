/* The JSON constraint as a sampler stage (bonsai_sampler_add_json): the matcher state advances by
 * each accepted token's bytes; apply() masks the tokens that cannot continue the document. */
#include "json_constraint.h"
#include "sampler.h"
#include "vocab.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bsi_jtok_kind vocab_token(void *ctx, uint32_t id, const uint8_t **bytes, size_t *len)
{
    const bsi_vocab *v = ctx;
    *bytes = bsi_vocab_bytes(v, (int32_t)id, false, len);
    if (bsi_vocab_is_eog(v, (int32_t)id)) return BSI_JTOK_EOG;
    if (bsi_vocab_is_control(v, (int32_t)id)) return BSI_JTOK_NEVER;
    return BSI_JTOK_TEXT;
}

bonsai_status bsi_jvocab_from_model(const bonsai_model *m, bsi_jvocab **out)
{
    const bsi_vocab *v = NULL;
    bonsai_status st = bsi_vocab_get(m, &v);
    if (st) return st;
    return bsi_jvocab_build(bsi_vocab_n(v), vocab_token, (void *)v, out);
}

typedef struct jstage {
    bsi_jschema *schema;
    bsi_jvocab *vocab;
    uint64_t *mask;
    void *scratch;
    bool eog;        /* an end-of-generation token was accepted: nothing may follow */
    uint32_t budget; /* tokens that may still be sampled, this one included (UINT32_MAX: any) */
    bsi_jstate st;
    bsi_jstate tmp;
    uint8_t finish[4096];
} jstage;

/* Within this many tokens of the budget, every token the grammar allows is also checked for
 * leaving enough tokens to finish the document. */
#define BUDGET_ZONE 64

/* Tokens needed to end the document from `st`: the bytes of bsi_jstate_finish spelled with the
 * vocabulary's longest tokens, and an end-of-generation token if they leave the document only
 * complete (a top-level number); SIZE_MAX when unknown. *first: the first of those tokens. */
static size_t finish_cost(jstage *j, const bsi_jstate *st, int32_t *first)
{
    bool closed = false;
    size_t n = bsi_jstate_finish(j->schema, st, j->finish, sizeof j->finish, &closed);
    if (first) *first = -1;
    if (n == SIZE_MAX) return SIZE_MAX;
    if (n == 0) {
        if (first && !closed) *first = bsi_jvocab_eog_token(j->vocab);
        return !closed;
    }
    size_t tokens = bsi_jvocab_spell(j->vocab, j->finish, n, first);
    return tokens == SIZE_MAX ? SIZE_MAX : tokens + !closed;
}

/* Whether `token` (allowed by the grammar) leaves enough tokens to finish the document. */
static bool fits_budget(jstage *j, int32_t token)
{
    if (j->budget == UINT32_MAX || bsi_jvocab_kind(j->vocab, token) == BSI_JTOK_EOG) return true;
    bsi_jstate_copy(&j->tmp, &j->st);
    if (!bsi_jvocab_accept(j->vocab, j->schema, &j->tmp, token)) return false;
    size_t cost = finish_cost(j, &j->tmp, NULL);
    return cost != SIZE_MAX && cost < j->budget;
}

/* Near the budget: keeps in the mask only the tokens after which the document can still be
 * finished in time; when none can (the budget was already too small), the first token of the
 * quickest ending. */
static void mask_budget(jstage *j, uint64_t *mask)
{
    int32_t quickest;
    size_t cost = finish_cost(j, &j->st, &quickest);
    if (cost == SIZE_MAX || (uint64_t)cost + BUDGET_ZONE < j->budget) return;
    bool in_string = bsi_jstate_in_string(&j->st);
    bool plain_fits = cost < j->budget; /* plain characters in a string change nothing */
    bool any = false;
    uint32_t n = bsi_jvocab_n(j->vocab);
    for (uint32_t w = 0; w < (n + 63) / 64; w++) {
        for (uint64_t bits = mask[w]; bits; bits &= bits - 1) {
            int32_t id = (int32_t)(w * 64 + (uint32_t)__builtin_ctzll(bits));
            bool ok =
                in_string && bsi_jvocab_is_plain(j->vocab, id) ? plain_fits : fits_budget(j, id);
            if (!ok) mask[w] &= ~(1ull << (id % 64));
            any |= ok;
        }
    }
    if (!any && quickest >= 0) mask[quickest / 64] |= 1ull << (quickest % 64);
}

static bonsai_status jstage_apply(void *ctx, bonsai_candidates *c, const int32_t *hist,
                                  size_t n_hist)
{
    (void)hist;
    (void)n_hist;
    jstage *j = ctx;
    uint32_t n = bsi_jvocab_n(j->vocab);
    if (j->eog)
        memset(j->mask, 0, (n + 63) / 64 * sizeof *j->mask);
    else
        bsi_jvocab_mask(j->vocab, j->schema, &j->st, j->mask, j->scratch);
    if (!j->eog && j->budget != UINT32_MAX) mask_budget(j, j->mask);
    const uint64_t *mask = j->mask;
    bool changed = false;
    for (size_t i = 0; i < c->size; i++) {
        uint32_t id = (uint32_t)c->data[i].id;
        if (id < n && (mask[id / 64] >> (id % 64) & 1)) continue;
        if (c->data[i].logit != -INFINITY) {
            c->data[i].logit = -INFINITY;
            changed = true;
        }
        if (c->selected == (int32_t)i) c->selected = -1;
    }
    if (changed) c->sorted = false;
    return BONSAI_OK;
}

static bool jstage_check(void *ctx, int32_t token)
{
    jstage *j = ctx;
    return !j->eog && bsi_jvocab_check(j->vocab, j->schema, &j->st, token) && fits_budget(j, token);
}

static bonsai_status jstage_accept(void *ctx, int32_t token)
{
    jstage *j = ctx;
    if (!j->eog && bsi_jvocab_accept(j->vocab, j->schema, &j->st, token)) {
        if (bsi_jvocab_kind(j->vocab, token) == BSI_JTOK_EOG) j->eog = true;
        return BONSAI_OK;
    }
    /* say which token, printably */
    size_t len = 0;
    const uint8_t *b = bsi_jvocab_bytes(j->vocab, token, &len);
    char text[64];
    size_t k = 0;
    for (size_t i = 0; b && i < len && k + 5 < sizeof text; i++)
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\')
            text[k++] = (char)b[i];
        else
            k += (size_t)snprintf(text + k, sizeof text - k, "\\x%02x", b[i]);
    text[k] = 0;
    if (j->eog)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON constraint: token %d after the end of the document", token);
    if (!b)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON constraint: token %d is outside the vocabulary", token);
    if (bsi_jvocab_kind(j->vocab, token) == BSI_JTOK_EOG)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "JSON constraint: end-of-generation token %d before the document is "
                        "complete",
                        token);
    return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                    "JSON constraint: token %d (\"%s\") cannot continue the document", token, text);
}

static void jstage_reset(void *ctx)
{
    jstage *j = ctx;
    bsi_jstate_init(j->schema, &j->st);
    j->eog = false;
    j->budget = UINT32_MAX;
}

static void jstage_budget(void *ctx, uint32_t n_left)
{
    ((jstage *)ctx)->budget = n_left;
}

static bool jstage_done(const void *ctx)
{
    const jstage *j = ctx;
    return j->eog || bsi_jstate_closed(j->schema, &j->st);
}

static void jstage_free(void *ctx)
{
    jstage *j = ctx;
    if (!j) return;
    bsi_jschema_free(j->schema);
    bsi_jvocab_free(j->vocab);
    free(j->mask);
    free(j->scratch);
    free(j);
}

static const bsi_sampler_stage_vt json_vt = {
    .name = "json",
    .apply = jstage_apply,
    .check = jstage_check,
    .accept = jstage_accept,
    .reset = jstage_reset,
    .done = jstage_done,
    .budget = jstage_budget,
    .free = jstage_free,
};

bonsai_status bonsai_sampler_add_json(bonsai_sampler *s, const bonsai_model *model,
                                      const char *schema, size_t schema_len)
{
    if (!s || !model)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_sampler_add_json: %s is NULL",
                        !s ? "sampler" : "model");
    jstage *j = bsi_calloc(1, sizeof *j);
    if (!j) return bsi_fail(BONSAI_ERR_NO_MEMORY, "bonsai_sampler_add_json: out of memory");
    bonsai_status st = bsi_jschema_compile(schema, schema_len, &j->schema);
    if (!st) st = bsi_jvocab_from_model(model, &j->vocab);
    if (!st) {
        uint32_t n = bsi_jvocab_n(j->vocab);
        j->mask = bsi_malloc(((size_t)n + 63) / 64 * sizeof *j->mask + 8);
        j->scratch = bsi_malloc(bsi_jvocab_scratch_size(j->vocab));
        if (!j->mask || !j->scratch)
            st = bsi_fail(BONSAI_ERR_NO_MEMORY, "bonsai_sampler_add_json: out of memory");
    }
    if (st) {
        jstage_free(j);
        return st;
    }
    jstage_reset(j);
    return bsi_sampler_add_stage(s, &json_vt, j);
}
