/* GPTQ (Frantar et al. 2022): quantize the columns of W one at a time and
 * push each column's rounding error onto the columns not yet quantized,
 * weighted by the inverse Hessian of the layer's output error,
 * H = 2 X X^T / N.
 *
 *   dead inputs (H_jj = 0): H_jj = 1, W[:, j] = 0
 *   act-order: columns by decreasing H_jj (perm), groups over permuted positions
 *   H += lambda mean(diag H) I, lambda = p->damp, times 10 while Cholesky fails
 *   U = upper Cholesky factor of H^-1 (H^-1 = U^T U)
 *   for each block of B columns [i1, i2):
 *     for i in block: q = quant(w_i); e = (w_i - q) / U_ii;
 *                     W[:, i+1:i2] -= e U[i, i+1:i2]
 *     W[:, i2:] -= E_block U[i1:i2, i2:]          (lazy batch update, one GEMM)
 *
 * Grids: per-OC (group = cols): one scale per row from the whole W before
 * the loop. Groups along inputs: refitted from the current (error-fed)
 * columns when the loop enters a new group; the block size is chosen so a
 * group never straddles a block boundary (B = 128 when g divides 128 or 128
 * divides g, else B = g), so the group's columns are fully updated when it is
 * fitted (the reference code fits from the lazily updated matrix and misses
 * the in-block updates of groups that start inside a block). Static groups:
 * from the original W; codes are then stored in the original column order
 * (no perm needed). Per-IC (axis OUT, AdaDim): column i's scales are fitted
 * from the current column i just before it is quantized. */
#include "methods.h"

#include "../linalg/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double d;
    int32_t i;
} diag_idx;

static int cmp_desc(const void *a, const void *b)
{
    const diag_idx *x = a, *y = b;
    if (x->d != y->d) return x->d > y->d ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int wmat__gptq_inverse_cholesky(const double *H, int64_t n, double *lambda, float *U)
{
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) mean += H[j * n + j];
    mean /= (double)n;
    if (!isfinite(mean)) return wmat_set_error(WMAT_ERR_NUMERIC, "GPTQ: the Hessian has non-finite entries");
    double *A = wmat__malloc((size_t)(n * n) * sizeof(double));
    if (!A) return wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory for a %lld x %lld Hessian", (long long)n,
                                  (long long)n);
    int rc = WMAT_ERR_NUMERIC;
    for (int attempt = 0; attempt < 5; attempt++, *lambda *= 10.0) {
        memcpy(A, H, (size_t)(n * n) * sizeof(double));
        for (int64_t j = 0; j < n; j++) A[j * n + j] += *lambda * mean;
        int st = wmat__dpotrf_upper((int)n, A, (int)n);
        if (!st) st = wmat__dpotri_upper((int)n, A, (int)n);
        if (!st) st = wmat__dpotrf_upper((int)n, A, (int)n);
        if (st == WMAT_ERR_NUMERIC) continue; /* more damping may cure it */
        if (st) {
            wmat__free(A);
            return st; /* out of memory: the wrapper's message stands */
        }
        int ok = 1;
        for (int64_t i = 0; i < n && ok; i++)
            for (int64_t j = 0; j < n; j++) {
                const double v = j >= i ? A[i * n + j] : 0.0;
                if (!isfinite(v)) ok = 0;
                U[i * n + j] = (float)v;
            }
        if (!ok) continue;
        rc = WMAT_OK;
        break;
    }
    wmat__free(A);
    if (rc)
        return wmat_set_error(WMAT_ERR_NUMERIC,
                              "GPTQ: the Hessian of a %lld-input layer is not positive definite even with damping "
                              "%g x mean(diag); the calibration data may be degenerate",
                              (long long)n, *lambda / 10.0);
    return WMAT_OK;
}

int wmat__quant_gptq(wmat_qresult *out, const float *W0, int64_t rows, int64_t cols, const wmat_qstats *st,
                     const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    if (!st || !st->H || st->n != cols)
        return wmat_set_error(WMAT_ERR_INVALID, "GPTQ needs the Hessian of the layer's %lld inputs (calibration data)",
                              (long long)cols);
    int g, rc;
    if ((rc = wmat__qgroup(p, rows, cols, &g))) return rc;
    const int64_t m = rows, n = cols;
    const int maxq = (1 << p->bits) - 1;
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    const int axis_in = p->axis == WMAT_QAXIS_IN;
    const int per_oc = axis_in && g == n;
    const int stat = p->static_groups && !per_oc;
    const int use_perm = p->act_order && !stat;
    int B = p->block > 0 ? p->block : 128;
    if (axis_in && !per_oc && !stat && B % g && g % B) B = g;
    if (B > n) B = (int)n;

    double *H = wmat__malloc((size_t)(n * n) * sizeof(double));
    float *Wk = wmat__malloc((size_t)(m * n) * sizeof(float));
    float *U = wmat__malloc((size_t)(n * n) * sizeof(float));
    float *E = wmat__malloc((size_t)(m * B) * sizeof(float));
    int32_t *perm = wmat__malloc((size_t)n * sizeof(int32_t));
    diag_idx *di = wmat__malloc((size_t)n * sizeof(diag_idx));
    float *st_scale = NULL, *st_zero = NULL;
    if (!H || !Wk || !U || !E || !perm || !di) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
        goto fail;
    }
    if ((rc = wmat_qresult_alloc(out, p->bits, p->sym, p->axis, g, m, n, use_perm))) goto fail;
    memcpy(H, st->H, (size_t)(n * n) * sizeof(double));
    memcpy(Wk, W0, (size_t)(m * n) * sizeof(float));

    /* dead inputs */
    for (int64_t j = 0; j < n; j++)
        if (H[j * n + j] == 0.0) {
            H[j * n + j] = 1.0;
            for (int64_t r = 0; r < m; r++) Wk[r * n + j] = 0.0f;
        }

    /* static groups: from the original (dead-zeroed) W, original order */
    if (stat) {
        const int64_t ng = wmat_qresult_n_groups(out);
        st_scale = wmat__malloc((size_t)ng * sizeof(float));
        st_zero = wmat__malloc((size_t)ng * sizeof(float));
        if (!st_scale || !st_zero) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
            goto fail;
        }
        if (axis_in) {
            for (int64_t r = 0; r < m; r++)
                for (int64_t k = 0; k < n / g; k++)
                    wmat__qfit(Wk + r * n + k * g, g, 1, NULL, 0, p->bits, p->sym, p->clip, 0,
                               &st_scale[r * (n / g) + k], &st_zero[r * (n / g) + k]);
        } else {
            for (int64_t c = 0; c < n; c++)
                for (int64_t k = 0; k < m / g; k++)
                    wmat__qfit(Wk + k * g * n + c, g, n, NULL, 0, p->bits, p->sym, p->clip, 0,
                               &st_scale[c * (m / g) + k], &st_zero[c * (m / g) + k]);
        }
    }

    /* act-order: permute columns of W and rows/columns of H */
    for (int64_t j = 0; j < n; j++) perm[j] = (int32_t)j;
    if (p->act_order) {
        for (int64_t j = 0; j < n; j++) di[j] = (diag_idx){H[j * n + j], (int32_t)j};
        qsort(di, (size_t)n, sizeof *di, cmp_desc);
        for (int64_t j = 0; j < n; j++) perm[j] = di[j].i;
        double *H2 = wmat__malloc((size_t)(n * n) * sizeof(double));
        float *row = wmat__malloc((size_t)n * sizeof(float));
        if (!H2 || !row) {
            wmat__free(H2);
            wmat__free(row);
            rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
            goto fail;
        }
        for (int64_t a = 0; a < n; a++)
            for (int64_t b = 0; b < n; b++) H2[a * n + b] = H[(int64_t)perm[a] * n + perm[b]];
        memcpy(H, H2, (size_t)(n * n) * sizeof(double));
        for (int64_t r = 0; r < m; r++) {
            for (int64_t j = 0; j < n; j++) row[j] = Wk[r * n + perm[j]];
            memcpy(Wk + r * n, row, (size_t)n * sizeof(float));
        }
        wmat__free(H2);
        wmat__free(row);
    }

    double lambda = p->damp > 0 ? p->damp : 0.01;
    if ((rc = wmat__gptq_inverse_cholesky(H, n, &lambda, U))) goto fail;

    /* per-OC: one grid per row from the whole (dead-zeroed) W */
    if (per_oc)
        for (int64_t r = 0; r < m; r++)
            wmat__qfit(Wk + r * n, n, 1, NULL, 0, p->bits, p->sym, p->clip, 0, &out->scales[r], &out->zeros[r]);

    const int64_t gpr = axis_in ? n / g : 0, gpc = axis_in ? 0 : m / g;
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
        if (axis_in) {
            /* rows are independent within a block */
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t r = 0; r < m; r++) {
                float *w = Wk + r * n;
                float s = 0, z = 0;
                for (int64_t i = i1; i < i2; i++) {
                    int64_t gi;
                    if (per_oc) gi = r;
                    else if (stat) gi = r * gpr + perm[i] / g;
                    else {
                        gi = r * gpr + i / g;
                        if (i % g == 0)
                            wmat__qfit(w + i, g, 1, NULL, 0, p->bits, p->sym, p->clip, 0, &out->scales[gi],
                                       &out->zeros[gi]);
                    }
                    s = stat ? st_scale[gi] : out->scales[gi];
                    z = stat ? st_zero[gi] : out->zeros[gi];
                    const uint8_t code = wmat__qcode(w[i], s, z, maxq);
                    out->codes[r * n + i] = code;
                    const float e = (w[i] - s * ((float)code - z)) / U[i * n + i];
                    E[r * B + (i - i1)] = e;
                    const float *u = U + i * n;
                    for (int64_t j = i + 1; j < i2; j++) w[j] -= e * u[j];
                }
            }
        } else {
            for (int64_t i = i1; i < i2; i++) {
                const int64_t c = perm[i];
                float *sc = stat ? st_scale + c * gpc : out->scales + (use_perm ? i : c) * gpc;
                float *zc = stat ? st_zero + c * gpc : out->zeros + (use_perm ? i : c) * gpc;
                if (!stat)
                    for (int64_t k = 0; k < gpc; k++)
                        wmat__qfit(Wk + k * g * n + i, g, n, NULL, 0, p->bits, p->sym, p->clip, 0, &sc[k], &zc[k]);
                const float *u = U + i * n;
#pragma omp parallel for num_threads(nt) schedule(static) if (m * cnt > 65536)
                for (int64_t r = 0; r < m; r++) {
                    float *w = Wk + r * n;
                    const float s = sc[r / g], z = zc[r / g];
                    const uint8_t code = wmat__qcode(w[i], s, z, maxq);
                    out->codes[r * n + i] = code;
                    const float e = (w[i] - s * ((float)code - z)) / u[i];
                    E[r * B + (i - i1)] = e;
                    for (int64_t j = i + 1; j < i2; j++) w[j] -= e * u[j];
                }
            }
        }
        if (i2 < n)
            wmat_sgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0f, E, B, U + i1 * n + i2, (int)n, 1.0f, Wk + i2,
                       (int)n);
    }

    if (stat) {
        /* codes back to the original column order; scales are already there */
        memcpy(out->scales, st_scale, (size_t)wmat_qresult_n_groups(out) * sizeof(float));
        memcpy(out->zeros, st_zero, (size_t)wmat_qresult_n_groups(out) * sizeof(float));
        if (p->act_order) {
            uint8_t *row = (uint8_t *)Wk; /* scratch: Wk is no longer needed */
            for (int64_t r = 0; r < m; r++) {
                for (int64_t i = 0; i < n; i++) row[perm[i]] = out->codes[r * n + i];
                memcpy(out->codes + r * n, row, (size_t)n);
            }
        }
    } else if (use_perm) {
        memcpy(out->perm, perm, (size_t)n * sizeof(int32_t));
    }
    if (info) {
        memset(info, 0, sizeof *info);
        info->damp = lambda;
        char grid[32];
        if (per_oc) snprintf(grid, sizeof grid, "per-OC");
        else if (!axis_in && g == m) snprintf(grid, sizeof grid, "per-IC");
        else snprintf(grid, sizeof grid, "g%d%s", g, axis_in ? "" : " along outputs");
        snprintf(info->scheme, sizeof info->scheme, "gptq %db %s %s%s%s%s", p->bits, p->sym ? "sym" : "asym", grid,
                 p->act_order ? " act-order" : "", stat ? " static" : "", p->clip ? " clip" : "");
    }
    rc = WMAT_OK;
    goto done;
fail:
    wmat_qresult_free(out);
done:
    wmat__free(H);
    wmat__free(Wk);
    wmat__free(U);
    wmat__free(E);
    wmat__free(perm);
    wmat__free(di);
    wmat__free(st_scale);
    wmat__free(st_zero);
    return rc;
}
