/* AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for
 * Parameter-Efficient Fine-Tuning"), as PEFT's tuners/adalora: the update
 * of a layer is an SVD-shaped product
 *
 *     dW = s B diag(E) A,   s = alpha / (r_init + 1e-5)   (alpha <= 0: r),
 *
 * A (r, in), E (r, 1), B (out, r); A, B ~ N(0, 0.02), E = 0 (the layer
 * starts as the base). The divisor stays the initial rank for the whole run
 * and in files (PEFT's ranknum). Three whole-model parts (adapter.h hooks):
 *
 * - extra_loss: w_orth times the orthogonality penalty, summed over the
 *   adapted layers' ||A A^T - I||_F and ||B^T B - I||_F (not squared) and
 *   divided by the number of those A and B tensors (PEFT's num_param counts
 *   both: twice the number of layers);
 * - after_step, after every optimizer step t (0-based, PEFT's global_step)
 *   of T: for every entry of A, E, B, I = |theta grad|, Ibar = b1 Ibar +
 *   (1 - b1) I, Ubar = b2 Ubar + (1 - b2) |I - Ibar| (b1 = b2 = 0.85); a
 *   triplet's score S_i = s(E_i) + mean_j s(A_ij) + mean_k s(B_ki) with
 *   s = Ibar Ubar. Budget b(t): b0 = sum of ranks while t <= t_init, then
 *   floor(b_T + (b0 - b_T)(1 - (t - t_init)/(T - t_final - t_init))^3),
 *   E masked every deltaT steps to it (threshold: the (b0 - b)-th smallest
 *   score of all triplets, E_i = 0 where S_i <= threshold; A, B rows stay;
 *   a masked E_i can regrow until the next masking); at t = T - t_final
 *   the mask to b_T = target_r x layers is final (averages reset), and
 *   every later step re-applies it. Importance averages and the mask (the
 *   rank pattern) live in the layer's fixed data: checkpoints keep them.
 * - PEFT files: peft_type ADALORA, keys lora_A, lora_E (r, 1), lora_B (no
 *   ".weight": PEFT's ParameterDict), each layer cut to the triplets its
 *   rank pattern keeps, rank_pattern in adapter_config.json (PEFT's
 *   resize_state_dict_by_rank_pattern); ranknum is not written (PEFT does
 *   not: it is init_r). A layer pruned to rank 0 writes no tensors.
 *
 * Defaults (wmat_train_params adalora_*): target_r round(2 r / 3) (PEFT's
 * 12 -> 8), t_init 10% and t_final 20% of the steps (docs SPECS.md I3:
 * PEFT's 0 and 0 leave a short run no steps at the final budget), deltaT 1,
 * w_orth 0.5 (PEFT). Forward keeps xa = X A^T (BT, r). */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADA_BETA1 0.85f
#define ADA_BETA2 0.85f
#define HDR 4 /* fixed: [0] 1 once a rank pattern exists, then 3 spare floats */

static int ri_of(const wmat__adapter_cfg *c) { return c->rank_init > 0 ? c->rank_init : c->rank; }

/* The schedule's settings with their defaults. */
static int ada_target(const wmat__adapter_cfg *c)
{
    if (c->ada.target_r > 0) return c->ada.target_r;
    const int t = (2 * c->rank + 1) / 3;
    return t > 0 ? t : 1;
}
static int ada_tinit(const wmat__adapter_cfg *c) { return c->ada.tinit >= 0 ? c->ada.tinit : c->steps / 10; }
static int ada_tfinal(const wmat__adapter_cfg *c) { return c->ada.tfinal >= 0 ? c->ada.tfinal : c->steps / 5; }
static int ada_deltat(const wmat__adapter_cfg *c) { return c->ada.deltat > 0 ? c->ada.deltat : 1; }
static float ada_orth(const wmat__adapter_cfg *c) { return c->ada.orth >= 0 ? c->ada.orth : 0.5f; }

static void ada_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = c->rank; /* A */
    cols[0] = in;
    rows[1] = c->rank; /* E (r, 1), as PEFT */
    cols[1] = 1;
    rows[2] = out; /* B */
    cols[2] = c->rank;
}

static int ada_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)in, (void)out, (void)what;
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "adalora: the initial rank must be positive");
    if (ada_target(c) > c->rank)
        return wmat_set_error(WMAT_ERR_INVALID, "adalora: target rank %d is above the initial rank %d (--lora-rank)",
                              ada_target(c), c->rank);
    if (c->steps > 0 && ada_tinit(c) >= c->steps - ada_tfinal(c))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "adalora: t_init %d and t_final %d leave no budgeting phase in %d steps (decrease them)",
                              ada_tinit(c), ada_tfinal(c), c->steps);
    return WMAT_OK;
}

/* Per layer: header, rank pattern (r floats, 1 kept / 0 masked), then the
 * averages Ibar, Ubar of A (r in each), E (r each), B (out r each). */
static size_t ada_fixed_floats(int r, int in, int out) { return HDR + (size_t)r + 2 * ((size_t)r * in + r + (size_t)out * r); }
static size_t ada_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    return ada_fixed_floats(c->rank, in, out) * sizeof(float);
}

static size_t ada_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
static size_t ada_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return 2 * (size_t)BT * c->rank;
}
static float ada_scale(const wmat__adapter_cfg *c)
{
    const float ranknum = (float)((double)ri_of(c) + 1e-5);
    return (c->alpha > 0 ? c->alpha : (float)c->rank) / ranknum;
}

static int ada_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    (void)base, (void)W;
    const int r = c->rank;
    for (size_t j = 0; j < (size_t)r * in; j++) w[0][j] = 0.02f * wmat_rng_normal(rng);
    for (size_t j = 0; j < (size_t)out * r; j++) w[2][j] = 0.02f * wmat_rng_normal(rng);
    if (fixed) { /* every triplet kept, no pattern yet (zeroed on entry) */
        float *pat = (float *)fixed + HDR;
        for (int j = 0; j < r; j++) pat[j] = 1.0f;
    }
    return WMAT_OK; /* E = 0 (zeroed on entry) */
}

static void ada_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                        const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed, (void)base;
    const int r = c->rank;
    const float *E = w[1];
    float *xe = scratch;
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, w[0], in, 0.0f, act, r); /* xa = X A^T */
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int j = 0; j < r; j++) xe[t * r + j] = act[t * r + j] * E[j];
    wmat_sgemm(0, 1, BT, out, r, ada_scale(c), xe, r, w[2], r, 1.0f, Y, out); /* Y += s (xa E) B^T */
}

static void ada_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                         const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                         const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base;
    const int r = c->rank;
    const float s = ada_scale(c), *E = w[1];
    float *xe = scratch, *dxe = scratch + (size_t)BT * r;
    if (dw[2]) {
        for (size_t t = 0; t < (size_t)BT; t++)
            for (int j = 0; j < r; j++) xe[t * r + j] = act[t * r + j] * E[j];
        wmat_sgemm(1, 0, out, r, BT, s, dY, out, xe, r, 1.0f, dw[2], r); /* dB += s dY^T (xa E) */
    }
    wmat_sgemm(0, 0, BT, r, out, s, dY, out, w[2], r, 0.0f, dxe, r); /* dxe = s dY B */
    if (dw[1])
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += (double)dxe[t * r + j] * act[t * r + j];
            dw[1][j] += (float)acc;
        }
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int j = 0; j < r; j++) dxe[t * r + j] *= E[j]; /* dxa */
    if (dw[0]) wmat_sgemm(1, 0, r, in, BT, 1.0f, dxe, r, X, in, 1.0f, dw[0], in); /* dA += dxa^T X */
    if (dX) wmat_sgemm(0, 0, BT, in, r, 1.0f, dxe, r, w[0], in, 1.0f, dX, in);    /* dX += dxa A */
}

static int ada_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    const int r = c->rank;
    float *BE = wmat__malloc((size_t)out * r * sizeof(float) + 1);
    if (!BE) return wmat_set_error(WMAT_ERR_NOMEM, "adalora merge: out of memory");
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) BE[(size_t)o * r + j] = w[2][(size_t)o * r + j] * w[1][j];
    wmat_sgemm(0, 0, out, in, r, ada_scale(c), BE, r, w[0], in, 1.0f, W, in); /* W += s (B E) A */
    wmat__free(BE);
    return WMAT_OK;
}

/* ------------------------------------------------------------ regularizer */

/* ||M||_F of M = P P^T - I (rows = 1: P (r, n) by rows, A) or P^T P - I
 * (P (n, r), B), and, when g is not NULL, g += coef dR/dP = coef 2 M P / R
 * (A) or coef 2 P M / R (B). */
static double orth_term(const float *P, int r, int n, int rows, float *g, double coef, double *M)
{
    for (int i = 0; i < r; i++)
        for (int j = 0; j <= i; j++) {
            double acc = 0;
            if (rows)
                for (int k = 0; k < n; k++) acc += (double)P[(size_t)i * n + k] * P[(size_t)j * n + k];
            else
                for (int k = 0; k < n; k++) acc += (double)P[(size_t)k * r + i] * P[(size_t)k * r + j];
            M[(size_t)i * r + j] = M[(size_t)j * r + i] = acc - (i == j);
        }
    double ss = 0;
    for (size_t i = 0; i < (size_t)r * r; i++) ss += M[i] * M[i];
    const double R = sqrt(ss);
    if (!g || !(R > 0)) return R;
    const double f = 2.0 * coef / R;
    if (rows) /* g (r, n) += f M P */
        for (int i = 0; i < r; i++)
            for (int k = 0; k < n; k++) {
                double acc = 0;
                for (int j = 0; j < r; j++) acc += M[(size_t)i * r + j] * P[(size_t)j * n + k];
                g[(size_t)i * n + k] += (float)(f * acc);
            }
    else /* g (n, r) += f P M */
        for (int k = 0; k < n; k++)
            for (int i = 0; i < r; i++) {
                double acc = 0;
                for (int j = 0; j < r; j++) acc += P[(size_t)k * r + j] * M[(size_t)j * r + i];
                g[(size_t)k * r + i] += (float)(f * acc);
            }
    return R;
}

static double ada_extra_loss(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n)
{
    const double w = ada_orth(c);
    if (!(w > 0) || n <= 0) return 0.0;
    const double coef = w / (2.0 * n); /* PEFT: the mean over the A and B tensors */
    int rmax = 0;
    for (int i = 0; i < n; i++) rmax = ly[i].cfg->rank > rmax ? ly[i].cfg->rank : rmax;
    double *M = malloc((size_t)rmax * rmax * sizeof(double) + 1), sum = 0;
    if (!M) return NAN; /* the trainer refuses a non-finite loss */
    for (int i = 0; i < n; i++) {
        const int r = ly[i].cfg->rank;
        sum += orth_term(ly[i].w[0], r, ly[i].in, 1, ly[i].g ? ly[i].g[0] : NULL, coef, M);
        sum += orth_term(ly[i].w[2], r, ly[i].out, 0, ly[i].g ? ly[i].g[2] : NULL, coef, M);
    }
    free(M);
    return coef * sum;
}

/* ------------------------------------------------------------ budget */

int wmat__adalora_budget(const wmat__adapter_cfg *c, int b0, int bT, int t, int *mask)
{
    const int ti = ada_tinit(c), tf = ada_tfinal(c), T = c->steps;
    if (t <= ti) {
        *mask = 0;
        return b0;
    }
    if (t > T - tf) {
        *mask = 1;
        return bT;
    }
    const double mul = 1.0 - (double)(t - ti) / (double)(T - tf - ti);
    *mask = t % ada_deltat(c) == 0;
    return (int)floor((double)(b0 - bT) * mul * mul * mul + (double)bT);
}

typedef struct {
    float *hdr, *pat, *iA, *uA, *iE, *uE, *iB, *uB;
} ada_state;

static ada_state state_of(void *fixed, int r, int in, int out)
{
    ada_state s;
    s.hdr = fixed;
    s.pat = s.hdr + HDR;
    s.iA = s.pat + r;
    s.uA = s.iA + (size_t)r * in;
    s.iE = s.uA + (size_t)r * in;
    s.uE = s.iE + r;
    s.iB = s.uE + r;
    s.uB = s.iB + (size_t)out * r;
    return s;
}

static void ema(float *ib, float *ub, const float *p, const float *g, size_t n)
{
    const float c1 = (float)(1.0 - (double)ADA_BETA1), c2 = (float)(1.0 - (double)ADA_BETA2);
    for (size_t i = 0; i < n; i++) {
        const float I = fabsf(p[i] * g[i]);
        ib[i] = ADA_BETA1 * ib[i] + c1 * I;
        ub[i] = ADA_BETA2 * ub[i] + c2 * fabsf(I - ib[i]);
    }
}

/* S_i of layer ly's triplets into S (r). */
static void triplet_scores(const wmat__adapter_layer *ly, double *S)
{
    const int r = ly->cfg->rank, in = ly->in, out = ly->out;
    const ada_state s = state_of(ly->fixed, r, in, out);
    for (int i = 0; i < r; i++) {
        double a = 0, b = 0;
        for (int k = 0; k < in; k++) a += (double)s.iA[(size_t)i * in + k] * s.uA[(size_t)i * in + k];
        for (int o = 0; o < out; o++) b += (double)s.iB[(size_t)o * r + i] * s.uB[(size_t)o * r + i];
        S[i] = (double)s.iE[i] * s.uE[i] + a / in + b / out;
    }
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Mask to `budget` of b0 triplets: the (b0 - budget)-th smallest score
 * is the threshold, E_i = 0 where S_i <= it; the pattern is the rest. */
static int mask_to_budget(const wmat__adapter_layer *ly, int n, int b0, int budget)
{
    double *S = malloc(2 * (size_t)b0 * sizeof(double) + 1);
    if (!S) return wmat_set_error(WMAT_ERR_NOMEM, "adalora: out of memory");
    double *sorted = S + b0;
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        triplet_scores(&ly[i], S + o);
        o += (size_t)ly[i].cfg->rank;
    }
    const int k = b0 - budget;
    double thr = -INFINITY;
    if (k > 0) {
        memcpy(sorted, S, (size_t)b0 * sizeof(double));
        qsort(sorted, (size_t)b0, sizeof(double), cmp_double);
        thr = sorted[k - 1];
    }
    o = 0;
    for (int i = 0; i < n; i++) {
        const int r = ly[i].cfg->rank;
        const ada_state s = state_of(ly[i].fixed, r, ly[i].in, ly[i].out);
        s.hdr[0] = 1.0f;
        for (int j = 0; j < r; j++) {
            const int keep = !(S[o + j] <= thr);
            s.pat[j] = keep ? 1.0f : 0.0f;
            if (!keep) ly[i].w[1][j] = 0.0f;
        }
        o += (size_t)r;
    }
    free(S);
    return WMAT_OK;
}

static int ada_after_step(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n, int step, int steps)
{
    (void)steps; /* c->steps: the schedule's T */
    const int T = c->steps, tf = ada_tfinal(c);
    int b0 = 0;
    for (int i = 0; i < n; i++) b0 += ly[i].cfg->rank;
    const int bT = ada_target(c) * n;
    if (step < T - tf) {
        for (int i = 0; i < n; i++) {
            const int r = ly[i].cfg->rank, in = ly[i].in, out = ly[i].out;
            const ada_state s = state_of(ly[i].fixed, r, in, out);
            ema(s.iA, s.uA, ly[i].w[0], ly[i].g[0], (size_t)r * in);
            ema(s.iE, s.uE, ly[i].w[1], ly[i].g[1], (size_t)r);
            ema(s.iB, s.uB, ly[i].w[2], ly[i].g[2], (size_t)out * r);
        }
        int mask;
        const int b = wmat__adalora_budget(c, b0, bT, step, &mask);
        return mask ? mask_to_budget(ly, n, b0, b) : WMAT_OK;
    }
    if (step == T - tf) {
        /* the final allocation (force_mask), then the averages are dropped */
        int rc = mask_to_budget(ly, n, b0, bT);
        for (int i = 0; i < n; i++) {
            const int r = ly[i].cfg->rank;
            const ada_state s = state_of(ly[i].fixed, r, ly[i].in, ly[i].out);
            memset(s.iA, 0, 2 * ((size_t)r * ly[i].in + r + (size_t)ly[i].out * r) * sizeof(float));
        }
        return rc;
    }
    for (int i = 0; i < n; i++) { /* the final phase: the pattern holds */
        const ada_state s = state_of(ly[i].fixed, ly[i].cfg->rank, ly[i].in, ly[i].out);
        if (s.hdr[0] == 0.0f) continue;
        for (int j = 0; j < ly[i].cfg->rank; j++)
            if (s.pat[j] == 0.0f) ly[i].w[1][j] = 0.0f;
    }
    return WMAT_OK;
}

/* ------------------------------------------------------------ PEFT */

static int ada_peft_rank(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    if (!fixed) return c->rank;
    const ada_state s = state_of((void *)fixed, c->rank, in, out);
    if (s.hdr[0] == 0.0f) return c->rank;
    int k = 0;
    for (int j = 0; j < c->rank; j++) k += s.pat[j] != 0.0f;
    return k;
}

static void ada_peft_export(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                            float *const *dst)
{
    const int r = c->rank, rl = ada_peft_rank(c, fixed, in, out);
    const ada_state s = state_of((void *)fixed, r, in, out);
    int q = 0;
    for (int j = 0; j < r; j++) {
        if (rl < r && s.pat[j] == 0.0f) continue;
        memcpy(dst[0] + (size_t)q * in, w[0] + (size_t)j * in, (size_t)in * sizeof(float));
        dst[1][q] = w[1][j];
        for (int o = 0; o < out; o++) dst[2][(size_t)o * rl + q] = w[2][(size_t)o * r + j];
        q++;
    }
}

static size_t ada_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    int k = snprintf(buf, n,
                     "  \"init_r\": %d,\n  \"target_r\": %d,\n  \"tinit\": %d,\n  \"tfinal\": %d,\n  \"deltaT\": %d,\n"
                     "  \"beta1\": %g,\n  \"beta2\": %g,\n  \"orth_reg_weight\": %g,\n  \"total_step\": %d,\n"
                     "  \"lora_alpha\": %g,\n  \"lora_dropout\": 0.0,\n  \"bias\": \"none\",\n"
                     "  \"fan_in_fan_out\": false,\n  \"init_lora_weights\": true,\n",
                     c->rank, ada_target(c), ada_tinit(c), ada_tfinal(c), ada_deltat(c), (double)ADA_BETA1,
                     (double)ADA_BETA2, (double)ada_orth(c), c->steps, (double)c->alpha);
    return k < 0 ? 0 : (size_t)k;
}

/* "rank_pattern": {"model.layers.L.<module>.lora_E": [true, ...], ...} as
 * PEFT keys it, or null before the first allocation. */
static size_t ada_config_layers(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n, char *buf, size_t cap)
{
    (void)c;
    size_t k = 0;
#define PUT(...)                                                                                                      \
    do {                                                                                                              \
        int m_ = snprintf(k < cap ? buf + k : NULL, k < cap ? cap - k : 0, __VA_ARGS__);                              \
        k += m_ > 0 ? (size_t)m_ : 0;                                                                                 \
    } while (0)
    int any = 0;
    for (int i = 0; i < n; i++)
        if (ly[i].fixed && ((const float *)ly[i].fixed)[0] != 0.0f) any = 1;
    if (!any) {
        PUT("  \"rank_pattern\": null,\n");
        return k;
    }
    PUT("  \"rank_pattern\": {");
    for (int i = 0; i < n; i++) {
        /* the layer's full pattern (at the initial rank) */
        const int r = ly[i].cfg->rank_init > 0 ? ly[i].cfg->rank_init : ly[i].cfg->rank;
        const ada_state s = state_of(ly[i].fixed, r, ly[i].in, ly[i].out);
        PUT("%s\n    \"model.layers.%d.%s.lora_E\": [", i ? "," : "", ly[i].layer, wmat__adapter_hf_module(ly[i].kind));
        for (int j = 0; j < r; j++) PUT("%s%s", j ? ", " : "", s.pat[j] != 0.0f ? "true" : "false");
        PUT("]");
    }
    PUT("\n  },\n");
#undef PUT
    return k;
}

static int ada_parse(const void *json, wmat__adapter_cfg *c)
{
    const cJSON *j = json;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "init_r"), *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 12; /* PEFT's default init_r */
    c->alpha = cJSON_IsNumber(a) ? (float)a->valuedouble : 8.0f; /* LoraConfig's default */
    return 1;
}

const wmat__adapter wmat__adapter_adalora = {
    .name = "adalora",
    .summary = "AdaLoRA: W + alpha/r0 B diag(E) A, E masked to a budget cut from r0 to target_r by importance",
    .n_tensors = 3,
    .tensor_key = {"lora_A", "lora_E", "lora_B"},
    .rows_are_out = {0, 0, 1},
    .shapes = ada_shapes,
    .check = ada_check,
    .fixed_bytes = ada_fixed_bytes,
    .peft_bare_keys = 1,
    .extra_loss = ada_extra_loss,
    .after_step = ada_after_step,
    .peft_config_layers = ada_config_layers,
    .peft_rank = ada_peft_rank,
    .act_floats = ada_act_floats,
    .scratch_floats = ada_scratch_floats,
    .scale = ada_scale,
    .init = ada_init,
    .forward = ada_forward,
    .backward = ada_backward,
    .merge = ada_merge,
    .peft_type = "ADALORA",
    .peft_config = ada_config,
    .peft_parse = ada_parse,
    .peft_export = ada_peft_export,
};
