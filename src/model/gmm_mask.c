/* The Gaussian-mixture attention mask: its table over distances, one
 * head's masked causal attention over a window and one query's over the
 * KV cache (gmm_mask.h). */
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

void wmat__causal_row_softmax(float *row, int t)
{
    float mx = row[0];
    for (int j = 1; j <= t; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
    for (int j = 0; j <= t; j++) {
        row[j] = expf(row[j] - mx);
        sum += row[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j <= t; j++) row[j] *= inv;
}

/* Query t's weights over keys 0..t: softmax_j(s[j] M(t - j)) (row may be s). */
static void masked_softmax_row(const float *s, const float *m, float *row, int t)
{
    for (int j = 0; j <= t; j++) row[j] = s[j] * m[t - j];
    wmat__causal_row_softmax(row, t);
}

void wmat__gmm_softmax(const float *S, const float *m, float *P, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = P + (size_t)t * T;
        masked_softmax_row(S + (size_t)t * T, m, row, t);
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

void wmat__gmm_attend_one(float *out, const float *q, const float *k, const float *v, int ks, int n, int hd,
                          const float *par, int K, float *scratch)
{
    float *s = scratch, *m = scratch + n;
    const float scale = 1.0f / sqrtf((float)hd);
    wmat__gmm_table(par, K, n, m);
    for (int j = 0; j < n; j++) {
        const float *kj = k + (size_t)j * ks;
        float d = 0.0f;
        for (int i = 0; i < hd; i++) d += q[i] * kj[i];
        s[j] = scale * d;
    }
    masked_softmax_row(s, m, s, n - 1);
    memset(out, 0, (size_t)hd * sizeof *out);
    for (int j = 0; j < n; j++) {
        const float a = s[j], *vj = v + (size_t)j * ks;
        for (int i = 0; i < hd; i++) out[i] += a * vj[i];
    }
}
