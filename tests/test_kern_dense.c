/* Kernels of weights in their stored type (src/wop/kern_dense.c): f16,
 * bf16, Q8_0 and Q4_0, every ISA this CPU runs, against double-precision
 * references built from wmat__wrow_dequant.
 *
 * Tolerances (eps = FLT_EPSILON), each the worst-case bound of the float
 * operations the kernel does:
 *   dense decode        |y - ref| <= (in + 8) eps sum_j |w_j x_j|
 *   block decode        |y - ref_q| <= (in/32 + 8) eps sum_j |w_j xq_j|, ref_q
 *                       the product with the same prepared (Q8_0) x: the
 *                       integer part of each block is exact;
 *                       and |y - ref_x| <= sum_j |w_j| e_j + the above, with
 *                       e_j = d_b / 2 (1 + 1e-5) + 127 |d_b - fp16(d_b)| the
 *                       worst error of x_j's code (round to nearest, the
 *                       scale stored as fp16)
 *   batched forward     (in + 8) eps sum_k |x w|, backward (rows + 8) eps
 *                       sum_r |dy w|; accumulating onto y0 adds |y0| to the
 *                       sum of magnitudes.
 * A value passes only when both sides are finite and within the bound:
 * NaN fails by an explicit isnan/isfinite check.
 */
#include "support/test_util.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "linalg/linalg.h"
#include "wop/kern_dense.h"

static const wmat_dtype k_dense[] = {WMAT_F16, WMAT_BF16};
static const wmat_dtype k_block[] = {WMAT_Q8_0, WMAT_Q4_0};
static const wmat_dtype k_all[] = {WMAT_F16, WMAT_BF16, WMAT_Q8_0, WMAT_Q4_0};

/* The ISAs to test: plain C and every SIMD level this CPU runs. */
static int isa_list(int *out)
{
    int n = 0, best = wmat__isa_best();
    out[n++] = WMAT_ISA_REF;
    if (best >= WMAT_ISA_AVX2) out[n++] = WMAT_ISA_AVX2;
    if (best >= WMAT_ISA_AVX512) out[n++] = WMAT_ISA_AVX512;
    return n;
}

static const char *dt_name(wmat_dtype dt) { return wmat_dtype_info(dt)->name; }

/* The NaN-safe comparison every check below goes through. */
static int close_enough(double got, double ref, double tol)
{
    if (isnan(got) || isnan(ref) || !isfinite(got) || !isfinite(ref)) return 0;
    return fabs(got - ref) <= tol;
}

#define CHECK(got, ref, tol, ...)                                                                                    \
    do {                                                                                                             \
        if (!close_enough((got), (ref), (tol))) {                                                                    \
            print_message(__VA_ARGS__);                                                                              \
            fail_msg("got %.9g, reference %.9g, |diff| %.3g > tolerance %.3g", (double)(got), (double)(ref),       \
                     fabs((double)(got) - (double)(ref)), (double)(tol));                                            \
        }                                                                                                            \
    } while (0)

/* rows x in weights in type dt from N(0,1) values whose scale varies by
 * row (1e-3 .. 1e2) so block scales and the f16 range are both exercised. */
static unsigned char *make_weights(wmat_dtype dt, int64_t rows, int64_t in, wmat_rng *r)
{
    const size_t rb = wmat__wrow_bytes(dt, in);
    assert_true(rb > 0);
    unsigned char *w = malloc(rb * (size_t)rows);
    float *tmp = malloc(sizeof(float) * (size_t)in);
    assert_non_null(w);
    assert_non_null(tmp);
    for (int64_t i = 0; i < rows; i++) {
        const float s = powf(10.0f, -3.0f + 5.0f * (float)(i % 7) / 6.0f);
        for (int64_t j = 0; j < in; j++) tmp[j] = s * wmat_rng_normal(r);
        if (in > 3 && i % 3 == 0) tmp[in / 2] = 0.0f; /* exact zeros and a zero block below */
        if (i == 1 && in >= 64)
            for (int j = 0; j < 32; j++) tmp[32 + j] = 0.0f;
        TU_OK(wmat_from_f32(w + (size_t)i * rb, dt, tmp, (uint64_t)in));
    }
    free(tmp);
    return w;
}

static void fill_normal(float *x, size_t n, float s, wmat_rng *r)
{
    for (size_t i = 0; i < n; i++) x[i] = s * wmat_rng_normal(r);
}

static void test_compare_rejects_nan(void **state)
{
    (void)state;
    assert_false(close_enough(NAN, NAN, 1e30));
    assert_false(close_enough(NAN, 1.0, 1e30));
    assert_false(close_enough(1.0, NAN, 1e30));
    assert_false(close_enough(INFINITY, INFINITY, 1e30));
    assert_true(close_enough(1.0, 1.0 + 1e-9, 1e-8));
    /* and the kernels propagate a NaN weight instead of hiding it */
    int isas[3], ni = isa_list(isas);
    for (int d = 0; d < 2; d++) {
        const wmat_dtype dt = k_dense[d];
        uint16_t w[40];
        float x[40], y;
        for (int j = 0; j < 40; j++) {
            x[j] = 1.0f;
            w[j] = dt == WMAT_F16 ? wmat_f32_to_f16(0.5f) : wmat_f32_to_bf16(0.5f);
        }
        w[17] = dt == WMAT_F16 ? 0x7e00 : 0x7fc0;
        for (int i = 0; i < ni; i++) {
            wmat__wrow_dot(dt, w, 40, x, NULL, &y, 0, 1, 0, isas[i]);
            assert_true(isnan(y));
        }
    }
}

static void test_isa(void **state)
{
    (void)state;
    const int best = wmat__isa_best();
    assert_true(best == WMAT_ISA_REF || best == WMAT_ISA_AVX2 || best == WMAT_ISA_AVX512);
    assert_int_equal(best, wmat__isa_best());
    print_message("isa best %d, vnni %d\n", best, wmat__isa_has_vnni());
    /* an ISA above the CPU's is lowered: same bits as the best */
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    unsigned char *w = make_weights(WMAT_F16, 9, 77, &r);
    float x[77], y1[9], y2[9];
    fill_normal(x, 77, 1.0f, &r);
    wmat__wrow_dot(WMAT_F16, w, 77, x, NULL, y1, 0, 9, 0, best);
    wmat__wrow_dot(WMAT_F16, w, 77, x, NULL, y2, 0, 9, 0, WMAT_ISA_AVX512 + 5);
    assert_memory_equal(y1, y2, sizeof y1);
    free(w);
}

/* y over [r0, r1) against the double reference; rows outside untouched. */
static void check_dense_decode(wmat_dtype dt, int64_t rows, int64_t in, int isa, wmat_rng *r)
{
    unsigned char *w = make_weights(dt, rows, in, r);
    float *wd = malloc(sizeof(float) * (size_t)(rows * in)), *x = malloc(sizeof(float) * (size_t)in);
    float *y = malloc(sizeof(float) * (size_t)rows), *y0 = malloc(sizeof(float) * (size_t)rows);
    wmat__wrow_dequant(dt, w, in, 0, rows, wd);
    fill_normal(x, (size_t)in, 1.0f, r);
    fill_normal(y0, (size_t)rows, 10.0f, r);
    for (int acc = 0; acc < 2; acc++) {
        const int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 3 ? rows - 1 : rows;
        memcpy(y, y0, sizeof(float) * (size_t)rows);
        wmat__wrow_dot(dt, w, in, x, NULL, y, r0, r1, acc, isa);
        for (int64_t i = 0; i < rows; i++) {
            if (i < r0 || i >= r1) {
                assert_memory_equal(&y[i], &y0[i], sizeof(float));
                continue;
            }
            double ref = 0, mag = 0;
            for (int64_t j = 0; j < in; j++) {
                ref += (double)wd[i * in + j] * x[j];
                mag += fabs((double)wd[i * in + j] * x[j]);
            }
            double tol = (double)(in + 8) * FLT_EPSILON * mag + 1e-37;
            if (acc) {
                ref += y0[i];
                tol += (double)(in + 8) * FLT_EPSILON * fabs(y0[i]);
            }
            CHECK(y[i], ref, tol, "%s isa %d rows %lld in %lld row %lld acc %d\n", dt_name(dt), isa, (long long)rows,
                  (long long)in, (long long)i, acc);
        }
    }
    free(w), free(wd), free(x), free(y), free(y0);
}

static void test_dense_decode(void **state)
{
    (void)state;
    static const int64_t ins[] = {1, 2, 7, 8, 9, 31, 33, 64, 100, 257, 2048, 2049};
    static const int64_t rowss[] = {1, 5, 13, 37};
    int isas[3], ni = isa_list(isas);
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < ni; i++)
            for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++)
                for (size_t b = 0; b < sizeof rowss / sizeof rowss[0]; b++)
                    check_dense_decode(k_dense[d], rowss[b], ins[a], isas[i], &r);
}

/* The prepared x's parts (kern_dense.h) read back for the references. */
static void prep_parts(const void *prep, int64_t in, const float **d, const int32_t **sum, const int8_t **q)
{
    const int64_t nb = in / 32;
    const size_t o1 = ((size_t)nb * 4 + 63) / 64 * 64;
    const unsigned char *p = prep;
    *d = (const float *)p;
    *sum = (const int32_t *)(p + o1);
    *q = (const int8_t *)(p + o1 + o1);
}

static void test_prepare(void **state)
{
    (void)state;
    static const int64_t ins[] = {32, 64, 96, 2048};
    int isas[3], ni = isa_list(isas);
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++) {
        const int64_t in = ins[a], nb = in / 32;
        const size_t pb = wmat__wrow_prep_bytes(WMAT_Q8_0, in);
        assert_int_equal(pb, wmat__wrow_prep_bytes(WMAT_Q4_0, in));
        assert_int_equal(wmat__wrow_prep_bytes(WMAT_F16, in), 0);
        float *x = malloc(sizeof(float) * (size_t)in);
        unsigned char *blk = malloc((size_t)nb * 34), *ref = calloc(1, pb), *got = calloc(1, pb);
        fill_normal(x, (size_t)in, 3.0f, &r);
        /* ties of the rounding rule: values exactly k + 0.5 code units */
        for (int j = 1; j < 32; j++) x[j] = (float)(j - 16) + 0.5f;
        x[0] = 127.0f;
        if (nb > 1)
            for (int j = 32; j < 64; j++) x[j] = 0.0f; /* a zero block: d = 0 */
        wmat__quantize_row_q8_0(x, blk, in);
        wmat__wrow_prepare(WMAT_Q8_0, x, in, ref, WMAT_ISA_REF);
        const float *d;
        const int32_t *sum;
        const int8_t *q;
        prep_parts(ref, in, &d, &sum, &q);
        for (int64_t b = 0; b < nb; b++) {
            uint16_t h;
            memcpy(&h, blk + 34 * b, 2);
            assert_true(d[b] == wmat_f16_to_f32(h));
            int32_t s = 0;
            for (int j = 0; j < 32; j++) {
                assert_int_equal(q[b * 32 + j], (int8_t)blk[34 * b + 2 + j]);
                s += q[b * 32 + j];
            }
            assert_int_equal(sum[b], s);
        }
        for (int i = 0; i < ni; i++) {
            memset(got, 0, pb);
            wmat__wrow_prepare(WMAT_Q4_0, x, in, got, isas[i]);
            assert_memory_equal(got, ref, pb); /* bit-equal across ISAs and types */
        }
        free(x), free(blk), free(ref), free(got);
    }
}

static void check_block_decode(wmat_dtype dt, int64_t rows, int64_t in, int isa, wmat_rng *r)
{
    const int64_t nb = in / 32;
    unsigned char *w = make_weights(dt, rows, in, r);
    float *wd = malloc(sizeof(float) * (size_t)(rows * in)), *x = malloc(sizeof(float) * (size_t)in);
    float *y = malloc(sizeof(float) * (size_t)rows), *y0 = malloc(sizeof(float) * (size_t)rows);
    void *prep = malloc(wmat__wrow_prep_bytes(dt, in));
    double *e = malloc(sizeof(double) * (size_t)in);
    wmat__wrow_dequant(dt, w, in, 0, rows, wd);
    fill_normal(x, (size_t)in, 1.0f, r);
    fill_normal(y0, (size_t)rows, 10.0f, r);
    wmat__wrow_prepare(dt, x, in, prep, isa);
    const float *d;
    const int32_t *sum;
    const int8_t *q;
    prep_parts(prep, in, &d, &sum, &q);
    for (int64_t b = 0; b < nb; b++) { /* worst error of each x_j's code */
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        const double db = amax / 127.0f;
        for (int j = 0; j < 32; j++) e[b * 32 + j] = db / 2 * (1 + 1e-5) + 127.0 * fabs(db - d[b]);
    }
    for (int acc = 0; acc < 2; acc++) {
        const int64_t r0 = rows > 2 ? 1 : 0, r1 = rows > 3 ? rows - 1 : rows;
        memcpy(y, y0, sizeof(float) * (size_t)rows);
        wmat__wrow_dot(dt, w, in, NULL, prep, y, r0, r1, acc, isa);
        for (int64_t i = 0; i < rows; i++) {
            if (i < r0 || i >= r1) {
                assert_memory_equal(&y[i], &y0[i], sizeof(float));
                continue;
            }
            double refq = 0, magq = 0, refx = 0, bound = 0;
            for (int64_t j = 0; j < in; j++) {
                const double wv = wd[i * in + j], xq = (double)d[j / 32] * q[j];
                refq += wv * xq;
                magq += fabs(wv * xq);
                refx += wv * x[j];
                bound += fabs(wv) * e[j];
            }
            double tol = (double)(nb + 8) * FLT_EPSILON * magq + 1e-37;
            if (acc) {
                refq += y0[i];
                refx += y0[i];
                tol += (double)(nb + 8) * FLT_EPSILON * fabs(y0[i]);
            }
            CHECK(y[i], refq, tol, "%s isa %d rows %lld in %lld row %lld acc %d (same int8 x)\n", dt_name(dt), isa,
                  (long long)rows, (long long)in, (long long)i, acc);
            CHECK(y[i], refx, tol + bound, "%s isa %d rows %lld in %lld row %lld acc %d (fp32 x)\n", dt_name(dt), isa,
                  (long long)rows, (long long)in, (long long)i, acc);
        }
    }
    free(w), free(wd), free(x), free(y), free(y0), free(prep), free(e);
}

static void test_block_decode(void **state)
{
    (void)state;
    static const int64_t ins[] = {32, 64, 96, 2048};
    static const int64_t rowss[] = {1, 5, 13, 37};
    int isas[3], ni = isa_list(isas);
    wmat_rng r;
    wmat_rng_seed(&r, 13);
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < ni; i++)
            for (size_t a = 0; a < sizeof ins / sizeof ins[0]; a++)
                for (size_t b = 0; b < sizeof rowss / sizeof rowss[0]; b++)
                    check_block_decode(k_block[d], rowss[b], ins[a], isas[i], &r);
}

/* Hostile Q8_0 codes: -128 (never written by ggml's quantizer, possible
 * in a file) must still give the exact product (no int16 saturation). */
static void test_q8_extreme_codes(void **state)
{
    (void)state;
    int isas[3], ni = isa_list(isas);
    unsigned char w[2 * 34];
    float x[64];
    for (int b = 0; b < 2; b++) {
        uint16_t one = wmat_f32_to_f16(1.0f);
        memcpy(w + 34 * b, &one, 2);
        for (int j = 0; j < 32; j++) w[34 * b + 2 + j] = (unsigned char)(int8_t)(j % 2 ? -128 : 127);
    }
    for (int j = 0; j < 64; j++) x[j] = j % 2 ? -127.0f : 127.0f; /* codes +-127, d = 1 */
    const double ref = 2.0 * 16 * (127.0 * 127.0 + 128.0 * 127.0);
    for (int i = 0; i < ni; i++) {
        void *prep = calloc(1, wmat__wrow_prep_bytes(WMAT_Q8_0, 64));
        float y;
        wmat__wrow_prepare(WMAT_Q8_0, x, 64, prep, isas[i]);
        wmat__wrow_dot(WMAT_Q8_0, w, 64, NULL, prep, &y, 0, 1, 0, isas[i]);
        CHECK(y, ref, 0.0, "q8_0 extreme codes isa %d\n", isas[i]);
        free(prep);
    }
}

typedef struct {
    int64_t rows, in;
    int T;
} bshape;

static void check_batched(wmat_dtype dt, bshape s, int isa, int nt, wmat_rng *r)
{
    const int64_t rows = s.rows, in = s.in;
    const int T = s.T;
    unsigned char *w = make_weights(dt, rows, in, r);
    float *wd = malloc(sizeof(float) * (size_t)(rows * in));
    float *X = malloc(sizeof(float) * (size_t)(T * in)), *Y = malloc(sizeof(float) * (size_t)(T * rows));
    float *Y0 = malloc(sizeof(float) * (size_t)(T * rows));
    float *dX = malloc(sizeof(float) * (size_t)(T * in)), *dX0 = malloc(sizeof(float) * (size_t)(T * in));
    const size_t wsb = wmat__wtile_ws_bytes(dt, rows, in, T, nt);
    void *ws = malloc(wsb);
    assert_non_null(ws);
    wmat__wrow_dequant(dt, w, in, 0, rows, wd);
    fill_normal(X, (size_t)(T * in), 1.0f, r);
    fill_normal(Y0, (size_t)(T * rows), 10.0f, r);
    fill_normal(dX0, (size_t)(T * in), 10.0f, r);
    /* where the bf16 GEMM is native, the forward rounds X to bf16 */
    const int bf16_act = dt == WMAT_BF16 && T > 1 && wmat__gemm_bf16_native(WMAT_GEMM_AUTO);
    for (int acc = 0; acc < 2; acc++) {
        memcpy(Y, Y0, sizeof(float) * (size_t)(T * rows));
        if (!acc) /* beta = 0 must overwrite, even NaN */
            for (int64_t k = 0; k < T * rows; k++) Y[k] = NAN;
        wmat__wtile_forward(dt, w, rows, in, X, Y, T, acc, ws, nt, isa, WMAT_GEMM_AUTO);
        for (int t = 0; t < T; t++)
            for (int64_t i = 0; i < rows; i++) {
                double ref = 0, mag = 0;
                for (int64_t k = 0; k < in; k++) {
                    ref += (double)X[t * in + k] * wd[i * in + k];
                    mag += fabs((double)X[t * in + k] * wd[i * in + k]);
                }
                double tol = (double)(in + 8) * FLT_EPSILON * mag + 1e-37;
                if (bf16_act) tol += 0x1p-8 * mag; /* X rounded to bf16 (unit roundoff 2^-8) */
                if (acc) {
                    ref += Y0[t * rows + i];
                    tol += (double)(in + 8) * FLT_EPSILON * fabs(Y0[t * rows + i]);
                }
                CHECK(Y[t * rows + i], ref, tol, "forward %s isa %d threads %d (%lld x %lld) T %d t %d row %lld acc %d\n",
                      dt_name(dt), isa, nt, (long long)rows, (long long)in, T, t, (long long)i, acc);
            }
        memcpy(dX, dX0, sizeof(float) * (size_t)(T * in));
        if (!acc)
            for (int64_t k = 0; k < T * in; k++) dX[k] = NAN;
        /* Y serves as dY */
        wmat__wtile_backward(dt, w, rows, in, Y0, dX, T, acc, ws, nt, isa, WMAT_GEMM_AUTO);
        for (int t = 0; t < T; t++)
            for (int64_t k = 0; k < in; k++) {
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < rows; i++) {
                    ref += (double)Y0[t * rows + i] * wd[i * in + k];
                    mag += fabs((double)Y0[t * rows + i] * wd[i * in + k]);
                }
                double tol = (double)(rows + 8) * FLT_EPSILON * mag + 1e-37;
                if (acc) {
                    ref += dX0[t * in + k];
                    tol += (double)(rows + 8) * FLT_EPSILON * fabs(dX0[t * in + k]);
                }
                CHECK(dX[t * in + k], ref, tol, "backward %s isa %d threads %d (%lld x %lld) T %d t %d col %lld acc %d\n",
                      dt_name(dt), isa, nt, (long long)rows, (long long)in, T, t, (long long)k, acc);
            }
    }
    free(w), free(wd), free(X), free(Y), free(Y0), free(dX), free(dX0), free(ws);
}

static void test_batched(void **state)
{
    (void)state;
    /* one tile; several forward tiles (in 2048: 32 rows a tile); several
     * backward row tiles and column blocks (rows > 256, in > 256) */
    static const bshape block_shapes[] = {{5, 32, 1}, {37, 96, 5}, {75, 2048, 3}, {300, 320, 2}};
    static const bshape dense_shapes[] = {{5, 7, 1}, {37, 100, 5}, {70, 3001, 2}, {300, 300, 3}};
    int isas[3], ni = isa_list(isas);
    wmat_rng r;
    wmat_rng_seed(&r, 17);
    for (int d = 0; d < 4; d++) {
        const wmat_dtype dt = k_all[d];
        const bshape *sh = dt == WMAT_F16 || dt == WMAT_BF16 ? dense_shapes : block_shapes;
        for (int i = 0; i < ni; i++)
            for (int s = 0; s < 4; s++)
                for (int nt = 1; nt <= 2; nt++) check_batched(dt, sh[s], isas[i], nt, &r);
    }
}

/* The native-bf16 batched path (taken where oneDNN's bf16 matmul is native,
 * AVX512-BF16 / AMX), run here on the reference backend, which widens the
 * same bf16 operands to fp32: equal to the exact product of bf16(X) and W,
 * and within X's rounding of the fp32 product. */
static void test_bf16_activations(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 29);
    static const bshape shapes[] = {{5, 7, 2}, {37, 100, 5}, {70, 3001, 3}};
    for (int s = 0; s < 3; s++) {
        const int64_t rows = shapes[s].rows, in = shapes[s].in;
        const int T = shapes[s].T;
        unsigned char *w = make_weights(WMAT_BF16, rows, in, &r);
        float *wd = malloc(sizeof(float) * (size_t)(rows * in)), *X = malloc(sizeof(float) * (size_t)(T * in));
        float *Y = malloc(sizeof(float) * (size_t)(T * rows));
        void *ws = malloc(wmat__wtile_ws_bytes(WMAT_BF16, rows, in, T, 1));
        assert_true(wd && X && Y && ws);
        wmat__wrow_dequant(WMAT_BF16, w, in, 0, rows, wd);
        fill_normal(X, (size_t)(T * in), 1.0f, &r);
        for (int64_t k = 0; k < T * rows; k++) Y[k] = NAN;
        TU_OK(wmat__wtile_forward_bf16((const uint16_t *)w, rows, in, X, Y, T, 0, ws, 1, WMAT_GEMM_REFERENCE));
        for (int t = 0; t < T; t++)
            for (int64_t i = 0; i < rows; i++) {
                double ref = 0, refh = 0, mag = 0;
                for (int64_t k = 0; k < in; k++) {
                    const double xh = wmat_bf16_to_f32(wmat_f32_to_bf16(X[t * in + k]));
                    ref += (double)X[t * in + k] * wd[i * in + k];
                    refh += xh * wd[i * in + k];
                    mag += fabs((double)X[t * in + k] * wd[i * in + k]);
                }
                const double tol = (double)(in + 8) * FLT_EPSILON * mag + 1e-37;
                CHECK(Y[t * rows + i], refh, tol, "bf16 activations (%lld x %lld) t %d row %lld\n", (long long)rows,
                      (long long)in, t, (long long)i);
                CHECK(Y[t * rows + i], ref, tol + 0x1p-8 * mag, "bf16 activations vs fp32 X, row %lld\n", (long long)i);
            }
        free(w), free(wd), free(X), free(Y), free(ws);
    }
}

/* Rows at an odd address (a tensor mapped from a file need not be
 * aligned): the same bits as from an aligned copy, every dtype and ISA. */
static void test_unaligned(void **state)
{
    (void)state;
    int isas[3], ni = isa_list(isas);
    wmat_rng r;
    wmat_rng_seed(&r, 23);
    for (int d = 0; d < 4; d++) {
        const wmat_dtype dt = k_all[d];
        const int64_t rows = 11, in = 320;
        const size_t n = wmat__wrow_bytes(dt, in) * (size_t)rows;
        unsigned char *w = make_weights(dt, rows, in, &r), *buf = malloc(n + 1);
        memcpy(buf + 1, w, n);
        float x[320], y1[11], y2[11];
        fill_normal(x, 320, 1.0f, &r);
        void *prep = calloc(1, wmat__wrow_prep_bytes(WMAT_Q8_0, in));
        for (int i = 0; i < ni; i++) {
            wmat__wrow_prepare(dt, x, in, prep, isas[i]);
            wmat__wrow_dot(dt, w, in, x, prep, y1, 0, rows, 0, isas[i]);
            wmat__wrow_dot(dt, buf + 1, in, x, prep, y2, 0, rows, 0, isas[i]);
            assert_memory_equal(y1, y2, sizeof y1);
        }
        free(w), free(buf), free(prep);
    }
}

/* One row against batched with T = 1, and the dequantized rows against
 * wmat_to_f32 of a row range. */
static void test_dequant_rows(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 19);
    for (int d = 0; d < 4; d++) {
        const wmat_dtype dt = k_all[d];
        const int64_t rows = 9, in = 96;
        unsigned char *w = make_weights(dt, rows, in, &r);
        float a[3 * 96], b[3 * 96];
        wmat__wrow_dequant(dt, w, in, 4, 3, a);
        TU_OK(wmat_to_f32(b, w + 4 * wmat__wrow_bytes(dt, in), dt, 3 * 96));
        assert_memory_equal(a, b, sizeof a);
        free(w);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compare_rejects_nan), cmocka_unit_test(test_isa),
        cmocka_unit_test(test_dense_decode),        cmocka_unit_test(test_prepare),
        cmocka_unit_test(test_block_decode),        cmocka_unit_test(test_q8_extreme_codes),
        cmocka_unit_test(test_batched),             cmocka_unit_test(test_dequant_rows),
        cmocka_unit_test(test_unaligned),           cmocka_unit_test(test_bf16_activations),
    };
    return tu_run_tests("kern_dense", tests, NULL, NULL);
}
