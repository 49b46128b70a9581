/*
 * Sessions on the real stories260K model (llama): logits against a double-precision reference
 * forward written here from FORMAT.md, greedy continuation, batch vs one by one, context full,
 * truncation, many sessions on one model from several threads, the model outliving its caller's
 * reference.
 */
#include "test_util.h"

#include "gguf_writer.h"
#include "half.h"
#include "quantize.h"
#include "model.h"

#include <math.h>
#include <pthread.h>
#include <unistd.h>

static const int32_t once_upon_a_time[] = {1, 403, 407, 261, 378}; /* <s> Once upon a time */

static bonsai_model *load_stories(void)
{
    bonsai_model *m = NULL;
    if (bonsai_model_load(test_data("stories260K.gguf"), NULL, &m))
        fail_msg("%s", bonsai_last_error());
    return m;
}

/* ---- the reference: straight from the formulas, in double ---- */

static const float *tensor(const bonsai_model *m, const char *name)
{
    int64_t i = bsi_gguf_find_tensor(m->gguf, name);
    assert_true(i >= 0);
    assert_int_equal(m->gguf->tensors[i].type, BONSAI_TENSOR_F32);
    return bsi_gguf_tensor_data(m->gguf, (uint64_t)i);
}

static void matvec(const float *w, const double *x, double *y, int rows, int cols)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < cols; i++) s += (double)w[r * cols + i] * x[i];
        y[r] = s;
    }
}

static void rmsnorm(const double *x, const float *w, double *y, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double k = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * k * w[i];
}

/* llama RoPE: adjacent pairs (2i, 2i+1) of the first n_rot dims, theta = p base^(-2i/n_rot) */
static void rope(double *v, int pos, int n_rot, double base)
{
    for (int i = 0; i < n_rot / 2; i++) {
        double th = pos * pow(base, -2.0 * i / n_rot), c = cos(th), s = sin(th);
        double a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
    }
}

/* Logits of every position of tokens[0..n) into out [n][vocab]. */
static void reference(const bonsai_model *m, const int32_t *tokens, int n, double *out)
{
    bonsai_model_hparams h = {.struct_size = sizeof h};
    assert_int_equal(bonsai_model_hparams_get(m, &h), 0);
    int E = (int)h.n_embd, F = (int)h.n_ff, H = (int)h.n_head, HK = (int)h.n_head_kv, D = E / H,
        V = (int)h.n_vocab;
    double eps = h.rms_eps;
    double *x = calloc((size_t)n * E, sizeof *x), *hb = malloc((size_t)E * sizeof *hb);
    double *q = malloc((size_t)H * D * sizeof *q), *att = malloc((size_t)H * D * sizeof *att);
    double *kc = malloc((size_t)h.n_layer * n * HK * D * sizeof *kc);
    double *vc = malloc((size_t)h.n_layer * n * HK * D * sizeof *vc);
    double *g = malloc((size_t)F * sizeof *g), *u = malloc((size_t)F * sizeof *u);
    double *o = malloc((size_t)E * sizeof *o), *sc = malloc((size_t)n * sizeof *sc);
    const float *embd = tensor(m, "token_embd.weight");
    for (int t = 0; t < n; t++)
        for (int i = 0; i < E; i++) x[t * E + i] = embd[tokens[t] * E + i];
    char name[64];
#define T(fmt) (snprintf(name, sizeof name, fmt, l), tensor(m, name))
    for (int t = 0; t < n; t++) { /* token by token: every layer sees the cache up to t */
        double *xt = x + (size_t)t * E;
        for (unsigned l = 0; l < h.n_layer; l++) {
            double *kl = kc + ((size_t)l * n + t) * HK * D, *vl = vc + ((size_t)l * n + t) * HK * D;
            rmsnorm(xt, T("blk.%u.attn_norm.weight"), hb, E, eps);
            matvec(T("blk.%u.attn_q.weight"), hb, q, H * D, E);
            matvec(T("blk.%u.attn_k.weight"), hb, kl, HK * D, E);
            matvec(T("blk.%u.attn_v.weight"), hb, vl, HK * D, E);
            for (int hh = 0; hh < H; hh++) rope(q + hh * D, t, (int)h.n_rot, 10000.0);
            for (int hh = 0; hh < HK; hh++) rope(kl + hh * D, t, (int)h.n_rot, 10000.0);
            for (int hh = 0; hh < H; hh++) {
                int kh = hh / (H / HK);
                double max = -INFINITY, sum = 0;
                for (int p = 0; p <= t; p++) {
                    const double *k = kc + ((size_t)l * n + p) * HK * D + kh * D;
                    double s = 0;
                    for (int d = 0; d < D; d++) s += q[hh * D + d] * k[d];
                    sc[p] = s / sqrt((double)D);
                    if (sc[p] > max) max = sc[p];
                }
                for (int p = 0; p <= t; p++) sum += (sc[p] = exp(sc[p] - max));
                for (int d = 0; d < D; d++) {
                    double a = 0;
                    for (int p = 0; p <= t; p++)
                        a += sc[p] / sum * vc[((size_t)l * n + p) * HK * D + kh * D + d];
                    att[hh * D + d] = a;
                }
            }
            matvec(T("blk.%u.attn_output.weight"), att, o, E, H * D);
            for (int i = 0; i < E; i++) xt[i] += o[i];
            rmsnorm(xt, T("blk.%u.ffn_norm.weight"), hb, E, eps);
            matvec(T("blk.%u.ffn_gate.weight"), hb, g, F, E);
            matvec(T("blk.%u.ffn_up.weight"), hb, u, F, E);
            for (int i = 0; i < F; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            matvec(T("blk.%u.ffn_down.weight"), g, o, E, F);
            for (int i = 0; i < E; i++) xt[i] += o[i];
        }
        rmsnorm(xt, tensor(m, "output_norm.weight"), hb, E, eps);
        matvec(tensor(m, "output.weight"), hb, out + (size_t)t * V, V, E);
    }
#undef T
    free(x), free(hb), free(q), free(att), free(kc), free(vc), free(g), free(u), free(o), free(sc);
}

static void test_logits_match_reference(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    enum { N = 5 };
    int V = (int)bonsai_model_n_vocab(m);
    double *ref = malloc((size_t)N * V * sizeof *ref);
    reference(m, once_upon_a_time, N, ref);
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, N, BONSAI_EVAL_ALL_LOGITS), 0);
    uint32_t rows;
    const float *logits = bonsai_session_logits(s, &rows);
    assert_int_equal(rows, N);
    double max_err = 0, max_mag = 0;
    for (int i = 0; i < N * V; i++) {
        max_err = fmax(max_err, fabs(logits[i] - ref[i]));
        max_mag = fmax(max_mag, fabs(ref[i]));
    }
    print_message("max |logit - reference| = %.3g (logits up to %.3g)\n", max_err, max_mag);
    assert_true(max_err < 2e-3 * max_mag); /* fp16 KV cache */
    bonsai_session_free(s);
    bonsai_model_free(m);
    free(ref);
}

static int32_t argmax(const float *v, uint32_t n)
{
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best]) best = (int32_t)i;
    return best;
}

/* Greedy continuation of "Once upon a time" into `out`. */
static void greedy(bonsai_model *m, int32_t *out, int n)
{
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, 5, 0), 0);
    for (int i = 0; i < n; i++) {
        out[i] = argmax(bonsai_session_logits(s, NULL), bonsai_model_n_vocab(m));
        assert_int_equal(bonsai_session_eval(s, &out[i], 1, 0), 0);
    }
    assert_int_equal(bonsai_session_n_past(s), 5 + n);
    bonsai_session_free(s);
}

static void test_greedy_story(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    int32_t ids[12];
    greedy(m, ids, 12);
    const bonsai_value *toks;
    assert_int_equal(bonsai_model_meta_get(m, "tokenizer.ggml.tokens", &toks), 0);
    char text[512] = "";
    for (int i = 0; i < 12; i++) {
        const char *piece;
        assert_int_equal(bonsai_value_array_string(toks, (uint64_t)ids[i], &piece, NULL), 0);
        strncat(text, piece, sizeof text - strlen(text) - 1);
    }
    print_message("Once upon a time%s\n", text);
    /* the story every llama2.c port tells */
    assert_string_equal(text,
                        ",\xe2\x96\x81there\xe2\x96\x81was\xe2\x96\x81"
                        "a\xe2\x96\x81little\xe2\x96\x81girl\xe2\x96\x81named\xe2\x96\x81Lily."
                        "\xe2\x96\x81She");
    bonsai_model_free(m);
}

/* bonsai_session_sample: what bonsai_sampler_sample gives on bonsai_session_logits, for the
 * default chain and greedy; a clear error without logits. */
static void test_session_sample(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    bonsai_sampler_params p;
    bonsai_sampler_params_init(&p);
    p.seed = 11;
    p.temperature = 1.2f; /* a wide distribution: many different tokens */
    bonsai_sampler *a, *b;
    int32_t tok;
    float lp_a, lp_b;
    assert_int_equal(bonsai_sampler_create_default(&p, &a), 0);
    assert_error(bonsai_session_sample(s, a, &tok, NULL), BONSAI_ERR_INVALID_STATE, "no logits");
    assert_error(bonsai_session_sample(NULL, a, &tok, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    assert_error(bonsai_session_sample(s, NULL, &tok, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    for (int greedy = 0; greedy < 2; greedy++) {
        if (greedy) {
            bonsai_sampler_free(a);
            p.temperature = 0;
            assert_int_equal(bonsai_sampler_create_default(&p, &a), 0);
        }
        assert_int_equal(bonsai_sampler_create_default(&p, &b), 0);
        bonsai_session_clear(s);
        tok = 1;
        for (int i = 0; i < 40; i++) {
            assert_int_equal(bonsai_session_eval(s, &tok, 1, 0), 0);
            int32_t ta, tb;
            assert_int_equal(bonsai_session_sample(s, a, &ta, &lp_a), 0);
            uint32_t rows;
            const float *logits = bonsai_session_logits(s, &rows);
            assert_non_null(logits);
            assert_int_equal(rows, 1);
            assert_int_equal(bonsai_sampler_sample(b, logits, bonsai_model_n_vocab(m), &tb, &lp_b),
                             0);
            assert_int_equal(ta, tb);
            assert_true(lp_a == lp_b);
            tok = ta;
        }
        bonsai_sampler_free(b);
    }
    bonsai_sampler_free(a);
    bonsai_session_free(s);
    bonsai_model_free(m);
}

static bool refuse_stage(bonsai_candidates *c, const int32_t *history, size_t n_history,
                         void *user_data)
{
    (void)c, (void)history, (void)n_history, (void)user_data;
    return false; /* abort the sampling */
}

/* bonsai_batch_sample: each item what bonsai_session_sample gives it alone (same seeds), over a
 * batch that mixes chains; bad batches are refused before anything is sampled. */
static void test_batch_sample(void **state)
{
    (void)state;
    enum { S = 4, STEPS = 12 };
    bonsai_model *m = load_stories();
    bonsai_session *ss[S];
    bonsai_sampler *a[S], *b[S];
    bonsai_batch_item items[S];
    bonsai_batch_sample_item picks[S];
    for (int k = 0; k < S; k++) {
        assert_int_equal(bonsai_session_create(m, NULL, &ss[k]), 0);
        bonsai_sampler_params p;
        bonsai_sampler_params_init(&p);
        p.seed = (uint64_t)(100 + k);
        p.temperature = k == 1 ? 0.0f : 1.3f;  /* one greedy */
        if (k == 2) p.repeat_penalty = 1.3f; /* one with penalties (never on a device) */
        assert_int_equal(bonsai_sampler_create_default(&p, &a[k]), 0);
        assert_int_equal(bonsai_sampler_create_default(&p, &b[k]), 0);
        items[k] = (bonsai_batch_item){ss[k], (int32_t)(1 + 7 * k)};
    }
    picks[0] = (bonsai_batch_sample_item){ss[0], a[0], -1, 0};
    assert_error(bonsai_batch_sample(picks, 1, 0), BONSAI_ERR_INVALID_STATE, "no logits");
    for (int step = 0; step < STEPS; step++) {
        assert_int_equal(bonsai_batch_eval(items, S, 0), 0);
        for (int k = 0; k < S; k++) picks[k] = (bonsai_batch_sample_item){ss[k], a[k], -1, 0};
        if (bonsai_batch_sample(picks, S, 0)) fail_msg("%s", bonsai_last_error());
        for (int k = 0; k < S; k++) {
            int32_t t;
            float lp;
            assert_int_equal(bonsai_session_sample(ss[k], b[k], &t, &lp), 0);
            assert_int_equal(picks[k].token, t);
            assert_true(picks[k].logprob == lp);
            items[k].token = t;
        }
    }
    /* refusals: nothing sampled (the samplers' next draws stay in step with their twins) */
    bonsai_batch_sample_item shared[2] = {{ss[0], a[0], 7, 0}, {ss[1], a[0], 7, 0}};
    assert_error(bonsai_batch_sample(shared, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "share a sampler");
    assert_int_equal(shared[0].token, -1); /* a refused batch says that nothing was sampled */
    assert_int_equal(shared[1].token, -1);
    bonsai_batch_sample_item no_sampler[2] = {{ss[0], a[0], -1, 0}, {ss[1], NULL, -1, 0}};
    assert_error(bonsai_batch_sample(no_sampler, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "sampler");
    assert_error(bonsai_batch_sample(shared, 0, 0), BONSAI_ERR_INVALID_ARGUMENT, "no items");
    assert_error(bonsai_batch_sample(NULL, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "no items");
    assert_error(bonsai_batch_sample(shared, 1, 1), BONSAI_ERR_INVALID_ARGUMENT, "flags");
    bonsai_model *other = load_stories();
    bonsai_session *o;
    assert_int_equal(bonsai_session_create(other, NULL, &o), 0);
    int32_t one = 1;
    assert_int_equal(bonsai_session_eval(o, &one, 1, 0), 0);
    bonsai_batch_sample_item mixed[2] = {{ss[0], a[0], -1, 0}, {o, a[1], -1, 0}};
    assert_error(bonsai_batch_sample(mixed, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "same model");
    int32_t t;
    /* a custom stage that fails on the second item: the first is sampled and accepted, the
     * second and third report -1 and their samplers are untouched */
    bonsai_sampler *failing;
    assert_int_equal(bonsai_sampler_create(9, &failing), 0);
    assert_int_equal(bonsai_sampler_add_custom(failing, refuse_stage, NULL), 0);
    assert_int_equal(bonsai_sampler_add_greedy(failing), 0);
    bonsai_batch_sample_item partial[3] = {
        {ss[0], a[0], 5, 0}, {ss[1], failing, 5, 0}, {ss[2], a[2], 5, 0}};
    assert_error(bonsai_batch_sample(partial, 3, 0), BONSAI_ERR_ABORTED, "");
    assert_true(partial[0].token >= 0);
    assert_int_equal(partial[1].token, -1);
    assert_int_equal(partial[2].token, -1);
    assert_int_equal(bonsai_session_sample(ss[0], b[0], &t, NULL), 0); /* keep the twins in step */
    assert_int_equal(partial[0].token, t);
    assert_int_equal(bonsai_session_sample(ss[2], a[2], &t, NULL), 0);
    int32_t t2;
    assert_int_equal(bonsai_session_sample(ss[2], b[2], &t2, NULL), 0);
    assert_int_equal(t, t2); /* a[2] drew nothing in the failed call */
    bonsai_sampler_free(failing);
    /* one session twice, with two samplers: both from its logits */
    bonsai_batch_sample_item twice[2] = {{ss[3], a[3], -1, 0}, {ss[3], a[0], -1, 0}};
    assert_int_equal(bonsai_batch_sample(twice, 2, 0), 0);
    assert_int_equal(bonsai_session_sample(ss[3], b[3], &t, NULL), 0);
    assert_int_equal(twice[0].token, t);
    assert_int_equal(bonsai_session_sample(ss[3], b[0], &t, NULL), 0);
    assert_int_equal(twice[1].token, t);
    bonsai_session_free(o);
    bonsai_model_free(other);
    for (int k = 0; k < S; k++) {
        bonsai_sampler_free(a[k]);
        bonsai_sampler_free(b[k]);
        bonsai_session_free(ss[k]);
    }
    bonsai_model_free(m);
}

static void test_batch_equals_one_by_one(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    uint32_t V = bonsai_model_n_vocab(m);
    bonsai_session *a, *b;
    assert_int_equal(bonsai_session_create(m, NULL, &a), 0);
    assert_int_equal(bonsai_session_create(m, NULL, &b), 0);
    assert_int_equal(bonsai_session_eval(a, once_upon_a_time, 5, BONSAI_EVAL_ALL_LOGITS), 0);
    const float *all = bonsai_session_logits(a, NULL);
    for (int t = 0; t < 5; t++) {
        assert_int_equal(bonsai_session_eval(b, &once_upon_a_time[t], 1, 0), 0);
        const float *one = bonsai_session_logits(b, NULL);
        for (uint32_t v = 0; v < V; v++)
            if (fabsf(one[v] - all[(size_t)t * V + v]) > 1e-3f)
                fail_msg("position %d token %u: %g one by one, %g in a batch", t, v, (double)one[v],
                         (double)all[(size_t)t * V + v]);
    }
    bonsai_session_free(a);
    bonsai_session_free(b);
    bonsai_model_free(m);
}

static void test_context_full_truncate_clear(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    uint32_t V = bonsai_model_n_vocab(m);
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.n_ctx = 7;
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, &p, &s), 0);
    assert_int_equal(bonsai_session_n_ctx(s), 7);
    uint32_t rows = 99;
    assert_null(bonsai_session_logits(s, &rows));
    assert_int_equal(rows, 0);
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, 5, 0), 0);
    float *after5 = malloc(V * sizeof *after5);
    memcpy(after5, bonsai_session_logits(s, NULL), V * sizeof *after5);
    assert_error(bonsai_session_eval(s, once_upon_a_time, 3, 0), BONSAI_ERR_CONTEXT_FULL,
                 "7 tokens");
    assert_int_equal(bonsai_session_n_past(s), 5); /* nothing evaluated, still usable */
    assert_memory_equal(bonsai_session_logits(s, NULL), after5, V * sizeof *after5);
    int32_t bad = (int32_t)V;
    assert_error(bonsai_session_eval(s, &bad, 1, 0), BONSAI_ERR_OUT_OF_RANGE, "vocabulary");
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, 2, 0), 0);
    assert_int_equal(bonsai_session_n_past(s), 7);

    /* rewinding to 4 tokens and evaluating the 5th again gives the same logits */
    assert_int_equal(bonsai_session_truncate(s, 4), 0);
    assert_null(bonsai_session_logits(s, NULL));
    assert_error(bonsai_session_truncate(s, 5), BONSAI_ERR_OUT_OF_RANGE, "5");
    assert_int_equal(bonsai_session_eval(s, &once_upon_a_time[4], 1, 0), 0);
    assert_memory_equal(bonsai_session_logits(s, NULL), after5, V * sizeof *after5);
    bonsai_session_clear(s);
    assert_int_equal(bonsai_session_n_past(s), 0);
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, 5, 0), 0);
    assert_memory_equal(bonsai_session_logits(s, NULL), after5, V * sizeof *after5);
    free(after5);
    bonsai_session_free(s);
    bonsai_model_free(m);
}

typedef struct job {
    bonsai_model *m;
    int32_t ids[10];
} job;

static void *run_greedy(void *arg)
{
    job *j = arg;
    greedy(j->m, j->ids, 10);
    return NULL;
}

static void test_sessions_in_threads(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    int32_t expect[10];
    greedy(m, expect, 10);
    enum { THREADS = 4 };
    job jobs[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i].m = m;
        assert_int_equal(pthread_create(&th[i], NULL, run_greedy, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_memory_equal(jobs[i].ids, expect, sizeof expect);
    }
    bonsai_model_free(m);
}

static void test_session_keeps_model(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    bonsai_model_free(m); /* the session still holds it */
    assert_int_equal(bonsai_session_eval(s, once_upon_a_time, 5, 0), 0);
    assert_non_null(strstr(bonsai_session_backend(s), "cpu"));
    bonsai_session_free(s); /* and frees it now (LeakSanitizer checks) */
}

static void test_bad_sessions(void **state)
{
    (void)state;
    bonsai_model *m;
    assert_int_equal(bonsai_model_load(test_data("ggml-vocab-gpt-2.gguf"), NULL, &m), 0);
    bonsai_session *s = (bonsai_session *)1;
    assert_error(bonsai_session_create(m, NULL, &s), BONSAI_ERR_UNSUPPORTED, "gpt2");
    assert_null(s);
    bonsai_model_free(m);
    m = load_stories();
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.backend = "tpu";
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_UNSUPPORTED, "'tpu'");
    bonsai_session_params_init(&p);
    p.kv_type = BONSAI_TENSOR_Q1_0;
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_UNSUPPORTED, "KV cache");
    p.kv_type = BONSAI_TENSOR_Q8_0; /* stories260K has heads of 8 */
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_UNSUPPORTED, "multiple of 32");
    bonsai_session_params_init(&p);
    p.struct_size = 2;
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_INVALID_ARGUMENT, "struct_size");
    assert_error(bonsai_session_create(NULL, NULL, &s), BONSAI_ERR_INVALID_ARGUMENT, "model");
    assert_error(bonsai_session_eval(NULL, NULL, 0, 0), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    bonsai_session_free(NULL);
    bonsai_model_free(m);
}

static void test_embeddings(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, NULL, &s), 0);
    enum { E = 64 };
    float a[E], b[E], c[E], d[E];
    const int32_t other[] = {1, 286, 383, 426}; /* <s> was there . */
    assert_int_equal(bonsai_embed(s, once_upon_a_time, 5, a, E), 0);
    assert_int_equal(bonsai_session_n_past(s), 0); /* the cache is left empty */
    assert_int_equal(bonsai_embed(s, once_upon_a_time, 5, b, E), 0);
    assert_memory_equal(a, b, sizeof a); /* deterministic */
    assert_int_equal(bonsai_embed(s, other, 4, c, E), 0);
    double na = 0, dot_ac = 0;
    for (int i = 0; i < E; i++) na += (double)a[i] * a[i], dot_ac += (double)a[i] * c[i];
    assert_true(fabs(na - 1) < 1e-5); /* unit length */
    assert_true(dot_ac < 0.9999);     /* different texts, different vectors */
    /* what the session held before does not matter */
    assert_int_equal(bonsai_session_eval(s, other, 4, 0), 0);
    assert_int_equal(bonsai_embed(s, once_upon_a_time, 5, d, E), 0);
    assert_memory_equal(a, d, sizeof a);
    assert_error(bonsai_embed(s, once_upon_a_time, 5, d, E - 1), BONSAI_ERR_INVALID_ARGUMENT,
                 "embedding length");
    bonsai_session_free(s);
    bonsai_model_free(m);
}

/* ---- qwen3: a tiny Bonsai-shaped model made here (Q1_0 matrices, YaRN), against a double
 * reference of FORMAT.md section 3 ---- */

enum { QL = 2, QE = 256, QF = 512, QH = 4, QKV = 2, QD = 128, QV = 1000 };
#define Q_BASE   1000000.0
#define Q_FACTOR 4.0
#define Q_ORIG   8192
#define TWO_PI   6.283185307179586

static float gauss(void)
{
    float s = 0;
    for (int i = 0; i < 4; i++) s += test_uniform();
    return s * 0.866f; /* ~N(0, 1) */
}

static void write_q1_matrix(bsi_gguf_writer *w, FILE *f, int64_t rows, int64_t cols, float std)
{
    float *row = malloc((size_t)cols * sizeof *row);
    uint8_t *blk = malloc((size_t)cols / 128 * 18);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++) row[i] = std * gauss();
        bsi_quantize_q1_0(row, cols, blk);
        assert_int_equal(
            bsi_gguf_writer_write_data(w, bsi_file_sink, f, blk, (size_t)cols / 128 * 18), 0);
    }
    free(row);
    free(blk);
}

static void write_norm(bsi_gguf_writer *w, FILE *f, int64_t n)
{
    float *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = 1.0f + 0.1f * gauss();
    assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f, v, (size_t)n * 4), 0);
    free(v);
}

static void write_tiny_qwen3(const char *path)
{
    bsi_gguf_writer *w = bsi_gguf_writer_new(0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "general.architecture", "qwen3"), 0);
    const struct {
        const char *k;
        uint32_t v;
    } u[] = {{"qwen3.block_count", QL},
             {"qwen3.context_length", 32768},
             {"qwen3.embedding_length", QE},
             {"qwen3.feed_forward_length", QF},
             {"qwen3.attention.head_count", QH},
             {"qwen3.attention.head_count_kv", QKV},
             {"qwen3.attention.key_length", QD},
             {"qwen3.attention.value_length", QD},
             {"qwen3.rope.scaling.original_context_length", Q_ORIG}};
    for (size_t i = 0; i < sizeof u / sizeof u[0]; i++)
        assert_int_equal(bsi_gguf_writer_add_u32(w, u[i].k, u[i].v), 0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "qwen3.attention.layer_norm_rms_epsilon", 1e-6f),
                     0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "qwen3.rope.freq_base", (float)Q_BASE), 0);
    assert_int_equal(bsi_gguf_writer_add_string(w, "qwen3.rope.scaling.type", "yarn"), 0);
    assert_int_equal(bsi_gguf_writer_add_f32(w, "qwen3.rope.scaling.factor", (float)Q_FACTOR), 0);
    const uint64_t embd[] = {QE, QV}, vec[] = {QE}, hv[] = {QD}, wq[] = {QE, QH * QD},
                   wkv[] = {QE, QKV * QD}, wo[] = {QH * QD, QE}, up[] = {QE, QF}, down[] = {QF, QE};
    assert_int_equal(
        bsi_gguf_writer_add_tensor(w, "token_embd.weight", BONSAI_TENSOR_Q1_0, 2, embd), 0);
    assert_int_equal(bsi_gguf_writer_add_tensor(w, "output_norm.weight", BONSAI_TENSOR_F32, 1, vec),
                     0);
    for (int l = 0; l < QL; l++) {
        char n[64];
#define ADD(suffix, type, nd, ne)                                                                  \
    snprintf(n, sizeof n, "blk.%d." suffix ".weight", l);                                          \
    assert_int_equal(bsi_gguf_writer_add_tensor(w, n, type, nd, ne), 0)
        ADD("attn_norm", BONSAI_TENSOR_F32, 1, vec);
        ADD("attn_q", BONSAI_TENSOR_Q1_0, 2, wq);
        ADD("attn_k", BONSAI_TENSOR_Q1_0, 2, wkv);
        ADD("attn_v", BONSAI_TENSOR_Q1_0, 2, wkv);
        ADD("attn_output", BONSAI_TENSOR_Q1_0, 2, wo);
        ADD("attn_q_norm", BONSAI_TENSOR_F32, 1, hv);
        ADD("attn_k_norm", BONSAI_TENSOR_F32, 1, hv);
        ADD("ffn_norm", BONSAI_TENSOR_F32, 1, vec);
        ADD("ffn_gate", BONSAI_TENSOR_Q1_0, 2, up);
        ADD("ffn_up", BONSAI_TENSOR_Q1_0, 2, up);
        ADD("ffn_down", BONSAI_TENSOR_Q1_0, 2, down);
#undef ADD
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, f), 0);
    write_q1_matrix(w, f, QV, QE, 0.1f); /* logits of a few units: a soft distribution */
    write_norm(w, f, QE);
    for (int l = 0; l < QL; l++) {
        write_norm(w, f, QE);
        write_q1_matrix(w, f, QH * QD, QE, 1.0f / 16);
        write_q1_matrix(w, f, QKV * QD, QE, 1.0f / 16);
        write_q1_matrix(w, f, QKV * QD, QE, 1.0f / 16);
        write_q1_matrix(w, f, QE, QH * QD, 1.0f / 22.6f);
        write_norm(w, f, QD);
        write_norm(w, f, QD);
        write_norm(w, f, QE);
        write_q1_matrix(w, f, QF, QE, 1.0f / 16);
        write_q1_matrix(w, f, QF, QE, 1.0f / 16);
        write_q1_matrix(w, f, QE, QF, 1.0f / 22.6f);
    }
    assert_int_equal(bsi_gguf_writer_finish(w), 0);
    bsi_gguf_writer_free(w);
    assert_int_equal(fclose(f), 0);
}

/* Row r of a Q1_0 or F32 tensor, dequantized to double. */
static void qrow(const bonsai_model *m, const char *name, int64_t r, double *out)
{
    int64_t i = bsi_gguf_find_tensor(m->gguf, name);
    assert_true(i >= 0);
    const bsi_gguf_tensor *t = &m->gguf->tensors[i];
    const uint8_t *base = bsi_gguf_tensor_data(m->gguf, (uint64_t)i);
    int64_t n = (int64_t)t->ne[0];
    if (t->type == BONSAI_TENSOR_F32) {
        for (int64_t j = 0; j < n; j++) out[j] = ((const float *)base)[r * n + j];
        return;
    }
    const uint8_t *row = base + (size_t)r * (size_t)(n / 128) * 18;
    for (int64_t b = 0; b < n / 128; b++) {
        uint16_t h;
        memcpy(&h, row + 18 * b, 2);
        double d = bsi_fp16_to_fp32(h);
        for (int j = 0; j < 128; j++)
            out[128 * b + j] = (row[18 * b + 2 + j / 8] >> (j % 8)) & 1 ? d : -d;
    }
}

static void qmatvec(const bonsai_model *m, const char *name, const double *x, double *y, int rows,
                    int cols)
{
    double *w = malloc((size_t)cols * sizeof *w);
    for (int r = 0; r < rows; r++) {
        qrow(m, name, r, w);
        double s = 0;
        for (int i = 0; i < cols; i++) s += w[i] * x[i];
        y[r] = s;
    }
    free(w);
}

static void qnorm(const bonsai_model *m, const char *name, const double *x, double *y, int n)
{
    double *w = malloc((size_t)n * sizeof *w), ss = 0;
    qrow(m, name, 0, w);
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double k = 1.0 / sqrt(ss / n + 1e-6);
    for (int i = 0; i < n; i++) y[i] = x[i] * k * w[i];
    free(w);
}

/* NeoX RoPE with YaRN, exactly as FORMAT.md section 3 writes it. */
static void rope_yarn(double *v, int pos)
{
    double s = 1.0 / Q_FACTOR, m = 1.0 + 0.1 * log(Q_FACTOR);
    double corr_fast = 128.0 * log(Q_ORIG / (32.0 * TWO_PI)) / (2 * log(Q_BASE));
    double corr_slow = 128.0 * log(Q_ORIG / (1.0 * TWO_PI)) / (2 * log(Q_BASE));
    double lo = fmax(0, floor(corr_fast)), hi = fmin(127, ceil(corr_slow));
    for (int i = 0; i < 64; i++) {
        double te = pos * pow(Q_BASE, -2.0 * i / 128), ti = s * te;
        double r = 1 - fmin(1, fmax(0, (i - lo) / fmax(0.001, hi - lo)));
        double th = ti * (1 - r) + te * r, c = cos(th) * m, sn = sin(th) * m;
        double a = v[i], b = v[i + 64];
        v[i] = a * c - b * sn;
        v[i + 64] = a * sn + b * c;
    }
}

static void qwen3_reference(const bonsai_model *m, const int32_t *tok, int n, double *out)
{
    double *x = malloc((size_t)QE * sizeof *x), *h = malloc((size_t)QE * sizeof *h);
    double *q = malloc((size_t)QH * QD * sizeof *q), *att = malloc((size_t)QH * QD * sizeof *att);
    double *kc = malloc((size_t)QL * n * QKV * QD * sizeof *kc);
    double *vc = malloc((size_t)QL * n * QKV * QD * sizeof *vc);
    double *g = malloc((size_t)QF * sizeof *g), *u = malloc((size_t)QF * sizeof *u);
    double *o = malloc((size_t)QE * sizeof *o), *sc = malloc((size_t)n * sizeof *sc);
    char nm[64];
#define N(fmt) (snprintf(nm, sizeof nm, fmt, l), nm)
    for (int t = 0; t < n; t++) {
        qrow(m, "token_embd.weight", tok[t], x);
        for (int l = 0; l < QL; l++) {
            double *kl = kc + ((size_t)l * n + t) * QKV * QD,
                   *vl = vc + ((size_t)l * n + t) * QKV * QD;
            qnorm(m, N("blk.%d.attn_norm.weight"), x, h, QE);
            qmatvec(m, N("blk.%d.attn_q.weight"), h, q, QH * QD, QE);
            qmatvec(m, N("blk.%d.attn_k.weight"), h, kl, QKV * QD, QE);
            qmatvec(m, N("blk.%d.attn_v.weight"), h, vl, QKV * QD, QE);
            for (int hh = 0; hh < QH; hh++) {
                qnorm(m, N("blk.%d.attn_q_norm.weight"), q + hh * QD, q + hh * QD, QD);
                rope_yarn(q + hh * QD, t);
            }
            for (int hh = 0; hh < QKV; hh++) {
                qnorm(m, N("blk.%d.attn_k_norm.weight"), kl + hh * QD, kl + hh * QD, QD);
                rope_yarn(kl + hh * QD, t);
            }
            for (int hh = 0; hh < QH; hh++) {
                int kh = hh / (QH / QKV);
                double max = -INFINITY, sum = 0;
                for (int p = 0; p <= t; p++) {
                    const double *k = kc + ((size_t)l * n + p) * QKV * QD + kh * QD;
                    double d = 0;
                    for (int i = 0; i < QD; i++) d += q[hh * QD + i] * k[i];
                    sc[p] = d / sqrt((double)QD);
                    max = fmax(max, sc[p]);
                }
                for (int p = 0; p <= t; p++) sum += (sc[p] = exp(sc[p] - max));
                for (int i = 0; i < QD; i++) {
                    double a = 0;
                    for (int p = 0; p <= t; p++)
                        a += sc[p] / sum * vc[((size_t)l * n + p) * QKV * QD + kh * QD + i];
                    att[hh * QD + i] = a;
                }
            }
            qmatvec(m, N("blk.%d.attn_output.weight"), att, o, QE, QH * QD);
            for (int i = 0; i < QE; i++) x[i] += o[i];
            qnorm(m, N("blk.%d.ffn_norm.weight"), x, h, QE);
            qmatvec(m, N("blk.%d.ffn_gate.weight"), h, g, QF, QE);
            qmatvec(m, N("blk.%d.ffn_up.weight"), h, u, QF, QE);
            for (int i = 0; i < QF; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
            qmatvec(m, N("blk.%d.ffn_down.weight"), g, o, QE, QF);
            for (int i = 0; i < QE; i++) x[i] += o[i];
        }
        qnorm(m, "output_norm.weight", x, h, QE);
        qmatvec(m, "token_embd.weight", h, out + (size_t)t * QV, QV, QE); /* tied head */
    }
#undef N
    free(x), free(h), free(q), free(att), free(kc), free(vc), free(g), free(u), free(o), free(sc);
}

static void test_qwen3_matches_reference(void **state)
{
    (void)state;
    char path[] = "/tmp/bonsai-qwen3-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_tiny_qwen3(path);
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    enum { N = 6 };
    const int32_t tok[N] = {3, 999, 500, 42, 42, 7};
    double *ref = malloc((size_t)N * QV * sizeof *ref);
    qwen3_reference(m, tok, N, ref);
    for (int kv = 0; kv < 2; kv++) { /* fp16 and Q8_0 caches */
        bonsai_session_params sp;
        bonsai_session_params_init(&sp);
        sp.kv_type = kv ? BONSAI_TENSOR_Q8_0 : BONSAI_TENSOR_F16;
        bonsai_session *s;
        assert_int_equal(bonsai_session_create(m, &sp, &s), 0);
        assert_int_equal(bonsai_session_eval(s, tok, N, BONSAI_EVAL_ALL_LOGITS), 0);
        const float *got = bonsai_session_logits(s, NULL);
        double kl_sum = 0, max_err = 0, max_mag = 0;
        int same_top = 0;
        for (int i = 0; i < N * QV; i++) {
            max_err = fmax(max_err, fabs(got[i] - ref[i]));
            max_mag = fmax(max_mag, fabs(ref[i]));
        }
        for (int t = 0; t < N; t++) {
            const double *r = ref + (size_t)t * QV;
            const float *y = got + (size_t)t * QV;
            double mr = -INFINITY, my = -INFINITY, zr = 0, zy = 0, kl = 0;
            int ar = 0, ay = 0;
            for (int v = 0; v < QV; v++) {
                if (r[v] > mr) mr = r[v], ar = v;
                if (y[v] > my) my = y[v], ay = v;
            }
            for (int v = 0; v < QV; v++) zr += exp(r[v] - mr), zy += exp(y[v] - my);
            for (int v = 0; v < QV; v++) {
                double pr = exp(r[v] - mr) / zr, py = exp(y[v] - my) / zy;
                if (pr > 0) kl += pr * log(pr / fmax(py, 1e-300));
            }
            kl_sum += kl;
            same_top += ar == ay;
        }
        print_message(
            "qwen3 tiny, %s KV: mean KL %.3g, same top-1 at %d of %d positions, max |logit error| "
            "%.3g (logits up to %.3g)\n",
            kv ? "q8_0" : "f16", kl_sum / N, same_top, N, max_err, max_mag);
        assert_true(max_err < 0.05 * max_mag);
        assert_true(kl_sum / N < 1e-3);
        assert_true(same_top >= N - 1);
        bonsai_session_free(s);
    }
    bonsai_model_free(m);
    free(ref);
    unlink(path);
}

/* A llama file whose tensors do not match its keys fails to load, naming what is wrong. */
static void test_arch_checks(void **state)
{
    (void)state;
    bonsai_model *src = load_stories();
    const char *cases[][2] = {
        {"blk.3.ffn_up.weight", "'blk.3.ffn_up.weight' is missing"},
        {"output_norm.weight", "'output_norm.weight' is missing"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        bsi_gguf_writer *w = bsi_gguf_writer_new(0);
        const bsi_gguf *g = src->gguf;
        for (uint64_t i = 0; i < g->n_kv; i++)
            assert_int_equal(bsi_gguf_writer_add_value(w, g->kv[i].key, &g->kv[i].value), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++) {
            const bsi_gguf_tensor *t = &g->tensors[i];
            if (strcmp(t->name, cases[c][0]))
                assert_int_equal(bsi_gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne),
                                 0);
        }
        char path[] = "/tmp/bonsai-arch-XXXXXX";
        int fd = mkstemp(path);
        FILE *f = fdopen(fd, "wb");
        assert_int_equal(bsi_gguf_writer_write_header(w, bsi_file_sink, f), 0);
        for (uint64_t i = 0; i < g->n_tensors; i++)
            if (strcmp(g->tensors[i].name, cases[c][0]))
                assert_int_equal(bsi_gguf_writer_write_data(w, bsi_file_sink, f,
                                                            bsi_gguf_tensor_data(g, i),
                                                            g->tensors[i].n_bytes),
                                 0);
        fclose(f);
        bsi_gguf_writer_free(w);
        bonsai_model *m = (bonsai_model *)1;
        assert_error(bonsai_model_load(path, NULL, &m), BONSAI_ERR_CORRUPT, cases[c][1]);
        assert_null(m);
        unlink(path);
    }
    bonsai_model_free(src);
}

/* bonsai_batch_eval: sessions at different positions stepped together give the logits each
 * would get alone; bad batches change nothing. */
static void check_batch_eval(bonsai_model *m, uint32_t V, uint32_t kv_type, float tol)
{
    enum { S = 5, STEPS = 6 };
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = 64;
    sp.kv_type = kv_type;
    bonsai_session *batched[S], *alone[S];
    int32_t prompt[16];
    for (int i = 0; i < 16; i++) prompt[i] = (int32_t)(test_rand() % V);
    for (int k = 0; k < S; k++) {
        assert_int_equal(bonsai_session_create(m, &sp, &batched[k]), 0);
        assert_int_equal(bonsai_session_create(m, &sp, &alone[k]), 0);
        /* different lengths: different positions in the same batch */
        assert_int_equal(bonsai_session_eval(batched[k], prompt, (uint32_t)(3 + 2 * k), 0), 0);
        assert_int_equal(bonsai_session_eval(alone[k], prompt, (uint32_t)(3 + 2 * k), 0), 0);
    }
    for (int step = 0; step < STEPS; step++) {
        bonsai_batch_item items[S];
        for (int k = 0; k < S; k++) {
            /* a rotating order: the lead session changes */
            int j = (k + step) % S;
            items[k].session = batched[j];
            items[k].token = argmax(bonsai_session_logits(batched[j], NULL), V);
        }
        if (bonsai_batch_eval(items, S, 0)) fail_msg("%s", bonsai_last_error());
        for (int k = 0; k < S; k++) {
            int j = (k + step) % S;
            assert_int_equal(bonsai_session_eval(alone[j], &items[k].token, 1, 0), 0);
        }
        for (int k = 0; k < S; k++) {
            uint32_t rows = 0;
            const float *b = bonsai_session_logits(batched[k], &rows);
            const float *a = bonsai_session_logits(alone[k], NULL);
            assert_int_equal(rows, 1);
            assert_int_equal(bonsai_session_n_past(batched[k]), bonsai_session_n_past(alone[k]));
            for (uint32_t v = 0; v < V; v++)
                if (!(fabsf(a[v] - b[v]) <= tol * fmaxf(1.0f, fabsf(a[v]))))
                    fail_msg("step %d session %d token %u: %g alone, %g in a batch", step, k, v,
                             (double)a[v], (double)b[v]);
            uint32_t na, nb;
            const int32_t *ha = bonsai_session_tokens(alone[k], &na),
                          *hb = bonsai_session_tokens(batched[k], &nb);
            assert_int_equal(na, nb);
            assert_memory_equal(ha, hb, na * sizeof *ha);
        }
    }
    /* refusals leave every session as it was */
    uint32_t before = bonsai_session_n_past(batched[1]);
    bonsai_batch_item twice[2] = {{batched[1], 1}, {batched[1], 2}};
    assert_error(bonsai_batch_eval(twice, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "same session");
    bonsai_batch_item bad_token[2] = {{batched[1], 1}, {batched[2], (int32_t)V}};
    assert_error(bonsai_batch_eval(bad_token, 2, 0), BONSAI_ERR_OUT_OF_RANGE, "item 1");
    assert_error(bonsai_batch_eval(bad_token, 0, 0), BONSAI_ERR_INVALID_ARGUMENT, "no items");
    assert_error(bonsai_batch_eval(twice, 1, 7), BONSAI_ERR_INVALID_ARGUMENT, "flags");
    bonsai_batch_item none[1] = {{NULL, 1}};
    assert_error(bonsai_batch_eval(none, 1, 0), BONSAI_ERR_INVALID_ARGUMENT, "no session");
    assert_int_equal(bonsai_session_n_past(batched[1]), before);
    /* a full session */
    assert_int_equal(bonsai_session_truncate(batched[3], 0), 0);
    int32_t fill[64];
    for (int i = 0; i < 64; i++) fill[i] = (int32_t)(i % V);
    assert_int_equal(bonsai_session_eval(batched[3], fill, 64, 0), 0);
    bonsai_batch_item full[2] = {{batched[1], 1}, {batched[3], 1}};
    assert_error(bonsai_batch_eval(full, 2, 0), BONSAI_ERR_CONTEXT_FULL, "item 1");
    assert_int_equal(bonsai_session_n_past(batched[1]), before);
    for (int k = 0; k < S; k++) {
        bonsai_session_free(batched[k]);
        bonsai_session_free(alone[k]);
    }
}

static void test_batch_eval(void **state)
{
    (void)state;
    bonsai_model *m = load_stories();
    check_batch_eval(m, bonsai_model_n_vocab(m), BONSAI_TENSOR_F16, 1e-4f);
    /* sessions of another model cannot join */
    bonsai_model *other = load_stories();
    bonsai_session *a, *b;
    assert_int_equal(bonsai_session_create(m, NULL, &a), 0);
    assert_int_equal(bonsai_session_create(other, NULL, &b), 0);
    bonsai_batch_item mixed[2] = {{a, 1}, {b, 1}};
    assert_error(bonsai_batch_eval(mixed, 2, 0), BONSAI_ERR_INVALID_ARGUMENT, "same model");
    bonsai_session_free(a);
    bonsai_session_free(b);
    bonsai_model_free(other);
    /* fresh sessions whose first step is a batch: each its own logits, readable and sampled, and
     * kept when another batch of other sessions follows */
    bonsai_session *f[3];
    for (int i = 0; i < 3; i++) assert_int_equal(bonsai_session_create(m, NULL, &f[i]), 0);
    bonsai_batch_item fresh[2] = {{f[0], 5}, {f[1], 9}};
    assert_int_equal(bonsai_batch_eval(fresh, 2, 0), 0);
    bonsai_batch_item next[2] = {{f[2], 9}, {f[0], 7}};
    assert_int_equal(bonsai_batch_eval(next, 2, 0), 0);
    bonsai_session *alone;
    assert_int_equal(bonsai_session_create(m, NULL, &alone), 0);
    int32_t nine = 9;
    assert_int_equal(bonsai_session_eval(alone, &nine, 1, 0), 0);
    uint32_t V = bonsai_model_n_vocab(m), rows;
    const float *want = bonsai_session_logits(alone, &rows);
    assert_int_equal(rows, 1);
    for (int i = 1; i < 3; i++) { /* f[1] and f[2]: token 9 at position 0 */
        const float *got = bonsai_session_logits(f[i], &rows);
        assert_non_null(got);
        assert_int_equal(rows, 1);
        for (uint32_t k = 0; k < V; k++) assert_true(fabsf(got[k] - want[k]) < 1e-4f);
    }
    bonsai_sampler *g;
    assert_int_equal(bonsai_sampler_create(0, &g), 0);
    assert_int_equal(bonsai_sampler_add_greedy(g), 0);
    int32_t t1, t2;
    assert_int_equal(bonsai_session_sample(f[1], g, &t1, NULL), 0);
    assert_int_equal(bonsai_session_sample(alone, g, &t2, NULL), 0);
    assert_int_equal(t1, t2);
    bonsai_sampler_free(g);
    bonsai_session_free(alone);
    for (int i = 0; i < 3; i++) bonsai_session_free(f[i]);
    bonsai_model_free(m);

    /* Q1_0 weights: the batch takes the matrix-matrix kernels, one token the matrix-vector ones */
    char path[] = "/tmp/bonsai-qwen3-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_tiny_qwen3(path);
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    check_batch_eval(m, QV, BONSAI_TENSOR_F16, 2e-3f);
    check_batch_eval(m, QV, BONSAI_TENSOR_Q8_0, 2e-3f);
    bonsai_model_free(m);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_match_reference),
        cmocka_unit_test(test_greedy_story),
        cmocka_unit_test(test_session_sample),
        cmocka_unit_test(test_batch_sample),
        cmocka_unit_test(test_batch_equals_one_by_one),
        cmocka_unit_test(test_context_full_truncate_clear),
        cmocka_unit_test(test_sessions_in_threads),
        cmocka_unit_test(test_session_keeps_model),
        cmocka_unit_test(test_bad_sessions),
        cmocka_unit_test(test_arch_checks),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_qwen3_matches_reference),
        cmocka_unit_test(test_batch_eval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
