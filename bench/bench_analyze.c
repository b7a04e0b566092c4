/* bench_analyze: speed of the analysis.
 *   1. a 4096 x 4096 Gaussian matrix: full spectrum and every metric
 *      (target: under 10 s on a 2-core machine), Gram vs exact SVD on 1024;
 *   2. every matrix of mix4m (target: under 2 s), OpenMP over matrices vs
 *      one thread;
 *   3. the power-law xmin search against a brute-force search.
 * Each part checks its result first, then times it.
 * usage: bench_analyze [--size N] [--threads T] [--skip-big] */
#include "wmat.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static wmat_tensor gaussian(int rows, int cols, uint64_t seed)
{
    wmat_tensor t;
    memset(&t, 0, sizeof t);
    snprintf(t.name, sizeof t.name, "gaussian_%dx%d", rows, cols);
    t.dtype = WMAT_F32;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    float *x = malloc((size_t)rows * cols * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < (size_t)rows * cols; i++) x[i] = wmat_rng_normal(&r);
    t.data = x;
    t.nbytes = (size_t)rows * cols * sizeof(float);
    return t;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double load1(void)
{
    double l[1] = {-1};
    return getloadavg(l, 1) == 1 ? l[0] : -1;
}

static int fail(const char *what)
{
    fprintf(stderr, "bench_analyze: %s: %s\n", what, wmat_last_error());
    return 1;
}

static double analyze_once(const wmat_tensor *t, int exact, int threads, wmat_analysis **keep)
{
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = threads;
    wmat_analyze_params p = wmat_analyze_default_params();
    p.exact = exact;
    p.ctx = &ctx;
    wmat_analysis *a = NULL;
    double t0 = now_s();
    if (wmat_analyze_tensors(&a, &t, NULL, 1, &p)) return -1;
    double dt = now_s() - t0;
    if (keep) *keep = a;
    else wmat_analysis_free(a);
    return dt;
}

int main(int argc, char **argv)
{
    int size = 4096, threads = 0, skip_big = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--skip-big")) skip_big = 1;
    }
    wmat_linalg_init(threads);
    printf("bench_analyze: %s\n", wmat_linalg_status());

    /* ---- validation: Gram and exact singular values agree on 512 x 384 */
    {
        wmat_tensor t = gaussian(512, 384, 1);
        double *s0 = malloc(384 * sizeof(double)), *s1 = malloc(384 * sizeof(double));
        if (wmat_singular_values(t.data, 512, 384, 0, s0) || wmat_singular_values(t.data, 512, 384, 1, s1))
            return fail("singular values");
        double worst = 0;
        for (int i = 0; i < 384; i++) worst = fmax(worst, fabs(s0[i] - s1[i]) / s1[i]);
        printf("check: Gram vs dgesdd on 512x384: worst relative difference %.2e\n", worst);
        if (worst > 1e-6) return fail("Gram and exact spectra disagree");
        free(s0);
        free(s1);
        free(t.data);
    }

    /* ---- 1. one large matrix */
    if (!skip_big) {
        wmat_tensor t = gaussian(size, size, 2);
        wmat_analysis *a = NULL;
        double c0 = cpu_s(), l0 = load1();
        double dt = analyze_once(&t, 0, threads, &a);
        double cpu = cpu_s() - c0;
        if (dt < 0) return fail("analyze");
        const wmat_matrix_stats *s = wmat_analysis_matrix(a, 0);
        /* Gaussian N(0,1): s_max ~ 2 sqrt(n), MP soft rank ~ 1, no spikes */
        double want = 2 * sqrt((double)size);
        printf("check: %dx%d Gaussian: s_max %.2f (MP edge %.2f), mp_softrank %.3f, spikes %d, alpha %.2f\n", size, size,
               s->spectral_norm_sv, want, s->mp_softrank, s->num_spikes, s->alpha);
        if (fabs(s->spectral_norm_sv / want - 1) > 0.03) return fail("largest singular value off the MP edge");
        printf("%dx%d full spectrum + metrics (Gram, dsyrk + dsyevd): %.2f s wall, %.2f s CPU, load average %.1f before "
               "[target < 10 s]\n",
               size, size, dt, cpu, l0);
        wmat_analysis_free(a);
        free(t.data);
    }
    {
        int n = 1024;
        wmat_tensor t = gaussian(n, n, 3);
        double g = analyze_once(&t, 0, threads, NULL), e = analyze_once(&t, 1, threads, NULL);
        if (g < 0 || e < 0) return fail("analyze 1024");
        printf("%dx%d: Gram %.3f s, exact dgesdd %.3f s (exact / Gram %.2fx)\n", n, n, g, e, e / g);
        free(t.data);
    }

    /* ---- 2. every matrix of mix4m */
    const char *dir = getenv("WMAT_DATA") ? getenv("WMAT_DATA") : WMAT_DATA_DIR;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/mix4m.bin", dir);
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    if (wmat_model_load(&m, path, &lp) == WMAT_OK) {
        double best[3] = {1e9, 1e9, 1e9};
        int nmat = 0, nh = 0;
        for (int rep = 0; rep < 3; rep++)
            for (int mode = 0; mode < 3; mode++) {
                wmat_context ctx = wmat_context_default();
                ctx.n_threads = mode == 1 ? 1 : threads;
                wmat_analyze_params p = wmat_analyze_default_params();
                p.exact = mode == 2;
                p.ctx = &ctx;
                wmat_analysis *a = NULL;
                double t0 = now_s();
                if (wmat_analyze_model(&a, m, NULL, &p)) return fail("analyze mix4m");
                double dt = now_s() - t0;
                if (dt < best[mode]) best[mode] = dt;
                nmat = wmat_analysis_n_matrices(a);
                nh = wmat_analysis_n_heads(a);
                wmat_analysis_free(a);
            }
        printf("mix4m: %d matrices + %d heads (composition of every pair), best of 3:\n", nmat, nh);
        printf("  Gram, OpenMP over matrices (%d threads): %.3f s  [target < 2 s]\n", wmat_context_threads(NULL), best[0]);
        printf("  Gram, 1 thread:                          %.3f s  (speed-up %.2fx)\n", best[1], best[1] / best[0]);
        printf("  exact dgesdd, OpenMP over matrices:      %.3f s  (exact / Gram %.2fx)\n", best[2], best[2] / best[0]);
        wmat_model_free(m);
    } else {
        printf("mix4m: skipped (%s)\n", wmat_last_error());
    }

    /* ---- 3. the xmin search */
    {
        int n = 4096;
        double *x = malloc((size_t)n * sizeof(double));
        wmat_rng r;
        wmat_rng_seed(&r, 9);
        for (int i = 0; i < n; i++) x[i] = exp(1.5 * wmat_rng_normal(&r));
        wmat_powerlaw pl;
        double t0 = now_s();
        if (wmat_powerlaw_fit(x, n, 10, &pl)) return fail("powerlaw");
        double dt = now_s() - t0;
        /* brute force: every candidate's exact KS distance */
        double *y = malloc((size_t)n * sizeof(double));
        memcpy(y, x, (size_t)n * sizeof(double));
        for (int i = 1; i < n; i++)
            for (int j = i; j > 0 && y[j] < y[j - 1]; j--) {
                double t = y[j];
                y[j] = y[j - 1];
                y[j - 1] = t;
            }
        t0 = now_s();
        double best = INFINITY;
        for (int j = 0; j + 10 <= n; j++) {
            int nt = n - j;
            double S = 0;
            for (int i = j; i < n; i++) S += log(y[i] / y[j]);
            double al = 1 + nt / S, D = 0;
            for (int k = 0; k < nt; k++) {
                double F = 1 - pow(y[j + k] / y[j], 1 - al);
                D = fmax(D, fmax(fabs((k + 1.0) / nt - F), fabs((double)k / nt - F)));
            }
            if (D < best) best = D;
        }
        double bt = now_s() - t0;
        printf("check: xmin search D %.6f, brute force D %.6f\n", pl.D, best);
        if (fabs(pl.D - best) > 1e-12) return fail("xmin search is not exact");
        printf("xmin search over %d eigenvalues: %.4f s (%.0f CDF evaluations per value, %d exact passes); brute force "
               "%.3f s (%.0fx slower)\n",
               n, dt, (double)pl.n_evals / n, pl.n_ks_exact, bt, bt / dt);
        free(x);
        free(y);
    }
    return 0;
}
