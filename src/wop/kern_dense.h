/* Kernels of the stored weight types f16, bf16, q8_0 and q4_0 (placeholder
 * reference versions; the SIMD kernels replace this file). */
#ifndef WMAT_KERN_DENSE_H
#define WMAT_KERN_DENSE_H

#include "core/internal.h"

#define WMAT_ISA_REF 0
#define WMAT_ISA_AVX2 2
#define WMAT_ISA_AVX512 3
int wmat__isa_best(void);
size_t wmat__wrow_prep_bytes(wmat_dtype dt, int64_t in);
void wmat__wrow_prepare(wmat_dtype dt, const float *x, int64_t in, void *prep, int isa);
void wmat__wrow_dot(wmat_dtype dt, const void *W, int64_t in, const float *x, const void *prep, float *y, int64_t r0,
                    int64_t r1, int accumulate, int isa);
size_t wmat__wtile_ws_bytes(wmat_dtype dt, int64_t rows, int64_t in, int T, int n_threads);
void wmat__wtile_forward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                         int accumulate, void *ws, int n_threads, int isa);
void wmat__wtile_backward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *dY, float *dX, int T,
                          int accumulate, void *ws, int n_threads, int isa);
void wmat__wrow_dequant(wmat_dtype dt, const void *W, int64_t in, int64_t r0, int64_t nr, float *out);

#endif
