/* A linear layer y = W x over a weight of any registered kind (src/wop).
 * The runtime calls only these entry points; a new storage plugs in as a
 * weight kind, without touching the forward pass. Buffers come from the
 * caller (the runtime's arena). */
#ifndef WMAT_LINEAR_H
#define WMAT_LINEAR_H

#include "wop/wop.h"

/* 1 if the runtime can multiply by W (a 2-D weight of a registered kind). */
int wmat__linear_supported(const wmat_tensor *W);
/* Y (T, out) = X (T, in) W^T (+= when accumulate); ws of the kind's ws_bytes(T). */
void wmat__linear_batch(float *Y, const float *X, const wmat_tensor *W, int T, int accumulate, void *ws,
                        const wmat_wexec *ex);
/* y[i] (= or +=) W[i] x for up to 4 weights sharing the input x (q/k/v,
 * gate/up; one weight: o, down, classifier): each weight's input prepared
 * once into prep[i] (of its kind's prep_bytes), then the weights' rows as
 * one list split over the threads in one parallel region (the split of
 * wmat__matvec_multi, so fp32 weights give its bits). */
void wmat__linear_vec_multi(int n, float *const *y, const float *x, const wmat_tensor *const *W, int accumulate,
                            void *const *prep, const wmat_wexec *ex);

#endif
