/* ggml's other block types as weight kinds, run as stored (a GGUF from the
 * Hub mapped and used in place): Q4_1, Q5_0, Q5_1, the K-quants Q2_K..Q6_K
 * and IQ4_NL / IQ4_XS. One implementation for all of them over the block
 * dequantizers of src/core/ggml_kquants.c:
 *   - batched products dequantize tiles of rows (~256 KB of fp32, in L2)
 *     and multiply them with the GEMM, as kind_stored.c does for Q4_0;
 *   - one-row products dequantize one block at a time into a buffer on the
 *     stack and dot it with x: decode is bound by reading the weights, and
 *     a block's decode is short next to its bytes' arrival. The dot uses 8
 *     independent partial sums, so it vectorizes without reassociation;
 *     with AVX2 the same sums run as one 8-lane register (the reference
 *     twin and the AVX2 twin give the same bits). */
#include "wop.h"

#include "../linalg/linalg.h"

#include <omp.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KG_X86 1
#endif

#define TILE_BYTES ((size_t)256 << 10)
#define MAX_BLOCK 256

static size_t row_bytes(const wmat_tensor *W) { return wmat_dtype_bytes(W->dtype, (uint64_t)W->shape[1]); }

static int64_t tile_rows(int64_t rows, int64_t in)
{
    int64_t tr = (int64_t)(TILE_BYTES / ((size_t)in * 4)) / 16 * 16;
    if (tr < 16) tr = 16;
    return tr < rows ? tr : rows;
}

static size_t per_thread_floats(const wmat_tensor *W) { return (size_t)tile_rows(W->shape[0], W->shape[1]) * (size_t)W->shape[1] + 16; }

static size_t kg_ws(const wmat_tensor *W, int T, const wmat_wexec *ex)
{
    (void)T;
    return (size_t)(ex->n_threads > 1 ? ex->n_threads : 1) * per_thread_floats(W) * 4 + 64;
}

static float *slice(void *ws, const wmat_tensor *W, int t)
{
    uintptr_t p = ((uintptr_t)ws + 63) & ~(uintptr_t)63;
    return (float *)p + (size_t)t * per_thread_floats(W);
}

static void deq_rows(const wmat_tensor *W, int64_t r0, int64_t nr, float *out)
{
    const size_t rb = row_bytes(W);
    const unsigned char *w = (const unsigned char *)W->data + (size_t)r0 * rb;
    for (int64_t i = 0; i < nr; i++) wmat__ggml_block_dequant(W->dtype, w + (size_t)i * rb, out + (size_t)i * W->shape[1], W->shape[1]);
}

static void kg_forward(const wmat_tensor *W, const float *X, float *Y, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const int64_t rows = W->shape[0], in = W->shape[1], tr = tile_rows(rows, in), ntile = (rows + tr - 1) / tr;
    if (rows <= 0 || T <= 0) return;
    const int nt = ex->n_threads > 1 && ntile > 1 ? (ex->n_threads < ntile ? ex->n_threads : (int)ntile) : 1;
#pragma omp parallel num_threads(nt)
    {
        float *tile = slice(ws, W, omp_get_thread_num());
#pragma omp for schedule(static)
        for (int64_t i = 0; i < ntile; i++) {
            const int64_t r0 = i * tr, nr = rows - r0 < tr ? rows - r0 : tr;
            deq_rows(W, r0, nr, tile);
            wmat__sgemm_cfg(ex->gemm, nt == 1 ? ex->n_threads : 1, 0, 1, T, (int)nr, (int)in, 1.0f, X, (int)in, tile, (int)in,
                            acc ? 1.0f : 0.0f, Y + r0, (int)rows);
        }
    }
}

/* dX = dY W, row tile by row tile: each tile's product (threaded GEMM) adds
 * into all of dX, so tiles run one after another */
static void kg_backward(const wmat_tensor *W, const float *dY, float *dX, int T, int acc, void *ws, const wmat_wexec *ex)
{
    const int64_t rows = W->shape[0], in = W->shape[1], tr = tile_rows(rows, in);
    if (T <= 0) return;
    if (rows <= 0) {
        if (!acc) memset(dX, 0, (size_t)T * (size_t)in * 4);
        return;
    }
    float *tile = slice(ws, W, 0);
    for (int64_t r0 = 0; r0 < rows; r0 += tr) {
        const int64_t nr = rows - r0 < tr ? rows - r0 : tr;
        deq_rows(W, r0, nr, tile);
        wmat__sgemm_cfg(ex->gemm, ex->n_threads, 0, 0, T, (int)in, (int)nr, 1.0f, dY + r0, (int)rows, tile, (int)in,
                        r0 == 0 && !acc ? 0.0f : 1.0f, dX, (int)in);
    }
}

static size_t kg_prep_bytes(const wmat_tensor *W, const wmat_wexec *ex)
{
    (void)W;
    (void)ex;
    return 0;
}

static void kg_prepare(const wmat_tensor *W, const float *x, void *prep, const wmat_wexec *ex)
{
    (void)W, (void)x, (void)prep, (void)ex;
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

#define GGML_KIND(NAME, DT, TOL, SUMMARY)                                                                                    \
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
        .row_tol = 1e-5f,                                                                                                 \
        .approx_tol = TOL,                                                                                                \
    }

/* from_f32 budgets (0: the suite's 0.2): 2 and 3 bits on Gaussian weights need more */
GGML_KIND(q4_1, WMAT_Q4_1, 0, "ggml Q4_1 blocks (32 4-bit + fp16 scale and min, 5 bits)");
GGML_KIND(q5_0, WMAT_Q5_0, 0, "ggml Q5_0 blocks (32 5-bit + fp16 scale, 5.5 bits)");
GGML_KIND(q5_1, WMAT_Q5_1, 0, "ggml Q5_1 blocks (32 5-bit + fp16 scale and min, 6 bits)");
GGML_KIND(q2_k, WMAT_Q2_K, 0.5f, "ggml Q2_K super-blocks (256 2-bit, 4-bit scales/mins of 16, 2.625 bits)");
GGML_KIND(q3_k, WMAT_Q3_K, 0.35f, "ggml Q3_K super-blocks (256 3-bit, 6-bit scales of 16, 3.4375 bits)");
GGML_KIND(q4_k, WMAT_Q4_K, 0, "ggml Q4_K super-blocks (256 4-bit, 6-bit scales/mins of 32, 4.5 bits)");
GGML_KIND(q5_k, WMAT_Q5_K, 0, "ggml Q5_K super-blocks (256 5-bit, 6-bit scales/mins of 32, 5.5 bits)");
GGML_KIND(q6_k, WMAT_Q6_K, 0, "ggml Q6_K super-blocks (256 6-bit, int8 scales of 16, 6.5625 bits)");
GGML_KIND(iq4_nl, WMAT_IQ4_NL, 0, "ggml IQ4_NL blocks (32 4-bit indices into a non-uniform grid + fp16 scale, 4.5 bits)");
GGML_KIND(iq4_xs, WMAT_IQ4_XS, 0, "ggml IQ4_XS super-blocks (256 IQ4_NL indices, 6-bit scales of 32, 4.25 bits)");
