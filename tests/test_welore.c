/* WeLore's rank rule (src/decomp/welore.c) on spectra worked by hand:
 * normalized values below one global threshold are pruned; bisection finds
 * the smallest threshold reaching a pruned share; min_ratio separates
 * low-rank-compressible matrices from those kept dense. */
#include "test_util.h"

#include "decomp/welore.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fixed_tau), cmocka_unit_test(test_bisection)};
    return tu_run_tests("welore", tests, NULL, NULL);
}
