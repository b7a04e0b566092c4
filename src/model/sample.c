#include "core/internal.h"

#include "kernels.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    float p;
    int i;
} prob_index;

static int cmp_desc(const void *a, const void *b)
{
    float pa = ((const prob_index *)a)->p, pb = ((const prob_index *)b)->p;
    return pa < pb ? 1 : pa > pb ? -1 : 0;
}

int wmat_sample(float *logits, int n, float temp, float top_p, wmat_rng *rng)
{
    if (n <= 0) return wmat_set_error(WMAT_ERR_INVALID, "sample: empty distribution");
    if (temp <= 0.0f) {
        int best = 0; /* first maximum, as run.c's argmax */
        for (int i = 1; i < n; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }
    for (int i = 0; i < n; i++) logits[i] /= temp;
    wmat__softmax(logits, n);
    float coin = wmat_rng_uniform(rng);
    if (top_p <= 0.0f || top_p >= 1.0f) {
        float cdf = 0.0f;
        for (int i = 0; i < n; i++) {
            cdf += logits[i];
            if (coin < cdf) return i;
        }
        return n - 1;
    }
    /* Nucleus: keep the smallest set of tokens whose mass exceeds top_p.
     * Tokens below (1 - top_p) / (n - 1) cannot be in it (run.c's cut). */
    prob_index *pi = wmat__malloc((size_t)n * sizeof *pi);
    if (!pi) return wmat_set_error(WMAT_ERR_NOMEM, "sample: out of memory");
    const float cutoff = (1.0f - top_p) / (float)(n > 1 ? n - 1 : 1);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= cutoff) pi[k++] = (prob_index){logits[i], i};
    if (k == 0) {
        wmat__free(pi);
        return 0;
    }
    qsort(pi, (size_t)k, sizeof *pi, cmp_desc);
    float cum = 0.0f;
    int last = k - 1;
    for (int i = 0; i < k; i++) {
        cum += pi[i].p;
        if (cum > top_p) {
            last = i;
            break;
        }
    }
    float r = coin * cum, cdf = 0.0f;
    int out = pi[last].i;
    for (int i = 0; i <= last; i++) {
        cdf += pi[i].p;
        if (r < cdf) {
            out = pi[i].i;
            break;
        }
    }
    wmat__free(pi);
    return out;
}

wmat_sampler_params wmat_sampler_default_params(void)
{
    wmat_sampler_params p = {1.0f, 0, 0.9f, 0.0f, 1.0f, 64};
    return p;
}

int wmat_sample_ex(float *logits, int n, const wmat_sampler_params *p, const int32_t *history, int n_hist, wmat_rng *rng)
{
    if (!p) return wmat_set_error(WMAT_ERR_INVALID, "sample: no parameters");
    if (n <= 0) return wmat_set_error(WMAT_ERR_INVALID, "sample: empty distribution");
    if (!(p->repeat_penalty > 0) || p->top_k < 0 || !(p->min_p >= 0 && p->min_p <= 1) || p->repeat_last_n < 0 ||
        isnan(p->temp) || isnan(p->top_p))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "sample: repeat_penalty must be > 0, top_k >= 0, min_p in [0, 1], repeat_last_n >= 0 (got %g, %d, %g, %d)",
                              p->repeat_penalty, p->top_k, p->min_p, p->repeat_last_n);
    if (p->repeat_penalty != 1.0f && history && n_hist > 0) {
        /* each token once, however often it occurred (a bitmap of those done) */
        const int first = n_hist > p->repeat_last_n ? n_hist - p->repeat_last_n : 0;
        unsigned char *seen = wmat__calloc((size_t)n / 8 + 1, 1);
        if (!seen) return wmat_set_error(WMAT_ERR_NOMEM, "sample: out of memory");
        for (int i = first; i < n_hist; i++) {
            const int t = history[i];
            if (t < 0 || t >= n || (seen[t >> 3] & (1u << (t & 7)))) continue;
            seen[t >> 3] |= (unsigned char)(1u << (t & 7));
            logits[t] = logits[t] > 0 ? logits[t] / p->repeat_penalty : logits[t] * p->repeat_penalty;
        }
        wmat__free(seen);
    }
    const int filters = (p->top_k > 0 && p->top_k < n) || p->min_p > 0;
    if (p->temp <= 0.0f || !filters) return wmat_sample(logits, n, p->temp, p->top_p, rng);

    for (int i = 0; i < n; i++) logits[i] /= p->temp;
    wmat__softmax(logits, n);
    float pmax = 0.0f;
    for (int i = 0; i < n; i++) pmax = logits[i] > pmax ? logits[i] : pmax;
    /* Every cut keeps a prefix of the tokens by descending probability, so
     * tokens that no cut can keep are dropped before sorting: below
     * min_p * p_max, or below the nucleus bound (1 - top_p) / (n - 1) of the
     * full distribution (the nucleus of the renormalized top-k is a prefix
     * of the full one). The most likely token always stays. */
    const int nucleus = p->top_p > 0.0f && p->top_p < 1.0f;
    float floor_p = p->min_p * pmax;
    if (nucleus) {
        const float cut = (1.0f - p->top_p) / (float)(n > 1 ? n - 1 : 1);
        if (cut > floor_p) floor_p = cut < pmax ? cut : pmax;
    }
    prob_index *pi = wmat__malloc((size_t)n * sizeof *pi);
    if (!pi) return wmat_set_error(WMAT_ERR_NOMEM, "sample: out of memory");
    int k = 0;
    for (int i = 0; i < n; i++)
        if (logits[i] >= floor_p) pi[k++] = (prob_index){logits[i], i};
    qsort(pi, (size_t)k, sizeof *pi, cmp_desc);
    if (p->top_k > 0 && p->top_k < k) k = p->top_k;
    if (nucleus) {
        float z = 0.0f, cum = 0.0f;
        for (int i = 0; i < k; i++) z += pi[i].p;
        for (int i = 0; i < k; i++) {
            cum += pi[i].p;
            if (cum > p->top_p * z) {
                k = i + 1;
                break;
            }
        }
    }
    /* min_p: already applied by floor_p (p_max is in every prefix) */
    float z = 0.0f;
    for (int i = 0; i < k; i++) z += pi[i].p;
    const float r = wmat_rng_uniform(rng) * z;
    float cdf = 0.0f;
    int out = pi[k - 1].i;
    for (int i = 0; i < k; i++) {
        cdf += pi[i].p;
        if (r < cdf) {
            out = pi[i].i;
            break;
        }
    }
    wmat__free(pi);
    return out;
}
