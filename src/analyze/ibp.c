/* Propagation tightness of interval bounds (Mao, Mueller, Fischer, Vechev,
 * "Understanding certified training with interval bound propagation",
 * ICLR 2024). For a linear map M = W_L ... W_1 and an input box of radius
 * eps, the tightest box around the image has radius |M| eps, while interval
 * bound propagation (IBP) layer by layer gets |W_L| ... |W_1| eps. The
 * tightness is their ratio per output, in (0, 1]; 1 means IBP is exact.
 *
 * A transformer block is not a deep linear network, so wmat reports the
 * paths of a block that are linear for a box input: the attention value
 * path O V diag(g) (at fixed attention weights a row of softmax is a convex
 * combination, which maps a box shared by all positions onto itself) and the
 * FFN path D U diag(g) (the gate taken as identity, the paper's deep linear
 * model), the block's residual map (I + F)(I + A) and the stack of blocks
 * so far, with RMS normalisation at rms 1 (its weights g kept: they scale
 * the box per channel). docs/EXPERIMENTS.md has the measurements. */
#include "analyze.h"
#include "core/internal.h"
#include "linalg/dense.h"

#include <math.h>
#include <string.h>

typedef struct {
    double mean, min, max;
} tau_stats;

/* num[i] / den[i] over the outputs whose IBP radius is positive. */
static tau_stats ratio_stats(const double *num, const double *den, int64_t n)
{
    tau_stats s = {0, INFINITY, -INFINITY};
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!(den[i] > 0)) continue;
        double t = num[i] / den[i];
        s.mean += t;
        s.min = fmin(s.min, t);
        s.max = fmax(s.max, t);
        k++;
    }
    if (!k) return (tau_stats){NAN, NAN, NAN};
    s.mean /= (double)k;
    return s;
}

static void abs_row_sums(const double *M, int64_t rows, int64_t cols, double *out)
{
    for (int64_t i = 0; i < rows; i++) {
        double s = 0;
        for (int64_t j = 0; j < cols; j++) s += fabs(M[i * cols + j]);
        out[i] = s;
    }
}

/* out = |W| r (W rows x cols, fp32 row-major). */
static void abs_matvec(const float *W, int64_t rows, int64_t cols, const double *r, double *out)
{
    for (int64_t i = 0; i < rows; i++) {
        const float *w = W + i * cols;
        double s = 0;
        for (int64_t j = 0; j < cols; j++) s += fabs((double)w[j]) * r[j];
        out[i] = s;
    }
}

static int all_finite(const float *W, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(W[i])) return 0;
    return 1;
}

int wmat_ibp_tightness(const float *const *W, const int64_t *dims, int L, double *mean, double *min_out,
                       double *max_out)
{
    if (!W || !dims || L < 1) return wmat_set_error(WMAT_ERR_INVALID, "ibp tightness: need at least one matrix");
    int64_t big = 0;
    for (int i = 0; i <= L; i++) {
        if (dims[i] < 1 || dims[i] > INT32_MAX)
            return wmat_set_error(WMAT_ERR_INVALID, "ibp tightness: dimension %d is %lld", i, (long long)dims[i]);
        big = dims[i] > big ? dims[i] : big;
    }
    for (int i = 0; i < L; i++) {
        if (!W[i]) return wmat_set_error(WMAT_ERR_INVALID, "ibp tightness: matrix %d is missing", i);
        if (!all_finite(W[i], dims[i + 1] * dims[i]))
            return wmat_set_error(WMAT_ERR_NUMERIC, "ibp tightness: matrix %d holds a non-finite value", i);
    }
    int64_t n0 = dims[0];
    double *P = wmat__malloc((size_t)(big * n0) * sizeof(double));
    double *Q = wmat__malloc((size_t)(big * n0) * sizeof(double));
    double *Wd = wmat__malloc((size_t)(big * big) * sizeof(double));
    double *r = wmat__malloc((size_t)big * sizeof(double)), *r2 = wmat__malloc((size_t)big * sizeof(double));
    double *num = wmat__malloc((size_t)big * sizeof(double));
    int rc = WMAT_OK;
    if (!P || !Q || !Wd || !r || !r2 || !num) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "ibp tightness: out of memory (widest dimension %lld)", (long long)big);
        goto done;
    }
    /* the exact map, accumulated in double from the input side */
    for (int64_t i = 0; i < dims[1] * n0; i++) P[i] = W[0][i];
    for (int j = 0; j < n0; j++) r[j] = 1;
    abs_matvec(W[0], dims[1], n0, r, r2);
    for (int l = 1; l < L; l++) {
        int64_t m = dims[l + 1], k = dims[l];
        for (int64_t i = 0; i < m * k; i++) Wd[i] = W[l][i];
        if ((rc = wmat__dgemm(0, 0, (int)m, (int)n0, (int)k, 1.0, Wd, (int)k, P, (int)n0, 0.0, Q, (int)n0))) goto done;
        double *t = P;
        P = Q;
        Q = t;
        abs_matvec(W[l], m, k, r2, r);
        t = r;
        r = r2;
        r2 = t;
    }
    abs_row_sums(P, dims[L], n0, num);
    tau_stats s = ratio_stats(num, r2, dims[L]);
    if (mean) *mean = s.mean;
    if (min_out) *min_out = s.min;
    if (max_out) *max_out = s.max;
done:
    wmat__free(P);
    wmat__free(Q);
    wmat__free(Wd);
    wmat__free(r);
    wmat__free(r2);
    wmat__free(num);
    return rc;
}

/* One block's matrices as fp32 (other kinds dequantized) and its two norms. */
typedef struct {
    float *o, *v, *d, *u;
    const float *ga, *gf;
} block_w;

static int fetch(wmat_model *m, int layer, wmat_linear_kind k, int64_t rows, int64_t cols, float *dst)
{
    const wmat_tensor *t = wmat_model_linear(m, layer, k);
    if (!t || t->ndim != 2 || t->shape[0] != rows || t->shape[1] != cols || !wmat_tensor_kind(t))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "ibp: layer %d %s is not a (%lld x %lld) weight", layer,
                              wmat_linear_name(k), (long long)rows, (long long)cols);
    int rc = wmat_tensor_dequant_rows(t, 0, rows, dst);
    if (rc) return rc;
    if (!all_finite(dst, rows * cols))
        return wmat_set_error(WMAT_ERR_NUMERIC, "ibp: layer %d %s holds a non-finite value", layer, wmat_linear_name(k));
    return WMAT_OK;
}

static const float *norm_of(wmat_model *m, int layer, wmat_layer_weight w, int64_t dim)
{
    const wmat_tensor *t = wmat_model_layer_tensor(m, layer, w);
    if (!t || t->dtype != WMAT_F32 || t->ndim != 1 || t->shape[0] != dim) return NULL;
    return t->data;
}

/* A residual branch Wout Win diag(g) (dim x dim): Win with its GQA rows
 * repeated (rep > 1) and its columns scaled by g into tin (inner x dim),
 * Wout into tout (dim x inner), their product into Bm. */
static int branch_build(const float *Wout, const float *Win, const float *g, int64_t dim, int64_t inner, int rep,
                        int64_t head, double *tin, double *tout, double *Bm)
{
    for (int64_t i = 0; i < inner; i++) {
        int64_t src = rep > 1 ? ((i / head) / rep) * head + i % head : i;
        for (int64_t j = 0; j < dim; j++) tin[i * dim + j] = (double)Win[src * dim + j] * g[j];
    }
    for (int64_t i = 0; i < dim * inner; i++) tout[i] = Wout[i];
    return wmat__dgemm(0, 0, (int)dim, (int)dim, (int)inner, 1.0, tout, (int)inner, tin, (int)dim, 0.0, Bm, (int)dim);
}

/* IBP radius of the branch's output for an input radius r: |Wout| (|Win g| r). */
static void branch_radius(const double *tin, const double *tout, int64_t dim, int64_t inner, const double *r,
                          double *out, double *scratch)
{
    for (int64_t i = 0; i < inner; i++) {
        double s = 0;
        for (int64_t j = 0; j < dim; j++) s += fabs(tin[i * dim + j]) * r[j];
        scratch[i] = s;
    }
    for (int64_t i = 0; i < dim; i++) {
        double s = 0;
        for (int64_t j = 0; j < inner; j++) s += fabs(tout[i * inner + j]) * scratch[j];
        out[i] = s;
    }
}

int wmat_ibp_model(wmat_model *m, wmat_ibp_block *out, int n_out)
{
    if (!m || !out) return wmat_set_error(WMAT_ERR_INVALID, "ibp: model and output are required");
    const wmat_config *c = wmat_model_config(m);
    int L = c->n_layers, H = c->n_heads, KV = c->n_kv_heads > 0 ? c->n_kv_heads : c->n_heads;
    int64_t dim = c->dim, hid = c->hidden_dim, hd = c->head_dim > 0 ? c->head_dim : (H > 0 ? dim / H : 0);
    if (n_out < L) return wmat_set_error(WMAT_ERR_INVALID, "ibp: room for %d blocks, the model has %d", n_out, L);
    if (L < 1 || H < 1 || KV < 1 || H % KV || hd < 1 || hid < 1 || dim < 1)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "ibp: not a LLaMA-style model (layers %d, heads %d/%d)", L, H, KV);
    if (c->shortcuts)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "ibp: models with residual shortcut matrices are not supported");
    int64_t inner_a = (int64_t)H * hd, big = inner_a > hid ? inner_a : hid;
    size_t dd = (size_t)(dim * dim);
    float *o = wmat__malloc((size_t)(dim * inner_a) * sizeof(float));
    float *v = wmat__malloc((size_t)((int64_t)KV * hd * dim) * sizeof(float));
    float *dn = wmat__malloc((size_t)(dim * hid) * sizeof(float));
    float *up = wmat__malloc((size_t)(hid * dim) * sizeof(float));
    double *A = wmat__malloc(dd * sizeof(double)), *F = wmat__malloc(dd * sizeof(double));
    double *Bk = wmat__malloc(dd * sizeof(double)), *S = wmat__malloc(dd * sizeof(double));
    double *T = wmat__malloc(dd * sizeof(double));
    double *ina = wmat__malloc((size_t)(inner_a * dim) * sizeof(double));
    double *outa = wmat__malloc((size_t)(inner_a * dim) * sizeof(double));
    double *inf = wmat__malloc((size_t)(hid * dim) * sizeof(double));
    double *outf = wmat__malloc((size_t)(hid * dim) * sizeof(double));
    double *vec = wmat__malloc((size_t)(big + 10 * dim) * sizeof(double));
    int rc = WMAT_OK;
    if (!o || !v || !dn || !up || !A || !F || !Bk || !S || !T || !ina || !outa || !inf || !outf || !vec) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "ibp: out of memory (dim %lld, hidden %lld)", (long long)dim, (long long)hid);
        goto done;
    }
    double *scratch = vec, *one = vec + big, *ra = one + dim, *rf = ra + dim, *r1 = rf + dim, *num = r1 + dim,
           *rs = num + dim, *rs1 = rs + dim, *rsa = rs1 + dim;
    for (int64_t j = 0; j < dim; j++) one[j] = rs[j] = 1;
    for (int l = 0; l < L; l++) {
        const float *ga = norm_of(m, l, WMAT_W_ATTN_NORM, dim), *gf = norm_of(m, l, WMAT_W_FFN_NORM, dim);
        if (!ga || !gf) {
            rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "ibp: layer %d has no fp32 RMSNorm weights of length %lld", l,
                                (long long)dim);
            goto done;
        }
        if ((rc = fetch(m, l, WMAT_LIN_O, dim, inner_a, o)) || (rc = fetch(m, l, WMAT_LIN_V, (int64_t)KV * hd, dim, v)) ||
            (rc = fetch(m, l, WMAT_LIN_DOWN, dim, hid, dn)) || (rc = fetch(m, l, WMAT_LIN_UP, hid, dim, up)))
            goto done;
        wmat_ibp_block *b = &out[l];
        memset(b, 0, sizeof *b);
        b->layer = l;
        if ((rc = branch_build(o, v, ga, dim, inner_a, H / KV, hd, ina, outa, A)) ||
            (rc = branch_build(dn, up, gf, dim, hid, 1, hid, inf, outf, F)))
            goto done;
        /* each branch alone, input radius 1 */
        branch_radius(ina, outa, dim, inner_a, one, ra, scratch);
        abs_row_sums(A, dim, dim, num);
        tau_stats ta = ratio_stats(num, ra, dim);
        branch_radius(inf, outf, dim, hid, one, rf, scratch);
        abs_row_sums(F, dim, dim, num);
        tau_stats tf = ratio_stats(num, rf, dim);
        b->attn = ta.mean;
        b->attn_min = ta.min;
        b->ffn = tf.mean;
        b->ffn_min = tf.min;
        b->attn_init = sqrt(M_PI / (2.0 * (double)inner_a));
        b->ffn_init = sqrt(M_PI / (2.0 * (double)hid));
        /* the block (I + F)(I + A); IBP adds each branch's radius to the residual's */
        for (int64_t i = 0; i < dim; i++) A[i * dim + i] += 1, F[i * dim + i] += 1;
        if ((rc = wmat__dgemm(0, 0, (int)dim, (int)dim, (int)dim, 1.0, F, (int)dim, A, (int)dim, 0.0, Bk, (int)dim)))
            goto done;
        abs_row_sums(Bk, dim, dim, num);
        for (int64_t i = 0; i < dim; i++) r1[i] = 1 + ra[i];
        branch_radius(inf, outf, dim, hid, r1, rf, scratch);
        for (int64_t i = 0; i < dim; i++) rf[i] += r1[i];
        b->block = ratio_stats(num, rf, dim).mean;
        /* the stack of blocks 0..l: S = B_l S, the IBP radii carried along */
        if (l == 0) memcpy(S, Bk, dd * sizeof(double));
        else {
            if ((rc = wmat__dgemm(0, 0, (int)dim, (int)dim, (int)dim, 1.0, Bk, (int)dim, S, (int)dim, 0.0, T, (int)dim)))
                goto done;
            memcpy(S, T, dd * sizeof(double));
        }
        branch_radius(ina, outa, dim, inner_a, rs, rsa, scratch);
        for (int64_t i = 0; i < dim; i++) rs1[i] = rs[i] + rsa[i];
        branch_radius(inf, outf, dim, hid, rs1, rsa, scratch);
        for (int64_t i = 0; i < dim; i++) rs[i] = rs1[i] + rsa[i];
        abs_row_sums(S, dim, dim, num);
        b->stack = ratio_stats(num, rs, dim).mean;
    }
done:
    wmat__free(o);
    wmat__free(v);
    wmat__free(dn);
    wmat__free(up);
    wmat__free(A);
    wmat__free(F);
    wmat__free(Bk);
    wmat__free(S);
    wmat__free(T);
    wmat__free(ina);
    wmat__free(outa);
    wmat__free(inf);
    wmat__free(outf);
    wmat__free(vec);
    return rc;
}
