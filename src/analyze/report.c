/* Writers of an analysis: CSV and JSON (one record per matrix, the column
 * names of docs/ANALYSIS.md), the terminal summary, and a self-contained
 * HTML report with inline SVG charts drawn here (no scripts, no network). */
#include "analyze.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- columns */

typedef enum { C_DBL, C_INT, C_I64 } col_type;
typedef struct {
    const char *name;
    col_type type;
    size_t off;
    int base_only;
} an_col;

#define COL(f, t) {#f, t, offsetof(wmat_matrix_stats, f), 0}
#define BCOL(f, t) {#f, t, offsetof(wmat_matrix_stats, f), 1}
static const an_col g_cols[] = {
    COL(layer, C_INT),
    COL(rows, C_I64),
    COL(cols, C_I64),
    COL(n_sv, C_INT),
    COL(norm_fro, C_DBL),
    COL(spectral_norm_sv, C_DBL),
    COL(norm, C_DBL),
    COL(lambda_max, C_DBL),
    COL(spectral_norm, C_DBL),
    COL(log_norm, C_DBL),
    COL(log_spectral_norm, C_DBL),
    COL(stable_rank, C_DBL),
    COL(entropy_rank, C_DBL),
    COL(rank90, C_INT),
    COL(rank95, C_INT),
    COL(rank99, C_INT),
    COL(alpha, C_DBL),
    COL(xmin, C_DBL),
    COL(xmax, C_DBL),
    COL(D, C_DBL),
    COL(alpha_weighted, C_DBL),
    COL(log_alpha_norm, C_DBL),
    COL(num_pl_spikes, C_INT),
    COL(sigma_mp, C_DBL),
    COL(lambda_plus, C_DBL),
    COL(mp_softrank, C_DBL),
    COL(num_spikes, C_INT),
    COL(lr_err10, C_DBL),
    COL(lr_err25, C_DBL),
    COL(lr_err50, C_DBL),
    COL(lrc, C_INT),
    COL(ic_max_ratio, C_DBL),
    COL(oc_max_ratio, C_DBL),
    COL(ic_kurtosis_max, C_DBL),
    COL(oc_kurtosis_max, C_DBL),
    COL(ic_kurtosis_mean, C_DBL),
    COL(oc_kurtosis_mean, C_DBL),
    COL(rtn4_err_per_oc, C_DBL),
    COL(rtn4_err_per_ic, C_DBL),
    BCOL(delta_rel, C_DBL),
    BCOL(delta_stable_rank, C_DBL),
    BCOL(delta_entropy_rank, C_DBL),
    BCOL(subspace_overlap, C_DBL),
    BCOL(intruder_k, C_INT),
    BCOL(num_intruders, C_INT),
    COL(seconds, C_DBL),
};
#define N_COLS ((int)(sizeof g_cols / sizeof g_cols[0]))

static double col_value(const wmat_matrix_stats *st, const an_col *c)
{
    const char *p = (const char *)st + c->off;
    switch (c->type) {
    case C_INT: return *(const int *)p;
    case C_I64: return (double)*(const int64_t *)p;
    default: return *(const double *)p;
    }
}

static void put_num(FILE *f, const an_col *c, double v, const char *nan_text)
{
    if (c->type != C_DBL) fprintf(f, "%lld", (long long)v);
    else if (!isfinite(v)) fputs(nan_text, f);
    else fprintf(f, "%.9g", v);
}

/* ---------------------------------------------------------------- atomic */

typedef struct {
    wmat_afile af;
} out_file;

static int out_open(out_file *o, const char *path) { return wmat__afile_open(&o->af, path); }
static int out_commit(out_file *o)
{
    if (ferror(o->af.f)) {
        wmat__afile_abort(&o->af);
        return wmat_set_error(WMAT_ERR_IO, "write failed");
    }
    return wmat__afile_commit(&o->af);
}

/* ---------------------------------------------------------------- CSV */

static void csv_list(FILE *f, const int *idx, const double *val, int n)
{
    fputc('"', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d:%.4g", i ? ";" : "", idx[i], val[i]);
    fputc('"', f);
}

int wmat_analysis_write_csv(const wmat_analysis *a, const char *path)
{
    if (!a || !path) return wmat_set_error(WMAT_ERR_INVALID, "write_csv: bad arguments");
    out_file o;
    int rc = out_open(&o, path);
    if (rc) return rc;
    FILE *f = o.af.f;
    fprintf(f, "name,role");
    for (int c = 0; c < N_COLS; c++)
        if (!g_cols[c].base_only || a->has_base) fprintf(f, ",%s", g_cols[c].name);
    fprintf(f, ",top_ic,top_oc");
    if (a->has_base) fprintf(f, ",intruder_ranks,intruder_cos");
    fputc('\n', f);
    for (int i = 0; i < a->n; i++) {
        const wmat_matrix_stats *st = &a->m[i];
        fprintf(f, "%s,%s", st->name, st->role);
        for (int c = 0; c < N_COLS; c++) {
            if (g_cols[c].base_only && !a->has_base) continue;
            fputc(',', f);
            put_num(f, &g_cols[c], col_value(st, &g_cols[c]), "");
        }
        fputc(',', f);
        csv_list(f, st->top_ic, st->top_ic_ratio, st->n_top);
        fputc(',', f);
        csv_list(f, st->top_oc, st->top_oc_ratio, st->n_top);
        if (a->has_base) {
            fprintf(f, ",\"");
            int first = 1;
            for (int k = 0; k < st->intruder_k; k++)
                if (st->intruder_cos[k] < a->intruder_threshold) {
                    fprintf(f, "%s%d", first ? "" : ";", k + 1);
                    first = 0;
                }
            fprintf(f, "\",\"");
            for (int k = 0; k < st->intruder_k; k++) fprintf(f, "%s%.4f", k ? ";" : "", st->intruder_cos[k]);
            fputc('"', f);
        }
        fputc('\n', f);
    }
    return out_commit(&o);
}

/* ---------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}

static void json_arr(FILE *f, const double *x, int n)
{
    fputc('[', f);
    for (int i = 0; i < n; i++) {
        if (i) fputc(',', f);
        if (isfinite(x[i])) fprintf(f, "%.9g", x[i]);
        else fputs("null", f);
    }
    fputc(']', f);
}

static const char *const g_comp_names[WMAT_COMP_COUNT] = {"Q", "K", "V"};

int wmat_analysis_write_json(const wmat_analysis *a, const char *path)
{
    if (!a || !path) return wmat_set_error(WMAT_ERR_INVALID, "write_json: bad arguments");
    out_file o;
    int rc = out_open(&o, path);
    if (rc) return rc;
    FILE *f = o.af.f;
    fprintf(f, "{\"wmat_version\": \"%s\", \"model\": ", WMAT_VERSION);
    json_str(f, a->model_path);
    fprintf(f, ", \"base\": ");
    if (a->has_base) json_str(f, a->base_path);
    else fputs("null", f);
    fprintf(f, ", \"mode\": \"%s\", \"intruder_threshold\": %g, \"seconds\": %.4f,\n\"matrices\": [\n",
            a->exact ? "exact" : "gram", a->intruder_threshold, a->seconds);
    for (int i = 0; i < a->n; i++) {
        const wmat_matrix_stats *st = &a->m[i];
        fprintf(f, "%s{\"name\": ", i ? ",\n" : "");
        json_str(f, st->name);
        fprintf(f, ", \"role\": \"%s\"", st->role);
        for (int c = 0; c < N_COLS; c++) {
            if (g_cols[c].base_only && !a->has_base) continue;
            fprintf(f, ", \"%s\": ", g_cols[c].name);
            put_num(f, &g_cols[c], col_value(st, &g_cols[c]), "null");
        }
        fprintf(f, ", \"top_ic\": [");
        for (int k = 0; k < st->n_top; k++)
            fprintf(f, "%s{\"channel\": %d, \"ratio\": %.6g}", k ? ", " : "", st->top_ic[k], st->top_ic_ratio[k]);
        fprintf(f, "], \"top_oc\": [");
        for (int k = 0; k < st->n_top; k++)
            fprintf(f, "%s{\"channel\": %d, \"ratio\": %.6g}", k ? ", " : "", st->top_oc[k], st->top_oc_ratio[k]);
        fprintf(f, "]");
        if (a->has_base) {
            fprintf(f, ", \"intruder_ranks\": [");
            int first = 1;
            for (int k = 0; k < st->intruder_k; k++)
                if (st->intruder_cos[k] < a->intruder_threshold) {
                    fprintf(f, "%s%d", first ? "" : ", ", k + 1);
                    first = 0;
                }
            fprintf(f, "], \"intruder_cos\": ");
            json_arr(f, st->intruder_cos, st->intruder_k);
            fprintf(f, ", \"delta_sv\": ");
            json_arr(f, st->delta_sv, st->n_sv);
        }
        fprintf(f, ", \"sv\": ");
        json_arr(f, st->sv, st->n_sv);
        fputc('}', f);
    }
    fprintf(f, "\n],\n\"heads\": [");
    for (int i = 0; i < a->n_heads; i++) {
        const wmat_head_stats *h = &a->h[i];
        fprintf(f,
                "%s\n{\"layer\": %d, \"head\": %d, \"kv_head\": %d, \"ov_norm_fro\": %.9g, \"qk_norm_fro\": %.9g, "
                "\"ov_stable_rank\": %.9g, \"qk_stable_rank\": %.9g, \"ov_entropy_rank\": %.9g, \"qk_entropy_rank\": %.9g, "
                "\"ov_sv\": ",
                i ? "," : "", h->layer, h->head, h->kv_head, h->ov_norm_fro, h->qk_norm_fro, h->ov_stable_rank,
                h->qk_stable_rank, h->ov_entropy_rank, h->qk_entropy_rank);
        json_arr(f, h->ov_sv, h->n_sv);
        fprintf(f, ", \"qk_sv\": ");
        json_arr(f, h->qk_sv, h->n_sv);
        fputc('}', f);
    }
    int ntop = a->n_comp < 200 ? a->n_comp : 200;
    fprintf(f, "],\n\"n_compositions\": %d,\n\"compositions_top\": [", a->n_comp);
    for (int i = 0; i < ntop; i++) {
        const wmat_composition *c = &a->comp[i];
        fprintf(f, "%s\n{\"kind\": \"%s\", \"src_layer\": %d, \"src_head\": %d, \"dst_layer\": %d, \"dst_head\": %d, "
                   "\"score\": %.9g}",
                i ? "," : "", g_comp_names[c->kind], c->src_layer, c->src_head, c->dst_layer, c->dst_head, c->score);
    }
    fprintf(f, "]}\n");
    return out_commit(&o);
}

/* ---------------------------------------------------------------- findings */

typedef struct {
    char **line;
    int n, cap;
} findings;

static void add_finding(findings *fd, const char *fmt, ...)
{
    if (fd->n == fd->cap) {
        int nc = fd->cap ? 2 * fd->cap : 16;
        char **nl = wmat__realloc(fd->line, (size_t)nc * sizeof(char *));
        if (!nl) return;
        fd->line = nl;
        fd->cap = nc;
    }
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fd->line[fd->n] = wmat__strdup(buf);
    if (fd->line[fd->n]) fd->n++;
}

static void findings_free(findings *fd)
{
    for (int i = 0; i < fd->n; i++) wmat__free(fd->line[i]);
    wmat__free(fd->line);
}

static int idx_by(const wmat_analysis *a, int *idx, double (*key)(const wmat_matrix_stats *))
{
    int n = 0;
    for (int i = 0; i < a->n; i++)
        if (isfinite(key(&a->m[i]))) idx[n++] = i;
    /* insertion sort, descending (n is the number of matrices) */
    for (int i = 1; i < n; i++) {
        int v = idx[i], j = i;
        while (j > 0 && key(&a->m[idx[j - 1]]) < key(&a->m[v])) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = v;
    }
    return n;
}

static double k_ic(const wmat_matrix_stats *s) { return s->ic_max_ratio; }
static double k_oc(const wmat_matrix_stats *s) { return s->oc_max_ratio; }
static double k_drel(const wmat_matrix_stats *s) { return s->has_base ? s->delta_rel : NAN; }
static double k_rtn(const wmat_matrix_stats *s)
{
    return s->rtn4_err_per_oc > 0 ? s->rtn4_err_per_ic / s->rtn4_err_per_oc : NAN;
}

static void make_findings(const wmat_analysis *a, findings *fd)
{
    int *idx = wmat__malloc((size_t)(a->n ? a->n : 1) * sizeof(int));
    if (!idx) return;
    int lo = 0, hi = 0, nfit = 0;
    double amin = INFINITY, amax = -INFINITY;
    int imin = -1, imax = -1;
    for (int i = 0; i < a->n; i++) {
        double al = a->m[i].alpha;
        if (!isfinite(al)) continue;
        nfit++;
        if (al < 2) lo++;
        if (al > 6) hi++;
        if (al < amin) amin = al, imin = i;
        if (al > amax) amax = al, imax = i;
    }
    if (nfit)
        add_finding(fd, "power-law alpha over %d matrices: %d below 2 (very heavy-tailed), %d above 6 (close to random); "
                        "lowest %.2f (%s), highest %.2f (%s)",
                    nfit, lo, hi, amin, a->m[imin].name, amax, a->m[imax].name);
    int n = idx_by(a, idx, k_ic);
    for (int q = 0; q < n && q < 3; q++) {
        const wmat_matrix_stats *s = &a->m[idx[q]];
        add_finding(fd, "outlier input channel %d of %s: max|w| / RMS = %.1f (channel kurtosis max %.1f)", s->top_ic[0],
                    s->name, s->ic_max_ratio, s->ic_kurtosis_max);
    }
    n = idx_by(a, idx, k_oc);
    if (n) {
        const wmat_matrix_stats *s = &a->m[idx[0]];
        add_finding(fd, "strongest outlier output channel: row %d of %s, max|w| / RMS = %.1f", s->top_oc[0], s->name,
                    s->oc_max_ratio);
    }
    int ic_better = 0, oc_better = 0;
    for (int i = 0; i < a->n; i++) {
        double r = k_rtn(&a->m[i]);
        if (r < 0.9) ic_better++;
        if (r > 1.1) oc_better++;
    }
    n = idx_by(a, idx, k_rtn);
    add_finding(fd, "4-bit RTN: per-IC scales beat per-OC by >10%% on %d matrices, per-OC beats per-IC on %d%s%s%s", ic_better,
                oc_better, n ? " (largest per-IC / per-OC error ratio: " : "", n ? a->m[idx[0]].name : "", n ? ")" : "");
    int nlrc = 0, spikes = 0;
    for (int i = 0; i < a->n; i++) {
        nlrc += a->m[i].lrc;
        spikes += a->m[i].num_spikes;
    }
    add_finding(fd, "%d of %d matrices are low-rank components (LRC: best rank-25%% error <= 0.5); %d eigenvalues lie above "
                    "their Marchenko-Pastur bulk edge",
                nlrc, a->n, spikes);
    if (a->has_base) {
        n = idx_by(a, idx, k_drel);
        if (n)
            add_finding(fd, "largest change from the base: %s, ||dW||_F / ||W_base||_F = %.4g", a->m[idx[0]].name,
                        a->m[idx[0]].delta_rel);
        int tot = 0, mats = 0, best = -1;
        for (int i = 0; i < a->n; i++) {
            tot += a->m[i].num_intruders;
            if (a->m[i].num_intruders) mats++;
            if (a->m[i].num_intruders && (best < 0 || a->m[i].num_intruders > a->m[best].num_intruders)) best = i;
        }
        if (tot)
            add_finding(fd, "intruder dimensions: %d in %d matrices (most: %s with %d of its top %d)", tot, mats,
                        a->m[best].name, a->m[best].num_intruders, a->m[best].intruder_k);
        else
            add_finding(fd, "no intruder dimensions (every top singular vector has |cos| >= %.2f to a base one)",
                        a->intruder_threshold);
    }
    for (int kd = 0; kd < WMAT_COMP_COUNT; kd++) {
        for (int i = 0; i < a->n_comp; i++) {
            const wmat_composition *c = &a->comp[i];
            if ((int)c->kind != kd) continue;
            add_finding(fd, "strongest %s-composition: L%d.H%d -> L%d.H%d, score %.3f", g_comp_names[kd], c->src_layer,
                        c->src_head, c->dst_layer, c->dst_head, c->score);
            break;
        }
    }
    wmat__free(idx);
}

/* ---------------------------------------------------------------- summary */

int wmat_analysis_write_summary(const wmat_analysis *a, FILE *out, int max_rows)
{
    if (!a || !out) return wmat_set_error(WMAT_ERR_INVALID, "write_summary: bad arguments");
    fprintf(out, "%-40s %11s %6s %5s %7s %7s %5s %5s %4s %6s %6s %6s %6s %4s", "matrix", "shape", "alpha", "D", "srank",
            "erank", "r90", "mpsr", "spk", "IC max", "OC max", "rtnOC", "rtnIC", "LRC");
    if (a->has_base) fprintf(out, " %8s %5s", "dW/W", "intr");
    fputc('\n', out);
    int rows = max_rows > 0 && max_rows < a->n ? max_rows : a->n;
    for (int i = 0; i < rows; i++) {
        const wmat_matrix_stats *s = &a->m[i];
        char shape[32];
        snprintf(shape, sizeof shape, "%lldx%lld", (long long)s->rows, (long long)s->cols);
        const char *nm = s->name;
        size_t ln = strlen(nm);
        if (ln > 40) nm += ln - 40;
        fprintf(out, "%-40s %11s %6.2f %5.3f %7.2f %7.1f %5d %5.2f %4d %6.1f %6.1f %6.3f %6.3f %4s", nm, shape, s->alpha,
                s->D, s->stable_rank, s->entropy_rank, s->rank90, s->mp_softrank, s->num_spikes, s->ic_max_ratio,
                s->oc_max_ratio, s->rtn4_err_per_oc, s->rtn4_err_per_ic, s->lrc ? "yes" : "no");
        if (a->has_base) fprintf(out, " %8.2e %2d/%-2d", s->delta_rel, s->num_intruders, s->intruder_k);
        fputc('\n', out);
    }
    if (rows < a->n) fprintf(out, "... %d more matrices (see --csv / --json / --html)\n", a->n - rows);
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->m[i].kind, "f32")) { /* say so: the figures are of the dequantized matrices */
            fprintf(out, "(weights stored as %s and other kinds are analysed as their dequantized matrices)\n", a->m[i].kind);
            break;
        }
    findings fd = {0};
    make_findings(a, &fd);
    fprintf(out, "\nfindings:\n");
    for (int i = 0; i < fd.n; i++) fprintf(out, "  - %s\n", fd.line[i]);
    findings_free(&fd);
    return ferror(out) ? wmat_set_error(WMAT_ERR_IO, "cannot write the summary") : WMAT_OK;
}

/* ---------------------------------------------------------------- SVG */

static const char *role_color(const char *role)
{
    static const char *const names[] = {"q", "k", "v", "o", "gate", "up", "down", "embed", "classifier"};
    static const char *const colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#17becf", "#bcbd22"};
    for (int i = 0; i < 9; i++)
        if (!strcmp(role, names[i])) return colors[i];
    return "#7f7f7f";
}

static void html_esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

/* Up to ~6 round tick values covering [lo, hi]. */
static int nice_ticks(double lo, double hi, double *t, int cap)
{
    if (!(hi > lo)) {
        t[0] = lo;
        return 1;
    }
    double span = hi - lo, step = pow(10, floor(log10(span / 5)));
    double m = span / 5 / step;
    step *= m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10;
    int n = 0;
    for (double v = ceil(lo / step) * step; v <= hi + 1e-9 * span && n < cap; v += step) t[n++] = fabs(v) < 1e-12 * step ? 0 : v;
    return n;
}

typedef struct {
    double x0, x1, y0, y1; /* data range (log10 when log axes) */
    int logx, logy;
    int W, H, ml, mr, mt, mb;
} frame;

static double fx(const frame *fr, double x)
{
    if (fr->logx) x = log10(x);
    return fr->ml + (x - fr->x0) / (fr->x1 - fr->x0) * (fr->W - fr->ml - fr->mr);
}
static double fy(const frame *fr, double y)
{
    if (fr->logy) y = log10(y);
    return fr->H - fr->mb - (y - fr->y0) / (fr->y1 - fr->y0) * (fr->H - fr->mt - fr->mb);
}

static void axis_label(FILE *f, double v, int logv)
{
    if (logv) fprintf(f, "1e%d", (int)lround(v));
    else if (fabs(v) >= 1e4 || (fabs(v) < 1e-2 && v != 0)) fprintf(f, "%.0e", v);
    else fprintf(f, "%g", v);
}

/* Open an SVG with a frame, axes, ticks and labels. */
static void svg_begin(FILE *f, const frame *fr, const char *title, const char *xl, const char *yl)
{
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" class=\"chart\">",
            fr->W, fr->H, fr->W, fr->H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>", fr->W, fr->H);
    fprintf(f, "<text x=\"%d\" y=\"14\" class=\"t\">", fr->ml);
    html_esc(f, title);
    fprintf(f, "</text>");
    int px0 = fr->ml, px1 = fr->W - fr->mr, py0 = fr->mt, py1 = fr->H - fr->mb;
    double t[16];
    int nt = fr->logx ? 0 : nice_ticks(fr->x0, fr->x1, t, 16);
    if (fr->logx)
        for (double v = ceil(fr->x0); v <= fr->x1 && nt < 16; v += 1) t[nt++] = v;
    for (int i = 0; i < nt; i++) {
        double x = fr->ml + (t[i] - fr->x0) / (fr->x1 - fr->x0) * (px1 - px0);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" class=\"g\"/>", x, py0, x, py1);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" class=\"tk\" text-anchor=\"middle\">", x, py1 + 12);
        axis_label(f, t[i], fr->logx);
        fprintf(f, "</text>");
    }
    /* log axes spanning under two decades get round ticks of the exponent,
     * labelled with the value */
    int fine_log = fr->logy && fr->y1 - fr->y0 < 2;
    nt = fr->logy && !fine_log ? 0 : nice_ticks(fr->y0, fr->y1, t, 16);
    if (fr->logy && !fine_log)
        for (double v = ceil(fr->y0); v <= fr->y1 && nt < 16; v += 1) t[nt++] = v;
    for (int i = 0; i < nt; i++) {
        double y = py1 - (t[i] - fr->y0) / (fr->y1 - fr->y0) * (py1 - py0);
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" class=\"g\"/>", px0, y, px1, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" class=\"tk\" text-anchor=\"end\">", px0 - 3, y + 3);
        if (fine_log) fprintf(f, "%.3g", pow(10, t[i]));
        else axis_label(f, t[i], fr->logy);
        fprintf(f, "</text>");
    }
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"ax\"/>", px0, py0, px1 - px0, py1 - py0);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tk\" text-anchor=\"middle\">", (px0 + px1) / 2, fr->H - 3);
    html_esc(f, xl);
    fprintf(f, "</text><text x=\"10\" y=\"%d\" class=\"tk\" text-anchor=\"middle\" transform=\"rotate(-90 10 %d)\">",
            (py0 + py1) / 2, (py0 + py1) / 2);
    html_esc(f, yl);
    fprintf(f, "</text>");
}

static void range_pad(double *lo, double *hi, int logv)
{
    if (!isfinite(*lo) || !isfinite(*hi)) {
        *lo = 0;
        *hi = 1;
    }
    if (*hi - *lo < (logv ? 0.5 : 1e-9)) {
        double c = 0.5 * (*lo + *hi), h = logv ? 0.5 : (fabs(c) > 0 ? 0.1 * fabs(c) : 1);
        *lo = c - h;
        *hi = c + h;
    } else {
        double p = 0.05 * (*hi - *lo);
        *lo -= p;
        *hi += p;
    }
}

/* Per-layer chart of one metric, one line per role. */
static void chart_per_layer(FILE *f, const wmat_analysis *a, const char *title, size_t off, int logy, double hline)
{
    double ymin = INFINITY, ymax = -INFINITY;
    int lmax = 0, any = 0;
    for (int i = 0; i < a->n; i++) {
        const wmat_matrix_stats *s = &a->m[i];
        double v = *(const double *)((const char *)s + off);
        if (s->layer < 0 || !isfinite(v) || (logy && v <= 0)) continue;
        any = 1;
        if (logy) v = log10(v);
        if (v < ymin) ymin = v;
        if (v > ymax) ymax = v;
        if (s->layer > lmax) lmax = s->layer;
    }
    if (!any) return;
    if (isfinite(hline)) {
        double hv = logy ? log10(hline) : hline;
        if (hv < ymin) ymin = hv;
        if (hv > ymax) ymax = hv;
    }
    range_pad(&ymin, &ymax, logy);
    frame fr = {-0.3, lmax + 0.3, ymin, ymax, 0, logy, 420, 240, 46, 70, 22, 28};
    svg_begin(f, &fr, title, "layer", "");
    if (isfinite(hline))
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>", fr.ml,
                fy(&fr, hline), fr.W - fr.mr, fy(&fr, hline));
    static const char *const roles[] = {"q", "k", "v", "o", "gate", "up", "down"};
    for (int r = 0; r < 7; r++) {
        const char *col = role_color(roles[r]);
        int np = 0;
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 0) fprintf(f, "<polyline fill=\"none\" stroke-width=\"1.6\" stroke=\"%s\" points=\"", col);
            for (int l = 0; l <= lmax; l++)
                for (int i = 0; i < a->n; i++) {
                    const wmat_matrix_stats *s = &a->m[i];
                    double v = *(const double *)((const char *)s + off);
                    if (s->layer != l || strcmp(s->role, roles[r]) || !isfinite(v) || (logy && v <= 0)) continue;
                    if (pass == 0) {
                        fprintf(f, "%s%.1f,%.1f", np ? " " : "", fx(&fr, l), fy(&fr, v));
                        np++;
                    } else {
                        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"><title>", fx(&fr, l), fy(&fr, v), col);
                        html_esc(f, s->name);
                        fprintf(f, ": %.4g</title></circle>", v);
                    }
                }
            if (pass == 0) fprintf(f, "\"/>");
        }
        if (np)
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"3\" fill=\"%s\"/><text x=\"%d\" y=\"%d\" class=\"tk\">%s</text>",
                    fr.W - fr.mr + 8, fr.mt + 6 + 14 * r, col, fr.W - fr.mr + 22, fr.mt + 10 + 14 * r, roles[r]);
    }
    fprintf(f, "</svg>");
}

/* A matrix name without the "model." prefix and ".weight" suffix, for
 * chart titles (thread-local buffer). */
static const char *short_name(const char *name)
{
    static _Thread_local char buf[WMAT_NAME_MAX];
    if (!strncmp(name, "model.", 6)) name += 6;
    snprintf(buf, sizeof buf, "%s", name);
    size_t n = strlen(buf);
    if (n > 7 && !strcmp(buf + n - 7, ".weight")) buf[n - 7] = 0;
    if (!strncmp(buf, "layers.", 7)) memmove(buf + 1, buf + 7, strlen(buf + 7) + 1), buf[0] = 'L';
    return buf;
}

/* Eigenvalue density of one matrix on log-log axes (log-spaced bins), the
 * fitted power law over [xmin, xmax], xmin and the MP bulk edge. */
static void chart_esd(FILE *f, const wmat_matrix_stats *s)
{
    int r = s->n_sv, nb;
    double lmax = s->lambda_max, lo = INFINITY;
    int n = 0;
    for (int i = 0; i < r; i++) {
        double l = s->sv[i] * s->sv[i];
        if (l > 1e-10 * lmax) {
            n++;
            if (l < lo) lo = l;
        }
    }
    if (n < 2 || !(lmax > lo)) return;
    nb = (int)(2 * sqrt((double)n));
    nb = nb < 8 ? 8 : nb > 60 ? 60 : nb;
    double a = log10(lo), b = log10(lmax), w = (b - a) / nb;
    int cnt[60] = {0};
    for (int i = 0; i < r; i++) {
        double l = s->sv[i] * s->sv[i];
        if (!(l > 1e-10 * lmax)) continue;
        int k = (int)((log10(l) - a) / w);
        cnt[k < 0 ? 0 : k >= nb ? nb - 1 : k]++;
    }
    double dx[60], dy[60], ymin = INFINITY, ymax = -INFINITY;
    int np = 0;
    for (int k = 0; k < nb; k++) {
        if (!cnt[k]) continue;
        double e0 = pow(10, a + k * w), e1 = pow(10, a + (k + 1) * w);
        dx[np] = sqrt(e0 * e1);
        dy[np] = cnt[k] / ((double)n * (e1 - e0));
        if (log10(dy[np]) < ymin) ymin = log10(dy[np]);
        if (log10(dy[np]) > ymax) ymax = log10(dy[np]);
        np++;
    }
    int fit = isfinite(s->alpha) && s->xmin > 0;
    double p0 = 0, p1 = 0;
    if (fit) {
        double frac = (double)s->num_pl_spikes / n;
        p0 = frac * (s->alpha - 1) / s->xmin;
        p1 = p0 * pow(s->xmax / s->xmin, -s->alpha);
        if (log10(p1) < ymin) ymin = log10(p1);
        if (log10(p0) > ymax) ymax = log10(p0);
    }
    double x0 = a, x1 = b;
    if (s->lambda_plus > 0 && log10(s->lambda_plus) < x1 + 1 && log10(s->lambda_plus) > x0 - 1) {
        double lp = log10(s->lambda_plus);
        if (lp < x0) x0 = lp;
        if (lp > x1) x1 = lp;
    }
    range_pad(&x0, &x1, 1);
    range_pad(&ymin, &ymax, 1);
    frame fr = {x0, x1, ymin, ymax, 1, 1, 300, 210, 44, 10, 22, 28};
    char title[160];
    snprintf(title, sizeof title, "%s  alpha=%.2f D=%.3f", short_name(s->name), s->alpha, s->D);
    svg_begin(f, &fr, title, "eigenvalue lambda = s^2", "density");
    for (int i = 0; i < np; i++)
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.2\" fill=\"%s\"><title>lambda %.3g: density %.3g</title></circle>",
                fx(&fr, dx[i]), fy(&fr, dy[i]), role_color(s->role), dx[i], dy[i]);
    if (fit) {
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#d62728\" stroke-width=\"1.5\"><title>power "
                   "law, alpha %.3f over %d eigenvalues</title></line>",
                fx(&fr, s->xmin), fy(&fr, p0), fx(&fr, s->xmax), fy(&fr, p1), s->alpha, s->num_pl_spikes);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#d62728\" stroke-dasharray=\"3 3\"><title>xmin "
                   "%.4g</title></line>",
                fx(&fr, s->xmin), fr.mt, fx(&fr, s->xmin), fr.H - fr.mb, s->xmin);
    }
    if (s->lambda_plus > 0 && log10(s->lambda_plus) >= fr.x0 && log10(s->lambda_plus) <= fr.x1)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#2ca02c\" stroke-dasharray=\"6 3\"><title>MP bulk "
                   "edge %.4g (%d spikes above)</title></line>",
                fx(&fr, s->lambda_plus), fr.mt, fx(&fr, s->lambda_plus), fr.H - fr.mb, s->lambda_plus, s->num_spikes);
    fprintf(f, "</svg>");
}

/* max|w| / RMS of every channel (bucket maxima when there are many). */
static void chart_channels(FILE *f, const char *title, const char *name, const double *v, int n, const char *col)
{
    int nb = n > 600 ? 600 : n;
    double ymax = 0;
    for (int i = 0; i < n; i++)
        if (v[i] > ymax) ymax = v[i];
    frame fr = {-0.5, nb - 0.5, 0, ymax * 1.08 + 1e-12, 0, 0, 420, 190, 40, 10, 22, 28};
    char t[200];
    snprintf(t, sizeof t, "%s: %s", short_name(name), title);
    svg_begin(f, &fr, t, n > nb ? "channel (bucket max)" : "channel", "max|w|/RMS");
    double bw = (double)(fr.W - fr.ml - fr.mr) / nb;
    for (int k = 0; k < nb; k++) {
        int i0 = (int)((int64_t)k * n / nb), i1 = (int)((int64_t)(k + 1) * n / nb), im = i0;
        for (int i = i0; i < i1; i++)
            if (v[i] > v[im]) im = i;
        double y = fy(&fr, v[im]);
        fprintf(f, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" fill=\"%s\"><title>channel %d: %.3g</title></rect>",
                fx(&fr, k) - bw / 2, y, bw > 1.2 ? bw * 0.85 : bw, fr.H - fr.mb - y, col, im, v[im]);
    }
    fprintf(f, "</svg>");
}

static void heat_color(double t, char *buf)
{
    /* viridis-like ramp through five stops */
    static const double st[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
    if (!isfinite(t)) {
        strcpy(buf, "#eeeeee");
        return;
    }
    t = t < 0 ? 0 : t > 1 ? 1 : t;
    double p = t * 4;
    int i = (int)p;
    if (i > 3) i = 3;
    double u = p - i;
    sprintf(buf, "#%02x%02x%02x", (int)lround(st[i][0] + u * (st[i + 1][0] - st[i][0])),
            (int)lround(st[i][1] + u * (st[i + 1][1] - st[i][1])), (int)lround(st[i][2] + u * (st[i + 1][2] - st[i][2])));
}

typedef void (*label_fn)(const void *ctx, int i, char *buf, size_t cap);

/* A heatmap of v (nr, nc) with labels every `every` rows/columns; cells
 * below `mark` (if finite) get a red outline. */
static void heatmap(FILE *f, const char *title, int nr, int nc, const double *v, double vmin, double vmax, label_fn rl,
                    label_fn cl, const void *ctx, int every, int left, const char *xl, const char *yl, double mark)
{
    int cell = 700 / nc;
    cell = cell < 3 ? 3 : cell > 28 ? 28 : cell;
    int cellh = 900 / nr;
    cellh = cellh < 3 ? 3 : cellh > cell ? cell : cellh;
    if (cellh > 22) cellh = 22;
    int barh = nr * cellh < 60 ? 60 : nr * cellh > 200 ? 200 : nr * cellh;
    int W = left + nc * cell + 90, H = 30 + (nr * cellh > barh ? nr * cellh : barh) + 40;
    int tw = left + 7 * (int)strlen(title) + 10;
    if (W < tw) W = tw;
    /* column labels at least ~26 px apart */
    int cevery = every;
    while (cevery * cell < 26) cevery += every;
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" class=\"chart\">", W,
            H, W, H);
    fprintf(f, "<rect width=\"%d\" height=\"%d\" fill=\"#fff\"/><text x=\"%d\" y=\"14\" class=\"t\">", W, H, left);
    html_esc(f, title);
    fprintf(f, "</text>");
    char col[16], lab[96], lab2[96];
    for (int i = 0; i < nr; i++)
        for (int j = 0; j < nc; j++) {
            double x = v[(size_t)i * nc + j];
            heat_color((x - vmin) / (vmax - vmin), col);
            rl(ctx, i, lab, sizeof lab);
            cl(ctx, j, lab2, sizeof lab2);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"%s><title>", left + j * cell, 30 + i * cellh,
                    cell, cellh, col, isfinite(mark) && isfinite(x) && x < mark ? " stroke=\"#e00\" stroke-width=\"1.5\"" : "");
            html_esc(f, lab);
            fprintf(f, " / ");
            html_esc(f, lab2);
            if (isfinite(x)) fprintf(f, ": %.4g</title></rect>", x);
            else fprintf(f, ": n/a</title></rect>");
        }
    for (int i = 0; i < nr; i += every) {
        rl(ctx, i, lab, sizeof lab);
        fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tk\" text-anchor=\"end\">", left - 4, 30 + i * cellh + (cellh < 9 ? 8 : cellh - 2));
        html_esc(f, lab);
        fprintf(f, "</text>");
        if (every > 1 && i > 0)
            fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#fff\"/>", left, 30 + i * cellh, left + nc * cell,
                    30 + i * cellh);
    }
    for (int j = 0; j < nc; j += cevery) {
        cl(ctx, j, lab, sizeof lab);
        fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tk\">", left + j * cell + 1, 30 + nr * cellh + 12);
        html_esc(f, lab);
        fprintf(f, "</text>");
    }
    for (int j = every; every > 1 && j < nc; j += every)
        fprintf(f, "<line x1=\"%d\" y1=\"30\" x2=\"%d\" y2=\"%d\" stroke=\"#fff\"/>", left + j * cell, left + j * cell,
                30 + nr * cellh);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tk\">", left, 30 + nr * cellh + 26);
    html_esc(f, xl);
    fprintf(f, " (columns); ");
    html_esc(f, yl);
    fprintf(f, " (rows)</text>");
    /* colour bar */
    int bx = left + nc * cell + 20;
    for (int k = 0; k < 50; k++) {
        heat_color(1 - k / 49.0, col);
        fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"14\" height=\"%.1f\" fill=\"%s\"/>", bx, 30 + k * barh / 50.0,
                barh / 50.0 + 0.5, col);
    }
    fprintf(f, "<text x=\"%d\" y=\"38\" class=\"tk\">%.3g</text><text x=\"%d\" y=\"%d\" class=\"tk\">%.3g</text></svg>",
            bx + 17, vmax, bx + 17, 30 + barh, vmin);
}

static void head_label(const void *ctx, int i, char *buf, size_t cap)
{
    const wmat_analysis *a = ctx;
    if (a->n_heads > 96) snprintf(buf, cap, "L%d", i);
    else snprintf(buf, cap, "L%d.H%d", i / a->heads_per_layer, i % a->heads_per_layer);
}
static void layer_label(const void *ctx, int i, char *buf, size_t cap)
{
    (void)ctx;
    snprintf(buf, cap, "L%d", i);
}
static void hindex_label(const void *ctx, int i, char *buf, size_t cap)
{
    (void)ctx;
    snprintf(buf, cap, "H%d", i);
}
static void mat_label(const void *ctx, int i, char *buf, size_t cap)
{
    const wmat_analysis *a = ctx;
    snprintf(buf, cap, "%s", a->m[i].name);
}
static void rank_label(const void *ctx, int i, char *buf, size_t cap)
{
    (void)ctx;
    snprintf(buf, cap, "%d", i + 1);
}

/* ---------------------------------------------------------------- HTML */

static const char *g_css =
    "body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:20px;color:#222;background:#fafafa}"
    "h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}"
    ".grid{display:flex;flex-wrap:wrap;gap:10px}.chart{border:1px solid #ddd;background:#fff}"
    ".t{font-size:12px;font-weight:bold;fill:#222}.tk{font-size:10px;fill:#444}.g{stroke:#eee}"
    ".ax{fill:none;stroke:#888}table{border-collapse:collapse;font-size:12px;background:#fff}"
    "td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
    "th{background:#f0f0f0;position:sticky;top:0}.note{color:#555;font-size:13px;max-width:1100px}"
    "li{margin:3px 0}.bad{color:#b00;font-weight:bold}";

int wmat_analysis_write_html(const wmat_analysis *a, const char *path, const char *title)
{
    if (!a || !path) return wmat_set_error(WMAT_ERR_INVALID, "write_html: bad arguments");
    out_file o;
    int rc = out_open(&o, path);
    if (rc) return rc;
    FILE *f = o.af.f;
    const char *tt = title ? title : "wmat analysis";
    fprintf(f, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>");
    html_esc(f, tt);
    fprintf(f, "</title><style>%s</style></head><body>\n<h1>", g_css);
    html_esc(f, tt);
    fprintf(f, "</h1>\n<p class=\"note\">model <b>");
    html_esc(f, a->model_path);
    fprintf(f, "</b>");
    if (a->has_base) {
        fprintf(f, ", base <b>");
        html_esc(f, a->base_path);
        fprintf(f, "</b>");
    }
    fprintf(f, "; %d matrices, %d attention heads; spectra by %s; %.2f s; wmat %s. Hover a point or cell for its value.</p>\n",
            a->n, a->n_heads, a->exact ? "exact SVD (dgesdd)" : "the Gram matrix (dsyrk + dsyevd, double)", a->seconds,
            WMAT_VERSION);

    findings fd = {0};
    make_findings(a, &fd);
    fprintf(f, "<h2 id=\"findings\">Findings</h2><ul>");
    for (int i = 0; i < fd.n; i++) {
        fprintf(f, "<li>");
        html_esc(f, fd.line[i]);
        fprintf(f, "</li>");
    }
    fprintf(f, "</ul>\n");
    findings_free(&fd);

    fprintf(f, "<h2 id=\"layers\">Per layer</h2><p class=\"note\">alpha: power-law exponent of the eigenvalue density of "
               "W<sup>T</sup>W (dashed: 2 and 6 bracket WeightWatcher's well-trained range); stable rank "
               "||W||<sub>F</sub><sup>2</sup>/||W||<sub>2</sub><sup>2</sup>; effective rank exp(entropy of s/sum s).</p><div class=\"grid\">");
    chart_per_layer(f, a, "alpha (power-law exponent)", offsetof(wmat_matrix_stats, alpha), 0, 2.0);
    chart_per_layer(f, a, "stable rank", offsetof(wmat_matrix_stats, stable_rank), 0, NAN);
    chart_per_layer(f, a, "effective rank", offsetof(wmat_matrix_stats, entropy_rank), 0, NAN);
    chart_per_layer(f, a, "MP soft rank (lambda+ / lambda_max)", offsetof(wmat_matrix_stats, mp_softrank), 0, NAN);
    chart_per_layer(f, a, "best rank-25% relative error", offsetof(wmat_matrix_stats, lr_err25), 0, 0.5);
    fprintf(f, "</div>\n");

    fprintf(f, "<h2 id=\"table\">Matrices</h2><table><tr><th>matrix</th><th>shape</th><th>alpha</th><th>xmin</th><th>D</th>"
               "<th>alpha_w</th><th>log_norm</th><th>stable rank</th><th>eff. rank</th><th>r90/r95/r99</th><th>mp_softrank</th>"
               "<th>spikes</th><th>IC max/RMS</th><th>OC max/RMS</th><th>RTN4 per-OC</th><th>RTN4 per-IC</th><th>LRC</th>");
    if (a->has_base) fprintf(f, "<th>dW/W</th><th>dW eff. rank</th><th>overlap</th><th>intruders</th>");
    fprintf(f, "</tr>\n");
    for (int i = 0; i < a->n; i++) {
        const wmat_matrix_stats *s = &a->m[i];
        fprintf(f, "<tr><td>");
        html_esc(f, s->name);
        fprintf(f, "</td><td>%lldx%lld</td><td%s>%.3f</td><td>%.3g</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.2f</td>"
                   "<td>%.1f</td><td>%d/%d/%d</td><td>%.3f</td><td>%d</td><td>%.1f (ch %d)</td><td>%.1f (ch %d)</td><td>%.4f</td>"
                   "<td>%.4f</td><td>%s</td>",
                (long long)s->rows, (long long)s->cols, s->alpha < 2 || s->alpha > 6 ? " class=\"bad\"" : "", s->alpha, s->xmin,
                s->D, s->alpha_weighted, s->log_norm, s->stable_rank, s->entropy_rank, s->rank90, s->rank95, s->rank99,
                s->mp_softrank, s->num_spikes, s->ic_max_ratio, s->top_ic[0], s->oc_max_ratio, s->top_oc[0], s->rtn4_err_per_oc,
                s->rtn4_err_per_ic, s->lrc ? "LRC" : "N-LRC");
        if (a->has_base)
            fprintf(f, "<td>%.3g</td><td>%.1f</td><td>%.3f</td><td%s>%d/%d</td>", s->delta_rel, s->delta_entropy_rank,
                    s->subspace_overlap, s->num_intruders ? " class=\"bad\"" : "", s->num_intruders, s->intruder_k);
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</table>\n");

    fprintf(f, "<h2 id=\"esd\">Eigenvalue densities</h2><p class=\"note\">Density of lambda = s<sup>2</sup> in log-spaced bins "
               "on log-log axes; red: the fitted power law from xmin (dashed) to lambda_max; green dashed: the "
               "Marchenko-Pastur bulk edge lambda+.</p><div class=\"grid\">");
    for (int i = 0; i < a->n; i++) chart_esd(f, &a->m[i]);
    fprintf(f, "</div>\n");

    fprintf(f, "<h2 id=\"outliers\">Outlier channels</h2><p class=\"note\">max|w| / RMS per input channel (column) and output "
               "channel (row); a Gaussian matrix gives about 3 to 4. Per-IC vs per-OC: 4-bit symmetric round-to-nearest error "
               "with one scale per column vs one per row.</p><div class=\"grid\">");
    chart_per_layer(f, a, "max over input channels of max|w|/RMS", offsetof(wmat_matrix_stats, ic_max_ratio), 0, NAN);
    chart_per_layer(f, a, "max over output channels of max|w|/RMS", offsetof(wmat_matrix_stats, oc_max_ratio), 0, NAN);
    chart_per_layer(f, a, "RTN4 error, one scale per input channel", offsetof(wmat_matrix_stats, rtn4_err_per_ic), 0, NAN);
    chart_per_layer(f, a, "RTN4 error, one scale per output channel", offsetof(wmat_matrix_stats, rtn4_err_per_oc), 0, NAN);
    fprintf(f, "</div><div class=\"grid\">");
    int *idx = wmat__malloc((size_t)a->n * sizeof(int));
    if (idx) {
        int n = idx_by(a, idx, k_ic);
        for (int q = 0; q < n && q < 6; q++) {
            const wmat_matrix_stats *s = &a->m[idx[q]];
            chart_channels(f, "input channels", s->name, s->ic_ratio, (int)s->cols, "#1f77b4");
            chart_channels(f, "output channels", s->name, s->oc_ratio, (int)s->rows, "#ff7f0e");
        }
    }
    fprintf(f, "</div>\n");

    if (a->has_base) {
        fprintf(f, "<h2 id=\"base\">Against the base</h2><p class=\"note\">Intruder dimensions: each cell is the largest "
                   "|cosine| between one of the top-%d left singular vectors of W (column = rank) and every left singular "
                   "vector of the base; cells outlined in red are below %.2f (intruders).</p><div class=\"grid\">",
                a->n ? a->m[0].intruder_k : 0, a->intruder_threshold);
        chart_per_layer(f, a, "||W - W_base||_F / ||W_base||_F", offsetof(wmat_matrix_stats, delta_rel), 1, NAN);
        chart_per_layer(f, a, "effective rank of W - W_base", offsetof(wmat_matrix_stats, delta_entropy_rank), 0, NAN);
        chart_per_layer(f, a, "top-k subspace overlap with the base", offsetof(wmat_matrix_stats, subspace_overlap), 0, NAN);
        fprintf(f, "</div><div class=\"grid\">");
        int k = a->n ? a->m[0].intruder_k : 0;
        double *v = wmat__malloc((size_t)a->n * (k ? k : 1) * sizeof(double));
        if (v && k) {
            for (int i = 0; i < a->n; i++)
                for (int j = 0; j < k; j++) v[(size_t)i * k + j] = j < a->m[i].intruder_k ? a->m[i].intruder_cos[j] : NAN;
            heatmap(f, "max |cos| to the base singular vectors", a->n, k, v, 0, 1, mat_label, rank_label, a, 1, 300,
                    "singular-vector rank", "matrix", a->intruder_threshold);
        }
        wmat__free(v);
        fprintf(f, "</div>\n");
    }

    if (a->n_heads > 0) {
        int NH = a->n_heads, H = a->heads_per_layer, L = a->n_layers;
        fprintf(f, "<h2 id=\"heads\">Attention heads</h2><p class=\"note\">Per head: stable rank of the OV circuit "
                   "W<sub>O</sub>[:,h] W<sub>V</sub>[kv(h)] and the QK circuit W<sub>Q</sub>[h]<sup>T</sup> W<sub>K</sub>[kv(h)] "
                   "(rotary positions not applied). Composition of head A (row, earlier layer) into head B (column, later "
                   "layer): ||W<sub>B</sub> W<sub>OV</sub><sup>A</sup>||<sub>F</sub> / (||W<sub>B</sub>||<sub>F</sub> "
                   "||W<sub>OV</sub><sup>A</sup>||<sub>F</sub>) with W<sub>B</sub> = W<sub>QK</sub><sup>B T</sup> (Q), "
                   "W<sub>QK</sub><sup>B</sup> (K) or W<sub>OV</sub><sup>B</sup> (V).%s</p><div class=\"grid\">",
                NH > 96 ? " With more than 96 heads the maps show the maximum over the heads of each layer pair." : "");
        double *v = wmat__malloc((size_t)NH * NH * sizeof(double));
        if (v) {
            for (int i = 0; i < NH; i++) v[i] = a->h[i].ov_stable_rank;
            double mx = 0;
            for (int i = 0; i < NH; i++) mx = fmax(mx, v[i]);
            heatmap(f, "OV circuit stable rank", L, H, v, 0, mx > 0 ? mx : 1, layer_label, hindex_label, a, 1, 50, "head",
                    "layer", NAN);
            for (int i = 0; i < NH; i++) v[i] = a->h[i].qk_stable_rank;
            mx = 0;
            for (int i = 0; i < NH; i++) mx = fmax(mx, v[i]);
            heatmap(f, "QK circuit stable rank", L, H, v, 0, mx > 0 ? mx : 1, layer_label, hindex_label, a, 1, 50, "head",
                    "layer", NAN);
            fprintf(f, "</div><div class=\"grid\">");
            for (int kd = 0; kd < WMAT_COMP_COUNT && a->comp_grid[kd]; kd++) {
                const double *g = a->comp_grid[kd];
                int nr = NH > 96 ? L : NH;
                double mx2 = 0;
                for (int i = 0; i < nr * nr; i++) v[i] = NAN;
                for (int i = 0; i < NH; i++)
                    for (int j = 0; j < NH; j++) {
                        double x = g[(size_t)i * NH + j];
                        if (!isfinite(x)) continue;
                        int ri = NH > 96 ? i / H : i, rj = NH > 96 ? j / H : j;
                        double *c = &v[(size_t)ri * nr + rj];
                        if (!isfinite(*c) || x > *c) *c = x;
                        if (x > mx2) mx2 = x;
                    }
                char t[64];
                snprintf(t, sizeof t, "%s-composition", g_comp_names[kd]);
                heatmap(f, t, nr, nr, v, 0, mx2 > 0 ? mx2 : 1, head_label, head_label, a, NH > 96 ? 1 : H, 60, "reading head",
                        "writing head", NAN);
            }
        }
        wmat__free(v);
        fprintf(f, "</div><h3>Strongest pairs</h3><table><tr><th>kind</th><th>writing head</th><th>reading head</th><th>score</th></tr>");
        for (int i = 0; i < a->n_comp && i < 30; i++) {
            const wmat_composition *c = &a->comp[i];
            fprintf(f, "<tr><td>%s</td><td>L%d.H%d</td><td>L%d.H%d</td><td>%.4f</td></tr>", g_comp_names[c->kind], c->src_layer,
                    c->src_head, c->dst_layer, c->dst_head, c->score);
        }
        fprintf(f, "</table>\n");
    }
    wmat__free(idx);
    fprintf(f, "<p class=\"note\">Column definitions: docs/ANALYSIS.md.</p></body></html>\n");
    return out_commit(&o);
}
