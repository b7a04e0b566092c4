/* Perplexity under wmat's protocol: windows of ctx+1 tokens overlapping by
 * one, each from an empty cache, every prediction scored. */
#include "core/internal.h"

#include <math.h>
#include <string.h>

static double nll_row(const float *logits, int V, int target)
{
    float max = logits[0];
    for (int i = 1; i < V; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++) sum += exp((double)logits[i] - max);
    return log(sum) + max - (double)logits[target];
}

int wmat_eval_tokens(wmat_runtime *rt, const int32_t *tokens, size_t n, int ctx_len, int max_windows,
                     wmat_eval_result *res)
{
    memset(res, 0, sizeof *res);
    if (ctx_len <= 0) return wmat_set_error(WMAT_ERR_INVALID, "eval: context length must be positive (got %d)", ctx_len);
    if (n < 2) return wmat_set_error(WMAT_ERR_INVALID, "eval: need at least 2 tokens, got %zu", n);
    if (ctx_len > wmat_runtime_max_tokens(rt))
        return wmat_set_error(WMAT_ERR_INVALID, "eval: context %d is longer than the runtime's window (%d)", ctx_len,
                              wmat_runtime_max_tokens(rt));
    const int V = wmat_runtime_vocab(rt);
    float *logits = wmat__malloc((size_t)ctx_len * (size_t)V * sizeof(float));
    if (!logits) return wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %d x %d logits", ctx_len, V);
    double total = 0.0;
    uint64_t scored = 0;
    int windows = 0;
    double t0 = wmat__now();
    int rc = WMAT_OK;
    const wmat_context *ctx = wmat_runtime_context(rt);
    size_t n_windows = (n - 1 + (size_t)ctx_len - 1) / (size_t)ctx_len;
    if (max_windows > 0 && n_windows > (size_t)max_windows) n_windows = (size_t)max_windows;
    for (size_t w = 0; w < n_windows; w++) {
        size_t start = w * (size_t)ctx_len;
        size_t len = n - start - 1 < (size_t)ctx_len ? n - start - 1 : (size_t)ctx_len;
        rc = wmat_forward(rt, tokens + start, (int)len, logits);
        if (rc) break;
        double wsum = 0.0;
        for (size_t t = 0; t < len; t++) {
            int target = tokens[start + t + 1];
            if (target < 0 || target >= V) {
                rc = wmat_set_error(WMAT_ERR_INVALID, "eval: token %d at index %zu is outside the vocabulary (%d)", target,
                                    start + t + 1, V);
                break;
            }
            wsum += nll_row(logits + t * (size_t)V, V, target);
        }
        if (rc) break;
        total += wsum;
        scored += len;
        windows++;
        if (ctx && ctx->progress && ctx->progress(ctx->progress_user, "eval", w + 1, n_windows)) {
            rc = wmat_set_error(WMAT_ERR_CANCELLED, "eval cancelled");
            break;
        }
    }
    wmat__free(logits);
    if (rc) return rc;
    res->seconds = wmat__now() - t0;
    res->tokens_scored = scored;
    res->windows = windows;
    res->mean_nll = total / (double)scored;
    res->ppl = exp(res->mean_nll);
    res->tokens_per_s = res->seconds > 0 ? (double)scored / res->seconds : 0.0;
    return WMAT_OK;
}
