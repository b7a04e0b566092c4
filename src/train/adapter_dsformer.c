/* DSFormer's Straight-Through Factorizer (SPECS H6): the linear layer is
 * W = D S, D (out, k) dense, S (k, in) with exactly s = ceil(density k)
 * entries per column. The trainer keeps a dense latent S~ (k, in); the
 * forward uses S = top-s(|S~|) of every column, recomputed at every step,
 * and the backward hands the gradient of the dense S to all of S~ (the
 * straight-through estimate: by design not the forward's exact gradient,
 * hence approx_grad), so an entry outside the mask can grow back into it.
 * `dsformer-fixed` keeps the mask of the first step (in its fixed data) and
 * gives S~ the exact, masked gradient. With density 1 (s = k) both are
 * plain low-rank fine-tuning of W = D S, the baseline at equal parameters.
 *
 * The entries replace the layer (replaces_base): from a pretrained f32
 * weight W they start where `wmat decompose --method dsformer` ends (D =
 * the least-squares fit for the mask of V_k^T, S~ = V_k^T, all of it), from
 * none (a new model, the registry's checks) at random. The trained layer is
 * exported as a `dsf` weight, which saves and runs as such (with s = k as
 * a `lowrank` one: the same function without indices).
 *
 * Forward keeps Z = X S^T (BT, k). Scratch: the masked S (k, in) as a dense
 * matrix (the products are GEMMs: at training sizes a dense k x in S costs
 * less than a sparse kernel's bookkeeping), dZ (BT, k), the selection's
 * work and the mask. */
#include "adapter.h"

#include "../decomp/decomp.h"
#include "../linalg/linalg.h"
#include "../wop/wop.h"

#include <math.h>
#include <string.h>

static int nnz_of(const wmat__adapter_cfg *c)
{
    const int k = c->rank;
    int s = (int)ceil((double)c->density * k - 1e-4); /* 0.4f * 5 is 2, not 3 */
    if (s < 1) s = 1;
    return s > k ? k : s;
}

static void ds_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = out; /* D */
    cols[0] = c->rank;
    rows[1] = c->rank; /* S~ */
    cols[1] = in;
}

static int ds_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base;
    const int mn = in < out ? in : out;
    if (c->rank < 1 || c->rank > mn)
        return wmat_set_error(WMAT_ERR_INVALID, "dsformer: rank %d (k, the columns of D) does not fit %s (%d x %d): it must be in [1, %d]",
                              c->rank, what, out, in, mn);
    if (!(c->density > 0.0f && c->density <= 1.0f))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "dsformer: density %g must be in (0, 1]: the share of S's k rows kept in each column (1: low rank)",
                              (double)c->density);
    if (c->rank > 65536) return wmat_set_error(WMAT_ERR_INVALID, "dsformer: rank %d is above 65536", c->rank);
    return WMAT_OK;
}

/* dsformer-fixed: the mask, s row indices per column (in, s) int32 */
static size_t fx_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)out;
    return (size_t)in * (size_t)nnz_of(c) * sizeof(int32_t);
}

static int fx_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    (void)out;
    const int32_t *idx = fixed;
    const int s = nnz_of(c);
    for (int col = 0; col < in; col++)
        for (int q = 0; q < s; q++) {
            const int32_t j = idx[(size_t)col * s + q];
            if (j < 0 || j >= c->rank) return 0;
            for (int p = 0; p < q; p++)
                if (idx[(size_t)col * s + p] == j) return 0;
        }
    return 1;
}

static size_t ds_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * c->rank; }

static size_t al16(size_t n) { return (n + 15) & ~(size_t)15; }

/* Sm (k, in), dZ (BT, k), the selection's work, the mask (in, s) */
static size_t ds_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)out;
    const size_t k = (size_t)c->rank;
    return al16(k * in) + al16((size_t)BT * k) + al16(wmat__dsformer_tops_work(c->rank) / sizeof(float) + 1) +
           al16((size_t)in * nnz_of(c));
}

static float ds_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

typedef struct {
    float *Sm, *dZ;
    void *work;
    int32_t *idx;
} ds_scr;

static ds_scr carve(const wmat__adapter_cfg *c, float *scratch, int BT, int in)
{
    const size_t k = (size_t)c->rank;
    ds_scr r;
    r.Sm = scratch;
    r.dZ = r.Sm + al16(k * in);
    r.work = r.dZ + al16((size_t)BT * k);
    r.idx = (int32_t *)((float *)r.work + al16(wmat__dsformer_tops_work(c->rank) / sizeof(float) + 1));
    return r;
}

/* Sm = S~ on the mask (idx: s rows per column), 0 elsewhere */
static void masked(const wmat__adapter_cfg *c, float *Sm, const float *St, const int32_t *idx, int in)
{
    const int s = nnz_of(c);
    memset(Sm, 0, (size_t)c->rank * in * sizeof(float));
    for (int col = 0; col < in; col++)
        for (int q = 0; q < s; q++) {
            const size_t p = (size_t)idx[(size_t)col * s + q] * in + col;
            Sm[p] = St[p];
        }
}

/* the mask of this step: fixed, or the top-s of S~ now */
static const int32_t *mask_of(const wmat__adapter_cfg *c, const float *St, const void *fixed, ds_scr *r, int in)
{
    if (fixed) return fixed;
    wmat__dsformer_tops(St, c->rank, in, nnz_of(c), r->idx, r->work);
    return r->idx;
}

static int init_common(const wmat__adapter_cfg *c, float *const *w, const float *W, int in, int out, wmat_rng *rng)
{
    const int k = c->rank;
    if (W) return wmat__dsformer_init(W, out, in, k, nnz_of(c), 1, w[0], w[1]);
    /* no pretrained weight: Kaiming-uniform bounds of the two products */
    const float bd = 1.0f / sqrtf((float)k), bs = 1.0f / sqrtf((float)in);
    for (size_t j = 0; j < (size_t)out * k; j++) w[0][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bd;
    for (size_t j = 0; j < (size_t)k * in; j++) w[1][j] = (2.0f * wmat_rng_uniform(rng) - 1.0f) * bs;
    return WMAT_OK;
}

static int stf_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    (void)fixed, (void)base;
    return init_common(c, w, W, in, out, rng);
}

static int fx_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)base;
    int rc = init_common(c, w, W, in, out, rng);
    if (rc) return rc;
    void *work = wmat__malloc(wmat__dsformer_tops_work(c->rank));
    if (!work) return wmat_set_error(WMAT_ERR_NOMEM, "dsformer-fixed: out of memory");
    wmat__dsformer_tops(w[1], c->rank, in, nnz_of(c), fixed, work);
    wmat__free(work);
    return WMAT_OK;
}

static void ds_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)base;
    const int k = c->rank;
    ds_scr r = carve(c, scratch, BT, in);
    masked(c, r.Sm, w[1], mask_of(c, w[1], fixed, &r, in), in);
    wmat_sgemm(0, 1, BT, k, in, 1.0f, X, in, r.Sm, in, 0.0f, act, k);      /* Z = X S^T */
    wmat_sgemm(0, 1, BT, out, k, 1.0f, act, k, w[0], k, 1.0f, Y, out);     /* Y += Z D^T */
}

static void ds_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)base;
    const int k = c->rank;
    ds_scr r = carve(c, scratch, BT, in);
    const int32_t *idx = mask_of(c, w[1], fixed, &r, in);
    wmat_sgemm(0, 0, BT, k, out, 1.0f, dY, out, w[0], k, 0.0f, r.dZ, k); /* dZ = dY D */
    if (dw[0]) wmat_sgemm(1, 0, out, k, BT, 1.0f, dY, out, act, k, 1.0f, dw[0], k); /* dD += dY^T Z */
    if (dw[1]) {
        if (!fixed) {
            /* straight through: the dense gradient dZ^T X reaches every entry of S~ */
            wmat_sgemm(1, 0, k, in, BT, 1.0f, r.dZ, k, X, in, 1.0f, dw[1], in);
        } else {
            /* fixed mask: the exact gradient, nonzero on the mask only */
            float *G = r.Sm;
            wmat_sgemm(1, 0, k, in, BT, 1.0f, r.dZ, k, X, in, 0.0f, G, in);
            const int s = nnz_of(c);
            for (int col = 0; col < in; col++)
                for (int q = 0; q < s; q++) {
                    const size_t p = (size_t)idx[(size_t)col * s + q] * in + col;
                    dw[1][p] += G[p];
                }
        }
    }
    if (dX) {
        masked(c, r.Sm, w[1], idx, in);
        wmat_sgemm(0, 0, BT, in, k, 1.0f, r.dZ, k, r.Sm, in, 1.0f, dX, in); /* dX += dZ S */
    }
}

/* W += D S (the trainer hands a replacing entry a zero W) */
static int ds_merge_any(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    const int k = c->rank, s = nnz_of(c);
    float *Sm = wmat__malloc((size_t)k * in * sizeof(float));
    int32_t *idx = fixed ? NULL : wmat__malloc((size_t)in * s * sizeof(int32_t));
    void *work = fixed ? NULL : wmat__malloc(wmat__dsformer_tops_work(k));
    if (!Sm || (!fixed && (!idx || !work))) {
        wmat__free(Sm), wmat__free(idx), wmat__free(work);
        return wmat_set_error(WMAT_ERR_NOMEM, "dsformer: out of memory");
    }
    if (!fixed) wmat__dsformer_tops(w[1], k, in, s, idx, work);
    masked(c, Sm, w[1], fixed ? fixed : idx, in);
    wmat_sgemm(0, 0, out, in, k, 1.0f, w[0], k, Sm, in, 1.0f, W, in);
    wmat__free(Sm), wmat__free(idx), wmat__free(work);
    return WMAT_OK;
}

static int ds_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    return ds_merge_any(c, W, w, NULL, in, out);
}

static int fx_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    if (!fixed) return wmat_set_error(WMAT_ERR_INTERNAL, "dsformer-fixed: merge without the mask");
    return ds_merge_any(c, W, w, fixed, in, out);
}

/* the layer as a dsf weight: D and S~ on the mask */
static int to_weight_any(const wmat__adapter_cfg *c, const float *const *w, const int32_t *fixed, int in, int out,
                         wmat_tensor *dst)
{
    const int k = c->rank, s = nnz_of(c);
    if (s == k) {
        /* every entry kept: the same function as a low-rank weight, which
         * stores no indices (the baseline's size is its own) */
        void *lr = NULL;
        int rc = wmat__lowrank_create(WMAT_F32, out, in, k, w[0], w[1], &lr);
        if (!rc) wmat__tensor_own_obj(dst, out, in, lr);
        return rc;
    }
    int32_t *idx = wmat__malloc((size_t)in * s * sizeof(int32_t));
    float *val = wmat__malloc((size_t)in * s * sizeof(float));
    void *work = wmat__malloc(wmat__dsformer_tops_work(k));
    int rc = WMAT_OK;
    if (!idx || !val || !work) rc = wmat_set_error(WMAT_ERR_NOMEM, "dsformer: out of memory");
    if (!rc) {
        if (fixed) memcpy(idx, fixed, (size_t)in * s * sizeof(int32_t));
        else wmat__dsformer_tops(w[1], k, in, s, idx, work);
        for (int col = 0; col < in; col++)
            for (int q = 0; q < s; q++) val[(size_t)col * s + q] = w[1][(size_t)idx[(size_t)col * s + q] * in + col];
        void *obj = NULL;
        if (!(rc = wmat__dsf_create(WMAT_F32, out, in, k, s, w[0], idx, val, &obj))) wmat__tensor_own_obj(dst, out, in, obj);
    }
    wmat__free(idx), wmat__free(val), wmat__free(work);
    return rc;
}

static int ds_to_weight(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out, wmat_tensor *dst)
{
    (void)fixed;
    return to_weight_any(c, w, NULL, in, out, dst);
}

static int fx_to_weight(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out, wmat_tensor *dst)
{
    return to_weight_any(c, w, fixed, in, out, dst);
}

const wmat__adapter wmat__adapter_dsformer = {
    .name = "dsformer",
    .summary = "DSFormer STF: the linear is D S, S = top-s(|S~|) per column each step (s = ceil(density k)), "
               "straight-through gradient to all of S~; starts from the SVD of W; density 1: low-rank fine-tuning",
    .n_tensors = 2,
    .tensor_key = {"dsf_d", "dsf_s_latent"},
    .rows_are_out = {1, 0},
    .replaces_base = 1,
    .approx_grad = 1u << 1,
    .shapes = ds_shapes,
    .check = ds_check,
    .act_floats = ds_act_floats,
    .scratch_floats = ds_scratch_floats,
    .scale = ds_scale,
    .init = stf_init,
    .forward = ds_forward,
    .backward = ds_backward,
    .merge = ds_merge,
    .to_weight = ds_to_weight,
    .peft_type = NULL,
};

const wmat__adapter wmat__adapter_dsformer_fixed = {
    .name = "dsformer-fixed",
    .summary = "DSFormer with the mask of the first step fixed (top-s of the SVD's V_k^T per column); D and the kept values trained",
    .n_tensors = 2,
    .tensor_key = {"dsf_d", "dsf_s_latent"},
    .rows_are_out = {1, 0},
    .replaces_base = 1,
    .shapes = ds_shapes,
    .check = ds_check,
    .fixed_bytes = fx_fixed_bytes,
    .fixed_valid = fx_fixed_valid,
    .act_floats = ds_act_floats,
    .scratch_floats = ds_scratch_floats,
    .scale = ds_scale,
    .init = fx_init,
    .forward = ds_forward,
    .backward = ds_backward,
    .merge = fx_merge,
    .to_weight = fx_to_weight,
    .peft_type = NULL,
};
