/* Binary-coding quantization (ShiftAddLLM, Xu et al./You et al. 2024):
 * W[r, c] ~ sum_{k<q} alpha[r, G(c), k] b_k[r, c], b = +-1, q = bits planes,
 * alphas per row and group of `group` inputs (0: the whole row), stored
 * as the bcq weight kind (src/wop/kind_bcq.c) that runs on table lookups.
 *
 * Fit of one group (wmat__bcq_fit): greedy init (b_k = sign of the
 * residual, alpha_k its mean magnitude), then `rounds` alternations: alphas
 * by weighted least squares for the signs, then every code the nearest of
 * the 2^q levels for the alphas (the exact minimizer for diagonal weights;
 * the reference's default recomputes signs greedily, its `use_bst` takes the
 * nearest level as here), kept while the weighted error falls.
 *
 * Activation-aware, on H = 2 X X^T / N:
 *   feedback (default, ShiftAddLLM's "acc" mode): GPTQ's column loop. When
 *     the loop enters a group, its alphas are fitted on the group's current
 *     (error-fed) weights with weights 1 / U_jj^2 (U the upper Cholesky factor
 *     of H^-1: the loss GPTQ charges column j per unit error); each column
 *     then takes the nearest level of its group's alphas and its error flows
 *     to the later columns through U, which is how the off-diagonal of H
 *     enters. Blocks are sized as in gptq.c so a group's columns are fully
 *     updated when it is fitted.
 *   no feedback: each group fitted once with weights diag(H), the diagonal of
 *     (W - Q) H (W - Q)^T.
 * The reference fits its alphas along output rows per input column; here
 * groups run along inputs (per row), the layout whose product is a table
 * lookup per plane byte (the reference's "lat" mode shares alphas over 8
 * columns for the same reason). apot rounds each alpha to +-2^e1 +- 2^e2 +-
 * 2^e3 (the reference's shift-add scales).
 *
 * refit (default; not with apot, whose scales are a grid): once every sign
 * is fixed, each row's alphas are refitted on the full H, the objective
 * (W - Q) H (W - Q)^T itself: jointly over the row when it has at most 64
 * alphas, else group by group with the rest of the row held (block
 * coordinate descent); a block's new alphas are kept only when the row's
 * error falls. GPTQ's uniform grid has no such step: its scale sits inside
 * the rounding. Cost q n^2 per row. */
#include "methods.h"

#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Solve M x = y (K x K, double, overwritten) by Cholesky with a small
 * ridge; 0 when not positive definite. */
static int chol_solve(double *M, double *y, int K)
{
    double tr = 0.0;
    for (int i = 0; i < K; i++) tr += M[i * K + i];
    const double ridge = 1e-10 * (tr > 0 ? tr / K : 1.0);
    for (int i = 0; i < K; i++) M[i * K + i] += ridge;
    for (int i = 0; i < K; i++)
        for (int j = 0; j <= i; j++) {
            double v = M[i * K + j];
            for (int k = 0; k < j; k++) v -= M[i * K + k] * M[j * K + k];
            if (i == j) {
                if (!(v > 0)) return 0;
                M[i * K + i] = sqrt(v);
            } else M[i * K + j] = v / M[j * K + j];
        }
    for (int i = 0; i < K; i++) {
        double v = y[i];
        for (int k = 0; k < i; k++) v -= M[i * K + k] * y[k];
        y[i] = v / M[i * K + i];
    }
    for (int i = K - 1; i >= 0; i--) {
        double v = y[i];
        for (int k = i + 1; k < K; k++) v -= M[k * K + i] * y[k];
        y[i] = v / M[i * K + i];
    }
    for (int i = 0; i < K; i++)
        if (!isfinite(y[i])) return 0;
    return 1;
}

#define REFIT_MAX_K 64 /* alphas solved jointly (the whole row when ng q fits) */

/* With the signs fixed, the alphas of one row refitted on the full H:
 * minimize (w - W^)^T H (w - W^) over blocks of groups (the whole row when
 * ng q <= REFIT_MAX_K, else one group at a time with the rest of the row
 * held: exact block coordinate descent). Over a block's alphas a the error
 * is const - 2 a^T y + a^T M a (M = B^T H B, y = B^T H r, r the row's target
 * without the block's own contribution), so a new a (as stored, fp16) is
 * kept only when that change is negative, without re-evaluating the row.
 * work: n (K + 2) + 2 K (K + 1) doubles, K = min(ng q, REFIT_MAX_K) rounded
 * up to whole groups. */
static void refit_row(const float *w, const double *H, int64_t n, int64_t g, int q, const uint8_t *codes, float *alpha,
                      double *work)
{
    const int64_t ng = n / g, per = ng * q <= REFIT_MAX_K ? ng : 1;
    const int Kmax = (int)(per * q);
    double *v = work, *res = v + n, *HB = res + n, *M = HB + (size_t)n * Kmax, *y = M + Kmax * Kmax;
    double *M0 = y + Kmax, *y0 = M0 + Kmax * Kmax;
    for (int64_t j = 0; j < n; j++) v[j] = wmat__bcq_level(alpha + (j / g) * q, q, codes[j]);
    for (int64_t G0 = 0; G0 < ng; G0 += per) {
        const int64_t G1 = G0 + per, j0 = G0 * g, j1 = G1 * g;
        const int K = (int)((G1 - G0) * q);
        /* res = w - W^ outside the block, w inside: the target of the block's alphas */
        for (int64_t j = 0; j < n; j++) res[j] = (double)w[j] - (j >= j0 && j < j1 ? 0.0 : v[j]);
        /* HB[c] = H b_c (n values), b_c the signs of plane k of group G on its
         * columns; H is symmetric, so row j of H is read in address order */
        memset(HB, 0, (size_t)n * (size_t)K * sizeof(double));
        for (int64_t j = j0; j < j1; j++) {
            const int64_t G = j / g;
            const double *h = H + j * n;
            for (int k = 0; k < q; k++) {
                double *hb = HB + (size_t)((G - G0) * q + k) * (size_t)n;
                if (codes[j] >> k & 1)
                    for (int64_t i = 0; i < n; i++) hb[i] += h[i];
                else
                    for (int64_t i = 0; i < n; i++) hb[i] -= h[i];
            }
        }
        /* M = B^T H B, y = B^T H res */
        memset(M, 0, (size_t)K * (size_t)K * sizeof(double));
        memset(y, 0, (size_t)K * sizeof(double));
        for (int64_t i = j0; i < j1; i++) {
            const int64_t G = i / g;
            const double *h = H + i * n;
            double h4[4] = {0, 0, 0, 0};
            int64_t j = 0;
            for (; j + 4 <= n; j += 4)
                for (int u = 0; u < 4; u++) h4[u] += h[j + u] * res[j + u];
            double hr = (h4[0] + h4[1]) + (h4[2] + h4[3]);
            for (; j < n; j++) hr += h[j] * res[j];
            for (int k = 0; k < q; k++) {
                const int c = (int)((G - G0) * q + k);
                const double b = (codes[i] >> k & 1) ? 1.0 : -1.0;
                y[c] += b * hr;
                for (int d = 0; d < K; d++) M[c * K + d] += b * HB[(size_t)d * (size_t)n + i];
            }
        }
        memcpy(M0, M, (size_t)K * (size_t)K * sizeof(double));
        memcpy(y0, y, (size_t)K * sizeof(double));
        if (!chol_solve(M, y, K)) continue;
        float a2[REFIT_MAX_K + 4];
        for (int c = 0; c < K; c++) a2[c] = wmat_f16_to_f32(wmat_f32_to_f16((float)y[c]));
        /* change of the row's error: -2 (a2 - a)^T y0 + a2^T M0 a2 - a^T M0 a */
        const float *a = alpha + G0 * q;
        double delta = 0.0;
        for (int c = 0; c < K; c++) {
            double m2 = 0.0, m1 = 0.0;
            for (int d = 0; d < K; d++) {
                m2 += M0[c * K + d] * a2[d];
                m1 += M0[c * K + d] * a[d];
            }
            delta += -2.0 * ((double)a2[c] - a[c]) * y0[c] + (double)a2[c] * m2 - (double)a[c] * m1;
        }
        if (!(delta < 0.0)) continue;
        memcpy(alpha + G0 * q, a2, (size_t)K * sizeof(float));
        for (int64_t j = j0; j < j1; j++) v[j] = wmat__bcq_level(a2 + (j / g - G0) * q, q, codes[j]);
    }
}

int wmat__quant_bcq(wmat_qresult *out, const float *W0, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    if (!st || !st->H || st->n != cols)
        return wmat_set_error(WMAT_ERR_INVALID, "BCQ needs the Hessian of the layer's %lld inputs (calibration data)",
                              (long long)cols);
    const int q = p->bits;
    if (q < 1 || q > 4) return wmat_set_error(WMAT_ERR_INVALID, "BCQ: %d bits; binary coding takes 1..4 planes", q);
    const int64_t m = rows, n = cols, g = p->group > 0 ? p->group : cols;
    if (g != n && (g % 8 || n % g))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "BCQ: group %lld of a %lld-input matrix: a group is the whole row or a multiple of 8 that "
                              "divides the inputs",
                              (long long)g, (long long)n);
    const int64_t ng = n / g;
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    const int rounds = p->rounds >= 0 ? p->rounds : 0;
    int B = p->block > 0 ? p->block : 128;
    if (B % g && g % B) B = (int)g;
    if (B > n) B = (int)n;

    int rc = WMAT_OK;
    double lambda = p->damp > 0 ? p->damp : 0.01;
    uint8_t *codes = wmat__malloc((size_t)(m * n));
    float *alpha = wmat__malloc((size_t)(m * ng * q) * sizeof(float));
    uint8_t *scr = wmat__malloc((size_t)nt * 2 * (size_t)g);
    float *wt = wmat__malloc((size_t)n * sizeof(float));
    double *H = NULL;
    float *Wk = NULL, *U = NULL, *E = NULL;
    void *obj = NULL;
    if (!codes || !alpha || !scr || !wt) goto nomem;

    if (!p->feedback) {
        for (int64_t j = 0; j < n; j++) wt[j] = (float)st->H[j * n + j];
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < m; r++) {
            uint8_t *s = scr + (size_t)thread_id() * 2 * (size_t)g;
            for (int64_t G = 0; G < ng; G++)
                wmat__bcq_fit(W0 + r * n + G * g, wt + G * g, g, q, rounds, p->apot, alpha + (r * ng + G) * q,
                              codes + r * n + G * g, s);
        }
    } else {
        H = wmat__malloc((size_t)(n * n) * sizeof(double));
        Wk = wmat__malloc((size_t)(m * n) * sizeof(float));
        U = wmat__malloc((size_t)(n * n) * sizeof(float));
        E = wmat__malloc((size_t)(m * B) * sizeof(float));
        if (!H || !Wk || !U || !E) goto nomem;
        memcpy(H, st->H, (size_t)(n * n) * sizeof(double));
        memcpy(Wk, W0, (size_t)(m * n) * sizeof(float));
        for (int64_t j = 0; j < n; j++)
            if (H[j * n + j] == 0.0) { /* dead input: its weights never matter */
                H[j * n + j] = 1.0;
                for (int64_t r = 0; r < m; r++) Wk[r * n + j] = 0.0f;
            }
        if ((rc = wmat__gptq_inverse_cholesky(H, n, &lambda, U))) goto fail;
        for (int64_t j = 0; j < n; j++) wt[j] = 1.0f / (U[j * n + j] * U[j * n + j]);
        for (int64_t i1 = 0; i1 < n; i1 += B) {
            const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t r = 0; r < m; r++) {
                uint8_t *s = scr + (size_t)thread_id() * 2 * (size_t)g;
                float *w = Wk + r * n;
                for (int64_t i = i1; i < i2; i++) {
                    float *al = alpha + (r * ng + i / g) * q;
                    if (i % g == 0) wmat__bcq_fit(w + i, wt + i, g, q, rounds, p->apot, al, s, s + g);
                    const uint8_t c = wmat__bcq_nearest(w[i], al, q);
                    codes[r * n + i] = c;
                    const float e = (w[i] - wmat__bcq_level(al, q, c)) / U[i * n + i];
                    E[r * B + (i - i1)] = e;
                    const float *u = U + i * n;
                    for (int64_t j = i + 1; j < i2; j++) w[j] -= e * u[j];
                }
            }
            if (i2 < n)
                wmat_sgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0f, E, B, U + i1 * n + i2, (int)n, 1.0f, Wk + i2,
                           (int)n);
        }
    }
    if (p->refit && !p->apot) {
        /* the alphas on the full H for the final signs, against the original row (dead inputs zero) */
        const int64_t per = ng * q <= REFIT_MAX_K ? ng : 1;
        const int64_t K = per * q;
        const size_t wb = (size_t)(n * (K + 2) + 2 * K * (K + 1));
        double *rw = wmat__malloc((size_t)nt * wb * sizeof(double));
        float *w0 = wmat__malloc((size_t)nt * (size_t)n * sizeof(float));
        if (!rw || !w0) {
            wmat__free(rw);
            wmat__free(w0);
            goto nomem;
        }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
        for (int64_t r = 0; r < m; r++) {
            const int me = thread_id();
            float *w = w0 + (size_t)me * (size_t)n;
            for (int64_t j = 0; j < n; j++) w[j] = st->H[j * n + j] == 0.0 ? 0.0f : W0[r * n + j];
            refit_row(w, st->H, n, g, q, codes + r * n, alpha + r * ng * q, rw + (size_t)me * wb);
        }
        wmat__free(rw);
        wmat__free(w0);
    }
    for (int64_t i = 0; i < m * ng * q && !rc; i++)
        if (!isfinite(alpha[i])) rc = wmat_set_error(WMAT_ERR_NUMERIC, "BCQ: a non-finite scale (weights or Hessian)");
    if (rc) goto fail;
    if ((rc = wmat__bcq_create(m, n, q, (int)g, codes, alpha, &obj))) goto fail;
    out->obj = obj;
    out->bits = q;
    out->sym = 1;
    out->axis = WMAT_QAXIS_IN;
    out->group = (int)g;
    out->rows = m;
    out->cols = n;
    if (info) {
        memset(info, 0, sizeof *info);
        info->damp = p->feedback ? lambda : 0.0;
        char grid[24];
        if (g == n) snprintf(grid, sizeof grid, "per-row");
        else snprintf(grid, sizeof grid, "g%lld", (long long)g);
        snprintf(info->scheme, sizeof info->scheme, "bcq %d planes %s %s%s%s, %d rounds", q, grid,
                 p->feedback ? "gptq-feedback" : "diag(H)", p->apot ? " apot" : "", p->refit && !p->apot ? " refit" : "",
                 rounds);
    }
    goto done;
nomem:
    rc = wmat_set_error(WMAT_ERR_NOMEM, "BCQ: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
fail:
    wmat_qresult_free(out);
done:
    wmat__free(codes);
    wmat__free(alpha);
    wmat__free(scr);
    wmat__free(wt);
    wmat__free(H);
    wmat__free(Wk);
    wmat__free(U);
    wmat__free(E);
    return rc;
}
