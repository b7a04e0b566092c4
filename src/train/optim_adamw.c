/* AdamW (Loshchilov & Hutter): Adam's moments m, v in fp32 and decoupled
 * weight decay, p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p). */
#include "optim.h"

#include <math.h>

static void adamw_step(float *p, const float *g, void *const *state, size_t n, const wmat__optim_hparams *h)
{
    float *m = state[0], *v = state[1];
    const float b1 = h->beta1, b2 = h->beta2, eps = h->eps, lr = h->lr, wd = h->weight_decay;
    const float bc1 = 1.0f - powf(b1, (float)h->step), bc2 = 1.0f - powf(b2, (float)h->step);
#pragma omp parallel for num_threads(h->nt) schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        float u = (mi / bc1) / (sqrtf(vi / bc2) + eps);
        p[i] -= lr * (u + wd * p[i]);
    }
}

const wmat__optimizer wmat__optim_adamw = {
    .name = "adamw",
    .summary = "Adam with decoupled weight decay (fp32 moments m, v: 8 bytes per weight)",
    .n_states = 2,
    .states = {{"m", WMAT_ST_F32, sizeof(float)}, {"v", WMAT_ST_F32, sizeof(float)}},
    .step = adamw_step,
    .serialize = wmat__optim_serialize_raw,
    .deserialize = wmat__optim_deserialize_raw,
};
