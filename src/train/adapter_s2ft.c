/* S2FT, structured sparse fine-tuning (Yang et al., NeurIPS 2024): train a
 * few whole input units of a linear (o_proj: attention heads, head_dim
 * columns each; down_proj: FFN channels, one column each; the other
 * linears: single input features) and nothing else of it.
 *
 * The paper co-permutes the selected heads / channels to the front of the
 * coupled matrices so the trained part is one contiguous dense block. Here
 * the permutation is the layer's fixed data (perm, in int32: the k selected
 * columns ascending, then the others ascending), and the trained block is a
 * dense update D (out, k) of those columns: the layer is
 *   Y = X W^T + X[:, perm[0..k)] D^T,
 * i.e. W with D added into the selected columns. The forward gathers the
 * selected columns of X into a contiguous (BT, k) block (the permuted
 * layout, materialized for k columns only) and runs one dense GEMM; the
 * backward forms only dD = dY^T X_sel (out x k: the full weight gradient's
 * selected columns, no other column of dW is computed) and adds dY D into
 * dX's selected columns (the base's dY W is there already: "dX as usual").
 * Nothing is kept from forward for backward (X is gathered again).
 * Decoupled weight decay pulls D, hence the selected columns, towards the
 * base (the paper decays the weights themselves; the gradient is the same).
 * Scale 1. PEFT has no S2FT type: no --lora-out; the trained model is the
 * merged one (and the checkpoint).
 *
 * Selection rule (one registry entry each, seeded by the run):
 *   s2ft        random units (the run's RNG: partial Fisher-Yates);
 *   s2ft-wnorm  the units whose columns of W have the largest Frobenius
 *               norm (needs an f32 base);
 *   s2ft-anorm  the units whose input activations have the largest norm
 *               (sum of x_j^2 over the unit's columns j) on calibration
 *               windows through the frozen model (the trainer's
 *               adapter_calib; wmat train: the training data).
 * Ties go to the lower unit. Units of a linear: rank r is the budget of
 * LoRA at rank r on the same matrix: u = floor(r (in + out) / (out g))
 * units of g columns (at least 1, at most in / g), so the trained floats
 * are at most LoRA's (equal when the division is exact: o_proj at r =
 * head_dim / 2 per head, down_proj whenever r (in + out) is a multiple of
 * out). The plan (before the trainer lays out tensors) sets each layer's
 * rank to its column count k = u g and hands init the unit size and, for
 * s2ft-anorm, the unit scores through init_rows:
 *   init_rows = [g, has_scores, score_0 .. score_{in/g - 1}].
 * Without a plan (the registry's kernel checks) rank is the column count,
 * g = 1, and s2ft-anorm falls back to random units.
 *
 * Not here: the paper's optional partner rows (q/k/v rows of the selected
 * heads, gate/up rows of the selected channels); targeting q/k/v/gate/up
 * trains their selected INPUT columns (residual features), which is not
 * the paper's coupling. S2FT proper is --lora-targets o,down. */
#include "adapter.h"

#include "../linalg/linalg.h"
#include "../quant/methods.h"
#include "core/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NLIN WMAT_LIN_COUNT
#define NSLOT 4 /* inputs: q/k/v, o, gate/up, down (wmat__calib_slot) */

enum { RULE_RANDOM = 0, RULE_WNORM = 1, RULE_ANORM = 2 };
static const char *const rule_name[3] = {"s2ft", "s2ft-wnorm", "s2ft-anorm"};

static void s2ft_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    rows[0] = out; /* D: the update of the k selected columns */
    cols[0] = c->rank;
}

static int check_rule(int rule, const wmat__adapter_cfg *c, const wmat_tensor *base, int in, const char *what)
{
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "%s: rank must be positive", rule_name[rule]);
    if (c->rank > in)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: rank %d is larger than the %s matrix's input width %d",
                              rule_name[rule], c->rank, what, in);
    return rule == RULE_WNORM ? wmat__adapter_check_f32(base, rule_name[rule], what) : WMAT_OK;
}
static int check_random(const wmat__adapter_cfg *c, const wmat_tensor *b, int in, int out, const char *what)
{
    (void)out;
    return check_rule(RULE_RANDOM, c, b, in, what);
}
static int check_wnorm(const wmat__adapter_cfg *c, const wmat_tensor *b, int in, int out, const char *what)
{
    (void)out;
    return check_rule(RULE_WNORM, c, b, in, what);
}
static int check_anorm(const wmat__adapter_cfg *c, const wmat_tensor *b, int in, int out, const char *what)
{
    (void)out;
    return check_rule(RULE_ANORM, c, b, in, what);
}

/* the permutation of the input columns (sized for any k: the trainer sizes
 * fixed data before the plan sets the layers' ranks) */
static size_t s2ft_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)c, (void)out;
    return (size_t)in * sizeof(int32_t);
}

static int s2ft_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    (void)c, (void)out;
    const int32_t *perm = fixed;
    unsigned char *seen = wmat__calloc((size_t)in + 1, 1);
    int ok = seen != NULL;
    for (int j = 0; j < in && ok; j++) {
        ok = perm[j] >= 0 && perm[j] < in && !seen[perm[j]];
        if (ok) seen[perm[j]] = 1;
    }
    wmat__free(seen);
    return ok;
}

static size_t s2ft_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}
static size_t s2ft_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return (size_t)BT * c->rank;
}
static float s2ft_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

/* ---- selection */

typedef struct {
    double s;
    int u;
} scored;

static int scored_cmp(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1; /* larger first */
    return (x->u > y->u) - (x->u < y->u);          /* ties: lower unit */
}

static int int_cmp(const void *a, const void *b)
{
    const int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* perm: the u chosen units' columns ascending, then the rest ascending;
 * sel: nu bytes of scratch. */
static void write_perm(int32_t *perm, const int *units, int u, int g, int in, unsigned char *sel)
{
    int p = 0;
    memset(sel, 0, (size_t)in / g);
    for (int i = 0; i < u; i++) {
        sel[units[i]] = 1;
        for (int t = 0; t < g; t++) perm[p++] = units[i] * g + t;
    }
    for (int v = 0; v < in / g; v++)
        if (!sel[v])
            for (int t = 0; t < g; t++) perm[p++] = v * g + t;
}

static int init_rule(int rule, const wmat__adapter_cfg *c, void *fixed, const float *W, int in, int out,
                     wmat_rng *rng)
{
    const int k = c->rank;
    int g = 1;
    const float *score = NULL;
    if (c->init_rows) {
        g = (int)c->init_rows[0];
        if (c->init_rows[1] != 0) score = c->init_rows + 2;
    }
    if (g < 1 || in % g || k % g || k > in)
        return wmat_set_error(WMAT_ERR_INTERNAL, "%s: %d columns in units of %d do not fit an input of %d",
                              rule_name[rule], k, g, in);
    const int nu = in / g, u = k / g;
    if (rule == RULE_WNORM && !W) return wmat__adapter_check_f32(NULL, rule_name[rule], "the layer's");
    int *units = wmat__malloc((size_t)nu * sizeof(int));
    scored *sc = wmat__malloc((size_t)nu * sizeof(scored));
    unsigned char *sel = wmat__malloc((size_t)nu);
    if (!units || !sc || !sel) {
        wmat__free(units), wmat__free(sc), wmat__free(sel);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", rule_name[rule]);
    }
    if (rule == RULE_WNORM || (rule == RULE_ANORM && score)) {
        for (int v = 0; v < nu; v++) {
            double s = 0;
            if (rule == RULE_ANORM)
                s = score[v];
            else
                for (int o = 0; o < out; o++)
                    for (int t = 0; t < g; t++) {
                        const double x = W[(size_t)o * in + (size_t)v * g + t];
                        s += x * x;
                    }
            sc[v].s = s;
            sc[v].u = v;
        }
        qsort(sc, (size_t)nu, sizeof *sc, scored_cmp);
        for (int i = 0; i < u; i++) units[i] = sc[i].u;
    } else {
        /* random (and s2ft-anorm without calibration scores) */
        for (int v = 0; v < nu; v++) units[v] = v;
        for (int i = 0; i < u; i++) {
            const int j = i + (int)(wmat_rng_u64(rng) % (uint64_t)(nu - i));
            const int tmp = units[i];
            units[i] = units[j];
            units[j] = tmp;
        }
    }
    qsort(units, (size_t)u, sizeof(int), int_cmp);
    write_perm(fixed, units, u, g, in, sel);
    wmat__free(units), wmat__free(sc), wmat__free(sel);
    return WMAT_OK;
}

static int init_random(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                       int in, int out, wmat_rng *rng)
{
    (void)w, (void)base; /* D = 0: the layer starts as the base */
    return init_rule(RULE_RANDOM, c, fixed, W, in, out, rng);
}
static int init_wnorm(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)w, (void)base;
    return init_rule(RULE_WNORM, c, fixed, W, in, out, rng);
}
static int init_anorm(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)w, (void)base;
    return init_rule(RULE_ANORM, c, fixed, W, in, out, rng);
}

/* ---- kernels */

static void gather(float *xs, const float *X, const int32_t *perm, int BT, int in, int k)
{
    for (int b = 0; b < BT; b++) {
        const float *x = X + (size_t)b * in;
        float *s = xs + (size_t)b * k;
        for (int j = 0; j < k; j++) s[j] = x[perm[j]];
    }
}

static void s2ft_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)base;
    const int k = c->rank;
    gather(scratch, X, fixed, BT, in, k);
    wmat_sgemm(0, 1, BT, out, k, 1.0f, scratch, k, w[0], k, 1.0f, Y, out); /* Y += X_sel D^T */
}

static void s2ft_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)act, (void)base;
    const int k = c->rank;
    const int32_t *perm = fixed;
    if (dw[0]) {
        gather(scratch, X, perm, BT, in, k);
        wmat_sgemm(1, 0, out, k, BT, 1.0f, dY, out, scratch, k, 1.0f, dw[0], k); /* dD += dY^T X_sel */
    }
    if (!dX) return;
    wmat_sgemm(0, 0, BT, k, out, 1.0f, dY, out, w[0], k, 0.0f, scratch, k); /* dY D (BT, k) */
    for (int b = 0; b < BT; b++) {
        float *dx = dX + (size_t)b * in;
        const float *s = scratch + (size_t)b * k;
        for (int j = 0; j < k; j++) dx[perm[j]] += s[j];
    }
}

static int s2ft_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    if (!fixed) return wmat_set_error(WMAT_ERR_INTERNAL, "s2ft: merge without the selected columns");
    const int k = c->rank;
    const int32_t *perm = fixed;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < k; j++) W[(size_t)o * in + perm[j]] += w[0][(size_t)o * k + j];
    return WMAT_OK;
}

/* ---- plan: units per layer, and activation norms for s2ft-anorm */

typedef struct {
    double *sq[NSLOT]; /* per layer: sum of x_j^2 of the slot's input (NULL: not wanted) */
    int L, width[NSLOT];
} anorm_state;

static int anorm_hook(void *user, int layer, wmat_linear_kind kind, const float *X, int T, int in, const wmat_tensor *W)
{
    (void)W;
    anorm_state *st = user;
    if (layer >= st->L || kind >= WMAT_LIN_COUNT) return 0;
    /* the first linear of an input sees it; k, v, up see the same X */
    if (!(kind == WMAT_LIN_Q || kind == WMAT_LIN_O || kind == WMAT_LIN_GATE || kind == WMAT_LIN_DOWN)) return 0;
    const int s = wmat__calib_slot(kind);
    if (!st->sq[s] || in != st->width[s]) return 0;
    double *q = st->sq[s] + (size_t)layer * in;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < in; j++) {
            const double x = X[(size_t)t * in + j];
            q[j] += x * x;
        }
    return 0;
}

static int plan_rule(int rule, const wmat__adapter_cfg *c, const wmat__adapter_plan_in *pin, wmat__adapter_cfg *lcfg,
                     unsigned char *on, void **owned, char *report, size_t cap)
{
    const char *name = rule_name[rule];
    *owned = NULL;
    if (report && cap) report[0] = 0;
    const wmat_config *mc = wmat_model_config(pin->m);
    const int L = mc->n_layers, r = c->rank;
    if (r < 1) return wmat_set_error(WMAT_ERR_INVALID, "%s: rank must be positive", name);
    int g_of[NLIN], u_of[NLIN], in_of[NLIN], out_of[NLIN];
    size_t nfl = 0;
    unsigned kinds = 0;
    for (int k = 0; k < NLIN; k++) {
        wmat__linear_shape(mc, (wmat_linear_kind)k, &out_of[k], &in_of[k]);
        g_of[k] = k == WMAT_LIN_O && mc->n_heads > 0 && in_of[k] % mc->n_heads == 0 ? in_of[k] / mc->n_heads : 1;
        const int nu = in_of[k] / g_of[k];
        long long u = (long long)r * (in_of[k] + out_of[k]) / ((long long)out_of[k] * g_of[k]);
        u_of[k] = (int)(u < 1 ? 1 : u > nu ? nu : u);
        for (int l = 0; l < L; l++)
            if (on[l * NLIN + k]) kinds |= 1u << k;
        if (kinds >> k & 1u) nfl += (size_t)L * (2 + (size_t)nu);
    }
    float *rows = wmat__calloc(nfl + 1, sizeof(float));
    if (!rows) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
    *owned = rows;
    anorm_state st;
    memset(&st, 0, sizeof st);
    st.L = L;
    int rc = WMAT_OK;
    wmat_runtime *rt = NULL;
    float *x = NULL;
    int windows = 0;
    if (rule == RULE_ANORM) {
        if (!pin->tokens || pin->ctx <= 0 || pin->n_tokens < (size_t)pin->ctx)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "%s: needs calibration tokens (at least one window of %d; the trainer's "
                                  "adapter_calib, wmat train's training data or --eva-data)",
                                  name, pin->ctx);
        for (int k = 0; k < NLIN && !rc; k++) {
            const int s = wmat__calib_slot((wmat_linear_kind)k);
            if (!(kinds >> k & 1u) || st.sq[s]) continue;
            st.width[s] = in_of[k];
            if (!(st.sq[s] = wmat__calloc((size_t)L * in_of[k], sizeof(double))))
                rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
        }
        if (!rc && !(x = wmat__malloc((size_t)pin->ctx * mc->dim * sizeof(float))))
            rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.ctx = pin->exec;
        rp.max_batch_tokens = pin->ctx;
        if (!rc) rc = wmat_runtime_create(&rt, pin->m, &rp);
        if (!rc) {
            wmat_runtime_set_hook(rt, anorm_hook, &st);
            const size_t n_win = pin->n_tokens / (size_t)pin->ctx;
            const size_t max_w = (size_t)(pin->max_batches > 0 ? pin->max_batches : 32) * (pin->batch > 0 ? pin->batch : 1);
            for (size_t wdx = 0; wdx < n_win && wdx < max_w && !rc; wdx++, windows++) {
                rc = wmat_forward_embed(rt, pin->tokens + wdx * (size_t)pin->ctx, pin->ctx, x);
                if (!rc) rc = wmat_forward_layers(rt, x, NULL, pin->ctx, 0, L);
            }
            wmat_runtime_set_hook(rt, NULL, NULL);
        }
    }
    /* the layers' column counts and init rows */
    size_t off = 0;
    long long trained = 0, lora = 0;
    for (int k = 0; k < NLIN && !rc; k++) {
        if (!(kinds >> k & 1u)) continue;
        const int g = g_of[k], nu = in_of[k] / g, s = wmat__calib_slot((wmat_linear_kind)k);
        for (int l = 0; l < L; l++) {
            float *ir = rows + off;
            off += 2 + (size_t)nu;
            if (!on[l * NLIN + k]) continue;
            wmat__adapter_cfg *lc = &lcfg[l * NLIN + k];
            lc->rank = u_of[k] * g;
            ir[0] = (float)g;
            if (rule == RULE_ANORM) {
                ir[1] = 1;
                const double *q = st.sq[s] + (size_t)l * in_of[k];
                for (int v = 0; v < nu; v++) {
                    double a = 0;
                    for (int t = 0; t < g; t++) a += q[(size_t)v * g + t];
                    ir[2 + v] = (float)sqrt(a);
                }
            }
            lc->init_rows = ir;
            trained += (long long)out_of[k] * lc->rank;
            lora += (long long)r * (in_of[k] + out_of[k]);
        }
    }
    if (!rc && report && cap) {
        size_t n = 0;
        int w = snprintf(report, cap, "%s: per layer", name);
        n = w > 0 ? (size_t)w : 0;
        for (int k = 0; k < NLIN && n < cap; k++) {
            if (!(kinds >> k & 1u)) continue;
            w = snprintf(report + n, cap - n, " %s %d of %d %s (%d of %d columns);", wmat_linear_name((wmat_linear_kind)k),
                         u_of[k], in_of[k] / g_of[k], k == WMAT_LIN_O ? "heads" : k == WMAT_LIN_DOWN ? "channels" : "features",
                         u_of[k] * g_of[k], in_of[k]);
            n += w > 0 ? (size_t)w : 0;
        }
        if (n < cap && rule == RULE_ANORM)
            snprintf(report + n, cap - n,
                     " %lld trained floats (LoRA r%d on the same matrices: %lld); activation norms from %d "
                     "calibration windows\n",
                     trained, r, lora, windows);
        else if (n < cap)
            snprintf(report + n, cap - n, " %lld trained floats (LoRA r%d on the same matrices: %lld)\n", trained, r,
                     lora);
    }
    if (rt) wmat_runtime_free(rt);
    wmat__free(x);
    for (int s = 0; s < NSLOT; s++) wmat__free(st.sq[s]);
    return rc;
}

static int plan_random(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                       unsigned char *on, void **owned, char *report, size_t cap)
{
    return plan_rule(RULE_RANDOM, c, in, lcfg, on, owned, report, cap);
}
static int plan_wnorm(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                      unsigned char *on, void **owned, char *report, size_t cap)
{
    return plan_rule(RULE_WNORM, c, in, lcfg, on, owned, report, cap);
}
static int plan_anorm(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                      unsigned char *on, void **owned, char *report, size_t cap)
{
    return plan_rule(RULE_ANORM, c, in, lcfg, on, owned, report, cap);
}

#define S2FT_ENTRY(sym_, name_, summary_, check_, init_, plan_)                                                         \
    const wmat__adapter sym_ = {                                                                                       \
        .name = name_,                                                                                                 \
        .summary = summary_,                                                                                           \
        .n_tensors = 1,                                                                                                \
        .tensor_key = {"s2ft_block"},                                                                                  \
        .rows_are_out = {1},                                                                                           \
        .shapes = s2ft_shapes,                                                                                         \
        .check = check_,                                                                                               \
        .fixed_bytes = s2ft_fixed_bytes,                                                                               \
        .fixed_valid = s2ft_fixed_valid,                                                                               \
        .plan = plan_,                                                                                                 \
        .act_floats = s2ft_act_floats,                                                                                 \
        .scratch_floats = s2ft_scratch_floats,                                                                         \
        .scale = s2ft_scale,                                                                                           \
        .init = init_,                                                                                                 \
        .forward = s2ft_forward,                                                                                       \
        .backward = s2ft_backward,                                                                                     \
        .merge = s2ft_merge,                                                                                           \
    }

S2FT_ENTRY(wmat__adapter_s2ft, "s2ft",
           "S2FT: dense update of a few random whole heads (o) / channels (down) / input columns, at LoRA rank r's budget",
           check_random, init_random, plan_random);
S2FT_ENTRY(wmat__adapter_s2ft_wnorm, "s2ft-wnorm", "S2FT with the units of largest weight-column norm (f32 base)",
           check_wnorm, init_wnorm, plan_wnorm);
S2FT_ENTRY(wmat__adapter_s2ft_anorm, "s2ft-anorm",
           "S2FT with the units of largest input-activation norm on calibration windows", check_anorm, init_anorm,
           plan_anorm);
