/* WeLore's rank rule (src/decomp/welore.c) on spectra worked by hand:
 * normalized values below one global threshold are pruned; bisection finds
 * the smallest threshold reaching a pruned share; min_ratio separates
 * low-rank-compressible matrices from those kept dense. Then the method
 * through the decomposition driver on stories260K: the ranks it keeps are
 * the rule's on the matrices' own spectra, a matrix kept dense is left
 * untouched, and the result runs. */
#include "test_util.h"

#include <math.h>

#include "decomp/welore.h"
#include "linalg/dense.h"

#include <stdlib.h>
#include <string.h>

static void test_fixed_tau(void **state)
{
    (void)state;
    /* a: normalized 1, .5, .2, .1, 0 ; b: 1, .9, .8, .7 (flat-ish); c: constant */
    const double a[] = {11, 6, 3, 2, 1}, b[] = {10, 9, 8, 7}, c[] = {2, 2, 2};
    const double *sv[] = {a, b, c};
    const int64_t len[] = {5, 4, 3};
    int64_t rk[3];
    double tau, pruned;
    TU_OK(wmat__welore_ranks(3, sv, len, 0.15, 0, 0.0, rk, &tau, &pruned));
    /* a prunes .1 and 0 (2 of 5); b prunes its minimum (normalized 0) only; c nothing */
    assert_int_equal(rk[0], 3);
    assert_int_equal(rk[1], 3);
    assert_int_equal(rk[2], 0); /* no pruned rank: not LRC, kept dense */
    TU_ASSERT_NEAR(tau, 0.15, 0);
    TU_ASSERT_NEAR(pruned, 3.0 / 12.0, 1e-12);
    /* min_ratio 0.3: b (1/4 pruned) is kept dense, a (2/5) is factored */
    TU_OK(wmat__welore_ranks(3, sv, len, 0.15, 0, 0.3, rk, &tau, &pruned));
    assert_int_equal(rk[0], 3);
    assert_int_equal(rk[1], 0);
    TU_ASSERT_NEAR(pruned, 2.0 / 12.0, 1e-12);
}

static void test_bisection(void **state)
{
    (void)state;
    const double a[] = {11, 6, 3, 2, 1}, b[] = {10, 9, 8, 7};
    const double *sv[] = {a, b};
    const int64_t len[] = {5, 4};
    int64_t rk[2];
    double tau, pruned;
    /* 4 of 9 ranks: a's .1, 0 and .2 (3), b's 0 (1) -> tau just above 0.2 */
    TU_OK(wmat__welore_ranks(2, sv, len, -1, 4.0 / 9.0, 0.0, rk, &tau, &pruned));
    assert_true(tau > 0.2 && tau < 0.2 + 1e-6);
    assert_int_equal(rk[0], 2);
    assert_int_equal(rk[1], 3);
    TU_ASSERT_NEAR(pruned, 4.0 / 9.0, 1e-12);
    /* more than a can give comes from b: 6 of 9 -> a keeps its max, b loses .333 too */
    TU_OK(wmat__welore_ranks(2, sv, len, -1, 6.0 / 9.0, 0.0, rk, &tau, &pruned));
    assert_true(pruned >= 6.0 / 9.0 - 1e-12);
    assert_true(rk[0] >= 1 && rk[1] >= 1);
    assert_int_equal(wmat__welore_ranks(2, sv, len, -1, 1.5, 0.0, rk, &tau, &pruned), WMAT_ERR_INVALID);
    assert_int_equal(wmat__welore_ranks(2, sv, len, 2.0, 0, 0.0, rk, &tau, &pruned), WMAT_ERR_INVALID);
}

static void test_driver_stories(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m = NULL, *ref = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    TU_OK(wmat_model_load(&ref, path, &lp));
    const wmat_config *c = wmat_model_config(m);
    /* the rule on the spectra computed here */
    const int n = c->n_layers * WMAT_LIN_COUNT;
    double **sv = calloc((size_t)n, sizeof *sv);
    int64_t *len = calloc((size_t)n, sizeof *len), *rank = calloc((size_t)n, sizeof *rank);
    for (int i = 0; i < n; i++) {
        const wmat_tensor *t = wmat_model_linear(ref, i / WMAT_LIN_COUNT, (wmat_linear_kind)(i % WMAT_LIN_COUNT));
        const int64_t r = t->shape[0], cc = t->shape[1], k = r < cc ? r : cc;
        double *A = malloc(sizeof(double) * (size_t)(r * cc));
        for (int64_t j = 0; j < r * cc; j++) A[j] = ((const float *)t->data)[j];
        sv[i] = malloc(sizeof(double) * (size_t)k);
        TU_OK(wmat__dgesdd((int)r, (int)cc, A, (int)cc, sv[i], NULL, (int)k, NULL, (int)cc));
        len[i] = k;
        free(A);
    }
    double tau, pruned;
    TU_OK(wmat__welore_ranks(n, (const double *const *)sv, len, -1, 0.5, 0.0, rank, &tau, &pruned));
    assert_true(pruned >= 0.5 - 1e-12);

    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "welore";
    p.method_params = "target=0.5";
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    int factored = 0, dense = 0;
    for (int i = 0; i < n; i++) {
        const wmat_tensor *t = wmat_model_linear(m, i / WMAT_LIN_COUNT, (wmat_linear_kind)(i % WMAT_LIN_COUNT));
        const wmat_tensor *t0 = wmat_model_linear(ref, i / WMAT_LIN_COUNT, (wmat_linear_kind)(i % WMAT_LIN_COUNT));
        const int64_t r = t0->shape[0], cc = t0->shape[1];
        const int expect_dense = rank[i] == 0 || rank[i] * (r + cc) >= r * cc;
        if (expect_dense) {
            assert_string_equal(wmat_tensor_kind(t), "f32");
            assert_memory_equal(t->data, t0->data, t0->nbytes);
            dense++;
            continue;
        }
        assert_string_equal(wmat_tensor_kind(t), "lowrank");
        int found = 0;
        for (int j = 0; j < rep.n_tensors; j++)
            if (!strcmp(rep.tensors[j].name, t->name)) {
                assert_int_equal(rep.tensors[j].rank, rank[i]);
                found = 1;
            }
        assert_true(found);
        factored++;
    }
    assert_true(factored > 0);
    assert_int_equal(rep.n_tensors, factored);
    (void)dense;
    /* a user-given rank is refused: the rule sets them */
    p.method_params = "rank=4";
    assert_int_equal(wmat_decompose_model(ref, &p, NULL), WMAT_ERR_INVALID);
    /* the decomposed model runs */
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 8;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t ids[8] = {1, 5, 9, 30, 2, 7, 100, 3};
    float *lg = malloc(sizeof(float) * 8 * (size_t)c->vocab_size);
    TU_OK(wmat_forward(rt, ids, 8, lg));
    for (size_t i = 0; i < 8 * (size_t)c->vocab_size; i++) assert_true(isfinite(lg[i]));
    free(lg);
    wmat_runtime_free(rt);
    wmat_decompose_report_free(&rep);
    for (int i = 0; i < n; i++) free(sv[i]);
    free(sv), free(len), free(rank);
    wmat_model_free(m);
    wmat_model_free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fixed_tau), cmocka_unit_test(test_bisection),
                                       cmocka_unit_test(test_driver_stories)};
    return tu_run_tests("welore", tests, NULL, NULL);
}
