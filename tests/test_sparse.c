/* Pruning (src/decomp/prune.c) and the sparse weight kinds (nm, sparse):
 *   - a pruned matrix is zero exactly where its mask says, the N:M pattern
 *     holds in every group and the unstructured counts are exact;
 *   - SparseGPT's blockwise, lazily updated Cholesky form equals a literal
 *     OBS implementation (one weight at a time, the full inverse Hessian
 *     downdated after every column) on a fixed H within 1e-5;
 *   - Wanda equals magnitude when every input has the same norm;
 *   - the kinds' products (batched, one-row on each ISA) equal the dense
 *     product of the masked matrix. */
#include "test_util.h"

#include "decomp/prune.h"
#include "wop/kern_dense.h"
#include "wop/kern_sparse.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, uint64_t seed, float scale)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) x[i] = scale * wmat_rng_normal(&r);
}

/* H = 2/N X^T X of N correlated inputs (X = Z A), so OBS updates are far from trivial. */
static double *make_hessian(int64_t n, int N, uint64_t seed)
{
    float *Z = malloc((size_t)N * (size_t)n * sizeof(float)), *A = malloc((size_t)(n * n) * sizeof(float));
    fill(Z, (size_t)N * (size_t)n, seed, 1.0f);
    fill(A, (size_t)(n * n), seed + 1, 0.3f);
    for (int64_t i = 0; i < n; i++) A[i * n + i] += 1.0f;
    double *X = calloc((size_t)N * (size_t)n, sizeof(double)), *H = calloc((size_t)(n * n), sizeof(double));
    for (int t = 0; t < N; t++)
        for (int64_t k = 0; k < n; k++)
            for (int64_t j = 0; j < n; j++) X[t * n + j] += (double)Z[t * n + k] * A[k * n + j];
    for (int t = 0; t < N; t++)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < n; j++) H[i * n + j] += 2.0 / N * X[t * n + i] * X[t * n + j];
    free(Z), free(A), free(X);
    return H;
}

/* ---- the literal implementation: OBS one weight at a time */

/* In-place inverse of a symmetric positive definite A (n, n) by Gauss-Jordan. */
static void invert(double *A, int64_t n)
{
    double *M = calloc((size_t)(n * 2 * n), sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        for (int64_t j = 0; j < n; j++) M[i * 2 * n + j] = A[i * n + j];
        M[i * 2 * n + n + i] = 1.0;
    }
    for (int64_t c = 0; c < n; c++) {
        const double piv = M[c * 2 * n + c];
        for (int64_t j = 0; j < 2 * n; j++) M[c * 2 * n + j] /= piv;
        for (int64_t i = 0; i < n; i++) {
            if (i == c) continue;
            const double f = M[i * 2 * n + c];
            for (int64_t j = 0; j < 2 * n; j++) M[i * 2 * n + j] -= f * M[c * 2 * n + j];
        }
    }
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) A[i * n + j] = M[i * 2 * n + n + j];
    free(M);
}

/* Remove column/row i from the inverse of the remaining inputs (i+1..n-1 stay). */
static void downdate(double *Hi, int64_t n, int64_t i)
{
    const double d = Hi[i * n + i];
    for (int64_t a = i + 1; a < n; a++)
        for (int64_t b = i + 1; b < n; b++) Hi[a * n + b] -= Hi[a * n + i] * Hi[i * n + b] / d;
}

static void literal_sparsegpt(double *W, int64_t rows, int64_t n, const double *H, double damp, double sparsity, int nn,
                              int mm, int B, uint8_t *mask)
{
    double *Hi = malloc((size_t)(n * n) * sizeof(double)), *d = malloc((size_t)n * sizeof(double));
    double mean = 0;
    for (int64_t j = 0; j < n; j++) mean += H[j * n + j] / (double)n;
    memcpy(Hi, H, (size_t)(n * n) * sizeof(double));
    for (int64_t j = 0; j < n; j++) Hi[j * n + j] += damp * mean;
    invert(Hi, n);
    double *H0 = malloc((size_t)(n * n) * sizeof(double));
    memcpy(H0, Hi, (size_t)(n * n) * sizeof(double));
    /* the diagonal each column will have when its turn comes (independent of W) */
    for (int64_t j = 0; j < n; j++) {
        d[j] = Hi[j * n + j];
        downdate(Hi, n, j);
    }
    memcpy(Hi, H0, (size_t)(n * n) * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        if (nn == 0 && i % B == 0) {
            const int64_t cnt = i + B < n ? B : n - i, tot = rows * cnt;
            const int64_t k = (int64_t)floor(sparsity * (double)tot);
            double *sc = malloc((size_t)tot * sizeof(double));
            for (int64_t r = 0; r < rows; r++)
                for (int64_t j = 0; j < cnt; j++) {
                    sc[r * cnt + j] = W[r * n + i + j] * W[r * n + i + j] / d[i + j];
                    mask[r * n + i + j] = 1;
                }
            for (int64_t t = 0; t < k; t++) { /* the smallest not yet pruned, lowest index on ties */
                int64_t best = -1;
                for (int64_t e = 0; e < tot; e++)
                    if (mask[(e / cnt) * n + i + e % cnt] && (best < 0 || sc[e] < sc[best])) best = e;
                mask[(best / cnt) * n + i + best % cnt] = 0;
            }
            free(sc);
        }
        if (nn > 0 && i % mm == 0)
            for (int64_t r = 0; r < rows; r++) {
                uint8_t *mk = mask + r * n;
                memset(mk + i, 0, (size_t)mm);
                for (int t = 0; t < nn; t++) {
                    int64_t best = -1;
                    for (int64_t j = i; j < i + mm; j++)
                        if (!mk[j] && (best < 0 || W[r * n + j] * W[r * n + j] / d[j] > W[r * n + best] * W[r * n + best] / d[best]))
                            best = j;
                    mk[best] = 1;
                }
            }
        for (int64_t r = 0; r < rows; r++)
            if (!mask[r * n + i]) { /* OBS: dw = -w_i / [H^-1]_ii [H^-1]_i, over the inputs not yet fixed */
                const double c = W[r * n + i] / Hi[i * n + i];
                for (int64_t j = i + 1; j < n; j++) W[r * n + j] -= c * Hi[i * n + j];
                W[r * n + i] = 0.0;
            }
        downdate(Hi, n, i);
    }
    free(Hi), free(d), free(H0);
}

static void check_literal(double sparsity, int nn, int mm, int block)
{
    const int64_t rows = 12, n = 48;
    double *H = make_hessian(n, 400, 77);
    float *W = malloc((size_t)(rows * n) * sizeof(float));
    fill(W, (size_t)(rows * n), 5, 1.0f);
    double *Wl = malloc((size_t)(rows * n) * sizeof(double));
    for (int64_t i = 0; i < rows * n; i++) Wl[i] = W[i];
    uint8_t *mask = malloc((size_t)(rows * n)), *maskl = malloc((size_t)(rows * n));
    wmat_prune_params p = {sparsity, nn, mm, block, 0.01, 1};
    double damp = 0;
    TU_OK(wmat__prune_sparsegpt(W, rows, n, H, &p, mask, &damp));
    assert_true(damp == 0.01);
    literal_sparsegpt(Wl, rows, n, H, 0.01, sparsity, nn, mm, block, maskl);
    assert_memory_equal(mask, maskl, (size_t)(rows * n));
    double wmax = 0, dmax = 0, moved = 0;
    for (int64_t i = 0; i < rows * n; i++) {
        if (fabs(Wl[i]) > wmax) wmax = fabs(Wl[i]);
        const double df = fabs((double)W[i] - Wl[i]);
        if (!(df <= dmax)) dmax = isnan(df) ? INFINITY : df;
    }
    /* the updates are not trivial: kept weights moved from the original */
    float *W0 = malloc((size_t)(rows * n) * sizeof(float));
    fill(W0, (size_t)(rows * n), 5, 1.0f);
    for (int64_t i = 0; i < rows * n; i++)
        if (mask[i] && fabs(W0[i] - W[i]) > moved) moved = fabs(W0[i] - W[i]);
    print_message("  sparsegpt %s s=%.2f %d:%d block %d: max |blockwise - literal| %.3g (max |W| %.3g, kept weights moved up to %.3g)\n",
                  nn ? "N:M" : "unstructured", sparsity, nn, mm, block, dmax, wmax, moved);
    if (!(dmax <= 1e-5 * wmax)) fail_msg("SparseGPT differs from the literal OBS by %g (max |W| %g)", dmax, wmax);
    assert_true(moved > 0.05);
    free(H), free(W), free(Wl), free(mask), free(maskl), free(W0);
}

static void test_sparsegpt_equals_literal_obs(void **state)
{
    (void)state;
    check_literal(0.5, 0, 0, 16);  /* three blocks: the lazy GEMM update between them */
    check_literal(0.5, 0, 0, 128); /* one block */
    check_literal(0.3, 0, 0, 16);
    check_literal(0, 2, 4, 16);
    check_literal(0, 4, 8, 16);
    check_literal(0, 1, 4, 8);
}

/* Masks: zeros exactly where the mask says, N:M in every group, exact counts. */
static void check_pattern(const float *W, const uint8_t *mask, int64_t rows, int64_t cols, const wmat_prune_params *p,
                          int per_row, int kept_nonzero)
{
    for (int64_t i = 0; i < rows * cols; i++) {
        assert_true(mask[i] == 0 || mask[i] == 1);
        if (mask[i] ? kept_nonzero && W[i] == 0.0f : W[i] != 0.0f)
            fail_msg("element %lld: mask %d, weight %g", (long long)i, mask[i], (double)W[i]);
    }
    if (p->n > 0) {
        for (int64_t g = 0; g < rows * cols; g += p->m) {
            int k = 0;
            for (int j = 0; j < p->m; j++) k += mask[g + j];
            if (k != p->n) fail_msg("group at %lld keeps %d, not %d", (long long)g, k, p->n);
        }
    } else if (per_row) {
        for (int64_t r = 0; r < rows; r++) {
            int64_t k = 0;
            for (int64_t c = 0; c < cols; c++) k += !mask[r * cols + c];
            assert_int_equal(k, (int64_t)floor(p->sparsity * (double)cols));
        }
    } else {
        int64_t k = 0;
        for (int64_t i = 0; i < rows * cols; i++) k += !mask[i];
        const int64_t B = p->block > 0 ? p->block : 128, nb = (cols + B - 1) / B;
        int64_t want = 0;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t cnt = cols - b * B < B ? cols - b * B : B;
            want += (int64_t)floor(p->sparsity * (double)(rows * cnt));
        }
        assert_int_equal(k, want);
    }
}

static void test_masks(void **state)
{
    (void)state;
    const int64_t rows = 40, cols = 96;
    double *H = make_hessian(cols, 300, 3);
    double *x2 = malloc((size_t)cols * sizeof(double));
    for (int64_t j = 0; j < cols; j++) x2[j] = H[j * cols + j] / 2;
    const wmat_prune_params ps[] = {{0.5, 0, 0, 0, 0, 2}, {0.7, 0, 0, 32, 0, 2}, {0, 2, 4, 0, 0, 2}, {0, 4, 8, 0, 0, 1}, {0, 1, 4, 0, 0, 1}};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        for (int meth = 0; meth < 3; meth++) {
            float *W = malloc((size_t)(rows * cols) * sizeof(float));
            uint8_t *mask = malloc((size_t)(rows * cols));
            fill(W, (size_t)(rows * cols), 100 + k, 1.0f);
            if (meth == 0) TU_OK(wmat__prune_magnitude(W, rows, cols, &ps[k], mask));
            else if (meth == 1) TU_OK(wmat__prune_wanda(W, rows, cols, x2, &ps[k], mask));
            else TU_OK(wmat__prune_sparsegpt(W, rows, cols, H, &ps[k], mask, NULL));
            check_pattern(W, mask, rows, cols, &ps[k], meth < 2, 1);
            /* the kinds store exactly the pruned matrix */
            void *obj = NULL;
            TU_OK(ps[k].n ? wmat__nm_create(W, mask, rows, cols, ps[k].n, ps[k].m, WMAT_F32, &obj)
                          : wmat__sparse_create(W, mask, rows, cols, WMAT_F32, &obj));
            wmat_tensor t;
            wmat__tensor_own_obj(&t, rows, cols, obj);
            float *D = malloc((size_t)(rows * cols) * sizeof(float));
            TU_OK(wmat_tensor_dequant_rows(&t, 0, rows, D));
            assert_memory_equal(D, W, (size_t)(rows * cols) * sizeof(float));
            wmat__tensor_free_data(&t);
            free(W), free(mask), free(D);
        }
    /* bad settings are refused with a message */
    float W[8 * 12] = {0};
    uint8_t mask[8 * 12];
    wmat_prune_params bad = {0, 2, 4, 0, 0, 1};
    bad.m = 3;
    assert_int_equal(wmat__prune_magnitude(W, 8, 12, &bad, mask), WMAT_ERR_INVALID);
    bad = (wmat_prune_params){0, 4, 8, 0, 0, 1};
    assert_int_equal(wmat__prune_magnitude(W, 8, 12, &bad, mask), WMAT_ERR_INVALID); /* 12 % 8 */
    bad = (wmat_prune_params){1.0, 0, 0, 0, 0, 1};
    assert_int_equal(wmat__prune_magnitude(W, 8, 12, &bad, mask), WMAT_ERR_INVALID);
    assert_int_equal(wmat__prune_wanda(W, 8, 12, NULL, &ps[0], mask), WMAT_ERR_INVALID);
    assert_int_equal(wmat__prune_sparsegpt(W, 8, 12, NULL, &ps[0], mask, NULL), WMAT_ERR_INVALID);
    assert_true(strlen(wmat_last_error()) > 0);
    free(H), free(x2);
}

static void test_wanda_equals_magnitude_on_equal_norms(void **state)
{
    (void)state;
    const int64_t rows = 24, cols = 64;
    double *x2 = malloc((size_t)cols * sizeof(double));
    for (int64_t j = 0; j < cols; j++) x2[j] = 3.7;
    const wmat_prune_params ps[] = {{0.5, 0, 0, 0, 0, 1}, {0.25, 0, 0, 0, 0, 1}, {0, 2, 4, 0, 0, 1}, {0, 4, 8, 0, 0, 1}};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        float *A = malloc((size_t)(rows * cols) * sizeof(float)), *B = malloc((size_t)(rows * cols) * sizeof(float));
        uint8_t *ma = malloc((size_t)(rows * cols)), *mb = malloc((size_t)(rows * cols));
        fill(A, (size_t)(rows * cols), 9 + k, 1.0f);
        memcpy(B, A, (size_t)(rows * cols) * sizeof(float));
        TU_OK(wmat__prune_magnitude(A, rows, cols, &ps[k], ma));
        TU_OK(wmat__prune_wanda(B, rows, cols, x2, &ps[k], mb));
        assert_memory_equal(ma, mb, (size_t)(rows * cols));
        assert_memory_equal(A, B, (size_t)(rows * cols) * sizeof(float));
        /* and unequal norms change the choice */
        for (int64_t j = 0; j < cols; j++) x2[j] = j % 2 ? 10.0 : 0.1;
        fill(B, (size_t)(rows * cols), 9 + k, 1.0f);
        TU_OK(wmat__prune_wanda(B, rows, cols, x2, &ps[k], mb));
        assert_true(memcmp(ma, mb, (size_t)(rows * cols)) != 0);
        for (int64_t j = 0; j < cols; j++) x2[j] = 3.7;
        free(A), free(B), free(ma), free(mb);
    }
    free(x2);
}

/* Forward (batched and one-row on every ISA) equals the dense product of
 * the masked matrix, whose values are rounded to the stored type. */
static void check_kind_product(int nm_n, int nm_m, double sparsity, wmat_dtype vdt, int64_t rows, int64_t cols, int T)
{
    float *W = malloc((size_t)(rows * cols) * sizeof(float));
    uint8_t *mask = malloc((size_t)(rows * cols));
    fill(W, (size_t)(rows * cols), 31 + (uint64_t)cols, 1.0f);
    wmat_prune_params p = {sparsity, nm_n, nm_m, 0, 0, 1};
    TU_OK(wmat__prune_magnitude(W, rows, cols, &p, mask));
    if (vdt == WMAT_F16)
        for (int64_t i = 0; i < rows * cols; i++) W[i] = wmat_f16_to_f32(wmat_f32_to_f16(W[i]));
    void *obj = NULL;
    TU_OK(nm_n ? wmat__nm_create(W, mask, rows, cols, nm_n, nm_m, vdt, &obj) : wmat__sparse_create(W, mask, rows, cols, vdt, &obj));
    wmat_tensor t;
    wmat__tensor_own_obj(&t, rows, cols, obj);
    const wmat_wkind *k = wmat__wkind_of(&t);
    assert_string_equal(k->name, nm_n ? "nm" : "sparse");
    float *X = malloc((size_t)T * (size_t)cols * sizeof(float)), *Y = malloc((size_t)T * (size_t)rows * sizeof(float));
    float *Yref = malloc((size_t)T * (size_t)rows * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
    fill(X, (size_t)T * (size_t)cols, 7, 1.0f);
    for (int s = 0; s < T; s++)
        for (int64_t r = 0; r < rows; r++) {
            double a = 0;
            for (int64_t c = 0; c < cols; c++) a += (double)W[r * cols + c] * X[s * cols + c];
            Yref[s * rows + r] = (float)a;
        }
    wmat_wexec ex = wmat__wexec_from(NULL);
    ex.n_threads = 2;
    TU_OK(wmat__wop_forward(&t, X, Y, T, 0, &ex));
    const double tol = 1e-5 * sqrt((double)cols);
    TU_ASSERT_CLOSE(Y, Yref, (size_t)T * (size_t)rows, tol, 1e-5);
    const int isas[] = {WMAT_ISA_REF, WMAT_ISA_AVX2};
    for (int i = 0; i < 2; i++) {
        if (isas[i] > wmat__isa_best()) continue;
        ex.isa = isas[i];
        for (int s = 0; s < T; s++) {
            TU_OK(wmat__wop_matvec(&t, X + s * cols, y, 0, &ex));
            TU_ASSERT_CLOSE(y, Yref + s * rows, (size_t)rows, tol, 1e-5);
        }
    }
    char desc[64];
    wmat_tensor_describe(&t, desc, sizeof desc);
    const double bpw = wmat_tensor_bits_per_weight(&t);
    print_message("  %-24s (%lld x %lld): %.2f bits per weight\n", desc, (long long)rows, (long long)cols, bpw);
    wmat__tensor_free_data(&t);
    free(W), free(mask), free(X), free(Y), free(Yref), free(y);
}

static void test_kind_products(void **state)
{
    (void)state;
    const wmat_dtype dts[] = {WMAT_F32, WMAT_F16};
    for (int d = 0; d < 2; d++) {
        check_kind_product(2, 4, 0, dts[d], 70, 256, 9);
        check_kind_product(2, 4, 0, dts[d], 33, 36, 3); /* a half mask byte at the end of each row */
        check_kind_product(2, 4, 0, dts[d], 17, 40, 2); /* a lone full byte after the pairs */
        check_kind_product(4, 8, 0, dts[d], 20, 64, 4);
        check_kind_product(1, 4, 0, dts[d], 20, 64, 4); /* not half: the any-count kernel */
        check_kind_product(3, 8, 0, dts[d], 9, 48, 2);
        check_kind_product(0, 0, 0.5, dts[d], 70, 256, 9);
        check_kind_product(0, 0, 0.9, dts[d], 31, 37, 3); /* a partial mask byte */
        check_kind_product(0, 0, 0.2, dts[d], 5, 200, 1);
    }
}

/* Stored N:M files whose groups keep other than N are refused (the kernels
 * step through the values at a fixed stride). */
static int one_part_get(void *user, const char *suffix, wmat_dtype dtype, int ndim, int64_t d0, int64_t d1, const void **data)
{
    const void **parts = user;
    (void)dtype, (void)ndim, (void)d0, (void)d1;
    *data = !strcmp(suffix, ".sp_mask") ? parts[0] : parts[1];
    return WMAT_OK;
}

static void test_hostile_masks(void **state)
{
    (void)state;
    const wmat_wkind *k = wmat__wkind_find("nm");
    cJSON *desc = cJSON_CreateObject();
    cJSON_AddStringToObject(desc, "dtype", "f32");
    cJSON_AddNumberToObject(desc, "n", 2);
    cJSON_AddNumberToObject(desc, "m", 4);
    uint8_t mask[2 * 2] = {0x55, 0x33, 0x99, 0x5A}; /* 2 per group of 4 */
    float vals[2 * 8] = {0};
    const void *parts[2] = {mask, vals};
    void *obj = NULL;
    TU_OK(k->load(desc, 2, 16, one_part_get, parts, "t", &obj));
    k->free(obj);
    mask[3] = 0x5B; /* 3 in a group */
    obj = NULL;
    assert_int_equal(k->load(desc, 2, 16, one_part_get, parts, "t", &obj), WMAT_ERR_FORMAT);
    assert_null(obj);
    cJSON_Delete(desc);
}

/* ---- a whole model (wmat__prune_model) */

static wmat_model *load_f32(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static float *logits_of(wmat_model *m, int T)
{
    const wmat_config *c = wmat_model_config(m);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 31 + 7) % c->vocab_size);
    float *lg = malloc((size_t)T * (size_t)c->vocab_size * sizeof(float));
    TU_OK(wmat_forward(rt, ids, T, lg));
    free(ids);
    wmat_runtime_free(rt);
    return lg;
}

/* Every linear weight of m is of kind `kind`; its zeros follow the pattern;
 * a model whose fp32 weights are the dequantized sparse ones gives the
 * same logits (the kind runs what it stores). */
static void check_pruned_model(wmat_model *m, const char *path, const char *kind, const char *method,
                               const wmat_prune_params *pp)
{
    const wmat_config *c = wmat_model_config(m);
    wmat_model *d = load_f32(path);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k), *td = wmat_model_linear(d, l, (wmat_linear_kind)k);
            assert_string_equal(wmat_tensor_kind(t), kind);
            const int64_t rows = t->shape[0], cols = t->shape[1];
            float *W = malloc((size_t)(rows * cols) * sizeof(float));
            uint8_t *mask = malloc((size_t)(rows * cols));
            TU_OK(wmat_tensor_dequant_rows(t, 0, rows, W));
            const wmat_spm *sm = wmat__spm_of(t);
            assert_non_null(sm);
            for (int64_t i = 0; i < rows * cols; i++) mask[i] = sm->mask[(i / cols) * sm->mask_bytes + (i % cols) / 8] >> ((i % cols) % 8) & 1;
            check_pattern(W, mask, rows, cols, pp, strcmp(method, "sparsegpt") != 0, 0); /* a kept weight may be 0 (or round to 0 in f16) */
            if (!(td->flags & WMAT_TF_OWNED)) { /* a mapped file: the model gets its own copy */
                td->data = wmat__malloc((size_t)(rows * cols) * sizeof(float));
                td->flags |= WMAT_TF_OWNED;
            }
            memcpy(td->data, W, (size_t)(rows * cols) * sizeof(float));
            free(W), free(mask);
        }
    float *a = logits_of(m, 16), *b = logits_of(d, 16);
    double mx = 0, scale = 0;
    for (int i = 0; i < 16 * c->vocab_size; i++) {
        const double df = tu_abs_diff(a[i], b[i]);
        if (!(df <= mx)) mx = df;
        if (fabs(b[i]) > scale) scale = fabs(b[i]);
    }
    if (!(mx <= 1e-4 * scale)) fail_msg("pruned model's logits %g from the dense model of its weights", mx);
    free(a), free(b);
    wmat_model_free(d);
}

static void test_model_magnitude_nm_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load_f32(path);
    wmat_prune_model_params p;
    memset(&p, 0, sizeof p);
    p.method = "magnitude";
    p.pp = (wmat_prune_params){0, 2, 4, 0, 0, 1};
    p.dtype = WMAT_F16;
    wmat_decompose_report rep;
    TU_OK(wmat__prune_model(m, &p, &rep));
    assert_int_equal(rep.n_tensors, 5 * 7);
    assert_true(rep.params_after * 2 == rep.params_before);
    wmat_decompose_report_free(&rep);
    check_pruned_model(m, path, "nm", p.method, &p.pp);
    /* the native directory stores it; loaded, it runs bit for bit alike */
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    const char *dir = tu_tmp("nm24");
    TU_OK(wmat_model_save(m, dir, &sp));
    wmat_model *r = load_f32(dir);
    char desc[64];
    wmat_tensor_describe(wmat_model_linear(r, 2, WMAT_LIN_UP), desc, sizeof desc);
    assert_string_equal(desc, "2:4 f16");
    float *a = logits_of(m, 16), *b = logits_of(r, 16);
    assert_memory_equal(a, b, (size_t)16 * 512 * sizeof(float));
    sp.format = WMAT_FMT_GGUF;
    assert_int_equal(wmat_model_save(r, tu_tmp("nm24.gguf"), &sp), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "sparse"));
    free(a), free(b);
    wmat_model_free(m);
    wmat_model_free(r);
}

static void test_model_calibrated(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    TU_NEED_DATA(tok, "golden/tinystories_valid_head.tok512.u16");
    int32_t *ids;
    size_t n;
    TU_OK(wmat_read_tokens_u16(tok, &ids, &n));
    const char *methods[] = {"sparsegpt", "wanda"};
    for (int i = 0; i < 2; i++) {
        wmat_model *m = load_f32(path);
        wmat_prune_model_params p;
        memset(&p, 0, sizeof p);
        p.method = methods[i];
        p.pp = (wmat_prune_params){0.5, 0, 0, 0, 0, 1};
        p.dtype = WMAT_F32;
        p.calib = ids;
        p.n_calib = 4 * 64;
        p.calib_ctx = 64;
        TU_OK(wmat__prune_model(m, &p, NULL));
        check_pruned_model(m, path, "sparse", p.method, &p.pp);
        wmat_model_free(m);
        /* without calibration data: a clear refusal */
        m = load_f32(path);
        p.calib = NULL;
        assert_int_equal(wmat__prune_model(m, &p, NULL), WMAT_ERR_INVALID);
        assert_non_null(strstr(wmat_last_error(), "calibration"));
        assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "f32");
        wmat_model_free(m);
    }
    free(ids);
}

/* Through the decomposition registry (wmat_decompose_model): the rows,
 * their keys, the calibration they need and what they refuse. */
static void test_decompose_rows(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    TU_NEED_DATA(tok, "golden/tinystories_valid_head.tok512.u16");
    int32_t *ids;
    size_t n;
    TU_OK(wmat_read_tokens_u16(tok, &ids, &n));
    wmat_model *m = load_f32(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "sparsegpt";
    p.method_params = "nm=2:4";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID); /* no calibration data */
    assert_non_null(strstr(wmat_last_error(), "calibration"));
    p.calib = ids;
    p.n_calib = 256;
    p.calib_ctx = 64;
    p.overrides = "layers.0=keep";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_UNSUPPORTED);
    p.overrides = NULL;
    p.dtype = WMAT_BF16;
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "f32"); /* untouched */
    p.dtype = WMAT_F16;
    p.targets = 1u << WMAT_LIN_UP | 1u << WMAT_LIN_DOWN;
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_int_equal(rep.n_tensors, 10);
    assert_string_equal(rep.tensors[0].method, "sparsegpt");
    assert_true(rep.params_after * 2 == rep.params_before);
    wmat_decompose_report_free(&rep);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 4, WMAT_LIN_DOWN)), "nm");
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 4, WMAT_LIN_Q)), "f32");
    wmat_model_free(m);
    /* magnitude needs no data; a bad nm is refused before anything changes */
    m = load_f32(path);
    p = wmat_decompose_default_params();
    p.method = "magnitude";
    p.method_params = "nm=3:5";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    p.method_params = "sparsity=0.75";
    TU_OK(wmat_decompose_model(m, &p, NULL));
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 1, WMAT_LIN_V)), "sparse");
    wmat_model_free(m);
    free(ids);
}

static void test_method_keys(void **state)
{
    (void)state;
    wmat_pset ps;
    wmat_prune_params pp;
    TU_OK(wmat__pset_init(&ps, wmat__prune_keys));
    TU_OK(wmat__prune_params_from(&ps, &pp));
    assert_true(pp.n == 0 && pp.sparsity == 0.5 && pp.block == 128 && pp.damp == 0.01);
    TU_OK(wmat__pset_set(&ps, "nm", "4:8"));
    TU_OK(wmat__prune_params_from(&ps, &pp));
    assert_true(pp.n == 4 && pp.m == 8);
    const char *bad[] = {"3:5", "2:4x", "4:4", "0:4", "x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        TU_OK(wmat__pset_set(&ps, "nm", bad[i]));
        assert_int_equal(wmat__prune_params_from(&ps, &pp), WMAT_ERR_INVALID);
        assert_non_null(strstr(wmat_last_error(), "nm"));
    }
    TU_OK(wmat__pset_set(&ps, "nm", "2:4"));
    TU_OK(wmat__pset_set(&ps, "sparsity", "0.6"));
    assert_int_equal(wmat__prune_params_from(&ps, &pp), WMAT_ERR_INVALID); /* both */
    assert_true(wmat__pset_set(&ps, "sparsity", "1.0") < 0);               /* out of range */
    wmat__pset_free(&ps);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sparsegpt_equals_literal_obs),
        cmocka_unit_test(test_masks),
        cmocka_unit_test(test_wanda_equals_magnitude_on_equal_norms),
        cmocka_unit_test(test_kind_products),
        cmocka_unit_test(test_hostile_masks),
        cmocka_unit_test(test_model_magnitude_nm_roundtrip),
        cmocka_unit_test(test_model_calibrated),
        cmocka_unit_test(test_method_keys),
        cmocka_unit_test(test_decompose_rows),
    };
    return tu_run_tests("sparse", tests, NULL, NULL);
}
