/* GradNormLoRP (Huang et al. 2024, "Gradient weight-normalized low-rank
 * projection for efficient LLM training") as a projector around any
 * optimizer, from the paper's equations (the authors' repository does not
 * run them: see /work/shared/docs/SPECS.md I2).
 *
 * Each projected weight is weight-normalized per output row,
 *   W_i = g_i V_i / ||V_i||,
 * with V = W and g_i = ||W_i|| at the first step. From W's gradient G:
 *   dg_i = <G_i, V_i> / ||V_i||
 *   dV_i = (g_i / ||V_i||) (G_i - (<G_i, V_i> / ||V_i||^2) V_i)
 * dV goes through GaLore (proj_galore.c: P from its top-r singular vectors
 * every gap steps, R = P^T dV or dV Q); the wrapped optimizer runs on
 * [R, dg] as one vector, so its states (8-bit ones with adamw8bit) cover
 * the projected direction and the magnitudes; with its update [N, Ng]:
 *   V <- V - lr * scale * P N,   g <- (g - lr * Ng) (1 - lr wd),
 * and W is materialized as g_i V_i / ||V_i|| for the forward. Decoupled
 * decay of W is decay of g (the direction has no scale to decay).
 *
 * V itself is not kept: W_i / g_i is its direction, so storing ||V_i||
 * (which the update's size depends on) is enough. State: GaLore's P (or
 * Q), g (rows), ||V|| (rows), a flag "g and ||V|| are set". A row whose
 * magnitude reaches exactly 0 has lost its direction and stays 0. */
#include "optim.h"

#include <math.h>
#include <string.h>

static void gnl_plan(const wmat__proj_params *pp, int rows, int cols, size_t *pn, size_t *state_floats)
{
    wmat__galore_plan(pp, rows, cols, pn, state_floats);
    *pn += (size_t)rows;                 /* dg after R */
    *state_floats += 2 * (size_t)rows + 1;
}

/* GaLore's scratch (its R and N hold pn = R + dg), then dV (max_n) */
static size_t gnl_carve(const wmat__proj_params *pp, const wmat__proj_sizes *z, float *base,
                        wmat__galore_scratch *g, float **dV)
{
    size_t off = wmat__galore_carve(pp, z, base, g);
    if (base) *dV = base + off;
    return off + z->max_n;
}

static size_t gnl_scratch_floats(const wmat__proj_params *pp, const wmat__proj_sizes *z)
{
    wmat__galore_scratch g;
    return gnl_carve(pp, z, NULL, &g, NULL);
}

static double row_norm(const float *x, int n)
{
    double s = 0.0;
    for (int j = 0; j < n; j++) s += (double)x[j] * x[j];
    return sqrt(s);
}

static int gnl_step(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const wmat__proj_target *t,
                    const wmat__optim_hparams *h, const wmat__optimizer *opt)
{
    const int m = t->rows, n = t->cols, r = wmat__galore_rank(pp, m, n);
    size_t pf, pr;
    wmat__galore_plan(pp, m, n, &pr, &pf);
    float *P = t->proj_state, *gm = P + pf, *vn = gm + m, *set = vn + m;
    wmat__galore_scratch sc;
    float *dV = NULL;
    gnl_carve(pp, &ctx->sizes, ctx->scratch, &sc, &dV);
    float *W = t->p;
    const float *G = t->g;
    if (*set == 0.0f) {
        for (int i = 0; i < m; i++) gm[i] = vn[i] = (float)row_norm(W + (size_t)i * n, n);
        *set = 1.0f;
    }
    /* dg and dV; the direction V_i / ||V_i|| is W_i / g_i */
    float *dg = sc.R + pr;
    for (int i = 0; i < m; i++) {
        const float *w = W + (size_t)i * n, *gr = G + (size_t)i * n;
        const double s = gm[i] != 0.0f ? 1.0 / gm[i] : 0.0;
        double dot = 0.0;
        for (int j = 0; j < n; j++) dot += (double)gr[j] * w[j];
        dot *= s;
        dg[i] = (float)dot;
        const double c = vn[i] > 0.0f ? (double)gm[i] / vn[i] : 0.0;
        float *d = dV + (size_t)i * n;
        for (int j = 0; j < n; j++) d[j] = (float)(c * (gr[j] - dot * s * w[j]));
    }
    int rc = wmat__galore_refresh(pp, ctx, &sc, dV, m, n, P);
    if (rc) return rc;
    wmat__galore_down(P, dV, m, n, r, sc.R);
    wmat__galore_direction(opt, h, t->opt_state, sc.R, sc.N, pr + (size_t)m);
    /* W <- V, V -= lr scale P N, then W = g V / ||V|| row by row */
    for (int i = 0; i < m; i++) {
        const float f = gm[i] != 0.0f ? vn[i] / gm[i] : 0.0f;
        float *w = W + (size_t)i * n;
        for (int j = 0; j < n; j++) w[j] *= f;
    }
    wmat__galore_up(P, sc.N, m, n, r, -h->lr * pp->scale, W);
    const float *Ng = sc.N + pr, keep = 1.0f - h->lr * h->weight_decay;
    for (int i = 0; i < m; i++) {
        float *w = W + (size_t)i * n;
        const double nv = row_norm(w, n);
        const float g = (gm[i] - h->lr * Ng[i]) * keep;
        const float f = nv > 0.0 ? (float)(g / nv) : 0.0f;
        for (int j = 0; j < n; j++) w[j] *= f;
        gm[i] = g;
        vn[i] = (float)nv;
    }
    return WMAT_OK;
}

const wmat__projector wmat__proj_gradnormlorp = {
    .name = "gradnormlorp",
    .summary = "GradNormLoRP: weights normalized per row (W = g V / ||V||), V's gradient through GaLore's "
               "projection, the optimizer on the projected direction and the magnitudes",
    .plan = gnl_plan,
    .scratch_floats = gnl_scratch_floats,
    .step = gnl_step,
};
