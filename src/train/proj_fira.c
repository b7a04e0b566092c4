/* Fira (Chen et al. 2024, "Fira: can we achieve full-rank training of LLMs
 * under low-rank constraint?") as a projector around any optimizer.
 *
 * GaLore's step (proj_galore.c: P from the gradient's top-r singular
 * vectors every gap steps, the optimizer's states on R = P^T G, update
 * scale * P N) plus what GaLore throws away: the residual G - P R of the
 * gradient outside the subspace, scaled column by column by how much the
 * optimizer scaled the projected gradient there,
 *   phi_j = ||N_:j|| / (||R_:j|| + 1e-8)   (rows of R and N when the
 *                                           projection is on the right),
 *   S = (G - P R) diag(phi),
 * and a norm-growth limiter: when ||S_t|| > gamma ||S_{t-1}|| (gamma 1.01)
 * S_t is scaled down to gamma ||S_{t-1}||, and the limited norm is what the
 * next step compares against. The first step has nothing to compare with
 * and passes unchanged.
 *   W -= lr * (scale * P N + S + wd * W)
 *
 * The residual is the paper's G - P R; the authors' code subtracts
 * scale * P R instead (identical at scale 1, the default here). phi and
 * the limiter follow the authors' code; N is the optimizer's update with
 * its bias correction, which the authors fold into the step size, so the
 * residual sees the same factor either way.
 *
 * State: GaLore's P (or Q), then ||S_{t-1}|| and a flag "there is a
 * previous norm" (a zero norm is a legal reference, e.g. a full-rank P). */
#include "optim.h"

#include <math.h>
#include <string.h>

#define FIRA_GAMMA 1.01

static void fira_plan(const wmat__proj_params *pp, int rows, int cols, size_t *pn, size_t *state_floats)
{
    wmat__galore_plan(pp, rows, cols, pn, state_floats);
    *state_floats += 2;
}

/* GaLore's scratch, then S (max_n) and phi (the longer side) */
static size_t fira_carve(const wmat__proj_params *pp, const wmat__proj_sizes *z, float *base,
                         wmat__galore_scratch *g, float **S, float **phi)
{
    size_t off = wmat__galore_carve(pp, z, base, g);
    if (base) *S = base + off;
    off += (z->max_n + 15) & ~(size_t)15;
    if (base) *phi = base + off;
    off += (size_t)(z->max_rows > z->max_cols ? z->max_rows : z->max_cols);
    return off;
}

static size_t fira_scratch_floats(const wmat__proj_params *pp, const wmat__proj_sizes *z)
{
    wmat__galore_scratch g;
    return fira_carve(pp, z, NULL, &g, NULL, NULL);
}

static int fira_step(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const wmat__proj_target *t,
                     const wmat__optim_hparams *h, const wmat__optimizer *opt)
{
    const int m = t->rows, n = t->cols, r = wmat__galore_rank(pp, m, n), left = m <= n;
    float *P = t->proj_state;
    size_t pfl, pn;
    wmat__galore_plan(pp, m, n, &pn, &pfl);
    float *lim = t->proj_state + pfl; /* [0] ||S_{t-1}||, [1] 1 when [0] is set */
    wmat__galore_scratch sc;
    float *S = NULL, *phi = NULL;
    fira_carve(pp, &ctx->sizes, ctx->scratch, &sc, &S, &phi);
    int rc = wmat__galore_refresh(pp, ctx, &sc, t->g, m, n, P);
    if (rc) return rc;
    wmat__galore_down(P, t->g, m, n, r, sc.R);
    wmat__galore_direction(opt, h, t->opt_state, sc.R, sc.N, pn);

    /* phi per column of R (r, n) on the left, per row of R (m, r) on the
     * right: the long side, one factor per row/column of the residual */
    if (left) {
        for (int j = 0; j < n; j++) {
            double sn = 0.0, sr = 0.0;
            for (int i = 0; i < r; i++) {
                const double a = sc.N[(size_t)i * n + j], b = sc.R[(size_t)i * n + j];
                sn += a * a;
                sr += b * b;
            }
            phi[j] = (float)(sqrt(sn) / (sqrt(sr) + 1e-8));
        }
    } else {
        for (int i = 0; i < m; i++) {
            double sn = 0.0, sr = 0.0;
            for (int j = 0; j < r; j++) {
                const double a = sc.N[(size_t)i * r + j], b = sc.R[(size_t)i * r + j];
                sn += a * a;
                sr += b * b;
            }
            phi[i] = (float)(sqrt(sn) / (sqrt(sr) + 1e-8));
        }
    }
    /* S = (G - P R) diag(phi) (left) or diag(phi) (G - R Q^T) (right) */
    memcpy(S, t->g, (size_t)m * n * sizeof(float));
    wmat__galore_up(P, sc.R, m, n, r, -1.0f, S);
    double ss = 0.0;
    for (int i = 0; i < m; i++) {
        float *row = S + (size_t)i * n;
        for (int j = 0; j < n; j++) {
            row[j] *= left ? phi[j] : phi[i];
            ss += (double)row[j] * row[j];
        }
    }
    double norm = sqrt(ss), f = 1.0;
    if (lim[1] != 0.0f) {
        const double g = norm / ((double)lim[0] + 1e-8);
        if (g > FIRA_GAMMA) f = FIRA_GAMMA / g;
    }
    lim[0] = (float)(norm * f);
    lim[1] = 1.0f;

    const float wd = h->weight_decay, lr = h->lr, a = (float)(-(double)lr * f);
    if (wd > 0)
        for (size_t i = 0; i < (size_t)m * n; i++) t->p[i] -= lr * wd * t->p[i];
    for (size_t i = 0; i < (size_t)m * n; i++) t->p[i] += a * S[i];
    wmat__galore_up(P, sc.N, m, n, r, -lr * pp->scale, t->p);
    return WMAT_OK;
}

const wmat__projector wmat__proj_fira = {
    .name = "fira",
    .summary = "Fira: GaLore plus the out-of-subspace gradient scaled by the optimizer's per-column gain, "
               "norm growth limited to 1.01x per step",
    .plan = fira_plan,
    .scratch_floats = fira_scratch_floats,
    .step = fira_step,
};
