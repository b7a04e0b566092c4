/* Compacter (Karimi Mahabadi et al. 2021; SPECS.md I8, reference
 * rabeehk/compacter seq2seq/hypercomplex): a bottleneck adapter on the
 * OUTPUT y (d = out) of the linear it targets,
 *
 *     y <- y + Up(gelu(Down(y))),   Down: d -> m, Up: m -> d,  m = c->rank,
 *
 * both PHM layers, x -> x W + b with W = sum_{i<n} A_i (x) B_i (Kronecker
 * product, W (in_a, out_a) in the reference's x W orientation): A_i (n, n)
 * the PHM rule, ONE set shared by every adapter of the model (Down and Up
 * of all layers: the registry's trained shared tensor, its gradient summed
 * over them), B_i = s_i t_i^T of rank 1 per PHM layer (s_i in_a / n,
 * t_i out_a / n floats), a bias per PHM layer; gelu is gelu_new (tanh).
 * n = 4 (COMPACTER_N): d and m must be multiples of it. Compacter++ is this
 * on down_proj (after the FFN), Compacter on o_proj and down_proj
 * (--lora-targets down / o,down); m = d / rf (rf 8 on mix4m: m 32).
 *
 * Init as the reference's defaults: s, t glorot-uniform with gain sqrt(2)
 * (torch's fans of the (n, in_a/n, 1) and (n, 1, out_a/n) tensors), A
 * normal with std 1e-4 (phm_c_init normal, phm_init_range), biases 0: the
 * layer starts within ~1e-4 of the base. The reference also trains the
 * layer norms; here they stay frozen as under every adapter.
 *
 * Per layer the tensors are down (n, d/n + m/n) = rows [s_i | t_i], its
 * bias (m), up (n, m/n + d/n), its bias (d). Forward forms the two dense W
 * (d m floats each) and runs them as GEMMs; backward forms dW = x^T dh and
 * contracts it against A, s, t. Not a weight delta (output_side,
 * not_mergeable): no merged model, no PEFT file; the trainer evaluates it
 * through its own forward. act: y (BT d) and Down's pre-activation (BT m). */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <math.h>
#include <string.h>

#define COMPACTER_N WMAT__PHM_N
#define COMPACTER_A_STD 1e-4f

static void cp_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    const int n = COMPACTER_N;
    rows[0] = n; /* Down: [s_i | t_i] */
    cols[0] = out / n + c->rank / n;
    rows[1] = c->rank; /* Down's bias */
    cols[1] = 0;
    rows[2] = n; /* Up: [s_i | t_i] */
    cols[2] = c->rank / n + out / n;
    rows[3] = out; /* Up's bias */
    cols[3] = 0;
}

static void cp_tshapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)c, (void)in, (void)out;
    rows[0] = COMPACTER_N; /* A_i, n x n each, row-major */
    cols[0] = COMPACTER_N * COMPACTER_N;
}

static int cp_init_tshared(const wmat__adapter_cfg *c, float *const *tw, int in, int out, wmat_rng *rng)
{
    (void)c, (void)in, (void)out;
    for (int j = 0; j < COMPACTER_N * COMPACTER_N * COMPACTER_N; j++) tw[0][j] = COMPACTER_A_STD * wmat_rng_normal(rng);
    return WMAT_OK;
}

static int cp_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)in;
    const int n = COMPACTER_N;
    if (c->out_max && out > c->out_max)
        return wmat_set_error(WMAT_ERR_INTERNAL, "compacter: the %s layer (out %d) is larger than out_max %d", what, out,
                              c->out_max);
    if (c->rank < 1 || c->rank % n || out % n)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "compacter: the %s layer's output (%d) and the bottleneck (--lora-rank %d) must be positive "
                              "multiples of the PHM size n = %d",
                              what, out, c->rank, n);
    return WMAT_OK;
}

/* y (BT, out) and hp (BT, m): act_floats has no out, so it takes the
 * largest adapted output, c->out_max (set by the trainer for entries with
 * shared tensors) */
static size_t cp_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * ((size_t)c->out_max + c->rank); }

/* Scratch: Wd (d m), Wu (m d), dWd, dWu, h (BT m), dh (BT m). */
static size_t cp_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in;
    return 4 * (size_t)out * c->rank + 2 * (size_t)BT * c->rank;
}
static float cp_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static float glorot(wmat_rng *rng, int fan_in, int fan_out)
{
    const float b = sqrtf(2.0f) * sqrtf(6.0f / (float)(fan_in + fan_out));
    return (2.0f * wmat_rng_uniform(rng) - 1.0f) * b;
}

/* one PHM layer's [s_i | t_i] rows (in_a -> out_a) */
static void init_phm(float *st, int in_a, int out_a, wmat_rng *rng)
{
    const int n = COMPACTER_N, ia = in_a / n, oa = out_a / n;
    for (int i = 0; i < n; i++) {
        float *s = st + (size_t)i * (ia + oa), *t = s + ia;
        for (int a = 0; a < ia; a++) s[a] = glorot(rng, ia, n);      /* (n, ia, 1): fan_in ia, fan_out n */
        for (int b = 0; b < oa; b++) t[b] = glorot(rng, oa, n * oa); /* (n, 1, oa): fan_in oa, fan_out n oa */
    }
}

static int cp_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)fixed, (void)base, (void)W, (void)in;
    init_phm(w[0], out, c->rank, rng);
    init_phm(w[2], c->rank, out, rng);
    return WMAT_OK; /* biases 0 */
}

/* W (in_a, out_a) = sum_i A_i (x) s_i t_i^T */
void wmat__phm_weight(const float *A, const float *st, int in_a, int out_a, float *W)
{
    const int n = COMPACTER_N, ia = in_a / n, oa = out_a / n;
    memset(W, 0, (size_t)in_a * out_a * sizeof(float));
    for (int i = 0; i < n; i++) {
        const float *Ai = A + (size_t)i * n * n, *s = st + (size_t)i * (ia + oa), *t = s + ia;
        for (int p = 0; p < n; p++)
            for (int a = 0; a < ia; a++) {
                float *row = W + (size_t)(p * ia + a) * out_a;
                for (int q = 0; q < n; q++) {
                    const float f = Ai[p * n + q] * s[a];
                    for (int b = 0; b < oa; b++) row[q * oa + b] += f * t[b];
                }
            }
    }
}

/* dA += <dW, A_i (x) s t^T> by A, dst (the layer's [ds | dt]) likewise */
static void phm_grad(const float *A, const float *st, const float *dW, int in_a, int out_a, float *dA, float *dst)
{
    const int n = COMPACTER_N, ia = in_a / n, oa = out_a / n;
    for (int i = 0; i < n; i++) {
        const float *Ai = A + (size_t)i * n * n, *s = st + (size_t)i * (ia + oa), *t = s + ia;
        float *ds = dst ? dst + (size_t)i * (ia + oa) : NULL, *dt = ds ? ds + ia : NULL;
        for (int p = 0; p < n; p++)
            for (int q = 0; q < n; q++) {
                double ga = 0;
                for (int a = 0; a < ia; a++) {
                    const float *row = dW + (size_t)(p * ia + a) * out_a + q * oa;
                    double u = 0; /* sum_b dW t_b */
                    for (int b = 0; b < oa; b++) u += (double)row[b] * t[b];
                    ga += u * s[a];
                    if (ds) ds[a] += (float)(u * Ai[p * n + q]);
                    if (dt) {
                        const float f = Ai[p * n + q] * s[a];
                        for (int b = 0; b < oa; b++) dt[b] += f * row[b];
                    }
                }
                if (dA) dA[(size_t)i * n * n + p * n + q] += (float)ga;
            }
    }
}

#define GELU_K 0.7978845608028654f /* sqrt(2 / pi) */
static float gelu(float x) { return 0.5f * x * (1.0f + tanhf(GELU_K * (x + 0.044715f * x * x * x))); }
static float gelu_d(float x)
{
    const float th = tanhf(GELU_K * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
}

/* act: y (BT, out), hp (BT, m) */
static void cp_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed, (void)base, (void)X, (void)in;
    const int m = c->rank, d = out;
    float *y = act, *hp = act + (size_t)BT * d;
    float *Wd = scratch, *Wu = Wd + (size_t)d * m, *h = scratch + 4 * (size_t)d * m;
    memcpy(y, Y, (size_t)BT * d * sizeof(float));
    wmat__phm_weight(c->tw[0], w[0], d, m, Wd);
    wmat__phm_weight(c->tw[0], w[2], m, d, Wu);
    for (size_t t = 0; t < (size_t)BT; t++) memcpy(hp + t * m, w[1], (size_t)m * sizeof(float));
    wmat_sgemm(0, 0, BT, m, d, 1.0f, y, d, Wd, m, 1.0f, hp, m); /* hp = y Wd + bd */
    for (size_t j = 0; j < (size_t)BT * m; j++) h[j] = gelu(hp[j]);
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int o = 0; o < d; o++) Y[t * d + o] += w[3][o];
    wmat_sgemm(0, 0, BT, d, m, 1.0f, h, m, Wu, d, 1.0f, Y, d); /* Y += gelu(hp) Wu + bu */
}

/* dX: (BT, out), written with dY + dhp Wd^T, the gradient of y */
static void cp_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base, (void)X, (void)in;
    const int m = c->rank, d = out;
    const float *y = act, *hp = act + (size_t)BT * d;
    float *Wd = scratch, *Wu = Wd + (size_t)d * m, *dWd = Wu + (size_t)d * m, *dWu = dWd + (size_t)d * m;
    float *h = dWu + (size_t)d * m, *dh = h + (size_t)BT * m;
    float *dA = c->tg ? c->tg[0] : NULL;
    wmat__phm_weight(c->tw[0], w[0], d, m, Wd);
    wmat__phm_weight(c->tw[0], w[2], m, d, Wu);
    for (size_t j = 0; j < (size_t)BT * m; j++) h[j] = gelu(hp[j]);
    if (dw[2] || dA) {
        wmat_sgemm(1, 0, m, d, BT, 1.0f, h, m, dY, d, 0.0f, dWu, d); /* dWu = h^T dY */
        phm_grad(c->tw[0], w[2], dWu, m, d, dA, dw[2]);
    }
    if (dw[3])
        for (int o = 0; o < d; o++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += dY[t * d + o];
            dw[3][o] += (float)acc;
        }
    wmat_sgemm(0, 1, BT, m, d, 1.0f, dY, d, Wu, d, 0.0f, dh, m); /* dh = dY Wu^T */
    for (size_t j = 0; j < (size_t)BT * m; j++) dh[j] *= gelu_d(hp[j]); /* dhp */
    if (dw[1])
        for (int j = 0; j < m; j++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += dh[t * m + j];
            dw[1][j] += (float)acc;
        }
    if (dw[0] || dA) {
        wmat_sgemm(1, 0, d, m, BT, 1.0f, y, d, dh, m, 0.0f, dWd, m); /* dWd = y^T dhp */
        phm_grad(c->tw[0], w[0], dWd, d, m, dA, dw[0]);
    }
    if (dX) {
        memcpy(dX, dY, (size_t)BT * d * sizeof(float));
        wmat_sgemm(0, 1, BT, d, m, 1.0f, dh, m, Wd, m, 1.0f, dX, d); /* dy = dY + dhp Wd^T */
    }
}

const wmat__adapter wmat__adapter_compacter = {
    .name = "compacter",
    .summary = "Compacter: y + Up(gelu(Down(y))) on the linear's output, PHM layers sum_i A_i (x) s_i t_i^T (n 4, "
               "A shared by all), bottleneck --lora-rank; not mergeable (Compacter++: --lora-targets down)",
    .n_tensors = 4,
    .tensor_key = {"phm_down", "phm_down_bias", "phm_up", "phm_up_bias"},
    .rows_are_out = {0, 0, 0, 1},
    .shapes = cp_shapes,
    .check = cp_check,
    .n_tshared = 1,
    .tshared_key = {"phm_rule"},
    .tshared_shapes = cp_tshapes,
    .init_tshared = cp_init_tshared,
    .output_side = 1,
    .not_mergeable = "Compacter is not a weight delta (a nonlinear bottleneck on the layer's output): it cannot be merged "
                     "into W; keep the trained adapter in a training checkpoint (--checkpoint)",
    .act_floats = cp_act_floats,
    .scratch_floats = cp_scratch_floats,
    .scale = cp_scale,
    .init = cp_init,
    .forward = cp_forward,
    .backward = cp_backward,
};
