/* S2-LoRA-style sparsely shared LoRA (SPECS.md I9; no public code: the
 * mechanism is reconstructed from the paper's abstract). Per kind of
 * linear (all q_proj of the model, all k_proj, ...: one weight-shape
 * class) one TRAINED pair A (r, in), B (out, r) shared by the layers of
 * that kind, and per matrix a trained vector lambda (r):
 *
 *     dW_l = s B diag(lambda_l) A,   s = alpha / r.
 *
 * A, B are the registry's trained shared tensors (one group per kind:
 * their gradient is the sum over the layers of the kind). Init as LoRA's:
 * A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (the model starts as the base),
 * lambda = 1. Sparsity of lambda: not an L1 term in the loss but its
 * proximal step, soft-thresholding after every optimizer step,
 *
 *     lambda <- sign(lambda) max(|lambda| - lr mu, 0),   mu = c->l1,
 *
 * which gives exact zeros (a subgradient of mu |lambda| under AdamW would
 * only jitter around 0). mu 0: no penalty. Merge is exact (W += dW).
 * PEFT has no such adapter (no --lora-out). Forward keeps xa = X A^T. */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <math.h>
#include <string.h>

static void s2_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in, (void)out;
    rows[0] = c->rank; /* lambda: a vector */
    cols[0] = 0;
}

static int s2_group(int k) { return k; }

static void s2_tshapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = c->rank; /* A */
    cols[0] = in;
    rows[1] = out; /* B */
    cols[1] = c->rank;
}

static int s2_init_tshared(const wmat__adapter_cfg *c, float *const *tw, int in, int out, wmat_rng *rng)
{
    (void)out;
    const float bound = 1.0f / sqrtf((float)in);
    for (size_t j = 0; j < (size_t)c->rank * in; j++) tw[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    return WMAT_OK; /* B = 0 */
}

static int s2_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)in, (void)out, (void)what;
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "s2lora: rank must be positive");
    if (!(c->l1 >= 0)) return wmat_set_error(WMAT_ERR_INVALID, "s2lora: the L1 weight mu must be >= 0 (got %g)", (double)c->l1);
    return WMAT_OK;
}

static size_t s2_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
static size_t s2_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return 2 * (size_t)BT * c->rank;
}
static float s2_scale(const wmat__adapter_cfg *c) { return c->alpha / (float)c->rank; }

static int s2_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)fixed, (void)base, (void)W, (void)in, (void)out, (void)rng;
    for (int j = 0; j < c->rank; j++) w[0][j] = 1.0f;
    return WMAT_OK;
}

static void s2_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed, (void)base;
    const int r = c->rank;
    const float s = s2_scale(c), *lam = w[0];
    float *xl = scratch;
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, c->tw[0], in, 0.0f, act, r); /* xa = X A^T */
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int j = 0; j < r; j++) xl[t * r + j] = act[t * r + j] * lam[j];
    wmat_sgemm(0, 1, BT, out, r, s, xl, r, c->tw[1], r, 1.0f, Y, out); /* Y += s (xa lambda) B^T */
}

static void s2_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base;
    const int r = c->rank;
    const float s = s2_scale(c), *lam = w[0];
    float *g = scratch, *xl = scratch + (size_t)BT * r;
    float *dA = c->tg ? c->tg[0] : NULL, *dB = c->tg ? c->tg[1] : NULL;
    if (dB) {
        for (size_t t = 0; t < (size_t)BT; t++)
            for (int j = 0; j < r; j++) xl[t * r + j] = act[t * r + j] * lam[j];
        wmat_sgemm(1, 0, out, r, BT, s, dY, out, xl, r, 1.0f, dB, r); /* dB += s dY^T (xa lambda) */
    }
    wmat_sgemm(0, 0, BT, r, out, s, dY, out, c->tw[1], r, 0.0f, g, r); /* g = s dY B: d(xa lambda) */
    if (dw[0])
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += (double)g[t * r + j] * act[t * r + j];
            dw[0][j] += (float)acc;
        }
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int j = 0; j < r; j++) g[t * r + j] *= lam[j]; /* dxa */
    if (dA) wmat_sgemm(1, 0, r, in, BT, 1.0f, g, r, X, in, 1.0f, dA, in);      /* dA += dxa^T X */
    if (dX) wmat_sgemm(0, 0, BT, in, r, 1.0f, g, r, c->tw[0], in, 1.0f, dX, in); /* dX += dxa A */
}

static int s2_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    const int r = c->rank;
    if (!c->tw) return wmat_set_error(WMAT_ERR_INTERNAL, "s2lora: merge without the shared A, B");
    float *Bl = wmat__malloc((size_t)out * r * sizeof(float) + 1);
    if (!Bl) return wmat_set_error(WMAT_ERR_NOMEM, "s2lora merge: out of memory");
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) Bl[(size_t)o * r + j] = c->tw[1][(size_t)o * r + j] * w[0][j];
    wmat_sgemm(0, 0, out, in, r, s2_scale(c), Bl, r, c->tw[0], in, 1.0f, W, in); /* W += s B diag(lambda) A */
    wmat__free(Bl);
    return WMAT_OK;
}

/* the proximal step of mu ||lambda||_1 at step size lr */
static void s2_prox(const wmat__adapter_cfg *c, int i, float *p, size_t n, float lr)
{
    if (i != 0 || !(c->l1 > 0)) return;
    const float th = lr * c->l1;
    for (size_t j = 0; j < n; j++) {
        const float a = fabsf(p[j]) - th;
        p[j] = a > 0 ? copysignf(a, p[j]) : 0.0f;
    }
}

const wmat__adapter wmat__adapter_s2lora = {
    .name = "s2lora",
    .summary = "S2-LoRA-style: W + (alpha/r) B diag(lambda) A, A (r, in) and B (out, r) trained and shared by all layers "
               "of a kind, lambda (r) per layer, soft-thresholded by lr * --l1 after each step",
    .n_tensors = 1,
    .tensor_key = {"s2lora_lambda"},
    .rows_are_out = {0},
    .shapes = s2_shapes,
    .check = s2_check,
    .n_tshared = 2,
    .tshared_key = {"s2lora_A", "s2lora_B"},
    .tshared_group = s2_group,
    .tshared_shapes = s2_tshapes,
    .init_tshared = s2_init_tshared,
    .prox = s2_prox,
    .act_floats = s2_act_floats,
    .scratch_floats = s2_scratch_floats,
    .scale = s2_scale,
    .init = s2_init,
    .forward = s2_forward,
    .backward = s2_backward,
    .merge = s2_merge,
};
