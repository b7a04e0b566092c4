#include "internal.h"

#include <math.h>
#include <string.h>

static const wmat_dtype_traits g_traits[WMAT_DTYPE_COUNT] = {
    [WMAT_F32] = {"f32", 1, 4, 1},
    [WMAT_F16] = {"f16", 1, 2, 1},
    [WMAT_BF16] = {"bf16", 1, 2, 1},
    [WMAT_Q8_0] = {"q8_0", 32, 34, 1},
    [WMAT_Q4_0] = {"q4_0", 32, 18, 1},
    [WMAT_I32] = {"i32", 1, 4, 0},
    [WMAT_U8] = {"u8", 1, 1, 0},
    /* quantized storage: data is a wmat_qtensor, not an array; its size is
     * per tensor (t->nbytes), so the table gives none */
    [WMAT_QPACKED] = {"qpacked", 1, 0, 0},
    [WMAT_Q4_1] = {"q4_1", 32, 20, 1},
    [WMAT_Q5_0] = {"q5_0", 32, 22, 1},
    [WMAT_Q5_1] = {"q5_1", 32, 24, 1},
    [WMAT_Q2_K] = {"q2_k", 256, 84, 1},
    [WMAT_Q3_K] = {"q3_k", 256, 110, 1},
    [WMAT_Q4_K] = {"q4_k", 256, 144, 1},
    [WMAT_Q5_K] = {"q5_k", 256, 176, 1},
    [WMAT_Q6_K] = {"q6_k", 256, 210, 1},
    [WMAT_IQ4_NL] = {"iq4_nl", 32, 18, 1},
    [WMAT_IQ4_XS] = {"iq4_xs", 256, 136, 1},
};

const wmat_dtype_traits *wmat_dtype_info(wmat_dtype t)
{
    if ((unsigned)t >= WMAT_DTYPE_COUNT) return NULL;
    return &g_traits[t];
}

int wmat_dtype_from_name(const char *name)
{
    for (int i = 0; i < WMAT_DTYPE_COUNT; i++)
        if (strcmp(name, g_traits[i].name) == 0) return i;
    return -1;
}

size_t wmat_dtype_bytes(wmat_dtype t, uint64_t n)
{
    const wmat_dtype_traits *tr = wmat_dtype_info(t);
    if (!tr || n % (uint64_t)tr->block_size) return 0;
    uint64_t bytes;
    if (!wmat__mul_ok(n / (uint64_t)tr->block_size, tr->block_bytes, &bytes)) return 0;
    if (bytes > SIZE_MAX) return 0;
    return (size_t)bytes;
}

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t wmat_f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) { /* Inf or NaN: keep NaN payload bits, force quiet */
        if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
        return (uint16_t)(sign | 0x7c00u);
    }
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to Inf */
    if (a < 0x38800000u) {                                   /* f16 subnormal or zero */
        if (a < 0x33000000u) return (uint16_t)sign;          /* <= 2^-25 rounds to 0 */
        uint32_t e = a >> 23;
        uint32_t mant = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t h = (a >> 13) - (112u << 10);
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

float wmat_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1fu;
    uint32_t m = h & 0x3ffu;
    if (e == 0) {
        if (m == 0) return bits_f32(sign);
        /* subnormal: m * 2^-24 is exact in float */
        float v = (float)m * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    if (e == 31) /* Inf, or NaN quieted as the hardware converts it (F16C, libgcc) */
        return bits_f32(sign | 0x7f800000u | (m ? 0x400000u : 0) | (m << 13));
    return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t wmat_f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float wmat_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

/* F16C converts 8 values per instruction with the same results as the
 * scalar code above (round to nearest even, subnormals kept, NaN quieted
 * with its payload's top bits: tests/test_core.c compares every f16 and a
 * sweep of f32 bit patterns). Merging f16 checkpoints spent a fifth of its
 * time in the scalar loops. Each returns how many values it converted. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define DT_X86 1

static int g_f16c; /* 0: not detected yet, 1: no, 2: yes */

static int has_f16c(void)
{
    int v = __atomic_load_n(&g_f16c, __ATOMIC_RELAXED);
    if (!v) {
        /* cpuid leaf 1: ECX bit 28 AVX, bit 29 F16C (clang's
         * __builtin_cpu_supports has no "f16c") */
        unsigned a = 0, b = 0, c = 0, d = 0;
        v = __get_cpuid(1, &a, &b, &c, &d) && (c >> 28 & 1) && (c >> 29 & 1) ? 2 : 1;
        __atomic_store_n(&g_f16c, v, __ATOMIC_RELAXED);
    }
    return v == 2;
}

__attribute__((target("avx,f16c"))) static uint64_t f16_to_f32_f16c(float *dst, const unsigned char *src, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i))));
    return i;
}

__attribute__((target("avx,f16c"))) static uint64_t f32_to_f16_f16c(unsigned char *dst, const float *src, uint64_t n)
{
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return i;
}

/* f32 -> bf16 with the scalar code's results, bit for bit (round to
 * nearest even on the bits, NaN quieted with bit 6): the integer form of
 * wmat_f32_to_bf16 on 16 / 8 lanes. The mixed-precision trainer converts
 * every activation that enters a GEMM; the scalar loop cost as much as the
 * bf16 GEMM saved on mix4m's shapes (~1.2 ns a value). */
__attribute__((target("avx512f"))) static uint64_t f32_to_bf16_avx512(unsigned char *dst, const float *src, uint64_t n)
{
    const __m512i one = _mm512_set1_epi32(1), bias = _mm512_set1_epi32(0x7fff), inf = _mm512_set1_epi32(0x7f800000),
                  absm = _mm512_set1_epi32(0x7fffffff), quiet = _mm512_set1_epi32(0x40);
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i x = _mm512_loadu_si512((const void *)(src + i));
        const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, absm), inf);
        const __m512i hi = _mm512_srli_epi32(x, 16);
        __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, bias), _mm512_and_si512(hi, one)), 16);
        r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, quiet));
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2 * i), _mm512_cvtepi32_epi16(r));
    }
    return i;
}

__attribute__((target("avx2"))) static uint64_t f32_to_bf16_avx2(unsigned char *dst, const float *src, uint64_t n)
{
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7fff), inf = _mm256_set1_epi32(0x7f800000),
                  absm = _mm256_set1_epi32(0x7fffffff), quiet = _mm256_set1_epi32(0x40);
    uint64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256i r2[2];
        for (int h = 0; h < 2; h++) {
            const __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(src + i + 8 * h));
            const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(x, absm), inf);
            const __m256i hi = _mm256_srli_epi32(x, 16);
            const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, bias), _mm256_and_si256(hi, one)), 16);
            r2[h] = _mm256_blendv_epi8(r, _mm256_or_si256(hi, quiet), nan);
        }
        /* values fit 16 bits unsigned: packus keeps them; it interleaves
         * 128-bit lanes, the permute puts them back in order */
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r2[0], r2[1]), 0xD8);
        _mm256_storeu_si256((__m256i *)(void *)(dst + 2 * i), p);
    }
    return i;
}

static uint64_t f32_to_bf16_vec(unsigned char *dst, const float *src, uint64_t n)
{
    static int isa; /* 0: not detected, 1: none, 2: avx2, 3: avx512f */
    int v = __atomic_load_n(&isa, __ATOMIC_RELAXED);
    if (!v) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") ? 3 : __builtin_cpu_supports("avx2") ? 2 : 1;
        __atomic_store_n(&isa, v, __ATOMIC_RELAXED);
    }
    return v == 3 ? f32_to_bf16_avx512(dst, src, n) : v == 2 ? f32_to_bf16_avx2(dst, src, n) : 0;
}
#endif

int wmat_to_f32(float *dst, const void *src, wmat_dtype st, uint64_t n)
{
    switch (st) {
    case WMAT_F32: memmove(dst, src, n * 4); return WMAT_OK;
    case WMAT_F16: {
        const unsigned char *p = src;
        uint64_t i = 0;
#ifdef DT_X86
        if (has_f16c()) i = f16_to_f32_f16c(dst, p, n);
#endif
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = wmat_f16_to_f32(h);
        }
        return WMAT_OK;
    }
    case WMAT_BF16: {
        const unsigned char *p = src;
        for (uint64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = wmat_bf16_to_f32(h);
        }
        return WMAT_OK;
    }
    case WMAT_Q8_0:
        if (n % 32) return wmat_set_error(WMAT_ERR_INVALID, "q8_0: %llu values is not a multiple of 32", (unsigned long long)n);
        wmat__dequantize_row_q8_0(src, dst, (int64_t)n);
        return WMAT_OK;
    case WMAT_Q4_0:
        if (n % 32) return wmat_set_error(WMAT_ERR_INVALID, "q4_0: %llu values is not a multiple of 32", (unsigned long long)n);
        wmat__dequantize_row_q4_0(src, dst, (int64_t)n);
        return WMAT_OK;
    default:
        if (wmat__ggml_block_type(st) >= 0) {
            if (wmat__ggml_block_dequant(st, src, dst, (int64_t)n))
                return wmat_set_error(WMAT_ERR_INVALID, "%s: %llu values is not a multiple of %d", wmat_dtype_info(st)->name,
                                      (unsigned long long)n, wmat_dtype_info(st)->block_size);
            return WMAT_OK;
        }
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "no conversion from %s to f32",
                              wmat_dtype_info(st) ? wmat_dtype_info(st)->name : "unknown dtype");
    }
}

int wmat_from_f32(void *dst, wmat_dtype dt, const float *src, uint64_t n)
{
    switch (dt) {
    case WMAT_F32: memmove(dst, src, n * 4); return WMAT_OK;
    case WMAT_F16: {
        unsigned char *p = dst;
        uint64_t i = 0;
#ifdef DT_X86
        if (has_f16c()) i = f32_to_f16_f16c(p, src, n);
#endif
        for (; i < n; i++) {
            uint16_t h = wmat_f32_to_f16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return WMAT_OK;
    }
    case WMAT_BF16: {
        unsigned char *p = dst;
        uint64_t i = 0;
#ifdef DT_X86
        i = f32_to_bf16_vec(p, src, n);
#endif
        for (; i < n; i++) {
            uint16_t h = wmat_f32_to_bf16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
        return WMAT_OK;
    }
    case WMAT_Q8_0:
        if (n % 32) return wmat_set_error(WMAT_ERR_INVALID, "q8_0 needs a multiple of 32 values, got %llu", (unsigned long long)n);
        wmat__quantize_row_q8_0(src, dst, (int64_t)n);
        return WMAT_OK;
    case WMAT_Q4_0:
        if (n % 32) return wmat_set_error(WMAT_ERR_INVALID, "q4_0 needs a multiple of 32 values, got %llu", (unsigned long long)n);
        wmat__quantize_row_q4_0(src, dst, (int64_t)n);
        return WMAT_OK;
    default:
        if (wmat__ggml_block_can_quantize(dt)) {
            if (wmat__ggml_block_quant(dt, src, dst, (int64_t)n))
                return wmat_set_error(WMAT_ERR_INVALID, "%s needs a multiple of %d values, got %llu", wmat_dtype_info(dt)->name,
                                      wmat_dtype_info(dt)->block_size, (unsigned long long)n);
            return WMAT_OK;
        }
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "no conversion from f32 to %s",
                              wmat_dtype_info(dt) ? wmat_dtype_info(dt)->name : "unknown dtype");
    }
}

int64_t wmat_tensor_nelem(const wmat_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}
