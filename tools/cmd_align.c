/* align: weight matching of model B to model A (git re-basin for LLaMA:
 * residual, FFN, KV-group, query-head and value-dim permutations), written
 * as pi(B); optionally the loss along (1 - t) A + t B before and after
 * (linear mode connectivity) as a table and an SVG chart
 * (src/merge/align.c, docs/MERGING.md). */
#include "cli.h"
#include "cli_inputs.h"
#include "cli_out.h"
#include "merge/align.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Interpolating models that read tokens differently means nothing: both
 * tokenizers (when present) must agree piece by piece. */
static int same_vocabulary(wmat_model *A, wmat_model *B, const char *pa, const char *pb)
{
    wmat_tokenizer *ta = wmat_model_tokenizer(A), *tb = wmat_model_tokenizer(B);
    if (!ta || !tb) return 1;
    const int n = wmat_tokenizer_vocab_size(ta);
    if (n != wmat_tokenizer_vocab_size(tb)) {
        fprintf(stderr, "wmat align: error: %s and %s: different vocabularies (%d vs %d tokenizer entries)\n", pa, pb, n,
                wmat_tokenizer_vocab_size(tb));
        return 0;
    }
    for (int i = 0; i < n; i++) {
        size_t la, lb;
        const char *x = wmat_tokenizer_piece(ta, i, &la), *y = wmat_tokenizer_piece(tb, i, &lb);
        if (la != lb || memcmp(x, y, la)) {
            fprintf(stderr, "wmat align: error: %s and %s: different vocabularies (token %d is '%.*s' vs '%.*s')\n", pa, pb, i,
                    (int)la, x, (int)lb, y);
            return 0;
        }
    }
    return 1;
}

static void on_iter(void *user, const wmat_align_iter *it)
{
    const double *norms = user;
    printf("iter %3d  <A, pi(B)> %.8g  ||A - pi(B)|| %.6f (%.4f of ||A||)  groups changed %d/%d  %.2f s\n", it->iter,
           it->inner, it->dist, norms[0] > 0 ? it->dist / norms[0] : 0, it->improved, it->groups, it->seconds);
    fflush(stdout);
}

/* max over t of loss(t) - ((1 - t) loss(0) + t loss(1)): the barrier */
static double barrier(const double *l, int n, double *at_half)
{
    double b = -1e300;
    for (int k = 0; k < n; k++) {
        const double t = (double)k / (n - 1), d = l[k] - ((1 - t) * l[0] + t * l[n - 1]);
        if (d > b) b = d;
        if (2 * k == n - 1) *at_half = d;
    }
    return b;
}

int cmd_align(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("align");
    const char *report = NULL, *lmc = NULL, *dtype = NULL, *to = NULL, *csv = NULL;
    int seed = 1, max_iter = 100, ctx = 0, max_windows = 0, points = 11, svk = 8;
    cli_opt opts[] = {
        {"--seed", OPT_INT, &seed, "S", "seed of the random order of groups in each sweep (default 1)"},
        {"--max-iter", OPT_INT, &max_iter, "N", "at most N sweeps over all groups (default 100; stops earlier when one changes nothing)"},
        {"--lmc-text", OPT_STR, &lmc, "FILE", "evaluate the loss along (1-t)A + tB before and after alignment on FILE (" CLI_TOKEN_RULE ")"},
        {"--report", OPT_STR, &report, "FILE", "with --lmc-text: the two loss curves as an SVG chart"},
        {"--csv", OPT_STR, &csv, "FILE", "with --lmc-text: the table as CSV (t, naive, aligned)"},
        {"--points", OPT_INT, &points, "N", "points on the path, t = 0 .. 1 (default 11)"},
        {"--ctx", OPT_INT, &ctx, "N", "evaluation window (default min(seq_len, 256))"},
        {"--max-windows", OPT_INT, &max_windows, "K", "windows per evaluation (default all)"},
        {"--sv-k", OPT_INT, &svk, "K", "top-K singular-vector overlap with A before and after (default 8, 0 off)"},
        {"--dtype", OPT_STR, &dtype, "T", "output weights: f32 (default), f16, bf16, q8_0, q4_0"},
        {"--to", OPT_STR, &to, "FMT", "output format llama2c|gguf|hf (default by extension: .gguf, .bin, else hf)"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[3];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 3, 3, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if ((report || csv) && !lmc) return cli_usage_error("align", "--report and --csv need --lmc-text FILE (the text to evaluate)");
    if (max_iter < 0 || points < 2 || ctx < 0 || max_windows < 0 || svk < 0)
        return cli_usage_error("align", "--max-iter, --ctx, --max-windows, --sv-k must be >= 0 and --points >= 2");
    wmat_save_params sp = wmat_save_default_params();
    sp.dtype = WMAT_F32;
    if (dtype) {
        int dt = wmat_dtype_from_name(dtype);
        if (dt < 0) return cli_usage_error("align", "unknown --dtype '%s'", dtype);
        sp.dtype = (wmat_dtype)dt;
    }
    const char *out = pos[2];
    sp.format = to ? wmat_format_from_name(to) : wmat_format_for_path(out);
    if (sp.format == WMAT_FMT_UNKNOWN) return cli_usage_error("align", "unknown --to '%s' (llama2c, gguf, hf)", to);

    wmat_model *A = NULL, *B = NULL, *pB = NULL;
    wmat_align_perm perm = {0};
    int32_t *ids = NULL;
    size_t n = 0;
    int ret = 1;
    double *curve = NULL;
    if (cli_load_model("align", pos[0], CLI_LOAD_F32, &A) || cli_load_model("align", pos[1], CLI_LOAD_F32, &B)) goto done;
    if (!same_vocabulary(A, B, pos[0], pos[1])) goto done;
    if (lmc && cli_load_token_input("align", A, "--lmc-text", lmc, &ids, &n)) goto done;
    if (wmat__align_perm_init(&perm, wmat_model_config(A))) {
        cli_fail("align");
        goto done;
    }
    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wmat_align_params ap = wmat__align_default_params();
    ap.max_iter = max_iter;
    ap.seed = (uint64_t)seed;
    ap.ctx = &wc;
    ap.on_iter = on_iter;
    double norms[1] = {0};
    ap.user = norms;
    wmat_align_report rep;
    {
        /* ||A|| for the relative distances printed per sweep */
        double a2 = 0;
        for (int i = 0; i < wmat_model_n_tensors(A); i++) {
            const wmat_tensor *t = wmat_model_tensor(A, i);
            const float *x = t->data;
            for (int64_t k = 0; k < wmat_tensor_nelem(t); k++) a2 += (double)x[k] * x[k];
        }
        norms[0] = sqrt(a2);
    }
    if (wmat__align_match(A, B, &ap, &perm, &rep) || wmat__align_apply(B, &perm, &pB)) {
        cli_fail("align");
        goto done;
    }
    printf("aligned %s to %s: %d groups, %d sweeps%s, %.2f s; %lld permutation entries moved\n", pos[1], pos[0], rep.groups,
           rep.iters, rep.converged ? " (converged)" : " (max-iter reached)", rep.seconds,
           (long long)wmat__align_perm_moved(&perm));
    printf("||A|| %.6f  ||B|| %.6f  ||A - B|| %.6f -> ||A - pi(B)|| %.6f (%.2f%% lower)\n", rep.norm_a, rep.norm_b, rep.dist_before,
           rep.dist_after, rep.dist_before > 0 ? 100 * (1 - rep.dist_after / rep.dist_before) : 0.0);
    {
        double c0[WMAT_ALIGN_ROLE_COUNT], c1[WMAT_ALIGN_ROLE_COUNT];
        if (wmat__align_role_cosines(A, B, c0) || wmat__align_role_cosines(A, pB, c1)) {
            cli_fail("align");
            goto done;
        }
        printf("cosine with A per kind, before -> after:");
        for (int r = 0; r < WMAT_ALIGN_ROLE_COUNT; r++)
            if (!isnan(c0[r])) printf("%s %s %.3f -> %.3f", r ? "," : "", wmat__align_role_names[r], c0[r], c1[r]);
        printf("\n");
    }
    if (svk > 0) {
        double l0, r0, l1, r1;
        if (wmat__align_sv_overlap(A, B, svk, &l0, &r0) || wmat__align_sv_overlap(A, pB, svk, &l1, &r1)) {
            cli_fail("align");
            goto done;
        }
        printf("top-%d singular-vector overlap with A (mean over matrices, 1 = same subspace): left %.4f -> %.4f, right %.4f -> %.4f\n",
               svk, l0, l1, r0, r1);
    }
    if (wmat_model_save(pB, out, &sp)) {
        cli_fail("align");
        goto done;
    }
    printf("wrote %s (%s)\n", out, wmat_format_name(sp.format));
    fflush(stdout);
    if (lmc) {
        const wmat_config *c = wmat_model_config(A);
        const int T = ctx > 0 ? ctx : (c->seq_len < 256 ? c->seq_len : 256);
        curve = malloc(3 * (size_t)points * sizeof *curve);
        if (!curve) goto done;
        double *naive = curve, *aligned = curve + points, *ts = curve + 2 * points;
        for (int k = 0; k < points; k++) ts[k] = (double)k / (points - 1);
        if (wmat__align_lmc_curve(A, B, points, ids, n, T, max_windows, &wc, naive) ||
            wmat__align_lmc_curve(A, pB, points, ids, n, T, max_windows, &wc, aligned)) {
            cli_fail("align");
            goto done;
        }
        printf("\nloss (mean NLL) along (1-t) A + t B on %s (%zu tokens, windows of %d%s):\n", lmc, n, T,
               max_windows ? ", capped" : "");
        printf("    t    naive  aligned\n");
        for (int k = 0; k < points; k++) printf("%5.2f  %7.4f  %7.4f\n", ts[k], naive[k], aligned[k]);
        double h0 = 0, h1 = 0;
        const double b0 = barrier(naive, points, &h0), b1 = barrier(aligned, points, &h1);
        printf("barrier (max over t of loss - the straight line between the ends): naive %.4f, aligned %.4f\n", b0, b1);
        if (points % 2) printf("barrier at t = 0.5: naive %.4f, aligned %.4f\n", h0, h1);
        if (csv) {
            wmat_afile af;
            FILE *f = cli_out_open(&af, csv);
            if (!f) {
                cli_fail("align");
                goto done;
            }
            fprintf(f, "t,naive,aligned\n");
            for (int k = 0; k < points; k++) fprintf(f, "%.4f,%.6f,%.6f\n", ts[k], naive[k], aligned[k]);
            if (cli_out_close(&af)) {
                cli_fail("align");
                goto done;
            }
        }
        if (report) {
            const cli_svg_series s[2] = {{"naive: (1-t) A + t B", "#1f77b4", ts, naive, points, 2, 1, 0},
                                         {"aligned: (1-t) A + t pi(B)", "#d62728", ts, aligned, points, 2, 1, 0}};
            if (cli_svg_lines(report, "t", "loss (mean NLL)", s, 2)) {
                cli_fail("align");
                goto done;
            }
            printf("wrote %s\n", report);
        }
    }
    ret = 0;
done:
    free(curve);
    free(ids);
    wmat__align_perm_free(&perm);
    wmat_model_free(pB);
    wmat_model_free(A);
    wmat_model_free(B);
    return ret;
}
