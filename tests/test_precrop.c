/* PreCropping (src/train/adapter_precrop.c) and the `precrop` experiment:
 * - the layer-wise counts follow the scores: the layer with the higher
 *   channel scores keeps more channels, every layer keeps at least one, the
 *   counts sum to the budget; the uniform split is even;
 * - the plan's kept channels are the ones SNIP (|g w| on one batch at
 *   initialization, summed over a channel's gate row, up row and down
 *   column) ranks first, with the counts of one global threshold;
 * - the trained model is full-shape with the cut channels exactly 0, and
 *   the kept ones start from the model's initial weights; the cropped
 *   forward equals the full model's forward with those channels zeroed
 *   (1e-5), before and after training; the trainable parameters shrink by
 *   exactly the cut channels' 3 D each;
 * - the kernels' gradients (the kept rows of gate / up, the kept columns of
 *   down, and the input) against central differences, with channels that
 *   are not a prefix;
 * - refusals: a partial FFN target, a density outside (0, 1], no
 *   calibration tokens;
 * - the experiment: both crops have the same FFN parameters, fewer than the
 *   full model's. */
#include "test_util.h"

#include "experiment/experiment.h"
#include "train/adapter.h"
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FFN_TARGETS ((1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP) | (1u << WMAT_LIN_DOWN))

enum { D = 16, H = 24, L = 3, V = 13, T = 12 };

static wmat_model *tiny_model(uint64_t seed)
{
    wmat_config c = tu_config(D, H, L, 4, 2, V, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

static int32_t *tokens(size_t n)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % V;
    return d;
}

static wmat_train_params params(wmat_context *oc, const char *adapter, const int32_t *calib, size_t n)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.batch = 2;
    p.ctx = T;
    p.steps = 30;
    p.warmup = 2;
    p.lr = 2e-2f;
    p.adapter = adapter;
    p.lora_targets = FFN_TARGETS;
    p.adapter_density = 0.4f;
    p.adapter_calib = calib;
    p.adapter_calib_n = n;
    return p;
}

static void test_counts_follow_scores(void **state)
{
    (void)state;
    enum { NL = 3, NH = 8 };
    double s[NL * NH];
    /* layer 1 scores highest, layer 2 in the middle, layer 0 lowest */
    for (int j = 0; j < NH; j++) {
        s[0 * NH + j] = 0.1 + 0.01 * j;
        s[1 * NH + j] = 10.0 + j;
        s[2 * NH + j] = 0.5 + 0.4 * j;
    }
    int c[NL];
    TU_OK(wmat__precrop_counts(s, NL, NH, 12, 0, c));
    assert_int_equal(c[0] + c[1] + c[2], 12);
    assert_true(c[1] > c[2] && c[2] > c[0]);
    assert_int_equal(c[0], 1); /* its best channel only: none of layer 0 beats the others */
    assert_int_equal(c[1], NH);
    /* the same budget, uniform: even, the remainder to the lower layers */
    TU_OK(wmat__precrop_counts(s, NL, NH, 12, 1, c));
    assert_true(c[0] == 4 && c[1] == 4 && c[2] == 4);
    TU_OK(wmat__precrop_counts(s, NL, NH, 14, 1, c));
    assert_true(c[0] == 5 && c[1] == 5 && c[2] == 4);
    /* every layer keeps one even when its scores are all below the others' */
    TU_OK(wmat__precrop_counts(s, NL, NH, NL, 0, c));
    assert_true(c[0] == 1 && c[1] == 1 && c[2] == 1);
    TU_OK(wmat__precrop_counts(s, NL, NH, NL * NH, 0, c));
    assert_true(c[0] == NH && c[1] == NH && c[2] == NH);
    assert_int_equal(wmat__precrop_counts(s, NL, NH, NL - 1, 0, c), WMAT_ERR_INVALID);
    assert_int_equal(wmat__precrop_counts(s, NL, NH, NL * NH + 1, 1, c), WMAT_ERR_INVALID);
}

/* rows of gate (H, D) that are not all zero */
static int kept_rows(const wmat_tensor *t, int rows, int cols, unsigned char *kept)
{
    float *w = malloc((size_t)rows * cols * sizeof(float));
    TU_OK(wmat_tensor_dequant_rows(t, 0, rows, w));
    int n = 0;
    for (int r = 0; r < rows; r++) {
        kept[r] = 0;
        for (int j = 0; j < cols; j++) kept[r] |= w[(size_t)r * cols + j] != 0.0f;
        n += kept[r];
    }
    free(w);
    return n;
}

static void dense(const wmat_tensor *t, float *w) { TU_OK(wmat_tensor_dequant_rows(t, 0, t->shape[0], w)); }

/* The plan against SNIP computed here; the merged model's zeros; the
 * cropped forward against the zeroed full model; trained. */
static void check_model(const char *adapter, int uniform)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    const size_t n = 600;
    int32_t *d = tokens(n);
    wmat_model *m = tiny_model(17);
    wmat_train_params p = params(&oc, adapter, d, n);
    /* SNIP here: the same batch (p.batch windows of ctx) on the same model */
    float **g = NULL;
    double loss0;
    TU_OK(wmat_model_weight_gradients(m, d, n, T, p.batch, 1, &g, &loss0));
    double score[L * H];
    memset(score, 0, sizeof score);
    float wg[H * D], wu[H * D], wd[D * H];
    for (int l = 0; l < L; l++) {
        const wmat_linear_kind ks[3] = {WMAT_LIN_GATE, WMAT_LIN_UP, WMAT_LIN_DOWN};
        for (int q = 0; q < 3; q++) {
            const wmat_tensor *t = wmat_model_linear(m, l, ks[q]);
            int ti = -1;
            for (int i = 0; i < wmat_model_n_tensors(m); i++)
                if (wmat_model_tensor(m, i) == t) ti = i;
            assert_true(ti >= 0 && g[ti]);
            float w[H * D];
            dense(t, w);
            /* the plan's order of sums: a row's total added, a column's term by term */
            const float *gg = g[ti];
            if (q < 2)
                for (int j = 0; j < H; j++) {
                    double a = 0;
                    for (int i = 0; i < D; i++) a += fabs((double)gg[j * D + i] * w[j * D + i]);
                    score[l * H + j] += a;
                }
            else
                for (int i = 0; i < D; i++)
                    for (int j = 0; j < H; j++) score[l * H + j] += fabs((double)gg[i * H + j] * w[i * H + j]);
        }
    }
    wmat_model_weight_gradients_free(m, g);
    const int budget = (int)lround(0.4 * L * H);
    int cnt[L];
    TU_OK(wmat__precrop_counts(score, L, H, budget, uniform, cnt));

    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, n));
    assert_non_null(strstr(wmat_trainer_adapter_report(t), "FFN channels kept per layer"));
    /* trainable: the full model's less 3 D per cut channel */
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    {
        wmat_train_params pf = wmat_train_default_params();
        pf.exec = &oc;
        pf.batch = 2;
        pf.ctx = T;
        wmat_trainer *tf;
        TU_OK(wmat_trainer_create(&tf, m, &pf));
        wmat_train_memory mf;
        wmat_trainer_memory(tf, &mf);
        assert_int_equal(mem.trainable, mf.trainable - (int64_t)3 * D * (L * H - budget));
        wmat_trainer_free(tf);
    }
    /* the full model with the cut channels zeroed: the reference */
    wmat_model *ref = tiny_model(17);
    wmat_model *merged = NULL;
    TU_OK(wmat_trainer_model(t, &merged));
    for (int l = 0; l < L; l++) {
        unsigned char kept[H], ku[H];
        assert_int_equal(kept_rows(wmat_model_linear(merged, l, WMAT_LIN_GATE), H, D, kept), cnt[l]);
        assert_int_equal(kept_rows(wmat_model_linear(merged, l, WMAT_LIN_UP), H, D, ku), cnt[l]);
        assert_memory_equal(kept, ku, H);
        /* the kept ones are the layer's best by score */
        for (int j = 0; j < H; j++)
            if (kept[j])
                for (int i = 0; i < H; i++)
                    if (!kept[i]) assert_true(score[l * H + j] >= score[l * H + i]);
        /* merged: kept rows / columns as initialized, cut ones exactly 0 */
        float mg[H * D], mu[H * D], md[D * H];
        dense(wmat_model_linear(merged, l, WMAT_LIN_GATE), mg);
        dense(wmat_model_linear(merged, l, WMAT_LIN_UP), mu);
        dense(wmat_model_linear(merged, l, WMAT_LIN_DOWN), md);
        dense(wmat_model_linear(ref, l, WMAT_LIN_GATE), wg);
        dense(wmat_model_linear(ref, l, WMAT_LIN_UP), wu);
        dense(wmat_model_linear(ref, l, WMAT_LIN_DOWN), wd);
        for (int j = 0; j < H; j++)
            for (int i = 0; i < D; i++) {
                const float eg = kept[j] ? wg[j * D + i] : 0.0f, eu = kept[j] ? wu[j * D + i] : 0.0f,
                            ed = kept[j] ? wd[i * H + j] : 0.0f;
                assert_true(mg[j * D + i] == eg && mu[j * D + i] == eu && md[i * H + j] == ed);
                wg[j * D + i] = eg, wu[j * D + i] = eu, wd[i * H + j] = ed;
            }
        memcpy(wmat_model_linear(ref, l, WMAT_LIN_GATE)->data, wg, sizeof wg);
        memcpy(wmat_model_linear(ref, l, WMAT_LIN_UP)->data, wu, sizeof wu);
        memcpy(wmat_model_linear(ref, l, WMAT_LIN_DOWN)->data, wd, sizeof wd);
    }
    /* the cropped forward (the trainer's kernels) = the zeroed full model's */
    int32_t inp[T], tgt[T];
    for (int i = 0; i < T; i++) inp[i] = d[i + 5], tgt[i] = d[i + 6];
    double l0;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, T, 1, 1, 1, &l0));
    float lg[T * V];
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, ref, &rp));
    TU_OK(wmat_forward(rt, inp, T, lg));
    wmat_runtime_free(rt);
    const float *tl = wmat__trainer_logits(t);
    for (int i = 0; i < T * V; i++)
        if (!(fabsf(lg[i] - tl[i]) <= 1e-5f * (1 + fabsf(lg[i]))))
            fail_msg("%s: cropped vs zeroed full logit %d: %.7g vs %.7g", adapter, i, tl[i], lg[i]);
    /* train: the loss falls, the cut channels stay exactly 0, and the
     * merged model (sparse weights) still runs what the trainer runs */
    double first = NAN, last = NAN;
    for (int s = 0; s < 30; s++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
        if (!s) first = si.loss;
        last = si.loss;
    }
    if (!(last < first - 0.1)) fail_msg("%s: the loss did not fall (%.4f -> %.4f)", adapter, first, last);
    TU_OK(wmat_trainer_model(t, &merged));
    for (int l = 0; l < L; l++) {
        unsigned char kept[H];
        dense(wmat_model_linear(ref, l, WMAT_LIN_GATE), wg); /* the zeroed initial gate: its zero rows are the cut ones */
        for (int j = 0; j < H; j++) {
            kept[j] = 0;
            for (int i = 0; i < D; i++) kept[j] |= wg[j * D + i] != 0.0f;
        }
        float mg[H * D], mu[H * D], md[D * H];
        dense(wmat_model_linear(merged, l, WMAT_LIN_GATE), mg);
        dense(wmat_model_linear(merged, l, WMAT_LIN_UP), mu);
        dense(wmat_model_linear(merged, l, WMAT_LIN_DOWN), md);
        for (int j = 0; j < H; j++)
            if (!kept[j])
                for (int i = 0; i < D; i++) assert_true(mg[j * D + i] == 0.0f && mu[j * D + i] == 0.0f && md[i * H + j] == 0.0f);
    }
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, T, 1, 1, 1, &l0));
    TU_OK(wmat_runtime_create(&rt, merged, &rp));
    TU_OK(wmat_forward(rt, inp, T, lg));
    wmat_runtime_free(rt);
    tl = wmat__trainer_logits(t);
    for (int i = 0; i < T * V; i++)
        if (!(fabsf(lg[i] - tl[i]) <= 1e-5f * (1 + fabsf(lg[i]))))
            fail_msg("%s: trained: merged vs trainer logit %d: %.7g vs %.7g", adapter, i, lg[i], tl[i]);
    wmat_trainer_free(t);
    wmat_model_free(ref);
    wmat_model_free(m);
    free(d);
}

static void test_precrop_model(void **state)
{
    (void)state;
    check_model("precrop", 0);
}

static void test_uniform_model(void **state)
{
    (void)state;
    check_model("precrop-uniform", 1);
}

/* ---- kernels against central differences */

typedef struct {
    const wmat__adapter *a;
    wmat__adapter_cfg c;
    int BT, in, out;
    float *X, *w, *R, *Y, *scratch;
    void *fixed;
} fctx;

static double f_of(fctx *e)
{
    memset(e->Y, 0, sizeof(float) * (size_t)e->BT * e->out); /* the entry is the layer */
    float *const w[1] = {e->w};
    e->a->forward(&e->c, e->Y, NULL, e->scratch, e->X, (const float *const *)w, e->fixed, NULL, e->BT, e->in, e->out);
    double s = 0;
    for (int i = 0; i < e->BT * e->out; i++) s += (double)e->R[i] * e->Y[i];
    return s;
}

static void fd(fctx *e, float *x, const float *an, size_t n, const char *what)
{
    const float h = 1e-2f;
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) {
        const float s = x[i];
        x[i] = s + h;
        const double fp = f_of(e);
        x[i] = s - h;
        const double fm = f_of(e);
        x[i] = s;
        const double v = (fp - fm) / (2.0 * h);
        mx = fmax(mx, fabs(v));
        err = fmax(err, fabs(v - an[i]));
    }
    if (!(err <= 5e-3 * mx + 2e-4)) fail_msg("%s: max |analytic - fd| %.3g (max |fd| %.3g)", what, err, mx);
}

static void kernel_check(int side)
{
    enum { BT = 5, in = 12, out = 10 };
    const int n = side ? in : out, k = 4;
    const float idx[4] = {1, 4, 5, 9}; /* not a prefix, not evenly spread */
    float ir[2 + 4] = {(float)side, (float)k};
    memcpy(ir + 2, idx, sizeof idx);
    fctx e = {.a = wmat__adapter_find("precrop"), .BT = BT, .in = in, .out = out};
    assert_non_null(e.a);
    e.c = (wmat__adapter_cfg){.rank = k, .density = 0.5f, .nt = 1, .crop_cols = side, .init_rows = ir};
    int rows[WMAT__ADAPTER_MAX_TENSORS], cols[WMAT__ADAPTER_MAX_TENSORS];
    e.a->shapes(&e.c, in, out, rows, cols);
    assert_int_equal(rows[0], side ? out : k);
    assert_int_equal(cols[0], side ? k : in);
    const size_t nw = (size_t)rows[0] * cols[0];
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    float W[out * in];
    for (int i = 0; i < out * in; i++) W[i] = wmat_rng_normal(&r);
    e.fixed = calloc(e.a->fixed_bytes(&e.c, in, out), 1);
    e.w = calloc(nw, sizeof(float));
    float *dw = calloc(nw, sizeof(float));
    float *const ws[1] = {e.w};
    TU_OK(e.a->init(&e.c, ws, e.fixed, NULL, W, in, out, &r));
    assert_true(e.a->fixed_valid(&e.c, e.fixed, in, out));
    e.c.init_rows = NULL;
    /* the kept part starts from W */
    for (int j = 0; j < k; j++)
        if (side)
            for (int o = 0; o < out; o++) assert_true(e.w[o * k + j] == W[o * in + (int)idx[j]]);
        else
            for (int i = 0; i < in; i++) assert_true(e.w[j * in + i] == W[(int)idx[j] * in + i]);
    e.X = malloc(sizeof(float) * BT * in);
    e.R = malloc(sizeof(float) * BT * out);
    e.Y = malloc(sizeof(float) * BT * out);
    e.scratch = calloc(e.a->scratch_floats(&e.c, BT, in, out) + 1, sizeof(float));
    for (int i = 0; i < BT * in; i++) e.X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * out; i++) e.R[i] = wmat_rng_normal(&r);
    /* the forward is X W_cropped^T: W with the cut rows / columns zeroed */
    f_of(&e);
    float Wz[out * in];
    TU_OK(e.a->merge(&e.c, Wz, (const float *const *)ws, e.fixed, in, out));
    for (int b = 0; b < BT; b++)
        for (int o = 0; o < out; o++) {
            double y = 0;
            for (int i = 0; i < in; i++) {
                const int cut = side ? (i != 1 && i != 4 && i != 5 && i != 9) : (o != 1 && o != 4 && o != 5 && o != 9);
                y += (double)e.X[b * in + i] * (cut ? 0.0f : W[o * in + i]);
                assert_true(Wz[o * in + i] == (cut ? 0.0f : W[o * in + i]));
            }
            assert_true(fabs(y - e.Y[b * out + o]) <= 1e-5 * (1 + fabs(y)));
        }
    (void)n;
    float *dX = calloc((size_t)BT * in, sizeof(float));
    float *const dws[1] = {dw};
    e.a->backward(&e.c, dX, dws, e.scratch, e.R, e.X, (const float *const *)ws, e.fixed, NULL, NULL, BT, in, out);
    fd(&e, e.X, dX, (size_t)BT * in, side ? "down dX" : "gate dX");
    fd(&e, e.w, dw, nw, side ? "down dW" : "gate dW");
    free(e.fixed), free(e.w), free(dw), free(e.X), free(e.R), free(e.Y), free(e.scratch), free(dX);
}

static void test_kernels_fd(void **state)
{
    (void)state;
    kernel_check(0);
    kernel_check(1);
}

static void test_refusals(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tokens(300);
    wmat_model *m = tiny_model(3);
    wmat_trainer *t = NULL;
    wmat_train_params p = params(&oc, "precrop", d, 300);
    p.lora_targets = (1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP);
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "gate,up,down"));
    p = params(&oc, "precrop", d, 300);
    p.lora_targets = (1u << WMAT_LIN_Q);
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    p = params(&oc, "precrop", d, 300);
    p.adapter_density = 0;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "density"));
    p = params(&oc, "precrop-uniform", NULL, 0);
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "calibration tokens"));
    assert_null(t);
    wmat_model_free(m);
    free(d);
}

static void test_experiment_rows(void **state)
{
    (void)state;
    const wmat_experiment *e = wmat__experiment_find("precrop");
    assert_non_null(e);
    const wmat_experiment_params p = {.params = e->smoke, .seed = 2};
    wmat_table tb;
    TU_OK(wmat_experiment_run("precrop", &p, &tb));
    int cf = -1, cp = -1, ct = -1;
    for (int c = 0; c < tb.ncols; c++) {
        if (!strcmp(tb.cols[c], "ffn_params")) cf = c;
        if (!strcmp(tb.cols[c], "params")) cp = c;
        if (!strcmp(tb.cols[c], "tokens_per_s")) ct = c;
    }
    assert_true(cf >= 0 && cp >= 0 && ct >= 0);
    double full = -1, crop = -1, uni = -1;
    for (int r = 0; r < tb.nrows; r++) {
        const double f = tb.v[r * tb.ncols + cf];
        assert_true(tb.v[r * tb.ncols + ct] > 0);
        if (!strncmp(tb.series[r], "full", 4)) full = f;
        else if (!strncmp(tb.series[r], "precrop (", 9)) crop = f;
        else if (!strncmp(tb.series[r], "precrop-uniform", 15)) uni = f;
    }
    /* smoke: 2 layers, dim 16, hidden 16, density 0.5 */
    assert_true(full == 3.0 * 16 * 16 * 2);
    assert_true(crop == uni && crop == full / 2);
    assert_non_null(strstr(tb.note, "FFN channels kept per layer"));
    wmat_table_free(&tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_follow_scores), cmocka_unit_test(test_precrop_model),
        cmocka_unit_test(test_uniform_model),        cmocka_unit_test(test_kernels_fd),
        cmocka_unit_test(test_refusals),             cmocka_unit_test(test_experiment_rows),
    };
    return tu_run_tests("precrop", tests, NULL, NULL);
}
