/* S2FT, three entries of the adapter registry (src/train/adapter_s2ft.c):
 * s2ft (random units), s2ft-wnorm, s2ft-anorm. tests/test_train_registry.c
 * runs each through its generic checks (finite differences of the kernels,
 * merged vs base + adapter logits); here:
 *
 * - units: o_proj trains whole heads and down_proj channels, as many as
 *   LoRA's budget at the rank allows (on the tiny model exactly LoRA's
 *   trained floats), and the plan's report says so;
 * - the merged model differs from the base only in the selected columns,
 *   by exactly D (every other column bit-identical), and the selected
 *   columns of o_proj are whole heads; the random selection follows the
 *   seed (same seed: same columns);
 * - the gradient of D equals full fine-tuning's gradient of the same
 *   weight restricted to the selected columns (at the base, with the
 *   weight-norm rule, and after training, at the merged weights);
 * - the rules: weight norm picks the units of largest column norm of W
 *   (by hand here); activation norm picks those of largest input norm,
 *   collected here independently through the runtime's hook;
 * - checkpoint round trip: a reloaded trainer writes the same bytes and
 *   continues to the same weights;
 * - bad input: s2ft-anorm without calibration tokens, a rank above the
 *   input width. */
#include "test_util.h"
#include "train_util.h"
#include "core/shapes.h"
#include "train/adapter.h"
#include "train/train.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { DIM = 16, HID = 24, LAYERS = 2, HEADS = 4, HD = DIM / HEADS, R = 4 };
#define TARGETS ((1u << WMAT_LIN_O) | (1u << WMAT_LIN_DOWN))

/* the adapter tests' tiny tied model (tests/support/train_util.h) */
static wmat_model *tiny_model(uint64_t seed) { return tu_tiny_model(seed, DIM, HID, LAYERS); }

static wmat_train_params params(wmat_context *oc, const char *adapter, uint64_t seed)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.adapter = adapter;
    p.batch = 4;
    p.ctx = 8;
    p.steps = 20;
    p.lr = 5e-2f;
    p.lora_rank = R;
    p.lora_alpha = 8;
    p.lora_targets = TARGETS;
    p.seed = seed;
    return p;
}

static void steps(wmat_trainer *t, int n)
{
    for (int i = 0; i < n; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
    }
}

/* columns of linear k: (out, in) */
static void dims(int k, int *out, int *in)
{
    *out = DIM;
    *in = k == WMAT_LIN_DOWN ? HID : DIM;
}

/* The selected columns of layer l's linear k, read off the merged model:
 * the columns that differ from the base, each by exactly D's column (D of
 * (out, k) at *D, advanced past it), all others bit-identical. Returns k. */
static int merged_columns(wmat_model *base, wmat_model *merged, int l, int kind, const float **D, int *cols)
{
    int out, in;
    dims(kind, &out, &in);
    const float *W0 = wmat_model_linear(base, l, (wmat_linear_kind)kind)->data;
    const float *W1 = wmat_model_linear(merged, l, (wmat_linear_kind)kind)->data;
    int k = 0;
    for (int j = 0; j < in; j++) {
        int same = 1;
        for (int o = 0; o < out; o++) same &= memcmp(&W0[o * in + j], &W1[o * in + j], sizeof(float)) == 0;
        if (!same) cols[k++] = j;
    }
    for (int t = 0; t < k; t++)
        for (int o = 0; o < out; o++) {
            const float want = W0[o * in + cols[t]] + (*D)[o * k + t];
            if (memcmp(&want, &W1[o * in + cols[t]], sizeof(float)))
                fail_msg("layer %d %s column %d row %d: merged %.9g, base + D %.9g", l,
                         wmat_linear_name((wmat_linear_kind)kind), cols[t], o, W1[o * in + cols[t]], want);
        }
    *D += (size_t)out * k;
    return k;
}

/* ------------------------------------------------------------ units, merge, seed */

static void selection_of(const char *name, uint64_t seed, int sel[LAYERS][2][HID], int ksel[LAYERS][2])
{
    memset(sel, 0, sizeof(int) * LAYERS * 2 * HID);
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tu_pattern_tokens(500);
    wmat_model *m = tiny_model(5);
    wmat_train_params p = params(&oc, name, seed);
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    /* LoRA r4 on o (16 x 16) is 128 floats: 2 heads of 4 columns; on down
     * (16 x 24) 160 floats: 10 channels */
    for (int l = 0; l < LAYERS; l++) {
        assert_int_equal(wmat_trainer_adapter_rank(t, l, WMAT_LIN_O), 2 * HD);
        assert_int_equal(wmat_trainer_adapter_rank(t, l, WMAT_LIN_DOWN), 10);
        assert_int_equal(wmat_trainer_adapter_rank(t, l, WMAT_LIN_Q), 0);
    }
    const char *rep = wmat_trainer_adapter_report(t);
    assert_non_null(rep);
    if (!strstr(rep, "2 of 4 heads") || !strstr(rep, "10 of 24 channels") || !strstr(rep, "576 trained floats") ||
        !strstr(rep, "LoRA r4 on the same matrices: 576"))
        fail_msg("%s: report '%s'", name, rep);
    size_t np;
    wmat__trainer_params(t, &np);
    assert_int_equal(np, 576);
    steps(t, 5);
    wmat_model *mm; /* the trainer's */
    TU_OK(wmat_trainer_model(t, &mm));
    const float *D = wmat__trainer_params(t, &np);
    for (int l = 0; l < LAYERS; l++) {
        ksel[l][0] = merged_columns(m, mm, l, WMAT_LIN_O, &D, sel[l][0]);
        ksel[l][1] = merged_columns(m, mm, l, WMAT_LIN_DOWN, &D, sel[l][1]);
        assert_int_equal(ksel[l][0], 2 * HD);
        assert_int_equal(ksel[l][1], 10);
        /* whole heads: a head's columns come together, in order */
        for (int t2 = 0; t2 < ksel[l][0]; t2 += HD)
            for (int j = 0; j < HD; j++) assert_int_equal(sel[l][0][t2 + j], sel[l][0][t2] + j);
        for (int t2 = 0; t2 < ksel[l][0]; t2 += HD) assert_int_equal(sel[l][0][t2] % HD, 0);
    }
    /* everything but the targeted linears is the base, bit for bit */
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            if (TARGETS >> k & 1u) continue;
            const wmat_tensor *a = wmat_model_linear(m, l, (wmat_linear_kind)k), *b = wmat_model_linear(mm, l, (wmat_linear_kind)k);
            assert_memory_equal(a->data, b->data, (size_t)wmat_tensor_nelem(a) * sizeof(float));
        }
    assert_ptr_equal(D, wmat__trainer_params(t, &np) + np);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_units_merge_seed(void **state)
{
    (void)state;
    int a[LAYERS][2][HID], b[LAYERS][2][HID], c[LAYERS][2][HID];
    int ka[LAYERS][2], kb[LAYERS][2], kc[LAYERS][2];
    selection_of("s2ft", 1, a, ka);
    selection_of("s2ft", 1, b, kb);
    selection_of("s2ft", 2, c, kc);
    assert_memory_equal(a, b, sizeof a); /* same seed: same columns */
    int differ = 0;
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < 2; s++) differ |= memcmp(a[l][s], c[l][s], (size_t)ka[l][s] * sizeof(int)) != 0;
    assert_true(differ); /* another seed: other columns (10 of 24 channels twice, ...) */
    selection_of("s2ft-wnorm", 1, a, ka);
    selection_of("s2ft-anorm", 1, a, ka);
}

/* ------------------------------------------------------------ gradients */

/* dD (out, k) of layer l against full training's dW[:, cols]: within 1e-4
 * of the largest entry (float sums in another order; after training the
 * full trainer runs on the merged W + D, the S2FT one on X W^T + X_sel D^T). */
static void compare_grad(const float *dD, const float *dW, const int *cols, int k, int out, int in, const char *what)
{
    double mx = 0, err = 0;
    for (int o = 0; o < out; o++)
        for (int t = 0; t < k; t++) {
            mx = fmax(mx, fabs(dW[o * in + cols[t]]));
            err = fmax(err, fabs(dD[o * k + t] - dW[o * in + cols[t]]));
        }
    print_message("%s: max |dD - dW[:, sel]| %.3g, max |dW[:, sel]| %.3g\n", what, err, mx);
    assert_true(mx > 1e-4);
    if (!(err <= 1e-4 * mx + 1e-7)) fail_msg("%s: dD differs from the full gradient's columns by %.3g (max %.3g)", what, err, mx);
}

/* The gradient of D through the trainer against full training's on model
 * fm (= the S2FT trainer's effective weights) for one batch. */
static void grads_vs_full(wmat_trainer *t, wmat_model *fm, int sel[LAYERS][2][HID], int ksel[LAYERS][2], const int32_t *d,
                          const char *what)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params pf = params(&oc, NULL, 1);
    pf.adapter = NULL;
    pf.method = WMAT_TRAIN_FULL;
    wmat_trainer *f;
    TU_OK(wmat_trainer_create(&f, fm, &pf));
    double l1, l2;
    TU_OK(wmat__trainer_fwdbwd(t, d, d + 1, 1, 8, 1, 1, 0, &l1));
    TU_OK(wmat__trainer_fwdbwd(f, d, d + 1, 1, 8, 1, 1, 0, &l2));
    assert_true(fabs(l1 - l2) < 1e-5 * (1 + l1));
    size_t ng;
    const float *g = wmat__trainer_grads(t, &ng);
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < 2; s++) {
            const int k = s ? WMAT_LIN_DOWN : WMAT_LIN_O;
            int out, in;
            dims(k, &out, &in);
            char w[96];
            snprintf(w, sizeof w, "%s layer %d %s", what, l, wmat_linear_name((wmat_linear_kind)k));
            compare_grad(g, wmat__trainer_linear_grad(f, l, k), sel[l][s], ksel[l][s], out, in, w);
            g += (size_t)out * ksel[l][s];
        }
    assert_ptr_equal(g, wmat__trainer_grads(t, &ng) + ng);
    wmat_trainer_free(f);
}

/* the units of largest weight norm, by hand */
static void wnorm_cols(wmat_model *m, int l, int kind, int g, int u, int *cols)
{
    int out, in;
    dims(kind, &out, &in);
    const float *W = wmat_model_linear(m, l, (wmat_linear_kind)kind)->data;
    const int nu = in / g;
    double s[HID];
    int taken[HID] = {0};
    for (int v = 0; v < nu; v++) {
        s[v] = 0;
        for (int o = 0; o < out; o++)
            for (int t = 0; t < g; t++) s[v] += (double)W[o * in + v * g + t] * W[o * in + v * g + t];
    }
    for (int i = 0; i < u; i++) {
        int best = -1;
        for (int v = 0; v < nu; v++)
            if (!taken[v] && (best < 0 || s[v] > s[best])) best = v;
        taken[best] = 1;
    }
    int k = 0;
    for (int v = 0; v < nu; v++)
        if (taken[v])
            for (int t = 0; t < g; t++) cols[k++] = v * g + t;
}

static void test_gradient_columns(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tu_pattern_tokens(500);
    wmat_model *m = tiny_model(7);
    int sel[LAYERS][2][HID], ksel[LAYERS][2];
    /* at the base (D = 0), weight-norm units, computed here */
    for (int l = 0; l < LAYERS; l++) {
        wnorm_cols(m, l, WMAT_LIN_O, HD, 2, sel[l][0]);
        wnorm_cols(m, l, WMAT_LIN_DOWN, 1, 10, sel[l][1]);
        ksel[l][0] = 2 * HD;
        ksel[l][1] = 10;
    }
    wmat_train_params p = params(&oc, "s2ft-wnorm", 3);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    grads_vs_full(t, m, sel, ksel, d, "s2ft-wnorm at the base");
    /* after training: the selection read off the merged model (which also
     * checks the weight-norm units), full training at the merged weights */
    steps(t, 4);
    wmat_model *mm;
    TU_OK(wmat_trainer_model(t, &mm));
    size_t np;
    const float *D = wmat__trainer_params(t, &np);
    for (int l = 0; l < LAYERS; l++) {
        int c0[HID], c1[HID];
        assert_int_equal(merged_columns(m, mm, l, WMAT_LIN_O, &D, c0), ksel[l][0]);
        assert_memory_equal(c0, sel[l][0], (size_t)ksel[l][0] * sizeof(int));
        assert_int_equal(merged_columns(m, mm, l, WMAT_LIN_DOWN, &D, c1), ksel[l][1]);
        assert_memory_equal(c1, sel[l][1], (size_t)ksel[l][1] * sizeof(int));
    }
    grads_vs_full(t, mm, sel, ksel, d + 40, "s2ft-wnorm after 4 steps");
    wmat_trainer_free(t);
    /* random units after training */
    p = params(&oc, "s2ft", 11);
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    steps(t, 4);
    TU_OK(wmat_trainer_model(t, &mm));
    D = wmat__trainer_params(t, &np);
    for (int l = 0; l < LAYERS; l++) {
        ksel[l][0] = merged_columns(m, mm, l, WMAT_LIN_O, &D, sel[l][0]);
        ksel[l][1] = merged_columns(m, mm, l, WMAT_LIN_DOWN, &D, sel[l][1]);
    }
    grads_vs_full(t, mm, sel, ksel, d + 80, "s2ft after 4 steps");
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ the rules, entry level */

typedef struct {
    double sq[LAYERS][2][HID]; /* o input, down input: sum of x_j^2 */
} acoll;

static int acoll_hook(void *user, int layer, wmat_linear_kind kind, const float *X, int T, int in, const wmat_tensor *W)
{
    (void)W;
    acoll *c = user;
    if (layer >= LAYERS || (kind != WMAT_LIN_O && kind != WMAT_LIN_DOWN)) return 0;
    double *q = c->sq[layer][kind == WMAT_LIN_DOWN];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < in; j++) q[j] += (double)X[t * in + j] * X[t * in + j];
    return 0;
}

static void test_rules(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tu_pattern_tokens(500);
    wmat_model *m = tiny_model(13);
    const wmat__adapter *an = wmat__adapter_find("s2ft-anorm"), *wn = wmat__adapter_find("s2ft-wnorm");
    assert_non_null(an);
    assert_non_null(wn);
    /* the plan of s2ft-anorm, called as the trainer does: 3 batches of 4 windows of 8 */
    enum { NB = 3 };
    wmat__adapter_cfg c = {.rank = R, .alpha = 8, .nt = 1};
    wmat__adapter_cfg lcfg[LAYERS * WMAT_LIN_COUNT];
    unsigned char on[LAYERS * WMAT_LIN_COUNT] = {0};
    for (int j = 0; j < LAYERS * WMAT_LIN_COUNT; j++) {
        lcfg[j] = c;
        on[j] = TARGETS >> (j % WMAT_LIN_COUNT) & 1u;
    }
    const wmat__adapter_plan_in pin = {m, TARGETS, d, 500, 8, 4, NB, &oc};
    void *owned = NULL;
    char report[1024];
    TU_OK(an->plan(&c, &pin, lcfg, on, &owned, report, sizeof report));
    print_message("%s", report);
    assert_non_null(strstr(report, "12 calibration windows"));
    /* the same windows through the runtime's hook, here */
    acoll ac;
    memset(&ac, 0, sizeof ac);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_runtime_set_hook(rt, acoll_hook, &ac);
    for (int w = 0; w < NB * 4; w++) TU_OK(wmat_forward(rt, d + w * 8, 8, NULL));
    wmat_runtime_free(rt);
    wmat_rng rng;
    wmat_rng_seed(&rng, 1);
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < 2; s++) {
            const int kind = s ? WMAT_LIN_DOWN : WMAT_LIN_O, g = s ? 1 : HD;
            int out, in;
            dims(kind, &out, &in);
            const wmat__adapter_cfg *lc = &lcfg[l * WMAT_LIN_COUNT + kind];
            assert_non_null(lc->init_rows);
            assert_int_equal((int)lc->init_rows[0], g);
            assert_int_equal(lc->rank, s ? 10 : 2 * HD);
            /* unit scores: the norm of the unit's inputs */
            double sc[HID];
            for (int v = 0; v < in / g; v++) {
                double a = 0;
                for (int t = 0; t < g; t++) a += ac.sq[l][s][v * g + t];
                sc[v] = sqrt(a);
                if (!(fabs(lc->init_rows[2 + v] - sc[v]) <= 1e-5 * sc[v]))
                    fail_msg("layer %d %s unit %d: score %.7g, here %.7g", l, wmat_linear_name((wmat_linear_kind)kind), v,
                             lc->init_rows[2 + v], sc[v]);
            }
            /* init's permutation: the top units' columns ascending, then the rest */
            int32_t perm[HID];
            float *w0 = calloc((size_t)out * lc->rank, sizeof(float));
            float *const w[1] = {w0};
            float *W = wmat_model_linear(m, l, (wmat_linear_kind)kind)->data;
            TU_OK(an->init(lc, w, perm, wmat_model_linear(m, l, (wmat_linear_kind)kind), W, in, out, &rng));
            assert_true(an->fixed_valid(&c, perm, in, out));
            const int u = lc->rank / g;
            int taken[HID] = {0};
            for (int i = 0; i < u; i++) {
                int best = -1;
                for (int v = 0; v < in / g; v++)
                    if (!taken[v] && (best < 0 || sc[v] > sc[best])) best = v;
                taken[best] = 1;
            }
            int p = 0;
            for (int v = 0; v < in / g; v++)
                if (taken[v])
                    for (int t = 0; t < g; t++) assert_int_equal(perm[p++], v * g + t);
            for (int v = 0; v < in / g; v++)
                if (!taken[v])
                    for (int t = 0; t < g; t++) assert_int_equal(perm[p++], v * g + t);
            for (size_t i = 0; i < (size_t)out * lc->rank; i++) assert_true(w0[i] == 0.0f); /* D = 0 */
            free(w0);
        }
    wmat__free(owned);
    /* weight norm on a hand-made W (8 x 6, units of 1): column norms 1..6
     * scaled, the largest three are columns 5, 1, 3 */
    {
        const float scale[6] = {0.5f, 4, 1, 3, 0.25f, 5};
        float W[8 * 6];
        for (int o = 0; o < 8; o++)
            for (int j = 0; j < 6; j++) W[o * 6 + j] = scale[j] * (o % 2 ? 1.0f : -1.0f);
        wmat_tensor b;
        wmat__tensor_init2(&b, WMAT_F32, 8, 6, W);
        wmat__adapter_cfg c3 = {.rank = 3, .nt = 1};
        TU_OK(wn->check(&c3, &b, 6, 8, "test"));
        int32_t perm[6];
        float w0[8 * 3] = {0};
        float *const w[1] = {w0};
        TU_OK(wn->init(&c3, w, perm, &b, W, 6, 8, &rng));
        const int32_t want[6] = {1, 3, 5, 0, 2, 4};
        assert_memory_equal(perm, want, sizeof want);
        perm[4] = 0; /* not a permutation */
        assert_false(wn->fixed_valid(&c3, perm, 6, 8));
    }
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ checkpoints, bad input */

static void resume_check(const char *name)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    int32_t *d = tu_pattern_tokens(500);
    wmat_model *m = tiny_model(17);
    wmat_train_params p = params(&oc, name, 5);
    p.lora_targets = 0x7f; /* every linear: q/k/v/gate/up train input columns */
    p.adapter_calib = d;
    p.adapter_calib_n = 500;
    wmat_trainer *a, *b;
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 500));
    steps(a, 3);
    char nm[64], nm2[64];
    snprintf(nm, sizeof nm, "%s.ckpt", name);
    snprintf(nm2, sizeof nm2, "%s_again.ckpt", name);
    const char *ck = tu_tmp(nm);
    TU_OK(wmat_trainer_save_checkpoint(a, ck));
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 500));
    TU_OK(wmat_trainer_load_checkpoint(b, ck));
    const char *ck2 = tu_tmp(nm2);
    TU_OK(wmat_trainer_save_checkpoint(b, ck2));
    size_t na, nb;
    unsigned char *fa = tu_slurp(ck, &na), *fb = tu_slurp(ck2, &nb);
    assert_int_equal(na, nb);
    if (memcmp(fa, fb, na)) fail_msg("%s: the reloaded checkpoint differs from the saved one", name);
    free(fa), free(fb);
    steps(a, 3);
    steps(b, 3);
    size_t n1, n2;
    float *pa = wmat__trainer_params(a, &n1), *pb = wmat__trainer_params(b, &n2);
    assert_int_equal(n1, n2);
    if (memcmp(pa, pb, n1 * sizeof(float))) fail_msg("%s: resumed weights differ", name);
    wmat_model *ma, *mb;
    TU_OK(wmat_trainer_model(a, &ma));
    TU_OK(wmat_trainer_model(b, &mb));
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const wmat_tensor *x = wmat_model_linear(ma, l, (wmat_linear_kind)k), *y = wmat_model_linear(mb, l, (wmat_linear_kind)k);
            assert_memory_equal(x->data, y->data, (size_t)wmat_tensor_nelem(x) * sizeof(float));
        }
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void test_resume(void **state)
{
    (void)state;
    resume_check("s2ft");
    resume_check("s2ft-anorm");
}

static void test_bad_inputs(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny_model(19);
    wmat_train_params p = params(&oc, "s2ft-anorm", 1);
    wmat_trainer *t = NULL;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID); /* no calibration tokens */
    assert_null(t);
    assert_non_null(strstr(wmat_last_error(), "calibration tokens"));
    p = params(&oc, "s2ft", 1);
    p.lora_rank = 20; /* o_proj's input is 16 wide */
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_null(t);
    assert_non_null(strstr(wmat_last_error(), "larger than"));
    const wmat__adapter *a = wmat__adapter_find("s2ft");
    wmat__adapter_cfg c = {.rank = 0, .nt = 1};
    assert_int_equal(a->check(&c, NULL, 10, 6, "test"), WMAT_ERR_INVALID);
    c.rank = 11;
    assert_int_equal(a->check(&c, NULL, 10, 6, "test"), WMAT_ERR_INVALID);
    c.rank = 10;
    TU_OK(a->check(&c, NULL, 10, 6, "test"));
    /* weight norm needs W itself */
    assert_int_equal(wmat__adapter_find("s2ft-wnorm")->check(&c, NULL, 10, 6, "test"), WMAT_ERR_UNSUPPORTED);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units_merge_seed), cmocka_unit_test(test_gradient_columns),
        cmocka_unit_test(test_rules),            cmocka_unit_test(test_resume),
        cmocka_unit_test(test_bad_inputs),
    };
    return tu_run_tests("s2ft", tests, NULL, NULL);
}
