/* PreCropping (Cai et al. 2022, "Structured Pruning is All You Need for
 * Pruning CNNs at Initialization"): the paper's finding is that what a
 * pruning-at-initialization (PAI) method really decides is each layer's
 * compression ratio, not which weights go; PreCropping takes the
 * layer-wise density a PAI score gives and crops whole channels to it at
 * initialization, so the model trains (and runs) as a dense, narrower
 * network.
 *
 * Here the channels are the FFN's hidden channels: channel j of layer l is
 * row j of gate and up and column j of down. The entry replaces those three
 * linears (replaces_base, trained from scratch; the rest of the model trains
 * as in full training). Its plan, before the trainer lays out tensors:
 *   1. SNIP scores at initialization: |g * w| for every weight of gate, up
 *      and down, g the gradient of the mean LM loss on one batch of the
 *      calibration windows (`batch` windows of ctx tokens: the trainer's
 *      adapter_calib; wmat train: the training data) through the model as
 *      initialized (wmat_model_weight_gradients);
 *   2. a channel's score is the sum of its gate row's, up row's and down
 *      column's weight scores;
 *   3. the budget is round(density L H) channels (density: --density, the
 *      kept share of all layers' FFN channels), at least one per layer;
 *      precrop takes the layers' best channels first (one each: no layer
 *      collapses) and the rest by one global threshold over all layers'
 *      channel scores (wmat__precrop_counts), so a layer's kept count is
 *      its share of the best-scored channels (the layer-wise ratio SNIP
 *      gives); precrop-uniform keeps the same budget split evenly (the
 *      paper's comparison: equal parameters, uniform ratios);
 *   4. each layer keeps its own highest-scored channels (ties: the lower
 *      channel), with their initial weights (the model's, when f32).
 * Each of gate / up / down of layer l then holds only the kept channels as
 * a dense matrix: gate and up (k, in), their kept output rows; down
 * (out, k), its kept input columns. Forward and backward are GEMMs of those
 * sizes (a gather of k input columns for down, a scatter of k output
 * columns for gate and up), so the FLOPs and the trainable parameters of
 * the FFN are k/H of the full FFN's; the cut channels' gate and up outputs
 * are exactly 0, so silu(0) * 0 = 0 reaches down, whose cut columns are
 * absent: a cut channel contributes exactly nothing.
 *
 * Per-layer data (fixed, int32): [side, k, idx_0 .. idx_{k-1}], side 0 for
 * kept output rows (gate, up), 1 for kept input columns (down), idx the
 * kept channels ascending. Linears targeted besides gate / up / down (q, k,
 * v, o) are kept whole (side 0, every row): this entry does not crop
 * attention heads. Without a plan (the registry's kernel checks) a layer
 * keeps c->rank of its rows (side c->crop_cols), spread evenly.
 *
 * The trained model (to_weight, merge) is full-shape: each FFN linear is
 * the dense (out, in) matrix with the cut rows / columns exactly 0, held as
 * a `sparse` weight whose mask is the kept channels (values f32), so
 * loading, evaluating and dequantizing it need nothing of this entry. The
 * runtime does not crop: the model config has one FFN width for all
 * layers, so inference gains no speed until per-layer widths exist; the
 * training does (tokens/s, docs/EXPERIMENTS.md "PreCropping"). */
#include "adapter.h"

#include "../linalg/linalg.h"
#include "../wop/kern_sparse.h"
#include "../wop/wop.h"
#include "core/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NLIN WMAT_LIN_COUNT
#define PC_INIT_STD 0.02f

enum { SIDE_ROWS = 0, SIDE_COLS = 1 };

/* channels a layer could keep on its side */
static int n_units(int side, int in, int out) { return side == SIDE_COLS ? in : out; }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
/* the kept count the layer's shapes are laid out for */
static int kept_of(const wmat__adapter_cfg *c, int in, int out)
{
    return clampi(c->rank, 1, n_units(c->crop_cols, in, out));
}

static void pc_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    const int k = kept_of(c, in, out);
    if (c->crop_cols) {
        rows[0] = out; /* down: the kept input columns */
        cols[0] = k;
    } else {
        rows[0] = k; /* gate / up: the kept output rows */
        cols[0] = in;
    }
}

static int pc_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base, (void)in, (void)out;
    if (!(c->density > 0.0f && c->density <= 1.0f))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "precrop: --density %g is the kept share of the FFN channels: give a value in (0, 1] (%s)",
                              (double)c->density, what);
    return WMAT_OK;
}

static size_t pc_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    (void)c;
    return (2 + (size_t)(in > out ? in : out)) * sizeof(int32_t);
}

static int pc_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    (void)c;
    const int32_t *f = fixed;
    if (f[0] != SIDE_ROWS && f[0] != SIDE_COLS) return 0;
    const int n = n_units(f[0], in, out), k = f[1];
    if (k < 1 || k > n) return 0;
    for (int j = 0; j < k; j++)
        if (f[2 + j] < 0 || f[2 + j] >= n || (j && f[2 + j] <= f[1 + j])) return 0;
    return 1;
}

static size_t pc_act_floats(const wmat__adapter_cfg *c, int BT)
{
    (void)c, (void)BT;
    return 0;
}

/* one (BT, k) block: gathered inputs or outputs (k <= max(in, out)) */
static size_t pc_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    (void)c;
    return (size_t)BT * (size_t)(in > out ? in : out);
}

static float pc_scale(const wmat__adapter_cfg *c)
{
    (void)c;
    return 1.0f;
}

static int pc_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                   int out, wmat_rng *rng)
{
    (void)base;
    int32_t *f = fixed;
    const int k = kept_of(c, in, out);
    int side = c->crop_cols ? SIDE_COLS : SIDE_ROWS;
    const float *ir = c->init_rows; /* the plan's [side, k, idx...] */
    if (ir && ((int)ir[0] != side || (int)ir[1] != k))
        return wmat_set_error(WMAT_ERR_INTERNAL, "precrop: the plan's channels (side %d, %d kept) do not fit the layer "
                                                 "(side %d, %d kept)",
                              (int)ir[0], (int)ir[1], side, k);
    const int n = n_units(side, in, out);
    f[0] = side;
    f[1] = k;
    for (int j = 0; j < k; j++) f[2 + j] = ir ? (int32_t)ir[2 + j] : (int32_t)(((int64_t)j * n) / k);
    if (!pc_fixed_valid(c, fixed, in, out))
        return wmat_set_error(WMAT_ERR_INTERNAL, "precrop: the kept channels are not increasing within 0..%d", n - 1);
    const int32_t *idx = f + 2;
    for (int j = 0; j < k; j++)
        if (side == SIDE_ROWS)
            for (int i = 0; i < in; i++)
                w[0][(size_t)j * in + i] = W ? W[(size_t)idx[j] * in + i] : PC_INIT_STD * wmat_rng_normal(rng);
        else
            for (int o = 0; o < out; o++)
                w[0][(size_t)o * k + j] = W ? W[(size_t)o * in + idx[j]] : PC_INIT_STD * wmat_rng_normal(rng);
    return WMAT_OK;
}

/* ---- kernels (shapes from the fixed data) */

static void sgemm(const wmat__adapter_cfg *c, int ta, int tb, int M, int N, int K, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc)
{
    wmat__sgemm_cfg(WMAT_GEMM_AUTO, c->nt > 0 ? c->nt : 1, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc);
}

/* dst (BT, k) = the k columns idx of src (BT, n) */
static void gather_cols(float *dst, const float *src, const int32_t *idx, int BT, int n, int k)
{
    for (int b = 0; b < BT; b++)
        for (int j = 0; j < k; j++) dst[(size_t)b * k + j] = src[(size_t)b * n + idx[j]];
}

/* dst (BT, n) columns idx += src (BT, k) */
static void scatter_add_cols(float *dst, const float *src, const int32_t *idx, int BT, int n, int k)
{
    for (int b = 0; b < BT; b++)
        for (int j = 0; j < k; j++) dst[(size_t)b * n + idx[j]] += src[(size_t)b * k + j];
}

static void pc_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                       const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)act, (void)base;
    const int32_t *f = fixed, *idx = f + 2;
    const int k = f[1];
    if (f[0] == SIDE_ROWS) {
        if (k == out) { /* every row kept (attention linears): in place */
            sgemm(c, 0, 1, BT, out, in, X, in, w[0], in, 1.0f, Y, out);
            return;
        }
        sgemm(c, 0, 1, BT, k, in, X, in, w[0], in, 0.0f, scratch, k); /* (BT, k) = X Wk^T */
        scatter_add_cols(Y, scratch, idx, BT, out, k);
    } else {
        gather_cols(scratch, X, idx, BT, in, k);                          /* X_kept (BT, k) */
        sgemm(c, 0, 1, BT, out, k, scratch, k, w[0], k, 1.0f, Y, out); /* Y += X_kept Wk^T */
    }
}

static void pc_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                        const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                        const float *act, int BT, int in, int out)
{
    (void)act, (void)base;
    const int32_t *f = fixed, *idx = f + 2;
    const int k = f[1];
    if (f[0] == SIDE_ROWS) {
        const float *dS = dY;
        int ld = out;
        if (k != out) {
            gather_cols(scratch, dY, idx, BT, out, k); /* dY of the kept rows (BT, k) */
            dS = scratch;
            ld = k;
        }
        if (dw[0]) sgemm(c, 1, 0, k, in, BT, dS, ld, X, in, 1.0f, dw[0], in); /* dWk += dS^T X */
        if (dX) sgemm(c, 0, 0, BT, in, k, dS, ld, w[0], in, 1.0f, dX, in);    /* dX += dS Wk */
    } else {
        if (dw[0]) {
            gather_cols(scratch, X, idx, BT, in, k);
            sgemm(c, 1, 0, out, k, BT, dY, out, scratch, k, 1.0f, dw[0], k); /* dWk += dY^T X_kept */
        }
        if (dX) {
            sgemm(c, 0, 0, BT, k, out, dY, out, w[0], k, 0.0f, scratch, k); /* dY Wk (BT, k) */
            scatter_add_cols(dX, scratch, idx, BT, in, k);
        }
    }
}

/* W (out, in) = the layer: the kept rows / columns, 0 elsewhere; mask (may
 * be NULL) marks the kept positions */
static void full_weight(const float *Wk, const int32_t *f, int in, int out, float *W, uint8_t *mask)
{
    const int k = f[1];
    const int32_t *idx = f + 2;
    memset(W, 0, (size_t)out * in * sizeof(float));
    if (mask) memset(mask, 0, (size_t)out * in);
    for (int j = 0; j < k; j++)
        if (f[0] == SIDE_ROWS) {
            memcpy(W + (size_t)idx[j] * in, Wk + (size_t)j * in, (size_t)in * sizeof(float));
            if (mask) memset(mask + (size_t)idx[j] * in, 1, (size_t)in);
        } else {
            for (int o = 0; o < out; o++) {
                W[(size_t)o * in + idx[j]] = Wk[(size_t)o * k + j];
                if (mask) mask[(size_t)o * in + idx[j]] = 1;
            }
        }
}

/* the original W is irrelevant (the entry is the layer): W becomes it */
static int pc_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)c;
    if (!fixed) return wmat_set_error(WMAT_ERR_INTERNAL, "precrop: merge without the kept channels");
    full_weight(w[0], fixed, in, out, W, NULL);
    return WMAT_OK;
}

static int pc_to_weight(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                        wmat_tensor *dst)
{
    (void)c;
    float *W = wmat__malloc((size_t)out * in * sizeof(float));
    uint8_t *mask = wmat__malloc((size_t)out * in);
    int rc = WMAT_OK;
    void *obj = NULL;
    if (!W || !mask) rc = wmat_set_error(WMAT_ERR_NOMEM, "precrop: out of memory");
    if (!rc) {
        full_weight(w[0], fixed, in, out, W, mask);
        rc = wmat__sparse_create(W, mask, out, in, WMAT_F32, &obj);
    }
    wmat__free(W);
    wmat__free(mask);
    if (!rc) wmat__tensor_own_obj(dst, out, in, obj);
    return rc;
}

/* ---- the layer-wise counts */

typedef struct {
    double s;
    int l, j;
} chan;

static int chan_cmp(const void *a, const void *b)
{
    const chan *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1; /* larger first */
    if (x->l != y->l) return x->l < y->l ? -1 : 1; /* ties: the lower layer, */
    return (x->j > y->j) - (x->j < y->j);          /* then the lower channel */
}

int wmat__precrop_counts(const double *score, int L, int H, int budget, int uniform, int *count)
{
    if (L < 1 || H < 1 || budget < L || budget > L * H)
        return wmat_set_error(WMAT_ERR_INVALID, "precrop: a budget of %d channels does not fit %d layers of %d (%d..%d)",
                              budget, L, H, L, L * H);
    if (uniform) {
        for (int l = 0; l < L; l++) count[l] = budget / L + (l < budget % L);
        return WMAT_OK;
    }
    const size_t n = (size_t)L * H;
    chan *ch = wmat__malloc(n * sizeof *ch);
    unsigned char *first = wmat__calloc((size_t)L, 1);
    if (!ch || !first) {
        wmat__free(ch), wmat__free(first);
        return wmat_set_error(WMAT_ERR_NOMEM, "precrop: out of memory");
    }
    for (int l = 0; l < L; l++)
        for (int j = 0; j < H; j++) {
            const double s = score[(size_t)l * H + j];
            ch[(size_t)l * H + j] = (chan){isnan(s) ? -INFINITY : s, l, j};
        }
    qsort(ch, n, sizeof *ch, chan_cmp);
    /* every layer's best channel first, then the rest by the global order */
    int total = L;
    for (int l = 0; l < L; l++) count[l] = 1;
    for (size_t i = 0; i < n && total < budget; i++) {
        if (!first[ch[i].l]) {
            first[ch[i].l] = 1;
            continue;
        }
        count[ch[i].l]++;
        total++;
    }
    wmat__free(ch), wmat__free(first);
    return WMAT_OK;
}

/* ---- plan: SNIP scores at initialization, counts, kept channels */

typedef struct {
    double s;
    int j;
} scored;

static int scored_cmp(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return (x->j > y->j) - (x->j < y->j);
}

static int int_cmp(const void *a, const void *b)
{
    const int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

static int tensor_index(wmat_model *m, const wmat_tensor *t)
{
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (wmat_model_tensor(m, i) == t) return i;
    return -1;
}

/* score (L, H) += the channels' SNIP scores |g w| from gate, up (rows) and down (columns) */
static int snip_scores(wmat_model *m, float **grads, int L, int H, int D, double *score)
{
    float *w = wmat__malloc((size_t)H * D * sizeof(float));
    if (!w) return wmat_set_error(WMAT_ERR_NOMEM, "precrop: out of memory");
    int rc = WMAT_OK;
    static const wmat_linear_kind kinds[3] = {WMAT_LIN_GATE, WMAT_LIN_UP, WMAT_LIN_DOWN};
    for (int l = 0; l < L && !rc; l++)
        for (int q = 0; q < 3 && !rc; q++) {
            const wmat_tensor *t = wmat_model_linear(m, l, kinds[q]);
            const int i = tensor_index(m, t);
            if (i < 0 || !grads[i]) {
                rc = wmat_set_error(WMAT_ERR_INTERNAL, "precrop: no gradient for layer %d %s", l,
                                    wmat_linear_name(kinds[q]));
                break;
            }
            if ((rc = wmat_tensor_dequant_rows(t, 0, t->shape[0], w))) break;
            const float *g = grads[i];
            double *s = score + (size_t)l * H;
            if (kinds[q] != WMAT_LIN_DOWN) /* (H, D): row j is channel j */
                for (int j = 0; j < H; j++) {
                    double a = 0;
                    for (int d = 0; d < D; d++) a += fabs((double)g[(size_t)j * D + d] * w[(size_t)j * D + d]);
                    s[j] += a;
                }
            else /* (D, H): column j is channel j */
                for (int d = 0; d < D; d++)
                    for (int j = 0; j < H; j++) s[j] += fabs((double)g[(size_t)d * H + j] * w[(size_t)d * H + j]);
        }
    wmat__free(w);
    return rc;
}

static int plan_rule(int uniform, const wmat__adapter_cfg *c, const wmat__adapter_plan_in *pin, wmat__adapter_cfg *lcfg,
                     unsigned char *on, void **owned, char *report, size_t cap)
{
    const char *name = uniform ? "precrop-uniform" : "precrop";
    *owned = NULL;
    if (report && cap) report[0] = 0;
    const wmat_config *mc = wmat_model_config(pin->m);
    const int L = mc->n_layers, H = mc->hidden_dim, D = mc->dim;
    int nffn = 0;
    for (int l = 0; l < L; l++) {
        const int a = on[l * NLIN + WMAT_LIN_GATE], b = on[l * NLIN + WMAT_LIN_UP], d = on[l * NLIN + WMAT_LIN_DOWN];
        if (a != b || a != d)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "%s: crops FFN channels, which are rows of gate and up and columns of down: target the "
                                  "three together (--lora-targets gate,up,down)",
                                  name);
        nffn += a;
    }
    if (nffn != L)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: no FFN is targeted (--lora-targets gate,up,down)", name);
    if (!(c->density > 0.0f && c->density <= 1.0f))
        return wmat_set_error(WMAT_ERR_INVALID, "%s: --density %g (the kept share of the FFN channels) must be in (0, 1]",
                              name, (double)c->density);
    if (!pin->tokens || pin->ctx <= 0 || pin->n_tokens < (size_t)pin->ctx + 1)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "%s: SNIP needs calibration tokens (at least one window of %d plus its target: the "
                              "trainer's adapter_calib, wmat train's training data)",
                              name, pin->ctx);
    long long budget = llround((double)c->density * L * H);
    if (budget < L) budget = L;
    if (budget > (long long)L * H) budget = (long long)L * H;
    /* 1. SNIP at initialization on one batch */
    const int n_seq = pin->batch > 0 ? pin->batch : 1;
    float **grads = NULL;
    double loss = 0;
    int rc = wmat_model_weight_gradients(pin->m, pin->tokens, pin->n_tokens, pin->ctx, n_seq,
                                         wmat_context_threads(pin->exec), &grads, &loss);
    if (rc) return wmat_set_error(rc, "%s: SNIP gradients: %s", name, wmat_last_error());
    double *score = wmat__calloc((size_t)L * H, sizeof(double));
    int *count = wmat__malloc((size_t)L * sizeof(int));
    scored *sc = wmat__malloc((size_t)H * sizeof(scored));
    int *kept = wmat__malloc((size_t)H * sizeof(int));
    /* init rows: per targeted linear [side, k, idx (its units)] */
    size_t nfl = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < NLIN; k++)
            if (on[l * NLIN + k]) {
                int o, i;
                wmat__linear_shape(mc, (wmat_linear_kind)k, &o, &i);
                nfl += 2 + (size_t)(k == WMAT_LIN_DOWN ? i : o);
            }
    float *rows = wmat__calloc(nfl + 1, sizeof(float));
    if (!score || !count || !sc || !kept || !rows) rc = wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", name);
    /* 2. channel scores; 3. counts */
    if (!rc) rc = snip_scores(pin->m, grads, L, H, D, score);
    if (!rc) rc = wmat__precrop_counts(score, L, H, (int)budget, uniform, count);
    /* 4. each layer's best channels, handed to its gate, up and down */
    size_t off = 0;
    for (int l = 0; l < L && !rc; l++) {
        for (int j = 0; j < H; j++) sc[j] = (scored){score[(size_t)l * H + j], j};
        qsort(sc, (size_t)H, sizeof *sc, scored_cmp);
        const int kc = count[l];
        for (int j = 0; j < kc; j++) kept[j] = sc[j].j;
        qsort(kept, (size_t)kc, sizeof(int), int_cmp);
        for (int k = 0; k < NLIN; k++) {
            if (!on[l * NLIN + k]) continue;
            int o, i;
            wmat__linear_shape(mc, (wmat_linear_kind)k, &o, &i);
            const int ffn = k == WMAT_LIN_GATE || k == WMAT_LIN_UP || k == WMAT_LIN_DOWN;
            const int side = k == WMAT_LIN_DOWN ? SIDE_COLS : SIDE_ROWS, n = side == SIDE_COLS ? i : o;
            const int kk = ffn ? kc : n; /* attention linears: whole */
            float *ir = rows + off;
            off += 2 + (size_t)n;
            ir[0] = (float)side;
            ir[1] = (float)kk;
            for (int j = 0; j < kk; j++) ir[2 + j] = (float)(ffn ? kept[j] : j);
            wmat__adapter_cfg *lc = &lcfg[l * NLIN + k];
            lc->rank = kk;
            lc->crop_cols = side;
            lc->init_rows = ir;
        }
    }
    if (!rc && report && cap) {
        size_t n = 0;
        int w = snprintf(report, cap, "%s: SNIP |g w| at init on %d window(s) (loss %.4f); FFN channels kept per layer:",
                         name, n_seq, loss);
        n = w > 0 ? (size_t)w : 0;
        for (int l = 0; l < L && n < cap; l++) {
            w = snprintf(report + n, cap - n, " %d", count[l]);
            n += w > 0 ? (size_t)w : 0;
        }
        if (n < cap)
            snprintf(report + n, cap - n, " of %d (%lld of %lld, density %.3g%s)\n", H, budget, (long long)L * H,
                     (double)c->density, uniform ? ", split evenly" : ", one global threshold");
    }
    wmat_model_weight_gradients_free(pin->m, grads);
    wmat__free(score), wmat__free(count), wmat__free(sc), wmat__free(kept);
    if (rc) {
        wmat__free(rows);
        return rc;
    }
    *owned = rows;
    return WMAT_OK;
}

static int plan_snip(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                     unsigned char *on, void **owned, char *report, size_t cap)
{
    return plan_rule(0, c, in, lcfg, on, owned, report, cap);
}
static int plan_uniform(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                        unsigned char *on, void **owned, char *report, size_t cap)
{
    return plan_rule(1, c, in, lcfg, on, owned, report, cap);
}

#define PRECROP_ENTRY(sym_, name_, summary_, plan_)                                                                    \
    const wmat__adapter sym_ = {                                                                                       \
        .name = name_,                                                                                                 \
        .summary = summary_,                                                                                           \
        .n_tensors = 1,                                                                                                \
        .tensor_key = {"precrop_kept"},                                                                                \
        .rows_are_out = {0},                                                                                           \
        .replaces_base = 1,                                                                                            \
        .shapes = pc_shapes,                                                                                           \
        .check = pc_check,                                                                                             \
        .fixed_bytes = pc_fixed_bytes,                                                                                 \
        .fixed_valid = pc_fixed_valid,                                                                                 \
        .plan = plan_,                                                                                                 \
        .act_floats = pc_act_floats,                                                                                   \
        .scratch_floats = pc_scratch_floats,                                                                           \
        .scale = pc_scale,                                                                                             \
        .init = pc_init,                                                                                               \
        .forward = pc_forward,                                                                                         \
        .backward = pc_backward,                                                                                       \
        .merge = pc_merge,                                                                                             \
        .to_weight = pc_to_weight,                                                                                     \
        .peft_type = NULL,                                                                                             \
    }

PRECROP_ENTRY(wmat__adapter_precrop, "precrop",
              "PreCropping: FFN channels cropped at init to layer-wise counts from SNIP scores (--density: kept share, "
              "one global threshold); gate/up/down trained from scratch as dense narrower matrices",
              plan_snip);
PRECROP_ENTRY(wmat__adapter_precrop_uniform, "precrop-uniform",
              "PreCropping's baseline: the same channel budget (--density) split evenly over the layers (SNIP's best "
              "channels of each), trained from scratch",
              plan_uniform);
