/* Analysis: metrics against matrices with known spectra, the power-law fit
 * against synthetic samples, intruder dimensions, every shared model, a
 * base comparison, bad input, and the HTML report in headless Chromium. */
#include "test_util.h"

#include <cjson/cJSON.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------- helpers */

/* A random orthonormal (n, k) matrix (row-major), k <= n: Q of the QR of a
 * Gaussian matrix. */
static double *rand_orth(int n, int k, wmat_rng *rng)
{
    double *A = malloc((size_t)n * k * sizeof(double)), *tau = malloc((size_t)k * sizeof(double));
    for (int i = 0; i < n * k; i++) A[i] = wmat_rng_normal(rng);
    assert_int_equal(LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, n, k, A, k, tau), 0);
    assert_int_equal(LAPACKE_dorgqr(LAPACK_ROW_MAJOR, n, k, k, A, k, tau), 0);
    free(tau);
    return A;
}

/* W = U diag(s) V^T, (rows, cols) fp32, r = min(rows, cols) values s. */
static float *known_matrix(int rows, int cols, const double *s, wmat_rng *rng)
{
    int r = rows < cols ? rows : cols;
    double *U = rand_orth(rows, r, rng), *V = rand_orth(cols, r, rng);
    float *W = malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double acc = 0;
            for (int q = 0; q < r; q++) acc += U[(size_t)i * r + q] * s[q] * V[(size_t)j * r + q];
            W[(size_t)i * cols + j] = (float)acc;
        }
    free(U);
    free(V);
    return W;
}

static wmat_tensor make_tensor(const char *name, float *data, int rows, int cols)
{
    wmat_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.dtype = WMAT_F32;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.data = data;
    t.nbytes = (size_t)rows * cols * sizeof(float);
    return t;
}

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

/* ---------------------------------------------------------------- spectra */

static void check_known(int rows, int cols, int exact, uint64_t seed)
{
    wmat_rng rng;
    wmat_rng_seed(&rng, seed);
    int r = rows < cols ? rows : cols;
    double *s = malloc((size_t)r * sizeof(double)), *got = malloc((size_t)r * sizeof(double));
    /* singular values from 10 down to 1, descending, distinct */
    for (int i = 0; i < r; i++) s[i] = 10.0 * pow(0.1, (double)i / (r - 1));
    float *W = known_matrix(rows, cols, s, &rng);
    TU_OK(wmat_singular_values(W, rows, cols, exact, got));
    double worst = 0;
    for (int i = 0; i < r; i++) worst = fmax(worst, tu_abs_diff(got[i], s[i]) / s[i]);
    print_message("%dx%d %s: worst relative singular-value error %.2e\n", rows, cols, exact ? "exact" : "gram", worst);
    assert_true(worst < 1e-6);

    /* stable and effective rank through the analysis, against the formulas */
    wmat_tensor t = make_tensor("known", W, rows, cols);
    const wmat_tensor *tp = &t;
    wmat_analyze_params p = wmat_analyze_default_params();
    p.exact = exact;
    wmat_analysis *a = NULL;
    TU_OK(wmat_analyze_tensors(&a, &tp, NULL, 1, &p));
    const wmat_matrix_stats *st = wmat_analysis_matrix(a, 0);
    double e = 0, sum = 0, h = 0;
    for (int i = 0; i < r; i++) e += s[i] * s[i], sum += s[i];
    for (int i = 0; i < r; i++) h -= s[i] / sum * log(s[i] / sum);
    assert_int_equal(st->n_sv, r);
    TU_ASSERT_NEAR(st->stable_rank, e / (s[0] * s[0]), 1e-5 * st->stable_rank);
    TU_ASSERT_NEAR(st->entropy_rank, exp(h), 1e-5 * st->entropy_rank);
    TU_ASSERT_NEAR(st->norm_fro, sqrt(e), 1e-5 * sqrt(e));
    TU_ASSERT_NEAR(st->spectral_norm_sv, s[0], 1e-5 * s[0]);
    TU_ASSERT_NEAR(st->log_spectral_norm, log10(s[0] * s[0]), 1e-5);
    /* energy ranks by direct count */
    double acc = 0;
    int r90 = 0;
    for (int i = 0; i < r; i++) {
        acc += s[i] * s[i];
        if (acc >= 0.9 * e) {
            r90 = i + 1;
            break;
        }
    }
    assert_int_equal(st->rank90, r90);
    /* best rank-k error at k = 50% */
    int k50 = (int)ceil(0.5 * r);
    double tail = 0;
    for (int i = k50; i < r; i++) tail += s[i] * s[i];
    TU_ASSERT_NEAR(st->lr_err50, sqrt(tail / e), 1e-5);
    wmat_analysis_free(a);
    free(W);
    free(s);
    free(got);
}

static void test_known_spectra(void **state)
{
    (void)state;
    check_known(96, 64, 0, 1);
    check_known(64, 96, 0, 2);
    check_known(80, 80, 1, 3);
    check_known(50, 120, 1, 4);
}

/* ---------------------------------------------------------------- power law */

static void test_powerlaw_recovers_alpha(void **state)
{
    (void)state;
    const double alphas[] = {1.8, 2.5, 3.5, 5.0};
    const int n = 40000;
    double *x = malloc((size_t)n * sizeof(double));
    for (int q = 0; q < 4; q++) {
        wmat_rng rng;
        wmat_rng_seed(&rng, 100 + q);
        /* inverse CDF of p(x) ~ x^-alpha on [xmin, inf), xmin = 0.7 */
        for (int i = 0; i < n; i++) {
            double u = (wmat_rng_u64(&rng) >> 11) * 0x1.0p-53;
            x[i] = 0.7 * pow(1.0 - u, -1.0 / (alphas[q] - 1.0));
        }
        wmat_powerlaw pl;
        double t0 = now_s();
        TU_OK(wmat_powerlaw_fit(x, n, 10, &pl));
        double dt = now_s() - t0;
        print_message("alpha %.2f: fit %.4f, xmin %.4f, tail %d, D %.4f, %d candidates, %d exact KS passes, %.1f CDF "
                      "evaluations per sample, %.3f s\n",
                      alphas[q], pl.alpha, pl.xmin, pl.n_tail, pl.D, pl.n_candidates, pl.n_ks_exact,
                      (double)pl.n_evals / n, dt);
        TU_ASSERT_NEAR(pl.alpha, alphas[q], 0.05);
        assert_true(pl.n_ks_exact < pl.n_candidates / 10);
    }
    /* the fit against a brute-force search on a small sample */
    wmat_rng rng;
    wmat_rng_seed(&rng, 7);
    int m = 600;
    for (int i = 0; i < m; i++) x[i] = exp(wmat_rng_normal(&rng)) + 0.3 * pow(1 - wmat_rng_uniform(&rng), -0.8);
    wmat_powerlaw pl;
    TU_OK(wmat_powerlaw_fit(x, m, 10, &pl));
    /* brute force */
    double *y = malloc((size_t)m * sizeof(double));
    memcpy(y, x, (size_t)m * sizeof(double));
    for (int i = 1; i < m; i++)
        for (int j = i; j > 0 && y[j] < y[j - 1]; j--) {
            double t = y[j];
            y[j] = y[j - 1];
            y[j - 1] = t;
        }
    double best = INFINITY, balpha = 0;
    for (int j = 0; j + 10 <= m; j++) {
        int nt = m - j;
        double S = 0;
        for (int i = j; i < m; i++) S += log(y[i] / y[j]);
        double al = 1 + nt / S, D = 0;
        for (int k = 0; k < nt; k++) {
            double F = 1 - pow(y[j + k] / y[j], 1 - al);
            D = fmax(D, fmax(fabs((k + 1.0) / nt - F), fabs((double)k / nt - F)));
        }
        if (D < best) best = D, balpha = al;
    }
    print_message("mixture: fit alpha %.6f D %.6f, brute force alpha %.6f D %.6f\n", pl.alpha, pl.D, balpha, best);
    TU_ASSERT_NEAR(pl.D, best, 1e-12);
    TU_ASSERT_NEAR(pl.alpha, balpha, 1e-9);
    /* too few samples */
    assert_int_equal(wmat_powerlaw_fit(x, 5, 10, &pl), WMAT_ERR_INVALID);
    assert_true(isnan(pl.alpha));
    free(y);
    free(x);
}

/* ---------------------------------------------------------------- intruders */

static void test_intruder_dimensions(void **state)
{
    (void)state;
    const int rows = 128, cols = 256;
    wmat_rng rng;
    wmat_rng_seed(&rng, 11);
    float *B = malloc((size_t)rows * cols * sizeof(float)), *W1 = malloc((size_t)rows * cols * sizeof(float)),
          *W2 = malloc((size_t)rows * cols * sizeof(float));
    for (int i = 0; i < rows * cols; i++) B[i] = wmat_rng_normal(&rng) * 0.05f;
    /* W1 = B + rank-3 update along random directions with a norm above the
     * base's largest singular values (about 0.05 (sqrt 128 + sqrt 256) = 1.4) */
    memcpy(W1, B, (size_t)rows * cols * sizeof(float));
    for (int q = 0; q < 3; q++) {
        double *u = rand_orth(rows, 1, &rng), *v = rand_orth(cols, 1, &rng);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) W1[(size_t)i * cols + j] += (float)((6.0 - q) * u[i] * v[j]);
        free(u);
        free(v);
    }
    /* W2 = B + small full-rank noise */
    for (int i = 0; i < rows * cols; i++) W2[i] = B[i] + 0.0005f * wmat_rng_normal(&rng);
    wmat_tensor tb = make_tensor("base", B, rows, cols), t1 = make_tensor("lowrank", W1, rows, cols),
                t2 = make_tensor("noise", W2, rows, cols);
    const wmat_tensor *w[2] = {&t1, &t2}, *b[2] = {&tb, &tb};
    for (int exact = 0; exact < 2; exact++) {
        wmat_analyze_params p = wmat_analyze_default_params();
        p.exact = exact;
        wmat_analysis *a = NULL;
        TU_OK(wmat_analyze_tensors(&a, w, b, 2, &p));
        const wmat_matrix_stats *s1 = wmat_analysis_matrix(a, 0), *s2 = wmat_analysis_matrix(a, 1);
        print_message("%s: low-rank update: %d intruders (cos %.3f %.3f %.3f %.3f), overlap %.3f; noise: %d, overlap %.3f, "
                      "dW/W %.4f\n",
                      exact ? "exact" : "gram", s1->num_intruders, s1->intruder_cos[0], s1->intruder_cos[1],
                      s1->intruder_cos[2], s1->intruder_cos[3], s1->subspace_overlap, s2->num_intruders,
                      s2->subspace_overlap, s2->delta_rel);
        assert_int_equal(s1->intruder_k, 10);
        assert_int_equal(s1->num_intruders, 3);
        for (int i = 0; i < 3; i++) assert_true(s1->intruder_cos[i] < 0.5);
        assert_true(s1->delta_entropy_rank < 3.5);
        assert_int_equal(s2->num_intruders, 0);
        assert_true(s2->subspace_overlap > 0.5);
        TU_ASSERT_NEAR(s2->delta_rel, 0.01, 0.001);
        wmat_analysis_free(a);
    }
    free(B);
    free(W1);
    free(W2);
}

/* ---------------------------------------------------------------- bad input */

static int cancel_progress(void *user, const char *what, uint64_t done, uint64_t total)
{
    (void)user;
    (void)what;
    (void)total;
    return done >= 1;
}

static void test_bad_input(void **state)
{
    (void)state;
    wmat_analysis *a = (wmat_analysis *)1;
    /* an empty set of matrices */
    assert_int_equal(wmat_analyze_tensors(&a, NULL, NULL, 0, NULL), WMAT_ERR_INVALID);
    assert_null(a);
    assert_non_null(strstr(wmat_last_error(), "no 2-D"));
    /* NaN */
    float *W = calloc(16 * 8, sizeof(float));
    for (int i = 0; i < 128; i++) W[i] = (float)(i % 7) - 3;
    W[3 * 8 + 5] = NAN;
    wmat_tensor t = make_tensor("nan_matrix", W, 16, 8);
    const wmat_tensor *tp = &t;
    assert_int_equal(wmat_analyze_tensors(&a, &tp, NULL, 1, NULL), WMAT_ERR_NUMERIC);
    print_message("NaN: %s\n", wmat_last_error());
    assert_non_null(strstr(wmat_last_error(), "NaN"));
    assert_non_null(strstr(wmat_last_error(), "nan_matrix"));
    assert_non_null(strstr(wmat_last_error(), "row 3, column 5"));
    double sv[8];
    assert_int_equal(wmat_singular_values(W, 16, 8, 0, sv), WMAT_ERR_NUMERIC);
    /* mismatched shapes against a base */
    W[3 * 8 + 5] = 1;
    wmat_tensor tb = make_tensor("nan_matrix", W, 8, 16);
    const wmat_tensor *bp = &tb;
    assert_int_equal(wmat_analyze_tensors(&a, &tp, &bp, 1, NULL), WMAT_ERR_INVALID);
    print_message("shapes: %s\n", wmat_last_error());
    assert_non_null(strstr(wmat_last_error(), "shape mismatch"));
    /* cancellation through the progress callback; unwritable outputs */
    wmat_context ctx = wmat_context_default();
    ctx.progress = cancel_progress;
    wmat_analyze_params p = wmat_analyze_default_params();
    p.ctx = &ctx;
    const wmat_tensor *two[2] = {&t, &t};
    assert_int_equal(wmat_analyze_tensors(&a, two, NULL, 2, &p), WMAT_ERR_CANCELLED);
    TU_OK(wmat_analyze_tensors(&a, &tp, NULL, 1, NULL));
    assert_int_equal(wmat_analysis_write_csv(a, "/nonexistent-dir/x.csv"), WMAT_ERR_IO);
    assert_int_equal(wmat_analysis_write_html(a, "/nonexistent-dir/x.html", NULL), WMAT_ERR_IO);
    wmat_analysis_free(a);
    /* a 1-D tensor */
    wmat_tensor t1 = make_tensor("vec", W, 16, 8);
    t1.ndim = 1;
    const wmat_tensor *t1p = &t1;
    assert_int_equal(wmat_analyze_tensors(&a, &t1p, NULL, 1, NULL), WMAT_ERR_INVALID);
    free(W);
}

/* mismatched models, and a model file holding a NaN, through the CLI */
static void test_cli_bad_models(void **state)
{
    (void)state;
    TU_NEED_DATA(s260, "models/stories260K.bin");
    TU_NEED_DATA(xs, "models/llama2xs_tinystories_iter500.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    char cmd[2048];
    int code;
    snprintf(cmd, sizeof cmd, "'%s' analyze '%s' --base '%s' --tokenizer '%s' --quiet 2>&1", tu_cli(), s260, xs, tok);
    char *out = tu_run(cmd, &code);
    print_message("mismatch: exit %d: %s", code, out);
    assert_int_not_equal(code, 0);
    assert_true(strstr(out, "shape mismatch") || strstr(out, "differ"));
    free(out);
    /* a copy of stories260K with one weight set to NaN */
    char *buf;
    size_t len;
    TU_OK(wmat_read_file(s260, &buf, &len));
    float nanv = NAN;
    memcpy(buf + 7 * 4 + 1000 * 4, &nanv, 4); /* inside the token embedding */
    const char *bad = tu_tmp("nan260K.bin");
    assert_int_equal(tu_write_file(bad, buf, len), 0);
    free(buf);
    snprintf(cmd, sizeof cmd, "'%s' analyze '%s' --tokenizer '%s' --quiet 2>&1", tu_cli(), bad, tok);
    out = tu_run(cmd, &code);
    print_message("NaN model: exit %d: %s", code, out);
    assert_int_not_equal(code, 0);
    assert_true(strstr(out, "NaN") || strstr(out, "nan") || strstr(out, "finite"));
    free(out);
}

/* ---------------------------------------------------------------- models */

static void test_every_model(void **state)
{
    (void)state;
    const char *names[] = {"models/stories260K.bin", "models/llama2xs_tinystories_iter500.bin", "models/aidreams260K.bin",
                           "models/mix4m.bin", "models/mix4m-hf", "models/stories260K.gguf"};
    int ran = 0;
    for (int k = 0; k < 6; k++) {
        const char *path = tu_data(names[k]);
        if (!path) {
            print_message("SKIP %s: not found\n", names[k]);
            continue;
        }
        wmat_model *m = load(path);
        wmat_analysis *a = NULL;
        TU_OK(wmat_analyze_model(&a, m, NULL, NULL));
        const wmat_config *c = wmat_model_config(m);
        int n = wmat_analysis_n_matrices(a);
        assert_int_equal(n, 7 * c->n_layers + (c->tied_embeddings ? 1 : 2));
        for (int i = 0; i < n; i++) {
            const wmat_matrix_stats *s = wmat_analysis_matrix(a, i);
            assert_true(s->n_sv > 0 && s->sv[0] > 0 && isfinite(s->stable_rank) && s->stable_rank >= 1 - 1e-9);
            assert_true(isfinite(s->alpha) && s->alpha > 1);
            assert_true(s->D >= 0 && s->D < 1);
            assert_true(s->rank90 <= s->rank95 && s->rank95 <= s->rank99 && s->rank99 <= s->n_sv);
            assert_true(s->ic_max_ratio >= 1 && s->oc_max_ratio >= 1);
            assert_true(s->rtn4_err_per_ic > 0 && s->rtn4_err_per_oc > 0 && s->rtn4_err_per_ic < 0.5);
            for (int j = 1; j < s->n_sv; j++) assert_true(s->sv[j] <= s->sv[j - 1]);
            assert_true(strcmp(s->role, "other") != 0);
        }
        assert_int_equal(wmat_analysis_n_heads(a), c->n_layers * c->n_heads);
        int L = c->n_layers, H = c->n_heads;
        assert_int_equal(wmat_analysis_n_compositions(a), 3 * H * H * L * (L - 1) / 2);
        const wmat_composition *c0 = wmat_analysis_composition(a, 0);
        assert_true(c0->src_layer < c0->dst_layer && c0->score > 0 && c0->score <= 1 + 1e-9);
        print_message("%s: %d matrices, %d heads in %.3f s; strongest %c-composition L%d.H%d -> L%d.H%d %.3f\n", names[k], n,
                      wmat_analysis_n_heads(a), wmat_analysis_seconds(a), "QKV"[c0->kind], c0->src_layer, c0->src_head,
                      c0->dst_layer, c0->dst_head, c0->score);
        wmat_analysis_free(a);
        wmat_model_free(m);
        ran++;
    }
    if (!ran) skip();
}

/* The OV circuit's singular values against a dense product, and a head's
 * composition score against its definition, on stories260K (GQA: 8 heads
 * sharing 4 kv heads). */
static void test_heads_dense(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    const wmat_config *c = wmat_model_config(m);
    wmat_analysis *a = NULL;
    TU_OK(wmat_analyze_model(&a, m, NULL, NULL));
    int dim = c->dim, hd = c->head_dim, H = c->n_heads, grp = c->n_heads / c->n_kv_heads;
    /* dense OV of layer 1 head 5 and of layer 3 head 2 */
    int la = 1, ha = 5, lb = 3, hb = 2;
    double *OVa = calloc((size_t)dim * dim, sizeof(double)), *OVb = calloc((size_t)dim * dim, sizeof(double));
    for (int pass = 0; pass < 2; pass++) {
        int l = pass ? lb : la, h = pass ? hb : ha;
        double *OV = pass ? OVb : OVa;
        const float *O = wmat_model_linear(m, l, WMAT_LIN_O)->data, *V = wmat_model_linear(m, l, WMAT_LIN_V)->data;
        for (int i = 0; i < dim; i++)
            for (int j = 0; j < dim; j++) {
                double acc = 0;
                for (int r = 0; r < hd; r++)
                    acc += (double)O[(size_t)i * H * hd + h * hd + r] * V[((size_t)(h / grp) * hd + r) * dim + j];
                OV[(size_t)i * dim + j] = acc;
            }
    }
    double *tmp = malloc((size_t)dim * dim * sizeof(double)), *sv = malloc((size_t)dim * sizeof(double)),
           *sup = malloc((size_t)dim * sizeof(double));
    memcpy(tmp, OVa, (size_t)dim * dim * sizeof(double));
    assert_int_equal(LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'N', 'N', dim, dim, tmp, dim, sv, NULL, 1, NULL, 1, sup), 0);
    const wmat_head_stats *hs = wmat_analysis_head(a, la * H + ha);
    assert_int_equal(hs->layer, la);
    assert_int_equal(hs->head, ha);
    for (int i = 0; i < hd; i++) TU_ASSERT_NEAR(hs->ov_sv[i], sv[i], 1e-6 * sv[0]);
    /* V-composition: ||OVb OVa||_F / (||OVb||_F ||OVa||_F) */
    double na = 0, nb = 0, np = 0;
    for (int i = 0; i < dim * dim; i++) na += OVa[i] * OVa[i], nb += OVb[i] * OVb[i];
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < dim; j++) {
            double acc = 0;
            for (int k = 0; k < dim; k++) acc += OVb[(size_t)i * dim + k] * OVa[(size_t)k * dim + j];
            np += acc * acc;
        }
    double want = sqrt(np) / (sqrt(na) * sqrt(nb)), got = NAN;
    for (int i = 0; i < wmat_analysis_n_compositions(a); i++) {
        const wmat_composition *cp = wmat_analysis_composition(a, i);
        if (cp->kind == WMAT_COMP_V && cp->src_layer == la && cp->src_head == ha && cp->dst_layer == lb && cp->dst_head == hb)
            got = cp->score;
    }
    print_message("V-composition L%d.H%d -> L%d.H%d: %.9f (dense %.9f)\n", la, ha, lb, hb, got, want);
    TU_ASSERT_NEAR(got, want, 1e-9);
    free(OVa);
    free(OVb);
    free(tmp);
    free(sv);
    free(sup);
    wmat_analysis_free(a);
    wmat_model_free(m);
}

/* stories260K against a perturbed copy written here: a rank-2 update of
 * one matrix with large random directions, small noise elsewhere. */
static void test_base_comparison(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    /* the checkpoint's bytes: 7 int32 header, then fp32 weights in
     * llama2.c's order; w3 (up, (hidden, dim) per layer) comes last */
    char *buf;
    size_t len;
    TU_OK(wmat_read_file(path, &buf, &len));
    int32_t hdr[7];
    memcpy(hdr, buf, sizeof hdr);
    int dim = hdr[0], hidden = hdr[1], L = hdr[2], nh = hdr[3], nkv = hdr[4], vocab = abs(hdr[5]);
    int kvdim = dim / nh * nkv;
    size_t nw = (len - 28) / 4;
    float *w = malloc(nw * sizeof(float));
    memcpy(w, buf + 28, nw * sizeof(float));
    wmat_rng rng;
    wmat_rng_seed(&rng, 5);
    for (size_t i = 0; i < nw; i++) w[i] += 1e-4f * wmat_rng_normal(&rng);
    size_t off = (size_t)vocab * dim + (size_t)L * dim + (size_t)L * dim * dim + 2 * (size_t)L * kvdim * dim +
                 (size_t)L * dim * dim + (size_t)L * dim + 2 * (size_t)L * hidden * dim + 2 * (size_t)hidden * dim;
    float *x = w + off; /* layer 2's w3: (hidden, dim) */
    int rows = hidden, cols = dim;
    for (int q = 0; q < 2; q++) {
        double *u = rand_orth(rows, 1, &rng), *v = rand_orth(cols, 1, &rng);
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) x[(size_t)i * cols + j] += (float)(12.0 * u[i] * v[j]);
        free(u);
        free(v);
    }
    memcpy(buf + 28, w, nw * sizeof(float));
    free(w);
    const char *tuned = tu_tmp("tuned260K.bin");
    assert_int_equal(tu_write_file(tuned, buf, len), 0);
    free(buf);

    char cmd[2048];
    int code;
    const char *csv = tu_tmp("base.csv"), *json = tu_tmp("base.json"), *html = tu_tmp("base.html");
    snprintf(cmd, sizeof cmd, "'%s' analyze '%s' --base '%s' --tokenizer '%s' --csv '%s' --json '%s' --html '%s' 2>&1", tu_cli(),
             tuned, path, tok, csv, json, html);
    char *out = tu_run(cmd, &code);
    print_message("%s", out);
    assert_int_equal(code, 0);
    assert_non_null(strstr(out, "intruder dimensions"));
    free(out);
    char *text;
    TU_OK(wmat_read_file(csv, &text, &len));
    assert_non_null(strstr(text, "name,role,layer,rows,cols"));
    assert_non_null(strstr(text, "delta_rel"));
    assert_non_null(strstr(text, "num_intruders"));
    /* the updated matrix: 2 intruders at ranks 1 and 2; the others none */
    char *line = strstr(text, "model.layers.2.mlp.up_proj.weight,up,2,");
    assert_non_null(line);
    char *eol = strchr(line, '\n');
    *eol = 0;
    assert_non_null(strstr(line, ",\"1;2\","));
    *eol = '\n';
    int lines = 0, with = 0;
    for (char *p = text; (p = strchr(p, '\n')) && p[1]; p++) lines++;
    for (char *p = text; (p = strstr(p, ",\"1;2\",")); p++) with++;
    assert_int_equal(lines, 36);
    assert_int_equal(with, 1);
    free(text);
    TU_OK(wmat_read_file(json, &text, &len));
    assert_non_null(strstr(text, "\"intruder_ranks\": [1, 2]"));
    /* valid JSON with one record per matrix and every singular value */
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    cJSON *mats = cJSON_GetObjectItem(root, "matrices");
    assert_int_equal(cJSON_GetArraySize(mats), 36);
    cJSON *m0 = cJSON_GetArrayItem(mats, 0);
    const char *keys[] = {"name", "alpha", "xmin", "D", "alpha_weighted", "log_norm", "log_spectral_norm", "stable_rank",
                          "mp_softrank", "num_spikes", "entropy_rank", "lr_err25", "lrc", "rtn4_err_per_ic",
                          "delta_rel", "num_intruders", "intruder_cos", "sv", "delta_sv", "top_ic"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (!cJSON_GetObjectItem(m0, keys[k])) fail_msg("JSON record lacks %s", keys[k]);
    }
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(m0, "sv")), 64);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(root, "heads")), 40);
    assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(root, "compositions_top")) > 0);
    cJSON_Delete(root);
    free(text);
    TU_OK(wmat_read_file(html, &text, &len));
    assert_non_null(strstr(text, "Against the base"));
    free(text);
}

/* ---------------------------------------------------------------- report */

static void test_html_in_chromium(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    TU_NEED_DATA(tok, "models/tok512.bin");
    const char *html = tu_tmp("mix4m.html");
    char cmd[4096];
    int code;
    snprintf(cmd, sizeof cmd, "'%s' analyze '%s' --tokenizer '%s' --html '%s' --quiet 2>&1", tu_cli(), path, tok, html);
    char *out = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    free(out);
    char *text;
    size_t len;
    TU_OK(wmat_read_file(html, &text, &len));
    /* self-contained: no scripts, no external resources */
    assert_null(strstr(text, "<script"));
    assert_null(strstr(text, "src=\"http"));
    assert_null(strstr(text, "href=\"http"));
    int svgs = 0;
    for (char *p = text; (p = strstr(p, "<svg")); p++) svgs++;
    print_message("report: %zu bytes, %d SVG charts\n", len, svgs);
    assert_true(svgs > 50);
    free(text);

    const char *chromium = access("/usr/bin/chromium", X_OK) == 0 ? "/usr/bin/chromium" : NULL;
    if (!chromium) {
        print_message("SKIP: /usr/bin/chromium not installed (scripts/setup-deps.sh --report)\n");
        skip();
        return;
    }
    const char *flags = "--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update "
                        "--disable-sync --no-first-run --enable-logging=stderr --v=0";
    const char *prof = tu_tmp("chromium-profile"), *png = tu_tmp("mix4m.png"), *log = tu_tmp("chromium.log");
    snprintf(cmd, sizeof cmd, "timeout 120 %s %s --user-data-dir='%s' --dump-dom 'file://%s' 2>'%s'", chromium, flags, prof,
             html, log);
    out = tu_run(cmd, &code);
    assert_int_equal(code, 0);
    int dom_svgs = 0;
    for (char *p = out; (p = strstr(p, "<svg")); p++) dom_svgs++;
    print_message("DOM: %zu bytes, %d <svg> elements\n", strlen(out), dom_svgs);
    assert_int_equal(dom_svgs, svgs);
    assert_non_null(strstr(out, "Findings"));
    assert_non_null(strstr(out, "composition"));
    free(out);
    snprintf(cmd, sizeof cmd, "grep -c -i 'Uncaught\\|SyntaxError\\|console' '%s'", log);
    out = tu_run(cmd, &code);
    print_message("console errors in the log: %s", out);
    assert_int_equal(atoi(out), 0);
    free(out);
    snprintf(cmd, sizeof cmd, "timeout 120 %s %s --user-data-dir='%s' --screenshot='%s' --window-size=1400,3000 'file://%s' 2>/dev/null",
             chromium, flags, prof, png, html);
    out = tu_run(cmd, &code);
    free(out);
    assert_int_equal(code, 0);
    FILE *f = fopen(png, "rb");
    assert_non_null(f);
    unsigned char sig[8] = {0};
    assert_int_equal(fread(sig, 1, 8, f), 8);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fclose(f);
    assert_memory_equal(sig, "\x89PNG\r\n\x1a\n", 8);
    print_message("screenshot: %ld bytes\n", sz);
    assert_true(sz > 50000); /* a blank page compresses to a few KB */
}

int main(void)
{
    wmat_linalg_init(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_spectra),     cmocka_unit_test(test_powerlaw_recovers_alpha),
        cmocka_unit_test(test_intruder_dimensions), cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_cli_bad_models),    cmocka_unit_test(test_every_model),
        cmocka_unit_test(test_heads_dense),       cmocka_unit_test(test_base_comparison),
        cmocka_unit_test(test_html_in_chromium),
    };
    return tu_run_tests("analyze", tests, NULL, NULL);
}
