/* PB-LLM: the pbllm weight kind (kernels against the dequantized product,
 * the plain C, AVX2 and AVX-512 twins, exact bits-per-weight accounting, hostile
 * parts) and the pbllm method against a slow literal restatement of the
 * algorithm (SPECS.md G1) on a fixed small matrix, and its salient mask
 * against the rule. */
#include "test_util.h"

#include "quant/methods.h"
#include "quant/qmodel.h"
#include "wop/kern_dense.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float f16r(float x) { return wmat_f16_to_f32(wmat_f32_to_f16(x)); }

/* A PB-LLM weight of random parameters with salient positions from sal. */
static void make_weight(int64_t R, int64_t C, const uint8_t *sal, uint64_t seed, wmat_tensor *W)
{
    wmat_rng g;
    wmat_rng_seed(&g, seed);
    uint8_t *code = malloc((size_t)(R * C));
    float *rowp = malloc((size_t)R * 4 * sizeof(float));
    for (int64_t r = 0; r < R; r++) {
        rowp[r * 4 + 0] = 0.01f * wmat_rng_normal(&g);
        rowp[r * 4 + 1] = 0.02f + 0.01f * fabsf(wmat_rng_normal(&g));
        rowp[r * 4 + 2] = 0.001f + 0.0005f * fabsf(wmat_rng_normal(&g));
        rowp[r * 4 + 3] = (float)(100 + r % 50);
        for (int64_t c = 0; c < C; c++) {
            const uint32_t u = (uint32_t)wmat_rng_u64(&g);
            code[r * C + c] = sal[r * C + c] ? (uint8_t)(u & 255) : (uint8_t)(u >> 31);
        }
    }
    void *obj;
    TU_OK(wmat__pbllm_create(R, C, sal, code, rowp, &obj));
    wmat__tensor_own_obj(W, R, C, obj);
    /* dequantized values are exactly the parameters' */
    float *D = malloc((size_t)(R * C) * sizeof(float));
    wmat__wkind_of(W)->dequant_rows(W, 0, R, D);
    for (int64_t r = 0; r < R; r++) {
        const float *f = rowp + r * 4;
        for (int64_t c = 0; c < C; c++) {
            const int64_t i = r * C + c;
            const float want = sal[i] ? f16r(f[2]) * ((float)code[i] - f[3])
                                      : (code[i] ? f16r(f[0]) + f16r(f[1]) : f16r(f[0]) - f16r(f[1]));
            if (D[i] != want) fail_msg("dequant (%lld, %lld): %g, want %g", (long long)r, (long long)c, D[i], want);
        }
    }
    free(D), free(code), free(rowp);
}

static void random_mask(int64_t n, double frac, uint64_t seed, uint8_t *sal)
{
    wmat_rng g;
    wmat_rng_seed(&g, seed);
    for (int64_t i = 0; i < n; i++) sal[i] = wmat_rng_uniform(&g) < frac;
}

/* y = W x through prepare + rows at one ISA level, against the dequantized
 * product in double: relative error within 1e-5. */
static void check_rows(const wmat_tensor *W, int isa)
{
    const wmat_wkind *k = wmat__wkind_of(W);
    const int64_t R = W->shape[0], C = W->shape[1];
    float *D = malloc((size_t)(R * C) * sizeof(float)), *x = malloc((size_t)C * sizeof(float));
    float *y = malloc((size_t)R * sizeof(float));
    double *yr = malloc((size_t)R * sizeof(double));
    k->dequant_rows(W, 0, R, D);
    wmat_rng g;
    wmat_rng_seed(&g, 77);
    for (int64_t c = 0; c < C; c++) x[c] = wmat_rng_normal(&g);
    double num = 0, den = 0;
    for (int64_t r = 0; r < R; r++) {
        double s = 0;
        for (int64_t c = 0; c < C; c++) s += (double)D[r * C + c] * x[c];
        yr[r] = s;
    }
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.isa = isa;
    ex.n_threads = 1;
    char prep[64];
    assert_true(k->prep_bytes(W, &ex) <= sizeof prep);
    k->prepare(W, x, prep, &ex);
    k->rows(W, x, prep, y, 0, R, 0, &ex);
    for (int64_t r = 0; r < R; r++) {
        if (!isfinite(y[r])) fail_msg("row %lld not finite", (long long)r);
        num += (y[r] - yr[r]) * (y[r] - yr[r]);
        den += yr[r] * yr[r];
    }
    const double e = sqrt(num / den);
    if (!(e < 1e-5)) fail_msg("pbllm %lld x %lld isa %d: rows %g from the dequantized product", (long long)R, (long long)C, isa, e);
    /* a row range on its own gives the same bits */
    if (R > 3) {
        float y2[3];
        k->rows(W, x, prep, y2, 0, 3, 0, &ex);
        float *yy = malloc((size_t)R * sizeof(float));
        k->rows(W, x, prep, yy, R - 3, R, 0, &ex);
        assert_memory_equal(yy + R - 3, y + R - 3, 3 * sizeof(float));
        free(yy);
    }
    free(D), free(x), free(y), free(yr);
}

static void test_kernel(void **state)
{
    (void)state;
    /* widths: multiples of 32, of 8 only, of neither (stories260K's 172), long rows */
    static const int64_t shapes[][2] = {{16, 64}, {7, 40}, {9, 172}, {5, 37}, {33, 4096}, {1, 3}};
    static const double fracs[] = {0.0, 0.001, 0.1, 0.5, 1.0};
    const int best = wmat__isa_best();
    int levels[3] = {WMAT_ISA_REF, WMAT_ISA_AVX2, WMAT_ISA_AVX512},
        nl = best >= WMAT_ISA_AVX512 ? 3 : best >= WMAT_ISA_AVX2 ? 2 : 1;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t f = 0; f < sizeof fracs / sizeof fracs[0]; f++) {
            const int64_t R = shapes[s][0], C = shapes[s][1];
            uint8_t *sal = malloc((size_t)(R * C));
            random_mask(R * C, fracs[f], 100 + s * 10 + f, sal);
            wmat_tensor W;
            make_weight(R, C, sal, 5 + s, &W);
            for (int l = 0; l < nl; l++) check_rows(&W, levels[l]);
            wmat__tensor_free_data(&W);
            free(sal);
        }
    if (nl < 2) print_message("  (no AVX2 on this CPU: the C twin only)\n");
    else if (nl < 3) print_message("  (no AVX-512 on this CPU: the AVX-512 twin unchecked)\n");
}

/* nbytes is every stored byte: sign bits, 7 bytes of row parameters and
 * two bytes per stream entry, a filler for each 255 skipped positions. */
static void test_bpw(void **state)
{
    (void)state;
    const int64_t R = 4, C = 600;
    uint8_t *sal = calloc((size_t)(R * C), 1);
    /* gaps from the cursor (-1): 0 | 299 (one filler + 44) | 0 | 2097 (8 fillers + 57) */
    sal[0] = sal[300] = sal[301] = sal[2399] = 1;
    wmat_tensor W;
    make_weight(R, C, sal, 3, &W);
    const uint64_t want = 4 * 75 + 4 * 7 + 2 * 13;
    assert_true(wmat__wkind_of(&W)->nbytes(&W) == want);
    assert_true(fabs(wmat_tensor_bits_per_weight(&W) - 8.0 * (double)want / (double)(R * C)) < 1e-12);
    uint8_t *m = malloc((size_t)(R * C));
    assert_int_equal(wmat__pbllm_salient(&W, m), 4);
    assert_memory_equal(m, sal, (size_t)(R * C));
    wmat__tensor_free_data(&W);
    /* no salient weight: one (unused) entry is stored */
    memset(sal, 0, (size_t)(R * C));
    make_weight(R, C, sal, 4, &W);
    assert_true(wmat__wkind_of(&W)->nbytes(&W) == 4 * 75 + 4 * 7 + 2);
    assert_int_equal(wmat__pbllm_salient(&W, m), 0);
    check_rows(&W, WMAT_ISA_REF);
    wmat__tensor_free_data(&W);
    free(sal), free(m);
}

/* ---- hostile parts */

typedef struct {
    wmat_wpart parts[WMAT_WPART_MAX];
    int n;
} store;

static int get_part(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    store *s = user;
    for (int i = 0; i < s->n; i++) {
        const wmat_wpart *p = &s->parts[i];
        if (strcmp(p->suffix, suffix)) continue;
        if (p->dtype != dtype || p->ndim != ndim || p->shape[0] != d0 || (ndim == 2 && p->shape[1] != d1))
            return wmat_set_error(WMAT_ERR_FORMAT, "store: part %s has the wrong dtype or shape", suffix);
        *data = p->data;
        return WMAT_OK;
    }
    return wmat_set_error(WMAT_ERR_FORMAT, "store: missing part %s", suffix);
}

static int find(const store *s, const char *suffix)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->parts[i].suffix, suffix)) return i;
    fail_msg("no part %s", suffix);
    return -1;
}

/* A copy of part `suffix`'s bytes that the store now points to. */
static uint8_t *own_part(store *s, const char *suffix, size_t bytes)
{
    const int i = find(s, suffix);
    uint8_t *c = malloc(bytes);
    memcpy(c, s->parts[i].data, bytes);
    s->parts[i].data = c;
    return c;
}

static void expect_refused(const cJSON *desc, int64_t R, int64_t C, store *s, const char *what)
{
    void *o = (void *)1;
    const int rc = wmat__wkind_find("pbllm")->load(desc, R, C, get_part, s, "hostile", &o);
    if (rc >= 0) fail_msg("%s: loaded", what);
    assert_null(o);
    assert_true(strlen(wmat_last_error()) > 0);
}

static void test_hostile(void **state)
{
    (void)state;
    const int64_t R = 6, C = 21; /* 21: the last sign byte has padding bits */
    uint8_t *sal = malloc((size_t)(R * C));
    random_mask(R * C, 0.2, 9, sal);
    wmat_tensor W;
    make_weight(R, C, sal, 8, &W);
    const wmat_wkind *k = wmat__wkind_of(&W);
    cJSON *desc = cJSON_CreateObject();
    cJSON_AddStringToObject(desc, "kind", "pbllm");
    store st = {.n = 0};
    TU_OK(k->save(&W, desc, st.parts, &st.n, "test"));
    void *obj = NULL;
    TU_OK(k->load(desc, R, C, get_part, &st, "test", &obj));
    k->free(obj);
    const int64_t n_ent = (int64_t)cJSON_GetObjectItem(desc, "entries")->valuedouble;
    assert_true(n_ent >= 2);
    const size_t ent_b = (size_t)n_ent * 2;

    /* the stream runs past the last weight */
    store bad = st;
    uint8_t *ent = own_part(&bad, ".pb_sal", ent_b);
    ent[ent_b - 2] = 254;
    for (int64_t i = 0; i + 1 < n_ent; i++) ent[2 * i] = 200;
    expect_refused(desc, R, C, &bad, "stream past the end");
    free(ent);
    /* a filler with a code */
    bad = st;
    ent = own_part(&bad, ".pb_sal", ent_b);
    ent[0] = 255, ent[1] = 7;
    expect_refused(desc, R, C, &bad, "filler with a code");
    free(ent);
    uint8_t *sg;
    /* the salient count disagrees with the stream */
    cJSON *d2 = cJSON_Duplicate(desc, 1);
    cJSON_ReplaceItemInObject(d2, "salient", cJSON_CreateNumber(cJSON_GetObjectItem(desc, "salient")->valuedouble + 1));
    expect_refused(d2, R, C, &st, "salient count");
    cJSON_Delete(d2);
    /* more entries than the part holds: the part's shape no longer matches */
    d2 = cJSON_Duplicate(desc, 1);
    cJSON_ReplaceItemInObject(d2, "entries", cJSON_CreateNumber((double)n_ent + 1));
    expect_refused(d2, R, C, &st, "entries");
    cJSON_Delete(d2);
    /* a non-finite row parameter */
    bad = st;
    uint8_t *rp = own_part(&bad, ".pb_row", (size_t)R * 6);
    const uint16_t inf = 0x7C00;
    memcpy(rp + 2 * 4, &inf, 2);
    expect_refused(desc, R, C, &bad, "infinite alpha");
    free(rp);
    /* a salient weight with its sign bit set (the kernels take it as 0) */
    bad = st;
    sg = own_part(&bad, ".pb_sign", (size_t)R * 3);
    {
        const int64_t p0 = ((const uint8_t *)st.parts[find(&st, ".pb_sal")].data)[0]; /* the first entry's gap is its position */
        assert_true(sal[p0]);
        sg[(p0 / C) * 3 + (p0 % C) / 8] |= (uint8_t)(1u << (p0 % C % 8));
    }
    expect_refused(desc, R, C, &bad, "salient sign bit");
    free(sg);
    /* sign bits past the last input */
    bad = st;
    sg = own_part(&bad, ".pb_sign", (size_t)R * 3);
    sg[3 * 2 + 2] |= 0x80;
    expect_refused(desc, R, C, &bad, "padding bits");
    free(sg);

    cJSON_Delete(desc);
    wmat__tensor_free_data(&W);
    free(sal);
}

/* ---- the method against a literal restatement */

/* Upper U with A^-1 = U^T U, A (n, n) SPD, in double: A^-1 by Gauss-Jordan,
 * then its Cholesky factor L (lower), U = L^T. */
static void literal_hinv(const double *A, int n, double *U)
{
    double *M = malloc((size_t)n * 2 * (size_t)n * sizeof(double)), *Ai = malloc((size_t)n * (size_t)n * sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < 2 * n; j++) M[i * 2 * n + j] = j < n ? A[i * n + j] : (j - n == i);
    for (int c = 0; c < n; c++) {
        const double p = M[c * 2 * n + c];
        for (int j = 0; j < 2 * n; j++) M[c * 2 * n + j] /= p;
        for (int i = 0; i < n; i++)
            if (i != c) {
                const double f = M[i * 2 * n + c];
                for (int j = 0; j < 2 * n; j++) M[i * 2 * n + j] -= f * M[c * 2 * n + j];
            }
    }
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++) Ai[i * n + j] = M[i * 2 * n + n + j];
    memset(U, 0, (size_t)n * (size_t)n * sizeof(double));
    for (int j = 0; j < n; j++) { /* L (lower) in U's transpose: U[j][i] = L[i][j] */
        double s = Ai[j * n + j];
        for (int k = 0; k < j; k++) s -= U[k * n + j] * U[k * n + j];
        U[j * n + j] = sqrt(s);
        for (int i = j + 1; i < n; i++) {
            double t = Ai[i * n + j];
            for (int k = 0; k < j; k++) t -= U[k * n + i] * U[k * n + j];
            U[j * n + i] = t / U[j * n + j];
        }
    }
    free(M), free(Ai);
}

static int cmp_d(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* PB-LLM on W (m, n) with Hessian H, one column at a time, every later
 * column updated at once (no blocks): Q (m, n) and the salient mask. */
static void literal_pbllm(const float *W0, int m, int n, const double *H0, double f, int hessian, int row_stats, double damp,
                          float *Q, uint8_t *sal)
{
    double *H = malloc((size_t)(n * n) * sizeof(double)), *U = malloc((size_t)(n * n) * sizeof(double));
    double *W = malloc((size_t)(m * n) * sizeof(double)), *sc = malloc((size_t)(m * n) * sizeof(double));
    double *srt = malloc((size_t)(m * n) * sizeof(double));
    float *mu = malloc((size_t)m * sizeof(float)), *al = malloc((size_t)m * sizeof(float));
    float *s8 = malloc((size_t)m * sizeof(float)), *z8 = malloc((size_t)m * sizeof(float));
    memcpy(H, H0, (size_t)(n * n) * sizeof(double));
    for (int i = 0; i < m * n; i++) W[i] = W0[i];
    /* the 8-bit grid: min-max over the original row, 0 inside the range */
    for (int r = 0; r < m; r++) {
        float lo = 0, hi = 0;
        for (int j = 0; j < n; j++) lo = fminf(lo, W0[r * n + j]), hi = fmaxf(hi, W0[r * n + j]);
        if (lo == 0 && hi == 0) lo = -1, hi = 1;
        s8[r] = f16r((hi - lo) / 255.0f);
        z8[r] = fminf(fmaxf(rintf(-lo / s8[r]), 0.0f), 255.0f);
    }
    double mean = 0;
    for (int j = 0; j < n; j++)
        if (H[j * n + j] == 0) {
            H[j * n + j] = 1;
            for (int r = 0; r < m; r++) W[r * n + j] = 0;
        }
    for (int j = 0; j < n; j++) mean += H[j * n + j] / n;
    for (int j = 0; j < n; j++) H[j * n + j] += damp * mean;
    literal_hinv(H, n, U);
    for (int r = 0; r < m; r++)
        for (int j = 0; j < n; j++) {
            const double w = W[r * n + j];
            sc[r * n + j] = srt[r * n + j] = hessian ? w * w / (U[j * n + j] * U[j * n + j]) : fabs(w);
        }
    qsort(srt, (size_t)(m * n), sizeof(double), cmp_d);
    const int kth = (int)floor((1.0 - f) * (double)(m * n) + 1e-9);
    for (int i = 0; i < m * n; i++) sal[i] = kth < m * n && sc[i] > srt[kth];
    for (int r = 0; r < m; r++) {
        double s = 0, a = 0;
        int nb = 0;
        for (int j = 0; j < n; j++)
            if (!sal[r * n + j]) s += W[r * n + j], nb++;
        const double cnt = row_stats ? n : nb;
        mu[r] = f16r((float)(s / cnt));
        for (int j = 0; j < n; j++) a += sal[r * n + j] ? (row_stats ? fabs(mu[r]) : 0) : fabs(W[r * n + j] - mu[r]);
        al[r] = f16r((float)(a / cnt));
    }
    for (int i = 0; i < n; i++)
        for (int r = 0; r < m; r++) {
            const double w = W[r * n + i];
            double q;
            if (sal[r * n + i]) {
                const double c = fmin(fmax(rint(w / s8[r]) + z8[r], 0), 255);
                q = (double)s8[r] * (c - z8[r]);
            } else {
                q = w - mu[r] >= 0 ? (double)mu[r] + al[r] : (double)mu[r] - al[r];
            }
            Q[r * n + i] = (float)q;
            const double e = (w - q) / U[i * n + i];
            for (int j = i + 1; j < n; j++) W[r * n + j] -= e * U[i * n + j];
        }
    free(H), free(U), free(W), free(sc), free(srt), free(mu), free(al), free(s8), free(z8);
}

/* A fixed small layer: W (m, n) with a few large entries, H from X (T, n)
 * whose input 3 is always 0 (a dead input). */
static void small_layer(int m, int n, float *W, wmat_qstats *st)
{
    wmat_rng g;
    wmat_rng_seed(&g, 2024);
    for (int i = 0; i < m * n; i++) W[i] = 0.05f * wmat_rng_normal(&g) * (i % 17 == 0 ? 4.0f : 1.0f);
    const int T = 4 * n;
    float *X = malloc((size_t)(T * n) * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int j = 0; j < n; j++) X[t * n + j] = j == 3 ? 0.0f : wmat_rng_normal(&g) * (1.0f + (float)(j % 5));
    TU_OK(wmat__qstats_init(st, n, 1));
    wmat__qstats_add(st, X, T);
    wmat__qstats_finish(st);
    free(X);
}

static void test_method_vs_literal(void **state)
{
    (void)state;
    const int m = 12, n = 40;
    float *W = malloc((size_t)(m * n) * sizeof(float)), *Q = malloc((size_t)(m * n) * sizeof(float));
    float *D = malloc((size_t)(m * n) * sizeof(float));
    uint8_t *sal = malloc((size_t)(m * n)), *got = malloc((size_t)(m * n));
    wmat_qstats st;
    small_layer(m, n, W, &st);
    float wmax = 0;
    for (int i = 0; i < m * n; i++) wmax = fmaxf(wmax, fabsf(W[i]));
    const struct {
        double f;
        int hessian, row_stats, block;
    } cases[] = {{0.1, 1, 0, 128}, {0.1, 0, 0, 16}, {0.25, 1, 1, 7}, {0.0, 1, 0, 128}, {0.05, 0, 1, 3}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        wmat_qparams p = wmat__qparams_default();
        p.salient = cases[c].f;
        p.salient_hessian = cases[c].hessian;
        p.mu_alpha_row = cases[c].row_stats;
        p.block = cases[c].block;
        p.n_threads = 2;
        wmat_qresult res;
        wmat_qmethod_info info;
        TU_OK(wmat__quant_pbllm(&res, W, m, n, &st, &p, &info));
        assert_non_null(res.obj);
        assert_null(res.codes);
        assert_non_null(strstr(info.scheme, "pbllm"));
        wmat_qresult_dequant(&res, D);
        literal_pbllm(W, m, n, st.H, cases[c].f, cases[c].hessian, cases[c].row_stats, 0.01, Q, sal);
        wmat_tensor T;
        wmat__tensor_init2(&T, WMAT_OBJ, m, n, res.obj);
        const int64_t ns = wmat__pbllm_salient(&T, got);
        for (int i = 0; i < m * n; i++)
            if (got[i] != sal[i]) fail_msg("case %zu: weight (%d, %d) salient %d in the method, %d in the literal", c, i / n, i % n, got[i], sal[i]);
        int64_t want_ns = 0;
        for (int i = 0; i < m * n; i++) want_ns += sal[i];
        assert_int_equal(ns, want_ns);
        /* float32 blocked loop vs float64 column loop: the same decisions, values within rounding */
        const double d = tu_max_abs_diff(D, Q, (size_t)(m * n), NULL);
        if (!(d <= 1e-4 * wmax)) fail_msg("case %zu: method %g from the literal algorithm (max |W| %g)", c, d, wmax);
        wmat_qresult_free(&res);
    }
    wmat__qstats_free(&st);
    free(W), free(Q), free(D), free(sal), free(got);
}

/* The mask follows the rule: salient = the f-fraction of the largest scores,
 * every salient score above every binarized one. */
static void test_mask_rule(void **state)
{
    (void)state;
    const int m = 24, n = 40, N = m * n;
    float *W = malloc((size_t)N * sizeof(float));
    uint8_t *got = malloc((size_t)N);
    wmat_qstats st;
    small_layer(m, n, W, &st);
    double *U = malloc((size_t)(n * n) * sizeof(double)), *H = malloc((size_t)(n * n) * sizeof(double));
    memcpy(H, st.H, (size_t)(n * n) * sizeof(double));
    double mean = 0;
    for (int j = 0; j < n; j++) {
        if (H[j * n + j] == 0) H[j * n + j] = 1;
        mean += H[j * n + j] / n;
    }
    for (int j = 0; j < n; j++) H[j * n + j] += 0.01 * mean;
    literal_hinv(H, n, U);
    for (int hessian = 0; hessian < 2; hessian++)
        for (double f = 0.0; f <= 0.5; f += 0.125) {
            wmat_qparams p = wmat__qparams_default();
            p.salient = f;
            p.salient_hessian = hessian;
            wmat_qresult res;
            TU_OK(wmat__quant_pbllm(&res, W, m, n, &st, &p, NULL));
            wmat_tensor T;
            wmat__tensor_init2(&T, WMAT_OBJ, m, n, res.obj);
            const int64_t ns = wmat__pbllm_salient(&T, got);
            /* distinct scores: N - floor((1 - f) N) - 1 above the threshold (none at f = 0) */
            const int64_t kth = (int64_t)floor((1.0 - f) * N), want = kth < N ? N - kth - 1 : 0;
            if (ns != want) fail_msg("f %g %s: %lld salient, want %lld", f, hessian ? "hessian" : "magnitude", (long long)ns, (long long)want);
            double min_sal = INFINITY, max_bin = -INFINITY;
            for (int r = 0; r < m; r++)
                for (int j = 0; j < n; j++) {
                    const double w = j == 3 ? 0.0 : W[r * n + j];
                    const double s = hessian ? w * w / (U[j * n + j] * U[j * n + j]) : fabs(w);
                    if (got[r * n + j]) min_sal = fmin(min_sal, s);
                    else max_bin = fmax(max_bin, s);
                }
            if (ns > 0 && !(min_sal > max_bin * (1 + 1e-5)))
                fail_msg("f %g: a salient score %g is not above a binarized one %g", f, min_sal, max_bin);
            wmat_qresult_free(&res);
        }
    /* the dead input never is salient by either rule */
    wmat__qstats_free(&st);
    free(W), free(got), free(U), free(H);
}

/* Error feedback helps: the calibration output error tr(dW H dW^T) of the
 * method is below binarizing with the same mask and no feedback (the
 * kind's from_f32 at the magnitude rule). */
static void test_feedback_helps(void **state)
{
    (void)state;
    const int m = 24, n = 40;
    float *W = malloc((size_t)(m * n) * sizeof(float)), *D = malloc((size_t)(m * n) * sizeof(float));
    wmat_qstats st;
    small_layer(m, n, W, &st);
    wmat_qparams p = wmat__qparams_default();
    p.salient_hessian = 0;
    wmat_qresult res;
    TU_OK(wmat__quant_pbllm(&res, W, m, n, &st, &p, NULL));
    wmat_qresult_dequant(&res, D);
    const double e_gptq = wmat__qoutput_error(W, D, m, n, st.H);
    wmat_tensor R;
    TU_OK(wmat__wkind_find("pbllm")->from_f32(W, m, n, &R));
    wmat__wkind_of(&R)->dequant_rows(&R, 0, m, D);
    const double e_rtn = wmat__qoutput_error(W, D, m, n, st.H);
    if (!(e_gptq < e_rtn)) fail_msg("PB-LLM in GPTQ %g, without feedback %g", e_gptq, e_rtn);
    wmat__tensor_free_data(&R);
    wmat_qresult_free(&res);
    wmat__qstats_free(&st);
    free(W), free(D);
}

/* stories260K through the driver: the packed pbllm model (in memory and
 * saved to the native directory, then loaded) computes the fake-quant
 * perplexity. */
static double eval_ppl(wmat_model *m, const int32_t *ids, size_t n)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 128;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, n, 128, 8, &r));
    wmat_runtime_free(rt);
    return r.ppl;
}

static void test_model_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    int32_t *tok;
    size_t nt;
    TU_OK(wmat_read_tokens_u16(cp, &tok, &nt));
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, mp, &lp));
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "pbllm";
    p.method_params = "salient=0.05";
    p.calib = tok;
    p.n_calib = 4 * 128;
    p.calib_ctx = 128;
    wmat_quantize_report rep;
    wmat_qresult *res;
    TU_OK(wmat__quantize_model(m, &p, &rep, &res));
    /* 5 layers x 7 matrices; bits per weight from the kind's bytes */
    assert_int_equal(rep.n_tensors, 35);
    assert_true(rep.bits_per_weight > 1.5 && rep.bits_per_weight < 3.0);
    const double fake = eval_ppl(m, tok + 65536, nt - 65536);
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (wmat_qresult_done(&res[i])) {
            TU_OK(wmat_model_set_quantized(m, wmat_model_tensor(m, i)->name, &res[i]));
            assert_string_equal(wmat_tensor_kind(wmat_model_tensor(m, i)), "pbllm");
        }
    const double packed = eval_ppl(m, tok + 65536, nt - 65536);
    const char *dir = tu_tmp("pbllm-native");
    TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_QUANT));
    wmat_model *m2 = NULL;
    lp = wmat_load_default_params();
    lp.keep_stored = 1;
    TU_OK(wmat_model_load(&m2, dir, &lp));
    const double loaded = eval_ppl(m2, tok + 65536, nt - 65536);
    print_message("stories260K pbllm 5%%: %.3f bpw, perplexity fake-quant %.5f, packed %.5f, loaded %.5f\n",
                  rep.bits_per_weight, fake, packed, loaded);
    /* the same weights through the kind's batched path instead of fp32 GEMMs */
    if (!(fabs(packed - fake) <= 1e-4 * fake)) fail_msg("packed %g, fake-quant %g", packed, fake);
    if (!(loaded == packed)) fail_msg("loaded %g, packed %g", loaded, packed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) wmat_qresult_free(&res[i]);
    wmat__free(res);
    wmat_quantize_report_free(&rep);
    wmat_model_free(m);
    wmat_model_free(m2);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel),           cmocka_unit_test(test_bpw),       cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_method_vs_literal), cmocka_unit_test(test_mask_rule), cmocka_unit_test(test_feedback_helps),
        cmocka_unit_test(test_model_roundtrip),
    };
    return tu_run_tests("pbllm", tests, NULL, NULL);
}
