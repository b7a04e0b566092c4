/* Perplexity of a token stream under two protocols (wmat_eval_protocol,
 * docs/ARCHITECTURE.md "Perplexity protocols"):
 *
 * - wmat: windows of ctx+1 tokens overlapping by one, each from an empty
 *   cache, every prediction scored (a last partial window too);
 * - llama.cpp (tools/perplexity's `perplexity`): chunks of ctx tokens, no
 *   overlap, a last partial chunk dropped, the first token of each chunk
 *   replaced by BOS, only the predictions at positions ctx/2 .. ctx-2 scored
 *   (of tokens ctx/2+1 .. ctx-1), so every scored token has at least ctx/2
 *   tokens of context.
 *
 * Both run one window (chunk) per wmat_forward. With several threads and
 * several windows, each thread runs whole windows on a single-threaded
 * worker runtime (same packed weights): no barrier inside a window, and on a
 * model as small as mix4m the GEMMs run closer to the core's peak on one
 * thread than split over two. Windows are summed in window order
 * afterwards, so the result does not depend on which thread ran which
 * window. */
#include "core/internal.h"

#include "io/model_internal.h"
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
    int llama; /* llama.cpp's protocol */
    int bos;   /* llama.cpp: written over each chunk's first token; < 0: kept */
} eval_stream;

/* Window w: the forward reads tokens[start .. start+len) (llama.cpp: with
 * the first replaced by BOS); the predictions at positions lo .. hi-1 are
 * scored, position t predicting tokens[start+t+1]. */
typedef struct {
    size_t start;
    int len, lo, hi;
} eval_span;

static eval_span window_span(const eval_stream *es, size_t w)
{
    eval_span s;
    s.start = w * (size_t)es->ctx_len;
    if (es->llama) {
        s.len = es->ctx_len;
        s.lo = es->ctx_len / 2;
        s.hi = es->ctx_len - 1;
    } else {
        const size_t left = es->n - s.start - 1;
        s.len = left < (size_t)es->ctx_len ? (int)left : es->ctx_len;
        s.lo = 0;
        s.hi = s.len;
    }
    return s;
}

static int score_window(const eval_stream *es, size_t w, const float *logits, double out[2]);

/* The ids window w's forward reads: the stream's, or (llama.cpp) a copy in
 * scratch with BOS first. */
static const int32_t *window_input(const eval_stream *es, const eval_span *sp, int32_t *scratch)
{
    const int32_t *in = es->tokens + sp->start;
    if (es->llama && es->bos >= 0) {
        memcpy(scratch, in, (size_t)sp->len * sizeof *scratch);
        scratch[0] = es->bos;
        in = scratch;
    }
    return in;
}

/* Sum of the NLLs of window w and of their squares (for the standard error);
 * logits is (ctx_len, V) scratch, input ctx_len ids of scratch. */
static int eval_window(wmat_runtime *rt, const eval_stream *es, size_t w, float *logits, int32_t *input, double out[2])
{
    const eval_span sp = window_span(es, w);
    const int32_t *in = window_input(es, &sp, input);
    int rc = wmat_forward(rt, in, sp.len, logits);
    return rc ? rc : score_window(es, w, logits, out);
}

/* The NLL sums of window w from its logits (sp.len, V). */
static int score_window(const eval_stream *es, size_t w, const float *logits, double out[2])
{
    const eval_span sp = window_span(es, w);
    double wsum = 0.0, wsum2 = 0.0;
    for (int t = sp.lo; t < sp.hi; t++) {
        int target = es->tokens[sp.start + (size_t)t + 1];
        if (target < 0 || target >= es->V)
            return wmat_set_error(WMAT_ERR_INVALID, "eval: token %d at index %zu is outside the vocabulary (%d)", target,
                                  sp.start + (size_t)t + 1, es->V);
        const double v = wmat__nll_row(logits + (size_t)t * (size_t)es->V, es->V, target);
        wsum += v;
        wsum2 += v * v;
    }
    out[0] = wsum;
    out[1] = wsum2;
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
    int32_t *input = wmat__malloc((size_t)es->ctx_len * sizeof *input);
    int rc = logits && input ? WMAT_OK
                             : wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %d x %d logits", es->ctx_len, es->V);
    for (size_t w = 0; w < n_windows && !rc; w++) {
        rc = eval_window(rt, es, w, logits, input, &wnll[2 * w]);
        if (!rc) rc = progress(wmat_runtime_context(rt), w + 1, n_windows);
    }
    wmat__free(input);
    wmat__free(logits);
    return rc;
}

/* Out of core (wmat_eval_params.low_mem): windows in groups whose residual
 * streams fit LOWMEM_STREAM_BYTES; each group is embedded, then runs block
 * by block (every window through block l, then block l's mapped pages are
 * released), then through the final norm and classifier. Each window
 * computes what wmat_forward computes on a runtime of the same threads
 * (wmat_forward_layers copies the stream into the runtime's buffer and runs
 * the same block code): with one thread the sums are eval_serial's, with
 * several each window runs on a single-threaded worker as in
 * eval_parallel. The weights are read once per group, not once per window.
 */
#define LOWMEM_STREAM_BYTES ((size_t)256 << 20)

/* One step of the layer-major pass on window g0 + i of the group:
 * step -1 embeds it, 0 .. L-1 run that block, L runs the head and scores. */
static int layer_major_step(wmat_runtime *rt, const eval_stream *es, size_t w, float *X, int step, int L, float *logits,
                            int32_t *input, double *wnll)
{
    const eval_span sp = window_span(es, w);
    if (step < 0) return wmat_forward_embed(rt, window_input(es, &sp, input), sp.len, X);
    if (step < L) return wmat_forward_layers(rt, X, X, sp.len, step, step + 1);
    int rc = wmat_forward_head(rt, X, sp.len, logits);
    return rc ? rc : score_window(es, w, logits, &wnll[2 * w]);
}

static int eval_layer_major(wmat_runtime *rt, const eval_stream *es, size_t n_windows, double *wnll, int nt)
{
    const wmat_config *c = wmat__runtime_config(rt);
    wmat_model *m = wmat__runtime_model(rt);
    const int L = c->n_layers;
    const size_t per_win = (size_t)es->ctx_len * (size_t)c->dim, per_log = (size_t)es->ctx_len * (size_t)es->V;
    size_t G = LOWMEM_STREAM_BYTES / (per_win * sizeof(float));
    if (G < 1) G = 1;
    if (G > n_windows) G = n_windows;
    if (nt < 1 || wmat__runtime_has_hook(rt)) nt = 1;
    if ((size_t)nt > G) nt = (int)G;
    /* several threads: whole windows on single-threaded workers, as
     * eval_parallel (no barrier inside a window) */
    wmat_runtime *workers[64] = {NULL};
    float *X = wmat__malloc(G * per_win * sizeof(float));
    float *logits = wmat__malloc((size_t)nt * per_log * sizeof(float));
    int32_t *input = wmat__malloc((size_t)nt * (size_t)es->ctx_len * sizeof *input);
    int rc = X && logits && input ? WMAT_OK
                                  : wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %zu residual streams of %d x %d",
                                                   G, es->ctx_len, c->dim);
    for (int i = 0; i < nt && nt > 1 && !rc; i++) rc = wmat__runtime_worker_create(&workers[i], rt);
    for (size_t g0 = 0; g0 < n_windows && !rc; g0 += G) {
        const size_t ng = n_windows - g0 < G ? n_windows - g0 : G;
        for (int step = -1; step <= L && !rc; step++) {
            if (nt == 1) {
                for (size_t i = 0; i < ng && !rc; i++)
                    rc = layer_major_step(rt, es, g0 + i, X + i * per_win, step, L, logits, input, wnll);
            } else {
                int err = WMAT_OK;
                char msg[512] = "";
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
                for (size_t i = 0; i < ng; i++) {
                    const int tid = omp_get_thread_num();
                    int stop;
#pragma omp atomic read
                    stop = err;
                    if (stop) continue;
                    int wrc = layer_major_step(workers[tid], es, g0 + i, X + i * per_win, step, L,
                                               logits + (size_t)tid * per_log, input + (size_t)tid * (size_t)es->ctx_len,
                                               wnll);
                    if (wrc) {
#pragma omp critical(wmat_eval_lm_error)
                        {
                            int first;
#pragma omp atomic read
                            first = err;
                            if (!first) {
                                snprintf(msg, sizeof msg, "%s", wmat_last_error());
#pragma omp atomic write
                                err = wrc;
                            }
                        }
                    }
                }
                if (err) rc = wmat_set_error(err, "%s", msg);
            }
            /* the block is done for this group: its pages may go */
            if (step < 0) wmat__model_release(m, wmat_model_tok_embeddings(m));
            else if (step < L) wmat__model_release_layer(m, step);
            else wmat__model_release(m, wmat_model_classifier(m));
        }
        if (!rc) rc = progress(wmat_runtime_context(rt), g0 + ng, n_windows);
    }
    for (int i = 0; i < nt; i++) wmat_runtime_free(workers[i]);
    wmat__free(input);
    wmat__free(logits);
    wmat__free(X);
    return rc;
}

static int eval_parallel(wmat_runtime *rt, const eval_stream *es, size_t n_windows, double *wnll, int nt)
{
    const size_t per = (size_t)es->ctx_len * (size_t)es->V;
    wmat_runtime *workers[64] = {NULL};
    float *logits = wmat__malloc((size_t)nt * per * sizeof(float));
    int32_t *input = wmat__malloc((size_t)nt * (size_t)es->ctx_len * sizeof *input);
    int rc = logits && input ? WMAT_OK
                             : wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %d x %d x %d logits", nt,
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
                int wrc = eval_window(workers[tid], es, w, logits + (size_t)tid * per,
                                      input + (size_t)tid * (size_t)es->ctx_len, &wnll[2 * w]);
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
    wmat__free(input);
    wmat__free(logits);
    return rc;
}

wmat_eval_params wmat_eval_default_params(void)
{
    wmat_eval_params p;
    memset(&p, 0, sizeof p);
    p.protocol = WMAT_EVAL_WMAT;
    p.bos = -1;
    p.pack_weights = 1;
    return p;
}

const char *wmat_eval_protocol_name(wmat_eval_protocol p)
{
    switch (p) {
    case WMAT_EVAL_WMAT: return "wmat";
    case WMAT_EVAL_LLAMACPP: return "llama.cpp";
    }
    return NULL;
}

int wmat_eval_protocol_from_name(const char *name, wmat_eval_protocol *out)
{
    for (int p = 0; p <= (int)WMAT_EVAL_LLAMACPP; p++)
        if (name && !strcmp(name, wmat_eval_protocol_name((wmat_eval_protocol)p))) {
            *out = (wmat_eval_protocol)p;
            return WMAT_OK;
        }
    return wmat_set_error(WMAT_ERR_INVALID, "eval: unknown protocol '%s' (wmat or llama.cpp)", name ? name : "(null)");
}

/* Both protocols on a runtime; p->ctx is the window (> 0), p->bos resolved. */
static int eval_run(wmat_runtime *rt, const int32_t *tokens, size_t n, const wmat_eval_params *p, int low_mem,
                    wmat_eval_result *res)
{
    memset(res, 0, sizeof *res);
    const int ctx_len = p->ctx, llama = p->protocol == WMAT_EVAL_LLAMACPP;
    if (p->protocol != WMAT_EVAL_WMAT && !llama)
        return wmat_set_error(WMAT_ERR_INVALID, "eval: unknown protocol %d", (int)p->protocol);
    if (ctx_len <= 0) return wmat_set_error(WMAT_ERR_INVALID, "eval: context length must be positive (got %d)", ctx_len);
    if (n < 2) return wmat_set_error(WMAT_ERR_INVALID, "eval: need at least 2 tokens, got %zu", n);
    if (ctx_len > wmat_runtime_max_tokens(rt))
        return wmat_set_error(WMAT_ERR_INVALID, "eval: context %d is longer than the runtime's window (%d)", ctx_len,
                              wmat_runtime_max_tokens(rt));
    size_t n_windows;
    if (llama) {
        /* llama-perplexity's limits: half a chunk of context before the scored
         * half, which must hold a prediction; two chunks' worth of tokens. */
        if (ctx_len < 3)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "eval: the llama.cpp protocol scores positions ctx/2 .. ctx-2 of each chunk: ctx %d "
                                  "scores none (use ctx >= 3)",
                                  ctx_len);
        if (n < 2 * (size_t)ctx_len)
            return wmat_set_error(WMAT_ERR_INVALID,
                                  "eval: the llama.cpp protocol needs at least 2 x ctx = %zu tokens for ctx %d (as "
                                  "llama-perplexity does); the stream has %zu",
                                  2 * (size_t)ctx_len, ctx_len, n);
        if (p->bos >= wmat_runtime_vocab(rt))
            return wmat_set_error(WMAT_ERR_INVALID, "eval: BOS %d is outside the vocabulary (%d)", p->bos,
                                  wmat_runtime_vocab(rt));
        n_windows = n / (size_t)ctx_len;
    } else {
        n_windows = (n - 1 + (size_t)ctx_len - 1) / (size_t)ctx_len;
    }
    const eval_stream es = {tokens, n, ctx_len, wmat_runtime_vocab(rt), llama, p->bos};
    if (p->max_chunks > 0 && n_windows > (size_t)p->max_chunks) n_windows = (size_t)p->max_chunks;
    double *wnll = wmat__calloc(2 * n_windows, sizeof *wnll);
    if (!wnll) return wmat_set_error(WMAT_ERR_NOMEM, "eval: out of memory for %zu window sums", n_windows);
    /* hooks see one forward at a time, so a hooked runtime stays serial */
    int nt = wmat__runtime_threads(rt);
    if (nt > 64) nt = 64;
    if ((size_t)nt > n_windows) nt = (int)n_windows;
    const double t0 = wmat__now();
    int rc = low_mem                                      ? eval_layer_major(rt, &es, n_windows, wnll, nt)
             : nt > 1 && !wmat__runtime_has_hook(rt) ? eval_parallel(rt, &es, n_windows, wnll, nt)
                                                     : eval_serial(rt, &es, n_windows, wnll);
    if (rc) {
        wmat__free(wnll);
        return rc;
    }
    double total = 0.0, total2 = 0.0;
    uint64_t scored = 0;
    for (size_t w = 0; w < n_windows; w++) {
        const eval_span sp = window_span(&es, w);
        total += wnll[2 * w];
        total2 += wnll[2 * w + 1];
        scored += (uint64_t)(sp.hi - sp.lo);
    }
    wmat__free(wnll);
    res->seconds = wmat__now() - t0;
    res->tokens_scored = scored;
    res->windows = (int)n_windows;
    res->mean_nll = total / (double)scored;
    res->ppl = exp(res->mean_nll);
    res->tokens_per_s = res->seconds > 0 ? (double)scored / res->seconds : 0.0;
    /* llama-perplexity's "+/-": the population variance of the per-token NLL
     * over N - 1, i.e. the standard error of the mean NLL, carried to the
     * perplexity to first order (d exp(m) = exp(m) dm). */
    const double var = total2 / (double)scored - res->mean_nll * res->mean_nll;
    res->ppl_err = var > 0 && scored > 1 ? res->ppl * sqrt(var / (double)(scored - 1)) : 0.0;
    return WMAT_OK;
}

int wmat_eval_tokens(wmat_runtime *rt, const int32_t *tokens, size_t n, int ctx_len, int max_windows,
                     wmat_eval_result *res)
{
    wmat_eval_params p = wmat_eval_default_params();
    p.ctx = ctx_len;
    p.max_chunks = max_windows;
    return eval_run(rt, tokens, n, &p, 0, res);
}

int wmat_eval_stream(wmat_model *m, const int32_t *tokens, size_t n, const wmat_eval_params *params,
                     wmat_eval_result *res)
{
    memset(res, 0, sizeof *res);
    wmat_eval_params p = params ? *params : wmat_eval_default_params();
    const wmat_config *c = wmat_model_config(m);
    if (p.ctx <= 0) p.ctx = c->seq_len;
    if (p.ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "eval: context %d is longer than the model's (%d)", p.ctx, c->seq_len);
    if (p.protocol == WMAT_EVAL_LLAMACPP && p.bos == -1) p.bos = c->bos_id;
    if (p.bos < -2)
        return wmat_set_error(WMAT_ERR_INVALID, "eval: bos must be a token id, -1 (the model's) or -2 (none); got %d",
                              p.bos);
    wmat_context wc = p.context ? *p.context : wmat_context_default();
    if (p.n_threads > 0) wc.n_threads = p.n_threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = p.ctx;
    rp.kv_cache_len = 1; /* every window is one batched forward: no decode */
    /* out of core: no packed copies of the weights, blocks one at a time */
    const int low_mem = wmat__model_low_mem(m, p.low_mem);
    rp.pack_weights = low_mem ? 0 : p.pack_weights;
    rp.ctx = &wc;
    wmat_runtime *rt = NULL;
    int rc = wmat_runtime_create(&rt, m, &rp);
    if (!rc) rc = eval_run(rt, tokens, n, &p, low_mem, res);
    wmat_runtime_free(rt);
    return rc;
}
