/* EVA, explained variance adaptation (Paischer et al. 2024; PEFT's
 * init_lora_weights "eva", src/peft/tuners/lora/eva.py): LoRA whose A
 * starts from the principal directions of each layer's calibration inputs,
 * with the ranks redistributed over the layers by explained variance.
 *
 * plan (before the trainer lays out its tensors):
 *   1. calibration windows (ctx tokens each, in batches of `batch`) run
 *      through the frozen model on a runtime whose observation hook (the
 *      calibration machinery of src/quant/calib.c) collects, per input of
 *      a block (q/k/v share one, gate/up one: their inputs are identical,
 *      so one decomposition serves them, as PEFT's hash check finds), the
 *      token count, the sum of x and the sum of x x^T in double;
 *   2. after each batch, the covariance C = (sum x x^T - N mu mu^T) / (N-1)
 *      (PEFT's incremental PCA centres the data) is eigendecomposed
 *      (LAPACK dsyevd, exact where PEFT's randomized incremental PCA
 *      approximates) for its top K = round(r rho) components and their
 *      explained-variance ratios lambda_i / trace C; sign: each component's
 *      largest entry positive (sklearn's svd_flip); component i has
 *      converged when its cosine with the previous batch's is >= tau;
 *   3. the ratios of every adapted matrix (a matrix enters with its input's
 *      K ratios) are pooled and the largest r x #matrices decide the ranks
 *      r_l in [0, K] (ties: layer order); an input keeps collecting while
 *      one of its first max r_l components (over the matrices reading it)
 *      has not converged, and calibration ends when none does or the
 *      windows run out (then the last components are used, and the report
 *      says so);
 *   4. A_l = the top r_l components (r_l x in), B_l = 0, alpha_l =
 *      alpha r_l / r (the scale alpha_l / r_l stays alpha / r); a matrix
 *      with r_l = 0 is not adapted.
 * Memory: n x n doubles per input while planning (mix4m: 27 MB; a 1.1B
 * model with all seven linears targeted: 7.8 GB), freed before training.
 * Then it trains as LoRA. Without a plan (the registry's kernel checks)
 * init is LoRA's. The PEFT file is LoRA's, with init_lora_weights "eva",
 * eva_config and rank_pattern / alpha_pattern (written by the generic
 * save from the layers' settings), so LoRA's reader merges it. */
#include "adapter.h"

#include "../linalg/dense.h"
#include "../linalg/linalg.h"
#include "../quant/methods.h"
#include "core/shapes.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NLIN WMAT_LIN_COUNT
#define NSLOT 4 /* attn (q, k, v), o, ffn (gate, up), down */

typedef struct {
    int l, s, n;
    double *S, *sum; /* sum x x^T (upper triangle used), sum x */
    uint64_t N;
    float *comp, *prev; /* (K, n) this batch's and the previous batch's components */
    double *ratio;      /* (K) explained-variance ratios */
    unsigned char *conv;
    int has, batches, active, converged;
} eva_group;

typedef struct {
    eva_group *g;
    int *gi; /* (L * NSLOT) group index or -1 */
    int L;
    float *G; /* (n, n) one window's X^T X (the widest input's size) */
} eva_state;

static int eva_hook(void *user, int layer, wmat_linear_kind kind, const float *X, int T, int in, const wmat_tensor *W)
{
    (void)W;
    eva_state *st = user;
    if (layer >= st->L || kind >= WMAT_LIN_COUNT) return 0;
    /* the first linear of an input sees it; k, v, up see the same X */
    if (!(kind == WMAT_LIN_Q || kind == WMAT_LIN_O || kind == WMAT_LIN_GATE || kind == WMAT_LIN_DOWN)) return 0;
    const int gi = st->gi[layer * NSLOT + wmat__calib_slot(kind)];
    if (gi < 0) return 0;
    eva_group *g = &st->g[gi];
    if (!g->active || in != g->n) return 0;
    const int n = g->n;
    wmat_sgemm(1, 0, n, n, T, 1.0f, X, n, X, n, 0.0f, st->G, n); /* G = X^T X */
    for (size_t i = 0; i < (size_t)n * n; i++) g->S[i] += st->G[i];
    for (int t = 0; t < T; t++)
        for (int j = 0; j < n; j++) g->sum[j] += X[(size_t)t * n + j];
    g->N += (uint64_t)T;
    return 0;
}

/* The group's top K components of its covariance so far, their ratios and
 * convergence against the previous ones. C: (n, n) doubles of scratch, w (n). */
static int decompose(eva_group *g, int K, float tau, double *C, double *w)
{
    const int n = g->n;
    const double N = (double)g->N;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
            C[(size_t)i * n + j] = (g->S[(size_t)i * n + j] - g->sum[i] * g->sum[j] / N) / (N > 1 ? N - 1 : 1);
    int rc = wmat__dsyevd_upper(1, n, C, n, w);
    if (rc) return rc;
    double tot = 0;
    for (int i = 0; i < n; i++) tot += w[i] > 0 ? w[i] : 0;
    if (g->has) memcpy(g->prev, g->comp, (size_t)K * n * sizeof(float));
    for (int i = 0; i < K; i++) {
        const int col = n - 1 - i; /* ascending eigenvalues */
        int big = 0;
        for (int j = 1; j < n; j++)
            if (fabs(C[(size_t)j * n + col]) > fabs(C[(size_t)big * n + col])) big = j;
        const double sg = C[(size_t)big * n + col] < 0 ? -1.0 : 1.0;
        for (int j = 0; j < n; j++) g->comp[(size_t)i * n + j] = (float)(sg * C[(size_t)j * n + col]);
        g->ratio[i] = tot > 0 && w[col] > 0 ? w[col] / tot : 0;
        if (g->has) {
            double d = 0;
            for (int j = 0; j < n; j++) d += (double)g->comp[(size_t)i * n + j] * g->prev[(size_t)i * n + j];
            g->conv[i] = d >= tau;
        } else {
            g->conv[i] = 0;
        }
    }
    g->has = 1;
    return WMAT_OK;
}

typedef struct {
    double v;
    int m, i;
} pooled;

static int pooled_cmp(const void *a, const void *b)
{
    const pooled *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    if (x->i != y->i) return x->i < y->i ? -1 : 1;
    return x->m < y->m ? -1 : x->m > y->m;
}

int wmat__eva_distribute(const double *const *ratio, const int *mat_g, int n_m, int K, int budget, int *rank)
{
    pooled *pool = wmat__malloc(((size_t)n_m * K + 1) * sizeof *pool);
    if (!pool) return wmat_set_error(WMAT_ERR_NOMEM, "eva: out of memory");
    int np = 0;
    for (int m = 0; m < n_m; m++) {
        rank[m] = 0;
        for (int i = 0; i < K; i++) pool[np++] = (pooled){ratio[mat_g[m]][i], m, i};
    }
    qsort(pool, (size_t)np, sizeof *pool, pooled_cmp);
    for (int j = 0; j < np && j < budget; j++) rank[pool[j].m]++;
    wmat__free(pool);
    return WMAT_OK;
}

static int distribute(const eva_group *g, int ng, const int *mat_g, int n_m, int K, int budget, int *rank)
{
    const double *ratio[ng > 0 ? ng : 1];
    for (int j = 0; j < ng; j++) ratio[j] = g[j].ratio;
    return wmat__eva_distribute(ratio, mat_g, n_m, K, budget, rank);
}

static const char *const slot_name[NSLOT] = {"q/k/v input", "o input", "gate/up input", "down input"};

static int eva_plan(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                    unsigned char *on, void **owned, char *report, size_t cap)
{
    *owned = NULL;
    if (report && cap) report[0] = 0;
    const wmat_config *mc = wmat_model_config(in->m);
    const int L = mc->n_layers, r = c->rank;
    const float rho = c->rho > 0 ? c->rho : 2.0f, tau = c->tau > 0 ? c->tau : 0.99f;
    if (r < 1) return wmat_set_error(WMAT_ERR_INVALID, "eva: rank must be positive");
    if (!in->tokens || in->ctx <= 0 || in->n_tokens < (size_t)in->ctx)
        return wmat_set_error(WMAT_ERR_INVALID,
                              "eva: needs calibration tokens (at least one window of %d; the trainer's adapter_calib, "
                              "wmat train's --eva-data or the training data)",
                              in->ctx);
    const int Kw = (int)lroundf((float)r * rho);
    /* groups: one per block input that a targeted linear reads */
    int *gi = wmat__malloc((size_t)L * NSLOT * sizeof *gi);
    int *mat_g = wmat__malloc((size_t)L * NLIN * sizeof *mat_g), *mat_lk = wmat__malloc((size_t)L * NLIN * sizeof *mat_lk);
    int *rank = wmat__calloc((size_t)L * NLIN + 1, sizeof *rank);
    eva_group *g = wmat__calloc((size_t)L * NSLOT + 1, sizeof *g);
    int rc = WMAT_OK, ng = 0, nm = 0, K = Kw, nmax = 0;
    double *C = NULL, *w = NULL;
    float *x = NULL, *G = NULL;
    wmat_runtime *rt = NULL;
    if (!gi || !mat_g || !mat_lk || !rank || !g) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "eva: out of memory");
        goto done;
    }
    for (int j = 0; j < L * NSLOT; j++) gi[j] = -1;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < NLIN; k++) {
            if (!on[l * NLIN + k]) continue;
            const int s = wmat__calib_slot((wmat_linear_kind)k);
            int o, i;
            wmat__linear_shape(mc, (wmat_linear_kind)k, &o, &i);
            if (gi[l * NSLOT + s] < 0) {
                gi[l * NSLOT + s] = ng;
                g[ng].l = l;
                g[ng].s = s;
                g[ng].n = i;
                if (i > nmax) nmax = i;
                ng++;
            }
            mat_g[nm] = gi[l * NSLOT + s];
            mat_lk[nm++] = l * NLIN + k;
        }
    if (!nm) goto done;
    for (int j = 0; j < ng; j++)
        if (r > g[j].n) {
            rc = wmat_set_error(WMAT_ERR_INVALID,
                                "eva: rank %d is larger than the width %d of the layer %d %s (A's rows are orthonormal "
                                "directions of it)",
                                r, g[j].n, g[j].l, slot_name[g[j].s]);
            goto done;
        }
    if (K > nmax) K = nmax;
    for (int j = 0; j < ng; j++)
        if (g[j].n < K) K = g[j].n; /* every input has K components */
    for (int j = 0; j < ng && !rc; j++) {
        const size_t n = (size_t)g[j].n;
        g[j].S = wmat__calloc(n * n, sizeof(double));
        g[j].sum = wmat__calloc(n, sizeof(double));
        g[j].prev = wmat__malloc((size_t)K * n * sizeof(float));
        g[j].ratio = wmat__calloc((size_t)K, sizeof(double));
        g[j].conv = wmat__calloc((size_t)K, 1);
        if (!g[j].S || !g[j].sum || !g[j].prev || !g[j].ratio || !g[j].conv)
            rc = wmat_set_error(WMAT_ERR_NOMEM, "eva: out of memory for the statistics of %d inputs", ng);
    }
    /* the components live in one block the trainer frees after init */
    size_t comp_n = 0;
    for (int j = 0; j < ng; j++) comp_n += (size_t)K * g[j].n;
    float *comps = rc ? NULL : wmat__calloc(comp_n + 1, sizeof(float));
    if (!rc && !comps) rc = wmat_set_error(WMAT_ERR_NOMEM, "eva: out of memory");
    *owned = comps;
    for (size_t j = 0, off = 0; j < (size_t)ng && comps; j++) {
        g[j].comp = comps + off;
        off += (size_t)K * g[j].n;
    }
    C = wmat__malloc((size_t)nmax * nmax * sizeof(double) + 1);
    w = wmat__malloc((size_t)nmax * sizeof(double) + 1);
    x = wmat__malloc((size_t)in->ctx * mc->dim * sizeof(float));
    G = wmat__malloc((size_t)nmax * nmax * sizeof(float) + 1);
    if (!rc && (!C || !w || !x || !G)) rc = wmat_set_error(WMAT_ERR_NOMEM, "eva: out of memory");
    if (rc) goto done;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = in->exec;
    rp.max_batch_tokens = in->ctx;
    if ((rc = wmat_runtime_create(&rt, in->m, &rp))) goto done;
    eva_state st = {g, gi, L, G};
    wmat_runtime_set_hook(rt, eva_hook, &st);
    const int budget = r * nm, bw = in->batch > 0 ? in->batch : 1;
    const size_t n_win = in->n_tokens / (size_t)in->ctx;
    const int max_b = in->max_batches > 0 ? in->max_batches : 32;
    int batches = 0, all_conv = 0;
    size_t wdone = 0;
    /* before any data every matrix may need all K components (PEFT's start) */
    for (int m = 0; m < nm; m++) rank[m] = K;
    for (; batches < max_b && wdone < n_win; batches++) {
        int any = 0;
        for (int j = 0; j < ng; j++) {
            int need = 0;
            for (int m = 0; m < nm; m++)
                if (mat_g[m] == j && rank[m] > need) need = rank[m];
            int done_j = g[j].has;
            for (int i = 0; i < need && done_j; i++) done_j = g[j].conv[i];
            g[j].converged = done_j;
            g[j].active = !done_j;
            any |= g[j].active;
        }
        if (!any) {
            all_conv = 1;
            break;
        }
        for (int b = 0; b < bw && wdone < n_win && !rc; b++, wdone++) {
            rc = wmat_forward_embed(rt, in->tokens + wdone * (size_t)in->ctx, in->ctx, x);
            if (!rc) rc = wmat_forward_layers(rt, x, NULL, in->ctx, 0, L);
        }
        for (int j = 0; j < ng && !rc; j++)
            if (g[j].active && g[j].N >= (uint64_t)K) {
                rc = decompose(&g[j], K, tau, C, w);
                g[j].batches++;
            }
        if (rc) break;
        int ready = 1;
        for (int j = 0; j < ng; j++) ready &= g[j].has;
        if (ready && (rc = distribute(g, ng, mat_g, nm, K, budget, rank))) break;
    }
    wmat_runtime_set_hook(rt, NULL, NULL);
    if (rc) goto done;
    for (int j = 0; j < ng; j++)
        if (!g[j].has) {
            rc = wmat_set_error(WMAT_ERR_INVALID, "eva: the calibration data gave the layer %d %s fewer than %d tokens",
                                g[j].l, slot_name[g[j].s], K);
            goto done;
        }
    if (!all_conv) {
        /* the final state after the last batch: which inputs converged */
        if ((rc = distribute(g, ng, mat_g, nm, K, budget, rank))) goto done;
        for (int j = 0; j < ng; j++) {
            int need = 0;
            for (int m = 0; m < nm; m++)
                if (mat_g[m] == j && rank[m] > need) need = rank[m];
            int ok = 1;
            for (int i = 0; i < need && ok; i++) ok = g[j].conv[i];
            g[j].converged = ok;
        }
    }
    /* the layers' settings */
    int n_off = 0;
    for (int m = 0; m < nm; m++) {
        const int j = mat_lk[m];
        if (!rank[m]) {
            on[j] = 0;
            n_off++;
            continue;
        }
        lcfg[j].rank = rank[m];
        lcfg[j].alpha = c->alpha * (float)rank[m] / (float)r;
        lcfg[j].init_rows = g[mat_g[m]].comp;
    }
    if (report && cap) {
        size_t k = 0;
#define OUT(...)                                                                                                      \
    do {                                                                                                              \
        if (k < cap) k += (size_t)snprintf(report + k, cap - k, __VA_ARGS__);                                         \
    } while (0)
        OUT("eva: %zu calibration windows of %d tokens (%d batches of %d; %s), %d components per input (rho %g), "
            "tau %g, rank budget %d over %d matrices\n",
            wdone, in->ctx, batches, bw, all_conv ? "every input converged" : "the data or the batch limit ran out", K,
            (double)rho, (double)tau, budget, nm);
        for (int j = 0; j < ng; j++)
            OUT("eva: layer %d %s (n %d): %s after %d batches (%llu tokens), top ratio %.4f\n", g[j].l,
                slot_name[g[j].s], g[j].n, g[j].converged ? "converged" : "NOT converged", g[j].batches,
                (unsigned long long)g[j].N, g[j].ratio[0]);
        for (int l = 0; l < L; l++) {
            int first = 1;
            for (int m = 0; m < nm; m++) {
                if (mat_lk[m] / NLIN != l) continue;
                if (first) OUT("eva: ranks layer %d:", l);
                OUT(" %s=%d", wmat_linear_name((wmat_linear_kind)(mat_lk[m] % NLIN)), rank[m]);
                first = 0;
            }
            if (!first) OUT("\n");
        }
        if (n_off) OUT("eva: %d matrices got rank 0 and are not adapted\n", n_off);
#undef OUT
    }
done:
    wmat_runtime_free(rt);
    for (int j = 0; j < ng && g; j++) {
        wmat__free(g[j].S);
        wmat__free(g[j].sum);
        wmat__free(g[j].prev);
        wmat__free(g[j].ratio);
        wmat__free(g[j].conv);
    }
    wmat__free(g), wmat__free(gi), wmat__free(mat_g), wmat__free(mat_lk), wmat__free(rank);
    wmat__free(C), wmat__free(w), wmat__free(x), wmat__free(G);
    if (rc) {
        wmat__free(*owned);
        *owned = NULL;
    }
    return rc;
}

static int eva_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng)
{
    if (!c->init_rows) return wmat__lora_init(c, w, fixed, base, W, in, out, rng);
    memcpy(w[0], c->init_rows, (size_t)c->rank * in * sizeof(float)); /* B stays 0 */
    return WMAT_OK;
}

static void eva_forward(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                        const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out)
{
    (void)fixed, (void)scratch, (void)base;
    wmat__lora_path_forward(wmat__lora_scale(c), c, Y, act, X, w, BT, in, out);
}

static void eva_backward(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                         const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                         const float *act, int BT, int in, int out)
{
    (void)fixed, (void)base;
    wmat__lora_path_backward(wmat__lora_scale(c), c, dX, dw, scratch, dY, X, w, act, BT, in, out);
}

static int eva_merge(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out)
{
    (void)fixed;
    wmat_sgemm(0, 0, out, in, c->rank, wmat__lora_scale(c), w[1], c->rank, w[0], in, 1.0f, W, in); /* W += s B A */
    return WMAT_OK;
}

static size_t eva_config(const wmat__adapter_cfg *c, char *buf, size_t n)
{
    char extra[320];
    snprintf(extra, sizeof extra,
             "  \"eva_config\": {\"rho\": %g, \"tau\": %g, \"use_label_mask\": true, \"label_mask_value\": -100, "
             "\"whiten\": false, \"adjust_scaling_factors\": true},\n",
             (double)(c->rho > 0 ? c->rho : 2.0f), (double)(c->tau > 0 ? c->tau : 0.99f));
    return wmat__lora_peft_config(c, buf, n, 0, "\"eva\"", extra);
}

/* EVA files are LoRA files (LoRA, first in the table, reads them); this
 * accepts only init_lora_weights "eva". */
static int eva_parse(const void *json, wmat__adapter_cfg *c)
{
    const cJSON *j = json, *iw = cJSON_GetObjectItemCaseSensitive(j, "init_lora_weights");
    if (!cJSON_IsString(iw) || strcmp(iw->valuestring, "eva")) return 0;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_rslora")) ||
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_dora")))
        return 0;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "r"), *a = cJSON_GetObjectItemCaseSensitive(j, "lora_alpha");
    c->rank = cJSON_IsNumber(r) ? r->valueint : 0;
    c->alpha = cJSON_IsNumber(a) ? (float)a->valuedouble : (float)c->rank;
    return 1;
}

const wmat__adapter wmat__adapter_eva = {
    .name = "eva",
    .summary = "EVA: LoRA with A from the top principal directions of calibration inputs, ranks redistributed by "
               "explained variance",
    .n_tensors = 2,
    .tensor_key = {"lora_A", "lora_B"},
    .rows_are_out = {0, 1},
    .shapes = wmat__lora_shapes,
    .plan = eva_plan,
    .act_floats = wmat__lora_act_floats,
    .scratch_floats = wmat__lora_scratch_floats,
    .scale = wmat__lora_scale,
    .init = eva_init,
    .forward = eva_forward,
    .backward = eva_backward,
    .merge = eva_merge,
    .peft_type = "LORA",
    .peft_config = eva_config,
    .peft_parse = eva_parse,
};
