/* Factorization methods (src/decomp): a method turns one fp32 weight into
 * a weight of a structured kind (src/wop) and says how far it is from W.
 * Methods are rows of one table (decompose.c) whose head is the shared
 * method descriptor (core/method.h: family WMAT_FAMILY_DECOMPOSITION, the
 * statistics it needs, its parameter schema, the kind it produces); the
 * driver, the CLI and the tests iterate it, so a method is a file (its
 * function, check and schema) plus a row. */
#ifndef WMAT_DECOMP_H
#define WMAT_DECOMP_H

#include "core/method.h"
#include "quant/methods.h"
#include "wop/wop.h"

/* Decompose W (rows, cols) with the values ps of the method's schema into
 * *out (a new owned tensor of the method's kind, factors of type dtype:
 * f32, f16 or bf16); *rank_out the rank kept, *rel_error
 * ||W - W'||_F / ||W||_F. */
typedef int (*wmat_dmethod_fn)(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                               wmat_tensor *out, int64_t *rank_out, double *rel_error);
/* What the schema's ranges cannot say (keys that depend on each other),
 * checked before any matrix changes: on the caller's values (global = 1)
 * and on each tensor's values after its overrides (global = 0).
 * WMAT_ERR_INVALID naming the keys. */
typedef int (*wmat_dmethod_check_fn)(const wmat_pset *ps, int global);

/* A method that runs over the whole model itself, in place of fn: one
 * that needs statistics of the layers' inputs (calibrated in layer order
 * on the model changed so far) replaces the selected matrices (p->targets)
 * with the values ps. Per-tensor overrides do not apply to it. */
typedef int (*wmat_dmethod_model_fn)(wmat_model *m, const char *method, const wmat_pset *ps,
                                     const wmat_decompose_params *p, wmat_decompose_report *rep);
/* Methods whose per-tensor values depend on every tensor they take (one
 * global threshold): called once with all of them (weights t[i] and their
 * resolved values ps[i]; dtype: the factors' type, for a plan that prices
 * them) before any matrix changes; it may set keys of ps[i] and set
 * keep[i] = 1 to leave a tensor as it is. */
typedef int (*wmat_dmethod_plan_fn)(wmat_tensor *const *t, wmat_pset *const *ps, int n, int *keep, wmat_dtype dtype);
/* A per-matrix method given statistics of the matrix's input (st: GPTQ's
 * Hessian H and x2, of the model as changed so far), used instead of fn
 * for the tensors whose values ask for it (wants_stats): the driver then
 * needs calibration data and takes the matrices in layer and stage order,
 * calibrating each stage on the model with the earlier ones replaced. */
typedef int (*wmat_dmethod_st_fn)(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, const wmat_pset *ps,
                                  wmat_dtype dtype, wmat_tensor *out, int64_t *rank_out, double *rel_error);

typedef struct {
    WMAT_METHOD_ROW;
    wmat_dmethod_fn fn;
    wmat_dmethod_check_fn check;    /* may be NULL */
    wmat_dmethod_plan_fn plan;      /* may be NULL */
    wmat_dmethod_model_fn model_fn; /* instead of fn (NULL: fn per matrix) */
    wmat_dmethod_st_fn fn_stats;    /* may be NULL; with wants_stats */
    int (*wants_stats)(const wmat_pset *ps);
} wmat_dmethod;

/* The table, ended by a row with name == NULL; its first row is the default. */
extern const wmat_dmethod wmat__dmethods[];
const wmat_dmethod *wmat__dmethod_find(const char *name);
/* The keys of every method, each once, into dst (cap rows, the NULL-name
 * end row included). */
int wmat__dmethod_keys(wmat_param_spec *dst, int cap);
/* The settings of p without a model: the method, the keys (p's fields and
 * p->method_params) and every --override item. WMAT_ERR_INVALID naming
 * the key, the value and what is allowed. */
int wmat__decompose_check(const wmat_decompose_params *p);

/* Methods (one file each): the function, its check and its keys. */
extern const wmat_param_spec wmat__svd_keys[];
int wmat__decomp_svd(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                     wmat_tensor *out, int64_t *rank_out, double *rel_error);
int wmat__decomp_svd_check(const wmat_pset *ps, int global);
/* The svd method at a given rank (what the methods built on it call). */
int wmat__decomp_svd_rank(const float *W, int64_t rows, int64_t cols, int64_t rank, wmat_dtype dtype, wmat_tensor *out,
                          int64_t *rank_out, double *rel_error);
/* Pruning (prune.h, prune_model.c): magnitude, wanda, sparsegpt. */
int wmat__decomp_prune_check(const wmat_pset *ps, int global);
int wmat__decomp_prune_model(wmat_model *m, const char *method, const wmat_pset *ps, const wmat_decompose_params *p,
                             wmat_decompose_report *rep);
extern const wmat_param_spec wmat__welore_keys[];
int wmat__decomp_welore(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                        wmat_tensor *out, int64_t *rank_out, double *rel_error);
int wmat__decomp_welore_check(const wmat_pset *ps, int global);
int wmat__decomp_welore_plan(wmat_tensor *const *t, wmat_pset *const *ps, int n, int *keep, wmat_dtype dtype);
/* SliceGPT (slicegpt.c): over the whole model, which it replaces by the
 * sliced one (cfg.dim d', attn_dim, norm_dim, shortcut matrices). */
extern const wmat_param_spec wmat__slicegpt_keys[];
int wmat__decomp_slicegpt_check(const wmat_pset *ps, int global);
int wmat__decomp_slicegpt_model(wmat_model *m, const char *method, const wmat_pset *ps, const wmat_decompose_params *p,
                                wmat_decompose_report *rep);
/* d' of a width and a sliced share: floor((1 - s) d) rounded down to a
 * multiple of 8; WMAT_ERR_INVALID naming s when it is outside [0, 1) or
 * leaves fewer than 8. */
int wmat__slicegpt_width(int dim, double sparsity, int *out);
extern const wmat_param_spec wmat__lqlora_keys[];
int wmat__decomp_lqlora(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                        wmat_tensor *out, int64_t *rank_out, double *rel_error);
int wmat__decomp_lqlora_check(const wmat_pset *ps, int global);
int wmat__decomp_lqlora_plan(wmat_tensor *const *t, wmat_pset *const *ps, int n, int *keep, wmat_dtype dtype);
int wmat__decomp_lqlora_st(const float *W, int64_t rows, int64_t cols, const wmat_qstats *st, const wmat_pset *ps,
                           wmat_dtype dtype, wmat_tensor *out, int64_t *rank_out, double *rel_error);
int wmat__decomp_lqlora_wants_stats(const wmat_pset *ps);

/* DSFormer post hoc (dsformer.c): W ~ D S, D = U_k Sigma_k, S = top-s per
 * column of V_k^T by magnitude, D refit by least squares given S when
 * refit. -> kind dsf. */
extern const wmat_param_spec wmat__dsformer_keys[];
int wmat__decomp_dsformer(const float *W, int64_t rows, int64_t cols, const wmat_pset *ps, wmat_dtype dtype,
                          wmat_tensor *out, int64_t *rank_out, double *rel_error);
int wmat__decomp_dsformer_check(const wmat_pset *ps, int global);
int wmat__dsformer_factor(const float *W, int64_t rows, int64_t cols, int64_t k, int64_t s, int refit, wmat_dtype dt,
                          wmat_tensor *out, double *rel_error);
/* The factorizer's start: D (rows, k) = U_k Sigma_k, or with refit the
 * least-squares D for the mask of Vt; Vt (k, cols) = V_k^T, dense (the
 * trainer's latent S). */
int wmat__dsformer_init(const float *W, int64_t rows, int64_t cols, int64_t k, int64_t s, int refit, float *D, float *Vt);
/* The s entries of each column c of S (k, cols) with the largest |S[j, c]|
 * (ties: the lower j; a NaN counts as largest) into idx[c s ..], largest
 * first; work: wmat__dsformer_tops_work(k) bytes. */
void wmat__dsformer_tops(const float *S, int64_t k, int64_t cols, int64_t s, int32_t *idx, void *work);
size_t wmat__dsformer_tops_work(int64_t k);
/* Bytes of a dsf weight as stored (D, values, index bytes). */
uint64_t wmat__dsformer_bytes(int64_t rows, int64_t cols, int64_t k, int64_t s, wmat_dtype dt);

#endif
