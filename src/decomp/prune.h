/* Pruning (src/decomp/prune.c): masks by magnitude, by Wanda's activation-
 * aware score and by SparseGPT's OBS reconstruction, for unstructured
 * sparsity and N:M. Each prunes W (rows = out, cols = in, fp32) in place:
 * pruned weights become exactly 0 and mask (rows x cols bytes, 1 = kept)
 * says which; SparseGPT also updates the kept weights. The sparse weight
 * kinds that store the result are in src/wop (kern_sparse.h). */
#ifndef WMAT_DECOMP_PRUNE_H
#define WMAT_DECOMP_PRUNE_H

#include "core/params.h"
#include "wop/wop.h"

typedef struct {
    double sparsity; /* unstructured (n == 0): the share pruned, in [0, 1) */
    int n, m;        /* N:M (n > 0): n kept of every m consecutive inputs of a row, m in {4, 8} */
    int block;       /* SparseGPT: columns per lazy-update block (0: 128; a multiple of m) */
    double damp;     /* SparseGPT: damping times mean(diag H) (0: 0.01), raised x10 while Cholesky fails */
    int n_threads;   /* >= 1 */
} wmat_prune_params;

/* Check p against a (rows x cols) matrix (N:M needs cols % m == 0). */
int wmat__prune_check(const wmat_prune_params *p, int64_t cols);

/* Magnitude: the largest |W_ij| of each row are kept (each group of m for N:M). */
int wmat__prune_magnitude(float *W, int64_t rows, int64_t cols, const wmat_prune_params *p, uint8_t *mask);

/* Wanda (Sun et al. 2023): score |W_ij| ||X_j||_2, compared within each
 * output row (group of m for N:M); x2[j] = mean x_j^2 over the calibration
 * tokens (a positive multiple of ||X_j||^2, which ranks the same). */
int wmat__prune_wanda(float *W, int64_t rows, int64_t cols, const double *x2, const wmat_prune_params *p, uint8_t *mask);

/* SparseGPT (Frantar & Alistarh 2023): columns left to right; a pruned
 * weight's error is pushed onto the row's later columns through the upper
 * Cholesky factor U of (H + lambda I)^-1 (as GPTQ does, H = 2/N X^T X),
 * lazily per block of columns. The mask is chosen by w^2 / U_jj^2 on the
 * error-fed weights: per block over all its rows and columns (the `sparsity`
 * smallest), or for N:M per row and group of m when the loop reaches the
 * group. *damp_used (may be NULL) the lambda that was used. */
int wmat__prune_sparsegpt(float *W, int64_t rows, int64_t cols, const double *H, const wmat_prune_params *p, uint8_t *mask,
                          double *damp_used);

/* ---- method keys (prune_model.c): sparsity, nm ("N:M"), block, damp */
extern const wmat_param_spec wmat__prune_keys[];
/* The pruning parameters of a pset of wmat__prune_keys (WMAT_ERR_INVALID
 * naming the key when "nm" is not N:M or the values do not go together). */
int wmat__prune_params_from(const wmat_pset *ps, wmat_prune_params *pp);

/* ---- a model (prune_model.c) */
typedef struct {
    const char *method;      /* "magnitude", "wanda" or "sparsegpt" */
    wmat_prune_params pp;
    wmat_dtype dtype;        /* stored values: f32 or f16 */
    unsigned targets;        /* bits (1u << wmat_linear_kind); 0: all seven */
    const int32_t *calib;    /* calibration tokens (Wanda, SparseGPT) */
    size_t n_calib;
    int calib_ctx;           /* window; <= 0: min(seq_len, 256) */
    int n_threads;           /* 0: the default */
    wmat_progress_fn progress;
    void *progress_user;
} wmat_prune_model_params;

/* Prune m's selected linear weights (materialized fp32) in place: each
 * becomes an `nm` (N:M) or `sparse` weight. Wanda and SparseGPT calibrate
 * block by block and stage by stage on the model pruned so far. The
 * report's `rank` of a tensor is the number of weights it keeps. */
int wmat__prune_model(wmat_model *m, const wmat_prune_model_params *p, wmat_decompose_report *rep);

#endif
