/* Internal interface of src/analyze: spectra, power-law fit, per-matrix
 * statistics, and the report writers. */
#ifndef WMAT_ANALYZE_H
#define WMAT_ANALYZE_H

#include "../core/internal.h"

/* The analysis object behind the public accessors. */
struct wmat_analysis {
    int n;                      /* matrices */
    wmat_matrix_stats *m;       /* (n) */
    int n_heads;                /* total heads (layers * heads_per_layer) */
    int heads_per_layer, n_layers, head_dim;
    wmat_head_stats *h;         /* (n_heads) */
    int n_comp;
    wmat_composition *comp;     /* (n_comp), sorted by score */
    double *comp_grid[WMAT_COMP_COUNT]; /* (n_heads, n_heads): [src * n_heads + dst], NaN where not defined */
    int has_base;
    int exact;
    double intruder_threshold;
    double seconds;
    char model_path[512], base_path[512];
};

/* Singular values (descending, min(rows, cols)) and optionally the left
 * singular vectors U (rows, r) row-major, r = min(rows, cols). W is double,
 * row-major (rows, cols); it is not modified. */
int wmat__an_spectrum(const double *W, int rows, int cols, int exact, double *s, double *U);

/* Metrics of a spectrum into st (norms, ranks, power law, MP, low rank). */
void wmat__an_spectrum_metrics(const double *s, int r, int64_t rows, int64_t cols, int min_tail,
                               wmat_matrix_stats *st);
/* Effective (entropy) rank and stable rank of a spectrum. */
double wmat__an_entropy_rank(const double *s, int r);
double wmat__an_stable_rank(const double *s, int r);

/* Marchenko-Pastur bulk of eigenvalues lam (descending, r of them) of an
 * N x M matrix: sigma^2 by fixed point over the bulk, edge lambda_plus. */
void wmat__an_mp(const double *lam, int r, int64_t N, int64_t M, double *sigma, double *lambda_plus,
                 int *spikes);

#endif
