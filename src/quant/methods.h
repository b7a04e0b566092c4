/* Quantization methods (RTN, imatrix-weighted RTN, GPTQ, AdaDim) and the
 * calibration that feeds them. Internal interface of src/quant; the public
 * driver is the "quantization methods" section of wmat.h.
 *
 * A method turns one fp32 weight W (rows = out, cols = in) plus optional
 * calibration statistics of its input into a wmat_qresult (quant.h, the
 * contract with quantized storage). Methods are listed in one table
 * (wmat__qmethods) so the CLI and the tests iterate over all of them;
 * adding a method is a new row there and a function here.
 */
#ifndef WMAT_QUANT_METHODS_H
#define WMAT_QUANT_METHODS_H

#include "core/method.h"
#include "wop/quant.h"

/* Per-tensor quantization parameters. */
typedef struct {
    int bits;          /* 2..8 */
    int sym;           /* 1 symmetric (zero = 2^(bits-1)), 0 asymmetric min-max */
    wmat_qaxis axis;   /* IN: groups along inputs (per-OC when group = cols); OUT: per-IC */
    int group;         /* group length along axis; 0 = the whole axis */
    int clip;          /* 1: search shrink factors of the range, keep the lowest error */
    int act_order;     /* GPTQ: columns by decreasing H_jj */
    int static_groups; /* GPTQ: group scales from the original W (before error feedback) */
    float damp;        /* GPTQ: relative damping lambda (0.01); raised if Cholesky fails */
    int block;         /* GPTQ: lazy-update block size (128) */
    int n_threads;     /* OpenMP threads of the method's loops (>= 1) */
    double salient;      /* PB-LLM: fraction of the weights kept at 8 bits (0.1) */
    int salient_hessian; /* PB-LLM: salient by W^2 / U_jj^2 (1, default) or by |W| (0) */
    int mu_alpha_row;    /* PB-LLM: binary mu, alpha over the whole row, salient as 0 (the reference code) */
    /* BCQ (bcq.c) */
    int rounds;        /* alternating refits of alphas and signs per group (20) */
    int feedback;      /* 1: inside GPTQ's error-feedback loop (default) */
    int apot;          /* 1: alphas rounded to sums of three powers of two */
    int refit;         /* 1: alphas refitted on the full H once the signs are fixed (default) */
    /* GPTQ's factorization of H: 0 the default (gptq.c), 1 double, 2 float;
     * legacy 1: the first sessions' path (potrf, potri, potrf in double on
     * one thread, no sub-blocks, no shared factorization), for benches */
    int fact_prec;
    int legacy;
    /* DGQ (dgq.c) */
    int dgq_smooth;  /* 1: percentile-clipping smoothing (default) */
    int dgq_search;  /* 1: the two ratio searches (default); 0: r = 1 */
    int dgq_dynamic; /* 1: per-token activation scales; 0: static per tensor (default) */
    /* BitStack (bitstack.c) */
    int stack_rank;    /* k of each block's |R| factors (1) */
    int stack_blocks;  /* blocks per matrix (16) */
    int order_windows; /* calibration windows the measured order is scored on (8; 0: level order, unmeasured) */
    /* GWQ (gwq.c) */
    double outliers;   /* fraction kept in fp16 (0.01) */
    int score;         /* WMAT_GWQ_* */
    int dense_gptq;    /* 1: the dense part by GPTQ (default), 0: RTN */
    uint64_t seed;     /* score random */
    /* FineQuant (finequant.c) */
    double tau;        /* coarsest group with error <= tau x the finest's (1.5) */
    int min_group;     /* finest group tried (64) */
    /* CBQ (cbq.c: the initial grid and CFP; src/train/reconstruct.c: the
     * cross-block reconstruction the descriptor's WMAT_QM_RECONSTRUCT asks for) */
    struct {
        int cfp;             /* 1: coarse-to-fine truncation of weight outliers (default) */
        double cfp_lambda;   /* coarse threshold Q3 + lambda IQR of |W| (1.5) */
        int window;          /* blocks per window (2); consecutive windows share one block */
        int iters;           /* optimizer steps per window (100) */
        int rank;            /* rank of the LoRA-rounding matrices A1 A2 (4) */
        int batch;           /* calibration windows per step (1) */
        int windows;         /* calibration windows the reconstruction uses (0: all) */
        double lr;           /* Adam step of A1, A2 (1e-2) */
        double scale_lr;     /* Adam step of the log-scales (1e-3; 0: scales fixed) */
        double kl;           /* weight of the KL term over the hidden dimension (1) */
        double reg;          /* weight of the rounding regularizer (0.01) */
        double homologous;   /* weight of the fp-input (homologous) MSE term (0: off) */
        int ste;             /* 1: steps on the hard rounding, gradients straight through the soft one */
        uint64_t seed;
    } cbq;
} wmat_qparams;

/* GWQ's scores (larger = kept in fp16) */
/* FISHER: st->grad already holds a per-window mean of squared gradients */
enum { WMAT_GWQ_GRAD = 0, WMAT_GWQ_GRAD_W, WMAT_GWQ_GRAD2, WMAT_GWQ_HESSIAN, WMAT_GWQ_MAGNITUDE, WMAT_GWQ_RANDOM, WMAT_GWQ_FISHER };

wmat_qparams wmat__qparams_default(void);

/* GPTQ's factorization of one input's damped Hessian, kept with the
 * statistics so the matrices reading that input (q/k/v, gate/up, AdaDim's
 * two candidates) factor it once. Filled by the first GPTQ call that needs
 * it (gptq.c); emptied when the statistics change. */
typedef struct {
    int valid;
    float damp;      /* the damping asked for */
    int act_order;
    int prec;        /* 1 double, 2 float */
    double lambda;   /* the damping used (after retries) */
    int32_t *perm;   /* (n) column order (identity without act-order) */
    float *U;        /* (n, n) upper, unit diagonal: V diag(V)^-1 for V V^T = H_perm + lambda mean(diag) I
                      * (wmat__gptq_factor_unit) */
} wmat_gptq_fact;

/* Statistics of one linear input (n features) over N calibration tokens. */
typedef struct {
    int64_t n;
    uint64_t n_tokens;
    double *H;      /* (n, n) 2/N sum x x^T (GPTQ's Hessian), or NULL */
    double *x2;     /* (n) mean x_j^2 (imatrix) */
    float *absmax;  /* (n) max |x_j| */
    float *wmaxmin; /* (n) min over wmat__qstats_add calls (windows) of that call's max |x_j| (DGQ's a_j) */
    wmat_gptq_fact *fact; /* with H (wmat__qstats_init): GPTQ's shared factorization; NULL: none kept */
    /* with H: tokens not yet in H (xb, up to xb_cap rows of n) and the
     * float product of a batch (G, n x n): H gets one double update per
     * batch of windows, not per window */
    float *xb, *G;
    int xb_rows, xb_cap;
    double seconds; /* spent in wmat__qstats_add and _finish */
    /* dL/dW of the tensor being quantized (rows x cols), set per tensor by
     * the driver from wmat_quantize_params.gradients (NULL: none) */
    const float *grad;
} wmat_qstats;

int wmat__qstats_init(wmat_qstats *s, int64_t n, int with_hessian);
void wmat__qstats_free(wmat_qstats *s);
void wmat__qstats_reset(wmat_qstats *s);
/* Accumulate X (T, n) row-major. */
void wmat__qstats_add(wmat_qstats *s, const float *X, int T);
/* Finish: H = 2/N sum x x^T, x2 = sum x^2 / N. The one point where the
 * statistics are complete (every batch in H, both triangles) before they
 * are scaled: a reduction across processes belongs here. */
void wmat__qstats_finish(wmat_qstats *s);

/* What a method reports about one tensor. */
typedef struct {
    char scheme[96];   /* "gptq 4b asym per-OC act-order", "adadim-rtn: per-IC" ... */
    double damp;       /* GPTQ: the lambda that was used */
    int chose_ic;      /* AdaDim: 1 when per-IC won */
    double err_in, err_out; /* AdaDim: output errors of the per-OC/group and per-IC candidates */
    double factor_seconds;  /* GPTQ: time spent factoring H (0 when a shared factorization was reused) */
} wmat_qmethod_info;

/* A method: quantize W (rows, cols) given statistics st (NULL when the
 * method needs none or none is available). out is allocated by the method
 * (wmat_qresult_alloc) and owned by the caller afterwards. */
typedef int (*wmat_qmethod_fn)(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                               const wmat_qparams *p, wmat_qmethod_info *info);

/* Statistics of a layer's input a method needs (core/method.h's bits). */
enum {
    WMAT_QSTAT_HESSIAN = WMAT_MSTAT_HESSIAN,     /* st->H, 2/N sum x x^T */
    WMAT_QSTAT_ACT_NORMS = WMAT_MSTAT_ACT_NORMS, /* st->x2, mean x_j^2 (llama.cpp's imatrix) */
    WMAT_QSTAT_GRADIENTS = WMAT_MSTAT_GRADIENTS, /* dL/dW (st->grad): from wmat_quantize_params.gradients */
};

/* Behaviour the driver must know about. */
enum {
    /* The method picks the grouping axis itself (AdaDim): a group size has
     * to divide only one of the two widths, and per_ic is not read. */
    WMAT_QM_OWN_AXIS = 1u << 0,
    /* After the per-tensor pass, the method's results are refined by a
     * reconstruction over consecutive blocks (CBQ): the caller above train
     * (the CLI, a test) runs wmat__reconstruct (src/train/reconstruct.h) on
     * them, with calibration data. */
    WMAT_QM_RECONSTRUCT = 1u << 1,
};

/* One row of the registry: the only place a method's name is written. The
 * descriptor (core/method.h: name, family WMAT_FAMILY_QUANTIZATION, stats,
 * flags WMAT_QM_*, schema, produces, summary) and the function. */
/* A model-level step after every tensor is done (optional): results holds
 * each tensor's result (wmat_model_tensor order), the model the fake-quant
 * weights; calib (n_windows windows of ctx tokens) is NULL without
 * calibration data, rt the runtime over the model that calibrated it. */
typedef int (*wmat_qmethod_finish_fn)(wmat_model *m, wmat_qresult *results, const int32_t *calib, int n_windows, int ctx,
                                      wmat_runtime *rt, const wmat_qparams *p);

typedef struct {
    WMAT_METHOD_ROW;
    wmat_qmethod_fn fn;
    wmat_qmethod_finish_fn finish;
} wmat_qmethod;

/* The registry, terminated by a row with name == NULL. Its first row is the
 * default method; the first data-free row quantizes what has no input
 * statistics (the token embedding). */
extern const wmat_qmethod wmat__qmethods[];
const wmat_qmethod *wmat__qmethod_find(const char *name);
/* The first data-free method. */
const wmat_qmethod *wmat__qmethod_data_free(void);
/* 1 when m needs calibration statistics (Hessian or activation norms). */
int wmat__qmethod_needs_calib(const wmat_qmethod *m);
/* The keys of every method, each once, into dst (cap rows; a NULL-name row
 * ends it, so cap must leave room for it). */
int wmat__qmethod_keys(wmat_param_spec *dst, int cap);
/* Method m's parameters from a pset of its schema (keys it lacks keep
 * wmat__qparams_default's values); n_threads is left at 1. */
void wmat__qparams_from(const wmat_pset *ps, wmat_qparams *qp);
/* The quantization settings of p without a model: the method, its keys
 * (the fields of p and p->method_params) and every --override item.
 * WMAT_ERR_INVALID naming the key, the value and what is allowed. */
int wmat__quantize_check(const wmat_quantize_params *p);

/* Bit allocation's solver (alloc.c): one candidate per item (choice[i] in
 * 0..nc-1) minimizing sum dloss[i nc + c] with sum bits <= budget, exact
 * over WMAT_ALLOC_UNITS units of the budget, each item's bits rounded up
 * to whole units (wmat__alloc_units), so the choice never exceeds the
 * budget. An error names the least budget when none fits. */
#define WMAT_ALLOC_UNITS 4096
int wmat__alloc_knapsack(const double *bits, const double *dloss, int nt, int nc, double budget, int *choice);
double wmat__alloc_units(double bits, double budget);

/* The methods (rtn.c, gptq.c, adadim.c, pbllm.c). */
int wmat__quant_rtn(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__quant_imatrix(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                        const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__quant_gptq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                     const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__quant_adadim_rtn(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                           const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__quant_adadim_gptq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                            const wmat_qparams *p, wmat_qmethod_info *info);
/* PB-LLM (pbllm.c): the result is an object of the pbllm kind (out->obj). */
int wmat__quant_pbllm(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                      const wmat_qparams *p, wmat_qmethod_info *info);

/* ---- GPTQ's machinery (gptq.c), shared with methods that run their own
 * quantizer inside its error feedback (PB-LLM) */

/* Dead inputs (H_jj = 0): H_jj = 1 and W[:, j] = 0 (H (n, n), W (m, n)). */
void wmat__gptq_dead_inputs(double *H, float *W, int64_t m, int64_t n);
/* U (n, n), upper, with (H + lambda mean(diag H) I)^-1 = U^T U; *lambda is
 * raised x10 (up to 5 tries) while the factorization fails. */
int wmat__gptq_inverse_cholesky(const double *H, int64_t n, double *lambda, float *U);
/* The quantized value of column i of row r, given the row w as the error
 * feedback has left it (w[i] is the value to quantize). Called for the rows
 * of a block on up to nt threads at once, each row's columns in order. */
typedef float (*wmat_gptq_colq)(void *user, int64_t r, int64_t i, const float *w);
/* The factorization GPTQ uses (see wmat_gptq_fact): dead inputs of H (its
 * zero diagonal) counted as 1, columns in perm's order (by decreasing H_jj
 * with act_order, else the identity), damping lambda (raised x10, up to 5
 * tries), U from one Cholesky of the reversed H and one triangular inverse,
 * in double (prec 1) or float (prec 2), LAPACK on nt threads. In double,
 * a bit-symmetric H is factored in its own storage (no n x n copy) and
 * restored bit for bit before the return, so H is unchanged for the caller
 * but must not be read by another thread meanwhile; U is the same bytes
 * either way. */
int wmat__gptq_factor(double *H, int64_t n, int act_order, int prec, int nt, double *lambda, int32_t *perm,
                      float *U);
/* The same without the triangular inverse (one Cholesky, n^3/3 flops): U
 * is the unit upper factor Vs = V diag(V)^-1 of V = (the factor above)^-1,
 * V V^T = H_perm + lambda mean(diag) I, what GPTQ's left-looking loop reads
 * (gptq.c). */
int wmat__gptq_factor_unit(double *H, int64_t n, int act_order, int prec, int nt, double *lambda, int32_t *perm,
                           float *U);
void wmat__gptq_fact_clear(wmat_gptq_fact *f);
/* GPTQ's column loop over W (m, n): for each block of B columns, column i
 * of each row becomes q(...), its error (w_i - q) / U_ii goes onto the
 * block's later columns, and the block's errors (E, m x B scratch) onto the
 * columns after it in one GEMM. W is left error-fed (not overwritten by q). */
void wmat__gptq_feedback(float *W, int64_t m, int64_t n, const float *U, int B, float *E, int nt, wmat_gptq_colq q,
                         void *user);
/* The same loop with each block cut into sub-blocks of `sub` columns
 * (sub divides B): a column's error goes at once onto its sub-block's later
 * columns only, and a sub-block's errors onto the rest of the block in one
 * GEMM. Column i is up to date when q sees it, and so are all columns of
 * the sub-block it starts, but columns of later sub-blocks are not:
 * quantizers that read ahead (a group fitted at i) need sub | g. */
void wmat__gptq_feedback_sub(float *W, int64_t m, int64_t n, const float *U, int B, int sub, float *E, int nt,
                             wmat_gptq_colq q, void *user);

/* ---- ggml block types (ggml_quant.c) */

/* 1 when ftype names a llama.cpp file type wmat writes ("q4_k_m", ...). */
int wmat__ggml_ftype_known(const char *ftype);
/* Roles beyond wmat_linear_kind's seven. */
enum { WMAT_GGML_TOKEN_EMBD = 100, WMAT_GGML_OUTPUT = 101 };
/* The type llama.cpp's quantizer gives a matrix of role (a wmat_linear_kind
 * or WMAT_GGML_*) in block `layer` with `cols` inputs, in file type ftype
 * (its fallback when the rows do not split into 256-blocks). */
wmat_dtype wmat__ggml_mix_type(const char *ftype, int role, int layer, const wmat_config *c, int64_t cols);
/* W into ggml type dt (out->ggml, out->gbytes): how 0 llama.cpp's
 * reference search, 1 its imatrix-weighted search (st->x2), 2 GPTQ error
 * feedback into the blocks (st->H; K-quants, Q8_0, Q5_0, Q4_0; other types
 * take 1 or 0). */
int wmat__quant_ggml(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                     wmat_dtype dt, int how, const wmat_qparams *p, wmat_qmethod_info *info);

/* GWQ (gwq.c): the top fraction of weights by a score (|dL/dW| by default)
 * kept in fp16, the rest RTN or GPTQ; out->obj is a sum of qpacked +
 * sparse. The mask alone (tests): mask (rows x cols, 1 = kept) of the
 * `keep` highest scores, ties to the lower index. */
int wmat__quant_gwq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__gwq_scores(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, int score, uint64_t seed,
                     float *s);
void wmat__gwq_mask(const float *s, int64_t n, int64_t keep, uint8_t *mask);
/* FineQuant-style adaptive groups (finequant.c): per matrix, the coarsest
 * group n / 2^k (>= min_group, dividing n) whose relative RTN error is at
 * most tau x that of the finest such group; symmetric grid. */
int wmat__quant_finequant(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                          const wmat_qparams *p, wmat_qmethod_info *info);

/* Binary-coding quantization (bcq.c; ShiftAddLLM): out->obj is a bcq weight. */
int wmat__quant_bcq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info);

/* DGQ (dgq.c; SPECS.md G6): out->obj is a dgq weight (A8W4). Its pieces,
 * for the tests: the smoothing factors s (n) from a_j (the count of s_j !=
 * 1); the ratios of the two searches (search 0: 1); the fine phase (scale,
 * zero per group, row-major (rows, cols/group); ratio: the chosen index or
 * NULL); the coarse phase (s8 per row, codes (rows, cols), k per group;
 * ratio per row, -1 with one group per row). H (cols, cols) as in
 * wmat_qstats (any positive multiple of X^T X). */
int wmat__quant_dgq(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                    const wmat_qparams *p, wmat_qmethod_info *info);
int64_t wmat__dgq_smooth_factors(const float *a, int64_t n, float *s);
double wmat__dgq_fine_ratio(int i, int search);
double wmat__dgq_coarse_ratio(int i, int search);
void wmat__dgq_fine(const float *W, int64_t rows, int64_t cols, int64_t group, const double *H, int search,
                    float *scale, uint8_t *zero, int *ratio);
int wmat__dgq_coarse(const float *W, int64_t rows, int64_t cols, int64_t group, const double *H, const float *scale,
                     const uint8_t *zero, int search, float *s8, uint8_t *codes, int8_t *k, int *ratio);
/* BitStack (bitstack.c): out->obj is a bitstack weight holding every block;
 * the finish step measures the model's order of the blocks. */
int wmat__quant_bitstack(wmat_qresult *out, const float *W, int64_t rows, int64_t cols, const wmat_qstats *st,
                         const wmat_qparams *p, wmat_qmethod_info *info);
int wmat__bitstack_finish(wmat_model *m, wmat_qresult *results, const int32_t *calib, int n_windows, int ctx,
                          wmat_runtime *rt, const wmat_qparams *p);

/* ---- shared pieces of the grids (rtn.c) */

/* Fit scale/zero of one group of n values x[i * stride] on the grid of
 * `bits`: min-max (the reference GPTQ quantizer: the range always includes
 * 0; an all-zero group gets [-1, 1]); with clip, shrink factors 1.00, 0.99,
 * .., 0.20 of the range, keeping the lowest sum wt_i (x_i - q_i)^2 (wt NULL:
 * unweighted; wt is indexed like x, wt[i * wstride]); with refit, each
 * candidate's scale is also refitted by weighted least squares for its
 * codes (llama.cpp's imatrix search). */
void wmat__qfit(const float *x, int64_t n, int64_t stride, const float *wt, int64_t wstride, int bits, int sym,
                int clip, int refit, float *scale, float *zero);
/* code = clamp(rint(x / scale) + zero, 0, 2^bits - 1) (round half to even). */
static inline uint8_t wmat__qcode(float x, float scale, float zero, int maxq)
{
    float q = __builtin_rintf(x / scale) + zero;
    if (q < 0.0f) q = 0.0f;
    if (q > (float)maxq) q = (float)maxq;
    return (uint8_t)q;
}
/* Resolve p->group (0 = whole axis) and check it divides the axis. */
int wmat__qgroup(const wmat_qparams *p, int64_t rows, int64_t cols, int *group);

/* tr(dW H dW^T) for dW = W - deq(q) (rows, cols), H (cols, cols) double:
 * the calibration output error sum ||W x - Q x||^2 * 2 / N. */
double wmat__qoutput_error(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H);
/* The report's pair (run_job): *e = tr(dW H dW^T) and *e0 = tr(W H W^T),
 * from G = Z^T Z's upper triangle (half the multiply-adds of Z H, no float
 * copy of H), nt threads for the loops. Exact (up to float
 * rounding) for rows <= 1024; above, both on the same every s-th row,
 * s = ceil(rows / 1024) (an estimate of the ratio e / e0 from 1024 rows or
 * fewer: rows are quantized independently). */
int wmat__qoutput_errors(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H, int nt,
                         double *e, double *e0);

/* ---- calibration through the runtime's observation hook (calib.c) */

/* The inputs of a block that linear layers share (q/k/v one, gate/up one). */
enum { WMAT_CSLOT_ATTN = 0, WMAT_CSLOT_O, WMAT_CSLOT_FFN, WMAT_CSLOT_DOWN, WMAT_CSLOT_CLS, WMAT_CSLOT_COUNT };

int wmat__calib_slot(wmat_linear_kind k);

/* The calibration windows' residual streams at the input of block `layer`. */
typedef struct {
    wmat_runtime *rt;
    float *X; /* (n_windows, ctx, dim) */
    int n_windows, ctx, dim;
    int layer;         /* blocks the streams have gone through */
    int block_passes;  /* windows x blocks run so far (the head counts as one) */
    size_t bytes;
    /* Stage mode's kept activations (wmat__calib_collect): the streams
     * are at the input of stage `stage` of block `layer` (block.h: 0 the
     * block's input, 1 with the attention output in A, 2 X = xmid, 3 with
     * silu(gate) * up in Hs), so the next single-slot pass resumes there. */
    int stage;
    int resume;        /* set by the caller: it quantizes slot s (and nothing earlier) right
                          after collecting slot s, so single-slot passes may resume */
    float *A;          /* (n_windows, ctx, attention width) or NULL */
    float *Hs;         /* (n_windows, ctx, hidden) or NULL */
    int64_t stage_runs; /* windows x block stages computed (4 per whole block) */
    /* bf16 calibration forward (wmat__calib_states_dtype): the block's
     * linear products on bf16 operands, fp32 accumulation. w16[k]: linear
     * k's weight of block w16_layer as bf16, converted at its first product
     * of a pass (bit k of w16_valid; every pass starts with none, since the
     * caller quantizes weights between passes); x16: one GEMM's input. */
    int bf16;
    wmat_gemm_backend gemm;
    int n_threads;
    uint16_t *w16[WMAT_LIN_COUNT];
    size_t w16_cap[WMAT_LIN_COUNT];
    unsigned w16_valid;
    int w16_layer;
    uint16_t *x16;
    size_t x16_cap;
    double convert_seconds; /* the bf16 conversions (weights and activations) */
    /* Out of core (wmat__calib_states_init_spill): X, A and Hs are shared
     * mappings of unlinked files in spill_dir (their lengths here; 0: in
     * memory), and every pass drops a window's pages once it is done with
     * the window, so the streams are resident one window at a time. */
    int spill;
    const char *spill_dir;
    size_t x_map, a_map, hs_map;
} wmat__calib_states;

/* Whether calibration can run its forward in dtype dt: WMAT_F32, or
 * WMAT_BF16 where a native bf16 GEMM exists (oneDNN on AVX512-BF16 or AMX;
 * WMAT_ERR_UNSUPPORTED otherwise, saying why); any other value
 * WMAT_ERR_INVALID. Called before any calibration. */
int wmat__calib_dtype_check(wmat_dtype dt);
/* Run the calibration forward of st in dt (after wmat__calib_states_init;
 * WMAT_F32 is the default): WMAT_BF16 rounds each linear product's weights
 * and inputs to bf16 and accumulates in fp32; the statistics (x x^T) stay
 * those of the fp32 activations the hook sees, accumulated as in fp32. */
int wmat__calib_states_dtype(wmat__calib_states *st, wmat_dtype dt);

/* Embed windows w = 0..n_windows-1 (tokens[w*ctx ..]) as the streams. */
int wmat__calib_states_init(wmat__calib_states *st, wmat_runtime *rt, const int32_t *tokens, int n_windows, int ctx,
                            int dim);
/* The same, out of core when spill is set: the streams and stage mode's
 * kept activations go to unlinked files in dir (NULL or "": $TMPDIR, else
 * /tmp; docs/SCALING.md, "Out of core"). The values are those of the
 * in-memory streams, so every result is the same. */
int wmat__calib_states_init_spill(wmat__calib_states *st, wmat_runtime *rt, const int32_t *tokens, int n_windows,
                                  int ctx, int dim, int spill, const char *dir);
void wmat__calib_states_free(wmat__calib_states *st);
float *wmat__calib_state(wmat__calib_states *st, int w);
/* Run block st->layer on every stream, in place (with the current weights). */
int wmat__calib_advance(wmat__calib_states *st);
/* Accumulate the inputs of block st->layer (the classifier when st->layer ==
 * n_layers, want = 1 << WMAT_CSLOT_CLS) for the slots in `want` (bit s =
 * slot s) into slots[s] (reset first, finished after). advance = 0: the
 * block stops right after the last wanted slot and the streams stay;
 * advance = 1: the whole block runs and the streams move past it (statistics
 * and advance in one pass, for weights that will not change before it).
 * One slot, advance = 0 and st->resume (stage mode): the pass resumes where
 * the previous one of this block stopped (st->stage) and stops at the slot, so
 * a block costs one forward however many stages it is cut into. The kept
 * activations depend only on the slots before the stopping one: the
 * caller may change the weights of the slot just collected (and later
 * ones) between passes, not earlier ones. Two or more slots start from the
 * block's input (a block-mode pass), which must still be there. */
int wmat__calib_collect(wmat__calib_states *st, int n_layers, wmat_qstats **slots, unsigned want, int advance);
/* Data-parallel calibration (calib_dp.c): rank r's contiguous share
 * [*w0, *w0 + *nw) of n_windows (the first n_windows % size ranks one
 * more), and the slots' sums (H, x2, token counts) added and absmax
 * maxed over the ranks of ctx->comm (NULL or one rank: nothing to do). */
int wmat__calib_share(const wmat_comm *c, int n_windows, int *w0, int *nw);
int wmat__calib_reduce(const wmat_context *ctx, wmat_qstats **slots, unsigned want);

/* ---- the model driver (methods.c)
 * wmat_quantize_model, also handing back the result of every tensor:
 * *results is an array of wmat_model_n_tensors(m) qresults (codes == NULL
 * where a tensor was not quantized); the caller frees each with
 * wmat_qresult_free and the array with wmat__free. results may be NULL. */
int wmat__quantize_model(wmat_model *m, const wmat_quantize_params *p, wmat_quantize_report *rep,
                         wmat_qresult **results);

#endif
