/* ggml's other block types as weight kinds, run as stored (a GGUF from the
 * Hub mapped and used in place): Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q6_K
 * and IQ4_NL / IQ4_XS. One implementation for all of them over the block
 * dequantizers of src/core/ggml_kquants.c:
 *   - batched products go through kern_dense.c's tiles (rows dequantized
 *     ~256 KB at a time, then the GEMM), as kind_stored.c's Q4_0 does;
 *   - one-row products take x as int8 Q8_0 blocks and each group's exact
 *     integer dot product (kern_ggml.c), as llama.cpp does. */
#include "wop.h"

#include "kern_dense.h"
#include "kern_ggml.h"

static size_t row_bytes(const wmat_tensor *W) { return wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[1]); }

static void deq_rows(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const size_t rb = row_bytes(W);
    const unsigned char *w = (const unsigned char *)W->data + (size_t)r0 * rb;
    for (int64_t i = 0; i < nr; i++) wmat__ggml_block_dequant(W->dtype, w + (size_t)i * rb, out + (size_t)i * W->shape[1], W->shape[1]);
}

/* batched: kern_dense.c's tiles (dequantized rows times the GEMM), which
 * take these types through their block dequantizers */
static size_t kg_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    return wmat__wtile_ws_bytes(W->dtype, W->shape[0], W->shape[1], T, ex->n_threads);
}

static void kg_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_forward(W->dtype, W->data, W->shape[0], W->shape[1], X, Y, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

static void kg_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_backward(W->dtype, W->data, W->shape[0], W->shape[1], dY, dX, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

/* One-row products multiply int8-quantized activations, as llama.cpp does
 * on CPUs: x prepared once per token as Q8_0 blocks (kern_dense.h's
 * layout), then each 16- or 32-value group of a row is an exact integer dot
 * product scaled in float (kern_ggml.c). */
static size_t kg_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    return wmat__wrow_prep_bytes(WMAT_Q8_0, W->shape[1]);
}

static void kg_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    wmat__wrow_prepare(WMAT_Q8_0, x, W->shape[1], prep, ex->isa);
}

static void kg_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    wmat__ggml_rows(W->dtype, W->data, W->shape[1], prep, y, r0, r1, acc, ex->isa);
}

static uint64_t kg_nbytes(const wmat_tensor *W) { return (uint64_t)wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[0] * (uint64_t)W->shape[1]); }

#define GGML_KIND(NAME, DT, TOL, RTOL, SUMMARY)                                                                                    \
    static int NAME##_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)                              \
    {                                                                                                                     \
        return wmat__wkind_plain_from_f32(DT, W, rows, cols, out);                                                        \
    }                                                                                                                     \
    const wmat_wkind wmat__wkind_##NAME = {                                                                               \
        .name = #NAME,                                                                                                    \
        .summary = SUMMARY,                                                                                               \
        .dtype = DT,                                                                                                      \
        .row_align = 1,                                                                                                   \
        .ws_bytes = kg_ws,                                                                                                \
        .forward = kg_forward,                                                                                            \
        .backward = kg_backward,                                                                                          \
        .prep_bytes = kg_prep_bytes,                                                                                      \
        .prepare = kg_prepare,                                                                                            \
        .rows = kg_rows,                                                                                                  \
        .dequant_rows = deq_rows,                                                                                         \
        .nbytes = kg_nbytes,                                                                                              \
        .from_f32 = NAME##_from_f32,                                                                                      \
        .row_tol = RTOL,                                                                                                  \
        .approx_tol = TOL,                                                                                                \
    }

/* from_f32 budgets (0: the suite's 0.2): 2 and 3 bits on Gaussian weights need more;
 * one-row budgets: x is rounded to int8 (as for q4_0) */
GGML_KIND(q4_1, WMAT_Q4_1, 0, 2e-2f, "ggml Q4_1 blocks (32 4-bit + fp16 scale and min, 5 bits)");
GGML_KIND(q5_0, WMAT_Q5_0, 0, 2e-2f, "ggml Q5_0 blocks (32 5-bit + fp16 scale, 5.5 bits)");
GGML_KIND(q5_1, WMAT_Q5_1, 0, 2e-2f, "ggml Q5_1 blocks (32 5-bit + fp16 scale and min, 6 bits)");
GGML_KIND(q2_k, WMAT_Q2_K, 0.5f, 2e-2f, "ggml Q2_K super-blocks (256 2-bit, 4-bit scales/mins of 16, 2.625 bits)");
GGML_KIND(q3_k, WMAT_Q3_K, 0.35f, 2e-2f, "ggml Q3_K super-blocks (256 3-bit, 6-bit scales of 16, 3.4375 bits)");
GGML_KIND(q4_k, WMAT_Q4_K, 0, 2e-2f, "ggml Q4_K super-blocks (256 4-bit, 6-bit scales/mins of 32, 4.5 bits)");
GGML_KIND(q5_k, WMAT_Q5_K, 0, 2e-2f, "ggml Q5_K super-blocks (256 5-bit, 6-bit scales/mins of 32, 5.5 bits)");
GGML_KIND(q6_k, WMAT_Q6_K, 0, 2e-2f, "ggml Q6_K super-blocks (256 6-bit, int8 scales of 16, 6.5625 bits)");
GGML_KIND(iq4_nl, WMAT_IQ4_NL, 0, 2e-2f, "ggml IQ4_NL blocks (32 4-bit indices into a non-uniform grid + fp16 scale, 4.5 bits)");
GGML_KIND(iq4_xs, WMAT_IQ4_XS, 0, 2e-2f, "ggml IQ4_XS super-blocks (256 IQ4_NL indices, 6-bit scales of 32, 4.25 bits)");
