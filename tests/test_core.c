/* Core: dtype conversions against independent references, ggml blocks,
 * arena, RNG, atomic files, error text. */
#include "test_util.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Reference: the compiler's own _Float16 conversion (libgcc, round to
 * nearest even). */
static uint16_t ref_f16(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static void test_f16_exhaustive_roundtrip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = wmat_f16_to_f32((uint16_t)h);
        _Float16 hh;
        uint16_t hu = (uint16_t)h;
        memcpy(&hh, &hu, 2);
        float ref = (float)hh;
        if (isnan(ref)) {
            assert_true(isnan(f));
            assert_true(isnan(wmat_f16_to_f32(wmat_f32_to_f16(f))));
            continue;
        }
        assert_int_equal(bits(f), bits(ref));
        assert_int_equal(wmat_f32_to_f16(f), h);
    }
}

static void test_f16_rounding_vs_reference(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 42);
    /* every f32 around each f16 boundary (ties included), plus random bits */
    for (uint32_t h = 0; h < 0x7c00; h++) {
        float lo = wmat_f16_to_f32((uint16_t)h);
        for (int d = -2; d <= 2; d++) {
            float f = from_bits(bits(lo) + (uint32_t)(d + 0x1000)); /* near the midpoint above */
            if (isnan(f)) continue;
            assert_int_equal(wmat_f32_to_f16(f), ref_f16(f));
            assert_int_equal(wmat_f32_to_f16(-f), ref_f16(-f));
        }
    }
    for (int i = 0; i < 2000000; i++) {
        float f = from_bits((uint32_t)wmat_rng_u64(&r));
        if (isnan(f)) continue;
        assert_int_equal(wmat_f32_to_f16(f), ref_f16(f));
    }
    assert_int_equal(wmat_f32_to_f16(65520.0f), 0x7c00); /* first value that rounds to inf */
    assert_int_equal(wmat_f32_to_f16(65519.996f), 0x7bff);
}

/* The array conversions (F16C where the CPU has it) give the scalar
 * functions' bits for every f16, and for f32 bit patterns swept across the
 * whole range (NaN payloads, subnormals, ties included); odd lengths and
 * offsets exercise the scalar tails. */
static void test_f16_arrays_match_scalar(void **state)
{
    (void)state;
    enum { N = 65536 };
    uint16_t *h = malloc(N * 2), *h2 = malloc(N * 2);
    float *f = malloc(N * 4);
    assert_non_null(h);
    assert_non_null(h2);
    assert_non_null(f);
    for (uint32_t i = 0; i < N; i++) h[i] = (uint16_t)i;
    assert_int_equal(wmat_to_f32(f, h + 1, WMAT_F16, N - 1), WMAT_OK);
    for (uint32_t i = 1; i < N; i++) assert_int_equal(bits(f[i - 1]), bits(wmat_f16_to_f32((uint16_t)i)));
    for (uint64_t base = 0; base < (1ull << 32); base += (uint64_t)N * 4099) {
        for (uint32_t i = 0; i < N; i++) f[i] = from_bits((uint32_t)(base + (uint64_t)i * 4099 + (i & 7)));
        assert_int_equal(wmat_from_f32(h2, WMAT_F16, f, N - 3), WMAT_OK);
        for (uint32_t i = 0; i < N - 3; i++) {
            if (h2[i] != wmat_f32_to_f16(f[i])) fail_msg("f32 bits %08x: %04x != %04x", bits(f[i]), h2[i], wmat_f32_to_f16(f[i]));
        }
    }
    free(h);
    free(h2);
    free(f);
}

/* bf16 reference: pick the nearer of the two neighbours in double, ties to
 * the even one. */
static uint16_t ref_bf16(float f)
{
    uint32_t u = bits(f);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dl = fabs((double)f - (double)from_bits((uint32_t)lo << 16));
    double dh = fabs((double)from_bits((uint32_t)hi << 16) - (double)f);
    if ((u & 0xffff) == 0) return lo;
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static void test_bf16(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    for (int i = 0; i < 2000000; i++) {
        float f = from_bits((uint32_t)wmat_rng_u64(&r));
        if (isnan(f) || isinf(f) || fabsf(f) > 3.38e38f) continue;
        assert_int_equal(wmat_f32_to_bf16(f), ref_bf16(f));
    }
    for (uint32_t h = 0; h < 65536; h++) {
        float f = wmat_bf16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true(isnan(wmat_bf16_to_f32(wmat_f32_to_bf16(f))));
            continue;
        }
        assert_int_equal(wmat_f32_to_bf16(f), h);
    }
}

/* ggml's reference Q8_0/Q4_0, transcribed literally from its description. */
static void ref_q8_0(const float *x, unsigned char *y)
{
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    uint16_t h = ref_f16(d);
    memcpy(y, &h, 2);
    for (int j = 0; j < 32; j++) y[2 + j] = (unsigned char)(int8_t)roundf(x[j] * id);
}

static void test_ggml_blocks(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    float x[32 * 64], y[32 * 64];
    unsigned char q[34 * 64], qr[34];
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < 32 * 64; i++) x[i] = wmat_rng_normal(&r) * (trial + 1) * 0.01f;
        if (trial == 0) memset(x, 0, 32 * sizeof(float)); /* all-zero block: scale 0 */
        TU_OK(wmat_from_f32(q, WMAT_Q8_0, x, 32 * 64));
        for (int b = 0; b < 64; b++) {
            ref_q8_0(x + 32 * b, qr);
            assert_memory_equal(q + 34 * b, qr, 34);
        }
        TU_OK(wmat_to_f32(y, q, WMAT_Q8_0, 32 * 64));
        /* half a step, plus the fp16 rounding of the scale (codes use the
         * unrounded 1/d): 127 * 2^-11 of a step at most */
        for (int i = 0; i < 32 * 64; i++) {
            uint16_t dh;
            memcpy(&dh, q + 34 * (i / 32), 2);
            TU_ASSERT_NEAR(y[i], x[i], 0.57f * fabsf(wmat_f16_to_f32(dh)) + 1e-6f);
        }
        /* Q4_0: error at most half a step (step = |d|), codes within 0..15 */
        TU_OK(wmat_from_f32(q, WMAT_Q4_0, x, 32 * 64));
        TU_OK(wmat_to_f32(y, q, WMAT_Q4_0, 32 * 64));
        for (int b = 0; b < 64; b++) {
            uint16_t dh;
            memcpy(&dh, q + 18 * b, 2);
            float d = fabsf(wmat_f16_to_f32(dh));
            for (int j = 0; j < 32; j++) TU_ASSERT_NEAR(y[32 * b + j], x[32 * b + j], (fabsf(y[32 * b + j]) < 7.0f * d ? 0.5f : 1.0f) * d * 1.01f + 1e-6f); /* the +8 end is clamped to 7 */
        }
    }
    assert_int_equal(wmat_from_f32(q, WMAT_Q8_0, x, 33), WMAT_ERR_INVALID);
    assert_int_equal(wmat_dtype_bytes(WMAT_Q4_0, 64), 36);
    assert_int_equal(wmat_dtype_bytes(WMAT_Q4_0, 63), 0);
    assert_int_equal(wmat_dtype_bytes(WMAT_F32, UINT64_MAX / 2), 0);
}

static void test_arena_rng_errors(void **state)
{
    (void)state;
    wmat_arena *a;
    TU_OK(wmat_arena_create(&a, 1000));
    void *p = wmat_arena_alloc(a, 100);
    assert_non_null(p);
    assert_int_equal((uintptr_t)p % 64, 0);
    assert_null(wmat_arena_alloc(a, 1000));
    assert_non_null(strstr(wmat_last_error(), "arena full"));
    wmat_arena_reset(a);
    assert_non_null(wmat_arena_alloc(a, 900));
    wmat_arena_free(a);

    wmat_rng r1, r2;
    wmat_rng_seed(&r1, 123);
    wmat_rng_seed(&r2, 123);
    double sum = 0, sum2 = 0;
    for (int i = 0; i < 100000; i++) {
        assert_int_equal(wmat_rng_u64(&r1), wmat_rng_u64(&r2));
        float z = wmat_rng_normal(&r1);
        wmat_rng_normal(&r2);
        sum += z;
        sum2 += z * z;
    }
    assert_true(fabs(sum / 1e5) < 0.02 && fabs(sum2 / 1e5 - 1) < 0.02);

    assert_int_equal(wmat_set_error(WMAT_ERR_IO, "x %d", 5), WMAT_ERR_IO);
    assert_string_equal(wmat_last_error(), "x 5");
    assert_string_equal(wmat_status_str(WMAT_ERR_FORMAT), "bad file");
}

static void test_atomic_file(void **state)
{
    (void)state;
    const char *path = tu_tmp("atomic.bin");
    assert_int_equal(tu_write_file(path, "old", 3), 0);
    wmat_afile af;
    TU_OK(wmat__afile_open(&af, path));
    TU_OK(wmat__afile_write(&af, "new content", 11));
    /* before commit the old file is intact */
    char *buf;
    size_t len;
    TU_OK(wmat_read_file(path, &buf, &len));
    assert_int_equal(len, 3);
    free(buf);
    wmat__afile_abort(&af);
    TU_OK(wmat_read_file(path, &buf, &len));
    assert_memory_equal(buf, "old", 3);
    free(buf);
    TU_OK(wmat__afile_open(&af, path));
    TU_OK(wmat__afile_write(&af, "new", 3));
    TU_OK(wmat__afile_pad(&af, 8));
    TU_OK(wmat__afile_commit(&af));
    TU_OK(wmat_read_file(path, &buf, &len));
    assert_int_equal(len, 8);
    assert_memory_equal(buf, "new\0\0\0\0\0", 8);
    free(buf);
    /* writing into a missing directory fails cleanly */
    assert_int_equal(wmat__afile_open(&af, "/nonexistent-dir/x.bin"), WMAT_ERR_IO);
    assert_non_null(strstr(wmat_last_error(), "/nonexistent-dir/x.bin"));
    /* token files: odd size is an error naming the file */
    const char *tp = tu_tmp("odd.u16");
    assert_int_equal(tu_write_file(tp, "abc", 3), 0);
    int32_t *ids;
    size_t n;
    assert_int_equal(wmat_read_tokens_u16(tp, &ids, &n), WMAT_ERR_FORMAT);
    assert_non_null(strstr(wmat_last_error(), "odd.u16"));
    assert_int_equal(tu_write_file(tp, "\x01\x00\xff\xff", 4), 0);
    TU_OK(wmat_read_tokens_u16(tp, &ids, &n));
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 65535);
    free(ids);
}

/* The comparison helpers every test uses: a NaN anywhere must fail, on one
 * side or on both; an infinity matches only the same infinity. */
static void test_compare_helpers(void **state)
{
    (void)state;
    const float inf = INFINITY, nan = NAN;
    const float ref[4] = {1.0f, -2.0f, 3.0f, 0.0f};
    float a[4] = {1.0f, -2.0f, 3.0f, 0.0f};
    size_t w = 99;
    assert_true(tu_max_abs_diff(a, ref, 4, &w) == 0.0);
    assert_true(tu_close(a, ref, 4, 0, 0, NULL));
    a[2] = 3.001f; /* within 1e-3 + 0 relative, outside 1e-4 */
    double d = tu_max_abs_diff(a, ref, 4, &w);
    assert_int_equal(w, 2);
    assert_true(d > 0.9e-3 && d < 1.1e-3);
    assert_true(tu_close(a, ref, 4, 1.1e-3, 0, NULL));
    assert_true(tu_close(a, ref, 4, 0, 4e-4, NULL)); /* 4e-4 * |3| */
    size_t bad = 99;
    assert_false(tu_close(a, ref, 4, 1e-4, 0, &bad));
    assert_int_equal(bad, 2);
    a[2] = 3.0f;
    /* NaN on one side, either side */
    a[1] = nan;
    assert_true(isinf(tu_max_abs_diff(a, ref, 4, &w)));
    assert_int_equal(w, 1);
    assert_true(isinf(tu_max_abs_diff(ref, a, 4, NULL)));
    assert_false(tu_close(a, ref, 4, 1e30, 1e30, &bad));
    assert_int_equal(bad, 1);
    assert_false(tu_close(ref, a, 4, 1e30, 1e30, NULL));
    /* NaN on both sides: the case hand-written fmax loops let through */
    float b[4] = {1.0f, nan, 3.0f, 0.0f};
    assert_true(isinf(tu_max_abs_diff(a, b, 4, NULL)));
    assert_false(tu_close(a, b, 4, 1e30, 1e30, NULL));
    const double da[2] = {1.0, NAN}, db[2] = {1.0, NAN};
    assert_true(isinf(tu_max_abs_diff_d(da, db, 2, NULL)));
    assert_false(tu_close_d(da, db, 2, 1e30, 1e30, NULL));
    assert_true(isnan(tu_max_abs(a, 4)));
    assert_true(tu_max_abs(ref, 4) == 3.0);
    a[1] = -2.0f;
    /* infinities: the same one matches, any other does not, and a relative
     * tolerance scaled by an infinite reference admits nothing */
    a[0] = inf;
    b[0] = inf, b[1] = -2.0f;
    assert_true(tu_max_abs_diff(a, b, 4, NULL) == 0.0);
    assert_true(tu_close(a, b, 4, 0, 0, NULL));
    b[0] = -inf;
    assert_true(isinf(tu_max_abs_diff(a, b, 4, NULL)));
    assert_false(tu_close(a, b, 4, 1e30, 1e30, NULL));
    a[0] = 1.0f;
    b[0] = inf;
    assert_false(tu_close(a, b, 4, 1e30, 1e30, NULL));
    assert_false(tu_close(b, a, 4, 1e30, 1e30, NULL));
    /* scalars */
    assert_true(tu_near(1.0, 1.0 + 1e-7, 1e-6));
    assert_false(tu_near(1.0, 1.0 + 1e-5, 1e-6));
    assert_false(tu_near(NAN, 1.0, 1e30));
    assert_false(tu_near(1.0, NAN, 1e30));
    assert_false(tu_near(NAN, NAN, INFINITY));
    assert_false(tu_near(1.0, 1.0, NAN)); /* a NaN tolerance admits nothing */
    assert_false(tu_near(INFINITY, 1.0, 1e30));
    assert_false(tu_near(INFINITY, -INFINITY, INFINITY));
    assert_true(tu_near(-INFINITY, -INFINITY, 0));
    assert_true(tu_abs_diff(NAN, NAN) == INFINITY);
    assert_true(tu_max_abs_diff(a, b, 0, NULL) == 0.0);
}

/* The assertion macros, each fed a NaN, must fail their case: run them as a
 * cmocka group in a child process and count the failures. */
static const float k_nan1[2] = {1.0f, NAN}, k_nan2[2] = {1.0f, NAN}, k_ok[2] = {1.0f, 2.0f};
static void must_fail_close_both(void **s) { (void)s; TU_ASSERT_CLOSE(k_nan1, k_nan2, 2, 1e30, 1e30); }
static void must_fail_close_one(void **s) { (void)s; TU_ASSERT_CLOSE(k_ok, k_nan2, 2, 1e30, 1e30); }
static void must_fail_close_tol(void **s) { (void)s; TU_ASSERT_CLOSE(k_ok, k_ok + 1, 1, 0.5, 0); }
static void must_fail_close_d(void **s)
{
    (void)s;
    const double a[1] = {NAN};
    TU_ASSERT_CLOSE_D(a, a, 1, 1e30, 1e30);
}
static void must_fail_near(void **s) { (void)s; TU_ASSERT_NEAR(NAN, NAN, 1e30); }
static void must_fail_below(void **s) { (void)s; TU_ASSERT_BELOW(tu_max_abs_diff(k_nan1, k_nan2, 2, NULL), 1e30); }
static void must_pass(void **s)
{
    (void)s;
    TU_ASSERT_CLOSE(k_ok, k_ok, 2, 0, 0);
    TU_ASSERT_NEAR(1.0, 1.5, 0.5);
    TU_ASSERT_BELOW(0.0, 1e-9);
}

static void test_compare_macros(void **state)
{
    (void)state;
    const struct CMUnitTest cases[] = {
        cmocka_unit_test(must_fail_close_both), cmocka_unit_test(must_fail_close_one),
        cmocka_unit_test(must_fail_close_tol),  cmocka_unit_test(must_fail_close_d),
        cmocka_unit_test(must_fail_near),       cmocka_unit_test(must_fail_below),
        cmocka_unit_test(must_pass),
    };
    fflush(stdout);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* the child's FAILED lines are expected: keep them out of the log */
        if (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr)) _exit(100);
        _exit(_cmocka_run_group_tests("must_fail", cases, sizeof cases / sizeof cases[0], NULL, NULL));
    }
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 6); /* the six must_fail cases, not must_pass */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_exhaustive_roundtrip), cmocka_unit_test(test_f16_rounding_vs_reference),
        cmocka_unit_test(test_f16_arrays_match_scalar),
        cmocka_unit_test(test_bf16),                     cmocka_unit_test(test_ggml_blocks),
        cmocka_unit_test(test_arena_rng_errors),         cmocka_unit_test(test_atomic_file),
        cmocka_unit_test(test_compare_helpers),          cmocka_unit_test(test_compare_macros),
    };
    return tu_run_tests("core", tests, NULL, NULL);
}
