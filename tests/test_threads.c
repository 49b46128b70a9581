/*
 * Concurrency: eight threads each drive their own session on one shared model while another
 * thread cancels some of them; every result must equal the sequential run's (a cancelled one: a
 * prefix of it). Built and run in CI under ThreadSanitizer too. The model: the tiny Qwen3-shaped
 * model (Q1_0 weights, the real tokenizer), and stories260K.
 */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

enum { N_THREADS = 8, N_TOKENS = 12 };

typedef struct job {
    bonsai_model *model;
    int index;
    bool use_chat;
    int32_t out[64];
    uint32_t n_out;
    bonsai_stop_reason reason;
    bonsai_status status;
    pthread_mutex_t lock;    /* guards session against the canceller */
    bonsai_session *session; /* published for the canceller while alive */
    atomic_int started;      /* tokens seen so far */
    atomic_bool created;     /* the session exists (or could not be made) */
} job;

static const char *const prompts[N_THREADS] = {
    "Once upon a time",        "The little dog",  "She went to the park", "A big red ball",
    "In the morning, the sun", "Tom and his cat", "The bird sang",        "They played all day",
};

static bool on_token(int32_t token, const char *text, size_t len, float lp, void *ud)
{
    (void)text, (void)len, (void)lp;
    job *j = ud;
    if (j->n_out < 64) j->out[j->n_out++] = token;
    atomic_fetch_add(&j->started, 1);
    return true;
}

static void *run_job(void *arg)
{
    job *j = arg;
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_threads = 1;
    sp.n_ctx = 128;
    sp.backend = "cpu";
    bonsai_session *s = NULL;
    j->status = bonsai_session_create(j->model, &sp, &s);
    atomic_store(&j->created, true);
    if (j->status) return NULL;
    pthread_mutex_lock(&j->lock);
    j->session = s;
    pthread_mutex_unlock(&j->lock);
    bonsai_generate_params gp;
    bonsai_generate_params_init(&gp);
    gp.max_tokens = N_TOKENS;
    gp.on_token = on_token;
    gp.user_data = j;
    bonsai_generate_stats st = {.struct_size = sizeof st};
    if (j->use_chat) {
        bonsai_chat *chat = NULL;
        j->status = bonsai_chat_create(s, "Be brief.", 0, &chat);
        if (!j->status) j->status = bonsai_chat_send(chat, prompts[j->index], &gp, &st);
        bonsai_chat_free(chat);
    } else {
        j->status = bonsai_generate(s, prompts[j->index], &gp, &st);
    }
    j->reason = st.stop_reason;
    pthread_mutex_lock(&j->lock);
    j->session = NULL;
    pthread_mutex_unlock(&j->lock);
    bonsai_session_free(s);
    return NULL;
}

/* Cancels jobs 0 .. 2 once each has produced a token or two (or has finished). */
static void *canceller(void *arg)
{
    job *jobs = arg;
    for (int k = 0; k < 3; k++) {
        struct timespec ts = {0, 200000};
        for (int spin = 0; spin < 200000; spin++) {
            if (atomic_load(&jobs[k].started) >= 2) break;
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&jobs[k].lock);
        if (jobs[k].session) bonsai_session_cancel(jobs[k].session);
        pthread_mutex_unlock(&jobs[k].lock);
    }
    return NULL;
}

static void check_model(const char *path, bool use_chat)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    static job seq[N_THREADS], par[N_THREADS];
    memset(seq, 0, sizeof seq);
    memset(par, 0, sizeof par);
    for (int i = 0; i < N_THREADS; i++) {
        seq[i].model = par[i].model = m;
        seq[i].index = par[i].index = i;
        seq[i].use_chat = par[i].use_chat = use_chat;
        pthread_mutex_init(&seq[i].lock, NULL);
        pthread_mutex_init(&par[i].lock, NULL);
        run_job(&seq[i]);
        if (seq[i].status) fail_msg("sequential job %d: %s", i, bonsai_last_error());
    }
    pthread_t th[N_THREADS], ct;
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, run_job, &par[i]), 0);
    assert_int_equal(pthread_create(&ct, NULL, canceller, par), 0);
    /* the caller's reference goes while the sessions run (they keep the model alive), once no
     * thread needs it to create its session */
    for (int i = 0; i < N_THREADS; i++)
        while (!atomic_load(&par[i].created)) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    bonsai_model_free(m);
    for (int i = 0; i < N_THREADS; i++) pthread_join(th[i], NULL);
    pthread_join(ct, NULL);
    int cancelled = 0;
    for (int i = 0; i < N_THREADS; i++) {
        job *p = &par[i], *q = &seq[i];
        if (p->status) fail_msg("job %d: status %d", i, p->status);
        if (p->reason == BONSAI_STOP_CANCELLED) {
            assert_true(i < 3);
            assert_true(p->n_out <= q->n_out);
            cancelled++;
        } else {
            assert_int_equal(p->reason, q->reason);
            assert_int_equal(p->n_out, q->n_out);
        }
        /* the same tokens as alone (a cancelled job: the same beginning) */
        assert_memory_equal(p->out, q->out, p->n_out * sizeof p->out[0]);
    }
    for (int i = 0; i < N_THREADS; i++) {
        pthread_mutex_destroy(&seq[i].lock);
        pthread_mutex_destroy(&par[i].lock);
    }
    print_message("%s%s: %d threads, %d cancelled, the rest equal to the sequential run\n", path,
                  use_chat ? " (chat)" : "", N_THREADS, cancelled);
}

static void test_stories(void **state)
{
    (void)state;
    check_model(test_data("stories260K.gguf"), false);
}

static void test_qwen3(void **state)
{
    (void)state;
    const char *tiny = getenv("BONSAI_TEST_QWEN3_TINY");
    if (!tiny || !*tiny) {
        test_data("qwen3-tokenizer.json");
        fail_msg("BONSAI_TEST_QWEN3_TINY is not set (run through meson test)");
    }
    check_model(tiny, true);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories),
        cmocka_unit_test(test_qwen3),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
