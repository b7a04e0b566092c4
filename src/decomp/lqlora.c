/* LQ-LoRA (Guo et al. 2024): W ~ Q + L1 L2, a quantized matrix plus a
 * rank-r correction, found by alternating the two exact sub-problems —
 * Q = quant(W - L) and L = SVD_r(W - Q) — and keeping the best pair; the
 * result is a "sum" weight (qpacked + lowrank) that runs as stored. The
 * quantizer is wmat's RTN on groups along the inputs, or with quant=gptq
 * wmat's GPTQ (the same grid, error feedback through the Hessian of the
 * matrix's input: the driver calibrates in layer and stage order on the
 * model changed so far, as for SparseGPT). With `bpw`, a plan picks each
 * matrix's (bits, rank) from a candidate grid by their measured errors
 * under one budget of average bits per weight (a Lagrangian knapsack: the
 * multiplier found by bisection), as the paper's integer program does over
 * its grid; the factors are priced in their stored dtype, the errors are
 * RTN's in the weights (the plan runs before any statistics exist). */
#include "decomp.h"
#include "quant/methods.h"
#include "wop/qstore.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const wmat_param_spec wmat__lqlora_keys[] = {
    {"bits", WMAT_PARAM_INT, "3", 2, 8, NULL, "bits of the quantized part (RTN, groups along the inputs)", NULL},
    {"quant", WMAT_PARAM_STRING, "rtn", 0, 0, NULL,
     "lqlora: quantizer of the quantized part: rtn, or gptq (needs --calib: error feedback through each input's Hessian)",
     NULL},
    {"group", WMAT_PARAM_INT, "64", 0, 1 << 20, NULL, "group length of the quantized part (0: per output channel)", NULL},
    {"rank", WMAT_PARAM_INT, "16", 0, 1 << 30, NULL, "rank of the low-rank part (0: quantized only)", NULL},
    {"iters", WMAT_PARAM_INT, "10", 1, 1000, NULL, "lqlora: alternations of quantization and SVD (the best pair is kept)",
     NULL},
    {"bpw", WMAT_PARAM_FLOAT, "0", 0, 32, NULL,
     "lqlora: a budget of average bits per weight (quantized part + factors) over the matrices it takes; each matrix's "
     "bits and rank are then chosen from bits 2..4 x rank 0, 4, 8, 16, 32, 64 (0: bits and rank as given)",
     NULL},
    {NULL, 0, NULL, 0, 0, NULL, NULL, NULL},
};

/* A rank-r correction of a matrix whose quantized part has `bits`: the
 * alternation. On success *q and *L hold the best pair (L's tensor empty
 * for rank 0) and *err its ||W - Q - L||_F / ||W||_F. */
static int alternate(const float *W, int64_t rows, int64_t cols, int bits, int group, int64_t rank, int iters,
                     wmat_dtype dtype, const wmat_qstats *st, wmat_qresult *q_out, wmat_tensor *L_out, double *err)
{
    const size_t n = (size_t)(rows * cols);
    float *R = wmat__malloc(n * sizeof(float)), *Qd = wmat__malloc(n * sizeof(float)), *Ld = wmat__calloc(n, sizeof(float));
    int rc = R && Qd && Ld ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "lqlora: out of memory");
    double norm = 0;
    for (size_t i = 0; i < n; i++) norm += (double)W[i] * W[i];
    wmat_qparams qp = wmat__qparams_default();
    qp.bits = bits;
    qp.sym = 0;
    qp.axis = WMAT_QAXIS_IN;
    qp.group = group && group < cols ? group : 0;
    qp.n_threads = 1;
    *err = INFINITY;
    memset(q_out, 0, sizeof *q_out);
    memset(L_out, 0, sizeof *L_out);
    for (int it = 0; it < iters && !rc; it++) {
        for (size_t i = 0; i < n; i++) R[i] = W[i] - Ld[i];
        wmat_qresult q;
        wmat_qmethod_info info;
        memset(&q, 0, sizeof q);
        if ((rc = st ? wmat__quant_gptq(&q, R, rows, cols, st, &qp, &info) : wmat__quant_rtn(&q, R, rows, cols, NULL, &qp, &info)))
            break;
        wmat_qresult_dequant(&q, Qd);
        wmat_tensor L;
        memset(&L, 0, sizeof L);
        if (rank > 0) {
            for (size_t i = 0; i < n; i++) R[i] = W[i] - Qd[i];
            int64_t r_kept;
            double e_svd;
            if ((rc = wmat__decomp_svd_rank(R, rows, cols, rank, dtype, &L, &r_kept, &e_svd))) {
                wmat_qresult_free(&q);
                break;
            }
            wmat__wkind_of(&L)->dequant_rows(&L, 0, rows, Ld);
        }
        double e = 0;
        for (size_t i = 0; i < n; i++) {
            const double d = (double)W[i] - Qd[i] - (rank > 0 ? Ld[i] : 0.0f);
            e += d * d;
        }
        e = norm > 0 ? sqrt(e / norm) : 0;
        if (e < *err) {
            wmat_qresult_free(q_out);
            wmat__tensor_free_data(L_out);
            *q_out = q;
            *L_out = L;
            *err = e;
        } else { /* no better than the last pair: the alternation has settled */
            wmat_qresult_free(&q);
            wmat__tensor_free_data(&L);
            break;
        }
        if (rank == 0) break; /* nothing to alternate with */
    }
    if (rc) {
        wmat_qresult_free(q_out);
        wmat__tensor_free_data(L_out);
    }
    wmat__free(R);
    wmat__free(Qd);
    wmat__free(Ld);
    return rc;
}

int wmat__decomp_lqlora_check(const wmat_pset *ps, int global)
{
    (void)global;
    const int64_t g = wmat__pset_int(ps, "group");
    if (g && g % 2) return wmat_set_error(WMAT_ERR_INVALID, "lqlora: group must be even (or 0)");
    const char *q = wmat__pset_str(ps, "quant");
    if (q && strcmp(q, "rtn") && strcmp(q, "gptq"))
        return wmat_set_error(WMAT_ERR_INVALID, "lqlora: quant=%s: the quantizer is rtn or gptq", q);
    return WMAT_OK;
}

int wmat__decomp_lqlora_wants_stats(const wmat_pset *ps)
{
    const char *q = wmat__pset_str(ps, "quant");
    return q && !strcmp(q, "gptq");
}

int wmat__decomp_lqlora(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype, wmat_tensor *out,
                        int64_t *rank_out, double *rel_error)
{
    return wmat__decomp_lqlora_st(W, rows, cols, NULL, ps, dtype, out, rank_out, rel_error);
}

int wmat__decomp_lqlora_st(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, const wmat_pset *ps,
                           wmat_dtype dtype, wmat_tensor *out, int64_t *rank_out, double *rel_error)
{
    if (wmat__decomp_lqlora_wants_stats(ps) && (!st || !st->H))
        return wmat_set_error(WMAT_ERR_INVALID, "lqlora: quant=gptq needs calibration data (--calib FILE)");
    const int bits = (int)wmat__pset_int(ps, "bits"), group = (int)wmat__pset_int(ps, "group");
    const int64_t k = rows < cols ? rows : cols;
    int64_t rank = wmat__pset_int(ps, "rank");
    if (rank > k) rank = k;
    if (group && cols % group)
        return wmat_set_error(WMAT_ERR_INVALID, "lqlora: group %d does not divide %lld columns", group, (long long)cols);
    wmat_qresult q;
    wmat_tensor L;
    double err;
    int rc = alternate(W, rows, cols, bits, group, rank, (int)wmat__pset_int(ps, "iters"), dtype,
                       wmat__decomp_lqlora_wants_stats(ps) ? st : NULL, &q, &L, &err);
    if (rc) return rc;
    wmat_qtensor *qt = NULL;
    if (!(rc = wmat_qresult_check_packable(&q, "lqlora"))) rc = wmat_qtensor_pack(&q, &qt);
    wmat_qresult_free(&q);
    if (rc) {
        wmat__tensor_free_data(&L);
        return rc;
    }
    wmat_tensor Q;
    wmat__tensor_own_obj(&Q, rows, cols, qt);
    if (rank == 0) {
        *out = Q;
    } else {
        void *obj = NULL;
        if ((rc = wmat__sum_create(&Q, &L, &obj))) {
            wmat__tensor_free_data(&Q);
            wmat__tensor_free_data(&L);
            return rc;
        }
        wmat__tensor_own_obj(out, rows, cols, obj);
    }
    *rank_out = rank;
    *rel_error = err;
    return WMAT_OK;
}

/* ---- the budget plan */

static const int k_bits[] = {2, 3, 4};
static const int64_t k_ranks[] = {0, 4, 8, 16, 32, 64};
#define NB ((int)(sizeof k_bits / sizeof k_bits[0]))
#define NR ((int)(sizeof k_ranks / sizeof k_ranks[0]))

/* bits stored by a candidate: codes, fp16 scales and u8 zeros per group, factors */
static double cand_bits(int64_t rows, int64_t cols, int bits, int group, int64_t rank, wmat_dtype dtype)
{
    const double groups = group ? (double)rows * (double)(cols / group) : (double)rows;
    return (double)rows * (double)cols * bits + groups * 24 + (double)rank * (double)(rows + cols) * 8 * wmat_dtype_bytes(dtype, 1);
}

/* The candidate of one matrix minimising cost + lam * size (finite costs only). */
static int cheapest(const double *cost, const double *size, int nc, double lam)
{
    int best = -1;
    for (int c = 0; c < nc; c++)
        if (isfinite(cost[c]) && (best < 0 || cost[c] + lam * size[c] < cost[best] + lam * size[best])) best = c;
    return best;
}

/* Bits stored when every matrix takes its cheapest candidate at lam. */
static double bits_at(const double *cost, const double *size, int n, int nc, double lam)
{
    double bits = 0;
    for (int i = 0; i < n; i++) bits += size[i * nc + cheapest(cost + i * nc, size + i * nc, nc, lam)];
    return bits;
}

int wmat__decomp_lqlora_plan(wmat_tensor *const *t, wmat_pset *const *ps, int n, int *keep, wmat_dtype dtype)
{
    (void)keep;
    const double bpw = wmat__pset_float(ps[0], "bpw");
    if (bpw <= 0) return WMAT_OK;
    const int group = (int)wmat__pset_int(ps[0], "group");
    const int iters = (int)wmat__pset_int(ps[0], "iters") < 3 ? (int)wmat__pset_int(ps[0], "iters") : 3;
    const int nc = NB * NR;
    double *cost = wmat__calloc((size_t)(n * nc), sizeof(double)), *size = wmat__calloc((size_t)(n * nc), sizeof(double));
    int rc = cost && size ? WMAT_OK : wmat_set_error(WMAT_ERR_NOMEM, "lqlora: out of memory");
    double total_w = 0;
    for (int i = 0; i < n && !rc; i++) {
        const int64_t rows = t[i]->shape[0], cols = t[i]->shape[1], k = rows < cols ? rows : cols;
        double norm = 0;
        const float *W = t[i]->data;
        for (int64_t j = 0; j < rows * cols; j++) norm += (double)W[j] * W[j];
        total_w += (double)(rows * cols);
        for (int b = 0; b < NB && !rc; b++)
            for (int r = 0; r < NR && !rc; r++) {
                const int c = b * NR + r;
                size[i * nc + c] = cand_bits(rows, cols, k_bits[b], group, k_ranks[r], dtype);
                if (2 * k_ranks[r] > k) { /* a correction this large stores more than it saves */
                    cost[i * nc + c] = INFINITY;
                    continue;
                }
                wmat_qresult q;
                wmat_tensor L;
                double e;
                rc = alternate(W, rows, cols, k_bits[b], group && cols % group == 0 ? group : 0, k_ranks[r], iters, dtype,
                               NULL, &q, &L, &e);
                if (rc) break;
                wmat_qresult_free(&q);
                wmat__tensor_free_data(&L);
                cost[i * nc + c] = e * e * norm; /* squared Frobenius error: additive over matrices */
            }
    }
    /* minimise sum cost + lambda * sum size; the smallest lambda within budget */
    double lo = 0, hi = 1e-3;
    for (int it = 0; !rc && it < 100 && bits_at(cost, size, n, nc, hi) > bpw * total_w; it++) lo = hi, hi *= 4;
    for (int it = 0; !rc && it < 100; it++) {
        const double lam = 0.5 * (lo + hi);
        if (bits_at(cost, size, n, nc, lam) <= bpw * total_w) hi = lam;
        else lo = lam;
    }
    const double used = rc ? 0 : bits_at(cost, size, n, nc, hi);
    if (!rc && used > bpw * total_w * (1 + 1e-9))
        rc = wmat_set_error(WMAT_ERR_INVALID, "lqlora: bpw=%g is below the smallest candidate (%.3f bits per weight)", bpw,
                            used / total_w);
    for (int i = 0; !rc && i < n; i++) { /* the picks at hi (within the budget) */
        const int best = cheapest(cost + i * nc, size + i * nc, nc, hi);
        char kv[64];
        snprintf(kv, sizeof kv, "bits=%d,rank=%lld", k_bits[best / NR], (long long)k_ranks[best % NR]);
        rc = wmat__pset_parse_kv(ps[i], kv, ',', 0);
    }
    wmat__free(cost);
    wmat__free(size);
    return rc;
}
