/* The backward of the Gaussian-mixture masked attention
 * (src/model/gmm_mask.h): the gradients of q, k, v and of each head's
 * mask parameters, probabilities recomputed as wmat__attention_backward
 * does.
 *
 * With S0 = scale Q K^T, S = M(i - j) S0 (j <= i), P = softmax(S) by rows:
 *   dS    = P (dP - rowsum(P dP))
 *   dS0   = M dS                  -> dQ = scale dS0 K, dK += scale dS0^T Q
 *   dM(d) = sum_{i - j = d} dS S0 -> per kernel k, v = sigma^2 + eps,
 *           e = exp(-d^2 / (2 v)):
 *           dalpha += sum_d dM(d) e,
 *           dsigma += sum_d dM(d) alpha e d^2 sigma / v^2. */
#include "train.h"

#include "../model/gmm_mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

int wmat__gmm_attention_backward(float *dq, float *dk, float *dv, float *dpar, const float *dout, const float *q,
                                 const float *k, const float *v, int B, int T, int nh, int nkv, int hd,
                                 const float *par, int K, int nt)
{
    const int QD = nh * hd, KV = nkv * hd, grp = nh / nkv;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t per = 3 * (size_t)T * T + (size_t)T;
    if (nt < 1) nt = 1;
    float *scr = malloc((size_t)nt * per * sizeof *scr);
    double *gacc = malloc((size_t)nt * grp * T * sizeof *gacc);
    if (!scr || !gacc) {
        free(scr);
        free(gacc);
        return wmat_set_error(WMAT_ERR_NOMEM, "train: out of memory for the GMM mask's backward (%d x %d)", T, T);
    }
    /* one kv group per task: its heads' dk, dv columns, their mask
     * gradients and their parameters belong to it alone */
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int g = 0; g < nkv; g++) {
        const int tid = omp_get_thread_num();
        float *S0 = scr + (size_t)tid * per, *P = S0 + (size_t)T * T, *dP = P + (size_t)T * T, *m = dP + (size_t)T * T;
        double *G = gacc + (size_t)tid * grp * T;
        memset(G, 0, (size_t)grp * T * sizeof *G);
        for (int b = 0; b < B; b++) {
            const float *kb = k + (size_t)b * T * KV + (size_t)g * hd;
            const float *vb = v + (size_t)b * T * KV + (size_t)g * hd;
            float *dkb = dk + (size_t)b * T * KV + (size_t)g * hd;
            float *dvb = dv + (size_t)b * T * KV + (size_t)g * hd;
            for (int h = g * grp; h < (g + 1) * grp; h++) {
                const float *qb = q + (size_t)b * T * QD + (size_t)h * hd;
                const float *dob = dout + (size_t)b * T * QD + (size_t)h * hd;
                float *dqb = dq + (size_t)b * T * QD + (size_t)h * hd;
                double *Gh = G + (size_t)(h - g * grp) * T;
                const float beta = h == g * grp ? 0.0f : 1.0f;
                wmat__gmm_table(par + (size_t)h * 2 * K, K, T, m);
                wmat_sgemm(0, 1, T, T, hd, scale, qb, QD, kb, KV, 0.0f, S0, T);
                wmat__gmm_softmax(S0, m, P, T); /* P as the forward computes it */
                /* dV += P^T dO ; dP = dO V^T */
                wmat_sgemm(1, 0, T, hd, T, 1.0f, P, T, dob, QD, beta, dvb, KV);
                wmat_sgemm(0, 1, T, T, hd, 1.0f, dob, QD, vb, KV, 0.0f, dP, T);
                for (int t = 0; t < T; t++) {
                    const float *pr = P + (size_t)t * T, *s0 = S0 + (size_t)t * T;
                    float *dr = dP + (size_t)t * T;
                    float s = 0.0f;
                    for (int j = 0; j <= t; j++) s += pr[j] * dr[j];
                    for (int j = 0; j <= t; j++) {
                        const float ds = pr[j] * (dr[j] - s);
                        Gh[t - j] += (double)ds * s0[j];
                        dr[j] = ds * m[t - j] * scale;
                    }
                    for (int j = t + 1; j < T; j++) dr[j] = 0.0f;
                }
                /* dQ = dS0 K ; dK += dS0^T Q (scale folded in above) */
                wmat_sgemm(0, 0, T, hd, T, 1.0f, dP, T, kb, KV, 0.0f, dqb, QD);
                wmat_sgemm(1, 0, T, hd, T, 1.0f, dP, T, qb, QD, beta, dkb, KV);
            }
        }
        for (int h = g * grp; h < (g + 1) * grp; h++) {
            const double *Gh = G + (size_t)(h - g * grp) * T;
            const float *ph = par + (size_t)h * 2 * K;
            float *gh = dpar + (size_t)h * 2 * K;
            for (int kk = 0; kk < K; kk++) {
                const double a = ph[2 * kk], sg = ph[2 * kk + 1], vv = sg * sg + WMAT_GMM_EPS;
                double da = 0, dsg = 0;
                for (int d = 0; d < T; d++) {
                    const double dd = (double)d * d, e = exp(-dd / (2 * vv));
                    da += Gh[d] * e;
                    dsg += Gh[d] * a * e * dd * sg / (vv * vv);
                }
                gh[2 * kk] += (float)da;
                gh[2 * kk + 1] += (float)dsg;
            }
        }
    }
    free(scr);
    free(gacc);
    return WMAT_OK;
}
