/* Monarch matrices (src/wop/kind_monarch.c, src/decomp/monarch.c) held to
 * their definition W[p Q + j, r S + s] = sum_u w2[j, p, r, u] w1[r, j, u, s]:
 *   - every path of the kind (batched forward and backward, one-row,
 *     dequantize) on general blocks (P, S, R, Q all > 1, slab rank 1..3)
 *     equals the product with the matrix built from that formula here;
 *   - projecting an exact Monarch matrix gives it back (error ~0);
 *   - on random matrices the projection is the best Monarch approximation:
 *     at slab rank 1, alternating least squares from many random starts
 *     over the full parameterization (a brute-force search) finds nothing
 *     better; at rank 2, no random perturbation of the factors improves it;
 *     the reported error is the actual distance;
 *   - blocks that do not divide the shape are refused with a message. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decomp/monarch.h"

static void fill(float *x, size_t n, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = wmat_rng_normal(&r);
}

/* W from factors by the formula of the header comment. */
static void build(const float *w1, const float *w2, int64_t m, int64_t n, int64_t R, int64_t Q, int64_t K, float *W)
{
    const int64_t P = m / Q, S = n / R;
    memset(W, 0, sizeof(float) * (size_t)(m * n));
    for (int64_t j = 0; j < Q; j++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t r = 0; r < R; r++)
                for (int64_t u = 0; u < K; u++)
                    for (int64_t s = 0; s < S; s++)
                        W[(p * Q + j) * n + r * S + s] += w2[((j * P + p) * R + r) * K + u] * w1[((r * Q + j) * K + u) * S + s];
}

static void test_paths_general(void **state)
{
    (void)state;
    static const int64_t shapes[][5] = {{24, 36, 3, 4, 1}, {64, 48, 4, 8, 2}, {30, 30, 5, 3, 3}, {16, 40, 8, 2, 1}};
    for (int c = 0; c < 4; c++) {
        const int64_t m = shapes[c][0], n = shapes[c][1], R = shapes[c][2], Q = shapes[c][3], K = shapes[c][4];
        float *w1 = malloc(sizeof(float) * (size_t)(K * Q * n)), *w2 = malloc(sizeof(float) * (size_t)(K * R * m));
        float *Wd = malloc(sizeof(float) * (size_t)(m * n)), *D = malloc(sizeof(float) * (size_t)(m * n));
        fill(w1, (size_t)(K * Q * n), 3 + c), fill(w2, (size_t)(K * R * m), 5 + c);
        build(w1, w2, m, n, R, Q, K, Wd);
        void *obj = NULL;
        TU_OK(wmat__monarch_create(m, n, R, Q, K, w1, w2, &obj));
        wmat_tensor W;
        wmat__tensor_own_obj(&W, m, n, obj);
        assert_string_equal(wmat__wkind_of(&W)->name, "monarch");
        const wmat_wkind *k = wmat__wkind_of(&W);
        k->dequant_rows(&W, 0, m, D);
        TU_ASSERT_CLOSE(D, Wd, (size_t)(m * n), 0, 1e-6);
        assert_int_equal(k->nbytes(&W), (uint64_t)(K * (Q * n + R * m)) * 4);

        const int T = 5;
        float *X = malloc(sizeof(float) * (size_t)(T * n)), *Y = malloc(sizeof(float) * (size_t)(T * m));
        float *Yr = malloc(sizeof(float) * (size_t)(T * m)), *dX = malloc(sizeof(float) * (size_t)(T * n));
        float *dXr = malloc(sizeof(float) * (size_t)(T * n));
        fill(X, (size_t)(T * n), 7);
        for (int t = 0; t < T; t++) {
            for (int64_t i = 0; i < m; i++) {
                double s = 0;
                for (int64_t q = 0; q < n; q++) s += (double)X[t * n + q] * Wd[i * n + q];
                Yr[t * m + i] = (float)s;
            }
            for (int64_t q = 0; q < n; q++) {
                double s = 0;
                for (int64_t i = 0; i < m; i++) s += (double)Yr[t * m + i] * Wd[i * n + q];
                dXr[t * n + q] = (float)s;
            }
        }
        for (int nt = 1; nt <= 2; nt++) {
            wmat_wexec ex = wmat__wexec_from(NULL);
            ex.n_threads = nt;
            TU_OK(wmat__wop_forward(&W, X, Y, T, 0, &ex));
            TU_ASSERT_CLOSE(Y, Yr, (size_t)(T * m), 1e-4, 1e-4);
            TU_OK(wmat__wop_backward(&W, Yr, dX, T, 0, &ex));
            TU_ASSERT_CLOSE(dX, dXr, (size_t)(T * n), 1e-3, 1e-4);
            for (int t = 0; t < T; t++) {
                TU_OK(wmat__wop_matvec(&W, X + t * n, Y, 0, &ex));
                TU_ASSERT_CLOSE(Y, Yr + t * m, (size_t)m, 1e-4, 1e-4);
            }
        }
        wmat__tensor_free_data(&W);
        free(w1), free(w2), free(Wd), free(D), free(X), free(Y), free(Yr), free(dX), free(dXr);
    }
}

static void test_project_exact(void **state)
{
    (void)state;
    const int64_t m = 64, n = 48, R = 4, Q = 8;
    for (int64_t K = 1; K <= 3; K++) {
        float *w1 = malloc(sizeof(float) * (size_t)(K * Q * n)), *w2 = malloc(sizeof(float) * (size_t)(K * R * m));
        float *W = malloc(sizeof(float) * (size_t)(m * n)), *D = malloc(sizeof(float) * (size_t)(m * n));
        fill(w1, (size_t)(K * Q * n), 11), fill(w2, (size_t)(K * R * m), 12);
        build(w1, w2, m, n, R, Q, K, W);
        wmat_tensor M;
        double err = -1;
        TU_OK(wmat__monarch_project(W, m, n, R, Q, K, &M, &err));
        wmat__wkind_of(&M)->dequant_rows(&M, 0, m, D);
        TU_ASSERT_BELOW(tu_rel_frob(D, W, (size_t)(m * n)), 1e-6);
        TU_ASSERT_BELOW(err, 1e-6);
        wmat__tensor_free_data(&M);
        /* one rank less, or other blocks: no longer exact */
        if (K > 1) {
            TU_OK(wmat__monarch_project(W, m, n, R, Q, K - 1, &M, &err));
            assert_true(err > 0.05);
            wmat__tensor_free_data(&M);
        }
        TU_OK(wmat__monarch_project(W, m, n, 2, 4, K, &M, &err));
        assert_true(err > 0.05);
        wmat__tensor_free_data(&M);
        free(w1), free(w2), free(W), free(D);
    }
}

/* Alternating least squares over (w1, w2) from a random start: each half
 * step is the exact minimiser given the other factor. */
static double als_best(const float *W, int64_t m, int64_t n, int64_t R, int64_t Q, uint64_t seed, int iters)
{
    const int64_t P = m / Q, S = n / R;
    double *a = malloc(sizeof(double) * (size_t)(Q * n)), *b = malloc(sizeof(double) * (size_t)(R * m));
    wmat_rng rg;
    wmat_rng_seed(&rg, seed);
    for (int64_t i = 0; i < Q * n; i++) a[i] = wmat_rng_normal(&rg);
    for (int64_t i = 0; i < R * m; i++) b[i] = wmat_rng_normal(&rg);
#define WV(p, j, r, s) ((double)W[((p) * Q + (j)) * n + (r) * S + (s)])
    for (int it = 0; it < iters; it++)
        for (int64_t j = 0; j < Q; j++)
            for (int64_t r = 0; r < R; r++) {
                double *v = a + (r * Q + j) * S;
                double nv = 0;
                for (int64_t s = 0; s < S; s++) nv += v[s] * v[s];
                for (int64_t p = 0; p < P; p++) {
                    double t = 0;
                    for (int64_t s = 0; s < S; s++) t += WV(p, j, r, s) * v[s];
                    b[(j * P + p) * R + r] = nv > 0 ? t / nv : 0;
                }
                double nu = 0;
                for (int64_t p = 0; p < P; p++) nu += b[(j * P + p) * R + r] * b[(j * P + p) * R + r];
                for (int64_t s = 0; s < S; s++) {
                    double t = 0;
                    for (int64_t p = 0; p < P; p++) t += WV(p, j, r, s) * b[(j * P + p) * R + r];
                    v[s] = nu > 0 ? t / nu : 0;
                }
            }
    double d = 0, tot = 0;
    for (int64_t j = 0; j < Q; j++)
        for (int64_t p = 0; p < P; p++)
            for (int64_t r = 0; r < R; r++)
                for (int64_t s = 0; s < S; s++) {
                    const double e = WV(p, j, r, s) - b[(j * P + p) * R + r] * a[(r * Q + j) * S + s];
                    d += e * e;
                    tot += WV(p, j, r, s) * WV(p, j, r, s);
                }
#undef WV
    free(a), free(b);
    return sqrt(d / tot);
}

static void test_project_optimal(void **state)
{
    (void)state;
    static const int64_t cases[][4] = {{4, 4, 2, 2}, {6, 8, 2, 3}, {12, 12, 3, 2}};
    for (int c = 0; c < 3; c++) {
        const int64_t m = cases[c][0], n = cases[c][1], R = cases[c][2], Q = cases[c][3];
        float *W = malloc(sizeof(float) * (size_t)(m * n)), *D = malloc(sizeof(float) * (size_t)(m * n));
        fill(W, (size_t)(m * n), 40 + c);
        wmat_tensor M;
        double err = -1;
        TU_OK(wmat__monarch_project(W, m, n, R, Q, 1, &M, &err));
        wmat__wkind_of(&M)->dequant_rows(&M, 0, m, D);
        TU_ASSERT_NEAR(err, tu_rel_frob(D, W, (size_t)(m * n)), 1e-6);
        double best = INFINITY;
        for (int s = 0; s < 20; s++) {
            const double e = als_best(W, m, n, R, Q, 100 + (uint64_t)s, 300);
            if (e < best) best = e;
        }
        if (!(err <= best + 1e-6)) fail_msg("case %d: projection %.9f, a search found %.9f", c, err, best);
        if (!(best <= err + 1e-5)) fail_msg("case %d: the search never reached the projection's %.9f (best %.9f)", c, err, best);
        wmat__tensor_free_data(&M);
        free(W), free(D);
    }
}

/* Slab rank 2: the projection's factors are a local minimum that no random
 * perturbation of w1 and w2 (relative size 1e-3 and 1e-2) improves. */
static void test_project_rank2_local(void **state)
{
    (void)state;
    const int64_t m = 12, n = 16, R = 2, Q = 3, K = 2;
    float *W = malloc(sizeof(float) * 192), *D = malloc(sizeof(float) * 192);
    fill(W, 192, 77);
    wmat_tensor M;
    double err;
    TU_OK(wmat__monarch_project(W, m, n, R, Q, K, &M, &err));
    const wmat_wkind *k = wmat__wkind_of(&M);
    k->dequant_rows(&M, 0, m, D);
    const double e0 = tu_rel_frob(D, W, 192);
    TU_ASSERT_NEAR(err, e0, 1e-6);
    /* the factors back from a save: the kind's own parts */
    cJSON *desc = cJSON_CreateObject();
    wmat_wpart parts[WMAT_WPART_MAX];
    int np = 0;
    TU_OK(k->save(&M, desc, parts, &np, "test"));
    assert_int_equal(np, 2);
    const size_t n1 = (size_t)(parts[0].shape[0] * parts[0].shape[1]), n2 = (size_t)(parts[1].shape[0] * parts[1].shape[1]);
    float *w1 = malloc(n1 * sizeof(float)), *w2 = malloc(n2 * sizeof(float));
    float *p1 = malloc(n1 * sizeof(float)), *p2 = malloc(n2 * sizeof(float)), *Wp = malloc(sizeof(float) * 192);
    memcpy(w1, parts[0].data, n1 * sizeof(float));
    memcpy(w2, parts[1].data, n2 * sizeof(float));
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (int trial = 0; trial < 400; trial++) {
        const float eps = trial % 2 ? 1e-2f : 1e-3f;
        for (size_t i = 0; i < n1; i++) p1[i] = w1[i] * (1 + eps * wmat_rng_normal(&r));
        for (size_t i = 0; i < n2; i++) p2[i] = w2[i] * (1 + eps * wmat_rng_normal(&r));
        build(p1, p2, m, n, R, Q, K, Wp);
        const double e = tu_rel_frob(Wp, W, 192);
        if (!(e >= e0 - 1e-7)) fail_msg("trial %d: a perturbation reached %.9f below the projection's %.9f", trial, e, e0);
    }
    cJSON_Delete(desc);
    wmat__tensor_free_data(&M);
    free(W), free(D), free(w1), free(w2), free(p1), free(p2), free(Wp);
}

static void test_bad_blocks(void **state)
{
    (void)state;
    float W[12 * 10] = {0};
    wmat_tensor M;
    double err;
    assert_int_equal(wmat__monarch_project(W, 12, 10, 3, 4, 1, &M, &err), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "do not divide"));
    assert_int_equal(wmat__monarch_project(W, 12, 10, 2, 5, 1, &M, &err), WMAT_ERR_INVALID);
    assert_int_equal(wmat__monarch_project(W, 12, 10, 0, 4, 1, &M, &err), WMAT_ERR_INVALID);
    assert_int_equal(wmat__monarch_project(W, 12, 10, 2, 4, 4, &M, &err), WMAT_ERR_INVALID); /* blocks 3 x 5: rank <= 3 */
    assert_non_null(strstr(wmat_last_error(), "slab rank"));
    void *obj = NULL;
    assert_int_equal(wmat__monarch_create(12, 10, 20, 4, 1, W, W, &obj), WMAT_ERR_INVALID);
    assert_null(obj);
}

/* The method through the driver on stories260K: at full slab rank the
 * Monarch model gives the fp32 model's logits (within 1e-4 of the largest);
 * at share 0.5 every matrix stores at most half its weights. */
static void test_driver_stories(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m = NULL, *ref = NULL;
    TU_OK(wmat_model_load(&ref, path, &lp));
    const wmat_config *c = wmat_model_config(ref);
    const int T = 16, V = c->vocab_size;
    float *l0 = malloc(sizeof(float) * (size_t)(T * V)), *l1 = malloc(sizeof(float) * (size_t)(T * V));
    int32_t ids[16];
    for (int t = 0; t < T; t++) ids[t] = (t * 37 + 3) % V;
    for (int pass = 0; pass < 2; pass++) {
        TU_OK(wmat_model_load(&m, path, &lp));
        wmat_decompose_params p = wmat_decompose_default_params();
        p.method = "monarch";
        p.method_params = pass == 0 ? "blocks=4,slab_rank=100000" : "blocks=4,share=0.5";
        wmat_decompose_report rep;
        TU_OK(wmat_decompose_model(m, &p, &rep));
        assert_int_equal(rep.n_tensors, c->n_layers * WMAT_LIN_COUNT);
        for (int i = 0; i < rep.n_tensors; i++) {
            if (pass == 0) TU_ASSERT_BELOW(rep.tensors[i].rel_error, 1e-6);
            else TU_ASSERT_BELOW(rep.tensors[i].bits_per_weight, 16.0 + 1e-9);
        }
        assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "monarch");
        if (pass == 0) {
            wmat_runtime_params rp = wmat_runtime_default_params();
            rp.max_batch_tokens = T;
            wmat_runtime *rt;
            TU_OK(wmat_runtime_create(&rt, ref, &rp));
            TU_OK(wmat_forward(rt, ids, T, l0));
            wmat_runtime_free(rt);
            TU_OK(wmat_runtime_create(&rt, m, &rp));
            TU_OK(wmat_forward(rt, ids, T, l1));
            wmat_runtime_free(rt);
            double mx = 0;
            for (int i = 0; i < T * V; i++) mx = fabs(l0[i]) > mx ? fabs(l0[i]) : mx;
            TU_ASSERT_CLOSE(l1, l0, (size_t)(T * V), 1e-4 * mx, 0);
        }
        wmat_decompose_report_free(&rep);
        wmat_model_free(m);
    }
    /* blocks that do not divide a dimension: refused, naming it */
    TU_OK(wmat_model_load(&m, path, &lp));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "monarch";
    p.method_params = "blocks=5";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "does not divide"));
    wmat_model_free(m);
    wmat_model_free(ref);
    free(l0), free(l1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_paths_general),
        cmocka_unit_test(test_project_exact),
        cmocka_unit_test(test_project_optimal),
        cmocka_unit_test(test_project_rank2_local),
        cmocka_unit_test(test_bad_blocks),
        cmocka_unit_test(test_driver_stories),
    };
    return tu_run_tests("monarch", tests, NULL, NULL);
}
