/* The machine's arithmetic ceiling, the yardstick of the batched (prompt)
 * benchmarks: fp32 FMA throughput per core and over N threads, measured
 * with independent accumulators in registers, and what wmat's GEMM reaches
 * on a prompt-sized linear layer in the same run.
 *
 *   bench_peak [--threads N] [--seconds S]
 *
 * Prints GFLOP/s (one FMA = 2 flops) and the GEMM as a fraction of the
 * peak. A batched forward cannot run faster than flops-per-token / peak:
 * scripts/bench-tinyllama.sh divides its prompt rates by this figure.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "linalg/linalg.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ACC 12 /* independent chains: latency 4-5 x 2 FMA ports, with room */
__attribute__((target("avx2,fma"))) static float fma_loop_avx2(long n, float seed)
{
    /* distinct starts, or the compiler folds identical chains into one */
#define S(i) _mm256_set1_ps(seed + 0.01f * (float)(i))
    __m256 a0 = S(0), a1 = S(1), a2 = S(2), a3 = S(3), a4 = S(4), a5 = S(5), a6 = S(6), a7 = S(7), a8 = S(8), a9 = S(9),
           a10 = S(10), a11 = S(11);
#undef S
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < n; i++) {
        a0 = _mm256_fmadd_ps(a0, b, c), a1 = _mm256_fmadd_ps(a1, b, c), a2 = _mm256_fmadd_ps(a2, b, c);
        a3 = _mm256_fmadd_ps(a3, b, c), a4 = _mm256_fmadd_ps(a4, b, c), a5 = _mm256_fmadd_ps(a5, b, c);
        a6 = _mm256_fmadd_ps(a6, b, c), a7 = _mm256_fmadd_ps(a7, b, c), a8 = _mm256_fmadd_ps(a8, b, c);
        a9 = _mm256_fmadd_ps(a9, b, c), a10 = _mm256_fmadd_ps(a10, b, c), a11 = _mm256_fmadd_ps(a11, b, c);
    }
    __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                             _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
    s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0];
}
static const double k_flops_per_iter = ACC * 8 * 2;
static int have_fma(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#else
static float fma_loop_avx2(long n, float seed) { (void)n; return seed; }
static const double k_flops_per_iter = 1;
static int have_fma(void) { return 0; }
#endif

/* Best of several timed runs of the FMA loop on `threads` threads at once. */
static double peak_gflops(int threads, double seconds)
{
    long n = 1 << 20;
    double best = 0, spent = 0;
    volatile float sink = 0;
    while (spent < seconds) {
        const double t0 = now();
#pragma omp parallel num_threads(threads)
        {
            float r = fma_loop_avx2(n, 0.001f * (float)omp_get_thread_num());
#pragma omp atomic
            sink += r;
        }
        const double dt = now() - t0;
        spent += dt;
        const double g = (double)n * k_flops_per_iter * threads / dt / 1e9;
        if (g > best) best = g;
        if (dt < 0.05) n *= 2;
    }
    (void)sink;
    return best;
}

static double gemm_gflops(wmat_gemm_backend b, int threads, int M, int N, int K, double seconds)
{
    float *A = malloc(sizeof(float) * (size_t)M * K), *B = malloc(sizeof(float) * (size_t)N * K);
    float *C = malloc(sizeof(float) * (size_t)M * N);
    if (!A || !B || !C) {
        free(A), free(B), free(C);
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++) B[i] = (float)(i % 5) * 0.1f;
    double best = 0, spent = 0;
    while (spent < seconds) {
        const double t0 = now();
        wmat__sgemm_cfg(b, threads, 0, 1, M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
        const double dt = now() - t0;
        spent += dt;
        const double g = 2.0 * M * N * K / dt / 1e9;
        if (g > best) best = g;
    }
    free(A), free(B), free(C);
    return best;
}

int main(int argc, char **argv)
{
    int threads = omp_get_max_threads();
    double seconds = 1.0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--threads N] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (!have_fma()) {
        printf("fp32 FMA peak: not measured (no AVX2+FMA on this CPU)\n");
        return 0;
    }
    wmat_linalg_init(threads);
    for (int t = 1; t <= threads; t = t == threads ? threads + 1 : (t * 2 > threads ? threads : t * 2)) {
        const double p = peak_gflops(t, seconds);
        printf("threads %d: fp32 FMA peak %.1f GFLOP/s\n", t, p);
        static const wmat_gemm_backend bk[] = {WMAT_GEMM_AUTO, WMAT_GEMM_OPENBLAS, WMAT_GEMM_ONEDNN};
        /* the linear layers of a 256-token prompt of TinyLlama-1.1B's shape */
        static const int shp[][3] = {{256, 2048, 2048}, {256, 256, 2048}, {256, 5632, 2048}, {256, 2048, 5632},
                                     {256, 32000, 2048}};
        printf("  %-22s %8s %8s %8s  (GFLOP/s, %% of peak)\n", "sgemm M x N x K (NT)", "auto", "openblas", "onednn");
        for (int s = 0; s < 5; s++) {
            char name[48];
            snprintf(name, sizeof name, "%dx%dx%d", shp[s][0], shp[s][1], shp[s][2]);
            printf("  %-22s", name);
            for (int b = 0; b < 3; b++) {
                const double g = gemm_gflops(bk[b], t, shp[s][0], shp[s][1], shp[s][2], seconds / 4);
                printf(" %5.1f %2.0f%%", g, 100.0 * g / p);
            }
            printf("\n");
        }
    }
    return 0;
}
