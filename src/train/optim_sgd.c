/* SGD with (heavy-ball) momentum and decoupled weight decay:
 * m = mu m + g, p -= lr * (m + wd * p). */
#include "optim.h"

static void sgd_step(float *p, const float *g, void *const *state, size_t n, const wmat__optim_hparams *h)
{
    float *m = state[0];
    const float mu = h->momentum, lr = h->lr, wd = h->weight_decay;
    for (size_t i = 0; i < n; i++) {
        m[i] = mu * m[i] + g[i];
        p[i] -= lr * (m[i] + wd * p[i]);
    }
}

const wmat__optimizer wmat__optim_sgd = {
    .name = "sgd",
    .summary = "SGD with momentum (fp32 momentum: 4 bytes per weight)",
    .n_states = 1,
    .states = {{"m", WMAT_ST_F32, sizeof(float)}},
    .step = sgd_step,
    .serialize = wmat__optim_serialize_raw,
    .deserialize = wmat__optim_deserialize_raw,
};
