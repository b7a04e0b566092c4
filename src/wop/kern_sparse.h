/* Sparse weights as a bitmap and the kept values (the storage of the `nm`
 * and `sparse` kinds, kind_sparse.c), their kernels and mask selection.
 *
 * Layout of a (rows, cols) matrix:
 *   mask  rows x mb bytes (mb = ceil(cols / 8)): bit b of byte k of row r
 *         says whether W[r][8k + b] is kept; bits past cols are 0;
 *   vals  the kept values (f32 or f16) row by row in column order; row r
 *         starts at off[r] (unstructured) or at r * per_row (N:M, where
 *         every row keeps the same count).
 * A bitmap costs 1 bit per weight, less than a u16 column index per kept
 * value (16 bits x density) whenever more than 1/16 of the weights are
 * kept, and it serves N:M too: with M in {4, 8} and 2N = M every mask
 * byte has exactly 4 bits set (2:4: two groups, 4:8: one), so the kept
 * values of 16 inputs are 8 consecutive floats and the decode kernel
 * gathers their inputs with two in-register permutes per 8 values.
 *
 * Kernels exist as plain C (the reference twin) and AVX2+FMA+F16C, picked
 * by the `isa` argument (lowered to what the CPU runs). */
#ifndef WMAT_KERN_SPARSE_H
#define WMAT_KERN_SPARSE_H

#include "wop.h"

typedef struct {
    int64_t rows, cols;
    const uint8_t *mask;  /* rows x mask_bytes */
    int64_t mask_bytes;   /* ceil(cols / 8) */
    const void *vals;     /* kept values, vdt */
    wmat_dtype vdt;       /* WMAT_F32 or WMAT_F16 */
    const int32_t *off;   /* rows + 1 offsets into vals, or NULL: row r at r * per_row */
    int64_t per_row;
    int half;             /* every mask byte holds exactly 4 kept values (N:M with 2N = M) */
} wmat_spm;

/* First value index of row r. */
static inline int64_t wmat__spm_row_start(const wmat_spm *s, int64_t r) { return s->off ? s->off[r] : r * s->per_row; }

/* y[r] = dot(row r, x) for r in [r0, r1), or += when acc. */
void wmat__spm_rows(const wmat_spm *s, const float *x, float *y, int64_t r0, int64_t r1, int acc, int isa);
/* Rows r0..r0+nr-1 as dense fp32 (nr, cols). */
void wmat__spm_dequant(const wmat_spm *s, int64_t r0, int64_t nr, float *out);
/* Batched products on dequantized row tiles (GEMM on ws). */
size_t wmat__spm_ws_bytes(const wmat_spm *s, int T, const wmat_wexec *ex);
void wmat__spm_forward(const wmat_spm *s, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex);
void wmat__spm_backward(const wmat_spm *s, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex);

/* ---- masks (1 = kept, one byte per weight), by a score (larger = more
 * important); ties keep the lower column. */
/* Keep the `keep` highest scores of each row (0 <= keep <= cols). */
void wmat__mask_row_topk(const float *score, int64_t rows, int64_t cols, int64_t keep, uint8_t *mask);
/* Keep the n highest scores of each group of m consecutive columns of a
 * row (cols % m == 0). */
void wmat__mask_nm(const float *score, int64_t rows, int64_t cols, int n, int m, uint8_t *mask);

/* ---- constructors (owned objects for wmat__tensor_own_obj / _set_obj).
 * W's entries where mask is 1 are stored (mask NULL: W's nonzeros); the
 * rest are zero. Values are stored as vdt (f32 or f16). */
int wmat__sparse_create(const float *W, const uint8_t *mask, int64_t rows, int64_t cols, wmat_dtype vdt, void **obj);
/* N:M (M in {4, 8}, 1 <= N < M, cols % M == 0): a group may keep fewer
 * than N (the rest stored as zeros), never more. */
int wmat__nm_create(const float *W, const uint8_t *mask, int64_t rows, int64_t cols, int n, int m, wmat_dtype vdt,
                    void **obj);

/* The storage of an `nm` or `sparse` weight; NULL for a tensor of another kind. */
const wmat_spm *wmat__spm_of(const wmat_tensor *t);

#endif
