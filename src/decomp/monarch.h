/* Projection of a dense matrix onto Monarch matrices (src/decomp/monarch.c). */
#ifndef WMAT_DECOMP_MONARCH_H
#define WMAT_DECOMP_MONARCH_H

#include "core/params.h"
#include "wop/wop.h"

/* The Monarch matrix of in_blocks (R) input and out_blocks (Q) output
 * blocks and slab rank K (1: the paper's Monarch class) closest to W (rows,
 * cols) in the Frobenius norm: one rank-K truncated SVD per (output block,
 * input block) slab. *out gets a new owned tensor of kind
 * "monarch"; *rel_error = ||W - M||_F / ||W||_F. R must divide cols and Q
 * rows (WMAT_ERR_INVALID naming the shape otherwise). */
int wmat__monarch_project(const float *W, int64_t rows, int64_t cols, int64_t in_blocks, int64_t out_blocks,
                          int64_t slab_rank, wmat_tensor *out, double *rel_error);

/* The decomposition method (a row of decompose.c): keys blocks, slab_rank, share. */
extern const wmat_param_spec wmat__monarch_keys[];
int wmat__decomp_monarch(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype, wmat_tensor *out,
                         int64_t *rank_out, double *rel_error);

#endif
