/* The Gaussian-mixture attention mask (src/model/gmm_mask.h,
 * src/train/gmm_grad.c): its attention backward against finite
 * differences (q, k, v and the mask parameters), the trainer's gradient of
 * the mask parameters against the loss's finite differences, the runtime
 * evaluating a masked model as the trainer does, storage (native directory
 * only) and the refusals (other formats, adapters). Decode:
 * tests/test_gmm_decode.c. */
#include "test_util.h"

#include "io/model_internal.h"
#include "model/gmm_mask.h"
#include "train/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* out for all (b, h) through the per-head forward */
static void gmm_forward(float *out, const float *q, const float *k, const float *v, int B, int T, int nh, int nkv,
                        int hd, const float *par, int K, float *scr)
{
    const int QD = nh * hd, KV = nkv * hd, grp = nh / nkv;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++)
            wmat__gmm_head_forward(out + (size_t)b * T * QD + (size_t)h * hd, QD, q + (size_t)b * T * QD + (size_t)h * hd,
                                   QD, k + (size_t)b * T * KV + (size_t)(h / grp) * hd,
                                   v + (size_t)b * T * KV + (size_t)(h / grp) * hd, KV, T, hd, par + (size_t)h * 2 * K, K,
                                   scr);
}

static double weighted(const float *out, const float *w, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * w[i];
    return s;
}

/* L = sum(out * W) for random W: dout = W; every gradient against central
 * differences of L. */
static void test_attention_backward_fd(void **state)
{
    (void)state;
    enum { B = 2, T = 7, NH = 4, NKV = 2, HD = 4, K = 3 };
    const int QD = NH * HD, KV = NKV * HD;
    const size_t nq = (size_t)B * T * QD, nk = (size_t)B * T * KV, np = (size_t)NH * K * 2;
    float *q = malloc(nq * 4), *k = malloc(nk * 4), *v = malloc(nk * 4), *w = malloc(nq * 4), *out = malloc(nq * 4);
    float *dq = malloc(nq * 4), *dk = malloc(nk * 4), *dv = malloc(nk * 4), *par = malloc(np * 4);
    float *dpar = calloc(np, 4), *scr = malloc(wmat__gmm_head_scratch(T) * 4);
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    for (size_t i = 0; i < nq; i++) q[i] = wmat_rng_normal(&r), w[i] = wmat_rng_normal(&r);
    for (size_t i = 0; i < nk; i++) k[i] = wmat_rng_normal(&r), v[i] = wmat_rng_normal(&r);
    for (int i = 0; i < NH * K; i++) {
        par[2 * i] = wmat_rng_normal(&r);
        par[2 * i + 1] = 0.7f + 3.0f * wmat_rng_uniform(&r); /* widths around the window's distances */
    }
    TU_OK(wmat__gmm_attention_backward(dq, dk, dv, dpar, w, q, k, v, B, T, NH, NKV, HD, par, K, 2));
    struct { float *x, *g; size_t n; const char *name; } vars[] = {
        {q, dq, nq, "q"}, {k, dk, nk, "k"}, {v, dv, nk, "v"}, {par, dpar, np, "mask parameters"}};
    const float h = 1e-2f;
    for (int vi = 0; vi < 4; vi++) {
        double worst = 0, gmax = 0;
        for (size_t i = 0; i < vars[vi].n; i++) {
            const float x0 = vars[vi].x[i];
            vars[vi].x[i] = x0 + h;
            gmm_forward(out, q, k, v, B, T, NH, NKV, HD, par, K, scr);
            const double lp = weighted(out, w, nq);
            vars[vi].x[i] = x0 - h;
            gmm_forward(out, q, k, v, B, T, NH, NKV, HD, par, K, scr);
            const double lm = weighted(out, w, nq);
            vars[vi].x[i] = x0;
            const double fd = (lp - lm) / (2 * h), an = vars[vi].g[i];
            worst = fmax(worst, fabs(fd - an));
            gmax = fmax(gmax, fabs(an));
        }
        print_message("%s: largest |fd - grad| %.3g, largest grad %.3g\n", vars[vi].name, worst, gmax);
        if (!(worst <= 2e-3 + 1e-2 * gmax))
            fail_msg("%s: largest |finite difference - gradient| %g (largest gradient %g)", vars[vi].name, worst, gmax);
        assert_true(gmax > 1e-3); /* the gradient is not trivially zero */
    }
    /* dpar accumulates */
    float *d2 = malloc(np * 4);
    memcpy(d2, dpar, np * 4);
    TU_OK(wmat__gmm_attention_backward(dq, dk, dv, dpar, w, q, k, v, B, T, NH, NKV, HD, par, K, 1));
    for (size_t i = 0; i < np; i++) TU_ASSERT_NEAR(dpar[i], 2 * d2[i], 1e-5 + 1e-5 * fabs(d2[i]));
    free(d2);
    free(q), free(k), free(v), free(w), free(out), free(dq), free(dk), free(dv), free(par), free(dpar), free(scr);
}

/* The mask with one kernel alpha = 1 of a huge width is 1 at every
 * distance: the attention is plain causal attention (the trainer's). */
static void test_unit_mask_is_causal(void **state)
{
    (void)state;
    enum { B = 1, T = 9, NH = 2, NKV = 1, HD = 6, K = 2 };
    const size_t nq = (size_t)B * T * NH * HD, nk = (size_t)B * T * NKV * HD;
    float q[nq], k[nk], v[nk], a[nq], b[nq], par[NH * K * 2];
    float *scr = malloc(wmat__gmm_head_scratch(T) * 4), *scr2 = malloc((size_t)2 * T * T * 4);
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (size_t i = 0; i < nq; i++) q[i] = wmat_rng_normal(&r);
    for (size_t i = 0; i < nk; i++) k[i] = wmat_rng_normal(&r), v[i] = wmat_rng_normal(&r);
    for (int h = 0; h < NH; h++) {
        par[h * 4 + 0] = 1.0f, par[h * 4 + 1] = 1e4f; /* exp(-d^2 / 2e8): 1 - 4e-7 at d = 8 */
        par[h * 4 + 2] = 0.0f, par[h * 4 + 3] = 3.0f;
    }
    gmm_forward(a, q, k, v, B, T, NH, NKV, HD, par, K, scr);
    wmat__attention_forward(b, q, k, v, B, T, NH, NKV, HD, scr2, 1);
    TU_ASSERT_CLOSE(a, b, nq, 1e-5, 1e-5);
    free(scr), free(scr2);
}

static wmat_config tiny_config(int K)
{
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.dim = 32, c.hidden_dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 40, c.seq_len = 16;
    c.gmm_kernels = K;
    return c;
}

static int32_t *tokens(size_t n, int V, uint64_t seed)
{
    int32_t *t = malloc(n * sizeof *t);
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) t[i] = (int32_t)(wmat_rng_u64(&r) % (uint64_t)V);
    return t;
}

static float *mask_of(wmat_model *m, int l)
{
    char name[WMAT_NAME_MAX];
    wmat__gmm_mask_name(name, sizeof name, l);
    wmat_tensor *t = wmat_model_find(m, name);
    assert_non_null(t);
    return t->data;
}

/* The trainer's gradient of every mask parameter against central
 * differences of its loss; the runtime's loss of the same model. */
static void test_trainer_mask_grad_and_runtime(void **state)
{
    (void)state;
    const wmat_config c = tiny_config(3);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 7, 0.2f));
    /* the init is the paper's; keep the widths in the window's range so
     * every parameter moves the loss */
    for (int l = 0; l < c.n_layers; l++) {
        float *p = mask_of(m, l);
        for (int i = 0; i < c.n_heads * c.gmm_kernels; i++) p[2 * i + 1] = 1.0f + (float)(i % 4);
    }
    wmat_train_params tp = wmat_train_default_params();
    tp.batch = 2, tp.ctx = 16, tp.steps = 3;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &tp));
    const int T = 16, B = 2;
    int32_t *tok = tokens((size_t)B * T + 1, c.vocab_size, 3);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, tok, tok + 1, 1, T, 1.0f / T, 1, 0, &loss)); /* the mean loss's gradient */
    wmat_model *view;
    TU_OK(wmat_trainer_model(t, &view));
    size_t np;
    float *params = wmat__trainer_params(t, &np), *grads = wmat__trainer_grads(t, &np);
    const int GM = c.n_heads * c.gmm_kernels * 2;
    double worst = 0, gmax = 0;
    for (int l = 0; l < c.n_layers; l++) {
        float *p = mask_of(view, l);
        assert_true(p >= params && p + GM <= params + np); /* the view's mask is the parameter */
        for (int i = 0; i < GM; i++) {
            const size_t off = (size_t)(p - params) + (size_t)i;
            const float x0 = params[off], h = 1e-2f, g = grads[off];
            double lp, lm;
            params[off] = x0 + h;
            TU_OK(wmat__trainer_fwdbwd(t, tok, tok + 1, 1, T, 1.0f, 0, 1, &lp));
            params[off] = x0 - h;
            TU_OK(wmat__trainer_fwdbwd(t, tok, tok + 1, 1, T, 1.0f, 0, 1, &lm));
            params[off] = x0;
            worst = fmax(worst, fabs((lp - lm) / (2 * h) - g));
            gmax = fmax(gmax, fabs(g));
        }
    }
    print_message("trainer mask gradient: largest |fd - grad| %.3g, largest grad %.3g\n", worst, gmax);
    if (!(worst <= 1e-3 + 2e-2 * gmax)) fail_msg("mask gradient vs finite differences: %g (largest %g)", worst, gmax);
    assert_true(gmax > 1e-5);
    /* a few steps, then the runtime's loss on the view equals the trainer's */
    TU_OK(wmat_trainer_set_data(t, tok, (size_t)B * T + 1));
    for (int s = 0; s < 3; s++) {
        wmat_train_step_info info;
        TU_OK(wmat_trainer_step(t, &info));
    }
    TU_OK(wmat__trainer_fwdbwd(t, tok, tok + 1, 1, T, 1.0f, 0, 1, &loss));
    TU_OK(wmat_trainer_model(t, &view));
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, view, NULL));
    wmat_eval_result res;
    TU_OK(wmat_eval_tokens(rt, tok, (size_t)T + 1, T, 1, &res));
    print_message("runtime loss %.9f, trainer loss %.9f\n", res.mean_nll, loss);
    TU_ASSERT_NEAR(res.mean_nll, loss, 1e-5);
    /* (decode runs the mask too: tests/test_gmm_decode.c) */
    wmat_runtime_free(rt);
    wmat_trainer_free(t);
    free(tok);
    wmat_model_free(m);
}

/* Saved and loaded in the native directory; every other format refuses. */
static void test_storage(void **state)
{
    (void)state;
    const wmat_config c = tiny_config(2);
    wmat_model *m, *back;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 9, 0.1f));
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    const char *dir = tu_tmp("gmm_native");
    TU_OK(wmat_model_save(m, dir, &sp));
    TU_OK(wmat_model_load(&back, dir, NULL));
    assert_int_equal(wmat_model_config(back)->gmm_kernels, 2);
    for (int l = 0; l < c.n_layers; l++)
        assert_memory_equal(mask_of(m, l), mask_of(back, l), (size_t)c.n_heads * 2 * 2 * sizeof(float));
    /* the loaded model evaluates as the saved one */
    int32_t *tok = tokens(17, c.vocab_size, 4);
    wmat_runtime *r1, *r2;
    TU_OK(wmat_model_materialize(back));
    TU_OK(wmat_runtime_create(&r1, m, NULL));
    TU_OK(wmat_runtime_create(&r2, back, NULL));
    wmat_eval_result e1, e2;
    TU_OK(wmat_eval_tokens(r1, tok, 17, 16, 1, &e1));
    TU_OK(wmat_eval_tokens(r2, tok, 17, 16, 1, &e2));
    assert_true(e1.mean_nll == e2.mean_nll);
    wmat_runtime_free(r1);
    wmat_runtime_free(r2);
    free(tok);
    wmat_model_free(back);
    const wmat_format others[] = {WMAT_FMT_LLAMA2C, WMAT_FMT_GGUF, WMAT_FMT_HF};
    const char *names[] = {"gmm.bin", "gmm.gguf", "gmm-hf"};
    for (int i = 0; i < 3; i++) {
        sp.format = others[i];
        assert_int_equal(wmat_model_save(m, tu_tmp(names[i]), &sp), WMAT_ERR_UNSUPPORTED);
        assert_non_null(strstr(wmat_last_error(), "Gaussian-mixture"));
    }
    /* adapters do not train it */
    wmat_train_params tp = wmat_train_default_params();
    tp.method = WMAT_TRAIN_LORA;
    tp.ctx = 16;
    wmat_trainer *t = NULL;
    assert_int_equal(wmat_trainer_create(&t, m, &tp), WMAT_ERR_UNSUPPORTED);
    /* a bad kernel count is refused */
    wmat_config bad = tiny_config(17);
    wmat_model *mb = NULL;
    assert_int_equal(wmat_model_create(&mb, &bad), WMAT_ERR_FORMAT);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_backward_fd),
        cmocka_unit_test(test_unit_mask_is_causal),
        cmocka_unit_test(test_trainer_mask_grad_and_runtime),
        cmocka_unit_test(test_storage),
    };
    return tu_run_tests("gmm_mask", tests, NULL, NULL);
}
