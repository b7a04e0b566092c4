/* Pruning by magnitude, Wanda and SparseGPT (contract: prune.h).
 *
 * SparseGPT, as its reference implementation runs it (double precision
 * here, so that it can be held to a literal OBS implementation):
 *   dead inputs (H_jj = 0): H_jj = 1, W[:, j] = 0
 *   U = upper Cholesky factor of (H + lambda mean(diag H) I)^-1
 *   for each block of B columns [i1, i2):
 *     unstructured: prune the floor(s rows B) smallest w^2 / U_jj^2 of the block
 *     for i in block (rows in parallel):
 *       N:M: at a group's first column keep the n largest w^2 / U_jj^2 of the group
 *       q = mask ? w_i : 0; e = (w_i - q) / U_ii; W[:, i:i2] -= e U[i, i:i2]
 *     W[:, i2:] -= E_block U[i1:i2, i2:]            (lazy update, one GEMM)
 * Row i of U is row i of the inverse Hessian after the columns before i
 * were eliminated, divided by the square root of its diagonal, so e U[i, :]
 * is OBS's update w_i / [H^-1]_ii [H^-1]_i: with H^-1 downdated column by
 * column (tests/test_sparse.c checks exactly that). */
#include "prune.h"

#include "linalg/dense.h"
#include "wop/kern_sparse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int wmat__prune_check(const wmat_prune_params *p, int64_t cols)
{
    if (p->n > 0) {
        if (!(p->m == 4 || p->m == 8) || p->n >= p->m)
            return wmat_set_error(WMAT_ERR_INVALID, "prune: N:M is %d:%d (M is 4 or 8, 1 <= N < M)", p->n, p->m);
        if (cols % p->m)
            return wmat_set_error(WMAT_ERR_INVALID, "prune: %lld inputs are not a multiple of M = %d", (long long)cols, p->m);
        if (p->block > 0 && p->block % p->m)
            return wmat_set_error(WMAT_ERR_INVALID, "prune: block %d is not a multiple of M = %d", p->block, p->m);
    } else if (!(p->sparsity >= 0 && p->sparsity < 1)) {
        return wmat_set_error(WMAT_ERR_INVALID, "prune: sparsity %g is not in [0, 1)", p->sparsity);
    }
    if (p->block < 0 || !(p->damp >= 0)) return wmat_set_error(WMAT_ERR_INVALID, "prune: negative block or damping");
    return WMAT_OK;
}

/* Mask from scores (per row or per group), then W *= mask. */
static int prune_by_score(float *W, float *score, int64_t rows, int64_t cols, const wmat_prune_params *p, uint8_t *mask)
{
    if (p->n > 0) wmat__mask_nm(score, rows, cols, p->n, p->m, mask);
    else wmat__mask_row_topk(score, rows, cols, cols - (int64_t)floor(p->sparsity * (double)cols), mask);
    for (int64_t i = 0; i < rows * cols; i++)
        if (!mask[i]) W[i] = 0.0f;
    return WMAT_OK;
}

static int scored_prune(float *W, int64_t rows, int64_t cols, const double *x2, const wmat_prune_params *p, uint8_t *mask)
{
    int rc = wmat__prune_check(p, cols);
    if (rc) return rc;
    float *sc = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    if (!sc) return wmat_set_error(WMAT_ERR_NOMEM, "prune: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            sc[r * cols + c] = fabsf(W[r * cols + c]) * (x2 ? (float)sqrt(x2[c] > 0 ? x2[c] : 0.0) : 1.0f);
    rc = prune_by_score(W, sc, rows, cols, p, mask);
    wmat__free(sc);
    return rc;
}

int wmat__prune_magnitude(float *W, int64_t rows, int64_t cols, const wmat_prune_params *p, uint8_t *mask)
{
    return scored_prune(W, rows, cols, NULL, p, mask);
}

int wmat__prune_wanda(float *W, int64_t rows, int64_t cols, const double *x2, const wmat_prune_params *p, uint8_t *mask)
{
    if (!x2) return wmat_set_error(WMAT_ERR_INVALID, "Wanda needs the activation norms of the layer's %lld inputs", (long long)cols);
    return scored_prune(W, rows, cols, x2, p, mask);
}

/* ---- SparseGPT */

/* U (n, n), upper, with (H + lambda mean(diag) I)^-1 = U^T U; lambda x10
 * (up to 5 tries) while a factorization fails. GPTQ's procedure, in double. */
static int inverse_cholesky(const double *H, int64_t n, double *lambda, double *U)
{
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) mean += H[j * n + j];
    mean /= (double)n;
    if (!isfinite(mean)) return wmat_set_error(WMAT_ERR_NUMERIC, "SparseGPT: the Hessian has non-finite entries");
    for (int attempt = 0; attempt < 5; attempt++, *lambda *= 10.0) {
        memcpy(U, H, (size_t)(n * n) * sizeof(double));
        for (int64_t j = 0; j < n; j++) U[j * n + j] += *lambda * mean;
        int st = wmat__dpotrf_upper((int)n, U, (int)n);
        if (!st) st = wmat__dpotri_upper((int)n, U, (int)n);
        if (!st) st = wmat__dpotrf_upper((int)n, U, (int)n);
        if (st == WMAT_ERR_NUMERIC) continue;
        if (st) return st;
        int ok = 1;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) {
                if (j < i) U[i * n + j] = 0.0;
                else if (!isfinite(U[i * n + j])) ok = 0;
            }
        if (ok) return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_NUMERIC,
                          "SparseGPT: the Hessian of a %lld-input layer is not positive definite even with damping %g x "
                          "mean(diag); the calibration data may be degenerate",
                          (long long)n, *lambda / 10.0);
}

typedef struct {
    double s;
    int64_t i;
} scored;

static int cmp_asc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s < y->s ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int wmat__prune_sparsegpt(float *W, int64_t rows, int64_t cols, const double *H, const wmat_prune_params *p, uint8_t *mask,
                          double *damp_used)
{
    int rc = wmat__prune_check(p, cols);
    if (rc) return rc;
    if (!H) return wmat_set_error(WMAT_ERR_INVALID, "SparseGPT needs the Hessian of the layer's %lld inputs", (long long)cols);
    if (rows > INT32_MAX || cols > 46340) /* cols^2 doubles and int GEMM sizes */
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "SparseGPT: a (%lld x %lld) matrix is too large", (long long)rows, (long long)cols);
    const int64_t m = rows, n = cols;
    int B = p->block > 0 ? p->block : 128;
    if (p->n > 0 && B % p->m) B = p->m;
    if (B > n) B = (int)n;
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    double *Hc = wmat__malloc((size_t)(n * n) * sizeof(double));
    double *U = wmat__malloc((size_t)(n * n) * sizeof(double));
    double *Wd = wmat__malloc((size_t)(m * n) * sizeof(double));
    double *E = wmat__malloc((size_t)(m * B) * sizeof(double));
    scored *sel = p->n > 0 ? NULL : wmat__malloc((size_t)(m * B) * sizeof(scored));
    if (!Hc || !U || !Wd || !E || (p->n == 0 && !sel)) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "SparseGPT: out of memory for a (%lld x %lld) matrix", (long long)m, (long long)n);
        goto done;
    }
    memcpy(Hc, H, (size_t)(n * n) * sizeof(double));
    for (int64_t i = 0; i < m * n; i++) Wd[i] = W[i];
    for (int64_t j = 0; j < n; j++)
        if (Hc[j * n + j] == 0.0) { /* an input that is always 0: its weights do nothing */
            Hc[j * n + j] = 1.0;
            for (int64_t r = 0; r < m; r++) Wd[r * n + j] = 0.0;
        }
    double lambda = p->damp > 0 ? p->damp : 0.01;
    if ((rc = inverse_cholesky(Hc, n, &lambda, U))) goto done;
    if (damp_used) *damp_used = lambda;

    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
        if (p->n == 0) {
            /* the block's mask: the smallest w^2 / U_jj^2 over all its rows */
            for (int64_t r = 0; r < m; r++)
                for (int64_t j = 0; j < cnt; j++) {
                    const double w = Wd[r * n + i1 + j], d = U[(i1 + j) * n + i1 + j];
                    sel[r * cnt + j] = (scored){w * w / (d * d), r * cnt + j};
                    mask[r * n + i1 + j] = 1;
                }
            const int64_t k = (int64_t)floor(p->sparsity * (double)(m * cnt));
            if (k > 0) {
                qsort(sel, (size_t)(m * cnt), sizeof *sel, cmp_asc);
                for (int64_t t = 0; t < k; t++) mask[(sel[t].i / cnt) * n + i1 + sel[t].i % cnt] = 0;
            }
        }
#pragma omp parallel for num_threads(nt) schedule(static) if (m * cnt * cnt > 65536)
        for (int64_t r = 0; r < m; r++) {
            double *w = Wd + r * n;
            uint8_t *mk = mask + r * n;
            for (int64_t i = i1; i < i2; i++) {
                if (p->n > 0 && i % p->m == 0) {
                    /* keep the group's n largest w^2 / U_jj^2 (ties: the lower column) */
                    memset(mk + i, 0, (size_t)p->m);
                    for (int t = 0; t < p->n; t++) {
                        int64_t best = -1;
                        double bs = 0;
                        for (int64_t j = i; j < i + p->m; j++) {
                            const double d = U[j * n + j], sc = w[j] * w[j] / (d * d);
                            if (!mk[j] && (best < 0 || sc > bs)) best = j, bs = sc;
                        }
                        mk[best] = 1;
                    }
                }
                const double q = mk[i] ? w[i] : 0.0, e = (w[i] - q) / U[i * n + i];
                E[r * B + (i - i1)] = e;
                if (e != 0.0) {
                    const double *u = U + i * n;
                    for (int64_t j = i; j < i2; j++) w[j] -= e * u[j];
                }
                w[i] = q; /* exactly: the update above leaves it within rounding */
            }
        }
        if (i2 < n &&
            (rc = wmat__dgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0, E, B, U + i1 * n + i2, (int)n, 1.0, Wd + i2, (int)n)))
            goto done;
    }
    for (int64_t i = 0; i < m * n; i++) W[i] = mask[i] ? (float)Wd[i] : 0.0f;
done:
    wmat__free(Hc);
    wmat__free(U);
    wmat__free(Wd);
    wmat__free(E);
    wmat__free(sel);
    return rc;
}
