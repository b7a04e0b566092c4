/* DoRA (Liu et al. 2024): the adapted weight is m * V / ||V|| with
 * V = W + s B A, the norm per output row (over the inputs, as PEFT), m (out)
 * a trained magnitude initialized to W's row norms, so at init the layer is
 * the base. Forward: Y = g * (X W^T + s X A^T B^T) per output column,
 * g = m / ||V||. The norm is treated as a constant in backward (the paper's
 * section 4.3 and PEFT's detach), so dA, dB are not the exact gradient of
 * the forward (approx_grad): the test compares them with a reference whose
 * norm is held fixed.
 *
 * The base product X W^T is in Y when forward is called; backward gets dX
 * with the base's dY W already in it and adds ((g - 1) dY) W. The norms and
 * Z = X W^T + s xa B^T are recomputed in backward (one extra product of the
 * base's size, as PEFT pays in forward) instead of being kept per layer. */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static void dora_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    wmat__lora_shapes(c, in, out, rows, cols);
    rows[2] = out; /* m: a vector */
    cols[2] = 0;
}

static int dora_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    int rc = wmat__adapter_check_rank(c, in, out, "dora", what);
    return rc ? rc : wmat__adapter_check_f32(base, "dora", what);
}

#define AL(n) ((((size_t)(n)) + 15) & ~(size_t)15)

/* scratch: n (out), g (out), big (max(out * in, BT * out)), dZ (BT * out),
 * dxa (BT * r) */
static size_t dora_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    const size_t big = (size_t)out * in > (size_t)BT * out ? (size_t)out * in : (size_t)BT * out;
    return 2 * AL(out) + AL(big) + AL((size_t)BT * out) + AL((size_t)BT * c->rank);
}

/* n_j = ||W_j + s B_j A|| and g_j = m_j / n_j (0 for a zero row: its
 * output is 0 whatever g is), through V in big. */
static void dora_norms(const wmat__adapter_cfg *c, const float *W, const float *const *w, float *n, float *g, float *V,
                       int in, int out)
{
    memcpy(V, W, (size_t)out * in * sizeof(float));
    wmat_sgemm(0, 0, out, in, c->rank, wmat__lora_scale(c), w[1], c->rank, w[0], in, 1.0f, V, in);
    for (int j = 0; j < out; j++) {
        double ss = 0;
        for (int i = 0; i < in; i++) ss += (double)V[(size_t)j * in + i] * V[(size_t)j * in + i];
        n[j] = (float)sqrt(ss);
        g[j] = n[j] > 0 ? w[2][j] / n[j] : 0.0f;
    }
}

static int dora_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                     int out, wmat_rng *rng)
{
    (void)fixed, (void)base;
    if (!W) return wmat__adapter_check_f32(base, "dora", "the layer's");
    const float bound = 1.0f / sqrtf((float)in);
    for (size_t j = 0; j < (size_t)c->rank * in; j++) w[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    for (int j = 0; j < out; j++) {
        double ss = 0;
        for (int i = 0; i < in; i++) ss += (double)W[(size_t)j * in + i] * W[(size_t)j * in + i];
        w[2][j] = (float)sqrt(ss);
    }
    return WMAT_OK;
}

static void dora_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed;
    float *n = scratch, *g = n + AL(out), *V = g + AL(out);
    dora_norms(c, base->data, w, n, g, V, in, out);
    wmat__lora_path_forward(wmat__lora_scale(c), c, Y, act, X, w, BT, in, out);
    for (int t = 0; t < BT; t++)
        for (int j = 0; j < out; j++) Y[(size_t)t * out + j] *= g[j];
}

static void dora_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)fixed;
    const float s = wmat__lora_scale(c);
    const float *W = base->data;
    const size_t big = (size_t)out * in > (size_t)BT * out ? (size_t)out * in : (size_t)BT * out;
    float *n = scratch, *g = n + AL(out), *Z = g + AL(out), *dZ = Z + AL(big), *dxa = dZ + AL((size_t)BT * out);
    dora_norms(c, W, w, n, g, Z, in, out);
    if (dw[2]) {
        /* dm_j = sum_t dY_tj Z_tj / n_j, Z = X W^T + s xa B^T */
        wmat_sgemm(0, 1, BT, out, in, 1.0f, X, in, W, in, 0.0f, Z, out);
        wmat_sgemm(0, 1, BT, out, c->rank, s, act, c->rank, w[1], c->rank, 1.0f, Z, out);
        for (int j = 0; j < out; j++) {
            double acc = 0;
            for (int t = 0; t < BT; t++) acc += (double)dY[(size_t)t * out + j] * Z[(size_t)t * out + j];
            if (n[j] > 0) dw[2][j] += (float)(acc / n[j]);
        }
    }
    for (int t = 0; t < BT; t++)
        for (int j = 0; j < out; j++) dZ[(size_t)t * out + j] = dY[(size_t)t * out + j] * g[j];
    if (dX) {
        /* the base wrote dY W; the layer's is (g dY) W */
        for (int t = 0; t < BT; t++)
            for (int j = 0; j < out; j++) Z[(size_t)t * out + j] = dY[(size_t)t * out + j] * (g[j] - 1.0f);
        wmat_sgemm(0, 0, BT, in, out, 1.0f, Z, out, W, in, 1.0f, dX, in);
    }
    wmat__lora_path_backward(s, c, dX, dw, dxa, dZ, X, w, act, BT, in, out);
}

static int dora_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    wmat_sgemm(0, 0, out, in, c->rank, wmat__lora_scale(c), w[1], c->rank, w[0], in, 1.0f, W, in); /* V = W + s B A */
    for (int j = 0; j < out; j++) {
        double ss = 0;
        for (int i = 0; i < in; i++) ss += (double)W[(size_t)j * in + i] * W[(size_t)j * in + i];
        const float n = (float)sqrt(ss), gj = n > 0 ? w[2][j] / n : 0.0f;
        for (int i = 0; i < in; i++) W[(size_t)j * in + i] *= gj;
    }
    return WMAT_OK;
}

static size_t dora_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    return wmat__lora_peft_config(c, buf, n, 0, NULL, "  \"use_dora\": true,\n");
}

static int dora_parse(const void *json, wmat__adapter_cfg *c)
{
    const cJSON *j = json;
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_dora"))) return 0;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora"))) return 0; /* not supported: refused as unread */
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r"), *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = cJSON_IsNumber(a) ? (float)a->valuedouble : (float)c->rank;
    return 1;
}

const wmat__adapter wmat__adapter_dora = {
    .name = "dora",
    .summary = "DoRA: m (W + s B A) / ||W + s B A|| per output row, m from W's row norms (norm detached in backward)",
    .n_tensors = 3,
    .tensor_key = {"lora_A", "lora_B", "lora_magnitude_vector"},
    .rows_are_out = {0, 1, 1},
    .approx_grad = 3u, /* A, B: the norm is a constant in backward */
    .shapes = dora_shapes,
    .check = dora_check,
    .act_floats = wmat__lora_act_floats,
    .scratch_floats = dora_scratch_floats,
    .scale = wmat__lora_scale,
    .init = dora_init,
    .forward = dora_forward,
    .backward = dora_backward,
    .merge = dora_merge,
    .peft_type = "LORA",
    .peft_config = dora_config,
    .peft_parse = dora_parse,
};
