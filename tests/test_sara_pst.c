/* SaRA and PST (src/train/adapter_sara.c, adapter_pst.c, the shared
 * sparse_update.c) beyond what tests/test_train_registry.c checks of every
 * adapter (backward against finite differences where it is exact, loss
 * falls, merged logits = base + adapter):
 *
 * - selection: wmat__su_select_smallest against a sort (ties: lower index)
 *   on keys with many ties, k = 0 .. n;
 * - SaRA's mask: init selects exactly the floor(density n) smallest |w|
 *   (ties to the lower index), in increasing order; theta is the largest
 *   of them; the update starts at 0;
 * - the nuclear norm: value and subgradient U V^T on a known matrix, the
 *   subgradient against central differences of the norm on a random one;
 *   SaRA's penalty adds lambda U V^T at the trained positions only;
 * - re-selection: at the half-way step the positions whose W + D grew above
 *   theta are frozen (no gradient, value put back after any later step),
 *   the others train on; not before that step, once only;
 * - merged = base + masked update: SaRA's merge is W + D at the positions
 *   (the layer's forward equals X (W + D)^T); PST's is M o (W + U V), with
 *   exactly floor(s n) pruned, every pruned score <= every kept one, and its
 *   forward equals X (M o W')^T;
 * - PST's gradients against a reference written from the straight-through
 *   rule (dS = G o W', dW' = G o M + dS o sign W'), dX against central
 *   differences; the cubic sparsity schedule at chosen steps;
 * - training on a tiny model: the loss falls; SaRA's merged matrices
 *   differ from the base only at their smallest-|w| positions; PST's
 *   merged matrices have at least floor((1 - density) n) zeros at the end;
 *   a run interrupted and resumed from its checkpoint (across SaRA's
 *   re-selection, inside PST's cubic phase) ends with the same checkpoint
 *   bytes. */
#include "train_util.h"
#include "train/adapter.h"
#include "train/sparse_update.h"
#include "train/train.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ selection */

static size_t *order_of(const float *key, size_t n)
{
    /* indices sorted by (key, index): insertion sort, n is small */
    size_t *o = malloc(n * sizeof *o);
    for (size_t i = 0; i < n; i++) o[i] = i;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            const size_t a = o[j - 1], b = o[j];
            if (key[a] > key[b] || (key[a] == key[b] && a > b)) {
                o[j - 1] = b;
                o[j] = a;
            } else
                break;
        }
    return o;
}

static void test_select(void **state)
{
    (void)state;
    enum { n = 157 };
    float key[n], tmp[n];
    unsigned char sel[n];
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    for (int i = 0; i < n; i++) key[i] = (float)(int)(wmat_rng_uniform(&r) * 9.0f) - 4.0f; /* 9 values: ties */
    size_t *o = order_of(key, n);
    for (size_t k = 0; k <= n; k++) {
        wmat__su_select_smallest(key, n, k, sel, tmp);
        for (size_t q = 0; q < n; q++)
            if (sel[o[q]] != (q < k)) fail_msg("k %zu: position %zu (rank %zu) selected %d", k, o[q], q, sel[o[q]]);
    }
    free(o);
    assert_int_equal(wmat__su_count(0.25, 10), 2);
    assert_int_equal(wmat__su_count(1.5, 10), 10);
    assert_int_equal(wmat__su_count(0, 10), 0);
}

/* ------------------------------------------------------------ SaRA */

/* r * in + c of position j of a layer's support */
static int32_t spos(const wmat__sara_layer *v, int out, int in, size_t j)
{
    int r = 0;
    while (r < out && (size_t)v->off[r + 1] <= j) r++;
    return r * in + v->col[j];
}

typedef struct {
    wmat__adapter_cfg c;
    int in, out;
    float *W, *w[1], *fixed;
    wmat_tensor base;
} sara_ctx;

static void sara_setup(sara_ctx *s, int out, int in, float density, int steps, uint64_t seed)
{
    const wmat__adapter *a = wmat__adapter_find("sara");
    assert_non_null(a);
    memset(s, 0, sizeof *s);
    s->c = (wmat__adapter_cfg){.rank = 1, .alpha = 1, .density = density, .nt = 1, .steps = steps};
    s->in = in;
    s->out = out;
    s->W = malloc((size_t)out * in * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < out * in; i++) s->W[i] = (float)(int)(wmat_rng_normal(&r) * 8.0f) / 16.0f; /* ties */
    wmat__tensor_init2(&s->base, WMAT_F32, out, in, s->W);
    TU_OK(a->check(&s->c, &s->base, in, out, "test"));
    int rows[1], cols[1];
    a->shapes(&s->c, in, out, rows, cols);
    assert_int_equal(rows[0], (int)floor(density * out * in));
    s->w[0] = calloc((size_t)rows[0], sizeof(float));
    s->fixed = calloc(a->fixed_bytes(&s->c, in, out), 1);
    TU_OK(a->init(&s->c, s->w, s->fixed, &s->base, s->W, in, out, &r));
}

static void sara_free(sara_ctx *s)
{
    free(s->W), free(s->w[0]), free(s->fixed);
}

static void test_sara_mask(void **state)
{
    (void)state;
    sara_ctx s;
    sara_setup(&s, 9, 13, 0.2f, 10, 5);
    const size_t n = 9 * 13;
    const wmat__sara_layer v = wmat__sara_view(s.fixed, &s.c, s.in, s.out);
    assert_int_equal(v.nnz, (size_t)floor(0.2 * n));
    float key[9 * 13];
    for (size_t i = 0; i < n; i++) key[i] = fabsf(s.W[i]);
    size_t *o = order_of(key, n);
    unsigned char want[9 * 13] = {0};
    for (size_t q = 0; q < v.nnz; q++) want[o[q]] = 1;
    float theta = 0;
    for (size_t j = 0; j < v.nnz; j++) {
        const int32_t pj = spos(&v, 9, 13, j);
        if (j) assert_true(pj > spos(&v, 9, 13, j - 1));
        assert_true(want[pj]);
        assert_true(v.wv[j] == s.W[pj]);
        assert_int_equal(v.on[j], 1);
        assert_true(s.w[0][j] == 0.0f);
        theta = fmaxf(theta, key[pj]);
    }
    assert_true(v.hdr[0] == theta);
    assert_true(key[o[v.nnz]] >= theta); /* the first one not selected */
    const wmat__adapter *a = wmat__adapter_find("sara");
    assert_int_equal(a->fixed_valid(&s.c, s.fixed, s.in, s.out), 1);
    v.off[9] += 1; /* offsets that do not end at nnz: refused */
    assert_int_equal(a->fixed_valid(&s.c, s.fixed, s.in, s.out), 0);
    v.off[9] -= 1;
    const int32_t c0 = v.col[0];
    v.col[0] = 13; /* a column out of range: refused */
    assert_int_equal(a->fixed_valid(&s.c, s.fixed, s.in, s.out), 0);
    v.col[0] = c0;
    free(o);
    sara_free(&s);
    /* out of range densities and a non-f32 base are refused */
    wmat__adapter_cfg c = {.rank = 1, .density = 0};
    float W[4] = {0};
    wmat_tensor b;
    wmat__tensor_init2(&b, WMAT_F32, 2, 2, W);
    assert_int_not_equal(a->check(&c, &b, 2, 2, "t"), WMAT_OK);
    c.density = 0.1f; /* selects nothing of 4 */
    assert_int_not_equal(a->check(&c, &b, 2, 2, "t"), WMAT_OK);
}

static void test_nuclear(void **state)
{
    (void)state;
    /* diag(3, -2, 1) in a 3 x 4: ||.||_* = 6, U V^T = diag(1, -1, 1) */
    float D[12] = {3, 0, 0, 0, 0, -2, 0, 0, 0, 0, 1, 0}, G[12];
    double norm;
    TU_OK(wmat__su_nuclear(D, 3, 4, G, &norm));
    assert_true(fabs(norm - 6.0) < 1e-5);
    const float want[12] = {1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0};
    for (int i = 0; i < 12; i++) assert_true(fabsf(G[i] - want[i]) < 1e-5f);
    /* zero: norm 0, subgradient 0 */
    float Z[6] = {0}, GZ[6];
    TU_OK(wmat__su_nuclear(Z, 2, 3, GZ, &norm));
    assert_true(norm == 0.0);
    for (int i = 0; i < 6; i++) assert_true(GZ[i] == 0.0f);
    /* central differences on a random 6 x 5 */
    enum { R = 6, C = 5 };
    float A[R * C], GA[R * C];
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    for (int i = 0; i < R * C; i++) A[i] = wmat_rng_normal(&r);
    TU_OK(wmat__su_nuclear(A, R, C, GA, &norm));
    double mx = 0;
    for (int i = 0; i < R * C; i++) {
        const float s0 = A[i], h = 1e-2f;
        double fp, fm;
        A[i] = s0 + h;
        TU_OK(wmat__su_nuclear(A, R, C, NULL, &fp));
        A[i] = s0 - h;
        TU_OK(wmat__su_nuclear(A, R, C, NULL, &fm));
        A[i] = s0;
        const double fd = (fp - fm) / (2.0 * h);
        mx = fmax(mx, fabs(fd - GA[i]));
    }
    print_message("nuclear norm subgradient vs central differences: max |diff| %.3g\n", mx);
    assert_true(mx < 2e-3);

    /* SaRA's penalty: lambda U V^T at the trained positions, nothing at frozen ones */
    sara_ctx s;
    sara_setup(&s, 7, 6, 0.5f, 10, 12);
    const wmat__sara_layer v = wmat__sara_view(s.fixed, &s.c, s.in, s.out);
    for (size_t j = 0; j < v.nnz; j++) s.w[0][j] = wmat_rng_normal(&r);
    v.on[2] = 0;
    v.on[5] = 0;
    float *g = calloc(v.nnz, sizeof(float));
    float *const gw[1] = {g};
    wmat__adapter_layer ly = {.cfg = &s.c, .w = s.w, .g = gw, .fixed = s.fixed, .in = s.in, .out = s.out};
    const double pen = wmat__sara_penalty(&s.c, &ly, g);
    float Dd[42] = {0}, Gd[42];
    for (size_t j = 0; j < v.nnz; j++)
        if (v.on[j]) Dd[spos(&v, 7, 6, j)] = s.w[0][j];
    TU_OK(wmat__su_nuclear(Dd, 7, 6, Gd, &norm));
    const float lambda = wmat__sara_lambda(&s.c);
    assert_true(fabsf(lambda - 5e-4f) < 1e-9f); /* SaRA README's lambda_rank */
    assert_true(fabs(pen - lambda * norm) < 1e-6 * (1 + norm));
    for (size_t j = 0; j < v.nnz; j++) {
        const float want_g = v.on[j] ? lambda * Gd[spos(&v, 7, 6, j)] : 0.0f;
        assert_true(fabsf(g[j] - want_g) < 1e-7f);
    }
    free(g);
    sara_free(&s);
}

static void test_sara_reselect(void **state)
{
    (void)state;
    const wmat__adapter *a = wmat__adapter_find("sara");
    sara_ctx s;
    sara_setup(&s, 8, 10, 0.3f, 10, 21); /* re-selection after step 5 of 10 */
    assert_int_equal(wmat__sara_reselect_step(&s.c), 5);
    const wmat__sara_layer v = wmat__sara_view(s.fixed, &s.c, s.in, s.out);
    const float theta = v.hdr[0];
    assert_true(theta > 0);
    float *d = s.w[0];
    /* every third position grows past theta; the others stay below */
    for (size_t j = 0; j < v.nnz; j++) d[j] = j % 3 == 0 ? 2.0f * theta + 0.5f : -v.wv[j] * 0.5f;
    float *g = calloc(v.nnz, sizeof(float));
    float *const gw[1] = {g};
    wmat__adapter_layer ly = {.cfg = &s.c, .w = s.w, .g = gw, .fixed = s.fixed, .in = s.in, .out = s.out};
    for (int step = 0; step < 4; step++) TU_OK(a->after_step(&s.c, &ly, 1, step, 10));
    for (size_t j = 0; j < v.nnz; j++) assert_int_equal(v.on[j], 1); /* not yet */
    TU_OK(a->after_step(&s.c, &ly, 1, 4, 10));                        /* the 5th step: re-selection */
    assert_true(v.hdr[2] == 1.0f);
    size_t frozen = 0;
    for (size_t j = 0; j < v.nnz; j++) {
        const int grown = fabsf(v.wv[j] + d[j]) > theta;
        assert_int_equal(v.on[j], !grown);
        assert_int_equal(grown, j % 3 == 0);
        if (!v.on[j]) assert_true(v.fv[j] == d[j]);
        frozen += !v.on[j];
    }
    assert_true(frozen == (v.nnz + 2) / 3);
    /* an optimizer step moves every value; after_step puts the frozen back */
    float keep[24];
    memcpy(keep, d, v.nnz * sizeof(float));
    for (size_t j = 0; j < v.nnz; j++) d[j] += 0.25f;
    TU_OK(a->after_step(&s.c, &ly, 1, 5, 10));
    for (size_t j = 0; j < v.nnz; j++) assert_true(d[j] == (v.on[j] ? keep[j] + 0.25f : keep[j]));
    /* once only: values shrinking back do not unfreeze, growing ones do not freeze */
    for (size_t j = 0; j < v.nnz; j++)
        if (v.on[j]) d[j] = 10.0f;
    TU_OK(a->after_step(&s.c, &ly, 1, 6, 10));
    assert_int_equal((size_t)0 + frozen, (size_t)(v.nnz + 2) / 3);
    for (size_t j = 0; j < v.nnz; j++) assert_int_equal(v.on[j], j % 3 != 0);
    /* frozen positions get no gradient; the trained ones their dot product */
    enum { BT = 3 };
    float X[BT * 10], dY[BT * 8];
    wmat_rng r;
    wmat_rng_seed(&r, 4);
    for (int i = 0; i < BT * 10; i++) X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * 8; i++) dY[i] = wmat_rng_normal(&r);
    float *ws = calloc(a->scratch_floats(&s.c, BT, 10, 8) + 1, sizeof(float));
    memset(g, 0, v.nnz * sizeof(float));
    float *const dw[1] = {g};
    a->backward(&s.c, NULL, dw, ws, dY, X, (const float *const *)s.w, s.fixed, &s.base, NULL, BT, 10, 8);
    for (size_t j = 0; j < v.nnz; j++) {
        double want = 0;
        const int32_t pj = spos(&v, 8, 10, j);
        for (int t = 0; t < BT; t++) want += (double)dY[t * 8 + pj / 10] * X[t * 10 + pj % 10];
        if (!v.on[j]) want = 0;
        assert_true(fabs(g[j] - want) < 1e-5);
    }
    free(ws);
    free(g);
    sara_free(&s);
}

/* The layer's forward (base product + adapter) against X W_merged^T. */
static void forward_vs_merge(const wmat__adapter *a, const wmat__adapter_cfg *c, float *const *w, const void *fixed,
                             const float *W, int in, int out, float *merged)
{
    enum { BT = 4 };
    float *X = malloc(sizeof(float) * BT * in), *Y = malloc(sizeof(float) * BT * out),
          *Y2 = malloc(sizeof(float) * BT * out);
    wmat_rng r;
    wmat_rng_seed(&r, 77);
    for (int i = 0; i < BT * in; i++) X[i] = wmat_rng_normal(&r);
    wmat_tensor base;
    wmat__tensor_init2(&base, WMAT_F32, out, in, (void *)W);
    float *ws = calloc(a->scratch_floats(c, BT, in, out) + 1, sizeof(float));
    float *act = calloc(a->act_floats(c, BT) + 1, sizeof(float));
    wmat__linear_forward(Y, X, W, BT, in, out);
    a->forward(c, Y, act, ws, X, (const float *const *)w, fixed, &base, BT, in, out);
    memcpy(merged, W, sizeof(float) * in * out);
    TU_OK(a->merge(c, merged, (const float *const *)w, fixed, in, out));
    wmat__linear_forward(Y2, X, merged, BT, in, out);
    for (int i = 0; i < BT * out; i++)
        if (!(fabsf(Y[i] - Y2[i]) <= 1e-5f * (1 + fabsf(Y2[i])))) fail_msg("%s: forward %.7g vs merged %.7g", a->name, Y[i], Y2[i]);
    free(X), free(Y), free(Y2), free(ws), free(act);
}

static void test_sara_merge(void **state)
{
    (void)state;
    const wmat__adapter *a = wmat__adapter_find("sara");
    sara_ctx s;
    sara_setup(&s, 11, 7, 0.25f, 10, 8);
    const wmat__sara_layer v = wmat__sara_view(s.fixed, &s.c, s.in, s.out);
    wmat_rng r;
    wmat_rng_seed(&r, 2);
    for (size_t j = 0; j < v.nnz; j++) s.w[0][j] = wmat_rng_normal(&r);
    float merged[77];
    forward_vs_merge(a, &s.c, s.w, s.fixed, s.W, 7, 11, merged);
    unsigned char at[77] = {0};
    for (size_t j = 0; j < v.nnz; j++) {
        const int32_t pj = spos(&v, 11, 7, j);
        at[pj] = 1;
        assert_true(merged[pj] == s.W[pj] + s.w[0][j]);
    }
    for (int i = 0; i < 77; i++)
        if (!at[i]) assert_true(merged[i] == s.W[i]);
    sara_free(&s);
}

/* ------------------------------------------------------------ PST */

typedef struct {
    wmat__adapter_cfg c;
    int in, out;
    float *W, *w[4], fixed[4];
    wmat_tensor base;
} pst_ctx;

static void pst_setup(pst_ctx *p, int out, int in, int rank, float density, float sparsity, uint64_t seed)
{
    const wmat__adapter *a = wmat__adapter_find("pst");
    assert_non_null(a);
    memset(p, 0, sizeof *p);
    p->c = (wmat__adapter_cfg){.rank = rank, .alpha = 1, .density = density, .nt = 1, .steps = 100};
    p->in = in;
    p->out = out;
    p->W = malloc((size_t)out * in * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < out * in; i++) p->W[i] = wmat_rng_normal(&r);
    wmat__tensor_init2(&p->base, WMAT_F32, out, in, p->W);
    TU_OK(a->check(&p->c, &p->base, in, out, "test"));
    int rows[4], cols[4];
    a->shapes(&p->c, in, out, rows, cols);
    for (int k = 0; k < 4; k++) p->w[k] = calloc(wmat__adapter_nelem(rows[k], cols[k]), sizeof(float));
    TU_OK(a->init(&p->c, p->w, p->fixed, &p->base, p->W, in, out, &r));
    assert_true(p->fixed[0] == 0.0f);
    /* V, B, R, C start at 0 (then the layer is W): move all of them */
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < wmat__adapter_nelem(rows[k], cols[k]); i++) p->w[k][i] += 0.3f * wmat_rng_normal(&r);
    p->fixed[0] = sparsity;
}

static void pst_free(pst_ctx *p)
{
    free(p->W);
    for (int k = 0; k < 4; k++) free(p->w[k]);
}

static void test_pst_mask(void **state)
{
    (void)state;
    const wmat__adapter *a = wmat__adapter_find("pst");
    pst_ctx p;
    enum { out = 8, in = 12, r = 2 };
    pst_setup(&p, out, in, r, 0.5f, 0.4f, 31);
    const size_t n = out * in, k = (size_t)floor(0.4 * n);
    float Wp[out * in], S[out * in], tmp[out * in];
    unsigned char pr[out * in];
    wmat__pst_dense(&p.c, (const float *const *)p.w, p.W, 0.4f, in, out, Wp, S, pr, tmp);
    /* S = |W + U V| + A B + R + C, computed here in double */
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double wp = p.W[o * in + i], ab = 0;
            for (int q = 0; q < r; q++) {
                wp += (double)p.w[0][o * 2 * r + q] * p.w[1][q * in + i];
                ab += (double)p.w[0][o * 2 * r + r + q] * p.w[1][(r + q) * in + i];
            }
            const double s = fabs(wp) + ab + p.w[2][o] + p.w[3][i];
            assert_true(fabs(Wp[o * in + i] - wp) < 1e-5 && fabs(S[o * in + i] - s) < 1e-5);
        }
    /* exactly k pruned: the k lowest scores, ties to the lower index */
    size_t *ord = order_of(S, n);
    for (size_t q = 0; q < n; q++) assert_int_equal(pr[ord[q]], q < k);
    free(ord);
    /* merge = M o W', and the layer's forward agrees with it */
    float merged[out * in];
    forward_vs_merge(a, &p.c, p.w, p.fixed, p.W, in, out, merged);
    size_t zeros = 0;
    for (size_t q = 0; q < n; q++) {
        assert_true(merged[q] == (pr[q] ? 0.0f : Wp[q]));
        zeros += merged[q] == 0.0f;
    }
    assert_true(zeros >= k);
    /* sparsity 0 (the warmup): nothing pruned, the layer is W + U V */
    wmat__pst_dense(&p.c, (const float *const *)p.w, p.W, 0.0f, in, out, Wp, S, pr, tmp);
    for (size_t q = 0; q < n; q++) assert_int_equal(pr[q], 0);
    pst_free(&p);
}

static void test_pst_grad(void **state)
{
    (void)state;
    const wmat__adapter *a = wmat__adapter_find("pst");
    pst_ctx p;
    enum { out = 6, in = 9, r = 2, BT = 5 };
    pst_setup(&p, out, in, r, 0.5f, 0.3f, 44);
    wmat_rng rr;
    wmat_rng_seed(&rr, 45);
    float X[BT * in], dY[BT * out], dX[BT * in] = {0};
    for (int i = 0; i < BT * in; i++) X[i] = wmat_rng_normal(&rr);
    for (int i = 0; i < BT * out; i++) dY[i] = wmat_rng_normal(&rr);
    float g0[out * 2 * r] = {0}, g1[2 * r * in] = {0}, g2[out] = {0}, g3[in] = {0};
    float *const dw[4] = {g0, g1, g2, g3};
    float *ws = calloc(a->scratch_floats(&p.c, BT, in, out) + 1, sizeof(float));
    a->backward(&p.c, dX, dw, ws, dY, X, (const float *const *)p.w, p.fixed, &p.base, NULL, BT, in, out);
    /* the reference: the mask from the entry's own selection (checked above) */
    float Wp[out * in], S[out * in], tmp[out * in];
    unsigned char pr[out * in];
    wmat__pst_dense(&p.c, (const float *const *)p.w, p.W, p.fixed[0], in, out, Wp, S, pr, tmp);
    double dS[out * in], dWp[out * in];
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double gg = 0;
            for (int t = 0; t < BT; t++) gg += (double)dY[t * out + o] * X[t * in + i];
            const int k = o * in + i;
            dS[k] = gg * Wp[k];
            dWp[k] = (pr[k] ? 0.0 : gg) + dS[k] * (Wp[k] > 0 ? 1.0 : Wp[k] < 0 ? -1.0 : 0.0);
        }
    const float *UA = p.w[0], *VB = p.w[1];
    for (int o = 0; o < out; o++)
        for (int q = 0; q < r; q++) {
            double du = 0, da = 0;
            for (int i = 0; i < in; i++) {
                du += dWp[o * in + i] * VB[q * in + i];
                da += dS[o * in + i] * VB[(r + q) * in + i];
            }
            assert_true(fabs(g0[o * 2 * r + q] - du) < 1e-4 * (1 + fabs(du)));
            assert_true(fabs(g0[o * 2 * r + r + q] - da) < 1e-4 * (1 + fabs(da)));
        }
    for (int q = 0; q < r; q++)
        for (int i = 0; i < in; i++) {
            double dv = 0, db = 0;
            for (int o = 0; o < out; o++) {
                dv += UA[o * 2 * r + q] * dWp[o * in + i];
                db += UA[o * 2 * r + r + q] * dS[o * in + i];
            }
            assert_true(fabs(g1[q * in + i] - dv) < 1e-4 * (1 + fabs(dv)));
            assert_true(fabs(g1[(r + q) * in + i] - db) < 1e-4 * (1 + fabs(db)));
        }
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += dS[o * in + i];
        assert_true(fabs(g2[o] - s) < 1e-4 * (1 + fabs(s)));
    }
    for (int i = 0; i < in; i++) {
        double s = 0;
        for (int o = 0; o < out; o++) s += dS[o * in + i];
        assert_true(fabs(g3[i] - s) < 1e-4 * (1 + fabs(s)));
    }
    /* dX: the mask does not depend on X, so central differences apply:
     * f = sum(dY o (X W^T + adapter(X))) */
    float Y[BT * out], act[1];
    float dXb[BT * in] = {0};
    wmat__linear_backward(dXb, NULL, dY, X, p.W, BT, in, out, 0); /* the base's part */
    for (int i = 0; i < BT * in; i++) {
        const float s0 = X[i], h = 1e-2f;
        double f[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            X[i] = s0 + (sgn ? -h : h);
            wmat__linear_forward(Y, X, p.W, BT, in, out);
            a->forward(&p.c, Y, act, ws, X, (const float *const *)p.w, p.fixed, &p.base, BT, in, out);
            f[sgn] = 0;
            for (int q = 0; q < BT * out; q++) f[sgn] += (double)dY[q] * Y[q];
        }
        X[i] = s0;
        const double fd = (f[0] - f[1]) / (2.0 * h);
        assert_true(fabs(dXb[i] + dX[i] - fd) < 2e-3 * (1 + fabs(fd)));
    }
    free(ws);
    pst_free(&p);
}

static void test_pst_schedule(void **state)
{
    (void)state;
    /* T = 100, final 0.5: 0 through t = 10, cubic to t = 70, then 0.5 */
    assert_true(wmat__pst_sparsity(0.5f, 0, 100) == 0.0f);
    assert_true(wmat__pst_sparsity(0.5f, 10, 100) == 0.0f);
    assert_true(fabsf(wmat__pst_sparsity(0.5f, 40, 100) - 0.5f * (1.0f - 0.125f)) < 1e-6f);
    assert_true(fabsf(wmat__pst_sparsity(0.5f, 70, 100) - 0.5f) < 1e-6f);
    assert_true(wmat__pst_sparsity(0.5f, 71, 100) == 0.5f);
    assert_true(wmat__pst_sparsity(0.5f, 100, 100) == 0.5f);
    for (int t = 1; t <= 100; t++) assert_true(wmat__pst_sparsity(0.5f, t, 100) >= wmat__pst_sparsity(0.5f, t - 1, 100));
    /* after_step sets the next step's sparsity in every layer */
    const wmat__adapter *a = wmat__adapter_find("pst");
    wmat__adapter_cfg c = {.rank = 2, .density = 0.5f, .steps = 100};
    float f0[4] = {0}, f1[4] = {0};
    wmat__adapter_layer ly[2] = {{.cfg = &c, .fixed = f0}, {.cfg = &c, .fixed = f1}};
    TU_OK(a->after_step(&c, ly, 2, 39, 100));
    assert_true(f0[0] == wmat__pst_sparsity(0.5f, 40, 100) && f1[0] == f0[0]);
}

/* ------------------------------------------------------------ training */

static wmat_train_params tparams(wmat_context *oc, const char *name)
{
    wmat_train_params p = tu_adapter_params(oc, name, 2);
    p.adapter_density = !strcmp(name, "sara") ? 0.2f : 0.6f;
    p.steps = 20;
    return p;
}

static void test_train(void **state)
{
    (void)state;
    const char *names[] = {"sara", "pst"};
    for (int e = 0; e < 2; e++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tu_tiny_model(7, 16, 24, 2);
        wmat_train_params p = tparams(&oc, names[e]);
        int32_t *d = tu_pattern_tokens(600);
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, d, 600));
        double first = 0, last = 0;
        for (int s = 0; s < p.steps; s++) {
            wmat_train_step_info info;
            TU_OK(wmat_trainer_step(t, &info));
            if (e == 0) assert_true(info.aux_loss >= 0 && info.aux_loss < info.loss);
            if (s == 0) first = info.loss - info.aux_loss;
            last = info.loss - info.aux_loss;
        }
        print_message("%s: loss %.4f -> %.4f\n", names[e], first, last);
        assert_true(last < first);
        wmat_model *mm;
        TU_OK(wmat_trainer_model(t, &mm));
        int adapted = 0;
        for (int i = 0; i < wmat_model_n_tensors(m); i++) {
            const wmat_tensor *ta = wmat_model_tensor(m, i), *tb = wmat_model_find(mm, ta->name);
            if (ta->ndim != 2 || ta->dtype != WMAT_F32) continue;
            const float *A = ta->data, *B = tb->data;
            const size_t n = (size_t)wmat_tensor_nelem(ta);
            size_t diff = 0, zeros = 0;
            for (size_t j = 0; j < n; j++) diff += A[j] != B[j], zeros += B[j] == 0.0f;
            if (!diff) continue;
            adapted++;
            if (e == 0) {
                /* only the floor(0.2 n) smallest |w| positions moved */
                float *key = malloc(n * sizeof(float));
                for (size_t j = 0; j < n; j++) key[j] = fabsf(A[j]);
                size_t *o = order_of(key, n);
                const size_t k = (size_t)floor(0.2 * n);
                unsigned char *ok = calloc(n, 1);
                for (size_t q = 0; q < k; q++) ok[o[q]] = 1;
                assert_true(diff <= k);
                for (size_t j = 0; j < n; j++)
                    if (A[j] != B[j] && !ok[j]) fail_msg("sara: %s[%zu] moved, not among the smallest |w|", ta->name, j);
                free(key), free(o), free(ok);
            } else {
                /* the final sparsity, 1 - 0.6 */
                if (zeros < (size_t)floor(0.4 * n)) fail_msg("pst: %s has %zu zeros of %zu", ta->name, zeros, n);
            }
        }
        assert_int_equal(adapted, 2 * 7);
        /* mm belongs to the trainer */
        wmat_trainer_free(t);
        wmat_model_free(m);
        free(d);
    }
}

static void test_resume(void **state)
{
    (void)state;
    const char *names[] = {"sara", "pst"};
    for (int e = 0; e < 2; e++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tu_tiny_model(11, 16, 24, 2);
        wmat_train_params p = tparams(&oc, names[e]);
        int32_t *d = tu_pattern_tokens(400);
        wmat_trainer *t, *u, *v;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, d, 400));
        for (int i = 0; i < p.steps; i++) TU_OK(wmat_trainer_step(t, NULL));
        TU_OK(wmat_trainer_create(&u, m, &p));
        TU_OK(wmat_trainer_set_data(u, d, 400));
        for (int i = 0; i < 7; i++) TU_OK(wmat_trainer_step(u, NULL)); /* before SaRA's re-selection (10) */
        char a[64], b[64], c[64];
        snprintf(a, sizeof a, "%s_resume.ckpt", names[e]);
        snprintf(b, sizeof b, "%s_full.ckpt", names[e]);
        snprintf(c, sizeof c, "%s_resumed.ckpt", names[e]);
        TU_OK(wmat_trainer_save_checkpoint(u, tu_tmp(a)));
        wmat_trainer_free(u);
        TU_OK(wmat_trainer_create(&v, m, &p));
        TU_OK(wmat_trainer_set_data(v, d, 400));
        TU_OK(wmat_trainer_load_checkpoint(v, tu_tmp(a)));
        for (int i = 7; i < p.steps; i++) TU_OK(wmat_trainer_step(v, NULL));
        TU_OK(wmat_trainer_save_checkpoint(t, tu_tmp(b)));
        TU_OK(wmat_trainer_save_checkpoint(v, tu_tmp(c)));
        size_t na, nb;
        unsigned char *fa = tu_slurp(tu_tmp(b), &na), *fb = tu_slurp(tu_tmp(c), &nb);
        assert_int_equal(na, nb);
        if (memcmp(fa, fb, na)) fail_msg("%s: the resumed run's checkpoint differs from the uninterrupted one's", names[e]);
        free(fa), free(fb);
        wmat_trainer_free(t);
        wmat_trainer_free(v);
        wmat_model_free(m);
        free(d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select),     cmocka_unit_test(test_sara_mask), cmocka_unit_test(test_nuclear),
        cmocka_unit_test(test_sara_reselect), cmocka_unit_test(test_sara_merge), cmocka_unit_test(test_pst_mask),
        cmocka_unit_test(test_pst_grad),   cmocka_unit_test(test_pst_schedule), cmocka_unit_test(test_train),
        cmocka_unit_test(test_resume),
    };
    return tu_run_tests("sara_pst", tests, NULL, NULL);
}
