/* One-row products of ggml's block types (Q4_1, Q5_0, Q5_1, Q2_K..Q6_K,
 * IQ4_NL, IQ4_XS) with x prepared once per token as Q8_0 blocks
 * (kern_dense.h's layout), as llama.cpp computes them on CPUs: each 16- or
 * 32-value group of a weight row is an exact integer dot product with x's
 * int8 codes, scaled in float.
 *
 * Every type has a plain C twin and an AVX2 twin (AVX-512 runs the AVX2
 * code). The integer sums are exact; the twins differ only in the order of
 * the float additions, and tests/test_kern_ggml.c holds each to a double
 * reference. Layouts: src/core/ggml_kquants.c. */
#ifndef WMAT_KERN_GGML_H
#define WMAT_KERN_GGML_H

#include "wop.h"

#include <stdint.h>

/* Whether dt has a fused kernel here. */
int wmat__ggml_fused(wmat_dtype dt);

/* y[r] = dot(row r, x) (or y[r] += ... when acc) for r in [r0, r1); W holds
 * rows of `in` values of type dt (in a multiple of the type's block);
 * prep from wmat__wrow_prepare(WMAT_Q8_0, x, in, ...). */
void wmat__ggml_rows(wmat_dtype dt, const void *W, int64_t in, const void *prep, float *y, int64_t r0, int64_t r1,
                     int acc, int isa);

#endif
