/* Round-to-nearest on a uniform grid, and the imatrix-weighted variant.
 *
 * One fitting routine (wmat__qfit) serves every method: the min-max grid of
 * the reference GPTQ quantizer, an optional clipping search over shrink
 * factors of the range, and an optional weighted least-squares refit of the
 * scale per candidate (llama.cpp's imatrix search). */
#include "methods.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

wmat_qparams wmat__qparams_default(void)
{
    wmat_qparams p;
    memset(&p, 0, sizeof p);
    p.bits = 4;
    p.sym = 0;
    p.axis = WMAT_QAXIS_IN;
    p.group = 0;
    p.damp = 0.01f;
    p.rounds = 20;
    p.feedback = 1;
    p.refit = 1;
    p.block = 128;
    p.n_threads = 1;
    p.salient = 0.1;
    p.salient_hessian = 1;
    p.dgq_smooth = 1;
    p.dgq_search = 1;
    p.outliers = 0.01;
    p.dense_gptq = 1;
    p.tau = 1.5;
    p.min_group = 64;
    return p;
}

int wmat__qgroup(const wmat_qparams *p, int64_t rows, int64_t cols, int *group)
{
    if (p->bits < 2 || p->bits > 8)
        return wmat_set_error(WMAT_ERR_INVALID, "quantization to %d bits: bits must be 2..8", p->bits);
    const int64_t len = p->axis == WMAT_QAXIS_IN ? cols : rows;
    const int64_t g = p->group > 0 ? p->group : len;
    if (p->group < 0 || len % g)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "group size %d does not divide the %s dimension (%lld) of a %lld x %lld matrix",
                              p->group, p->axis == WMAT_QAXIS_IN ? "input" : "output", (long long)len,
                              (long long)rows, (long long)cols);
    *group = (int)g;
    return WMAT_OK;
}

/* Storage keeps scales as fp16: round here so fake-quant equals the packed
 * model; never below the smallest fp16 subnormal (2^-24). */
static float f16_round(float s)
{
    float r = wmat_f16_to_f32(wmat_f32_to_f16(s));
    return r > 0.0f && isfinite(r) ? r : (r > 0.0f ? 65504.0f : 5.9604645e-8f);
}

/* Scale and zero of the range [xmin, xmax] (xmin <= 0 <= xmax). */
static void grid_of(float xmin, float xmax, int bits, int sym, float *scale, float *zero)
{
    const int maxq = (1 << bits) - 1;
    if (sym) {
        float amax = fmaxf(-xmin, xmax);
        xmin = -amax;
        xmax = amax;
    }
    if (xmin == 0.0f && xmax == 0.0f) {
        xmin = -1.0f;
        xmax = 1.0f;
    }
    float s = (xmax - xmin) / (float)maxq;
    if (!(s > 0.0f)) s = 1.0f; /* denormal ranges */
    s = f16_round(s);
    *scale = s;
    *zero = sym ? (float)(1 << (bits - 1)) : fminf(fmaxf(rintf(-xmin / s), 0.0f), (float)maxq);
}

/* sum wt (x - s (code - z))^2 with codes for (s, z); also the weighted
 * least-squares scale for those codes in *s_ls. */
static double group_error(const float *x, int64_t n, int64_t stride, const float *wt, int64_t wstride, float s,
                          float z, int maxq, float *s_ls)
{
    double err = 0.0, sxl = 0.0, sll = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i * stride], w = wt ? wt[i * wstride] : 1.0f;
        const float l = (float)wmat__qcode(v, s, z, maxq) - z;
        const float d = v - s * l;
        err += (double)w * d * d;
        sxl += (double)w * v * l;
        sll += (double)w * l * l;
    }
    if (s_ls) *s_ls = sll > 0 ? (float)(sxl / sll) : s;
    return err;
}

void wmat__qfit(const float *x, int64_t n, int64_t stride, const float *wt, int64_t wstride, int bits, int sym,
                int clip, int refit, float *scale, float *zero)
{
    const int maxq = (1 << bits) - 1;
    float xmin = 0.0f, xmax = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i * stride];
        if (v < xmin) xmin = v;
        if (v > xmax) xmax = v;
    }
    grid_of(xmin, xmax, bits, sym, scale, zero);
    if (!clip && !refit) return;
    double best = INFINITY;
    const int steps = clip ? 80 : 1;
    for (int k = 0; k < steps; k++) {
        const float shrink = 1.0f - 0.01f * (float)k;
        float s, z, s_ls;
        grid_of(shrink * xmin, shrink * xmax, bits, sym, &s, &z);
        double e = group_error(x, n, stride, wt, wstride, s, z, maxq, &s_ls);
        if (e < best) {
            best = e;
            *scale = s;
            *zero = z;
        }
        if (refit && s_ls > 0.0f && isfinite(s_ls)) {
            s_ls = f16_round(s_ls);
            e = group_error(x, n, stride, wt, wstride, s_ls, z, maxq, NULL);
            if (e < best) {
                best = e;
                *scale = s_ls;
                *zero = z;
            }
        }
    }
}

/* RTN with optional per-input weights wt (cols) for axis IN groups. */
static int rtn_impl(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const float *wt, int refit,
                    const wmat_qparams *p, wmat_qmethod_info *info, const char *name)
{
    int g, rc;
    if ((rc = wmat__qgroup(p, rows, cols, &g))) return rc;
    if ((rc = wmat_qresult_alloc(out, p->bits, p->sym, p->axis, g, rows, cols, 0))) return rc;
    const int maxq = (1 << p->bits) - 1;
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    if (p->axis == WMAT_QAXIS_IN) {
        const int64_t gpr = cols / g;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < gpr; k++) {
                const float *x = W + r * cols + k * g;
                float s, z;
                wmat__qfit(x, g, 1, wt ? wt + k * g : NULL, 1, p->bits, p->sym, p->clip || refit, refit, &s, &z);
                out->scales[r * gpr + k] = s;
                out->zeros[r * gpr + k] = z;
                for (int64_t i = 0; i < g; i++) out->codes[r * cols + k * g + i] = wmat__qcode(x[i], s, z, maxq);
            }
    } else {
        const int64_t gpc = rows / g;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < cols; c++)
            for (int64_t k = 0; k < gpc; k++) {
                const float *x = W + k * g * cols + c;
                float s, z;
                /* a per-IC group shares one input: its imatrix weight is a constant */
                wmat__qfit(x, g, cols, NULL, 0, p->bits, p->sym, p->clip || refit, refit, &s, &z);
                out->scales[c * gpc + k] = s;
                out->zeros[c * gpc + k] = z;
                for (int64_t i = 0; i < g; i++)
                    out->codes[(k * g + i) * cols + c] = wmat__qcode(x[i * cols], s, z, maxq);
            }
    }
    if (info) {
        memset(info, 0, sizeof *info);
        if (p->axis == WMAT_QAXIS_IN && g == cols)
            snprintf(info->scheme, sizeof info->scheme, "%s %db %s per-OC%s", name, p->bits, p->sym ? "sym" : "asym",
                     p->clip ? " clip" : "");
        else if (p->axis == WMAT_QAXIS_OUT && g == rows)
            snprintf(info->scheme, sizeof info->scheme, "%s %db %s per-IC%s", name, p->bits, p->sym ? "sym" : "asym",
                     p->clip ? " clip" : "");
        else
            snprintf(info->scheme, sizeof info->scheme, "%s %db %s g%d%s%s", name, p->bits, p->sym ? "sym" : "asym", g,
                     p->axis == WMAT_QAXIS_OUT ? " along outputs" : "", p->clip ? " clip" : "");
    }
    return WMAT_OK;
}

int wmat__quant_rtn(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info)
{
    (void)st;
    return rtn_impl(out, W, rows, cols, NULL, 0, p, info, "rtn");
}

int wmat__quant_imatrix(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                        const wmat_qparams *p, wmat_qmethod_info *info)
{
    if (!st || !st->x2 || st->n != cols)
        return wmat_set_error(WMAT_ERR_INVALID, "imatrix quantization needs calibration statistics of the %lld inputs",
                              (long long)cols);
    float *wt = wmat__malloc((size_t)cols * sizeof(float));
    if (!wt) return wmat_set_error(WMAT_ERR_NOMEM, "imatrix: out of memory");
    /* d_j = mean x_j^2; a dead input keeps a small weight so its weights are
     * still quantized sensibly. */
    double mean = 0.0;
    for (int64_t j = 0; j < cols; j++) mean += st->x2[j];
    mean /= (double)cols;
    for (int64_t j = 0; j < cols; j++) wt[j] = (float)(st->x2[j] + 1e-6 * mean + 1e-30);
    int rc = rtn_impl(out, W, rows, cols, wt, 1, p, info, "imatrix");
    wmat__free(wt);
    return rc;
}

double wmat__qoutput_error(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H)
{
    float *dW = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    float *E = wmat__malloc((size_t)(rows * cols) * sizeof(float));
    float *Hf = wmat__malloc((size_t)(cols * cols) * sizeof(float));
    double err = NAN;
    if (!dW || !E || !Hf) goto done;
    for (int64_t i = 0; i < rows * cols; i++) dW[i] = W[i] - Wq[i];
    for (int64_t i = 0; i < cols * cols; i++) Hf[i] = (float)H[i];
    wmat_sgemm(0, 0, (int)rows, (int)cols, (int)cols, 1.0f, dW, (int)cols, Hf, (int)cols, 0.0f, E, (int)cols);
    err = 0.0;
    for (int64_t i = 0; i < rows * cols; i++) err += (double)dW[i] * E[i];
done:
    wmat__free(dW);
    wmat__free(E);
    wmat__free(Hf);
    return err;
}

/* Rows of a matrix the report's output error reads exactly; above, every
 * s-th row with s = ceil(rows / WMAT_QOUT_ROWS). */
#define WMAT_QOUT_ROWS 1024
/* Column strips of Z^T Z made at once (strip x cols floats). */
#define QOUT_STRIP 256

/* tr(Z H Z^T) for Z (k rows, ld apart, n columns) = sum_ab H_ab G_ab with
 * G = Z^T Z symmetric: only G's upper triangle, in strips of rows (one
 * GEMM each, k n^2 multiply-adds in all, half of Z H's), summed against
 * H_ab + H_ba. part (n): per-column partial sums, added in column order
 * (the same value on any number of threads). */
static double trace_zhz(const float *Z, int64_t k, int64_t ld, int64_t n, const double *H, float *G, double *part,
                        int nt)
{
    memset(part, 0, (size_t)n * sizeof(double));
    for (int64_t a0 = 0; a0 < n; a0 += QOUT_STRIP) {
        const int64_t a1 = a0 + QOUT_STRIP < n ? a0 + QOUT_STRIP : n, w = n - a0;
        wmat_sgemm(1, 0, (int)(a1 - a0), (int)w, (int)k, 1.0f, Z + a0, (int)ld, Z + a0, (int)ld, 0.0f, G, (int)w);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t b = a0; b < n; b++) {
            double acc = 0.0;
            const int64_t ae = a1 < b + 1 ? a1 : b + 1;
            for (int64_t a = a0; a < ae; a++) {
                const double h = a == b ? H[a * n + a] : H[a * n + b] + H[b * n + a];
                acc += h * (double)G[(a - a0) * w + (b - a0)];
            }
            part[b] += acc;
        }
    }
    double t = 0.0;
    for (int64_t b = 0; b < n; b++) t += part[b];
    return t;
}

int wmat__qoutput_errors(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H, int nt,
                         double *e, double *e0)
{
    const int64_t s = rows > WMAT_QOUT_ROWS ? (rows + WMAT_QOUT_ROWS - 1) / WMAT_QOUT_ROWS : 1;
    const int64_t k = (rows + s - 1) / s;
    const int64_t strip = QOUT_STRIP < cols ? QOUT_STRIP : cols;
    float *dW = wmat__malloc((size_t)(k * cols) * sizeof(float));
    float *G = wmat__malloc((size_t)(strip * cols) * sizeof(float));
    double *part = wmat__malloc((size_t)cols * sizeof(double));
    int rc = WMAT_OK;
    if (!dW || !G || !part) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "output error: out of memory for a %lld x %lld matrix", (long long)rows,
                            (long long)cols);
        goto done;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < k; r++) {
        const float *w = W + r * s * cols, *wq = Wq + r * s * cols;
        float *d = dW + r * cols;
        for (int64_t j = 0; j < cols; j++) d[j] = w[j] - wq[j];
    }
    *e = trace_zhz(dW, k, cols, cols, H, G, part, nt);
    *e0 = trace_zhz(W, k, s * cols, cols, H, G, part, nt);
done:
    wmat__free(dW);
    wmat__free(G);
    wmat__free(part);
    return rc;
}
