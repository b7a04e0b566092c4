/* Dense double-precision BLAS/LAPACK wrappers (dense.h). Each checks the
 * sizes the routine would reject itself: OpenBLAS's and LAPACKE's handlers
 * for an illegal argument print to the terminal, which the library must not
 * do, and a status names the problem better than their argument number. */
#include "dense.h"

#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>

static int at_least_1(int n) { return n > 1 ? n : 1; }

/* Whether a row-major matrix stored (rows, cols) fits leading dimension ld. */
static int ld_ok(int cols, int ld) { return ld >= at_least_1(cols); }

/* LAPACKE's answer as a status. info < 0 after our size checks is either
 * its own allocation failing (row-major copies, workspace) or its NaN check
 * rejecting the matrix argument. */
static int lapacke_status(const char *routine, lapack_int info, int n_rows, int n_cols, const char *positive)
{
    if (info == 0) return WMAT_OK;
    if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a %d x %d matrix", routine, n_rows, n_cols);
    if (info < 0)
        return wmat_set_error(WMAT_ERR_NUMERIC, "%s: argument %d rejected on a %d x %d matrix (a NaN entry?)",
                              routine, (int)-info, n_rows, n_cols);
    return wmat_set_error(WMAT_ERR_NUMERIC, "%s: %s (info %d) on a %d x %d matrix", routine, positive, (int)info,
                          n_rows, n_cols);
}

int wmat__dgemm(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda,
                const double *B, int ldb, double beta, double *C, int ldc)
{
    if (M < 0 || N < 0 || K < 0 || !ld_ok(trans_a ? M : K, lda) || !ld_ok(trans_b ? K : N, ldb) || !ld_ok(N, ldc))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "dgemm: bad sizes (M %d, N %d, K %d, trans %d/%d, lda %d, ldb %d, ldc %d)", M, N, K,
                              trans_a, trans_b, lda, ldb, ldc);
    wmat__blas_use_begin();
    cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
    wmat__blas_use_end();
    return WMAT_OK;
}

int wmat__dsyrk_upper(int trans, int N, int K, double alpha, const double *A, int lda, double beta, double *C,
                      int ldc)
{
    if (N < 0 || K < 0 || !ld_ok(trans ? N : K, lda) || !ld_ok(N, ldc))
        return wmat_set_error(WMAT_ERR_INVALID, "dsyrk: bad sizes (N %d, K %d, trans %d, lda %d, ldc %d)", N, K,
                              trans, lda, ldc);
    wmat__blas_use_begin();
    cblas_dsyrk(CblasRowMajor, CblasUpper, trans ? CblasTrans : CblasNoTrans, N, K, alpha, A, lda, beta, C, ldc);
    wmat__blas_use_end();
    return WMAT_OK;
}

int wmat__dpotrf_upper(int n, double *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "dpotrf: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("dpotrf", info, n, n, "not positive definite");
}

int wmat__dpotri_upper(int n, double *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "dpotri: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("dpotri", info, n, n, "singular: the factor has a zero on its diagonal");
}

/* The row-major upper triangle is the column-major lower one: asking
 * LAPACKE for that saves its transposed copies (n^2 each way, 254 MB for a
 * 5632-input Hessian in double). */
int wmat__dpotrf_upper_nc(int n, double *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "dpotrf: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dpotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("dpotrf", info, n, n, "not positive definite");
}

int wmat__dtrtri_upper(int n, double *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "dtrtri: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dtrtri(LAPACK_COL_MAJOR, 'L', 'N', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("dtrtri", info, n, n, "singular: zero on the diagonal");
}

int wmat__spotrf_upper(int n, float *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "spotrf: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_spotrf(LAPACK_COL_MAJOR, 'L', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("spotrf", info, n, n, "not positive definite");
}

int wmat__strtri_upper(int n, float *A, int lda)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "strtri: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_strtri(LAPACK_COL_MAJOR, 'L', 'N', (lapack_int)n, A, (lapack_int)lda);
    wmat__blas_use_end();
    return lapacke_status("strtri", info, n, n, "singular: zero on the diagonal");
}

int wmat__dsyevd_upper(int vectors, int n, double *A, int lda, double *w)
{
    if (n < 0 || !ld_ok(n, lda))
        return wmat_set_error(WMAT_ERR_INVALID, "dsyevd: bad sizes (n %d, lda %d)", n, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, vectors ? 'V' : 'N', 'U', (lapack_int)n, A, (lapack_int)lda, w);
    wmat__blas_use_end();
    return lapacke_status("dsyevd", info, n, n, "did not converge");
}

int wmat__dgesdd(int M, int N, double *A, int lda, double *s, double *U, int ldu, double *VT, int ldvt)
{
    const int r = M < N ? M : N, vectors = U != NULL;
    if (M < 0 || N < 0 || !ld_ok(N, lda) || (U == NULL) != (VT == NULL) || !ld_ok(vectors ? r : 1, ldu) ||
        !ld_ok(vectors ? N : 1, ldvt))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "dgesdd: bad arguments (M %d, N %d, lda %d, U %s, ldu %d, VT %s, ldvt %d)", M, N, lda,
                              U ? "given" : "NULL", ldu, VT ? "given" : "NULL", ldvt);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, vectors ? 'S' : 'N', (lapack_int)M, (lapack_int)N, A,
                                     (lapack_int)lda, s, U, (lapack_int)ldu, VT, (lapack_int)ldvt);
    wmat__blas_use_end();
    return lapacke_status("dgesdd", info, M, N, "did not converge");
}

int wmat__dgeqrf(int M, int N, double *A, int lda, double *tau)
{
    if (M < 0 || N < 0 || !ld_ok(N, lda) || !tau)
        return wmat_set_error(WMAT_ERR_INVALID, "dgeqrf: bad arguments (M %d, N %d, lda %d)", M, N, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dgeqrf(LAPACK_ROW_MAJOR, (lapack_int)M, (lapack_int)N, A, (lapack_int)lda, tau);
    wmat__blas_use_end();
    return lapacke_status("dgeqrf", info, M, N, "failed");
}

int wmat__dorgqr(int M, int N, int K, double *A, int lda, const double *tau)
{
    if (M < 0 || N < 0 || N > M || K < 0 || K > N || !ld_ok(N, lda) || !tau)
        return wmat_set_error(WMAT_ERR_INVALID, "dorgqr: bad arguments (M %d, N %d, K %d, lda %d)", M, N, K, lda);
    wmat__blas_use_begin();
    lapack_int info = LAPACKE_dorgqr(LAPACK_ROW_MAJOR, (lapack_int)M, (lapack_int)N, (lapack_int)K, A, (lapack_int)lda, tau);
    wmat__blas_use_end();
    return lapacke_status("dorgqr", info, M, N, "failed");
}
