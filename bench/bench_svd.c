/* A dense SVD through LAPACK (sgesdd, singular values and vectors), the
 * decomposition the analysis and factorization methods lean on. Run it under
 * OpenBLAS's generic kernels and under the tuned ones to see what the core
 * choice is worth (the core type is fixed when the library loads, so each
 * setting is its own process):
 *   OPENBLAS_CORETYPE=Prescott build/bench_svd 4096 --no-blas-tune
 *   build/bench_svd 4096
 * The result is checked: ||A - U S V^T||_F / ||A||_F must be small. */
#include "wmat.h"

#include "linalg/linalg.h"

#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int n = 2048;
    for (int i = 1; i < argc; i++)
        if (argv[i][0] != '-') n = atoi(argv[i]);
    wmat_blas_tune_reexec(argc, argv);
    wmat_linalg_init(0);
    printf("%s\n", wmat_linalg_status());
    wmat_rng rng;
    wmat_rng_seed(&rng, 1);
    float *A = malloc((size_t)n * n * 4), *A0 = malloc((size_t)n * n * 4), *S = malloc((size_t)n * 4);
    float *U = malloc((size_t)n * n * 4), *VT = malloc((size_t)n * n * 4);
    for (size_t i = 0; i < (size_t)n * n; i++) A0[i] = A[i] = wmat_rng_normal(&rng);
    int prev = wmat__blas_threads_begin(0);
    double t0 = now();
    int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', n, n, A, n, S, U, n, VT, n);
    double dt = now() - t0;
    /* check: U diag(S) V^T against A0 */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) U[(size_t)i * n + j] *= S[j];
    wmat_sgemm(0, 0, n, n, n, 1.0f, U, n, VT, n, -1.0f, A0, n);
    wmat__blas_threads_end(prev);
    double err = 0, nrm = 0;
    for (size_t i = 0; i < (size_t)n * n; i++) err += (double)A0[i] * A0[i];
    for (int i = 0; i < n; i++) nrm += (double)S[i] * S[i];
    printf("sgesdd %d x %d: %.2f s (info %d), relative reconstruction error %.2e %s\n", n, n, dt, info,
           sqrt(err / nrm), sqrt(err / nrm) < 1e-4 ? "ok" : "WRONG");
    free(A), free(A0), free(S), free(U), free(VT);
    return info != 0 || sqrt(err / nrm) >= 1e-4;
}
