#include "ref_llama2c.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct ref_model {
    int dim, hidden, L, nh, nkv, vocab, seq, shared;
    float *data;
    void *map;
    size_t map_size;
    float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
    float *x, *xb, *xb2, *hb, *hb2, *q, *att, *logits, *kc, *vc;
};

ref_model *ref_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    int h[7];
    if (fread(h, 4, 7, f) != 7) {
        fclose(f);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 28, SEEK_SET);
    ref_model *r = calloc(1, sizeof *r);
    r->dim = h[0];
    r->hidden = h[1];
    r->L = h[2];
    r->nh = h[3];
    r->nkv = h[4];
    r->shared = h[5] > 0;
    r->vocab = abs(h[5]);
    r->seq = h[6];
    /* as run.c's read_checkpoint: the whole file mapped read-only, the
     * weights right after the 28-byte header */
    r->map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fileno(f), 0);
    fclose(f);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        ref_free(r);
        return NULL;
    }
    r->map_size = (size_t)size;
    r->data = (float *)((char *)r->map + 28);
    int hs = r->dim / r->nh, kvd = r->nkv * hs;
    long L = r->L;
    float *p = r->data;
    r->emb = p; p += (long)r->vocab * r->dim;
    r->rms_att = p; p += L * r->dim;
    r->wq = p; p += L * r->dim * r->dim;
    r->wk = p; p += L * r->dim * kvd;
    r->wv = p; p += L * r->dim * kvd;
    r->wo = p; p += L * r->dim * r->dim;
    r->rms_ffn = p; p += L * r->dim;
    r->w1 = p; p += L * r->dim * r->hidden;
    r->w2 = p; p += L * r->hidden * r->dim;
    r->w3 = p; p += L * r->dim * r->hidden;
    r->rms_final = p; p += r->dim;
    p += (long)r->seq * hs / 2 * 2;
    r->wcls = r->shared ? r->emb : p;
    r->x = calloc((size_t)r->dim, 4);
    r->xb = calloc((size_t)r->dim, 4);
    r->xb2 = calloc((size_t)r->dim, 4);
    r->hb = calloc((size_t)r->hidden, 4);
    r->hb2 = calloc((size_t)r->hidden, 4);
    r->q = calloc((size_t)r->dim, 4);
    r->att = calloc((size_t)r->nh * r->seq, 4);
    r->logits = calloc((size_t)r->vocab, 4);
    r->kc = calloc((size_t)L * r->seq * kvd, 4);
    r->vc = calloc((size_t)L * r->seq * kvd, 4);
    return r;
}

void ref_free(ref_model *r)
{
    if (!r) return;
    if (r->map) munmap(r->map, r->map_size);
    free(r->x); free(r->xb); free(r->xb2); free(r->hb); free(r->hb2); free(r->q);
    free(r->att); free(r->logits); free(r->kc); free(r->vc);
    free(r);
}

int ref_vocab(const ref_model *r) { return r->vocab; }
int ref_seq_len(const ref_model *r) { return r->seq; }

static void rmsnorm(float *o, const float *x, const float *w, int n)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    ss /= n;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < n; j++) o[j] = w[j] * (ss * x[j]);
}

static void softmax(float *x, int n)
{
    float m = x[0];
    for (int i = 1; i < n; i++) if (x[i] > m) m = x[i];
    float s = 0.0f;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    for (int i = 0; i < n; i++) x[i] /= s;
}

/* run.c parallelises exactly these two loops when built with OpenMP. */
static void matmul(float *o, const float *x, const float *w, int n, int d)
{
#pragma omp parallel for
    for (int i = 0; i < d; i++) {
        float v = 0.0f;
        for (int j = 0; j < n; j++) v += w[(long)i * n + j] * x[j];
        o[i] = v;
    }
}

float *ref_forward(ref_model *r, int token, int pos)
{
    int dim = r->dim, hs = dim / r->nh, kvd = r->nkv * hs, kv_mul = r->nh / r->nkv, hid = r->hidden;
    memcpy(r->x, r->emb + (long)token * dim, (size_t)dim * 4);
    for (long l = 0; l < r->L; l++) {
        rmsnorm(r->xb, r->x, r->rms_att + l * dim, dim);
        long loff = l * r->seq * kvd;
        float *k = r->kc + loff + (long)pos * kvd, *v = r->vc + loff + (long)pos * kvd;
        matmul(r->q, r->xb, r->wq + l * dim * dim, dim, dim);
        matmul(k, r->xb, r->wk + l * dim * kvd, dim, kvd);
        matmul(v, r->xb, r->wv + l * dim * kvd, dim, kvd);
        for (int i = 0; i < dim; i += 2) {
            int hd = i % hs;
            float freq = 1.0f / powf(10000.0f, hd / (float)hs);
            float val = pos * freq, fcr = cosf(val), fci = sinf(val);
            int rotn = i < kvd ? 2 : 1;
            for (int vi = 0; vi < rotn; vi++) {
                float *vec = vi == 0 ? r->q : k;
                float v0 = vec[i], v1 = vec[i + 1];
                vec[i] = v0 * fcr - v1 * fci;
                vec[i + 1] = v0 * fci + v1 * fcr;
            }
        }
#pragma omp parallel for
        for (int h = 0; h < r->nh; h++) {
            float *q = r->q + h * hs, *att = r->att + (long)h * r->seq;
            for (int t = 0; t <= pos; t++) {
                float *kk = r->kc + loff + (long)t * kvd + (h / kv_mul) * hs;
                float score = 0.0f;
                for (int i = 0; i < hs; i++) score += q[i] * kk[i];
                att[t] = score / sqrtf((float)hs);
            }
            softmax(att, pos + 1);
            float *xb = r->xb + h * hs;
            memset(xb, 0, (size_t)hs * 4);
            for (int t = 0; t <= pos; t++) {
                float *vv = r->vc + loff + (long)t * kvd + (h / kv_mul) * hs;
                for (int i = 0; i < hs; i++) xb[i] += att[t] * vv[i];
            }
        }
        matmul(r->xb2, r->xb, r->wo + l * dim * dim, dim, dim);
        for (int i = 0; i < dim; i++) r->x[i] += r->xb2[i];
        rmsnorm(r->xb, r->x, r->rms_ffn + l * dim, dim);
        matmul(r->hb, r->xb, r->w1 + l * dim * hid, dim, hid);
        matmul(r->hb2, r->xb, r->w3 + l * dim * hid, dim, hid);
        for (int i = 0; i < hid; i++) {
            float val = r->hb[i];
            val *= 1.0f / (1.0f + expf(-val));
            r->hb[i] = val * r->hb2[i];
        }
        matmul(r->xb, r->hb, r->w2 + l * dim * hid, hid, dim);
        for (int i = 0; i < dim; i++) r->x[i] += r->xb[i];
    }
    rmsnorm(r->x, r->x, r->rms_final, dim);
    matmul(r->logits, r->x, r->wcls, dim, r->vocab);
    return r->logits;
}
