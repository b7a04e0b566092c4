/* Dense double-precision BLAS and LAPACK (and the float Cholesky and
 * triangular inverse GPTQ can use) for the modules above linalg
 * (quantization, analysis): each wrapper calls exactly one OpenBLAS/LAPACKE
 * routine with the arguments it is given, so results are the library's,
 * bit for bit, and no other module includes cblas.h or lapacke.h.
 *
 * Row-major throughout, with explicit leading dimensions in the convention
 * of the GEMMs in linalg.h: op(A) is (M, K), stored (M, K) with lda >= K or,
 * when trans_a, (K, M) with lda >= M; likewise B and C.
 *
 * Each wrapper checks its sizes first (a bad size would reach the BLAS or
 * LAPACKE error handler, which prints), and returns WMAT_OK or a negative
 * status with the routine named in the message: WMAT_ERR_INVALID for bad
 * sizes, WMAT_ERR_NOMEM when LAPACKE cannot allocate its row-major copy or
 * workspace, WMAT_ERR_NUMERIC for a numerical failure (not positive
 * definite, singular, no convergence, NaN rejected by LAPACKE's check).
 *
 * Threads: these run on OpenBLAS's own thread count, which wmat keeps at one
 * (wmat__blas_threads_begin in linalg.h lends it more for long calls, and
 * each wrapper waits while another thread holds such a loan, so its result
 * never depends on someone else's). They may be called from inside an
 * OpenMP parallel region; an error message is then set on the calling
 * thread. */
#ifndef WMAT_LINALG_DENSE_H
#define WMAT_LINALG_DENSE_H

/* C (M, N) = alpha op(A) op(B) + beta C (dgemm). */
int wmat__dgemm(int trans_a, int trans_b, int M, int N, int K, double alpha, const double *A, int lda,
                const double *B, int ldb, double beta, double *C, int ldc);

/* Upper triangle of C (N, N) = alpha op(A) op(A)^T + beta C (dsyrk), op(A)
 * (N, K): A stored (N, K) with lda >= K or, when trans, (K, N) with
 * lda >= N. The strict lower triangle of C is not touched. */
int wmat__dsyrk_upper(int trans, int N, int K, double alpha, const double *A, int lda, double beta, double *C,
                      int ldc);

/* Cholesky factor in place (dpotrf, 'U'): A (n, n) = U^T U, U written over
 * the upper triangle; the strict lower triangle is not referenced.
 * WMAT_ERR_NUMERIC when A is not positive definite. */
int wmat__dpotrf_upper(int n, double *A, int lda);

/* Inverse from the Cholesky factor (dpotri, 'U'): A holds U from
 * wmat__dpotrf_upper; the upper triangle of (U^T U)^-1 replaces it.
 * WMAT_ERR_NUMERIC when U has a zero on its diagonal. */
int wmat__dpotri_upper(int n, double *A, int lda);

/* The same factor as wmat__dpotrf_upper without LAPACKE's transposed
 * copies (it asks for the column-major lower factor, which is the row-major
 * upper one); float order differs from wmat__dpotrf_upper's. */
int wmat__dpotrf_upper_nc(int n, double *A, int lda);

/* Inverse of the upper triangular A (n, n) in place (dtrtri, 'U', non-unit
 * diagonal); the strict lower triangle is not referenced. WMAT_ERR_NUMERIC
 * when A has a zero on its diagonal. */
int wmat__dtrtri_upper(int n, double *A, int lda);

/* Single-precision twins of wmat__dpotrf_upper_nc / wmat__dtrtri_upper
 * (spotrf, strtri), same contracts. These three and dtrtri ask LAPACKE for
 * the column-major lower triangle (the row-major upper one), which it
 * factors in place. */
int wmat__spotrf_upper(int n, float *A, int lda);
int wmat__strtri_upper(int n, float *A, int lda);

/* Eigenvalues of the symmetric A (n, n) given by its upper triangle, in
 * ascending order into w[n] (dsyevd, divide and conquer). With vectors, A's
 * columns become the orthonormal eigenvectors (column j for w[j]); without,
 * A is destroyed. */
int wmat__dsyevd_upper(int vectors, int n, double *A, int lda, double *w);

/* Singular values of A (M, N) in descending order into s[min(M, N)]
 * (dgesdd); A is destroyed. With U and VT both non-NULL the thin factors
 * too ('S'): U (M, min(M, N)) with ldu >= min(M, N), VT (min(M, N), N) with
 * ldvt >= N. Both NULL: values only ('N'; ldu and ldvt are passed on but
 * not used). One of them NULL is WMAT_ERR_INVALID. */
int wmat__dgesdd(int M, int N, double *A, int lda, double *s, double *U, int ldu, double *VT, int ldvt);

/* QR factorization in place (dgeqrf): A (M, N) = Q R, R over the upper
 * triangle, Q as min(M, N) Householder reflectors below it with their
 * scalars in tau[min(M, N)]. */
int wmat__dgeqrf(int M, int N, double *A, int lda, double *tau);

/* The first N columns of Q from dgeqrf's reflectors (dorgqr; N <= M, K
 * reflectors, K <= N), written over A: an orthonormal basis of the range
 * of the factored matrix (the randomized SVD's range finder). */
int wmat__dorgqr(int M, int N, int K, double *A, int lda, const double *tau);

#endif
