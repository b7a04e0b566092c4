/* The method registry and the model-level driver: which tensors, which
 * method and grid for each (overrides by name pattern, --keep), sequential
 * calibration (by default GPTQ's "true sequential": within each block q/k/v,
 * then o, then gate/up, then down are calibrated on a model whose earlier
 * stages and blocks are already quantized; or block by block), the
 * fake-quant write-back and the per-tensor report. */
#include "methods.h"

#include "cbq.h"
#include "core/shapes.h"
#include "io/model_internal.h"
#include "qmodel.h"
#include "wop/wop.h"

#include <math.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>

/* The keys, each written once; a method's schema lists those it reads. */
#define QP_BITS {"bits", WMAT_PARAM_INT, "4", 2, 8, NULL, "bits per weight", NULL}
#define QP_GROUP                                                                                                      \
    {"group", WMAT_PARAM_INT, "0", 0, 1 << 20, NULL,                                                                  \
     "groups of N consecutive inputs per row (outputs per column with per_ic); 0: the whole axis", NULL}
#define QP_SYM                                                                                                        \
    {"sym", WMAT_PARAM_BOOL, "false", 0, 0, NULL,                                                                     \
     "symmetric grid (zero point 2^(bits-1)); asym: min-max with a zero point", "asym"}
#define QP_PER_IC                                                                                                     \
    {"per_ic", WMAT_PARAM_BOOL, "false", 0, 0, NULL,                                                                  \
     "one scale per input channel (groups of N outputs with group); per_oc: one per output channel", "per_oc"}
#define QP_CLIP                                                                                                       \
    {"clip", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "search shrink factors of each group's range (lowest error)", NULL}
#define QP_ACT_ORDER {"act_order", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "quantize columns by decreasing H_jj", NULL}
#define QP_STATIC_GROUPS                                                                                              \
    {"static_groups", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "group scales from the original W", NULL}
#define QP_DAMP                                                                                                       \
    {"damp", WMAT_PARAM_FLOAT, "0.01", 0, 100, NULL,                                                                  \
     "damping, times mean(diag H), raised x10 while Cholesky fails; 0: 0.01", NULL}
#define QP_BLOCK {"block", WMAT_PARAM_INT, "128", 1, 1 << 20, NULL, "lazy-update block of columns", NULL}
#define QP_FACTOR                                                                                                     \
    {"factor", WMAT_PARAM_ENUM, "double", 0, 0, "double|float",                                                       \
     "GPTQ: precision of H's Cholesky factorization and triangular inverse (float: the reference's, faster)", NULL}
#define QP_SALIENT                                                                                                    \
    {"salient", WMAT_PARAM_FLOAT, "0.1", 0, 1, NULL,                                                                  \
     "PB-LLM: fraction of the weights kept on an 8-bit row grid (the rest binarized)", NULL}
#define QP_METRIC                                                                                                     \
    {"metric", WMAT_PARAM_ENUM, "hessian", 0, 0, "magnitude|hessian",                                                 \
     "PB-LLM: salient weights by |W| or by W^2 / U_jj^2 (U: GPTQ's Cholesky factor of H^-1)", NULL}
#define QP_MU_ALPHA                                                                                                   \
    {"mu_alpha", WMAT_PARAM_ENUM, "binarized", 0, 0, "binarized|row",                                                 \
     "PB-LLM: binary mean and scale over the binarized weights (paper) or the whole row with salient as 0 (its code)", \
     NULL}
#define QP_END {NULL, 0, NULL, 0, 0, NULL, NULL, NULL}
#define QP_BCQ                                                                                                        \
    {"rounds", WMAT_PARAM_INT, "20", 0, 1000, NULL, "BCQ: alternating refits (alphas, then signs) per group", NULL},   \
    {"feedback", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "BCQ: inside GPTQ's error-feedback loop; no_feedback: each group fitted once on diag(H)", "no_feedback"},                \
    {"apot", WMAT_PARAM_BOOL, "false", 0, 0, NULL, "BCQ: alphas as sums of three powers of two (shift-adds)", NULL}, \
    {"refit", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "BCQ: alphas refitted on the full H once the signs are fixed", "no_refit"}

#define QP_GWQ                                                                                                        \
    {"outliers", WMAT_PARAM_FLOAT, "0.01", 0, 0.5, NULL, "GWQ: fraction of each matrix kept in fp16 (sparse)", NULL},   \
    {"score", WMAT_PARAM_ENUM, "grad", 0, 0, "grad|grad_w|grad2|hessian|magnitude|random|fisher",                     \
     "GWQ: the kept weights by |dL/dW|, |dL/dW * W|, (dL/dW)^2, W^2 H_jj, |W|, a seeded random draw, or the "       \
     "per-window mean of (dL/dW)^2 (gradients then hold it: wmat_model_weight_fisher)", NULL},                        \
    {"dense", WMAT_PARAM_ENUM, "gptq", 0, 0, "gptq|rtn", "GWQ: the rest by GPTQ (kept weights fixed) or RTN", NULL}
#define QP_FINEQUANT                                                                                                  \
    {"tau", WMAT_PARAM_FLOAT, "1.5", 1, 1000, NULL,                                                                   \
     "FineQuant-style: coarsest group whose relative error <= tau x the finest group's", NULL},                       \
    {"min_group", WMAT_PARAM_INT, "64", 32, 1 << 20, NULL, "FineQuant-style: finest group tried", NULL}

static const wmat_param_spec k_rtn_keys[] = {QP_BITS, QP_GROUP, QP_SYM, QP_PER_IC, QP_CLIP, QP_END};
static const wmat_param_spec k_gptq_keys[] = {QP_BITS, QP_GROUP,         QP_SYM,  QP_PER_IC, QP_CLIP,
                                              QP_ACT_ORDER, QP_STATIC_GROUPS, QP_DAMP, QP_BLOCK, QP_FACTOR, QP_END};
static const wmat_param_spec k_adadim_rtn_keys[] = {QP_BITS, QP_GROUP, QP_SYM, QP_CLIP, QP_END};
static const wmat_param_spec k_pbllm_keys[] = {QP_SALIENT, QP_METRIC, QP_MU_ALPHA, QP_DAMP, QP_BLOCK, QP_END};
static const wmat_param_spec k_adadim_gptq_keys[] = {QP_BITS,          QP_GROUP, QP_SYM,   QP_CLIP, QP_ACT_ORDER,
                                                     QP_STATIC_GROUPS, QP_DAMP,  QP_BLOCK, QP_FACTOR, QP_END};
#define QP_DGQ                                                                                                        \
    {"smooth", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "DGQ: percentile-clipping smoothing of the top 0.5% input channels", "no_smooth"}, \
    {"search", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "DGQ: the fine (20) and coarse (80) ratio searches; no_search: min-max", "no_search"}, \
    {"act", WMAT_PARAM_ENUM, "static", 0, 0, "static|dynamic", "DGQ: int8 activation scale per tensor from calibration, or per token", NULL}
static const wmat_param_spec k_dgq_keys[] = {QP_GROUP, QP_DGQ, QP_END};
static const wmat_param_spec k_bcq_keys[] = {QP_BITS, QP_GROUP, QP_BCQ, QP_DAMP, QP_BLOCK, QP_END};
static const wmat_param_spec k_bitstack_keys[] = {
    {"stack_rank", WMAT_PARAM_INT, "1", 1, 64, NULL, "BitStack: rank k of each block's magnitude (scale it to width: 1 or 2 on small models)", NULL},
    {"stack_blocks", WMAT_PARAM_INT, "16", 1, 256, NULL, "BitStack: blocks (sign matrix + rank-k magnitude) per matrix", NULL},
    {"order_windows", WMAT_PARAM_INT, "8", 0, 1 << 20, NULL, "BitStack: calibration windows (the last ones) scoring the measured block order; 0: level order unmeasured", NULL},
    QP_END};
static const wmat_param_spec k_gwq_keys[] = {QP_BITS, QP_GROUP, QP_SYM, QP_CLIP, QP_GWQ, QP_DAMP, QP_BLOCK, QP_END};
static const wmat_param_spec k_finequant_keys[] = {QP_BITS, QP_FINEQUANT, QP_END};
static const wmat_param_spec k_cbq_keys[] = {
    QP_BITS, QP_GROUP, QP_SYM,
    {"cfp", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "CBQ: coarse-to-fine truncation of weight outliers (IQR rule, then the best split)", "no_cfp"},
    {"cfp_lambda", WMAT_PARAM_FLOAT, "1.5", 0, 100, NULL, "CBQ: coarse outlier threshold Q3 + lambda IQR of |W|", NULL},
    {"cbq_window", WMAT_PARAM_INT, "2", 1, 64, NULL, "CBQ: blocks reconstructed jointly; windows overlap by one block (1: block-wise)", NULL},
    {"cbq_iters", WMAT_PARAM_INT, "100", 0, 1000000, NULL, "CBQ: Adam steps per window", NULL},
    {"cbq_rank", WMAT_PARAM_INT, "4", 1, 1024, NULL, "CBQ: rank of the LoRA-Rounding matrices A1 A2", NULL},
    {"cbq_batch", WMAT_PARAM_INT, "1", 1, 1024, NULL, "CBQ: calibration windows per step", NULL},
    {"cbq_windows", WMAT_PARAM_INT, "0", 0, 1 << 20, NULL, "CBQ: calibration windows the reconstruction uses (0: all)", NULL},
    {"cbq_lr", WMAT_PARAM_FLOAT, "0.01", 0, 10, NULL, "CBQ: Adam step of A1, A2", NULL},
    {"cbq_scale_lr", WMAT_PARAM_FLOAT, "0.001", 0, 10, NULL, "CBQ: Adam step of the log step sizes (0: scales fixed)", NULL},
    {"cbq_kl", WMAT_PARAM_FLOAT, "1", 0, 1000, NULL, "CBQ: weight of the KL divergence of softmax over the hidden dimension", NULL},
    {"cbq_reg", WMAT_PARAM_FLOAT, "0.01", 0, 1000, NULL, "CBQ: weight of the rounding regularizer mean(1 - |2h-1|^beta)", NULL},
    {"cbq_homologous", WMAT_PARAM_FLOAT, "0", 0, 1000, NULL, "CBQ: weight of the MSE of the window fed the fp input (homologous term; 0: off)", NULL},
    {"cbq_ste", WMAT_PARAM_BOOL, "true", 0, 0, NULL, "CBQ: each step's forward on the hard rounding, gradients straight through the soft one (false: AdaRound's soft forward)", "cbq_soft"},
    {"cbq_seed", WMAT_PARAM_INT, "1", 0, 1 << 30, NULL, "CBQ: seed of A2 and the window order", NULL},
    QP_END};

#define QUANT WMAT_FAMILY_QUANTIZATION
const wmat_qmethod wmat__qmethods[] = {
    {.desc = {"rtn", QUANT, 0, 0, k_rtn_keys, "qpacked", "round to nearest on a uniform grid (optional clipping search)"},
     .fn = wmat__quant_rtn},
    {.desc = {"imatrix", QUANT, WMAT_QSTAT_ACT_NORMS, 0, k_rtn_keys, "qpacked",
              "RTN with scales minimizing sum_j mean(x_j^2) (w_j - q_j)^2"},
     .fn = wmat__quant_imatrix},
    {.desc = {"gptq", QUANT, WMAT_QSTAT_HESSIAN, 0, k_gptq_keys, "qpacked",
              "GPTQ: column-wise error feedback through the inverse Hessian"},
     .fn = wmat__quant_gptq},
    {.desc = {"adadim-rtn", QUANT, WMAT_QSTAT_HESSIAN, WMAT_QM_OWN_AXIS, k_adadim_rtn_keys, "qpacked",
              "AdaDim over RTN: per-IC or per-OC, whichever has less output error"},
     .fn = wmat__quant_adadim_rtn},
    {.desc = {"adadim-gptq", QUANT, WMAT_QSTAT_HESSIAN, WMAT_QM_OWN_AXIS, k_adadim_gptq_keys, "qpacked",
              "AdaDim over GPTQ"},
     .fn = wmat__quant_adadim_gptq},
    {.desc = {"pbllm", QUANT, WMAT_QSTAT_HESSIAN, 0, k_pbllm_keys, "pbllm", "PB-LLM: binarized rows + an 8-bit salient fraction, in GPTQ's error feedback"}, .fn = wmat__quant_pbllm},
    {.desc = {"bcq", QUANT, WMAT_QSTAT_HESSIAN, 0, k_bcq_keys, "bcq", "ShiftAddLLM binary coding sum_k alpha_k b_k, 2..4 planes, alphas per input group, GPTQ feedback"}, .fn = wmat__quant_bcq},
    {.desc = {"dgq", QUANT, WMAT_QSTAT_HESSIAN, 0, k_dgq_keys, "dgq", "DGQ A8W4: 4-bit codes, int8 group scales under an fp16 row scale, smoothed int8 activations"}, .fn = wmat__quant_dgq},
    {.desc = {"bitstack", QUANT, WMAT_QSTAT_ACT_NORMS, 0, k_bitstack_keys, "bitstack", "BitStack: stacked sign x rank-k blocks of the activation-scaled residual, one stored stack loaded at any budget"}, .fn = wmat__quant_bitstack, .finish = wmat__bitstack_finish},
    {.desc = {"gwq", QUANT, WMAT_QSTAT_HESSIAN | WMAT_QSTAT_GRADIENTS, 0, k_gwq_keys, "sum", "GWQ: top fraction by |dL/dW| in fp16 (sparse), the rest GPTQ or RTN"}, .fn = wmat__quant_gwq},
    {.desc = {"finequant", QUANT, 0, 0, k_finequant_keys, "qpacked", "FineQuant-style: symmetric grid, group per matrix from n halved while the error spikes"}, .fn = wmat__quant_finequant},
    {.desc = {"cbq", QUANT, 0, WMAT_QM_RECONSTRUCT, k_cbq_keys, "qpacked", "CBQ: CFP + RTN, then cross-block reconstruction with LoRA-Rounding and learned scales (needs --calib)"}, .fn = wmat__quant_cbq},
    {.desc = {NULL, NULL, 0, 0, NULL, NULL, NULL}, .fn = NULL},
};
#undef QUANT

const wmat_qmethod *wmat__qmethod_find(const char *name)
{
    for (const wmat_qmethod *m = wmat__qmethods; name && m->name; m++)
        if (!strcmp(m->name, name)) return m;
    return NULL;
}

const wmat_qmethod *wmat__qmethod_data_free(void)
{
    for (const wmat_qmethod *m = wmat__qmethods; m->name; m++)
        if (!m->stats) return m;
    return NULL;
}

int wmat__qmethod_needs_calib(const wmat_qmethod *m)
{
    return (m->stats & (WMAT_QSTAT_HESSIAN | WMAT_QSTAT_ACT_NORMS)) != 0;
}

int wmat__qmethod_keys(wmat_param_spec *dst, int cap)
{
    int n = 0;
    if (cap < 1) return wmat_set_error(WMAT_ERR_INVALID, "method keys: no room");
    for (const wmat_qmethod *m = wmat__qmethods; m->name; m++) {
        int rc = wmat__params_merge(dst, cap - 1, &n, m->schema);
        if (rc) return rc;
    }
    dst[n] = (wmat_param_spec)QP_END;
    return WMAT_OK;
}

void wmat__qparams_from(const wmat_pset *ps, wmat_qparams *qp)
{
    *qp = wmat__qparams_default();
    if (wmat__pset_has(ps, "bits")) qp->bits = (int)wmat__pset_int(ps, "bits");
    if (wmat__pset_has(ps, "group")) qp->group = (int)wmat__pset_int(ps, "group");
    if (wmat__pset_has(ps, "sym")) qp->sym = (int)wmat__pset_int(ps, "sym");
    if (wmat__pset_has(ps, "per_ic")) qp->axis = wmat__pset_int(ps, "per_ic") ? WMAT_QAXIS_OUT : WMAT_QAXIS_IN;
    if (wmat__pset_has(ps, "clip")) qp->clip = (int)wmat__pset_int(ps, "clip");
    if (wmat__pset_has(ps, "act_order")) qp->act_order = (int)wmat__pset_int(ps, "act_order");
    if (wmat__pset_has(ps, "static_groups")) qp->static_groups = (int)wmat__pset_int(ps, "static_groups");
    /* 0 keeps GPTQ's 0.01, in float as the public field has always had it */
    if (wmat__pset_has(ps, "damp")) qp->damp = wmat__pset_float(ps, "damp") > 0 ? (float)wmat__pset_float(ps, "damp") : 0.01f;
    if (wmat__pset_has(ps, "block")) qp->block = (int)wmat__pset_int(ps, "block");
    if (wmat__pset_has(ps, "factor")) qp->fact_prec = wmat__pset_int(ps, "factor") == 1 ? 2 : 1;
    if (wmat__pset_has(ps, "salient")) qp->salient = wmat__pset_float(ps, "salient");
    if (wmat__pset_has(ps, "metric")) qp->salient_hessian = wmat__pset_int(ps, "metric") == 1;
    if (wmat__pset_has(ps, "mu_alpha")) qp->mu_alpha_row = wmat__pset_int(ps, "mu_alpha") == 1;
    if (wmat__pset_has(ps, "rounds")) qp->rounds = (int)wmat__pset_int(ps, "rounds");
    if (wmat__pset_has(ps, "feedback")) qp->feedback = (int)wmat__pset_int(ps, "feedback");
    if (wmat__pset_has(ps, "apot")) qp->apot = (int)wmat__pset_int(ps, "apot");
    if (wmat__pset_has(ps, "refit")) qp->refit = (int)wmat__pset_int(ps, "refit");
    if (wmat__pset_has(ps, "smooth")) qp->dgq_smooth = (int)wmat__pset_int(ps, "smooth");
    if (wmat__pset_has(ps, "search")) qp->dgq_search = (int)wmat__pset_int(ps, "search");
    if (wmat__pset_has(ps, "act")) qp->dgq_dynamic = wmat__pset_int(ps, "act") == 1;
    if (wmat__pset_has(ps, "stack_rank")) qp->stack_rank = (int)wmat__pset_int(ps, "stack_rank");
    if (wmat__pset_has(ps, "stack_blocks")) qp->stack_blocks = (int)wmat__pset_int(ps, "stack_blocks");
    if (wmat__pset_has(ps, "order_windows")) qp->order_windows = (int)wmat__pset_int(ps, "order_windows");
    if (wmat__pset_has(ps, "outliers")) qp->outliers = wmat__pset_float(ps, "outliers");
    if (wmat__pset_has(ps, "score")) qp->score = (int)wmat__pset_int(ps, "score");
    if (wmat__pset_has(ps, "dense")) qp->dense_gptq = wmat__pset_int(ps, "dense") == 0;
    if (wmat__pset_has(ps, "tau")) qp->tau = wmat__pset_float(ps, "tau");
    if (wmat__pset_has(ps, "min_group")) qp->min_group = (int)wmat__pset_int(ps, "min_group");
    wmat__cbq_params_from(ps, qp);
}

const char *wmat_quantize_method_name(int i, int *needs_calibration)
{
    for (const wmat_qmethod *m = wmat__qmethods; m->name && i >= 0; m++) {
        if (i--) continue;
        if (needs_calibration) *needs_calibration = wmat__qmethod_needs_calib(m);
        return m->name;
    }
    return NULL;
}

wmat_quantize_params wmat_quantize_default_params(void)
{
    wmat_quantize_params p;
    memset(&p, 0, sizeof p);
    p.method = wmat__qmethods[0].name;
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

typedef struct {
    wmat_tensor *t;
    int layer; /* n_layers for the classifier, -1 for the embedding */
    int slot;  /* WMAT_CSLOT_*, -1 for the embedding */
    const wmat_qmethod *method;
    wmat_qparams qp;
    int keep;
    const char *note;
    wmat_dtype gdt; /* wmat_quantize_params.ggml: the tensor's ggml type (0: none) */
    int role;       /* wmat_linear_kind, or WMAT_GGML_TOKEN_EMBD / _OUTPUT */
} qjob;

/* ---- parameters: a method's schema defaults, then the public fields of
 * wmat_quantize_params that differ from their defaults, then
 * p->method_params, then the fields of every --override item matching the
 * tensor, in order. Keys the method does not read are passed over (they are
 * for other methods), but each must be a key of some method. */

/* The public fields as "key=value," text (only where they differ from
 * wmat_quantize_default_params: the defaults are the schema's). */
static void struct_kv(const wmat_quantize_params *p, char *buf, size_t n)
{
    const wmat_quantize_params d = wmat_quantize_default_params();
    int k = 0;
    buf[0] = '\0';
#define ADD(...)                                                                                                       \
    if ((size_t)k < n) k += snprintf(buf + k, n - (size_t)k, __VA_ARGS__)
    if (p->bits != d.bits) ADD("bits=%d,", p->bits);
    if (p->group != d.group) ADD("group=%d,", p->group);
    if (p->sym) ADD("sym=true,");
    if (p->per_ic) ADD("per_ic=true,");
    if (p->act_order) ADD("act_order=true,");
    if (p->static_groups) ADD("static_groups=true,");
    if (p->clip) ADD("clip=true,");
    if (p->damp > 0 && p->damp != d.damp) ADD("damp=%.9g,", (double)p->damp);
#undef ADD
}

#define OV_SYNTAX "PATTERN=METHOD[:BITS[:GROUP|oc|ic]][:KEY=VALUE]..."

/* The item's fields onto ps: positional BITS then GROUP (a number, or oc /
 * ic for one scale per output / input channel), "key=value", or a bool's
 * bare key. */
static int ov_fields(wmat_pset *ps, wmat_override_item *it, int strict)
{
    int npos = 0, rc;
    for (char *f = it->fields; f;) {
        char *next = strchr(f, ':');
        if (next) *next++ = '\0';
        char *eq = strchr(f, '=');
        const int positional = !eq && (f[0] == '-' || (f[0] >= '0' && f[0] <= '9') || !strcmp(f, "oc") || !strcmp(f, "ic"));
        if (eq) {
            *eq = '\0';
            rc = wmat__override_set(ps, it, f, eq + 1, strict);
            *eq = '=';
        } else if (!positional) {
            rc = wmat__override_set(ps, it, f, NULL, strict);
        } else if (npos >= 2) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "override for '%s': '%s' after BITS and GROUP is not KEY=VALUE (" OV_SYNTAX ")",
                                it->pattern, f);
        } else if (npos++ == 0) {
            rc = wmat__override_set(ps, it, "bits", f, strict);
        } else if (!strcmp(f, "oc") || !strcmp(f, "ic")) {
            /* a method that picks the axis itself has no per_ic to set */
            rc = wmat__override_set(ps, it, "group", "0", strict);
            if (!rc && wmat__pset_has(ps, "per_ic")) rc = wmat__override_set(ps, it, "per_ic", f[0] == 'i' ? "true" : "false", 0);
        } else {
            rc = wmat__override_set(ps, it, "group", f, strict);
        }
        if (next) next[-1] = ':';
        if (rc) return rc;
        f = next;
    }
    return WMAT_OK;
}

/* The methods' names, for messages. */
static void method_list(char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = '\0';
    for (const wmat_qmethod *m = wmat__qmethods; m->name && k < n; m++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", k ? ", " : "", m->name);
}

static const wmat_qmethod *find_quant(const char *name)
{
    const wmat_qmethod *m = wmat__qmethod_find(name);
    return m;
}

int wmat__quantize_check(const wmat_quantize_params *p)
{
    char names[256];
    method_list(names, sizeof names);
    int rc = wmat__calib_dtype_check(p->calib_dtype);
    if (rc) return rc;
    const wmat_qmethod *m = find_quant(p->method);
    if (!m)
        return wmat_set_error(WMAT_ERR_INVALID, "unknown quantization method '%s' (methods: %s)",
                              p->method ? p->method : "", names);
    /* the global keys against all methods' keys: each must mean something */
    wmat_param_spec keys[64];
    rc = wmat__qmethod_keys(keys, 64);
    if (rc) return rc;
    wmat_pset all;
    if ((rc = wmat__pset_init(&all, keys))) return rc;
    char kv[512];
    struct_kv(p, kv, sizeof kv);
    if (!(rc = wmat__pset_parse_kv(&all, kv, ',', 0))) rc = wmat__pset_parse_kv(&all, p->method_params, ',', 0);
    if (!rc && wmat__pset_is_set(&all, "per_ic") && !wmat__pset_int(&all, "per_ic") && wmat__pset_int(&all, "group") > 0)
        rc = wmat_set_error(WMAT_ERR_INVALID,
                            "group=%lld and per_oc (per_ic=false) exclude each other: per-OC is one scale per output "
                            "channel (leave per_ic unset for groups along the inputs)",
                            (long long)wmat__pset_int(&all, "group"));
    wmat__pset_free(&all);
    if (rc) return rc;
    /* every override item, matching a tensor or not */
    wmat_override_item it;
    for (const char *s = p->overrides; (rc = wmat__override_next(&s, &it, OV_SYNTAX)) > 0;) {
        if (wmat__override_is_keep(&it)) continue;
        const wmat_qmethod *om = find_quant(it.method);
        if (!om)
            return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': unknown method '%s' (methods: %s, or keep)",
                                  it.pattern, it.method, names);
        wmat_pset ps;
        if ((rc = wmat__pset_init(&ps, om->schema))) return rc;
        rc = ov_fields(&ps, &it, 1);
        wmat__pset_free(&ps);
        if (rc) return rc;
    }
    return rc;
}

/* The job's method and keep flag from the override items matching its name
 * (the last match wins). */
static int apply_overrides(const char *list, qjob *j)
{
    wmat_override_item it;
    int rc;
    for (const char *s = list; (rc = wmat__override_next(&s, &it, OV_SYNTAX)) > 0;) {
        if (!wmat__override_matches(&it, j->t->name)) continue;
        if (wmat__override_is_keep(&it)) {
            j->keep = 1;
            continue;
        }
        const wmat_qmethod *m = find_quant(it.method);
        if (!m) return wmat_set_error(WMAT_ERR_INVALID, "override for '%s': unknown method '%s'", it.pattern, it.method);
        j->method = m;
        j->keep = 0;
    }
    return rc;
}

/* The job's wmat_qparams for its (final) method. */
static int job_params(qjob *j, const wmat_quantize_params *p, int n_threads)
{
    wmat_pset ps;
    int rc = wmat__pset_init(&ps, j->method->schema);
    if (rc) return rc;
    char kv[512];
    struct_kv(p, kv, sizeof kv);
    if (!(rc = wmat__pset_parse_kv(&ps, kv, ',', 1))) rc = wmat__pset_parse_kv(&ps, p->method_params, ',', 1);
    wmat_override_item it;
    for (const char *s = p->overrides; !rc;) {
        const int more = wmat__override_next(&s, &it, OV_SYNTAX);
        if (more <= 0) {
            rc = more;
            break;
        }
        if (wmat__override_is_keep(&it) || !wmat__override_matches(&it, j->t->name)) continue;
        rc = ov_fields(&ps, &it, 0);
    }
    if (!rc) {
        wmat__qparams_from(&ps, &j->qp);
        j->qp.n_threads = n_threads;
    }
    wmat__pset_free(&ps);
    return rc;
}

/* The gradient statistic one method's settings read (pset ps of that
 * method): the scores that read dL/dW, or the Fisher diagonal. */
static int grads_of(const wmat_qmethod *m, const wmat_pset *ps)
{
    if (!(m->stats & WMAT_QSTAT_GRADIENTS)) return 0;
    wmat_qparams qp;
    wmat__qparams_from(ps, &qp);
    if (qp.score == WMAT_GWQ_FISHER) return WMAT_GRADS_FISHER;
    const int reads = qp.score == WMAT_GWQ_GRAD || qp.score == WMAT_GWQ_GRAD_W || qp.score == WMAT_GWQ_GRAD2;
    return reads ? WMAT_GRADS_MEAN : 0;
}

/* One method's settings as job_params builds them (fields: an override
 * item's, or NULL for the command line's method). */
static int method_grads(const wmat_qmethod *m, const wmat_quantize_params *p, wmat_override_item *it)
{
    wmat_pset ps;
    int rc = wmat__pset_init(&ps, m->schema);
    if (rc) return rc;
    char kv[512];
    struct_kv(p, kv, sizeof kv);
    if (!(rc = wmat__pset_parse_kv(&ps, kv, ',', 1))) rc = wmat__pset_parse_kv(&ps, p->method_params, ',', 1);
    if (!rc && it) rc = ov_fields(&ps, it, 0);
    if (!rc) rc = grads_of(m, &ps);
    wmat__pset_free(&ps);
    return rc;
}

int wmat_quantize_gradients_wanted(const wmat_quantize_params *p)
{
    if (!p) return wmat_set_error(WMAT_ERR_INVALID, "quantize: no parameters");
    int rc = wmat__quantize_check(p);
    if (rc) return rc;
    int want = method_grads(find_quant(p->method), p, NULL);
    wmat_override_item it;
    for (const char *s = p->overrides; want >= 0 && (rc = wmat__override_next(&s, &it, OV_SYNTAX)) > 0;) {
        if (wmat__override_is_keep(&it)) continue;
        const int w = method_grads(find_quant(it.method), p, &it);
        want = w < 0 ? w : w > want ? w : want;
    }
    return rc < 0 ? rc : want;
}

/* With a GGUF output, settings that no GGUF type holds exactly are refused
 * before any calibration (the rules of the packed kind's GGUF export:
 * Q4_0 / Q8_0, symmetric, 32-input blocks, no column permutation). */
static int gguf_holds(const qjob *j, int own_axis)
{
    const wmat_qparams *q = &j->qp;
    const char *why = NULL, *fix = NULL;
    if (strcmp(j->method->produces, "qpacked"))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "%s: method '%s' stores the '%s' weight kind, which no GGUF type holds; write the native "
                              "directory (--to native)",
                              j->t->name, j->method->name, j->method->produces);
    if (q->bits != 4 && q->bits != 8) why = "GGUF holds 4-bit (Q4_0) and 8-bit (Q8_0) codes exactly", fix = "--bits 4 or --bits 8";
    else if (!q->sym) why = "Q4_0 and Q8_0 are symmetric (no zero points)", fix = "--sym";
    else if (own_axis) why = "the method picks the group axis per tensor, and ggml's blocks run along inputs", fix = "--method gptq or rtn";
    else if (q->axis != WMAT_QAXIS_IN) why = "ggml's blocks run along the inputs (not per-IC)", fix = "groups along inputs (no --per-ic)";
    else if (q->group != 32)
        why = j->note ? "the group does not divide this tensor's width, and its per-channel fallback has no GGUF type"
                      : "ggml's blocks are 32 inputs long",
        fix = "--group 32 (or keep this tensor: --keep / --override PATTERN=keep)";
    else if (q->act_order && !q->static_groups) why = "act-order reorders the columns, and GGUF has no column permutation", fix = "--static-groups with --act-order (or no --act-order)";
    if (!why) return WMAT_OK;
    return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                          "%s: %d-bit %s group %d%s cannot be stored in GGUF: %s; use %s, or write the native directory (--to native)",
                          j->t->name, q->bits, q->sym ? "sym" : "asym", q->group, q->act_order ? " act-order" : "", why, fix);
}

/* Bits per weight as quantized storage keeps it: codes (5..7 bits take a
 * byte), fp16 scales, u8 zero points when asymmetric, i32 perm. */
static double stored_bpw(const wmat_qresult *q)
{
    if (q->obj || q->gbytes) return 8.0 * (double)wmat_qresult_obj_bytes(q) / ((double)q->rows * (double)q->cols);
    const int cb = q->bits == 2 || q->bits == 3 || q->bits == 4 || q->bits == 8 ? q->bits : 8;
    const double ng = (double)wmat_qresult_n_groups(q), nw = (double)q->rows * (double)q->cols;
    return ((double)cb * nw + 16.0 * ng + (q->sym ? 0.0 : 8.0 * ng) + (q->perm ? 32.0 * (double)q->cols : 0.0)) / nw;
}


/* t as an owned copy that the fake-quant weights are written into; the
 * mapped pages it was copied from are released (docs/SCALING.md). */
/* Out of core: hand the allocator's free memory back to the system. A
 * stage frees buffers of up to tens of MB (statistics, copies, codes) that
 * glibc keeps in its heap (its mmap threshold grows to 32 MB as large
 * blocks are freed), so without this the heap's free space, not the data,
 * set the resident peak (about 150-200 MB at the 1.1B shape). */
static void heap_trim(void)
{
#ifdef __GLIBC__
    malloc_trim(0);
#endif
}

/* Out of a finished statistics' buffers, what only accumulation uses
 * (wmat__qstats_add): it is freed until the next wmat__qstats_init. */
static void stats_trim(wmat_qstats *s)
{
    wmat__free(s->xb);
    wmat__free(s->G);
    s->xb = NULL;
    s->G = NULL;
    s->xb_cap = s->xb_rows = 0;
}

static int writable_copy(wmat_model *m, wmat_tensor *t)
{
    const wmat_tensor was = *t;
    int rc = wmat__tensor_make_writable(t);
    if (!rc) wmat__model_release(m, &was);
    return rc;
}

/* wmat_qresult_dequant on nt threads (rows apart; the same values). */
static void dequant_par(const wmat_qresult *q, float *W, int nt)
{
    if (q->gbytes || q->obj) {
        wmat_qresult_dequant(q, W);
        return;
    }
    const int64_t rows = q->rows, cols = q->cols;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *cd = q->codes + r * cols;
        float *w = W + r * cols;
        for (int64_t k = 0; k < cols; k++) {
            const int64_t g = wmat_qresult_group_of(q, r, k);
            w[q->perm ? q->perm[k] : k] = q->scales[g] * ((float)cd[k] - q->zeros[g]);
        }
    }
}

/* Quantize one job; Wq gets the dequantized weights. */
static int run_job(qjob *j, const wmat_qstats *st, const float *grad, wmat_qresult *res, float *Wq,
                   wmat_quantize_tensor *rep, double *factor_s)
{
    /* the tensor's own dL/dW goes with its input's statistics */
    wmat_qstats stg;
    if (j->method->stats & WMAT_QSTAT_GRADIENTS) {
        if (st) stg = *st;
        else memset(&stg, 0, sizeof stg);
        stg.grad = grad;
        st = &stg;
    }
    const int64_t rows = j->t->shape[0], cols = j->t->shape[1];
    const float *W = j->t->data;
    wmat_qmethod_info info;
    memset(&info, 0, sizeof info);
    double t0 = wmat__now();
    int rc;
    if (j->gdt) {
        const int how = !strcmp(j->method->name, "gptq") ? 2 : !strcmp(j->method->name, "imatrix") ? 1 : 0;
        rc = wmat__quant_ggml(res, W, rows, cols, st, j->gdt, how, &j->qp, &info);
    } else {
        rc = j->method->fn(res, W, rows, cols, st, &j->qp, &info);
    }
    if (rc) return wmat_set_error(rc, "%s: %s", j->t->name, wmat_last_error());
    rep->seconds = wmat__now() - t0;
    *factor_s += info.factor_seconds;
    const int nt = j->qp.n_threads > 0 ? j->qp.n_threads : 1;
    dequant_par(res, Wq, nt);
    /* per-row sums added in row order: the same value on any thread count */
    double *rs = wmat__malloc((size_t)(2 * rows) * sizeof(double));
    if (!rs) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", j->t->name);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols, *wq = Wq + r * cols;
        double nr = 0.0, dr = 0.0;
        for (int64_t c = 0; c < cols; c++) {
            const double d = (double)w[c] - wq[c];
            nr += d * d;
            dr += (double)w[c] * w[c];
        }
        rs[2 * r] = nr;
        rs[2 * r + 1] = dr;
    }
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        num += rs[2 * r];
        den += rs[2 * r + 1];
    }
    wmat__free(rs);
    rep->rel_error = den > 0 ? sqrt(num / den) : 0.0;
    rep->out_error = -1.0;
    if (st && st->H) {
        /* exact up to 1024 rows, else on every s-th row (methods.h) */
        double e, e0;
        if (!wmat__qoutput_errors(W, Wq, rows, cols, st->H, nt, &e, &e0)) rep->out_error = e0 > 0 ? e / e0 : 0.0;
        else wmat_clear_error(); /* out of memory: reported as none (-1), as before */
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
    int rc = wmat__quantize_check(p);
    if (rc) return rc;
    const wmat_qmethod *method = find_quant(p->method);
    if (p->ggml) {
        if (!wmat__ggml_ftype_known(p->ggml))
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "unknown ggml file type '%s' (q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, "
                                  "q5_k_m, q6_k, q3_k, q4_k, q5_k)",
                                  p->ggml);
        if (strcmp(method->name, "rtn") && strcmp(method->name, "imatrix") && strcmp(method->name, "gptq"))
            return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                                  "method '%s' cannot choose values inside ggml blocks (--ggml takes rtn, imatrix or gptq)",
                                  method->name);
    }
    const double t_start = wmat__now();
    wmat_context wc = wmat_context_default();
    wc.n_threads = p->n_threads;
    wc.comm = p->comm; /* calib_dp.c: the runtime's context carries it to the statistics */
    const int nt = wmat_context_threads(&wc);

    /* ---- the jobs, in forward order */
    const int L = c->n_layers, n_tensors = wmat_model_n_tensors(m);
    const int max_jobs = L * WMAT_LIN_COUNT + 2;
    qjob *jobs = wmat__calloc((size_t)max_jobs, sizeof *jobs);
    wmat_qresult *results = wmat__calloc((size_t)n_tensors, sizeof *results);
    wmat_quantize_tensor *trep = wmat__calloc((size_t)max_jobs, sizeof *trep);
    double *tbpw = wmat__calloc((size_t)n_tensors, sizeof *tbpw); /* stored bits/weight of each quantized tensor */
    float *Wq = NULL;
    wmat_runtime *rt = NULL;
    wmat__calib_states cs;
    memset(&cs, 0, sizeof cs);
    wmat_qstats stats[WMAT_CSLOT_COUNT];
    memset(stats, 0, sizeof stats);
    int nj = 0;
    /* out of core: decided before any tensor is copied (docs/SCALING.md) */
    const int low_mem = wmat__model_low_mem(m, p->low_mem);
    double bytes_before = 0.0;
    for (int i = 0; i < n_tensors; i++) bytes_before += (double)wmat_model_tensor(m, i)->nbytes;
    if (!jobs || !results || !trep || !tbpw) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    const wmat_qparams base = wmat__qparams_default(); /* job_params fills each job's */
    for (int l = 0; l < L; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++)
            jobs[nj++] = (qjob){wmat_model_linear(m, l, (wmat_linear_kind)k), l, wmat__calib_slot((wmat_linear_kind)k),
                                method, base, 0, NULL, 0, k};
    wmat_tensor *emb = wmat_model_tok_embeddings(m), *cls = wmat_model_classifier(m);
    /* llama.cpp's file types hold the classifier and the embedding too:
     * both by its reference search (its imatrix covers the blocks only) */
    const wmat_qmethod *df = wmat__qmethod_data_free();
    if (p->ggml && cls != emb) jobs[nj++] = (qjob){cls, L, WMAT_CSLOT_CLS, df, base, 0, NULL, 0, WMAT_GGML_OUTPUT};
    else if (p->classifier) jobs[nj++] = (qjob){cls, L, WMAT_CSLOT_CLS, method, base, 0, NULL, 0, WMAT_GGML_OUTPUT};
    if (p->ggml) jobs[nj++] = (qjob){emb, -1, -1, df, base, 0, NULL, 0, WMAT_GGML_TOKEN_EMBD};
    else if (p->embeddings && !(p->classifier && cls == emb)) jobs[nj++] = (qjob){emb, -1, -1, method, base, 0, NULL, 0, WMAT_GGML_TOKEN_EMBD};
    int need_calib = 0;
    for (int i = 0; i < nj; i++) {
        qjob *j = &jobs[i];
        if (!j->t || j->t->ndim != 2 || j->t->dtype != WMAT_F32) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "quantize: %s is not a materialized fp32 matrix",
                                j->t ? j->t->name : "a linear layer");
            goto done;
        }
        if (wmat__name_list_match(p->keep, j->t->name)) j->keep = 1;
        if ((rc = apply_overrides(p->overrides, j))) goto done;
        if (j->keep) continue;
        if (j->slot < 0 && wmat__qmethod_needs_calib(j->method)) {
            j->method = wmat__qmethod_data_free();
            j->note = "(embedding: no input statistics, data-free)";
        }
        if ((rc = job_params(j, p, nt))) goto done;
        const int64_t rows = j->t->shape[0], cols = j->t->shape[1];
        if (p->ggml) {
            j->gdt = wmat__ggml_mix_type(p->ggml, j->role, j->layer, c, cols);
            if (j->gdt == WMAT_F32) j->keep = 1;
            if (j->keep) continue;
            if (wmat__qmethod_needs_calib(j->method)) need_calib = 1;
            continue;
        }
        const int div_in = !(j->qp.group > 0 && cols % j->qp.group), div_out = !(j->qp.group > 0 && rows % j->qp.group);
        const int own_axis = (j->method->flags & WMAT_QM_OWN_AXIS) != 0;
        const int ok = own_axis ? (div_in || div_out) : (j->qp.axis == WMAT_QAXIS_IN ? div_in : div_out);
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
        if (p->gguf && (rc = gguf_holds(j, own_axis))) goto done;
        if (p->pack && !p->gguf && !strcmp(j->method->produces, "qpacked") && cols % 32) {
            rc = wmat_set_error(WMAT_ERR_UNSUPPORTED,
                                "%s (%lld x %lld): %lld inputs is not a multiple of 32, which packed storage needs "
                                "(rows of 32-code chunks); keep this tensor (--keep), give it a method with its own "
                                "weight kind (--override PATTERN=METHOD), or quantize without writing (--to none)",
                                j->t->name, (long long)rows, (long long)cols, (long long)cols);
            goto done;
        }
        if (wmat__qmethod_needs_calib(j->method)) need_calib = 1;
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
        int w0 = 0, nw = n_windows; /* this rank's share (calib_dp.c) */
        if ((rc = wmat__calib_share(p->comm, n_windows, &w0, &nw))) goto done;
        /* out of core: the streams in unlinked files beside the output too */
        if ((rc = wmat__calib_states_init_spill(&cs, rt, p->calib + (size_t)w0 * (size_t)ctx, nw, ctx, c->dim, low_mem,
                                                p->spill_dir)))
            goto done;
        if ((rc = wmat__calib_states_dtype(&cs, p->calib_dtype))) goto done;
        /* stage mode quantizes each slot right after its pass (block mode
         * quantizes the whole block after one pass: no resuming there) */
        cs.resume = p->sequential == 2;
    }
    /* the streams need not go past the last block that wants statistics */
    int last_calib = -1;
    for (int i = 0; i < nj; i++)
        if (!jobs[i].keep && wmat__qmethod_needs_calib(jobs[i].method) && jobs[i].layer > last_calib) last_calib = jobs[i].layer;
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
    double calib_s = 0.0, method_s = 0.0, stats_s = 0.0, factor_s = 0.0;
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
                if (wmat__qmethod_needs_calib(j->method)) want |= 1u << j->slot;
                if (j->method->stats & WMAT_QSTAT_HESSIAN) hess |= 1u << j->slot;
            }
            if (!any) continue;
            size_t sbytes = 0;
            wmat_qstats *slots[WMAT_CSLOT_COUNT] = {0};
            for (int k = 0; k < WMAT_CSLOT_COUNT; k++)
                if (want >> k & 1u) {
                    const int64_t n = k == WMAT_CSLOT_DOWN ? c->hidden_dim : k == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
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
                /* the statistics are final: their accumulation buffers (the
                 * batch and its n x n float product, 173 MB for a 5632-wide
                 * input) go before the methods factor H */
                for (int k = 0; k < WMAT_CSLOT_COUNT; k++) stats_trim(&stats[k]);
                if (low_mem) {
                    /* the forward read this stage's mapped weights; the
                     * methods read them again from the page cache */
                    for (int i = 0; i < nj; i++)
                        if (jobs[i].layer == l && (jobs[i].slot < 0 || (stage_mask >> jobs[i].slot & 1u)))
                            wmat__model_release(m, jobs[i].t);
                    heap_trim();
                }
            }
            for (int i = 0; i < nj; i++) {
                qjob *j = &jobs[i];
                if (j->layer != l || j->keep || (j->slot >= 0 && !(stage_mask >> j->slot & 1u))) continue;
                const int ti = (int)(j->t - wmat_model_tensor(m, 0));
                const wmat_qstats *st = j->slot >= 0 && slots[j->slot] ? slots[j->slot] : NULL;
                if ((rc = run_job(j, st, p->gradients ? p->gradients[ti] : NULL, &results[ti], Wq, &trep[i], &factor_s))) goto done;
                tbpw[ti] = trep[i].bits_per_weight;
                method_s += trep[i].seconds;
                if (seq > 0) {
                    if ((rc = writable_copy(m, j->t))) goto done;
                    memcpy(j->t->data, Wq, j->t->nbytes);
                }
                done_jobs++;
                if (p->progress && p->progress(p->progress_user, j->t->name, (uint64_t)done_jobs, (uint64_t)nj)) {
                    rc = wmat_set_error(WMAT_ERR_CANCELLED, "quantize: cancelled");
                    goto done;
                }
            }
            for (int k = 0; k < WMAT_CSLOT_COUNT; k++) {
                stats_s += stats[k].seconds;
                wmat__qstats_free(&stats[k]);
            }
            if (low_mem) heap_trim();
        }
        /* block l is final (quantized, or fp32 with seq == 0): move the streams past it */
        if (cs.X && l >= 0 && l < last_calib && cs.layer == l) {
            const double t0 = wmat__now();
            rc = wmat__calib_advance(&cs);
            calib_s += wmat__now() - t0;
            if (rc) goto done;
        }
        /* out of core: nothing reads block l's fp32 weights again (the
         * streams are past it): pack them now and let their pages go */
        if (low_mem && l >= 0) {
            for (int i = 0; i < nj && !rc; i++) {
                qjob *j = &jobs[i];
                const int ti = (int)(j->t - wmat_model_tensor(m, 0));
                if (j->layer != l || j->keep || j->t == emb || !wmat_qresult_done(&results[ti])) continue;
                const wmat_tensor was = *j->t; /* still mapped when seq == 0 */
                if (!(rc = wmat_model_set_quantized(m, j->t->name, &results[ti]))) wmat_qresult_free(&results[ti]);
                if (!rc) wmat__model_release(m, &was);
                /* the packed weight goes to a temporary file, mapped back */
                if (!rc) rc = wmat__model_spill(m, j->t, p->spill_dir);
            }
            if (rc) goto done;
            if (l < L) wmat__model_release_layer(m, l);
            else wmat__model_release(m, cls);
            heap_trim();
        }
    }
    /* statistics of the fp32 model: write the weights back only now */
    if (seq == 0)
        for (int i = 0; i < nj; i++) {
            qjob *j = &jobs[i];
            if (j->keep) continue;
            const int ti = (int)(j->t - wmat_model_tensor(m, 0));
            if (!wmat_qresult_done(&results[ti])) continue; /* packed already (low_mem) */
            wmat_qresult_dequant(&results[ti], Wq);
            if ((rc = writable_copy(m, j->t))) goto done;
            memcpy(j->t->data, Wq, j->t->nbytes);
        }

    /* a method's model-level step (BitStack's measured order) */
    if (method->finish && !low_mem) {
        const wmat_qparams *fq = NULL;
        for (int i = 0; i < nj && !fq; i++)
            if (!jobs[i].keep && jobs[i].method == method) fq = &jobs[i].qp;
        if (fq && (rc = method->finish(m, results, n_windows ? p->calib : NULL, n_windows, ctx, rt, fq))) goto done;
    }
    if (rep) {
        double before = bytes_before, after = 0.0, qbits = 0.0, qw = 0.0;
        for (int i = 0; i < n_tensors; i++) {
            const wmat_tensor *t = wmat_model_tensor(m, i);
            if (tbpw[i] > 0) {
                const double nw = (double)wmat_tensor_nelem(t);
                after += tbpw[i] * nw / 8.0;
                qbits += tbpw[i] * nw;
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
        rep->stage_runs = cs.stage_runs;
        rep->stats_seconds = stats_s;
        rep->factor_seconds = factor_s;
        rep->state_bytes = cs.bytes;
        rep->state_spilled = cs.spill;
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
    wmat__free(tbpw);
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
