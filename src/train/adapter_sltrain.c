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

#include "../wop/kern_dense.h" /* wmat__isa_best */
#include "../wop/kern_sparse.h"
#include "../wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SL_X86 1
#define SL_AVX2 __attribute__((target("avx2,fma")))
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


static int nt_of(const wmat__adapter_cfg *c) { return c->nt > 0 ? c->nt : 1; }

/* The kernels work on blocks of TB rows of X (and dY) transposed into
 * (cols, TB) panels, so every support entry is one TB-wide multiply-add
 * on contiguous memory (no gathers): y[r][0..TB) += v * xt[col][0..TB).
 * Sums run over the support in its order within a block, and blocks in
 * order, whatever the thread count. */
#define TB 16

size_t wmat__support_ws_floats(int cols, int rows, int nt) { return (size_t)(nt > 0 ? nt : 1) * TB * ((size_t)cols + rows); }

/* At (n, TB) = rows t0 .. t0+nb-1 of A (ld) at columns c0 .. c0+n-1, transposed; lanes past nb zero. */
static void panel(float *At, const float *A, size_t ld, int t0, int nb, int c0, int n)
{
    for (int c = 0; c < n; c++) {
        float *d = At + (size_t)c * TB;
        for (int tt = 0; tt < nb; tt++) d[tt] = A[(size_t)(t0 + tt) * ld + c0 + c];
        for (int tt = nb; tt < TB; tt++) d[tt] = 0.0f;
    }
}

/* The three inner loops over a block, plain C (the reference twins) and
 * AVX2+FMA: acc (TB) = sum_j val[j] xt[col j] over row r's entries;
 * dval[j] += dot(g, xt[col j]); dxt[col j] += val[j] g. */
static void blk_fwd_c(float *acc, const float *xt, const int32_t *col, const float *val, int32_t j0, int32_t j1)
{
    for (int tt = 0; tt < TB; tt++) acc[tt] = 0.0f;
    for (int32_t j = j0; j < j1; j++) {
        const float v = val[j], *xc = xt + (size_t)col[j] * TB;
        for (int tt = 0; tt < TB; tt++) acc[tt] += v * xc[tt];
    }
}
static void blk_dval_c(float *dval, const float *g, const float *xt, const int32_t *col, int32_t j0, int32_t j1)
{
    for (int32_t j = j0; j < j1; j++) {
        const float *xc = xt + (size_t)col[j] * TB;
        float s = 0.0f;
        for (int tt = 0; tt < TB; tt++) s += g[tt] * xc[tt];
        dval[j] += s;
    }
}
static void blk_dx_c(float *dxt, const float *g, const int32_t *col, const float *val, int32_t j0, int32_t j1)
{
    for (int32_t j = j0; j < j1; j++) {
        const float v = val[j];
        float *d = dxt + (size_t)col[j] * TB;
        for (int tt = 0; tt < TB; tt++) d[tt] += v * g[tt];
    }
}
#ifdef SL_X86
SL_AVX2 static void blk_fwd_avx2(float *acc, const float *xt, const int32_t *col, const float *val, int32_t j0, int32_t j1)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int32_t j = j0; j < j1; j++) {
        const __m256 v = _mm256_broadcast_ss(val + j);
        const float *xc = xt + (size_t)col[j] * TB;
        a0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(xc), a0);
        a1 = _mm256_fmadd_ps(v, _mm256_loadu_ps(xc + 8), a1);
    }
    _mm256_storeu_ps(acc, a0);
    _mm256_storeu_ps(acc + 8, a1);
}
SL_AVX2 static void blk_dval_avx2(float *dval, const float *g, const float *xt, const int32_t *col, int32_t j0, int32_t j1)
{
    const __m256 g0 = _mm256_loadu_ps(g), g1 = _mm256_loadu_ps(g + 8);
    for (int32_t j = j0; j < j1; j++) {
        const float *xc = xt + (size_t)col[j] * TB;
        const __m256 p = _mm256_fmadd_ps(g1, _mm256_loadu_ps(xc + 8), _mm256_mul_ps(g0, _mm256_loadu_ps(xc)));
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        dval[j] += _mm_cvtss_f32(h);
    }
}
SL_AVX2 static void blk_dx_avx2(float *dxt, const float *g, const int32_t *col, const float *val, int32_t j0, int32_t j1)
{
    const __m256 g0 = _mm256_loadu_ps(g), g1 = _mm256_loadu_ps(g + 8);
    for (int32_t j = j0; j < j1; j++) {
        const __m256 v = _mm256_broadcast_ss(val + j);
        float *d = dxt + (size_t)col[j] * TB;
        _mm256_storeu_ps(d, _mm256_fmadd_ps(v, g0, _mm256_loadu_ps(d)));
        _mm256_storeu_ps(d + 8, _mm256_fmadd_ps(v, g1, _mm256_loadu_ps(d + 8)));
    }
}
#endif

typedef struct {
    void (*fwd)(float *, const float *, const int32_t *, const float *, int32_t, int32_t);
    void (*dval)(float *, const float *, const float *, const int32_t *, int32_t, int32_t);
    void (*dx)(float *, const float *, const int32_t *, const float *, int32_t, int32_t);
} blk_kernels;

static blk_kernels pick(int isa)
{
#ifdef SL_X86
    if (isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2) return (blk_kernels){blk_fwd_avx2, blk_dval_avx2, blk_dx_avx2};
#endif
    (void)isa;
    return (blk_kernels){blk_fwd_c, blk_dval_c, blk_dx_c};
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

void wmat__support_forward(float *Y, const float *X, const int32_t *off, const int32_t *col, const float *val, int BT,
                           int cols, int rows, float *ws, int nt, int isa)
{
    const blk_kernels K = pick(isa);
    const int nblk = (BT + TB - 1) / TB;
    const long work = (long)BT * off[rows];
    (void)work;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int b = 0; b < nblk; b++) {
        float *xt = ws + (size_t)thread_id() * TB * ((size_t)cols + rows);
        const int t0 = b * TB, nb = BT - t0 < TB ? BT - t0 : TB;
        panel(xt, X, (size_t)cols, t0, nb, 0, cols);
        for (int r = 0; r < rows; r++) {
            float acc[TB];
            K.fwd(acc, xt, col, val, off[r], off[r + 1]);
            for (int tt = 0; tt < nb; tt++) Y[(size_t)(t0 + tt) * rows + r] += acc[tt];
        }
    }
}

void wmat__support_backward(float *dX, float *dval, const float *dY, const float *X, const int32_t *off,
                            const int32_t *col, const float *val, int BT, int cols, int rows, float *ws, int nt,
                            int isa)
{
    const blk_kernels K = pick(isa);
    const int nblk = (BT + TB - 1) / TB;
    const long work = (long)BT * off[rows];
    (void)work;
    /* dval[j] += sum_t dY[t, r(j)] X[t, col j]: each thread owns a range of
     * rows of S (so of values) and walks every block of rows of X */
#pragma omp parallel num_threads(nt) if (nt > 1 && work >= 65536)
    {
#ifdef _OPENMP
        const int th = omp_get_thread_num(), n = omp_get_num_threads();
#else
        const int th = 0, n = 1;
#endif
        const int r0 = (int)((long)rows * th / n), r1 = (int)((long)rows * (th + 1) / n);
        float *xt = ws + (size_t)th * TB * ((size_t)cols + rows), *dyt = xt + (size_t)TB * cols;
        for (int b = 0; b < nblk && r1 > r0; b++) {
            const int t0 = b * TB, nb = BT - t0 < TB ? BT - t0 : TB;
            panel(xt, X, (size_t)cols, t0, nb, 0, cols);
            panel(dyt, dY, (size_t)rows, t0, nb, r0, r1 - r0);
            for (int r = r0; r < r1; r++) K.dval(dval, dyt + (size_t)(r - r0) * TB, xt, col, off[r], off[r + 1]);
        }
    }
    if (!dX) return;
    /* dX[t] += S^T dY[t], a block of rows at a time in a (cols, TB) panel */
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && work >= 65536)
    for (int b = 0; b < nblk; b++) {
        float *dxt = ws + (size_t)thread_id() * TB * ((size_t)cols + rows), *dyt = dxt + (size_t)TB * cols;
        const int t0 = b * TB, nb = BT - t0 < TB ? BT - t0 : TB;
        panel(dyt, dY, (size_t)rows, t0, nb, 0, rows);
        memset(dxt, 0, (size_t)TB * cols * sizeof(float));
        for (int r = 0; r < rows; r++) K.dx(dxt, dyt + (size_t)r * TB, col, val, off[r], off[r + 1]);
        for (int tt = 0; tt < nb; tt++) {
            float *dx = dX + (size_t)(t0 + tt) * cols;
            for (int c = 0; c < cols; c++) dx[c] += dxt[(size_t)c * TB + tt];
        }
    }
}

/* ------------------------------------------------------------ the entry */

static int64_t nnz_of(const wmat__adapter_cfg *c, int in, int out) { return wmat__support_nnz(c->density, out, in); }
static float sl_scale(const wmat__adapter_cfg *c) { return c->alpha / (float)c->rank; }

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

static int sl_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base; /* none: the entry is the layer */
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

/* A support as init makes it: offsets from 0 to nnz, not falling, columns
 * increasing within a row and inside the matrix. */
static int sl_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    const int32_t *off = off_of(fixed), *col = col_of(fixed, out);
    if (off[0] != 0 || off[out] != nnz_of(c, in, out)) return 0;
    for (int r = 0; r < out; r++) {
        if (off[r + 1] < off[r]) return 0;
        for (int32_t j = off[r]; j < off[r + 1]; j++)
            if (col[j] < 0 || col[j] >= in || (j > off[r] && col[j] <= col[j - 1])) return 0;
    }
    return 1;
}

static size_t sl_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }

/* LoRA's dxa (BT, r), then the support kernels' panels */
static size_t sl_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    return (((size_t)BT * c->rank + 15) & ~(size_t)15) + wmat__support_ws_floats(in, out, nt_of(c));
}
static float *support_ws(const wmat__adapter_cfg *c, float *scratch, int BT)
{
    return scratch + (((size_t)BT * c->rank + 15) & ~(size_t)15);
}

static int sl_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)base, (void)W;
    const float bound = 1.0f / sqrtf((float)in);
    for (size_t j = 0; j < (size_t)c->rank * in; j++) w[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    const int64_t nnz = nnz_of(c, in, out);
    int32_t *off = fixed;
    wmat__support_sample(rng, out, in, nnz, off, off + out + 1);
    for (int64_t j = 0; j < nnz; j++) w[2][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    return WMAT_OK;
}

static void sl_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)base;
    wmat__lora_path_forward(sl_scale(c), c, Y, act, X, w, BT, in, out);
    wmat__support_forward(Y, X, off_of(fixed), col_of(fixed, out), w[2], BT, in, out, support_ws(c, scratch, BT), nt_of(c), c->isa);
}

static void sl_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)base;
    wmat__lora_path_backward(sl_scale(c), c, dX, dw, scratch, dY, X, w, act, BT, in, out);
    if (dw[2])
        wmat__support_backward(dX, dw[2], dY, X, off_of(fixed), col_of(fixed, out), w[2], BT, in, out,
                               support_ws(c, scratch, BT), nt_of(c), c->isa);
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

static int sl_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    wmat_sgemm(0, 0, out, in, c->rank, sl_scale(c), w[1], c->rank, w[0], in, 1.0f, W, in); /* W += s B A */
    const int32_t *off = off_of(fixed), *col = col_of(fixed, out);
    for (int r = 0; r < out; r++)
        for (int32_t j = off[r]; j < off[r + 1]; j++) W[(size_t)r * in + col[j]] += w[2][j];
    return WMAT_OK;
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
    .fixed_valid = sl_fixed_valid,
    .act_floats = sl_act_floats,
    .scratch_floats = sl_scratch_floats,
    .scale = sl_scale,
    .init = sl_init,
    .forward = sl_forward,
    .backward = sl_backward,
    .merge = sl_merge,
    .to_weight = sl_to_weight,
    .peft_type = NULL,
};
