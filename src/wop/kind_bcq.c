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
 * AVX2's gathers are no faster there): 0.2-0.3x the 4-bit SIMD kernel.
 *
 * That exact path is the batched forward, and the one-row (decode) path
 * with int8 activations off or without AVX-512 VBMI + VNNI. Under act8 on
 * such a CPU the one-row path is the int8-table kernel below (16-entry
 * tables over 4 inputs, vpermb lookups of 16 rows x 4 groups at once, a
 * repacked in-memory layout): 2-5x the 4-bit kernel, memory-bound; see
 * docs/BENCHMARKS.md. */
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
    /* the int8-table kernel's layout (owned; NULL when cols or group is not a multiple of 32) */
    int blk;         /* inputs per table scale: 32, 64 or 128 */
    uint8_t *pk;     /* (ceil(rows/16), cols/32, q, 64) nibbles */
    float *alpha_t;  /* (ceil(rows/16), ngroups, q, 16) */
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

/* ---- int8 tables over groups of 4 inputs (the one-row path under act8 on
 * AVX-512 VBMI + VNNI; a T-MAC-style kernel).
 *
 * Per group j of 4 inputs the 16 signed sums T_j[s] = sum_t (s>>t & 1 ?
 * x[4j+t] : -x[4j+t]) are rounded to int8 with one scale per block of
 * `blk` inputs (32, 64 or 128 dividing the alpha group):
 *   Tq_j[s] = rint(T_j[s] / d_B),  d_B = max_{j in B} sum_t |x[4j+t]| / 127,
 * so |Tq_j[s] d_B - T_j[s]| <= d_B / 2 per lookup, and a row's error is at
 * most sum_B (blk / 4) (d_B / 2) sum_k |alpha[r, G(B), k]| (the bound the
 * tests check). The planes are repacked at create/load time (the file keeps
 * its layout) into tiles of 16 rows: for each 32 inputs (8 groups) and
 * plane, 64 bytes; byte 4i + p holds row i's nibble of group p in its low
 * half and of group 4 + p in its high half. One vpermb of the 64-byte table
 * of groups 0..3 (entry 16 p + s) with the indices (nibble | p << 4) looks
 * up 16 rows x 4 groups, and vpdpbusd against ones sums each row's four
 * lookups into its int32 lane. Per block and plane the int32 sums of a row
 * are scaled once: y += (float)sum * (alpha * d_B), an fmaf in both twins,
 * so the C twin and the AVX-512 kernel agree bit for bit. */

#define BQ_I8_ROWS 16

/* columns per table scale (0: the int8 path does not apply to this shape) */
static int i8_block(int64_t cols, int64_t group)
{
    if (cols % 32 || group % 32) return 0;
    return group % 128 == 0 ? 128 : group % 64 == 0 ? 64 : 32;
}

static size_t i8_tab_bytes(const bcq *b) { return (size_t)(b->cols / 32) * 128; }
/* prep: the tables, then the block scales d_B and their inverses */
static size_t i8_prep_bytes(const bcq *b) { return i8_tab_bytes(b) + 2 * (size_t)(b->cols / b->blk) * sizeof(float); }

static int i8_cpu(void)
{
#ifdef BQ_X86
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* the one-row path of this weight under ex uses the int8 tables */
static int use_i8(const bcq *b, const wmat_wexec *ex) { return b->pk && ex->act8 && ex->isa >= WMAT_ISA_AVX512 && i8_cpu(); }

/* Repack the planes into the kernel's tiles and the alphas into (tile,
 * group, plane, 16 rows) fp32; rows past `rows` are zero. */
static int i8_repack(bcq *b)
{
    b->blk = i8_block(b->cols, b->group);
    if (!b->blk) return WMAT_OK;
    const int q = b->q;
    const int64_t nt = (b->rows + BQ_I8_ROWS - 1) / BQ_I8_ROWS, nch = b->cols / 32, ng = b->ngroups;
    const size_t pk_bytes = (size_t)(nt * nch * q) * 64, al_floats = (size_t)(nt * ng * q) * BQ_I8_ROWS;
    uint8_t *pk = wmat__aligned_alloc(pk_bytes);
    float *at = wmat__aligned_alloc(al_floats * sizeof(float));
    if (!pk || !at) {
        wmat__free(pk);
        wmat__free(at);
        return WMAT_ERR_NOMEM;
    }
    memset(pk, 0, pk_bytes);
    memset(at, 0, al_floats * sizeof(float));
    for (int64_t r = 0; r < b->rows; r++) {
        const int64_t t = r / BQ_I8_ROWS, i = r % BQ_I8_ROWS;
        for (int k = 0; k < q; k++) {
            const uint8_t *pl = b->bits + r * b->row_bytes + k * b->nb;
            for (int64_t j = 0; j < b->cols / 4; j++) {
                const unsigned nib = (unsigned)(pl[j / 2] >> (4 * (j & 1))) & 15u;
                const int64_t m = j / 8, g = j % 8;
                pk[((t * nch + m) * q + k) * 64 + 4 * i + (g & 3)] |= (uint8_t)(nib << (4 * (g >> 2)));
            }
            for (int64_t G = 0; G < ng; G++) at[((t * ng + G) * q + k) * BQ_I8_ROWS + i] = b->alpha_f[(r * ng + G) * q + k];
        }
    }
    b->pk = pk, b->alpha_t = at;
    return WMAT_OK;
}

/* the block scales (shared by both twins: plain C, in a fixed order);
 * a non-finite input makes its block's scale NaN, so the rows go NaN */
static void i8_scales(const bcq *b, const float *x, float *d, float *inv)
{
    for (int64_t B = 0; B < b->cols / b->blk; B++) {
        float M = 0.0f;
        int bad = 0;
        for (int64_t c = B * b->blk; c < (B + 1) * b->blk; c += 4) {
            const float s = ((fabsf(x[c]) + fabsf(x[c + 1])) + fabsf(x[c + 2])) + fabsf(x[c + 3]);
            if (!isfinite(s)) bad = 1;
            else if (s > M) M = s;
        }
        d[B] = bad ? NAN : M / 127.0f;
        inv[B] = M > 0.0f && !bad ? 127.0f / M : 0.0f;
    }
}

/* where group j's 16 entries go in the tables */
static int8_t *i8_slot(int8_t *tab, int64_t j) { return tab + (j / 8) * 128 + ((j % 8) >> 2) * 64 + (j & 3) * 16; }

static void i8_prepare_c(const bcq *b, const float *x, void *prep)
{
    int8_t *tab = prep;
    float *d = (float *)((char *)prep + i8_tab_bytes(b)), *inv = d + b->cols / b->blk;
    i8_scales(b, x, d, inv);
    for (int64_t j = 0; j < b->cols / 4; j++) {
        const float *xj = x + 4 * j, iv = inv[4 * j / b->blk];
        int8_t *t = i8_slot(tab, j);
        for (int s = 0; s < 16; s++) {
            float v = (s & 1) ? xj[0] : -xj[0];
            v = v + ((s & 2) ? xj[1] : -xj[1]);
            v = v + ((s & 4) ? xj[2] : -xj[2]);
            v = v + ((s & 8) ? xj[3] : -xj[3]);
            v = fminf(fmaxf(v * iv, -127.0f), 127.0f);
            t[s] = (int8_t)rintf(v);
        }
    }
}

/* y[r] for r in [r0, r1), 16-row tiles (a partial tile writes its rows only) */
static void i8_rows_c(const bcq *b, const void *prep, float *y, int64_t r0, int64_t r1, int acc)
{
    const int8_t *tab = prep;
    const float *d = (const float *)((const char *)prep + i8_tab_bytes(b));
    const int q = b->q;
    const int64_t nch = b->cols / 32, cpb = b->blk / 32, nblk = b->cols / b->blk, ng = b->ngroups;
    for (int64_t t = r0 / BQ_I8_ROWS; t * BQ_I8_ROWS < r1; t++) {
        float yt[BQ_I8_ROWS] = {0};
        for (int64_t B = 0; B < nblk; B++) {
            int32_t a[4][BQ_I8_ROWS] = {{0}};
            for (int64_t m = B * cpb; m < (B + 1) * cpb; m++) {
                const int8_t *tA = tab + m * 128, *tB = tA + 64;
                for (int k = 0; k < q; k++) {
                    const uint8_t *v = b->pk + ((t * nch + m) * q + k) * 64;
                    for (int i = 0; i < BQ_I8_ROWS; i++)
                        for (int p = 0; p < 4; p++) {
                            const unsigned u = v[4 * i + p];
                            a[k][i] += tA[p * 16 + (u & 15)] + tB[p * 16 + (u >> 4)];
                        }
                }
            }
            const int64_t G = B * b->blk / b->group;
            const float *al = b->alpha_t + (t * ng + G) * q * BQ_I8_ROWS;
            for (int k = 0; k < q; k++)
                for (int i = 0; i < BQ_I8_ROWS; i++) yt[i] = fmaf((float)a[k][i], al[k * BQ_I8_ROWS + i] * d[B], yt[i]);
        }
        for (int i = 0; i < BQ_I8_ROWS; i++) {
            const int64_t r = t * BQ_I8_ROWS + i;
            if (r >= r0 && r < r1) y[r] = acc ? y[r] + yt[i] : yt[i];
        }
    }
}

#ifdef BQ_X86
#define BQ_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")))

BQ_VBMI static void i8_prepare_vbmi(const bcq *b, const float *x, void *prep)
{
    int8_t *tab = prep;
    float *d = (float *)((char *)prep + i8_tab_bytes(b)), *inv = d + b->cols / b->blk;
    i8_scales(b, x, d, inv);
    /* lane s: sign of x_t is + when bit t of s is set */
    const __m512 one = _mm512_set1_ps(1.0f), mone = _mm512_set1_ps(-1.0f);
    const __m512 s0 = _mm512_mask_blend_ps(0xAAAA, mone, one), s1 = _mm512_mask_blend_ps(0xCCCC, mone, one),
                 s2 = _mm512_mask_blend_ps(0xF0F0, mone, one), s3 = _mm512_mask_blend_ps(0xFF00, mone, one);
    const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t j = 0; j < b->cols / 4; j++) {
        const float *xj = x + 4 * j;
        /* x * (+-1) is exact, so these are the C twin's adds */
        __m512 v = _mm512_mul_ps(_mm512_set1_ps(xj[0]), s0);
        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(xj[1]), s1));
        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(xj[2]), s2));
        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(xj[3]), s3));
        v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, _mm512_set1_ps(inv[4 * j / b->blk])), lo), hi);
        _mm_storeu_si128((__m128i *)i8_slot(tab, j), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
    }
}

static inline __attribute__((always_inline)) BQ_VBMI void i8_tile_vbmi(const bcq *b, const int8_t *tab, const float *d,
                                                                        int64_t t, int q, float *out)
{
    const int64_t nch = b->cols / 32, cpb = b->blk / 32, nblk = b->cols / b->blk, ng = b->ngroups;
    const __m512i m0f = _mm512_set1_epi8(0x0f), pat = _mm512_set1_epi32(0x30201000), ones = _mm512_set1_epi8(1);
    const uint8_t *pk = b->pk + t * nch * q * 64;
    __m512 yt = _mm512_setzero_ps();
    for (int64_t B = 0; B < nblk; B++) {
        __m512i a[4][2];
        for (int k = 0; k < q; k++) a[k][0] = a[k][1] = _mm512_setzero_si512();
        for (int64_t m = B * cpb; m < (B + 1) * cpb; m++) {
            const __m512i tA = _mm512_loadu_si512(tab + m * 128), tB = _mm512_loadu_si512(tab + m * 128 + 64);
            const uint8_t *v = pk + m * q * 64;
            for (int k = 0; k < q; k++) {
                const __m512i w = _mm512_loadu_si512(v + k * 64);
                const __m512i il = _mm512_ternarylogic_epi32(w, m0f, pat, 0xEA);
                const __m512i ih = _mm512_ternarylogic_epi32(_mm512_srli_epi16(w, 4), m0f, pat, 0xEA);
                a[k][0] = _mm512_dpbusd_epi32(a[k][0], ones, _mm512_permutexvar_epi8(il, tA));
                a[k][1] = _mm512_dpbusd_epi32(a[k][1], ones, _mm512_permutexvar_epi8(ih, tB));
            }
        }
        const int64_t G = B * b->blk / b->group;
        const float *al = b->alpha_t + (t * ng + G) * q * BQ_I8_ROWS;
        const __m512 dv = _mm512_set1_ps(d[B]);
        for (int k = 0; k < q; k++)
            yt = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a[k][0], a[k][1])),
                                 _mm512_mul_ps(_mm512_loadu_ps(al + k * BQ_I8_ROWS), dv), yt);
    }
    _mm512_storeu_ps(out, yt);
}

#define BQ_I8_TILE_Q(Q)                                                                                                  \
    BQ_VBMI static void i8_tile_q##Q(const bcq *b, const int8_t *tab, const float *d, int64_t t, float *out)            \
    {                                                                                                                    \
        i8_tile_vbmi(b, tab, d, t, Q, out);                                                                              \
    }
BQ_I8_TILE_Q(1)
BQ_I8_TILE_Q(2)
BQ_I8_TILE_Q(3)
BQ_I8_TILE_Q(4)

BQ_VBMI static void i8_rows_vbmi(const bcq *b, const void *prep, float *y, int64_t r0, int64_t r1, int acc)
{
    const int8_t *tab = prep;
    const float *d = (const float *)((const char *)prep + i8_tab_bytes(b));
    void (*tile)(const bcq *, const int8_t *, const float *, int64_t, float *) =
        b->q == 1 ? i8_tile_q1 : b->q == 2 ? i8_tile_q2 : b->q == 3 ? i8_tile_q3 : i8_tile_q4;
    for (int64_t t = r0 / BQ_I8_ROWS; t * BQ_I8_ROWS < r1; t++) {
        const int64_t rt = t * BQ_I8_ROWS;
        if (rt >= r0 && rt + BQ_I8_ROWS <= r1 && !acc) {
            tile(b, tab, d, t, y + rt);
            continue;
        }
        float yt[BQ_I8_ROWS];
        tile(b, tab, d, t, yt);
        for (int i = 0; i < BQ_I8_ROWS; i++)
            if (rt + i >= r0 && rt + i < r1) y[rt + i] = acc ? y[rt + i] + yt[i] : yt[i];
    }
}
#endif

static void i8_prepare(const bcq *b, const float *x, void *prep, int isa)
{
#ifdef BQ_X86
    if (isa >= WMAT_ISA_AVX512 && i8_cpu()) {
        i8_prepare_vbmi(b, x, prep);
        return;
    }
#endif
    (void)isa;
    i8_prepare_c(b, x, prep);
}

static void i8_rows(const bcq *b, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
#ifdef BQ_X86
    if (isa >= WMAT_ISA_AVX512 && i8_cpu()) {
        i8_rows_vbmi(b, prep, y, r0, r1, acc);
        return;
    }
#endif
    (void)isa;
    i8_rows_c(b, prep, y, r0, r1, acc);
}

size_t wmat__bcq_i8_prep_bytes(const wmat_tensor *W) { return bq_of(W)->pk ? i8_prep_bytes(bq_of(W)) : 0; }

void wmat__bcq_i8_prepare(const wmat_tensor *W, const float *x, void *prep, int isa) { i8_prepare(bq_of(W), x, prep, isa); }

void wmat__bcq_i8_rows(const wmat_tensor *W, const void *prep, float *y, int64_t r0, int64_t r1, int acc, int isa)
{
    i8_rows(bq_of(W), prep, y, r0, r1, acc, isa);
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

/* The one-row path: int8 tables under act8 where AVX-512 VBMI + VNNI run
 * them (use_i8), else the exact fp32 tables. */
static size_t bq_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    const bcq *b = bq_of(W);
    return use_i8(b, ex) ? i8_prep_bytes(b) : lut_floats(b) * sizeof(float);
}

static void bq_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    const bcq *b = bq_of(W);
    if (use_i8(b, ex)) i8_prepare(b, x, prep, ex->isa);
    else lut_build(x, b->cols, prep, ex->isa);
}

static void bq_rows(const wmat_tensor *W, const float *x, const void *prep, float *y, int64_t r0, int64_t r1, int acc,
                    const wmat_wexec *ex)
{
    (void)x;
    const bcq *b = bq_of(W);
    if (use_i8(b, ex)) i8_rows(b, prep, y, r0, r1, acc, ex->isa);
    else run_rows(b, prep, y, r0, r1, acc, ex->isa);
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
    wmat__free(b->pk);
    wmat__free(b->alpha_t);
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
    if (alpha_copy(b) || i8_repack(b)) {
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
    if (alpha_copy(b) || i8_repack(b)) {
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
    .row_align = BQ_I8_ROWS, /* the int8 kernel's tiles */
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
    .row_tol = 2e-2f, /* int8 tables under act8 (bound in the comment above i8_block; 1e-5 with act8 off) */
};
