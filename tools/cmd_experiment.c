/* experiment: run one registered experiment (the catalogue's family
 * "experiment"), print its table as Markdown, and write it as CSV, JSON and
 * an SVG chart on request. Its keys are flags, from its own schema only (two
 * experiments may give one key different ranges). */
#include "catalog/catalog.h"
#include "cli.h"
#include "cli_inputs.h"
#include "cli_out.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EFAMILY WMAT_FAMILY_EXPERIMENT

static void print_cell(FILE *f, double v)
{
    if (isnan(v)) fprintf(f, "-");
    else if (v == floor(v) && fabs(v) < 1e9) fprintf(f, "%.0f", v);
    else fprintf(f, "%.6g", v);
}

static void print_markdown(FILE *f, const wmat_table *t)
{
    fprintf(f, "%s\n\n| series |", t->title);
    for (int c = 0; c < t->ncols; c++) fprintf(f, " %s |", t->cols[c]);
    fprintf(f, "\n|---|");
    for (int c = 0; c < t->ncols; c++) fprintf(f, "---|");
    fprintf(f, "\n");
    for (int r = 0; r < t->nrows; r++) {
        fprintf(f, "| %s |", t->series[r]);
        for (int c = 0; c < t->ncols; c++) {
            fputc(' ', f);
            print_cell(f, t->v[(size_t)r * (size_t)t->ncols + (size_t)c]);
            fprintf(f, " |");
        }
        fprintf(f, "\n");
    }
    if (t->note) fprintf(f, "\n%s\n", t->note);
}

static int write_csv(const char *path, const wmat_table *t)
{
    wmat_afile af;
    FILE *f = cli_out_open(&af, path);
    if (!f) return -1;
    fprintf(f, "series");
    for (int c = 0; c < t->ncols; c++) fprintf(f, ",%s", t->cols[c]);
    fprintf(f, "\n");
    for (int r = 0; r < t->nrows; r++) {
        fprintf(f, "\"%s\"", t->series[r]);
        for (int c = 0; c < t->ncols; c++) fprintf(f, ",%.9g", t->v[(size_t)r * (size_t)t->ncols + (size_t)c]);
        fprintf(f, "\n");
    }
    return cli_out_close(&af);
}

static void write_json(FILE *f, const char *name, const wmat_table *t)
{
    fprintf(f, "{\"experiment\": ");
    cli_json_string(f, name);
    fprintf(f, ", \"title\": ");
    cli_json_string(f, t->title);
    fprintf(f, ", \"note\": ");
    if (t->note) cli_json_string(f, t->note);
    else fprintf(f, "null");
    fprintf(f, ", \"columns\": [");
    for (int c = 0; c < t->ncols; c++) {
        fprintf(f, "%s", c ? ", " : "");
        cli_json_string(f, t->cols[c]);
    }
    fprintf(f, "], \"rows\": [");
    for (int r = 0; r < t->nrows; r++) {
        fprintf(f, "%s\n {\"series\": ", r ? "," : "");
        cli_json_string(f, t->series[r]);
        fprintf(f, ", \"values\": [");
        for (int c = 0; c < t->ncols; c++) {
            const double v = t->v[(size_t)r * (size_t)t->ncols + (size_t)c];
            if (isnan(v)) fprintf(f, "%snull", c ? ", " : "");
            else fprintf(f, "%s%.9g", c ? ", " : "", v);
        }
        fprintf(f, "]}");
    }
    fprintf(f, "]}\n");
}

/* One line per series, in the order the series first appear; log axes as
 * log10 of the values (the chart draws linear axes). */
static int write_svg(const char *path, const wmat_table *t)
{
    if (t->x_col < 0 || t->y_col < 0) {
        fprintf(stderr, "wmat experiment: note: this experiment draws no chart; --svg %s not written\n", path);
        return 0;
    }
    static const char *const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"};
    cli_svg_series *s = calloc((size_t)t->nrows, sizeof *s);
    double *x = malloc((size_t)t->nrows * sizeof *x), *y = malloc((size_t)t->nrows * sizeof *y);
    int ns = 0, k = 0, rc = -1;
    if (!s || !x || !y) {
        wmat_set_error(WMAT_ERR_NOMEM, "chart: out of memory");
        goto out;
    }
    for (int r = 0; r < t->nrows; r++) {
        int seen = 0;
        for (int q = 0; q < r && !seen; q++) seen = !strcmp(t->series[q], t->series[r]);
        if (seen) continue;
        s[ns] = (cli_svg_series){.label = t->series[r], .color = colors[ns % 8], .x = x + k, .y = y + k, .width = 2,
                                 .markers = 1};
        for (int q = r; q < t->nrows; q++) {
            if (strcmp(t->series[q], t->series[r])) continue;
            double xv = t->v[(size_t)q * (size_t)t->ncols + (size_t)t->x_col];
            double yv = t->v[(size_t)q * (size_t)t->ncols + (size_t)t->y_col];
            if (t->log_x) xv = xv > 0 ? log10(xv) : NAN;
            if (t->log_y) yv = yv > 0 ? log10(yv) : NAN;
            if (!isfinite(xv) || !isfinite(yv)) continue;
            x[k] = xv;
            y[k] = yv;
            k++;
            s[ns].n++;
        }
        ns++;
    }
    char xl[160], yl[160];
    snprintf(xl, sizeof xl, "%s%s%s", t->log_x ? "log10(" : "", t->cols[t->x_col], t->log_x ? ")" : "");
    snprintf(yl, sizeof yl, "%s%s%s", t->log_y ? "log10(" : "", t->cols[t->y_col], t->log_y ? ")" : "");
    const cli_svg_opts o = {.xlabel = xl, .ylabel = yl, .title = t->title};
    rc = cli_svg_chart(path, &o, s, ns);
out:
    free(s);
    free(x);
    free(y);
    return rc;
}

static void list_experiments(FILE *f)
{
    fprintf(f, "experiments (wmat experiment NAME --help lists its keys):\n");
    const wmat_method_desc *d;
    for (int i = 0; (d = wmat__method_at(i)); i++)
        if (!strcmp(d->family, EFAMILY)) fprintf(f, "  %-20s %s\n", d->name, d->summary);
}

int cmd_experiment(int argc, char **argv)
{
    const cli_command *cmd = cli_find_command("experiment");
    const char *name = argc > 1 && argv[1][0] != '-' ? argv[1] : NULL;
    if (!name) {
        int help = 0;
        for (int i = 1; i < argc; i++) help |= !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
        if (!help) {
            list_experiments(stderr);
            return cli_usage_error("experiment", "name an experiment");
        }
        static const cli_opt none[] = {{NULL, 0, NULL, NULL, NULL}};
        cli_usage(cmd, none);
        printf("\n");
        list_experiments(stdout);
        return 0;
    }
    const wmat_method_desc *d = wmat__method_lookup(EFAMILY, name);
    if (!d) {
        list_experiments(stderr);
        return cli_usage_error("experiment", "no experiment called '%s'", name);
    }
    const char *csv = NULL, *svg = NULL;
    int seed = 1;
    cli_json js = {0};
    cli_opt opts[] = {
        {"--csv", OPT_STR, &csv, "FILE", "write the table as CSV (atomically)"},
        {"--svg", OPT_STR, &svg, "FILE", "draw the experiment's chart as SVG (atomically)"},
        {"--seed", OPT_INT, &seed, "N", "seed of every random draw (default 1)"},
        CLI_JSON_OPTS(&js),
        {NULL, 0, NULL, NULL, NULL},
    };
    wmat_pset ps;
    if (wmat__pset_init(&ps, d->schema)) return cli_fail("experiment");
    char title[160], epilog[512], kv[2048];
    snprintf(epilog, sizeof epilog, "%s\n", d->summary);
    snprintf(title, sizeof title, "keys of experiment %s (--KEY VALUE)", name);
    const char *pos[1];
    int np, rc = cli_parse_params(cmd, argc - 1, argv + 1, opts, &ps, title, epilog, pos, 0, 0, &np);
    const int kv_len = wmat__pset_format(&ps, 1, ';', kv, sizeof kv);
    wmat__pset_free(&ps);
    if (rc) return rc == 1 ? 0 : rc;
    if ((size_t)kv_len >= sizeof kv) return cli_usage_error("experiment", "keys too long");
    if (seed < 1) return cli_usage_error("experiment", "--seed must be positive (got %d)", seed);
    if ((rc = cli_json_check("experiment", &js))) return rc;

    wmat_context wc = wmat_context_default();
    wc.n_threads = g_cli.threads;
    wc.progress = cli_progress;
    const wmat_experiment_params p = {.params = kv, .seed = (uint64_t)seed, .ctx = &wc};
    wmat_table t;
    rc = 1;
    if (wmat_experiment_run(name, &p, &t)) {
        cli_fail("experiment");
        goto out;
    }
    if (!js.flag) print_markdown(stdout, &t);
    if (csv && write_csv(csv, &t)) {
        cli_fail("experiment");
        goto out;
    }
    if (svg && write_svg(svg, &t)) {
        cli_fail("experiment");
        goto out;
    }
    int jfail;
    FILE *jf = cli_json_open("experiment", &js, &jfail);
    if (jfail) goto out;
    if (jf) {
        write_json(jf, name, &t);
        if (cli_json_close("experiment", &js)) goto out;
    }
    if (!js.flag) {
        if (csv) printf("wrote %s\n", csv);
        if (svg && t.x_col >= 0) printf("wrote %s\n", svg);
    }
    rc = 0;
out:
    wmat_table_free(&t);
    return rc;
}
