/* LQ-LoRA (src/decomp/lqlora.c) through the decomposition driver on
 * mix4m (q, k and gate projections; widths that pack): the stored sum (packed part + factors) is as far from W as
 * reported; a correction never makes the error larger than the quantized
 * part alone and a larger rank never worse than a smaller one; the budget
 * plan stays within its bits per weight; the model runs. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

/* every decomposed matrix's reported error, checked against its stored form */
static void decompose(const char *path, const char *kv, double *errs, int n_max)
{
    wmat_model *m = load(path), *ref = load(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "lqlora";
    p.method_params = kv;
    p.targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_K) | (1u << WMAT_LIN_GATE);
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_true(rep.n_tensors <= n_max);
    for (int i = 0; i < rep.n_tensors; i++) {
        const wmat_tensor *t = wmat_model_find(m, rep.tensors[i].name), *t0 = wmat_model_find(ref, rep.tensors[i].name);
        const size_t n = (size_t)(t0->shape[0] * t0->shape[1]);
        float *D = malloc(n * sizeof(float));
        TU_OK(wmat_tensor_dequant_rows(t, 0, t0->shape[0], D));
        /* packing rounds the group scales to fp16: the stored form may differ slightly */
        TU_ASSERT_NEAR(tu_rel_frob(D, t0->data, n), rep.tensors[i].rel_error, 2e-3);
        errs[i] = rep.tensors[i].rel_error;
        free(D);
    }
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 8;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t ids[8] = {1, 5, 9, 30, 2, 7, 100, 3};
    const int V = wmat_model_config(m)->vocab_size;
    float *lg = malloc(sizeof(float) * 8 * (size_t)V);
    TU_OK(wmat_forward(rt, ids, 8, lg));
    for (size_t i = 0; i < 8 * (size_t)V; i++) assert_true(isfinite(lg[i]));
    free(lg);
    wmat_runtime_free(rt);
    wmat_decompose_report_free(&rep);
    wmat_model_free(m);
    wmat_model_free(ref);
}

static void test_errors(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    double e0[64], e4[64], e8[64];
    decompose(path, "bits=3,group=64,rank=0,iters=3", e0, 64);
    decompose(path, "bits=3,group=64,rank=4,iters=3", e4, 64);
    decompose(path, "bits=3,group=64,rank=8,iters=3", e8, 64);
    for (int i = 0; i < 18; i++) {
        if (!(e4[i] <= e0[i] + 1e-9)) fail_msg("matrix %d: rank 4 error %g above the quantized part's %g", i, e4[i], e0[i]);
        if (!(e8[i] <= e4[i] + 1e-3)) fail_msg("matrix %d: rank 8 error %g above rank 4's %g", i, e8[i], e4[i]);
    }
}

static void test_budget(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "lqlora";
    p.method_params = "bpw=3.5,group=64,iters=2";
    p.targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_K) | (1u << WMAT_LIN_GATE);
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    double bits = 0, w = 0;
    for (int i = 0; i < rep.n_tensors; i++) {
        const double n = (double)(rep.tensors[i].rows * rep.tensors[i].cols);
        bits += rep.tensors[i].bits_per_weight * n;
        w += n;
    }
    /* the plan's estimate leaves out a few bytes of packing; stays near */
    if (!(bits / w <= 3.5 * 1.02)) fail_msg("average %g bits per weight over a budget of 3.5", bits / w);
    wmat_decompose_report_free(&rep);
    wmat_model_free(m);
    /* a budget below every candidate is refused before anything changes */
    m = load(path);
    p.method_params = "bpw=1";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "below the smallest"));
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "f32");
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_errors), cmocka_unit_test(test_budget)};
    return tu_run_tests("lqlora", tests, NULL, NULL);
}
