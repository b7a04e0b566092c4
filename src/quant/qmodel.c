/* Packed quantized tensors inside a model: swapping a method's result in,
 * and the size report (the model is io's; packing is src/wop's). */
#include "qmodel.h"

#include "io/model_internal.h"
#include "wop/wop.h"

#include <string.h>

int wmat_model_set_quantized(wmat_model *m, const char *name, wmat_qresult *q)
{
    const char *src = m->path ? m->path : "model";
    wmat_tensor *t = wmat_model_find(m, name);
    if (!t) return wmat_set_error(WMAT_ERR_INVALID, "%s: no tensor %s", src, name);
    if (t->ndim != 2 || t->shape[0] != q->rows || t->shape[1] != q->cols)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not a (%lld x %lld) matrix", src, name, (long long)q->rows,
                              (long long)q->cols);
    if (q->gbytes) {
        /* a ggml block type: the tensor becomes a plain stored tensor of it */
        if (t->dtype != WMAT_F32)
            return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not materialized f32", src, name);
        wmat__tensor_free_data(t);
        t->data = q->gbytes;
        t->dtype = q->ggml;
        t->flags = WMAT_TF_OWNED;
        t->nbytes = (size_t)wmat_dtype_bytes(q->ggml, (uint64_t)(q->rows * q->cols));
        q->gbytes = NULL;
        memset(q, 0, sizeof *q);
        return WMAT_OK;
    }
    if (t == wmat_model_tok_embeddings(m))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %s is the token embedding (read by rows as f32); it cannot be packed",
                              src, name);
    if (t->dtype != WMAT_QPACKED && (t->dtype != WMAT_F32 || (t->flags & WMAT_TF_HF_ROPE)))
        return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is not materialized (f32, canonical layout)", src, name);
    if (q->obj) {
        /* a method's own kind: the tensor takes the object over */
        wmat__tensor_set_obj(t, q->obj);
        q->obj = NULL;
        return WMAT_OK;
    }
    int rc = wmat_qresult_check_packable(q, name);
    if (rc) return rc;
    wmat_qtensor *qt;
    rc = wmat_qtensor_pack(q, &qt);
    if (rc) return wmat_set_error(rc, "%s: tensor %s: %s", src, name, wmat_last_error());
    wmat__tensor_set_obj(t, qt);
    return WMAT_OK;
}

void wmat_model_quant_size(const wmat_model *m, wmat_quant_size *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        const uint64_t n = (uint64_t)wmat_tensor_nelem(t);
        const wmat_wkind *k = t->dtype == WMAT_OBJ ? wmat__wkind_of(t) : NULL;
        if (k) { /* packed codes or any other object kind */
            out->n_packed++;
            out->packed_weights += n;
            out->packed_bytes += wmat__wkind_of(t)->nbytes(t); /* any object kind, not only qpacked */
        } else {
            out->other_weights += n;
            out->other_bytes += t->nbytes;
        }
    }
    if (out->packed_weights) out->packed_bits_per_weight = 8.0 * (double)out->packed_bytes / (double)out->packed_weights;
    const uint64_t all = out->packed_weights + out->other_weights;
    if (all) out->model_bits_per_weight = 8.0 * (double)(out->packed_bytes + out->other_bytes) / (double)all;
}
