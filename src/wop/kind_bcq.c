/* Binary-coded weights (BCQ, as ShiftAddLLM and LUT-GEMM store them):
 *
 *   W[r, c] = sum_{k < q} alpha[r, G(c), k] * b_k[r, c],   b_k = +-1,
 *
 * q = 1..4 bit-planes, one fp16 alpha per (row, group of `group` inputs,
 * plane); a group is a multiple of 8 dividing cols, or the whole row (any
 * width: stories260K's down_proj is 172 wide). Storage: the planes packed 1
 * bit per weight, (rows, q, ceil(cols/8)) bytes (bit t of byte j of plane k
 * is column 8j + t; 1 = +1; bits past cols are 0), and the alphas
 * (rows, cols/group, q) fp16: q + 16 q / group bits per weight.
 *
 * Products never expand the planes: for each block of 8 inputs the 256
 * signed sums  T[j][s] = sum_t (s>>t & 1 ? x[8j+t] : -x[8j+t])  are built
 * once per input vector (the prepare step; a batched forward builds one
 * table per token), and then each plane byte of a row is one table lookup:
 *   y[r] = sum_G sum_k alpha[r, G, k] * sum_{j in G} T[j][byte_k(r, j)].
 * A table costs 1 KB per 8 inputs, so rows are run in tiles of 256 over
 * slices of 8 blocks (8 KB of table, L1-resident while the tile's rows read
 * it; tiles of 16 left the 512 KB of tables of a 4096-wide row to stream from
 * L3 for every 16 rows: 1.7x slower). The kernels read an fp32 copy of the
 * alphas. The AVX2 path builds the tables 8 lanes at a time and prefetches
 * the next slice; the plain C twin does the same sums in the same order.
 * The lookups themselves are scalar loads (about 1.4 cycles each on Zen 2;
 * AVX2's gathers are no faster there): see docs/BENCHMARKS.md for what that
 * costs against the 4-bit SIMD kernel. */
#include "wop.h"

#include "linalg/linalg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BQ_X86 1
#define BQ_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

typedef struct {
    wmat_wobj obj;
    int64_t rows, cols;
    int q;             /* bit-planes, 1..4 */
    int group;         /* inputs per alpha group: a multiple of 8 dividing cols */
    int64_t ngroups;   /* cols / group */
    int64_t nb;        /* 8-input blocks, ceil(cols / 8) (a partial last block reads x as 0 past cols) */
    int64_t gb;        /* blocks per group */
    int64_t row_bytes; /* q * nb */
    const uint8_t *bits;   /* (rows, q, nb) */
    const uint16_t *alpha; /* (rows, ngroups, q) fp16, as stored */
    float *alpha_f;        /* the same as fp32 (owned): the kernels read one per row, group and plane */
    void *own;
} bcq;

#define BQ_TILE 256 /* rows per tile: a table slice is read by this many rows while it is in L1 */
#define BQ_SLICE 8  /* 8-input blocks per table slice (8 KB) */
#define BQ_BWD_FLOATS ((size_t)1 << 20)

static const bcq *bq_of(const wmat_tensor *W) { return (const bcq *)W->data; }
static size_t al64(size_t n) { return (n + 63) & ~(size_t)63; }
static size_t lut_floats(const bcq *b) { return (size_t)b->nb * 256; }

/* fp16 -> fp32 without a call: the kernels convert an alpha per group. */
static inline float h2f(uint16_t h)
{
    const uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    uint32_t u;
    if (e == 0) {
        if (!m) u = s;
        else { /* subnormal: m * 2^-24 */
            float f = (float)m * 5.9604644775390625e-8f;
            memcpy(&u, &f, 4);
            u |= s;
        }
    } else if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- tables */

static void lut_build_c(const float *x, int64_t cols, float *T)
{
    float pad[8] = {0};
    for (int64_t j = 0; j < (cols + 7) / 8; j++) {
        float *t = T + j * 256;
        const float *xj = x + j * 8;
        if (j * 8 + 8 > cols) {
            for (int64_t i = 0; i < 8; i++) pad[i] = j * 8 + i < cols ? xj[i] : 0.0f;
            xj = pad;
        }
        t[0] = -xj[0];
        t[1] = xj[0];
        for (int b = 1; b < 8; b++) {
            const int h = 1 << b;
            for (int i = 0; i < h; i++) {
                t[i + h] = t[i] + xj[b];
                t[i] = t[i] - xj[b];
            }
        }
    }
}

#ifdef BQ_X86
BQ_AVX2 static void lut_build_avx2(const float *x, int64_t cols, float *T)
{
    float pad[8] = {0};
    for (int64_t j = 0; j < (cols + 7) / 8; j++) {
        float *t = T + j * 256;
        const float *xj = x + j * 8;
        if (j * 8 + 8 > cols) {
            for (int64_t i = 0; i < 8; i++) pad[i] = j * 8 + i < cols ? xj[i] : 0.0f;
            xj = pad;
        }
        /* entries 0..7 (bits 0..2) scalar, then each bit doubles the table, 8 lanes at a time */
        t[0] = -xj[0];
        t[1] = xj[0];
        for (int b = 1; b < 3; b++) {
            const int h = 1 << b;
            for (int i = 0; i < h; i++) {
                t[i + h] = t[i] + xj[b];
                t[i] = t[i] - xj[b];
            }
        }
        for (int b = 3; b < 8; b++) {
            const int h = 1 << b;
            const __m256 v = _mm256_set1_ps(xj[b]);
            for (int i = 0; i < h; i += 8) {
                const __m256 a = _mm256_loadu_ps(t + i);
                _mm256_storeu_ps(t + i + h, _mm256_add_ps(a, v));
                _mm256_storeu_ps(t + i, _mm256_sub_ps(a, v));
            }
        }
    }
}
#endif

static void lut_build(const float *x, int64_t cols, float *T, int isa)
{
#ifdef BQ_X86
    if (isa >= WMAT_ISA_AVX2) {
        lut_build_avx2(x, cols, T);
        return;
    }
#endif
    (void)isa;
    lut_build_c(x, cols, T);
}

/* ---- row kernels: y[r] for r in [r0, r1) from the tables T of one input.
 * Per row the order of operations is fixed (slices of a group in order,
 * planes in order, then alpha_k * part_k for k in order), so a row's value
 * does not depend on the tile or thread it ran in. */

/* sum_{j < nb} T[j * 256 + p[j]], nb <= 8 */
static inline float slice_sum(const float *T, const uint8_t *p, int nb)
{
    if (nb == 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        float s0 = T[w & 255], s1 = T[256 + (w >> 8 & 255)], s2 = T[512 + (w >> 16 & 255)],
              s3 = T[768 + (w >> 24 & 255)];
        s0 += T[1024 + (w >> 32 & 255)];
        s1 += T[1280 + (w >> 40 & 255)];
        s2 += T[1536 + (w >> 48 & 255)];
        s3 += T[1792 + (w >> 56)];
        return (s0 + s1) + (s2 + s3);
    }
    float s = 0.0f;
    for (int j = 0; j < nb; j++) s += T[j * 256 + p[j]];
    return s;
}

static void rows_c(const bcq *b, const float *T, float *y, int64_t r0, int64_t r1, int acc)
{
    const int q = b->q;
    const int64_t nb = b->nb, gb = b->gb;
    for (int64_t t0 = r0; t0 < r1; t0 += BQ_TILE) {
        const int64_t t1 = t0 + BQ_TILE < r1 ? t0 + BQ_TILE : r1;
        float yt[BQ_TILE] = {0}, part[BQ_TILE][4];
        for (int64_t G = 0; G < b->ngroups; G++) {
            memset(part, 0, sizeof part);
            for (int64_t s0 = 0; s0 < gb; s0 += BQ_SLICE) {
                const int ns = (int)(gb - s0 < BQ_SLICE ? gb - s0 : BQ_SLICE);
                const int64_t j0 = G * gb + s0;
                const float *Ts = T + j0 * 256;
                for (int64_t r = t0; r < t1; r++) {
                    const uint8_t *row = b->bits + r * b->row_bytes + j0;
                    for (int k = 0; k < q; k++) part[r - t0][k] += slice_sum(Ts, row + k * nb, ns);
                }
            }
            for (int64_t r = t0; r < t1; r++) {
                const float *al = b->alpha_f + (r * b->ngroups + G) * q;
                for (int k = 0; k < q; k++) yt[r - t0] += al[k] * part[r - t0][k];
            }
        }
        for (int64_t r = t0; r < t1; r++) y[r] = acc ? y[r] + yt[r - t0] : yt[r - t0];
    }
}

#ifdef BQ_X86
/* The same sums; alphas through F16C, the tile's alpha_k part_k as vectors. */
BQ_AVX2 static void rows_avx2(const bcq *b, const float *T, float *y, int64_t r0, int64_t r1, int acc)
{
    const int q = b->q;
    const int64_t nb = b->nb, gb = b->gb;
    for (int64_t t0 = r0; t0 < r1; t0 += BQ_TILE) {
        const int64_t t1 = t0 + BQ_TILE < r1 ? t0 + BQ_TILE : r1;
        float yt[BQ_TILE] = {0}, part[BQ_TILE][4];
        for (int64_t G = 0; G < b->ngroups; G++) {
            memset(part, 0, sizeof part);
            for (int64_t s0 = 0; s0 < gb; s0 += BQ_SLICE) {
                const int ns = (int)(gb - s0 < BQ_SLICE ? gb - s0 : BQ_SLICE);
                const int64_t j0 = G * gb + s0;
                const float *Ts = T + j0 * 256;
                if (s0 + BQ_SLICE < gb) _mm_prefetch((const char *)(Ts + BQ_SLICE * 256), _MM_HINT_T0);
                for (int64_t r = t0; r < t1; r++) {
                    const uint8_t *row = b->bits + r * b->row_bytes + j0;
                    for (int k = 0; k < q; k++) part[r - t0][k] += slice_sum(Ts, row + k * nb, ns);
                }
            }
            for (int64_t r = t0; r < t1; r++) {
                const float *al = b->alpha_f + (r * b->ngroups + G) * q;
                for (int k = 0; k < q; k++) yt[r - t0] += al[k] * part[r - t0][k];
            }
        }
        for (int64_t r = t0; r < t1; r++) y[r] = acc ? y[r] + yt[r - t0] : yt[r - t0];
    }
}
#endif

static void run_rows(const bcq *b, const float *T, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
#ifdef BQ_X86
    if (isa >= WMAT_ISA_AVX2) {
        rows_avx2(b, T, y, r0, r1, acc);
        return;
    }
#endif
    (void)isa;
    rows_c(b, T, y, r0, r1, acc);
}

void wmat__bcq_lut(const wmat_tensor *W, const float *x, float *T, int isa) { lut_build(x, bq_of(W)->cols, T, isa); }

void wmat__bcq_rows_lut(const wmat_tensor *W, const float *T, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
    run_rows(bq_of(W), T, y, r0, r1, acc, isa);
}

/* ---- the table of the kind */

static int64_t bwd_tile(const bcq *b)
{
    int64_t t = (int64_t)(BQ_BWD_FLOATS / (size_t)b->cols);
    if (t < 16) t = 16;
    return t > b->rows ? b->rows : t;
}

/* forward: one table per thread; backward: a tile of dequantized rows */
static size_t bq_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    const bcq *b = bq_of(W);
    const size_t nt = (size_t)(ex->n_threads > 1 ? ex->n_threads : 1);
    const size_t fwd = nt * al64(lut_floats(b) * sizeof(float)) + 64;
    const size_t bwd = (size_t)bwd_tile(b) * (size_t)b->cols * sizeof(float);
    (void)T;
    return fwd > bwd ? fwd : bwd;
}

static float *ws_slab(void *ws, size_t i, size_t slab) { return (float *)((((uintptr_t)ws + 63) & ~(uintptr_t)63) + i * slab); }

/* Y (T, rows) = X W^T: with at least as many tokens as threads each
 * thread takes whole tokens (its own table); otherwise token by token, the
 * rows split over the threads. */
static void bq_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const bcq *b = bq_of(W);
    const int nt = ex->n_threads > 1 ? ex->n_threads : 1;
    const size_t slab = al64(lut_floats(b) * sizeof(float));
    if (T >= nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int t = 0; t < T; t++) {
            int me = 0;
#ifdef _OPENMP
            me = omp_get_thread_num();
#endif
            float *Tl = ws_slab(ws, (size_t)me, slab);
            lut_build(X + (size_t)t * (size_t)b->cols, b->cols, Tl, ex->isa);
            run_rows(b, Tl, Y + (size_t)t * (size_t)b->rows, 0, b->rows, acc, ex->isa);
        }
        return;
    }
    float *Tl = ws_slab(ws, 0, slab);
    for (int t = 0; t < T; t++) {
        lut_build(X + (size_t)t * (size_t)b->cols, b->cols, Tl, ex->isa);
        float *y = Y + (size_t)t * (size_t)b->rows;
        const int64_t per = (b->rows + nt - 1) / nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
        for (int th = 0; th < nt; th++) {
            const int64_t r0 = th * per, r1 = r0 + per < b->rows ? r0 + per : b->rows;
            if (r0 < r1) run_rows(b, Tl, y, r0, r1, acc, ex->isa);
        }
    }
}

static void bq_dequant(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const bcq *b = bq_of(W);
    const int64_t nb = b->nb;
    for (int64_t i = 0; i < nr; i++) {
        const int64_t r = r0 + i;
        const uint8_t *row = b->bits + r * b->row_bytes;
        float *o = out + i * b->cols;
        for (int64_t c = 0; c < b->cols; c++) {
            const uint16_t *al = b->alpha + (r * b->ngroups + c / b->group) * b->q;
            float v = 0.0f;
            for (int k = 0; k < b->q; k++) {
                const float a = h2f(al[k]);
                v += (row[k * nb + c / 8] >> (c % 8) & 1) ? a : -a;
            }
            o[c] = v;
        }
    }
}

static void bq_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const bcq *b = bq_of(W);
    const int64_t tile = bwd_tile(b);
    float *Wt = ws;
    for (int64_t r0 = 0; r0 < b->rows; r0 += tile) {
        const int64_t nr = b->rows - r0 < tile ? b->rows - r0 : tile;
        bq_dequant(W, r0, nr, Wt);
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)b->cols, (int)nr, 1.0f, dY + r0, (int)b->rows, Wt,
                        (int)b->cols, (acc || r0 > 0) ? 1.0f : 0.0f, dX, (int)b->cols);
    }
}

static size_t bq_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)ex;
    return lut_floats(bq_of(W)) * sizeof(float);
}

static void bq_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    lut_build(x, bq_of(W)->cols, prep, ex->isa);
}

static void bq_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    run_rows(bq_of(W), prep, y, r0, r1, acc, ex->isa);
}

static uint64_t bq_nbytes(const wmat_tensor *W)
{
    const bcq *b = bq_of(W);
    return (uint64_t)(b->rows * b->row_bytes) + (uint64_t)(b->rows * b->ngroups * b->q) * 2;
}

static void bq_describe(const wmat_tensor *W, char *buf, size_t n)
{
    const bcq *b = bq_of(W);
    if (b->group == b->cols) snprintf(buf, n, "bcq %d planes, alphas per row", b->q);
    else snprintf(buf, n, "bcq %d planes, alphas per %d inputs", b->q, b->group);
}

static void bq_free(void *obj)
{
    bcq *b = obj;
    if (!b) return;
    wmat__free(b->alpha_f);
    wmat__free(b->own);
    wmat__free(b);
}

static int check_shape(int64_t rows, int64_t cols, int64_t q, int64_t group, const char *what, int status)
{
    if (rows < 1 || cols < 1 || rows > INT32_MAX || cols > INT32_MAX)
        return wmat_set_error(status, "%s: a (%lld x %lld) matrix cannot be binary-coded", what, (long long)rows,
                              (long long)cols);
    if (q < 1 || q > 4) return wmat_set_error(status, "%s: %lld bit-planes (1..4 allowed)", what, (long long)q);
    if (group != cols && (group < 8 || group % 8 || cols % group))
        return wmat_set_error(status, "%s: group %lld must be the whole row or a multiple of 8 that divides %lld inputs",
                              what, (long long)group, (long long)cols);
    return WMAT_OK;
}

/* The kernels' fp32 copy of the stored alphas. */
static int alpha_copy(bcq *b)
{
    const size_t n = (size_t)(b->rows * b->ngroups * b->q);
    b->alpha_f = wmat__malloc(n * sizeof(float));
    if (!b->alpha_f) return WMAT_ERR_NOMEM;
    for (size_t i = 0; i < n; i++) b->alpha_f[i] = h2f(b->alpha[i]);
    return WMAT_OK;
}

static bcq *bq_new(int64_t rows, int64_t cols, int q, int group)
{
    extern const wmat_wkind wmat__wkind_bcq;
    bcq *b = wmat__calloc(1, sizeof *b);
    if (!b) return NULL;
    b->obj.kind = &wmat__wkind_bcq;
    b->rows = rows, b->cols = cols, b->q = q, b->group = group;
    b->ngroups = cols / group;
    b->nb = (cols + 7) / 8;
    b->gb = group == cols ? b->nb : group / 8;
    b->row_bytes = (int64_t)q * b->nb;
    return b;
}

int wmat__bcq_create(int64_t rows, int64_t cols, int q, int group, const uint8_t *codes, const float *alpha, void **out)
{
    *out = NULL;
    int rc = check_shape(rows, cols, q, group, "bcq", WMAT_ERR_INVALID);
    if (rc) return rc;
    bcq *b = bq_new(rows, cols, q, group);
    const size_t nbits = (size_t)(rows * b->row_bytes), nal = (size_t)(rows * b->ngroups * q);
    uint8_t *buf = b ? wmat__aligned_alloc(al64(nbits) + nal * 2) : NULL;
    if (!b || !buf) {
        wmat__free(b);
        return wmat_set_error(WMAT_ERR_NOMEM, "bcq: out of memory for a (%lld x %lld) matrix", (long long)rows,
                              (long long)cols);
    }
    uint16_t *al = (uint16_t *)(buf + al64(nbits));
    const int64_t nb = b->nb;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            const uint8_t code = codes[r * cols + c];
            for (int k = 0; k < q; k++)
                if (code >> k & 1) buf[r * b->row_bytes + k * nb + c / 8] |= (uint8_t)(1u << (c % 8));
        }
    for (size_t i = 0; i < nal; i++) al[i] = wmat_f32_to_f16(alpha[i]);
    b->bits = buf, b->alpha = al, b->own = buf;
    if (alpha_copy(b)) {
        bq_free(b);
        return wmat_set_error(WMAT_ERR_NOMEM, "bcq: out of memory");
    }
    *out = b;
    return WMAT_OK;
}

void wmat__bcq_shape(const wmat_tensor *W, int *q, int *group)
{
    *q = bq_of(W)->q;
    *group = bq_of(W)->group;
}

/* ---- fitting one group (shared with src/quant/bcq.c) */

float wmat__bcq_level(const float *alpha, int q, unsigned code)
{
    float v = 0.0f; /* the order of bq_dequant */
    for (int k = 0; k < q; k++) v += (code >> k & 1) ? alpha[k] : -alpha[k];
    return v;
}

uint8_t wmat__bcq_nearest(float w, const float *alpha, int q)
{
    unsigned best = 0;
    float be = INFINITY;
    for (unsigned c = 0; c < (1u << q); c++) {
        const float e = fabsf(w - wmat__bcq_level(alpha, q, c));
        if (e < be) be = e, best = c;
    }
    return (uint8_t)best;
}

float wmat__bcq_apot(float a)
{
    /* a ~ +-2^e1 +- 2^e2 +- 2^e3, each term the power of two nearest (in log2) the remainder */
    float v = 0.0f, res = a;
    for (int t = 0; t < 3 && res != 0.0f && isfinite(res); t++) {
        const float p = ldexpf(1.0f, (int)rintf(log2f(fabsf(res))));
        v += res < 0 ? -p : p;
        res = a - v;
    }
    return v;
}

static double fit_err(const float *w, const float *wt, int64_t n, const float *alpha, int q, const uint8_t *codes)
{
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)w[i] - wmat__bcq_level(alpha, q, codes[i]);
        e += (wt ? wt[i] : 1.0) * d * d;
    }
    return e;
}

/* alpha = argmin sum_i wt_i (w_i - sum_k alpha_k b_ik)^2 for the codes'
 * signs: the q x q normal equations by Cholesky in double. 0 when singular. */
static int ls_alpha(const float *w, const float *wt, int64_t n, int q, const uint8_t *codes, float *alpha)
{
    double A[16] = {0}, y[4] = {0};
    for (int64_t i = 0; i < n; i++) {
        const double wi = wt ? wt[i] : 1.0;
        double s[4];
        for (int k = 0; k < q; k++) s[k] = (codes[i] >> k & 1) ? 1.0 : -1.0;
        for (int a = 0; a < q; a++) {
            y[a] += wi * s[a] * w[i];
            for (int c = 0; c <= a; c++) A[a * 4 + c] += wi * s[a] * s[c];
        }
    }
    double L[16] = {0};
    for (int a = 0; a < q; a++)
        for (int c = 0; c <= a; c++) {
            double s = A[a * 4 + c];
            for (int k = 0; k < c; k++) s -= L[a * 4 + k] * L[c * 4 + k];
            if (a == c) {
                if (!(s > 1e-12 * (A[0] > 0 ? A[0] : 1.0))) return 0;
                L[a * 4 + a] = sqrt(s);
            } else L[a * 4 + c] = s / L[c * 4 + c];
        }
    double z[4], x[4];
    for (int a = 0; a < q; a++) {
        double s = y[a];
        for (int k = 0; k < a; k++) s -= L[a * 4 + k] * z[k];
        z[a] = s / L[a * 4 + a];
    }
    for (int a = q - 1; a >= 0; a--) {
        double s = z[a];
        for (int k = a + 1; k < q; k++) s -= L[k * 4 + a] * x[k];
        x[a] = s / L[a * 4 + a];
    }
    for (int k = 0; k < q; k++)
        if (!isfinite(x[k])) return 0;
    for (int k = 0; k < q; k++) alpha[k] = (float)x[k];
    return 1;
}

/* alphas as stored (fp16, optionally additive powers of two first) */
static void round_alpha(float *alpha, int q, int apot)
{
    for (int k = 0; k < q; k++) {
        float a = apot ? wmat__bcq_apot(alpha[k]) : alpha[k];
        alpha[k] = wmat_f16_to_f32(wmat_f32_to_f16(a));
    }
}

double wmat__bcq_fit(const float *w, const float *wt, int64_t n, int q, int rounds, int apot, float *alpha,
                     uint8_t *codes, uint8_t *scratch)
{
    /* greedy: r = w; b_k = sign(r) (sign 0 = +1), alpha_k = weighted mean |r|, r -= alpha_k b_k */
    double wsum = 0.0;
    for (int64_t i = 0; i < n; i++) wsum += wt ? wt[i] : 1.0;
    if (!(wsum > 0)) wt = NULL, wsum = (double)n;
    for (int64_t i = 0; i < n; i++) codes[i] = 0;
    for (int k = 0; k < q; k++) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) {
            const float r = w[i] - (k ? wmat__bcq_level(alpha, k, codes[i]) : 0.0f);
            if (r >= 0) codes[i] |= (uint8_t)(1u << k);
            s += (wt ? wt[i] : 1.0) * fabsf(r);
        }
        alpha[k] = (float)(s / wsum);
    }
    round_alpha(alpha, q, apot);
    for (int64_t i = 0; i < n; i++) codes[i] = wmat__bcq_nearest(w[i], alpha, q);
    double best = fit_err(w, wt, n, alpha, q, codes);
    /* alternate: alphas by least squares for the signs, then each code the
     * nearest level for the alphas; kept only while the error goes down
     * (fp16 or power-of-two rounding can undo a step) */
    for (int it = 0; it < rounds; it++) {
        float a2[4];
        if (!ls_alpha(w, wt, n, q, codes, a2)) break;
        round_alpha(a2, q, apot);
        for (int64_t i = 0; i < n; i++) scratch[i] = wmat__bcq_nearest(w[i], a2, q);
        const double e = fit_err(w, wt, n, a2, q, scratch);
        if (!(e < best)) break;
        best = e;
        memcpy(alpha, a2, (size_t)q * sizeof(float));
        memcpy(codes, scratch, (size_t)n);
    }
    return best;
}

/* 4 planes, groups of 32 inputs (8 when 32 does not divide the width, the
 * row when 8 does not), unweighted alternating fit: a default instance
 * within the suite's 20%. */
static int bq_from_f32(const float *W, int64_t rows, int64_t cols, wmat_tensor *out)
{
    const int q = 4, group = cols % 32 == 0 ? 32 : cols % 8 == 0 ? 8 : (int)cols;
    int rc = check_shape(rows, cols, q, group, "bcq", WMAT_ERR_UNSUPPORTED);
    if (rc) return rc;
    const int64_t ng = cols / group;
    uint8_t *codes = wmat__malloc((size_t)(rows * cols) + (size_t)group);
    float *alpha = wmat__malloc((size_t)(rows * ng * q) * sizeof(float));
    void *obj = NULL;
    if (!codes || !alpha) rc = wmat_set_error(WMAT_ERR_NOMEM, "bcq: out of memory");
    for (int64_t r = 0; !rc && r < rows; r++)
        for (int64_t G = 0; G < ng; G++)
            wmat__bcq_fit(W + r * cols + G * group, NULL, group, q, 20, 0, alpha + (r * ng + G) * q,
                          codes + r * cols + G * group, codes + rows * cols);
    if (!rc) rc = wmat__bcq_create(rows, cols, q, group, codes, alpha, &obj);
    wmat__free(codes);
    wmat__free(alpha);
    if (rc) return rc;
    wmat__tensor_own_obj(out, rows, cols, obj);
    return WMAT_OK;
}

/* ---- files: "planes" and "group" in the description, two parts */

static int bq_save(const wmat_tensor *W, cJSON *desc, wmat_wpart *parts, int *n_parts, const char *what)
{
    const bcq *b = bq_of(W);
    if (!cJSON_AddNumberToObject(desc, "planes", b->q) || !cJSON_AddNumberToObject(desc, "group", b->group))
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    parts[0] = (wmat_wpart){".bcq_bits", WMAT_U8, 2, {b->rows, b->row_bytes}, b->bits};
    parts[1] = (wmat_wpart){".bcq_alpha", WMAT_F16, 2, {b->rows, b->ngroups * b->q}, b->alpha};
    *n_parts = 2;
    return WMAT_OK;
}

static int int_field(const cJSON *desc, const char *key, double lo, double hi, const char *what, int64_t *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(desc, key);
    const double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d))
        return wmat_set_error(WMAT_ERR_FORMAT, "%s: \"%s\" must be an integer in %g..%g", what, key, lo, hi);
    *out = (int64_t)d;
    return WMAT_OK;
}

static int bq_load(const cJSON *desc, int64_t rows, int64_t cols, wmat_wpart_get_fn get, void *user, const char *what,
                   void **obj)
{
    *obj = NULL;
    int64_t q = 0, group = 0;
    int rc = int_field(desc, "planes", 1, 4, what, &q);
    if (!rc) rc = int_field(desc, "group", 1, (double)cols, what, &group);
    if (!rc) rc = check_shape(rows, cols, q, group, what, WMAT_ERR_FORMAT);
    if (rc) return rc;
    const int64_t ng = cols / group;
    const void *bits = NULL, *al = NULL;
    rc = get(user, ".bcq_bits", WMAT_U8, 2, rows, q * ((cols + 7) / 8), &bits);
    if (!rc) rc = get(user, ".bcq_alpha", WMAT_F16, 2, rows, ng * q, &al);
    if (rc) return rc;
    if ((uintptr_t)al % 2) return wmat_set_error(WMAT_ERR_FORMAT, "%s: alphas are not aligned to 2 bytes", what);
    /* a non-finite alpha would turn every product of its row into NaN */
    const uint16_t *a = al;
    for (int64_t i = 0; i < rows * ng * q; i++)
        if ((a[i] & 0x7c00) == 0x7c00)
            return wmat_set_error(WMAT_ERR_FORMAT, "%s: alpha %lld is not finite", what, (long long)i);
    bcq *b = bq_new(rows, cols, (int)q, (int)group);
    if (!b) return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    b->bits = bits, b->alpha = al;
    if (alpha_copy(b)) {
        bq_free(b);
        return wmat_set_error(WMAT_ERR_NOMEM, "%s: out of memory", what);
    }
    *obj = b;
    return WMAT_OK;
}

const wmat_wkind wmat__wkind_bcq = {
    .name = "bcq",
    .summary = "binary-coded planes sum_k alpha_k b_k (ShiftAddLLM/LUT-GEMM), 1..4 bits, table-lookup products",
    .dtype = WMAT_OBJ,
    .row_align = 1,
    .ws_bytes = bq_ws,
    .forward = bq_forward,
    .backward = bq_backward,
    .prep_bytes = bq_prep_bytes,
    .prepare = bq_prepare,
    .rows = bq_rows,
    .dequant_rows = bq_dequant,
    .nbytes = bq_nbytes,
    .describe = bq_describe,
    .free = bq_free,
    .from_f32 = bq_from_f32,
    .save = bq_save,
    .load = bq_load,
    .row_tol = 1e-5f,
};
