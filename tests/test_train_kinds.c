/* The trainer over a frozen base of every registered weight kind: LoRA
 * runs through the kind's forward and input backward (the base stays as
 * stored), so
 *   - its loss and adapter gradients equal LoRA over the dequantized f32
 *     base, within the kind's tolerance (every kind of the registry);
 *   - the adapter gradient over a q4_0 base matches central finite
 *     differences of the trainer's own loss;
 *   - a few steps over q8_0 and packed 4-bit stories260K lower the loss;
 *   - full training dequantizes such a base into its f32 parameters, and
 *     the merged model of an adapter run is the dequantized base plus the
 *     adapter. */
#include "test_util.h"
#include "train/train.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_context one_thread(void)
{
    wmat_context c = wmat_context_default();
    c.n_threads = 1;
    return c;
}

/* Widths that every kind takes (q4_0, q8_0 and packed rows are 32-wide
 * blocks): dim 32, hidden 64; tied embeddings, so the classifier is a
 * weight of the kind too. */
static wmat_model *tiny_f32(uint64_t seed)
{
    wmat_config c = tu_config(32, 64, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    wmat_rng r;
    wmat_rng_seed(&r, seed + 1);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim == 1)
            for (int j = 0; j < t->shape[0]; j++) ((float *)t->data)[j] = 1.0f + 0.2f * wmat_rng_normal(&r);
    }
    return m;
}

/* Replace every 2-D weight of m whose width the kind takes by the kind's
 * default instance of it (from_f32). Returns how many were converted; 0
 * when the kind builds none. */
static int convert_model(wmat_model *m, const wmat_wkind *k)
{
    int n = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim != 2 || t->shape[1] % 32) continue;
        wmat_tensor nt;
        memset(&nt, 0, sizeof nt);
        if (k->from_f32((const float *)t->data, t->shape[0], t->shape[1], &nt)) {
            wmat_clear_error();
            continue;
        }
        char name[WMAT_NAME_MAX];
        memcpy(name, t->name, sizeof name);
        wmat__tensor_free_data(t);
        *t = nt;
        memcpy(t->name, name, sizeof name);
        n++;
    }
    return n;
}

/* An f32 model with the values of m's weights (dequantized). */
static wmat_model *dequantized_copy(wmat_model *m)
{
    wmat_model *d;
    TU_OK(wmat_model_create(&d, wmat_model_config(m)));
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *s = wmat_model_tensor(m, i);
        wmat_tensor *t = wmat_model_find(d, s->name);
        assert_non_null(t);
        if (s->ndim == 2) wmat__wkind_of(s)->dequant_rows(s, 0, s->shape[0], t->data);
        else memcpy(t->data, s->data, s->nbytes);
    }
    return d;
}

static wmat_train_params lora_params(wmat_context *oc)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.method = WMAT_TRAIN_LORA;
    p.batch = 2;
    p.ctx = 8;
    p.lora_rank = 3;
    p.lora_alpha = 5;
    p.lora_targets = 0x7f;
    return p;
}

/* Adapter parameters away from the init (B != 0, so dA != 0). */
static void set_adapter(wmat_trainer *t, uint64_t seed)
{
    size_t n;
    float *pp = wmat__trainer_params(t, &n);
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) pp[i] = 0.2f * wmat_rng_normal(&r);
}

static void batch(int32_t *inp, int32_t *tgt, int n, uint64_t seed)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) inp[i] = (int32_t)(wmat_rng_u64(&r) % 13), tgt[i] = (int32_t)(wmat_rng_u64(&r) % 13);
}

/* Loss and adapter gradients of one batch. */
static double lora_grads(wmat_model *m, float **grads, size_t *n)
{
    wmat_context oc = one_thread();
    wmat_train_params p = lora_params(&oc);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    set_adapter(t, 7);
    int32_t inp[16], tgt[16];
    batch(inp, tgt, 16, 99);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 0, &loss));
    float *g = wmat__trainer_grads(t, n);
    *grads = malloc(*n * sizeof(float));
    memcpy(*grads, g, *n * sizeof(float));
    wmat_trainer_free(t);
    return loss;
}

static void test_grads_every_kind(void **state)
{
    (void)state;
    int tested = 0;
    for (int ki = 0; ki < wmat__wkind_count(); ki++) {
        const wmat_wkind *k = wmat__wkind_at(ki);
        if (!k->from_f32) continue;
        wmat_model *mk = tiny_f32(5);
        const int nconv = convert_model(mk, k);
        if (!nconv) {
            print_message("kind %s: builds no instance of these widths; skipped\n", k->name);
            wmat_model_free(mk);
            continue;
        }
        wmat_model *md = dequantized_copy(mk);
        float *gk, *gd;
        size_t nk, nd;
        const double lk = lora_grads(mk, &gk, &nk), ld = lora_grads(md, &gd, &nd);
        assert_int_equal(nk, nd);
        /* the same function in float with another summation order (kernels
         * per kind); relative to the largest gradient */
        double mx = 0;
        for (size_t i = 0; i < nd; i++) mx = fmax(mx, fabs(gd[i]));
        size_t worst;
        const double err = tu_max_abs_diff(gk, gd, nk, &worst);
        /* a kind whose batched products round activations (bf16 on a native
         * bf16 GEMM: 2^-9 each) is held to its batched budget, compounded
         * through the layers' seven products forward and back */
        wmat_wexec ex = wmat__wexec_from(NULL);
        const double btol = wmat__wkind_batch_tol(k, &ex);
        const double tol = fmax(1e-4, 10 * btol) * mx + 1e-6, ltol = btol > 1e-5 ? btol * fabs(ld) : 1e-5;
        print_message("kind %-8s %d weights: loss %.7f vs dequantized f32 %.7f, max grad diff %.2e (max |g| %.2e)\n",
                      k->name, nconv, lk, ld, err, mx);
        if (!tu_near(lk, ld, ltol)) fail_msg("kind %s: loss %.9f vs %.9f over the dequantized base", k->name, lk, ld);
        if (!(err <= tol))
            fail_msg("kind %s: adapter gradient differs by %.3g at %zu (%.7g vs %.7g), tolerance %.3g", k->name, err,
                     worst, gk[worst], gd[worst], tol);
        assert_true(mx > 0);
        free(gk), free(gd);
        wmat_model_free(mk);
        wmat_model_free(md);
        tested++;
    }
    assert_true(tested >= 5);
}

/* The adapter gradient over a q4_0 base against central differences of the
 * trainer's own loss (float forward, double loss): the coordinates with the
 * largest gradients, h = 1e-2. */
static void test_fd_q4_base(void **state)
{
    (void)state;
    const wmat_wkind *k = wmat__wkind_find("q4_0");
    assert_non_null(k);
    wmat_model *m = tiny_f32(17);
    assert_true(convert_model(m, k) > 0);
    wmat_context oc = one_thread();
    wmat_train_params p = lora_params(&oc);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    set_adapter(t, 3);
    int32_t inp[16], tgt[16];
    batch(inp, tgt, 16, 42);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 0, &loss));
    size_t n;
    float *pp = wmat__trainer_params(t, &n), *gg = wmat__trainer_grads(t, &n);
    float *g = malloc(n * sizeof(float));
    memcpy(g, gg, n * sizeof(float));
    int checked = 0;
    for (int pick = 0; pick < 24; pick++) {
        /* the pick-th largest |g| not yet taken */
        size_t best = 0;
        for (size_t i = 1; i < n; i++)
            if (fabsf(g[i]) > fabsf(g[best])) best = i;
        const float save = pp[best];
        const float h = 1e-2f;
        double lp, lm;
        pp[best] = save + h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lp));
        pp[best] = save - h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lm));
        pp[best] = save;
        const double fd = (lp - lm) / (2.0 * h);
        if (!(fabs(fd - g[best]) <= 2e-2 * fabs(fd) + 2e-4))
            fail_msg("adapter parameter %zu over a q4_0 base: analytic %.6g vs finite difference %.6g", best, g[best],
                     fd);
        g[best] = 0; /* next pick */
        checked++;
    }
    assert_int_equal(checked, 24);
    free(g);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

/* Full training over a quantized base starts from its dequantized values;
 * the merged model of an adapter run is f32 (dequantized base + adapter). */
static void test_full_and_merge_dequantize(void **state)
{
    (void)state;
    wmat_model *m = tiny_f32(23);
    assert_true(convert_model(m, wmat__wkind_find("q8_0")) > 0);
    wmat_model *d = dequantized_copy(m);
    wmat_context oc = one_thread();
    wmat_train_params p = lora_params(&oc);
    p.method = WMAT_TRAIN_FULL;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_model *v;
    TU_OK(wmat_trainer_model(t, &v));
    for (int i = 0; i < wmat_model_n_tensors(d); i++) {
        const wmat_tensor *a = wmat_model_tensor(d, i), *b = wmat_model_find(v, a->name);
        assert_non_null(b);
        assert_int_equal(b->dtype, WMAT_F32);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    wmat_trainer_free(t);
    /* adapter: merged = dequantized base + adapter, which the f32 base's
     * merged model gives too */
    p = lora_params(&oc);
    wmat_trainer *tq, *tf;
    TU_OK(wmat_trainer_create(&tq, m, &p));
    TU_OK(wmat_trainer_create(&tf, d, &p));
    set_adapter(tq, 9);
    set_adapter(tf, 9);
    wmat_model *mq, *mf;
    TU_OK(wmat_trainer_model(tq, &mq));
    TU_OK(wmat_trainer_model(tf, &mf));
    for (int i = 0; i < wmat_model_n_tensors(mf); i++) {
        const wmat_tensor *a = wmat_model_tensor(mf, i), *b = wmat_model_find(mq, a->name);
        assert_non_null(b);
        assert_int_equal(b->dtype, WMAT_F32);
        assert_memory_equal(a->data, b->data, a->nbytes);
    }
    wmat_trainer_free(tq);
    wmat_trainer_free(tf);
    wmat_model_free(d);
    wmat_model_free(m);
}

/* A weight the trainer cannot read (HF row order not undone) is refused
 * with a message, not run. */
static void test_refuses_unmaterialized(void **state)
{
    (void)state;
    wmat_model *m = tiny_f32(29);
    wmat_model_linear(m, 0, WMAT_LIN_Q)->flags |= WMAT_TF_HF_ROPE;
    wmat_context oc = one_thread();
    wmat_train_params p = lora_params(&oc);
    wmat_trainer *t;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "materialize"));
    wmat_model_linear(m, 0, WMAT_LIN_Q)->flags &= ~WMAT_TF_HF_ROPE;
    wmat_model_free(m);
}

/* A few LoRA steps over stories260K stored as q8_0 and as packed 4-bit
 * (every weight of width 64: all but down) lower the loss. */
static void test_loss_falls_quantized(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(dp, "golden/tinyshakespeare.tok512.u16");
    int32_t *ids;
    size_t n;
    TU_OK(wmat_read_tokens_u16(dp, &ids, &n));
    const char *kinds[2] = {"q8_0", "qpacked"};
    for (int ki = 0; ki < 2; ki++) {
        wmat_load_params lp = wmat_load_default_params();
        wmat_model *m;
        TU_OK(wmat_model_load(&m, mp, &lp));
        TU_OK(wmat_model_dequantize(m)); /* own arrays (the file is mapped) */
        const int nconv = convert_model(m, wmat__wkind_find(kinds[ki]));
        assert_true(nconv >= 20);
        wmat_context oc = one_thread();
        wmat_train_params p = wmat_train_default_params();
        p.exec = &oc;
        p.method = WMAT_TRAIN_LORA;
        p.batch = 4;
        p.ctx = 64;
        p.steps = 12;
        p.lr = 1e-2f;
        p.lora_targets = 0x7f;
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, ids, n));
        double first3 = 0, last3 = 0;
        for (int s = 0; s < 12; s++) {
            wmat_train_step_info si;
            TU_OK(wmat_trainer_step(t, &si));
            if (s < 3) first3 += si.loss / 3;
            if (s >= 9) last3 += si.loss / 3;
        }
        print_message("LoRA over %s stories260K (%d weights): mean loss of steps 1-3 %.4f, 10-12 %.4f\n", kinds[ki],
                      nconv, first3, last3);
        if (!(last3 < first3 - 0.1)) fail_msg("%s base: loss did not fall: %.4f -> %.4f", kinds[ki], first3, last3);
        wmat_trainer_free(t);
        wmat_model_free(m);
    }
    free(ids);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grads_every_kind),
        cmocka_unit_test(test_fd_q4_base),
        cmocka_unit_test(test_full_and_merge_dequantize),
        cmocka_unit_test(test_refuses_unmaterialized),
        cmocka_unit_test(test_loss_falls_quantized),
    };
    return tu_run_tests("train_kinds", tests, NULL, NULL);
}
