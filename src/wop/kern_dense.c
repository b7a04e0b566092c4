/* Placeholder reference kernels (replaced by the SIMD versions). */
#include "kern_dense.h"

#include "linalg/linalg.h"

#include <string.h>

int wmat__isa_best(void)
{
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return WMAT_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return WMAT_ISA_AVX2;
#endif
    return WMAT_ISA_REF;
}

static size_t row_bytes(wmat_dtype dt, int64_t in) { return wmat_dtype_bytes(dt, (uint64_t)in); }

size_t wmat__wrow_prep_bytes(wmat_dtype dt, int64_t in) { (void)dt; return (size_t)in * sizeof(float); }
void wmat__wrow_prepare(wmat_dtype dt, const float *x, int64_t in, void *prep, int isa)
{
    (void)dt, (void)isa;
    memcpy(prep, x, (size_t)in * sizeof(float));
}

void wmat__wrow_dequant(wmat_dtype dt, const void *W, int64_t in, int64_t r0, int64_t nr, float *out)
{
    const unsigned char *w = (const unsigned char *)W + (size_t)r0 * row_bytes(dt, in);
    wmat_to_f32(out, w, dt, (uint64_t)(nr * in));
}

void wmat__wrow_dot(wmat_dtype dt, const void *W, int64_t in, const float *x, const void *prep, float *y, int64_t r0,
                    int64_t r1, int accumulate, int isa)
{
    (void)prep, (void)isa;
    float buf[1024];
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *w = (const unsigned char *)W + (size_t)r * row_bytes(dt, in);
        float acc = 0.0f;
        for (int64_t k0 = 0; k0 < in; k0 += 1024) {
            const int64_t n = in - k0 < 1024 ? in - k0 : 1024;
            wmat_to_f32(buf, w + row_bytes(dt, k0), dt, (uint64_t)n);
            for (int64_t k = 0; k < n; k++) acc += buf[k] * x[k0 + k];
        }
        y[r] = accumulate ? y[r] + acc : acc;
    }
}

size_t wmat__wtile_ws_bytes(wmat_dtype dt, int64_t rows, int64_t in, int T, int n_threads)
{
    (void)dt, (void)T, (void)n_threads;
    return (size_t)rows * (size_t)in * sizeof(float);
}

void wmat__wtile_forward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                         int accumulate, void *ws, int n_threads, int isa)
{
    (void)n_threads, (void)isa;
    wmat__wrow_dequant(dt, W, in, 0, rows, ws);
    wmat_sgemm(0, 1, T, (int)rows, (int)in, 1.0f, X, (int)in, ws, (int)in, accumulate ? 1.0f : 0.0f, Y, (int)rows);
}

void wmat__wtile_backward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *dY, float *dX, int T,
                          int accumulate, void *ws, int n_threads, int isa)
{
    (void)n_threads, (void)isa;
    wmat__wrow_dequant(dt, W, in, 0, rows, ws);
    wmat_sgemm(0, 0, T, (int)in, (int)rows, 1.0f, dY, (int)rows, ws, (int)in, accumulate ? 1.0f : 0.0f, dX, (int)in);
}
