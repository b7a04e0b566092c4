/* Forward/backward pairs of the training engine (see train.h). Each
 * backward is checked against central finite differences of a double
 * precision reference in tests/test_train.c. */
#include "train.h"

#include "../linalg/linalg.h"
#include "../model/gmm_mask.h"
#include "../model/kernels.h"

#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

void wmat__embed_forward(float *out, const int32_t *tok, const float *emb, int BT, int C)
{
    for (int i = 0; i < BT; i++) memcpy(out + (size_t)i * C, emb + (size_t)tok[i] * C, (size_t)C * sizeof(float));
}

void wmat__embed_backward(float *demb, const float *dout, const int32_t *tok, int BT, int C)
{
    for (int i = 0; i < BT; i++) {
        float *d = demb + (size_t)tok[i] * C;
        const float *s = dout + (size_t)i * C;
        for (int j = 0; j < C; j++) d[j] += s[j];
    }
}

void wmat__rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                            const float *rstd, int BT, int C, int nt)
{
    /* y = w * x * r, r = (mean(x^2) + eps)^-1/2:
     * dx = r * (w dy) - x * r^3 / C * sum(w dy x) */
#pragma omp parallel for num_threads(nt) schedule(static) if ((long)BT * C >= 32768)
    for (int t = 0; t < BT; t++) {
        const float *xr = x + (size_t)t * C, *dy = dout + (size_t)t * C;
        float *d = dx + (size_t)t * C;
        const float r = rstd[t];
        float dot = 0.0f;
        for (int j = 0; j < C; j++) dot += w[j] * dy[j] * xr[j];
        const float c = dot * r * r * r / (float)C;
        for (int j = 0; j < C; j++) d[j] += r * w[j] * dy[j] - c * xr[j];
    }
    /* dw by columns: every column sums its rows in order (deterministic) */
#pragma omp parallel for num_threads(nt) schedule(static) if ((long)BT * C > 65536)
    for (int j = 0; j < C; j++) {
        float s = 0.0f;
        for (int t = 0; t < BT; t++) s += dout[(size_t)t * C + j] * x[(size_t)t * C + j] * rstd[t];
        dw[j] += s;
    }
}

void wmat__rope_backward(float *dx, int BT, int T, int nh, int hd, const float *cs, const float *sn, int nt)
{
    const int half = hd / 2;
#pragma omp parallel for num_threads(nt) schedule(static) if ((long)BT * nh * hd >= 32768)
    for (int r = 0; r < BT; r++) {
        const float *c = cs + (size_t)(r % T) * half, *s = sn + (size_t)(r % T) * half;
        float *row = dx + (size_t)r * nh * hd;
        for (int h = 0; h < nh; h++) {
            float *v = row + (size_t)h * hd;
            for (int i = 0; i < half; i++) {
                float d0 = v[2 * i], d1 = v[2 * i + 1];
                v[2 * i] = d0 * c[i] + d1 * s[i];
                v[2 * i + 1] = -d0 * s[i] + d1 * c[i];
            }
        }
    }
}

/* Row-wise causal softmax of S (T, T) in place, upper triangle zeroed. */
static void causal_softmax(float *S, int T)
{
    for (int t = 0; t < T; t++) {
        float *row = S + (size_t)t * T;
        wmat__causal_row_softmax(row, t);
        for (int j = t + 1; j < T; j++) row[j] = 0.0f;
    }
}

void wmat__attention_forward(float *out, const float *q, const float *k, const float *v, int B, int T, int nh,
                             int nkv, int hd, float *scratch, int nt)
{
    const int QD = nh * hd, KV = nkv * hd, grp = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            float *P = scratch + (size_t)omp_get_thread_num() * 2 * T * T; /* (T, T) */
            const float *qb = q + (size_t)b * T * QD + (size_t)h * hd;
            const float *kb = k + (size_t)b * T * KV + (size_t)(h / grp) * hd;
            const float *vb = v + (size_t)b * T * KV + (size_t)(h / grp) * hd;
            wmat_sgemm(0, 1, T, T, hd, scale, qb, QD, kb, KV, 0.0f, P, T);
            causal_softmax(P, T);
            wmat_sgemm(0, 0, T, hd, T, 1.0f, P, T, vb, KV, 0.0f, out + (size_t)b * T * QD + (size_t)h * hd, QD);
        }
}

void wmat__attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                              const float *v, int B, int T, int nh, int nkv, int hd, float *scratch, int nt)
{
    const int QD = nh * hd, KV = nkv * hd, grp = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    /* one (batch, kv head) per task: the heads of a group add into the same
     * dk, dv columns in order, so no two threads touch the same memory */
#pragma omp parallel for num_threads(nt) schedule(static) collapse(2)
    for (int b = 0; b < B; b++)
        for (int g = 0; g < nkv; g++) {
            float *P = scratch + (size_t)omp_get_thread_num() * 2 * T * T; /* (T, T) */
            float *dP = P + (size_t)T * T;                                   /* (T, T) */
            const float *kb = k + (size_t)b * T * KV + (size_t)g * hd;
            const float *vb = v + (size_t)b * T * KV + (size_t)g * hd;
            float *dkb = dk + (size_t)b * T * KV + (size_t)g * hd;
            float *dvb = dv + (size_t)b * T * KV + (size_t)g * hd;
            for (int h = g * grp; h < (g + 1) * grp; h++) {
                const float *qb = q + (size_t)b * T * QD + (size_t)h * hd;
                const float *dob = dout + (size_t)b * T * QD + (size_t)h * hd;
                float *dqb = dq + (size_t)b * T * QD + (size_t)h * hd;
                const float beta = h == g * grp ? 0.0f : 1.0f;
                wmat_sgemm(0, 1, T, T, hd, scale, qb, QD, kb, KV, 0.0f, P, T);
                causal_softmax(P, T);
                /* dV += P^T dO ; dP = dO V^T */
                wmat_sgemm(1, 0, T, hd, T, 1.0f, P, T, dob, QD, beta, dvb, KV);
                wmat_sgemm(0, 1, T, T, hd, 1.0f, dob, QD, vb, KV, 0.0f, dP, T);
                /* dS = P * (dP - rowsum(P * dP)), times the scale */
                for (int t = 0; t < T; t++) {
                    float *pr = P + (size_t)t * T, *dr = dP + (size_t)t * T;
                    float s = 0.0f;
                    for (int j = 0; j <= t; j++) s += pr[j] * dr[j];
                    for (int j = 0; j <= t; j++) dr[j] = pr[j] * (dr[j] - s) * scale;
                    for (int j = t + 1; j < T; j++) dr[j] = 0.0f;
                }
                /* dQ = dS K ; dK += dS^T Q */
                wmat_sgemm(0, 0, T, hd, T, 1.0f, dP, T, kb, KV, 0.0f, dqb, QD);
                wmat_sgemm(1, 0, T, hd, T, 1.0f, dP, T, qb, QD, beta, dkb, KV);
            }
        }
}

void wmat__swiglu_backward(float *dg, float *du, const float *dout, const float *g, const float *u, size_t N, int nt)
{
#pragma omp parallel for num_threads(nt) schedule(static) if (N >= 32768)
    for (size_t i = 0; i < N; i++) {
        float x = g[i], sg = 1.0f / (1.0f + expf(-x)), d = dout[i];
        du[i] = d * x * sg;
        dg[i] = d * u[i] * sg * (1.0f + x * (1.0f - sg));
    }
}

void wmat__linear_forward(float *Y, const float *X, const float *W, int BT, int in, int out)
{
    wmat_sgemm(0, 1, BT, out, in, 1.0f, X, in, W, in, 0.0f, Y, out);
}

void wmat__linear_backward(float *dX, float *dW, const float *dY, const float *X, const float *W, int BT, int in,
                           int out, int acc_dx)
{
    if (dW) wmat_sgemm(1, 0, out, in, BT, 1.0f, dY, out, X, in, 1.0f, dW, in);
    if (dX) wmat_sgemm(0, 0, BT, in, out, 1.0f, dY, out, W, in, acc_dx ? 1.0f : 0.0f, dX, in);
}

double wmat__xent_forward_backward(float *logits, float *losses, const int32_t *targets, int BT, int V, float dscale,
                                   int nt)
{
#pragma omp parallel for num_threads(nt) schedule(static) if ((long)BT * V >= 32768)
    for (int i = 0; i < BT; i++) {
        float *row = logits + (size_t)i * V;
        float mx = row[0];
        for (int j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
        double sum = 0.0;
        for (int j = 0; j < V; j++) sum += exp((double)row[j] - mx);
        const int tg = targets[i];
        losses[i] = (float)(log(sum) + mx - (double)row[tg]);
        const float inv = (float)(1.0 / sum);
        for (int j = 0; j < V; j++) row[j] = expf(row[j] - mx) * inv * dscale;
        row[tg] -= dscale;
    }
    double total = 0.0;
    for (int i = 0; i < BT; i++) total += losses[i];
    return total / BT;
}
