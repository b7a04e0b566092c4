/* Model merging (src/merge): every method against its definition on small
 * hand-made tensors, the selection threshold against a sort, DARE's
 * expectation and reproducibility, SLERP's end points and geometry, the
 * per-layer schedules, the YAML config and its errors, and the streaming
 * driver end to end on synthetic models in two formats (output checked
 * against the kernels; mismatched inputs refused with no output). */
#include "test_util.h"
#include "merge/merge.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static wmat_merge_args args(int64_t n, int k, const float *base, float **x, const double *w, const double *d, float *scratch)
{
    wmat_merge_args a;
    memset(&a, 0, sizeof a);
    a.n = n;
    a.n_in = k;
    a.base = base;
    a.x = x;
    a.weight = w;
    a.density = d;
    a.lambda = 1;
    a.t = 0.5;
    a.dot_threshold = 0.9995;
    a.normalize = 1;
    a.scratch = scratch;
    a.n_threads = 1;
    return a;
}

/* The k-th largest magnitude by selection equals the sorted array's, on
 * random data, on data with many repeats, and at the ends (k = 1, n). */
static void test_select_matches_sort(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    const int64_t n = 70001; /* above the size where selection goes parallel */
    float *x = malloc((size_t)n * sizeof *x), *s = malloc((size_t)n * sizeof *s);
    for (int rep = 0; rep < 2; rep++) {
        for (int64_t j = 0; j < n; j++) {
            x[j] = wmat_rng_normal(&r);
            if (rep == 1) x[j] = (float)((int)(x[j] * 3)) / 3.0f; /* few distinct values, many ties */
            s[j] = fabsf(x[j]);
        }
        qsort(s, (size_t)n, sizeof *s, cmp_float);
        const int64_t ks[] = {1, 2, 17, n / 2, n - 1, n};
        for (size_t q = 0; q < sizeof ks / sizeof ks[0]; q++) {
            const float thr = wmat__merge_kth_largest_abs(x, n, ks[q], 1 + q % 2);
            TU_ASSERT_NEAR(thr, s[n - ks[q]], 0.0);
        }
    }
    free(x);
    free(s);
}

/* Trimming keeps exactly k entries, the largest, ties in index order. */
static void test_trim_topk_exact(void **state)
{
    (void)state;
    float d[8] = {0.5f, -2.0f, 1.0f, -1.0f, 1.0f, 0.0f, 3.0f, -1.0f};
    wmat__merge_trim_topk(d, 8, 4, 2);
    const float want[8] = {0, -2.0f, 1.0f, -1.0f, 0, 0, 3.0f, 0}; /* |1| three times: the first two of them */
    TU_ASSERT_CLOSE(d, want, 8, 0, 0);
    float e[3] = {1, 2, 3};
    wmat__merge_trim_topk(e, 3, 0, 2);
    const float zero[3] = {0, 0, 0};
    TU_ASSERT_CLOSE(e, zero, 3, 0, 0);
}

/* TIES on a 6-element example worked by hand (docs/MERGING.md):
 *   d1 = [ 1, -2, .5,  3, -.1, 0]  -> top 3: [ 1, -2, 0, 3, 0, 0]
 *   d2 = [-1.5, 1, .4, -.2, 2, .3] -> top 3: [-1.5, 1, 0, 0, 2, 0]
 * weights 1, 1: elected signs - - 0 + + 0, disjoint means [-1.5, -2, 0, 3, 2, 0];
 * weights 2, 1: entry 0's mass 2*1 - 1.5 > 0 elects +, mean 1: [1, -2, 0, 3, 2, 0]. */
static void test_ties_hand_example(void **state)
{
    (void)state;
    const float b[6] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
    const float d1[6] = {1, -2, 0.5f, 3, -0.1f, 0}, d2[6] = {-1.5f, 1, 0.4f, -0.2f, 2, 0.3f};
    const float want_a[6] = {-1.5f, -2, 0, 3, 2, 0}, want_b[6] = {1, -2, 0, 3, 2, 0};
    for (int c = 0; c < 2; c++) {
        float x1[6], x2[6], out[6], sc[6], got[6];
        for (int j = 0; j < 6; j++) {
            x1[j] = b[j] + d1[j];
            x2[j] = b[j] + d2[j];
        }
        float *x[2] = {x1, x2};
        const double w[2] = {c ? 2.0 : 1.0, 1.0}, dens[2] = {0.5, 0.5};
        wmat_merge_args a = args(6, 2, b, x, w, dens, sc);
        wmat_merge_tinfo info = {0, 0, 0};
        const wmat_merge_method *m = wmat__merge_method_find("ties");
        assert_non_null(m);
        TU_OK(m->fn(&a, out, &info));
        for (int j = 0; j < 6; j++) got[j] = out[j] - b[j];
        TU_ASSERT_CLOSE(got, c ? want_b : want_a, 6, 1e-6, 0);
        TU_ASSERT_NEAR(info.trimmed, 0.5, 1e-12);
        TU_ASSERT_NEAR(info.sign_conflicts, 2.0 / 6.0, 1e-12); /* entries 0 and 1 disagree after trimming */
    }
}

/* Task arithmetic and the linear average against their formulas in double. */
static void test_task_arithmetic_and_linear(void **state)
{
    (void)state;
    enum { N = 1000, K = 3 };
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    static float b[N], xs[K][N], keep[K][N], out[N], want[N], sc[N];
    for (int j = 0; j < N; j++) b[j] = wmat_rng_normal(&r);
    for (int i = 0; i < K; i++)
        for (int j = 0; j < N; j++) keep[i][j] = b[j] + 0.1f * wmat_rng_normal(&r);
    const double w[K] = {0.5, 1.5, -0.25}, dens[K] = {1, 1, 1};
    float *x[K] = {xs[0], xs[1], xs[2]};
    memcpy(xs, keep, sizeof xs);
    wmat_merge_args a = args(N, K, b, x, w, dens, sc);
    a.lambda = 0.7;
    a.normalize = 0;
    wmat_merge_tinfo info = {0, 0, 0};
    TU_OK(wmat__merge_method_find("task_arithmetic")->fn(&a, out, &info));
    for (int j = 0; j < N; j++) {
        double s = 0;
        for (int i = 0; i < K; i++) s += w[i] * ((double)keep[i][j] - b[j]);
        want[j] = (float)(b[j] + 0.7 * s);
    }
    TU_ASSERT_CLOSE(out, want, N, 1e-6, 1e-6);

    memcpy(xs, keep, sizeof xs);
    a = args(N, K, NULL, x, w, dens, sc);
    TU_OK(wmat__merge_method_find("linear")->fn(&a, out, &info));
    for (int j = 0; j < N; j++) {
        double s = 0;
        for (int i = 0; i < K; i++) s += w[i] * (double)keep[i][j];
        want[j] = (float)(s / (0.5 + 1.5 - 0.25));
    }
    TU_ASSERT_CLOSE(out, want, N, 1e-6, 1e-6);
}

/* DARE: kept entries are scaled by exactly 1/density, the share dropped is
 * 1 - density within 5 sigma, the mean is preserved (E[d'] = d) within 5
 * sigma, a seed gives the same mask twice and another seed another. */
static void test_dare_expectation_and_seed(void **state)
{
    (void)state;
    const int64_t n = 200000;
    const double p = 0.3; /* density: keep probability */
    float *d = malloc((size_t)n * sizeof *d), *e = malloc((size_t)n * sizeof *e);
    for (int64_t j = 0; j < n; j++) d[j] = 1.0f;
    int64_t dropped = wmat__merge_dare(d, n, p, 42, 1);
    double sum = 0;
    for (int64_t j = 0; j < n; j++) {
        if (d[j] != 0.0f && d[j] != (float)(1.0 / p)) fail_msg("entry %lld = %g", (long long)j, d[j]);
        sum += d[j];
    }
    const double sigma_share = sqrt(p * (1 - p) / (double)n);
    TU_ASSERT_NEAR((double)dropped / (double)n, 1 - p, 5 * sigma_share);
    TU_ASSERT_NEAR(sum / (double)n, 1.0, 5 * sigma_share / p);
    for (int64_t j = 0; j < n; j++) e[j] = 1.0f;
    wmat__merge_dare(e, n, p, 42, 2); /* the mask does not depend on the threads */
    TU_ASSERT_CLOSE(d, e, (size_t)n, 0, 0);
    for (int64_t j = 0; j < n; j++) e[j] = 1.0f;
    wmat__merge_dare(e, n, p, 43, 2);
    int64_t differ = 0;
    for (int64_t j = 0; j < n; j++) differ += d[j] != e[j];
    assert_true(differ > n / 10);
    free(d);
    free(e);
}

/* dare_ties at density 1 drops nothing and equals ties at density 1;
 * dare_linear at density 1 equals task arithmetic. */
static void test_dare_density_one(void **state)
{
    (void)state;
    enum { N = 512 };
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    static float b[N], x0[2][N], xs[2][N], o1[N], o2[N], sc[N];
    for (int j = 0; j < N; j++) {
        b[j] = wmat_rng_normal(&r);
        x0[0][j] = b[j] + wmat_rng_normal(&r);
        x0[1][j] = b[j] + wmat_rng_normal(&r);
    }
    const double w[2] = {1, 1}, dens[2] = {1, 1};
    float *x[2] = {xs[0], xs[1]};
    const char *pairs[2][2] = {{"dare_ties", "ties"}, {"dare_linear", "task_arithmetic"}};
    for (int q = 0; q < 2; q++) {
        wmat_merge_tinfo info = {0, 0, 0};
        memcpy(xs, x0, sizeof xs);
        wmat_merge_args a = args(N, 2, b, x, w, dens, sc);
        a.normalize = q == 0;
        TU_OK(wmat__merge_method_find(pairs[q][0])->fn(&a, o1, &info));
        TU_ASSERT_NEAR(info.trimmed, 0, 0);
        memcpy(xs, x0, sizeof xs);
        TU_OK(wmat__merge_method_find(pairs[q][1])->fn(&a, o2, &info));
        TU_ASSERT_CLOSE(o1, o2, N, 0, 0);
    }
}

/* SLERP: t = 0 is the base, t = 1 the model; between orthogonal unit
 * vectors the midpoint has unit norm (linear would give 1/sqrt 2); near
 * parallel tensors interpolate linearly. */
static void test_slerp(void **state)
{
    (void)state;
    const wmat_merge_method *m = wmat__merge_method_find("slerp");
    float sc[4], out[4];
    const double w[1] = {1}, d[1] = {1};
    const float a0[4] = {1, 0, 0, 0};
    float b0[4] = {0, 1, 0, 0}, xb[4];
    float *x[1] = {xb};
    for (int c = 0; c < 3; c++) {
        const double t = c == 0 ? 0 : c == 1 ? 1 : 0.5;
        memcpy(xb, b0, sizeof xb);
        wmat_merge_args a = args(4, 1, a0, x, w, d, sc);
        a.t = t;
        wmat_merge_tinfo info = {0, 0, 0};
        TU_OK(m->fn(&a, out, &info));
        const float s = (float)sqrt(0.5);
        const float want[3][4] = {{1, 0, 0, 0}, {0, 1, 0, 0}, {s, s, 0, 0}};
        TU_ASSERT_CLOSE(out, want[c], 4, 1e-6, 0);
        assert_int_equal(info.slerp_linear, 0);
    }
    /* a general angle: the result's angle from a0 is t * theta */
    const float b1[4] = {0.6f, 0.8f, 0, 0};
    memcpy(xb, b1, sizeof xb);
    wmat_merge_args a = args(4, 1, a0, x, w, d, sc);
    a.t = 0.25;
    wmat_merge_tinfo info = {0, 0, 0};
    TU_OK(m->fn(&a, out, &info));
    const double th = acos(0.6) * 0.25;
    const float want1[4] = {(float)cos(th), (float)sin(th), 0, 0};
    TU_ASSERT_CLOSE(out, want1, 4, 1e-6, 0);
    /* near parallel: linear */
    const float b2[4] = {1, 1e-3f, 0, 0};
    memcpy(xb, b2, sizeof xb);
    a = args(4, 1, a0, x, w, d, sc);
    a.t = 0.5;
    TU_OK(m->fn(&a, out, &info));
    assert_int_equal(info.slerp_linear, 1);
    const float want2[4] = {1, 0.5e-3f, 0, 0};
    TU_ASSERT_CLOSE(out, want2, 4, 1e-7, 0);
}

/* Per-layer lists are interpolated across layers as mergekit does. */
static void test_layer_schedule(void **state)
{
    (void)state;
    wmat_mvalue v = {2, {0, 1}};
    const double want[5] = {0, 0.25, 0.5, 0.75, 1};
    for (int l = 0; l < 5; l++) TU_ASSERT_NEAR(wmat__mvalue_at(&v, l, 5, -1), want[l], 1e-12);
    wmat_mvalue u = {3, {0, 1, 0}};
    TU_ASSERT_NEAR(wmat__mvalue_at(&u, 1, 3, -1), 1, 1e-12);
    TU_ASSERT_NEAR(wmat__mvalue_at(&u, 3, 7, -1), 1, 1e-12);
    TU_ASSERT_NEAR(wmat__mvalue_at(&u, 1, 5, -1), 0.5, 1e-12);
    TU_ASSERT_NEAR(wmat__mvalue_at(&u, -1, 5, -1), 0, 1e-12); /* embedding: the first */
    TU_ASSERT_NEAR(wmat__mvalue_at(&u, 5, 5, -1), 0, 1e-12);  /* head: the last */
    wmat_mvalue none = {0, {0}};
    TU_ASSERT_NEAR(wmat__mvalue_at(&none, 2, 5, 0.3), 0.3, 0);
}

static int parse(wmat_merge_config *c, const char *y)
{
    return wmat__merge_config_parse(c, y, strlen(y), "cfg.yaml");
}

static void test_yaml_config(void **state)
{
    (void)state;
    wmat_merge_config c;
    const char *y = "merge_method: ties\n"
                    "base_model: base.bin\n"
                    "models:\n"
                    "  - model: base.bin\n"
                    "  - model: a.bin\n"
                    "    parameters:\n"
                    "      weight: 0.7\n"
                    "      density: [0.2, 0.8]\n"
                    "  - model: b.gguf\n"
                    "    parameters: {weight: 0.3}\n"
                    "parameters:\n"
                    "  density: 0.5\n"
                    "  normalize: false\n"
                    "  lambda: 1.5\n"
                    "dtype: bfloat16\n"
                    "tokenizer_source: base\n";
    TU_OK(parse(&c, y));
    assert_string_equal(c.spec.method, "ties");
    assert_string_equal(c.spec.base, "base.bin");
    assert_int_equal(c.spec.n_models, 2); /* the base listed among the models has no task vector */
    assert_string_equal(c.spec.models[0].path, "a.bin");
    assert_int_equal(c.spec.models[0].density.n, 2);
    TU_ASSERT_NEAR(c.spec.models[0].density.v[1], 0.8, 0);
    TU_ASSERT_NEAR(c.spec.models[1].weight.v[0], 0.3, 0);
    TU_ASSERT_NEAR(c.spec.density.v[0], 0.5, 0);
    TU_ASSERT_NEAR(c.spec.lambda.v[0], 1.5, 0);
    assert_int_equal(c.spec.normalize, 0);
    assert_int_equal(c.spec.out_dtype, WMAT_BF16);
    assert_string_equal(c.spec.tokenizer_source, "base");
    wmat__merge_config_free(&c);

    static const struct {
        const char *yaml, *expect;
    } bad[] = {
        {"merge_method: ties\nbase_model: b\nmodels: [a]\nfoo: 1\n", "unknown key"},
        {"merge_method: nope\nmodels: [a]\n", "unknown merge_method 'nope'"},
        {"merge_method: ties\nmodels:\n  - model: a\n    parameters: {lambda: 2}\n", "per model"},
        {"merge_method: ties\nmodels: [a]\nparameters: {int8_mask: true}\n", "unknown parameter 'int8_mask'"},
        {"merge_method: ties\nmodels: [a]\nparameters: {density: 1.5}\n", "density"},
        {"merge_method: ties\nmodels: [a]\nparameters: {density: [0.1, abc]}\n", "density"},
        {"merge_method: slerp\nslices:\n  - sources: []\n", "slices are not supported"},
        {"merge_method: [ties\n", "YAML"},
        {"", "mapping"},
        {"models: [a]\n", "no merge_method"},
        {"merge_method: linear\nmodels: {a: 1}\n", "models must be a list"},
        {"merge_method: linear\nmodels: [a]\ndtype: float8\n", "dtype"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(&c, bad[i].yaml);
        if (rc != WMAT_ERR_INVALID || !strstr(wmat_last_error(), bad[i].expect))
            fail_msg("case %zu: rc %d, message '%s' (want '%s')", i, rc, wmat_last_error(), bad[i].expect);
        assert_non_null(strstr(wmat_last_error(), "cfg.yaml"));
        wmat__merge_config_free(&c);
    }
}

/* ---- the driver on synthetic models */

static void make_model(const char *path, wmat_format fmt, uint64_t seed, const wmat_model *like, int vocab)
{
    wmat_config cfg = tu_config(32, 64, 2, 4, 2, vocab, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *d = t->data;
        const float *base = NULL;
        if (like) base = wmat_model_find((wmat_model *)like, t->name)->data;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++)
            d[j] = (base ? base[j] : 0.0f) + (base ? 0.05f : 0.5f) * wmat_rng_normal(&r);
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = fmt;
    sp.dtype = WMAT_F32;
    TU_OK(wmat_model_save(m, path, &sp));
    wmat_model_free(m);
}

/* A GGUF model whose tokenizer's pieces are "<prefix><id>" (prefix differs: same size, other vocabulary). */
static void make_gguf_with_vocab(const char *path, uint64_t seed, char prefix)
{
    wmat_config cfg = tu_config(32, 64, 2, 4, 2, 64, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) ((float *)t->data)[j] = 0.1f * wmat_rng_normal(&r);
    }
    char store[64][8];
    const char *pieces[64];
    size_t lens[64];
    float scores[64];
    for (int v = 0; v < 64; v++) {
        snprintf(store[v], sizeof store[v], "%c%d", v == 5 ? prefix : 't', v);
        pieces[v] = store[v];
        lens[v] = strlen(store[v]);
        scores[v] = (float)-v;
    }
    wmat_tokenizer *tok = NULL;
    TU_OK(wmat_tokenizer_from_vocab(&tok, 64, pieces, lens, scores, NULL, 1, 2));
    wmat_model_set_tokenizer(m, tok);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_GGUF;
    sp.dtype = WMAT_F32;
    TU_OK(wmat_model_save(m, path, &sp));
    wmat_model_free(m);
}

/* ties of two fine-tunes of one base, inputs in HF, llama2.c and GGUF, output
 * as GGUF, llama2.c and HF (each written tensor by tensor through the fill
 * hook): every tensor equals the kernel applied to the loaded inputs. */
static void test_driver_end_to_end(void **state)
{
    (void)state;
    char base[512], a[512], b[512]; /* tu_tmp's buffers rotate */
    snprintf(base, sizeof base, "%s", tu_tmp("base_hf")); /* HF: q/k rows in HF's rotary order on disk */
    snprintf(a, sizeof a, "%s", tu_tmp("a.bin"));
    snprintf(b, sizeof b, "%s", tu_tmp("b.gguf"));
    make_model(base, WMAT_FMT_HF, 1, NULL, 64);
    wmat_model *mb = tu_load_f32(base);
    make_model(a, WMAT_FMT_LLAMA2C, 2, mb, 64);
    make_model(b, WMAT_FMT_GGUF, 3, mb, 64);
    wmat_model *ma = tu_load_f32(a), *mbb = tu_load_f32(b);
    wmat_merge_model mm[2] = {{a, {1, {1.0}}, {1, {0.4}}}, {b, {1, {0.5}}, {2, {0.2, 0.9}}}};
    char outs[3][512];
    snprintf(outs[0], sizeof outs[0], "%s", tu_tmp("out.gguf"));
    snprintf(outs[1], sizeof outs[1], "%s", tu_tmp("out.bin"));
    snprintf(outs[2], sizeof outs[2], "%s", tu_tmp("out_hf"));
    for (int o = 0; o < 3; o++) {
        wmat_merge_spec s;
        memset(&s, 0, sizeof s);
        s.method = "ties";
        s.base = base;
        s.n_models = 2;
        s.models = mm;
        s.normalize = -1;
        s.lambda = (wmat_mvalue){1, {0.9}};
        s.out_dtype = WMAT_F32;
        wmat_merge_report rep;
        TU_OK(wmat__merge_run(&s, outs[o], &rep));
        assert_true(rep.n_tensors > 0);
        wmat_model *mo = tu_load_f32(outs[o]);
        assert_int_equal(wmat_model_n_tensors(mo), rep.n_tensors);
        for (int i = 0; i < rep.n_tensors; i++) {
            wmat_tensor *t = wmat_model_find(mo, rep.tensors[i].name);
            assert_non_null(t);
            const int64_t n = wmat_tensor_nelem(t);
            float *x0 = malloc((size_t)n * 4), *x1 = malloc((size_t)n * 4), *want = malloc((size_t)n * 4),
                  *sc = malloc((size_t)n * 4);
            memcpy(x0, wmat_model_find(ma, t->name)->data, (size_t)n * 4);
            memcpy(x1, wmat_model_find(mbb, t->name)->data, (size_t)n * 4);
            float *x[2] = {x0, x1};
            int layer = -1, L = 2;
            if (sscanf(t->name, "model.layers.%d.", &layer) != 1) layer = strstr(t->name, "embed") ? -1 : L;
            const double w[2] = {1.0, 0.5};
            const double d[2] = {0.4, wmat__mvalue_at(&mm[1].density, layer, L, 1)};
            wmat_merge_args ar = args(n, 2, wmat_model_find(mb, t->name)->data, x, w, d, sc);
            ar.lambda = 0.9;
            wmat_merge_tinfo info = {0, 0, 0};
            TU_OK(wmat__merge_method_find("ties")->fn(&ar, want, &info));
            TU_ASSERT_CLOSE(t->data, want, (size_t)n, 1e-6, 1e-6);
            TU_ASSERT_NEAR(rep.tensors[i].trimmed, info.trimmed, 1e-12);
            free(x0);
            free(x1);
            free(want);
            free(sc);
        }
        wmat_model_free(mo);
        wmat__merge_report_free(&rep);
    }
    wmat_model_free(ma);
    wmat_model_free(mb);
    wmat_model_free(mbb);
}


/* The one-pass TIES (ties_fused.c) against the `ties` kernel (trim, then
 * combine) bit for bit, in its plain C and its SIMD form, on normal data and
 * on data where many magnitudes equal the threshold (the surplus dropped
 * from the end), with k = 0, k = n, negative weights, normalize on and off,
 * one to three inputs, and ranges split anywhere. */
static void fused_case(int64_t n, int n_in, int quantized, const double *dens, const double *w, int normalize,
                       uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    float *base = malloc((size_t)n * 4), *x[3], *d[3], *ref = malloc((size_t)n * 4), *out = malloc((size_t)n * 4);
    uint32_t *h = malloc(WMAT_TIES_HIST * sizeof *h);
    for (int64_t j = 0; j < n; j++) base[j] = quantized ? 0.25f * (float)(j % 5) : 0.1f * wmat_rng_normal(&r);
    for (int i = 0; i < n_in; i++) {
        x[i] = malloc((size_t)n * 4);
        d[i] = malloc((size_t)n * 4);
        for (int64_t j = 0; j < n; j++) {
            const float e = quantized ? 0.125f * (float)((int)(wmat_rng_u64(&r) % 9) - 4) : 0.01f * wmat_rng_normal(&r);
            x[i][j] = base[j] + e;
        }
        memcpy(d[i], x[i], (size_t)n * 4);
    }
    /* the reference: the kernel on copies (it overwrites them) */
    float *xc[3];
    for (int i = 0; i < n_in; i++) {
        xc[i] = malloc((size_t)n * 4);
        memcpy(xc[i], x[i], (size_t)n * 4);
    }
    wmat_merge_args a = args(n, n_in, base, xc, w, dens, NULL);
    a.lambda = 0.7;
    a.normalize = normalize;
    a.n_threads = 2;
    wmat_merge_tinfo info = {0, 0, 0};
    TU_OK(wmat__merge_method_find("ties")->fn(&a, ref, &info));
    float thr[3];
    int64_t cut[3];
    int none[3], surplus = 0;
    for (int i = 0; i < n_in; i++) {
        memset(h, 0, WMAT_TIES_HIST * sizeof *h);
        wmat__ties_delta_hist(d[i], base, n, h);
        const double kd = dens[i] * (double)n;
        const int64_t k = kd >= (double)n ? n : (int64_t)kd;
        TU_OK(wmat__ties_threshold(d[i], n, k, h, 2, &thr[i], &cut[i], &none[i]));
        surplus |= cut[i] != INT64_MAX;
        assert_int_equal(none[i], k == 0);
    }
    if (quantized) assert_true(surplus); /* the tie-breaking path did run */
    const wmat_ties_fuse f = {n_in, base, (const float *const *)d, w, thr, cut, none, 0.7, normalize, NULL, NULL};
    for (int impl = 0; impl < 3; impl++) { /* AUTO (AVX-512 where the CPU has it), C, AVX2 */
        memset(out, 0xff, (size_t)n * 4);
        wmat_ties_stats st = {0, 0, 0, INT64_MAX};
        /* uneven pieces: a cut may fall anywhere in one */
        const int64_t split[4] = {0, n / 3 + 1 < n ? n / 3 + 1 : n, n / 3 + 6 < n ? n / 3 + 6 : n, n};
        for (int p = 0; p < 3; p++)
            wmat__ties_fused_range(&f, out, split[p], split[p + 1], impl == 1 ? WMAT_TIES_IMPL_C : impl == 2 ? WMAT_TIES_IMPL_AVX2 : WMAT_TIES_IMPL_AUTO, &st);
        assert_memory_equal(out, ref, (size_t)n * 4);
        assert_true(st.bad == INT64_MAX);
        TU_ASSERT_NEAR((double)st.conflicts / (double)n, info.sign_conflicts, 1e-12);
        double dn = 0, bn = 0;
        for (int64_t j = 0; j < n; j++) {
            dn += ((double)ref[j] - base[j]) * ((double)ref[j] - base[j]);
            bn += (double)base[j] * base[j];
        }
        TU_ASSERT_NEAR(st.dn, dn, 1e-9 * (dn + 1));
        TU_ASSERT_NEAR(st.bn, bn, 1e-9 * (bn + 1));
    }
    for (int i = 0; i < n_in; i++) {
        free(x[i]);
        free(d[i]);
        free(xc[i]);
    }
    free(base);
    free(ref);
    free(out);
    free(h);
}

static void test_ties_fused_matches_kernel(void **state)
{
    (void)state;
    const double w1[3] = {1, 1, 1}, w2[3] = {2, -0.5, 0.75};
    const double dh[3] = {0.5, 0.5, 0.5}, dm[3] = {0.3, 1.0, 0.61}, dz[3] = {1e-4, 0.9, 0.2};
    fused_case(200003, 2, 0, dh, w1, 1, 1);
    fused_case(200003, 3, 0, dm, w2, 1, 2);
    fused_case(200003, 3, 0, dm, w2, 0, 3);
    fused_case(70001, 2, 1, dh, w1, 1, 4);  /* many magnitudes equal the threshold */
    fused_case(70001, 3, 1, dm, w2, 0, 5);
    fused_case(1001, 3, 1, dz, w2, 1, 6);   /* k = 0 for the first input */
    fused_case(1001, 1, 0, dh, w1, 1, 7);
    fused_case(3, 2, 0, dh, w2, 1, 8);      /* shorter than a SIMD vector */
    print_message("fused TIES: SIMD twin %s on this CPU\n", wmat__ties_fused_has_simd() ? "ran" : "did not run");
}

/* The streamed TIES (wmat__ties_stream: chunks converted from the stored
 * bytes, no fp32 task vectors) gives the `ties` kernel's bits on the
 * decoded values, for f32, f16 and q8_0 storage, mixed types, one and two
 * threads, sizes that end inside a chunk or fit in one, densities that keep
 * nothing or everything, and data with many magnitudes equal to the
 * threshold (the cut from the recorded bucket entries, and from pass C where
 * the bucket holds too many to record); its thresholds and cuts equal
 * wmat__ties_threshold's. */
static void stream_case(int64_t n, int n_in, const wmat_dtype *dts, const double *dens, int quantized, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    float *src[4], *dec[4], *d = malloc((size_t)n * 4), *ref = malloc((size_t)n * 4), *out = malloc((size_t)n * 4);
    void *stored[4];
    uint32_t *h = malloc(WMAT_TIES_HIST * sizeof *h);
    for (int i = 0; i <= n_in; i++) {
        src[i] = malloc((size_t)n * 4);
        dec[i] = malloc((size_t)n * 4);
        stored[i] = malloc(wmat_dtype_bytes(dts[i], (uint64_t)n));
        for (int64_t j = 0; j < n; j++) {
            float e = (i ? 0.01f : 0.05f) * wmat_rng_normal(&r);
            if (quantized && i) e = roundf(e * (float)quantized) / (float)quantized;
            src[i][j] = (i ? src[0][j] : 0.0f) + e;
        }
        TU_OK(wmat_from_f32(stored[i], dts[i], src[i], (uint64_t)n));
        TU_OK(wmat_to_f32(dec[i], stored[i], dts[i], (uint64_t)n));
    }
    const double w[3] = {1.0, -0.5, 0.75};
    int64_t k[3];
    for (int i = 0; i < n_in; i++) {
        const double kd = dens[i] * (double)n;
        k[i] = kd >= (double)n ? n : (int64_t)kd;
    }
    float *xc[3];
    for (int i = 0; i < n_in; i++) {
        xc[i] = malloc((size_t)n * 4);
        memcpy(xc[i], dec[i + 1], (size_t)n * 4);
    }
    wmat_merge_args a = args(n, n_in, dec[0], xc, w, dens, NULL);
    a.lambda = 0.9;
    a.normalize = 1;
    a.n_threads = 1;
    wmat_merge_tinfo info = {0, 0, 0};
    TU_OK(wmat__merge_method_find("ties")->fn(&a, ref, &info));
    float thr[3];
    int64_t cut[3];
    int none[3], surplus = 0;
    for (int i = 0; i < n_in; i++) {
        memcpy(d, dec[i + 1], (size_t)n * 4);
        memset(h, 0, WMAT_TIES_HIST * sizeof *h);
        wmat__ties_delta_hist(d, dec[0], n, h);
        TU_OK(wmat__ties_threshold(d, n, k[i], h, 1, &thr[i], &cut[i], &none[i]));
        surplus |= cut[i] != INT64_MAX;
    }
    if (quantized) assert_true(surplus);
    const void *xs[3] = {stored[1], stored[2], stored[3]};
    /* nf = 1: every chunk through the conversion buffers (the reference
     * for the passes that read f16 storage directly); pa = 1: pass A
     * through the buffers, B and D in place */
    for (int run = 0; run < 6; run++) {
        const int nt = 1 + run % 2, nf = run / 2 == 1, pa = run / 2 == 2;
        wmat_ties_src s = {n_in, n, stored[0], dts[0], xs, dts + 1, k, w, 0.9, 1, NULL, WMAT_F32, nf, pa};
        wmat_ties_stream_out so;
        memset(out, 0xff, (size_t)n * 4);
        TU_OK(wmat__ties_stream(&s, out, nt, &so));
        assert_memory_equal(out, ref, (size_t)n * 4);
        /* the output encoded chunk by chunk: the bytes of the whole fp32
         * result encoded at once (out is not written) */
        const wmat_dtype edts[3] = {WMAT_F16, WMAT_BF16, WMAT_F32};
        for (int e = 0; e < 3 && !nf; e++) {
            unsigned char *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
            const size_t eb = wmat_dtype_bytes(edts[e], (uint64_t)n);
            TU_OK(wmat_from_f32(want, edts[e], ref, (uint64_t)n));
            memset(got, 0xab, eb);
            s.enc = got;
            s.enc_dt = edts[e];
            wmat_ties_stream_out so2;
            TU_OK(wmat__ties_stream(&s, NULL, nt, &so2));
            assert_memory_equal(got, want, eb);
            assert_int_equal(so2.st.conflicts, so.st.conflicts);
            TU_ASSERT_NEAR(so2.st.dn, so.st.dn, 1e-12 * (1 + so.st.dn)); /* (the threads' sums meet in any order) */
            TU_ASSERT_NEAR(so2.st.bn, so.st.bn, 1e-12 * (1 + so.st.bn));
            s.enc = NULL;
            free(want);
            free(got);
        }
        assert_true(so.st.bad == INT64_MAX);
        TU_ASSERT_NEAR((double)so.st.conflicts / (double)n, info.sign_conflicts, 1e-12);
        for (int i = 0; i < n_in; i++) {
            assert_memory_equal(&so.thr[i], &thr[i], sizeof thr[i]);
            assert_int_equal(so.cut[i], cut[i]);
            assert_int_equal(so.none[i], none[i]);
        }
    }
    for (int i = 0; i <= n_in; i++) {
        free(src[i]);
        free(dec[i]);
        free(stored[i]);
    }
    for (int i = 0; i < n_in; i++) free(xc[i]);
    free(d);
    free(ref);
    free(out);
    free(h);
}

static void test_ties_stream_matches_kernel(void **state)
{
    (void)state;
    const wmat_dtype f16[4] = {WMAT_F16, WMAT_F16, WMAT_F16, WMAT_F16}, f32[4] = {WMAT_F32, WMAT_F32, WMAT_F32, WMAT_F32};
    const wmat_dtype mix[4] = {WMAT_F16, WMAT_F32, WMAT_Q8_0, WMAT_F16};
    const double dh[3] = {0.5, 0.5, 0.5}, dm[3] = {0.3, 1.0, 0.61}, dz[3] = {1e-6, 0.9, 0.2};
    const int64_t n_odd = 3 * 16384 + 37 * 32; /* ends inside the fourth chunk (whole q8_0 blocks) */
    stream_case(n_odd, 2, f16, dh, 0, 1);
    stream_case(n_odd, 2, f16, dh, 512, 2); /* many magnitudes equal the threshold: the cut from the bucket's entries */
    stream_case(n_odd, 3, mix, dm, 512, 3);
    stream_case(n_odd, 2, f16, dm, 64, 7);  /* most entries in the threshold's bucket: the cut pass (C) */
    stream_case(n_odd, 3, f32, dz, 0, 4);  /* k = 0 for the first input, everything kept by the second */
    stream_case(64, 3, mix, dm, 0, 5);     /* one short chunk */
    stream_case(5 * 16384, 1, f16, dh, 512, 6);
    /* f16 everywhere (the passes read the halves directly where the CPU
     * has AVX-512): a size that is no multiple of 8 or 16, cuts inside a
     * vector, one chunk shorter than a vector */
    stream_case(2 * 16384 + 4101, 3, f16, dm, 512, 8);
    stream_case(2 * 16384 + 4101, 2, f16, dm, 64, 9);
    stream_case(13, 3, f16, dm, 0, 10);
    print_message("streamed TIES: f16 read directly %s on this CPU\n", wmat__ties_f16_direct() ? "ran" : "did not run");
}

/* The element-wise methods streamed (wmat__merge_stream_linear) against
 * their kernels on the decoded inputs, byte for byte: task arithmetic,
 * DARE-linear and DARE-TIES, inputs stored as f16, f32, q8_0 and a mix,
 * one and two threads, sizes that end inside a chunk of 65536 (DARE's mask
 * chunk) and below one chunk, densities below 1 and of 1 (no drop), the
 * output also encoded chunk by chunk to f16, bf16 and f32; the dropped
 * share and the sign conflicts equal the kernel's report. */
static void lin_case(const char *method, int64_t n, int n_in, const wmat_dtype *dts, int normalize, uint64_t seed)
{
    const wmat_merge_method *mt = wmat__merge_method_find(method);
    assert_non_null(mt);
    assert_true(mt->stream & WMAT_MS_LIN);
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    float *src[4], *dec[4], *ref = malloc((size_t)n * 4), *out = malloc((size_t)n * 4);
    void *stored[4];
    for (int i = 0; i <= n_in; i++) {
        src[i] = malloc((size_t)n * 4);
        dec[i] = malloc((size_t)n * 4);
        stored[i] = malloc(wmat_dtype_bytes(dts[i], (uint64_t)n));
        for (int64_t j = 0; j < n; j++) src[i][j] = (i ? src[0][j] : 0.0f) + (i ? 0.01f : 0.05f) * wmat_rng_normal(&r);
        TU_OK(wmat_from_f32(stored[i], dts[i], src[i], (uint64_t)n));
        TU_OK(wmat_to_f32(dec[i], stored[i], dts[i], (uint64_t)n));
    }
    const double w[3] = {1.0, -0.5, 0.75}, dens[3] = {0.3, 1.0, 0.61};
    float *xc[3];
    for (int i = 0; i < n_in; i++) {
        xc[i] = malloc((size_t)n * 4);
        memcpy(xc[i], dec[i + 1], (size_t)n * 4);
    }
    wmat_merge_args a = args(n, n_in, dec[0], xc, w, dens, NULL);
    a.lambda = 0.9;
    a.normalize = normalize;
    a.seed = 0x5eed0000u + seed;
    a.n_threads = 2;
    wmat_merge_tinfo info = {0, 0, 0};
    TU_OK(mt->fn(&a, ref, &info));
    uint64_t seeds[3];
    for (int i = 0; i < n_in; i++) seeds[i] = wmat__merge_dare_seed(a.seed, i);
    const wmat_lin_how how = {mt->stream, dens, seeds};
    const void *xs[3] = {stored[1], stored[2], stored[3]};
    for (int nt = 1; nt <= 2; nt++) {
        wmat_ties_src s = {n_in, n, stored[0], dts[0], xs, dts + 1, NULL, w, 0.9, normalize, NULL, WMAT_F32, 0, 0};
        wmat_lin_stream_out so;
        memset(out, 0xff, (size_t)n * 4);
        TU_OK(wmat__merge_stream_linear(&s, &how, out, nt, &so));
        assert_memory_equal(out, ref, (size_t)n * 4);
        assert_true(so.bad == INT64_MAX);
        TU_ASSERT_NEAR((double)so.dropped / ((double)n * n_in), info.trimmed, 1e-12);
        TU_ASSERT_NEAR((double)so.conflicts / (double)n, info.sign_conflicts, 1e-12);
        if (mt->stream & WMAT_MS_DROP) assert_true(so.dropped > 0);
        const wmat_dtype edts[3] = {WMAT_F16, WMAT_BF16, WMAT_F32};
        for (int e = 0; e < 3; e++) {
            unsigned char *want = malloc((size_t)n * 4), *got = malloc((size_t)n * 4);
            const size_t eb = wmat_dtype_bytes(edts[e], (uint64_t)n);
            TU_OK(wmat_from_f32(want, edts[e], ref, (uint64_t)n));
            memset(got, 0xab, eb);
            s.enc = got;
            s.enc_dt = edts[e];
            wmat_lin_stream_out so2;
            TU_OK(wmat__merge_stream_linear(&s, &how, NULL, nt, &so2));
            assert_memory_equal(got, want, eb);
            assert_int_equal(so2.conflicts, so.conflicts);
            assert_int_equal(so2.dropped, so.dropped);
            TU_ASSERT_NEAR(so2.dn, so.dn, 1e-12 * (1 + so.dn));
            s.enc = NULL;
            free(want);
            free(got);
        }
    }
    for (int i = 0; i <= n_in; i++) {
        free(src[i]);
        free(dec[i]);
        free(stored[i]);
    }
    for (int i = 0; i < n_in; i++) free(xc[i]);
    free(ref);
    free(out);
}

static void test_lin_stream_matches_kernel(void **state)
{
    (void)state;
    const wmat_dtype f16[4] = {WMAT_F16, WMAT_F16, WMAT_F16, WMAT_F16}, f32[4] = {WMAT_F32, WMAT_F32, WMAT_F32, WMAT_F32};
    const wmat_dtype mix[4] = {WMAT_F16, WMAT_F32, WMAT_Q8_0, WMAT_F16};
    const int64_t n_odd = 2 * 65536 + 37 * 32; /* ends inside the third chunk (whole q8_0 blocks) */
    const char *methods[3] = {"task_arithmetic", "dare_linear", "dare_ties"};
    for (int q = 0; q < 3; q++) {
        const int norm = q == 2;
        lin_case(methods[q], n_odd, 3, mix, norm, 1 + (uint64_t)q);
        lin_case(methods[q], n_odd, 2, f16, norm, 4 + (uint64_t)q);
        lin_case(methods[q], n_odd, 2, f32, !norm, 7 + (uint64_t)q); /* the other normalize */
        lin_case(methods[q], 64, 3, mix, norm, 10 + (uint64_t)q);    /* one short chunk */
        lin_case(methods[q], 13, 1, f16, norm, 13 + (uint64_t)q);
    }
}

/* A NaN in a task vector: the NaN magnitude sorts above every number, so it
 * is kept, and the output's first non-finite entry is reported (the driver
 * turns that into its "non-finite value" error). */
static void test_ties_fused_nan(void **state)
{
    (void)state;
    enum { N = 4099 };
    float base[N], x0[N], x1[N], out[N];
    uint32_t h[WMAT_TIES_HIST];
    for (int j = 0; j < N; j++) {
        base[j] = 0.001f * (float)j;
        x0[j] = base[j] + (j % 2 ? 0.5f : -0.25f);
        x1[j] = base[j] + 0.125f;
    }
    x0[37] = NAN;
    x1[2000] = NAN;
    float *d[2] = {x0, x1}, thr[2];
    int64_t cut[2];
    int none[2];
    for (int i = 0; i < 2; i++) {
        memset(h, 0, sizeof h);
        wmat__ties_delta_hist(d[i], base, N, h);
        TU_OK(wmat__ties_threshold(d[i], N, N / 4, h, 1, &thr[i], &cut[i], &none[i]));
    }
    const double w[2] = {1, 1};
    const wmat_ties_fuse f = {2, base, (const float *const *)d, w, thr, cut, none, 1.0, 1, NULL, NULL};
    for (int impl = 0; impl < 3; impl++) { /* AUTO (AVX-512 where the CPU has it), C, AVX2 */
        wmat_ties_stats st = {0, 0, 0, INT64_MAX};
        wmat__ties_fused_range(&f, out, 0, N, impl == 1 ? WMAT_TIES_IMPL_C : impl == 2 ? WMAT_TIES_IMPL_AVX2 : WMAT_TIES_IMPL_AUTO, &st);
        assert_int_equal(st.bad, 37);
        assert_true(isnan(out[37]) && isnan(out[2000]));
    }
}

/* A model of the given shape: base + noise, or (quant > 0) base + noise
 * rounded to multiples of 1/quant, so that many task-vector magnitudes tie. */
static void make_model_q(const char *path, wmat_format fmt, wmat_dtype dt, uint64_t seed, const wmat_model *like, int vocab,
                         float quant, int nan_at)
{
    wmat_config cfg = tu_config(256, 512, 2, 4, 2, vocab, 32);
    wmat_model *m = NULL;
    TU_OK(wmat_model_create(&m, &cfg));
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        float *d = t->data;
        const float *base = like ? wmat_model_find((wmat_model *)like, t->name)->data : NULL;
        for (int64_t j = 0; j < wmat_tensor_nelem(t); j++) {
            float e = (base ? 0.02f : 0.5f) * wmat_rng_normal(&r);
            if (quant > 0) e = roundf(e * quant) / quant;
            d[j] = (base ? base[j] : 0.0f) + e;
        }
        if (nan_at >= 0 && i == 1) d[nan_at] = NAN;
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = fmt;
    sp.dtype = dt;
    TU_OK(wmat_model_save(m, path, &sp));
    wmat_model_free(m);
}


/* The overlapped path (read-ahead thread, one-pass TIES, write-behind)
 * writes the same bytes as the sequential one (--sequential), for GGUF f16
 * and f32 and llama2.c output, on two threads, with inputs as f32 llama2.c,
 * f16 GGUF (mapped matrices of several chunks) and HF (rotary rows: the
 * converted-whole branch), and on data with many ties at the threshold. A
 * NaN in an input fails both paths with the same message and no output. */
static void test_driver_overlap_same_bytes(void **state)
{
    (void)state;
    char base[512], a[512], b[512], o1[512], o2[512];
    snprintf(base, sizeof base, "%s", tu_tmp("ob.bin"));
    snprintf(a, sizeof a, "%s", tu_tmp("oa.gguf"));
    snprintf(b, sizeof b, "%s", tu_tmp("ob_hf"));
    snprintf(o1, sizeof o1, "%s", tu_tmp("o_seq.gguf"));
    snprintf(o2, sizeof o2, "%s", tu_tmp("o_ovl.gguf"));
    make_model_q(base, WMAT_FMT_LLAMA2C, WMAT_F32, 1, NULL, 4096, 0, -1);
    wmat_model *mb = tu_load_f32(base);
    wmat_context ctx = wmat_context_default();
    ctx.n_threads = 2;
    for (int q = 0; q < 2; q++) {
        make_model_q(a, WMAT_FMT_GGUF, WMAT_F16, 2, mb, 4096, q ? 64.0f : 0, -1);
        make_model_q(b, WMAT_FMT_HF, WMAT_F32, 3, mb, 4096, q ? 64.0f : 0, -1);
        wmat_merge_model mm[2] = {{a, {1, {1.0}}, {1, {0.4}}}, {b, {1, {0.5}}, {2, {0.2, 0.9}}}};
        const wmat_dtype dts[3] = {WMAT_F16, WMAT_F32, WMAT_F32};
        const char *ext[3] = {".gguf", ".gguf", ".bin"};
        for (int o = 0; o < 3; o++) {
            /* one path (the GGUF header names the model after its file) */
            snprintf(o1, sizeof o1, "%s", tu_tmp(o == 2 ? "o_merge.bin" : "o_merge.gguf"));
            (void)ext;
            wmat_merge_report rep[2];
            unsigned char *bytes[2];
            size_t nbytes[2];
            for (int p = 0; p < 2; p++) {
                wmat_merge_spec s;
                memset(&s, 0, sizeof s);
                s.method = "ties";
                s.base = base;
                s.n_models = 2;
                s.models = mm;
                s.normalize = -1;
                s.lambda = (wmat_mvalue){1, {0.9}};
                s.out_dtype = dts[o];
                s.ctx = &ctx;
                s.sequential = p == 0;
                TU_OK(wmat__merge_run(&s, o1, &rep[p]));
                bytes[p] = tu_slurp(o1, &nbytes[p]);
            }
            assert_int_equal(nbytes[0], nbytes[1]);
            assert_memory_equal(bytes[0], bytes[1], nbytes[0]);
            free(bytes[0]);
            free(bytes[1]);
            assert_int_equal(rep[0].n_tensors, rep[1].n_tensors);
            for (int i = 0; i < rep[0].n_tensors; i++) {
                TU_ASSERT_NEAR(rep[0].tensors[i].trimmed, rep[1].tensors[i].trimmed, 1e-12);
                TU_ASSERT_NEAR(rep[0].tensors[i].sign_conflicts, rep[1].tensors[i].sign_conflicts, 1e-12);
                TU_ASSERT_NEAR(rep[0].tensors[i].delta_norm, rep[1].tensors[i].delta_norm,
                               1e-9 * (1 + rep[0].tensors[i].delta_norm));
            }
            assert_int_equal(rep[0].bytes_read, rep[1].bytes_read);
            assert_true(rep[1].fill_cpu > 0); /* the streamed TIES ran (its passes' times are CPU time) */
            wmat__merge_report_free(&rep[0]);
            wmat__merge_report_free(&rep[1]);
        }
    }
    /* NaN in an input */
    make_model_q(a, WMAT_FMT_GGUF, WMAT_F32, 2, mb, 4096, 0, 77);
    wmat_merge_model mm[1] = {{a, {1, {1.0}}, {1, {0.5}}}};
    char msg[2][512];
    snprintf(o1, sizeof o1, "%s", tu_tmp("o_nan.gguf"));
    for (int p = 0; p < 2; p++) {
        wmat_merge_spec s;
        memset(&s, 0, sizeof s);
        s.method = "ties";
        s.base = base;
        s.n_models = 1;
        s.models = mm;
        s.normalize = -1;
        s.out_dtype = WMAT_F16;
        s.ctx = &ctx;
        s.sequential = p == 0;
        wmat_merge_report rep;
        const int nrc = wmat__merge_run(&s, o1, &rep);
        if (nrc != WMAT_ERR_NUMERIC) print_message("%s\n", wmat_last_error());
        assert_int_equal(nrc, WMAT_ERR_NUMERIC);
        snprintf(msg[p], sizeof msg[p], "%s", wmat_last_error());
        assert_non_null(strstr(msg[p], "non-finite value at index 77"));
        struct stat st;
        assert_int_not_equal(stat(o1, &st), 0); /* no output */
    }
    assert_string_equal(msg[0], msg[1]);
    wmat_model_free(mb);
}

/* TIES of two models over base into out, by the sequential path (rep[0])
 * and the streamed one (rep[1]): the two files are the same bytes. */
static void method_both_paths(const char *method, const char *base, wmat_merge_model *mm, double lambda, wmat_dtype odt,
                              wmat_context *ctx, const char *out, wmat_merge_report rep[2])
{
    /* p = 0: sequential; 1: the default (streamed; O_DIRECT reads where the
     * file system takes them); 2: streamed through the mappings (no_direct,
     * with the read-ahead mapping the next tensor's pages) */
    unsigned char *bytes[3];
    size_t nbytes[3];
    wmat_merge_report r2;
    for (int p = 0; p < 3; p++) {
        wmat_merge_spec s;
        memset(&s, 0, sizeof s);
        s.method = method;
        s.seed = 77;
        s.base = base;
        s.n_models = 2;
        s.models = mm;
        s.normalize = -1;
        s.lambda = (wmat_mvalue){1, {lambda}};
        s.out_dtype = odt;
        s.ctx = ctx;
        s.sequential = p == 0;
        s.no_direct = p == 2;
        TU_OK(wmat__merge_run(&s, out, p < 2 ? &rep[p] : &r2));
        bytes[p] = tu_slurp(out, &nbytes[p]);
    }
    for (int p = 1; p < 3; p++) {
        assert_int_equal(nbytes[0], nbytes[p]);
        assert_memory_equal(bytes[0], bytes[p], nbytes[0]);
    }
    assert_int_equal(rep[0].direct_bytes, 0);
    assert_int_equal(r2.direct_bytes, 0);
    assert_int_equal(r2.streamed_tensors, rep[1].streamed_tensors);
    /* (r2.populated: tensors the read-ahead mapped ahead; it may skip them
     * all when the merge runs ahead of it, so it is not asserted) */
    if (!rep[1].direct_bytes) print_message("O_DIRECT reads did not run (the file system of TMPDIR refused them?)\n");
    else assert_true(rep[1].populated == 0);
    wmat__merge_report_free(&r2);
    for (int p = 0; p < 3; p++) free(bytes[p]);
}

static void ties_both_paths(const char *base, wmat_merge_model *mm, double lambda, wmat_dtype odt, wmat_context *ctx,
                            const char *out, wmat_merge_report rep[2])
{
    method_both_paths("ties", base, mm, lambda, odt, ctx, out, rep);
}

/* Every input a GGUF of f16 or q8_0 (every tensor streamed from its stored
 * bytes, no fp32 input buffer allocated), one and two threads: the same
 * bytes as the sequential path, and the streamed passes reported. */
static void test_driver_stream_same_bytes(void **state)
{
    (void)state;
    char base[512], a[512], b[512], o1[512];
    snprintf(base, sizeof base, "%s", tu_tmp("sb.gguf"));
    snprintf(a, sizeof a, "%s", tu_tmp("sa.gguf"));
    snprintf(b, sizeof b, "%s", tu_tmp("sc.gguf"));
    snprintf(o1, sizeof o1, "%s", tu_tmp("s_merge.gguf"));
    make_model_q(base, WMAT_FMT_GGUF, WMAT_F16, 11, NULL, 512, 0, -1);
    wmat_model *mb = tu_load_f32(base);
    make_model_q(a, WMAT_FMT_GGUF, WMAT_F16, 12, mb, 512, 256.0f, -1);
    make_model_q(b, WMAT_FMT_GGUF, WMAT_Q8_0, 13, mb, 512, 0, -1);
    wmat_merge_model mm[2] = {{a, {1, {1.0}}, {1, {0.3}}}, {b, {1, {0.7}}, {2, {0.5, 0.8}}}};
    for (int nt = 1; nt <= 2; nt++) {
        wmat_context ctx = wmat_context_default();
        ctx.n_threads = nt;
        wmat_merge_report rep[2];
        ties_both_paths(base, mm, 1.0, WMAT_F16, &ctx, o1, rep);
        assert_true(rep[0].stage_cpu[2] == 0 && rep[1].stage_cpu[2] > 0);
        for (int i = 0; i < rep[0].n_tensors; i++)
            TU_ASSERT_NEAR(rep[0].tensors[i].sign_conflicts, rep[1].tensors[i].sign_conflicts, 1e-12);
        wmat__merge_report_free(&rep[0]);
        wmat__merge_report_free(&rep[1]);
    }
    wmat_model_free(mb);
}

/* GGUF inputs all f16 (the passes read the halves directly) and a GGUF
 * output in f16, bf16 or f32: the merge writes every matrix in the output
 * type itself through the writer's encoder hook (no fp32 tensor); the
 * same bytes as the sequential path, on one and two threads. q8_0 output
 * keeps the fp32 fill (no matrix encoded by the merge), the same bytes. */
static void test_driver_encode_same_bytes(void **state)
{
    (void)state;
    char base[512], a[512], b[512], o1[512];
    snprintf(base, sizeof base, "%s", tu_tmp("eb.gguf"));
    snprintf(a, sizeof a, "%s", tu_tmp("ea.gguf"));
    snprintf(b, sizeof b, "%s", tu_tmp("ec.gguf"));
    snprintf(o1, sizeof o1, "%s", tu_tmp("e_merge.gguf"));
    make_model_q(base, WMAT_FMT_GGUF, WMAT_F16, 21, NULL, 1000, 0, -1);
    wmat_model *mb = tu_load_f32(base);
    make_model_q(a, WMAT_FMT_GGUF, WMAT_F16, 22, mb, 1000, 256.0f, -1);
    make_model_q(b, WMAT_FMT_GGUF, WMAT_F16, 23, mb, 1000, 0, -1);
    wmat_merge_model mm[2] = {{a, {1, {1.0}}, {1, {0.3}}}, {b, {1, {0.7}}, {2, {0.5, 0.8}}}};
    const wmat_dtype odts[4] = {WMAT_F16, WMAT_BF16, WMAT_F32, WMAT_Q8_0};
    for (int run = 0; run < 8; run++) {
        const int nt = 1 + run % 2;
        const wmat_dtype odt = odts[run / 2];
        wmat_context ctx = wmat_context_default();
        ctx.n_threads = nt;
        wmat_merge_report rep[2];
        ties_both_paths(base, mm, 0.8, odt, &ctx, o1, rep);
        int matrices = 0;
        for (int i = 0; i < rep[1].n_tensors; i++) {
            const wmat_tensor *t = wmat_model_find(mb, rep[1].tensors[i].name);
            matrices += t && t->ndim == 2;
            TU_ASSERT_NEAR(rep[0].tensors[i].sign_conflicts, rep[1].tensors[i].sign_conflicts, 1e-12);
            TU_ASSERT_NEAR(rep[0].tensors[i].delta_norm, rep[1].tensors[i].delta_norm, 1e-9 * (1 + rep[0].tensors[i].delta_norm));
        }
        assert_int_equal(rep[0].encoded_tensors, 0);
        assert_int_equal(rep[1].encoded_tensors, odt == WMAT_Q8_0 ? 0 : matrices);
        assert_true(matrices > 0);
        wmat__merge_report_free(&rep[0]);
        wmat__merge_report_free(&rep[1]);
    }
    wmat_model_free(mb);
}

/* Task arithmetic, DARE-linear and DARE-TIES streamed (GGUF inputs in f16
 * and q8_0: every tensor streams) against the sequential path (the
 * kernels on fp32 copies): the same bytes for GGUF f16 output (the matrices
 * encoded by the merge), f32 and q8_0 (the fill hook), one and two threads;
 * the dropped share and the sign conflicts agree per tensor. */
static void test_driver_lin_stream_same_bytes(void **state)
{
    (void)state;
    char base[512], a[512], b[512], o1[512];
    snprintf(base, sizeof base, "%s", tu_tmp("lb.gguf"));
    snprintf(a, sizeof a, "%s", tu_tmp("la.gguf"));
    snprintf(b, sizeof b, "%s", tu_tmp("lc.gguf"));
    snprintf(o1, sizeof o1, "%s", tu_tmp("l_merge.gguf"));
    make_model_q(base, WMAT_FMT_GGUF, WMAT_F16, 31, NULL, 1000, 0, -1);
    wmat_model *mb = tu_load_f32(base);
    make_model_q(a, WMAT_FMT_GGUF, WMAT_F16, 32, mb, 1000, 0, -1);
    make_model_q(b, WMAT_FMT_GGUF, WMAT_Q8_0, 33, mb, 1000, 0, -1);
    wmat_merge_model mm[2] = {{a, {1, {1.0}}, {1, {0.3}}}, {b, {1, {0.7}}, {2, {0.5, 0.8}}}};
    const char *methods[3] = {"task_arithmetic", "dare_linear", "dare_ties"};
    const wmat_dtype odts[3] = {WMAT_F16, WMAT_F32, WMAT_Q8_0};
    for (int q = 0; q < 3; q++)
        for (int run = 0; run < 6; run++) {
            const int nt = 1 + run % 2;
            const wmat_dtype odt = odts[run / 2];
            wmat_context ctx = wmat_context_default();
            ctx.n_threads = nt;
            wmat_merge_report rep[2];
            /* task arithmetic reads no density */
            wmat_merge_model m2[2] = {mm[0], mm[1]};
            if (q == 0) m2[0].density.n = m2[1].density.n = 0;
            method_both_paths(methods[q], base, m2, 0.8, odt, &ctx, o1, rep);
            int matrices = 0;
            for (int i = 0; i < rep[1].n_tensors; i++) {
                const wmat_tensor *t = wmat_model_find(mb, rep[1].tensors[i].name);
                matrices += t && t->ndim == 2;
                TU_ASSERT_NEAR(rep[0].tensors[i].trimmed, rep[1].tensors[i].trimmed, 1e-12);
                TU_ASSERT_NEAR(rep[0].tensors[i].sign_conflicts, rep[1].tensors[i].sign_conflicts, 1e-12);
                TU_ASSERT_NEAR(rep[0].tensors[i].delta_norm, rep[1].tensors[i].delta_norm,
                               1e-9 * (1 + rep[0].tensors[i].delta_norm));
                if (q) assert_true(rep[1].tensors[i].trimmed > 0);
            }
            assert_int_equal(rep[0].streamed_tensors, 0);
            assert_int_equal(rep[1].streamed_tensors, rep[1].n_tensors);
            assert_int_equal(rep[0].encoded_tensors, 0);
            assert_int_equal(rep[1].encoded_tensors, odt == WMAT_F16 || odt == WMAT_F32 ? matrices : 0);
            wmat__merge_report_free(&rep[0]);
            wmat__merge_report_free(&rep[1]);
        }
    wmat_model_free(mb);
}

/* Different architectures or vocabularies: an error naming both files, and
 * no output. A key the method does not read is refused before any load. */
static void test_driver_refuses_mismatch(void **state)
{
    (void)state;
    char base[512], v[512], out[512]; /* tu_tmp's buffers rotate */
    snprintf(base, sizeof base, "%s", tu_tmp("rb.bin"));
    snprintf(v, sizeof v, "%s", tu_tmp("rv.bin"));
    snprintf(out, sizeof out, "%s", tu_tmp("rout.gguf"));
    make_model(base, WMAT_FMT_LLAMA2C, 1, NULL, 64);
    make_model(v, WMAT_FMT_LLAMA2C, 2, NULL, 96);
    wmat_merge_model mm[1] = {{v, {0, {0}}, {0, {0}}}};
    wmat_merge_spec s;
    memset(&s, 0, sizeof s);
    s.method = "task_arithmetic";
    s.base = base;
    s.n_models = 1;
    s.models = mm;
    s.normalize = -1;
    wmat_merge_report rep;
    assert_int_equal(wmat__merge_run(&s, out, &rep), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), base));
    assert_non_null(strstr(wmat_last_error(), v));
    assert_non_null(strstr(wmat_last_error(), "vocab_size"));
    struct stat st;
    assert_int_not_equal(stat(out, &st), 0);
    s.method = "slerp";
    s.t = (wmat_mvalue){1, {0.5}};
    s.density = (wmat_mvalue){1, {0.5}};
    assert_int_equal(wmat__merge_run(&s, out, &rep), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "does not take density"));
    s.method = "bogus";
    assert_int_equal(wmat__merge_run(&s, out, &rep), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "unknown merge method"));
    assert_int_not_equal(stat(out, &st), 0);

    /* same vocabulary size, one piece different */
    char ga[512], gb[512];
    snprintf(ga, sizeof ga, "%s", tu_tmp("va.gguf"));
    snprintf(gb, sizeof gb, "%s", tu_tmp("vb.gguf"));
    make_gguf_with_vocab(ga, 1, 't');
    make_gguf_with_vocab(gb, 2, 'x');
    wmat_merge_model lm[2] = {{ga, {0, {0}}, {0, {0}}}, {gb, {0, {0}}, {0, {0}}}};
    memset(&s, 0, sizeof s);
    s.method = "linear";
    s.n_models = 2;
    s.models = lm;
    s.normalize = -1;
    assert_int_equal(wmat__merge_run(&s, out, &rep), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "different vocabularies (token 5 is 't5' vs 'x5')"));
    assert_non_null(strstr(wmat_last_error(), ga));
    assert_non_null(strstr(wmat_last_error(), gb));
    assert_int_not_equal(stat(out, &st), 0);
    lm[1].path = ga; /* and with itself it merges */
    TU_OK(wmat__merge_run(&s, out, &rep));
    wmat__merge_report_free(&rep);
}

/* The CLI: a YAML config and the same merge given as flags write the same
 * weights; a config with an unknown key, a bad method or mismatched models
 * fails with the reason and writes nothing. */
static void test_cli_yaml_and_flags(void **state)
{
    (void)state;
    char base[512], a[512], b[512], v[512]; /* tu_tmp's buffers rotate */
    snprintf(base, sizeof base, "%s", tu_tmp("cb.bin"));
    snprintf(a, sizeof a, "%s", tu_tmp("ca.bin"));
    snprintf(b, sizeof b, "%s", tu_tmp("cc.bin"));
    snprintf(v, sizeof v, "%s", tu_tmp("cv.bin"));
    make_model(base, WMAT_FMT_LLAMA2C, 11, NULL, 64);
    wmat_model *mb = tu_load_f32(base);
    make_model(a, WMAT_FMT_LLAMA2C, 12, mb, 64);
    make_model(b, WMAT_FMT_LLAMA2C, 13, mb, 64);
    make_model(v, WMAT_FMT_LLAMA2C, 14, NULL, 96);
    wmat_model_free(mb);
    char yaml[4096], cmd[4096];
    snprintf(yaml, sizeof yaml,
             "merge_method: dare_ties\nbase_model: %s\nmodels:\n  - model: %s\n  - model: %s\n    parameters: {weight: 0.5}\n"
             "  - model: %s\n    parameters: {weight: 0.8}\nparameters: {density: 0.6, seed: 9}\ndtype: float32\n",
             base, base, a, b);
    const char *cfg = tu_tmp("c.yaml"), *o1 = tu_tmp("c1.gguf"), *o2 = tu_tmp("c2.gguf");
    assert_int_equal(tu_write_file(cfg, yaml, strlen(yaml)), 0);
    int code = -1;
    snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet --threads 1 2>&1", tu_cli(), cfg, o1);
    char *out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s merge --method dare_ties --base %s %s %s --weights 0.5,0.8 --density 0.6 --seed 9 %s --threads 1 2>&1",
             tu_cli(), base, a, b, o2);
    out = tu_run(cmd, &code);
    if (code != 0) fail_msg("%s -> %d: %s", cmd, code, out);
    assert_non_null(strstr(out, "ETA")); /* the per-tensor line */
    assert_non_null(strstr(out, "sign conflicts"));
    free(out);
    wmat_model *m1 = tu_load_f32(o1), *m2 = tu_load_f32(o2);
    for (int i = 0; i < wmat_model_n_tensors(m1); i++) {
        wmat_tensor *t1 = wmat_model_tensor(m1, i), *t2 = wmat_model_find(m2, t1->name);
        assert_non_null(t2);
        TU_ASSERT_CLOSE(t1->data, t2->data, (size_t)wmat_tensor_nelem(t1), 0, 0);
    }
    wmat_model_free(m1);
    wmat_model_free(m2);

    static const char *const bad[][2] = {
        {"merge_method: ties\nbase_model: B\nmodels: [A]\nweights: 1\n", "unknown key"},
        {"merge_method: magic\nmodels: [A]\n", "unknown merge_method"},
        {"merge_method: task_arithmetic\nbase_model: B\nmodels: [V]\n", "different architectures"},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        char text[2048], *w = text;
        for (const char *p = bad[c][0]; *p; p++) { /* A, B, V: the files */
            const char *sub = *p == 'A' ? a : *p == 'B' ? base : *p == 'V' ? v : NULL;
            if (sub && (p == bad[c][0] || p[-1] == ' ' || p[-1] == '[')) w += sprintf(w, "%s", sub);
            else *w++ = *p;
        }
        *w = 0;
        const char *o3 = tu_tmp("c3.gguf");
        assert_int_equal(tu_write_file(cfg, text, strlen(text)), 0);
        snprintf(cmd, sizeof cmd, "%s merge %s %s --quiet 2>&1", tu_cli(), cfg, o3);
        out = tu_run(cmd, &code);
        if (code == 0 || !strstr(out, bad[c][1])) fail_msg("case %zu: exit %d, output '%s'", c, code, out);
        free(out);
        struct stat st;
        assert_int_not_equal(stat(o3, &st), 0);
    }
}

static void logits_of(wmat_model *m, const int32_t *ids, int T, float *out)
{
    wmat_runtime *rt = NULL;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    TU_OK(wmat_forward(rt, ids, T, out));
    wmat_runtime_free(rt);
}

/* A weight signature without rank truncation is a linear merge: extract
 * sig = ft - base (weights 1, -1), apply base + 1 * sig (weights 1, 1); the
 * rebuilt model's logits equal the fine-tune's to 1e-5. */
static void test_signature_roundtrip_as_linear(void **state)
{
    (void)state;
    char base[512], ft[512], sig[512], back[512];
    snprintf(base, sizeof base, "%s", tu_tmp("sb.bin"));
    snprintf(ft, sizeof ft, "%s", tu_tmp("sf.bin"));
    snprintf(sig, sizeof sig, "%s", tu_tmp("sig.gguf"));
    snprintf(back, sizeof back, "%s", tu_tmp("back.gguf"));
    make_model(base, WMAT_FMT_LLAMA2C, 21, NULL, 64);
    wmat_model *mb = tu_load_f32(base);
    make_model(ft, WMAT_FMT_LLAMA2C, 22, mb, 64);
    wmat_model_free(mb);
    const char *steps[2][3] = {{ft, base, sig}, {base, sig, back}};
    for (int s = 0; s < 2; s++) {
        wmat_merge_model mm[2] = {{steps[s][0], {1, {1.0}}, {0, {0}}}, {steps[s][1], {1, {s ? 1.0 : -1.0}}, {0, {0}}}};
        wmat_merge_spec sp;
        memset(&sp, 0, sizeof sp);
        sp.method = "linear";
        sp.n_models = 2;
        sp.models = mm;
        sp.normalize = 0;
        wmat_merge_report rep;
        TU_OK(wmat__merge_run(&sp, steps[s][2], &rep));
        wmat__merge_report_free(&rep);
    }
    wmat_model *a = tu_load_f32(ft), *b = tu_load_f32(back);
    enum { T = 16 };
    int32_t ids[T];
    for (int i = 0; i < T; i++) ids[i] = (i * 7 + 1) % 64;
    float *la = malloc(sizeof(float) * T * 64), *lb = malloc(sizeof(float) * T * 64);
    logits_of(a, ids, T, la);
    logits_of(b, ids, T, lb);
    TU_ASSERT_CLOSE(lb, la, (size_t)T * 64, 1e-5, 0);
    free(la);
    free(lb);
    wmat_model_free(a);
    wmat_model_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_matches_sort),
        cmocka_unit_test(test_trim_topk_exact),
        cmocka_unit_test(test_ties_hand_example),
        cmocka_unit_test(test_task_arithmetic_and_linear),
        cmocka_unit_test(test_dare_expectation_and_seed),
        cmocka_unit_test(test_dare_density_one),
        cmocka_unit_test(test_slerp),
        cmocka_unit_test(test_layer_schedule),
        cmocka_unit_test(test_yaml_config),
        cmocka_unit_test(test_driver_end_to_end),
        cmocka_unit_test(test_driver_refuses_mismatch),
        cmocka_unit_test(test_ties_fused_matches_kernel),
        cmocka_unit_test(test_ties_fused_nan),
        cmocka_unit_test(test_ties_stream_matches_kernel),
        cmocka_unit_test(test_lin_stream_matches_kernel),
        cmocka_unit_test(test_driver_overlap_same_bytes),
        cmocka_unit_test(test_driver_stream_same_bytes),
        cmocka_unit_test(test_driver_encode_same_bytes),
        cmocka_unit_test(test_driver_lin_stream_same_bytes),
        cmocka_unit_test(test_cli_yaml_and_flags),
        cmocka_unit_test(test_signature_roundtrip_as_linear),
    };
    return tu_run_tests("merge", tests, NULL, NULL);
}
