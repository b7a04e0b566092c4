/* LoRA (Hu et al. 2021) and rsLoRA (Kalajdzievski 2023): W + s B A with
 * A (r, in), B (out, r); s = alpha / r, or alpha / sqrt(r) for rsLoRA.
 * A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming-uniform bound), B = 0,
 * so training starts from the base model's function. Forward keeps
 * xa = X A^T (BT, r) for the backward. */
#include "adapter.h"

#include "../linalg/linalg.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

void wmat__lora_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = c->rank; /* A */
    cols[0] = in;
    rows[1] = out;     /* B */
    cols[1] = c->rank;
}

size_t wmat__lora_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
size_t wmat__lora_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in, (void)out;
    return (size_t)BT * c->rank;
}

float wmat__lora_scale(const wmat__adapter_cfg *c) { return c->alpha / (float)c->rank; }
static float rslora_scale(const wmat__adapter_cfg *c) { return c->alpha / sqrtf((float)c->rank); }

int wmat__lora_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                     int out, wmat_rng *rng)
{
    (void)fixed, (void)base, (void)W, (void)out;
    const float bound = 1.0f / sqrtf((float)in);
    float *A = w[0];
    for (size_t j = 0; j < (size_t)c->rank * in; j++) A[j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bound;
    return WMAT_OK;
}

void wmat__lora_path_forward(float s, const wmat__adapter_cfg *c, float *Y, float *xa, const float *X, const float *const *w,
                      int BT, int in, int out)
{
    const int r = c->rank;
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, w[0], in, 0.0f, xa, r); /* xa = X A^T (BT, r) */
    wmat_sgemm(0, 1, BT, out, r, s, xa, r, w[1], r, 1.0f, Y, out);  /* Y += s xa B^T */
}

void wmat__lora_path_backward(float s, const wmat__adapter_cfg *c, float *dX, float *const *dw, float *dxa, const float *dY,
                       const float *X, const float *const *w, const float *xa, int BT, int in, int out)
{
    const int r = c->rank;
    if (dw[1]) wmat_sgemm(1, 0, out, r, BT, s, dY, out, xa, r, 1.0f, dw[1], r);   /* dB += s dY^T xa (out, r) */
    wmat_sgemm(0, 0, BT, r, out, s, dY, out, w[1], r, 0.0f, dxa, r);              /* dxa = s dY B (BT, r) */
    if (dw[0]) wmat_sgemm(1, 0, r, in, BT, 1.0f, dxa, r, X, in, 1.0f, dw[0], in); /* dA += dxa^T X (r, in) */
    if (dX) wmat_sgemm(0, 0, BT, in, r, 1.0f, dxa, r, w[0], in, 1.0f, dX, in);    /* dX += dxa A */
}

static void merge_s(float s, const wmat__adapter_cfg *c, float *W, const float *const *w, int in, int out)
{
    wmat_sgemm(0, 0, out, in, c->rank, s, w[1], c->rank, w[0], in, 1.0f, W, in); /* W += s B A */
}

#define WRAP(pre, scalefn)                                                                                            \
    static void pre##_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,     \
                              const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in,    \
                              int out)                                                                                \
    {                                                                                                                 \
        (void)fixed, (void)scratch, (void)base;                                                                                 \
        wmat__lora_path_forward(scalefn(c), c, Y, act, X, w, BT, in, out);                                                         \
    }                                                                                                                 \
    static void pre##_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch,             \
                               const float *dY, const float *X, const float *const *w, const void *fixed,           \
                               const wmat_tensor *base, const float *act, int BT, int in, int out)                   \
    {                                                                                                                 \
        (void)fixed, (void)base;                                                                                                \
        wmat__lora_path_backward(scalefn(c), c, dX, dw, scratch, dY, X, w, act, BT, in, out);                                      \
    }                                                                                                                 \
    static int pre##_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in,  \
                           int out)                                                                                   \
    {                                                                                                                 \
        (void)fixed;                                                                                                  \
        merge_s(scalefn(c), c, W, w, in, out);                                                                       \
        return WMAT_OK;                                                                                               \
    }
WRAP(lora, wmat__lora_scale)
WRAP(rslora, rslora_scale)

size_t wmat__lora_peft_config(const wmat__adapter_cfg *c, char *buf, size_t n, int rs, const char *init, const char *extra)
{
    int k = snprintf(buf, n,
                     "  \"r\": %d,\n  \"lora_alpha\": %g,\n  \"lora_dropout\": 0.0,\n  \"use_rslora\": %s,\n"
                     "  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"init_lora_weights\": %s,\n%s",
                     c->rank, c->alpha, rs ? "true" : "false", init ? init : "true", extra ? extra : "");
    return k < 0 ? 0 : (size_t)k;
}
static size_t lora_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    return wmat__lora_peft_config(c, buf, n, 0, NULL, NULL);
}
static size_t rslora_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    return wmat__lora_peft_config(c, buf, n, 1, NULL, NULL);
}

static int parse_rs(const void *json, wmat__adapter_cfg *c, int rs)
{
    const cJSON *j = json;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora")) != rs) return 0;
    /* DoRA files (use_dora) and unconverted PiSSA/OLoRA ones (their A, B
     * apply to a residual base) are other entries' */
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_dora"))) return 0;
    const cJSON *iw = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (cJSON_IsString(iw) && (!strncmp(iw->valuestring, "pissa", 5) || !strcmp(iw->valuestring, "olora"))) return 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r"), *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = cJSON_IsNumber(a) ? (float)a->valuedouble : (float)c->rank;
    return 1;
}
static int lora_parse(const void *json, wmat__adapter_cfg *c) { return parse_rs(json, c, 0); }
static int rslora_parse(const void *json, wmat__adapter_cfg *c) { return parse_rs(json, c, 1); }

const wmat__adapter wmat__adapter_lora = {
    .name = "lora",
    .summary = "LoRA: W + (alpha/r) B A, A (r, in) uniform, B (out, r) zero",
    .n_tensors = 2,
    .tensor_key = {"lora_A", "lora_B"},
    .rows_are_out = {0, 1},
    .shapes = wmat__lora_shapes,
    .act_floats = wmat__lora_act_floats,
    .scratch_floats = wmat__lora_scratch_floats,
    .scale = wmat__lora_scale,
    .init = wmat__lora_init,
    .forward = lora_forward,
    .backward = lora_backward,
    .merge = lora_merge,
    .peft_type = "LORA",
    .peft_config = lora_config,
    .peft_parse = lora_parse,
};

const wmat__adapter wmat__adapter_rslora = {
    .name = "rslora",
    .summary = "rank-stabilized LoRA: W + (alpha/sqrt(r)) B A",
    .n_tensors = 2,
    .tensor_key = {"lora_A", "lora_B"},
    .rows_are_out = {0, 1},
    .shapes = wmat__lora_shapes,
    .act_floats = wmat__lora_act_floats,
    .scratch_floats = wmat__lora_scratch_floats,
    .scale = rslora_scale,
    .init = wmat__lora_init,
    .forward = rslora_forward,
    .backward = rslora_backward,
    .merge = rslora_merge,
    .peft_type = "LORA",
    .peft_config = rslora_config,
    .peft_parse = rslora_parse,
};
