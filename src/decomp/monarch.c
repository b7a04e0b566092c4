/* Monarch projection (Dao et al. 2022, "Monarch: expressive structured
 * matrices": the closed form of the best approximation). The entries of W
 * split into R x Q disjoint slabs, slab (j, r) = rows p Q + j (p < P) x
 * columns r S + s (s < S); a Monarch matrix of slab rank K is exactly a
 * matrix whose every slab has rank <= K (kind_monarch.c), so the Frobenius-
 * nearest one takes each slab's K leading singular triples (Eckart-Young per
 * slab): w2[j, :, r, u] = sqrt(sigma_u) u_u, w1[r, j, u, :] = sqrt(sigma_u) v_u. The SVDs run in double
 * (LAPACK through src/linalg) so that an exact Monarch input comes back to
 * float precision. */
#include "monarch.h"

#include "linalg/dense.h"

#include <math.h>

int wmat__monarch_project(const float *W, int64_t rows, int64_t cols, int64_t in_blocks, int64_t out_blocks,
                          int64_t slab_rank, wmat_tensor *out, double *rel_error)
{
    const int64_t R = in_blocks, Q = out_blocks, K = slab_rank;
    if (R < 1 || Q < 1 || R > cols || Q > rows || cols % R || rows % Q)
        return wmat_set_error(WMAT_ERR_INVALID, "monarch: %lld input and %lld output blocks do not divide a (%lld x %lld) matrix",
                              (long long)R, (long long)Q, (long long)rows, (long long)cols);
    const int64_t P = rows / Q, S = cols / R, k = P < S ? P : S;
    if (K < 1 || K > k)
        return wmat_set_error(WMAT_ERR_INVALID, "monarch: slab rank %lld outside 1..%lld for blocks of (%lld x %lld)",
                              (long long)K, (long long)k, (long long)P, (long long)S);
    if (P > INT32_MAX / 2 || S > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "monarch: blocks of (%lld x %lld) are too large", (long long)P, (long long)S);
    double *A = wmat__malloc((size_t)(P * S) * sizeof(double));
    double *U = wmat__malloc((size_t)(P * k) * sizeof(double));
    double *VT = wmat__malloc((size_t)(k * S) * sizeof(double));
    double *sv = wmat__malloc((size_t)k * sizeof(double));
    float *w1 = wmat__malloc((size_t)(Q * K * cols) * sizeof(float)), *w2 = wmat__malloc((size_t)(R * K * rows) * sizeof(float));
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
            for (int64_t u = 0; u < K; u++) {
                kept += sv[u] * sv[u];
                const double g = sqrt(sv[u]);
                for (int64_t p = 0; p < P; p++) w2[((j * P + p) * R + r) * K + u] = (float)(g * U[p * k + u]);
                for (int64_t s = 0; s < S; s++) w1[((r * Q + j) * K + u) * S + s] = (float)(g * VT[u * S + s]);
            }
        }
    if (rc) goto done;
    void *obj = NULL;
    if ((rc = wmat__monarch_create(rows, cols, R, Q, K, w1, w2, &obj))) goto done;
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

/* ---- the decomposition method */

const wmat_param_spec wmat__monarch_keys[] = {
    {"blocks", WMAT_PARAM_INT, "4", 1, 1 << 20, NULL, "input and output blocks (each must divide the matrix's dimension)",
     NULL},
    {"slab_rank", WMAT_PARAM_INT, "0", 0, 1 << 20, NULL,
     "rank of each (output block, input block) slab; 1: the paper's Monarch class; 0: from share", NULL},
    {"share", WMAT_PARAM_FLOAT, "0.5", 0, 1, NULL, "with slab_rank 0: the largest slab rank storing at most this share of W",
     NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__decomp_monarch(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype, wmat_tensor *out,
                         int64_t *rank_out, double *rel_error)
{
    if (dtype != WMAT_F32) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "monarch: factors are f32 (--dtype f32)");
    const int64_t b = wmat__pset_int(ps, "blocks");
    int64_t K = wmat__pset_int(ps, "slab_rank");
    if (b > rows || b > cols || rows % b || cols % b)
        return wmat_set_error(WMAT_ERR_INVALID, "monarch: blocks=%lld does not divide a (%lld x %lld) matrix", (long long)b,
                              (long long)rows, (long long)cols);
    const int64_t kmax = rows / b < cols / b ? rows / b : cols / b;
    if (K == 0) {
        const double share = wmat__pset_float(ps, "share");
        K = (int64_t)(share * (double)rows * (double)cols / ((double)b * (double)(rows + cols)));
        if (K < 1) K = 1;
    }
    if (K > kmax) K = kmax;
    *rank_out = K;
    return wmat__monarch_project(W, rows, cols, b, b, K, out, rel_error);
}
