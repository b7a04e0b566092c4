/* Gradient projectors (Fira, GradNormLoRP) against literal computations
 * written here in double, and the 8-bit AdamW's quantization and memory.
 * (tests/test_train_registry.c runs every optimizer under every projector
 * on a tiny model and resumes each combination from a checkpoint bit for
 * bit.)
 *
 * Tolerances: a projector step in float against the same formulas in
 * double from the same P: |diff| <= 1e-5 * (1 + max|W|) (a few float
 * roundings of O(1) values). */
#include "test_util.h"
#include "train/optim.h"
#include "train/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One weight under a projector, driven directly (no trainer). */
typedef struct {
    const wmat__projector *pj;
    const wmat__optimizer *opt;
    wmat__proj_params pp;
    int m, n;
    size_t pn, pf;
    float *W, *pstate, *scratch;
    void *ost[WMAT__OPT_MAX_STATES];
    wmat__proj_sizes z;
    wmat_rng rng;
} harness;

static void h_init(harness *h, const char *proj, const char *opt, int m, int n, int rank, int gap, float scale)
{
    memset(h, 0, sizeof *h);
    h->pj = wmat__projector_find(proj);
    h->opt = wmat__optimizer_find(opt);
    assert_non_null(h->pj);
    assert_non_null(h->opt);
    h->pp = (wmat__proj_params){rank, gap, scale, 0};
    h->m = m;
    h->n = n;
    h->pj->plan(&h->pp, m, n, &h->pn, &h->pf);
    h->W = calloc((size_t)m * n, sizeof(float));
    h->pstate = calloc(h->pf, sizeof(float));
    for (int k = 0; k < h->opt->n_states; k++) {
        size_t e = h->opt->state_elems ? h->opt->state_elems(k, h->pn) : h->pn;
        h->ost[k] = calloc(e + 1, h->opt->states[k].elem_bytes);
    }
    h->z = (wmat__proj_sizes){m, n, (size_t)m * n, h->pn};
    h->scratch = wmat__aligned_alloc(h->pj->scratch_floats(&h->pp, &h->z) * sizeof(float));
    wmat_rng_seed(&h->rng, 7);
}

static void h_step(harness *h, int step0, const float *G, float lr, float wd)
{
    float *g = malloc((size_t)h->m * h->n * sizeof(float));
    memcpy(g, G, (size_t)h->m * h->n * sizeof(float));
    const wmat__proj_ctx ctx = {h->scratch, h->z, &h->rng, step0};
    const wmat__proj_target t = {h->W, g, h->m, h->n, h->ost, h->pstate};
    const wmat__optim_hparams hp = {.lr = lr, .weight_decay = wd, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                                    .momentum = 0.0f, .step = step0 + 1, .nt = 1};
    TU_OK(h->pj->step(&h->pp, &ctx, &t, &hp, h->opt));
    free(g);
}

static void h_free(harness *h)
{
    free(h->W);
    free(h->pstate);
    for (int k = 0; k < h->opt->n_states; k++) free(h->ost[k]);
    wmat__free(h->scratch);
}

static void randn(float *x, size_t n, wmat_rng *r, float s)
{
    for (size_t i = 0; i < n; i++) x[i] = s * wmat_rng_normal(r);
}

static void check_close(const char *what, const float *a, const double *b, size_t n)
{
    double mx = 0, err = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs(b[i]));
    for (size_t i = 0; i < n; i++) {
        const double d = tu_abs_diff(a[i], b[i]);
        if (d > err) err = d, worst = i;
    }
    if (!(err <= 1e-5 * (1 + mx))) fail_msg("%s: max diff %.3g at %zu (%.8g vs %.8g)", what, err, worst, a[worst], b[worst]);
}

/* P (m, r) or Q (n, r) from the projector state: orthonormal columns. */
static void check_orthonormal(const float *P, int k, int r)
{
    for (int a = 0; a < r; a++)
        for (int b = 0; b < r; b++) {
            double s = 0;
            for (int i = 0; i < k; i++) s += (double)P[(size_t)i * r + a] * P[(size_t)i * r + b];
            TU_ASSERT_NEAR(s, a == b ? 1.0 : 0.0, 1e-5);
        }
}

/* The full-space image of the projection: left, P P^T X (m, n); right, X Q Q^T. */
static void project_full(double *out, const float *P, const double *X, int m, int n, int r, int left)
{
    const int k = left ? m : n;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int a = 0; a < r; a++)
                for (int q = 0; q < k; q++)
                    s += left ? (double)P[(size_t)i * r + a] * P[(size_t)q * r + a] * X[(size_t)q * n + j]
                              : X[(size_t)i * n + q] * P[(size_t)q * r + a] * P[(size_t)j * r + a];
            out[(size_t)i * n + j] = s;
        }
}

/* R = P^T X (r, n) or X Q (m, r) */
static void project_down(double *R, const float *P, const double *X, int m, int n, int r, int left)
{
    if (left)
        for (int a = 0; a < r; a++)
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int i = 0; i < m; i++) s += (double)P[(size_t)i * r + a] * X[(size_t)i * n + j];
                R[(size_t)a * n + j] = s;
            }
    else
        for (int i = 0; i < m; i++)
            for (int a = 0; a < r; a++) {
                double s = 0;
                for (int j = 0; j < n; j++) s += X[(size_t)i * n + j] * P[(size_t)j * r + a];
                R[(size_t)i * r + a] = s;
            }
}

/* N (r, n) or (m, r) back to (m, n): P N or N Q^T */
static void project_up(double *out, const float *P, const double *N, int m, int n, int r, int left)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int a = 0; a < r; a++)
                s += left ? (double)P[(size_t)i * r + a] * N[(size_t)a * n + j] : N[(size_t)i * r + a] * P[(size_t)j * r + a];
            out[(size_t)i * n + j] = s;
        }
}

/* ------------------------------------------------------------ Fira */

/* A gradient inside a fixed r-dimensional column (left) or row (right)
 * space leaves no residual: Fira's steps are GaLore's (1e-6). A generic
 * gradient does leave one (the comparison can fail). */
static void fira_vs_galore(int m, int n, int generic)
{
    const int r = 3, left = m <= n;
    wmat_rng rng;
    wmat_rng_seed(&rng, 11);
    harness ga, fi;
    h_init(&ga, "galore", "adamw", m, n, r, 2, 1.5f);
    h_init(&fi, "fira", "adamw", m, n, r, 2, 1.5f);
    randn(ga.W, (size_t)m * n, &rng, 1.0f);
    memcpy(fi.W, ga.W, (size_t)m * n * sizeof(float));
    const int k = left ? m : n;
    float *U = malloc((size_t)k * r * sizeof(float)), *C = malloc((size_t)k * r * sizeof(float) + (size_t)m * n * 4);
    float *G = malloc((size_t)m * n * sizeof(float));
    randn(U, (size_t)k * r, &rng, 1.0f);
    for (int s = 0; s < 5; s++) {
        if (generic) {
            randn(G, (size_t)m * n, &rng, 1.0f);
        } else {
            const int o = left ? n : m; /* the other side */
            randn(C, (size_t)o * r, &rng, 1.0f);
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++) {
                    double v = 0;
                    for (int a = 0; a < r; a++)
                        v += left ? (double)U[(size_t)i * r + a] * C[(size_t)j * r + a]
                                  : (double)C[(size_t)i * r + a] * U[(size_t)j * r + a];
                    G[(size_t)i * n + j] = (float)v;
                }
        }
        h_step(&ga, s, G, 0.05f, 0.01f);
        h_step(&fi, s, G, 0.05f, 0.01f);
    }
    double mx = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) mx = fmax(mx, tu_abs_diff(ga.W[i], fi.W[i]));
    print_message("fira vs galore (%d x %d, %s gradient): max |dW| %.3g\n", m, n, generic ? "generic" : "rank-3", mx);
    if (generic) assert_true(mx > 1e-3);
    else assert_true(mx <= 1e-6);
    free(U);
    free(C);
    free(G);
    h_free(&ga);
    h_free(&fi);
}

static void test_fira_zero_residual_is_galore(void **state)
{
    (void)state;
    fira_vs_galore(6, 10, 0);
    fira_vs_galore(10, 6, 0);
    fira_vs_galore(6, 10, 1);
}

/* One Adam step from zero states: N = R / (|R| + eps) elementwise; phi,
 * the residual and the update as the formulas say. */
static void fira_literal(int m, int n)
{
    const int r = 2, left = m <= n;
    const float lr = 0.1f, scale = 0.7f;
    wmat_rng rng;
    wmat_rng_seed(&rng, 5);
    harness h;
    h_init(&h, "fira", "adamw", m, n, r, 10, scale);
    float *G = malloc((size_t)m * n * sizeof(float));
    randn(h.W, (size_t)m * n, &rng, 1.0f);
    randn(G, (size_t)m * n, &rng, 1.0f);
    double *W0 = malloc((size_t)m * n * sizeof(double)), *Gd = malloc((size_t)m * n * sizeof(double));
    for (size_t i = 0; i < (size_t)m * n; i++) W0[i] = h.W[i], Gd[i] = G[i];
    h_step(&h, 0, G, lr, 0.0f);
    const float *P = h.pstate;
    check_orthonormal(P, left ? m : n, r);
    const size_t pn = left ? (size_t)r * n : (size_t)m * r;
    double *R = malloc(pn * sizeof(double)), *N = malloc(pn * sizeof(double));
    double *PN = malloc((size_t)m * n * sizeof(double)), *PR = malloc((size_t)m * n * sizeof(double));
    double *ref = malloc((size_t)m * n * sizeof(double));
    project_down(R, P, Gd, m, n, r, left);
    for (size_t i = 0; i < pn; i++) N[i] = R[i] / (fabs(R[i]) + 1e-8);
    project_up(PN, P, N, m, n, r, left);
    project_up(PR, P, R, m, n, r, left);
    const int L = left ? n : m; /* phi per column of R (left) or row (right) */
    double *phi = malloc((size_t)L * sizeof(double)), ss = 0;
    for (int c = 0; c < L; c++) {
        double sn = 0, sr = 0;
        for (int a = 0; a < r; a++) {
            const size_t ix = left ? (size_t)a * n + c : (size_t)c * r + a;
            sn += N[ix] * N[ix];
            sr += R[ix] * R[ix];
        }
        phi[c] = sqrt(sn) / (sqrt(sr) + 1e-8);
    }
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            const size_t ix = (size_t)i * n + j;
            const double S = (Gd[ix] - PR[ix]) * phi[left ? j : i];
            ss += S * S;
            ref[ix] = W0[ix] - lr * (scale * PN[ix] + S);
        }
    check_close("fira one Adam step", h.W, ref, (size_t)m * n);
    /* the limiter's reference: ||S_1||, flagged */
    TU_ASSERT_NEAR(h.pstate[h.pf - 2], sqrt(ss), 1e-5 * (1 + sqrt(ss)));
    assert_true(h.pstate[h.pf - 1] == 1.0f);
    free(G);
    free(W0);
    free(Gd);
    free(R);
    free(N);
    free(PN);
    free(PR);
    free(ref);
    free(phi);
    h_free(&h);
}

static void test_fira_literal(void **state)
{
    (void)state;
    fira_literal(6, 9);
    fira_literal(9, 6);
}

/* SGD without momentum as the wrapped optimizer: N = R, phi = 1, so
 * S = G - P P^T G. A gradient 10x the previous one has its residual capped
 * at 1.01x the previous residual norm; a smaller one passes unchanged. */
static void test_fira_limiter(void **state)
{
    (void)state;
    const int m = 5, n = 8, r = 2;
    const float lr = 0.01f;
    wmat_rng rng;
    wmat_rng_seed(&rng, 9);
    harness h;
    h_init(&h, "fira", "sgd", m, n, r, 100, 1.0f);
    float *G = malloc((size_t)m * n * sizeof(float));
    double *Gd = malloc((size_t)m * n * sizeof(double)), *PG = malloc((size_t)m * n * sizeof(double));
    double *ref = malloc((size_t)m * n * sizeof(double));
    randn(h.W, (size_t)m * n, &rng, 1.0f);
    randn(G, (size_t)m * n, &rng, 1.0f);
    h_step(&h, 0, G, lr, 0.0f);
    const float *P = h.pstate;
    double s1 = 0;
    for (size_t i = 0; i < (size_t)m * n; i++) Gd[i] = G[i];
    project_full(PG, P, Gd, m, n, r, 1);
    for (size_t i = 0; i < (size_t)m * n; i++) s1 += (Gd[i] - PG[i]) * (Gd[i] - PG[i]);
    s1 = sqrt(s1);
    TU_ASSERT_NEAR(h.pstate[h.pf - 2], s1, 1e-5 * s1);
    const double mult[2] = {10.0, 0.5};
    double prev = s1;
    for (int s = 0; s < 2; s++) {
        for (size_t i = 0; i < (size_t)m * n; i++) G[i] = (float)(mult[s] * Gd[i]);
        double *Gs = malloc((size_t)m * n * sizeof(double)), *PGs = malloc((size_t)m * n * sizeof(double)), raw = 0;
        for (size_t i = 0; i < (size_t)m * n; i++) Gs[i] = G[i];
        project_full(PGs, P, Gs, m, n, r, 1);
        for (size_t i = 0; i < (size_t)m * n; i++) raw += (Gs[i] - PGs[i]) * (Gs[i] - PGs[i]);
        raw = sqrt(raw);
        const double f = raw / prev > 1.01 ? 1.01 * prev / raw : 1.0;
        for (size_t i = 0; i < (size_t)m * n; i++) ref[i] = h.W[i] - lr * (PGs[i] + f * (Gs[i] - PGs[i]));
        h_step(&h, 1 + s, G, lr, 0.0f);
        check_close(s == 0 ? "fira limited step" : "fira unlimited step", h.W, ref, (size_t)m * n);
        const double stored = raw * f;
        print_message("limiter: raw residual %.4g, previous %.4g, applied %.4g (stored %.4g)\n", raw, prev, stored,
                      h.pstate[h.pf - 2]);
        TU_ASSERT_NEAR(h.pstate[h.pf - 2], stored, 1e-5 * stored);
        if (s == 0) TU_ASSERT_NEAR(stored, 1.01 * s1, 1e-5 * s1);
        else TU_ASSERT_NEAR(f, 1.0, 0.0);
        prev = stored;
        free(Gs);
        free(PGs);
    }
    free(G);
    free(Gd);
    free(PG);
    free(ref);
    h_free(&h);
}

/* ------------------------------------------------------------ GradNormLoRP */

/* Three steps with SGD without momentum (N = R, Ng = dg) against the
 * paper's equations in double with an explicit V: the P of the state (set
 * at step 0 from dV, kept: gap 100) is the only thing taken from the code. */
static void gnl_literal(int m, int n, int r, float wd)
{
    const int left = m <= n;
    const float lr = 0.05f, scale = 0.8f;
    wmat_rng rng;
    wmat_rng_seed(&rng, 21);
    harness h;
    h_init(&h, "gradnormlorp", "sgd", m, n, r, 100, scale);
    const size_t mn = (size_t)m * n;
    float *G = malloc(mn * sizeof(float));
    double *V = malloc(mn * sizeof(double)), *g = malloc((size_t)m * sizeof(double)), *dV = malloc(mn * sizeof(double));
    double *dg = malloc((size_t)m * sizeof(double)), *PdV = malloc(mn * sizeof(double)), *ref = malloc(mn * sizeof(double));
    randn(h.W, mn, &rng, 1.0f);
    for (int i = 0; i < m; i++) {
        double s = 0;
        for (int j = 0; j < n; j++) s += (double)h.W[(size_t)i * n + j] * h.W[(size_t)i * n + j];
        g[i] = sqrt(s);
        for (int j = 0; j < n; j++) V[(size_t)i * n + j] = h.W[(size_t)i * n + j];
    }
    for (int s = 0; s < 3; s++) {
        randn(G, mn, &rng, 1.0f);
        for (int i = 0; i < m; i++) {
            double vv = 0, gv = 0;
            for (int j = 0; j < n; j++) {
                vv += V[(size_t)i * n + j] * V[(size_t)i * n + j];
                gv += (double)G[(size_t)i * n + j] * V[(size_t)i * n + j];
            }
            const double nv = sqrt(vv);
            dg[i] = gv / nv;
            for (int j = 0; j < n; j++)
                dV[(size_t)i * n + j] = g[i] / nv * (G[(size_t)i * n + j] - gv / vv * V[(size_t)i * n + j]);
        }
        h_step(&h, s, G, lr, wd);
        if (s == 0) check_orthonormal(h.pstate, left ? m : n, r);
        project_full(PdV, h.pstate, dV, m, n, r, left);
        for (int i = 0; i < m; i++) {
            double vv = 0;
            for (int j = 0; j < n; j++) {
                V[(size_t)i * n + j] -= lr * scale * PdV[(size_t)i * n + j];
                vv += V[(size_t)i * n + j] * V[(size_t)i * n + j];
            }
            g[i] = (g[i] - lr * dg[i]) * (1.0 - (double)lr * wd);
            for (int j = 0; j < n; j++) ref[(size_t)i * n + j] = g[i] * V[(size_t)i * n + j] / sqrt(vv);
        }
        check_close("gradnormlorp step", h.W, ref, mn);
    }
    /* the state's magnitudes are g */
    size_t pr, pf;
    wmat__galore_plan(&h.pp, m, n, &pr, &pf);
    for (int i = 0; i < m; i++) TU_ASSERT_NEAR(h.pstate[pf + i], g[i], 1e-5 * (1 + fabs(g[i])));
    free(G);
    free(V);
    free(g);
    free(dV);
    free(dg);
    free(PdV);
    free(ref);
    h_free(&h);
}

static void test_gradnormlorp_literal(void **state)
{
    (void)state;
    gnl_literal(5, 7, 5, 0.0f);  /* full rank: P P^T = I */
    gnl_literal(5, 7, 2, 0.0f);
    gnl_literal(8, 4, 3, 0.1f);  /* right projection, decay */
}

/* ------------------------------------------------------------ 8-bit AdamW */

/* bitsandbytes' dynamic code books, written out decade by decade: decade e
 * (0..6) has 2^e (signed, each sign) or 2^(e+1) (unsigned) values
 * 10^(e-6) * (midpoints of equal steps over [0.1, 1]), plus 0 and 1. */
static int book(double *out, int is_signed)
{
    int k = 0;
    out[k++] = 0.0;
    out[k++] = 1.0;
    for (int e = 0; e <= 6; e++) {
        const int steps = is_signed ? (1 << e) : (2 << e);
        for (int j = 0; j < steps; j++) {
            const double v = pow(10.0, e - 6) * (0.1 + 0.9 * (j + 0.5) / steps);
            out[k++] = v;
            if (is_signed) out[k++] = -v;
        }
    }
    return k;
}

static void sort_book(double *b)
{
    for (int a = 1; a < 256; a++)
        for (int c = a; c > 0 && b[c - 1] > b[c]; c--) {
            const double t = b[c];
            b[c] = b[c - 1];
            b[c - 1] = t;
        }
}

static double nearest_value(const double *b, int nb, double x)
{
    double best = b[0];
    for (int i = 1; i < nb; i++)
        if (fabs(b[i] - x) < fabs(best - x)) best = b[i];
    return best;
}

static void test_adamw8bit_quantization(void **state)
{
    (void)state;
    double sb[300], ub[300];
    assert_int_equal(book(sb, 1), 256);
    assert_int_equal(book(ub, 0), 256);
    sort_book(sb);
    sort_book(ub); /* codes index the ascending book */
    assert_true(sb[127] == 0.0 && ub[0] == 0.0 && sb[255] == 1.0 && ub[255] == 1.0);
    const wmat__optimizer *o8 = wmat__optimizer_find("adamw8bit"), *o32 = wmat__optimizer_find("adamw");
    assert_non_null(o8);
    const size_t n = 5000; /* blocks of 2048: 2048, 2048, 904 */
    const size_t nb = o8->state_elems(1, n);
    assert_int_equal(nb, 3);
    assert_int_equal(o8->state_elems(0, n), n);
    wmat_rng rng;
    wmat_rng_seed(&rng, 3);
    float *g = malloc(n * sizeof(float)), *p8 = calloc(n, sizeof(float)), *p32 = calloc(n, sizeof(float));
    void *s8[4], *s32[2];
    for (int k = 0; k < 4; k++) s8[k] = calloc(o8->state_elems(k, n), o8->states[k].elem_bytes);
    for (int k = 0; k < 2; k++) s32[k] = calloc(n, sizeof(float));
    /* gradients over six decades, a few exactly 0 */
    for (size_t i = 0; i < n; i++) g[i] = wmat_rng_normal(&rng) * powf(10.0f, -3.0f * wmat_rng_uniform(&rng));
    for (size_t i = 0; i < n; i += 97) g[i] = 0.0f;
    wmat__optim_hparams h = {.lr = 1e-3f, .weight_decay = 0.0f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f, .step = 1, .nt = 1};
    o8->step(p8, g, s8, n, &h);
    o32->step(p32, g, s32, n, &h);
    /* the first step sees exact moments: the same update, bit for bit */
    assert_memory_equal(p8, p32, n * sizeof(float));
    /* what is stored: per block absmax, codes = the nearest book value */
    const uint8_t *mq = s8[0], *vq = s8[2];
    const float *ma = s8[1], *va = s8[3], *m32 = s32[0], *v32 = s32[1];
    size_t tiny_v = 0;
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * 2048, i1 = i0 + 2048 < n ? i0 + 2048 : n;
        float am = 0, av = 0;
        for (size_t i = i0; i < i1; i++) am = fmaxf(am, fabsf(m32[i])), av = fmaxf(av, v32[i]);
        assert_true(ma[b] == am);
        assert_true(va[b] == av);
        for (size_t i = i0; i < i1; i++) {
            /* the code's value is the nearest book value (a point within
             * 1e-6 of a midpoint may go either way in float) */
            const double xm = m32[i] / am, xv = v32[i] / av;
            const double dm = sb[mq[i]], dv = ub[vq[i]];
            if (!(fabs(xm - dm) <= fabs(xm - nearest_value(sb, 256, xm)) + 1e-6))
                fail_msg("m[%zu] = %.8g x absmax: code %d (%.8g) is not the nearest", i, xm, mq[i], dm);
            if (xv > 0 && nearest_value(ub, 256, xv) == 0.0) {
                /* a non-zero v below half the smallest code keeps that code */
                tiny_v++;
                assert_int_equal(vq[i], 1);
            } else if (!(fabs(xv - dv) <= fabs(xv - nearest_value(ub, 256, xv)) + 1e-6)) {
                fail_msg("v[%zu] = %.8g x absmax: code %d (%.8g) is not the nearest", i, xv, vq[i], dv);
            }
        }
    }
    print_message("8-bit: %zu non-zero v below half the smallest code kept at the smallest code\n", tiny_v);
    assert_true(tiny_v > 0); /* the gradients span enough decades to reach it */
    /* 100 more steps: the weights follow fp32 AdamW's closely */
    double dd = 0, dn = 0;
    for (int s = 2; s <= 101; s++) {
        for (size_t i = 0; i < n; i++) g[i] = wmat_rng_normal(&rng) * 1e-2f + 1e-2f * (float)((int)(i % 7) - 3);
        h.step = s;
        o8->step(p8, g, s8, n, &h);
        o32->step(p32, g, s32, n, &h);
    }
    for (size_t i = 0; i < n; i++) dd += (double)(p8[i] - p32[i]) * (p8[i] - p32[i]), dn += (double)p32[i] * p32[i];
    print_message("8-bit vs fp32 AdamW after 101 steps: relative weight difference %.3g\n", sqrt(dd / dn));
    assert_true(sqrt(dd / dn) < 0.05); /* measured 0.034: 8-bit rounding of the moments, a random walk */
    free(g);
    free(p8);
    free(p32);
    for (int k = 0; k < 4; k++) free(s8[k]);
    for (int k = 0; k < 2; k++) free(s32[k]);
}

/* The optimizer arena of a full fine-tune of mix4m: 8-bit states are a
 * quarter of AdamW's (2 + 8/2048 bytes per weight, plus one block's scales
 * for every small tensor). */
static void test_adamw8bit_memory(void **state)
{
    (void)state;
    TU_NEED_DATA(path, "models/mix4m.bin");
    wmat_load_params lp = wmat_load_default_params();
    wmat_model *m;
    TU_OK(wmat_model_load(&m, path, &lp));
    wmat_context oc = wmat_context_default();
    oc.n_threads = 1;
    size_t bytes[2];
    const char *names[2] = {"adamw", "adamw8bit"};
    for (int k = 0; k < 2; k++) {
        wmat_train_params p = wmat_train_default_params();
        p.exec = &oc;
        p.batch = 1;
        p.ctx = 16;
        p.optimizer_name = names[k];
        wmat_trainer *t;
        TU_OK(wmat_trainer_create(&t, m, &p));
        wmat_train_memory mem;
        wmat_trainer_memory(t, &mem);
        bytes[k] = mem.optim;
        if (k == 0) assert_int_equal(mem.optim, 8 * (size_t)mem.trainable);
        wmat_trainer_free(t);
    }
    const double ratio = (double)bytes[1] / (double)bytes[0];
    print_message("mix4m full fine-tune: optimizer state adamw8bit %zu B vs adamw %zu B (%.2f%%)\n", bytes[1], bytes[0],
                  100 * ratio);
    assert_true(ratio <= 0.2510);
    assert_true(ratio >= 0.25);
    wmat_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fira_zero_residual_is_galore),
        cmocka_unit_test(test_fira_literal),
        cmocka_unit_test(test_fira_limiter),
        cmocka_unit_test(test_gradnormlorp_literal),
        cmocka_unit_test(test_adamw8bit_quantization),
        cmocka_unit_test(test_adamw8bit_memory),
    };
    return tu_run_tests("projectors", tests, NULL, NULL);
}
