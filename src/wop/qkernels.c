/* Kernels over packed quantized matrices (layout: qstore.h).
 *
 * Matvec (decode): codes are unpacked in registers and multiplied with fp32
 * activations; nothing is dequantized to memory, so a 4-bit matrix is read
 * at ~4.5 bits per weight instead of 32. Every row reduces to
 *     y[r] = sum_g s_g * sum_{k in g} (c[r][k] - z_g) * xp[k]          (axis IN)
 *     y[r] = sum_k c[r][k] * xs[k] - sum_k s_k z_k xp[k]                  (axis OUT)
 * with xp = x[perm] (or x) and, for groups along outputs, xs[k] = s[k, rg]
 * xp[k] prepared once per row group, so both axes run one row kernel.
 * Three twins compute that same sum: plain C (the reference), AVX2+FMA+F16C
 * and AVX-512 (F, BW, VL); they differ only in summation order (tests hold
 * the fast ones to the reference).
 *
 * Matmul (batched): a tile of rows is dequantized into an fp32 buffer (a few
 * MB, per call) and multiplied by an fp32 GEMM on the caller's backend and
 * threads (wmat__sgemm_cfg); activations are permuted
 * once when the tensor has an act-order permutation. Below 3 tokens the
 * matvec runs per token instead.
 */
#include "qstore.h"

#include "linalg/linalg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define QK_X86 1
#include <immintrin.h>
#endif

/* ------------------------------------------------------------ reference */

/* Codes of one 32-code chunk (the reference unpacker of qpack.c, repeated
 * here so the kernels do not call across files per chunk). */
static void ref_unpack(uint8_t *c, const uint8_t *src, int bits)
{
    switch (bits) {
    case 2:
    case 3:
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < 4; k++) c[j + 8 * k] = (uint8_t)(src[j] >> (2 * k) & 3);
        if (bits == 3) {
            uint32_t hi = (uint32_t)src[8] | (uint32_t)src[9] << 8 | (uint32_t)src[10] << 16 | (uint32_t)src[11] << 24;
            for (int i = 0; i < 32; i++) c[i] |= (uint8_t)((hi >> i & 1) << 2);
        }
        break;
    case 4:
        for (int j = 0; j < 16; j++) {
            c[j] = src[j] & 15;
            c[j + 16] = src[j] >> 4;
        }
        break;
    default: memcpy(c, src, 32); break;
    }
}

/* One row: sum over groups of len `group` of s_g * sum (c - z_g) x.
 * sc == NULL: one group, scale 1 (zsym is then the zero, usually 0). */
static float row_ref(const uint8_t *src, int bits, int64_t cb, const float *x, int64_t cols, int64_t group,
                     const uint16_t *sc, const uint8_t *zs, int zsym)
{
    uint8_t c[32];
    float tot = 0.0f;
    const int64_t ng = cols / group;
    for (int64_t g = 0; g < ng; g++) {
        const float z = zs ? (float)zs[g] : (float)zsym;
        float acc = 0.0f;
        for (int64_t k = 0; k < group; k += 32, src += cb, x += 32) {
            ref_unpack(c, src, bits);
            for (int j = 0; j < 32; j++) acc += ((float)c[j] - z) * x[j];
        }
        tot += (sc ? wmat_f16_to_f32(sc[g]) : 1.0f) * acc;
    }
    return tot;
}

/* ------------------------------------------------------------ AVX2 */

#ifdef QK_X86
#define QK_AVX2 __attribute__((target("avx2,fma,f16c")))

/* 32 codes as four vectors of 8 int32 (codes 0-7, 8-15, 16-23, 24-31). */
static inline __attribute__((always_inline)) QK_AVX2 void dec_avx2(const uint8_t *src, int bits, __m256i o[4])
{
    __m128i lo, hi; /* codes 0..15 and 16..31 as bytes */
    if (bits == 4) {
        const __m128i v = _mm_loadu_si128((const __m128i *)src), m = _mm_set1_epi8(15);
        lo = _mm_and_si128(v, m);
        hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    } else if (bits == 2 || bits == 3) {
        const __m128i b = _mm_loadl_epi64((const __m128i *)src), bb = _mm_unpacklo_epi64(b, b), m = _mm_set1_epi8(3);
        lo = _mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(2, 0)), m);
        hi = _mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(6, 4)), m);
    } else {
        lo = _mm_loadu_si128((const __m128i *)src);
        hi = _mm_loadu_si128((const __m128i *)(src + 16));
    }
    o[0] = _mm256_cvtepu8_epi32(lo);
    o[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    o[2] = _mm256_cvtepu8_epi32(hi);
    o[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
    if (bits == 3) {
        uint32_t h;
        memcpy(&h, src + 8, 4);
        const __m256i hv = _mm256_set1_epi32((int)h), one = _mm256_set1_epi32(1);
        const __m256i sh = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (int q = 0; q < 4; q++) {
            __m256i bit = _mm256_and_si256(_mm256_srlv_epi32(hv, _mm256_add_epi32(sh, _mm256_set1_epi32(8 * q))), one);
            o[q] = _mm256_or_si256(o[q], _mm256_slli_epi32(bit, 2));
        }
    }
}

static inline __attribute__((always_inline)) QK_AVX2 float row_avx2_bits(const uint8_t *src, const int bits, int64_t cb,
                                                                          const float *x, int64_t cols, int64_t group,
                                                                          const uint16_t *sc, const uint8_t *zs, int zsym)
{
    __m256 tot = _mm256_setzero_ps();
    const int64_t ng = cols / group;
    for (int64_t g = 0; g < ng; g++) {
        const __m256i z = _mm256_set1_epi32(zs ? zs[g] : zsym);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int64_t k = 0; k < group; k += 32, src += cb, x += 32) {
            __m256i c[4];
            dec_avx2(src, bits, c);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[0], z)), _mm256_loadu_ps(x), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[1], z)), _mm256_loadu_ps(x + 8), a1);
            a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[2], z)), _mm256_loadu_ps(x + 16), a0);
            a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[3], z)), _mm256_loadu_ps(x + 24), a1);
        }
        const float s = sc ? _cvtsh_ss(sc[g]) : 1.0f;
        tot = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_add_ps(a0, a1), tot);
    }
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(tot), _mm256_extractf128_ps(tot, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static QK_AVX2 float row_avx2(const uint8_t *src, int bits, int64_t cb, const float *x, int64_t cols, int64_t group,
                              const uint16_t *sc, const uint8_t *zs, int zsym)
{
    switch (bits) {
    case 2: return row_avx2_bits(src, 2, cb, x, cols, group, sc, zs, zsym);
    case 3: return row_avx2_bits(src, 3, cb, x, cols, group, sc, zs, zsym);
    case 4: return row_avx2_bits(src, 4, cb, x, cols, group, sc, zs, zsym);
    default: return row_avx2_bits(src, 8, cb, x, cols, group, sc, zs, zsym);
    }
}

/* ------------------------------------------------------------ AVX-512 */

#define QK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

static inline __attribute__((always_inline)) QK_AVX512 void dec_avx512(const uint8_t *src, int bits, __m512i o[2])
{
    __m128i lo, hi;
    if (bits == 4) {
        const __m128i v = _mm_loadu_si128((const __m128i *)src), m = _mm_set1_epi8(15);
        lo = _mm_and_si128(v, m);
        hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    } else if (bits == 2 || bits == 3) {
        const __m128i b = _mm_loadl_epi64((const __m128i *)src), bb = _mm_unpacklo_epi64(b, b), m = _mm_set1_epi8(3);
        lo = _mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(2, 0)), m);
        hi = _mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(6, 4)), m);
    } else {
        lo = _mm_loadu_si128((const __m128i *)src);
        hi = _mm_loadu_si128((const __m128i *)(src + 16));
    }
    o[0] = _mm512_cvtepu8_epi32(lo);
    o[1] = _mm512_cvtepu8_epi32(hi);
    if (bits == 3) {
        uint32_t h;
        memcpy(&h, src + 8, 4);
        const __m512i four = _mm512_set1_epi32(4);
        o[0] = _mm512_mask_or_epi32(o[0], (__mmask16)(h & 0xffffu), o[0], four);
        o[1] = _mm512_mask_or_epi32(o[1], (__mmask16)(h >> 16), o[1], four);
    }
}

static inline __attribute__((always_inline)) QK_AVX512 float row_avx512_bits(const uint8_t *src, const int bits, int64_t cb,
                                                                              const float *x, int64_t cols, int64_t group,
                                                                              const uint16_t *sc, const uint8_t *zs,
                                                                              int zsym)
{
    __m512 tot = _mm512_setzero_ps();
    const int64_t ng = cols / group;
    for (int64_t g = 0; g < ng; g++) {
        const __m512i z = _mm512_set1_epi32(zs ? zs[g] : zsym);
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (int64_t k = 0; k < group; k += 32, src += cb, x += 32) {
            __m512i c[2];
            dec_avx512(src, bits, c);
            a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c[0], z)), _mm512_loadu_ps(x), a0);
            a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c[1], z)), _mm512_loadu_ps(x + 16), a1);
        }
        const float s = sc ? _cvtsh_ss(sc[g]) : 1.0f;
        tot = _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_add_ps(a0, a1), tot);
    }
    return _mm512_reduce_add_ps(tot);
}

static QK_AVX512 float row_avx512(const uint8_t *src, int bits, int64_t cb, const float *x, int64_t cols, int64_t group,
                                  const uint16_t *sc, const uint8_t *zs, int zsym)
{
    switch (bits) {
    case 2: return row_avx512_bits(src, 2, cb, x, cols, group, sc, zs, zsym);
    case 3: return row_avx512_bits(src, 3, cb, x, cols, group, sc, zs, zsym);
    case 4: return row_avx512_bits(src, 4, cb, x, cols, group, sc, zs, zsym);
    default: return row_avx512_bits(src, 8, cb, x, cols, group, sc, zs, zsym);
    }
}

/* Dequantize one row with groups along inputs into w (cols floats). */
static inline __attribute__((always_inline)) QK_AVX512 void deq_row_avx512_bits(const uint8_t *src, const int bits, int64_t cb,
                                                                                 int64_t cols, int64_t group,
                                                                                 const uint16_t *sc, const uint8_t *zs,
                                                                                 int zsym, float *w)
{
    for (int64_t k0 = 0; k0 < cols; k0 += 32, src += cb, w += 32) {
        const int64_t g = k0 / group;
        const __m512i z = _mm512_set1_epi32(zs ? zs[g] : zsym);
        const __m512 sv = _mm512_set1_ps(_cvtsh_ss(sc[g]));
        __m512i c[2];
        dec_avx512(src, bits, c);
        _mm512_storeu_ps(w, _mm512_mul_ps(sv, _mm512_cvtepi32_ps(_mm512_sub_epi32(c[0], z))));
        _mm512_storeu_ps(w + 16, _mm512_mul_ps(sv, _mm512_cvtepi32_ps(_mm512_sub_epi32(c[1], z))));
    }
}

static QK_AVX512 void deq_row_avx512(const uint8_t *src, int bits, int64_t cb, int64_t cols, int64_t group,
                                     const uint16_t *sc, const uint8_t *zs, int zsym, float *w)
{
    switch (bits) {
    case 2: deq_row_avx512_bits(src, 2, cb, cols, group, sc, zs, zsym, w); break;
    case 3: deq_row_avx512_bits(src, 3, cb, cols, group, sc, zs, zsym, w); break;
    case 4: deq_row_avx512_bits(src, 4, cb, cols, group, sc, zs, zsym, w); break;
    default: deq_row_avx512_bits(src, 8, cb, cols, group, sc, zs, zsym, w); break;
    }
}

/* ---- int8 activations with AVX-512 VNNI (the default decode path where VNNI exists; WMAT_QACT8=0 turns it off) */

#define QK_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

/* 32 codes as 32 bytes in natural order. */
static inline __attribute__((always_inline)) QK_VNNI __m256i dec_bytes_vnni(const uint8_t *src, int bits)
{
    if (bits == 4) {
        const __m128i v = _mm_loadu_si128((const __m128i *)src), m = _mm_set1_epi8(15);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    }
    if (bits == 2 || bits == 3) {
        const __m128i b = _mm_loadl_epi64((const __m128i *)src), bb = _mm_unpacklo_epi64(b, b), m = _mm_set1_epi8(3);
        __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(6, 4)), m),
                                     _mm_and_si128(_mm_srlv_epi64(bb, _mm_set_epi64x(2, 0)), m));
        if (bits == 3) {
            uint32_t h;
            memcpy(&h, src + 8, 4);
            c = _mm256_mask_add_epi8(c, (__mmask32)h, c, _mm256_set1_epi8(4));
        }
        return c;
    }
    return _mm256_loadu_si256((const __m256i *)src);
}

static inline __attribute__((always_inline)) QK_VNNI float row8_vnni_bits(const uint8_t *src, const int bits, int64_t cb,
                                                                           const int8_t *xq, const float *dx,
                                                                           const int32_t *bsum, int64_t nblk, int64_t bpg,
                                                                           const uint16_t *sc, const uint8_t *zs, int zsym)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t g = 0, in_g = 0;
    float s = _cvtsh_ss(sc[0]);
    int z = zs ? zs[0] : zsym;
    for (int64_t b = 0; b < nblk; b++, src += cb) {
        if (in_g == bpg) {
            g++, in_g = 0;
            s = _cvtsh_ss(sc[g]);
            z = zs ? zs[g] : zsym;
        }
        in_g++;
        const __m256i c = dec_bytes_vnni(src, bits);
        __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c, _mm256_loadu_si256((const __m256i *)(xq + 32 * b)));
        d = _mm256_sub_epi32(d, _mm256_castsi128_si256(_mm_cvtsi32_si128(z * bsum[b]))); /* exact: sum (c - z) xq */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(s * dx[b]), acc);
    }
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static QK_VNNI float row8_vnni(const uint8_t *src, int bits, int64_t cb, const int8_t *xq, const float *dx,
                               const int32_t *bsum, int64_t nblk, int64_t bpg, const uint16_t *sc, const uint8_t *zs,
                               int zsym)
{
    switch (bits) {
    case 2: return row8_vnni_bits(src, 2, cb, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
    case 3: return row8_vnni_bits(src, 3, cb, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
    case 4: return row8_vnni_bits(src, 4, cb, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
    default: return row8_vnni_bits(src, 8, cb, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
    }
}
#endif /* QK_X86 */

/* The reference twin of row8_vnni: the same integers, the same products. */
static float row8_ref(const uint8_t *src, int bits, int64_t cb, const int8_t *xq, const float *dx, const int32_t *bsum,
                      int64_t nblk, int64_t bpg, const uint16_t *sc, const uint8_t *zs, int zsym)
{
    uint8_t c[32];
    float acc = 0.0f;
    for (int64_t b = 0; b < nblk; b++, src += cb) {
        const int64_t g = b / bpg;
        const int z = zs ? zs[g] : zsym;
        ref_unpack(c, src, bits);
        int32_t dot = 0;
        for (int j = 0; j < 32; j++) dot += (int32_t)c[j] * xq[32 * b + j];
        acc += (float)(dot - z * bsum[b]) * (wmat_f16_to_f32(sc[g]) * dx[b]);
    }
    return acc;
}

/* Activations to int8 per block of 32 (ggml's Q8_0 rule): xq = round(x / d),
 * d = max|x| / 127; bsum = sum of a block's xq. */
static void quantize_act8(const float *x, int64_t cols, int8_t *xq, float *dx, int32_t *bsum)
{
    for (int64_t b = 0; b < cols / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < 32; j++) {
            const int v = (int)roundf(xb[j] * id);
            xq[32 * b + j] = (int8_t)v;
            sum += v;
        }
        dx[b] = d;
        bsum[b] = sum;
    }
}

/* ------------------------------------------------------------ dispatch */

typedef float (*row_fn)(const uint8_t *, int, int64_t, const float *, int64_t, int64_t, const uint16_t *,
                        const uint8_t *, int);

static int have_vnni(void)
{
#ifdef QK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

/* int8 activations run where they are the fast path (VNNI) or the reference. */
int wmat__qkernel_act8_at(int level, int act8)
{
    return act8 && (level == WMAT_QK_REF || (level == WMAT_QK_AVX512 && have_vnni()));
}

int wmat__qkernel_best(void)
{
#ifdef QK_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return WMAT_QK_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return WMAT_QK_AVX2;
#endif
    return WMAT_QK_REF;
}

/* A level the CPU runs: callers pass what their context resolved, which may
 * have been decided for another machine (a test's list of levels). */
static int clamp_level(int level)
{
    const int best = wmat__qkernel_best();
    if (level > best) level = best;
    return level == WMAT_QK_AVX2 || level == WMAT_QK_AVX512 ? level : WMAT_QK_REF;
}

const char *wmat__qkernel_name(int level)
{
    return level == WMAT_QK_AVX512 ? "avx512" : level == WMAT_QK_AVX2 ? "avx2" : "ref";
}

static row_fn pick_row(int level)
{
#ifdef QK_X86
    switch (level) {
    case WMAT_QK_AVX512: return row_avx512;
    case WMAT_QK_AVX2: return row_avx2;
    default: break;
    }
#endif
    return row_ref;
}

/* ------------------------------------------------------------ matvec */

/* Without scratch memory: the plain definition, for when malloc fails (the
 * runtime's linear entry points cannot fail). */
static void matvec_nobuf(float *y, const float *x, const wmat_qtensor *qt, int64_t r0, int64_t r1, int accumulate)
{
    uint8_t c[32];
    const int64_t cols = qt->cols, rows = qt->rows;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *src = qt->codes + r * qt->row_bytes;
        float acc = 0.0f;
        for (int64_t k0 = 0; k0 < cols; k0 += 32, src += qt->chunk_bytes) {
            ref_unpack(c, src, qt->bits);
            for (int j = 0; j < 32; j++) {
                const int64_t k = k0 + j;
                const int64_t g = qt->axis == WMAT_QAXIS_IN ? r * (cols / qt->group) + k / qt->group
                                                           : k * (rows / qt->group) + r / qt->group;
                const float z = qt->zeros ? (float)qt->zeros[g] : (float)(1 << (qt->bits - 1));
                acc += wmat_f16_to_f32(qt->scales[g]) * ((float)c[j] - z) * x[qt->perm ? qt->perm[k] : k];
            }
        }
        y[r] = accumulate ? y[r] + acc : acc;
    }
}

/* Rows [r0, r1) of y = W x on the calling thread, at ISA `level`. */
void wmat__qmatvec_rows_x(float *y, const float *x, const wmat_qtensor *qt, int64_t r0, int64_t r1, int accumulate,
                          int level, int act8)
{
    const int64_t rows = qt->rows, cols = qt->cols;
    const int zsym = 1 << (qt->bits - 1);
    level = clamp_level(level);
    const row_fn row = pick_row(level);
    const int need_xp = qt->perm != NULL, need_xs = qt->axis == WMAT_QAXIS_OUT;
    float *buf = NULL;
    if (r0 >= r1) return;
    if (!need_xs && wmat__qkernel_act8_at(level, act8)) {
        /* int8 activations: x[perm] quantized once, integer dot products per 32-code block */
        const int64_t nblk = cols / 32;
        float *f = wmat__malloc((size_t)cols * (need_xp ? 4 : 0) + (size_t)nblk * 8 + (size_t)cols + 64);
        if (f) {
            const float *xs = x;
            if (need_xp) {
                for (int64_t k = 0; k < cols; k++) f[k] = x[qt->perm[k]];
                xs = f;
            }
            float *dx = f + (need_xp ? cols : 0);
            int32_t *bsum = (int32_t *)(dx + nblk);
            int8_t *xq = (int8_t *)(bsum + nblk);
            quantize_act8(xs, cols, xq, dx, bsum);
            const int64_t gpr = cols / qt->group, bpg = qt->group / 32;
#ifdef QK_X86
            const int fast = level != WMAT_QK_REF;
#else
            const int fast = 0;
#endif
            for (int64_t r = r0; r < r1; r++) {
                const uint8_t *src = qt->codes + r * qt->row_bytes;
                const uint16_t *sc = qt->scales + r * gpr;
                const uint8_t *zs = qt->zeros ? qt->zeros + r * gpr : NULL;
                float v;
#ifdef QK_X86
                if (fast) v = row8_vnni(src, qt->bits, qt->chunk_bytes, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
                else
#endif
                    v = row8_ref(src, qt->bits, qt->chunk_bytes, xq, dx, bsum, nblk, bpg, sc, zs, zsym);
                y[r] = accumulate ? y[r] + v : v;
            }
            wmat__free(f);
            return;
        }
    }
    if (need_xp || need_xs) {
        buf = wmat__malloc((size_t)cols * sizeof(float) * (size_t)(need_xp + need_xs));
        if (!buf) {
            matvec_nobuf(y, x, qt, r0, r1, accumulate);
            return;
        }
    }
    const float *xp = x;
    if (need_xp) {
        for (int64_t k = 0; k < cols; k++) buf[k] = x[qt->perm[k]];
        xp = buf;
    }
    if (!need_xs) {
        const int64_t gpr = cols / qt->group; /* groups per row */
        for (int64_t r = r0; r < r1; r++) {
            const float v = row(qt->codes + r * qt->row_bytes, qt->bits, qt->chunk_bytes, xp, cols, qt->group,
                                qt->scales + r * gpr, qt->zeros ? qt->zeros + r * gpr : NULL, zsym);
            y[r] = accumulate ? y[r] + v : v;
        }
    } else {
        float *xs = buf + (need_xp ? cols : 0);
        const int64_t rpg = rows / qt->group; /* row groups = groups per column */
        for (int64_t rg = r0 / qt->group; rg <= (r1 - 1) / qt->group; rg++) {
            float corr = 0.0f;
            for (int64_t k = 0; k < cols; k++) {
                const int64_t g = k * rpg + rg;
                const float s = wmat_f16_to_f32(qt->scales[g]);
                const float z = qt->zeros ? (float)qt->zeros[g] : (float)zsym;
                xs[k] = s * xp[k];
                corr += z * xs[k];
            }
            const int64_t a = rg * qt->group > r0 ? rg * qt->group : r0;
            const int64_t b = (rg + 1) * qt->group < r1 ? (rg + 1) * qt->group : r1;
            for (int64_t r = a; r < b; r++) {
                const float v = row(qt->codes + r * qt->row_bytes, qt->bits, qt->chunk_bytes, xs, cols, cols, NULL, NULL, 0) -
                                corr;
                y[r] = accumulate ? y[r] + v : v;
            }
        }
    }
    wmat__free(buf);
}

void wmat__qmatvec_x(float *y, const float *x, const wmat_qtensor *qt, int accumulate, int n_threads, int level, int act8)
{
    const int64_t rows = qt->rows;
    const long work = (long)(rows * qt->cols);
    const int nt = work >= 65536 ? (n_threads > 0 ? n_threads : 1) : 1;
    if (nt <= 1) {
        wmat__qmatvec_rows_x(y, x, qt, 0, rows, accumulate, level, act8);
        return;
    }
    /* contiguous row blocks, multiples of 16 rows (no shared cache line of y) */
    const int64_t per = ((rows + nt - 1) / nt + 15) / 16 * 16;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int t = 0; t < nt; t++) {
        const int64_t a = (int64_t)t * per < rows ? (int64_t)t * per : rows, b = a + per < rows ? a + per : rows;
        wmat__qmatvec_rows_x(y, x, qt, a, b, accumulate, level, act8);
    }
}

/* ------------------------------------------------------------ matmul */

/* Dequantize rows r0..r0+nr in STORED column order into W (nr, cols). */
static void dequant_rows_stored(const wmat_qtensor *qt, int64_t r0, int64_t nr, float *W, int nt, int level)
{
    const int64_t cols = qt->cols, rows = qt->rows;
    const int zsym = 1 << (qt->bits - 1);
#ifdef QK_X86
    if (qt->axis == WMAT_QAXIS_IN && level == WMAT_QK_AVX512) {
        const int64_t gpr = cols / qt->group;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int64_t i = 0; i < nr; i++) {
            const int64_t r = r0 + i;
            deq_row_avx512(qt->codes + r * qt->row_bytes, qt->bits, qt->chunk_bytes, cols, qt->group, qt->scales + r * gpr,
                           qt->zeros ? qt->zeros + r * gpr : NULL, zsym, W + i * cols);
        }
        return;
    }
#endif
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t i = 0; i < nr; i++) {
        uint8_t c[32];
        const int64_t r = r0 + i;
        const uint8_t *src = qt->codes + r * qt->row_bytes;
        float *w = W + i * cols;
        for (int64_t k0 = 0; k0 < cols; k0 += 32, src += qt->chunk_bytes) {
            ref_unpack(c, src, qt->bits);
            if (qt->axis == WMAT_QAXIS_IN) {
                const int64_t g = r * (cols / qt->group) + k0 / qt->group; /* a chunk lies in one group */
                const float s = wmat_f16_to_f32(qt->scales[g]);
                const float z = qt->zeros ? (float)qt->zeros[g] : (float)zsym;
                for (int j = 0; j < 32; j++) w[k0 + j] = s * ((float)c[j] - z);
            } else {
                const int64_t rpg = rows / qt->group, rg = r / qt->group;
                for (int j = 0; j < 32; j++) {
                    const int64_t g = (k0 + j) * rpg + rg;
                    const float z = qt->zeros ? (float)qt->zeros[g] : (float)zsym;
                    w[k0 + j] = wmat_f16_to_f32(qt->scales[g]) * ((float)c[j] - z);
                }
            }
        }
    }
}

void wmat__qmatmul_x(float *Y, const float *X, const wmat_qtensor *qt, int T, int accumulate, int n_threads, int level,
                     int act8, wmat_gemm_backend gemm)
{
    const int64_t rows = qt->rows, cols = qt->cols;
    const int nt = n_threads > 0 ? n_threads : 1;
    level = clamp_level(level);
    if (T < 3) { /* each token a matvec: reads the codes T times but dequantizes nothing */
        for (int t = 0; t < T; t++)
            wmat__qmatvec_x(Y + (size_t)t * (size_t)rows, X + (size_t)t * (size_t)cols, qt, accumulate, n_threads, level,
                            act8);
        return;
    }
    /* Tile: about 4 MB of fp32 rows, at least 16 rows. */
    int64_t tile = ((int64_t)1 << 20) / cols;
    if (tile < 16) tile = 16;
    if (tile > rows) tile = rows;
    float *W = wmat__malloc((size_t)tile * (size_t)cols * sizeof(float));
    float *Xp = NULL;
    if (W && qt->perm) {
        Xp = wmat__malloc((size_t)T * (size_t)cols * sizeof(float));
        if (Xp) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && T > 8)
            for (int t = 0; t < T; t++)
                for (int64_t k = 0; k < cols; k++) Xp[(size_t)t * cols + k] = X[(size_t)t * cols + qt->perm[k]];
        }
    }
    if (!W || (qt->perm && !Xp)) {
        wmat__free(W);
        wmat__free(Xp);
        for (int t = 0; t < T; t++)
            matvec_nobuf(Y + (size_t)t * (size_t)rows, X + (size_t)t * (size_t)cols, qt, 0, rows, accumulate);
        return;
    }
    const float *A = Xp ? Xp : X;
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t nr = rows - r0 < tile ? rows - r0 : tile;
        dequant_rows_stored(qt, r0, nr, W, nt, level);
        wmat__sgemm_cfg(gemm, nt, 0, 1, T, (int)nr, (int)cols, 1.0f, A, (int)cols, W, (int)cols, accumulate ? 1.0f : 0.0f, Y + r0,
                   (int)rows);
    }
    wmat__free(W);
    wmat__free(Xp);
}
