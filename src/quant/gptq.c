/* GPTQ (Frantar et al. 2022): quantize the columns of W one at a time and
 * push each column's rounding error onto the columns not yet quantized,
 * weighted by the inverse Hessian of the layer's output error,
 * H = 2 X X^T / N.
 *
 *   dead inputs (H_jj = 0): H_jj = 1, W[:, j] = 0
 *   act-order: columns by decreasing H_jj (perm), groups over permuted positions
 *   H += lambda mean(diag H) I, lambda = p->damp, times 10 while Cholesky fails
 *   The reference: U = upper Cholesky factor of H^-1 (H^-1 = U^T U), and
 *   for each block of B columns [i1, i2):
 *     for i in block: q = quant(w_i); e = (w_i - q) / U_ii;
 *                     W[:, i+1:i2] -= e U[i, i+1:i2]
 *     W[:, i2:] -= E_block U[i1:i2, i2:]          (lazy batch update, one GEMM)
 *   Here the same values without U (issue 20): with V = U^-1 (upper,
 *   H = V V^T) and D = W - Q, the loop's errors are E = D V (D = E U), so
 *   column j reaches quantization as w_j + sum_{k<j} d_k Vs_kj with
 *   Vs = V diag(V)^-1 (unit diagonal). Vs comes from one Cholesky,
 *   J R^T J with J H J = R^T R (J reverses the order), rows of R scaled by
 *   its diagonal: n^3/3 flops instead of the reference's Cholesky, inverse
 *   and Cholesky (4n^3/3), or Cholesky and triangular inverse (2n^3/3, the
 *   form this file used before and gwq / ggml's GPTQ use:
 *   wmat__gptq_factor). Kept with the statistics (st->fact) so q/k/v and
 *   gate/up, which share H, factor it once. The loop is left-looking:
 *   for each block [i1, i2): C = W[:, i1:i2] + D[:, :i1] Vs[:i1, i1:i2]
 *     (one GEMM), then for i in block: q = quant(c_i); d_i = w_i - q;
 *                     C[:, i+1:i2] += d_i Vs[i, i+1:i2]
 *   inside a block, the same split once more (sub-blocks of 16 columns, the
 *   rest of the block updated by a GEMM after each), so the per-column
 *   scalar work is m n 8 multiply-adds instead of m n 64. Only the order of
 *   float operations differs from the reference's loop (the literal test in
 *   tests/test_quant_methods.c). legacy keeps the right-looking loop on U.
 *
 * Grids: per-OC (group = cols): one scale per row from the whole W before
 * the loop. Groups along inputs: refitted from the current (error-fed)
 * columns when the loop enters a new group; the block size is chosen so a
 * group never straddles a block boundary (B = 128 when g divides 128, else
 * B = g), so the group's columns are fully updated when it is
 * fitted (the reference code fits from the lazily updated matrix and misses
 * the in-block updates of groups that start inside a block). Static groups:
 * from the original W; codes are then stored in the original column order
 * (no perm needed). Per-IC (axis OUT, AdaDim): column i's scales are fitted
 * from the current column i just before it is quantized. */
#include "methods.h"

#include "../linalg/dense.h"
#include "../linalg/linalg.h"

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

/* U (n, n) float, upper, with (H + lambda mean(diag) I)^-1 = U^T U. Raises
 * *lambda by 10x (up to 5 tries) when a factorization fails. */
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

/* The precision of the factorization when the caller does not ask (the
 * method key factor=double|float; docs/QUANT.md, "GPTQ at 1.1B scale", has
 * the measurements): double. float (the reference's precision) halves the
 * time of a 5632-input H but moved mix4m's 3-bit rows by up to 0.5%,
 * double by 0.07% at most. */
#define WMAT_GPTQ_FACT_DEFAULT 1

void wmat__gptq_fact_clear(wmat_gptq_fact *f)
{
    wmat__free(f->perm);
    wmat__free(f->U);
    memset(f, 0, sizeof *f);
}

/* A = J (H_perm + shift I) J, the row-major upper triangle (what the
 * wrappers factor), in double or float. Dead inputs (zero diagonal) read 1. */
static void fill_reversed(const double *H, int64_t n, const int32_t *perm, double shift, void *A, int f32, int nt)
{
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
    for (int64_t a = 0; a < n; a++) {
        const int64_t pa = perm[n - 1 - a];
        const double *h = H + pa * n;
        for (int64_t b = a; b < n; b++) {
            const int64_t pb = perm[n - 1 - b];
            double v = h[pb];
            if (a == b) v = (v == 0.0 ? 1.0 : v) + shift;
            if (f32) ((float *)A)[a * n + b] = (float)v;
            else ((double *)A)[a * n + b] = v;
        }
    }
}

/* ---- factoring H in its own storage (double precision, H symmetric):
 * the n x n copy the factorization would otherwise make (254 MB for a
 * 5632-wide input, the largest buffer of a GPTQ run beside H itself) is
 * not made. J P H P^T J is formed in place (a symmetric permutation),
 * and the wrappers factor and invert its upper triangle (row-major), which
 * is all LAPACK reads and writes there (uplo 'L' in column-major): its
 * strict lower triangle keeps J P H P^T J, and a saved diagonal the rest,
 * so a retry with more damping rebuilds the upper triangle from them, and
 * at the end H is put back bit for bit (the inverse permutation). The
 * matrix factored holds the same values as fill_reversed's copy, so U is
 * the same bytes. */

/* Square tiles for the transposed passes over H (two 32 KB tiles of
 * doubles stay in cache). */
#define SYM_TILE 64

/* Whether H equals its transpose bit for bit (then its strict lower
 * triangle can stand in for the upper one). */
static int bit_symmetric(const double *H, int64_t n, int nt)
{
    int sym = 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(&& : sym)
    for (int64_t i0 = 0; i0 < n; i0 += SYM_TILE)
        for (int64_t j0 = i0; j0 < n && sym; j0 += SYM_TILE) {
            const int64_t i1 = i0 + SYM_TILE < n ? i0 + SYM_TILE : n, j1 = j0 + SYM_TILE < n ? j0 + SYM_TILE : n;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0 > i + 1 ? j0 : i + 1; j < j1; j++)
                    if (memcmp(&H[i * n + j], &H[j * n + i], sizeof(double))) sym = 0;
        }
    return sym;
}

/* A's strict upper triangle <- its strict lower one, transposed. */
static void upper_from_lower(double *A, int64_t n, int nt)
{
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t i0 = 0; i0 < n; i0 += SYM_TILE)
        for (int64_t j0 = i0; j0 < n; j0 += SYM_TILE) {
            const int64_t i1 = i0 + SYM_TILE < n ? i0 + SYM_TILE : n, j1 = j0 + SYM_TILE < n ? j0 + SYM_TILE : n;
            for (int64_t i = i0; i < i1; i++)
                for (int64_t j = j0 > i + 1 ? j0 : i + 1; j < j1; j++) A[i * n + j] = A[j * n + i];
        }
}

/* A (n, n) <- its rows and columns in order s: A'[a][b] = A[s[a]][s[b]].
 * Rows move along the cycles of s (one row of scratch), then each row's
 * columns are gathered. row: n doubles, seen: n bytes. */
static void sym_permute(double *A, int64_t n, const int32_t *s, double *row, unsigned char *seen)
{
    const size_t rb = (size_t)n * sizeof(double);
    memset(seen, 0, (size_t)n);
    for (int64_t a0 = 0; a0 < n; a0++) {
        if (seen[a0]) continue;
        seen[a0] = 1;
        if (s[a0] == a0) continue;
        memcpy(row, A + a0 * n, rb);
        for (int64_t a = a0;;) {
            const int64_t next = s[a];
            seen[a] = 1;
            if (next == a0) {
                memcpy(A + a * n, row, rb);
                break;
            }
            memcpy(A + a * n, A + next * n, rb);
            a = next;
        }
    }
    for (int64_t a = 0; a < n; a++) {
        double *r = A + a * n;
        memcpy(row, r, rb);
        for (int64_t b = 0; b < n; b++) r[b] = row[s[b]];
    }
}

/* From the factored upper triangle A (row-major, float or double): with
 * inv, A holds R^-1 and U[i][j] = R^-1[n-1-j][n-1-i]; without, A holds R
 * and U is the unit factor V diag(V)^-1 of V[i][j] = R[n-1-j][n-1-i]
 * (V V^T = H), U[i][j] = R[n-1-j][n-1-i] / R[n-1-j][n-1-j]; j >= i, zero
 * below. In square tiles (the transposed reads stay in cache). 0: a
 * non-finite value. */
static int extract_u(const void *A, int f32, int inv, int64_t n, float *U, int nt)
{
    const float *Af = A;
    const double *Ad = A;
    int ok = 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; i++) memset(U + i * n, 0, (size_t)i * sizeof(float));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(&& : ok)
    for (int64_t j0 = 0; j0 < n; j0 += SYM_TILE) {
        const int64_t j1 = j0 + SYM_TILE < n ? j0 + SYM_TILE : n;
        for (int64_t i0 = 0; i0 < j1; i0 += SYM_TILE) {
            const int64_t i1 = i0 + SYM_TILE < n ? i0 + SYM_TILE : n;
            for (int64_t j = j0; j < j1; j++) {
                const int64_t a = n - 1 - j;
                const int64_t ie = i1 < j + 1 ? i1 : j + 1;
                if (f32) {
                    const float *row = Af + a * n;
                    const float sc = inv ? 1.0f : 1.0f / row[a];
                    for (int64_t i = i0; i < ie; i++) U[i * n + j] = inv ? row[n - 1 - i] : row[n - 1 - i] * sc;
                    if (!inv) U[j * n + j] = 1.0f;
                } else {
                    const double *row = Ad + a * n;
                    const double sc = inv ? 1.0 : 1.0 / row[a];
                    for (int64_t i = i0; i < ie; i++) U[i * n + j] = (float)(inv ? row[n - 1 - i] : row[n - 1 - i] * sc);
                    if (!inv) U[j * n + j] = 1.0f;
                }
                for (int64_t i = i0; i < ie; i++)
                    if (!isfinite(U[i * n + j])) ok = 0;
            }
        }
    }
    return ok;
}

/* Without act-order (perm the identity) J H J's upper triangle is H's
 * strict lower one read backwards, row by row: A[a][b] = H[n-1-a][n-1-b]
 * for b > a, written over H's upper triangle (the lower one stays as the
 * backup), the diagonal from d (H's, saved) with the damping. One pass of
 * contiguous reads and writes instead of the two symmetric permutations. */
static void reversed_upper(double *H, int64_t n, const double *d, double shift, int nt)
{
    /* writes only above the diagonal, reads only below it: rows in parallel */
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
    for (int64_t a = 0; a < n; a++) {
        double *row = H + a * n;
        const double *src = H + (n - 1 - a) * n + (n - 1);
        const double v = d[n - 1 - a];
        row[a] = (v == 0.0 ? 1.0 : v) + shift;
        for (int64_t b = a + 1; b < n; b++) row[b] = src[-b];
    }
}

/* The double factorization of H's damped, reordered copy, made in H's own
 * storage; H is as it was on return, whatever happened. want_inv: U (the
 * triangular inverse too), else the unit factor (extract_u). */
static int factor_in_place(double *H, int64_t n, const int32_t *perm, int want_inv, double mean, double *lambda,
                           float *U, int nt)
{
    int ident = 1;
    for (int64_t a = 0; a < n && ident; a++) ident = perm[a] == a;
    int32_t *s = wmat__malloc((size_t)n * sizeof(int32_t)), *inv = wmat__malloc((size_t)n * sizeof(int32_t));
    double *d = wmat__malloc((size_t)n * sizeof(double)), *row = wmat__malloc((size_t)n * sizeof(double));
    unsigned char *seen = wmat__malloc((size_t)n);
    int rc = WMAT_ERR_NUMERIC;
    if (!s || !inv || !d || !row || !seen) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
        goto out;
    }
    for (int64_t a = 0; a < n; a++) {
        s[a] = perm[n - 1 - a];
        inv[s[a]] = (int32_t)a;
    }
    if (ident) {
        for (int64_t a = 0; a < n; a++) d[a] = H[a * n + a]; /* H's own order */
    } else {
        sym_permute(H, n, s, row, seen); /* H = J P H P^T J */
        for (int64_t a = 0; a < n; a++) d[a] = H[a * n + a];
    }
    for (int attempt = 0; attempt < 5; attempt++, *lambda *= 10.0) {
        /* a failed Cholesky stops at the first bad pivot and has spoilt the
         * upper triangle: rebuilt from the lower one for the next damping */
        const double shift = *lambda * mean;
        if (ident) reversed_upper(H, n, d, shift, nt);
        else {
            if (attempt) upper_from_lower(H, n, nt);
            for (int64_t a = 0; a < n; a++) H[a * n + a] = (d[a] == 0.0 ? 1.0 : d[a]) + shift;
        }
        int st = wmat__dpotrf_upper_nc((int)n, H, (int)n);
        if (!st && want_inv) st = wmat__dtrtri_upper((int)n, H, (int)n);
        if (st == WMAT_ERR_NUMERIC) continue; /* more damping may cure it */
        if (st) {
            rc = st; /* out of memory: the wrapper's message stands */
            break;
        }
        if (!extract_u(H, 0, want_inv, n, U, nt)) continue;
        rc = WMAT_OK;
        break;
    }
    /* H back as it came */
    upper_from_lower(H, n, nt);
    for (int64_t a = 0; a < n; a++) H[a * n + a] = d[a];
    if (!ident) sym_permute(H, n, inv, row, seen);
out:
    wmat__free(s);
    wmat__free(inv);
    wmat__free(d);
    wmat__free(row);
    wmat__free(seen);
    return rc;
}

/* The same from a copy of H (float, or an H that is not symmetric). */
static int factor_copy(const double *H, int64_t n, const int32_t *perm, int f32, int want_inv, double mean,
                       double *lambda, float *U, int nt)
{
    void *A = wmat__malloc((size_t)(n * n) * (f32 ? sizeof(float) : sizeof(double)));
    if (!A)
        return wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory for a %lld x %lld Hessian", (long long)n,
                              (long long)n);
    int rc = WMAT_ERR_NUMERIC;
    for (int attempt = 0; attempt < 5; attempt++, *lambda *= 10.0) {
        /* a failed Cholesky stops at the first bad pivot and has spoilt A:
         * only A is rebuilt (from H) for the next damping, nothing else */
        fill_reversed(H, n, perm, *lambda * mean, A, f32, nt);
        int st = f32 ? wmat__spotrf_upper((int)n, A, (int)n) : wmat__dpotrf_upper_nc((int)n, A, (int)n);
        if (!st && want_inv) st = f32 ? wmat__strtri_upper((int)n, A, (int)n) : wmat__dtrtri_upper((int)n, A, (int)n);
        if (st == WMAT_ERR_NUMERIC) continue; /* more damping may cure it */
        if (st) {
            rc = st; /* out of memory: the wrapper's message stands */
            break;
        }
        if (!extract_u(A, f32, want_inv, n, U, nt)) continue;
        rc = WMAT_OK;
        break;
    }
    wmat__free(A);
    return rc;
}

static int gptq_factor(double *H, int64_t n, int act_order, int prec, int want_inv, int nt, double *lambda,
                       int32_t *perm, float *U)
{
    const int f32 = prec == 2;
    double mean = 0.0;
    for (int64_t j = 0; j < n; j++) mean += H[j * n + j] == 0.0 ? 1.0 : H[j * n + j];
    mean /= (double)n;
    if (!isfinite(mean)) return wmat_set_error(WMAT_ERR_NUMERIC, "GPTQ: the Hessian has non-finite entries");
    for (int64_t j = 0; j < n; j++) perm[j] = (int32_t)j;
    if (act_order) {
        diag_idx *di = wmat__malloc((size_t)n * sizeof *di);
        if (!di) return wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
        for (int64_t j = 0; j < n; j++) di[j] = (diag_idx){H[j * n + j] == 0.0 ? 1.0 : H[j * n + j], (int32_t)j};
        qsort(di, (size_t)n, sizeof *di, cmp_desc);
        for (int64_t j = 0; j < n; j++) perm[j] = di[j].i;
        wmat__free(di);
    }
    const int tok = wmat__blas_threads_begin(nt);
    const int rc = !f32 && bit_symmetric(H, n, nt) ? factor_in_place(H, n, perm, want_inv, mean, lambda, U, nt)
                                                   : factor_copy(H, n, perm, f32, want_inv, mean, lambda, U, nt);
    wmat__blas_threads_end(tok);
    if (rc == WMAT_ERR_NUMERIC)
        return wmat_set_error(WMAT_ERR_NUMERIC,
                              "GPTQ: the Hessian of a %lld-input layer is not positive definite even with damping "
                              "%g x mean(diag); the calibration data may be degenerate",
                              (long long)n, *lambda / 10.0);
    return rc;
}

int wmat__gptq_factor(double *H, int64_t n, int act_order, int prec, int nt, double *lambda, int32_t *perm, float *U)
{
    return gptq_factor(H, n, act_order, prec, 1, nt, lambda, perm, U);
}

int wmat__gptq_factor_unit(double *H, int64_t n, int act_order, int prec, int nt, double *lambda, int32_t *perm,
                           float *U)
{
    return gptq_factor(H, n, act_order, prec, 0, nt, lambda, perm, U);
}

void wmat__gptq_dead_inputs(double *H, float *W, int64_t m, int64_t n)
{
    for (int64_t j = 0; j < n; j++)
        if (H[j * n + j] == 0.0) {
            H[j * n + j] = 1.0;
            for (int64_t r = 0; r < m; r++) W[r * n + j] = 0.0f;
        }
}

void wmat__gptq_feedback(float *W, int64_t m, int64_t n, const float *U, int B, float *E, int nt, wmat_gptq_colq q,
                         void *user)
{
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
        /* rows are independent within a block */
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < m; r++) {
            float *w = W + r * n;
            for (int64_t i = i1; i < i2; i++) {
                const float e = (w[i] - q(user, r, i, w)) / U[i * n + i];
                E[r * B + (i - i1)] = e;
                const float *u = U + i * n;
                for (int64_t j = i + 1; j < i2; j++) w[j] -= e * u[j];
            }
        }
        if (i2 < n)
            wmat_sgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0f, E, B, U + i1 * n + i2, (int)n, 1.0f, W + i2, (int)n);
    }
}

void wmat__gptq_feedback_sub(float *W, int64_t m, int64_t n, const float *U, int B, int sub, float *E, int nt,
                             wmat_gptq_colq q, void *user)
{
    if (sub <= 0 || sub > B) sub = B;
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
        for (int64_t s1 = i1; s1 < i2; s1 += sub) {
            const int64_t s2 = s1 + sub < i2 ? s1 + sub : i2;
#pragma omp parallel for num_threads(nt) schedule(static)
            for (int64_t r = 0; r < m; r++) {
                float *w = W + r * n;
                float *e_r = E + r * B - i1;
                for (int64_t i = s1; i < s2; i++) {
                    const float e = (w[i] - q(user, r, i, w)) / U[i * n + i];
                    e_r[i] = e;
                    const float *u = U + i * n;
                    for (int64_t j = i + 1; j < s2; j++) w[j] -= e * u[j];
                }
            }
            if (s2 < i2)
                wmat_sgemm(0, 0, (int)m, (int)(i2 - s2), (int)(s2 - s1), -1.0f, E + (s1 - i1), B, U + s1 * n + s2,
                           (int)n, 1.0f, W + s2, (int)n);
        }
        if (i2 < n)
            wmat_sgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0f, E, B, U + i1 * n + i2, (int)n, 1.0f, W + i2, (int)n);
    }
}

/* GPTQ's own quantizer of one weight along the inputs (groups refitted as
 * the loop enters them, static or per-OC grids read). */
typedef struct {
    wmat_qresult *out;
    const wmat_qparams *p;
    int64_t n, gpr;
    int g, maxq, per_oc, stat;
    const int32_t *perm;
    const float *st_scale, *st_zero;
} gptq_in;

/* Column i of row r quantized; x points at its current value (and the
 * group's, x[0..g), when a group starts at i). */
static inline float gptq_in_at(const gptq_in *c, int64_t r, int64_t i, const float *x)
{
    const wmat_qparams *p = c->p;
    int64_t gi;
    if (c->per_oc) gi = r;
    else if (c->stat) gi = r * c->gpr + c->perm[i] / c->g;
    else {
        gi = r * c->gpr + i / c->g;
        if (i % c->g == 0)
            wmat__qfit(x, c->g, 1, NULL, 0, p->bits, p->sym, p->clip, 0, &c->out->scales[gi], &c->out->zeros[gi]);
    }
    const float s = c->stat ? c->st_scale[gi] : c->out->scales[gi], z = c->stat ? c->st_zero[gi] : c->out->zeros[gi];
    const uint8_t code = wmat__qcode(x[0], s, z, c->maxq);
    c->out->codes[r * c->n + i] = code;
    return s * ((float)code - z);
}

static float gptq_in_q(void *user, int64_t r, int64_t i, const float *w) { return gptq_in_at(user, r, i, w + i); }

/* Per-IC grids of one column: its gpc groups of g rows, read from x with
 * row stride ld (the weights, or the left-looking block's current values),
 * fitted into sc[0..gpc) and zc[0..gpc). */
static void fit_column(const float *x, int64_t ld, int64_t g, int64_t gpc, const wmat_qparams *p, float *sc, float *zc)
{
    for (int64_t k = 0; k < gpc; k++)
        wmat__qfit(x + k * g * ld, g, ld, NULL, 0, p->bits, p->sym, p->clip, 0, &sc[k], &zc[k]);
}

/* The left-looking loop's per-column work for GPTQ_RT rows at once: each
 * row is a serial chain (column i's value waits for the errors of the
 * columns before it), so one row at a time runs at the latency of a
 * divide, a round and a multiply-add per weight (~18 ns measured); across
 * rows the chains are independent, and a tile of rows in vector lanes runs
 * them side by side. cc, ww: [ns][GPTQ_RT] (column-major tiles) holding the
 * current values and the weights in, the errors d = w - q out; Vs: V's
 * diagonal sub-block (row stride ldv); sc, zc: each lane's grid. Each lane
 * is gptq_in_at's step (wmat__qcode, then the error) in the same order, so
 * the codes are the scalar loop's bit for bit. */
#define GPTQ_RT 16
#define GPTQ_SUB_MAX 16
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void quant_tile(int64_t ns, const float *Vs, int64_t ldv, float *cc, float *ww, const float *sc,
                       const float *zc, int maxq, uint8_t *cd)
{
    for (int64_t i = 0; i < ns; i++) {
        const float *ci = cc + i * GPTQ_RT;
        float *wi = ww + i * GPTQ_RT;
        uint8_t *ki = cd + i * GPTQ_RT;
        float di[GPTQ_RT];
        for (int t = 0; t < GPTQ_RT; t++) {
            ki[t] = wmat__qcode(ci[t], sc[t], zc[t], maxq);
            di[t] = wi[t] - sc[t] * ((float)ki[t] - zc[t]);
            wi[t] = di[t];
        }
        const float *v = Vs + i * ldv;
        for (int64_t j = i + 1; j < ns; j++) {
            const float vj = v[j];
            float *cj = cc + j * GPTQ_RT;
            for (int t = 0; t < GPTQ_RT; t++) cj[t] += di[t] * vj;
        }
    }
}

/* The column loop in its left-looking form (the file's comment), from the
 * unit factor V (upper, unit diagonal: wmat__gptq_factor_unit) instead of
 * the inverse factor U: column j reaches quantization as
 *     w_j + sum_{k<j} d_k V_kj,    d = w - q,
 * no triangular inverse, the same multiply-adds. For each block of B
 * columns [i1, i2): C = W[:, i1:i2] + D[:, :i1] V[:i1, i1:i2] (one GEMM,
 * K = i1), then column by column d_i = w_i - q(c_i), C[:, i+1:s2] += d_i
 * V[i, i+1:s2] inside sub-blocks of `sub` columns, a GEMM onto the rest of
 * the block after each. Wk: the weights in loop order, left holding D;
 * C: (m, B) scratch. A group fitted at i reads C's current values of
 * columns [i, i + g): g must divide B (or equal it) and sub divide g. */
static void gptq_left_in(float *Wk, int64_t m, int64_t n, const float *V, int B, int sub, float *C, int nt,
                         const gptq_in *qc, const float *T, float *X, float *F)
{
    if (sub <= 0 || sub > B) sub = B;
    if (sub > GPTQ_SUB_MAX) sub = GPTQ_SUB_MAX; /* quant_tile's tiles; the caller passes 16 or less */
    const int refit = !qc->per_oc && !qc->stat;
    const int64_t g = qc->g;
    for (int64_t i1 = 0; i1 < n; i1 += B) {
        const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < m; r++) memcpy(C + r * B, Wk + r * n + i1, (size_t)cnt * sizeof(float));
        if (i1 > 0) wmat_sgemm(0, 0, (int)m, (int)cnt, (int)i1, 1.0f, Wk, (int)n, V + i1, (int)n, 1.0f, C, B);
        for (int64_t s1 = i1; s1 < i2; s1 += sub) {
            const int64_t s2 = s1 + sub < i2 ? s1 + sub : i2;
            if (refit && s1 % g == 0) {
                /* the group's values as the reference's loop has them when
                 * it enters the group (its columns updated by every column
                 * before s1, not by each other): F = W_G + (C_G - W_G) T_G,
                 * T_G the inverse of V's unit diagonal block (see T) */
#pragma omp parallel for num_threads(nt) schedule(static)
                for (int64_t r = 0; r < m; r++)
                    for (int64_t l = 0; l < g; l++) {
                        const float w = Wk[r * n + s1 + l];
                        X[r * g + l] = C[r * B + (s1 - i1) + l] - w;
                        F[r * g + l] = w;
                    }
                wmat_sgemm(0, 0, (int)m, (int)g, (int)g, 1.0f, X, (int)g, T + (s1 / g) * g * g, (int)g, 1.0f, F, (int)g);
            }
            if (qc->stat) {
#pragma omp parallel for num_threads(nt) schedule(static)
                for (int64_t r = 0; r < m; r++) {
                    float *c = C + r * B, *d = Wk + r * n;
                    for (int64_t i = s1; i < s2; i++) {
                        const float di = d[i] - gptq_in_at(qc, r, i, c + (i - i1));
                        d[i] = di;
                        const float *v = V + i * n;
                        for (int64_t j = i + 1; j < s2; j++) c[j - i1] += di * v[j];
                    }
                }
            } else {
                /* one grid per row for the whole sub-block (sub divides g,
                 * or the block is the group), fitted where its group starts;
                 * GPTQ_RT rows at a time (quant_tile) */
#pragma omp parallel for num_threads(nt) schedule(static)
                for (int64_t r0 = 0; r0 < m; r0 += GPTQ_RT) {
                    const int64_t nr = r0 + GPTQ_RT < m ? GPTQ_RT : m - r0, ns = s2 - s1;
                    float cc[GPTQ_SUB_MAX * GPTQ_RT], ww[GPTQ_SUB_MAX * GPTQ_RT], sc[GPTQ_RT], zc[GPTQ_RT];
                    uint8_t cd[GPTQ_SUB_MAX * GPTQ_RT];
                    for (int64_t t = 0; t < GPTQ_RT; t++) {
                        if (t >= nr) {
                            /* padding lanes: a harmless grid on zeros */
                            sc[t] = 1.0f;
                            zc[t] = 0.0f;
                            for (int64_t i = 0; i < ns; i++) cc[i * GPTQ_RT + t] = ww[i * GPTQ_RT + t] = 0.0f;
                            continue;
                        }
                        const int64_t r = r0 + t;
                        const int64_t gi = qc->per_oc ? r : r * qc->gpr + s1 / qc->g;
                        if (refit && s1 % g == 0)
                            wmat__qfit(F + r * g, g, 1, NULL, 0, qc->p->bits, qc->p->sym, qc->p->clip, 0,
                                       &qc->out->scales[gi], &qc->out->zeros[gi]);
                        sc[t] = qc->out->scales[gi];
                        zc[t] = qc->out->zeros[gi];
                        const float *c = C + r * B + (s1 - i1), *d = Wk + r * n + s1;
                        for (int64_t i = 0; i < ns; i++) {
                            cc[i * GPTQ_RT + t] = c[i];
                            ww[i * GPTQ_RT + t] = d[i];
                        }
                    }
                    quant_tile(ns, V + s1 * n + s1, n, cc, ww, sc, zc, qc->maxq, cd);
                    for (int64_t t = 0; t < nr; t++) {
                        float *d = Wk + (r0 + t) * n + s1;
                        uint8_t *code = qc->out->codes + (r0 + t) * n + s1;
                        for (int64_t i = 0; i < ns; i++) {
                            d[i] = ww[i * GPTQ_RT + t];
                            code[i] = cd[i * GPTQ_RT + t];
                        }
                    }
                }
            }
            if (s2 < i2)
                wmat_sgemm(0, 0, (int)m, (int)(i2 - s2), (int)(s2 - s1), 1.0f, Wk + s1, (int)n, V + s1 * n + s2, (int)n,
                           1.0f, C + (s2 - i1), B);
        }
    }
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
    /* the left-looking loop fits a group from the block's current values:
     * a group wider than the block makes the block (legacy keeps B) */
    if (!p->legacy && axis_in && !per_oc && !stat && g > B) B = g;
    if (B > n) B = (int)n;

    const int legacy = p->legacy;
    const int prec = p->fact_prec == 1 || p->fact_prec == 2 ? p->fact_prec : WMAT_GPTQ_FACT_DEFAULT;
    const float damp = p->damp > 0 ? p->damp : 0.01f;
    double *H = NULL;
    float *Wk = wmat__malloc((size_t)(m * n) * sizeof(float));
    float *E = wmat__malloc((size_t)(m * B) * sizeof(float));
    int32_t *perm = NULL;
    float *U = NULL;
    diag_idx *di = NULL;
    float *st_scale = NULL, *st_zero = NULL;
    float *Tg = NULL, *Xg = NULL, *Fg = NULL;
    wmat_gptq_fact local;
    memset(&local, 0, sizeof local);
    /* the factorization: the statistics' shared one when it was made with
     * these settings, else made now (and kept there for the next matrix) */
    wmat_gptq_fact *fact = !legacy && st->fact ? st->fact : &local;
    if (fact->valid && (fact->damp != damp || fact->act_order != !!p->act_order || fact->prec != prec))
        wmat__gptq_fact_clear(fact);
    if (!Wk || !E) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
        goto fail;
    }
    const double t_fact = wmat__now();
    double fact_s = 0.0;
    if (!fact->valid) {
        fact->perm = wmat__malloc((size_t)n * sizeof(int32_t));
        fact->U = wmat__malloc((size_t)(n * n) * sizeof(float));
        if (!fact->perm || !fact->U) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory for a %lld x %lld Hessian", (long long)n,
                                (long long)n);
            goto fail;
        }
        fact->lambda = damp;
        if (legacy) {
            /* the first sessions' path, for benches: H copied and permuted,
             * Cholesky, inverse and Cholesky in double on one thread */
            H = wmat__malloc((size_t)(n * n) * sizeof(double));
            di = wmat__malloc((size_t)n * sizeof(diag_idx));
            if (!H || !di) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
                goto fail;
            }
            memcpy(H, st->H, (size_t)(n * n) * sizeof(double));
            for (int64_t j = 0; j < n; j++)
                if (H[j * n + j] == 0.0) H[j * n + j] = 1.0;
            for (int64_t j = 0; j < n; j++) fact->perm[j] = (int32_t)j;
            if (p->act_order) {
                for (int64_t j = 0; j < n; j++) di[j] = (diag_idx){H[j * n + j], (int32_t)j};
                qsort(di, (size_t)n, sizeof *di, cmp_desc);
                for (int64_t j = 0; j < n; j++) fact->perm[j] = di[j].i;
                double *H2 = wmat__malloc((size_t)(n * n) * sizeof(double));
                if (!H2) {
                    rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
                    goto fail;
                }
                for (int64_t a = 0; a < n; a++)
                    for (int64_t b = 0; b < n; b++) H2[a * n + b] = H[(int64_t)fact->perm[a] * n + fact->perm[b]];
                wmat__free(H);
                H = H2;
            }
            rc = wmat__gptq_inverse_cholesky(H, n, &fact->lambda, fact->U);
        } else {
            rc = wmat__gptq_factor_unit(st->H, n, p->act_order, prec, nt, &fact->lambda, fact->perm, fact->U);
        }
        if (rc) goto fail;
        fact->valid = 1;
        fact->damp = damp;
        fact->act_order = !!p->act_order;
        fact->prec = prec;
        fact_s = wmat__now() - t_fact;
    }
    perm = fact->perm;
    U = fact->U;
    double lambda = fact->lambda;
    if ((rc = wmat_qresult_alloc(out, p->bits, p->sym, p->axis, g, m, n, use_perm))) goto fail;
    memcpy(Wk, W0, (size_t)(m * n) * sizeof(float));
    /* dead inputs (H_jj = 0): their weights never matter */
    for (int64_t j = 0; j < n; j++)
        if (st->H[j * n + j] == 0.0)
            for (int64_t r = 0; r < m; r++) Wk[r * n + j] = 0.0f;

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
                fit_column(Wk + c, n, g, m / g, p, &st_scale[c * (m / g)], &st_zero[c * (m / g)]);
        }
    }

    /* act-order: the columns of W in perm's order */
    if (p->act_order) {
#pragma omp parallel num_threads(nt)
        {
            float *row = wmat__malloc((size_t)n * sizeof(float));
#pragma omp for schedule(static)
            for (int64_t r = 0; r < m; r++) {
                if (!row) continue;
                for (int64_t j = 0; j < n; j++) row[j] = Wk[r * n + perm[j]];
                memcpy(Wk + r * n, row, (size_t)n * sizeof(float));
            }
            if (!row) {
#pragma omp atomic write
                rc = WMAT_ERR_NOMEM;
            }
            wmat__free(row);
        }
        if (rc) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
            goto fail;
        }
    }

    /* per-OC: one grid per row from the whole (dead-zeroed) W */
    if (per_oc)
        for (int64_t r = 0; r < m; r++)
            wmat__qfit(Wk + r * n, n, 1, NULL, 0, p->bits, p->sym, p->clip, 0, &out->scales[r], &out->zeros[r]);

    const int64_t gpr = axis_in ? n / g : 0, gpc = axis_in ? 0 : m / g;
    if (axis_in) {
        gptq_in qc = {out, p, n, gpr, g, maxq, per_oc, stat, perm, st_scale, st_zero};
        /* groups refitted inside a block start on a sub-block boundary */
        int sub = legacy ? B : 16;
        if (!per_oc && !stat && g < B)
            while (g % sub) sub /= 2;
        if (legacy) wmat__gptq_feedback_sub(Wk, m, n, U, B, sub, E, nt, gptq_in_q, &qc);
        else {
            if (!per_oc && !stat) {
                /* groups refitted in the loop: T_k (g x g) = the inverse of
                 * V's unit upper diagonal block of group k (double sums) */
                Tg = wmat__malloc((size_t)(n * g) * sizeof(float));
                Xg = wmat__malloc((size_t)(m * g) * sizeof(float));
                Fg = wmat__malloc((size_t)(m * g) * sizeof(float));
                if (!Tg || !Xg || !Fg) {
                    rc = wmat_set_error(WMAT_ERR_NOMEM, "GPTQ: out of memory");
                    goto fail;
                }
#pragma omp parallel for num_threads(nt) schedule(static)
                for (int64_t k = 0; k < n / g; k++) {
                    const float *Vk = U + k * g * n + k * g;
                    float *Tk = Tg + k * g * g;
                    for (int64_t j = 0; j < g; j++) {
                        /* column j of T: T_jj = 1, T_lj = -sum_{l<q<=j} V_lq T_qj */
                        Tk[j * g + j] = 1.0f;
                        for (int64_t l = j + 1; l < g; l++) Tk[l * g + j] = 0.0f;
                        for (int64_t l = j - 1; l >= 0; l--) {
                            double acc = (double)Vk[l * n + j];
                            for (int64_t q = l + 1; q < j; q++) acc += (double)Vk[l * n + q] * Tk[q * g + j];
                            Tk[l * g + j] = (float)-acc;
                        }
                    }
                }
            }
            gptq_left_in(Wk, m, n, U, B, sub, E, nt, &qc, Tg, Xg, Fg);
        }
    } else if (legacy) {
        for (int64_t i1 = 0; i1 < n; i1 += B) {
            const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
            for (int64_t i = i1; i < i2; i++) {
                const int64_t c = perm[i];
                float *sc = stat ? st_scale + c * gpc : out->scales + (use_perm ? i : c) * gpc;
                float *zc = stat ? st_zero + c * gpc : out->zeros + (use_perm ? i : c) * gpc;
                if (!stat) fit_column(Wk + i, n, g, gpc, p, sc, zc);
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
            if (i2 < n)
                wmat_sgemm(0, 0, (int)m, (int)(n - i2), (int)cnt, -1.0f, E, B, U + i1 * n + i2, (int)n, 1.0f, Wk + i2,
                           (int)n);
        }
    } else {
        /* per-IC, left-looking (gptq_left_in): E holds the block's current
         * values, column i's scales are fitted from them */
        for (int64_t i1 = 0; i1 < n; i1 += B) {
            const int64_t i2 = i1 + B < n ? i1 + B : n, cnt = i2 - i1;
#pragma omp parallel for num_threads(nt) schedule(static) if (m * cnt > 65536)
            for (int64_t r = 0; r < m; r++) memcpy(E + r * B, Wk + r * n + i1, (size_t)cnt * sizeof(float));
            if (i1 > 0) wmat_sgemm(0, 0, (int)m, (int)cnt, (int)i1, 1.0f, Wk, (int)n, U + i1, (int)n, 1.0f, E, B);
            for (int64_t i = i1; i < i2; i++) {
                const int64_t c = perm[i];
                float *sc = stat ? st_scale + c * gpc : out->scales + (use_perm ? i : c) * gpc;
                float *zc = stat ? st_zero + c * gpc : out->zeros + (use_perm ? i : c) * gpc;
                if (!stat) fit_column(E + (i - i1), B, g, gpc, p, sc, zc);
                const float *v = U + i * n;
#pragma omp parallel for num_threads(nt) schedule(static) if (m * cnt > 65536)
                for (int64_t r = 0; r < m; r++) {
                    float *cr = E + r * B, *d = Wk + r * n;
                    const float s = sc[r / g], z = zc[r / g];
                    const uint8_t code = wmat__qcode(cr[i - i1], s, z, maxq);
                    out->codes[r * n + i] = code;
                    const float di = d[i] - s * ((float)code - z);
                    d[i] = di;
                    for (int64_t j = i + 1; j < i2; j++) cr[j - i1] += di * v[j];
                }
            }
        }
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
        info->factor_seconds = fact_s;
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
    if (!fact->valid) wmat__gptq_fact_clear(fact); /* a shared one half made */
    wmat_qresult_free(out);
done:
    wmat__gptq_fact_clear(&local);
    wmat__free(H);
    wmat__free(Wk);
    wmat__free(E);
    wmat__free(di);
    wmat__free(st_scale);
    wmat__free(st_zero);
    wmat__free(Tg);
    wmat__free(Xg);
    wmat__free(Fg);
    return rc;
}
