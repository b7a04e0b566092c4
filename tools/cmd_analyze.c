/* analyze: spectra, outliers, low-rank-ness, fine-tuning fingerprints and
 * attention-head circuits of every weight matrix (docs/ANALYSIS.md). */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_analyze(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("analyze");
    const char *base_path = NULL, *csv = NULL, *json = NULL, *html = NULL, *title = NULL;
    int exact = 0, no_heads = 0, heads = 0, rows = 60, quiet = 0;
    int ik = 10;
    float ithr = 0.5f;
    cli_opt opts[] = {
        {"--base", OPT_STR, &base_path, "BASE", "compare with a base model of the same shapes (dW, intruder dimensions)"},
        {"--csv", OPT_STR, &csv, "FILE", "one row per matrix (columns in docs/ANALYSIS.md)"},
        {"--json", OPT_STR, &json, "FILE", "everything, singular values and heads included"},
        {"--html", OPT_STR, &html, "FILE", "a self-contained report with SVG charts"},
        {"--title", OPT_STR, &title, "TEXT", "title of the HTML report"},
        {"--exact", OPT_FLAG, &exact, NULL, "singular values by dgesdd (default: Gram matrix + dsyevd, faster)"},
        {"--intruder-k", OPT_INT, &ik, "K", "top singular vectors checked for intruders (default 10)"},
        {"--intruder-threshold", OPT_FLOAT, &ithr, "T", "max |cos| below which a vector is an intruder (default 0.5)"},
        {"--heads", OPT_FLAG, &heads, NULL, "analyze attention heads even for large models"},
        {"--no-heads", OPT_FLAG, &no_heads, NULL, "skip the attention-head analysis"},
        {"--rows", OPT_INT, &rows, "N", "matrices in the terminal table (default 60; 0: all)"},
        {"--quiet", OPT_FLAG, &quiet, NULL, "no terminal summary"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[1];
    int np, rc = cli_parse(cmd, argc, argv, opts, pos, 1, 1, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (ik < 1 || ik > WMAT_AN_INTRUDER_MAX)
        return cli_usage_error("analyze", "--intruder-k must be in 1..%d", WMAT_AN_INTRUDER_MAX);
    if (!(ithr > 0 && ithr <= 1)) return cli_usage_error("analyze", "--intruder-threshold must be in (0, 1]");
    if (rows < 0) return cli_usage_error("analyze", "--rows must be >= 0");
    if (heads && no_heads) return cli_usage_error("analyze", "give at most one of --heads and --no-heads");
    wmat_model *m = NULL, *b = NULL;
    if (cli_load_model("analyze", pos[0], CLI_LOAD_STORED, &m)) return 1;
    if (base_path && cli_load_model("analyze", base_path, CLI_LOAD_STORED, &b)) {
        wmat_model_free(m);
        return 1;
    }
    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wc.progress = cli_progress;
    wmat_analyze_params p = wmat_analyze_default_params();
    p.exact = exact;
    p.intruder_k = ik;
    p.intruder_threshold = ithr;
    p.heads = no_heads ? 0 : heads ? 1 : -1;
    p.ctx = &wc;
    wmat_analysis *a = NULL;
    rc = wmat_analyze_model(&a, m, b, &p);
    if (rc) {
        if (base_path && rc == WMAT_ERR_INVALID)
            fprintf(stderr, "wmat analyze: error: %s (model %s, base %s)\n", wmat_last_error(), pos[0], base_path);
        else
            cli_fail("analyze");
        wmat_model_free(m);
        wmat_model_free(b);
        return 1;
    }
    if (!quiet) {
        printf("%s%s%s: %d matrices, %d heads, %.2f s (%s)\n\n", pos[0], b ? " against " : "", b ? base_path : "",
               wmat_analysis_n_matrices(a), wmat_analysis_n_heads(a), wmat_analysis_seconds(a), exact ? "exact singular values" : "Gram");
        wmat_analysis_write_summary(a, stdout, rows);
    }
    struct {
        const char *path;
        int (*fn)(const wmat_analysis *, const char *);
    } outs[] = {{csv, wmat_analysis_write_csv}, {json, wmat_analysis_write_json}};
    for (int i = 0; i < 2 && !rc; i++)
        if (outs[i].path) {
            if ((rc = outs[i].fn(a, outs[i].path))) cli_fail("analyze");
            else fprintf(stderr, "wrote %s\n", outs[i].path);
        }
    if (!rc && html) {
        char t[600];
        snprintf(t, sizeof t, "wmat analysis of %s", pos[0]);
        if ((rc = wmat_analysis_write_html(a, html, title ? title : t))) cli_fail("analyze");
        else fprintf(stderr, "wrote %s\n", html);
    }
    wmat_analysis_free(a);
    wmat_model_free(m);
    wmat_model_free(b);
    return rc ? 1 : 0;
}
