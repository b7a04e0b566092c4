/* SLTrain (Han et al. 2024): a linear layer trained from scratch as
 * W = (alpha/r) B A + S, A (r, in), B (out, r), S sparse on a support of
 * nnz = floor(density * out * in) positions drawn uniformly without
 * replacement once, then fixed; only A, B and S's values are parameters.
 * A ~ Kaiming-uniform(a = sqrt 5), i.e. U(-1/sqrt(in), 1/sqrt(in)) (LoRA's
 * init), B = 0, S's values ~ U(-1/sqrt(in), 1/sqrt(in)): at step 0 the
 * layer is the random sparse S alone. The entry replaces the base
 * (replaces_base): the trainer keeps no dense W for these layers, and the
 * trained layer is exported as a `sum` of a `lowrank` (s B, A) and a
 * `sparse` S weight, which saves and runs as such.
 *
 * The support lives in the entry's frozen data as row offsets and column
 * indices (adapter.h); the values are the third trainable tensor, shape
 * (nnz, 1). The sparse kernels below are plain C: per row of X the whole
 * support is one pass (the values and indices stay in L1/L2), threads
 * split the rows of X (forward, dX) or the rows of S (the values'
 * gradient), so results do not depend on the thread count. */
#include "adapter.h"

#include "../wop/kern_sparse.h"
#include "../wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------ support */

int64_t wmat__support_nnz(float density, int rows, int cols)
{
    return (int64_t)floor((double)density * (double)rows * (double)cols);
}

void wmat__support_sample(wmat_rng *rng, int rows, int cols, int64_t nnz, int32_t *off, int32_t *col)
{
    /* Knuth's selection sampling: position i (of N) is taken with
     * probability need / (N - i), which draws a uniform nnz-subset and
     * visits it in increasing order, so no sort is needed */
    const uint64_t N = (uint64_t)rows * (uint64_t)cols;
    uint64_t need = (uint64_t)nnz, i = 0;
    int32_t j = 0;
    for (int r = 0; r < rows; r++) {
        off[r] = j;
        for (int c = 0; c < cols; c++, i++)
            if (need && wmat_rng_u64(rng) % (N - i) < need) {
                col[j++] = c;
                need--;
            }
    }
    off[rows] = j;
}


void wmat__support_forward(float *Y, const float *X, const int32_t *off, const int32_t *col, const float *val, int BT,
                           int cols, int rows, int nt)
{
    const long work = (long)BT * off[rows];
    (void)work;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int t = 0; t < BT; t++) {
        const float *x = X + (size_t)t * cols;
        float *y = Y + (size_t)t * rows;
        for (int r = 0; r < rows; r++) {
            float s = 0.0f;
            for (int32_t j = off[r]; j < off[r + 1]; j++) s += val[j] * x[col[j]];
            y[r] += s;
        }
    }
}

void wmat__support_backward(float *dX, float *dval, const float *dY, const float *X, const int32_t *off,
                            const int32_t *col, const float *val, int BT, int cols, int rows, int nt)
{
    const long work = (long)BT * off[rows];
    (void)work;
    /* dval[j] += sum_t dY[t, r(j)] X[t, col j]: each thread owns a range of
     * rows of S (so of values) and walks every row of X in order */
#pragma omp parallel num_threads(nt) if (nt > 1 && work >= 65536)
    {
#ifdef _OPENMP
        const int th = omp_get_thread_num(), n = omp_get_num_threads();
#else
        const int th = 0, n = 1;
#endif
        const int r0 = (int)((long)rows * th / n), r1 = (int)((long)rows * (th + 1) / n);
        for (int t = 0; t < BT; t++) {
            const float *x = X + (size_t)t * cols, *dy = dY + (size_t)t * rows;
            for (int r = r0; r < r1; r++) {
                const float g = dy[r];
                for (int32_t j = off[r]; j < off[r + 1]; j++) dval[j] += g * x[col[j]];
            }
        }
    }
    if (!dX) return;
    /* dX[t] += S^T dY[t]: rows of X split over threads */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int t = 0; t < BT; t++) {
        const float *dy = dY + (size_t)t * rows;
        float *dx = dX + (size_t)t * cols;
        for (int r = 0; r < rows; r++) {
            const float g = dy[r];
            for (int32_t j = off[r]; j < off[r + 1]; j++) dx[col[j]] += val[j] * g;
        }
    }
}

/* ------------------------------------------------------------ the entry */

static int64_t nnz_of(const wmat__adapter_cfg *c, int in, int out) { return wmat__support_nnz(c->density, out, in); }
static float sl_scale(const wmat__adapter_cfg *c) { return c->alpha / (float)c->rank; }
static int nt_of(const wmat__adapter_cfg *c) { return c->nt > 0 ? c->nt : 1; }

/* the frozen data: off (out + 1) then col (nnz), int32 */
static const int32_t *off_of(const void *fixed) { return fixed; }
static const int32_t *col_of(const void *fixed, int out) { return (const int32_t *)fixed + out + 1; }

static void sl_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = c->rank; /* A */
    cols[0] = in;
    rows[1] = out;     /* B */
    cols[1] = c->rank;
    rows[2] = (int)nnz_of(c, in, out); /* S's values */
    cols[2] = 1;
}

static int sl_check(const wmat__adapter_cfg *c, int in, int out, const char *what)
{
    const int mn = in < out ? in : out;
    if (c->rank < 1 || c->rank > mn)
        return wmat_set_error(WMAT_ERR_INVALID, "sltrain: rank %d does not fit %s (%d x %d): it must be in [1, %d]",
                              c->rank, what, out, in, mn);
    if (!(c->density >= 0.0f && c->density < 1.0f))
        return wmat_set_error(WMAT_ERR_INVALID, "sltrain: density %g must be in [0, 1) (the share of %s's positions in S)",
                              (double)c->density, what);
    if (nnz_of(c, in, out) > INT32_MAX)
        return wmat_set_error(WMAT_ERR_INVALID, "sltrain: the support of %s has more than 2^31 - 1 positions", what);
    if (!isfinite(c->alpha)) return wmat_set_error(WMAT_ERR_INVALID, "sltrain: alpha must be finite");
    return WMAT_OK;
}

static size_t sl_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    return ((size_t)out + 1 + (size_t)nnz_of(c, in, out)) * sizeof(int32_t);
}

static size_t sl_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }

static void sl_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, int in, int out, wmat_rng *rng)
{
    const float bound = 1.0f / sqrtf((float)in);
    for (size_t j = 0; j < (size_t)c->rank * in; j++) w[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    const int64_t nnz = nnz_of(c, in, out);
    int32_t *off = fixed;
    wmat__support_sample(rng, out, in, nnz, off, off + out + 1);
    for (int64_t j = 0; j < nnz; j++) w[2][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
}

static void sl_forward(const wmat__adapter_cfg *c, float *Y, float *act, const float *X, const float *const *w,
                       const void *fixed, int BT, int in, int out)
{
    wmat__lora_path_forward(sl_scale(c), c, Y, act, X, w, BT, in, out);
    wmat__support_forward(Y, X, off_of(fixed), col_of(fixed, out), w[2], BT, in, out, nt_of(c));
}

static void sl_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const float *act, int BT, int in,
                        int out)
{
    wmat__lora_path_backward(sl_scale(c), c, dX, dw, scratch, dY, X, w, act, BT, in, out);
    if (dw[2]) wmat__support_backward(dX, dw[2], dY, X, off_of(fixed), col_of(fixed, out), w[2], BT, in, out, nt_of(c));
    else if (dX) {
        /* only the input gradient: a throwaway values gradient is not
         * worth a buffer, so S^T dY directly */
        const int32_t *off = off_of(fixed), *col = col_of(fixed, out);
        for (int t = 0; t < BT; t++)
            for (int r = 0; r < out; r++)
                for (int32_t j = off[r]; j < off[r + 1]; j++)
                    dX[(size_t)t * in + col[j]] += w[2][j] * dY[(size_t)t * out + r];
    }
}

static void sl_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    wmat_sgemm(0, 0, out, in, c->rank, sl_scale(c), w[1], c->rank, w[0], in, 1.0f, W, in); /* W += s B A */
    const int32_t *off = off_of(fixed), *col = col_of(fixed, out);
    for (int r = 0; r < out; r++)
        for (int32_t j = off[r]; j < off[r + 1]; j++) W[(size_t)r * in + col[j]] += w[2][j];
}

/* sum(lowrank(s B, A), sparse(S)); a low-rank weight alone when the
 * support is empty (density 0: SLTrain's low-rank-only baseline). */
static int sl_to_weight(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                        wmat_tensor *dst)
{
    const int r = c->rank;
    const float s = sl_scale(c);
    const int64_t nnz = nnz_of(c, in, out);
    float *sB = wmat__malloc((size_t)out * r * sizeof(float));
    if (!sB) return wmat_set_error(WMAT_ERR_NOMEM, "sltrain: out of memory");
    for (size_t i = 0; i < (size_t)out * r; i++) sB[i] = s * w[1][i];
    void *lr = NULL;
    int rc = wmat__lowrank_create(WMAT_F32, out, in, r, sB, w[0], &lr);
    wmat__free(sB);
    if (rc) return rc;
    if (nnz == 0) {
        wmat__tensor_own_obj(dst, out, in, lr);
        return WMAT_OK;
    }
    /* the sparse kind builds from a dense matrix and a mask: one (out, in)
     * scratch while exporting, never while training */
    float *S = wmat__calloc((size_t)out * in, sizeof(float));
    uint8_t *mask = wmat__calloc((size_t)out * in, 1);
    void *sp = NULL, *sum = NULL;
    wmat_tensor A, B;
    memset(&A, 0, sizeof A);
    memset(&B, 0, sizeof B);
    wmat__tensor_own_obj(&A, out, in, lr);
    if (!S || !mask) rc = wmat_set_error(WMAT_ERR_NOMEM, "sltrain: out of memory");
    if (!rc) {
        const int32_t *off = off_of(fixed), *col = col_of(fixed, out);
        for (int rr = 0; rr < out; rr++)
            for (int32_t j = off[rr]; j < off[rr + 1]; j++) {
                S[(size_t)rr * in + col[j]] = w[2][j];
                mask[(size_t)rr * in + col[j]] = 1;
            }
        rc = wmat__sparse_create(S, mask, out, in, WMAT_F32, &sp);
    }
    if (!rc) {
        wmat__tensor_own_obj(&B, out, in, sp);
        rc = wmat__sum_create(&A, &B, &sum);
    }
    wmat__free(S);
    wmat__free(mask);
    if (rc) {
        wmat__tensor_free_data(&A);
        wmat__tensor_free_data(&B);
        return rc;
    }
    wmat__tensor_own_obj(dst, out, in, sum);
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_sltrain = {
    .name = "sltrain",
    .summary = "SLTrain: the linear is (alpha/r) B A + S, S sparse on a fixed random support (--density), trained from scratch",
    .n_tensors = 3,
    .tensor_key = {"lora_A", "lora_B", "sparse_values"},
    .rows_are_out = {0, 1, 0},
    .replaces_base = 1,
    .shapes = sl_shapes,
    .check = sl_check,
    .fixed_bytes = sl_fixed_bytes,
    .act_floats = sl_act_floats,
    .scratch_floats = sl_act_floats,
    .scale = sl_scale,
    .init = sl_init,
    .forward = sl_forward,
    .backward = sl_backward,
    .merge = sl_merge,
    .to_weight = sl_to_weight,
    .peft_type = NULL,
};
