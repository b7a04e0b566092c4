#include "quant.h"

#include "wop.h"

#include <string.h>

int wmat_qresult_alloc(wmat_qresult *q, int bits, int sym, wmat_qaxis axis, int group, int64_t rows, int64_t cols,
                       int with_perm)
{
    memset(q, 0, sizeof *q);
    if (bits < 2 || bits > 8) return wmat_set_error(WMAT_ERR_INVALID, "quantization to %d bits: bits must be 2..8", bits);
    const int64_t len = axis == WMAT_QAXIS_IN ? cols : rows;
    if (group <= 0 || len % group)
        return wmat_set_error(WMAT_ERR_INVALID, "group size %d does not divide the %s dimension (%lld)", group,
                              axis == WMAT_QAXIS_IN ? "input" : "output", (long long)len);
    q->bits = bits;
    q->sym = sym;
    q->axis = axis;
    q->group = group;
    q->rows = rows;
    q->cols = cols;
    const int64_t ng = wmat_qresult_n_groups(q);
    q->codes = wmat__calloc((size_t)(rows * cols), 1);
    q->scales = wmat__calloc((size_t)ng, sizeof(float));
    q->zeros = wmat__calloc((size_t)ng, sizeof(float));
    if (with_perm) q->perm = wmat__malloc((size_t)cols * sizeof(int32_t));
    if (!q->codes || !q->scales || !q->zeros || (with_perm && !q->perm)) {
        wmat_qresult_free(q);
        return wmat_set_error(WMAT_ERR_NOMEM, "out of memory for a %lld x %lld quantized matrix", (long long)rows,
                              (long long)cols);
    }
    if (with_perm)
        for (int64_t c = 0; c < cols; c++) q->perm[c] = (int32_t)c;
    return WMAT_OK;
}

static const wmat_wkind *obj_kind(const wmat_qresult *q) { return ((const wmat_wobj *)q->obj)->kind; }

uint64_t wmat_qresult_obj_bytes(const wmat_qresult *q)
{
    if (q->gbytes) return wmat_dtype_bytes(q->ggml, (uint64_t)(q->rows * q->cols));
    if (!q->obj) return 0;
    wmat_tensor t;
    wmat__tensor_init2(&t, WMAT_OBJ, q->rows, q->cols, q->obj);
    return obj_kind(q)->nbytes(&t);
}

void wmat_qresult_free(wmat_qresult *q)
{
    if (q->obj) obj_kind(q)->free(q->obj);
    wmat__free(q->codes);
    wmat__free(q->scales);
    wmat__free(q->zeros);
    wmat__free(q->perm);
    wmat__free(q->gbytes);
    memset(q, 0, sizeof *q);
}

void wmat_qresult_dequant(const wmat_qresult *q, float *W)
{
    if (q->gbytes) {
        wmat_to_f32(W, q->gbytes, q->ggml, (uint64_t)(q->rows * q->cols));
        return;
    }
    if (q->obj) {
        wmat_tensor t;
        wmat__tensor_init2(&t, WMAT_OBJ, q->rows, q->cols, q->obj);
        obj_kind(q)->dequant_rows(&t, 0, q->rows, W);
        return;
    }
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t k = 0; k < q->cols; k++) {
            const int64_t g = wmat_qresult_group_of(q, r, k);
            const float v = q->scales[g] * ((float)q->codes[r * q->cols + k] - q->zeros[g]);
            const int64_t c = q->perm ? q->perm[k] : k;
            W[r * q->cols + c] = v;
        }
}
