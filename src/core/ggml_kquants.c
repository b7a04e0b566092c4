/* ggml's other block types, as GGUF files on the Hub store them: Q4_1,
 * Q5_0, Q5_1 (blocks of 32 with a 5th bit plane or a minimum), the
 * K-quants Q2_K..Q6_K (super-blocks of 256 with 6- or 8-bit sub-block
 * scales) and the non-linear IQ4_NL / IQ4_XS (a fixed 16-entry grid).
 *
 * Written from the layouts in docs/FORMATS.md ("ggml block types"), and
 * checked value for value against llama.cpp's own dequantization of files
 * its quantizer wrote (tests/test_gguf_kquants.c). Dequantization is the
 * reference every kernel of these types is compared with. The quantizers
 * follow ggml's reference rules for the three types with a closed form
 * (Q4_1, Q5_0, Q5_1: byte-equal with llama.cpp's); the K- and I-quants
 * get simple closed-form scales (see below), not llama.cpp's search. */
#include "internal.h"

#include <math.h>
#include <string.h>

static float get_f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return wmat_f16_to_f32(h);
}
static void put_f16(unsigned char *p, float v)
{
    const uint16_t h = wmat_f32_to_f16(v);
    memcpy(p, &h, 2);
}

/* the 16 levels of IQ4_NL and IQ4_XS (a non-uniform grid, denser near 0) */
static const int8_t k_iq4[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* ---- blocks of 32: value j in the low nibble of qs[j], j + 16 in the high */

/* Q4_1: f16 d, f16 m, qs[16]; x = d * q + m */
static void deq_q4_1(const unsigned char *b, float *y)
{
    const float d = get_f16(b), m = get_f16(b + 2);
    const unsigned char *qs = b + 4;
    for (int j = 0; j < 16; j++) {
        y[j] = (float)(qs[j] & 15) * d + m;
        y[j + 16] = (float)(qs[j] >> 4) * d + m;
    }
}

/* the 5th bits: qh (32 bits, little-endian), bit j for value j */
static uint32_t ld_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Q5_0: f16 d, qh[4], qs[16]; x = d * (q - 16) */
static void deq_q5_0(const unsigned char *b, float *y)
{
    const float d = get_f16(b);
    const uint32_t qh = ld_u32(b + 2);
    const unsigned char *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        const int q0 = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        const int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = (float)(q0 - 16) * d;
        y[j + 16] = (float)(q1 - 16) * d;
    }
}

/* Q5_1: f16 d, f16 m, qh[4], qs[16]; x = d * q + m */
static void deq_q5_1(const unsigned char *b, float *y)
{
    const float d = get_f16(b), m = get_f16(b + 2);
    const uint32_t qh = ld_u32(b + 4);
    const unsigned char *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        const int q0 = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        const int q1 = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
        y[j] = (float)q0 * d + m;
        y[j + 16] = (float)q1 * d + m;
    }
}

/* IQ4_NL: f16 d, qs[16]; x = d * grid[q] */
static void deq_iq4_nl(const unsigned char *b, float *y)
{
    const float d = get_f16(b);
    const unsigned char *qs = b + 2;
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)k_iq4[qs[j] & 15];
        y[j + 16] = d * (float)k_iq4[qs[j] >> 4];
    }
}

/* ---- super-blocks of 256 */

/* Q2_K: scales[16] (low nibble: scale, high: min, of 16 values each),
 * qs[64] (2-bit codes: byte l of a 32-byte group holds values l, l+32,
 * l+64, l+96 of its 128 at shifts 0, 2, 4, 6), f16 d, f16 dmin. */
static void deq_q2_k(const unsigned char *b, float *y)
{
    const unsigned char *sc = b, *q = b + 16;
    const float d = get_f16(b + 80), dmin = get_f16(b + 82);
    int is = 0;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
            for (int half = 0; half < 2; half++) {
                const float dl = d * (float)(sc[is] & 15), ml = dmin * (float)(sc[is] >> 4);
                is++;
                for (int l = 0; l < 16; l++) *y++ = dl * (float)((q[l + 16 * half] >> shift) & 3) - ml;
            }
}

/* Q3_K: hmask[32] (the 3rd bit: bit k of byte l for value l + 32 k, set
 * meaning "no -4"), qs[64] (low 2 bits as in Q2_K), scales[12] (16 signed
 * 6-bit scales, offset 32: low 4 bits in bytes 0-7, high 2 bits in 8-11),
 * f16 d. */
static void q3k_scales(const unsigned char *s, int8_t *out)
{
    for (int i = 0; i < 16; i++) {
        const int lo = i < 8 ? s[i] & 15 : s[i - 8] >> 4;
        const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((lo | hi << 4) - 32);
    }
}

static void deq_q3_k(const unsigned char *b, float *y)
{
    const unsigned char *hm = b, *q = b + 32;
    int8_t sc[16];
    q3k_scales(b + 96, sc);
    const float d = get_f16(b + 108);
    int is = 0;
    unsigned m = 1;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            for (int half = 0; half < 2; half++) {
                const float dl = d * (float)sc[is++];
                for (int l = 16 * half; l < 16 * half + 16; l++)
                    *y++ = dl * (float)((int)((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
            }
}

/* Q4_K / Q5_K: 8 sub-blocks of 32, 6-bit scale and min packed in 12 bytes
 * (wmat__k4_scale_min, internal.h). */
/* Q4_K: f16 d, f16 dmin, scales[12], qs[128] (a 32-byte group holds two
 * sub-blocks: low nibbles, then high nibbles); x = d sc q - dmin mn */
static void deq_q4_k(const unsigned char *b, float *y)
{
    const float d = get_f16(b), dmin = get_f16(b + 2);
    const unsigned char *s = b + 4, *q = b + 16;
    for (int j = 0; j < 8; j += 2, q += 32) {
        int sc, mn;
        wmat__k4_scale_min(j, s, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        wmat__k4_scale_min(j + 1, s, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 15) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
    }
}

/* Q5_K: as Q4_K with qh[32] after the scales: bit 2k (2k+1) of byte l is
 * the 5th bit of value l of sub-block 2k (2k+1). */
static void deq_q5_k(const unsigned char *b, float *y)
{
    const float d = get_f16(b), dmin = get_f16(b + 2);
    const unsigned char *s = b + 4, *qh = b + 16, *q = b + 48;
    for (int j = 0; j < 8; j += 2, q += 32) {
        int sc, mn;
        wmat__k4_scale_min(j, s, &sc, &mn);
        const float d1 = d * (float)sc, m1 = dmin * (float)mn;
        wmat__k4_scale_min(j + 1, s, &sc, &mn);
        const float d2 = d * (float)sc, m2 = dmin * (float)mn;
        for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] & 15) + (((qh[l] >> j) & 1) << 4)) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (float)((q[l] >> 4) + (((qh[l] >> (j + 1)) & 1) << 4)) - m2;
    }
}

/* Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), int8 scales[16] (one
 * per 16 values), f16 d; x = d sc (q - 32). In each half of 128 values,
 * byte l of ql holds values l (low nibble) and l + 64 (high), byte l + 32
 * values l + 32 and l + 96; byte l of qh the high bits of l, l+32, l+64,
 * l+96 at shifts 0, 2, 4, 6. */
static void deq_q6_k(const unsigned char *b, float *y)
{
    const unsigned char *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    const float d = get_f16(b + 208);
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32, sc += 8, y += 128)
        for (int l = 0; l < 32; l++) {
            const int is = l / 16;
            const int q1 = (int)((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
            const int q2 = (int)((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
            const int q3 = (int)((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
            const int q4 = (int)((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
            y[l] = d * (float)sc[is] * (float)q1;
            y[l + 32] = d * (float)sc[is + 2] * (float)q2;
            y[l + 64] = d * (float)sc[is + 4] * (float)q3;
            y[l + 96] = d * (float)sc[is + 6] * (float)q4;
        }
}

/* IQ4_XS: f16 d, u16 scales_h, scales_l[4], qs[128]: 8 sub-blocks of 32,
 * 6-bit scale (4 low bits from scales_l, 2 high from scales_h) offset 32,
 * values on the IQ4 grid as IQ4_NL. */
static void deq_iq4_xs(const unsigned char *b, float *y)
{
    const float d = get_f16(b);
    const unsigned sh = (unsigned)b[2] | (unsigned)b[3] << 8;
    const unsigned char *sl = b + 4, *qs = b + 8;
    for (int ib = 0; ib < 8; ib++, qs += 16, y += 32) {
        const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 15) | (int)((sh >> (2 * ib)) & 3) << 4;
        const float dl = d * (float)(ls - 32);
        for (int j = 0; j < 16; j++) {
            y[j] = dl * (float)k_iq4[qs[j] & 15];
            y[j + 16] = dl * (float)k_iq4[qs[j] >> 4];
        }
    }
}

/* ---- quantizers with a closed form (ggml's reference rules) */

/* Q4_1 / Q5_1's header: the block's min and (max - min) / nmax as fp16
 * d and m; returns min, *id the inverse step (0 for a constant block) */
static float min_step(const float *x, float nmax, unsigned char *b, float *id)
{
    float mn = INFINITY, mx = -INFINITY;
    for (int j = 0; j < 32; j++) {
        if (x[j] < mn) mn = x[j];
        if (x[j] > mx) mx = x[j];
    }
    const float d = (mx - mn) / nmax;
    *id = d ? 1.0f / d : 0.0f;
    put_f16(b, d);
    put_f16(b + 2, mn);
    return mn;
}

/* Q4_1: the block's min and (max - min) / 15 */
static void q_q4_1(const float *x, unsigned char *b)
{
    float id;
    const float mn = min_step(x, 15.0f, b, &id);
    for (int j = 0; j < 16; j++) {
        const uint8_t a = (uint8_t)(int8_t)((x[j] - mn) * id + 0.5f), c = (uint8_t)(int8_t)((x[j + 16] - mn) * id + 0.5f);
        b[4 + j] = (unsigned char)((a < 15 ? a : 15) | (c < 15 ? c : 15) << 4);
    }
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Q5_0: as Q4_0 with 32 levels: d = (the signed value of largest
 * magnitude) / -16 */
static void q_q5_0(const float *x, unsigned char *b)
{
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    const float d = max / -16.0f;
    const float id = d ? 1.0f / d : 0.0f;
    put_f16(b, d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        int a = (int8_t)(x[j] * id + 16.5f), c = (int8_t)(x[j + 16] * id + 16.5f);
        a = a < 31 ? a : 31;
        c = c < 31 ? c : 31;
        b[6 + j] = (unsigned char)((a & 15) | (c & 15) << 4);
        qh |= (uint32_t)((a >> 4) & 1) << j | (uint32_t)((c >> 4) & 1) << (j + 16);
    }
    put_u32(b + 2, qh);
}

/* Q5_1: min and (max - min) / 31 */
static void q_q5_1(const float *x, unsigned char *b)
{
    float id;
    const float mn = min_step(x, 31.0f, b, &id);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        const unsigned a = (uint8_t)((x[j] - mn) * id + 0.5f), c = (uint8_t)((x[j + 16] - mn) * id + 0.5f);
        b[8 + j] = (unsigned char)((a & 15) | (c & 15) << 4);
        qh |= (uint32_t)((a >> 4) & 1) << j | (uint32_t)((c >> 4) & 1) << (j + 16);
    }
    put_u32(b + 4, qh);
}

/* ---- simple quantizers for the K- and I-quants
 *
 * llama.cpp chooses each sub-block's scale (and min) by a search over
 * candidate scales (make_qkx2_quants, make_qx_quants); these use the
 * closed-form choice instead: range-fitting scales and mins, then the
 * 6- or 8-bit codes of those scales relative to the super-block's
 * largest. They make valid blocks of every type (what the conformance
 * suite, `convert --dtype` and tests need); they are not llama.cpp's
 * bytes and not its quality: wmat's quantizers choose values for
 * quality. */

static int nearest_int(float v) { return (int)lrintf(v); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* per sub-block of n: scale and min (x ~ scale q - min, q in 0..nmax),
 * min >= 0 so that 0 lies in the range */
static void range_fit(const float *x, int n, int nmax, float *scale, float *min)
{
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    if (lo > 0) lo = 0;
    *scale = (hi - lo) / (float)nmax;
    *min = -lo;
}

/* the 6-bit codes of 8 (scale, min) pairs and their super-block steps */
static void k_codes(const float *sc, const float *mn, int n, int maxcode, float *d, float *dmin, int *lsc, int *lmn)
{
    float msc = 0, mmn = 0;
    for (int i = 0; i < n; i++) {
        if (sc[i] > msc) msc = sc[i];
        if (mn[i] > mmn) mmn = mn[i];
    }
    *d = wmat_f16_to_f32(wmat_f32_to_f16(msc / (float)maxcode));
    *dmin = wmat_f16_to_f32(wmat_f32_to_f16(mmn / (float)maxcode));
    for (int i = 0; i < n; i++) {
        lsc[i] = *d > 0 ? clampi(nearest_int(sc[i] / *d), 0, maxcode) : 0;
        lmn[i] = *dmin > 0 ? clampi(nearest_int(mn[i] / *dmin), 0, maxcode) : 0;
    }
}

static int code_of(float x, float step, float off, int nmax)
{
    return step > 0 ? clampi(nearest_int((x + off) / step), 0, nmax) : 0;
}

static void pack_k4_scales(const int *lsc, const int *lmn, unsigned char *q)
{
    for (int j = 0; j < 4; j++) {
        q[j] = (unsigned char)(lsc[j] | (lsc[j + 4] >> 4) << 6);
        q[j + 4] = (unsigned char)(lmn[j] | (lmn[j + 4] >> 4) << 6);
        q[j + 8] = (unsigned char)((lsc[j + 4] & 15) | (lmn[j + 4] & 15) << 4);
    }
}

/* Q4_K and Q5_K (bits 4 or 5): 8 sub-blocks of 32 */
static void q_k45(const float *x, unsigned char *b, int bits)
{
    const int nmax = (1 << bits) - 1;
    float sc[8], mn[8], d, dmin;
    int lsc[8], lmn[8];
    for (int j = 0; j < 8; j++) range_fit(x + 32 * j, 32, nmax, &sc[j], &mn[j]);
    k_codes(sc, mn, 8, 63, &d, &dmin, lsc, lmn);
    put_f16(b, d);
    put_f16(b + 2, dmin);
    pack_k4_scales(lsc, lmn, b + 4);
    unsigned char *qh = b + 16, *q = bits == 5 ? b + 48 : b + 16;
    if (bits == 5) memset(qh, 0, 32);
    for (int j = 0; j < 8; j += 2, q += 32)
        for (int l = 0; l < 32; l++) {
            const int c0 = code_of(x[32 * j + l], d * (float)lsc[j], dmin * (float)lmn[j], nmax);
            const int c1 = code_of(x[32 * (j + 1) + l], d * (float)lsc[j + 1], dmin * (float)lmn[j + 1], nmax);
            q[l] = (unsigned char)((c0 & 15) | (c1 & 15) << 4);
            if (bits == 5) qh[l] |= (unsigned char)(((c0 >> 4) & 1) << j | ((c1 >> 4) & 1) << (j + 1));
        }
}
static void q_q4_k(const float *x, unsigned char *b) { q_k45(x, b, 4); }
static void q_q5_k(const float *x, unsigned char *b) { q_k45(x, b, 5); }

/* Q6_K and Q3_K: each 16-value sub-block's scale max|x| / qmax (the
 * largest code's magnitude), and the super-block step that codes them,
 * (largest scale) / maxcode rounded to fp16 as the block stores it */
static float sym_scales16(const float *x, float qmax, float maxcode, float *sc)
{
    float msc = 0;
    for (int j = 0; j < 16; j++) {
        float amax = 0;
        for (int l = 0; l < 16; l++) amax = fmaxf(amax, fabsf(x[16 * j + l]));
        sc[j] = amax / qmax;
        if (sc[j] > msc) msc = sc[j];
    }
    return wmat_f16_to_f32(wmat_f32_to_f16(msc / maxcode));
}

/* symmetric sub-block scales (x ~ scale (q - off)) as int8 codes of a
 * super-block step: Q6_K (16 of 16, codes -32..31) */
static void q_q6_k(const float *x, unsigned char *b)
{
    float sc[16];
    const float d = sym_scales16(x, 31.0f, 127.0f, sc);
    int8_t *scb = (int8_t *)(b + 192);
    int q[256];
    for (int j = 0; j < 16; j++) {
        scb[j] = (int8_t)(d > 0 ? clampi(nearest_int(sc[j] / d), 0, 127) : 0);
        const float step = d * (float)scb[j];
        for (int l = 0; l < 16; l++) q[16 * j + l] = step > 0 ? clampi(nearest_int(x[16 * j + l] / step), -32, 31) + 32 : 32;
    }
    put_f16(b + 208, d);
    unsigned char *ql = b, *qh = b + 128;
    for (int n = 0; n < 256; n += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; l++) {
            const int q1 = q[n + l], q2 = q[n + l + 32], q3 = q[n + l + 64], q4 = q[n + l + 96];
            ql[l] = (unsigned char)((q1 & 15) | (q3 & 15) << 4);
            ql[l + 32] = (unsigned char)((q2 & 15) | (q4 & 15) << 4);
            qh[l] = (unsigned char)((q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
        }
}

/* Q2_K: 16 sub-blocks of 16, 4-bit scale and min codes */
static void q_q2_k(const float *x, unsigned char *b)
{
    float sc[16], mn[16], d, dmin;
    int lsc[16], lmn[16];
    for (int j = 0; j < 16; j++) range_fit(x + 16 * j, 16, 3, &sc[j], &mn[j]);
    k_codes(sc, mn, 16, 15, &d, &dmin, lsc, lmn);
    for (int j = 0; j < 16; j++) b[j] = (unsigned char)(lsc[j] | lmn[j] << 4);
    put_f16(b + 80, d);
    put_f16(b + 82, dmin);
    unsigned char *q = b + 16;
    memset(q, 0, 64);
    int is = 0;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2)
            for (int half = 0; half < 2; half++, is++)
                for (int l = 0; l < 16; l++) {
                    const int v = n + (shift / 2) * 32 + 16 * half + l;
                    q[l + 16 * half] |= (unsigned char)(code_of(x[v], d * (float)lsc[is], dmin * (float)lmn[is], 3) << shift);
                }
}

/* Q3_K: 16 sub-blocks of 16, signed 6-bit scales, codes -4..3 */
static void q_q3_k(const float *x, unsigned char *b)
{
    float sc[16];
    const float d = sym_scales16(x, 4.0f, 31.0f, sc);
    int ls[16];
    for (int j = 0; j < 16; j++) ls[j] = d > 0 ? clampi(nearest_int(sc[j] / d), 0, 31) : 0;
    unsigned char *hm = b, *q = b + 32, *s = b + 96;
    memset(b, 0, 108);
    for (int i = 0; i < 16; i++) {
        const int v = ls[i] + 32;
        if (i < 8) s[i] |= (unsigned char)(v & 15);
        else s[i - 8] |= (unsigned char)((v & 15) << 4);
        s[8 + i % 4] |= (unsigned char)(((v >> 4) & 3) << (2 * (i / 4)));
    }
    put_f16(b + 108, d);
    int is = 0;
    unsigned m = 1;
    for (int n = 0; n < 256; n += 128, q += 32)
        for (int shift = 0; shift < 8; shift += 2, m <<= 1)
            for (int half = 0; half < 2; half++, is++) {
                const float step = d * (float)ls[is];
                for (int l = 16 * half; l < 16 * half + 16; l++) {
                    const int v = n + (shift / 2) * 32 + l;
                    const int c = step > 0 ? clampi(nearest_int(x[v] / step), -4, 3) + 4 : 4; /* 0..7 */
                    q[l] |= (unsigned char)((c & 3) << shift);
                    if (c >= 4) hm[l] |= (unsigned char)m; /* set: no -4 */
                }
            }
}

static int iq4_index(float v)
{
    int best = 0;
    float be = fabsf(v - (float)k_iq4[0]);
    for (int i = 1; i < 16; i++) {
        const float e = fabsf(v - (float)k_iq4[i]);
        if (e < be) be = e, best = i;
    }
    return best;
}

/* IQ4_NL: d = max |x| / 127 with the sign that maps it to the grid's -127 */
static void q_iq4_nl(const float *x, unsigned char *b)
{
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++)
        if (fabsf(x[j]) > amax) amax = fabsf(x[j]), max = x[j];
    const float d = wmat_f16_to_f32(wmat_f32_to_f16(max / -127.0f));
    const float id = d ? 1.0f / d : 0.0f;
    put_f16(b, d);
    for (int j = 0; j < 16; j++) b[2 + j] = (unsigned char)(iq4_index(x[j] * id) | iq4_index(x[j + 16] * id) << 4);
}

/* IQ4_XS: per sub-block of 32 the IQ4_NL scale, as a signed 6-bit code */
static void q_iq4_xs(const float *x, unsigned char *b)
{
    float sc[8], amx = 0;
    for (int ib = 0; ib < 8; ib++) {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[32 * ib + j]) > amax) amax = fabsf(x[32 * ib + j]), max = x[32 * ib + j];
        sc[ib] = max / -127.0f;
        if (fabsf(sc[ib]) > amx) amx = fabsf(sc[ib]);
    }
    const float d = wmat_f16_to_f32(wmat_f32_to_f16(amx / 31.0f));
    unsigned sh = 0;
    memset(b + 4, 0, 4);
    for (int ib = 0; ib < 8; ib++) {
        const int l = d > 0 ? clampi(nearest_int(sc[ib] / d), -32, 31) : 0;
        const int ls = l + 32;
        b[4 + ib / 2] |= (unsigned char)((ls & 15) << (4 * (ib % 2)));
        sh |= (unsigned)((ls >> 4) & 3) << (2 * ib);
        const float dl = d * (float)l, id = dl ? 1.0f / dl : 0.0f;
        for (int j = 0; j < 16; j++)
            b[8 + 16 * ib + j] =
                (unsigned char)(iq4_index(x[32 * ib + j] * id) | iq4_index(x[32 * ib + j + 16] * id) << 4);
    }
    put_f16(b, d);
    b[2] = (unsigned char)(sh & 255);
    b[3] = (unsigned char)(sh >> 8);
}

/* ---- the table */

typedef struct {
    wmat_dtype dt;
    int ggml_type;
    void (*deq)(const unsigned char *block, float *y);
    void (*quant)(const float *x, unsigned char *block);
} ggml_block_type;

static const ggml_block_type g_types[] = {
    {WMAT_Q4_1, 3, deq_q4_1, q_q4_1},        {WMAT_Q5_0, 6, deq_q5_0, q_q5_0},       {WMAT_Q5_1, 7, deq_q5_1, q_q5_1},
    {WMAT_Q2_K, 10, deq_q2_k, q_q2_k},       {WMAT_Q3_K, 11, deq_q3_k, q_q3_k},      {WMAT_Q4_K, 12, deq_q4_k, q_q4_k},
    {WMAT_Q5_K, 13, deq_q5_k, q_q5_k},       {WMAT_Q6_K, 14, deq_q6_k, q_q6_k},      {WMAT_IQ4_NL, 20, deq_iq4_nl, q_iq4_nl},
    {WMAT_IQ4_XS, 23, deq_iq4_xs, q_iq4_xs},
};

static const ggml_block_type *find(wmat_dtype dt)
{
    for (size_t i = 0; i < sizeof g_types / sizeof g_types[0]; i++)
        if (g_types[i].dt == dt) return &g_types[i];
    return NULL;
}

int wmat__ggml_block_type(wmat_dtype dt) { return find(dt) ? find(dt)->ggml_type : -1; }

int wmat__ggml_block_dtype(int ggml_type)
{
    for (size_t i = 0; i < sizeof g_types / sizeof g_types[0]; i++)
        if (g_types[i].ggml_type == ggml_type) return (int)g_types[i].dt;
    return -1;
}

int wmat__ggml_block_can_quantize(wmat_dtype dt) { return find(dt) && find(dt)->quant; }

int wmat__ggml_block_dequant(wmat_dtype dt, const void *src, float *dst, int64_t n)
{
    const ggml_block_type *t = find(dt);
    const wmat_dtype_traits *tr = wmat_dtype_info(dt);
    if (!t || !tr) return WMAT_ERR_UNSUPPORTED;
    if (n % tr->block_size) return WMAT_ERR_INVALID;
    const unsigned char *b = src;
    for (int64_t i = 0; i < n / tr->block_size; i++, b += tr->block_bytes, dst += tr->block_size) t->deq(b, dst);
    return WMAT_OK;
}

int wmat__ggml_block_quant(wmat_dtype dt, const float *src, void *dst, int64_t n)
{
    const ggml_block_type *t = find(dt);
    const wmat_dtype_traits *tr = wmat_dtype_info(dt);
    if (!t || !t->quant || !tr) return WMAT_ERR_UNSUPPORTED;
    if (n % tr->block_size) return WMAT_ERR_INVALID;
    unsigned char *b = dst;
    for (int64_t i = 0; i < n / tr->block_size; i++, b += tr->block_bytes, src += tr->block_size) t->quant(src, b);
    return WMAT_OK;
}
