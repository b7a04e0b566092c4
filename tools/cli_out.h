/* Text output files of the CLI (loss CSV, loss SVG) written atomically: the
 * text goes to "<path>.tmp.<pid>" and is renamed over <path> only when all
 * of it was written, flushed and synced, so a crash, a full disk or a
 * Ctrl-C never leaves a truncated file under the final name. */
#ifndef WMAT_CLI_OUT_H
#define WMAT_CLI_OUT_H

#include <stdio.h>

#include "core/internal.h"

/* The temporary's stream to fprintf into; NULL with wmat_last_error() set. */
FILE *cli_out_open(wmat_afile *af, const char *path);
/* Check the stream for write errors, then commit (0) or remove the
 * temporary (-1, wmat_last_error() set). Takes NULL streams quietly. */
int cli_out_close(wmat_afile *af);
/* Remove the temporary without touching <path> (an aborted command). */
void cli_out_abort(wmat_afile *af);

/* One line of a chart: n points (x[i], y[i]); n == 0 leaves it (and its
 * legend entry) out. */
typedef struct {
    const char *label, *color;
    const double *x, *y;
    int n;
    double width;   /* stroke width */
    int markers;    /* a dot at every point */
    int dashed;     /* a reference curve */
} cli_svg_series;

typedef struct {
    const char *xlabel, *ylabel;
    const char *title;   /* NULL: none */
    double ymax;         /* > 0: points above it are left out (and counted in a note) */
    double width, height; /* 0: 640 x 400 */
} cli_svg_opts;

/* A line chart of ns series as an SVG file (atomic): x from min(0, data)
 * to max(1, data), y over the data with 5% margins, four grid lines, a
 * legend at the top. Used by train's loss curve and align's loss along the
 * interpolation path. -1 with wmat_last_error() set. */
int cli_svg_lines(const char *path, const char *xlabel, const char *ylabel, const cli_svg_series *s, int ns);
/* The same with a title, clipping of outliers and a size; legends wrap onto
 * more rows when they do not fit one (the plot moves down). */
int cli_svg_chart(const char *path, const cli_svg_opts *o, const cli_svg_series *s, int ns);

/* s as a JSON string literal, quotes included. */
void cli_json_string(FILE *f, const char *s);

#endif
