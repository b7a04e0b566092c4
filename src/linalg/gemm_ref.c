/* Portable reference GEMMs: blocked C loops, OpenMP over output tiles.
 *
 * Each output tile (MC rows, NC columns) is owned by one thread and
 * accumulated in a local buffer over K in KC-sized steps; the matching
 * panel of op(B) is copied into a contiguous (KC, NC) tile first so the
 * inner loop is a unit-stride axpy the compiler vectorizes. No heap
 * allocation: the tiles live on the stack (80 KiB per thread). On x86-64
 * GCC builds the tile kernels are compiled for AVX-512 and AVX2 as well and
 * picked at load time (target_clones), so the fallback is not scalar SSE2.
 */
#include "linalg.h"

#include <string.h>

#include <omp.h>

enum { MC = 32, NC = 128, KC = 128 };

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define WMAT_CLONES __attribute__((target_clones("arch=skylake-avx512", "arch=haswell", "default")))
#else
#define WMAT_CLONES
#endif

static inline int imin(int a, int b) { return a < b ? a : b; }

/* Element (i, k) of op(A) and (k, j) of op(B), row-major storage. */
#define OPA(A, ta, lda, i, k) ((ta) ? (A)[(size_t)(k) * (lda) + (i)] : (A)[(size_t)(i) * (lda) + (k)])
#define OPB(B, tb, ldb, k, j) ((tb) ? (B)[(size_t)(j) * (ldb) + (k)] : (B)[(size_t)(k) * (ldb) + (j)])

/* ---- fp32 */

WMAT_CLONES
static void sgemm_tile(int ta, int tb, int i0, int j0, int mc, int nc, int K, float alpha,
                       const float *A, int lda, const float *B, int ldb, float beta, float *C,
                       int ldc)
{
    float acc[MC][NC] __attribute__((aligned(64)));  // (mc, nc)
    float bt[KC][NC] __attribute__((aligned(64)));   // (kc, nc) panel of op(B)
    for (int i = 0; i < mc; i++) memset(acc[i], 0, sizeof(float) * (size_t)nc);
    for (int k0 = 0; k0 < K; k0 += KC) {
        int kc = imin(KC, K - k0);
        for (int k = 0; k < kc; k++)
            for (int j = 0; j < nc; j++) bt[k][j] = OPB(B, tb, ldb, k0 + k, j0 + j);
        for (int i = 0; i < mc; i++) {
            float *restrict ci = acc[i];
            for (int k = 0; k < kc; k++) {
                float a = OPA(A, ta, lda, i0 + i, k0 + k);
                const float *restrict bk = bt[k];
#pragma omp simd
                for (int j = 0; j < nc; j++) ci[j] += a * bk[j];
            }
        }
    }
    for (int i = 0; i < mc; i++) {
        float *c = C + (size_t)(i0 + i) * ldc + j0;
        if (beta == 0.0f)
            for (int j = 0; j < nc; j++) c[j] = alpha * acc[i][j];
        else
            for (int j = 0; j < nc; j++) c[j] = alpha * acc[i][j] + beta * c[j];
    }
}

/* C = beta * C, with beta == 0 writing zeros (BLAS: C is not read). */
static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(c, 0, sizeof(float) * (size_t)N);
        else if (beta != 1.0f)
            for (int j = 0; j < N; j++) c[j] *= beta;
    }
}

void wmat__sgemm_ref(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc, int n_threads)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    int mb = (M + MC - 1) / MC, nb = (N + NC - 1) / NC;
    int ntiles = mb * nb;
    int nt = n_threads < 1 ? 1 : n_threads;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1 && ntiles > 1 && !omp_in_parallel())
    for (int t = 0; t < ntiles; t++) {
        int i0 = (t / nb) * MC, j0 = (t % nb) * NC;
        sgemm_tile(ta, tb, i0, j0, imin(MC, M - i0), imin(NC, N - j0), K, alpha, A, lda, B, ldb,
                   beta, C, ldc);
    }
}

/* ---- int8 -> int32. One tile kernel per signedness of A; exact whenever
 * the true sums fit in int32, which is always the case for K <= 65536
 * (|a b| <= 255 * 128). */

#define DEFINE_I8_TILE(NAME, TA_T)                                                               \
    WMAT_CLONES                                                                                  \
    static void NAME(int ta, int tb, int i0, int j0, int mc, int nc, int K, const TA_T *A,       \
                     int lda, const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc)     \
    {                                                                                            \
        int32_t acc[MC][NC] __attribute__((aligned(64)));                                        \
        int32_t bt[KC][NC] __attribute__((aligned(64)));                                         \
        for (int i = 0; i < mc; i++) memset(acc[i], 0, sizeof(int32_t) * (size_t)nc);            \
        for (int k0 = 0; k0 < K; k0 += KC) {                                                     \
            int kc = imin(KC, K - k0);                                                           \
            for (int k = 0; k < kc; k++)                                                         \
                for (int j = 0; j < nc; j++) bt[k][j] = OPB(B, tb, ldb, k0 + k, j0 + j);         \
            for (int i = 0; i < mc; i++) {                                                       \
                int32_t *restrict ci = acc[i];                                                   \
                for (int k = 0; k < kc; k++) {                                                   \
                    int32_t a = OPA(A, ta, lda, i0 + i, k0 + k);                                 \
                    const int32_t *restrict bk = bt[k];                                          \
                    _Pragma("omp simd") for (int j = 0; j < nc; j++) ci[j] += a * bk[j];         \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (int i = 0; i < mc; i++) {                                                           \
            int32_t *c = C + (size_t)(i0 + i) * ldc + j0;                                        \
            if (accumulate)                                                                      \
                for (int j = 0; j < nc; j++) c[j] += acc[i][j];                                  \
            else                                                                                 \
                memcpy(c, acc[i], sizeof(int32_t) * (size_t)nc);                                 \
        }                                                                                        \
    }

DEFINE_I8_TILE(s8_tile, int8_t)
DEFINE_I8_TILE(u8_tile, uint8_t)

#define I8_DRIVER(TILE)                                                                          \
    do {                                                                                         \
        if (M <= 0 || N <= 0) return;                                                            \
        int mb = (M + MC - 1) / MC, nb = (N + NC - 1) / NC, ntiles = mb * nb;                    \
        int nt = n_threads < 1 ? 1 : n_threads;                                                  \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1 && ntiles > 1 && !omp_in_parallel())") \
        for (int t = 0; t < ntiles; t++) {                                                       \
            int i0 = (t / nb) * MC, j0 = (t % nb) * NC;                                          \
            TILE(ta, tb, i0, j0, imin(MC, M - i0), imin(NC, N - j0), K < 0 ? 0 : K, A, lda, B,   \
                 ldb, accumulate, C, ldc);                                                       \
        }                                                                                        \
    } while (0)

void wmat__gemm_s8s8s32_ref(int ta, int tb, int M, int N, int K, const int8_t *A, int lda,
                            const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc,
                            int n_threads)
{
    I8_DRIVER(s8_tile);
}

void wmat__gemm_u8s8s32_ref(int ta, int tb, int M, int N, int K, const uint8_t *A, int lda,
                            const int8_t *B, int ldb, int accumulate, int32_t *C, int ldc,
                            int n_threads)
{
    I8_DRIVER(u8_tile);
}
