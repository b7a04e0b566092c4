/* Optimizers and gradient projectors of the trainer (private): two
 * registries, one entry per file (optim_<name>.c, proj_<name>.c), the
 * tables in optim.c. docs/TRAINING.md says how to add one.
 *
 * An optimizer updates one trainable tensor at a time from its gradient and
 * its own per-parameter states. Each state is a buffer of elements of a
 * declared type and size (1 byte for an 8-bit state), so the trainer can
 * size, zero, account and checkpoint the states of any optimizer without
 * knowing what they mean.
 *
 * A projector wraps any optimizer for a 2-D weight: it maps the gradient
 * into a smaller space, runs the wrapped optimizer's step there (so the
 * optimizer's states have the projected size) and maps the update back. */
#ifndef WMAT_TRAIN_OPTIM_H
#define WMAT_TRAIN_OPTIM_H

#include "../core/internal.h"
#include "../io/safetensors.h"

#define WMAT__OPT_MAX_STATES 4

/* Settings of one update. weight_decay is already 0 for tensors that do not
 * decay (vectors). step is the 1-based index of this update (Adam's bias
 * correction uses it). nt: threads for element-wise loops. */
typedef struct {
    float lr, weight_decay;
    float beta1, beta2, eps; /* Adam family */
    float momentum;          /* SGD family */
    int step;
    int nt;
} wmat__optim_hparams;

/* One per-parameter state buffer. */
typedef struct {
    const char *name;     /* "m", "v", ...: the checkpoint tensor is "optim.<name>" */
    wmat_st_dtype dtype;  /* element type, in memory and in the checkpoint */
    size_t elem_bytes;    /* bytes per element (1 for U8 / I8 states) */
} wmat__optim_state_desc;

/* The states of all parameters, state k of every tensor contiguous in one
 * buffer (base[k], elems[k] elements): what serialize/deserialize see. */
typedef struct {
    void *base[WMAT__OPT_MAX_STATES];
    size_t elems[WMAT__OPT_MAX_STATES];
} wmat__optim_states;

typedef struct wmat__optimizer {
    const char *name;
    const char *summary;
    int n_states;
    wmat__optim_state_desc states[WMAT__OPT_MAX_STATES];
    /* Elements of state k for a tensor of n elements (block-wise 8-bit
     * states keep e.g. n codes plus n / 64 scales). */
    size_t (*state_elems)(int k, size_t n);
    /* Set the fresh states of a tensor of n elements (the buffers arrive
     * zeroed). May be NULL. */
    void (*init)(void *const *state, size_t n);
    /* p (n) -= lr * (update(g, state) + weight_decay * p), states advanced.
     * The update must not depend on p except through the decay term:
     * projectors run the step on a zero p with lr = -1 and no decay to
     * read the update direction itself. */
    void (*step)(float *p, const float *g, void *const *state, size_t n, const wmat__optim_hparams *h);
    /* Checkpoint entries for all states into e (names point into
     * names[k]); returns the number written. deserialize checks and copies
     * them back from f (errors name `path`). */
    int (*serialize)(const struct wmat__optimizer *o, const wmat__optim_states *s, wmat_st_entry *e, char (*names)[64]);
    int (*deserialize)(const struct wmat__optimizer *o, const wmat__optim_states *s, const wmat_st_file *f,
                       const char *path);
} wmat__optimizer;

/* The registry: NULL past the end / for an unknown name. */
const wmat__optimizer *wmat__optimizer_at(int i);
const wmat__optimizer *wmat__optimizer_find(const char *name);

/* serialize / deserialize for optimizers whose states are stored as they
 * sit in memory: one tensor "optim.<state name>" of the state's dtype. */
int wmat__optim_serialize_raw(const wmat__optimizer *o, const wmat__optim_states *s, wmat_st_entry *e,
                              char (*names)[64]);
int wmat__optim_deserialize_raw(const wmat__optimizer *o, const wmat__optim_states *s, const wmat_st_file *f,
                                const char *path);

/* ---- projectors */

typedef struct {
    int rank;        /* <= 0 was resolved by the trainer */
    int gap;         /* recompute the projection every gap steps */
    float scale;
    int randomized;
} wmat__proj_params;

/* What a projector's step works on: one 2-D weight and the wrapped
 * optimizer's states for it (projected size). */
typedef struct {
    float *p, *g;             /* (rows, cols) */
    int rows, cols;
    void *const *opt_state;   /* the wrapped optimizer's states, projected size */
    float *proj_state;        /* the projector's own state (checkpointed) */
} wmat__proj_target;

/* The largest projected target: rows, cols, elements, projected elements. */
typedef struct {
    int max_rows, max_cols;
    size_t max_n, max_pn;
} wmat__proj_sizes;

/* Per-step context: scratch (scratch_floats(sizes) floats, 64-byte
 * aligned, shared by all targets), the trainer's RNG (checkpointed), the
 * 0-based step index. */
typedef struct {
    float *scratch;
    wmat__proj_sizes sizes;
    wmat_rng *rng;
    int step0;
} wmat__proj_ctx;

typedef struct wmat__projector {
    const char *name;
    const char *summary;
    /* For a (rows, cols) weight: the shape the wrapped optimizer sees
     * (*pn elements) and the floats of the projector's own state. */
    void (*plan)(const wmat__proj_params *pp, int rows, int cols, size_t *pn, size_t *state_floats);
    /* Scratch floats for targets up to these sizes. */
    size_t (*scratch_floats)(const wmat__proj_params *pp, const wmat__proj_sizes *sz);
    /* One update of t: project, run opt's step there, map back. */
    int (*step)(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const wmat__proj_target *t,
                const wmat__optim_hparams *h, const wmat__optimizer *opt);
} wmat__projector;

const wmat__projector *wmat__projector_at(int i);

/* ---- GaLore's pieces (proj_galore.c), shared by the projectors built on
 * it (Fira, GradNormLoRP). The projection side: left (P (m, r), R = P^T G
 * (r, n)) when m <= n, else right (Q (n, r), R = G Q (m, r)). */
typedef struct {
    float *R, *N;   /* (max_pn) projected gradient, update direction */
    float *A;       /* SVD input copy, or the randomized sketch buffers */
    float *T;       /* (n, m) transpose of G for right projections */
    float *S;       /* singular values / QR tau */
    float *U, *VT;  /* SVD factors */
} wmat__galore_scratch;
int wmat__galore_rank(const wmat__proj_params *pp, int rows, int cols);
/* GaLore's plan: pn = r n or m r, state = P or Q. */
void wmat__galore_plan(const wmat__proj_params *pp, int rows, int cols, size_t *pn, size_t *state_floats);
/* Lay GaLore's scratch out from base (NULL: only count); returns its
 * floats, a multiple of 16 (what follows stays 64-byte aligned). */
size_t wmat__galore_carve(const wmat__proj_params *pp, const wmat__proj_sizes *z, float *base,
                          wmat__galore_scratch *s);
/* On a refresh step (ctx->step0 % gap == 0) P from the top-r singular
 * vectors of G (m, n); otherwise nothing. */
int wmat__galore_refresh(const wmat__proj_params *pp, const wmat__proj_ctx *ctx, const wmat__galore_scratch *sc,
                         const float *G, int m, int n, float *P);
/* R = P^T G or G Q */
void wmat__galore_down(const float *P, const float *G, int m, int n, int r, float *R);
/* W += a P N or a N Q^T */
void wmat__galore_up(const float *P, const float *N, int m, int n, int r, float a, float *W);
/* N (pn) = the wrapped optimizer's update direction for gradient R, its
 * states advanced. */
void wmat__galore_direction(const wmat__optimizer *opt, const wmat__optim_hparams *h, void *const *state,
                            const float *R, float *N, size_t pn);
const wmat__projector *wmat__projector_find(const char *name);

/* Registry entries (defined one per file). */
extern const wmat__optimizer wmat__optim_adamw;
extern const wmat__optimizer wmat__optim_sgd;
extern const wmat__optimizer wmat__optim_adamw8bit;
extern const wmat__projector wmat__proj_galore;
extern const wmat__projector wmat__proj_fira;
extern const wmat__projector wmat__proj_gradnormlorp;

#endif
