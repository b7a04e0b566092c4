/* The shapes of a LLaMA-family model, written once: each layer role's
 * (rows, cols) from the config, the linear kinds' roles, and the RoPE
 * tables. The io layer (loaders, savers), the runtime, the trainer and
 * the adapters all read these, so a shape or a RoPE expression cannot
 * drift between them. */
#ifndef WMAT_CORE_SHAPES_H
#define WMAT_CORE_SHAPES_H

#include "wmat.h"

#include <stdint.h>

/* The attention width n_heads * head_dim: dim, except in a sliced model
 * (attn_dim), whose residual stream is narrower than its heads. */
static inline int wmat__attn_width(const wmat_config *c) { return c->attn_dim > 0 ? c->attn_dim : c->dim; }
/* What the RMSNorms divide the sum of squares by: dim, except in a sliced
 * model, where the sum runs over the dim kept entries but the divisor stays
 * the width it was sliced from. */
static inline int wmat__norm_div(const wmat_config *c) { return c->norm_dim > 0 ? c->norm_dim : c->dim; }

/* Rows and cols of a layer role: linear weights are (out, in), the norms
 * are vectors of dim with *cols = 0. */
void wmat__role_shape(const wmat_config *c, wmat_layer_weight w, int64_t *rows, int64_t *cols);
/* The layer role of a linear kind (q -> WMAT_W_Q, gate -> WMAT_W_GATE, ...). */
wmat_layer_weight wmat__linear_role(wmat_linear_kind k);
/* (out, in) of a linear kind: wmat__role_shape of its role. */
void wmat__linear_shape(const wmat_config *c, wmat_linear_kind k, int *out, int *in);

/* RoPE tables for positions pos0 .. pos0+n_pos-1: cos_tab, sin_tab
 * (n_pos, head_dim/2) with freq = 1 / theta^(2i / head_dim) and angle
 * pos * freq in float (llama2.c's run.c expressions, so greedy text
 * matches it). */
void wmat__rope_tables(const wmat_config *c, int pos0, int n_pos, float *cos_tab, float *sin_tab);

#endif
