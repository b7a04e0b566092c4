/* OPCM, continual model merging by orthogonal projection (Tang et al.;
 * fusion_bench's opcm.py; SPECS J5), as a merge method over models given in
 * task order.
 *
 * The paper's loop keeps a merged model theta and, for task t, forms
 *   W <- W0 + lambda_prev Delta + tau'_t     (Delta = theta - theta0),
 * tau'_t being tau_t projected off Delta's top singular directions (linear
 * weights; other tensors add tau_t as it is), then rescales the whole
 * model's delta to the running mean of the task vectors' norms:
 *   nu = ||W - W0|| (whole model), theta = W0 + (W - W0) nbar / nu,
 *   lambda_prev = nu / nbar.
 * Since lambda_prev Delta is exactly the delta before the last rescale, the
 * unscaled sums E_1 = tau_1, E_t = E_{t-1} + tau'_t follow the same path
 * (the projection depends on Delta only through its singular vectors and
 * the ratios of its singular values, which a scale leaves alone), and the
 * merged model is theta0 + E_T nbar_T / ||E_T||. Each tensor's E_T so needs
 * only that tensor of each task; the one whole-model number (||E_T|| and
 * the task norms) comes from a first pass, and the second pass recomputes
 * E_T and writes it scaled. tests/test_opcm.c holds this to the literal
 * loop over a whole model. */
#include "merge.h"
#include "linalg/dense.h"
#include "linalg/linalg.h"

#include <math.h>
#include <string.h>

int wmat__opcm_step(int m, int n, double *E, double *tau, double alpha, int *kstar)
{
    const int k = m < n ? m : n;
    const size_t mn = (size_t)m * (size_t)n;
    *kstar = -1;
    double e2 = 0;
    for (size_t i = 0; i < mn; i++) e2 += E[i] * E[i];
    if (!(e2 > 0)) {
        /* nothing merged yet in this tensor: no direction to protect */
        for (size_t i = 0; i < mn; i++) E[i] += tau[i];
        return WMAT_OK;
    }
    /* one allocation: the SVD's copy of E (m n), U (m k), VT (k n), U^T tau
     * (k n), P (k k), U P (m k), S (k). The kernel is called once per tensor
     * and LAPACK allocates its own workspace per call anyway. */
    const size_t need = mn + (size_t)m * k + (size_t)k * n + (size_t)k * n + (size_t)k * k + (size_t)m * k + (size_t)k;
    double *w = wmat__malloc(need * sizeof(double));
    if (!w) return wmat_set_error(WMAT_ERR_NOMEM, "opcm: out of memory for a %dx%d projection", m, n);
    double *A = w, *U = A + mn, *VT = U + (size_t)m * k, *UT = VT + (size_t)k * n, *P = UT + (size_t)k * n,
           *UP = P + (size_t)k * k, *S = UP + (size_t)m * k;
    memcpy(A, E, mn * sizeof(double));
    int rc = wmat__dgesdd(m, n, A, n, S, U, k, VT, n);
    if (rc) goto out;
    double ssum = 0;
    for (int i = 0; i < k; i++) ssum += S[i];
    /* fusion_bench: (s.cumsum(0) / s.sum() > alpha).float().argmax() */
    int ks = 0;
    double cum = 0;
    for (int i = 0; i < k; i++) {
        cum += S[i];
        if (cum / ssum > alpha) {
            ks = i;
            break;
        }
    }
    *kstar = ks;
    /* P = U^T tau V */
    rc = wmat__dgemm(1, 0, k, n, m, 1.0, U, k, tau, n, 0.0, UT, n);
    if (!rc) rc = wmat__dgemm(0, 1, k, k, n, 1.0, UT, n, VT, n, 0.0, P, k);
    if (rc) goto out;
    for (int i = 0; i < k; i++) P[(size_t)i * k + i] = 0;
    for (int i = 0; i < ks; i++) memset(P + (size_t)i * k, 0, (size_t)ks * sizeof(double));
    /* E += U P V^T */
    rc = wmat__dgemm(0, 0, m, k, k, 1.0, U, k, P, k, 0.0, UP, k);
    if (!rc) rc = wmat__dgemm(0, 0, m, n, k, 1.0, UP, k, VT, n, 1.0, E, n);
out:
    wmat__free(w);
    return rc;
}

int wmat__merge_opcm(const wmat_merge_args *a, float *out, wmat_merge_tinfo *info)
{
    const int64_t n = a->n;
    const int T = a->n_in;
    if (!a->acc || T + 1 > WMAT_MERGE_N_ACC)
        return wmat_set_error(WMAT_ERR_INVALID, "opcm: needs the driver's two passes (at most %d models)", WMAT_MERGE_N_ACC - 1);
    const int project = a->linear && a->rows > 1 && a->cols > 1 && a->rows * a->cols == n;
    if (project && (a->rows > 0x7fffffff || a->cols > 0x7fffffff))
        return wmat_set_error(WMAT_ERR_INVALID, "opcm: a %lldx%lld matrix is too large", (long long)a->rows,
                              (long long)a->cols);
    double *E = wmat__malloc((size_t)n * sizeof(double) * (project ? 2 : 1));
    if (!E) return wmat_set_error(WMAT_ERR_NOMEM, "opcm: out of memory for %lld elements", (long long)n);
    double *tau = project ? E + n : NULL;
    int rc = WMAT_OK;
    for (int t = 0; t < T && !rc; t++) {
        const float *x = a->x[t];
        double s2 = 0;
        if (t == 0 || !project) {
            for (int64_t j = 0; j < n; j++) {
                const double d = (double)x[j] - a->base[j];
                s2 += d * d;
                E[j] = t ? E[j] + d : d;
            }
        } else {
            for (int64_t j = 0; j < n; j++) {
                tau[j] = (double)x[j] - a->base[j];
                s2 += tau[j] * tau[j];
            }
            /* a large matrix's SVD and products run on the context's
             * threads, lent to OpenBLAS (its results may then differ in the
             * last bits between thread counts); for small ones the loan
             * costs more than it gives (mix4m's 704x256 on a loaded 2-core
             * machine: 83 s at 2 threads against 20 s at 1) */
            const int big = (a->rows < a->cols ? a->rows : a->cols) >= 1024;
            int ks, tok = big ? wmat__blas_threads_begin(a->n_threads) : 0;
            rc = wmat__opcm_step((int)a->rows, (int)a->cols, E, tau, a->alpha, &ks);
            if (big) wmat__blas_threads_end(tok);
        }
        if (a->pass == 0) a->acc[1 + t] += s2;
    }
    if (!rc) {
        double e2 = 0;
        for (int64_t j = 0; j < n; j++) e2 += E[j] * E[j];
        if (a->pass == 0) {
            a->acc[0] += e2;
        } else {
            /* theta0 + E nbar / ||E|| (whole-model norms from the first pass) */
            double nbar = 0;
            for (int t = 0; t < T; t++) nbar += sqrt(a->acc[1 + t]);
            nbar /= T;
            const double nu = sqrt(a->acc[0]), scale = nu > 0 ? nbar / nu : 0.0;
            for (int64_t j = 0; j < n; j++) out[j] = (float)((double)a->base[j] + scale * E[j]);
        }
    }
    (void)info;
    wmat__free(E);
    return rc;
}
