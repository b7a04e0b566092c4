/* Element-wise and matrix-vector kernels of the fp32 runtime. */
#ifndef WMAT_KERNELS_H
#define WMAT_KERNELS_H

#include <stddef.h>

#include "wop/kern_f32.h" /* wmat__dot and the fp32 row kernels */

/* out[r] = w * x[r] / rms(x[r]) for T rows of n; out may equal x. rstd
 * (T): 1 / rms(x[r]) where not NULL (what the trainer's backward needs).
 * fast: the sum of squares in 16 partial sums (vectorized; the runtime's
 * batched path), else in order (run.c's expressions: decode, training). */
void wmat__rmsnorm(float *out, float *rstd, const float *x, const float *w, int T, int n, float eps, int fast,
                   int n_threads);
/* The same with the sum of squares divided by div instead of n (a sliced
 * model's norms keep the divisor of the width it was sliced from);
 * wmat__rmsnorm is div = n. */
void wmat__rmsnorm_div(float *out, float *rstd, const float *x, const float *w, int T, int n, int div, float eps,
                       int fast, int n_threads);
/* RoPE for rows r = 0..n_rows-1 at position r % T of q (n_heads heads,
 * rows qs apart) and k (n_kv_heads, ks apart): pairs (2i, 2i+1) of each
 * head rotated by cos_tab / sin_tab (T x hd/2), run.c's expressions; with
 * fast, AVX-512 where hd is a multiple of 16 (FMA: not bit-equal to run.c). */
void wmat__rope_rows(float *q, int qs, int n_heads, float *k, int ks, int n_kv_heads, int n_rows, int T, int hd,
                     const float *cos_tab, const float *sin_tab, int fast, int n_threads);
/* RoPE on the heads of one row with run.c's float expressions (decode);
 * _span rotates only the values [a, b) of the row (a, b even). */
void wmat__rope_row(float *row, int n_heads, int hd, const float *cs, const float *sn);
void wmat__rope_span(float *row, int a, int b, int hd, const float *cs, const float *sn);
/* In-place softmax of n values. */
void wmat__softmax(float *x, int n);
/* Rows first..first+rows-1 of a causal score matrix, stored from s with
 * leading dimension ld and `cols` columns: row i keeps keys 0..first+i
 * (softmax with a vectorized exp), the rest are zeroed. */
void wmat__causal_softmax_block(float *s, int rows, int cols, int ld, int first);
/* One head of one query over n cached positions: scores q.k_t * scale,
 * softmax (libm expf, as run.c), out = sum_t p_t v_t. k and v rows are
 * `stride` floats apart; att is scratch of n floats. */
void wmat__attend_one(float *out, const float *q, const float *k, const float *v, int stride, int n, int hd,
                      float scale, float *att);
/* Causal attention of one head over a window of T positions from position
 * 0: out[t] = sum_{j <= t} softmax_j(scale q_t . k_j) v_j (vectorized exp).
 * Rows of q, out are qs, os floats apart; rows of k and v ks. scratch holds
 * wmat__causal_attention_scratch(T, hd) floats. Returns 0, doing nothing,
 * where it has no kernel (head dim not a multiple of 16 or above 128, no
 * AVX-512): the caller then uses GEMMs. */
int wmat__causal_attention(float *out, int os, const float *q, int qs, const float *k, const float *v, int ks, int T,
                           int hd, float scale, float *scratch);
size_t wmat__causal_attention_scratch(int T, int hd);
/* out[i] = silu(a[i]) * b[i] (out may equal a): with fast, a vectorized
 * exp (about 2 ulp from expf; the batched path), else libm's expf in
 * run.c's expression (decode, training). */
void wmat__swiglu(float *out, const float *a, const float *b, size_t n, int fast, int n_threads);
/* -log softmax(logits)[target] over n logits, vectorized exp (~2 ulp),
 * the normalizer summed in double */
double wmat__nll_row(const float *logits, int n, int target);
/* out[i] (rows[i]) = W[i] x (or += when accumulate) for n matrices of the
 * same width, in one parallel region (rows of all matrices split over the
 * threads). */
void wmat__matvec_multi(int n, float *const *out, const float *const *W, const int *rows, const float *x, int cols,
                        int accumulate, int n_threads);
/* Thread t of T's share of wmat__matvec_multi, for callers already inside
 * a parallel region: rows [g0, g1) of the matrices' concatenated rows
 * (wmat__matvec_part_range: contiguous, multiples of 16). */
void wmat__matvec_multi_part(int n, float *const *out, const float *const *W, const int *rows, const float *x, int cols,
                             int accumulate, int t, int T);
void wmat__matvec_part_range(int total, int t, int T, int *g0, int *g1);
/* out (rows) = W (rows, cols) x (cols), or out += ... when accumulate. */
/* The ISA level (WMAT_ISA_*) of the decode kernels: the best the CPU has,
 * or the one WMAT_MATVEC=ref|avx2|avx512 names (tests and benchmarks). */
int wmat__decode_isa(void);
void wmat__matvec(float *out, const float *W, const float *x, int rows, int cols, int accumulate, int n_threads);

#endif
