/* Sum of x[c] over the set bits of a packed bit row (bit c at byte c/8, bit
 * c%8): the binary plane of PB-LLM and each sign block of BitStack. */
#include "wop.h"
#include "kern_dense.h" /* wmat__isa_best */

#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KB_X86 1
#define KB_AVX2 __attribute__((target("avx2,fma")))
#define KB_AVX512 __attribute__((target("avx512f")))
#endif

static int bit_at(const uint8_t *s, int64_t c) { return s[c >> 3] >> (c & 7) & 1; }

static float bits_sum_ref(const uint8_t *s, const float *x, int64_t n)
{
    float a[4] = {0, 0, 0, 0};
    for (int64_t c = 0; c < n; c++) a[c & 3] += (float)bit_at(s, c) * x[c]; /* no branch: the bits are random */
    return (a[0] + a[1]) + (a[2] + a[3]);
}

#ifdef KB_X86
/* A 32-bit word of bits is broadcast and shifted per lane so that bit 8k + i
 * of the word lands in lane i's sign bit for chunk k; blendv keeps x there
 * and 0 elsewhere. */
KB_AVX2 static float bits_sum_avx2(const uint8_t *s, const float *x, int64_t n)
{
    const __m256i sh0 = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24), eight = _mm256_set1_epi32(8);
    const __m256i sh1 = _mm256_sub_epi32(sh0, eight), sh2 = _mm256_sub_epi32(sh1, eight),
                  sh3 = _mm256_sub_epi32(sh2, eight);
    const __m256 z = _mm256_setzero_ps();
    __m256 a0 = z, a1 = z, a2 = z, a3 = z;
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
        uint32_t w;
        memcpy(&w, s + (c >> 3), 4);
        const __m256i b = _mm256_set1_epi32((int)w);
        a0 = _mm256_add_ps(a0, _mm256_blendv_ps(z, _mm256_loadu_ps(x + c), _mm256_castsi256_ps(_mm256_sllv_epi32(b, sh0))));
        a1 = _mm256_add_ps(a1, _mm256_blendv_ps(z, _mm256_loadu_ps(x + c + 8), _mm256_castsi256_ps(_mm256_sllv_epi32(b, sh1))));
        a2 = _mm256_add_ps(a2, _mm256_blendv_ps(z, _mm256_loadu_ps(x + c + 16), _mm256_castsi256_ps(_mm256_sllv_epi32(b, sh2))));
        a3 = _mm256_add_ps(a3, _mm256_blendv_ps(z, _mm256_loadu_ps(x + c + 24), _mm256_castsi256_ps(_mm256_sllv_epi32(b, sh3))));
    }
    for (; c + 8 <= n; c += 8) {
        const __m256i b = _mm256_set1_epi32(s[c >> 3]);
        a0 = _mm256_add_ps(a0, _mm256_blendv_ps(z, _mm256_loadu_ps(x + c), _mm256_castsi256_ps(_mm256_sllv_epi32(b, sh0))));
    }
    const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float r = _mm_cvtss_f32(h);
    for (; c < n; c++)
        if (bit_at(s, c)) r += x[c];
    return r;
}

/* 16 bits of the row are one lane mask: a masked add. */
KB_AVX512 static float bits_sum_avx512(const uint8_t *s, const float *x, int64_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    int64_t c = 0;
    for (; c + 32 <= n; c += 32) {
        uint32_t w;
        memcpy(&w, s + (c >> 3), 4);
        a0 = _mm512_mask_add_ps(a0, (__mmask16)(w & 0xFFFFu), a0, _mm512_loadu_ps(x + c));
        a1 = _mm512_mask_add_ps(a1, (__mmask16)(w >> 16), a1, _mm512_loadu_ps(x + c + 16));
    }
    for (; c + 16 <= n; c += 16) {
        uint16_t w;
        memcpy(&w, s + (c >> 3), 2);
        a0 = _mm512_mask_add_ps(a0, (__mmask16)w, a0, _mm512_loadu_ps(x + c));
    }
    float r = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    for (; c < n; c++)
        if (bit_at(s, c)) r += x[c];
    return r;
}
#endif

wmat_bits_sum_fn wmat__bits_sum_for(int isa)
{
    const int best = wmat__isa_best();
    if (isa > best) isa = best;
#ifdef KB_X86
    if (isa >= WMAT_ISA_AVX512) return bits_sum_avx512;
    if (isa >= WMAT_ISA_AVX2) return bits_sum_avx2;
#else
    (void)isa;
#endif
    return bits_sum_ref;
}
