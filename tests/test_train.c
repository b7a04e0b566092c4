/* Training engine: every backward against central finite differences of a
 * double-precision reference (op by op and end to end on a tiny model),
 * the training forward against the runtime, optimizers, checkpoints,
 * LoRA (merge, PEFT files), GaLore memory, bad input.
 *
 * Gradient tolerance: |analytic(float) - fd(double)| <= 2e-3 * max|fd| + 1e-5
 * per tensor, with fd = (f(x+h) - f(x-h)) / 2h, h = 1e-4, on a double
 * reference forward written here independently of src/train. */
#include "test_util.h"
#include "model/kernels.h"
#include "train/adapter.h"
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

static void fill(float *x, size_t n, wmat_rng *r, float s)
{
    for (size_t i = 0; i < n; i++) x[i] = s * wmat_rng_normal(r);
}

static void check_grad(const char *what, const float *an, const double *fd, size_t n)
{
    double mx = 0, err = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(fd[i]));
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double d = tu_abs_diff(an[i], fd[i]); /* a NaN on either side is infinite */
        if (d > err) {
            err = d;
            worst = i;
        }
    }
    if (!(err <= 2e-3 * mx + 1e-5))
        fail_msg("%s: max |analytic - fd| = %.3g at %zu (%.6g vs %.6g), max |fd| %.3g", what, err, worst, an[worst],
                 fd[worst], mx);
}

/* ------------------------------------------------------------ op by op */

/* double references */
static void ref_rmsnorm(double *o, const double *x, const double *w, int BT, int C, double eps)
{
    for (int t = 0; t < BT; t++) {
        double ss = 0;
        for (int j = 0; j < C; j++) ss += x[t * C + j] * x[t * C + j];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int j = 0; j < C; j++) o[t * C + j] = w[j] * x[t * C + j] * r;
    }
}

static void ref_rope(double *x, int BT, int T, int nh, int hd, double theta)
{
    for (int r = 0; r < BT; r++)
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < hd / 2; i++) {
                double f = (r % T) / pow(theta, (double)(2 * i) / hd), c = cos(f), s = sin(f);
                double *v = x + (size_t)r * nh * hd + h * hd;
                double a = v[2 * i], b = v[2 * i + 1];
                v[2 * i] = a * c - b * s;
                v[2 * i + 1] = a * s + b * c;
            }
}

static void ref_attention(double *out, const double *q, const double *k, const double *v, int B, int T, int nh, int nkv,
                          int hd)
{
    const int QD = nh * hd, KV = nkv * hd;
    double *p = malloc(sizeof(double) * T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++)
            for (int t = 0; t < T; t++) {
                const double *qq = q + (size_t)(b * T + t) * QD + h * hd;
                double mx = -1e300, sum = 0;
                for (int s = 0; s <= t; s++) {
                    const double *kk = k + (size_t)(b * T + s) * KV + (h / (nh / nkv)) * hd;
                    double d = 0;
                    for (int i = 0; i < hd; i++) d += qq[i] * kk[i];
                    p[s] = d / sqrt((double)hd);
                    mx = fmax(mx, p[s]);
                }
                for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
                double *o = out + (size_t)(b * T + t) * QD + h * hd;
                for (int i = 0; i < hd; i++) o[i] = 0;
                for (int s = 0; s <= t; s++) {
                    const double *vv = v + (size_t)(b * T + s) * KV + (h / (nh / nkv)) * hd;
                    for (int i = 0; i < hd; i++) o[i] += p[s] / sum * vv[i];
                }
            }
    free(p);
}

/* A generic op check: inputs packed in one double vector; f computes the
 * scalar sum(out * R). */
typedef double (*scalar_fn)(const double *x, void *ctx);

static void fd_grad(scalar_fn f, double *x, size_t n, void *ctx, double *g)
{
    const double h = 1e-4;
    for (size_t i = 0; i < n; i++) {
        double s = x[i];
        x[i] = s + h;
        double a = f(x, ctx);
        x[i] = s - h;
        double b = f(x, ctx);
        x[i] = s;
        g[i] = (a - b) / (2 * h);
    }
}

typedef struct {
    int B, T, C, nh, nkv, hd, in, out, r;
    double s;
    const double *R;
    int which;
} opctx;

static double f_rmsnorm(const double *x, void *vc)
{
    opctx *c = vc;
    int n = c->B * c->T * c->C;
    double *o = malloc(sizeof(double) * n), acc = 0;
    ref_rmsnorm(o, x, x + n, c->B * c->T, c->C, 1e-5);
    for (int i = 0; i < n; i++) acc += o[i] * c->R[i];
    free(o);
    return acc;
}

static void test_op_rmsnorm(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 1);
    const int BT = 6, C = 12, n = BT * C;
    float x[72], w[12], R[72], dx[72] = {0}, dw[12] = {0}, o[72], rs[6];
    fill(x, n, &r, 1.0f);
    fill(w, C, &r, 1.0f);
    fill(R, n, &r, 1.0f);
    wmat__rmsnorm(o, rs, x, w, BT, C, 1e-5f, 0, 1);
    wmat__rmsnorm_backward(dx, dw, R, x, w, rs, BT, C, 1);
    double X[84], Rd[72], g[84];
    for (int i = 0; i < n; i++) X[i] = x[i], Rd[i] = R[i];
    for (int i = 0; i < C; i++) X[n + i] = w[i];
    opctx c = {.B = 1, .T = BT, .C = C, .R = Rd};
    fd_grad(f_rmsnorm, X, n + C, &c, g);
    check_grad("rmsnorm dx", dx, g, n);
    check_grad("rmsnorm dw", dw, g + n, C);
}

static double f_rope(const double *x, void *vc)
{
    opctx *c = vc;
    int n = c->B * c->T * c->nh * c->hd;
    double *o = malloc(sizeof(double) * n), acc = 0;
    memcpy(o, x, sizeof(double) * n);
    ref_rope(o, c->B * c->T, c->T, c->nh, c->hd, 10000.0);
    for (int i = 0; i < n; i++) acc += o[i] * c->R[i];
    free(o);
    return acc;
}

static void test_op_rope(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 2);
    const int B = 2, T = 5, nh = 2, hd = 8, n = B * T * nh * hd;
    float x[160], R[160], cs[40], sn[40];
    for (int p = 0; p < T; p++)
        for (int i = 0; i < hd / 2; i++) {
            float f = 1.0f / powf(10000.0f, (float)(2 * i) / hd), v = p * f;
            cs[p * hd / 2 + i] = cosf(v);
            sn[p * hd / 2 + i] = sinf(v);
        }
    fill(x, n, &r, 1.0f);
    fill(R, n, &r, 1.0f);
    memcpy(x, R, sizeof R);
    wmat__rope_backward(x, B * T, T, nh, hd, cs, sn, 1); /* dx = rope^T R */
    double X[160], Rd[160], g[160];
    wmat_rng_seed(&r, 3);
    for (int i = 0; i < n; i++) X[i] = wmat_rng_normal(&r), Rd[i] = R[i];
    opctx c = {.B = B, .T = T, .nh = nh, .hd = hd, .R = Rd};
    fd_grad(f_rope, X, n, &c, g);
    check_grad("rope dx", x, g, n);
}

static double f_attn(const double *x, void *vc)
{
    opctx *c = vc;
    int BT = c->B * c->T, nq = BT * c->nh * c->hd, nk = BT * c->nkv * c->hd;
    double *o = malloc(sizeof(double) * nq), acc = 0;
    ref_attention(o, x, x + nq, x + nq + nk, c->B, c->T, c->nh, c->nkv, c->hd);
    for (int i = 0; i < nq; i++) acc += o[i] * c->R[i];
    free(o);
    return acc;
}

static void test_op_attention(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 4);
    const int B = 2, T = 5, nh = 4, nkv = 2, hd = 4, BT = B * T;
    const int nq = BT * nh * hd, nk = BT * nkv * hd, N = nq + 2 * nk;
    float *x = malloc(sizeof(float) * N), *R = malloc(sizeof(float) * nq), *o = malloc(sizeof(float) * nq);
    float *d = malloc(sizeof(float) * N), *scr = malloc(sizeof(float) * 2 * T * T);
    fill(x, N, &r, 1.0f);
    fill(R, nq, &r, 1.0f);
    wmat__attention_forward(o, x, x + nq, x + nq + nk, B, T, nh, nkv, hd, scr, 1);
    wmat__attention_backward(d, d + nq, d + nq + nk, R, x, x + nq, x + nq + nk, B, T, nh, nkv, hd, scr, 1);
    double *X = malloc(sizeof(double) * N), *Rd = malloc(sizeof(double) * nq), *g = malloc(sizeof(double) * N);
    for (int i = 0; i < N; i++) X[i] = x[i];
    for (int i = 0; i < nq; i++) Rd[i] = R[i];
    /* forward matches the reference */
    double *ro = malloc(sizeof(double) * nq);
    ref_attention(ro, X, X + nq, X + nq + nk, B, T, nh, nkv, hd);
    for (int i = 0; i < nq; i++) TU_ASSERT_NEAR(ro[i], o[i], 1e-5);
    opctx c = {.B = B, .T = T, .nh = nh, .nkv = nkv, .hd = hd, .R = Rd};
    fd_grad(f_attn, X, N, &c, g);
    check_grad("attention dq", d, g, nq);
    check_grad("attention dk", d + nq, g + nq, nk);
    check_grad("attention dv", d + nq + nk, g + nq + nk, nk);
    free(x), free(R), free(o), free(d), free(scr), free(X), free(Rd), free(g), free(ro);
}

static double f_swiglu(const double *x, void *vc)
{
    opctx *c = vc;
    int n = c->C;
    double acc = 0;
    for (int i = 0; i < n; i++) acc += x[i] / (1 + exp(-x[i])) * x[n + i] * c->R[i];
    return acc;
}

static void test_op_swiglu(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    enum { n = 40 };
    float g[n], u[n], R[n], dg[n], du[n];
    fill(g, n, &r, 2.0f);
    fill(u, n, &r, 1.0f);
    fill(R, n, &r, 1.0f);
    wmat__swiglu_backward(dg, du, R, g, u, n, 1);
    double X[2 * n], Rd[n], gd[2 * n];
    for (int i = 0; i < n; i++) X[i] = g[i], X[n + i] = u[i], Rd[i] = R[i];
    opctx c = {.C = n, .R = Rd};
    fd_grad(f_swiglu, X, 2 * n, &c, gd);
    check_grad("swiglu dg", dg, gd, n);
    check_grad("swiglu du", du, gd + n, n);
}

/* linear with LoRA: Y = X W^T + s (X A^T) B^T; x = [X, W, A, B] */
static double f_linear(const double *x, void *vc)
{
    opctx *c = vc;
    const int BT = c->B, in = c->in, out = c->out, r = c->r;
    const double *X = x, *W = X + BT * in, *A = W + out * in, *Bm = A + r * in;
    double acc = 0;
    for (int t = 0; t < BT; t++) {
        double xa[8];
        for (int j = 0; j < r; j++) {
            xa[j] = 0;
            for (int i = 0; i < in; i++) xa[j] += X[t * in + i] * A[j * in + i];
        }
        for (int o = 0; o < out; o++) {
            double y = 0;
            for (int i = 0; i < in; i++) y += X[t * in + i] * W[o * in + i];
            for (int j = 0; j < r; j++) y += c->s * xa[j] * Bm[o * r + j];
            acc += y * c->R[t * out + o];
        }
    }
    return acc;
}

static void test_op_linear_lora(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 6);
    enum { BT = 5, in = 7, out = 6, rk = 3, N = BT * in + out * in + rk * in + out * rk };
    float x[N], R[BT * out], Y[BT * out], xa[BT * rk], dxa[BT * rk], d[N];
    memset(d, 0, sizeof d);
    fill(x, N, &r, 1.0f);
    fill(R, BT * out, &r, 1.0f);
    float *X = x, *W = X + BT * in, *A = W + out * in, *B = A + rk * in;
    float *dX = d, *dW = dX + BT * in, *dA = dW + out * in, *dB = dA + rk * in;
    /* the trainer's linear layer: base op, then the LoRA adapter's path */
    const wmat__adapter *ad = wmat__adapter_find("lora");
    assert_non_null(ad);
    const wmat__adapter_cfg cfg = {.rank = rk, .alpha = 2.1f, .density = 0, .nt = 1, .isa = 0};
    const float s = ad->scale(&cfg);
    const float *w[2] = {A, B};
    float *dw[2] = {dA, dB};
    wmat__linear_forward(Y, X, W, BT, in, out);
    ad->forward(&cfg, Y, xa, dxa, X, w, NULL, NULL, BT, in, out);
    wmat__linear_backward(dX, dW, R, X, W, BT, in, out, 0);
    ad->backward(&cfg, dX, dw, dxa, R, X, w, NULL, NULL, xa, BT, in, out);
    double Xd[N], Rd[BT * out], g[N];
    for (int i = 0; i < N; i++) Xd[i] = x[i];
    for (int i = 0; i < BT * out; i++) Rd[i] = R[i];
    opctx c = {.B = BT, .in = in, .out = out, .r = rk, .s = s, .R = Rd};
    fd_grad(f_linear, Xd, N, &c, g);
    check_grad("linear dX", dX, g, BT * in);
    check_grad("linear dW", dW, g + BT * in, out * in);
    check_grad("lora dA", dA, g + BT * in + out * in, rk * in);
    check_grad("lora dB", dB, g + BT * in + out * in + rk * in, out * rk);
}

static double f_xent(const double *x, void *vc)
{
    opctx *c = vc;
    const int BT = c->B, V = c->C;
    double acc = 0;
    for (int t = 0; t < BT; t++) {
        double mx = -1e300, s = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, x[t * V + j]);
        for (int j = 0; j < V; j++) s += exp(x[t * V + j] - mx);
        acc += log(s) + mx - x[t * V + (int)c->R[t]];
    }
    return acc / BT;
}

static void test_op_xent_embed(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 7);
    enum { BT = 6, V = 9 };
    float lg[BT * V], losses[BT];
    int32_t tg[BT];
    double Rd[BT], X[BT * V], g[BT * V];
    fill(lg, BT * V, &r, 2.0f);
    for (int t = 0; t < BT; t++) tg[t] = (int32_t)(wmat_rng_u64(&r) % V), Rd[t] = tg[t];
    for (int i = 0; i < BT * V; i++) X[i] = lg[i];
    opctx c = {.B = BT, .C = V, .R = Rd};
    double want = f_xent(X, &c);
    double got = wmat__xent_forward_backward(lg, losses, tg, BT, V, 1.0f / BT, 1);
    TU_ASSERT_NEAR(want, got, 1e-5);
    fd_grad(f_xent, X, BT * V, &c, g);
    check_grad("cross-entropy dlogits", lg, g, BT * V);
    /* embedding backward: scatter-add of rows */
    float demb[V * 2] = {0}, dout[BT * 2];
    fill(dout, BT * 2, &r, 1.0f);
    wmat__embed_backward(demb, dout, tg, BT, 2);
    for (int v = 0; v < V; v++)
        for (int j = 0; j < 2; j++) {
            double s = 0;
            for (int t = 0; t < BT; t++)
                if (tg[t] == v) s += dout[t * 2 + j];
            TU_ASSERT_NEAR(s, demb[v * 2 + j], 1e-6);
        }
}

/* ------------------------------------------------------------ end to end */

static wmat_config tiny_cfg(int tied)
{
    wmat_config c = tu_config(16, 24, 2, 4, 2, 13, 16);
    c.tied_embeddings = tied;
    return c;
}

static wmat_model *tiny_model(int tied, uint64_t seed)
{
    wmat_config c = tiny_cfg(tied);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    /* non-trivial norms */
    wmat_rng r;
    wmat_rng_seed(&r, seed + 1);
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        wmat_tensor *t = wmat_model_tensor(m, i);
        if (t->ndim == 1)
            for (int j = 0; j < t->shape[0]; j++) ((float *)t->data)[j] = 1.0f + 0.2f * wmat_rng_normal(&r);
    }
    return m;
}

/* The double reference model over the trainer's layout: emb (V, D), per
 * layer the nine roles in wmat_layer_weight order, final norm, classifier
 * when untied; LoRA: per layer per targeted kind A (r, in), B (out, r). */
typedef struct {
    wmat_config c;
    const double *base; /* full layout */
    unsigned lmask;
    int r;
    double s;
    const int32_t *inp, *tgt;
    int B, T;
    int lora_is_x; /* x = LoRA params (base fixed) else x = base */
    const double *lora;
} e2e;

static void lin_shape(const wmat_config *c, int k, int *o, int *i)
{
    int KV = c->n_kv_heads * c->head_dim;
    int oo[7] = {c->dim, KV, KV, c->dim, c->hidden_dim, c->hidden_dim, c->dim};
    int ii[7] = {c->dim, c->dim, c->dim, c->dim, c->dim, c->dim, c->hidden_dim};
    *o = oo[k];
    *i = ii[k];
}

static void dlinear(double *Y, const double *X, const double *W, const double *A, const double *Bm, double s, int BT,
                    int in, int out, int r)
{
    for (int t = 0; t < BT; t++) {
        double xa[16] = {0};
        if (A)
            for (int j = 0; j < r; j++)
                for (int i = 0; i < in; i++) xa[j] += X[t * in + i] * A[j * in + i];
        for (int o = 0; o < out; o++) {
            double y = 0;
            for (int i = 0; i < in; i++) y += X[t * in + i] * W[o * in + i];
            if (A)
                for (int j = 0; j < r; j++) y += s * xa[j] * Bm[o * r + j];
            Y[t * out + o] = y;
        }
    }
}

static double e2e_loss(const double *x, void *vctx)
{
    e2e *e = vctx;
    const wmat_config *c = &e->c;
    const double *th = e->lora_is_x ? e->base : x;
    const double *lo = e->lora_is_x ? x : e->lora;
    const int D = c->dim, H = c->hidden_dim, V = c->vocab_size, L = c->n_layers, hd = c->head_dim;
    const int KV = c->n_kv_heads * hd, BT = e->B * e->T;

    /* walk the layout */
    const double *emb = th, *p = th + V * D;
    const double *lw[8][9];
    for (int l = 0; l < L; l++)
        for (int w = 0; w < 9; w++) {
            lw[l][w] = p;
            int rows = D, cols = D;
            if (w == WMAT_W_ATTN_NORM || w == WMAT_W_FFN_NORM) cols = 1;
            if (w == WMAT_W_K || w == WMAT_W_V) rows = KV;
            if (w == WMAT_W_GATE || w == WMAT_W_UP) rows = H;
            if (w == WMAT_W_DOWN) cols = H;
            p += rows * cols;
        }
    const double *fn = p;
    p += D;
    const double *cls = c->tied_embeddings ? emb : p;
    const double *lA[8][7] = {{0}}, *lB[8][7] = {{0}};
    if (lo) {
        const double *q = lo;
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 7; k++)
                if (e->lmask & (1u << k)) {
                    int o, i;
                    lin_shape(c, k, &o, &i);
                    lA[l][k] = q;
                    q += e->r * i;
                    lB[l][k] = q;
                    q += o * e->r;
                }
    }
    double *xr = calloc((size_t)BT * D, 8), *xn = calloc((size_t)BT * D, 8), *q = calloc((size_t)BT * D, 8);
    double *k = calloc((size_t)BT * KV, 8), *v = calloc((size_t)BT * KV, 8), *ao = calloc((size_t)BT * D, 8);
    double *tmp = calloc((size_t)BT * D, 8), *hg = calloc((size_t)BT * H, 8), *hu = calloc((size_t)BT * H, 8);
    double *lg = calloc((size_t)BT * V, 8);
    for (int t = 0; t < BT; t++)
        for (int j = 0; j < D; j++) xr[t * D + j] = emb[e->inp[t] * D + j];
#define LIN(Y, X, l, kk) dlinear(Y, X, lw[l][kind_role[kk]], lA[l][kk], lB[l][kk], e->s, BT, 0, 0, e->r)
    for (int l = 0; l < L; l++) {
        int o, i;
        ref_rmsnorm(xn, xr, lw[l][WMAT_W_ATTN_NORM], BT, D, c->norm_eps);
        lin_shape(c, 0, &o, &i);
        dlinear(q, xn, lw[l][WMAT_W_Q], lA[l][0], lB[l][0], e->s, BT, i, o, e->r);
        lin_shape(c, 1, &o, &i);
        dlinear(k, xn, lw[l][WMAT_W_K], lA[l][1], lB[l][1], e->s, BT, i, o, e->r);
        dlinear(v, xn, lw[l][WMAT_W_V], lA[l][2], lB[l][2], e->s, BT, i, o, e->r);
        ref_rope(q, BT, e->T, c->n_heads, hd, c->rope_theta);
        ref_rope(k, BT, e->T, c->n_kv_heads, hd, c->rope_theta);
        ref_attention(ao, q, k, v, e->B, e->T, c->n_heads, c->n_kv_heads, hd);
        dlinear(tmp, ao, lw[l][WMAT_W_O], lA[l][3], lB[l][3], e->s, BT, D, D, e->r);
        for (int j = 0; j < BT * D; j++) xr[j] += tmp[j];
        ref_rmsnorm(xn, xr, lw[l][WMAT_W_FFN_NORM], BT, D, c->norm_eps);
        dlinear(hg, xn, lw[l][WMAT_W_GATE], lA[l][4], lB[l][4], e->s, BT, D, H, e->r);
        dlinear(hu, xn, lw[l][WMAT_W_UP], lA[l][5], lB[l][5], e->s, BT, D, H, e->r);
        for (int j = 0; j < BT * H; j++) hg[j] = hg[j] / (1 + exp(-hg[j])) * hu[j];
        dlinear(tmp, hg, lw[l][WMAT_W_DOWN], lA[l][6], lB[l][6], e->s, BT, H, D, e->r);
        for (int j = 0; j < BT * D; j++) xr[j] += tmp[j];
    }
#undef LIN
    ref_rmsnorm(xn, xr, fn, BT, D, c->norm_eps);
    dlinear(lg, xn, cls, NULL, NULL, 0, BT, D, V, 0);
    double loss = 0;
    for (int t = 0; t < BT; t++) {
        double mx = -1e300, s = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, lg[t * V + j]);
        for (int j = 0; j < V; j++) s += exp(lg[t * V + j] - mx);
        loss += log(s) + mx - lg[t * V + e->tgt[t]];
    }
    free(xr), free(xn), free(q), free(k), free(v), free(ao), free(tmp), free(hg), free(hu), free(lg);
    return loss / BT;
}

static void e2e_check(int tied)
{
    wmat_model *m = tiny_model(tied, 11 + tied);
    wmat_train_params p = wmat_train_default_params();
    wmat_context oc = one_thread();
    p.exec = &oc;
    p.batch = 2;
    p.ctx = 6;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    int32_t inp[12], tgt[12];
    wmat_rng r;
    wmat_rng_seed(&r, 99);
    for (int i = 0; i < 12; i++) inp[i] = (int32_t)(wmat_rng_u64(&r) % 13), tgt[i] = (int32_t)(wmat_rng_u64(&r) % 13);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 6, 1.0f / 12, 1, 0, &loss));
    size_t n;
    float *pp = wmat__trainer_params(t, &n), *gg = wmat__trainer_grads(t, &n);
    double *X = malloc(n * sizeof(double)), *g = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) X[i] = pp[i];
    e2e e = {.c = *wmat_model_config(m), .inp = inp, .tgt = tgt, .B = 2, .T = 6};
    double ref = e2e_loss(X, &e);
    if (!tu_near(ref, loss, 1e-5)) fail_msg("end-to-end loss %.8f vs reference %.8f", loss, ref);
    fd_grad(e2e_loss, X, n, &e, g);
    check_grad(tied ? "end to end (tied)" : "end to end (untied)", gg, g, n);
    free(X), free(g);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

static void test_e2e_tied(void **state) { (void)state; e2e_check(1); }
static void test_e2e_untied(void **state) { (void)state; e2e_check(0); }

static void test_e2e_lora(void **state)
{
    (void)state;
    wmat_model *m = tiny_model(1, 21);
    wmat_train_params p = wmat_train_default_params();
    wmat_context oc = one_thread();
    p.exec = &oc;
    p.batch = 2;
    p.ctx = 6;
    p.method = WMAT_TRAIN_LORA;
    p.lora_rank = 3;
    p.lora_alpha = 5;
    p.lora_targets = 0x7f;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    size_t n;
    float *pp = wmat__trainer_params(t, &n);
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (size_t i = 0; i < n; i++) pp[i] = 0.3f * wmat_rng_normal(&r); /* B != 0 so dA != 0 */
    int32_t inp[12], tgt[12];
    for (int i = 0; i < 12; i++) inp[i] = (int32_t)(wmat_rng_u64(&r) % 13), tgt[i] = (int32_t)(wmat_rng_u64(&r) % 13);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 6, 1.0f / 12, 1, 0, &loss));
    float *gg = wmat__trainer_grads(t, &n);
    /* the base in the reference layout */
    const wmat_config *c = wmat_model_config(m);
    size_t nb = 0;
    for (int i = 0; i < wmat_model_n_tensors(m); i++) nb += (size_t)wmat_tensor_nelem(wmat_model_tensor(m, i));
    double *base = malloc(nb * sizeof(double)), *q = base;
#define PUT(tt) do { const wmat_tensor *t_ = (tt); for (int64_t j = 0; j < wmat_tensor_nelem(t_); j++) *q++ = ((float *)t_->data)[j]; } while (0)
    PUT(wmat_model_tok_embeddings(m));
    for (int l = 0; l < c->n_layers; l++)
        for (int w = 0; w < WMAT_W_LAYER_COUNT; w++) PUT(wmat_model_layer_tensor(m, l, (wmat_layer_weight)w));
    PUT(wmat_model_final_norm(m));
#undef PUT
    double *X = malloc(n * sizeof(double)), *g = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) X[i] = pp[i];
    e2e e = {.c = *c, .base = base, .lmask = 0x7f, .r = 3, .s = 5.0 / 3, .inp = inp, .tgt = tgt, .B = 2, .T = 6, .lora_is_x = 1};
    double ref = e2e_loss(X, &e);
    if (!tu_near(ref, loss, 1e-5)) fail_msg("LoRA loss %.8f vs reference %.8f", loss, ref);
    fd_grad(e2e_loss, X, n, &e, g);
    check_grad("end to end LoRA (A, B)", gg, g, n);
    free(X), free(g), free(base);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

/* The training forward computes the runtime's function. */
static void test_forward_matches_runtime(void **state)
{
    (void)state;
    wmat_model *m = tiny_model(0, 31);
    wmat_train_params p = wmat_train_default_params();
    wmat_context oc = one_thread();
    p.exec = &oc;
    p.batch = 1;
    p.ctx = 12;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    int32_t inp[12], tgt[12];
    for (int i = 0; i < 12; i++) inp[i] = (i * 7 + 3) % 13, tgt[i] = (i * 5 + 1) % 13;
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 12, 1, 1, 1, &loss));
    wmat_runtime *rt;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    float lg[12 * 13];
    TU_OK(wmat_forward(rt, inp, 12, lg));
    const float *tl = wmat__trainer_logits(t);
    TU_ASSERT_CLOSE(tl, lg, 12 * 13, 1e-4f, 1e-4f); /* |diff| <= 1e-4 (1 + |runtime logit|) */
    wmat_runtime_free(rt);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

/* ------------------------------------------------------------ training */

static int32_t *synthetic_tokens(size_t n, int V)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % V; /* learnable pattern */
    return d;
}

static void run_steps(wmat_trainer *t, int n, double *first, double *last)
{
    for (int i = 0; i < n; i++) {
        wmat_train_step_info si;
        TU_OK(wmat_trainer_step(t, &si));
        if (i == 0 && first) *first = si.loss;
        if (last) *last = si.loss;
    }
}

static wmat_train_params small_params(wmat_train_method meth, wmat_context *oc)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.method = meth;
    p.batch = 4;
    p.ctx = 8;
    p.steps = 40;
    p.lr = 1e-2f;
    p.warmup = 3;
    p.grad_accum = 2;
    p.weight_decay = 0.01f;
    p.galore_rank = 4;
    p.galore_gap = 5;
    p.lora_rank = 4;
    p.lora_targets = 0x7f;
    return p;
}

static void resume_check(wmat_train_method meth, int randomized)
{
    wmat_context oc = one_thread();
    wmat_train_params p = small_params(meth, &oc);
    p.galore_randomized = randomized;
    int32_t *d = synthetic_tokens(2000, 13);
    wmat_model *m = tiny_model(1, 41);
    wmat_trainer *a, *b;
    /* uninterrupted */
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 2000));
    double first, last;
    run_steps(a, 40, &first, &last);
    if (!(last < first - 0.3)) fail_msg("method %d: loss did not fall: %.4f -> %.4f", (int)meth, first, last);
    /* interrupted at 17 (a GaLore projector update lies after it), resumed in a fresh trainer */
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    run_steps(b, 17, NULL, NULL);
    const char *ck = tu_tmp("resume.ckpt");
    TU_OK(wmat_trainer_save_checkpoint(b, ck));
    wmat_trainer_free(b);
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    TU_OK(wmat_trainer_load_checkpoint(b, ck));
    assert_int_equal(wmat_trainer_steps_done(b), 17);
    run_steps(b, 23, NULL, NULL);
    size_t na, nb;
    float *pa = wmat__trainer_params(a, &na), *pb = wmat__trainer_params(b, &nb);
    assert_int_equal(na, nb);
    if (memcmp(pa, pb, na * sizeof(float))) fail_msg("method %d: resumed weights differ from the uninterrupted run", (int)meth);
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

static void test_resume_full(void **state) { (void)state; resume_check(WMAT_TRAIN_FULL, 0); }
static void test_resume_lora(void **state) { (void)state; resume_check(WMAT_TRAIN_LORA, 0); }
static void test_resume_galore(void **state) { (void)state; resume_check(WMAT_TRAIN_GALORE, 0); }
static void test_resume_galore_rand(void **state) { (void)state; resume_check(WMAT_TRAIN_GALORE, 1); }

static void test_sgd_and_memory(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_train_params p = small_params(WMAT_TRAIN_FULL, &oc);
    p.optimizer = WMAT_OPT_SGD;
    p.lr = 0.1f;
    int32_t *d = synthetic_tokens(2000, 13);
    wmat_model *m = tiny_model(1, 51);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 2000));
    double first, last;
    run_steps(t, 40, &first, &last);
    assert_true(last < first - 0.3);
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    assert_int_equal(mem.optim, mem.grads); /* one momentum buffer */
    assert_int_equal(mem.trainable, wmat_model_n_params(m));
    assert_true(mem.peak_rss > 0);
    wmat_trainer_free(t);
    /* LoRA: trainable = r (in + out) per targeted matrix; no grads for the base */
    p = small_params(WMAT_TRAIN_LORA, &oc);
    p.lora_targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_V);
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_trainer_memory(t, &mem);
    const wmat_config *c = wmat_model_config(m);
    int64_t want = (int64_t)c->n_layers * p.lora_rank * ((c->dim + c->dim) + (c->dim + c->n_kv_heads * c->head_dim));
    assert_int_equal(mem.trainable, want);
    assert_int_equal(mem.grads, (size_t)want * 4);
    assert_int_equal(mem.optim, (size_t)want * 8);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_galore_memory(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/stories260K.bin");
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m;
    TU_OK(wmat_model_load(&m, path, &lp));
    wmat_context oc = one_thread();
    wmat_train_params p = wmat_train_default_params();
    p.exec = &oc;
    p.method = WMAT_TRAIN_GALORE;
    p.batch = 1;
    p.ctx = 16;
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    wmat_train_memory mem;
    wmat_trainer_memory(t, &mem);
    double ratio = (double)mem.galore_state / (double)mem.galore_adam_equiv;
    print_message("GaLore rank dim/4: eligible-matrix optimizer state %zu vs AdamW %zu bytes (%.1f%%)\n", mem.galore_state,
                  mem.galore_adam_equiv, 100 * ratio);
    assert_true(ratio <= 0.40);
    wmat_trainer_free(t);
    wmat_model_free(m);
}

/* --recompute: the backward refills the activations block by block from
 * the stored block inputs. Gradients (and loss) bit-identical to the
 * stored path for full training, an adapter and a projector, then three
 * steps to identical weights; the activation arena is smaller. */
static void recompute_check(wmat_train_method meth, const char *adapter, int threads)
{
    wmat_context oc = wmat_context_default();
    oc.n_threads = threads;
    wmat_config c = tu_config(16, 24, 3, 4, 2, 13, 16);
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, 77, 0.3f));
    int32_t *d = synthetic_tokens(600, 13);
    wmat_trainer *t[2];
    wmat_train_memory mem[2];
    for (int k = 0; k < 2; k++) {
        wmat_train_params p = small_params(meth, &oc);
        p.adapter = adapter;
        p.recompute = k;
        TU_OK(wmat_trainer_create(&t[k], m, &p));
        TU_OK(wmat_trainer_set_data(t[k], d, 600));
        wmat_trainer_memory(t[k], &mem[k]);
    }
    /* an adapter whose B is 0 passes no gradient to A: one step first */
    for (int k = 0; k < 2; k++) run_steps(t[k], 1, NULL, NULL);
    double loss[2];
    size_t n[2];
    float *g[2], *w[2];
    for (int k = 0; k < 2; k++) {
        TU_OK(wmat__trainer_fwdbwd(t[k], d + 5, d + 6, 4, 8, 1.0f / 32, 1, 0, &loss[k]));
        g[k] = wmat__trainer_grads(t[k], &n[k]);
    }
    assert_int_equal(n[0], n[1]);
    assert_true(loss[0] == loss[1]);
    double mx = 0;
    for (size_t i = 0; i < n[0]; i++) mx = fmax(mx, tu_abs_diff(g[0][i], g[1][i]));
    print_message("recompute (%s, %d threads): loss %.6f, max |grad diff| %.3g over %zu, activations %zu -> %zu B\n",
                  adapter ? adapter : meth == WMAT_TRAIN_GALORE ? "galore" : "full", threads, loss[0], mx, n[0],
                  mem[0].activations, mem[1].activations);
    if (memcmp(g[0], g[1], n[0] * sizeof(float))) fail_msg("recomputed gradients differ (max %.3g)", mx);
    assert_true(mem[1].activations < mem[0].activations);
    for (int k = 0; k < 2; k++) run_steps(t[k], 3, NULL, NULL);
    w[0] = wmat__trainer_params(t[0], &n[0]);
    w[1] = wmat__trainer_params(t[1], &n[1]);
    assert_memory_equal(w[0], w[1], n[0] * sizeof(float));
    for (int k = 0; k < 2; k++) wmat_trainer_free(t[k]);
    wmat_model_free(m);
    free(d);
}

static void test_recompute(void **state)
{
    (void)state;
    recompute_check(WMAT_TRAIN_FULL, NULL, 1);
    recompute_check(WMAT_TRAIN_FULL, NULL, 2);
    recompute_check(WMAT_TRAIN_LORA, "lora", 1);
    recompute_check(WMAT_TRAIN_LORA, "sltrain", 1);
    recompute_check(WMAT_TRAIN_GALORE, NULL, 1);
}

static void test_lora_merge_and_peft(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_train_params p = small_params(WMAT_TRAIN_LORA, &oc);
    p.batch = 1;
    p.ctx = 12;
    p.grad_accum = 1;
    int32_t *d = synthetic_tokens(500, 13);
    wmat_model *m = tiny_model(0, 61);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    TU_OK(wmat_trainer_set_data(t, d, 500));
    run_steps(t, 10, NULL, NULL);
    int32_t inp[12], tgt[12];
    for (int i = 0; i < 12; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 1, 12, 1, 1, 1, &loss));
    float unmerged[12 * 13];
    memcpy(unmerged, wmat__trainer_logits(t), sizeof unmerged);
    wmat_model *merged;
    TU_OK(wmat_trainer_model(t, &merged));
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &oc;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, merged, &rp));
    float lg[12 * 13];
    TU_OK(wmat_forward(rt, inp, 12, lg));
    TU_ASSERT_CLOSE(unmerged, lg, 12 * 13, 1e-5f, 1e-5f); /* merged vs unmerged logits */
    wmat_runtime_free(rt);
    /* PEFT round trip: save, merge the files into a copy of the base, compare */
    const char *dir = tu_tmp("adapter");
    TU_OK(wmat_trainer_save_lora(t, dir));
    wmat_model *m2 = tiny_model(0, 61);
    TU_OK(wmat_lora_merge_peft(m2, dir));
    for (int i = 0; i < wmat_model_n_tensors(m2); i++) {
        const wmat_tensor *a = wmat_model_tensor(m2, i), *b = wmat_model_find(merged, a->name);
        TU_ASSERT_CLOSE((const float *)a->data, (const float *)b->data, (size_t)wmat_tensor_nelem(a), 1e-6f, 0);
    }
    char cfgp[4096];
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", dir);
    char *js;
    size_t jl;
    TU_OK(wmat_read_file(cfgp, &js, &jl));
    assert_non_null(strstr(js, "\"peft_type\": \"LORA\""));
    free(js);
    wmat_model_free(m2);
    wmat_trainer_free(t);
    wmat_model_free(m);
    free(d);
}

static void test_bad_input(void **state)
{
    (void)state;
    wmat_context oc = one_thread();
    wmat_model *m = tiny_model(1, 71);
    wmat_train_params p = small_params(WMAT_TRAIN_FULL, &oc);
    wmat_trainer *t;
    TU_OK(wmat_trainer_create(&t, m, &p));
    int32_t d[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_int_equal(wmat_trainer_set_data(t, d, 8), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "shorter than one window"));
    /* checkpoint of another model */
    int32_t *dd = synthetic_tokens(300, 13);
    TU_OK(wmat_trainer_set_data(t, dd, 300));
    run_steps(t, 1, NULL, NULL);
    const char *ck = tu_tmp("other.ckpt");
    TU_OK(wmat_trainer_save_checkpoint(t, ck));
    wmat_trainer_free(t);
    wmat_model *m2 = tiny_model(0, 72); /* untied: another layout */
    TU_OK(wmat_trainer_create(&t, m2, &p));
    assert_int_equal(wmat_trainer_load_checkpoint(t, ck), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "another model"));
    wmat_trainer_free(t);
    /* LoRA targets */
    unsigned mask;
    assert_int_equal(wmat_train_parse_targets("q,foo", &mask), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "foo"));
    /* PEFT's module names mean the same layers */
    unsigned t1, t2;
    TU_OK(wmat_train_parse_targets("q,v,down", &t1));
    TU_OK(wmat_train_parse_targets("q_proj,v_proj,down_proj", &t2));
    assert_int_equal(t1, t2);
    TU_OK(wmat_train_parse_targets("all", &t1));
    TU_OK(wmat_train_parse_targets("all-linear", &t2));
    assert_int_equal(t1, t2);
    assert_int_equal(wmat_train_parse_targets("q_projx", &mask), WMAT_ERR_INVALID);
    p.method = WMAT_TRAIN_LORA;
    p.lora_targets = 0;
    assert_int_equal(wmat_trainer_create(&t, m, &p), WMAT_ERR_INVALID);
    assert_non_null(strstr(wmat_last_error(), "match no"));
    wmat_model_free(m);
    wmat_model_free(m2);
    free(dd);
}

static void test_determinism_threads(void **state)
{
    (void)state;
    wmat_context c2 = wmat_context_default();
    c2.n_threads = 2;
    wmat_train_params p = small_params(WMAT_TRAIN_FULL, &c2);
    int32_t *d = synthetic_tokens(2000, 13);
    wmat_model *m = tiny_model(1, 81);
    wmat_trainer *a, *b;
    TU_OK(wmat_trainer_create(&a, m, &p));
    TU_OK(wmat_trainer_create(&b, m, &p));
    TU_OK(wmat_trainer_set_data(a, d, 2000));
    TU_OK(wmat_trainer_set_data(b, d, 2000));
    run_steps(a, 5, NULL, NULL);
    run_steps(b, 5, NULL, NULL);
    size_t n;
    float *pa = wmat__trainer_params(a, &n), *pb = wmat__trainer_params(b, &n);
    assert_memory_equal(pa, pb, n * sizeof(float));
    wmat_trainer_free(a);
    wmat_trainer_free(b);
    wmat_model_free(m);
    free(d);
}

/* Short version of the docs' comparison: stories260K on Tiny Shakespeare. */
static void test_finetune_short(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(dp, "golden/tinyshakespeare.tok512.u16");
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m;
    TU_OK(wmat_model_load(&m, mp, &lp));
    int32_t *ids;
    size_t n;
    TU_OK(wmat_read_tokens_u16(dp, &ids, &n));
    size_t ntr = n * 9 / 10;
    wmat_context oc = one_thread();
    const wmat_train_method ms[3] = {WMAT_TRAIN_FULL, WMAT_TRAIN_LORA, WMAT_TRAIN_GALORE};
    for (int k = 0; k < 3; k++) {
        wmat_train_params p = wmat_train_default_params();
        p.exec = &oc;
        p.method = ms[k];
        p.batch = 4;
        p.ctx = 64;
        p.steps = 15;
        p.lr = ms[k] == WMAT_TRAIN_LORA ? 5e-3f : 2e-3f;
        p.galore_gap = 5;
        p.lora_targets = 0x7f;
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        TU_OK(wmat_trainer_set_data(t, ids, ntr));
        wmat_eval_result r0, r1;
        TU_OK(wmat_trainer_eval(t, ids + ntr, n - ntr, 64, 10, &r0));
        run_steps(t, 15, NULL, NULL);
        TU_OK(wmat_trainer_eval(t, ids + ntr, n - ntr, 64, 10, &r1));
        print_message("method %d: held-out ppl %.2f -> %.2f\n", k, r0.ppl, r1.ppl);
        assert_true(r1.ppl < 0.8 * r0.ppl);
        wmat_trainer_free(t);
    }
    free(ids);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_rmsnorm),
        cmocka_unit_test(test_op_rope),
        cmocka_unit_test(test_op_attention),
        cmocka_unit_test(test_op_swiglu),
        cmocka_unit_test(test_op_linear_lora),
        cmocka_unit_test(test_op_xent_embed),
        cmocka_unit_test(test_e2e_tied),
        cmocka_unit_test(test_e2e_untied),
        cmocka_unit_test(test_e2e_lora),
        cmocka_unit_test(test_forward_matches_runtime),
        cmocka_unit_test(test_resume_full),
        cmocka_unit_test(test_resume_lora),
        cmocka_unit_test(test_resume_galore),
        cmocka_unit_test(test_resume_galore_rand),
        cmocka_unit_test(test_sgd_and_memory),
        cmocka_unit_test(test_galore_memory),
        cmocka_unit_test(test_recompute),
        cmocka_unit_test(test_lora_merge_and_peft),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_determinism_threads),
        cmocka_unit_test(test_finetune_short),
    };
    return tu_run_tests("train", tests, NULL, NULL);
}
