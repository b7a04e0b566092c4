/* PB-LLM weights (partial binarization, Shang et al., ICLR 2024): most
 * weights of a row binarized, w = mu_r + alpha_r * s (s = +-1, one bit
 * each), a salient fraction kept on an 8-bit asymmetric grid of the row,
 * w = scale_r * (code - zero_r). Produced by the pbllm method
 * (src/quant/pbllm.c, inside GPTQ's error feedback); from_f32 is the
 * method without data (salient by magnitude, 10%, no error feedback).
 *
 * Storage (every byte is counted by nbytes, so bits per weight include the
 * salient positions):
 *   .pb_sign  u8  (rows, ceil(cols/8))  bit c%8 of byte c/8: s = +1 when set
 *   .pb_row   f16 (rows, 3)             mu, alpha, scale
 *   .pb_zero  u8  (rows)                the salient grid's zero point
 *   .pb_sal   u8  (max(entries,1), 2)   the salient stream: (gap, code) pairs
 * The salient stream walks the row-major positions with a cursor starting
 * at -1: a gap g < 255 moves it by g + 1 onto a salient weight (its code
 * follows); g = 255 is a filler that moves it by 255 and holds no weight
 * (its code is 0). Eight bits of position per salient weight (plus a rare
 * filler) instead of a 1-bit mask over every weight: cheaper below 1/8
 * salient, which is where PB-LLM is meant to run. The sign bits at salient
 * positions are stored too, as 0 (the kernels need no second bit plane).
 *
 * Kernels: the sign bit of a salient position is 0 (checked on load), so
 * y_r = (mu - alpha) (sum(x) - X_s) + 2 alpha sum_{s_c = +1} x_c
 *       + scale (sum_salient code_c x_c - zero X_s),  X_s = sum_salient x_c.
 * sum(x) is the prepared input, shared by all rows. The masked sums have an AVX2 path (each 32-bit word of signs
 * shifted so that bit c lands in lane c's sign bit, a blend picks x), an
 * AVX-512 path (masked adds; the salient stream decoded 16 entries at a time
 * with a gather: sal_sums_avx512) and a plain C twin; the batched paths dequantize tiles of rows for a GEMM. */
#include "wop.h"

#include "kern_dense.h" /* wmat__isa_best */
#include "linalg/linalg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KP_X86 1
#define KP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma")))
#endif

#define PB_FILL 255 /* a filler's gap */

extern const wmat_wkind wmat__wkind_pbllm;

typedef struct {
    wmat_wobj obj;
    int64_t rows, cols, sb; /* sb: sign bytes per row */
    int64_t n_ent, n_sal;   /* stream entries (salient + fillers), salient weights */
    const uint8_t *sign;    /* (rows, sb) */
    const uint16_t *rowp;   /* (rows, 3) f16 */
    const uint8_t *zero;    /* (rows) */
    const uint8_t *ent;     /* (max(n_ent, 1), 2) */
    /* in memory only (from the stored arrays): where each row's walk of the
     * stream starts (entry, cursor), and the row parameters as f32 */
    int64_t *first, *base;  /* (rows + 1) each */
    float *rowf;            /* (rows, 4): mu, alpha, scale, zero */
    void *idx;              /* owns first, base, rowf */
    void *own;              /* the stored arrays when built in memory */
} pbobj;

static const pbobj *pb_of(const wmat_tensor *W) { return (const pbobj *)W->data; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static int64_t ent_rows(const pbobj *o) { return o->n_ent > 0 ? o->n_ent : 1; }

/* ---- the salient stream */

/* Runs the statement for every salient weight of row r (c its column,
 * code its 8-bit code): the entries [first[r], first[r + 1]) all land in
 * row r, since the cursor only grows. */
#define PB_ROW_WALK(o, r, ...)                                                                                       \
    do {                                                                                                             \
        const int64_t rb_ = (r) * (o)->cols, k1_ = (o)->first[(r) + 1];                                              \
        int64_t pos_ = (o)->base[r];                                                                                 \
        for (int64_t k_ = (o)->first[r]; k_ < k1_; k_++) {                                                           \
            const unsigned g_ = (o)->ent[2 * k_];                                                                    \
            pos_ += g_ < PB_FILL ? (int64_t)g_ + 1 : PB_FILL;                                                        \
            if (g_ < PB_FILL) {                                                                                      \
                const int64_t c = pos_ - rb_;                                                                        \
                const unsigned code = (o)->ent[2 * k_ + 1];                                                          \
                __VA_ARGS__;                                                                                         \
            }                                                                                                        \
        }                                                                                                            \
    } while (0)

static int sign_at(const uint8_t *s, int64_t c) { return s[c >> 3] >> (c & 7) & 1; }

/* The row index and f32 parameters from the stored arrays, checking the
 * stream (a hostile file gets an error naming `what`). */
static int build_index(pbobj *o, const char *what)
{
    const int64_t rows = o->rows, total = rows * o->cols;
    char *buf = wmat__aligned_alloc(align64((size_t)(rows + 1) * 16) + (size_t)rows * 16);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->idx = buf;
    o->first = (int64_t *)buf;
    o->base = o->first + rows + 1;
    o->rowf = (float *)(buf + align64((size_t)(rows + 1) * 16));
    int64_t pos = -1, r = 0, nsal = 0;
    for (int64_t k = 0; k < o->n_ent; k++) {
        const unsigned g = o->ent[2 * k];
        const int64_t np = pos + (g < PB_FILL ? (int64_t)g + 1 : PB_FILL);
        if (np >= total)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: salient entry %lld points past the last weight", what, (long long)k);
        if (g == PB_FILL && o->ent[2 * k + 1])
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: filler entry %lld has a code", what, (long long)k);
        for (; r <= rows && np >= r * o->cols; r++) o->first[r] = k, o->base[r] = pos;
        /* the kernels take a salient weight's sign bit to be 0 */
        if (g < PB_FILL && sign_at(o->sign + (np / o->cols) * o->sb, np % o->cols))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: salient weight %lld has its sign bit set", what, (long long)k);
        nsal += g < PB_FILL;
        pos = np;
    }
    for (; r <= rows; r++) o->first[r] = o->n_ent, o->base[r] = pos;
    if (nsal != o->n_sal)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: the salient stream holds %lld weights, the description says %lld", what,
                              (long long)nsal, (long long)o->n_sal);
    for (int64_t i = 0; i < rows; i++) {
        for (int j = 0; j < 3; j++) {
            const float v = wmat_f16_to_f32(o->rowp[i * 3 + j]);
            if (!isfinite(v)) return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld has a non-finite parameter", what, (long long)i);
            o->rowf[i * 4 + j] = v;
        }
        o->rowf[i * 4 + 3] = (float)o->zero[i];
    }
    if (o->cols % 8) {
        const uint8_t pad = (uint8_t)(0xFFu << (o->cols % 8));
        for (int64_t i = 0; i < rows; i++)
            if (o->sign[i * o->sb + o->sb - 1] & pad)
                return wmat_set_error(WMAT_ERR_FORMAT, "%s: sign bits past the last input", what);
    }
    return WMAT_OK;
}

/* ---- run: one row */

#ifdef KP_X86
/* The AVX-512 twin of a row's salient stream (the binary plane's sum is
 * kern_bits.c's, masked adds at this level), 16 entries at a time: each 16-bit (gap, code) pair widened to a lane, the
 * cursor steps min(gap + 1, 255) prefix-summed across the lanes (four
 * shifted adds), x gathered at the columns of the non-filler lanes, code x
 * and x summed in 16 chains; the last partial 16 entries walk as in C. */

KP_AVX512 static void sal_sums_avx512(const pbobj *o, int64_t r, const float *x, float *csum, float *xsum)
{
    const int64_t rb = r * o->cols, k1 = o->first[r + 1];
    int64_t k = o->first[r], pos = o->base[r];
    const __m512i ff = _mm512_set1_epi32(0xff), one = _mm512_set1_epi32(1), z = _mm512_setzero_si512(),
                  last = _mm512_set1_epi32(15);
    __m512 cx = _mm512_setzero_ps(), sx = _mm512_setzero_ps();
    for (; k + 16 <= k1; k += 16) {
        const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(o->ent + 2 * k)));
        const __m512i g = _mm512_and_si512(w, ff), code = _mm512_srli_epi32(w, 8);
        const __mmask16 valid = _mm512_cmplt_epu32_mask(g, ff);
        __m512i st = _mm512_min_epu32(_mm512_add_epi32(g, one), ff);
        st = _mm512_add_epi32(st, _mm512_alignr_epi32(st, z, 15));
        st = _mm512_add_epi32(st, _mm512_alignr_epi32(st, z, 14));
        st = _mm512_add_epi32(st, _mm512_alignr_epi32(st, z, 12));
        st = _mm512_add_epi32(st, _mm512_alignr_epi32(st, z, 8));
        const __m512i col = _mm512_add_epi32(_mm512_set1_epi32((int32_t)(pos - rb)), st);
        const __m512 xv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, col, x, 4);
        cx = _mm512_fmadd_ps(_mm512_cvtepi32_ps(code), xv, cx);
        sx = _mm512_add_ps(sx, xv);
        pos += _mm512_cvtsi512_si32(_mm512_permutexvar_epi32(last, st));
    }
    float c_t = _mm512_reduce_add_ps(cx), s_t = _mm512_reduce_add_ps(sx);
    for (; k < k1; k++) {
        const unsigned g = o->ent[2 * k];
        pos += g < PB_FILL ? (int64_t)g + 1 : PB_FILL;
        if (g < PB_FILL) {
            const float xc = x[pos - rb];
            c_t += (float)o->ent[2 * k + 1] * xc;
            s_t += xc;
        }
    }
    *csum = c_t, *xsum = s_t;
}
#endif

static size_t pb_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)W, (void)ex;
    return 64;
}

static void pb_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)ex;
    const pbobj *o = pb_of(W);
    double s = 0.0;
    for (int64_t c = 0; c < o->cols; c++) s += x[c];
    *(float *)prep = (float)s;
}

static void pb_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    const pbobj *o = pb_of(W);
    const float S = *(const float *)prep;
    int avx512 = 0;
#ifdef KP_X86
    avx512 = ex->isa >= WMAT_ISA_AVX512 && wmat__isa_best() >= WMAT_ISA_AVX512;
#endif
    const wmat_bits_sum_fn bsum = wmat__bits_sum_for(ex->isa);
    for (int64_t r = r0; r < r1; r++) {
        const float *f = o->rowf + r * 4;
        const uint8_t *s = o->sign + r * o->sb;
        const float m = bsum(s, x, o->cols);
#ifdef KP_X86
        if (avx512) {
            float csum, xsum;
            sal_sums_avx512(o, r, x, &csum, &xsum);
            const float d = (f[0] - f[1]) * (S - xsum) + 2.0f * f[1] * m + f[2] * (csum - f[3] * xsum);
            y[r] = acc ? y[r] + d : d;
            continue;
        }
#endif
        /* salient positions have sign bit 0 (checked on load), so the binary
         * plane gave them mu - alpha: each adds scale (code - zero) x_c -
         * (mu - alpha) x_c; sum code x_c and sum x_c over four chains each */
        float cx[4] = {0, 0, 0, 0}, sx[4] = {0, 0, 0, 0};
        int64_t j = 0;
        PB_ROW_WALK(o, r, {
            cx[j & 3] += (float)code * x[c];
            sx[j & 3] += x[c];
            j++;
        });
        const float csum = (cx[0] + cx[1]) + (cx[2] + cx[3]), xsum = (sx[0] + sx[1]) + (sx[2] + sx[3]);
        const float d = (f[0] - f[1]) * (S - xsum) + 2.0f * f[1] * m + f[2] * (csum - f[3] * xsum);
        y[r] = acc ? y[r] + d : d;
    }
}

static void pb_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const pbobj *o = pb_of(W);
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i;
        const float *f = o->rowf + r * 4;
        const uint8_t *s = o->sign + r * o->sb;
        float *w = out + i * o->cols;
        const float hi = f[0] + f[1], lo = f[0] - f[1];
        for (int64_t c = 0; c < o->cols; c++) w[c] = sign_at(s, c) ? hi : lo;
        PB_ROW_WALK(o, r, w[c] = f[2] * ((float)code - f[3]));
    }
}

/* ---- run: batched, tiles of rows dequantized into ws (tiles.c) */

static void pb_rows_deq(const void *obj, int64_t r0, int64_t nr, float *out) { pb_dequant(obj, r0, nr, out); }

static size_t pb_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)T;
    return wmat__tiles_ws_bytes(pb_of(W)->rows, pb_of(W)->cols, ex);
}

static void pb_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__tiles_forward(pb_rows_deq, W, pb_of(W)->rows, pb_of(W)->cols, X, Y, T, acc, ws, ex);
}

/* dX = dY W: the tiles' contributions add up, so they run in turn. */
static void pb_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    wmat__tiles_backward(pb_rows_deq, W, pb_of(W)->rows, pb_of(W)->cols, dY, dX, T, acc, ws, ex);
}

/* ---- inspect */

static uint64_t pb_nbytes(const wmat_tensor *W)
{
    const pbobj *o = pb_of(W);
    return (uint64_t)(o->rows * o->sb) + (uint64_t)o->rows * 7u + (uint64_t)ent_rows(o) * 2u;
}

static void pb_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const pbobj *o = pb_of(W);
    const double nw = (double)o->rows * (double)o->cols;
    snprintf(buf, n, "pbllm %.1f%% salient 8b, %.2f bpw", 100.0 * (double)o->n_sal / nw, 8.0 * (double)pb_nbytes(W) / nw);
}

int64_t wmat__pbllm_salient(const wmat_tensor *W, uint8_t *mask)
{
    if (wmat__wkind_of(W) != &wmat__wkind_pbllm) return -1;
    const pbobj *o = pb_of(W);
    if (mask) {
        memset(mask, 0, (size_t)(o->rows * o->cols));
        for (int64_t r = 0; r < o->rows; r++) PB_ROW_WALK(o, r, (void)code; mask[r * o->cols + c] = 1);
    }
    return o->n_sal;
}

static void pb_free(void *obj)
{
    pbobj *o = obj;
    if (!o) return;
    wmat__free(o->idx);
    wmat__free(o->own);
    wmat__free(o);
}

static int pb_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    (void)W, (void)dt;
    *why = "ggml has no partially binarized type (convert the model to a dense kind first)";
    return 0;
}

/* ---- build */

int wmat__pbllm_create(int64_t rows, int64_t cols, const uint8_t *sal, const uint8_t *code, const float *rowp, void **obj)
{
    *obj = NULL;
    if (rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX)
        return wmat_set_error(WMAT_ERR_INVALID, "pbllm: bad shape (%lld x %lld)", (long long)rows, (long long)cols);
    const int64_t total = rows * cols, sb = (cols + 7) / 8;
    int64_t n_ent = 0, n_sal = 0, pos = -1;
    for (int64_t p = 0; p < total; p++) {
        if (!sal[p]) continue;
        n_ent += (p - pos - 1) / PB_FILL + 1;
        n_sal++;
        pos = p;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float z = rowp[r * 4 + 3];
        if (!(z >= 0.0f && z <= 255.0f && z == floorf(z)))
            return wmat_set_error(WMAT_ERR_INVALID, "pbllm: row %lld's zero point %g is not an integer in [0, 255]",
                                  (long long)r, (double)z);
    }
    const size_t s_bytes = align64((size_t)(rows * sb)), r_bytes = align64((size_t)rows * 6), z_bytes = align64((size_t)rows);
    pbobj *o = wmat__calloc(1, sizeof *o);
    char *buf = wmat__aligned_alloc(s_bytes + r_bytes + z_bytes + (size_t)(n_ent > 0 ? n_ent : 1) * 2);
    if (!o || !buf) {
        wmat__free(o);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "pbllm: out of memory for a (%lld x %lld) matrix", (long long)rows,
                              (long long)cols);
    }
    uint8_t *sign = (uint8_t *)buf, *zero = (uint8_t *)(buf + s_bytes + r_bytes), *ent = zero + z_bytes;
    uint16_t *rp = (uint16_t *)(buf + s_bytes);
    int64_t k = 0;
    pos = -1;
    for (int64_t r = 0; r < rows; r++) {
        for (int j = 0; j < 3; j++) rp[r * 3 + j] = wmat_f32_to_f16(rowp[r * 4 + j]);
        zero[r] = (uint8_t)rowp[r * 4 + 3];
        for (int64_t c = 0; c < cols; c++) {
            const int64_t p = r * cols + c;
            if (!sal[p]) {
                if (code[p]) sign[r * sb + c / 8] |= (uint8_t)(1u << (c % 8));
                continue;
            }
            int64_t d = p - pos - 1;
            for (; d >= PB_FILL; d -= PB_FILL) ent[2 * k] = PB_FILL, ent[2 * k + 1] = 0, k++;
            ent[2 * k] = (uint8_t)d, ent[2 * k + 1] = code[p], k++;
            pos = p;
        }
    }
    o->obj.kind = &wmat__wkind_pbllm;
    o->rows = rows, o->cols = cols, o->sb = sb, o->n_ent = n_ent, o->n_sal = n_sal;
    o->sign = sign, o->rowp = rp, o->zero = zero, o->ent = ent, o->own = buf;
    int rc = build_index(o, "pbllm");
    if (rc) {
        pb_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

/* The generic conversion: PB-LLM without data (no error feedback), the
 * largest 10% of |w| over the matrix salient, mu and alpha over each row's
 * binarized weights, the salient grid min-max over the whole row. */
static int pb_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int64_t total = rows * cols;
    float *a = wmat__malloc((size_t)total * sizeof(float)), *rowp = wmat__malloc((size_t)rows * 4 * sizeof(float));
    uint8_t *sal = wmat__malloc((size_t)total), *code = wmat__malloc((size_t)total);
    int rc = WMAT_OK;
    if (!a || !rowp || !sal || !code) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "pbllm: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < total; i++) a[i] = fabsf(W[i]);
    /* threshold: the value at rank floor(0.9 n) of the sorted magnitudes (a selection) */
    int64_t lo = 0, hi = total - 1;
    const int64_t kth = (int64_t)(0.9 * (double)total) < total ? (int64_t)(0.9 * (double)total) : total - 1;
    while (lo < hi) {
        const float piv = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < piv) i++;
            while (a[j] > piv) j--;
            if (i <= j) {
                const float t = a[i];
                a[i++] = a[j];
                a[j--] = t;
            }
        }
        if (kth <= j) hi = j;
        else if (kth >= i) lo = i;
        else break;
    }
    const float th = a[kth];
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols;
        double sm = 0;
        int64_t nb = 0;
        float mn = 0.0f, mx = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            sal[r * cols + c] = fabsf(w[c]) > th;
            if (!sal[r * cols + c]) sm += w[c], nb++;
            mn = w[c] < mn ? w[c] : mn;
            mx = w[c] > mx ? w[c] : mx;
        }
        const float mu = wmat_f16_to_f32(wmat_f32_to_f16(nb ? (float)(sm / (double)nb) : 0.0f));
        double sa = 0;
        for (int64_t c = 0; c < cols; c++)
            if (!sal[r * cols + c]) sa += fabs((double)w[c] - mu);
        const float al = wmat_f16_to_f32(wmat_f32_to_f16(nb ? (float)(sa / (double)nb) : 0.0f));
        if (mn == 0.0f && mx == 0.0f) mn = -1.0f, mx = 1.0f;
        const float sc = wmat_f16_to_f32(wmat_f32_to_f16((mx - mn) / 255.0f)), z = rintf(-mn / sc);
        const float zc = z < 0 ? 0 : z > 255 ? 255 : z;
        rowp[r * 4 + 0] = mu, rowp[r * 4 + 1] = al, rowp[r * 4 + 2] = sc, rowp[r * 4 + 3] = zc;
        for (int64_t c = 0; c < cols; c++) {
            float q = rintf(w[c] / sc) + zc;
            q = q < 0 ? 0 : q > 255 ? 255 : q;
            code[r * cols + c] = sal[r * cols + c] ? (uint8_t)q : (uint8_t)(w[c] - mu >= 0.0f);
        }
    }
    void *obj;
    if (!(rc = wmat__pbllm_create(rows, cols, sal, code, rowp, &obj))) wmat__tensor_own_obj(out, rows, cols, obj);
done:
    wmat__free(a);
    wmat__free(rowp);
    wmat__free(sal);
    wmat__free(code);
    return rc;
}

/* ---- files */

static int pb_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const pbobj *o = pb_of(W);
    if (!cJSON_AddNumberToObject(desc, "entries", (double)o->n_ent) || !cJSON_AddNumberToObject(desc, "salient", (double)o->n_sal))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".pb_sign", WMAT_U8, 2, {o->rows, o->sb}, o->sign};
    parts[1] = (wmat_wpart){".pb_row", WMAT_F16, 2, {o->rows, 3}, o->rowp};
    parts[2] = (wmat_wpart){".pb_zero", WMAT_U8, 1, {o->rows, 0}, o->zero};
    parts[3] = (wmat_wpart){".pb_sal", WMAT_U8, 2, {ent_rows(o), 2}, o->ent};
    *n_parts = 4;
    return WMAT_OK;
}

static int jint(const cJSON *o, const char *key, double hi, int64_t *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= 0 && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be an integer in [0, %g]", what, key, hi);
    *out = (int64_t)d;
    return WMAT_OK;
}

static int pb_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    if (rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad shape (%lld x %lld)", what, (long long)rows, (long long)cols);
    const double total = (double)rows * (double)cols;
    int64_t n_ent = 0, n_sal = 0;
    /* at most one filler per 255 positions besides the salient weights */
    int rc = jint(desc, "entries", total + total / PB_FILL + 1, &n_ent, what);
    if (!rc) rc = jint(desc, "salient", total, &n_sal, what);
    if (rc) return rc;
    const int64_t sb = (cols + 7) / 8;
    const void *sign, *rowp, *zero, *ent;
    rc = get(user, ".pb_sign", WMAT_U8, 2, rows, sb, &sign);
    if (!rc) rc = get(user, ".pb_row", WMAT_F16, 2, rows, 3, &rowp);
    if (!rc) rc = get(user, ".pb_zero", WMAT_U8, 1, rows, 0, &zero);
    if (!rc) rc = get(user, ".pb_sal", WMAT_U8, 2, n_ent > 0 ? n_ent : 1, 2, &ent);
    if (rc) return rc;
    if ((uintptr_t)rowp % 2) return wmat_set_error(WMAT_ERR_FORMAT, "%s: row parameters are not aligned", what);
    pbobj *o = wmat__calloc(1, sizeof *o);
    if (!o) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->obj.kind = &wmat__wkind_pbllm;
    o->rows = rows, o->cols = cols, o->sb = sb, o->n_ent = n_ent, o->n_sal = n_sal;
    o->sign = sign, o->rowp = rowp, o->zero = zero, o->ent = ent;
    if ((rc = build_index(o, what))) {
        pb_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_pbllm = {
    .name = "pbllm",
    .summary = "PB-LLM: rows binarized (mu + alpha sign, 1 bit), a salient fraction on an 8-bit row grid, stored sparsely",
    .dtype = WMAT_OBJ,
    .row_align = 1,
    .ws_bytes = pb_ws,
    .forward = pb_forward,
    .backward = pb_backward,
    .prep_bytes = pb_prep_bytes,
    .prepare = pb_prepare,
    .rows = pb_rows,
    .dequant_rows = pb_dequant,
    .nbytes = pb_nbytes,
    .describe = pb_describe,
    .from_f32 = pb_from_f32,
    .row_tol = 1e-5f,
    .approx_tol = 0.5f, /* binarizing a Gaussian leaves sqrt(1 - 2/pi) = 0.6 of it; 10% kept at 8 bits cuts that */
    .free = pb_free,
    .save = pb_save,
    .load = pb_load,
    .gguf_type = pb_gguf_type,
};
