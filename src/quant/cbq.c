/* CBQ below train (cbq.h): the coarse-to-fine pre-processing of weights,
 * the method's initial grid, and LoRA-Rounding's forward and backward.
 * Weight-only: the paper's CFP also scales activation outliers, which a
 * weight-only grid has no use for. */
#include "cbq.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CBQ_ZETA 1.1f
#define CBQ_GAMMA (-0.1f)

void wmat__cbq_params_from(const wmat_pset *ps, wmat_qparams *p)
{
    p->cbq.cfp = 1;
    p->cbq.cfp_lambda = 1.5;
    p->cbq.window = 2;
    p->cbq.iters = 100;
    p->cbq.rank = 4;
    p->cbq.batch = 1;
    p->cbq.windows = 0;
    p->cbq.lr = 1e-2;
    p->cbq.scale_lr = 1e-3;
    p->cbq.kl = 1.0;
    p->cbq.reg = 0.01;
    p->cbq.homologous = 0.0;
    p->cbq.seed = 1;
    p->cbq.ste = 1;
    if (!ps) return;
    if (wmat__pset_has(ps, "cfp")) p->cbq.cfp = (int)wmat__pset_int(ps, "cfp");
    if (wmat__pset_has(ps, "cfp_lambda")) p->cbq.cfp_lambda = wmat__pset_float(ps, "cfp_lambda");
    if (wmat__pset_has(ps, "cbq_window")) p->cbq.window = (int)wmat__pset_int(ps, "cbq_window");
    if (wmat__pset_has(ps, "cbq_iters")) p->cbq.iters = (int)wmat__pset_int(ps, "cbq_iters");
    if (wmat__pset_has(ps, "cbq_rank")) p->cbq.rank = (int)wmat__pset_int(ps, "cbq_rank");
    if (wmat__pset_has(ps, "cbq_batch")) p->cbq.batch = (int)wmat__pset_int(ps, "cbq_batch");
    if (wmat__pset_has(ps, "cbq_windows")) p->cbq.windows = (int)wmat__pset_int(ps, "cbq_windows");
    if (wmat__pset_has(ps, "cbq_lr")) p->cbq.lr = wmat__pset_float(ps, "cbq_lr");
    if (wmat__pset_has(ps, "cbq_scale_lr")) p->cbq.scale_lr = wmat__pset_float(ps, "cbq_scale_lr");
    if (wmat__pset_has(ps, "cbq_kl")) p->cbq.kl = wmat__pset_float(ps, "cbq_kl");
    if (wmat__pset_has(ps, "cbq_reg")) p->cbq.reg = wmat__pset_float(ps, "cbq_reg");
    if (wmat__pset_has(ps, "cbq_homologous")) p->cbq.homologous = wmat__pset_float(ps, "cbq_homologous");
    if (wmat__pset_has(ps, "cbq_ste")) p->cbq.ste = (int)wmat__pset_int(ps, "cbq_ste");
    if (wmat__pset_has(ps, "cbq_seed")) p->cbq.seed = (uint64_t)wmat__pset_int(ps, "cbq_seed");
}

static int cmp_float(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int64_t wmat__cbq_cfp(float *W, int64_t n, double lambda, float *thr)
{
    if (thr) *thr = 0.0f;
    if (n < 8) return 0;
    float *a = wmat__malloc((size_t)n * sizeof(float));
    if (!a) return 0; /* CFP is an improvement, not a requirement: none on no memory */
    for (int64_t i = 0; i < n; i++) a[i] = fabsf(W[i]);
    qsort(a, (size_t)n, sizeof(float), cmp_float);
    /* coarse: the interquartile rule on |W| */
    const double q1 = a[n / 4], q3 = a[(3 * n) / 4];
    const double T = q3 + lambda * (q3 - q1);
    int64_t k0 = n;
    while (k0 > 0 && a[k0 - 1] > T) k0--;
    const int64_t m = n - k0; /* candidates a[k0 .. n) ascending */
    int64_t cut = -1;
    if (m >= 2) {
        /* fine: split candidates into lo = a[k0..j) and hi = a[j..n),
         * maximizing the distance of the means minus the two standard
         * deviations (inter-set distance against intra-set spread, in one
         * unit; the paper's balancing coefficient lambda2 taken as 1) */
        double tot = 0.0, tot2 = 0.0;
        for (int64_t i = k0; i < n; i++) {
            tot += a[i];
            tot2 += (double)a[i] * a[i];
        }
        double s = 0.0, s2 = 0.0, best = -INFINITY;
        for (int64_t j = k0 + 1; j < n; j++) {
            s += a[j - 1];
            s2 += (double)a[j - 1] * a[j - 1];
            const double nl = (double)(j - k0), nh = (double)(n - j);
            const double ml = s / nl, mh = (tot - s) / nh;
            const double vl = s2 / nl - ml * ml, vh = (tot2 - s2) / nh - mh * mh;
            const double score = (mh - ml) - (sqrt(fmax(vl, 0.0)) + sqrt(fmax(vh, 0.0)));
            if (score > best) {
                best = score;
                cut = j;
            }
        }
    }
    int64_t count = 0;
    if (cut > k0) {
        const float t = a[cut - 1]; /* the largest kept magnitude */
        for (int64_t i = 0; i < n; i++)
            if (fabsf(W[i]) > t) {
                W[i] = W[i] > 0 ? t : -t;
                count++;
            }
        if (thr) *thr = t;
    }
    wmat__free(a);
    return count;
}

int wmat__quant_cbq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info)
{
    (void)st;
    if (p->axis != WMAT_QAXIS_IN)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "cbq: LoRA-Rounding runs on groups along the inputs (no per_ic)");
    float *Wt = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    if (!Wt) return wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory");
    memcpy(Wt, W, (size_t)(rows * cols) * sizeof(float));
    int64_t cut = 0;
    float thr = 0.0f;
    if (p->cbq.cfp) cut = wmat__cbq_cfp(Wt, rows * cols, p->cbq.cfp_lambda, &thr);
    int rc = wmat__quant_rtn(out, Wt, rows, cols, NULL, p, info);
    wmat__free(Wt);
    if (rc) return rc;
    if (info) {
        char s[96];
        snprintf(s, sizeof s, "cbq %s cfp %lld", info->scheme + 4, (long long)cut);
        memcpy(info->scheme, s, sizeof s);
    }
    return WMAT_OK;
}

/* ---- LoRA-Rounding */

void wmat__cbq_round_free(wmat_cbq_round *r)
{
    if (!r) return;
    wmat__free(r->s0);
    wmat__free(r->z);
    wmat__free(r->base);
    wmat__free(r->v0);
    wmat__free(r->A1);
    wmat__free(r->A2);
    wmat__free(r->u);
    wmat__free(r->V);
    memset(r, 0, sizeof *r);
}

int wmat__cbq_round_init(wmat_cbq_round *r, const float *W, const wmat_qresult *q, int rank, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    if (!q->codes || q->perm || q->axis != WMAT_QAXIS_IN || rank < 1)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "cbq: LoRA-Rounding needs codes on groups along the inputs without a permutation, rank >= 1");
    const int64_t rows = q->rows, cols = q->cols, n = rows * cols, ng = wmat_qresult_n_groups(q);
    r->rows = rows;
    r->cols = cols;
    r->group = q->group;
    r->maxq = (1 << q->bits) - 1;
    r->rank = rank;
    r->n_groups = ng;
    r->s0 = wmat__malloc((size_t)ng * sizeof(float));
    r->z = wmat__malloc((size_t)ng * sizeof(float));
    r->u = wmat__calloc((size_t)ng, sizeof(float));
    r->base = wmat__malloc((size_t)n * sizeof(float));
    r->v0 = wmat__malloc((size_t)n * sizeof(float));
    r->V = wmat__malloc((size_t)n * sizeof(float));
    r->A1 = wmat__calloc((size_t)(rows * rank), sizeof(float));
    r->A2 = wmat__malloc((size_t)(rank * cols) * sizeof(float));
    if (!r->s0 || !r->z || !r->u || !r->base || !r->v0 || !r->V || !r->A1 || !r->A2) {
        wmat__cbq_round_free(r);
        return wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory");
    }
    memcpy(r->s0, q->scales, (size_t)ng * sizeof(float));
    memcpy(r->z, q->zeros, (size_t)ng * sizeof(float));
    const int64_t gpr = cols / q->group;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const float s = r->s0[i * gpr + j / q->group], x = W[i * cols + j] / s;
            const float b = floorf(x);
            float f = x - b; /* h(V0) = f: sigmoid(V0) = (f - gamma) / (zeta - gamma) */
            const float p = (f - CBQ_GAMMA) / (CBQ_ZETA - CBQ_GAMMA);
            r->base[i * cols + j] = b;
            r->v0[i * cols + j] = logf(p / (1.0f - p));
        }
    wmat_rng g;
    wmat_rng_seed(&g, seed);
    const float a = 1.0f / sqrtf((float)cols);
    for (int64_t i = 0; i < rank * cols; i++) r->A2[i] = a * wmat_rng_normal(&g);
    return WMAT_OK;
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

void wmat__cbq_round_weights(wmat_cbq_round *r, float *Wq, int hard, int nt)
{
    const int64_t rows = r->rows, cols = r->cols, gpr = cols / r->group;
    memcpy(r->V, r->v0, (size_t)(rows * cols) * sizeof(float));
    r->ste = hard;
    wmat_sgemm(0, 0, (int)rows, (int)cols, r->rank, 1.0f, r->A1, r->rank, r->A2, (int)cols, 1.0f, r->V, (int)cols);
    const float maxq = (float)r->maxq;
#pragma omp parallel for num_threads(nt) schedule(static) if (rows * cols >= 65536)
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const int64_t g = i * gpr + j / r->group, e = i * cols + j;
            float h;
            if (hard) {
                h = r->V[e] >= 0.0f ? 1.0f : 0.0f;
            } else {
                h = sigmoidf(r->V[e]) * (CBQ_ZETA - CBQ_GAMMA) + CBQ_GAMMA;
                h = h < 0.0f ? 0.0f : h > 1.0f ? 1.0f : h;
            }
            float c = r->base[e] + h + r->z[g];
            c = c < 0.0f ? 0.0f : c > maxq ? maxq : c;
            Wq[e] = r->s0[g] * expf(r->u[g]) * (c - r->z[g]);
        }
}

double wmat__cbq_round_backward(const wmat_cbq_round *r, const float *dWq, double reg, double beta, float *dA1,
                                float *dA2, float *du, float *dV, int nt)
{
    const int64_t rows = r->rows, cols = r->cols, gpr = cols / r->group, n = rows * cols;
    const float maxq = (float)r->maxq, rn = (float)(reg / (double)n), fb = (float)beta;
    double freg = 0.0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : freg) if (n >= 65536)
    for (int64_t i = 0; i < rows; i++) {
        for (int64_t k = 0; k < gpr; k++) {
            const int64_t g = i * gpr + k;
            const float s = r->s0[g] * expf(r->u[g]);
            float dus = 0.0f;
            for (int64_t j = k * r->group; j < (k + 1) * r->group; j++) {
                const int64_t e = i * cols + j;
                const float sg = sigmoidf(r->V[e]);
                const float hr = sg * (CBQ_ZETA - CBQ_GAMMA) + CBQ_GAMMA;
                const float h = hr < 0.0f ? 0.0f : hr > 1.0f ? 1.0f : hr;
                const float dhdv = (hr > 0.0f && hr < 1.0f) ? sg * (1.0f - sg) * (CBQ_ZETA - CBQ_GAMMA) : 0.0f;
                const float craw = r->base[e] + (r->ste ? (r->V[e] >= 0.0f ? 1.0f : 0.0f) : h) + r->z[g];
                const float c = craw < 0.0f ? 0.0f : craw > maxq ? maxq : craw;
                dus += dWq[e] * s * (c - r->z[g]);
                const float dh = (craw >= 0.0f && craw <= maxq) ? dWq[e] * s : 0.0f;
                /* f = 1 - |2h - 1|^beta */
                const float t = 2.0f * h - 1.0f, at = fabsf(t);
                freg += 1.0 - pow((double)at, beta);
                const float dfdh = at > 0.0f ? -fb * powf(at, fb - 1.0f) * (t > 0.0f ? 2.0f : -2.0f) : 0.0f;
                dV[e] = (dh + rn * dfdh) * dhdv;
            }
            du[g] += dus;
        }
    }
    /* dA1 += dV A2^T ; dA2 += A1^T dV */
    wmat_sgemm(0, 1, (int)rows, r->rank, (int)cols, 1.0f, dV, (int)cols, r->A2, (int)cols, 1.0f, dA1, r->rank);
    wmat_sgemm(1, 0, r->rank, (int)cols, (int)rows, 1.0f, r->A1, r->rank, dV, (int)cols, 1.0f, dA2, (int)cols);
    return reg * freg / (double)n;
}

double wmat__cbq_round_soft_fraction(const wmat_cbq_round *r, double eps)
{
    const int64_t n = r->rows * r->cols;
    int64_t soft = 0;
    for (int64_t e = 0; e < n; e++) {
        float h = sigmoidf(r->V[e]) * (CBQ_ZETA - CBQ_GAMMA) + CBQ_GAMMA;
        h = h < 0.0f ? 0.0f : h > 1.0f ? 1.0f : h;
        if (h > eps && h < 1.0 - eps) soft++;
    }
    return n ? (double)soft / (double)n : 0.0;
}

void wmat__cbq_round_write(const wmat_cbq_round *r, wmat_qresult *q)
{
    const int64_t rows = r->rows, cols = r->cols, gpr = cols / r->group;
    for (int64_t g = 0; g < r->n_groups; g++) {
        float s = r->s0[g] * expf(r->u[g]);
        s = wmat_f16_to_f32(wmat_f32_to_f16(s));
        q->scales[g] = s > 0.0f && isfinite(s) ? s : r->s0[g];
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) {
            const int64_t e = i * cols + j, g = i * gpr + j / r->group;
            float c = r->base[e] + (r->V[e] >= 0.0f ? 1.0f : 0.0f) + r->z[g];
            c = c < 0.0f ? 0.0f : c > (float)r->maxq ? (float)r->maxq : c;
            q->codes[e] = (uint8_t)c;
        }
}
