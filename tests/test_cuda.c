/*
 * The CUDA backend.
 *
 *   test_cuda registry   how the library finds the module and reports it (runs everywhere)
 *   test_cuda gpu        every operation against the CPU's scalar reference on random data, and
 *                        whole models on the GPU against the CPU (and, on the emulated module of
 *                        tests/cuda_emu, CUDA calls failing in turn); exits 77 (skipped) when no
 *                        usable GPU is present, or fails then if BONSAI_REQUIRE_GPU=1
 *   test_cuda gpu-ops    the operations only (what the sanitizer build runs on the emulator)
 */
#include "test_util.h"

#include "backend.h"
#include "half.h"
#include "q1.h"

#include <dlfcn.h>
#include <math.h>

static const bsi_backend_entry *find_entry(const char *name)
{
    const bsi_backend_entry *list;
    size_t n = bsi_backends(&list);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(list[i].name, name)) return &list[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Registry */

static void test_listing(void **state)
{
    (void)state;
    uint32_t n = bonsai_backend_count();
    assert_true(n >= 2);
    bonsai_backend_info cpu = {.struct_size = sizeof cpu};
    assert_int_equal(bonsai_backend_get(0, &cpu), 0);
    assert_string_equal(cpu.name, "cpu");
    assert_true(cpu.usable);
    assert_string_equal(cpu.path, "");
    const bsi_backend_entry *e = find_entry("cuda");
    assert_non_null(e);
    bonsai_backend_info cuda = {.struct_size = sizeof cuda};
    assert_int_equal(bonsai_backend_get((uint32_t)(e - find_entry("cpu")), &cuda), 0);
    assert_string_equal(cuda.name, "cuda");
    const char *built = getenv("BONSAI_TEST_CUDA_BUILT");
    if (built && !strcmp(built, "1")) {
        /* the module was built and BONSAI_BACKEND_PATH points at it: found and loaded */
        assert_non_null(strstr(cuda.path, "libbonsai-cuda.so"));
        assert_non_null(e->vt);
    }
    if (!cuda.usable) assert_true(strlen(cuda.reason) > 0);
    /* why it is unusable, in the user's terms: BONSAI_TEST_CUDA_REASON (the emulated module with
     * its driver missing or old), else on a machine without a driver the real module's */
    const char *reason = getenv("BONSAI_TEST_CUDA_REASON");
    void *driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!reason && built && !strcmp(built, "1") && !driver)
        reason = "no NVIDIA driver (libcuda.so.1 is not installed or does not load)";
    if (driver) dlclose(driver);
    if (reason) {
        assert_false(cuda.usable);
        if (!strstr(cuda.reason, reason))
            fail_msg("reason \"%s\", not \"%s\"", cuda.reason, reason);
    }
    print_message("cuda: %s%s (%s)\n", cuda.usable ? "usable" : "unusable: ", cuda.reason,
                  cuda.path[0] ? cuda.path : "no module");
    assert_error(bonsai_backend_get(n, &cuda), BONSAI_ERR_OUT_OF_RANGE, "backend");
    bonsai_backend_info old = {.struct_size = 4};
    assert_int_equal(bonsai_backend_get(0, &old), 0); /* an older caller's struct: nothing past */
    assert_error(bonsai_backend_get(0, NULL), BONSAI_ERR_INVALID_ARGUMENT, "NULL");
    bonsai_backend_info newer = {.struct_size = sizeof newer + 8}; /* from a newer header */
    assert_error(bonsai_backend_get(0, &newer), BONSAI_ERR_INVALID_ARGUMENT, "struct_size");
}

static void test_parse(void **state)
{
    (void)state;
    char name[16];
    int dev = -1;
    assert_int_equal(bsi_backend_parse("cuda:3", name, sizeof name, &dev), 0);
    assert_string_equal(name, "cuda");
    assert_int_equal(dev, 3);
    assert_int_equal(bsi_backend_parse("cpu", name, sizeof name, &dev), 0);
    assert_string_equal(name, "cpu");
    assert_int_equal(dev, -1); /* none named: the backend's own choice */
    assert_error(bsi_backend_parse("cuda:", name, sizeof name, &dev), BONSAI_ERR_INVALID_ARGUMENT,
                 "number");
    assert_error(bsi_backend_parse("cuda:1x", name, sizeof name, &dev), BONSAI_ERR_INVALID_ARGUMENT,
                 "number");
    assert_error(bsi_backend_parse("cuda:-1", name, sizeof name, &dev), BONSAI_ERR_INVALID_ARGUMENT,
                 "number");
    assert_error(bsi_backend_parse(":1", name, sizeof name, &dev), BONSAI_ERR_INVALID_ARGUMENT,
                 "not a backend");
    assert_error(bsi_backend_parse("averyveryverylongname", name, sizeof name, &dev),
                 BONSAI_ERR_INVALID_ARGUMENT, "not a backend");
}

/* Sessions asking for CUDA: honoured where it is usable, a clear refusal otherwise. */
static void test_sessions(void **state)
{
    (void)state;
    bonsai_model *m;
    assert_int_equal(bonsai_model_load(test_data("stories260K.gguf"), NULL, &m), 0);
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    bonsai_session *s = NULL;
    const bsi_backend_entry *e = find_entry("cuda");
    bool usable = e && e->vt && e->score > 0;
    p.backend = "cuda";
    if (usable) {
        assert_int_equal(bonsai_session_create(m, &p, &s), 0);
        char dev[16]; /* the first device that can run it (the probe's) */
        snprintf(dev, sizeof dev, "cuda:%d", e->device);
        assert_non_null(strstr(bonsai_session_backend(s), dev));
        bonsai_session_free(s);
    } else {
        assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_UNSUPPORTED, e->reason);
        assert_null(s);
        assert_non_null(strstr(bonsai_last_error(), "'cuda' is not usable"));
    }
    p.backend = "cuda:1000";
    assert_int_equal(bonsai_session_create(m, &p, &s) != 0, 1);
    assert_null(s);
    p.backend = "cuda:x";
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_INVALID_ARGUMENT, "number");
    p.backend = "tpu";
    assert_error(bonsai_session_create(m, &p, &s), BONSAI_ERR_UNSUPPORTED, "not available");
    p.backend = "auto";
    assert_int_equal(bonsai_session_create(m, &p, &s), 0);
    assert_non_null(strstr(bonsai_session_backend(s), usable ? "cuda" : "cpu"));
    bonsai_session_free(s);
    bonsai_model_free(m);
}

/* ------------------------------------------------------------------------------------------ */
/* Operations against the CPU's scalar reference */

static bsi_backend *gpu, *ref;
/* BONSAI_TEST_CUDA_EMU=1: the module is the CPU emulation of the backend (tests/cuda_emu), a
 * thousand times slower than a GPU: the same checks at fewer shapes, positions and steps */
static bool emu;

static int setup_backends(void **state)
{
    (void)state;
    /* BONSAI_TEST_REF_THREADS=1: the reference on the calling thread alone (the ThreadSanitizer
     * run: the CPU library, not instrumented there, orders its pool's work by atomics TSan does
     * not see) */
    const char *rt = getenv("BONSAI_TEST_REF_THREADS");
    bsi_backend_config c = {.n_threads = rt && atoi(rt) > 0 ? atoi(rt) : 2, .cpu_isa = "scalar"};
    if (bsi_backend_create("cpu", &c, &ref)) return -1;
    bsi_backend_config g = {0};
    return bsi_backend_create("cuda", &g, &gpu) ? -1 : 0;
}

static int teardown_backends(void **state)
{
    (void)state;
    if (gpu) gpu->vt->destroy(gpu);
    if (ref) ref->vt->destroy(ref);
    return 0;
}

/* A device copy of n floats. */
static float *dev_floats(const float *host, size_t n)
{
    void *d = NULL;
    assert_int_equal(gpu->vt->alloc(gpu, n * sizeof(float), &d), 0);
    if (host) assert_int_equal(gpu->vt->upload(gpu, d, host, n * sizeof(float)), 0);
    return d;
}

static float *host_copy(const float *dev, size_t n)
{
    float *h = malloc(n * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < n; i++) h[i] = NAN; /* poisoned */
    assert_int_equal(gpu->vt->download(gpu, h, dev, n * sizeof(float)), 0);
    return h;
}

static float *random_floats(size_t n, float scale)
{
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = scale * test_uniform();
    return p;
}

/* Random Q1_0 rows (scales 0.01 .. 0.03). */
static uint8_t *random_q1(int64_t rows, int64_t cols)
{
    size_t bytes = (size_t)rows * (size_t)(cols / BSI_QK) * BSI_Q1_BLOCK_BYTES;
    uint8_t *w = malloc(bytes);
    assert_non_null(w);
    for (size_t i = 0; i < bytes; i++) w[i] = (uint8_t)test_rand();
    for (size_t b = 0; b < bytes; b += BSI_Q1_BLOCK_BYTES) {
        uint16_t h = bsi_fp32_to_fp16(0.01f + 0.01f * fabsf(test_uniform()) * 2);
        memcpy(w + b, &h, 2);
    }
    return w;
}

/* Whether two device buffers of n floats hold the same bits. */
static void same_bits(const char *what, const float *da, const float *db, size_t n)
{
    float *a = host_copy(da, n), *b = host_copy(db, n);
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof a[i]))
            fail_msg("%s: element %zu is %.9g, want %.9g", what, i, (double)a[i], (double)b[i]);
    free(a), free(b);
}

/* Whether the module was told to leave out a switchable part (BONSAI_CUDA_PREP=0...). */
static bool switched_off(const char *name)
{
    const char *v = getenv(name);
    return v && !strcmp(v, "0");
}

/* A CUDA instance of its own, created with the environment variable `var` set to `value` (and
 * then put back as it was). */
static bsi_backend *gpu_with(const char *var, const char *value)
{
    const char *was = getenv(var);
    char *keep = was ? strdup(was) : NULL;
    setenv(var, value, 1);
    bsi_backend *be = NULL;
    bsi_backend_config g = {0};
    bonsai_status st = bsi_backend_create("cuda", &g, &be);
    if (keep)
        setenv(var, keep, 1);
    else
        unsetenv(var);
    free(keep);
    assert_int_equal(st, 0);
    return be;
}

/* y (GPU) against yr (reference): |y - yr| <= tol * bound per element. */
static void compare(const char *what, const float *y, const float *yr, const float *bound, size_t n,
                    double tol)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)y[i] - (double)yr[i]);
        double lim = tol * (bound ? (double)bound[i] : fmax(1.0, fabs((double)yr[i])));
        if (!(err <= lim))
            fail_msg("%s: element %zu is %.9g, reference %.9g (allowed error %.3g)", what, i,
                     (double)y[i], (double)yr[i], lim);
        if (lim > 0 && err / lim > worst) worst = err / lim;
    }
    print_message("  %-44s ok (worst error %.2f of the allowance)\n", what, worst);
}

/* One matrix product on both backends; bound[i] = sum_j |w_j x_j|. */
static void check_matmul(uint32_t type, const void *wdata, int64_t rows, int64_t cols,
                         int64_t n_tok, double tol)
{
    char what[96];
    snprintf(what, sizeof what, "matmul %s %lldx%lld, %lld token%s", bonsai_tensor_type_name(type),
             (long long)rows, (long long)cols, (long long)n_tok, n_tok == 1 ? "" : "s");
    bsi_matrix_desc d = {what, type, rows, cols, wdata, false};
    bsi_weight *wg, *wr;
    assert_int_equal(gpu->vt->weight_create(gpu, &d, &wg), 0);
    assert_int_equal(ref->vt->weight_create(ref, &d, &wr), 0);
    size_t nx = (size_t)(n_tok * cols), ny = (size_t)(n_tok * rows);
    float *x = random_floats(nx, 2.0f);
    float *yr = malloc(ny * sizeof *yr), *bound = malloc(ny * sizeof *bound);
    float *ax = malloc(nx * sizeof *ax);
    assert_true(yr && bound && ax);
    for (size_t i = 0; i < nx; i++) ax[i] = fabsf(x[i]);
    assert_int_equal(ref->vt->matmul(ref, wr, x, yr, n_tok), 0);
    float *dx = dev_floats(x, nx), *dy = dev_floats(NULL, ny);
    assert_int_equal(gpu->vt->matmul(gpu, wg, dx, dy, n_tok), 0);
    float *y = host_copy(dy, ny);
    /* bound: sum_j |w_j| |x_j|, rows read back through the reference */
    float *wrow = malloc((size_t)cols * sizeof *wrow);
    assert_non_null(wrow);
    for (int64_t r = 0; r < rows; r++) {
        int32_t id = (int32_t)r;
        assert_int_equal(ref->vt->get_rows(ref, wr, &id, wrow, 1), 0);
        for (int64_t t = 0; t < n_tok; t++) {
            double s = 0;
            for (int64_t j = 0; j < cols; j++) s += fabs((double)wrow[j]) * ax[t * cols + j];
            bound[t * rows + r] = (float)s;
        }
    }
    free(wrow);
    compare(what, y, yr, bound, ny, tol);
    gpu->vt->free(gpu, dx);
    gpu->vt->free(gpu, dy);
    gpu->vt->weight_free(gpu, wg);
    ref->vt->weight_free(ref, wr);
    free(x), free(ax), free(y), free(yr), free(bound);
}

static void test_q1_matmul(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {
        {1, 128, 1},    {33, 256, 1},   {2048, 2048, 1}, {6144, 2048, 2},  {2048, 6144, 3},
        {1000, 384, 8}, {777, 1024, 9}, {300, 512, 64},  {2048, 2048, 65}, {129, 4096, 130},
    };
    /* emulated: each kernel and both GEMM tile widths (64 and 128 tokens), partial tiles */
    static const int64_t small[][3] = {
        {1, 128, 1},   {33, 256, 1},   {300, 512, 2},  {260, 384, 8},
        {130, 384, 9}, {129, 512, 64}, {100, 256, 65}, {65, 384, 130},
    };
    size_t n_shapes = emu ? sizeof small / sizeof small[0] : sizeof shapes / sizeof shapes[0];
    for (size_t i = 0; i < n_shapes; i++) {
        const int64_t *sh = emu ? small[i] : shapes[i];
        uint8_t *w = random_q1(sh[0], sh[1]);
        /* fp32 activations up to 8 tokens; fp16 activations on tensor cores beyond */
        check_matmul(BONSAI_TENSOR_Q1_0, w, sh[0], sh[1], sh[2], sh[2] <= 8 ? 1e-5 : 2e-3);
        free(w);
    }
}

/* q, k and v of a prompt in one call (one tensor-core launch) equal three separate products */
static void test_q1_matmul_multi(void **state)
{
    (void)state;
    enum { COLS = 1024, N_TOK = 200 };
    static const int64_t rows[3] = {2048, 512, 320};
    bsi_weight *w[3];
    uint8_t *data[3];
    float *dx, *dy[3], *dy1[3];
    float *x = random_floats((size_t)N_TOK * COLS, 2.0f);
    dx = dev_floats(x, (size_t)N_TOK * COLS);
    for (int i = 0; i < 3; i++) {
        data[i] = random_q1(rows[i], COLS);
        bsi_matrix_desc d = {"multi", BONSAI_TENSOR_Q1_0, rows[i], COLS, data[i], false};
        assert_int_equal(gpu->vt->weight_create(gpu, &d, &w[i]), 0);
        dy[i] = dev_floats(NULL, (size_t)N_TOK * rows[i]);
        dy1[i] = dev_floats(NULL, (size_t)N_TOK * rows[i]);
        assert_int_equal(gpu->vt->matmul(gpu, w[i], dx, dy1[i], N_TOK), 0);
    }
    assert_non_null(gpu->vt->matmul_multi);
    assert_int_equal(gpu->vt->matmul_multi(gpu, 3, (const bsi_weight *const *)w, dx, dy, N_TOK), 0);
    for (int i = 0; i < 3; i++) {
        /* the same kernel and the same k order per element: equal bit for bit */
        char what[48];
        snprintf(what, sizeof what, "matmul_multi matrix %d against alone", i);
        same_bits(what, dy[i], dy1[i], (size_t)N_TOK * rows[i]);
        gpu->vt->free(gpu, dy[i]);
        gpu->vt->free(gpu, dy1[i]);
        gpu->vt->weight_free(gpu, w[i]);
        free(data[i]);
    }
    print_message("  matmul_multi q/k/v 1024 wide, 200 tokens      ok (equal to three products)\n");
    gpu->vt->free(gpu, dx);
    free(x);
}

/* matmul_add and matmul_swiglu (the residual and SwiGLU in the prompt GEMM's epilogue, or a
 * product and an element-wise kernel for a few tokens) against matmul then add, and matmul_multi
 * then silu_mul: the same products, so the same sums */
static void test_fused_products(void **state)
{
    (void)state;
    enum { COLS = 512, ROWS = 320 };
    if (switched_off("BONSAI_CUDA_EPILOGUE")) skip(); /* the module leaves them out of its table */
    assert_true(gpu->vt->matmul_add && gpu->vt->matmul_swiglu);
    bsi_weight *w[2];
    uint8_t *data[2];
    for (int i = 0; i < 2; i++) {
        data[i] = random_q1(ROWS, COLS);
        bsi_matrix_desc d = {"fused", BONSAI_TENSOR_Q1_0, ROWS, COLS, data[i], false};
        assert_int_equal(gpu->vt->weight_create(gpu, &d, &w[i]), 0);
    }
    const int64_t toks[] = {1, 5, 40, 200}; /* a few (GEMV) and a prompt (GEMM) */
    for (size_t k = 0; k < sizeof toks / sizeof *toks; k++) {
        int64_t nt = toks[k];
        size_t n = (size_t)nt * ROWS;
        float *x = random_floats((size_t)nt * COLS, 2.0f), *y0 = random_floats(n, 3.0f);
        float *dx = dev_floats(x, (size_t)nt * COLS), *dy = dev_floats(y0, n);
        float *dg = dev_floats(NULL, n), *du = dev_floats(NULL, n), *dr = dev_floats(NULL, n);
        /* y0 + W x, fused and not */
        assert_int_equal(gpu->vt->matmul_add(gpu, w[0], dx, dy, nt), 0);
        assert_int_equal(gpu->vt->matmul(gpu, w[0], dx, dg, nt), 0);
        float *want = dev_floats(y0, n);
        assert_int_equal(gpu->vt->add(gpu, want, dg, want, (int64_t)n), 0);
        char what[48]; /* the same sum, then the same addition */
        snprintf(what, sizeof what, "matmul_add of %lld tokens", (long long)nt);
        same_bits(what, dy, want, n);
        /* silu(W_gate x) * (W_up x), fused and not */
        assert_int_equal(gpu->vt->matmul_swiglu(gpu, w[0], w[1], dx, dr, nt), 0);
        float *gu[2] = {dg, du};
        const bsi_weight *const *ws = (const bsi_weight *const *)w;
        assert_int_equal(gpu->vt->matmul_multi(gpu, 2, ws, dx, gu, nt), 0);
        assert_int_equal(gpu->vt->silu_mul(gpu, dg, du, dg, (int64_t)n), 0);
        float *got = host_copy(dr, n), *expect = host_copy(dg, n);
        for (size_t j = 0; j < n; j++)
            if (!(fabsf(got[j] - expect[j]) <= 1e-6f * fabsf(expect[j]) + 1e-30f))
                fail_msg("matmul_swiglu of %lld tokens, element %zu: %.9g, want %.9g",
                         (long long)nt, j, (double)got[j], (double)expect[j]);
        free(got), free(expect);
        float *bufs[] = {dx, dy, dg, du, dr, want};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gpu->vt->free(gpu, bufs[i]);
        free(x), free(y0);
    }
    /* gate and up of different shapes: refused */
    bsi_weight *other;
    bsi_matrix_desc d = {"other", BONSAI_TENSOR_Q1_0, ROWS / 2, COLS, data[1], false};
    assert_int_equal(gpu->vt->weight_create(gpu, &d, &other), 0);
    float *dx = dev_floats(NULL, COLS), *dr = dev_floats(NULL, ROWS);
    assert_int_equal(gpu->vt->matmul_swiglu(gpu, w[0], other, dx, dr, 1),
                     BONSAI_ERR_INVALID_ARGUMENT);
    gpu->vt->free(gpu, dx);
    gpu->vt->free(gpu, dr);
    gpu->vt->weight_free(gpu, other);
    for (int i = 0; i < 2; i++) {
        gpu->vt->weight_free(gpu, w[i]);
        free(data[i]);
    }
    print_message("  matmul_add, matmul_swiglu of 1, 5, 40, 200 tokens ok (equal to the unfused "
                  "operations)\n");
}

static void test_dense_matmul(void **state)
{
    (void)state;
    enum { ROWS = 67, COLS = 256 };
    float *f = random_floats((size_t)ROWS * COLS, 1.0f);
    uint16_t *h = malloc((size_t)ROWS * COLS * 2), *bf = malloc((size_t)ROWS * COLS * 2);
    uint8_t *q8 = malloc((size_t)ROWS * (COLS / 32) * 34);
    for (size_t i = 0; i < (size_t)ROWS * COLS; i++) {
        h[i] = bsi_fp32_to_fp16(f[i]);
        uint32_t u;
        memcpy(&u, &f[i], 4);
        bf[i] = (uint16_t)(u >> 16);
    }
    for (size_t b = 0; b < (size_t)ROWS * (COLS / 32); b++) {
        uint16_t d = bsi_fp32_to_fp16(0.01f);
        memcpy(q8 + 34 * b, &d, 2);
        for (int j = 0; j < 32; j++) q8[34 * b + 2 + j] = (uint8_t)test_rand();
    }
    const void *data[] = {f, h, bf, q8};
    const uint32_t types[] = {BONSAI_TENSOR_F32, BONSAI_TENSOR_F16, BONSAI_TENSOR_BF16,
                              BONSAI_TENSOR_Q8_0};
    for (int k = 0; k < 4; k++) {
        check_matmul(types[k], data[k], ROWS, COLS, 1, 1e-5);
        check_matmul(types[k], data[k], ROWS, COLS, 5, 1e-5);
    }
    free(f), free(h), free(bf), free(q8);
}

static void test_get_rows(void **state)
{
    (void)state;
    enum { ROWS = 50, COLS = 384, N = 7 };
    uint8_t *w = random_q1(ROWS, COLS);
    float *f = random_floats((size_t)ROWS * COLS, 1.0f);
    const void *data[] = {w, f};
    const uint32_t types[] = {BONSAI_TENSOR_Q1_0, BONSAI_TENSOR_F32};
    /* 7 tokens; 100 (more than the grid's rows on the emulated device: each strides); more than
     * a grid dimension holds (65,535) */
    enum { MOST = 70000 };
    const size_t counts[] = {N, 100, MOST};
    int32_t *ids = malloc(sizeof(int32_t) * MOST);
    assert_non_null(ids);
    for (size_t i = 0; i < MOST; i++) ids[i] = (int32_t)(test_rand() % ROWS);
    ids[1] = ROWS - 1;
    for (int k = 0; k < 2; k++) {
        bsi_matrix_desc d = {"rows", types[k], ROWS, COLS, data[k], false};
        bsi_weight *wg, *wr;
        assert_int_equal(gpu->vt->weight_create(gpu, &d, &wg), 0);
        assert_int_equal(ref->vt->weight_create(ref, &d, &wr), 0);
        for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
            size_t n = counts[c];
            float *yr = malloc(sizeof(float) * n * COLS), *dy = dev_floats(NULL, n * COLS);
            assert_int_equal(ref->vt->get_rows(ref, wr, ids, yr, (int64_t)n), 0);
            assert_int_equal(gpu->vt->get_rows(gpu, wg, ids, dy, (int64_t)n), 0);
            float *y = host_copy(dy, n * COLS);
            assert_memory_equal(y, yr, sizeof(float) * n * COLS); /* exact */
            if (c == 0) {
                int32_t bad = ROWS;
                assert_error(gpu->vt->get_rows(gpu, wg, &bad, dy, 1), BONSAI_ERR_OUT_OF_RANGE,
                             "token id");
            }
            print_message("  get_rows %-5s of %6zu tokens ok (exact)\n",
                          bonsai_tensor_type_name(types[k]), n);
            gpu->vt->free(gpu, dy);
            free(y), free(yr);
        }
        gpu->vt->weight_free(gpu, wg);
        ref->vt->weight_free(ref, wr);
    }
    free(ids), free(w), free(f);
}

/* Qwen3's RoPE as bonsai synth writes it: NeoX pairs, YaRN */
static const bsi_rope qwen_rope = {.n_rot = 128,
                                   .neox = 1,
                                   .freq_base = 1e6f,
                                   .yarn_factor = 4,
                                   .yarn_orig_ctx = 8192,
                                   .yarn_beta_fast = 32,
                                   .yarn_beta_slow = 1};

static void test_small_ops(void **state)
{
    (void)state;
    enum { N = 2048, ROWS = 5 };
    float *x = random_floats(N * ROWS, 3.0f), *w = random_floats(N, 1.0f);
    float *dx = dev_floats(x, N * ROWS), *dw = dev_floats(w, N), *dy = dev_floats(NULL, N * ROWS);
    float *yr = malloc(sizeof(float) * N * ROWS);

    assert_int_equal(ref->vt->rmsnorm(ref, x, w, yr, N, ROWS, 1e-6f), 0);
    assert_int_equal(gpu->vt->rmsnorm(gpu, dx, dw, dy, N, ROWS, 1e-6f), 0);
    float *y = host_copy(dy, N * ROWS);
    compare("rmsnorm 5 x 2048", y, yr, NULL, N * ROWS, 1e-5);
    free(y);
    /* in place, as the forward pass does for q and k heads */
    assert_int_equal(gpu->vt->rmsnorm(gpu, dx, dw, dx, 128, N * ROWS / 128, 1e-6f), 0);
    assert_int_equal(ref->vt->rmsnorm(ref, x, w, yr, 128, N * ROWS / 128, 1e-6f), 0);
    y = host_copy(dx, N * ROWS);
    compare("rmsnorm in place, heads of 128", y, yr, NULL, N * ROWS, 1e-5);
    free(y);
    assert_int_equal(gpu->vt->upload(gpu, dx, x, sizeof(float) * N * ROWS), 0);

    float *u = random_floats(N * ROWS, 3.0f), *du = dev_floats(u, N * ROWS);
    assert_int_equal(ref->vt->silu_mul(ref, x, u, yr, N * ROWS), 0);
    assert_int_equal(gpu->vt->silu_mul(gpu, dx, du, dy, N * ROWS), 0);
    y = host_copy(dy, N * ROWS);
    compare("silu_mul", y, yr, NULL, N * ROWS, 1e-5);
    free(y);
    assert_int_equal(ref->vt->add(ref, x, u, yr, N * ROWS), 0);
    assert_int_equal(gpu->vt->add(gpu, dx, du, dy, N * ROWS), 0);
    y = host_copy(dy, N * ROWS);
    compare("add", y, yr, NULL, N * ROWS, 1e-6);
    free(y);
    memcpy(yr, x, sizeof(float) * N * ROWS);
    assert_int_equal(ref->vt->softmax(ref, yr, N, ROWS), 0);
    assert_int_equal(gpu->vt->softmax(gpu, dx, N, ROWS), 0);
    y = host_copy(dx, N * ROWS);
    compare("softmax 5 x 2048", y, yr, NULL, N * ROWS, 1e-5);
    free(y);

    /* RoPE: Qwen3 (NeoX pairs, YaRN) and llama (adjacent pairs) at far positions */
    bsi_rope llama = {.n_rot = 8, .neox = 0, .freq_base = 10000};
    int32_t pos[4] = {0, 1, 4095, 30000};
    for (int k = 0; k < 2; k++) {
        const bsi_rope *r = k ? &llama : &qwen_rope;
        int64_t hd = k ? 8 : 128, heads = 4;
        size_t n = (size_t)(4 * heads * hd);
        float *v = random_floats(n, 2.0f), *dv = dev_floats(v, n);
        assert_int_equal(ref->vt->rope(ref, v, pos, 4, heads, hd, r), 0);
        assert_int_equal(gpu->vt->rope(gpu, dv, pos, 4, heads, hd, r), 0);
        y = host_copy(dv, n);
        compare(k ? "rope llama (adjacent pairs)" : "rope qwen3 (NeoX, YaRN)", y, v, NULL, n, 2e-5);
        gpu->vt->free(gpu, dv);
        free(v), free(y);
    }
    gpu->vt->free(gpu, dx), gpu->vt->free(gpu, dw), gpu->vt->free(gpu, dy), gpu->vt->free(gpu, du);
    free(x), free(w), free(u), free(yr);
}

/* The emulated runtime's hooks (emulated only; defined with test_device_errors). */
static void *emu_hooks(void);
static long (*emu_calls)(const char *);
static void (*emu_fail_named)(const char *, long, long);
static void (*emu_fault_from)(const char *, long);
static long (*emu_live)(void);

/* A CPU cache (backends/cpu: each kv head's positions together) laid out as the CUDA backend
 * keeps its caches (each position's heads together), all kv->n_ctx positions. */
static uint8_t *cpu_cache_rows(const bsi_kv_shape *kv, const void *cpu)
{
    size_t hrow = bsi_kv_head_bytes(kv);
    uint8_t *rows = malloc(bsi_kv_bytes(kv));
    assert_non_null(rows);
    for (int64_t p = 0; p < kv->n_ctx; p++)
        for (int64_t h = 0; h < kv->n_head_kv; h++)
            memcpy(rows + (size_t)(p * kv->n_head_kv + h) * hrow,
                   (const uint8_t *)cpu + (size_t)(h * kv->n_ctx + p) * hrow, hrow);
    return rows;
}

/* KV cache stores and attention: the same cache contents on both, then the same queries. */
static void check_attention(uint32_t kv_type, int64_t n_head, int64_t n_kv, int64_t hd,
                            int64_t n_ctx, int64_t pos, int64_t n_tok)
{
    int64_t kv_dim = n_kv * hd;
    size_t row = kv_type == BONSAI_TENSOR_Q8_0 ? (size_t)(kv_dim / 32) * 34 : (size_t)kv_dim * 2;
    bsi_kv_shape kv = {kv_type, n_ctx, n_kv, hd};
    void *kr = calloc(1, bsi_kv_bytes(&kv)), *vr = calloc(1, bsi_kv_bytes(&kv));
    void *kg, *vg;
    assert_int_equal(gpu->vt->alloc(gpu, bsi_kv_bytes(&kv), &kg), 0);
    assert_int_equal(gpu->vt->alloc(gpu, bsi_kv_bytes(&kv), &vg), 0);
    /* the cache up to pos + n_tok, written in two batches */
    int64_t total = pos + n_tok;
    float *k = random_floats((size_t)(total * kv_dim), 2.0f),
          *v = random_floats((size_t)(total * kv_dim), 2.0f);
    float *dk = dev_floats(k, (size_t)(total * kv_dim)),
          *dv = dev_floats(v, (size_t)(total * kv_dim));
    int64_t first = total / 3;
    assert_int_equal(ref->vt->kv_store(ref, &kv, kr, vr, k, v, first, 0), 0);
    assert_int_equal(ref->vt->kv_store(ref, &kv, kr, vr, k + first * kv_dim, v + first * kv_dim,
                                       total - first, first),
                     0);
    assert_int_equal(gpu->vt->kv_store(gpu, &kv, kg, vg, dk, dv, first, 0), 0);
    assert_int_equal(gpu->vt->kv_store(gpu, &kv, kg, vg, dk + first * kv_dim, dv + first * kv_dim,
                                       total - first, first),
                     0);
    /* the stored rows themselves, each backend's in its own layout */
    uint8_t *kc = malloc((size_t)total * row), *kcpu = cpu_cache_rows(&kv, kr);
    assert_int_equal(gpu->vt->download(gpu, kc, kg, (size_t)total * row), 0);
    size_t differ = 0;
    for (size_t i = 0; i < (size_t)total * row; i++) differ += kc[i] != kcpu[i];
    free(kcpu);
    /* fp16 conversion is exact; Q8_0 may round a value at a .5 boundary differently */
    if (kv_type == BONSAI_TENSOR_F16)
        assert_int_equal(differ, 0);
    else
        assert_true(differ <= (size_t)total * row / 1000);

    size_t nq = (size_t)(n_tok * n_head * hd);
    float *q = random_floats(nq, 2.0f), *dq = dev_floats(q, nq), *dout = dev_floats(NULL, nq);
    float *outr = malloc(nq * sizeof *outr);
    float scale = 1.0f / sqrtf((float)hd);
    assert_int_equal(ref->vt->attention(ref, &kv, q, kr, vr, outr, n_tok, pos, n_head, scale), 0);
    assert_int_equal(gpu->vt->attention(gpu, &kv, dq, kg, vg, dout, n_tok, pos, n_head, scale), 0);
    float *out = host_copy(dout, nq);
    char what[96];
    snprintf(what, sizeof what, "attention %s %lld/%lld heads of %lld, %lld+%lld",
             kv_type == BONSAI_TENSOR_Q8_0 ? "q8_0" : "f16", (long long)n_head, (long long)n_kv,
             (long long)hd, (long long)pos, (long long)n_tok);
    /* prompts of 17 tokens or more (flash.cuh's FA_MIN_TOK) with heads of 64 or 128 run on
     * tensor cores: q and the probabilities in fp16 */
    bool fp16 = n_tok >= 17 && (hd == 64 || hd == 128);
    compare(what, out, outr, NULL, nq, kv_type == BONSAI_TENSOR_Q8_0 ? 2e-2 : fp16 ? 4e-3 : 1e-4);
    gpu->vt->free(gpu, kg), gpu->vt->free(gpu, vg), gpu->vt->free(gpu, dk), gpu->vt->free(gpu, dv);
    gpu->vt->free(gpu, dq), gpu->vt->free(gpu, dout);
    free(kr), free(vr), free(k), free(v), free(kc), free(q), free(outr), free(out);
}

static void test_attention(void **state)
{
    (void)state;
    check_attention(BONSAI_TENSOR_F16, 16, 8, 128, 64, 0, 1);
    check_attention(BONSAI_TENSOR_F16, 16, 8, 128, 512, 300, 1);
    check_attention(BONSAI_TENSOR_F16, 16, 8, 128, 512, 100, 37);
    check_attention(BONSAI_TENSOR_F16, 8, 4, 8, 64, 10, 5); /* stories260K's heads */
    /* the per-token kernel (heads of 32 and 96 have no tensor-core kernel) over 40 and 20 tokens:
     * the emulated module launches it over chunks of 3 tokens (ATT_GRID_Y) */
    check_attention(BONSAI_TENSOR_F16, 4, 2, 32, 64, 7, 40);
    check_attention(BONSAI_TENSOR_Q8_0, 6, 3, 96, 64, 30, 20);
    check_attention(BONSAI_TENSOR_Q8_0, 32, 8, 128, 256, 200, 3);
    /* prompts on tensor cores (flash.cuh): several query and cache tiles, head sizes 64, 128 */
    check_attention(BONSAI_TENSOR_F16, 16, 8, 128, 600, 0, 512);
    check_attention(BONSAI_TENSOR_Q8_0, 16, 8, 128, 256, 40, 100);
    check_attention(BONSAI_TENSOR_F16, 8, 2, 64, 200, 3, 130);
    /* a store of 8,666 tokens of 1,024 values at once: more Q8_0 blocks than warps in a grid of
     * 65,535 blocks (the grid is smaller: its warps stride over the blocks) */
    check_attention(BONSAI_TENSOR_Q8_0, 8, 8, 128, 13000, 12999, 1);
    /* a prompt's cache tiles shared out among blocks (flash.cuh), as a GPU with more SMs than
     * (head, query tile) pairs does it: forced here (the emulated device has 2 SMs) on an
     * instance of its own, twice each (the counters must come back to 0) */
    bsi_backend *main_gpu = gpu;
    gpu = gpu_with("BONSAI_CUDA_FA_SPLIT", "3");
    if (emu) { /* clearing the counters fails: that launch is not split, the next one is */
        void *hooks = emu_hooks();
        enum { NT = 20, POS = 200, HD = 64, N = NT * 2 * HD, KV = (POS + NT) * HD };
        float *q = random_floats(N, 1.0f), *kv = random_floats(KV, 2.0f);
        float *dq = dev_floats(q, N), *dkv = dev_floats(kv, KV);
        float *d1 = dev_floats(NULL, N), *d2 = dev_floats(NULL, N);
        void *kc = NULL, *vc = NULL;
        const bsi_kv_shape shape = {BONSAI_TENSOR_F16, POS + NT, 1, HD};
        assert_int_equal(gpu->vt->alloc(gpu, KV * 2, &kc), 0);
        assert_int_equal(gpu->vt->alloc(gpu, KV * 2, &vc), 0);
        assert_int_equal(gpu->vt->kv_store(gpu, &shape, kc, vc, dkv, dkv, POS + NT, 0), 0);
        long sets = emu_calls("cudaMemsetAsync");
        emu_fail_named("cudaMemsetAsync", 0, 1);
        assert_int_equal(gpu->vt->attention(gpu, &shape, dq, kc, vc, d1, NT, POS, 2, 0.1f), 0);
        assert_int_equal(emu_calls("cudaMemsetAsync"), sets + 1); /* it was tried, and failed */
        assert_int_equal(gpu->vt->attention(gpu, &shape, dq, kc, vc, d2, NT, POS, 2, 0.1f), 0);
        assert_int_equal(emu_calls("cudaMemsetAsync"), sets + 2); /* split this time */
        float *o1 = host_copy(d1, N), *o2 = host_copy(d2, N);
        compare("attention unsplit after a failure, split", o2, o1, NULL, N, 1e-3);
        void *bufs[] = {dq, dkv, d1, d2, kc, vc};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gpu->vt->free(gpu, bufs[i]);
        free(q), free(kv), free(o1), free(o2);
        dlclose(hooks);
    }
    for (int i = 0; i < 2; i++) {
        check_attention(BONSAI_TENSOR_F16, 16, 8, 128, 700, 600, 30);
        check_attention(BONSAI_TENSOR_Q8_0, 8, 2, 64, 400, 0, 200);
    }
    gpu->vt->destroy(gpu);
    gpu = main_gpu;
}


/* The prompt GEMMs on wgmma (BONSAI_CUDA_WGMMA=1, gemm.cuh), on an instance of its own: where
 * BONSAI_TEST_REQUIRE_WGMMA=1 (the emulator; .ci/gpu-check on an sm_90 GPU) its self-check must
 * have passed ("wgmma" in its description); then the products and their epilogues against the
 * CPU, as for the default instance. Elsewhere a failed self-check only says why (the warning). */
static void test_wgmma(void **state)
{
    bsi_backend *main_gpu = gpu;
    gpu = gpu_with("BONSAI_CUDA_WGMMA", "1");
    const char *desc = gpu->vt->describe(gpu), *req = getenv("BONSAI_TEST_REQUIRE_WGMMA");
    bool on = strstr(desc, "wgmma") != NULL;
    print_message("%s: the prompt GEMMs %s wgmma\n", desc, on ? "on" : "not on");
    if (req && !strcmp(req, "1")) assert_true(on);
    if (on) {
        test_q1_matmul(state);
        test_q1_matmul_multi(state);
        if (!switched_off("BONSAI_CUDA_EPILOGUE")) test_fused_products(state);
    }
    gpu->vt->destroy(gpu);
    gpu = main_gpu;
    if (emu) { /* a self-check that fails (its allocation, its wait): an instance without wgmma,
                * which leaves nothing behind */
        void *hooks = emu_hooks();
        const char *calls[] = {"cudaMalloc", "cudaStreamSynchronize"};
        for (int i = 0; i < 2; i++) {
            long live = emu_live();
            emu_fail_named(calls[i], 0, 1);
            bsi_backend *be = gpu_with("BONSAI_CUDA_WGMMA", "1");
            emu_fail_named(calls[i], -1, 0); /* disarmed, had it not fired */
            assert_null(strstr(be->vt->describe(be), "wgmma"));
            be->vt->destroy(be);
            assert_int_equal(emu_live(), live);
        }
        /* a self-check whose error stays (a kernel's fault is sticky: the next call returns it
         * too): no instance, and nothing left behind */
        long live = emu_live();
        emu_fail_named("cudaStreamSynchronize", 0, 2);
        setenv("BONSAI_CUDA_WGMMA", "1", 1);
        bsi_backend *be = NULL;
        bsi_backend_config g = {0};
        assert_error(bsi_backend_create("cuda", &g, &be), BONSAI_ERR_BACKEND,
                     "the wgmma self-check (BONSAI_CUDA_WGMMA=1) left the device unusable");
        unsetenv("BONSAI_CUDA_WGMMA");
        emu_fail_named("cudaStreamSynchronize", -1, 0);
        assert_null(be);
        assert_int_equal(emu_live(), live);
        dlclose(hooks);
    }
}

/* The fp16 copies a prompt's operations leave for the next tensor-core GEMM (rmsnorm, attention,
 * the SiLU GEMM): a GEMM that takes one gives the bits of the same GEMM on a copy of its input
 * (converted by to_half), and one is never taken after its input changed or by any but the next
 * operation. On the emulator, also that taking it saves the conversion's launch. */
static void test_half_copies(void **state)
{
    (void)state;
    enum { E = 256, F = 384, NT = 40, NH = 2, HD = 128 };
    bool on = !switched_off("BONSAI_CUDA_HALF_COPY");
    void *hooks = emu ? emu_hooks() : NULL;
    uint8_t *data[5];
    bsi_weight *w[5]; /* E x E, gate and up F x E, down E x F, another E x E */
    const int64_t rows[5] = {E, F, F, E, E}, cols[5] = {E, E, E, F, E};
    for (int i = 0; i < 5; i++) {
        data[i] = random_q1(rows[i], cols[i]);
        bsi_matrix_desc d = {"half", BONSAI_TENSOR_Q1_0, rows[i], cols[i], data[i], false};
        assert_int_equal(gpu->vt->weight_create(gpu, &d, &w[i]), 0);
    }
    float *x = random_floats((size_t)NT * F, 2.0f), *nw = random_floats(E, 1.0f);
    float *dx = dev_floats(x, (size_t)NT * F), *dnw = dev_floats(nw, E);
    float *h = dev_floats(NULL, (size_t)NT * F), *c = dev_floats(NULL, (size_t)NT * F);
    float *y = dev_floats(NULL, (size_t)NT * F), *yc = dev_floats(NULL, (size_t)NT * F);
    const bsi_backend_vtable *vt = gpu->vt;
    size_t bytes = (size_t)NT * E * sizeof(float);

    /* rmsnorm, then the GEMM of its output: as on a copy */
    long l0 = emu ? emu_calls("launch") : 0;
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT), 0);
    if (emu) /* rmsnorm and the GEMM, no to_half between them */
        assert_int_equal(emu_calls("launch") - l0, on ? 2 : 3);
    assert_int_equal(vt->copy(gpu, c, h, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], c, yc, NT), 0);
    same_bits("GEMM after rmsnorm", y, yc, (size_t)NT * E);

    /* the input changed after rmsnorm (by an operation, or an upload): the GEMM sees the change */
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->add(gpu, h, h, h, NT * E), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT), 0);
    assert_int_equal(vt->copy(gpu, c, h, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], c, yc, NT), 0);
    same_bits("GEMM after rmsnorm, then add", y, yc, (size_t)NT * E);
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->upload(gpu, h, x, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT), 0);
    assert_int_equal(vt->matmul(gpu, w[0], dx, yc, NT), 0);
    same_bits("GEMM after rmsnorm, then an upload", y, yc, (size_t)NT * E);
    /* another operation's output, or fewer tokens of it: converted */
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->matmul(gpu, w[0], dx, y, NT), 0);
    assert_int_equal(vt->matmul(gpu, w[0], dx, yc, NT), 0);
    same_bits("GEMM of another input after rmsnorm", y, yc, (size_t)NT * E);
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT - 11), 0);
    assert_int_equal(vt->copy(gpu, c, h, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], c, yc, NT - 11), 0);
    same_bits("GEMM of fewer tokens after rmsnorm", y, yc, (size_t)(NT - 11) * E);
    /* more tokens than the copy holds: the rows after it are other values */
    float *r = random_floats((size_t)NT * E, 5.0f);
    assert_int_equal(vt->upload(gpu, h, r, bytes), 0);
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT - 11, 1e-6f), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT), 0);
    assert_int_equal(vt->copy(gpu, c, h, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], c, yc, NT), 0);
    same_bits("GEMM of more tokens than rmsnorm's", y, yc, (size_t)NT * E);
    free(r);

    /* SwiGLU on its rmsnorm's copy, then down on SwiGLU's copy */
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->matmul_swiglu(gpu, w[1], w[2], h, y, NT), 0);
    assert_int_equal(vt->matmul(gpu, w[3], y, h, NT), 0);
    assert_int_equal(vt->copy(gpu, c, y, (size_t)NT * F * sizeof(float)), 0);
    assert_int_equal(vt->matmul(gpu, w[3], c, yc, NT), 0);
    same_bits("down projection after SwiGLU", h, yc, (size_t)NT * E);
    /* a SwiGLU of a SwiGLU's output (square gate and up): it reads the copy its own epilogue
     * must not overwrite */
    assert_int_equal(vt->rmsnorm(gpu, dx, dnw, h, E, NT, 1e-6f), 0);
    assert_int_equal(vt->matmul_swiglu(gpu, w[0], w[4], h, c, NT), 0);
    assert_int_equal(vt->matmul_swiglu(gpu, w[0], w[4], c, y, NT), 0);
    assert_int_equal(vt->copy(gpu, h, c, bytes), 0);
    assert_int_equal(vt->matmul_swiglu(gpu, w[0], w[4], h, yc, NT), 0);
    same_bits("SwiGLU after SwiGLU", y, yc, (size_t)NT * E);

    /* attention of a prompt (tensor cores: 17 tokens or more, heads of 128), then its output
     * projection */
    float *q = dev_floats(x, (size_t)NT * NH * HD);
    void *kc = NULL, *vc = NULL;
    assert_int_equal(vt->alloc(gpu, (size_t)NT * HD * 2, &kc), 0);
    assert_int_equal(vt->alloc(gpu, (size_t)NT * HD * 2, &vc), 0);
    const bsi_kv_shape kv = {BONSAI_TENSOR_F16, NT, 1, HD};
    assert_int_equal(vt->kv_store(gpu, &kv, kc, vc, dx, dx + NT * HD, NT, 0), 0);
    assert_int_equal(vt->attention(gpu, &kv, q, kc, vc, h, NT, 0, NH, 0.1f), 0);
    assert_int_equal(vt->matmul(gpu, w[0], h, y, NT), 0);
    assert_int_equal(vt->copy(gpu, c, h, bytes), 0);
    assert_int_equal(vt->matmul(gpu, w[0], c, yc, NT), 0);
    same_bits("output projection after attention", y, yc, (size_t)NT * E);

    void *bufs[] = {dx, dnw, h, c, y, yc, q, kc, vc};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) vt->free(gpu, bufs[i]);
    for (int i = 0; i < 5; i++) {
        vt->weight_free(gpu, w[i]);
        free(data[i]);
    }
    free(x), free(nw);
    if (hooks) dlclose(hooks);
    print_message("  fp16 copies %s: GEMMs after rmsnorm, SwiGLU and attention as on copies\n",
                  on ? "on" : "off (BONSAI_CUDA_HALF_COPY=0)");
}

/* A cache's rows of n_pos positions as floats (fp16, or Q8_0 blocks of 32). */
static float *cache_values(const uint8_t *c, uint32_t kv_type, int64_t n_pos, int64_t dim)
{
    size_t n = (size_t)(n_pos * dim);
    float *f = malloc(n * sizeof *f);
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        if (kv_type == BONSAI_TENSOR_F16) {
            memcpy(&h, c + 2 * i, 2);
            f[i] = bsi_fp16_to_fp32(h);
        } else {
            const uint8_t *blk = c + (i / 32) * 34;
            memcpy(&h, blk, 2);
            f[i] = bsi_fp16_to_fp32(h) * (float)(int8_t)blk[2 + i % 32];
        }
    }
    return f;
}

/* attn_prep (q/k norms, RoPE, KV stores in one go) against the CPU's rmsnorm, rope and kv_store:
 * q and k afterwards, and the cache rows at pos .. pos + n_tok - 1 (none before or after them
 * written). */
static void check_attn_prep(const char *what, uint32_t kv_type, int64_t n_head, int64_t n_kv,
                            int64_t hd, const bsi_rope *rope, bool norms, bool store,
                            int64_t pos, int64_t n_tok)
{
    int64_t Q = n_head * hd, KV = n_kv * hd, n_ctx = pos + n_tok + 2; /* 2 rows that stay 0 */
    size_t nq = (size_t)(n_tok * Q), nk = (size_t)(n_tok * KV);
    size_t row = kv_type == BONSAI_TENSOR_Q8_0 ? (size_t)(KV / 32) * 34 : (size_t)KV * 2;
    float *q = random_floats(nq, 3.0f), *k = random_floats(nk, 3.0f), *v = random_floats(nk, 3.0f);
    float *qn = random_floats((size_t)hd, 1.5f), *kn = random_floats((size_t)hd, 1.5f);
    float *dq = dev_floats(q, nq), *dk = dev_floats(k, nk), *dv = dev_floats(v, nk);
    float *dqn = dev_floats(qn, (size_t)hd), *dkn = dev_floats(kn, (size_t)hd);
    int32_t *p = malloc((size_t)n_tok * sizeof *p);
    assert_non_null(p);
    for (int64_t t = 0; t < n_tok; t++) p[t] = (int32_t)(pos + t);
    const bsi_kv_shape kv = {kv_type, n_ctx, n_kv, hd};
    uint8_t *kr = calloc((size_t)n_ctx, row), *vr = calloc((size_t)n_ctx, row);
    void *kg = NULL, *vg = NULL;
    assert_int_equal(gpu->vt->alloc(gpu, (size_t)n_ctx * row, &kg), 0);
    assert_int_equal(gpu->vt->alloc(gpu, (size_t)n_ctx * row, &vg), 0);
    assert_int_equal(gpu->vt->upload(gpu, kg, kr, (size_t)n_ctx * row), 0);
    assert_int_equal(gpu->vt->upload(gpu, vg, vr, (size_t)n_ctx * row), 0);

    if (norms) {
        assert_int_equal(ref->vt->rmsnorm(ref, q, qn, q, hd, n_tok * n_head, 1e-6f), 0);
        assert_int_equal(ref->vt->rmsnorm(ref, k, kn, k, hd, n_tok * n_kv, 1e-6f), 0);
    }
    assert_int_equal(ref->vt->rope(ref, q, p, n_tok, n_head, hd, rope), 0);
    assert_int_equal(ref->vt->rope(ref, k, p, n_tok, n_kv, hd, rope), 0);
    if (store) assert_int_equal(ref->vt->kv_store(ref, &kv, kr, vr, k, v, n_tok, pos), 0);
    bsi_attn_prep a = {.q = dq,
                       .k = dk,
                       .v = dv,
                       .q_norm = norms ? dqn : NULL,
                       .k_norm = norms ? dkn : NULL,
                       .eps = 1e-6f,
                       .pos = p,
                       .n_tok = n_tok,
                       .n_head = n_head,
                       .n_head_kv = n_kv,
                       .head_dim = hd,
                       .rope = rope,
                       .k_cache = store ? kg : NULL,
                       .v_cache = store ? vg : NULL,
                       .kv = &kv};
    assert_int_equal(gpu->vt->attn_prep(gpu, &a), 0);
    char name[128];
    float *got = host_copy(dq, nq);
    snprintf(name, sizeof name, "attn_prep %s: q", what);
    compare(name, got, q, NULL, nq, 2e-5);
    free(got);
    got = host_copy(dk, nk);
    snprintf(name, sizeof name, "attn_prep %s: k", what);
    compare(name, got, k, NULL, nk, 2e-5);
    free(got);
    /* the caches: k and v rounded as the cache holds them (a value next to a rounding boundary
     * may land on the other side: an fp16 ulp, or a Q8_0 step of its block) */
    uint8_t *cg = malloc((size_t)n_ctx * row);
    assert_non_null(cg);
    for (int c = 0; c < 2; c++) {
        assert_int_equal(gpu->vt->download(gpu, cg, c ? vg : kg, (size_t)n_ctx * row), 0);
        uint8_t *cr = cpu_cache_rows(&kv, c ? vr : kr);
        float *fg = cache_values(cg, kv_type, n_ctx, KV),
              *fr = cache_values(cr, kv_type, n_ctx, KV);
        free(cr);
        snprintf(name, sizeof name, "attn_prep %s: %s cache", what, c ? "v" : "k");
        compare(name, fg, fr, NULL, (size_t)(n_ctx * KV),
                kv_type == BONSAI_TENSOR_F16 ? 2e-3 : 3e-2);
        free(fg), free(fr);
    }
    free(cg);
    void *dev[] = {dq, dk, dv, dqn, dkn, kg, vg};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) gpu->vt->free(gpu, dev[i]);
    free(q), free(k), free(v), free(qn), free(kn), free(p), free(kr), free(vr);
}

static void test_attn_prep(void **state)
{
    (void)state;
    if (switched_off("BONSAI_CUDA_PREP")) skip(); /* the module leaves it out of its table */
    assert_non_null(gpu->vt->attn_prep);
    bsi_rope llama = {.n_rot = 64, .neox = 0, .freq_base = 10000};
    bsi_rope part = {.n_rot = 32, .neox = 1, .freq_base = 10000}; /* half of each head */
    bsi_rope tiny = {.n_rot = 8, .neox = 0, .freq_base = 10000};
    bsi_rope wide = {.n_rot = 320, .neox = 1, .freq_base = 1e6f};
    bsi_rope big = {.n_rot = 256, .neox = 1, .freq_base = 1e6f};
    bsi_rope small = {.n_rot = 16, .neox = 0, .freq_base = 10000};
    check_attn_prep("qwen3 f16, 16/8 heads of 128", BONSAI_TENSOR_F16, 16, 8, 128, &qwen_rope, true,
                    true, 100, 37);
    check_attn_prep("qwen3 q8_0", BONSAI_TENSOR_Q8_0, 16, 8, 128, &qwen_rope, true, true, 4000, 20);
    check_attn_prep("qwen3, no store", BONSAI_TENSOR_F16, 16, 8, 128, &qwen_rope, true, false, 7, 9);
    check_attn_prep("llama f16, heads of 64", BONSAI_TENSOR_F16, 8, 2, 64, &llama, false, true, 0,
                    70);
    check_attn_prep("partial rotation", BONSAI_TENSOR_Q8_0, 4, 4, 64, &part, true, true, 3, 11);
    /* heads the kernel does not take (over 256): the operations */
    check_attn_prep("heads of 320", BONSAI_TENSOR_F16, 2, 1, 320, &wide, true, true, 1, 5);
    /* the kernel's largest heads, and heads smaller than a warp (fp16 cache) */
    check_attn_prep("heads of 256", BONSAI_TENSOR_Q8_0, 4, 2, 256, &big, true, true, 9, 19);
    check_attn_prep("heads of 16, f16", BONSAI_TENSOR_F16, 6, 3, 16, &small, false, true, 2, 33);
    /* storing tokens at positions that do not follow each other: refused */
    bsi_attn_prep a = {.n_tok = 2, .n_head = 1, .n_head_kv = 1, .head_dim = 64, .rope = &llama};
    int32_t gap[2] = {3, 5};
    float *d = dev_floats(NULL, 64 * 2);
    a.q = a.k = d;
    a.v = d;
    a.pos = gap;
    a.k_cache = a.v_cache = d;
    bsi_kv_shape kv = {BONSAI_TENSOR_F16, 8, 1, 64};
    a.kv = &kv;
    assert_int_equal(gpu->vt->attn_prep(gpu, &a), BONSAI_ERR_INVALID_ARGUMENT);
    /* a Q8_0 cache of heads that are not a multiple of 32 values (bsi_kv_shape): refused by
     * attn_prep and kv_store, on both backends */
    bsi_kv_shape q8_8 = {BONSAI_TENSOR_Q8_0, 8, 4, 8};
    gap[1] = 4;
    a.n_head_kv = 4, a.head_dim = 8, a.kv = &q8_8, a.rope = &tiny;
    assert_int_equal(gpu->vt->attn_prep(gpu, &a), BONSAI_ERR_INVALID_ARGUMENT);
    assert_int_equal(gpu->vt->kv_store(gpu, &q8_8, d, d, d, d, 1, 0), BONSAI_ERR_INVALID_ARGUMENT);
    float host[32] = {0};
    uint8_t cache[8 * 34];
    assert_int_equal(ref->vt->kv_store(ref, &q8_8, cache, cache, host, host, 1, 0),
                     BONSAI_ERR_INVALID_ARGUMENT);
    /* positions beyond the cache: refused */
    assert_int_equal(gpu->vt->kv_store(gpu, &kv, d, d, d, d, 2, 7), BONSAI_ERR_INVALID_ARGUMENT);
    assert_int_equal(ref->vt->kv_store(ref, &kv, cache, cache, host, host, 1, 8),
                     BONSAI_ERR_INVALID_ARGUMENT);
    gpu->vt->free(gpu, d);
}

/* ------------------------------------------------------------------------------------------ */
/* Whole models: the GPU against the CPU */

/* How logits b [n][vocab] agree with a, the truth: the mean KL divergence of the next-token
 * distributions, the share of positions with the same top-1 token, and the share where b's top-1
 * is a's or a near tie of it: a token a ranks less than NEAR_TIE (of its top logit's magnitude,
 * at least 1) below its top. The synthetic models' logits are flat (random weights over 151,669
 * tokens: the best two are often within 0.1%), so int8 activations (the fused step's, the CPU
 * kernels') swap near-tied tokens at a few percent of positions; the checks ask >= 99% with near
 * ties counted as agreeing, and print both shares and every swap. */
#define NEAR_TIE 1e-2
typedef struct agreement {
    double kl, top1, top1_near;
} agreement;

static agreement compare_logits(const float *a, const float *b, uint32_t n, uint32_t vocab)
{
    double sum_kl = 0;
    uint32_t same = 0, near = 0;
    for (uint32_t p = 0; p < n; p++) {
        const float *x = a + (size_t)p * vocab, *y = b + (size_t)p * vocab;
        double mx = -INFINITY, my = -INFINITY;
        uint32_t ax = 0, ay = 0;
        for (uint32_t i = 0; i < vocab; i++) {
            if (x[i] > mx) mx = x[i], ax = i;
            if (y[i] > my) my = y[i], ay = i;
        }
        double sx = 0, sy = 0;
        for (uint32_t i = 0; i < vocab; i++) sx += exp(x[i] - mx), sy += exp(y[i] - my);
        double lx = log(sx), ly = log(sy), k = 0;
        for (uint32_t i = 0; i < vocab; i++) {
            double px = exp(x[i] - mx - lx);
            k += px * ((x[i] - mx - lx) - (y[i] - my - ly));
        }
        sum_kl += k;
        same += ax == ay;
        bool tie = mx - x[ay] <= NEAR_TIE * fmax(1.0, fabs(mx));
        near += ax == ay || tie;
        if (ax != ay)
            print_message("    position %u: top-1 %u (logit %.4f), here %u (%.4f there): %s\n", p,
                          ax, mx, ay, (double)x[ay], tie ? "a near tie" : "a difference");
    }
    agreement r = {sum_kl / n, (double)same / n, (double)near / n};
    return r;
}

/* Prints how logits agree and checks mean KL < 1e-3 and top-1 (near ties counted) >= 99%. */
static void check_agreement(const char *what, const float *truth, const float *got, uint32_t n,
                            uint32_t vocab)
{
    agreement r = compare_logits(truth, got, n, vocab);
    print_message("  %s: mean KL %.3g, same top-1 %.1f%% (%.1f%% with near ties) of %u\n", what,
                  r.kl, 100 * r.top1, 100 * r.top1_near, n);
    assert_true(r.kl < 1e-3 && r.top1_near >= 0.99);
}

static float *eval_kv(bonsai_model *m, const char *backend, uint32_t kv_type, const int32_t *ids,
                      uint32_t n, bool one_by_one)
{
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.backend = backend;
    p.kv_type = kv_type;
    p.n_ctx = n;
    bonsai_session *s;
    if (bonsai_session_create(m, &p, &s)) fail_msg("%s", bonsai_last_error());
    uint32_t vocab = bonsai_model_n_vocab(m);
    float *out = malloc((size_t)n * vocab * sizeof *out);
    assert_non_null(out);
    if (one_by_one) {
        for (uint32_t i = 0; i < n; i++) {
            assert_int_equal(bonsai_session_eval(s, ids + i, 1, 0), 0);
            uint32_t rows;
            memcpy(out + (size_t)i * vocab, bonsai_session_logits(s, &rows), vocab * sizeof *out);
        }
    } else {
        assert_int_equal(bonsai_session_eval(s, ids, n, BONSAI_EVAL_ALL_LOGITS), 0);
        uint32_t rows;
        memcpy(out, bonsai_session_logits(s, &rows), (size_t)n * vocab * sizeof *out);
    }
    bonsai_session_free(s);
    return out;
}

static float *eval_all(bonsai_model *m, const char *backend, const int32_t *ids, uint32_t n,
                       bool one_by_one)
{
    return eval_kv(m, backend, BONSAI_TENSOR_F16, ids, n, one_by_one);
}

static void check_model(const char *path)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    enum { MAX_N = 64 };
    const uint32_t N = emu ? 16 : MAX_N;
    uint32_t vocab = bonsai_model_n_vocab(m);
    int32_t ids[MAX_N];
    for (uint32_t i = 0; i < N; i++) ids[i] = (int32_t)(test_rand() % vocab);
    float *cpu = eval_all(m, "cpu", ids, N, false);
    float *batch = eval_all(m, "cuda", ids, N, false);
    float *step = eval_all(m, "cuda", ids, N, true);
    char what[512];
    snprintf(what, sizeof what, "%s: GPU batch vs CPU", path);
    check_agreement(what, cpu, batch, N, vocab);
    snprintf(what, sizeof what, "%s: GPU token by token vs CPU", path);
    check_agreement(what, cpu, step, N, vocab);
    free(cpu), free(batch), free(step);
    bonsai_model_free(m);
}

/* The CUDA backend's decode paths, chosen when a session is created: BONSAI_CUDA_FUSED=0 runs a
 * step operation by operation; BONSAI_CUDA_GRAPH=0 launches the fused kernels without a graph;
 * BONSAI_CUDA_PDL=0 without programmatic dependent launches (sm_90 and newer use them);
 * BONSAI_CUDA_PREFETCH=0 without asking L2 for weights and cache rows before each kernel's wait.
 * mode: those four switches in that order, each '0' or '1'. */
static float *eval_mode(bonsai_model *m, const char *mode, uint32_t kv_type, const int32_t *ids,
                        uint32_t n)
{
    static const char *const vars[] = {"BONSAI_CUDA_FUSED", "BONSAI_CUDA_GRAPH", "BONSAI_CUDA_PDL",
                                       "BONSAI_CUDA_PREFETCH"};
    char on[2] = {0, 0};
    for (size_t i = 0; i < 4; i++) {
        on[0] = mode[i];
        setenv(vars[i], on, 1);
    }
    float *out = eval_kv(m, "cuda", kv_type, ids, n, true);
    for (size_t i = 0; i < 4; i++) unsetenv(vars[i]);
    return out;
}

/* Token by token: the fused step against the per-operation one (close), and replayed from a
 * graph against launched eagerly, with dependent launches against without, with the prefetches
 * against without (the same kernels: equal to the bit). */
static void check_decode_paths(const char *path, uint32_t kv_type)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    enum { MAX_N = 48 };
    const uint32_t N = emu ? 6 : MAX_N;
    uint32_t vocab = bonsai_model_n_vocab(m);
    int32_t ids[MAX_N];
    for (uint32_t i = 0; i < N; i++) ids[i] = (int32_t)(test_rand() % vocab);
    float *ops = eval_mode(m, "0011", kv_type, ids, N);
    float *eager = eval_mode(m, "1011", kv_type, ids, N);
    float *graph = eval_mode(m, "1111", kv_type, ids, N);
    float *plain = eval_mode(m, "1101", kv_type, ids, N);
    float *no_prefetch = eval_mode(m, "1110", kv_type, ids, N);
    char what[512];
    snprintf(what, sizeof what, "%s (kv %s): fused step vs per-operation", path,
             kv_type == BONSAI_TENSOR_F16 ? "f16" : "q8_0");
    check_agreement(what, ops, eager, N, vocab);
    assert_memory_equal(eager, graph, (size_t)N * vocab * sizeof *eager);
    assert_memory_equal(plain, graph, (size_t)N * vocab * sizeof *plain);
    assert_memory_equal(no_prefetch, graph, (size_t)N * vocab * sizeof *no_prefetch);
    free(ops), free(eager), free(graph), free(plain), free(no_prefetch);
    bonsai_model_free(m);
}

/* bonsai_batch_eval of k sessions at different positions against each session alone: one fused
 * step (k <= 64: dgemv up to 8 sessions, dmma on tensor cores beyond) or steps of 64 and the
 * rest (k > 64). */
static void check_batched(const char *path, uint32_t k)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    enum { MAX_STEPS = 6, MAX_K = 70 };
    const int STEPS = emu ? 2 : MAX_STEPS;
    assert_true(k <= MAX_K);
    uint32_t vocab = bonsai_model_n_vocab(m);
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.backend = "cuda";
    p.n_ctx = 64;
    bonsai_session *bat[MAX_K], *one[MAX_K];
    int32_t tok[MAX_K][MAX_STEPS];
    for (uint32_t i = 0; i < k; i++) {
        assert_int_equal(bonsai_session_create(m, &p, &bat[i]), 0);
        assert_int_equal(bonsai_session_create(m, &p, &one[i]), 0);
        int32_t prompt[16];
        uint32_t n_prompt = 1 + i % 9; /* each session at its own position */
        for (uint32_t j = 0; j < n_prompt; j++) prompt[j] = (int32_t)(test_rand() % vocab);
        assert_int_equal(bonsai_session_eval(bat[i], prompt, n_prompt, 0), 0);
        assert_int_equal(bonsai_session_eval(one[i], prompt, n_prompt, 0), 0);
        for (int t = 0; t < STEPS; t++) tok[i][t] = (int32_t)(test_rand() % vocab);
    }
    double worst_kl = 0;
    uint32_t same = 0, near = 0;
    for (int t = 0; t < STEPS; t++) {
        bonsai_batch_item items[MAX_K];
        for (uint32_t i = 0; i < k; i++) items[i] = (bonsai_batch_item){bat[i], tok[i][t]};
        if (bonsai_batch_eval(items, k, 0)) fail_msg("%s", bonsai_last_error());
        for (uint32_t i = 0; i < k; i++) {
            assert_int_equal(bonsai_session_eval(one[i], &tok[i][t], 1, 0), 0);
            agreement r = compare_logits(bonsai_session_logits(one[i], NULL),
                                         bonsai_session_logits(bat[i], NULL), 1, vocab);
            worst_kl = r.kl > worst_kl ? r.kl : worst_kl;
            same += r.top1 == 1.0;
            near += r.top1_near == 1.0;
        }
    }
    print_message("  %s: %u sessions batched vs alone: worst KL %.3g, same top-1 %u (%u with near "
                  "ties) of %u\n",
                  path, k, worst_kl, same, near, k * STEPS);
    assert_true(worst_kl < 1e-3 && near >= (k * STEPS * 99 + 99) / 100);
    for (uint32_t i = 0; i < k; i++) {
        bonsai_session_free(bat[i]);
        bonsai_session_free(one[i]);
    }
    bonsai_model_free(m);
}

/* The qwen3-tiny of the whole-model checks; emulated, its copy with the first 4,096 token ids when
 * given (BONSAI_TEST_QWEN3_TINY_4K): the full LM head is most of the emulator's time. */
static const char *tiny_model(void)
{
    const char *small = getenv("BONSAI_TEST_QWEN3_TINY_4K");
    return emu && small && *small ? small : getenv("BONSAI_TEST_QWEN3_TINY");
}

static void test_decode(void **state)
{
    (void)state;
    const char *paths[] = {tiny_model(), getenv("BONSAI_TEST_QWEN3_1B7")};
    for (size_t i = 0; i < 2; i++) {
        if (!paths[i] || !*paths[i]) continue;
        check_decode_paths(paths[i], BONSAI_TENSOR_F16);
        check_decode_paths(paths[i], BONSAI_TENSOR_Q8_0);
        /* dgemv (up to 8), dmma with 2, 4 and 8 n-tiles, a step of 64 and the rest */
        static const uint32_t k[] = {4, 12, 24, 40, 70};
        for (size_t j = 0; j < sizeof k / sizeof k[0]; j++) check_batched(paths[i], k[j]);
    }
}

/* Sampling on the GPU (bonsai_session_sample with a plain chain) against the host's sampler on
 * the same logits, with the same seed: the same tokens (up to rare float ties at a cut). */
/* A sampling chain of check_sampling, and its sampler parameters (no penalties: on the GPU). */
typedef struct sample_case {
    const char *name;
    float temp, top_p, min_p;
    int32_t top_k;
} sample_case;

static bonsai_sampler_params case_params(const sample_case *c, uint64_t seed)
{
    bonsai_sampler_params p;
    bonsai_sampler_params_init(&p);
    p.seed = seed;
    p.temperature = c->temp;
    p.top_p = c->top_p;
    p.min_p = c->min_p;
    p.top_k = c->top_k;
    p.repeat_penalty = 1.0f;
    return p;
}

static void check_sampling(const char *path)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    bonsai_session_params sp;
    bonsai_session_params_init(&sp);
    sp.backend = "cuda";
    sp.n_ctx = 256;
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, &sp, &s), 0);
    uint32_t vocab = bonsai_model_n_vocab(m);
    static const sample_case cases[] = {
        {"greedy", 0.0f, 0.95f, 0.05f, 40},       {"default", 0.8f, 0.95f, 0.05f, 40},
        {"hot top-k 200", 1.5f, 1.0f, 0.0f, 200}, {"top-p 0.9 alone", 1.0f, 0.9f, 0.0f, 0},
        {"min-p 0.1 alone", 1.0f, 1.0f, 0.1f, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        bonsai_sampler_params p = case_params(&cases[c], 5 + c);
        bonsai_sampler *dev, *host;
        assert_int_equal(bonsai_sampler_create_default(&p, &dev), 0);
        assert_int_equal(bonsai_sampler_create_default(&p, &host), 0);
        bonsai_session_clear(s);
        /* emulated, with a full vocabulary: a few steps (each a whole LM head) */
        const int STEPS = emu && vocab > 4096 ? 4 : 100;
        int same = 0;
        double worst_lp = 0;
        int32_t tok = 1;
        for (int i = 0; i < STEPS; i++) {
            assert_int_equal(bonsai_session_eval(s, &tok, 1, 0), 0);
            int32_t td, th;
            float lpd, lph;
            assert_int_equal(bonsai_session_sample(s, dev, &td, &lpd), 0);
            const float *logits = bonsai_session_logits(s, NULL);
            assert_non_null(logits);
            assert_int_equal(bonsai_sampler_sample(host, logits, vocab, &th, &lph), 0);
            same += td == th;
            if (td == th && fabs(lpd - lph) > worst_lp) worst_lp = fabs(lpd - lph);
            tok = td;
        }
        print_message("  %s: GPU sampling, %s: same token %d of %d, worst |logprob diff| %.2g\n",
                      path, cases[c].name, same, STEPS, worst_lp);
        assert_true(same >= (cases[c].temp <= 0 ? STEPS : STEPS * 97 / 100));
        assert_true(worst_lp < 1e-3);
        bonsai_sampler_free(dev);
        bonsai_sampler_free(host);
    }
    bonsai_session_free(s);

    /* the same chains, a session each, stepped by bonsai_batch_eval and sampled by one
     * bonsai_batch_sample (one launch for every row) */
    enum { NC = sizeof cases / sizeof cases[0] };
    const int BSTEPS = emu && vocab > 4096 ? 3 : 60;
    bonsai_session *ss[NC];
    bonsai_sampler *dev[NC], *host[NC];
    bonsai_batch_item items[NC];
    bonsai_batch_sample_item picks[NC];
    for (int c = 0; c < NC; c++) {
        bonsai_sampler_params p = case_params(&cases[c], (uint64_t)(50 + c));
        assert_int_equal(bonsai_sampler_create_default(&p, &dev[c]), 0);
        assert_int_equal(bonsai_sampler_create_default(&p, &host[c]), 0);
        assert_int_equal(bonsai_session_create(m, &sp, &ss[c]), 0);
        items[c] = (bonsai_batch_item){ss[c], (int32_t)(1 + c)};
    }
    int same = 0;
    for (int i = 0; i < BSTEPS; i++) {
        assert_int_equal(bonsai_batch_eval(items, NC, 0), 0);
        for (int c = 0; c < NC; c++) picks[c] = (bonsai_batch_sample_item){ss[c], dev[c], -1, 0};
        if (bonsai_batch_sample(picks, NC, 0)) fail_msg("%s", bonsai_last_error());
        for (int c = 0; c < NC; c++) {
            const float *logits = bonsai_session_logits(ss[c], NULL);
            assert_non_null(logits);
            int32_t th;
            float lph;
            assert_int_equal(bonsai_sampler_sample(host[c], logits, vocab, &th, &lph), 0);
            same += picks[c].token == th;
            if (picks[c].token == th) assert_true(fabsf(picks[c].logprob - lph) < 1e-3f);
            items[c].token = picks[c].token;
        }
    }
    print_message("  %s: batched GPU sampling of %d chains: same token %d of %d\n", path, (int)NC,
                  same, NC * BSTEPS);
    assert_true(same >= NC * BSTEPS * 97 / 100);
    for (int c = 0; c < NC; c++) {
        bonsai_sampler_free(dev[c]);
        bonsai_sampler_free(host[c]);
        bonsai_session_free(ss[c]);
    }
    bonsai_model_free(m);
}

static void test_sampling(void **state)
{
    (void)state;
    check_sampling(test_data("stories260K.gguf")); /* 512 tokens: the whole vocabulary fits */
    const char *tiny = getenv("BONSAI_TEST_QWEN3_TINY");
    if (tiny && *tiny) check_sampling(tiny);
}

static void test_models(void **state)
{
    (void)state;
    check_model(test_data("stories260K.gguf"));
    const char *tiny = tiny_model();
    if (tiny && *tiny) check_model(tiny);
    const char *big = getenv("BONSAI_TEST_QWEN3_1B7"); /* optional: bonsai synth --shape 1.7b */
    if (big && *big) check_model(big);
}

/* ---- device errors: every failable CUDA call of a session's life failing in turn ----
 *
 * Emulated only: the emulated runtime's cuda_emu_fail_call(n, by_site) makes its n-th failable
 * call from now fail once (cudaErrorMemoryAllocation where it allocates, cudaErrorUnknown
 * elsewhere); by site, only each call site's first call counts. For n = 0, 1, 2, ... until a run
 * makes fewer calls than n, the same scenario (sessions created, a prompt, decode steps captured
 * in graphs, sampling on the device, a batch of two sessions, everything freed) runs with call n
 * failing. Each call that fails must say so with BONSAI_ERR_BACKEND or BONSAI_ERR_NO_MEMORY and a
 * message naming CUDA, leave the session able to repeat the call, and the repeated call must
 * succeed. Every run must give the fault-free run's logits and tokens to the bit (a failed graph
 * capture falls back to eager launches of the same kernels), and free every allocation, stream,
 * event and graph it made. */

static void (*emu_fail_call)(long, int);
static long (*emu_failures)(void);
static long failures_seen;

/* The emulated runtime's fault injection, from the loaded module (dlclose the handle after). */
static void *emu_hooks(void)
{
    const bsi_backend_entry *e = find_entry("cuda");
    void *h = dlopen(e->path, RTLD_NOW | RTLD_NOLOAD);
    assert_non_null(h);
    *(void **)&emu_fail_call = dlsym(h, "cuda_emu_fail_call");
    *(void **)&emu_fail_named = dlsym(h, "cuda_emu_fail_named");
    *(void **)&emu_fault_from = dlsym(h, "cuda_emu_fault_from");
    *(void **)&emu_calls = dlsym(h, "cuda_emu_calls");
    *(void **)&emu_failures = dlsym(h, "cuda_emu_failures");
    *(void **)&emu_live = dlsym(h, "cuda_emu_live");
    assert_true(emu_fail_call && emu_fail_named && emu_fault_from && emu_calls && emu_failures &&
                emu_live);
    return h;
}

/* Everything a scenario run read: logits rows and sampled tokens, in order. */
typedef struct trace {
    float *v;
    size_t n, cap;
} trace;

static void trace_add(trace *t, const float *x, size_t n)
{
    if (t->n + n > t->cap) {
        t->cap = (t->n + n) * 2;
        t->v = realloc(t->v, t->cap * sizeof *t->v);
        assert_non_null(t->v);
    }
    memcpy(t->v + t->n, x, n * sizeof *x);
    t->n += n;
}

/* A call that failed: an injected failure must have fired (the only failures expected here),
 * and been reported as a device error naming CUDA. */
static void injected_failure(bonsai_status st, const char *call)
{
    long f = emu_failures();
    const char *msg = bonsai_last_error();
    if (f == failures_seen)
        fail_msg("%s failed without an injected failure: %d (%s)", call, (int)st, msg);
    failures_seen = f;
    if (st != BONSAI_ERR_BACKEND && st != BONSAI_ERR_NO_MEMORY)
        fail_msg("%s: an injected CUDA failure gave status %d (%s)", call, (int)st, msg);
    if (!strstr(msg, "cuda")) fail_msg("%s: the message does not name CUDA: %s", call, msg);
}

/* The call; if it fails, once more (the injected failure fires once): it must succeed then. */
#define RETRY(call)                                                                                \
    do {                                                                                           \
        bonsai_status st_ = (call);                                                                \
        if (st_) {                                                                                 \
            injected_failure(st_, #call);                                                          \
            st_ = (call);                                                                          \
        }                                                                                          \
        if (st_) fail_msg("%s, repeated: %s", #call, bonsai_last_error());                         \
    } while (0)

/* The session's last row of logits, into the trace (downloaded: that copy may fail too). */
static void trace_logits(trace *t, bonsai_session *s, uint32_t vocab)
{
    uint32_t rows = 0;
    const float *l = bonsai_session_logits(s, &rows);
    if (!l) {
        injected_failure(BONSAI_ERR_BACKEND, "bonsai_session_logits");
        l = bonsai_session_logits(s, &rows);
    }
    assert_non_null(l);
    trace_add(t, l + (size_t)(rows - 1) * vocab, vocab);
}

static void error_scenario(const char *path, trace *t)
{
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    uint32_t vocab = bonsai_model_n_vocab(m);
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.backend = "cuda";
    p.n_ctx = 32;
    bonsai_session *a = NULL, *b = NULL;
    RETRY(bonsai_session_create(m, &p, &a));
    const int32_t prompt[5] = {11, 222, 3333, 44, 5};
    RETRY(bonsai_session_eval(a, prompt, 5, 0)); /* the prompt path (GEMM, attention) */
    trace_logits(t, a, vocab);
    for (int32_t i = 0; i < 2; i++) { /* decode steps: the first captures the graph */
        int32_t tok = 100 + 7 * i;
        RETRY(bonsai_session_eval(a, &tok, 1, 0));
        trace_logits(t, a, vocab);
    }
    bonsai_sampler_params sp;
    bonsai_sampler_params_init(&sp);
    sp.seed = 7; /* the default chain: the GPU runs it */
    bonsai_sampler *sa, *sb;
    assert_int_equal(bonsai_sampler_create_default(&sp, &sa), 0);
    sp.seed = 8;
    assert_int_equal(bonsai_sampler_create_default(&sp, &sb), 0);
    /* a token sampled on the device (the logits are still there), then the logits read */
    int32_t ta = 99;
    float lp;
    RETRY(bonsai_session_eval(a, &ta, 1, 0));
    RETRY(bonsai_session_sample(a, sa, &ta, &lp));
    float f = (float)ta;
    trace_add(t, &f, 1);
    trace_add(t, &lp, 1);
    trace_logits(t, a, vocab);
    /* a second session (the weights are placed already), then both in a batch */
    RETRY(bonsai_session_create(m, &p, &b));
    RETRY(bonsai_session_eval(b, prompt + 1, 1, 0));
    bonsai_batch_item items[2] = {{a, ta}, {b, 9}};
    RETRY(bonsai_batch_eval(items, 2, 0));
    bonsai_batch_sample_item picks[2] = {{a, sa, -1, 0}, {b, sb, -1, 0}};
    RETRY(bonsai_batch_sample(picks, 2, 0));
    float got[4] = {(float)picks[0].token, picks[0].logprob, (float)picks[1].token,
                    picks[1].logprob};
    trace_add(t, got, 4);
    trace_logits(t, a, vocab);
    trace_logits(t, b, vocab);
    bonsai_sampler_free(sa);
    bonsai_sampler_free(sb);
    bonsai_session_free(a);
    bonsai_session_free(b);
    bonsai_model_free(m);
}

static void test_device_errors(void **state)
{
    (void)state;
    const char *path = tiny_model();
    if (!emu || !path || !*path) skip(); /* only the emulated runtime injects failures */
    void *h = emu_hooks();
    long live0 = emu_live();
    trace want = {0};
    emu_fail_call(-1, 0);
    failures_seen = emu_failures();
    error_scenario(path, &want);
    assert_int_equal(emu_failures(), failures_seen);
    assert_int_equal(emu_live(), live0);
    /* the first call of each call site in turn; BONSAI_TEST_FAULTS=every: every call (626, 4.5
     * minutes); BONSAI_TEST_FAULT_FROM=n: from the n-th on (to reproduce a failure) */
    const char *every = getenv("BONSAI_TEST_FAULTS"), *from = getenv("BONSAI_TEST_FAULT_FROM");
    int by_site = !(every && !strcmp(every, "every"));
    long n = from ? atol(from) : 0;
    for (;; n++) {
        trace got = {0};
        long before = emu_failures();
        emu_fail_call(n, by_site);
        error_scenario(path, &got);
        bool fired = emu_failures() != before;
        failures_seen = emu_failures();
        emu_fail_call(-1, 0);
        if (got.n != want.n || memcmp(got.v, want.v, want.n * sizeof *want.v))
            fail_msg("with call %ld failing (BONSAI_TEST_FAULT_FROM=%ld CUDA_EMU_FAULT_TRACE=1 "
                     "repeats it), the results differ from the fault-free run's",
                     n, n);
        if (emu_live() != live0)
            fail_msg("with call %ld failing (BONSAI_TEST_FAULT_FROM=%ld CUDA_EMU_FAULT_TRACE=1 "
                     "repeats it), %ld allocations, streams, events or graphs are left",
                     n, n, emu_live() - live0);
        free(got.v);
        if (!fired) break; /* the scenario makes fewer calls than n + 1 */
    }
    print_message("  %s: each of %ld failable CUDA %s failing in turn: reported, repeated, the "
                  "same results, nothing left\n",
                  path, n, by_site ? "call sites (their first calls)" : "calls");
    free(want.v);
    dlclose(h);
}

/* ---- decode steps whose graph capture fails (emulated only) ----
 *
 * Out of memory while capturing (instantiating the graph, most likely) may pass: that step runs
 * its kernels one by one and the next step captures again, up to 8 such failures in a row. Any
 * other failure turns dependent launches off and captures once more, and if that fails too, turns
 * graphs off for the session. Every step must give the logits of a session whose captures never
 * fail, to the bit. */

#define CAPTURE_STEPS 12

/* A CUDA session of m that has read a 5-token prompt (its decode steps come next). */
static bonsai_session *prompted_session(bonsai_model *m)
{
    bonsai_session_params p;
    bonsai_session_params_init(&p);
    p.backend = "cuda";
    p.n_ctx = 32;
    bonsai_session *s;
    assert_int_equal(bonsai_session_create(m, &p, &s), BONSAI_OK);
    const int32_t prompt[5] = {11, 222, 3333, 44, 5};
    assert_int_equal(bonsai_session_eval(s, prompt, 5, 0), BONSAI_OK);
    return s;
}

/* A session's prompt then CAPTURE_STEPS decode steps, `call` failing `times` times in a row from
 * its first call after the prompt: the logits of each step into t, and per step the graph
 * launches and captures it made. */
static void capture_steps(bonsai_model *m, const char *call, long times, trace *t,
                          long launches[CAPTURE_STEPS], long captures[CAPTURE_STEPS])
{
    bonsai_session *s = prompted_session(m);
    long before = emu_failures();
    if (call) emu_fail_named(call, 0, times);
    for (int i = 0; i < CAPTURE_STEPS; i++) {
        long g = emu_calls("cudaGraphLaunch"), c = emu_calls("cudaStreamBeginCapture");
        int32_t tok = 100 + 7 * i;
        if (bonsai_session_eval(s, &tok, 1, 0))
            fail_msg("step %d with %s failing %ld times: %s", i, call, times,
                     bonsai_last_error());
        launches[i] = emu_calls("cudaGraphLaunch") - g;
        captures[i] = emu_calls("cudaStreamBeginCapture") - c;
        uint32_t rows = 0;
        const float *l = bonsai_session_logits(s, &rows);
        assert_non_null(l);
        trace_add(t, l, bonsai_model_n_vocab(m));
    }
    emu_fail_call(-1, 0);
    assert_int_equal(emu_failures() - before, call ? times : 0);
    failures_seen = emu_failures();
    bonsai_session_free(s);
}

/* A kernel's fault (sticky: every later call fails) while a decode step is captured: reported as
 * it is, and neither dependent launches nor graphs turned off for it (they were not the cause):
 * once the device works again, the next step captures its graph with dependent launches. */
static void fault_in_capture(bonsai_model *m)
{
    bonsai_session *s = prompted_session(m);
    assert_non_null(strstr(bonsai_session_backend(s), ", PDL)"));
    long c = emu_calls("cudaStreamBeginCapture");
    emu_fault_from("launch", 1); /* the step's second kernel: its first dependent launch */
    int32_t tok = 100;
    assert_error(bonsai_session_eval(s, &tok, 1, 0), BONSAI_ERR_BACKEND,
                 "an illegal memory access was encountered");
    assert_int_equal(emu_calls("cudaStreamBeginCapture") - c, 1); /* not again without PDL */
    emu_fail_call(-1, 0);
    failures_seen = emu_failures();
    assert_non_null(strstr(bonsai_session_backend(s), ", PDL)"));
    long g = emu_calls("cudaGraphLaunch");
    c = emu_calls("cudaStreamBeginCapture");
    assert_int_equal(bonsai_session_eval(s, &tok, 1, 0), BONSAI_OK);
    assert_int_equal(emu_calls("cudaStreamBeginCapture") - c, 1);
    assert_int_equal(emu_calls("cudaGraphLaunch") - g, 1);
    assert_non_null(strstr(bonsai_session_backend(s), ", PDL)"));
    bonsai_session_free(s);
}

static void test_capture_failures(void **state)
{
    (void)state;
    const char *path = tiny_model();
    if (!emu || !path || !*path) skip();
    void *h = emu_hooks();
    const char *pdl = getenv("BONSAI_CUDA_PDL"), *graph = getenv("BONSAI_CUDA_GRAPH");
    if ((pdl && !strcmp(pdl, "0")) || (graph && !strcmp(graph, "0"))) {
        dlclose(h);
        skip(); /* the cases below need dependent launches and graphs on */
    }
    bonsai_model *m;
    if (bonsai_model_load(path, NULL, &m)) fail_msg("%s", bonsai_last_error());
    trace want = {0};
    long launches[CAPTURE_STEPS], captures[CAPTURE_STEPS];
    capture_steps(m, NULL, 0, &want, launches, captures);
    for (int i = 0; i < CAPTURE_STEPS; i++) { /* captured on the first step, replayed by all */
        assert_int_equal(launches[i], 1);
        assert_int_equal(captures[i], i == 0);
    }
    /* {call failing, times in a row, steps without a graph, steps capturing (from the first),
     * captures in the first step} */
    static const struct {
        const char *call;
        long times;
        int eager, capturing, first;
    } cases[] = {
        {"cudaGraphInstantiate", 1, 1, 2, 1}, /* out of memory once: the next step captures */
        {"cudaGraphInstantiate", 7, 7, 8, 1}, /* seven times: the eighth step captures */
        {"cudaGraphInstantiate", 8, CAPTURE_STEPS, 8, 1}, /* eight: no graphs any more */
        {"cudaStreamEndCapture", 1, 0, 1, 2}, /* once more without PDL, in the same step */
        {"cudaStreamEndCapture", 2, CAPTURE_STEPS, 1, 2}, /* twice: no graphs any more */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        trace got = {0};
        capture_steps(m, cases[c].call, cases[c].times, &got, launches, captures);
        for (int i = 0; i < CAPTURE_STEPS; i++) {
            long l = i >= cases[c].eager, k = i == 0 ? cases[c].first : i < cases[c].capturing;
            if (launches[i] != l || captures[i] != k)
                fail_msg("%s failing %ld times: step %d made %ld graph launches and %ld "
                         "captures, not %ld and %ld",
                         cases[c].call, cases[c].times, i, launches[i], captures[i], l, k);
        }
        assert_int_equal(got.n, want.n);
        if (memcmp(got.v, want.v, want.n * sizeof *want.v))
            fail_msg("%s failing %ld times: the logits differ from those of steps without "
                     "failures",
                     cases[c].call, cases[c].times);
        free(got.v);
    }
    print_message("  %s: graph captures failing (out of memory 1, 7, 8 times; ending the capture "
                  "1, 2 times): retried or given up as they should, the same logits\n",
                  path);
    free(want.v);
    fault_in_capture(m);
    bonsai_model_free(m);
    dlclose(h);
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "registry";
    if (!strcmp(what, "registry")) {
        const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_listing),
            cmocka_unit_test(test_parse),
            cmocka_unit_test(test_sessions),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
    }
    const bsi_backend_entry *e = find_entry("cuda");
    if (!e || !e->vt || e->score <= 0) {
        const char *req = getenv("BONSAI_REQUIRE_GPU");
        fprintf(stderr, "%s: no usable CUDA backend: %s\n",
                req && !strcmp(req, "1") ? "FAIL" : "SKIP", e ? e->reason : "not registered");
        return req && !strcmp(req, "1") ? 1 : 77;
    }
    emu = getenv("BONSAI_TEST_CUDA_EMU") && !strcmp(getenv("BONSAI_TEST_CUDA_EMU"), "1");
    const char *only = getenv("BONSAI_TEST_FILTER"); /* e.g. test_decode, test_* */
    if (only && *only) cmocka_set_test_filter(only);
    const struct CMUnitTest tests[] = {
        /* the operations (gpu-ops: only these) */
        cmocka_unit_test(test_q1_matmul),    cmocka_unit_test(test_q1_matmul_multi),
        cmocka_unit_test(test_fused_products), cmocka_unit_test(test_wgmma),
        cmocka_unit_test(test_attn_prep),
        cmocka_unit_test(test_half_copies),
        cmocka_unit_test(test_dense_matmul), cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_small_ops),    cmocka_unit_test(test_attention),
        /* whole models */
        cmocka_unit_test(test_models),       cmocka_unit_test(test_decode),
        cmocka_unit_test(test_sampling),     cmocka_unit_test(test_device_errors),
        cmocka_unit_test(test_capture_failures),
    };
    size_t n = sizeof tests / sizeof *tests;
    if (!strcmp(what, "gpu-ops")) { /* the tests before the first of the whole models */
        n = 0;
        while (tests[n].test_func != test_models) n++;
    } else if (strcmp(what, "gpu")) {
        fprintf(stderr, "usage: test_cuda [registry | gpu | gpu-ops]\n");
        return 2;
    }
    return _cmocka_run_group_tests("test_cuda", tests, n, setup_backends, teardown_backends);
}
