/* The trainer: parameters, gradients and optimizer states in arenas of the
 * same layout, the model's forward and backward over saved activations,
 * a registered optimizer (optim.h: AdamW, SGD, ...) with clipping and a
 * warmup + cosine schedule, gradient accumulation, registered adapters
 * (adapter.h: LoRA, rsLoRA) and gradient projectors (GaLore), checkpoints. */
#include "train.h"

#include "adapter.h"
#include "dp.h"
#include "optim.h"

#include "../io/model_internal.h"
#include "../io/safetensors.h"
#include "../linalg/linalg.h"
#include "../model/block.h"
#include "../model/gmm_mask.h"
#include "../model/kernels.h"
#include "../wop/wop.h"
#include "core/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

#define NROLE WMAT_W_LAYER_COUNT
#define NLIN WMAT_LIN_COUNT
#define NAT WMAT__ADAPTER_MAX_TENSORS
#define NST WMAT__OPT_MAX_STATES

#define lin_role(k) wmat__linear_role((wmat_linear_kind)(k))

/* One trainable tensor: views into the param / grad / optimizer arenas. */
typedef struct {
    float *p, *g;       /* (rows, cols) or (rows) when cols == 0 */
    int rows, cols;
    size_t n;
    int decay;          /* weight decay applies (2-D) */
    int proj;           /* 1: updated through the projector */
    size_t n_state;     /* elements the optimizer sees (projected size when proj) */
    void *state[NST];   /* the optimizer's states for this tensor */
    int atensor;        /* an adapter's tensor: its index in the layer's tensors (-1: not an adapter's) */
    int frozen;         /* this step: its leading columns frozen (adapter->frozen_cols) */
    const wmat__adapter_cfg *acfg; /* its layer's settings */
    float *proj_state;  /* the projector's own state (proj) */
    size_t n_proj;      /* its floats */
} slot;

typedef struct {
    float *x;                   /* (BT, D) residual input of the layer */
    float *xn1, *r1;            /* (BT, D), (BT) */
    float *q, *k, *v;           /* (BT, D), (BT, KV), (BT, KV) after RoPE */
    float *ao;                  /* (BT, D) attention output */
    float *xmid;                /* (BT, D) */
    float *xn2, *r2;            /* (BT, D), (BT) */
    float *hg, *hu, *hs;        /* (BT, H) */
    float *aact[NLIN];          /* what each adapter keeps for its backward */
    /* precision bf16: the GEMM inputs of the layer as bf16 (X16_*), each
     * converted by its first consumer in a block forward (g16: the forward
     * that converted it) and read again by the weight gradients */
    uint16_t *x16[4];
    unsigned g16[4];
} layer_acts;

enum { X16_XN1, X16_AO, X16_XN2, X16_HS };

struct wmat_trainer {
    wmat_train_params p;
    wmat_config c;
    wmat_model *base;           /* the model given to create */
    wmat_model *view;           /* full/projected: tensors point into the params; adapter: merged copy (lazy) */
    wmat_runtime *rt;
    int rt_ctx;
    wmat_context exec;
    int nt;
    int B, T, BT;

    const wmat__optimizer *opt;
    const wmat__projector *proj;   /* NULL: none */
    wmat__proj_params pp;
    const wmat__adapter *adapter;  /* NULL: none */
    wmat__adapter_cfg acfg;
    int rep;                       /* the adapter replaces the targeted linears (adapter->replaces_base) */
    /* per targeted layer (L * NLIN): whether it carries the adapter (an
     * entry that adopts its base's factors skips layers that have none)
     * and its settings (such an entry's rank is the layer's own) */
    unsigned char *aon;
    wmat__adapter_cfg *lcfg;
    /* the adapted layers for the entry's whole-model hooks (extra_loss,
     * after_step); NULL when it has none */
    wmat__adapter_layer *al;
    int n_al;
    char *areport;                 /* what the adapter's plan decided (EVA's ranks), NUL-ended; NULL: none */
    char *astatus;                 /* adapter->status: the report and the status lines, rewritten by each call */
#define ASTATUS_CAP 4096

    /* weights the forward reads (trainable or frozen) and their grads */
    float *emb, *fnorm, *cls;   /* (V, D), (D), (V, D) (cls == emb when tied); NULL: a frozen base of another kind */
    float **lw_, **glw_;        /* (L * NROLE): trainable params (full), the norms (adapter) */
    float **gmm_, **ggmm_;      /* (L) the Gaussian-mixture mask's parameters and grads (c.gmm_kernels); NULL: none */
    /* the linear weights as operators: the frozen base's own tensors, of
     * any registered kind (adapter), or f32 headers over the params (full) */
    const wmat_tensor **lin_;   /* (L * NLIN) */
    const wmat_tensor *emb_t, *cls_t;
    wmat_tensor *hdr;           /* (L * NLIN + 2) the f32 headers (full) */
    wmat_wexec ex;              /* the operators' threads, ISA, GEMM backend (from the context) */
    void *ws;                   /* the largest batched workspace the operators' kinds ask for */
    float *gemb, *gfnorm, *gcls;
    /* adapter tensors and grads: (L * NLIN * NAT), NULL where not adapted */
    float **aw, **gaw;
    /* the adapter's frozen data per layer (L * NLIN), in one block */
    void **afix;
    void *fixed;
    size_t fixed_bytes;
    size_t shared_bytes;        /* the entry's shared data, at the start of fixed (aligned size) */
    /* the entry's trained shared tensors (n_tshared) and their gradients,
     * per group (NLIN groups at most), in the param / grad arenas */
    float *tw[NLIN * NAT], *tg[NLIN * NAT];
    float *dyo;                 /* output_side: (BT, max out) gradient of a base output */
    float *frz;                 /* adapter->frozen_cols: the frozen part of one tensor, kept across its step */
    float *base_copy;           /* rewrites_base: the private f32 copies the layers run on (PiSSA's residual) */
    size_t base_copy_bytes;

    wmat_arena *a_param, *a_grad, *a_opt, *a_act, *a_scratch;
    float *params, *grads;
    size_t n_params;
    wmat__optim_states ostates; /* state k of all slots, contiguous */
    float *proj_states;         /* projector states of all projected slots */
    size_t n_proj_floats, opt_bytes;
    slot *slots;
    int n_slots;
    wmat__proj_ctx pctx;

    layer_acts *acts;           /* (L + 1): acts[L].x is the final residual */
    float *xnf, *rf, *logits, *losses;
    float *dx, *dxn, *dq, *dk, *dv, *dao, *dhs, *dhg, *dhu, *ascratch, *tmp;
    float *att_scratch;
    float *rope_cos, *rope_sin; /* (T, hd/2) */
    int32_t *inp, *tgt;         /* (BT) */

    /* precision bf16 (wmat_train_params.precision): bf16 copies of the f32
     * linears and the classifier, refreshed from their sources when stale
     * (at creation, after a step or a checkpoint load that changed them) */
    int bf16;
    uint16_t **lin16;           /* (L * NLIN) a linear's copy; NULL: it runs its own kind */
    uint16_t *cls16;            /* NULL: the classifier runs its own kind */
    const float **lin16_src;    /* (L * NLIN + 1) their f32 sources, the classifier's last */
    int w16_stale, w16_trained; /* trained: the sources are parameters (refresh after each step) */
    uint16_t *w16, *a16;        /* one block each: the weights' copies, the activations' */
    size_t w16_bytes, a16_bytes;
    uint16_t *xnf16, *dy16;     /* the final norm's output; an output gradient (BT x max(D, H, V)) */
    unsigned gen16;             /* block forwards run (layer_acts.g16) */

    size_t galore_state, galore_adam_equiv;

    /* data */
    const int32_t *data;
    size_t n_data, n_windows;
    uint64_t cursor;            /* windows consumed */
    uint64_t perm_epoch;
    uint32_t *perm;

    int step;
    wmat_rng rng;

    /* data parallelism (dp.h): the global micro-batch is nranks * spr
     * shards of B windows; rank r runs shards r spr .. r spr + spr - 1 */
    int rank, nranks, spr;
    float *sacc;                /* spr > 1: each shard's gradient sums (spr x n_params) */
    double *sloss;              /* spr > 1: each shard's loss sum */
    wmat__dp_bucket *bk;        /* each layer's gradient ranges */
    int n_bk;
    wmat__dp *dp;               /* NULL: one rank */
};

wmat_train_params wmat_train_default_params(void)
{
    wmat_train_params p;
    memset(&p, 0, sizeof p);
    p.method = WMAT_TRAIN_FULL;
    p.optimizer = WMAT_OPT_ADAMW;
    p.batch = 8;
    p.ctx = 0;
    p.grad_accum = 1;
    p.steps = 100;
    p.lr = 1e-3f;
    p.min_lr = -1.0f; /* < 0: lr / 10 */
    p.warmup = 0;
    p.beta1 = 0.9f;
    p.beta2 = 0.95f;
    p.eps = 1e-8f;
    p.weight_decay = 0.0f;
    p.momentum = 0.9f;
    p.grad_clip = 1.0f;
    p.seed = 1337;
    p.shuffle = 1;
    p.lora_rank = 8;
    p.lora_alpha = 16.0f;
    p.lora_rslora = 0;
    p.lora_targets = (1u << WMAT_LIN_Q) | (1u << WMAT_LIN_V);
    p.galore_rank = 0;
    p.galore_gap = 50;
    p.galore_scale = 1.0f;
    p.galore_targets = (1u << NLIN) - 1;
    p.galore_randomized = 0;
    p.adapter_density = 0.03f;
    p.adalora_target_r = 0;
    p.adalora_tinit = -1;
    p.adalora_tfinal = -1;
    p.adalora_deltat = 1;
    p.adalora_orth = -1.0f;
    p.adapter_calib_batches = 32;
    p.eva_rho = 2.0f;
    p.eva_tau = 0.99f;
    p.spt_threshold = 1.0f;
    p.qat_bits = 4;
    p.qat_group = 0;
    p.qat_cga_steps = -1;
    p.qat_cga_range = 0.005f;
    return p;
}

int wmat_train_parse_targets(const char *list, unsigned *mask)
{
    *mask = 0;
    if (!list || !*list) return wmat_set_error(WMAT_ERR_INVALID, "empty target list (choose from q,k,v,o,gate,up,down)");
    const char *s = list;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int found = 0;
        if (len == 3 && !strncmp(s, "all", 3)) {
            *mask |= (1u << NLIN) - 1;
            found = 1;
        }
        /* PEFT's spellings too: the HF module names and "all-linear" */
        if (len == 10 && !strncmp(s, "all-linear", 10)) {
            *mask |= (1u << NLIN) - 1;
            found = 1;
        }
        for (int k = 0; k < NLIN && !found; k++) {
            const char *nm = wmat_linear_name((wmat_linear_kind)k);
            const size_t nl = strlen(nm);
            if ((nl == len && !strncmp(s, nm, len)) || (len == nl + 5 && !strncmp(s, nm, nl) && !strncmp(s + nl, "_proj", 5))) {
                *mask |= 1u << k;
                found = 1;
            }
        }
        if (!found)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "target '%.*s' matches no module (choose from q,k,v,o,gate,up,down or all; PEFT's "
                                  "q_proj ... down_proj and all-linear also work)",
                                  (int)len, s);
        s += len;
        if (*s == ',') s++;
    }
    return WMAT_OK;
}

size_t wmat_peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    size_t kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) {
            kb = (size_t)strtoull(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb * 1024;
}

static void lin_dims(const wmat_config *c, int k, int *out, int *in)
{
    wmat__linear_shape(c, (wmat_linear_kind)k, out, in);
}

/* Shape of a layer role: rows, cols (0 for vectors). */
static void role_dims(const wmat_config *c, int w, int *rows, int *cols)
{
    int64_t r, cc;
    wmat__role_shape(c, (wmat_layer_weight)w, &r, &cc);
    *rows = (int)r;
    *cols = (int)cc;
}

/* ------------------------------------------------------------ creation */

/* Whether layer role w is a linear the adapter replaces (no base kept). */
static int replaced_role(const wmat_trainer *t, int w)
{
    for (int k = 0; t->rep && k < NLIN; k++)
        if ((int)lin_role(k) == w && (t->p.lora_targets & (1u << k))) return 1;
    return 0;
}

/* The view's replaced linears as the adapter's small form of the current
 * parameters; the runtime over the view is dropped (its weights changed
 * objects). */
static int refresh_replaced(wmat_trainer *t)
{
    const wmat_config *c = &t->c;
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < NLIN; k++) {
            float *const *w = t->aw + ((size_t)l * NLIN + k) * NAT;
            if (!w[0]) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            wmat_tensor tmp;
            memset(&tmp, 0, sizeof tmp);
            int rc = t->adapter->to_weight(&t->acfg, (const float *const *)w, t->afix[l * NLIN + k], i, o, &tmp);
            if (rc) return rc;
            wmat__tensor_set_obj(wmat_model_linear(t->view, l, (wmat_linear_kind)k), tmp.data);
        }
    wmat_runtime_free(t->rt);
    t->rt = NULL;
    return WMAT_OK;
}

/* dst (f32) = the tensor's values: a weight of any kind dequantized, a vector copied. */
static void copy_f32(float *dst, const wmat_tensor *src)
{
    if (src->ndim == 2) wmat__wkind_of(src)->dequant_rows(src, 0, src->shape[0], dst);
    else memcpy(dst, src->data, src->nbytes);
}

static float *take(wmat_arena *a, size_t n) { return wmat_arena_alloc(a, (n ? n : 1) * sizeof(float)); }

void wmat_trainer_free(wmat_trainer *t)
{
    if (!t) return;
    wmat_runtime_free(t->rt);
    wmat_model_free(t->view); /* its tensors point into a_param (not owned) for full/projected */
    wmat_arena_free(t->a_param);
    wmat_arena_free(t->a_grad);
    wmat_arena_free(t->a_opt);
    wmat_arena_free(t->a_act);
    wmat_arena_free(t->a_scratch);
    wmat__free(t->lw_);
    wmat__free(t->glw_);
    wmat__free(t->gmm_);
    wmat__free(t->ggmm_);
    wmat__free(t->lin_);
    wmat__free(t->hdr);
    wmat__free(t->ws);
    wmat__free(t->aw);
    wmat__free(t->gaw);
    wmat__free(t->aon);
    wmat__free(t->lcfg);
    wmat__free(t->al);
    wmat__free(t->areport);
    wmat__free(t->astatus);
    wmat__free(t->afix);
    wmat__free(t->fixed);
    wmat__free(t->frz);
    wmat__free(t->base_copy);
    wmat__free(t->slots);
    wmat__free(t->acts);
    wmat__free(t->perm);
    wmat__free(t->bk);
    wmat__dp_free(t->dp);
    wmat__free(t->sacc);
    wmat__free(t->sloss);
    wmat__free(t->lin16);
    wmat__free(t->lin16_src);
    wmat__free(t->w16);
    wmat__free(t->a16);
    wmat__free(t);
}

/* ------------------------------------------------------------ bf16 */

/* dst = bf16(src), n values, split over nt threads (elementwise: the same
 * bits for any split). */
static void to_bf16(uint16_t *dst, const float *src, size_t n, int nt)
{
    const size_t parts = (size_t)(nt > 0 ? nt : 1), chunk = ((n + parts - 1) / parts + 63) & ~(size_t)63;
    if (nt <= 1 || n < 65536) {
        wmat_from_f32(dst, WMAT_BF16, src, n);
        return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int c = 0; c < nt; c++) {
        const size_t a = (size_t)c * chunk, b = a + chunk < n ? a + chunk : n;
        if (a < b) wmat_from_f32(dst + a, WMAT_BF16, src + a, b - a);
    }
}

/* The weights' bf16 copies from their sources, when stale. */
static void refresh_w16(wmat_trainer *t)
{
    if (!t->bf16 || !t->w16_stale) return;
    const int n = t->c.n_layers * NLIN;
    for (int j = 0; j <= n; j++) {
        uint16_t *d = j < n ? t->lin16[j] : t->cls16;
        const wmat_tensor *W = j < n ? t->lin_[j] : t->cls_t;
        if (d) to_bf16(d, t->lin16_src[j], (size_t)W->shape[0] * (size_t)W->shape[1], t->nt);
    }
    t->w16_stale = 0;
}

/* C (M, N) f32 = op(A) op(B) (+ C when acc), bf16 operands, on the
 * trainer's backend and threads. */
static int gemm16(const wmat_trainer *t, int ta, int tb, int M, int N, int K, const uint16_t *A, int lda,
                  const uint16_t *B, int ldb, int acc, float *C, int ldc)
{
    return wmat__gemm_bf16_on(t->ex.gemm, t->ex.n_threads, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, acc ? 1.0f : 0.0f, C,
                              ldc);
}

/* Whether bf16 GEMMs run natively here (why not in `why`). */
static int bf16_usable(const wmat_trainer *t, char *why, size_t n)
{
    return wmat__gemm_bf16_fast(t->ex.gemm, why, n);
}

static int add_slot(wmat_trainer *t, float *p, float *g, int rows, int cols)
{
    slot *s = &t->slots[t->n_slots++];
    memset(s, 0, sizeof *s);
    s->p = p;
    s->g = g;
    s->rows = rows;
    s->cols = cols;
    s->n = (size_t)rows * (size_t)(cols ? cols : 1);
    s->decay = cols > 0;
    s->atensor = -1;
    return 0;
}

/* Floats of an entry's trained shared tensors over the groups the targets
 * touch (each group's shapes from its first targeted kind). */
static size_t tshared_floats(const wmat_trainer *t, const wmat__adapter *ad, unsigned targets)
{
    size_t n = 0;
    for (int g = 0; g < NLIN && ad->n_tshared > 0; g++)
        for (int k = 0; k < NLIN; k++)
            if ((targets & (1u << k)) && wmat__adapter_tgroup(ad, k) == g) {
                int o, i, rows[NAT], cols[NAT];
                lin_dims(&t->c, k, &o, &i);
                ad->tshared_shapes(&t->acfg, i, o, rows, cols);
                for (int a = 0; a < ad->n_tshared; a++) n += wmat__adapter_nelem(rows[a], cols[a]);
                break;
            }
    return n;
}

static size_t state_elems(const wmat__optimizer *o, int k, size_t n) { return o->state_elems ? o->state_elems(k, n) : n; }

/* "a, b, c": the names of a registry, for error messages. */
static const char *registry_names(int which, char *buf, size_t n)
{
    size_t k = 0;
    buf[0] = 0;
    for (int i = 0; k < n; i++) {
        const char *nm, *sum;
        if (wmat_train_registry_entry((wmat_train_registry)which, i, &nm, &sum)) break;
        k += (size_t)snprintf(buf + k, n - k, "%s%s", i ? ", " : "", nm);
    }
    return buf;
}

/* Resolve the optimizer, adapter and projector names of p (registry names,
 * or the enum fields' defaults) and check the combination. */
static int resolve(wmat_train_params *p, const wmat_config *c, const wmat__optimizer **opt,
                   const wmat__adapter **ad, const wmat__projector **pj)
{
    char names[256];
    const char *on = p->optimizer_name;
    if (!on) {
        if (p->optimizer != WMAT_OPT_ADAMW && p->optimizer != WMAT_OPT_SGD)
            return wmat_set_error(WMAT_ERR_INVALID, "train: unknown optimizer kind %d", (int)p->optimizer);
        on = p->optimizer == WMAT_OPT_SGD ? "sgd" : "adamw";
    }
    if (!(*opt = wmat__optimizer_find(on)))
        return wmat_set_error(WMAT_ERR_INVALID, "train: unknown optimizer '%s' (registered: %s)", on,
                              registry_names(WMAT_REG_OPTIMIZER, names, sizeof names));
    if (p->method < 0 || p->method > WMAT_TRAIN_GALORE) return wmat_set_error(WMAT_ERR_INVALID, "train: unknown method");
    if (p->adapter && p->projector)
        return wmat_set_error(WMAT_ERR_INVALID, "train: an adapter ('%s') and a projector ('%s') cannot be combined",
                              p->adapter, p->projector);
    if ((p->adapter && p->method == WMAT_TRAIN_GALORE) || (p->projector && p->method == WMAT_TRAIN_LORA))
        return wmat_set_error(WMAT_ERR_INVALID, "train: the adapter/projector name does not fit the method");
    if (p->adapter) p->method = WMAT_TRAIN_LORA;
    if (p->projector) p->method = WMAT_TRAIN_GALORE;
    *ad = NULL;
    *pj = NULL;
    if (p->method == WMAT_TRAIN_LORA) {
        /* lora_rslora predates the registry: it turns lora into rslora */
        const char *an = p->adapter ? p->adapter : "lora";
        if (p->lora_rslora && !strcmp(an, "lora")) an = "rslora";
        if (!(*ad = wmat__adapter_find(an)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: unknown adapter '%s' (registered: %s)", an,
                                  registry_names(WMAT_REG_ADAPTER, names, sizeof names));
        if (p->lora_rank <= 0) return wmat_set_error(WMAT_ERR_INVALID, "train: adapter rank must be positive");
        if (!(p->lora_targets & ((1u << NLIN) - 1)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: the adapter targets match no linear layer of the model");
    }
    if (p->method == WMAT_TRAIN_GALORE) {
        const char *pn = p->projector ? p->projector : "galore";
        if (!(*pj = wmat__projector_find(pn)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: unknown projector '%s' (registered: %s)", pn,
                                  registry_names(WMAT_REG_PROJECTOR, names, sizeof names));
        if (p->galore_rank <= 0) p->galore_rank = c->dim / 4 > 0 ? c->dim / 4 : 1;
        if (p->galore_gap <= 0) return wmat_set_error(WMAT_ERR_INVALID, "train: projector update gap must be positive");
        if (!(p->galore_targets & ((1u << NLIN) - 1)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: the projector targets match no linear layer");
    }
    return WMAT_OK;
}

#define AW(l, k) (t->aw + ((size_t)(l) * NLIN + (k)) * NAT)
#define AON(l, k) (t->aon[(l) * NLIN + (k)])
#define ACFG(l, k) (&t->lcfg[(l) * NLIN + (k)])
#define GAW(l, k) (t->gaw + ((size_t)(l) * NLIN + (k)) * NAT)

int wmat_trainer_create(wmat_trainer **out, wmat_model *m, const wmat_train_params *pp)
{
    *out = NULL;
    /* what an adopting adapter leaves of each linear (freed on every path) */
    const wmat_tensor **rest = NULL;
    /* what an adapter's plan made for its init (freed on every path) */
    void *plan_owned = NULL;
    wmat_train_params def = wmat_train_default_params();
    if (!pp) pp = &def;
    const wmat_config *c = wmat_model_config(m);
    /* weights of any registered kind (full training dequantizes them into
     * its f32 parameters; an adapter runs over them as stored), vectors f32 */
    for (int i = 0; i < wmat_model_n_tensors(m); i++) {
        const wmat_tensor *tt = wmat_model_tensor(m, i);
        const int ok = tt->ndim == 2 ? wmat__wkind_of(tt) && !(tt->flags & WMAT_TF_HF_ROPE) : tt->dtype == WMAT_F32;
        if (!ok)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "train: tensor %s (%s) cannot be trained or run as loaded; load the model with "
                                  "materialize_f32 (keep_stored keeps the weights' kinds)",
                                  tt->name, wmat_dtype_info(tt->dtype) ? wmat_dtype_info(tt->dtype)->name : "?");
    }
    if (c->shortcuts || c->attn_dim || c->norm_dim)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "train: %s is a sliced model (residual width %d, attention width %d, shortcuts %d), "
                              "which the trainer does not run",
                              wmat_model_path(m), c->dim, c->attn_dim ? c->attn_dim : c->dim, c->shortcuts);
    if (c->gmm_kernels && (pp->method == WMAT_TRAIN_LORA || pp->adapter))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "train: %s has a Gaussian-mixture attention mask, which trains with full training only "
                              "(full or galore; not adapters)",
                              wmat_model_path(m));
    wmat_train_params p = *pp;
    if (p.ctx <= 0) p.ctx = c->seq_len < 128 ? c->seq_len : 128;
    if (p.ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "train: context %d is longer than the model's (%d)", p.ctx, c->seq_len);
    if (p.batch <= 0 || p.grad_accum <= 0 || p.steps <= 0)
        return wmat_set_error(WMAT_ERR_INVALID, "train: batch, grad_accum and steps must be positive");
    if (!(p.lr > 0) || p.beta1 < 0 || p.beta1 >= 1 || p.beta2 < 0 || p.beta2 >= 1)
        return wmat_set_error(WMAT_ERR_INVALID, "train: lr must be > 0 and betas in [0, 1)");
    if (p.min_lr < 0) p.min_lr = p.lr / 10;
    const wmat__optimizer *opt = NULL;
    const wmat__adapter *ad = NULL;
    const wmat__projector *pj = NULL;
    int rc = resolve(&p, c, &opt, &ad, &pj);
    if (rc) return rc;

    wmat_trainer *t = wmat__calloc(1, sizeof *t);
    if (!t) return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
    t->p = p;
    t->c = *c;
    t->base = m;
    t->opt = opt;
    t->adapter = ad;
    t->proj = pj;
    t->pp = (wmat__proj_params){p.galore_rank, p.galore_gap, p.galore_scale, p.galore_randomized};
    t->exec = p.exec ? *p.exec : wmat_context_default();
    t->nt = wmat_context_threads(&t->exec);
    t->ex = wmat__wexec_from(&t->exec);
    t->acfg = (wmat__adapter_cfg){.rank = p.lora_rank,
                                  .alpha = p.lora_alpha,
                                  .density = p.adapter_density,
                                  .nt = t->nt,
                                  .isa = t->ex.isa,
                                  .l1 = p.adapter_l1,
                                  .ada = {p.adalora_target_r, p.adalora_tinit, p.adalora_tfinal, p.adalora_deltat,
                                          p.adalora_orth},
                                  .steps = p.steps,
                                  .rho = p.eva_rho,
                                  .tau = p.eva_tau,
                                  .qat = {p.qat_bits, p.qat_group, p.qat_cga_steps, p.qat_cga_range},
                                  .spt = {p.spt_budget, p.spt_threshold, 0, 0}};
    t->rep = ad && ad->replaces_base;
    if (p.precision != WMAT_F32 && p.precision != WMAT_BF16) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "train: precision must be f32 or bf16 (got %s)",
                            wmat_dtype_info(p.precision) ? wmat_dtype_info(p.precision)->name : "an unknown type");
        goto fail;
    }
    if (p.precision == WMAT_BF16) {
        char why[256];
        if (!bf16_usable(t, why, sizeof why)) {
            rc = wmat_set_error(WMAT_ERR_UNSUPPORTED, "train: bf16 precision needs a native bf16 GEMM: %s; train in f32",
                                why);
            goto fail;
        }
        t->bf16 = 1;
    }
    t->nranks = wmat_comm_size(t->exec.comm);
    t->rank = wmat_comm_rank(t->exec.comm);
    const int S = p.dp_shards > 0 ? p.dp_shards : t->nranks;
    if (p.dp_shards > 0 && ((S & (S - 1)) || (t->nranks & (t->nranks - 1)) || S % t->nranks)) {
        rc = wmat_set_error(WMAT_ERR_INVALID,
                            "train: dp_shards %d over %d ranks: the fixed-order sum needs powers of two, the shards a "
                            "multiple of the ranks",
                            S, t->nranks);
        goto fail;
    }
    if (p.batch % S) {
        rc = wmat_set_error(WMAT_ERR_INVALID,
                            "train: a batch of %d windows does not split into %d %s (give a multiple of %d)", p.batch, S,
                            p.dp_shards > 0 ? "shards" : "ranks", S);
        goto fail;
    }
    t->spr = S / t->nranks;
    t->B = p.batch / S;
    t->T = p.ctx;
    t->BT = t->B * t->T;
    wmat_rng_seed(&t->rng, p.seed);
    const int L = c->n_layers, D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    const int KV = c->n_kv_heads * hd;
    const size_t BT = (size_t)t->BT, T = (size_t)t->T;
    t->lw_ = wmat__calloc((size_t)L * NROLE, sizeof(float *));
    t->glw_ = wmat__calloc((size_t)L * NROLE, sizeof(float *));
    t->aw = wmat__calloc((size_t)L * NLIN * NAT, sizeof(float *));
    t->gaw = wmat__calloc((size_t)L * NLIN * NAT, sizeof(float *));
    t->afix = wmat__calloc((size_t)L * NLIN, sizeof(void *));
    t->slots = wmat__calloc((size_t)L * (NROLE + NAT * NLIN) + NAT * NLIN + 3, sizeof(slot));
    t->acts = wmat__calloc((size_t)L + 1, sizeof(layer_acts));
    t->lin_ = wmat__calloc((size_t)L * NLIN, sizeof *t->lin_);
    t->hdr = wmat__calloc((size_t)L * NLIN + 2, sizeof *t->hdr);
    t->aon = wmat__calloc((size_t)L * NLIN, 1);
    t->lcfg = wmat__calloc((size_t)L * NLIN, sizeof *t->lcfg);
    t->bk = wmat__calloc(2 * (size_t)L + 1, sizeof *t->bk);
    rest = wmat__calloc((size_t)L * NLIN + 1, sizeof *rest);
    const int GM = c->gmm_kernels ? c->n_heads * c->gmm_kernels * 2 : 0; /* mask floats per layer */
    if (GM && (!(t->gmm_ = wmat__calloc((size_t)L, sizeof *t->gmm_)) ||
               !(t->ggmm_ = wmat__calloc((size_t)L, sizeof *t->ggmm_)))) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
        goto fail;
    }
    if (!t->lw_ || !t->glw_ || !t->aw || !t->gaw || !t->afix || !t->slots || !t->acts || !t->lin_ || !t->hdr ||
        !t->aon || !t->lcfg || !t->bk || !rest) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
        goto fail;
    }
    const int adapt = ad != NULL, rep = t->rep;
    /* the adapter's own checks per targeted layer (with its base: a
     * base-aware entry may refuse a kind), then its frozen data */
    for (int k = 0; adapt && k < NLIN; k++) {
        if (!(p.lora_targets & (1u << k))) continue;
        int o, i;
        lin_dims(c, k, &o, &i);
        for (int l = 0; l < (ad->replaces_base ? 1 : L) && ad->check; l++)
            if ((rc = ad->check(&t->acfg, ad->replaces_base ? NULL : wmat_model_linear(m, l, (wmat_linear_kind)k), i, o,
                                wmat_linear_name((wmat_linear_kind)k))))
                goto fail;
        if (ad->fixed_bytes) t->fixed_bytes += (size_t)L * ((ad->fixed_bytes(&t->acfg, i, o) + 15) & ~(size_t)15);
        if (ad->rewrites_base) t->base_copy_bytes += (size_t)L * o * i * sizeof(float);
    }
    if (adapt && ad->n_tshared > 0 && (ad->replaces_base || ad->adopt)) {
        rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: adapter %s: trained shared tensors with a replaced or adopted base",
                            ad->name);
        goto fail;
    }
    /* shared data (VeRA's A, B), trained shared tensors: sized by the largest targeted linear */
    if (adapt && (ad->n_shared > 0 || ad->n_tshared > 0))
        for (int k = 0; k < NLIN; k++) {
            if (!(p.lora_targets & (1u << k))) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            if (i > t->acfg.in_max) t->acfg.in_max = i;
            if (o > t->acfg.out_max) t->acfg.out_max = o;
        }
    if (adapt && ad->n_shared > 0) {
        t->shared_bytes = (wmat__adapter_shared_floats(ad, &t->acfg) * sizeof(float) + 15) & ~(size_t)15;
        t->fixed_bytes += t->shared_bytes;
    }
    if (rep && !ad->to_weight && !ad->not_mergeable) {
        rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: adapter %s replaces the base but has no to_weight", ad->name);
        goto fail;
    }
    /* which layers carry the adapter, with which settings; an entry that
     * adopts its base's factors says per layer (rest: what the layer's
     * base product then runs) */
    int any_on = 0;
    for (int l = 0; adapt && l < L; l++)
        for (int k = 0; k < NLIN; k++) {
            if (!(p.lora_targets & (1u << k))) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            *ACFG(l, k) = t->acfg;
            ACFG(l, k)->hf_rope_heads = wmat__adapter_rope_heads(c, k);
            AON(l, k) = 1;
            if (ad->adopt) {
                char what[64];
                snprintf(what, sizeof what, "layer %d %s", l, wmat_linear_name((wmat_linear_kind)k));
                if ((rc = ad->adopt(&t->acfg, wmat_model_linear(m, l, (wmat_linear_kind)k), i, o, what, ACFG(l, k),
                                    &rest[l * NLIN + k])) < 0)
                    goto fail;
                AON(l, k) = rc == 1;
                rc = WMAT_OK;
            }
            any_on += AON(l, k);
        }
    /* an entry that plans from data (EVA) sets the layers' ranks and
     * init rows from calibration windows through the frozen model */
    if (adapt && ad->plan) {
        const size_t cap = 512 + (size_t)L * 768;
        if (!(t->areport = wmat__malloc(cap))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
            goto fail;
        }
        const wmat__adapter_plan_in pin = {m, p.lora_targets, p.adapter_calib, p.adapter_calib_n, p.ctx, p.batch,
                                           p.adapter_calib_batches, &t->exec};
        if ((rc = ad->plan(&t->acfg, &pin, t->lcfg, t->aon, &plan_owned, t->areport, cap))) goto fail;
        any_on = 0;
        for (int j = 0; j < L * NLIN; j++) any_on += t->aon[j];
    }
    if (adapt && !any_on) {
        rc = wmat_set_error(WMAT_ERR_INVALID, "train: adapter %s finds nothing to train in the targeted layers of %s",
                            ad->name, wmat_model_path(m) ? wmat_model_path(m) : "the model");
        goto fail;
    }
    if (t->fixed_bytes) {
        if (!(t->fixed = wmat__aligned_alloc(t->fixed_bytes))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the adapter's fixed data (%zu bytes)",
                                t->fixed_bytes);
            goto fail;
        }
        memset(t->fixed, 0, t->fixed_bytes);
        size_t fo = t->shared_bytes;
        if (t->shared_bytes) {
            /* one copy for all layers, filled once (its own seed: not the run's) */
            if ((rc = ad->init_shared(&t->acfg, t->fixed))) goto fail;
            t->acfg.shared = t->fixed;
            for (int j = 0; j < L * NLIN; j++) t->lcfg[j].shared = t->fixed;
        }
        for (int l = 0; l < L; l++)
            for (int k = 0; k < NLIN; k++) {
                if (!(p.lora_targets & (1u << k)) || !ad->fixed_bytes) continue;
                int o, i;
                lin_dims(c, k, &o, &i);
                t->afix[l * NLIN + k] = (char *)t->fixed + fo;
                fo += (ad->fixed_bytes(&t->acfg, i, o) + 15) & ~(size_t)15;
            }
    }

    /* ---- parameters and gradients: one block each, same layout */
    size_t np = 0;
    if (!adapt || rep) {
        np = (size_t)V * D + D + (c->tied_embeddings ? 0 : (size_t)V * D);
        for (int w = 0; w < NROLE; w++) {
            int r, cc;
            role_dims(c, w, &r, &cc);
            if (!replaced_role(t, w)) np += (size_t)L * r * (cc ? cc : 1);
        }
        np += (size_t)L * GM;
    }
    if (adapt) {
        for (int l = 0; l < L; l++)
            for (int k = 0; k < NLIN; k++)
                if (AON(l, k)) {
                    int o, i, rows[NAT], cols[NAT];
                    lin_dims(c, k, &o, &i);
                    ad->shapes(ACFG(l, k), i, o, rows, cols);
                    for (int a = 0; a < ad->n_tensors; a++) np += wmat__adapter_nelem(rows[a], cols[a]);
                }
        np += tshared_floats(t, ad, p.lora_targets);
    }
    t->n_params = np;
    if ((rc = wmat_arena_create(&t->a_param, np * sizeof(float) + 2 * WMAT_ALIGN)) ||
        (rc = wmat_arena_create(&t->a_grad, np * sizeof(float) + 2 * WMAT_ALIGN)))
        goto fail;
    t->params = take(t->a_param, np);
    t->grads = take(t->a_grad, np);
    {
        size_t off = 0;
#define CARVE(pp_, gg_, n_) do { pp_ = t->params + off; gg_ = t->grads + off; off += (n_); } while (0)
        if (!adapt || rep) {
            /* everything trains (a replacing adapter: all but the linears it replaces) */
            CARVE(t->emb, t->gemb, (size_t)V * D);
            add_slot(t, t->emb, t->gemb, V, D);
            for (int l = 0; l < L; l++) {
                const size_t lo = off;
                for (int w = 0; w < NROLE; w++) {
                    int r, cc;
                    role_dims(c, w, &r, &cc);
                    if (replaced_role(t, w)) continue;
                    CARVE(t->lw_[l * NROLE + w], t->glw_[l * NROLE + w], (size_t)r * (cc ? cc : 1));
                    add_slot(t, t->lw_[l * NROLE + w], t->glw_[l * NROLE + w], r, cc);
                }
                if (GM) { /* the layer's mask parameters, a vector (no weight decay) */
                    CARVE(t->gmm_[l], t->ggmm_[l], (size_t)GM);
                    add_slot(t, t->gmm_[l], t->ggmm_[l], GM, 0);
                }
                t->bk[t->n_bk++] = (wmat__dp_bucket){lo, off, l};
            }
            CARVE(t->fnorm, t->gfnorm, (size_t)D);
            add_slot(t, t->fnorm, t->gfnorm, D, 0);
            if (!c->tied_embeddings) {
                CARVE(t->cls, t->gcls, (size_t)V * D);
                add_slot(t, t->cls, t->gcls, V, D);
            } else {
                t->cls = t->emb;
                t->gcls = t->gemb;
            }
            /* copy the model's weights in, dequantized from whatever kind they are stored in */
            copy_f32(t->emb, wmat_model_tok_embeddings(m));
            copy_f32(t->fnorm, wmat_model_final_norm(m));
            if (!c->tied_embeddings) copy_f32(t->cls, wmat_model_classifier(m));
            for (int l = 0; l < L; l++)
                for (int w = 0; w < NROLE; w++)
                    if (t->lw_[l * NROLE + w])
                        copy_f32(t->lw_[l * NROLE + w], wmat_model_layer_tensor(m, l, (wmat_layer_weight)w));
            for (int l = 0; l < L && GM; l++) {
                char name[WMAT_NAME_MAX];
                wmat__gmm_mask_name(name, sizeof name, l);
                copy_f32(t->gmm_[l], wmat_model_find(m, name));
            }
            /* the forward multiplies by the params through f32 operator
             * headers; a replaced linear has none (the adapter is the layer) */
            wmat_tensor *h = t->hdr;
            for (int l = 0; l < L; l++)
                for (int k = 0; k < NLIN; k++) {
                    int o, i;
                    lin_dims(c, k, &o, &i);
                    if (rep && (p.lora_targets & (1u << k))) continue;
                    wmat__tensor_init2(h, WMAT_F32, o, i, t->lw_[l * NROLE + lin_role(k)]);
                    t->lin_[l * NLIN + k] = h++;
                }
            wmat__tensor_init2(h, WMAT_F32, V, D, t->emb);
            t->emb_t = t->cls_t = h++;
            if (!c->tied_embeddings) {
                wmat__tensor_init2(h, WMAT_F32, V, D, t->cls);
                t->cls_t = h;
            }
        } else {
            /* the frozen base as loaded: operators of their own kinds, read
             * through the kind's forward / backward / dequant_rows */
            t->emb_t = wmat_model_tok_embeddings(m);
            t->cls_t = wmat_model_classifier(m);
            t->emb = t->emb_t->dtype == WMAT_F32 ? t->emb_t->data : NULL;
            t->cls = t->cls_t->dtype == WMAT_F32 ? t->cls_t->data : NULL;
            t->fnorm = wmat_model_final_norm(m)->data;
            for (int l = 0; l < L; l++) {
                t->lw_[l * NROLE + WMAT_W_ATTN_NORM] = wmat_model_layer_tensor(m, l, WMAT_W_ATTN_NORM)->data;
                t->lw_[l * NROLE + WMAT_W_FFN_NORM] = wmat_model_layer_tensor(m, l, WMAT_W_FFN_NORM)->data;
                for (int k = 0; k < NLIN; k++) t->lin_[l * NLIN + k] = wmat_model_linear(m, l, (wmat_linear_kind)k);
            }
        }
        size_t frz_n = 0; /* the largest tensor that may freeze in part */
        if (adapt) {
            /* an entry that rewrites its base (PiSSA) gets private f32
             * copies, which the layers then run on; the model stays as loaded */
            if (t->base_copy_bytes && !(t->base_copy = wmat__aligned_alloc(t->base_copy_bytes))) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the adapter's base copies (%zu bytes)",
                                    t->base_copy_bytes);
                goto fail;
            }
            size_t bco = 0;
            /* the adapter's tensors, in layer order, initialized as they are carved (one RNG stream) */
            for (int l = 0; l < L; l++) {
                const size_t lo = off;
                for (int k = 0; k < NLIN; k++) {
                    if (!AON(l, k)) continue;
                    int o, i, rows[NAT], cols[NAT];
                    lin_dims(c, k, &o, &i);
                    ad->shapes(ACFG(l, k), i, o, rows, cols);
                    for (int a = 0; a < ad->n_tensors; a++) {
                        CARVE(AW(l, k)[a], GAW(l, k)[a], wmat__adapter_nelem(rows[a], cols[a]));
                        add_slot(t, AW(l, k)[a], GAW(l, k)[a], rows[a], cols[a]);
                        t->slots[t->n_slots - 1].atensor = a;
                        t->slots[t->n_slots - 1].acfg = ACFG(l, k);
                        if (ad->frozen_cols && wmat__adapter_nelem(rows[a], cols[a]) > frz_n)
                            frz_n = wmat__adapter_nelem(rows[a], cols[a]);
                    }
                    const wmat_tensor *bw = rep ? NULL : t->lin_[l * NLIN + k];
                    float *Wf = bw && bw->dtype == WMAT_F32 ? bw->data : NULL;
                    if (rep) {
                        /* a replacing entry may start from the model's weight (read-only) */
                        const wmat_tensor *mw = wmat_model_linear(m, l, (wmat_linear_kind)k);
                        Wf = mw && mw->dtype == WMAT_F32 ? mw->data : NULL;
                    }
                    if (Wf && ad->rewrites_base) {
                        wmat_tensor *h = &t->hdr[l * NLIN + k];
                        Wf = t->base_copy + bco;
                        bco += (size_t)o * i;
                        memcpy(Wf, bw->data, (size_t)o * i * sizeof(float));
                        wmat__tensor_init2(h, WMAT_F32, o, i, Wf);
                        t->lin_[l * NLIN + k] = bw = h;
                    }
                    if ((rc = ad->init(ACFG(l, k), AW(l, k), t->afix[l * NLIN + k], bw, Wf, i, o, &t->rng))) goto fail;
                    /* an adopting entry took its tensors from the base: the
                     * base product runs what is left */
                    if (ad->adopt) t->lin_[l * NLIN + k] = rest[l * NLIN + k];
                }
                if (off > lo) t->bk[t->n_bk++] = (wmat__dp_bucket){lo, off, l};
            }
            /* trained shared tensors, once per group, after all layers'
             * (their gradient is complete when layer 0's backward is done:
             * a bucket of layer 0); every layer of a group gets them */
            const size_t lo = off;
            for (int g = 0; g < NLIN && ad->n_tshared > 0; g++) {
                int k0 = -1;
                for (int k = 0; k < NLIN && k0 < 0; k++)
                    if ((p.lora_targets & (1u << k)) && wmat__adapter_tgroup(ad, k) == g) k0 = k;
                if (k0 < 0) continue;
                int o, i, rows[NAT], cols[NAT];
                lin_dims(c, k0, &o, &i);
                ad->tshared_shapes(&t->acfg, i, o, rows, cols);
                for (int a = 0; a < ad->n_tshared; a++) {
                    CARVE(t->tw[g * NAT + a], t->tg[g * NAT + a], wmat__adapter_nelem(rows[a], cols[a]));
                    add_slot(t, t->tw[g * NAT + a], t->tg[g * NAT + a], rows[a], cols[a]);
                }
                if ((rc = ad->init_tshared(&t->acfg, t->tw + g * NAT, i, o, &t->rng))) goto fail;
                for (int l = 0; l < L; l++)
                    for (int k = 0; k < NLIN; k++)
                        if (AON(l, k) && wmat__adapter_tgroup(ad, k) == g) {
                            ACFG(l, k)->tw = t->tw + g * NAT;
                            ACFG(l, k)->tg = t->tg + g * NAT;
                        }
            }
            if (off > lo) t->bk[t->n_bk++] = (wmat__dp_bucket){lo, off, 0};
        }
#undef CARVE
        if (adapt && (ad->extra_loss || ad->after_step || ad->status)) {
            if (!(t->al = wmat__calloc((size_t)L * NLIN + 1, sizeof *t->al))) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
                goto fail;
            }
            for (int l = 0; l < L; l++)
                for (int k = 0; k < NLIN; k++)
                    if (AON(l, k)) {
                        int o, i;
                        lin_dims(c, k, &o, &i);
                        t->al[t->n_al++] = (wmat__adapter_layer){ACFG(l, k), AW(l, k), GAW(l, k), t->afix[l * NLIN + k],
                                                                 l, k, i, o};
                    }
            if (ad->status && !(t->astatus = wmat__malloc(ASTATUS_CAP))) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
                goto fail;
            }
        }
        /* the plan's init rows are used up */
        for (int j = 0; j < L * NLIN; j++) t->lcfg[j].init_rows = NULL;
        wmat__free(plan_owned);
        plan_owned = NULL;
        if (frz_n && !(t->frz = wmat__malloc(frz_n * sizeof(float)))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
            goto fail;
        }
        if (off != np) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: parameter layout mismatch");
            goto fail;
        }
    }
    if (t->nranks > 1 &&
        (rc = wmat__dp_create(&t->dp, t->exec.comm, t->grads, t->n_params, t->bk, t->n_bk, p.dp_shards > 0)))
        goto fail;
    if (t->spr > 1) {
        t->sacc = wmat__malloc((size_t)t->spr * t->n_params * sizeof(float));
        t->sloss = wmat__malloc((size_t)t->spr * sizeof(double));
        if (!t->sacc || !t->sloss) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for %d shards' gradients", t->spr);
            goto fail;
        }
    }

    /* ---- precision bf16: a bf16 copy of every f32 linear the forward runs
     * and of the classifier (the embedding when tied); others run their kinds */
    if (t->bf16) {
        const int n = L * NLIN;
        t->lin16 = wmat__calloc((size_t)n, sizeof *t->lin16);
        t->lin16_src = wmat__calloc((size_t)n + 1, sizeof *t->lin16_src);
        if (!t->lin16 || !t->lin16_src) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
            goto fail;
        }
        size_t elems = 0;
        for (int j = 0; j <= n; j++) {
            const wmat_tensor *W = j < n ? t->lin_[j] : t->cls_t;
            if (W && W->dtype == WMAT_F32) elems += ((size_t)W->shape[0] * (size_t)W->shape[1] + 31) & ~(size_t)31;
        }
        t->w16_bytes = elems * sizeof(uint16_t);
        if (!(t->w16 = wmat__aligned_alloc(t->w16_bytes ? t->w16_bytes : 64))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the bf16 weight copies (%zu bytes)", t->w16_bytes);
            goto fail;
        }
        size_t o16 = 0;
        for (int j = 0; j <= n; j++) {
            const wmat_tensor *W = j < n ? t->lin_[j] : t->cls_t;
            if (!W || W->dtype != WMAT_F32) continue;
            uint16_t *d = t->w16 + o16;
            o16 += ((size_t)W->shape[0] * (size_t)W->shape[1] + 31) & ~(size_t)31;
            if (j < n) t->lin16[j] = d;
            else t->cls16 = d;
            t->lin16_src[j] = W->data;
        }
        t->w16_stale = 1;
        t->w16_trained = !adapt || rep; /* else a frozen base: converted once */
    }

    /* ---- the operators' workspace: the largest any kind asks for at BT rows */
    {
        size_t ws = 0;
        for (int i = 0; i <= L * NLIN; i++) {
            const wmat_tensor *W = i < L * NLIN ? t->lin_[i] : t->cls_t;
            if (!W) continue; /* replaced by the adapter */
            const size_t b = wmat__wkind_of(W)->ws_bytes(W, t->BT, &t->ex);
            if (b > ws) ws = b;
        }
        if (ws && !(t->ws = wmat__aligned_alloc(ws))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the weights' workspace (%zu bytes)", ws);
            goto fail;
        }
    }

    /* ---- optimizer states: state k of every slot in one block (its own
     * element type), then the projector's states */
    {
        size_t elems[NST] = {0};
        wmat__proj_sizes pz = {0, 0, 0, 0};
        for (int si = 0; si < t->n_slots; si++) {
            slot *s = &t->slots[si];
            if (pj && s->cols > 0) {
                /* eligible: a linear weight of a layer of a targeted kind */
                for (int l = 0; l < L && !s->proj; l++)
                    for (int k = 0; k < NLIN; k++)
                        if ((p.galore_targets & (1u << k)) && s->p == t->lw_[l * NROLE + lin_role(k)]) s->proj = 1;
            }
            s->n_state = s->n;
            if (s->proj) {
                pj->plan(&t->pp, s->rows, s->cols, &s->n_state, &s->n_proj);
                t->n_proj_floats += s->n_proj;
                size_t own = s->n_proj * sizeof(float), full = 0;
                for (int k = 0; k < opt->n_states; k++) {
                    own += state_elems(opt, k, s->n_state) * opt->states[k].elem_bytes;
                    full += state_elems(opt, k, s->n) * opt->states[k].elem_bytes;
                }
                t->galore_state += own;
                t->galore_adam_equiv += full;
                if (s->rows > pz.max_rows) pz.max_rows = s->rows;
                if (s->cols > pz.max_cols) pz.max_cols = s->cols;
                if (s->n > pz.max_n) pz.max_n = s->n;
                if (s->n_state > pz.max_pn) pz.max_pn = s->n_state;
            }
            for (int k = 0; k < opt->n_states; k++) elems[k] += state_elems(opt, k, s->n_state);
        }
        size_t bytes = t->n_proj_floats * sizeof(float);
        for (int k = 0; k < opt->n_states; k++) bytes += elems[k] * opt->states[k].elem_bytes;
        t->opt_bytes = bytes;
        if ((rc = wmat_arena_create(&t->a_opt, bytes + 2 * (NST + 1) * WMAT_ALIGN))) goto fail;
        for (int k = 0; k < opt->n_states; k++) {
            t->ostates.elems[k] = elems[k];
            t->ostates.base[k] = wmat_arena_alloc(t->a_opt, elems[k] * opt->states[k].elem_bytes + 1);
        }
        t->proj_states = take(t->a_opt, t->n_proj_floats);
        if (!t->proj_states) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: optimizer arena sizing is wrong");
            goto fail;
        }
        size_t off[NST] = {0}, poff = 0;
        for (int si = 0; si < t->n_slots; si++) {
            slot *s = &t->slots[si];
            for (int k = 0; k < opt->n_states; k++) {
                s->state[k] = (char *)t->ostates.base[k] + off[k] * opt->states[k].elem_bytes;
                off[k] += state_elems(opt, k, s->n_state);
            }
            if (s->proj) {
                s->proj_state = t->proj_states + poff;
                poff += s->n_proj;
            }
            if (opt->init) opt->init(s->state, s->n_state);
        }
        if (pj && pz.max_n > 0) {
            const size_t sfl = pj->scratch_floats(&t->pp, &pz);
            if ((rc = wmat_arena_create(&t->a_scratch, sfl * sizeof(float) + 2 * WMAT_ALIGN))) goto fail;
            t->pctx.scratch = take(t->a_scratch, sfl);
            t->pctx.sizes = pz;
            t->pctx.rng = &t->rng;
            if (!t->pctx.scratch) {
                rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: projector scratch sizing is wrong");
                goto fail;
            }
        }
    }

    /* ---- activations */
    {
        size_t aact = 0, ascr = 0; /* the adapter's: the largest any adapted layer asks for */
        for (int l = 0; adapt && l < L; l++)
            for (int k = 0; k < NLIN; k++)
                if (AON(l, k)) {
                    int o, i;
                    lin_dims(c, k, &o, &i);
                    const size_t f = ad->scratch_floats(ACFG(l, k), t->BT, i, o), a = ad->act_floats(ACFG(l, k), t->BT);
                    if (f > ascr) ascr = f;
                    if (a > aact) aact = a;
                }
        size_t per_layer = BT * (6 * (size_t)D + 2 * KV + 3 * (size_t)H + 2);
        for (int k = 0; k < NLIN; k++)
            if (adapt && (p.lora_targets & (1u << k))) per_layer += aact;
        /* recompute: every layer keeps its input x, one set of the rest is
         * shared by all layers (the backward refills it layer by layer) */
        const size_t stored = p.recompute ? BT * (size_t)D * L + (per_layer - BT * (size_t)D) : per_layer * L;
        size_t fl = stored + BT * (size_t)D /* final x */ + BT * (size_t)D + BT /* xnf rf */ +
                    BT * (size_t)V + BT /* logits, losses */ +
                    BT * (6 * (size_t)D + 2 * KV + 3 * (size_t)H) + ascr /* backward */ +
                    (size_t)t->nt * 2 * T * T + T * (size_t)hd + 2 * BT +
                    (adapt && ad->output_side ? BT * (size_t)(H > D ? H : D) : 0);
        size_t bytes = fl * sizeof(float) + (size_t)(40 + 20 * L) * WMAT_ALIGN;
        if ((rc = wmat_arena_create(&t->a_act, bytes))) goto fail;
        wmat_arena *a = t->a_act;
        if (p.recompute)
            for (int l = 0; l <= L; l++) t->acts[l].x = take(a, BT * D);
        for (int l = 0; l <= L; l++) {
            layer_acts *la = &t->acts[l];
            if (p.recompute && l > 0) {
                /* the shared set: layer 0's buffers */
                if (l < L) {
                    float *x = la->x;
                    *la = t->acts[0];
                    la->x = x;
                }
                continue;
            }
            if (!p.recompute) la->x = take(a, BT * D);
            if (l == L) break;
            la->xn1 = take(a, BT * D);
            la->r1 = take(a, BT);
            la->q = take(a, BT * D);
            la->k = take(a, BT * KV);
            la->v = take(a, BT * KV);
            la->ao = take(a, BT * D);
            la->xmid = take(a, BT * D);
            la->xn2 = take(a, BT * D);
            la->r2 = take(a, BT);
            la->hg = take(a, BT * H);
            la->hu = take(a, BT * H);
            la->hs = take(a, BT * H);
            for (int k = 0; k < NLIN; k++)
                if (adapt && (p.lora_targets & (1u << k))) la->aact[k] = take(a, aact);
        }
        t->xnf = take(a, BT * D);
        t->rf = take(a, BT);
        t->logits = take(a, BT * V);
        t->losses = take(a, BT);
        t->dx = take(a, BT * D);
        t->dxn = take(a, BT * D);
        t->dq = take(a, BT * D);
        t->dk = take(a, BT * KV);
        t->dv = take(a, BT * KV);
        t->dao = take(a, BT * D);
        t->tmp = take(a, BT * D);
        t->dhs = take(a, BT * H);
        t->dhg = take(a, BT * H);
        t->dhu = take(a, BT * H);
        t->ascratch = take(a, ascr);
        if (adapt && ad->output_side) t->dyo = take(a, BT * (size_t)(H > D ? H : D));
        t->att_scratch = take(a, (size_t)t->nt * 2 * T * T);
        t->rope_cos = take(a, T * hd / 2);
        t->rope_sin = take(a, T * hd / 2);
        t->inp = (int32_t *)take(a, BT);
        t->tgt = (int32_t *)take(a, BT);
        if (!t->tgt) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: activation arena sizing is wrong");
            goto fail;
        }
        wmat__rope_tables(c, 0, (int)T, t->rope_cos, t->rope_sin);
    }
    /* ---- precision bf16: the GEMM inputs' bf16 copies (one set per layer,
     * or one shared set with recompute, as the activations), the final
     * norm's output and one output gradient */
    if (t->bf16) {
        const size_t set = BT * (3 * (size_t)D + H), sets = p.recompute ? 1 : (size_t)L;
        const size_t dyw = (size_t)(H > V ? H : V) > (size_t)D ? (size_t)(H > V ? H : V) : (size_t)D;
        const size_t elems = sets * set + BT * (size_t)D + BT * dyw;
        t->a16_bytes = elems * sizeof(uint16_t);
        if (!(t->a16 = wmat__aligned_alloc(t->a16_bytes))) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the bf16 activations (%zu bytes)", t->a16_bytes);
            goto fail;
        }
        uint16_t *q = t->a16;
        for (int l = 0; l < L; l++) {
            layer_acts *la = &t->acts[l];
            if (p.recompute && l > 0) {
                memcpy(la->x16, t->acts[0].x16, sizeof la->x16);
                continue;
            }
            la->x16[X16_XN1] = q, q += BT * D;
            la->x16[X16_AO] = q, q += BT * D;
            la->x16[X16_XN2] = q, q += BT * D;
            la->x16[X16_HS] = q, q += BT * H;
        }
        t->xnf16 = q, q += BT * D;
        t->dy16 = q;
    }

    /* ---- full / projected: a model whose tensors are views of the params;
     * a replacing adapter: the same, its layers as weights of their small
     * kinds (rebuilt from the params by wmat_trainer_model) */
    if (!adapt || rep) {
        if ((rc = wmat_model_create(&t->view, c))) goto fail;
        for (int i = 0; i < wmat_model_n_tensors(t->view); i++) {
            wmat_tensor *tt = wmat_model_tensor(t->view, i);
            float *dst = NULL;
            if (tt == wmat_model_tok_embeddings(t->view)) dst = t->emb;
            else if (tt == wmat_model_final_norm(t->view)) dst = t->fnorm;
            else if (!c->tied_embeddings && tt == wmat_model_classifier(t->view)) dst = t->cls;
            for (int l = 0; l < L && !dst; l++)
                for (int w = 0; w < NROLE; w++)
                    if (tt == wmat_model_layer_tensor(t->view, l, (wmat_layer_weight)w)) dst = t->lw_[l * NROLE + w];
            for (int l = 0; l < L && !dst && t->gmm_; l++) {
                char name[WMAT_NAME_MAX];
                wmat__gmm_mask_name(name, sizeof name, l);
                if (tt == wmat_model_find(t->view, name)) dst = t->gmm_[l];
            }
            if (!dst && rep) continue; /* a replaced linear: refresh_replaced() below */
            if (!dst) {
                rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: tensor %s has no parameter", tt->name);
                goto fail;
            }
            if (tt->flags & WMAT_TF_OWNED) wmat__free(tt->data);
            tt->data = dst;
            tt->flags &= ~WMAT_TF_OWNED;
        }
        wmat_tokenizer *tk = wmat_model_tokenizer(m), *cp = NULL;
        if (tk && !wmat_tokenizer_clone(tk, &cp)) wmat_model_set_tokenizer(t->view, cp);
        if (rep && !ad->not_mergeable && (rc = refresh_replaced(t))) goto fail; /* MemoryFormer: no weight form */
    }
    wmat__free(rest);
    *out = t;
    return WMAT_OK;
fail:
    wmat__free(rest);
    wmat__free(plan_owned);
    wmat_trainer_free(t);
    return rc;
}

/* ------------------------------------------------------------ data */

int wmat_trainer_set_data(wmat_trainer *t, const int32_t *tokens, size_t n)
{
    if (n < (size_t)t->T + 1)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "train: the data has %zu tokens, shorter than one window of %d (context %d + 1)", n,
                              t->T + 1, t->T);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= t->c.vocab_size)
            return wmat_set_error(WMAT_ERR_INVALID, "train: token %d at index %zu is outside the vocabulary (%d)", tokens[i],
                                  i, t->c.vocab_size);
    wmat__free(t->perm);
    t->perm = NULL;
    t->data = tokens;
    t->n_data = n;
    t->n_windows = (n - 1) / (size_t)t->T;
    if (t->p.shuffle) {
        t->perm = wmat__malloc(t->n_windows * sizeof(uint32_t));
        if (!t->perm) return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
        t->perm_epoch = UINT64_MAX;
    }
    return WMAT_OK;
}

static void make_perm(wmat_trainer *t, uint64_t epoch)
{
    wmat_rng r;
    wmat_rng_seed(&r, t->p.seed ^ (0x9E3779B97F4A7C15ull * (epoch + 1)));
    for (size_t i = 0; i < t->n_windows; i++) t->perm[i] = (uint32_t)i;
    for (size_t i = t->n_windows; i > 1; i--) {
        size_t j = (size_t)(wmat_rng_u64(&r) % i);
        uint32_t x = t->perm[i - 1];
        t->perm[i - 1] = t->perm[j];
        t->perm[j] = x;
    }
    t->perm_epoch = epoch;
}

/* Shard `shard` of the micro-batch at the cursor (which moves on by the
 * whole micro-batch once its shards have run). */
static void next_batch(wmat_trainer *t, int shard)
{
    for (int b = 0; b < t->B; b++) {
        uint64_t cur = t->cursor + (uint64_t)shard * (uint64_t)t->B + (uint64_t)b;
        uint64_t epoch = cur / t->n_windows, idx = cur % t->n_windows;
        size_t w = idx;
        if (t->perm) {
            if (t->perm_epoch != epoch) make_perm(t, epoch);
            w = t->perm[idx];
        }
        const int32_t *src = t->data + w * (size_t)t->T;
        memcpy(t->inp + (size_t)b * t->T, src, (size_t)t->T * sizeof(int32_t));
        memcpy(t->tgt + (size_t)b * t->T, src + 1, (size_t)t->T * sizeof(int32_t));
    }
}

/* ------------------------------------------------------------ forward / backward */

#define LW(l, w) t->lw_[(l) * NROLE + (w)]
#define GLW(l, w) t->glw_[(l) * NROLE + (w)]

#define LIN(l, k) t->lin_[(l) * NLIN + (k)]

/* The linear layer: the base operator's forward (its kind's: a frozen
 * q4_0 base runs as q4_0), then the adapter's path where there is one. */
/* Which bf16 copy of layer l's activations linear k reads. */
static int x16_slot(int k)
{
    switch (k) {
    case WMAT_LIN_Q: case WMAT_LIN_K: case WMAT_LIN_V: return X16_XN1;
    case WMAT_LIN_O: return X16_AO;
    case WMAT_LIN_GATE: case WMAT_LIN_UP: return X16_XN2;
    default: return X16_HS;
    }
}

/* Precision bf16: layer l's input X of linear k as bf16, converted by the
 * first linear of this block forward that reads it. */
static const uint16_t *x16_of(wmat_trainer *t, int l, int k, const float *X, int BT, int in)
{
    layer_acts *a = &t->acts[l];
    const int s = x16_slot(k);
    if (a->g16[s] != t->gen16) {
        to_bf16(a->x16[s], X, (size_t)BT * in, t->nt);
        a->g16[s] = t->gen16;
    }
    return a->x16[s];
}

static int lin_fwd(wmat_trainer *t, float *Y, const float *X, int l, int k, int BT)
{
    int o, i;
    lin_dims(&t->c, k, &o, &i);
    const wmat_tensor *W = LIN(l, k);
    const uint16_t *W16 = t->bf16 ? t->lin16[l * NLIN + k] : NULL;
    if (W16) {
        int rc = gemm16(t, 0, 1, BT, o, i, x16_of(t, l, k, X, BT, i), i, W16, i, 0, Y, o);
        if (rc) return rc;
    } else if (W) wmat__wkind_of(W)->forward(W, X, Y, BT, 0, t->ws, &t->ex);
    else memset(Y, 0, (size_t)BT * o * sizeof(float)); /* no base: the adapter is the layer */
    float *const *w = AW(l, k);
    if (w[0])
        t->adapter->forward(ACFG(l, k), Y, t->acts[l].aact[k], t->ascratch, X, (const float *const *)w,
                            t->afix[l * NLIN + k], W, BT, i, o);
    return WMAT_OK;
}

/* dW += dY^T X where the base trains (f32 params), dX (= or += with acc)
 * dY W through the base kind's backward, then the adapter's backward. */
static int lin_bwd(wmat_trainer *t, float *dX, const float *dY, const float *X, int l, int k, int BT, int acc)
{
    int o, i;
    lin_dims(&t->c, k, &o, &i);
    const wmat_tensor *W = LIN(l, k);
    float *gW = GLW(l, lin_role(k));
    float *const *w = AW(l, k);
    if (w[0] && t->adapter->output_side) {
        /* the adapter transformed the base output: its backward gives the
         * gradient of that output, from which the base's runs */
        t->adapter->backward(ACFG(l, k), t->dyo, GAW(l, k), t->ascratch, dY, NULL, (const float *const *)w,
                             t->afix[l * NLIN + k], W, t->acts[l].aact[k], BT, i, o);
        dY = t->dyo;
    }
    const uint16_t *W16 = t->bf16 ? t->lin16[l * NLIN + k] : NULL;
    if (t->bf16 && (gW || W16)) {
        /* dY as bf16 once for both products; X's copy is the forward's */
        to_bf16(t->dy16, dY, (size_t)BT * o, t->nt);
        int rc = WMAT_OK;
        if (gW) rc = gemm16(t, 1, 0, o, i, BT, t->dy16, o, t->acts[l].x16[x16_slot(k)], i, 1, gW, i);
        if (!rc && W16) rc = gemm16(t, 0, 0, BT, i, o, t->dy16, o, W16, i, acc, dX, i);
        if (rc) return rc;
    } else if (gW) {
        wmat__linear_backward(NULL, gW, dY, X, NULL, BT, i, o, 0);
    }
    if (W16)
        ; /* done above */
    else if (W) wmat__wkind_of(W)->backward(W, dY, dX, BT, acc, t->ws, &t->ex);
    else if (!acc) memset(dX, 0, (size_t)BT * i * sizeof(float));
    if (w[0] && !t->adapter->output_side)
        t->adapter->backward(ACFG(l, k), dX, GAW(l, k), t->ascratch, dY, X, (const float *const *)w,
                             t->afix[l * NLIN + k], W, t->acts[l].aact[k], BT, i, o);
    return WMAT_OK;
}

/* The shared block's linear product: the layer's linear (base, then the
 * adapter); with acc the product goes through scratch and is added, as
 * the residual x + f(x). */
static int tr_linear(void *user, int l, wmat_linear_kind k, float *Y, const float *X, int BT, int acc)
{
    wmat_trainer *t = user;
    int rc = lin_fwd(t, acc ? t->tmp : Y, X, l, k, BT);
    if (rc) return rc;
    if (acc) {
        int o, i;
        lin_dims(&t->c, k, &o, &i);
        for (size_t j = 0; j < (size_t)BT * o; j++) Y[j] += t->tmp[j];
    }
    return WMAT_OK;
}

/* The attention whose probabilities wmat__attention_backward recomputes. */
static void tr_attention(void *user, int l, float *out, const float *q, const float *k, const float *v, int B, int T)
{
    wmat_trainer *t = user;
    const wmat_config *c = &t->c;
    if (t->gmm_) {
        /* the Gaussian-mixture mask: the runtime's own per-head forward */
        const int nh = c->n_heads, hd = c->head_dim, QD = nh * hd, KV = c->n_kv_heads * hd, grp = nh / c->n_kv_heads;
        const int K = c->gmm_kernels;
        const float *par = t->gmm_[l];
#pragma omp parallel for num_threads(t->nt) schedule(static) collapse(2)
        for (int b = 0; b < B; b++)
            for (int h = 0; h < nh; h++)
                wmat__gmm_head_forward(out + (size_t)b * T * QD + (size_t)h * hd, QD, q + (size_t)b * T * QD + (size_t)h * hd,
                                       QD, k + (size_t)b * T * KV + (size_t)(h / grp) * hd,
                                       v + (size_t)b * T * KV + (size_t)(h / grp) * hd, KV, T, hd, par + (size_t)h * 2 * K,
                                       K, t->att_scratch + (size_t)omp_get_thread_num() * 2 * T * T);
        return;
    }
    wmat__attention_forward(out, q, k, v, B, T, c->n_heads, c->n_kv_heads, c->head_dim, t->att_scratch, t->nt);
}

int wmat__trainer_fwdbwd(wmat_trainer *t, const int32_t *inputs, const int32_t *targets, int B, int T, float dscale,
                         int zero_grad, int no_backward, double *loss)
{
    const wmat_config *c = &t->c;
    if (B > t->B || T != t->T || B <= 0)
        return wmat_set_error(WMAT_ERR_INVALID, "train: batch %d x %d does not fit the trainer's %d x %d", B, T, t->B, t->T);
    const int L = c->n_layers, D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    const int KV = c->n_kv_heads * hd, BT = B * T, nt = t->nt;
    for (int i = 0; i < BT; i++)
        if (inputs[i] < 0 || inputs[i] >= V || targets[i] < 0 || targets[i] >= V)
            return wmat_set_error(WMAT_ERR_INVALID, "train: token outside the vocabulary (%d)", V);
    if (zero_grad) memset(t->grads, 0, t->n_params * sizeof(float));
    refresh_w16(t);
    if (t->emb) {
        wmat__embed_forward(t->acts[0].x, inputs, t->emb, BT, D);
    } else {
        const wmat_wkind *ek = wmat__wkind_of(t->emb_t);
        for (int i = 0; i < BT; i++) ek->dequant_rows(t->emb_t, inputs[i], 1, t->acts[0].x + (size_t)i * D);
    }
    const wmat_block_ops ops = {tr_linear, tr_attention, t, NULL};
    for (int l = 0; l < L; l++) {
        layer_acts *a = &t->acts[l];
        const wmat_block_cfg cfg = {c, LW(l, WMAT_W_ATTN_NORM), LW(l, WMAT_W_FFN_NORM), t->rope_cos, t->rope_sin, 0, nt};
        const wmat_block_bufs b = {a->x,  a->xn1, a->r1, a->q,  a->k,  a->v,  a->ao,
                                   a->xmid, a->xn2, a->r2, a->hg, a->hu, a->hs, t->acts[l + 1].x, NULL};
        t->gen16++;
        int rc = wmat__block_forward(&cfg, &ops, l, &b, B, T);
        if (rc) return rc;
    }
    wmat__rmsnorm(t->xnf, t->rf, t->acts[L].x, t->fnorm, BT, D, c->norm_eps, 0, nt);
    const wmat_wkind *ck = wmat__wkind_of(t->cls_t);
    if (t->cls16) {
        to_bf16(t->xnf16, t->xnf, (size_t)BT * D, nt);
        int rc = gemm16(t, 0, 1, BT, V, D, t->xnf16, D, t->cls16, D, 0, t->logits, V);
        if (rc) return rc;
    } else {
        ck->forward(t->cls_t, t->xnf, t->logits, BT, 0, t->ws, &t->ex);
    }
    if (no_backward) {
        /* loss only */
        double tot = 0.0;
        for (int i = 0; i < BT; i++) {
            const float *row = t->logits + (size_t)i * V;
            float mx = row[0];
            for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            double s = 0.0;
            for (int j = 0; j < V; j++) s += exp((double)row[j] - mx);
            tot += log(s) + mx - row[targets[i]];
        }
        *loss = tot / BT;
        return WMAT_OK;
    }
    *loss = wmat__xent_forward_backward(t->logits, t->losses, targets, BT, V, dscale, nt);
    /* classifier: dxnf = dlogits cls ; dcls += dlogits^T xnf */
    if (t->cls16) {
        to_bf16(t->dy16, t->logits, (size_t)BT * V, nt);
        int rc = t->gcls ? gemm16(t, 1, 0, V, D, BT, t->dy16, V, t->xnf16, D, 1, t->gcls, D) : WMAT_OK;
        if (!rc) rc = gemm16(t, 0, 0, BT, D, V, t->dy16, V, t->cls16, D, 0, t->dxn, D);
        if (rc) return rc;
    } else {
        if (t->gcls) wmat_sgemm(1, 0, V, D, BT, 1.0f, t->logits, V, t->xnf, D, 1.0f, t->gcls, D);
        ck->backward(t->cls_t, t->logits, t->dxn, BT, 0, t->ws, &t->ex);
    }
    memset(t->dx, 0, (size_t)BT * D * sizeof(float));
    float *gf = t->gfnorm ? t->gfnorm : t->tmp; /* frozen norms: gradient goes to scratch */
    wmat__rmsnorm_backward(t->dx, gf, t->dxn, t->acts[L].x, t->fnorm, t->rf, BT, D, nt);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &t->acts[l];
        if (t->p.recompute && l < L - 1) {
            /* refill the shared activations with layer l's: the same
             * forward on the same input, so the same numbers; its output
             * (layer l+1's input, still stored) goes to dq, unused here */
            const wmat_block_cfg cfg = {c, LW(l, WMAT_W_ATTN_NORM), LW(l, WMAT_W_FFN_NORM), t->rope_cos, t->rope_sin, 0, nt};
            const wmat_block_bufs b = {a->x,  a->xn1, a->r1, a->q,  a->k,  a->v,  a->ao,
                                       a->xmid, a->xn2, a->r2, a->hg, a->hu, a->hs, t->dq, NULL};
            t->gen16++;
            int rc = wmat__block_forward(&cfg, &ops, l, &b, B, T);
            if (rc) return rc;
        }
        /* FFN: x[l+1] = xmid + down(swiglu(gate(xn2), up(xn2))) */
        int rc;
        if ((rc = lin_bwd(t, t->dhs, t->dx, a->hs, l, WMAT_LIN_DOWN, BT, 0))) return rc;
        wmat__swiglu_backward(t->dhg, t->dhu, t->dhs, a->hg, a->hu, (size_t)BT * H, nt);
        if ((rc = lin_bwd(t, t->dxn, t->dhg, a->xn2, l, WMAT_LIN_GATE, BT, 0)) ||
            (rc = lin_bwd(t, t->dxn, t->dhu, a->xn2, l, WMAT_LIN_UP, BT, 1)))
            return rc;
        float *gn = GLW(l, WMAT_W_FFN_NORM) ? GLW(l, WMAT_W_FFN_NORM) : t->tmp;
        wmat__rmsnorm_backward(t->dx, gn, t->dxn, a->xmid, LW(l, WMAT_W_FFN_NORM), a->r2, BT, D, nt);
        /* attention: xmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))) */
        if ((rc = lin_bwd(t, t->dao, t->dx, a->ao, l, WMAT_LIN_O, BT, 0))) return rc;
        if (t->gmm_) {
            if ((rc = wmat__gmm_attention_backward(t->dq, t->dk, t->dv, t->ggmm_[l], t->dao, a->q, a->k, a->v, B, T,
                                                   c->n_heads, c->n_kv_heads, hd, t->gmm_[l], c->gmm_kernels, nt)))
                return rc;
        } else {
            wmat__attention_backward(t->dq, t->dk, t->dv, t->dao, a->q, a->k, a->v, B, T, c->n_heads, c->n_kv_heads, hd,
                                     t->att_scratch, nt);
        }
        wmat__rope_backward(t->dq, BT, T, c->n_heads, hd, t->rope_cos, t->rope_sin, nt);
        wmat__rope_backward(t->dk, BT, T, c->n_kv_heads, hd, t->rope_cos, t->rope_sin, nt);
        if ((rc = lin_bwd(t, t->dxn, t->dq, a->xn1, l, WMAT_LIN_Q, BT, 0)) ||
            (rc = lin_bwd(t, t->dxn, t->dk, a->xn1, l, WMAT_LIN_K, BT, 1)) ||
            (rc = lin_bwd(t, t->dxn, t->dv, a->xn1, l, WMAT_LIN_V, BT, 1)))
            return rc;
        gn = GLW(l, WMAT_W_ATTN_NORM) ? GLW(l, WMAT_W_ATTN_NORM) : t->tmp;
        wmat__rmsnorm_backward(t->dx, gn, t->dxn, a->x, LW(l, WMAT_W_ATTN_NORM), a->r1, BT, D, nt);
        /* layer l's gradients are complete: its bucket can go */
        if (t->dp) {
            int rc = wmat__dp_layer_done(t->dp, l);
            if (rc) return rc;
        }
    }
    if (t->gemb) wmat__embed_backward(t->gemb, t->dx, inputs, BT, D);
    (void)KV;
    return WMAT_OK;
}

float *wmat__trainer_logits(wmat_trainer *t) { return t->logits; }
float *wmat__trainer_params(wmat_trainer *t, size_t *n)
{
    *n = t->n_params;
    t->w16_stale = 1; /* the caller may write them */
    return t->params;
}
float *wmat__trainer_grads(wmat_trainer *t, size_t *n)
{
    *n = t->n_params;
    return t->grads;
}
float *wmat__trainer_linear_grad(wmat_trainer *t, int l, int k)
{
    if (t->adapter || l < 0 || l >= t->c.n_layers || k < 0 || k >= NLIN) return NULL;
    return GLW(l, lin_role(k));
}
float *wmat__trainer_classifier_grad(wmat_trainer *t) { return t->adapter ? NULL : t->gcls; }

/* ------------------------------------------------------------ optimizer */

static float lr_at(const wmat_train_params *p, int step)
{
    if (p->warmup > 0 && step < p->warmup) return p->lr * (float)(step + 1) / (float)p->warmup;
    int span = p->steps - p->warmup;
    if (span <= 0) return p->lr;
    double prog = (double)(step - p->warmup) / (double)span;
    if (prog > 1) prog = 1;
    return p->min_lr + (float)(0.5 * (1.0 + cos(M_PI * prog))) * (p->lr - p->min_lr);
}

int wmat_trainer_step(wmat_trainer *t, wmat_train_step_info *info)
{
    if (!t->data) return wmat_set_error(WMAT_ERR_INVALID, "train: no data (call wmat_trainer_set_data)");
    const wmat_train_params *p = &t->p;
    double t0 = wmat__now();
    const size_t n = t->n_params;
    const int S = t->nranks * t->spr;
    memset(t->grads, 0, n * sizeof(float));
    if (t->spr > 1) {
        memset(t->sacc, 0, (size_t)t->spr * n * sizeof(float));
        memset(t->sloss, 0, (size_t)t->spr * sizeof(double));
    }
    /* every shard's dscale is the global batch's: the sum is the mean gradient */
    const float dscale = 1.0f / ((float)t->BT * (float)S * (float)p->grad_accum);
    double loss = 0.0;
    for (int a = 0; a < p->grad_accum; a++) {
        for (int j = 0; j < t->spr; j++) {
            next_batch(t, t->rank * t->spr + j);
            if (t->dp) wmat__dp_arm(t->dp, a == p->grad_accum - 1);
            /* shards of one rank: each accumulates apart, as on its own rank */
            if (t->spr > 1) memcpy(t->grads, t->sacc + (size_t)j * n, n * sizeof(float));
            double l;
            int rc = wmat__trainer_fwdbwd(t, t->inp, t->tgt, t->B, t->T, dscale, 0, 0, &l);
            if (rc) return rc;
            if (t->spr > 1) {
                memcpy(t->sacc + (size_t)j * n, t->grads, n * sizeof(float));
                t->sloss[j] += l;
            } else {
                loss += l;
            }
        }
        t->cursor += (uint64_t)t->B * (uint64_t)S;
    }
    if (t->spr > 1) {
        wmat__dp_tree_f32(t->sacc, t->spr, n, t->nt);
        memcpy(t->grads, t->sacc, n * sizeof(float));
        wmat__dp_tree_f64(t->sloss, t->spr);
        loss = t->sloss[0];
    }
    double tc = wmat__now();
    if (t->dp) {
        int rc = wmat__dp_finish(t->dp, &loss);
        if (rc) return rc;
    }
    tc = wmat__now() - tc;
    loss /= p->grad_accum;
    if (S > 1) loss /= S;
    /* the adapter's own loss term (AdaLoRA's orthogonality penalty), once
     * per step on the summed gradients: the same on every rank */
    double aux = 0.0;
    if (t->adapter && t->adapter->extra_loss) aux = t->adapter->extra_loss(&t->acfg, t->al, t->n_al);
    loss += aux;
    if (!isfinite(loss)) return wmat_set_error(WMAT_ERR_NUMERIC, "train: the loss is %g at step %d", loss, t->step);
    /* an adapter's frozen parts (LaMDA's leading columns of B): no gradient */
    for (int si = 0; si < t->n_slots && t->frz; si++) {
        slot *s = &t->slots[si];
        const int cols = s->cols ? s->cols : 1;
        const int fc = s->frozen =
            s->atensor < 0 ? 0 : t->adapter->frozen_cols(s->acfg, s->atensor, cols, t->step, p->steps);
        for (int r = 0; r < s->rows && fc > 0; r++)
            memset(s->g + (size_t)r * cols, 0, (size_t)(fc < cols ? fc : cols) * sizeof(float));
    }
    /* global norm, serial in double (deterministic) */
    double ss = 0.0;
    for (size_t i = 0; i < t->n_params; i++) ss += (double)t->grads[i] * t->grads[i];
    const float norm = (float)sqrt(ss);
    if (p->grad_clip > 0 && norm > p->grad_clip) {
        const float f = p->grad_clip / norm;
        for (size_t i = 0; i < t->n_params; i++) t->grads[i] *= f;
    }
    const float lr = lr_at(p, t->step);
    wmat__optim_hparams h = {.lr = lr, .beta1 = p->beta1, .beta2 = p->beta2, .eps = p->eps, .momentum = p->momentum,
                             .step = t->step + 1, .nt = t->nt};
    t->pctx.step0 = t->step;
    for (int si = 0; si < t->n_slots; si++) {
        slot *s = &t->slots[si];
        h.weight_decay = s->decay ? p->weight_decay : 0.0f;
        /* frozen columns: no step at all for a whole frozen tensor; else
         * their values are put back after it (momentum, decay) */
        const int cols = s->cols ? s->cols : 1;
        const int fc = s->frozen; /* set with the gradients above (0 unless frozen_cols) */
        if (fc >= cols) continue;
        if (!s->proj) {
            for (int r = 0; r < s->rows && fc > 0; r++)
                memcpy(t->frz + (size_t)r * fc, s->p + (size_t)r * cols, (size_t)fc * sizeof(float));
            t->opt->step(s->p, s->g, s->state, s->n_state, &h);
            for (int r = 0; r < s->rows && fc > 0; r++)
                memcpy(s->p + (size_t)r * cols, t->frz + (size_t)r * fc, (size_t)fc * sizeof(float));
        } else {
            const wmat__proj_target tg = {s->p, s->g, s->rows, s->cols, s->state, s->proj_state};
            int rc = t->proj->step(&t->pp, &t->pctx, &tg, &h, t->opt);
            if (rc) return rc;
        }
        /* an adapter's penalty as its proximal step (S2-LoRA's L1 on lambda) */
        if (s->atensor >= 0 && t->adapter->prox) t->adapter->prox(s->acfg, s->atensor, s->p, s->n, lr);
    }
    t->step++;
    if (t->w16_trained) t->w16_stale = 1;
    /* the adapter's per-step hook (AdaLoRA's importance and budget), with
     * this step's gradients and the updated weights */
    if (t->adapter && t->adapter->after_step) {
        int rc = t->adapter->after_step(&t->acfg, t->al, t->n_al, t->step - 1, p->steps);
        if (rc) return rc;
    }
    if (info) {
        info->step = t->step;
        info->loss = loss;
        info->aux_loss = aux;
        info->lr = lr;
        info->grad_norm = norm;
        info->seconds = wmat__now() - t0;
        info->comm_seconds = t->dp ? tc : 0.0;
        info->tokens = (uint64_t)t->BT * p->grad_accum * (uint64_t)S; /* the global batch */
    }
    return WMAT_OK;
}

int wmat_trainer_steps_done(const wmat_trainer *t) { return t->step; }

/* ------------------------------------------------------------ views, eval */

/* An adopting entry's model (the trained model it writes and evaluates):
 * the base's tensors, f32 ones copied and those of other kinds shared as
 * stored, and each adapted layer rebuilt in its stored kinds from the
 * current tensors over its original base. Built anew each time (its
 * weights are new objects), so the runtime over the old one goes. */
static int adopted_view(wmat_trainer *t, wmat_model **out)
{
    const wmat_config *c = &t->c;
    wmat_runtime_free(t->rt);
    t->rt = NULL;
    wmat_model_free(t->view);
    t->view = NULL;
    int rc = wmat_model_create(&t->view, c);
    if (rc) return rc;
    wmat_tokenizer *tk = wmat_model_tokenizer(t->base), *cp = NULL;
    if (tk && !wmat_tokenizer_clone(tk, &cp)) wmat_model_set_tokenizer(t->view, cp);
    for (int i = 0; i < wmat_model_n_tensors(t->base); i++) {
        wmat_tensor *src = wmat_model_tensor(t->base, i), *dst = wmat_model_find(t->view, src->name);
        if (!dst || dst->dtype != WMAT_F32 || dst->ndim != src->ndim || dst->shape[0] != src->shape[0] ||
            (src->ndim == 2 && dst->shape[1] != src->shape[1]))
            return wmat_set_error(WMAT_ERR_INTERNAL, "train: model copy mismatch at %s", src->name);
        if (src->ndim == 2 && src->dtype != WMAT_F32) {
            /* the base outlives the view: its weight is read, not owned */
            wmat__tensor_free_data(dst);
            dst->data = src->data;
            dst->dtype = src->dtype;
            dst->flags = src->flags & ~WMAT_TF_OWNED;
            dst->nbytes = src->nbytes;
        } else {
            copy_f32(dst->data, src);
        }
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < NLIN; k++) {
            if (!AON(l, k)) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            wmat_tensor tmp;
            memset(&tmp, 0, sizeof tmp);
            if ((rc = t->adapter->to_weight_over(ACFG(l, k), (const float *const *)AW(l, k),
                                                 wmat_model_linear(t->base, l, (wmat_linear_kind)k), i, o, &tmp)))
                return rc;
            wmat__tensor_set_obj(wmat_model_linear(t->view, l, (wmat_linear_kind)k), tmp.data);
        }
    *out = t->view;
    return WMAT_OK;
}

int wmat_trainer_model(wmat_trainer *t, wmat_model **out)
{
    *out = NULL;
    if (t->p.method != WMAT_TRAIN_LORA) {
        *out = t->view;
        return WMAT_OK;
    }
    if (t->adapter->not_mergeable) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "train: %s", t->adapter->not_mergeable);
    if (t->rep) {
        int rc = refresh_replaced(t);
        if (rc) return rc;
        *out = t->view;
        return WMAT_OK;
    }
    if (t->adapter->adopt) return adopted_view(t, out);
    const wmat_config *c = &t->c;
    int rc;
    if (!t->view) {
        if ((rc = wmat_model_create(&t->view, c))) return rc;
        wmat_tokenizer *tk = wmat_model_tokenizer(t->base), *cp = NULL;
        if (tk && !wmat_tokenizer_clone(tk, &cp)) wmat_model_set_tokenizer(t->view, cp);
    }
    /* the merged model is an f32 copy: the base dequantized from its
     * stored kinds (an adapter cannot be added into q4_0 codes exactly) */
    for (int i = 0; i < wmat_model_n_tensors(t->base); i++) {
        wmat_tensor *src = wmat_model_tensor(t->base, i), *dst = wmat_model_find(t->view, src->name);
        if (!dst || dst->dtype != WMAT_F32 || dst->ndim != src->ndim || dst->shape[0] != src->shape[0] ||
            (src->ndim == 2 && dst->shape[1] != src->shape[1]))
            return wmat_set_error(WMAT_ERR_INTERNAL, "train: merged copy mismatch at %s", src->name);
        copy_f32(dst->data, src);
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < NLIN; k++) {
            float *const *w = AW(l, k);
            if (!w[0]) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            if ((rc = t->adapter->merge(ACFG(l, k), wmat_model_linear(t->view, l, (wmat_linear_kind)k)->data,
                                        (const float *const *)w, t->afix[l * NLIN + k], i, o)))
                return rc;
        }
    *out = t->view;
    return WMAT_OK;
}

/* A model the runtime cannot run (an adapter that is not a weight delta):
 * wmat_eval_tokens's windows through the trainer's own forward, one window
 * at a time at the trainer's context; whole windows only. */
static int own_eval(wmat_trainer *t, const int32_t *tokens, size_t n, int ctx, int max_windows, wmat_eval_result *res)
{
    const int T = t->T, V = t->c.vocab_size;
    if (ctx != T)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "train: %s is evaluated through the trainer's forward, at its context %d only (asked %d)",
                              t->adapter->name, T, ctx);
    if (n < 2) return wmat_set_error(WMAT_ERR_INVALID, "eval: need at least 2 tokens, got %zu", n);
    size_t nw = (n - 1 + (size_t)T - 1) / (size_t)T;
    if (max_windows > 0 && nw > (size_t)max_windows) nw = (size_t)max_windows;
    if (nw * (size_t)T + 1 > n)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "train: %s's evaluation through the trainer's forward scores whole windows of %d only: "
                              "the stream of %zu tokens ends in a partial one (give --max-windows %zu)",
                              t->adapter->name, T, n, (n - 1) / (size_t)T);
    const double t0 = wmat__now();
    double tot = 0, tot2 = 0;
    for (size_t w = 0; w < nw; w++) {
        const int32_t *wt = tokens + w * (size_t)T;
        double l;
        int rc = wmat__trainer_fwdbwd(t, wt, wt + 1, 1, T, 1.0f, 0, 1, &l);
        if (rc) return rc;
        for (int i = 0; i < T; i++) {
            const float *row = t->logits + (size_t)i * V;
            float mx = row[0];
            for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            double se = 0.0;
            for (int j = 0; j < V; j++) se += exp((double)row[j] - mx);
            const double nll = log(se) + mx - row[wt[i + 1]];
            tot += nll;
            tot2 += nll * nll;
        }
    }
    memset(res, 0, sizeof *res);
    const uint64_t scored = (uint64_t)nw * (uint64_t)T;
    res->seconds = wmat__now() - t0;
    res->tokens_scored = scored;
    res->windows = (int)nw;
    res->mean_nll = tot / (double)scored;
    res->ppl = exp(res->mean_nll);
    res->tokens_per_s = res->seconds > 0 ? (double)scored / res->seconds : 0.0;
    const double var = tot2 / (double)scored - res->mean_nll * res->mean_nll;
    res->ppl_err = var > 0 && scored > 1 ? res->ppl * sqrt(var / (double)(scored - 1)) : 0.0;
    return WMAT_OK;
}

int wmat_trainer_eval(wmat_trainer *t, const int32_t *tokens, size_t n, int ctx, int max_windows, wmat_eval_result *res)
{
    if (t->adapter && t->adapter->not_mergeable) {
        if (ctx <= 0 || ctx > t->c.seq_len) ctx = t->T;
        return own_eval(t, tokens, n, ctx, max_windows, res);
    }
    wmat_model *m;
    int rc = wmat_trainer_model(t, &m);
    if (rc) return rc;
    if (ctx <= 0 || ctx > t->c.seq_len) ctx = t->T;
    if (t->rt && t->rt_ctx != ctx) {
        wmat_runtime_free(t->rt);
        t->rt = NULL;
    }
    if (!t->rt) {
        wmat_runtime_params rp = wmat_runtime_default_params();
        rp.max_batch_tokens = ctx;
        rp.kv_cache_len = 1;
        wmat_context ec = t->exec;
        ec.progress = NULL;
        rp.ctx = &ec;
        if ((rc = wmat_runtime_create(&t->rt, m, &rp))) return rc;
        t->rt_ctx = ctx;
    }
    return wmat_eval_tokens(t->rt, tokens, n, ctx, max_windows, res);
}

void wmat_trainer_memory(const wmat_trainer *t, wmat_train_memory *mem)
{
    memset(mem, 0, sizeof *mem);
    size_t base = 0; /* the base as stored (a frozen q4_0 base counts its q4_0 bytes) */
    for (int i = 0; i < wmat_model_n_tensors(t->base); i++) {
        const wmat_tensor *tt = wmat_model_tensor(t->base, i);
        const wmat_wkind *k = tt->ndim == 2 ? wmat__wkind_of(tt) : NULL;
        base += k ? (size_t)k->nbytes(tt) : tt->nbytes;
    }
    /* a replacing adapter reads no base: its weights are the parameters
     * and the frozen supports */
    mem->weights = t->p.method == WMAT_TRAIN_LORA && !t->rep
                       ? base + t->n_params * sizeof(float) + t->fixed_bytes + t->base_copy_bytes /* PiSSA's residuals */
                       : t->n_params * sizeof(float) + t->fixed_bytes;
    mem->grads = t->n_params * sizeof(float);
    mem->optim = t->opt_bytes;
    mem->optim_scratch = t->a_scratch ? wmat_arena_capacity(t->a_scratch) : 0;
    mem->activations = wmat_arena_capacity(t->a_act);
    mem->peak_rss = wmat_peak_rss();
    mem->trainable = (int64_t)t->n_params;
    mem->galore_state = t->galore_state;
    mem->galore_adam_equiv = t->galore_adam_equiv;
    mem->bf16 = t->w16_bytes + t->a16_bytes;
}

/* ------------------------------------------------------------ checkpoints */

static void fingerprint(const wmat_trainer *t, char *buf, size_t n)
{
    const wmat_config *c = &t->c;
    snprintf(buf, n,
             "dim=%d hidden=%d layers=%d heads=%d kv=%d vocab=%d tied=%d optimizer=%s adapter=%s projector=%s "
             "params=%zu optim_bytes=%zu adapter_rank=%d adapter_targets=%u proj_rank=%d",
             c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->tied_embeddings,
             t->opt->name, t->adapter ? t->adapter->name : "none", t->proj ? t->proj->name : "none", t->n_params,
             t->opt_bytes, t->adapter ? t->acfg.rank : 0, t->adapter ? t->p.lora_targets : 0u,
             t->proj ? t->pp.rank : 0);
    /* entries with frozen data (a sparse support) also depend on these */
    size_t k = strlen(buf);
    if (t->fixed_bytes && k < n)
        snprintf(buf + k, n - k, " adapter_alpha=%g adapter_density=%g fixed_bytes=%zu", (double)t->acfg.alpha,
                 (double)t->acfg.density, t->fixed_bytes);
    /* an entry with a per-step schedule (AdaLoRA) also on its settings */
    k = strlen(buf);
    if (t->adapter && t->adapter->after_step && k < n)
        snprintf(buf + k, n - k, " schedule=%d,%d,%d,%d,%g,%d", t->acfg.ada.target_r, t->acfg.ada.tinit,
                 t->acfg.ada.tfinal, t->acfg.ada.deltat, (double)t->acfg.ada.orth, t->acfg.steps);
}

/* The adapter's frozen data of a checkpoint (data, fixed_bytes, any
 * alignment), layer by layer through the entry's fixed_valid. */
static int check_fixed(const wmat_trainer *t, const void *data, const char *path)
{
    if (!t->adapter->fixed_valid) return WMAT_OK;
    void *buf = wmat__aligned_alloc(t->fixed_bytes);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
    memcpy(buf, data, t->fixed_bytes);
    int rc = WMAT_OK;
    for (int l = 0; l < t->c.n_layers && !rc; l++)
        for (int k = 0; k < NLIN && !rc; k++) {
            if (!t->afix[l * NLIN + k]) continue;
            int o, i;
            lin_dims(&t->c, k, &o, &i);
            const void *mine = (const char *)buf + ((const char *)t->afix[l * NLIN + k] - (const char *)t->fixed);
            if (!t->adapter->fixed_valid(&t->acfg, mine, i, o))
                rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: the %s data of layer %d's %s is corrupt", path, t->adapter->name,
                                    l, wmat_linear_name((wmat_linear_kind)k));
        }
    wmat__free(buf);
    return rc;
}

/* Version 2: optimizer states as one tensor per state ("optim.<name>", of
 * the state's element type) and "proj.state"; version 1 had one F32
 * "optimizer" tensor with the states interleaved per parameter. */
#define CKPT_FORMAT "wmat-train-checkpoint-2"

int wmat_trainer_save_checkpoint(wmat_trainer *t, const char *path)
{
    char fp[512];
    fingerprint(t, fp, sizeof fp);
    int64_t state[4] = {t->step, (int64_t)t->cursor, (int64_t)t->n_params, (int64_t)t->opt_bytes};
    wmat_st_entry e[5 + NST];
    char names[NST][64];
    memset(e, 0, sizeof e);
    int n = 0;
    e[n++] = (wmat_st_entry){.name = "params", .dtype = WMAT_ST_F32, .ndim = 1, .shape = {(int64_t)t->n_params}, .data = t->params};
    e[n++] = (wmat_st_entry){.name = "state", .dtype = WMAT_ST_I64, .ndim = 1, .shape = {4}, .data = state};
    e[n++] = (wmat_st_entry){.name = "rng", .dtype = WMAT_ST_U64, .ndim = 1, .shape = {4}, .data = t->rng.s};
    if (t->n_proj_floats)
        e[n++] = (wmat_st_entry){.name = "proj.state", .dtype = WMAT_ST_F32, .ndim = 1,
                                 .shape = {(int64_t)t->n_proj_floats}, .data = t->proj_states};
    if (t->fixed_bytes) /* the adapter's supports: data of the run, not regenerated on resume */
        e[n++] = (wmat_st_entry){.name = "adapter.fixed", .dtype = WMAT_ST_U8, .ndim = 1,
                                 .shape = {(int64_t)t->fixed_bytes}, .data = t->fixed};
    n += t->opt->serialize(t->opt, &t->ostates, e + n, names);
    wmat_st_meta meta[3] = {{"format", CKPT_FORMAT}, {"fingerprint", fp}, {"optimizer", t->opt->name}};
    return wmat__st_write(path, e, n, meta, 3);
}

int wmat_trainer_load_checkpoint(wmat_trainer *t, const char *path)
{
    wmat_st_file *f;
    int rc = wmat__st_open(&f, path);
    if (rc) return rc;
    char fp[512];
    fingerprint(t, fp, sizeof fp);
    const char *ffp = wmat__st_meta_get(f, "fingerprint");
    const char *fmt = wmat__st_meta_get(f, "format");
    if (fmt && !strcmp(fmt, "wmat-train-checkpoint-1")) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: a version 1 training checkpoint (older wmat); its optimizer layout "
                                             "is not read any more: restart the run or resume it with that version", path);
        goto done;
    }
    if (!fmt || strcmp(fmt, CKPT_FORMAT)) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not a wmat training checkpoint", path);
        goto done;
    }
    if (!ffp || strcmp(ffp, fp)) {
        rc = wmat_set_error(WMAT_ERR_INVALID,
                            "%s: checkpoint of another model or method:\n  checkpoint: %s\n  this run:   %s", path,
                            ffp ? ffp : "(none)", fp);
        goto done;
    }
    const wmat_st_tensor *tp = wmat__st_find(f, "params"), *ts = wmat__st_find(f, "state"),
                         *tr = wmat__st_find(f, "rng"), *tj = wmat__st_find(f, "proj.state"),
                         *tf = wmat__st_find(f, "adapter.fixed");
    if (!tp || !ts || !tr || tp->nelem != t->n_params || ts->nelem != 4 || ts->dtype != WMAT_ST_I64 || tr->nelem != 4 ||
        tr->dtype != WMAT_ST_U64 || tp->dtype != WMAT_ST_F32 ||
        (t->n_proj_floats && (!tj || tj->dtype != WMAT_ST_F32 || tj->nelem != t->n_proj_floats)) ||
        (t->fixed_bytes && (!tf || tf->dtype != WMAT_ST_U8 || tf->nelem != t->fixed_bytes))) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: checkpoint tensors missing or of the wrong size", path);
        goto done;
    }
    /* every check before the first copy: a refused file leaves the trainer as it was */
    if (t->fixed_bytes && (rc = check_fixed(t, tf->data, path))) goto done;
    if ((rc = t->opt->deserialize(t->opt, &t->ostates, f, path))) goto done;
    int64_t st[4];
    memcpy(st, ts->data, sizeof st);
    memcpy(t->params, tp->data, t->n_params * sizeof(float));
    if (t->n_proj_floats) memcpy(t->proj_states, tj->data, t->n_proj_floats * sizeof(float));
    if (t->fixed_bytes) memcpy(t->fixed, tf->data, t->fixed_bytes);
    memcpy(t->rng.s, tr->data, sizeof t->rng.s);
    t->step = (int)st[0];
    t->cursor = (uint64_t)st[1];
    t->w16_stale = 1;
done:
    wmat__st_close(f);
    return rc;
}

/* ------------------------------------------------------------ adapter files */

int wmat_trainer_save_lora(wmat_trainer *t, const char *dir)
{
    if (!t->adapter) return wmat_set_error(WMAT_ERR_INVALID, "save adapter: this run trains no adapter");
    if (t->adapter->not_mergeable) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "save adapter: %s", t->adapter->not_mergeable);
    if (!t->adapter->peft_type)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "save adapter: PEFT has no %s adapter (the trained model keeps it)",
                              t->adapter->name);
    return wmat__adapter_peft_save(t->adapter, &t->acfg, t->lcfg, &t->c, t->aw, t->afix, wmat_model_path(t->base), dir);
}

int wmat_lora_merge_peft(wmat_model *m, const char *dir) { return wmat__adapter_peft_merge(m, dir); }

const char *wmat_trainer_adapter_report(const wmat_trainer *t)
{
    const char *plan = t->areport ? t->areport : "";
    if (!t->adapter || !t->adapter->status || !t->astatus) return plan;
    /* the entry's status (OFQ's oscillation counts) after the plan's lines */
    const int k = snprintf(t->astatus, ASTATUS_CAP, "%s", plan);
    if (k >= 0 && k < ASTATUS_CAP)
        t->adapter->status(&t->acfg, t->al, t->n_al, t->astatus + k, (size_t)(ASTATUS_CAP - k));
    return t->astatus;
}

int wmat_trainer_adapter_rank(const wmat_trainer *t, int layer, int kind)
{
    if (!t->adapter || layer < 0 || layer >= t->c.n_layers || kind < 0 || kind >= NLIN) return 0;
    return t->aon[layer * NLIN + kind] ? t->lcfg[layer * NLIN + kind].rank : 0;
}

int wmat_train_adapter_replaces_base(const char *name)
{
    const wmat__adapter *a = wmat__adapter_find(name);
    if (!a) return wmat_set_error(WMAT_ERR_INVALID, "train: unknown adapter '%s'", name ? name : "(null)");
    return a->not_mergeable ? (a->replaces_base ? 4 : 3) : a->replaces_base ? 1 : a->adopt ? 2 : 0;
}

int wmat_train_registry_entry(wmat_train_registry which, int i, const char **name, const char **summary)
{
    const char *nm = NULL, *sm = NULL;
    if (which == WMAT_REG_OPTIMIZER && wmat__optimizer_at(i)) {
        nm = wmat__optimizer_at(i)->name;
        sm = wmat__optimizer_at(i)->summary;
    } else if (which == WMAT_REG_ADAPTER && wmat__adapter_at(i)) {
        nm = wmat__adapter_at(i)->name;
        sm = wmat__adapter_at(i)->summary;
    } else if (which == WMAT_REG_PROJECTOR && wmat__projector_at(i)) {
        nm = wmat__projector_at(i)->name;
        sm = wmat__projector_at(i)->summary;
    }
    if (name) *name = nm;
    if (summary) *summary = sm;
    if (!nm) return wmat_set_error(WMAT_ERR_INVALID, "train: no registry entry %d of kind %d", i, (int)which);
    return WMAT_OK;
}
