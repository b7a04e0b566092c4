#include "train_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

wmat_model *tu_tiny_model(uint64_t seed, int dim, int hidden, int layers)
{
    wmat_config c = tu_config(dim, hidden, layers, 4, 2, 13, 16);
    c.tied_embeddings = 1;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    TU_OK(wmat_model_init_random(m, seed, 0.3f));
    return m;
}

wmat_train_params tu_adapter_params(wmat_context *oc, const char *adapter, int rank)
{
    wmat_train_params p = wmat_train_default_params();
    p.exec = oc;
    p.adapter = adapter;
    p.batch = 2;
    p.ctx = 8;
    p.steps = 20;
    p.warmup = 2;
    p.lr = 2e-2f;
    p.weight_decay = 0.1f;
    p.lora_rank = rank;
    p.lora_alpha = 8;
    p.lora_targets = 0x7f;
    return p;
}

int32_t *tu_pattern_tokens(size_t n)
{
    int32_t *d = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) d[i] = (int32_t)((i * i + 3 * i) % 7 + (i % 3)) % 13;
    return d;
}

void tu_trainer_fd_check(wmat_trainer *t, const char *who)
{
    tu_trainer_fd_check_h(t, who, 1e-2f);
}

void tu_trainer_fd_check_h(wmat_trainer *t, const char *who, float h)
{
    int32_t inp[16], tgt[16];
    int32_t *d = tu_pattern_tokens(17);
    for (int i = 0; i < 16; i++) inp[i] = d[i], tgt[i] = d[i + 1];
    free(d);
    double loss;
    TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 1, 0, &loss));
    size_t n;
    float *pp = wmat__trainer_params(t, &n), *g = wmat__trainer_grads(t, &n);
    float *an = malloc(n * sizeof(float));
    double *fd = malloc(n * sizeof(double)), mx = 0, err = 0;
    memcpy(an, g, n * sizeof(float));
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        const float s = pp[i];
        double lp, lm;
        pp[i] = s + h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lp));
        pp[i] = s - h;
        TU_OK(wmat__trainer_fwdbwd(t, inp, tgt, 2, 8, 1.0f / 16, 0, 1, &lm));
        pp[i] = s;
        fd[i] = (lp - lm) / (2.0 * h);
        mx = fmax(mx, fabs(fd[i]));
    }
    for (size_t i = 0; i < n; i++)
        if (!(fabs(an[i] - fd[i]) <= err)) err = fabs(an[i] - fd[i]), worst = i;
    print_message("%s: %zu gradients, max |fd| %.3g, max |analytic - fd| %.3g\n", who, n, mx, err);
    if (!(mx > 1e-4 && err <= 2e-3 * mx + 2e-5))
        fail_msg("%s: max |analytic - fd| = %.3g at %zu (%.6g vs %.6g), max |fd| %.3g", who, err, worst, an[worst],
                 fd[worst], mx);
    free(an), free(fd);
}
