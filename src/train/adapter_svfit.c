/* SVFit (Sun et al. 2024): train only the top-r singular values of W.
 * W = U S V^T (thin SVD at init); the layer is W + U_r diag(d) V_r^T with d
 * (r) trained from 0, i.e. the top-r singular values S_r + d, the singular
 * vectors U_r, V_r frozen in fixed data. Keeping d rather than S_r + d as
 * the parameter leaves the base untouched (no residual copy) and gives the
 * same function and gradient; weight decay pulls d, like LoRA's B A,
 * towards the base. r trained floats per layer. PEFT has no such adapter.
 * Forward keeps xv = X V_r^T (BT, r). */
#include "adapter.h"

#include "../linalg/linalg.h"
#include "../linalg/linalg_train.h"

#include <string.h>

static void svfit_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in, (void)out;
    rows[0] = c->rank; /* d: a vector */
    cols[0] = 0;
}

static int svfit_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "svfit: rank must be positive");
    int rc = wmat__adapter_check_rank(c, in, out, "svfit", what);
    return rc ? rc : wmat__adapter_check_f32(base, "svfit", what);
}

/* U_r (out, r), then V_r^T (r, in) */
static size_t svfit_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    return (size_t)c->rank * ((size_t)in + out) * sizeof(float);
}

static size_t svfit_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
static size_t svfit_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return (size_t)BT * c->rank;
}
static float svfit_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int svfit_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)rng, (void)w;
    if (!W) return wmat__adapter_check_f32(base, "svfit", "the layer's");
    const int k = in < out ? in : out, r = c->rank;
    float *M = wmat__malloc(((size_t)out * in + k + (size_t)out * k + (size_t)k * in) * sizeof(float));
    if (!M) return wmat_set_error(WMAT_ERR_NOMEM, "svfit: out of memory for the SVD of a %d x %d weight", out, in);
    float *S = M + (size_t)out * in, *U = S + k, *VT = U + (size_t)out * k;
    memcpy(M, W, (size_t)out * in * sizeof(float));
    int rc = wmat__train_svd_thin(out, in, M, in, S, U, k, VT, in);
    if (!rc) {
        float *Ur = fixed, *Vr = Ur + (size_t)out * r;
        for (int o = 0; o < out; o++) memcpy(Ur + (size_t)o * r, U + (size_t)o * k, (size_t)r * sizeof(float));
        memcpy(Vr, VT, (size_t)r * in * sizeof(float));
    }
    wmat__free(M);
    return rc;
}

static void svfit_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                          const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)base;
    const int r = c->rank;
    const float *Ur = fixed, *Vr = Ur + (size_t)out * r;
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, Vr, in, 0.0f, act, r); /* xv = X V_r */
    for (int t = 0; t < BT; t++)
        for (int j = 0; j < r; j++) scratch[(size_t)t * r + j] = act[(size_t)t * r + j] * w[0][j];
    wmat_sgemm(0, 1, BT, out, r, 1.0f, scratch, r, Ur, r, 1.0f, Y, out); /* Y += (xv d) U_r^T */
}

static void svfit_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                           const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                           const float *act, int BT, int in, int out)
{
    (void)base, (void)X;
    const int r = c->rank;
    const float *Ur = fixed, *Vr = Ur + (size_t)out * r;
    wmat_sgemm(0, 0, BT, r, out, 1.0f, dY, out, Ur, r, 0.0f, scratch, r); /* dY U_r (BT, r) */
    if (dw[0])
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (int t = 0; t < BT; t++) acc += (double)scratch[(size_t)t * r + j] * act[(size_t)t * r + j];
            dw[0][j] += (float)acc;
        }
    if (dX) {
        for (int t = 0; t < BT; t++)
            for (int j = 0; j < r; j++) scratch[(size_t)t * r + j] *= w[0][j];
        wmat_sgemm(0, 0, BT, in, r, 1.0f, scratch, r, Vr, in, 1.0f, dX, in); /* dX += (dY U_r d) V_r^T */
    }
}

static int svfit_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    const int r = c->rank;
    if (!fixed) return wmat_set_error(WMAT_ERR_INTERNAL, "svfit: merge without the singular vectors");
    const float *Ur = fixed, *Vr = Ur + (size_t)out * r;
    float *Ud = wmat__malloc((size_t)out * r * sizeof(float));
    if (!Ud) return wmat_set_error(WMAT_ERR_NOMEM, "svfit merge: out of memory");
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) Ud[(size_t)o * r + j] = Ur[(size_t)o * r + j] * w[0][j];
    wmat_sgemm(0, 0, out, in, r, 1.0f, Ud, r, Vr, in, 1.0f, W, in);
    wmat__free(Ud);
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_svfit = {
    .name = "svfit",
    .summary = "SVFit: train only W's top-r singular values (U_r diag(d) V_r^T added, U_r, V_r frozen)",
    .n_tensors = 1,
    .tensor_key = {"svfit_delta"},
    .rows_are_out = {0},
    .shapes = svfit_shapes,
    .check = svfit_check,
    .fixed_bytes = svfit_fixed_bytes,
    .act_floats = svfit_act_floats,
    .scratch_floats = svfit_scratch_floats,
    .scale = svfit_scale,
    .init = svfit_init,
    .forward = svfit_forward,
    .backward = svfit_backward,
    .merge = svfit_merge,
};
