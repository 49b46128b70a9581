/*
 * Soak test (not part of `meson test`): many generations across many sessions, with random
 * prompts, sampler settings, JSON constraints, chats, cancellations, truncations and sessions
 * freed and made again, from several threads at once. Resident memory is sampled as it goes: after
 * a warm-up it must stay flat.
 *
 *   build/tests/soak MODEL.gguf [GENERATIONS=10000] [THREADS=4] [SESSIONS_PER_THREAD=4]
 *
 * Prints the resident memory every 10% and exits 1 when its peak over the second half exceeds the
 * peak over 20-50% (after the allocator's warm-up) by more than 10% and 16 MiB, or when any call
 * failed in a way it should not.
 */
#define _POSIX_C_SOURCE 200809L
#include "bonsai/bonsai.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static bonsai_model *model;
static atomic_long done, failures, cancelled, tokens_out;
static long total;

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &res) != 2) res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static uint64_t next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static const char *const words[] = {"the",     "cat",   "sat",  "on",         "a",
                                    "mat",     "and",   "then", "ran",        "to",
                                    "garden",  "where", "it",   "found",      "\xc3\xa9t\xc3\xa9",
                                    "{\"x\":", "1}",    "\n",   "<|im_end|>", "!"};

typedef struct cancel_state {
    uint64_t rng;
    int after; /* stop after this many tokens (-1: never) */
    int seen;
} cancel_state;

static bool on_token(int32_t tok, const char *text, size_t len, float lp, void *ud)
{
    (void)tok, (void)text, (void)len, (void)lp;
    cancel_state *c = ud;
    atomic_fetch_add(&tokens_out, 1);
    return !(c->after >= 0 && ++c->seen >= c->after);
}

static void check(bonsai_status st, const char *what)
{
    /* a full context is the only failure a generation here may meet */
    if (st && st != BONSAI_ERR_CONTEXT_FULL) {
        fprintf(stderr, "soak: %s: %s (%s)\n", what, bonsai_last_error(), bonsai_status_string(st));
        atomic_fetch_add(&failures, 1);
    }
}

static void *worker(void *arg)
{
    uint64_t rng = 0x9E3779B97F4A7C15ull * (uint64_t)(uintptr_t)arg + 1;
    int n_sessions = 4;
    bonsai_session *s[16] = {0};
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.n_ctx = 256;
    sp.n_threads = 1;
    while (atomic_fetch_add(&done, 1) < total) {
        int k = (int)(next(&rng) % (uint64_t)n_sessions);
        if (!s[k] || next(&rng) % 50 == 0) { /* now and then a new session */
            bonsai_session_free(s[k]);
            s[k] = NULL;
            sp.kv_type = next(&rng) % 2 ? BONSAI_TENSOR_F16 : BONSAI_TENSOR_Q8_0;
            check(bonsai_session_create(model, &sp, &s[k]), "session_create");
            if (!s[k]) continue;
        }
        char prompt[512] = "";
        int n_words = 1 + (int)(next(&rng) % 24);
        for (int i = 0; i < n_words; i++) {
            strcat(prompt, words[next(&rng) % (sizeof words / sizeof words[0])]);
            strcat(prompt, " ");
        }
        bonsai_sampler_params p;
        bonsai_sampler_params_init(&p);
        p.seed = next(&rng);
        p.temperature = (float)(next(&rng) % 4) * 0.4f;
        p.repeat_penalty = next(&rng) % 3 ? 1.0f : 1.1f;
        bonsai_sampler *smp = NULL;
        check(bonsai_sampler_create_default(&p, &smp), "sampler");
        uint64_t mode = next(&rng) % 10;
        cancel_state cs = {rng, next(&rng) % 4 == 0 ? (int)(next(&rng) % 8) : -1, 0};
        bonsai_generate_params gp;
        bonsai_generate_params_init(&gp);
        gp.max_tokens = 1 + (uint32_t)(next(&rng) % 32);
        gp.on_token = on_token;
        gp.user_data = &cs;
        bonsai_generate_stats st = {.struct_size = sizeof st};
        if (mode == 0) { /* JSON */
            bonsai_sampler *js = NULL;
            check(bonsai_sampler_create(p.seed, &js), "sampler");
            check(bonsai_sampler_add_json(js, model, NULL, 0), "json");
            check(bonsai_sampler_add_dist(js), "dist");
            gp.sampler = js;
            gp.max_tokens += 8;
            check(bonsai_generate(s[k], prompt, &gp, &st), "generate json");
            bonsai_sampler_free(js);
        } else if (mode == 1) { /* a short chat */
            bonsai_chat *chat = NULL;
            check(bonsai_chat_create(s[k], "Be brief.", 0, &chat), "chat_create");
            gp.sampler = smp;
            if (chat) {
                check(bonsai_chat_send(chat, prompt, &gp, &st), "chat 1");
                check(bonsai_chat_send(chat, "and then?", &gp, &st), "chat 2");
            }
            bonsai_chat_free(chat);
        } else {
            gp.sampler = smp;
            if (mode == 2) bonsai_session_clear(s[k]);
            if (mode == 3)
                check(bonsai_session_truncate(s[k], bonsai_session_n_past(s[k]) / 2), "truncate");
            check(bonsai_generate(s[k], prompt, &gp, &st), "generate");
        }
        if (st.stop_reason == BONSAI_STOP_CANCELLED) atomic_fetch_add(&cancelled, 1);
        bonsai_sampler_free(smp);
        if (bonsai_session_n_past(s[k]) > 200) bonsai_session_clear(s[k]);
    }
    for (int k = 0; k < n_sessions; k++) bonsai_session_free(s[k]);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [GENERATIONS] [THREADS]\n", argv[0]);
        return 2;
    }
    total = argc > 2 ? atol(argv[2]) : 10000;
    int threads = argc > 3 ? atoi(argv[3]) : 4;
    if (total < 10 || threads < 1 || threads > 64) return 2;
    if (bonsai_model_load(argv[1], NULL, &model)) {
        fprintf(stderr, "soak: %s\n", bonsai_last_error());
        return 1;
    }
    pthread_t th[64];
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    /* the peak of 20-50% (after the allocator's warm-up) against the peak of 60-100% */
    long early = 0, late = 0;
    for (int pct = 10; pct <= 100; pct += 10) {
        while (atomic_load(&done) < total * pct / 100 && atomic_load(&done) < total) {
            struct timespec ts = {0, 50000000};
            nanosleep(&ts, NULL);
        }
        long r = rss_kib();
        if (pct >= 20 && pct <= 50 && r > early) early = r;
        if (pct >= 60 && r > late) late = r;
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("%3d%%: %ld generations, %ld tokens, %ld cancelled, resident %ld KiB, %.0f s\n", pct,
               atomic_load(&done) < total ? atomic_load(&done) : total, atomic_load(&tokens_out),
               atomic_load(&cancelled), r,
               (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
        fflush(stdout);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    bonsai_model_free(model);
    long grown = late - early;
    printf("resident memory: peak %ld KiB over 20-50%%, %ld KiB over 60-100%% (%+ld KiB); "
           "%ld failures\n",
           early, late, grown, atomic_load(&failures));
    return atomic_load(&failures) || (grown > early / 10 && grown > 16384) ? 1 : 0;
}
