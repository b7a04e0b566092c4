/* OPCM (src/merge/opcm.c): the streamed two-pass merge against a literal
 * step-by-step implementation of the paper's loop that keeps the whole
 * merged model and rescales it after every task (SPECS J5), in the given
 * order and shuffled; one model gives that fine-tune back; the projection
 * zeroes the diagonal and the top-left k* block of U^T tau V and drops
 * what lies outside Delta's thin singular subspaces. */
#include "test_util.h"
#include "linalg/dense.h"
#include "merge/merge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void make_model(const char *path, uint64_t seed, const wmat_model *like)
{
    wmat_config cfg = tu_config(32, 64, 2, 4, 2, 64, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *d = t->data;
        const float *base = like ? wmat_model_find((wmat_model *)like, t->name)->data : NULL;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++)
            d[j] = (base ? base[j] : 0.0f) + (base ? 0.05f : 0.5f) * wmat_rng_normal(&r);
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_LLAMA2C;
    sp.dtype = WMAT_F32;
    TU_OK(wmat_model_save(m, path, &sp));
    wmat_model_free(m);
}

static int is_linear(const wmat_tensor *t)
{
    return t->ndim == 2 && strcmp(t->name, "model.embed_tokens.weight") != 0;
}

/* The paper's loop, literally: theta (the whole merged model, double)
 * starts at theta_1; for each next task, every linear weight becomes
 * W0 + lambda_prev Delta + U P V^T (P = U^T tau V with its diagonal and
 * top-left k* block zeroed, from the SVD of the current Delta), every
 * other tensor W0 + lambda_prev Delta + tau; then the whole model's delta
 * is rescaled to the mean task-vector norm and lambda_prev = nu / nbar. */
static double **literal_opcm(wmat_model *base, wmat_model **ft, int T, double alpha)
{
    const int nt = wmat_model_n_tensors(base);
    double **theta = calloc((size_t)nt, sizeof *theta);
    double norms[16], lambda_prev = 1;
    for (int t = 0; t < T; t++) {
        double s2 = 0;
        for (int i = 0; i < nt; i++) {
            const wmat_tensor *b = wmat_model_tensor(base, i);
            const float *x = wmat_model_find(ft[t], b->name)->data, *x0 = b->data;
            for (int64_t j = 0; j < wmat_tensor_nelem(b); j++) s2 += ((double)x[j] - x0[j]) * ((double)x[j] - x0[j]);
        }
        norms[t] = sqrt(s2);
    }
    for (int i = 0; i < nt; i++) {
        const wmat_tensor *b = wmat_model_tensor(base, i);
        const int64_t n = wmat_tensor_nelem(b);
        const float *x = wmat_model_find(ft[0], b->name)->data;
        theta[i] = malloc((size_t)n * sizeof(double));
        for (int64_t j = 0; j < n; j++) theta[i][j] = x[j];
    }
    for (int t = 1; t < T; t++) {
        double nbar = 0;
        for (int q = 0; q <= t; q++) nbar += norms[q];
        nbar /= t + 1;
        for (int i = 0; i < nt; i++) {
            const wmat_tensor *b = wmat_model_tensor(base, i);
            const int64_t n = wmat_tensor_nelem(b);
            const float *w0 = b->data, *xt = wmat_model_find(ft[t], b->name)->data;
            double *delta = malloc((size_t)n * sizeof(double)), *tau = malloc((size_t)n * sizeof(double));
            for (int64_t j = 0; j < n; j++) {
                delta[j] = theta[i][j] - w0[j];
                tau[j] = (double)xt[j] - w0[j];
            }
            if (is_linear(b)) {
                const int m = (int)b->shape[0], c = (int)b->shape[1], k = m < c ? m : c;
                double *A = malloc((size_t)n * sizeof(double)), *S = malloc((size_t)k * sizeof(double)),
                       *U = malloc((size_t)m * k * sizeof(double)), *VT = malloc((size_t)k * c * sizeof(double)),
                       *P = calloc((size_t)k * k, sizeof(double));
                memcpy(A, delta, (size_t)n * sizeof(double));
                TU_OK(wmat__dgesdd(m, c, A, c, S, U, k, VT, c));
                double tot = 0, cum = 0;
                int ks = 0;
                for (int q = 0; q < k; q++) tot += S[q];
                for (int q = 0; q < k; q++) {
                    cum += S[q];
                    if (cum / tot > alpha) {
                        ks = q;
                        break;
                    }
                }
                for (int p = 0; p < k; p++)
                    for (int q = 0; q < k; q++) {
                        if (p == q || (p < ks && q < ks)) continue;
                        double s = 0;
                        for (int r = 0; r < m; r++)
                            for (int cc = 0; cc < c; cc++) s += U[(size_t)r * k + p] * tau[(size_t)r * c + cc] * VT[(size_t)q * c + cc];
                        P[(size_t)p * k + q] = s;
                    }
                for (int r = 0; r < m; r++)
                    for (int cc = 0; cc < c; cc++) {
                        double s = 0;
                        for (int p = 0; p < k; p++)
                            for (int q = 0; q < k; q++) s += U[(size_t)r * k + p] * P[(size_t)p * k + q] * VT[(size_t)q * c + cc];
                        theta[i][(size_t)r * c + cc] = w0[(size_t)r * c + cc] + lambda_prev * delta[(size_t)r * c + cc] + s;
                    }
                free(A);
                free(S);
                free(U);
                free(VT);
                free(P);
            } else {
                for (int64_t j = 0; j < n; j++) theta[i][j] = w0[j] + lambda_prev * delta[j] + tau[j];
            }
            free(delta);
            free(tau);
        }
        double nu2 = 0;
        for (int i = 0; i < nt; i++) {
            const wmat_tensor *b = wmat_model_tensor(base, i);
            const float *w0 = b->data;
            for (int64_t j = 0; j < wmat_tensor_nelem(b); j++) nu2 += (theta[i][j] - w0[j]) * (theta[i][j] - w0[j]);
        }
        const double nu = sqrt(nu2);
        for (int i = 0; i < nt; i++) {
            const wmat_tensor *b = wmat_model_tensor(base, i);
            const float *w0 = b->data;
            for (int64_t j = 0; j < wmat_tensor_nelem(b); j++) theta[i][j] = w0[j] + (theta[i][j] - w0[j]) * nbar / nu;
        }
        lambda_prev = nu / nbar;
    }
    return theta;
}

static void run_opcm(const char *base, wmat_merge_model *mm, int T, double alpha, int shuffle, uint64_t seed,
                     const char *out, wmat_merge_report *rep)
{
    wmat_merge_spec s;
    memset(&s, 0, sizeof s);
    s.method = "opcm";
    s.base = base;
    s.n_models = T;
    s.models = mm;
    s.normalize = -1;
    s.alpha = (wmat_mvalue){1, {alpha}};
    s.shuffle = shuffle;
    s.seed = seed;
    s.out_dtype = WMAT_F32;
    TU_OK(wmat__merge_run(&s, out, rep));
}

/* The streamed merge equals the literal loop: four tasks, two alphas, the
 * given order and a shuffled one, GGUF (streamed) and llama2.c output. */
static void test_opcm_matches_literal(void **state)
{
    (void)state;
    enum { T = 4 };
    char paths[T + 1][512];
    snprintf(paths[0], sizeof paths[0], "%s", tu_tmp("ob.bin"));
    make_model(paths[0], 1, NULL);
    wmat_model *mb = tu_load_f32(paths[0]);
    wmat_model *ft[T];
    wmat_merge_model mm[T];
    memset(mm, 0, sizeof mm);
    for (int t = 0; t < T; t++) {
        char name[32];
        snprintf(name, sizeof name, "of%d.bin", t);
        snprintf(paths[t + 1], sizeof paths[t + 1], "%s", tu_tmp(name));
        make_model(paths[t + 1], 10 + (uint64_t)t, mb);
        ft[t] = tu_load_f32(paths[t + 1]);
        mm[t].path = paths[t + 1];
    }
    static const struct {
        double alpha;
        int shuffle;
        const char *out;
    } cases[] = {{0.5, 0, "o1.gguf"}, {0.2, 0, "o2.bin"}, {0.5, 1, "o3.gguf"}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char out[512];
        snprintf(out, sizeof out, "%s", tu_tmp(cases[c].out));
        wmat_merge_report rep;
        run_opcm(paths[0], mm, T, cases[c].alpha, cases[c].shuffle, 7, out, &rep);
        wmat_model *ordered[T];
        int moved = 0;
        for (int t = 0; t < T; t++) {
            ordered[t] = ft[rep.order[t]];
            moved |= rep.order[t] != t;
        }
        if (cases[c].shuffle) assert_true(moved); /* seed 7 moves something (checked once, fixed) */
        double **want = literal_opcm(mb, ordered, T, cases[c].alpha);
        wmat_model *mo = tu_load_f32(out);
        double worst = 0;
        for (int i = 0; i < wmat_model_n_tensors(mb); i++) {
            const wmat_tensor *b = wmat_model_tensor(mb, i);
            const wmat_tensor *o = wmat_model_find(mo, b->name);
            assert_non_null(o);
            for (int64_t j = 0; j < wmat_tensor_nelem(b); j++) {
                const double d = tu_abs_diff(((const float *)o->data)[j], want[i][j]);
                if (!(d <= worst)) worst = d; /* a NaN sticks */
            }
            free(want[i]);
        }
        free(want);
        if (!(worst <= 1e-5)) fail_msg("case %zu: max |streamed - literal| = %g", c, worst);
        wmat_model_free(mo);
        wmat__merge_report_free(&rep);
    }
    for (int t = 0; t < T; t++) wmat_model_free(ft[t]);
    wmat_model_free(mb);
}

static int count_calls(void *user, const char *what, uint64_t done, uint64_t total)
{
    (void)what;
    (void)done;
    (void)total;
    int *calls = user;
    return ++*calls >= calls[1]; /* stop at the calls[1]-th call */
}

/* Progress goes through both passes (2 x the tensors); stopping in the
 * first pass cancels with no output. */
static void test_opcm_progress_and_cancel(void **state)
{
    (void)state;
    char base[512], ft[512], out[512];
    snprintf(base, sizeof base, "%s", tu_tmp("pb.bin"));
    snprintf(ft, sizeof ft, "%s", tu_tmp("pf.bin"));
    snprintf(out, sizeof out, "%s", tu_tmp("po.gguf"));
    make_model(base, 5, NULL);
    wmat_model *mb = tu_load_f32(base);
    make_model(ft, 6, mb);
    const int nt = wmat_model_n_tensors(mb);
    wmat_model_free(mb);
    wmat_merge_model mm[2] = {{ft, {0, {0}}, {0, {0}}}, {ft, {0, {0}}, {0, {0}}}};
    int calls[2] = {0, 1 << 30};
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = 1;
    ctx.progress = count_calls;
    ctx.progress_user = calls;
    wmat_merge_spec s;
    memset(&s, 0, sizeof s);
    s.method = "opcm";
    s.base = base;
    s.n_models = 2;
    s.models = mm;
    s.normalize = -1;
    s.out_dtype = WMAT_F32;
    s.ctx = &ctx;
    wmat_merge_report rep;
    TU_OK(wmat__merge_run(&s, out, &rep));
    wmat__merge_report_free(&rep);
    assert_int_equal(calls[0], 2 * nt);
    remove(out);
    calls[0] = 0;
    calls[1] = 3;
    assert_int_equal(wmat__merge_run(&s, out, &rep), WMAT_ERR_CANCELLED);
    assert_non_null(strstr(wmat_last_error(), "first pass"));
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
}

/* One model: OPCM gives that fine-tune back (E = tau_1, scale 1). */
static void test_opcm_one_model(void **state)
{
    (void)state;
    char base[512], ft[512], out[512];
    snprintf(base, sizeof base, "%s", tu_tmp("1b.bin"));
    snprintf(ft, sizeof ft, "%s", tu_tmp("1f.bin"));
    snprintf(out, sizeof out, "%s", tu_tmp("1o.gguf"));
    make_model(base, 3, NULL);
    wmat_model *mb = tu_load_f32(base);
    make_model(ft, 4, mb);
    wmat_merge_model mm[1] = {{ft, {0, {0}}, {0, {0}}}};
    wmat_merge_report rep;
    run_opcm(base, mm, 1, 0.5, 0, 0, out, &rep);
    wmat__merge_report_free(&rep);
    wmat_model *a = tu_load_f32(ft), *o = tu_load_f32(out);
    for (int i = 0; i < wmat_model_n_tensors(a); i++) {
        const wmat_tensor *t = wmat_model_tensor(a, i);
        TU_ASSERT_CLOSE(wmat_model_find(o, t->name)->data, t->data, (size_t)wmat_tensor_nelem(t), 1e-6, 0);
    }
    wmat_model_free(a);
    wmat_model_free(o);
    wmat_model_free(mb);
}

/* One projection step on tall and wide matrices: in Delta's singular bases
 * the added part U^T tau' V has a zero diagonal and a zero top-left k*
 * block and equals U^T tau V elsewhere; k* is the first index where the
 * cumulative singular-value share exceeds alpha; tau' lies inside span(U)
 * and span(V) (the rest of tau is dropped). A zero Delta adds tau whole. */
static void test_opcm_projection(void **state)
{
    (void)state;
    const int shapes[2][2] = {{12, 7}, {6, 10}};
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (int sh = 0; sh < 2; sh++) {
        const int m = shapes[sh][0], n = shapes[sh][1], k = m < n ? m : n;
        const size_t mn = (size_t)m * n;
        double *E = malloc(mn * 8), *E0 = malloc(mn * 8), *tau = malloc(mn * 8), *tau0 = malloc(mn * 8), *A = malloc(mn * 8),
               *S = malloc((size_t)k * 8), *U = malloc((size_t)m * k * 8), *VT = malloc((size_t)k * n * 8);
        for (size_t i = 0; i < mn; i++) {
            E0[i] = E[i] = wmat_rng_normal(&r);
            tau0[i] = tau[i] = wmat_rng_normal(&r);
        }
        memcpy(A, E, mn * 8);
        TU_OK(wmat__dgesdd(m, n, A, n, S, U, k, VT, n));
        const double alpha = 0.6;
        int ks = -2;
        TU_OK(wmat__opcm_step(m, n, E, tau, alpha, &ks));
        /* k* by its definition */
        double tot = 0, cum = 0;
        for (int q = 0; q < k; q++) tot += S[q];
        int want_ks = 0;
        for (int q = 0; q < k; q++) {
            cum += S[q];
            if (cum / tot > alpha) {
                want_ks = q;
                break;
            }
        }
        assert_int_equal(ks, want_ks);
        assert_true(ks >= 2); /* the block has entries off the diagonal */
        /* added = E - E0; compare U^T added V with U^T tau V */
        double worst_zero = 0, worst_kept = 0, scale = 0;
        for (int p = 0; p < k; p++)
            for (int q = 0; q < k; q++) {
                double a = 0, t = 0;
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++) {
                        const double w = U[(size_t)i * k + p] * VT[(size_t)q * n + j];
                        a += w * (E[(size_t)i * n + j] - E0[(size_t)i * n + j]);
                        t += w * tau0[(size_t)i * n + j];
                    }
                if (p == q || (p < ks && q < ks)) worst_zero = fmax(worst_zero, fabs(a));
                else worst_kept = fmax(worst_kept, fabs(a - t));
                scale = fmax(scale, fabs(t));
            }
        TU_ASSERT_BELOW(worst_zero, 1e-12 * (1 + scale));
        TU_ASSERT_BELOW(worst_kept, 1e-12 * (1 + scale));
        /* nothing outside the singular subspaces: (I - U U^T) added = 0 */
        double out_norm = 0;
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) {
                double proj = 0;
                for (int p = 0; p < k; p++)
                    for (int i2 = 0; i2 < m; i2++)
                        proj += U[(size_t)i * k + p] * U[(size_t)i2 * k + p] * (E[(size_t)i2 * n + j] - E0[(size_t)i2 * n + j]);
                const double d = E[(size_t)i * n + j] - E0[(size_t)i * n + j] - proj;
                out_norm += d * d;
            }
        TU_ASSERT_BELOW(sqrt(out_norm), 1e-10);
        /* a zero Delta: tau is added whole */
        memset(E, 0, mn * 8);
        memcpy(tau, tau0, mn * 8);
        TU_OK(wmat__opcm_step(m, n, E, tau, alpha, &ks));
        assert_int_equal(ks, -1);
        TU_ASSERT_CLOSE_D(E, tau0, mn, 0, 0);
        free(E);
        free(E0);
        free(tau);
        free(tau0);
        free(A);
        free(S);
        free(U);
        free(VT);
    }
}

/* The CLI and YAML take alpha, shuffle and seed; shuffle is refused for other methods. */
static void test_opcm_cli_yaml(void **state)
{
    (void)state;
    char base[512], a[512], b[512];
    snprintf(base, sizeof base, "%s", tu_tmp("cb.bin"));
    snprintf(a, sizeof a, "%s", tu_tmp("ca.bin"));
    snprintf(b, sizeof b, "%s", tu_tmp("cc.bin"));
    make_model(base, 21, NULL);
    wmat_model *mb = tu_load_f32(base);
    make_model(a, 22, mb);
    make_model(b, 23, mb);
    wmat_model_free(mb);
    char yaml[2048], cmd[4096];
    snprintf(yaml, sizeof yaml,
             "merge_method: opcm\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\nparameters: {alpha: 0.3, shuffle: true, seed: 4}\n",
             base, a, b);
    const char *cfg = tu_tmp("o.yaml"), *o1 = tu_tmp("oc1.gguf"), *o2 = tu_tmp("oc2.gguf");
    assert_int_equal(tu_write_file(cfg, yaml, strlen(yaml)), 0);
    int code = -1;
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --threads 1 2>&1", tu_cli(), cfg, o1);
    char *out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    assert_non_null(strstr(out, "order:"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge --method opcm --base %s %s %s --alpha 0.3 --shuffle --seed 4 %s --quiet --threads 1 2>&1",
             tu_cli(), base, a, b, o2);
    out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    wmat_model *m1 = tu_load_f32(o1), *m2 = tu_load_f32(o2);
    for (int i = 0; i < wmat_model_n_tensors(m1); i++) {
        wmat_tensor *t1 = wmat_model_tensor(m1, i), *t2 = wmat_model_find(m2, t1->name);
        TU_ASSERT_CLOSE(t1->data, t2->data, (size_t)wmat_tensor_nelem(t1), 0, 0);
    }
    wmat_model_free(m1);
    wmat_model_free(m2);
    const char *o3 = tu_tmp("oc3.gguf");
    snprintf(cmd, sizeof cmd, "%s merge --method ties --base %s %s %s --shuffle %s --quiet 2>&1", tu_cli(), base, a, b, o3);
    out = tu_run(cmd, &code);
    if (code == 0 || !strstr(out, "does not take shuffle")) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    struct stat st;
    assert_int_not_equal(stat(o3, &st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opcm_projection),
        cmocka_unit_test(test_opcm_one_model),
        cmocka_unit_test(test_opcm_progress_and_cancel),
        cmocka_unit_test(test_opcm_matches_literal),
        cmocka_unit_test(test_opcm_cli_yaml),
    };
    return tu_run_tests("opcm", tests, NULL, NULL);
}
