/* SliceGPT (src/decomp/slicegpt.c) and the runtime of sliced models.
 *   - at 0% slicing the rotated model (norm scales folded, every residual
 *     point in its own basis, shortcut matrices between them) gives the
 *     dense model's logits within 1e-4 of the largest logit: a random
 *     model with non-trivial norm scales, tied and untied, always;
 *     stories260K and mix4m when ../shared/data has them; the batched
 *     forward and the KV-cache decode both;
 *   - a 25%-sliced model has the shapes and the parameter count of the
 *     spec sheet (d = 256: a block 737,280 -> 552,960 + 73,728 shortcut
 *     weights), runs batched and by decode alike, and round-trips the
 *     native directory bit for bit; formats that cannot express it refuse;
 *   - the width rule d' = floor((1 - s) d) rounded down to 8, and bad
 *     sparsity values refused with a message, the model untouched. */
#include "test_util.h"

#include "decomp/decomp.h"

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

static int32_t *tokens(int n, int vocab, int seed)
{
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int t = 0; t < n; t++) ids[t] = (int32_t)(((int64_t)t * 31 + 7 + seed * 13 + (t * t) % 11) % vocab);
    return ids;
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
    int32_t *ids = tokens(T, c->vocab_size, 0);
    float *lg = malloc((size_t)T * (size_t)c->vocab_size * sizeof(float));
    TU_OK(wmat_forward(rt, ids, T, lg));
    free(ids);
    wmat_runtime_free(rt);
    return lg;
}

/* The same logits by decode, one token at a time against the KV cache. */
static float *decode_logits_of(wmat_model *m, int T)
{
    const wmat_config *c = wmat_model_config(m);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 1;
    rp.kv_cache_len = T;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    int32_t *ids = tokens(T, c->vocab_size, 0);
    float *lg = malloc((size_t)T * (size_t)c->vocab_size * sizeof(float));
    for (int t = 0; t < T; t++) TU_OK(wmat_decode(rt, ids[t], t, lg + (size_t)t * c->vocab_size));
    free(ids);
    wmat_runtime_free(rt);
    return lg;
}

/* max |a - b| / max |b|; a NaN or infinity anywhere is infinite. */
static double max_rel(const float *a, const float *b, size_t n)
{
    const double d = tu_max_abs_diff(a, b, n, NULL);
    double scale = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
    return isfinite(d) && scale > 0 ? d / scale : INFINITY;
}

static void slice(wmat_model *m, const char *params, int n_calib, int ctx, wmat_decompose_report *rep)
{
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "slicegpt";
    p.method_params = params;
    int32_t *cal = tokens(n_calib, wmat_model_config(m)->vocab_size, 5);
    p.calib = cal;
    p.n_calib = (size_t)n_calib;
    p.calib_ctx = ctx;
    TU_OK(wmat_decompose_model(m, &p, rep));
    free(cal);
}

/* A random model whose norm scales are not all one (so folding them is
 * tested). */
static wmat_model *random_model(int dim, int hidden, int layers, int heads, int kv, int vocab, int tied, uint64_t seed)
{
    wmat_config c = tu_config(dim, hidden, layers, heads, kv, vocab, 64);
    c.tied_embeddings = tied;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim != 1) continue;
        float *g = t->data;
        for (int64_t j = 0; j < t->shape[0]; j++) g[j] = 0.5f + (float)((j * 7 + i) % 10) / 10.0f;
    }
    return m;
}

static void zero_slicing(wmat_model *m, const char *what, int n_calib, int ctx)
{
    const int T = 24, V = wmat_model_config(m)->vocab_size;
    float *ref = logits_of(m, T), *ref_dec = decode_logits_of(m, T);
    wmat_decompose_report rep;
    slice(m, "sparsity=0", n_calib, ctx, &rep);
    const wmat_config *c = wmat_model_config(m);
    assert_int_equal(c->shortcuts, 1);
    assert_int_equal(c->tied_embeddings, 0);
    float *got = logits_of(m, T), *got_dec = decode_logits_of(m, T);
    const double e = max_rel(got, ref, (size_t)T * V), e_dec = max_rel(got_dec, ref_dec, (size_t)T * V);
    print_message("%s: 0%% SliceGPT logits within %.2e (batched) and %.2e (decode) of the largest logit\n", what, e, e_dec);
    TU_ASSERT_BELOW(e, 1e-4);
    TU_ASSERT_BELOW(e_dec, 1e-4);
    wmat_decompose_report_free(&rep);
    free(ref), free(ref_dec), free(got), free(got_dec);
}

static void test_zero_slicing_random(void **state)
{
    (void)state;
    for (int tied = 0; tied < 2; tied++) {
        wmat_model *m = random_model(48, 96, 2, 4, 2, 64, tied, 11 + (uint64_t)tied);
        zero_slicing(m, tied ? "random (tied)" : "random", 8 * 32, 32);
        wmat_model_free(m);
    }
    /* the naive baseline's permutation keeps everything at 0% too */
    wmat_model *m = random_model(48, 96, 2, 4, 2, 64, 0, 3);
    const int T = 16, V = 64;
    float *ref = logits_of(m, T);
    slice(m, "sparsity=0,basis=variance", 4 * 32, 32, NULL);
    float *got = logits_of(m, T);
    TU_ASSERT_BELOW(max_rel(got, ref, (size_t)T * V), 1e-5);
    free(ref), free(got);
    wmat_model_free(m);
}

static void test_zero_slicing_stories(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_model *m = load(path);
    zero_slicing(m, "stories260K", 8 * 128, 128);
    wmat_model_free(m);
}

static void test_zero_slicing_mix4m(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_model *m = load(path);
    zero_slicing(m, "mix4m", 8 * 128, 128);
    wmat_model_free(m);
}

static void test_width_rule(void **state)
{
    (void)state;
    const struct {
        int d;
        double s;
        int want;
    } ok[] = {{256, 0.25, 192}, {256, 0.1, 224}, {256, 0.2, 200}, {256, 0.3, 176}, {256, 0.0, 256}, {64, 0.25, 48},
              {4096, 0.25, 3072}, {100, 0.0, 96}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int k;
        TU_OK(wmat__slicegpt_width(ok[i].d, ok[i].s, &k));
        if (k != ok[i].want) fail_msg("d %d, sparsity %g: d' %d, expected %d", ok[i].d, ok[i].s, k, ok[i].want);
    }
    int k;
    assert_int_equal(wmat__slicegpt_width(256, 0.98, &k), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "at least 8"));
    assert_int_equal(wmat__slicegpt_width(256, 1.0, &k), WMAT_ERR_INVALID);
    assert_int_equal(wmat__slicegpt_width(256, -0.1, &k), WMAT_ERR_INVALID);
    assert_int_equal(wmat__slicegpt_width(256, NAN, &k), WMAT_ERR_INVALID);
}

/* Parameters of a sliced model, counted from its config. */
static int64_t expected_params(const wmat_config *c)
{
    const int64_t k = c->dim, A = c->attn_dim ? c->attn_dim : c->dim, KV = (int64_t)c->n_kv_heads * c->head_dim;
    const int64_t block = 2 * k + A * k + 2 * KV * k + k * A + 3 * (int64_t)c->hidden_dim * k + (c->shortcuts ? 2 * k * k : 0);
    return 2 * (int64_t)c->vocab_size * k + k + c->n_layers * block;
}

static void test_shapes_and_count(void **state)
{
    (void)state;
    /* mix4m's block shape: d 256, hidden 704, 8 heads, 4 kv heads */
    wmat_model *m = random_model(256, 704, 1, 8, 4, 32, 1, 7);
    wmat_decompose_report rep;
    slice(m, "sparsity=0.25", 4 * 64, 64, &rep);
    const wmat_config *c = wmat_model_config(m);
    assert_int_equal(c->dim, 192);
    assert_int_equal(c->attn_dim, 256);
    assert_int_equal(c->head_dim, 32);
    assert_int_equal(c->norm_dim, 256);
    assert_int_equal(c->shortcuts, 1);
    int64_t block = 0, sc = 0;
    for (int k = 0; k < WMAT_LIN_COUNT; k++) block += wmat_tensor_nelem(wmat_model_linear(m, 0, (wmat_linear_kind)k));
    char name[128];
    for (int s = 0; s < 2; s++) {
        snprintf(name, sizeof name, "model.layers.0.%s_shortcut.weight", s ? "mlp" : "attn");
        const wmat_tensor *t = wmat_model_find(m, name);
        assert_non_null(t);
        assert_int_equal(t->shape[0], 192);
        assert_int_equal(t->shape[1], 192);
        sc += wmat_tensor_nelem(t);
    }
    print_message("d 256 -> 192: block 737280 -> %lld + %lld shortcut weights (%.1f%%)\n", (long long)block, (long long)sc,
                  100.0 * (double)(block + sc) / 737280.0 - 100.0);
    assert_int_equal(block, 552960);
    assert_int_equal(sc, 73728);
    const wmat_tensor *q = wmat_model_linear(m, 0, WMAT_LIN_Q), *o = wmat_model_linear(m, 0, WMAT_LIN_O);
    assert_int_equal(q->shape[0], 256), assert_int_equal(q->shape[1], 192);
    assert_int_equal(o->shape[0], 192), assert_int_equal(o->shape[1], 256);
    assert_int_equal(wmat_model_classifier(m)->shape[1], 192);
    assert_true(wmat_model_classifier(m) != wmat_model_tok_embeddings(m)); /* untied */
    assert_int_equal(wmat_model_n_params(m), expected_params(c));
    assert_int_equal((int64_t)rep.params_after, wmat_model_n_params(m));
    assert_int_equal((int64_t)rep.params_before, 32 * 256 + 256 + 2 * 256 + 737280);
    wmat_decompose_report_free(&rep);
    wmat_model_free(m);
    /* without shortcuts: no shortcut tensors, the same block otherwise */
    m = random_model(256, 704, 1, 8, 4, 32, 0, 7);
    slice(m, "sparsity=0.25,shortcut=false", 4 * 64, 64, NULL);
    c = wmat_model_config(m);
    assert_int_equal(c->shortcuts, 0);
    assert_null(wmat_model_find(m, "model.layers.0.attn_shortcut.weight"));
    assert_int_equal(wmat_model_n_params(m), expected_params(c));
    wmat_model_free(m);
}

static void test_sliced_runs_and_roundtrips(void **state)
{
    (void)state;
    for (int sc = 0; sc < 2; sc++) {
        wmat_model *m = random_model(64, 160, 2, 4, 2, 80, 0, 21);
        slice(m, sc ? "sparsity=0.25" : "sparsity=0.25,no_shortcut", 8 * 32, 32, NULL);
        const wmat_config *c = wmat_model_config(m);
        assert_int_equal(c->dim, 48);
        const int T = 20, V = c->vocab_size;
        /* batched and decode agree on the sliced model */
        float *a = logits_of(m, T), *b = decode_logits_of(m, T);
        TU_ASSERT_BELOW(max_rel(b, a, (size_t)T * V), 1e-5);
        /* the native directory, bit for bit */
        const char *dir = tu_tmp(sc ? "sliced_sc" : "sliced_nosc");
        wmat_save_params sp = wmat_save_default_params();
        sp.format = WMAT_FMT_QUANT;
        TU_OK(wmat_model_save(m, dir, &sp));
        wmat_model *r = load(dir);
        const wmat_config *rc = wmat_model_config(r);
        assert_int_equal(rc->dim, 48);
        assert_int_equal(rc->attn_dim, 64);
        assert_int_equal(rc->norm_dim, sc ? 64 : 0); /* without shortcuts the divisor is in the weights and eps */
        assert_int_equal(rc->shortcuts, sc);
        assert_int_equal(wmat_model_n_tensors(r), wmat_model_n_tensors(m));
        for (int i = 0; i < wmat_model_n_tensors(m); i++) {
            const wmat_tensor *t = wmat_model_tensor(m, i), *u = wmat_model_find(r, t->name);
            assert_non_null(u);
            assert_int_equal(wmat_tensor_nelem(t), wmat_tensor_nelem(u));
            if (memcmp(t->data, u->data, (size_t)wmat_tensor_nelem(t) * sizeof(float)))
                fail_msg("%s differs after the round trip", t->name);
        }
        float *a2 = logits_of(r, T);
        if (memcmp(a, a2, (size_t)T * V * sizeof(float))) fail_msg("logits differ after the round trip");
        /* formats that cannot express a sliced model refuse it; without
         * shortcuts it is a plain LLaMA with wide heads, which HF (head_dim)
         * and GGUF (key_length) hold */
        sp.format = WMAT_FMT_LLAMA2C;
        assert_int_equal(wmat_model_save(m, tu_tmp("sliced.bin"), &sp), WMAT_ERR_UNSUPPORTED);
        assert_non_null(strstr(wmat_last_error(), "sliced model"));
        for (int f = 0; f < 2; f++) {
            sp.format = f ? WMAT_FMT_HF : WMAT_FMT_GGUF;
            const char *fp = tu_tmp(f ? (sc ? "sliced_sc_hf" : "sliced_hf") : (sc ? "sliced_sc.gguf" : "sliced.gguf"));
            if (sc) {
                assert_int_equal(wmat_model_save(m, fp, &sp), WMAT_ERR_UNSUPPORTED);
                assert_non_null(strstr(wmat_last_error(), "native directory"));
                continue;
            }
            TU_OK(wmat_model_save(m, fp, &sp));
            wmat_model *g = load(fp);
            const wmat_config *gc = wmat_model_config(g);
            assert_int_equal(gc->dim, 48);
            assert_int_equal(gc->attn_dim, 64);
            assert_int_equal(gc->norm_dim, 0);
            float *a3 = logits_of(g, T);
            print_message("no shortcuts, %s: logits within %.2e of the native directory's\n", f ? "HF" : "GGUF",
                          max_rel(a3, a, (size_t)T * V));
            TU_ASSERT_BELOW(max_rel(a3, a, (size_t)T * V), 1e-6);
            free(a3);
            wmat_model_free(g);
        }
        /* and slicing it again is refused */
        wmat_decompose_params p = wmat_decompose_default_params();
        p.method = "slicegpt";
        int32_t cal[64] = {0};
        p.calib = cal;
        p.n_calib = 64;
        assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_UNSUPPORTED);
        free(a), free(b), free(a2);
        wmat_model_free(r);
        wmat_model_free(m);
    }
}

static void test_bad_sparsity(void **state)
{
    (void)state;
    wmat_model *m = random_model(48, 96, 1, 4, 2, 64, 0, 5);
    int32_t *cal = tokens(128, 64, 1);
    const struct {
        const char *params;
        int rc;
        const char *says;
    } bad[] = {
        {"sparsity=1", WMAT_ERR_INVALID, "sparsity"},
        {"sparsity=-0.1", WMAT_ERR_INVALID, "sparsity"},
        {"sparsity=nan", WMAT_ERR_INVALID, "sparsity"},
        {"sparsity=0.9", WMAT_ERR_INVALID, "at least 8"}, /* 48 -> 4 */
        {"basis=pcb", WMAT_ERR_INVALID, "basis"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        wmat_decompose_params p = wmat_decompose_default_params();
        p.method = "slicegpt";
        p.method_params = bad[i].params;
        p.calib = cal;
        p.n_calib = 128;
        p.calib_ctx = 32;
        assert_int_equal(wmat_decompose_model(m, &p, NULL), bad[i].rc);
        if (!strstr(wmat_last_error(), bad[i].says))
            fail_msg("%s: '%s' lacks '%s'", bad[i].params, wmat_last_error(), bad[i].says);
        assert_int_equal(wmat_model_config(m)->dim, 48);
    }
    /* no calibration data */
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "slicegpt";
    assert_int_equal(wmat_decompose_model(m, &p, NULL), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "calib"));
    assert_int_equal(wmat_model_config(m)->dim, 48);
    free(cal);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_width_rule),
        cmocka_unit_test(test_zero_slicing_random),
        cmocka_unit_test(test_zero_slicing_stories),
        cmocka_unit_test(test_zero_slicing_mix4m),
        cmocka_unit_test(test_shapes_and_count),
        cmocka_unit_test(test_sliced_runs_and_roundtrips),
        cmocka_unit_test(test_bad_sparsity),
    };
    return tu_run_tests("slicegpt", tests, NULL, NULL);
}
