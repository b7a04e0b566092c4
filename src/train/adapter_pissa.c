/* PiSSA (Meng et al. 2024) and OLoRA (Büyükakyüz 2024): LoRA whose A, B
 * start from W itself, the base becoming the residual W - s B0 A0, so at
 * init the layer is exactly W (up to float rounding) and training moves
 * W's principal part.
 *   PiSSA: W = U S V^T (thin SVD), B0 = U_r sqrt(S_r / s),
 *          A0 = sqrt(S_r / s) V_r^T, so s B0 A0 is W's best rank-r part.
 *   OLoRA: W = Q R (Householder QR), B0 = Q_r, A0 = R_r = Q_r^T W (PEFT's
 *          olora_init: no 1/s, the residual is W - s Q_r R_r).
 * As PEFT does (init_lora_weights "pissa" / "olora"), the trainer runs the
 * layer on a private residual copy (rewrites_base); A0, B0 are kept as
 * fixed data, so merge into the ORIGINAL W adds s (B A - B0 A0), and the
 * PEFT file is PEFT's conversion to a plain LoRA of rank 2r that applies to
 * the original base: A' = [A; A0], B' = [B, -B0], r' = 2r, alpha' = 2 alpha
 * (same scale). A PEFT file saved without conversion (init_lora_weights
 * "pissa..." / "olora") merges onto the original base by recomputing
 * A0, B0 from W, as PEFT does on load (exact SVD for "pissa_niter_N" too:
 * B0 A0 is W's rank-r part whatever the signs; PEFT's randomized SVD
 * approximates it). */
#include "adapter.h"

#include "../linalg/linalg.h"
#include "../linalg/linalg_train.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <string.h>

static size_t pissa_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    return (size_t)c->rank * ((size_t)in + out) * sizeof(float); /* A0 (r, in), B0 (out, r) */
}

static int pissa_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    if (c->rank < 1) return wmat_set_error(WMAT_ERR_INVALID, "pissa/olora: rank must be positive");
    int rc = wmat__adapter_check_rank(c, in, out, "pissa/olora", what);
    return rc ? rc : wmat__adapter_check_f32(base, "pissa/olora", what);
}

/* A0, B0 from W (out, in) into A, B; W becomes W - s B0 A0. */
static int svd_init(const wmat__adapter_cfg *c, float *A, float *B, float *W, int in, int out)
{
    const int k = in < out ? in : out, r = c->rank;
    const float s = wmat__lora_scale(c);
    float *M = wmat__malloc(((size_t)out * in + k + (size_t)out * k + (size_t)k * in) * sizeof(float));
    if (!M) return wmat_set_error(WMAT_ERR_NOMEM, "pissa: out of memory for the SVD of a %d x %d weight", out, in);
    float *S = M + (size_t)out * in, *U = S + k, *VT = U + (size_t)out * k;
    memcpy(M, W, (size_t)out * in * sizeof(float));
    int rc = wmat__train_svd_thin(out, in, M, in, S, U, k, VT, in);
    if (!rc) {
        for (int j = 0; j < r; j++) {
            const float q = sqrtf(S[j] / s);
            for (int i = 0; i < in; i++) A[(size_t)j * in + i] = q * VT[(size_t)j * in + i];
            for (int o = 0; o < out; o++) B[(size_t)o * r + j] = q * U[(size_t)o * k + j];
        }
        wmat_sgemm(0, 0, out, in, r, -s, B, r, A, in, 1.0f, W, in);
    }
    wmat__free(M);
    return rc;
}

static int qr_init(const wmat__adapter_cfg *c, float *A, float *B, float *W, int in, int out)
{
    const int k = in < out ? in : out, r = c->rank;
    float *Q = wmat__malloc(((size_t)out * k + k) * sizeof(float));
    if (!Q) return wmat_set_error(WMAT_ERR_NOMEM, "olora: out of memory for the QR of a %d x %d weight", out, in);
    /* Householder QR is column by column: W's first k columns give its Q */
    for (int o = 0; o < out; o++) memcpy(Q + (size_t)o * k, W + (size_t)o * in, (size_t)k * sizeof(float));
    int rc = wmat__train_orthonormalize(out, k, Q, k, Q + (size_t)out * k);
    if (!rc) {
        for (int o = 0; o < out; o++) memcpy(B + (size_t)o * r, Q + (size_t)o * k, (size_t)r * sizeof(float));
        wmat_sgemm(1, 0, r, in, out, 1.0f, B, r, W, in, 0.0f, A, in); /* R_r = Q_r^T W */
        wmat_sgemm(0, 0, out, in, r, -wmat__lora_scale(c), B, r, A, in, 1.0f, W, in);
    }
    wmat__free(Q);
    return rc;
}

typedef int (*init_fn)(const wmat__adapter_cfg *c, float *A, float *B, float *W, int in, int out);

static int init_with(init_fn f, const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base,
                     float *W, int in, int out)
{
    if (!W) return wmat__adapter_check_f32(base, "pissa/olora", "the layer's");
    int rc = f(c, w[0], w[1], W, in, out);
    if (!rc && fixed) {
        memcpy(fixed, w[0], (size_t)c->rank * in * sizeof(float));
        memcpy((float *)fixed + (size_t)c->rank * in, w[1], (size_t)out * c->rank * sizeof(float));
    }
    return rc;
}

static int pissa_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)rng;
    return init_with(svd_init, c, w, fixed, base, W, in, out);
}
static int olora_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W,
                      int in, int out, wmat_rng *rng)
{
    (void)rng;
    return init_with(qr_init, c, w, fixed, base, W, in, out);
}

static void pissa_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                          const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)scratch, (void)fixed, (void)base;
    wmat__lora_path_forward(wmat__lora_scale(c), c, Y, act, X, w, BT, in, out);
}

static void pissa_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                           const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                           const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base;
    wmat__lora_path_backward(wmat__lora_scale(c), c, dX, dw, scratch, dY, X, w, act, BT, in, out);
}

/* W (original) += s (B A - B0 A0); without fixed (a PEFT file) the init is
 * recomputed from W: W = residual + s B A. */
static int merge_with(init_fn f, const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in,
                      int out)
{
    const int r = c->rank;
    const float s = wmat__lora_scale(c);
    if (fixed) {
        const float *A0 = fixed, *B0 = A0 + (size_t)r * in;
        wmat_sgemm(0, 0, out, in, r, s, w[1], r, w[0], in, 1.0f, W, in);
        wmat_sgemm(0, 0, out, in, r, -s, B0, r, A0, in, 1.0f, W, in);
        return WMAT_OK;
    }
    float *AB = wmat__malloc((size_t)r * ((size_t)in + out) * sizeof(float));
    if (!AB) return wmat_set_error(WMAT_ERR_NOMEM, "pissa/olora merge: out of memory");
    int rc = f(c, AB, AB + (size_t)r * in, W, in, out); /* W: the residual */
    if (!rc) wmat_sgemm(0, 0, out, in, r, s, w[1], r, w[0], in, 1.0f, W, in);
    wmat__free(AB);
    return rc;
}
static int pissa_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    return merge_with(svd_init, c, W, w, fixed, in, out);
}
static int olora_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    return merge_with(qr_init, c, W, w, fixed, in, out);
}

/* PEFT's conversion (save_pretrained(path_initial_model_for_weight_conversion)):
 * a LoRA of rank 2r, alpha 2 alpha, [A; A0] and [B, -B0]. */
static void conv_cfg(const wmat__adapter_cfg *c, wmat__adapter_cfg *as)
{
    *as = *c;
    as->rank = 2 * c->rank;
    as->alpha = 2 * c->alpha;
}
static void conv_export(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                        float *const *dst)
{
    const int r = c->rank;
    const float *A0 = fixed, *B0 = A0 + (size_t)r * in;
    memcpy(dst[0], w[0], (size_t)r * in * sizeof(float));
    memcpy(dst[0] + (size_t)r * in, A0, (size_t)r * in * sizeof(float));
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) {
            dst[1][(size_t)o * 2 * r + j] = w[1][(size_t)o * r + j];
            dst[1][(size_t)o * 2 * r + r + j] = -B0[(size_t)o * r + j];
        }
}

/* Reads unconverted PEFT files of the init (their A, B apply to the residual). */
static int parse_init(const void *json, wmat__adapter_cfg *c, const char *init, size_t cmp)
{
    const cJSON *j = json, *iw = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (!cJSON_IsString(iw) || strncmp(iw->valuestring, init, cmp)) return 0;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_dora")))
        return 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r"), *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = cJSON_IsNumber(a) ? (float)a->valuedouble : (float)c->rank;
    return 1;
}
static int pissa_parse(const void *json, wmat__adapter_cfg *c) { return parse_init(json, c, "pissa", 5); }
static int olora_parse(const void *json, wmat__adapter_cfg *c) { return parse_init(json, c, "olora", 6); }
static size_t pissa_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    return wmat__lora_peft_config(c, buf, n, 0, "\"pissa\"", NULL);
}
static size_t olora_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    return wmat__lora_peft_config(c, buf, n, 0, "\"olora\"", NULL);
}

#define ENTRY(nm, sum, initf, mergef, cfgf, parsef)                                                                   \
    {                                                                                                                 \
        .name = nm, .summary = sum, .n_tensors = 2, .tensor_key = {"lora_A", "lora_B"}, .rows_are_out = {0, 1},       \
        .rewrites_base = 1, .shapes = wmat__lora_shapes, .check = pissa_check, .fixed_bytes = pissa_fixed_bytes,      \
        .act_floats = wmat__lora_act_floats, .scratch_floats = wmat__lora_scratch_floats, .scale = wmat__lora_scale, \
        .init = initf, .forward = pissa_forward, .backward = pissa_backward, .merge = mergef, .peft_type = "LORA",    \
        .peft_config = cfgf, .peft_parse = parsef, .peft_as = &wmat__adapter_lora, .peft_cfg = conv_cfg,              \
        .peft_export = conv_export,                                                                                   \
    }

const wmat__adapter wmat__adapter_pissa =
    ENTRY("pissa", "PiSSA: LoRA with A, B from W's top-r SVD, the base the residual W - s B0 A0", pissa_init,
          pissa_merge, pissa_config, pissa_parse);
const wmat__adapter wmat__adapter_olora =
    ENTRY("olora", "OLoRA: LoRA with B = Q_r, A = R_r of W = QR, the base the residual W - s Q_r R_r", olora_init,
          olora_merge, olora_config, olora_parse);
