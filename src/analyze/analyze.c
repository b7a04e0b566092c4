/* Per-matrix analysis (spectrum metrics, outlier channels, RTN difficulty,
 * base comparison with intruder dimensions), attention heads (OV / QK
 * circuits and composition scores), and the analysis object. */
#include "analyze.h"

#include "../io/model_internal.h"
#include "../linalg/dense.h"
#include "../linalg/linalg.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

wmat_analyze_params wmat_analyze_default_params(void)
{
    wmat_analyze_params p;
    memset(&p, 0, sizeof p);
    p.exact = 0;
    p.intruder_k = 10;
    p.intruder_threshold = 0.5;
    p.pl_min_tail = 10;
    p.heads = -1;
    p.top_channels = 5;
    p.ctx = NULL;
    return p;
}

/* ---------------------------------------------------------------- helpers */

/* A tensor as a double (rows, cols) array (*out, caller frees), checking
 * every value is finite. */
static int tensor_double(const wmat_tensor *t, double **out)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    size_t ne = (size_t)rows * (size_t)cols;
    int rc = WMAT_OK;
    double *A = wmat__malloc(ne * sizeof(double));
    float *f = NULL;
    *out = NULL;
    if (!A) goto nomem;
    const float *src = t->data;
    if (t->dtype != WMAT_F32) { /* any weight kind: its dequantized matrix */
        if (!(f = wmat__malloc(ne * sizeof(float)))) goto nomem;
        if ((rc = wmat_tensor_dequant_rows(t, 0, rows, f))) goto fail;
        src = f;
    }
    for (size_t i = 0; i < ne; i++) {
        if (!isfinite(src[i])) {
            rc = wmat_set_error(WMAT_ERR_NUMERIC,
                                "tensor %s: %s value at row %lld, column %lld; analysis needs finite weights", t->name,
                                isnan(src[i]) ? "NaN" : "infinite", (long long)(i / (size_t)cols),
                                (long long)(i % (size_t)cols));
            goto fail;
        }
        A[i] = src[i];
    }
    wmat__free(f);
    *out = A;
    return WMAT_OK;
nomem:
    rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory for tensor %s", t->name);
fail:
    wmat__free(A);
    wmat__free(f);
    return rc;
}

/* Top-k of ratio[0..n) into idx/val (descending). */
static void top_k(const double *ratio, int n, int k, int *idx, double *val)
{
    for (int q = 0; q < k; q++) {
        idx[q] = -1;
        val[q] = -1;
    }
    for (int i = 0; i < n; i++) {
        double v = ratio[i];
        if (v <= val[k - 1]) continue;
        int q = k - 1;
        while (q > 0 && v > val[q - 1]) {
            val[q] = val[q - 1];
            idx[q] = idx[q - 1];
            q--;
        }
        val[q] = v;
        idx[q] = i;
    }
}

/* Channel statistics along one axis of A (rows, cols): channel c holds
 * A[i * cs + c * ss] for i < len (stride cs between elements of a channel,
 * stride ss between channels). */
static void channel_stats(const double *A, int nch, int len, size_t ss, size_t es, double *ratio, double *kmax,
                          double *kmean)
{
    double km = 0, ks = 0;
    for (int c = 0; c < nch; c++) {
        const double *p = A + (size_t)c * ss;
        double s1 = 0, amax = 0;
        for (int i = 0; i < len; i++) s1 += p[i * es];
        double mean = s1 / len, m2 = 0, m4 = 0, sq = 0;
        for (int i = 0; i < len; i++) {
            double v = p[i * es], d = v - mean, a = fabs(v);
            if (a > amax) amax = a;
            sq += v * v;
            m2 += d * d;
            m4 += d * d * d * d;
        }
        double rms = sqrt(sq / len);
        ratio[c] = rms > 0 ? amax / rms : 0;
        m2 /= len;
        m4 /= len;
        double kurt = m2 > 0 ? m4 / (m2 * m2) : 0;
        if (kurt > km) km = kurt;
        ks += kurt;
    }
    *kmax = km;
    *kmean = nch ? ks / nch : 0;
}

/* Relative error of 4-bit symmetric round-to-nearest (levels -7..7, scale
 * max|w| / 7) with one scale per channel along the given axis. */
static double rtn4_err(const double *A, int nch, int len, size_t ss, size_t es)
{
    double err = 0, tot = 0;
    for (int c = 0; c < nch; c++) {
        const double *p = A + (size_t)c * ss;
        double amax = 0;
        for (int i = 0; i < len; i++) {
            double a = fabs(p[i * es]);
            if (a > amax) amax = a;
        }
        double scale = amax / 7.0;
        for (int i = 0; i < len; i++) {
            double v = p[i * es];
            double q = scale > 0 ? nearbyint(v / scale) : 0;
            if (q > 7) q = 7;
            if (q < -7) q = -7;
            double d = v - q * scale;
            err += d * d;
            tot += v * v;
        }
    }
    return tot > 0 ? sqrt(err / tot) : 0;
}

/* ---------------------------------------------------------------- one matrix */

typedef struct {
    const wmat_tensor *w, *b;
    const wmat_model *wm, *bm; /* their models (NULL: loose tensors), whose mapped pages are released */
    char role[16];
    int layer;
    int status;
    char err[320];
    double cost;
} an_job;

static int analyze_one(const an_job *job, const wmat_analyze_params *p, wmat_matrix_stats *st)
{
    const wmat_tensor *t = job->w;
    int rows = (int)t->shape[0], cols = (int)t->shape[1];
    int r = rows < cols ? rows : cols;
    double t0 = wmat__now();
    int rc = WMAT_OK;
    double *A = NULL, *B = NULL, *U = NULL, *Ub = NULL, *sb = NULL, *D = NULL;
    snprintf(st->name, sizeof st->name, "%s", t->name);
    snprintf(st->kind, sizeof st->kind, "%s", wmat_tensor_kind(t) ? wmat_tensor_kind(t) : "?");
    snprintf(st->role, sizeof st->role, "%s", job->role);
    st->layer = job->layer;
    st->rows = rows;
    st->cols = cols;
    st->n_sv = r;
    st->sv = wmat__malloc((size_t)r * sizeof(double));
    st->ic_ratio = wmat__malloc((size_t)cols * sizeof(double));
    st->oc_ratio = wmat__malloc((size_t)rows * sizeof(double));
    if (!st->sv || !st->ic_ratio || !st->oc_ratio) goto nomem;
    if ((rc = tensor_double(t, &A))) goto done;
    wmat__model_release(job->wm, t); /* out of core: the mapped source is not read again */
    int want_u = job->b != NULL;
    if (want_u && !(U = wmat__malloc((size_t)rows * r * sizeof(double)))) goto nomem;
    if ((rc = wmat__an_spectrum(A, rows, cols, p->exact, st->sv, U))) goto done;
    wmat__an_spectrum_metrics(st->sv, r, rows, cols, p->pl_min_tail, st);

    /* outliers: input channels are columns, output channels rows */
    channel_stats(A, cols, rows, 1, (size_t)cols, st->ic_ratio, &st->ic_kurtosis_max, &st->ic_kurtosis_mean);
    channel_stats(A, rows, cols, (size_t)cols, 1, st->oc_ratio, &st->oc_kurtosis_max, &st->oc_kurtosis_mean);
    int k = p->top_channels < 1 ? 1 : p->top_channels > WMAT_AN_TOP ? WMAT_AN_TOP : p->top_channels;
    if (k > cols) k = cols;
    if (k > rows) k = rows;
    st->n_top = k;
    top_k(st->ic_ratio, cols, k, st->top_ic, st->top_ic_ratio);
    top_k(st->oc_ratio, rows, k, st->top_oc, st->top_oc_ratio);
    st->ic_max_ratio = st->top_ic_ratio[0];
    st->oc_max_ratio = st->top_oc_ratio[0];
    st->rtn4_err_per_oc = rtn4_err(A, rows, cols, (size_t)cols, 1);
    st->rtn4_err_per_ic = rtn4_err(A, cols, rows, 1, (size_t)cols);

    if (job->b) {
        st->has_base = 1;
        if ((rc = tensor_double(job->b, &B))) goto done;
        wmat__model_release(job->bm, job->b);
        size_t ne = (size_t)rows * cols;
        D = wmat__malloc(ne * sizeof(double));
        st->delta_sv = wmat__malloc((size_t)r * sizeof(double));
        Ub = wmat__malloc((size_t)rows * r * sizeof(double));
        sb = wmat__malloc((size_t)r * sizeof(double));
        if (!D || !st->delta_sv || !Ub || !sb) goto nomem;
        double nd = 0, nb = 0;
        for (size_t i = 0; i < ne; i++) {
            D[i] = A[i] - B[i];
            nd += D[i] * D[i];
            nb += B[i] * B[i];
        }
        st->delta_rel = nb > 0 ? sqrt(nd / nb) : (nd > 0 ? INFINITY : 0);
        if ((rc = wmat__an_spectrum(D, rows, cols, p->exact, st->delta_sv, NULL))) goto done;
        st->delta_stable_rank = wmat__an_stable_rank(st->delta_sv, r);
        st->delta_entropy_rank = wmat__an_entropy_rank(st->delta_sv, r);
        if ((rc = wmat__an_spectrum(B, rows, cols, p->exact, sb, Ub))) goto done;
        int kk = p->intruder_k < 1 ? 1 : p->intruder_k > WMAT_AN_INTRUDER_MAX ? WMAT_AN_INTRUDER_MAX : p->intruder_k;
        if (kk > r) kk = r;
        st->intruder_k = kk;
        /* C = U_k^T Ub (kk, r): cosines of the top-k left vectors of W to
         * every left vector of the base */
        double *C = wmat__malloc((size_t)kk * r * sizeof(double));
        if (!C) goto nomem;
        if ((rc = wmat__dgemm(1, 0, kk, r, rows, 1.0, U, r, Ub, r, 0.0, C, r))) {
            wmat__free(C);
            goto done;
        }
        double ov = 0;
        st->num_intruders = 0;
        for (int i = 0; i < kk; i++) {
            double mx = 0;
            for (int j = 0; j < r; j++) {
                double c = fabs(C[(size_t)i * r + j]);
                if (c > mx) mx = c;
                if (j < kk) ov += C[(size_t)i * r + j] * C[(size_t)i * r + j];
            }
            st->intruder_cos[i] = mx;
            if (mx < p->intruder_threshold) st->num_intruders++;
        }
        st->subspace_overlap = ov / kk;
        wmat__free(C);
    }
    st->seconds = wmat__now() - t0;
    goto done;
nomem:
    rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory analyzing %s (%d x %d)", t->name, rows, cols);
done:
    wmat__free(A);
    wmat__free(B);
    wmat__free(U);
    wmat__free(Ub);
    wmat__free(sb);
    wmat__free(D);
    return rc;
}

/* ---------------------------------------------------------------- driver */

static void stats_free(wmat_matrix_stats *st)
{
    wmat__free(st->sv);
    wmat__free(st->ic_ratio);
    wmat__free(st->oc_ratio);
    wmat__free(st->delta_sv);
}

void wmat_analysis_free(wmat_analysis *a)
{
    if (!a) return;
    for (int i = 0; i < a->n; i++) stats_free(&a->m[i]);
    wmat__free(a->m);
    for (int i = 0; i < a->n_heads; i++) {
        wmat__free(a->h[i].ov_sv);
        wmat__free(a->h[i].qk_sv);
    }
    wmat__free(a->h);
    wmat__free(a->comp);
    for (int k = 0; k < WMAT_COMP_COUNT; k++) wmat__free(a->comp_grid[k]);
    wmat__free(a);
}

static int progress(const wmat_analyze_params *p, const char *what, uint64_t done, uint64_t total)
{
    if (p->ctx && p->ctx->progress) return p->ctx->progress(p->ctx->progress_user, what, done, total);
    return 0;
}

static int job_cost_cmp(const void *x, const void *y)
{
    const an_job *a = *(an_job *const *)x, *b = *(an_job *const *)y;
    return a->cost < b->cost ? 1 : a->cost > b->cost ? -1 : 0;
}

/* Matrices with min(rows, cols) >= this run one at a time with LAPACK
 * threaded; smaller ones run several at a time, one thread each. */
#define AN_BIG 1024

static int run_jobs(wmat_analysis *a, an_job *jobs, int n, const wmat_analyze_params *p)
{
    a->m = wmat__calloc((size_t)n, sizeof(wmat_matrix_stats));
    an_job **order = wmat__malloc((size_t)n * sizeof(an_job *));
    if (!a->m || !order) {
        wmat__free(order);
        return wmat_set_error(WMAT_ERR_NOMEM, "out of memory");
    }
    a->n = n; /* only now: wmat_analysis_free walks a->m[0 .. n) */
    for (int i = 0; i < n; i++) {
        double r = (double)(jobs[i].w->shape[0] < jobs[i].w->shape[1] ? jobs[i].w->shape[0] : jobs[i].w->shape[1]);
        jobs[i].cost = r * r * (double)(jobs[i].w->shape[0] + jobs[i].w->shape[1]);
        order[i] = &jobs[i];
    }
    qsort(order, (size_t)n, sizeof *order, job_cost_cmp);
    int nt = wmat_context_threads(p->ctx);
    int done_n = 0, cancel = 0;
    /* big matrices: one at a time, threads lent to OpenBLAS */
    for (int q = 0; q < n && !cancel; q++) {
        an_job *j = order[q];
        int64_t r = j->w->shape[0] < j->w->shape[1] ? j->w->shape[0] : j->w->shape[1];
        if (r < AN_BIG && nt > 1) continue;
        int prev = wmat__blas_threads_begin(nt);
        j->status = analyze_one(j, p, &a->m[j - jobs]);
        wmat__blas_threads_end(prev);
        if (j->status) snprintf(j->err, sizeof j->err, "%s", wmat_last_error());
        j->cost = -1; /* done */
        if (progress(p, "analyze", (uint64_t)++done_n, (uint64_t)n)) cancel = 1;
    }
    /* the rest in parallel, largest first; LAPACK stays single-threaded
     * inside the region (OpenBLAS runs one thread under wmat's policy) */
    int par = nt > 1 && wmat__blas_num_threads() == 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(par ? nt : 1)
    for (int q = 0; q < n; q++) {
        an_job *j = order[q];
        int stop;
#pragma omp atomic read
        stop = cancel;
        if (j->cost < 0 || stop) continue;
        j->status = analyze_one(j, p, &a->m[j - jobs]);
        if (j->status) snprintf(j->err, sizeof j->err, "%s", wmat_last_error());
#pragma omp critical(wmat_an_progress)
        {
            if (progress(p, "analyze", (uint64_t)++done_n, (uint64_t)n)) {
#pragma omp atomic write
                cancel = 1;
            }
        }
    }
    wmat__free(order);
    if (cancel) return wmat_set_error(WMAT_ERR_CANCELLED, "analysis cancelled");
    for (int i = 0; i < n; i++)
        if (jobs[i].status) return wmat_set_error(jobs[i].status, "%s", jobs[i].err);
    return WMAT_OK;
}

static int check_pair(const wmat_tensor *w, const wmat_tensor *b)
{
    if (!w || w->ndim != 2 || w->shape[0] <= 0 || w->shape[1] <= 0 || !w->data)
        return wmat_set_error(WMAT_ERR_INVALID, "tensor %s is not a non-empty 2-D matrix", w ? w->name : "(null)");
    if (w->shape[0] > INT32_MAX / 2 || w->shape[1] > INT32_MAX / 2)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "tensor %s is too large", w->name);
    if (!wmat_tensor_kind(w))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "tensor %s is no weight matrix of a known kind", w->name);
    if (b) {
        if (b->ndim != 2 || b->shape[0] != w->shape[0] || b->shape[1] != w->shape[1])
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "shape mismatch for %s: model %lld x %lld, base %lld x %lld", w->name,
                                  (long long)w->shape[0], (long long)w->shape[1], (long long)b->shape[0],
                                  b->ndim > 1 ? (long long)b->shape[1] : 1LL);
        if (!b->data || !wmat_tensor_kind(b))
            return wmat_set_error(WMAT_ERR_UNSUPPORTED, "base tensor %s is no weight matrix of a known kind", b->name);
    }
    return WMAT_OK;
}

int wmat_analyze_tensors(wmat_analysis **out, const wmat_tensor *const *w, const wmat_tensor *const *base, int n,
                         const wmat_analyze_params *pp)
{
    *out = NULL;
    if (n <= 0 || !w) return wmat_set_error(WMAT_ERR_INVALID, "nothing to analyze: no 2-D weight matrices");
    wmat_analyze_params p = pp ? *pp : wmat_analyze_default_params();
    for (int i = 0; i < n; i++) {
        int rc = check_pair(w[i], base ? base[i] : NULL);
        if (rc) return rc;
    }
    wmat_analysis *a = wmat__calloc(1, sizeof *a);
    an_job *jobs = wmat__calloc((size_t)n, sizeof(an_job));
    if (!a || !jobs) {
        wmat__free(a);
        wmat__free(jobs);
        return wmat_set_error(WMAT_ERR_NOMEM, "out of memory");
    }
    double t0 = wmat__now();
    a->has_base = base != NULL;
    a->exact = p.exact;
    a->intruder_threshold = p.intruder_threshold;
    for (int i = 0; i < n; i++) {
        jobs[i].w = w[i];
        jobs[i].b = base ? base[i] : NULL;
        snprintf(jobs[i].role, sizeof jobs[i].role, "other");
        jobs[i].layer = -1;
    }
    int rc = run_jobs(a, jobs, n, &p);
    wmat__free(jobs);
    a->seconds = wmat__now() - t0;
    if (rc) {
        wmat_analysis_free(a);
        return rc;
    }
    *out = a;
    return WMAT_OK;
}

/* ---------------------------------------------------------------- heads */

/* Factors of one head, each (hd, dim) row-major: the head's rows of W_Q,
 * W_K, W_V and its columns of W_O (transposed); and their Grams (hd, hd). */
typedef struct {
    double *q, *k, *v, *ot;
    double *gq, *gk, *gv, *go;
    double ov_fro, qk_fro;
} head_f;

static int gram_rows(const double *X, int hd, int dim, double *G)
{
    int rc = wmat__dsyrk_upper(0, hd, dim, 1.0, X, dim, 0.0, G, hd);
    if (rc) return rc;
    for (int i = 0; i < hd; i++)
        for (int j = 0; j < i; j++) G[i * hd + j] = G[j * hd + i];
    return WMAT_OK;
}

static double tr_prod(const double *A, const double *B, int n) /* tr(A B), B symmetric */
{
    double t = 0;
    for (size_t i = 0; i < (size_t)n * n; i++) t += A[i] * B[i];
    return t;
}

/* Singular values of P^T R (P, R: (hd, dim)) from their Grams: the
 * eigenvalues of Gp^(1/2) Gr Gp^(1/2) are s^2. */
static int circuit_sv(const double *Gp, const double *Gr, int hd, double *s)
{
    size_t n2 = (size_t)hd * hd;
    double *E = wmat__malloc(n2 * sizeof(double)), *w = wmat__malloc((size_t)hd * sizeof(double));
    double *H = wmat__malloc(n2 * sizeof(double)), *T = wmat__malloc(n2 * sizeof(double));
    int rc = WMAT_OK;
    if (!E || !w || !H || !T) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory");
        goto done;
    }
    memcpy(E, Gp, n2 * sizeof(double));
    if ((rc = wmat__dsyevd_upper(1, hd, E, hd, w))) {
        rc = wmat_set_error(rc, "head Gram matrix: %s", wmat_last_error());
        goto done;
    }
    /* H = E diag(sqrt w) E^T */
    for (int i = 0; i < hd; i++)
        for (int j = 0; j < hd; j++) T[i * hd + j] = E[i * hd + j] * sqrt(w[j] > 0 ? w[j] : 0);
    if ((rc = wmat__dgemm(0, 1, hd, hd, hd, 1.0, T, hd, E, hd, 0.0, H, hd)) ||
        (rc = wmat__dgemm(0, 0, hd, hd, hd, 1.0, H, hd, Gr, hd, 0.0, T, hd)) ||
        (rc = wmat__dgemm(0, 0, hd, hd, hd, 1.0, T, hd, H, hd, 0.0, E, hd)))
        goto done;
    if ((rc = wmat__dsyevd_upper(0, hd, E, hd, w))) {
        rc = wmat_set_error(rc, "head circuit: %s", wmat_last_error());
        goto done;
    }
    for (int j = 0; j < hd; j++) s[j] = sqrt(w[hd - 1 - j] > 0 ? w[hd - 1 - j] : 0);
done:
    wmat__free(E);
    wmat__free(w);
    wmat__free(H);
    wmat__free(T);
    return rc;
}

/* *out = ||Y^T X O_A V_A||_F^2 = tr(C^T Gy C Gva) with C = X O_A = X * ot_A^T. */
static int comp_num2(const double *X, const double *Gy, const head_f *A, int hd, int dim, double *C, double *T1,
                     double *T2, double *out)
{
    int rc;
    if ((rc = wmat__dgemm(0, 1, hd, hd, dim, 1.0, X, dim, A->ot, dim, 0.0, C, hd)) ||
        (rc = wmat__dgemm(0, 0, hd, hd, hd, 1.0, Gy, hd, C, hd, 0.0, T1, hd)) ||
        (rc = wmat__dgemm(0, 0, hd, hd, hd, 1.0, C, hd, A->gv, hd, 0.0, T2, hd)))
        return rc;
    double t = 0;
    for (int i = 0; i < hd * hd; i++) t += T1[i] * T2[i];
    *out = t > 0 ? t : 0;
    return WMAT_OK;
}

static int comp_cmp(const void *x, const void *y)
{
    const wmat_composition *a = x, *b = y;
    if (a->score != b->score) return a->score < b->score ? 1 : -1;
    if (a->kind != b->kind) return (int)a->kind - (int)b->kind;
    if (a->src_layer != b->src_layer) return a->src_layer - b->src_layer;
    if (a->src_head != b->src_head) return a->src_head - b->src_head;
    if (a->dst_layer != b->dst_layer) return a->dst_layer - b->dst_layer;
    return a->dst_head - b->dst_head;
}

static int analyze_heads(wmat_analysis *a, wmat_model *m, const wmat_analyze_params *p)
{
    const wmat_config *c = wmat_model_config(m);
    int L = c->n_layers, H = c->n_heads, KV = c->n_kv_heads > 0 ? c->n_kv_heads : H, hd = c->head_dim, dim = c->dim;
    if (L <= 0 || H <= 0 || hd <= 0 || H % KV) return WMAT_OK;
    for (int l = 0; l < L; l++) {
        const wmat_tensor *q = wmat_model_linear(m, l, WMAT_LIN_Q), *k = wmat_model_linear(m, l, WMAT_LIN_K),
                          *v = wmat_model_linear(m, l, WMAT_LIN_V), *o = wmat_model_linear(m, l, WMAT_LIN_O);
        if (!q || !k || !v || !o || !wmat_tensor_kind(q) || !wmat_tensor_kind(k) || !wmat_tensor_kind(v) ||
            !wmat_tensor_kind(o) || q->shape[0] != (int64_t)H * hd || q->shape[1] != dim ||
            k->shape[0] != (int64_t)KV * hd || v->shape[0] != (int64_t)KV * hd || o->shape[0] != dim ||
            o->shape[1] != (int64_t)H * hd)
            return WMAT_OK; /* not a plain LLaMA attention: no head analysis */
    }
    int NH = L * H, rc = WMAT_OK;
    float *deq = NULL;
    size_t fsz = (size_t)hd * dim, gsz = (size_t)hd * hd;
    head_f *f = wmat__calloc((size_t)NH, sizeof(head_f));
    double *mem = wmat__malloc(((size_t)NH * (4 * fsz + 4 * gsz)) * sizeof(double));
    a->h = wmat__calloc((size_t)NH, sizeof(wmat_head_stats));
    if (!f || !mem || !a->h) goto nomem;
    a->n_heads = NH;
    a->heads_per_layer = H;
    a->n_layers = L;
    a->head_dim = hd;
    for (int i = 0; i < NH; i++) {
        double *b = mem + (size_t)i * (4 * fsz + 4 * gsz);
        f[i].q = b;
        f[i].k = b + fsz;
        f[i].v = b + 2 * fsz;
        f[i].ot = b + 3 * fsz;
        f[i].gq = b + 4 * fsz;
        f[i].gk = f[i].gq + gsz;
        f[i].gv = f[i].gk + gsz;
        f[i].go = f[i].gv + gsz;
        a->h[i].ov_sv = wmat__malloc((size_t)hd * sizeof(double));
        a->h[i].qk_sv = wmat__malloc((size_t)hd * sizeof(double));
        if (!a->h[i].ov_sv || !a->h[i].qk_sv) goto nomem;
    }
    /* q, k, v, o of a layer as fp32 (other kinds dequantized into deq) */
    deq = wmat__malloc(((size_t)2 * H * hd * dim + (size_t)2 * KV * hd * dim) * sizeof(float));
    if (!deq) goto nomem;
    for (int l = 0; l < L; l++) {
        const float *P[4];
        float *slot = deq;
        for (int i = 0; i < 4; i++) {
            static const wmat_linear_kind role[4] = {WMAT_LIN_Q, WMAT_LIN_K, WMAT_LIN_V, WMAT_LIN_O};
            const wmat_tensor *t = wmat_model_linear(m, l, role[i]);
            if (t->dtype == WMAT_F32) {
                P[i] = t->data;
                continue;
            }
            wmat_tensor_dequant_rows(t, 0, t->shape[0], slot);
            P[i] = slot;
            slot += (size_t)t->shape[0] * (size_t)t->shape[1];
        }
        const float *Q = P[0], *K = P[1], *V = P[2], *O = P[3];
        for (int h = 0; h < H; h++) {
            head_f *x = &f[l * H + h];
            int kvh = h / (H / KV); /* GQA: consecutive query heads share a kv head */
            for (int r = 0; r < hd; r++)
                for (int j = 0; j < dim; j++) {
                    x->q[(size_t)r * dim + j] = Q[((size_t)h * hd + r) * dim + j];
                    x->k[(size_t)r * dim + j] = K[((size_t)kvh * hd + r) * dim + j];
                    x->v[(size_t)r * dim + j] = V[((size_t)kvh * hd + r) * dim + j];
                    x->ot[(size_t)r * dim + j] = O[(size_t)j * H * hd + (size_t)h * hd + r];
                }
            for (size_t i = 0; i < fsz; i++)
                if (!isfinite(x->q[i]) || !isfinite(x->k[i]) || !isfinite(x->v[i]) || !isfinite(x->ot[i])) {
                    rc = wmat_set_error(WMAT_ERR_NUMERIC, "layer %d attention weights hold a non-finite value", l);
                    goto done;
                }
            if ((rc = gram_rows(x->q, hd, dim, x->gq)) || (rc = gram_rows(x->k, hd, dim, x->gk)) ||
                (rc = gram_rows(x->v, hd, dim, x->gv)) || (rc = gram_rows(x->ot, hd, dim, x->go)))
                goto done;
            wmat_head_stats *hs = &a->h[l * H + h];
            hs->layer = l;
            hs->head = h;
            hs->kv_head = kvh;
            hs->n_sv = hd;
            /* OV = O_h V_h = ot^T v; QK = Q_h^T K_h */
            if ((rc = circuit_sv(x->go, x->gv, hd, hs->ov_sv))) goto done;
            if ((rc = circuit_sv(x->gq, x->gk, hd, hs->qk_sv))) goto done;
            x->ov_fro = sqrt(fmax(tr_prod(x->go, x->gv, hd), 0));
            x->qk_fro = sqrt(fmax(tr_prod(x->gq, x->gk, hd), 0));
            hs->ov_norm_fro = x->ov_fro;
            hs->qk_norm_fro = x->qk_fro;
            hs->ov_stable_rank = wmat__an_stable_rank(hs->ov_sv, hd);
            hs->qk_stable_rank = wmat__an_stable_rank(hs->qk_sv, hd);
            hs->ov_entropy_rank = wmat__an_entropy_rank(hs->ov_sv, hd);
            hs->qk_entropy_rank = wmat__an_entropy_rank(hs->qk_sv, hd);
        }
    }
    /* composition of every head A into every head B of a later layer */
    for (int kd = 0; kd < WMAT_COMP_COUNT; kd++) {
        a->comp_grid[kd] = wmat__malloc((size_t)NH * NH * sizeof(double));
        if (!a->comp_grid[kd]) goto nomem;
        for (size_t i = 0; i < (size_t)NH * NH; i++) a->comp_grid[kd][i] = NAN;
    }
    int npairs = 0;
    for (int la = 0; la < L; la++) npairs += H * H * (L - 1 - la);
    a->comp = wmat__malloc((size_t)(npairs ? npairs : 1) * WMAT_COMP_COUNT * sizeof(wmat_composition));
    if (!a->comp) goto nomem;
    int nt = wmat_context_threads(p->ctx), fail = 0, gemm_fail = 0;
#pragma omp parallel num_threads(nt)
    {
        double *C = wmat__malloc(3 * gsz * sizeof(double));
        if (!C) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int bi = H; bi < NH; bi++) {
            if (!C) continue;
            const head_f *B = &f[bi];
            int lb = bi / H;
            for (int ai = 0; ai < lb * H; ai++) {
                const head_f *A = &f[ai];
                double ova = A->ov_fro;
                /* Q: W_QK^B^T W_OV^A = K^T Q O V: X = Q_B, Y = K_B;
                 * K: W_QK^B W_OV^A = Q^T K O V: X = K_B, Y = Q_B;
                 * V: W_OV^B W_OV^A = O V O V: X = V_B, Y = ot_B */
                double nq, nk, nv;
                if (comp_num2(B->q, B->gk, A, hd, dim, C, C + gsz, C + 2 * gsz, &nq) ||
                    comp_num2(B->k, B->gq, A, hd, dim, C, C + gsz, C + 2 * gsz, &nk) ||
                    comp_num2(B->v, B->go, A, hd, dim, C, C + gsz, C + 2 * gsz, &nv)) {
                    /* the message is on this worker's thread: restated below */
#pragma omp atomic write
                    gemm_fail = 1;
                    continue;
                }
                double dq = B->qk_fro * ova, dv = B->ov_fro * ova;
                a->comp_grid[WMAT_COMP_Q][(size_t)ai * NH + bi] = dq > 0 ? sqrt(nq) / dq : 0;
                a->comp_grid[WMAT_COMP_K][(size_t)ai * NH + bi] = dq > 0 ? sqrt(nk) / dq : 0;
                a->comp_grid[WMAT_COMP_V][(size_t)ai * NH + bi] = dv > 0 ? sqrt(nv) / dv : 0;
            }
        }
        wmat__free(C);
    }
    if (fail) goto nomem;
    if (gemm_fail) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "head composition: a dgemm rejected its sizes (head dim %d, dim %d)", hd,
                            dim);
        goto done;
    }
    int nc = 0;
    for (int kd = 0; kd < WMAT_COMP_COUNT; kd++)
        for (int ai = 0; ai < NH; ai++)
            for (int bi = (ai / H + 1) * H; bi < NH; bi++) {
                wmat_composition *cp = &a->comp[nc++];
                cp->kind = (wmat_comp_kind)kd;
                cp->src_layer = ai / H;
                cp->src_head = ai % H;
                cp->dst_layer = bi / H;
                cp->dst_head = bi % H;
                cp->score = a->comp_grid[kd][(size_t)ai * NH + bi];
            }
    a->n_comp = nc;
    qsort(a->comp, (size_t)nc, sizeof(wmat_composition), comp_cmp);
    goto done;
nomem:
    rc = wmat_set_error(WMAT_ERR_NOMEM, "out of memory in the attention-head analysis");
done:
    wmat__free(f);
    wmat__free(mem);
    wmat__free(deq);
    return rc;
}

/* ---------------------------------------------------------------- model */

/* Role and layer of a tensor of m (by identity with the model's accessors). */
static void tensor_role(wmat_model *m, const wmat_tensor *t, char *role, size_t cap, int *layer)
{
    const wmat_config *c = wmat_model_config(m);
    *layer = -1;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            if (wmat_model_linear(m, l, (wmat_linear_kind)k) == t) {
                snprintf(role, cap, "%s", wmat_linear_name((wmat_linear_kind)k));
                *layer = l;
                return;
            }
    if (wmat_model_tok_embeddings(m) == t) snprintf(role, cap, "embed");
    else if (wmat_model_classifier(m) == t) snprintf(role, cap, "classifier");
    else snprintf(role, cap, "other");
}

int wmat_analyze_model(wmat_analysis **out, wmat_model *m, wmat_model *base, const wmat_analyze_params *pp)
{
    *out = NULL;
    if (!m) return wmat_set_error(WMAT_ERR_INVALID, "wmat_analyze_model: no model");
    wmat_analyze_params p = pp ? *pp : wmat_analyze_default_params();
    int rc;
    /* canonical layout; weights stay in their kind (read dequantized, one matrix at a time) */
    if ((rc = wmat_model_prepare_stored(m))) return rc;
    if (base && (rc = wmat_model_prepare_stored(base))) return rc;
    int nt = wmat_model_n_tensors(m), n = 0;
    an_job *jobs = wmat__calloc((size_t)(nt ? nt : 1), sizeof(an_job));
    wmat_analysis *a = wmat__calloc(1, sizeof *a);
    if (!jobs || !a) {
        wmat__free(jobs);
        wmat__free(a);
        return wmat_set_error(WMAT_ERR_NOMEM, "out of memory");
    }
    double t0 = wmat__now();
    snprintf(a->model_path, sizeof a->model_path, "%s", wmat_model_path(m) ? wmat_model_path(m) : "");
    if (base) snprintf(a->base_path, sizeof a->base_path, "%s", wmat_model_path(base) ? wmat_model_path(base) : "");
    a->has_base = base != NULL;
    a->exact = p.exact;
    a->intruder_threshold = p.intruder_threshold;
    for (int i = 0; i < nt; i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim != 2) continue;
        an_job *j = &jobs[n];
        j->w = t;
        j->wm = m;
        j->bm = base;
        if (base) {
            j->b = wmat_model_find(base, t->name);
            if (!j->b) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "the base model has no tensor %s (is it the same architecture?)",
                                    t->name);
                goto fail;
            }
        }
        if ((rc = check_pair(t, j->b))) goto fail;
        tensor_role(m, t, j->role, sizeof j->role, &j->layer);
        n++;
    }
    if (n == 0) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "%s has no 2-D weight matrices to analyze",
                            wmat_model_path(m) ? wmat_model_path(m) : "the model");
        goto fail;
    }
    if ((rc = run_jobs(a, jobs, n, &p))) goto fail;
    const wmat_config *c = wmat_model_config(m);
    int want_heads = p.heads > 0 || (p.heads < 0 && c->n_layers * c->n_heads <= 256);
    if (want_heads && (rc = analyze_heads(a, m, &p))) goto fail;
    a->seconds = wmat__now() - t0;
    wmat__free(jobs);
    *out = a;
    return WMAT_OK;
fail:
    wmat__free(jobs);
    wmat_analysis_free(a);
    return rc;
}

/* ---------------------------------------------------------------- accessors */

int wmat_analysis_n_matrices(const wmat_analysis *a) { return a ? a->n : 0; }
const wmat_matrix_stats *wmat_analysis_matrix(const wmat_analysis *a, int i)
{
    return a && i >= 0 && i < a->n ? &a->m[i] : NULL;
}
int wmat_analysis_n_heads(const wmat_analysis *a) { return a ? a->n_heads : 0; }
const wmat_head_stats *wmat_analysis_head(const wmat_analysis *a, int i)
{
    return a && i >= 0 && i < a->n_heads ? &a->h[i] : NULL;
}
int wmat_analysis_n_compositions(const wmat_analysis *a) { return a ? a->n_comp : 0; }
const wmat_composition *wmat_analysis_composition(const wmat_analysis *a, int i)
{
    return a && i >= 0 && i < a->n_comp ? &a->comp[i] : NULL;
}
double wmat_analysis_seconds(const wmat_analysis *a) { return a ? a->seconds : 0; }
