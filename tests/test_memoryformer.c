/* MemoryFormer's Memory Layer (src/train/adapter_memoryformer.c) and the
 * `memoryformer` experiment:
 * - the forward against a double-precision reference that takes the
 *   bucket's score as the paper writes it (a softmax over all 2^tau sign
 *   vectors of <z_k, s>, at s = sign(z_k)), not as the product it reduces to;
 * - the hash picks the row of the input's sign pattern;
 * - the backward (tables, bias, input through the score and the norm)
 *   against central differences, inputs kept away from the hash's
 *   boundaries (it jumps where an entry changes sign);
 * - the trainer: a tiny model whose FFN is Memory Layers trains (loss
 *   falls), has exactly the tables' parameters besides the rest of the
 *   model, is refused as a weight (not a weight delta) and evaluates
 *   through its own forward; tau that does not divide a layer is refused;
 * - the CLI: `wmat train --init tiny OUT --method memoryformer` starts a new
 *   model whose every linear is a Memory Layer, trains it (held-out loss
 *   falls), keeps it in OUT.ckpt (no merged model), and the checkpoint
 *   resumed with nothing left to train evaluates to the same loss;
 * - the experiment's rows: equal FFN parameters within 2%, fewer FFN
 *   FLOPs than either dense model, and, on real text, a held-out loss well
 *   below uniform. */
#include "test_util.h"

#include "train/adapter.h"
#include "train/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const wmat__adapter *mf(void)
{
    const wmat__adapter *a = wmat__adapter_find("memoryformer");
    assert_non_null(a);
    return a;
}

/* y = b + sum_k p_k T_k[h_k] in double, p_k from the 2^tau-term softmax */
static void reference(const float *x, const float *T, const float *b, int tau, int in, int out, double *y)
{
    double s2 = 0;
    for (int i = 0; i < in; i++) s2 += (double)x[i] * x[i];
    const double r = 1.0 / sqrt(s2 / in + 1e-6);
    for (int o = 0; o < out; o++) y[o] = b[o];
    for (int k = 0; k < in / tau; k++) {
        double z[16], den = 0;
        int h = 0;
        for (int i = 0; i < tau; i++) {
            z[i] = x[k * tau + i] * r;
            if (z[i] >= 0) h |= 1 << i;
        }
        for (int sgn = 0; sgn < (1 << tau); sgn++) {
            double dot = 0;
            for (int i = 0; i < tau; i++) dot += (sgn >> i & 1) ? z[i] : -z[i];
            den += exp(dot);
        }
        double num = 0;
        for (int i = 0; i < tau; i++) num += fabs(z[i]);
        const double p = exp(num) / den;
        for (int o = 0; o < out; o++) y[o] += p * T[((size_t)k * (1 << tau) + h) * out + o];
    }
}

/* inputs N(0, 1) pushed at least 0.2 away from 0 */
static void inputs(float *X, int n, wmat_rng *r)
{
    for (int i = 0; i < n; i++) {
        float v = wmat_rng_normal(r);
        X[i] = v >= 0 ? v + 0.2f : v - 0.2f;
    }
}

static void test_forward_matches_paper_score(void **state)
{
    (void)state;
    const wmat__adapter *a = mf();
    enum { BT = 6, in = 12, out = 5 };
    for (int tau = 1; tau <= 6; tau++) {
        if (in % tau) continue;
        wmat__adapter_cfg c = {.rank = tau, .nt = 1};
        TU_OK(a->check(&c, NULL, in, out, "test"));
        int rows[2], cols[2];
        a->shapes(&c, in, out, rows, cols);
        assert_int_equal(rows[0], (in / tau) << tau);
        assert_int_equal(cols[0], out);
        assert_int_equal(rows[1], out);
        assert_int_equal(cols[1], 0);
        float *T = calloc((size_t)rows[0] * out, sizeof(float)), b[out], X[BT * in], Y[BT * out];
        float *w[2] = {T, b};
        float *scratch = calloc(a->scratch_floats(&c, BT, in, out) + 1, sizeof(float));
        wmat_rng r;
        wmat_rng_seed(&r, 11 + (uint64_t)tau);
        TU_OK(a->init(&c, w, NULL, NULL, NULL, in, out, &r));
        double sd = 0;
        for (int i = 0; i < rows[0] * out; i++) sd += (double)T[i] * T[i];
        TU_ASSERT_NEAR(sqrt(sd / (rows[0] * out)), 0.02, 0.006); /* the reference's N(0, 0.02^2) */
        for (int i = 0; i < rows[0] * out; i++) T[i] = wmat_rng_normal(&r);
        for (int o = 0; o < out; o++) b[o] = wmat_rng_normal(&r);
        for (int i = 0; i < BT * in; i++) X[i] = 2.0f * wmat_rng_normal(&r);
        memset(Y, 0, sizeof Y);
        a->forward(&c, Y, NULL, scratch, X, (const float *const *)w, NULL, NULL, BT, in, out);
        for (int t = 0; t < BT; t++) {
            double y[out];
            reference(X + t * in, T, b, tau, in, out, y);
            for (int o = 0; o < out; o++) TU_ASSERT_NEAR(Y[t * out + o], y[o], 1e-5 * (1 + fabs(y[o])));
        }
        free(T), free(scratch);
    }
}

/* one chunk, tau 3: each sign pattern of x reads its own row */
static void test_hash_picks_sign_row(void **state)
{
    (void)state;
    const wmat__adapter *a = mf();
    wmat__adapter_cfg c = {.rank = 3, .nt = 1};
    float T[8], b[1] = {0}, scratch[8];
    for (int h = 0; h < 8; h++) T[h] = (float)(h + 1);
    float *w[2] = {T, b};
    for (int h = 0; h < 8; h++) {
        float x[3], y = 0;
        for (int i = 0; i < 3; i++) x[i] = (h >> i & 1) ? 3.0f : -3.0f;
        a->forward(&c, &y, NULL, scratch, x, (const float *const *)w, NULL, NULL, 1, 3, 1);
        /* |z| = 1 after the norm: p = sigmoid(2)^3 */
        const double p = pow(1.0 / (1.0 + exp(-2.0)), 3);
        TU_ASSERT_NEAR(y, p * (h + 1), 1e-5);
    }
}

static double f_of(const wmat__adapter *a, const wmat__adapter_cfg *c, float *const *w, const float *X, const float *R,
                   float *scratch, int BT, int in, int out)
{
    float *Y = calloc((size_t)BT * out, sizeof(float));
    a->forward(c, Y, NULL, scratch, X, (const float *const *)w, NULL, NULL, BT, in, out);
    double s = 0;
    for (int i = 0; i < BT * out; i++) s += (double)R[i] * Y[i];
    free(Y);
    return s;
}

static void fd(const char *what, const wmat__adapter *a, const wmat__adapter_cfg *c, float *const *w, float *X,
               const float *R, float *scratch, int BT, int in, int out, float *v, const float *an, size_t n)
{
    const float h = 1e-3f;
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) {
        const float s = v[i];
        v[i] = s + h;
        const double fp = f_of(a, c, w, X, R, scratch, BT, in, out);
        v[i] = s - h;
        const double fm = f_of(a, c, w, X, R, scratch, BT, in, out);
        v[i] = s;
        const double g = (fp - fm) / (2.0 * h);
        mx = fmax(mx, fabs(g));
        err = fmax(err, fabs(g - an[i]));
    }
    if (!(err <= 2e-3 * mx + 1e-4)) fail_msg("%s: max |analytic - fd| %.3g, max |fd| %.3g", what, err, mx);
}

static void test_backward_finite_differences(void **state)
{
    (void)state;
    const wmat__adapter *a = mf();
    enum { BT = 4, in = 8, out = 6 };
    for (int tau = 2; tau <= 4; tau += 2) {
        wmat__adapter_cfg c = {.rank = tau, .nt = 1};
        int rows[2], cols[2];
        a->shapes(&c, in, out, rows, cols);
        const size_t nt = (size_t)rows[0] * out;
        float *T = malloc(nt * sizeof(float)), *dT = calloc(nt, sizeof(float)), b[out], db[out] = {0};
        float X[BT * in], R[BT * out], dX[BT * in] = {0};
        float *scratch = calloc(a->scratch_floats(&c, BT, in, out) + 1, sizeof(float));
        wmat_rng r;
        wmat_rng_seed(&r, 5 + (uint64_t)tau);
        for (size_t i = 0; i < nt; i++) T[i] = wmat_rng_normal(&r);
        for (int o = 0; o < out; o++) b[o] = wmat_rng_normal(&r);
        inputs(X, BT * in, &r);
        for (int i = 0; i < BT * out; i++) R[i] = wmat_rng_normal(&r);
        float *w[2] = {T, b}, *dw[2] = {dT, db};
        a->backward(&c, dX, dw, scratch, R, X, (const float *const *)w, NULL, NULL, NULL, BT, in, out);
        fd("dX", a, &c, w, X, R, scratch, BT, in, out, X, dX, BT * in);
        fd("dT", a, &c, w, X, R, scratch, BT, in, out, T, dT, nt);
        fd("db", a, &c, w, X, R, scratch, BT, in, out, b, db, out);
        /* the input gradient alone (no tensor gradients wanted) is the same */
        float dX2[BT * in] = {0};
        float *none[2] = {NULL, NULL};
        a->backward(&c, dX2, none, scratch, R, X, (const float *const *)w, NULL, NULL, NULL, BT, in, out);
        assert_memory_equal(dX, dX2, sizeof dX);
        free(T), free(dT), free(scratch);
    }
}

static int32_t *pattern_tokens(size_t n, int V)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)(((i * i + 3 * i) % 7 + (i % 3)) % (size_t)V);
    return d;
}

static void test_trainer_ffn_memory_layers(void **state)
{
    (void)state;
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 3, 0.02f));
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.batch = 4;
    p.ctx = 8;
    p.steps = 30;
    p.warmup = 2;
    p.lr = 1e-2f;
    p.adapter = "memoryformer";
    p.lora_rank = 4;
    p.lora_targets = (1u << WMAT_LIN_GATE) | (1u << WMAT_LIN_UP) | (1u << WMAT_LIN_DOWN);
    assert_int_equal(wmat_train_adapter_replaces_base("memoryformer"), 4); /* not a delta, replaces: fits --init */
    int32_t *d = pattern_tokens(600, 13);
    wmat_trainer *t;
    /* tau 5 divides neither 16 nor 24: refused naming the layer */
    p.lora_rank = 5;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "does not divide"));
    p.lora_rank = 4;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 600));
    /* trainable: embeddings (tied), norms, attention dense, FFN tables + biases */
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    const int64_t D = 16, H = 24, L = 2, kv = 2 * 4;
    const int64_t attn = D * D + 2 * kv * D + D * D, norms = 2 * D;
    const int64_t ffn = 2 * ((D / 4) * 16 * H + H) + (H / 4) * 16 * D + D;
    assert_int_equal(mem.trainable, 13 * D + D + L * (attn + norms + ffn));
    double first = 0, last = 0;
    for (int s = 0; s < 30; s++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
        if (s == 0) first = si.loss;
        last = si.loss;
    }
    if (!(last < first - 0.3)) fail_msg("loss %.4f -> %.4f did not fall by 0.3", first, last);
    wmat_model *mm = NULL;
    assert_int_equal(wmat_trainer_model(t, &mm), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "not a weight delta"));
    int32_t inp[8], tgt[8];
    for (int i = 0; i < 8; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1, 1, 1, &loss));
    wmat_eval_result er;
    TU_OK(wmat_trainer_eval(t, d, 9, 8, 1, &er));
    TU_ASSERT_NEAR(er.mean_nll, loss, 1e-9 * (1 + loss));
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static double json_num(const char *o, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = o ? strstr(o, k) : NULL;
    return p ? atof(p + strlen(k)) : NAN;
}

static void test_cli_init(void **state)
{
    (void)state;
    char txt[4096], out[4096], ck[4200], cmd[32768];
    snprintf(txt, sizeof txt, "%s", tu_tmp("mf_text.txt"));
    snprintf(out, sizeof out, "%s", tu_tmp("mf_cli"));
    snprintf(ck, sizeof ck, "%s.ckpt", out);
    {
        const char *lines[] = {"the cat sat on the mat. ", "the dog sat on the log. ", "a cat and a dog ran. "};
        char buf[24000];
        size_t n = 0;
        for (int i = 0; n + 32 < sizeof buf; i++) {
            const size_t k = strlen(lines[(i * 7 / 3) % 3]);
            memcpy(buf + n, lines[(i * 7 / 3) % 3], k);
            n += k;
        }
        assert_int_equal(tu_write_file(txt, buf, n), 0);
    }
    char base[16384];
    snprintf(base, sizeof base,
             "%s train --init tiny %s --byte-tokenizer --method memoryformer --rank 4 --data %s --eval %s --steps 8 "
             "--batch 2 --ctx 32 --max-windows 4 --threads 1 --json",
             tu_cli(), out, txt, txt);
    int rc;
    snprintf(cmd, sizeof cmd, "%s 2>/dev/null", base);
    char *o = tu_run(cmd, &rc);
    if (rc) fail_msg("wmat train --init --method memoryformer failed (%d): %s", rc, o);
    const double v0 = json_num(o, "val_loss_start"), v1 = json_num(o, "val_loss_end");
    const double tr = json_num(o, "trainable_params");
    free(o);
    print_message("memoryformer from the CLI: held-out %.4f -> %.4f, %.0f trainable\n", v0, v1, tr);
    assert_true(v1 < v0);
    /* every linear is a Memory Layer: (in / 4) 2^4 out + out each, more
     * than the dense linears' in out (tiny: dim 64, hidden 172, 5 layers) */
    const double D = 64, H = 172, L = 5;
    const double tables = L * ((D / 4) * 16 * D * 2 + (D / 4) * 16 * 32 * 2 + 2 * ((D / 4) * 16 * H) + (H / 4) * 16 * D);
    assert_true(tr > tables);
    FILE *f = fopen(ck, "rb");
    assert_non_null(f); /* the trained form: the checkpoint */
    fclose(f);
    f = fopen(out, "rb");
    assert_null(f); /* no merged model */
    /* the checkpoint resumed with nothing left to train: its held-out loss */
    snprintf(cmd, sizeof cmd, "%s --resume %s 2>/dev/null", base, ck);
    o = tu_run(cmd, &rc);
    if (rc) fail_msg("resuming the finished run failed (%d): %s", rc, o);
    const double r0 = json_num(o, "val_loss_start"), r1 = json_num(o, "val_loss_end");
    assert_int_equal((int)json_num(o, "steps"), 8);
    free(o);
    print_message("resumed checkpoint: held-out %.6f (at the end of training %.6f)\n", r0, v1);
    TU_ASSERT_NEAR(r0, v1, 2e-6);
    TU_ASSERT_NEAR(r1, v1, 2e-6);
}

static void test_flops(void **state)
{
    (void)state;
    TU_ASSERT_NEAR(wmat__memoryformer_flops(4, 64, 32), 2.0 * 16 * 32 + 32 + 8 * 64, 0);
    /* against a dense linear's 2 in out, the gather-sum is 1/tau of it */
    const double dense = 2.0 * 512 * 512, memory = wmat__memoryformer_flops(8, 512, 512);
    assert_true(memory < dense / 8 * 1.1 && memory > dense / 8);
}

static int col(const wmat_table *t, const char *name)
{
    for (int c = 0; c < t->ncols; c++)
        if (!strcmp(t->cols[c], name)) return c;
    fail_msg("no column %s", name);
    return -1;
}

static void check_rows(const wmat_table *t, int tau, int nck)
{
    assert_int_equal(t->nrows, 3 * nck);
    const int cp = col(t, "ffn_params"), cf = col(t, "ffn_flops_per_token"), ch = col(t, "heldout_loss");
    const double *mfr = t->v, *dense = t->v + (size_t)nck * t->ncols, *narrow = t->v + (size_t)2 * nck * t->ncols;
    assert_non_null(strstr(t->series[0], "memoryformer"));
    assert_non_null(strstr(t->series[nck], "dense (equal params)"));
    assert_non_null(strstr(t->series[2 * nck], "dense-narrow"));
    TU_ASSERT_NEAR(dense[cp] / mfr[cp], 1.0, 0.02); /* equal FFN parameters, up to the rounding of the width */
    assert_true(mfr[cp] > narrow[cp] * ((1 << tau) / (double)tau) * 0.99);
    /* fewer FLOPs than either dense FFN (at these tiny widths the hashing's
     * ~8 per input is a large share; test_flops checks the formula) */
    assert_true(mfr[cf] < dense[cf] / tau);
    assert_true(mfr[cf] < narrow[cf]);
    for (int r = 0; r < t->nrows; r++) assert_true(isfinite(t->v[(size_t)r * t->ncols + ch]));
}

static void test_experiment_smoke_rows(void **state)
{
    (void)state;
    const wmat_experiment_params p = {.params = "data=synthetic;max_bytes=4000;dim=16;layers=1;heads=2;hidden=8;"
                                                "tau=4;ctx=16;batch=2;steps=5;eval_every=2;eval_windows=2",
                                      .seed = 2};
    wmat_table t;
    TU_OK(wmat_experiment_run("memoryformer", &p, &t));
    check_rows(&t, 4, 3); /* checkpoints at steps 2, 4, 5 */
    assert_int_equal((int)t.v[(size_t)2 * t.ncols + col(&t, "step")], 5);
    wmat_table_free(&t);
    const wmat_experiment_params bad = {.params = "data=synthetic;dim=16;heads=2;hidden=10;tau=4"};
    assert_int_equal(wmat_experiment_run("memoryformer", &bad, &t), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "tau 4 must divide"));
    wmat_table_free(&t);
}

/* On real text (Tiny Shakespeare, bytes), 60 steps: every model's held-out
 * loss falls far below the uniform log(259) = 5.56 nats per byte. */
static void test_experiment_real_text(void **state)
{
    (void)state;
    char path[512], params[768];
    snprintf(path, sizeof path, "%s/text/tinyshakespeare.txt", WMAT_DATA_DIR);
    FILE *f = fopen(path, "rb");
    if (!f) {
        skip();
        return;
    }
    fclose(f);
    snprintf(params, sizeof params,
             "data=%s;max_bytes=60000;dim=32;layers=1;heads=2;hidden=16;tau=4;ctx=32;batch=4;steps=60;eval_every=60;"
             "eval_windows=8",
             path);
    const wmat_experiment_params p = {.params = params, .seed = 1};
    wmat_table t;
    TU_OK(wmat_experiment_run("memoryformer", &p, &t));
    check_rows(&t, 4, 1);
    const int ch = col(&t, "heldout_loss");
    for (int r = 0; r < t.nrows; r++)
        if (!(t.v[(size_t)r * t.ncols + ch] < 3.5)) fail_msg("%s: held-out %.3f", t.series[r], t.v[(size_t)r * t.ncols + ch]);
    wmat_table_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_matches_paper_score),
        cmocka_unit_test(test_hash_picks_sign_row),
        cmocka_unit_test(test_backward_finite_differences),
        cmocka_unit_test(test_trainer_ffn_memory_layers),
        cmocka_unit_test(test_cli_init),
        cmocka_unit_test(test_flops),
        cmocka_unit_test(test_experiment_smoke_rows),
        cmocka_unit_test(test_experiment_real_text),
    };
    return tu_run_tests("memoryformer", tests, NULL, NULL);
}
