/* The catalogue of methods (catalog.h) and the public listing. */
#include "catalog.h"

#include "decomp/decomp.h"
#include "experiment/experiment.h"
#include "quant/methods.h"

#include <stdio.h>
#include <string.h>

const wmat_method_desc *wmat__method_at(int i)
{
    if (i < 0) return NULL;
    for (const wmat_qmethod *q = wmat__qmethods; q->name; q++)
        if (i-- == 0) return &q->desc;
    for (const wmat_dmethod *d = wmat__dmethods; d->name; d++)
        if (i-- == 0) return &d->desc;
    for (const wmat_experiment *const *e = wmat__experiments; *e; e++)
        if (i-- == 0) return &(*e)->desc;
    return NULL;
}

const wmat_method_desc *wmat__method_lookup(const char *family, const char *name)
{
    const wmat_method_desc *d;
    for (int i = 0; name && (d = wmat__method_at(i)); i++)
        if ((!family || !strcmp(d->family, family)) && !strcmp(d->name, name)) return d;
    return NULL;
}

int wmat__family_keys(const char *family, wmat_param_spec *dst, int cap)
{
    int n = 0;
    if (cap < 1) return wmat_set_error(WMAT_ERR_INVALID, "method keys: no room");
    const wmat_method_desc *d;
    for (int i = 0; (d = wmat__method_at(i)); i++) {
        if (family && strcmp(d->family, family)) continue;
        int rc = wmat__params_merge(dst, cap - 1, &n, d->schema);
        if (rc) return rc;
    }
    dst[n] = (wmat_param_spec){NULL, 0, NULL, 0, 0, NULL, NULL, NULL};
    return WMAT_OK;
}

int wmat_method_count(void)
{
    int n = 0;
    while (wmat__method_at(n)) n++;
    return n;
}

int wmat_method_info(int i, wmat_method_about *out)
{
    const wmat_method_desc *d = wmat__method_at(i);
    if (!d) return wmat_set_error(WMAT_ERR_INVALID, "method %d: there are %d methods", i, wmat_method_count());
    memset(out, 0, sizeof *out);
    out->name = d->name;
    out->family = d->family;
    out->summary = d->summary;
    out->produces = d->produces;
    out->needs = (d->stats & WMAT_MSTAT_HESSIAN ? WMAT_NEEDS_HESSIAN : 0u) |
                 (d->stats & WMAT_MSTAT_ACT_NORMS ? WMAT_NEEDS_ACT_NORMS : 0u) |
                 (d->stats & WMAT_MSTAT_GRADIENTS ? WMAT_NEEDS_GRADIENTS : 0u) |
                 (d->stats & WMAT_MSTAT_RESIDUAL ? WMAT_NEEDS_RESIDUAL : 0u);
    out->n_keys = wmat__params_count(d->schema);
    return WMAT_OK;
}

int wmat_method_key_info(int i, int k, wmat_method_key *out)
{
    static const char *const k_types[] = {"int", "float", "bool", "enum", "string"};
    const wmat_method_desc *d = wmat__method_at(i);
    if (!d) return wmat_set_error(WMAT_ERR_INVALID, "method %d: there are %d methods", i, wmat_method_count());
    const int n = wmat__params_count(d->schema);
    if (k < 0 || k >= n) return wmat_set_error(WMAT_ERR_INVALID, "method %s: key %d of %d", d->name, k, n);
    const wmat_param_spec *s = &d->schema[k];
    memset(out, 0, sizeof *out);
    out->key = s->name;
    out->type = (unsigned)s->type < sizeof k_types / sizeof k_types[0] ? k_types[s->type] : "?";
    out->help = s->help;
    out->negation = s->neg;
    snprintf(out->def, sizeof out->def, "%s", s->def ? s->def : "");
    wmat__param_range(s, out->range, sizeof out->range);
    return WMAT_OK;
}
