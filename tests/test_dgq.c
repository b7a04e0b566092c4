/* DGQ (A8W4, SPECS.md G6): the dgq weight kind's int8 path against a
 * float reference built from the same integers (batched on each int8 GEMM
 * backend, one-row on each ISA), the smoothing rule, the two search phases
 * against a slow literal restatement that uses the calibration tokens X
 * themselves (group-partial outputs in phase 1, full-row outputs in phase
 * 2), k_g >= 1 and (q - z) k_g within int8 on hostile weights, the method
 * end to end, save/load and hostile parts, and stories260K through the
 * driver (packed, saved and loaded). The kind's conformance is
 * tests/test_wop.c's (it iterates the registry). */
#include "test_util.h"

#include "linalg/linalg.h"
#include "quant/methods.h"
#include "wop/kern_dense.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

/* A dgq weight of random integers within the int8 rule. */
static void make_weight(int64_t R, int64_t C, int64_t g, int smooth, float act_scale, uint64_t seed, wmat_tensor *W)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    const int64_t ng = C / g;
    uint8_t *q = malloc((size_t)(R * C)), *z = malloc((size_t)(R * ng));
    int8_t *k = malloc((size_t)(R * ng));
    float *s8 = malloc((size_t)R * sizeof(float)), *sm = malloc((size_t)C * sizeof(float));
    for (int64_t i = 0; i < R * ng; i++) {
        k[i] = (int8_t)(1 + wmat_rng_u64(&r) % 40);
        z[i] = (uint8_t)(wmat_rng_u64(&r) % 16);
    }
    for (int64_t row = 0; row < R; row++) {
        s8[row] = 1e-3f * (1.0f + (float)wmat_rng_uniform(&r));
        for (int64_t c = 0; c < C; c++) {
            const int kk = k[row * ng + c / g], zz = z[row * ng + c / g], m = 127 / kk;
            const int lo = zz - m < 0 ? 0 : zz - m, hi = zz + m > 15 ? 15 : zz + m;
            q[row * C + c] = (uint8_t)(lo + (int)(wmat_rng_u64(&r) % (uint64_t)(hi - lo + 1)));
        }
    }
    for (int64_t c = 0; c < C; c++) sm[c] = c % 17 == 3 ? 1.0f + 3.0f * (float)wmat_rng_uniform(&r) : 1.0f;
    void *obj;
    TU_OK(wmat__dgq_create(R, C, g, q, z, k, s8, smooth ? sm : NULL, act_scale, &obj));
    wmat__tensor_own_obj(W, R, C, obj);
    /* W8 is exactly (q - z) k */
    int8_t *w8 = malloc((size_t)(R * C));
    wmat__dgq_w8_rows(W, 0, R, w8);
    for (int64_t row = 0; row < R; row++)
        for (int64_t c = 0; c < C; c++)
            assert_int_equal(w8[row * C + c], ((int)q[row * C + c] - z[row * ng + c / g]) * k[row * ng + c / g]);
    free(w8), free(q), free(z), free(k), free(s8), free(sm);
}

/* S[t][r] = sum_c W8[r, c] x8[t][c] from the exported integers (exact). */
static void int_reference(const wmat_tensor *W, const float *X, int T, float *S)
{
    const int64_t R = W->shape[0], C = W->shape[1];
    int8_t *w8 = malloc((size_t)(R * C)), *x8 = malloc((size_t)C);
    wmat__dgq_w8_rows(W, 0, R, w8);
    for (int t = 0; t < T; t++) {
        wmat__dgq_quant_act(W, X + (int64_t)t * C, x8);
        for (int64_t r = 0; r < R; r++) {
            int64_t s = 0;
            for (int64_t c = 0; c < C; c++) s += (int64_t)w8[r * C + c] * x8[c];
            S[(int64_t)t * R + r] = (float)s; /* |s| < 2^24 here: exact */
        }
    }
    free(w8), free(x8);
}

static void test_int8_path_exact(void **state)
{
    (void)state;
    const struct {
        int64_t R, C, g;
        int smooth;
        float as;
    } cases[] = {{40, 192, 64, 1, 0.02f}, {33, 172, 172, 0, 0.0f}, {16, 256, 32, 1, 0.0f}, {7, 96, 96, 1, 0.01f}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t R = cases[ci].R, C = cases[ci].C;
        const int T = 9;
        wmat_tensor W;
        make_weight(R, C, cases[ci].g, cases[ci].smooth, cases[ci].as, 7 + ci, &W);
        const wmat_wkind *k = wmat__wkind_of(&W);
        assert_string_equal(k->name, "dgq");
        float *X = malloc((size_t)T * (size_t)C * sizeof(float));
        wmat_rng r;
        wmat_rng_seed(&r, 100 + ci);
        for (int64_t i = 0; i < T * C; i++) X[i] = wmat_rng_normal(&r);
        X[3] = 40.0f; /* clips under a static scale */
        /* integer sums, then the kernels' float expression s8_r * s_x * (float)sum */
        float *S = malloc((size_t)T * (size_t)R * sizeof(float)), *Yref = malloc((size_t)T * (size_t)R * sizeof(float));
        int_reference(&W, X, T, S);
        int8_t *x8 = malloc((size_t)C);
        float *ones = malloc((size_t)C * sizeof(float)), *D = malloc((size_t)(R * C) * sizeof(float));
        int8_t *w8 = malloc((size_t)(R * C));
        k->dequant_rows(&W, 0, R, D);
        wmat__dgq_w8_rows(&W, 0, R, w8);
        for (int t = 0; t < T; t++) {
            const float sx = wmat__dgq_quant_act(&W, X + (int64_t)t * C, x8);
            if (cases[ci].as > 0) assert_true(sx == cases[ci].as);
            for (int64_t rr = 0; rr < R; rr++) {
                /* s8_r = W[r, c] / W8[r, c] where s_c = 1 (c % 17 != 3): exact, W8 a small integer */
                float s8 = 0.0f;
                for (int64_t c = 0; c < C && s8 == 0.0f; c++)
                    if (c % 17 != 3 && w8[rr * C + c] != 0) s8 = D[rr * C + c] / (float)w8[rr * C + c];
                if (s8 == 0.0f) s8 = 1.0f;
                Yref[(int64_t)t * R + rr] = s8 * sx * S[(int64_t)t * R + rr];
            }
        }
        wmat_wexec ex = wmat__wexec_from(NULL);
        ex.act8 = 1;
        ex.n_threads = 1;
        float *Y = malloc((size_t)T * (size_t)R * sizeof(float)), *y = malloc((size_t)R * sizeof(float));
        const wmat_gemm_backend backends[] = {WMAT_GEMM_REFERENCE, WMAT_GEMM_ONEDNN, WMAT_GEMM_AUTO};
        for (int b = 0; b < 3; b++) {
            if (backends[b] != WMAT_GEMM_AUTO && !wmat__gemm_int8_native(backends[b])) continue;
            ex.gemm = backends[b];
            void *ws = malloc(k->ws_bytes(&W, T, &ex));
            k->forward(&W, X, Y, T, 0, ws, &ex);
            for (int64_t i = 0; i < T * R; i++)
                if (!(fabsf(Y[i] - Yref[i]) <= 1e-6f * fabsf(Yref[i]) + 1e-30f))
                    fail_msg("case %zu backend %d: y[%lld] %g, integer reference %g", ci, b, (long long)i, Y[i], Yref[i]);
            free(ws);
        }
        /* one-row path on each ISA: the same integer sums, the same bits as the batched path */
        const int isas[] = {WMAT_ISA_REF, WMAT_ISA_AVX2};
        for (int ii = 0; ii < 2; ii++) {
            ex.isa = isas[ii] <= wmat__isa_best() ? isas[ii] : WMAT_ISA_REF;
            void *prep = malloc(k->prep_bytes(&W, &ex));
            for (int t = 0; t < T; t++) {
                k->prepare(&W, X + (int64_t)t * C, prep, &ex);
                k->rows(&W, X + (int64_t)t * C, prep, y, 0, R, 0, &ex);
                assert_memory_equal(y, Y + (int64_t)t * R, (size_t)R * sizeof(float));
                wmat__dgq_quant_act(&W, X + (int64_t)t * C, x8);
                for (int64_t rr = 0; rr < R; rr++) {
                    int32_t *xs = malloc((size_t)(C / cases[ci].g) * sizeof(int32_t));
                    for (int64_t gg = 0; gg < C / cases[ci].g; gg++) {
                        xs[gg] = 0;
                        for (int64_t c = gg * cases[ci].g; c < (gg + 1) * cases[ci].g; c++) xs[gg] += x8[c];
                    }
                    assert_true(wmat__dgq_row_dot8(&W, rr, x8, xs, ex.isa) == (int64_t)S[(int64_t)t * R + rr]);
                    free(xs);
                }
            }
            free(prep);
        }
        wmat__tensor_free_data(&W);
        free(X), free(S), free(Yref), free(x8), free(ones), free(D), free(w8), free(Y), free(y);
    }
}

/* ---- the searches against literal restatements on X itself */

typedef struct {
    int64_t N, rows, cols, g;
    float *X, *W;
    double *H;
} layer;

static void make_layer(layer *L, int64_t N, int64_t rows, int64_t cols, int64_t g, uint64_t seed)
{
    L->N = N, L->rows = rows, L->cols = cols, L->g = g;
    L->X = malloc((size_t)(N * cols) * sizeof(float));
    L->W = malloc((size_t)(rows * cols) * sizeof(float));
    L->H = calloc((size_t)(cols * cols), sizeof(double));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < N * cols; i++) L->X[i] = wmat_rng_normal(&r) * ((i % cols) % 23 == 5 ? 8.0f : 1.0f);
    for (int64_t i = 0; i < rows * cols; i++) {
        L->W[i] = 0.05f * wmat_rng_normal(&r);
        if (i % 97 == 11) L->W[i] *= 6.0f; /* a few outliers: groups need larger k */
    }
    for (int64_t t = 0; t < N; t++)
        for (int64_t a = 0; a < cols; a++)
            for (int64_t b = 0; b < cols; b++)
                L->H[a * cols + b] += 2.0 / (double)N * (double)L->X[t * cols + a] * (double)L->X[t * cols + b];
}

static void free_layer(layer *L) { free(L->X), free(L->W), free(L->H); }

/* sum_t (sum_{c in [c0, c0+n)} X[t, c] d[c])^2 */
static double out_err(const layer *L, const double *d, int64_t c0, int64_t n)
{
    double e = 0.0;
    for (int64_t t = 0; t < L->N; t++) {
        double s = 0.0;
        for (int64_t c = 0; c < n; c++) s += (double)L->X[t * L->cols + c0 + c] * d[c];
        e += s * s;
    }
    return e;
}

static void test_fine_phase_literal(void **state)
{
    (void)state;
    layer L;
    make_layer(&L, 300, 12, 192, 64, 3);
    const int64_t ng = L.cols / L.g;
    float *scale = malloc((size_t)(L.rows * ng) * sizeof(float));
    uint8_t *zero = malloc((size_t)(L.rows * ng));
    int *ratio = malloc((size_t)(L.rows * ng) * sizeof(int));
    wmat__dgq_fine(L.W, L.rows, L.cols, L.g, L.H, 1, scale, zero, ratio);
    double *d = malloc((size_t)L.g * sizeof(double));
    int differs = 0;
    for (int64_t r = 0; r < L.rows; r++)
        for (int64_t gi = 0; gi < ng; gi++) {
            const float *w = L.W + r * L.cols + gi * L.g;
            float mn = 0, mx = 0;
            for (int64_t c = 0; c < L.g; c++) mn = fminf(mn, w[c]), mx = fmaxf(mx, w[c]);
            double best = INFINITY;
            int bi = -1;
            float bs = 0, bz = 0;
            for (int i = 0; i < 20; i++) {
                const float rt = (float)(1.02 - (i + 1) / 20.0 * 0.22);
                const float sc = (rt * mx - rt * mn) / 15.0f;
                const float z = fminf(fmaxf(rintf(-(rt * mn) / sc), 0.0f), 15.0f);
                for (int64_t c = 0; c < L.g; c++) {
                    const float x = fminf(fmaxf(w[c], rt * mn), rt * mx);
                    const float q = fminf(fmaxf(rintf(x / sc) + z, 0.0f), 15.0f);
                    d[c] = (double)w[c] - (double)(sc * (q - z));
                }
                const double e = out_err(&L, d, gi * L.g, L.g); /* the group's partial output */
                if (e < best) best = e, bi = i, bs = sc, bz = z;
            }
            differs += bi != 0;
            assert_int_equal(ratio[r * ng + gi], bi);
            assert_true(scale[r * ng + gi] == bs);
            assert_int_equal(zero[r * ng + gi], (int)bz);
        }
    assert_true(differs > 0); /* the search chose something other than the first ratio somewhere */
    free(scale), free(zero), free(ratio), free(d);
    free_layer(&L);
}

static void test_coarse_phase_literal(void **state)
{
    (void)state;
    layer L;
    make_layer(&L, 300, 10, 192, 64, 5);
    const int64_t ng = L.cols / L.g, C = L.cols;
    float *scale = malloc((size_t)(L.rows * ng) * sizeof(float)), *s8 = malloc((size_t)L.rows * sizeof(float));
    uint8_t *zero = malloc((size_t)(L.rows * ng)), *codes = malloc((size_t)(L.rows * C));
    int8_t *k = malloc((size_t)(L.rows * ng));
    int *ratio = malloc((size_t)L.rows * sizeof(int));
    wmat__dgq_fine(L.W, L.rows, C, L.g, L.H, 1, scale, zero, NULL);
    TU_OK(wmat__dgq_coarse(L.W, L.rows, C, L.g, L.H, scale, zero, 1, s8, codes, k, ratio));
    double *d = malloc((size_t)C * sizeof(double));
    uint8_t *qb = malloc((size_t)C);
    int8_t kb[16];
    for (int64_t r = 0; r < L.rows; r++) {
        const float *w = L.W + r * C;
        float am = 0;
        for (int64_t c = 0; c < C; c++) am = fmaxf(am, fabsf(w[c]));
        double best = INFINITY;
        int bi = -1;
        float bs8 = 0;
        uint8_t *bq = malloc((size_t)C);
        int8_t bk[16];
        for (int i = 0; i < 80; i++) {
            const float rt = (float)(1.02 - (i + 1) / 80.0 * 0.82), lim = rt * am;
            const float s = f16r(rt * am / 127.0f);
            for (int64_t gi = 0; gi < ng; gi++) {
                const int kk = (int)fminf(fmaxf(rintf(scale[r * ng + gi] / s), 1.0f), 127.0f), z = zero[r * ng + gi];
                const int m = 127 / kk, lo = z - m < 0 ? 0 : z - m, hi = z + m > 15 ? 15 : z + m;
                kb[gi] = (int8_t)kk;
                for (int64_t c = gi * L.g; c < (gi + 1) * L.g; c++) {
                    const float x = fminf(fmaxf(w[c], -lim), lim);
                    const float q = fminf(fmaxf(rintf(x / ((float)kk * s)) + (float)z, (float)lo), (float)hi);
                    qb[c] = (uint8_t)q;
                    d[c] = (double)w[c] - (double)s * (double)(kk * ((int)q - z));
                }
            }
            const double e = out_err(&L, d, 0, C); /* the full row's output */
            if (e < best) {
                best = e, bi = i, bs8 = s;
                memcpy(bq, qb, (size_t)C);
                memcpy(bk, kb, sizeof kb);
            }
        }
        assert_int_equal(ratio[r], bi);
        assert_true(s8[r] == bs8);
        assert_memory_equal(codes + r * C, bq, (size_t)C);
        assert_memory_equal(k + r * ng, bk, (size_t)ng);
        free(bq);
    }
    free(scale), free(s8), free(zero), free(codes), free(k), free(ratio), free(d), free(qb);
    free_layer(&L);
}

/* k_g >= 1 and |(q - z) k_g| <= 127 whatever the weights: huge outliers
 * (k_g would exceed 127), all-zero groups, tiny groups next to big ones. */
static void test_k_fits_int8(void **state)
{
    (void)state;
    const int64_t R = 24, C = 256, g = 32, ng = C / g;
    float *W = malloc((size_t)(R * C) * sizeof(float)), *scale = malloc((size_t)(R * ng) * sizeof(float));
    float *s8 = malloc((size_t)R * sizeof(float));
    uint8_t *zero = malloc((size_t)(R * ng)), *codes = malloc((size_t)(R * C));
    int8_t *k = malloc((size_t)(R * ng));
    double *H = calloc((size_t)(C * C), sizeof(double));
    for (int64_t j = 0; j < C; j++) H[j * C + j] = 1.0 + (double)(j % 5);
    wmat_rng r;
    for (int trial = 0; trial < 6; trial++) {
        wmat_rng_seed(&r, 40 + (uint64_t)trial);
        for (int64_t i = 0; i < R * C; i++) {
            const int64_t row = i / C, grp = (i % C) / g;
            float v = wmat_rng_normal(&r) * powf(10.0f, (float)((row + grp + trial) % 7) - 3.0f);
            if (grp == (row + trial) % ng && trial % 2) v = 0.0f; /* an all-zero group */
            if (i % 211 == (int64_t)trial) v = 1e4f;             /* an extreme outlier */
            W[i] = v;
        }
        for (int search = 0; search < 2; search++) {
            wmat__dgq_fine(W, R, C, g, H, search, scale, zero, NULL);
            TU_OK(wmat__dgq_coarse(W, R, C, g, H, scale, zero, search, s8, codes, k, NULL));
            for (int64_t row = 0; row < R; row++)
                for (int64_t c = 0; c < C; c++) {
                    const int kk = k[row * ng + c / g], d = (int)codes[row * C + c] - zero[row * ng + c / g];
                    assert_true(kk >= 1 && kk <= 127);
                    assert_true(codes[row * C + c] <= 15 && zero[row * ng + c / g] <= 15);
                    assert_true(abs(d) * kk <= 127);
                }
            void *obj;
            TU_OK(wmat__dgq_create(R, C, g, codes, zero, k, s8, NULL, 0.0f, &obj));
            wmat__wkind_find("dgq")->free(obj);
        }
    }
    free(W), free(scale), free(s8), free(zero), free(codes), free(k), free(H);
}

/* The smoothing rule: baseline the floor(0.005 n + 1.5)-th largest a_j. */
static void test_smoothing_rule(void **state)
{
    (void)state;
    float a[1000], s[1000];
    for (int n = 10; n <= 1000; n = n * 3 + 1) {
        for (int j = 0; j < n; j++) a[j] = 1.0f + (float)((j * 7919) % n);
        const int basl = (int)(0.005 * n + 1.5);
        const float base = (float)(n - basl + 1); /* a is a permutation of 1..n */
        const int64_t cnt = wmat__dgq_smooth_factors(a, n, s);
        assert_int_equal(cnt, basl - 1);
        for (int j = 0; j < n; j++) {
            const float want = a[j] > base ? a[j] / base : 1.0f;
            assert_true(s[j] == want);
        }
    }
    /* a baseline under 1e-4: no smoothing */
    for (int j = 0; j < 100; j++) a[j] = j == 3 ? 5.0f : 1e-6f;
    assert_int_equal(wmat__dgq_smooth_factors(a, 100, s), 0);
}

/* The method end to end: statistics through wmat__qstats_add (windows),
 * the outlier input smoothed, the static activation scale the calibration
 * maximum of x / s, output error below RTN-per-channel A8W4's. */
static void test_method(void **state)
{
    (void)state;
    const int64_t rows = 48, cols = 256, N = 512;
    layer L;
    make_layer(&L, N, rows, cols, 64, 9);
    for (int64_t t = 0; t < N; t++) L.X[t * cols + 77] *= 30.0f; /* a persistent outlier channel */
    wmat_qstats st;
    TU_OK(wmat__qstats_init(&st, cols, 1));
    for (int64_t t0 = 0; t0 < N; t0 += 64) wmat__qstats_add(&st, L.X + t0 * cols, 64);
    wmat__qstats_finish(&st);
    /* a_j: min over windows of the window's max |x_j| */
    for (int64_t j = 0; j < cols; j++) {
        float mn = INFINITY;
        for (int64_t t0 = 0; t0 < N; t0 += 64) {
            float m = 0;
            for (int64_t t = t0; t < t0 + 64; t++) m = fmaxf(m, fabsf(L.X[t * cols + j]));
            mn = fminf(mn, m);
        }
        assert_true(st.wmaxmin[j] == mn);
    }
    wmat_qparams p = wmat__qparams_default();
    p.group = 64;
    wmat_qresult res;
    wmat_qmethod_info info;
    TU_OK(wmat__quant_dgq(&res, L.W, rows, cols, &st, &p, &info));
    wmat_tensor W;
    wmat__tensor_init2(&W, WMAT_OBJ, rows, cols, res.obj);
    assert_string_equal(wmat__wkind_of(&W)->name, "dgq");
    float s[256];
    assert_true(wmat__dgq_smooth_factors(st.wmaxmin, cols, s) >= 1);
    assert_true(s[77] > 2.0f); /* 30x against the 8x channels, the baseline */
    float xm = 0;
    for (int64_t j = 0; j < cols; j++) xm = fmaxf(xm, st.absmax[j] / s[j]);
    assert_true(wmat__dgq_act_scale(&W) == xm / 127.0f);
    float *D = malloc((size_t)(rows * cols) * sizeof(float));
    wmat_qresult_dequant(&res, D);
    const double e_dgq = wmat__qoutput_error(L.W, D, rows, cols, st.H);
    /* per-channel, no search, no smoothing */
    wmat_qresult res2;
    p.group = 0, p.dgq_search = 0, p.dgq_smooth = 0;
    TU_OK(wmat__quant_dgq(&res2, L.W, rows, cols, &st, &p, NULL));
    wmat_qresult_dequant(&res2, D);
    const double e_pc = wmat__qoutput_error(L.W, D, rows, cols, st.H);
    print_message("dgq g64 output error %g, per-channel min-max %g (%s)\n", e_dgq, e_pc, info.scheme);
    if (!(e_dgq < e_pc)) fail_msg("dgq %g not below per-channel %g", e_dgq, e_pc);
    wmat_qresult_free(&res);
    wmat_qresult_free(&res2);
    wmat__qstats_free(&st);
    free(D);
    free_layer(&L);
}

/* ---- save/load and hostile parts */

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

static void test_save_load_hostile(void **state)
{
    (void)state;
    const int64_t R = 20, C = 192;
    wmat_tensor W;
    make_weight(R, C, 64, 1, 0.015f, 77, &W);
    const wmat_wkind *k = wmat__wkind_of(&W);
    cJSON *desc = cJSON_CreateObject();
    cJSON_AddStringToObject(desc, "kind", "dgq");
    store st = {.n = 0};
    TU_OK(k->save(&W, desc, st.parts, &st.n, "t"));
    assert_int_equal(st.n, 5);
    void *obj;
    TU_OK(k->load(desc, R, C, get_part, &st, "t", &obj));
    wmat_tensor L;
    wmat__tensor_init2(&L, WMAT_OBJ, R, C, obj);
    L.flags = WMAT_TF_OWNED;
    /* same weights, same int8 forward bits, same size */
    float *a = malloc((size_t)(R * C) * sizeof(float)), *b = malloc((size_t)(R * C) * sizeof(float));
    k->dequant_rows(&W, 0, R, a);
    k->dequant_rows(&L, 0, R, b);
    assert_memory_equal(a, b, (size_t)(R * C) * sizeof(float));
    assert_true(k->nbytes(&W) == k->nbytes(&L));
    assert_true(wmat__dgq_act_scale(&L) == 0.015f);
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.act8 = 1;
    float X[4 * 192], Y1[4 * 20], Y2[4 * 20];
    for (int i = 0; i < 4 * 192; i++) X[i] = sinf((float)i);
    void *ws = malloc(k->ws_bytes(&W, 4, &ex));
    k->forward(&W, X, Y1, 4, 0, ws, &ex);
    k->forward(&L, X, Y2, 4, 0, ws, &ex);
    assert_memory_equal(Y1, Y2, sizeof Y1);
    free(ws);
    /* bits: 4 per code, 4-bit zeros (3 groups: 2 bytes a row), 8-bit k, a 16-bit s8 per row, the f32
     * smoothing vector and the f32 activation scale */
    const double bits = 8.0 * (double)k->nbytes(&W), want = (double)R * C * 4 + R * 16 + R * 3 * 8 + R * 16 + 32.0 * C + 32;
    assert_true(bits == want);
    /* hostile values in the parts: k = 0, (q - z) k past int8, a negative smoothing factor, a NaN s8 */
    for (int h = 0; h < 4; h++) {
        store bad = st;
        uint8_t *kk = malloc((size_t)(R * 3)), *cc = malloc((size_t)(R * C / 2));
        float *sm = malloc((size_t)C * sizeof(float));
        uint16_t *s8 = malloc((size_t)R * 2);
        memcpy(kk, st.parts[2].data, (size_t)(R * 3));
        memcpy(cc, st.parts[0].data, (size_t)(R * C / 2));
        memcpy(sm, st.parts[4].data, (size_t)C * sizeof(float));
        memcpy(s8, st.parts[3].data, (size_t)R * 2);
        if (h == 0) kk[5] = 0;
        if (h == 1) kk[0] = 127, cc[0] = 0xFF, cc[1] = 0x00; /* some |q - z| >= 1 with k 127 unless z == 15 */
        if (h == 2) sm[4] = -1.0f;
        if (h == 3) s8[2] = 0x7E00;
        if (h == 1) {
            /* make sure the zero of row 0 group 0 is not 15 and not 0 */
            uint8_t *zz = malloc((size_t)(R * 2));
            memcpy(zz, st.parts[1].data, (size_t)(R * 2));
            zz[0] = (uint8_t)((zz[0] & 0xF0) | 7);
            bad.parts[1].data = zz;
            bad.parts[2].data = kk, bad.parts[0].data = cc;
            void *o = NULL;
            assert_true(k->load(desc, R, C, get_part, &bad, "t", &o) < 0);
            assert_null(o);
            assert_non_null(strstr(wmat_last_error(), "int8"));
            free(zz);
        } else {
            bad.parts[2].data = kk, bad.parts[0].data = cc, bad.parts[4].data = sm, bad.parts[3].data = s8;
            void *o = NULL;
            assert_true(k->load(desc, R, C, get_part, &bad, "t", &o) < 0);
            assert_null(o);
            assert_true(strlen(wmat_last_error()) > 0);
        }
        free(kk), free(cc), free(sm), free(s8);
    }
    wmat__tensor_free_data(&L);
    wmat__tensor_free_data(&W);
    cJSON_Delete(desc);
    free(a), free(b);
}

/* stories260K through the driver (packed as the blocks are calibrated, so
 * later blocks see int8 activations); saved and loaded, the same perplexity. */
static double eval_ppl(wmat_model *m, const int32_t *ids, size_t n)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 128;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, n, 128, 8, &r));
    wmat_runtime_free(rt);
    return r.ppl;
}

static void test_model_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    int32_t *tok;
    size_t nt;
    TU_OK(wmat_read_tokens_u16(cp, &tok, &nt));
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, mp, &lp));
    const double fp = eval_ppl(m, tok + 65536, nt - 65536);
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "dgq";
    p.method_params = "group=32";
    p.group_fallback = 1;
    p.low_mem = 1;
    p.calib = tok;
    p.n_calib = 8 * 128;
    p.calib_ctx = 128;
    wmat_quantize_report rep;
    TU_OK(wmat_quantize_model(m, &p, &rep));
    assert_int_equal(rep.n_tensors, 35);
    int n_dgq = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const char *kn = wmat_tensor_kind(wmat_model_tensor(m, i));
        n_dgq += kn && !strcmp(kn, "dgq");
    }
    assert_int_equal(n_dgq, 35);
    const double packed = eval_ppl(m, tok + 65536, nt - 65536);
    const char *dir = tu_tmp("dgq-native");
    TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_QUANT));
    wmat_model *m2 = NULL;
    lp = wmat_load_default_params();
    lp.keep_stored = 1;
    TU_OK(wmat_model_load(&m2, dir, &lp));
    const double loaded = eval_ppl(m2, tok + 65536, nt - 65536);
    print_message("stories260K dgq g32: %.3f bpw, perplexity fp32 %.4f, packed A8W4 %.4f, loaded %.4f\n",
                  rep.bits_per_weight, fp, packed, loaded);
    if (!(loaded == packed)) fail_msg("loaded %g, packed %g", loaded, packed);
    if (!(packed < 1.15 * fp)) fail_msg("A8W4 %g against fp32 %g", packed, fp);
    wmat_quantize_report_free(&rep);
    wmat_model_free(m);
    wmat_model_free(m2);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_int8_path_exact),  cmocka_unit_test(test_fine_phase_literal),
        cmocka_unit_test(test_coarse_phase_literal), cmocka_unit_test(test_k_fits_int8),
        cmocka_unit_test(test_smoothing_rule),   cmocka_unit_test(test_method),
        cmocka_unit_test(test_save_load_hostile), cmocka_unit_test(test_model_roundtrip),
    };
    return tu_run_tests("dgq", tests, NULL, NULL);
}
