/* Cross-block reconstruction (reconstruct.h): the shared block's forward
 * (src/model/block.h) with plain fp32 products and the trainer's attention,
 * and its backward from the trainer's ops (ops.c), over a window of blocks;
 * the weights of the quantized linears come from LoRA-Rounding
 * (src/quant/cbq.c) and their gradients go back through it. */
#include "reconstruct.h"

#include "../core/shapes.h"
#include "../model/block.h"
#include "../model/kernels.h"
#include "train.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* One linear of a block: its reconstruction state, or fixed weights. */
typedef struct {
    int active; /* LoRA-Rounding state present */
    int final;  /* finalized: q's weights are the result's */
    int out, in;
    wmat_cbq_round r;
    float *Wq, *dW;                         /* (out, in) the current soft weights, dL/dWq */
    float *gA1, *gA2, *gu;                  /* gradients of r.A1, r.A2, r.u */
    float *mA1, *vA1, *mA2, *vA2, *mu, *vu; /* Adam's moments */
    int64_t step;
    wmat_qresult *res;
    float *qW;       /* q's fp32 weights (fake-quant) */
    const float *fW; /* fp's weights */
} rlin;

/* Activations of one block for BT rows. */
typedef struct {
    float *x, *xn1, *r1, *q, *k, *v, *ao, *xmid, *xn2, *r2, *hg, *hu, *hs;
} racts;

typedef struct {
    const wmat_config *c;
    int L, nt, T, maxBT;
    int use_fp;         /* products by fp's weights */
    rlin *lin;          /* (L, WMAT_LIN_COUNT) */
    const float **anorm, **fnorm; /* (L) fp's norm weights (the quantized model shares them) */
    float *rope_cos, *rope_sin;   /* (T, hd/2) */
    float *att;                   /* attention scratch: nt * 2 * T * T */
    racts *acts;                  /* (window) */
    float *out;                   /* (maxBT, dim) the window's output */
    /* backward scratch */
    float *dx, *dxn, *dao, *dq, *dk, *dv, *dhs, *dhg, *dhu, *gscr;
} rctx;

static const float *lin_weights(const rctx *x, int l, int k)
{
    const rlin *li = &x->lin[l * WMAT_LIN_COUNT + k];
    if (x->use_fp) return li->fW;
    return li->active && !li->final ? li->Wq : li->qW;
}

static int r_linear(void *user, int l, wmat_linear_kind k, float *Y, const float *X, int BT, int acc)
{
    rctx *x = user;
    const rlin *li = &x->lin[l * WMAT_LIN_COUNT + k];
    wmat_sgemm(0, 1, BT, li->out, li->in, 1.0f, X, li->in, lin_weights(x, l, k), li->in, acc ? 1.0f : 0.0f, Y, li->out);
    return WMAT_OK;
}

static void r_attention(void *user, int l, float *out, const float *q, const float *k, const float *v, int B, int T)
{
    (void)l;
    rctx *x = user;
    const wmat_config *c = x->c;
    wmat__attention_forward(out, q, k, v, B, T, c->n_heads, c->n_kv_heads, c->head_dim, x->att, x->nt);
}

/* Block l on B windows of T tokens: a->x (input) -> out. */
static int block_fwd(rctx *x, int l, racts *a, float *out, int B)
{
    const wmat_block_cfg cfg = {x->c, x->anorm[l], x->fnorm[l], x->rope_cos, x->rope_sin, 0, x->nt};
    const wmat_block_ops ops = {r_linear, r_attention, x, NULL};
    const wmat_block_bufs b = {a->x,   a->xn1, a->r1, a->q,  a->k,  a->v,  a->ao, a->xmid,
                               a->xn2, a->r2,  a->hg, a->hu, a->hs, out,   NULL};
    return wmat__block_forward(&cfg, &ops, l, &b, B, x->T);
}

/* Blocks [l0, l1) on B windows from in (B*T, dim); the window's output
 * in x->out; activations of block l0 + j in x->acts[j]. */
static int window_fwd(rctx *x, int l0, int l1, const float *in, int B)
{
    const size_t nb = (size_t)B * x->T * x->c->dim * sizeof(float);
    memcpy(x->acts[0].x, in, nb);
    for (int l = l0; l < l1; l++) {
        float *o = l + 1 < l1 ? x->acts[l - l0 + 1].x : x->out;
        int rc = block_fwd(x, l, &x->acts[l - l0], o, B);
        if (rc) return rc;
    }
    return WMAT_OK;
}

/* dX = dY W and, for an active linear, dW += dY^T X. */
static void lin_bwd(rctx *x, int l, int k, float *dX, const float *dY, const float *X, int BT, int acc)
{
    rlin *li = &x->lin[l * WMAT_LIN_COUNT + k];
    const int grad = li->active && !li->final;
    wmat__linear_backward(dX, grad ? li->dW : NULL, dY, X, lin_weights(x, l, k), BT, li->in, li->out, acc);
}

/* Backward through blocks [l0, l1) from x->dx = dL/d(out); x->dx ends as
 * dL/d(input), which nothing reads. */
static void window_bwd(rctx *x, int l0, int l1, int B)
{
    const wmat_config *c = x->c;
    const int BT = B * x->T, D = c->dim, H = c->hidden_dim, hd = c->head_dim, nt = x->nt;
    for (int l = l1 - 1; l >= l0; l--) {
        racts *a = &x->acts[l - l0];
        lin_bwd(x, l, WMAT_LIN_DOWN, x->dhs, x->dx, a->hs, BT, 0);
        wmat__swiglu_backward(x->dhg, x->dhu, x->dhs, a->hg, a->hu, (size_t)BT * H, nt);
        lin_bwd(x, l, WMAT_LIN_GATE, x->dxn, x->dhg, a->xn2, BT, 0);
        lin_bwd(x, l, WMAT_LIN_UP, x->dxn, x->dhu, a->xn2, BT, 1);
        memset(x->gscr, 0, (size_t)D * sizeof(float));
        wmat__rmsnorm_backward(x->dx, x->gscr, x->dxn, a->xmid, x->fnorm[l], a->r2, BT, D, nt);
        lin_bwd(x, l, WMAT_LIN_O, x->dao, x->dx, a->ao, BT, 0);
        wmat__attention_backward(x->dq, x->dk, x->dv, x->dao, a->q, a->k, a->v, B, x->T, c->n_heads, c->n_kv_heads, hd,
                                 x->att, nt);
        wmat__rope_backward(x->dq, BT, x->T, c->n_heads, hd, x->rope_cos, x->rope_sin, nt);
        wmat__rope_backward(x->dk, BT, x->T, c->n_kv_heads, hd, x->rope_cos, x->rope_sin, nt);
        lin_bwd(x, l, WMAT_LIN_Q, x->dxn, x->dq, a->xn1, BT, 0);
        lin_bwd(x, l, WMAT_LIN_K, x->dxn, x->dk, a->xn1, BT, 1);
        lin_bwd(x, l, WMAT_LIN_V, x->dxn, x->dv, a->xn1, BT, 1);
        memset(x->gscr, 0, (size_t)D * sizeof(float));
        wmat__rmsnorm_backward(x->dx, x->gscr, x->dxn, a->x, x->anorm[l], a->r1, BT, D, nt);
    }
}

/* Relative MSE of Y against Yt (n values) with the target's mean square ms;
 * dY (may be NULL) gets scale * its gradient. */
static double mse_term(const float *Y, const float *Yt, size_t n, double ms, double scale, float *dY, int add)
{
    double s = 0.0;
    const float g = (float)(2.0 * scale / ((double)n * ms));
    for (size_t i = 0; i < n; i++) {
        const float d = Y[i] - Yt[i];
        s += (double)d * d;
        if (dY) dY[i] = (add ? dY[i] : 0.0f) + g * d;
    }
    return s / ((double)n * ms);
}

/* mean over rows of KL(softmax(Yt) || softmax(Y)) over D; dY += scale * grad. */
static double kl_term(const float *Y, const float *Yt, int rows, int D, double scale, float *dY)
{
    double tot = 0.0;
    for (int t = 0; t < rows; t++) {
        const float *y = Y + (size_t)t * D, *yt = Yt + (size_t)t * D;
        float my = y[0], mt = yt[0];
        for (int j = 1; j < D; j++) {
            my = y[j] > my ? y[j] : my;
            mt = yt[j] > mt ? yt[j] : mt;
        }
        double sy = 0.0, st = 0.0;
        for (int j = 0; j < D; j++) {
            sy += exp((double)y[j] - my);
            st += exp((double)yt[j] - mt);
        }
        const double ly = log(sy) + my, lt = log(st) + mt;
        double kl = 0.0;
        for (int j = 0; j < D; j++) {
            const double lp = (double)yt[j] - lt, lq = (double)y[j] - ly, p = exp(lp);
            kl += p * (lp - lq);
            if (dY) dY[(size_t)t * D + j] += (float)(scale / rows * (exp(lq) - p));
        }
        tot += kl;
    }
    return tot / rows;
}

static void adam(float *w, const float *g, float *m, float *v, size_t n, double lr, int64_t t)
{
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    const double c1 = 1.0 - pow(b1, (double)t), c2 = 1.0 - pow(b2, (double)t);
    for (size_t i = 0; i < n; i++) {
        m[i] = (float)(b1 * m[i] + (1.0 - b1) * g[i]);
        v[i] = (float)(b2 * v[i] + (1.0 - b2) * (double)g[i] * g[i]);
        w[i] -= (float)(lr * (m[i] / c1) / (sqrt(v[i] / c2) + eps));
    }
}

static void lin_free(rlin *li)
{
    wmat__cbq_round_free(&li->r);
    float **bufs[] = {&li->Wq, &li->dW, &li->gA1, &li->gA2, &li->gu, &li->mA1,
                      &li->vA1, &li->mA2, &li->vA2, &li->mu,  &li->vu};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        wmat__free(*bufs[i]);
        *bufs[i] = NULL;
    }
    li->active = 0;
}

/* Start reconstructing a linear: truncated weights (CFP as the method
 * did), LoRA-Rounding from its result, buffers. */
static int lin_start(rlin *li, const wmat_qparams *p, uint64_t seed)
{
    const size_t n = (size_t)li->out * li->in;
    float *W = wmat__malloc(n * sizeof(float));
    if (!W) return wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory");
    memcpy(W, li->fW, n * sizeof(float));
    if (p->cbq.cfp) wmat__cbq_cfp(W, (int64_t)n, p->cbq.cfp_lambda, NULL);
    int rc = wmat__cbq_round_init(&li->r, W, li->res, p->cbq.rank, seed);
    wmat__free(W);
    if (rc) return rc;
    const size_t na1 = (size_t)li->out * li->r.rank, na2 = (size_t)li->r.rank * li->in, ng = (size_t)li->r.n_groups;
    li->Wq = wmat__malloc(n * sizeof(float));
    li->dW = wmat__calloc(n, sizeof(float));
    li->gA1 = wmat__calloc(na1, sizeof(float));
    li->mA1 = wmat__calloc(na1, sizeof(float));
    li->vA1 = wmat__calloc(na1, sizeof(float));
    li->gA2 = wmat__calloc(na2, sizeof(float));
    li->mA2 = wmat__calloc(na2, sizeof(float));
    li->vA2 = wmat__calloc(na2, sizeof(float));
    li->gu = wmat__calloc(ng, sizeof(float));
    li->mu = wmat__calloc(ng, sizeof(float));
    li->vu = wmat__calloc(ng, sizeof(float));
    if (!li->Wq || !li->dW || !li->gA1 || !li->mA1 || !li->vA1 || !li->gA2 || !li->mA2 || !li->vA2 || !li->gu ||
        !li->mu || !li->vu) {
        lin_free(li);
        return wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory");
    }
    li->active = 1;
    li->step = 0;
    return WMAT_OK;
}

static int acts_alloc(racts *a, const wmat_config *c, int BT)
{
    const size_t D = (size_t)c->dim, A = (size_t)wmat__attn_width(c), KV = (size_t)c->n_kv_heads * c->head_dim,
                 H = (size_t)c->hidden_dim, n = (size_t)BT;
    float **f[] = {&a->x, &a->xn1, &a->q, &a->k, &a->v, &a->ao, &a->xmid, &a->xn2, &a->hg, &a->hu, &a->hs, &a->r1, &a->r2};
    const size_t sz[] = {D, D, A, KV, KV, A, D, D, H, H, H, 1, 1};
    for (size_t i = 0; i < sizeof sz / sizeof *sz; i++)
        if (!(*f[i] = wmat__malloc(n * sz[i] * sizeof(float)))) return wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory");
    return WMAT_OK;
}

static void acts_free(racts *a)
{
    float *f[] = {a->x, a->xn1, a->q, a->k, a->v, a->ao, a->xmid, a->xn2, a->hg, a->hu, a->hs, a->r1, a->r2};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) wmat__free(f[i]);
}

/* Hard-rounded (or fp) window blocks [l0, l1) over calibration windows
 * [0, nw) of X: relative MSE against Yt. */
static int window_error(rctx *x, int l0, int l1, const float *X, const float *Yt, int nw, double ms, double *err)
{
    const size_t per = (size_t)x->T * x->c->dim;
    double s = 0.0;
    for (int w = 0; w < nw; w++) {
        int rc = window_fwd(x, l0, l1, X + (size_t)w * per, 1);
        if (rc) return rc;
        s += mse_term(x->out, Yt + (size_t)w * per, per, ms, 1.0, NULL, 0);
    }
    *err = s / nw;
    return WMAT_OK;
}

/* Every stream of X (nw windows) through block l, in place. */
static int advance(rctx *x, int l, float *X, int nw)
{
    const size_t per = (size_t)x->T * x->c->dim;
    for (int w = 0; w < nw; w++) {
        memcpy(x->acts[0].x, X + (size_t)w * per, per * sizeof(float));
        int rc = block_fwd(x, l, &x->acts[0], X + (size_t)w * per, 1);
        if (rc) return rc;
    }
    return WMAT_OK;
}

static int reconstruct(wmat_model *fp, wmat_model *q, wmat_qresult *results, const int32_t *tokens, size_t n_tokens,
                       int ctx, const wmat_qparams *p, int n_threads, wmat_reconstruct_progress progress, void *user,
                       wmat_reconstruct_info *info);

int wmat__reconstruct(wmat_model *fp, wmat_model *q, wmat_qresult *results, const int32_t *tokens, size_t n_tokens,
                      int ctx, const wmat_qparams *p, int n_threads, wmat_reconstruct_progress progress, void *user,
                      wmat_reconstruct_info *info)
{
    /* ops.c's GEMMs (attention, linear backward) run on the calling
     * thread's OpenMP default: it is n_threads for the call, as linalg's
     * oneDNN path does (hundreds of small GEMMs a step: a second thread
     * that is not there costs more than it gives) */
#ifdef _OPENMP
    const int prev = omp_get_max_threads(), nt = n_threads > 0 ? n_threads : prev;
    if (nt != prev) omp_set_num_threads(nt);
    const int rc = reconstruct(fp, q, results, tokens, n_tokens, ctx, p, nt, progress, user, info);
    if (nt != prev) omp_set_num_threads(prev);
    return rc;
#else
    return reconstruct(fp, q, results, tokens, n_tokens, ctx, p, n_threads, progress, user, info);
#endif
}

static int reconstruct(wmat_model *fp, wmat_model *q, wmat_qresult *results, const int32_t *tokens, size_t n_tokens,
                       int ctx, const wmat_qparams *p, int n_threads, wmat_reconstruct_progress progress, void *user,
                       wmat_reconstruct_info *info)
{
    const double t_start = wmat__now();
    const wmat_config *c = wmat_model_config(q);
    const int L = c->n_layers, D = c->dim, nt = n_threads > 0 ? n_threads : 1;
    if (info) memset(info, 0, sizeof *info);
    if (c->shortcuts) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "cbq: the reconstruction runs no sliced model");
    if (ctx <= 0 || n_tokens < (size_t)ctx)
        return wmat_set_error(WMAT_ERR_INVALID, "cbq: the reconstruction needs at least one calibration window of %d tokens", ctx);
    const int wlen = p->cbq.window < 1 ? 1 : p->cbq.window > L ? L : p->cbq.window;
    const int stride = wlen > 1 ? wlen - 1 : 1;
    int n_win = 0;
    for (int i = 0;; i += stride) {
        n_win++;
        if (i + wlen >= L) break;
    }
    if (n_win > WMAT_RECON_MAX_WINDOWS)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "cbq: %d reconstruction windows (at most %d)", n_win, WMAT_RECON_MAX_WINDOWS);
    int ncal = (int)(n_tokens / (size_t)ctx);
    if (p->cbq.windows > 0 && p->cbq.windows < ncal) ncal = p->cbq.windows;
    const int batch = p->cbq.batch < 1 ? 1 : p->cbq.batch > ncal ? ncal : p->cbq.batch;
    const int nerr = ncal < 16 ? ncal : 16;
    const size_t per = (size_t)ctx * D;

    rctx x;
    memset(&x, 0, sizeof x);
    x.c = c;
    x.L = L;
    x.nt = nt;
    x.T = ctx;
    x.maxBT = batch * ctx;
    int rc = WMAT_OK;
    float *Xq = NULL, *Xf = NULL, *Yt = NULL;
    int32_t *ord = NULL;
    x.lin = wmat__calloc((size_t)L * WMAT_LIN_COUNT, sizeof(rlin));
    x.anorm = wmat__calloc((size_t)L, sizeof(float *));
    x.fnorm = wmat__calloc((size_t)L, sizeof(float *));
    x.acts = wmat__calloc((size_t)wlen, sizeof(racts));
    x.rope_cos = wmat__malloc((size_t)ctx * (c->head_dim / 2) * sizeof(float));
    x.rope_sin = wmat__malloc((size_t)ctx * (c->head_dim / 2) * sizeof(float));
    x.att = wmat__malloc((size_t)nt * 2 * ctx * ctx * sizeof(float));
    const size_t BT = (size_t)x.maxBT, A = (size_t)wmat__attn_width(c), KV = (size_t)c->n_kv_heads * c->head_dim,
                 H = (size_t)c->hidden_dim;
    x.out = wmat__malloc(BT * D * sizeof(float));
    x.dx = wmat__malloc(BT * D * sizeof(float));
    x.dxn = wmat__malloc(BT * D * sizeof(float));
    x.dao = wmat__malloc(BT * A * sizeof(float));
    x.dq = wmat__malloc(BT * A * sizeof(float));
    x.dk = wmat__malloc(BT * KV * sizeof(float));
    x.dv = wmat__malloc(BT * KV * sizeof(float));
    x.dhs = wmat__malloc(BT * H * sizeof(float));
    x.dhg = wmat__malloc(BT * H * sizeof(float));
    x.dhu = wmat__malloc(BT * H * sizeof(float));
    x.gscr = wmat__malloc((size_t)D * sizeof(float));
    Xq = wmat__malloc((size_t)ncal * per * sizeof(float));
    Xf = wmat__malloc((size_t)ncal * per * sizeof(float));
    Yt = wmat__malloc((size_t)ncal * per * sizeof(float));
    ord = wmat__malloc((size_t)ncal * sizeof(int32_t));
    if (!x.lin || !x.anorm || !x.fnorm || !x.acts || !x.rope_cos || !x.rope_sin || !x.att || !x.out || !x.dx ||
        !x.dxn || !x.dao || !x.dq || !x.dk || !x.dv || !x.dhs || !x.dhg || !x.dhu || !x.gscr || !Xq || !Xf || !Yt || !ord) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "cbq: out of memory (%d calibration windows of %d tokens)", ncal, ctx);
        goto done;
    }
    for (int j = 0; j < wlen; j++)
        if ((rc = acts_alloc(&x.acts[j], c, x.maxBT))) goto done;
    wmat__rope_tables(c, 0, ctx, x.rope_cos, x.rope_sin);

    /* the weights: fp's, q's, and which linears have results to refine */
    for (int l = 0; l < L; l++) {
        const wmat_tensor *an = wmat_model_layer_tensor(fp, l, WMAT_W_ATTN_NORM),
                          *fn = wmat_model_layer_tensor(fp, l, WMAT_W_FFN_NORM);
        if (!an || !fn || an->dtype != WMAT_F32 || fn->dtype != WMAT_F32) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "cbq: block %d's norms are not fp32 (materialize the model)", l);
            goto done;
        }
        x.anorm[l] = an->data;
        x.fnorm[l] = fn->data;
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
            wmat_tensor *ft = wmat_model_linear(fp, l, (wmat_linear_kind)k), *qt = wmat_model_linear(q, l, (wmat_linear_kind)k);
            wmat__linear_shape(c, (wmat_linear_kind)k, &li->out, &li->in);
            if (!ft || !qt || ft->dtype != WMAT_F32 || qt->dtype != WMAT_F32 || ft->shape[0] != qt->shape[0] ||
                ft->shape[1] != qt->shape[1]) {
                rc = wmat_set_error(WMAT_ERR_INVALID,
                                    "cbq: block %d's %s weight is not fp32 in both models (the reconstruction runs on "
                                    "fake-quant weights, before packing)",
                                    l, wmat_linear_name((wmat_linear_kind)k));
                goto done;
            }
            li->fW = ft->data;
            li->qW = qt->data;
            const int ti = (int)(qt - wmat_model_tensor(q, 0));
            wmat_qresult *r = &results[ti];
            li->final = 1; /* fixed until its first window */
            if (r->codes && !r->perm && r->axis == WMAT_QAXIS_IN) li->res = r;
            if (li->res) {
                li->final = 0;
                if (info) info->n_rounding += (int64_t)li->out * li->in;
            }
        }
    }

    /* the streams at block 0: the embedding */
    const wmat_tensor *emb = wmat_model_tok_embeddings(fp);
    if (!emb || emb->dtype != WMAT_F32) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "cbq: the token embedding is not fp32");
        goto done;
    }
    for (size_t i = 0; i < (size_t)ncal * ctx; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "cbq: calibration token %d outside the vocabulary", tokens[i]);
            goto done;
        }
    wmat__embed_forward(Xf, tokens, emb->data, ncal * ctx, D);
    memcpy(Xq, Xf, (size_t)ncal * per * sizeof(float));

    wmat_rng g;
    wmat_rng_seed(&g, p->cbq.seed ^ 0x9e3779b97f4a7c15ull);
    double soft_sum = 0.0;
    int64_t soft_n = 0;
    int w_idx = 0;
    for (int i = 0;; i += stride, w_idx++) {
        const int l0 = i, l1 = i + wlen < L ? i + wlen : L, last = l1 >= L;
        /* the target: fp blocks on the fp streams */
        x.use_fp = 1;
        for (int w = 0; w < ncal; w++) {
            if ((rc = window_fwd(&x, l0, l1, Xf + (size_t)w * per, 1))) goto done;
            memcpy(Yt + (size_t)w * per, x.out, per * sizeof(float));
        }
        x.use_fp = 0;
        double ms = 0.0;
        for (size_t j = 0; j < (size_t)ncal * per; j++) ms += (double)Yt[j] * Yt[j];
        ms = ms / ((double)ncal * per) + 1e-30;
        /* new linears of the window get their state */
        int any = 0;
        for (int l = l0; l < l1; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                if (li->res && !li->active && !li->final) {
                    if ((rc = lin_start(li, p, p->cbq.seed + (uint64_t)(l * WMAT_LIN_COUNT + k)))) goto done;
                }
                if (li->active && !li->final) any = 1;
            }
        /* error of the hard rounding before */
        for (int l = l0; l < l1; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                if (li->active && !li->final) wmat__cbq_round_weights(&li->r, li->Wq, 1, nt);
            }
        double eb = 0.0, ea = 0.0, lf = 0.0, ll = 0.0;
        if ((rc = window_error(&x, l0, l1, Xq, Yt, nerr, ms, &eb))) goto done;
        const int iters = any ? p->cbq.iters : 0;
        const int warm = iters / 5;
        for (int it = 0; it < iters; it++) {
            /* soft weights, zero gradients */
            for (int l = l0; l < l1; l++)
                for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                    rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                    if (!li->active || li->final) continue;
                    wmat__cbq_round_weights(&li->r, li->Wq, p->cbq.ste, nt);
                    memset(li->dW, 0, (size_t)li->out * li->in * sizeof(float));
                    memset(li->gA1, 0, (size_t)li->out * li->r.rank * sizeof(float));
                    memset(li->gA2, 0, (size_t)li->r.rank * li->in * sizeof(float));
                    memset(li->gu, 0, (size_t)li->r.n_groups * sizeof(float));
                }
            /* a batch of calibration windows, drawn without order */
            const int B = batch;
            double loss = 0.0;
            for (int b = 0; b < B; b++) ord[b] = (int32_t)(wmat_rng_u64(&g) % (uint64_t)ncal);
            for (int src = 0; src < 2; src++) {
                const double wsrc = src == 0 ? 1.0 : p->cbq.homologous;
                if (wsrc <= 0.0) continue;
                float *in = x.dxn; /* the batch's input, gathered (dxn is free until the backward) */
                for (int b = 0; b < B; b++)
                    memcpy(in + (size_t)b * per, (src == 0 ? Xq : Xf) + (size_t)ord[b] * per, per * sizeof(float));
                if ((rc = window_fwd(&x, l0, l1, in, B))) goto done;
                for (int b = 0; b < B; b++) {
                    const float *yt = Yt + (size_t)ord[b] * per;
                    float *yq = x.out + (size_t)b * per, *dy = x.dx + (size_t)b * per;
                    loss += mse_term(yq, yt, per, ms, wsrc / B, dy, 0) * wsrc / B;
                    if (src == 0 && p->cbq.kl > 0) loss += kl_term(yq, yt, ctx, D, p->cbq.kl / B, dy) * p->cbq.kl / B;
                }
                window_bwd(&x, l0, l1, B);
            }
            /* AdaRound's schedule: no regularizer for the first 20%, then
             * beta from 20 down to 2 */
            const double reg = it < warm ? 0.0 : p->cbq.reg;
            const double beta = it < warm ? 20.0 : 2.0 + 18.0 * (1.0 - (double)(it - warm) / (double)(iters - warm));
            for (int l = l0; l < l1; l++)
                for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                    rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                    if (!li->active || li->final) continue;
                    loss += wmat__cbq_round_backward(&li->r, li->dW, reg, beta, li->gA1, li->gA2, li->gu, li->Wq, nt);
                    li->step++;
                    adam(li->r.A1, li->gA1, li->mA1, li->vA1, (size_t)li->out * li->r.rank, p->cbq.lr, li->step);
                    adam(li->r.A2, li->gA2, li->mA2, li->vA2, (size_t)li->r.rank * li->in, p->cbq.lr, li->step);
                    if (p->cbq.scale_lr > 0)
                        adam(li->r.u, li->gu, li->mu, li->vu, (size_t)li->r.n_groups, p->cbq.scale_lr, li->step);
                }
            if (it == 0) lf = loss;
            ll = loss;
        }
        /* hard rounding: the error after */
        for (int l = l0; l < l1; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                if (li->active && !li->final) wmat__cbq_round_weights(&li->r, li->Wq, 1, nt);
            }
        if ((rc = window_error(&x, l0, l1, Xq, Yt, nerr, ms, &ea))) goto done;
        /* finalize blocks [l0, l0 + stride), or all at the last window */
        const int lf_end = last ? l1 : l0 + stride;
        for (int l = l0; l < lf_end; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                rlin *li = &x.lin[l * WMAT_LIN_COUNT + k];
                if (!li->active) continue;
                /* the soft state's h (last soft weights) for the report */
                wmat__cbq_round_weights(&li->r, li->Wq, 0, nt);
                soft_sum += wmat__cbq_round_soft_fraction(&li->r, 1e-3) * (double)li->out * li->in;
                soft_n += (int64_t)li->out * li->in;
                wmat__cbq_round_weights(&li->r, li->Wq, 1, nt);
                wmat__cbq_round_write(&li->r, li->res);
                wmat_qresult_dequant(li->res, li->qW);
                li->final = 1;
                lin_free(li);
            }
        if (info) {
            info->first[w_idx] = l0;
            info->blocks[w_idx] = l1 - l0;
            info->err_before[w_idx] = eb;
            info->err_after[w_idx] = ea;
            info->loss_first[w_idx] = lf;
            info->loss_last[w_idx] = ll;
            info->n_windows = w_idx + 1;
        }
        if (progress) {
            char what[160];
            snprintf(what, sizeof what, "cbq window %d/%d (blocks %d-%d): output error %.4e -> %.4e, loss %.4e -> %.4e",
                     w_idx + 1, n_win, l0, l1 - 1, eb, ea, lf, ll);
            if (progress(user, what, (uint64_t)(w_idx + 1), (uint64_t)n_win)) {
                rc = wmat_set_error(WMAT_ERR_CANCELLED, "cbq: cancelled");
                goto done;
            }
        }
        if (last) break;
        /* both streams past the finalized blocks */
        for (int l = l0; l < lf_end; l++) {
            x.use_fp = 1;
            if ((rc = advance(&x, l, Xf, ncal))) goto done;
            x.use_fp = 0;
            if ((rc = advance(&x, l, Xq, ncal))) goto done;
        }
    }
    if (info) {
        info->soft_fraction = soft_n ? soft_sum / (double)soft_n : 0.0;
        info->seconds = wmat__now() - t_start;
    }
done:
    if (x.lin)
        for (int i = 0; i < L * WMAT_LIN_COUNT; i++) lin_free(&x.lin[i]);
    if (x.acts)
        for (int j = 0; j < wlen; j++) acts_free(&x.acts[j]);
    void *bufs[] = {x.lin, x.anorm, x.fnorm, x.acts, x.rope_cos, x.rope_sin, x.att, x.out, x.dx, x.dxn, x.dao, x.dq,
                    x.dk, x.dv, x.dhs, x.dhg, x.dhu, x.gscr, Xq, Xf, Yt, ord};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) wmat__free(bufs[i]);
    return rc;
}
