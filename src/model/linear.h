/* A linear layer y = W x over whatever storage W has. The runtime calls only
 * these two entry points, so a new weight format (a packed quantized type)
 * plugs in by adding a case here and a kernel of its own, without touching
 * the forward pass. */
#ifndef WMAT_LINEAR_H
#define WMAT_LINEAR_H

#include "wmat.h"

/* 1 if the runtime can multiply by a weight stored as W->dtype. */
int wmat__linear_supported(const wmat_tensor *W);
/* Y (T, out) = X (T, in) W^T (+= when accumulate). */
void wmat__linear_batch(float *Y, const float *X, const wmat_tensor *W, int T, int accumulate, int n_threads);
/* y (out) = W x (+= when accumulate). */
void wmat__linear_vec(float *y, const float *x, const wmat_tensor *W, int accumulate, int n_threads);
/* y[i] = W[i] x for up to 4 weights sharing the input x (q/k/v, gate/up):
 * one parallel region when all are fp32, else one call each. */
void wmat__linear_vec_multi(int n, float *const *y, const float *x, const wmat_tensor *const *W, int n_threads);

#endif
