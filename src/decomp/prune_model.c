/* Pruning a model's linear weights (contract: prune.h, wmat__prune_model).
 *
 * Methods with statistics run in the layer order SparseGPT and Wanda use:
 * block by block, and inside a block by stage (q/k/v, o, gate/up, down, as
 * quantization's "true sequential", src/quant/calib.c), each stage
 * calibrated on a model whose earlier stages and blocks are already
 * pruned. The working model holds the pruned weights as dense fp32 (what
 * the calibration runtime multiplies by); when every matrix is done each
 * is replaced by its sparse kind, built from the same weights and mask. */
#include "prune.h"

#include "decomp.h"

#include "core/shapes.h"
#include "io/model_internal.h"
#include "quant/methods.h"
#include "wop/kern_sparse.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const wmat_param_spec wmat__prune_keys[] = {
    {"sparsity", WMAT_PARAM_FLOAT, "0.5", 0, 0.99, NULL, "unstructured: the share of each row (SparseGPT: of each block) pruned", NULL},
    {"nm", WMAT_PARAM_STRING, "", 0, 0, NULL, "N:M instead (2:4, 4:8; M 4 or 8): N kept of every M consecutive inputs", NULL},
    {"block", WMAT_PARAM_INT, "128", 1, 1 << 20, NULL, "SparseGPT: columns per lazy-update block and mask choice", NULL},
    {"damp", WMAT_PARAM_FLOAT, "0.01", 0, 100, NULL, "SparseGPT: damping times mean(diag H), raised x10 while Cholesky fails", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

int wmat__prune_params_from(const wmat_pset *ps, wmat_prune_params *pp)
{
    memset(pp, 0, sizeof *pp);
    pp->sparsity = wmat__pset_float(ps, "sparsity");
    pp->block = (int)wmat__pset_int(ps, "block");
    pp->damp = wmat__pset_float(ps, "damp");
    pp->n_threads = 1;
    const char *nm = wmat__pset_str(ps, "nm");
    if (nm && *nm) {
        int n = 0, m = 0, used = 0;
        if (sscanf(nm, "%d:%d%n", &n, &m, &used) != 2 || nm[used] || !(m == 4 || m == 8) || n < 1 || n >= m)
            return wmat_set_error(WMAT_ERR_INVALID, "nm: '%s' is not N:M with M 4 or 8 and 1 <= N < M (2:4, 4:8)", nm);
        if (wmat__pset_is_set(ps, "sparsity"))
            return wmat_set_error(WMAT_ERR_INVALID, "sparsity=%g and nm=%s exclude each other (N:M fixes the share)", pp->sparsity, nm);
        pp->n = n;
        pp->m = m;
        pp->sparsity = 1.0 - (double)n / m;
        if (pp->block % m)
            return wmat_set_error(WMAT_ERR_INVALID, "block=%d is not a multiple of M = %d", pp->block, m);
    }
    return WMAT_OK;
}

typedef struct {
    wmat_tensor *t;
    int layer, slot;
    void *obj; /* the sparse kind, once pruned */
} pjob;

static int needs_stats(const char *method) { return strcmp(method, "magnitude") != 0; }


static int prune_job(pjob *j, const wmat_prune_model_params *p, const wmat_qstats *st, uint8_t *mask, float *W,
                     wmat_decompose_tensor *rep)
{
    wmat_tensor *t = j->t;
    const int64_t rows = t->shape[0], cols = t->shape[1];
    const double t0 = wmat__now();
    memcpy(W, t->data, (size_t)(rows * cols) * sizeof(float));
    wmat_prune_params pp = p->pp;
    pp.n_threads = p->n_threads > 0 ? p->n_threads : wmat_context_threads(NULL);
    if (pp.n_threads < 1) pp.n_threads = 1;
    int rc;
    if (!strcmp(p->method, "magnitude")) rc = wmat__prune_magnitude(W, rows, cols, &pp, mask);
    else if (!strcmp(p->method, "wanda")) rc = wmat__prune_wanda(W, rows, cols, st ? st->x2 : NULL, &pp, mask);
    else rc = wmat__prune_sparsegpt(W, rows, cols, st ? st->H : NULL, &pp, mask, NULL);
    if (!rc)
        rc = pp.n > 0 ? wmat__nm_create(W, mask, rows, cols, pp.n, pp.m, p->dtype, &j->obj)
                      : wmat__sparse_create(W, mask, rows, cols, p->dtype, &j->obj);
    if (rc) return wmat_set_error(rc, "%s: %s", t->name, wmat_last_error());
    double num = 0, den = 0;
    const float *W0 = t->data;
    for (int64_t i = 0; i < rows * cols; i++) {
        const double d = (double)W0[i] - W[i];
        num += d * d;
        den += (double)W0[i] * W0[i];
    }
    if (rep) {
        snprintf(rep->name, sizeof rep->name, "%s", t->name);
        snprintf(rep->method, sizeof rep->method, "%s", p->method);
        rep->rows = rows;
        rep->cols = cols;
        int64_t kept = 0;
        for (int64_t i = 0; i < rows * cols; i++) kept += mask[i];
        rep->rank = kept; /* for pruning: the weights kept */
        rep->rel_error = den > 0 ? sqrt(num / den) : 0.0;
        wmat_tensor tmp;
        wmat__tensor_init2(&tmp, WMAT_OBJ, rows, cols, j->obj);
        rep->bits_per_weight = wmat_tensor_bits_per_weight(&tmp);
        rep->seconds = wmat__now() - t0;
    }
    /* the working model runs the pruned weights from now on */
    if ((rc = wmat__tensor_make_writable(t))) return rc;
    memcpy(t->data, W, (size_t)(rows * cols) * sizeof(float));
    return WMAT_OK;
}

int wmat__prune_model(wmat_model *m, const wmat_prune_model_params *p, wmat_decompose_report *rep)
{
    if (rep) memset(rep, 0, sizeof *rep);
    const char *src = m->path ? m->path : "model";
    if (!p->method || (strcmp(p->method, "magnitude") && strcmp(p->method, "wanda") && strcmp(p->method, "sparsegpt")))
        return wmat_set_error(WMAT_ERR_INVALID, "prune: unknown method '%s'", p->method ? p->method : "");
    if (p->dtype != WMAT_F32 && p->dtype != WMAT_F16) return wmat_set_error(WMAT_ERR_INVALID, "prune: values are f32 or f16");
    const wmat_config *c = wmat_model_config(m);
    const int L = c->n_layers, stats = needs_stats(p->method);
    const unsigned targets = p->targets ? p->targets : (1u << WMAT_LIN_COUNT) - 1;
    pjob *jobs = wmat__calloc((size_t)(L * WMAT_LIN_COUNT + 1), sizeof *jobs);
    if (!jobs) return wmat_set_error(WMAT_ERR_NOMEM, "prune: out of memory");
    int nj = 0, rc = WMAT_OK;
    int64_t max_elems = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            if (targets >> k & 1u) {
                wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k);
                if (!t || t->ndim != 2 || t->dtype != WMAT_F32 || (t->flags & WMAT_TF_HF_ROPE)) {
                    rc = wmat_set_error(WMAT_ERR_INVALID, "%s: %s is not a materialized fp32 matrix (load with materialize_f32)",
                                        src, t ? t->name : "a linear layer");
                    goto done;
                }
                if ((rc = wmat__prune_check(&p->pp, t->shape[1]))) {
                    rc = wmat_set_error(rc, "%s: %s: %s", src, t->name, wmat_last_error());
                    goto done;
                }
                jobs[nj++] = (pjob){t, l, wmat__calib_slot((wmat_linear_kind)k), NULL};
                if (wmat_tensor_nelem(t) > max_elems) max_elems = wmat_tensor_nelem(t);
            }
    if (rep) {
        rep->tensors = wmat__calloc((size_t)(nj ? nj : 1), sizeof *rep->tensors);
        if (!rep->tensors) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "prune: out of memory");
            goto done;
        }
    }
    const double t_start = wmat__now();
    float *W = wmat__malloc((size_t)max_elems * sizeof(float));
    uint8_t *mask = wmat__malloc((size_t)max_elems);
    wmat_runtime *rt = NULL;
    wmat__calib_states cs;
    memset(&cs, 0, sizeof cs);
    wmat_qstats st[WMAT_CSLOT_COUNT];
    memset(st, 0, sizeof st);
    if (!W || !mask) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "prune: out of memory");
        goto out;
    }
    wmat_context wc = wmat_context_default();
    wc.n_threads = p->n_threads;
    if (stats) {
        int ctx = p->calib_ctx > 0 ? p->calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
        if (!p->calib || !p->n_calib) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "method '%s' needs calibration data (--calib FILE)", p->method);
            goto out;
        }
        if (ctx > c->seq_len) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "calibration window %d is longer than the model's context (%d)", ctx, c->seq_len);
            goto out;
        }
        if (p->n_calib < (size_t)ctx) ctx = (int)p->n_calib;
        const int n_windows = (int)(p->n_calib / (size_t)ctx);
        for (size_t i = 0; i < (size_t)n_windows * (size_t)ctx; i++)
            if (p->calib[i] < 0 || p->calib[i] >= c->vocab_size) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "calibration token %d at index %zu is outside the vocabulary (%d)",
                                    p->calib[i], i, c->vocab_size);
                goto out;
            }
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.max_batch_tokens = ctx;
        rp.kv_cache_len = 1;
        rp.ctx = &wc;
        if ((rc = wmat_runtime_create(&rt, m, &rp))) goto out;
        if ((rc = wmat__calib_states_init(&cs, rt, p->calib, n_windows, ctx, c->dim))) goto out;
    }
    int done_jobs = 0, last = -1;
    for (int i = 0; i < nj; i++)
        if (jobs[i].layer > last) last = jobs[i].layer;
    for (int l = 0; l <= last && !rc; l++) {
        for (int s = 0; s < 4 && !rc; s++) { /* stages: attn (q/k/v), o, ffn (gate/up), down */
            int any = 0;
            for (int i = 0; i < nj; i++) any |= jobs[i].layer == l && jobs[i].slot == s;
            if (!any) continue;
            wmat_qstats *slots[WMAT_CSLOT_COUNT] = {0};
            if (stats) {
                const int64_t n = s == WMAT_CSLOT_DOWN ? c->hidden_dim : s == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
                if ((rc = wmat__qstats_init(&st[s], n, !strcmp(p->method, "sparsegpt")))) break;
                slots[s] = &st[s];
                if ((rc = wmat__calib_collect(&cs, L, slots, 1u << s, 0))) break;
            }
            for (int i = 0; i < nj && !rc; i++) {
                pjob *j = &jobs[i];
                if (j->layer != l || j->slot != s) continue;
                if (p->progress && p->progress(p->progress_user, j->t->name, (uint64_t)done_jobs, (uint64_t)nj)) {
                    rc = wmat_set_error(WMAT_ERR_CANCELLED, "prune: cancelled at %s", j->t->name);
                    break;
                }
                rc = prune_job(j, p, slots[s], mask, W, rep ? &rep->tensors[rep->n_tensors++] : NULL);
                done_jobs++;
            }
            wmat__qstats_free(&st[s]);
        }
        if (!rc && stats && l < last) rc = wmat__calib_advance(&cs);
    }
    if (!rc) {
        /* every matrix pruned: each becomes its sparse kind */
        for (int i = 0; i < nj; i++) {
            wmat__tensor_set_obj(jobs[i].t, jobs[i].obj);
            jobs[i].obj = NULL;
        }
        if (p->progress) p->progress(p->progress_user, "prune", (uint64_t)nj, (uint64_t)nj);
    }
    if (rep) {
        for (int i = 0; i < rep->n_tensors; i++) {
            rep->params_before += (uint64_t)(rep->tensors[i].rows * rep->tensors[i].cols);
            rep->params_after += (uint64_t)rep->tensors[i].rank;
        }
        rep->seconds = wmat__now() - t_start;
    }
out:
    for (int k = 0; k < WMAT_CSLOT_COUNT; k++) wmat__qstats_free(&st[k]);
    wmat__calib_states_free(&cs);
    wmat_runtime_free(rt);
    wmat__free(W);
    wmat__free(mask);
done:
    for (int i = 0; i < nj; i++)
        if (jobs[i].obj) ((const wmat_wobj *)jobs[i].obj)->kind->free(jobs[i].obj);
    wmat__free(jobs);
    if (rc && rep) wmat_decompose_report_free(rep);
    return rc;
}

/* ---- as decomposition methods (decompose.c's rows) */

int wmat__decomp_prune_check(const wmat_pset *ps, int global)
{
    (void)global;
    wmat_prune_params pp;
    return wmat__prune_params_from(ps, &pp);
}

int wmat__decomp_prune_model(wmat_model *m, const char *method, const wmat_pset *ps, const wmat_decompose_params *p,
                             wmat_decompose_report *rep)
{
    wmat_prune_model_params q;
    memset(&q, 0, sizeof q);
    int rc = wmat__prune_params_from(ps, &q.pp);
    if (rc) return rc;
    if (p->dtype != WMAT_F32 && p->dtype != WMAT_F16)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: sparse weights keep their values as f32 or f16, not %s", method,
                              wmat_dtype_info(p->dtype)->name);
    q.method = method;
    q.dtype = p->dtype;
    q.targets = p->targets;
    q.calib = p->calib;
    q.n_calib = p->n_calib;
    q.calib_ctx = p->calib_ctx;
    q.progress = p->progress;
    q.progress_user = p->progress_user;
    return wmat__prune_model(m, &q, rep);
}
