/* CBQ (src/quant/cbq.c, src/train/reconstruct.c): LoRA-Rounding's gradient
 * against central differences; window 1 with no steps is RTN; the rounding
 * variables end at 0 or 1 under the annealed regularizer; the
 * reconstruction lowers a window's output error on stories260K's first
 * block pair; the packed model (written and loaded) gives the fake-quant
 * model's logits. */
#include "test_util.h"
#include "train_util.h"

#include "quant/cbq.h"
#include "quant/qmodel.h"
#include "train/reconstruct.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- LoRA-Rounding against central differences */

/* L = sum G * Wq(soft) + reg * mean(1 - |2h-1|^beta) */
static double round_loss(wmat_cbq_round *r, const float *G, float *Wq, double reg, double beta, float *dV)
{
    wmat__cbq_round_weights(r, Wq, 0, 1);
    double s = 0.0;
    const int64_t n = r->rows * r->cols;
    for (int64_t i = 0; i < n; i++) s += (double)G[i] * Wq[i];
    /* the regularizer's value, from the backward with no gradient wanted */
    float *zero = calloc((size_t)n, sizeof(float));
    float *a1 = calloc((size_t)(r->rows * r->rank), sizeof(float)), *a2 = calloc((size_t)(r->rank * r->cols), sizeof(float));
    float *u = calloc((size_t)r->n_groups, sizeof(float));
    s += wmat__cbq_round_backward(r, zero, reg, beta, a1, a2, u, dV, 1);
    free(zero), free(a1), free(a2), free(u);
    return s;
}

static void test_lora_rounding_fd(void **state)
{
    (void)state;
    const int rows = 8, cols = 64, rank = 2;
    float *W = malloc(sizeof(float) * rows * cols), *G = malloc(sizeof(float) * rows * cols);
    float *Wq = malloc(sizeof(float) * rows * cols), *dV = malloc(sizeof(float) * rows * cols);
    wmat_rng g;
    wmat_rng_seed(&g, 7);
    for (int i = 0; i < rows * cols; i++) W[i] = 0.05f * wmat_rng_normal(&g), G[i] = wmat_rng_normal(&g);
    wmat_qparams p = wmat__qparams_default();
    p.bits = 3;
    p.group = 32;
    wmat_qresult q;
    TU_OK(wmat__quant_rtn(&q, W, rows, cols, NULL, &p, NULL));
    wmat_cbq_round r;
    TU_OK(wmat__cbq_round_init(&r, W, &q, rank, 3));
    for (int i = 0; i < rows * rank; i++) r.A1[i] = 0.5f * wmat_rng_normal(&g);
    for (int64_t i = 0; i < r.n_groups; i++) r.u[i] = 0.05f * wmat_rng_normal(&g);
    const double reg = 0.3, beta = 3.0;
    /* analytic */
    float *gA1 = calloc((size_t)rows * rank, sizeof(float)), *gA2 = calloc((size_t)rank * cols, sizeof(float));
    float *gu = calloc((size_t)r.n_groups, sizeof(float));
    wmat__cbq_round_weights(&r, Wq, 0, 1);
    wmat__cbq_round_backward(&r, G, reg, beta, gA1, gA2, gu, dV, 1);
    /* numeric, every parameter */
    struct {
        float *x, *gx;
        int n;
        const char *name;
    } sets[] = {{r.A1, gA1, rows * rank, "A1"}, {r.A2, gA2, rank * cols, "A2"}, {r.u, gu, (int)r.n_groups, "u"}};
    for (size_t s = 0; s < 3; s++) {
        double maxfd = 0.0, maxerr = 0.0;
        for (int i = 0; i < sets[s].n; i++) {
            const float h = 1e-3f, x0 = sets[s].x[i];
            sets[s].x[i] = x0 + h;
            const double lp = round_loss(&r, G, Wq, reg, beta, dV);
            sets[s].x[i] = x0 - h;
            const double lm = round_loss(&r, G, Wq, reg, beta, dV);
            sets[s].x[i] = x0;
            const double fd = (lp - lm) / (2.0 * h);
            maxfd = fmax(maxfd, fabs(fd));
            maxerr = fmax(maxerr, fabs(fd - sets[s].gx[i]));
        }
        print_message("LoRA-Rounding d/d%s: max |fd| %.4g, max |fd - analytic| %.3g\n", sets[s].name, maxfd, maxerr);
        assert_true(maxfd > 1e-3);
        TU_ASSERT_BELOW(maxerr, 2e-2 * maxfd + 1e-4);
    }
    wmat__cbq_round_free(&r);
    wmat_qresult_free(&q);
    free(W), free(G), free(Wq), free(dV), free(gA1), free(gA2), free(gu);
}

/* The regularizer alone (no reconstruction loss), annealed as in the
 * reconstruction (beta 20 -> 2 after 20% of the steps), drives every
 * rounding variable of a LoRA-Rounding matrix to 0 or 1. */
static void test_regularizer_drives_bits(void **state)
{
    (void)state;
    const int rows = 16, cols = 64, rank = 4, steps = 1500;
    float *W = malloc(sizeof(float) * rows * cols), *G = calloc((size_t)rows * cols, sizeof(float));
    float *Wq = malloc(sizeof(float) * rows * cols), *dV = malloc(sizeof(float) * rows * cols);
    wmat_rng g;
    wmat_rng_seed(&g, 17);
    for (int i = 0; i < rows * cols; i++) W[i] = 0.05f * wmat_rng_normal(&g);
    wmat_qparams p = wmat__qparams_default();
    p.bits = 2;
    wmat_qresult q;
    TU_OK(wmat__quant_rtn(&q, W, rows, cols, NULL, &p, NULL));
    wmat_cbq_round r;
    TU_OK(wmat__cbq_round_init(&r, W, &q, rank, 5));
    const int na1 = rows * rank, na2 = rank * cols, nu = (int)r.n_groups;
    float *gr = calloc((size_t)(na1 + na2 + nu), sizeof(float)), *m = calloc((size_t)(na1 + na2 + nu), sizeof(float)),
          *v = calloc((size_t)(na1 + na2 + nu), sizeof(float));
    wmat__cbq_round_weights(&r, Wq, 0, 1);
    const double soft0 = wmat__cbq_round_soft_fraction(&r, 1e-3);
    const int warm = steps / 5;
    for (int it = 0; it < steps; it++) {
        memset(gr, 0, sizeof(float) * (size_t)(na1 + na2 + nu));
        wmat__cbq_round_weights(&r, Wq, 0, 1);
        const double beta = it < warm ? 20.0 : 2.0 + 18.0 * (1.0 - (double)(it - warm) / (double)(steps - warm));
        wmat__cbq_round_backward(&r, G, 1.0, beta, gr, gr + na1, gr + na1 + na2, dV, 1);
        float *par[3] = {r.A1, r.A2, r.u};
        const int off[3] = {0, na1, na1 + na2}, len[3] = {na1, na2, nu};
        for (int s = 0; s < 2; s++) /* the step sizes have no gradient here */
            for (int i = 0; i < len[s]; i++) {
                const int k = off[s] + i;
                m[k] = 0.9f * m[k] + 0.1f * gr[k];
                v[k] = 0.999f * v[k] + 0.001f * gr[k] * gr[k];
                const double mh = m[k] / (1 - pow(0.9, it + 1)), vh = v[k] / (1 - pow(0.999, it + 1));
                par[s][i] -= (float)(1e-2 * mh / (sqrt(vh) + 1e-8));
            }
    }
    wmat__cbq_round_weights(&r, Wq, 0, 1);
    const double soft1 = wmat__cbq_round_soft_fraction(&r, 1e-3);
    print_message("rounding variables inside (1e-3, 1 - 1e-3): %.2f%% at the start, %.2f%% after %d steps\n", 100 * soft0,
                  100 * soft1, steps);
    assert_true(soft0 > 0.9);
    TU_ASSERT_BELOW(soft1, 0.01);
    wmat__cbq_round_free(&r);
    wmat_qresult_free(&q);
    free(W), free(G), free(Wq), free(dV), free(gr), free(m), free(v);
}

/* ---- the method and the reconstruction on whole models */

static wmat_qparams cbq_params(const char *kv)
{
    const wmat_qmethod *m = wmat__qmethod_find("cbq");
    assert_non_null(m);
    assert_true(m->flags & WMAT_QM_RECONSTRUCT);
    wmat_pset ps;
    TU_OK(wmat__pset_init(&ps, m->schema));
    TU_OK(wmat__pset_parse_kv(&ps, kv, ',', 1));
    wmat_qparams qp;
    wmat__qparams_from(&ps, &qp);
    wmat__pset_free(&ps);
    return qp;
}

/* Quantize q with method (kv) and, for cbq, reconstruct against fp. */
static wmat_qresult *quantize(wmat_model *fp, wmat_model *q, const char *method, const char *kv, const int32_t *tok,
                              size_t n, int ctx, wmat_reconstruct_info *info)
{
    wmat_quantize_params p = wmat_quantize_default_params();
    p.method = method;
    p.method_params = kv;
    p.calib = tok;
    p.n_calib = n;
    p.calib_ctx = ctx;
    p.n_threads = 1;
    p.group_fallback = 1;
    wmat_quantize_report rep;
    wmat_qresult *res = NULL;
    TU_OK(wmat__quantize_model(q, &p, &rep, &res));
    wmat_quantize_report_free(&rep);
    if (!strcmp(method, "cbq")) {
        const wmat_qparams qp = cbq_params(kv);
        TU_OK(wmat__reconstruct(fp, q, res, tok, n, ctx, &qp, 1, NULL, NULL, info));
    }
    return res;
}

static void free_results(wmat_model *m, wmat_qresult *res)
{
    for (int i = 0; i < wmat_model_n_tensors(m); i++) wmat_qresult_free(&res[i]);
    wmat__free(res);
}

static void test_window1_no_steps_is_rtn(void **state)
{
    (void)state;
    wmat_model *fp = tu_tiny_model(5, 64, 128, 2), *q = tu_tiny_model(5, 64, 128, 2), *q2 = tu_tiny_model(5, 64, 128, 2);
    const size_t n = 8 * 16;
    int32_t *tok = tu_pattern_tokens(n);
    wmat_reconstruct_info info;
    wmat_qresult *a = quantize(fp, q, "cbq", "bits=2,group=32,cfp=false,cbq_window=1,cbq_iters=0", tok, n, 16, &info);
    wmat_qresult *b = quantize(fp, q2, "rtn", "bits=2,group=32", tok, n, 16, NULL);
    assert_int_equal(info.n_windows, 2);
    int compared = 0;
    for (int i = 0; i < wmat_model_n_tensors(q); i++) {
        if (!a[i].codes) continue;
        assert_non_null(b[i].codes);
        const int64_t nw = a[i].rows * a[i].cols;
        assert_memory_equal(a[i].codes, b[i].codes, (size_t)nw);
        assert_memory_equal(a[i].scales, b[i].scales, sizeof(float) * (size_t)wmat_qresult_n_groups(&a[i]));
        assert_memory_equal(wmat_model_tensor(q, i)->data, wmat_model_tensor(q2, i)->data, sizeof(float) * (size_t)nw);
        compared++;
    }
    assert_int_equal(compared, 14);
    /* the same with CFP on: RTN of the truncated weights, which differ */
    wmat_model *q3 = tu_tiny_model(5, 64, 128, 2);
    wmat_qresult *c = quantize(fp, q3, "cbq", "bits=2,group=32,cbq_window=1,cbq_iters=0", tok, n, 16, &info);
    int differ = 0;
    for (int i = 0; i < wmat_model_n_tensors(q); i++)
        if (c[i].codes && memcmp(c[i].codes, b[i].codes, (size_t)(c[i].rows * c[i].cols))) differ++;
    print_message("CFP changed the RTN codes of %d of 14 matrices\n", differ);
    assert_true(differ > 0);
    free_results(q, a), free_results(q2, b), free_results(q3, c);
    wmat_model_free(fp), wmat_model_free(q), wmat_model_free(q2), wmat_model_free(q3);
    free(tok);
}

static int32_t *read_tokens(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    uint16_t *u = malloc(n * sizeof(uint16_t));
    assert_int_equal(fread(u, sizeof(uint16_t), n, f), n);
    fclose(f);
    int32_t *t = malloc(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) t[i] = u[i];
    free(u);
    return t;
}

/* stories260K at 2 bits per channel, windows of 2 blocks: the first block
 * pair's output error falls by more than 10%, and every window's falls. */
static void test_stories_window_error_and_bits(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(tp, "golden/tinystories_valid_head.tok512.u16");
    wmat_model *fp = tu_load_f32(mp), *q = tu_load_f32(mp);
    const int ctx = 64;
    const size_t n = 8 * ctx;
    int32_t *tok = read_tokens(tp, n);
    wmat_reconstruct_info info;
    wmat_qresult *res = quantize(fp, q, "cbq", "bits=2,cbq_window=2,cbq_iters=60", tok, n, ctx, &info);
    assert_int_equal(info.n_windows, 4);
    for (int w = 0; w < info.n_windows; w++)
        print_message("window %d (blocks %d-%d): output error %.5f -> %.5f, loss %.5f -> %.5f\n", w, info.first[w],
                      info.first[w] + info.blocks[w] - 1, info.err_before[w], info.err_after[w], info.loss_first[w],
                      info.loss_last[w]);
    print_message("rounding variables still soft: %.4f%% of %lld\n", 100 * info.soft_fraction, (long long)info.n_rounding);
    assert_int_equal(info.first[0], 0);
    assert_int_equal(info.blocks[0], 2);
    TU_ASSERT_BELOW(info.err_after[0], 0.9 * info.err_before[0]);
    for (int w = 0; w < info.n_windows; w++) TU_ASSERT_BELOW(info.err_after[w], info.err_before[w]);
    /* the steps run on the hard rounding (straight-through): most soft
     * variables stay inside (0, 1), which the hard forward never reads */
    /* the model holds the results' weights */
    float *D = malloc(sizeof(float) * 172 * 64);
    for (int i = 0; i < wmat_model_n_tensors(q); i++)
        if (res[i].codes) {
            wmat_qresult_dequant(&res[i], D);
            assert_memory_equal(D, wmat_model_tensor(q, i)->data, sizeof(float) * (size_t)(res[i].rows * res[i].cols));
        }
    free(D);
    free_results(q, res);
    wmat_model_free(fp), wmat_model_free(q);
    free(tok);
}

static void logits_of(wmat_model *m, const int32_t *tok, int T, float *out)
{
    wmat_context cx = wmat_context_default();
    cx.n_threads = 1;
    cx.act8 = 0;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = T;
    rp.kv_cache_len = 1;
    rp.ctx = &cx;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    TU_OK(wmat_forward(rt, tok, T, out));
    wmat_runtime_free(rt);
}

static void test_written_model_logits(void **state)
{
    (void)state;
    wmat_model *fp = tu_tiny_model(9, 64, 128, 3), *q = tu_tiny_model(9, 64, 128, 3);
    const size_t n = 8 * 16;
    int32_t *tok = tu_pattern_tokens(n);
    wmat_reconstruct_info info;
    wmat_qresult *res = quantize(fp, q, "cbq", "bits=3,group=32,cbq_window=2,cbq_iters=30", tok, n, 16, &info);
    assert_int_equal(info.n_windows, 2);
    const int V = wmat_model_config(q)->vocab_size;
    float *a = malloc(sizeof(float) * 16 * V), *b = malloc(sizeof(float) * 16 * V), *c = malloc(sizeof(float) * 16 * V);
    logits_of(q, tok, 16, a);
    for (int i = 0; i < wmat_model_n_tensors(q); i++)
        if (wmat_qresult_done(&res[i])) TU_OK(wmat_model_set_quantized(q, wmat_model_tensor(q, i)->name, &res[i]));
    logits_of(q, tok, 16, b);
    const char *dir = tu_tmp("cbq-native");
    TU_OK(wmat_quant_model_save(q, dir, WMAT_FMT_QUANT));
    wmat_model *m2 = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.keep_stored = 1;
    TU_OK(wmat_model_load(&m2, dir, &lp));
    assert_string_equal(wmat_tensor_kind(wmat_model_linear(m2, 0, WMAT_LIN_Q)), "qpacked");
    logits_of(m2, tok, 16, c);
    print_message("logits: packed vs fake-quant max |diff| %.3g, loaded vs packed %.3g\n",
                  tu_max_abs_diff(a, b, (size_t)16 * V, NULL), tu_max_abs_diff(b, c, (size_t)16 * V, NULL));
    TU_ASSERT_CLOSE(b, a, (size_t)16 * V, 1e-4, 1e-4);
    TU_ASSERT_CLOSE(c, b, (size_t)16 * V, 0.0, 0.0);
    free(a), free(b), free(c);
    free_results(q, res);
    wmat_model_free(fp), wmat_model_free(q), wmat_model_free(m2);
    free(tok);
}

static void test_cfp_truncates_outliers(void **state)
{
    (void)state;
    const int n = 4096;
    float *W = malloc(sizeof(float) * n);
    wmat_rng g;
    wmat_rng_seed(&g, 11);
    for (int i = 0; i < n; i++) W[i] = wmat_rng_normal(&g);
    W[5] = 40.0f, W[77] = -35.0f, W[999] = 38.0f; /* three far outliers */
    float thr;
    const int64_t cut = wmat__cbq_cfp(W, n, 1.5, &thr);
    print_message("CFP: %lld truncated to %.3f\n", (long long)cut, (double)thr);
    assert_true(cut >= 3);
    TU_ASSERT_BELOW(thr, 10.0);
    float mx = 0.0f;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, fabsf(W[i]));
    assert_true(mx == thr);
    assert_true(W[77] == -thr);
    free(W);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lora_rounding_fd),
        cmocka_unit_test(test_regularizer_drives_bits),
        cmocka_unit_test(test_cfp_truncates_outliers),
        cmocka_unit_test(test_window1_no_steps_is_rtn),
        cmocka_unit_test(test_stories_window_error_and_bits),
        cmocka_unit_test(test_written_model_logits),
    };
    return tu_run_tests("cbq", tests, NULL, NULL);
}
