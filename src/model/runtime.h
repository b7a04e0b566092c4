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

#endif
