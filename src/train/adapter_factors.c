/* Fine-tuning the low-rank factors a decomposition wrote (`factors`):
 * WeLore's LRC-only fine-tuning (the A, B of every `lowrank` weight that
 * `wmat decompose --method welore` wrote trainable, the rest of the model,
 * its dense N-LRC matrices included, frozen) and LQ-LoRA's fine-tune of
 * L1 L2 (the `lowrank` part of a `sum` = qpacked + lowrank trainable, the
 * quantized part frozen in its codes).
 *
 * The entry adopts the factors of its layer's base instead of adding new
 * tensors (adapter.h's adopt): a layer whose base holds no low-rank factors
 * is left as it is. The tensors are the factors themselves, in LoRA's
 * layout so its path serves: w[0] = B (r, in), w[1] = A (out, r), the layer
 * Y = rest(X) + (X B^T) A^T, rest the quantized part of a sum (nothing for
 * a plain low-rank weight). Training starts from the decomposed model's
 * function exactly as stored (f16 factors are read as their f32 values).
 * The trained layer goes back into the base's kinds: a `lowrank` weight
 * whose factors have the stored dtype (f16 factors are rounded to f16
 * again), inside a `sum` with the untouched quantized part where the base
 * was one. */
#include "adapter.h"

#include "../wop/wop.h"

#include <stdio.h>
#include <string.h>

/* The low-rank weight inside base (itself, or the second part of a sum),
 * and what is left when it is taken out (*rest, NULL: nothing). */
static const wmat_tensor *factors_of(const wmat_tensor *base, const wmat_tensor **rest)
{
    *rest = NULL;
    if (!base || base->ndim != 2) return NULL;
    if (wmat__lowrank_factor(base, 0)) return base;
    const wmat_wkind *k = wmat__wkind_of(base);
    if (k && !strcmp(k->name, "sum") && wmat__lowrank_factor(wmat__sum_part(base, 1), 0)) {
        *rest = wmat__sum_part(base, 0);
        return wmat__sum_part(base, 1);
    }
    return NULL;
}

static int factors_adopt(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what,
                         wmat__adapter_cfg *lc, const wmat_tensor **rest)
{
    const wmat_tensor *lr = factors_of(base, rest);
    if (!lr) return 0;
    const wmat_tensor *A = wmat__lowrank_factor(lr, 0);
    if (lr->shape[0] != out || lr->shape[1] != in)
        return wmat_set_error(WMAT_ERR_INVALID, "factors: %s is (%lld x %lld), the layer (%d x %d)", what,
                              (long long)lr->shape[0], (long long)lr->shape[1], out, in);
    *lc = *c;
    lc->rank = (int)A->shape[1];
    lc->alpha = (float)lc->rank; /* the path's scale alpha / r is 1: the factors are the weight */
    return 1;
}

static void factors_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    wmat__lora_shapes(c, in, out, rows, cols);
}

static float factors_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

/* The factors' values as f32 (their kind's dequantizer: exact for f32, f16, bf16). */
static int factors_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                        int in, int out, wmat_rng *rng)
{
    (void)fixed, (void)W, (void)rng;
    const wmat_tensor *rest, *lr = factors_of(base, &rest);
    if (!lr) return wmat_set_error(WMAT_ERR_INVALID, "factors: the layer's base has no low-rank factors");
    const wmat_tensor *A = wmat__lowrank_factor(lr, 0), *B = wmat__lowrank_factor(lr, 1);
    if (A->shape[0] != out || A->shape[1] != c->rank || B->shape[1] != in)
        return wmat_set_error(WMAT_ERR_INTERNAL, "factors: the layer's factors changed shape since adopt");
    wmat__wkind_of(B)->dequant_rows(B, 0, c->rank, w[0]);
    wmat__wkind_of(A)->dequant_rows(A, 0, out, w[1]);
    return WMAT_OK;
}

static void factors_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                            const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)scratch, (void)fixed, (void)base;
    wmat__lora_path_forward(1.0f, c, Y, act, X, w, BT, in, out);
}

static void factors_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                             const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                             const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base;
    wmat__lora_path_backward(1.0f, c, dX, dw, scratch, dY, X, w, act, BT, in, out);
}

static int factors_to_weight_over(const wmat__adapter_cfg *c, const float *const *w, const wmat_tensor *base, int in,
                                  int out, wmat_tensor *dst)
{
    const wmat_tensor *rest, *lr = factors_of(base, &rest);
    if (!lr) return wmat_set_error(WMAT_ERR_INVALID, "factors: the layer's base has no low-rank factors");
    void *obj = NULL;
    int rc = wmat__lowrank_create(wmat__lowrank_factor(lr, 0)->dtype, out, in, c->rank, w[1], w[0], &obj);
    if (rc) return rc;
    if (!rest) {
        wmat__tensor_own_obj(dst, out, in, obj);
        return WMAT_OK;
    }
    /* the quantized part as it is: read from the base, which outlives the
     * trained model built over it (the sum does not free a part it does not own) */
    wmat_tensor q = *rest, l;
    memset(&l, 0, sizeof l);
    q.flags &= ~WMAT_TF_OWNED;
    wmat__tensor_own_obj(&l, out, in, obj);
    void *s = NULL;
    if ((rc = wmat__sum_create(&q, &l, &s))) {
        wmat__tensor_free_data(&l);
        return rc;
    }
    wmat__tensor_own_obj(dst, out, in, s);
    return WMAT_OK;
}

const wmat__adapter wmat__adapter_factors = {
    .name = "factors",
    .summary = "the low-rank factors of a decomposed model (lowrank weights, the lowrank part of a sum): WeLore's "
               "LRC fine-tuning, LQ-LoRA's L1 L2; the rest frozen, kinds kept",
    .n_tensors = 2,
    .tensor_key = {"lr_b", "lr_a"},
    .rows_are_out = {0, 1},
    .shapes = factors_shapes,
    .act_floats = wmat__lora_act_floats,
    .scratch_floats = wmat__lora_scratch_floats,
    .scale = factors_scale,
    .init = factors_init,
    .forward = factors_forward,
    .backward = factors_backward,
    .adopt = factors_adopt,
    .to_weight_over = factors_to_weight_over,
};
