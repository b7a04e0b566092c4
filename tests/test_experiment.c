/* The experiment registry (src/experiment): every entry runs from its smoke
 * settings and returns a well-formed table; the runner's errors; and each
 * experiment's own claim where it can be checked in seconds. */
#include "test_util.h"

#include "catalog/catalog.h"
#include "experiment/experiment.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_every_entry_runs(void **state)
{
    (void)state;
    int n = 0;
    for (int i = 0; wmat__experiments[i]; i++, n++) {
        const wmat_experiment *e = wmat__experiments[i];
        TU_OK(wmat__method_desc_check(&e->desc));
        assert_string_equal(e->family, WMAT_FAMILY_EXPERIMENT);
        assert_non_null(e->run);
        assert_non_null(e->smoke);
        assert_ptr_equal(wmat__method_lookup(WMAT_FAMILY_EXPERIMENT, e->name), &e->desc);
        const wmat_experiment_params p = {.params = e->smoke, .seed = 3};
        wmat_table t;
        if (wmat_experiment_run(e->name, &p, &t)) fail_msg("%s: %s", e->name, wmat_last_error());
        assert_true(t.ncols >= 1);
        assert_true(t.nrows >= 1);
        assert_non_null(t.title);
        assert_true(t.title[0] != '\0');
        for (int r = 0; r < t.nrows; r++) {
            int finite = 0;
            for (int c = 0; c < t.ncols; c++) finite += isfinite(t.v[r * t.ncols + c]) != 0;
            if (!finite) fail_msg("%s: row %d (%s) has no measured value", e->name, r, t.series[r]);
        }
        assert_true(t.x_col >= -1 && t.x_col < t.ncols);
        assert_true(t.y_col >= -1 && t.y_col < t.ncols);
        assert_true((t.x_col < 0) == (t.y_col < 0));
        wmat_table_free(&t);
        wmat_table_free(&t); /* twice is harmless */
    }
    assert_true(n >= 1);
}

static void test_runner_errors(void **state)
{
    (void)state;
    wmat_table t;
    assert_int_equal(wmat_experiment_run("no-such-experiment", NULL, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "ibp-init"));
    wmat_table_free(&t);
    const wmat_experiment_params bad_key = {.params = "depth_max=3"};
    assert_int_equal(wmat_experiment_run("ibp-init", &bad_key, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "depth_max"));
    wmat_table_free(&t);
    const wmat_experiment_params bad_val = {.params = "max_depth=40"};
    assert_int_equal(wmat_experiment_run("ibp-init", &bad_val, &t), WMAT_ERR_INVALID);
    wmat_table_free(&t);
    const wmat_experiment_params bad_list = {.params = "widths=16,x"};
    assert_int_equal(wmat_experiment_run("ibp-init", &bad_list, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "16,x"));
    wmat_table_free(&t);
    assert_int_equal(wmat_experiment_run("ibp-init", NULL, NULL), WMAT_ERR_INVALID);
}

/* Mao et al.'s law at initialisation: depth 1 is exact, and deeper chains
 * follow prod sqrt(pi / (2 width)) (measured/predicted within 5% at width 128). */
static void test_ibp_init_law(void **state)
{
    (void)state;
    const wmat_experiment_params p = {.params = "widths=128;max_depth=3;seeds=2", .seed = 5};
    wmat_table t;
    TU_OK(wmat_experiment_run("ibp-init", &p, &t));
    assert_int_equal(t.nrows, 3);
    int c_depth = -1, c_ratio = -1, c_tight = -1;
    for (int c = 0; c < t.ncols; c++) {
        if (!strcmp(t.cols[c], "depth")) c_depth = c;
        if (!strcmp(t.cols[c], "measured/predicted")) c_ratio = c;
        if (!strcmp(t.cols[c], "tightness")) c_tight = c;
    }
    assert_true(c_depth >= 0 && c_ratio >= 0 && c_tight >= 0);
    for (int r = 0; r < t.nrows; r++) {
        const double depth = t.v[r * t.ncols + c_depth], ratio = t.v[r * t.ncols + c_ratio];
        if (depth == 1) TU_ASSERT_NEAR(t.v[r * t.ncols + c_tight], 1.0, 1e-12);
        else TU_ASSERT_NEAR(ratio, 1.0, 0.05);
    }
    wmat_table_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_entry_runs),
        cmocka_unit_test(test_runner_errors),
        cmocka_unit_test(test_ibp_init_law),
    };
    return tu_run_tests("experiment", tests, NULL, NULL);
}
