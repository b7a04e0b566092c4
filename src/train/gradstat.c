/* Gradients of the LM loss with respect to every linear weight, with the
 * weights frozen (GWQ's calibration statistic, docs/QUANT.md "GWQ"): the
 * trainer's own forward and backward (full training, so every linear
 * weight has a gradient buffer) on n_seq windows of ctx tokens, one batch,
 * the loss the mean over its n_seq x ctx predictions. No optimizer step is
 * taken; the model is not changed.
 *
 * Quantization sits below the trainer (docs/ARCHITECTURE.md), so the
 * driver cannot call this: a caller above both (the CLI, a test) computes
 * the gradients here and hands them to wmat_quantize_model through
 * wmat_quantize_params.gradients. */
#include "train.h"

#include "../io/model_internal.h"
#include "core/shapes.h"

#include <string.h>

void wmat_model_weight_gradients_free(const wmat_model *m, float **grads)
{
    if (!grads) return;
    const int n = wmat_model_n_tensors(m);
    for (int i = 0; i < n; i++) wmat__free(grads[i]);
    wmat__free(grads);
}

static int tensor_index(wmat_model *m, const wmat_tensor *t)
{
    const int n = wmat_model_n_tensors(m);
    for (int i = 0; i < n; i++)
        if (wmat_model_tensor(m, i) == t) return i;
    return -1;
}

static int keep_copy(wmat_model *m, const wmat_tensor *t, const float *g, float **grads)
{
    const int i = tensor_index(m, t);
    if (i < 0 || !g || grads[i]) return WMAT_OK;
    const size_t n = (size_t)wmat_tensor_nelem(t);
    grads[i] = wmat__malloc(n * sizeof(float));
    if (!grads[i]) return wmat_set_error(WMAT_ERR_NOMEM, "gradients: out of memory");
    memcpy(grads[i], g, n * sizeof(float));
    return WMAT_OK;
}

static int grads_run(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq, int n_threads,
                     float ***out, double *loss, int fisher);

int wmat_model_weight_gradients(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq, int n_threads,
                                float ***out, double *loss)
{
    return grads_run(m, tokens, n, ctx, n_seq, n_threads, out, loss, 0);
}

int wmat_model_weight_fisher(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq, int n_threads,
                             float ***out, double *loss)
{
    return grads_run(m, tokens, n, ctx, n_seq, n_threads, out, loss, 1);
}

/* fisher 0: the gradient of the mean loss over all windows (one batch);
 * 1: the mean over windows of each window's squared gradient (one window
 * a batch, the empirical Fisher's diagonal per window). */
static int grads_run(wmat_model *m, const int32_t *tokens, size_t n, int ctx, int n_seq, int n_threads,
                     float ***out, double *loss, int fisher)
{
    if (!m || !out) return wmat_set_error(WMAT_ERR_INVALID, "gradients: no model or output");
    *out = NULL;
    const wmat_config *c = wmat_model_config(m);
    if (ctx <= 0 || ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "gradients: window %d outside 1..%d (the model's context)", ctx,
                              c->seq_len);
    if (n_seq <= 0) return wmat_set_error(WMAT_ERR_INVALID, "gradients: %d windows (need >= 1)", n_seq);
    if (!tokens || n < (size_t)ctx + 1)
        return wmat_set_error(WMAT_ERR_INVALID, "gradients: %zu tokens, fewer than one window of %d plus its target",
                              n, ctx);
    /* as many whole windows as the stream holds, up to n_seq (the last
     * window's targets need one token past it) */
    const size_t fit = (n - 1) / (size_t)ctx;
    const int B = (int)(fit < (size_t)n_seq ? fit : (size_t)n_seq);
    wmat_context ex = wmat_context_default();
    ex.n_threads = n_threads;
    wmat_train_params tp = wmat_train_default_params();
    tp.method = WMAT_TRAIN_FULL;
    tp.optimizer_name = "sgd";
    tp.batch = fisher ? 1 : B;
    tp.ctx = ctx;
    tp.steps = 1;
    tp.exec = &ex;
    wmat_trainer *t = NULL;
    int32_t *inp = wmat__malloc((size_t)B * (size_t)ctx * sizeof(int32_t));
    int32_t *tgt = wmat__malloc((size_t)B * (size_t)ctx * sizeof(int32_t));
    float **grads = wmat__calloc((size_t)wmat_model_n_tensors(m), sizeof *grads);
    int rc = WMAT_OK;
    if (!inp || !tgt || !grads) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "gradients: out of memory");
        goto done;
    }
    for (int b = 0; b < B; b++) {
        memcpy(inp + (size_t)b * ctx, tokens + (size_t)b * ctx, (size_t)ctx * sizeof(int32_t));
        memcpy(tgt + (size_t)b * ctx, tokens + (size_t)b * ctx + 1, (size_t)ctx * sizeof(int32_t));
    }
    if ((rc = wmat_trainer_create(&t, m, &tp))) goto done;
    double l = 0.0, lsum = 0.0;
    for (int b = 0; b < (fisher ? B : 1) && !rc; b++) {
        const size_t o = fisher ? (size_t)b * ctx : 0;
        const int nb = fisher ? 1 : B;
        if ((rc = wmat__trainer_fwdbwd(t, inp + o, tgt + o, nb, ctx, 1.0f / ((float)nb * (float)ctx), 1, 0, &l)))
            goto done;
        lsum += l;
        for (int li = 0; li <= c->n_layers && !rc; li++)
            for (int k = 0; k < (li < c->n_layers ? WMAT_LIN_COUNT : 1) && !rc; k++) {
                const wmat_tensor *wt = li < c->n_layers ? wmat_model_linear(m, li, (wmat_linear_kind)k)
                                                         : wmat_model_classifier(m);
                const float *g = li < c->n_layers ? wmat__trainer_linear_grad(t, li, k) : wmat__trainer_classifier_grad(t);
                if (!fisher) {
                    rc = keep_copy(m, wt, g, grads);
                    continue;
                }
                const int i = tensor_index(m, wt);
                if (i < 0 || !g) continue;
                const size_t ne = (size_t)wmat_tensor_nelem(wt);
                if (!grads[i] && !(grads[i] = wmat__calloc(ne, sizeof(float)))) {
                    rc = wmat_set_error(WMAT_ERR_NOMEM, "gradients: out of memory");
                    break;
                }
                for (size_t e = 0; e < ne; e++) grads[i][e] += g[e] * g[e] / (float)B;
            }
    }
    if (loss) *loss = fisher ? lsum / B : l;
done:
    wmat_trainer_free(t);
    wmat__free(inp);
    wmat__free(tgt);
    if (rc) {
        if (grads) wmat_model_weight_gradients_free(m, grads);
        return rc;
    }
    *out = grads;
    return WMAT_OK;
}
