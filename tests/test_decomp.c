/* Decomposition (src/decomp): truncated SVD held to its definition.
 *   - at full rank the decomposed model gives the fp32 model's logits
 *     (stories260K and mix4m) within 1e-4 of the largest logit;
 *   - at rank r the reported error is Eckart-Young's sqrt(sum_{i>=r}
 *     s_i^2 / sum s_i^2), and it is the actual distance of the stored
 *     factors' product from W;
 *   - the native directory round-trips a low-rank model bit for bit;
 *   - the method's keys work the same as public fields, method_params
 *     text and per-tensor overrides (keep leaves a matrix dense);
 *   - bad parameters are refused with a message, the model untouched. */
#include "test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

/* Logits of the first T tokens of a fixed sequence, batched forward. */
static float *logits_of(wmat_model *m, int T)
{
    const wmat_config *c = wmat_model_config(m);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((t * 31 + 7) % c->vocab_size);
    float *lg = malloc((size_t)T * (size_t)c->vocab_size * sizeof(float));
    TU_OK(wmat_forward(rt, ids, T, lg));
    free(ids);
    wmat_runtime_free(rt);
    return lg;
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double mx = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        const double d = fabs((double)a[i] - b[i]);
        if (d > mx) mx = d;
        if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
    }
    return scale > 0 ? mx / scale : mx;
}

static void full_rank_case(const char *rel)
{
    TU_NEED_DATA(path, rel);
    wmat_model *m = load(path);
    const int T = 24, V = wmat_model_config(m)->vocab_size;
    float *ref = logits_of(m, T);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = 1 << 20; /* capped at min(rows, cols) */
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_int_equal(rep.n_tensors, wmat_model_config(m)->n_layers * WMAT_LIN_COUNT);
    for (int i = 0; i < rep.n_tensors; i++) {
        const wmat_decompose_tensor *d = &rep.tensors[i];
        assert_int_equal(d->rank, d->rows < d->cols ? d->rows : d->cols);
        assert_true(d->rel_error < 1e-12);
    }
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "lowrank");
    float *got = logits_of(m, T);
    const double e = max_rel(got, ref, (size_t)T * (size_t)V);
    print_message("%s: full-rank SVD logits within %.2e of the largest logit\n", rel, e);
    if (!(e < 1e-4)) fail_msg("%s: full-rank SVD moved the logits by %g", rel, e);
    wmat_decompose_report_free(&rep);
    free(ref), free(got);
    wmat_model_free(m);
}

static void test_full_rank_stories(void **state)
{
    (void)state;
    full_rank_case("models/stories260K.bin");
}

static void test_full_rank_mix4m(void **state)
{
    (void)state;
    full_rank_case("models/mix4m.bin");
}

/* Eckart-Young on a synthetic model: the reported error is the truncated
 * tail of the spectrum, and the stored product is that far from W. */
static void test_truncation_error(void **state)
{
    (void)state;
    wmat_config c = tu_config(64, 96, 1, 4, 4, 32, 16);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 7, 0.05f));
    wmat_tensor *W = wmat_model_linear(m, 0, WMAT_LIN_UP);
    const int64_t R = W->shape[0], C = W->shape[1];
    float *W0 = malloc((size_t)(R * C) * sizeof(float));
    memcpy(W0, W->data, (size_t)(R * C) * sizeof(float));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = 10;
    p.targets = 1u << WMAT_LIN_UP;
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_int_equal(rep.n_tensors, 1);
    assert_int_equal(rep.tensors[0].rank, 10);
    float *D = malloc((size_t)(R * C) * sizeof(float));
    TU_OK(wmat_tensor_dequant_rows(W, 0, R, D));
    double num = 0, den = 0;
    for (int64_t i = 0; i < R * C; i++) {
        num += ((double)D[i] - W0[i]) * ((double)D[i] - W0[i]);
        den += (double)W0[i] * W0[i];
    }
    const double actual = sqrt(num / den), reported = rep.tensors[0].rel_error;
    print_message("rank 10 of (%lld x %lld): reported %.6f, actual %.6f\n", (long long)R, (long long)C, reported, actual);
    assert_true(reported > 0.1 && reported < 1.0); /* a random matrix is far from rank 10 */
    assert_true(fabs(actual - reported) < 1e-5 * (1 + reported));
    assert_true(fabs(rep.tensors[0].bits_per_weight - 32.0 * 10 * (double)(R + C) / (double)(R * C)) < 1e-9);
    /* energy: the fewest components holding 90% */
    wmat_decompose_report_free(&rep);
    wmat_model_free(m);
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 7, 0.05f));
    p.rank = 0;
    p.energy = 0.9f;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_true(rep.tensors[0].rel_error <= sqrt(0.1) + 1e-9);
    assert_true(rep.tensors[0].rank > 10 && rep.tensors[0].rank < 64);
    wmat_decompose_report_free(&rep);
    free(W0), free(D);
    wmat_model_free(m);
}

/* Distance of a model's (dequantized) gate projection of layer 0 from W0. */
static double rel_dist(wmat_tensor *W, const float *W0)
{
    const int64_t R = W->shape[0], C = W->shape[1];
    float *D = malloc((size_t)(R * C) * sizeof(float));
    TU_OK(wmat_tensor_dequant_rows(W, 0, R, D));
    double num = 0, den = 0;
    for (int64_t i = 0; i < R * C; i++) {
        num += ((double)D[i] - W0[i]) * ((double)D[i] - W0[i]);
        den += (double)W0[i] * W0[i];
    }
    free(D);
    return sqrt(num / den);
}

/* One rank-r decomposition of layer 0's gate projection with method_params;
 * the reported error in *reported, the actual distance returned. */
static double gate_svd(const char *path, const float *Wsyn, int rank, const char *params, double *reported)
{
    wmat_model *m;
    float *W0;
    int64_t R, C;
    wmat_config c = tu_config(64, 96, 1, 4, 4, 32, 16);
    if (path) m = load(path);
    else {
        TU_OK(wmat_model_create(&m, &c));
        TU_OK(wmat_model_init_random(m, 7, 0.05f));
    }
    wmat_tensor *W = wmat_model_linear(m, 0, WMAT_LIN_GATE);
    R = W->shape[0], C = W->shape[1];
    if (Wsyn) memcpy(W->data, Wsyn, (size_t)(R * C) * sizeof(float));
    W0 = malloc((size_t)(R * C) * sizeof(float));
    memcpy(W0, W->data, (size_t)(R * C) * sizeof(float));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = rank;
    p.method_params = params;
    p.targets = 1u << WMAT_LIN_GATE;
    wmat_decompose_report rep;
    TU_OK(wmat_decompose_model(m, &p, &rep));
    assert_int_equal(rep.tensors[0].rank, rank);
    assert_non_null(strstr(rep.tensors[0].name, "layers.0."));
    *reported = rep.tensors[0].rel_error;
    const double d = rel_dist(wmat_model_linear(m, 0, WMAT_LIN_GATE), W0);
    wmat_decompose_report_free(&rep);
    wmat_model_free(m);
    free(W0);
    return d;
}

/* The randomized range finder: its reported error is the stored factors'
 * distance, never below Eckart-Young's (the exact SVD's) and within 2% of
 * it on a trained matrix with two power iterations; an exactly rank-8
 * matrix comes back exactly; energy (which needs the whole spectrum) is
 * refused with it. */
static void test_randomized_svd(void **state)
{
    (void)state;
    TU_NEED_DATA(mx, "models/mix4m.bin");
    double rep_exact, rep_rand, rep_p0;
    const double d_exact = gate_svd(mx, NULL, 32, "solver=exact", &rep_exact);
    const double d_rand = gate_svd(mx, NULL, 32, "solver=randomized", &rep_rand);
    const double d_p0 = gate_svd(mx, NULL, 32, "solver=randomized,power_iters=0", &rep_p0);
    print_message("mix4m gate 704x256 rank 32: exact %.6f, randomized q=2 %.6f, q=0 %.6f\n", rep_exact, rep_rand, rep_p0);
    assert_true(fabs(d_exact - rep_exact) < 1e-5 && fabs(d_rand - rep_rand) < 1e-5 && fabs(d_p0 - rep_p0) < 1e-5);
    assert_true(rep_rand >= rep_exact - 1e-9 && rep_rand <= 1.02 * rep_exact);
    assert_true(rep_p0 >= rep_exact - 1e-9);
    /* auto leaves a small matrix to the exact solver: the same numbers */
    double rep_auto;
    gate_svd(mx, NULL, 32, NULL, &rep_auto);
    assert_true(rep_auto == rep_exact);

    /* W = A B of rank 8, 96 x 64 */
    float *Ws = malloc(96 * 64 * sizeof(float));
    wmat_rng rng;
    wmat_rng_seed(&rng, 3);
    float A[96 * 8], B[8 * 64];
    for (int i = 0; i < 96 * 8; i++) A[i] = wmat_rng_normal(&rng);
    for (int i = 0; i < 8 * 64; i++) B[i] = wmat_rng_normal(&rng);
    for (int i = 0; i < 96; i++)
        for (int j = 0; j < 64; j++) {
            double acc = 0;
            for (int t = 0; t < 8; t++) acc += (double)A[i * 8 + t] * B[t * 64 + j];
            Ws[i * 64 + j] = (float)acc;
        }
    double rep8;
    const double d8 = gate_svd(NULL, Ws, 8, "solver=randomized,power_iters=0", &rep8);
    print_message("rank-8 matrix: reported %.3g, actual %.3g\n", rep8, d8);
    assert_true(d8 < 1e-6 && rep8 < 1e-6);
    free(Ws);

    wmat_config c = tu_config(64, 96, 1, 4, 4, 32, 16);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 7, 0.05f));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.energy = 0.9f;
    p.method_params = "solver=randomized";
    wmat_decompose_report rep;
    assert_int_equal(wmat_decompose_model(m, &p, &rep), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "randomized needs rank"));
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_GATE)), "f32");
    wmat_model_free(m);
}

/* A low-rank model through the native directory: same kinds, same logits. */
static void test_native_roundtrip(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = 24;
    p.dtype = WMAT_BF16;
    TU_OK(wmat_decompose_model(m, &p, NULL));
    float *a = logits_of(m, 16);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    const char *dir = tu_tmp("svd24");
    TU_OK(wmat_model_save(m, dir, &sp));
    wmat_model *r = load(dir);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(r, 3, WMAT_LIN_DOWN)), "lowrank");
    char desc[64];
    wmat_tensor_describe(wmat_model_linear(r, 3, WMAT_LIN_DOWN), desc, sizeof desc);
    assert_string_equal(desc, "lowrank r24 bf16");
    float *b = logits_of(r, 16);
    assert_memory_equal(a, b, (size_t)16 * 512 * sizeof(float));
    /* GGUF has no low-rank type: a clear refusal, no file */
    sp.format = WMAT_FMT_GGUF;
    assert_int_equal(wmat_model_save(r, tu_tmp("svd24.gguf"), &sp), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "lowrank"));
    free(a), free(b);
    wmat_model_free(m);
    wmat_model_free(r);
}

/* Keys through method_params and per tensor through overrides: the same
 * result as the public fields, a tensor's own rank, keep leaves it dense,
 * and every bad setting is refused before any matrix changes. */
static void test_keys_and_overrides(void **state)
{
    (void)state;
    wmat_config c = tu_config(64, 96, 2, 4, 4, 32, 16);
    wmat_model *a, *b;
    TU_OK(wmat_model_create(&a, &c));
    TU_OK(wmat_model_init_random(a, 3, 0.05f));
    TU_OK(wmat_model_create(&b, &c));
    TU_OK(wmat_model_init_random(b, 3, 0.05f));
    wmat_decompose_params p = wmat_decompose_default_params();
    p.rank = 6;
    wmat_decompose_report ra, rb;
    TU_OK(wmat_decompose_model(a, &p, &ra));
    p = wmat_decompose_default_params();
    p.method_params = "rank=6";
    TU_OK(wmat_decompose_model(b, &p, &rb));
    assert_int_equal(ra.n_tensors, rb.n_tensors);
    for (int i = 0; i < ra.n_tensors; i++) {
        assert_int_equal(ra.tensors[i].rank, rb.tensors[i].rank);
        assert_true(ra.tensors[i].rel_error == rb.tensors[i].rel_error);
        assert_string_equal(rb.tensors[i].method, p.method);
    }
    wmat_decompose_report_free(&ra);
    wmat_decompose_report_free(&rb);
    wmat_model_free(a);
    wmat_model_free(b);
    /* overrides: q_proj rank 12, layer 1's down_proj kept, the rest rank 6 */
    TU_OK(wmat_model_create(&a, &c));
    TU_OK(wmat_model_init_random(a, 3, 0.05f));
    p = wmat_decompose_default_params();
    p.rank = 6;
    p.overrides = "q_proj=svd:rank=12,layers.1.mlp.down_proj=keep,k_proj=svd:rank=0:energy=0.5";
    TU_OK(wmat_decompose_model(a, &p, &ra));
    assert_int_equal(ra.n_tensors, 2 * WMAT_LIN_COUNT - 1);
    for (int i = 0; i < ra.n_tensors; i++) {
        const wmat_decompose_tensor *d = &ra.tensors[i];
        if (strstr(d->name, "q_proj")) assert_int_equal(d->rank, 12);
        else if (strstr(d->name, "k_proj")) assert_true(d->rank >= 1 && d->rel_error <= sqrt(0.5) + 1e-9);
        else assert_int_equal(d->rank, 6);
    }
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(a, 1, WMAT_LIN_DOWN)), "f32");
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(a, 0, WMAT_LIN_DOWN)), "lowrank");
    wmat_decompose_report_free(&ra);
    wmat_model_free(a);
    /* refused, the model untouched */
    TU_OK(wmat_model_create(&a, &c));
    const struct {
        int rank;
        const char *params, *overrides, *says;
    } bad[] = {
        {6, "rank=-1", NULL, "rank"},
        {6, "energy=2", NULL, "energy"},
        {6, "colour=red", NULL, "colour"},
        {6, NULL, "q_proj=nope", "nope"},
        {6, NULL, "q_proj=svd:rank=x", "rank"},
        {6, NULL, "q_proj=svd:7", "KEY=VALUE"},
        {6, NULL, "q_proj=svd:rank=0", "give rank > 0"},
        {6, "energy=0.9", NULL, "exclude each other"},
        {0, NULL, NULL, "give rank > 0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = wmat_decompose_default_params();
        p.rank = bad[i].rank;
        p.method_params = bad[i].params;
        p.overrides = bad[i].overrides;
        assert_int_equal(wmat_decompose_model(a, &p, NULL), WMAT_ERR_INVALID);
        if (!strstr(wmat_last_error(), bad[i].says)) fail_msg("case %zu: '%s' lacks '%s'", i, wmat_last_error(), bad[i].says);
        for (int l = 0; l < 2; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++)
                assert_string_equal(wmat_tensor_kind(wmat_model_linear(a, l, (wmat_linear_kind)k)), "f32");
    }
    wmat_model_free(a);
}

static void test_bad_params(void **state)
{
    (void)state;
    wmat_config c = tu_config(32, 64, 1, 2, 2, 16, 8);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_decompose_params p = wmat_decompose_default_params();
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID); /* neither rank nor energy */
    p.rank = 4;
    p.method = "nope";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "nope"));
    p.method = "svd";
    p.dtype = WMAT_Q4_0;
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    p.dtype = WMAT_F32;
    p.energy = 1.5f;
    p.rank = 0;
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m, 0, WMAT_LIN_Q)), "f32");
    assert_string_equal(wmat_decompose_method_name(0, NULL, NULL), "svd");
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_rank_stories), cmocka_unit_test(test_full_rank_mix4m),
        cmocka_unit_test(test_truncation_error),  cmocka_unit_test(test_native_roundtrip),
        cmocka_unit_test(test_keys_and_overrides),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_randomized_svd),
    };
    return tu_run_tests("decomp", tests, NULL, NULL);
}
