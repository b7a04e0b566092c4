/* bf16 mixed-precision training (wmat_train_params.precision = WMAT_BF16):
 * the vectorized f32 -> bf16 conversion against the scalar one, gradients
 * with bf16 GEMMs against fp32 ones, a short run's loss against fp32's,
 * bit-exact resume and recompute in bf16, the refusal where bf16 GEMMs are
 * not native, memory accounting.
 *
 * Gradient tolerance: per tensor ||g_bf16 - g_fp32||_F / ||g_fp32||_F <= 3e-2
 * (tu_rel_frob: a NaN anywhere fails). bf16 keeps 8 significant bits, so
 * each operand is rounded by up to 2^-9 = 2e-3 relative; the errors of the
 * layers add up through the backward to 1.1e-2 in the worst tensor here
 * (layer 1's wk, printed; the adapters' 8e-3), and the bound leaves ~3x for
 * other seeds and kernels (AMX accumulates in another order). The loss of
 * one batch must agree within 1%, that of a 40-step run too.
 *
 * Cases that need bf16 GEMMs skip where wmat refuses them (no oneDNN, or a
 * CPU without AVX512-BF16 / AMX); the refusal itself is tested everywhere. */
#include "test_util.h"
#include "core/shapes.h"
#include "train/train.h"

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

/* big enough for real GEMM tiles, small enough for ASan */
static wmat_model *model(uint64_t seed)
{
    wmat_config c = tu_config(64, 160, 2, 4, 2, 61, 32);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.1f));
    return m;
}

static int32_t *tokens(size_t n, int V)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3) + (i / 5) % 4) % V;
    return d;
}

static wmat_train_params params(wmat_context *oc, wmat_dtype prec)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.batch = 4;
    p.ctx = 16;
    p.steps = 40;
    p.lr = 5e-3f;
    p.warmup = 3;
    p.lora_rank = 4;
    p.lora_targets = 0x7f;
    p.precision = prec;
    return p;
}

/* A bf16 trainer, or NULL after skip() where bf16 is refused here. */
static wmat_trainer *bf16_trainer(wmat_model *m, const wmat_train_params *p)
{
    wmat_trainer *t = NULL;
    int rc = wmat_trainer_create(&t, m, p);
    if (rc == WMAT_ERR_UNSUPPORTED) {
        print_message("bf16 training not available here: %s\n", wmat_last_error());
        skip();
        return NULL;
    }
    TU_OK(rc);
    return t;
}

static void test_convert_matches_scalar(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 3);
    const size_t n = 100003; /* not a multiple of the vector width */
    float *x = malloc(n * sizeof(float));
    uint16_t *h = malloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)wmat_rng_u64(&r);
        if (i % 7 == 0) u = (u & 0x8000ffffu) | 0x3f000000u; /* ordinary values, ties included */
        if (i % 11 == 0) u &= 0x807fffffu;                   /* subnormals */
        if (i % 13 == 0) u |= 0x7f800000u;                   /* NaN and Inf */
        if (i % 17 == 0) u = (u & 0xffff0000u) | 0x8000u;    /* exact ties */
        memcpy(&x[i], &u, 4);
    }
    TU_OK(wmat_from_f32(h, WMAT_BF16, x, n));
    for (size_t i = 0; i < n; i++)
        if (h[i] != wmat_f32_to_bf16(x[i]))
            fail_msg("value %zu (%a): vector 0x%04x, scalar 0x%04x", i, (double)x[i], h[i], wmat_f32_to_bf16(x[i]));
    free(x);
    free(h);
}

/* The trainer's tensors in its parameter layout (full training, tied):
 * embedding, the layers' roles in wmat_layer_weight order, final norm. */
typedef struct {
    char name[48];
    size_t off, n;
} span;

static int layout(const wmat_config *c, span *s)
{
    int k = 0;
    size_t off = 0;
    s[k++] = (span){"embedding", off, (size_t)c->vocab_size * c->dim};
    off += s[0].n;
    for (int l = 0; l < c->n_layers; l++)
        for (int w = 0; w < WMAT_W_LAYER_COUNT; w++) {
            int64_t rows, cols;
            wmat__role_shape(c, (wmat_layer_weight)w, &rows, &cols);
            s[k] = (span){"", off, (size_t)rows * (size_t)(cols ? cols : 1)};
            snprintf(s[k].name, sizeof s[k].name, "layer %d role %d", l, w);
            off += s[k++].n;
        }
    s[k++] = (span){"final norm", off, (size_t)c->dim};
    return k;
}

/* Worst per-tensor relative error of a against b (NaN: NaN). */
static double worst_rel(const float *a, const float *b, const span *s, int ns, int *at)
{
    double worst = 0;
    for (int i = 0; i < ns; i++) {
        const double e = tu_rel_frob(a + s[i].off, b + s[i].off, s[i].n);
        if (!(e <= worst)) {
            worst = e;
            *at = i;
        }
        if (isnan(e)) return e;
    }
    return worst;
}

static void test_grads_close_to_fp32(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_model *m = model(5);
    const wmat_config *c = wmat_model_config(m);
    wmat_train_params p32 = params(&oc, WMAT_F32), p16 = params(&oc, WMAT_BF16);
    wmat_trainer *a, *b = bf16_trainer(m, &p16);
    if (!b) {
        wmat_model_free(m);
        return;
    }
    TU_OK(wmat_trainer_create(&a, m, &p32));
    int32_t *d = tokens(4 * 17, c->vocab_size);
    int32_t inp[64], tgt[64];
    for (int bb = 0; bb < 4; bb++)
        for (int i = 0; i < 16; i++) inp[bb * 16 + i] = d[bb * 17 + i], tgt[bb * 16 + i] = d[bb * 17 + i + 1];
    double la, lb;
    TU_OK(wmat__trainer_fwdbwd(a, inp, tgt, 4, 16, 1.0f / 64, 1, 0, &la));
    TU_OK(wmat__trainer_fwdbwd(b, inp, tgt, 4, 16, 1.0f / 64, 1, 0, &lb));
    if (!(fabs(la - lb) <= 1e-2 * fabs(la))) fail_msg("loss fp32 %.6f, bf16 %.6f", la, lb);
    size_t na, nb;
    float *ga = wmat__trainer_grads(a, &na), *gb = wmat__trainer_grads(b, &nb);
    assert_int_equal(na, nb);
    span s[64];
    const int ns = layout(c, s);
    assert_int_equal(s[ns - 1].off + s[ns - 1].n, na);
    int at = 0;
    const double e = worst_rel(gb, ga, s, ns, &at);
    print_message("bf16 vs fp32: loss %.6f vs %.6f, worst per-tensor gradient error %.3g (%s)\n", lb, la, e, s[at].name);
    if (!(e <= 3e-2)) fail_msg("bf16 gradients off by %.3g (%s)", e, s[at].name);
    /* the bf16 path really ran: not the fp32 numbers */
    assert_true(memcmp(ga, gb, na * sizeof(float)) != 0);
    /* a NaN anywhere fails the comparison */
    float keep = gb[s[3].off + 1];
    gb[s[3].off + 1] = NAN;
    assert_false(worst_rel(gb, ga, s, ns, &at) <= 3e-2);
    gb[s[3].off + 1] = keep;
    /* ... and a NaN weight is caught by the step */
    TU_OK(wmat_trainer_set_data(b, d, 4 * 17));
    size_t np;
    float *pb = wmat__trainer_params(b, &np);
    pb[s[2].off] = NAN;
    wmat_train_step_info si;
    assert_int_equal(wmat_trainer_step(b, &si), WMAT_ERR_NUMERIC);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

/* LoRA over a frozen f32 base: the base products in bf16, the adapters'
 * own in fp32; the adapter gradients close to fp32's. */
static void test_lora_grads(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_model *m = model(9);
    const wmat_config *c = wmat_model_config(m);
    wmat_train_params p32 = params(&oc, WMAT_F32), p16 = params(&oc, WMAT_BF16);
    p32.method = p16.method = WMAT_TRAIN_LORA;
    wmat_trainer *a, *b = bf16_trainer(m, &p16);
    if (!b) {
        wmat_model_free(m);
        return;
    }
    TU_OK(wmat_trainer_create(&a, m, &p32));
    /* B starts at zero: move it so every gradient is nonzero */
    size_t na, nb;
    float *pa = wmat__trainer_params(a, &na), *pb = wmat__trainer_params(b, &nb);
    assert_int_equal(na, nb);
    wmat_rng r;
    wmat_rng_seed(&r, 2);
    for (size_t i = 0; i < na; i++) pa[i] = pb[i] = 0.05f * wmat_rng_normal(&r);
    int32_t *d = tokens(65, c->vocab_size);
    double la, lb;
    TU_OK(wmat__trainer_fwdbwd(a, d, d + 1, 4, 16, 1.0f / 64, 1, 0, &la));
    TU_OK(wmat__trainer_fwdbwd(b, d, d + 1, 4, 16, 1.0f / 64, 1, 0, &lb));
    float *ga = wmat__trainer_grads(a, &na), *gb = wmat__trainer_grads(b, &nb);
    const double e = tu_rel_frob(gb, ga, na);
    print_message("lora bf16 vs fp32: loss %.6f vs %.6f, adapter gradient error %.3g\n", lb, la, e);
    if (!(e <= 3e-2)) fail_msg("bf16 adapter gradients off by %.3g", e);
    if (!(fabs(la - lb) <= 1e-2 * fabs(la))) fail_msg("loss fp32 %.6f, bf16 %.6f", la, lb);
    wmat_train_memory mem;
    wmat_trainer_memory(b, &mem);
    assert_true(mem.bf16 > 0); /* the frozen base's bf16 copies and the activations' */
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void run(wmat_trainer *t, int n, double *last)
{
    wmat_train_step_info si;
    for (int i = 0; i < n; i++) TU_OK(wmat_trainer_step(t, &si));
    if (last) *last = si.loss;
}

static void test_short_run_loss(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_model *m = model(11);
    const wmat_config *c = wmat_model_config(m);
    wmat_train_params p32 = params(&oc, WMAT_F32), p16 = params(&oc, WMAT_BF16);
    wmat_trainer *a, *b = bf16_trainer(m, &p16);
    if (!b) {
        wmat_model_free(m);
        return;
    }
    TU_OK(wmat_trainer_create(&a, m, &p32));
    int32_t *d = tokens(3000, c->vocab_size);
    TU_OK(wmat_trainer_set_data(a, d, 3000));
    TU_OK(wmat_trainer_set_data(b, d, 3000));
    double la0, lb0, la, lb;
    run(a, 1, &la0);
    run(b, 1, &lb0);
    run(a, 39, &la);
    run(b, 39, &lb);
    print_message("40 steps: fp32 %.4f -> %.4f, bf16 %.4f -> %.4f (%+.3f%%)\n", la0, la, lb0, lb, 100 * (lb - la) / la);
    assert_true(la < la0 - 0.3);
    if (!(fabs(lb - la) <= 0.01 * la)) fail_msg("bf16 loss %.5f vs fp32 %.5f: more than 1%% apart", lb, la);
    wmat_train_memory ma, mb;
    wmat_trainer_memory(a, &ma);
    wmat_trainer_memory(b, &mb);
    assert_int_equal(ma.bf16, 0);
    /* the bf16 copies of the linears and the tied classifier, at least */
    size_t lin = 0;
    for (int k = 0; k < WMAT_LIN_COUNT; k++) {
        int o, i;
        wmat__linear_shape(c, (wmat_linear_kind)k, &o, &i);
        lin += (size_t)o * i;
    }
    assert_true(mb.bf16 >= 2 * (lin * c->n_layers + (size_t)c->vocab_size * c->dim));
    assert_int_equal(mb.weights, ma.weights); /* the fp32 masters stay */
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void resume_check(wmat_train_method meth)
{
    wmat_context oc = one_thread();
    wmat_train_params p = params(&oc, WMAT_BF16);
    p.method = meth;
    p.grad_accum = 2;
    wmat_model *m = model(21);
    int32_t *d = tokens(2000, wmat_model_config(m)->vocab_size);
    wmat_trainer *a = bf16_trainer(m, &p), *b;
    if (!a) {
        wmat_model_free(m);
        free(d);
        return;
    }
    TU_OK(wmat_trainer_set_data(a, d, 2000));
    run(a, 20, NULL);
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    run(b, 9, NULL);
    const char *ck = tu_tmp("bf16_resume.ckpt");
    TU_OK(wmat_trainer_save_checkpoint(b, ck));
    wmat_trainer_free(b);
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    TU_OK(wmat_trainer_load_checkpoint(b, ck));
    run(b, 11, NULL);
    size_t na, nb;
    float *pa = wmat__trainer_params(a, &na), *pb = wmat__trainer_params(b, &nb);
    assert_int_equal(na, nb);
    if (memcmp(pa, pb, na * sizeof(float))) fail_msg("method %d: resumed bf16 weights differ", (int)meth);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void test_resume_full(void **state) { (void)state; resume_check(WMAT_TRAIN_FULL); }
static void test_resume_lora(void **state) { (void)state; resume_check(WMAT_TRAIN_LORA); }

/* Recompute in bf16: the recomputed blocks convert their inputs again,
 * the gradients stay the same bits. */
static void test_recompute(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_train_params p = params(&oc, WMAT_BF16), pr = p;
    pr.recompute = 1;
    wmat_model *m = model(31);
    wmat_trainer *a = bf16_trainer(m, &p), *b;
    if (!a) {
        wmat_model_free(m);
        return;
    }
    TU_OK(wmat_trainer_create(&b, m, &pr));
    int32_t *d = tokens(65, wmat_model_config(m)->vocab_size);
    double la, lb;
    TU_OK(wmat__trainer_fwdbwd(a, d, d + 1, 4, 16, 1.0f / 64, 1, 0, &la));
    TU_OK(wmat__trainer_fwdbwd(b, d, d + 1, 4, 16, 1.0f / 64, 1, 0, &lb));
    size_t na, nb;
    float *ga = wmat__trainer_grads(a, &na), *gb = wmat__trainer_grads(b, &nb);
    assert_true(la == lb);
    if (memcmp(ga, gb, na * sizeof(float))) fail_msg("recompute changed the bf16 gradients");
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

/* Refused, not silently widened: a backend without a native bf16 GEMM,
 * and precisions other than f32 / bf16. */
static void test_refusal(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    oc.gemm = WMAT_GEMM_OPENBLAS;
    wmat_model *m = model(41);
    wmat_train_params p = params(&oc, WMAT_BF16);
    wmat_trainer *t = NULL;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_UNSUPPORTED);
    assert_null(t);
    assert_non_null(strstr(wmat_last_error(), "bf16"));
    print_message("refused: %s\n", wmat_last_error());
    p.precision = WMAT_F16;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    /* f32 on the same backend still trains */
    p.precision = WMAT_F32;
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_trainer_free(t);
    wmat_model_free(m);
}

/* The CLI: --precision bf16 trains and reports its bf16 bytes; a bad
 * precision is a usage error. */
static void test_cli(void **state)
{
    (void)state;
    char txt_buf[6000];
    size_t n = 0;
    while (n + 60 < sizeof txt_buf) n += (size_t)snprintf(txt_buf + n, sizeof txt_buf - n, "the cat sat on the mat %zu times. ", n % 97);
    const char *txt = tu_tmp("bf16.txt"), *out = tu_tmp("bf16.gguf");
    assert_int_equal(tu_write_file(txt, txt_buf, n), 0);
    char cmd[8192];
    int rc;
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --steps 3 --batch 2 --ctx 32 --threads 1 --precision f16 2>&1",
             tu_cli(), out, txt);
    char *o = tu_run(cmd, &rc);
    assert_int_equal(rc, 2);
    assert_non_null(strstr(o, "--precision"));
    free(o);
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --steps 3 --batch 2 --ctx 32 --threads 1 --precision bf16 --json 2>&1",
             tu_cli(), out, txt);
    o = tu_run(cmd, &rc);
    if (rc && strstr(o, "native bf16 GEMM")) {
        print_message("%s", o);
        free(o);
        skip();
        return;
    }
    if (rc) fail_msg("wmat train --precision bf16 failed (%d): %s", rc, o);
    assert_non_null(strstr(o, "\"precision\": \"bf16\""));
    const char *b = strstr(o, "\"bytes_bf16\": ");
    assert_non_null(b);
    assert_true(atol(b + 14) > 0);
    assert_non_null(strstr(o, "precision bf16: GEMM operand copies"));
    free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert_matches_scalar),
        cmocka_unit_test(test_grads_close_to_fp32),
        cmocka_unit_test(test_lora_grads),
        cmocka_unit_test(test_short_run_loss),
        cmocka_unit_test(test_resume_full),
        cmocka_unit_test(test_resume_lora),
        cmocka_unit_test(test_recompute),
        cmocka_unit_test(test_refusal),
        cmocka_unit_test(test_cli),
    };
    return tu_run_tests("train_bf16", tests, NULL, NULL);
}
