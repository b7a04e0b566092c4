/* Weight matching (git re-basin for LLaMA) and linear mode connectivity
 * (src/merge/align.c, lap.c; docs/MERGING.md, "Weight matching and linear
 * mode connectivity").
 *
 * A LLaMA model computes the same function after permuting
 *   - the residual stream (P_res, dim): columns of the embedding and the
 *     classifier, every RMSNorm weight, input columns of q, k, v, gate, up
 *     and output rows of o and down (RMSNorm is permutation-equivariant);
 *   - per layer, the FFN hidden channels (P_ffn, hidden): rows of gate and
 *     up, columns of down;
 *   - per layer, attention: the KV groups (k and v head blocks move with
 *     the query heads that read them and their column blocks of o), the
 *     query heads inside a group, and the value dimensions of each KV head
 *     (rows of v, the matching columns of o for every query head of the
 *     group). Rows inside a q or k head are never permuted: RoPE pairs
 *     them with distinct frequencies. Heads move as whole blocks of
 *     head_dim rows, so llama2.c's and HF's rotary row orders (which
 *     differ only inside a head) need no special case.
 * Weight matching finds the permutations of B that maximize <A, pi(B)>
 * (equivalently minimize ||A - pi(B)||_F) by coordinate ascent over those
 * groups, each step an exact linear assignment problem. */
#ifndef WMAT_MERGE_ALIGN_H
#define WMAT_MERGE_ALIGN_H

#include "core/internal.h"

/* ---- linear assignment */

/* Bytes of workspace wmat__lap_max needs for size n. */
size_t wmat__lap_ws_bytes(int n);
/* A permutation maximizing sum_i C[i][perm[i]] for C (n, n) row-major:
 * perm[i] is the column given to row i; *value (may be NULL) the maximum.
 * O(n^3). ws: wmat__lap_ws_bytes(n) bytes, or NULL to allocate. A
 * non-finite cost is WMAT_ERR_NUMERIC. n = 0 is an empty assignment. */
int wmat__lap_max(const double *C, int n, int *perm, double *value, void *ws);

/* ---- permutations of a model */

/* Every map reads "position i of the aligned model holds index map[i] of
 * B": pi(B)[i] = B[map[i]]. Attention maps are per aligned KV group j
 * (g = n_heads / n_kv query heads in a group): aligned group j is B's
 * group kv[j]; its query slot s is B's head kv[j] * g + qh[j * g + s];
 * its value dimension e is B's dimension vd[j * head_dim + e] of that KV
 * head. */
typedef struct {
    int dim, hidden, n_layers, n_heads, n_kv, head_dim;
    int *res; /* (dim) */
    int *ffn; /* (n_layers, hidden) */
    int *kv;  /* (n_layers, n_kv) */
    int *qh;  /* (n_layers, n_heads): slot inside the group */
    int *vd;  /* (n_layers, n_kv * head_dim) */
} wmat_align_perm;

/* The identity for a config; free with wmat__align_perm_free. */
int wmat__align_perm_init(wmat_align_perm *p, const wmat_config *c);
void wmat__align_perm_free(wmat_align_perm *p);
/* Replace every map by a uniformly random permutation (seeded). */
void wmat__align_perm_random(wmat_align_perm *p, uint64_t seed);
int wmat__align_perm_is_identity(const wmat_align_perm *p);
/* Entries of all maps that are not the identity (how much was moved). */
int64_t wmat__align_perm_moved(const wmat_align_perm *p);

/* pi(B) as a new fp32 model (B materialized fp32; *out owned by the caller,
 * with a copy of B's tokenizer). It computes the same logits as B. */
int wmat__align_apply(wmat_model *B, const wmat_align_perm *p, wmat_model **out);

/* ---- matching */

typedef struct {
    int iter;            /* 1-based */
    int groups, improved;/* groups visited, and those whose assignment changed */
    double inner;        /* <A, pi(B)> over every tensor */
    double dist;         /* ||A - pi(B)||_F over every tensor */
    double seconds;      /* since the start */
} wmat_align_iter;

typedef struct {
    int max_iter;        /* sweeps over all groups (default 100) */
    uint64_t seed;       /* the random order of groups per sweep */
    const wmat_context *ctx; /* threads (NULL: default) */
    void (*on_iter)(void *user, const wmat_align_iter *it); /* after each sweep, may be NULL */
    void *user;
} wmat_align_params;

wmat_align_params wmat__align_default_params(void);

typedef struct {
    int iters;           /* sweeps run */
    int converged;       /* 1: the last sweep changed nothing */
    int groups;          /* permutation groups per sweep */
    double dist_before, dist_after;   /* ||A - B||, ||A - pi(B)|| */
    double inner_before, inner_after;
    double norm_a, norm_b;
    double seconds;
} wmat_align_report;

/* Find perm (initialized by the caller with wmat__align_perm_init for A's
 * config; the search starts from it) so that pi(B) is close to A. A and B:
 * materialized fp32, the same architecture (else WMAT_ERR_INVALID naming
 * both). rep may be NULL. */
int wmat__align_match(wmat_model *A, wmat_model *B, const wmat_align_params *p, wmat_align_perm *perm,
                      wmat_align_report *rep);

/* ||A - B||_F and <A, B> over every tensor, in double. */
int wmat__align_distance(wmat_model *A, wmat_model *B, double *dist, double *inner);

/* Cosine <A, B> / (||A|| ||B||) per kind of tensor, each kind's tensors
 * taken together: WMAT_ALIGN_ROLE_* (classifier NaN when tied). */
enum {
    WMAT_ALIGN_ROLE_EMBED = 0, WMAT_ALIGN_ROLE_CLASSIFIER, WMAT_ALIGN_ROLE_NORMS,
    WMAT_ALIGN_ROLE_Q, WMAT_ALIGN_ROLE_K, WMAT_ALIGN_ROLE_V, WMAT_ALIGN_ROLE_O,
    WMAT_ALIGN_ROLE_GATE, WMAT_ALIGN_ROLE_UP, WMAT_ALIGN_ROLE_DOWN, WMAT_ALIGN_ROLE_COUNT
};
extern const char *const wmat__align_role_names[WMAT_ALIGN_ROLE_COUNT];
int wmat__align_role_cosines(wmat_model *A, wmat_model *B, double *cos);

/* ---- linear mode connectivity */

/* out = (1 - t) A + t B, tensor by tensor (out, A, B: fp32, one architecture;
 * out may be A or B). */
int wmat__align_lerp(wmat_model *out, wmat_model *A, wmat_model *B, double t);

/* Mean NLL of (1 - t_k) A + t_k B at t_k = k / (n_points - 1), k = 0 ..
 * n_points - 1, on tokens (windows of ctx, at most max_windows; 0: all) into
 * loss[n_points]. The interpolated model lives in memory only. */
int wmat__align_lmc_curve(wmat_model *A, wmat_model *B, int n_points, const int32_t *tokens, size_t n, int ctx,
                          int max_windows, const wmat_context *cx, double *loss);

/* Mean over the 2-D weights (embedding, classifier, the seven linear kinds
 * of every layer) of ||U_A^T U_B||_F^2 / k for the top-k left singular
 * vectors (*left) and the same for the right ones (*right): 1 when the
 * top-k subspaces coincide, about k / n for unrelated ones. */
int wmat__align_sv_overlap(wmat_model *A, wmat_model *B, int k, double *left, double *right);

#endif
