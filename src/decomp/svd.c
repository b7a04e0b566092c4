/* Truncated SVD: W ~ (U_r S_r) V_r^T, the best rank-r approximation in the
 * Frobenius norm (Eckart-Young), as WeLore and SVD-LLM start from. The SVD
 * runs in double (LAPACK's dgesdd through src/linalg) so that a full-rank
 * decomposition reproduces W to float precision.
 *
 * A full SVD of a large matrix costs O(m n min(m, n)) whatever rank is
 * kept; for a small rank the randomized range finder (Halko, Martinsson and
 * Tropp 2011, algorithms 4.4 and 5.1) costs O(m n l) with l = r + oversample:
 * Y = W Omega for a Gaussian Omega (n x l), a few power iterations
 * Y = W (W^T Y) with re-orthonormalization in between (they sharpen a slowly
 * decaying spectrum, which trained weights have), Q = orth(Y), and the exact
 * SVD of the small Q^T W. Its reported error stays exact: for the
 * orthogonal projection, ||W - Q B_r||^2 = ||W||^2 - sum of the kept s_i^2. */
#include "decomp.h"

#include "linalg/dense.h"

#include <math.h>
#include <stdio.h>

const wmat_param_spec wmat__svd_keys[] = {
    {"rank", WMAT_PARAM_INT, "0", 0, 1 << 30, NULL,
     "components kept per matrix (capped at min(rows, cols)); 0: chosen by energy; wins over energy", NULL},
    {"energy", WMAT_PARAM_FLOAT, "0", 0, 1, NULL,
     "the fewest components whose squared singular values hold this share of sum s_i^2; 0: rank", NULL},
    {"solver", WMAT_PARAM_ENUM, "auto", 0, 0, "auto|exact|randomized",
     "exact: LAPACK's full SVD; randomized: range finder with power iterations (rank only); auto: randomized when "
     "rank + 10 <= min(rows, cols) / 4 and the matrix has 1M+ entries",
     NULL},
    {"power_iters", WMAT_PARAM_INT, "2", 0, 20, NULL, "randomized: power iterations (more: closer to exact, slower)", NULL},
    {"seed", WMAT_PARAM_INT, "1", 0, 2147483647, NULL, "randomized: seed of the Gaussian test matrix", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__decomp_svd_check(const wmat_pset *ps, int global)
{
    const int64_t rank = wmat__pset_int(ps, "rank");
    const double energy = wmat__pset_float(ps, "energy");
    if (rank == 0 && energy == 0) return wmat_set_error(WMAT_ERR_INVALID, "svd: give rank > 0 or energy in (0, 1]");
    if (wmat__pset_int(ps, "solver") == 2 && rank == 0)
        return wmat_set_error(WMAT_ERR_INVALID, "svd: solver=randomized needs rank > 0 (energy needs the whole spectrum)");
    if (global && rank > 0 && energy > 0)
        return wmat_set_error(WMAT_ERR_INVALID, "svd: rank=%lld and energy=%g exclude each other: give one", (long long)rank,
                              energy);
    return WMAT_OK;
}

#define RSVD_OVERSAMPLE 10

/* Orthonormal basis of Y's columns (M x N, N <= M) in place. */
static int orth(int M, int N, double *Y, double *tau)
{
    int rc = wmat__dgeqrf(M, N, Y, N, tau);
    return rc ? rc : wmat__dorgqr(M, N, N, Y, N, tau);
}

/* Rank-l randomized SVD of A (rows x cols, l <= min(rows, cols)): U (rows
 * x l), s[l] descending, VT (l x cols). */
static int rsvd(const double *A, int rows, int cols, int l, int power_iters, uint64_t seed, double *U, double *s, double *VT)
{
    double *Y = wmat__malloc((size_t)rows * (size_t)l * sizeof(double));
    double *Z = wmat__malloc((size_t)cols * (size_t)l * sizeof(double));
    double *B = wmat__malloc((size_t)l * (size_t)cols * sizeof(double));
    double *Ub = wmat__malloc((size_t)l * (size_t)l * sizeof(double));
    double *tau = wmat__malloc((size_t)l * sizeof(double));
    int rc = WMAT_OK;
    if (!Y || !Z || !B || !Ub || !tau) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "svd: out of memory for a rank-%d range finder on a (%d x %d) matrix", l, rows, cols);
        goto done;
    }
    wmat_rng rng;
    wmat_rng_seed(&rng, seed);
    for (size_t i = 0; i < (size_t)cols * (size_t)l; i++) Z[i] = wmat_rng_normal(&rng);
    if ((rc = wmat__dgemm(0, 0, rows, l, cols, 1.0, A, cols, Z, l, 0.0, Y, l)) || (rc = orth(rows, l, Y, tau))) goto done;
    for (int it = 0; it < power_iters; it++) {
        if ((rc = wmat__dgemm(1, 0, cols, l, rows, 1.0, A, cols, Y, l, 0.0, Z, l)) || (rc = orth(cols, l, Z, tau)) ||
            (rc = wmat__dgemm(0, 0, rows, l, cols, 1.0, A, cols, Z, l, 0.0, Y, l)) || (rc = orth(rows, l, Y, tau)))
            goto done;
    }
    if ((rc = wmat__dgemm(1, 0, l, cols, rows, 1.0, Y, l, A, cols, 0.0, B, cols)) ||
        (rc = wmat__dgesdd(l, cols, B, cols, s, Ub, l, VT, cols)))
        goto done;
    rc = wmat__dgemm(0, 0, rows, l, l, 1.0, Y, l, Ub, l, 0.0, U, l);
done:
    wmat__free(Y);
    wmat__free(Z);
    wmat__free(B);
    wmat__free(Ub);
    wmat__free(tau);
    return rc;
}

int wmat__decomp_svd(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                     wmat_tensor *out, int64_t *rank_out, double *rel_error)
{
    const int64_t k = rows < cols ? rows : cols;
    const int64_t rank = wmat__pset_int(ps, "rank");
    /* in float, as the public field (wmat_decompose_params.energy) has
     * always held it: the same E picks the same rank from the CLI and the
     * library */
    const double energy = (float)wmat__pset_float(ps, "energy");
    if (rows > INT32_MAX / 2 || cols > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "svd: a (%lld x %lld) matrix is too large", (long long)rows, (long long)cols);
    const int64_t solver = wmat__pset_int(ps, "solver");
    const int64_t l = rank > 0 && rank + RSVD_OVERSAMPLE < k ? rank + RSVD_OVERSAMPLE : k;
    const int randomized =
        rank > 0 && (solver == 2 ? l < k : solver == 0 && 4 * l <= k && rows * cols >= ((int64_t)1 << 20));
    /* ns singular triplets come back: all k, or the range finder's l */
    const int64_t ns = randomized ? l : k;
    double *A = wmat__malloc((size_t)(rows * cols) * sizeof(double));
    double *U = wmat__malloc((size_t)(rows * ns) * sizeof(double));
    double *VT = wmat__malloc((size_t)(ns * cols) * sizeof(double));
    double *s = wmat__malloc((size_t)ns * sizeof(double));
    float *Af = NULL, *Bf = NULL;
    int rc = WMAT_OK;
    if (!A || !U || !VT || !s) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "svd: out of memory for a (%lld x %lld) matrix", (long long)rows, (long long)cols);
        goto done;
    }
    double total = 0;
    for (int64_t i = 0; i < rows * cols; i++) A[i] = W[i];
    if (randomized) {
        for (int64_t i = 0; i < rows * cols; i++) total += A[i] * A[i];
        if ((rc = rsvd(A, (int)rows, (int)cols, (int)l, (int)wmat__pset_int(ps, "power_iters"),
                       (uint64_t)wmat__pset_int(ps, "seed"), U, s, VT)))
            goto done;
    } else {
        if ((rc = wmat__dgesdd((int)rows, (int)cols, A, (int)cols, s, U, (int)k, VT, (int)cols))) goto done;
        for (int64_t i = 0; i < k; i++) total += s[i] * s[i];
    }
    int64_t r = k;
    if (rank > 0) r = rank < k ? rank : k;
    else if (energy > 0 && energy < 1) {
        double acc = 0;
        for (r = 0; r < k && acc < energy * total; r++) acc += s[r] * s[r];
        if (r < 1) r = 1;
    }
    double tail = 0;
    if (randomized) {
        double kept = 0;
        for (int64_t i = 0; i < r; i++) kept += s[i] * s[i];
        tail = total - kept > 0 ? total - kept : 0;
    } else
        for (int64_t i = r; i < k; i++) tail += s[i] * s[i];
    Af = wmat__malloc((size_t)(rows * r) * sizeof(float));
    Bf = wmat__malloc((size_t)(r * cols) * sizeof(float));
    if (!Af || !Bf) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "svd: out of memory for rank %lld factors", (long long)r);
        goto done;
    }
    /* A = U_r S_r (rows, r), B = V_r^T (r, cols): the scale sits in A, so B's
     * rows are orthonormal (and a quantized B later keeps a unit range) */
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < r; j++) Af[i * r + j] = (float)(U[i * ns + j] * s[j]);
    for (int64_t j = 0; j < r; j++)
        for (int64_t c = 0; c < cols; c++) Bf[j * cols + c] = (float)VT[j * cols + c];
    void *obj = NULL;
    if ((rc = wmat__lowrank_create(dtype, rows, cols, r, Af, Bf, &obj))) goto done;
    wmat__tensor_own_obj(out, rows, cols, obj);
    *rank_out = r;
    *rel_error = total > 0 ? sqrt(tail / total) : 0.0;
done:
    wmat__free(A);
    wmat__free(U);
    wmat__free(VT);
    wmat__free(s);
    wmat__free(Af);
    wmat__free(Bf);
    return rc;
}

int wmat__decomp_svd_rank(const float *W, int64_t rows, int64_t cols, int64_t rank, wmat_dtype dtype, wmat_tensor *out,
                          int64_t *rank_out, double *rel_error)
{
    wmat_pset sp;
    int rc = wmat__pset_init(&sp, wmat__svd_keys);
    if (rc) return rc;
    char kv[48];
    snprintf(kv, sizeof kv, "rank=%lld", (long long)rank);
    if (!(rc = wmat__pset_parse_kv(&sp, kv, ',', 0))) rc = wmat__decomp_svd(W, rows, cols, &sp, dtype, out, rank_out, rel_error);
    wmat__pset_free(&sp);
    return rc;
}
