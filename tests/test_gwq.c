/* GWQ (SPECS.md G4): the gradient statistic (the trainer's dL/dW against
 * central differences of the loss on a tiny model), the mask (exactly the
 * top fraction by each score, ties to the lower index), the kept weights
 * reproduced exactly in fp16, the method against a slow literal
 * restatement (RTN and GPTQ dense parts) on a small matrix, and a model
 * through the driver packed as sum(qpacked, sparse), saved and loaded. */
#include "test_util.h"
#include "train_util.h"

#include "quant/methods.h"
#include "quant/qmodel.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

static double loss_of(wmat_model *m, const int32_t *tok, size_t n, int ctx, int nseq)
{
    float **g = NULL;
    double l = 0.0;
    TU_OK(wmat_model_weight_gradients(m, tok, n, ctx, nseq, 1, &g, &l));
    wmat_model_weight_gradients_free(m, g);
    return l;
}

/* dL/dW from the trainer's backward against (L(w + h) - L(w - h)) / 2h on the
 * entries of largest |G| of three linears and the (tied) classifier. */
static void test_gradient_fd(void **state)
{
    (void)state;
    wmat_model *m = tu_tiny_model(7, 32, 64, 2);
    const int ctx = 8, nseq = 3;
    int32_t *tok = tu_pattern_tokens((size_t)(nseq * ctx + 1));
    float **g = NULL;
    double l0 = 0.0;
    TU_OK(wmat_model_weight_gradients(m, tok, (size_t)(nseq * ctx + 1), ctx, nseq, 1, &g, &l0));
    assert_true(l0 > 0.0);
    wmat_tensor *ts[] = {wmat_model_linear(m, 0, WMAT_LIN_Q), wmat_model_linear(m, 1, WMAT_LIN_DOWN),
                         wmat_model_linear(m, 1, WMAT_LIN_V), wmat_model_classifier(m)};
    int checked = 0;
    for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
        int ti = -1;
        for (int i = 0; i < wmat_model_n_tensors(m); i++)
            if (wmat_model_tensor(m, i) == ts[k]) ti = i;
        assert_true(ti >= 0);
        assert_non_null(g[ti]);
        const int64_t n = wmat_tensor_nelem(ts[k]);
        float *w = ts[k]->data;
        /* the 3 largest |G| and one ordinary entry */
        int64_t idx[4] = {-1, -1, -1, n / 2};
        for (int a = 0; a < 3; a++)
            for (int64_t i = 0; i < n; i++) {
                int used = 0;
                for (int b = 0; b < a; b++) used |= idx[b] == i;
                if (!used && (idx[a] < 0 || fabsf(g[ti][i]) > fabsf(g[ti][idx[a]]))) idx[a] = i;
            }
        for (int a = 0; a < 4; a++) {
            const int64_t i = idx[a];
            const float w0 = w[i], h = 1e-2f;
            w[i] = w0 + h;
            const double lp = loss_of(m, tok, (size_t)(nseq * ctx + 1), ctx, nseq);
            w[i] = w0 - h;
            const double lm = loss_of(m, tok, (size_t)(nseq * ctx + 1), ctx, nseq);
            w[i] = w0;
            const double fd = (lp - lm) / (2.0 * h);
            if (!(fabs(fd - g[ti][i]) <= 2e-2 * fabs(fd) + 2e-4))
                fail_msg("%s[%lld]: dL/dW %g, finite differences %g", ts[k]->name, (long long)i, (double)g[ti][i], fd);
            if (a < 3) assert_true(fabs(fd) > 1e-3); /* the check can fail */
            checked++;
        }
    }
    assert_int_equal(checked, 16);
    /* weights untouched, the same gradients again */
    float **g2 = NULL;
    double l1 = 0.0;
    TU_OK(wmat_model_weight_gradients(m, tok, (size_t)(nseq * ctx + 1), ctx, nseq, 1, &g2, &l1));
    assert_true(l1 == l0);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        assert_true(!g[i] == !g2[i]);
        if (g[i]) assert_memory_equal(g[i], g2[i], (size_t)wmat_tensor_nelem(wmat_model_tensor(m, i)) * sizeof(float));
    }
    wmat_model_weight_gradients_free(m, g2);
    /* the Fisher form: the mean over windows of each window's squared gradient */
    float **F = NULL;
    TU_OK(wmat_model_weight_fisher(m, tok, (size_t)(nseq * ctx + 1), ctx, nseq, 1, &F, NULL));
    for (int w = 0; w < nseq; w++) {
        TU_OK(wmat_model_weight_gradients(m, tok + w * ctx, (size_t)(ctx + 1), ctx, 1, 1, &g2, NULL));
        for (int i = 0; i < wmat_model_n_tensors(m); i++) {
            assert_true(!F[i] == !g2[i]);
            if (!g2[i]) continue;
            const int64_t ne = wmat_tensor_nelem(wmat_model_tensor(m, i));
            for (int64_t e = 0; e < ne; e++) F[i][e] -= g2[i][e] * g2[i][e] / nseq;
        }
        wmat_model_weight_gradients_free(m, g2);
    }
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (F[i]) {
            const int64_t ne = wmat_tensor_nelem(wmat_model_tensor(m, i));
            const double d = tu_max_abs(F[i], (size_t)ne), ref = tu_max_abs(g[i], (size_t)ne);
            if (!(d <= 1e-5 * ref * ref + 1e-12)) fail_msg("%s: Fisher off by %g (max |G| %g)", wmat_model_tensor(m, i)->name, d, ref);
        }
    wmat_model_weight_gradients_free(m, F);
    /* too short a stream, bad windows */
    assert_int_not_equal(wmat_model_weight_gradients(m, tok, 4, ctx, 1, 1, &g2, NULL), WMAT_OK);
    assert_int_not_equal(wmat_model_weight_gradients(m, tok, 100, 0, 1, 1, &g2, NULL), WMAT_OK);
    wmat_model_weight_gradients_free(m, g);
    free(tok);
    wmat_model_free(m);
}

/* A fixed small layer: W (m, n) with a few large entries, G, and H from X
 * (T, n) whose input 5 is always 0 (a dead input). */
static void small_layer(int m, int n, float *W, float *G, wmat_qstats *st)
{
    wmat_rng r;
    wmat_rng_seed(&r, 99);
    for (int i = 0; i < m * n; i++) W[i] = 0.05f * wmat_rng_normal(&r) * (i % 23 == 0 ? 5.0f : 1.0f);
    for (int i = 0; i < m * n; i++) G[i] = 1e-3f * wmat_rng_normal(&r) * (i % 7 == 0 ? 3.0f : 1.0f);
    const int T = 4 * n;
    float *X = malloc((size_t)(T * n) * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int j = 0; j < n; j++) X[t * n + j] = j == 5 ? 0.0f : wmat_rng_normal(&r) * (1.0f + (float)(j % 4));
    TU_OK(wmat__qstats_init(st, n, 1));
    wmat__qstats_add(st, X, T);
    wmat__qstats_finish(st);
    st->grad = G;
    free(X);
}

static double score_lit(int sc, const float *W, const float *G, const double *H, int n, int i)
{
    const double w = W[i], gg = G[i];
    switch (sc) {
    case WMAT_GWQ_GRAD: return fabs(gg);
    case WMAT_GWQ_GRAD_W: return fabs((float)(gg * w));
    case WMAT_GWQ_GRAD2: return (float)(gg * gg);
    case WMAT_GWQ_HESSIAN: return (float)(w * w * H[(i % n) * n + i % n]);
    default: return fabs(w);
    }
}

/* The mask is the `keep` highest scores, each kept score >= every other,
 * ties to the lower index; every score is the formula. */
static void test_mask_topk(void **state)
{
    (void)state;
    const int m = 16, n = 64, N = m * n;
    float *W = malloc((size_t)N * sizeof(float)), *G = malloc((size_t)N * sizeof(float));
    float *s = malloc((size_t)N * sizeof(float));
    uint8_t *mk = malloc((size_t)N);
    wmat_qstats st;
    small_layer(m, n, W, G, &st);
    for (int sc = WMAT_GWQ_GRAD; sc <= WMAT_GWQ_RANDOM; sc++) {
        TU_OK(wmat__gwq_scores(W, m, n, &st, sc, 5, s));
        if (sc != WMAT_GWQ_RANDOM)
            for (int i = 0; i < N; i++)
                if (!((float)score_lit(sc, W, G, st.H, n, i) == s[i]))
                    fail_msg("score %d at %d: %g, literal %g", sc, i, (double)s[i], score_lit(sc, W, G, st.H, n, i));
        for (int64_t keep = 0; keep <= N; keep += keep < 20 ? 1 : 97) {
            wmat__gwq_mask(s, N, keep, mk);
            int64_t cnt = 0;
            float lo = INFINITY, hi = -INFINITY;
            for (int i = 0; i < N; i++) {
                cnt += mk[i];
                if (mk[i]) lo = fminf(lo, s[i]);
                else hi = fmaxf(hi, s[i]);
            }
            assert_int_equal(cnt, keep);
            if (keep > 0 && keep < N) assert_true(lo >= hi);
        }
    }
    /* ties: equal scores keep the lower indices */
    for (int i = 0; i < N; i++) s[i] = (float)(i % 4);
    wmat__gwq_mask(s, N, N / 4 + 3, mk);
    for (int i = 0; i < N; i++) assert_int_equal(mk[i], i % 4 == 3 || (i % 4 == 2 && i < 4 * 3));
    /* the gradient scores refuse to run without gradients */
    st.grad = NULL;
    assert_int_not_equal(wmat__gwq_scores(W, m, n, &st, WMAT_GWQ_GRAD, 0, s), WMAT_OK);
    assert_int_equal(wmat__gwq_scores(W, m, n, &st, WMAT_GWQ_MAGNITUDE, 0, s), WMAT_OK);
    wmat__qstats_free(&st);
    free(W), free(G), free(s), free(mk);
}

/* ---- the literal algorithm */

/* upper U with (H + lambda mean(diag) I)^-1 = U^T U, in double */
static void literal_u(const double *H0, int n, double damp, double *U)
{
    double *A = malloc((size_t)(n * n) * sizeof(double)), *Ai = malloc((size_t)(n * n) * sizeof(double));
    memcpy(A, H0, (size_t)(n * n) * sizeof(double));
    double mean = 0;
    for (int j = 0; j < n; j++) {
        if (A[j * n + j] == 0) A[j * n + j] = 1;
        mean += A[j * n + j] / n;
    }
    for (int j = 0; j < n; j++) A[j * n + j] += damp * mean;
    /* Gauss-Jordan inverse */
    for (int i = 0; i < n * n; i++) Ai[i] = i % (n + 1) == 0;
    for (int c = 0; c < n; c++) {
        const double p = A[c * n + c];
        for (int j = 0; j < n; j++) A[c * n + j] /= p, Ai[c * n + j] /= p;
        for (int r = 0; r < n; r++)
            if (r != c) {
                const double f = A[r * n + c];
                for (int j = 0; j < n; j++) A[r * n + j] -= f * A[c * n + j], Ai[r * n + j] -= f * Ai[c * n + j];
            }
    }
    /* Cholesky Ai = U^T U */
    memset(U, 0, (size_t)(n * n) * sizeof(double));
    for (int j = 0; j < n; j++) {
        double s = Ai[j * n + j];
        for (int k = 0; k < j; k++) s -= U[k * n + j] * U[k * n + j];
        U[j * n + j] = sqrt(s);
        for (int i = j + 1; i < n; i++) {
            double t = Ai[j * n + i];
            for (int k = 0; k < j; k++) t -= U[k * n + i] * U[k * n + j];
            U[j * n + i] = t / U[j * n + j];
        }
    }
    free(A), free(Ai);
}

/* min-max grid of the non-kept values of x[0..g) (0 inside the range) */
static void literal_grid(const double *x, const uint8_t *mk, int g, int bits, float *s, float *z)
{
    float lo = 0, hi = 0;
    for (int i = 0; i < g; i++)
        if (!mk[i]) lo = fminf(lo, (float)x[i]), hi = fmaxf(hi, (float)x[i]);
    if (lo == 0 && hi == 0) lo = -1, hi = 1;
    const int maxq = (1 << bits) - 1;
    *s = f16r((hi - lo) / (float)maxq);
    *z = fminf(fmaxf(rintf(-lo / *s), 0.0f), (float)maxq);
}

/* GWQ on W (m, n): mask given, groups of g, dense part RTN (gptq 0) or a
 * one-column-at-a-time GPTQ in double with every later column updated. */
static void literal_gwq(const float *W0, int m, int n, const double *H, const uint8_t *mk, int g, int bits, int gptq,
                        float *Q)
{
    double *W = malloc((size_t)(m * n) * sizeof(double)), *U = malloc((size_t)(n * n) * sizeof(double));
    float *s = malloc((size_t)(m * n / g) * sizeof(float)), *z = malloc((size_t)(m * n / g) * sizeof(float));
    const int maxq = (1 << bits) - 1;
    for (int i = 0; i < m * n; i++) W[i] = W0[i];
    if (gptq) {
        literal_u(H, n, 0.01, U);
        for (int j = 0; j < n; j++)
            if (H[j * n + j] == 0)
                for (int r = 0; r < m; r++)
                    if (!mk[r * n + j]) W[r * n + j] = 0;
    }
    for (int i = 0; i < n; i++)
        for (int r = 0; r < m; r++) {
            const int gi = r * (n / g) + i / g;
            if (i % g == 0) literal_grid(W + r * n + i, mk + r * n + i, g, bits, &s[gi], &z[gi]);
            const double w = W[r * n + i];
            double q;
            if (mk[r * n + i]) {
                q = f16r((float)w);
            } else {
                const double c = fmin(fmax(rint((float)w / s[gi]) + z[gi], 0), maxq);
                q = (double)s[gi] * (c - z[gi]);
            }
            Q[r * n + i] = (float)q;
            if (gptq) {
                const double e = (w - q) / U[i * n + i];
                for (int j = i + 1; j < n; j++) W[r * n + j] -= e * U[i * n + j];
            }
        }
    free(W), free(U), free(s), free(z);
}

static void test_method_vs_literal(void **state)
{
    (void)state;
    const int m = 12, n = 64, N = m * n;
    float *W = malloc((size_t)N * sizeof(float)), *G = malloc((size_t)N * sizeof(float));
    float *Q = malloc((size_t)N * sizeof(float)), *D = malloc((size_t)N * sizeof(float));
    float *sc = malloc((size_t)N * sizeof(float));
    uint8_t *mk = malloc((size_t)N);
    wmat_qstats st;
    small_layer(m, n, W, G, &st);
    float wmax = 0;
    for (int i = 0; i < N; i++) wmax = fmaxf(wmax, fabsf(W[i]));
    const struct {
        int bits, group, gptq, score, block;
        double f;
    } cases[] = {{3, 32, 0, WMAT_GWQ_GRAD, 128, 0.05}, {3, 32, 1, WMAT_GWQ_GRAD, 128, 0.05},
                 {2, 32, 1, WMAT_GWQ_HESSIAN, 32, 0.02}, {4, 64, 1, WMAT_GWQ_GRAD_W, 16, 0.1},
                 {2, 64, 0, WMAT_GWQ_MAGNITUDE, 128, 0.0}, {3, 32, 1, WMAT_GWQ_RANDOM, 64, 0.01}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        wmat_qparams p = wmat__qparams_default();
        p.bits = cases[c].bits;
        p.group = cases[c].group;
        p.dense_gptq = cases[c].gptq;
        p.score = cases[c].score;
        p.outliers = cases[c].f;
        p.block = cases[c].block;
        p.n_threads = 2;
        wmat_qresult res;
        wmat_qmethod_info info;
        memset(&info, 0, sizeof info);
        TU_OK(wmat__quant_gwq(&res, W, m, n, &st, &p, &info));
        assert_non_null(res.obj);
        assert_non_null(strstr(info.scheme, "gwq"));
        wmat_qresult_dequant(&res, D);
        TU_OK(wmat__gwq_scores(W, m, n, &st, p.score, p.seed, sc));
        wmat__gwq_mask(sc, N, llround(p.outliers * N), mk);
        literal_gwq(W, m, n, st.H, mk, p.group, p.bits, p.dense_gptq, Q);
        /* the parts: the sparse one holds exactly the mask, the dense one is 0 there */
        wmat_tensor T;
        wmat__tensor_init2(&T, WMAT_OBJ, m, n, res.obj);
        assert_string_equal(wmat_tensor_kind(&T), "sum");
        const wmat_tensor *A = wmat__sum_part(&T, 0), *S = wmat__sum_part(&T, 1);
        assert_string_equal(wmat_tensor_kind(A), "qpacked");
        assert_string_equal(wmat_tensor_kind(S), "sparse");
        float *a = malloc((size_t)N * sizeof(float)), *sp = malloc((size_t)N * sizeof(float));
        wmat__wkind_of(A)->dequant_rows(A, 0, m, a);
        wmat__wkind_of(S)->dequant_rows(S, 0, m, sp);
        for (int i = 0; i < N; i++) {
            if (mk[i] && a[i] != 0.0f) fail_msg("case %zu: dense part %g at kept (%d, %d)", c, (double)a[i], i / n, i % n);
            if (!mk[i] && sp[i] != 0.0f) fail_msg("case %zu: sparse value at (%d, %d) not kept", c, i / n, i % n);
            /* RTN: the kept weights are fp16(W) exactly */
            if (!p.dense_gptq && mk[i] && D[i] != f16r(W[i]))
                fail_msg("case %zu: kept (%d, %d) is %g, fp16(W) %g", c, i / n, i % n, (double)D[i], (double)f16r(W[i]));
        }
        free(a), free(sp);
        /* float32 blocked loop vs float64 column loop: values within rounding */
        const double d = tu_max_abs_diff(D, Q, (size_t)N, NULL);
        if (!(d <= (p.dense_gptq ? 1e-4 : 1e-7) * wmax))
            fail_msg("case %zu: method %g from the literal algorithm (max |W| %g)", c, d, wmax);
        /* bits: qpacked codes + scales + zeros, and the sparse bitmap + fp16 values + offsets */
        const double bpw = 8.0 * (double)wmat_qresult_obj_bytes(&res) / N;
        const double want = p.bits + 24.0 / p.group + 1.0 + 16.0 * (double)llround(p.outliers * N) / N;
        if (!(bpw >= want && bpw < want + 1.0)) fail_msg("case %zu: %g bits per weight, want about %g", c, bpw, want);
        wmat_qresult_free(&res);
    }
    /* GPTQ with the kept weights fixed beats RTN on the calibration output error */
    {
        wmat_qparams p = wmat__qparams_default();
        p.bits = 2;
        p.group = 32;
        p.outliers = 0.02;
        double e[2];
        for (int k = 0; k < 2; k++) {
            p.dense_gptq = k;
            wmat_qresult res;
            TU_OK(wmat__quant_gwq(&res, W, m, n, &st, &p, NULL));
            wmat_qresult_dequant(&res, D);
            e[k] = wmat__qoutput_error(W, D, m, n, st.H);
            wmat_qresult_free(&res);
        }
        if (!(e[1] < e[0])) fail_msg("gptq dense part %g, rtn %g", e[1], e[0]);
    }
    wmat__qstats_free(&st);
    free(W), free(G), free(Q), free(D), free(sc), free(mk);
}

/* A tiny model through the driver with gradients from the trainer: every
 * linear a sum(qpacked, sparse) with 1% kept, fake-quant = packed = loaded. */
static double eval_ppl(wmat_model *m, const int32_t *ids, size_t n)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 16;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, n, 16, 8, &r));
    wmat_runtime_free(rt);
    return r.ppl;
}

static void test_model_roundtrip(void **state)
{
    (void)state;
    wmat_model *m = tu_tiny_model(3, 64, 128, 2);
    const size_t nt = 16 * 16 + 1;
    int32_t *tok = tu_pattern_tokens(nt);
    float **g = NULL;
    TU_OK(wmat_model_weight_gradients(m, tok, nt, 16, 8, 1, &g, NULL));
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "gwq";
    p.method_params = "bits=3,group=32";
    p.calib = tok;
    p.n_calib = nt - 1;
    p.calib_ctx = 16;
    /* without gradients the default score is refused, naming them */
    wmat_quantize_report rep;
    wmat_qresult *res = NULL;
    assert_int_not_equal(wmat__quantize_model(m, &p, &rep, &res), WMAT_OK);
    assert_non_null(strstr(wmat_last_error(), "dL/dW"));
    wmat_model_free(m);
    m = tu_tiny_model(3, 64, 128, 2);
    p.gradients = (const float *const *)g;
    TU_OK(wmat__quantize_model(m, &p, &rep, &res));
    assert_int_equal(rep.n_tensors, 14);
    for (int i = 0; i < rep.n_tensors; i++) assert_non_null(strstr(rep.tensors[i].scheme, "fp16 by |G|"));
    const double fake = eval_ppl(m, tok, nt - 1);
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (wmat_qresult_done(&res[i])) {
            TU_OK(wmat_model_set_quantized(m, wmat_model_tensor(m, i)->name, &res[i]));
            assert_string_equal(wmat_tensor_kind(wmat_model_tensor(m, i)), "sum");
        }
    const double packed = eval_ppl(m, tok, nt - 1);
    const char *dir = tu_tmp("gwq-native");
    TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_QUANT));
    wmat_model *m2 = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.keep_stored = 1;
    TU_OK(wmat_model_load(&m2, dir, &lp));
    const double loaded = eval_ppl(m2, tok, nt - 1);
    print_message("tiny gwq 3b g32 1%%: %.3f bpw, perplexity fake-quant %.5f, packed %.5f, loaded %.5f\n",
                  rep.bits_per_weight, fake, packed, loaded);
    if (!(fabs(packed - fake) <= 1e-4 * fake)) fail_msg("packed %g, fake-quant %g", packed, fake);
    if (!(loaded == packed)) fail_msg("loaded %g, packed %g", loaded, packed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) wmat_qresult_free(&res[i]);
    wmat__free(res);
    wmat_quantize_report_free(&rep);
    wmat_model_weight_gradients_free(m, g);
    wmat_model_free(m);
    wmat_model_free(m2);
    free(tok);
}

/* The library says which gradient statistic a run reads, from the method,
 * its keys and the override items (the CLI computes only that one). */
static void test_gradients_wanted(void **state)
{
    (void)state;
    static const struct {
        const char *method, *keys, *overrides;
        int want;
    } cases[] = {
        {"rtn", NULL, NULL, 0},
        {"gwq", NULL, NULL, WMAT_GRADS_MEAN},
        {"gwq", "score=fisher", NULL, WMAT_GRADS_FISHER},
        {"gwq", "score=magnitude", NULL, 0},
        {"gwq", "score=hessian", NULL, 0},
        /* an override item brings its own method and keys */
        {"rtn", NULL, "down=gwq:score=fisher", WMAT_GRADS_FISHER},
        {"rtn", NULL, "down=gwq:3:64,up=gwq:score=random", WMAT_GRADS_MEAN},
        {"gwq", NULL, "down=keep", WMAT_GRADS_MEAN},
        {"rtn", NULL, "down=keep", 0},
        /* a method named in a pattern is not a method that runs */
        {"rtn", NULL, "gwq_like_name=rtn", 0},
        {"rtn", NULL, "down=nosuchmethod", WMAT_ERR_INVALID},
        {"nosuchmethod", NULL, NULL, WMAT_ERR_INVALID},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        wmat_quantize_params p = wmat_quantize_default_params();
        p.method = cases[i].method;
        p.method_params = cases[i].keys;
        p.overrides = cases[i].overrides;
        const int got = wmat_quantize_gradients_wanted(&p);
        if (got != cases[i].want)
            fail_msg("%s %s %s: %d, expected %d", p.method, p.method_params ? p.method_params : "",
                     p.overrides ? p.overrides : "", got, cases[i].want);
    }
    assert_int_equal(wmat_quantize_gradients_wanted(NULL), WMAT_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradient_fd),
        cmocka_unit_test(test_mask_topk),
        cmocka_unit_test(test_method_vs_literal),
        cmocka_unit_test(test_model_roundtrip),
        cmocka_unit_test(test_gradients_wanted),
    };
    return tu_run_tests("gwq", tests, NULL, NULL);
}
