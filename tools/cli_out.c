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

int cli_svg_lines(const char *path, const char *xlabel, const char *ylabel, const cli_svg_series *s, int ns)
{
    wmat_afile af;
    FILE *f = cli_out_open(&af, path);
    if (!f) return -1;
    const double W = 640, H = 400, ml = 60, mr = 20, mt = 30, mb = 50;
    double xmin = 0, xmax = 1, ymin = 1e30, ymax = -1e30;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            if (s[k].x[i] < xmin) xmin = s[k].x[i];
            if (s[k].x[i] > xmax) xmax = s[k].x[i];
            if (s[k].y[i] < ymin) ymin = s[k].y[i];
            if (s[k].y[i] > ymax) ymax = s[k].y[i];
        }
    if (!(ymax > ymin)) {
        ymin -= 1;
        ymax += 1;
    }
    double pad = 0.05 * (ymax - ymin);
    ymin -= pad;
    ymax += pad;
    const int xdec = xmax - xmin >= 4 ? 0 : 2; /* steps are integers, a path parameter is not */
#define PX(x) (ml + ((x)-xmin) / (xmax - xmin) * (W - ml - mr))
#define PY(y) (mt + (ymax - (y)) / (ymax - ymin) * (H - mt - mb))
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H);
    fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", ml, H - mb, W - mr, H - mb);
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", ml, mt, ml, H - mb);
    for (int i = 0; i <= 4; i++) {
        double y = ymin + (ymax - ymin) * i / 4, x = xmin + (xmax - xmin) * i / 4;
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.2f</text>\n", ml - 4, PY(y) + 4, y);
        fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", ml, PY(y), W - mr, PY(y));
        fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.*f</text>\n", PX(x), H - mb + 16, xdec, x);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n", (W + ml) / 2, H - 12, xlabel);
    fprintf(f, "<text x=\"14\" y=\"%g\" transform=\"rotate(-90 14 %g)\" text-anchor=\"middle\">%s</text>\n", H / 2, H / 2, ylabel);
    double lx = ml + 10;
    for (int k = 0; k < ns; k++) {
        if (s[k].n <= 0) continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%g\" points=\"", s[k].color, s[k].width);
        for (int i = 0; i < s[k].n; i++) fprintf(f, "%.1f,%.1f ", PX(s[k].x[i]), PY(s[k].y[i]));
        fprintf(f, "\"/>\n");
        if (s[k].markers)
            for (int i = 0; i < s[k].n; i++)
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(s[k].x[i]), PY(s[k].y[i]), s[k].color);
        fprintf(f, "<text x=\"%g\" y=\"18\" fill=\"%s\">%s</text>\n", lx, s[k].color, s[k].label);
        const double w = 7.0 * (double)strlen(s[k].label) + 30;
        lx += w > 100 ? w : 100;
    }
    fprintf(f, "</svg>\n");
#undef PX
#undef PY
    return cli_out_close(&af);
}
