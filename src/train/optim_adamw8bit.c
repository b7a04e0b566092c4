/* AdamW with 8-bit states: Adam's moments kept block-quantized between
 * steps, 2.125 bytes per weight instead of 8 (the idea of Dettmers et al.
 * 2022, with plain linear codes instead of their dynamic ones).
 *
 * Per block of 64 weights: m as int8 with scale absmax(m) / 127 (rounded
 * to nearest), and sqrt(v) as uint8 with scale absmax(sqrt v) / 255
 * ROUNDED UP. Storing sqrt(v) spreads v's wide range over the codes, and
 * rounding up keeps a non-zero v from becoming 0 (a weight whose gradient
 * is then 0 would get the step m / eps). Within a step the moments are
 * fp32: the update uses the exact new m, v, only what is stored is coarse. */
#include "optim.h"

#include <math.h>

#define BLK 64

static size_t q8_elems(int k, size_t n) { return (k == 0 || k == 2) ? n : (n + BLK - 1) / BLK; }

static void adamw8_step(float *p, const float *g, void *const *state, size_t n, const wmat__optim_hparams *h)
{
    int8_t *mq = state[0];
    float *ms = state[1];
    uint8_t *vq = state[2];
    float *vs = state[3];
    const float b1 = h->beta1, b2 = h->beta2, eps = h->eps, lr = h->lr, wd = h->weight_decay;
    const float bc1 = 1.0f - powf(b1, (float)h->step), bc2 = 1.0f - powf(b2, (float)h->step);
    const long nb = (long)((n + BLK - 1) / BLK);
#pragma omp parallel for num_threads(h->nt) schedule(static) if (n > 32768)
    for (long b = 0; b < nb; b++) {
        const size_t i0 = (size_t)b * BLK, i1 = i0 + BLK < n ? i0 + BLK : n;
        float m[BLK], r[BLK], am = 0.0f, ar = 0.0f;
        for (size_t i = i0; i < i1; i++) {
            const float sv = (float)vq[i] * vs[b];
            float mi = b1 * ((float)mq[i] * ms[b]) + (1.0f - b1) * g[i];
            float vi = b2 * (sv * sv) + (1.0f - b2) * g[i] * g[i];
            float u = (mi / bc1) / (sqrtf(vi / bc2) + eps);
            p[i] -= lr * (u + wd * p[i]);
            m[i - i0] = mi;
            r[i - i0] = sqrtf(vi);
            am = fmaxf(am, fabsf(mi));
            ar = fmaxf(ar, r[i - i0]);
        }
        ms[b] = am / 127.0f;
        vs[b] = ar / 255.0f;
        for (size_t i = i0; i < i1; i++) {
            float qm = ms[b] > 0 ? rintf(m[i - i0] / ms[b]) : 0.0f;
            float qv = vs[b] > 0 ? ceilf(r[i - i0] / vs[b]) : 0.0f;
            mq[i] = (int8_t)(qm > 127.0f ? 127.0f : qm < -127.0f ? -127.0f : qm);
            vq[i] = (uint8_t)(qv > 255.0f ? 255.0f : qv);
        }
    }
}

const wmat__optimizer wmat__optim_adamw8bit = {
    .name = "adamw8bit",
    .summary = "AdamW with 8-bit block-quantized moments (int8 m, uint8 sqrt(v), fp32 scale per 64: 2.125 bytes per weight)",
    .n_states = 4,
    .states = {{"m.q", WMAT_ST_I8, 1}, {"m.scale", WMAT_ST_F32, sizeof(float)},
               {"v.q", WMAT_ST_U8, 1}, {"v.scale", WMAT_ST_F32, sizeof(float)}},
    .state_elems = q8_elems,
    .step = adamw8_step,
    .serialize = wmat__optim_serialize_raw,
    .deserialize = wmat__optim_deserialize_raw,
};
