/* Weight signatures (src/merge/signature.c, docs/MERGING.md "Weight
 * signatures"): the delta of a fine-tune against its base, optionally made
 * orthogonal per tensor to a clean fine-tune's delta (robust weight
 * signatures) and optionally truncated to its top-r singular part per
 * matrix, stored small; then added back to the base with a coefficient,
 * alone or several at once.
 *
 * The file is a safetensors file: a tensor NAME (the base's shape) holds a
 * full delta, NAME.A (rows, r) = U_r S_r and NAME.B (r, cols) = V_r^T hold a
 * truncated one (kept only when r (rows + cols) < rows cols, else the full
 * delta is smaller and stored instead), in f32, f16 or bf16. __metadata__
 * says what it is (format "wmat.signature", version 1), the shape of the
 * base it applies to (key "config": dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, head_dim, tied_embeddings), and where it came
 * from (base, finetune, against, rank, layers). Tensors left out (layers)
 * are unchanged by apply. */
#ifndef WMAT_SIGNATURE_H
#define WMAT_SIGNATURE_H

#include "core/internal.h"

typedef struct {
    int rank;              /* 0: the full delta; else the top-`rank` singular part of each matrix */
    const char *layers;    /* NULL: every tensor; else "0-1,4,embed,head" (blocks; the token
                            * embedding; the final norm and the classifier) */
    const char *against;   /* NULL, or a clean fine-tune: each delta minus its projection on clean - base */
    wmat_dtype dtype;      /* storage: WMAT_F32, WMAT_F16 or WMAT_BF16 */
    const wmat_context *ctx;
} wmat_sig_params;

typedef struct {
    char name[WMAT_NAME_MAX];
    int64_t rows, cols;
    int rank;              /* stored rank; -1: full */
    uint64_t bytes;        /* bytes stored for it */
    double delta_norm;     /* ||delta|| (after the projection, when against) */
    double rel_err;        /* ||delta - stored|| / ||delta|| (the singular values' tail) */
} wmat_sig_tensor;

typedef struct {
    int n;
    wmat_sig_tensor *t;    /* owned; wmat__sig_report_free */
    uint64_t bytes;        /* tensor bytes stored */
    uint64_t dense_bytes;  /* the same tensors as a full fp32 delta */
    uint64_t file_bytes;
} wmat_sig_report;

void wmat__sig_report_free(wmat_sig_report *r);

/* sig = ft - base (see above) into out (atomically). ft, base (and against)
 * must have the same architecture and tensors: else WMAT_ERR_INVALID naming
 * both files. rep may be NULL. */
int wmat__sig_extract(const char *ft, const char *base, const char *out, const wmat_sig_params *p, wmat_sig_report *rep);

/* out = base + sum_i alpha_i sig_i, written in out_format (WMAT_FMT_UNKNOWN:
 * by the path as `wmat merge` does) with out_dtype weights, atomically;
 * tokenizer_path: the base's llama2.c tokenizer (NULL: found beside it). A
 * signature made for another shape is refused before anything is written:
 * WMAT_ERR_INVALID naming the signature, the base and the difference. */
int wmat__sig_apply(const char *base, int n, const char *const *sigs, const double *alpha, const char *out,
                    wmat_format out_format, wmat_dtype out_dtype, const char *tokenizer_path, const wmat_context *ctx);

/* What a signature file holds: its metadata (key, value) and its tensors. */
typedef struct {
    int n_meta;
    const char *const *keys, *const *values; /* owned by the object */
    wmat_sig_report rep;  /* per tensor; rel_err and delta_norm are 0 (not stored) */
    void *priv;
} wmat_sig_info;

int wmat__sig_info(const char *path, wmat_sig_info *info);
void wmat__sig_info_free(wmat_sig_info *info);

#endif
