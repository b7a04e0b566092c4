/* The LLaMA-family transformer: a batched forward over a window (GEMM, for
 * evaluation, calibration and training) and a one-token decode with a KV
 * cache (matvec, for generation). fp32 throughout. The decode path follows
 * llama2.c's run.c operation for operation (same RoPE and RMSNorm float
 * expressions) so greedy text matches it token for token. */
#include "io/model_internal.h"

#include "block.h"
#include "gmm_mask.h"
#include "core/shapes.h"
#include "kernels.h"
#include "linalg/linalg.h"
#include "linear.h"
#include "runtime.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

/* packing (wmat_runtime_params.pack_weights) doubles the fp32 linear
 * weights' memory: only below this size */
#define PACK_MAX_BYTES ((size_t)1 << 30)

/* query rows per causal attention block in the batched forward */
#define ATT_BLOCK 64

struct wmat_runtime {
    wmat_model *m;
    wmat_config c;
    int T_max;  /* batched window */
    int kv_len; /* decode positions */
    int n_pos;  /* positions covered by the RoPE tables */
    int n_threads;
    wmat_context ctx;
    wmat_wexec ex; /* what the weight kernels may use: this runtime's threads and ISA */
    wmat_arena *arena;
    void *ws;      /* the largest batched workspace any linear weight's kind asks for */
    size_t ws_bytes;
    void *prep[4]; /* decode: each weight's prepared input (q/k/v, gate/up share x) */
    size_t prep_bytes;

    float *rope_cos, *rope_sin; /* (n_pos, head_dim/2) */

    /* batched activations */
    float *x;   /* (T, dim) residual stream */
    float *xb;  /* (T, dim) normed input / attention output */
    float *q;   /* (T, dim) */
    float *k;   /* (T, kv_dim) */
    float *v;   /* (T, kv_dim) */
    float *att; /* n_threads x att_per_thread: scores / attention scratch */
    size_t att_per_thread;
    float *hb;  /* (T, hidden) */
    float *hb2; /* (T, hidden) */
    float *xs;  /* (T, dim) a residual shortcut's product (sliced models; else NULL) */

    /* decode state */
    float *key_cache, *value_cache; /* (L, kv_len, kv_dim) */
    float *dx, *dxb, *dq, *dhb, *dhb2;
    float *dxs; /* (dim) decode's shortcut product (sliced models) */
    float *dnorm;    /* (n_threads, dim): each thread's copy of the normed x (decode_team) */
    int use_team;    /* decode in one parallel region (decode_team) */
    float *datt; /* (n_heads, kv_len); a Gaussian-mixture mask: (n_heads, 2 kv_len), scores and the mask's table */

    /* pack_weights: [l * WMAT_LIN_COUNT + kind], the classifier last; a
     * NULL entry goes through wmat__linear_batch */
    wmat__packed_gemm **packed;
    size_t packed_bytes;
    /* a worker of a window-parallel eval borrows its parent's RoPE tables
     * and packed weights (wmat__runtime_worker_create) */
    const wmat_runtime *parent;

    wmat_linear_hook hook;
    void *hook_user;
    wmat__linear_override lin_fn; /* wmat__runtime_set_linear */
    void *lin_user;
};

wmat_runtime_params wmat_runtime_default_params(void)
{
    wmat_runtime_params p = {0, 0, NULL, 0};
    return p;
}

/* Linear weights by slot: l * WMAT_LIN_COUNT + kind, the classifier last. */
static int linear_slots(const wmat_config *c) { return c->n_layers * WMAT_LIN_COUNT + 1; }

static const wmat_tensor *packed_source(wmat_model *m, int i)
{
    const int L = m->cfg.n_layers;
    return i < L * WMAT_LIN_COUNT ? wmat_model_linear(m, i / WMAT_LIN_COUNT, (wmat_linear_kind)(i % WMAT_LIN_COUNT))
                                  : wmat_model_classifier(m);
}

/* All or nothing, best effort: any failure leaves every weight on wmat_sgemm. */
static void pack_weights(wmat_runtime *rt)
{
    const int n = linear_slots(&rt->c);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const wmat_tensor *W = packed_source(rt->m, i);
        if (W->dtype == WMAT_F32) total += wmat_tensor_nelem(W) * sizeof(float);
    }
    if (total == 0 || total > PACK_MAX_BYTES) return;
    rt->packed = wmat__calloc((size_t)n, sizeof *rt->packed);
    if (!rt->packed) return;
    for (int i = 0; i < n; i++) {
        const wmat_tensor *W = packed_source(rt->m, i);
        if (W->dtype != WMAT_F32) continue;
        if (wmat__packed_gemm_create(&rt->packed[i], rt->ex.gemm, W->data, (int)W->shape[0], (int)W->shape[1])) {
            for (int j = 0; j < i; j++) wmat__packed_gemm_free(rt->packed[j]);
            wmat__free(rt->packed);
            rt->packed = NULL;
            rt->packed_bytes = 0;
            break;
        }
        rt->packed_bytes += wmat__packed_gemm_bytes(rt->packed[i]);
    }
    wmat_clear_error();
}

static void linear_batch(wmat_runtime *rt, int slot, float *Y, const float *X, const wmat_tensor *W, int T, int accumulate)
{
    if (rt->packed && rt->packed[slot] && wmat__packed_gemm_apply(rt->packed[slot], X, T, Y, accumulate, rt->ex.n_threads) == WMAT_OK)
        return;
    wmat__linear_batch(Y, X, W, T, accumulate, rt->ws, &rt->ex);
}

/* y (= or +=) W x on the decode path. */
static void linear_vec(wmat_runtime *rt, float *y, const float *x, const wmat_tensor *W, int accumulate)
{
    wmat__linear_vec_multi(1, &y, x, &W, accumulate, rt->prep, &rt->ex);
}

/* x = S x in place for a sliced model's shortcut S of `layer` (decode). */
static void shortcut_vec(wmat_runtime *rt, float *x, int layer, int mlp)
{
    linear_vec(rt, rt->dxs, x, wmat__model_shortcut(rt->m, layer, mlp), 0);
    memcpy(x, rt->dxs, (size_t)rt->c.dim * sizeof(float));
}

/* The workspace and decode buffers every linear weight's kind asks for. */
static void kind_buffers(wmat_runtime *rt)
{
    rt->ws_bytes = rt->prep_bytes = 0;
    const int n_sc = rt->c.shortcuts ? 2 * rt->c.n_layers : 0;
    for (int i = 0; i < linear_slots(&rt->c) + n_sc; i++) {
        const int j = i - linear_slots(&rt->c);
        const wmat_tensor *W = j < 0 ? packed_source(rt->m, i) : wmat__model_shortcut(rt->m, j / 2, j % 2);
        const wmat_wkind *k = wmat__wkind_of(W);
        const size_t ws = k->ws_bytes(W, rt->T_max, &rt->ex), pb = k->prep_bytes(W, &rt->ex);
        if (ws > rt->ws_bytes) rt->ws_bytes = ws;
        if (pb > rt->prep_bytes) rt->prep_bytes = pb;
    }
}

static float *take(wmat_runtime *rt, size_t n_floats)
{
    return wmat_arena_alloc(rt->arena, n_floats * sizeof(float));
}

/* The arena of activations and KV cache. A worker (parent != NULL) runs
 * batched windows only, on one thread: no KV cache to speak of, and the
 * parent's RoPE tables and packed weights. Frees rt on failure. */
static int alloc_buffers(wmat_runtime *rt, const wmat_runtime *parent)
{
    const wmat_config *c = &rt->c;
    wmat_model *m = rt->m;
    const size_t T = (size_t)rt->T_max, D = (size_t)c->dim, H = (size_t)c->hidden_dim;
    const size_t KV = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    /* A: the attention width (q, attention output), which only a sliced
     * model has different from D; xb holds both a normed row and an
     * attention output, DA floats */
    const size_t A = (size_t)wmat__attn_width(c), DA = A > D ? A : D, XS = c->shortcuts ? D : 0;
    const size_t half = (size_t)c->head_dim / 2, P = parent ? 0 : (size_t)rt->n_pos, S = (size_t)rt->kv_len;
    const size_t L = (size_t)c->n_layers;
    const size_t NT = (size_t)rt->n_threads;
    const size_t ca = wmat__causal_attention_scratch(rt->T_max, c->head_dim);
    /* a Gaussian-mixture mask: scores (T, T) and the mask's table (T) */
    rt->att_per_thread = T * T + (c->gmm_kernels ? T : 0) > ca ? T * T + (c->gmm_kernels ? T : 0) : ca;
    const size_t DATT = (size_t)c->n_heads * S * (c->gmm_kernels ? 2 : 1);
    size_t floats = 2 * P * half + T * (D + DA + A + XS + 2 * KV + 2 * H) + NT * rt->att_per_thread + 2 * L * S * KV +
                    D + DA + A + XS + NT * D + 2 * H + DATT;
    kind_buffers(rt);
    size_t bytes = floats * sizeof(float) + rt->ws_bytes + 4 * rt->prep_bytes + 40 * WMAT_ALIGN;
    int rc = wmat_arena_create(&rt->arena, bytes);
    if (rc) {
        wmat__free(rt);
        return wmat_set_error(rc, "runtime for %s: cannot allocate %zu MB of activations and KV cache",
                              wmat_model_path(m), bytes >> 20);
    }
    if (parent) {
        rt->rope_cos = parent->rope_cos;
        rt->rope_sin = parent->rope_sin;
    } else {
        rt->rope_cos = take(rt, P * half);
        rt->rope_sin = take(rt, P * half);
    }
    rt->x = take(rt, T * D);
    rt->xb = take(rt, T * DA);
    rt->q = take(rt, T * A);
    rt->xs = XS ? take(rt, T * XS) : NULL;
    rt->k = take(rt, T * KV);
    rt->v = take(rt, T * KV);
    rt->att = take(rt, NT * rt->att_per_thread);
    rt->hb = take(rt, T * H);
    rt->hb2 = take(rt, T * H);
    rt->key_cache = take(rt, L * S * KV);
    rt->value_cache = take(rt, L * S * KV);
    rt->dx = take(rt, D);
    rt->dxb = take(rt, DA);
    rt->dxs = XS ? take(rt, XS) : NULL;
    rt->dnorm = take(rt, NT * D);
    rt->dq = take(rt, A);
    rt->dhb = take(rt, H);
    rt->dhb2 = take(rt, H);
    rt->datt = take(rt, DATT);
    rt->ws = rt->ws_bytes ? wmat_arena_alloc(rt->arena, rt->ws_bytes) : NULL;
    for (int i = 0; i < 4; i++) rt->prep[i] = rt->prep_bytes ? wmat_arena_alloc(rt->arena, rt->prep_bytes) : NULL;
    if (!rt->datt || (rt->ws_bytes && !rt->ws) || (rt->prep_bytes && !rt->prep[3])) {
        wmat_runtime_free(rt);
        return wmat_set_error(WMAT_ERR_INTERNAL, "runtime: arena sizing is wrong");
    }
    if (parent) return WMAT_OK;
    wmat__rope_tables(c, 0, (int)P, rt->rope_cos, rt->rope_sin);
    return WMAT_OK;
}

int wmat__runtime_worker_create(wmat_runtime **out, const wmat_runtime *parent)
{
    *out = NULL;
    wmat_runtime *rt = wmat__calloc(1, sizeof *rt);
    if (!rt) return wmat_set_error(WMAT_ERR_NOMEM, "runtime: out of memory");
    rt->m = parent->m;
    rt->c = parent->c;
    rt->T_max = parent->T_max;
    rt->kv_len = 1;
    rt->n_pos = parent->n_pos;
    rt->n_threads = 1;
    rt->ctx = parent->ctx;
    rt->ctx.n_threads = 1;
    rt->ctx.progress = NULL;
    rt->ex = parent->ex;
    rt->ex.n_threads = 1;
    rt->parent = parent;
    rt->packed = parent->packed;
    int rc = alloc_buffers(rt, parent);
    if (rc) return rc;
    *out = rt;
    return WMAT_OK;
}

int wmat__runtime_has_hook(const wmat_runtime *rt) { return rt->hook != NULL; }
int wmat__runtime_threads(const wmat_runtime *rt) { return rt->n_threads; }
const wmat_config *wmat__runtime_config(const wmat_runtime *rt) { return &rt->c; }
wmat_model *wmat__runtime_model(const wmat_runtime *rt) { return rt->m; }

int wmat_runtime_create(wmat_runtime **out, wmat_model *m, const wmat_runtime_params *p)
{
    *out = NULL;
    wmat_runtime_params def = wmat_runtime_default_params();
    if (!p) p = &def;
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        /* weights of any registered kind (the embedding is read by rows
         * through its kind too); norms and other vectors fp32 */
        int ok = t->ndim == 2 ? wmat__linear_supported(t) && !(t->flags & WMAT_TF_HF_ROPE) : t->dtype == WMAT_F32;
        if (!ok)
            return wmat_set_error(WMAT_ERR_INVALID, "%s: tensor %s is %s, which the runtime cannot use; call wmat_model_materialize first",
                                  wmat_model_path(m), t->name, wmat_dtype_info(t->dtype) ? wmat_dtype_info(t->dtype)->name : "?");
    }
    wmat_runtime *rt = wmat__calloc(1, sizeof *rt);
    if (!rt) return wmat_set_error(WMAT_ERR_NOMEM, "runtime: out of memory");
    rt->m = m;
    rt->c = m->cfg;
    const wmat_config *c = &rt->c;
    rt->T_max = p->max_batch_tokens > 0 ? p->max_batch_tokens : c->seq_len;
    rt->kv_len = p->kv_cache_len > 0 ? p->kv_cache_len : c->seq_len;
    rt->n_pos = rt->T_max > rt->kv_len ? rt->T_max : rt->kv_len;
    rt->n_threads = wmat_context_threads(p->ctx);
    rt->ctx = p->ctx ? *p->ctx : wmat_context_default();
    rt->ex = wmat__wexec_from(&rt->ctx);
    rt->ex.isa = wmat__decode_isa();

    int rc = alloc_buffers(rt, NULL);
    if (rc) return rc;
    if (p->pack_weights) pack_weights(rt);
    /* one parallel region per decoded token pays off once the matvecs are
     * big enough to split (the same 64K multiply-adds wmat__matvec_multi
     * uses) and all of them are fp32 (packed types thread on their own) */
    rt->use_team = rt->n_threads > 1 && (long)c->dim * c->dim >= 65536 && !c->shortcuts && !c->attn_dim && !c->norm_dim &&
                   !c->gmm_kernels;
    for (int i = 0; i < linear_slots(c) && rt->use_team; i++) rt->use_team = packed_source(m, i)->dtype == WMAT_F32;
    *out = rt;
    return WMAT_OK;
}

void wmat_runtime_free(wmat_runtime *rt)
{
    if (!rt) return;
    if (rt->packed && !rt->parent)
        for (int i = 0; i < linear_slots(&rt->c); i++) wmat__packed_gemm_free(rt->packed[i]);
    if (!rt->parent) wmat__free(rt->packed);
    wmat_arena_free(rt->arena);
    wmat__free(rt);
}

void wmat_runtime_set_hook(wmat_runtime *rt, wmat_linear_hook fn, void *user)
{
    rt->hook = fn;
    rt->hook_user = user;
}

void wmat__runtime_set_linear(wmat_runtime *rt, wmat__linear_override fn, void *user)
{
    rt->lin_fn = fn;
    rt->lin_user = user;
}

size_t wmat_runtime_bytes(const wmat_runtime *rt) { return wmat_arena_capacity(rt->arena); }
size_t wmat_runtime_packed_bytes(const wmat_runtime *rt) { return rt->packed_bytes; }
int wmat_runtime_max_tokens(const wmat_runtime *rt) { return rt->T_max; }
int wmat_runtime_vocab(const wmat_runtime *rt) { return rt->c.vocab_size; }
const wmat_context *wmat_runtime_context(const wmat_runtime *rt) { return &rt->ctx; }

static int call_hook(wmat_runtime *rt, int layer, wmat_linear_kind k, const float *X, int T, int in,
                     const wmat_tensor *W)
{
    if (!rt->hook) return WMAT_OK;
    if (rt->hook(rt->hook_user, layer, k, X, T, in, W))
        return wmat_set_error(WMAT_ERR_CANCELLED, "forward pass stopped by the observation hook (layer %d, %s)", layer,
                              wmat_linear_name(k));
    return WMAT_OK;
}


static int check_window(const wmat_runtime *rt, int T, const char *what)
{
    if (T <= 0 || T > rt->T_max)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: %d tokens, the runtime holds windows of 1..%d", what, T, rt->T_max);
    return WMAT_OK;
}

int wmat_forward_embed(wmat_runtime *rt, const int32_t *tokens, int T, float *X)
{
    const wmat_config *c = &rt->c;
    int rc = check_window(rt, T, "forward");
    if (rc) return rc;
    const int D = c->dim;
    const wmat_tensor *E = wmat_model_tok_embeddings(rt->m);
    const wmat_wkind *ek = wmat__wkind_of(E);
    for (int t = 0; t < T; t++) {
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return wmat_set_error(WMAT_ERR_INVALID, "forward: token %d at position %d is outside the vocabulary (%d)",
                                  tokens[t], t, c->vocab_size);
        ek->dequant_rows(E, tokens[t], 1, X + (size_t)t * D);
    }
    return WMAT_OK;
}

/* The block's linear products on the runtime: the observation hook, then
 * the override (wmat__runtime_set_linear) or the weight's packed GEMM or
 * its kind's batched forward. */
static int rt_linear(void *user, int layer, wmat_linear_kind k, float *Y, const float *X, int T, int acc)
{
    wmat_runtime *rt = user;
    const wmat_tensor *W = wmat_model_linear(rt->m, layer, k);
    int rc = call_hook(rt, layer, k, X, T, (int)W->shape[1], W);
    if (rc) return rc;
    if (rt->lin_fn && (rc = rt->lin_fn(rt->lin_user, layer, k, Y, X, T, acc, W)) <= 0) return rc;
    linear_batch(rt, layer * WMAT_LIN_COUNT + k, Y, X, W, T, acc);
    return WMAT_OK;
}

/* Causal attention of one window (B = 1), heads in parallel, each thread
 * with its own scratch: the AVX-512 kernel where there is one, else per
 * head S = Q_h K_h^T (T, T), masked softmax by rows, O_h = P V_h (GEMMs
 * inside a parallel region run on one thread). */
static void rt_attention(void *user, int layer, float *out, const float *q, const float *k, const float *v, int B,
                         int T)
{
    (void)layer, (void)B;
    wmat_runtime *rt = user;
    const wmat_config *c = &rt->c;
    const int D = wmat__attn_width(c), hd = c->head_dim, KV = c->n_kv_heads * hd, kv_mul = c->n_heads / c->n_kv_heads;
    const float scale = 1.0f / sqrtf((float)hd);
    if (c->gmm_kernels) {
        /* the Gaussian-mixture mask (gmm_mask.h): the trainer's per-head forward */
        char name[WMAT_NAME_MAX];
        wmat__gmm_mask_name(name, sizeof name, layer);
        const float *par = wmat_model_find(rt->m, name)->data;
        const int K = c->gmm_kernels;
#pragma omp parallel for num_threads(rt->n_threads) schedule(static)
        for (int h = 0; h < c->n_heads; h++)
            wmat__gmm_head_forward(out + (size_t)h * hd, D, q + (size_t)h * hd, D, k + (size_t)(h / kv_mul) * hd,
                                   v + (size_t)(h / kv_mul) * hd, KV, T, hd, par + (size_t)h * 2 * K, K,
                                   rt->att + (size_t)omp_get_thread_num() * rt->att_per_thread);
        return;
    }
#pragma omp parallel for num_threads(rt->n_threads) schedule(static)
    for (int h = 0; h < c->n_heads; h++) {
        const int kvh = h / kv_mul;
        float *att = rt->att + (size_t)omp_get_thread_num() * rt->att_per_thread;
        if (wmat__causal_attention(out + (size_t)h * hd, D, q + (size_t)h * hd, D, k + (size_t)kvh * hd,
                                   v + (size_t)kvh * hd, KV, T, hd, scale, att))
            continue;
        /* query rows in blocks of ATT_BLOCK: block b needs keys
         * 0..(b+1)*ATT_BLOCK only, so the masked upper triangle is
         * mostly never computed (T = 256: 62.5% of the full products) */
        for (int r0 = 0; r0 < T; r0 += ATT_BLOCK) {
            const int nr = T - r0 < ATT_BLOCK ? T - r0 : ATT_BLOCK, e = r0 + nr;
            wmat__sgemm_cfg(rt->ex.gemm, 1, 0, 1, nr, e, hd, scale, q + (size_t)r0 * D + (size_t)h * hd, D,
                            k + (size_t)kvh * hd, KV, 0.0f, att, T);
            wmat__causal_softmax_block(att, nr, e, T, r0);
            wmat__sgemm_cfg(rt->ex.gemm, 1, 0, 0, nr, hd, e, 1.0f, att, T, v + (size_t)kvh * hd, KV, 0.0f,
                            out + (size_t)r0 * D + (size_t)h * hd, D);
        }
    }
}

/* A sliced model's residual shortcut: Y = X S^T through the matrix's kind. */
static int rt_shortcut(void *user, int layer, int mlp, float *Y, const float *X, int T)
{
    wmat_runtime *rt = user;
    wmat__linear_batch(Y, X, wmat__model_shortcut(rt->m, layer, mlp), T, 0, rt->ws, &rt->ex);
    return WMAT_OK;
}

/* Blocks l0..l1-1 on the residual stream rt->x (T, dim), in place: the
 * shared block (block.h) over one set of buffers, nothing kept. */
static int run_layers(wmat_runtime *rt, int T, int l0, int l1)
{
    const wmat_block_ops ops = {rt_linear, rt_attention, rt, rt_shortcut};
    /* xb holds the normed input, then the attention output, then the FFN's
     * normed input; hb the gate and then silu(gate) * up */
    const wmat_block_bufs b = {.x = rt->x, .xn1 = rt->xb, .q = rt->q, .k = rt->k, .v = rt->v, .ao = rt->xb,
                               .xmid = rt->x, .xn2 = rt->xb, .hg = rt->hb, .hu = rt->hb2, .hs = rt->hb, .out = rt->x,
                               .xs = rt->xs};
    for (int l = l0; l < l1; l++) {
        const wmat_block_cfg cfg = {&rt->c, wmat_model_layer_tensor(rt->m, l, WMAT_W_ATTN_NORM)->data,
                                    wmat_model_layer_tensor(rt->m, l, WMAT_W_FFN_NORM)->data, rt->rope_cos,
                                    rt->rope_sin, 1, rt->n_threads};
        int rc = wmat__block_forward(&cfg, &ops, l, &b, 1, T);
        if (rc) return rc;
    }
    return WMAT_OK;
}

int wmat__forward_block_part(wmat_runtime *rt, float *x, float *ao, float *hs, int T, int layer, int from, int to)
{
    int rc = check_window(rt, T, "forward_block_part");
    if (rc) return rc;
    if (layer < 0 || layer >= rt->c.n_layers || from < 0 || to > 4 || from > to)
        return wmat_set_error(WMAT_ERR_INVALID, "forward_block_part: block %d stages %d..%d", layer, from, to);
    const wmat_block_ops ops = {rt_linear, rt_attention, rt, rt_shortcut};
    /* as run_layers, with the residual stream, ao and hs the caller's */
    const wmat_block_bufs b = {.x = x, .xn1 = rt->xb, .q = rt->q, .k = rt->k, .v = rt->v, .ao = ao, .xmid = x,
                               .xn2 = rt->xb, .hg = hs, .hu = rt->hb2, .hs = hs, .out = x, .xs = rt->xs};
    const wmat_block_cfg cfg = {&rt->c, wmat_model_layer_tensor(rt->m, layer, WMAT_W_ATTN_NORM)->data,
                                wmat_model_layer_tensor(rt->m, layer, WMAT_W_FFN_NORM)->data, rt->rope_cos,
                                rt->rope_sin, 1, rt->n_threads};
    return wmat__block_forward_part(&cfg, &ops, layer, &b, 1, T, from, to);
}

int wmat_forward_layers(wmat_runtime *rt, const float *X_in, float *X_out, int T, int l0, int l1)
{
    int rc = check_window(rt, T, "forward_layers");
    if (rc) return rc;
    if (l0 < 0 || l1 > rt->c.n_layers || l0 > l1)
        return wmat_set_error(WMAT_ERR_INVALID, "forward_layers: blocks %d..%d outside 0..%d", l0, l1 - 1,
                              rt->c.n_layers - 1);
    const size_t bytes = (size_t)T * (size_t)rt->c.dim * sizeof(float);
    if (X_in != rt->x) memcpy(rt->x, X_in, bytes);
    if ((rc = run_layers(rt, T, l0, l1))) return rc;
    if (X_out && X_out != rt->x) memcpy(X_out, rt->x, bytes);
    return WMAT_OK;
}

int wmat_forward_head(wmat_runtime *rt, const float *X, int T, float *logits)
{
    const wmat_config *c = &rt->c;
    int rc = check_window(rt, T, "forward_head");
    if (rc) return rc;
    const int nt = rt->n_threads;
    wmat__rmsnorm_div(rt->xb, NULL, X, wmat_model_final_norm(rt->m)->data, T, c->dim, wmat__norm_div(c), c->norm_eps, 1,
                      nt);
    const wmat_tensor *wc = wmat_model_classifier(rt->m);
    if ((rc = call_hook(rt, c->n_layers, WMAT_LIN_COUNT, rt->xb, T, c->dim, wc))) return rc;
    if (logits) linear_batch(rt, linear_slots(c) - 1, logits, rt->xb, wc, T, 0);
    return WMAT_OK;
}

int wmat_forward(wmat_runtime *rt, const int32_t *tokens, int T, float *logits)
{
    int rc;
    if ((rc = wmat_forward_embed(rt, tokens, T, rt->x)) || (rc = run_layers(rt, T, 0, rt->c.n_layers))) return rc;
    return wmat_forward_head(rt, rt->x, T, logits);
}

/* wmat_decode in one parallel region: each thread normalizes x into its
 * own buffer (the same floats in every thread), computes its rows of each
 * matvec (the split wmat__matvec_multi uses), rotates the q/k rows it
 * computed and applies SwiGLU to the gate/up rows it computed, so the only
 * synchronization is five barriers per layer where a result is read
 * across threads. Every value is computed by the same expression as in the
 * fork-per-matvec path, so logits are bit-identical to it. */
static void decode_team(wmat_runtime *rt, int pos, float *logits)
{
    const wmat_config *c = &rt->c;
    wmat_model *m = rt->m;
    const int D = c->dim, KV = c->n_kv_heads * c->head_dim, H = c->hidden_dim, hd = c->head_dim;
    const int half = hd / 2, kv_mul = c->n_heads / c->n_kv_heads, S = rt->kv_len, V = c->vocab_size;
    float *x = rt->dx;
    const float *cs = rt->rope_cos + (size_t)pos * half, *sn = rt->rope_sin + (size_t)pos * half;
    const float inv = 1.0f / sqrtf((float)hd);
#pragma omp parallel num_threads(rt->n_threads)
    {
        const int t = omp_get_thread_num(), T = omp_get_num_threads();
        float *nb = rt->dnorm + (size_t)t * D;
        for (int l = 0; l < c->n_layers; l++) {
            wmat__rmsnorm(nb, NULL, x, wmat_model_layer_tensor(m, l, WMAT_W_ATTN_NORM)->data, 1, D, c->norm_eps, 0, 1);
            float *kc = rt->key_cache + ((size_t)l * S + pos) * KV;
            float *vc = rt->value_cache + ((size_t)l * S + pos) * KV;
            {
                float *const ys[3] = {rt->dq, kc, vc};
                const float *const ws[3] = {wmat_model_linear(m, l, WMAT_LIN_Q)->data,
                                            wmat_model_linear(m, l, WMAT_LIN_K)->data,
                                            wmat_model_linear(m, l, WMAT_LIN_V)->data};
                const int rows[3] = {D, KV, KV};
                wmat__matvec_multi_part(3, ys, ws, rows, nb, D, 0, t, T);
                int g0, g1;
                wmat__matvec_part_range(D + 2 * KV, t, T, &g0, &g1);
                if (g0 < D) wmat__rope_span(rt->dq, g0, g1 < D ? g1 : D, hd, cs, sn);
                if (g1 > D && g0 < D + KV) wmat__rope_span(kc, g0 > D ? g0 - D : 0, g1 - D < KV ? g1 - D : KV, hd, cs, sn);
            }
#pragma omp barrier
            const float *kbase = rt->key_cache + (size_t)l * S * KV, *vbase = rt->value_cache + (size_t)l * S * KV;
#pragma omp for schedule(static)
            for (int h = 0; h < c->n_heads; h++) {
                const size_t koff = (size_t)(h / kv_mul) * hd;
                wmat__attend_one(rt->dxb + (size_t)h * hd, rt->dq + (size_t)h * hd, kbase + koff, vbase + koff, KV,
                                 pos + 1, hd, inv, rt->datt + (size_t)h * S);
            }
            {
                const float *wo = wmat_model_linear(m, l, WMAT_LIN_O)->data;
                wmat__matvec_multi_part(1, &x, &wo, &D, rt->dxb, D, 1, t, T);
            }
#pragma omp barrier
            wmat__rmsnorm(nb, NULL, x, wmat_model_layer_tensor(m, l, WMAT_W_FFN_NORM)->data, 1, D, c->norm_eps, 0, 1);
            {
                const float *wg = wmat_model_linear(m, l, WMAT_LIN_GATE)->data, *wu = wmat_model_linear(m, l, WMAT_LIN_UP)->data;
                wmat__matvec_multi_part(1, &rt->dhb, &wg, &H, nb, D, 0, t, T);
                wmat__matvec_multi_part(1, &rt->dhb2, &wu, &H, nb, D, 0, t, T);
                int a, b;
                wmat__matvec_part_range(H, t, T, &a, &b);
                if (a < b) wmat__swiglu(rt->dhb + a, rt->dhb + a, rt->dhb2 + a, (size_t)(b - a), 0, 1);
            }
#pragma omp barrier
            {
                const float *wd = wmat_model_linear(m, l, WMAT_LIN_DOWN)->data;
                wmat__matvec_multi_part(1, &x, &wd, &D, rt->dhb, H, 1, t, T);
            }
#pragma omp barrier
        }
        wmat__rmsnorm(nb, NULL, x, wmat_model_final_norm(m)->data, 1, D, c->norm_eps, 0, 1);
        const float *wc = wmat_model_classifier(m)->data;
        wmat__matvec_multi_part(1, &logits, &wc, &V, nb, D, 0, t, T);
    }
}

/* Decode's attention of layer l under the Gaussian-mixture mask
 * (gmm_mask.h): each head's query at pos over the cached keys 0..pos, the
 * scores times the mask's M(pos - j) before the softmax, as the batched
 * forward masks row pos of a window. Only a masked model comes here (the
 * unmasked decode never does; such a runtime never uses decode_team). */
static void decode_gmm_attention(wmat_runtime *rt, int l, int pos, const float *kbase, const float *vbase)
{
    const wmat_config *c = &rt->c;
    const int hd = c->head_dim, KV = c->n_kv_heads * hd, kv_mul = c->n_heads / c->n_kv_heads, K = c->gmm_kernels;
    const size_t S = (size_t)rt->kv_len;
    char name[WMAT_NAME_MAX];
    wmat__gmm_mask_name(name, sizeof name, l);
    const float *par = wmat_model_find(rt->m, name)->data;
#pragma omp parallel for num_threads(rt->n_threads) schedule(static) if (pos > 64)
    for (int h = 0; h < c->n_heads; h++) {
        const size_t koff = (size_t)(h / kv_mul) * hd;
        wmat__gmm_attend_one(rt->dxb + (size_t)h * hd, rt->dq + (size_t)h * hd, kbase + koff, vbase + koff, KV, pos + 1,
                             hd, par + (size_t)h * 2 * K, K, rt->datt + (size_t)h * 2 * S);
    }
}

int wmat_decode(wmat_runtime *rt, int32_t token, int pos, float *logits)
{
    const wmat_config *c = &rt->c;
    wmat_model *m = rt->m;
    if (pos < 0 || pos >= rt->kv_len)
        return wmat_set_error(WMAT_ERR_INVALID, "decode: position %d outside the KV cache (0..%d)", pos, rt->kv_len - 1);
    if (token < 0 || token >= c->vocab_size)
        return wmat_set_error(WMAT_ERR_INVALID, "decode: token %d outside the vocabulary (%d)", token, c->vocab_size);
    const int D = c->dim, KV = c->n_kv_heads * c->head_dim, H = c->hidden_dim, hd = c->head_dim;
    const int half = hd / 2, kv_mul = c->n_heads / c->n_kv_heads, S = rt->kv_len, ND = wmat__norm_div(c);
    const int nt = rt->n_threads;
    float *x = rt->dx;
    {
        const wmat_tensor *E = wmat_model_tok_embeddings(m);
        wmat__wkind_of(E)->dequant_rows(E, token, 1, x);
    }
    if (rt->use_team) {
        decode_team(rt, pos, logits);
        return WMAT_OK;
    }
    const float *cs = rt->rope_cos + (size_t)pos * half, *sn = rt->rope_sin + (size_t)pos * half;
    for (int l = 0; l < c->n_layers; l++) {
        wmat__rmsnorm_div(rt->dxb, NULL, x, wmat_model_layer_tensor(m, l, WMAT_W_ATTN_NORM)->data, 1, D, ND, c->norm_eps, 0,
                          1);
        float *kc = rt->key_cache + ((size_t)l * S + pos) * KV;
        float *vc = rt->value_cache + ((size_t)l * S + pos) * KV;
        {
            float *const ys[3] = {rt->dq, kc, vc};
            const wmat_tensor *const ws[3] = {wmat_model_linear(m, l, WMAT_LIN_Q), wmat_model_linear(m, l, WMAT_LIN_K),
                                              wmat_model_linear(m, l, WMAT_LIN_V)};
            wmat__linear_vec_multi(3, ys, rt->dxb, ws, 0, rt->prep, &rt->ex);
        }
        wmat__rope_row(rt->dq, c->n_heads, hd, cs, sn);
        wmat__rope_row(kc, c->n_kv_heads, hd, cs, sn);
        const float *kbase = rt->key_cache + (size_t)l * S * KV, *vbase = rt->value_cache + (size_t)l * S * KV;
        const float inv = 1.0f / sqrtf((float)hd);
        if (c->gmm_kernels) {
            decode_gmm_attention(rt, l, pos, kbase, vbase);
        } else {
#pragma omp parallel for num_threads(nt) schedule(static) if (pos > 64)
            for (int h = 0; h < c->n_heads; h++) {
                const size_t koff = (size_t)(h / kv_mul) * hd;
                wmat__attend_one(rt->dxb + (size_t)h * hd, rt->dq + (size_t)h * hd, kbase + koff, vbase + koff, KV,
                                 pos + 1, hd, inv, rt->datt + (size_t)h * S);
            }
        }
        if (c->shortcuts) shortcut_vec(rt, x, l, 0);
        linear_vec(rt, x, rt->dxb, wmat_model_linear(m, l, WMAT_LIN_O), 1);
        wmat__rmsnorm_div(rt->dxb, NULL, x, wmat_model_layer_tensor(m, l, WMAT_W_FFN_NORM)->data, 1, D, ND, c->norm_eps, 0, 1);
        {
            float *const ys[2] = {rt->dhb, rt->dhb2};
            const wmat_tensor *const ws[2] = {wmat_model_linear(m, l, WMAT_LIN_GATE), wmat_model_linear(m, l, WMAT_LIN_UP)};
            wmat__linear_vec_multi(2, ys, rt->dxb, ws, 0, rt->prep, &rt->ex);
        }
        wmat__swiglu(rt->dhb, rt->dhb, rt->dhb2, (size_t)H, 0, 1);
        if (c->shortcuts) shortcut_vec(rt, x, l, 1);
        linear_vec(rt, x, rt->dhb, wmat_model_linear(m, l, WMAT_LIN_DOWN), 1);
    }
    wmat__rmsnorm_div(x, NULL, x, wmat_model_final_norm(m)->data, 1, D, ND, c->norm_eps, 0, 1);
    linear_vec(rt, logits, x, wmat_model_classifier(m), 0);
    return WMAT_OK;
}
