/* MiSS (Kang & Yin, "MiSS: Balancing LoRA Performance and Efficiency with
 * Simple Shard Sharing"; PEFT's MISS, the successor of Bone), its default
 * ("balance") form: one trained shard D (r, out), zero at init, shared by
 * every chunk of r input columns:
 *   dW[o, c r + t] = D[t, o]   for every input chunk c (0 <= c < in / r),
 * so X dW^T = (sum_c X[:, c r .. c r + r - 1]) D: the forward sums the
 * input's chunks into xs (BT, r) and adds xs D, O(BT (in + r out)) extra
 * work and no dense dW. Scale 1 (PEFT has no alpha for MiSS). Needs r
 * dividing in (PEFT pads a remainder; refused here). D's columns are the
 * output features, so PEFT files permute q/k's columns into HF's rotary
 * order (cols_are_out). PEFT writes D as "<module>.miss_block" (a
 * ParameterDict entry, no ".weight"), config peft_type "MISS" with r,
 * mini_r, init_weights true.
 *
 * MiSS's "bat" mode is Bone (adapter_bone.c, the block-affine W_pq b_p +
 * b_p); "mini" (D (r, mini_r) tiled along the outputs) is not here. */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

static void miss_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    rows[0] = c->rank; /* D (r, out) */
    cols[0] = out;
}

static int miss_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)out;
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "miss: rank must be positive");
    if (c->rank > in)
        return wmat_set_error(WMAT_ERR_INVALID, "miss: rank %d is larger than the %s matrix's input width %d", c->rank,
                              what, in);
    if (in % c->rank)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "miss: rank %d does not divide the %s matrix's input width %d into shards (use a rank "
                              "that divides it)",
                              c->rank, what, in);
    return WMAT_OK;
}

static size_t miss_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
static size_t miss_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return (size_t)BT * c->rank;
}
static float miss_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int miss_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                     int out, wmat_rng *rng)
{
    (void)c, (void)w, (void)fixed, (void)base, (void)W, (void)in, (void)out, (void)rng;
    return WMAT_OK; /* D = 0 */
}

/* xs (BT, r) = the sum of X's r-column chunks. */
static void chunk_sum(float *xs, const float *X, int BT, int in, int r)
{
    for (int b = 0; b < BT; b++) {
        const float *x = X + (size_t)b * in;
        float *s = xs + (size_t)b * r;
        memcpy(s, x, (size_t)r * sizeof(float));
        for (int ch = r; ch < in; ch += r)
            for (int t = 0; t < r; t++) s[t] += x[ch + t];
    }
}

static void miss_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)scratch, (void)fixed, (void)base;
    const int r = c->rank;
    chunk_sum(act, X, BT, in, r);
    wmat_sgemm(0, 0, BT, out, r, 1.0f, act, r, w[0], out, 1.0f, Y, out); /* Y += xs D */
}

static void miss_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)X, (void)fixed, (void)base;
    const int r = c->rank;
    if (dw[0]) wmat_sgemm(1, 0, r, out, BT, 1.0f, act, r, dY, out, 1.0f, dw[0], out); /* dD += xs^T dY */
    if (!dX) return;
    float *dxs = scratch;
    wmat_sgemm(0, 1, BT, r, out, 1.0f, dY, out, w[0], out, 0.0f, dxs, r); /* dxs = dY D^T (BT, r) */
    for (int b = 0; b < BT; b++) {
        float *dx = dX + (size_t)b * in;
        const float *s = dxs + (size_t)b * r;
        for (int ch = 0; ch < in; ch += r)
            for (int t = 0; t < r; t++) dx[ch + t] += s[t];
    }
}

static int miss_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    const int r = c->rank;
    const float *D = w[0];
    for (int o = 0; o < out; o++)
        for (int ch = 0; ch < in; ch += r)
            for (int t = 0; t < r; t++) W[(size_t)o * in + ch + t] += D[(size_t)t * out + o];
    return WMAT_OK;
}

static size_t miss_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    int k = snprintf(buf, n,
                     "  \"r\": %d,\n  \"miss_dropout\": 0.0,\n  \"mini_r\": 1,\n  \"init_weights\": true,\n"
                     "  \"bias\": \"none\",\n  \"exclude_modules\": null,\n  \"layers_to_transform\": null,\n"
                     "  \"layers_pattern\": null,\n  \"modules_to_save\": null,\n  \"inference_mode\": true,\n",
                     c->rank);
    return k < 0 ? 0 : (size_t)k;
}

/* MISS files of the default mode (init_weights true or absent); "bat" and
 * "mini" are other layouts, not read here. */
static int miss_parse(const void *json, wmat__adapter_cfg *c)
{
    const cJSON *j = json, *iw = cJSON_GetObjectItemCaseSensitive(j, "init_weights");
    if (iw && !cJSON_IsTrue(iw)) return 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = 1.0f;
    return 1;
}

const wmat__adapter wmat__adapter_miss = {
    .name = "miss",
    .summary = "MiSS (PEFT MISS, balance): one shard D (r, out) shared by every r-column input chunk, y += (sum_c x_c) D",
    .n_tensors = 1,
    .tensor_key = {"miss_block"},
    .cols_are_out = {1},
    .peft_bare_keys = 1,
    .shapes = miss_shapes,
    .check = miss_check,
    .act_floats = miss_act_floats,
    .scratch_floats = miss_scratch_floats,
    .scale = miss_scale,
    .init = miss_init,
    .forward = miss_forward,
    .backward = miss_backward,
    .merge = miss_merge,
    .peft_type = "MISS",
    .peft_config = miss_config,
    .peft_parse = miss_parse,
};
