/* The sampler chain: every stage against its definition on fixed logits, the seeded generator,
 * log-probabilities, -inf handling, the constraint fast path through the internal stage
 * interface, argument errors and bonsai_sampler_create_default; a timing print on a
 * Qwen3-sized vocabulary. */
#include "test_util.h"

#include "backend.h"
#include "internal.h"
#include "sampler.h"

#include <math.h>
#include <time.h>

#define QWEN3_VOCAB 151936u

/* ------------------------------------------------------------------------------------------ */
/* Helpers */

/* What a capturing custom stage saw on its last call. */
static struct {
    bonsai_token_data *data;
    size_t size;
    bool sorted;
    int calls;
    size_t n_hist;
    int32_t hist[64];
} cap;

static bool capture_fn(bonsai_candidates *c, const int32_t *history, size_t n_history, void *ud)
{
    (void)ud;
    free(cap.data);
    cap.data = malloc((c->size ? c->size : 1) * sizeof *c->data);
    assert_non_null(cap.data);
    memcpy(cap.data, c->data, c->size * sizeof *c->data);
    cap.size = c->size;
    cap.sorted = c->sorted;
    cap.calls++;
    cap.n_hist = n_history;
    for (size_t i = 0; i < n_history && i < 64; i++) cap.hist[i] = history[i];
    return true;
}

static void cap_clear(void)
{
    free(cap.data);
    memset(&cap, 0, sizeof cap);
}

/* The captured candidate `id`, or NULL. */
static const bonsai_token_data *cap_find(int32_t id)
{
    for (size_t i = 0; i < cap.size; i++)
        if (cap.data[i].id == id) return &cap.data[i];
    return NULL;
}

static bonsai_sampler *new_sampler(uint64_t seed)
{
    bonsai_sampler *s = NULL;
    assert_int_equal(bonsai_sampler_create(seed, &s), BONSAI_OK);
    assert_non_null(s);
    return s;
}

static int32_t sample_ok(bonsai_sampler *s, const float *logits, uint32_t n)
{
    int32_t tok = -1;
    bonsai_status st = bonsai_sampler_sample(s, logits, n, &tok, NULL);
    if (st) fail_msg("bonsai_sampler_sample: %s", bonsai_last_error());
    assert_true(tok >= 0 && (uint32_t)tok < n);
    return tok;
}

/* Log-probabilities as logits. */
static void log_probs(const double *p, float *logits, size_t n)
{
    for (size_t i = 0; i < n; i++) logits[i] = p[i] > 0 ? (float)log(p[i]) : -INFINITY;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_desc(const void *a, const void *b)
{
    const bonsai_token_data *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* ------------------------------------------------------------------------------------------ */

static void test_greedy(void **state)
{
    (void)state;
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    const float l1[] = {1.0f, 5.0f, 3.0f, 5.0f, -INFINITY, NAN, 5.0f};
    assert_int_equal(sample_ok(s, l1, 7), 1); /* ties: lowest id */
    const float l2[] = {0, 0, 0, 0};
    assert_int_equal(sample_ok(s, l2, 4), 0);
    const float l3[] = {-INFINITY, NAN, -INFINITY, -7.0f};
    assert_int_equal(sample_ok(s, l3, 4), 3);
    const float l4[] = {INFINITY, 2.0f, INFINITY};
    assert_int_equal(sample_ok(s, l4, 3), 0);
    bonsai_sampler_free(s);

    /* temperature 0 keeps only the highest, so that dist draws it */
    s = new_sampler(9);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_temperature(s, 0.0f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    for (int i = 0; i < 20; i++) assert_int_equal(sample_ok(s, l1, 7), 1);
    bonsai_sampler_free(s);
    s = new_sampler(9);
    assert_int_equal(bonsai_sampler_add_temperature(s, -1.0f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    assert_int_equal(sample_ok(s, l1, 7), 1);
    assert_int_equal(cap.size, 1);
    assert_int_equal(cap.data[0].id, 1);
    bonsai_sampler_free(s);
    cap_clear();
}

/* Draw frequencies of temperature + dist against softmax(l / t). */
static void check_distribution(float t, uint64_t seed)
{
    const float logits[] = {1.0f, 2.0f, 0.5f, -INFINITY, 3.0f, NAN};
    enum { N = 6, DRAWS = 200000 };
    double expect[N] = {0}, sum = 0;
    for (int i = 0; i < N; i++) {
        expect[i] = isfinite(logits[i]) ? exp((double)logits[i] / t) : 0;
        sum += expect[i];
    }
    bonsai_sampler *s = new_sampler(seed);
    assert_int_equal(bonsai_sampler_add_temperature(s, t), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    int count[N] = {0};
    for (int i = 0; i < DRAWS; i++) count[sample_ok(s, logits, N)]++;
    for (int i = 0; i < N; i++) {
        double f = (double)count[i] / DRAWS, p = expect[i] / sum;
        /* standard deviation <= 0.0012 at this many draws */
        if (fabs(f - p) > 0.006)
            fail_msg("t=%g token %d: frequency %.4f, softmax(l/t) %.4f", (double)t, i, f, p);
    }
    assert_int_equal(count[3], 0);
    assert_int_equal(count[5], 0);
    bonsai_sampler_free(s);
}

static void test_temperature_dist(void **state)
{
    (void)state;
    check_distribution(1.0f, 1);
    check_distribution(0.7f, 2);
    check_distribution(2.5f, 3);

    /* the stage divides the logits and dist fills p */
    const float logits[] = {1.0f, -2.0f, 4.0f};
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_temperature(s, 0.5f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    sample_ok(s, logits, 3);
    assert_int_equal(cap.size, 3);
    double z = exp(2.0) + exp(-4.0) + exp(8.0);
    for (int i = 0; i < 3; i++) {
        assert_float_equal(cap_find(i)->logit, logits[i] / 0.5f, 1e-6);
        assert_float_equal(cap_find(i)->p, exp(logits[i] / 0.5) / z, 1e-6);
    }
    bonsai_sampler_free(s);
    cap_clear();
}

static void test_top_k(void **state)
{
    (void)state;
    const float logits[] = {0.5f, 3.0f, -1.0f, 2.0f, 3.0f, -INFINITY, 1.0f, 2.0f};
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 3), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_int_equal(sample_ok(s, logits, 8), 1);
    /* exactly the 3 best, sorted, the tie at 2.0 to the lower id */
    assert_int_equal(cap.size, 3);
    assert_true(cap.sorted);
    assert_int_equal(cap.data[0].id, 1);
    assert_int_equal(cap.data[1].id, 4);
    assert_int_equal(cap.data[2].id, 3);
    bonsai_sampler_free(s);

    /* k >= n and k <= 0 keep everything */
    s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 100), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_top_k(s, 0), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_top_k(s, -5), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    sample_ok(s, logits, 8);
    assert_int_equal(cap.size, 8);
    bonsai_sampler_free(s);

    /* a full vocabulary with many ties against a full sort */
    float *big = malloc(QWEN3_VOCAB * sizeof *big);
    bonsai_token_data *ref = malloc(QWEN3_VOCAB * sizeof *ref);
    assert_non_null(big);
    assert_non_null(ref);
    for (uint32_t i = 0; i < QWEN3_VOCAB; i++) {
        big[i] = roundf(test_uniform() * 400.0f) / 40.0f;
        ref[i] = (bonsai_token_data){(int32_t)i, big[i], 0};
    }
    qsort(ref, QWEN3_VOCAB, sizeof *ref, cmp_desc);
    const int32_t ks[] = {1, 40, 1000, 70000};
    for (size_t j = 0; j < sizeof ks / sizeof ks[0]; j++) {
        s = new_sampler(0);
        assert_int_equal(bonsai_sampler_add_top_k(s, ks[j]), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
        assert_int_equal(sample_ok(s, big, QWEN3_VOCAB), ref[0].id);
        assert_int_equal(cap.size, (size_t)ks[j]);
        for (int32_t i = 0; i < ks[j]; i++) {
            if (cap.data[i].id != ref[i].id || cap.data[i].logit != ref[i].logit)
                fail_msg("k=%d rank %d: token %d, expected %d", ks[j], i, cap.data[i].id,
                         ref[i].id);
        }
        bonsai_sampler_free(s);
    }
    free(big);
    free(ref);
    cap_clear();
}

/* The ids a top-p / min-p chain keeps for `p`, in order. */
static size_t kept(bool top_p, const float *logits, size_t n, float p, size_t min_keep,
                   int32_t *ids)
{
    bonsai_sampler *s = new_sampler(0);
    if (top_p)
        assert_int_equal(bonsai_sampler_add_top_p(s, p, min_keep), BONSAI_OK);
    else
        assert_int_equal(bonsai_sampler_add_min_p(s, p, min_keep), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    sample_ok(s, logits, (uint32_t)n);
    bonsai_sampler_free(s);
    /* a large kept set may be unordered: compare in sorted order */
    bonsai_token_data *sorted = malloc((cap.size ? cap.size : 1) * sizeof *sorted);
    assert_non_null(sorted);
    memcpy(sorted, cap.data, cap.size * sizeof *sorted);
    if (!cap.sorted) qsort(sorted, cap.size, sizeof *sorted, cmp_desc);
    for (size_t i = 0; i < cap.size; i++) ids[i] = sorted[i].id;
    free(sorted);
    return cap.size;
}

#define ASSERT_IDS(n, ids, ...)                                                                    \
    do {                                                                                           \
        const int32_t want_[] = {__VA_ARGS__};                                                     \
        assert_int_equal((n), sizeof want_ / sizeof want_[0]);                                     \
        for (size_t i_ = 0; i_ < (n); i_++) assert_int_equal((ids)[i_], want_[i_]);                \
    } while (0)

static void test_top_p(void **state)
{
    (void)state;
    /* probabilities 0.1 0.4 0.2 0.3 (ids 0..3) and a banned token */
    const double p[] = {0.1, 0.4, 0.2, 0.3, 0.0};
    float logits[5];
    log_probs(p, logits, 5);
    int32_t ids[8];
    size_t n = kept(true, logits, 5, 0.65f, 1, ids); /* 0.4 + 0.3 = 0.7 >= 0.65 */
    ASSERT_IDS(n, ids, 1, 3);
    assert_true(cap.sorted);
    assert_float_equal(cap.data[0].p, 0.4, 1e-6);
    assert_float_equal(cap.data[1].p, 0.3, 1e-6);
    n = kept(true, logits, 5, 0.75f, 1, ids); /* 0.9 */
    ASSERT_IDS(n, ids, 1, 3, 2);
    n = kept(true, logits, 5, 0.3f, 1, ids); /* 0.4 alone */
    ASSERT_IDS(n, ids, 1);
    n = kept(true, logits, 5, 0.3f, 3, ids); /* min_keep */
    ASSERT_IDS(n, ids, 1, 3, 2);
    n = kept(true, logits, 5, 0.95f, 1, ids); /* 1.0 */
    ASSERT_IDS(n, ids, 1, 3, 2, 0);
    n = kept(true, logits, 5, 1.0f, 1, ids); /* off */
    assert_int_equal(n, 5);

    /* a full vocabulary, peaked (cut inside the first partial sort) and flat (several rounds),
     * against a full sort */
    float *big = malloc(QWEN3_VOCAB * sizeof *big);
    bonsai_token_data *ref = malloc(QWEN3_VOCAB * sizeof *ref);
    int32_t *got = malloc(QWEN3_VOCAB * sizeof *got);
    assert_non_null(big);
    assert_non_null(ref);
    assert_non_null(got);
    const float scales[] = {3000.0f, 30.0f, 2.0f};
    for (int k = 0; k < 3; k++) {
        for (uint32_t i = 0; i < QWEN3_VOCAB; i++) {
            big[i] = test_uniform() * scales[k];
            ref[i] = (bonsai_token_data){(int32_t)i, big[i], 0};
        }
        qsort(ref, QWEN3_VOCAB, sizeof *ref, cmp_desc);
        double z = 0;
        for (uint32_t i = 0; i < QWEN3_VOCAB; i++) z += exp((double)(ref[i].logit - ref[0].logit));
        size_t want = 0;
        for (double cum = 0; want < QWEN3_VOCAB && cum < 0.9;)
            cum += exp((double)(ref[want++].logit - ref[0].logit)) / z;
        n = kept(true, big, QWEN3_VOCAB, 0.9f, 1, got);
        /* the cumulative sum is computed in a different order: allow one token either way */
        if (n + 1 < want || n > want + 1) fail_msg("top-p kept %zu, expected %zu", n, want);
        for (size_t i = 0; i < n; i++) assert_int_equal(got[i], ref[i].id);
        print_message("top-p 0.9 on %u logits (scale %g): %zu kept, %s\n", QWEN3_VOCAB,
                      (double)scales[k], n, cap.sorted ? "sorted" : "unordered");
    }
    free(big);
    free(ref);
    free(got);
    cap_clear();
}

static void test_min_p(void **state)
{
    (void)state;
    const double p[] = {0.06, 0.5, 0.04, 0.25, 0.15, 0.0};
    float logits[6];
    log_probs(p, logits, 6);
    int32_t ids[8];
    size_t n = kept(false, logits, 6, 0.1f, 1, ids); /* >= 0.05: drops 0.04 and the banned */
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++) assert_true(ids[i] != 2 && ids[i] != 5);
    /* p is renormalized over the kept */
    assert_float_equal(cap_find(1)->p, 0.5 / 0.96, 1e-6);
    assert_float_equal(cap_find(0)->p, 0.06 / 0.96, 1e-6);
    n = kept(false, logits, 6, 0.5f, 1, ids); /* >= 0.25 */
    assert_int_equal(n, 2);
    assert_non_null(cap_find(1));
    assert_non_null(cap_find(3));
    assert_float_equal(cap_find(1)->p, 0.5 / 0.75, 1e-6);
    n = kept(false, logits, 6, 0.5f, 3, ids); /* min_keep: the 3 best, sorted */
    ASSERT_IDS(n, ids, 1, 3, 4);
    n = kept(false, logits, 6, 1.0f, 1, ids); /* only the best */
    ASSERT_IDS(n, ids, 1);
    n = kept(false, logits, 6, 0.0f, 1, ids); /* off */
    assert_int_equal(n, 6);
    n = kept(false, logits, 6, -0.5f, 1, ids); /* off */
    assert_int_equal(n, 6);
    cap_clear();
}

/* Reverses the candidates, so that later stages cannot find tokens by index. */
static bool reverse_fn(bonsai_candidates *c, const int32_t *h, size_t nh, void *ud)
{
    (void)h, (void)nh, (void)ud;
    for (size_t i = 0; i < c->size / 2; i++) {
        bonsai_token_data t = c->data[i];
        c->data[i] = c->data[c->size - 1 - i];
        c->data[c->size - 1 - i] = t;
    }
    return true;
}

/* Logits after a penalties stage (repeat 2, frequency 0.5, presence 0.25) with `hist` accepted. */
static void penalized(int32_t last_n, const int32_t *hist, size_t n_hist, bool reversed,
                      bool add_after, float *out)
{
    const float logits[] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f};
    bonsai_sampler *s = new_sampler(0);
    if (reversed) assert_int_equal(bonsai_sampler_add_custom(s, reverse_fn, NULL), BONSAI_OK);
    if (!add_after)
        assert_int_equal(bonsai_sampler_add_penalties(s, last_n, 2.0f, 0.5f, 0.25f), BONSAI_OK);
    for (size_t i = 0; i < n_hist; i++)
        assert_int_equal(bonsai_sampler_accept(s, hist[i]), BONSAI_OK);
    if (add_after)
        assert_int_equal(bonsai_sampler_add_penalties(s, last_n, 2.0f, 0.5f, 0.25f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    int32_t tok;
    assert_int_equal(bonsai_sampler_sample(s, logits, 6, &tok, NULL), BONSAI_OK);
    for (int32_t i = 0; i < 6; i++) out[i] = cap_find(i)->logit;
    bonsai_sampler_free(s);
}

static void assert_logits(const float *got, const float *want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fabsf(got[i] - want[i]) > 1e-6f)
            fail_msg("token %zu: logit %g, expected %g", i, (double)got[i], (double)want[i]);
}

static void test_penalties(void **state)
{
    (void)state;
    float got[6];
    const int32_t hist[] = {0, 1, 1, 3, 0, 0, 99}; /* 99: outside the vocabulary */
    /* whole history: counts 0:3 1:2 3:1 */
    const float all[] = {2.0f / 2 - (3 * 0.5f + 0.25f),
                         -1.0f * 2 - (2 * 0.5f + 0.25f),
                         0.5f,
                         3.0f / 2 - (0.5f + 0.25f),
                         0.0f,
                         1.0f};
    for (int v = 0; v < 4; v++) {
        penalized(-1, hist, 7, v & 1, v & 2, got);
        assert_logits(got, all, 6);
    }
    /* last 4: 3 0 0 99 */
    const float last4[] = {2.0f / 2 - (2 * 0.5f + 0.25f), -1.0f, 0.5f,
                           3.0f / 2 - (0.5f + 0.25f),     0.0f,  1.0f};
    for (int v = 0; v < 4; v++) {
        penalized(4, hist, 7, v & 1, v & 2, got);
        assert_logits(got, last4, 6);
    }
    /* the window slides: last 3 of 0 1 1 3 0 0 5 4 are 0 5 4 (0 at logit 0 stays 0 - 0.75) */
    const int32_t hist2[] = {0, 1, 1, 3, 0, 0, 5, 4};
    const float last3[] = {2.0f / 2 - 0.75f, -1.0f, 0.5f, 3.0f, 0.0f * 2 - 0.75f, 1.0f / 2 - 0.75f};
    penalized(3, hist2, 8, false, false, got);
    assert_logits(got, last3, 6);
    penalized(3, hist2, 8, true, true, got);
    assert_logits(got, last3, 6);
    /* a long history through a short window (evictions, backward-shift deletions) */
    int32_t *long_hist = malloc(5000 * sizeof *long_hist);
    assert_non_null(long_hist);
    for (int i = 0; i < 5000; i++) long_hist[i] = (int32_t)(test_rand() % 6);
    int cnt[6] = {0};
    for (int i = 5000 - 37; i < 5000; i++) cnt[long_hist[i]]++;
    penalized(37, long_hist, 5000, false, false, got);
    const float base[] = {2.0f, -1.0f, 0.5f, 3.0f, 0.0f, 1.0f};
    for (int i = 0; i < 6; i++) {
        float w = base[i];
        if (cnt[i]) w = (w > 0 ? w / 2 : w * 2) - ((float)cnt[i] * 0.5f + 0.25f);
        assert_float_equal(got[i], w, 1e-5);
    }
    free(long_hist);

    /* many distinct tokens through a window, checked against a count from scratch at several
     * points (the count map grows, and deletes with backward shifts) */
    enum { V = 700, W = 100, STEPS = 3000 };
    float *flat = malloc(V * sizeof *flat);
    int32_t *seen = malloc((STEPS + 16) * sizeof *seen);
    assert_non_null(flat);
    assert_non_null(seen);
    for (int i = 0; i < V; i++) flat[i] = i % 2 ? 1.0f : -1.0f;
    bonsai_sampler *w = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_penalties(w, W, 2.0f, 0.5f, 0.25f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(w, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(w), BONSAI_OK);
    size_t n_seen = 0;
    for (int step = 0; step < STEPS; step++) {
        int32_t t = (int32_t)(test_rand() % (step < STEPS / 2 ? V : 60));
        assert_int_equal(bonsai_sampler_accept(w, t), BONSAI_OK);
        seen[n_seen++] = t;
        if (step % 500 != 499) continue;
        seen[n_seen++] = sample_ok(w, flat, V);
        int cnt_v[V] = {0};
        for (size_t i = n_seen - 1 - W; i < n_seen - 1; i++) cnt_v[seen[i]]++;
        for (int i = 0; i < V; i++) {
            float want = flat[i];
            if (cnt_v[i])
                want = (want > 0 ? want / 2 : want * 2) - ((float)cnt_v[i] * 0.5f + 0.25f);
            if (fabsf(cap_find(i)->logit - want) > 1e-5f)
                fail_msg("step %d token %d: %g, expected %g", step, i, (double)cap_find(i)->logit,
                         (double)want);
        }
    }
    bonsai_sampler_free(w);
    free(flat);
    free(seen);

    /* disabled settings add nothing; reset forgets the counts */
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_penalties(s, 0, 2.0f, 1.0f, 1.0f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_penalties(s, 64, 1.0f, 0.0f, 0.0f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_penalties(s, -1, 1.5f, 0.0f, 0.0f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    const float l[] = {3.0f, 2.5f};
    assert_int_equal(sample_ok(s, l, 2), 0);
    assert_float_equal(cap_find(0)->logit, 3.0f, 0); /* nothing seen yet */
    assert_int_equal(sample_ok(s, l, 2), 1);         /* 3 / 1.5 = 2 < 2.5 */
    assert_float_equal(cap_find(0)->logit, 2.0f, 1e-6);
    bonsai_sampler_reset(s);
    assert_int_equal(sample_ok(s, l, 2), 0);
    assert_float_equal(cap_find(0)->logit, 3.0f, 0);
    bonsai_sampler_free(s);
    cap_clear();
}

static void test_logit_bias(void **state)
{
    (void)state;
    const bonsai_logit_bias bias[] = {
        {2, 1.5f}, {0, -INFINITY}, {100, 5.0f}, {2, 0.5f}, {1, -0.25f}};
    const float logits[] = {3.0f, 1.0f, 2.0f, 0.0f};
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 5), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_int_equal(sample_ok(s, logits, 4), 2);
    assert_true(cap_find(0)->logit == -INFINITY);
    assert_float_equal(cap_find(1)->logit, 0.75f, 1e-6);
    assert_float_equal(cap_find(2)->logit, 4.0f, 1e-6);
    assert_float_equal(cap_find(3)->logit, 0.0f, 0);
    /* a ban wins even over a huge logit, with dist too */
    const float l2[] = {1000.0f, -5.0f, -6.0f, -7.0f};
    for (int i = 0; i < 5; i++) assert_true(sample_ok(s, l2, 4) != 0);
    bonsai_sampler_free(s);

    s = new_sampler(3);
    assert_int_equal(bonsai_sampler_add_custom(s, reverse_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 5), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_logit_bias(s, NULL, 0), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    for (int i = 0; i < 50; i++) assert_true(sample_ok(s, l2, 4) != 0);
    /* every token banned */
    const bonsai_logit_bias ban[] = {{1, -INFINITY}, {2, -INFINITY}, {3, -INFINITY}};
    assert_int_equal(bonsai_sampler_add_logit_bias(s, ban, 3), BONSAI_OK);
    int32_t tok = 77;
    assert_error(bonsai_sampler_sample(s, l2, 4, &tok, NULL), BONSAI_ERR_INVALID_STATE, "-inf");
    assert_int_equal(tok, 77);
    bonsai_sampler_free(s);
    cap_clear();
}

static bool abort_fn(bonsai_candidates *c, const int32_t *h, size_t nh, void *ud)
{
    (void)c, (void)h, (void)nh;
    int *calls = ud;
    return ++*calls < 3;
}

/* Selects the last candidate itself. */
static bool pick_last_fn(bonsai_candidates *c, const int32_t *h, size_t nh, void *ud)
{
    (void)h, (void)nh, (void)ud;
    c->selected = (int32_t)c->size - 1;
    return true;
}

static bool grow_fn(bonsai_candidates *c, const int32_t *h, size_t nh, void *ud)
{
    (void)h, (void)nh, (void)ud;
    c->size++;
    return true;
}

static void test_custom(void **state)
{
    (void)state;
    const float logits[] = {0.0f, 1.0f, 2.0f, 0.5f};
    bonsai_sampler *s = new_sampler(0);
    int calls = 0;
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, abort_fn, &calls), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_int_equal(bonsai_sampler_accept(s, 7), BONSAI_OK);
    assert_int_equal(bonsai_sampler_accept(s, 8), BONSAI_OK);
    assert_int_equal(sample_ok(s, logits, 4), 2);
    assert_int_equal(cap.n_hist, 2);
    assert_int_equal(cap.hist[0], 7);
    assert_int_equal(cap.hist[1], 8);
    assert_int_equal(cap.size, 4);
    assert_int_equal(sample_ok(s, logits, 4), 2);
    assert_int_equal(cap.n_hist, 3);
    assert_int_equal(cap.hist[2], 2); /* the sampled token was accepted */
    int32_t tok = 55;
    float lp = 1.0f;
    assert_error(bonsai_sampler_sample(s, logits, 4, &tok, &lp), BONSAI_ERR_ABORTED, "abort");
    assert_int_equal(tok, 55);
    assert_float_equal(lp, 1.0f, 0);
    /* the aborted call accepted nothing */
    calls = -100;
    assert_int_equal(sample_ok(s, logits, 4), 2);
    assert_int_equal(cap.n_hist, 4);
    bonsai_sampler_reset(s);
    assert_int_equal(sample_ok(s, logits, 4), 2);
    assert_int_equal(cap.n_hist, 0);
    bonsai_sampler_free(s);

    /* a custom stage may select; one that grows the candidates is refused */
    s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_custom(s, pick_last_fn, NULL), BONSAI_OK);
    assert_int_equal(sample_ok(s, logits, 4), 3);
    bonsai_sampler_free(s);
    s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_custom(s, grow_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_error(bonsai_sampler_sample(s, logits, 4, &tok, NULL), BONSAI_ERR_INVALID_STATE, "grew");
    bonsai_sampler_free(s);
    cap_clear();

    /* a call that fails after dist drew leaves the generator as it was: the next calls draw what
     * a sampler with the same seed that never failed draws */
    const float flat[] = {0.0f, 0.1f, 0.2f, 0.1f, 0.0f, 0.3f, 0.2f, 0.1f};
    bonsai_sampler *failing = new_sampler(42), *plain = new_sampler(42);
    calls = 2; /* abort_fn refuses the first call */
    assert_int_equal(bonsai_sampler_add_dist(failing), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(failing, abort_fn, &calls), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(plain), BONSAI_OK);
    assert_error(bonsai_sampler_sample(failing, flat, 8, &tok, NULL), BONSAI_ERR_ABORTED, "abort");
    calls = -100;
    for (int i = 0; i < 20; i++)
        assert_int_equal(sample_ok(failing, flat, 8), sample_ok(plain, flat, 8));
    bonsai_sampler_free(failing);
    bonsai_sampler_free(plain);
}

static void sequence(bonsai_sampler *s, const float *logits, uint32_t n, int32_t *out, int len)
{
    for (int i = 0; i < len; i++) out[i] = sample_ok(s, logits, n);
}

static void test_determinism(void **state)
{
    (void)state;
    enum { N = 1000, LEN = 64 };
    float logits[N];
    for (int i = 0; i < N; i++) logits[i] = test_uniform() * 2.0f;
    bonsai_sampler_params params;
    bonsai_sampler_params_init(&params);
    params.seed = 1234;
    params.top_k = 0;
    params.min_p = 0;
    params.repeat_penalty = 1.1f;
    int32_t a[LEN], b[LEN], c[LEN], d[LEN];
    bonsai_sampler *s1 = NULL, *s2 = NULL, *s3 = NULL;
    assert_int_equal(bonsai_sampler_create_default(&params, &s1), BONSAI_OK);
    assert_int_equal(bonsai_sampler_create_default(&params, &s2), BONSAI_OK);
    params.seed = 4321;
    assert_int_equal(bonsai_sampler_create_default(&params, &s3), BONSAI_OK);
    sequence(s1, logits, N, a, LEN);
    sequence(s2, logits, N, b, LEN);
    sequence(s3, logits, N, c, LEN);
    assert_memory_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    bonsai_sampler_reset(s1);
    sequence(s1, logits, N, d, LEN);
    assert_memory_equal(a, d, sizeof a);
    /* the seed is also the generator's whole state: seed 0 works and differs from 1 */
    bonsai_sampler *z0 = new_sampler(0), *z1 = new_sampler(1);
    assert_int_equal(bonsai_sampler_add_dist(z0), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(z1), BONSAI_OK);
    sequence(z0, logits, N, a, LEN);
    sequence(z1, logits, N, b, LEN);
    assert_memory_not_equal(a, b, sizeof a);
    bonsai_sampler_free(z0);
    bonsai_sampler_free(z1);
    bonsai_sampler_free(s1);
    bonsai_sampler_free(s2);
    bonsai_sampler_free(s3);
}

static void test_logprob(void **state)
{
    (void)state;
    const float logits[] = {1.0f, 2.0f, 3.0f, NAN, -INFINITY};
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    int32_t tok;
    float lp = 0;
    assert_int_equal(bonsai_sampler_sample(s, logits, 5, &tok, &lp), BONSAI_OK);
    assert_int_equal(tok, 2);
    assert_float_equal(lp, 3.0 - log(exp(1.0) + exp(2.0) + exp(3.0)), 1e-6);
    /* large logits: no overflow */
    const float big[] = {1000.0f, 999.0f, -1000.0f};
    assert_int_equal(bonsai_sampler_sample(s, big, 3, &tok, &lp), BONSAI_OK);
    assert_int_equal(tok, 0);
    assert_float_equal(lp, -log1p(exp(-1.0)), 1e-6);
    const float one[] = {-INFINITY, 5.0f};
    assert_int_equal(bonsai_sampler_sample(s, one, 2, &tok, &lp), BONSAI_OK);
    assert_int_equal(tok, 1);
    assert_float_equal(lp, 0.0f, 0);
    bonsai_sampler_free(s);

    /* from the unmodified logits, whatever the chain did to them */
    s = new_sampler(0);
    const bonsai_logit_bias bias[] = {{0, 10.0f}};
    assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 1), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_temperature(s, 0.3f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_int_equal(bonsai_sampler_sample(s, logits, 5, &tok, &lp), BONSAI_OK);
    assert_int_equal(tok, 0);
    assert_float_equal(lp, 1.0 - log(exp(1.0) + exp(2.0) + exp(3.0)), 1e-6);
    bonsai_sampler_free(s);
}

static void test_no_candidates(void **state)
{
    (void)state;
    const float inf[] = {-INFINITY, -INFINITY, NAN, -INFINITY};
    bonsai_sampler_params params;
    bonsai_sampler_params_init(&params);
    params.temperature = 0;
    bonsai_sampler *chains[4] = {new_sampler(0), new_sampler(0), NULL, NULL};
    assert_int_equal(bonsai_sampler_add_greedy(chains[0]), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(chains[1]), BONSAI_OK);
    assert_int_equal(bonsai_sampler_create_default(NULL, &chains[2]), BONSAI_OK);
    assert_int_equal(bonsai_sampler_create_default(&params, &chains[3]), BONSAI_OK);
    for (int i = 0; i < 4; i++) {
        int32_t tok = 5;
        float lp = 2;
        assert_error(bonsai_sampler_sample(chains[i], inf, 4, &tok, &lp), BONSAI_ERR_INVALID_STATE,
                     "no token can be chosen");
        assert_int_equal(tok, 5);
        assert_float_equal(lp, 2, 0);
        bonsai_sampler_free(chains[i]);
    }
    /* a chain without a selecting stage; a custom stage selecting a banned token */
    const float l[] = {1.0f, -INFINITY};
    bonsai_sampler *s = new_sampler(0);
    int32_t tok;
    assert_error(bonsai_sampler_sample(s, l, 2, &tok, NULL), BONSAI_ERR_INVALID_STATE,
                 "selected no token");
    assert_int_equal(bonsai_sampler_add_custom(s, pick_last_fn, NULL), BONSAI_OK);
    assert_error(bonsai_sampler_sample(s, l, 2, &tok, NULL), BONSAI_ERR_INVALID_STATE, "-inf");
    bonsai_sampler_free(s);
}

/* ------------------------------------------------------------------------------------------ */
/* A fake constraint through the internal stage interface */

typedef struct fake_constraint {
    const bool *allowed; /* per token below n_allowed; the others are allowed */
    size_t n_allowed;
    bool check_all_fail; /* check() refuses everything, apply() masks nothing */
    int applies, checks, accepts, resets, refusals;
} fake_constraint;

static int fake_frees;

static bool fake_allowed(const fake_constraint *f, int32_t token)
{
    return (size_t)token >= f->n_allowed || f->allowed[token];
}

static bonsai_status fake_apply(void *ctx, bonsai_candidates *c, const int32_t *h, size_t nh)
{
    fake_constraint *f = ctx;
    f->applies++;
    if (f->check_all_fail) return BONSAI_OK;
    for (size_t i = 0; i < c->size; i++)
        if (!fake_allowed(f, c->data[i].id)) c->data[i].logit = -INFINITY;
    return BONSAI_OK;
}

static bool fake_check(void *ctx, int32_t token)
{
    fake_constraint *f = ctx;
    f->checks++;
    return !f->check_all_fail && fake_allowed(f, token);
}

static bonsai_status fake_accept(void *ctx, int32_t token)
{
    fake_constraint *f = ctx;
    if (!f->check_all_fail && !fake_allowed(f, token)) {
        f->refusals++;
        return bsi_fail(BONSAI_ERR_INVALID_ARGUMENT, "fake constraint refuses token %d", token);
    }
    f->accepts++;
    return BONSAI_OK;
}

static void fake_reset(void *ctx)
{
    ((fake_constraint *)ctx)->resets++;
}

static bool fake_done(const void *ctx)
{
    return ((const fake_constraint *)ctx)->accepts >= 3;
}

static void fake_free(void *ctx)
{
    (void)ctx;
    fake_frees++;
}

static const bsi_sampler_stage_vt fake_vt = {.name = "fake",
                                             .apply = fake_apply,
                                             .check = fake_check,
                                             .accept = fake_accept,
                                             .reset = fake_reset,
                                             .done = fake_done,
                                             .free = fake_free};

static void test_constraint_fast_path(void **state)
{
    (void)state;
    const float logits[] = {1.0f, 2.0f, 0.5f, 4.0f, 3.0f};
    bool allowed[5] = {true, true, true, true, true};
    fake_constraint f = {.allowed = allowed, .n_allowed = 5};
    fake_frees = 0;
    bonsai_sampler *s = new_sampler(0);
    assert_int_equal(bsi_sampler_add_stage(s, &fake_vt, &f), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_false(bonsai_sampler_done(s));

    /* the unconstrained choice passes: the constraint's apply never runs */
    cap.calls = 0;
    assert_int_equal(sample_ok(s, logits, 5), 3);
    assert_int_equal(f.applies, 0);
    assert_int_equal(f.checks, 1);
    assert_int_equal(f.accepts, 1);
    assert_int_equal(cap.calls, 1);

    /* it fails: the whole chain runs again with the constraint */
    allowed[3] = false;
    assert_int_equal(sample_ok(s, logits, 5), 4);
    assert_int_equal(f.applies, 1);
    assert_int_equal(f.checks, 2);
    assert_int_equal(f.accepts, 2);
    assert_int_equal(cap.calls, 3); /* the other stages ran twice */
    assert_true(cap_find(3)->logit == -INFINITY);
    assert_false(bonsai_sampler_done(s));

    /* a refused accept changes neither the history nor the other stages */
    assert_error(bonsai_sampler_accept(s, 3), BONSAI_ERR_INVALID_ARGUMENT, "refuses token 3");
    assert_int_equal(bonsai_sampler_accept(s, 1), BONSAI_OK);
    assert_true(bonsai_sampler_done(s));
    assert_int_equal(sample_ok(s, logits, 5), 4);
    assert_int_equal(cap.n_hist, 3);
    assert_int_equal(cap.hist[0], 3);
    assert_int_equal(cap.hist[1], 4);
    assert_int_equal(cap.hist[2], 1);

    /* nothing allowed: INVALID_STATE, nothing accepted */
    memset(allowed, 0, sizeof allowed);
    int accepts = f.accepts;
    int32_t tok = 9;
    assert_error(bonsai_sampler_sample(s, logits, 5, &tok, NULL), BONSAI_ERR_INVALID_STATE,
                 "no token can be chosen");
    assert_int_equal(tok, 9);
    assert_int_equal(f.accepts, accepts);
    bonsai_sampler_reset(s);
    assert_int_equal(f.resets, 1);
    bonsai_sampler_free(s);
    assert_int_equal(fake_frees, 1);

    /* the random generator is restored before the full chain: a constraint whose check refuses
     * everything but whose apply masks nothing gives the plain chain's sequence */
    enum { N = 300, LEN = 100 };
    float flat[N];
    for (int i = 0; i < N; i++) flat[i] = test_uniform();
    fake_constraint g = {.check_all_fail = true};
    bonsai_sampler *a = new_sampler(77), *b = new_sampler(77);
    assert_int_equal(bsi_sampler_add_stage(a, &fake_vt, &g), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_top_p(a, 0.9f, 1), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(a), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_top_p(b, 0.9f, 1), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(b), BONSAI_OK);
    int32_t sa[LEN], sb[LEN];
    sequence(a, flat, N, sa, LEN);
    sequence(b, flat, N, sb, LEN);
    assert_memory_equal(sa, sb, sizeof sa);
    assert_int_equal(g.applies, LEN);
    assert_int_equal(g.checks, LEN);
    assert_int_equal(g.accepts, LEN);
    bonsai_sampler_free(a);
    bonsai_sampler_free(b);
    assert_int_equal(fake_frees, 2);

    /* a constraint that admits every draw is invisible: same sequence as without it */
    bool all[N];
    for (int i = 0; i < N; i++) all[i] = true;
    fake_constraint h = {.allowed = all, .n_allowed = N};
    a = new_sampler(5);
    b = new_sampler(5);
    assert_int_equal(bsi_sampler_add_stage(a, &fake_vt, &h), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(a), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(b), BONSAI_OK);
    sequence(a, flat, N, sa, LEN);
    sequence(b, flat, N, sb, LEN);
    assert_memory_equal(sa, sb, sizeof sa);
    assert_int_equal(h.applies, 0);
    bonsai_sampler_free(a);
    bonsai_sampler_free(b);

    /* add_stage frees the context when it fails */
    assert_int_equal(bsi_sampler_add_stage(NULL, &fake_vt, &f), BONSAI_ERR_INVALID_ARGUMENT);
    assert_int_equal(fake_frees, 4);
    cap_clear();
}

/* The shortcuts (chains starting with top-k, penalties / bias then top-k, greedy alone or after
 * penalties) against the general path, which a do-nothing custom stage placed first forces. */
static bool noop_fn(bonsai_candidates *c, const int32_t *h, size_t nh, void *ud)
{
    (void)c, (void)h, (void)nh, (void)ud;
    return true;
}

enum { N_CHAINS = 8 };

static bonsai_sampler *shortcut_chain(int variant, bool general, fake_constraint *f)
{
    static const bonsai_logit_bias bias[] = {{0, 0}, {7, 20.0f}, {500000, 3.0f}, {11, -2.0f}};
    bonsai_sampler *s = new_sampler(7);
    if (general) assert_int_equal(bonsai_sampler_add_custom(s, noop_fn, NULL), BONSAI_OK);
    switch (variant) {
    case 0:
        assert_int_equal(bonsai_sampler_add_penalties(s, 64, 1.5f, 0.3f, 0.7f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_top_k(s, 40), BONSAI_OK);
        break;
    case 1:
        assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 4), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_penalties(s, -1, 1.3f, 0.0f, 2.0f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_top_k(s, 10), BONSAI_OK);
        break;
    case 2: assert_int_equal(bonsai_sampler_add_top_k(s, 50), BONSAI_OK); break;
    case 3:
        assert_int_equal(bonsai_sampler_add_penalties(s, 8, 1.2f, 0.5f, 0.0f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 4), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_top_k(s, 1000), BONSAI_OK);
        break;
    case 4: /* the constraint is skipped in the fast pass, the shortcut still applies */
        assert_int_equal(bsi_sampler_add_stage(s, &fake_vt, f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_penalties(s, 64, 1.5f, 0.0f, 0.0f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_top_k(s, 5), BONSAI_OK);
        break;
    case 5: /* top-1 */
        assert_int_equal(bonsai_sampler_add_penalties(s, 64, 1.5f, 0.3f, 0.7f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_top_k(s, 1), BONSAI_OK);
        break;
    case 6: /* penalties then a final greedy: no capture (it would not be final) */
        assert_int_equal(bonsai_sampler_add_logit_bias(s, bias, 4), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_penalties(s, 64, 1.5f, 0.3f, 0.7f), BONSAI_OK);
        assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
        return s;
    case 7: /* greedy alone */ assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK); return s;
    }
    assert_int_equal(bonsai_sampler_add_custom(s, capture_fn, NULL), BONSAI_OK);
    assert_int_equal(bonsai_sampler_add_dist(s), BONSAI_OK);
    return s;
}

static void test_shortcuts(void **state)
{
    (void)state;
    float *logits = malloc(QWEN3_VOCAB * sizeof *logits);
    bonsai_token_data *ref = malloc(QWEN3_VOCAB * sizeof *ref);
    bool *allowed = malloc(QWEN3_VOCAB * sizeof *allowed);
    assert_non_null(logits);
    assert_non_null(ref);
    assert_non_null(allowed);
    for (uint32_t i = 0; i < QWEN3_VOCAB; i++) {
        logits[i] = roundf(test_uniform() * 200.0f) / 20.0f; /* many ties */
        if (i % 1000 == 999) logits[i] = i % 2000 == 999 ? NAN : -INFINITY;
        ref[i] = (bonsai_token_data){(int32_t)i, logits[i], 0};
        allowed[i] = true;
    }
    logits[7] = -3.0f;
    logits[0] = 50.0f; /* banned by the bias */
    qsort(ref, QWEN3_VOCAB, sizeof *ref, cmp_desc);
    /* a history among the best tokens, so that the penalties reorder them, and one token outside
     * the vocabulary */
    int32_t hist[200];
    for (int i = 0; i < 200; i++) hist[i] = ref[test_rand() % 60].id;
    hist[50] = (int32_t)QWEN3_VOCAB + 5;
    for (int v = 0; v < N_CHAINS; v++) {
        bonsai_token_data *got[2] = {NULL, NULL};
        size_t got_n[2] = {0, 0};
        int32_t seq[2][20];
        for (int general = 0; general < 2; general++) {
            fake_constraint f = {.allowed = allowed, .n_allowed = QWEN3_VOCAB};
            bonsai_sampler *s = shortcut_chain(v, general, &f);
            for (int i = 0; i < 200; i++) assert_int_equal(bonsai_sampler_accept(s, hist[i]), 0);
            cap.calls = 0;
            for (int i = 0; i < 20; i++) {
                seq[general][i] = sample_ok(s, logits, QWEN3_VOCAB);
                if (i == 0 && cap.calls) {
                    got[general] = cap.data;
                    got_n[general] = cap.size;
                    cap.data = NULL;
                }
            }
            if (v == 4) assert_int_equal(f.applies, 0);
            bonsai_sampler_free(s);
        }
        if (memcmp(seq[0], seq[1], sizeof seq[0]))
            fail_msg("chain %d: the shortcut and the general path sample differently", v);
        assert_int_equal(got_n[0], got_n[1]);
        for (size_t i = 0; i < got_n[0]; i++) {
            if (got[0][i].id != got[1][i].id || got[0][i].logit != got[1][i].logit)
                fail_msg("chain %d rank %zu: shortcut %d (%g), general %d (%g)", v, i, got[0][i].id,
                         (double)got[0][i].logit, got[1][i].id, (double)got[1][i].logit);
        }
        free(got[0]);
        free(got[1]);
    }
    free(logits);
    free(ref);
    free(allowed);
    cap_clear();
}

/* ------------------------------------------------------------------------------------------ */

static void test_bad_arguments(void **state)
{
    (void)state;
    const bonsai_status INVAL = BONSAI_ERR_INVALID_ARGUMENT;
    assert_error(bonsai_sampler_create(1, NULL), INVAL, "out is NULL");
    bonsai_sampler *s = new_sampler(0);
    const float logits[] = {1.0f, 2.0f};
    int32_t tok = 42;
    assert_error(bonsai_sampler_sample(s, logits, 2, &tok, NULL), BONSAI_ERR_INVALID_STATE,
                 "greedy or dist");
    assert_int_equal(bonsai_sampler_add_greedy(s), BONSAI_OK);
    assert_error(bonsai_sampler_sample(NULL, logits, 2, &tok, NULL), INVAL, "sampler is NULL");
    assert_error(bonsai_sampler_sample(s, NULL, 2, &tok, NULL), INVAL, "logits is NULL");
    assert_error(bonsai_sampler_sample(s, logits, 2, NULL, NULL), INVAL, "token is NULL");
    assert_error(bonsai_sampler_sample(s, logits, 0, &tok, NULL), INVAL, "n_vocab is 0");
    assert_int_equal(tok, 42);

    assert_error(bonsai_sampler_add_greedy(NULL), INVAL, "NULL");
    assert_error(bonsai_sampler_add_dist(NULL), INVAL, "NULL");
    assert_error(bonsai_sampler_add_temperature(NULL, 1), INVAL, "NULL");
    assert_error(bonsai_sampler_add_temperature(s, NAN), INVAL, "t is nan");
    assert_error(bonsai_sampler_add_temperature(s, INFINITY), INVAL, "finite");
    assert_error(bonsai_sampler_add_top_k(NULL, 5), INVAL, "NULL");
    assert_error(bonsai_sampler_add_top_p(s, 0.0f, 1), INVAL, "above 0");
    assert_error(bonsai_sampler_add_top_p(s, -0.5f, 1), INVAL, "above 0");
    assert_error(bonsai_sampler_add_top_p(s, NAN, 1), INVAL, "above 0");
    assert_error(bonsai_sampler_add_top_p(s, INFINITY, 1), INVAL, "above 0");
    assert_int_equal(bonsai_sampler_add_top_p(s, 1.5f, 1), BONSAI_OK); /* off, as documented */
    assert_error(bonsai_sampler_add_min_p(s, 1.5f, 1), INVAL, "at most 1");
    assert_error(bonsai_sampler_add_min_p(s, NAN, 1), INVAL, "at most 1");
    assert_error(bonsai_sampler_add_penalties(s, -2, 1.1f, 0, 0), INVAL, "last_n is -2");
    assert_error(bonsai_sampler_add_penalties(s, 64, 0.0f, 0, 0), INVAL, "repeat");
    assert_error(bonsai_sampler_add_penalties(s, 64, -1.0f, 0, 0), INVAL, "repeat");
    assert_error(bonsai_sampler_add_penalties(s, 64, NAN, 0, 0), INVAL, "repeat");
    assert_error(bonsai_sampler_add_penalties(s, 64, 1, INFINITY, 0), INVAL, "finite");
    assert_error(bonsai_sampler_add_penalties(s, 64, 1, 0, NAN), INVAL, "finite");
    const bonsai_logit_bias neg[] = {{1, 1.0f}, {-3, 1.0f}};
    assert_error(bonsai_sampler_add_logit_bias(s, neg, 2), INVAL, "bias[1].token is -3");
    assert_error(bonsai_sampler_add_logit_bias(s, NULL, 2), INVAL, "bias is NULL");
    const bonsai_logit_bias nan_bias[] = {{1, NAN}};
    assert_error(bonsai_sampler_add_logit_bias(s, nan_bias, 1), INVAL, "finite or -INFINITY");
    const bonsai_logit_bias inf_bias[] = {{1, INFINITY}};
    assert_error(bonsai_sampler_add_logit_bias(s, inf_bias, 1), INVAL, "finite or -INFINITY");
    assert_error(bonsai_sampler_add_custom(s, NULL, NULL), INVAL, "fn is NULL");
    assert_error(bonsai_sampler_accept(s, -1), INVAL, "negative");
    assert_error(bonsai_sampler_accept(NULL, 1), INVAL, "NULL");
    assert_error(bsi_sampler_add_stage(s, NULL, NULL), INVAL, "stage");
    /* the failed calls added nothing: still plain greedy */
    assert_int_equal(sample_ok(s, logits, 2), 1);

    /* the NULL-tolerant ones */
    bonsai_sampler_free(NULL);
    bonsai_sampler_reset(NULL);
    assert_false(bonsai_sampler_done(NULL));
    bonsai_sampler_params_init(NULL);
    bonsai_sampler_free(s);

    bonsai_sampler_params params;
    bonsai_sampler_params_init(&params);
    s = (bonsai_sampler *)1;
    assert_error(bonsai_sampler_create_default(&params, NULL), INVAL, "out is NULL");
    params.struct_size = 8;
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "struct_size is 8");
    assert_null(s);
    params.struct_size = sizeof params + 4;
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "struct_size");
    bonsai_sampler_params_init(&params);
    params.top_p = -2.0f;
    params.temperature = 0; /* checked even when greedy does not use it */
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "top_p is -2");
    bonsai_sampler_params_init(&params);
    params.temperature = NAN;
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "temperature is nan");
    bonsai_sampler_params_init(&params);
    params.penalty_last_n = -7;
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "last_n is -7");
    bonsai_sampler_params_init(&params);
    params.min_p = 3;
    assert_error(bonsai_sampler_create_default(&params, &s), INVAL, "min_p is 3");
    assert_null(s);
}

static void test_create_default(void **state)
{
    (void)state;
    bonsai_sampler_params params;
    memset(&params, 0xff, sizeof params);
    bonsai_sampler_params_init(&params);
    assert_int_equal(params.struct_size, sizeof params);
    assert_int_equal(params.seed, 0);
    assert_float_equal(params.temperature, 0.8f, 0);
    assert_int_equal(params.top_k, 40);
    assert_float_equal(params.top_p, 0.95f, 0);
    assert_float_equal(params.min_p, 0.05f, 0);
    assert_int_equal(params.penalty_last_n, 64);
    assert_float_equal(params.repeat_penalty, 1.0f, 0);
    assert_float_equal(params.frequency_penalty, 0.0f, 0);
    assert_float_equal(params.presence_penalty, 0.0f, 0);

    /* NULL params: defaults. Every draw is among the 40 best and passes min-p 0.05 */
    enum { N = 2000 };
    float logits[N];
    bonsai_token_data ref[N];
    for (int i = 0; i < N; i++) {
        logits[i] = test_uniform() * 3.0f;
        ref[i] = (bonsai_token_data){i, logits[i], 0};
    }
    qsort(ref, N, sizeof *ref, cmp_desc);
    bonsai_sampler *s = NULL;
    assert_int_equal(bonsai_sampler_create_default(NULL, &s), BONSAI_OK);
    assert_non_null(s);
    bool seen[N] = {false};
    int distinct = 0;
    for (int i = 0; i < 2000; i++) {
        int32_t tok = sample_ok(s, logits, N);
        assert_true(logits[tok] >= ref[39].logit);
        assert_true(logits[tok] >= ref[0].logit + logf(0.05f));
        distinct += !seen[tok];
        seen[tok] = true;
    }
    assert_true(distinct > 5); /* it does sample */
    assert_false(bonsai_sampler_done(s));
    bonsai_sampler_free(s);

    /* temperature 0: greedy, with penalties when enabled */
    params.temperature = 0;
    params.repeat_penalty = 2.0f;
    params.penalty_last_n = 2;
    assert_int_equal(bonsai_sampler_create_default(&params, &s), BONSAI_OK);
    const float l[] = {5.0f, 4.0f, 3.0f, -1.0f};
    /* 0; 0 at 2.5 -> 1; 0 2.5, 1 at 2 -> 2; window {1,2}: 0 -> 0 ... */
    const int32_t want[] = {0, 1, 2, 0, 1, 2, 0};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(sample_ok(s, l, 4), want[i]);
    bonsai_sampler_free(s);
    params.repeat_penalty = 1.0f;
    assert_int_equal(bonsai_sampler_create_default(&params, &s), BONSAI_OK);
    for (int i = 0; i < 5; i++) assert_int_equal(sample_ok(s, l, 4), 0);
    bonsai_sampler_free(s);

    /* an older, smaller struct is not accepted below the first ABI version's size, a larger
     * vocabulary than before reuses the sampler */
    bonsai_sampler_params_init(&params);
    params.seed = 99;
    assert_int_equal(bonsai_sampler_create_default(&params, &s), BONSAI_OK);
    const float small[] = {1.0f, 2.0f};
    sample_ok(s, small, 2);
    sample_ok(s, logits, N);
    sample_ok(s, small, 2);
    bonsai_sampler_free(s);
}

/* Time per bonsai_sampler_sample on a Qwen3-sized vocabulary (printed, never asserted). */
static void test_timing(void **state)
{
    (void)state;
    float *logits = malloc(QWEN3_VOCAB * sizeof *logits);
    assert_non_null(logits);
    /* model-like logits: a broad mass, a few strong candidates */
    for (uint32_t i = 0; i < QWEN3_VOCAB; i++) logits[i] = test_uniform() * 6.0f;
    for (int i = 0; i < 20; i++) logits[test_rand() % QWEN3_VOCAB] = 12.0f + test_uniform();
    struct {
        const char *name;
        bonsai_sampler_params p;
        bool logprob;
    } cases[4];
    for (int i = 0; i < 4; i++) bonsai_sampler_params_init(&cases[i].p);
    cases[0].name = "default chain";
    cases[0].logprob = false;
    cases[1].name = "default chain + logprob";
    cases[1].logprob = true;
    cases[2].name = "default + penalties (64) + logprob";
    cases[2].p.repeat_penalty = 1.1f;
    cases[2].p.presence_penalty = 0.5f;
    cases[2].logprob = true;
    cases[3].name = "greedy + logprob";
    cases[3].p.temperature = 0;
    cases[3].logprob = true;
    for (int c = 0; c < 4; c++) {
        bonsai_sampler *s = NULL;
        assert_int_equal(bonsai_sampler_create_default(&cases[c].p, &s), BONSAI_OK);
        int32_t tok;
        float lp;
        for (int i = 0; i < 80; i++) /* warm up, fill the penalty window */
            assert_int_equal(bonsai_sampler_sample(s, logits, QWEN3_VOCAB, &tok, NULL), 0);
        enum { REPS = 300 };
        double t0 = now_s();
        for (int i = 0; i < REPS; i++)
            assert_int_equal(
                bonsai_sampler_sample(s, logits, QWEN3_VOCAB, &tok, cases[c].logprob ? &lp : NULL),
                BONSAI_OK);
        double us = (now_s() - t0) / REPS * 1e6;
        print_message("sampler timing: %-36s %8.1f us per token (%u logits)\n", cases[c].name, us,
                      QWEN3_VOCAB);
        bonsai_sampler_free(s);
    }
    free(logits);
}

/* bsi_sampler_plan: which chains a GPU may run, with their settings and the next uniform; and
 * bsi_sampler_took draws it as bonsai_sampler_sample would. */
static void test_plan(void **state)
{
    (void)state;
    bonsai_sampler_params p;
    bonsai_sampler_params_init(&p);
    p.seed = 7;
    bonsai_sampler *s = NULL, *twin = NULL;
    assert_int_equal(bonsai_sampler_create_default(&p, &s), 0);
    assert_int_equal(bonsai_sampler_create_default(&p, &twin), 0);
    bsi_sample_params sp;
    assert_true(bsi_sampler_plan(s, &sp));
    assert_false(sp.greedy);
    assert_int_equal(sp.top_k, 40);
    assert_true(sp.has_top_p && sp.top_p == 0.95f && sp.top_p_keep == 1);
    assert_true(sp.has_min_p && sp.min_p_keep == 1);
    assert_true(fabsf(sp.min_p_log - logf(0.05f)) < 1e-6f);
    assert_true(sp.temp == 0.8f);
    assert_true(sp.u >= 0 && sp.u < 1);
    /* the uniform is the one the host's dist stage draws: two logits 0 and log 3 (p = 1/4, 3/4)
     * give token 0 exactly when u < 1/4 (top-k keeps both: sorted, token 1 first; so token 1
     * when u * total < 3/4) */
    float two[2] = {0.0f, logf(3.0f) * 0.8f}; /* after temperature 0.8: p = 1/4, 3/4 */
    for (int i = 0; i < 50; i++) {
        assert_true(bsi_sampler_plan(s, &sp));
        double u = sp.u;
        int32_t host;
        assert_int_equal(bonsai_sampler_sample(twin, two, 2, &host, NULL), 0);
        if (fabs(u - 0.75) > 1e-6) assert_int_equal(host, u < 0.75 ? 1 : 0);
        assert_int_equal(bsi_sampler_took(s, host), 0); /* s now mirrors twin */
    }
    bonsai_sampler_free(twin);
    bonsai_sampler_free(s);

    /* greedy; temperature <= 0 before dist; penalties; another stage; out of order */
    p.temperature = 0;
    assert_int_equal(bonsai_sampler_create_default(&p, &s), 0);
    assert_true(bsi_sampler_plan(s, &sp) && sp.greedy);
    bonsai_sampler_free(s);
    assert_int_equal(bonsai_sampler_create(1, &s), 0);
    assert_false(bsi_sampler_plan(s, &sp)); /* no stages */
    assert_int_equal(bonsai_sampler_add_temperature(s, 0), 0);
    assert_int_equal(bonsai_sampler_add_dist(s), 0);
    assert_true(bsi_sampler_plan(s, &sp) && sp.greedy);
    bonsai_sampler_free(s);
    bonsai_sampler_params_init(&p);
    p.repeat_penalty = 1.1f;
    assert_int_equal(bonsai_sampler_create_default(&p, &s), 0);
    assert_false(bsi_sampler_plan(s, &sp));
    bonsai_sampler_free(s);
    assert_int_equal(bonsai_sampler_create(1, &s), 0);
    assert_int_equal(bonsai_sampler_add_min_p(s, 0.1f, 1), 0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 5), 0);
    assert_int_equal(bonsai_sampler_add_dist(s), 0);
    assert_false(bsi_sampler_plan(s, &sp)); /* min-p before top-k */
    bonsai_sampler_free(s);
    assert_int_equal(bonsai_sampler_create(1, &s), 0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 5), 0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 3), 0);
    assert_int_equal(bonsai_sampler_add_greedy(s), 0);
    assert_false(bsi_sampler_plan(s, &sp)); /* top-k twice */
    bonsai_sampler_free(s);
    assert_int_equal(bonsai_sampler_create(1, &s), 0);
    assert_int_equal(bonsai_sampler_add_top_k(s, 5), 0);
    assert_false(bsi_sampler_plan(s, &sp)); /* ends in neither dist nor greedy */
    bonsai_sampler_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),         cmocka_unit_test(test_temperature_dist),
        cmocka_unit_test(test_top_k),          cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_min_p),          cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_logit_bias),     cmocka_unit_test(test_custom),
        cmocka_unit_test(test_determinism),    cmocka_unit_test(test_logprob),
        cmocka_unit_test(test_no_candidates),  cmocka_unit_test(test_constraint_fast_path),
        cmocka_unit_test(test_shortcuts),      cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_create_default), cmocka_unit_test(test_timing),
        cmocka_unit_test(test_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
