/* Private runtime entry points for the rest of src/model (eval). */
#ifndef WMAT_MODEL_RUNTIME_H
#define WMAT_MODEL_RUNTIME_H

#include "wmat.h"

/* A single-threaded runtime for batched windows that shares parent's model,
 * RoPE tables and packed weights and owns only its activations: one per
 * thread lets eval run whole windows in parallel, with no barrier inside a
 * window. The parent must outlive it; wmat_runtime_free frees it. */
int wmat__runtime_worker_create(wmat_runtime **out, const wmat_runtime *parent);
int wmat__runtime_has_hook(const wmat_runtime *rt);
int wmat__runtime_threads(const wmat_runtime *rt);
const wmat_config *wmat__runtime_config(const wmat_runtime *rt);
wmat_model *wmat__runtime_model(const wmat_runtime *rt);
/* Stages [from, to) of block `layer` (block.h's wmat__block_forward_part)
 * on one window of T tokens, for the calibration's stage mode
 * (src/quant/calib.c): x (T, dim), the window's residual stream, is updated
 * in place (xmid after stage 1, the block's output after stage 3); ao (T,
 * attention width) and hs (T, hidden) are the caller's, read by the later
 * stages. The observation hook runs as in wmat_forward_layers, and the
 * results are those of wmat_forward_layers bit for bit. */
int wmat__forward_block_part(wmat_runtime *rt, float *x, float *ao, float *hs, int T, int layer, int from, int to);

/* A private override of the block's batched linear products (the
 * calibration's bf16 forward, src/quant/calib.c): after the observation
 * hook, fn computes Y (T, out) = X (T, in) W^T (+= when acc) for linear k of
 * `layer` (W its current weight) and returns WMAT_OK, or declines with a
 * positive value (the runtime's own product runs), or fails with a negative
 * status (the block ends with it). NULL restores the runtime's products.
 * The classifier's and the decode path's products never go through it. */
typedef int (*wmat__linear_override)(void *user, int layer, wmat_linear_kind k, float *Y, const float *X, int T,
                                     int acc, const wmat_tensor *W);
void wmat__runtime_set_linear(wmat_runtime *rt, wmat__linear_override fn, void *user);

#endif
