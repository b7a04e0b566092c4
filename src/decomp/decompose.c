/* The decomposition driver: the method table and a pass over a model's
 * linear weights, each replaced in place by the method's structured kind. */
#include "decomp.h"

#include "io/model_internal.h"

#include <string.h>
#include <time.h>

const wmat_dmethod wmat__dmethods[] = {
    {"svd", wmat__decomp_svd, "lowrank", "truncated SVD: W ~ (U_r S_r) V_r^T, the best rank-r approximation (--rank R | --energy E)"},
    {NULL, NULL, NULL, NULL},
};

const wmat_dmethod *wmat__dmethod_find(const char *name)
{
    for (const wmat_dmethod *d = wmat__dmethods; d->name; d++)
        if (!strcmp(d->name, name)) return d;
    return NULL;
}

wmat_decompose_params wmat_decompose_default_params(void)
{
    wmat_decompose_params p;
    memset(&p, 0, sizeof p);
    p.method = "svd";
    p.dtype = WMAT_F32;
    return p;
}

const char *wmat_decompose_method_name(int i, const char **summary, const char **produces)
{
    int n = 0;
    while (wmat__dmethods[n].name) n++;
    const wmat_dmethod *d = i >= 0 && i < n ? &wmat__dmethods[i] : NULL;
    if (summary) *summary = d ? d->summary : NULL;
    if (produces) *produces = d ? d->produces : NULL;
    return d ? d->name : NULL;
}

void wmat_decompose_report_free(wmat_decompose_report *rep)
{
    if (!rep) return;
    wmat__free(rep->tensors);
    memset(rep, 0, sizeof *rep);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int wmat_decompose_model(wmat_model *m, const wmat_decompose_params *p, wmat_decompose_report *rep)
{
    wmat_decompose_params def = wmat_decompose_default_params();
    if (!p) p = &def;
    if (rep) memset(rep, 0, sizeof *rep);
    const char *src = m->path ? m->path : "model";
    const wmat_dmethod *dm = wmat__dmethod_find(p->method ? p->method : "");
    if (!dm) return wmat_set_error(WMAT_ERR_INVALID, "decompose: unknown method '%s'", p->method ? p->method : "(null)");
    if (p->rank < 0 || !(p->energy >= 0 && p->energy <= 1) || (p->rank == 0 && p->energy == 0))
        return wmat_set_error(WMAT_ERR_INVALID, "decompose: give a rank > 0 or an energy in (0, 1] (rank %d, energy %g)",
                              p->rank, (double)p->energy);
    if (p->dtype != WMAT_F32 && p->dtype != WMAT_F16 && p->dtype != WMAT_BF16)
        return wmat_set_error(WMAT_ERR_INVALID, "decompose: factors are f32, f16 or bf16");
    const wmat_config *c = &m->cfg;
    const unsigned targets = p->targets ? p->targets : (1u << WMAT_LIN_COUNT) - 1;
    const int n_slots = c->n_layers * WMAT_LIN_COUNT + 1;
    wmat_tensor **sel = wmat__calloc((size_t)n_slots, sizeof *sel);
    if (!sel) return wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
    int n = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            if (targets & (1u << k)) sel[n++] = wmat_model_linear(m, l, (wmat_linear_kind)k);
    if (p->classifier && !c->tied_embeddings) sel[n++] = wmat_model_classifier(m);
    int rc = WMAT_OK;
    for (int i = 0; i < n && !rc; i++)
        if (sel[i]->dtype != WMAT_F32 || (sel[i]->flags & WMAT_TF_HF_ROPE))
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: %s is %s, not a materialized fp32 matrix (load with materialize_f32)",
                                src, sel[i]->name, wmat_tensor_kind(sel[i]) ? wmat_tensor_kind(sel[i]) : "?");
    if (!rc && rep) {
        rep->tensors = wmat__calloc((size_t)(n ? n : 1), sizeof *rep->tensors);
        if (!rep->tensors) rc = wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
    }
    const double t0 = now();
    wmat_dparams dp = {p->rank, p->energy, p->dtype};
    for (int i = 0; i < n && !rc; i++) {
        wmat_tensor *t = sel[i];
        if (p->progress && p->progress(p->progress_user, t->name, (uint64_t)i, (uint64_t)n)) {
            rc = wmat_set_error(WMAT_ERR_CANCELLED, "decompose: cancelled at %s", t->name);
            break;
        }
        const double ts = now();
        wmat_tensor out;
        int64_t r = 0;
        double err = 0;
        rc = dm->fn(t->data, t->shape[0], t->shape[1], &dp, &out, &r, &err);
        if (rc) {
            rc = wmat_set_error(rc, "%s: %s: %s", src, t->name, wmat_last_error());
            break;
        }
        const uint64_t before = (uint64_t)(t->shape[0] * t->shape[1]);
        wmat__tensor_set_obj(t, out.data);
        if (rep) {
            wmat_decompose_tensor *d = &rep->tensors[rep->n_tensors++];
            snprintf(d->name, sizeof d->name, "%s", t->name);
            d->rows = t->shape[0];
            d->cols = t->shape[1];
            d->rank = r;
            d->rel_error = err;
            d->bits_per_weight = wmat_tensor_bits_per_weight(t);
            d->seconds = now() - ts;
            rep->params_before += before;
            rep->params_after += (uint64_t)(r * (t->shape[0] + t->shape[1]));
        }
    }
    if (!rc && p->progress) p->progress(p->progress_user, "decompose", (uint64_t)n, (uint64_t)n);
    if (rep) rep->seconds = now() - t0;
    wmat__free(sel);
    if (rc && rep) wmat_decompose_report_free(rep);
    return rc;
}
