/* GEMM backends against a double-precision reference; OpenBLAS core-type
 * tuning (decision and re-exec, through child processes); thread policy;
 * sysinfo.
 *
 * Tolerance of an fp32 result: (K + 4) * FLT_EPSILON * (|alpha| sum_k |a b|
 * + |beta c|), the standard worst-case bound of a float dot product; int8
 * results are exact.
 */
#include "support/test_util.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <omp.h>

#include "linalg/linalg.h"

static const wmat_gemm_backend k_backends[] = {WMAT_GEMM_OPENBLAS, WMAT_GEMM_ONEDNN, WMAT_GEMM_REFERENCE,
                                               WMAT_GEMM_AUTO};
#define N_BACKENDS (sizeof k_backends / sizeof k_backends[0])

typedef struct {
    int M, N, K;
} shape;

static const shape k_shapes[] = {
    {1, 1, 1}, {2, 3, 1}, {3, 5, 7}, {17, 13, 29}, {64, 1, 33}, {1, 70, 9}, {37, 129, 65},
    {130, 67, 301}, {65, 257, 130},
};

static void fill(float *x, size_t n, wmat_rng *r)
{
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * wmat_rng_uniform(r) - 1.0f;
}

/* Compare C against the double-precision product; returns the worst
 * error / bound ratio (> 1 fails), or INFINITY on NaN. */
static double check_f32(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, const float *C0, const float *C, int ldc)
{
    double worst = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0, sa = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
                sa += fabs(a * b);
            }
            double c0 = beta != 0.0f ? C0[(size_t)i * ldc + j] : 0.0;
            double ref = alpha * s + beta * c0;
            double bound = (K + 4) * (double)FLT_EPSILON * (fabs(alpha) * sa + fabs(beta * c0)) + 1e-30;
            double err = tu_abs_diff(C[(size_t)i * ldc + j], ref); /* NaN: infinite */
            if (err / bound > worst) worst = err / bound;
        }
    return worst;
}

/* One fp32 case on backend b with nt threads (the public entry point with a
 * context when `public_api`). */
static void run_f32_case(wmat_gemm_backend b, int nt, int public_api, int ta, int tb, shape s, int pad,
                         float alpha, float beta, wmat_rng *r)
{
    int M = s.M, N = s.N, K = s.K;
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + pad, ldb = bc + pad, ldc = N + pad;
    size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)M * ldc;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *C0 = malloc(nc * 4);
    fill(A, na, r);
    fill(B, nb, r);
    fill(C0, nc, r);
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) C0[i] = NAN; /* must not be read */
    memcpy(C, C0, nc * 4);
    if (public_api) {
        wmat_context ctx = wmat_context_default();
        ctx.gemm = b;
        ctx.n_threads = nt;
        TU_OK(wmat_sgemm_ctx(&ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
    } else {
        TU_OK(wmat__sgemm_on(b, nt, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));
    }
    double w = check_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc);
    if (!(w <= 1.0))
        fail_msg("%s%s, %d threads: %dx%dx%d trans %d%d pad %d alpha %g beta %g: error %.3g x bound",
                 wmat_gemm_backend_name(b), public_api ? " (wmat_sgemm_ctx)" : "", nt, M, N, K, ta, tb, pad,
                 alpha, beta, w);
    /* padding columns of C are untouched */
    for (int i = 0; i < M; i++)
        for (int j = N; j < ldc; j++)
            if (memcmp(&C[(size_t)i * ldc + j], &C0[(size_t)i * ldc + j], 4) != 0)
                fail_msg("%s wrote C padding at (%d, %d)", wmat_gemm_backend_name(b), i, j);
    free(A);
    free(B);
    free(C);
    free(C0);
}

/* Every backend at nt threads (0: the OpenMP default). */
static void sgemm_backends(int nt)
{
    static const float ab[][2] = {{1.0f, 0.0f}, {0.5f, -1.25f}, {-2.0f, 1.0f}};
    wmat_rng r;
    wmat_rng_seed(&r, 1);
    for (size_t bi = 0; bi < N_BACKENDS; bi++) {
        wmat_gemm_backend b = k_backends[bi];
        if (!wmat_gemm_backend_available(b)) {
            print_message("backend %s not available: skipped (%s)\n", wmat_gemm_backend_name(b),
                          wmat_linalg_status());
            continue;
        }
        for (size_t si = 0; si < sizeof k_shapes / sizeof k_shapes[0]; si++)
            for (int t = 0; t < 4; t++)
                for (int pad = 0; pad <= 3; pad += 3)
                    for (size_t k = 0; k < 3; k++)
                        run_f32_case(b, nt, 0, t >> 1, t & 1, k_shapes[si], pad, ab[k][0], ab[k][1], &r);
        /* the public entry point with the backend in a context */
        for (int t = 0; t < 4; t++) run_f32_case(b, nt, 1, t >> 1, t & 1, k_shapes[7], 2, 0.5f, -1.25f, &r);
    }
}

static void test_sgemm_backends(void **state)
{
    (void)state;
    sgemm_backends(0);
}

/* One and three threads asked for by the call: OpenBLAS's large GEMMs are
 * split over that many OpenMP threads (OpenBLAS itself runs one). */
static void test_sgemm_backends_threads(void **state)
{
    (void)state;
    if (wmat__blas_num_threads() != 1) print_message("OpenBLAS threads set by the environment\n");
    sgemm_backends(1);
    sgemm_backends(3);
}

static void test_sgemm_degenerate(void **state)
{
    (void)state;
    float A[6], B[6], C[6];
    for (size_t bi = 0; bi < N_BACKENDS; bi++) {
        wmat_gemm_backend b = k_backends[bi];
        if (!wmat_gemm_backend_available(b)) continue;
        /* K == 0: C = beta C */
        for (int i = 0; i < 6; i++) C[i] = (float)i;
        TU_OK(wmat__sgemm_on(b, 0, 0, 0, 2, 3, 0, 1.0f, A, 1, B, 3, 2.0f, C, 3));
        for (int i = 0; i < 6; i++) assert_true(C[i] == 2.0f * i);
        /* alpha == 0: A and B are not read (NaN there stays out) */
        for (int i = 0; i < 6; i++) A[i] = B[i] = NAN, C[i] = NAN;
        TU_OK(wmat__sgemm_on(b, 0, 0, 0, 2, 3, 2, 0.0f, A, 2, B, 3, 0.0f, C, 3));
        for (int i = 0; i < 6; i++) assert_true(C[i] == 0.0f);
        /* M == 0 / N == 0: nothing happens */
        TU_OK(wmat__sgemm_on(b, 0, 0, 0, 0, 3, 2, 1.0f, A, 2, B, 3, 0.0f, NULL, 3));
    }
}

static void test_sgemm_invalid(void **state)
{
    (void)state;
    float A[16] = {0}, B[16] = {0}, C[16];
    for (int i = 0; i < 16; i++) C[i] = 7.0f;
    assert_int_equal(wmat__sgemm_on(WMAT_GEMM_AUTO, 0, 0, 0, 2, 2, 4, 1.0f, A, 3, B, 2, 0.0f, C, 2),
                     WMAT_ERR_INVALID); /* lda < K */
    assert_non_null(strstr(wmat_last_error(), "leading dimension"));
    assert_int_equal(wmat__sgemm_on(WMAT_GEMM_AUTO, 0, 1, 0, 4, 2, 2, 1.0f, A, 3, B, 2, 0.0f, C, 2),
                     WMAT_ERR_INVALID); /* trans: lda < M */
    assert_int_equal(wmat__sgemm_on(WMAT_GEMM_AUTO, 0, 0, 1, 2, 4, 2, 1.0f, A, 2, B, 1, 0.0f, C, 4),
                     WMAT_ERR_INVALID); /* trans: ldb < K */
    assert_int_equal(wmat__sgemm_on(WMAT_GEMM_AUTO, 0, 0, 0, -1, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2),
                     WMAT_ERR_INVALID);
    wmat_clear_error();
    wmat_sgemm(0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 1); /* ldc < N: refused, C untouched */
    assert_true(wmat_last_error()[0] != '\0');
    for (int i = 0; i < 16; i++) assert_true(C[i] == 7.0f);
    wmat_context ctx = wmat_context_default();
    assert_int_equal(wmat_sgemm_ctx(&ctx, 0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 1), WMAT_ERR_INVALID);
    ctx.gemm = (wmat_gemm_backend)42;
    assert_int_equal(wmat_sgemm_ctx(&ctx, 0, 0, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2), WMAT_ERR_INVALID);
    for (int i = 0; i < 16; i++) assert_true(C[i] == 7.0f);
}

static void test_backend_api(void **state)
{
    (void)state;
    assert_string_equal(wmat_gemm_backend_name(WMAT_GEMM_AUTO), "auto");
    assert_string_equal(wmat_gemm_backend_name(WMAT_GEMM_OPENBLAS), "openblas");
    assert_string_equal(wmat_gemm_backend_name(WMAT_GEMM_ONEDNN), "onednn");
    assert_string_equal(wmat_gemm_backend_name(WMAT_GEMM_REFERENCE), "reference");
    assert_true(wmat_gemm_backend_available(WMAT_GEMM_AUTO));
    assert_true(wmat_gemm_backend_available(WMAT_GEMM_REFERENCE));
    assert_false(wmat_gemm_backend_available((wmat_gemm_backend)42));
    /* the default is what WMAT_GEMM_BACKEND says (when available), else AUTO */
    const char *env = getenv("WMAT_GEMM_BACKEND");
    const wmat_gemm_backend def = wmat_gemm_get_backend();
    if (!env || !*env || !strcmp(env, "auto")) assert_int_equal(def, WMAT_GEMM_AUTO);
    else if (def != WMAT_GEMM_AUTO) assert_string_equal(wmat_gemm_backend_name(def), env);
    assert_true(wmat_gemm_backend_available(def));
    /* an explicit backend is used as asked; AUTO means the default */
    assert_int_equal(wmat__sgemm_pick(WMAT_GEMM_REFERENCE, 100, 100, 100), WMAT_GEMM_REFERENCE);
    if (def != WMAT_GEMM_AUTO) assert_int_equal(wmat__sgemm_pick(WMAT_GEMM_AUTO, 100, 100, 100), def);
    if (wmat_gemm_backend_available(WMAT_GEMM_ONEDNN))
        assert_int_equal(wmat__sgemm_pick(WMAT_GEMM_ONEDNN, 100, 100, 100), WMAT_GEMM_ONEDNN);
    const char *st = wmat_linalg_status();
    assert_non_null(strstr(st, "openblas"));
    assert_non_null(strstr(st, "auto fp32"));
    assert_ptr_equal(st, wmat_linalg_status()); /* written once */
    print_message("linalg status: %s\n", st);
    print_message("auto picks: 2048^3 %s, 256x704x256 %s, 16x64x64 %s, 1x704x256 %s\n",
                  wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 2048, 2048, 2048)),
                  wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 256, 704, 256)),
                  wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 16, 64, 64)),
                  wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 1, 704, 256)));
}

/* Calls from inside an OpenMP region: one BLAS thread each, right results,
 * and the thread settings are what they were afterwards. */
static void test_sgemm_in_parallel_region(void **state)
{
    (void)state;
    TU_OK(wmat_linalg_init(2));
    int blas_before = wmat__blas_num_threads(), omp_before = omp_get_max_threads();
    enum { M = 96, N = 80, K = 120, T = 4 };
    float *A = malloc(sizeof(float) * T * M * K), *B = malloc(sizeof(float) * K * N);
    float *C = malloc(sizeof(float) * T * M * N), *C0 = calloc((size_t)M * N, sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    fill(A, (size_t)T * M * K, &r);
    fill(B, (size_t)K * N, &r);
    int inner_threads[T], inner_pick[T];
#pragma omp parallel for num_threads(2)
    for (int t = 0; t < T; t++) {
        inner_threads[t] = wmat__linalg_threads(4);
        inner_pick[t] = wmat__sgemm_pick(WMAT_GEMM_AUTO, M, N, K);
        wmat_sgemm(0, 0, M, N, K, 1.0f, A + (size_t)t * M * K, K, B, N, 0.0f, C + (size_t)t * M * N, N);
    }
    for (int t = 0; t < T; t++) {
        assert_int_equal(inner_threads[t], 1);
        if (inner_pick[t] == WMAT_GEMM_OPENBLAS) assert_true(blas_before <= 1);
        double w = check_f32(0, 0, M, N, K, 1.0f, A + (size_t)t * M * K, K, B, N, 0.0f, C0,
                             C + (size_t)t * M * N, N);
        if (!(w <= 1.0)) fail_msg("slice %d: error %.3g x bound", t, w);
    }
    assert_int_equal(wmat__blas_num_threads(), blas_before);
    assert_int_equal(omp_get_max_threads(), omp_before);
    free(A);
    free(B);
    free(C);
    free(C0);
}

/* ---- int8 */

static void run_i8_case(wmat_gemm_backend b, int u8, int ta, int tb, shape s, int pad, int acc,
                        int extreme, wmat_rng *r)
{
    int M = s.M, N = s.N, K = s.K;
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + pad, ldb = bc + pad, ldc = N + pad;
    size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)M * ldc;
    uint8_t *A = malloc(na);
    int8_t *B = malloc(nb);
    int32_t *C = malloc(nc * 4), *C0 = malloc(nc * 4);
    for (size_t i = 0; i < na; i++)
        A[i] = extreme ? (u8 ? 255 : (i & 1 ? 127 : 0x80)) : (uint8_t)wmat_rng_u64(r);
    for (size_t i = 0; i < nb; i++) B[i] = extreme ? (int8_t)(i & 2 ? 127 : -128) : (int8_t)wmat_rng_u64(r);
    for (size_t i = 0; i < nc; i++) C0[i] = (int32_t)(wmat_rng_u64(r) % 2000001u) - 1000000;
    memcpy(C, C0, nc * 4);
    int rc = u8 ? wmat__gemm_u8s8s32_on(b, 0, ta, tb, M, N, K, A, lda, B, ldb, acc, C, ldc)
                : wmat__gemm_s8s8s32_on(b, 0, ta, tb, M, N, K, (const int8_t *)A, lda, B, ldb, acc, C, ldc);
    if (rc != WMAT_OK) fail_msg("%s int8: %s", wmat_gemm_backend_name(b), wmat_last_error());
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            int64_t v = acc ? C0[(size_t)i * ldc + j] : 0;
            for (int k = 0; k < K; k++) {
                uint8_t a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                int64_t av = u8 ? (int64_t)a : (int64_t)(int8_t)a;
                v += av * (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
            }
            if (C[(size_t)i * ldc + j] != v)
                fail_msg("%s %s %dx%dx%d trans %d%d acc %d extreme %d: C[%d][%d] = %d, want %lld",
                         wmat_gemm_backend_name(b), u8 ? "u8s8s32" : "s8s8s32", M, N, K, ta, tb, acc,
                         extreme, i, j, (int)C[(size_t)i * ldc + j], (long long)v);
        }
        for (int j = N; j < ldc; j++) assert_int_equal(C[(size_t)i * ldc + j], C0[(size_t)i * ldc + j]);
    }
    free(A);
    free(B);
    free(C);
    free(C0);
}

static void test_int8_backends(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 2);
    for (size_t bi = 0; bi < N_BACKENDS; bi++) {
        wmat_gemm_backend b = k_backends[bi];
        if (b != WMAT_GEMM_AUTO && !wmat__gemm_int8_native(b)) {
            assert_int_equal(wmat__gemm_s8s8s32_on(b, 0, 0, 0, 1, 1, 1, (int8_t[]){1}, 1, (int8_t[]){1}, 1, 0,
                                                   (int32_t[]){0}, 1),
                             WMAT_ERR_UNSUPPORTED);
            print_message("int8 on %s: not available, skipped\n", wmat_gemm_backend_name(b));
            continue;
        }
        for (int u8 = 0; u8 <= 1; u8++)
            for (size_t si = 0; si < sizeof k_shapes / sizeof k_shapes[0]; si++)
                for (int t = 0; t < 4; t++)
                    for (int v = 0; v < 3; v++)
                        run_i8_case(b, u8, t >> 1, t & 1, k_shapes[si], v == 1 ? 4 : 0, v == 2, v == 2, &r);
    }
    /* AUTO (the default backend, or AUTO's pick), on two threads */
    int8_t A[6] = {1, -2, 3, -128, 127, 0}, B[6] = {-128, 5, 6, 7, -8, 9};
    int32_t C[4];
    TU_OK(wmat__gemm_s8s8s32_on(WMAT_GEMM_AUTO, 2, 0, 0, 2, 2, 3, A, 3, B, 2, 0, C, 2));
    assert_int_equal(C[0], 1 * -128 + -2 * 6 + 3 * -8);
    assert_int_equal(C[3], -128 * 5 + 127 * 7 + 0 * 9);
    TU_OK(wmat__gemm_u8s8s32_on(WMAT_GEMM_AUTO, 2, 0, 0, 2, 2, 3, (const uint8_t *)A, 3, B, 2, 1, C, 2));
    assert_int_equal(C[3], (-128 * 5 + 127 * 7) + (128 * 5 + 127 * 7));
}

/* ---- bf16 */

static void run_bf16_case(wmat_gemm_backend b, int ta, int tb, shape s, int pad, float alpha, float beta,
                          wmat_rng *r)
{
    int M = s.M, N = s.N, K = s.K;
    int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    int lda = ac + pad, ldb = bc + pad, ldc = N + pad;
    size_t na = (size_t)ar * lda, nb = (size_t)br * ldb, nc = (size_t)M * ldc;
    float *A = malloc(na * 4), *B = malloc(nb * 4), *C = malloc(nc * 4), *C0 = malloc(nc * 4);
    uint16_t *Ah = malloc(na * 2), *Bh = malloc(nb * 2);
    fill(A, na, r);
    fill(B, nb, r);
    fill(C0, nc, r);
    for (size_t i = 0; i < na; i++) A[i] = wmat_bf16_to_f32(Ah[i] = wmat_f32_to_bf16(A[i]));
    for (size_t i = 0; i < nb; i++) B[i] = wmat_bf16_to_f32(Bh[i] = wmat_f32_to_bf16(B[i]));
    if (beta == 0.0f)
        for (size_t i = 0; i < nc; i++) C0[i] = NAN;
    memcpy(C, C0, nc * 4);
    TU_OK(wmat__gemm_bf16_on(b, 0, ta, tb, M, N, K, alpha, Ah, lda, Bh, ldb, beta, C, ldc));
    double w = check_f32(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C0, C, ldc);
    if (!(w <= 1.0))
        fail_msg("bf16 %s: %dx%dx%d trans %d%d pad %d alpha %g beta %g: error %.3g x bound",
                 wmat_gemm_backend_name(b), M, N, K, ta, tb, pad, alpha, beta, w);
    free(A);
    free(B);
    free(C);
    free(C0);
    free(Ah);
    free(Bh);
}

static void test_bf16_backends(void **state)
{
    (void)state;
    static const float ab[][2] = {{1.0f, 0.0f}, {0.75f, 0.5f}};
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    for (size_t bi = 0; bi < N_BACKENDS; bi++) {
        wmat_gemm_backend b = k_backends[bi];
        if (!wmat_gemm_backend_available(b)) continue;
        print_message("bf16 on %s: %s\n", wmat_gemm_backend_name(b),
                      wmat__gemm_bf16_native(b) ? "native" : "widened to fp32");
        for (size_t si = 0; si < sizeof k_shapes / sizeof k_shapes[0]; si++)
            for (int t = 0; t < 4; t++)
                for (size_t k = 0; k < 2; k++)
                    run_bf16_case(b, t >> 1, t & 1, k_shapes[si], k ? 2 : 0, ab[k][0], ab[k][1], &r);
    }
}

/* ---- OpenBLAS core type: the decision */

static void test_tune_decide(void **state)
{
    (void)state;
    wmat_cpu_info avx512 = {.vendor = "GenuineIntel", .avx = 1, .fma = 1, .avx2 = 1, .avx512f = 1,
                            .avx512dq = 1, .avx512bw = 1, .avx512vl = 1, .avx512_bf16 = 1};
    wmat_cpu_info zen2 = {.vendor = "AuthenticAMD", .avx = 1, .fma = 1, .avx2 = 1};
    wmat_cpu_info old = {.vendor = "GenuineIntel", .sse42 = 1};
    const char *cfg = "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Prescott MAX_THREADS=64";
    wmat_blas_tune t;

    wmat__blas_tune_decide("Prescott", cfg, &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 1);
    assert_string_equal(t.value, "Cooperlake");
    assert_int_equal(t.cpu_rank, 4);
    assert_int_equal(t.core_rank, 1);
    /* an older OpenBLAS does not know Cooperlake */
    wmat__blas_tune_decide("Sandybridge", "OpenBLAS 0.3.9 DYNAMIC_ARCH", &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 1);
    assert_string_equal(t.value, "SkylakeX");
    wmat__blas_tune_decide("Nehalem", cfg, &zen2, NULL, NULL, &t);
    assert_int_equal(t.needed, 1);
    assert_string_equal(t.value, "Zen");
    /* already right, or nothing better */
    wmat__blas_tune_decide("Cooperlake", cfg, &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);
    wmat__blas_tune_decide("ZEN", cfg, &zen2, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);
    wmat__blas_tune_decide("Prescott", cfg, &old, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);
    /* the user's OPENBLAS_CORETYPE is never overridden, even a slow one */
    wmat__blas_tune_decide("Prescott", cfg, &avx512, "Prescott", NULL, &t);
    assert_int_equal(t.needed, 0);
    assert_non_null(strstr(t.reason, "set by the user"));
    wmat__blas_tune_decide("SkylakeX", cfg, &avx512, "SkylakeX", "SkylakeX", &t);
    assert_int_equal(t.needed, 0);
    assert_non_null(strstr(t.reason, "re-exec"));
    /* a single-target build ignores the variable; unknown names are left alone */
    wmat__blas_tune_decide("Prescott", "OpenBLAS 0.3.21 NO_AFFINITY Prescott", &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);
    wmat__blas_tune_decide("NEOVERSEN1", cfg, &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);
    assert_int_equal(t.core_rank, -1);
    wmat__blas_tune_decide(NULL, NULL, &avx512, NULL, NULL, &t);
    assert_int_equal(t.needed, 0);

    char v[32];
    assert_true(wmat_blas_tune_advice(v, sizeof v) >= 0);
    assert_int_equal(wmat_blas_tune_advice(NULL, 0), WMAT_ERR_INVALID);
}

/* ---- child processes: the re-exec and the user's environment */

static const char *self_exe(void)
{
    static char path[4096];
    if (!path[0]) {
        ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
        assert_true(n > 0);
        path[n] = '\0';
    }
    return path;
}

/* Run this test binary in helper mode with an environment prefix. */
static char *run_helper(const char *env, const char *args, int *code)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "env -u OPENBLAS_CORETYPE -u WMAT_BLAS_TUNED -u WMAT_NO_BLAS_TUNE -u WMAT_TEST_OPENBLAS_CORENAME -u WMAT_TEST_FAIL_CHECK "
             "-u OPENBLAS_NUM_THREADS -u GOTO_NUM_THREADS -u OMP_NUM_THREADS %s '%s' --helper %s",
             env, self_exe(), args);
    char *out = tu_run(cmd, code);
    assert_non_null(out);
    return out;
}

static int count_lines(const char *s, const char *line)
{
    int n = 0;
    size_t len = strlen(line);
    for (const char *p = s; (p = strstr(p, line)) != NULL; p += len)
        if ((p == s || p[-1] == '\n') && p[len] == '\n') n++;
    return n;
}

static int has_line(const char *out, const char *fmt, const char *val)
{
    char want[256];
    snprintf(want, sizeof want, fmt, val);
    return count_lines(out, want) == 1;
}

static void test_tune_respects_user_coretype(void **state)
{
    (void)state;
    int code;
    /* the user asked for Haswell: no re-exec even though the (pretend)
     * loaded core is generic, and OpenBLAS runs what the user asked */
    char *out = run_helper("OPENBLAS_CORETYPE=Haswell WMAT_TEST_OPENBLAS_CORENAME=Prescott", "tune", &code);
    assert_int_equal(code, 0);
    assert_int_equal(count_lines(out, "START"), 1);
    assert_true(has_line(out, "CORETYPE=%s", "Haswell"));
    assert_true(has_line(out, "GUARD=%s", "(unset)"));
    if (strstr(wmat__blas_config(), "DYNAMIC_ARCH")) assert_true(has_line(out, "CORE=%s", "Haswell"));
    assert_non_null(strstr(out, "set by the user"));
    free(out);
    /* even a slow choice is the user's: kept, and GEMM still right */
    out = run_helper("OPENBLAS_CORETYPE=Prescott", "tune", &code);
    assert_int_equal(code, 0);
    assert_int_equal(count_lines(out, "START"), 1);
    assert_true(has_line(out, "CORETYPE=%s", "Prescott"));
    assert_true(has_line(out, "GEMM=%s", "ok"));
    free(out);
}

static void test_tune_reexec_once(void **state)
{
    (void)state;
    wmat_cpu_info ci;
    wmat__cpu_info(&ci);
    wmat_blas_tune t;
    wmat__blas_tune_decide("Prescott", wmat__blas_config(), &ci, NULL, NULL, &t);
    int code;
    char *out = run_helper("WMAT_TEST_OPENBLAS_CORENAME=Prescott", "tune", &code);
    assert_int_equal(code, 0);
    print_message("re-exec child:\n%s", out);
    if (t.needed) {
        assert_int_equal(count_lines(out, "START"), 2); /* exactly one re-exec */
        assert_true(has_line(out, "CORETYPE=%s", t.value));
        assert_true(has_line(out, "GUARD=%s", t.value));
        char want[64];
        snprintf(want, sizeof want, "CORE=%s", t.value);
        assert_true(strcasestr(out, want) != NULL);
        assert_non_null(strstr(out, "set by wmat (re-exec)"));
        assert_true(has_line(out, "GEMM=%s", "ok"));
    } else {
        print_message("no tuning would apply here (%s)\n", t.reason);
        assert_int_equal(count_lines(out, "START"), 1);
    }
    free(out);
    /* opted out: --no-blas-tune, WMAT_NO_BLAS_TUNE, or the guard already set */
    out = run_helper("WMAT_TEST_OPENBLAS_CORENAME=Prescott", "tune --no-blas-tune", &code);
    assert_int_equal(count_lines(out, "START"), 1);
    assert_true(has_line(out, "CORETYPE=%s", "(unset)"));
    free(out);
    out = run_helper("WMAT_TEST_OPENBLAS_CORENAME=Prescott WMAT_NO_BLAS_TUNE=1", "tune", &code);
    assert_int_equal(count_lines(out, "START"), 1);
    free(out);
    out = run_helper("WMAT_TEST_OPENBLAS_CORENAME=Prescott WMAT_BLAS_TUNED=SkylakeX", "tune", &code);
    assert_int_equal(count_lines(out, "START"), 1);
    assert_true(has_line(out, "CORETYPE=%s", "(unset)"));
    free(out);
    /* "--no-blas-tune" after "--" belongs to the program, not to wmat */
    out = run_helper("WMAT_TEST_OPENBLAS_CORENAME=Prescott", "tune -- --no-blas-tune", &code);
    assert_int_equal(count_lines(out, "START"), t.needed ? 2 : 1);
    free(out);
}

static void test_threads_respect_env(void **state)
{
    (void)state;
    int code;
    char *out = run_helper("OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1", "threads 2", &code);
    assert_int_equal(code, 0);
    assert_true(has_line(out, "BLAS=%s", "1"));
    assert_true(has_line(out, "OMP=%s", "1"));
    assert_true(has_line(out, "LINALG=%s", "1"));
    free(out);
    /* a user's OPENBLAS_NUM_THREADS is kept even when it asks for more */
    out = run_helper("OPENBLAS_NUM_THREADS=2", "threads 1", &code);
    assert_true(has_line(out, "BLAS=%s", "2"));
    assert_true(has_line(out, "OMP=%s", "1"));
    assert_true(has_line(out, "LINALG=%s", "1"));
    free(out);
    out = run_helper("OMP_NUM_THREADS=1", "threads 3", &code);
    assert_true(has_line(out, "BLAS=%s", "1")); /* OpenBLAS read OMP_NUM_THREADS */
    assert_true(has_line(out, "OMP=%s", "1"));
    assert_true(has_line(out, "LINALG=%s", "1"));
    free(out);
    /* no variables: OpenMP gets the count, OpenBLAS one thread (wmat
     * splits its GEMMs over OpenMP threads); LAPACK can borrow the count */
    out = run_helper("", "threads 3", &code);
    assert_true(has_line(out, "BLAS=%s", "1"));
    assert_true(has_line(out, "OMP=%s", "3"));
    assert_true(has_line(out, "LINALG=%s", "3"));
    assert_true(has_line(out, "LAPACK=%s", "3"));
    assert_true(has_line(out, "AFTER=%s", "1"));
    /* overlapping loans (two threads' LAPACK calls): the largest count
     * holds until the last one ends */
    assert_true(has_line(out, "NESTED=%s", "3 3 3 1"));
    free(out);
    /* a user's OpenBLAS count is never lent over */
    out = run_helper("OPENBLAS_NUM_THREADS=2", "threads 3", &code);
    assert_true(has_line(out, "LAPACK=%s", "2"));
    assert_true(has_line(out, "AFTER=%s", "2"));
    free(out);
}

/* A backend whose self-check fails is not used; GEMMs still come out right
 * and the status says why. */
static void test_failed_check_falls_back(void **state)
{
    (void)state;
    int code;
    char *out = run_helper("WMAT_TEST_FAIL_CHECK=openblas", "fallback", &code);
    assert_int_equal(code, 0);
    assert_true(has_line(out, "AVAIL_OPENBLAS=%s", "0"));
    assert_false(has_line(out, "PICK_SMALL=%s", "openblas"));
    assert_true(has_line(out, "SET_OPENBLAS=%s", "unsupported"));
    assert_true(has_line(out, "GEMM=%s", "ok"));
    assert_non_null(strstr(out, "failed on purpose"));
    free(out);
    out = run_helper("WMAT_TEST_FAIL_CHECK=onednn", "fallback", &code);
    assert_int_equal(code, 0);
    assert_true(has_line(out, "AVAIL_ONEDNN=%s", "0"));
    assert_false(has_line(out, "PICK_BIG=%s", "onednn"));
    assert_true(has_line(out, "GEMM=%s", "ok"));
    free(out);
}

/* ---- sysinfo */

static void test_sysinfo_quick(void **state)
{
    (void)state;
    FILE *f = tmpfile();
    assert_non_null(f);
    double t0 = wmat__now();
    TU_OK(wmat_sysinfo_report(f, 0, 1));
    double dt = wmat__now() - t0;
    long n = ftell(f);
    assert_true(n > 0);
    char *buf = calloc((size_t)n + 1, 1);
    rewind(f);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) print_message("%s\n", line);
    print_message("(quick sysinfo took %.2f s)\n", dt);
    rewind(f);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    const char *want[] = {"cpu:", "cpu features:", "openblas:", "openblas core:", "onednn:", "threads:",
                          "linalg status:", "fp32 gemm", "GFLOP/s", "memcpy"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(buf, want[i])) fail_msg("sysinfo lacks \"%s\"", want[i]);
    if (wmat__gemm_int8_native(WMAT_GEMM_ONEDNN)) assert_non_null(strstr(buf, "GOP/s"));
    free(buf);
    assert_int_equal(wmat_sysinfo_report(NULL, 0, 1), WMAT_ERR_INVALID);
}

/* ---- helper mode (run by the tests above as a child process) */

static int helper(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[2], "tune") == 0) {
        printf("START\n");
        fflush(stdout);
        int rc = wmat_blas_tune_reexec(argc, argv);
        wmat_linalg_init(0);
        /* a GEMM on the loaded OpenBLAS, checked */
        float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, -1, 2, 0, 3, 1}, C[4] = {0};
        int g = wmat__sgemm_on(WMAT_GEMM_OPENBLAS, 0, 0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);
        const char *ct = getenv("OPENBLAS_CORETYPE"), *gd = getenv(WMAT_BLAS_TUNE_GUARD);
        printf("RC=%d\nCORETYPE=%s\nGUARD=%s\nCORE=%s\nGEMM=%s\nSTATUS=%s\n", rc, ct ? ct : "(unset)",
               gd ? gd : "(unset)", wmat__blas_corename(),
               g == WMAT_OK && C[0] == 14 && C[1] == 2 && C[2] == 32 && C[3] == 2 ? "ok" : "wrong",
               wmat_linalg_status());
        return 0;
    }
    if (argc >= 4 && strcmp(argv[2], "threads") == 0) {
        wmat_linalg_init(atoi(argv[3]));
        printf("BLAS=%d\nOMP=%d\nLINALG=%d\n", wmat__blas_num_threads(), omp_get_max_threads(),
               wmat__linalg_threads(0));
        int prev = wmat__blas_threads_begin(0);
        printf("LAPACK=%d\n", wmat__blas_num_threads());
        wmat__blas_threads_end(prev);
        printf("AFTER=%d\n", wmat__blas_num_threads());
        int a = wmat__blas_threads_begin(3), n1 = wmat__blas_num_threads();
        int b = wmat__blas_threads_begin(2), n2 = wmat__blas_num_threads();
        wmat__blas_threads_end(a);
        int n3 = wmat__blas_num_threads();
        wmat__blas_threads_end(b);
        printf("NESTED=%d %d %d %d\n", n1, n2, n3, wmat__blas_num_threads());
        return 0;
    }
    if (argc >= 3 && strcmp(argv[2], "fallback") == 0) {
        wmat_linalg_init(0);
        float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, -1, 2, 0, 3, 1}, C[4] = {0};
        wmat_sgemm(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);
        float D[4];
        int set = wmat__sgemm_on(WMAT_GEMM_OPENBLAS, 0, 0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, D, 2);
        printf("AVAIL_OPENBLAS=%d\nAVAIL_ONEDNN=%d\nPICK_SMALL=%s\nPICK_BIG=%s\nSET_OPENBLAS=%s\nGEMM=%s\n"
               "STATUS=%s\n",
               wmat_gemm_backend_available(WMAT_GEMM_OPENBLAS), wmat_gemm_backend_available(WMAT_GEMM_ONEDNN),
               wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 16, 64, 64)),
               wmat_gemm_backend_name(wmat__sgemm_pick(WMAT_GEMM_AUTO, 512, 512, 512)),
               set == WMAT_ERR_UNSUPPORTED ? "unsupported" : set == WMAT_OK ? "ok" : "error",
               C[0] == 14 && C[1] == 2 && C[2] == 32 && C[3] == 2 ? "ok" : "wrong", wmat_linalg_status());
        return 0;
    }
    fprintf(stderr, "unknown helper mode\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--helper") == 0) return helper(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backend_api),
        cmocka_unit_test(test_sgemm_backends),
        cmocka_unit_test(test_sgemm_backends_threads),
        cmocka_unit_test(test_sgemm_degenerate),
        cmocka_unit_test(test_sgemm_invalid),
        cmocka_unit_test(test_sgemm_in_parallel_region),
        cmocka_unit_test(test_int8_backends),
        cmocka_unit_test(test_bf16_backends),
        cmocka_unit_test(test_tune_decide),
        cmocka_unit_test(test_tune_respects_user_coretype),
        cmocka_unit_test(test_tune_reexec_once),
        cmocka_unit_test(test_threads_respect_env),
        cmocka_unit_test(test_failed_check_falls_back),
        cmocka_unit_test(test_sysinfo_quick),
    };
    return tu_run_tests("gemm", tests, NULL, NULL);
}
