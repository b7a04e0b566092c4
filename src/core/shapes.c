#include "shapes.h"

#include <math.h>

static const wmat_layer_weight g_roles[WMAT_LIN_COUNT] = {WMAT_W_Q,    WMAT_W_K,  WMAT_W_V,   WMAT_W_O,
                                                          WMAT_W_GATE, WMAT_W_UP, WMAT_W_DOWN};

void wmat__role_shape(const wmat_config *c, wmat_layer_weight w, int64_t *rows, int64_t *cols)
{
    const int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
    *rows = c->dim;
    *cols = c->dim;
    switch (w) {
    case WMAT_W_ATTN_NORM:
    case WMAT_W_FFN_NORM: *cols = 0; break;
    case WMAT_W_Q: *rows = wmat__attn_width(c); break;
    case WMAT_W_O: *cols = wmat__attn_width(c); break;
    case WMAT_W_K:
    case WMAT_W_V: *rows = kv; break;
    case WMAT_W_GATE:
    case WMAT_W_UP: *rows = c->hidden_dim; break;
    case WMAT_W_DOWN: *cols = c->hidden_dim; break;
    default: break;
    }
}

wmat_layer_weight wmat__linear_role(wmat_linear_kind k) { return g_roles[k]; }

void wmat__linear_shape(const wmat_config *c, wmat_linear_kind k, int *out, int *in)
{
    int64_t r, cc;
    wmat__role_shape(c, g_roles[k], &r, &cc);
    *out = (int)r;
    *in = (int)cc;
}

void wmat__rope_tables(const wmat_config *c, int pos0, int n_pos, float *cos_tab, float *sin_tab)
{
    const int half = c->head_dim / 2;
    for (int p = 0; p < n_pos; p++)
        for (int i = 0; i < half; i++) {
            float freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
            float val = (float)(pos0 + p) * freq;
            cos_tab[(size_t)p * half + i] = cosf(val);
            sin_tab[(size_t)p * half + i] = sinf(val);
        }
}
