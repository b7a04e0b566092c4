/* Monarch projection (Dao et al. 2022, "Monarch: expressive structured
 * matrices", Theorem: the closed form of the best approximation). The
 * entries of W split into R x Q disjoint slabs, slab (j, r) = rows
 * p Q + j (p < P) x columns r S + s (s < S); a Monarch matrix is exactly a
 * matrix whose every slab has rank one (kind_monarch.c), so the Frobenius-
 * nearest one takes each slab's leading singular triple: w2[j, :, r] =
 * sqrt(sigma) u, w1[r, j, :] = sqrt(sigma) v. The SVDs run in double
 * (LAPACK through src/linalg) so that an exact Monarch input comes back to
 * float precision. */
#include "monarch.h"

#include "linalg/dense.h"

#include <math.h>

int wmat__monarch_project(const float *W, int64_t rows, int64_t cols, int64_t in_blocks, int64_t out_blocks,
                          wmat_tensor *out, double *rel_error)
{
    const int64_t R = in_blocks, Q = out_blocks;
    if (R < 1 || Q < 1 || R > cols || Q > rows || cols % R || rows % Q)
        return wmat_set_error(WMAT_ERR_INVALID, "monarch: %lld input and %lld output blocks do not divide a (%lld x %lld) matrix",
                              (long long)R, (long long)Q, (long long)rows, (long long)cols);
    const int64_t P = rows / Q, S = cols / R, k = P < S ? P : S;
    if (P > INT32_MAX / 2 || S > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "monarch: blocks of (%lld x %lld) are too large", (long long)P, (long long)S);
    double *A = wmat__malloc((size_t)(P * S) * sizeof(double));
    double *U = wmat__malloc((size_t)(P * k) * sizeof(double));
    double *VT = wmat__malloc((size_t)(k * S) * sizeof(double));
    double *sv = wmat__malloc((size_t)k * sizeof(double));
    float *w1 = wmat__malloc((size_t)(Q * cols) * sizeof(float)), *w2 = wmat__malloc((size_t)(R * rows) * sizeof(float));
    int rc = WMAT_OK;
    double total = 0, kept = 0;
    if (!A || !U || !VT || !sv || !w1 || !w2) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "monarch: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    for (int64_t j = 0; j < Q && !rc; j++)
        for (int64_t r = 0; r < R; r++) {
            for (int64_t p = 0; p < P; p++)
                for (int64_t s = 0; s < S; s++) {
                    const double v = W[(p * Q + j) * cols + r * S + s];
                    A[p * S + s] = v;
                    total += v * v;
                }
            if ((rc = wmat__dgesdd((int)P, (int)S, A, (int)S, sv, U, (int)k, VT, (int)S))) break;
            kept += sv[0] * sv[0];
            const double g = sqrt(sv[0]);
            for (int64_t p = 0; p < P; p++) w2[(j * P + p) * R + r] = (float)(g * U[p * k]);
            for (int64_t s = 0; s < S; s++) w1[(r * Q + j) * S + s] = (float)(g * VT[s]);
        }
    if (rc) goto done;
    void *obj = NULL;
    if ((rc = wmat__monarch_create(rows, cols, R, Q, w1, w2, &obj))) goto done;
    wmat__tensor_own_obj(out, rows, cols, obj);
    /* the slabs are disjoint: the residual is the sum of their tails */
    *rel_error = total > 0 ? sqrt(fmax(total - kept, 0.0) / total) : 0.0;
done:
    wmat__free(A);
    wmat__free(U);
    wmat__free(VT);
    wmat__free(sv);
    wmat__free(w1);
    wmat__free(w2);
    return rc;
}
