/* One transformer block (LLaMA: RMSNorm, q/k/v, RoPE, causal attention,
 * o, RMSNorm, SwiGLU FFN) over weight operators: the runtime's batched
 * forward and the trainer's forward both run this function, so the block
 * is written once.
 *
 * What differs between the callers is passed in:
 *   - the linear products, through ops->linear: the runtime multiplies by
 *     its weight operators (packed GEMM, observation hook); the trainer
 *     by its frozen or trainable base plus the adapter's path;
 *   - the attention kernel, through ops->attention: the runtime's blocked
 *     causal attention with the fast exp, the trainer's full-score version
 *     whose probabilities its backward recomputes;
 *   - which activations are kept, through the buffers: the trainer gives
 *     each layer its own buffers (what its backward reads), the runtime
 *     gives the same few buffers to every layer and lets them alias
 *     (attention output over the normed input, residual in place, SwiGLU
 *     over the gate);
 *   - the element-wise numerics (fast: vectorized norm sums, AVX-512 RoPE,
 *     fast exp; exact: run.c's expressions). */
#ifndef WMAT_MODEL_BLOCK_H
#define WMAT_MODEL_BLOCK_H

#include "wmat.h"

typedef struct {
    /* Y (T, out) = X (T, in) W^T for linear kind k of `layer`, or Y += ...
     * when acc. A nonzero return (a hook's stop) ends the block with it. */
    int (*linear)(void *user, int layer, wmat_linear_kind k, float *Y, const float *X, int T, int acc);
    /* Causal grouped-query attention of B windows of T positions, each
     * from position 0: out (B*T, n_heads*hd) from q (B*T, n_heads*hd) and
     * k, v (B*T, n_kv_heads*hd), after RoPE. */
    void (*attention)(void *user, int layer, float *out, const float *q, const float *k, const float *v, int B, int T);
    void *user;
    /* A sliced model's residual shortcut (c->shortcuts): Y (T, dim) = X
     * (T, dim) S^T with S the layer's attention (mlp = 0) or MLP (mlp = 1)
     * shortcut matrix. NULL for callers that run no such model (the block
     * then refuses one). */
    int (*shortcut)(void *user, int layer, int mlp, float *Y, const float *X, int T);
} wmat_block_ops;

/* The block's activations, rows of B*T. Aliases the block allows: ao may
 * be xn1; xmid may be x (then the residual is updated in place); xn2 may
 * be xn1; hs may be hg; out may be xmid. r1, r2 (B*T): the rows' 1/rms,
 * NULL where not kept. */
typedef struct {
    float *x;             /* (BT, dim) the block's input (read; written when xmid == x) */
    float *xn1, *r1;      /* attention norm */
    float *q, *k, *v;     /* after RoPE: q (BT, n_heads * head_dim), k, v (BT, n_kv_heads * head_dim) */
    float *ao;            /* attention output (BT, n_heads * head_dim) */
    float *xmid;          /* x + o(ao) */
    float *xn2, *r2;      /* FFN norm */
    float *hg, *hu, *hs;  /* gate, up, silu(gate) * up (BT, hidden) */
    float *out;           /* xmid + down(hs) */
    float *xs;            /* (BT, dim) a shortcut's product (c->shortcuts only; aliases nothing) */
} wmat_block_bufs;

typedef struct {
    const wmat_config *c;
    const float *attn_norm, *ffn_norm; /* the layer's norm weights (dim) */
    const float *rope_cos, *rope_sin;  /* (T, head_dim/2), wmat__rope_tables */
    int fast;                          /* the runtime's vectorized numerics (see above) */
    int n_threads;
} wmat_block_cfg;

/* Block `layer` on B windows of T tokens. */
int wmat__block_forward(const wmat_block_cfg *cfg, const wmat_block_ops *ops, int layer, const wmat_block_bufs *b,
                        int B, int T);
/* Stages [from, to) of it (0 <= from <= to <= 4), for callers that keep
 * activations between calls (the calibration's stage mode): 0 norm, q/k/v,
 * RoPE, attention (x -> ao); 1 xmid = x + o(ao); 2 norm, gate/up, SwiGLU
 * (xmid -> hs); 3 out = xmid + down(hs). A stage reads what the earlier
 * ones wrote, so the buffers it reads must still hold it. */
int wmat__block_forward_part(const wmat_block_cfg *cfg, const wmat_block_ops *ops, int layer,
                             const wmat_block_bufs *b, int B, int T, int from, int to);

#endif
