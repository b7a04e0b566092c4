/* CBQ (Ding et al., "CBQ: Cross-Block Quantization for Large Language
 * Models", ICLR 2025 / arXiv 2312.07950): the pieces below train.
 *
 * The method's registry row (methods.c, "cbq") quantizes each tensor by
 * RTN after the coarse-to-fine pre-processing (CFP) of its weights, and
 * flags WMAT_QM_RECONSTRUCT: the cross-block reconstruction
 * (src/train/reconstruct.c) then refines rounding and scales window by
 * window. This header holds what both use: CFP and LoRA-Rounding, the
 * learnable rounding of one matrix on a uniform grid along its inputs,
 *
 *   V  = V0 + A1 A2                  A1 (rows, r), A2 (r, cols)
 *   h  = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)   zeta 1.1, gamma -0.1
 *   c  = clamp(B + h + z, 0, 2^bits - 1),   B = floor(W / s0)
 *   Wq = s (c - z),   s = s0 exp(u)   (one u per group)
 *
 * with V0 AdaRound's initialisation (h(V0) = W / s0 - B), so that hard
 * rounding (h -> [V >= 0]) before any step is round-to-nearest; A1 starts
 * at 0. The regularizer is AdaRound's f = mean(1 - |2h - 1|^beta).
 */
#ifndef WMAT_QUANT_CBQ_H
#define WMAT_QUANT_CBQ_H

#include "methods.h"

/* CBQ's keys of p from ps (defaults first; methods.c's wmat__qparams_from). */
void wmat__cbq_params_from(const wmat_pset *ps, wmat_qparams *p);

/* CFP on W (n values, in place): the coarse threshold T = Q3 + lambda (Q3 -
 * Q1) of |W|, then among the |w| > T the split that maximizes the
 * distance of the two sets' means minus the sum of their standard deviations; values
 * above the split are truncated to it (sign kept). Returns the count
 * truncated (0: none), *thr the magnitude they were truncated to. */
int64_t wmat__cbq_cfp(float *W, int64_t n, double lambda, float *thr);

/* The registry's function: RTN on the grid of p after CFP (p->cbq.cfp). */
int wmat__quant_cbq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info);

/* LoRA-Rounding of one matrix. */
typedef struct {
    int64_t rows, cols;
    int group, maxq, rank;
    int64_t n_groups;
    float *s0;    /* (n_groups) initial scales */
    float *z;     /* (n_groups) zero points (fixed) */
    float *base;  /* (rows, cols) floor(W / s0) */
    float *v0;    /* (rows, cols) AdaRound's initialisation */
    float *A1;    /* (rows, rank) learned, starts at 0 */
    float *A2;    /* (rank, cols) learned, small seeded values */
    float *u;     /* (n_groups) learned log-scale offsets, start at 0 */
    float *V;     /* (rows, cols) V0 + A1 A2 of the last wmat__cbq_round_weights */
    int ste;      /* 1: the last weights were hard and the backward is straight-through
                     (dWq/dh of the soft rounding, dWq/du at the hard codes) */
} wmat_cbq_round;

/* From the truncated weights W (rows, cols) and their initial result q
 * (codes on groups along the inputs, no permutation). */
int wmat__cbq_round_init(wmat_cbq_round *r, const float *W, const wmat_qresult *q, int rank, uint64_t seed);
void wmat__cbq_round_free(wmat_cbq_round *r);
/* Wq (rows, cols) from the current parameters: soft (h) or hard (h >= 0.5,
 * i.e. V >= 0) rounding; r->V is refreshed. */
void wmat__cbq_round_weights(wmat_cbq_round *r, float *Wq, int hard, int nt);
/* Given dL/dWq of the last soft wmat__cbq_round_weights, ADD the gradients
 * of L + reg * mean(1 - |2h-1|^beta) to dA1, dA2, du; dV: (rows, cols)
 * scratch. Returns reg * mean(1 - |2h - 1|^beta). */
double wmat__cbq_round_backward(const wmat_cbq_round *r, const float *dWq, double reg, double beta, float *dA1,
                                float *dA2, float *du, float *dV, int nt);
/* Fraction of the rounding variables h of the last weights strictly inside
 * (eps, 1 - eps). */
double wmat__cbq_round_soft_fraction(const wmat_cbq_round *r, double eps);
/* The final result: hard codes and scales (fp16-rounded as storage keeps
 * them) into q, whose shape and grid r was made from. */
void wmat__cbq_round_write(const wmat_cbq_round *r, wmat_qresult *q);

#endif
