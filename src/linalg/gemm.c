/* Placeholder GEMM: plain OpenBLAS. Issue 6 replaces this with run-time
 * backend selection (oneDNN, tuned OpenBLAS, reference). */
#include "../core/internal.h"

#include <cblas.h>

int wmat_linalg_init(int n_threads)
{
    (void)n_threads;
    return WMAT_OK;
}
int wmat_gemm_set_backend(wmat_gemm_backend b) { return b == WMAT_GEMM_AUTO || b == WMAT_GEMM_OPENBLAS ? WMAT_OK : WMAT_ERR_UNSUPPORTED; }
wmat_gemm_backend wmat_gemm_get_backend(void) { return WMAT_GEMM_OPENBLAS; }
const char *wmat_gemm_backend_name(wmat_gemm_backend b) { return b == WMAT_GEMM_OPENBLAS ? "openblas" : "auto"; }
int wmat_gemm_backend_available(wmat_gemm_backend b) { return b == WMAT_GEMM_OPENBLAS; }

void wmat_sgemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}
