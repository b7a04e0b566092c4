/* Kernels over f16, bf16, Q8_0 and Q4_0 weights in their stored type
 * (contract: kern_dense.h).
 *
 * Decode is memory-bound on large models: a row is streamed once, in
 * address order, converted in registers and never written back. Dense rows
 * are widened to fp32 (F16C / a 16-bit shift) and multiplied with fp32 x.
 * Block rows take int8 activations, as llama.cpp does: x is quantized once
 * per vector to Q8_0 codes, each block's dot product is exact in int32
 * (maddubs + madd on AVX2, dpbusd with VNNI) and only the per-block scale
 * d_w * d_x is applied in float. Q4_0's codes stay unsigned (0..15): the
 * unsigned x signed byte product takes them as they are, and the offset
 * of 8 comes back exactly as 8 * sum(x codes), prepared once per block.
 *
 * Batched products dequantize tiles of W to fp32 in the caller's workspace
 * and hand them to wmat_sgemm; the conversions are exact, so a tile is
 * bit-equal to wmat__wrow_dequant of the same rows.
 */
#include "kern_dense.h"

#include "../linalg/linalg.h"

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KD_X86 1
#define KD_AVX2 __attribute__((target("avx2,fma,f16c")))
#define KD_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define KD_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#endif

#define QK 32
/* Software prefetch distance of the row streams: one line requested
 * 1 KB ahead of the loads. On a Zen core the hardware prefetcher alone
 * keeps too few lines in flight for a 2-byte type: a 5632 x 2048 f16
 * matvec ran 1.70x fp32's speed without it, 2.1x with it (256 B: 1.9x,
 * 2 KB: 1.9x). */
#define PF_AHEAD 1024

/* ------------------------------------------------------------ ISA */

/* Bit 0..3: level + 1 (0 = not detected yet), bit 4: VNNI. Stored once
 * with an atomic store; concurrent first calls compute the same value. */
static int g_isa_bits;

static int isa_bits(void)
{
    int v = __atomic_load_n(&g_isa_bits, __ATOMIC_RELAXED);
    if (v) return v;
    int level = WMAT_ISA_REF, vnni = 0;
#ifdef KD_X86
    __builtin_cpu_init();
    const int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    /* F16C has no __builtin_cpu_supports name in older GCCs; every CPU
     * with AVX2 and FMA has it (Haswell, Zen). */
    const int has512 = has2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl");
    level = has512 ? WMAT_ISA_AVX512 : has2 ? WMAT_ISA_AVX2 : WMAT_ISA_REF;
    vnni = has512 && __builtin_cpu_supports("avx512vnni");
#endif
    v = (level + 1) | (vnni << 4);
    __atomic_store_n(&g_isa_bits, v, __ATOMIC_RELAXED);
    return v;
}

int wmat__isa_best(void) { return (isa_bits() & 15) - 1; }
int wmat__isa_has_vnni(void) { return (isa_bits() >> 4) & 1; }

static int clamp_isa(int isa)
{
    const int best = wmat__isa_best();
    if (isa > best) isa = best;
    if (isa == 1) isa = WMAT_ISA_REF; /* no level 1 */
    return isa < 0 ? WMAT_ISA_REF : isa;
}

/* ------------------------------------------------------------ sizes */

size_t wmat__wrow_bytes(wmat_dtype dt, int64_t in)
{
    switch (dt) {
    case WMAT_F32: return (size_t)in * 4;
    case WMAT_F16:
    case WMAT_BF16: return (size_t)in * 2;
    case WMAT_Q8_0: return in % QK ? 0 : (size_t)(in / QK) * 34;
    case WMAT_Q4_0: return in % QK ? 0 : (size_t)(in / QK) * 18;
    default: /* ggml's other block types (kind_ggml.c): tiles only */
        return wmat__ggml_block_type(dt) >= 0 ? wmat_dtype_bytes(dt, (uint64_t)in) : 0;
    }
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Offsets of the prepared-x parts (kern_dense.h). */
typedef struct {
    const float *d;
    const int32_t *sum;
    const int8_t *q;
} prep_view;

static size_t prep_off_sum(int64_t nb) { return align64((size_t)nb * 4); }
static size_t prep_off_q(int64_t nb) { return prep_off_sum(nb) + align64((size_t)nb * 4); }

static prep_view view_prep(const void *prep, int64_t in)
{
    const int64_t nb = in / QK;
    const unsigned char *p = prep;
    prep_view v = {(const float *)p, (const int32_t *)(p + prep_off_sum(nb)), (const int8_t *)(p + prep_off_q(nb))};
    return v;
}

size_t wmat__wrow_prep_bytes(wmat_dtype dt, int64_t in)
{
    if ((dt != WMAT_Q8_0 && dt != WMAT_Q4_0) || in % QK) return 0;
    return prep_off_q(in / QK) + align64((size_t)in);
}

/* ------------------------------------------------------------ scalar helpers */

/* Stored values are read through memcpy: rows of a mapped file need not
 * be aligned to their element size. */
static inline uint16_t ld_u16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static inline float ld_f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return wmat_f16_to_f32(h);
}
static inline float ld_bf16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return wmat_bf16_to_f32(h);
}

/* ------------------------------------------------------------ prepare */

/* x -> Q8_0 codes with wmat__quantize_row_q8_0 itself (ggml's reference),
 * the scale as the block stores it (fp16). */
static void prepare_ref(const float *x, int64_t in, void *prep)
{
    const int64_t nb = in / QK;
    unsigned char *p = prep;
    float *d = (float *)p;
    int32_t *sum = (int32_t *)(p + prep_off_sum(nb));
    int8_t *q = (int8_t *)(p + prep_off_q(nb));
    unsigned char blk[34];
    for (int64_t b = 0; b < nb; b++) {
        wmat__quantize_row_q8_0(x + b * QK, blk, QK);
        d[b] = ld_f16(blk);
        int32_t s = 0;
        for (int j = 0; j < QK; j++) {
            q[b * QK + j] = (int8_t)blk[2 + j];
            s += (int8_t)blk[2 + j];
        }
        sum[b] = s;
    }
}

#ifdef KD_X86
/* The same codes, bit for bit: the scale and its inverse in scalar float
 * as the reference computes them, the products x * id in vector float
 * (the same single rounding), and roundf's half-away-from-zero rule from
 * trunc plus the exact fraction v - trunc(v). */
KD_AVX2 static void prepare_avx2(const float *x, int64_t in, void *prep)
{
    const int64_t nb = in / QK;
    unsigned char *p = prep;
    float *d = (float *)p;
    int32_t *sum = (int32_t *)(p + prep_off_sum(nb));
    int8_t *q = (int8_t *)(p + prep_off_q(nb));
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * QK;
        __m256 v[4];
        for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(xb + 8 * k);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        const float amax = _mm_cvtss_f32(m4);
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        d[b] = wmat_f16_to_f32(wmat_f32_to_f16(dd));
        const __m256 vid = _mm256_set1_ps(id);
        __m256i r[4];
        for (int k = 0; k < 4; k++) {
            const __m256 s = _mm256_mul_ps(v[k], vid);
            const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 fr = _mm256_and_ps(_mm256_sub_ps(s, t), absmask);
            const __m256 sg = _mm256_or_ps(_mm256_andnot_ps(absmask, s), one); /* +-1 */
            const __m256 adj = _mm256_and_ps(_mm256_cmp_ps(fr, half, _CMP_GE_OQ), sg);
            r[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, adj));
        }
        const __m256i s4 = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
        __m128i s2 = _mm_add_epi32(_mm256_castsi256_si128(s4), _mm256_extracti128_si256(s4, 1));
        s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0x4e));
        s2 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1));
        sum[b] = _mm_cvtsi128_si32(s2);
        /* packs work per 128-bit lane: the permute restores element order */
        const __m256i p16a = _mm256_packs_epi32(r[0], r[1]), p16b = _mm256_packs_epi32(r[2], r[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm);
        _mm256_storeu_si256((__m256i *)(q + b * QK), p8);
    }
}
#endif

void wmat__wrow_prepare(wmat_dtype dt, const float *x, int64_t in, void *prep, int isa)
{
    if ((dt != WMAT_Q8_0 && dt != WMAT_Q4_0) || in % QK) return;
#ifdef KD_X86
    if (clamp_isa(isa) >= WMAT_ISA_AVX2) {
        prepare_avx2(x, in, prep);
        return;
    }
#endif
    prepare_ref(x, in, prep);
}

/* ------------------------------------------------------------ dot: reference */

static float f16_dot_ref(const unsigned char *w, const float *x, int64_t in)
{
    float s = 0.0f;
    for (int64_t j = 0; j < in; j++) s += ld_f16(w + 2 * j) * x[j];
    return s;
}
static float bf16_dot_ref(const unsigned char *w, const float *x, int64_t in)
{
    float s = 0.0f;
    for (int64_t j = 0; j < in; j++) s += ld_bf16(w + 2 * j) * x[j];
    return s;
}
static float q8_dot_ref(const unsigned char *w, const prep_view *p, int64_t in)
{
    float s = 0.0f;
    for (int64_t b = 0; b < in / QK; b++, w += 34) {
        const int8_t *q = p->q + b * QK;
        int32_t acc = 0;
        for (int j = 0; j < QK; j++) acc += (int8_t)w[2 + j] * q[j];
        s += ld_f16(w) * p->d[b] * (float)acc;
    }
    return s;
}
static float q4_dot_ref(const unsigned char *w, const prep_view *p, int64_t in)
{
    float s = 0.0f;
    for (int64_t b = 0; b < in / QK; b++, w += 18) {
        const int8_t *q = p->q + b * QK;
        int32_t acc = 0;
        for (int j = 0; j < QK / 2; j++)
            acc += ((w[2 + j] & 15) - 8) * q[j] + ((w[2 + j] >> 4) - 8) * q[j + QK / 2];
        s += ld_f16(w) * p->d[b] * (float)acc;
    }
    return s;
}

/* Q4_0's codes with the fp16 scales stored apart (wmat's packed symmetric
 * 4-bit weights in groups of 32 inputs): 16 bytes of nibbles per block,
 * scale b at sc[b]. */
static float q4s_dot_ref(const unsigned char *w, const uint16_t *sc, const prep_view *p, int64_t in)
{
    float s = 0.0f;
    for (int64_t b = 0; b < in / QK; b++, w += 16) {
        const int8_t *q = p->q + b * QK;
        int32_t acc = 0;
        for (int j = 0; j < QK / 2; j++) acc += ((w[j] & 15) - 8) * q[j] + ((w[j] >> 4) - 8) * q[j + QK / 2];
        s += wmat_f16_to_f32(sc[b]) * p->d[b] * (float)acc;
    }
    return s;
}

/* ------------------------------------------------------------ dot: AVX2 */

#ifdef KD_X86
KD_AVX2 static inline float hsum8(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

/* Dense rows: four independent accumulators so the FMA latency is hidden;
 * the tail (fewer than 8 values) in scalar float. */
#define KD_DENSE_AVX2(name, LOAD8, SCALAR)                                                                            \
    KD_AVX2 static float name(const unsigned char *w, const float *x, int64_t in)                                   \
    {                                                                                                                \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps(); \
        int64_t j = 0;                                                                                               \
        for (; j + 32 <= in; j += 32) {                                                                              \
            _mm_prefetch((const char *)(w + 2 * j + PF_AHEAD), _MM_HINT_T0);                                 \
            a0 = _mm256_fmadd_ps(LOAD8(w + 2 * j), _mm256_loadu_ps(x + j), a0);                                      \
            a1 = _mm256_fmadd_ps(LOAD8(w + 2 * j + 16), _mm256_loadu_ps(x + j + 8), a1);                             \
            a2 = _mm256_fmadd_ps(LOAD8(w + 2 * j + 32), _mm256_loadu_ps(x + j + 16), a2);                            \
            a3 = _mm256_fmadd_ps(LOAD8(w + 2 * j + 48), _mm256_loadu_ps(x + j + 24), a3);                            \
        }                                                                                                            \
        for (; j + 8 <= in; j += 8) a0 = _mm256_fmadd_ps(LOAD8(w + 2 * j), _mm256_loadu_ps(x + j), a0);             \
        float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                               \
        for (; j < in; j++) s += SCALAR(w + 2 * j) * x[j];                                                           \
        return s;                                                                                                    \
    }

KD_AVX2 static inline __m256 f16x8_avx2(const unsigned char *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
KD_AVX2 static inline __m256 bf16x8_avx2(const unsigned char *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
KD_DENSE_AVX2(f16_dot_avx2, f16x8_avx2, ld_f16)
KD_DENSE_AVX2(bf16_dot_avx2, bf16x8_avx2, ld_bf16)

KD_AVX2 static inline float f16s(const unsigned char *p) { return _cvtsh_ss(ld_u16(p)); }

/* 32 signed weights x 32 signed codes -> 8 int32 partial sums, exact:
 * maddubs wants one unsigned operand, so |w| with w's sign moved onto x
 * (|w| <= 128, |x| <= 127: a pair sums to at most 32512, no saturation). */
KD_AVX2 static inline __m256i dot_s8s8_avx2(__m256i w, __m256i x)
{
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

/* Q4_0 codes 0..15 of one block as 32 bytes in element order. */
KD_AVX2 static inline __m256i nibbles_avx2(const unsigned char *qs)
{
    /* both halves from one broadcast load; the high half shifted by 4 per
     * 64-bit lane (bits crossing into a byte are masked off) */
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(15));
}

/* fp16 values at w, w + stride, ..., w + 7 stride as 8 floats: inserts,
 * not eight narrow stores and a wide load (that load would wait on a
 * failed store forwarding: measured 1.5x slower). */
KD_AVX2 static inline __m256 scales8_avx2(const unsigned char *w, size_t stride)
{
    __m128i h = _mm_cvtsi32_si128(ld_u16(w));
    h = _mm_insert_epi16(h, ld_u16(w + stride), 1);
    h = _mm_insert_epi16(h, ld_u16(w + 2 * stride), 2);
    h = _mm_insert_epi16(h, ld_u16(w + 3 * stride), 3);
    h = _mm_insert_epi16(h, ld_u16(w + 4 * stride), 4);
    h = _mm_insert_epi16(h, ld_u16(w + 5 * stride), 5);
    h = _mm_insert_epi16(h, ld_u16(w + 6 * stride), 6);
    h = _mm_insert_epi16(h, ld_u16(w + 7 * stride), 7);
    return _mm256_cvtph_ps(h);
}

/* Blocks go eight at a time: their eight scales d_w d_x are formed in one
 * vector (one fp16 conversion, one product with x's contiguous scales) and
 * each block broadcasts its own from a stack copy (a broadcast from memory
 * is a plain load; a lane permute measured slower on Zen 2), instead of a
 * scalar load-convert-multiply-broadcast per block (5 of ~15 instructions
 * a block): Q8_0 1.17x, Q4_0 1.25x faster in cache. Two accumulators keep
 * two FMA chains in flight. */
#define KD_BLOCK_ROW(ATTR, name, BB, BLOCK)                                                                             \
    ATTR static float name(const unsigned char *w, const prep_view *p, int64_t in)                                   \
    {                                                                                                                  \
        const int64_t nb = in / QK;                                                                                    \
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                                    \
        _Alignas(32) float sc[8];                                                                                      \
        int64_t b = 0;                                                                                                 \
        for (; b + 8 <= nb; b += 8, w += 8 * BB) {                                                                     \
            for (int l = 0; l < 8 * BB; l += 64) _mm_prefetch((const char *)(w + PF_AHEAD + l), _MM_HINT_T0);         \
            _mm256_store_ps(sc, _mm256_mul_ps(scales8_avx2(w, BB), _mm256_loadu_ps(p->d + b)));                        \
            for (int k = 0; k < 8; k += 2) {                                                                           \
                const __m256i i0 = BLOCK(w + k * BB, p, b + k), i1 = BLOCK(w + (k + 1) * BB, p, b + k + 1);            \
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + k), _mm256_cvtepi32_ps(i0), a0);                         \
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + k + 1), _mm256_cvtepi32_ps(i1), a1);                     \
            }                                                                                                          \
        }                                                                                                              \
        for (; b < nb; b++, w += BB)                                                                                   \
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(f16s(w) * p->d[b]), _mm256_cvtepi32_ps(BLOCK(w, p, b)), a0);          \
        return hsum8(_mm256_add_ps(a0, a1));                                                                           \
    }

/* One Q8_0 block (w at its scale) with x's block b: 8 int32 partial sums. */
KD_AVX2 static inline __m256i q8_block_avx2(const unsigned char *w, const prep_view *p, int64_t b)
{
    return dot_s8s8_avx2(_mm256_loadu_si256((const __m256i *)(w + 2)), _mm256_loadu_si256((const __m256i *)(p->q + b * QK)));
}

/* sum (c - 8) x = sum c x - 8 sum x: the unsigned codes go straight into
 * maddubs, and 8 * sum(x) leaves as sum(x) from each of the 8 lanes. */
KD_AVX2 static inline __m256i q4_block_avx2(const unsigned char *w, const prep_view *p, int64_t b)
{
    const __m256i p16 = _mm256_maddubs_epi16(nibbles_avx2(w + 2), _mm256_loadu_si256((const __m256i *)(p->q + b * QK)));
    return _mm256_sub_epi32(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)), _mm256_set1_epi32(p->sum[b]));
}

KD_BLOCK_ROW(KD_AVX2, q8_dot_avx2, 34, q8_block_avx2)
KD_BLOCK_ROW(KD_AVX2, q4_dot_avx2, 18, q4_block_avx2)

/* q4s_dot_ref's AVX2 twin: Q4_0's block product on 16-byte code chunks,
 * eight contiguous fp16 scales converted in one instruction. */
KD_AVX2 static float q4s_dot_avx2(const unsigned char *w, const uint16_t *scl, const prep_view *p, int64_t in)
{
    const int64_t nb = in / QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    _Alignas(32) float sc[8];
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8, w += 8 * 16) {
        _mm_prefetch((const char *)(w + PF_AHEAD), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + PF_AHEAD + 64), _MM_HINT_T0);
        const __m256 s8 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(scl + b)));
        _mm256_store_ps(sc, _mm256_mul_ps(s8, _mm256_loadu_ps(p->d + b)));
        for (int k = 0; k < 8; k += 2) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(p->q + (b + k) * QK));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(p->q + (b + k + 1) * QK));
            const __m256i i0 = _mm256_sub_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles_avx2(w + k * 16), x0), _mm256_set1_epi16(1)),
                _mm256_set1_epi32(p->sum[b + k]));
            const __m256i i1 = _mm256_sub_epi32(
                _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles_avx2(w + (k + 1) * 16), x1), _mm256_set1_epi16(1)),
                _mm256_set1_epi32(p->sum[b + k + 1]));
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + k), _mm256_cvtepi32_ps(i0), a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(sc + k + 1), _mm256_cvtepi32_ps(i1), a1);
        }
    }
    for (; b < nb; b++, w += 16) {
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(p->q + b * QK));
        const __m256i iv = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(nibbles_avx2(w), xv), _mm256_set1_epi16(1)),
                                            _mm256_set1_epi32(p->sum[b]));
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(wmat_f16_to_f32(scl[b]) * p->d[b]), _mm256_cvtepi32_ps(iv), a0);
    }
    return hsum8(_mm256_add_ps(a0, a1));
}

/* ------------------------------------------------------------ dot: AVX-512 */

/* Dense rows 64 values a step in four zmm accumulators, a masked tail. */
#define KD_DENSE_AVX512(name, CVT)                                                                                    \
    KD_AVX512 static float name(const unsigned char *w, const float *x, int64_t in)                                 \
    {                                                                                                                \
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps(); \
        int64_t j = 0;                                                                                               \
        for (; j + 64 <= in; j += 64) {                                                                              \
            _mm_prefetch((const char *)(w + 2 * j + PF_AHEAD), _MM_HINT_T0);                                         \
            _mm_prefetch((const char *)(w + 2 * j + PF_AHEAD + 64), _MM_HINT_T0);                                    \
            a0 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(w + 2 * j))), _mm512_loadu_ps(x + j), a0); \
            a1 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(w + 2 * j + 32))), _mm512_loadu_ps(x + j + 16), a1); \
            a2 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(w + 2 * j + 64))), _mm512_loadu_ps(x + j + 32), a2); \
            a3 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(w + 2 * j + 96))), _mm512_loadu_ps(x + j + 48), a3); \
        }                                                                                                            \
        for (; j + 16 <= in; j += 16)                                                                                \
            a0 = _mm512_fmadd_ps(CVT(_mm256_loadu_si256((const __m256i *)(w + 2 * j))), _mm512_loadu_ps(x + j), a0); \
        if (j < in) {                                                                                                \
            const __mmask16 m = (__mmask16)((1u << (in - j)) - 1);                                                   \
            a1 = _mm512_fmadd_ps(CVT(_mm256_maskz_loadu_epi16(m, w + 2 * j)), _mm512_maskz_loadu_ps(m, x + j), a1); \
        }                                                                                                            \
        return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));                   \
    }

KD_AVX512 static inline __m512 f16x16_avx512(__m256i h) { return _mm512_cvtph_ps(h); }
KD_AVX512 static inline __m512 bf16x16_avx512(__m256i h)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
KD_DENSE_AVX512(f16_dot_avx512, f16x16_avx512)
KD_DENSE_AVX512(bf16_dot_avx512, bf16x16_avx512)

/* VNNI: dpbusd does maddubs + madd in one instruction without the int16
 * step (the sign trick stays for Q8_0's signed weights); the rest as the
 * AVX2 rows. */
KD_VNNI static inline __m256i q8_block_vnni(const unsigned char *w, const prep_view *p, int64_t b)
{
    const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 2));
    const __m256i xv = _mm256_loadu_si256((const __m256i *)(p->q + b * QK));
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
}
KD_VNNI static inline __m256i q4_block_vnni(const unsigned char *w, const prep_view *p, int64_t b)
{
    const __m256i xv = _mm256_loadu_si256((const __m256i *)(p->q + b * QK));
    return _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles_avx2(w + 2), xv),
                            _mm256_set1_epi32(p->sum[b]));
}
KD_BLOCK_ROW(KD_VNNI, q8_dot_vnni, 34, q8_block_vnni)
KD_BLOCK_ROW(KD_VNNI, q4_dot_vnni, 18, q4_block_vnni)
#endif

/* ------------------------------------------------------------ dot: dispatch */

typedef float (*dense_fn)(const unsigned char *, const float *, int64_t);
typedef float (*block_fn)(const unsigned char *, const prep_view *, int64_t);

void wmat__wrow_dot(wmat_dtype dt, const void *W, int64_t in, const float *x, const void *prep, float *y, int64_t r0,
                    int64_t r1, int accumulate, int isa)
{
    const size_t rb = wmat__wrow_bytes(dt, in);
    if (!rb || r0 >= r1) return;
    isa = clamp_isa(isa);
    const unsigned char *w = (const unsigned char *)W + (size_t)r0 * rb;
    if (dt == WMAT_F16 || dt == WMAT_BF16) {
        dense_fn fn = dt == WMAT_F16 ? f16_dot_ref : bf16_dot_ref;
#ifdef KD_X86
        if (isa == WMAT_ISA_AVX512) fn = dt == WMAT_F16 ? f16_dot_avx512 : bf16_dot_avx512;
        else if (isa == WMAT_ISA_AVX2) fn = dt == WMAT_F16 ? f16_dot_avx2 : bf16_dot_avx2;
#endif
        for (int64_t r = r0; r < r1; r++, w += rb) {
            const float d = fn(w, x, in);
            y[r] = accumulate ? y[r] + d : d;
        }
        return;
    }
    if (dt != WMAT_Q8_0 && dt != WMAT_Q4_0) return; /* ggml's other types have no row kernels here (kind_ggml.c) */
    block_fn fn = dt == WMAT_Q8_0 ? q8_dot_ref : q4_dot_ref;
#ifdef KD_X86
    if (isa == WMAT_ISA_AVX512 && wmat__isa_has_vnni()) fn = dt == WMAT_Q8_0 ? q8_dot_vnni : q4_dot_vnni;
    else if (isa >= WMAT_ISA_AVX2) fn = dt == WMAT_Q8_0 ? q8_dot_avx2 : q4_dot_avx2;
#endif
    const prep_view p = view_prep(prep, in);
    for (int64_t r = r0; r < r1; r++, w += rb) {
        const float d = fn(w, &p, in);
        y[r] = accumulate ? y[r] + d : d;
    }
}

void wmat__q4s_rows(const uint8_t *codes, size_t row_bytes, const uint16_t *scales, int64_t in, const void *prep,
                    float *y, int64_t r0, int64_t r1, int accumulate, int isa)
{
    if (in % QK || r0 >= r1) return;
    isa = clamp_isa(isa);
    float (*fn)(const unsigned char *, const uint16_t *, const prep_view *, int64_t) = q4s_dot_ref;
#ifdef KD_X86
    if (isa >= WMAT_ISA_AVX2) fn = q4s_dot_avx2;
#endif
    const prep_view p = view_prep(prep, in);
    const int64_t nb = in / QK;
    for (int64_t r = r0; r < r1; r++) {
        const float d = fn(codes + (size_t)r * row_bytes, scales + r * nb, &p, in);
        y[r] = accumulate ? y[r] + d : d;
    }
}

/* ------------------------------------------------------------ dequantize */

void wmat__wrow_dequant(wmat_dtype dt, const void *W, int64_t in, int64_t r0, int64_t nr, float *out)
{
    const size_t rb = wmat__wrow_bytes(dt, in);
    if (!rb) return;
    const unsigned char *w = (const unsigned char *)W + (size_t)r0 * rb;
    for (int64_t i = 0; i < nr; i++) wmat_to_f32(out + (size_t)i * in, w + (size_t)i * rb, dt, (uint64_t)in);
}

/* ggml's other block types: whole blocks (k0 and kc multiples of the
 * block, which the tiles' 256-column steps are) through their dequantizer */
static void deq_blocks(wmat_dtype dt, const unsigned char *w, int64_t k0, int64_t kc, float *o)
{
    const wmat_dtype_traits *tr = wmat_dtype_info(dt);
    wmat__ggml_block_dequant(dt, w + (size_t)(k0 / tr->block_size) * tr->block_bytes, o, kc);
}

/* Columns [k0, k0 + kc) of rows [r0, r0 + nr) into out (nr, kc) with row
 * stride kc; for block types k0 and kc are multiples of 32. Every
 * conversion is exact (a widening or one product d * code), so all twins
 * write the same bits as wmat__wrow_dequant. */
static void deq_tile_ref(wmat_dtype dt, const unsigned char *W, size_t rb, int64_t r0, int64_t nr, int64_t k0,
                         int64_t kc, float *out)
{
    for (int64_t i = 0; i < nr; i++) {
        const unsigned char *w = W + (size_t)(r0 + i) * rb;
        float *o = out + (size_t)i * kc;
        switch (dt) {
        case WMAT_F32: memcpy(o, w + 4 * k0, (size_t)kc * 4); break;
        case WMAT_F16:
        case WMAT_BF16: wmat_to_f32(o, w + 2 * k0, dt, (uint64_t)kc); break;
        case WMAT_Q8_0: wmat__dequantize_row_q8_0(w + (k0 / QK) * 34, o, kc); break;
        case WMAT_Q4_0: wmat__dequantize_row_q4_0(w + (k0 / QK) * 18, o, kc); break;
        default: deq_blocks(dt, w, k0, kc, o); break;
        }
    }
}

#ifdef KD_X86
KD_AVX2 static void deq_tile_avx2(wmat_dtype dt, const unsigned char *W, size_t rb, int64_t r0, int64_t nr, int64_t k0,
                                  int64_t kc, float *out)
{
    for (int64_t i = 0; i < nr; i++) {
        const unsigned char *w = W + (size_t)(r0 + i) * rb;
        float *o = out + (size_t)i * kc;
        int64_t j = 0;
        switch (dt) {
        case WMAT_F16:
            w += 2 * k0;
            for (; j + 8 <= kc; j += 8) _mm256_storeu_ps(o + j, f16x8_avx2(w + 2 * j));
            for (; j < kc; j++) o[j] = ld_f16(w + 2 * j);
            break;
        case WMAT_BF16:
            w += 2 * k0;
            for (; j + 8 <= kc; j += 8) _mm256_storeu_ps(o + j, bf16x8_avx2(w + 2 * j));
            for (; j < kc; j++) o[j] = ld_bf16(w + 2 * j);
            break;
        case WMAT_Q8_0:
            w += (k0 / QK) * 34;
            for (; j < kc; j += QK, w += 34) {
                const __m256 d = _mm256_set1_ps(f16s(w));
                for (int k = 0; k < 4; k++) {
                    const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(w + 2 + 8 * k)));
                    _mm256_storeu_ps(o + j + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(c), d));
                }
            }
            break;
        case WMAT_Q4_0:
            w += (k0 / QK) * 18;
            for (; j < kc; j += QK, w += 18) {
                const __m256 d = _mm256_set1_ps(f16s(w));
                const __m256i c = _mm256_sub_epi8(nibbles_avx2(w + 2), _mm256_set1_epi8(8));
                const __m128i lo = _mm256_castsi256_si128(c), hi = _mm256_extracti128_si256(c, 1);
                const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
                for (int k = 0; k < 4; k++)
                    _mm256_storeu_ps(o + j + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part[k])), d));
            }
            break;
        case WMAT_F32: memcpy(o, w + 4 * k0, (size_t)kc * 4); break;
        default: deq_blocks(dt, w, k0, kc, o); break;
        }
    }
}
#endif

static void deq_tile(wmat_dtype dt, const void *W, size_t rb, int64_t r0, int64_t nr, int64_t k0, int64_t kc, float *out,
                     int isa)
{
#ifdef KD_X86
    if (isa >= WMAT_ISA_AVX2) {
        deq_tile_avx2(dt, W, rb, r0, nr, k0, kc, out);
        return;
    }
#endif
    deq_tile_ref(dt, W, rb, r0, nr, k0, kc, out);
}

/* ------------------------------------------------------------ batched */

/* A tile of ~256 KB of fp32: half of a 512 KB-1 MB L2, leaving room for
 * the GEMM's packed panels of X. */
#define TILE_BYTES ((size_t)256 << 10)
#define BWD_COLS 256 /* column block of the backward pass (a multiple of 32) */

static int64_t fwd_tile_rows(int64_t rows, int64_t in)
{
    int64_t tr = (int64_t)(TILE_BYTES / ((size_t)in * 4)) / 16 * 16;
    if (tr < 16) tr = 16;
    return tr < rows ? tr : rows;
}
static int64_t bwd_cols(int64_t in) { return in < BWD_COLS ? in : BWD_COLS; }
static int64_t bwd_tile_rows(int64_t rows, int64_t in)
{
    int64_t tr = (int64_t)(TILE_BYTES / ((size_t)bwd_cols(in) * 4)) / 16 * 16;
    if (tr < 16) tr = 16;
    return tr < rows ? tr : rows;
}

static size_t per_thread_floats(int64_t rows, int64_t in)
{
    const size_t f = (size_t)fwd_tile_rows(rows, in) * (size_t)in;
    const size_t b = (size_t)bwd_tile_rows(rows, in) * (size_t)bwd_cols(in);
    return (f > b ? f : b) + 16; /* + 64 bytes: each slice starts on a line */
}

/* bf16 activations for the native bf16 product: T rows of X, 64-byte aligned. */
static size_t bf16_act_bytes(int64_t in, int T) { return (size_t)(T > 0 ? T : 0) * (size_t)in * 2 + 64; }

size_t wmat__wtile_ws_bytes(wmat_dtype dt, int64_t rows, int64_t in, int T, int n_threads)
{
    if (rows <= 0 || in <= 0) return 0;
    const size_t tiles = (size_t)(n_threads > 1 ? n_threads : 1) * per_thread_floats(rows, in) * 4 + 64;
    if (dt != WMAT_BF16) return tiles;
    const size_t act = bf16_act_bytes(in, T);
    return tiles > act ? tiles : act;
}

static float *ws_slice(void *ws, int64_t rows, int64_t in, int t)
{
    uintptr_t p = ((uintptr_t)ws + 63) & ~(uintptr_t)63;
    return (float *)p + (size_t)t * per_thread_floats(rows, in);
}

static void fwd_tile(wmat_dtype dt, const void *W, size_t rb, int64_t rows, int64_t in, const float *X, float *Y, int T,
                     int accumulate, float *tile, int64_t r0, int64_t nr, int isa, wmat_gemm_backend gemm, int gemm_threads)
{
    deq_tile(dt, W, rb, r0, nr, 0, in, tile, isa);
    wmat__sgemm_cfg(gemm, gemm_threads, 0, 1, T, (int)nr, (int)in, 1.0f, X, (int)in, tile, (int)in, accumulate ? 1.0f : 0.0f,
                    Y + r0, (int)rows);
}

int wmat__wtile_forward_bf16(const uint16_t *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                             int accumulate, void *ws, int n_threads, wmat_gemm_backend gemm)
{
    if (rows <= 0 || T <= 0) return WMAT_OK;
    if (rows > INT_MAX || in > INT_MAX) return WMAT_ERR_UNSUPPORTED;
    uint16_t *xh = (uint16_t *)(((uintptr_t)ws + 63) & ~(uintptr_t)63);
    const size_t n = (size_t)T * (size_t)in;
    for (size_t i = 0; i < n; i++) xh[i] = wmat_f32_to_bf16(X[i]);
    return wmat__gemm_bf16_on(gemm, n_threads, 0, 1, T, (int)rows, (int)in, 1.0f, xh, (int)in, W, (int)in, accumulate ? 1.0f : 0.0f,
                              Y, (int)rows);
}

void wmat__wtile_forward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *X, float *Y, int T,
                         int accumulate, void *ws, int n_threads, int isa, wmat_gemm_backend gemm)
{
    const size_t rb = wmat__wrow_bytes(dt, in);
    if (!rb || rows <= 0 || T <= 0) return;
    /* A native bf16 matmul (oneDNN on AVX512-BF16 / AMX) takes the stored
     * weights as they are: no fp32 tile, twice the multiply rate of fp32. */
    if (dt == WMAT_BF16 && T > 1 && wmat__gemm_bf16_native(gemm) &&
        wmat__wtile_forward_bf16(W, rows, in, X, Y, T, accumulate, ws, n_threads, gemm) == WMAT_OK)
        return;
    isa = clamp_isa(isa);
    const int64_t tr = fwd_tile_rows(rows, in), ntile = (rows + tr - 1) / tr;
    const int nt = n_threads > 1 && ntile > 1 ? (n_threads < ntile ? n_threads : (int)ntile) : 1;
    if (nt == 1) {
        float *tile = ws_slice(ws, rows, in, 0);
        for (int64_t i = 0; i < ntile; i++) {
            const int64_t r0 = i * tr, nr = rows - r0 < tr ? rows - r0 : tr;
            fwd_tile(dt, W, rb, rows, in, X, Y, T, accumulate, tile, r0, nr, isa, gemm, n_threads);
        }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        float *tile = ws_slice(ws, rows, in, omp_get_thread_num());
#pragma omp for schedule(static)
        for (int64_t i = 0; i < ntile; i++) {
            const int64_t r0 = i * tr, nr = rows - r0 < tr ? rows - r0 : tr;
            fwd_tile(dt, W, rb, rows, in, X, Y, T, accumulate, tile, r0, nr, isa, gemm, 1);
        }
    }
}

/* dX[:, k0:k0+kc] over every row tile of W[:, k0:k0+kc]. */
static void bwd_cols_block(wmat_dtype dt, const void *W, size_t rb, int64_t rows, int64_t in, const float *dY, float *dX,
                           int T, int accumulate, float *tile, int64_t k0, int64_t kc, int isa, wmat_gemm_backend gemm,
                           int gemm_threads)
{
    const int64_t tr = bwd_tile_rows(rows, in);
    for (int64_t r0 = 0; r0 < rows; r0 += tr) {
        const int64_t nr = rows - r0 < tr ? rows - r0 : tr;
        deq_tile(dt, W, rb, r0, nr, k0, kc, tile, isa);
        const float beta = r0 == 0 && !accumulate ? 0.0f : 1.0f;
        wmat__sgemm_cfg(gemm, gemm_threads, 0, 0, T, (int)kc, (int)nr, 1.0f, dY + r0, (int)rows, tile, (int)kc, beta, dX + k0,
                        (int)in);
    }
}

void wmat__wtile_backward(wmat_dtype dt, const void *W, int64_t rows, int64_t in, const float *dY, float *dX, int T,
                          int accumulate, void *ws, int n_threads, int isa, wmat_gemm_backend gemm)
{
    const size_t rb = wmat__wrow_bytes(dt, in);
    if (!rb || T <= 0) return;
    if (rows <= 0) {
        if (!accumulate) memset(dX, 0, (size_t)T * (size_t)in * 4);
        return;
    }
    isa = clamp_isa(isa);
    const int64_t kcw = bwd_cols(in), nblk = (in + kcw - 1) / kcw;
    const int nt = n_threads > 1 && nblk > 1 ? (n_threads < nblk ? n_threads : (int)nblk) : 1;
    if (nt == 1) {
        float *tile = ws_slice(ws, rows, in, 0);
        for (int64_t i = 0; i < nblk; i++) {
            const int64_t k0 = i * kcw, kc = in - k0 < kcw ? in - k0 : kcw;
            bwd_cols_block(dt, W, rb, rows, in, dY, dX, T, accumulate, tile, k0, kc, isa, gemm, n_threads);
        }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        float *tile = ws_slice(ws, rows, in, omp_get_thread_num());
#pragma omp for schedule(static)
        for (int64_t i = 0; i < nblk; i++) {
            const int64_t k0 = i * kcw, kc = in - k0 < kcw ? in - k0 : kcw;
            bwd_cols_block(dt, W, rb, rows, in, dY, dX, T, accumulate, tile, k0, kc, isa, gemm, 1);
        }
    }
}
