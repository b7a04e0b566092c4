/* ggml's other block types as weight kinds, run as stored (a GGUF from the
 * Hub mapped and used in place): Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q6_K
 * and IQ4_NL / IQ4_XS. One implementation for all of them over the block
 * dequantizers of src/core/ggml_kquants.c:
 *   - batched products go through kern_dense.c's tiles (rows dequantized
 *     ~256 KB at a time, then the GEMM), as kind_stored.c's Q4_0 does;
 *   - one-row products dequantize one block at a time into a buffer on the
 *     stack and dot it with x: decode is bound by reading the weights, and
 *     a block's decode is short next to its bytes' arrival. The dot uses 8
 *     independent partial sums, so it vectorizes without reassociation;
 *     with AVX2 the same sums run as one 8-lane register (the reference
 *     twin and the AVX2 twin give the same bits). */
#include "wop.h"

#include "kern_dense.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KG_X86 1
#endif

#define MAX_BLOCK 256

static size_t row_bytes(const wmat_tensor *W) { return wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[1]); }

static void deq_rows(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const size_t rb = row_bytes(W);
    const unsigned char *w = (const unsigned char *)W->data + (size_t)r0 * rb;
    for (int64_t i = 0; i < nr; i++) wmat__ggml_block_dequant(W->dtype, w + (size_t)i * rb, out + (size_t)i * W->shape[1], W->shape[1]);
}

/* batched: kern_dense.c's tiles (dequantized rows times the GEMM), which
 * take these types through their block dequantizers */
static size_t kg_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    return wmat__wtile_ws_bytes(W->dtype, W->shape[0], W->shape[1], T, ex->n_threads);
}

static void kg_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_forward(W->dtype, W->data, W->shape[0], W->shape[1], X, Y, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

static void kg_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__wtile_backward(W->dtype, W->data, W->shape[0], W->shape[1], dY, dX, T, acc, ws, ex->n_threads, ex->isa, ex->gemm);
}

/* Q4_K and Q6_K (the bulk of a Q4_K_M file) multiply int8-quantized
 * activations, as llama.cpp does on CPUs: x prepared once per token as
 * Q8_0 blocks (kern_dense.h's layout), then each 32-value sub-block of a
 * row is an exact integer dot product scaled in float. The other types
 * read x as it is. */
static int fused(wmat_dtype dt) { return dt == WMAT_Q4_K || dt == WMAT_Q6_K; }

static size_t kg_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    return fused(W->dtype) ? wmat__wrow_prep_bytes(WMAT_Q8_0, W->shape[1]) : 0;
}

static void kg_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    if (fused(W->dtype)) wmat__wrow_prepare(WMAT_Q8_0, x, W->shape[1], prep, ex->isa);
}

/* the prepared x: block scales d, sums of the block's codes, codes (kern_dense.h) */
typedef struct {
    const float *d;
    const int32_t *sum;
    const int8_t *q;
} xprep;

static size_t a64(size_t n) { return (n + 63) & ~(size_t)63; }

static xprep view(const void *prep, int64_t in)
{
    const unsigned char *p = prep;
    const size_t nb = (size_t)(in / 32);
    xprep v = {(const float *)p, (const int32_t *)(p + a64(nb * 4)), (const int8_t *)(p + 2 * a64(nb * 4))};
    return v;
}

static float h16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return wmat_f16_to_f32(h);
}

/* One sub-block's term: d sc dx isum - dmin mn (sum of x), in this order
 * in both twins (the integer sums are exact, so the twins agree bit for bit). */
static inline float q4k_term(float d, float dmin, int sc, int mn, float xd, int32_t xsum, int32_t isum)
{
    return d * (float)sc * xd * (float)isum - dmin * (float)mn * xd * (float)xsum;
}

static float q4k_dot_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    for (int64_t sb = 0; sb < nsb; sb++, w += 144) {
        const float d = h16(w), dmin = h16(w + 2);
        for (int j = 0; j < 8; j++) {
            const int64_t b = sb * 8 + j;
            const unsigned char *qq = w + 16 + 32 * (j / 2);
            const int sh = 4 * (j & 1);
            const int8_t *xq = x->q + 32 * b;
            int32_t isum = 0;
            for (int l = 0; l < 32; l++) isum += ((qq[l] >> sh) & 15) * xq[l];
            int sc, mn;
            wmat__k4_scale_min(j, w + 4, &sc, &mn);
            s += q4k_term(d, dmin, sc, mn, x->d[b], x->sum[b], isum);
        }
    }
    return s;
}

/* Q6_K: 16 groups of 16 values, codes q - 32 with q in 0..63 */
static inline void q6k_codes(const unsigned char *w, uint8_t *q)
{
    const unsigned char *ql = w, *qh = w + 128;
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            q[n + l] = (uint8_t)((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4);
            q[n + l + 32] = (uint8_t)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4);
            q[n + l + 64] = (uint8_t)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4);
            q[n + l + 96] = (uint8_t)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4);
        }
}

static float q6k_dot_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t q[256];
    for (int64_t sb = 0; sb < nsb; sb++, w += 210) {
        q6k_codes(w, q);
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = h16(w + 208);
        for (int g = 0; g < 16; g++) {
            const int64_t b = sb * 8 + g / 2;
            const int8_t *xq = x->q + 32 * b + 16 * (g & 1);
            int32_t isum = 0;
            for (int l = 0; l < 16; l++) isum += ((int)q[16 * g + l] - 32) * xq[l];
            s += d * (float)sc[g] * x->d[b] * (float)isum;
        }
    }
    return s;
}

#ifdef KG_X86
#define KG_AVX2 __attribute__((target("avx2,fma,f16c")))

KG_AVX2 static inline float h16c(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* the 8 int32 lanes of v summed: lanes 0-3 and 4-7 apart (*lo, *hi) */
KG_AVX2 static inline void hsum_halves(__m256i v, int32_t *lo, int32_t *hi)
{
    __m128i a = _mm256_castsi256_si128(v), b = _mm256_extracti128_si256(v, 1);
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4e));
    b = _mm_add_epi32(b, _mm_shuffle_epi32(b, 0x4e));
    a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xb1));
    b = _mm_add_epi32(b, _mm_shuffle_epi32(b, 0xb1));
    *lo = _mm_cvtsi128_si32(a);
    *hi = _mm_cvtsi128_si32(b);
}

/* unsigned codes u (0..63) times signed x, pairs summed to 16 then 32 bits */
KG_AVX2 static inline __m256i dot_u8s8(__m256i u, __m256i x)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

KG_AVX2 static float q4k_dot_avx2(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int64_t sb = 0; sb < nsb; sb++, w += 144) {
        const float d = h16c(w), dmin = h16c(w + 2);
        for (int j = 0; j < 8; j += 2) {
            const int64_t b = sb * 8 + j;
            const __m256i qv = _mm256_loadu_si256((const __m256i *)(const void *)(w + 16 + 16 * j));
            const __m256i lo = _mm256_and_si256(qv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qv, 4), m4);
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(const void *)(x->q + 32 * b));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(const void *)(x->q + 32 * b + 32));
            int32_t a0, a1, c0, c1;
            hsum_halves(dot_u8s8(lo, x0), &a0, &a1);
            hsum_halves(dot_u8s8(hi, x1), &c0, &c1);
            int sc, mn;
            wmat__k4_scale_min(j, w + 4, &sc, &mn);
            s += q4k_term(d, dmin, sc, mn, x->d[b], x->sum[b], a0 + a1);
            wmat__k4_scale_min(j + 1, w + 4, &sc, &mn);
            s += q4k_term(d, dmin, sc, mn, x->d[b + 1], x->sum[b + 1], c0 + c1);
        }
    }
    return s;
}

KG_AVX2 static float q6k_dot_avx2(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    const __m256i m4 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), k32 = _mm256_set1_epi8(32);
    for (int64_t sb = 0; sb < nsb; sb++, w += 210) {
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = h16c(w + 208);
        for (int h = 0; h < 2; h++) {
            const unsigned char *ql = w + 64 * h, *qh = w + 128 + 32 * h;
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(const void *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(const void *)(ql + 32));
            const __m256i hb = _mm256_loadu_si256((const __m256i *)(const void *)qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m3), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m3), 4));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m3), 4));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m3), 4));
            for (int c = 0; c < 4; c++) {
                const int64_t b = sb * 8 + 4 * h + c;
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(x->q + 32 * b));
                const __m256i t = _mm256_sub_epi32(dot_u8s8(q[c], xv), dot_u8s8(k32, xv));
                int32_t g0, g1;
                hsum_halves(t, &g0, &g1);
                const int g = 8 * h + 2 * c;
                s += d * (float)sc[g] * x->d[b] * (float)g0;
                s += d * (float)sc[g + 1] * x->d[b] * (float)g1;
            }
        }
    }
    return s;
}
#endif

static void fused_rows(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
    const int64_t in = W->shape[1], nsb = in / 256;
    const size_t rb = row_bytes(W);
    const xprep x = view(prep, in);
    float (*fn)(const unsigned char *, const xprep *, int64_t) = W->dtype == WMAT_Q4_K ? q4k_dot_ref : q6k_dot_ref;
#ifdef KG_X86
    if (isa >= WMAT_ISA_AVX2) fn = W->dtype == WMAT_Q4_K ? q4k_dot_avx2 : q6k_dot_avx2;
#else
    (void)isa;
#endif
    for (int64_t r = r0; r < r1; r++) {
        const float v = fn((const unsigned char *)W->data + (size_t)r * rb, &x, nsb);
        y[r] = acc ? y[r] + v : v;
    }
}

/* sum of a[i] b[i] as 8 lane sums (i mod 8) added at the end in a fixed
 * order: the twins below compute exactly this */
static void dot8_ref(const float *a, const float *b, int n, float *lane)
{
    for (int i = 0; i < n; i += 8)
        for (int k = 0; k < 8; k++) lane[k] += a[i + k] * b[i + k];
}

#ifdef KG_X86
__attribute__((target("avx2"))) static void dot8_avx2(const float *a, const float *b, int n, float *lane)
{
    __m256 s = _mm256_loadu_ps(lane);
    for (int i = 0; i < n; i += 8) s = _mm256_add_ps(s, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    _mm256_storeu_ps(lane, s);
}
#endif

static void kg_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    if (fused(W->dtype)) {
        fused_rows(W, prep, y, r0, r1, acc, ex->isa);
        return;
    }
    (void)prep;
    const wmat_dtype_traits *tr = wmat_dtype_info(W->dtype);
    const int bs = tr->block_size;
    const int64_t in = W->shape[1], nb = in / bs;
    const size_t rb = row_bytes(W);
    void (*dot)(const float *, const float *, int, float *) = dot8_ref;
#ifdef KG_X86
    if (ex->isa >= WMAT_ISA_AVX2) dot = dot8_avx2;
#else
    (void)ex;
#endif
    float buf[MAX_BLOCK];
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *w = (const unsigned char *)W->data + (size_t)r * rb;
        float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t b = 0; b < nb; b++) {
            wmat__ggml_block_dequant(W->dtype, w + (size_t)b * tr->block_bytes, buf, bs);
            dot(buf, x + b * bs, bs, lane);
        }
        const float s = ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
        y[r] = acc ? y[r] + s : s;
    }
}

static uint64_t kg_nbytes(const wmat_tensor *W) { return (uint64_t)wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[0] * (uint64_t)W->shape[1]); }

#define GGML_KIND(NAME, DT, TOL, RTOL, SUMMARY)                                                                                    \
    static int NAME##_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)                              \
    {                                                                                                                     \
        return wmat__wkind_plain_from_f32(DT, W, rows, cols, out);                                                        \
    }                                                                                                                     \
    const wmat_wkind wmat__wkind_##NAME = {                                                                               \
        .name = #NAME,                                                                                                    \
        .summary = SUMMARY,                                                                                               \
        .dtype = DT,                                                                                                      \
        .row_align = 1,                                                                                                   \
        .ws_bytes = kg_ws,                                                                                                \
        .forward = kg_forward,                                                                                            \
        .backward = kg_backward,                                                                                          \
        .prep_bytes = kg_prep_bytes,                                                                                      \
        .prepare = kg_prepare,                                                                                            \
        .rows = kg_rows,                                                                                                  \
        .dequant_rows = deq_rows,                                                                                         \
        .nbytes = kg_nbytes,                                                                                              \
        .from_f32 = NAME##_from_f32,                                                                                      \
        .row_tol = RTOL,                                                                                                  \
        .approx_tol = TOL,                                                                                                \
    }

/* from_f32 budgets (0: the suite's 0.2): 2 and 3 bits on Gaussian weights need more;
 * one-row budgets: q4_k and q6_k round x to int8 (as q4_0 does), the others are exact */
GGML_KIND(q4_1, WMAT_Q4_1, 0, 1e-5f, "ggml Q4_1 blocks (32 4-bit + fp16 scale and min, 5 bits)");
GGML_KIND(q5_0, WMAT_Q5_0, 0, 1e-5f, "ggml Q5_0 blocks (32 5-bit + fp16 scale, 5.5 bits)");
GGML_KIND(q5_1, WMAT_Q5_1, 0, 1e-5f, "ggml Q5_1 blocks (32 5-bit + fp16 scale and min, 6 bits)");
GGML_KIND(q2_k, WMAT_Q2_K, 0.5f, 1e-5f, "ggml Q2_K super-blocks (256 2-bit, 4-bit scales/mins of 16, 2.625 bits)");
GGML_KIND(q3_k, WMAT_Q3_K, 0.35f, 1e-5f, "ggml Q3_K super-blocks (256 3-bit, 6-bit scales of 16, 3.4375 bits)");
GGML_KIND(q4_k, WMAT_Q4_K, 0, 2e-2f, "ggml Q4_K super-blocks (256 4-bit, 6-bit scales/mins of 32, 4.5 bits)");
GGML_KIND(q5_k, WMAT_Q5_K, 0, 1e-5f, "ggml Q5_K super-blocks (256 5-bit, 6-bit scales/mins of 32, 5.5 bits)");
GGML_KIND(q6_k, WMAT_Q6_K, 0, 2e-2f, "ggml Q6_K super-blocks (256 6-bit, int8 scales of 16, 6.5625 bits)");
GGML_KIND(iq4_nl, WMAT_IQ4_NL, 0, 1e-5f, "ggml IQ4_NL blocks (32 4-bit indices into a non-uniform grid + fp16 scale, 4.5 bits)");
GGML_KIND(iq4_xs, WMAT_IQ4_XS, 0, 1e-5f, "ggml IQ4_XS super-blocks (256 IQ4_NL indices, 6-bit scales of 32, 4.25 bits)");
