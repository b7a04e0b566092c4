/* GWQ (gradient-aware weight quantization; SPECS.md G4, no public code):
 * per matrix, the `outliers` fraction of weights with the highest score is
 * kept in fp16, the rest is quantized group-wise along the inputs by RTN or
 * by GPTQ.
 *
 * Scores (larger = kept): |G|, |G W|, G^2 (G = dL/dW of the fp32 model from
 * wmat_model_weight_gradients, handed in as st->grad), and as ablations
 * W^2 H_jj (SpQR-like, H the layer input's Hessian), |W| and a seeded
 * random draw. The mask is computed once per matrix, on the weights the
 * method is given (the fp32 ones: sequential calibration changes the
 * statistics of later layers, never their weights).
 *
 * The dense part: each group's grid is fitted on its non-kept weights only
 * (min-max, optional clipping search); a kept position gets the group's
 * zero-point code, so the dense part is exactly 0 there. RTN: the kept
 * weights are fp16(W). GPTQ: in the column loop a kept weight becomes
 * fp16 of its error-fed value (so its quantization error is only fp16's
 * rounding, which is fed back like any other error); the others are
 * quantized on their group's grid (groups fitted as the loop enters them,
 * per-OC grids up front, as in gptq.c).
 *
 * Storage: a `sum` of the packed dense part (qpacked) and a `sparse` part
 * (bitmap + fp16 values + row offsets), both existing kinds, so the
 * result runs, saves and loads as stored. Its bits per weight are the
 * stored ones (the bitmap costs 1 bit per weight whatever the fraction);
 * docs/QUANT.md also gives the CSR-equivalent count (16-bit value + 16-bit
 * column index per kept weight + 32-bit row offsets). */
#include "methods.h"

#include "wop/kern_sparse.h"
#include "wop/qstore.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static const char *const k_score_names[] = {"|G|", "|G*W|", "G^2", "W^2*H_jj", "|W|", "random", "Fisher"};

static uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

int wmat__gwq_scores(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, int score, uint64_t seed,
                     float *s)
{
    const int64_t n = rows * cols;
    const int needs_g = score == WMAT_GWQ_GRAD || score == WMAT_GWQ_GRAD_W || score == WMAT_GWQ_GRAD2 || score == WMAT_GWQ_FISHER;
    if (needs_g && (!st || !st->grad))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "gwq: score %s needs dL/dW of this matrix (wmat_quantize_params.gradients, from "
                              "wmat_model_weight_gradients; wmat quantize computes them from --calib)",
                              k_score_names[score]);
    if (score == WMAT_GWQ_HESSIAN && (!st || !st->H || st->n != cols))
        return wmat_set_error(WMAT_ERR_INVALID, "gwq: score W^2*H_jj needs the Hessian of the layer's inputs");
    for (int64_t i = 0; i < n; i++) {
        const float w = W[i];
        switch (score) {
        case WMAT_GWQ_GRAD: s[i] = fabsf(st->grad[i]); break;
        case WMAT_GWQ_GRAD_W: s[i] = fabsf(st->grad[i] * w); break;
        case WMAT_GWQ_GRAD2: s[i] = st->grad[i] * st->grad[i]; break;
        case WMAT_GWQ_HESSIAN: s[i] = (float)((double)w * w * st->H[(i % cols) * cols + i % cols]); break;
        case WMAT_GWQ_MAGNITUDE: s[i] = fabsf(w); break;
        case WMAT_GWQ_FISHER: s[i] = st->grad[i]; break;
        default: s[i] = (float)(mix64(seed ^ mix64((uint64_t)i)) >> 40) * (1.0f / 16777216.0f); break;
        }
        if (!(s[i] == s[i])) s[i] = 0.0f; /* NaN: never kept */
    }
    return WMAT_OK;
}

static int cmp_desc_f(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

void wmat__gwq_mask(const float *s, int64_t n, int64_t keep, uint8_t *mask)
{
    memset(mask, 0, (size_t)n);
    if (keep <= 0) return;
    if (keep >= n) {
        memset(mask, 1, (size_t)n);
        return;
    }
    float *c = wmat__malloc((size_t)n * sizeof(float));
    float thr;
    if (c) {
        memcpy(c, s, (size_t)n * sizeof(float));
        qsort(c, (size_t)n, sizeof(float), cmp_desc_f);
        thr = c[keep - 1];
        wmat__free(c);
    } else { /* out of memory: the threshold by bisection over the values */
        float lo = s[0], hi = s[0];
        for (int64_t i = 1; i < n; i++) lo = fminf(lo, s[i]), hi = fmaxf(hi, s[i]);
        for (int it = 0; it < 64; it++) {
            const float mid = lo + 0.5f * (hi - lo);
            int64_t cnt = 0;
            for (int64_t i = 0; i < n; i++) cnt += s[i] >= mid;
            if (cnt >= keep) lo = mid;
            else hi = mid;
            if (mid == lo && mid == hi) break;
        }
        thr = lo;
    }
    /* everything above the threshold, then ties in index order */
    int64_t taken = 0;
    for (int64_t i = 0; i < n; i++)
        if (s[i] > thr) mask[i] = 1, taken++;
    for (int64_t i = 0; i < n && taken < keep; i++)
        if (s[i] == thr) mask[i] = 1, taken++;
}

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

/* Fit the grid of the non-kept values among x[0..len) (buf: len floats). */
static void masked_fit(const float *x, const uint8_t *mk, int64_t len, float *buf, const wmat_qparams *p, float *s,
                       float *z)
{
    int64_t k = 0;
    for (int64_t i = 0; i < len; i++)
        if (!mk[i]) buf[k++] = x[i];
    if (k == 0) buf[k++] = 0.0f;
    wmat__qfit(buf, k, 1, NULL, 0, p->bits, p->sym, p->clip, 0, s, z);
}

typedef struct {
    const wmat_qparams *p;
    const uint8_t *mask;
    wmat_qresult *q;
    float *vals; /* (rows, cols): the kept weights' fp16 values */
    float *buf;  /* nt x g scratch for the fits */
    int64_t n, gpr;
    int g, per_oc, maxq;
} gwq_ctx;

static float gwq_col(void *user, int64_t r, int64_t i, const float *w)
{
    const gwq_ctx *c = user;
    const int64_t gi = c->per_oc ? r : r * c->gpr + i / c->g;
    if (!c->per_oc && i % c->g == 0) {
        float *buf = c->buf + (size_t)thread_id() * (size_t)c->g;
        masked_fit(w + i, c->mask + r * c->n + i, c->g, buf, c->p, &c->q->scales[gi], &c->q->zeros[gi]);
    }
    const float s = c->q->scales[gi], z = c->q->zeros[gi];
    if (c->mask[r * c->n + i]) {
        c->q->codes[r * c->n + i] = (uint8_t)z;
        const float v = f16r(w[i]);
        c->vals[r * c->n + i] = v;
        return v;
    }
    const uint8_t code = wmat__qcode(w[i], s, z, c->maxq);
    c->q->codes[r * c->n + i] = code;
    return s * ((float)code - z);
}

int wmat__quant_gwq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    if (p->axis != WMAT_QAXIS_IN) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "gwq: groups run along the inputs (no per_ic)");
    if (p->act_order) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "gwq: no act-order");
    if (!(p->outliers >= 0.0 && p->outliers <= 0.5))
        return wmat_set_error(WMAT_ERR_INVALID, "gwq: outliers %g outside [0, 0.5]", p->outliers);
    if (p->score < WMAT_GWQ_GRAD || p->score > WMAT_GWQ_FISHER)
        return wmat_set_error(WMAT_ERR_INVALID, "gwq: unknown score %d", p->score);
    if (cols % 32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "gwq: %lld inputs is not a multiple of 32, which the packed dense part needs (quantize "
                              "this tensor with another method: --override PATTERN=gptq)",
                              (long long)cols);
    if (p->dense_gptq && (!st || !st->H || st->n != cols))
        return wmat_set_error(WMAT_ERR_INVALID, "gwq: the GPTQ dense part needs the Hessian of the layer's %lld inputs",
                              (long long)cols);
    int g, rc;
    if ((rc = wmat__qgroup(p, rows, cols, &g))) return rc;
    const int64_t m = rows, n = cols, N = m * n;
    const int64_t keep = llround(p->outliers * (double)N);
    const int nt = p->n_threads > 0 ? p->n_threads : 1;
    const int per_oc = g == n;
    float *sc = wmat__malloc((size_t)N * sizeof(float));
    uint8_t *mask = wmat__malloc((size_t)N);
    float *vals = wmat__calloc((size_t)N, sizeof(float));
    float *Wk = wmat__malloc((size_t)N * sizeof(float));
    float *buf = wmat__malloc((size_t)nt * (size_t)n * sizeof(float));
    float *E = NULL, *U = NULL;
    int32_t *perm = NULL;
    wmat_qresult q;
    memset(&q, 0, sizeof q);
    wmat_qtensor *qt = NULL;
    void *sobj = NULL;
    double lambda = 0.0;
    if (!sc || !mask || !vals || !Wk || !buf) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "gwq: out of memory for a %lld x %lld matrix", (long long)m, (long long)n);
        goto done;
    }
    if ((rc = wmat__gwq_scores(W, m, n, st, p->score, p->seed, sc))) goto done;
    wmat__gwq_mask(sc, N, keep, mask);
    if ((rc = wmat_qresult_alloc(&q, p->bits, p->sym, WMAT_QAXIS_IN, g, m, n, 0))) goto done;
    memcpy(Wk, W, (size_t)N * sizeof(float));
    const int maxq = (1 << p->bits) - 1;
    const int64_t gpr = n / g;
    if (!p->dense_gptq) {
        for (int64_t r = 0; r < m; r++)
            for (int64_t k = 0; k < gpr; k++) {
                const int64_t gi = r * gpr + k, o = r * n + k * g;
                masked_fit(Wk + o, mask + o, g, buf, p, &q.scales[gi], &q.zeros[gi]);
                for (int64_t i = o; i < o + g; i++) {
                    if (mask[i]) {
                        q.codes[i] = (uint8_t)q.zeros[gi];
                        vals[i] = f16r(Wk[i]);
                    } else {
                        q.codes[i] = wmat__qcode(Wk[i], q.scales[gi], q.zeros[gi], maxq);
                    }
                }
            }
    } else {
        int B = p->block > 0 ? p->block : 128;
        if (!per_oc && B % g && g % B) B = g;
        if (B > n) B = (int)n;
        const float damp = p->damp > 0 ? p->damp : 0.01f;
        E = wmat__malloc((size_t)(m * B) * sizeof(float));
        U = wmat__malloc((size_t)(n * n) * sizeof(float));
        perm = wmat__malloc((size_t)n * sizeof(int32_t));
        if (!E || !U || !perm) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "gwq: out of memory");
            goto done;
        }
        lambda = damp;
        const double t0 = wmat__now();
        if ((rc = wmat__gptq_factor(st->H, n, 0, 1, nt, &lambda, perm, U))) goto done;
        if (info) info->factor_seconds = wmat__now() - t0;
        /* dead inputs (H_jj = 0) never matter: 0 unless kept */
        for (int64_t j = 0; j < n; j++)
            if (st->H[j * n + j] == 0.0)
                for (int64_t r = 0; r < m; r++)
                    if (!mask[r * n + j]) Wk[r * n + j] = 0.0f;
        if (per_oc)
            for (int64_t r = 0; r < m; r++) masked_fit(Wk + r * n, mask + r * n, n, buf, p, &q.scales[r], &q.zeros[r]);
        gwq_ctx c = {p, mask, &q, vals, buf, n, gpr, g, per_oc, maxq};
        wmat__gptq_feedback(Wk, m, n, U, B, E, nt, gwq_col, &c);
    }
    /* the two parts as stored */
    if ((rc = wmat_qresult_check_packable(&q, "gwq")) || (rc = wmat_qtensor_pack(&q, &qt))) goto done;
    if ((rc = wmat__sparse_create(vals, mask, m, n, WMAT_F16, &sobj))) goto done;
    wmat_tensor A, S;
    wmat__tensor_own_obj(&A, m, n, qt);
    wmat__tensor_own_obj(&S, m, n, sobj);
    qt = NULL;
    sobj = NULL;
    void *obj = NULL;
    if ((rc = wmat__sum_create(&A, &S, &obj))) {
        wmat__tensor_free_data(&A);
        wmat__tensor_free_data(&S);
        goto done;
    }
    out->obj = obj;
    out->rows = m;
    out->cols = n;
    out->bits = p->bits;
    if (info) {
        info->damp = lambda;
        snprintf(info->scheme, sizeof info->scheme, "gwq %db %s %s%d + %.2f%% fp16 by %s, %s", p->bits,
                 p->sym ? "sym" : "asym", per_oc ? "per-OC " : "g", per_oc ? (int)n : g, 100.0 * (double)keep / (double)N,
                 k_score_names[p->score], p->dense_gptq ? "gptq" : "rtn");
    }
done:
    if (qt) wmat_qtensor_free(qt);
    if (sobj) {
        wmat_tensor S;
        wmat__tensor_own_obj(&S, m, n, sobj);
        wmat__tensor_free_data(&S);
    }
    wmat_qresult_free(&q);
    wmat__free(sc);
    wmat__free(mask);
    wmat__free(vals);
    wmat__free(Wk);
    wmat__free(buf);
    wmat__free(E);
    wmat__free(U);
    wmat__free(perm);
    return rc;
}
