/* fp32 matrix-vector kernels shared by the f32 weight kind and the
 * runtime's decode (src/model/kernels.c), with AVX-512 and AVX2 paths and a
 * portable twin. */
#ifndef WMAT_KERN_F32_H
#define WMAT_KERN_F32_H

#include <stddef.h>

/* sum a[i] b[i], vectorized (not in run.c's summation order) */
float wmat__dot(const float *a, const float *b, int n);
/* out[r] (= or += when accumulate) W[r] . x for rows r0 <= r < r1 of W (rows of
 * `cols` floats), on the calling thread. isa: WMAT_ISA_* (src/wop/wop.h). */
void wmat__f32_rows(float *out, const float *W, const float *x, int r0, int r1, int cols, int accumulate, int isa);

#endif
