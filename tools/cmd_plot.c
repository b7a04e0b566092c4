/* wmat plot: a line chart (SVG) of a table of points, so the size-quality
 * curves of the docs are drawn by the same code as train's loss curves and
 * from the tables the scripts print, without a plotting stack. */
#include "cli.h"
#include "cli_out.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    double *x, *y;
    int n, cap;
} series;

typedef struct {
    series *s;
    int n, cap;
} table;

static void table_free(table *t)
{
    for (int i = 0; i < t->n; i++) {
        free(t->s[i].name);
        free(t->s[i].x);
        free(t->s[i].y);
    }
    free(t->s);
}

static series *series_get(table *t, const char *name)
{
    for (int i = 0; i < t->n; i++)
        if (!strcmp(t->s[i].name, name)) return &t->s[i];
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 8;
        series *s = realloc(t->s, (size_t)cap * sizeof *s);
        if (!s) return NULL;
        t->s = s;
        t->cap = cap;
    }
    series *s = &t->s[t->n];
    memset(s, 0, sizeof *s);
    if (!(s->name = strdup(name))) return NULL;
    t->n++;
    return s;
}

static int series_add(series *s, double x, double y)
{
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        double *nx = realloc(s->x, (size_t)cap * sizeof *nx);
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, (size_t)cap * sizeof *ny);
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
    return 0;
}

/* A number field of the table: all of it a finite number. */
static int field_num(const char *f, double *v)
{
    char *end;
    errno = 0;
    *v = strtod(f, &end);
    while (*end == ' ' || *end == '\r') end++;
    return end != f && !*end && !errno && isfinite(*v) ? 0 : -1;
}

/* Lines "SERIES<TAB>X<TAB>Y"; '#' comments and blank lines skipped. */
static int table_read(const char *path, table *t)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "r") : stdin;
    if (!f) {
        fprintf(stderr, "wmat plot: error: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    int ln = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        size_t len = strlen(line);
        if (len == sizeof line - 1 && line[len - 1] != '\n') {
            fprintf(stderr, "wmat plot: error: %s:%d: line longer than %zu characters\n", path, ln, sizeof line - 2);
            rc = -1;
            break;
        }
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (!len || line[0] == '#') continue;
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t1 || !t2 || strchr(t2 + 1, '\t') || t1 == line) {
            fprintf(stderr, "wmat plot: error: %s:%d: expected SERIES<TAB>X<TAB>Y\n", path, ln);
            rc = -1;
            break;
        }
        *t1 = *t2 = 0;
        double x, y;
        if (field_num(t1 + 1, &x) || field_num(t2 + 1, &y)) {
            fprintf(stderr, "wmat plot: error: %s:%d: X and Y must be finite numbers ('%s', '%s')\n", path, ln, t1 + 1, t2 + 1);
            rc = -1;
            break;
        }
        series *s = series_get(t, line);
        if (!s || series_add(s, x, y)) {
            fprintf(stderr, "wmat plot: error: out of memory\n");
            rc = -1;
            break;
        }
    }
    if (!rc && ferror(f)) {
        fprintf(stderr, "wmat plot: error: %s: read failed\n", path);
        rc = -1;
    }
    if (f != stdin) fclose(f);
    if (!rc && !t->n) {
        fprintf(stderr, "wmat plot: error: %s: no points\n", path);
        rc = -1;
    }
    return rc;
}

/* A curve is drawn in the order of x (insertion sort: a few points). */
static void series_sort(series *s)
{
    for (int i = 1; i < s->n; i++)
        for (int j = i; j > 0 && s->x[j - 1] > s->x[j]; j--) {
            double tx = s->x[j], ty = s->y[j];
            s->x[j] = s->x[j - 1];
            s->y[j] = s->y[j - 1];
            s->x[j - 1] = tx;
            s->y[j - 1] = ty;
        }
}

/* name is in the comma-separated list */
static int in_list(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *c = strchr(p, ',');
        size_t len = c ? (size_t)(c - p) : strlen(p);
        if (len == n && !strncmp(p, name, n)) return 1;
        p = c ? c + 1 : NULL;
    }
    return 0;
}

int cmd_plot(int argc, char **argv)
{
    const char *xlabel = "x", *ylabel = "y", *title = NULL, *dashed = NULL;
    float ymax = 0, width = 0;
    const cli_opt opts[] = {
        {"--xlabel", OPT_STR, &xlabel, "TEXT", "x axis label (default x)"},
        {"--ylabel", OPT_STR, &ylabel, "TEXT", "y axis label (default y)"},
        {"--title", OPT_STR, &title, "TEXT", "chart title (default none)"},
        {"--ymax", OPT_FLOAT, &ymax, "Y", "leave out points above Y (counted in a note on the chart); 0: none (default)"},
        {"--dashed", OPT_STR, &dashed, "NAMES", "comma-separated series drawn dashed (reference curves)"},
        {"--width", OPT_FLOAT, &width, "PX", "chart width in pixels (default 640; height 400 plus legend rows)"},
        {NULL, 0, NULL, NULL, NULL},
    };
    const char *pos[2];
    int np = 0;
    int rc = cli_parse(cli_find_command("plot"), argc, argv, opts, pos, 2, 2, &np);
    if (rc) return rc == 1 ? 0 : rc;
    if (!(ymax >= 0) || !(width >= 0) || (width > 0 && width < 200) || width > 10000) {
        fprintf(stderr, "wmat plot: error: --ymax must be >= 0 and --width 0 or 200..10000\n");
        return 2;
    }
    table t = {0};
    if (table_read(pos[0], &t)) {
        table_free(&t);
        return 1;
    }
    static const char *palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                                    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
    cli_svg_series *s = calloc((size_t)t.n, sizeof *s);
    if (!s) {
        table_free(&t);
        fprintf(stderr, "wmat plot: error: out of memory\n");
        return 1;
    }
    for (int i = 0; i < t.n; i++) {
        series_sort(&t.s[i]);
        const int ref = in_list(dashed, t.s[i].name);
        s[i] = (cli_svg_series){t.s[i].name, ref ? "#000000" : palette[i % 10], t.s[i].x, t.s[i].y, t.s[i].n, ref ? 2 : 1.5, 1, ref};
    }
    const cli_svg_opts o = {.xlabel = xlabel, .ylabel = ylabel, .title = title, .ymax = ymax, .width = width};
    rc = cli_svg_chart(pos[1], &o, s, t.n);
    if (!rc) fprintf(stderr, "wmat plot: %d series, wrote %s\n", t.n, pos[1]);
    free(s);
    table_free(&t);
    return rc ? cli_fail("plot") : 0;
}
