/* Packing a wmat_qresult into a wmat_qtensor, unpacking and dequantizing
 * (reference code), and swapping packed tensors into a model.
 * Layouts: src/wop/qstore.h and docs/FORMATS.md. */
#include "qstore.h"


#include <math.h>
#include <string.h>

int64_t wmat_qpack_chunk_bytes(int bits)
{
    switch (bits) {
    case 2: return 8;
    case 3: return 12;
    case 4: return 16;
    default: return 32;
    }
}

int wmat_qresult_check_packable(const wmat_qresult *q, const char *what)
{
    if (!what) what = "qresult";
    if (q->bits < 2 || q->bits > 8)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %d-bit codes; packed storage holds 2..8 bits", what, q->bits);
    if (q->rows <= 0 || q->cols <= 0 || q->rows > INT32_MAX || q->cols > INT32_MAX)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: bad shape (%lld x %lld)", what, (long long)q->rows, (long long)q->cols);
    if (q->cols % 32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: %lld inputs is not a multiple of 32 (packed rows are 32-code chunks)",
                              what, (long long)q->cols);
    if (q->axis != WMAT_QAXIS_IN && q->axis != WMAT_QAXIS_OUT)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: bad group axis %d", what, (int)q->axis);
    const int64_t len = q->axis == WMAT_QAXIS_IN ? q->cols : q->rows;
    if (q->group <= 0 || len % q->group)
        return wmat_set_error(WMAT_ERR_INVALID, "%s: group %d does not divide %lld", what, q->group, (long long)len);
    if (q->axis == WMAT_QAXIS_IN && q->group % 32)
        return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: groups along inputs must be a multiple of 32 long (got %d)", what,
                              q->group);
    if (!q->codes || !q->scales || (!q->sym && !q->zeros))
        return wmat_set_error(WMAT_ERR_INVALID, "%s: missing codes, scales or zeros", what);
    const int maxq = (1 << q->bits) - 1;
    const int64_t ng = wmat_qresult_n_groups(q);
    for (int64_t g = 0; g < ng; g++) {
        float s = wmat_f16_to_f32(wmat_f32_to_f16(q->scales[g]));
        if (!isfinite(s))
            return wmat_set_error(WMAT_ERR_NUMERIC, "%s: scale %g of group %lld is not finite in fp16", what,
                                  (double)q->scales[g], (long long)g);
        if (q->sym && q->zeros && q->zeros[g] != (float)(1 << (q->bits - 1)))
            return wmat_set_error(WMAT_ERR_INVALID, "%s: symmetric scheme but group %lld has zero %g (expected %d)", what,
                                  (long long)g, (double)q->zeros[g], 1 << (q->bits - 1));
        if (!q->sym) {
            float z = q->zeros[g];
            if (!(z >= -0.5f && z < 255.5f))
                return wmat_set_error(WMAT_ERR_UNSUPPORTED, "%s: zero point %g of group %lld is outside 0..255", what,
                                      (double)z, (long long)g);
        }
    }
    const uint64_t n = (uint64_t)q->rows * (uint64_t)q->cols;
    for (uint64_t i = 0; i < n; i++)
        if (q->codes[i] > maxq)
            return wmat_set_error(WMAT_ERR_INVALID, "%s: code %u at (%llu, %llu) exceeds %d bits", what, q->codes[i],
                                  (unsigned long long)(i / (uint64_t)q->cols), (unsigned long long)(i % (uint64_t)q->cols),
                                  q->bits);
    if (q->perm) {
        uint8_t *seen = wmat__calloc((size_t)q->cols, 1);
        if (!seen) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
        int rc = WMAT_OK;
        for (int64_t k = 0; k < q->cols && !rc; k++) {
            int32_t p = q->perm[k];
            if (p < 0 || p >= q->cols || seen[p])
                rc = wmat_set_error(WMAT_ERR_INVALID, "%s: perm is not a permutation (perm[%lld] = %d)", what, (long long)k, p);
            else seen[p] = 1;
        }
        wmat__free(seen);
        if (rc) return rc;
    }
    return WMAT_OK;
}

/* ---- one chunk of 32 codes */

static void pack_chunk(uint8_t *dst, const uint8_t *c, int bits)
{
    switch (bits) {
    case 2:
        for (int j = 0; j < 8; j++)
            dst[j] = (uint8_t)(c[j] | c[j + 8] << 2 | c[j + 16] << 4 | c[j + 24] << 6);
        break;
    case 3: {
        uint32_t hi = 0;
        for (int j = 0; j < 8; j++)
            dst[j] = (uint8_t)((c[j] & 3) | (c[j + 8] & 3) << 2 | (c[j + 16] & 3) << 4 | (c[j + 24] & 3) << 6);
        for (int i = 0; i < 32; i++) hi |= (uint32_t)(c[i] >> 2 & 1) << i;
        for (int i = 0; i < 4; i++) dst[8 + i] = (uint8_t)(hi >> (8 * i));
        break;
    }
    case 4:
        for (int j = 0; j < 16; j++) dst[j] = (uint8_t)(c[j] | c[j + 16] << 4);
        break;
    default: memcpy(dst, c, 32); break;
    }
}

/* The reference unpacker every kernel is held to. */
static void unpack_chunk(uint8_t *c, const uint8_t *src, int bits)
{
    switch (bits) {
    case 2:
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < 4; k++) c[j + 8 * k] = (uint8_t)(src[j] >> (2 * k) & 3);
        break;
    case 3: {
        uint32_t hi = (uint32_t)src[8] | (uint32_t)src[9] << 8 | (uint32_t)src[10] << 16 | (uint32_t)src[11] << 24;
        for (int j = 0; j < 8; j++)
            for (int k = 0; k < 4; k++) c[j + 8 * k] = (uint8_t)(src[j] >> (2 * k) & 3);
        for (int i = 0; i < 32; i++) c[i] |= (uint8_t)((hi >> i & 1) << 2);
        break;
    }
    case 4:
        for (int j = 0; j < 16; j++) {
            c[j] = src[j] & 15;
            c[j + 16] = src[j] >> 4;
        }
        break;
    default: memcpy(c, src, 32); break;
    }
}

void wmat__qunpack_row(const wmat_qtensor *qt, int64_t r, uint8_t *codes)
{
    const uint8_t *src = qt->codes + r * qt->row_bytes;
    for (int64_t k = 0; k < qt->cols; k += 32, src += qt->chunk_bytes) unpack_chunk(codes + k, src, qt->bits);
}

/* ---- pack / unpack */

static void qt_shape(wmat_qtensor *qt, const wmat_qresult *q)
{
    qt->obj.kind = &wmat__wkind_qpacked;
    qt->bits = q->bits;
    qt->sym = q->sym;
    qt->axis = q->axis;
    qt->group = q->group;
    qt->rows = q->rows;
    qt->cols = q->cols;
    qt->n_groups = wmat_qresult_n_groups(q);
    qt->chunk_bytes = wmat_qpack_chunk_bytes(q->bits);
    qt->row_bytes = q->cols / 32 * qt->chunk_bytes;
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

int wmat_qtensor_pack(const wmat_qresult *q, wmat_qtensor **out)
{
    *out = NULL;
    int rc = wmat_qresult_check_packable(q, "pack");
    if (rc) return rc;
    wmat_qtensor s;
    memset(&s, 0, sizeof s);
    qt_shape(&s, q);
    const size_t hdr = align64(sizeof s);
    const size_t code_b = (size_t)(s.rows * s.row_bytes), scale_b = (size_t)s.n_groups * 2;
    const size_t zero_b = q->sym ? 0 : (size_t)s.n_groups, perm_b = q->perm ? (size_t)s.cols * 4 : 0;
    const size_t total = hdr + align64(code_b) + align64(scale_b) + align64(zero_b) + perm_b;
    uint8_t *base = wmat__aligned_alloc(total);
    if (!base) return wmat_set_error(WMAT_ERR_NOMEM, "pack: out of memory for %zu bytes", total);
    uint8_t *codes = base + hdr;
    uint16_t *scales = (uint16_t *)(codes + align64(code_b));
    uint8_t *zeros = zero_b ? (uint8_t *)scales + align64(scale_b) : NULL;
    int32_t *perm = perm_b ? (int32_t *)((uint8_t *)scales + align64(scale_b) + align64(zero_b)) : NULL;
    for (int64_t r = 0; r < s.rows; r++)
        for (int64_t k = 0; k < s.cols; k += 32)
            pack_chunk(codes + r * s.row_bytes + k / 32 * s.chunk_bytes, q->codes + r * s.cols + k, s.bits);
    for (int64_t g = 0; g < s.n_groups; g++) {
        scales[g] = wmat_f32_to_f16(q->scales[g]);
        if (zeros) zeros[g] = (uint8_t)lrintf(q->zeros[g]);
    }
    if (perm) memcpy(perm, q->perm, perm_b);
    s.codes = codes;
    s.scales = scales;
    s.zeros = zeros;
    s.perm = perm;
    memcpy(base, &s, sizeof s);
    *out = (wmat_qtensor *)base;
    return WMAT_OK;
}

void wmat_qtensor_free(wmat_qtensor *qt) { wmat__free(qt); }

uint64_t wmat_qtensor_nbytes(const wmat_qtensor *qt)
{
    return (uint64_t)qt->rows * (uint64_t)qt->row_bytes + (uint64_t)qt->n_groups * 2 +
           (qt->zeros ? (uint64_t)qt->n_groups : 0) + (qt->perm ? (uint64_t)qt->cols * 4 : 0);
}

int wmat_qtensor_unpack(const wmat_qtensor *qt, wmat_qresult *q)
{
    int rc = wmat_qresult_alloc(q, qt->bits, qt->sym, qt->axis, qt->group, qt->rows, qt->cols, qt->perm != NULL);
    if (rc) return rc;
    for (int64_t r = 0; r < qt->rows; r++) wmat__qunpack_row(qt, r, q->codes + r * qt->cols);
    const float zsym = (float)(1 << (qt->bits - 1));
    for (int64_t g = 0; g < qt->n_groups; g++) {
        q->scales[g] = wmat_f16_to_f32(qt->scales[g]);
        q->zeros[g] = qt->zeros ? (float)qt->zeros[g] : zsym;
    }
    if (qt->perm) memcpy(q->perm, qt->perm, (size_t)qt->cols * 4);
    return WMAT_OK;
}

static inline float zero_of(const wmat_qtensor *qt, int64_t g)
{
    return qt->zeros ? (float)qt->zeros[g] : (float)(1 << (qt->bits - 1));
}

void wmat_qtensor_dequant_rows(const wmat_qtensor *qt, int64_t r0, int64_t nr, float *W)
{
    uint8_t c[32];
    const int64_t cols = qt->cols;
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i;
        const uint8_t *src = qt->codes + r * qt->row_bytes;
        float *w = W + i * cols;
        for (int64_t k0 = 0; k0 < cols; k0 += 32, src += qt->chunk_bytes) {
            unpack_chunk(c, src, qt->bits);
            for (int j = 0; j < 32; j++) {
                const int64_t k = k0 + j;
                const int64_t g = qt->axis == WMAT_QAXIS_IN ? r * (cols / qt->group) + k / qt->group
                                                           : k * (qt->rows / qt->group) + r / qt->group;
                const float v = wmat_f16_to_f32(qt->scales[g]) * ((float)c[j] - zero_of(qt, g));
                w[qt->perm ? qt->perm[k] : k] = v;
            }
        }
    }
}

void wmat_qtensor_dequant(const wmat_qtensor *qt, float *W) { wmat_qtensor_dequant_rows(qt, 0, qt->rows, W); }

/* ---- model tensors */

const wmat_qtensor *wmat_tensor_qtensor(const wmat_tensor *t)
{
    return t && t->dtype == WMAT_QPACKED && wmat__wkind_of(t) == &wmat__wkind_qpacked ? (const wmat_qtensor *)t->data : NULL;
}

/* ---- public reports */

int wmat_tensor_qinfo(const wmat_tensor *t, wmat_qinfo *out)
{
    memset(out, 0, sizeof *out);
    const wmat_qtensor *qt = wmat_tensor_qtensor(t);
    if (!qt) return wmat_set_error(WMAT_ERR_INVALID, "tensor %s is not packed", t ? t->name : "(null)");
    out->bits = qt->bits;
    out->sym = qt->sym;
    out->axis = (int)qt->axis;
    out->group = qt->group;
    out->has_perm = qt->perm != NULL;
    out->rows = qt->rows;
    out->cols = qt->cols;
    out->code_bytes = (uint64_t)qt->rows * (uint64_t)qt->row_bytes;
    out->scale_bytes = (uint64_t)qt->n_groups * 2;
    out->zero_bytes = qt->zeros ? (uint64_t)qt->n_groups : 0;
    out->perm_bytes = qt->perm ? (uint64_t)qt->cols * 4 : 0;
    out->bits_per_weight = 8.0 * (double)(out->code_bytes + out->scale_bytes + out->zero_bytes + out->perm_bytes) /
                           ((double)qt->rows * (double)qt->cols);
    return WMAT_OK;
}

