/* VeRA (Kopiczko et al. 2024, "Vector-based Random Matrix Adaptation"):
 * one frozen random pair A (r, in_max), B (out_max, r) shared by ALL
 * adapted layers, each layer using the slices A[:, :in] and B[:out, :], and
 * per layer two trained vectors, b (out) and d (r):
 *
 *     y = x W^T + b * ((d * (x A_s^T)) B_s^T),   dW = diag(b) B_s diag(d) A_s
 *
 * As PEFT (tuners/vera): A and B Kaiming-uniform (bound sqrt(6 / fan_in):
 * in_max for A, r for B) from their own generator, seeded by the projection
 * key (0), not by the run's seed; d starts at d_initial = 0.1, b at 0, so
 * the adapted layer starts as the base. r + out trained floats per layer.
 *
 * HF permutes the rows of q and k for its rotary order; B's rows are output
 * features, so a q/k layer reads B_s through that permutation (the shared
 * tensor is HF's, c->hf_rope_heads) and b's rows go to PEFT files in HF's
 * order like LoRA's B: the file applies to the HF checkpoint as is.
 *
 * Forward keeps xa = X A_s^T (BT, r); backward forms Z = (xa d) B_s^T
 * (BT, out) again for db. */
#include "adapter.h"

#include "../io/model_internal.h"
#include "../linalg/linalg.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define VERA_D_INITIAL 0.1f
#define VERA_PRNG_KEY 0

static void vera_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    (void)in;
    rows[0] = out; /* b (lambda_b): a vector */
    cols[0] = 0;
    rows[1] = c->rank; /* d (lambda_d): a vector */
    cols[1] = 0;
}

static void vera_shared_shapes(const wmat__adapter_cfg *c, int *rows, int *cols)
{
    rows[0] = c->rank; /* A */
    cols[0] = c->in_max;
    rows[1] = c->out_max; /* B */
    cols[1] = c->rank;
}

static int vera_init_shared(const wmat__adapter_cfg *c, float *shared)
{
    if (c->rank < 1 || c->in_max < 1 || c->out_max < 1)
        return wmat_set_error(WMAT_ERR_INVALID, "vera: rank and the largest layer must be positive");
    wmat_rng g;
    wmat_rng_seed(&g, VERA_PRNG_KEY);
    const float ba = sqrtf(6.0f / (float)c->in_max), bb = sqrtf(6.0f / (float)c->rank);
    const size_t na = (size_t)c->rank * c->in_max, nb = (size_t)c->out_max * c->rank;
    for (size_t j = 0; j < na; j++) shared[j] = (2.0f * wmat_rng_uniform(&g) - 1.0f) * ba;
    for (size_t j = 0; j < nb; j++) shared[na + j] = (2.0f * wmat_rng_uniform(&g) - 1.0f) * bb;
    return WMAT_OK;
}

static int vera_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base;
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "vera: rank must be positive");
    if (c->shared && (in > c->in_max || out > c->out_max))
        return wmat_set_error(WMAT_ERR_INVALID, "vera: the %s layer (%d x %d) is larger than the shared A, B (%d x %d)",
                              what, out, in, c->out_max, c->in_max);
    return WMAT_OK;
}

static size_t vera_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }
/* Bs (out, r) the layer's B slice in its row order, Bb (out, r), Z (BT,
 * out), and (BT, r) */
static size_t vera_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)in;
    return 2 * (size_t)out * c->rank + (size_t)BT * out + (size_t)BT * c->rank;
}
static float vera_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int vera_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                     int in, int out, wmat_rng *rng)
{
    (void)fixed, (void)base, (void)W, (void)in, (void)out, (void)rng;
    /* b = 0 (zeroed on entry), d = d_initial */
    for (int j = 0; j < c->rank; j++) w[1][j] = VERA_D_INITIAL;
    return WMAT_OK;
}

/* The layer's slices: A_s = A[:, :in] (leading dimension in_max) and B_s
 * (out, r) in the layer's row order (llama2.c's for q/k: HF's rows of the
 * shared B unpermuted into tmp; the first out rows of B otherwise). */
static const float *slice_B(const wmat__adapter_cfg *c, float *tmp, int out)
{
    const float *B = c->shared + (size_t)c->rank * c->in_max;
    if (!c->hf_rope_heads) return B;
    wmat__rope_unpermute_hf(tmp, B, c->hf_rope_heads, out / c->hf_rope_heads, c->rank);
    return tmp;
}

/* Bb = diag(b) B_s (diag(d) when d is not NULL) */
static void scale_B(float *Bb, const float *Bs, const float *b, const float *d, int out, int r)
{
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) Bb[(size_t)o * r + j] = b[o] * Bs[(size_t)o * r + j] * (d ? d[j] : 1.0f);
}

static void vera_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                         const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed, (void)base;
    const int r = c->rank;
    const float *A = c->shared, *b = w[0], *d = w[1];
    float *Bb = scratch + (size_t)out * r, *xd = Bb + (size_t)out * r;
    const float *Bs = slice_B(c, scratch, out);
    scale_B(Bb, Bs, b, NULL, out, r);
    wmat_sgemm(0, 1, BT, r, in, 1.0f, X, in, A, c->in_max, 0.0f, act, r); /* xa = X A_s^T */
    for (size_t t = 0; t < (size_t)BT; t++)
        for (int j = 0; j < r; j++) xd[t * r + j] = act[t * r + j] * d[j];
    wmat_sgemm(0, 1, BT, out, r, 1.0f, xd, r, Bb, r, 1.0f, Y, out); /* Y += (xa d) (diag(b) B_s)^T */
}

static void vera_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                          const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                          const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base, (void)X;
    const int r = c->rank;
    const float *A = c->shared, *b = w[0], *d = w[1];
    float *Bb = scratch + (size_t)out * r, *Z = Bb + (size_t)out * r, *g = Z + (size_t)BT * out;
    const float *Bs = slice_B(c, scratch, out);
    if (dw[0]) {
        /* db_o = sum_t dY_to Z_to, Z = (xa d) B_s^T */
        for (size_t t = 0; t < (size_t)BT; t++)
            for (int j = 0; j < r; j++) g[t * r + j] = act[t * r + j] * d[j];
        wmat_sgemm(0, 1, BT, out, r, 1.0f, g, r, Bs, r, 0.0f, Z, out);
        for (int o = 0; o < out; o++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += (double)dY[t * out + o] * Z[t * out + o];
            dw[0][o] += (float)acc;
        }
    }
    scale_B(Bb, Bs, b, NULL, out, r);
    wmat_sgemm(0, 0, BT, r, out, 1.0f, dY, out, Bb, r, 0.0f, g, r); /* g = dY diag(b) B_s: d(xa d) */
    if (dw[1])
        for (int j = 0; j < r; j++) {
            double acc = 0;
            for (size_t t = 0; t < (size_t)BT; t++) acc += (double)g[t * r + j] * act[t * r + j];
            dw[1][j] += (float)acc;
        }
    if (dX) {
        for (size_t t = 0; t < (size_t)BT; t++)
            for (int j = 0; j < r; j++) g[t * r + j] *= d[j];
        wmat_sgemm(0, 0, BT, in, r, 1.0f, g, r, A, c->in_max, 1.0f, dX, in); /* dX += (g d) A_s */
    }
}

static int vera_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    const int r = c->rank;
    if (!c->shared) return wmat_set_error(WMAT_ERR_INTERNAL, "vera: merge without the shared A, B");
    float *tmp = wmat__malloc(2 * (size_t)out * r * sizeof(float) + 1);
    if (!tmp) return wmat_set_error(WMAT_ERR_NOMEM, "vera merge: out of memory");
    float *Bbd = tmp + (size_t)out * r;
    scale_B(Bbd, slice_B(c, tmp, out), w[0], w[1], out, r);
    wmat_sgemm(0, 0, out, in, r, 1.0f, Bbd, r, c->shared, c->in_max, 1.0f, W, in); /* W += diag(b) B_s diag(d) A_s */
    wmat__free(tmp);
    return WMAT_OK;
}

static size_t vera_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    int k = snprintf(buf, n,
                     "  \"r\": %d,\n  \"projection_prng_key\": %d,\n  \"save_projection\": true,\n"
                     "  \"vera_dropout\": 0.0,\n  \"d_initial\": %g,\n  \"fan_in_fan_out\": false,\n"
                     "  \"bias\": \"none\",\n  \"init_weights\": true,\n",
                     c->rank, VERA_PRNG_KEY, (double)VERA_D_INITIAL);
    return k < 0 ? 0 : (size_t)k;
}

static int vera_parse(const void *json, wmat__adapter_cfg *c)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive((const cJSON *)json, "r");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = 1.0f;
    return 1;
}

const wmat__adapter wmat__adapter_vera = {
    .name = "vera",
    .summary = "VeRA: W + diag(b) B diag(d) A, A and B random, frozen and shared by all layers; b (out), d (r) trained",
    .n_tensors = 2,
    .tensor_key = {"vera_lambda_b", "vera_lambda_d"},
    .rows_are_out = {1, 0},
    .shapes = vera_shapes,
    .check = vera_check,
    .n_shared = 2,
    .shared_key = {"base_model.vera_A", "base_model.vera_B"},
    .shared_shapes = vera_shared_shapes,
    .init_shared = vera_init_shared,
    .peft_bare_keys = 1,
    .act_floats = vera_act_floats,
    .scratch_floats = vera_scratch_floats,
    .scale = vera_scale,
    .init = vera_init,
    .forward = vera_forward,
    .backward = vera_backward,
    .merge = vera_merge,
    .peft_type = "VERA",
    .peft_config = vera_config,
    .peft_parse = vera_parse,
};
