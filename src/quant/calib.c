/* Calibration statistics of linear-layer inputs, gathered through the
 * runtime's observation hook (wmat_runtime_set_hook) during wmat_forward.
 *
 * Per input (features n, tokens N): H = 2/N sum x x^T (GPTQ, double),
 * x2 = mean x^2 (imatrix, the diagonal of H / 2), absmax = max |x|.
 * The q/k/v projections share one input (the attention-normed stream), as
 * do gate/up; so a block has four inputs ("slots"): attn, o, ffn, down, and
 * the classifier a fifth.
 *
 * The calibration windows' residual streams are kept between blocks
 * (wmat__calib_states, n_windows x ctx x dim floats, as GPTQ's reference
 * keeps its "inps"): block l is calibrated by running only block l on them
 * (wmat_forward_layers) with a hook that accumulates the requested slots and
 * stops right after the last of them, and once block l is quantized the
 * streams advance through it. So calibrating the whole model costs about one
 * forward per stage, not the (L + 1) / 2 forwards of re-running blocks
 * 0..l-1 each time.
 *
 * bf16 calibration forward (wmat__calib_states_dtype, `--calib-dtype
 * bf16`): the blocks' linear products take bf16 operands (oneDNN's matmul,
 * fp32 accumulation) through the runtime's product override; everything
 * else (norms, RoPE, attention, SwiGLU, residuals) stays fp32, and so do the
 * statistics: the hook sees each product's fp32 input, and X^T X of it is
 * the fp32 product summed in double as in an fp32 calibration. Rounding X
 * to bf16 for X^T X as well would change H by about 2^-9 relative per
 * element product where the forward only moves the activations (docs/QUANT.md
 * "GPTQ at 1.1B scale" measures both).
 *
 * Out of core (wmat__calib_states_init_spill, quantize's low-mem mode): the
 * streams and the kept activations (608 MiB for 64 windows of 256 at the
 * 1.1B shape) live in unlinked files beside the output, mapped shared, and
 * each pass drops a window's pages as soon as it is done with that window
 * (window_done): the values are the same floats, only where they rest
 * between passes changes. */
#include "methods.h"

#include "core/shapes.h"
#include "io/model_internal.h"
#include "linalg/linalg.h"
#include "model/runtime.h"

#include <math.h>
#include <string.h>

/* Tokens per H update: X^T X of a batch in float (as GPTQ's reference
 * accumulates all of H), batches summed in double. 2048: one update per 8
 * windows of 256, where the per-window update of an n = 5632 input moved
 * 254 MB of doubles for 16 GFLOP of product.
 *
 * Inputs of at most STATS_WINDOW_N features keep one product per window
 * (H, 8 MB at most, stays in cache, so the update costs little): a sum of
 * per-window float products in double does not depend on how the windows
 * are split over MPI ranks (calib_dp.c), so there 1, 2 or 3 ranks write
 * the same bytes. Wider inputs trade that for the batched update: ranks
 * then differ from one process by float rounding of H (about 1e-7). */
#define STATS_BATCH 2048
#define STATS_WINDOW_N 1024

int wmat__qstats_init(wmat_qstats *s, int64_t n, int with_hessian)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->x2 = wmat__calloc((size_t)n, sizeof(double));
    s->absmax = wmat__calloc((size_t)n, sizeof(float));
    s->wmaxmin = wmat__calloc((size_t)n, sizeof(float));
    if (with_hessian) {
        s->H = wmat__calloc((size_t)(n * n), sizeof(double));
        s->fact = wmat__calloc(1, sizeof *s->fact);
        s->xb_cap = STATS_BATCH;
        s->xb = wmat__malloc((size_t)s->xb_cap * (size_t)n * sizeof(float));
        s->G = wmat__malloc((size_t)(n * n) * sizeof(float));
    }
    if (!s->x2 || !s->absmax || !s->wmaxmin || (with_hessian && (!s->H || !s->fact || !s->xb || !s->G))) {
        wmat__qstats_free(s);
        return wmat_set_error(WMAT_ERR_NOMEM, "calibration: out of memory for statistics of %lld inputs", (long long)n);
    }
    return WMAT_OK;
}

void wmat__qstats_free(wmat_qstats *s)
{
    wmat__free(s->H);
    wmat__free(s->x2);
    wmat__free(s->absmax);
    wmat__free(s->wmaxmin);
    if (s->fact) wmat__gptq_fact_clear(s->fact);
    wmat__free(s->fact);
    wmat__free(s->xb);
    wmat__free(s->G);
    memset(s, 0, sizeof *s);
}

void wmat__qstats_reset(wmat_qstats *s)
{
    if (s->H) memset(s->H, 0, (size_t)(s->n * s->n) * sizeof(double));
    memset(s->x2, 0, (size_t)s->n * sizeof(double));
    memset(s->absmax, 0, (size_t)s->n * sizeof(float));
    memset(s->wmaxmin, 0, (size_t)s->n * sizeof(float));
    if (s->fact) wmat__gptq_fact_clear(s->fact);
    s->xb_rows = 0;
    s->n_tokens = 0;
}

/* The upper triangle (and the diagonal panels' lower parts) of G = X^T X,
 * X (K, n): panels of rows, each one GEMM on the context's threads, so the
 * product costs about half the full one. */
static void xtx_upper(float *G, const float *X, int64_t n, int K)
{
    const int64_t P = 256;
    for (int64_t i = 0; i < n; i += P) {
        const int64_t w = n - i < P ? n - i : P;
        wmat_sgemm(1, 0, (int)w, (int)(n - i), K, 1.0f, X + i, (int)n, X + i, (int)n, 0.0f, G + i * n + i, (int)n);
    }
}

static void flush_batch(wmat_qstats *s)
{
    const int64_t n = s->n;
    if (!s->xb_rows) return;
    xtx_upper(s->G, s->xb, n, s->xb_rows);
    for (int64_t i = 0; i < n; i++) {
        double *h = s->H + i * n;
        const float *g = s->G + i * n;
        for (int64_t j = i; j < n; j++) h[j] += g[j];
    }
    s->xb_rows = 0;
}

void wmat__qstats_add(wmat_qstats *s, const float *X, int T)
{
    const double t0 = wmat__now();
    const int64_t n = s->n;
    const int first = s->n_tokens == 0;
    for (int64_t j = 0; j < n && T > 0; j++) {
        float m = 0.0f;
        for (int t = 0; t < T; t++) {
            const float v = X[(int64_t)t * n + j];
            s->x2[j] += (double)v * v;
            if (fabsf(v) > m) m = fabsf(v);
        }
        if (m > s->absmax[j]) s->absmax[j] = m;
        if (first || m < s->wmaxmin[j]) s->wmaxmin[j] = m;
    }
    if (s->H)
        for (int t = 0; t < T;) {
            const int k = T - t < s->xb_cap - s->xb_rows ? T - t : s->xb_cap - s->xb_rows;
            memcpy(s->xb + (size_t)s->xb_rows * (size_t)n, X + (size_t)t * (size_t)n, (size_t)k * (size_t)n * sizeof(float));
            s->xb_rows += k;
            t += k;
            if (s->xb_rows == s->xb_cap) flush_batch(s);
        }
    if (s->H && n <= STATS_WINDOW_N) flush_batch(s);
    s->n_tokens += (uint64_t)T;
    s->seconds += wmat__now() - t0;
}

void wmat__qstats_finish(wmat_qstats *s)
{
    const double t0 = wmat__now();
    const double N = s->n_tokens ? (double)s->n_tokens : 1.0;
    const int64_t n = s->n;
    for (int64_t j = 0; j < n; j++) s->x2[j] /= N;
    if (!s->H) return;
    flush_batch(s);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++) s->H[i * n + j] = s->H[j * n + i];
    /* here H holds sum x x^T over this process's tokens */
    for (int64_t i = 0; i < n * n; i++) s->H[i] *= 2.0 / N;
    s->seconds += wmat__now() - t0;
}

int wmat__calib_slot(wmat_linear_kind k)
{
    switch (k) {
    case WMAT_LIN_Q: case WMAT_LIN_K: case WMAT_LIN_V: return WMAT_CSLOT_ATTN;
    case WMAT_LIN_O: return WMAT_CSLOT_O;
    case WMAT_LIN_GATE: case WMAT_LIN_UP: return WMAT_CSLOT_FFN;
    case WMAT_LIN_DOWN: return WMAT_CSLOT_DOWN;
    default: return WMAT_CSLOT_CLS;
    }
}

typedef struct {
    int layer;
    unsigned want; /* bit s: accumulate slot s */
    int last;      /* highest wanted slot: stop right after it (-1: never) */
    wmat_qstats **slots;
    int stopped;
} hook_state;

static int calib_hook(void *user, int layer, wmat_linear_kind kind, const float *X, int T, int in,
                      const wmat_tensor *W)
{
    (void)in;
    (void)W;
    hook_state *h = user;
    if (layer != h->layer) return 0;
    const int s = wmat__calib_slot(kind);
    /* the first linear of a slot sees its input; K, V, UP see the same X */
    const int first = kind == WMAT_LIN_Q || kind == WMAT_LIN_O || kind == WMAT_LIN_GATE || kind == WMAT_LIN_DOWN ||
                      kind == WMAT_LIN_COUNT;
    if (first && (h->want >> s & 1u) && h->slots[s]) wmat__qstats_add(h->slots[s], X, T);
    if (h->last >= 0 && s >= h->last && s != WMAT_CSLOT_CLS) {
        h->stopped = 1;
        return 1;
    }
    return 0;
}

/* ---- where the streams rest: memory, or (out of core) unlinked files */

/* `bytes` for one of the streams' buffers into *buf: malloc'ed, or a spill
 * file's mapping when st->spill (*map its length; 0 when malloc'ed). A
 * spill file's failure sets its message; WMAT_ERR_NOMEM from malloc is the
 * caller's to say. */
static int streams_buf(wmat__calib_states *st, size_t bytes, float **buf, size_t *map, const char *what)
{
    *buf = NULL;
    *map = 0;
    if (!st->spill || !bytes) {
        *buf = wmat__malloc(bytes);
        return *buf ? WMAT_OK : WMAT_ERR_NOMEM;
    }
    wmat_map mp;
    char w[96];
    snprintf(w, sizeof w, "calibration: %s", what);
    int rc = wmat__spill_scratch(st->spill_dir, bytes, w, &mp);
    if (rc) return rc;
    *buf = mp.addr;
    *map = mp.len;
    return WMAT_OK;
}

static void streams_buf_free(float *buf, size_t map)
{
    if (map) {
        wmat_map mp = {buf, map};
        wmat__unmap(&mp);
    } else {
        wmat__free(buf);
    }
}

static float *kept_a(wmat__calib_states *st, int w);
static float *kept_hs(wmat__calib_states *st, int w);

/* Out of core: a pass is done with window w, whose pages (streams and kept
 * activations) leave the resident set; their contents stay in the page
 * cache and the file, and the next pass maps them back. */
static void window_done(wmat__calib_states *st, int w)
{
    if (!st->spill) return;
    const wmat_config *c = wmat__runtime_config(st->rt);
    const size_t tok = (size_t)st->ctx;
    wmat__pages_release(wmat__calib_state(st, w), tok * (size_t)st->dim * sizeof(float), 1);
    if (st->A) wmat__pages_release(kept_a(st, w), tok * (size_t)wmat__attn_width(c) * sizeof(float), 1);
    if (st->Hs) wmat__pages_release(kept_hs(st, w), tok * (size_t)c->hidden_dim * sizeof(float), 1);
}

int wmat__calib_states_init(wmat__calib_states *st, wmat_runtime *rt, const int32_t *tokens, int n_windows, int ctx,
                            int dim)
{
    return wmat__calib_states_init_spill(st, rt, tokens, n_windows, ctx, dim, 0, NULL);
}

int wmat__calib_states_init_spill(wmat__calib_states *st, wmat_runtime *rt, const int32_t *tokens, int n_windows,
                                  int ctx, int dim, int spill, const char *dir)
{
    memset(st, 0, sizeof *st);
    st->spill = spill;
    st->spill_dir = dir;
    const size_t n = (size_t)n_windows * (size_t)ctx * (size_t)dim;
    int rc0 = streams_buf(st, n * sizeof(float), &st->X, &st->x_map, "the residual streams");
    if (rc0 == WMAT_ERR_NOMEM && !spill)
        return wmat_set_error(WMAT_ERR_NOMEM,
                              "calibration: out of memory for the residual streams of %d windows x %d tokens x %d "
                              "(%zu MB); lower --calib-tokens",
                              n_windows, ctx, dim, (n * sizeof(float)) >> 20);
    if (rc0) return rc0;
    st->rt = rt;
    st->n_windows = n_windows;
    st->ctx = ctx;
    st->dim = dim;
    st->bytes = n * sizeof(float);
    for (int w = 0; w < n_windows; w++) {
        int rc = wmat_forward_embed(rt, tokens + (size_t)w * (size_t)ctx, ctx, wmat__calib_state(st, w));
        window_done(st, w);
        if (rc) {
            wmat__calib_states_free(st);
            return rc;
        }
    }
    return WMAT_OK;
}

void wmat__calib_states_free(wmat__calib_states *st)
{
    if (st->rt && st->bf16) wmat__runtime_set_linear(st->rt, NULL, NULL);
    for (int k = 0; k < WMAT_LIN_COUNT; k++) wmat__free(st->w16[k]);
    wmat__free(st->x16);
    streams_buf_free(st->X, st->x_map);
    streams_buf_free(st->A, st->a_map);
    streams_buf_free(st->Hs, st->hs_map);
    memset(st, 0, sizeof *st);
}

/* ---- bf16 forward */

int wmat__calib_dtype_check(wmat_dtype dt)
{
    if (dt == WMAT_F32) return WMAT_OK;
    if (dt != WMAT_BF16) {
        const wmat_dtype_traits *di = wmat_dtype_info(dt);
        return wmat_set_error(WMAT_ERR_INVALID, "calibration dtype must be f32 or bf16 (got %s)",
                              di ? di->name : "an unknown dtype");
    }
    char why[256];
    if (!wmat__gemm_bf16_fast(WMAT_GEMM_AUTO, why, sizeof why))
        return wmat_set_error(WMAT_ERR_UNSUPPORTED,
                              "bf16 calibration needs a native bf16 GEMM: %s; calibrate in f32", why);
    return WMAT_OK;
}

/* Grow a uint16 buffer to n values (contents not kept). */
static int grow16(uint16_t **buf, size_t *cap, size_t n)
{
    if (n <= *cap) return WMAT_OK;
    wmat__free(*buf);
    *cap = 0;
    if (!(*buf = wmat__malloc(n * sizeof(uint16_t))))
        return wmat_set_error(WMAT_ERR_NOMEM, "calibration: out of memory for %zu bf16 values", n);
    *cap = n;
    return WMAT_OK;
}

/* The runtime's product override: Y (T, out) = bf16(X) bf16(W)^T (+ Y),
 * fp32 accumulation. W is converted at its first product of a pass; a
 * weight that is not dense fp32 goes through the runtime's own product. */
static int linear16(void *user, int layer, wmat_linear_kind k, float *Y, const float *X, int T, int acc,
                    const wmat_tensor *W)
{
    wmat__calib_states *st = user;
    if (W->dtype != WMAT_F32 || W->ndim != 2 || (unsigned)k >= WMAT_LIN_COUNT) return 1;
    const int64_t out = W->shape[0], in = W->shape[1];
    const double t0 = wmat__now();
    int rc;
    if (st->w16_layer != layer) {
        st->w16_layer = layer;
        st->w16_valid = 0;
    }
    if (!(st->w16_valid >> k & 1u)) {
        const size_t n = (size_t)out * (size_t)in;
        if ((rc = grow16(&st->w16[k], &st->w16_cap[k], n))) return rc;
        wmat_from_f32(st->w16[k], WMAT_BF16, W->data, n);
        st->w16_valid |= 1u << k;
    }
    const size_t nx = (size_t)T * (size_t)in;
    if ((rc = grow16(&st->x16, &st->x16_cap, nx))) return rc;
    wmat_from_f32(st->x16, WMAT_BF16, X, nx);
    st->convert_seconds += wmat__now() - t0;
    return wmat__gemm_bf16_on(st->gemm, st->n_threads, 0, 1, T, (int)out, (int)in, 1.0f, st->x16, (int)in, st->w16[k],
                              (int)in, acc ? 1.0f : 0.0f, Y, (int)out);
}

int wmat__calib_states_dtype(wmat__calib_states *st, wmat_dtype dt)
{
    int rc = wmat__calib_dtype_check(dt);
    if (rc) return rc;
    st->bf16 = dt == WMAT_BF16;
    const wmat_context *ctx = wmat_runtime_context(st->rt);
    st->gemm = ctx->gemm;
    st->n_threads = wmat__runtime_threads(st->rt);
    st->w16_layer = -1;
    st->w16_valid = 0;
    wmat__runtime_set_linear(st->rt, st->bf16 ? linear16 : NULL, st->bf16 ? st : NULL);
    return WMAT_OK;
}

float *wmat__calib_state(wmat__calib_states *st, int w)
{
    return st->X + (size_t)w * (size_t)st->ctx * (size_t)st->dim;
}

/* Window w's kept attention output and SwiGLU product (NULL when not kept). */
static float *kept_a(wmat__calib_states *st, int w)
{
    return st->A ? st->A + (size_t)w * (size_t)st->ctx * (size_t)wmat__attn_width(wmat__runtime_config(st->rt))
                 : NULL;
}

static float *kept_hs(wmat__calib_states *st, int w)
{
    return st->Hs ? st->Hs + (size_t)w * (size_t)st->ctx * (size_t)wmat__runtime_config(st->rt)->hidden_dim : NULL;
}

/* The kept buffers a resumed pass up to stage `to` needs (A when it runs
 * the attention, Hs when it runs the FFN's first half), allocated once. */
static int kept_alloc(wmat__calib_states *st, int to)
{
    const wmat_config *c = wmat__runtime_config(st->rt);
    const size_t tok = (size_t)st->n_windows * (size_t)st->ctx;
    int rc;
    if (st->stage <= 0 && to > 1 && !st->A) {
        const size_t n = tok * (size_t)wmat__attn_width(c);
        if ((rc = streams_buf(st, n * sizeof(float), &st->A, &st->a_map, "the kept attention outputs")))
            return rc == WMAT_ERR_NOMEM && !st->spill
                       ? wmat_set_error(WMAT_ERR_NOMEM, "calibration: out of memory for the kept attention outputs (%zu MB)",
                                        (n * sizeof(float)) >> 20)
                       : rc;
        st->bytes += n * sizeof(float);
    }
    if (st->stage <= 2 && to > 3 && !st->Hs) {
        const size_t n = tok * (size_t)c->hidden_dim;
        if ((rc = streams_buf(st, n * sizeof(float), &st->Hs, &st->hs_map, "the kept FFN activations")))
            return rc == WMAT_ERR_NOMEM && !st->spill
                       ? wmat_set_error(WMAT_ERR_NOMEM, "calibration: out of memory for the kept FFN activations (%zu MB)",
                                        (n * sizeof(float)) >> 20)
                       : rc;
        st->bytes += n * sizeof(float);
    }
    return WMAT_OK;
}

int wmat__calib_advance(wmat__calib_states *st)
{
    const int L = st->layer;
    st->w16_valid = 0; /* the weights may have changed since the last pass */
    int rc = st->stage > 0 ? kept_alloc(st, 4) : WMAT_OK;
    for (int w = 0; w < st->n_windows && !rc; w++) {
        float *X = wmat__calib_state(st, w);
        /* from where the last stage-mode pass stopped, else the whole block */
        rc = st->stage > 0 ? wmat__forward_block_part(st->rt, X, kept_a(st, w), kept_hs(st, w), st->ctx, L, st->stage, 4)
                           : wmat_forward_layers(st->rt, X, X, st->ctx, L, L + 1);
        window_done(st, w);
        st->block_passes++;
        st->stage_runs += 4 - st->stage;
    }
    if (rc) return rc;
    st->stage = 0;
    st->layer++;
    return WMAT_OK;
}

int wmat__calib_collect(wmat__calib_states *st, int n_layers, wmat_qstats **slots, unsigned want, int advance)
{
    const int layer = st->layer;
    if (!want) return WMAT_OK;
    st->w16_valid = 0; /* the weights may have changed since the last pass */
    hook_state h = {layer, want, -1, slots, 0};
    if (!advance)
        for (int s = 0; s < WMAT_CSLOT_COUNT; s++)
            if (want >> s & 1u) h.last = s;
    for (int s = 0; s < WMAT_CSLOT_COUNT; s++)
        if ((want >> s & 1u) && slots[s]) wmat__qstats_reset(slots[s]);
    /* one slot of a block, the streams staying: resume at st->stage and
     * stop at the slot's first linear, which runs in stage `slot` */
    const int one = !(want & (want - 1u)), slot = __builtin_ctz(want);
    const int resume = st->resume && one && !advance && layer < n_layers && slot < WMAT_CSLOT_CLS && st->stage <= slot;
    if (!resume && st->stage > 0 && layer < n_layers)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "calibration: block %d's streams are past its input (stage %d); a pass over several "
                              "slots needs them at the input",
                              layer, st->stage);
    int rc = resume ? kept_alloc(st, slot + 1) : WMAT_OK;
    if (rc) return rc;
    wmat_runtime_set_hook(st->rt, calib_hook, &h);
    for (int w = 0; w < st->n_windows && !rc; w++) {
        float *X = wmat__calib_state(st, w);
        h.stopped = 0;
        if (resume) {
            rc = wmat__forward_block_part(st->rt, X, kept_a(st, w), kept_hs(st, w), st->ctx, layer, st->stage,
                                          slot + 1);
            st->stage_runs += slot + 1 - st->stage;
        } else {
            rc = layer >= n_layers ? wmat_forward_head(st->rt, X, st->ctx, NULL)
                                   : wmat_forward_layers(st->rt, X, advance ? X : NULL, st->ctx, layer, layer + 1);
            st->stage_runs += 4;
        }
        window_done(st, w);
        st->block_passes++;
        if (rc == WMAT_ERR_CANCELLED && h.stopped) {
            wmat_clear_error();
            rc = WMAT_OK;
        }
    }
    wmat_runtime_set_hook(st->rt, NULL, NULL);
    if (rc) return rc;
    if (resume) st->stage = slot;
    if (advance && layer < n_layers) st->layer++;
    /* the sums are complete here: over the ranks too (calib_dp.c) */
    if ((rc = wmat__calib_reduce(wmat_runtime_context(st->rt), slots, want))) return rc;
    for (int s = 0; s < WMAT_CSLOT_COUNT; s++)
        if ((want >> s & 1u) && slots[s]) wmat__qstats_finish(slots[s]);
    return WMAT_OK;
}
