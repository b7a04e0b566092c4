/* Spectra of weight matrices and the metrics computed from them: norms,
 * stable and effective rank, energy ranks, the power-law fit of the
 * eigenvalues with its xmin search, the Marchenko-Pastur bulk. */
#include "analyze.h"

#include "../linalg/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- spectrum */

int wmat__an_spectrum(const double *W, int rows, int cols, int exact, double *s, double *U)
{
    int r = rows < cols ? rows : cols;
    if (r <= 0) return wmat_set_error(WMAT_ERR_INVALID, "spectrum of an empty matrix (%d x %d)", rows, cols);
    int rc = WMAT_OK;
    double *A = NULL, *G = NULL, *w = NULL, *VT = NULL;
    if (exact) {
        /* dgesdd destroys its input: work on a copy. */
        A = wmat__malloc((size_t)rows * cols * sizeof(double));
        if (U) VT = wmat__malloc((size_t)r * cols * sizeof(double));
        if (!A || (U && !VT)) goto nomem;
        memcpy(A, W, (size_t)rows * cols * sizeof(double));
        rc = wmat__dgesdd(rows, cols, A, cols, s, U, r, VT, cols);
        goto done;
    }
    /* Gram matrix of the smaller side, in double: G = W W^T (rows <= cols)
     * or W^T W; its eigenvalues are s^2. */
    int g = r;
    G = wmat__malloc((size_t)g * g * sizeof(double));
    w = wmat__malloc((size_t)g * sizeof(double));
    if (!G || !w) goto nomem;
    if (rows <= cols)
        rc = wmat__dsyrk_upper(0, rows, cols, 1.0, W, cols, 0.0, G, g);
    else
        rc = wmat__dsyrk_upper(1, cols, rows, 1.0, W, cols, 0.0, G, g);
    if (!rc) rc = wmat__dsyevd_upper(U != NULL, g, G, g, w);
    if (rc) {
        rc = wmat_set_error(rc, "Gram matrix of a %d x %d matrix: %s", rows, cols, wmat_last_error());
        goto done;
    }
    for (int j = 0; j < r; j++) s[j] = sqrt(w[r - 1 - j] > 0 ? w[r - 1 - j] : 0.0);
    if (U) {
        if (rows <= cols) {
            /* eigenvectors of W W^T are the left singular vectors */
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < r; j++) U[(size_t)i * r + j] = G[(size_t)i * g + (r - 1 - j)];
        } else {
            /* V from W^T W; U = W V, normalized column by column */
            double *V = wmat__malloc((size_t)cols * r * sizeof(double));
            if (!V) goto nomem;
            for (int i = 0; i < cols; i++)
                for (int j = 0; j < r; j++) V[(size_t)i * r + j] = G[(size_t)i * g + (r - 1 - j)];
            rc = wmat__dgemm(0, 0, rows, r, cols, 1.0, W, cols, V, r, 0.0, U, r);
            wmat__free(V);
            if (rc) goto done;
            double tol = s[0] * 1e-7;
            for (int j = 0; j < r; j++) {
                double nn = 0;
                for (int i = 0; i < rows; i++) nn += U[(size_t)i * r + j] * U[(size_t)i * r + j];
                nn = sqrt(nn);
                double f = (s[j] > tol && nn > 0) ? 1.0 / nn : 0.0;
                for (int i = 0; i < rows; i++) U[(size_t)i * r + j] *= f;
            }
        }
    }
    goto done;
nomem:
    rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory for the spectrum of a %d x %d matrix", rows, cols);
done:
    wmat__free(A);
    wmat__free(G);
    wmat__free(w);
    wmat__free(VT);
    return rc;
}

int wmat_singular_values(const float *W, int64_t rows, int64_t cols, int exact, double *s)
{
    if (!W || !s || rows <= 0 || cols <= 0 || rows > INT32_MAX / 2 || cols > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_INVALID, "wmat_singular_values: bad arguments (%lld x %lld)",
                              (long long)rows, (long long)cols);
    uint64_t ne;
    if (!wmat__mul_ok((uint64_t)rows, (uint64_t)cols, &ne) || ne > SIZE_MAX / sizeof(double))
        return wmat_set_error(WMAT_ERR_INVALID, "matrix too large");
    size_t bad;
    if (!wmat__all_finite(W, ne, &bad))
        return wmat_set_error(WMAT_ERR_NUMERIC, "matrix has a non-finite value at row %zu, column %zu",
                              bad / (size_t)cols, bad % (size_t)cols);
    double *A = wmat__malloc(ne * sizeof(double));
    if (!A) return wmat_set_error(WMAT_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < ne; i++) A[i] = W[i];
    int rc = wmat__an_spectrum(A, (int)rows, (int)cols, exact, s, NULL);
    wmat__free(A);
    return rc;
}

/* ---------------------------------------------------------------- power law */

/* KS distance between the empirical CDF of a sorted tail and the power law
 * F(x) = 1 - (x/xmin)^(1-alpha) at tail index k (lx: ln of the tail
 * values): the empirical CDF steps from k/nt to (k+1)/nt at x[k]. */
static inline double pl_cdf(const double *lx, int k, double lxmin, double a1)
{
    return 1.0 - exp(a1 * (lx[k] - lxmin));
}

typedef struct {
    double lb, ub;
    int j;
} pl_cand;

static int cand_cmp(const void *a, const void *b)
{
    const pl_cand *x = a, *y = b;
    if (x->lb != y->lb) return x->lb < y->lb ? -1 : 1;
    return x->j - y->j;
}

static int dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Bounds on the KS distance D of the tail lx[0..nt) from P probe points
 * k_0 = 0 < ... < k_{P-1} = nt - 1. Lower: the largest deviation at the
 * probes (a sup over a subset). Upper: between two probes the empirical
 * CDF stays within [k_p / nt, (k_{p+1} + 1) / nt] and F within [F(k_p),
 * F(k_{p+1})] (both increase), which bounds every deviation in between.
 * With P >= nt every point is a probe and lb == ub == D. */
static void ks_bounds(const double *lx, int nt, double lxmin, double a1, int P, double *lb, double *ub)
{
    if (P > nt) P = nt;
    double lo = 0, hi = 0, Fprev = 0;
    int kprev = 0;
    for (int p = 0; p < P; p++) {
        int k = P > 1 ? (int)((int64_t)p * (nt - 1) / (P - 1)) : 0;
        double F = pl_cdf(lx, k, lxmin, a1);
        double d1 = fabs((double)(k + 1) / nt - F), d0 = fabs((double)k / nt - F);
        double d = d1 > d0 ? d1 : d0;
        if (d > lo) lo = d;
        if (p > 0 && k > kprev + 1) {
            double u1 = (double)(k + 1) / nt - Fprev, u2 = F - (double)kprev / nt;
            double u = u1 > u2 ? u1 : u2;
            if (u > hi) hi = u;
        }
        if (d > hi) hi = d;
        Fprev = F;
        kprev = k;
    }
    *lb = lo;
    *ub = hi;
}

/* xmin search. alpha_j of every candidate costs O(1) with suffix sums of
 * ln x; the exact KS distance of one candidate is O(tail), so a plain
 * search is O(n^2). Instead, candidates are bounded with P probes (lower
 * and upper bounds, ks_bounds); every candidate whose lower bound exceeds
 * the smallest upper bound is dropped; the survivors are bounded again with
 * 8 times the probes, until each survivor's bound is its exact D. Each
 * round costs (survivors x P): about 32 n for the first and a small number
 * of candidates near the optimum for the rest (n_ks_exact counts the
 * candidates that reached the exact round). The result is the exact
 * minimum of D over all candidates (ties: the smaller xmin). */
int wmat_powerlaw_fit(const double *xin, int n, int min_tail, wmat_powerlaw *out)
{
    memset(out, 0, sizeof *out);
    out->alpha = out->xmin = out->xmax = out->D = NAN;
    if (min_tail < 2) min_tail = 2;
    int np = 0;
    for (int i = 0; i < n; i++)
        if (xin[i] > 0 && isfinite(xin[i])) np++;
    out->n = np;
    if (np < min_tail)
        return wmat_set_error(WMAT_ERR_INVALID, "power-law fit needs at least %d positive values, got %d", min_tail, np);
    double *x = wmat__malloc((size_t)np * sizeof(double));
    double *lx = wmat__malloc((size_t)np * sizeof(double));
    double *suf = wmat__malloc(((size_t)np + 1) * sizeof(double));
    pl_cand *c = wmat__malloc((size_t)np * sizeof(pl_cand));
    int rc = WMAT_OK;
    if (!x || !lx || !suf || !c) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory in the power-law fit");
        goto done;
    }
    np = 0;
    for (int i = 0; i < n; i++)
        if (xin[i] > 0 && isfinite(xin[i])) x[np++] = xin[i];
    qsort(x, (size_t)np, sizeof(double), dbl_cmp);
    for (int i = 0; i < np; i++) lx[i] = log(x[i]);
    suf[np] = 0;
    for (int i = np - 1; i >= 0; i--) suf[i] = suf[i + 1] + lx[i];
    int nc = 0;
    for (int j = 0; j + min_tail <= np; j++) {
        if (j > 0 && x[j] == x[j - 1]) continue; /* distinct values only */
        int nt = np - j;
        if (!(suf[j] - nt * lx[j] > 0)) continue;
        c[nc].j = j;
        c[nc].lb = 0;
        c[nc].ub = INFINITY;
        nc++;
    }
    out->n_candidates = nc;
    if (nc == 0) {
        rc = wmat_set_error(WMAT_ERR_NUMERIC, "power-law fit: all %d values are equal", np);
        goto done;
    }
    int alive = nc;
    double best_ub = INFINITY;
    for (int P = 32;; P *= 4) {
        /* candidates by increasing lower bound (bounds of coarser rounds
         * stay valid), so that the best upper bound drops early and prunes */
        if (P > 32) qsort(c, (size_t)alive, sizeof(pl_cand), cand_cmp);
        int all_exact = 1;
        for (int q = 0; q < alive; q++) {
            if (c[q].lb > best_ub) continue;
            int j = c[q].j, nt = np - j;
            double alpha = 1.0 + nt / (suf[j] - nt * lx[j]), lb, ub;
            ks_bounds(lx + j, nt, lx[j], 1.0 - alpha, P, &lb, &ub);
            out->n_evals += P < nt ? P : nt;
            if (P < nt) all_exact = 0;
            else if (P / 4 < nt) out->n_ks_exact++;
            if (lb > c[q].lb) c[q].lb = lb;
            if (ub < c[q].ub) c[q].ub = ub;
            if (c[q].ub < best_ub) best_ub = c[q].ub;
        }
        int keep = 0;
        for (int q = 0; q < alive; q++)
            if (c[q].lb <= best_ub) c[keep++] = c[q];
        alive = keep;
        if (all_exact || alive == 1) break;
    }
    /* survivors: exact D (lb == ub) or a single candidate; pick the least D */
    int bq = 0;
    for (int q = 1; q < alive; q++)
        if (c[q].lb < c[bq].lb || (c[q].lb == c[bq].lb && c[q].j < c[bq].j)) bq = q;
    {
        int bj = c[bq].j, nt = np - bj;
        double alpha = 1.0 + nt / (suf[bj] - nt * lx[bj]), lb, ub;
        ks_bounds(lx + bj, nt, lx[bj], 1.0 - alpha, nt, &lb, &ub);
        out->xmin = x[bj];
        out->xmax = x[np - 1];
        out->alpha = alpha;
        out->D = lb;
        out->n_tail = nt;
    }
done:
    wmat__free(x);
    wmat__free(lx);
    wmat__free(suf);
    wmat__free(c);
    return rc;
}

/* ---------------------------------------------------------------- metrics */

double wmat__an_entropy_rank(const double *s, int r)
{
    double sum = 0;
    for (int i = 0; i < r; i++) sum += s[i];
    if (!(sum > 0)) return 0;
    double h = 0;
    for (int i = 0; i < r; i++) {
        double p = s[i] / sum;
        if (p > 0) h -= p * log(p);
    }
    return exp(h);
}

double wmat__an_stable_rank(const double *s, int r)
{
    if (r <= 0 || !(s[0] > 0)) return 0;
    double e = 0;
    for (int i = 0; i < r; i++) e += s[i] * s[i];
    return e / (s[0] * s[0]);
}

void wmat__an_mp(const double *lam, int r, int64_t N, int64_t M, double *sigma, double *lambda_plus, int *spikes)
{
    /* lam: eigenvalues of W^T W (unnormalized), N >= M. For a random matrix
     * with entries of variance sigma^2, lam / N follows Marchenko-Pastur
     * with mean sigma^2 and upper edge sigma^2 (1 + sqrt(M/N))^2, so the edge
     * in lam units is sigma^2 (sqrt N + sqrt M)^2. sigma^2 starts from all
     * eigenvalues and is re-estimated from the bulk (those <= the edge)
     * until the bulk stops changing. */
    double tot = 0;
    for (int i = 0; i < r; i++) tot += lam[i];
    double s2 = tot / ((double)N * (double)M);
    double edge_f = (sqrt((double)N) + sqrt((double)M)) * (sqrt((double)N) + sqrt((double)M));
    int nb_prev = -1, nspk = 0;
    for (int it = 0; it < 100; it++) {
        double lp = s2 * edge_f, sb = 0;
        int nb = 0;
        for (int i = 0; i < r; i++)
            if (lam[i] <= lp) {
                sb += lam[i];
                nb++;
            }
        nspk = r - nb;
        if (nb == nb_prev || nb == 0) break;
        nb_prev = nb;
        /* mean of the bulk over N; the bulk holds nb of the M eigenvalues */
        s2 = sb / ((double)N * nb);
    }
    *sigma = sqrt(s2);
    *lambda_plus = s2 * edge_f;
    *spikes = nspk;
}

void wmat__an_spectrum_metrics(const double *s, int r, int64_t rows, int64_t cols, int min_tail,
                               wmat_matrix_stats *st)
{
    double e = 0;
    for (int i = 0; i < r; i++) e += s[i] * s[i];
    st->norm = e;
    st->norm_fro = sqrt(e);
    st->spectral_norm_sv = r ? s[0] : 0;
    st->lambda_max = st->spectral_norm_sv * st->spectral_norm_sv;
    st->spectral_norm = st->lambda_max;
    st->log_norm = log10(e);
    st->log_spectral_norm = log10(st->lambda_max);
    st->stable_rank = wmat__an_stable_rank(s, r);
    st->entropy_rank = wmat__an_entropy_rank(s, r);
    double acc = 0;
    st->rank90 = st->rank95 = st->rank99 = r;
    int f90 = 0, f95 = 0, f99 = 0;
    for (int i = 0; i < r; i++) {
        acc += s[i] * s[i];
        if (!f90 && acc >= 0.90 * e) f90 = 1, st->rank90 = i + 1;
        if (!f95 && acc >= 0.95 * e) f95 = 1, st->rank95 = i + 1;
        if (!f99 && acc >= 0.99 * e) f99 = 1, st->rank99 = i + 1;
    }
    /* best rank-k errors: sqrt(sum_{i >= k} s_i^2 / sum s_i^2) */
    int ks[3] = {(int)ceil(0.10 * r), (int)ceil(0.25 * r), (int)ceil(0.50 * r)};
    double errs[3];
    for (int q = 0; q < 3; q++) {
        double t = 0;
        for (int i = ks[q]; i < r; i++) t += s[i] * s[i];
        errs[q] = e > 0 ? sqrt(t / e) : 0;
    }
    st->lr_err10 = errs[0];
    st->lr_err25 = errs[1];
    st->lr_err50 = errs[2];
    st->lrc = st->lr_err25 <= 0.5;
    /* eigenvalues lam = s^2, WeightWatcher's convention (no normalization);
     * values below 1e-10 lam_max are numerical zeros and left out. */
    double *lam = wmat__malloc((size_t)(r ? r : 1) * sizeof(double));
    st->alpha = st->xmin = st->xmax = st->D = st->alpha_weighted = st->log_alpha_norm = NAN;
    st->num_pl_spikes = 0;
    if (lam) {
        int nl = 0;
        for (int i = 0; i < r; i++) {
            double l = s[i] * s[i];
            if (l > 1e-10 * st->lambda_max) lam[nl++] = l;
        }
        wmat_powerlaw pl;
        if (wmat_powerlaw_fit(lam, nl, min_tail, &pl) == WMAT_OK) {
            st->alpha = pl.alpha;
            st->xmin = pl.xmin;
            st->xmax = pl.xmax;
            st->D = pl.D;
            st->num_pl_spikes = pl.n_tail;
            st->alpha_weighted = pl.alpha * st->log_spectral_norm;
            /* log10 sum lam^alpha = log10 lam_max + log10 sum (lam / lam_max)^alpha */
            double sa = 0;
            for (int i = 0; i < nl; i++) sa += pow(lam[i] / st->lambda_max, pl.alpha);
            st->log_alpha_norm = st->log_spectral_norm * pl.alpha + log10(sa);
        }
        wmat_clear_error();
        for (int i = 0; i < r; i++) lam[i] = s[i] * s[i];
        int64_t N = rows > cols ? rows : cols, M = rows > cols ? cols : rows;
        wmat__an_mp(lam, r, N, M, &st->sigma_mp, &st->lambda_plus, &st->num_spikes);
        st->mp_softrank = st->lambda_max > 0 ? st->lambda_plus / st->lambda_max : NAN;
        wmat__free(lam);
    }
}
