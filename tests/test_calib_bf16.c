/* bf16 calibration forward (wmat_quantize_params.calib_dtype, `wmat
 * quantize --calib-dtype bf16`; docs/QUANT.md "GPTQ at 1.1B scale"): the
 * statistics it gathers against the fp32 forward's on stories260K, the
 * quantized model it leads to, and the refusal of other dtypes. The bf16
 * cases skip where the machine has no native bf16 GEMM (they would be
 * refused there: test_refused_without_native checks that much). */
#include "test_util.h"

#include "core/shapes.h"
#include "io/model_internal.h"
#include "linalg/linalg.h"
#include "quant/methods.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Relative Frobenius distance of the bf16 calibration's H from the fp32
 * one, per slot: stories260K gives 1.8e-3 to 7.6e-3 (8 windows of 128;
 * bf16 rounds to 2^-9 = 2e-3 relative), so the bound has about 2.5x room. */
#define H_REL_TOL 2e-2

static int bf16_here(void)
{
    if (wmat__calib_dtype_check(WMAT_BF16) == WMAT_OK) return 1;
    print_message("no native bf16 GEMM here: %s\n", wmat_last_error());
    wmat_clear_error();
    return 0;
}

static wmat_model *load(const char *path)
{
    wmat_model *m = NULL;
    wmat_load_params lp = wmat_load_default_params();
    lp.materialize_f32 = 1;
    TU_OK(wmat_model_load(&m, path, &lp));
    return m;
}

static double rel_fro(const double *a, const double *b, int64_t n)
{
    double d = 0.0, r = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    return r > 0.0 ? sqrt(d / r) : sqrt(d);
}

/* Stage-mode passes over every block, the f32 and the bf16 forward side by
 * side on the same weights: each slot's H (and x2) within H_REL_TOL; block
 * 0's attention input precedes every product, so its statistics are the
 * same bits; later ones differ (the bf16 products did run). */
static void test_hessians_close(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    if (!bf16_here()) skip();
    int32_t *cal;
    size_t nc;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &nc));
    wmat_model *m = load(mp);
    const wmat_config *c = wmat_model_config(m);
    const int ctx = 128, nw = 8;
    assert_true(nc >= (size_t)(ctx * nw));
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *rf, *rb;
    TU_OK(wmat_runtime_create(&rf, m, &rp));
    TU_OK(wmat_runtime_create(&rb, m, &rp));
    wmat__calib_states f, b;
    TU_OK(wmat__calib_states_init(&f, rf, cal, nw, ctx, c->dim));
    TU_OK(wmat__calib_states_init(&b, rb, cal, nw, ctx, c->dim));
    TU_OK(wmat__calib_states_dtype(&f, WMAT_F32));
    TU_OK(wmat__calib_states_dtype(&b, WMAT_BF16));
    f.resume = b.resume = 1;
    double worst = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        for (int s = 0; s < 4; s++) {
            const int64_t n = s == WMAT_CSLOT_DOWN ? c->hidden_dim : s == WMAT_CSLOT_O ? wmat__attn_width(c) : c->dim;
            wmat_qstats sf, sb;
            TU_OK(wmat__qstats_init(&sf, n, 1));
            TU_OK(wmat__qstats_init(&sb, n, 1));
            wmat_qstats *slots_f[WMAT_CSLOT_COUNT] = {0}, *slots_b[WMAT_CSLOT_COUNT] = {0};
            slots_f[s] = &sf;
            slots_b[s] = &sb;
            TU_OK(wmat__calib_collect(&f, c->n_layers, slots_f, 1u << s, 0));
            TU_OK(wmat__calib_collect(&b, c->n_layers, slots_b, 1u << s, 0));
            const double dh = rel_fro(sb.H, sf.H, n * n), dx = rel_fro(sb.x2, sf.x2, n);
            print_message("block %d slot %d: |H_bf16 - H_f32| / |H_f32| = %.2e, x2 %.2e\n", l, s, dh, dx);
            if (l == 0 && s == WMAT_CSLOT_ATTN) {
                assert_memory_equal(sb.H, sf.H, (size_t)(n * n) * sizeof(double));
            } else {
                assert_true(dh > 0.0); /* the bf16 products ran */
                TU_ASSERT_BELOW(dh, H_REL_TOL);
                TU_ASSERT_BELOW(dx, H_REL_TOL);
            }
            for (int64_t i = 0; i < n * n; i++) assert_false(isnan(sb.H[i]));
            if (dh > worst) worst = dh;
            wmat__qstats_free(&sf);
            wmat__qstats_free(&sb);
        }
        TU_OK(wmat__calib_advance(&f));
        TU_OK(wmat__calib_advance(&b));
    }
    print_message("worst relative H difference: %.2e (tolerance %.0e)\n", worst, H_REL_TOL);
    /* the same stage schedule */
    assert_int_equal(f.stage_runs, b.stage_runs);
    assert_int_equal(f.block_passes, b.block_passes);
    assert_true(b.convert_seconds > 0.0);
    wmat__calib_states_free(&f);
    wmat__calib_states_free(&b);
    wmat_runtime_free(rf);
    wmat_runtime_free(rb);
    wmat_model_free(m);
    free(cal);
}

static double ppl(wmat_model *m, const int32_t *ids, size_t n, int ctx, int windows)
{
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    wmat_runtime *rt;
    TU_OK(wmat_runtime_create(&rt, m, &rp));
    wmat_eval_result r;
    TU_OK(wmat_eval_tokens(rt, ids, n, ctx, windows, &r));
    wmat_runtime_free(rt);
    return r.ppl;
}

/* GPTQ 4-bit g32 through the driver with either calibration: the same
 * tensors with the same schemes, storage and calibration schedule, most
 * codes the same, and a perplexity gap no larger than what moving the
 * fp32 calibration to the next 16 windows does (plus 0.5%): the bf16
 * forward's effect is within calibration noise. */
static void test_quantize_same_structure(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    if (!bf16_here()) skip();
    int32_t *cal;
    size_t nc;
    TU_OK(wmat_read_tokens_u16(cp, &cal, &nc));
    const int ctx = 128, nw = 16;
    const size_t ncal = (size_t)nw * (size_t)ctx;
    assert_true(nc >= 3 * ncal);
    /* runs: f32 calibration, bf16, f32 on the next slice */
    wmat_quantize_report rep[3];
    double pp[3];
    wmat_model *mq[3];
    for (int d = 0; d < 3; d++) {
        mq[d] = load(mp);
        wmat_quantize_params p = wmat_quantize_default_params();
        p.method = "gptq";
        p.bits = 4;
        p.group = 32;
        p.group_fallback = 1;
        p.calib = cal + (d == 2 ? ncal : 0);
        p.n_calib = ncal;
        p.calib_ctx = ctx;
        p.n_threads = 1;
        p.calib_dtype = d == 1 ? WMAT_BF16 : WMAT_F32;
        TU_OK(wmat_quantize_model(mq[d], &p, &rep[d]));
        /* evaluation on tokens after both calibration slices */
        pp[d] = ppl(mq[d], cal + 2 * ncal, ncal, ctx, nw);
    }
    assert_int_equal(rep[0].n_tensors, rep[1].n_tensors);
    assert_int_equal(rep[0].block_passes, rep[1].block_passes);
    assert_int_equal(rep[0].stage_runs, rep[1].stage_runs);
    assert_true(rep[0].bits_per_weight == rep[1].bits_per_weight);
    assert_true(rep[0].bytes_after == rep[1].bytes_after);
    size_t same = 0, total = 0;
    for (int k = 0; k < rep[0].n_tensors; k++) {
        const wmat_quantize_tensor *a = &rep[0].tensors[k], *b = &rep[1].tensors[k];
        assert_string_equal(a->name, b->name);
        assert_string_equal(a->scheme, b->scheme);
        assert_int_equal(a->quantized, b->quantized);
        assert_true(a->bits_per_weight == b->bits_per_weight);
        if (!a->quantized) continue;
        const wmat_tensor *ta = wmat_model_find(mq[0], a->name), *tb = wmat_model_find(mq[1], b->name);
        assert_non_null(ta);
        assert_non_null(tb);
        const float *wa = ta->data, *wb = tb->data;
        for (int64_t i = 0; i < wmat_tensor_nelem(ta); i++) same += wa[i] == wb[i];
        total += (size_t)wmat_tensor_nelem(ta);
    }
    const double frac = (double)same / (double)total;
    const double gap = fabs(pp[1] / pp[0] - 1.0), slice = fabs(pp[2] / pp[0] - 1.0);
    print_message("GPTQ 4-bit g32: ppl f32 calibration %.4f, bf16 %.4f (%+.3f%%), f32 on the next slice %.4f (%+.3f%%); "
                  "%.1f%% of weights equal\n",
                  pp[0], pp[1], 100.0 * (pp[1] / pp[0] - 1.0), pp[2], 100.0 * (pp[2] / pp[0] - 1.0), 100.0 * frac);
    assert_true(frac > 0.5);
    TU_ASSERT_BELOW(gap, slice + 0.005);
    for (int d = 0; d < 3; d++) {
        wmat_quantize_report_free(&rep[d]);
        wmat_model_free(mq[d]);
    }
    free(cal);
}

/* Other dtypes are refused before anything runs, by the library and the
 * CLI, with a message naming the choices. */
static void test_bad_dtype_refused(void **state)
{
    (void)state;
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    wmat_model *m = load(mp);
    int32_t cal[256] = {0};
    wmat_quantize_params p = wmat_quantize_default_params();
    assert_int_equal(p.calib_dtype, WMAT_F32);
    p.method = "gptq";
    p.calib = cal;
    p.n_calib = 256;
    const wmat_dtype bad[] = {WMAT_F16, WMAT_Q4_0, (wmat_dtype)999};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p.calib_dtype = bad[i];
        assert_int_equal(wmat_quantize_model(m, &p, NULL), WMAT_ERR_INVALID);
        assert_non_null(strstr(wmat_last_error(), "calibration dtype must be f32 or bf16"));
    }
    wmat_model_free(m);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s quantize %s --to none --method gptq --calib %s --calib-dtype fp16 2>&1", tu_cli(), mp,
             cp);
    int code;
    char *out = tu_run(cmd, &code);
    if (code != 2 || !strstr(out, "--calib-dtype must be f32 or bf16 (got 'fp16')"))
        fail_msg("quantize --calib-dtype fp16: exit %d (want 2), output:\n%s", code, out);
    free(out);
}

/* Where bf16 GEMMs are not native the flag is refused (no silent widening,
 * which would be slower than fp32); where they are, the CLI reports the
 * forward it ran. */
static void test_refused_without_native(void **state)
{
    (void)state;
    char why[256];
    /* OpenBLAS has no bf16 kernel: the reason names the backend */
    assert_int_equal(wmat__gemm_bf16_fast(WMAT_GEMM_OPENBLAS, why, sizeof why), 0);
    assert_non_null(strstr(why, "slower than fp32"));
    const int rc = wmat__calib_dtype_check(WMAT_BF16);
    if (rc) {
        assert_int_equal(rc, WMAT_ERR_UNSUPPORTED);
        assert_non_null(strstr(wmat_last_error(), "calibrate in f32"));
        return;
    }
    TU_NEED_DATA(mp, "models/stories260K.bin");
    TU_NEED_DATA(cp, "golden/tinystories_valid_head.tok512.u16");
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "%s quantize %s --to none --method gptq --calib %s --calib-tokens 1024 --calib-ctx 128 --quiet "
             "--calib-dtype bf16 --threads 1 2>&1",
             tu_cli(), mp, cp);
    int code;
    char *out = tu_run(cmd, &code);
    if (code != 0 || !strstr(out, "forward bf16")) fail_msg("quantize --calib-dtype bf16: exit %d, output:\n%s", code, out);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hessians_close),
        cmocka_unit_test(test_quantize_same_structure),
        cmocka_unit_test(test_bad_dtype_refused),
        cmocka_unit_test(test_refused_without_native),
    };
    return tu_run_tests("calib_bf16", tests, NULL, NULL);
}
