#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The float expressions follow llama2.c's run.c (sum in float, +eps, 1/sqrt)
 * so that decode reproduces its outputs. */
void wmat__rmsnorm_rows(float *out, const float *x, const float *w, int T, int n, float eps, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) schedule(static) if (T > 1)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * n;
        float *o = out + (size_t)t * n;
        float ss = 0.0f;
        for (int j = 0; j < n; j++) ss += xr[j] * xr[j];
        ss /= (float)n;
        ss += eps;
        ss = 1.0f / sqrtf(ss);
        for (int j = 0; j < n; j++) o[j] = w[j] * (ss * xr[j]);
    }
}

void wmat__softmax(float *x, int n)
{
    float max = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

/* exp(x) without branches so loops over it vectorize: x = n ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for e^r, 2^n through the exponent
 * bits. Relative error about 2 ulp on [-87, 88]; below -87 it returns ~0. */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = __builtin_roundf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return p * scale;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void softmax_fast(float *x, int n)
{
    float max = x[0];
    for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = exp_fast(x[i] - max);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void wmat__causal_softmax_rows(float *s, int T, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_threads > 1)
    for (int t = 0; t < T; t++) {
        float *row = s + (size_t)t * T;
        softmax_fast(row, t + 1);
        if (t + 1 < T) memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    }
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void swiglu_fast_span(float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = a[i];
        a[i] = v / (1.0f + exp_fast(-v)) * b[i];
    }
}

void wmat__swiglu_fast(float *a, const float *b, size_t n, int n_threads)
{
    const size_t chunk = 4096;
    const long n_chunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_chunks > 1)
    for (long c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
        swiglu_fast_span(a + lo, b + lo, len);
    }
}

void wmat__swiglu(float *a, const float *b, size_t n, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float v = a[i];
        v *= 1.0f / (1.0f + expf(-v));
        a[i] = v * b[i];
    }
}

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

void wmat__matvec(float *out, const float *W, const float *x, int rows, int cols, int accumulate, int n_threads)
{
    /* Threads only pay off above ~64K multiply-adds (fork/join costs ~µs). */
    const long work = (long)rows * cols;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (work >= 65536)
    for (int r = 0; r < rows; r++) {
        float d = wmat__dot(W + (size_t)r * cols, x, cols);
        out[r] = accumulate ? out[r] + d : d;
    }
}
