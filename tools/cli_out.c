#include "cli_out.h"

#include <string.h>

FILE *cli_out_open(wmat_afile *af, const char *path)
{
    if (wmat__afile_open(af, path)) return NULL;
    return af->f;
}

int cli_out_close(wmat_afile *af)
{
    if (!af->f) return -1;
    /* fprintf bypasses wmat__afile_write: its errors are in the stream */
    if (ferror(af->f)) {
        char *path = af->path;
        af->path = NULL; /* keep the name for the message */
        wmat__afile_abort(af);
        wmat_set_error(WMAT_ERR_IO, "%s: write failed", path ? path : "output");
        wmat__free(path);
        return -1;
    }
    return wmat__afile_commit(af) ? -1 : 0;
}

void cli_out_abort(wmat_afile *af)
{
    if (af->f || af->tmp_path) wmat__afile_abort(af);
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)(s ? s : ""); *c; c++) {
        if (*c == '"' || *c == '\\') fprintf(f, "\\%c", *c);
        else if (*c == '\n') fputs("\\n", f);
        else if (*c < 0x20) fprintf(f, "\\u%04x", *c);
        else fputc(*c, f);
    }
    fputc('"', f);
}

/* Text of labels and legends: the caller's strings may hold XML's specials
 * (a series named "w<4 bits" from a TSV file). */
static void svg_text(FILE *f, const char *s)
{
    for (const char *c = s ? s : ""; *c; c++) {
        if (*c == '<') fputs("&lt;", f);
        else if (*c == '>') fputs("&gt;", f);
        else if (*c == '&') fputs("&amp;", f);
        else if (*c == '"') fputs("&quot;", f);
        else fputc(*c, f);
    }
}

static double legend_width(const char *label)
{
    const double w = 7.0 * (double)strlen(label) + 30;
    return w > 100 ? w : 100;
}

int cli_svg_chart(const char *path, const cli_svg_opts *o, const cli_svg_series *s, int ns)
{
    const double W = o->width > 0 ? o->width : 640, H0 = o->height > 0 ? o->height : 400;
    const double ml = 60, mr = 20, mb = 50;
    const int clip = o->ymax == o->ymax && o->ymax != 0; /* a NaN or 0 ymax: no clipping */
    /* Legend rows first: the plot starts below them. */
    int rows = 1;
    double lx = ml + 10;
    for (int k = 0; k < ns; k++) {
        if (s[k].n <= 0) continue;
        if (lx > ml + 10 && lx + legend_width(s[k].label) > W - mr) {
            rows++;
            lx = ml + 10;
        }
        lx += legend_width(s[k].label);
    }
    const double top = o->title ? 22 : 0, mt = top + 16 * rows + 14, H = H0 + 16 * (rows - 1) + top;
    double xmin = 0, xmax = 1, ymin = 1e30, ymax = -1e30;
    int hidden = 0;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            if (clip && !(s[k].y[i] <= o->ymax)) {
                hidden++;
                continue;
            }
            if (s[k].x[i] < xmin) xmin = s[k].x[i];
            if (s[k].x[i] > xmax) xmax = s[k].x[i];
            if (s[k].y[i] < ymin) ymin = s[k].y[i];
            if (s[k].y[i] > ymax) ymax = s[k].y[i];
        }
    if (!(ymax > ymin)) {
        ymin = ymin < 1e30 ? ymin - 1 : 0;
        ymax = ymin + 2;
    }
    double pad = 0.05 * (ymax - ymin);
    ymin -= pad;
    ymax += pad;
    wmat_afile af;
    FILE *f = cli_out_open(&af, path);
    if (!f) return -1;
    const int xdec = xmax - xmin >= 4 ? 0 : 2; /* steps are integers, a path parameter is not */
#define PX(x) (ml + ((x)-xmin) / (xmax - xmin) * (W - ml - mr))
#define PY(y) (mt + (ymax - (y)) / (ymax - ymin) * (H - mt - mb))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    if (o->title) {
        fprintf(f, "<text x=\"%g\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">", W / 2);
        svg_text(f, o->title);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", ml, H - mb, W - mr, H - mb);
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", ml, mt, ml, H - mb);
    for (int i = 0; i <= 4; i++) {
        double y = ymin + (ymax - ymin) * i / 4, x = xmin + (xmax - xmin) * i / 4;
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.2f</text>\n", ml - 4, PY(y) + 4, y);
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", ml, PY(y), W - mr, PY(y));
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.*f</text>\n", PX(x), H - mb + 16, xdec, x);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">", (W + ml) / 2, H - 12);
    svg_text(f, o->xlabel);
    fprintf(f, "</text>\n<text x=\"14\" y=\"%g\" transform=\"rotate(-90 14 %g)\" text-anchor=\"middle\">", H / 2, H / 2);
    svg_text(f, o->ylabel);
    fprintf(f, "</text>\n");
    if (hidden)
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\" fill=\"#666\">%d point%s above %g not shown</text>\n", W - mr,
                H - 12, hidden, hidden > 1 ? "s" : "", o->ymax);
    lx = ml + 10;
    double ly = top + 18;
    for (int k = 0; k < ns; k++) {
        if (s[k].n <= 0) continue;
        /* Clipped points break the line: each run of visible points is its own polyline. */
        int open = 0;
        for (int i = 0; i < s[k].n; i++) {
            const int vis = !clip || s[k].y[i] <= o->ymax;
            if (vis && !open) {
                fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%g\"%s points=\"", s[k].color, s[k].width,
                        s[k].dashed ? " stroke-dasharray=\"6 4\"" : "");
                open = 1;
            }
            if (vis) fprintf(f, "%.1f,%.1f ", PX(s[k].x[i]), PY(s[k].y[i]));
            if (open && (!vis || i == s[k].n - 1)) {
                fprintf(f, "\"/>\n");
                open = 0;
            }
        }
        if (s[k].markers)
            for (int i = 0; i < s[k].n; i++)
                if (!clip || s[k].y[i] <= o->ymax)
                    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(s[k].x[i]), PY(s[k].y[i]), s[k].color);
        if (lx > ml + 10 && lx + legend_width(s[k].label) > W - mr) {
            lx = ml + 10;
            ly += 16;
        }
        fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"%s\">", lx, ly, s[k].color);
        svg_text(f, s[k].label);
        fprintf(f, "</text>\n");
        lx += legend_width(s[k].label);
    }
    fprintf(f, "</svg>\n");
#undef PX
#undef PY
    return cli_out_close(&af);
}

int cli_svg_lines(const char *path, const char *xlabel, const char *ylabel, const cli_svg_series *s, int ns)
{
    const cli_svg_opts o = {.xlabel = xlabel, .ylabel = ylabel};
    return cli_svg_chart(path, &o, s, ns);
}
