/* Training engine (private): op forward/backward pairs and the trainer
 * object. llm.c's habits: parameters, gradients and optimizer states live in
 * arenas with the same layout; every op is x_forward / x_backward writing
 * into buffers the caller owns; shapes are in comments. BT = B*T rows.
 *
 * The forward is the runtime's block (src/model/block.h) with run.c's
 * element-wise expressions (RMSNorm with float sums in order, llama2.c's
 * interleaved RoPE, libm's expf where the runtime's batched path uses a
 * 2-ulp vectorized exp) and this file's attention, whose probabilities the
 * backward recomputes. */
#ifndef WMAT_TRAIN_H
#define WMAT_TRAIN_H

#include "../core/internal.h"

/* ---- ops (all fp32, row-major; backward functions ACCUMULATE into
 * parameter gradients and, where the comment says so, into dinp) */

/* out (BT, C) = emb[tok[i]] */
void wmat__embed_forward(float *out, const int32_t *tok, const float *emb, int BT, int C);
/* demb (V, C) += rows of dout (BT, C); serial (deterministic) */
void wmat__embed_backward(float *demb, const float *dout, const int32_t *tok, int BT, int C);

/* The forwards of RMSNorm, RoPE and SwiGLU are the runtime's
 * (src/model/kernels.h: wmat__rmsnorm with rstd saved, wmat__rope_rows,
 * wmat__swiglu, exact), run inside the shared block (src/model/block.h). */

/* of out = w * x * rstd: dx (BT, C) += ..., dw (C) += ... */
void wmat__rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                            const float *rstd, int BT, int C, int nt);

/* The transpose of RoPE (inverse rotation), in place on the gradient of
 * rows of nh heads; row r is at position r % T. cs, sn: (T, hd/2). */
void wmat__rope_backward(float *dx, int BT, int T, int nh, int hd, const float *cs, const float *sn, int nt);

/* Causal grouped-query attention. q (BT, nh*hd), k, v (BT, nkv*hd);
 * out (BT, nh*hd). scratch: nt * 2 * T * T floats. */
void wmat__attention_forward(float *out, const float *q, const float *k, const float *v, int B, int T, int nh,
                             int nkv, int hd, float *scratch, int nt);
/* dq, dk, dv are OVERWRITTEN; the probabilities are recomputed. */
void wmat__attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                              const float *v, int B, int T, int nh, int nkv, int hd, float *scratch, int nt);

/* The same attention under a Gaussian-mixture mask (src/model/gmm_mask.h;
 * forward: wmat__gmm_head_forward per head): dq, dk, dv OVERWRITTEN, dpar
 * (nh K 2) += the mask parameters' gradient; par (nh K 2). Its own scratch
 * (nt (3 T^2 + T) floats); WMAT_ERR_NOMEM when that fails. */
int wmat__gmm_attention_backward(float *dq, float *dk, float *dv, float *dpar, const float *dout, const float *q,
                                 const float *k, const float *v, int B, int T, int nh, int nkv, int hd,
                                 const float *par, int K, int nt);

/* of out = silu(g) * u: dg, du (N) OVERWRITTEN */
void wmat__swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, size_t N, int nt);

/* Y (BT, out) = X (BT, in) W^T. Adapters (adapter.h) add their path after
 * it; the trainer's linear layer is the base op followed by the adapter's. */
void wmat__linear_forward(float *Y, const float *X, const float *W, int BT, int in, int out);
/* dX (BT, in) = (or += when acc_dx) dY W when dX; dW (out, in) += dY^T X
 * when dW. */
void wmat__linear_backward(float *dX, float *dW, const float *dY, const float *X, const float *W, int BT, int in,
                           int out, int acc_dx);

/* Cross-entropy of logits (BT, V) against targets: losses (BT) written;
 * logits OVERWRITTEN by dlogits = (softmax - onehot) * dscale. Returns the
 * mean loss (double, serial sum). */
double wmat__xent_forward_backward(float *logits, float *losses, const int32_t *targets, int BT, int V, float dscale,
                                   int nt);

/* ---- trainer internals the tests look at */

struct wmat_trainer;
/* Forward (and backward unless no_backward) of one batch of B windows of T
 * tokens: inputs/targets (B*T). Gradients are zeroed first when zero_grad.
 * *loss: mean over the B*T predictions. The logits stay in
 * wmat__trainer_logits() when no_backward. */
int wmat__trainer_fwdbwd(struct wmat_trainer *t, const int32_t *inputs, const int32_t *targets, int B, int T,
                         float dscale, int zero_grad, int no_backward, double *loss);
float *wmat__trainer_logits(struct wmat_trainer *t);
/* Flat trainable parameters and their gradients (same layout), n floats. */
float *wmat__trainer_params(struct wmat_trainer *t, size_t *n);
float *wmat__trainer_grads(struct wmat_trainer *t, size_t *n);
/* Full training: the gradient of linear k of layer l (rows x cols of the
 * weight, wmat layout) and of the classifier (the embedding's when tied: both
 * uses summed); NULL with an adapter. */
float *wmat__trainer_linear_grad(struct wmat_trainer *t, int l, int k);
float *wmat__trainer_classifier_grad(struct wmat_trainer *t);

#endif
