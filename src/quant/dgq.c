/* DGQ (dual-grained quantization, A8W4; SPECS.md G6, reference ilur98/DGQ
 * dgq/quant/smooth.py and quantizer_helper.py::searchquant):
 *   1. Smoothing by percentile clipping: a_j = the minimum over calibration
 *      windows of each window's max |x_j| (wmat_qstats.wmaxmin); baseline =
 *      the floor(0.005 n + 1.5)-th largest a_j; s_j = a_j / baseline where
 *      a_j > baseline, else 1 (none when baseline < 1e-4). W[:, j] *= s_j and
 *      the input is divided by s_j: the kind keeps s (kind_dgq.c), where the
 *      reference folds it into the RMSNorm weight (q/k/v, gate/up) or up's
 *      rows (down) and leaves o alone. The product is the same; differences:
 *      wmat smooths o too (every linear with statistics; the method does not
 *      know a tensor's role), and up is not divided by down's s (the
 *      reference quantizes up after that division).
 *   2. Fine phase, per group of `group` inputs of a row, asymmetric 4-bit:
 *      20 ratios r = 1.02 - (i+1)/20 * 0.22; range [r min, r max] (min/max
 *      of the group with 0 included, so the zero point is a u4: the
 *      reference takes the group's own min/max), scale = r (max - min) / 15,
 *      zero = round(-r min / scale); keep the r with the least group-partial
 *      output error (w - Q) H_gg (w - Q)^T (= ||X_g w^T - X_g Q^T||^2 2/N).
 *   3. Coarse phase, per row: 80 ratios r = 1.02 - (i+1)/80 * 0.82; s8 =
 *      f16(r max|w| / 127), k_g = clamp(round(s_g / s8), 1, 127), codes
 *      clamp(round(clamp(w, -r max|w|, r max|w|) / (k_g s8)) + z, z -
 *      floor(127 / k_g), z + floor(127 / k_g)) within [0, 15]; keep the s8
 *      with the least full-row output error (w - Q) H (w - Q)^T (double
 *      GEMMs, one per ratio over all rows). One group per row (per-channel)
 *      needs no coarse phase: s8 = f16(s_g), k = 1.
 *   4. Activations: static per-tensor s_x = max_j (max|x_j| / s_j) / 127
 *      over the calibration tokens, or per token (act=dynamic).
 * search=false takes r = 1 in both phases (plain min-max; with one group
 * per row this is RTN per channel on the A8W4 kind). */
#include "methods.h"

#include "linalg/dense.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

static int cmp_desc(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : x < y;
}

int64_t wmat__dgq_smooth_factors(const float *a, int64_t n, float *s)
{
    for (int64_t j = 0; j < n; j++) s[j] = 1.0f;
    float *v = wmat__malloc((size_t)n * sizeof(float));
    if (!v || n < 1) {
        wmat__free(v);
        return 0;
    }
    memcpy(v, a, (size_t)n * sizeof(float));
    qsort(v, (size_t)n, sizeof(float), cmp_desc);
    int64_t basl = (int64_t)(0.005 * (double)n + 1.5);
    if (basl > n) basl = n;
    const float base = v[basl - 1];
    wmat__free(v);
    if (!(base >= 1e-4f)) return 0;
    int64_t cnt = 0;
    for (int64_t j = 0; j < n; j++)
        if (a[j] > base) s[j] = a[j] / base, cnt++;
    return cnt;
}

double wmat__dgq_fine_ratio(int i, int search) { return search ? 1.02 - (double)(i + 1) / 20.0 * 0.22 : 1.0; }
double wmat__dgq_coarse_ratio(int i, int search) { return search ? 1.02 - (double)(i + 1) / 80.0 * 0.82 : 1.0; }

/* d H_gg d^T for d (n) and the block of H at (o, o) of width n (ld). */
static double quad(const double *d, const double *H, int64_t ld, int64_t o, int64_t n)
{
    double s = 0.0;
    for (int64_t a = 0; a < n; a++) {
        const double *h = H + (o + a) * ld + o;
        double t = 0.0;
        for (int64_t b = 0; b < n; b++) t += h[b] * d[b];
        s += d[a] * t;
    }
    return s;
}

void wmat__dgq_fine(const float *W, int64_t rows, int64_t cols, int64_t group, const double *H, int search,
                    float *scale, uint8_t *zero, int *ratio)
{
    const int64_t ng = cols / group;
    const int nr = search ? 20 : 1;
    double *d = wmat__malloc((size_t)group * sizeof(double));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t g = 0; g < ng; g++) {
            const float *w = W + r * cols + g * group;
            float mn = 0.0f, mx = 0.0f;
            for (int64_t c = 0; c < group; c++) mn = w[c] < mn ? w[c] : mn, mx = w[c] > mx ? w[c] : mx;
            double best = INFINITY;
            int bi = 0;
            float bs = 1.0f, bz = 0.0f;
            for (int i = 0; i < nr; i++) {
                const float rt = (float)wmat__dgq_fine_ratio(i, search), lo = rt * mn, hi = rt * mx;
                const float sc = hi > lo ? (hi - lo) / 15.0f : 1.0f;
                float z = rintf(-lo / sc);
                z = z < 0.0f ? 0.0f : z > 15.0f ? 15.0f : z;
                for (int64_t c = 0; c < group; c++) {
                    const float x = w[c] < lo ? lo : w[c] > hi ? hi : w[c];
                    float q = rintf(x / sc) + z;
                    q = q < 0.0f ? 0.0f : q > 15.0f ? 15.0f : q;
                    d[c] = (double)w[c] - (double)(sc * (q - z));
                }
                const double e = H ? quad(d, H, cols, g * group, group) : 0.0;
                if (e < best || i == 0) best = e, bi = i, bs = sc, bz = z;
            }
            scale[r * ng + g] = bs;
            zero[r * ng + g] = (uint8_t)bz;
            if (ratio) ratio[r * ng + g] = bi;
        }
    wmat__free(d);
}

/* Row r's codes and k under coarse scale s8 at ratio rt; returns nothing,
 * writes the residual w - Q into d (cols, double). */
static void coarse_row(const float *w, int64_t cols, int64_t group, const float *scale, const uint8_t *zero, float s8,
                       float lim_w, uint8_t *q, int8_t *k, double *d)
{
    const int64_t ng = cols / group;
    for (int64_t g = 0; g < ng; g++) {
        float kf = rintf(scale[g] / s8);
        kf = kf < 1.0f ? 1.0f : kf > 127.0f ? 127.0f : kf;
        const int kk = (int)kf, z = zero[g], m = 127 / kk;
        const float lo = (float)(z - m < 0 ? 0 : z - m), hi = (float)(z + m > 15 ? 15 : z + m), st = kf * s8;
        for (int64_t c = g * group; c < (g + 1) * group; c++) {
            const float x = w[c] < -lim_w ? -lim_w : w[c] > lim_w ? lim_w : w[c];
            float v = rintf(x / st) + (float)z;
            v = v < lo ? lo : v > hi ? hi : v;
            if (q) q[c] = (uint8_t)v;
            if (d) d[c] = (double)w[c] - (double)s8 * (double)(kk * ((int)v - z));
        }
        if (k) k[g] = (int8_t)kk;
    }
}

int wmat__dgq_coarse(const float *W, int64_t rows, int64_t cols, int64_t group, const double *H, const float *scale,
                     const uint8_t *zero, int search, float *s8, uint8_t *codes, int8_t *k, int *ratio)
{
    const int64_t ng = cols / group;
    if (ng == 1) {
        for (int64_t r = 0; r < rows; r++) {
            const float s = f16r(scale[r]);
            s8[r] = s > 0.0f ? s : 1.0f;
            const float *w = W + r * cols;
            float mx = 0.0f;
            for (int64_t c = 0; c < cols; c++) mx = fabsf(w[c]) > mx ? fabsf(w[c]) : mx;
            coarse_row(w, cols, group, s8 + r, zero + r, s8[r], mx, codes + r * cols, k + r, NULL);
            if (ratio) ratio[r] = -1;
        }
        return WMAT_OK;
    }
    const int nr = search ? 80 : 1;
    double *D = wmat__malloc((size_t)(rows * cols) * sizeof(double)), *E = wmat__malloc((size_t)(rows * cols) * sizeof(double));
    double *best = wmat__malloc((size_t)rows * sizeof(double));
    float *amax = wmat__malloc((size_t)rows * sizeof(float));
    if (!D || !E || !best || !amax) {
        wmat__free(D), wmat__free(E), wmat__free(best), wmat__free(amax);
        return wmat_set_error(WMAT_ERR_NOMEM, "dgq: out of memory for the coarse search (%lld x %lld)", (long long)rows,
                              (long long)cols);
    }
    for (int64_t r = 0; r < rows; r++) {
        float mx = 0.0f;
        for (int64_t c = 0; c < cols; c++) mx = fabsf(W[r * cols + c]) > mx ? fabsf(W[r * cols + c]) : mx;
        amax[r] = mx;
        best[r] = INFINITY;
        s8[r] = 1.0f;
        if (ratio) ratio[r] = 0;
    }
    int rc = WMAT_OK;
    for (int i = 0; i < nr && !rc; i++) {
        const float rt = (float)wmat__dgq_coarse_ratio(i, search);
        for (int64_t r = 0; r < rows; r++) {
            float s = f16r(rt * amax[r] / 127.0f);
            if (!(s > 0.0f)) s = 1.0f;
            coarse_row(W + r * cols, cols, group, scale + r * ng, zero + r * ng, s, rt * amax[r], NULL, NULL,
                       D + r * cols);
        }
        if (H) rc = wmat__dgemm(0, 0, (int)rows, (int)cols, (int)cols, 1.0, D, (int)cols, H, (int)cols, 0.0, E, (int)cols);
        for (int64_t r = 0; r < rows && !rc; r++) {
            double e = 0.0;
            if (H)
                for (int64_t c = 0; c < cols; c++) e += E[r * cols + c] * D[r * cols + c];
            if (e < best[r] || i == 0) {
                best[r] = e;
                float s = f16r(rt * amax[r] / 127.0f);
                s8[r] = s > 0.0f ? s : 1.0f;
                if (ratio) ratio[r] = i;
            }
        }
    }
    for (int64_t r = 0; r < rows && !rc; r++) {
        const float rt = (float)wmat__dgq_coarse_ratio(ratio ? ratio[r] : 0, search);
        /* the chosen ratio's clamp: recover it from s8 when ratio is not kept */
        const float lim = ratio ? rt * amax[r] : s8[r] * 127.0f;
        coarse_row(W + r * cols, cols, group, scale + r * ng, zero + r * ng, s8[r], lim, codes + r * cols,
                   k + r * ng, NULL);
    }
    wmat__free(D), wmat__free(E), wmat__free(best), wmat__free(amax);
    return rc;
}

int wmat__quant_dgq(wmat_qresult *out, const float *W0, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    const int64_t group = p->group > 0 ? p->group : cols;
    if (group != cols && (group % 32 || cols % group))
        return wmat_set_error(WMAT_ERR_INVALID, "dgq: group %lld must be a multiple of 32 dividing %lld inputs (or all of them)",
                              (long long)group, (long long)cols);
    if (p->bits != 4) return wmat_set_error(WMAT_ERR_INVALID, "dgq: only 4-bit codes (A8W4), not %d", p->bits);
    if (!st || !st->H) return wmat_set_error(WMAT_ERR_INVALID, "dgq: needs calibration statistics (H)");
    const int64_t ng = cols / group, n = cols;
    float *W = wmat__malloc((size_t)(rows * cols) * sizeof(float)), *s = wmat__malloc((size_t)n * sizeof(float));
    double *H = wmat__malloc((size_t)(n * n) * sizeof(double));
    float *scale = wmat__malloc((size_t)(rows * ng) * sizeof(float)), *s8 = wmat__malloc((size_t)rows * sizeof(float));
    uint8_t *zero = wmat__malloc((size_t)(rows * ng)), *codes = wmat__malloc((size_t)(rows * cols));
    int8_t *k = wmat__malloc((size_t)(rows * ng));
    int *rat = wmat__malloc((size_t)rows * sizeof(int));
    int rc = WMAT_OK;
    if (!W || !s || !H || !scale || !s8 || !zero || !codes || !k || !rat) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "dgq: out of memory (%lld x %lld)", (long long)rows, (long long)cols);
        goto done;
    }
    int64_t nsm = 0;
    if (p->dgq_smooth && st->wmaxmin) nsm = wmat__dgq_smooth_factors(st->wmaxmin, n, s);
    else
        for (int64_t j = 0; j < n; j++) s[j] = 1.0f;
    float smax = 1.0f, xmax = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        smax = s[j] > smax ? s[j] : smax;
        const float a = st->absmax ? st->absmax[j] / s[j] : 0.0f;
        xmax = a > xmax ? a : xmax;
    }
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) W[r * cols + c] = W0[r * cols + c] * s[c];
    for (int64_t a = 0; a < n; a++)
        for (int64_t b = 0; b < n; b++) H[a * n + b] = st->H[a * n + b] / ((double)s[a] * (double)s[b]);
    wmat__dgq_fine(W, rows, cols, group, H, p->dgq_search, scale, zero, NULL);
    if ((rc = wmat__dgq_coarse(W, rows, cols, group, H, scale, zero, p->dgq_search, s8, codes, k, rat))) goto done;
    const float sx = p->dgq_dynamic || !(xmax > 0.0f) ? 0.0f : xmax / 127.0f;
    if ((rc = wmat__dgq_create(rows, cols, group, codes, zero, k, s8, nsm ? s : NULL, sx, &out->obj))) goto done;
    out->rows = rows, out->cols = cols;
    if (info) {
        int64_t k17 = 0;
        for (int64_t i = 0; i < rows * ng; i++) k17 += k[i] >= 17;
        snprintf(info->scheme, sizeof info->scheme, "dgq a8w4 g%lld k>=17 %.1f%% smooth %lld/%lld max %.2f %s",
                 (long long)group, 100.0 * (double)k17 / (double)(rows * ng), (long long)nsm, (long long)n, (double)smax,
                 sx > 0 ? "static" : "per-token");
    }
done:
    wmat__free(W), wmat__free(s), wmat__free(H), wmat__free(scale), wmat__free(s8), wmat__free(zero), wmat__free(codes), wmat__free(k), wmat__free(rat);
    return rc;
}
