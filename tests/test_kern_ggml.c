/* Fused one-row kernels of ggml's block types (src/wop/kern_ggml.c).
 *
 * For every type with a fused kernel, several widths and rows of Gaussian
 * weights with outliers (quantized by wmat's own writer) and x with a zero
 * block and exact rounding ties:
 *   - for every ISA this CPU runs, each row equals the double-precision product of the dequantized row
 *     (the block dequantizer, tested against llama.cpp's values in
 *     test_gguf_kquants) with x as the kernel sees it (Q8_0 codes times
 *     their block scale). The integer part is exact, so what remains is
 *     float rounding of the per-group terms and their sum: the bound is
 *     4 (groups + 16) eps (sum_j |w_j xq_j| + 2 max|w| sum_j |xq_j|) (the
 *     second part covers the min/offset terms, which may cancel against the
 *     first). A wrong code, scale or layout moves y by about |w| |x|, far
 *     above it; NaN fails the comparison.
 *   - splitting the rows (as threads do) gives the same bits, and
 *     accumulate adds onto y.
 */
#include "support/test_util.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "wop/kern_dense.h"
#include "wop/kern_ggml.h"

static const wmat_dtype k_types[] = {WMAT_Q4_1, WMAT_Q5_0, WMAT_Q5_1, WMAT_IQ4_NL, WMAT_Q2_K,
                                     WMAT_Q3_K, WMAT_Q4_K, WMAT_Q5_K, WMAT_Q6_K, WMAT_IQ4_XS};

static void fill_normal(float *x, size_t n, float s, wmat_rng *r)
{
    for (size_t i = 0; i < n; i++) x[i] = s * (float)wmat_rng_normal(r);
}

static int isa_list(int *out)
{
    int n = 0, best = wmat__isa_best();
    out[n++] = WMAT_ISA_REF;
    if (best >= WMAT_ISA_AVX2) out[n++] = WMAT_ISA_AVX2;
    if (best >= WMAT_ISA_AVX512) out[n++] = WMAT_ISA_AVX512;
    return n;
}

static void prep_parts(const void *prep, int64_t in, const float **d, const int8_t **q)
{
    const size_t nb = (size_t)(in / 32), a = (nb * 4 + 63) & ~(size_t)63;
    *d = (const float *)prep;
    *q = (const int8_t *)((const unsigned char *)prep + 2 * a);
}

static void check_type(wmat_dtype dt, int64_t in, int64_t rows, wmat_rng *r)
{
    const char *name = wmat_dtype_info(dt)->name;
    const size_t rb = wmat_dtype_bytes(dt, (uint64_t)in);
    float *W = malloc(sizeof(float) * (size_t)(rows * in)), *deq = malloc(sizeof(float) * (size_t)in);
    float *x = malloc(sizeof(float) * (size_t)in), *y0 = malloc(sizeof(float) * (size_t)rows),
          *y = malloc(sizeof(float) * (size_t)rows);
    unsigned char *Wq = malloc(rb * (size_t)rows);
    const size_t pb = wmat__wrow_prep_bytes(WMAT_Q8_0, in);
    void *prep = calloc(1, pb);
    assert_non_null(W), assert_non_null(Wq), assert_non_null(prep);
    fill_normal(W, (size_t)(rows * in), 0.02f, r);
    for (int64_t i = 0; i < rows * in; i += 97) W[i] *= 12.0f; /* outliers */
    for (int64_t i = 0; i < rows; i++) TU_OK(wmat__ggml_block_quant(dt, W + i * in, Wq + (size_t)i * rb, in));
    fill_normal(x, (size_t)in, 1.0f, r);
    for (int j = 1; j < 32; j++) x[j] = 0.25f * ((float)(j - 16) + 0.5f); /* rounding ties of x's codes */
    if (in >= 64)
        for (int j = 32; j < 64; j++) x[j] = 0.0f; /* a zero block */
    wmat__wrow_prepare(WMAT_Q8_0, x, in, prep, WMAT_ISA_REF);
    const float *xd;
    const int8_t *xq;
    prep_parts(prep, in, &xd, &xq);

    int isas[3], ni = isa_list(isas);
    const int bs = wmat_dtype_info(dt)->block_size;
    const double groups = (double)in / (bs == 32 ? 32 : 16);
    for (int k = 0; k < ni; k++) {
        wmat__ggml_rows(dt, Wq, in, prep, y0, 0, rows, 0, isas[k]);
        for (int64_t i = 0; i < rows; i++) {
            TU_OK(wmat__ggml_block_dequant(dt, Wq + (size_t)i * rb, deq, in));
            double ref = 0, mag = 0, xmag = 0, wmax = 0;
            for (int64_t j = 0; j < in; j++) {
                const double xv = (double)xd[j / 32] * xq[j];
                ref += (double)deq[j] * xv;
                mag += fabs((double)deq[j] * xv);
                xmag += fabs(xv);
                if (fabs(deq[j]) > wmax) wmax = fabs(deq[j]);
            }
            const double tol = 4 * (groups + 16) * FLT_EPSILON * (mag + 2 * wmax * xmag);
            if (!(isfinite(y0[i]) && fabs(y0[i] - ref) <= tol))
                fail_msg("%s in %lld row %lld isa %d: %.9g against %.9g (tolerance %.3g)", name, (long long)in, (long long)i,
                         isas[k], (double)y0[i], ref, tol);
        }
        memset(y, 0, sizeof(float) * (size_t)rows);
        /* two row ranges, as threads split them */
        wmat__ggml_rows(dt, Wq, in, prep, y, 0, rows / 2, 0, isas[k]);
        wmat__ggml_rows(dt, Wq, in, prep, y, rows / 2, rows, 0, isas[k]);
        if (memcmp(y, y0, sizeof(float) * (size_t)rows) != 0) fail_msg("%s in %lld: isa %d depends on the row split", name, (long long)in, isas[k]);
        wmat__ggml_rows(dt, Wq, in, prep, y, 0, rows, 1, isas[k]);
        for (int64_t i = 0; i < rows; i++)
            if (!(y[i] == y0[i] + y0[i])) fail_msg("%s: accumulate row %lld: %g, expected %g", name, (long long)i, (double)y[i], 2.0 * y0[i]);
    }
    free(W), free(deq), free(x), free(y0), free(y), free(Wq), free(prep);
}

static void test_fused_twins_and_reference(void **state)
{
    (void)state;
    wmat_rng r;
    wmat_rng_seed(&r, 11);
    for (size_t t = 0; t < sizeof k_types / sizeof k_types[0]; t++) {
        assert_true(wmat__ggml_fused(k_types[t]));
        const int bs = wmat_dtype_info(k_types[t])->block_size;
        const int64_t ins[] = {256, 512, 2048, 96};
        for (size_t a = 0; a < 4; a++) {
            if (ins[a] % bs) continue;
            check_type(k_types[t], ins[a], 13, &r);
        }
    }
    assert_false(wmat__ggml_fused(WMAT_Q4_0)); /* kern_dense.c's */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fused_twins_and_reference),
    };
    return tu_run_tests("kern_ggml", tests, NULL, NULL);
}
