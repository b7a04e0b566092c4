/* Dense fp32 weights: the reference kind. Batched products go to the GEMM
 * library, one-row products to the fp32 row kernels the decode path uses
 * (run.c's expression order on the reference ISA). */
#include "wop.h"

#include "kern_f32.h"
#include "linalg/linalg.h"

#include <string.h>

static size_t f32_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)W, (void)T, (void)ex;
    return 0;
}

static void f32_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    (void)ws;
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 1, T, out, in, 1.0f, X, in, (const float *)W->data, in, acc ? 1.0f : 0.0f,
                    Y, out);
}

static void f32_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    (void)ws;
    const int out = (int)W->shape[0], in = (int)W->shape[1];
    wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, in, out, 1.0f, dY, out, (const float *)W->data, in,
                    acc ? 1.0f : 0.0f, dX, in);
}

static size_t f32_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)W, (void)ex;
    return 0;
}

static void f32_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)W, (void)x, (void)prep, (void)ex;
}

static void f32_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                     const wmat_wexec *ex)
{
    (void)prep;
    wmat__f32_rows(y, (const float *)W->data, x, (int)r0, (int)r1, (int)W->shape[1], acc, ex->isa);
}

static void f32_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    memcpy(out, (const float *)W->data + r0 * W->shape[1], (size_t)(nr * W->shape[1]) * sizeof(float));
}

static uint64_t f32_nbytes(const wmat_tensor *W) { return (uint64_t)W->shape[0] * (uint64_t)W->shape[1] * 4u; }

static int f32_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    return wmat__wkind_plain_from_f32(WMAT_F32, W, rows, cols, out);
}

const wmat_wkind wmat__wkind_f32 = {
    .name = "f32",
    .summary = "dense fp32",
    .dtype = WMAT_F32,
    .row_align = 16, /* neighbouring threads never share a cache line of y */
    .ws_bytes = f32_ws,
    .forward = f32_forward,
    .backward = f32_backward,
    .prep_bytes = f32_prep_bytes,
    .prepare = f32_prepare,
    .rows = f32_rows,
    .dequant_rows = f32_dequant,
    .nbytes = f32_nbytes,
    .from_f32 = f32_from_f32,
    .row_tol = 1e-5f,
};
