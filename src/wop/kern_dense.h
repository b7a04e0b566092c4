/* Kernels over weights kept in their stored type: dense f16 and bf16 rows,
 * and ggml's Q8_0 and Q4_0 blocks (layouts: src/core/ggml_quants.c).
 *
 * W is (rows, in), row-major in its stored type; a row of a block type is
 * in/32 blocks (in must be a multiple of 32). Every kernel exists three
 * times, picked by the `isa` argument (never by a global): plain C (the
 * reference twin), AVX2+FMA+F16C, and AVX-512 F/BW/VL (VNNI used for the
 * integer dot products where the CPU has it). An isa above what the CPU
 * runs is lowered to wmat__isa_best(). The twins differ only in summation
 * order; tests/test_kern_dense.c holds each to a double-precision reference.
 *
 * Nothing here allocates or spawns threads except the batched calls, which
 * split tiles over n_threads OpenMP threads and take their scratch from the
 * caller (ws).
 */
#ifndef WMAT_KERN_DENSE_H
#define WMAT_KERN_DENSE_H

#include "wop.h" /* the ISA levels */

#include <stddef.h>
#include <stdint.h>

/* ISA levels WMAT_ISA_REF (plain C), _AVX2 (AVX2 + FMA + F16C), _AVX512
 * (AVX-512 F/BW/VL, + VNNI where present): src/wop/wop.h. */

/* The best ISA level this CPU runs (detected once; the result
 * lives in a private atomic, nothing a caller can set). */
int wmat__isa_best(void);
/* Whether the AVX-512 level also has VNNI (its int8 dot products). */
int wmat__isa_has_vnni(void);

/* ---- decode: one input vector x (in) */

/* Bytes of prepared x for weights of type dt and width in. f16 / bf16 need
 * none (0: pass prep = NULL). Q8_0 and Q4_0 share one layout (the same
 * bytes serve both, so a caller may prepare once for a mixed model):
 *   float d[nb]   x's block scales, ggml's rule d = max|x| / 127 rounded
 *                 to fp16 as a Q8_0 block stores it (nb = in / 32)
 *   int32 s[nb]   the sum of the block's codes (Q4_0's offset term: 8 d s)
 *   int8  q[in]   codes, round(x / d) with ggml's reference rounding
 * (bit-equal to wmat__quantize_row_q8_0), each part 64-byte aligned from
 * the start of prep. */
size_t wmat__wrow_prep_bytes(wmat_dtype dt, int64_t in);
void wmat__wrow_prepare(wmat_dtype dt, const float *x, int64_t in, void *prep, int isa);

/* y[r] = dot(W row r, x) for r in [r0, r1), or y[r] += ... when
 * accumulate. f16 / bf16 read x; Q8_0 / Q4_0 read prep only (x may be
 * NULL): their result is the exact integer dot product of each block,
 * scaled by d_w * d_x and summed in float. No threads inside. */
void wmat__wrow_dot(wmat_dtype dt, const void *W, int64_t in, const float *x, const void *prep, float *y, int64_t r0,
                    int64_t r1, int accumulate, int isa);

/* Rows [r0, r1) of y = W x (on the calling thread) for a symmetric 4-bit
 * weight whose codes are Q4_0's nibbles in 16-byte chunks (row r at codes +
 * r row_bytes) and whose fp16 scales lie apart, one per 32 inputs (row r's
 * at scales + r in/32): wmat's packed 4-bit groups of 32 along inputs.
 * prep as wmat__wrow_prepare(WMAT_Q4_0, ...) makes it. */
void wmat__q4s_rows(const uint8_t *codes, size_t row_bytes, const uint16_t *scales, int64_t in, const void *prep,
                    float *y, int64_t r0, int64_t r1, int accumulate, int isa);

/* ---- batched: T input rows */

/* Workspace of the two batched calls below (bytes, 64-byte aligned
 * inside): one fp32 tile per thread. */
size_t wmat__wtile_ws_bytes(wmat_dtype dt, int64_t rows, int64_t in, int T, int n_threads);
/* bf16 W on the bf16 GEMM of `gemm`: X rounded to bf16 into ws (of
 * wmat__wtile_ws_bytes(WMAT_BF16, ...)), one product over all of W. What the
 * batched forward takes where that GEMM is native; its error is X's
 * rounding (2^-9 relative per element). A status: nonzero leaves Y as it was. */
int wmat__wtile_forward_bf16(const uint16_t *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                             int accumulate, void *ws, int n_threads, wmat_gemm_backend gemm);
/* Y (T, rows) = X (T, in) W^T, or Y += ... when accumulate. Tiles of W
 * rows are dequantized into ws (sized to stay in L2) and multiplied with
 * the GEMM backend `gemm` (AUTO: the process default); threads take whole
 * tiles. With several tiles and n_threads > 1 the GEMMs run inside a
 * parallel region (one thread each); otherwise each GEMM runs on n_threads
 * threads itself. */
void wmat__wtile_forward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                         int accumulate, void *ws, int n_threads, int isa, wmat_gemm_backend gemm);
/* dX (T, in) = dY (T, rows) W, or dX += ... when accumulate. Threads take
 * disjoint column blocks of dX (no reduction between threads). */
void wmat__wtile_backward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *dY, float *dX, int T,
                          int accumulate, void *ws, int n_threads, int isa, wmat_gemm_backend gemm);

/* Rows r0..r0+nr-1 of W as fp32 into out (nr, in), with wmat_to_f32's
 * conversions (the reference of every kernel above). */
void wmat__wrow_dequant(wmat_dtype dt, const void *W, int64_t in, int64_t r0, int64_t nr, float *out);

/* Bytes of one stored row (0 for an unsupported dtype or a block type
 * whose width is not a multiple of 32). */
size_t wmat__wrow_bytes(wmat_dtype dt, int64_t in);

#endif
