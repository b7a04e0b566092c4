/* Truncated SVD: W ~ (U_r S_r) V_r^T, the best rank-r approximation in the
 * Frobenius norm (Eckart-Young), as WeLore and SVD-LLM start from. The SVD
 * runs in double (LAPACK's dgesdd through src/linalg) so that a full-rank
 * decomposition reproduces W to float precision. */
#include "decomp.h"

#include "linalg/dense.h"

#include <math.h>
#include <stdio.h>

const wmat_param_spec wmat__svd_keys[] = {
    {"rank", WMAT_PARAM_INT, "0", 0, 1 << 30, NULL,
     "components kept per matrix (capped at min(rows, cols)); 0: chosen by energy; wins over energy", NULL},
    {"energy", WMAT_PARAM_FLOAT, "0", 0, 1, NULL,
     "the fewest components whose squared singular values hold this share of sum s_i^2; 0: rank", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__decomp_svd_check(const wmat_pset *ps, int global)
{
    const int64_t rank = wmat__pset_int(ps, "rank");
    const double energy = wmat__pset_float(ps, "energy");
    if (rank == 0 && energy == 0) return wmat_set_error(WMAT_ERR_INVALID, "svd: give rank > 0 or energy in (0, 1]");
    if (global && rank > 0 && energy > 0)
        return wmat_set_error(WMAT_ERR_INVALID, "svd: rank=%lld and energy=%g exclude each other: give one", (long long)rank,
                              energy);
    return WMAT_OK;
}

int wmat__decomp_svd(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                     wmat_tensor *out, int64_t *rank_out, double *rel_error)
{
    const int64_t k = rows < cols ? rows : cols;
    const int64_t rank = wmat__pset_int(ps, "rank");
    /* in float, as the public field (wmat_decompose_params.energy) has
     * always held it: the same E picks the same rank from the CLI and the
     * library */
    const double energy = (float)wmat__pset_float(ps, "energy");
    if (rows > INT32_MAX / 2 || cols > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "svd: a (%lld x %lld) matrix is too large", (long long)rows, (long long)cols);
    double *A = wmat__malloc((size_t)(rows * cols) * sizeof(double));
    double *U = wmat__malloc((size_t)(rows * k) * sizeof(double));
    double *VT = wmat__malloc((size_t)(k * cols) * sizeof(double));
    double *s = wmat__malloc((size_t)k * sizeof(double));
    float *Af = NULL, *Bf = NULL;
    int rc = WMAT_OK;
    if (!A || !U || !VT || !s) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "svd: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    for (int64_t i = 0; i < rows * cols; i++) A[i] = W[i];
    if ((rc = wmat__dgesdd((int)rows, (int)cols, A, (int)cols, s, U, (int)k, VT, (int)cols))) goto done;
    double total = 0;
    for (int64_t i = 0; i < k; i++) total += s[i] * s[i];
    int64_t r = k;
    if (rank > 0) r = rank < k ? rank : k;
    else if (energy > 0 && energy < 1) {
        double acc = 0;
        for (r = 0; r < k && acc < energy * total; r++) acc += s[r] * s[r];
        if (r < 1) r = 1;
    }
    double tail = 0;
    for (int64_t i = r; i < k; i++) tail += s[i] * s[i];
    Af = wmat__malloc((size_t)(rows * r) * sizeof(float));
    Bf = wmat__malloc((size_t)(r * cols) * sizeof(float));
    if (!Af || !Bf) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "svd: out of memory for rank %lld factors", (long long)r);
        goto done;
    }
    /* A = U_r S_r (rows, r), B = V_r^T (r, cols): the scale sits in A, so B's
     * rows are orthonormal (and a quantized B later keeps a unit range) */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < r; j++) Af[i * r + j] = (float)(U[i * k + j] * s[j]);
    for (int64_t j = 0; j < r; j++)
        for (int64_t c = 0; c < cols; c++) Bf[j * cols + c] = (float)VT[j * cols + c];
    void *obj = NULL;
    if ((rc = wmat__lowrank_create(dtype, rows, cols, r, Af, Bf, &obj))) goto done;
    wmat__tensor_own_obj(out, rows, cols, obj);
    *rank_out = r;
    *rel_error = total > 0 ? sqrt(tail / total) : 0.0;
done:
    wmat__free(A);
    wmat__free(U);
    wmat__free(VT);
    wmat__free(s);
    wmat__free(Af);
    wmat__free(Bf);
    return rc;
}

int wmat__decomp_svd_rank(const float *W, int64_t rows, int64_t cols, int64_t rank, wmat_dtype dtype, wmat_tensor *out,
                          int64_t *rank_out, double *rel_error)
{
    wmat_pset sp;
    int rc = wmat__pset_init(&sp, wmat__svd_keys);
    if (rc) return rc;
    char kv[48];
    snprintf(kv, sizeof kv, "rank=%lld", (long long)rank);
    if (!(rc = wmat__pset_parse_kv(&sp, kv, ',', 0))) rc = wmat__decomp_svd(W, rows, cols, &sp, dtype, out, rank_out, rel_error);
    wmat__pset_free(&sp);
    return rc;
}
