/* Adapters of the trainer (private): a registry of trainable additions to
 * a frozen linear layer Y = X W^T, one entry per file (adapter_<name>.c),
 * the table in adapter.c. docs/TRAINING.md says how to add one.
 *
 * The trainer's linear op is the base product followed by the adapter's
 * forward, which ADDS its contribution to Y; the backward likewise adds to
 * dX after the base has written it. An adapter owns n_tensors trainable
 * tensors per adapted layer (LoRA: A (r, in), B (out, r)); the trainer
 * keeps them, their gradients and optimizer states in its arenas.
 *
 * Base-aware entries (DoRA, PiSSA, ...) see the frozen base weight of their
 * layer: check, init, forward and backward get it as `base` (the operator
 * of whatever kind it is stored in; NULL when the adapter replaces the
 * base), init also as a dense f32 (out, in) matrix `W` (NULL when the base
 * is not f32: an entry that needs it must refuse such a base in check). A
 * tensor of shape (rows, 0) is a vector of rows floats (DoRA's magnitude). */
#ifndef WMAT_TRAIN_ADAPTER_H
#define WMAT_TRAIN_ADAPTER_H

#include "../core/internal.h"

#define WMAT__ADAPTER_MAX_TENSORS 4

/* Settings shared by all adapted layers of a run. Fields past alpha may be
 * left 0 by callers that do not use them. */
typedef struct {
    int rank;
    float alpha;
    float density; /* share of positions of a sparse part (sltrain), [0, 1) */
    int nt;        /* threads for the entry's own loops (<= 0: 1) */
    int isa;       /* WMAT_ISA_* level its own kernels may use (0: plain C) */
    /* Set by the trainer and the PEFT loader for an entry with shared data
     * (n_shared > 0): the largest in and out over the adapted layers, and
     * the frozen floats all adapted layers share (VeRA's A and B), laid out
     * as the shared tensors one after the other (NULL: none). */
    int in_max, out_max;
    const float *shared;
    /* Per layer: q and k (HF permutes their rows for its rotary order):
     * the number of heads of the layer's output rows; 0 for other layers.
     * An entry whose shared data has output rows (VeRA's B) reads them
     * through the permutation, so the shared tensor is HF's for every
     * layer (wmat__rope_unpermute_hf). */
    int hf_rope_heads;
    /* Set by the trainer for an entry with trained shared tensors
     * (n_tshared > 0): the tensors of this layer's sharing group and their
     * gradients (tg NULL: not wanted). backward ADDS to tg, so a group's
     * gradient is the sum over the layers that share it. */
    float *const *tw;
    float *const *tg;
    float l1; /* weight of an entry's L1 penalty (S2-LoRA's mu; 0: none) */
    /* The rank the entry's scale is computed from when the layer's own
     * rank is smaller (AdaLoRA's pruned layers read from a PEFT file keep
     * the initial rank's scale); 0: rank. */
    int rank_init;
    /* AdaLoRA's schedule (wmat_train_params adalora_*; 0 or < 0: the
     * entry's defaults) and the run's optimizer steps (total_step). */
    struct {
        int target_r, tinit, tfinal, deltat;
        float orth;
    } ada;
    int steps;
    /* EVA (an entry with plan): the share of extra components (rho) and the
     * convergence threshold (tau) of its calibration; others ignore them. */
    float rho, tau;
    /* Set by an entry's plan for its init (EVA: the layer's top principal
     * directions of its calibration inputs, rank rows of in floats); NULL
     * otherwise (init then starts as the entry does without a plan). Not
     * valid after init. */
    const float *init_rows;
    /* Quantization-aware entries (ofq*, adapter_ofq.c): bits (0: 4), group
     * along inputs (0: one step per output channel), the steps of the
     * annealing stage at the end (< 0: steps / 5) and CGA's boundary range
     * (levels). */
    struct {
        int bits, group, cga_steps;
        float cga_range;
    } qat;
    /* PreCropping (adapter_precrop.c, set by its plan): 1 when the layer's
     * kept channels are its input columns (down), 0: its output rows. */
    int crop_cols;
    /* SPT (adapter_spt.c): the run's budget of trained floats over the
     * targeted matrices (<= 0: LoRA's at rank, r (in + out) each) and the
     * structured threshold (a matrix whose selected positions number at
     * least threshold x (in + out) gets a LoRA); per layer, set by its plan
     * (planned 1): the layer's sparse positions nnz (its LoRA rank is rank,
     * 0: none). planned 0: rank and floor(density x out x in) random positions. */
    struct {
        double budget;
        float threshold;
        int planned;
        int64_t nnz;
    } spt;
} wmat__adapter_cfg;

/* One adapted layer as the whole-model hooks see it (after_step,
 * extra_loss, peft_config_layers): its settings, tensors, their gradients
 * of the current step, its per-layer data (writable: an entry with per-step
 * state keeps it there, so checkpoints carry it), its place in the model
 * (layer, wmat_linear_kind) and shape. */
typedef struct {
    const wmat__adapter_cfg *cfg;
    float *const *w;
    float *const *g;
    void *fixed;
    int layer, kind, in, out;
} wmat__adapter_layer;

/* What an entry's plan sees: the frozen model, the targeted linears and
 * calibration tokens (windows of ctx, batches of `batch` windows, at most
 * max_batches of them). */
typedef struct {
    wmat_model *m;
    unsigned targets;
    const int32_t *tokens;
    size_t n_tokens;
    int ctx, batch, max_batches;
    const wmat_context *exec;
} wmat__adapter_plan_in;

typedef struct wmat__adapter {
    const char *name;
    const char *summary;
    int n_tensors;
    /* Per tensor: PEFT key ("lora_A"), and whether its rows are the
     * layer's output features (those rows follow the base's row order, so
     * HF's rotary permutation of q/k applies to them in PEFT files). */
    const char *tensor_key[WMAT__ADAPTER_MAX_TENSORS];
    int rows_are_out[WMAT__ADAPTER_MAX_TENSORS];
    /* ... or whether its COLUMNS are the output features (MiSS's D (r, out)):
     * q/k columns are then permuted in PEFT files. */
    int cols_are_out[WMAT__ADAPTER_MAX_TENSORS];
    /* 1: the entry is the whole linear layer, not an addition to a frozen
     * base (a parameterization trained from scratch, SLTrain's B A + S):
     * the trainer keeps no base weight for the layers it targets, and the
     * rest of the model (embeddings, norms, classifier, linears not
     * targeted) trains as in full training. */
    int replaces_base;
    /* 1: init rewrites W (PiSSA's residual W - s B0 A0): the trainer hands
     * it a private f32 copy of the base, which the layer then runs on; the
     * original base stays as loaded, so merge (into the original W) must
     * undo the rewrite from the entry's fixed data. */
    int rewrites_base;
    /* Bit i: tensor i's backward is by design not the exact gradient of
     * forward (DoRA detaches the weight norm, as its paper does); the
     * registry's finite-difference check skips it, the entry's own test
     * checks it against a reference with the detached part held fixed. */
    unsigned approx_grad;
    /* Shapes of the tensors for a layer (in -> out). */
    void (*shapes)(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols);
    /* Optional: refuse a configuration for a layer (WMAT_ERR_INVALID with a
     * message naming what is wrong); `what` names the layer; base: its
     * frozen weight (NULL: none, the adapter replaces it). */
    int (*check)(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what);
    /* Optional: bytes of frozen per-layer data (not trained: no gradient,
     * no optimizer state; a fixed sparsity pattern), filled by init, read
     * by forward, backward, merge and to_weight, kept in checkpoints. */
    size_t (*fixed_bytes)(const wmat__adapter_cfg *c, int in, int out);
    /* With fixed_bytes: 1 when fixed (read from a checkpoint) is data init
     * could have made for this layer, so the kernels may trust it. */
    int (*fixed_valid)(const wmat__adapter_cfg *c, const void *fixed, int in, int out);
    /* Optional: frozen data shared by ALL adapted layers (VeRA's random A
     * and B, sliced per layer): n_shared tensors of shared_shapes (for
     * c->in_max, c->out_max), f32, one after the other, filled once by
     * init_shared (from its own fixed seed: the data does not depend on the
     * run's seed), handed to every path as c->shared, kept in checkpoints
     * with the fixed data, and written to PEFT files under shared_key (the
     * full tensor name, e.g. "base_model.vera_A"). No gradient, no state. */
    int n_shared;
    const char *shared_key[2];
    void (*shared_shapes)(const wmat__adapter_cfg *c, int *rows, int *cols);
    int (*init_shared)(const wmat__adapter_cfg *c, float *shared);
    /* Optional: TRAINED tensors shared by a group of layers (S2-LoRA's A, B
     * per kind of linear; Compacter's PHM rule for all): n_tshared tensors
     * per group, group = tshared_group(k) of linear kind k (NULL: one group
     * for all kinds), of tshared_shapes for the (in, out) of the group's
     * first targeted kind (an entry whose group mixes shapes must not
     * depend on them). The trainer keeps them once per group with the other
     * parameters (gradient, optimizer state, checkpoint) and hands every
     * layer of the group their values and gradients as c->tw, c->tg;
     * init_tshared fills them (zeroed on entry) from the run's rng. */
    int n_tshared;
    const char *tshared_key[WMAT__ADAPTER_MAX_TENSORS];
    int (*tshared_group)(int k);
    void (*tshared_shapes)(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols);
    int (*init_tshared)(const wmat__adapter_cfg *c, float *const *tw, int in, int out, wmat_rng *rng);
    /* Optional: a proximal step after every optimizer step on tensor i of
     * a layer (n floats at p; lr: the step's learning rate), for a penalty
     * kept out of the loss (S2-LoRA's soft-thresholding of lambda). */
    void (*prox)(const wmat__adapter_cfg *c, int i, float *p, size_t n, float lr);
    /* 1: the entry transforms its linear's OUTPUT, y -> f(y) (Compacter's
     * bottleneck after the FFN), instead of adding a path from its input:
     * forward maps Y (the base product) in place; backward runs BEFORE the
     * base's, with dX a (BT, out) buffer it WRITES with the gradient of the
     * base output (dY + J_f^T dY), from which the trainer then runs the
     * base's backward; X is NULL there (act keeps what it needs). */
    int output_side;
    /* Non-NULL: the adapted layer is not W' x for any W' (a nonlinear
     * path): no merge, no merged model, no PEFT file; the trainer refuses
     * them with this reason and evaluates through its own forward. */
    const char *not_mergeable;
    /* 1: the PEFT keys of the per-layer tensors have no ".weight" suffix
     * (PEFT's nn.ParameterDict entries: VeRA's vera_lambda_b). */
    int peft_bare_keys;
    /* Optional: parts of a trained tensor frozen as training goes on
     * (LaMDA's gradual freezing of B): the number of leading columns of
     * tensor i (of cols columns) frozen for the optimizer step `step`
     * (0-based) of `steps`; >= cols freezes the whole tensor. The trainer
     * zeroes their gradients before clipping and leaves their values (and
     * their optimizer states) untouched by the step: frozen is frozen, not
     * "zero gradient" (AdamW's momentum and decay would still move them). */
    int (*frozen_cols)(const wmat__adapter_cfg *c, int i, int cols, int step, int steps);
    /* Optional, whole-model hooks (AdaLoRA), over the n adapted layers in
     * layer order:
     * extra_loss: a term the entry adds to the training loss (AdaLoRA's
     * orthogonality regularizer): returns its value and ADDS its gradient to
     * the layers' g. The trainer calls it once per optimizer step, on the
     * weights the step's batches ran on, after the batch gradients are
     * summed (over micro-batches and ranks) and before clipping; the step's
     * reported loss includes it (wmat_train_step_info.aux_loss says how much).
     * after_step: called after every optimizer step `step` (0-based) of
     * `steps`, with the step's gradients (clipped, as the optimizer saw
     * them) still in g and the updated weights in w, which it may rewrite
     * (AdaLoRA: importance averages in fixed, masking of E to the budget).
     * peft_config_layers: more adapter_config.json fields (each line ending
     * ",\n") that depend on every layer (AdaLoRA's rank_pattern), snprintf
     * style: writes at most n bytes, returns the length it needs. */
    double (*extra_loss)(const wmat__adapter_cfg *c, const wmat__adapter_layer *layers, int n);
    int (*after_step)(const wmat__adapter_cfg *c, const wmat__adapter_layer *layers, int n, int step, int steps);
    size_t (*peft_config_layers)(const wmat__adapter_cfg *c, const wmat__adapter_layer *layers, int n, char *buf,
                                 size_t cap);
    /* Optional: lines about the run so far for the log (OFQ's oscillation
     * counts, kept in the layers' fixed data by after_step), snprintf style;
     * wmat_trainer_adapter_report appends them to the plan's report. */
    size_t (*status)(const wmat__adapter_cfg *c, const wmat__adapter_layer *layers, int n, char *buf, size_t cap);
    /* Optional: the layer's rank in PEFT files when it is less than c->rank
     * (AdaLoRA drops pruned triplets, as PEFT's rank_pattern resize does);
     * with it, peft_export (peft_as NULL) writes the layer's tensors at that
     * rank (shapes for c with rank = that). The loader then takes each
     * layer's rank from the rows of its tensor 0 (at most the file's rank,
     * which becomes rank_init; 0: the layer adds nothing). */
    int (*peft_rank)(const wmat__adapter_cfg *c, const void *fixed, int in, int out);
    /* Optional: per-layer settings decided from data before the trainer
     * lays out its tensors (EVA: ranks from calibration activations). lcfg
     * and on (n_layers x WMAT_LIN_COUNT, layer-major) come filled with the
     * run's settings and the targets; plan may change each layer's rank,
     * alpha and init_rows, and turn layers off (on = 0: not adapted).
     * *owned: memory the init_rows point into (the trainer frees it after
     * init); report: lines for the log (what plan decided), NUL-ended. */
    int (*plan)(const wmat__adapter_cfg *c, const wmat__adapter_plan_in *in, wmat__adapter_cfg *lcfg,
                unsigned char *on, void **owned, char *report, size_t report_cap);
    /* Floats saved by forward for backward (act), for BT rows, and the
     * scratch of forward and backward for a layer (in -> out) (the trainer
     * allocates the largest over the layers once). */
    size_t (*act_floats)(const wmat__adapter_cfg *c, int BT);
    size_t (*scratch_floats)(const wmat__adapter_cfg *c, int BT, int in, int out);
    /* The scale s of the adapter's path for this configuration. */
    float (*scale)(const wmat__adapter_cfg *c);
    /* Fresh tensors (zeroed on entry) and frozen data (fixed, of
     * fixed_bytes; NULL when there is none), drawing from rng. W: the
     * base as dense f32 (out, in) or NULL (see above); only an entry with
     * rewrites_base may write it. An entry that replaces the base gets the
     * model's own weight there when it is f32 (read-only: DSFormer starts
     * from its SVD), NULL otherwise (SLTrain ignores it). Fails only where check would have. */
    int (*init)(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                int out, wmat_rng *rng);
    /* Y (BT, out) holds the base product X W^T on entry (0 when the entry
     * replaces the base); the adapter adds its path or transforms Y (DoRA
     * rescales it); act: what backward needs. */
    void (*forward)(const wmat__adapter_cfg *c, float *Y, float *act, float *scratch, const float *X,
                    const float *const *w, const void *fixed, const wmat_tensor *base, int BT, int in, int out);
    /* dw[i] += gradients of the tensors (NULL: not wanted); dX (BT, in),
     * when not NULL, holds the base's dY W (or has it added) on entry and
     * gets the adapter's input gradient added (or the base part corrected:
     * DoRA's rescaled rows). */
    void (*backward)(const wmat__adapter_cfg *c, float *dX, float *const *dw, float *scratch, const float *dY,
                     const float *X, const float *const *w, const void *fixed, const wmat_tensor *base,
                     const float *act, int BT, int in, int out);
    /* Into the ORIGINAL base W (out, in) (as loaded, never the rewritten
     * one): afterwards X W^T equals the adapted layer. fixed is NULL when
     * merging a PEFT file (an entry that needs its init data recomputes it
     * from W, as PEFT does on load). Fails only on memory or LAPACK. */
    int (*merge)(const wmat__adapter_cfg *c, float *W, const float *const *w, const void *fixed, int in, int out);
    /* Optional (required with replaces_base, unless not_mergeable: a
     * replacing entry with no weight form, MemoryFormer): the layer's weight in its
     * small form as a weight operator of a registered kind (sltrain: a
     * `sum` of a `lowrank` and a `sparse` weight), owning its data, so the
     * trained model saves, loads and runs without a dense matrix. */
    int (*to_weight)(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                     wmat_tensor *dst);
    /* Optional: the entry adopts what is trainable in its layer's base (a
     * decomposed weight's low-rank factors) instead of adding new tensors.
     * adopt returns 1 when it takes this layer (lc: the layer's own
     * settings, e.g. the rank of its factors, which its shapes and paths
     * then get; *rest: the operator the layer's base product runs from then
     * on, the base less what was taken, pointing into base; NULL: nothing
     * is left), 0 when the layer has nothing to adopt (it stays frozen as
     * it is, without tensors), or an error. init then copies the tensors
     * out of base. The rest of the model stays frozen, as under any
     * adapter, and merge is not used: the trained model is the base with
     * each adopted layer rebuilt by to_weight_over (the tensors over the
     * original base, in its stored kinds), which the trainer evaluates. */
    int (*adopt)(const wmat__adapter_cfg *c, const wmat_tensor *base, int in, int out, const char *what,
                 wmat__adapter_cfg *lc, const wmat_tensor **rest);
    int (*to_weight_over)(const wmat__adapter_cfg *c, const float *const *w, const wmat_tensor *base, int in, int out,
                          wmat_tensor *dst);
    /* PEFT: peft_type and the adapter_config.json fields after the common
     * ones (written into buf, returns the length); parse reads them back
     * into c and says whether the file is this entry's (1) or not (0).
     * peft_type NULL: PEFT has no such adapter (no --lora-out). */
    const char *peft_type;
    size_t (*peft_config)(const wmat__adapter_cfg *c, char *buf, size_t n);
    int (*peft_parse)(const void *cjson, wmat__adapter_cfg *c);
    /* Optional: the file holds another entry's tensors (peft_as, with the
     * settings peft_cfg gives): PiSSA/OLoRA save the LoRA of rank 2r that
     * applies to the original base, [A; A0] and [B, -B0] (PEFT's
     * conversion), which LoRA then reads back. dst: peft_as's shapes. */
    const struct wmat__adapter *peft_as;
    void (*peft_cfg)(const wmat__adapter_cfg *c, wmat__adapter_cfg *as);
    void (*peft_export)(const wmat__adapter_cfg *c, const float *const *w, const void *fixed, int in, int out,
                        float *const *dst);
} wmat__adapter;

const wmat__adapter *wmat__adapter_at(int i);
const wmat__adapter *wmat__adapter_find(const char *name);

/* PEFT files of an adapter over a model's layers. tensors[(l * 7 + k) *
 * WMAT__ADAPTER_MAX_TENSORS + i] points to tensor i of layer l, linear kind
 * k (NULL where that linear is not adapted). Keys are
 * base_model.model.model.layers.L.<module>.<tensor_key>.weight. lcfg: the
 * layers' own settings (n_layers x 7, NULL: c for every layer); ranks or
 * alphas that differ from c's go to the config's rank_pattern /
 * alpha_pattern (PEFT's per-module overrides), which the merge reads. */
int wmat__adapter_peft_save(const wmat__adapter *a, const wmat__adapter_cfg *c, const wmat__adapter_cfg *lcfg,
                            const wmat_config *mc, float *const *tensors, void *const *fixed, const char *base_path,
                            const char *dir);
/* Merge a PEFT directory into m in place (any registered adapter whose
 * peft_parse accepts the config). */
int wmat__adapter_peft_merge(wmat_model *m, const char *dir);

extern const wmat__adapter wmat__adapter_lora;
extern const wmat__adapter wmat__adapter_rslora;
extern const wmat__adapter wmat__adapter_sltrain;
extern const wmat__adapter wmat__adapter_dora;
extern const wmat__adapter wmat__adapter_pissa;
extern const wmat__adapter wmat__adapter_olora;
extern const wmat__adapter wmat__adapter_svfit;
extern const wmat__adapter wmat__adapter_bone;
extern const wmat__adapter wmat__adapter_factors;
extern const wmat__adapter wmat__adapter_dsformer, wmat__adapter_dsformer_fixed;
extern const wmat__adapter wmat__adapter_vera;
extern const wmat__adapter wmat__adapter_lamda;
extern const wmat__adapter wmat__adapter_s2lora;
extern const wmat__adapter wmat__adapter_compacter;

/* Compacter's PHM weight (adapter_compacter.c): W (in_a, out_a) =
 * sum_{i<n} A_i (x) s_i t_i^T, n = WMAT__PHM_N, A (n, n n) the rules A_i
 * row-major, st (n, in_a/n + out_a/n) the rows [s_i | t_i]. */
#define WMAT__PHM_N 4
void wmat__phm_weight(const float *A, const float *st, int in_a, int out_a, float *W);

/* Group of linear kind k for an entry with trained shared tensors. */
static inline int wmat__adapter_tgroup(const struct wmat__adapter *a, int k) { return a->tshared_group ? a->tshared_group(k) : 0; }
extern const wmat__adapter wmat__adapter_adalora;
extern const wmat__adapter wmat__adapter_miss;
extern const wmat__adapter wmat__adapter_eva;
extern const wmat__adapter wmat__adapter_memoryformer;
/* Forward FLOPs per token of one MemoryFormer Memory Layer (in -> out, tau
 * bits a code; adapter_memoryformer.c); a dense linear's is 2 in out. */
double wmat__memoryformer_flops(int tau, int in, int out);
extern const wmat__adapter wmat__adapter_s2ft, wmat__adapter_s2ft_wnorm, wmat__adapter_s2ft_anorm;
extern const wmat__adapter wmat__adapter_ofq, wmat__adapter_ofq_statsq, wmat__adapter_ofq_lsq;
extern const wmat__adapter wmat__adapter_precrop, wmat__adapter_precrop_uniform;
/* PreCropping's layer-wise counts (adapter_precrop.c): count[l] channels of
 * layer l kept out of H, summing to budget (L <= budget <= L H), from the
 * channel scores score (L, H): uniform, an even split (the lower layers
 * take the remainder); else each layer's best channel, then the rest by one
 * global order of all scores (ties: the lower layer, then channel). */
int wmat__precrop_counts(const double *score, int L, int H, int budget, int uniform, int *count);
extern const wmat__adapter wmat__adapter_spt;

/* SPT's two stages (adapter_spt.c), for its plan and its test:
 * sensitivity: sens[j] (out x in of matrix j = linear mk[j] of layer ml[j])
 * += the squared gradient of each calibration batch's mean loss, summed over
 * at most max_batches batches of `batch` windows of ctx tokens (targets the
 * next tokens), from a full-training trainer on m (frozen: no step);
 * *used: the batches run. allocate: the largest tau such that the top tau
 * of all matrices' sensitivities (ties: the lower matrix, then the lower
 * position) cost at most budget, matrix j costing, for its count[j]
 * selected positions: rank[j] (in + out) with rank[j] = clamp(floor(count /
 * (in + out)), 1, min(in, out)) when count > 0 and count >= threshold x
 * (in + out) (structured), else count (unstructured, rank[j] = 0); *tau:
 * the positions selected, *total: their cost. */
int wmat__spt_sensitivity(wmat_model *m, const int32_t *tokens, size_t n_tokens, int ctx, int batch, int max_batches,
                          const wmat_context *exec, const int *ml, const int *mk, int nm, float *const *sens, int *used);
int wmat__spt_allocate(const float *const *sens, const int *in, const int *out, int nm, double budget, float threshold,
                       int64_t *count, int *rank, int64_t *tau, double *total);

/* EVA's rank redistribution (adapter_eva.c): matrix m reads input
 * mat_g[m], whose K explained-variance ratios (descending) are ratio[mat_g[m]];
 * the largest `budget` of all matrices' ratios (ties: the lower component
 * index, then the lower matrix) give each matrix its rank[m] in [0, K]. */
int wmat__eva_distribute(const double *const *ratio, const int *mat_g, int n_m, int K, int budget, int *rank);

/* Floats of an entry's shared data for c (0: none). */
size_t wmat__adapter_shared_floats(const wmat__adapter *a, const wmat__adapter_cfg *c);

/* cfg.hf_rope_heads of linear k (wmat_linear_kind) of a model of config c. */
static inline int wmat__adapter_rope_heads(const wmat_config *c, int k)
{
    return k == WMAT_LIN_Q ? c->n_heads : k == WMAT_LIN_K ? c->n_kv_heads : 0;
}

/* AdaLoRA's budget at step t (PEFT's budget_schedule) of b0 initial and
 * bT final triplets, and whether step t masks (adapter_adalora.c). */
int wmat__adalora_budget(const wmat__adapter_cfg *c, int b0, int bT, int t, int *mask);

/* HF's module name of linear k ("self_attn.q_proj", ...). */
const char *wmat__adapter_hf_module(int k);

/* Elements of a tensor of shape (rows, cols): cols 0 is a vector. */
static inline size_t wmat__adapter_nelem(int rows, int cols) { return (size_t)rows * (size_t)(cols ? cols : 1); }
/* A clear refusal of rank > min(in, out) (entries built on W's spectrum). */
int wmat__adapter_check_rank(const wmat__adapter_cfg *c, int in, int out, const char *who, const char *what);
/* Refuse a base that is not dense f32 (init needs W itself). */
int wmat__adapter_check_f32(const wmat_tensor *base, const char *who, const char *what);

/* LoRA's path s B A with w = {A (r, in), B (out, r)}, for entries that
 * contain it (adapter_lora.c): xa (BT, r) kept by forward; backward's
 * scratch dxa (BT, r). */
void wmat__lora_path_forward(float s, const wmat__adapter_cfg *c, float *Y, float *xa, const float *X,
                             const float *const *w, int BT, int in, int out);
/* LoRA's shapes, act and scratch sizes and PEFT config (r, lora_alpha,
 * ...; extra: more fields, e.g. "  \"use_dora\": true,\n"). */
void wmat__lora_shapes(const wmat__adapter_cfg *c, int in, int out, int *rows, int *cols);
/* LoRA's init: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0 (w zeroed on entry). */
int wmat__lora_init(const wmat__adapter_cfg *c, float *const *w, void *fixed, const wmat_tensor *base, float *W, int in,
                    int out, wmat_rng *rng);
size_t wmat__lora_act_floats(const wmat__adapter_cfg *c, int BT);
size_t wmat__lora_scratch_floats(const wmat__adapter_cfg *c, int BT, int in, int out);
float wmat__lora_scale(const wmat__adapter_cfg *c);
size_t wmat__lora_peft_config(const wmat__adapter_cfg *c, char *buf, size_t n, int rs, const char *init, const char *extra);
void wmat__lora_path_backward(float s, const wmat__adapter_cfg *c, float *dX, float *const *dw, float *dxa,
                              const float *dY, const float *X, const float *const *w, const float *xa, int BT, int in,
                              int out);

/* ---- fixed random sparse supports and their kernels (adapter_sltrain.c)
 *
 * A support of a (rows, cols) matrix in row-compressed form: off (rows + 1)
 * offsets into col (nnz column indices, increasing within a row), so the
 * positions r * cols + col[j] are sorted; values val (nnz) in that order. */

/* nnz = floor(density * rows * cols) positions drawn uniformly without
 * replacement (selection sampling, sorted as drawn) from rng. */
int64_t wmat__support_nnz(float density, int rows, int cols);
void wmat__support_sample(wmat_rng *rng, int rows, int cols, int64_t nnz, int32_t *off, int32_t *col);
/* The kernels' workspace, floats, for nt threads. isa: WMAT_ISA_AVX2 or
 * more runs the AVX2+FMA twins where the CPU has them (sums fused: they
 * differ from the plain C reference in the last bits). */
size_t wmat__support_ws_floats(int cols, int rows, int nt);
/* Y (BT, rows) += X (BT, cols) S^T. */
void wmat__support_forward(float *Y, const float *X, const int32_t *off, const int32_t *col, const float *val, int BT,
                           int cols, int rows, float *ws, int nt, int isa);
/* dval (nnz) += the gradient of the values: (dY^T X) gathered at the
 * support; dX (BT, cols) += dY S when dX is not NULL. */
void wmat__support_backward(float *dX, float *dval, const float *dY, const float *X, const int32_t *off,
                            const int32_t *col, const float *val, int BT, int cols, int rows, float *ws, int nt,
                            int isa);

#endif
