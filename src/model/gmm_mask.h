/* The Gaussian-mixture attention mask (Li, Zhang 2023, "Toward a deeper
 * understanding: RetNet viewed through convolution"; docs/EXPERIMENTS.md).
 * Each head's attention scores are multiplied, before the softmax, by a
 * mask over the relative distance d = i - j of query i and key j:
 *
 *     M_h(d) = sum_k alpha_hk exp(-d^2 / (2 (sigma_hk^2 + eps)))
 *
 * (the paper's alpha * mask^(1 / (sigma^2 + eps)) with mask = exp(-d^2/2)),
 * K kernels per head, two learnable parameters (alpha, sigma) per kernel;
 * causal masking stays on top (j <= i). A model carries it when
 * wmat_config.gmm_kernels = K > 0: one f32 vector per layer,
 * "model.layers.N.self_attn.gmm_mask", (n_heads K 2) floats, alpha then
 * sigma per (head, kernel), head-major.
 *
 * The forward of one head is here, used by the runtime's batched forward
 * and by the trainer alike (so both evaluate a model the same), and one
 * query's attention over the KV cache (the runtime's decode); the
 * backward is the trainer's (src/train/gmm_grad.c). */
#ifndef WMAT_MODEL_GMM_MASK_H
#define WMAT_MODEL_GMM_MASK_H

#include "wmat.h"

#define WMAT_GMM_MAX_KERNELS 16
#define WMAT_GMM_EPS 1e-5f

/* m[d] = M(d) for d = 0..T-1 of one head: par (K 2), alpha, sigma pairs. */
void wmat__gmm_table(const float *par, int K, int T, float *m);
/* The paper's init for n_heads x K kernels: sigma ~ N(10, 10^2), alpha ~
 * N(0, 2^2). */
void wmat__gmm_init(float *par, int n_heads, int K, wmat_rng *r);

/* row[0..t] = its softmax in place (libm expf, the sum in order, times
 * 1/sum): the masked rows below, and the trainer's unmasked attention
 * (src/train/ops.c), so the two differ only by the mask. */
void wmat__causal_row_softmax(float *row, int t);
/* P = the causal softmax, row by row, of S (T, T) times the mask m[t - j]
 * (P may be S); the upper triangle of P zeroed. The forward and the
 * trainer's backward both recompute P with it, so they agree bit for bit. */
void wmat__gmm_softmax(const float *S, const float *m, float *P, int T);
/* Scratch floats of wmat__gmm_head_forward for a window of T. */
size_t wmat__gmm_head_scratch(int T);
/* One head of one window from position 0: out[t] (row stride os) = sum_{j
 * <= t} softmax_j(M(t - j) scale q_t . k_j) v_j, scale = 1/sqrt(hd); q rows
 * of stride qs, k and v rows of stride ks; par the head's (K 2)
 * parameters. libm expf, float sums in order; GEMMs through wmat_sgemm
 * (single-threaded inside a parallel region). */
void wmat__gmm_head_forward(float *out, int os, const float *q, int qs, const float *k, const float *v, int ks, int T,
                            int hd, const float *par, int K, float *scratch);
/* One head at decode: out (hd) = the attention of the query q at position
 * n - 1 over keys and values 0..n-1 (rows of stride ks), masked as
 * wmat__gmm_head_forward masks row n - 1 of a window (the same table and
 * softmax; the scores summed in order instead of by the GEMM). scratch: 2 n
 * floats. */
void wmat__gmm_attend_one(float *out, const float *q, const float *k, const float *v, int ks, int n, int hd,
                          const float *par, int K, float *scratch);

#endif
