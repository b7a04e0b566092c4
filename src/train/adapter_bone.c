/* Bone (Kang & Yin 2024), its block-affine form "Bat" (PEFT's BONE with
 * init_weights "bat"): W (out, in) cut into r x r blocks W_pq (row block p,
 * column block q); the update of block pq is W_pq b_p + b_p, with one
 * trained r x r matrix b_p per row block (out / r of them: out * r floats,
 * as many as LoRA's B), so the update is built from W's own blocks. b = 0
 * at init (the layer is the base). Needs r dividing in and out, and W as
 * f32.
 *
 * The update D(W, b) is formed densely in scratch each step (one product
 * of out x in x r per row block) and applied as a GEMM, like PEFT's
 * forward (which forms W + D); backward recomputes D and forms
 * G = dY^T X (out, in) for db.
 *
 * No PEFT file: wmat keeps q/k rows in llama2.c's rotary order and HF
 * permutes them, and an r x r block of rows in one order is not a block
 * in the other, so a Bat adapter of q/k trained here is not one of the HF
 * model (the other linears would be; left undone). */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <string.h>

static void bone_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    rows[0] = out; /* b_p = rows p r .. p r + r - 1 */
    cols[0] = c->rank;
}

static int bone_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "bone: rank must be positive");
    int rc = wmat__adapter_check_rank(c, in, out, "bone", what);
    if (rc) return rc;
    if (in % c->rank || out % c->rank)
        return wmat_set_error(WMAT_ERR_INVALID, "bone: rank %d does not divide the %s matrix (%d x %d) into r x r blocks",
                              c->rank, what, out, in);
    return wmat__adapter_check_f32(base, "bone", what);
}

static size_t bone_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}
static size_t bone_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)c, (void)BT;
    return 2 * (size_t)out * in;
}
static float bone_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

/* D (out, in) = the update of W by b. Row block p of W, (r, in), read as an
 * (in, r) matrix with rows (a, q) and columns k, times b_p gives the
 * blocks W_pq b_p in the same layout; then + b_p in every column block. */
static void bone_delta(const wmat__adapter_cfg *c, float *D, const float *W, const float *b, int in, int out)
{
    const int r = c->rank;
    for (int p = 0; p < out / r; p++) {
        const size_t o = (size_t)p * r * in;
        wmat_sgemm(0, 0, in, r, r, 1.0f, W + o, r, b + (size_t)p * r * r, r, 0.0f, D + o, r);
        for (int a = 0; a < r; a++)
            for (int q = 0; q < in / r; q++)
                for (int cc = 0; cc < r; cc++) D[o + (size_t)a * in + (size_t)q * r + cc] += b[((size_t)p * r + a) * r + cc];
    }
}

static int bone_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                     int out, wmat_rng *rng)
{
    (void)c, (void)w, (void)fixed, (void)in, (void)out, (void)rng;
    return W ? WMAT_OK : wmat__adapter_check_f32(base, "bone", "the layer's"); /* b = 0 */
}

static void bone_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)fixed;
    bone_delta(c, scratch, base->data, w[0], in, out);
    wmat_sgemm(0, 1, BT, out, in, 1.0f, X, in, scratch, in, 1.0f, Y, out);
}

static void bone_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)act, (void)fixed;
    const int r = c->rank;
    const float *W = base->data;
    float *D = scratch, *G = scratch + (size_t)out * in;
    if (dX) {
        bone_delta(c, D, W, w[0], in, out);
        wmat_sgemm(0, 0, BT, in, out, 1.0f, dY, out, D, in, 1.0f, dX, in); /* dX += dY D */
    }
    if (!dw[0]) return;
    wmat_sgemm(1, 0, out, in, BT, 1.0f, dY, out, X, in, 0.0f, G, in); /* G = dY^T X */
    for (int p = 0; p < out / r; p++) {
        const size_t o = (size_t)p * r * in;
        float *db = dw[0] + (size_t)p * r * r;
        wmat_sgemm(1, 0, r, r, in, 1.0f, W + o, r, G + o, r, 1.0f, db, r); /* db_p += M_p^T G_p */
        for (int a = 0; a < r; a++)
            for (int q = 0; q < in / r; q++)
                for (int cc = 0; cc < r; cc++) db[(size_t)a * r + cc] += G[o + (size_t)a * in + (size_t)q * r + cc];
    }
}

static int bone_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    float *D = wmat__malloc((size_t)out * in * sizeof(float));
    if (!D) return wmat_set_error(WMAT_ERR_NOMEM, "bone merge: out of memory");
    bone_delta(c, D, W, w[0], in, out);
    for (size_t j = 0; j < (size_t)out * in; j++) W[j] += D[j];
    wmat__free(D);
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_bone = {
    .name = "bone",
    .summary = "Bone (block-affine Bat): block W_pq += W_pq b_p + b_p, b_p (r, r) per row block, from W's own blocks",
    .n_tensors = 1,
    .tensor_key = {"bone_block"},
    .rows_are_out = {1},
    .shapes = bone_shapes,
    .check = bone_check,
    .act_floats = bone_act_floats,
    .scratch_floats = bone_scratch_floats,
    .scale = bone_scale,
    .init = bone_init,
    .forward = bone_forward,
    .backward = bone_backward,
    .merge = bone_merge,
};
