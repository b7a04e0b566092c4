#include "kernels.h"

#include <math.h>
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

void wmat__causal_softmax_rows(float *s, int T, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int t = 0; t < T; t++) {
        float *row = s + (size_t)t * T;
        wmat__softmax(row, t + 1);
        if (t + 1 < T) memset(row + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
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

/* 16 independent partial sums let the compiler vectorize without
 * -ffast-math; target_clones picks AVX-512 / AVX2+FMA at load time. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static float dot(const float *a, const float *b, int n)
{
    float acc[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) acc[k] += a[j + k] * b[j + k];
    float s = 0.0f;
    for (int k = 0; k < 16; k++) s += acc[k];
    for (; j < n; j++) s += a[j] * b[j];
    return s;
}

void wmat__matvec(float *out, const float *W, const float *x, int rows, int cols, int n_threads)
{
    /* Threads only pay off above ~64K multiply-adds (fork/join costs ~µs). */
    const long work = (long)rows * cols;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (work >= 65536)
    for (int r = 0; r < rows; r++) out[r] = dot(W + (size_t)r * cols, x, cols);
}
