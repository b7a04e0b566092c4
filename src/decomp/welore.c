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
