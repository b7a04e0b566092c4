/* The method registry and the model-level driver: which tensors, which
 * method and grid for each (overrides by name pattern, --keep), sequential
 * calibration (by default GPTQ's "true sequential": within each block q/k/v,
 * then o, then gate/up, then down are calibrated on a model whose earlier
 * stages and blocks are already quantized; or block by block), the
 * fake-quant write-back and the per-tensor report. */
#include "methods.h"

#include <fnmatch.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

const wmat_qmethod wmat__qmethods[] = {
    {"rtn", wmat__quant_rtn, 0, 0, "round to nearest on a uniform grid (optional clipping search)"},
    {"imatrix", wmat__quant_imatrix, 1, 0, "RTN with scales minimizing sum_j mean(x_j^2) (w_j - q_j)^2"},
    {"gptq", wmat__quant_gptq, 1, 1, "GPTQ: column-wise error feedback through the inverse Hessian"},
    {"adadim-rtn", wmat__quant_adadim_rtn, 1, 1, "AdaDim over RTN: per-IC or per-OC, whichever has less output error"},
    {"adadim-gptq", wmat__quant_adadim_gptq, 1, 1, "AdaDim over GPTQ"},
    {NULL, NULL, 0, 0, NULL},
};

const wmat_qmethod *wmat__qmethod_find(const char *name)
{
    for (const wmat_qmethod *m = wmat__qmethods; name && m->name; m++)
        if (!strcmp(m->name, name)) return m;
    return NULL;
}

const char *wmat_quantize_method_name(int i, int *needs_calibration)
{
    int n = 0;
    while (wmat__qmethods[n].name) n++;
    if (i < 0 || i >= n) return NULL;
    if (needs_calibration) *needs_calibration = wmat__qmethods[i].needs_calibration;
    return wmat__qmethods[i].name;
}

wmat_quantize_params wmat_quantize_default_params(void)
{
    wmat_quantize_params p;
    memset(&p, 0, sizeof p);
    p.method = "rtn";
    p.bits = 4;
    p.damp = 0.01f;
    p.sequential = 2;
    return p;
}

void wmat_quantize_report_free(wmat_quantize_report *rep)
{
    if (!rep) return;
    wmat__free(rep->tensors);
    memset(rep, 0, sizeof *rep);
}

/* ---- selection */

static int pattern_match(const char *pat, size_t len, const char *name)
{
    char buf[256];
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, pat, len);
    buf[len] = '\0';
    if (strpbrk(buf, "*?[")) return fnmatch(buf, name, 0) == 0;
    return strstr(name, buf) != NULL;
}

/* 1 if a comma-separated pattern list matches name. */
static int list_match(const char *list, const char *name)
{
    for (const char *s = list; s && *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (pattern_match(s, len, name)) return 1;
        s = e ? e + 1 : s + len;
    }
    return 0;
}

typedef struct {
    wmat_tensor *t;
    int layer; /* n_layers for the classifier, -1 for the embedding */
    int slot;  /* WMAT_CSLOT_*, -1 for the embedding */
    const wmat_qmethod *method;
    wmat_qparams qp;
    int keep;
    const char *note;
} qjob;

/* Apply "PATTERN=METHOD[:BITS[:GROUP]]" entries that match the job's name
 * (the last match wins). */
static int apply_overrides(const char *list, qjob *j)
{
    for (const char *s = list; s && *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        char item[256];
        if (len >= sizeof item) return wmat_set_error(WMAT_ERR_INVALID, "override '%.40s...' is too long", s);
        memcpy(item, s, len);
        item[len] = '\0';
        s = e ? e + 1 : s + len;
        char *eq = strchr(item, '=');
        if (!eq) return wmat_set_error(WMAT_ERR_INVALID, "override '%s' is not PATTERN=METHOD[:BITS[:GROUP]]", item);
        *eq = '\0';
        if (!pattern_match(item, strlen(item), j->t->name)) continue;
        char *f[3] = {eq + 1, NULL, NULL};
        for (int k = 1; k < 3; k++) {
            f[k] = f[k - 1] ? strchr(f[k - 1], ':') : NULL;
            if (f[k]) *f[k]++ = '\0';
        }
        if (!strcmp(f[0], "keep") || !strcmp(f[0], "fp32")) {
            j->keep = 1;
            continue;
        }
        const wmat_qmethod *m = wmat__qmethod_find(f[0]);
        if (!m) return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': unknown method '%s'", item, f[0]);
        j->method = m;
        j->keep = 0;
        if (f[1]) {
            char *end;
            long b = strtol(f[1], &end, 10);
            if (*end || b < 2 || b > 8)
                return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': bits '%s' must be 2..8", item, f[1]);
            j->qp.bits = (int)b;
        }
        if (f[2]) {
            if (!strcmp(f[2], "oc")) {
                j->qp.axis = WMAT_QAXIS_IN;
                j->qp.group = 0;
            } else if (!strcmp(f[2], "ic")) {
                j->qp.axis = WMAT_QAXIS_OUT;
                j->qp.group = 0;
            } else {
                char *end;
                long g = strtol(f[2], &end, 10);
                if (*end || g <= 0)
                    return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': group '%s' is not a number, oc or ic",
                                          item, f[2]);
                j->qp.group = (int)g;
            }
        }
    }
    return WMAT_OK;
}

/* Bits per weight as quantized storage keeps it: codes (5..7 bits take a
 * byte), fp16 scales, u8 zero points when asymmetric, i32 perm. */
static double stored_bpw(const wmat_qresult *q)
{
    const int cb = q->bits == 2 || q->bits == 3 || q->bits == 4 || q->bits == 8 ? q->bits : 8;
    const double ng = (double)wmat_qresult_n_groups(q), nw = (double)q->rows * (double)q->cols;
    return ((double)cb * nw + 16.0 * ng + (q->sym ? 0.0 : 8.0 * ng) + (q->perm ? 32.0 * (double)q->cols : 0.0)) / nw;
}

/* Make a tensor's fp32 data writable (a mapped tensor gets an owned copy). */
static int make_writable(wmat_tensor *t)
{
    if (t->flags & WMAT_TF_OWNED) return WMAT_OK;
    void *d = wmat__malloc(t->nbytes);
    if (!d) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory for a writable copy", t->name);
    memcpy(d, t->data, t->nbytes);
    t->data = d;
    t->flags |= WMAT_TF_OWNED;
    return WMAT_OK;
}

/* Quantize one job; Wq gets the dequantized weights. */
static int run_job(qjob *j, const wmat_qstats *st, wmat_qresult *res, float *Wq, wmat_quantize_tensor *rep)
{
    const int64_t rows = j->t->shape[0], cols = j->t->shape[1];
    const float *W = j->t->data;
    wmat_qmethod_info info;
    memset(&info, 0, sizeof info);
    double t0 = wmat__now();
    int rc = j->method->fn(res, W, rows, cols, st, &j->qp, &info);
    if (rc) return wmat_set_error(rc, "%s: %s", j->t->name, wmat_last_error());
    rep->seconds = wmat__now() - t0;
    wmat_qresult_dequant(res, Wq);
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < rows * cols; i++) {
        const double d = (double)W[i] - Wq[i];
        num += d * d;
        den += (double)W[i] * W[i];
    }
    rep->rel_error = den > 0 ? sqrt(num / den) : 0.0;
    rep->out_error = -1.0;
    if (st && st->H) {
        float *zero = wmat__calloc((size_t)(rows * cols), sizeof(float));
        if (zero) {
            const double e = wmat__qoutput_error(W, Wq, rows, cols, st->H);
            const double e0 = wmat__qoutput_error(W, zero, rows, cols, st->H);
            rep->out_error = e0 > 0 ? e / e0 : 0.0;
            wmat__free(zero);
        }
    }
    rep->quantized = 1;
    rep->bits_per_weight = stored_bpw(res);
    rep->damp = info.damp;
    snprintf(rep->scheme, sizeof rep->scheme, "%.80s%s%.46s", info.scheme, j->note ? " " : "", j->note ? j->note : "");
    return WMAT_OK;
}

int wmat__quantize_model(wmat_model *m, const wmat_quantize_params *p, wmat_quantize_report *rep,
                         wmat_qresult **results_out)
{
    wmat_quantize_params def = wmat_quantize_default_params();
    if (!p) p = &def;
    if (rep) memset(rep, 0, sizeof *rep);
    if (results_out) *results_out = NULL;
    const wmat_config *c = wmat_model_config(m);
    const wmat_qmethod *method = wmat__qmethod_find(p->method);
    if (!method) return wmat_set_error(WMAT_ERR_INVALID, "unknown quantization method '%s'", p->method ? p->method : "");
    if (p->bits < 2 || p->bits > 8)
        return wmat_set_error(WMAT_ERR_INVALID, "quantization to %d bits: bits must be 2..8", p->bits);
    if (p->group < 0) return wmat_set_error(WMAT_ERR_INVALID, "group size %d must be positive", p->group);
    const double t_start = wmat__now();
    wmat_context wc = wmat_context_default();
    wc.n_threads = p->n_threads;
    const int nt = wmat_context_threads(&wc);

    /* ---- the jobs, in forward order */
    const int L = c->n_layers, n_tensors = wmat_model_n_tensors(m);
    const int max_jobs = L * WMAT_LIN_COUNT + 2;
    qjob *jobs = wmat__calloc((size_t)max_jobs, sizeof *jobs);
    wmat_qresult *results = wmat__calloc((size_t)n_tensors, sizeof *results);
    wmat_quantize_tensor *trep = wmat__calloc((size_t)max_jobs, sizeof *trep);
    float *Wq = NULL;
    wmat_runtime *rt = NULL;
    wmat__calib_states cs;
    memset(&cs, 0, sizeof cs);
    wmat_qstats stats[WMAT_CSLOT_COUNT];
    memset(stats, 0, sizeof stats);
    int rc = WMAT_OK, nj = 0;
    if (!jobs || !results || !trep) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    wmat_qparams base = wmat__qparams_default();
    base.bits = p->bits;
    base.sym = p->sym;
    base.axis = p->per_ic ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
    base.group = p->group;
    base.clip = p->clip;
    base.act_order = p->act_order;
    base.static_groups = p->static_groups;
    base.damp = p->damp > 0 ? p->damp : 0.01f;
    base.n_threads = nt;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            jobs[nj++] = (qjob){wmat_model_linear(m, l, (wmat_linear_kind)k), l, wmat__calib_slot((wmat_linear_kind)k),
                                method, base, 0, NULL};
    wmat_tensor *emb = wmat_model_tok_embeddings(m), *cls = wmat_model_classifier(m);
    if (p->classifier) jobs[nj++] = (qjob){cls, L, WMAT_CSLOT_CLS, method, base, 0, NULL};
    if (p->embeddings && !(p->classifier && cls == emb)) jobs[nj++] = (qjob){emb, -1, -1, method, base, 0, NULL};
    int need_calib = 0;
    for (int i = 0; i < nj; i++) {
        qjob *j = &jobs[i];
        if (!j->t || j->t->ndim != 2 || j->t->dtype != WMAT_F32) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "quantize: %s is not a materialized fp32 matrix",
                                j->t ? j->t->name : "a linear layer");
            goto done;
        }
        if (list_match(p->keep, j->t->name)) j->keep = 1;
        if ((rc = apply_overrides(p->overrides, j))) goto done;
        if (j->keep) continue;
        if (j->slot < 0 && j->method->needs_calibration) {
            j->method = wmat__qmethod_find("rtn");
            j->note = "(embedding: no input statistics, RTN)";
        }
        const int64_t rows = j->t->shape[0], cols = j->t->shape[1];
        const int div_in = !(j->qp.group > 0 && cols % j->qp.group), div_out = !(j->qp.group > 0 && rows % j->qp.group);
        const int adadim = j->method->fn == wmat__quant_adadim_rtn || j->method->fn == wmat__quant_adadim_gptq;
        const int ok = adadim ? (div_in || div_out) : (j->qp.axis == WMAT_QAXIS_IN ? div_in : div_out);
        if (!ok) {
            if (!p->group_fallback) {
                rc = wmat_set_error(WMAT_ERR_INVALID,
                                    "%s (%lld x %lld): group size %d does not divide its %s dimension; choose a "
                                    "divisor, override this tensor, or allow the per-channel fallback "
                                    "(--group-fallback)",
                                    j->t->name, (long long)rows, (long long)cols, j->qp.group,
                                    j->qp.axis == WMAT_QAXIS_IN ? "input" : "output");
                goto done;
            }
            j->qp.group = 0;
            j->note = "(group does not divide: per-channel fallback)";
        }
        if (j->method->needs_calibration) need_calib = 1;
    }

    /* ---- calibration windows */
    int ctx = p->calib_ctx > 0 ? p->calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
    int n_windows = 0;
    if (need_calib) {
        if (!p->calib || p->n_calib == 0) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "method '%s' needs calibration data (--calib FILE)", p->method);
            goto done;
        }
        if (ctx > c->seq_len) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "calibration window %d is longer than the model's context (%d)", ctx,
                                c->seq_len);
            goto done;
        }
        if (p->n_calib < (size_t)ctx) ctx = (int)p->n_calib;
        n_windows = (int)(p->n_calib / (size_t)ctx);
        for (size_t i = 0; i < (size_t)n_windows * (size_t)ctx; i++)
            if (p->calib[i] < 0 || p->calib[i] >= c->vocab_size) {
                rc = wmat_set_error(WMAT_ERR_INVALID,
                                    "calibration token %d at index %zu is outside the vocabulary (%d): is the file "
                                    "text read as uint16 ids?",
                                    p->calib[i], i, c->vocab_size);
                goto done;
            }
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.max_batch_tokens = ctx;
        rp.kv_cache_len = 1;
        rp.ctx = &wc;
        if ((rc = wmat_runtime_create(&rt, m, &rp))) goto done;
        if ((rc = wmat__calib_states_init(&cs, rt, p->calib, n_windows, ctx, c->dim))) goto done;
    }
    /* the streams need not go past the last block that wants statistics */
    int last_calib = -1;
    for (int i = 0; i < nj; i++)
        if (!jobs[i].keep && jobs[i].method->needs_calibration && jobs[i].layer > last_calib) last_calib = jobs[i].layer;
    int64_t max_elems = 0;
    for (int i = 0; i < nj; i++)
        if (wmat_tensor_nelem(jobs[i].t) > max_elems) max_elems = wmat_tensor_nelem(jobs[i].t);
    Wq = wmat__malloc((size_t)max_elems * sizeof(float));
    if (!Wq) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }

    /* ---- passes: per layer, per stage (or the whole block) */
    int done_jobs = 0;
    double calib_s = 0.0, method_s = 0.0;
    size_t stats_peak = 0;
    const int seq = p->sequential;
    for (int l = -1; l <= L; l++) {
        const int n_stages = (l >= 0 && l < L && seq == 2) ? 4 : 1;
        for (int s = 0; s < n_stages; s++) {
            unsigned stage_mask = l == L ? 1u << WMAT_CSLOT_CLS
                                : l < 0  ? 0u
                                : n_stages == 4 ? 1u << s
                                                : (1u << WMAT_CSLOT_ATTN | 1u << WMAT_CSLOT_O | 1u << WMAT_CSLOT_FFN |
                                                   1u << WMAT_CSLOT_DOWN);
            unsigned want = 0, hess = 0;
            int any = 0;
            for (int i = 0; i < nj; i++) {
                const qjob *j = &jobs[i];
                if (j->layer != l || j->keep || (j->slot >= 0 && !(stage_mask >> j->slot & 1u))) continue;
                any = 1;
                if (j->method->needs_calibration) want |= 1u << j->slot;
                if (j->method->needs_hessian) hess |= 1u << j->slot;
            }
            if (!any) continue;
            size_t sbytes = 0;
            wmat_qstats *slots[WMAT_CSLOT_COUNT] = {0};
            for (int k = 0; k < WMAT_CSLOT_COUNT; k++)
                if (want >> k & 1u) {
                    const int64_t n = k == WMAT_CSLOT_DOWN ? c->hidden_dim : c->dim;
                    if ((rc = wmat__qstats_init(&stats[k], n, hess >> k & 1u))) goto done;
                    slots[k] = &stats[k];
                    sbytes += (size_t)n * (sizeof(double) + sizeof(float)) +
                              ((hess >> k & 1u) ? (size_t)(n * n) * sizeof(double) : 0);
                }
            if (sbytes > stats_peak) stats_peak = sbytes;
            if (want) {
                const double t0 = wmat__now();
                rc = wmat__calib_collect(&cs, L, slots, want, seq == 0 && l < last_calib);
                calib_s += wmat__now() - t0;
                if (rc) goto done;
            }
            for (int i = 0; i < nj; i++) {
                qjob *j = &jobs[i];
                if (j->layer != l || j->keep || (j->slot >= 0 && !(stage_mask >> j->slot & 1u))) continue;
                const int ti = (int)(j->t - wmat_model_tensor(m, 0));
                const wmat_qstats *st = j->slot >= 0 && slots[j->slot] ? slots[j->slot] : NULL;
                if ((rc = run_job(j, st, &results[ti], Wq, &trep[i]))) goto done;
                method_s += trep[i].seconds;
                if (seq > 0) {
                    if ((rc = make_writable(j->t))) goto done;
                    memcpy(j->t->data, Wq, j->t->nbytes);
                }
                done_jobs++;
                if (p->progress && p->progress(p->progress_user, j->t->name, (uint64_t)done_jobs, (uint64_t)nj)) {
                    rc = wmat_set_error(WMAT_ERR_CANCELLED, "quantize: cancelled");
                    goto done;
                }
            }
            for (int k = 0; k < WMAT_CSLOT_COUNT; k++) wmat__qstats_free(&stats[k]);
        }
        /* block l is final (quantized, or fp32 with seq == 0): move the streams past it */
        if (cs.X && l >= 0 && l < last_calib && cs.layer == l) {
            const double t0 = wmat__now();
            rc = wmat__calib_advance(&cs);
            calib_s += wmat__now() - t0;
            if (rc) goto done;
        }
    }
    /* statistics of the fp32 model: write the weights back only now */
    if (seq == 0)
        for (int i = 0; i < nj; i++) {
            qjob *j = &jobs[i];
            if (j->keep) continue;
            const int ti = (int)(j->t - wmat_model_tensor(m, 0));
            wmat_qresult_dequant(&results[ti], Wq);
            if ((rc = make_writable(j->t))) goto done;
            memcpy(j->t->data, Wq, j->t->nbytes);
        }

    if (rep) {
        double before = 0.0, after = 0.0, qbits = 0.0, qw = 0.0;
        for (int i = 0; i < n_tensors; i++) {
            const wmat_tensor *t = wmat_model_tensor(m, i);
            before += (double)t->nbytes;
            if (results[i].codes) {
                const double nw = (double)wmat_tensor_nelem(t);
                after += stored_bpw(&results[i]) * nw / 8.0;
                qbits += stored_bpw(&results[i]) * nw;
                qw += nw;
            } else {
                after += (double)t->nbytes;
            }
        }
        for (int i = 0; i < nj; i++) {
            snprintf(trep[i].name, sizeof trep[i].name, "%s", jobs[i].t->name);
            trep[i].rows = jobs[i].t->shape[0];
            trep[i].cols = jobs[i].t->shape[1];
            if (jobs[i].keep) {
                snprintf(trep[i].scheme, sizeof trep[i].scheme, "kept (fp32)");
                trep[i].bits_per_weight = 32.0;
                trep[i].out_error = -1.0;
            }
        }
        rep->n_tensors = nj;
        rep->tensors = trep;
        trep = NULL;
        rep->bytes_before = before;
        rep->bytes_after = after;
        rep->bits_per_weight = qw > 0 ? qbits / qw : 0.0;
        rep->calib_seconds = calib_s;
        rep->method_seconds = method_s;
        rep->block_passes = cs.block_passes;
        rep->state_bytes = cs.bytes;
        rep->calib_windows = n_windows;
        rep->calib_ctx = need_calib ? ctx : 0;
        rep->stats_bytes = stats_peak;
        rep->seconds = wmat__now() - t_start;
    }
done:
    for (int k = 0; k < WMAT_CSLOT_COUNT; k++) wmat__qstats_free(&stats[k]);
    wmat__calib_states_free(&cs);
    wmat_runtime_free(rt);
    wmat__free(Wq);
    wmat__free(trep);
    wmat__free(jobs);
    if (results && (rc || !results_out)) {
        for (int i = 0; i < n_tensors; i++) wmat_qresult_free(&results[i]);
        wmat__free(results);
        results = NULL;
    }
    if (results_out) *results_out = results;
    if (rc && rep) wmat_quantize_report_free(rep);
    return rc;
}

int wmat_quantize_model(wmat_model *m, const wmat_quantize_params *p, wmat_quantize_report *rep)
{
    return wmat__quantize_model(m, p, rep, NULL);
}
