/* wmat's packed quantized weights (2..8-bit codes, fp16 scales, optional
 * zero points and act-order permutation; layout in src/quant/qstore.h) as
 * a weight kind: the packed kernels of qkernels.c run them directly. */
#include "wop.h"

#include "linalg/linalg.h"
#include "quant/qstore.h"

#include <math.h>
#include <stdio.h>

#define QP_TILE_FLOATS ((size_t)1 << 20) /* backward: W rows dequantized ~4 MB at a time */

static const wmat_qtensor *qt_of(const wmat_tensor *W) { return (const wmat_qtensor *)W->data; }

static int64_t bwd_tile(const wmat_qtensor *qt)
{
    int64_t tile = (int64_t)(QP_TILE_FLOATS / (size_t)qt->cols);
    if (tile < 16) tile = 16;
    return tile > qt->rows ? qt->rows : tile;
}

static size_t qp_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)T, (void)ex;
    const wmat_qtensor *qt = qt_of(W);
    return (size_t)bwd_tile(qt) * (size_t)qt->cols * sizeof(float);
}

static void qp_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    (void)ws;
    wmat__qmatmul(Y, X, qt_of(W), T, acc, ex->n_threads);
}

/* dX = dY W, a tile of W's rows at a time: dX += dY[:, tile] W[tile, :]. */
static void qp_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    (void)ex;
    const wmat_qtensor *qt = qt_of(W);
    const int64_t rows = qt->rows, cols = qt->cols, tile = bwd_tile(qt);
    float *Wt = ws;
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t nr = rows - r0 < tile ? rows - r0 : tile;
        wmat_qtensor_dequant_rows(qt, r0, nr, Wt);
        wmat_sgemm(0, 0, T, (int)cols, (int)nr, 1.0f, dY + r0, (int)rows, Wt, (int)cols, (acc || r0 > 0) ? 1.0f : 0.0f, dX,
                   (int)cols);
    }
}

static size_t qp_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)W, (void)ex;
    return 0;
}

static void qp_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)W, (void)x, (void)prep, (void)ex;
}

static void qp_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)prep, (void)ex;
    wmat__qmatvec_rows(y, x, qt_of(W), r0, r1, acc);
}

static void qp_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    wmat_qtensor_dequant_rows(qt_of(W), r0, nr, out);
}

static uint64_t qp_nbytes(const wmat_tensor *W) { return wmat_qtensor_nbytes(qt_of(W)); }

static void qp_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const wmat_qtensor *qt = qt_of(W);
    snprintf(buf, n, "qpacked %db %s g%d along %s%s", qt->bits, qt->sym ? "sym" : "asym", qt->group,
             qt->axis == WMAT_QAXIS_IN ? "inputs" : "outputs", qt->perm ? " act-order" : "");
}

static void qp_free(void *obj) { wmat_qtensor_free(obj); }

/* 4-bit symmetric round-to-nearest, groups of 32 inputs (Q4_0's grid; a
 * width that 32 does not divide is not packable). */
static int qp_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    wmat_qresult q;
    int rc = wmat_qresult_alloc(&q, 4, 1, WMAT_QAXIS_IN, 32, rows, cols, 0);
    if (rc) return rc;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < cols / 32; g++) {
            const float *w = W + r * cols + g * 32;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fabsf(w[j]) > amax ? fabsf(w[j]) : amax;
            const float s = wmat_f16_to_f32(wmat_f32_to_f16(amax / 7.0f)), inv = s > 0 ? 1.0f / s : 0.0f;
            q.scales[r * (cols / 32) + g] = s;
            q.zeros[r * (cols / 32) + g] = 8.0f;
            for (int j = 0; j < 32; j++) {
                float c = roundf(w[j] * inv) + 8.0f;
                q.codes[r * cols + g * 32 + j] = (uint8_t)(c < 0 ? 0 : c > 15 ? 15 : c);
            }
        }
    wmat_qtensor *qt = NULL;
    rc = wmat_qtensor_pack(&q, &qt);
    wmat_qresult_free(&q);
    if (rc) return rc;
    wmat__tensor_init2(out, WMAT_OBJ, rows, cols, qt);
    out->flags = WMAT_TF_OWNED;
    out->nbytes = (size_t)wmat_qtensor_nbytes(qt);
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_qpacked = {
    .name = "qpacked",
    .summary = "wmat's packed 2..8-bit codes with fp16 group scales (RTN, GPTQ, AdaDim output)",
    .dtype = WMAT_OBJ,
    .row_align = 16,
    .ws_bytes = qp_ws,
    .forward = qp_forward,
    .backward = qp_backward,
    .prep_bytes = qp_prep_bytes,
    .prepare = qp_prepare,
    .rows = qp_rows,
    .dequant_rows = qp_dequant,
    .nbytes = qp_nbytes,
    .describe = qp_describe,
    .free = qp_free,
    .from_f32 = qp_from_f32,
    .row_tol = 2e-2f, /* int8 activations where the CPU has VNNI */
};
