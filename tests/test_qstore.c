/* Quantized storage: packed layouts and sizes, kernels (each ISA against the
 * reference), the native directory (save, memory-mapped load, identical
 * logits), GGUF export (Q4_0/Q8_0 bytes equal ggml's, logits, llama.cpp peer)
 * and resident memory. */
#include "test_util.h"

#include "llamacpp.h"
#include "quant/qmodel.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------ helpers */

static void random_qresult(wmat_qresult *q, wmat_rng *rng, int bits, int sym, wmat_qaxis axis, int group, int64_t rows,
                           int64_t cols, int perm)
{
    TU_OK(wmat_qresult_alloc(q, bits, sym, axis, group, rows, cols, perm));
    const int maxq = (1 << bits) - 1;
    for (int64_t i = 0; i < rows * cols; i++) q->codes[i] = (uint8_t)(wmat_rng_u64(rng) % (uint64_t)(maxq + 1));
    for (int64_t g = 0; g < wmat_qresult_n_groups(q); g++) {
        q->scales[g] = 0.01f + 0.05f * wmat_rng_uniform(rng);
        q->zeros[g] = sym ? (float)(1 << (bits - 1)) : (float)(wmat_rng_u64(rng) % (uint64_t)(maxq + 1));
    }
    if (perm) /* Fisher-Yates */
        for (int64_t k = cols - 1; k > 0; k--) {
            int64_t j = (int64_t)(wmat_rng_u64(rng) % (uint64_t)(k + 1));
            int32_t t = q->perm[k];
            q->perm[k] = q->perm[j];
            q->perm[j] = t;
        }
}

/* Scales rounded through fp16, as packing stores them. */
static void round_scales(wmat_qresult *q)
{
    for (int64_t g = 0; g < wmat_qresult_n_groups(q); g++) q->scales[g] = wmat_f16_to_f32(wmat_f32_to_f16(q->scales[g]));
}

/* Q4_0's own rule (ggml quantize_row_q4_0_ref) / Q8_0's, as a qresult
 * (symmetric, groups of 32 along inputs). */
static void rtn_ggml(wmat_qresult *q, const float *W, int64_t rows, int64_t cols, int bits)
{
    TU_OK(wmat_qresult_alloc(q, bits, 1, WMAT_QAXIS_IN, 32, rows, cols, 0));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < cols / 32; b++) {
            const float *x = W + r * cols + b * 32;
            uint8_t *c = q->codes + r * cols + b * 32;
            const int64_t g = r * (cols / 32) + b;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < 32; j++)
                if (amax < fabsf(x[j])) amax = fabsf(x[j]), max = x[j];
            if (bits == 4) {
                const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                q->scales[g] = d;
                q->zeros[g] = 8;
                for (int j = 0; j < 32; j++) {
                    int v = (int8_t)(x[j] * id + 8.5f);
                    c[j] = (uint8_t)(v > 15 ? 15 : v);
                }
            } else {
                const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
                q->scales[g] = d;
                q->zeros[g] = 128;
                for (int j = 0; j < 32; j++) c[j] = (uint8_t)((int)roundf(x[j] * id) + 128);
            }
        }
}

static int64_t theoretical_bytes(int bits, int sym, int64_t rows, int64_t cols, int64_t n_groups, int perm)
{
    const int stored = bits <= 4 ? bits : 8;
    return rows * cols * stored / 8 + n_groups * 2 + (sym ? 0 : n_groups) + (perm ? cols * 4 : 0);
}

/* ------------------------------------------------------------ layouts */

static void test_pack_roundtrip_and_sizes(void **state)
{
    (void)state;
    wmat_rng rng;
    wmat_rng_seed(&rng, 42);
    static const int bits_list[] = {2, 3, 4, 5, 8};
    const int64_t rows = 48, cols = 128;
    for (size_t bi = 0; bi < sizeof bits_list / sizeof bits_list[0]; bi++)
        for (int sym = 0; sym < 2; sym++)
            for (int axis = 0; axis < 2; axis++)
                for (int perm = 0; perm < 2; perm++)
                    for (int gi = 0; gi < 2; gi++) {
                        const int bits = bits_list[bi];
                        const int group = axis == 0 ? (gi ? (int)cols : 32) : (gi ? (int)rows : 16);
                        wmat_qresult q, u;
                        random_qresult(&q, &rng, bits, sym, (wmat_qaxis)axis, group, rows, cols, perm);
                        round_scales(&q);
                        wmat_qtensor *qt;
                        TU_OK(wmat_qtensor_pack(&q, &qt));
                        assert_int_equal((int64_t)wmat_qtensor_nbytes(qt),
                                         theoretical_bytes(bits, sym, rows, cols, wmat_qresult_n_groups(&q), perm));
                        TU_OK(wmat_qtensor_unpack(qt, &u));
                        assert_memory_equal(q.codes, u.codes, (size_t)(rows * cols));
                        assert_memory_equal(q.scales, u.scales, (size_t)wmat_qresult_n_groups(&q) * 4);
                        assert_memory_equal(q.zeros, u.zeros, (size_t)wmat_qresult_n_groups(&q) * 4);
                        if (perm) assert_memory_equal(q.perm, u.perm, (size_t)cols * 4);
                        float *a = malloc((size_t)(rows * cols) * 4), *b = malloc((size_t)(rows * cols) * 4);
                        wmat_qresult_dequant(&q, a);
                        wmat_qtensor_dequant(qt, b);
                        assert_memory_equal(a, b, (size_t)(rows * cols) * 4);
                        free(a);
                        free(b);
                        wmat_qresult_free(&u);
                        wmat_qresult_free(&q);
                        wmat_qtensor_free(qt);
                    }
}

static void test_bit_layouts(void **state)
{
    (void)state;
    wmat_qresult q;
    /* 4-bit: byte j = c_j | c_(j+16) << 4 (ggml's Q4_0 order). */
    TU_OK(wmat_qresult_alloc(&q, 4, 1, WMAT_QAXIS_IN, 32, 1, 32, 0));
    for (int j = 0; j < 32; j++) q.codes[j] = (uint8_t)(j % 16), q.scales[0] = 1, q.zeros[0] = 8;
    wmat_qtensor *qt;
    TU_OK(wmat_qtensor_pack(&q, &qt));
    for (int j = 0; j < 16; j++) assert_int_equal(qt->codes[j], (j % 16) | (((j + 16) % 16) << 4));
    wmat_qtensor_free(qt);
    wmat_qresult_free(&q);
    /* 3-bit: 8 bytes of low pairs (codes j, j+8, j+16, j+24), then a u32 of high bits. */
    TU_OK(wmat_qresult_alloc(&q, 3, 1, WMAT_QAXIS_IN, 32, 1, 32, 0));
    for (int j = 0; j < 32; j++) q.codes[j] = (uint8_t)(j % 8), q.scales[0] = 1, q.zeros[0] = 4;
    TU_OK(wmat_qtensor_pack(&q, &qt));
    assert_int_equal(qt->row_bytes, 12);
    for (int j = 0; j < 8; j++) {
        int want = 0;
        for (int k = 0; k < 4; k++) want |= ((j + 8 * k) % 8 & 3) << (2 * k);
        assert_int_equal(qt->codes[j], want);
    }
    uint32_t hi = 0;
    for (int i = 0; i < 32; i++) hi |= (uint32_t)((i % 8) >> 2) << i;
    assert_int_equal(qt->codes[8] | qt->codes[9] << 8 | qt->codes[10] << 16 | (uint32_t)qt->codes[11] << 24, hi);
    wmat_qtensor_free(qt);
    wmat_qresult_free(&q);
}

static void test_pack_errors(void **state)
{
    (void)state;
    wmat_qresult q;
    wmat_qtensor *qt = NULL;
    TU_OK(wmat_qresult_alloc(&q, 4, 1, WMAT_QAXIS_IN, 16, 4, 48, 0)); /* 48 inputs: not 32-code chunks */
    for (int g = 0; g < 12; g++) q.zeros[g] = 8;
    assert_int_equal(wmat_qtensor_pack(&q, &qt), WMAT_ERR_UNSUPPORTED);
    assert_non_null(strstr(wmat_last_error(), "multiple of 32"));
    wmat_qresult_free(&q);
    TU_OK(wmat_qresult_alloc(&q, 4, 1, WMAT_QAXIS_IN, 32, 2, 64, 1));
    for (int g = 0; g < 4; g++) q.zeros[g] = 8;
    q.perm[3] = 5; /* not a permutation */
    assert_int_equal(wmat_qtensor_pack(&q, &qt), WMAT_ERR_INVALID);
    q.perm[3] = 3;
    q.codes[7] = 16; /* exceeds 4 bits */
    assert_int_equal(wmat_qtensor_pack(&q, &qt), WMAT_ERR_INVALID);
    q.codes[7] = 1;
    q.zeros[1] = 0; /* symmetric with a wrong zero */
    assert_int_equal(wmat_qtensor_pack(&q, &qt), WMAT_ERR_INVALID);
    assert_null(qt);
    wmat_qresult_free(&q);
}

/* ------------------------------------------------------------ kernels */

static void check_matvec(const wmat_qtensor *qt, const float *W, const float *x, const char *what)
{
    const int64_t rows = qt->rows, cols = qt->cols;
    float *y = malloc((size_t)rows * 4), *yref = malloc((size_t)rows * 4), *yacc = malloc((size_t)rows * 4);
    double worst = 0;
    int levels[3] = {WMAT_QK_REF, WMAT_QK_AVX2, WMAT_QK_AVX512};
    for (int li = 0; li < 3; li++) {
        const int lv = levels[li];
        if (lv > wmat__qkernel_best()) continue;
        wmat__qmatvec_x(y, x, qt, 0, 2, lv, 0); /* fp32 activations (int8: test_act8_decode) */
        if (li == 0) memcpy(yref, y, (size_t)rows * 4);
        for (int64_t r = 0; r < rows; r++) {
            double exact = 0, mag = 0;
            for (int64_t k = 0; k < cols; k++) {
                exact += (double)W[r * cols + k] * x[k];
                mag += fabs((double)W[r * cols + k] * x[k]);
            }
            double e = tu_abs_diff(y[r], exact) / (mag + 1e-30);
            if (e > worst) worst = e;
            /* fp32 sums of `cols` terms: a few ulps times sqrt-ish growth */
            if (!(e <= 2e-5)) fail_msg("%s at %s: row %lld: %g vs exact %g (relative %g)", what, wmat__qkernel_name(levels[li]),
                                   (long long)r, (double)y[r], exact, e);
            if (!tu_near(y[r], yref[r], 2e-5 * (mag + 1e-30)))
                fail_msg("%s: %s differs from the reference at row %lld", what, wmat__qkernel_name(levels[li]), (long long)r);
        }
        /* accumulate */
        for (int64_t r = 0; r < rows; r++) yacc[r] = 1.0f;
        wmat__qmatvec_x(yacc, x, qt, 1, 1, lv, 0);
        for (int64_t r = 0; r < rows; r++) TU_ASSERT_NEAR(yacc[r] - 1.0f, y[r], 1e-4f * (1.0f + fabsf(y[r])));
        /* batched: T tokens, tiles + GEMM (T >= 3) or matvecs */
        for (int T = 1; T <= 7; T += 3) {
            float *X = malloc((size_t)(T * cols) * 4), *Y = malloc((size_t)(T * rows) * 4);
            for (int t = 0; t < T; t++)
                for (int64_t k = 0; k < cols; k++) X[t * cols + k] = x[(k + 7 * t) % cols];
            wmat__qmatmul_x(Y, X, qt, T, 0, 2, lv, 0, WMAT_GEMM_AUTO);
            for (int t = 0; t < T; t++)
                for (int64_t r = 0; r < rows; r++) {
                    double exact = 0, mag = 0;
                    for (int64_t k = 0; k < cols; k++) {
                        exact += (double)W[r * cols + k] * X[t * cols + k];
                        mag += fabs((double)W[r * cols + k] * X[t * cols + k]);
                    }
                    if (!tu_near(Y[t * rows + r], exact, 2e-5 * (mag + 1e-30)))
                        fail_msg("%s: matmul T=%d token %d row %lld: %g vs %g", what, T, t, (long long)r, (double)Y[t * rows + r],
                                 exact);
                }
            free(X);
            free(Y);
        }
    }
    free(y);
    free(yref);
    free(yacc);
}

static void test_kernels_vs_reference(void **state)
{
    (void)state;
    print_message("  kernels: best level here %s\n", wmat__qkernel_name(wmat__qkernel_best()));
    wmat_rng rng;
    wmat_rng_seed(&rng, 7);
    static const int bits_list[] = {2, 3, 4, 6, 8};
    const int64_t cols = 256;
    float *x = malloc((size_t)cols * 4), *W = malloc((size_t)(96 * cols) * 4);
    for (int64_t k = 0; k < cols; k++) x[k] = wmat_rng_normal(&rng);
    for (size_t bi = 0; bi < sizeof bits_list / sizeof bits_list[0]; bi++)
        for (int sym = 0; sym < 2; sym++)
            for (int axis = 0; axis < 2; axis++)
                for (int perm = 0; perm < 2; perm++)
                    for (int gi = 0; gi < 3; gi++) {
                        const int bits = bits_list[bi];
                        /* 94 rows along inputs: the four-row kernels' tail */
                        const int64_t rows = axis == 0 ? 94 : 96;
                        const int gin[3] = {32, 128, (int)cols}, gout[3] = {8, 32, (int)rows};
                        const int group = axis == 0 ? gin[gi] : gout[gi];
                        wmat_qresult q;
                        random_qresult(&q, &rng, bits, sym, (wmat_qaxis)axis, group, rows, cols, perm);
                        wmat_qtensor *qt;
                        TU_OK(wmat_qtensor_pack(&q, &qt));
                        wmat_qtensor_dequant(qt, W);
                        char what[96];
                        snprintf(what, sizeof what, "%d-bit %s axis %s group %d%s", bits, sym ? "sym" : "asym",
                                 axis ? "out" : "in", group, perm ? " act-order" : "");
                        check_matvec(qt, W, x, what);
                        wmat_qtensor_free(qt);
                        wmat_qresult_free(&q);
                    }
    free(x);
    free(W);
}

/* int8-activation decode: the VNNI kernel against its reference twin
 * (same integers: only the float summation order differs), and both within
 * the activation-rounding bound of the exact product:
 *   |y - W x| <= sum_b sum_(j in b) |w_j| d_b / 2  (+ fp32 rounding). */
static void test_act8_decode(void **state)
{
    (void)state;
    wmat_rng rng;
    wmat_rng_seed(&rng, 11);
    const int64_t rows = 64, cols = 512;
    float *x = malloc((size_t)cols * 4), *W = malloc((size_t)(rows * cols) * 4);
    float *yr = malloc((size_t)rows * 4), *yf = malloc((size_t)rows * 4);
    for (int64_t k = 0; k < cols; k++) x[k] = wmat_rng_normal(&rng) * (k % 97 == 0 ? 20.0f : 1.0f); /* a few outliers */
    static const int bits_list[] = {2, 3, 4, 5, 8};
    for (size_t bi = 0; bi < 5; bi++)
        for (int sym = 0; sym < 2; sym++)
            for (int perm = 0; perm < 2; perm++)
                for (int gi = 0; gi < 2; gi++) {
                    const int bits = bits_list[bi], group = gi ? (int)cols : 64;
                    wmat_qresult q;
                    random_qresult(&q, &rng, bits, sym, WMAT_QAXIS_IN, group, rows, cols, perm);
                    wmat_qtensor *qt;
                    TU_OK(wmat_qtensor_pack(&q, &qt));
                    wmat_qtensor_dequant(qt, W);
                    assert_true(wmat__qkernel_act8_at(WMAT_QK_REF, 1));
                    assert_false(wmat__qkernel_act8_at(WMAT_QK_REF, 0));
                    wmat__qmatvec_x(yr, x, qt, 0, 2, WMAT_QK_REF, 1);
                    const int best = wmat__qkernel_best();
                    const int fast = wmat__qkernel_act8_at(best, 1) && best == WMAT_QK_AVX512;
                    if (fast) wmat__qmatvec_x(yf, x, qt, 0, 2, best, 1);
                    /* per-block activation steps, in stored order */
                    for (int64_t r = 0; r < rows; r++) {
                        double exact = 0, mag = 0, bound = 0;
                        for (int64_t b = 0; b < cols / 32; b++) {
                            double amax = 0;
                            for (int j = 0; j < 32; j++) {
                                int64_t k = 32 * b + j, c = perm ? q.perm[k] : k;
                                amax = fmax(amax, fabs(x[c]));
                            }
                            for (int j = 0; j < 32; j++) {
                                int64_t k = 32 * b + j, c = perm ? q.perm[k] : k;
                                bound += fabs(W[r * cols + c]) * amax / 127.0 / 2.0;
                            }
                        }
                        for (int64_t k = 0; k < cols; k++) {
                            exact += (double)W[r * cols + k] * x[k];
                            mag += fabs((double)W[r * cols + k] * x[k]);
                        }
                        if (!tu_near(yr[r], exact, 1.01 * bound + 1e-5 * mag))
                            fail_msg("act8 ref %d-bit row %lld: %g vs %g (bound %g)", bits, (long long)r, (double)yr[r], exact, bound);
                        if (fast && !tu_near(yf[r], yr[r], 1e-5 * (mag + 1e-30)))
                            fail_msg("act8 vnni %d-bit %s%s row %lld: %g vs reference %g", bits, sym ? "sym" : "asym",
                                     perm ? " perm" : "", (long long)r, (double)yf[r], (double)yr[r]);
                    }
                    wmat_qtensor_free(qt);
                    wmat_qresult_free(&q);
                }
    free(x), free(W), free(yr), free(yf);
}

/* ------------------------------------------------------------ models */

static const int32_t *eval_tokens(size_t *n)
{
    static int32_t *ids = NULL;
    static size_t len = 0;
    if (!ids) {
        const char *p = tu_data("golden/tinystories_valid_head.tok512.u16");
        if (!p) return NULL;
        TU_OK(wmat_read_tokens_u16(p, &ids, &len));
    }
    *n = len;
    return ids;
}

static float *logits_of(wmat_model *m, const int32_t *ids, int T)
{
    wmat_runtime *rt;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    const int V = wmat_runtime_vocab(rt);
    float *lg = malloc((size_t)T * (size_t)V * 4);
    TU_OK(wmat_forward(rt, ids, T, lg));
    wmat_runtime_free(rt);
    return lg;
}

/* act8: the runtime context's int8-activation choice (-1: its default). */
static float *decode_logits_act8(wmat_model *m, const int32_t *ids, int T, int act8)
{
    wmat_context ctx = wmat_context_default();
    ctx.act8 = act8;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.ctx = &ctx;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    const int V = wmat_runtime_vocab(rt);
    float *lg = malloc((size_t)T * (size_t)V * 4);
    for (int t = 0; t < T; t++) TU_OK(wmat_decode(rt, ids[t], t, lg + (size_t)t * V));
    wmat_runtime_free(rt);
    return lg;
}

/* Largest |a - b| over the largest |a|; infinite or NaN when either holds a
 * NaN (tu_max_abs_diff), which fails every `d < tol`. */
static double max_rel_diff(const float *a, const float *b, size_t n)
{
    return tu_max_abs_diff(a, b, n, NULL) / (tu_max_abs(a, n) + 1e-30);
}

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    TU_OK(wmat_model_load(&m, path, NULL));
    return m;
}

/* Quantize every linear layer of m with ggml's rule; `ref` (same weights)
 * gets the dequantized values as f32. */
static void quantize_model(wmat_model *m, wmat_model *ref, int bits)
{
    const wmat_config *c = wmat_model_config(m);
    for (int l = 0; l < c->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k);
            wmat_qresult q;
            rtn_ggml(&q, t->data, t->shape[0], t->shape[1], bits);
            if (ref) { /* the f32 twin gets its own copy (its data may be a read-only mapping) */
                wmat_tensor *tr = wmat_model_linear(ref, l, (wmat_linear_kind)k);
                float *buf = malloc(tr->nbytes);
                round_scales(&q);
                wmat_qresult_dequant(&q, buf);
                if (tr->flags & WMAT_TF_OWNED) free(tr->data);
                tr->data = buf;
                tr->flags |= WMAT_TF_OWNED;
            }
            TU_OK(wmat_model_set_quantized(m, t->name, &q));
            assert_int_equal(t->dtype, WMAT_QPACKED);
            wmat_qresult_free(&q);
        }
}

static long file_size(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

static void test_native_and_gguf_mix4m(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/mix4m.bin");
    size_t n_ids;
    const int32_t *ids = eval_tokens(&n_ids);
    if (!ids) {
        print_message("SKIP: no eval tokens\n");
        skip();
        return;
    }
    const int T = 64;
    wmat_model *orig = load(bin), *m = load(bin), *ref = load(bin);
    quantize_model(m, ref, 4);
    wmat_quant_size qs;
    wmat_model_quant_size(m, &qs);
    print_message("  mix4m 4-bit g32: %d packed tensors, %.3f bits/weight packed, %.3f for the whole model\n", qs.n_packed,
                  qs.packed_bits_per_weight, qs.model_bits_per_weight);
    TU_ASSERT_NEAR(qs.packed_bits_per_weight, 4.5, 1e-9); /* 4 bits + 16/32 of scale */

    /* packed runtime vs the dequantized weights in fp32 */
    float *lq = logits_of(m, ids, T), *lr = logits_of(ref, ids, T);
    const size_t V = (size_t)wmat_model_config(m)->vocab_size;
    double d = max_rel_diff(lr, lq, (size_t)T * V);
    print_message("  batched logits, packed vs dequantized f32: max rel diff %.2e\n", d);
    assert_true(d < 1e-4);
    float *dq = decode_logits_act8(m, ids, 16, 0), *dr = decode_logits_act8(ref, ids, 16, 0);
    d = max_rel_diff(dr, dq, 16 * V);
    print_message("  decode logits, packed (fp32 activations) vs dequantized f32: max rel diff %.2e\n", d);
    assert_true(d < 1e-4);
    /* int8-activation decode (VNNI's packed kernel, or on AVX2 the q4_0 row
     * kernel for symmetric 4-bit g32): activation rounding only, same argmax */
    {
        float *d8 = decode_logits_act8(m, ids, 16, 1);
        d = max_rel_diff(dr, d8, 16 * V);
        int same = 0;
        for (int t = 0; t < 16; t++) {
            size_t a = 0, b = 0;
            for (size_t v = 1; v < V; v++) {
                if (dr[t * V + v] > dr[t * V + a]) a = v;
                if (d8[t * V + v] > d8[t * V + b]) b = v;
            }
            same += a == b;
        }
        print_message("  decode logits, packed (int8 activations) vs dequantized f32: max rel diff %.2e, argmax "
                      "equal at %d of 16 positions\n", d, same);
        assert_true(d < 2e-2);
        assert_true(same >= 15);
        free(d8);
    }

    /* native directory: sizes, then a memory-mapped load with identical logits */
    const char *dir = tu_tmp("mix4m-q4");
    TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_QUANT));
    assert_int_equal(wmat_detect_format(dir), WMAT_FMT_QUANT);
    char st[1024];
    snprintf(st, sizeof st, "%s/model.safetensors", dir);
    const long fs = file_size(st);
    const long want = (long)(qs.packed_bytes + qs.other_bytes);
    print_message("  model.safetensors %ld bytes = packed %llu + other %llu + header %ld\n", fs,
                  (unsigned long long)qs.packed_bytes, (unsigned long long)qs.other_bytes, fs - want);
    assert_true(fs >= want && fs - want < 64 * 1024);
    wmat_model *back = load(dir);
    assert_int_equal(wmat_model_format(back), WMAT_FMT_QUANT);
    wmat_tensor *t0 = wmat_model_linear(back, 0, WMAT_LIN_Q);
    assert_int_equal(t0->dtype, WMAT_QPACKED);
    assert_false(t0->flags & 0u);
    float *lb = logits_of(back, ids, T);
    assert_memory_equal(lb, lq, (size_t)T * V * 4);
    float *db = decode_logits_act8(back, ids, 16, 0);
    assert_memory_equal(db, dq, 16 * V * 4);

    /* GGUF: bytes equal ggml's own Q4_0 of the original weights; logits agree */
    const char *gpath = tu_tmp("mix4m-q4.gguf");
    TU_OK(wmat_quant_model_save(back, gpath, WMAT_FMT_GGUF));
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 0;
    wmat_model *graw = NULL;
    TU_OK(wmat_model_load(&graw, gpath, &lp));
    for (int l = 0; l < wmat_model_config(m)->n_layers; l++)
        for (int k = 0; k < WMAT_LIN_COUNT; k++) {
            const wmat_tensor *tg = wmat_model_linear(graw, l, (wmat_linear_kind)k);
            const wmat_tensor *to = wmat_model_linear(orig, l, (wmat_linear_kind)k);
            assert_int_equal(tg->dtype, WMAT_Q4_0);
            void *mine = malloc(tg->nbytes);
            TU_OK(wmat_from_f32(mine, WMAT_Q4_0, to->data, (uint64_t)wmat_tensor_nelem(to)));
            assert_memory_equal(mine, tg->data, tg->nbytes);
            free(mine);
        }
    wmat_model_free(graw);
    wmat_model *g = load(gpath);
    float *lg = logits_of(g, ids, T);
    d = max_rel_diff(lq, lg, (size_t)T * V);
    print_message("  GGUF Q4_0 (loaded as f32) vs native packed: max rel logit diff %.2e\n", d);
    assert_true(d < 1e-4);

    /* 8-bit: Q8_0 */
    wmat_model *m8 = load(bin);
    quantize_model(m8, NULL, 8);
    const char *g8 = tu_tmp("mix4m-q8.gguf");
    TU_OK(wmat_quant_model_save(m8, g8, WMAT_FMT_GGUF));
    TU_OK(wmat_model_load(&graw, g8, &lp));
    const wmat_tensor *tg8 = wmat_model_linear(graw, 2, WMAT_LIN_DOWN), *to8 = wmat_model_linear(orig, 2, WMAT_LIN_DOWN);
    assert_int_equal(tg8->dtype, WMAT_Q8_0);
    void *mine = malloc(tg8->nbytes);
    TU_OK(wmat_from_f32(mine, WMAT_Q8_0, to8->data, (uint64_t)wmat_tensor_nelem(to8)));
    assert_memory_equal(mine, tg8->data, tg8->nbytes);
    free(mine);
    wmat_model_free(graw);

    /* CLI: info / eval / generate on the native directory */
    char cmd[2048];
    int code;
    if (file_size(tu_cli()) < 0) {
        print_message("  (CLI not built: wmat info/generate not checked)\n");
        goto cli_done;
    }
    snprintf(cmd, sizeof cmd, "'%s' info '%s' 2>&1", tu_cli(), dir);
    char *out = tu_run(cmd, &code);
    if (code != 0 || !strstr(out, "qpacked")) fail_msg("wmat info failed (%d):\n%s", code, out);
    free(out);
    snprintf(cmd, sizeof cmd, "'%s' generate '%s' --prompt 'Once upon a time' --steps 24 --temp 0 2>&1", tu_cli(), dir);
    out = tu_run(cmd, &code);
    if (code != 0) fail_msg("wmat generate failed (%d):\n%s", code, out);
    print_message("  wmat generate on the native 4-bit directory: %.200s\n", out);
    free(out);
cli_done:

    free(lq), free(lr), free(dq), free(dr), free(lb), free(db), free(lg);
    wmat_model_free(g);
    wmat_model_free(m8);
    wmat_model_free(back);
    wmat_model_free(orig);
    wmat_model_free(m);
    wmat_model_free(ref);
}

/* ---- GPTQ checkpoints, read back by a reader written here from the format
 * description (AutoGPTQ's layout), not by wmat's code. */

typedef struct {
    char name[160];
    char dtype[8];
    int64_t shape[2];
    int ndim;
    const unsigned char *data;
} st_view;

/* The tensors of a safetensors file: 8-byte header length, JSON header,
 * data. Returns the count; *buf holds the file (caller frees). */
static int st_read_all(const char *path, unsigned char **buf, st_view *v, int max)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)n + 1);
    assert_int_equal(fread(*buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | (*buf)[i];
    char *hdr = malloc(hl + 1);
    memcpy(hdr, *buf + 8, hl);
    hdr[hl] = 0;
    cJSON *root = cJSON_Parse(hdr);
    assert_non_null(root);
    int k = 0;
    for (cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        assert_true(k < max);
        st_view *t = &v[k++];
        snprintf(t->name, sizeof t->name, "%s", e->string);
        snprintf(t->dtype, sizeof t->dtype, "%s", cJSON_GetObjectItem(e, "dtype")->valuestring);
        cJSON *sh = cJSON_GetObjectItem(e, "shape");
        t->ndim = cJSON_GetArraySize(sh);
        for (int d = 0; d < t->ndim && d < 2; d++) t->shape[d] = (int64_t)cJSON_GetArrayItem(sh, d)->valuedouble;
        t->data = *buf + 8 + hl + (int64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), 0)->valuedouble;
    }
    cJSON_Delete(root);
    free(hdr);
    return k;
}

static const st_view *st_get(const st_view *v, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].name, name)) return &v[i];
    fail_msg("tensor %s missing", name);
    return NULL;
}

static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

/* Value b bits wide at bit position pos of a little-endian stream of 32-bit
 * words, word j at byte offset j * stride_bytes. */
static uint32_t get_bits(const unsigned char *base, int64_t stride_bytes, int64_t pos, int b)
{
    const int64_t j = pos / 32;
    const int off = (int)(pos % 32);
    uint64_t w = rd32(base + j * stride_bytes);
    if (off + b > 32) w |= (uint64_t)rd32(base + (j + 1) * stride_bytes) << 32;
    return (uint32_t)(w >> off) & ((1u << b) - 1);
}

/* W (R x C, HF row order) from a layer's four GPTQ tensors. */
static void gptq_dequant(const st_view *v, int n, const char *base, int bits, int64_t R, int64_t C, float *W)
{
    char nm[200];
    snprintf(nm, sizeof nm, "%s.qweight", base);
    const st_view *qw = st_get(v, n, nm);
    snprintf(nm, sizeof nm, "%s.qzeros", base);
    const st_view *qz = st_get(v, n, nm);
    snprintf(nm, sizeof nm, "%s.scales", base);
    const st_view *sc = st_get(v, n, nm);
    snprintf(nm, sizeof nm, "%s.g_idx", base);
    const st_view *gi = st_get(v, n, nm);
    assert_string_equal(qw->dtype, "I32");
    assert_string_equal(sc->dtype, "F16");
    assert_true(qw->shape[0] == C * bits / 32 && qw->shape[1] == R);
    assert_true(qz->shape[1] == R * bits / 32 && sc->shape[1] == R && gi->shape[0] == C && qz->shape[0] == sc->shape[0]);
    for (int64_t k = 0; k < C; k++) {
        const int32_t g = (int32_t)rd32(gi->data + 4 * k);
        assert_true(g >= 0 && g < sc->shape[0]);
        for (int64_t i = 0; i < R; i++) {
            const uint32_t q = get_bits(qw->data + 4 * i, 4 * R, k * bits, bits);
            const uint32_t z = get_bits(qz->data + 4 * g * (R * bits / 32), 4, i * bits, bits) + 1;
            const uint16_t h = (uint16_t)(sc->data[2 * (g * R + i)] | sc->data[2 * (g * R + i) + 1] << 8);
            W[i * C + k] = wmat_f16_to_f32(h) * ((float)q - (float)z);
        }
    }
}

/* Every quantized layer of a model with each scheme GPTQ holds (2, 3, 4, 8
 * bits; symmetric and asymmetric; groups and per-channel; act-order) is
 * written as a GPTQ checkpoint whose independent dequantization equals
 * wmat's packed values exactly (q and k in HF's rotary row order); the
 * configs say the scheme; schemes GPTQ cannot hold are refused naming the
 * tensor, before anything is written. */
static void test_gptq_export(void **state)
{
    (void)state;
    wmat_config c = {0};
    c.dim = 64, c.hidden_dim = 128, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 32, c.seq_len = 16;
    struct {
        int bits, sym, group, perm;
    } cases[] = {{4, 1, 32, 0}, {3, 0, 32, 1}, {2, 0, 0, 0}, {8, 1, 64, 1}};
    wmat_rng rng;
    wmat_rng_seed(&rng, 11);
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        wmat_model *m;
        TU_OK(wmat_model_create(&m, &c));
        TU_OK(wmat_model_init_random(m, 5, 0.05f));
        const wmat_config *mc = wmat_model_config(m);
        for (int l = 0; l < mc->n_layers; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k);
                wmat_qresult q;
                const int g = cases[ci].group ? cases[ci].group : (int)t->shape[1];
                random_qresult(&q, &rng, cases[ci].bits, cases[ci].sym, WMAT_QAXIS_IN, g, t->shape[0], t->shape[1],
                               cases[ci].perm);
                for (int64_t j = 0; j < wmat_qresult_n_groups(&q); j++)
                    if (q.zeros[j] == 0) q.zeros[j] = 1; /* v1 stores zero - 1 */
                TU_OK(wmat_model_set_quantized(m, t->name, &q));
                wmat_qresult_free(&q);
            }
        const char *dir = tu_tmp("gptq");
        TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_GPTQ));
        char path[4200];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        unsigned char *buf;
        st_view v[128];
        const int n = st_read_all(path, &buf, v, 128);
        const int hd = mc->head_dim;
        for (int l = 0; l < mc->n_layers; l++)
            for (int k = 0; k < WMAT_LIN_COUNT; k++) {
                wmat_tensor *t = wmat_model_linear(m, l, (wmat_linear_kind)k);
                const int64_t R = t->shape[0], C = t->shape[1];
                float *want = malloc((size_t)(R * C) * sizeof(float)), *got = malloc((size_t)(R * C) * sizeof(float));
                TU_OK(wmat_tensor_dequant_rows(t, 0, R, want));
                char base[160];
                snprintf(base, sizeof base, "%.*s", (int)(strlen(t->name) - 7), t->name);
                gptq_dequant(v, n, base, cases[ci].bits, R, C, got);
                const int rope = k == WMAT_LIN_Q || k == WMAT_LIN_K;
                for (int64_t i = 0; i < R; i++) {
                    /* HF's rotary order: per head, the even rows of the
                     * interleaved pairs first, then the odd ones */
                    const int64_t h = i / hd, j = i % hd;
                    const int64_t src = rope ? h * hd + (j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1) : i;
                    for (int64_t x = 0; x < C; x++)
                        if (!(got[i * C + x] == want[src * C + x]))
                            fail_msg("case %zu %s: (%lld, %lld) GPTQ %g, wmat %g", ci, t->name, (long long)i, (long long)x,
                                     got[i * C + x], want[src * C + x]);
                }
                free(want), free(got);
            }
        free(buf);
        snprintf(path, sizeof path, "%s/quantize_config.json", dir);
        int code;
        char cmd[4300];
        snprintf(cmd, sizeof cmd, "cat '%s'", path);
        char *qc = tu_run(cmd, &code);
        cJSON *j = cJSON_Parse(qc);
        assert_non_null(j);
        assert_int_equal(cJSON_GetObjectItem(j, "bits")->valueint, cases[ci].bits);
        assert_int_equal(cJSON_GetObjectItem(j, "group_size")->valueint, cases[ci].group ? cases[ci].group : -1);
        assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(j, "desc_act")), cases[ci].perm);
        assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(j, "sym")), cases[ci].sym);
        cJSON_Delete(j);
        free(qc);
        wmat_model_free(m);
    }
    /* refused, naming the tensor, nothing written: groups along outputs, 5
     * bits, a zero point of 0 */
    struct {
        int bits, sym, axis, zero0;
        const char *why;
    } bad[] = {{4, 1, 1, 0, "along the outputs"}, {5, 1, 0, 0, "2, 3, 4 or 8 bits"}, {4, 0, 0, 1, "zero point 0"}};
    for (size_t bi = 0; bi < sizeof bad / sizeof bad[0]; bi++) {
        wmat_model *m;
        TU_OK(wmat_model_create(&m, &c));
        wmat_tensor *t = wmat_model_linear(m, 1, WMAT_LIN_UP);
        wmat_qresult q;
        random_qresult(&q, &rng, bad[bi].bits, bad[bi].sym, (wmat_qaxis)bad[bi].axis, bad[bi].axis ? (int)t->shape[0] : 32,
                       t->shape[0], t->shape[1], 0);
        if (!bad[bi].sym)
            for (int64_t g = 0; g < wmat_qresult_n_groups(&q); g++) q.zeros[g] = bad[bi].zero0 && g == 5 ? 0.0f : 3.0f;
        TU_OK(wmat_model_set_quantized(m, t->name, &q));
        wmat_qresult_free(&q);
        const char *dir = tu_tmp("gptq-bad");
        int rc = wmat_quant_model_save(m, dir, WMAT_FMT_GPTQ);
        assert_int_equal(rc, WMAT_ERR_UNSUPPORTED);
        if (!strstr(wmat_last_error(), t->name) || !strstr(wmat_last_error(), bad[bi].why))
            fail_msg("message should name %s and '%s': %s", t->name, bad[bi].why, wmat_last_error());
        char path[4200];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        struct stat st;
        assert_int_not_equal(stat(path, &st), 0);
        wmat_model_free(m);
    }
}

static void test_gguf_unsupported_schemes(void **state)
{
    (void)state;
    wmat_config c = {0};
    c.dim = 64, c.hidden_dim = 128, c.n_layers = 1, c.n_heads = 4, c.vocab_size = 32, c.seq_len = 16;
    wmat_model *m;
    TU_OK(wmat_model_create(&m, &c));
    wmat_rng rng;
    wmat_rng_seed(&rng, 3);
    struct {
        int bits, sym, axis, group, perm;
        const char *why;
    } cases[] = {{3, 1, 0, 32, 0, "only 4-bit"}, {4, 0, 0, 32, 0, "asymmetric"}, {4, 1, 1, 64, 0, "outputs"},
                 {4, 1, 0, 64, 0, "32 inputs"},  {4, 1, 0, 32, 1, "permutation"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        wmat_tensor *t = wmat_model_linear(m, 0, WMAT_LIN_UP);
        wmat_qresult q;
        random_qresult(&q, &rng, cases[i].bits, cases[i].sym, (wmat_qaxis)cases[i].axis, cases[i].group, t->shape[0],
                       t->shape[1], cases[i].perm);
        TU_OK(wmat_model_set_quantized(m, t->name, &q));
        wmat_qresult_free(&q);
        int rc = wmat_quant_model_save(m, tu_tmp("bad.gguf"), WMAT_FMT_GGUF);
        assert_int_equal(rc, WMAT_ERR_UNSUPPORTED);
        if (!strstr(wmat_last_error(), t->name) || !strstr(wmat_last_error(), cases[i].why))
            fail_msg("message should name the tensor and why (%s): %s", cases[i].why, wmat_last_error());
        /* the native directory holds every scheme */
        TU_OK(wmat_quant_model_save(m, tu_tmp("any-scheme"), WMAT_FMT_QUANT));
        wmat_model *b = load(tu_tmp("any-scheme"));
        const wmat_qtensor *qa = wmat_tensor_qtensor(t), *qb = wmat_tensor_qtensor(wmat_model_linear(b, 0, WMAT_LIN_UP));
        assert_non_null(qb);
        assert_int_equal(qa->bits, qb->bits);
        assert_int_equal(qa->axis, qb->axis);
        assert_memory_equal(qa->codes, qb->codes, (size_t)(qa->rows * qa->row_bytes));
        assert_memory_equal(qa->scales, qb->scales, (size_t)qa->n_groups * 2);
        assert_true((qa->perm == NULL) == (qb->perm == NULL));
        wmat_model_free(b);
    }
    /* the token embedding stays f32 */
    wmat_qresult q;
    random_qresult(&q, &rng, 4, 1, WMAT_QAXIS_IN, 32, 32, 64, 0);
    assert_int_equal(wmat_model_set_quantized(m, "model.embed_tokens.weight", &q), WMAT_ERR_UNSUPPORTED);
    wmat_qresult_free(&q);
    wmat_model_free(m);
}

/* ------------------------------------------------------------ memory */

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

static void test_resident_memory(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/mix4m.bin");
    size_t n_ids;
    const int32_t *ids = eval_tokens(&n_ids);
    if (!ids) skip();
    const char *dir = tu_tmp("mix4m-q4-rss");
    {
        wmat_model *m = load(bin);
        quantize_model(m, NULL, 4);
        TU_OK(wmat_quant_model_save(m, dir, WMAT_FMT_QUANT));
        wmat_model_free(m);
    }
    const long r0 = rss_kb();
    wmat_model *m = load(dir);
    const long r1 = rss_kb();
    wmat_runtime *rt;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = 64;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    float *lg = malloc((size_t)64 * 512 * 4);
    TU_OK(wmat_forward(rt, ids, 64, lg));
    for (int t = 0; t < 8; t++) TU_OK(wmat_decode(rt, ids[t], t, lg));
    const long r2 = rss_kb();
    wmat_quant_size qs;
    wmat_model_quant_size(m, &qs);
    const double packed_kb = (double)qs.packed_bytes / 1024, other_kb = (double)qs.other_bytes / 1024,
                 act_kb = (double)wmat_runtime_bytes(rt) / 1024;
    const double f32_kb = (double)(qs.packed_weights + qs.other_weights) * 4 / 1024;
    print_message("  VmRSS: +%ld KB after loading (mapped), +%ld KB after a 64-token forward and 8 decodes;\n"
                  "         packed %.0f KB + other tensors %.0f KB + runtime %.0f KB = %.0f KB (the f32 model: %.0f KB)\n",
                  r1 - r0, r2 - r0, packed_kb, other_kb, act_kb, packed_kb + other_kb + act_kb, f32_kb);
    /* Mapped, not copied: loading touches little; running touches the packed
     * file, activations and per-call scratch (tile buffers), never an f32 copy. */
#if defined(__SANITIZE_ADDRESS__)
    print_message("  (AddressSanitizer build: shadow memory and quarantine inflate VmRSS; bounds not checked)\n");
#else
    assert_true(r1 - r0 < packed_kb + 1024);
    assert_true(r2 - r0 < packed_kb + other_kb + act_kb + 8192);
#endif
    free(lg);
    wmat_runtime_free(rt);
    wmat_model_free(m);
}

/* ------------------------------------------------------------ llama.cpp */

/* Token ids in, so that tokenization plays no part: greedy tokens after a
 * prompt, then the mean NLL of a window (llama.cpp's softmax of each
 * position's logits), with node-llama-cpp's controlledEvaluate. */
static const char g_peer_script[] =
    "import {createRequire} from 'module';\n"
    "const require = createRequire(import.meta.url);\n"
    "const lib = await import(require.resolve('node-llama-cpp', {paths: (process.env.NODE_PATH || '').split(':')}));\n"
    "const [model_path, prompt_s, n, window_s] = process.argv.slice(2);\n"
    "const llama = await lib.getLlama({gpu: false, build: 'never', logLevel: 'error'});\n"
    "const model = await llama.loadModel({modelPath: model_path});\n"
    "const context = await model.createContext({contextSize: Math.min(model.trainContextSize || 2048, 2048), threads: 2});\n"
    "const seq = context.getSequence();\n"
    "const greedy = [];\n"
    "for await (const t of seq.evaluate(prompt_s.split(',').map(Number), {temperature: 0})) {\n"
    "  greedy.push(t); if (greedy.length >= Number(n)) break; }\n"
    "await seq.clearHistory();\n"
    "const w = window_s.split(',').map(Number);\n"
    "const input = w.slice(0, -1).map((t) => [t, {generateNext: {probabilities: true}}]);\n"
    "const res = await seq.controlledEvaluate(input);\n"
    "let nll = 0;\n"
    "for (let i = 0; i < input.length; i++) nll -= Math.log(res[i]?.next?.probabilities?.get(w[i + 1]) ?? 0);\n"
    "console.log('RESULT ' + JSON.stringify({greedy, mean_nll: nll / input.length}));\n";

static char *join_ids(const int32_t *ids, size_t n)
{
    char *s = malloc(n * 8 + 1), *p = s;
    for (size_t i = 0; i < n; i++) p += sprintf(p, "%s%d", i ? "," : "", ids[i]);
    *p = '\0';
    return s;
}

static void test_llamacpp_q4_0(void **state)
{
    (void)state;
    TU_NEED_DATA(bin, "models/mix4m.bin");
    TU_NEED_DATA(wiki, "golden/wikitext2_valid_tokenized.tok512.u16");
    char nlc[1024];
    const char *why = NULL;
    if (!llamacpp_script(nlc, sizeof nlc, &why)) {
        print_message("SKIP: llama.cpp peer check: %s\n", why);
        skip();
        return;
    }
    wmat_model *m = load(bin);
    quantize_model(m, NULL, 4);
    const char *gpath = tu_tmp("peer-mix4m-q4.gguf");
    TU_OK(wmat_quant_model_save(m, gpath, WMAT_FMT_GGUF));
    const char *script = tu_tmp("peer_ids.mjs");
    assert_int_equal(tu_write_file(script, g_peer_script, strlen(g_peer_script)), 0);

    /* wmat: greedy after the prompt, on the native packed model */
    wmat_tokenizer *tok = wmat_model_tokenizer(m);
    assert_non_null(tok);
    int32_t *pids = NULL;
    size_t np = 0;
    TU_OK(wmat_tokenizer_encode(tok, "Once upon a time", 16, 1, 0, &pids, &np));
    const int N = 40;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, NULL));
    const int V = wmat_runtime_vocab(rt);
    float *lg = malloc((size_t)V * 256 * 4);
    int32_t mine[40], tokn = 0;
    for (size_t pos = 0; pos + 1 < np + (size_t)N; pos++) {
        tokn = pos < np ? pids[pos] : tokn;
        TU_OK(wmat_decode(rt, tokn, (int)pos, lg));
        if (pos + 1 < np) continue;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (lg[v] > lg[best]) best = v;
        mine[pos + 1 - np] = best;
        tokn = best;
    }
    wmat_runtime_free(rt);
    /* wmat: mean NLL of a 256-token wikitext window (BOS + 255) */
    int32_t *wids = NULL;
    size_t nw = 0;
    TU_OK(wmat_read_tokens_u16(wiki, &wids, &nw));
    const int W = 256;
    int32_t win[256];
    win[0] = 1;
    memcpy(win + 1, wids, (W - 1) * sizeof(int32_t));
    float *wl = logits_of(m, win, W - 1);
    double nll = 0;
    for (int t = 0; t < W - 1; t++) {
        const float *row = wl + (size_t)t * V;
        double mx = row[0], sum = 0;
        for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
        for (int v = 0; v < V; v++) sum += exp(row[v] - mx);
        nll += -(row[win[t + 1]] - mx - log(sum));
    }
    nll /= W - 1;

    char *ps = join_ids(pids, np), *ws = join_ids(win, W);
    size_t cap = strlen(ps) + strlen(ws) + 4096;
    char *cmd = malloc(cap);
    snprintf(cmd, cap, "cd '%s' && NODE_PATH='%s/node_modules' timeout 300 node '%s' '%s' '%s' %d '%s' 2>&1", tu_tmpdir(), nlc,
             script, gpath, ps, N, ws);
    int code;
    char *out = tu_run(cmd, &code);
    const char *res = out ? strstr(out, "RESULT ") : NULL;
    if (code != 0 || !res) fail_msg("llama.cpp could not run %s (%d):\n%s", gpath, code, out ? out : "");
    const char *g = strstr(res, "\"greedy\":[");
    const char *nl = strstr(res, "\"mean_nll\":");
    assert_non_null(g);
    assert_non_null(nl);
    g += 10;
    int theirs[40], n_theirs = 0;
    while (n_theirs < N && *g && *g != ']') {
        theirs[n_theirs++] = (int)strtol(g, (char **)&g, 10);
        if (*g == ',') g++;
    }
    const double their_nll = strtod(nl + 11, NULL);
    int match = 0;
    while (match < n_theirs && match < N && theirs[match] == mine[match]) match++;
    const double ppl = exp(nll), their_ppl = exp(their_nll);
    print_message("  llama.cpp on wmat's Q4_0 GGUF of mix4m: %d of %d greedy tokens equal to wmat's native 4-bit model;\n"
                  "  perplexity of a 256-token wikitext window: wmat %.4f, llama.cpp %.4f (%+.3f%%)\n",
                  match, n_theirs, ppl, their_ppl, 100.0 * (their_ppl / ppl - 1.0));
    assert_int_equal(n_theirs, N);
    assert_true(match >= 32);
    TU_ASSERT_NEAR(their_ppl / ppl, 1.0, 0.01);
    free(out);
    free(cmd);
    free(ps);
    free(ws);
    free(wl);
    free(wids);
    free(lg);
    free(pids);
    wmat_model_free(m);
}

int main(void)
{
    wmat_linalg_init(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_roundtrip_and_sizes),
        cmocka_unit_test(test_bit_layouts),
        cmocka_unit_test(test_pack_errors),
        cmocka_unit_test(test_kernels_vs_reference),
        cmocka_unit_test(test_act8_decode),
        cmocka_unit_test(test_native_and_gguf_mix4m),
        cmocka_unit_test(test_gguf_unsupported_schemes),
        cmocka_unit_test(test_gptq_export),
        cmocka_unit_test(test_resident_memory),
        cmocka_unit_test(test_llamacpp_q4_0),
    };
    return tu_run_tests("qstore", tests, NULL, NULL);
}
