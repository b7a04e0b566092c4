/* Factorization methods (src/decomp): a method turns one fp32 weight into
 * a weight of a structured kind (src/wop) and says how far it is from W.
 * Methods are rows of one table (decompose.c); the driver and the CLI
 * iterate it, so a method is a file plus a row. */
#ifndef WMAT_DECOMP_H
#define WMAT_DECOMP_H

#include "wop/wop.h"

typedef struct {
    int rank;         /* > 0: keep this many components (capped at min(rows, cols)) */
    double energy;    /* in (0, 1]: the fewest components whose squared singular values reach this share */
    wmat_dtype dtype; /* of the factors: f32, f16, bf16 */
} wmat_dparams;

/* Decompose W (rows, cols) into *out (a new owned tensor of the method's
 * kind); *rank_out the rank kept, *rel_error ||W - W'||_F / ||W||_F. */
typedef int (*wmat_dmethod_fn)(const float *W, int64_t rows, int64_t cols, const wmat_dparams *p, wmat_tensor *out,
                               int64_t *rank_out, double *rel_error);

typedef struct {
    const char *name;
    wmat_dmethod_fn fn;
    const char *produces; /* weight kind: "lowrank" */
    const char *summary;
} wmat_dmethod;

/* The table, ended by a row with name == NULL. */
extern const wmat_dmethod wmat__dmethods[];
const wmat_dmethod *wmat__dmethod_find(const char *name);

/* Methods (one file each). */
int wmat__decomp_svd(const float *W, int64_t rows, int64_t cols, const wmat_dparams *p, wmat_tensor *out,
                     int64_t *rank_out, double *rel_error);

#endif
