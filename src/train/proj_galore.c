/* GaLore (Zhao et al. 2024) as a projector around any optimizer. For a
 * weight W (m, n), every `gap` steps the top-r singular vectors of its
 * gradient G give P (m, r) when m <= n ("left"), else Q (n, r) ("right").
 * The wrapped optimizer sees R = P^T G (r, n) or G Q (m, r), so its states
 * have that size; its update direction N is mapped back:
 *   W -= lr * (scale * P N + wd * W)     (or N Q^T on the right).
 * The SVD goes through LAPACK (src/linalg/linalg_train.h), or a randomized
 * range finder with one power iteration, whose Gaussian sketch draws from
 * the trainer's RNG (checkpointed, so a resumed run draws the same). */
#include "optim.h"

#include "../linalg/linalg.h"
#include "../linalg/linalg_train.h"

#include <string.h>

int wmat__galore_rank(const wmat__proj_params *pp, int rows, int cols)
{
    const int mn = rows < cols ? rows : cols;
    return pp->rank < mn ? pp->rank : mn;
}

void wmat__galore_plan(const wmat__proj_params *pp, int rows, int cols, size_t *pn, size_t *state_floats)
{
    const int r = wmat__galore_rank(pp, rows, cols);
    const int left = rows <= cols;
    *pn = left ? (size_t)r * cols : (size_t)rows * r;
    *state_floats = (left ? (size_t)rows : (size_t)cols) * r; /* P or Q */
}

/* Scratch pieces start on 64-byte boundaries (the arena's alignment) so
 * LAPACK and the GEMMs see the same addresses' alignment as before. */
static size_t up16(size_t n) { return (n + 15) & ~(size_t)15; }

typedef wmat__galore_scratch scratch;

size_t wmat__galore_carve(const wmat__proj_params *pp, const wmat__proj_sizes *z, float *base, scratch *s)
{
    const size_t kk = (size_t)pp->rank + 8, md = (size_t)(z->max_rows > z->max_cols ? z->max_rows : z->max_cols);
    const size_t sz[7] = {z->max_pn, z->max_pn, z->max_n + md * kk * 2 + kk * kk, z->max_n, md, md * md, z->max_n};
    float **dst[7] = {&s->R, &s->N, &s->A, &s->T, &s->S, &s->U, &s->VT};
    size_t off = 0;
    for (int i = 0; i < 7; i++) {
        if (base) *dst[i] = base + off;
        off += up16(sz[i]);
    }
    return off;
}

static size_t galore_scratch_floats(const wmat__proj_params *pp, const wmat__proj_sizes *z)
{
    scratch s;
    return wmat__galore_carve(pp, z, NULL, &s);
}

/* Top-r left singular vectors of G (m, n) into P (m, r). */
static int top_left(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const scratch *sc, const float *G, int m,
                    int n, int r, float *P)
{
    int rc;
    float *A = sc->A;
    if (!pp->randomized) {
        memcpy(A, G, (size_t)m * n * sizeof(float));
        const int k = m < n ? m : n;
        if ((rc = wmat__train_svd_thin(m, n, A, n, sc->S, sc->U, k, sc->VT, n))) return rc;
        for (int i = 0; i < m; i++) memcpy(P + (size_t)i * r, sc->U + (size_t)i * k, (size_t)r * sizeof(float));
        return WMAT_OK;
    }
    int kk = r + 8;
    if (kk > m) kk = m;
    if (kk > n) kk = n;
    float *Om = A;                       /* (n, kk) */
    float *Y = Om + (size_t)n * kk;      /* (m, kk) */
    float *Bm = Y + (size_t)m * kk;      /* (kk, n) */
    for (size_t i = 0; i < (size_t)n * kk; i++) Om[i] = wmat_rng_normal(ctx->rng);
    wmat_sgemm(0, 0, m, kk, n, 1.0f, G, n, Om, kk, 0.0f, Y, kk);
    if ((rc = wmat__train_orthonormalize(m, kk, Y, kk, sc->S))) return rc;
    /* one power iteration: Y = G (G^T Q), re-orthonormalized */
    wmat_sgemm(1, 0, n, kk, m, 1.0f, G, n, Y, kk, 0.0f, Om, kk);
    wmat_sgemm(0, 0, m, kk, n, 1.0f, G, n, Om, kk, 0.0f, Y, kk);
    if ((rc = wmat__train_orthonormalize(m, kk, Y, kk, sc->S))) return rc;
    wmat_sgemm(1, 0, kk, n, m, 1.0f, Y, kk, G, n, 0.0f, Bm, n); /* Q^T G (kk, n) */
    if ((rc = wmat__train_svd_thin(kk, n, Bm, n, sc->S, sc->U, kk, sc->VT, n))) return rc;
    wmat_sgemm(0, 0, m, r, kk, 1.0f, Y, kk, sc->U, kk, 0.0f, P, r); /* (m, kk) (kk, r): columns 0..r of U */
    return WMAT_OK;
}

int wmat__galore_refresh(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const scratch *sc, const float *G,
                         int m, int n, float *P)
{
    if (ctx->step0 % pp->gap) return WMAT_OK;
    const int r = wmat__galore_rank(pp, m, n);
    if (m <= n) return top_left(pp, ctx, sc, G, m, n, r, P);
    /* right: left vectors of G^T (n, m) */
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) sc->T[(size_t)j * m + i] = G[(size_t)i * n + j];
    return top_left(pp, ctx, sc, sc->T, n, m, r, P);
}

void wmat__galore_down(const float *P, const float *G, int m, int n, int r, float *R)
{
    if (m <= n)
        wmat_sgemm(1, 0, r, n, m, 1.0f, P, r, G, n, 0.0f, R, n); /* P^T G (r, n) */
    else
        wmat_sgemm(0, 0, m, r, n, 1.0f, G, n, P, r, 0.0f, R, r); /* G Q (m, r) */
}

void wmat__galore_up(const float *P, const float *N, int m, int n, int r, float a, float *W)
{
    if (m <= n)
        wmat_sgemm(0, 0, m, n, r, a, P, r, N, n, 1.0f, W, n); /* W += a P N */
    else
        wmat_sgemm(0, 1, m, n, r, a, N, r, P, r, 1.0f, W, n); /* W += a N Q^T */
}

void wmat__galore_direction(const wmat__optimizer *opt, const wmat__optim_hparams *h, void *const *state,
                            const float *R, float *N, size_t pn)
{
    /* the wrapped optimizer's step on a zero parameter with lr = -1 and no
     * decay leaves exactly its update in N */
    wmat__optim_hparams hp = *h;
    hp.lr = -1.0f;
    hp.weight_decay = 0.0f;
    memset(N, 0, pn * sizeof(float));
    opt->step(N, R, state, pn, &hp);
}

static int galore_step(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const wmat__proj_target *t,
                       const wmat__optim_hparams *h, const wmat__optimizer *opt)
{
    const int m = t->rows, n = t->cols, r = wmat__galore_rank(pp, m, n);
    float *P = t->proj_state; /* left: P (m, r); right: Q (n, r) */
    scratch sc;
    wmat__galore_carve(pp, &ctx->sizes, ctx->scratch, &sc);
    int rc = wmat__galore_refresh(pp, ctx, &sc, t->g, m, n, P);
    if (rc) return rc;
    const size_t pn = m <= n ? (size_t)r * n : (size_t)m * r;
    wmat__galore_down(P, t->g, m, n, r, sc.R);
    wmat__galore_direction(opt, h, t->opt_state, sc.R, sc.N, pn);
    const float wd = h->weight_decay, lr = h->lr;
    if (wd > 0)
        for (size_t i = 0; i < (size_t)m * n; i++) t->p[i] -= lr * wd * t->p[i];
    wmat__galore_up(P, sc.N, m, n, r, -lr * pp->scale, t->p);
    return WMAT_OK;
}

const wmat__projector wmat__proj_galore = {
    .name = "galore",
    .summary = "GaLore: optimizer states in the span of the gradient's top-r singular vectors, refreshed every gap steps",
    .plan = wmat__galore_plan,
    .scratch_floats = galore_scratch_floats,
    .step = galore_step,
};
