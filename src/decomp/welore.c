/* WeLore's rank selection, as its reference code computes it
 * (utils.py adaptive_rank_pruning): min-max normalized singular values
 * against one global threshold. The heavy-tailed spectra of attention
 * projections lose most of their ranks, the flatter FFN ones few, so ranks
 * differ per matrix at one global rule; tau comes from a table for
 * LLaMA-2 in the paper and from bisection on the pruned share here. */
#include "welore.h"

static int64_t pruned_at(const double *s, int64_t len, double tau)
{
    if (len < 1) return 0;
    double lo = s[0], hi = s[0];
    for (int64_t i = 1; i < len; i++) {
        if (s[i] < lo) lo = s[i];
        if (s[i] > hi) hi = s[i];
    }
    if (!(hi > lo)) return 0; /* a flat spectrum: nothing stands out as tail */
    int64_t p = 0;
    for (int64_t i = 0; i < len; i++) p += (s[i] - lo) / (hi - lo) < tau;
    return p;
}

static double share_at(int n, const double *const *sv, const int64_t *len, double tau)
{
    double p = 0, t = 0;
    for (int i = 0; i < n; i++) {
        p += (double)pruned_at(sv[i], len[i], tau);
        t += (double)len[i];
    }
    return t > 0 ? p / t : 0;
}

int wmat__welore_ranks(int n, const double *const *sv, const int64_t *len, double tau, double target, double min_ratio,
                       int64_t *rank_out, double *tau_out, double *pruned_out)
{
    if (n < 1) return wmat_set_error(WMAT_ERR_INVALID, "welore: no matrices");
    if (tau < 0) {
        if (!(target > 0 && target < 1))
            return wmat_set_error(WMAT_ERR_INVALID, "welore: target pruned share %g outside (0, 1)", target);
        /* share_at is a non-decreasing step function of tau on [0, 1.0000001] */
        double lo = 0, hi = 1.0 + 1e-9;
        for (int it = 0; it < 60; it++) {
            const double mid = 0.5 * (lo + hi);
            if (share_at(n, sv, len, mid) >= target) hi = mid;
            else lo = mid;
        }
        tau = hi;
    } else if (tau > 1.0 + 1e-9) {
        return wmat_set_error(WMAT_ERR_INVALID, "welore: threshold %g outside [0, 1]", tau);
    }
    double p_all = 0, t_all = 0;
    for (int i = 0; i < n; i++) {
        const int64_t p = pruned_at(sv[i], len[i], tau);
        const int lrc = len[i] > 0 && (double)p / (double)len[i] > min_ratio;
        rank_out[i] = lrc ? (len[i] - p > 0 ? len[i] - p : 1) : 0;
        if (lrc) p_all += (double)(len[i] - rank_out[i]);
        t_all += (double)len[i];
    }
    *tau_out = tau;
    *pruned_out = t_all > 0 ? p_all / t_all : 0;
    return WMAT_OK;
}

/* ---- the decomposition method: ranks by the rule above, then truncated SVD */

#include "decomp.h"
#include "linalg/dense.h"

#include <stdio.h>

const wmat_param_spec wmat__welore_keys[] = {
    {"target", WMAT_PARAM_FLOAT, "0.5", 0, 1, NULL,
     "share of all ranks (of the matrices decomposed) to prune: the threshold is found by bisection", NULL},
    {"tau", WMAT_PARAM_FLOAT, "0", 0, 1, NULL,
     "a fixed threshold on the min-max normalized singular values instead of target (the paper's table: 0.175 for 50% on LLaMA-2)",
     NULL},
    {"min_ratio", WMAT_PARAM_FLOAT, "0", 0, 1, NULL,
     "a matrix is factored only if it prunes more than this share of its ranks (else kept dense)", NULL},
    {"rank", WMAT_PARAM_INT, "0", 0, 1 << 30, NULL, "set per matrix by the rule (not a user key for welore)", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__decomp_welore_check(const wmat_pset *ps, int global)
{
    (void)global;
    const int i = wmat__params_find(ps->spec, "rank", 4);
    if (global && i >= 0 && ps->v[i].set)
        return wmat_set_error(WMAT_ERR_INVALID, "welore: ranks come from the rule; give target or tau, not rank");
    const double target = wmat__pset_float(ps, "target"), tau = wmat__pset_float(ps, "tau");
    if (tau == 0 && !(target > 0 && target < 1))
        return wmat_set_error(WMAT_ERR_INVALID, "welore: target must be in (0, 1) (or give tau)");
    return WMAT_OK;
}

int wmat__decomp_welore_plan(wmat_tensor *const *t, wmat_pset *const *ps, int n, int *keep, wmat_dtype dtype)
{
    (void)dtype;
    double **sv = wmat__calloc((size_t)n, sizeof *sv);
    int64_t *len = wmat__calloc((size_t)n, sizeof *len), *rank = wmat__calloc((size_t)n, sizeof *rank);
    int rc = sv && len && rank ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "welore: out of memory");
    for (int i = 0; i < n && !rc; i++) {
        const int64_t m = t[i]->shape[0], c = t[i]->shape[1], k = m < c ? m : c;
        double *A = wmat__malloc((size_t)(m * c) * sizeof(double));
        sv[i] = wmat__malloc((size_t)k * sizeof(double));
        if (!A || !sv[i]) rc = wmat_set_error(WMAT_ERR_NOMEM, "welore: out of memory for %s", t[i]->name);
        for (int64_t j = 0; !rc && j < m * c; j++) A[j] = ((const float *)t[i]->data)[j];
        if (!rc) rc = wmat__dgesdd((int)m, (int)c, A, (int)c, sv[i], NULL, (int)k, NULL, (int)c);
        len[i] = k;
        wmat__free(A);
    }
    /* one rule for all: the values of the first tensor's set (overrides of
     * target/tau per tensor would break the single threshold) */
    double tau_used = 0, pruned = 0;
    if (!rc) {
        const double tau = wmat__pset_float(ps[0], "tau");
        rc = wmat__welore_ranks(n, (const double *const *)sv, len, tau > 0 ? tau : -1, wmat__pset_float(ps[0], "target"),
                                wmat__pset_float(ps[0], "min_ratio"), rank, &tau_used, &pruned);
    }
    for (int i = 0; i < n && !rc; i++) {
        const int64_t m = t[i]->shape[0], c = t[i]->shape[1];
        /* a factored matrix that stores at least as much as dense only
         * loses accuracy: kept dense (the reference would factor it) */
        keep[i] = rank[i] == 0 || rank[i] * (m + c) >= m * c;
        char v[32];
        snprintf(v, sizeof v, "%lld", (long long)rank[i]);
        if (!keep[i]) rc = wmat__pset_set(ps[i], "rank", v);
    }
    for (int i = 0; sv && i < n; i++) wmat__free(sv[i]);
    wmat__free(sv);
    wmat__free(len);
    wmat__free(rank);
    return rc;
}

int wmat__decomp_welore(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                        wmat_tensor *out, int64_t *rank_out, double *rel_error)
{
    return wmat__decomp_svd_rank(W, rows, cols, wmat__pset_int(ps, "rank"), dtype, out, rank_out, rel_error);
}
