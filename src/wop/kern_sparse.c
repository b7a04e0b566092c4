/* Kernels of bitmap-sparse weights (contract: kern_sparse.h).
 *
 * Decode reads each row once: its mask bytes and its kept values. The
 * inputs of the kept values are gathered in registers: a byte's set bits
 * index 8 consecutive inputs, so one vpermps of those 8 inputs by the
 * byte's bit positions (a 256-entry table) lines them up with the values.
 * N:M rows with 2N = M have exactly 4 per byte: two bytes fill one vector
 * of 8 values at a fixed stride. Unstructured rows take one byte at a time,
 * the lanes past its count zeroed.
 *
 * Batched products dequantize tiles of rows to fp32 in the caller's
 * workspace and run the GEMM backend on them, as kern_dense.c does. */
#include "kern_sparse.h"

#include "kern_dense.h" /* wmat__isa_best */
#include "linalg/linalg.h"

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KS_X86 1
#define KS_AVX2 __attribute__((target("avx2,fma,f16c,popcnt")))
#endif

/* Positions of the set bits of a byte, lowest first (0-filled). */
static const uint8_t g_pos[256][8] = {
    {0,0,0,0,0,0,0,0}, {0,0,0,0,0,0,0,0}, {1,0,0,0,0,0,0,0}, {0,1,0,0,0,0,0,0}, {2,0,0,0,0,0,0,0}, {0,2,0,0,0,0,0,0}, {1,2,0,0,0,0,0,0}, {0,1,2,0,0,0,0,0},
    {3,0,0,0,0,0,0,0}, {0,3,0,0,0,0,0,0}, {1,3,0,0,0,0,0,0}, {0,1,3,0,0,0,0,0}, {2,3,0,0,0,0,0,0}, {0,2,3,0,0,0,0,0}, {1,2,3,0,0,0,0,0}, {0,1,2,3,0,0,0,0},
    {4,0,0,0,0,0,0,0}, {0,4,0,0,0,0,0,0}, {1,4,0,0,0,0,0,0}, {0,1,4,0,0,0,0,0}, {2,4,0,0,0,0,0,0}, {0,2,4,0,0,0,0,0}, {1,2,4,0,0,0,0,0}, {0,1,2,4,0,0,0,0},
    {3,4,0,0,0,0,0,0}, {0,3,4,0,0,0,0,0}, {1,3,4,0,0,0,0,0}, {0,1,3,4,0,0,0,0}, {2,3,4,0,0,0,0,0}, {0,2,3,4,0,0,0,0}, {1,2,3,4,0,0,0,0}, {0,1,2,3,4,0,0,0},
    {5,0,0,0,0,0,0,0}, {0,5,0,0,0,0,0,0}, {1,5,0,0,0,0,0,0}, {0,1,5,0,0,0,0,0}, {2,5,0,0,0,0,0,0}, {0,2,5,0,0,0,0,0}, {1,2,5,0,0,0,0,0}, {0,1,2,5,0,0,0,0},
    {3,5,0,0,0,0,0,0}, {0,3,5,0,0,0,0,0}, {1,3,5,0,0,0,0,0}, {0,1,3,5,0,0,0,0}, {2,3,5,0,0,0,0,0}, {0,2,3,5,0,0,0,0}, {1,2,3,5,0,0,0,0}, {0,1,2,3,5,0,0,0},
    {4,5,0,0,0,0,0,0}, {0,4,5,0,0,0,0,0}, {1,4,5,0,0,0,0,0}, {0,1,4,5,0,0,0,0}, {2,4,5,0,0,0,0,0}, {0,2,4,5,0,0,0,0}, {1,2,4,5,0,0,0,0}, {0,1,2,4,5,0,0,0},
    {3,4,5,0,0,0,0,0}, {0,3,4,5,0,0,0,0}, {1,3,4,5,0,0,0,0}, {0,1,3,4,5,0,0,0}, {2,3,4,5,0,0,0,0}, {0,2,3,4,5,0,0,0}, {1,2,3,4,5,0,0,0}, {0,1,2,3,4,5,0,0},
    {6,0,0,0,0,0,0,0}, {0,6,0,0,0,0,0,0}, {1,6,0,0,0,0,0,0}, {0,1,6,0,0,0,0,0}, {2,6,0,0,0,0,0,0}, {0,2,6,0,0,0,0,0}, {1,2,6,0,0,0,0,0}, {0,1,2,6,0,0,0,0},
    {3,6,0,0,0,0,0,0}, {0,3,6,0,0,0,0,0}, {1,3,6,0,0,0,0,0}, {0,1,3,6,0,0,0,0}, {2,3,6,0,0,0,0,0}, {0,2,3,6,0,0,0,0}, {1,2,3,6,0,0,0,0}, {0,1,2,3,6,0,0,0},
    {4,6,0,0,0,0,0,0}, {0,4,6,0,0,0,0,0}, {1,4,6,0,0,0,0,0}, {0,1,4,6,0,0,0,0}, {2,4,6,0,0,0,0,0}, {0,2,4,6,0,0,0,0}, {1,2,4,6,0,0,0,0}, {0,1,2,4,6,0,0,0},
    {3,4,6,0,0,0,0,0}, {0,3,4,6,0,0,0,0}, {1,3,4,6,0,0,0,0}, {0,1,3,4,6,0,0,0}, {2,3,4,6,0,0,0,0}, {0,2,3,4,6,0,0,0}, {1,2,3,4,6,0,0,0}, {0,1,2,3,4,6,0,0},
    {5,6,0,0,0,0,0,0}, {0,5,6,0,0,0,0,0}, {1,5,6,0,0,0,0,0}, {0,1,5,6,0,0,0,0}, {2,5,6,0,0,0,0,0}, {0,2,5,6,0,0,0,0}, {1,2,5,6,0,0,0,0}, {0,1,2,5,6,0,0,0},
    {3,5,6,0,0,0,0,0}, {0,3,5,6,0,0,0,0}, {1,3,5,6,0,0,0,0}, {0,1,3,5,6,0,0,0}, {2,3,5,6,0,0,0,0}, {0,2,3,5,6,0,0,0}, {1,2,3,5,6,0,0,0}, {0,1,2,3,5,6,0,0},
    {4,5,6,0,0,0,0,0}, {0,4,5,6,0,0,0,0}, {1,4,5,6,0,0,0,0}, {0,1,4,5,6,0,0,0}, {2,4,5,6,0,0,0,0}, {0,2,4,5,6,0,0,0}, {1,2,4,5,6,0,0,0}, {0,1,2,4,5,6,0,0},
    {3,4,5,6,0,0,0,0}, {0,3,4,5,6,0,0,0}, {1,3,4,5,6,0,0,0}, {0,1,3,4,5,6,0,0}, {2,3,4,5,6,0,0,0}, {0,2,3,4,5,6,0,0}, {1,2,3,4,5,6,0,0}, {0,1,2,3,4,5,6,0},
    {7,0,0,0,0,0,0,0}, {0,7,0,0,0,0,0,0}, {1,7,0,0,0,0,0,0}, {0,1,7,0,0,0,0,0}, {2,7,0,0,0,0,0,0}, {0,2,7,0,0,0,0,0}, {1,2,7,0,0,0,0,0}, {0,1,2,7,0,0,0,0},
    {3,7,0,0,0,0,0,0}, {0,3,7,0,0,0,0,0}, {1,3,7,0,0,0,0,0}, {0,1,3,7,0,0,0,0}, {2,3,7,0,0,0,0,0}, {0,2,3,7,0,0,0,0}, {1,2,3,7,0,0,0,0}, {0,1,2,3,7,0,0,0},
    {4,7,0,0,0,0,0,0}, {0,4,7,0,0,0,0,0}, {1,4,7,0,0,0,0,0}, {0,1,4,7,0,0,0,0}, {2,4,7,0,0,0,0,0}, {0,2,4,7,0,0,0,0}, {1,2,4,7,0,0,0,0}, {0,1,2,4,7,0,0,0},
    {3,4,7,0,0,0,0,0}, {0,3,4,7,0,0,0,0}, {1,3,4,7,0,0,0,0}, {0,1,3,4,7,0,0,0}, {2,3,4,7,0,0,0,0}, {0,2,3,4,7,0,0,0}, {1,2,3,4,7,0,0,0}, {0,1,2,3,4,7,0,0},
    {5,7,0,0,0,0,0,0}, {0,5,7,0,0,0,0,0}, {1,5,7,0,0,0,0,0}, {0,1,5,7,0,0,0,0}, {2,5,7,0,0,0,0,0}, {0,2,5,7,0,0,0,0}, {1,2,5,7,0,0,0,0}, {0,1,2,5,7,0,0,0},
    {3,5,7,0,0,0,0,0}, {0,3,5,7,0,0,0,0}, {1,3,5,7,0,0,0,0}, {0,1,3,5,7,0,0,0}, {2,3,5,7,0,0,0,0}, {0,2,3,5,7,0,0,0}, {1,2,3,5,7,0,0,0}, {0,1,2,3,5,7,0,0},
    {4,5,7,0,0,0,0,0}, {0,4,5,7,0,0,0,0}, {1,4,5,7,0,0,0,0}, {0,1,4,5,7,0,0,0}, {2,4,5,7,0,0,0,0}, {0,2,4,5,7,0,0,0}, {1,2,4,5,7,0,0,0}, {0,1,2,4,5,7,0,0},
    {3,4,5,7,0,0,0,0}, {0,3,4,5,7,0,0,0}, {1,3,4,5,7,0,0,0}, {0,1,3,4,5,7,0,0}, {2,3,4,5,7,0,0,0}, {0,2,3,4,5,7,0,0}, {1,2,3,4,5,7,0,0}, {0,1,2,3,4,5,7,0},
    {6,7,0,0,0,0,0,0}, {0,6,7,0,0,0,0,0}, {1,6,7,0,0,0,0,0}, {0,1,6,7,0,0,0,0}, {2,6,7,0,0,0,0,0}, {0,2,6,7,0,0,0,0}, {1,2,6,7,0,0,0,0}, {0,1,2,6,7,0,0,0},
    {3,6,7,0,0,0,0,0}, {0,3,6,7,0,0,0,0}, {1,3,6,7,0,0,0,0}, {0,1,3,6,7,0,0,0}, {2,3,6,7,0,0,0,0}, {0,2,3,6,7,0,0,0}, {1,2,3,6,7,0,0,0}, {0,1,2,3,6,7,0,0},
    {4,6,7,0,0,0,0,0}, {0,4,6,7,0,0,0,0}, {1,4,6,7,0,0,0,0}, {0,1,4,6,7,0,0,0}, {2,4,6,7,0,0,0,0}, {0,2,4,6,7,0,0,0}, {1,2,4,6,7,0,0,0}, {0,1,2,4,6,7,0,0},
    {3,4,6,7,0,0,0,0}, {0,3,4,6,7,0,0,0}, {1,3,4,6,7,0,0,0}, {0,1,3,4,6,7,0,0}, {2,3,4,6,7,0,0,0}, {0,2,3,4,6,7,0,0}, {1,2,3,4,6,7,0,0}, {0,1,2,3,4,6,7,0},
    {5,6,7,0,0,0,0,0}, {0,5,6,7,0,0,0,0}, {1,5,6,7,0,0,0,0}, {0,1,5,6,7,0,0,0}, {2,5,6,7,0,0,0,0}, {0,2,5,6,7,0,0,0}, {1,2,5,6,7,0,0,0}, {0,1,2,5,6,7,0,0},
    {3,5,6,7,0,0,0,0}, {0,3,5,6,7,0,0,0}, {1,3,5,6,7,0,0,0}, {0,1,3,5,6,7,0,0}, {2,3,5,6,7,0,0,0}, {0,2,3,5,6,7,0,0}, {1,2,3,5,6,7,0,0}, {0,1,2,3,5,6,7,0},
    {4,5,6,7,0,0,0,0}, {0,4,5,6,7,0,0,0}, {1,4,5,6,7,0,0,0}, {0,1,4,5,6,7,0,0}, {2,4,5,6,7,0,0,0}, {0,2,4,5,6,7,0,0}, {1,2,4,5,6,7,0,0}, {0,1,2,4,5,6,7,0},
    {3,4,5,6,7,0,0,0}, {0,3,4,5,6,7,0,0}, {1,3,4,5,6,7,0,0}, {0,1,3,4,5,6,7,0}, {2,3,4,5,6,7,0,0}, {0,2,3,4,5,6,7,0}, {1,2,3,4,5,6,7,0}, {0,1,2,3,4,5,6,7},
};

/* The first four of them as int32 lanes (a vpermps index for a byte of
 * an N:M row with 2N = M, which has exactly four). */
static const int32_t g_pos4[256][4] __attribute__((aligned(16))) = {
    {0,0,0,0}, {0,0,0,0}, {1,0,0,0}, {0,1,0,0}, {2,0,0,0}, {0,2,0,0}, {1,2,0,0}, {0,1,2,0}, {3,0,0,0}, {0,3,0,0}, {1,3,0,0}, {0,1,3,0}, {2,3,0,0}, {0,2,3,0}, {1,2,3,0}, {0,1,2,3},
    {4,0,0,0}, {0,4,0,0}, {1,4,0,0}, {0,1,4,0}, {2,4,0,0}, {0,2,4,0}, {1,2,4,0}, {0,1,2,4}, {3,4,0,0}, {0,3,4,0}, {1,3,4,0}, {0,1,3,4}, {2,3,4,0}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {5,0,0,0}, {0,5,0,0}, {1,5,0,0}, {0,1,5,0}, {2,5,0,0}, {0,2,5,0}, {1,2,5,0}, {0,1,2,5}, {3,5,0,0}, {0,3,5,0}, {1,3,5,0}, {0,1,3,5}, {2,3,5,0}, {0,2,3,5}, {1,2,3,5}, {0,1,2,3},
    {4,5,0,0}, {0,4,5,0}, {1,4,5,0}, {0,1,4,5}, {2,4,5,0}, {0,2,4,5}, {1,2,4,5}, {0,1,2,4}, {3,4,5,0}, {0,3,4,5}, {1,3,4,5}, {0,1,3,4}, {2,3,4,5}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {6,0,0,0}, {0,6,0,0}, {1,6,0,0}, {0,1,6,0}, {2,6,0,0}, {0,2,6,0}, {1,2,6,0}, {0,1,2,6}, {3,6,0,0}, {0,3,6,0}, {1,3,6,0}, {0,1,3,6}, {2,3,6,0}, {0,2,3,6}, {1,2,3,6}, {0,1,2,3},
    {4,6,0,0}, {0,4,6,0}, {1,4,6,0}, {0,1,4,6}, {2,4,6,0}, {0,2,4,6}, {1,2,4,6}, {0,1,2,4}, {3,4,6,0}, {0,3,4,6}, {1,3,4,6}, {0,1,3,4}, {2,3,4,6}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {5,6,0,0}, {0,5,6,0}, {1,5,6,0}, {0,1,5,6}, {2,5,6,0}, {0,2,5,6}, {1,2,5,6}, {0,1,2,5}, {3,5,6,0}, {0,3,5,6}, {1,3,5,6}, {0,1,3,5}, {2,3,5,6}, {0,2,3,5}, {1,2,3,5}, {0,1,2,3},
    {4,5,6,0}, {0,4,5,6}, {1,4,5,6}, {0,1,4,5}, {2,4,5,6}, {0,2,4,5}, {1,2,4,5}, {0,1,2,4}, {3,4,5,6}, {0,3,4,5}, {1,3,4,5}, {0,1,3,4}, {2,3,4,5}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {7,0,0,0}, {0,7,0,0}, {1,7,0,0}, {0,1,7,0}, {2,7,0,0}, {0,2,7,0}, {1,2,7,0}, {0,1,2,7}, {3,7,0,0}, {0,3,7,0}, {1,3,7,0}, {0,1,3,7}, {2,3,7,0}, {0,2,3,7}, {1,2,3,7}, {0,1,2,3},
    {4,7,0,0}, {0,4,7,0}, {1,4,7,0}, {0,1,4,7}, {2,4,7,0}, {0,2,4,7}, {1,2,4,7}, {0,1,2,4}, {3,4,7,0}, {0,3,4,7}, {1,3,4,7}, {0,1,3,4}, {2,3,4,7}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {5,7,0,0}, {0,5,7,0}, {1,5,7,0}, {0,1,5,7}, {2,5,7,0}, {0,2,5,7}, {1,2,5,7}, {0,1,2,5}, {3,5,7,0}, {0,3,5,7}, {1,3,5,7}, {0,1,3,5}, {2,3,5,7}, {0,2,3,5}, {1,2,3,5}, {0,1,2,3},
    {4,5,7,0}, {0,4,5,7}, {1,4,5,7}, {0,1,4,5}, {2,4,5,7}, {0,2,4,5}, {1,2,4,5}, {0,1,2,4}, {3,4,5,7}, {0,3,4,5}, {1,3,4,5}, {0,1,3,4}, {2,3,4,5}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {6,7,0,0}, {0,6,7,0}, {1,6,7,0}, {0,1,6,7}, {2,6,7,0}, {0,2,6,7}, {1,2,6,7}, {0,1,2,6}, {3,6,7,0}, {0,3,6,7}, {1,3,6,7}, {0,1,3,6}, {2,3,6,7}, {0,2,3,6}, {1,2,3,6}, {0,1,2,3},
    {4,6,7,0}, {0,4,6,7}, {1,4,6,7}, {0,1,4,6}, {2,4,6,7}, {0,2,4,6}, {1,2,4,6}, {0,1,2,4}, {3,4,6,7}, {0,3,4,6}, {1,3,4,6}, {0,1,3,4}, {2,3,4,6}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
    {5,6,7,0}, {0,5,6,7}, {1,5,6,7}, {0,1,5,6}, {2,5,6,7}, {0,2,5,6}, {1,2,5,6}, {0,1,2,5}, {3,5,6,7}, {0,3,5,6}, {1,3,5,6}, {0,1,3,5}, {2,3,5,6}, {0,2,3,5}, {1,2,3,5}, {0,1,2,3},
    {4,5,6,7}, {0,4,5,6}, {1,4,5,6}, {0,1,4,5}, {2,4,5,6}, {0,2,4,5}, {1,2,4,5}, {0,1,2,4}, {3,4,5,6}, {0,3,4,5}, {1,3,4,5}, {0,1,3,4}, {2,3,4,5}, {0,2,3,4}, {1,2,3,4}, {0,1,2,3},
};

static float val_at(const wmat_spm *s, int64_t i)
{
    return s->vdt == WMAT_F16 ? wmat_f16_to_f32(((const uint16_t *)s->vals)[i]) : ((const float *)s->vals)[i];
}

static int64_t total_vals(const wmat_spm *s) { return s->off ? s->off[s->rows] : s->rows * s->per_row; }

/* Mask bytes [k0, mb) of a row, values from index v (the reference order). */
static float row_tail(const wmat_spm *s, const uint8_t *mk, int64_t k0, int64_t v, const float *x, float acc)
{
    for (int64_t k = k0; k < s->mask_bytes; k++)
        for (unsigned b = mk[k]; b; b &= b - 1) acc += val_at(s, v++) * x[8 * k + __builtin_ctz(b)];
    return acc;
}

static void rows_ref(const wmat_spm *s, const float *x, float *y, int64_t r0, int64_t r1, int acc)
{
    for (int64_t r = r0; r < r1; r++) {
        const float d = row_tail(s, s->mask + r * s->mask_bytes, 0, wmat__spm_row_start(s, r), x, 0.0f);
        y[r] = acc ? y[r] + d : d;
    }
}

#ifdef KS_X86
KS_AVX2 static float hsum(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

/* 8 values from index v as fp32. */
KS_AVX2 static __m256 load8(const wmat_spm *s, int64_t v)
{
    if (s->vdt == WMAT_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)s->vals + v)));
    return _mm256_loadu_ps((const float *)s->vals + v);
}

/* Input positions of two mask bytes holding 4 bits each: lanes 0-3 index
 * the first byte's 8 inputs, lanes 4-7 the second's. */
KS_AVX2 static __m256i pos2(uint8_t b0, uint8_t b1)
{
    return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_load_si128((const __m128i *)g_pos4[b0])),
                                   _mm_load_si128((const __m128i *)g_pos4[b1]), 1);
}

#define HALF_STEP(P, V, ACC)                                                                                           \
    do {                                                                                                               \
        const __m256i i_ = pos2(mk[2 * (P)], mk[2 * (P) + 1]);                                                         \
        const float *xp_ = x + 16 * (P);                                                                               \
        const __m256 g_ = _mm256_blend_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xp_), i_),                          \
                                          _mm256_permutevar8x32_ps(_mm256_loadu_ps(xp_ + 8), i_), 0xF0);               \
        ACC = _mm256_fmadd_ps(load8(s, V), g_, ACC);                                                                   \
    } while (0)

/* Four accumulators: an FMA's latency is several steps' other work. */
KS_AVX2 static float row_half_avx2(const wmat_spm *s, const uint8_t *mk, int64_t v, const float *x)
{
    const int64_t np = s->cols / 16; /* pairs of full bytes */
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t p = 0;
    for (; p + 4 <= np; p += 4, v += 32) {
        HALF_STEP(p, v, a0);
        HALF_STEP(p + 1, v + 8, a1);
        HALF_STEP(p + 2, v + 16, a2);
        HALF_STEP(p + 3, v + 24, a3);
    }
    for (; p < np; p++, v += 8) HALF_STEP(p, v, a0);
    return row_tail(s, mk, 2 * np, v, x, hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))));
}
#undef HALF_STEP

/* Any count per byte: the byte's inputs permuted into its values' order,
 * lanes past the count zeroed; 8 values are read while they lie inside
 * the array (the last bytes of the matrix go through row_tail). */
KS_AVX2 static __m256 any_step(const wmat_spm *s, unsigned b, const float *x8, int64_t v, __m256 acc)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)g_pos[b]));
    const __m256 keep = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(__builtin_popcount(b)), lane));
    const __m256 g = _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(x8), idx), keep);
    return _mm256_fmadd_ps(load8(s, v), g, acc);
}

/* Two bytes a step into two accumulators (one FMA chain would wait on
 * its latency at every byte). */
KS_AVX2 static float row_any_avx2(const wmat_spm *s, const uint8_t *mk, int64_t v, const float *x, int64_t nv)
{
    const int64_t nb = s->cols / 8;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 2 <= nb && v + 16 <= nv; k += 2) {
        const unsigned b0 = mk[k], b1 = mk[k + 1];
        a0 = any_step(s, b0, x + 8 * k, v, a0);
        v += __builtin_popcount(b0);
        a1 = any_step(s, b1, x + 8 * k + 8, v, a1);
        v += __builtin_popcount(b1);
    }
    return row_tail(s, mk, k, v, x, hsum(_mm256_add_ps(a0, a1)));
}

KS_AVX2 static void rows_avx2(const wmat_spm *s, const float *x, float *y, int64_t r0, int64_t r1, int acc)
{
    const int64_t nv = total_vals(s);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *mk = s->mask + r * s->mask_bytes;
        const int64_t v = wmat__spm_row_start(s, r);
        const float d = s->half ? row_half_avx2(s, mk, v, x) : row_any_avx2(s, mk, v, x, nv);
        y[r] = acc ? y[r] + d : d;
    }
}
#endif

void wmat__spm_rows(const wmat_spm *s, const float *x, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
#ifdef KS_X86
    if (isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2) {
        rows_avx2(s, x, y, r0, r1, acc);
        return;
    }
#endif
    (void)isa;
    rows_ref(s, x, y, r0, r1, acc);
}

void wmat__spm_dequant(const wmat_spm *s, int64_t r0, int64_t nr, float *out)
{
    memset(out, 0, (size_t)(nr * s->cols) * sizeof(float));
    for (int64_t i = 0; i < nr; i++) {
        const uint8_t *mk = s->mask + (r0 + i) * s->mask_bytes;
        float *o = out + i * s->cols;
        int64_t v = wmat__spm_row_start(s, r0 + i);
        for (int64_t k = 0; k < s->mask_bytes; k++)
            for (unsigned b = mk[k]; b; b &= b - 1) o[8 * k + __builtin_ctz(b)] = val_at(s, v++);
    }
}

/* ---- batched: tiles of rows dequantized into ws (tiles.c) */

static void spm_rows(const void *obj, int64_t r0, int64_t nr, float *out) { wmat__spm_dequant(obj, r0, nr, out); }

size_t wmat__spm_ws_bytes(const wmat_spm *s, int T, const wmat_wexec *ex)
{
    (void)T;
    return wmat__tiles_ws_bytes(s->rows, s->cols, ex);
}

void wmat__spm_forward(const wmat_spm *s, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__tiles_forward(spm_rows, s, s->rows, s->cols, X, Y, T, acc, ws, ex);
}

void wmat__spm_backward(const wmat_spm *s, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__tiles_backward(spm_rows, s, s->rows, s->cols, dY, dX, T, acc, ws, ex);
}

/* ---- masks */

typedef struct {
    float s;
    int32_t i;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return x->i < y->i ? -1 : x->i > y->i;
}

void wmat__mask_row_topk(const float *score, int64_t rows, int64_t cols, int64_t keep, uint8_t *mask)
{
    scored *buf = wmat__malloc((size_t)cols * sizeof *buf);
    for (int64_t r = 0; r < rows; r++) {
        const float *sc = score + r * cols;
        uint8_t *mk = mask + r * cols;
        if (keep >= cols || keep <= 0 || !buf) { /* nothing to choose (or no memory: keep all) */
            memset(mk, keep > 0 || !buf ? 1 : 0, (size_t)cols);
            continue;
        }
        for (int64_t c = 0; c < cols; c++) buf[c] = (scored){sc[c] == sc[c] ? sc[c] : -1.0f, (int32_t)c};
        qsort(buf, (size_t)cols, sizeof *buf, cmp_scored);
        memset(mk, 0, (size_t)cols);
        for (int64_t k = 0; k < keep; k++) mk[buf[k].i] = 1;
    }
    wmat__free(buf);
}

void wmat__mask_nm(const float *score, int64_t rows, int64_t cols, int n, int m, uint8_t *mask)
{
    for (int64_t g = 0; g < rows * cols; g += m) {
        const float *sc = score + g;
        uint8_t *mk = mask + g;
        memset(mk, 0, (size_t)m);
        for (int k = 0; k < n; k++) {
            int best = -1;
            for (int j = 0; j < m; j++)
                if (!mk[j] && (best < 0 || sc[j] > sc[best])) best = j;
            mk[best] = 1;
        }
    }
}
