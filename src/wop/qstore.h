/* Quantized storage: packed weights, their kernels, files and GGUF export
 * (private interface; the public part is the "quantized storage" section of
 * wmat.h; the file layout is in docs/FORMATS.md, "Quantized storage").
 *
 * A method produces a wmat_qresult (src/wop/quant.h: unpacked codes, float
 * scales and zeros, optional act-order perm). wmat_qtensor_pack turns it into
 * a wmat_qtensor: codes bit-packed per row, scales fp16, zero points u8,
 * perm i32. wmat_model_set_quantized swaps a model's fp32 tensor for the
 * packed one (dtype WMAT_QPACKED); the runtime then multiplies by it
 * directly (the qpacked kind, src/wop/kind_qpacked.c), and
 * wmat_quant_model_save writes the native directory or a GGUF.
 *
 * Value of a weight, exactly as every kernel computes it:
 *     w[r][k] = f16(scale[g]) * (code[r][k] - zero[g])
 * where k is the stored (permuted) column, g the group of (r, k) as in
 * quant.h, zero[g] = 2^(bits-1) for symmetric schemes and the stored u8 for
 * asymmetric ones. Packing rounds the qresult's float scales to fp16 and its
 * zeros to the nearest integer (they must lie in 0..255); a method that wants
 * its fake-quant to match the packed model bit for bit rounds its scales
 * through wmat_f32_to_f16 itself.
 *
 * Packed code layout (cols must be a multiple of 32; codes are packed along
 * the stored columns of each row, in chunks of 32 codes, whatever the group
 * axis; row r starts at codes + r * row_bytes, row_bytes = cols * bits / 8):
 *   8 bits: 32 bytes, byte j = code j.
 *   4 bits: 16 bytes, byte j = code j | code (j + 16) << 4  (ggml's Q4_0 order).
 *   2 bits:  8 bytes, byte j = code j | code (j+8) << 2 | code (j+16) << 4 | code (j+24) << 6.
 *   3 bits: 12 bytes: bytes 0..7 the low two bits as the 2-bit layout, bytes
 *           8..11 a little-endian u32 whose bit i is bit 2 of code i.
 *   Other widths (5, 6, 7 bits) are stored in 8-bit chunks (one code per byte).
 * Groups along inputs (WMAT_QAXIS_IN) need group % 32 == 0; groups along
 * outputs (WMAT_QAXIS_OUT) any divisor of rows.
 */
#ifndef WMAT_QSTORE_H
#define WMAT_QSTORE_H

#include "quant.h"
#include "wop.h"

extern const wmat_wkind wmat__wkind_qpacked;

/* A packed quantized matrix (rows = out, cols = in). The struct and, for a
 * tensor built by wmat_qtensor_pack, its arrays are ONE allocation (freed by
 * wmat_qtensor_free, which is wmat__free); for a tensor loaded from a native
 * directory the arrays point into the model's file mapping. A model tensor of
 * dtype WMAT_QPACKED has data = a wmat_qtensor * and WMAT_TF_OWNED set, so
 * wmat_model_free releases it like any owned tensor. */
struct wmat_qtensor {
    wmat_wobj obj;    /* the "qpacked" weight kind (src/wop/kind_qpacked.c) */
    int bits;         /* 2..8 */
    int sym;          /* 1: zero = 2^(bits-1), zeros == NULL */
    wmat_qaxis axis;
    int group;
    int64_t rows, cols;
    int64_t n_groups; /* as wmat_qresult_n_groups */
    int64_t chunk_bytes; /* bytes per 32 codes: 8, 12, 16 or 32 */
    int64_t row_bytes;   /* cols / 32 * chunk_bytes */
    const uint8_t *codes;   /* (rows, row_bytes) */
    const uint16_t *scales; /* (n_groups) fp16 bits */
    const uint8_t *zeros;   /* (n_groups) or NULL when sym */
    const int32_t *perm;    /* (cols) or NULL */
};

/* Bytes per 32 codes of a bit width (the stored width: 5..7 use 32). */
int64_t wmat_qpack_chunk_bytes(int bits);

/* Check that a qresult can be packed (bits 2..8, cols % 32 == 0, group rules,
 * zeros integral in 0..255, scales finite in fp16, perm a permutation).
 * `what` names the tensor in messages. WMAT_ERR_UNSUPPORTED / INVALID. */
int wmat_qresult_check_packable(const wmat_qresult *q, const char *what);

/* Pack a qresult. *out is a new tensor (free with wmat_qtensor_free). */
int wmat_qtensor_pack(const wmat_qresult *q, wmat_qtensor **out);
void wmat_qtensor_free(wmat_qtensor *qt);
/* Unpack to a fresh qresult (arrays allocated; wmat_qresult_free). Scales
 * come back as the fp16 values, zeros as floats. */
int wmat_qtensor_unpack(const wmat_qtensor *qt, wmat_qresult *q);
/* W (rows, cols) in ORIGINAL column order, dequantized (reference code). */
void wmat_qtensor_dequant(const wmat_qtensor *qt, float *W);
/* Dequantize rows r0 .. r0+nr into W (nr, cols), original column order. */
void wmat_qtensor_dequant_rows(const wmat_qtensor *qt, int64_t r0, int64_t nr, float *W);
/* Unpack row r's codes (cols bytes, stored column order); reference code. */
void wmat__qunpack_row(const wmat_qtensor *qt, int64_t r, uint8_t *codes);
/* Bytes of the packed arrays (codes + scales + zeros + perm). */
uint64_t wmat_qtensor_nbytes(const wmat_qtensor *qt);

/* The packed tensor of a model tensor, NULL if it is not WMAT_QPACKED. */
const wmat_qtensor *wmat_tensor_qtensor(const wmat_tensor *t);

/* ---- kernels (src/wop/qkernels.c)
 * y (rows) = W x (+= when accumulate); x is in original column order.
 * Y (T, rows) = X (T, cols) W^T (+= when accumulate).
 * Every setting is an argument (no process-wide setting is read): `level`
 * is the ISA (WMAT_QK_*; a level above what the CPU runs is lowered to the
 * best it does), `act8` the int8-activation choice, `gemm` and n_threads
 * the batched path's GEMM backend and threads. The qpacked weight kind
 * passes them from its caller's wmat_wexec; tests and benchmarks pass them
 * explicitly (wmat__qkernel_best() for the fastest level).
 *
 * int8 activations (act8 != 0): on a tensor with groups along inputs the
 * one-row product quantizes x[perm] once per call to int8 per block of 32
 * (ggml's Q8_0 rule: d = max|x|/127, round) and computes each block's dot
 * product in integers (AVX-512 VNNI vpdpbusd; the reference twin at level
 * REF):
 *     y[r] = sum_blocks f16(s_g) * d_b * (sum_j c_j xq_j - z_g sum_j xq_j)
 * as llama.cpp does for Q4_0/Q8_0 on CPUs. It is about twice as fast as the
 * fp32-activation kernel (which is compute-bound, not memory-bound, on this
 * hardware) and adds the activation rounding (~1e-3 relative on a dot
 * product). On a CPU without AVX-512 VNNI at a fast level, or for groups
 * along outputs, the fp32-activation kernel runs (wmat__qkernel_act8_at
 * says which). The batched path (T >= 3: eval, calibration) never uses it.
 * Runtimes take act8 from their context (-1: on unless WMAT_QACT8=0). */
void wmat__qmatvec_x(float *y, const float *x, const wmat_qtensor *qt, int accumulate, int n_threads, int level, int act8);
/* Rows [r0, r1) of y = W x on the calling thread (what wmat__qmatvec_x splits). */
void wmat__qmatvec_rows_x(float *y, const float *x, const wmat_qtensor *qt, int64_t r0, int64_t r1, int accumulate,
                          int level, int act8);
void wmat__qmatmul_x(float *Y, const float *X, const wmat_qtensor *qt, int T, int accumulate, int n_threads, int level,
                     int act8, wmat_gemm_backend gemm);
/* ISA levels: 0 reference C, 2 AVX2+FMA, 3 AVX-512 (F+BW+VL). */
#define WMAT_QK_REF 0
#define WMAT_QK_AVX2 2
#define WMAT_QK_AVX512 3
/* Best level this CPU runs. */
int wmat__qkernel_best(void);
/* 1 if the one-row product at `level` with `act8` uses int8 activations
 * (for groups along inputs). */
int wmat__qkernel_act8_at(int level, int act8);
/* The name of a level ("ref", "avx2", "avx512"). */
const char *wmat__qkernel_name(int level);

#endif
