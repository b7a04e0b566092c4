/* Perplexity under wmat's protocol: windows of ctx+1 tokens overlapping by
 * one, each from an empty cache, every prediction scored.
 *
 * With several threads and several windows, each thread runs whole windows
 * on a single-threaded worker runtime (same packed weights): no barrier
 * inside a window, and on a model as small as mix4m the GEMMs run closer to
 * the core's peak on one thread than split over two. Windows are summed in
 * window order afterwards, so the result does not depend on which thread
 * ran which window. */
#include "core/internal.h"

#include "kernels.h"
#include "runtime.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
#endif

typedef struct {
    const int32_t *tokens;
    size_t n;
    int ctx_len, V;
} eval_stream;

static size_t window_len(const eval_stream *es, size_t w)
{
    const size_t start = w * (size_t)es->ctx_len;
    return es->n - start - 1 < (size_t)es->ctx_len ? es->n - start - 1 : (size_t)es->ctx_len;
}

/* Sum of the NLLs of window w; logits is (ctx_len, V) scratch. */
static int eval_window(wmat_runtime *rt, const eval_stream *es, size_t w, float *logits, double *out)
{
    const size_t start = w * (size_t)es->ctx_len, len = window_len(es, w);
    int rc = wmat_forward(rt, es->tokens + start, (int)len, logits);
    if (rc) return rc;
    double wsum = 0.0;
    for (size_t t = 0; t < len; t++) {
        int target = es->tokens[start + t + 1];
        if (target < 0 || target >= es->V)
            return wmat_set_error(WMAT_ERR_INVALID, "eval: token %d at index %zu is outside the vocabulary (%d)", target,
                                  start + t + 1, es->V);
        wsum += wmat__nll_row(logits + t * (size_t)es->V, es->V, target);
    }
    *out = wsum;
    return WMAT_OK;
}

static int progress(const wmat_context *ctx, size_t done, size_t total)
{
    if (ctx && ctx->progress && ctx->progress(ctx->progress_user, "eval", done, total))
        return wmat_set_error(WMAT_ERR_CANCELLED, "eval cancelled");
    return WMAT_OK;
}

static int eval_serial(wmat_runtime *rt, const eval_stream *es, size_t n_windows, double *wnll)
{
    const size_t per = (size_t)es->ctx_len * (size_t)es->V;
    float *logits = wmat__malloc(per * sizeof(float));
    if (!logits) return wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %d x %d logits", es->ctx_len, es->V);
    int rc = WMAT_OK;
    for (size_t w = 0; w < n_windows && !rc; w++) {
        rc = eval_window(rt, es, w, logits, &wnll[w]);
        if (!rc) rc = progress(wmat_runtime_context(rt), w + 1, n_windows);
    }
    wmat__free(logits);
    return rc;
}

static int eval_parallel(wmat_runtime *rt, const eval_stream *es, size_t n_windows, double *wnll, int nt)
{
    const size_t per = (size_t)es->ctx_len * (size_t)es->V;
    wmat_runtime *workers[64] = {NULL};
    float *logits = wmat__malloc((size_t)nt * per * sizeof(float));
    int rc = logits ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %d x %d x %d logits", nt,
                                                  es->ctx_len, es->V);
    for (int i = 0; i < nt && !rc; i++) rc = wmat__runtime_worker_create(&workers[i], rt);
    atomic_size_t next = 0, done = 0;
    atomic_int stop = 0;
    int err = WMAT_OK;
    char msg[512] = "";
    const wmat_context *ctx = wmat_runtime_context(rt);
    if (!rc) {
#pragma omp parallel num_threads(nt)
        {
            const int tid = omp_get_thread_num();
            for (;;) {
                size_t w = atomic_fetch_add(&next, 1);
                if (w >= n_windows || atomic_load(&stop)) break;
                int wrc = eval_window(workers[tid], es, w, logits + (size_t)tid * per, &wnll[w]);
                size_t d = atomic_fetch_add(&done, 1) + 1;
                /* the callback runs on the calling thread's team master only */
                if (!wrc && tid == 0) wrc = progress(ctx, d, n_windows);
                if (wrc) {
#pragma omp critical(wmat_eval_error)
                    if (!err) {
                        err = wrc;
                        snprintf(msg, sizeof msg, "%s", wmat_last_error());
                    }
                    atomic_store(&stop, 1);
                }
            }
        }
        if (err) rc = wmat_set_error(err, "%s", msg);
        else if (ctx && ctx->progress) rc = progress(ctx, n_windows, n_windows);
    }
    for (int i = 0; i < nt; i++) wmat_runtime_free(workers[i]);
    wmat__free(logits);
    return rc;
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
    const eval_stream es = {tokens, n, ctx_len, wmat_runtime_vocab(rt)};
    size_t n_windows = (n - 1 + (size_t)ctx_len - 1) / (size_t)ctx_len;
    if (max_windows > 0 && n_windows > (size_t)max_windows) n_windows = (size_t)max_windows;
    double *wnll = wmat__calloc(n_windows, sizeof *wnll);
    if (!wnll) return wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %zu window sums", n_windows);
    /* hooks see one forward at a time, so a hooked runtime stays serial */
    int nt = wmat__runtime_threads(rt);
    if (nt > 64) nt = 64;
    if ((size_t)nt > n_windows) nt = (int)n_windows;
    const double t0 = wmat__now();
    int rc = nt > 1 && !wmat__runtime_has_hook(rt) ? eval_parallel(rt, &es, n_windows, wnll, nt)
                                                  : eval_serial(rt, &es, n_windows, wnll);
    if (rc) {
        wmat__free(wnll);
        return rc;
    }
    double total = 0.0;
    uint64_t scored = 0;
    for (size_t w = 0; w < n_windows; w++) {
        total += wnll[w];
        scored += window_len(&es, w);
    }
    wmat__free(wnll);
    res->seconds = wmat__now() - t0;
    res->tokens_scored = scored;
    res->windows = (int)n_windows;
    res->mean_nll = total / (double)scored;
    res->ppl = exp(res->mean_nll);
    res->tokens_per_s = res->seconds > 0 ? (double)scored / res->seconds : 0.0;
    return WMAT_OK;
}
