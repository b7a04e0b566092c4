/* The trainer: parameters, gradients and optimizer states in arenas of the
 * same layout, the model's forward and backward over saved activations,
 * AdamW / SGD with clipping and a warmup + cosine schedule, gradient
 * accumulation, LoRA adapters and GaLore projections, checkpoints. */
#include "train.h"

#include "../io/model_internal.h"
#include "../io/safetensors.h"
#include "../linalg/linalg.h"

#include <errno.h>
#include <lapacke.h>
#include <sys/stat.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NROLE WMAT_W_LAYER_COUNT
#define NLIN WMAT_LIN_COUNT

static const wmat_layer_weight lin_role[NLIN] = {WMAT_W_Q, WMAT_W_K, WMAT_W_V, WMAT_W_O,
                                                 WMAT_W_GATE, WMAT_W_UP, WMAT_W_DOWN};

/* One trainable tensor: views into the param / grad / optimizer arenas. */
typedef struct {
    float *p, *g;       /* (rows, cols) or (rows) when cols == 0 */
    int rows, cols;
    size_t n;
    int decay;          /* weight decay applies (2-D) */
    float *m, *v;       /* Adam moments (or SGD momentum in m); GaLore: projected */
    int galore;         /* 1: projected */
    int side;           /* 0 left: P (rows, r), R = P^T G (r, cols); 1 right: Q (cols, r), R = G Q (rows, r) */
    int rank;
    float *P;
    size_t n_state;     /* floats in m (and v) */
} slot;

typedef struct {
    float *x;                   /* (BT, D) residual input of the layer */
    float *xn1, *r1;            /* (BT, D), (BT) */
    float *q, *k, *v;           /* (BT, D), (BT, KV), (BT, KV) after RoPE */
    float *ao;                  /* (BT, D) attention output */
    float *xmid;                /* (BT, D) */
    float *xn2, *r2;            /* (BT, D), (BT) */
    float *hg, *hu, *hs;        /* (BT, H) */
    float *xa[NLIN];            /* LoRA (BT, r) */
} layer_acts;

struct wmat_trainer {
    wmat_train_params p;
    wmat_config c;
    wmat_model *base;           /* the model given to create */
    wmat_model *view;           /* full/galore: tensors point into the params; lora: merged copy (lazy) */
    wmat_runtime *rt;
    int rt_ctx;
    wmat_context exec;
    int nt;
    int B, T, BT;

    /* weights the forward reads (trainable or frozen) and their grads */
    float *emb, *fnorm, *cls;   /* (V, D), (D), (V, D) (cls == emb when tied) */
    float **lw_, **glw_;        /* (L * NROLE) */
    float *gemb, *gfnorm, *gcls;
    /* LoRA */
    float **lA, **lB, **glA, **glB; /* (L * NLIN), NULL where not targeted */
    int lr_rank;
    float lscale;

    wmat_arena *a_param, *a_grad, *a_opt, *a_act, *a_scratch;
    float *params, *grads, *opt;
    size_t n_params, n_opt;
    slot *slots;
    int n_slots;

    layer_acts *acts;           /* (L + 1): acts[L].x is the final residual */
    float *xnf, *rf, *logits, *losses;
    float *dx, *dxn, *dq, *dk, *dv, *dao, *dhs, *dhg, *dhu, *dxa, *tmp;
    float *att_scratch;
    float *rope_cos, *rope_sin; /* (T, hd/2) */
    int32_t *inp, *tgt;         /* (BT) */

    /* GaLore scratch */
    float *gs_R, *gs_N, *gs_A, *gs_S, *gs_U, *gs_VT, *gs_T;
    size_t galore_state, galore_adam_equiv;

    /* data */
    const int32_t *data;
    size_t n_data, n_windows;
    uint64_t cursor;            /* windows consumed */
    uint64_t perm_epoch;
    uint32_t *perm;

    int step;
    wmat_rng rng;
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
        for (int k = 0; k < NLIN && !found; k++) {
            const char *nm = wmat_linear_name((wmat_linear_kind)k);
            if (strlen(nm) == len && !strncmp(s, nm, len)) {
                *mask |= 1u << k;
                found = 1;
            }
        }
        if (!found)
            return wmat_set_error(WMAT_ERR_INVALID, "target '%.*s' matches no module (choose from q,k,v,o,gate,up,down or all)",
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

static int lin_dims(const wmat_config *c, int k, int *out, int *in)
{
    const int KV = c->n_kv_heads * c->head_dim;
    switch (k) {
    case WMAT_LIN_Q: case WMAT_LIN_O: *out = c->dim; *in = c->dim; break;
    case WMAT_LIN_K: case WMAT_LIN_V: *out = KV; *in = c->dim; break;
    case WMAT_LIN_GATE: case WMAT_LIN_UP: *out = c->hidden_dim; *in = c->dim; break;
    default: *out = c->dim; *in = c->hidden_dim; break;
    }
    return 0;
}

/* Shape of a layer role: rows, cols (0 for vectors). */
static void role_dims(const wmat_config *c, int w, int *rows, int *cols)
{
    *rows = *cols = 0;
    if (w == WMAT_W_ATTN_NORM || w == WMAT_W_FFN_NORM) {
        *rows = c->dim;
        *cols = 0;
        return;
    }
    for (int k = 0; k < NLIN; k++)
        if (lin_role[k] == (wmat_layer_weight)w) lin_dims(c, k, rows, cols);
}

/* ------------------------------------------------------------ creation */

static float *take(wmat_arena *a, size_t n) { return wmat_arena_alloc(a, (n ? n : 1) * sizeof(float)); }

void wmat_trainer_free(wmat_trainer *t)
{
    if (!t) return;
    wmat_runtime_free(t->rt);
    wmat_model_free(t->view); /* its tensors point into a_param (not owned) for full/galore */
    wmat_arena_free(t->a_param);
    wmat_arena_free(t->a_grad);
    wmat_arena_free(t->a_opt);
    wmat_arena_free(t->a_act);
    wmat_arena_free(t->a_scratch);
    wmat__free(t->lw_);
    wmat__free(t->glw_);
    wmat__free(t->lA);
    wmat__free(t->lB);
    wmat__free(t->glA);
    wmat__free(t->glB);
    wmat__free(t->slots);
    wmat__free(t->acts);
    wmat__free(t->perm);
    wmat__free(t);
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
    return 0;
}

int wmat_trainer_create(wmat_trainer **out, wmat_model *m, const wmat_train_params *pp)
{
    *out = NULL;
    wmat_train_params def = wmat_train_default_params();
    if (!pp) pp = &def;
    const wmat_config *c = wmat_model_config(m);
    for (int i = 0; i < wmat_model_n_tensors(m); i++)
        if (wmat_model_tensor(m, i)->dtype != WMAT_F32)
            return wmat_set_error(WMAT_ERR_INVALID, "train: tensor %s is not f32; materialize the model first",
                                  wmat_model_tensor(m, i)->name);
    wmat_train_params p = *pp;
    if (p.ctx <= 0) p.ctx = c->seq_len < 128 ? c->seq_len : 128;
    if (p.ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "train: context %d is longer than the model's (%d)", p.ctx, c->seq_len);
    if (p.batch <= 0 || p.grad_accum <= 0 || p.steps <= 0)
        return wmat_set_error(WMAT_ERR_INVALID, "train: batch, grad_accum and steps must be positive");
    if (!(p.lr > 0) || p.beta1 < 0 || p.beta1 >= 1 || p.beta2 < 0 || p.beta2 >= 1)
        return wmat_set_error(WMAT_ERR_INVALID, "train: lr must be > 0 and betas in [0, 1)");
    if (p.min_lr < 0) p.min_lr = p.lr / 10;
    if (p.method == WMAT_TRAIN_LORA) {
        if (p.lora_rank <= 0) return wmat_set_error(WMAT_ERR_INVALID, "train: LoRA rank must be positive");
        if (!(p.lora_targets & ((1u << NLIN) - 1)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: the LoRA targets match no linear layer of the model");
    }
    if (p.method == WMAT_TRAIN_GALORE) {
        if (p.optimizer != WMAT_OPT_ADAMW)
            return wmat_set_error(WMAT_ERR_INVALID, "train: GaLore keeps Adam moments; use the AdamW optimizer");
        if (p.galore_rank <= 0) p.galore_rank = c->dim / 4 > 0 ? c->dim / 4 : 1;
        if (p.galore_gap <= 0) return wmat_set_error(WMAT_ERR_INVALID, "train: GaLore update gap must be positive");
        if (!(p.galore_targets & ((1u << NLIN) - 1)))
            return wmat_set_error(WMAT_ERR_INVALID, "train: the GaLore targets match no linear layer");
    }
    if (p.method < 0 || p.method > WMAT_TRAIN_GALORE) return wmat_set_error(WMAT_ERR_INVALID, "train: unknown method");

    wmat_trainer *t = wmat__calloc(1, sizeof *t);
    if (!t) return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
    int rc = WMAT_OK;
    t->p = p;
    t->c = *c;
    t->base = m;
    t->exec = p.exec ? *p.exec : wmat_context_default();
    t->nt = wmat_context_threads(&t->exec);
    t->B = p.batch;
    t->T = p.ctx;
    t->BT = t->B * t->T;
    wmat_rng_seed(&t->rng, p.seed);
    const int L = c->n_layers, D = c->dim, V = c->vocab_size, H = c->hidden_dim, hd = c->head_dim;
    const int KV = c->n_kv_heads * hd;
    const size_t BT = (size_t)t->BT, T = (size_t)t->T;
    t->lw_ = wmat__calloc((size_t)L * NROLE, sizeof(float *));
    t->glw_ = wmat__calloc((size_t)L * NROLE, sizeof(float *));
    t->lA = wmat__calloc((size_t)L * NLIN, sizeof(float *));
    t->lB = wmat__calloc((size_t)L * NLIN, sizeof(float *));
    t->glA = wmat__calloc((size_t)L * NLIN, sizeof(float *));
    t->glB = wmat__calloc((size_t)L * NLIN, sizeof(float *));
    t->slots = wmat__calloc((size_t)L * (NROLE + 2 * NLIN) + 3, sizeof(slot));
    t->acts = wmat__calloc((size_t)L + 1, sizeof(layer_acts));
    if (!t->lw_ || !t->glw_ || !t->lA || !t->lB || !t->glA || !t->glB || !t->slots || !t->acts) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory");
        goto fail;
    }

    /* ---- parameters and gradients: one block each, same layout */
    const int lora = p.method == WMAT_TRAIN_LORA;
    size_t np = 0;
    if (!lora) {
        np = (size_t)V * D + D + (c->tied_embeddings ? 0 : (size_t)V * D);
        for (int w = 0; w < NROLE; w++) {
            int r, cc;
            role_dims(c, w, &r, &cc);
            np += (size_t)L * r * (cc ? cc : 1);
        }
    } else {
        t->lr_rank = p.lora_rank;
        t->lscale = p.lora_rslora ? p.lora_alpha / sqrtf((float)p.lora_rank) : p.lora_alpha / (float)p.lora_rank;
        for (int l = 0; l < L; l++)
            for (int k = 0; k < NLIN; k++)
                if (p.lora_targets & (1u << k)) {
                    int o, i;
                    lin_dims(c, k, &o, &i);
                    np += (size_t)p.lora_rank * (i + o);
                }
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
        if (!lora) {
            CARVE(t->emb, t->gemb, (size_t)V * D);
            add_slot(t, t->emb, t->gemb, V, D);
            for (int l = 0; l < L; l++)
                for (int w = 0; w < NROLE; w++) {
                    int r, cc;
                    role_dims(c, w, &r, &cc);
                    CARVE(t->lw_[l * NROLE + w], t->glw_[l * NROLE + w], (size_t)r * (cc ? cc : 1));
                    add_slot(t, t->lw_[l * NROLE + w], t->glw_[l * NROLE + w], r, cc);
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
            /* copy the model's weights in */
            memcpy(t->emb, wmat_model_tok_embeddings(m)->data, (size_t)V * D * sizeof(float));
            memcpy(t->fnorm, wmat_model_final_norm(m)->data, (size_t)D * sizeof(float));
            if (!c->tied_embeddings) memcpy(t->cls, wmat_model_classifier(m)->data, (size_t)V * D * sizeof(float));
            for (int l = 0; l < L; l++)
                for (int w = 0; w < NROLE; w++) {
                    const wmat_tensor *tt = wmat_model_layer_tensor(m, l, (wmat_layer_weight)w);
                    memcpy(t->lw_[l * NROLE + w], tt->data, tt->nbytes);
                }
        } else {
            t->emb = wmat_model_tok_embeddings(m)->data;
            t->fnorm = wmat_model_final_norm(m)->data;
            t->cls = wmat_model_classifier(m)->data;
            for (int l = 0; l < L; l++)
                for (int w = 0; w < NROLE; w++) t->lw_[l * NROLE + w] = wmat_model_layer_tensor(m, l, (wmat_layer_weight)w)->data;
            /* A ~ kaiming-uniform-like (PEFT: U(-1/sqrt(in), 1/sqrt(in))), B = 0 */
            for (int l = 0; l < L; l++)
                for (int k = 0; k < NLIN; k++) {
                    if (!(p.lora_targets & (1u << k))) continue;
                    int o, i;
                    lin_dims(c, k, &o, &i);
                    const int r = p.lora_rank;
                    CARVE(t->lA[l * NLIN + k], t->glA[l * NLIN + k], (size_t)r * i);
                    add_slot(t, t->lA[l * NLIN + k], t->glA[l * NLIN + k], r, i);
                    CARVE(t->lB[l * NLIN + k], t->glB[l * NLIN + k], (size_t)o * r);
                    add_slot(t, t->lB[l * NLIN + k], t->glB[l * NLIN + k], o, r);
                    const float bound = 1.0f / sqrtf((float)i);
                    float *A = t->lA[l * NLIN + k];
                    for (size_t j = 0; j < (size_t)r * i; j++) A[j] = (2.0f * wmat_rng_uniform(&t->rng) - 1.0f) * bound;
                }
        }
#undef CARVE
        if (off != np) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: parameter layout mismatch");
            goto fail;
        }
    }

    /* ---- optimizer states (GaLore: projector and projected moments) */
    {
        size_t no = 0, scratch = 0;
        const int r = p.galore_rank;
        for (int si = 0; si < t->n_slots; si++) {
            slot *s = &t->slots[si];
            if (p.method == WMAT_TRAIN_GALORE && s->cols > 0) {
                /* eligible: a linear weight of a layer of a targeted kind */
                for (int l = 0; l < L && !s->galore; l++)
                    for (int k = 0; k < NLIN; k++)
                        if ((p.galore_targets & (1u << k)) && s->p == t->lw_[l * NROLE + lin_role[k]]) {
                            const int rk = r < (s->rows < s->cols ? s->rows : s->cols) ? r : (s->rows < s->cols ? s->rows : s->cols);
                            s->galore = 1;
                            s->rank = rk;
                            s->side = s->rows <= s->cols ? 0 : 1;
                        }
            }
            if (s->galore) {
                size_t pdim = s->side == 0 ? (size_t)s->rows : (size_t)s->cols;
                s->n_state = s->side == 0 ? (size_t)s->rank * s->cols : (size_t)s->rows * s->rank;
                no += pdim * s->rank + 2 * s->n_state;
                t->galore_state += (pdim * s->rank + 2 * s->n_state) * sizeof(float);
                t->galore_adam_equiv += 2 * s->n * sizeof(float);
                size_t mn = s->n, mnr = s->n_state;
                if (mn > scratch) scratch = mn;
                if (mnr > scratch) scratch = mnr;
            } else {
                s->n_state = s->n;
                no += (p.optimizer == WMAT_OPT_ADAMW ? 2 : 1) * s->n;
            }
        }
        t->n_opt = no;
        if ((rc = wmat_arena_create(&t->a_opt, no * sizeof(float) + 2 * WMAT_ALIGN))) goto fail;
        t->opt = take(t->a_opt, no);
        size_t off = 0;
        for (int si = 0; si < t->n_slots; si++) {
            slot *s = &t->slots[si];
            if (s->galore) {
                s->P = t->opt + off;
                off += (s->side == 0 ? (size_t)s->rows : (size_t)s->cols) * s->rank;
            }
            s->m = t->opt + off;
            off += s->n_state;
            if (p.optimizer == WMAT_OPT_ADAMW) {
                s->v = t->opt + off;
                off += s->n_state;
            }
        }
        if (p.method == WMAT_TRAIN_GALORE) {
            /* R, N (state size), G copy / transpose, SVD factors */
            int maxd = 1;
            size_t maxmn = 1;
            for (int si = 0; si < t->n_slots; si++)
                if (t->slots[si].galore) {
                    const slot *s = &t->slots[si];
                    if (s->rows > maxd) maxd = s->rows;
                    if (s->cols > maxd) maxd = s->cols;
                    if (s->n > maxmn) maxmn = s->n;
                }
            const size_t kk = (size_t)r + 8;
            size_t sfl = 2 * scratch + 3 * maxmn + (size_t)maxd + (size_t)maxd * maxd + (size_t)maxd * kk * 2 + kk * kk;
            if ((rc = wmat_arena_create(&t->a_scratch, sfl * sizeof(float) + 16 * WMAT_ALIGN))) goto fail;
            t->gs_R = take(t->a_scratch, scratch);
            t->gs_N = take(t->a_scratch, scratch);
            t->gs_A = take(t->a_scratch, maxmn + (size_t)maxd * kk * 2 + kk * kk);
            t->gs_T = take(t->a_scratch, maxmn);
            t->gs_S = take(t->a_scratch, (size_t)maxd);
            t->gs_U = take(t->a_scratch, (size_t)maxd * maxd);
            t->gs_VT = take(t->a_scratch, maxmn);
            if (!t->gs_VT) {
                rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: GaLore scratch sizing is wrong");
                goto fail;
            }
        }
    }

    /* ---- activations */
    {
        const int lr = lora ? p.lora_rank : 0;
        size_t per_layer = BT * (6 * (size_t)D + 2 * KV + 3 * (size_t)H + 2);
        for (int k = 0; k < NLIN; k++)
            if (lora && (p.lora_targets & (1u << k))) per_layer += BT * lr;
        size_t fl = per_layer * L + BT * (size_t)D /* final x */ + BT * (size_t)D + BT /* xnf rf */ +
                    BT * (size_t)V + BT /* logits, losses */ +
                    BT * (6 * (size_t)D + 2 * KV + 3 * (size_t)H + (size_t)lr) /* backward */ +
                    (size_t)t->nt * 2 * T * T + T * (size_t)hd + 2 * BT;
        size_t bytes = fl * sizeof(float) + (size_t)(40 + 20 * L) * WMAT_ALIGN;
        if ((rc = wmat_arena_create(&t->a_act, bytes))) goto fail;
        wmat_arena *a = t->a_act;
        for (int l = 0; l <= L; l++) {
            layer_acts *la = &t->acts[l];
            la->x = take(a, BT * D);
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
                if (lora && (p.lora_targets & (1u << k))) la->xa[k] = take(a, BT * lr);
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
        t->dxa = take(a, BT * (lr ? lr : 1));
        t->att_scratch = take(a, (size_t)t->nt * 2 * T * T);
        t->rope_cos = take(a, T * hd / 2);
        t->rope_sin = take(a, T * hd / 2);
        t->inp = (int32_t *)take(a, BT);
        t->tgt = (int32_t *)take(a, BT);
        if (!t->tgt) {
            rc = wmat_set_error(WMAT_ERR_INTERNAL, "train: activation arena sizing is wrong");
            goto fail;
        }
        /* the runtime's RoPE tables, same float expressions */
        for (size_t pos = 0; pos < T; pos++)
            for (int i = 0; i < hd / 2; i++) {
                float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd);
                float val = (float)pos * freq;
                t->rope_cos[pos * (hd / 2) + i] = cosf(val);
                t->rope_sin[pos * (hd / 2) + i] = sinf(val);
            }
    }

    /* ---- full / galore: a model whose tensors are views of the params */
    if (!lora) {
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
    }
    *out = t;
    return WMAT_OK;
fail:
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

static void next_batch(wmat_trainer *t)
{
    for (int b = 0; b < t->B; b++) {
        uint64_t cur = t->cursor++;
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
#define IDX(l, k) ((l) * NLIN + (k))

static void lin_fwd(wmat_trainer *t, float *Y, const float *X, int l, int k, int BT)
{
    int o, i;
    lin_dims(&t->c, k, &o, &i);
    wmat__linear_forward(Y, t->acts[l].xa[k], X, LW(l, lin_role[k]), t->lA[IDX(l, k)], t->lB[IDX(l, k)], t->lscale, BT,
                         i, o, t->lr_rank);
}

static void lin_bwd(wmat_trainer *t, float *dX, const float *dY, const float *X, int l, int k, int BT, int acc)
{
    int o, i;
    lin_dims(&t->c, k, &o, &i);
    wmat__linear_backward(dX, GLW(l, lin_role[k]), t->glA[IDX(l, k)], t->glB[IDX(l, k)], t->dxa, dY, X,
                          LW(l, lin_role[k]), t->lA[IDX(l, k)], t->lB[IDX(l, k)], t->acts[l].xa[k], t->lscale, BT, i, o,
                          t->lr_rank, acc);
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
    wmat__embed_forward(t->acts[0].x, inputs, t->emb, BT, D);
    for (int l = 0; l < L; l++) {
        layer_acts *a = &t->acts[l];
        wmat__rmsnorm_forward(a->xn1, a->r1, a->x, LW(l, WMAT_W_ATTN_NORM), BT, D, c->norm_eps, nt);
        lin_fwd(t, a->q, a->xn1, l, WMAT_LIN_Q, BT);
        lin_fwd(t, a->k, a->xn1, l, WMAT_LIN_K, BT);
        lin_fwd(t, a->v, a->xn1, l, WMAT_LIN_V, BT);
        wmat__rope_forward(a->q, BT, T, c->n_heads, hd, t->rope_cos, t->rope_sin, nt);
        wmat__rope_forward(a->k, BT, T, c->n_kv_heads, hd, t->rope_cos, t->rope_sin, nt);
        wmat__attention_forward(a->ao, a->q, a->k, a->v, B, T, c->n_heads, c->n_kv_heads, hd, t->att_scratch, nt);
        lin_fwd(t, t->tmp, a->ao, l, WMAT_LIN_O, BT);
        for (size_t i = 0; i < (size_t)BT * D; i++) a->xmid[i] = a->x[i] + t->tmp[i];
        wmat__rmsnorm_forward(a->xn2, a->r2, a->xmid, LW(l, WMAT_W_FFN_NORM), BT, D, c->norm_eps, nt);
        lin_fwd(t, a->hg, a->xn2, l, WMAT_LIN_GATE, BT);
        lin_fwd(t, a->hu, a->xn2, l, WMAT_LIN_UP, BT);
        wmat__swiglu_forward(a->hs, a->hg, a->hu, (size_t)BT * H, nt);
        lin_fwd(t, t->tmp, a->hs, l, WMAT_LIN_DOWN, BT);
        float *xo = t->acts[l + 1].x;
        for (size_t i = 0; i < (size_t)BT * D; i++) xo[i] = a->xmid[i] + t->tmp[i];
    }
    wmat__rmsnorm_forward(t->xnf, t->rf, t->acts[L].x, t->fnorm, BT, D, c->norm_eps, nt);
    wmat_sgemm(0, 1, BT, V, D, 1.0f, t->xnf, D, t->cls, D, 0.0f, t->logits, V);
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
    if (t->gcls) wmat_sgemm(1, 0, V, D, BT, 1.0f, t->logits, V, t->xnf, D, 1.0f, t->gcls, D);
    wmat_sgemm(0, 0, BT, D, V, 1.0f, t->logits, V, t->cls, D, 0.0f, t->dxn, D);
    memset(t->dx, 0, (size_t)BT * D * sizeof(float));
    float *gf = t->gfnorm ? t->gfnorm : t->tmp; /* frozen norms: gradient goes to scratch */
    wmat__rmsnorm_backward(t->dx, gf, t->dxn, t->acts[L].x, t->fnorm, t->rf, BT, D, nt);
    for (int l = L - 1; l >= 0; l--) {
        layer_acts *a = &t->acts[l];
        /* FFN: x[l+1] = xmid + down(swiglu(gate(xn2), up(xn2))) */
        lin_bwd(t, t->dhs, t->dx, a->hs, l, WMAT_LIN_DOWN, BT, 0);
        wmat__swiglu_backward(t->dhg, t->dhu, t->dhs, a->hg, a->hu, (size_t)BT * H, nt);
        lin_bwd(t, t->dxn, t->dhg, a->xn2, l, WMAT_LIN_GATE, BT, 0);
        lin_bwd(t, t->dxn, t->dhu, a->xn2, l, WMAT_LIN_UP, BT, 1);
        float *gn = GLW(l, WMAT_W_FFN_NORM) ? GLW(l, WMAT_W_FFN_NORM) : t->tmp;
        wmat__rmsnorm_backward(t->dx, gn, t->dxn, a->xmid, LW(l, WMAT_W_FFN_NORM), a->r2, BT, D, nt);
        /* attention: xmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))) */
        lin_bwd(t, t->dao, t->dx, a->ao, l, WMAT_LIN_O, BT, 0);
        wmat__attention_backward(t->dq, t->dk, t->dv, t->dao, a->q, a->k, a->v, B, T, c->n_heads, c->n_kv_heads, hd,
                                 t->att_scratch, nt);
        wmat__rope_backward(t->dq, BT, T, c->n_heads, hd, t->rope_cos, t->rope_sin, nt);
        wmat__rope_backward(t->dk, BT, T, c->n_kv_heads, hd, t->rope_cos, t->rope_sin, nt);
        lin_bwd(t, t->dxn, t->dq, a->xn1, l, WMAT_LIN_Q, BT, 0);
        lin_bwd(t, t->dxn, t->dk, a->xn1, l, WMAT_LIN_K, BT, 1);
        lin_bwd(t, t->dxn, t->dv, a->xn1, l, WMAT_LIN_V, BT, 1);
        gn = GLW(l, WMAT_W_ATTN_NORM) ? GLW(l, WMAT_W_ATTN_NORM) : t->tmp;
        wmat__rmsnorm_backward(t->dx, gn, t->dxn, a->x, LW(l, WMAT_W_ATTN_NORM), a->r1, BT, D, nt);
    }
    if (t->gemb) wmat__embed_backward(t->gemb, t->dx, inputs, BT, D);
    (void)KV;
    return WMAT_OK;
}

float *wmat__trainer_logits(wmat_trainer *t) { return t->logits; }
float *wmat__trainer_params(wmat_trainer *t, size_t *n)
{
    *n = t->n_params;
    return t->params;
}
float *wmat__trainer_grads(wmat_trainer *t, size_t *n)
{
    *n = t->n_params;
    return t->grads;
}

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

/* Top-r left singular vectors of G (m, n), m <= n expected but not needed,
 * into P (m, r). Exact: LAPACK sgesdd; randomized: range finder with one
 * power iteration. */
static int top_left(wmat_trainer *t, const float *G, int m, int n, int r, float *P)
{
    float *A = t->gs_A;
    if (!t->p.galore_randomized) {
        memcpy(A, G, (size_t)m * n * sizeof(float));
        int k = m < n ? m : n;
        int info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', m, n, A, n, t->gs_S, t->gs_U, k, t->gs_VT, n);
        if (info != 0) return wmat_set_error(WMAT_ERR_NUMERIC, "GaLore: SVD failed (info %d)", info);
        for (int i = 0; i < m; i++) memcpy(P + (size_t)i * r, t->gs_U + (size_t)i * k, (size_t)r * sizeof(float));
        return WMAT_OK;
    }
    int kk = r + 8;
    if (kk > m) kk = m;
    if (kk > n) kk = n;
    float *Om = A;                       /* (n, kk) */
    float *Y = Om + (size_t)n * kk;      /* (m, kk) */
    float *Bm = Y + (size_t)m * kk;      /* (kk, n) */
    for (size_t i = 0; i < (size_t)n * kk; i++) Om[i] = wmat_rng_normal(&t->rng);
    wmat_sgemm(0, 0, m, kk, n, 1.0f, G, n, Om, kk, 0.0f, Y, kk);
    float *tau = t->gs_S;
    int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, kk, Y, kk, tau);
    if (!info) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, kk, kk, Y, kk, tau);
    /* one power iteration: Y = G (G^T Q), re-orthonormalized */
    if (!info) {
        wmat_sgemm(1, 0, n, kk, m, 1.0f, G, n, Y, kk, 0.0f, Om, kk);
        wmat_sgemm(0, 0, m, kk, n, 1.0f, G, n, Om, kk, 0.0f, Y, kk);
        info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, m, kk, Y, kk, tau);
        if (!info) info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, m, kk, kk, Y, kk, tau);
    }
    if (info) return wmat_set_error(WMAT_ERR_NUMERIC, "GaLore: QR failed (info %d)", info);
    wmat_sgemm(1, 0, kk, n, m, 1.0f, Y, kk, G, n, 0.0f, Bm, n); /* Q^T G (kk, n) */
    float *Ub = t->gs_U;
    info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', kk, n, Bm, n, t->gs_S, Ub, kk, t->gs_VT, n);
    if (info) return wmat_set_error(WMAT_ERR_NUMERIC, "GaLore: SVD failed (info %d)", info);
    wmat_sgemm(0, 0, m, r, kk, 1.0f, Y, kk, Ub, kk, 0.0f, P, r); /* (m, kk) (kk, r): columns 0..r of Ub */
    return WMAT_OK;
}

static int galore_projector(wmat_trainer *t, slot *s)
{
    if (s->side == 0) return top_left(t, s->g, s->rows, s->cols, s->rank, s->P);
    /* right: left vectors of G^T (cols, rows) */
    float *Gt = t->gs_T;
    for (int i = 0; i < s->rows; i++)
        for (int j = 0; j < s->cols; j++) Gt[(size_t)j * s->rows + i] = s->g[(size_t)i * s->cols + j];
    return top_left(t, Gt, s->cols, s->rows, s->rank, s->P);
}

static void adam_update(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2, float eps,
                        float wd, float bc1, float bc2, float scale, int nt)
{
#pragma omp parallel for num_threads(nt) schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        float u = (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] -= lr * (scale * u + wd * p[i]);
    }
}

int wmat_trainer_step(wmat_trainer *t, wmat_train_step_info *info)
{
    if (!t->data) return wmat_set_error(WMAT_ERR_INVALID, "train: no data (call wmat_trainer_set_data)");
    const wmat_train_params *p = &t->p;
    double t0 = wmat__now();
    memset(t->grads, 0, t->n_params * sizeof(float));
    const float dscale = 1.0f / ((float)t->BT * (float)p->grad_accum);
    double loss = 0.0;
    for (int a = 0; a < p->grad_accum; a++) {
        next_batch(t);
        double l;
        int rc = wmat__trainer_fwdbwd(t, t->inp, t->tgt, t->B, t->T, dscale, 0, 0, &l);
        if (rc) return rc;
        loss += l;
    }
    loss /= p->grad_accum;
    if (!isfinite(loss)) return wmat_set_error(WMAT_ERR_NUMERIC, "train: the loss is %g at step %d", loss, t->step);
    /* global norm, serial in double (deterministic) */
    double ss = 0.0;
    for (size_t i = 0; i < t->n_params; i++) ss += (double)t->grads[i] * t->grads[i];
    const float norm = (float)sqrt(ss);
    if (p->grad_clip > 0 && norm > p->grad_clip) {
        const float f = p->grad_clip / norm;
        for (size_t i = 0; i < t->n_params; i++) t->grads[i] *= f;
    }
    const float lr = lr_at(p, t->step);
    const int st = t->step + 1;
    const float bc1 = 1.0f - powf(p->beta1, (float)st), bc2 = 1.0f - powf(p->beta2, (float)st);
    for (int si = 0; si < t->n_slots; si++) {
        slot *s = &t->slots[si];
        const float wd = s->decay ? p->weight_decay : 0.0f;
        if (p->optimizer == WMAT_OPT_SGD) {
            for (size_t i = 0; i < s->n; i++) {
                s->m[i] = p->momentum * s->m[i] + s->g[i];
                s->p[i] -= lr * (s->m[i] + wd * s->p[i]);
            }
            continue;
        }
        if (!s->galore) {
            adam_update(s->p, s->g, s->m, s->v, s->n, lr, p->beta1, p->beta2, p->eps, wd, bc1, bc2, 1.0f, t->nt);
            continue;
        }
        if (t->step % p->galore_gap == 0) {
            int rc = galore_projector(t, s);
            if (rc) return rc;
        }
        const int m = s->rows, n = s->cols, r = s->rank;
        float *R = t->gs_R, *N = t->gs_N;
        if (s->side == 0)
            wmat_sgemm(1, 0, r, n, m, 1.0f, s->P, r, s->g, n, 0.0f, R, n); /* P^T G (r, n) */
        else
            wmat_sgemm(0, 0, m, r, n, 1.0f, s->g, n, s->P, r, 0.0f, R, r); /* G Q (m, r) */
        /* Adam in the projected space: N = mhat / (sqrt(vhat) + eps) */
        for (size_t i = 0; i < s->n_state; i++) {
            float mi = p->beta1 * s->m[i] + (1.0f - p->beta1) * R[i];
            float vi = p->beta2 * s->v[i] + (1.0f - p->beta2) * R[i] * R[i];
            s->m[i] = mi;
            s->v[i] = vi;
            N[i] = (mi / bc1) / (sqrtf(vi / bc2) + p->eps);
        }
        if (wd > 0)
            for (size_t i = 0; i < s->n; i++) s->p[i] -= lr * wd * s->p[i];
        const float a = -lr * p->galore_scale;
        if (s->side == 0)
            wmat_sgemm(0, 0, m, n, r, a, s->P, r, N, n, 1.0f, s->p, n); /* W += a P N */
        else
            wmat_sgemm(0, 1, m, n, r, a, N, r, s->P, r, 1.0f, s->p, n); /* W += a N Q^T */
    }
    t->step++;
    if (info) {
        info->step = t->step;
        info->loss = loss;
        info->lr = lr;
        info->grad_norm = norm;
        info->seconds = wmat__now() - t0;
        info->tokens = (uint64_t)t->BT * p->grad_accum;
    }
    return WMAT_OK;
}

int wmat_trainer_steps_done(const wmat_trainer *t) { return t->step; }

/* ------------------------------------------------------------ views, eval */

int wmat_trainer_model(wmat_trainer *t, wmat_model **out)
{
    *out = NULL;
    if (t->p.method != WMAT_TRAIN_LORA) {
        *out = t->view;
        return WMAT_OK;
    }
    const wmat_config *c = &t->c;
    int rc;
    if (!t->view) {
        if ((rc = wmat_model_create(&t->view, c))) return rc;
        wmat_tokenizer *tk = wmat_model_tokenizer(t->base), *cp = NULL;
        if (tk && !wmat_tokenizer_clone(tk, &cp)) wmat_model_set_tokenizer(t->view, cp);
    }
    for (int i = 0; i < wmat_model_n_tensors(t->base); i++) {
        wmat_tensor *src = wmat_model_tensor(t->base, i), *dst = wmat_model_find(t->view, src->name);
        if (!dst || dst->nbytes != src->nbytes) return wmat_set_error(WMAT_ERR_INTERNAL, "train: merged copy mismatch");
        memcpy(dst->data, src->data, src->nbytes);
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < NLIN; k++) {
            if (!t->lA[IDX(l, k)]) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            float *W = wmat_model_linear(t->view, l, (wmat_linear_kind)k)->data;
            wmat_sgemm(0, 0, o, i, t->lr_rank, t->lscale, t->lB[IDX(l, k)], t->lr_rank, t->lA[IDX(l, k)], i, 1.0f, W, i);
        }
    *out = t->view;
    return WMAT_OK;
}

int wmat_trainer_eval(wmat_trainer *t, const int32_t *tokens, size_t n, int ctx, int max_windows, wmat_eval_result *res)
{
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
    size_t base = 0;
    for (int i = 0; i < wmat_model_n_tensors(t->base); i++) base += wmat_model_tensor(t->base, i)->nbytes;
    mem->weights = t->p.method == WMAT_TRAIN_LORA ? base + t->n_params * sizeof(float) : t->n_params * sizeof(float);
    mem->grads = t->n_params * sizeof(float);
    mem->optim = t->n_opt * sizeof(float);
    mem->optim_scratch = t->a_scratch ? wmat_arena_capacity(t->a_scratch) : 0;
    mem->activations = wmat_arena_capacity(t->a_act);
    mem->peak_rss = wmat_peak_rss();
    mem->trainable = (int64_t)t->n_params;
    mem->galore_state = t->galore_state;
    mem->galore_adam_equiv = t->galore_adam_equiv;
}

/* ------------------------------------------------------------ checkpoints */

static void fingerprint(const wmat_trainer *t, char *buf, size_t n)
{
    const wmat_config *c = &t->c;
    snprintf(buf, n,
             "dim=%d hidden=%d layers=%d heads=%d kv=%d vocab=%d tied=%d method=%d opt=%d params=%zu opt_floats=%zu "
             "lora_rank=%d lora_targets=%u galore_rank=%d",
             c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->tied_embeddings,
             (int)t->p.method, (int)t->p.optimizer, t->n_params, t->n_opt,
             t->p.method == WMAT_TRAIN_LORA ? t->p.lora_rank : 0,
             t->p.method == WMAT_TRAIN_LORA ? t->p.lora_targets : 0u,
             t->p.method == WMAT_TRAIN_GALORE ? t->p.galore_rank : 0);
}

int wmat_trainer_save_checkpoint(wmat_trainer *t, const char *path)
{
    char fp[512];
    fingerprint(t, fp, sizeof fp);
    int64_t state[4] = {t->step, (int64_t)t->cursor, (int64_t)t->n_params, (int64_t)t->n_opt};
    wmat_st_entry e[4];
    memset(e, 0, sizeof e);
    e[0] = (wmat_st_entry){.name = "params", .dtype = WMAT_ST_F32, .ndim = 1, .shape = {(int64_t)t->n_params}, .data = t->params};
    e[1] = (wmat_st_entry){.name = "optimizer", .dtype = WMAT_ST_F32, .ndim = 1, .shape = {(int64_t)t->n_opt}, .data = t->opt};
    e[2] = (wmat_st_entry){.name = "state", .dtype = WMAT_ST_I64, .ndim = 1, .shape = {4}, .data = state};
    e[3] = (wmat_st_entry){.name = "rng", .dtype = WMAT_ST_U64, .ndim = 1, .shape = {4}, .data = t->rng.s};
    wmat_st_meta meta[2] = {{"format", "wmat-train-checkpoint-1"}, {"fingerprint", fp}};
    int n = 4;
    if (t->n_opt == 0) {
        e[1] = e[3];
        n = 3;
    }
    return wmat__st_write(path, e, n, meta, 2);
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
    if (!fmt || strcmp(fmt, "wmat-train-checkpoint-1")) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: not a wmat training checkpoint", path);
        goto done;
    }
    if (!ffp || strcmp(ffp, fp)) {
        rc = wmat_set_error(WMAT_ERR_INVALID,
                            "%s: checkpoint of another model or method:\n  checkpoint: %s\n  this run:   %s", path,
                            ffp ? ffp : "(none)", fp);
        goto done;
    }
    const wmat_st_tensor *tp = wmat__st_find(f, "params"), *to = wmat__st_find(f, "optimizer"),
                         *ts = wmat__st_find(f, "state"), *tr = wmat__st_find(f, "rng");
    if (!tp || !ts || !tr || tp->nelem != t->n_params || (t->n_opt && (!to || to->nelem != t->n_opt)) ||
        ts->nelem != 4 || ts->dtype != WMAT_ST_I64 || tr->nelem != 4 || tp->dtype != WMAT_ST_F32) {
        rc = wmat_set_error(WMAT_ERR_FORMAT, "%s: checkpoint tensors missing or of the wrong size", path);
        goto done;
    }
    int64_t st[4];
    memcpy(st, ts->data, sizeof st);
    memcpy(t->params, tp->data, t->n_params * sizeof(float));
    if (t->n_opt) memcpy(t->opt, to->data, t->n_opt * sizeof(float));
    memcpy(t->rng.s, tr->data, sizeof t->rng.s);
    t->step = (int)st[0];
    t->cursor = (uint64_t)st[1];
done:
    wmat__st_close(f);
    return rc;
}

/* ------------------------------------------------------------ LoRA files */

static const char *const hf_mod[NLIN] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                         "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};

typedef struct {
    const wmat_trainer *t;
    int l, k;
} lora_fill;

static int fill_B_hf(void *user, const wmat_st_entry *e, void *dst)
{
    const lora_fill *lf = user;
    const wmat_trainer *t = lf->t;
    const int heads = lf->k == WMAT_LIN_Q ? t->c.n_heads : t->c.n_kv_heads;
    wmat__rope_permute_hf(dst, t->lB[IDX(lf->l, lf->k)], heads, t->c.head_dim, t->lr_rank);
    return WMAT_OK;
}

int wmat_trainer_save_lora(wmat_trainer *t, const char *dir)
{
    if (t->p.method != WMAT_TRAIN_LORA) return wmat_set_error(WMAT_ERR_INVALID, "save LoRA: this run is not a LoRA run");
    const wmat_config *c = &t->c;
    if (mkdir(dir, 0777) && errno != EEXIST) return wmat_set_error(WMAT_ERR_IO, "%s: cannot create directory", dir);
    int n = 0, cap = 2 * c->n_layers * NLIN;
    wmat_st_entry *e = wmat__calloc((size_t)cap, sizeof *e);
    lora_fill *lf = wmat__calloc((size_t)cap, sizeof *lf);
    char *names = wmat__calloc((size_t)cap, 160);
    int rc = WMAT_OK;
    if (!e || !lf || !names) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "save LoRA: out of memory");
        goto done;
    }
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < NLIN; k++) {
            if (!t->lA[IDX(l, k)]) continue;
            int o, i;
            lin_dims(c, k, &o, &i);
            for (int ab = 0; ab < 2; ab++) {
                char *nm = names + (size_t)n * 160;
                snprintf(nm, 160, "base_model.model.model.layers.%d.%s.lora_%c.weight", l, hf_mod[k], ab ? 'B' : 'A');
                e[n].name = nm;
                e[n].dtype = WMAT_ST_F32;
                e[n].ndim = 2;
                if (!ab) {
                    e[n].shape[0] = t->lr_rank;
                    e[n].shape[1] = i;
                    e[n].data = t->lA[IDX(l, k)];
                } else {
                    e[n].shape[0] = o;
                    e[n].shape[1] = t->lr_rank;
                    if (k == WMAT_LIN_Q || k == WMAT_LIN_K) {
                        lf[n] = (lora_fill){t, l, k};
                        e[n].fill = fill_B_hf;
                        e[n].user = &lf[n];
                    } else {
                        e[n].data = t->lB[IDX(l, k)];
                    }
                }
                n++;
            }
        }
    char path[4096];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    wmat_st_meta meta[1] = {{"format", "pt"}};
    if ((rc = wmat__st_write(path, e, n, meta, 1))) goto done;
    {
        char js[2048];
        size_t k = (size_t)snprintf(js, sizeof js,
                                    "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"r\": %d,\n"
                                    "  \"lora_alpha\": %g,\n  \"lora_dropout\": 0.0,\n  \"use_rslora\": %s,\n"
                                    "  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n  \"init_lora_weights\": true,\n"
                                    "  \"base_model_name_or_path\": \"%s\",\n  \"target_modules\": [",
                                    t->lr_rank, t->p.lora_alpha, t->p.lora_rslora ? "true" : "false",
                                    wmat_model_path(t->base) ? wmat_model_path(t->base) : "");
        int first = 1;
        for (int kk = 0; kk < NLIN; kk++)
            if (t->p.lora_targets & (1u << kk)) {
                k += (size_t)snprintf(js + k, sizeof js - k, "%s\"%s_proj\"", first ? "" : ", ", wmat_linear_name((wmat_linear_kind)kk));
                first = 0;
            }
        k += (size_t)snprintf(js + k, sizeof js - k, "]\n}\n");
        snprintf(path, sizeof path, "%s/adapter_config.json", dir);
        wmat_afile af;
        if ((rc = wmat__afile_open(&af, path))) goto done;
        if ((rc = wmat__afile_write(&af, js, k))) {
            wmat__afile_abort(&af);
            goto done;
        }
        rc = wmat__afile_commit(&af);
    }
done:
    wmat__free(e);
    wmat__free(lf);
    wmat__free(names);
    return rc;
}
