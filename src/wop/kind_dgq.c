/* DGQ weights (dual-grained quantization, A8W4; SPECS.md G6): unsigned
 * 4-bit codes q with a 4-bit zero point z and an int8 scale k_g (1..127)
 * per group of `group` inputs of a row, one fp16 scale s8 per row, an
 * optional per-input smoothing vector s and an activation scale s_x:
 *
 *   W8[r, c]  = (q - z) k_g               exactly an int8 (|W8| <= 127, checked)
 *   W[r, c]   = s8_r W8[r, c] / s_c        the weight in the model's basis
 *   y_r       = s8_r s_x sum_c W8[r, c] x8_c,   x8 = clamp(rint(x_c / (s_c s_x)), -127, 127)
 *
 * s_x > 0: static per-tensor activation scale (from calibration: inputs
 * beyond 127 s_x clip); s_x = 0: dynamic, per token max|x/s| / 127. The
 * smoothing divisor s is SmoothQuant's migration kept in the weight
 * (x / s costs one multiply per input, the same as a norm weight folded
 * with it; kept here so a method can smooth any linear without editing the
 * model around it).
 *
 * Storage (nbytes counts every byte):
 *   .dgq_codes  u8  (rows, ceil(cols/32) 16)  per 32 inputs, byte j: c_j | c_(j+16) << 4 (0-padded)
 *   .dgq_zero   u8  (rows, ceil(ng/2))  zero points, two per byte (low nibble: even group)
 *   .dgq_k      u8  (rows, ng)          k_g as int8 (1..127)
 *   .dgq_s8     f16 (rows)
 *   .dgq_smooth f32 (cols)              only when "smooth" is 1
 *   description: group, smooth (0/1), act_scale (s_x, a float >= 0)
 * group is a multiple of 32 dividing cols, or cols (one group per row, any width).
 *
 * Run: with int8 activations (ex->act8) the batched path quantizes X once,
 * decodes tiles of rows into W8 and multiplies on linalg's int8 GEMM
 * (oneDNN or the reference), scaling the int32 result by s8_r s_x; the
 * one-row path is an int8 dot per group (AVX2: u8 x s8 maddubs, C twin),
 * k_g (sum q x8 - z sum x8), exact in int32. Without int8 activations
 * both run the fp32 weight W (tiles dequantized for an sgemm, or a float
 * dot), the exact path the conformance suite differentiates. */
#include "wop.h"

#include "kern_dense.h" /* wmat__isa_best */
#include "linalg/linalg.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define KD_X86 1
#define KD_AVX2 __attribute__((target("avx2,fma")))
#endif

extern const wmat_wkind wmat__wkind_dgq;

typedef struct {
    wmat_wobj obj;
    int64_t rows, cols, group, ng, zb, rb; /* zb: zero bytes per row, rb: code bytes per row */
    int smooth;
    float act_scale;
    const uint8_t *codes; /* (rows, rb) */
    const uint8_t *zero;  /* (rows, zb) */
    const int8_t *k;      /* (rows, ng) */
    const uint16_t *s8;   /* (rows) f16 */
    const float *sm;      /* (cols) or NULL */
    /* in memory only */
    float *s8f; /* (rows) */
    float *rs;  /* (cols) 1 / s_c (1 without smoothing) */
    void *idx;  /* owns s8f, rs */
    void *own;  /* the stored arrays when built in memory */
} dgqobj;

static const dgqobj *dg_of(const wmat_tensor *W) { return (const dgqobj *)W->data; }
static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static unsigned code_at(const uint8_t *row, int64_t c)
{
    const uint8_t b = row[(c >> 5) * 16 + (c & 15)];
    return (c & 16) ? b >> 4 : b & 15u;
}
static unsigned zero_at(const dgqobj *o, int64_t r, int64_t g)
{
    const uint8_t b = o->zero[r * o->zb + g / 2];
    return (g & 1) ? b >> 4 : b & 15u;
}

/* A group's 16 possible W8 values, (q - z) k (codes outside the clamp
 * never occur in a loaded weight; their entries are saturated). */
static void group_table(int z, int k, int8_t *tab)
{
    for (int q = 0; q < 16; q++) {
        const int v = (q - z) * k;
        tab[q] = (int8_t)(v > 127 ? 127 : v < -128 ? -128 : v);
    }
}

#ifdef KD_X86
/* n (a multiple of 32) codes of a group through the table: one byte
 * shuffle per 16 codes. */
KD_AVX2 static void decode_avx2(const uint8_t *cb, const int8_t *tab, int64_t n, int8_t *w)
{
    const __m128i m4 = _mm_set1_epi8(15), t = _mm_loadu_si128((const __m128i *)tab);
    for (int64_t b = 0; b < n; b += 32) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(cb + b / 2));
        _mm_storeu_si128((__m128i *)(w + b), _mm_shuffle_epi8(t, _mm_and_si128(v, m4)));
        _mm_storeu_si128((__m128i *)(w + b + 16), _mm_shuffle_epi8(t, _mm_and_si128(_mm_srli_epi16(v, 4), m4)));
    }
}
#endif

/* W8 of rows r0 .. r0+nr-1 (nr, cols). */
static void w8_rows_at(const dgqobj *o, int64_t r0, int64_t nr, int8_t *out, int avx2)
{
    int8_t tab[16];
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i;
        const uint8_t *cr = o->codes + r * o->rb;
        int8_t *w = out + i * o->cols;
        for (int64_t g = 0; g < o->ng; g++) {
            group_table((int)zero_at(o, r, g), o->k[r * o->ng + g], tab);
            int64_t c = g * o->group;
            const int64_t e = (g + 1) * o->group;
#ifdef KD_X86
            if (avx2) {
                const int64_t n32 = (e - c) / 32 * 32;
                decode_avx2(cr + c / 2, tab, n32, w + c);
                c += n32;
            }
#endif
            for (; c < e; c++) w[c] = tab[code_at(cr, c)];
        }
    }
    (void)avx2;
}

static int use_avx2(int isa)
{
#ifdef KD_X86
    return isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2;
#else
    (void)isa;
    return 0;
#endif
}

static void w8_rows(const dgqobj *o, int64_t r0, int64_t nr, int8_t *out) { w8_rows_at(o, r0, nr, out, 0); }

void wmat__dgq_w8_rows(const wmat_tensor *W, int64_t r0, int64_t nr, int8_t *out) { w8_rows(dg_of(W), r0, nr, out); }

static void dg_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const dgqobj *o = dg_of(W);
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i;
        const uint8_t *cr = o->codes + r * o->rb;
        float *w = out + i * o->cols;
        const float s = o->s8f[r];
        for (int64_t g = 0; g < o->ng; g++) {
            const int z = (int)zero_at(o, r, g), k = o->k[r * o->ng + g];
            for (int64_t c = g * o->group; c < (g + 1) * o->group; c++)
                w[c] = s * (float)(((int)code_at(cr, c) - z) * k) * o->rs[c];
        }
    }
}

/* x (cols) to int8 under this weight's activation scale; returns s_x used. */
static float quant_act(const dgqobj *o, const float *x, int8_t *x8)
{
    float sx = o->act_scale;
    if (!(sx > 0.0f)) {
        float m = 0.0f;
        for (int64_t c = 0; c < o->cols; c++) {
            const float a = fabsf(x[c] * o->rs[c]);
            m = a > m ? a : m;
        }
        sx = m > 0.0f ? m / 127.0f : 1.0f;
    }
    for (int64_t c = 0; c < o->cols; c++) {
        float v = rintf(x[c] * o->rs[c] / sx);
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        x8[c] = (int8_t)(v == v ? v : 0.0f);
    }
    return sx;
}

float wmat__dgq_quant_act(const wmat_tensor *W, const float *x, int8_t *x8) { return quant_act(dg_of(W), x, x8); }

/* ---- one row */

/* prep: [0] s_x (float) | x8 (cols, at 64) | xs (ng int32) | x' (cols floats) */
static size_t prep_x8_off(void) { return 64; }
static size_t prep_xs_off(const dgqobj *o) { return 64 + align64((size_t)o->cols); }
static size_t prep_xf_off(const dgqobj *o) { return prep_xs_off(o) + align64((size_t)o->ng * 4); }

static size_t dg_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    const dgqobj *o = dg_of(W);
    return prep_xf_off(o) + (size_t)o->cols * 4 + 64;
}

static void dg_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const dgqobj *o = dg_of(W);
    char *p = prep;
    if (ex->act8) {
        int8_t *x8 = (int8_t *)(p + prep_x8_off());
        int32_t *xs = (int32_t *)(p + prep_xs_off(o));
        *(float *)p = quant_act(o, x, x8);
        for (int64_t g = 0; g < o->ng; g++) {
            int32_t s = 0;
            for (int64_t c = g * o->group; c < (g + 1) * o->group; c++) s += x8[c];
            xs[g] = s;
        }
    } else {
        float *xf = (float *)(p + prep_xf_off(o));
        for (int64_t c = 0; c < o->cols; c++) xf[c] = x[c] * o->rs[c];
    }
}

/* sum_c q_c x8_c over one group (n a multiple of 32, codes in 32-blocks) */
static int32_t gdot_ref(const uint8_t *cb, const int8_t *x8, int64_t n)
{
    int32_t s = 0;
    int64_t b = 0;
    for (; b + 32 <= n; b += 32)
        for (int j = 0; j < 16; j++)
            s += (int32_t)(cb[b / 2 + j] & 15u) * x8[b + j] + (int32_t)(cb[b / 2 + j] >> 4) * x8[b + 16 + j];
    for (; b < n; b++) s += (int32_t)code_at(cb, b) * x8[b];
    return s;
}

#ifdef KD_X86
KD_AVX2 static int32_t gdot_avx2(const uint8_t *cb, const int8_t *x8, int64_t n)
{
    const __m128i m4 = _mm_set1_epi8(15);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    int64_t b = 0;
    for (; b + 32 <= n; b += 32) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(cb + b / 2));
        const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4));
        const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(x8 + b))); /* |.| <= 3810 */
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    __m128i h = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_add_epi32(h, _mm_shuffle_epi32(h, 0xb1));
    int32_t s = _mm_cvtsi128_si32(h);
    for (; b < n; b++) s += (int32_t)code_at(cb, b) * x8[b];
    return s;
}
#endif

/* The integer row product sum_c W8[r, c] x8_c (exact). isa WMAT_ISA_*. */
static int64_t row_dot8(const dgqobj *o, int64_t r, const int8_t *x8, const int32_t *xs, int avx2)
{
    const uint8_t *cr = o->codes + r * o->rb;
    int64_t acc = 0;
    for (int64_t g = 0; g < o->ng; g++) {
        const uint8_t *cb = cr + g * (o->group / 2);
        const int8_t *xg = x8 + g * o->group;
        int32_t d;
#ifdef KD_X86
        if (avx2) d = gdot_avx2(cb, xg, o->group);
        else
#endif
            d = gdot_ref(cb, xg, o->group);
        acc += (int64_t)o->k[r * o->ng + g] * ((int64_t)d - (int64_t)zero_at(o, r, g) * xs[g]);
    }
    (void)avx2;
    return acc;
}

int64_t wmat__dgq_row_dot8(const wmat_tensor *W, int64_t r, const int8_t *x8, const int32_t *xs, int isa)
{
    int avx2 = 0;
#ifdef KD_X86
    avx2 = isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2;
#else
    (void)isa;
#endif
    return row_dot8(dg_of(W), r, x8, xs, avx2);
}

static void dg_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    const dgqobj *o = dg_of(W);
    const char *p = prep;
    if (ex->act8) {
        const float sx = *(const float *)p;
        const int8_t *x8 = (const int8_t *)(p + prep_x8_off());
        const int32_t *xs = (const int32_t *)(p + prep_xs_off(o));
        int avx2 = 0;
#ifdef KD_X86
        avx2 = ex->isa >= WMAT_ISA_AVX2 && wmat__isa_best() >= WMAT_ISA_AVX2;
#endif
        for (int64_t r = r0; r < r1; r++) {
            const float d = o->s8f[r] * sx * (float)row_dot8(o, r, x8, xs, avx2);
            y[r] = acc ? y[r] + d : d;
        }
        return;
    }
    const float *xf = (const float *)(p + prep_xf_off(o));
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *cr = o->codes + r * o->rb;
        float a = 0.0f;
        for (int64_t g = 0; g < o->ng; g++) {
            const float z = (float)zero_at(o, r, g);
            float sg[4] = {0, 0, 0, 0};
            for (int64_t c = g * o->group; c < (g + 1) * o->group; c++) sg[c & 3] += ((float)code_at(cr, c) - z) * xf[c];
            a += (float)o->k[r * o->ng + g] * ((sg[0] + sg[1]) + (sg[2] + sg[3]));
        }
        const float d = o->s8f[r] * a;
        y[r] = acc ? y[r] + d : d;
    }
}

/* ---- batched */

#define TILE_BYTES (1u << 20)

static int64_t tile_rows(const dgqobj *o)
{
    int64_t tr = (int64_t)(TILE_BYTES / (size_t)o->cols) / 16 * 16;
    if (tr < 16) tr = 16;
    return tr < o->rows ? tr : o->rows;
}

/* ws: x8 (T, cols) | sx (T) | W8 tile (tr, cols) | C (T, tr) int32 | float tile (tr, cols) */
typedef struct {
    int8_t *x8;
    float *sx;
    int8_t *w8;
    int32_t *C;
    float *wf;
} dg_wsp;

static size_t ws_layout(const dgqobj *o, int T, void *ws, dg_wsp *w)
{
    const int64_t tr = tile_rows(o);
    char *p = ws ? (char *)(((uintptr_t)ws + 63) & ~(uintptr_t)63) : NULL;
    size_t off = 0;
    const size_t a = align64((size_t)T * (size_t)o->cols), b = align64((size_t)T * 4),
                 c = align64((size_t)tr * (size_t)o->cols), d = align64((size_t)T * (size_t)tr * 4);
    if (w) {
        w->x8 = (int8_t *)(p + off);
        w->sx = (float *)(p + (off += a));
        w->w8 = (int8_t *)(p + (off += b));
        w->C = (int32_t *)(p + (off += c));
        w->wf = (float *)(p + (off += d));
    }
    return a + b + c + d + (size_t)tr * (size_t)o->cols * 4 + 64;
}

static size_t dg_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)ex;
    return ws_layout(dg_of(W), T > 0 ? T : 1, NULL, NULL);
}

static void dg_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const dgqobj *o = dg_of(W);
    dg_wsp w;
    ws_layout(o, T, ws, &w);
    const int64_t tr = tile_rows(o), in = o->cols, nt = ex->n_threads > 1 ? ex->n_threads : 1;
    if (!ex->act8) {
        for (int64_t r0 = 0; r0 < o->rows; r0 += tr) {
            const int64_t nr = o->rows - r0 < tr ? o->rows - r0 : tr;
            dg_dequant(W, r0, nr, w.wf);
            wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 1, T, (int)nr, (int)in, 1.0f, X, (int)in, w.wf, (int)in,
                            acc ? 1.0f : 0.0f, Y + r0, (int)o->rows);
        }
        return;
    }
#pragma omp parallel for num_threads(nt) if (nt > 1 && T > 1) schedule(static)
    for (int t = 0; t < T; t++) w.sx[t] = quant_act(o, X + (int64_t)t * in, w.x8 + (int64_t)t * in);
    const wmat_gemm_backend gb = wmat__gemm_int8_native(ex->gemm) ? ex->gemm : WMAT_GEMM_AUTO;
    const int avx2 = use_avx2(ex->isa);
    for (int64_t r0 = 0; r0 < o->rows; r0 += tr) {
        const int64_t nr = o->rows - r0 < tr ? o->rows - r0 : tr;
#pragma omp parallel for num_threads(nt) if (nt > 1 && nr >= 2 * nt) schedule(static)
        for (int64_t i = 0; i < nr; i++) w8_rows_at(o, r0 + i, 1, w.w8 + i * in, avx2);
        wmat__gemm_s8s8s32_on(gb, ex->n_threads, 0, 1, T, (int)nr, (int)in, w.x8, (int)in, w.w8, (int)in, 0, w.C,
                              (int)nr);
        for (int t = 0; t < T; t++) {
            float *y = Y + (int64_t)t * o->rows + r0;
            const int32_t *c = w.C + (int64_t)t * nr;
            const float sx = w.sx[t];
            for (int64_t i = 0; i < nr; i++) {
                const float d = o->s8f[r0 + i] * sx * (float)c[i];
                y[i] = acc ? y[i] + d : d;
            }
        }
    }
}

static void dg_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const dgqobj *o = dg_of(W);
    dg_wsp w;
    ws_layout(o, T, ws, &w);
    const int64_t tr = tile_rows(o), in = o->cols;
    for (int64_t r0 = 0; r0 < o->rows; r0 += tr) {
        const int64_t nr = o->rows - r0 < tr ? o->rows - r0 : tr;
        dg_dequant(W, r0, nr, w.wf);
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)in, (int)nr, 1.0f, dY + r0, (int)o->rows, w.wf, (int)in,
                        r0 == 0 && !acc ? 0.0f : 1.0f, dX, (int)in);
    }
}

/* int8 activations round x (per token, or clip at a static scale) */
static float dg_batch_tol(const wmat_wexec *ex) { return ex->act8 ? 3e-2f : 1e-5f; }

/* ---- inspect */

static uint64_t dg_nbytes(const wmat_tensor *W)
{
    const dgqobj *o = dg_of(W);
    return (uint64_t)(o->rows * o->rb) + (uint64_t)(o->rows * o->zb) + (uint64_t)(o->rows * o->ng) +
           (uint64_t)o->rows * 2u + (o->smooth ? (uint64_t)o->cols * 4u : 0u) + 4u;
}

int64_t wmat__dgq_count_k(const wmat_tensor *W, int kmin, int64_t *n_groups)
{
    if (wmat__wkind_of(W) != &wmat__wkind_dgq) return -1;
    const dgqobj *o = dg_of(W);
    int64_t n = 0;
    for (int64_t i = 0; i < o->rows * o->ng; i++) n += o->k[i] >= kmin;
    if (n_groups) *n_groups = o->rows * o->ng;
    return n;
}

float wmat__dgq_act_scale(const wmat_tensor *W) { return dg_of(W)->act_scale; }

static void dg_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const dgqobj *o = dg_of(W);
    int64_t ng = 0, k17 = wmat__dgq_count_k(W, 17, &ng), nsm = 0;
    if (o->sm)
        for (int64_t c = 0; c < o->cols; c++) nsm += o->sm[c] != 1.0f;
    snprintf(buf, n, "dgq a8w4 g%lld, k>=17 in %.1f%% of groups, %lld inputs smoothed, %s activations",
             (long long)o->group, 100.0 * (double)k17 / (double)(ng ? ng : 1), (long long)nsm,
             o->act_scale > 0 ? "static" : "per-token");
}

static void dg_free(void *obj)
{
    dgqobj *o = obj;
    if (!o) return;
    wmat__free(o->idx);
    wmat__free(o->own);
    wmat__free(o);
}

static int dg_gguf_type(const wmat_tensor *W, wmat_dtype *dt, const char **why)
{
    (void)W, (void)dt;
    *why = "ggml has no int8-group-scale 4-bit type (convert the model to a dense kind first)";
    return 0;
}

/* The in-memory index, checking every stored value (hostile files get an
 * error naming `what`): s8 and s finite and positive, k_g in 1..127,
 * every |q - z| k_g <= 127. */
static int build_index(dgqobj *o, const char *what)
{
    char *buf = wmat__aligned_alloc(align64((size_t)o->rows * 4) + (size_t)o->cols * 4);
    if (!buf) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->idx = buf;
    o->s8f = (float *)buf;
    o->rs = (float *)(buf + align64((size_t)o->rows * 4));
    for (int64_t r = 0; r < o->rows; r++) {
        const float s = wmat_f16_to_f32(o->s8[r]);
        if (!(s > 0.0f && isfinite(s)))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld's scale is not a positive finite number", what, (long long)r);
        o->s8f[r] = s;
    }
    for (int64_t c = 0; c < o->cols; c++) {
        const float s = o->sm ? o->sm[c] : 1.0f;
        if (!(s > 0.0f && s < FLT_MAX && 1.0f / s > 0.0f))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: input %lld's smoothing factor is not a positive finite number",
                                  what, (long long)c);
        o->rs[c] = 1.0f / s;
    }
    for (int64_t r = 0; r < o->rows; r++) {
        const uint8_t *cr = o->codes + r * o->rb;
        if (o->ng % 2 && (o->zero[r * o->zb + o->zb - 1] >> 4))
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld has a zero point past its last group", what, (long long)r);
        for (int64_t g = 0; g < o->ng; g++) {
            const int k = o->k[r * o->ng + g], z = (int)zero_at(o, r, g);
            if (k < 1)
                return wmat_set_error(WMAT_ERR_FORMAT, "%s: row %lld group %lld has int8 scale %d (must be 1..127)", what,
                                      (long long)r, (long long)g, k);
            for (int64_t c = g * o->group; c < (g + 1) * o->group; c++) {
                const int d = (int)code_at(cr, c) - z;
                if ((d < 0 ? -d : d) * k > 127)
                    return wmat_set_error(WMAT_ERR_FORMAT,
                                          "%s: row %lld input %lld: (q - z) k = %d does not fit int8", what, (long long)r,
                                          (long long)c, d * k);
            }
        }
    }
    return WMAT_OK;
}

static int shape_ok(int64_t rows, int64_t cols, int64_t group)
{
    return rows >= 1 && cols >= 1 && rows <= INT32_MAX && cols <= INT32_MAX &&
           (group == cols || (group >= 32 && group % 32 == 0 && group <= cols && cols % group == 0));
}
static int64_t row_bytes(int64_t cols) { return (cols + 31) / 32 * 16; }

int wmat__dgq_create(int64_t rows, int64_t cols, int64_t group, const uint8_t *codes, const uint8_t *zeros,
                     const int8_t *k, const float *s8, const float *smooth, float act_scale, void **obj)
{
    *obj = NULL;
    if (!shape_ok(rows, cols, group))
        return wmat_set_error(WMAT_ERR_INVALID,
                              "dgq: bad shape (%lld x %lld, group %lld): group must be a multiple of 32 dividing cols",
                              (long long)rows, (long long)cols, (long long)group);
    if (!(act_scale >= 0.0f && act_scale < FLT_MAX))
        return wmat_set_error(WMAT_ERR_INVALID, "dgq: activation scale %g is not finite and >= 0", (double)act_scale);
    const int64_t ng = cols / group, zb = (ng + 1) / 2, rb = row_bytes(cols);
    const size_t cb = align64((size_t)(rows * rb)), zbb = align64((size_t)(rows * zb)), kb = align64((size_t)(rows * ng)),
                 sb = align64((size_t)rows * 2), mb = smooth ? (size_t)cols * 4 : 0;
    dgqobj *o = wmat__calloc(1, sizeof *o);
    char *buf = wmat__aligned_alloc(cb + zbb + kb + sb + mb + 64);
    if (!o || !buf) {
        wmat__free(o);
        wmat__free(buf);
        return wmat_set_error(WMAT_ERR_NOMEM, "dgq: out of memory for a (%lld x %lld) matrix", (long long)rows,
                              (long long)cols);
    }
    uint8_t *pc = (uint8_t *)buf, *pz = (uint8_t *)(buf + cb);
    int8_t *pk = (int8_t *)(buf + cb + zbb);
    uint16_t *ps = (uint16_t *)(buf + cb + zbb + kb);
    float *pm = smooth ? (float *)(buf + cb + zbb + kb + sb) : NULL;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            const uint8_t q = codes[r * cols + c] & 15u;
            pc[r * rb + (c >> 5) * 16 + (c & 15)] |= (uint8_t)((c & 16) ? q << 4 : q);
        }
        for (int64_t g = 0; g < ng; g++) {
            const uint8_t z = zeros[r * ng + g] & 15u;
            pz[r * zb + g / 2] |= (uint8_t)((g & 1) ? z << 4 : z);
            pk[r * ng + g] = k[r * ng + g];
        }
        ps[r] = wmat_f32_to_f16(s8[r]);
    }
    if (pm) memcpy(pm, smooth, (size_t)cols * 4);
    o->obj.kind = &wmat__wkind_dgq;
    o->rows = rows, o->cols = cols, o->group = group, o->ng = ng, o->zb = zb, o->rb = rb;
    o->smooth = smooth != NULL, o->act_scale = act_scale;
    o->codes = pc, o->zero = pz, o->k = pk, o->s8 = ps, o->sm = pm, o->own = buf;
    int rc = build_index(o, "dgq");
    if (rc) {
        dg_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

/* The data-free instance: the method's fine grid (min-max, no search) and
 * coarse scale s8 = max|W_row| / 127, per-token activations, no smoothing;
 * group 64 where it divides cols, else 32 (cols a multiple of 32). */
static int dg_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int64_t group = cols % 64 == 0 ? 64 : cols % 32 == 0 ? 32 : cols;
    if (!shape_ok(rows, cols, group))
        return wmat_set_error(WMAT_ERR_INVALID, "dgq: bad shape (%lld x %lld)", (long long)rows, (long long)cols);
    const int64_t ng = cols / group;
    uint8_t *q = wmat__malloc((size_t)(rows * cols)), *z = wmat__malloc((size_t)(rows * ng));
    int8_t *k = wmat__malloc((size_t)(rows * ng));
    float *s8 = wmat__malloc((size_t)rows * 4);
    int rc = WMAT_OK;
    if (!q || !z || !k || !s8) {
        rc = wmat_set_error(WMAT_ERR_NOMEM, "dgq: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        const float *w = W + r * cols;
        float am = 0.0f;
        for (int64_t c = 0; c < cols; c++) am = fabsf(w[c]) > am ? fabsf(w[c]) : am;
        const float s = wmat_f16_to_f32(wmat_f32_to_f16(am > 0.0f ? am / 127.0f : 1.0f));
        s8[r] = s > 0.0f ? s : 1.0f;
        for (int64_t g = 0; g < ng; g++) {
            const float *x = w + g * group;
            float mn = 0.0f, mx = 0.0f;
            for (int64_t c = 0; c < group; c++) mn = x[c] < mn ? x[c] : mn, mx = x[c] > mx ? x[c] : mx;
            const float sg = mx > mn ? (mx - mn) / 15.0f : s8[r];
            float kf = rintf(sg / s8[r]);
            kf = kf < 1.0f ? 1.0f : kf > 127.0f ? 127.0f : kf;
            const int kk = (int)kf, lim = 127 / kk;
            float zf = rintf(-mn / sg);
            zf = zf < 0.0f ? 0.0f : zf > 15.0f ? 15.0f : zf;
            const int zz = (int)zf, lo = zz - lim < 0 ? 0 : zz - lim, hi = zz + lim > 15 ? 15 : zz + lim;
            const float st = (float)kk * s8[r];
            for (int64_t c = 0; c < group; c++) {
                float v = rintf(x[c] / st) + (float)zz;
                v = v < (float)lo ? (float)lo : v > (float)hi ? (float)hi : v;
                q[r * cols + g * group + c] = (uint8_t)v;
            }
            k[r * ng + g] = (int8_t)kk, z[r * ng + g] = (uint8_t)zz;
        }
    }
    void *obj;
    if (!(rc = wmat__dgq_create(rows, cols, group, q, z, k, s8, NULL, 0.0f, &obj))) wmat__tensor_own_obj(out, rows, cols, obj);
done:
    wmat__free(q), wmat__free(z), wmat__free(k), wmat__free(s8);
    return rc;
}

/* ---- files */

static int dg_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const dgqobj *o = dg_of(W);
    if (!cJSON_AddNumberToObject(desc, "group", (double)o->group) ||
        !cJSON_AddNumberToObject(desc, "smooth", (double)o->smooth) ||
        !cJSON_AddNumberToObject(desc, "act_scale", (double)o->act_scale))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".dgq_codes", WMAT_U8, 2, {o->rows, o->rb}, o->codes};
    parts[1] = (wmat_wpart){".dgq_zero", WMAT_U8, 2, {o->rows, o->zb}, o->zero};
    parts[2] = (wmat_wpart){".dgq_k", WMAT_U8, 2, {o->rows, o->ng}, o->k};
    parts[3] = (wmat_wpart){".dgq_s8", WMAT_F16, 1, {o->rows, 0}, o->s8};
    *n_parts = 4;
    if (o->smooth) parts[(*n_parts)++] = (wmat_wpart){".dgq_smooth", WMAT_F32, 1, {o->cols, 0}, o->sm};
    return WMAT_OK;
}

static int jnum(const cJSON *o, const char *key, double lo, double hi, int integer, double *out, const char *what)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || (integer && d != floor(d)))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be %s in [%g, %g]", what, key,
                              integer ? "an integer" : "a number", lo, hi);
    *out = d;
    return WMAT_OK;
}

static int dg_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    double g = 0, sm = 0, as = 0;
    int rc = jnum(desc, "group", 1, (double)INT32_MAX, 1, &g, what);
    if (!rc) rc = jnum(desc, "smooth", 0, 1, 1, &sm, what);
    if (!rc) rc = jnum(desc, "act_scale", 0, FLT_MAX, 0, &as, what);
    if (rc) return rc;
    const int64_t group = (int64_t)g;
    if (!shape_ok(rows, cols, group))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: bad shape (%lld x %lld, group %lld)", what, (long long)rows,
                              (long long)cols, (long long)group);
    const int64_t ng = cols / group, zb = (ng + 1) / 2, rb = row_bytes(cols);
    const void *codes, *zero, *k, *s8, *smv = NULL;
    rc = get(user, ".dgq_codes", WMAT_U8, 2, rows, rb, &codes);
    if (!rc) rc = get(user, ".dgq_zero", WMAT_U8, 2, rows, zb, &zero);
    if (!rc) rc = get(user, ".dgq_k", WMAT_U8, 2, rows, ng, &k);
    if (!rc) rc = get(user, ".dgq_s8", WMAT_F16, 1, rows, 0, &s8);
    if (!rc && sm > 0) rc = get(user, ".dgq_smooth", WMAT_F32, 1, cols, 0, &smv);
    if (rc) return rc;
    if ((uintptr_t)s8 % 2 || (uintptr_t)smv % 4)
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: scales are not aligned to their element size", what);
    dgqobj *o = wmat__calloc(1, sizeof *o);
    if (!o) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    o->obj.kind = &wmat__wkind_dgq;
    o->rows = rows, o->cols = cols, o->group = group, o->ng = ng, o->zb = zb, o->rb = rb;
    o->smooth = sm > 0, o->act_scale = (float)as;
    o->codes = codes, o->zero = zero, o->k = k, o->s8 = s8, o->sm = smv;
    if ((rc = build_index(o, what))) {
        dg_free(o);
        return rc;
    }
    *obj = o;
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_dgq = {
    .name = "dgq",
    .summary = "DGQ A8W4: 4-bit codes, int8 group scales and an fp16 row scale; int8 activations on an int8 GEMM",
    .dtype = WMAT_OBJ,
    .row_align = 1,
    .ws_bytes = dg_ws,
    .forward = dg_forward,
    .backward = dg_backward,
    .prep_bytes = dg_prep_bytes,
    .prepare = dg_prepare,
    .rows = dg_rows,
    .dequant_rows = dg_dequant,
    .nbytes = dg_nbytes,
    .describe = dg_describe,
    .from_f32 = dg_from_f32,
    .row_tol = 3e-2f, /* int8 activations (per token for from_f32) */
    .approx_tol = 0.25f,
    .batch_tol = dg_batch_tol,
    .free = dg_free,
    .save = dg_save,
    .load = dg_load,
    .gguf_type = dg_gguf_type,
};
