/* ggml block types chosen by wmat's methods (src/quant/ggml_quant.c,
 * src/core/ggml_kquants.c): the importance-weighted K-quant search lowers
 * the weighted error it is asked to lower, GPTQ's error feedback into
 * Q4_K / Q3_K / Q6_K super-blocks lowers the calibration output error
 * below the searched RTN's, every block a method writes decodes to the
 * values it reported, and llama.cpp's mix rules give its types for the
 * shapes they single out. (Byte equality with llama.cpp's quantizer and
 * the types of whole files: tests/test_gguf_kquants.c.) */
#include "test_util.h"

#include "quant/methods.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void rand_matrix(float *W, int64_t n, uint64_t seed, float sd)
{
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int64_t i = 0; i < n; i++) W[i] = sd * wmat_rng_normal(&r);
}

/* H = 2/N X^T X of correlated features with outlier channels */
static void make_hessian(double *H, int64_t n, int N, uint64_t seed)
{
    float *X = malloc((size_t)N * (size_t)n * sizeof(float));
    assert_non_null(X);
    wmat_rng r;
    wmat_rng_seed(&r, seed);
    for (int t = 0; t < N; t++) {
        const float common = wmat_rng_normal(&r);
        for (int64_t j = 0; j < n; j++) {
            float v = wmat_rng_normal(&r) + 0.5f * common;
            if (j % 37 == 5) v *= 8.0f;
            X[(int64_t)t * n + j] = v;
        }
    }
    memset(H, 0, (size_t)(n * n) * sizeof(double));
    for (int t = 0; t < N; t++)
        for (int64_t a = 0; a < n; a++)
            for (int64_t b = 0; b < n; b++) H[a * n + b] += 2.0 * X[t * n + a] * X[t * n + b] / N;
    free(X);
}

static const wmat_dtype g_kq[] = {WMAT_Q3_K, WMAT_Q4_K, WMAT_Q5_K, WMAT_Q6_K};

/* Importance weights (a few inputs 100x the rest): the weighted search's
 * sum_j w_j (x_j - q_j)^2 is below the unweighted reference rule's for
 * every K-quant type it covers. */
static void test_imatrix_lowers_weighted_error(void **state)
{
    (void)state;
    const int64_t rows = 64, cols = 512;
    float *W = malloc((size_t)(rows * cols) * sizeof(float)), *qw = malloc((size_t)cols * sizeof(float));
    float *Y = malloc((size_t)(rows * cols) * sizeof(float));
    unsigned char *b = malloc((size_t)rows * 1024);
    assert_true(W && qw && Y && b);
    rand_matrix(W, rows * cols, 11, 0.02f);
    wmat_rng r;
    wmat_rng_seed(&r, 5);
    for (int64_t j = 0; j < cols; j++) qw[j] = (j % 9 == 0 ? 100.0f : 1.0f) * (0.5f + wmat_rng_uniform(&r));
    for (size_t t = 0; t < sizeof g_kq / sizeof g_kq[0]; t++) {
        double e[2];
        for (int weighted = 0; weighted < 2; weighted++) {
            TU_OK(wmat__ggml_quant_rows(g_kq[t], W, b, rows, cols, weighted ? qw : NULL));
            TU_OK(wmat_to_f32(Y, b, g_kq[t], (uint64_t)(rows * cols)));
            e[weighted] = 0;
            for (int64_t i = 0; i < rows * cols; i++) {
                const double d = (double)W[i] - Y[i];
                e[weighted] += qw[i % cols] * d * d;
            }
        }
        print_message("  %-5s weighted error: reference rule %.4e, imatrix rule %.4e (%.1f%% lower)\n",
                      wmat_dtype_info(g_kq[t])->name, e[0], e[1], 100 * (1 - e[1] / e[0]));
        assert_true(e[1] < 0.97 * e[0]);
    }
    free(W);
    free(qw);
    free(Y);
    free(b);
}

/* GPTQ into ggml blocks on a fixed matrix and a correlated Hessian: the
 * output error tr(dW H dW^T) is below the searched RTN's and below the
 * imatrix search's, for Q3_K, Q4_K and Q6_K, and the 32-block fallbacks
 * Q4_0 / Q5_0 / Q8_0; the bytes decode to the values GPTQ reported. */
static void test_gptq_into_blocks(void **state)
{
    (void)state;
    const int64_t rows = 48, cols = 512;
    float *W = malloc((size_t)(rows * cols) * sizeof(float)), *Y = malloc((size_t)(rows * cols) * sizeof(float));
    double *H = malloc((size_t)(cols * cols) * sizeof(double)), *x2 = malloc((size_t)cols * sizeof(double));
    assert_true(W && Y && H && x2);
    rand_matrix(W, rows * cols, 3, 0.02f);
    make_hessian(H, cols, 1024, 9);
    for (int64_t j = 0; j < cols; j++) x2[j] = H[j * cols + j] / 2;
    wmat_qstats st;
    memset(&st, 0, sizeof st);
    st.n = cols;
    st.H = H;
    st.x2 = x2;
    wmat_qparams p = wmat__qparams_default();
    static const wmat_dtype types[] = {WMAT_Q3_K, WMAT_Q4_K, WMAT_Q6_K, WMAT_Q4_0, WMAT_Q5_0, WMAT_Q8_0};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        double e[3];
        for (int how = 0; how < 3; how++) {
            wmat_qresult q;
            wmat_qmethod_info info;
            TU_OK(wmat__quant_ggml(&q, W, rows, cols, &st, types[t], how, &p, &info));
            assert_int_equal(q.ggml, types[t]);
            assert_non_null(q.gbytes);
            wmat_qresult_dequant(&q, Y);
            e[how] = wmat__qoutput_error(W, Y, rows, cols, H);
            wmat_qresult_free(&q);
        }
        print_message("  %-5s output error: rtn %.4e, imatrix %.4e, gptq %.4e (%.0f%% below rtn)\n",
                      wmat_dtype_info(types[t])->name, e[0], e[1], e[2], 100 * (1 - e[2] / e[0]));
        assert_true(e[2] < 0.9 * e[0]);
        assert_true(e[2] < e[1]);
    }
    free(W);
    free(Y);
    free(H);
    free(x2);
}

/* A K-quant super-block fitted, coded and packed by hand (the steps GPTQ
 * takes) decodes to exactly the values wmat__kq_code returned. */
static void test_fit_code_pack_roundtrip(void **state)
{
    (void)state;
    float x[256], v[256], y[256];
    rand_matrix(x, 256, 21, 1.0f);
    x[17] = 9.0f; /* an outlier */
    for (size_t t = 0; t < sizeof g_kq / sizeof g_kq[0]; t++) {
        unsigned char b[256];
        wmat_kfit f;
        TU_OK(wmat__kq_fit(g_kq[t], x, NULL, b, &f));
        for (int i = 0; i < 256; i++) v[i] = wmat__kq_code(&f, i, x[i] + 0.01f * (float)(i % 7)); /* shifted values */
        wmat__kq_pack(&f, b);
        TU_OK(wmat_to_f32(y, b, g_kq[t], 256));
        assert_memory_equal(v, y, sizeof v);
    }
}

/* llama.cpp's rules for the tensors they single out (a 32-layer LLaMA:
 * Q4_K_M's attn_v and ffn_down (here 11040 wide: its fallbacks) in the first/last eighths and every third
 * layer, Q4_K_S's first 4 attn_v, Q3_K_M's first two attn_v, the tied
 * embedding at Q6_K) and the fallbacks of widths that are no multiple of
 * 256 (Q5_0 / Q4_0 / Q8_0; F16 when not of 32). */
static void test_mix_rules(void **state)
{
    (void)state;
    wmat_config c;
    memset(&c, 0, sizeof c);
    c.n_layers = 32;
    c.n_heads = 32;
    c.n_kv_heads = 32;
    const int v_q4km[32] = {1, 1, 1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1};
    for (int l = 0; l < 32; l++) {
        assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_LIN_V, l, &c, 4096), v_q4km[l] ? WMAT_Q6_K : WMAT_Q4_K);
        assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_LIN_DOWN, l, &c, 11040), v_q4km[l] ? WMAT_Q8_0 : WMAT_Q5_0);
        assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_LIN_Q, l, &c, 4096), WMAT_Q4_K);
        assert_int_equal(wmat__ggml_mix_type("q4_k_s", WMAT_LIN_V, l, &c, 4096), l < 4 ? WMAT_Q5_K : WMAT_Q4_K);
        assert_int_equal(wmat__ggml_mix_type("q3_k_m", WMAT_LIN_V, l, &c, 4096), l < 2 ? WMAT_Q5_K : WMAT_Q4_K);
        assert_int_equal(wmat__ggml_mix_type("q3_k_m", WMAT_LIN_O, l, &c, 4096), WMAT_Q4_K);
        assert_int_equal(wmat__ggml_mix_type("q3_k_s", WMAT_LIN_O, l, &c, 4096), WMAT_Q3_K);
        assert_int_equal(wmat__ggml_mix_type("q3_k_s", WMAT_LIN_UP, l, &c, 4000), WMAT_Q4_0);
    }
    assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_GGML_TOKEN_EMBD, -1, &c, 4096), WMAT_Q4_K);
    assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_GGML_OUTPUT, 32, &c, 4096), WMAT_Q6_K);
    c.tied_embeddings = 1;
    assert_int_equal(wmat__ggml_mix_type("q3_k_s", WMAT_GGML_TOKEN_EMBD, -1, &c, 4096), WMAT_Q6_K);
    assert_int_equal(wmat__ggml_mix_type("q4_k_m", WMAT_LIN_Q, 0, &c, 172), WMAT_F16);
    assert_int_equal(wmat__ggml_ftype_known("q4_k_m"), 1);
    assert_int_equal(wmat__ggml_ftype_known("q4_k_x"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_imatrix_lowers_weighted_error),
        cmocka_unit_test(test_gptq_into_blocks),
        cmocka_unit_test(test_fit_code_pack_roundtrip),
        cmocka_unit_test(test_mix_rules),
    };
    return tu_run_tests("ggml_quant", tests, NULL, NULL);
}
