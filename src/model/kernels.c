#include "kernels.h"

#include "wop/wop.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* The float expressions follow llama2.c's run.c (sum in float, +eps, 1/sqrt)
 * so that decode reproduces its outputs. */
/* The sum of squares of one row: in order (run.c's, decode and training)
 * or in 16 partial sums (vectorized, the batched path). */
static float sumsq_exact(const float *x, int n)
{
    float ss = 0.0f;
    for (int j = 0; j < n; j++) ss += x[j] * x[j];
    return ss;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static float sumsq_fast(const float *x, int n)
{
    float s16[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16)
        for (int k = 0; k < 16; k++) s16[k] += x[j + k] * x[j + k];
    float ss = 0.0f;
    for (int k = 0; k < 16; k++) ss += s16[k];
    for (; j < n; j++) ss += x[j] * x[j];
    return ss;
}

void wmat__rmsnorm(float *out, float *rstd, const float *x, const float *w, int T, int n, float eps, int fast,
                   int n_threads)
{
    wmat__rmsnorm_div(out, rstd, x, w, T, n, n, eps, fast, n_threads);
}

void wmat__rmsnorm_div(float *out, float *rstd, const float *x, const float *w, int T, int n, int div, float eps,
                       int fast, int n_threads)
{
#pragma omp parallel for num_threads(n_threads) schedule(static) if (T > 1 && (long)T * n >= 32768)
    for (int t = 0; t < T; t++) {
        const float *xr = x + (size_t)t * n;
        float *o = out + (size_t)t * n;
        float ss = fast ? sumsq_fast(xr, n) : sumsq_exact(xr, n);
        ss /= (float)div;
        ss += eps;
        ss = 1.0f / sqrtf(ss);
        if (rstd) rstd[t] = ss;
        for (int j = 0; j < n; j++) o[j] = w[j] * (ss * xr[j]);
    }
}

void wmat__softmax(float *x, int n)
{
    float max = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max) max = x[i];
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

/* exp(x) without branches so loops over it vectorize: x = n ln2 + r with
 * |r| <= ln2/2, a degree-6 polynomial for e^r, 2^n through the exponent
 * bits. Relative error about 2 ulp on [-87, 88]; below -87 it returns ~0. */
static inline float exp_fast(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round to nearest by the 1.5 * 2^23 shifter: roundf() itself does not
     * vectorize (no vector instruction rounds half away from zero), which
     * made every call a libm call */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, 4);
    return p * scale;
}

/* max of x[0..n) in 16 partial maxima (a single running max does not
 * vectorize without -ffast-math); inlined into each ISA clone */
static inline float max_fast(const float *x, int n)
{
    float m16[16];
    for (int k = 0; k < 16; k++) m16[k] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) m16[k] = x[i + k] > m16[k] ? x[i + k] : m16[k];
    float max = x[0];
    for (int k = 0; k < 16; k++) max = m16[k] > max ? m16[k] : max;
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    return max;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void softmax_fast(float *x, int n)
{
    /* 16 partial sums: without -ffast-math a single float reduction keeps
     * the compiler from vectorizing the loop around it */
    float s16[16];
    const float max = max_fast(x, n);
    int i;
    for (i = 0; i < n; i++) x[i] = exp_fast(x[i] - max);
    for (int k = 0; k < 16; k++) s16[k] = 0.0f;
    for (i = 0; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++) s16[k] += x[i + k];
    float sum = 0.0f;
    for (int k = 0; k < 16; k++) sum += s16[k];
    for (; i < n; i++) sum += x[i];
    const float inv = 1.0f / sum;
    for (i = 0; i < n; i++) x[i] *= inv;
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
double wmat__nll_row(const float *logits, int n, int target)
{
    /* exps in float (vectorized), summed in 16 double lanes */
    const float max = max_fast(logits, n);
    int i;
    double s16[16] = {0};
    for (i = 0; i + 16 <= n; i += 16) {
        float e16[16];
        for (int k = 0; k < 16; k++) e16[k] = exp_fast(logits[i + k] - max);
        for (int k = 0; k < 16; k++) s16[k] += (double)e16[k];
    }
    double sum = 0.0;
    for (int k = 0; k < 16; k++) sum += s16[k];
    for (; i < n; i++) sum += exp_fast(logits[i] - max);
    return log(sum) + (double)max - (double)logits[target];
}

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define WMAT_KERNELS_X86 1

/* The ISA of the decode kernels (matvec and attention): the best the CPU
 * has, or WMAT_MATVEC=ref|avx2|avx512 for tests and benchmarks (a level the
 * CPU lacks falls back to the best it has below it). Decided once. */
enum { ISA_REF = 0, ISA_AVX2 = 2, ISA_AVX512 = 3 };
static int decode_isa(void)
{
    static int isa = -1; /* a probe cache: the same value from every thread, stored atomically */
    int v = __atomic_load_n(&isa, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    __builtin_cpu_init();
    const int has512 = __builtin_cpu_supports("avx512f");
    const int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const char *force = getenv("WMAT_MATVEC");
    v = has512 ? ISA_AVX512 : has2 ? ISA_AVX2 : ISA_REF;
    if (force && !strcmp(force, "ref")) v = ISA_REF;
    else if (force && !strcmp(force, "avx2") && has2) v = ISA_AVX2;
    __atomic_store_n(&isa, v, __ATOMIC_RELAXED);
    return v;
}

/* r[i] = sum of the 16 lanes of v[i], i = 0..15, in one vector: pairwise
 * unpack/shuffle levels instead of sixteen horizontal reductions. */
__attribute__((target("avx512f"))) static inline __m512 hsum16x16(const __m512 v[16])
{
    __m512 t[4];
    for (int g = 0; g < 4; g++) {
        const __m512 *w = v + 4 * g;
        const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(w[0], w[1]), _mm512_unpackhi_ps(w[0], w[1]));
        const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(w[2], w[3]), _mm512_unpackhi_ps(w[2], w[3]));
        /* per 128-bit lane: [w0, w1, w2, w3] partial sums */
        t[g] = _mm512_add_ps(_mm512_shuffle_ps(s01, s23, 0x44), _mm512_shuffle_ps(s01, s23, 0xEE));
    }
    const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
    const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xDD));
}

/* q . k_t as 16 lane partial sums, q in nv registers. */
__attribute__((target("avx512f"))) static inline __m512 qk_lanes(const __m512 *qv, int nv, const float *kt)
{
    __m512 a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kt));
    for (int i = 1; i < nv; i++) a = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(kt + 16 * i), a);
    return a;
}

/* wmat__attend_one for head dimensions that are multiples of 16 (up to
 * 256): scores of 16 positions per step, q held in registers, the weighted
 * sum of V in registers. The softmax is the precise one run.c uses. */
__attribute__((target("avx512f"))) static void attend_one_avx512(float *out, const float *q, const float *k,
                                                                 const float *v, int stride, int n, int hd,
                                                                 float scale, float *att)
{
    const int nv = hd / 16;
    __m512 qv[16];
    for (int i = 0; i < nv; i++) qv[i] = _mm512_loadu_ps(q + 16 * i);
    const __m512 sc = _mm512_set1_ps(scale);
    int t = 0;
    for (; t + 16 <= n; t += 16) {
        __m512 d[16];
        for (int u = 0; u < 16; u++) d[u] = qk_lanes(qv, nv, k + (size_t)(t + u) * stride);
        _mm512_storeu_ps(att + t, _mm512_mul_ps(hsum16x16(d), sc));
    }
    for (; t < n; t++) att[t] = _mm512_reduce_add_ps(qk_lanes(qv, nv, k + (size_t)t * stride)) * scale;
    wmat__softmax(att, n);
    __m512 o[16];
    for (int i = 0; i < nv; i++) o[i] = _mm512_setzero_ps();
    for (t = 0; t < n; t++) {
        const float *vt = v + (size_t)t * stride;
        const __m512 a = _mm512_set1_ps(att[t]);
        for (int i = 0; i < nv; i++) o[i] = _mm512_fmadd_ps(a, _mm512_loadu_ps(vt + 16 * i), o[i]);
    }
    for (int i = 0; i < nv; i++) _mm512_storeu_ps(out + 16 * i, o[i]);
}


/* RoPE on the heads of one row: pairs (2i, 2i+1) rotated by (cs[i], sn[i]),
 * 16 values at a time: x * [c0 c0 c1 c1 ..] + swap(x) * [-s0 s0 -s1 s1 ..] */
__attribute__((target("avx512f"))) static void rope_heads_avx512(float *row, int n_heads, int hd, const float *cdup,
                                                                 const float *sdup)
{
    for (int h = 0; h < n_heads; h++) {
        float *v = row + (size_t)h * hd;
        for (int j = 0; j < hd; j += 16) {
            const __m512 x = _mm512_loadu_ps(v + j);
            const __m512 sw = _mm512_permute_ps(x, 0xB1);
            _mm512_storeu_ps(v + j, _mm512_fmadd_ps(x, _mm512_loadu_ps(cdup + j), _mm512_mul_ps(sw, _mm512_loadu_ps(sdup + j))));
        }
    }
}

/* ---- batched causal attention, one head, head dimension 16..128 (x16).
 * Eight query rows at a time against K transposed (head dim x keys, keys
 * padded to 32): a score is a broadcast of q times a vector of 16 keys, so
 * the dot products need no horizontal sums, and each row block computes
 * keys only up to its own last row (the masked triangle costs < 8 keys a
 * row instead of the up-to-63 of a GEMM per 64-row block). */
#define CA_ROWS 8

static size_t ca_pad(int T) { return ((size_t)T + 31) & ~(size_t)31; }

/* S[r][c..c+16*NB) = scale * q_r . Kt[:, c..], r < CA_ROWS */
__attribute__((target("avx512f"), always_inline)) static inline void ca_scores(float *S, size_t Tp, const float *const *qr,
                                                                                 const float *Kt, int hd, int c, int NB,
                                                                                 __m512 sc)
{
    __m512 acc[CA_ROWS][2];
#pragma GCC unroll 8
    for (int r = 0; r < CA_ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int d = 0; d < hd; d++) {
        const float *kd = Kt + (size_t)d * Tp + c;
        const __m512 b0 = _mm512_loadu_ps(kd);
        const __m512 b1 = NB == 2 ? _mm512_loadu_ps(kd + 16) : b0;
#pragma GCC unroll 8
        for (int r = 0; r < CA_ROWS; r++) {
            const __m512 a = _mm512_set1_ps(qr[r][d]);
            acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
            if (NB == 2) acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < CA_ROWS; r++) {
        _mm512_storeu_ps(S + r * Tp + c, _mm512_mul_ps(acc[r][0], sc));
        if (NB == 2) _mm512_storeu_ps(S + r * Tp + c + 16, _mm512_mul_ps(acc[r][1], sc));
    }
}

/* exp_fast's algorithm on 16 lanes */
__attribute__((target("avx512f"), always_inline)) static inline __m512 exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
    const __m512 shifter = _mm512_set1_ps(12582912.0f);
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shifter), shifter);
    const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x));
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* row[0..n) <- exp(row - max), row[n..nk) <- 0 (nk <= n rounded up to 16);
 * returns 1 / sum */
__attribute__((target("avx512f"))) static float ca_softmax_row(float *row, int n)
{
    const int full = n & ~15;
    const __mmask16 tail = (__mmask16)((1u << (n - full)) - 1u);
    __m512 m = _mm512_set1_ps(-INFINITY);
    for (int j = 0; j < full; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(row + j));
    if (tail) m = _mm512_mask_max_ps(m, tail, m, _mm512_maskz_loadu_ps(tail, row + full));
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < full; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(row + j), mx));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(row + j, e);
    }
    if (full < n || (n & 15)) {
        const __m512 e = _mm512_maskz_mov_ps(tail, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, row + full), mx)));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(row + full, e); /* zeros past n, up to the next multiple of 16 */
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

/* out rows r0..r0+R-1 of the block = inv[r] * sum_j P[r][j] v_j over
 * j < nk, R * NV <= 16 accumulators; every loop is unrolled so they stay
 * in registers */
#define CA_PV(R, NV)                                                                                                   \
    __attribute__((target("avx512f"))) static void ca_pv_##R##x##NV(float *out, int os, const float *S, size_t Tp,  \
                                                                     const float *v, int ks, int nk, int rows,        \
                                                                     const float *inv)                                \
    {                                                                                                                  \
        __m512 acc[R][NV];                                                                                             \
        _Pragma("GCC unroll 16") for (int r = 0; r < R; r++) _Pragma("GCC unroll 16") for (int u = 0; u < NV; u++)   \
            acc[r][u] = _mm512_setzero_ps();                                                                           \
        for (int j = 0; j < nk; j++) {                                                                                 \
            const float *vj = v + (size_t)j * ks;                                                                      \
            __m512 vv[NV];                                                                                             \
            _Pragma("GCC unroll 16") for (int u = 0; u < NV; u++) vv[u] = _mm512_loadu_ps(vj + 16 * u);               \
            _Pragma("GCC unroll 16") for (int r = 0; r < R; r++)                                                       \
            {                                                                                                          \
                const __m512 a = _mm512_set1_ps(S[(size_t)r * Tp + j]);                                                \
                _Pragma("GCC unroll 16") for (int u = 0; u < NV; u++) acc[r][u] = _mm512_fmadd_ps(a, vv[u], acc[r][u]); \
            }                                                                                                          \
        }                                                                                                              \
        for (int r = 0; r < R && r < rows; r++)                                                                        \
            for (int u = 0; u < NV; u++)                                                                               \
                _mm512_storeu_ps(out + (size_t)r * os + 16 * u, _mm512_mul_ps(acc[r][u], _mm512_set1_ps(inv[r])));    \
    }
CA_PV(8, 1)
CA_PV(8, 2)
CA_PV(4, 4)
CA_PV(2, 8)
#undef CA_PV

__attribute__((target("avx512f"))) static void causal_attention_avx512(float *out, int os, const float *q, int qs,
                                                                       const float *k, const float *v, int ks, int T,
                                                                       int hd, float scale, float *scratch)
{
    const size_t Tp = ca_pad(T);
    float *Kt = scratch, *S = scratch + (size_t)hd * Tp;
    for (int d = 0; d < hd; d++) {
        float *row = Kt + (size_t)d * Tp;
        for (int j = 0; j < T; j++) row[j] = k[(size_t)j * ks + d];
        for (size_t j = (size_t)T; j < Tp; j++) row[j] = 0.0f;
    }
    const __m512 sc = _mm512_set1_ps(scale);
    const int NV = hd / 16;
    float inv[CA_ROWS];
    for (int i0 = 0; i0 < T; i0 += CA_ROWS) {
        const int rows = T - i0 < CA_ROWS ? T - i0 : CA_ROWS;
        const float *qr[CA_ROWS];
        for (int r = 0; r < CA_ROWS; r++) qr[r] = q + (size_t)(i0 + (r < rows ? r : rows - 1)) * qs;
        const int nk = i0 + rows, nkp = (nk + 15) & ~15;
        int c = 0;
        for (; c + 32 <= nkp; c += 32) ca_scores(S, Tp, qr, Kt, hd, c, 2, sc);
        if (c < nkp) ca_scores(S, Tp, qr, Kt, hd, c, 1, sc);
        /* row r attends to keys 0..i0+r; the rest of its first nkp get 0 */
        for (int r = 0; r < CA_ROWS; r++) {
            float *row = S + (size_t)r * Tp;
            const int n = r < rows ? i0 + r + 1 : 1;
            inv[r] = ca_softmax_row(row, n);
            for (int j = (n + 15) & ~15; j < nkp; j += 16) _mm512_storeu_ps(row + j, _mm512_setzero_ps());
        }
        float *ob = out + (size_t)i0 * os;
        switch (NV) {
        case 1: ca_pv_8x1(ob, os, S, Tp, v, ks, nk, rows, inv); break;
        case 2: ca_pv_8x2(ob, os, S, Tp, v, ks, nk, rows, inv); break;
        case 4:
            for (int r0 = 0; r0 < rows; r0 += 4)
                ca_pv_4x4(ob + (size_t)r0 * os, os, S + (size_t)r0 * Tp, Tp, v, ks, i0 + (r0 + 4 < rows ? r0 + 4 : rows),
                          rows - r0, inv + r0);
            break;
        case 8:
            for (int r0 = 0; r0 < rows; r0 += 2)
                ca_pv_2x8(ob + (size_t)r0 * os, os, S + (size_t)r0 * Tp, Tp, v, ks, i0 + (r0 + 2 < rows ? r0 + 2 : rows),
                          rows - r0, inv + r0);
            break;
        default: /* 3, 5, 6, 7: never taken (the dispatcher allows 1, 2, 4, 8) */
            break;
        }
    }
}

#endif

/* Head dimensions are small (8..128): the dot products are inlined with
 * eight partial sums, and the whole function is cloned per ISA. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void attend_one_c(float *out, const float *q, const float *k, const float *v, int stride, int n, int hd,
                      float scale, float *att)
{
    for (int t = 0; t < n; t++) {
        const float *kt = k + (size_t)t * stride;
        float acc[8] = {0};
        int i = 0;
        for (; i + 8 <= hd; i += 8)
            for (int j = 0; j < 8; j++) acc[j] += q[i + j] * kt[i + j];
        float d = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (; i < hd; i++) d += q[i] * kt[i];
        att[t] = d * scale;
    }
    wmat__softmax(att, n);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int t = 0; t < n; t++) {
        const float *vt = v + (size_t)t * stride;
        const float a = att[t];
        for (int i = 0; i < hd; i++) out[i] += a * vt[i];
    }
}

void wmat__attend_one(float *out, const float *q, const float *k, const float *v, int stride, int n, int hd,
                      float scale, float *att)
{
#ifdef WMAT_KERNELS_X86
    if (decode_isa() == ISA_AVX512 && hd % 16 == 0 && hd <= 256) {
        attend_one_avx512(out, q, k, v, stride, n, hd, scale, att);
        return;
    }
#endif
    attend_one_c(out, q, k, v, stride, n, hd, scale, att);
}

void wmat__causal_softmax_block(float *s, int rows, int cols, int ld, int first)
{
    for (int i = 0; i < rows; i++) {
        float *row = s + (size_t)i * ld;
        const int n = first + i + 1;
        softmax_fast(row, n);
        if (n < cols) memset(row + n, 0, (size_t)(cols - n) * sizeof(float));
    }
}


#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
static void swiglu_fast_span(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = a[i];
        out[i] = v / (1.0f + exp_fast(-v)) * b[i];
    }
}

/* run.c's expression: (v * (1 / (1 + expf(-v)))) * b */
static void swiglu_exact_span(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = a[i];
        v *= 1.0f / (1.0f + expf(-v));
        out[i] = v * b[i];
    }
}

void wmat__swiglu(float *out, const float *a, const float *b, size_t n, int fast, int n_threads)
{
    const size_t chunk = 4096;
    const long n_chunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_chunks > 1)
    for (long c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
        (fast ? swiglu_fast_span : swiglu_exact_span)(out + lo, a + lo, b + lo, len);
    }
}


int wmat__decode_isa(void)
{
#ifdef WMAT_KERNELS_X86
    return decode_isa();
#else
    return WMAT_ISA_REF;
#endif
}

void wmat__matvec_part_range(int total, int t, int T, int *g0, int *g1)
{
    const int per = ((total + T - 1) / T + 15) / 16 * 16;
    *g0 = t * per < total ? t * per : total;
    *g1 = *g0 + per < total ? *g0 + per : total;
}

void wmat__matvec_multi_part(int n, float *const *out, const float *const *W, const int *rows, const float *x, int cols,
                             int accumulate, int t, int T)
{
    const int isa = wmat__decode_isa();
    int total = 0, g0, g1;
    for (int i = 0; i < n; i++) total += rows[i];
    wmat__matvec_part_range(total, t, T, &g0, &g1);
    int base = 0;
    for (int i = 0; i < n; i++) {
        const int a = g0 > base ? g0 - base : 0, b = g1 - base < rows[i] ? g1 - base : rows[i];
        if (a < b) wmat__f32_rows(out[i], W[i], x, a, b, cols, accumulate, isa);
        base += rows[i];
    }
}

void wmat__matvec_multi(int n, float *const *out, const float *const *W, const int *rows, const float *x, int cols,
                        int accumulate, int n_threads)
{
    int total = 0;
    for (int i = 0; i < n; i++) total += rows[i];
    /* Threads only pay off above ~64K multiply-adds (fork/join costs ~µs) */
    const int nt = (long)total * cols >= 65536 ? n_threads : 1;
    if (nt <= 1) {
        wmat__matvec_multi_part(n, out, W, rows, x, cols, accumulate, 0, 1);
        return;
    }
    /* The matrices' rows as one list cut in contiguous blocks, one per
     * thread (a multiple of 16 rows, so neighbouring threads do not share
     * a cache line of out): one fork/join for q, k and v (or gate and up)
     * instead of one each. */
#pragma omp parallel num_threads(nt)
    wmat__matvec_multi_part(n, out, W, rows, x, cols, accumulate, omp_get_thread_num(), omp_get_num_threads());
}

void wmat__matvec(float *out, const float *W, const float *x, int rows, int cols, int accumulate, int n_threads)
{
    wmat__matvec_multi(1, &out, &W, &rows, x, cols, accumulate, n_threads);
}

/* Kt (hd x keys padded to 32) and the scores of 8 rows */
size_t wmat__causal_attention_scratch(int T, int hd) { return ((size_t)hd + 8) * (((size_t)T + 31) & ~(size_t)31); }

int wmat__causal_attention(float *out, int os, const float *q, int qs, const float *k, const float *v, int ks, int T,
                           int hd, float scale, float *scratch)
{
#ifdef WMAT_KERNELS_X86
    if (decode_isa() == ISA_AVX512 && (hd == 16 || hd == 32 || hd == 64 || hd == 128)) {
        causal_attention_avx512(out, os, q, qs, k, v, ks, T, hd, scale, scratch);
        return 1;
    }
#endif
    (void)out, (void)os, (void)q, (void)qs, (void)k, (void)v, (void)ks, (void)T, (void)hd, (void)scale, (void)scratch;
    return 0;
}

void wmat__rope_span(float *row, int a, int b, int hd, const float *cs, const float *sn)
{
    const int half = hd / 2;
    int i = (a % hd) / 2; /* the pair's index inside its head, wrapped at each head */
    for (int r = a; r < b; r += 2) {
        float v0 = row[r], v1 = row[r + 1];
        row[r] = v0 * cs[i] - v1 * sn[i];
        row[r + 1] = v0 * sn[i] + v1 * cs[i];
        if (++i == half) i = 0;
    }
}

void wmat__rope_row(float *row, int n_heads, int hd, const float *cs, const float *sn)
{
    wmat__rope_span(row, 0, n_heads * hd, hd, cs, sn);
}

void wmat__rope_rows(float *q, int qs, int n_heads, float *k, int ks, int n_kv_heads, int n_rows, int T, int hd,
                     const float *cos_tab, const float *sin_tab, int fast, int n_threads)
{
    const int half = hd / 2;
#ifdef WMAT_KERNELS_X86
    const int vec = fast && decode_isa() == ISA_AVX512 && hd % 16 == 0 && hd <= 256;
#else
    const int vec = 0;
    (void)fast;
#endif
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n_rows > 1 && (long)n_rows * (qs + ks) >= 32768)
    for (int r = 0; r < n_rows; r++) {
        const int t = r % T;
        const float *cs = cos_tab + (size_t)t * half, *sn = sin_tab + (size_t)t * half;
        float *qr = q + (size_t)r * qs, *kr = k + (size_t)r * ks;
#ifdef WMAT_KERNELS_X86
        if (vec) {
            float cdup[256], sdup[256];
            for (int i = 0; i < half; i++) {
                cdup[2 * i] = cdup[2 * i + 1] = cs[i];
                sdup[2 * i] = -sn[i];
                sdup[2 * i + 1] = sn[i];
            }
            rope_heads_avx512(qr, n_heads, hd, cdup, sdup);
            rope_heads_avx512(kr, n_kv_heads, hd, cdup, sdup);
            continue;
        }
#endif
        (void)vec;
        wmat__rope_row(qr, n_heads, hd, cs, sn);
        wmat__rope_row(kr, n_kv_heads, hd, cs, sn);
    }
}
