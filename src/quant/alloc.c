/* Measured mixed precision: which setting each tensor gets under a budget of
 * bits per weight (docs/QUANT.md, "Bit allocation").
 *
 * llama.cpp's mixes (Q4_K_M: ffn_down and attn_v one type up) are rules of
 * thumb read off perplexity runs; here the same question is answered per
 * model by measurement:
 *   1. each candidate setting quantizes the whole model once, as the user's
 *      run would (same calibration, same sequential mode), and the
 *      dequantized weights and stored bits of every tensor are kept;
 *   2. sensitivity: the calibration loss of the fp32 model with only tensor
 *      t replaced by its candidate-c weights, minus the fp32 loss;
 *   3. a multiple-choice knapsack (one candidate per tensor, stored bits
 *      within the budget, least summed loss increase), solved exactly by
 *      dynamic programming over the budget in 4096 units (costs rounded up,
 *      so the choice never exceeds the budget).
 * The loss increases are assumed to add, the usual assumption of such
 * allocations (HAWQ, llama.cpp's mixes); the final quantization then runs
 * sequentially with the chosen settings, so its result is measured again
 * rather than predicted. */
#include "methods.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CAND 8

typedef struct {
    int model_idx;   /* index in the model */
    int64_t n;       /* elements */
    float *orig;     /* fp32 weights before any quantization */
    float *q[MAX_CAND];
    double bits[MAX_CAND], dloss[MAX_CAND];
} atensor;

void wmat_alloc_report_free(wmat_alloc_report *rep)
{
    if (!rep) return;
    wmat__free(rep->tensors);
    memset(rep, 0, sizeof *rep);
}

/* candidates "SPEC,SPEC,...": each SPEC an --override item without its pattern */
static int split_candidates(const char *list, char specs[MAX_CAND][160], int *n)
{
    *n = 0;
    if (!list || !*list) return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: no candidate settings");
    const char *s = list;
    while (*s) {
        const char *e = strchr(s, ',');
        const size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0) return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: empty candidate in '%s'", list);
        if (*n == MAX_CAND) return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: at most %d candidates", MAX_CAND);
        if (len >= 160) return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: candidate '%.*s' too long", (int)len, s);
        if (memchr(s, '=', len) && !memchr(s, ':', len))
            return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: candidate '%.*s' is METHOD[:BITS[:GROUP]][:KEY=VALUE]..., not a pattern",
                                  (int)len, s);
        memcpy(specs[*n], s, len);
        specs[*n][len] = 0;
        (*n)++;
        s = e ? e + 1 : s + len;
    }
    return WMAT_OK;
}

/* "*=SPEC" then the caller's own overrides (which win) */
static char *cand_overrides(const char *spec, const char *user)
{
    const size_t n = strlen(spec) + (user ? strlen(user) : 0) + 8;
    char *s = wmat__malloc(n);
    if (s) snprintf(s, n, "*=%s%s%s", spec, user && *user ? "," : "", user && *user ? user : "");
    return s;
}

static int calib_loss(wmat_runtime *rt, const wmat_quantize_params *p, int windows, double *loss)
{
    wmat_eval_result er;
    int rc = wmat_eval_tokens(rt, p->calib, p->n_calib, p->calib_ctx, windows, &er);
    if (rc) return rc;
    if (!(er.ppl > 0) || !isfinite(er.ppl))
        return wmat_set_error(WMAT_ERR_NUMERIC, "bit allocation: calibration perplexity is %g", er.ppl);
    *loss = log(er.ppl);
    return WMAT_OK;
}

/* Exact multiple-choice knapsack over WMAT_ALLOC_UNITS units of the budget
 * (methods.h). */
int wmat__alloc_knapsack(const double *bits, const double *dloss, int nt, int nc, double budget, int *choice)
{
    enum { U = WMAT_ALLOC_UNITS };
    double *best = wmat__malloc(sizeof(double) * (U + 1)), *next = wmat__malloc(sizeof(double) * (U + 1));
    unsigned char *pick = wmat__malloc((size_t)nt * (U + 1));
    int rc = WMAT_OK;
    if (!best || !next || !pick) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
        goto done;
    }
    if (!(budget > 0) || nc < 1 || nc > 255) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: budget %g, %d candidates", budget, nc);
        goto done;
    }
    for (int u = 0; u <= U; u++) best[u] = 0;
    for (int i = 0; i < nt; i++) {
        for (int u = 0; u <= U; u++) {
            next[u] = INFINITY;
            pick[(size_t)i * (U + 1) + u] = 0;
            for (int c = 0; c < nc; c++) {
                const double cost = wmat__alloc_units(bits[i * nc + c], budget);
                if (cost > u) continue;
                const double v = best[u - (int)cost] + dloss[i * nc + c];
                if (v < next[u]) {
                    next[u] = v;
                    pick[(size_t)i * (U + 1) + u] = (unsigned char)c;
                }
            }
        }
        double *tmp = best;
        best = next;
        next = tmp;
    }
    if (!isfinite(best[U])) {
        double lo = 0;
        for (int i = 0; i < nt; i++) {
            double m = INFINITY;
            for (int c = 0; c < nc; c++) m = fmin(m, bits[i * nc + c]);
            lo += m;
        }
        rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: the budget (%.0f bits) is below the cheapest candidates (%.0f bits)",
                            budget, lo);
        goto done;
    }
    int u = U;
    for (int i = nt - 1; i >= 0; i--) {
        const int c = pick[(size_t)i * (U + 1) + u];
        choice[i] = c;
        u -= (int)wmat__alloc_units(bits[i * nc + c], budget);
    }
done:
    wmat__free(best);
    wmat__free(next);
    wmat__free(pick);
    return rc;
}

double wmat__alloc_units(double bits, double budget) { return ceil(bits / (budget / WMAT_ALLOC_UNITS) - 1e-9); }

/* the weights a run may change: every fp32 matrix of the model, kept once */
typedef struct {
    int n;
    int *idx;
    float **data;
} saved;

static void saved_free(saved *sv)
{
    for (int i = 0; i < sv->n; i++) wmat__free(sv->data[i]);
    wmat__free(sv->data);
    wmat__free(sv->idx);
    memset(sv, 0, sizeof *sv);
}

static size_t numel(const wmat_tensor *w)
{
    size_t n = 1;
    for (int d = 0; d < w->ndim; d++) n *= (size_t)w->shape[d];
    return n;
}

static int saved_take(saved *sv, wmat_model *m)
{
    const int nt = wmat_model_n_tensors(m);
    sv->idx = wmat__calloc((size_t)nt + 1, sizeof *sv->idx);
    sv->data = wmat__calloc((size_t)nt + 1, sizeof *sv->data);
    if (!sv->idx || !sv->data) return wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
    for (int i = 0; i < nt; i++) {
        const wmat_tensor *w = wmat_model_tensor(m, i);
        if (w->dtype != WMAT_F32 || w->ndim != 2) continue;
        float *c = wmat__malloc(sizeof(float) * numel(w));
        if (!c) return wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory (a copy of %s)", w->name);
        memcpy(c, w->data, sizeof(float) * numel(w));
        sv->idx[sv->n] = i;
        sv->data[sv->n++] = c;
    }
    return WMAT_OK;
}

/* Only what differs is written back: a tensor no run touched may still
 * lie in a read-only mapping of the file (a quantized one was given its own
 * buffer by the run). */
static void saved_restore(const saved *sv, wmat_model *m)
{
    for (int i = 0; i < sv->n; i++) {
        wmat_tensor *w = wmat_model_tensor(m, sv->idx[i]);
        if (memcmp(w->data, sv->data[i], sizeof(float) * numel(w))) memcpy(w->data, sv->data[i], sizeof(float) * numel(w));
    }
}

static const float *saved_find(const saved *sv, int model_idx)
{
    for (int i = 0; i < sv->n; i++)
        if (sv->idx[i] == model_idx) return sv->data[i];
    return NULL;
}

static int model_index(wmat_model *m, const wmat_tensor *w)
{
    for (int j = 0; j < wmat_model_n_tensors(m); j++)
        if (wmat_model_tensor(m, j) == w) return j;
    return -1;
}

static int progress(const wmat_quantize_params *p, const char *what, uint64_t done, uint64_t total)
{
    if (p->progress && p->progress(p->progress_user, what, done, total))
        return wmat_set_error(WMAT_ERR_CANCELLED, "bit allocation: cancelled");
    return WMAT_OK;
}

int wmat_quantize_allocate(wmat_model *m, const wmat_quantize_params *p, const char *candidates, double bpw, int loss_windows,
                           char **overrides_out, wmat_alloc_report *rep)
{
    *overrides_out = NULL;
    if (rep) memset(rep, 0, sizeof *rep);
    if (!p->calib || p->n_calib == 0)
        return wmat_set_error(WMAT_ERR_INVALID, "bit allocation measures the calibration loss: give calibration tokens");
    if (p->comm) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "bit allocation runs in one process (not under MPI)");
    if (!(bpw > 0) || !isfinite(bpw)) return wmat_set_error(WMAT_ERR_INVALID, "bit allocation: bits per weight must be > 0");
    if (loss_windows <= 0) loss_windows = 32;
    char specs[MAX_CAND][160];
    int nc, rc = split_candidates(candidates, specs, &nc);
    if (rc) return rc;
    for (int c = 0; c < nc; c++) {
        wmat_quantize_params pc = *p;
        char *ov = cand_overrides(specs[c], p->overrides);
        if (!ov) return wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
        pc.overrides = ov;
        rc = wmat__quantize_check(&pc);
        wmat__free(ov);
        if (rc) return wmat_set_error(rc, "bit allocation: candidate '%s': %s", specs[c], wmat_last_error());
    }
    const double t0 = wmat__now();
    atensor *t = NULL;
    int nt = 0, *choice = NULL;
    wmat_runtime *rt = NULL;
    saved sv = {0};
    wmat_quantize_report qr;
    memset(&qr, 0, sizeof qr);
    if ((rc = saved_take(&sv, m))) goto done;

    /* 1. every candidate over the whole model, from the original weights */
    for (int c = 0; c < nc; c++) {
        wmat_quantize_params pc = *p;
        char *ov = cand_overrides(specs[c], p->overrides);
        if (!ov) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
            goto done;
        }
        pc.overrides = ov;
        rc = wmat__quantize_model(m, &pc, &qr, NULL);
        wmat__free(ov);
        if (rc) goto done;
        if (c == 0) {
            for (int i = 0; i < qr.n_tensors; i++) nt += qr.tensors[i].quantized != 0;
            t = wmat__calloc((size_t)(nt ? nt : 1), sizeof *t);
            if (!t) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
                goto done;
            }
        }
        int k = 0;
        for (int i = 0; i < qr.n_tensors && !rc; i++) {
            if (!qr.tensors[i].quantized) continue;
            wmat_tensor *w = wmat_model_find(m, qr.tensors[i].name);
            const int mi = w ? model_index(m, w) : -1;
            if (k == nt || mi < 0 || (c > 0 && t[k].model_idx != mi) || !saved_find(&sv, mi)) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: candidate '%s' quantizes other tensors than '%s' (%s)",
                                    specs[c], specs[0], qr.tensors[i].name);
                break;
            }
            atensor *a = &t[k++];
            a->model_idx = mi;
            a->n = (int64_t)numel(w);
            a->orig = (float *)saved_find(&sv, mi);
            if (!(a->q[c] = wmat__malloc(sizeof(float) * (size_t)a->n))) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
                break;
            }
            memcpy(a->q[c], w->data, sizeof(float) * (size_t)a->n);
            a->bits[c] = qr.tensors[i].bits_per_weight * (double)a->n;
        }
        if (!rc && k != nt)
            rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: candidate '%s' quantizes other tensors than '%s'", specs[c],
                                specs[0]);
        wmat_quantize_report_free(&qr);
        saved_restore(&sv, m);
        if (rc) goto done;
    }
    if (nt == 0) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: no tensor is quantized");
        goto done;
    }

    /* 2. sensitivity: the fp32 model with one tensor at one candidate */
    wmat_context wc = wmat_context_default();
    wc.n_threads = p->n_threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = p->calib_ctx;
    rp.kv_cache_len = 1;
    rp.pack_weights = 0; /* the weights change between evaluations */
    rp.ctx = &wc;
    if ((rc = wmat_runtime_create(&rt, m, &rp))) goto done;
    double loss0;
    if ((rc = calib_loss(rt, p, loss_windows, &loss0))) goto done;
    for (int i = 0; i < nt; i++) {
        float *w = wmat_model_tensor(m, t[i].model_idx)->data;
        for (int c = 0; c < nc; c++) {
            if ((rc = progress(p, wmat_model_tensor(m, t[i].model_idx)->name, (uint64_t)(i * nc + c), (uint64_t)(nt * nc))))
                goto done;
            memcpy(w, t[i].q[c], sizeof(float) * (size_t)t[i].n);
            double l;
            rc = calib_loss(rt, p, loss_windows, &l);
            memcpy(w, t[i].orig, sizeof(float) * (size_t)t[i].n);
            if (rc) goto done;
            t[i].dloss[c] = l - loss0;
        }
    }
    if ((rc = progress(p, "allocation", (uint64_t)(nt * nc), (uint64_t)(nt * nc)))) goto done;

    /* 3. the knapsack under the budget over the quantized tensors */
    double total = 0;
    for (int i = 0; i < nt; i++) total += (double)t[i].n;
    if (!(choice = wmat__calloc((size_t)nt, sizeof *choice))) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
        goto done;
    }
    {
        double *bits = wmat__malloc(sizeof(double) * (size_t)(nt * nc)), *dl = wmat__malloc(sizeof(double) * (size_t)(nt * nc));
        if (!bits || !dl) rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
        for (int i = 0; !rc && i < nt; i++)
            for (int c = 0; c < nc; c++) bits[i * nc + c] = t[i].bits[c], dl[i * nc + c] = t[i].dloss[c];
        double lo = 0;
        for (int i = 0; !rc && i < nt; i++) {
            double mb = INFINITY;
            for (int c = 0; c < nc; c++) mb = fmin(mb, bits[i * nc + c]);
            lo += mb;
        }
        /* the units round each tensor's bits up: a budget within that of the
         * cheapest choice is refused too */
        if (!rc && lo + nt * bpw * total / WMAT_ALLOC_UNITS > bpw * total)
            rc = wmat_set_error(WMAT_ERR_INVALID, "bit allocation: %.3f bits per weight is below what the cheapest candidates need (%.3f)",
                                bpw, (lo + nt * bpw * total / WMAT_ALLOC_UNITS) / total);
        if (!rc) rc = wmat__alloc_knapsack(bits, dl, nt, nc, bpw * total, choice);
        wmat__free(bits);
        wmat__free(dl);
        if (rc) goto done;
    }

    /* the choice as an --override list: full names (a substring match of
     * exactly that tensor), then the caller's own overrides, which win */
    size_t len = (p->overrides ? strlen(p->overrides) : 0) + 2;
    for (int i = 0; i < nt; i++) len += strlen(wmat_model_tensor(m, t[i].model_idx)->name) + strlen(specs[choice[i]]) + 2;
    char *out = wmat__malloc(len);
    if (!out) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
        goto done;
    }
    size_t o = 0;
    for (int i = 0; i < nt; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s=%s", i ? "," : "", wmat_model_tensor(m, t[i].model_idx)->name, specs[choice[i]]);
    if (p->overrides && *p->overrides) snprintf(out + o, len - o, ",%s", p->overrides);
    *overrides_out = out;
    if (rep) {
        rep->tensors = wmat__calloc((size_t)nt, sizeof *rep->tensors);
        if (!rep->tensors) {
            wmat__free(out);
            *overrides_out = NULL;
            rc = wmat_set_error(WMAT_ERR_NOMEM, "bit allocation: out of memory");
            goto done;
        }
        rep->n_tensors = nt;
        rep->n_candidates = nc;
        rep->loss0 = loss0;
        double bits = 0, dl = 0;
        for (int i = 0; i < nt; i++) {
            wmat_alloc_tensor *r = &rep->tensors[i];
            snprintf(r->name, sizeof r->name, "%s", wmat_model_tensor(m, t[i].model_idx)->name);
            r->choice = choice[i];
            r->n = t[i].n;
            for (int c = 0; c < nc; c++) {
                r->dloss[c] = t[i].dloss[c];
                r->bits_per_weight[c] = t[i].bits[c] / (double)t[i].n;
            }
            bits += t[i].bits[choice[i]];
            dl += t[i].dloss[choice[i]];
        }
        rep->bits_per_weight = bits / total;
        rep->predicted_dloss = dl;
        rep->seconds = wmat__now() - t0;
    }
done:
    if (rc) saved_restore(&sv, m);
    wmat_runtime_free(rt);
    if (t)
        for (int i = 0; i < nt; i++)
            for (int c = 0; c < nc; c++) wmat__free(t[i].q[c]);
    wmat__free(t);
    wmat__free(choice);
    saved_free(&sv);
    wmat_quantize_report_free(&qr);
    return rc;
}
