/* The typed key=value parameter schema (src/core/params.h): every type,
 * ranges, unknown keys, bad enums, NaN, CLI flags, round trips and help. */
#include "test_util.h"

#include "core/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat_param_spec k_spec[] = {
    {"bits", WMAT_PARAM_INT, "4", 2, 8, NULL, "bits per weight", NULL},
    {"damp", WMAT_PARAM_FLOAT, "0.01", 0, 100, NULL, "damping", NULL},
    {"sym", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "symmetric grid", "asym"},
    {"act_order", WMAT_PARAM_BOOL, "no", 0, 0, NULL, "columns by H_jj", NULL},
    {"mode", WMAT_PARAM_ENUM, "stage", 0, 0, "stage|block|off", "calibration order", NULL},
    {"note", WMAT_PARAM_STRING, "", 0, 0, NULL, "free text", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

/* The call fails with WMAT_ERR_INVALID and the message holds every piece. */
static void expect_error(int rc, const char *a, const char *b, const char *c)
{
    if (rc != WMAT_ERR_INVALID) fail_msg("expected WMAT_ERR_INVALID, got %d (%s)", rc, wmat_last_error());
    const char *msg = wmat_last_error();
    const char *want[] = {a, b, c};
    for (int i = 0; i < 3; i++)
        if (want[i] && !strstr(msg, want[i])) fail_msg("message '%s' lacks '%s'", msg, want[i]);
}

static void test_defaults_and_types(void **state)
{
    (void)state;
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, k_spec));
    assert_int_equal(ps.n, 6);
    assert_int_equal(wmat__pset_int(&ps, "bits"), 4);
    assert_true(wmat__pset_float(&ps, "damp") == 0.01);
    assert_int_equal(wmat__pset_int(&ps, "sym"), 0);
    assert_int_equal(wmat__pset_int(&ps, "act_order"), 0);
    assert_int_equal(wmat__pset_int(&ps, "mode"), 0);
    assert_string_equal(wmat__pset_str(&ps, "mode"), "stage");
    assert_string_equal(wmat__pset_str(&ps, "note"), "");
    for (int i = 0; i < ps.n; i++) assert_int_equal(ps.v[i].set, 0);

    TU_OK(wmat__pset_set(&ps, "bits", "8"));
    TU_OK(wmat__pset_set(&ps, "damp", "1e-3"));
    TU_OK(wmat__pset_set(&ps, "sym", "TRUE"));
    TU_OK(wmat__pset_set(&ps, "act-order", NULL)); /* '-' == '_', bare bool = true */
    TU_OK(wmat__pset_set(&ps, "mode", "off"));
    TU_OK(wmat__pset_set(&ps, "note", "hello world"));
    assert_int_equal(wmat__pset_int(&ps, "bits"), 8);
    assert_true(wmat__pset_float(&ps, "damp") == 1e-3);
    assert_int_equal(wmat__pset_int(&ps, "sym"), 1);
    assert_int_equal(wmat__pset_int(&ps, "act_order"), 1);
    assert_int_equal(wmat__pset_int(&ps, "mode"), 2);
    assert_string_equal(wmat__pset_str(&ps, "mode"), "off");
    assert_string_equal(wmat__pset_str(&ps, "note"), "hello world");
    assert_true(wmat__pset_is_set(&ps, "bits"));
    assert_true(wmat__pset_knows(&ps, "act-order") && wmat__pset_knows(&ps, "asym") && !wmat__pset_knows(&ps, "sim"));
    TU_OK(wmat__pset_set(&ps, "asym", NULL)); /* the negation */
    assert_int_equal(wmat__pset_int(&ps, "sym"), 0);
    /* the range ends are inside */
    TU_OK(wmat__pset_set(&ps, "bits", "2"));
    TU_OK(wmat__pset_set(&ps, "damp", "100"));
    TU_OK(wmat__pset_set(&ps, "damp", "0"));
    wmat__pset_free(&ps);
    wmat__pset_free(&ps); /* twice is harmless */
}

static void test_rejections(void **state)
{
    (void)state;
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, k_spec));
    expect_error(wmat__pset_set(&ps, "bits", "9"), "bits", "'9'", "2..8");
    expect_error(wmat__pset_set(&ps, "bits", "1"), "bits", "'1'", "2..8");
    expect_error(wmat__pset_set(&ps, "bits", "4.5"), "bits", "'4.5'", "integer");
    expect_error(wmat__pset_set(&ps, "bits", ""), "bits", "''", "2..8");
    expect_error(wmat__pset_set(&ps, "bits", "99999999999999999999"), "bits", "9999", "2..8");
    expect_error(wmat__pset_set(&ps, "damp", "nan"), "damp", "'nan'", "0..100");
    expect_error(wmat__pset_set(&ps, "damp", "NaN"), "damp", "'NaN'", "finite");
    expect_error(wmat__pset_set(&ps, "damp", "inf"), "damp", "'inf'", "finite");
    expect_error(wmat__pset_set(&ps, "damp", "-0.5"), "damp", "'-0.5'", "0..100");
    expect_error(wmat__pset_set(&ps, "damp", "100.5"), "damp", "100.5", "0..100");
    expect_error(wmat__pset_set(&ps, "damp", "0.1x"), "damp", "0.1x", "number");
    expect_error(wmat__pset_set(&ps, "sym", "maybe"), "sym", "'maybe'", "true|false");
    expect_error(wmat__pset_set(&ps, "asym", "true"), "asym", "no value", "sym");
    expect_error(wmat__pset_set(&ps, "mode", "fast"), "mode", "'fast'", "stage|block|off");
    expect_error(wmat__pset_set(&ps, "mode", "stag"), "mode", "'stag'", "stage|block|off");
    expect_error(wmat__pset_set(&ps, "blocks", "3"), "unknown key 'blocks'", "bits, damp", "note");
    /* a rejected value leaves the old one */
    assert_int_equal(wmat__pset_int(&ps, "bits"), 4);
    assert_true(wmat__pset_float(&ps, "damp") == 0.01);
    assert_false(wmat__pset_is_set(&ps, "bits"));
    wmat__pset_free(&ps);

    /* a schema whose default is outside its own range is refused */
    static const wmat_param_spec bad[] = {
        {"k", WMAT_PARAM_INT, "0", 1, 4, NULL, "h", NULL},
        {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
    };
    expect_error(wmat__pset_init(&ps, bad), "schema default", "k", "1..4");
    assert_null(ps.v);
}

static void test_key_value_text(void **state)
{
    (void)state;
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, k_spec));
    TU_OK(wmat__pset_parse_kv(&ps, "bits=3,damp=0.05,act_order,asym,mode=block", ',', 0));
    assert_int_equal(wmat__pset_int(&ps, "bits"), 3);
    assert_true(wmat__pset_float(&ps, "damp") == 0.05);
    assert_int_equal(wmat__pset_int(&ps, "act_order"), 1);
    assert_int_equal(wmat__pset_int(&ps, "sym"), 0);
    assert_true(wmat__pset_is_set(&ps, "sym"));
    assert_int_equal(wmat__pset_int(&ps, "mode"), 1);
    /* the explicitly given values, written out, read back the same */
    char text[256];
    const int len = wmat__pset_format(&ps, 1, ':', text, sizeof text);
    assert_int_equal(len, (int)strlen(text));
    assert_string_equal(text, "bits=3:damp=0.05:sym=false:act_order=true:mode=block");
    wmat_pset back;
    TU_OK(wmat__pset_init(&back, k_spec));
    TU_OK(wmat__pset_parse_kv(&back, text, ':', 0));
    for (int i = 0; i < ps.n; i++) {
        assert_int_equal(back.v[i].i, ps.v[i].i);
        assert_true(back.v[i].f == ps.v[i].f);
    }
    /* a float that needs all 17 digits survives the round trip */
    TU_OK(wmat__pset_set(&back, "damp", "0.1234567890123456789"));
    wmat__param_format(&k_spec[1], &back.v[1], text, sizeof text);
    assert_true(strtod(text, NULL) == back.v[1].f);
    /* too small a buffer: the length it needs, a terminated prefix */
    char small[8];
    assert_int_equal(wmat__pset_format(&ps, 1, ':', small, sizeof small), len);
    assert_int_equal(strlen(small), sizeof small - 1);
    wmat__pset_free(&back);

    expect_error(wmat__pset_parse_kv(&ps, "bits=3,colour=red", ',', 0), "unknown key 'colour'", NULL, NULL);
    TU_OK(wmat__pset_parse_kv(&ps, "bits=5,colour=red", ',', 1)); /* meant for another schema */
    assert_int_equal(wmat__pset_int(&ps, "bits"), 5);
    expect_error(wmat__pset_parse_kv(&ps, "bits=12", ',', 1), "bits", "'12'", "2..8"); /* known keys still checked */
    expect_error(wmat__pset_parse_kv(&ps, "=3", ',', 0), "'=3'", "key=value", NULL);
    TU_OK(wmat__pset_parse_kv(&ps, "", ',', 0));
    TU_OK(wmat__pset_parse_kv(&ps, NULL, ',', 0));
    wmat__pset_free(&ps);
}

static void test_flags(void **state)
{
    (void)state;
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, k_spec));
    char *argv[] = {"MODEL", "--bits", "3", "--damp=0.2", "--act-order", "--asym", "--mode", "off", "--other", "x", NULL};
    const int argc = 10;
    unsigned char used[10];
    TU_OK(wmat__pset_parse_args(&ps, argc, argv, used));
    const unsigned char want[10] = {0, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    assert_memory_equal(used, want, sizeof want);
    assert_int_equal(wmat__pset_int(&ps, "bits"), 3);
    assert_true(wmat__pset_float(&ps, "damp") == 0.2);
    assert_int_equal(wmat__pset_int(&ps, "act_order"), 1);
    assert_int_equal(wmat__pset_int(&ps, "sym"), 0);
    assert_int_equal(wmat__pset_int(&ps, "mode"), 2);
    /* one flag at a time */
    assert_int_equal(wmat__pset_flag(&ps, "--unknown", "1"), 0);
    assert_int_equal(wmat__pset_flag(&ps, "bits", "1"), 0); /* not a flag */
    assert_int_equal(wmat__pset_flag(&ps, "--bits", "7"), 2);
    assert_int_equal(wmat__pset_flag(&ps, "--bits=6", "junk"), 1);
    assert_int_equal(wmat__pset_int(&ps, "bits"), 6);
    expect_error(wmat__pset_flag(&ps, "--bits", NULL), "--bits", "needs a value", "2..8");
    expect_error(wmat__pset_flag(&ps, "--bits", "9"), "bits", "'9'", "2..8");
    expect_error(wmat__pset_flag(&ps, "--damp", "nan"), "damp", "nan", "0..100");
    expect_error(wmat__pset_flag(&ps, "--asym=1", NULL), "--asym", "no value", NULL);
    wmat__pset_free(&ps);
    /* a bool one way and then the other: the two flags exclude each other */
    TU_OK(wmat__pset_init(&ps, k_spec));
    char *both[] = {"--sym", "--asym"};
    expect_error(wmat__pset_parse_args(&ps, 2, both, NULL), "--sym and --asym exclude each other", NULL, NULL);
    wmat__pset_free(&ps);
    TU_OK(wmat__pset_init(&ps, k_spec));
    char *twice[] = {"--act-order", "--act-order=0"};
    expect_error(wmat__pset_parse_args(&ps, 2, twice, NULL), "--act-order", "both", NULL);
    wmat__pset_free(&ps);
}

static void test_help_and_merge(void **state)
{
    (void)state;
    const int need = wmat__params_help(k_spec, 1, NULL, 0);
    char *h = malloc((size_t)need + 1);
    assert_int_equal(wmat__params_help(k_spec, 1, h, (size_t)need + 1), need);
    print_message("%s", h);
    const char *lines[] = {
        "  --bits N                 bits per weight (2..8; default 4)\n",
        "  --damp X                 damping (0..100; default 0.01)\n",
        "  --sym, --asym            symmetric grid (default --asym)\n",
        "  --act-order              columns by H_jj (default no)\n",
        "  --mode stage|block|off   calibration order (default stage)\n",
        "  --note S                 free text (default none)\n",
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        if (!strstr(h, lines[i])) fail_msg("help lacks line:\n%sin:\n%s", lines[i], h);
    free(h);
    char kv[1024];
    wmat__params_help(k_spec, 0, kv, sizeof kv);
    assert_non_null(strstr(kv, "  bits=N "));
    assert_non_null(strstr(kv, "  sym=true|false "));
    assert_non_null(strstr(kv, "  act_order=true|false "));

    /* merge: new keys added once, same key with another range refused */
    wmat_param_spec u[8];
    int n = 0;
    TU_OK(wmat__params_merge(u, 8, &n, k_spec));
    TU_OK(wmat__params_merge(u, 8, &n, k_spec));
    assert_int_equal(n, 6);
    static const wmat_param_spec more[] = {
        {"rank", WMAT_PARAM_INT, "8", 1, 4096, NULL, "rank", NULL},
        {"bits", WMAT_PARAM_INT, "4", 2, 8, NULL, "other words, same meaning", NULL},
        {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
    };
    TU_OK(wmat__params_merge(u, 8, &n, more));
    assert_int_equal(n, 7);
    assert_string_equal(u[6].name, "rank");
    static const wmat_param_spec clash[] = {
        {"bits", WMAT_PARAM_INT, "4", 1, 16, NULL, "bits", NULL},
        {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
    };
    expect_error(wmat__params_merge(u, 8, &n, clash), "bits", "different", NULL);
    static const wmat_param_spec two[] = {
        {"a", WMAT_PARAM_INT, "1", 0, 4, NULL, "a", NULL},
        {"b", WMAT_PARAM_INT, "1", 0, 4, NULL, "b", NULL},
        {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
    };
    expect_error(wmat__params_merge(u, 8, &n, two), "more than 8", NULL, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_types),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_key_value_text),
        cmocka_unit_test(test_flags),
        cmocka_unit_test(test_help_and_merge),
    };
    return tu_run_tests("params", tests, NULL, NULL);
}
