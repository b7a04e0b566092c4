/* Weights run in their stored type: dense f16 and bf16, ggml's Q8_0 and
 * Q4_0 blocks (a GGUF or safetensors file mapped and used in place). One
 * implementation over the stored-type kernels of kern_dense.c, one table per
 * type. */
#include "wop.h"

#include "kern_dense.h"

#include "../linalg/linalg.h"

#include <stdio.h>

static size_t st_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    return wmat__wtile_ws_bytes(W->dtype, W->shape[0], W->shape[1], T, ex->n_threads);
}

static void st_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_forward(W->dtype, W->data, W->shape[0], W->shape[1], X, Y, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

static void st_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_backward(W->dtype, W->data, W->shape[0], W->shape[1], dY, dX, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

static size_t st_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    return wmat__wrow_prep_bytes(W->dtype, W->shape[1]);
}

static void st_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    wmat__wrow_prepare(W->dtype, x, W->shape[1], prep, ex->isa);
}

static void st_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    wmat__wrow_dot(W->dtype, W->data, W->shape[1], x, prep, y, r0, r1, acc, ex->isa);
}

static void st_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    wmat__wrow_dequant(W->dtype, W->data, W->shape[1], r0, nr, out);
}

static uint64_t st_nbytes(const wmat_tensor *W)
{
    return (uint64_t)wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[0] * (uint64_t)W->shape[1]);
}

#define STORED_KIND(NAME, DT, SUMMARY, ROW_TOL, BATCH_TOL)                                                               \
    static int NAME##_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)                               \
    {                                                                                                                     \
        return wmat__wkind_plain_from_f32(DT, W, rows, cols, out);                                                       \
    }                                                                                                                     \
    STORED_TABLE(NAME, DT, SUMMARY, ROW_TOL, BATCH_TOL)

#define STORED_TABLE(NAME, DT, SUMMARY, ROW_TOL, BATCH_TOL)                                                                                   \
    const wmat_wkind wmat__wkind_##NAME = {                                                                               \
        .name = #NAME,                                                                                                    \
        .summary = SUMMARY,                                                                                               \
        .dtype = DT,                                                                                                      \
        .row_align = 16,                                                                                                  \
        .ws_bytes = st_ws,                                                                                                \
        .forward = st_forward,                                                                                            \
        .backward = st_backward,                                                                                          \
        .prep_bytes = st_prep_bytes,                                                                                      \
        .prepare = st_prepare,                                                                                            \
        .rows = st_rows,                                                                                                  \
        .dequant_rows = st_dequant,                                                                                       \
        .nbytes = st_nbytes,                                                                                              \
        .from_f32 = NAME##_from_f32,                                                                                      \
        .row_tol = ROW_TOL,                                                                                               \
        .batch_tol = BATCH_TOL,                                                                                           \
    }

/* q8_0 / q4_0 rows multiply int8-quantized activations (llama.cpp's
 * scheme): ~1/254 of each block's largest input, hence their budgets */
/* On a native bf16 GEMM the batched forward rounds X to bf16 (2^-9
 * relative per element); elsewhere its tiles are exact. */
static float bf16_batch_tol(const wmat_wexec *ex) { return wmat__gemm_bf16_native(ex->gemm) ? 4e-3f : 1e-5f; }

STORED_KIND(f16, WMAT_F16, "dense IEEE half precision, run as stored", 1e-5f, NULL);
STORED_KIND(bf16, WMAT_BF16, "dense bfloat16, run as stored", 1e-5f, bf16_batch_tol);
STORED_KIND(q8_0, WMAT_Q8_0, "ggml Q8_0 blocks (32 int8 + fp16 scale, 8.5 bits), int8 dot products", 2e-2f, NULL);
STORED_KIND(q4_0, WMAT_Q4_0, "ggml Q4_0 blocks (32 4-bit + fp16 scale, 4.5 bits), int8 dot products", 2e-2f, NULL);
