/* The decomposition driver: the method table and a pass over a model's
 * linear weights, each replaced in place by the method's structured kind. */
#include "decomp.h"
#include "monarch.h"

#include "io/model_internal.h"
#include "prune.h"
#include "core/shapes.h"
#include "quant/methods.h"

#include <string.h>
#include <time.h>

#define DECOMP WMAT_FAMILY_DECOMPOSITION
const wmat_dmethod wmat__dmethods[] = {
    {.desc = {"svd", DECOMP, 0, 0, wmat__svd_keys, "lowrank",
              "truncated SVD: W ~ (U_r S_r) V_r^T, the best rank-r approximation"},
     .fn = wmat__decomp_svd, .check = wmat__decomp_svd_check},
    {.desc = {"magnitude", DECOMP, 0, 0, wmat__prune_keys, "sparse|nm",
              "prune the smallest |W_ij| of each row (of each group of M with --nm N:M)"},
     .check = wmat__decomp_prune_check, .model_fn = wmat__decomp_prune_model},
    {.desc = {"wanda", DECOMP, WMAT_MSTAT_ACT_NORMS, 0, wmat__prune_keys, "sparse|nm",
              "Wanda: prune the smallest |W_ij| ||X_j|| of each row (group of M); calibrated (--calib)"},
     .check = wmat__decomp_prune_check, .model_fn = wmat__decomp_prune_model},
    {.desc = {"sparsegpt", DECOMP, WMAT_MSTAT_HESSIAN, 0, wmat__prune_keys, "sparse|nm",
              "SparseGPT: prune with OBS updates of the kept weights through the inverse Hessian; calibrated (--calib)"},
     .check = wmat__decomp_prune_check, .model_fn = wmat__decomp_prune_model},
    {.desc = {"monarch", DECOMP, 0, 0, wmat__monarch_keys, "monarch",
              "Monarch projection: one rank-K SVD per block slab (K = 1: the paper's class), Frobenius-optimal"},
     .fn = wmat__decomp_monarch, .check = NULL},
    {.desc = {"welore", DECOMP, 0, 0, wmat__welore_keys, "lowrank",
              "WeLore: SVD with per-matrix ranks from one global threshold on normalized singular values"},
     .fn = wmat__decomp_welore, .check = wmat__decomp_welore_check, .plan = wmat__decomp_welore_plan},
    {.desc = {"lqlora", DECOMP, 0, 0, wmat__lqlora_keys, "sum",
              "LQ-LoRA: W ~ Q + L1 L2, an RTN- or GPTQ-quantized part plus a rank-r correction by alternation; bpw: a budget solver"},
     .fn = wmat__decomp_lqlora, .check = wmat__decomp_lqlora_check, .plan = wmat__decomp_lqlora_plan,
     .fn_stats = wmat__decomp_lqlora_st, .wants_stats = wmat__decomp_lqlora_wants_stats},
    {.desc = {"slicegpt", DECOMP, WMAT_MSTAT_RESIDUAL, 0, wmat__slicegpt_keys, "dense (narrower)",
              "SliceGPT: fold the norms, rotate each residual point to its principal axes and slice the width; calibrated (--calib)"},
     .check = wmat__decomp_slicegpt_check, .model_fn = wmat__decomp_slicegpt_model},
    {.desc = {"dsformer", DECOMP, 0, 0, wmat__dsformer_keys, "dsf",
              "DSFormer: W ~ D S, D dense (rows x k), S with nnz entries per column: SVD init, top-s of V_k^T, D refit"},
     .fn = wmat__decomp_dsformer, .check = wmat__decomp_dsformer_check},
    {.desc = {NULL, NULL, 0, 0, NULL, NULL, NULL}, .fn = NULL, .check = NULL},
};
#undef DECOMP

#define OV_SYNTAX "PATTERN=METHOD[:KEY=VALUE]..."

const wmat_dmethod *wmat__dmethod_find(const char *name)
{
    for (const wmat_dmethod *d = wmat__dmethods; name && d->name; d++)
        if (!strcmp(d->name, name)) return d;
    return NULL;
}

int wmat__dmethod_keys(wmat_param_spec *dst, int cap)
{
    int n = 0;
    if (cap < 1) return wmat_set_error(WMAT_ERR_INVALID, "method keys: no room");
    for (const wmat_dmethod *d = wmat__dmethods; d->name; d++) {
        int rc = wmat__params_merge(dst, cap - 1, &n, d->schema);
        if (rc) return rc;
    }
    dst[n] = (wmat_param_spec){NULL, 0, NULL, 0, 0, NULL, NULL, NULL};
    return WMAT_OK;
}

wmat_decompose_params wmat_decompose_default_params(void)
{
    wmat_decompose_params p;
    memset(&p, 0, sizeof p);
    p.method = wmat__dmethods[0].name;
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

/* ---- parameters: a method's schema defaults, then the public fields that
 * differ from their defaults (rank, energy), then p->method_params, then the
 * fields of every override item matching the tensor, in order. Keys the
 * method does not read are passed over (they are for other methods), but
 * each must be a key of some method. */

static void struct_kv(const wmat_decompose_params *p, char *buf, size_t n)
{
    int k = 0;
    buf[0] = '\0';
    if (p->rank != 0 && (size_t)k < n) k += snprintf(buf + k, n - (size_t)k, "rank=%d,", p->rank);
    if (p->energy != 0 && (size_t)k < n) k += snprintf(buf + k, n - (size_t)k, "energy=%.9g,", (double)p->energy);
}

/* The methods' names, for messages. */
static void method_list(char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (const wmat_dmethod *d = wmat__dmethods; d->name && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? ", " : "", d->name);
}

/* ps (of method d's schema) from p's fields and method_params; with name,
 * also the fields of the override items matching it. */
static int resolve(wmat_pset *ps, const wmat_dmethod *d, const wmat_decompose_params *p, const char *name)
{
    int rc = wmat__pset_init(ps, d->schema);
    if (rc) return rc;
    char kv[128];
    struct_kv(p, kv, sizeof kv);
    if (!(rc = wmat__pset_parse_kv(ps, kv, ',', 1))) rc = wmat__pset_parse_kv(ps, p->method_params, ',', 1);
    wmat_override_item it;
    for (const char *s = p->overrides; !rc && name;) {
        const int more = wmat__override_next(&s, &it, OV_SYNTAX);
        if (more <= 0) {
            rc = more;
            break;
        }
        if (!wmat__override_is_keep(&it) && wmat__override_matches(&it, name)) rc = wmat__override_fields(ps, &it, 0, OV_SYNTAX);
    }
    if (rc) wmat__pset_free(ps);
    return rc;
}

int wmat__decompose_check(const wmat_decompose_params *p)
{
    char names[256];
    method_list(names, sizeof names);
    const wmat_dmethod *dm = wmat__dmethod_find(p->method);
    if (!dm)
        return wmat_set_error(WMAT_ERR_INVALID, "decompose: unknown method '%s' (methods: %s)", p->method ? p->method : "",
                              names);
    if (dm->stats && !dm->model_fn)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "decompose: method '%s' needs statistics, which decompose does not collect",
                              dm->name);
    if (p->dtype != WMAT_F32 && p->dtype != WMAT_F16 && p->dtype != WMAT_BF16)
        return wmat_set_error(WMAT_ERR_INVALID, "decompose: factors are f32, f16 or bf16");
    /* every key given must be a key of some method */
    wmat_param_spec keys[64];
    int rc = wmat__dmethod_keys(keys, 64);
    if (rc) return rc;
    wmat_pset all;
    if ((rc = wmat__pset_init(&all, keys))) return rc;
    char kv[128];
    struct_kv(p, kv, sizeof kv);
    if (!(rc = wmat__pset_parse_kv(&all, kv, ',', 0))) rc = wmat__pset_parse_kv(&all, p->method_params, ',', 0);
    wmat__pset_free(&all);
    if (rc) return rc;
    wmat_pset ps;
    if ((rc = resolve(&ps, dm, p, NULL))) return rc;
    if (dm->check) rc = dm->check(&ps, 1);
    wmat__pset_free(&ps);
    if (rc) return rc;
    wmat_override_item it;
    for (const char *s = p->overrides; (rc = wmat__override_next(&s, &it, OV_SYNTAX)) > 0;) {
        if (wmat__override_is_keep(&it)) continue;
        const wmat_dmethod *om = wmat__dmethod_find(it.method);
        if (!om)
            return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': unknown method '%s' (methods: %s, or keep)",
                                  it.pattern, it.method, names);
        if ((rc = wmat__pset_init(&ps, om->schema))) return rc;
        rc = wmat__override_fields(&ps, &it, 1, OV_SYNTAX);
        wmat__pset_free(&ps);
        if (rc) return rc;
        if (om->stats || om->model_fn)
            return wmat_set_error(WMAT_ERR_UNSUPPORTED, "override for '%s': method '%s' runs over the whole model", it.pattern,
                                  om->name);
    }
    if (rc) return rc;
    /* a method over the whole model: its data, and what it does not do */
    if (dm->model_fn && p->overrides && p->overrides[0])
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "decompose: method '%s' runs over the whole model: no per-tensor overrides",
                              dm->name);
    if (dm->model_fn && p->classifier)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "decompose: method '%s' covers the linear layers, not the classifier",
                              dm->name);
    return WMAT_OK;
}

/* The method for tensor `name`: p's, or the last matching override's;
 * NULL when an override keeps it. */
static const wmat_dmethod *tensor_method(const wmat_decompose_params *p, const char *name)
{
    const wmat_dmethod *d = wmat__dmethod_find(p->method);
    wmat_override_item it;
    for (const char *s = p->overrides; wmat__override_next(&s, &it, OV_SYNTAX) > 0;) {
        if (!wmat__override_matches(&it, name)) continue;
        d = wmat__override_is_keep(&it) ? NULL : wmat__dmethod_find(it.method);
    }
    return d;
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

/* Calibration for methods with fn_stats: the streams at the current block
 * and the statistics of the stage last collected. */
typedef struct {
    int on;
    const wmat_config *c;
    wmat_runtime *rt;
    wmat__calib_states cs;
    wmat_qstats st;
    int have;  /* the layer * WMAT_CSLOT_COUNT + slot st holds (-1: none) */
    void **objs; /* results held aside, per selected tensor */
} calib_run;

static int calib_open(calib_run *cr, wmat_model *m, const wmat_decompose_params *p, int n)
{
    const wmat_config *c = &m->cfg;
    cr->c = c;
    cr->have = -1;
    if (!(cr->objs = wmat__calloc((size_t)(n ? n : 1), sizeof *cr->objs)))
        return wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
    if (!p->calib || !p->n_calib)
        return wmat_set_error(WMAT_ERR_INVALID, "decompose: %s: the quantizer needs calibration data (--calib FILE)",
                              p->method);
    int ctx = p->calib_ctx > 0 ? p->calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
    if (ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "calibration window %d is longer than the model's context (%d)", ctx, c->seq_len);
    if (p->n_calib < (size_t)ctx) ctx = (int)p->n_calib;
    const int n_windows = (int)(p->n_calib / (size_t)ctx);
    for (size_t i = 0; i < (size_t)n_windows * (size_t)ctx; i++)
        if (p->calib[i] < 0 || p->calib[i] >= c->vocab_size)
            return wmat_set_error(WMAT_ERR_INVALID, "calibration token %d at index %zu is outside the vocabulary (%d)",
                                  p->calib[i], i, c->vocab_size);
    wmat_context wc = wmat_context_default();
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    rp.ctx = &wc;
    int rc = wmat_runtime_create(&cr->rt, m, &rp);
    if (!rc) rc = wmat__calib_states_init(&cr->cs, cr->rt, p->calib, n_windows, ctx, c->dim);
    return rc;
}

/* The statistics of the input of linear lk (layer * WMAT_LIN_COUNT + kind;
 * the classifier after the last layer), the streams moved up to its block. */
static int calib_stage(calib_run *cr, int lk, const wmat_qstats **out)
{
    const wmat_config *c = cr->c;
    const int l = lk / WMAT_LIN_COUNT, L = c->n_layers;
    const int s = l >= L ? WMAT_CSLOT_CLS : wmat__calib_slot((wmat_linear_kind)(lk % WMAT_LIN_COUNT));
    int rc = WMAT_OK;
    while (!rc && cr->cs.layer < l) rc = wmat__calib_advance(&cr->cs);
    if (!rc && cr->have != l * WMAT_CSLOT_COUNT + s) {
        wmat__qstats_free(&cr->st);
        cr->have = -1;
        const int64_t nin = s == WMAT_CSLOT_DOWN ? c->hidden_dim : s == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
        wmat_qstats *slots[WMAT_CSLOT_COUNT] = {0};
        slots[s] = &cr->st;
        if (!(rc = wmat__qstats_init(&cr->st, nin, 1)) && !(rc = wmat__calib_collect(&cr->cs, L, slots, 1u << s, 0)))
            cr->have = l * WMAT_CSLOT_COUNT + s;
    }
    *out = rc ? NULL : &cr->st;
    return rc;
}

static void calib_close(calib_run *cr)
{
    wmat__qstats_free(&cr->st);
    wmat__calib_states_free(&cr->cs);
    wmat_runtime_free(cr->rt);
    wmat__free(cr->objs);
    memset(cr, 0, sizeof *cr);
}

int wmat_decompose_model(wmat_model *m, const wmat_decompose_params *p, wmat_decompose_report *rep)
{
    wmat_decompose_params def = wmat_decompose_default_params();
    if (!p) p = &def;
    if (rep) memset(rep, 0, sizeof *rep);
    const char *src = m->path ? m->path : "model";
    int rc = wmat__decompose_check(p);
    if (rc) return rc;
    const wmat_dmethod *dm = wmat__dmethod_find(p->method);
    if (dm->model_fn) {
        /* (the data is the model's business: checked here, not with the settings) */
        if (dm->stats && (!p->calib || !p->n_calib))
            return wmat_set_error(WMAT_ERR_INVALID, "decompose: method '%s' needs calibration data (--calib FILE)", dm->name);
        wmat_pset mps;
        if ((rc = resolve(&mps, dm, p, NULL))) return rc;
        rc = dm->model_fn(m, dm->name, &mps, p, rep);
        wmat__pset_free(&mps);
        return rc;
    }
    const wmat_config *c = &m->cfg;
    const unsigned targets = p->targets ? p->targets : (1u << WMAT_LIN_COUNT) - 1;
    const int n_slots = c->n_layers * WMAT_LIN_COUNT + 1;
    wmat_tensor **sel = wmat__calloc((size_t)n_slots, sizeof *sel);
    const wmat_dmethod **meth = wmat__calloc((size_t)n_slots, sizeof *meth);
    wmat_pset *ps = wmat__calloc((size_t)n_slots, sizeof *ps);
    int *lk = wmat__calloc((size_t)n_slots, sizeof *lk); /* layer * WMAT_LIN_COUNT + kind (the classifier: L * count) */
    int n = 0, n_ps = 0;
    if (!sel || !meth || !ps || !lk) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
        goto done;
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            if (targets & (1u << k)) lk[n] = l * WMAT_LIN_COUNT + k, sel[n++] = wmat_model_linear(m, l, (wmat_linear_kind)k);
    if (p->classifier && !c->tied_embeddings) lk[n] = c->n_layers * WMAT_LIN_COUNT, sel[n++] = wmat_model_classifier(m);
    /* every tensor's method and values, checked before any matrix changes */
    for (int i = 0; i < n && !rc; i++) {
        if (sel[i]->dtype != WMAT_F32 || (sel[i]->flags & WMAT_TF_HF_ROPE)) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "%s: %s is %s, not a materialized fp32 matrix (load with materialize_f32)",
                                src, sel[i]->name, wmat_tensor_kind(sel[i]) ? wmat_tensor_kind(sel[i]) : "?");
            break;
        }
        if (!(meth[i] = tensor_method(p, sel[i]->name))) continue; /* kept */
        if ((rc = resolve(&ps[i], meth[i], p, sel[i]->name))) break;
        n_ps = i + 1;
        if (meth[i]->check && (rc = meth[i]->check(&ps[i], 0)))
            rc = wmat_set_error(rc, "%s: %s: %s", src, sel[i]->name, wmat_last_error());
    }
    /* methods with a global plan see all their tensors at once */
    int *keep = rc ? NULL : wmat__calloc((size_t)(n ? n : 1), sizeof *keep);
    wmat_tensor **pt = rc ? NULL : wmat__calloc((size_t)(n ? n : 1), sizeof *pt);
    wmat_pset **pp = rc ? NULL : wmat__calloc((size_t)(n ? n : 1), sizeof *pp);
    int *pk = rc ? NULL : wmat__calloc((size_t)(n ? n : 1), sizeof *pk);
    if (!rc && (!keep || !pt || !pp || !pk)) rc = wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
    for (const wmat_dmethod *d = wmat__dmethods; !rc && d->name; d++) {
        if (!d->plan) continue;
        int np = 0;
        for (int i = 0; i < n; i++)
            if (meth[i] == d) pt[np] = sel[i], pp[np] = &ps[i], pk[np++] = 0;
        if (np && (rc = d->plan(pt, pp, np, pk, p->dtype))) {
            rc = wmat_set_error(rc, "%s: %s: %s", src, d->name, wmat_last_error());
            break;
        }
        for (int i = 0, j = 0; i < n; i++)
            if (meth[i] == d) keep[i] = pk[j++];
    }
    wmat__free(pt);
    wmat__free(pp);
    wmat__free(pk);
    if (!rc && rep) {
        rep->tensors = wmat__calloc((size_t)(n ? n : 1), sizeof *rep->tensors);
        if (!rep->tensors) rc = wmat_set_error(WMAT_ERR_NOMEM, "decompose: out of memory");
    }
    const double t0 = now();
    /* tensors whose method runs on statistics of their input: every result
     * is held aside and the working model runs it as dense fp32 until all
     * are done (the calibration runtime multiplies by the weights as
     * created), stage by stage in layer order */
    calib_run cr;
    memset(&cr, 0, sizeof cr);
    for (int i = 0; i < n && !rc; i++)
        if (meth[i] && !keep[i] && meth[i]->fn_stats && meth[i]->wants_stats(&ps[i])) cr.on = 1;
    if (!rc && cr.on) rc = calib_open(&cr, m, p, n);
    for (int i = 0; i < n && !rc; i++) {
        wmat_tensor *t = sel[i];
        if (!meth[i] || keep[i]) continue;
        if (p->progress && p->progress(p->progress_user, t->name, (uint64_t)i, (uint64_t)n)) {
            rc = wmat_set_error(WMAT_ERR_CANCELLED, "decompose: cancelled at %s", t->name);
            break;
        }
        const double ts = now();
        wmat_tensor out;
        int64_t r = 0;
        double err = 0;
        const wmat_qstats *st = NULL;
        if (cr.on && meth[i]->fn_stats && meth[i]->wants_stats(&ps[i]) && !(rc = calib_stage(&cr, lk[i], &st)))
            rc = meth[i]->fn_stats(t->data, t->shape[0], t->shape[1], st, &ps[i], p->dtype, &out, &r, &err);
        else if (!rc)
            rc = meth[i]->fn(t->data, t->shape[0], t->shape[1], &ps[i], p->dtype, &out, &r, &err);
        if (rc) {
            rc = wmat_set_error(rc, "%s: %s: %s", src, t->name, wmat_last_error());
            break;
        }
        const uint64_t before = (uint64_t)(t->shape[0] * t->shape[1]);
        if (cr.on) {
            /* held aside; the working model runs its values from now on */
            cr.objs[i] = out.data;
            if ((rc = wmat__tensor_make_writable(t))) break;
            wmat__wkind_of(&out)->dequant_rows(&out, 0, t->shape[0], t->data);
        } else {
            wmat__tensor_set_obj(t, out.data);
        }
        if (rep) {
            wmat_decompose_tensor *d = &rep->tensors[rep->n_tensors++];
            snprintf(d->name, sizeof d->name, "%s", t->name);
            snprintf(d->method, sizeof d->method, "%s", meth[i]->name);
            d->rows = t->shape[0];
            d->cols = t->shape[1];
            d->rank = r;
            d->rel_error = err;
            d->bits_per_weight = wmat_tensor_bits_per_weight(&out);
            d->seconds = now() - ts;
            rep->params_before += before;
            /* the stored factors' element count (every method's factors are of p->dtype) */
            rep->params_after += wmat__wkind_of(&out)->nbytes(&out) / wmat_dtype_bytes(p->dtype, 1);
        }
    }
    for (int i = 0; cr.on && i < n; i++) /* all done (or failed): the results replace the weights */
        if (cr.objs[i]) {
            if (!rc) wmat__tensor_set_obj(sel[i], cr.objs[i]);
            else ((const wmat_wobj *)cr.objs[i])->kind->free(cr.objs[i]);
            cr.objs[i] = NULL;
        }
    calib_close(&cr);
    if (!rc && p->progress) p->progress(p->progress_user, "decompose", (uint64_t)n, (uint64_t)n);
    if (rep) rep->seconds = now() - t0;
    wmat__free(keep);
done:
    for (int i = 0; i < n_ps; i++)
        if (meth[i]) wmat__pset_free(&ps[i]);
    wmat__free(ps);
    wmat__free(meth);
    wmat__free(sel);
    wmat__free(lk);
    if (rc && rep) wmat_decompose_report_free(rep);
    return rc;
}
