/* Shared helpers for the cmocka test executables. */
#ifndef WMAT_TEST_UTIL_H
#define WMAT_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "wmat.h"

/* A skipped case must reach CTest as skipped, not passed: every skip()
 * records itself here, and tu_run_tests() turns a skipped single case into
 * exit code 77 (the tests' SKIP_RETURN_CODE). */
void tu_skip_(const char *file, int line);
#undef skip
#define skip() tu_skip_(__FILE__, __LINE__)

/* Run a group of cmocka cases. CTest registers each case as its own test
 * (tests/cmake/discover.cmake): WMAT_TEST_LIST=1 prints the case names, one a
 * line, and runs nothing; WMAT_TEST_CASE=NAME runs only that case and
 * exits 77 when it skipped. Without either, the whole group runs (or the
 * cases matching WMAT_TEST_FILTER, a cmocka glob) and the exit status is
 * cmocka's (the number of failed cases). */
int tu_run_group_(const char *group, const struct CMUnitTest *tests, size_t n, CMFixtureFunction setup,
                  CMFixtureFunction teardown);
#define tu_run_tests(group, tests, setup, teardown)                                              \
    tu_run_group_(group, tests, sizeof(tests) / sizeof((tests)[0]), setup, teardown)

/* ---- NaN-safe comparisons. A plain `fabs(a - b) > tol` never fires on a
 * NaN and fmax() drops NaNs, so hand-written loops passed when both sides
 * were NaN. These treat any NaN as an infinite difference; equal infinities
 * compare equal (a masked score is -inf on both sides), any other infinity
 * is an infinite difference. */

/* |x - y| under those rules (0, a finite value, or +INFINITY). */
double tu_abs_diff(double x, double y);
/* Largest tu_abs_diff over n elements; *worst (may be NULL) gets its index
 * (the first NaN or infinite one wins). 0 for n == 0. */
double tu_max_abs_diff(const float *a, const float *b, size_t n, size_t *worst);
double tu_max_abs_diff_d(const double *a, const double *b, size_t n, size_t *worst);
/* Largest |a[i]|; NaN when some a[i] is NaN (so a tolerance scaled by it
 * fails every comparison). */
double tu_max_abs(const float *a, size_t n);
/* 1 when no NaN anywhere and every |a[i] - b[i]| <= abs_tol + rel_tol * |b[i]|
 * (equal infinities allowed; a NaN tolerance admits nothing); else 0 with
 * the first offending index in *bad. */
int tu_close(const float *a, const float *b, size_t n, double abs_tol, double rel_tol, size_t *bad);
/* ||a - b||_F / ||b||_F in double; NaN anywhere gives NaN (which fails every bound). */
double tu_rel_frob(const float *a, const float *b, size_t n);
int tu_close_d(const double *a, const double *b, size_t n, double abs_tol, double rel_tol, size_t *bad);
/* 1 when neither is NaN and |x - y| <= tol (equal infinities: 1; a NaN
 * tolerance: 0). */
int tu_near(double x, double y, double tol);

/* Fail unless a and b (n floats, b the reference) agree within
 * abs_tol + rel_tol * |b[i]| everywhere; prints the index and both values. */
#define TU_ASSERT_CLOSE(a, b, n, abs_tol, rel_tol)                                                   \
    do {                                                                                           \
        size_t tu_bad_;                                                                            \
        const float *tu_a_ = (a), *tu_b_ = (b);                                                    \
        if (!tu_close(tu_a_, tu_b_, (n), (abs_tol), (rel_tol), &tu_bad_))                          \
            fail_msg("%s vs %s: element %zu: %.9g vs %.9g (tolerance %g + %g*|ref|)", #a, #b, tu_bad_, \
                     (double)tu_a_[tu_bad_], (double)tu_b_[tu_bad_], (double)(abs_tol), (double)(rel_tol)); \
    } while (0)
#define TU_ASSERT_CLOSE_D(a, b, n, abs_tol, rel_tol)                                                 \
    do {                                                                                           \
        size_t tu_bad_;                                                                            \
        const double *tu_a_ = (a), *tu_b_ = (b);                                                   \
        if (!tu_close_d(tu_a_, tu_b_, (n), (abs_tol), (rel_tol), &tu_bad_))                        \
            fail_msg("%s vs %s: element %zu: %.17g vs %.17g (tolerance %g + %g*|ref|)", #a, #b, tu_bad_, \
                     tu_a_[tu_bad_], tu_b_[tu_bad_], (double)(abs_tol), (double)(rel_tol));         \
    } while (0)
/* Fail unless |x - y| <= tol with neither NaN. */
#define TU_ASSERT_NEAR(x, y, tol)                                                                  \
    do {                                                                                           \
        double tu_x_ = (x), tu_y_ = (y), tu_t_ = (tol);                                            \
        if (!tu_near(tu_x_, tu_y_, tu_t_))                                                         \
            fail_msg("%s = %.17g vs %s = %.17g: difference above %g", #x, tu_x_, #y, tu_y_, tu_t_); \
    } while (0)
/* Fail unless d < bound with d a difference from tu_max_abs_diff (an
 * infinite or NaN d, or a NaN bound, fails). */
#define TU_ASSERT_BELOW(d, bound)                                                                  \
    do {                                                                                           \
        double tu_d_ = (d), tu_bd_ = (bound);                                                      \
        if (!(tu_d_ < tu_bd_)) fail_msg("%s = %.9g, not below %s = %.9g", #d, tu_d_, #bound, tu_bd_); \
    } while (0)

/* Path of a file in the shared data folder (../shared/data or $WMAT_DATA),
 * or NULL if it does not exist. Returned string is static per call slot. */
const char *tu_data(const char *rel);
/* Skip the current test with a message when a data file is missing (CTest
 * shows the case as skipped). */
#define TU_NEED_DATA(var, rel)                                                        \
    const char *var = tu_data(rel);                                                   \
    if (!var) {                                                                       \
        print_message("SKIP: %s not found (set WMAT_DATA or provide ../shared/data)\n", rel); \
        skip();                                                                       \
        return;                                                                       \
    }
/* Assert a wmat call returned WMAT_OK, printing wmat_last_error() if not. */
#define TU_OK(expr)                                                                   \
    do {                                                                              \
        int tu_rc_ = (expr);                                                          \
        if (tu_rc_ != WMAT_OK) fail_msg("%s -> %d: %s", #expr, tu_rc_, wmat_last_error()); \
    } while (0)

/* A fresh temporary directory for this process (removed at exit). */
const char *tu_tmpdir(void);
/* tu_tmpdir()/name into a static rotating buffer. */
const char *tu_tmp(const char *name);
/* Path of the wmat CLI built alongside the tests. */
const char *tu_cli(void);
/* Load a model with every tensor as fp32 (fails the test on error). */
wmat_model *tu_load_f32(const char *path);
/* Run a shell command, capture stdout (malloc'd, caller frees) and exit code. */
char *tu_run(const char *cmd, int *exit_code);
/* Write bytes to a file; returns 0 on success. */
int tu_write_file(const char *path, const void *data, size_t n);
/* A whole file (malloc'd, NUL-terminated; free()); fails the test when it
 * cannot be read. */
unsigned char *tu_slurp(const char *path, size_t *n);
/* A LLaMA config for synthetic test models: rope theta 10000, eps 1e-5,
 * BOS 1, EOS 2, untied. */
wmat_config tu_config(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq_len);

#endif
