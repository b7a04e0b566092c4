/* SliceGPT (Ashkboos et al. 2024; reference microsoft/TransformerCompression,
 * spec sheet H1): rotate the residual stream of every point between blocks
 * into the principal axes of its calibration activations and delete the
 * d - d' directions of least variance, so that the embedding, every block's
 * inputs and outputs and the classifier shrink to width d'.
 *
 * The RMSNorm scales are folded into the linears after them, and the norms
 * divide by the original width (cfg.norm_dim): x / sqrt(sum x^2 / d + eps)
 * is invariant under a rotation of x, and after slicing the sum runs over
 * the d' kept entries but the divisor stays d. Each residual point r has its
 * own basis Q_r (d x d, eigenvectors of the covariance by descending
 * eigenvalue, Q'_r its first d' columns); where a block's input and output
 * bases differ the residual connection maps between them through a
 * d' x d' shortcut matrix (wmat convention y = S x):
 *
 *   S_attn = Q'_mid^T Q'_in,   S_mlp = Q'_out^T Q'_mid,
 *   W_q,k,v <- W diag(g_attn) Q'_in,   W_o <- Q'_mid^T W_o,
 *   W_gate,up <- W diag(g_ffn) Q'_mid, W_down <- Q'_out^T W_down,
 *   E <- E Q'_0,   W_head <- W_head diag(g_final) Q'_last.
 *
 * Sequential calibration (the reference's rotate_and_slice_sequential): the
 * basis of each point is computed on the model sliced up to that point. In
 * the original basis the sliced model is the dense model whose stream is
 * projected onto span(Q'_r) at every point r (P_r = Q'_r Q'_r^T), so the
 * calibration runs the dense weights on a full-width working model with
 * shortcut matrices: the block's input stream projected, P_mid put into the
 * attention's output and shortcut, and the output projected in turn. The
 * stream between attention and MLP (h_mid) comes from a pass with the down
 * projection zeroed (out = h_mid then).
 *
 * Variants: shortcut = false takes one basis for every point (of the summed
 * covariances of all points of the dense model): then every S is the
 * identity and the result is a plain LLaMA of width d' whose heads keep
 * their width (HF's head_dim, GGUF's key_length), the divisor d expressed
 * through the norms' weights and eps (below). basis = variance keeps the d' coordinates of largest variance
 * at each point without rotating (the naive baseline), basis = random d'
 * coordinates drawn at random. */
#include "decomp.h"

#include "core/shapes.h"
#include "io/model_internal.h"
#include "linalg/dense.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const wmat_param_spec wmat__slicegpt_keys[] = {
    {"sparsity", WMAT_PARAM_FLOAT, "0.25", 0, 0.99, NULL,
     "SliceGPT: share of the residual width removed; d' = floor((1 - s) d) rounded down to a multiple of 8", NULL},
    {"shortcut", WMAT_PARAM_BOOL, "true", 0, 0, NULL,
     "SliceGPT: a basis per residual point with d' x d' shortcut matrices (false: one basis, a plain model)",
     "no_shortcut"},
    {"basis", WMAT_PARAM_ENUM, "pca", 0, 0, "pca|variance|random",
     "SliceGPT: principal axes; variance: keep the largest-variance coordinates unrotated; random: random coordinates",
     NULL},
    {"damp", WMAT_PARAM_FLOAT, "0.01", 0, 100, NULL, "SliceGPT: covariance damping times mean(diag C)", NULL},
    {"seed", WMAT_PARAM_INT, "1", 0, 2147483647, NULL, "SliceGPT: seed of basis=random", NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

enum { BASIS_PCA = 0, BASIS_VARIANCE, BASIS_RANDOM };

int wmat__slicegpt_width(int dim, double sparsity, int *out)
{
    *out = 0;
    if (!(sparsity >= 0.0 && sparsity < 1.0))
        return wmat_set_error(WMAT_ERR_INVALID, "slicegpt: sparsity %g is outside [0, 1)", sparsity);
    int k = (int)floor((1.0 - sparsity) * (double)dim + 1e-9);
    if (k > dim) k = dim;
    k -= k % 8;
    if (k < 8)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "slicegpt: sparsity %g leaves %d of the %d residual dimensions (at least 8 must stay)", sparsity,
                              k < 0 ? 0 : k, dim);
    *out = k;
    return WMAT_OK;
}

/* Rows of the calibration streams converted to double at a time. */
#define CHUNK 512

typedef struct {
    int d, k;          /* width, kept width */
    int64_t N;         /* calibration rows (windows x ctx) */
    int basis;
    double damp;
    uint64_t rng;
    double *C, *w, *buf, *buf2; /* d x d, d, CHUNK x d, CHUNK x d */
} pca_ws;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* C (+)= X^T X over the N rows of X (float, d wide); upper triangle. */
static int accumulate(pca_ws *ws, const float *X, int add)
{
    const int d = ws->d;
    for (int64_t r0 = 0; r0 < ws->N; r0 += CHUNK) {
        const int n = (int)(ws->N - r0 < CHUNK ? ws->N - r0 : CHUNK);
        for (int64_t i = 0; i < (int64_t)n * d; i++) ws->buf[i] = X[r0 * d + i];
        int rc = wmat__dsyrk_upper(1, d, n, 1.0, ws->buf, d, (add || r0) ? 1.0 : 0.0, ws->C, d);
        if (rc) return rc;
    }
    return WMAT_OK;
}

/* Q (d x d, row-major, column j the j-th axis) of the covariance in ws->C
 * (upper triangle; destroyed); *lost the share of the trace outside the
 * first k axes (before damping). */
static int basis_of(pca_ws *ws, double *Q, double *lost)
{
    const int d = ws->d;
    double tr = 0;
    for (int i = 0; i < d; i++) tr += ws->C[(size_t)i * d + i];
    if (!(tr > 0) || !isfinite(tr))
        return wmat_set_error(WMAT_ERR_NUMERIC, "slicegpt: the calibration activations have no variance (trace %g)", tr);
    memset(Q, 0, (size_t)d * d * sizeof *Q);
    if (ws->basis != BASIS_PCA) {
        /* coordinates, unrotated: a permutation as the basis */
        int *idx = (int *)ws->buf;
        for (int i = 0; i < d; i++) idx[i] = i;
        if (ws->basis == BASIS_VARIANCE) {
            for (int i = 1; i < d; i++) /* insertion sort, descending variance */
                for (int j = i; j > 0 && ws->C[(size_t)idx[j] * d + idx[j]] > ws->C[(size_t)idx[j - 1] * d + idx[j - 1]];
                     j--) {
                    const int t = idx[j];
                    idx[j] = idx[j - 1];
                    idx[j - 1] = t;
                }
        } else {
            for (int i = d - 1; i > 0; i--) {
                const int j = (int)(splitmix(&ws->rng) % (uint64_t)(i + 1)), t = idx[i];
                idx[i] = idx[j];
                idx[j] = t;
            }
        }
        double kept = 0;
        for (int j = 0; j < d; j++) {
            Q[(size_t)idx[j] * d + j] = 1.0;
            if (j < ws->k) kept += ws->C[(size_t)idx[j] * d + idx[j]];
        }
        *lost = 1.0 - kept / tr;
        return WMAT_OK;
    }
    const double damp = ws->damp * tr / d;
    for (int i = 0; i < d; i++) ws->C[(size_t)i * d + i] += damp;
    int rc = wmat__dsyevd_upper(1, d, ws->C, d, ws->w);
    if (rc) return rc;
    /* ascending -> descending */
    double kept = 0;
    for (int j = 0; j < d; j++) {
        const int s = d - 1 - j;
        for (int i = 0; i < d; i++) Q[(size_t)i * d + j] = ws->C[(size_t)i * d + s];
        if (j < ws->k) kept += ws->w[s] - damp;
    }
    *lost = 1.0 - kept / tr;
    if (*lost < 0) *lost = 0;
    return WMAT_OK;
}

/* X (N x d) <- X Q' Q'^T: the stream projected onto the kept axes. */
static int project(pca_ws *ws, float *X, const double *Q)
{
    const int d = ws->d, k = ws->k;
    if (k == d && ws->basis != BASIS_PCA) return WMAT_OK; /* a permutation keeping everything */
    for (int64_t r0 = 0; r0 < ws->N; r0 += CHUNK) {
        const int n = (int)(ws->N - r0 < CHUNK ? ws->N - r0 : CHUNK);
        for (int64_t i = 0; i < (int64_t)n * d; i++) ws->buf[i] = X[r0 * d + i];
        int rc = wmat__dgemm(0, 0, n, k, d, 1.0, ws->buf, d, Q, d, 0.0, ws->buf2, k);
        if (!rc) rc = wmat__dgemm(0, 1, n, d, k, 1.0, ws->buf2, k, Q, d, 0.0, ws->buf, d);
        if (rc) return rc;
        for (int64_t i = 0; i < (int64_t)n * d; i++) X[r0 * d + i] = (float)ws->buf[i];
    }
    return WMAT_OK;
}

/* dst (rows x cols floats) <- src, which has the same element count. */
static void copy_f32(wmat_tensor *dst, const wmat_tensor *src)
{
    memcpy(dst->data, src->data, (size_t)wmat_tensor_nelem(dst) * sizeof(float));
}

static void set_identity(float *S, int d)
{
    memset(S, 0, (size_t)d * d * sizeof *S);
    for (int i = 0; i < d; i++) S[(size_t)i * d + i] = 1.0f;
}

/* The working model: the dense weights at full width, with shortcut
 * matrices (identity to begin with). */
static int working_model(wmat_model *m, wmat_model **out)
{
    wmat_config c = m->cfg;
    c.shortcuts = 1;
    int rc = wmat_model_create(out, &c);
    if (rc) return rc;
    wmat_model *w = *out;
    copy_f32(wmat_model_tok_embeddings(w), wmat_model_tok_embeddings(m));
    copy_f32(wmat_model_final_norm(w), wmat_model_final_norm(m));
    if (!c.tied_embeddings) copy_f32(wmat_model_classifier(w), wmat_model_classifier(m));
    for (int l = 0; l < c.n_layers; l++) {
        for (int r = 0; r < WMAT_W_LAYER_COUNT; r++)
            copy_f32(wmat_model_layer_tensor(w, l, (wmat_layer_weight)r), wmat_model_layer_tensor(m, l, (wmat_layer_weight)r));
        for (int s = 0; s < 2; s++) set_identity(wmat__model_shortcut(w, l, s)->data, c.dim);
    }
    return WMAT_OK;
}

/* P (d x d floats) = Q' Q'^T. */
static int projector(const double *Q, int d, int k, double *tmp, float *P)
{
    int rc = wmat__dgemm(0, 1, d, d, k, 1.0, Q, d, Q, d, 0.0, tmp, d);
    if (rc) return rc;
    for (int64_t i = 0; i < (int64_t)d * d; i++) P[i] = (float)tmp[i];
    return WMAT_OK;
}

/* Run block l of the working runtime over every window of X into Y. */
static int run_block(wmat_runtime *rt, const float *X, float *Y, int n_windows, int ctx, int d, int l)
{
    for (int w = 0; w < n_windows; w++) {
        const size_t off = (size_t)w * (size_t)ctx * (size_t)d;
        int rc = wmat_forward_layers(rt, X + off, Y + off, ctx, l, l + 1);
        if (rc) return rc;
    }
    return WMAT_OK;
}

/* The bases of all 2L + 1 residual points (Qs[0]: the embedding's, then
 * per layer mid and out), d x d each, and the share of variance each loses. */
static int calibrate(wmat_model *m, const wmat_pset *ps, const wmat_decompose_params *p, pca_ws *ws, double *Qs,
                     double *lost)
{
    const wmat_config *c = &m->cfg;
    const int d = c->dim, L = c->n_layers, shortcut = (int)wmat__pset_int(ps, "shortcut");
    int ctx = p->calib_ctx > 0 ? p->calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
    if (ctx > c->seq_len)
        return wmat_set_error(WMAT_ERR_INVALID, "calibration window %d is longer than the model's context (%d)", ctx, c->seq_len);
    if (p->n_calib < (size_t)ctx) ctx = (int)p->n_calib;
    const int n_windows = (int)(p->n_calib / (size_t)ctx);
    for (size_t i = 0; i < (size_t)n_windows * (size_t)ctx; i++)
        if (p->calib[i] < 0 || p->calib[i] >= c->vocab_size)
            return wmat_set_error(WMAT_ERR_INVALID, "calibration token %d at index %zu is outside the vocabulary (%d)",
                                  p->calib[i], i, c->vocab_size);
    ws->N = (int64_t)n_windows * ctx;
    const size_t dd = (size_t)d * d;
    wmat_model *wm = NULL;
    wmat_runtime *rt = NULL;
    float *X = wmat__malloc((size_t)ws->N * d * sizeof(float)), *H = wmat__malloc((size_t)ws->N * d * sizeof(float));
    float *zeros = NULL;
    double *tmp = wmat__malloc(dd * sizeof(double)), *Call = shortcut ? NULL : wmat__calloc(dd, sizeof(double));
    int rc = (!X || !H || !tmp || (!shortcut && !Call)) ? wmat_set_error(WMAT_ERR_NOMEM, "slicegpt: out of memory") : 0;
    if (!rc) rc = working_model(m, &wm);
    if (!rc) {
        const wmat_tensor *down = wmat_model_linear(wm, 0, WMAT_LIN_DOWN);
        zeros = wmat__calloc((size_t)wmat_tensor_nelem(down), sizeof(float));
        if (!zeros) rc = wmat_set_error(WMAT_ERR_NOMEM, "slicegpt: out of memory");
    }
    wmat_context wc = wmat_context_default();
    wc.n_threads = 0;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    rp.ctx = &wc;
    if (!rc) rc = wmat_runtime_create(&rt, wm, &rp);
    for (int w = 0; w < n_windows && !rc; w++)
        rc = wmat_forward_embed(rt, p->calib + (size_t)w * ctx, ctx, X + (size_t)w * ctx * d);
    /* a point: its covariance into the basis (and the stream projected), or
     * summed into Call for one basis of every point */
#define POINT(S, i)                                                                                                    \
    do {                                                                                                               \
        if (shortcut) {                                                                                                \
            if (!(rc = accumulate(ws, (S), 0)) && !(rc = basis_of(ws, Qs + (size_t)(i) * dd, &lost[i])))               \
                rc = project(ws, (S), Qs + (size_t)(i) * dd);                                                          \
        } else if (!(rc = accumulate(ws, (S), 0))) {                                                                   \
            for (size_t e = 0; e < dd; e++) Call[e] += ws->C[e];                                                       \
        }                                                                                                              \
    } while (0)
    if (!rc) POINT(X, 0);
    for (int l = 0; l < L && !rc; l++) {
        if (p->progress && p->progress(p->progress_user, "slicegpt calibration", (uint64_t)l, (uint64_t)L)) {
            rc = wmat_set_error(WMAT_ERR_CANCELLED, "slicegpt: cancelled at block %d", l);
            break;
        }
        wmat_tensor *down = wmat_model_linear(wm, l, WMAT_LIN_DOWN), *o = wmat_model_linear(wm, l, WMAT_LIN_O);
        void *down_data = down->data;
        down->data = zeros; /* out = h_mid */
        rc = run_block(rt, X, H, n_windows, ctx, d, l);
        down->data = down_data;
        if (rc) break;
        POINT(H, 1 + 2 * l);
        if (rc) break;
        if (shortcut) {
            /* the attention's output and shortcut onto the kept axes of h_mid:
             * W_o <- P W_o (as float, through the projector), S_attn <- P */
            float *S = wmat__model_shortcut(wm, l, 0)->data;
            if ((rc = projector(Qs + (size_t)(1 + 2 * l) * dd, d, ws->k, tmp, S))) break;
            const int A = (int)o->shape[1];
            double *Wo = wmat__malloc((size_t)d * A * sizeof(double) * 2);
            if (!Wo) {
                rc = wmat_set_error(WMAT_ERR_NOMEM, "slicegpt: out of memory");
                break;
            }
            float *of = o->data;
            for (size_t i = 0; i < (size_t)d * A; i++) Wo[i] = of[i];
            rc = wmat__dgemm(0, 0, d, A, d, 1.0, tmp, d, Wo, A, 0.0, Wo + (size_t)d * A, A);
            if (!rc)
                for (size_t i = 0; i < (size_t)d * A; i++) of[i] = (float)Wo[(size_t)d * A + i];
            wmat__free(Wo);
            if (rc) break;
        }
        if ((rc = run_block(rt, X, H, n_windows, ctx, d, l))) break;
        POINT(H, 2 + 2 * l);
        float *t = X;
        X = H;
        H = t;
    }
#undef POINT
    if (!rc && !shortcut) {
        /* one basis for every point */
        memcpy(ws->C, Call, dd * sizeof(double));
        if (!(rc = basis_of(ws, Qs, &lost[0])))
            for (int i = 1; i < 2 * L + 1; i++) {
                memcpy(Qs + (size_t)i * dd, Qs, dd * sizeof(double));
                lost[i] = lost[0];
            }
    }
    wmat_runtime_free(rt);
    wmat_model_free(wm);
    wmat__free(X);
    wmat__free(H);
    wmat__free(zeros);
    wmat__free(tmp);
    wmat__free(Call);
    return rc;
}

/* dst (rows x k) <- (src diag(g)) Q' (src rows x d; g NULL: no scale). */
static int rotate_in(wmat_tensor *dst, const wmat_tensor *src, const float *g, const double *Q, int d, int k, double *a,
                     double *b)
{
    const int64_t rows = src->shape[0];
    const float *s = src->data;
    for (int64_t i = 0; i < rows; i++)
        for (int j = 0; j < d; j++) a[i * d + j] = (double)s[i * d + j] * (g ? (double)g[j] : 1.0);
    int rc = wmat__dgemm(0, 0, (int)rows, k, d, 1.0, a, d, Q, d, 0.0, b, k);
    if (rc) return rc;
    float *o = dst->data;
    for (int64_t i = 0; i < rows * k; i++) o[i] = (float)b[i];
    return WMAT_OK;
}

/* dst (k x cols) <- Q'^T src (src d x cols). */
static int rotate_out(wmat_tensor *dst, const wmat_tensor *src, const double *Q, int d, int k, double *a, double *b)
{
    const int64_t cols = src->shape[1];
    const float *s = src->data;
    for (int64_t i = 0; i < d * cols; i++) a[i] = s[i];
    int rc = wmat__dgemm(1, 0, k, (int)cols, d, 1.0, Q, d, a, (int)cols, 0.0, b, (int)cols);
    if (rc) return rc;
    float *o = dst->data;
    for (int64_t i = 0; i < k * cols; i++) o[i] = (float)b[i];
    return WMAT_OK;
}

static void report_tensor(wmat_decompose_report *rep, const wmat_tensor *t, int k, double lost, double secs)
{
    if (!rep) return;
    wmat_decompose_tensor *r = &rep->tensors[rep->n_tensors++];
    snprintf(r->name, sizeof r->name, "%s", t->name);
    snprintf(r->method, sizeof r->method, "slicegpt");
    r->rows = t->shape[0];
    r->cols = t->shape[1];
    r->rank = k;
    r->rel_error = lost;
    r->bits_per_weight = 32;
    r->seconds = secs;
}

int wmat__decomp_slicegpt_model(wmat_model *m, const char *method, const wmat_pset *ps, const wmat_decompose_params *p,
                                wmat_decompose_report *rep)
{
    (void)method;
    if (rep) memset(rep, 0, sizeof *rep);
    const char *src = m->path ? m->path : "model";
    const wmat_config *c = &m->cfg;
    if (c->shortcuts || c->attn_dim || c->norm_dim)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: slicegpt: the model is sliced already", src);
    if (p->targets && p->targets != (1u << WMAT_LIN_COUNT) - 1)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: slicegpt slices every linear layer (no --targets)", src);
    if (p->dtype != WMAT_F32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: slicegpt writes f32 weights (no --dtype)", src);
    if (!p->calib || !p->n_calib) return wmat_set_error(WMAT_ERR_INVALID, "slicegpt needs calibration data (--calib FILE)");
    for (int i = 0; i < m->n_tensors; i++) {
        const wmat_tensor *t = &m->tensors[i];
        if (t->dtype != WMAT_F32 || (t->flags & WMAT_TF_HF_ROPE))
            return wmat_set_error(WMAT_ERR_INVALID, "%s: %s is not a materialized fp32 tensor (load with materialize_f32)", src,
                                  t->name);
    }
    const int d = c->dim, L = c->n_layers, A = wmat__attn_width(c), H = c->hidden_dim, V = c->vocab_size;
    int k, rc = wmat__slicegpt_width(d, wmat__pset_float(ps, "sparsity"), &k);
    if (rc) return rc;
    const double t_start = wmat__now();
    const size_t dd = (size_t)d * d;
    const int n_points = 2 * L + 1;
    pca_ws ws = {.d = d, .k = k, .basis = (int)wmat__pset_int(ps, "basis"), .damp = wmat__pset_float(ps, "damp"),
                 .rng = (uint64_t)wmat__pset_int(ps, "seed")};
    int64_t big = V > H ? V : H;
    if (A > big) big = A;
    if (d > big) big = d;
    ws.C = wmat__malloc(dd * sizeof(double));
    ws.w = wmat__malloc((size_t)d * sizeof(double));
    ws.buf = wmat__malloc((size_t)CHUNK * d * sizeof(double));
    ws.buf2 = wmat__malloc((size_t)CHUNK * d * sizeof(double));
    double *Qs = wmat__malloc((size_t)n_points * dd * sizeof(double)), *lost = wmat__calloc((size_t)n_points, sizeof(double));
    double *a = wmat__malloc((size_t)big * d * sizeof(double)), *b = wmat__malloc((size_t)big * d * sizeof(double));
    wmat_model *nm = NULL;
    if (!ws.C || !ws.w || !ws.buf || !ws.buf2 || !Qs || !lost || !a || !b) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "slicegpt: out of memory");
        goto done;
    }
    if ((rc = calibrate(m, ps, p, &ws, Qs, lost))) {
        rc = wmat_set_error(rc, "%s: slicegpt: %s", src, wmat_last_error());
        goto done;
    }
    /* the sliced model */
    wmat_config nc = *c;
    nc.dim = k;
    nc.attn_dim = A;
    nc.norm_dim = d;
    nc.shortcuts = wmat__pset_int(ps, "shortcut") ? 1 : 0;
    /* without shortcuts the model can be a plain LLaMA of width d' (what
     * HF and GGUF express): x / sqrt(ss / d + eps) = sqrt(d / d') x /
     * sqrt(ss / d' + eps d / d'), so the norms get the weight sqrt(d / d')
     * and eps grows by d / d' instead of keeping the divisor d */
    const float gnorm = nc.shortcuts ? 1.0f : (float)sqrt((double)d / k);
    if (!nc.shortcuts) {
        nc.norm_dim = 0;
        nc.norm_eps = (float)((double)c->norm_eps * d / k);
    }
    nc.tied_embeddings = 0; /* the embedding is rotated by Q_0, the classifier by Q_last */
    if ((rc = wmat_model_create(&nm, &nc))) goto done;
    if (rep) {
        rep->tensors = wmat__calloc((size_t)(L * (WMAT_LIN_COUNT + 2) + 2), sizeof *rep->tensors);
        if (!rep->tensors) {
            rc = wmat_set_error(WMAT_ERR_NOMEM, "slicegpt: out of memory");
            goto done;
        }
    }
    double t0 = wmat__now();
    if ((rc = rotate_in(wmat_model_tok_embeddings(nm), wmat_model_tok_embeddings(m), NULL, Qs, d, k, a, b))) goto done;
    report_tensor(rep, wmat_model_tok_embeddings(nm), k, lost[0], wmat__now() - t0);
    for (int l = 0; l < L && !rc; l++) {
        const double *Qin = Qs + (size_t)(l ? 2 * l : 0) * dd, *Qmid = Qs + (size_t)(1 + 2 * l) * dd,
                     *Qout = Qs + (size_t)(2 + 2 * l) * dd;
        const double lin = lost[l ? 2 * l : 0], lmid = lost[1 + 2 * l], lout = lost[2 + 2 * l];
        const float *ga = wmat_model_layer_tensor(m, l, WMAT_W_ATTN_NORM)->data;
        const float *gf = wmat_model_layer_tensor(m, l, WMAT_W_FFN_NORM)->data;
        for (int kk = 0; kk < WMAT_LIN_COUNT && !rc; kk++) {
            t0 = wmat__now();
            wmat_tensor *dst = wmat_model_linear(nm, l, (wmat_linear_kind)kk);
            const wmat_tensor *s = wmat_model_linear(m, l, (wmat_linear_kind)kk);
            double ls = 0;
            switch (kk) {
            case WMAT_LIN_Q:
            case WMAT_LIN_K:
            case WMAT_LIN_V: rc = rotate_in(dst, s, ga, Qin, d, k, a, b), ls = lin; break;
            case WMAT_LIN_O: rc = rotate_out(dst, s, Qmid, d, k, a, b), ls = lmid; break;
            case WMAT_LIN_GATE:
            case WMAT_LIN_UP: rc = rotate_in(dst, s, gf, Qmid, d, k, a, b), ls = lmid; break;
            default: rc = rotate_out(dst, s, Qout, d, k, a, b), ls = lout; break;
            }
            if (!rc) report_tensor(rep, dst, k, ls, wmat__now() - t0);
        }
        for (int n = 0; n < 2 && !rc; n++) {
            float *g = wmat_model_layer_tensor(nm, l, n ? WMAT_W_FFN_NORM : WMAT_W_ATTN_NORM)->data;
            for (int i = 0; i < k; i++) g[i] = gnorm; /* the scales are folded into the linears */
        }
        if (nc.shortcuts && !rc) {
            /* S = Q'_to^T Q'_from (k x k) */
            for (int s = 0; s < 2 && !rc; s++) {
                const double *Qf = s ? Qmid : Qin, *Qt = s ? Qout : Qmid;
                wmat_tensor *S = wmat__model_shortcut(nm, l, s);
                if ((rc = wmat__dgemm(1, 0, k, k, d, 1.0, Qt, d, Qf, d, 0.0, b, k))) break;
                float *o = S->data;
                for (size_t i = 0; i < (size_t)k * k; i++) o[i] = (float)b[i];
                report_tensor(rep, S, k, s ? lout : lmid, 0);
            }
        }
    }
    if (rc) goto done;
    {
        float *g = wmat_model_final_norm(nm)->data;
        for (int i = 0; i < k; i++) g[i] = gnorm;
        t0 = wmat__now();
        if ((rc = rotate_in(wmat_model_classifier(nm), wmat_model_classifier(m), wmat_model_final_norm(m)->data,
                            Qs + (size_t)(2 * L) * dd, d, k, a, b)))
            goto done;
        report_tensor(rep, wmat_model_classifier(nm), k, lost[2 * L], wmat__now() - t0);
    }
    if (rep) {
        rep->params_before = (uint64_t)wmat_model_n_params(m);
        rep->params_after = (uint64_t)wmat_model_n_params(nm);
        rep->seconds = wmat__now() - t_start;
    }
    {
        /* the sliced model takes m's place; m keeps its path, tokenizer and format */
        wmat_model t = *m;
        *m = *nm;
        *nm = t;
        m->path = nm->path, nm->path = NULL;
        m->tok = nm->tok, nm->tok = NULL;
        m->format = nm->format;
    }
    if (p->progress) p->progress(p->progress_user, "slicegpt", (uint64_t)L, (uint64_t)L);
done:
    wmat_model_free(nm);
    wmat__free(ws.C);
    wmat__free(ws.w);
    wmat__free(ws.buf);
    wmat__free(ws.buf2);
    wmat__free(Qs);
    wmat__free(lost);
    wmat__free(a);
    wmat__free(b);
    if (rc && rep) wmat_decompose_report_free(rep);
    return rc;
}

int wmat__decomp_slicegpt_check(const wmat_pset *ps, int global)
{
    (void)global;
    const double s = wmat__pset_float(ps, "sparsity");
    if (!(s >= 0.0 && s < 1.0)) return wmat_set_error(WMAT_ERR_INVALID, "sparsity=%g: SliceGPT removes a share in [0, 1)", s);
    return WMAT_OK;
}
