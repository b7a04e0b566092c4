/* Binary-coded weights (src/wop/kind_bcq.c) and the BCQ method
 * (src/quant/bcq.c). The conformance suite (test_wop.c) already runs the
 * kind's default instance; here:
 *   - the table-lookup kernels, C twin and AVX2, against the product with
 *     the dequantized matrix in double (relative budget 1e-5: fp32 sums of
 *     up to ~4096 terms reassociated), and the twins against each other
 *     (1e-6), for 1..4 planes, groups of 8, 64 and the whole row, widths
 *     that 8 does not divide, the batched forward at 1 and 3 threads;
 *   - the method without feedback against a slow literal version of the
 *     paper's alternation (double, Gaussian elimination, exhaustive levels);
 *   - error falls with the number of planes and with refitting; error
 *     feedback lowers the calibration output error on a correlated H;
 *   - hostile descriptions and parts; the native directory through the CLI
 *     gives the fake-quant perplexity.
 * Every comparison fails on a NaN. */
#include "test_util.h"

#include "quant/methods.h"
#include "wop/kern_dense.h"
#include "wop/wop.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * wmat_rng_normal(&r);
}

/* ||a - b|| / ||b|| in double; +inf when anything is not finite */
static double rel_err(const float *a, const double *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* A random bcq weight: random signs, alphas decreasing by plane. */
static void random_bcq_alpha(int64_t rows, int64_t cols, int q, int group, uint64_t seed, wmat_tensor *W, float *alpha_out)
{
    const int64_t ng = cols / group;
    uint8_t *codes = malloc((size_t)(rows * cols));
    float *alpha = malloc((size_t)(rows * ng * q) * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < rows * cols; i++) codes[i] = (uint8_t)(wmat_rng_u64(&r) & ((1u << q) - 1));
    for (int64_t i = 0; i < rows * ng; i++)
        for (int k = 0; k < q; k++) alpha[i * q + k] = (0.5f + 0.5f * (float)wmat_rng_uniform(&r)) * ldexpf(1.0f, -k);
    void *obj = NULL;
    TU_OK(wmat__bcq_create(rows, cols, q, group, codes, alpha, &obj));
    wmat__tensor_init2(W, WMAT_OBJ, rows, cols, obj);
    W->flags = WMAT_TF_OWNED;
    if (alpha_out) /* as stored (fp16) */
        for (int64_t i = 0; i < rows * ng * q; i++) alpha_out[i] = wmat_f16_to_f32(wmat_f32_to_f16(alpha[i]));
    free(codes);
    free(alpha);
}

static void random_bcq(int64_t rows, int64_t cols, int q, int group, uint64_t seed, wmat_tensor *W)
{
    random_bcq_alpha(rows, cols, q, group, seed, W, NULL);
}

static void test_lut_kernels(void **state)
{
    (void)state;
    const struct {
        int64_t rows, cols;
        int group;
    } shapes[] = {{37, 64, 8}, {70, 256, 64}, {33, 512, 512}, {16, 172, 172}, {5, 20, 20}, {64, 4096, 128}};
    const int have_avx2 = wmat__isa_best() >= WMAT_ISA_AVX2;
    int checked = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int q = 1; q <= 4; q++) {
            const int64_t R = shapes[s].rows, C = shapes[s].cols;
            wmat_tensor W;
            random_bcq(R, C, q, shapes[s].group, 100 + s * 10 + (uint64_t)q, &W);
            const wmat_wkind *k = wmat__wkind_of(&W);
            assert_string_equal(k->name, "bcq");
            const int T = 5;
            float *D = malloc((size_t)(R * C) * sizeof(float)), *X = malloc((size_t)(T * C) * sizeof(float));
            double *ref = malloc((size_t)(T * R) * sizeof(double));
            fill(X, (size_t)(T * C), 7 + s, 1.0f);
            k->dequant_rows(&W, 0, R, D);
            for (int t = 0; t < T; t++)
                for (int64_t r = 0; r < R; r++) {
                    double a = 0;
                    for (int64_t c = 0; c < C; c++) a += (double)D[r * C + c] * X[t * C + c];
                    ref[t * R + r] = a;
                }
            const int64_t nb = (C + 7) / 8;
            float *T0 = malloc((size_t)nb * 256 * sizeof(float)), *T1 = malloc((size_t)nb * 256 * sizeof(float));
            float *y0 = malloc((size_t)R * sizeof(float)), *y1 = malloc((size_t)R * sizeof(float));
            for (int t = 0; t < T; t++) {
                wmat__bcq_lut(&W, X + t * C, T0, WMAT_ISA_REF);
                wmat__bcq_rows_lut(&W, T0, y0, 0, R, 0, WMAT_ISA_REF);
                double e = rel_err(y0, ref + t * R, (size_t)R);
                if (!(e < 1e-5)) fail_msg("C twin, %lld x %lld q %d: %g from the reference", (long long)R, (long long)C, q, e);
                if (!have_avx2) continue;
                wmat__bcq_lut(&W, X + t * C, T1, WMAT_ISA_AVX2);
                /* rows in two ranges, accumulating onto a copy */
                for (int64_t r = 0; r < R; r++) y1[r] = 1.0f;
                wmat__bcq_rows_lut(&W, T1, y1, 0, R / 3, 1, WMAT_ISA_AVX2);
                wmat__bcq_rows_lut(&W, T1, y1, R / 3, R, 1, WMAT_ISA_AVX2);
                for (int64_t r = 0; r < R; r++) y1[r] -= 1.0f;
                double *y0d = malloc((size_t)R * sizeof(double));
                for (int64_t r = 0; r < R; r++) y0d[r] = y0[r];
                e = rel_err(y1, ref + t * R, (size_t)R);
                if (!(e < 1e-5)) fail_msg("AVX2, %lld x %lld q %d: %g from the reference", (long long)R, (long long)C, q, e);
                e = rel_err(y1, y0d, (size_t)R);
                if (!(e < 1e-6)) fail_msg("AVX2 vs C twin, %lld x %lld q %d: %g", (long long)R, (long long)C, q, e);
                free(y0d);
            }
            /* batched forward, both ISAs, 1 and 3 threads */
            for (int isa = WMAT_ISA_REF; isa <= (have_avx2 ? WMAT_ISA_AVX2 : WMAT_ISA_REF); isa += WMAT_ISA_AVX2)
                for (int nt = 1; nt <= 3; nt += 2) {
                    wmat_wexec ex = wmat__wexec_from(NULL);
                    ex.isa = isa;
                    ex.n_threads = nt;
                    for (int Tn = 1; Tn <= T; Tn += T - 1) {
                        void *ws = malloc(k->ws_bytes(&W, Tn, &ex));
                        float *Y = malloc((size_t)(Tn * R) * sizeof(float));
                        k->forward(&W, X, Y, Tn, 0, ws, &ex);
                        const double e = rel_err(Y, ref, (size_t)(Tn * R));
                        if (!(e < 1e-5))
                            fail_msg("forward isa %d, %d threads, T %d, q %d: %g", isa, nt, Tn, q, e);
                        free(ws);
                        free(Y);
                    }
                }
            wmat__tensor_free_data(&W);
            free(D), free(X), free(ref), free(T0), free(T1), free(y0), free(y1);
            checked++;
        }
    assert_int_equal(checked, 24);
    if (!have_avx2) print_message("no AVX2 on this CPU: only the C twin was checked\n");
}


/* The int8-table kernel (the one-row path under act8 on AVX-512 VBMI +
 * VNNI): the AVX-512 tables and rows equal the C twin's bit for bit (row
 * ranges that cut 16-row tiles, accumulating); every row within the bound
 * the table rounding gives, sum_B (blk / 4) (d_B / 2) sum_k |alpha|, of the
 * product with the dequantized matrix in double (plus 1e-5 relative for the
 * fp32 sums); the kind's one-row path under act8 is this kernel, with act8
 * off the exact fp32 tables (1e-5); a NaN input gives NaN rows; shapes whose
 * width or group 32 does not divide have no int8 layout. */
static void test_i8_kernels(void **state)
{
    (void)state;
    const struct {
        int64_t rows, cols;
        int group;
    } shapes[] = {{37, 64, 32}, {70, 256, 64}, {33, 512, 512}, {50, 384, 384}, {16, 96, 96},
                  {20, 160, 32}, {64, 4096, 128}, {3, 256, 256}};
    const int vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni") &&
                     wmat__isa_best() >= WMAT_ISA_AVX512;
    int checked = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int q = 1; q <= 4; q++) {
            const int64_t R = shapes[s].rows, C = shapes[s].cols, G = shapes[s].group, ng = C / G;
            const int blk = G % 128 == 0 ? 128 : G % 64 == 0 ? 64 : 32;
            wmat_tensor W;
            float *alpha = malloc((size_t)(R * ng * q) * sizeof(float));
            random_bcq_alpha(R, C, q, (int)G, 500 + s * 10 + (uint64_t)q, &W, alpha);
            const wmat_wkind *k = wmat__wkind_of(&W);
            const size_t pb = wmat__bcq_i8_prep_bytes(&W);
            assert_int_equal(pb, (size_t)(C / 32) * 128 + 2 * (size_t)(C / blk) * sizeof(float));
            float *D = malloc((size_t)(R * C) * sizeof(float)), *x = malloc((size_t)C * sizeof(float));
            float *y0 = malloc((size_t)R * sizeof(float)), *y1 = malloc((size_t)R * sizeof(float));
            float *y2 = malloc((size_t)R * sizeof(float));
            char *p0 = malloc(pb), *p1 = malloc(pb);
            k->dequant_rows(&W, 0, R, D);
            for (int rep = 0; rep < 3; rep++) {
                /* rep 2: activations with outliers (one block's scale set by one input) */
                fill(x, (size_t)C, 31 + s * 7 + (uint64_t)(q * 3 + rep), 1.0f);
                if (rep == 2)
                    for (int64_t c = 0; c < C; c += 97) x[c] *= 50.0f;
                wmat__bcq_i8_prepare(&W, x, p0, WMAT_ISA_REF);
                wmat__bcq_i8_rows(&W, p0, y0, 0, R, 0, WMAT_ISA_REF);
                const float *d = (const float *)(p0 + (size_t)(C / 32) * 128);
                for (int64_t r = 0; r < R; r++) {
                    double ref = 0, mag = 0, bound = 0;
                    for (int64_t c = 0; c < C; c++) {
                        ref += (double)D[r * C + c] * x[c];
                        mag += fabs((double)D[r * C + c] * x[c]);
                    }
                    for (int64_t B = 0; B < C / blk; B++) {
                        double as = 0;
                        for (int kk = 0; kk < q; kk++) as += fabs(alpha[(r * ng + B * blk / G) * q + kk]);
                        bound += (blk / 4) * (d[B] / 2) * as;
                    }
                    if (!(fabs(y0[r] - ref) <= bound * 1.001 + 1e-5 * mag))
                        fail_msg("%lld x %lld g%lld q %d row %lld: %g from the reference, bound %g", (long long)R,
                                 (long long)C, (long long)G, q, (long long)r, fabs(y0[r] - ref), bound);
                }
                if (vbmi) {
                    wmat__bcq_i8_prepare(&W, x, p1, WMAT_ISA_AVX512);
                    assert_memory_equal(p0, p1, pb);
                    /* ranges cutting tiles, accumulating onto 1 */
                    const int64_t cut1 = R / 3, cut2 = R / 3 + 17 < R ? R / 3 + 17 : R;
                    for (int64_t r = 0; r < R; r++) y1[r] = 1.0f, y2[r] = 1.0f + y0[r];
                    wmat__bcq_i8_rows(&W, p1, y1, 0, cut1, 1, WMAT_ISA_AVX512);
                    wmat__bcq_i8_rows(&W, p1, y1, cut1, cut2, 1, WMAT_ISA_AVX512);
                    wmat__bcq_i8_rows(&W, p1, y1, cut2, R, 1, WMAT_ISA_AVX512);
                    assert_memory_equal(y1, y2, (size_t)R * sizeof(float));
                    wmat__bcq_i8_rows(&W, p1, y1, 0, R, 0, WMAT_ISA_AVX512);
                    assert_memory_equal(y1, y0, (size_t)R * sizeof(float));
                    /* the kind's one-row path under act8 is this kernel */
                    wmat_wexec ex = wmat__wexec_from(NULL);
                    ex.act8 = 1, ex.isa = WMAT_ISA_AVX512, ex.n_threads = 2;
                    assert_int_equal(k->prep_bytes(&W, &ex), pb);
                    k->prepare(&W, x, p1, &ex);
                    wmat__wop_rows_all(k, &W, x, p1, y1, 0, &ex);
                    assert_memory_equal(y1, y0, (size_t)R * sizeof(float));
                }
            }
            /* act8 off: the exact fp32 tables */
            {
                wmat_wexec ex = wmat__wexec_from(NULL);
                ex.act8 = 0;
                void *pf = malloc(k->prep_bytes(&W, &ex));
                k->prepare(&W, x, pf, &ex);
                k->rows(&W, x, pf, y1, 0, R, 0, &ex);
                double *ref = malloc((size_t)R * sizeof(double));
                for (int64_t r = 0; r < R; r++) {
                    ref[r] = 0;
                    for (int64_t c = 0; c < C; c++) ref[r] += (double)D[r * C + c] * x[c];
                }
                const double e = rel_err(y1, ref, (size_t)R);
                if (!(e < 1e-5)) fail_msg("act8 off, %lld x %lld q %d: %g", (long long)R, (long long)C, q, e);
                free(ref);
                free(pf);
            }
            /* a NaN input: NaN rows, in both twins */
            x[C / 2] = NAN;
            wmat__bcq_i8_prepare(&W, x, p0, WMAT_ISA_REF);
            wmat__bcq_i8_rows(&W, p0, y0, 0, R, 0, WMAT_ISA_REF);
            for (int64_t r = 0; r < R; r++) assert_true(isnan(y0[r]));
            if (vbmi) {
                wmat__bcq_i8_prepare(&W, x, p1, WMAT_ISA_AVX512);
                wmat__bcq_i8_rows(&W, p1, y1, 0, R, 0, WMAT_ISA_AVX512);
                for (int64_t r = 0; r < R; r++) assert_true(isnan(y1[r]));
            }
            wmat__tensor_free_data(&W);
            free(alpha), free(D), free(x), free(y0), free(y1), free(y2), free(p0), free(p1);
            checked++;
        }
    assert_int_equal(checked, 32);
    /* no int8 layout: widths or groups that 32 does not divide */
    const int64_t none[][3] = {{16, 172, 172}, {8, 64, 8}, {8, 48, 16}, {4, 40, 40}};
    for (size_t s = 0; s < sizeof none / sizeof none[0]; s++) {
        wmat_tensor W;
        random_bcq(none[s][0], none[s][1], 2, (int)none[s][2], 3, &W);
        assert_int_equal(wmat__bcq_i8_prep_bytes(&W), 0);
        wmat__tensor_free_data(&W);
    }
    if (!vbmi) print_message("no AVX-512 VBMI + VNNI on this CPU: only the C twin of the int8 kernel was checked\n");
}

/* ---- the method against a literal version of the paper's algorithm */

static float f16r(double a) { return wmat_f16_to_f32(wmat_f32_to_f16((float)a)); }

/* Solve A x = y (q x q, double) by Gaussian elimination with pivoting; 0 if singular. */
static int gauss(double A[4][4], double y[4], int q, double x[4])
{
    for (int c = 0; c < q; c++) {
        int p = c;
        for (int r = c + 1; r < q; r++)
            if (fabs(A[r][c]) > fabs(A[p][c])) p = r;
        if (fabs(A[p][c]) < 1e-12) return 0;
        for (int k = 0; k < q; k++) {
            double t = A[c][k];
            A[c][k] = A[p][k];
            A[p][k] = t;
        }
        double t = y[c];
        y[c] = y[p];
        y[p] = t;
        for (int r = c + 1; r < q; r++) {
            const double f = A[r][c] / A[c][c];
            for (int k = c; k < q; k++) A[r][k] -= f * A[c][k];
            y[r] -= f * y[c];
        }
    }
    for (int c = q - 1; c >= 0; c--) {
        double s = y[c];
        for (int k = c + 1; k < q; k++) s -= A[c][k] * x[k];
        x[c] = s / A[c][c];
    }
    return 1;
}

/* One group, written from the paper's description (ShiftAddLLM / BCQ): greedy
 * b_k = sign(r), alpha_k = mean |r| (weighted by d), r -= alpha_k b_k; then
 * rounds of alpha = (B^T D B)^-1 B^T D w and B = the nearest of all 2^q sign
 * combinations, stopping when the error stops falling. Values as stored (fp16). */
static double literal_group(const float *w, const double *d, int n, int q, int rounds, float *out)
{
    double alpha[4], res[512], dsum = 0;
    int sg[512][4];
    for (int i = 0; i < n; i++) res[i] = w[i], dsum += d[i];
    for (int k = 0; k < q; k++) {
        double s = 0;
        for (int i = 0; i < n; i++) {
            sg[i][k] = res[i] >= 0 ? 1 : -1;
            s += d[i] * fabs(res[i]);
        }
        alpha[k] = s / dsum;
        for (int i = 0; i < n; i++) res[i] -= alpha[k] * sg[i][k];
    }
    float a[4];
    for (int k = 0; k < q; k++) a[k] = f16r(alpha[k]);
    double best = INFINITY;
    float val[512];
    for (int it = 0; it <= rounds; it++) {
        /* nearest of the 2^q levels (levels summed in plane order, in float as stored) */
        double err = 0;
        float v[512];
        int s2[512][4];
        for (int i = 0; i < n; i++) {
            double be = INFINITY;
            for (int c = 0; c < (1 << q); c++) {
                float l = 0;
                for (int k = 0; k < q; k++) l += (c >> k & 1) ? a[k] : -a[k];
                if (fabs((double)w[i] - l) < be) {
                    be = fabs((double)w[i] - l);
                    v[i] = l;
                    for (int k = 0; k < q; k++) s2[i][k] = (c >> k & 1) ? 1 : -1;
                }
            }
            err += d[i] * ((double)w[i] - v[i]) * ((double)w[i] - v[i]);
        }
        if (!(err < best)) break;
        best = err;
        memcpy(val, v, sizeof(float) * (size_t)n);
        memcpy(sg, s2, sizeof(int) * 4 * (size_t)n);
        if (it == rounds) break;
        double A[4][4] = {{0}}, y[4] = {0}, x[4];
        for (int i = 0; i < n; i++)
            for (int r = 0; r < q; r++) {
                y[r] += d[i] * sg[i][r] * w[i];
                for (int c = 0; c < q; c++) A[r][c] += d[i] * sg[i][r] * sg[i][c];
            }
        if (!gauss(A, y, q, x)) break;
        for (int k = 0; k < q; k++) a[k] = f16r(x[k]);
    }
    memcpy(out, val, sizeof(float) * (size_t)n);
    return best;
}

static void diag_stats(wmat_qstats *st, int64_t n, const double *d)
{
    TU_OK(wmat__qstats_init(st, n, 1));
    memset(st->H, 0, (size_t)(n * n) * sizeof(double));
    for (int64_t j = 0; j < n; j++) st->H[j * n + j] = d[j];
    st->n_tokens = 1;
}

static void test_method_matches_literal(void **state)
{
    (void)state;
    const int64_t m = 6, n = 64;
    const int g = 32;
    float W[6 * 64], D[6 * 64], L[6 * 64];
    fill(W, (size_t)(m * n), 77, 0.1f);
    W[3] = 0.9f; /* an outlier */
    double d[64];
    for (int j = 0; j < n; j++) d[j] = 0.2 + (j % 7) * 0.3; /* activation-aware weights, diag(H) */
    wmat_qstats st;
    diag_stats(&st, n, d);
    for (int q = 1; q <= 4; q++)
        for (int rounds = 0; rounds <= 20; rounds += 20) {
            wmat_qparams p = wmat__qparams_default();
            p.bits = q;
            p.group = g;
            p.feedback = 0;
            p.refit = 0; /* the paper's alternation alone */
            p.rounds = rounds;
            p.n_threads = 1;
            wmat_qresult res;
            wmat_qmethod_info info;
            TU_OK(wmat__quant_bcq(&res, W, m, n, &st, &p, &info));
            assert_non_null(res.obj);
            assert_null(res.codes);
            wmat_qresult_dequant(&res, D);
            wmat_qresult_free(&res);
            double e_m = 0, e_l = 0;
            for (int64_t r = 0; r < m; r++)
                for (int64_t G = 0; G < n / g; G++) e_l += literal_group(W + r * n + G * g, d + G * g, g, q, rounds, L + r * n + G * g);
            for (int64_t i = 0; i < m * n; i++) e_m += d[i % n] * ((double)W[i] - D[i]) * ((double)W[i] - D[i]);
            double md = 0;
            for (int64_t i = 0; i < m * n; i++) md = fmax(md, fabs((double)D[i] - L[i]));
            print_message("q %d rounds %2d: weighted error %.6g (literal %.6g), max |diff| %.3g  %s\n", q, rounds, e_m,
                          e_l, md, info.scheme);
            if (!(md <= 1e-6)) fail_msg("q %d rounds %d: method and literal differ by %g", q, rounds, md);
            if (!(fabs(e_m - e_l) <= 1e-9 * e_l + 1e-15)) fail_msg("q %d: error %g vs literal %g", q, e_m, e_l);
        }
    wmat__qstats_free(&st);
}

/* Relative Frobenius error falls with each plane and with refitting;
 * feedback lowers tr(dW H dW^T) on a correlated H. */
static void test_error_falls(void **state)
{
    (void)state;
    const int64_t m = 48, n = 128;
    float *W = malloc((size_t)(m * n) * sizeof(float)), *D = malloc((size_t)(m * n) * sizeof(float));
    fill(W, (size_t)(m * n), 5, 1.0f);
    /* H = 2/N X^T X from correlated inputs */
    const int N = 512;
    float *X = malloc((size_t)(N * n) * sizeof(float)), *Z = malloc((size_t)(N * n) * sizeof(float));
    fill(Z, (size_t)(N * n), 6, 1.0f);
    for (int t = 0; t < N; t++)
        for (int64_t j = 0; j < n; j++)
            X[t * n + j] = Z[t * n + j] + 0.8f * Z[t * n + (j + 1) % n] + (j % 16 == 0 ? 3.0f : 0.0f) * Z[t * n + j];
    wmat_qstats st;
    TU_OK(wmat__qstats_init(&st, n, 1));
    wmat__qstats_add(&st, X, N);
    wmat__qstats_finish(&st);
    double prev = INFINITY, wn = 0;
    for (int64_t i = 0; i < m * n; i++) wn += (double)W[i] * W[i];
    for (int q = 1; q <= 4; q++) {
        double e[2], out[2];
        for (int variant = 0; variant < 2; variant++) {
            wmat_qparams p = wmat__qparams_default();
            p.bits = q;
            p.group = 64;
            p.feedback = 0;
            p.refit = 0;
            p.rounds = variant ? 20 : 0;
            p.n_threads = 2;
            wmat_qresult res;
            TU_OK(wmat__quant_bcq(&res, W, m, n, &st, &p, NULL));
            wmat_qresult_dequant(&res, D);
            wmat_qresult_free(&res);
            double num = 0;
            for (int64_t i = 0; i < m * n; i++) num += ((double)W[i] - D[i]) * ((double)W[i] - D[i]);
            e[variant] = sqrt(num / wn);
            out[variant] = wmat__qoutput_error(W, D, m, n, st.H);
        }
        double out_fb[2];
        for (int refit = 0; refit < 2; refit++) {
            wmat_qparams p = wmat__qparams_default();
            p.bits = q;
            p.group = 64;
            p.n_threads = 2;
            p.refit = refit;
            wmat_qresult res;
            TU_OK(wmat__quant_bcq(&res, W, m, n, &st, &p, NULL));
            wmat_qresult_dequant(&res, D);
            wmat_qresult_free(&res);
            out_fb[refit] = wmat__qoutput_error(W, D, m, n, st.H);
        }
        print_message("q %d: rel error greedy %.4f, refitted %.4f; output error no feedback %.5g, feedback %.5g, "
                      "feedback + alphas on H %.5g\n",
                      q, e[0], e[1], out[1], out_fb[0], out_fb[1]);
        if (!(out_fb[1] <= out_fb[0])) fail_msg("q %d: refitting the alphas on H raised the output error", q);
        if (!(e[1] < prev)) fail_msg("q %d: error %g did not fall below %g", q, e[1], prev);
        if (!(e[1] <= e[0] * 1.02)) fail_msg("q %d: refitting raised the error %g -> %g", q, e[0], e[1]);
        if (!(out_fb[0] < out[1])) fail_msg("q %d: feedback output error %g not below %g", q, out_fb[0], out[1]);
        prev = e[1];
    }
    wmat__qstats_free(&st);
    free(W), free(D), free(X), free(Z);
}

/* ---- hostile descriptions and parts */

typedef struct {
    wmat_wpart parts[WMAT_WPART_MAX];
    int n;
} store;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    store *s = user;
    for (int i = 0; i < s->n; i++) {
        const wmat_wpart *p = &s->parts[i];
        if (strcmp(p->suffix, suffix)) continue;
        if (p->dtype != dtype || p->ndim != ndim || p->shape[0] != d0 || (ndim == 2 && p->shape[1] != d1))
            return wmat_set_error(WMAT_ERR_FORMAT, "store: part %s has the wrong dtype or shape", suffix);
        *data = p->data;
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_FORMAT, "store: missing part %s", suffix);
}

static void expect_refused(const cJSON *desc, int64_t R, int64_t C, store *st, const char *why)
{
    const wmat_wkind *k = wmat__wkind_find("bcq");
    void *o = NULL;
    const int rc = k->load(desc, R, C, get_part, st, "hostile", &o);
    if (rc >= 0) fail_msg("hostile bcq (%s) was accepted", why);
    assert_null(o);
    assert_true(strstr(wmat_last_error(), "hostile") || strstr(wmat_last_error(), "store:")); /* the kind names the file, the store its part */
}

static void test_hostile(void **state)
{
    (void)state;
    const int64_t R = 12, C = 64;
    wmat_tensor W;
    random_bcq(R, C, 3, 32, 9, &W);
    const wmat_wkind *k = wmat__wkind_of(&W);
    cJSON *desc = cJSON_CreateObject();
    cJSON_AddStringToObject(desc, "kind", "bcq");
    store st = {.n = 0};
    TU_OK(k->save(&W, desc, st.parts, &st.n, "test"));
    assert_int_equal(st.n, 2);
    void *o = NULL;
    TU_OK(k->load(desc, R, C, get_part, &st, "ok", &o));
    k->free(o);
    const char *keys[] = {"planes", "group"};
    const double bad[2][5] = {{0, 5, 2.5, -1, 1e9}, {12, 7, 128, 0, 24}};
    for (int f = 0; f < 2; f++)
        for (int i = 0; i < 5; i++) {
            cJSON *d2 = cJSON_Duplicate(desc, 1);
            cJSON_ReplaceItemInObjectCaseSensitive(d2, keys[f], cJSON_CreateNumber(bad[f][i]));
            expect_refused(d2, R, C, &st, keys[f]);
            cJSON_Delete(d2);
        }
    /* a count that disagrees with the parts: 2 planes over 3 planes' bits */
    cJSON *d2 = cJSON_Duplicate(desc, 1);
    cJSON_ReplaceItemInObjectCaseSensitive(d2, "planes", cJSON_CreateNumber(2));
    expect_refused(d2, R, C, &st, "planes vs bits");
    cJSON_ReplaceItemInObjectCaseSensitive(d2, "planes", cJSON_CreateNumber(3));
    cJSON_ReplaceItemInObjectCaseSensitive(d2, "group", cJSON_CreateNumber(16));
    expect_refused(d2, R, C, &st, "group vs alphas");
    cJSON_Delete(d2);
    /* the shape of the tensor does not match the parts */
    expect_refused(desc, R + 1, C, &st, "rows");
    expect_refused(desc, R, C + 8, &st, "cols");
    /* a non-finite alpha (fp16 inf and NaN) */
    uint16_t *al = malloc((size_t)(st.parts[1].shape[0] * st.parts[1].shape[1]) * 2);
    memcpy(al, st.parts[1].data, (size_t)(st.parts[1].shape[0] * st.parts[1].shape[1]) * 2);
    store bad_st = st;
    bad_st.parts[1].data = al;
    al[5] = 0x7e00;
    expect_refused(desc, R, C, &bad_st, "NaN alpha");
    al[5] = 0x7c00;
    expect_refused(desc, R, C, &bad_st, "inf alpha");
    /* a missing part */
    bad_st = st;
    bad_st.n = 1;
    expect_refused(desc, R, C, &bad_st, "missing alphas");
    free(al);
    cJSON_Delete(desc);
    wmat__tensor_free_data(&W);
    /* the constructor and the method refuse what the kind cannot hold */
    uint8_t codes[8 * 24] = {0};
    float alpha[64] = {0};
    void *obj = NULL;
    assert_true(wmat__bcq_create(8, 24, 5, 24, codes, alpha, &obj) < 0);
    assert_true(wmat__bcq_create(8, 24, 2, 12, codes, alpha, &obj) < 0);
    assert_null(obj);
    float Wm[8 * 24];
    fill(Wm, 8 * 24, 3, 1.0f);
    double dd[24];
    for (int j = 0; j < 24; j++) dd[j] = 1.0;
    wmat_qstats qs;
    diag_stats(&qs, 24, dd);
    wmat_qparams p = wmat__qparams_default();
    p.bits = 2;
    p.group = 12;
    wmat_qresult res;
    assert_int_equal(wmat__quant_bcq(&res, Wm, 8, 24, &qs, &p, NULL), WMAT_ERR_INVALID);
    p.group = 0;
    p.bits = 5;
    assert_int_equal(wmat__quant_bcq(&res, Wm, 8, 24, &qs, &p, NULL), WMAT_ERR_INVALID);
    p.bits = 2;
    assert_int_equal(wmat__quant_bcq(&res, Wm, 8, 24, NULL, &p, NULL), WMAT_ERR_INVALID);
    qs.H[0] = NAN;
    assert_true(wmat__quant_bcq(&res, Wm, 8, 24, &qs, &p, NULL) < 0);
    wmat__qstats_free(&qs);
}

/* wmat quantize --method bcq to the native directory: the stored model
 * evaluates to the fake-quant perplexity, and `wmat info` names the kind. */
static void test_cli_native_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/mix4m.bin");
    TU_NEED_DATA(tp, "golden/wikitext2_valid_tokenized.tok512.u16");
    char cmd[2048];
    int code;
    const char *dir = tu_tmp("mix4m-bcq2");
    snprintf(cmd, sizeof cmd,
             "%s quantize %s %s --method bcq --bits 2 --group 64 --calib %s --calib-tokens 2048 --calib-ctx 256 "
             "--quiet --eval %s --eval-windows 2 2>&1 | grep perplexity",
             tu_cli(), mp, dir, tp, tp);
    char *fake = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    snprintf(cmd, sizeof cmd, "%s eval %s --tokens %s --ctx 256 --max-windows 2 --json 2>&1", tu_cli(), dir, tp);
    char *packed = tu_run(cmd, &code);
    if (code) fail_msg("eval of the bcq directory failed: %s", packed);
    double a = 0, b = 0;
    assert_int_equal(sscanf(fake, "perplexity %lf", &a), 1);
    const char *pp = strstr(packed, "\"ppl\": ");
    assert_non_null(pp);
    b = atof(pp + 7);
    print_message("mix4m bcq-2 g64: fake-quant ppl %.4f, stored bcq %.4f\n", a, b);
    assert_true(isfinite(a) && a > 1);
    TU_ASSERT_NEAR(a, b, 1e-3 * a);
    free(fake);
    free(packed);
    snprintf(cmd, sizeof cmd, "%s info %s 2>&1", tu_cli(), dir);
    char *info = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    assert_non_null(strstr(info, "bcq"));
    free(info);
    /* no GGUF type holds binary codes: refused before any calibration, naming the way out */
    snprintf(cmd, sizeof cmd, "%s quantize %s %s --to gguf --method bcq --bits 2 --calib %s --quiet 2>&1", tu_cli(), mp,
             tu_tmp("bcq.gguf"), tp);
    char *out = tu_run(cmd, &code);
    assert_int_equal(code, 1);
    assert_non_null(strstr(out, "GGUF"));
    assert_non_null(strstr(out, "--to native"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lut_kernels),
        cmocka_unit_test(test_i8_kernels),
        cmocka_unit_test(test_method_matches_literal),
        cmocka_unit_test(test_error_falls),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_cli_native_roundtrip),
    };
    return tu_run_tests("bcq", tests, NULL, NULL);
}
