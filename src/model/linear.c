#include "linear.h"

#include "kernels.h"

#include <stdlib.h>

int wmat__linear_supported(const wmat_tensor *W) { return W->dtype == WMAT_F32; }

void wmat__linear_batch(float *Y, const float *X, const wmat_tensor *W, int T, int accumulate, int n_threads)
{
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    (void)n_threads; /* the GEMM layer applies the linalg thread policy */
    switch (W->dtype) {
    case WMAT_F32:
        wmat_sgemm(0, 1, T, out, in, 1.0f, X, in, (const float *)W->data, in, accumulate ? 1.0f : 0.0f, Y, out);
        return;
    default: abort(); /* guarded by wmat__linear_supported at runtime creation */
    }
}

void wmat__linear_vec(float *y, const float *x, const wmat_tensor *W, int accumulate, int n_threads)
{
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    switch (W->dtype) {
    case WMAT_F32: wmat__matvec(y, (const float *)W->data, x, out, in, accumulate, n_threads); return;
    default: abort();
    }
}
