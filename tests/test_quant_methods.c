/* Quantization methods: GPTQ against a literal column-by-column
 * implementation of the paper's algorithm, the grids, imatrix, AdaDim, the
 * registry, bad input, and the quality claims on mix4m (docs/QUANT.md). */
#include "test_util.h"

#include "quant/methods.h"
#include "core/shapes.h"
#include "io/model_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixtures */

static void rand_matrix(float *W, int64_t n, uint64_t seed, float sd)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) W[i] = sd * wmat_rng_normal(&r);
}

/* H = 2/N X^T X for N tokens of n correlated features with a few outlier
 * channels (like real activations). */
static void make_hessian(double *H, int64_t n, int N, uint64_t seed)
{
    float *X = malloc((size_t)N * (size_t)n * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int t = 0; t < N; t++) {
        float common = wmat_rng_normal(&r);
        for (int64_t j = 0; j < n; j++) {
            float v = wmat_rng_normal(&r) + 0.5f * common;
            if (j % 37 == 5) v *= 8.0f; /* outlier channels */
            X[(int64_t)t * n + j] = v;
        }
    }
    memset(H, 0, (size_t)(n * n) * sizeof(double));
    for (int t = 0; t < N; t++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) H[i * n + j] += 2.0 / N * X[(int64_t)t * n + i] * X[(int64_t)t * n + j];
    free(X);
}

static wmat_qstats stats_of(double *H, int64_t n)
{
    wmat_qstats st;
    memset(&st, 0, sizeof st);
    st.n = n;
    st.H = H;
    return st;
}

/* ---- the literal algorithm (Frantar et al., Algorithm 1, no lazy batches)
 *
 * Double-precision Cholesky by hand, then column by column: quantize w_i,
 * e = (w_i - q_i) / U_ii, and update EVERY later column at once:
 * W[:, j] -= e U[i, j] for j > i. Groups are fitted from the current
 * columns when a new group starts. The grid (wmat__qfit, wmat__qcode) is
 * shared: it is not what is under test. */

static void chol_lower(double *A, int64_t n) /* A = L L^T, L in the lower part */
{
    for (int64_t j = 0; j < n; j++) {
        double s = A[j * n + j];
        for (int64_t k = 0; k < j; k++) s -= A[j * n + k] * A[j * n + k];
        A[j * n + j] = sqrt(s);
        for (int64_t i = j + 1; i < n; i++) {
            double v = A[i * n + j];
            for (int64_t k = 0; k < j; k++) v -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = v / A[j * n + j];
        }
        for (int64_t k = j + 1; k < n; k++) A[j * n + k] = 0.0;
    }
}

static void literal_gptq(float *W, int64_t m, int64_t n, const double *H0, int bits, int group, int act_order,
                         int per_ic, uint8_t *codes, float *scales, float *zeros, int32_t *perm)
{
    double *H = malloc((size_t)(n * n) * sizeof(double));
    double *Hi = calloc((size_t)(n * n), sizeof(double));
    float *U = malloc((size_t)(n * n) * sizeof(float));
    memcpy(H, H0, (size_t)(n * n) * sizeof(double));
    for (int64_t j = 0; j < n; j++)
        if (H[j * n + j] == 0) {
            H[j * n + j] = 1;
            for (int64_t r = 0; r < m; r++) W[r * n + j] = 0;
        }
    for (int64_t j = 0; j < n; j++) perm[j] = (int32_t)j;
    if (act_order) { /* stable insertion sort by decreasing (dead-fixed) diagonal */
        for (int64_t j = 0; j < n; j++) perm[j] = (int32_t)j;
        for (int64_t a = 1; a < n; a++) {
            int32_t v = perm[a];
            int64_t b = a - 1;
            while (b >= 0 && H[(int64_t)perm[b] * n + perm[b]] < H[(int64_t)v * n + v]) {
                perm[b + 1] = perm[b];
                b--;
            }
            perm[b + 1] = v;
        }
    }
    double *P = malloc((size_t)(n * n) * sizeof(double));
    float *Wp = malloc((size_t)(m * n) * sizeof(float));
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++) P[a * n + b] = H[(int64_t)perm[a] * n + perm[b]];
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) Wp[r * n + j] = W[r * n + perm[j]];
    double mean = 0;
    for (int64_t j = 0; j < n; j++) mean += P[j * n + j];
    for (int64_t j = 0; j < n; j++) P[j * n + j] += (double)0.01f * mean / n; /* lambda as the float parameter holds it */
    /* H^-1 from the Cholesky factor: solve L L^T X = I column by column */
    chol_lower(P, n);
    for (int64_t c = 0; c < n; c++) {
        double *y = calloc((size_t)n, sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            double v = i == c ? 1.0 : 0.0;
            for (int64_t k = 0; k < i; k++) v -= P[i * n + k] * y[k];
            y[i] = v / P[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) {
            double v = y[i];
            for (int64_t k = i + 1; k < n; k++) v -= P[k * n + i] * Hi[k * n + c];
            Hi[i * n + c] = v / P[i * n + i];
        }
        free(y);
    }
    /* U: upper factor of H^-1 = U^T U, i.e. the transpose of its lower factor */
    chol_lower(Hi, n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) U[i * n + j] = j >= i ? (float)Hi[j * n + i] : 0.0f;
    const int maxq = (1 << bits) - 1;
    if (per_ic) { /* column i's scales (groups of g rows) from the current column i */
        const int g = group ? group : (int)m;
        const int64_t gpc = m / g;
        for (int64_t i = 0; i < n; i++) {
            for (int64_t k = 0; k < gpc; k++)
                wmat__qfit(Wp + k * g * n + i, g, n, NULL, 0, bits, 0, 0, 0, &scales[i * gpc + k], &zeros[i * gpc + k]);
            for (int64_t r = 0; r < m; r++) {
                float *w = Wp + r * n;
                const int64_t gi = i * gpc + r / g;
                const uint8_t q = wmat__qcode(w[i], scales[gi], zeros[gi], maxq);
                codes[r * n + i] = q;
                const float e = (w[i] - scales[gi] * ((float)q - zeros[gi])) / U[i * n + i];
                for (int64_t j = i + 1; j < n; j++) w[j] -= e * U[i * n + j];
            }
        }
    } else {
        const int g = group ? group : (int)n;
        const int64_t gpr = n / g;
        for (int64_t r = 0; r < m; r++)
            if (g == n) wmat__qfit(Wp + r * n, n, 1, NULL, 0, bits, 0, 0, 0, &scales[r], &zeros[r]);
        for (int64_t i = 0; i < n; i++) {
            for (int64_t r = 0; r < m; r++) {
                float *w = Wp + r * n;
                const int64_t gi = r * gpr + i / g;
                if (g != n && i % g == 0) wmat__qfit(w + i, g, 1, NULL, 0, bits, 0, 0, 0, &scales[gi], &zeros[gi]);
                const uint8_t q = wmat__qcode(w[i], scales[gi], zeros[gi], maxq);
                codes[r * n + i] = q;
                const float e = (w[i] - scales[gi] * ((float)q - zeros[gi])) / U[i * n + i];
                for (int64_t j = i + 1; j < n; j++) w[j] -= e * U[i * n + j];
            }
        }
    }
    free(H);
    free(Hi);
    free(U);
    free(P);
    free(Wp);
}

static void check_gptq_vs_literal(int64_t m, int64_t n, int bits, int group, int act_order, int per_ic,
                                  double min_equal)
{
    float *W = malloc((size_t)(m * n) * sizeof(float)), *W2 = malloc((size_t)(m * n) * sizeof(float));
    double *H = malloc((size_t)(n * n) * sizeof(double));
    rand_matrix(W, m * n, 42, 0.05f);
    make_hessian(H, n, 4 * (int)n, 7);
    memcpy(W2, W, (size_t)(m * n) * sizeof(float));
    wmat_qstats st = stats_of(H, n);
    wmat_qparams p = wmat__qparams_default();
    p.bits = bits;
    p.group = group;
    p.act_order = act_order;
    p.axis = per_ic ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
    p.block = 128;
    p.n_threads = 2;
    wmat_qresult q;
    wmat_qmethod_info info;
    TU_OK(wmat__quant_gptq(&q, W, m, n, &st, &p, &info));
    const int g = group ? group : (int)(per_ic ? m : n);
    const int64_t ng = per_ic ? n * (m / g) : m * (n / g);
    uint8_t *codes = malloc((size_t)(m * n));
    float *sc = malloc((size_t)ng * sizeof(float)), *ze = malloc((size_t)ng * sizeof(float));
    int32_t *perm = malloc((size_t)n * sizeof(int32_t));
    literal_gptq(W2, m, n, H, bits, group, act_order, per_ic, codes, sc, ze, perm);
    int64_t eq = 0, sc_eq = 0;
    for (int64_t i = 0; i < m * n; i++) eq += codes[i] == q.codes[i];
    for (int64_t i = 0; i < ng; i++) sc_eq += sc[i] == q.scales[i] && ze[i] == q.zeros[i];
    if (act_order)
        for (int64_t j = 0; j < n; j++) assert_int_equal(perm[j], q.perm[j]);
    const double frac = (double)eq / (double)(m * n), sfrac = (double)sc_eq / (double)ng;
    print_message("gptq %lldx%lld %d bits %s group %d act-order %d: %.5f of codes and %.5f of scales equal the "
                  "literal algorithm\n",
                  (long long)m, (long long)n, bits, per_ic ? "per-IC" : "per-OC", g, act_order, frac, sfrac);
    assert_true(frac >= min_equal);
    assert_true(sfrac >= min_equal);
    wmat_qresult_free(&q);
    free(W);
    free(W2);
    free(H);
    free(codes);
    free(sc);
    free(ze);
    free(perm);
}

/* Blocked and lazy (B = 128) vs literal: the two differ only in the order
 * of float additions (a block's errors reach later columns through one
 * GEMM instead of one update per column), so a code can flip only where a
 * value sits within float rounding of a grid midpoint; we require 99.9%. */
static void test_gptq_matches_literal(void **state)
{
    (void)state;
    check_gptq_vs_literal(48, 320, 4, 0, 0, 0, 0.999);   /* per-OC, 3 blocks (the last partial) */
    check_gptq_vs_literal(40, 256, 3, 32, 0, 0, 0.999);  /* groups refit inside blocks */
    check_gptq_vs_literal(40, 256, 4, 0, 1, 0, 0.999);   /* act-order */
    check_gptq_vs_literal(24, 384, 2, 192, 1, 0, 0.999); /* group 192: blocks of 192 */
    check_gptq_vs_literal(40, 200, 3, 0, 0, 1, 0.999);   /* per-IC (AdaDim's axis) */
    check_gptq_vs_literal(48, 160, 4, 16, 1, 1, 0.999);  /* groups of 16 outputs, act-order */
}

/* GPTQ's unit factor (wmat__gptq_factor_unit, what the left-looking loop
 * reads) against the inverse factor (wmat__gptq_factor): upper, unit
 * diagonal, and U Vs = diag(U) (Vs = V diag(V)^-1 with V = U^-1), in both
 * precisions, with and without act-order (the same perm and damping). */
static void test_gptq_unit_factor(void **state)
{
    (void)state;
    const int64_t n = 300; /* not a multiple of the transposes' tiles */
    double *H = malloc((size_t)(n * n) * sizeof(double));
    float *U = malloc((size_t)(n * n) * sizeof(float)), *V = malloc((size_t)(n * n) * sizeof(float));
    int32_t *p1 = malloc((size_t)n * sizeof(int32_t)), *p2 = malloc((size_t)n * sizeof(int32_t));
    make_hessian(H, n, 2 * (int)n, 5);
    for (int prec = 1; prec <= 2; prec++)
        for (int act = 0; act < 2; act++) {
            double l1 = 0.01, l2 = 0.01;
            TU_OK(wmat__gptq_factor(H, n, act, prec, 2, &l1, p1, U));
            TU_OK(wmat__gptq_factor_unit(H, n, act, prec, 2, &l2, p2, V));
            assert_true(l1 == l2);
            assert_memory_equal(p1, p2, (size_t)n * sizeof(int32_t));
            double err = 0.0, dmax = 0.0;
            for (int64_t i = 0; i < n; i++) {
                assert_true(V[i * n + i] == 1.0f);
                for (int64_t j = 0; j < i; j++) assert_true(V[i * n + j] == 0.0f);
                dmax = fmax(dmax, U[i * n + i]);
            }
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = i; j < n; j++) {
                    double acc = 0.0;
                    for (int64_t k = i; k <= j; k++) acc += (double)U[i * n + k] * V[k * n + j];
                    if (j == i) acc -= U[i * n + i];
                    err = fmax(err, fabs(acc));
                }
            print_message("prec %d act-order %d: max |U Vs - diag(U)| / max U_ii = %.3g\n", prec, act, err / dmax);
            assert_true(err / dmax < (prec == 1 ? 1e-4 : 1e-3));
        }
    free(H);
    free(U);
    free(V);
    free(p1);
    free(p2);
}

/* The report's output errors (wmat__qoutput_errors): tr(dW H dW^T) and
 * tr(W H W^T) equal wmat__qoutput_error's full products up to float
 * rounding for rows <= 1024; above, they are those of every s-th row
 * (s = ceil(rows / 1024)), the same on 1 and 2 threads. */
static void test_output_errors(void **state)
{
    (void)state;
    const int64_t n = 300;
    double *H = malloc((size_t)(n * n) * sizeof(double));
    make_hessian(H, n, 2 * (int)n, 9);
    const int64_t rows_list[2] = {700, 2500};
    for (int t = 0; t < 2; t++) {
        const int64_t m = rows_list[t], s = m > 1024 ? (m + 1023) / 1024 : 1, k = (m + s - 1) / s;
        float *W = malloc((size_t)(m * n) * sizeof(float)), *Q = malloc((size_t)(m * n) * sizeof(float));
        float *Ws = malloc((size_t)(k * n) * sizeof(float)), *Qs = malloc((size_t)(k * n) * sizeof(float));
        float *Z = calloc((size_t)(k * n), sizeof(float));
        rand_matrix(W, m * n, 3 + (uint64_t)t, 0.05f);
        rand_matrix(Q, m * n, 4 + (uint64_t)t, 0.005f);
        for (int64_t i = 0; i < m * n; i++) Q[i] += W[i];
        for (int64_t r = 0; r < k; r++) {
            memcpy(Ws + r * n, W + r * s * n, (size_t)n * sizeof(float));
            memcpy(Qs + r * n, Q + r * s * n, (size_t)n * sizeof(float));
        }
        const double e_ref = wmat__qoutput_error(Ws, Qs, k, n, H), e0_ref = wmat__qoutput_error(Ws, Z, k, n, H);
        double e1, e01, e2, e02;
        TU_OK(wmat__qoutput_errors(W, Q, m, n, H, 1, &e1, &e01));
        TU_OK(wmat__qoutput_errors(W, Q, m, n, H, 2, &e2, &e02));
        print_message("rows %lld (every %lld-th): e %.6g vs %.6g, e0 %.6g vs %.6g\n", (long long)m, (long long)s, e1,
                      e_ref, e01, e0_ref);
        assert_true(e1 == e2 && e01 == e02);
        TU_ASSERT_NEAR(e1 / e_ref, 1.0, 1e-4);
        TU_ASSERT_NEAR(e01 / e0_ref, 1.0, 1e-4);
        free(W);
        free(Q);
        free(Ws);
        free(Qs);
        free(Z);
    }
    free(H);
}

/* ---- grids */

static void test_rtn_grid(void **state)
{
    (void)state;
    /* asymmetric 4-bit min-max on [-1, 2]: scale 0.2, zero 5 */
    float x[4] = {-1.0f, 0.0f, 0.9f, 2.0f};
    float s, z;
    wmat__qfit(x, 4, 1, NULL, 0, 4, 0, 0, 0, &s, &z);
    assert_float_equal(s, wmat_f16_to_f32(wmat_f32_to_f16(0.2f)), 1e-7);
    assert_float_equal(z, 5.0f, 0);
    assert_int_equal(wmat__qcode(-1.0f, s, z, 15), 0);
    assert_int_equal(wmat__qcode(2.0f, s, z, 15), 15);
    /* symmetric: zero 8, range +-2 */
    wmat__qfit(x, 4, 1, NULL, 0, 4, 1, 0, 0, &s, &z);
    assert_float_equal(z, 8.0f, 0);
    assert_float_equal(s, wmat_f16_to_f32(wmat_f32_to_f16(4.0f / 15.0f)), 1e-7);
    /* all-zero group: range [-1, 1], codes at the zero point */
    float zz[3] = {0, 0, 0};
    wmat__qfit(zz, 3, 1, NULL, 0, 3, 0, 0, 0, &s, &z);
    assert_true(s > 0);
    assert_float_equal(s * ((float)wmat__qcode(0.0f, s, z, 7) - z), 0.0f, 0);

    /* per-OC, groups, per-IC: layout of the result and error falls with bits */
    const int64_t m = 64, n = 128;
    float *W = malloc(m * n * 4), *D = malloc(m * n * 4);
    rand_matrix(W, m * n, 3, 1.0f);
    double prev = INFINITY;
    for (int bits = 2; bits <= 8; bits++) {
        wmat_qparams p = wmat__qparams_default();
        p.bits = bits;
        wmat_qresult q;
        TU_OK(wmat__quant_rtn(&q, W, m, n, NULL, &p, NULL));
        assert_int_equal(wmat_qresult_n_groups(&q), m);
        wmat_qresult_dequant(&q, D);
        double e = 0;
        for (int64_t i = 0; i < m * n; i++) e += (W[i] - D[i]) * (W[i] - D[i]);
        assert_true(e < prev);
        prev = e;
        wmat_qresult_free(&q);
    }
    wmat_qparams p = wmat__qparams_default();
    p.axis = WMAT_QAXIS_OUT;
    p.group = 16;
    wmat_qresult q;
    TU_OK(wmat__quant_rtn(&q, W, m, n, NULL, &p, NULL));
    assert_int_equal(wmat_qresult_n_groups(&q), n * (m / 16));
    /* clipping search never loses to min-max */
    wmat_qparams pc = wmat__qparams_default();
    pc.group = 32;
    wmat_qresult q1, q2;
    TU_OK(wmat__quant_rtn(&q1, W, m, n, NULL, &pc, NULL));
    pc.clip = 1;
    TU_OK(wmat__quant_rtn(&q2, W, m, n, NULL, &pc, NULL));
    double e1 = 0, e2 = 0;
    wmat_qresult_dequant(&q1, D);
    for (int64_t i = 0; i < m * n; i++) e1 += (W[i] - D[i]) * (W[i] - D[i]);
    wmat_qresult_dequant(&q2, D);
    for (int64_t i = 0; i < m * n; i++) e2 += (W[i] - D[i]) * (W[i] - D[i]);
    assert_true(e2 <= e1);
    wmat_qresult_free(&q);
    wmat_qresult_free(&q1);
    wmat_qresult_free(&q2);
    free(W);
    free(D);
}

/* imatrix: lower weighted error sum_j d_j (w - q)^2 than plain RTN */
static void test_imatrix_weighted(void **state)
{
    (void)state;
    const int64_t m = 32, n = 64;
    float *W = malloc(m * n * 4), *D = malloc(m * n * 4);
    rand_matrix(W, m * n, 5, 1.0f);
    wmat_qstats st;
    TU_OK(wmat__qstats_init(&st, n, 0));
    for (int64_t j = 0; j < n; j++) st.x2[j] = j % 8 == 0 ? 100.0 : 0.1;
    wmat_qparams p = wmat__qparams_default();
    p.bits = 3;
    double e[2];
    for (int k = 0; k < 2; k++) {
        wmat_qresult q;
        TU_OK(k ? wmat__quant_imatrix(&q, W, m, n, &st, &p, NULL) : wmat__quant_rtn(&q, W, m, n, NULL, &p, NULL));
        wmat_qresult_dequant(&q, D);
        e[k] = 0;
        for (int64_t i = 0; i < m * n; i++) e[k] += st.x2[i % n] * (W[i] - D[i]) * (W[i] - D[i]);
        wmat_qresult_free(&q);
    }
    print_message("imatrix: weighted error %.4g vs RTN %.4g\n", e[1], e[0]);
    assert_true(e[1] < 0.8 * e[0]);
    wmat__qstats_free(&st);
    free(W);
    free(D);
}

/* AdaDim keeps the better dimension; every registered method runs */
static void test_adadim_and_registry(void **state)
{
    (void)state;
    const int64_t m = 64, n = 96;
    float *W = malloc(m * n * 4), *D = malloc(m * n * 4);
    double *H = malloc(n * n * 8);
    rand_matrix(W, m * n, 11, 0.1f);
    for (int64_t r = 0; r < m; r++) W[r * n + 7] *= 20.0f; /* an outlier input column */
    make_hessian(H, n, 400, 13);
    wmat_qstats st = stats_of(H, n);
    st.x2 = calloc(n, sizeof(double));
    for (int64_t j = 0; j < n; j++) st.x2[j] = H[j * n + j] / 2;
    for (int base = 0; base < 2; base++) {
        double e[3];
        for (int k = 0; k < 3; k++) {
            wmat_qparams p = wmat__qparams_default();
            p.bits = 3;
            p.axis = k == 1 ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
            wmat_qresult q;
            wmat_qmethod_info info;
            wmat_qmethod_fn fn = k < 2 ? (base ? wmat__quant_gptq : wmat__quant_rtn)
                                       : (base ? wmat__quant_adadim_gptq : wmat__quant_adadim_rtn);
            TU_OK(fn(&q, W, m, n, &st, &p, &info));
            wmat_qresult_dequant(&q, D);
            e[k] = wmat__qoutput_error(W, D, m, n, H);
            wmat_qresult_free(&q);
        }
        print_message("adadim over %s: per-OC %.4g, per-IC %.4g, adadim %.4g\n", base ? "gptq" : "rtn", e[0], e[1], e[2]);
        assert_true(e[2] <= fmin(e[0], e[1]) * (1 + 1e-9));
    }
    int n_methods = 0;
    float *G = malloc(m * n * 4); /* methods that read dL/dW (GWQ): a stand-in */
    rand_matrix(G, m * n, 17, 1e-3f);
    for (const wmat_qmethod *qm = wmat__qmethods; qm->name; qm++, n_methods++) {
        wmat_qparams p = wmat__qparams_default();
        wmat_qresult q;
        st.grad = qm->stats & WMAT_QSTAT_GRADIENTS ? G : NULL;
        TU_OK(qm->fn(&q, W, m, n, &st, &p, NULL));
        wmat_qresult_dequant(&q, D);
        const double e = wmat__qoutput_error(W, D, m, n, H);
        assert_true(isfinite(e));
        wmat_qresult_free(&q);
        assert_ptr_equal(wmat__qmethod_find(qm->name), qm);
        assert_string_equal(wmat_quantize_method_name(n_methods, NULL), qm->name);
    }
    assert_true(n_methods >= 5);
    free(G);
    free(st.x2);
    free(W);
    free(D);
    free(H);
}

/* ---- bad input */

static void test_bad_input(void **state)
{
    (void)state;
    const int64_t m = 16, n = 48;
    float *W = malloc(m * n * 4);
    double *H = calloc(n * n, 8);
    rand_matrix(W, m * n, 1, 1.0f);
    wmat_qstats st = stats_of(H, n);
    wmat_qparams p = wmat__qparams_default();
    wmat_qresult q;
    wmat_qmethod_info info;
    p.bits = 1;
    assert_int_equal(wmat__quant_rtn(&q, W, m, n, NULL, &p, NULL), WMAT_ERR_INVALID);
    p.bits = 9;
    assert_int_equal(wmat__quant_gptq(&q, W, m, n, &st, &p, NULL), WMAT_ERR_INVALID);
    p.bits = 4;
    p.group = 32; /* does not divide 48 */
    assert_int_equal(wmat__quant_rtn(&q, W, m, n, NULL, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "does not divide"));
    p.group = 0;
    /* GPTQ without statistics */
    assert_int_equal(wmat__quant_gptq(&q, W, m, n, NULL, &p, NULL), WMAT_ERR_INVALID);
    /* all-zero H: every input dead -> H = I, W = 0, documented */
    TU_OK(wmat__quant_gptq(&q, W, m, n, &st, &p, &info));
    wmat_qresult_free(&q);
    /* rank-1 H (one calibration token): singular, damping makes it work */
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) H[i * n + j] = (double)(i + 1) * (j + 1);
    TU_OK(wmat__quant_gptq(&q, W, m, n, &st, &p, &info));
    assert_true(info.damp == (double)0.01f);
    wmat_qresult_free(&q);
    /* indefinite H: damping is raised until Cholesky succeeds, reported */
    for (int64_t i = 0; i < n * n; i++) H[i] = 0;
    for (int64_t i = 0; i < n; i++) H[i * n + i] = 1.0;
    H[1] = H[n] = 3.0; /* [[1,3],[3,1]] block: eigenvalue -2 */
    TU_OK(wmat__quant_gptq(&q, W, m, n, &st, &p, &info));
    print_message("indefinite H: damping raised to %g\n", info.damp);
    assert_true(info.damp > 0.05);
    wmat_qresult_free(&q);
    /* NaN in H: a clear numeric error */
    H[5] = NAN;
    H[5 * n + 5] = NAN;
    assert_int_equal(wmat__quant_gptq(&q, W, m, n, &st, &p, NULL), WMAT_ERR_NUMERIC);
    print_message("NaN H: %s\n", wmat_last_error());
    free(W);
    free(H);
}

/* ---- models */

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static double ppl(wmat_model *m, const int32_t *ids, size_t n, int ctx, int windows)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, n, ctx, windows, &r));
    wmat_runtime_free(rt);
    return r.ppl;
}

/* stories260K: every method end to end through the driver (tied classifier
 * left alone; hidden 172 so groups of 32 need the documented fallback). */
static void test_driver_stories260k(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    int32_t *cal;
    size_t nc;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &nc));
    for (int i = 0; wmat_quantize_method_name(i, NULL); i++) {
        wmat_model *m = load(mp);
        wmat_quantize_params p = wmat_quantize_default_params();
        p.method = wmat_quantize_method_name(i, NULL);
        p.bits = 4;
        p.group = 32;
        p.calib = cal;
        p.n_calib = 8 * 128;
        p.calib_ctx = 128;
        p.keep = "layers.4.mlp";
        /* methods that read dL/dW: from the trainer, on the fp32 model; GWQ's
         * packed dense part needs inputs in multiples of 32 (not down_proj's 172) */
        float **grads = NULL;
        if (wmat__qmethod_find(p.method)->stats & WMAT_QSTAT_GRADIENTS) {
            TU_OK(wmat_model_weight_gradients(m, cal, 4 * 128 + 1, 128, 4, 1, &grads, NULL));
            p.gradients = (const float *const *)grads;
            p.overrides = "*layers.[0-3].mlp.down_proj*=gptq"; /* layer 4's MLP stays kept */
        }
        /* without the fallback: a clear error naming the tensor (AdaDim
         * only needs one of its two axes to divide, and 32 divides 64) */
        int has_group = 0; /* a method without groups (PB-LLM) has nothing to fall back from */
        for (const wmat_param_spec *k = wmat__qmethod_find(p.method)->schema; k->name; k++) has_group |= !strcmp(k->name, "group");
        if (strncmp(p.method, "adadim", 6) && has_group) {
            assert_int_equal(wmat_quantize_model(m, &p, NULL), WMAT_ERR_INVALID);
            assert_non_null(strstr(wmat_last_error(), "does not divide"));
            p.group_fallback = 1;
        }
        wmat_quantize_report rep;
        TU_OK(wmat_quantize_model(m, &p, &rep));
        assert_int_equal(rep.n_tensors, 5 * 7);
        int kept = 0;
        for (int k = 0; k < rep.n_tensors; k++) kept += !rep.tensors[k].quantized;
        assert_int_equal(kept, 3);
        assert_true(rep.bytes_after < rep.bytes_before);
        print_message("stories260K %-11s: %.3f bits/weight, %d block passes\n", p.method, rep.bits_per_weight, rep.block_passes);
        wmat_quantize_report_free(&rep);
        wmat_model_weight_gradients_free(m, grads);
        wmat_model_free(m);
    }
    /* no calibration for a method that needs it */
    wmat_model *m = load(mp);
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "gptq";
    assert_int_equal(wmat_quantize_model(m, &p, NULL), WMAT_ERR_INVALID);
    wmat_model_free(m);
    free(cal);
}

/* Stage mode's resumed passes (kept attention output and SwiGLU product)
 * against passes from the block's input: on stories260K, with each slot's
 * weights changed right after its pass (as quantization does), every H,
 * x2 and absmax, and the streams after each block, bit for bit. */
static void test_calib_resume(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    int32_t *cal;
    size_t nc;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &nc));
    wmat_model *m = load(mp);
    const wmat_config *c = wmat_model_config(m);
    const int ctx = 64, nw = 3;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat__calib_states a, b;
    TU_OK(wmat__calib_states_init(&a, rt, cal, nw, ctx, c->dim));
    TU_OK(wmat__calib_states_init(&b, rt, cal, nw, ctx, c->dim));
    a.resume = 1;
    const wmat_linear_kind first[4][3] = {{WMAT_LIN_Q, WMAT_LIN_K, WMAT_LIN_V},
                                          {WMAT_LIN_O, WMAT_LIN_O, WMAT_LIN_O},
                                          {WMAT_LIN_GATE, WMAT_LIN_UP, WMAT_LIN_UP},
                                          {WMAT_LIN_DOWN, WMAT_LIN_DOWN, WMAT_LIN_DOWN}};
    for (int l = 0; l < c->n_layers; l++) {
        for (int s = 0; s < 4; s++) {
            const int64_t n = s == WMAT_CSLOT_DOWN ? c->hidden_dim : s == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
            wmat_qstats sa, sb;
            TU_OK(wmat__qstats_init(&sa, n, 1));
            TU_OK(wmat__qstats_init(&sb, n, 1));
            wmat_qstats *slots_a[WMAT_CSLOT_COUNT] = {0}, *slots_b[WMAT_CSLOT_COUNT] = {0};
            slots_a[s] = &sa;
            slots_b[s] = &sb;
            TU_OK(wmat__calib_collect(&a, c->n_layers, slots_a, 1u << s, 0));
            TU_OK(wmat__calib_collect(&b, c->n_layers, slots_b, 1u << s, 0));
            assert_int_equal(a.stage, s);
            assert_int_equal(b.stage, 0);
            assert_memory_equal(sa.H, sb.H, (size_t)(n * n) * sizeof(double));
            assert_memory_equal(sa.x2, sb.x2, (size_t)n * sizeof(double));
            assert_memory_equal(sa.absmax, sb.absmax, (size_t)n * sizeof(float));
            for (int64_t i = 0; i < n * n; i++) assert_false(isnan(sa.H[i]));
            wmat__qstats_free(&sa);
            wmat__qstats_free(&sb);
            /* the slot's weights change, as after its quantization */
            for (int k = 0; k < 3; k++) {
                if (k && first[s][k] == first[s][k - 1]) continue;
                wmat_tensor *t = wmat_model_linear(m, l, first[s][k]);
                TU_OK(wmat__tensor_make_writable(t));
                float *w = t->data;
                for (int64_t i = 0; i < wmat_tensor_nelem(t); i++) w[i] = 0.01f * rintf(w[i] * 100.0f);
            }
        }
        TU_OK(wmat__calib_advance(&a));
        TU_OK(wmat__calib_advance(&b));
        assert_int_equal(a.stage, 0);
        assert_memory_equal(a.X, b.X, (size_t)nw * ctx * c->dim * sizeof(float));
    }
    /* resumed: one forward per block (8 stage entries, partial ones
     * included), against 14 from the block's input */
    print_message("calibration stages: resumed %lld, from the input %lld (%d blocks x %d windows)\n",
                  (long long)a.stage_runs, (long long)b.stage_runs, c->n_layers, nw);
    assert_true(a.stage_runs < b.stage_runs);
    wmat__calib_states_free(&a);
    wmat__calib_states_free(&b);
    wmat_runtime_free(rt);
    wmat_model_free(m);
    free(cal);
}

/* CLI: bad input gets a clear message */
static void test_cli_errors(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    /* arguments after `quantize MODEL --to none` (%s: the calibration file),
     * exit code, and a piece of the message */
    static const struct {
        const char *args;
        int code;
        const char *says;
    } cases[] = {
        {"--bits 9", 2, "2..8"},
        {"--method gptq", 2, "--calib"},
        {"--method gptq --calib %s --calib-tokens 100000000", 1, "fewer than"},
        {"--group 64 --quiet", 1, "does not divide"},
        {"--method imatrix --calib %s --calib-tokens 2048 --bits 3", 0, "bits/weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[512], cmd[2048];
        snprintf(args, sizeof args, cases[i].args, cp);
        snprintf(cmd, sizeof cmd, "%s quantize %s --to none %s 2>&1", tu_cli(), mp, args);
        int code;
        char *out = tu_run(cmd, &code);
        if (code != cases[i].code || !strstr(out, cases[i].says))
            fail_msg("quantize %s: exit %d (want %d), output:\n%s", args, code, cases[i].code, out);
        free(out);
    }
}

/* The CLI writes real packed files through quantized storage; the packed
 * model computes what the fake-quant weights compute. */
static void test_cli_packed_matches_fake_quant(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/mix4m.bin");
    TU_NEED_DATA(ep, "golden/wikitext2_valid_tokenized.tok512.u16");
    char cmd[2048];
    int code;
    const char *dir = tu_tmp("mix4m-rtn4g64");
    snprintf(cmd, sizeof cmd,
             "%s quantize %s %s --method rtn --bits 4 --group 64 --quiet --eval %s --eval-windows 2 2>&1 | grep perplexity",
             tu_cli(), mp, dir, ep);
    char *fake = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    snprintf(cmd, sizeof cmd, "%s eval %s --tokens %s --ctx 256 --max-windows 2 --json 2>&1", tu_cli(), dir, ep);
    char *packed = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    double a = 0, b = 0;
    assert_int_equal(sscanf(fake, "perplexity %lf", &a), 1);
    const char *pp = strstr(packed, "\"ppl\": ");
    assert_non_null(pp);
    b = atof(pp + 7);
    print_message("rtn-4 g64: fake-quant ppl %.4f, packed native %.4f\n", a, b);
    TU_ASSERT_NEAR(a, b, 1e-3 * a);
    free(fake);
    free(packed);
    /* GGUF: schemes without a ggml type get a clear message */
    snprintf(cmd, sizeof cmd, "%s quantize %s %s --to gguf --method rtn --bits 3 --quiet 2>&1", tu_cli(), mp,
             tu_tmp("q3.gguf"));
    char *out = tu_run(cmd, &code);
    assert_int_equal(code, 1);
    assert_non_null(strstr(out, "GGUF"));
    free(out);
}

/* The quality claims on mix4m (docs/QUANT.md): per-OC, asymmetric min-max,
 * calibration = the first 64 windows of 256 tokens of the TinyStories head,
 * evaluation = the first 64 windows of WikiText-2, ctx 256. */
static double quantized_ppl_axis(const char *mp, const char *method, int bits, int per_ic, const int32_t *cal,
                                 size_t nc, const int32_t *ev, size_t ne)
{
    wmat_model *m = load(mp);
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = method;
    p.bits = bits;
    p.per_ic = per_ic;
    p.calib = cal;
    p.n_calib = nc;
    p.calib_ctx = 256;
    wmat_quantize_report rep;
    TU_OK(wmat_quantize_model(m, &p, &rep));
    const double r = ppl(m, ev, ne, 256, 64);
    print_message("mix4m %-6s %d bits%s: ppl %.4f (%.2f s, %d block passes)\n", method, bits, per_ic ? " per-IC" : "", r,
                  rep.seconds, rep.block_passes);
    wmat_quantize_report_free(&rep);
    wmat_model_free(m);
    return r;
}

static double quantized_ppl(const char *mp, const char *method, int bits, const int32_t *cal, size_t nc,
                            const int32_t *ev, size_t ne)
{
    return quantized_ppl_axis(mp, method, bits, 0, cal, nc, ev, ne);
}

static void test_mix4m_quality(void **state)
{
    (void)state;
    if (getenv("WMAT_SKIP_SLOW")) {
        print_message("SKIP: WMAT_SKIP_SLOW is set (the mix4m quality check takes minutes)\n");
        skip();
        return;
    }
    TU_NEED_DATA(mp, "models/mix4m.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    TU_NEED_DATA(ep, "golden/wikitext2_valid_tokenized.tok512.u16");
    int32_t *cal, *ev;
    size_t nc, ne;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &nc));
    TU_OK(wmat_read_tokens_u16(ep, &ev, &ne));
    assert_true(nc >= 64 * 256);
    nc = 64 * 256;
    wmat_model *m = load(mp);
    const double fp = ppl(m, ev, ne, 256, 64);
    wmat_model_free(m);
    assert_float_equal(fp, 21.9611, 2e-3);
    const double r8 = quantized_ppl(mp, "rtn", 8, cal, nc, ev, ne);
    TU_ASSERT_NEAR(r8 / fp, 1, 0.005);
    const double r4 = quantized_ppl(mp, "rtn", 4, cal, nc, ev, ne), g4 = quantized_ppl(mp, "gptq", 4, cal, nc, ev, ne);
    const double r3 = quantized_ppl(mp, "rtn", 3, cal, nc, ev, ne), g3 = quantized_ppl(mp, "gptq", 3, cal, nc, ev, ne);
    /* GPTQ's increase vs RTN's, and vs the reference implementation's */
    assert_true(g4 - fp <= 0.7 * (r4 - fp));
    assert_true(g3 - fp <= 0.5 * (r3 - fp));
    assert_true(g4 - fp <= 1.3 * (22.060 - 21.961));
    assert_true(g3 - fp <= 1.3 * (22.000 - 21.961));
    /* AdaDim against its two fixed dimensions. Calibrated in the evaluation's
     * domain (WikiText tokens from 200000 on, disjoint from the evaluated
     * windows) it beats both at 3 bits, over RTN and over GPTQ. Across
     * domains (TinyStories calibration) AdaDim-GPTQ's per-IC k/v choice loses
     * to per-OC on WikiText (docs/QUANT.md, "AdaDim"): printed, not asserted. */
    const double a3x = quantized_ppl(mp, "adadim-gptq", 3, cal, nc, ev, ne);
    print_message("TinyStories calibration: adadim-gptq 3: %.4f vs gptq per-OC %.4f\n", a3x, g3);
    assert_true(ne >= 200000 + 64 * 256);
    const int32_t *wcal = ev + 200000;
    const double wr_oc = quantized_ppl_axis(mp, "rtn", 3, 0, wcal, nc, ev, ne);
    const double wr_ic = quantized_ppl_axis(mp, "rtn", 3, 1, wcal, nc, ev, ne);
    const double wr_ad = quantized_ppl_axis(mp, "adadim-rtn", 3, 0, wcal, nc, ev, ne);
    const double wg_oc = quantized_ppl_axis(mp, "gptq", 3, 0, wcal, nc, ev, ne);
    const double wg_ic = quantized_ppl_axis(mp, "gptq", 3, 1, wcal, nc, ev, ne);
    const double wg_ad = quantized_ppl_axis(mp, "adadim-gptq", 3, 0, wcal, nc, ev, ne);
    assert_true(wr_ad <= fmin(wr_oc, wr_ic));
    assert_true(wg_ad <= fmin(wg_oc, wg_ic));
    free(cal);
    free(ev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gptq_matches_literal),
        cmocka_unit_test(test_gptq_unit_factor),
        cmocka_unit_test(test_output_errors),
        cmocka_unit_test(test_rtn_grid),
        cmocka_unit_test(test_imatrix_weighted),
        cmocka_unit_test(test_adadim_and_registry),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_driver_stories260k),
        cmocka_unit_test(test_calib_resume),
        cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_cli_packed_matches_fake_quant),
        cmocka_unit_test(test_mix4m_quality),
    };
    return tu_run_tests("quant_methods", tests, NULL, NULL);
}
