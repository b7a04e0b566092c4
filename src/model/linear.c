#include "linear.h"

#include "kernels.h"
#include "../quant/qstore.h"

#include <stdlib.h>

int wmat__linear_supported(const wmat_tensor *W) { return W->dtype == WMAT_F32 || W->dtype == WMAT_QPACKED; }

void wmat__linear_batch(float *Y, const float *X, const wmat_tensor *W, int T, int accumulate, int n_threads)
{
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    (void)n_threads; /* the GEMM layer applies the linalg thread policy */
    switch (W->dtype) {
    case WMAT_F32:
        wmat_sgemm(0, 1, T, out, in, 1.0f, X, in, (const float *)W->data, in, accumulate ? 1.0f : 0.0f, Y, out);
        return;
    case WMAT_QPACKED: /* packed quantized (src/quant/qkernels.c): tiles dequantized into a GEMM */
        wmat__qmatmul(Y, X, (const wmat_qtensor *)W->data, T, accumulate, n_threads);
        return;
    default: abort(); /* guarded by wmat__linear_supported at runtime creation */
    }
}

void wmat__linear_vec(float *y, const float *x, const wmat_tensor *W, int accumulate, int n_threads)
{
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    switch (W->dtype) {
    case WMAT_F32: wmat__matvec(y, (const float *)W->data, x, out, in, accumulate, n_threads); return;
    case WMAT_QPACKED: /* codes unpacked in registers, never dequantized to memory */
        wmat__qmatvec(y, x, (const wmat_qtensor *)W->data, accumulate, n_threads);
        return;
    default: abort();
    }
}

void wmat__linear_vec_multi(int n, float *const *y, const float *x, const wmat_tensor *const *W, int n_threads)
{
    int all_f32 = n <= 4;
    for (int i = 0; i < n && all_f32; i++)
        all_f32 = W[i]->dtype == WMAT_F32 && W[i]->shape[1] == W[0]->shape[1];
    if (!all_f32) {
        for (int i = 0; i < n; i++) wmat__linear_vec(y[i], x, W[i], 0, n_threads);
        return;
    }
    const float *w[4];
    int rows[4];
    for (int i = 0; i < n; i++) {
        w[i] = (const float *)W[i]->data;
        rows[i] = (int)W[i]->shape[0];
    }
    wmat__matvec_multi(n, y, w, rows, x, (int)W[0]->shape[1], 0, n_threads);
}
