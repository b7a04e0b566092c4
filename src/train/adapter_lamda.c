/* LaMDA (Azizi et al. 2024, "Low-dimensional Adaptation"): the update of a
 * layer is
 *
 *     dW = s B S A,   s = alpha / r,
 *
 * A (r, in) a projection frozen after its init, S (r, r) a small trained
 * core, B (out, r) trained and frozen column by column as training goes
 * on. As the authors' code (lamda.py, custom_trainer.py; docs SPECS.md
 * I5): A takes PEFT's default LoRA init (uniform, bound 1/sqrt(in)), S
 * nn.Linear's default (uniform, bound 1/sqrt(r)), B = 0 (the layer starts
 * as the base). Gradual freezing of B with eta = 0.3: for optimizer step t
 * of T the first floor(t / (eta T)) columns of B are frozen, all of B once
 * that reaches r (with eta 0.3 at most 3 columns freeze within T steps:
 * for r >= 4 B never freezes whole, as the reference behaves). The
 * reference zeroes the frozen columns' gradients, which leaves AdamW's
 * momentum and decay moving them; here they are frozen (the trainer's
 * frozen_cols hook: their values do not change).
 *
 * A is fixed data (no gradient, no state): trained floats per layer
 * r r + out r. PEFT has no LaMDA type (no --lora-out). Forward keeps
 * xa = X A^T and xs = xa S^T (BT, r each). */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <math.h>
#include <string.h>

#define LAMDA_ETA 0.3

static void lamda_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    rows[0] = c->rank; /* S */
    cols[0] = c->rank;
    rows[1] = out; /* B */
    cols[1] = c->rank;
}

static int lamda_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)in, (void)out, (void)what;
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "lamda: rank must be positive");
    return WMAT_OK;
}

/* A (r, in) */
static size_t lamda_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)out;
    return (size_t)c->rank * in * sizeof(float);
}

static size_t lamda_act_floats(const wmat__adapter_cfg *c, int BT) { return 2 * (size_t)BT * c->rank; }
static size_t lamda_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return 2 * (size_t)BT * c->rank;
}
static float lamda_scale(const wmat__adapter_cfg *c) { return c->alpha / (float)c->rank; }

static int lamda_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)base, (void)W, (void)out;
    const int r = c->rank;
    float *A = fixed;
    const float ba = 1.0f / sqrtf((float)in), bs = 1.0f / sqrtf((float)r);
    for (size_t j = 0; j < (size_t)r * in; j++) A[j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * ba;
    for (size_t j = 0; j < (size_t)r * r; j++) w[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bs;
    return WMAT_OK; /* B = 0 (zeroed on entry) */
}

static void lamda_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                          const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)scratch, (void)base;
    const int r = c->rank;
    const float *A = fixed;
    float *xa = act, *xs = act + (size_t)BT * r;
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, A, in, 0.0f, xa, r);                /* xa = X A^T */
    wmat_sgemm(0, 1, BT, r, r, 1.0f, xa, r, w[0], r, 0.0f, xs, r);               /* xs = xa S^T */
    wmat_sgemm(0, 1, BT, out, r, lamda_scale(c), xs, r, w[1], r, 1.0f, Y, out); /* Y += s xs B^T */
}

static void lamda_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                           const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                           const float *act, int BT, int in, int out)
{
    (void)base, (void)X;
    const int r = c->rank;
    const float s = lamda_scale(c), *A = fixed, *xa = act, *xs = act + (size_t)BT * r;
    float *dxs = scratch, *dxa = scratch + (size_t)BT * r;
    if (dw[1]) wmat_sgemm(1, 0, out, r, BT, s, dY, out, xs, r, 1.0f, dw[1], r);  /* dB += s dY^T xs */
    wmat_sgemm(0, 0, BT, r, out, s, dY, out, w[1], r, 0.0f, dxs, r);             /* dxs = s dY B */
    if (dw[0]) wmat_sgemm(1, 0, r, r, BT, 1.0f, dxs, r, xa, r, 1.0f, dw[0], r);   /* dS += dxs^T xa */
    if (dX) {
        wmat_sgemm(0, 0, BT, r, r, 1.0f, dxs, r, w[0], r, 0.0f, dxa, r);          /* dxa = dxs S */
        wmat_sgemm(0, 0, BT, in, r, 1.0f, dxa, r, A, in, 1.0f, dX, in);           /* dX += dxa A */
    }
}

static int lamda_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    const int r = c->rank;
    if (!fixed) return wmat_set_error(WMAT_ERR_INTERNAL, "lamda: merge without the projection A");
    float *BS = wmat__malloc((size_t)out * r * sizeof(float) + 1);
    if (!BS) return wmat_set_error(WMAT_ERR_NOMEM, "lamda merge: out of memory");
    wmat_sgemm(0, 0, out, r, r, 1.0f, w[1], r, w[0], r, 0.0f, BS, r);                      /* B S */
    wmat_sgemm(0, 0, out, in, r, lamda_scale(c), BS, r, (const float *)fixed, in, 1.0f, W, in); /* W += s (B S) A */
    wmat__free(BS);
    return WMAT_OK;
}

/* B's leading columns: floor(step / (eta steps)) of them (all once r) */
static int lamda_frozen_cols(const wmat__adapter_cfg *c, int i, int cols, int step, int steps)
{
    (void)c;
    if (i != 1 || steps <= 0) return 0;
    const double f = floor((double)step / (LAMDA_ETA * (double)steps));
    return f >= cols ? cols : (int)f;
}

const wmat__adapter wmat__adapter_lamda = {
    .name = "lamda",
    .summary = "LaMDA: W + (alpha/r) B S A, A (r, in) frozen, S (r, r) trained, B (out, r) frozen column by column",
    .n_tensors = 2,
    .tensor_key = {"lamda_S", "lamda_B"},
    .rows_are_out = {0, 1},
    .shapes = lamda_shapes,
    .check = lamda_check,
    .fixed_bytes = lamda_fixed_bytes,
    .frozen_cols = lamda_frozen_cols,
    .act_floats = lamda_act_floats,
    .scratch_floats = lamda_scratch_floats,
    .scale = lamda_scale,
    .init = lamda_init,
    .forward = lamda_forward,
    .backward = lamda_backward,
    .merge = lamda_merge,
};
