/* Fine-tuning a decomposed model's factors (the trainer's `factors` entry,
 * src/train/adapter_factors.c) and GPTQ as LQ-LoRA's quantizer:
 *
 * - a model without factors is refused; WeLore (stories260K): after a few steps the trained model keeps the
 *   decomposed kinds (lowrank where WeLore factored, the dense N-LRC
 *   matrices f32), every frozen tensor (base and trained model alike) is
 *   bit for bit what decompose wrote, the factors moved, the trained
 *   model's logits are the trainer's within 1e-5, and the model saved to
 *   a native directory scores exactly the trainer's last evaluation;
 * - LQ-LoRA (mix4m, f16 factors): the quantized part of every sum is the
 *   base's, byte for byte, and the saved model scores exactly the
 *   trainer's evaluation (the factors rounded to f16, as stored);
 * - quant=gptq: the quantized part of layer 0's q_proj is wmat's GPTQ
 *   (wmat__quant_gptq on the same Hessian) of W - L for the alternation's
 *   previous correction L, bit for bit, and its correction the rank-r SVD of
 *   what that part leaves. */
#include "test_util.h"
#include "decomp/decomp.h"
#include "quant/methods.h"
#include "train/train.h"
#include "wop/qstore.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *load(const char *path)
{
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static wmat_model *decomposed(const char *path, const char *method, const char *kv, wmat_dtype dt, unsigned targets)
{
    wmat_model *m = load(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = method;
    p.method_params = kv;
    p.dtype = dt;
    p.targets = targets;
    TU_OK(wmat_decompose_model(m, &p, NULL));
    return m;
}

/* A weight's values as f32 (rows x cols), malloc'd. */
static float *values(const wmat_tensor *t)
{
    float *v = malloc((size_t)wmat_tensor_nelem(t) * sizeof(float));
    if (t->ndim == 2) TU_OK(wmat_tensor_dequant_rows(t, 0, t->shape[0], v));
    else memcpy(v, t->data, t->nbytes);
    return v;
}

/* The stored arrays of two tensors of one kind are equal, byte for byte:
 * through save, which hands out every array a kind stores. */
static void same_bytes(const wmat_tensor *a, const wmat_tensor *b, const char *what)
{
    assert_int_equal(a->ndim, b->ndim);
    if (a->ndim == 2) assert_string_equal(wmat_tensor_kind(a), wmat_tensor_kind(b));
    if (a->dtype != WMAT_OBJ) {
        assert_int_equal(a->nbytes, b->nbytes);
        if (memcmp(a->data, b->data, a->nbytes)) fail_msg("%s: %s changed", what, a->name);
        return;
    }
    float *va = values(a), *vb = values(b);
    if (memcmp(va, vb, (size_t)wmat_tensor_nelem(a) * sizeof(float))) fail_msg("%s: %s changed", what, a->name);
    free(va), free(vb);
}

typedef struct {
    wmat_trainer *t;
    int32_t *tok;
    size_t n;
} run_t;

static void train(run_t *r, wmat_model *m, const char *data, int steps, float lr, int ctx)
{
    static wmat_context oc;
    oc = wmat_context_default();
    oc.n_threads = 2;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.adapter = "factors";
    p.lora_targets = (1u << WMAT_LIN_COUNT) - 1;
    p.batch = 2;
    p.ctx = ctx;
    p.steps = steps;
    p.warmup = 1;
    p.lr = lr;
    p.weight_decay = 0;
    TU_OK(wmat_read_tokens_u16(data, &r->tok, &r->n));
    TU_OK(wmat_trainer_create(&r->t, m, &p));
    TU_OK(wmat_trainer_set_data(r->t, r->tok, r->n));
    for (int i = 0; i < steps; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(r->t, &si));
        assert_true(isfinite(si.loss));
    }
}

/* The saved trained model scores exactly the trainer's evaluation. */
static void export_scores_as_trainer(run_t *r, const char *dir, int ctx)
{
    wmat_eval_result e1, e2;
    TU_OK(wmat_trainer_eval(r->t, r->tok, r->n, ctx, 2, &e1));
    wmat_model *tm;
    TU_OK(wmat_trainer_model(r->t, &tm));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    const char *out = tu_tmp(dir);
    TU_OK(wmat_model_save(tm, out, &sp));
    wmat_model *back = load(out);
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, back, &rp));
    TU_OK(wmat_eval_tokens(rt, r->tok, r->n, ctx, 2, &e2));
    if (!(e1.mean_nll == e2.mean_nll && isfinite(e1.mean_nll)))
        fail_msg("saved model NLL %.17g, trainer's %.17g", e2.mean_nll, e1.mean_nll);
    /* the kinds as stored */
    for (int i = 0; i < wmat_model_n_tensors(tm); i++) {
        const wmat_tensor *a = wmat_model_tensor(tm, i), *b = wmat_model_find(back, a->name);
        assert_non_null(b);
        if (a->ndim == 2) assert_string_equal(wmat_tensor_kind(a), wmat_tensor_kind(b));
    }
    wmat_runtime_free(rt);
    wmat_model_free(back);
}

static void test_welore_lrc(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    TU_NEED_DATA(data, "golden/tinystories_valid_head.tok512.u16");
    const unsigned all = (1u << WMAT_LIN_COUNT) - 1;
    {
        /* a model without factors in the targeted layers is refused, naming it */
        wmat_model *raw = load(path);
        wmat_train_params p = wmat_train_default_params();
        p.adapter = "factors";
        p.lora_targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_V);
        wmat_trainer *t = NULL;
        assert_int_equal(wmat_trainer_create(&t, raw, &p), WMAT_ERR_INVALID);
        assert_null(t);
        assert_non_null(strstr(wmat_last_error(), "nothing to train"));
        wmat_model_free(raw);
    }
    /* min_ratio 0.4: some matrices stay dense (N-LRC), frozen */
    wmat_model *m = decomposed(path, "welore", "target=0.5,min_ratio=0.4", WMAT_F32, all);
    wmat_model *ref = decomposed(path, "welore", "target=0.5,min_ratio=0.4", WMAT_F32, all);
    int n_lr = 0, n_dense = 0;
    for (int l = 0; l < wmat_model_config(m)->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const char *kind = wmat_tensor_kind(wmat_model_linear(m, l, (wmat_linear_kind)k));
            n_lr += !strcmp(kind, "lowrank");
            n_dense += !strcmp(kind, "f32");
        }
    if (!(n_lr > 0 && n_dense > 0)) fail_msg("want both kinds in the test model: %d lowrank, %d dense", n_lr, n_dense);
    run_t r = {0};
    train(&r, m, data, 6, 2e-3f, 32);
    wmat_model *tm;
    TU_OK(wmat_trainer_model(r.t, &tm));
    double moved = 0;
    for (int i = 0; i < wmat_model_n_tensors(ref); i++) {
        const wmat_tensor *a = wmat_model_tensor(ref, i), *b = wmat_model_tensor(m, i), *c = wmat_model_find(tm, a->name);
        /* the base stays as loaded, bit for bit */
        same_bytes(a, b, "base");
        if (a->ndim == 2 && !strcmp(wmat_tensor_kind(a), "lowrank")) {
            assert_string_equal(wmat_tensor_kind(c), "lowrank");
            float *va = values(a), *vc = values(c);
            for (int64_t j = 0; j < wmat_tensor_nelem(a); j++) moved = fmax(moved, fabs(va[j] - vc[j]));
            free(va), free(vc);
        } else {
            same_bytes(a, c, "trained model, frozen tensor");
        }
    }
    if (!(moved > 1e-4)) fail_msg("the factors did not move (%.3g)", moved);
    /* the trained model's logits are the trainer's */
    enum { T = 32 }; /* the trainer's window */
    int32_t inp[T], tgt[T];
    for (int i = 0; i < T; i++) inp[i] = r.tok[i], tgt[i] = r.tok[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(r.t, inp, tgt, 1, T, 1, 1, 1, &loss));
    const int V = wmat_model_config(m)->vocab_size;
    float *mine = malloc(sizeof(float) * T * (size_t)V), *lg = malloc(sizeof(float) * T * (size_t)V);
    memcpy(mine, wmat__trainer_logits(r.t), sizeof(float) * T * (size_t)V);
    wmat_runtime_params rp = wmat_runtime_default_params();
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, tm, &rp));
    TU_OK(wmat_forward(rt, inp, T, lg));
    for (int i = 0; i < T * V; i++)
        if (!(fabsf(lg[i] - mine[i]) <= 1e-5f * (1 + fabsf(mine[i]))))
            fail_msg("logit %d: trained model %.7g, trainer %.7g", i, lg[i], mine[i]);
    wmat_runtime_free(rt);
    export_scores_as_trainer(&r, "factors_welore", 32);
    free(mine), free(lg);
    wmat_trainer_free(r.t);
    free(r.tok);
    wmat_model_free(m);
    wmat_model_free(ref);
}

static void test_lqlora_l(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    TU_NEED_DATA(data, "golden/tinystories_valid_head.tok512.u16");
    const unsigned tg = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_K) | (1u << WMAT_LIN_GATE);
    wmat_model *m = decomposed(path, "lqlora", "bits=3,group=64,rank=8,iters=2", WMAT_F16, tg);
    wmat_model *ref = decomposed(path, "lqlora", "bits=3,group=64,rank=8,iters=2", WMAT_F16, tg);
    run_t r = {0};
    train(&r, m, data, 3, 2e-3f, 16);
    wmat_model *tm;
    TU_OK(wmat_trainer_model(r.t, &tm));
    int n_sum = 0;
    double moved = 0;
    for (int i = 0; i < wmat_model_n_tensors(ref); i++) {
        const wmat_tensor *a = wmat_model_tensor(ref, i), *b = wmat_model_tensor(m, i), *c = wmat_model_find(tm, a->name);
        same_bytes(a, b, "base");
        if (a->ndim == 2 && !strcmp(wmat_tensor_kind(a), "sum")) {
            n_sum++;
            assert_string_equal(wmat_tensor_kind(c), "sum");
            /* the quantized part as decompose wrote it; the factors f16 as stored */
            const wmat_tensor *qa = wmat__sum_part(a, 0), *qc = wmat__sum_part(c, 0), *lc = wmat__sum_part(c, 1);
            same_bytes(qa, qc, "quantized part");
            assert_int_equal(wmat__lowrank_factor(lc, 0)->dtype, WMAT_F16);
            float *la = values(wmat__sum_part(a, 1)), *lv = values(lc);
            for (int64_t j = 0; j < wmat_tensor_nelem(a); j++) moved = fmax(moved, fabs(la[j] - lv[j]));
            free(la), free(lv);
        } else {
            same_bytes(a, c, "trained model, frozen tensor");
        }
    }
    assert_int_equal(n_sum, 18);
    if (!(moved > 1e-4)) fail_msg("L did not move (%.3g)", moved);
    export_scores_as_trainer(&r, "factors_lqlora", 16);
    wmat_trainer_free(r.t);
    free(r.tok);
    wmat_model_free(m);
    wmat_model_free(ref);
}

/* GPTQ of W (rows, cols) with the method's settings, packed and read back
 * as the stored part is; Qd (the unpacked values, what the alternation
 * subtracts) when not NULL. */
static float *gptq_part(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, float *Qd)
{
    wmat_qparams qp = wmat__qparams_default();
    qp.bits = 3;
    qp.sym = 0;
    qp.axis = WMAT_QAXIS_IN;
    qp.group = 64;
    qp.n_threads = 1;
    wmat_qresult q;
    wmat_qmethod_info info;
    memset(&q, 0, sizeof q);
    TU_OK(wmat__quant_gptq(&q, W, rows, cols, st, &qp, &info));
    if (Qd) wmat_qresult_dequant(&q, Qd);
    wmat_qtensor *qt;
    TU_OK(wmat_qtensor_pack(&q, &qt));
    wmat_qresult_free(&q);
    wmat_tensor t;
    wmat__tensor_own_obj(&t, rows, cols, qt);
    float *v = values(&t);
    wmat__tensor_free_data(&t);
    return v;
}

static void test_gptq_part(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    TU_NEED_DATA(data, "golden/tinystories_valid_head.tok512.u16");
    enum { CTX = 64, NW = 4, RANK = 8 };
    int32_t *tok;
    size_t nt;
    TU_OK(wmat_read_tokens_u16(data, &tok, &nt));
    wmat_model *m = load(path), *orig = load(path);
    wmat_decompose_params p = wmat_decompose_default_params();
    p.method = "lqlora";
    p.method_params = "quant=gptq,bits=3,group=64,rank=8,iters=2";
    p.targets = 1u << WMAT_LIN_Q;
    p.calib = tok;
    p.n_calib = (size_t)CTX * NW;
    p.calib_ctx = CTX;
    TU_OK(wmat_decompose_model(m, &p, NULL));
    /* without calibration data gptq is refused before anything changes */
    wmat_model *m2 = load(path);
    p.calib = NULL;
    p.n_calib = 0;
    assert_int_equal(wmat_decompose_model(m2, &p, NULL), WMAT_ERR_INVALID);
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m2, 0, WMAT_LIN_Q)), "f32");
    wmat_model_free(m2);
    /* the Hessian of layer 0's attention input, as the driver collects it */
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = CTX;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, orig, &rp));
    wmat__calib_states cs;
    TU_OK(wmat__calib_states_init(&cs, rt, tok, NW, CTX, wmat_model_config(orig)->dim));
    wmat_qstats st;
    TU_OK(wmat__qstats_init(&st, wmat_model_config(orig)->dim, 1));
    wmat_qstats *slots[WMAT_CSLOT_COUNT] = {0};
    slots[WMAT_CSLOT_ATTN] = &st;
    TU_OK(wmat__calib_collect(&cs, wmat_model_config(orig)->n_layers, slots, 1u << WMAT_CSLOT_ATTN, 0));
    const wmat_tensor *W0 = wmat_model_linear(orig, 0, WMAT_LIN_Q), *S = wmat_model_linear(m, 0, WMAT_LIN_Q);
    const int64_t rows = W0->shape[0], cols = W0->shape[1], n = rows * cols;
    const float *W = W0->data;
    assert_string_equal(wmat_tensor_kind(S), "sum");
    float *Qs = values(wmat__sum_part(S, 0)), *Ls = values(wmat__sum_part(S, 1));
    /* the alternation: Q1 = GPTQ(W), L1 = SVD_r(W - Q1), Q2 = GPTQ(W - L1), L2 = SVD_r(W - Q2) */
    float *Qd = malloc((size_t)n * sizeof(float)), *R = malloc((size_t)n * sizeof(float)), *L1 = malloc((size_t)n * sizeof(float));
    float *Q1 = gptq_part(W, rows, cols, &st, Qd);
    for (int64_t i = 0; i < n; i++) R[i] = W[i] - Qd[i];
    wmat_tensor Lt;
    int64_t rk;
    double e;
    TU_OK(wmat__decomp_svd_rank(R, rows, cols, RANK, WMAT_F32, &Lt, &rk, &e));
    wmat__wkind_of(&Lt)->dequant_rows(&Lt, 0, rows, L1);
    wmat__tensor_free_data(&Lt);
    for (int64_t i = 0; i < n; i++) R[i] = W[i] - L1[i];
    float *Q2 = gptq_part(R, rows, cols, &st, NULL);
    const int is1 = !memcmp(Qs, Q1, (size_t)n * sizeof(float)), is2 = !memcmp(Qs, Q2, (size_t)n * sizeof(float));
    if (!is1 && !is2) fail_msg("the quantized part is neither GPTQ(W) nor GPTQ(W - L1)");
    /* its correction: the rank-r SVD of what it leaves (for the kept pair) */
    if (is1) {
        for (int64_t i = 0; i < n; i++) assert_true(fabsf(Ls[i] - L1[i]) <= 1e-6f * (1 + fabsf(L1[i])));
    } else {
        /* Q2's dequantized values through the packed form: recompute the residual from them */
        for (int64_t i = 0; i < n; i++) R[i] = W[i] - Qs[i];
        TU_OK(wmat__decomp_svd_rank(R, rows, cols, RANK, WMAT_F32, &Lt, &rk, &e));
        float *L2 = values(&Lt);
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) num += ((double)Ls[i] - L2[i]) * ((double)Ls[i] - L2[i]), den += (double)L2[i] * L2[i];
        if (!(sqrt(num / den) < 1e-3)) fail_msg("L is not SVD_r(W - Q): relative distance %.3g", sqrt(num / den));
        free(L2);
        wmat__tensor_free_data(&Lt);
    }
    print_message("kept pair %d\n", is1 ? 1 : 2);
    free(Qs), free(Ls), free(Qd), free(R), free(L1), free(Q1), free(Q2);
    wmat__qstats_free(&st);
    wmat__calib_states_free(&cs);
    wmat_runtime_free(rt);
    wmat_model_free(m);
    wmat_model_free(orig);
    free(tok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_welore_lrc), cmocka_unit_test(test_lqlora_l),
                                       cmocka_unit_test(test_gptq_part)};
    return tu_run_tests("factors_train", tests, NULL, NULL);
}
