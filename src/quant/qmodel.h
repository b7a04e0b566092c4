/* Packed tensors inside a model (qmodel.c). */
#ifndef WMAT_QMODEL_H
#define WMAT_QMODEL_H

#include "wop/qstore.h"

/* Replace the tensor `name` of m by the packed form of q (shape must match
 * the tensor's (rows, cols); the old data is freed or left in its mapping).
 * The tensor must be a 2-D weight in wmat's canonical layout (materialized
 * f32, or already packed). Not the token embedding (the runtime reads its
 * rows as f32); the classifier of an untied model is fine. On failure the
 * model is unchanged. A result holding another kind's object (q->obj) moves
 * it into the model: q->obj is NULL afterwards. */
int wmat_model_set_quantized(wmat_model *m, const char *name, wmat_qresult *q);

#endif
