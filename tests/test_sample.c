/* Sampling (src/model/sample.c) against its definitions: greedy is the first
 * maximum; the draws of each cut (top-k, top-p over the renormalized top-k,
 * min-p) come only from the tokens the definition keeps, with frequencies
 * proportional to their probabilities (5-sigma bounds over 200 000 draws);
 * the repetition penalty follows llama.cpp's rule, once per token; without
 * cuts the extended sampler is run.c's. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NV 8

/* probabilities of logits at temperature t */
static void probs(const float *l, int n, float t, double *p)
{
    double mx = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) mx = l[i] / t > mx ? l[i] / t : mx;
    for (int i = 0; i < n; i++) z += p[i] = exp(l[i] / t - mx);
    for (int i = 0; i < n; i++) p[i] /= z;
}

/* Draw `draws` tokens with p and check the frequencies against want (a
 * distribution over NV; zero entries must never be drawn). */
static void check_draws(const float *logits, const wmat_sampler_params *sp, const double *want, int draws)
{
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    long count[NV] = {0};
    float l[NV];
    for (int d = 0; d < draws; d++) {
        memcpy(l, logits, sizeof l);
        int t = wmat_sample_ex(l, NV, sp, NULL, 0, &r);
        assert_true(t >= 0 && t < NV);
        count[t]++;
    }
    for (int i = 0; i < NV; i++) {
        if (want[i] == 0) {
            if (count[i]) fail_msg("token %d drawn %ld times but the cut removes it", i, count[i]);
            continue;
        }
        const double f = (double)count[i] / draws, sd = sqrt(want[i] * (1 - want[i]) / draws);
        TU_ASSERT_NEAR(f, want[i], 5 * sd + 1e-9);
    }
}

static const float k_logits[NV] = {2.0f, 1.5f, 1.4f, 0.3f, 0.0f, -0.5f, -1.0f, -3.0f};

static void test_greedy_first_max(void **state)
{
    (void)state;
    float l[5] = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 0;
    assert_int_equal(wmat_sample_ex(l, 5, &sp, NULL, 0, NULL), 1);
    assert_int_equal(wmat_sample(l, 5, 0.0f, 0.9f, NULL), 1);
}

static void test_top_k(void **state)
{
    (void)state;
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 0.7f, sp.top_k = 3, sp.top_p = 1.0f;
    double p[NV], want[NV] = {0};
    probs(k_logits, NV, sp.temp, p);
    const double z = p[0] + p[1] + p[2];
    for (int i = 0; i < 3; i++) want[i] = p[i] / z;
    check_draws(k_logits, &sp, want, 200000);
}

static void test_top_p_after_top_k(void **state)
{
    (void)state;
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 1.0f, sp.top_k = 5, sp.top_p = 0.7f;
    double p[NV], want[NV] = {0};
    probs(k_logits, NV, sp.temp, p);
    /* nucleus of the renormalized top-5: the shortest prefix whose mass exceeds 0.7 */
    double z5 = 0, cum = 0;
    for (int i = 0; i < 5; i++) z5 += p[i];
    int keep = 0;
    while (keep < 5) {
        cum += p[keep++] / z5;
        if (cum > 0.7) break;
    }
    assert_true(keep >= 2 && keep < 5); /* the case is not degenerate */
    double zk = 0;
    for (int i = 0; i < keep; i++) zk += p[i];
    for (int i = 0; i < keep; i++) want[i] = p[i] / zk;
    check_draws(k_logits, &sp, want, 200000);
}

static void test_min_p(void **state)
{
    (void)state;
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 1.0f, sp.top_p = 1.0f, sp.min_p = 0.15f;
    double p[NV], want[NV] = {0}, z = 0;
    probs(k_logits, NV, sp.temp, p);
    for (int i = 0; i < NV; i++)
        if (p[i] >= 0.15 * p[0]) z += p[i];
    for (int i = 0; i < NV; i++) want[i] = p[i] >= 0.15 * p[0] ? p[i] / z : 0;
    assert_true(want[3] > 0 && want[4] == 0); /* ratios to the best: token 3 exp(-1.7) = 0.18, token 4 exp(-2) = 0.14 */
    check_draws(k_logits, &sp, want, 200000);
}

/* llama.cpp's penalty: positive logits divided, negative multiplied, each
 * token once, only within the last repeat_last_n. */
static void test_repeat_penalty(void **state)
{
    (void)state;
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 0, sp.repeat_penalty = 2.0f, sp.repeat_last_n = 3;
    float l[4] = {3.0f, 2.0f, -1.0f, -1.5f};
    const int32_t hist[5] = {0, 1, 0, 0, 2}; /* window: 0, 0, 2 (token 1 is older) */
    assert_int_equal(wmat_sample_ex(l, 4, &sp, hist, 5, NULL), 1);
    const float want[4] = {1.5f, 2.0f, -2.0f, -1.5f}; /* 0 once (not 3/2/2), 2 doubled, 1 and 3 untouched */
    TU_ASSERT_CLOSE(l, want, 4, 0, 0);
}

/* No cuts: the same draws as wmat_sample (run.c's order) for the same stream. */
static void test_plain_equals_run_c(void **state)
{
    (void)state;
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.temp = 0.9f, sp.top_p = 0.8f;
    wmat_rng a, b;
    wmat_rng_seed(&a, 5);
    wmat_rng_seed(&b, 5);
    for (int d = 0; d < 2000; d++) {
        float x[NV], y[NV];
        memcpy(x, k_logits, sizeof x);
        memcpy(y, k_logits, sizeof y);
        assert_int_equal(wmat_sample_ex(x, NV, &sp, NULL, 0, &a), wmat_sample(y, NV, sp.temp, sp.top_p, &b));
    }
}

static void test_bad_params(void **state)
{
    (void)state;
    float l[NV];
    memcpy(l, k_logits, sizeof l);
    wmat_sampler_params sp = wmat_sampler_default_params();
    sp.repeat_penalty = 0;
    assert_true(wmat_sample_ex(l, NV, &sp, NULL, 0, NULL) < 0);
    sp = wmat_sampler_default_params();
    sp.min_p = 1.5f;
    assert_true(wmat_sample_ex(l, NV, &sp, NULL, 0, NULL) < 0);
    sp = wmat_sampler_default_params();
    sp.top_k = -1;
    assert_true(wmat_sample_ex(l, NV, &sp, NULL, 0, NULL) < 0);
    assert_true(wmat_sample_ex(l, 0, &sp, NULL, 0, NULL) < 0);
}

/* The CLI as llama.cpp users type it: -m -p -n (n new tokens) gives the
 * same greedy text as the positional form with --steps counting the prompt;
 * a prompt longer than --steps is refused instead of cut. */
static void test_cli_short_forms(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    char cmd[4096];
    int rc;
    snprintf(cmd, sizeof cmd, "%s generate -m %s -p 'Once upon a time' -n 20 --temp 0 -t 1 2>/dev/null", tu_cli(), mp);
    char *a = tu_run(cmd, &rc);
    assert_int_equal(rc, 0);
    /* "Once upon a time" is 4 tokens + BOS: 5 positions of prompt */
    snprintf(cmd, sizeof cmd, "%s generate %s --prompt 'Once upon a time' --steps 25 --temp 0 --threads 1 2>/dev/null", tu_cli(), mp);
    char *b = tu_run(cmd, &rc);
    assert_int_equal(rc, 0);
    assert_string_equal(a, b);
    assert_true(strlen(a) > strlen("Once upon a time") + 20);
    free(a);
    free(b);
    snprintf(cmd, sizeof cmd, "%s generate %s --prompt 'Once upon a time there was' --steps 3 2>&1", tu_cli(), mp);
    char *e = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(e, "use -n N"));
    free(e);
    snprintf(cmd, sizeof cmd, "%s generate -m %s -n 5 --top-k -2 2>&1", tu_cli(), mp);
    e = tu_run(cmd, &rc);
    assert_int_equal(rc, 2);
    free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_first_max), cmocka_unit_test(test_top_k),         cmocka_unit_test(test_top_p_after_top_k),
        cmocka_unit_test(test_min_p),            cmocka_unit_test(test_repeat_penalty), cmocka_unit_test(test_plain_equals_run_c),
        cmocka_unit_test(test_bad_params),       cmocka_unit_test(test_cli_short_forms),
    };
    return tu_run_tests("sample", tests, NULL, NULL);
}
