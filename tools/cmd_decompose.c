/* decompose: replace linear weights by structured kinds (a registered
 * method per matrix), report per matrix, optionally evaluate before and after. */
#include "cli.h"
#include "decomp/decomp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int eval_ppl(wmat_model *m, const int32_t *ids, size_t n, int ctx, int windows, double *ppl)
{
    wmat_context c = wmat_context_default();
    c.n_threads = g_cli.threads;
    wmat_runtime_params rp = wmat_runtime_default_params();
    rp.max_batch_tokens = ctx;
    rp.kv_cache_len = 1;
    rp.ctx = &c;
    wmat_runtime *rt;
    if (wmat_runtime_create(&rt, m, &rp)) return 1;
    wmat_eval_result r;
    int rc = wmat_eval_tokens(rt, ids, n, ctx, windows, &r);
    wmat_runtime_free(rt);
    if (!rc) *ppl = r.ppl;
    return rc != 0;
}

#define DFAMILY WMAT_FAMILY_DECOMPOSITION

int cmd_decompose(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("decompose");
    wmat_decompose_params p = wmat_decompose_default_params();
    const char *method = p.method, *dtype = "f32", *targets = "all", *overrides = NULL, *text = NULL, *tokens = NULL;
    const char *calib = NULL;
    int classifier = 0, ctx = 0, windows = 16, calib_tokens = 0, calib_ctx = 0;
    char method_help[96];
    snprintf(method_help, sizeof method_help, "decomposition method (default %s; the methods are listed below)", method);
    cli_opt opts[] = {
        {"--method", OPT_STR, &method, "M", method_help},
        {"--override", OPT_STR, &overrides, "LIST", "PATTERN=METHOD[:KEY=VALUE]...,... per-tensor choices (below)"},
        {"--dtype", OPT_STR, &dtype, "T", "factor type: f32 (default), f16, bf16"},
        {"--targets", OPT_STR, &targets, "LIST", "linear layers: q,k,v,o,gate,up,down or all (default)"},
        {"--classifier", OPT_FLAG, &classifier, NULL, "also the classifier (an untied one)"},
        {"--tokens", OPT_STR, &tokens, "FILE", "evaluate before and after on a uint16 token stream"},
        {"--text", OPT_STR, &text, "FILE", "... or on a text file"},
        {"--ctx", OPT_INT, &ctx, "N", "evaluation window (default: the model's context, as wmat eval)"},
        {"--max-windows", OPT_INT, &windows, "N", "evaluation windows (default 16; 0: all)"},
        {"--calib", OPT_STR, &calib, "FILE", "calibration stream of methods that need statistics: .txt text, else uint16 ids"},
        {"--calib-tokens", OPT_INT, &calib_tokens, "N", "calibration tokens (default 64 windows, or the file if shorter)"},
        {"--calib-ctx", OPT_INT, &calib_ctx, "T", "calibration window (default min(context, 256))"},
        {NULL, 0, NULL, NULL, NULL},
    };
    /* the methods' keys are flags too (--rank 64, --energy 0.9, ...) */
    wmat_param_spec keys[64];
    wmat_pset mps;
    if (cli_method_keys(DFAMILY, keys, 64, &mps)) return cli_fail("decompose");
    char *mhelp = cli_methods_help(
        DFAMILY, NULL,
        "--override PATTERN=METHOD[:KEY=VALUE]... (comma-separated items) gives the tensors whose names\n"
        "match PATTERN (glob or substring; the last match wins) their own method, and keys on top of the\n"
        "command line's: PATTERN=keep leaves them as they are. KEY is a key of that method, written with\n"
        "'_' or '-'.\n"),
         kv[512];
    const char *pos[2];
    int np, rc = cli_parse_params(cmd, argc, argv, opts, &mps,
                                  "method parameters (--KEY VALUE here; KEY=VALUE in --override)", mhelp, pos, 2, 2, &np);
    free(mhelp);
    const int kv_len = wmat__pset_format(&mps, 1, ',', kv, sizeof kv);
    if (rc || (size_t)kv_len >= sizeof kv) {
        wmat__pset_free(&mps);
        return rc == 1 ? 0 : rc ? rc : cli_usage_error("decompose", "method parameters too long");
    }
    p.method = method;
    p.method_params = kv;
    p.overrides = overrides;
    p.classifier = classifier;
    p.progress = cli_progress;
    const int dt = wmat_dtype_from_name(dtype);
    if (dt != WMAT_F32 && dt != WMAT_F16 && dt != WMAT_BF16) {
        wmat__pset_free(&mps);
        return cli_usage_error("decompose", "--dtype must be f32, f16 or bf16 (got '%s')", dtype);
    }
    p.dtype = (wmat_dtype)dt;
    rc = wmat__decompose_check(&p);
    if (!rc && !overrides) cli_note_unread_keys("decompose", DFAMILY, method, &mps);
    wmat__pset_free(&mps);
    if (rc) return cli_usage_error("decompose", "%s", wmat_last_error());
    if (strcmp(targets, "all") && wmat_train_parse_targets(targets, &p.targets)) return cli_fail("decompose");
    if (text && tokens) return cli_usage_error("decompose", "--text and --tokens exclude each other");
    if (ctx < 0 || windows < 0) return cli_usage_error("decompose", "--ctx and --max-windows must be positive");
    if (calib_tokens < 0 || calib_ctx < 0) return cli_usage_error("decompose", "--calib-tokens and --calib-ctx must be positive");
    if (cli_method_needs_stats(DFAMILY, method) && !calib)
        return cli_usage_error("decompose", "--method %s needs calibration data: --calib FILE", method);

    wmat_model *m;
    if (cli_load_model("decompose", pos[0], CLI_LOAD_F32, &m)) return 1;
    int32_t *ids = NULL, *cal = NULL;
    size_t n_ids = 0, n_cal = 0;
    double ppl0 = 0, ppl1 = 0;
    wmat_decompose_report rep;
    memset(&rep, 0, sizeof rep);
    rc = 1;
    const wmat_config *c = wmat_model_config(m);
    const int ectx = ctx ? ctx : c->seq_len; /* as wmat eval */
    if ((text || tokens) && (cli_load_tokens("decompose", m, text, tokens, &ids, &n_ids) || eval_ppl(m, ids, n_ids, ectx, windows, &ppl0)))
        goto out;
    if (calib) {
        const size_t len = strlen(calib);
        const int is_text = len > 4 && !strcmp(calib + len - 4, ".txt");
        if (cli_load_tokens("decompose", m, is_text ? calib : NULL, is_text ? NULL : calib, &cal, &n_cal)) goto out;
        const int cctx = calib_ctx ? calib_ctx : (c->seq_len < 256 ? c->seq_len : 256);
        const size_t want = calib_tokens > 0 ? (size_t)calib_tokens : (size_t)64 * (size_t)cctx;
        if (calib_tokens > 0 && n_cal < want) {
            fprintf(stderr, "wmat decompose: error: calibration stream %s has %zu tokens, fewer than the %d requested\n",
                    calib, n_cal, calib_tokens);
            goto out;
        }
        if (n_cal > want) n_cal = want;
        p.calib = cal;
        p.n_calib = n_cal;
        p.calib_ctx = cctx;
    }
    if (wmat_decompose_model(m, &p, &rep)) {
        cli_fail("decompose");
        goto out;
    }
    printf("%-44s %-8s %6s %6s %5s %9s %7s\n", "tensor", "method", "rows", "cols", "rank", "rel.err", "bits/w");
    for (int i = 0; i < rep.n_tensors; i++) {
        const wmat_decompose_tensor *d = &rep.tensors[i];
        printf("%-44s %-8s %6lld %6lld %5lld %9.5f %7.2f\n", d->name, d->method, (long long)d->rows, (long long)d->cols,
               (long long)d->rank, d->rel_error, d->bits_per_weight);
    }
    printf("decomposed %d matrices in %.2f s: %llu -> %llu weights (%.1f%%)\n", rep.n_tensors, rep.seconds,
           (unsigned long long)rep.params_before, (unsigned long long)rep.params_after,
           rep.params_before ? 100.0 * (double)rep.params_after / (double)rep.params_before : 0.0);
    if (ids) {
        if (eval_ppl(m, ids, n_ids, ectx, windows, &ppl1)) goto out;
        printf("perplexity %.4f -> %.4f (ctx %d, %d windows)\n", ppl0, ppl1, ectx, windows);
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    if (wmat_model_save(m, pos[1], &sp)) {
        cli_fail("decompose");
        goto out;
    }
    printf("wrote %s (native directory; wmat eval/generate run it as stored)\n", pos[1]);
    rc = 0;
out:
    wmat_decompose_report_free(&rep);
    free(ids);
    free(cal);
    wmat_model_free(m);
    return rc;
}
