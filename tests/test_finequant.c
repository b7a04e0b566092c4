/* FineQuant-style adaptive groups (SPECS.md G5): per channel on a Gaussian
 * matrix, a finer group where one input column holds outliers, and the
 * choice and the values against a literal restatement of the rule. */
#include "test_util.h"

#include "quant/methods.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

static void gaussian(float *W, int64_t n, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) W[i] = 0.02f * wmat_rng_normal(&r);
}

/* symmetric RTN of W (m, n) in groups of g, literally */
static void literal_rtn(const float *W, int m, int n, int g, int bits, float *Q)
{
    const int maxq = (1 << bits) - 1;
    const float z = (float)(1 << (bits - 1));
    for (int r = 0; r < m; r++)
        for (int k = 0; k < n / g; k++) {
            float amax = 0;
            for (int i = 0; i < g; i++) amax = fmaxf(amax, fabsf(W[r * n + k * g + i]));
            if (amax == 0) amax = 1;
            const float s = f16r(2 * amax / (float)maxq);
            for (int i = 0; i < g; i++) {
                const float w = W[r * n + k * g + i];
                const float c = fminf(fmaxf(rintf(w / s) + z, 0), (float)maxq);
                Q[r * n + k * g + i] = s * (c - z);
            }
        }
}

static double rel(const float *W, const float *Q, int64_t n)
{
    double a = 0, b = 0;
    for (int64_t i = 0; i < n; i++) a += ((double)W[i] - Q[i]) * ((double)W[i] - Q[i]), b += (double)W[i] * W[i];
    return sqrt(a / b);
}

/* the rule, literally: candidates n, n/2, ... (whole, >= min_group,
 * multiples of 32 when n is), the coarsest with e <= tau e_finest */
static int literal_choice(const float *W, int m, int n, int bits, double tau, int min_group, float *Q)
{
    int cand[32], nc = 0;
    for (int g = n;; g /= 2) {
        if (nc > 0 && g < min_group) break;
        if (nc == 0 || n % 32 || g % 32 == 0) cand[nc++] = g;
        if (g % 2) break;
    }
    double e[32];
    for (int k = 0; k < nc; k++) {
        literal_rtn(W, m, n, cand[k], bits, Q);
        e[k] = rel(W, Q, (int64_t)m * n);
    }
    int pick = nc - 1;
    for (int k = 0; k < nc; k++)
        if (e[k] <= tau * e[nc - 1]) {
            pick = k;
            break;
        }
    literal_rtn(W, m, n, cand[pick], bits, Q);
    return cand[pick];
}

static int run(const float *W, int m, int n, int bits, double tau, float *D, char *scheme)
{
    wmat_qparams p = wmat__qparams_default();
    p.bits = bits;
    p.tau = tau;
    wmat_qresult res;
    wmat_qmethod_info info;
    memset(&info, 0, sizeof info);
    TU_OK(wmat__quant_finequant(&res, W, m, n, NULL, &p, &info));
    assert_int_equal(res.sym, 1);
    assert_int_equal(res.axis, WMAT_QAXIS_IN);
    assert_int_equal(n % res.group, 0);
    wmat_qresult_dequant(&res, D);
    if (scheme) snprintf(scheme, 96, "%s", info.scheme);
    const int g = res.group;
    wmat_qresult_free(&res);
    return g;
}

static void test_gaussian_per_channel(void **state)
{
    (void)state;
    const int m = 64, n = 512;
    float *W = malloc((size_t)(m * n) * sizeof(float)), *D = malloc((size_t)(m * n) * sizeof(float));
    gaussian(W, (int64_t)m * n, 1);
    char sch[96];
    for (int bits = 3; bits <= 8; bits++) {
        const int g = run(W, m, n, bits, 1.5, D, sch);
        if (g != n) fail_msg("%d bits: group %d on a Gaussian matrix (%s)", bits, g, sch);
    }
    free(W), free(D);
}

static void test_outlier_column_fires(void **state)
{
    (void)state;
    const int m = 64, n = 512;
    float *W = malloc((size_t)(m * n) * sizeof(float)), *D = malloc((size_t)(m * n) * sizeof(float));
    float *Q = malloc((size_t)(m * n) * sizeof(float));
    gaussian(W, (int64_t)m * n, 2);
    for (int r = 0; r < m; r++) W[r * n + 77] *= 40.0f; /* one outlier input channel */
    char sch[96];
    const int g = run(W, m, n, 4, 1.5, D, sch);
    print_message("outlier column: group %d (%s)\n", g, sch);
    if (!(g < n)) fail_msg("the heuristic did not fire: group %d (%s)", g, sch);
    /* the finer group pays off against per channel */
    const int gp = run(W, m, n, 4, 1e9, Q, NULL);
    assert_int_equal(gp, n);
    assert_true(rel(W, D, (int64_t)m * n) < rel(W, Q, (int64_t)m * n));
    free(W), free(D), free(Q);
}

static void test_vs_literal(void **state)
{
    (void)state;
    const struct {
        int m, n, bits, outlier;
        double tau;
    } cases[] = {{16, 512, 4, 0, 1.5}, {16, 512, 4, 1, 1.5}, {16, 512, 3, 1, 1.1}, {8, 704, 4, 1, 1.3},
                 {8, 172, 4, 0, 1.05},  {8, 256, 8, 1, 2.0},  {8, 64, 4, 1, 1.5},  {8, 768, 2, 1, 1.2}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int m = cases[c].m, n = cases[c].n;
        float *W = malloc((size_t)(m * n) * sizeof(float)), *D = malloc((size_t)(m * n) * sizeof(float));
        float *Q = malloc((size_t)(m * n) * sizeof(float));
        gaussian(W, (int64_t)m * n, 10 + c);
        if (cases[c].outlier)
            for (int r = 0; r < m; r++) W[r * n + (int)(c * 37 % (size_t)n)] *= 12.0f;
        const int want = literal_choice(W, m, n, cases[c].bits, cases[c].tau, 64, Q);
        const int got = run(W, m, n, cases[c].bits, cases[c].tau, D, NULL);
        if (got != want) fail_msg("case %zu: group %d, literal %d", c, got, want);
        size_t bad;
        if (!tu_close(D, Q, (size_t)(m * n), 0.0, 0.0, &bad))
            fail_msg("case %zu: value %zu is %g, literal %g", c, bad, (double)D[bad], (double)Q[bad]);
        free(W), free(D), free(Q);
    }
    /* bad settings */
    wmat_qparams p = wmat__qparams_default();
    float w[64] = {0};
    wmat_qresult res;
    p.tau = 0.5;
    assert_int_not_equal(wmat__quant_finequant(&res, w, 1, 64, NULL, &p, NULL), WMAT_OK);
    p.tau = 1.5;
    p.bits = 9;
    assert_int_not_equal(wmat__quant_finequant(&res, w, 1, 64, NULL, &p, NULL), WMAT_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gaussian_per_channel),
        cmocka_unit_test(test_outlier_column_fires),
        cmocka_unit_test(test_vs_literal),
    };
    return tu_run_tests("finequant", tests, NULL, NULL);
}
