/* PST (Li et al., IJCAI 2022, "Parameter-Efficient Sparsity for Large
 * Language Models Fine-Tuning"; code alibaba/AliceMind S4/PST): sparse
 * training (pruning during fine-tuning) with few trained parameters. Per
 * adapted linear W (out, in), as the paper's SparseLinear:
 *
 *     W' = W + U V                        (the weight update, LoRA-like)
 *     S  = |W'| + A B + (R 1^T + 1 C^T)   (importance: data-free |W'|, the
 *                                          data-driven low-rank A B and the
 *                                          structured row/column terms)
 *     M  = 0 at the floor(s x out x in) lowest S of the matrix, 1 elsewhere
 *     layer: X (M o W')^T
 *
 * U (out, r) ~ N(0, 1), V (r, in) = 0, A (out, r) ~ N(0, 1), B (r, in) =
 * 0, R (out) = C (in) = 0; the scales of the paper's code (weight_beta,
 * mask_alpha1, mask_alpha2) at their defaults, 1; weight and mask ranks
 * both r (--lora-rank). The mask is recomputed in every forward (its top-k
 * per matrix, ties: the lower index pruned first); its gradient is the
 * straight-through estimator: dL/dS = dL/dM = G o W' with G = dY^T X the
 * dense weight gradient, so A, B, R, C learn from the data, and
 * dL/dW' = G o M + dL/dS o sign(W') (the |W'| term of S is differentiable,
 * as in the paper's autograd). None of the tensors' gradients is the exact
 * gradient of the forward (approx_grad; tests/test_sara_pst.c checks them
 * against a reference). Sparsity s follows the paper's cubic schedule:
 * 0 for the first 10% of the steps, then s_f + (0 - s_f)(1 - (t - 0.1 T) /
 * (0.6 T))^3, s_f = 1 - --density for the last 30% (its scheduler's
 * initial_warmup 0.1, final_warmup 0.3); the current s lives in the fixed
 * data (after_step sets it for the next step), so checkpoints keep it.
 *
 * The four tensors: [U | A] (out, 2r), [V ; B] (2r, in), R, C. Cost: W', S
 * and the mask (out x in x 2r, a selection) in forward and again in
 * backward, plus the dense products X D^T, dY D and dY^T X of the base's
 * size (D = M o W' - W, the change the base product gets). f32 base only;
 * merge writes M o W' (the pruned, updated weight). */
#include "adapter.h"
#include "sparse_update.h"

#include "../linalg/linalg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define PST_INIT_WARMUP 0.1
#define PST_FINAL_WARMUP 0.3
#define HDR 4 /* floats: the current sparsity, spare */

float wmat__pst_sparsity(float final_sparsity, int t, int T)
{
    const double iw = PST_INIT_WARMUP * T, fw = PST_FINAL_WARMUP * T;
    if (t <= iw) return 0.0f;
    if (t > T - fw) return final_sparsity;
    const double mul = 1.0 - ((double)t - iw) / ((double)T - iw - fw);
    return (float)(final_sparsity * (1.0 - mul * mul * mul));
}

static float final_sparsity(const wmat__adapter_cfg *c) { return 1.0f - c->density; }

static void pst_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = out; /* [U | A] */
    cols[0] = 2 * c->rank;
    rows[1] = 2 * c->rank; /* [V ; B] */
    cols[1] = in;
    rows[2] = out; /* R */
    cols[2] = 0;
    rows[3] = in; /* C */
    cols[3] = 0;
}

static int pst_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "pst: the rank must be positive");
    if (!(c->density > 0 && c->density <= 1))
        return wmat_set_error(WMAT_ERR_INVALID, "pst: --density %g is the share of each matrix kept, in (0, 1]",
                              (double)c->density);
    (void)in, (void)out;
    return wmat__adapter_check_f32(base, "pst", what);
}

static size_t pst_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)c, (void)in, (void)out;
    return HDR * sizeof(float);
}

static int pst_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    (void)in, (void)out;
    const float s = ((const float *)fixed)[0];
    return s >= 0.0f && s <= final_sparsity(c);
}

static size_t pst_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}

/* W', S, D (or dW'), G, tmp, then the pruned flags */
static size_t pst_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)c, (void)BT;
    const size_t n = (size_t)out * in;
    return 5 * n + n / sizeof(float) + 2;
}

static float pst_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int pst_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    (void)in;
    if (!W) return wmat__adapter_check_f32(base, "pst", "the layer's");
    const int r2 = 2 * c->rank;
    for (size_t i = 0; i < (size_t)out * r2; i++) w[0][i] = wmat_rng_normal(rng); /* U, A ~ N(0, 1) */
    if (fixed) ((float *)fixed)[0] = 0.0f;
    return WMAT_OK; /* V, B, R, C = 0 (zeroed on entry) */
}

void wmat__pst_dense(const wmat__adapter_cfg *c, const float *const *w, const float *W, float sparsity, int in, int out,
                     float *Wp, float *S, unsigned char *pruned, float *tmp)
{
    const int r = c->rank, r2 = 2 * r;
    const size_t n = (size_t)out * in;
    const float *UA = w[0], *VB = w[1], *R = w[2], *C = w[3];
    memcpy(Wp, W, n * sizeof(float));
    wmat_sgemm(0, 0, out, in, r, 1.0f, UA, r2, VB, in, 1.0f, Wp, in);                    /* W' = W + U V */
    wmat_sgemm(0, 0, out, in, r, 1.0f, UA + r, r2, VB + (size_t)r * in, in, 0.0f, S, in); /* A B */
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            const size_t k = (size_t)o * in + i;
            S[k] += fabsf(Wp[k]) + (R[o] + C[i]);
        }
    wmat__su_select_smallest(S, n, wmat__su_count(sparsity, n), pruned, tmp);
}

typedef struct {
    float *Wp, *S, *D, *G, *tmp;
    unsigned char *pr;
} pst_bufs;

static pst_bufs bufs_of(float *scratch, int in, int out)
{
    const size_t n = (size_t)out * in;
    pst_bufs b = {scratch, scratch + n, scratch + 2 * n, scratch + 3 * n, scratch + 4 * n, NULL};
    b.pr = (unsigned char *)(scratch + 5 * n);
    return b;
}

/* D = M o W' - W (the change of the base product) */
static void delta(const float *W, const pst_bufs *b, size_t n)
{
    for (size_t k = 0; k < n; k++) b->D[k] = (b->pr[k] ? 0.0f : b->Wp[k]) - W[k];
}

static void pst_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                        const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act;
    const pst_bufs b = bufs_of(scratch, in, out);
    const float *W = base->data;
    wmat__pst_dense(c, w, W, fixed ? ((const float *)fixed)[0] : 0.0f, in, out, b.Wp, b.S, b.pr, b.tmp);
    delta(W, &b, (size_t)out * in);
    wmat_sgemm(0, 1, BT, out, in, 1.0f, X, in, b.D, in, 1.0f, Y, out); /* Y += X D^T */
}

static void pst_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                         const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                         const float *act, int BT, int in, int out)
{
    (void)act;
    const int r = c->rank, r2 = 2 * r;
    const size_t n = (size_t)out * in;
    const pst_bufs b = bufs_of(scratch, in, out);
    const float *W = base->data, *UA = w[0], *VB = w[1];
    wmat__pst_dense(c, w, W, fixed ? ((const float *)fixed)[0] : 0.0f, in, out, b.Wp, b.S, b.pr, b.tmp);
    if (dX) {
        delta(W, &b, n);
        wmat_sgemm(0, 0, BT, in, out, 1.0f, dY, out, b.D, in, 1.0f, dX, in); /* dX += dY D */
    }
    if (!dw[0] && !dw[1] && !dw[2] && !dw[3]) return;
    wmat_sgemm(1, 0, out, in, BT, 1.0f, dY, out, X, in, 0.0f, b.G, in); /* G = dY^T X */
    float *dS = b.S, *dWp = b.D;
    for (size_t k = 0; k < n; k++) {
        const float g = b.G[k], wp = b.Wp[k];
        dS[k] = g * wp;                                                          /* straight through the mask */
        dWp[k] = (b.pr[k] ? 0.0f : g) + dS[k] * (wp > 0 ? 1.0f : wp < 0 ? -1.0f : 0.0f); /* M and |W'| in S */
    }
    if (dw[0]) {
        wmat_sgemm(0, 1, out, r, in, 1.0f, dWp, in, VB, in, 1.0f, dw[0], r2);                          /* dU += dW' V^T */
        wmat_sgemm(0, 1, out, r, in, 1.0f, dS, in, VB + (size_t)r * in, in, 1.0f, dw[0] + r, r2);      /* dA += dS B^T */
    }
    if (dw[1]) {
        wmat_sgemm(1, 0, r, in, out, 1.0f, UA, r2, dWp, in, 1.0f, dw[1], in);                          /* dV += U^T dW' */
        wmat_sgemm(1, 0, r, in, out, 1.0f, UA + r, r2, dS, in, 1.0f, dw[1] + (size_t)r * in, in);      /* dB += A^T dS */
    }
    if (dw[2])
        for (int o = 0; o < out; o++) {
            double s = 0;
            for (int i = 0; i < in; i++) s += dS[(size_t)o * in + i];
            dw[2][o] += (float)s;
        }
    if (dw[3])
        for (int i = 0; i < in; i++) {
            double s = 0;
            for (int o = 0; o < out; o++) s += dS[(size_t)o * in + i];
            dw[3][i] += (float)s;
        }
}

static int pst_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    if (!fixed) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "pst: merging needs the layer's sparsity");
    const size_t n = (size_t)out * in;
    float *buf = wmat__malloc(3 * n * sizeof(float) + n + 1);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "pst merge: out of memory");
    unsigned char *pr = (unsigned char *)(buf + 3 * n);
    wmat__pst_dense(c, w, W, ((const float *)fixed)[0], in, out, buf, buf + n, pr, buf + 2 * n);
    for (size_t k = 0; k < n; k++) W[k] = pr[k] ? 0.0f : buf[k]; /* M o W' */
    wmat__free(buf);
    return WMAT_OK;
}

static int pst_after_step(const wmat__adapter_cfg *c, const wmat__adapter_layer *ly, int n, int step, int steps)
{
    (void)steps; /* c->steps: the run's T */
    const float s = wmat__pst_sparsity(final_sparsity(c), step + 1, c->steps);
    for (int i = 0; i < n; i++) ((float *)ly[i].fixed)[0] = s;
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_pst = {
    .name = "pst",
    .summary = "PST: pruning to --density kept by importance |W + U V| + A B + R + C (mask by straight-through), "
               "cubic sparsity schedule",
    .n_tensors = 4,
    .tensor_key = {"pst_UA", "pst_VB", "mask_scores_R", "mask_scores_C"},
    .rows_are_out = {1, 0, 1, 0},
    .approx_grad = 0xfu,
    .shapes = pst_shapes,
    .check = pst_check,
    .fixed_bytes = pst_fixed_bytes,
    .fixed_valid = pst_fixed_valid,
    .after_step = pst_after_step,
    .act_floats = pst_act_floats,
    .scratch_floats = pst_scratch_floats,
    .scale = pst_scale,
    .init = pst_init,
    .forward = pst_forward,
    .backward = pst_backward,
    .merge = pst_merge,
};
