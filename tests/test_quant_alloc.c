/* Bit allocation (src/quant/alloc.c): the knapsack solver against brute
 * force, and the whole allocation on stories260K: budget kept, the model's
 * weights untouched, the override list reproducing the chosen bits, the
 * measured loss increases ordered by bits, bad inputs refused. */
#include "support/test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant/methods.h"

/* every assignment of nc candidates to nt items, costs in the solver's units */
static double brute(const double *bits, const double *dl, int nt, int nc, double budget)
{
    int pick[16] = {0};
    double best = INFINITY;
    for (;;) {
        double u = 0, v = 0;
        for (int i = 0; i < nt; i++) {
            u += wmat__alloc_units(bits[i * nc + pick[i]], budget);
            v += dl[i * nc + pick[i]];
        }
        if (u <= WMAT_ALLOC_UNITS && v < best) best = v;
        int i = 0;
        while (i < nt && ++pick[i] == nc) pick[i++] = 0;
        if (i == nt) break;
    }
    return best;
}

static void test_knapsack_is_optimal(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    for (int trial = 0; trial < 40; trial++) {
        const int nt = 2 + trial % 7, nc = 2 + trial % 3;
        double bits[16 * 4], dl[16 * 4], lo = 0, hi = 0;
        for (int i = 0; i < nt; i++) {
            const double n = 100 + 1000 * wmat_rng_uniform(&r);
            double mn = INFINITY, mx = 0;
            for (int c = 0; c < nc; c++) {
                const double b = 2 + c + wmat_rng_uniform(&r); /* more bits, */
                bits[i * nc + c] = b * n;
                dl[i * nc + c] = (0.5 + wmat_rng_uniform(&r)) * n / (b * b) - 0.01 * (trial % 5 == 0); /* less loss, mostly */
                mn = fmin(mn, b * n), mx = fmax(mx, b * n);
            }
            lo += mn, hi += mx;
        }
        const double budget = lo + (hi - lo) * (0.2 + 0.6 * wmat_rng_uniform(&r)) + nt * hi / WMAT_ALLOC_UNITS;
        int choice[16];
        TU_OK(wmat__alloc_knapsack(bits, dl, nt, nc, budget, choice));
        double v = 0, b = 0;
        for (int i = 0; i < nt; i++) {
            assert_true(choice[i] >= 0 && choice[i] < nc);
            v += dl[i * nc + choice[i]];
            b += bits[i * nc + choice[i]];
        }
        assert_true(b <= budget);
        const double opt = brute(bits, dl, nt, nc, budget);
        if (!(fabs(v - opt) <= 1e-9 * fabs(opt))) fail_msg("trial %d: knapsack %.12g, brute force %.12g", trial, v, opt);
    }
    /* nothing fits: an error that names both budgets */
    const double bits[2] = {100, 200}, dl[2] = {1, 0};
    int choice[1];
    assert_int_equal(wmat__alloc_knapsack(bits, dl, 1, 2, 50, choice), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "below the cheapest"));
}

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static uint64_t weights_hash(wmat_model *m)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        size_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
        const unsigned char *p = t->data;
        for (size_t k = 0; k < n * 4 && t->dtype == WMAT_F32; k++) h = (h ^ p[k]) * 1099511628211ull;
    }
    return h;
}

static void test_allocate_stories260k(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    int32_t *cal;
    size_t ncal;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &ncal));
    wmat_model *m = load(mp);
    const uint64_t h0 = weights_hash(m);
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = "rtn";
    p.calib = cal;
    p.n_calib = 8 * 128;
    p.calib_ctx = 128;
    p.n_threads = 1;
    const char *cands = "rtn:2:oc,rtn:4:oc,rtn:8:oc";
    char *ov = NULL;
    wmat_alloc_report ar;
    TU_OK(wmat_quantize_allocate(m, &p, cands, 4.0, 4, &ov, &ar));
    assert_true(weights_hash(m) == h0); /* the model is as it was */
    assert_int_equal(ar.n_candidates, 3);
    assert_int_equal(ar.n_tensors, 5 * 7);
    assert_true(ar.bits_per_weight <= 4.0);
    assert_true(ar.bits_per_weight > 3.0); /* the budget is used */
    double sum[3] = {0};
    int used[3] = {0};
    for (int i = 0; i < ar.n_tensors; i++) {
        const wmat_alloc_tensor *t = &ar.tensors[i];
        for (int c = 0; c < 3; c++) {
            assert_true(isfinite(t->dloss[c]));
            sum[c] += t->dloss[c];
        }
        assert_true(t->bits_per_weight[0] < t->bits_per_weight[1] && t->bits_per_weight[1] < t->bits_per_weight[2]);
        used[t->choice]++;
    }
    /* fewer bits cost more loss, summed over the tensors */
    assert_true(sum[0] > sum[1] && sum[1] > sum[2]);
    assert_true(sum[0] > 0);
    assert_true(used[0] + used[1] + used[2] == ar.n_tensors);
    /* the override list reproduces the chosen bits */
    p.overrides = ov;
    wmat_quantize_report rep;
    TU_OK(wmat_quantize_model(m, &p, &rep));
    TU_ASSERT_NEAR(rep.bits_per_weight, ar.bits_per_weight, 1e-9);
    int k = 0;
    for (int i = 0; i < rep.n_tensors; i++) {
        if (!rep.tensors[i].quantized) continue;
        assert_string_equal(rep.tensors[i].name, ar.tensors[k].name);
        TU_ASSERT_NEAR(rep.tensors[i].bits_per_weight, ar.tensors[k].bits_per_weight[ar.tensors[k].choice], 1e-9);
        k++;
    }
    assert_int_equal(k, ar.n_tensors);
    wmat_quantize_report_free(&rep);
    wmat_alloc_report_free(&ar);
    free(ov);
    wmat_model_free(m);

    /* a budget below the cheapest, a bad candidate, no calibration */
    m = load(mp);
    p.overrides = NULL;
    assert_int_equal(wmat_quantize_allocate(m, &p, cands, 1.0, 4, &ov, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "below what the cheapest"));
    assert_null(ov);
    assert_true(weights_hash(m) == h0);
    assert_int_equal(wmat_quantize_allocate(m, &p, "rtn:2:oc,nosuch:3", 4.0, 4, &ov, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "nosuch"));
    assert_int_not_equal(wmat_quantize_allocate(m, &p, "rtn:2:oc,,rtn:4:oc", 4.0, 4, &ov, NULL), WMAT_OK);
    p.calib = NULL;
    assert_int_equal(wmat_quantize_allocate(m, &p, cands, 4.0, 4, &ov, NULL), WMAT_ERR_INVALID);
    assert_true(weights_hash(m) == h0);
    wmat_model_free(m);
    free(cal);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_knapsack_is_optimal),
        cmocka_unit_test(test_allocate_stories260k),
    };
    return tu_run_tests("quant_alloc", tests, NULL, NULL);
}
