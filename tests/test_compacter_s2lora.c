/* Compacter and S2-LoRA (src/train/adapter_compacter.c, adapter_s2lora.c)
 * beyond what tests/test_train_registry.c checks of every adapter:
 *
 * - PHM: wmat__phm_weight equals sum_i kron(A_i, s_i t_i^T) formed
 *   explicitly, element by element (n 4, 8 -> 12), 1e-6.
 * - Shared tensors: an entry's backward ADDS to the shared gradient, so
 *   two layers' backwards into one buffer give the sum of their separate
 *   gradients (1e-6 relative); in the trainer, every trainable float (the
 *   shared A, B / PHM rule included, which every layer of their group
 *   feeds) against central differences of the trainer's own loss, all
 *   seven linears of a 2-layer model.
 * - S2-LoRA: the proximal step is soft-thresholding by lr mu (exact zeros,
 *   signs kept, mu 0 a no-op); in the trainer a huge mu zeroes every lambda
 *   after one step while A, B and the loss still train at mu 0; the merged
 *   model's logits equal base + adapter within 1e-5; PEFT save refused.
 * - Compacter: an output or bottleneck not divisible by n = 4 is refused
 *   naming the PHM size; the merged model and PEFT file are refused ("not a
 *   weight delta"); eval through the trainer's forward equals its loss.
 * - Both: a run interrupted after 9 of 20 steps and resumed from its
 *   checkpoint ends with the same floats as an uninterrupted one. */
#include "train_util.h"
#include "train/adapter.h"
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { RK = 4, L = 2 };

static wmat_model *tiny(uint64_t seed) { return tu_tiny_model(seed, 16, 24, L); }

static wmat_train_params params(wmat_context *oc, const char *adapter) { return tu_adapter_params(oc, adapter, RK); }

static void steps(wmat_trainer *t, int n)
{
    for (int i = 0; i < n; i++) {
        wmat_train_step_info info;
        TU_OK(wmat_trainer_step(t, &info));
    }
}

/* ------------------------------------------------------------ PHM */

static void test_phm_weight(void **state)
{
    (void)state;
    enum { n = WMAT__PHM_N, in_a = 8, out_a = 12, ia = in_a / n, oa = out_a / n };
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    float A[n * n * n], st[n * (ia + oa)], W[in_a * out_a];
    for (int i = 0; i < n * n * n; i++) A[i] = wmat_rng_normal(&r);
    for (int i = 0; i < n * (ia + oa); i++) st[i] = wmat_rng_normal(&r);
    wmat__phm_weight(A, st, in_a, out_a, W);
    /* kron(A_i, B_i)[P, Q] = A_i[P / ia, Q / oa] B_i[P % ia, Q % oa], B_i = s_i t_i^T */
    for (int P = 0; P < in_a; P++)
        for (int Q = 0; Q < out_a; Q++) {
            double ref = 0;
            for (int i = 0; i < n; i++) {
                const float *s = st + i * (ia + oa), *t = s + ia;
                ref += (double)A[i * n * n + (P / ia) * n + Q / oa] * s[P % ia] * t[Q % oa];
            }
            if (!(fabs(W[P * out_a + Q] - ref) <= 1e-6 * (1 + fabs(ref))))
                fail_msg("PHM W[%d, %d] = %.7g, explicit sum of Kronecker products %.7g", P, Q, W[P * out_a + Q], ref);
        }
}

/* ------------------------------------------------------------ shared gradients */

/* Two layers (different X, dY, per-layer tensors) over the same shared
 * tensors: backward of both into one gradient = the sum of each alone. */
static void shared_sum_check(const wmat__adapter *a)
{
    enum { BT = 6, in = 12, out = 8 };
    wmat__adapter_cfg c = {.rank = RK, .alpha = 2, .nt = 1, .in_max = in, .out_max = out};
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    int rows[WMAT__ADAPTER_MAX_TENSORS], cols[WMAT__ADAPTER_MAX_TENSORS];
    int tr[WMAT__ADAPTER_MAX_TENSORS], tc[WMAT__ADAPTER_MAX_TENSORS];
    a->shapes(&c, in, out, rows, cols);
    a->tshared_shapes(&c, in, out, tr, tc);
    float *tw[WMAT__ADAPTER_MAX_TENSORS] = {0}, *g1[WMAT__ADAPTER_MAX_TENSORS] = {0},
          *g2[WMAT__ADAPTER_MAX_TENSORS] = {0}, *g12[WMAT__ADAPTER_MAX_TENSORS] = {0};
    for (int k = 0; k < a->n_tshared; k++) {
        const size_t ne = wmat__adapter_nelem(tr[k], tc[k]);
        tw[k] = malloc(ne * sizeof(float));
        g1[k] = calloc(ne, sizeof(float));
        g2[k] = calloc(ne, sizeof(float));
        g12[k] = calloc(ne, sizeof(float));
        for (size_t i = 0; i < ne; i++) tw[k][i] = wmat_rng_normal(&r);
    }
    c.tw = tw;
    float *w[2][WMAT__ADAPTER_MAX_TENSORS] = {{0}}, *X[2], *dY[2], *act[2];
    float *scratch = calloc(a->scratch_floats(&c, BT, in, out) + 1, sizeof(float));
    float *Y = malloc(sizeof(float) * BT * out), *dX = calloc((size_t)BT * (in > out ? in : out), sizeof(float));
    float *none[WMAT__ADAPTER_MAX_TENSORS] = {0};
    for (int l = 0; l < 2; l++) {
        for (int k = 0; k < a->n_tensors; k++) {
            const size_t ne = wmat__adapter_nelem(rows[k], cols[k]);
            w[l][k] = malloc(ne * sizeof(float));
            for (size_t i = 0; i < ne; i++) w[l][k][i] = wmat_rng_normal(&r);
        }
        X[l] = malloc(sizeof(float) * BT * in);
        dY[l] = malloc(sizeof(float) * BT * out);
        act[l] = calloc(a->act_floats(&c, BT) + 1, sizeof(float));
        for (int i = 0; i < BT * in; i++) X[l][i] = wmat_rng_normal(&r);
        for (int i = 0; i < BT * out; i++) dY[l][i] = wmat_rng_normal(&r), Y[i] = wmat_rng_normal(&r);
        a->forward(&c, Y, act[l], scratch, X[l], (const float *const *)w[l], NULL, NULL, BT, in, out);
    }
    for (int pass = 0; pass < 3; pass++)
        for (int l = 0; l < 2; l++) {
            if (pass < 2 && pass != l) continue;
            c.tg = pass == 0 ? g1 : pass == 1 ? g2 : g12;
            a->backward(&c, dX, none, scratch, dY[l], a->output_side ? NULL : X[l], (const float *const *)w[l], NULL,
                        NULL, act[l], BT, in, out);
        }
    double mx = 0;
    for (int k = 0; k < a->n_tshared; k++)
        for (size_t i = 0; i < wmat__adapter_nelem(tr[k], tc[k]); i++) {
            const double s = (double)g1[k][i] + g2[k][i];
            mx = fmax(mx, fabs(s));
            if (!(fabs(g12[k][i] - s) <= 1e-5 * (1 + fabs(s))))
                fail_msg("%s: shared %s[%zu]: both layers %.7g, sum of each %.7g", a->name, a->tshared_key[k], i,
                         g12[k][i], s);
        }
    assert_true(mx > 1e-3); /* the gradients are not all zero */
    for (int k = 0; k < a->n_tshared; k++) free(tw[k]), free(g1[k]), free(g2[k]), free(g12[k]);
    for (int l = 0; l < 2; l++) {
        for (int k = 0; k < a->n_tensors; k++) free(w[l][k]);
        free(X[l]), free(dY[l]), free(act[l]);
    }
    free(scratch), free(Y), free(dX);
}

static void test_shared_sum(void **state)
{
    (void)state;
    shared_sum_check(&wmat__adapter_s2lora);
    shared_sum_check(&wmat__adapter_compacter);
}

/* Every trainable float against central differences of the trainer's
 * loss, h = 1e-2: |analytic - fd| <= 2e-3 max|fd| + 2e-5. */
/* ------------------------------------------------------------ S2-LoRA */

static void test_s2lora(void **state)
{
    (void)state;
    /* the proximal step */
    wmat__adapter_cfg c = {.rank = 6, .alpha = 1, .l1 = 0.5f};
    float lam[6] = {1.0f, -1.0f, 0.04f, -0.05f, 0.0f, 0.3f};
    const float want[6] = {0.95f, -0.95f, 0.0f, 0.0f, 0.0f, 0.25f};
    wmat__adapter_s2lora.prox(&c, 0, lam, 6, 0.1f);
    for (int j = 0; j < 6; j++) assert_true(fabsf(lam[j] - want[j]) <= 1e-7f);
    assert_true(lam[2] == 0.0f && lam[3] == 0.0f); /* exact zeros */
    c.l1 = 0;
    wmat__adapter_s2lora.prox(&c, 0, lam, 6, 0.1f);
    for (int j = 0; j < 6; j++) assert_true(fabsf(lam[j] - want[j]) <= 1e-7f);

    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(21);
    int32_t *d = tu_pattern_tokens(400);
    wmat_train_params p = params(&oc, "s2lora");
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    /* trainable: r per adapted matrix (lambda) + per kind r (in + out) once */
    int sum_io = 0;
    for (int k = 0; k < WMAT_LIN_COUNT; k++) {
        const wmat_tensor *w = wmat_model_linear(m, 0, (wmat_linear_kind)k);
        sum_io += (int)(w->shape[0] + w->shape[1]);
    }
    size_t n;
    float *pp = wmat__trainer_params(t, &n);
    assert_int_equal(n, (size_t)(L * WMAT_LIN_COUNT * RK + RK * sum_io));
    const size_t nlam = (size_t)L * WMAT_LIN_COUNT * RK; /* the lambdas come first, the shared A, B after */
    for (size_t j = 0; j < nlam; j++) assert_true(pp[j] == 1.0f);
    steps(t, 8);
    tu_trainer_fd_check(t, "s2lora");
    int moved = 0;
    for (size_t j = 0; j < nlam; j++) moved += pp[j] != 1.0f;
    assert_true(moved > 0);
    /* merged = base + adapter */
    int32_t inp[8], tgt[8];
    for (int i = 0; i < 8; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1, 1, 1, &loss));
    float un[8 * 13], lg[8 * 13];
    memcpy(un, wmat__trainer_logits(t), sizeof un);
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, merged, &rp));
    TU_OK(wmat_forward(rt, inp, 8, lg));
    for (int i = 0; i < 8 * 13; i++)
        if (!(fabsf(lg[i] - un[i]) <= 1e-5f * (1 + fabsf(lg[i]))))
            fail_msg("s2lora: merged vs base + adapter logit %d: %.7g vs %.7g", i, lg[i], un[i]);
    wmat_runtime_free(rt);
    assert_int_not_equal(wmat_trainer_save_lora(t, tu_tmp("s2_peft")), WMAT_OK);
    assert_non_null(strstr(wmat_last_error(), "PEFT has no s2lora"));
    wmat_trainer_free(t);

    /* a huge mu: every lambda is 0 after one step (lr * mu >> |lambda|) */
    p.adapter_l1 = 1e4f;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    steps(t, 1);
    pp = wmat__trainer_params(t, &n);
    for (size_t j = 0; j < nlam; j++) assert_true(pp[j] == 0.0f);
    wmat_trainer_free(t);
    p.adapter_l1 = -1;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ Compacter */

static void test_compacter(void **state)
{
    (void)state;
    wmat__adapter_cfg c = {.rank = 8};
    assert_int_equal(wmat__adapter_compacter.check(&c, NULL, 12, 6, "test"), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "PHM size n = 4"));
    c.rank = 6;
    assert_int_equal(wmat__adapter_compacter.check(&c, NULL, 12, 8, "test"), WMAT_ERR_INVALID);
    c.rank = 4;
    TU_OK(wmat__adapter_compacter.check(&c, NULL, 12, 8, "test"));

    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_model *m = tiny(23);
    int32_t *d = tu_pattern_tokens(400);
    wmat_train_params p = params(&oc, "compacter");
    wmat_trainer *t;
    p.lora_rank = 6; /* the bottleneck: not a multiple of 4 */
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "PHM size"));
    p.lora_rank = RK;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    /* per adapted matrix: 2 n (out/n + m/n) + m + out; the rule n^3 once */
    size_t n, want = 64;
    for (int k = 0; k < WMAT_LIN_COUNT; k++) {
        const int out = (int)wmat_model_linear(m, 0, (wmat_linear_kind)k)->shape[0];
        want += (size_t)L * (2 * 4 * (out / 4 + RK / 4) + RK + out);
    }
    wmat__trainer_params(t, &n);
    assert_int_equal(n, want);
    /* at init (rule ~1e-4) the layer is within ~1e-4 of the base */
    steps(t, 8);
    tu_trainer_fd_check(t, "compacter");
    wmat_model *mm = NULL;
    assert_int_equal(wmat_trainer_model(t, &mm), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "Compacter is not a weight delta"));
    assert_int_not_equal(wmat_trainer_save_lora(t, tu_tmp("cp_peft")), WMAT_OK);
    assert_non_null(strstr(wmat_last_error(), "Compacter is not a weight delta"));
    /* eval through the trainer's forward: two windows of 8, the mean of their losses */
    double l0, l1;
    TU_OK(wmat__trainer_fwdbwd(t, d, d + 1, 1, 8, 1, 1, 1, &l0));
    TU_OK(wmat__trainer_fwdbwd(t, d + 8, d + 9, 1, 8, 1, 1, 1, &l1));
    wmat_eval_result er;
    TU_OK(wmat_trainer_eval(t, d, 400, 8, 2, &er));
    assert_int_equal(er.windows, 2);
    assert_int_equal(er.tokens_scored, 16);
    assert_true(fabs(er.mean_nll - (l0 + l1) / 2) < 1e-9);
    assert_int_not_equal(wmat_trainer_eval(t, d, 400, 4, 2, &er), WMAT_OK); /* not the trainer's context */
    assert_int_equal(wmat_train_adapter_replaces_base("compacter"), 3);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

/* ------------------------------------------------------------ resume */

static void test_resume(void **state)
{
    (void)state;
    const char *names[2] = {"s2lora", "compacter"};
    for (int a = 0; a < 2; a++) {
        wmat_context oc = wmat_context_default();
        oc.n_threads = 1;
        wmat_model *m = tiny(11);
        wmat_train_params p = params(&oc, names[a]);
        p.adapter_l1 = 0.05f;
        int32_t *d = tu_pattern_tokens(400);
        wmat_trainer *t, *u, *v;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, d, 400));
        steps(t, 20);
        TU_OK(wmat_trainer_create(&u, m, &p));
        TU_OK(wmat_trainer_set_data(u, d, 400));
        steps(u, 9);
        TU_OK(wmat_trainer_save_checkpoint(u, tu_tmp("cs_resume.ckpt")));
        wmat_trainer_free(u);
        TU_OK(wmat_trainer_create(&v, m, &p));
        TU_OK(wmat_trainer_set_data(v, d, 400));
        TU_OK(wmat_trainer_load_checkpoint(v, tu_tmp("cs_resume.ckpt")));
        steps(v, 11);
        size_t n1, n2;
        const float *p1 = wmat__trainer_params(t, &n1), *p2 = wmat__trainer_params(v, &n2);
        assert_int_equal(n1, n2);
        if (memcmp(p1, p2, n1 * sizeof(float))) fail_msg("%s: the resumed run differs from the uninterrupted one", names[a]);
        wmat_trainer_free(t);
        wmat_trainer_free(v);
        wmat_model_free(m);
        free(d);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_phm_weight),
        cmocka_unit_test(test_shared_sum),
        cmocka_unit_test(test_s2lora),
        cmocka_unit_test(test_compacter),
        cmocka_unit_test(test_resume),
    };
    return tu_run_tests("compacter_s2lora", tests, NULL, NULL);
}
