/* A sparse or masked update of a frozen weight W (out, in), the piece SaRA
 * (adapter_sara.c) and PST (adapter_pst.c) share (private):
 *
 * - selection of the k positions of smallest key, ties to the lower index,
 *   in O(n) (a quickselect for the k-th value, then one pass): SaRA's
 *   smallest |w|, PST's pruned lowest scores;
 * - (the sparse update's kernels are SLTrain's support kernels, adapter.h:
 *   rows compressed positions, values in their order);
 * - the nuclear norm ||D||_* of a dense (rows, cols) matrix and its
 *   subgradient U V^T (the singular vectors of the nonzero singular values),
 *   SaRA's low-rank penalty. */
#ifndef WMAT_TRAIN_SPARSE_UPDATE_H
#define WMAT_TRAIN_SPARSE_UPDATE_H

#include "../core/internal.h"
#include "adapter.h"

/* floor(share * n), clamped to [0, n]. */
size_t wmat__su_count(double share, size_t n);

/* sel[i] = 1 for the k positions of smallest key (ties: the lower index
 * first), 0 for the rest; tmp: n floats of scratch. k >= n selects all. */
void wmat__su_select_smallest(const float *key, size_t n, size_t k, unsigned char *sel, float *tmp);

/* ||D||_* (the sum of D's singular values) into *norm and, when G is not
 * NULL, G (rows, cols) = U_k V_k^T over the singular values above
 * 1e-6 x the largest (the subgradient; 0 for D = 0). D is not changed.
 * Fails on memory or LAPACK. */
int wmat__su_nuclear(const float *D, int rows, int cols, float *G, double *norm);

/* ---- the two entries (adapter_sara.c, adapter_pst.c) and what their
 * test (tests/test_sara_pst.c) reads of them. */
extern const wmat__adapter wmat__adapter_sara;
extern const wmat__adapter wmat__adapter_pst;

/* SaRA's fixed data of a layer: theta = hdr[0] (the largest |w|
 * selected), hdr[1] the optimizer steps done, hdr[2] 1 once re-selected;
 * the nnz positions row-compressed (off (out + 1), col (nnz), increasing
 * within a row: the support layout of adapter.h); per position the base
 * value wv, the frozen value fv and on (1: trained, 0: frozen at the
 * re-selection). */
typedef struct {
    size_t nnz;
    float *hdr;
    int32_t *off, *col;
    float *wv, *fv;
    unsigned char *on;
} wmat__sara_layer;
wmat__sara_layer wmat__sara_view(void *fixed, const wmat__adapter_cfg *c, int in, int out);
/* lambda of the nuclear-norm term; the step after which it re-selects
 * (-1: none) */
float wmat__sara_lambda(const wmat__adapter_cfg *c);
int wmat__sara_reselect_step(const wmat__adapter_cfg *c);
/* lambda ||D||_* of one layer (its trained positions), adding lambda U V^T
 * at them to g (NULL: value only); NAN on failure. */
double wmat__sara_penalty(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, float *g);

/* PST's sparsity at step t (0-based forward index) of T for a final
 * sparsity (the paper's cubic schedule), and W' = W + U V, S, the pruned
 * flags (1: pruned) of a layer at sparsity s; tmp: out x in floats. */
float wmat__pst_sparsity(float final_sparsity, int t, int T);
void wmat__pst_dense(const wmat__adapter_cfg *c, const float *const *w, const float *W, float sparsity, int in, int out,
                     float *Wp, float *S, unsigned char *pruned, float *tmp);

#endif
