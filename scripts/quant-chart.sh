#!/usr/bin/env bash
# The size-quality chart of docs/QUANT.md ("Size-quality chart"): bits per
# weight against WikiText-2 perplexity on mix4m, mean +- sd over the
# calibration slices as error bars, wmat's methods against llama.cpp's types,
# drawn from a CSV kept in the repository so rows can be added later.
#
#   scripts/quant-chart.sh [CSV] [SVG]
#     (defaults docs/data/quant-size-quality.csv, docs/img/quant-size-quality.svg)
#   scripts/quant-chart.sh --summarize RESULTS...
#     mean, sample sd and n per (model, tool, setting) of the lines that
#     scripts/quant-peer-table.sh prints (MODEL TOOL SETTING SLICE BPW PPL_WT PPL_TS),
#     as CSV rows of the chart's file (commas in a setting become '+'; the
#     last column names the model).
#
# CSV columns (header line first; '#' lines are comments):
#   tool,method,bpw,n,ppl_wt_mean,ppl_wt_sd,ppl_ts_mean,ppl_ts_sd,source
# tool: wmat, llama.cpp or fp32 (a horizontal reference line); bpw over the
# quantized linear matrices; n: calibration slices (sd empty or 0 when n = 1);
# ppl_ts_*: held-out TinyStories (empty when not measured; not drawn).
# The points are labelled with `method`; x and y ranges follow the data;
# rows above YMAX (default 23.2; 0: none) are named in a note under the chart.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${1:-}" = --summarize ]; then
  shift
  cat "$@" | awk '
    NF >= 7 && $4 ~ /^[0-9]+$/ {
      k = $1 " " $2 " " $3
      if (!(k in n)) order[++nk] = k
      n[k]++; b[k] += $5
      if ($6 != "-") { nw[k]++; sw[k] += $6; qw[k] += $6 * $6 }
      if ($7 != "-") { nt[k]++; st[k] += $7; qt[k] += $7 * $7 }
    }
    function sd(s, q, m) { return m > 1 ? sqrt((q - s * s / m) / (m - 1) > 0 ? (q - s * s / m) / (m - 1) : 0) : 0 }
    END {
      for (i = 1; i <= nk; i++) {
        k = order[i]; split(k, f, " "); gsub(/,/, "+", f[3])
        wm = nw[k] ? sprintf("%.3f", sw[k] / nw[k]) : ""; ws = nw[k] ? sprintf("%.3f", sd(sw[k], qw[k], nw[k])) : ""
        tm = nt[k] ? sprintf("%.3f", st[k] / nt[k]) : ""; ts = nt[k] ? sprintf("%.3f", sd(st[k], qt[k], nt[k])) : ""
        printf "%s,%s,%.3f,%d,%s,%s,%s,%s,%s\n", f[2], f[3], b[k] / n[k], n[k], wm, ws, tm, ts, f[1]
      }
    }'
  exit 0
fi
csv=${1:-$root/docs/data/quant-size-quality.csv}
svg=${2:-$root/docs/img/quant-size-quality.svg}
tmp=$svg.tmp.$$
trap 'rm -f "$tmp"' EXIT
awk -F, -v ymax="${YMAX:-23.2}" -v title="${TITLE:-mix4m: bits per weight against WikiText-2 perplexity (mean +- sd over calibration slices)}" '
  function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
  NR == 1 || /^#/ || NF < 5 { next }
  $1 == "fp32" { fp32 = $5 + 0; next }
  ymax > 0 && $5 + 0 > ymax { cut = cut (cut ? ", " : "") $2 " " $3 " bpw: " $5; next }
  {
    k++; tool[k] = $1; name[k] = $2; x[k] = $3 + 0; y[k] = $5 + 0; e[k] = ($6 == "" ? 0 : $6 + 0)
    if (k == 1 || x[k] < x0) x0 = x[k]; if (k == 1 || x[k] > x1) x1 = x[k]
    if (k == 1 || y[k] - e[k] < y0) y0 = y[k] - e[k]; if (k == 1 || y[k] + e[k] > y1) y1 = y[k] + e[k]
  }
  END {
    if (!k) { print "quant-chart: no rows" > "/dev/stderr"; exit 1 }
    if (fp32 && fp32 < y0) y0 = fp32
    # round the ranges outwards to the tick steps
    x0 = int(x0 * 2) / 2; x1 = int(x1 * 2 + 1) / 2
    ys = 0.1; while ((y1 - y0) / ys > 12) ys *= 2
    y0 = int(y0 / ys) * ys; y1 = (int(y1 / ys) + 1) * ys
    W = 900; H = 580; L = 70; R = 860; T = 40; B = 480
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
    print "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
    printf "<text x=\"%d\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">%s</text>\n", W / 2, esc(title)
    for (v = x0; v <= x1 + 1e-9; v += 0.5) {
      px = L + (v - x0) / (x1 - x0) * (R - L)
      printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#e4e4e4\"/>\n", px, T, px, B
      printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.1f</text>\n", px, B + 16, v
    }
    for (v = y0; v <= y1 + 1e-9; v += ys) {
      py = B - (v - y0) / (y1 - y0) * (B - T)
      printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n", L, py, R, py
      printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n", L - 6, py + 4, v
    }
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, B, R, B
    printf "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", L, T, L, B
    printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">bits per weight (quantized linear matrices)</text>\n", (L + R) / 2, B + 36
    printf "<text x=\"16\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 16 %d)\">WikiText-2 perplexity (64 x 256)</text>\n", (T + B) / 2, (T + B) / 2
    if (fp32) {
      py = B - (fp32 - y0) / (y1 - y0) * (B - T)
      printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"6 4\"/>\n", L, py, R, py
      printf "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#666\">FP32 %.3f</text>\n", R - 4, py - 4, fp32
    }
    for (i = 1; i <= k; i++) {
      px = L + (x[i] - x0) / (x1 - x0) * (R - L); py = B - (y[i] - y0) / (y1 - y0) * (B - T)
      c = tool[i] == "wmat" ? "#1f77b4" : "#d62728"
      if (e[i] > 0) {
        ya = B - (y[i] - e[i] - y0) / (y1 - y0) * (B - T); yb = B - (y[i] + e[i] - y0) / (y1 - y0) * (B - T)
        printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", px, ya, px, yb, c
        printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", px - 4, ya, px + 4, ya, c
        printf "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", px - 4, yb, px + 4, yb, c
      }
      if (tool[i] == "wmat") printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>\n", px, py, c
      else printf "<rect x=\"%.1f\" y=\"%.1f\" width=\"8\" height=\"8\" fill=\"%s\"/>\n", px - 4, py - 4, c
      # the label: the first of eight places around the point whose box
      # (10 px font, ~5.6 px a character) meets no label placed before it
      lw = 5.6 * length(name[i])
      for (p = 0; p < 8; p++) {
        lx = (p % 2) ? px - 7 - lw : px + 7; ly = py + (p < 2 ? -5 : p < 4 ? 12 : p < 6 ? -16 : 22)
        ok = 1
        for (q = 1; q < i; q++)
          if (lx < bx1[q] && bx0[q] < lx + lw && ly - 9 < by1[q] && by0[q] < ly + 1) { ok = 0; break }
        if (ok) break
      }
      if (!ok) { lx = px + 7; ly = py - 5 }
      bx0[i] = lx; bx1[i] = lx + lw; by0[i] = ly - 9; by1[i] = ly + 1
      printf "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" fill=\"%s\">%s</text>\n", lx, ly, c, esc(name[i])
    }
    printf "<circle cx=\"%d\" cy=\"%d\" r=\"4\" fill=\"#1f77b4\"/><text x=\"%d\" y=\"%d\">wmat</text>\n", L + 10, B + 60, L + 20, B + 64
    printf "<rect x=\"%d\" y=\"%d\" width=\"8\" height=\"8\" fill=\"#d62728\"/><text x=\"%d\" y=\"%d\">llama.cpp (imatrix, lcq)</text>\n", L + 86, B + 56, L + 100, B + 64
    printf "<text x=\"%d\" y=\"%d\" fill=\"#666\">bars: +- one sd over the calibration slices (none: one slice)</text>\n", L + 300, B + 64
    if (cut) printf "<text x=\"%d\" y=\"%d\" fill=\"#666\" font-size=\"11\">above the chart: %s</text>\n", L, B + 84, esc(cut)
    print "</svg>"
  }' "$csv" > "$tmp"
mv "$tmp" "$svg"
trap - EXIT
echo "wrote $svg"
