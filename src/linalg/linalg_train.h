/* LAPACK calls the trainer needs (private; src/train's only way to LAPACK).
 * Row-major, explicit sizes and leading dimensions, status returns: an
 * error is WMAT_ERR_NUMERIC or WMAT_ERR_INVALID with the message set. The
 * workspaces are LAPACK's own (LAPACKE allocates them per call). */
#ifndef WMAT_LINALG_TRAIN_H
#define WMAT_LINALG_TRAIN_H

#include "../core/internal.h"

/* Thin SVD of A (m, n), lda >= n, with k = min(m, n): A is destroyed,
 * S (k) singular values in descending order, U (m, k) with ldu >= k,
 * VT (k, n) with ldvt >= n (divide and conquer, LAPACK sgesdd). */
int wmat__train_svd_thin(int m, int n, float *A, int lda, float *S, float *U, int ldu, float *VT, int ldvt);

/* Orthonormal basis of the columns of A (m, k), m >= k, lda >= k, in place
 * (Householder QR, sgeqrf then sorgqr); tau: k floats of scratch. */
int wmat__train_orthonormalize(int m, int k, float *A, int lda, float *tau);

#endif
