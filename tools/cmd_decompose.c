/* decompose: replace linear weights by structured kinds (a registered
 * method per matrix), report per matrix, optionally evaluate before and after. */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_out.h"
#include "decomp/decomp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DFAMILY WMAT_FAMILY_DECOMPOSITION

int cmd_decompose(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("decompose");
    wmat_decompose_params p = wmat_decompose_default_params();
    const char *method = p.method, *dtype = "f32", *targets = "all", *overrides = NULL;
    int classifier = 0;
    cli_eval ev = {.max_windows = 16};
    cli_json js = {0};
    const char *calib = NULL;
    int calib_tokens = 0, calib_ctx = 0;
    char method_help[96];
    snprintf(method_help, sizeof method_help, "decomposition method (default %s; the methods are listed below)", method);
    cli_opt opts[] = {
        {"--method", OPT_STR, &method, "M", method_help},
        {"--override", OPT_STR, &overrides, "LIST", "PATTERN=METHOD[:KEY=VALUE]...,... per-tensor choices (below)"},
        {"--dtype", OPT_STR, &dtype, "T", "factor type: f32 (default), f16, bf16"},
        {"--targets", OPT_STR, &targets, "LIST", "linear layers: q,k,v,o,gate,up,down or all (default)"},
        {"--classifier", OPT_FLAG, &classifier, NULL, "also the classifier (an untied one)"},
        CLI_EVAL_INPUT_OPTS(&ev, "perplexity before and after on this stream"),
        CLI_EVAL_CTX_OPT(&ev, "evaluation window (default: the model's context, as wmat eval)"),
        CLI_EVAL_WINDOW_OPTS(&ev, "evaluation windows (default 16; 0: all)"),
        CLI_JSON_OPTS(&js),
        {"--calib", OPT_STR, &calib, "FILE", "calibration stream of methods that need statistics (" CLI_TOKEN_RULE ")"},
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
    if ((rc = cli_eval_check("decompose", &ev)) || (rc = cli_json_check("decompose", &js))) return rc;
    if (calib_tokens < 0 || calib_ctx < 0) return cli_usage_error("decompose", "--calib-tokens and --calib-ctx must be positive");
    if (cli_method_needs_stats(DFAMILY, method) && !calib)
        return cli_usage_error("decompose", "--method %s needs calibration data: --calib FILE", method);

    wmat_model *m;
    if (cli_load_model("decompose", pos[0], CLI_LOAD_F32, &m)) return 1;
    int32_t *ids = NULL, *cal = NULL;
    size_t n_ids = 0, n_cal = 0;
    wmat_eval_result e0 = {0}, e1 = {0};
    wmat_decompose_report rep;
    memset(&rep, 0, sizeof rep);
    rc = 1;
    /* --json: stdout carries only the JSON */
    FILE *txt = js.flag ? NULL : stdout;
    const wmat_config *c = wmat_model_config(m);
    const int ectx = ev.ctx ? ev.ctx : c->seq_len; /* as wmat eval */
    if (cli_eval_path(&ev) && (cli_eval_load("decompose", m, &ev, &ids, &n_ids) ||
                               cli_eval_perplexity("decompose", m, ids, n_ids, ectx, ev.max_windows, &e0)))
        goto out;
    if (calib) {
        if (cli_load_token_input("decompose", m, "--calib", calib, &cal, &n_cal)) goto out;
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
    if (txt) {
        fprintf(txt, "%-44s %-8s %6s %6s %5s %9s %7s\n", "tensor", "method", "rows", "cols", "rank", "rel.err", "bits/w");
        for (int i = 0; i < rep.n_tensors; i++) {
            const wmat_decompose_tensor *d = &rep.tensors[i];
            fprintf(txt, "%-44s %-8s %6lld %6lld %5lld %9.5f %7.2f\n", d->name, d->method, (long long)d->rows,
                    (long long)d->cols, (long long)d->rank, d->rel_error, d->bits_per_weight);
        }
        fprintf(txt, "decomposed %d matrices in %.2f s: %llu -> %llu weights (%.1f%%)\n", rep.n_tensors, rep.seconds,
                (unsigned long long)rep.params_before, (unsigned long long)rep.params_after,
                rep.params_before ? 100.0 * (double)rep.params_after / (double)rep.params_before : 0.0);
    }
    if (ids) {
        if (cli_eval_perplexity("decompose", m, ids, n_ids, ectx, ev.max_windows, &e1)) goto out;
        if (txt) fprintf(txt, "perplexity %.4f -> %.4f (ctx %d, %d windows)\n", e0.ppl, e1.ppl, ectx, e1.windows);
    }
    wmat_save_params sp = wmat_save_default_params();
    sp.format = WMAT_FMT_QUANT;
    if (wmat_model_save(m, pos[1], &sp)) {
        cli_fail("decompose");
        goto out;
    }
    if (txt) fprintf(txt, "wrote %s (native directory; wmat eval/generate run it as stored)\n", pos[1]);
    int jfail;
    FILE *jf = cli_json_open("decompose", &js, &jfail);
    if (jfail) goto out;
    if (jf) {
        fprintf(jf, "{\"out\": ");
        cli_json_string(jf, pos[1]);
        fprintf(jf, ", \"params_before\": %llu, \"params_after\": %llu, \"seconds\": %.4f",
                (unsigned long long)rep.params_before, (unsigned long long)rep.params_after, rep.seconds);
        if (ids)
            fprintf(jf, ", \"ctx\": %d, \"offset\": %d, \"windows\": %d, \"ppl_before\": %.6f, \"ppl_after\": %.6f", ectx,
                    ev.offset, e1.windows, e0.ppl, e1.ppl);
        fprintf(jf, ", \"tensors\": [");
        for (int i = 0; i < rep.n_tensors; i++) {
            const wmat_decompose_tensor *d = &rep.tensors[i];
            fprintf(jf, "%s\n {\"name\": \"%s\", \"method\": \"%s\", \"rows\": %lld, \"cols\": %lld, \"rank\": %lld, "
                    "\"rel_error\": %.8g, \"bits_per_weight\": %.6g}",
                    i ? "," : "", d->name, d->method, (long long)d->rows, (long long)d->cols, (long long)d->rank,
                    d->rel_error, d->bits_per_weight);
        }
        fprintf(jf, "]}\n");
        if (cli_json_close("decompose", &js)) goto out;
    }
    rc = 0;
out:
    wmat_decompose_report_free(&rep);
    free(ids);
    free(cal);
    wmat_model_free(m);
    return rc;
}
