/* Fused one-row kernels of ggml's block types (kern_ggml.h). Each type has
 * a reference function (plain C: one float term per group, added in order)
 * and an AVX2 function (the same exact integer sums, scaled in 8 float
 * lanes and added once per row). */
#include "kern_ggml.h"

#include "kern_dense.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KG_X86 1
#endif

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

static const int8_t k_iq4[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* ---- the float terms, shared by the twins.
 * scale-and-min types: d sc xd isum - dmin mn xd xsum (Q4_K, Q5_K, Q2_K);
 * d xd isum + m xd xsum (Q4_1, Q5_1); symmetric types: d sc xd isum. */
static inline float t_min(float d, float dmin, int sc, int mn, float xd, int32_t xsum, int32_t isum)
{
    return d * (float)sc * xd * (float)isum - dmin * (float)mn * xd * (float)xsum;
}

static inline float t_off(float d, float m, float xd, int32_t xsum, int32_t isum)
{
    return d * xd * (float)isum + m * xd * (float)xsum;
}

static inline float t_sym(float d, int sc, float xd, int32_t isum) { return d * (float)sc * xd * (float)isum; }

static int32_t idot(const uint8_t *u, const int8_t *x, int n)
{
    int32_t s = 0;
    for (int l = 0; l < n; l++) s += (int32_t)u[l] * x[l];
    return s;
}

static int32_t isum(const int8_t *x, int n)
{
    int32_t s = 0;
    for (int l = 0; l < n; l++) s += x[l];
    return s;
}

static uint32_t ld32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ---- reference twins: nblk blocks (32 or 256 values) of one row */

static float q4_1_ref(const unsigned char *w, const xprep *x, int64_t nblk)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t b = 0; b < nblk; b++, w += 20) {
        for (int j = 0; j < 16; j++) u[j] = w[4 + j] & 15, u[j + 16] = w[4 + j] >> 4;
        s += t_off(h16(w), h16(w + 2), x->d[b], x->sum[b], idot(u, x->q + 32 * b, 32));
    }
    return s;
}

static void q5_codes(const unsigned char *qs, uint32_t qh, uint8_t *u)
{
    for (int j = 0; j < 16; j++) {
        u[j] = (uint8_t)((qs[j] & 15) | ((qh >> j) & 1) << 4);
        u[j + 16] = (uint8_t)((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
    }
}

static float q5_0_ref(const unsigned char *w, const xprep *x, int64_t nblk)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t b = 0; b < nblk; b++, w += 22) {
        q5_codes(w + 6, ld32(w + 2), u);
        s += t_sym(h16(w), 1, x->d[b], idot(u, x->q + 32 * b, 32) - 16 * x->sum[b]);
    }
    return s;
}

static float q5_1_ref(const unsigned char *w, const xprep *x, int64_t nblk)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t b = 0; b < nblk; b++, w += 24) {
        q5_codes(w + 8, ld32(w + 4), u);
        s += t_off(h16(w), h16(w + 2), x->d[b], x->sum[b], idot(u, x->q + 32 * b, 32));
    }
    return s;
}

static int32_t iq4_dot(const unsigned char *qs, const int8_t *x)
{
    int32_t s = 0;
    for (int j = 0; j < 16; j++) s += k_iq4[qs[j] & 15] * x[j] + k_iq4[qs[j] >> 4] * x[j + 16];
    return s;
}

static float iq4_nl_ref(const unsigned char *w, const xprep *x, int64_t nblk)
{
    float s = 0;
    for (int64_t b = 0; b < nblk; b++, w += 18) s += t_sym(h16(w), 1, x->d[b], iq4_dot(w + 2, x->q + 32 * b));
    return s;
}

static inline int iq4xs_scale(const unsigned char *w, int ib)
{
    const unsigned sh = (unsigned)w[2] | (unsigned)w[3] << 8;
    return (((w[4 + ib / 2] >> (4 * (ib % 2))) & 15) | (int)((sh >> (2 * ib)) & 3) << 4) - 32;
}

static float iq4_xs_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    for (int64_t sb = 0; sb < nsb; sb++, w += 136) {
        const float d = h16(w);
        for (int ib = 0; ib < 8; ib++) {
            const int64_t b = sb * 8 + ib;
            s += t_sym(d, iq4xs_scale(w, ib), x->d[b], iq4_dot(w + 8 + 16 * ib, x->q + 32 * b));
        }
    }
    return s;
}

/* Q2_K / Q3_K: per 128 values, 4 shifts of the same 32 code bytes; each
 * shift's 32 values are one x block, in two groups of 16 */
static float q2_k_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t sb = 0; sb < nsb; sb++, w += 84) {
        const float d = h16(w + 80), dmin = h16(w + 82);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) {
                const unsigned char *q = w + 16 + 32 * h;
                for (int l = 0; l < 32; l++) u[l] = (q[l] >> (2 * k)) & 3;
                const int64_t b = sb * 8 + 4 * h + k;
                const int8_t *xq = x->q + 32 * b;
                for (int g = 0; g < 2; g++) {
                    const int sc = w[8 * h + 2 * k + g];
                    s += t_min(d, dmin, sc & 15, sc >> 4, x->d[b], isum(xq + 16 * g, 16), idot(u + 16 * g, xq + 16 * g, 16));
                }
            }
    }
    return s;
}

static inline int q3k_scale(const unsigned char *s, int i)
{
    const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
    return (lo | hi << 4) - 32;
}

static float q3_k_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t sb = 0; sb < nsb; sb++, w += 110) {
        const float d = h16(w + 108);
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++) {
                const unsigned char *q = w + 32 + 32 * h;
                const unsigned m = 1u << (4 * h + k);
                for (int l = 0; l < 32; l++) u[l] = (uint8_t)(((q[l] >> (2 * k)) & 3) | ((w[l] & m) ? 4 : 0));
                const int64_t b = sb * 8 + 4 * h + k;
                const int8_t *xq = x->q + 32 * b;
                for (int g = 0; g < 2; g++)
                    s += t_sym(d, q3k_scale(w + 96, 8 * h + 2 * k + g), x->d[b],
                               idot(u + 16 * g, xq + 16 * g, 16) - 4 * isum(xq + 16 * g, 16));
            }
    }
    return s;
}

static float q4_k_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t sb = 0; sb < nsb; sb++, w += 144) {
        const float d = h16(w), dmin = h16(w + 2);
        for (int j = 0; j < 8; j++) {
            const int64_t b = sb * 8 + j;
            const unsigned char *qq = w + 16 + 32 * (j / 2);
            for (int l = 0; l < 32; l++) u[l] = (qq[l] >> (4 * (j & 1))) & 15;
            int sc, mn;
            wmat__k4_scale_min(j, w + 4, &sc, &mn);
            s += t_min(d, dmin, sc, mn, x->d[b], x->sum[b], idot(u, x->q + 32 * b, 32));
        }
    }
    return s;
}

static float q5_k_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t sb = 0; sb < nsb; sb++, w += 176) {
        const float d = h16(w), dmin = h16(w + 2);
        const unsigned char *qh = w + 16;
        for (int j = 0; j < 8; j++) {
            const int64_t b = sb * 8 + j;
            const unsigned char *qq = w + 48 + 32 * (j / 2);
            for (int l = 0; l < 32; l++) u[l] = (uint8_t)(((qq[l] >> (4 * (j & 1))) & 15) | ((qh[l] >> j) & 1) << 4);
            int sc, mn;
            wmat__k4_scale_min(j, w + 4, &sc, &mn);
            s += t_min(d, dmin, sc, mn, x->d[b], x->sum[b], idot(u, x->q + 32 * b, 32));
        }
    }
    return s;
}

/* Q6_K: codes q in 0..63, value d sc (q - 32); groups of 16 */
static float q6_k_ref(const unsigned char *w, const xprep *x, int64_t nsb)
{
    float s = 0;
    uint8_t u[32];
    for (int64_t sb = 0; sb < nsb; sb++, w += 210) {
        const int8_t *sc = (const int8_t *)(w + 192);
        const float d = h16(w + 208);
        for (int h = 0; h < 2; h++)
            for (int c = 0; c < 4; c++) {
                const unsigned char *ql = w + 64 * h + 32 * (c & 1), *qh = w + 128 + 32 * h;
                for (int l = 0; l < 32; l++) u[l] = (uint8_t)(((ql[l] >> (4 * (c / 2))) & 15) | ((qh[l] >> (2 * c)) & 3) << 4);
                const int64_t b = sb * 8 + 4 * h + c;
                const int8_t *xq = x->q + 32 * b;
                for (int g = 0; g < 2; g++)
                    s += t_sym(d, sc[8 * h + 2 * c + g], x->d[b], idot(u + 16 * g, xq + 16 * g, 16) - 32 * isum(xq + 16 * g, 16));
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

/* unsigned codes u (0..127) times signed x, pairs summed to 16 then 32 bits */
KG_AVX2 static inline __m256i dot_u8s8(__m256i u, __m256i x)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}


KG_AVX2 static inline __m256i ldx(const int8_t *p) { return _mm256_loadu_si256((const __m256i *)(const void *)p); }

/* 16 bytes of nibbles -> 32 codes: low nibbles first, then high */
KG_AVX2 static inline __m256i nib32(const unsigned char *qs)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)qs), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* bit j of qh -> 16 in byte j (Q5's fifth bits) */
KG_AVX2 static inline __m256i bits32(uint32_t qh)
{
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
                                          _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(16));
}

KG_AVX2 static inline float hsum_ps(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}


/* blocks of 32: the scaled integer sums in 8 float lanes, the offset
 * terms (min, -16) in a scalar; one horizontal sum per row */

/* 16 bytes of IQ4 indices -> 32 grid values (low nibbles first) */
KG_AVX2 static inline __m256i iq4_32(const unsigned char *qs, __m128i grid)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)qs), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_shuffle_epi8(grid, _mm_and_si128(_mm_srli_epi16(v, 4), m)),
                            _mm_shuffle_epi8(grid, _mm_and_si128(v, m)));
}

/* The K-quant kernels keep the scaled sums in 8 float lanes (one FMA per
 * 32 values) and add the lanes once per row: no horizontal sum per group. */

/* Q4_K / Q5_K: a super-block's 8 scales times d and x's block scales
 * (*ds, lane j for sub-block j), and its 8 mins times dmin, x's scales and
 * x's block sums (returned), as vectors: the sub-blocks are x's blocks
 * b .. b + 7. The 6-bit fields are regrouped with 32-bit masks (scales in
 * bytes 0-7, mins in 8-15) and never pass through memory. */
KG_AVX2 static inline __m256 k4_scales(const unsigned char *s, float d, float dmin, const xprep *x, int64_t b, __m256 *ds)
{
    const uint32_t u0 = ld32(s), u1 = ld32(s + 4), u2 = ld32(s + 8);
    const uint32_t k1 = 0x3f3f3f3fu, k2 = 0x0f0f0f0fu, k3 = 0x03030303u;
    const __m128i v = _mm_set_epi32((int)(((u2 >> 4) & k2) | (((u1 >> 6) & k3) << 4)), (int)(u1 & k1),
                                    (int)((u2 & k2) | (((u0 >> 6) & k3) << 4)), (int)(u0 & k1));
    const __m256 xd = _mm256_loadu_ps(x->d + b);
    *ds = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))), xd);
    const __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)));
    const __m256 xs = _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(const void *)(x->sum + b)));
    return _mm256_mul_ps(_mm256_mul_ps(m, _mm256_set1_ps(dmin)), _mm256_mul_ps(xd, xs));
}

/* Groups of 16 (Q2_K, Q3_K, Q6_K): a super-block's 16 group factors as two
 * 8-lane vectors (groups 0-7, 8-15); x block k of a half takes groups 2k
 * (lanes 0-3 of a dot_u8s8) and 2k + 1 (lanes 4-7) */
KG_AVX2 static inline void g16_u8(__m128i v, float f, __m256 *lo, __m256 *hi)
{
    *lo = _mm256_mul_ps(_mm256_set1_ps(f), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)));
    *hi = _mm256_mul_ps(_mm256_set1_ps(f), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8))));
}

KG_AVX2 static inline void g16_s8(__m128i v, float f, __m256 *lo, __m256 *hi)
{
    *lo = _mm256_mul_ps(_mm256_set1_ps(f), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)));
    *hi = _mm256_mul_ps(_mm256_set1_ps(f), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))));
}

KG_AVX2 static inline __m256 g16_pair(__m256 v, int k)
{
    return _mm256_permutevar8x32_ps(v, _mm256_set_epi32(2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k + 1, 2 * k, 2 * k, 2 * k, 2 * k));
}

/* IQ4_XS: a super-block's 8 scales (6 bits, offset 32) times d and x's
 * block scales b .. b + 7 */
KG_AVX2 static inline __m256 iq4xs_scales(const unsigned char *w, float d, const float *xd)
{
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)ld32(w + 4)), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                        _mm256_set1_epi32(15));
    const __m256i hi = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w[2] | (int)w[3] << 8), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                        _mm256_set1_epi32(3));
    const __m256i ls = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), _mm256_set1_epi32(32));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(ls)), _mm256_loadu_ps(xd));
}

/* Q3_K's 16 signed 6-bit scales (offset 32) from its 12 bytes, in order */
KG_AVX2 static inline __m128i q3k_scales16(const unsigned char *s)
{
    const uint32_t a0 = ld32(s), a1 = ld32(s + 4), t = ld32(s + 8), k1 = 0x03030303u, k2 = 0x0f0f0f0fu;
    const __m128i v = _mm_set_epi32((int)(((a1 >> 4) & k2) | (((t >> 6) & k1) << 4)), (int)(((a0 >> 4) & k2) | (((t >> 4) & k1) << 4)),
                                    (int)((a1 & k2) | (((t >> 2) & k1) << 4)), (int)((a0 & k2) | ((t & k1) << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* lane j of v in every lane */
KG_AVX2 static inline __m256 lane(__m256 v, int j) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j)); }

#define KG_TGT KG_AVX2
#define KG_N(n) n##_avx2
#define KG_DOT(u, x) dot_u8s8((u), (x))
#define KG_DOTS(g, x) dot_u8s8(_mm256_sign_epi8((g), (g)), _mm256_sign_epi8((x), (g)))
#include "kern_ggml_x86.inc"
#undef KG_TGT
#undef KG_N
#undef KG_DOT
#undef KG_DOTS

/* AVX-512 VNNI: dpbusd does maddubs + madd in one instruction, without
 * the int16 saturation (the codes here never reach it either way) */
#define KG_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))
#define KG_TGT KG_VNNI
#define KG_N(n) n##_vnni
#define KG_DOT(u, x) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (x))
#define KG_DOTS(g, x) _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8((g), (g)), _mm256_sign_epi8((x), (g)))
#include "kern_ggml_x86.inc"
#undef KG_TGT
#undef KG_N
#undef KG_DOT
#undef KG_DOTS
#endif

typedef float (*row_fn)(const unsigned char *, const xprep *, int64_t);

typedef struct {
    wmat_dtype dt;
    int block;
    row_fn ref;
#ifdef KG_X86
    row_fn avx2, vnni;
#endif
} kg_entry;

#ifdef KG_X86
#define KG_ROW(DT, BS, N) {DT, BS, N##_ref, N##_avx2, N##_vnni}
#else
#define KG_ROW(DT, BS, N) {DT, BS, N##_ref}
#endif

static const kg_entry g_kernels[] = {
    KG_ROW(WMAT_Q4_1, 32, q4_1),    KG_ROW(WMAT_Q5_0, 32, q5_0),    KG_ROW(WMAT_Q5_1, 32, q5_1),
    KG_ROW(WMAT_IQ4_NL, 32, iq4_nl), KG_ROW(WMAT_Q2_K, 256, q2_k),  KG_ROW(WMAT_Q3_K, 256, q3_k),
    KG_ROW(WMAT_Q4_K, 256, q4_k),   KG_ROW(WMAT_Q5_K, 256, q5_k),   KG_ROW(WMAT_Q6_K, 256, q6_k),
    KG_ROW(WMAT_IQ4_XS, 256, iq4_xs),
};

static const kg_entry *find(wmat_dtype dt)
{
    for (size_t i = 0; i < sizeof g_kernels / sizeof g_kernels[0]; i++)
        if (g_kernels[i].dt == dt) return &g_kernels[i];
    return NULL;
}

int wmat__ggml_fused(wmat_dtype dt) { return find(dt) != NULL; }

void wmat__ggml_rows(wmat_dtype dt, const void *W, int64_t in, const void *prep, float *y, int64_t r0, int64_t r1,
                     int acc, int isa)
{
    const kg_entry *e = find(dt);
    if (!e) return;
    const size_t rb = wmat_dtype_bytes(dt, (uint64_t)in);
    const xprep x = view(prep, in);
    row_fn fn = e->ref;
#ifdef KG_X86
    if (isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2) fn = e->avx2;
    if (isa >= WMAT_ISA_AVX512 && wmat__isa_best() >= WMAT_ISA_AVX512 && wmat__isa_has_vnni()) fn = e->vnni;
#else
    (void)isa;
#endif
    const int64_t nblk = in / e->block;
    for (int64_t r = r0; r < r1; r++) {
        const float v = fn((const unsigned char *)W + (size_t)r * rb, &x, nblk);
        y[r] = acc ? y[r] + v : v;
    }
}
