#include "block.h"

#include "core/shapes.h"
#include "kernels.h"

#include <string.h>

int wmat__block_forward(const wmat_block_cfg *cfg, const wmat_block_ops *ops, int layer, const wmat_block_bufs *b,
                        int B, int T)
{
    return wmat__block_forward_part(cfg, ops, layer, b, B, T, 0, 4);
}

int wmat__block_forward_part(const wmat_block_cfg *cfg, const wmat_block_ops *ops, int layer,
                             const wmat_block_bufs *b, int B, int T, int from, int to)
{
    const wmat_config *c = cfg->c;
    const int BT = B * T, D = c->dim, hd = c->head_dim, KV = c->n_kv_heads * hd, nt = cfg->n_threads;
    const int A = wmat__attn_width(c), ND = wmat__norm_div(c);
    const size_t rowbytes = (size_t)BT * (size_t)D * sizeof(float);
    void *u = ops->user;
    int rc;
    if (c->shortcuts && (!ops->shortcut || !b->xs))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "block %d: this caller runs no residual shortcut matrices (a sliced model)",
                              layer);
    /* attention: xmid = x + o(attn(rope(q(xn1)), rope(k(xn1)), v(xn1))),
     * x mapped through S_attn first in a sliced model */
    if (from <= 0 && to > 0) {
        wmat__rmsnorm_div(b->xn1, b->r1, b->x, cfg->attn_norm, BT, D, ND, c->norm_eps, cfg->fast, nt);
        if ((rc = ops->linear(u, layer, WMAT_LIN_Q, b->q, b->xn1, BT, 0)) ||
            (rc = ops->linear(u, layer, WMAT_LIN_K, b->k, b->xn1, BT, 0)) ||
            (rc = ops->linear(u, layer, WMAT_LIN_V, b->v, b->xn1, BT, 0)))
            return rc;
        wmat__rope_rows(b->q, A, c->n_heads, b->k, KV, c->n_kv_heads, BT, T, hd, cfg->rope_cos, cfg->rope_sin,
                        cfg->fast, nt);
        ops->attention(u, layer, b->ao, b->q, b->k, b->v, B, T);
    }
    if (from <= 1 && to > 1) {
        if (c->shortcuts) {
            if ((rc = ops->shortcut(u, layer, 0, b->xs, b->x, BT))) return rc;
            memcpy(b->xmid, b->xs, rowbytes);
        } else if (b->xmid != b->x)
            memcpy(b->xmid, b->x, rowbytes);
        if ((rc = ops->linear(u, layer, WMAT_LIN_O, b->xmid, b->ao, BT, 1))) return rc;
    }
    /* FFN: out = xmid + down(swiglu(gate(xn2), up(xn2))) (xmid through S_mlp) */
    if (from <= 2 && to > 2) {
        wmat__rmsnorm_div(b->xn2, b->r2, b->xmid, cfg->ffn_norm, BT, D, ND, c->norm_eps, cfg->fast, nt);
        if ((rc = ops->linear(u, layer, WMAT_LIN_GATE, b->hg, b->xn2, BT, 0)) ||
            (rc = ops->linear(u, layer, WMAT_LIN_UP, b->hu, b->xn2, BT, 0)))
            return rc;
        wmat__swiglu(b->hs, b->hg, b->hu, (size_t)BT * (size_t)c->hidden_dim, cfg->fast, nt);
    }
    if (from > 3 || to <= 3) return WMAT_OK;
    if (c->shortcuts) { /* as o above: xmid stays until down has run */
        if ((rc = ops->shortcut(u, layer, 1, b->xs, b->xmid, BT)) ||
            (rc = ops->linear(u, layer, WMAT_LIN_DOWN, b->xs, b->hs, BT, 1)))
            return rc;
        memcpy(b->out, b->xs, rowbytes);
        return WMAT_OK;
    }
    if (b->out != b->xmid) memcpy(b->out, b->xmid, rowbytes);
    return ops->linear(u, layer, WMAT_LIN_DOWN, b->out, b->hs, BT, 1);
}
