/* The sampler chain: candidates, the built-in stages, the constraint fast path, the history and
 * the seeded random generator. See sampler.h for how a chain runs. */
#include "sampler.h"

#include "backend.h"

#include "handle.h"

#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct bsi_stage {
    const bsi_sampler_stage_vt *vt;
    void *ctx;
} bsi_stage;

/* The highest logit (NaN read as -inf) and its lowest index. */
typedef struct vocab_max {
    float max; /* -inf when every logit is -inf or NaN */
    uint32_t idx;
} vocab_max;

struct bonsai_sampler {
    uint32_t magic; /* BSI_MAGIC_SAMPLER (handle.h) */
    uint64_t seed;
    uint64_t rng[4]; /* xoshiro256** */
    bsi_stage *stages;
    size_t n_stages, cap_stages;
    size_t n_checks; /* stages with a check(): constraints */
    bonsai_token_data *cand;
    size_t cand_cap;
    uint32_t n_vocab; /* of the call in progress: built-in stages skip tokens outside it */
    bool have_max;    /* vmax holds the call's highest logit */
    vocab_max vmax;
    int32_t *hist; /* every accepted token since creation or reset, oldest first */
    size_t n_hist, cap_hist;
};

/* ------------------------------------------------------------------------------------------ */
/* Small utilities */

/* Grows *p (elements of `elem` bytes) to hold at least `need`; the contents are kept. */
static bonsai_status grow(void **p, size_t *cap, size_t need, size_t elem, size_t min_cap)
{
    if (need <= *cap) return BONSAI_OK;
    size_t n = *cap ? *cap : min_cap;
    while (n < need) n = n > SIZE_MAX / 2 ? need : n * 2;
    if (n > SIZE_MAX / elem) return bsi_fail(BONSAI_ERR_NO_MEMORY, "sampler: array too large");
    void *q = bsi_realloc(*p, n * elem);
    if (!q) return bsi_fail(BONSAI_ERR_NO_MEMORY, "sampler: out of memory (%zu bytes)", n * elem);
    *p = q;
    *cap = n;
    return BONSAI_OK;
}

/* splitmix64, to spread a seed over the xoshiro256** state. */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(bonsai_sampler *s)
{
    uint64_t x = s->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t *st)
{
    uint64_t r = rotl(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl(st[3], 45);
    return r;
}

/* Uniform in [0, 1), 53 random bits. */
static double rng_double(uint64_t *st)
{
    return (double)(rng_next(st) >> 11) * 0x1.0p-53;
}

static bonsai_status no_token(const char *stage)
{
    return bsi_fail(BONSAI_ERR_INVALID_STATE,
                    "sampler (%s): no token can be chosen: every remaining candidate's logit is "
                    "-inf",
                    stage);
}

/* The order of a sorted candidate list: highest logit first, ties by lowest id (a total order, so
 * that partial sorts and cuts do not depend on the input order). */
static inline bool before(const bonsai_token_data *a, const bonsai_token_data *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static inline void swap_td(bonsai_token_data *a, bonsai_token_data *b)
{
    bonsai_token_data t = *a;
    *a = *b;
    *b = t;
}

/* Heap of `n` with the last candidate in `before` order at the root. */
static void sift_down(bonsai_token_data *d, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, w = i;
        if (l >= n) return;
        if (before(&d[w], &d[l])) w = l;
        if (l + 1 < n && before(&d[w], &d[l + 1])) w = l + 1;
        if (w == i) return;
        swap_td(&d[i], &d[w]);
        i = w;
    }
}

/* Puts the first k of d[0..n) in `before` order, sorted, in d[0..k); the others follow in no
 * particular order. O(n log k), in place. */
static void partial_sort(bonsai_token_data *d, size_t n, size_t k)
{
    if (k > n) k = n;
    if (k == 0) return;
    for (size_t i = k / 2; i-- > 0;) sift_down(d, k, i);
    for (size_t i = k; i < n; i++) {
        if (before(&d[i], &d[0])) {
            swap_td(&d[i], &d[0]);
            sift_down(d, k, 0);
        }
    }
    for (size_t m = k; m > 1; m--) {
        swap_td(&d[0], &d[m - 1]);
        sift_down(d, m - 1, 0);
    }
}

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* exp(x) for x <= 0: Cephes' polynomial on the remainder after taking out a power of two,
 * relative error below 1e-7; exactly 0 for x < -87 (exp(x) < 2e-38, nothing next to the exp(0)
 * = 1 of a maximum), -inf and NaN. Branch-free, with the special cases found by integer
 * comparisons of the bits, so that loops over it vectorize (float comparisons in a select do not
 * under the default -ftrapping-math). */
static inline float exp_nonpos(float x)
{
    uint32_t u = f2u(x);
    /* negative below -87 (-inf and negative NaNs included: larger bit patterns), or a positive
     * NaN */
    uint32_t zero = 0u - (uint32_t)((u > 0xC2AE0000u) | (u - 0x7F800001u < 0x007FFFFFu));
    float t = u2f((u & ~zero) | (0xC2AE0000u & zero)); /* in [-87, 0] */
    /* n = round(t / ln 2), by the 1.5 * 2^23 trick (no SSE4.1 rounding needed) */
    float n = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = t - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    float e = p * u2f((uint32_t)((int32_t)n + 127) << 23); /* n in [-126, 0] */
    return u2f(f2u(e) & ~zero);
}

/* p = softmax(logit) over the candidates: -inf gives 0, never NaN. False when every logit is
 * -inf (all p are then 0). */
static bool softmax(bonsai_candidates *c)
{
    bonsai_token_data *d = c->data;
    size_t n = c->size;
    float max = -INFINITY; /* not d[0] when sorted: the exp needs x <= 0 whatever a stage did */
    for (size_t i = 0; i < n; i++) max = d[i].logit > max ? d[i].logit : max;
    if (max == -INFINITY) {
        for (size_t i = 0; i < n; i++) d[i].p = 0.0f;
        return false;
    }
    if (max == INFINITY) { /* share the mass among the +inf logits */
        size_t n_inf = 0;
        for (size_t i = 0; i < n; i++) n_inf += d[i].logit == INFINITY;
        for (size_t i = 0; i < n; i++) d[i].p = d[i].logit == INFINITY ? 1.0f / (float)n_inf : 0;
        return true;
    }
    double sum = 0; /* >= 1: the max contributes exp(0) */
    for (size_t i = 0; i < n; i++) {
        float e = exp_nonpos(d[i].logit - max);
        d[i].p = e;
        sum += e;
    }
    float inv = (float)(1.0 / sum);
    for (size_t i = 0; i < n; i++) d[i].p *= inv;
    return true;
}

/* Index of the highest logit, ties to the lowest id; n > 0. */
static size_t argmax(const bonsai_candidates *c)
{
    const bonsai_token_data *d = c->data;
    size_t best = 0;
    if (c->sorted) { /* ties are at the front */
        for (size_t i = 1; i < c->size && d[i].logit == d[0].logit; i++)
            if (d[i].id < d[best].id) best = i;
        return best;
    }
    for (size_t i = 1; i < c->size; i++)
        if (before(&d[i], &d[best])) best = i;
    return best;
}

/* ------------------------------------------------------------------------------------------ */
/* A small open-addressing map from token id (>= 0) to a count and a value, for the penalties and
 * the logit bias: memory and time proportional to the tokens in it, not to the vocabulary. */

typedef struct tok_entry {
    int32_t key; /* -1: empty */
    int32_t n;
    float v;
} tok_entry;

typedef struct tok_map {
    tok_entry *e;
    size_t cap; /* 0 or a power of two, always more than twice len */
    size_t len;
} tok_map;

static inline size_t tok_hash(int32_t key, size_t mask)
{
    uint32_t h = (uint32_t)key * 0x9E3779B1u;
    return (size_t)(h ^ (h >> 15)) & mask;
}

static size_t map_slot(const tok_map *m, int32_t key)
{
    size_t mask = m->cap - 1, i = tok_hash(key, mask);
    while (m->e[i].key != -1 && m->e[i].key != key) i = (i + 1) & mask;
    return i;
}

static tok_entry *map_find(const tok_map *m, int32_t key)
{
    if (!m->cap || key < 0) return NULL;
    size_t i = map_slot(m, key);
    return m->e[i].key == key ? &m->e[i] : NULL;
}

/* Room for `extra` more keys without failing. */
static bonsai_status map_reserve(tok_map *m, size_t extra)
{
    size_t need = (m->len + extra) * 2 + 1;
    if (need <= m->cap) return BONSAI_OK;
    size_t cap = 16;
    while (cap < need) cap *= 2;
    tok_entry *e = bsi_malloc(cap * sizeof *e);
    if (!e) return bsi_fail(BONSAI_ERR_NO_MEMORY, "sampler: out of memory");
    for (size_t i = 0; i < cap; i++) e[i].key = -1;
    tok_map grown = {e, cap, 0};
    for (size_t i = 0; i < m->cap; i++) {
        if (m->e[i].key < 0) continue;
        grown.e[map_slot(&grown, m->e[i].key)] = m->e[i];
        grown.len++;
    }
    free(m->e);
    *m = grown;
    return BONSAI_OK;
}

/* Finds or adds `key` (after map_reserve). */
static tok_entry *map_insert(tok_map *m, int32_t key)
{
    size_t i = map_slot(m, key);
    if (m->e[i].key != key) {
        m->e[i] = (tok_entry){key, 0, 0.0f};
        m->len++;
    }
    return &m->e[i];
}

/* Removes the entry at slot `i` (linear probing with backward shift: no tombstones). */
static void map_erase(tok_map *m, size_t i)
{
    size_t mask = m->cap - 1, j = i;
    m->e[i].key = -1;
    for (;;) {
        j = (j + 1) & mask;
        if (m->e[j].key == -1) break;
        size_t home = tok_hash(m->e[j].key, mask);
        /* the entry at j may stay unless its home lies cyclically outside (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (stays) continue;
        m->e[i] = m->e[j];
        m->e[j].key = -1;
        i = j;
    }
    m->len--;
}

static void map_clear(tok_map *m)
{
    for (size_t i = 0; i < m->cap; i++) m->e[i].key = -1;
    m->len = 0;
}

/* Calls edit() on every candidate whose id is in the map (and < n_vocab). Candidates still in id
 * order (the usual first stages) are found directly; otherwise every candidate is looked up. */
static void map_apply(const tok_map *m, bonsai_candidates *c, uint32_t n_vocab,
                      void (*edit)(bonsai_token_data *, const tok_entry *, const void *),
                      const void *ctx)
{
    if (!m->len) return;
    bonsai_token_data *d = c->data;
    bool direct = true;
    for (size_t i = 0; i < m->cap && direct; i++) {
        int32_t k = m->e[i].key;
        if (k >= 0 && (uint32_t)k < n_vocab && !((size_t)k < c->size && d[k].id == k))
            direct = false;
    }
    if (direct) {
        for (size_t i = 0; i < m->cap; i++) {
            int32_t k = m->e[i].key;
            if (k >= 0 && (uint32_t)k < n_vocab) edit(&d[k], &m->e[i], ctx);
        }
    } else {
        for (size_t i = 0; i < c->size; i++) {
            const tok_entry *e = map_find(m, d[i].id);
            if (e) edit(&d[i], e, ctx);
        }
    }
    c->sorted = false;
}

/* ------------------------------------------------------------------------------------------ */
/* The stages */

static bonsai_status greedy_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    if (!c->size) return no_token("greedy");
    size_t best = argmax(c);
    if (c->data[best].logit == -INFINITY) return no_token("greedy");
    c->selected = (int32_t)best;
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt greedy_vt = {.name = "greedy", .apply = greedy_apply};

/* ctx: the sampler, whose generator it draws from. */
static bonsai_status dist_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    bonsai_sampler *s = ctx;
    if (!softmax(c)) return no_token("dist");
    const bonsai_token_data *d = c->data;
    double total = 0;
    for (size_t i = 0; i < c->size; i++) total += d[i].p;
    double r = rng_double(s->rng) * total, cum = 0;
    size_t pick = SIZE_MAX;
    for (size_t i = 0; i < c->size; i++) {
        if (d[i].p <= 0) continue;
        pick = i;
        cum += d[i].p;
        if (cum > r) break;
    }
    c->selected = (int32_t)pick; /* the last positive one if rounding left r uncovered */
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt dist_vt = {.name = "dist", .apply = dist_apply};

typedef struct temp_stage {
    float t;
} temp_stage;

static bonsai_status temp_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    float t = ((temp_stage *)ctx)->t;
    if (!c->size) return BONSAI_OK;
    if (t <= 0) {
        size_t best = argmax(c);
        swap_td(&c->data[0], &c->data[best]);
        c->size = 1;
        c->sorted = true;
        if (c->selected >= 0) c->selected = c->selected == (int32_t)best ? 0 : -1;
        return BONSAI_OK;
    }
    if (t != 1.0f)
        for (size_t i = 0; i < c->size; i++) c->data[i].logit /= t; /* keeps the order */
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt temp_vt = {
    .name = "temperature", .apply = temp_apply, .free = free};

typedef struct top_k_stage {
    size_t k;
} top_k_stage;

static bonsai_status top_k_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    size_t k = ((top_k_stage *)ctx)->k;
    if (k >= c->size) return BONSAI_OK;
    if (!c->sorted) partial_sort(c->data, c->size, k);
    c->size = k;
    c->sorted = true;
    c->selected = -1; /* a selection before a reordering stage no longer holds */
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt top_k_vt = {.name = "top-k", .apply = top_k_apply, .free = free};

typedef struct top_p_stage {
    float p;
    size_t min_keep;
} top_p_stage;

/* For top-p over many candidates: moves the smallest set of most likely candidates (in `before`
 * order) whose probabilities sum to >= `need` to d[0..m), in no particular order, and returns m
 * (n if even all of them fall short). Quickselect weighted by probability, O(n) expected; after
 * too many rounds it finishes with a heap sort. */
static size_t top_mass(bonsai_token_data *d, size_t n, double need)
{
    size_t lo = 0, hi = n;
    for (int rounds = 0; hi - lo > 64 && rounds < 64; rounds++) {
        /* median of three as the pivot, moved to hi - 1 */
        size_t a = lo, b = lo + (hi - lo) / 2, z = hi - 1;
        if (before(&d[b], &d[a])) swap_td(&d[a], &d[b]);
        if (before(&d[z], &d[b])) swap_td(&d[b], &d[z]);
        if (before(&d[b], &d[a])) swap_td(&d[a], &d[b]);
        swap_td(&d[b], &d[z]);
        /* [lo, q): before the pivot; their mass */
        size_t q = lo;
        double mass = 0;
        for (size_t i = lo; i < z; i++) {
            if (before(&d[i], &d[z])) {
                mass += d[i].p;
                swap_td(&d[i], &d[q++]);
            }
        }
        swap_td(&d[q], &d[z]);
        if (mass >= need) {
            hi = q;
        } else if (mass + d[q].p >= need) {
            return q + 1;
        } else {
            need -= mass + d[q].p;
            lo = q + 1;
        }
    }
    partial_sort(d + lo, hi - lo, hi - lo);
    double cum = 0;
    for (size_t i = lo; i < hi; i++) {
        cum += d[i].p;
        if (cum >= need) return i + 1;
    }
    return hi;
}

static bonsai_status top_p_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    const top_p_stage *tp = ctx;
    size_t n = c->size;
    if (!n) return BONSAI_OK;
    softmax(c);
    c->selected = -1;
    /* The 256 most likely first (they usually hold the cut), sorted; if the cut lies further, a
     * selection on the rest rather than a sort of everything. */
    size_t k = n;
    if (!c->sorted) {
        k = tp->min_keep > 256 ? tp->min_keep : 256;
        if (k > n) k = n;
        partial_sort(c->data, n, k);
    }
    double cum = 0;
    for (size_t i = 0; i < k; i++) {
        cum += c->data[i].p;
        if (cum >= tp->p && i + 1 >= tp->min_keep) {
            c->size = i + 1;
            c->sorted = true;
            return BONSAI_OK;
        }
    }
    if (k < n) { /* k >= min_keep: the cut lies beyond k */
        c->size = k + top_mass(c->data + k, n - k, tp->p - cum);
        c->sorted = false; /* what lies beyond k is unordered */
        return BONSAI_OK;
    }
    c->sorted = true; /* everything kept */
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt top_p_vt = {.name = "top-p", .apply = top_p_apply, .free = free};

typedef struct min_p_stage {
    float log_p;
    size_t min_keep;
} min_p_stage;

static bonsai_status min_p_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    const min_p_stage *mp = ctx;
    bonsai_token_data *d = c->data;
    size_t n = c->size;
    if (!n) return BONSAI_OK;
    float max = d[argmax(c)].logit;
    if (max != -INFINITY) {
        /* p_i >= p * p_max  <=>  logit_i - logit_max >= log(p) */
        float thr = max + mp->log_p;
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) kept += d[i].logit >= thr;
        if (kept >= mp->min_keep) {
            size_t o = 0;
            for (size_t i = 0; i < n; i++)
                if (d[i].logit >= thr) d[o++] = d[i]; /* stable: a sorted list stays sorted */
            c->size = kept;
        } else {
            size_t k = mp->min_keep < n ? mp->min_keep : n;
            if (!c->sorted) partial_sort(d, n, k);
            c->size = k;
            c->sorted = true;
        }
        c->selected = -1;
    }
    softmax(c);
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt min_p_vt = {.name = "min-p", .apply = min_p_apply, .free = free};

typedef struct penalties_stage {
    const bonsai_sampler *owner;
    int32_t last_n; /* > 0, or -1 */
    float repeat, frequency, presence;
    tok_map counts; /* token -> times seen in the window (n) */
    int32_t *ring;  /* the window when last_n > 0, grown up to last_n */
    size_t ring_cap, ring_n, ring_head;
} penalties_stage;

static void penalize(bonsai_token_data *d, const tok_entry *e, const void *ctx)
{
    const penalties_stage *ps = ctx;
    float l = d->logit;
    if (ps->repeat != 1.0f) l = l > 0 ? l / ps->repeat : l * ps->repeat;
    l -= (float)e->n * ps->frequency + ps->presence;
    d->logit = l == l ? l : -INFINITY;
}

static bonsai_status penalties_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    penalties_stage *ps = ctx;
    map_apply(&ps->counts, c, ps->owner->n_vocab, penalize, ps);
    return BONSAI_OK;
}

static bonsai_status penalties_accept(void *ctx, int32_t token)
{
    penalties_stage *ps = ctx;
    /* allocate first, so that a failure changes nothing */
    bonsai_status st = map_reserve(&ps->counts, 1);
    if (!st && ps->last_n > 0 && ps->ring_n < (size_t)ps->last_n)
        st = grow((void **)&ps->ring, &ps->ring_cap, ps->ring_n + 1, sizeof *ps->ring, 16);
    if (st) return st;
    map_insert(&ps->counts, token)->n++;
    if (ps->last_n > 0) {
        if (ps->ring_n < (size_t)ps->last_n) {
            ps->ring[ps->ring_n++] = token;
        } else {
            int32_t old = ps->ring[ps->ring_head];
            ps->ring[ps->ring_head] = token;
            ps->ring_head = (ps->ring_head + 1) % (size_t)ps->last_n;
            size_t i = map_slot(&ps->counts, old);
            if (--ps->counts.e[i].n == 0) map_erase(&ps->counts, i);
        }
    }
    return BONSAI_OK;
}

static void penalties_reset(void *ctx)
{
    penalties_stage *ps = ctx;
    map_clear(&ps->counts);
    ps->ring_n = ps->ring_head = 0;
}

static void penalties_free(void *ctx)
{
    penalties_stage *ps = ctx;
    free(ps->counts.e);
    free(ps->ring);
    free(ps);
}

static const bsi_sampler_stage_vt penalties_vt = {.name = "penalties",
                                                  .apply = penalties_apply,
                                                  .accept = penalties_accept,
                                                  .reset = penalties_reset,
                                                  .free = penalties_free};

typedef struct bias_stage {
    const bonsai_sampler *owner;
    tok_map bias; /* token -> sum of its biases (v) */
} bias_stage;

static void add_bias(bonsai_token_data *d, const tok_entry *e, const void *ctx)
{
    d->logit = e->v == -INFINITY ? -INFINITY : d->logit + e->v;
}

static bonsai_status bias_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    bias_stage *bs = ctx;
    map_apply(&bs->bias, c, bs->owner->n_vocab, add_bias, NULL);
    return BONSAI_OK;
}

static void bias_free(void *ctx)
{
    bias_stage *bs = ctx;
    free(bs->bias.e);
    free(bs);
}

static const bsi_sampler_stage_vt bias_vt = {
    .name = "logit bias", .apply = bias_apply, .free = bias_free};

typedef struct custom_stage {
    bonsai_sampler_fn fn;
    void *user_data;
} custom_stage;

static bonsai_status custom_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    const custom_stage *cs = ctx;
    bonsai_token_data *data = c->data;
    size_t size = c->size;
    if (!cs->fn(c, h, nh, cs->user_data))
        return bsi_fail(BONSAI_ERR_ABORTED, "sampler: the custom stage aborted sampling");
    if (c->data != data || c->size > size || c->selected < -1 ||
        (c->selected >= 0 && (size_t)c->selected >= c->size))
        return bsi_fail(BONSAI_ERR_INVALID_STATE,
                        "sampler: a custom stage replaced or grew the candidates, or selected "
                        "outside them");
    for (size_t i = 0; i < c->size; i++)
        if (data[i].logit != data[i].logit) data[i].logit = -INFINITY;
    return BONSAI_OK;
}

static const bsi_sampler_stage_vt custom_vt = {
    .name = "custom", .apply = custom_apply, .free = free};

/* ------------------------------------------------------------------------------------------ */
/* The chain */

bonsai_status bsi_sampler_add_stage(bonsai_sampler *s, const bsi_sampler_stage_vt *vt, void *ctx)
{
    bonsai_status st = BONSAI_OK;
    if (!s || !vt || !vt->apply)
        st = bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "sampler: %s",
                      !s ? "sampler is NULL" : "stage has no apply function");
    if (!st) st = grow((void **)&s->stages, &s->cap_stages, s->n_stages + 1, sizeof *s->stages, 8);
    if (st) {
        if (vt && vt->free) vt->free(ctx);
        return st;
    }
    s->stages[s->n_stages++] = (bsi_stage){vt, ctx};
    if (vt->check) s->n_checks++;
    return BONSAI_OK;
}

bonsai_status bonsai_sampler_create(uint64_t seed, bonsai_sampler **out)
{
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_sampler_create: out is NULL");
    *out = NULL;
    bonsai_sampler *s = bsi_calloc(1, sizeof *s);
    if (!s) return bsi_fail(BONSAI_ERR_NO_MEMORY, "bonsai_sampler_create: out of memory");
    s->magic = BSI_MAGIC_SAMPLER;
    s->seed = seed;
    rng_seed(s);
    *out = s;
    return BONSAI_OK;
}

void bonsai_sampler_free(bonsai_sampler *s)
{
    if (!s || !bsi_handle_alive(&s->magic, BSI_MAGIC_SAMPLER, "bonsai_sampler_free")) return;
    for (size_t i = 0; i < s->n_stages; i++)
        if (s->stages[i].vt->free) s->stages[i].vt->free(s->stages[i].ctx);
    free(s->stages);
    free(s->cand);
    free(s->hist);
    bsi_handle_retire(s, &s->magic);
}

bool bsi_sampler_alive(const bonsai_sampler *s, const char *fn)
{
    return bsi_handle_alive(&s->magic, BSI_MAGIC_SAMPLER, fn);
}

#define NEED_SAMPLER(fn)                                                                           \
    do {                                                                                           \
        if (!s) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, fn ": sampler is NULL");              \
        if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SAMPLER, fn))                                   \
            return BONSAI_ERR_INVALID_ARGUMENT;                                                    \
    } while (0)

/* Adds a built-in stage whose ctx is a malloc'ed copy of `size` bytes at `init`. */
static bonsai_status add_copy(bonsai_sampler *s, const bsi_sampler_stage_vt *vt, const void *init,
                              size_t size)
{
    void *ctx = bsi_malloc(size);
    if (!ctx) return bsi_fail(BONSAI_ERR_NO_MEMORY, "sampler: out of memory");
    memcpy(ctx, init, size);
    return bsi_sampler_add_stage(s, vt, ctx);
}

bonsai_status bonsai_sampler_add_greedy(bonsai_sampler *s)
{
    NEED_SAMPLER("bonsai_sampler_add_greedy");
    return bsi_sampler_add_stage(s, &greedy_vt, NULL);
}

bonsai_status bonsai_sampler_add_dist(bonsai_sampler *s)
{
    NEED_SAMPLER("bonsai_sampler_add_dist");
    return bsi_sampler_add_stage(s, &dist_vt, s);
}

/* Argument checks shared by the add functions and bonsai_sampler_create_default (`what` names the
 * argument in the message). */
static bonsai_status check_temperature(const char *what, float t)
{
    if (isnan(t) || isinf(t))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s is %g; it must be a finite number", what,
                        (double)t);
    return BONSAI_OK;
}

/* (0, 1] keeps a share of the mass; larger values keep everything (as the header says) */
static bonsai_status check_top_p(const char *what, float p)
{
    if (!(p > 0) || isinf(p))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s is %g; it must be above 0 (1 or more: off)", what, (double)p);
    return BONSAI_OK;
}

static bonsai_status check_min_p(const char *what, float p)
{
    if (!(p <= 1)) /* also NaN; p <= 0 turns min-p off */
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s is %g; it must be at most 1 (<= 0: off)",
                        what, (double)p);
    return BONSAI_OK;
}

static bonsai_status check_penalties(const char *fn, int32_t last_n, float repeat, float frequency,
                                     float presence)
{
    if (last_n < -1)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s: penalty last_n is %d; it must be >= 0, or -1 for the whole history",
                        fn, last_n);
    if (!(repeat > 0) || isinf(repeat))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s: repeat penalty is %g; it must be a positive number (1: off)", fn,
                        (double)repeat);
    if (!isfinite(frequency) || !isfinite(presence))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s: frequency (%g) and presence (%g) penalties must be finite", fn,
                        (double)frequency, (double)presence);
    return BONSAI_OK;
}

static bool penalties_enabled(int32_t last_n, float repeat, float frequency, float presence)
{
    return last_n != 0 && (repeat != 1.0f || frequency != 0.0f || presence != 0.0f);
}

bonsai_status bonsai_sampler_add_temperature(bonsai_sampler *s, float t)
{
    NEED_SAMPLER("bonsai_sampler_add_temperature");
    bonsai_status st = check_temperature("bonsai_sampler_add_temperature: t", t);
    if (st) return st;
    temp_stage ts = {t};
    return add_copy(s, &temp_vt, &ts, sizeof ts);
}

bonsai_status bonsai_sampler_add_top_k(bonsai_sampler *s, int32_t k)
{
    NEED_SAMPLER("bonsai_sampler_add_top_k");
    if (k <= 0) return BONSAI_OK; /* no-op */
    top_k_stage ts = {(size_t)k};
    return add_copy(s, &top_k_vt, &ts, sizeof ts);
}

bonsai_status bonsai_sampler_add_top_p(bonsai_sampler *s, float p, size_t min_keep)
{
    NEED_SAMPLER("bonsai_sampler_add_top_p");
    bonsai_status st = check_top_p("bonsai_sampler_add_top_p: p", p);
    if (st || p >= 1) return st;
    top_p_stage ts = {p, min_keep};
    return add_copy(s, &top_p_vt, &ts, sizeof ts);
}

bonsai_status bonsai_sampler_add_min_p(bonsai_sampler *s, float p, size_t min_keep)
{
    NEED_SAMPLER("bonsai_sampler_add_min_p");
    bonsai_status st = check_min_p("bonsai_sampler_add_min_p: p", p);
    if (st || p <= 0) return st;
    min_p_stage ms = {logf(p), min_keep};
    return add_copy(s, &min_p_vt, &ms, sizeof ms);
}

bonsai_status bonsai_sampler_add_penalties(bonsai_sampler *s, int32_t last_n, float repeat,
                                           float frequency, float presence)
{
    static const char fn[] = "bonsai_sampler_add_penalties";
    NEED_SAMPLER("bonsai_sampler_add_penalties");
    bonsai_status st = check_penalties(fn, last_n, repeat, frequency, presence);
    if (st || !penalties_enabled(last_n, repeat, frequency, presence)) return st;
    penalties_stage *ps = bsi_calloc(1, sizeof *ps);
    if (!ps) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", fn);
    *ps = (penalties_stage){.owner = s,
                            .last_n = last_n,
                            .repeat = repeat,
                            .frequency = frequency,
                            .presence = presence};
    /* the window starts with the tokens already accepted */
    size_t from = last_n < 0 || s->n_hist <= (size_t)last_n ? 0 : s->n_hist - (size_t)last_n;
    for (size_t i = from; i < s->n_hist && !st; i++) st = penalties_accept(ps, s->hist[i]);
    if (st) {
        penalties_free(ps);
        return st;
    }
    return bsi_sampler_add_stage(s, &penalties_vt, ps);
}

bonsai_status bonsai_sampler_add_logit_bias(bonsai_sampler *s, const bonsai_logit_bias *bias,
                                            size_t n)
{
    static const char fn[] = "bonsai_sampler_add_logit_bias";
    NEED_SAMPLER("bonsai_sampler_add_logit_bias");
    if (!bias && n) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: bias is NULL", fn);
    for (size_t i = 0; i < n; i++) {
        if (bias[i].token < 0)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: bias[%zu].token is %d (negative)", fn,
                            i, bias[i].token);
        if (isnan(bias[i].bias) || bias[i].bias == INFINITY)
            return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                            "%s: bias[%zu].bias is %g; it must be finite or -INFINITY", fn, i,
                            (double)bias[i].bias);
    }
    bias_stage *bs = bsi_calloc(1, sizeof *bs);
    if (!bs) return bsi_fail(BONSAI_ERR_NO_MEMORY, "%s: out of memory", fn);
    bs->owner = s;
    bonsai_status st = map_reserve(&bs->bias, n);
    if (st) {
        bias_free(bs);
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        tok_entry *e = map_insert(&bs->bias, bias[i].token);
        e->v = e->v == -INFINITY || bias[i].bias == -INFINITY ? -INFINITY : e->v + bias[i].bias;
    }
    return bsi_sampler_add_stage(s, &bias_vt, bs);
}

bonsai_status bonsai_sampler_add_custom(bonsai_sampler *s, bonsai_sampler_fn fn, void *user_data)
{
    NEED_SAMPLER("bonsai_sampler_add_custom");
    if (!fn) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_sampler_add_custom: fn is NULL");
    custom_stage cs = {fn, user_data};
    return add_copy(s, &custom_vt, &cs, sizeof cs);
}

void bonsai_sampler_params_init(bonsai_sampler_params *params)
{
    if (!params) return;
    memset(params, 0, sizeof *params);
    params->struct_size = sizeof *params;
    params->seed = 0;
    params->temperature = 0.8f;
    params->top_k = 40;
    params->top_p = 0.95f;
    params->min_p = 0.05f;
    params->penalty_last_n = 64;
    params->repeat_penalty = 1.0f;
    params->frequency_penalty = 0.0f;
    params->presence_penalty = 0.0f;
}

bonsai_status bonsai_sampler_create_default(const bonsai_sampler_params *params,
                                            bonsai_sampler **out)
{
    static const char fn[] = "bonsai_sampler_create_default";
    if (!out) return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    *out = NULL;
    bonsai_sampler_params defaults;
    bonsai_sampler_params_init(&defaults);
    if (!params) params = &defaults;
    if (!BSI_STRUCT_SIZE_OK(params, sizeof(bonsai_sampler_params)))
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT,
                        "%s: params->struct_size is %u; use bonsai_sampler_params_init()", fn,
                        params->struct_size);
    /* every setting is checked, even those the chain will not use */
    bonsai_status st =
        check_temperature("bonsai_sampler_create_default: temperature", params->temperature);
    if (!st) st = check_top_p("bonsai_sampler_create_default: top_p", params->top_p);
    if (!st) st = check_min_p("bonsai_sampler_create_default: min_p", params->min_p);
    if (!st)
        st = check_penalties(fn, params->penalty_last_n, params->repeat_penalty,
                             params->frequency_penalty, params->presence_penalty);
    if (st) return st;

    bonsai_sampler *s = NULL;
    st = bonsai_sampler_create(params->seed, &s);
    if (!st)
        st = bonsai_sampler_add_penalties(s, params->penalty_last_n, params->repeat_penalty,
                                          params->frequency_penalty, params->presence_penalty);
    if (params->temperature > 0) {
        if (!st) st = bonsai_sampler_add_top_k(s, params->top_k);
        if (!st) st = bonsai_sampler_add_top_p(s, params->top_p, 1);
        if (!st) st = bonsai_sampler_add_min_p(s, params->min_p, 1);
        if (!st) st = bonsai_sampler_add_temperature(s, params->temperature);
        if (!st) st = bonsai_sampler_add_dist(s);
    } else {
        if (!st) st = bonsai_sampler_add_greedy(s);
    }
    if (st) {
        bonsai_sampler_free(s);
        return st;
    }
    *out = s;
    return BONSAI_OK;
}

/* Loops over the whole vocabulary keep LANES independent maxima or sums, which the compiler turns
 * into vector code (a plain float reduction cannot be vectorized without reassociation). */
#define LANES 16

/* A signed integer with the order of the float (NaN as -inf, -0 as +0): integer selects vectorize
 * where float ones do not. key_float() inverts it. */
static inline int32_t order_key(float x)
{
    uint32_t u = f2u(x);
    uint32_t nan = 0u - (uint32_t)((u & 0x7FFFFFFFu) > 0x7F800000u);
    u = (u & ~nan) | (0xFF800000u & nan);
    u &= 0u - (uint32_t)(u != 0x80000000u); /* -0 as +0: they tie */
    return (int32_t)(u ^ ((0u - (u >> 31)) >> 1));
}

static inline float key_float(int32_t k)
{
    uint32_t u = (uint32_t)k;
    return u2f(u ^ ((0u - (u >> 31)) >> 1));
}

/* The highest logit (NaN read as -inf) and its lowest index, in one pass. */
static inline vocab_max vocab_max_impl(const float *logits, uint32_t n)
{
    int32_t key[LANES];
    uint32_t idx[LANES];
    for (int j = 0; j < LANES; j++) key[j] = order_key(-INFINITY), idx[j] = (uint32_t)j;
    uint32_t i = 0;
    for (; n - i >= LANES; i += LANES) {
        for (int j = 0; j < LANES; j++) {
            int32_t k = order_key(logits[i + j]);
            bool gt = k > key[j];
            key[j] = gt ? k : key[j];
            idx[j] = gt ? i + (uint32_t)j : idx[j];
        }
    }
    int32_t best = order_key(-INFINITY);
    uint32_t best_idx = 0;
    for (int j = 0; j < LANES; j++) {
        if (n >= LANES && (key[j] > best || (key[j] == best && idx[j] < best_idx))) {
            best = key[j];
            best_idx = idx[j];
        }
    }
    for (; i < n; i++) {
        if (order_key(logits[i]) > best) {
            best = order_key(logits[i]);
            best_idx = i;
        }
    }
    return (vocab_max){key_float(best), best_idx};
}

/* sum exp(logits[i] - max) (NaN as -inf) for max = the highest logit, in lanes. */
static inline double sum_exp_impl(const float *logits, uint32_t n, float max)
{
    double sum = 0;
    uint32_t i = 0;
    while (n - i >= LANES) { /* float lanes over blocks of 1024, then into the double */
        float lane[LANES] = {0};
        uint32_t end = n - i > 1024 ? i + 1024 : n;
        for (; end - i >= LANES; i += LANES)
            for (int j = 0; j < LANES; j++) lane[j] += exp_nonpos(logits[i + j] - max);
        for (int j = 0; j < LANES; j++) sum += lane[j];
    }
    for (; i < n; i++) sum += exp_nonpos(logits[i] - max);
    return sum;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same code for AVX2, chosen at run time: about twice as fast over 151k logits, and
 * bit-identical (no FMA contraction under ISO C, same lanes). */
#define HAVE_AVX2_CLONES 1
__attribute__((target("avx2"))) static vocab_max vocab_max_avx2(const float *logits, uint32_t n)
{
    return vocab_max_impl(logits, n);
}

__attribute__((target("avx2"))) static double sum_exp_avx2(const float *logits, uint32_t n,
                                                           float max)
{
    return sum_exp_impl(logits, n, max);
}
#endif

static vocab_max vocab_max_compute(const float *logits, uint32_t n)
{
#ifdef HAVE_AVX2_CLONES
    if (__builtin_cpu_supports("avx2")) return vocab_max_avx2(logits, n);
#endif
    return vocab_max_impl(logits, n);
}

/* The highest logit of the call in progress, computed once. */
static vocab_max vocab_max_of(bonsai_sampler *s, const float *logits)
{
    if (!s->have_max) s->vmax = vocab_max_compute(logits, s->n_vocab);
    s->have_max = true;
    return s->vmax;
}

static double sum_exp(const float *logits, uint32_t n, float max)
{
#ifdef HAVE_AVX2_CLONES
    if (__builtin_cpu_supports("avx2")) return sum_exp_avx2(logits, n, max);
#endif
    return sum_exp_impl(logits, n, max);
}

/* The k best logits (NaN read as -inf), sorted, into d[0..k), for a chain that starts with top-k:
 * reads the logits once and writes k candidates instead of n_vocab. Same result as filling all
 * candidates and applying top-k (ties to the lowest id); 1 <= k < n. */
static void top_k_logits(const float *logits, uint32_t n, size_t k, bonsai_token_data *d)
{
    for (uint32_t i = 0; i < k; i++) {
        float l = logits[i];
        d[i] = (bonsai_token_data){(int32_t)i, l == l ? l : -INFINITY, 0.0f};
    }
    for (size_t i = k / 2; i-- > 0;) sift_down(d, k, i);
    /* d[0] is the worst kept; a later token replaces it only with a strictly higher logit (a tie
     * loses to the lower id). Blocks with no such logit are skipped by a vectorized count. */
    float thr = d[0].logit;
    uint32_t i = (uint32_t)k;
    enum { BLOCK = 64 };
    for (; i < n; i += BLOCK) {
        uint32_t end = n - i < BLOCK ? n : i + BLOCK;
        if (end - i == BLOCK) {
            uint32_t above = 0;
            for (int j = 0; j < BLOCK; j++) above += logits[i + j] > thr;
            if (!above) continue;
        }
        for (uint32_t j = i; j < end; j++) {
            if (logits[j] > thr) {
                d[0] = (bonsai_token_data){(int32_t)j, logits[j], 0.0f};
                sift_down(d, k, 0);
                thr = d[0].logit;
            }
        }
    }
    for (size_t m = k; m > 1; m--) {
        swap_td(&d[0], &d[m - 1]);
        sift_down(d, m - 1, 0);
    }
}

/* The map of a penalties or logit-bias stage (they change only the logits of the tokens in it),
 * else NULL. */
static const tok_map *sparse_map(const bsi_stage *st)
{
    if (st->vt == &penalties_vt) return &((const penalties_stage *)st->ctx)->counts;
    if (st->vt == &bias_vt) return &((const bias_stage *)st->ctx)->bias;
    return NULL;
}

/* The first stage from i on that runs in this pass. */
static size_t next_run(const bonsai_sampler *s, size_t i, bool skip_checks)
{
    while (i < s->n_stages && skip_checks && s->stages[i].vt->check) i++;
    return i;
}

/* Whether a sparse stage in [from, to) has `id` in its map. */
static bool in_sparse_maps(const bonsai_sampler *s, size_t from, size_t to, int32_t id)
{
    for (size_t i = from; i < to; i++) {
        const tok_map *m = sparse_map(&s->stages[i]);
        if (m && map_find(m, id)) return true;
    }
    return false;
}

/* Fills the candidates from the logits (NaN read as -inf) and runs the chain, without the
 * constraints when `skip_checks`.
 *
 * Shortcuts that give the same result without writing n_vocab candidates: a pass that is only
 * greedy takes the highest logit. A pass that starts with penalties / logit-bias stages (they
 * change the logits of a set S of m tokens at most) followed by top-k, or by a final greedy
 * (top-1), starts from the k + m best raw logits: the k best after the changes are among them and
 * S. Those minus S, plus S, go through the stages as usual. */
static bonsai_status run_chain(bonsai_sampler *s, const float *logits, uint32_t n_vocab,
                               bool skip_checks, bonsai_candidates *c)
{
    bonsai_token_data *d = s->cand;
    size_t first = next_run(s, 0, skip_checks), after = first, m = 0;
    while (after < s->n_stages && sparse_map(&s->stages[after])) {
        m += sparse_map(&s->stages[after])->len;
        after = next_run(s, after + 1, skip_checks);
    }
    bool last = after < s->n_stages && next_run(s, after + 1, skip_checks) == s->n_stages;
    const bsi_stage *cut = after < s->n_stages ? &s->stages[after] : NULL;
    size_t k = SIZE_MAX;
    if (cut && cut->vt == &top_k_vt) k = ((const top_k_stage *)cut->ctx)->k;
    if (cut && cut->vt == &greedy_vt && last) k = 1;

    if (cut && cut->vt == &greedy_vt && last && first == after) {
        vocab_max best = vocab_max_of(s, logits);
        if (best.max == -INFINITY) return no_token("greedy");
        d[0] = (bonsai_token_data){(int32_t)best.idx, best.max, 0.0f};
        *c = (bonsai_candidates){d, 1, true, 0};
        return BONSAI_OK;
    }
    size_t start = first;
    if (k < n_vocab && m < n_vocab - k) {
        size_t n = k + m;
        top_k_logits(logits, n_vocab, n, d);
        *c = (bonsai_candidates){d, n, true, -1};
        if (first == after) {
            start = after + 1; /* that was the top-k */
        } else if (m) {
            size_t r = 0;
            for (size_t i = 0; i < n; i++)
                if (!in_sparse_maps(s, first, after, d[i].id)) d[r++] = d[i];
            for (size_t i = first; i < after; i++) {
                const tok_map *map = sparse_map(&s->stages[i]);
                for (size_t j = 0; map && j < map->cap; j++) {
                    int32_t id = map->e[j].key;
                    if (id < 0 || (uint32_t)id >= n_vocab || in_sparse_maps(s, first, i, id))
                        continue;
                    float l = logits[id];
                    d[r++] = (bonsai_token_data){id, l == l ? l : -INFINITY, 0.0f};
                }
            }
            *c = (bonsai_candidates){d, r, false, -1};
        }
    } else {
        for (uint32_t i = 0; i < n_vocab; i++) {
            float l = logits[i];
            d[i] = (bonsai_token_data){(int32_t)i, l == l ? l : -INFINITY, 0.0f};
        }
        *c = (bonsai_candidates){d, n_vocab, false, -1};
    }
    for (size_t i = start; i < s->n_stages; i++) {
        const bsi_stage *st = &s->stages[i];
        if (skip_checks && st->vt->check) continue;
        bonsai_status r = st->vt->apply(st->ctx, c, s->hist, s->n_hist);
        if (r) return r;
    }
    return BONSAI_OK;
}

/* The token the chain selected, or INVALID_STATE. */
static bonsai_status selection(const bonsai_candidates *c, uint32_t n_vocab, int32_t *token)
{
    if (c->selected < 0)
        return bsi_fail(BONSAI_ERR_INVALID_STATE,
                        "sampler: the chain selected no token (end it with greedy or dist)");
    if ((size_t)c->selected >= c->size || c->data[c->selected].id < 0 ||
        (uint32_t)c->data[c->selected].id >= n_vocab)
        return bsi_fail(BONSAI_ERR_INVALID_STATE,
                        "sampler: the chain selected an invalid candidate");
    const bonsai_token_data *t = &c->data[c->selected];
    if (!(t->logit > -INFINITY))
        return bsi_fail(BONSAI_ERR_INVALID_STATE,
                        "sampler: no token can be chosen: the chain selected token %d, whose "
                        "logit is -inf",
                        t->id);
    *token = t->id;
    return BONSAI_OK;
}

/* log softmax(logits)[token], with NaN read as -inf: max-subtracted log-sum-exp. */
static float log_softmax_at(const float *logits, uint32_t n, int32_t token, float max)
{
    float lt = logits[token];
    if (!(lt > -INFINITY)) return -INFINITY;
    if (max == INFINITY) {
        if (lt != INFINITY) return -INFINITY;
        size_t n_inf = 0;
        for (uint32_t i = 0; i < n; i++) n_inf += logits[i] == INFINITY;
        return -logf((float)n_inf);
    }
    /* sum >= 1: the max contributes exp(0) */
    return (float)((double)(lt - max) - log(sum_exp(logits, n, max)));
}

/* Accepts `token`: constraints first (they may refuse), then the other stages, then the history. */
static bonsai_status accept_token(bonsai_sampler *s, int32_t token)
{
    bonsai_status st = grow((void **)&s->hist, &s->cap_hist, s->n_hist + 1, sizeof *s->hist, 256);
    for (int pass = 0; pass < 2 && !st; pass++) {
        for (size_t i = 0; i < s->n_stages && !st; i++) {
            const bsi_stage *stage = &s->stages[i];
            if (stage->vt->accept && (stage->vt->check != NULL) == (pass == 0))
                st = stage->vt->accept(stage->ctx, token);
        }
    }
    if (st) return st;
    s->hist[s->n_hist++] = token;
    return BONSAI_OK;
}

bonsai_status bonsai_sampler_sample(bonsai_sampler *s, const float *logits, uint32_t n_vocab,
                                    int32_t *token, float *logprob)
{
    static const char fn[] = "bonsai_sampler_sample";
    if (!s || !logits || !token)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn,
                        !s        ? "sampler"
                        : !logits ? "logits"
                                  : "token");
    if (!bsi_handle_alive(&s->magic, BSI_MAGIC_SAMPLER, fn)) return BONSAI_ERR_INVALID_ARGUMENT;
    if (n_vocab == 0 || n_vocab > INT32_MAX)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "%s: n_vocab is %u", fn, n_vocab);
    bonsai_status st = grow((void **)&s->cand, &s->cand_cap, n_vocab, sizeof *s->cand, n_vocab);
    if (st) return st;
    s->n_vocab = n_vocab;
    s->have_max = false;

    bonsai_candidates c;
    int32_t tok = -1;
    bool done = false;
    /* a call that fails leaves the generator as it found it, so a retry draws the same */
    uint64_t rng[4];
    memcpy(rng, s->rng, sizeof rng);
    if (s->n_checks) {
        /* fast path: the chain without the constraints, kept if they all accept its choice */
        st = run_chain(s, logits, n_vocab, true, &c);
        if (!st) st = selection(&c, n_vocab, &tok);
        if (st && st != BONSAI_ERR_INVALID_STATE) goto failed;
        done = !st;
        for (size_t i = 0; i < s->n_stages && done; i++)
            if (s->stages[i].vt->check) done = s->stages[i].vt->check(s->stages[i].ctx, tok);
        if (!done) memcpy(s->rng, rng, sizeof rng);
    }
    if (!done) {
        st = run_chain(s, logits, n_vocab, false, &c);
        if (!st) st = selection(&c, n_vocab, &tok);
        if (st) goto failed;
    }
    st = accept_token(s, tok);
    if (st) goto failed;
    *token = tok;
    if (logprob) *logprob = log_softmax_at(logits, n_vocab, tok, vocab_max_of(s, logits).max);
    return BONSAI_OK;
failed:
    memcpy(s->rng, rng, sizeof rng);
    return st;
}

bonsai_status bonsai_sampler_accept(bonsai_sampler *s, int32_t token)
{
    NEED_SAMPLER("bonsai_sampler_accept");
    if (token < 0)
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "bonsai_sampler_accept: token %d is negative",
                        token);
    return accept_token(s, token);
}

void bonsai_sampler_reset(bonsai_sampler *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_stages; i++)
        if (s->stages[i].vt->reset) s->stages[i].vt->reset(s->stages[i].ctx);
    s->n_hist = 0;
    rng_seed(s);
}

bool bonsai_sampler_done(const bonsai_sampler *s)
{
    if (!s) return false;
    for (size_t i = 0; i < s->n_stages; i++)
        if (s->stages[i].vt->done && s->stages[i].vt->done(s->stages[i].ctx)) return true;
    return false;
}

bool bsi_sampler_plan(const bonsai_sampler *s, bsi_sample_params *p)
{
    static const bsi_sampler_stage_vt *const order[] = {&top_k_vt, &top_p_vt, &min_p_vt, &temp_vt};
    memset(p, 0, sizeof *p);
    p->temp = 1.0f;
    if (!s || !s->n_stages) return false;
    size_t at = 0, last = s->n_stages - 1;
    for (size_t i = 0; i < last; i++) {
        const bsi_stage *st = &s->stages[i];
        while (at < sizeof order / sizeof order[0] && order[at] != st->vt) at++;
        if (at == sizeof order / sizeof order[0]) return false; /* another stage, or out of order */
        at++;
        if (st->vt == &top_k_vt) {
            size_t k = ((const top_k_stage *)st->ctx)->k;
            if (k > INT32_MAX) return false;
            p->top_k = (int32_t)k;
        } else if (st->vt == &top_p_vt) {
            const top_p_stage *tp = st->ctx;
            if (tp->min_keep > UINT32_MAX) return false;
            p->has_top_p = true;
            p->top_p = tp->p;
            p->top_p_keep = (uint32_t)tp->min_keep;
        } else if (st->vt == &min_p_vt) {
            const min_p_stage *mp = st->ctx;
            if (mp->min_keep > UINT32_MAX) return false;
            p->has_min_p = true;
            p->min_p_log = mp->log_p;
            p->min_p_keep = (uint32_t)mp->min_keep;
        } else {
            float t = ((const temp_stage *)st->ctx)->t;
            if (t <= 0)
                p->greedy = true;
            else
                p->temp = t;
        }
    }
    const bsi_sampler_stage_vt *end = s->stages[last].vt;
    if (end == &greedy_vt) {
        p->greedy = true;
    } else if (end == &dist_vt) {
        uint64_t rng[4];
        memcpy(rng, s->rng, sizeof rng);
        p->u = rng_double(rng); /* on a copy: the draw dist would make, not made */
    } else {
        return false;
    }
    return true;
}

bonsai_status bsi_sampler_took(bonsai_sampler *s, int32_t token)
{
    uint64_t rng[4];
    memcpy(rng, s->rng, sizeof rng);
    if (s->stages[s->n_stages - 1].vt == &dist_vt) (void)rng_double(s->rng);
    bonsai_status st = accept_token(s, token);
    if (st) memcpy(s->rng, rng, sizeof rng); /* as if nothing happened */
    return st;
}

void bsi_sampler_set_budget(bonsai_sampler *s, uint32_t n_left)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_stages; i++)
        if (s->stages[i].vt->budget) s->stages[i].vt->budget(s->stages[i].ctx, n_left);
}
