/* The rf-attention experiment (src/experiment/exp_rf_attention.c):
 * random-features attention fitted by least squares. On the target its
 * class contains (the infinite-head limit of the model itself) the error
 * goes to 0 as the heads grow, at least as fast as the random-features
 * bound's rate 1/M: every point at or below the 1/M line through the first
 * and the log-log slope at most -1 (within 0.1; least squares measures
 * about -2.5 here, faster than the bound); bad keys refused. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int col(const wmat_table *t, const char *name)
{
    for (int c = 0; c < t->ncols; c++)
        if (!strcmp(t->cols[c], name)) return c;
    fail_msg("no column %s", name);
    return -1;
}

static void test_contained_target_rate(void **state)
{
    (void)state;
    const wmat_experiment_params p = {.params = "targets=kernel;dims=4;heads=2,4,8,16,32,64;keys=4;seeds=2;test=400",
                                      .seed = 2};
    wmat_table t;
    TU_OK(wmat_experiment_run("rf-attention", &p, &t));
    assert_int_equal(t.nrows, 6);
    const int cm = col(&t, "M"), ce = col(&t, "rel_error"), cs = col(&t, "slope"), cr = col(&t, "rate_1/M");
    double prev = INFINITY;
    for (int r = 0; r < t.nrows; r++) {
        const double e = t.v[r * t.ncols + ce];
        print_message("M %g rel_error %.3e\n", t.v[r * t.ncols + cm], e);
        assert_true(e < prev); /* falls with every doubling */
        assert_true(e <= t.v[r * t.ncols + cr] * 1.0000001); /* on or below the bound's 1/M line */
        prev = e;
    }
    const double first = t.v[ce], last = t.v[(t.nrows - 1) * t.ncols + ce];
    assert_true(last < 0.05 * first); /* 32x the heads: about 1/32 of the error */
    assert_true(last < 1e-2);
    const double slope = t.v[cs];
    print_message("slope %.3f\n", slope);
    if (!(slope < -0.9)) fail_msg("log-log slope %.3f: slower than the bound's rate -1", slope);
    wmat_table_free(&t);
}

static void test_errors(void **state)
{
    (void)state;
    wmat_table t;
    const wmat_experiment_params bad_t = {.params = "targets=cubic"};
    assert_int_equal(wmat_experiment_run("rf-attention", &bad_t, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "cubic"));
    wmat_table_free(&t);
    const wmat_experiment_params bad_d = {.params = "dims=4,x"};
    assert_int_equal(wmat_experiment_run("rf-attention", &bad_d, &t), WMAT_ERR_INVALID);
    wmat_table_free(&t);
    const wmat_experiment_params big = {.params = "dims=256;heads=4096"};
    assert_int_equal(wmat_experiment_run("rf-attention", &big, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "too large"));
    wmat_table_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contained_target_rate),
        cmocka_unit_test(test_errors),
    };
    return tu_run_tests("rf_attention", tests, NULL, NULL);
}
