/*
 * The CPU ops (backends/cpu/ops.h) of every available ISA against straightforward double-precision
 * references written here, on seeded random data (never zero), at sizes with odd row counts and
 * lengths that are not multiples of the vector width. Outputs are poisoned with NaN before each
 * call and checked in full; rows outside [r0, r1) and the guard zones around every output must
 * still hold the poison afterwards. Also: the RoPE angle table against FORMAT.md's YaRN formulas,
 * and the fp16 / bf16 conversions (against F16C hardware when the CPU has it).
 */
#include "test_util.h"

#include "ops.h"
#include "q1.h"

#include <math.h>
#include <stdbool.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#define TOL    1e-5  /* relative, fp32 paths (and exact F16/BF16/Q8_0 inputs) */
#define TINY   1e-36 /* absolute floor, for results that underflow in fp32 */
#define GUARD  16    /* poisoned floats on each side of an output */
#define POISON 0x7fc5a5a5u

/* ---- helpers ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
    rng_state = s ? s : 0x9e3779b97f4a7c15ull;
}

static uint64_t rng_u64(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void) /* [0, 1) */
{
    return (double)(rng_u64() >> 11) * 0x1p-53;
}

/* Uniform in [-a, a], never zero. */
static float rng_float(double a)
{
    float f;
    do {
        f = (float)((2 * rng_unit() - 1) * a);
    } while (f == 0);
    return f;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

static float *random_floats(int64_t n, double a)
{
    float *v = xmalloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = rng_float(a);
    return v;
}

static float poison_value(void)
{
    uint32_t bits = POISON;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static bool is_poison(float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    return bits == POISON;
}

/* n floats, all poisoned, with GUARD poisoned floats on each side. */
static float *guarded_alloc(int64_t n)
{
    float *b = xmalloc((size_t)(n + 2 * GUARD) * sizeof *b);
    for (int64_t i = 0; i < n + 2 * GUARD; i++) b[i] = poison_value();
    return b + GUARD;
}

static void guarded_free(float *p)
{
    free(p - GUARD);
}

static void check_guards(const float *p, int64_t n, const char *ctx)
{
    for (int64_t i = -GUARD; i < 0; i++)
        if (!is_poison(p[i]))
            fail_msg("%s: wrote %lld floats before the output", ctx, -(long long)i);
    for (int64_t i = n; i < n + GUARD; i++)
        if (!is_poison(p[i]))
            fail_msg("%s: wrote past the output (element %lld of %lld)", ctx, (long long)i,
                     (long long)n);
}

/* got must be within tol * scale + TINY of ref (a NaN fails). */
static void check_close(const char *ctx, int64_t i, float got, double ref, double scale, double tol)
{
    double err = fabs((double)got - ref);
    if (!(err <= tol * scale + TINY))
        fail_msg("%s: element %lld is %.9g, expected %.9g (error %.3g, allowed %.3g)", ctx,
                 (long long)i, (double)got, ref, err, tol * scale + TINY);
}

/* Exact values of the storage types, decoded here independently of the library. */
static double half_value(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 31 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return h >> 15 ? -v : v;
}

static double bf16_value(uint16_t h)
{
    int e = (h >> 7) & 255, m = h & 127;
    double v = e == 255 ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
    return h >> 15 ? -v : v;
}

static void store_u16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}

/* Random half / bf16 bits: finite, non-zero, sign random, exponent in [e0, e1] (0: subnormal). */
static uint16_t random_half(int e0, int e1)
{
    uint16_t m, e = (uint16_t)(e0 + (int)(rng_u64() % (uint64_t)(e1 - e0 + 1)));
    do {
        m = (uint16_t)(rng_u64() & 1023);
    } while (e == 0 && m == 0);
    return (uint16_t)((rng_u64() & 1) << 15 | (uint32_t)e << 10 | m);
}

static uint16_t random_bf16(int e0, int e1)
{
    uint16_t m, e = (uint16_t)(e0 + (int)(rng_u64() % (uint64_t)(e1 - e0 + 1)));
    do {
        m = (uint16_t)(rng_u64() & 127);
    } while (e == 0 && m == 0);
    return (uint16_t)((rng_u64() & 1) << 15 | (uint32_t)e << 7 | m);
}

/* The ISAs to test: every one this build and this CPU can run. */
#define FOR_EACH_OPS(ops)                                                                          \
    for (int isa_ = 0; isa_ < BSI_ISA_COUNT; isa_++)                                               \
        for (const bsi_cpu_ops *ops =                                                              \
                 bsi_isa_available((bsi_isa)isa_) ? bsi_cpu_ops_for((bsi_isa)isa_) : NULL;         \
             ops; ops = NULL)

/* ---- the op tables ---- */

static void test_ops_tables(void **state)
{
    (void)state;
    assert_ptr_equal(bsi_cpu_ops_for(BSI_ISA_SCALAR), &bsi_cpu_ops_scalar);
    for (int i = 0; i < BSI_ISA_COUNT; i++) {
        const bsi_cpu_ops *o = bsi_cpu_ops_for((bsi_isa)i);
        assert_non_null(o);
        assert_true(o->gemv_f32 && o->gemv_f16 && o->gemv_bf16 && o->gemv_q8_0 && o->rmsnorm &&
                    o->softmax && o->silu_mul && o->add && o->rope && o->attn_heads && o->to_f16 &&
                    o->q8_0_to_f16);
        if (bsi_isa_available((bsi_isa)i)) { /* fp16 rows: bit for bit the scalar conversion */
            enum { N = 203 };
            float x[N];
            uint16_t want[N], got[N];
            for (int j = 0; j < N; j++)
                x[j] = (j % 7 == 0 ? 1e-6f : j % 11 == 0 ? 7e4f : 3.0f) * test_uniform();
            bsi_cpu_ops_scalar.to_f16(x, want, N);
            memset(got, 0x5a, sizeof got);
            o->to_f16(x, got, N);
            assert_memory_equal(got, want, sizeof got);
            /* Q8_0 blocks to fp16, bit for bit the scalar conversion: scales from tiny (fp16
             * subnormal products) to large (products past fp16's range), every int8 */
            enum { NB = 9 };
            uint8_t blk[NB * 34];
            uint16_t hw[NB * 32], hg[NB * 32];
            static const float scales[NB] = {1e-7f, 3e-5f, 1e-3f,  0.02f, 0.5f,
                                             1.0f,  7.0f,  300.0f, 600.0f};
            for (int b = 0; b < NB; b++) {
                uint16_t d = bsi_fp32_to_fp16(scales[b] * (0.5f + test_uniform()));
                memcpy(blk + b * 34, &d, 2);
                for (int j = 0; j < 32; j++)
                    blk[b * 34 + 2 + j] =
                        (uint8_t)(b == 0 ? j * 8 - 128 : (int)(test_rand() % 256));
            }
            bsi_cpu_ops_scalar.q8_0_to_f16(blk, hw, NB);
            memset(hg, 0x5a, sizeof hg);
            o->q8_0_to_f16(blk, hg, NB);
            assert_memory_equal(hg, hw, sizeof hg);
        }
        /* an ISA without its own table gets the scalar one or (AVX-512) the AVX2 one */
        assert_true(o->isa == (bsi_isa)i || o->isa == BSI_ISA_SCALAR ||
                    (i == BSI_ISA_AVX512 && o->isa == BSI_ISA_AVX2));
        if (bsi_isa_available((bsi_isa)i) && i == BSI_ISA_AVX2) assert_int_equal(o->isa, i);
        print_message("%-7s %s -> %s ops\n", bsi_isa_name((bsi_isa)i),
                      bsi_isa_available((bsi_isa)i) ? "available  " : "unavailable",
                      bsi_isa_name(o->isa));
    }
}

/* ---- gemv ---- */

typedef enum wtype { W_F32, W_F16, W_BF16, W_Q8_0 } wtype;

static const char *const wtype_name[] = {"f32", "f16", "bf16", "q8_0"};

static size_t row_bytes(wtype t, int64_t cols)
{
    switch (t) {
    case W_F32: return (size_t)cols * 4;
    case W_F16:
    case W_BF16: return (size_t)cols * 2;
    case W_Q8_0: return (size_t)(cols / 32) * 34;
    }
    return 0;
}

/* A random matrix in the file layout at `w` and its exact values in `val`. */
static void fill_matrix(wtype t, uint8_t *w, double *val, int64_t rows, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = w + (size_t)r * row_bytes(t, cols);
        double *v = val + r * cols;
        for (int64_t i = 0; i < cols; i++) {
            if (t == W_F32) {
                float f = rng_float(1.0);
                memcpy(row + 4 * i, &f, 4);
                v[i] = f;
            } else if (t == W_F16) {
                /* mostly [2^-6, 4), one in 16 subnormal */
                uint16_t h = rng_u64() % 16 ? random_half(9, 16) : random_half(0, 0);
                store_u16(row + 2 * i, h);
                v[i] = half_value(h);
            } else if (t == W_BF16) {
                uint16_t h = random_bf16(120, 128);
                store_u16(row + 2 * i, h);
                v[i] = bf16_value(h);
            } else if (i % 32 == 0) { /* Q8_0: one block of 32 */
                uint8_t *blk = row + 34 * (i / 32);
                uint16_t d = random_half(5, 12);
                store_u16(blk, d);
                for (int j = 0; j < 32; j++) {
                    int8_t q;
                    do {
                        q = (int8_t)(uint8_t)rng_u64();
                    } while (q == 0);
                    blk[2 + j] = (uint8_t)q;
                    v[i + j] = half_value(d) * q;
                }
            }
        }
    }
}

typedef void (*gemv_fn)(const void *, const float *, float *, int64_t, int64_t, int64_t);

static gemv_fn gemv_of(const bsi_cpu_ops *ops, wtype t)
{
    return t == W_F32    ? ops->gemv_f32
           : t == W_F16  ? ops->gemv_f16
           : t == W_BF16 ? ops->gemv_bf16
                         : ops->gemv_q8_0;
}

static void check_gemv(wtype t, int64_t rows, int64_t cols)
{
    /* the matrix starts at an odd-ish offset: GGUF rows of F16 / Q8_0 are not vector aligned */
    size_t off = t == W_F32 ? 4 : t == W_Q8_0 ? 1 : 2;
    size_t bytes = (size_t)rows * row_bytes(t, cols);
    uint8_t *buf = xmalloc(off + bytes), *w = buf + off;
    double *val = xmalloc((size_t)(rows * cols) * sizeof *val);
    double *ref = xmalloc((size_t)rows * sizeof *ref), *mag = xmalloc((size_t)rows * sizeof *mag);
    fill_matrix(t, w, val, rows, cols);
    float *x = random_floats(cols, 1.0);
    for (int64_t r = 0; r < rows; r++) {
        ref[r] = mag[r] = 0;
        for (int64_t i = 0; i < cols; i++) {
            ref[r] += val[r * cols + i] * x[i];
            mag[r] += fabs(val[r * cols + i] * x[i]);
        }
    }
    /* the whole matrix, the inner rows, the last row alone, and nothing */
    int64_t ranges[4][2] = {{0, rows}, {1, rows - 1}, {rows - 1, rows}, {rows / 2, rows / 2}};
    FOR_EACH_OPS(ops)
    {
        for (int k = 0; k < 4; k++) {
            int64_t r0 = ranges[k][0], r1 = ranges[k][1];
            if (r0 > r1 || r0 < 0) continue;
            char ctx[128];
            snprintf(ctx, sizeof ctx, "%s gemv_%s rows %lld cols %lld [%lld, %lld)",
                     bsi_isa_name(ops->isa), wtype_name[t], (long long)rows, (long long)cols,
                     (long long)r0, (long long)r1);
            float *y = guarded_alloc(rows);
            gemv_of(ops, t)(w, x, y, r0, r1, cols);
            for (int64_t r = 0; r < rows; r++) {
                if (r >= r0 && r < r1)
                    check_close(ctx, r, y[r], ref[r], mag[r], TOL);
                else if (!is_poison(y[r]))
                    fail_msg("%s: wrote row %lld outside the range", ctx, (long long)r);
            }
            check_guards(y, rows, ctx);
            guarded_free(y);
        }
    }
    free(x);
    free(ref);
    free(mag);
    free(val);
    free(buf);
}

static const int64_t gemv_rows[] = {1, 2, 5, 13};

static void run_gemv_dense(wtype t)
{
    static const int64_t cols[] = {1, 3, 7, 8, 9, 16, 31, 32, 33, 40, 63, 100, 256, 1000, 4099};
    rng_seed(0x1234 + (uint64_t)t);
    for (size_t i = 0; i < sizeof gemv_rows / sizeof *gemv_rows; i++)
        for (size_t j = 0; j < sizeof cols / sizeof *cols; j++)
            check_gemv(t, gemv_rows[i], cols[j]);
}

static void test_gemv_f32(void **state)
{
    (void)state;
    run_gemv_dense(W_F32);
}

static void test_gemv_f16(void **state)
{
    (void)state;
    run_gemv_dense(W_F16);
}

static void test_gemv_bf16(void **state)
{
    (void)state;
    run_gemv_dense(W_BF16);
}

static void test_gemv_q8_0(void **state)
{
    (void)state;
    static const int64_t cols[] = {32, 64, 96, 160, 1024, 4096};
    rng_seed(0x5678);
    for (size_t i = 0; i < sizeof gemv_rows / sizeof *gemv_rows; i++)
        for (size_t j = 0; j < sizeof cols / sizeof *cols; j++)
            check_gemv(W_Q8_0, gemv_rows[i], cols[j]);
}

/* ---- element-wise ops and reductions ---- */

static const int64_t vec_sizes[] = {1, 7, 8, 9, 64, 100, 1000, 4096};
#define N_VEC_SIZES (sizeof vec_sizes / sizeof *vec_sizes)

static void test_rmsnorm(void **state)
{
    (void)state;
    rng_seed(0x9abc);
    for (size_t k = 0; k < N_VEC_SIZES; k++) {
        int64_t n = vec_sizes[k];
        for (int variant = 0; variant < 4; variant++) {
            bool weighted = variant & 1;
            float eps = variant & 2 ? 1e-5f : 1e-6f;
            float *x = random_floats(n, variant & 2 ? 100.0 : 2.0);
            float *w = weighted ? random_floats(n, 1.5) : NULL;
            double ss = 0;
            for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
            double scale = 1 / sqrt(ss / (double)n + (double)eps);
            FOR_EACH_OPS(ops)
            {
                char ctx[96];
                snprintf(ctx, sizeof ctx, "%s rmsnorm n %lld%s eps %g", bsi_isa_name(ops->isa),
                         (long long)n, weighted ? " weighted" : "", (double)eps);
                float *y = guarded_alloc(n);
                ops->rmsnorm(x, w, y, n, eps);
                for (int64_t i = 0; i < n; i++) {
                    double ref = x[i] * scale * (w ? w[i] : 1.0);
                    check_close(ctx, i, y[i], ref, fabs(ref), TOL);
                }
                check_guards(y, n, ctx);
                guarded_free(y);
            }
            free(x);
            free(w);
        }
    }
}

static void test_softmax(void **state)
{
    (void)state;
    rng_seed(0xdef0);
    static const double spread[] = {1, 10, 100};
    for (size_t k = 0; k < N_VEC_SIZES; k++) {
        int64_t n = vec_sizes[k];
        for (int s = 0; s < 3; s++) {
            float *x = random_floats(n, spread[s]);
            double *ref = xmalloc((size_t)n * sizeof *ref), max = x[0], sum = 0;
            for (int64_t i = 1; i < n; i++) max = fmax(max, x[i]);
            for (int64_t i = 0; i < n; i++) sum += ref[i] = exp(x[i] - max);
            for (int64_t i = 0; i < n; i++) ref[i] /= sum;
            FOR_EACH_OPS(ops)
            {
                char ctx[96];
                snprintf(ctx, sizeof ctx, "%s softmax n %lld spread %g", bsi_isa_name(ops->isa),
                         (long long)n, spread[s]);
                float *y = guarded_alloc(n);
                memcpy(y, x, (size_t)n * sizeof *y);
                ops->softmax(y, n);
                double total = 0;
                for (int64_t i = 0; i < n; i++) {
                    /* fp32 rounds x - max: e^(x - max) is then off by up to |x - max| ulps */
                    check_close(ctx, i, y[i], ref[i], ref[i] * fmax(1, max - x[i]), TOL);
                    total += y[i];
                }
                if (!(fabs(total - 1) <= TOL)) fail_msg("%s: sums to %.9g", ctx, total);
                check_guards(y, n, ctx);
                guarded_free(y);
            }
            free(ref);
            free(x);
        }
    }
}

static void test_silu_mul(void **state)
{
    (void)state;
    rng_seed(0x1357);
    static const double spread[] = {1, 10, 100};
    for (size_t k = 0; k < N_VEC_SIZES; k++) {
        int64_t n = vec_sizes[k];
        for (int s = 0; s < 3; s++) {
            float *g = random_floats(n, spread[s]), *u = random_floats(n, 2.0);
            FOR_EACH_OPS(ops)
            {
                char ctx[96];
                snprintf(ctx, sizeof ctx, "%s silu_mul n %lld spread %g", bsi_isa_name(ops->isa),
                         (long long)n, spread[s]);
                float *y = guarded_alloc(n);
                ops->silu_mul(g, u, y, n);
                for (int64_t i = 0; i < n; i++) {
                    double ref = g[i] / (1 + exp(-(double)g[i])) * u[i];
                    check_close(ctx, i, y[i], ref, fabs(ref), TOL);
                }
                check_guards(y, n, ctx);
                guarded_free(y);
            }
            free(g);
            free(u);
        }
    }
}

static void test_add(void **state)
{
    (void)state;
    rng_seed(0x2468);
    for (size_t k = 0; k < N_VEC_SIZES; k++) {
        int64_t n = vec_sizes[k];
        float *a = random_floats(n, 10.0), *b = random_floats(n, 1.0);
        FOR_EACH_OPS(ops)
        {
            /* y apart, then y = a (in place on a), then y = b */
            for (int alias = 0; alias < 3; alias++) {
                char ctx[96];
                snprintf(ctx, sizeof ctx, "%s add n %lld%s", bsi_isa_name(ops->isa), (long long)n,
                         alias == 1   ? " y=a"
                         : alias == 2 ? " y=b"
                                      : "");
                float *y = guarded_alloc(n);
                if (alias == 1) memcpy(y, a, (size_t)n * sizeof *y);
                if (alias == 2) memcpy(y, b, (size_t)n * sizeof *y);
                ops->add(alias == 1 ? y : a, alias == 2 ? y : b, y, n);
                for (int64_t i = 0; i < n; i++) {
                    float ref = a[i] + b[i]; /* one fp32 rounding: must be exact */
                    if (memcmp(&y[i], &ref, 4))
                        fail_msg("%s: element %lld is %.9g, expected %.9g", ctx, (long long)i,
                                 (double)y[i], (double)ref);
                }
                check_guards(y, n, ctx);
                guarded_free(y);
            }
        }
        free(a);
        free(b);
    }
}

/* ---- RoPE ---- */

/* FORMAT.md section 3, transcribed: (cos, sin) of each pair's angle, times m. */
static void rope_table_ref(double *cs, int64_t pos, int n_rot, double base, double factor,
                           double orig_ctx, double beta_fast, double beta_slow)
{
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < n_rot / 2; i++) {
        double theta_e = (double)pos * pow(base, -2.0 * i / n_rot), theta = theta_e, m = 1;
        if (factor > 1) {
            double s = 1 / factor, theta_i = s * theta_e;
            double corr_fast = n_rot * log(orig_ctx / (beta_fast * 2 * pi)) / (2 * log(base));
            double corr_slow = n_rot * log(orig_ctx / (beta_slow * 2 * pi)) / (2 * log(base));
            double lo = fmax(0, floor(corr_fast)), hi = fmin(n_rot - 1, ceil(corr_slow));
            double t = (i - lo) / fmax(0.001, hi - lo);
            double r = 1 - (t < 0 ? 0 : t > 1 ? 1 : t);
            theta = theta_i * (1 - r) + theta_e * r;
            m = 1 + 0.1 * log(factor);
        }
        cs[2 * i] = cos(theta) * m;
        cs[2 * i + 1] = sin(theta) * m;
    }
}

static void check_rope_table(int n_rot, float base, float factor, int64_t orig_ctx, float fast,
                             float slow)
{
    static const int64_t positions[] = {0, 1, 100, 8191, 32767};
    float cs[1024 + 2 * GUARD];
    double ref[1024];
    for (size_t k = 0; k < sizeof positions / sizeof *positions; k++) {
        int64_t pos = positions[k];
        char ctx[128];
        snprintf(ctx, sizeof ctx, "rope table n_rot %d base %g factor %g pos %lld", n_rot,
                 (double)base, (double)factor, (long long)pos);
        for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) cs[i] = poison_value();
        bsi_rope_table(cs + GUARD, pos, n_rot, base, factor, orig_ctx, fast, slow);
        rope_table_ref(ref, pos, n_rot, base, factor, (double)orig_ctx, fast, slow);
        /* an angle of 32767 rad needs more than fp32 to come out within 1e-6 */
        for (int i = 0; i < n_rot; i++) check_close(ctx, i, cs[GUARD + i], ref[i], 1, 1e-6);
        check_guards(cs + GUARD, n_rot, ctx);
        if (pos == 0) {
            double m = factor > 1 ? 1 + 0.1 * log(factor) : 1;
            for (int i = 0; i < n_rot / 2; i++) {
                check_close(ctx, 2 * i, cs[GUARD + 2 * i], m, m, 1e-7);
                assert_true(cs[GUARD + 2 * i + 1] == 0);
            }
        }
    }
}

static void test_rope_table_yarn(void **state)
{
    (void)state;
    /* Bonsai-1.7B: YaRN factor 4 over an original context of 8192 */
    check_rope_table(128, 1e6f, 4.0f, 8192, 32.0f, 1.0f);
    /* Bonsai-8B's original context, and a partial rotation */
    check_rope_table(128, 1e6f, 4.0f, 16384, 32.0f, 1.0f);
    check_rope_table(64, 1e4f, 8.0f, 4096, 32.0f, 1.0f);

    /* spot values computed apart (Python, double): ramp lo = 17, hi = 34, m = 1 + 0.1 ln 4 */
    static const struct {
        int64_t pos;
        int i;
        double c, s;
    } spot[] = {
        {1, 0, 0.6152041098606474, 0.9581236329364153},     /* ramp 1: the base angle */
        {100, 40, 1.1386181840604308, 0.00506198653033479}, /* ramp 0: angle / 4 */
        {8191, 20, 0.9857305293145403, 0.5699230793343805}, /* inside the ramp */
        {32767, 63, 1.138570605678132, 0.01157448341991694},
        {32767, 25, -0.293665730411122, 1.1001079181438558},
    };
    float cs[128];
    for (size_t k = 0; k < sizeof spot / sizeof *spot; k++) {
        bsi_rope_table(cs, spot[k].pos, 128, 1e6f, 4.0f, 8192, 32.0f, 1.0f);
        char ctx[64];
        snprintf(ctx, sizeof ctx, "rope table spot pos %lld pair %d", (long long)spot[k].pos,
                 spot[k].i);
        check_close(ctx, 2 * spot[k].i, cs[2 * spot[k].i], spot[k].c, 1, 1e-6);
        check_close(ctx, 2 * spot[k].i + 1, cs[2 * spot[k].i + 1], spot[k].s, 1, 1e-6);
    }
}

static void test_rope_table_plain(void **state)
{
    (void)state;
    /* llama-style: no scaling metadata (factor 0), and factor 1 means the same */
    check_rope_table(8, 10000.0f, 0.0f, 0, 32.0f, 1.0f);
    check_rope_table(8, 10000.0f, 1.0f, 2048, 32.0f, 1.0f);
    check_rope_table(128, 1e6f, 0.0f, 0, 32.0f, 1.0f);
    float cs[8];
    bsi_rope_table(cs, 1, 8, 10000.0f, 0.0f, 0, 32.0f, 1.0f);
    check_close("rope table plain pos 1", 0, cs[0], cos(1.0), 1, 1e-7);
    check_close("rope table plain pos 1", 3, cs[3], sin(0.1), 1, 1e-7); /* 10000^(-2/8) */
}

static void test_rope_rotate(void **state)
{
    (void)state;
    rng_seed(0x3141);
    static const int64_t cases[][3] = {
        /* n_heads, head_dim, n_rot */
        {3, 128, 128}, {2, 128, 64}, {4, 12, 8}, {2, 8, 8},   {3, 20, 6},
        {1, 34, 34},   {2, 48, 32},  {1, 2, 2},  {5, 64, 40}, {2, 70, 66},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int64_t n_heads = cases[k][0], head_dim = cases[k][1], n_rot = cases[k][2];
        int64_t n = n_heads * head_dim;
        float *cs = xmalloc((size_t)n_rot * sizeof *cs);
        for (int64_t i = 0; i < n_rot / 2; i++) {
            double a = rng_unit() * 6.283185307179586, m = 1 + 0.2 * rng_unit();
            cs[2 * i] = (float)(cos(a) * m);
            cs[2 * i + 1] = (float)(sin(a) * m);
        }
        float *x = random_floats(n, 3.0);
        for (int neox = 0; neox < 2; neox++) {
            FOR_EACH_OPS(ops)
            {
                char ctx[128];
                snprintf(ctx, sizeof ctx, "%s rope %s heads %lld dim %lld n_rot %lld",
                         bsi_isa_name(ops->isa), neox ? "neox" : "adjacent", (long long)n_heads,
                         (long long)head_dim, (long long)n_rot);
                float *y = guarded_alloc(n);
                memcpy(y, x, (size_t)n * sizeof *y);
                ops->rope(y, n_heads, head_dim, n_rot, neox, cs);
                for (int64_t h = 0; h < n_heads; h++) {
                    const float *xh = x + h * head_dim;
                    const float *yh = y + h * head_dim;
                    for (int64_t i = 0; i < n_rot / 2; i++) {
                        int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + n_rot / 2 : 2 * i + 1;
                        double c = cs[2 * i], s = cs[2 * i + 1], x0 = xh[i0], x1 = xh[i1];
                        double mag = fabs(x0 * c) + fabs(x1 * s) + fabs(x0 * s) + fabs(x1 * c);
                        check_close(ctx, h * head_dim + i0, yh[i0], x0 * c - x1 * s, mag, TOL);
                        check_close(ctx, h * head_dim + i1, yh[i1], x0 * s + x1 * c, mag, TOL);
                    }
                    for (int64_t i = n_rot; i < head_dim; i++)
                        if (memcmp(&yh[i], &xh[i], 4))
                            fail_msg("%s: head %lld dimension %lld (not rotated) changed", ctx,
                                     (long long)h, (long long)i);
                }
                check_guards(y, n, ctx);
                guarded_free(y);
            }
        }
        free(x);
        free(cs);
    }
}

/* ---- conversions ---- */

/* Nearest half to f, ties to even, by search over the ordered positive halves; past 65504 the
 * next step would be 65536 (rounding to infinity from 65520 up). */
static double half_step_value(unsigned h)
{
    return h == 0x7c00 ? 65536.0 : half_value((uint16_t)h);
}

static uint16_t half_nearest(float f)
{
    if (isnan(f)) return 0x7e00;
    uint16_t sign = signbit(f) ? 0x8000 : 0;
    double a = fabs((double)f);
    if (a >= 65536.0) return sign | 0x7c00;
    unsigned lo = 0, hi = 0x7c00; /* value(lo) <= a < value(hi) */
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (half_step_value(mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dlo = a - half_step_value(lo), dhi = half_step_value(hi) - a;
    unsigned h = dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1 ? hi : lo);
    return (uint16_t)(sign | h);
}

/* Random floats that exercise fp32 -> fp16: any bits, the range around the half range
 * (subnormals, overflow), and values at or next to a tie between two halves. */
static float conversion_sample(void)
{
    uint64_t r = rng_u64();
    uint32_t bits;
    float f;
    switch (r & 3) {
    case 0: bits = (uint32_t)(r >> 32); break;
    case 1:
    case 2: /* exponents 2^-30 .. 2^20 */
        bits = (uint32_t)((r >> 2) & 1) << 31 | (uint32_t)(97 + (r >> 3) % 51) << 23 |
               ((uint32_t)(r >> 9) & 0x7fffff);
        break;
    default: { /* the midpoint between half h and h + 1, nudged by -1, 0 or +1 float ulp */
        unsigned h = (unsigned)((r >> 2) % 0x7bff);
        f = (float)((half_step_value(h) + half_step_value(h + 1)) / 2);
        int nudge = (int)((r >> 20) % 3);
        if (nudge == 1) f = nextafterf(f, 0);
        if (nudge == 2) f = nextafterf(f, INFINITY);
        return (r >> 40) & 1 ? -f : f;
    }
    }
    memcpy(&f, &bits, 4);
    return f;
}

static void test_fp16_portable(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = bsi_fp16_to_fp32((uint16_t)h);
        double v = half_value((uint16_t)h);
        if (isnan(v)) {
            if (!isnan(f)) fail_msg("fp16 %04x: %g, expected NaN", (unsigned)h, (double)f);
            continue;
        }
        if ((double)f != v || !signbit(f) != !signbit(v))
            fail_msg("fp16 %04x: %.9g, expected %.9g", (unsigned)h, (double)f, v);
        if (bsi_fp32_to_fp16(f) != h)
            fail_msg("fp16 %04x: round trip gives %04x", (unsigned)h, bsi_fp32_to_fp16(f));
    }
    rng_seed(0x2718);
    for (int k = 0; k < 1000000; k++) {
        float f = conversion_sample();
        uint16_t got = bsi_fp32_to_fp16(f), want = half_nearest(f);
        if (isnan(f) ? !isnan(half_value(got)) : got != want)
            fail_msg("fp32 %.9g (%a) -> fp16 %04x, expected %04x", (double)f, (double)f, got, want);
    }
}

#if defined(HAVE_X86)
__attribute__((target("f16c"))) static float hw_half_to_float(uint16_t h)
{
    return _cvtsh_ss(h);
}

__attribute__((target("f16c"))) static uint16_t hw_float_to_half(float f)
{
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#endif

static void test_fp16_hardware(void **state)
{
    (void)state;
#if defined(HAVE_X86)
    if (!bsi_isa_available(BSI_ISA_AVX2)) {
        print_message("SKIP: no F16C here\n");
        skip();
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        float got = bsi_fp16_to_fp32((uint16_t)h), want = hw_half_to_float((uint16_t)h);
        if (isnan(want) ? !isnan(got) : memcmp(&got, &want, 4) != 0)
            fail_msg("fp16 %04x: %.9g, F16C says %.9g", (unsigned)h, (double)got, (double)want);
    }
    rng_seed(0x1414);
    for (int k = 0; k < 1000000; k++) {
        float f = conversion_sample();
        uint16_t got = bsi_fp32_to_fp16(f), want = hw_float_to_half(f);
        if (isnan(f) ? !isnan(half_value(got)) || !isnan(half_value(want)) : got != want)
            fail_msg("fp32 %.9g (%a) -> fp16 %04x, F16C says %04x", (double)f, (double)f, got,
                     want);
    }
#else
    print_message("SKIP: not x86\n");
    skip();
#endif
}

static void test_bf16(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = bsi_bf16_to_fp32((uint16_t)h);
        double v = bf16_value((uint16_t)h);
        if (isnan(v) ? !isnan(f) : (double)f != v || !signbit(f) != !signbit(v))
            fail_msg("bf16 %04x: %.9g, expected %.9g", (unsigned)h, (double)f, v);
    }
}

/* Attention of n_tok tokens' query heads sharing a kv head over an fp16 cache (token i sees one
 * position more than token i - 1), every ISA against a double reference; groups of 1 to 5 and 1
 * to 3 tokens (the AVX2 variant serves 8 queries a pass: 5 heads of 3 tokens take two), queries a
 * head apart beyond each token's group, which must stay untouched in the output. */
static void test_attn_heads(void **state)
{
    (void)state;
    static const int64_t dims[] = {8, 32, 64, 96, 128, 12};
    static const int64_t positions[] = {1, 2, 17, 31, 300};
    for (int isa = 0; isa < BSI_ISA_COUNT; isa++) {
        if (!bsi_isa_available((bsi_isa)isa)) continue;
        const bsi_cpu_ops *ops = bsi_cpu_ops_for((bsi_isa)isa);
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++)
            for (size_t pi = 0; pi < sizeof positions / sizeof positions[0]; pi++)
                for (int64_t group = 1; group <= 5; group++)
                    for (int64_t n_tok = 1; n_tok <= 3; n_tok++) {
                        int64_t hd = dims[di], n = positions[pi], stride = hd * 3;
                        int64_t qs = (group + 1) * hd, total = n + n_tok - 1;
                        size_t nq = (size_t)(n_tok * qs);
                        float *q = malloc(nq * sizeof *q), *out = malloc(nq * sizeof *out);
                        float *scores = malloc((size_t)(n_tok * group * total) * sizeof *scores);
                        uint16_t *k = malloc((size_t)(total * stride) * 2),
                                 *v = malloc((size_t)(total * stride) * 2);
                        for (size_t i = 0; i < nq; i++) q[i] = test_uniform();
                        for (int64_t i = 0; i < total * stride; i++) {
                            k[i] = bsi_fp32_to_fp16(test_uniform());
                            v[i] = bsi_fp32_to_fp16(test_uniform());
                        }
                        for (size_t i = 0; i < nq; i++) out[i] = nanf("");
                        float scale = 1.0f / sqrtf((float)hd);
                        ops->attn_heads(q, n_tok, group, qs, k, v, n, stride, hd, scale, scores,
                                        out);
                        /* the cache as doubles, rows of hd */
                        double *kd = malloc((size_t)(total * hd) * sizeof *kd),
                               *vd = malloc((size_t)(total * hd) * sizeof *vd);
                        for (int64_t p = 0; p < total; p++)
                            for (int64_t i = 0; i < hd; i++) {
                                kd[p * hd + i] = bsi_fp16_to_fp32(k[p * stride + i]);
                                vd[p * hd + i] = bsi_fp16_to_fp32(v[p * stride + i]);
                            }
                        double *sc = malloc((size_t)total * sizeof *sc),
                               *r = malloc((size_t)hd * sizeof *r);
                        for (int64_t t = 0; t < n_tok; t++) {
                            for (int64_t i = group * hd; i < qs; i++) /* the gap */
                                assert_true(isnan(out[t * qs + i]));
                            for (int64_t g = 0; g < group; g++) {
                                test_attention_ref(q + t * qs + g * hd, kd, vd, n + t, hd, scale,
                                                   sc, r);
                                for (int64_t i = 0; i < hd; i++) {
                                    float o = out[t * qs + g * hd + i];
                                    if (!(fabs(o - r[i]) <= 1e-5 * (1 + fabs(r[i]))))
                                        fail_msg("%s attn hd %lld n %lld group %lld token %lld "
                                                 "head %lld [%lld]: %g vs %g",
                                                 bsi_isa_name((bsi_isa)isa), (long long)hd,
                                                 (long long)n, (long long)group, (long long)t,
                                                 (long long)g, (long long)i, (double)o, r[i]);
                                }
                            }
                        }
                        free(kd), free(vd), free(r);
                        free(q), free(out), free(scores), free(k), free(v), free(sc);
                    }
    }
}

/* A row only a later token sees holds infinities (an fp16 cache overflows past 65504): the earlier
 * tokens' outputs stay finite and right, as if the row were not there. */
static void test_attn_heads_later_row(void **state)
{
    (void)state;
    enum { HD = 32, GROUP = 2, NT = 3, NPOS = 2, TOTAL = NPOS + NT - 1 };
    for (int isa = 0; isa < BSI_ISA_COUNT; isa++) {
        if (!bsi_isa_available((bsi_isa)isa)) continue;
        const bsi_cpu_ops *ops = bsi_cpu_ops_for((bsi_isa)isa);
        float q[NT * GROUP * HD], out[NT * GROUP * HD], scores[NT * GROUP * TOTAL];
        float ref[GROUP * HD], sref[TOTAL];
        uint16_t k[TOTAL * HD], v[TOTAL * HD];
        for (int i = 0; i < NT * GROUP * HD; i++) q[i] = test_uniform();
        for (int i = 0; i < TOTAL * HD; i++) {
            k[i] = bsi_fp32_to_fp16(test_uniform());
            v[i] = i >= (TOTAL - 1) * HD ? 0x7C00 /* +inf */ : bsi_fp32_to_fp16(test_uniform());
        }
        ops->attn_heads(q, NT, GROUP, GROUP * HD, k, v, NPOS, HD, HD, 0.2f, scores, out);
        /* tokens 0 and 1 see positions [0, 2) and [0, 3): the scalar path, one query at a time */
        for (int t = 0; t < NT - 1; t++) {
            bsi_cpu_ops_scalar.attn_heads(q + t * GROUP * HD, 1, GROUP, GROUP * HD, k, v, NPOS + t,
                                          HD, HD, 0.2f, sref, ref);
            for (int i = 0; i < GROUP * HD; i++)
                if (!(fabsf(out[t * GROUP * HD + i] - ref[i]) <= 1e-5f * (1 + fabsf(ref[i]))))
                    fail_msg("%s token %d [%d]: %g vs %g", bsi_isa_name((bsi_isa)isa), t, i,
                             (double)out[t * GROUP * HD + i], (double)ref[i]);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_tables),
        cmocka_unit_test(test_gemv_f32),
        cmocka_unit_test(test_gemv_f16),
        cmocka_unit_test(test_gemv_bf16),
        cmocka_unit_test(test_gemv_q8_0),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_silu_mul),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_rope_table_yarn),
        cmocka_unit_test(test_rope_table_plain),
        cmocka_unit_test(test_rope_rotate),
        cmocka_unit_test(test_fp16_portable),
        cmocka_unit_test(test_fp16_hardware),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_attn_heads),
        cmocka_unit_test(test_attn_heads_later_row),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
