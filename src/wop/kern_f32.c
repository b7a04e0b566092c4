#include "kern_f32.h"

#include "wop.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KF_X86 1
#endif

/* 64 independent partial sums (four AVX-512 or eight AVX2 registers) hide
 * the FMA latency and let the compiler vectorize without -ffast-math;
 * target_clones picks AVX-512 / AVX2+FMA at load time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
float wmat__dot(const float *a, const float *b, int n)
{
    float acc[64] = {0};
    int j = 0;
    for (; j + 64 <= n; j += 64)
        for (int k = 0; k < 64; k++) acc[k] += a[j + k] * b[j + k];
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[j + k] * b[j + k];
    for (int k = 0; k < 16; k++) acc[k] += acc[k + 16] + acc[k + 32] + acc[k + 48];
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

#ifdef KF_X86
/* One row at a time, W read strictly in address order. Rows of 256..4096
 * floats follow each other in memory, so a decode step's matvecs are one
 * long stream that the hardware prefetchers follow; interleaving four rows
 * (four streams 1 KB apart, sharing each load of x) measured 1.5x slower on
 * mix4m (x stays in L1 either way). The lane of every product depends only
 * on its column, never on the row's address, so a model gives the same bits
 * wherever its weights lie (mapped 28 bytes off a line from a llama2.c file,
 * or aligned in memory); peeling to a line boundary first measured no faster
 * on this path. A masked step takes the tail. */
__attribute__((target("avx512f"))) static void matvec_rows_avx512(float *out, const float *W, const float *x, int r0,
                                                                  int r1, int cols, int accumulate)
{
    for (int r = r0; r < r1; r++) {
        const float *w = W + (size_t)r * cols;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        int j = 0;
        for (; j + 64 <= cols; j += 64) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(x + j), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 16), _mm512_loadu_ps(x + j + 16), a1);
            a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 32), _mm512_loadu_ps(x + j + 32), a2);
            a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j + 48), _mm512_loadu_ps(x + j + 48), a3);
        }
        for (; j + 16 <= cols; j += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + j), _mm512_loadu_ps(x + j), a0);
        if (j < cols) {
            const __mmask16 m = (__mmask16)((1u << (cols - j)) - 1);
            a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + j), _mm512_maskz_loadu_ps(m, x + j), a1);
        }
        const float d = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
        out[r] = accumulate ? out[r] + d : d;
    }
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

/* matvec_rows_avx512's twin: one row at a time, a masked tail. */
__attribute__((target("avx2,fma"))) static void matvec_rows_avx2(float *out, const float *W, const float *x, int r0,
                                                                  int r1, int cols, int accumulate)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int r = r0; r < r1; r++) {
        const float *w = W + (size_t)r * cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int j = 0;
        for (; j + 32 <= cols; j += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 8), _mm256_loadu_ps(x + j + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 16), _mm256_loadu_ps(x + j + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 24), _mm256_loadu_ps(x + j + 24), a3);
        }
        for (; j + 8 <= cols; j += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a0);
        if (j < cols) {
            const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - j), lane);
            a1 = _mm256_fmadd_ps(_mm256_maskload_ps(w + j, m), _mm256_maskload_ps(x + j, m), a1);
        }
        const float d = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        out[r] = accumulate ? out[r] + d : d;
    }
}
#endif

static void matvec_rows_ref(float *out, const float *W, const float *x, int r0, int r1, int cols, int accumulate)
{
    for (int r = r0; r < r1; r++) {
        float d = wmat__dot(W + (size_t)r * cols, x, cols);
        out[r] = accumulate ? out[r] + d : d;
    }
}


void wmat__f32_rows(float *out, const float *W, const float *x, int r0, int r1, int cols, int accumulate, int isa)
{
#ifdef KF_X86
    if (isa >= WMAT_ISA_AVX512) {
        matvec_rows_avx512(out, W, x, r0, r1, cols, accumulate);
        return;
    }
    if (isa >= WMAT_ISA_AVX2) {
        matvec_rows_avx2(out, W, x, r0, r1, cols, accumulate);
        return;
    }
#endif
    (void)isa;
    matvec_rows_ref(out, W, x, r0, r1, cols, accumulate);
}
