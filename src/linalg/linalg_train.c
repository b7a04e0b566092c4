/* LAPACK for src/train (see linalg_train.h). */
#include "linalg_train.h"

#include "linalg.h"

#include <lapacke.h>

int wmat__train_svd_thin(int m, int n, float *A, int lda, float *S, float *U, int ldu, float *VT, int ldvt)
{
    const int k = m < n ? m : n;
    if (m <= 0 || n <= 0 || lda < n || ldu < k || ldvt < n)
        return wmat_set_error(WMAT_ERR_INVALID, "svd: bad shape %d x %d (lda %d, ldu %d, ldvt %d)", m, n, lda, ldu, ldvt);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, A, lda, S, U, ldu, VT, ldvt);
    wmat__blas_use_end();
    if (info != 0) return wmat_set_error(WMAT_ERR_NUMERIC, "svd: sgesdd failed on %d x %d (info %d)", m, n, (int)info);
    return WMAT_OK;
}

int wmat__train_orthonormalize(int m, int k, float *A, int lda, float *tau)
{
    if (k <= 0 || m < k || lda < k)
        return wmat_set_error(WMAT_ERR_INVALID, "qr: bad shape %d x %d (lda %d)", m, k, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, k, A, lda, tau);
    if (!info) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, k, k, A, lda, tau);
    wmat__blas_use_end();
    if (info != 0) return wmat_set_error(WMAT_ERR_NUMERIC, "qr: sgeqrf/sorgqr failed on %d x %d (info %d)", m, k, (int)info);
    return WMAT_OK;
}
