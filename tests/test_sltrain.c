/* SLTrain (wmat train --method sltrain): every targeted linear is
 * W = (alpha/r) B A + S with S on a fixed random support, trained from
 * scratch, the rest of the model dense and trained.
 *
 * - the support: nnz = floor(density m n), positions sorted and distinct,
 *   each position equally likely (frequencies over many draws);
 * - the sparse kernels against dense double references, and bit-equal at
 *   1 and 3 threads;
 * - gradients of A, B, S's values and the input against central finite
 *   differences of a double-precision reference of the layer, and of the
 *   whole trainer's loss for a sample of every kind of parameter;
 * - the trained model exported in its small form (sum of lowrank +
 *   sparse): the runtime on it gives the trainer's logits, a save + load
 *   gives the same logits within 1e-5, the dense merge too;
 * - trainable parameters, gradient and optimizer bytes, measured from the
 *   trainer, equal the formula; the support is restored by a checkpoint;
 * - bad rank and density are refused with messages that say so, in the
 *   library and in the CLI. */
#include "test_util.h"
#include "train/adapter.h"
#include "train/train.h"
#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static wmat_model *tiny_model(uint64_t seed, int tied)
{
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = tied;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

static int32_t *synthetic_tokens(size_t n, int V)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % V;
    return d;
}

static wmat_train_params sl_params(wmat_context *oc, int rank, float density)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.adapter = "sltrain";
    p.lora_rank = rank;
    p.lora_alpha = 6.0f;
    p.adapter_density = density;
    p.lora_targets = (1u << WMAT_LIN_COUNT) - 1;
    p.batch = 2;
    p.ctx = 8;
    p.steps = 20;
    p.lr = 2e-2f;
    p.warmup = 2;
    return p;
}

/* ------------------------------------------------------------ support */

static void test_support(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    const int shapes[][2] = {{256, 704}, {704, 256}, {128, 256}, {7, 5}, {1, 1}, {3, 1000}};
    const float dens[] = {0.0f, 0.03f, 0.1f, 0.5f, 0.999f};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (size_t d = 0; d < sizeof dens / sizeof dens[0]; d++) {
            const int rows = shapes[s][0], cols = shapes[s][1];
            const int64_t nnz = wmat__support_nnz(dens[d], rows, cols);
            assert_int_equal(nnz, (int64_t)floor((double)dens[d] * rows * cols));
            int32_t *off = malloc(sizeof(int32_t) * (rows + 1)), *col = malloc(sizeof(int32_t) * (size_t)(nnz + 1));
            wmat__support_sample(&r, rows, cols, nnz, off, col);
            assert_int_equal(off[0], 0);
            assert_int_equal(off[rows], nnz);
            int64_t prev = -1;
            for (int i = 0; i < rows; i++) {
                assert_true(off[i] <= off[i + 1]);
                for (int32_t j = off[i]; j < off[i + 1]; j++) {
                    assert_true(col[j] >= 0 && col[j] < cols);
                    const int64_t pos = (int64_t)i * cols + col[j];
                    if (!(pos > prev)) fail_msg("%dx%d density %g: position %lld after %lld (not sorted / distinct)", rows,
                                                cols, (double)dens[d], (long long)pos, (long long)prev);
                    prev = pos;
                }
            }
            free(off), free(col);
        }
    /* uniform without replacement: over N draws of 6 positions of a 4 x 5
     * matrix each position is taken with probability 0.3; binomial sd
     * sqrt(N 0.3 0.7) = 45.8 at N = 10000: 5 sd bound */
    enum { R = 4, C = 5, K = 6, N = 10000 };
    int count[R * C] = {0};
    int32_t off[R + 1], col[K];
    for (int n = 0; n < N; n++) {
        wmat__support_sample(&r, R, C, K, off, col);
        for (int i = 0; i < R; i++)
            for (int32_t j = off[i]; j < off[i + 1]; j++) count[i * C + col[j]]++;
    }
    for (int i = 0; i < R * C; i++)
        if (!(fabs(count[i] - 0.3 * N) < 5 * 45.8)) fail_msg("position %d drawn %d times of %d (expected %g)", i, count[i], N, 0.3 * N);
}

/* ------------------------------------------------------------ kernels */

static void test_support_kernels(void **state)
{
    (void)state;
    enum { BT = 70, in = 96, out = 40 };
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    const int64_t nnz = wmat__support_nnz(0.6f, out, in); /* BT * nnz >= 65536: the threaded paths run */
    int32_t *off = malloc(sizeof(int32_t) * (out + 1)), *col = malloc(sizeof(int32_t) * (size_t)nnz);
    wmat__support_sample(&r, out, in, nnz, off, col);
    float *val = malloc(sizeof(float) * nnz), *X = malloc(sizeof(float) * BT * in), *dY = malloc(sizeof(float) * BT * out);
    for (int64_t j = 0; j < nnz; j++) val[j] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * in; i++) X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * out; i++) dY[i] = wmat_rng_normal(&r);
    /* dense double references: S scattered */
    double *S = calloc((size_t)out * in, sizeof(double));
    for (int i = 0; i < out; i++)
        for (int32_t j = off[i]; j < off[i + 1]; j++) S[(size_t)i * in + col[j]] = val[j];
    double *Yr = calloc((size_t)BT * out, sizeof(double)), *dXr = calloc((size_t)BT * in, sizeof(double));
    double *dvr = calloc((size_t)nnz, sizeof(double));
    for (int t = 0; t < BT; t++)
        for (int i = 0; i < out; i++) {
            Yr[t * out + i] = 0.5; /* the kernel adds to Y */
            for (int c = 0; c < in; c++) {
                Yr[t * out + i] += S[(size_t)i * in + c] * X[t * in + c];
                dXr[t * in + c] += S[(size_t)i * in + c] * dY[t * out + i];
            }
        }
    for (int i = 0; i < out; i++)
        for (int32_t j = off[i]; j < off[i + 1]; j++)
            for (int t = 0; t < BT; t++) dvr[j] += (double)dY[t * out + i] * X[t * in + col[j]];
    /* the plain C twin and the AVX2+FMA one (where the CPU has it), each at 1 and 3 threads */
    for (int isa = 0; isa <= WMAT_ISA_AVX2; isa += WMAT_ISA_AVX2) {
        float *Y[2], *dX[2], *dv[2];
        for (int k = 0; k < 2; k++) {
            const int nt = k ? 3 : 1;
            Y[k] = malloc(sizeof(float) * BT * out);
            dX[k] = calloc((size_t)BT * in, sizeof(float));
            dv[k] = calloc((size_t)nnz, sizeof(float));
            for (int i = 0; i < BT * out; i++) Y[k][i] = 0.5f;
            float *ws = malloc(sizeof(float) * wmat__support_ws_floats(in, out, nt));
            wmat__support_forward(Y[k], X, off, col, val, BT, in, out, ws, nt, isa);
            wmat__support_backward(dX[k], dv[k], dY, X, off, col, val, BT, in, out, ws, nt, isa);
            free(ws);
            double *y = malloc(sizeof(double) * BT * out), *dx = malloc(sizeof(double) * BT * in),
                   *g = malloc(sizeof(double) * nnz);
            for (int i = 0; i < BT * out; i++) y[i] = Y[k][i];
            for (int i = 0; i < BT * in; i++) dx[i] = dX[k][i];
            for (int64_t i = 0; i < nnz; i++) g[i] = dv[k][i];
            TU_ASSERT_CLOSE_D(y, Yr, (size_t)BT * out, 1e-4, 1e-5);
            TU_ASSERT_CLOSE_D(dx, dXr, (size_t)BT * in, 1e-4, 1e-5);
            TU_ASSERT_CLOSE_D(g, dvr, (size_t)nnz, 1e-4, 1e-5);
            free(y), free(dx), free(g);
        }
        /* the thread count does not change a bit */
        assert_memory_equal(Y[0], Y[1], sizeof(float) * BT * out);
        assert_memory_equal(dX[0], dX[1], sizeof(float) * BT * in);
        assert_memory_equal(dv[0], dv[1], sizeof(float) * nnz);
        for (int k = 0; k < 2; k++) free(Y[k]), free(dX[k]), free(dv[k]);
    }
    free(off), free(col), free(val), free(X), free(dY), free(S), free(Yr), free(dXr), free(dvr);
}

/* ------------------------------------------------------------ layer gradients */

/* f = sum(R * (s B (A x) + S x)) in double, from double copies of every
 * input, over the support (off, col). */
typedef struct {
    int BT, in, out, rank;
    double s;
    const int32_t *off, *col;
    const double *R;
} layer_ref;

static double f_layer(const layer_ref *c, const double *X, const double *A, const double *B, const double *v)
{
    double f = 0;
    for (int t = 0; t < c->BT; t++) {
        double xa[16];
        for (int q = 0; q < c->rank; q++) {
            xa[q] = 0;
            for (int i = 0; i < c->in; i++) xa[q] += A[q * c->in + i] * X[t * c->in + i];
        }
        for (int o = 0; o < c->out; o++) {
            double y = 0;
            for (int q = 0; q < c->rank; q++) y += c->s * B[o * c->rank + q] * xa[q];
            for (int32_t j = c->off[o]; j < c->off[o + 1]; j++) y += v[j] * X[t * c->in + c->col[j]];
            f += c->R[t * c->out + o] * y;
        }
    }
    return f;
}

static void fd_compare(const char *what, const layer_ref *c, double *arg, size_t n, const float *an, double *X, double *A,
                       double *B, double *v)
{
    const double h = 1e-5;
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) {
        const double s = arg[i];
        arg[i] = s + h;
        const double fp = f_layer(c, X, A, B, v);
        arg[i] = s - h;
        const double fm = f_layer(c, X, A, B, v);
        arg[i] = s;
        const double fd = (fp - fm) / (2 * h);
        mx = fmax(mx, fabs(fd));
        const double e = fabs(an[i] - fd);
        if (!(e <= err)) err = isnan(e) ? INFINITY : e;
    }
    /* the analytic gradients are float sums of ~20 terms: 1e-5 relative */
    if (!(mx > 0) || !(err <= 1e-5 * mx + 1e-6)) fail_msg("%s: max |analytic - fd| %.3g, max |fd| %.3g", what, err, mx);
}

static void test_layer_gradients(void **state)
{
    (void)state;
    enum { BT = 6, in = 11, out = 9, rk = 3 };
    const wmat__adapter *a = wmat__adapter_find("sltrain");
    assert_non_null(a);
    assert_true(a->replaces_base);
    const wmat__adapter_cfg cfg = {.rank = rk, .alpha = 5.0f, .density = 0.3f, .nt = 1, .isa = WMAT_ISA_AVX2};
    int rows[4], cols[4];
    a->shapes(&cfg, in, out, rows, cols);
    assert_int_equal(rows[2], (int)floor(0.3 * in * out));
    wmat_rng r;
    wmat_rng_seed(&r, 9);
    float *w[3], *dw[3];
    for (int k = 0; k < 3; k++) {
        w[k] = calloc((size_t)rows[k] * cols[k], sizeof(float));
        dw[k] = calloc((size_t)rows[k] * cols[k], sizeof(float));
    }
    void *fixed = calloc(a->fixed_bytes(&cfg, in, out), 1);
    TU_OK(a->init(&cfg, w, fixed, NULL, NULL, in, out, &r));
    /* the init: B = 0, A and the values within 1/sqrt(in) */
    const float bound = 1.0f / sqrtf((float)in);
    for (int i = 0; i < out * rk; i++) assert_true(w[1][i] == 0.0f);
    for (int i = 0; i < rk * in; i++) assert_true(fabsf(w[0][i]) <= bound);
    for (int i = 0; i < rows[2]; i++) assert_true(fabsf(w[2][i]) <= bound && w[2][i] != 0.0f);
    for (int i = 0; i < out * rk; i++) w[1][i] = wmat_rng_normal(&r); /* B = 0 would hide dA */
    float X[BT * in], R[BT * out], Y[BT * out], act[BT * rk], dX[BT * in];
    float *scratch = malloc(sizeof(float) * a->scratch_floats(&cfg, BT, in, out));
    for (int i = 0; i < BT * in; i++) X[i] = wmat_rng_normal(&r);
    for (int i = 0; i < BT * out; i++) R[i] = wmat_rng_normal(&r);
    memset(Y, 0, sizeof Y);
    memset(dX, 0, sizeof dX);
    a->forward(&cfg, Y, act, scratch, X, (const float *const *)w, fixed, NULL, BT, in, out);
    a->backward(&cfg, dX, dw, scratch, R, X, (const float *const *)w, fixed, NULL, act, BT, in, out);
    const int32_t *off = fixed, *col = off + out + 1;
    layer_ref c = {BT, in, out, rk, 5.0 / rk, off, col, NULL};
    double Xd[BT * in], Rd[BT * out], Ad[rk * in], Bd[out * rk], *vd = malloc(sizeof(double) * rows[2]);
    for (int i = 0; i < BT * in; i++) Xd[i] = X[i];
    for (int i = 0; i < BT * out; i++) Rd[i] = R[i];
    for (int i = 0; i < rk * in; i++) Ad[i] = w[0][i];
    for (int i = 0; i < out * rk; i++) Bd[i] = w[1][i];
    for (int i = 0; i < rows[2]; i++) vd[i] = w[2][i];
    c.R = Rd;
    /* the forward itself against the reference: f = sum(R * Y) */
    double fy = 0;
    for (int i = 0; i < BT * out; i++) fy += (double)R[i] * Y[i];
    TU_ASSERT_NEAR(fy, f_layer(&c, Xd, Ad, Bd, vd), 1e-5 * (1 + fabs(fy)));
    fd_compare("dX", &c, Xd, BT * in, dX, Xd, Ad, Bd, vd);
    fd_compare("dA", &c, Ad, rk * in, dw[0], Xd, Ad, Bd, vd);
    fd_compare("dB", &c, Bd, out * rk, dw[1], Xd, Ad, Bd, vd);
    fd_compare("dS values", &c, vd, (size_t)rows[2], dw[2], Xd, Ad, Bd, vd);
    /* no tensor gradients wanted (dw NULL): the same input gradient */
    {
        float dX2[BT * in];
        float *none[3] = {NULL, NULL, NULL};
        memset(dX2, 0, sizeof dX2);
        a->backward(&cfg, dX2, none, scratch, R, X, (const float *const *)w, fixed, NULL, act, BT, in, out);
        TU_ASSERT_CLOSE(dX2, dX, BT * in, 1e-6, 1e-5);
    }
    /* merge: X (sBA + S)^T equals the forward */
    float *W = calloc((size_t)out * in, sizeof(float)), Ym[BT * out];
    TU_OK(a->merge(&cfg, W, (const float *const *)w, fixed, in, out));
    wmat__linear_forward(Ym, X, W, BT, in, out);
    TU_ASSERT_CLOSE(Ym, Y, BT * out, 1e-5, 1e-5);
    for (int k = 0; k < 3; k++) free(w[k]), free(dw[k]);
    free(fixed), free(vd), free(W), free(scratch);
}

/* ------------------------------------------------------------ trainer */

/* Central differences of the trainer's float loss for a sample of each
 * parameter tensor (every one perturbed away from its init first, so B = 0
 * hides nothing). h = 1e-2 on float parameters; tolerance per sample
 * 2e-3 max|fd| + 5e-4 over the sample. */
static void test_trainer_gradients(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = sl_params(&oc, 3, 0.25f);
    p.batch = 1;
    wmat_model *m = tiny_model(3, 0);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    size_t n;
    float *par = wmat__trainer_params(t, &n), *g = wmat__trainer_grads(t, &n);
    wmat_rng r;
    wmat_rng_seed(&r, 4);
    for (size_t i = 0; i < n; i++) par[i] += 0.2f * wmat_rng_normal(&r);
    int32_t *d = synthetic_tokens(9, 13), inp[8], tgt[8];
    for (int i = 0; i < 8; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1.0f / 8, 1, 0, &loss));
    float *an = malloc(n * sizeof(float));
    memcpy(an, g, n * sizeof(float));
    /* every 7th parameter: all tensors (embedding, norms, A, B, values, classifier) get samples */
    double mx = 0, err = 0;
    size_t worst = 0, k = 0;
    for (size_t i = 0; i < n; i += 7, k++) {
        const float s = par[i], h = 1e-2f;
        double lp, lm;
        par[i] = s + h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1.0f / 8, 1, 1, &lp));
        par[i] = s - h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1.0f / 8, 1, 1, &lm));
        par[i] = s;
        const double fd = (lp - lm) / (2.0 * h);
        mx = fmax(mx, fabs(fd));
        const double e = fabs(fd - an[i]);
        if (!(e <= err)) err = isnan(e) ? INFINITY : e, worst = i;
    }
    print_message("trainer gradients: %zu samples of %zu parameters, max |analytic - fd| %.3g at %zu, max |fd| %.3g\n", k, n,
                  err, worst, mx);
    if (!(mx > 1e-3) || !(err <= 2e-3 * mx + 5e-4)) fail_msg("trainer gradient at %zu: error %.3g (max |fd| %.3g)", worst, err, mx);
    free(an), free(d);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

static double run(wmat_trainer *t, int n, double *first)
{
    double last = NAN;
    for (int i = 0; i < n; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
        if (i == 0 && first) *first = si.loss;
        last = si.loss;
    }
    return last;
}

static void forward_logits(wmat_model *m, const int32_t *inp, int T, float *lg)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    TU_OK(wmat_forward(rt, inp, T, lg));
    wmat_runtime_free(rt);
}

static void saved_model_check(int tied, float density)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = sl_params(&oc, 4, density);
    p.batch = 2;
    wmat_model *m = tiny_model(21, tied);
    int32_t *d = synthetic_tokens(400, 13);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 400));
    double first, last = run(t, 15, &first);
    if (!(last < first - 0.2)) fail_msg("sltrain (density %g): the loss did not fall (%.4f -> %.4f)", (double)density, first, last);
    enum { T = 12, V = 13 };
    int32_t inp[T], tgt[T];
    for (int i = 0; i < T; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    float ltr[T * V], lmem[T * V], lsaved[T * V], ldense[T * V];
    /* the trainer's own forward (run on a batch of one window of ctx 8 is
     * its shape; use the runtime's window of T for the comparisons) */
    wmat_model *mem;
    TU_OK(wmat_trainer_model(t, &mem));
    /* every replaced linear is in its small form */
    const wmat_config *c = wmat_model_config(mem);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const wmat_tensor *W = wmat_model_linear(mem, l, (wmat_linear_kind)k);
            const wmat_wkind *kind = wmat__wkind_of(W);
            assert_string_equal(kind->name, density > 0 ? "sum" : "lowrank");
            if (density > 0) {
                assert_string_equal(wmat__wkind_of(wmat__sum_part(W, 0))->name, "lowrank");
                assert_string_equal(wmat__wkind_of(wmat__sum_part(W, 1))->name, "sparse");
            }
        }
    forward_logits(mem, inp, T, lmem);
    /* the trainer's forward on the first 8 positions (its context) */
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 8, 1, 1, 1, &loss));
    memcpy(ltr, wmat__trainer_logits(t), sizeof(float) * 8 * V);
    TU_ASSERT_CLOSE(lmem, ltr, 8 * V, 1e-5, 1e-5);
    /* saved (native directory) and loaded as stored: the same logits */
    char name[64];
    snprintf(name, sizeof name, "sl_saved_%d_%g", tied, (double)density);
    const char *dir = tu_tmp(name);
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    TU_OK(wmat_model_save(mem, dir, &sp));
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    lp.keep_stored = 1;
    wmat_model *back;
    TU_OK(wmat_model_load(&back, dir, &lp));
    const wmat_tensor *W0 = wmat_model_linear(back, 0, WMAT_LIN_GATE);
    assert_string_equal(wmat__wkind_of(W0)->name, density > 0 ? "sum" : "lowrank");
    forward_logits(back, inp, T, lsaved);
    TU_ASSERT_CLOSE(lsaved, lmem, T * V, 1e-5, 1e-5);
    /* and merged into dense f32 (wmat train --merge-dense) */
    TU_OK(wmat_model_dequantize(back));
    assert_int_equal(wmat_model_linear(back, 0, WMAT_LIN_GATE)->dtype, WMAT_F32);
    forward_logits(back, inp, T, ldense);
    TU_ASSERT_CLOSE(ldense, lmem, T * V, 1e-5, 1e-5);
    wmat_model_free(back);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_saved_model(void **state)
{
    (void)state;
    saved_model_check(0, 0.25f);
    saved_model_check(1, 0.1f);
    saved_model_check(0, 0.0f); /* low-rank only */
}

static void test_memory_counts(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    for (int tied = 0; tied < 2; tied++)
        for (int ri = 0; ri < 2; ri++) {
            const int rank = ri ? 8 : 3; /* 8: the k/v matrices' full rank (8 x 16) */
            const float density = ri ? 0.5f : 0.03f;
            wmat_train_params p = sl_params(&oc, rank, density);
            p.lora_targets = ri ? (1u << WMAT_LIN_COUNT) - 1 : (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_DOWN);
            wmat_model *m = tiny_model(1, tied);
            const wmat_config *c = wmat_model_config(m);
            wmat_trainer *t;
            TU_OK(wmat_trainer_create(&t, m, &p));
            int64_t expect = (int64_t)c->vocab_size * c->dim * (tied ? 1 : 2) + c->dim + 2LL * c->n_layers * c->dim;
            size_t fixed = 0;
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                int64_t o, i;
                wmat_tensor *W = wmat_model_linear(m, 0, (wmat_linear_kind)k);
                o = W->shape[0];
                i = W->shape[1];
                if (p.lora_targets & (1u << k)) {
                    const int64_t nnz = (int64_t)floor((double)density * (double)o * (double)i);
                    expect += c->n_layers * (rank * (o + i) + nnz);
                    fixed += (size_t)c->n_layers * ((((size_t)o + 1 + (size_t)nnz) * 4 + 15) & ~(size_t)15);
                } else {
                    expect += c->n_layers * o * i; /* not targeted: dense and trained */
                }
            }
            wmat_train_memory mem;
            wmat_trainer_memory(t, &mem);
            assert_int_equal(mem.trainable, expect);
            assert_int_equal(mem.grads, (size_t)expect * 4);
            assert_int_equal(mem.optim, (size_t)expect * 8); /* AdamW: m and v */
            assert_int_equal(mem.weights, (size_t)expect * 4 + fixed);
            wmat_trainer_free(t);
            wmat_model_free(m);
        }
}

/* The support is data of the run: a resumed trainer takes it (and the
 * rest) from the checkpoint, even when created with another seed. */
static void test_checkpoint_keeps_support(void **state)
{
    (void)state;
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = sl_params(&oc, 3, 0.3f);
    p.shuffle = 0;
    wmat_model *m = tiny_model(8, 0);
    int32_t *d = synthetic_tokens(300, 13);
    wmat_trainer *a, *b;
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 300));
    run(a, 4, NULL);
    const char *ck = tu_tmp("sl.ckpt");
    TU_OK(wmat_trainer_save_checkpoint(a, ck));
    run(a, 4, NULL);
    p.seed = 99; /* another support at create */
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 300));
    TU_OK(wmat_trainer_load_checkpoint(b, ck));
    run(b, 4, NULL);
    size_t na, nb;
    float *pa = wmat__trainer_params(a, &na), *pb = wmat__trainer_params(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, na * sizeof(float));
    /* a corrupt support is refused before anything is copied: the first
     * offset of the first layer's support set to -1 in the file */
    {
        FILE *f = fopen(ck, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        const long len = ftell(f);
        fseek(f, 0, SEEK_SET);
        unsigned char *b = malloc((size_t)len);
        assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        uint64_t hl = 0;
        memcpy(&hl, b, 8);
        char *hdr = malloc(hl + 1);
        memcpy(hdr, b + 8, hl);
        hdr[hl] = 0;
        const char *e = strstr(hdr, "\"adapter.fixed\"");
        assert_non_null(e);
        const char *o = strstr(e, "data_offsets");
        assert_non_null(o);
        const long start = strtol(strchr(o, '[') + 1, NULL, 10);
        memset(b + 8 + hl + start, 0xFF, 4);
        const char *bad = tu_tmp("sl_bad.ckpt");
        assert_int_equal(tu_write_file(bad, b, (size_t)len), 0);
        wmat_trainer *c3;
        TU_OK(wmat_trainer_create(&c3, m, &p));
        assert_int_equal(wmat_trainer_load_checkpoint(c3, bad), WMAT_ERR_FORMAT);
        if (!strstr(wmat_last_error(), "corrupt")) fail_msg("message: %s", wmat_last_error());
        wmat_trainer_free(c3);
        free(hdr), free(b);
    }
    /* a checkpoint of another density is refused */
    wmat_trainer *c2;
    p.adapter_density = 0.2f;
    TU_OK(wmat_trainer_create(&c2, m, &p));
    assert_int_not_equal(wmat_trainer_load_checkpoint(c2, ck), WMAT_OK);
    wmat_trainer_free(c2);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void refused(wmat_model *m, int rank, float density, const char *needle)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = sl_params(&oc, rank, density);
    wmat_trainer *t = (wmat_trainer *)&p;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_null(t);
    if (!strstr(wmat_last_error(), needle)) fail_msg("rank %d density %g: message '%s' lacks '%s'", rank, (double)density, wmat_last_error(), needle);
}

static void test_bad_settings(void **state)
{
    (void)state;
    wmat_model *m = tiny_model(2, 0);
    refused(m, 0, 0.03f, "rank");
    refused(m, -2, 0.03f, "rank");
    refused(m, 9, 0.03f, "rank 9 does not fit k (8 x 16)"); /* k and v are 8 x 16 */
    refused(m, 4, -0.1f, "density");
    refused(m, 4, 1.0f, "density");
    refused(m, 4, NAN, "density");
    /* the largest rank that fits every matrix, and density 0, are fine */
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    wmat_train_params p = sl_params(&oc, 8, 0.0f);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_trainer_free(t);
    wmat_model_free(m);
    /* the CLI: the message reaches the user; its output is a native directory */
    char cmd[2048], txt[64];
    snprintf(txt, sizeof txt, "%s", tu_tmp("sl.txt"));
    const char *text = "the cat sat on the mat. the dog sat on the log. a cat and a dog sat on a mat and a log.\n";
    char big[4096] = "";
    for (int i = 0; i < 30; i++) strcat(big, text);
    assert_int_equal(tu_write_file(txt, big, strlen(big)), 0);
    int rc;
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --method sltrain --rank 0 --steps 2 2>&1",
             tu_cli(), tu_tmp("sl_bad"), txt);
    char *o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    if (!strstr(o, "rank must be positive")) fail_msg("CLI output lacks the rank message: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --method sltrain --density 1.5 --steps 2 2>&1",
             tu_cli(), tu_tmp("sl_bad"), txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    if (!strstr(o, "density 1.5")) fail_msg("CLI output lacks the density message: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "%s train --init tiny %s --byte-tokenizer --data %s --method sltrain --steps 2 2>&1",
             tu_cli(), tu_tmp("sl_bad.bin"), txt);
    o = tu_run(cmd, &rc);
    assert_int_not_equal(rc, 0);
    if (!strstr(o, "--merge-dense")) fail_msg("CLI output does not point at --merge-dense: %s", o);
    free(o);
    /* a good run: native directory, evaluated by wmat eval */
    const char *out = tu_tmp("sl_ok");
    snprintf(cmd, sizeof cmd,
             "%s train --init tiny %s --byte-tokenizer --data %s --eval %s --method sltrain --rank 8 --density 0.05 "
             "--steps 6 --batch 2 --ctx 32 --json 2>/dev/null",
             tu_cli(), out, txt, txt);
    o = tu_run(cmd, &rc);
    assert_int_equal(rc, 0);
    const char *v = strstr(o, "\"val_loss_end\": ");
    assert_non_null(v);
    const double vend = atof(v + 16);
    free(o);
    snprintf(cmd, sizeof cmd, "%s eval %s --text %s --ctx 32 --json 2>/dev/null", tu_cli(), out, txt);
    o = tu_run(cmd, &rc);
    assert_int_equal(rc, 0);
    const char *nll = strstr(o, "\"mean_nll\": ");
    assert_non_null(nll);
    TU_ASSERT_NEAR(atof(nll + 12), vend, 1e-5);
    free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_support),
        cmocka_unit_test(test_support_kernels),
        cmocka_unit_test(test_layer_gradients),
        cmocka_unit_test(test_trainer_gradients),
        cmocka_unit_test(test_saved_model),
        cmocka_unit_test(test_memory_counts),
        cmocka_unit_test(test_checkpoint_keeps_support),
        cmocka_unit_test(test_bad_settings),
    };
    return tu_run_tests("sltrain", tests, NULL, NULL);
}
