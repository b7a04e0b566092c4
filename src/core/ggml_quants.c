/* ggml's Q8_0 and Q4_0 blocks, bit-exact with ggml's reference quantizers
 * (quantize_row_q8_0_ref, quantize_row_q4_0_ref): the same float operations
 * in the same order, fp16 scales rounded to nearest even. */
#include "internal.h"

#include <math.h>
#include <string.h>

#define QK 32

static void put_f16(unsigned char *p, float v)
{
    uint16_t h = wmat_f32_to_f16(v);
    memcpy(p, &h, 2);
}
static float get_f16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return wmat_f16_to_f32(h);
}

/* block: fp16 d, int8 qs[32] */
void wmat__quantize_row_q8_0(const float *x, void *vy, int64_t k)
{
    unsigned char *y = vy;
    for (int64_t b = 0; b < k / QK; b++, x += QK, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(y, d);
        for (int j = 0; j < QK; j++) y[2 + j] = (unsigned char)(int8_t)roundf(x[j] * id);
    }
}

void wmat__dequantize_row_q8_0(const void *vx, float *y, int64_t k)
{
    const unsigned char *x = vx;
    for (int64_t b = 0; b < k / QK; b++, x += 34, y += QK) {
        const float d = get_f16(x);
        for (int j = 0; j < QK; j++) y[j] = (float)(int8_t)x[2 + j] * d;
    }
}

/* block: fp16 d, uint8 qs[16]; value j in the low nibble of qs[j], value
 * j+16 in the high nibble; code c means (c - 8) * d. */
void wmat__quantize_row_q4_0(const float *x, void *vy, int64_t k)
{
    unsigned char *y = vy;
    for (int64_t b = 0; b < k / QK; b++, x += QK, y += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) {
            const float v = x[j];
            if (amax < fabsf(v)) {
                amax = fabsf(v);
                max = v;
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(y, d);
        for (int j = 0; j < QK / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[QK / 2 + j] * id;
            int xi0 = (int8_t)(x0 + 8.5f);
            int xi1 = (int8_t)(x1 + 8.5f);
            if (xi0 > 15) xi0 = 15;
            if (xi1 > 15) xi1 = 15;
            y[2 + j] = (unsigned char)(xi0 | (xi1 << 4));
        }
    }
}

void wmat__dequantize_row_q4_0(const void *vx, float *y, int64_t k)
{
    const unsigned char *x = vx;
    for (int64_t b = 0; b < k / QK; b++, x += 18, y += QK) {
        const float d = get_f16(x);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (float)((x[2 + j] & 0x0f) - 8) * d;
            y[j + QK / 2] = (float)((x[2 + j] >> 4) - 8) * d;
        }
    }
}
