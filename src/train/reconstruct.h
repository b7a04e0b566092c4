/* Cross-block reconstruction (CBQ; src/quant/cbq.h has the method's pieces
 * below train). A method whose descriptor flags WMAT_QM_RECONSTRUCT leaves
 * its per-tensor results to be refined here, by the caller above both
 * quantization and training (the CLI after wmat__quantize_model, a test).
 *
 * Windows of w consecutive blocks [i, i + w) slide by w - 1 (by 1 when
 * w = 1), so consecutive windows share one block. For each window: the
 * target is the fp model's blocks on the fp model's stream at block i; the
 * input is the quantized model's stream (the blocks before i final). The
 * rounding (LoRA-Rounding, A1 A2 per matrix) and log step sizes of every
 * quantized linear of the window are optimized with Adam on
 *
 *   L = |Y_q - Y_fp|^2 / |Y_fp|^2                           (mean over tokens x dim)
 *     + kl * mean_t KL(softmax(Y_fp[t]) || softmax(Y_q[t]))  (over the hidden dimension)
 *     + homologous * |Y_q(x_fp) - Y_fp|^2 / |Y_fp|^2         (the window fed the fp input)
 *     + reg * mean(1 - |2h - 1|^beta)                        (AdaRound's, beta 20 -> 2
 *                                                             after 20% of the steps)
 *
 * then the window's blocks but the last are final (hard rounding into the
 * results and into the quantized model's fp32 weights) and both streams
 * move past them; the last window finalizes all its blocks. */
#ifndef WMAT_TRAIN_RECONSTRUCT_H
#define WMAT_TRAIN_RECONSTRUCT_H

#include "../quant/cbq.h"

#define WMAT_RECON_MAX_WINDOWS 256

typedef struct {
    int n_windows;                                /* windows run */
    int first[WMAT_RECON_MAX_WINDOWS];            /* each window's first block */
    int blocks[WMAT_RECON_MAX_WINDOWS];           /* and its length */
    double err_before[WMAT_RECON_MAX_WINDOWS];    /* hard-rounded relative MSE at the window's end, before */
    double err_after[WMAT_RECON_MAX_WINDOWS];     /* and after its steps (first min(16, n) calibration windows) */
    double loss_first[WMAT_RECON_MAX_WINDOWS];    /* the optimized loss at the first and last step */
    double loss_last[WMAT_RECON_MAX_WINDOWS];
    double soft_fraction; /* rounding variables with h in (1e-3, 1 - 1e-3) at finalization, over all matrices */
    int64_t n_rounding;   /* rounding variables (quantized weights) reconstructed */
    double seconds;
} wmat_reconstruct_info;

/* Progress: after each window (what: a line about it); nonzero cancels. */
typedef int (*wmat_reconstruct_progress)(void *user, const char *what, uint64_t done, uint64_t total);

/* fp: the model before quantization (fp32, materialized); q: the same model
 * after wmat__quantize_model with fake-quant fp32 weights, and its results
 * (wmat_model_tensor order). Every linear of the blocks whose result holds
 * codes on input groups is reconstructed (others stay as q holds them);
 * its result's codes and scales and q's weights are rewritten, so that
 * q's weights stay wmat_qresult_dequant of the results. tokens: n_tokens
 * calibration tokens cut into windows of ctx. p->cbq: the settings. */
int wmat__reconstruct(wmat_model *fp, wmat_model *q, wmat_qresult *results, const int32_t *tokens, size_t n_tokens,
                      int ctx, const wmat_qparams *p, int n_threads, wmat_reconstruct_progress progress, void *user,
                      wmat_reconstruct_info *info);

#endif
