/* SaRA (Hu et al. 2024, "SaRA: High-Efficient Diffusion Model Fine-tuning
 * with Progressive Sparse Low-Rank Adaptation"; code sjtuplayer/SaRA): the
 * smallest-magnitude weights of a pretrained matrix are "ineffective";
 * SaRA re-trains them as a sparse matrix. Per adapted linear W (out, in):
 *
 * - selection: the k = floor(density x out x in) positions of smallest |w|
 *   (ties to the lower index), i.e. the threshold theta = the k-th smallest
 *   |w| of the matrix (the paper's threshold, set by a target fraction
 *   instead of an absolute value); the layer is W + D with D zero outside
 *   those positions and its k values the trained tensor (zero at init, so
 *   the layer starts as the base; SaRA's code trains the values W[p] + D[p]
 *   themselves, the same function, but its weight decay then pulls them to
 *   0 where ours pulls D to 0, i.e. to the pretrained value);
 * - low-rank constraint: lambda ||D||_* (nuclear norm of the dense-shaped
 *   sparse update over its trained positions) added to the loss, as SaRA's
 *   code does one matrix per step (it draws one at random; here round robin
 *   over the adapted matrices, step mod n, so a resumed run repeats it):
 *   its subgradient U V^T (thin SVD, LAPACK) is added to the values'
 *   gradients at their positions (extra_loss); lambda = 5e-4, the value
 *   of SaRA's README (--lambda_rank=0.0005);
 * - progressive adjustment: after half the steps (SaRA's progressive_iter)
 *   the positions are re-selected against the threshold: those whose
 *   weight W + D has grown above theta became effective and are frozen
 *   with their learned D (kept in the model, no gradient, their value put
 *   back after every later step, so momentum and decay do not move them);
 *   the rest, still below theta, go on training (SaRA's code: the new mask
 *   |w| < theta keeps exactly those, since untrained weights stay above).
 *
 * The update is held as a support (row offsets and column indices, the
 * layout and kernels of SLTrain's sparse part, adapter.h) and its values;
 * product and gradients are sparse (memory per trained weight: value,
 * gradient, AdamW m and v, 16 bytes, plus 13 bytes of fixed data; no
 * dense update). Fixed data per layer: theta, the step count, the
 * re-selection flag; the support (int32), the base values there,
 * the frozen values and the on/off flag of each. f32 base only. */
#include "adapter.h"
#include "sparse_update.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SARA_LAMBDA 5e-4f
#define HDR 4 /* floats: theta, steps done, re-selected, spare */

static size_t sara_nnz(const wmat__adapter_cfg *c, int in, int out)
{
    return wmat__su_count(c->density, (size_t)out * (size_t)in);
}

float wmat__sara_lambda(const wmat__adapter_cfg *c)
{
    (void)c;
    return SARA_LAMBDA;
}
int wmat__sara_reselect_step(const wmat__adapter_cfg *c) { return c->steps >= 2 ? c->steps / 2 : -1; }

wmat__sara_layer wmat__sara_view(void *fixed, const wmat__adapter_cfg *c, int in, int out)
{
    wmat__sara_layer v;
    v.nnz = sara_nnz(c, in, out);
    v.hdr = fixed;
    v.off = (int32_t *)(v.hdr + HDR);
    v.col = v.off + out + 1;
    v.wv = (float *)(v.col + v.nnz);
    v.fv = v.wv + v.nnz;
    v.on = (unsigned char *)(v.fv + v.nnz);
    return v;
}

static void sara_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = (int)sara_nnz(c, in, out);
    cols[0] = 1;
}

static int sara_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    if (!(c->density > 0 && c->density < 1))
        return wmat_set_error(WMAT_ERR_INVALID, "sara: --density %g is the share of each matrix trained, in (0, 1)",
                              (double)c->density);
    if (sara_nnz(c, in, out) < 1 || (double)out * in > 2147483647.0)
        return wmat_set_error(WMAT_ERR_INVALID, "sara: --density %g selects no weight of the %s matrix (%d x %d)",
                              (double)c->density, what, out, in);
    return wmat__adapter_check_f32(base, "sara", what);
}

static size_t sara_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    const size_t k = sara_nnz(c, in, out);
    return HDR * sizeof(float) + ((size_t)out + 1) * sizeof(int32_t) + k * (sizeof(int32_t) + 2 * sizeof(float)) +
           ((k + 3) & ~(size_t)3);
}

static int sara_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    const wmat__sara_layer v = wmat__sara_view((void *)fixed, c, in, out);
    if (!(v.hdr[0] >= 0 && isfinite(v.hdr[0]))) return 0;
    if (v.off[0] != 0 || v.off[out] != (int32_t)v.nnz) return 0;
    for (int r = 0; r < out; r++) {
        if (v.off[r + 1] < v.off[r]) return 0;
        for (int32_t j = v.off[r]; j < v.off[r + 1]; j++)
            if (v.col[j] < 0 || v.col[j] >= in || (j > v.off[r] && v.col[j] <= v.col[j - 1])) return 0;
    }
    for (size_t j = 0; j < v.nnz; j++)
        if (v.on[j] > 1) return 0;
    return 1;
}

static size_t sara_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}
/* the support kernels' workspace, then the frozen positions' gradients
 * (kept aside while the kernel adds to every position) */
static size_t sara_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)BT;
    return wmat__support_ws_floats(in, out, c->nt) + sara_nnz(c, in, out) + 1;
}
static float sara_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int sara_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                     int out, wmat_rng *rng)
{
    (void)w, (void)rng;
    if (!W) return wmat__adapter_check_f32(base, "sara", "the layer's");
    const size_t n = (size_t)out * in;
    const wmat__sara_layer v = wmat__sara_view(fixed, c, in, out);
    float *key = wmat__malloc(2 * n * sizeof(float) + n + 1);
    if (!key) return wmat_set_error(WMAT_ERR_NOMEM, "sara: out of memory");
    unsigned char *sel = (unsigned char *)(key + 2 * n);
    for (size_t i = 0; i < n; i++) key[i] = fabsf(W[i]);
    wmat__su_select_smallest(key, n, v.nnz, sel, key + n);
    float theta = 0.0f;
    int32_t j = 0;
    for (int r = 0; r < out; r++) {
        v.off[r] = j;
        for (int cc = 0; cc < in; cc++) {
            const size_t i = (size_t)r * in + cc;
            if (!sel[i]) continue;
            v.col[j] = cc;
            v.wv[j] = W[i];
            v.fv[j] = 0.0f;
            v.on[j] = 1;
            theta = key[i] > theta ? key[i] : theta;
            j++;
        }
    }
    v.off[out] = j;
    v.hdr[0] = theta;
    v.hdr[1] = v.hdr[2] = v.hdr[3] = 0.0f;
    wmat__free(key);
    return WMAT_OK; /* D = 0 (zeroed on entry) */
}

static void sara_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)base;
    const wmat__sara_layer v = wmat__sara_view((void *)fixed, c, in, out);
    wmat__support_forward(Y, X, v.off, v.col, w[0], BT, in, out, scratch, c->nt > 0 ? c->nt : 1, c->isa);
}

static void sara_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)act, (void)base;
    const wmat__sara_layer v = wmat__sara_view((void *)fixed, c, in, out);
    /* frozen positions get no gradient: theirs is put back after the kernel */
    float *keep = scratch + wmat__support_ws_floats(in, out, c->nt);
    const int any_frozen = v.hdr[2] != 0.0f;
    if (dw[0] && any_frozen)
        for (size_t j = 0; j < v.nnz; j++) keep[j] = dw[0][j];
    wmat__support_backward(dX, dw[0], dY, X, v.off, v.col, w[0], BT, in, out, scratch, c->nt > 0 ? c->nt : 1, c->isa);
    if (dw[0] && any_frozen)
        for (size_t j = 0; j < v.nnz; j++)
            if (!v.on[j]) dw[0][j] = keep[j];
}

static int sara_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    if (!fixed) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "sara: merging needs the layer's positions");
    const wmat__sara_layer v = wmat__sara_view((void *)fixed, c, in, out);
    for (int r = 0; r < out; r++)
        for (int32_t j = v.off[r]; j < v.off[r + 1]; j++) W[(size_t)r * in + v.col[j]] += w[0][j];
    return WMAT_OK;
}

/* ------------------------------------------------------------ penalty */

double wmat__sara_penalty(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, float *g)
{
    const int in = ly->in, out = ly->out;
    const wmat__sara_layer v = wmat__sara_view(ly->fixed, ly->cfg, in, out);
    const size_t n = (size_t)out * in;
    float *D = wmat__calloc(2 * n + 1, sizeof(float));
    if (!D) return NAN; /* the trainer refuses a non-finite loss */
    float *G = D + n;
    for (int r = 0; r < out; r++)
        for (int32_t j = v.off[r]; j < v.off[r + 1]; j++)
            if (v.on[j]) D[(size_t)r * in + v.col[j]] = ly->w[0][j];
    double norm = 0;
    if (wmat__su_nuclear(D, out, in, g ? G : NULL, &norm)) {
        wmat__free(D);
        return NAN;
    }
    const float lambda = wmat__sara_lambda(c);
    if (g)
        for (int r = 0; r < out; r++)
            for (int32_t j = v.off[r]; j < v.off[r + 1]; j++)
                if (v.on[j]) g[j] += lambda * G[(size_t)r * in + v.col[j]];
    wmat__free(D);
    return (double)lambda * norm;
}

static double sara_extra_loss(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n)
{
    if (n <= 0 || !(wmat__sara_lambda(c) > 0)) return 0.0;
    const wmat__sara_layer v0 = wmat__sara_view(ly[0].fixed, ly[0].cfg, ly[0].in, ly[0].out);
    const long step = (long)v0.hdr[1];
    const int i = (int)(step % n);
    return wmat__sara_penalty(c, &ly[i], ly[i].g ? ly[i].g[0] : NULL);
}

/* ------------------------------------------------------------ progressive */

static int sara_after_step(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n, int step, int steps)
{
    (void)steps; /* c->steps: the run's T */
    const int rs = wmat__sara_reselect_step(c);
    for (int i = 0; i < n; i++) {
        const wmat__sara_layer v = wmat__sara_view(ly[i].fixed, ly[i].cfg, ly[i].in, ly[i].out);
        float *d = ly[i].w[0];
        v.hdr[1] = (float)(step + 1);
        if (step + 1 == rs && v.hdr[2] == 0.0f) {
            /* re-selection: weights grown above theta are effective now */
            for (size_t j = 0; j < v.nnz; j++)
                if (v.on[j] && fabsf(v.wv[j] + d[j]) > v.hdr[0]) {
                    v.on[j] = 0;
                    v.fv[j] = d[j];
                }
            v.hdr[2] = 1.0f;
        }
        for (size_t j = 0; j < v.nnz; j++)
            if (!v.on[j]) d[j] = v.fv[j];
    }
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_sara = {
    .name = "sara",
    .summary = "SaRA: the smallest-|w| share (--density) of each matrix trained as a sparse update, nuclear-norm "
               "penalty, re-selected at half the run",
    .n_tensors = 1,
    .tensor_key = {"sara_values"},
    .shapes = sara_shapes,
    .check = sara_check,
    .fixed_bytes = sara_fixed_bytes,
    .fixed_valid = sara_fixed_valid,
    .extra_loss = sara_extra_loss,
    .after_step = sara_after_step,
    .act_floats = sara_act_floats,
    .scratch_floats = sara_scratch_floats,
    .scale = sara_scale,
    .init = sara_init,
    .forward = sara_forward,
    .backward = sara_backward,
    .merge = sara_merge,
};
