/* PB-LLM (Shang et al., ICLR 2024), the post-training variant "GPTQ-PB":
 * partial binarization inside GPTQ's error feedback. Steps (SPECS.md G1):
 *   1. H, dead inputs, damping and U = chol_upper(H^-1), exactly as GPTQ.
 *   2. The salient mask, fixed before the loop from W (dead inputs zeroed):
 *      score |W_ij| ("magnitude") or W_ij^2 / U_jj^2 ("hessian"); salient =
 *      score > the value at rank floor((1 - f) N) of the N sorted scores of
 *      the whole matrix (the reference code's threshold, so ties at the
 *      threshold are binarized).
 *   3. Salient weights: an 8-bit asymmetric min-max grid per row, its range
 *      from the whole original row.
 *   4. The rest: per row, b(w) = mu + alpha sign(w - mu) (sign(0) = +1, one
 *      bit), mu = mean and alpha = mean |w - mu| over the row's binarized
 *      weights (the paper; mu_alpha=row takes the reference code's means
 *      over all n entries with the salient ones as 0). Not refitted after
 *      error feedback.
 *   5. Column by column, q = salient ? Q8(w) : b(w), its error pushed onto
 *      later columns through U (GPTQ's loop, wmat__gptq_feedback).
 * mu, alpha and the salient scale are rounded to f16 before the loop, so
 * the errors fed back are those of the stored weight. The result is an
 * object of the pbllm kind (src/wop/kind_pbllm.c). One column group (the
 * whole matrix); the reference code's smaller groups are not offered. */
#include "methods.h"

#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

static int cmp_f(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    const uint8_t *sal;
    uint8_t *code;
    const float *rowp; /* (rows, 4): mu, alpha, scale, zero */
    int64_t n;
} pb_ctx;

static float pb_q(void *user, int64_t r, int64_t i, const float *w)
{
    const pb_ctx *c = user;
    const float *f = c->rowp + r * 4;
    const int64_t k = r * c->n + i;
    if (c->sal[k]) {
        const uint8_t q = wmat__qcode(w[i], f[2], f[3], 255);
        c->code[k] = q;
        return f[2] * ((float)q - f[3]);
    }
    const int s = w[i] - f[0] >= 0.0f;
    c->code[k] = (uint8_t)s;
    return s ? f[0] + f[1] : f[0] - f[1];
}

int wmat__quant_pbllm(wmat_qresult *out, const float *W0, int64_t rows, int64_t cols, const wmat_qstats *st,
                      const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    if (!st || !st->H || st->n != cols)
        return wmat_set_error(WMAT_ERR_INVALID, "PB-LLM needs the Hessian of the layer's %lld inputs (calibration data)",
                              (long long)cols);
    if (!(p->salient >= 0.0f && p->salient <= 1.0f))
        return wmat_set_error(WMAT_ERR_INVALID, "PB-LLM: salient fraction %g is not in [0, 1]", p->salient);
    const int64_t m = rows, n = cols, N = m * n;
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    int B = p->block > 0 ? p->block : 128;
    if (B > n) B = (int)n;
    double *H = wmat__malloc((size_t)(n * n) * sizeof(double));
    float *Wk = wmat__malloc((size_t)N * sizeof(float)), *U = wmat__malloc((size_t)(n * n) * sizeof(float));
    float *E = wmat__malloc((size_t)(m * B) * sizeof(float)), *score = wmat__malloc((size_t)N * sizeof(float));
    float *rowp = wmat__malloc((size_t)m * 4 * sizeof(float));
    uint8_t *sal = wmat__malloc((size_t)N), *code = wmat__calloc((size_t)N, 1);
    int rc;
    if (!H || !Wk || !U || !E || !score || !rowp || !sal || !code) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "PB-LLM: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
        goto done;
    }
    memcpy(H, st->H, (size_t)(n * n) * sizeof(double));
    memcpy(Wk, W0, (size_t)N * sizeof(float));
    /* 3. the salient grid from the original rows (before dead inputs are zeroed, as the reference fits it) */
    for (int64_t r = 0; r < m; r++) {
        float s, z;
        wmat__qfit(W0 + r * n, n, 1, NULL, 0, 8, 0, 0, 0, &s, &z);
        rowp[r * 4 + 2] = f16r(s);
        rowp[r * 4 + 3] = z;
    }
    /* 1. */
    wmat__gptq_dead_inputs(H, Wk, m, n);
    double lambda = p->damp > 0 ? p->damp : 0.01;
    if ((rc = wmat__gptq_inverse_cholesky(H, n, &lambda, U))) goto done;
    /* 2. */
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = 0; j < n; j++) {
            const float w = Wk[r * n + j], u = U[j * n + j];
            score[r * n + j] = p->salient_hessian ? w * w / (u * u) : fabsf(w);
        }
    float *sorted = wmat__malloc((size_t)N * sizeof(float));
    if (!sorted) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "PB-LLM: out of memory");
        goto done;
    }
    memcpy(sorted, score, (size_t)N * sizeof(float));
    qsort(sorted, (size_t)N, sizeof(float), cmp_f);
    /* the rank of the threshold, safe from 455.99999... for f = 0.05 of 480 */
    const int64_t kth = (int64_t)floor((1.0 - p->salient) * (double)N + 1e-9);
    const float th = kth < N ? sorted[kth] : INFINITY;
    wmat__free(sorted);
    int64_t n_sal = 0;
    for (int64_t i = 0; i < N; i++) n_sal += sal[i] = kth < N && score[i] > th;
    /* 4. */
    for (int64_t r = 0; r < m; r++) {
        const float *w = Wk + r * n;
        const uint8_t *s = sal + r * n;
        double sm = 0.0;
        int64_t nb = 0;
        for (int64_t j = 0; j < n; j++)
            if (!s[j]) sm += w[j], nb++;
        const int all = p->mu_alpha_row;
        const double cnt = all ? (double)n : (double)nb;
        const float mu = f16r(cnt > 0 ? (float)(sm / cnt) : 0.0f);
        double sa = 0.0;
        for (int64_t j = 0; j < n; j++)
            if (!s[j]) sa += fabs((double)w[j] - mu);
            else if (all) sa += fabs((double)mu);
        rowp[r * 4 + 0] = mu;
        rowp[r * 4 + 1] = f16r(cnt > 0 ? (float)(sa / cnt) : 0.0f);
    }
    /* 5. */
    pb_ctx ctx = {sal, code, rowp, n};
    wmat__gptq_feedback(Wk, m, n, U, B, E, nt, pb_q, &ctx);
    if ((rc = wmat__pbllm_create(m, n, sal, code, rowp, &out->obj))) goto done;
    out->rows = m;
    out->cols = n;
    if (info) {
        memset(info, 0, sizeof *info);
        info->damp = lambda;
        snprintf(info->scheme, sizeof info->scheme, "pbllm %.1f%% salient (%s) 8b, binary mu/alpha over %s",
                 100.0 * (double)n_sal / (double)N, p->salient_hessian ? "hessian" : "magnitude",
                 p->mu_alpha_row ? "the row" : "the binarized");
    }
    rc = WMAT_OK;
done:
    wmat__free(H);
    wmat__free(Wk);
    wmat__free(U);
    wmat__free(E);
    wmat__free(score);
    wmat__free(rowp);
    wmat__free(sal);
    wmat__free(code);
    return rc;
}
