/* FineQuant-style adaptive granularity (SPECS.md G5, no public code; the
 * paper's exact trigger is not published, so this is METHODS.md's rule,
 * labelled "FineQuant-style"): weights only, a symmetric grid (int4 by
 * default, any 2..8 bits), one group size per matrix.
 *
 * Candidates along the inputs: n, n/2, n/4, ... while the group is a whole
 * number dividing n and at least min_group long (64 by default; a group is
 * also a multiple of 32 when n is, so the packed kind holds it). Each
 * candidate is quantized by round to nearest and its relative error
 * ||W - Q||_F / ||W||_F measured; the finest candidate's error e_min is
 * the reference, and the matrix gets the coarsest g with e(g) <= tau e_min
 * (tau 1.5 by default): per channel unless per-channel's error spikes
 * (an outlier column widens every row's range). Halving instead of every
 * divisor keeps the candidates FineQuant's n, n/2, ..., 64 ladder; a width
 * like 704 gives 704, 352, 176, 88. Ragged last groups are not needed
 * (every candidate divides n): the packed kind's groups must divide it. */
#include "methods.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static double rel_error(const float *W, const float *Q, int64_t n)
{
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)W[i] - Q[i];
        num += d * d;
        den += (double)W[i] * W[i];
    }
    return den > 0 ? sqrt(num / den) : 0.0;
}

int wmat__quant_finequant(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                          const wmat_qparams *p, wmat_qmethod_info *info)
{
    (void)st;
    memset(out, 0, sizeof *out);
    if (p->bits < 2 || p->bits > 8)
        return wmat_set_error(WMAT_ERR_INVALID, "finequant: %d bits (2..8)", p->bits);
    if (!(p->tau >= 1.0)) return wmat_set_error(WMAT_ERR_INVALID, "finequant: tau %g (>= 1)", p->tau);
    if (p->min_group < 1) return wmat_set_error(WMAT_ERR_INVALID, "finequant: min_group %d (>= 1)", p->min_group);
    const int64_t n = cols, N = rows * cols;
    int64_t cand[32];
    int nc = 0;
    for (int64_t g = n; nc < 32; g /= 2) {
        if (nc > 0 && (g < p->min_group || g * (n / g) != n)) break;
        if (nc == 0 || n % 32 || g % 32 == 0) cand[nc++] = g;
        if (g % 2) break;
    }
    float *Q = wmat__malloc((size_t)N * sizeof(float));
    if (!Q) return wmat_set_error(WMAT_ERR_NOMEM, "finequant: out of memory");
    double err[32];
    wmat_qparams qp = *p;
    qp.sym = 1;
    qp.axis = WMAT_QAXIS_IN;
    qp.clip = 0;
    int rc = WMAT_OK;
    for (int k = 0; k < nc && !rc; k++) {
        wmat_qresult r;
        qp.group = (int)cand[k];
        if (!(rc = wmat__quant_rtn(&r, W, rows, cols, NULL, &qp, NULL))) {
            wmat_qresult_dequant(&r, Q);
            err[k] = rel_error(W, Q, N);
            wmat_qresult_free(&r);
        }
    }
    wmat__free(Q);
    if (rc) return rc;
    const double e_min = err[nc - 1];
    int pick = nc - 1;
    for (int k = 0; k < nc; k++)
        if (err[k] <= p->tau * e_min) {
            pick = k;
            break;
        }
    qp.group = (int)cand[pick];
    if ((rc = wmat__quant_rtn(out, W, rows, cols, NULL, &qp, NULL))) return rc;
    if (info) {
        if (pick == 0)
            snprintf(info->scheme, sizeof info->scheme, "finequant %db sym per-OC (e/e_min %.2f, tau %.2g)", p->bits,
                     e_min > 0 ? err[0] / e_min : 1.0, p->tau);
        else
            snprintf(info->scheme, sizeof info->scheme, "finequant %db sym g%lld (per-OC e/e_min %.2f)", p->bits,
                     (long long)cand[pick], e_min > 0 ? err[0] / e_min : 1.0);
    }
    return WMAT_OK;
}
