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
 * get llama.cpp's searched scales (its reference rule, the same bytes, or
 * its importance-weighted rule), IQ4 a closed form. */
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

/* ---- the K-quants: llama.cpp's searched scales
 *
 * Each type is three steps (wmat_kfit, internal.h): fit the super-block
 * (the sub-block scales and mins chosen by a search, their 6- or 8-bit
 * codes, the block header written), code each value on its sub-block's
 * fixed grid, pack the codes. Without weights the fit is ggml's reference
 * rule (quantize_row_*_ref: what llama.cpp writes without an imatrix, the
 * same float operations in the same order, so the same bytes; tested on
 * every K-quant tensor of llama.cpp's files); with per-input weights qw
 * (an imatrix) it is ggml's importance-weighted rule (quantize_row_*_impl):
 * candidate scales scored by sum qw_i sqrt(sigma^2 + x_i^2) (x_i - q_i)^2
 * (Q6_K: by qw_i alone), scale codes fitted by weighted least squares.
 * Q2_K's weighted rule is not written: Q2_K fits by the reference rule
 * whatever the weights. GPTQ (src/quant/gptq_ggml.c) fits each super-block
 * when its error feedback reaches it and codes the columns one at a time. */

static int nearest_int(float v) { return (int)lrintf(v); }
static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

#define KQ_EPS 1e-15f

/* The symmetric search (ggml's make_qx_quants, its "rmse" type 1): codes
 * l in [-nmax, nmax - 1] for inverse scales -(nmax + k/10) / max,
 * k = -9..9, the scale refitted by least squares with weights w (x^2 when
 * w is NULL), the candidate with the largest (sum w x l)^2 / sum w l^2
 * kept. L gets l + nmax; returns the scale. */
static float sym_search(int n, int nmax, const float *x, uint8_t *L, const float *w)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    if (amax < KQ_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)-nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (uint8_t)(l + nmax);
        const float wi = w ? w[i] : x[i] * x[i];
        sumlx += wi * x[i] * (float)l;
        suml2 += wi * (float)l * (float)l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int k = -9; k <= 9; k++) {
        if (!k) continue;
        iscale = -((float)nmax + 0.1f * (float)k) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            const float wi = w ? w[i] : x[i] * x[i];
            sumlx += wi * x[i] * (float)l;
            suml2 += wi * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = (uint8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's reference search (make_q3_quants with its rmse pass): start from
 * -nmax / max, then up to 5 sweeps moving single codes to the value the
 * least-squares scale of the others asks for, while sum w x l)^2 / sum w
 * l^2 (w = x^2) grows. */
static float q3_search(int n, int nmax, const float *x, uint8_t *Lout)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), max = x[i];
    if (amax < KQ_EPS) {
        memset(Lout, 0, (size_t)n);
        return 0.0f;
    }
    const float iscale = (float)-nmax / max;
    int L[16];
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        L[i] = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * (float)L[i];
        suml2 += w * (float)L[i] * (float)L[i];
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * (float)L[i];
            if (!(slx > 0)) continue;
            float sl2 = suml2 - w * (float)L[i] * (float)L[i];
            const int nl = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (nl == L[i]) continue;
            slx += w * x[i] * (float)nl;
            sl2 += w * (float)nl * (float)nl;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = nl;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) Lout[i] = (uint8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* The asymmetric search (make_qkx2_quants / make_qkx3_quants, which agree
 * when weights are given): x ~ scale l - min, l in 0..nmax, min <= 0 kept
 * in the range; inverse scales (nmax + rmin + k rdelta) / (max - min),
 * k = 0..nstep, each refitted (scale and min) by weighted least squares,
 * the lowest sum w (x - q)^2 (or |x - q| with mad) kept. *the_min = -min. */
static float asym_search(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min, float rmin,
                         float rdelta, int nstep, int mad)
{
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
        float d = scale * (float)L[i] + min - x[i];
        d = mad ? fabsf(d) : d * d;
        best += w[i] * d;
    }
    uint8_t La[32];
    for (int k = 0; k <= nstep; k++) {
        iscale = (rmin + rdelta * (float)k + (float)nmax) / (max - min);
        float sl = 0, sl2 = 0, sxl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
            La[i] = (uint8_t)l;
            sl += w[i] * (float)l;
            sl2 += w[i] * (float)l * (float)l;
            sxl += w[i] * (float)l * x[i];
        }
        const float D = sum_w * sl2 - sl * sl;
        if (!(D > 0)) continue;
        float s = (sum_w * sxl - sum_x * sl) / D, m = (sl2 * sum_x - sl * sxl) / D;
        if (m > 0) {
            m = 0;
            s = sxl / sl2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float d = s * (float)La[i] + m - x[i];
            d = mad ? fabsf(d) : d * d;
            err += w[i] * d;
        }
        if (err < best) {
            memcpy(L, La, (size_t)n);
            best = err;
            scale = s;
            min = m;
        }
    }
    *the_min = -min;
    return scale;
}

/* Codes of non-negative values on one step (make_qp_quants): the 9
 * candidate steps max / (nmax + k/10), k = -4..4, by weighted error, then
 * up to 5 sweeps of single-code moves as in q3_search. */
static float pos_codes(int n, int nmax, const float *x, uint8_t *L, const float *w)
{
    float max = 0;
    for (int i = 0; i < n; i++) max = fmaxf(max, x[i]);
    if (max < KQ_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = (float)nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const float d = x[i] - scale * (float)L[i];
        best += w[i] * d * d;
    }
    for (int k = -4; k <= 4; k++) {
        if (!k) continue;
        const float is = (0.1f * (float)k + (float)nmax) / max, sk = 1 / is;
        float e = 0;
        for (int i = 0; i < n; i++) {
            const int l = nearest_int(is * x[i]) < nmax ? nearest_int(is * x[i]) : nmax;
            const float d = x[i] - sk * (float)l;
            e += w[i] * d * d;
        }
        if (e < best) {
            best = e;
            iscale = is;
        }
    }
    float sumlx = 0, suml2 = 0;
    int Li[16];
    for (int i = 0; i < n; i++) {
        const int l = nearest_int(iscale * x[i]);
        Li[i] = l < nmax ? l : nmax;
        sumlx += w[i] * x[i] * (float)Li[i];
        suml2 += w[i] * (float)Li[i] * (float)Li[i];
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * (float)Li[i], sl2 = suml2 - w[i] * (float)Li[i] * (float)Li[i];
            if (!(slx > 0 && sl2 > 0)) continue;
            int nl = nearest_int(x[i] * sl2 / slx);
            nl = nl < nmax ? nl : nmax;
            if (nl == Li[i]) continue;
            slx += w[i] * x[i] * (float)nl;
            sl2 += w[i] * (float)nl * (float)nl;
            if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                Li[i] = nl;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (uint8_t)Li[i];
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Q4_K / Q5_K header: d, dmin, the 12 bytes of 6-bit scale and min codes */
static void put_k4_scales(const uint8_t *ls, const uint8_t *lm, unsigned char *s)
{
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (unsigned char)((ls[j] & 15) | (lm[j] & 15) << 4);
            s[j - 4] |= (unsigned char)((ls[j] >> 4) << 6);
            s[j] |= (unsigned char)((lm[j] >> 4) << 6);
        }
    }
}

static void fit_k45(const float *x, const float *qw, unsigned char *b, wmat_kfit *f, int bits)
{
    const int nmax = (1 << bits) - 1;
    float sc[8], mn[8], w[32];
    uint8_t ls[8], lm[8];
    if (!qw) {
        float msc = 0, mmn = 0;
        for (int j = 0; j < 8; j++) {
            const float *xj = x + 32 * j;
            float s2 = 0;
            for (int l = 0; l < 32; l++) s2 += xj[l] * xj[l];
            const float av = sqrtf(s2 / 32);
            for (int l = 0; l < 32; l++) w[l] = av + fabsf(xj[l]);
            sc[j] = bits == 4 ? asym_search(32, nmax, xj, w, f->L + 32 * j, &mn[j], -1.0f, 0.1f, 20, 0)
                              : asym_search(32, nmax, xj, w, f->L + 32 * j, &mn[j], -0.5f, 0.1f, 15, 0);
            if (sc[j] > msc) msc = sc[j];
            if (mn[j] > mmn) mmn = mn[j];
        }
        const float is = msc > 0 ? 63.f / msc : 0.f, im = mmn > 0 ? 63.f / mmn : 0.f;
        for (int j = 0; j < 8; j++) {
            const uint8_t a = (uint8_t)nearest_int(is * sc[j]), c = (uint8_t)nearest_int(im * mn[j]);
            ls[j] = a < 63 ? a : 63;
            lm[j] = c < 63 ? c : 63;
        }
        put_f16(b, msc / 63.f);
        put_f16(b + 2, mmn / 63.f);
    } else {
        float s2 = 0, sw[8];
        for (int l = 0; l < 256; l++) s2 += x[l] * x[l];
        const float sigma2 = 2 * s2 / 256;
        for (int j = 0; j < 8; j++) {
            const float *xj = x + 32 * j;
            for (int l = 0; l < 32; l++) w[l] = qw[32 * j + l] * sqrtf(sigma2 + xj[l] * xj[l]);
            float sum = 0;
            for (int l = 0; l < 32; l++) sum += w[l];
            sw[j] = sum;
            sc[j] = asym_search(32, nmax, xj, w, f->L + 32 * j, &mn[j], -0.9f, 0.05f, 36, 0);
        }
        const float d = pos_codes(8, 63, sc, ls, sw), dm = pos_codes(8, 63, mn, lm, sw);
        for (int j = 0; j < 8; j++) {
            ls[j] = ls[j] < 63 ? ls[j] : 63;
            lm[j] = lm[j] < 63 ? lm[j] : 63;
        }
        put_f16(b, d);
        put_f16(b + 2, dm);
    }
    memset(b + 4, 0, 12);
    put_k4_scales(ls, lm, b + 4);
    const float d = get_f16(b), dm = get_f16(b + 2);
    f->nsub = 8;
    f->sub = 32;
    f->qlo = 0;
    f->qhi = nmax;
    for (int j = 0; j < 8; j++) {
        int s, m;
        wmat__k4_scale_min(j, b + 4, &s, &m);
        f->step[j] = d * (float)s;
        f->off[j] = dm * (float)m;
    }
}

static void fit_q6(const float *x, const float *qw, unsigned char *b, wmat_kfit *f)
{
    float sc[16], msc = 0, amsc = 0;
    for (int j = 0; j < 16; j++) {
        sc[j] = sym_search(16, 32, x + 16 * j, f->L + 16 * j, qw ? qw + 16 * j : NULL);
        if (fabsf(sc[j]) > amsc) amsc = fabsf(sc[j]), msc = sc[j];
    }
    f->nsub = 16;
    f->sub = 16;
    f->qlo = -32;
    f->qhi = 31;
    int8_t *scb = (int8_t *)(b + 192);
    if (amsc < KQ_EPS) {
        memset(b, 0, 210);
        memset(f->L, 0, 256);
        for (int j = 0; j < 16; j++) f->step[j] = f->off[j] = 0;
        return;
    }
    const float is = -128.f / msc;
    put_f16(b + 208, 1 / is);
    const float d = get_f16(b + 208);
    for (int j = 0; j < 16; j++) {
        const int l = nearest_int(is * sc[j]);
        scb[j] = (int8_t)(l < 127 ? l : 127);
        f->step[j] = d * (float)scb[j];
        f->off[j] = 0;
    }
}

static void put_q3_scales(const int *l, unsigned char *s)
{
    memset(s, 0, 12);
    for (int j = 0; j < 16; j++) {
        const int v = l[j];
        if (j < 8) s[j] = (unsigned char)(v & 15);
        else s[j - 8] |= (unsigned char)((v & 15) << 4);
        s[8 + j % 4] |= (unsigned char)((v >> 4) << (2 * (j / 4)));
    }
}

static void fit_q3(const float *x, const float *qw, unsigned char *b, wmat_kfit *f)
{
    float sc[16];
    int l6[16];
    unsigned char *s = b + 96;
    if (!qw) {
        float msc = 0, amax = 0;
        for (int j = 0; j < 16; j++) {
            sc[j] = q3_search(16, 4, x + 16 * j, f->L + 16 * j);
            if (fabsf(sc[j]) > amax) amax = fabsf(sc[j]), msc = sc[j];
        }
        if (msc != 0) {
            const float is = -32.f / msc;
            for (int j = 0; j < 16; j++) l6[j] = clampi((int8_t)nearest_int(is * sc[j]), -32, 31) + 32;
            put_q3_scales(l6, s);
            put_f16(b + 108, 1 / is);
        } else {
            memset(s, 0, 12);
            put_f16(b + 108, 0.f);
        }
    } else {
        float s2 = 0, sw[16], w[16];
        uint8_t Ls[16];
        for (int j = 0; j < 256; j++) s2 += x[j] * x[j];
        const float sigma2 = 2 * s2 / 256;
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) w[l] = qw[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
            float sum = 0;
            for (int l = 0; l < 16; l++) sum += w[l];
            sw[j] = sum;
            sc[j] = sym_search(16, 4, x + 16 * j, f->L + 16 * j, w);
        }
        const float d = sym_search(16, 32, sc, Ls, sw);
        for (int j = 0; j < 16; j++) l6[j] = Ls[j];
        put_q3_scales(l6, s);
        put_f16(b + 108, d);
    }
    int8_t c[16];
    q3k_scales(s, c);
    const float d = get_f16(b + 108);
    f->nsub = 16;
    f->sub = 16;
    f->qlo = -4;
    f->qhi = 3;
    for (int j = 0; j < 16; j++) {
        f->step[j] = d * (float)c[j];
        f->off[j] = 0;
    }
}

static void fit_q2(const float *x, unsigned char *b, wmat_kfit *f)
{
    float sc[16], mn[16], w[16], msc = 0, mmn = 0;
    for (int j = 0; j < 16; j++) {
        for (int l = 0; l < 16; l++) w[l] = fabsf(x[16 * j + l]);
        sc[j] = asym_search(16, 3, x + 16 * j, w, f->L + 16 * j, &mn[j], -0.5f, 0.1f, 15, 1);
        if (sc[j] > msc) msc = sc[j];
        if (mn[j] > mmn) mmn = mn[j];
    }
    if (msc > 0) {
        const float is = 15.f / msc;
        for (int j = 0; j < 16; j++) b[j] = (unsigned char)nearest_int(is * sc[j]);
        put_f16(b + 80, msc / 15.f);
    } else {
        memset(b, 0, 16);
        put_f16(b + 80, 0.f);
    }
    if (mmn > 0) {
        const float im = 15.f / mmn;
        for (int j = 0; j < 16; j++) b[j] |= (unsigned char)(nearest_int(im * mn[j]) << 4);
        put_f16(b + 82, mmn / 15.f);
    } else {
        put_f16(b + 82, 0.f);
    }
    const float d = get_f16(b + 80), dm = get_f16(b + 82);
    f->nsub = 16;
    f->sub = 16;
    f->qlo = 0;
    f->qhi = 3;
    for (int j = 0; j < 16; j++) {
        f->step[j] = d * (float)(b[j] & 15);
        f->off[j] = dm * (float)(b[j] >> 4);
    }
}

int wmat__kq_fit(wmat_dtype dt, const float *x, const float *qw, void *block, wmat_kfit *f)
{
    unsigned char *b = block;
    f->dt = dt;
    switch (dt) {
    case WMAT_Q4_K: fit_k45(x, qw, b, f, 4); break;
    case WMAT_Q5_K: fit_k45(x, qw, b, f, 5); break;
    case WMAT_Q6_K: fit_q6(x, qw, b, f); break;
    case WMAT_Q3_K: fit_q3(x, qw, b, f); break;
    case WMAT_Q2_K: fit_q2(x, b, f); break;
    default: return WMAT_ERR_UNSUPPORTED;
    }
    return WMAT_OK;
}

float wmat__kq_code(wmat_kfit *f, int i, float x)
{
    const int j = i / f->sub;
    const float step = f->step[j], off = f->off[j];
    if (step == 0.0f) return step * (float)((int)f->L[i] + f->qlo) - off; /* the search's code stays */
    const int l = clampi(nearest_int((x + off) / step), f->qlo, f->qhi);
    f->L[i] = (uint8_t)(l - f->qlo);
    return step * (float)l - off;
}

void wmat__kq_pack(const wmat_kfit *f, void *block)
{
    unsigned char *b = block;
    uint8_t L[256];
    memcpy(L, f->L, 256);
    switch (f->dt) {
    case WMAT_Q4_K:
        for (int j = 0, o = 16; j < 256; j += 64, o += 32)
            for (int l = 0; l < 32; l++) b[o + l] = (unsigned char)(L[j + l] | L[j + l + 32] << 4);
        break;
    case WMAT_Q5_K: {
        unsigned char *qh = b + 16, *ql = b + 48;
        memset(qh, 0, 32);
        unsigned m1 = 1, m2 = 2;
        for (int n = 0; n < 256; n += 64, ql += 32, m1 <<= 2, m2 <<= 2)
            for (int j = 0; j < 32; j++) {
                int a = L[n + j], c = L[n + j + 32];
                if (a > 15) a -= 16, qh[j] |= (unsigned char)m1;
                if (c > 15) c -= 16, qh[j] |= (unsigned char)m2;
                ql[j] = (unsigned char)(a | c << 4);
            }
        break;
    }
    case WMAT_Q6_K: {
        unsigned char *ql = b, *qh = b + 128;
        for (int n = 0; n < 256; n += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                const int q1 = L[n + l], q2 = L[n + l + 32], q3 = L[n + l + 64], q4 = L[n + l + 96];
                ql[l] = (unsigned char)((q1 & 15) | (q3 & 15) << 4);
                ql[l + 32] = (unsigned char)((q2 & 15) | (q4 & 15) << 4);
                qh[l] = (unsigned char)((q1 >> 4) | (q2 >> 4) << 2 | (q3 >> 4) << 4 | (q4 >> 4) << 6);
            }
        break;
    }
    case WMAT_Q3_K:
    case WMAT_Q2_K: {
        unsigned char *q = f->dt == WMAT_Q3_K ? b + 32 : b + 16;
        if (f->dt == WMAT_Q3_K) {
            memset(b, 0, 32);
            for (int j = 0; j < 256; j++)
                if (L[j] > 3) {
                    b[j % 32] |= (unsigned char)(1u << (j / 32));
                    L[j] -= 4;
                }
        }
        for (int j = 0; j < 256; j += 128, q += 32)
            for (int l = 0; l < 32; l++)
                q[l] = (unsigned char)(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
        break;
    }
    default: break;
    }
}

/* one super-block: fit, code every value on the fitted grid, pack */
static void kq_block(wmat_dtype dt, const float *x, const float *qw, unsigned char *b)
{
    wmat_kfit f;
    wmat__kq_fit(dt, x, qw, b, &f);
    for (int i = 0; i < 256; i++) wmat__kq_code(&f, i, x[i]);
    wmat__kq_pack(&f, b);
}
static void q_q2_k(const float *x, unsigned char *b) { kq_block(WMAT_Q2_K, x, NULL, b); }
static void q_q3_k(const float *x, unsigned char *b) { kq_block(WMAT_Q3_K, x, NULL, b); }
static void q_q4_k(const float *x, unsigned char *b) { kq_block(WMAT_Q4_K, x, NULL, b); }
static void q_q5_k(const float *x, unsigned char *b) { kq_block(WMAT_Q5_K, x, NULL, b); }
static void q_q6_k(const float *x, unsigned char *b) { kq_block(WMAT_Q6_K, x, NULL, b); }

int wmat__ggml_quant_rows(wmat_dtype dt, const float *x, void *dst, int64_t nrows, int64_t ncols, const float *qw)
{
    const wmat_dtype_traits *tr = wmat_dtype_info(dt);
    if (!tr) return wmat_set_error(WMAT_ERR_UNSUPPORTED, "no such type");
    if (ncols % tr->block_size)
        return wmat_set_error(WMAT_ERR_INVALID, "%s needs rows of a multiple of %d values", tr->name, tr->block_size);
    const int kq = dt == WMAT_Q2_K || dt == WMAT_Q3_K || dt == WMAT_Q4_K || dt == WMAT_Q5_K || dt == WMAT_Q6_K;
    if (!qw || !kq) return wmat_from_f32(dst, dt, x, (uint64_t)(nrows * ncols));
    unsigned char *b = dst;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = 0; c < ncols; c += 256, b += tr->block_bytes) kq_block(dt, x + r * ncols + c, qw + c, b);
    return WMAT_OK;
}

/* ---- IQ4 (closed form: the largest magnitude onto the grid's -127) */

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
