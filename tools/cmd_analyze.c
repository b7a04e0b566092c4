/* analyze: spectra, outliers, low-rank-ness, fine-tuning fingerprints and
 * attention-head circuits of every weight matrix (docs/ANALYSIS.md). */
#include "cli.h"
#include "cli_inputs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The JSON report on stdout: the writer commits files atomically, so it
 * writes a private temporary that is copied out. */
static int json_to_stdout(const wmat_analysis *a)
{
    char tmp[4096];
    const char *dir = getenv("TMPDIR");
    snprintf(tmp, sizeof tmp, "%s/wmat-analyze-%ld.json", dir && dir[0] ? dir : "/tmp", (long)getpid());
    char *text = NULL;
    size_t len = 0;
    int rc = wmat_analysis_write_json(a, tmp);
    if (!rc) rc = wmat_read_file(tmp, &text, &len);
    unlink(tmp);
    if (rc) return cli_fail("analyze");
    rc = fwrite(text, 1, len, stdout) != len || fflush(stdout) ? 1 : 0;
    free(text);
    if (rc) fprintf(stderr, "wmat analyze: error: writing the JSON to stdout failed\n");
    return rc;
}

/* Interval-bound tightness per block: the branches, the block, the stack. */
static int print_ibp(wmat_model *m)
{
    int L = wmat_model_config(m)->n_layers;
    wmat_ibp_block *b = calloc(L > 0 ? (size_t)L : 1, sizeof *b);
    if (!b) {
        fprintf(stderr, "wmat analyze: error: out of memory\n");
        return 1;
    }
    int rc = wmat_ibp_model(m, b, L);
    if (rc) {
        cli_fail("analyze --ibp");
        free(b);
        return 1;
    }
    printf("\ninterval bound tightness (1 = exact; input box of radius 1, rms 1):\n");
    printf("%5s %9s %9s %9s %9s %9s %9s %9s %9s\n", "layer", "attn", "attn min", "attn iid", "ffn", "ffn min",
           "ffn iid", "block", "stack");
    for (int l = 0; l < L; l++)
        printf("%5d %9.4f %9.4f %9.4f %9.4f %9.4f %9.4f %9.3g %9.3g\n", b[l].layer, b[l].attn, b[l].attn_min,
               b[l].attn_init, b[l].ffn, b[l].ffn_min, b[l].ffn_init, b[l].block, b[l].stack);
    free(b);
    return 0;
}

int cmd_analyze(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("analyze");
    const char *base_path = NULL, *csv = NULL, *html = NULL, *title = NULL;
    cli_json js = {0};
    int exact = 0, no_heads = 0, heads = 0, rows = 60, quiet = 0, ibp = 0;
    int ik = 10;
    float ithr = 0.5f;
    cli_opt opts[] = {
        {"--base", OPT_STR, &base_path, "BASE", "compare with a base model of the same shapes (dW, intruder dimensions)"},
        {"--csv", OPT_STR, &csv, "FILE", "one row per matrix (columns in docs/ANALYSIS.md)"},
        CLI_JSON_OPTS(&js),
        {"--html", OPT_STR, &html, "FILE", "a self-contained report with SVG charts"},
        {"--title", OPT_STR, &title, "TEXT", "title of the HTML report"},
        {"--exact", OPT_FLAG, &exact, NULL, "singular values by dgesdd (default: Gram matrix + dsyevd, faster)"},
        {"--intruder-k", OPT_INT, &ik, "K", "top singular vectors checked for intruders (default 10)"},
        {"--intruder-threshold", OPT_FLOAT, &ithr, "T", "max |cos| below which a vector is an intruder (default 0.5)"},
        {"--heads", OPT_FLAG, &heads, NULL, "analyze attention heads even for large models"},
        {"--no-heads", OPT_FLAG, &no_heads, NULL, "skip the attention-head analysis"},
        {"--rows", OPT_INT, &rows, "N", "matrices in the terminal table (default 60; 0: all)"},
        {"--quiet", OPT_FLAG, &quiet, NULL, "no terminal summary"},
        {"--ibp", OPT_FLAG, &ibp, NULL, "tightness of interval bounds per block (docs/EXPERIMENTS.md)"},
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
    if ((rc = cli_json_check("analyze", &js))) return rc;
    if (ibp && js.flag) return cli_usage_error("analyze", "--ibp prints a table; it cannot share stdout with --json");
    /* --json: stdout carries only the JSON (everything, singular values and heads included) */
    if (js.flag) quiet = 1;
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
    } outs[] = {{csv, wmat_analysis_write_csv}, {js.path, wmat_analysis_write_json}};
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
    if (!rc && ibp) rc = print_ibp(m);
    if (!rc && js.flag) rc = json_to_stdout(a);
    wmat_analysis_free(a);
    wmat_model_free(m);
    wmat_model_free(b);
    return rc ? 1 : 0;
}
