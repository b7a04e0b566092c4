/* The Gaussian-mixture attention mask: its table over distances and one
 * head's masked causal attention (gmm_mask.h). */
#include "gmm_mask.h"

#include <math.h>
#include <string.h>

void wmat__gmm_table(const float *par, int K, int T, float *m)
{
    for (int d = 0; d < T; d++) {
        float s = 0.0f;
        const float dd = (float)d * (float)d;
        for (int k = 0; k < K; k++) {
            const float a = par[2 * k], sg = par[2 * k + 1];
            s += a * expf(-dd / (2.0f * (sg * sg + WMAT_GMM_EPS)));
        }
        m[d] = s;
    }
}

void wmat__gmm_init(float *par, int n_heads, int K, wmat_rng *r)
{
    for (int i = 0; i < n_heads * K; i++) {
        par[2 * i] = 2.0f * wmat_rng_normal(r);
        par[2 * i + 1] = 10.0f + 10.0f * wmat_rng_normal(r);
    }
}

void wmat__gmm_softmax(const float *S, const float *m, float *P, int T)
{
    for (int t = 0; t < T; t++) {
        const float *s = S + (size_t)t * T;
        float *row = P + (size_t)t * T;
        for (int j = 0; j <= t; j++) row[j] = s[j] * m[t - j];
        float mx = row[0];
        for (int j = 1; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
        float sum = 0.0f;
        for (int j = 0; j <= t; j++) {
            row[j] = expf(row[j] - mx);
            sum += row[j];
        }
        const float inv = 1.0f / sum;
        for (int j = 0; j <= t; j++) row[j] *= inv;
        for (int j = t + 1; j < T; j++) row[j] = 0.0f;
    }
}

size_t wmat__gmm_head_scratch(int T) { return (size_t)T * (size_t)T + (size_t)T; }

void wmat__gmm_head_forward(float *out, int os, const float *q, int qs, const float *k, const float *v, int ks, int T,
                            int hd, const float *par, int K, float *scratch)
{
    float *S = scratch, *m = scratch + (size_t)T * T;
    const float scale = 1.0f / sqrtf((float)hd);
    wmat__gmm_table(par, K, T, m);
    wmat_sgemm(0, 1, T, T, hd, scale, q, qs, k, ks, 0.0f, S, T);
    wmat__gmm_softmax(S, m, S, T);
    wmat_sgemm(0, 0, T, hd, T, 1.0f, S, T, v, ks, 0.0f, out, os);
}
