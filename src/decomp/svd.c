/* Truncated SVD: W ~ (U_r S_r) V_r^T, the best rank-r approximation in the
 * Frobenius norm (Eckart-Young), as WeLore and SVD-LLM start from. The SVD
 * runs in double (LAPACK's dgesdd through src/linalg) so that a full-rank
 * decomposition reproduces W to float precision. */
#include "decomp.h"

#include "linalg/dense.h"

#include <math.h>

int wmat__decomp_svd(const float *W, int64_t rows, int64_t cols, const wmat_dparams *p, wmat_tensor *out,
                     int64_t *rank_out, double *rel_error)
{
    const int64_t k = rows < cols ? rows : cols;
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
    if (p->rank > 0) r = p->rank < k ? p->rank : k;
    else if (p->energy > 0 && p->energy < 1) {
        double acc = 0;
        for (r = 0; r < k && acc < p->energy * total; r++) acc += s[r] * s[r];
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
    if ((rc = wmat__lowrank_create(p->dtype, rows, cols, r, Af, Bf, &obj))) goto done;
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
