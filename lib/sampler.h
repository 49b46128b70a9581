/* Internal interface of the sampler chain (lib/sampler.c): how a stage plugs into a
 * bonsai_sampler. The built-in stages (greedy, dist, temperature, top-k, top-p, min-p, penalties,
 * logit bias, custom) and the JSON constraint (lib/json_constraint.c) are all such stages. Not
 * installed.
 *
 * How bonsai_sampler_sample runs the chain:
 *
 *  1. The candidates are every token, in id order (data[i].id == i), unsorted, selected == -1, with
 *     the caller's logits (NaN read as -INFINITY). Their array belongs to the sampler and is only
 *     reallocated when n_vocab grows. (Shortcut: when a pass begins with built-in top-k, or with
 *     built-in penalties / logit-bias stages and then top-k or a final greedy, those stages work
 *     on the few best logits plus the tokens they change instead of all n_vocab. Every stage
 *     after them sees exactly what it would have without the shortcut.)
 *  2. Each stage's apply() runs in the order the stages were added, with the history (every token
 *     accepted since creation or the last reset, oldest first). A stage may rewrite logits, reorder
 *     (clearing `sorted` unless the order stays highest-logit-first), shrink `size`, and select;
 *     it must never grow `size`. Logits may be -INFINITY (masked); probabilities are then 0.
 *  3. Constraint fast path: when the chain holds stages with a check() function (constraints),
 *     the chain first runs WITHOUT those stages. If that selects a token with a finite logit and
 *     every constraint's check() accepts it, it is the result and the constraints' apply() never
 *     runs. Otherwise the random generator is restored to its state before the first pass, the
 *     candidates are rebuilt from the logits, and the whole chain runs, constraints included. So a
 *     constraint costs one check() per token in the common case, a seed still gives the same
 *     tokens, and the other stages' apply() (a custom stage's callback included) may run twice
 *     for one token.
 *  4. The selection must be a candidate with a logit above -INFINITY, else
 *     BONSAI_ERR_INVALID_STATE. `logprob` comes from the caller's logits, not the candidates.
 *  5. The token is accepted, as by bonsai_sampler_accept: every stage's accept() (first those
 *     with a check(), so that a constraint refusing the token leaves the other stages unchanged),
 *     then the history. The first error is returned and the token is not added to the history.
 *
 * bonsai_sampler_reset calls every reset(), clears the history and reseeds the generator;
 * bonsai_sampler_done is true when any stage's done() is; bonsai_sampler_free calls every free().
 */
#ifndef BONSAI_SAMPLER_H
#define BONSAI_SAMPLER_H

#include "bonsai/bonsai.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct bsi_sampler_stage_vt {
    const char *name;
    /* Edit the candidates (all tokens on the first stage, unsorted, selected == -1). */
    bonsai_status (*apply)(void *ctx, bonsai_candidates *c, const int32_t *hist, size_t n_hist);
    /* Optional: is `token` acceptable now? Lets the chain try the unconstrained choice first. */
    bool (*check)(void *ctx, int32_t token);
    /* Optional: the token was chosen/accepted; may refuse with an error status. */
    bonsai_status (*accept)(void *ctx, int32_t token);
    void (*reset)(void *ctx);      /* optional */
    bool (*done)(const void *ctx); /* optional: a complete document was seen */
    /* Optional: at most n_left tokens (this one included) will be sampled before the output is
     * cut; UINT32_MAX when unknown. A constraint uses it to finish its document in time. */
    void (*budget)(void *ctx, uint32_t n_left);
    void (*free)(void *ctx); /* optional */
} bsi_sampler_stage_vt;

/* Append a stage (vt must outlive the sampler, typically a static const; apply is required); on
 * failure calls vt->free(ctx). */
bonsai_status bsi_sampler_add_stage(bonsai_sampler *s, const bsi_sampler_stage_vt *vt, void *ctx);

/* Whether s is a live sampler (false, with the error recorded for `fn`, for a freed one). */
bool bsi_sampler_alive(const bonsai_sampler *s, const char *fn);

/* Tells the stages how many tokens may still be sampled, this one included (UINT32_MAX: no
 * limit); generation calls it before each token. */
void bsi_sampler_set_budget(bonsai_sampler *s, uint32_t n_left);

/* Whether the chain can run where the logits are (a GPU): the built-in stages top-k, top-p, min-p,
 * temperature (each at most once, in this order), then dist or greedy, and nothing else. Fills p,
 * with p->u the uniform the dist stage would draw next (not drawn). */
struct bsi_sample_params;
bool bsi_sampler_plan(const bonsai_sampler *s, struct bsi_sample_params *p);

/* A backend chose `token` by the plan from bsi_sampler_plan: draws the dist stage's uniform (as
 * bonsai_sampler_sample would have) and accepts the token. */
bonsai_status bsi_sampler_took(bonsai_sampler *s, int32_t token);

#endif
