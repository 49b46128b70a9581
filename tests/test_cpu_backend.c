/* The backend registry and the CPU backend's table: matmul through the real path (repacking,
 * activation quantization, thread pool) against the reference, at 1..4 threads. */
#include "test_util.h"

#include "backend.h"
#include "file.h"
#include "q1.h"

#include <math.h>
#include <unistd.h>

static void test_registry(void **state)
{
    (void)state;
    const bsi_backend_entry *list;
    size_t n = bsi_backends(&list);
    assert_true(n >= 1);
    assert_string_equal(list[0].vt->name, "cpu");
    assert_true(list[0].score > 0);

    bsi_backend *be;
    assert_int_equal(bsi_backend_create("auto", NULL, &be), 0);
    assert_non_null(strstr(be->vt->describe(be), "cpu"));
    be->vt->destroy(be);
    assert_error(bsi_backend_create("tpu", NULL, &be), BONSAI_ERR_UNSUPPORTED, "'tpu'");
    assert_null(be);
    bsi_backend_config cfg = {.n_threads = 1, .cpu_isa = "mmx"};
    assert_error(bsi_backend_create("cpu", &cfg, &be), BONSAI_ERR_UNSUPPORTED, "'mmx'");
    cfg.cpu_isa = NULL;
    assert_error(bsi_backend_create("cpu:1", &cfg, &be), BONSAI_ERR_UNSUPPORTED, "cpu:1: the CPU");
    assert_null(be);
    assert_int_equal(bsi_backend_create("cpu:0", &cfg, &be), 0);
    assert_int_equal(cfg.device, 0);
    be->vt->destroy(be);
}

static void check_q1_matmul(int threads, const char *isa, int64_t rows, int64_t cols, int64_t n_tok)
{
    bsi_backend_config cfg = {.n_threads = threads, .cpu_isa = isa};
    bsi_backend *be;
    assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
    size_t bytes = (size_t)rows * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    uint8_t *w = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)test_rand();
    for (size_t b = 0; b < bytes; b += BSI_Q1_BLOCK_BYTES) {
        uint16_t h = bsi_fp32_to_fp16(0.01f + 0.01f * fabsf(test_uniform()));
        memcpy(w + b, &h, 2);
    }
    bsi_matrix_desc d = {"w", BONSAI_TENSOR_Q1_0, rows, cols, w, false};
    bsi_weight *wt;
    assert_int_equal(be->vt->weight_create(be, &d, &wt), 0);
    float *x, *y, *ref = malloc((size_t)rows * sizeof(float));
    assert_int_equal(be->vt->alloc(be, (size_t)(n_tok * cols) * sizeof(float), (void **)&x), 0);
    assert_int_equal(be->vt->alloc(be, (size_t)(n_tok * rows) * sizeof(float), (void **)&y), 0);
    for (int64_t i = 0; i < n_tok * cols; i++) x[i] = test_uniform();
    for (int64_t i = 0; i < n_tok * rows; i++) y[i] = nanf("");
    assert_int_equal(be->vt->matmul(be, wt, x, y, n_tok), 0);
    for (int64_t t = 0; t < n_tok; t++) {
        bsi_q1_gemv_ref(w, x + t * cols, ref, rows, cols);
        double err = 0, mag = 0;
        for (int64_t r = 0; r < rows; r++) {
            assert_false(isnan(y[t * rows + r]));
            err += fabs((double)y[t * rows + r] - ref[r]);
            mag += fabs(ref[r]);
        }
        /* int8 activations: mean error well under 1% of the mean magnitude */
        if (!(err <= 0.01 * mag))
            fail_msg("%s x%d %lldx%lld token %lld: mean error %.3g of mean magnitude %.3g", isa,
                     threads, (long long)rows, (long long)cols, (long long)t, err / rows,
                     mag / rows);
    }
    /* embedding lookup of a Q1_0 row: exact dequantization */
    int32_t ids[2] = {0, (int32_t)rows - 1};
    float *row = malloc((size_t)(2 * cols) * sizeof(float));
    assert_int_equal(be->vt->get_rows(be, wt, ids, row, 2), 0);
    for (int k = 0; k < 2; k++) {
        const uint8_t *blk = w + (size_t)ids[k] * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
        uint16_t h;
        memcpy(&h, blk, 2);
        float dw = bsi_fp16_to_fp32(h);
        for (int j = 0; j < BSI_QK; j++)
            assert_true(row[k * cols + j] == ((blk[2 + j / 8] >> (j % 8)) & 1 ? dw : -dw));
    }
    int32_t bad = (int32_t)rows;
    assert_error(be->vt->get_rows(be, wt, &bad, row, 1), BONSAI_ERR_OUT_OF_RANGE, "token id");
    free(row);
    be->vt->free(be, x);
    be->vt->free(be, y);
    be->vt->weight_free(be, wt);
    be->vt->destroy(be);
    free(ref);
    free(w);
}

static void test_q1_matmul(void **state)
{
    (void)state;
    const char *isas[] = {"scalar", "avx2", "avx512", "neon"};
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++) {
        if (!bsi_isa_available((bsi_isa)bsi_isa_parse(isas[i]))) continue;
        for (int threads = 1; threads <= 4; threads++) {
            check_q1_matmul(threads, isas[i], 1000, 256, 1);
            check_q1_matmul(threads, isas[i], 77, 384, 9);
        }
    }
}

static void test_dense_and_small_ops(void **state)
{
    (void)state;
    bsi_backend_config cfg = {.n_threads = 3};
    bsi_backend *be;
    assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
    enum { ROWS = 37, COLS = 64, TOK = 3 };
    static float w[ROWS * COLS], x[TOK * COLS], y[TOK * ROWS];
    for (int i = 0; i < ROWS * COLS; i++) w[i] = test_uniform();
    for (int i = 0; i < TOK * COLS; i++) x[i] = test_uniform();
    bsi_matrix_desc d = {"f32", BONSAI_TENSOR_F32, ROWS, COLS, w, false};
    bsi_weight *wt;
    assert_int_equal(be->vt->weight_create(be, &d, &wt), 0);
    assert_int_equal(be->vt->matmul(be, wt, x, y, TOK), 0);
    for (int t = 0; t < TOK; t++)
        for (int r = 0; r < ROWS; r++) {
            double s = 0;
            for (int i = 0; i < COLS; i++) s += (double)w[r * COLS + i] * x[t * COLS + i];
            assert_true(fabs(s - y[t * ROWS + r]) < 1e-4);
        }
    int32_t id = 5;
    float row[COLS];
    assert_int_equal(be->vt->get_rows(be, wt, &id, row, 1), 0);
    assert_memory_equal(row, w + 5 * COLS, sizeof row);
    be->vt->weight_free(be, wt);

    float a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8], out[8];
    assert_int_equal(be->vt->upload(be, b, a, sizeof a), 0);
    assert_int_equal(be->vt->add(be, a, b, out, 8), 0);
    for (int i = 0; i < 8; i++) assert_true(out[i] == 2 * a[i]);
    assert_int_equal(be->vt->rmsnorm(be, a, NULL, out, 4, 2, 0.0f), 0);
    double ms = (1 + 4 + 9 + 16) / 4.0;
    assert_true(fabs(out[1] - 2 / sqrt(ms)) < 1e-5);
    assert_int_equal(be->vt->softmax(be, out, 8, 1), 0);
    double total = 0;
    for (int i = 0; i < 8; i++) total += out[i];
    assert_true(fabs(total - 1) < 1e-5);
    bsi_rope r = {.n_rot = 4, .neox = 1, .freq_base = 10000};
    int32_t pos = 0;
    float q[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(be->vt->rope(be, q, &pos, 1, 2, 4, &r), 0); /* position 0: identity */
    for (int i = 0; i < 8; i++) assert_true(fabsf(q[i] - (float)(i + 1)) < 1e-6f);
    r.n_rot = 6;
    assert_error(be->vt->rope(be, q, &pos, 1, 2, 4, &r), BONSAI_ERR_INVALID_ARGUMENT, "rope");
    be->vt->destroy(be);
}

static long resident_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &size, &resident) != 2) resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Repacking a mapped matrix grows resident memory by the packed copy only: the original's pages,
 * read once while packing, are dropped. */
static void test_repack_resident_memory(void **state)
{
    (void)state;
    if (!bsi_isa_available(BSI_ISA_AVX2)) skip(); /* only the AVX2 variant repacks */
    enum { ROWS = 8192, COLS = 4096 };
    size_t bytes = (size_t)ROWS * (COLS / BSI_QK) * BSI_Q1_BLOCK_BYTES; /* 4.7 MB */
    char path[] = "/tmp/bonsai-rss-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    uint8_t *chunk = malloc(1 << 20);
    for (size_t done = 0; done < bytes;) {
        size_t n = bytes - done < (1 << 20) ? bytes - done : (1 << 20);
        for (size_t i = 0; i < n; i++) chunk[i] = (uint8_t)test_rand();
        assert_int_equal(write(fd, chunk, n), (ssize_t)n);
        done += n;
    }
    free(chunk);
    close(fd);
    bsi_file f;
    assert_int_equal(bsi_file_open(path, true, NULL, NULL, &f), 0);
    bsi_backend_config cfg = {.n_threads = 2, .cpu_isa = "avx2"};
    bsi_backend *be;
    assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
    long before = resident_kib();
    bsi_matrix_desc d = {"big", BONSAI_TENSOR_Q1_0, ROWS, COLS, f.data, true};
    bsi_weight *w;
    assert_int_equal(be->vt->weight_create(be, &d, &w), 0);
    long grown = resident_kib() - before;
    print_message("resident memory grew by %ld KiB for a %zu KiB matrix\n", grown, bytes / 1024);
    assert_true(grown <= (long)(bytes / 1024) + 2048);
    be->vt->weight_free(be, w);
    be->vt->destroy(be);
    bsi_file_close(&f);
    unlink(path);
}

/* A Q1_0 matrix of `rows` x 2048 with random bits and small positive scales. */
static uint8_t *random_q1(int64_t rows)
{
    size_t bytes = (size_t)rows * 16 * BSI_Q1_BLOCK_BYTES;
    uint8_t *w = malloc(bytes);
    assert_non_null(w);
    uint64_t r = test_rand();
    for (size_t i = 0; i + 8 <= bytes; i += 8) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        memcpy(w + i, &r, 8);
    }
    for (size_t b = 0; b < bytes; b += BSI_Q1_BLOCK_BYTES) {
        uint16_t h = bsi_fp32_to_fp16(0.01f + 0.001f * (float)(b / BSI_Q1_BLOCK_BYTES % 7));
        memcpy(w + b, &h, 2);
    }
    return w;
}

/* The first and last 64 rows of w x (2048 columns) through the backend, against the reference. */
static void check_rows(bsi_backend *be, bsi_weight *wt, const uint8_t *w, int64_t rows,
                       const float *x)
{
    float *y = malloc((size_t)rows * sizeof(float)), ref[64];
    assert_int_equal(be->vt->matmul(be, wt, x, y, 1), 0);
    size_t row_bytes = 16 * BSI_Q1_BLOCK_BYTES;
    for (int part = 0; part < 2; part++) {
        int64_t r0 = part ? rows - 64 : 0;
        bsi_q1_gemv_ref(w + (size_t)r0 * row_bytes, x, ref, 64, 2048);
        for (int r = 0; r < 64; r++)
            if (!(fabsf(y[r0 + r] - ref[r]) <= 0.02f * (1.0f + fabsf(ref[r]))))
                fail_msg("row %lld of %lld: %g, reference %g", (long long)(r0 + r), (long long)rows,
                         y[r0 + r], ref[r]);
    }
    free(y);
}

/* Packed weights share 64 MiB slabs (huge pages): a matrix that does not fit the newest slab
 * starts another, one larger than a slab gets its own, and freeing some matrices (a slab's last
 * one unmaps it) leaves the others intact. */
static void test_weight_slabs(void **state)
{
    (void)state;
    bsi_backend_config cfg = {.n_threads = 2};
    bsi_backend *be;
    assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
    /* rows of 2048 columns: 288 bytes each; A and B 36 MiB, C 66 MiB, D 1 MiB, E 20 MiB */
    const int64_t rows[5] = {131072, 131072, 240288, 3648, 72832};
    uint8_t *w[5];
    bsi_weight *wt[5];
    float x[2048];
    for (int i = 0; i < 2048; i++) x[i] = test_uniform();
    for (int i = 0; i < 4; i++) {
        w[i] = random_q1(rows[i]);
        bsi_matrix_desc d = {"w", BONSAI_TENSOR_Q1_0, rows[i], 2048, w[i], false};
        assert_int_equal(be->vt->weight_create(be, &d, &wt[i]), 0);
    }
    for (int i = 0; i < 4; i++) check_rows(be, wt[i], w[i], rows[i], x);
    be->vt->weight_free(be, wt[0]);
    be->vt->weight_free(be, wt[2]);
    w[4] = random_q1(rows[4]);
    bsi_matrix_desc d = {"w", BONSAI_TENSOR_Q1_0, rows[4], 2048, w[4], false};
    assert_int_equal(be->vt->weight_create(be, &d, &wt[4]), 0);
    const int left[3] = {1, 3, 4};
    for (int i = 0; i < 3; i++) check_rows(be, wt[left[i]], w[left[i]], rows[left[i]], x);
    be->vt->weight_free(be, wt[3]);
    be->vt->weight_free(be, wt[1]);
    check_rows(be, wt[4], w[4], rows[4], x);
    be->vt->weight_free(be, wt[4]);
    be->vt->destroy(be);
    for (int i = 0; i < 5; i++) free(w[i]);
}

/* matmul_multi: the same results as one matmul per matrix, bit for bit; mixed types fall back. */
static void test_matmul_multi(void **state)
{
    (void)state;
    const int64_t cols = 384, rows[3] = {96, 33, 250};
    for (int threads = 1; threads <= 3; threads++)
        for (int64_t n_tok = 1; n_tok <= 5; n_tok += 4) {
            bsi_backend_config cfg = {.n_threads = threads};
            bsi_backend *be;
            assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
            uint8_t *w[3];
            bsi_weight *wt[3];
            float *y1[3], *y2[3];
            for (int i = 0; i < 3; i++) {
                size_t bytes = (size_t)rows[i] * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
                w[i] = malloc(bytes);
                for (size_t k = 0; k < bytes; k++) w[i][k] = (uint8_t)test_rand();
                for (size_t k = 0; k < bytes; k += BSI_Q1_BLOCK_BYTES) {
                    uint16_t h = bsi_fp32_to_fp16(0.01f + 0.01f * fabsf(test_uniform()));
                    memcpy(w[i] + k, &h, 2);
                }
                bsi_matrix_desc d = {"w", BONSAI_TENSOR_Q1_0, rows[i], cols, w[i], false};
                assert_int_equal(be->vt->weight_create(be, &d, &wt[i]), 0);
                y1[i] = malloc((size_t)(n_tok * rows[i]) * sizeof(float));
                y2[i] = malloc((size_t)(n_tok * rows[i]) * sizeof(float));
                for (int64_t k = 0; k < n_tok * rows[i]; k++) y2[i][k] = nanf("");
            }
            float *x = malloc((size_t)(n_tok * cols) * sizeof(float));
            for (int64_t k = 0; k < n_tok * cols; k++) x[k] = test_uniform();
            for (int i = 0; i < 3; i++)
                assert_int_equal(be->vt->matmul(be, wt[i], x, y1[i], n_tok), 0);
            assert_int_equal(
                be->vt->matmul_multi(be, 3, (const bsi_weight *const *)wt, x, y2, n_tok), 0);
            for (int i = 0; i < 3; i++)
                assert_memory_equal(y1[i], y2[i], (size_t)(n_tok * rows[i]) * sizeof(float));
            /* a matrix of another type among them: one product each */
            float f32[4 * 384];
            for (int k = 0; k < 4 * 384; k++) f32[k] = test_uniform();
            bsi_matrix_desc df = {"f", BONSAI_TENSOR_F32, 4, cols, f32, false};
            bsi_weight *wf;
            assert_int_equal(be->vt->weight_create(be, &df, &wf), 0);
            const bsi_weight *mixed[2] = {wt[0], wf};
            float yf[5 * 4], yf1[5 * 4];
            float *outs[2] = {y2[0], yf};
            assert_int_equal(be->vt->matmul_multi(be, 2, mixed, x, outs, n_tok), 0);
            assert_int_equal(be->vt->matmul(be, wf, x, yf1, n_tok), 0);
            assert_memory_equal(yf, yf1, (size_t)(n_tok * 4) * sizeof(float));
            assert_memory_equal(y1[0], y2[0], (size_t)(n_tok * rows[0]) * sizeof(float));
            be->vt->weight_free(be, wf);
            for (int i = 0; i < 3; i++) {
                be->vt->weight_free(be, wt[i]);
                free(w[i]), free(y1[i]), free(y2[i]);
            }
            free(x);
            be->vt->destroy(be);
        }
}

/* A cache row's value i (fp16, or Q8_0 blocks of 32: fp16 scale, 32 int8). */
static double cache_value(uint32_t kv_type, const uint8_t *row, int64_t i)
{
    uint16_t h;
    if (kv_type == BONSAI_TENSOR_F16) {
        memcpy(&h, row + 2 * i, 2);
        return bsi_fp16_to_fp32(h);
    }
    const uint8_t *blk = row + (size_t)(i / 32) * 34;
    memcpy(&h, blk, 2);
    return (double)bsi_fp16_to_fp32(h) * (int8_t)blk[2 + i % 32];
}

/* attention through the backend's work split (token blocks, kv heads, one head at a time when
 * threads outnumber the kv heads, the Q8_0 heads dequantized per item) against a double
 * reference computed from the caches' contents. */
static void test_attention(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {
        {4, 4, 32}, {4, 2, 64}, {6, 2, 32}, {16, 2, 128}, {12, 1, 32}};
    static const int64_t toks[] = {1, 7, 9};
    static const uint32_t types[] = {BONSAI_TENSOR_F16, BONSAI_TENSOR_Q8_0};
    for (int threads = 1; threads <= 3; threads += 2) {
        bsi_backend_config cfg = {.n_threads = threads};
        bsi_backend *be;
        assert_int_equal(bsi_backend_create("cpu", &cfg, &be), 0);
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (size_t ti = 0; ti < 3; ti++)
                for (int64_t pos = 0; pos <= 5; pos += 5)
                    for (size_t ki = 0; ki < 2; ki++) {
                        int64_t n_head = shapes[si][0], n_kv = shapes[si][1], hd = shapes[si][2];
                        int64_t n_tok = toks[ti], total = pos + n_tok, kv_dim = n_kv * hd;
                        uint32_t type = types[ki];
                        /* room for 3 more positions than used: the layout places each
                         * head's rows by the cache's size, not by the positions used */
                        bsi_kv_shape kv = {type, total + 3, n_kv, hd};
                        size_t hrow = bsi_kv_head_bytes(&kv);
                        uint8_t *kc = malloc(bsi_kv_bytes(&kv)), *vc = malloc(bsi_kv_bytes(&kv));
                        float *k = malloc((size_t)(total * kv_dim) * sizeof *k),
                              *v = malloc((size_t)(total * kv_dim) * sizeof *v);
                        for (int64_t j = 0; j < total * kv_dim; j++)
                            k[j] = test_uniform(), v[j] = test_uniform();
                        assert_int_equal(be->vt->kv_store(be, &kv, kc, vc, k, v, total, 0), 0);
                        size_t nq = (size_t)(n_tok * n_head * hd);
                        float *q = malloc(nq * sizeof *q), *out = malloc(nq * sizeof *out);
                        for (size_t j = 0; j < nq; j++) q[j] = test_uniform(), out[j] = nanf("");
                        float scale = 1.0f / sqrtf((float)hd);
                        assert_int_equal(
                            be->vt->attention(be, &kv, q, kc, vc, out, n_tok, pos, n_head, scale),
                            0);
                        /* the caches' contents as doubles, [kv head][position][hd], read as
                         * the CPU lays them out: a head's positions together */
                        size_t nkv = (size_t)(total * kv_dim);
                        double *kd = malloc(nkv * sizeof *kd), *vd = malloc(nkv * sizeof *vd);
                        for (int64_t h = 0; h < n_kv; h++)
                            for (int64_t p = 0; p < total; p++)
                                for (int64_t i = 0; i < hd; i++) {
                                    size_t at = (size_t)((h * total + p) * hd + i);
                                    size_t r = (size_t)(h * kv.n_ctx + p) * hrow;
                                    kd[at] = cache_value(type, kc + r, i);
                                    vd[at] = cache_value(type, vc + r, i);
                                }
                        double *sc = malloc((size_t)total * sizeof *sc),
                               *r = malloc((size_t)hd * sizeof *r);
                        for (int64_t t = 0; t < n_tok; t++)
                            for (int64_t h = 0; h < n_head; h++) {
                                int64_t kvh = h / (n_head / n_kv);
                                test_attention_ref(q + (t * n_head + h) * hd, kd + kvh * total * hd,
                                                   vd + kvh * total * hd, pos + t + 1, hd, scale,
                                                   sc, r);
                                for (int64_t i = 0; i < hd; i++) {
                                    float o = out[(t * n_head + h) * hd + i];
                                    double tol = type == BONSAI_TENSOR_F16 ? 1e-5 : 2e-3;
                                    if (!(fabs(o - r[i]) <= tol * (1 + fabs(r[i]))))
                                        fail_msg("attention %s, %d threads, %lld/%lld heads of "
                                                 "%lld, %lld+%lld: token %lld head %lld [%lld] "
                                                 "%g vs %g",
                                                 type == BONSAI_TENSOR_F16 ? "f16" : "q8_0",
                                                 threads, (long long)n_head, (long long)n_kv,
                                                 (long long)hd, (long long)pos, (long long)n_tok,
                                                 (long long)t, (long long)h, (long long)i,
                                                 (double)o, r[i]);
                                }
                            }
                        free(kd), free(vd), free(r);
                        free(kc), free(vc), free(k), free(v), free(q), free(out), free(sc);
                    }
        be->vt->destroy(be);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_q1_matmul),
        cmocka_unit_test(test_matmul_multi),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_dense_and_small_ops),
        cmocka_unit_test(test_repack_resident_memory),
        cmocka_unit_test(test_weight_slabs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
