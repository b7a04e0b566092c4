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
