/* The contract between quantization methods (calibration, RTN, imatrix,
 * GPTQ, AdaDim) and quantized storage (packing, kernels, files, GGUF export).
 *
 * A method turns an fp32 weight W (rows = out, cols = in) into a
 * wmat_qresult: unpacked integer codes plus per-group scales and zero points.
 * The value of a code is  w = scale[g] * (code - zero[g]).
 *
 * Groups:
 *   axis WMAT_QAXIS_IN : a group is `group` consecutive columns (inputs) of
 *       one row. group == cols is one scale per output channel (per-OC).
 *       n_groups = rows * (cols / group), index g = r * (cols/group) + c/group.
 *   axis WMAT_QAXIS_OUT: a group is `group` consecutive rows (outputs) of one
 *       column. group == rows is one scale per input channel (per-IC, AdaDim).
 *       n_groups = cols * (rows / group), index g = c * (rows/group) + r/group.
 * group must divide the length of its axis.
 *
 * Act-order (GPTQ): when perm != NULL, codes are stored with columns in
 * permuted order: column k of the codes holds original input perm[k], and
 * groups are formed over permuted positions. Then y = W x = Wq x[perm].
 *
 * Symmetric schemes have zero = 2^(bits-1) for every group (codes unsigned
 * 0 .. 2^bits-1); asymmetric ones store an integer zero per group (kept as
 * float here; storage rounds to what the packed format holds).
 *
 * A method whose storage is not codes on a uniform grid (binary-coded
 * planes, ...) hands back an object of its own weight kind instead: obj
 * (a struct starting with a wmat_wobj, owned) with rows, cols and bits set
 * and codes/scales/zeros/perm NULL. wmat_qresult_dequant, _free and the
 * model's set_quantized follow it.
 */
#ifndef WMAT_QUANT_H
#define WMAT_QUANT_H

#include "core/internal.h"

typedef enum { WMAT_QAXIS_IN = 0, WMAT_QAXIS_OUT = 1 } wmat_qaxis;

typedef struct {
    int bits;       /* 2..8 */
    int sym;        /* 1 symmetric, 0 asymmetric */
    wmat_qaxis axis;
    int group;      /* group length along axis */
    int64_t rows, cols;
    uint8_t *codes; /* (rows, cols), one code per byte, unpacked; owned */
    float *scales;  /* (n_groups) owned */
    float *zeros;   /* (n_groups) owned */
    int32_t *perm;  /* (cols) or NULL; owned */
    /* A method whose format is no uniform grid (PB-LLM) hands back an object
     * of its own weight kind instead (wop.h; owned, freed with the result);
     * codes, scales, zeros and perm stay NULL, bits/sym/axis/group are 0. */
    void *obj;
    /* A result in a ggml block type (wmat_quantize_params.ggml): the
     * tensor's bytes as that type stores them (owned); codes and obj NULL. */
    wmat_dtype ggml;
    void *gbytes;
} wmat_qresult;

/* 1 when q holds a result (codes or an object). */
static inline int wmat_qresult_done(const wmat_qresult *q) { return q->codes != NULL || q->obj != NULL || q->gbytes != NULL; }

static inline int64_t wmat_qresult_n_groups(const wmat_qresult *q)
{
    return q->axis == WMAT_QAXIS_IN ? q->rows * (q->cols / q->group) : q->cols * (q->rows / q->group);
}
static inline int64_t wmat_qresult_group_of(const wmat_qresult *q, int64_t r, int64_t c)
{
    return q->axis == WMAT_QAXIS_IN ? r * (q->cols / q->group) + c / q->group
                                    : c * (q->rows / q->group) + r / q->group;
}

/* Allocate the arrays of a result (codes zeroed). perm allocated when
 * with_perm. Frees on failure. */
int wmat_qresult_alloc(wmat_qresult *q, int bits, int sym, wmat_qaxis axis, int group, int64_t rows, int64_t cols,
                       int with_perm);
void wmat_qresult_free(wmat_qresult *q);
/* Bytes q's packed form takes (an object: its kind's nbytes), 0 for codes
 * (their size is the packing's). */
uint64_t wmat_qresult_obj_bytes(const wmat_qresult *q);
/* W (rows, cols) in original column order, dequantized. */
void wmat_qresult_dequant(const wmat_qresult *q, float *W);

#endif
