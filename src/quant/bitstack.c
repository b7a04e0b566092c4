/* BitStack (Wang et al., ICLR 2025; SPECS.md G3): any-size compression from
 * one decomposition.
 *   1. Activation scaling: s_j = sqrt(mean_t x_j^2) + 1e-3 over the
 *      calibration tokens (the statistic the imatrix method gathers). The
 *      reference takes the mean over sequences of the L2 norm of x_j over a
 *      sequence's tokens; for sequences of equal norms that is sqrt(ctx)
 *      times this, a common factor that changes neither the signs nor the
 *      singular vectors (only the weight of the 1e-3 floor). The block is
 *      computed on W diag(s) and 1/s is folded into each stored v_i (exact:
 *      (S .* (u v)) diag(1/s) = S .* (u (v diag(1/s)))), so no norm weight
 *      or preceding matrix changes and the stack costs nothing extra.
 *   2. The decomposition itself (wmat__bitstack_decompose, in the kind's
 *      file so its generic conversion shares it): per block sign(R) and a
 *      rank-k SVD of |R| (LAPACK), R -= the stored block.
 *   3. The order (the finish step): level-wise and measured. Every matrix
 *      at b blocks; for each matrix alone b + 1 blocks, scored by the mean
 *      NLL of the last order_windows calibration windows; the matrices'
 *      block b + 1 appended in ascending order. The order is each block's
 *      `pos`, stored with the weight.
 *   4. wmat_model_set_budget: the longest prefix of the order that fits,
 *      over any kind with a `stack` entry. */
#include "methods.h"

#include "wop/wop.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int wmat__quant_bitstack(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                         const wmat_qparams *p, wmat_qmethod_info *info)
{
    memset(out, 0, sizeof *out);
    const int64_t mn = rows < cols ? rows : cols;
    int k = p->stack_rank > 0 ? p->stack_rank : 1;
    const int nb = p->stack_blocks > 0 ? p->stack_blocks : 16;
    if (k > mn) k = (int)mn;
    float *s = NULL;
    if (st && st->x2 && st->n == cols) {
        s = wmat__malloc((size_t)cols * sizeof(float));
        if (!s) return wmat_set_error(WMAT_ERR_NOMEM, "bitstack: out of memory");
        for (int64_t j = 0; j < cols; j++) s[j] = (float)(sqrt(st->x2[j] > 0 ? st->x2[j] : 0.0) + 1e-3);
    }
    int rc = wmat__bitstack_decompose(W, rows, cols, s, k, nb, &out->obj);
    wmat__free(s);
    if (rc) return rc;
    out->rows = rows;
    out->cols = cols;
    if (info) {
        memset(info, 0, sizeof *info);
        const double bpw = 1.0 + 16.0 * k * (double)(rows + cols) / ((double)rows * (double)cols);
        snprintf(info->scheme, sizeof info->scheme, "bitstack %d blocks rank %d (%.3f b/w each)%s", nb, k, bpw,
                 st && st->x2 ? ", activation-scaled" : "");
    }
    return WMAT_OK;
}

/* ---- the measured order */

typedef struct {
    wmat_tensor *t; /* the model's tensor (fp32, its fake-quant weights) */
    wmat_tensor v;  /* a view of the result's object */
    int nb;
    int32_t *pos;
    double loss;
} bs_item;

static int cmp_loss(const void *a, const void *b)
{
    const bs_item *x = *(const bs_item *const *)a, *y = *(const bs_item *const *)b;
    if (x->loss != y->loss) return x->loss < y->loss ? -1 : 1;
    return x < y ? -1 : x > y;
}

int wmat__bitstack_finish(wmat_model *m, wmat_qresult *results, const int32_t *calib, int n_windows, int ctx,
                          wmat_runtime *rt, const wmat_qparams *p)
{
    const int n = wmat_model_n_tensors(m);
    int ni = 0, maxnb = 0, rc = WMAT_OK;
    for (int i = 0; i < n; i++)
        if (results[i].obj && ((const wmat_wobj *)results[i].obj)->kind == &wmat__wkind_bitstack) ni++;
    if (!ni || !calib || !rt || p->order_windows <= 0 || n_windows < 1) return WMAT_OK; /* the level order */
    bs_item *it = wmat__calloc((size_t)ni, sizeof *it);
    bs_item **ord = wmat__calloc((size_t)ni, sizeof *ord);
    if (!it || !ord) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bitstack: out of memory");
        goto done;
    }
    ni = 0;
    for (int i = 0; i < n; i++) {
        if (!results[i].obj || ((const wmat_wobj *)results[i].obj)->kind != &wmat__wkind_bitstack) continue;
        bs_item *x = &it[ni++];
        x->t = wmat_model_tensor(m, i);
        wmat__tensor_init2(&x->v, WMAT_OBJ, results[i].rows, results[i].cols, results[i].obj);
        wmat__bitstack_shape(&x->v, NULL, &x->nb, NULL);
        if (x->nb > maxnb) maxnb = x->nb;
        if (x->t->dtype != WMAT_F32 || !(x->t->flags & WMAT_TF_OWNED) || x->t->shape[0] != results[i].rows ||
            x->t->shape[1] != results[i].cols) {
            rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "bitstack: %s does not hold its fake-quant weights (the order "
                                "needs a sequential, in-memory quantization)", x->t->name);
            goto done;
        }
        x->pos = wmat__malloc((size_t)x->nb * sizeof(int32_t));
        if (!x->pos) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "bitstack: out of memory");
            goto done;
        }
        x->pos[0] = -1;
    }
    const int nw = p->order_windows < n_windows ? p->order_windows : n_windows;
    const int32_t *tok = calib + (size_t)(n_windows - nw) * (size_t)ctx;
    int32_t next = 0;
    for (int b = 1; b < maxnb; b++) {
        for (int j = 0; j < ni; j++)
            if ((rc = wmat__bitstack_dequant_n(&it[j].v, b < it[j].nb ? b : it[j].nb, it[j].t->data))) goto done;
        int nc = 0;
        for (int j = 0; j < ni; j++) {
            if (it[j].nb <= b) continue;
            wmat_eval_result er;
            if ((rc = wmat__bitstack_dequant_n(&it[j].v, b + 1, it[j].t->data))) goto done;
            if ((rc = wmat_eval_tokens(rt, tok, (size_t)nw * (size_t)ctx, ctx, nw, &er))) goto done;
            if ((rc = wmat__bitstack_dequant_n(&it[j].v, b, it[j].t->data))) goto done;
            it[j].loss = er.mean_nll;
            ord[nc++] = &it[j];
        }
        qsort(ord, (size_t)nc, sizeof *ord, cmp_loss);
        for (int j = 0; j < nc; j++) ord[j]->pos[b] = next++;
    }
    for (int j = 0; j < ni; j++) {
        if ((rc = wmat__bitstack_dequant_n(&it[j].v, it[j].nb, it[j].t->data))) goto done;
        if ((rc = wmat__bitstack_set_order(&it[j].v, it[j].pos))) goto done;
    }
done:
    if (it)
        for (int j = 0; j < ni; j++) wmat__free(it[j].pos);
    wmat__free(it);
    wmat__free(ord);
    return rc;
}

/* ---- loading at a budget (any stacked kind) */

typedef struct {
    int32_t pos;
    int t, i; /* tensor, block */
    uint64_t bytes;
} bs_cand;

static int cmp_cand(const void *a, const void *b)
{
    const bs_cand *x = a, *y = b;
    if (x->pos != y->pos) return x->pos < y->pos ? -1 : 1;
    if (x->t != y->t) return x->t < y->t ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

int wmat_model_set_budget(wmat_model *m, double bytes, double bits_per_weight, double *bytes_used)
{
    if (bytes_used) *bytes_used = 0.0;
    if (!m) return wmat_set_error(WMAT_ERR_INVALID, "set budget: no model");
    if ((bytes > 0) == (bits_per_weight > 0))
        return wmat_set_error(WMAT_ERR_INVALID, "set budget: give bytes or bits per weight (one of them > 0)");
    const int n = wmat_model_n_tensors(m);
    int nst = 0, ncand = 0;
    double weights = 0.0;
    for (int i = 0; i < n; i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        const wmat_wkind *k = t->dtype == WMAT_OBJ ? wmat__wkind_of(t) : NULL;
        if (!k || !k->stack) continue;
        const int nb = k->stack(t, NULL, NULL, NULL);
        nst++;
        ncand += nb;
        weights += (double)t->shape[0] * (double)t->shape[1];
    }
    if (!nst)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: no weight is stored as a stack of blocks, so it has one size only",
                              wmat_model_path(m) ? wmat_model_path(m) : "model");
    const double budget = bytes > 0 ? bytes : bits_per_weight * weights / 8.0;
    bs_cand *c = wmat__malloc((size_t)ncand * sizeof *c);
    int *active = wmat__calloc((size_t)n, sizeof *active);
    int32_t *pos = wmat__malloc((size_t)ncand * sizeof *pos);
    uint64_t *by = wmat__malloc((size_t)ncand * sizeof *by);
    int rc = WMAT_OK;
    if (!c || !active || !pos || !by) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "set budget: out of memory");
        goto done;
    }
    double used = 0.0;
    int nc = 0;
    for (int i = 0; i < n; i++) {
        const wmat_tensor *t = wmat_model_tensor(m, i);
        const wmat_wkind *k = t->dtype == WMAT_OBJ ? wmat__wkind_of(t) : NULL;
        if (!k || !k->stack) continue;
        const int nb = k->stack(t, NULL, pos, by);
        active[i] = 1; /* block 0 always */
        used += (double)by[0];
        for (int b = 1; b < nb; b++) {
            if (pos[b] < 0) {
                active[i] = b + 1, used += (double)by[b];
                continue;
            }
            c[nc++] = (bs_cand){pos[b], i, b, by[b]};
        }
    }
    if (used > budget) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "budget %.0f bytes (%.4f b/w) is below the stacks' least size, %.0f bytes (%.4f b/w)",
                            budget, 8.0 * budget / weights, used, 8.0 * used / weights);
        goto done;
    }
    qsort(c, (size_t)nc, sizeof *c, cmp_cand);
    for (int j = 0; j < nc; j++) {
        if (used + (double)c[j].bytes > budget) break; /* the longest prefix that fits */
        if (c[j].i != active[c[j].t]) break;           /* a block before its predecessor: not a prefix (the kind checks) */
        used += (double)c[j].bytes;
        active[c[j].t]++;
    }
    for (int i = 0; i < n && !rc; i++)
        if (active[i]) {
            wmat_tensor *t = wmat_model_tensor(m, i);
            rc = wmat__wkind_of(t)->set_active(t, active[i]);
        }
    if (!rc && bytes_used) *bytes_used = used;
done:
    wmat__free(c);
    wmat__free(active);
    wmat__free(pos);
    wmat__free(by);
    return rc;
}
