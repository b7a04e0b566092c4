/* SPT (He et al., ICCV 2023, "Sensitivity-Aware Visual Parameter-Efficient
 * Fine-Tuning"; code ziplab/SPT, engine.py get_sensitivity): a budget of
 * trained floats placed where the loss is most sensitive, in two
 * granularities. Two stages, both in the plan (before the trainer lays out
 * its tensors):
 *
 * 1. Sensitivity of every weight of the targeted matrices on calibration
 *    data (the trainer's adapter_calib: wmat train's training data or
 *    --eva-data): s = sum over batches of g^2, g the gradient of the batch's
 *    mean loss with the model frozen, as SPT's code accumulates
 *    grad ** 2 over sensitivity_batch_num batches (its first-order Taylor
 *    criterion with the one-step update dw = -eps g: |g dw| ~ g^2). At most
 *    SPT_BATCHES (8, get_sensitivity's default) batches of --batch windows of
 *    --ctx tokens, fewer with --eva-batches. The gradients come from a
 *    full-training trainer on the model (one forward and backward per
 *    batch, no step), so the plan briefly needs a full fine-tune's memory.
 *
 * 2. Allocation under the budget B (spt_budget; default LoRA's at --lora-rank
 *    on the same matrices, r (in + out) each, so SPT compares with LoRA at
 *    equal trained floats): the top tau sensitivities over all targeted
 *    matrices are selected (ties: the lower matrix in layer-major order,
 *    then the lower position); a matrix with c selected positions is tuned
 *    structurally when c >= threshold x (in + out) (spt_threshold, default
 *    1: its positions pay for at least a rank-1 LoRA), by a LoRA of rank
 *    floor(c / (in + out)) (clamped to [1, min(in, out)]: the rank whose
 *    floats fit the positions it replaces), else unstructured: its c
 *    positions are trained as a sparse update. tau is the largest with a
 *    total cost <= B (bisection; adding one position raises the cost by at
 *    most in + out, so the trained floats fall short of B by less than the
 *    widest in + out). SPT's code differs here: every structured matrix
 *    gets LoRA at one fixed rank (low_rank_dim 8) once c >= 8 (in + out) /
 *    alpha (alpha 10), and tau is swept to the budget; with B equal to LoRA
 *    r8's floats on the same matrices that rule can only end as plain LoRA
 *    r8 everywhere (any unstructured matrix costs less than its LoRA), so
 *    the rank here follows the positions instead.
 *
 * A layer is LoRA (rank r, s B A with s = the run's alpha / --lora-rank for
 * every rank, so the structured parts scale as the LoRA they compare with)
 * or a sparse update of its selected positions (SLTrain's support kernels,
 * adapter.h), never both, or off (no position selected). One trained tensor
 * per layer, [A (r x in) | B (out x r) | values (nnz)] flat; LoRA's init (A
 * uniform, B = 0), values 0: the model starts as the base. Fixed data: nnz,
 * the support (row offsets, int32 columns), sized for the largest sparse
 * layer the threshold allows. Without a plan (the registry's kernel checks)
 * a layer is both: LoRA at rank plus floor(density x out x in) random
 * positions. The merged model is W + s B A or W plus the values at their
 * positions. PEFT has no SPT type: no --lora-out. */
#include "adapter.h"
#include "sparse_update.h"
#include "train.h"

#include "../linalg/linalg.h"
#include "core/shapes.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define NLIN WMAT_LIN_COUNT
#define SPT_BATCHES 8
#define HDR 4 /* int32: nnz, spare */

/* ------------------------------------------------------------ layout */

static int64_t spt_nnz(const wmat__adapter_cfg *c, int in, int out)
{
    return c->spt.planned ? c->spt.nnz : wmat__support_nnz(c->density, out, in);
}

/* the most sparse positions a layer can get (fixed data is sized before the plan) */
static int64_t spt_cap(const wmat__adapter_cfg *c, int in, int out)
{
    const int64_t n = (int64_t)in * out;
    int64_t cap = wmat__support_nnz(c->density, out, in);
    if (c->spt.planned && c->spt.nnz > cap) cap = c->spt.nnz;
    if (c->spt.threshold > 0) {
        const double t = ceil((double)c->spt.threshold * ((double)in + out));
        const int64_t tc = t >= (double)n ? n : (int64_t)t;
        if (tc > cap) cap = tc;
    }
    return cap > n ? n : cap;
}

typedef struct {
    int32_t *hdr, *off, *col;
} spt_view;

static spt_view view(void *fixed, int out)
{
    spt_view v;
    v.hdr = fixed;
    v.off = v.hdr + HDR;
    v.col = v.off + out + 1;
    return v;
}

static float spt_scale(const wmat__adapter_cfg *c) { return c->rank > 0 ? c->alpha / (float)c->rank : 1.0f; }

static void spt_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols)
{
    rows[0] = (int)((int64_t)c->rank * (in + out) + spt_nnz(c, in, out));
    cols[0] = 1;
}

static int spt_check(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what)
{
    (void)base;
    if (c->rank < 0) return wmat_set_error(WMAT_ERR_INVALID, "spt: the rank must not be negative");
    if ((double)in * out > 2147483647.0)
        return wmat_set_error(WMAT_ERR_INVALID, "spt: the %s matrix (%d x %d) has more positions than int32 holds",
                              what, out, in);
    if (!isfinite(c->spt.threshold) || !isfinite(c->spt.budget))
        return wmat_set_error(WMAT_ERR_INVALID, "spt: budget and threshold must be finite");
    return WMAT_OK;
}

static size_t spt_fixed_bytes(const wmat__adapter_cfg *c, int in, int out)
{
    return (HDR + (size_t)out + 1 + (size_t)spt_cap(c, in, out)) * sizeof(int32_t);
}

static int spt_fixed_valid(const wmat__adapter_cfg *c, const void *fixed, int in, int out)
{
    const spt_view v = view((void *)fixed, out);
    const int64_t nnz = v.hdr[0];
    if (nnz < 0 || nnz > spt_cap(c, in, out) || v.off[0] != 0 || v.off[out] != nnz) return 0;
    for (int r = 0; r < out; r++) {
        if (v.off[r + 1] < v.off[r]) return 0;
        for (int32_t j = v.off[r]; j < v.off[r + 1]; j++)
            if (v.col[j] < 0 || v.col[j] >= in || (j > v.off[r] && v.col[j] <= v.col[j - 1])) return 0;
    }
    return 1;
}

static size_t spt_act_floats(const wmat__adapter_cfg *c, int BT) { return (size_t)BT * (c->rank > 0 ? c->rank : 0); }

static size_t spt_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out)
{
    const size_t a = (size_t)BT * (c->rank > 0 ? c->rank : 0);
    const size_t b = spt_nnz(c, in, out) > 0 ? wmat__support_ws_floats(in, out, c->nt > 0 ? c->nt : 1) : 0;
    return a > b ? a : b;
}

/* ------------------------------------------------------------ init, kernels */

static int spt_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    const int r = c->rank > 0 ? c->rank : 0;
    const int64_t nnz = spt_nnz(c, in, out);
    const size_t n = (size_t)in * out;
    float *A = w[0], *B = A + (size_t)r * in;
    const spt_view v = view(fixed, out);
    if (r > 0) {
        float *lw[2] = {A, B};
        int rc = wmat__lora_init(c, lw, NULL, base, W, in, out, rng);
        if (rc) return rc;
    }
    v.hdr[0] = (int32_t)nnz;
    if (nnz <= 0) {
        memset(v.off, 0, ((size_t)out + 1) * sizeof(int32_t));
        return WMAT_OK;
    }
    if (!c->init_rows) {
        wmat__support_sample(rng, out, in, nnz, v.off, v.col);
        return WMAT_OK;
    }
    /* the plan's sensitivities of this layer: its nnz largest (ties: the
     * lower position), i.e. the smallest of -s */
    float *key = wmat__malloc(2 * n * sizeof(float) + n + 1);
    if (!key) return wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory");
    unsigned char *sel = (unsigned char *)(key + 2 * n);
    for (size_t i = 0; i < n; i++) key[i] = -c->init_rows[i];
    wmat__su_select_smallest(key, n, (size_t)nnz, sel, key + n);
    int32_t j = 0;
    for (int o = 0; o < out; o++) {
        v.off[o] = j;
        for (int i = 0; i < in; i++)
            if (sel[(size_t)o * in + i]) v.col[j++] = i;
    }
    v.off[out] = j;
    wmat__free(key);
    return j == nnz ? WMAT_OK : wmat_set_error(WMAT_ERR_INTERNAL, "spt: selected %d of %lld positions", j, (long long)nnz);
}

static void spt_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                        const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)base;
    const int r = c->rank > 0 ? c->rank : 0;
    const float *A = w[0], *B = A + (size_t)r * in, *val = B + (size_t)out * r;
    if (r > 0) {
        const float *lw[2] = {A, B};
        wmat__lora_path_forward(spt_scale(c), c, Y, act, X, lw, BT, in, out);
    }
    const spt_view v = view((void *)fixed, out);
    if (v.off[out] > 0)
        wmat__support_forward(Y, X, v.off, v.col, val, BT, in, out, scratch, c->nt > 0 ? c->nt : 1, c->isa);
}

static void spt_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                         const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                         const float *act, int BT, int in, int out)
{
    (void)base;
    const int r = c->rank > 0 ? c->rank : 0;
    const float *A = w[0], *B = A + (size_t)r * in, *val = B + (size_t)out * r;
    float *dA = dw[0], *dB = dA ? dA + (size_t)r * in : NULL, *dval = dB ? dB + (size_t)out * r : NULL;
    if (r > 0) {
        const float *lw[2] = {A, B};
        float *dlw[2] = {dA, dB};
        wmat__lora_path_backward(spt_scale(c), c, dX, dlw, scratch, dY, X, lw, act, BT, in, out);
    }
    const spt_view v = view((void *)fixed, out);
    if (v.off[out] <= 0) return;
    if (dval) {
        wmat__support_backward(dX, dval, dY, X, v.off, v.col, val, BT, in, out, scratch, c->nt > 0 ? c->nt : 1, c->isa);
    } else if (dX) { /* the input gradient only: dX += dY S */
        for (int t = 0; t < BT; t++)
            for (int o = 0; o < out; o++) {
                const float g = dY[(size_t)t * out + o];
                for (int32_t j = v.off[o]; j < v.off[o + 1]; j++) dX[(size_t)t * in + v.col[j]] += g * val[j];
            }
    }
}

static int spt_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    if (!fixed) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "spt: merging needs the layer's positions");
    const int r = c->rank > 0 ? c->rank : 0;
    const float *A = w[0], *B = A + (size_t)r * in, *val = B + (size_t)out * r;
    if (r > 0) wmat_sgemm(0, 0, out, in, r, spt_scale(c), B, r, A, in, 1.0f, W, in); /* W += s B A */
    const spt_view v = view((void *)fixed, out);
    for (int o = 0; o < out; o++)
        for (int32_t j = v.off[o]; j < v.off[o + 1]; j++) W[(size_t)o * in + v.col[j]] += val[j];
    return WMAT_OK;
}

/* ------------------------------------------------------------ sensitivity */

int wmat__spt_sensitivity(wmat_model *m, const int32_t *tokens, size_t n_tokens, int ctx, int batch, int max_batches,
                          const wmat_context *exec, const int *ml, const int *mk, int nm, float *const *sens, int *used)
{
    *used = 0;
    const wmat_config *mc = wmat_model_config(m);
    if (ctx <= 0 || ctx > mc->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "spt: window %d outside 1..%d", ctx, mc->seq_len);
    if (!tokens || n_tokens < (size_t)ctx + 1)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "spt: needs calibration tokens (at least one window of %d plus its target; the "
                              "trainer's adapter_calib, wmat train's training data or --eva-data)",
                              ctx);
    const size_t windows = (n_tokens - 1) / (size_t)ctx;
    const int B = batch < 1 ? 1 : (size_t)batch > windows ? (int)windows : batch;
    size_t nb = (windows + (size_t)B - 1) / (size_t)B;
    if (max_batches > 0 && nb > (size_t)max_batches) nb = (size_t)max_batches;
    wmat_context ex = exec ? *exec : wmat_context_default();
    ex.comm = NULL; /* every rank computes the same from the same tokens */
    wmat_train_params tp = wmat_train_default_params();
    tp.method = WMAT_TRAIN_FULL;
    tp.optimizer_name = "sgd";
    tp.batch = B;
    tp.ctx = ctx;
    tp.steps = 1;
    tp.exec = &ex;
    int32_t *inp = wmat__malloc((size_t)B * ctx * sizeof(int32_t) * 2);
    if (!inp) return wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory");
    int32_t *tgt = inp + (size_t)B * ctx;
    wmat_trainer *t = NULL;
    int rc = wmat_trainer_create(&t, m, &tp);
    for (size_t b = 0; b < nb && !rc; b++) {
        const size_t w0 = b * (size_t)B;
        const int nw = (int)(windows - w0 < (size_t)B ? windows - w0 : (size_t)B);
        for (int i = 0; i < nw; i++) {
            memcpy(inp + (size_t)i * ctx, tokens + (w0 + i) * ctx, (size_t)ctx * sizeof(int32_t));
            memcpy(tgt + (size_t)i * ctx, tokens + (w0 + i) * ctx + 1, (size_t)ctx * sizeof(int32_t));
        }
        double loss;
        if ((rc = wmat__trainer_fwdbwd(t, inp, tgt, nw, ctx, 1.0f / ((float)nw * (float)ctx), 1, 0, &loss))) break;
        for (int j = 0; j < nm; j++) {
            const float *g = wmat__trainer_linear_grad(t, ml[j], mk[j]);
            int o, i;
            wmat__linear_shape(mc, (wmat_linear_kind)mk[j], &o, &i);
            if (!g) {
                rc = wmat_set_error(WMAT_ERR_INTERNAL, "spt: no gradient for layer %d's %s", ml[j],
                                    wmat_linear_name((wmat_linear_kind)mk[j]));
                break;
            }
            float *s = sens[j];
            for (size_t e = 0; e < (size_t)o * i; e++) s[e] += g[e] * g[e];
        }
        if (!rc) (*used)++;
    }
    wmat_trainer_free(t);
    wmat__free(inp);
    return rc;
}

/* ------------------------------------------------------------ allocation */

static int64_t mat_cost(int64_t cnt, int in, int out, float thr, int *rank)
{
    const int64_t io = (int64_t)in + out;
    const int rmax = in < out ? in : out;
    if (cnt > 0 && (double)cnt >= (double)thr * (double)io) {
        int64_t r = cnt / io;
        if (r < 1) r = 1;
        if (r > rmax) r = rmax;
        *rank = (int)r;
        return r * io;
    }
    *rank = 0;
    return cnt;
}

typedef struct {
    const int *in, *out;
    int nm;
    float thr;
    size_t N;
    const size_t *off;
    float *key, *tmp;
    unsigned char *sel;
} alloc_ctx;

/* select the top tau, count per matrix, the cost */
static int64_t cost_at(const alloc_ctx *a, size_t tau, int64_t *count, int *rank)
{
    wmat__su_select_smallest(a->key, a->N, tau, a->sel, a->tmp);
    int64_t total = 0;
    for (int j = 0; j < a->nm; j++) {
        const unsigned char *s = a->sel + a->off[j];
        const size_t n = (size_t)a->in[j] * a->out[j];
        int64_t c = 0;
        for (size_t i = 0; i < n; i++) c += s[i];
        count[j] = c;
        total += mat_cost(c, a->in[j], a->out[j], a->thr, &rank[j]);
    }
    return total;
}

int wmat__spt_allocate(const float *const *sens, const int *in, const int *out, int nm, double budget, float threshold,
                       int64_t *count, int *rank, int64_t *tau, double *total)
{
    size_t N = 0;
    size_t *off = wmat__malloc(((size_t)nm + 1) * sizeof(size_t));
    if (!off) return wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory");
    for (int j = 0; j < nm; j++) {
        off[j] = N;
        N += (size_t)in[j] * out[j];
    }
    float *key = wmat__malloc(2 * N * sizeof(float) + N + 1);
    if (!key) {
        wmat__free(off);
        return wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory for the selection (%zu positions)", N);
    }
    alloc_ctx a = {in, out, nm, threshold, N, off, key, key + N, (unsigned char *)(key + 2 * N)};
    for (int j = 0; j < nm; j++)
        for (size_t i = 0; i < (size_t)in[j] * out[j]; i++) key[off[j] + i] = -sens[j][i];
    size_t lo = 0, hi = N;
    int64_t c = cost_at(&a, N, count, rank);
    if ((double)c > budget) {
        /* cost(lo) <= budget < cost(hi) */
        while (hi - lo > 1) {
            const size_t mid = lo + (hi - lo) / 2;
            if ((double)cost_at(&a, mid, count, rank) <= budget) lo = mid;
            else hi = mid;
        }
        c = cost_at(&a, lo, count, rank);
    } else {
        lo = N;
    }
    *tau = (int64_t)lo;
    *total = (double)c;
    wmat__free(key);
    wmat__free(off);
    return WMAT_OK;
}

/* ------------------------------------------------------------ plan */

static int spt_plan(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *pin, wmat__adapter_cfg *lcfg,
                    unsigned char *on, void **owned, char *report, size_t cap)
{
    *owned = NULL;
    if (report && cap) report[0] = 0;
    const wmat_config *mc = wmat_model_config(pin->m);
    const int L = mc->n_layers;
    int nm = 0;
    for (int j = 0; j < L * NLIN; j++) nm += on[j] != 0;
    int *ml = wmat__malloc(((size_t)nm + 1) * 6 * sizeof(int));
    int64_t *count = wmat__malloc(((size_t)nm + 1) * sizeof(int64_t));
    float **sens = wmat__malloc(((size_t)nm + 1) * sizeof(float *));
    if (!ml || !count || !sens) {
        wmat__free(ml), wmat__free(count), wmat__free(sens);
        return wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory");
    }
    int *mk = ml + nm, *min_ = mk + nm, *mout = min_ + nm, *rank = mout + nm, *lk = rank + nm;
    size_t N = 0;
    double lora = 0;
    for (int l = 0, j = 0; l < L; l++)
        for (int k = 0; k < NLIN; k++)
            if (on[l * NLIN + k]) {
                ml[j] = l;
                mk[j] = k;
                wmat__linear_shape(mc, (wmat_linear_kind)k, &mout[j], &min_[j]);
                N += (size_t)min_[j] * mout[j];
                lora += (double)c->rank * (min_[j] + mout[j]);
                j++;
            }
    float *all = wmat__calloc(N + 1, sizeof(float));
    int rc = all ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "spt: out of memory for %zu sensitivities", N);
    size_t o = 0;
    for (int j = 0; j < nm && !rc; j++) {
        sens[j] = all + o;
        o += (size_t)min_[j] * mout[j];
    }
    int used = 0;
    const int maxb = pin->max_batches > 0 && pin->max_batches < SPT_BATCHES ? pin->max_batches : SPT_BATCHES;
    if (!rc)
        rc = wmat__spt_sensitivity(pin->m, pin->tokens, pin->n_tokens, pin->ctx, pin->batch, maxb, pin->exec, ml, mk,
                                   nm, sens, &used);
    const double budget = c->spt.budget > 0 ? c->spt.budget : lora;
    int64_t tau = 0;
    double total = 0;
    for (int j = 0; j < nm; j++) lk[j] = ml[j] * NLIN + mk[j];
    if (!rc) rc = wmat__spt_allocate((const float *const *)sens, min_, mout, nm, budget, c->spt.threshold, count, rank, &tau, &total);
    if (!rc && tau == 0)
        rc = wmat_set_error(WMAT_ERR_INVALID, "spt: a budget of %.0f floats selects no position", budget);
    int n_lora = 0, n_sparse = 0, n_off = 0;
    int64_t sparse_pos = 0, lora_fl = 0;
    for (int j = 0; j < nm && !rc; j++) {
        wmat__adapter_cfg *lc = &lcfg[lk[j]];
        lc->spt.planned = 1;
        lc->density = 0;
        if (count[j] == 0) {
            on[lk[j]] = 0;
            lc->rank = 0;
            lc->spt.nnz = 0;
            n_off++;
        } else if (rank[j] > 0) {
            lc->alpha = c->alpha * (float)rank[j] / (float)c->rank; /* s = alpha / --lora-rank */
            lc->rank = rank[j];
            lc->spt.nnz = 0;
            n_lora++;
            lora_fl += (int64_t)rank[j] * (min_[j] + mout[j]);
        } else {
            lc->rank = 0;
            lc->spt.nnz = count[j];
            lc->init_rows = sens[j];
            n_sparse++;
            sparse_pos += count[j];
        }
    }
    if (!rc && report && cap) {
        size_t n = 0;
        int w = snprintf(report, cap,
                         "spt: sensitivity sum of squared gradients over %d calibration batch%s of %d x %d; budget %.0f "
                         "floats (LoRA r%d on the same matrices: %.0f); top %lld of %zu positions; %d matrices LoRA "
                         "(%lld floats), %d sparse (%lld positions), %d untouched; %.0f trained floats\n",
                         used, used == 1 ? "" : "es", pin->batch, pin->ctx, budget, c->rank, lora, (long long)tau, N,
                         n_lora, (long long)lora_fl, n_sparse, (long long)sparse_pos, n_off, total);
        n = w > 0 ? (size_t)w : 0;
        for (int l = 0; l < L && n < cap; l++) {
            w = snprintf(report + n, cap - n, "spt: layer %d:", l);
            n += w > 0 ? (size_t)w : 0;
            for (int j = 0; j < nm && n < cap; j++) {
                if (lk[j] / NLIN != l) continue;
                const char *nm_ = wmat_linear_name((wmat_linear_kind)(lk[j] % NLIN));
                if (count[j] == 0) w = snprintf(report + n, cap - n, " %s -", nm_);
                else if (rank[j] > 0) w = snprintf(report + n, cap - n, " %s r%d", nm_, rank[j]);
                else w = snprintf(report + n, cap - n, " %s %lld", nm_, (long long)count[j]);
                n += w > 0 ? (size_t)w : 0;
            }
            if (n < cap) {
                w = snprintf(report + n, cap - n, "\n");
                n += w > 0 ? (size_t)w : 0;
            }
        }
    }
    if (rc) wmat__free(all);
    else *owned = all;
    wmat__free(ml), wmat__free(count), wmat__free(sens);
    return rc;
}

const wmat__adapter wmat__adapter_spt = {
    .name = "spt",
    .summary = "SPT: the budget (LoRA r's floats) at the most gradient-sensitive positions of the targeted matrices: "
               "LoRA where a matrix has many, a sparse update where few",
    .n_tensors = 1,
    .tensor_key = {"spt_params"},
    .shapes = spt_shapes,
    .check = spt_check,
    .fixed_bytes = spt_fixed_bytes,
    .fixed_valid = spt_fixed_valid,
    .plan = spt_plan,
    .act_floats = spt_act_floats,
    .scratch_floats = spt_scratch_floats,
    .scale = spt_scale,
    .init = spt_init,
    .forward = spt_forward,
    .backward = spt_backward,
    .merge = spt_merge,
};
