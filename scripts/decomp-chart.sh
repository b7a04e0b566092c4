#!/usr/bin/env bash
# One size-quality chart of every structured method against GPTQ: each
# setting written by `wmat decompose` (or `wmat quantize` for the GPTQ
# reference) as a native directory, scored in the same command on WikiText-2
# valid (64 windows of 256 tokens), its size the bytes of the stored weights
# (model.safetensors: factors, codes, scales, sparse indices, the embedding
# and norms as stored) as a share of the fp32 model's 4 bytes per parameter.
# Prints the table (TSV: series, size %, perplexity, setting) and draws it
# with `wmat plot`.
#
# usage: scripts/decomp-chart.sh [OUT.svg] [TABLE.tsv]
#   (defaults docs/img/decomp_size_ppl.svg and the same name .tsv)
#   env: WMAT_DATA (default ../shared/data), WMAT (default build/wmat),
#        WINDOWS (default 64), ONLY="svd welore ..." to run some series (they replace
#        their rows of an existing TABLE; series: svd welore monarch lqlora lqlora-gptq magnitude
#        wanda sparsegpt slicegpt dsformer gptq).
# mix4m, calibration: the first 16384 tokens of TinyStories valid (one
# slice; the per-method tables of docs/DECOMP.md and docs/QUANT.md give
# three-slice spreads for the calibrated methods).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${WMAT_DATA:-$root/../shared/data}
wmat=${WMAT:-$root/build/wmat}
svg=${1:-$root/docs/img/decomp_size_ppl.svg}
tsv=${2:-${svg%.svg}.tsv}
windows=${WINDOWS:-64}
model=$data/models/mix4m.bin
tok=$data/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dd if="$data/golden/tinystories_valid_head.tok512.u16" of="$tmp/cal.u16" bs=2 count=16384 status=none
params=$("$wmat" info "$model" | sed -n 's/^parameters *\([0-9]*\) .*/\1/p')
fp32=$((4 * params))
eval_args=(--tokens "$tok" --ctx 256 --max-windows "$windows")
cal_args=(--calib "$tmp/cal.u16" --calib-ctx 256)

want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# series label, command (decompose|quantize), its flags
run() {
  local series=$1 cmd=$2
  shift 2
  rm -rf "$tmp/out"
  if ! "$wmat" "$cmd" "$model" "$tmp/out" "$@" "${eval_args[@]}" >"$tmp/log" 2>&1; then
    echo "# $series $*: failed: $(tail -1 "$tmp/log")" | tee -a "$tsv.tmp" >&2
    return 0
  fi
  local ppl bytes
  # decompose: "perplexity A -> B"; quantize --eval: "perplexity ... B" on its last line of that kind
  ppl=$(sed -n 's/^perplexity [0-9.]* -> \([0-9.]*\).*/\1/p' "$tmp/log" | tail -1)
  [ -n "$ppl" ] || ppl=$("$wmat" eval "$tmp/out" "${eval_args[@]}" 2>/dev/null | sed -n 's/^perplexity *\([0-9.]*\).*/\1/p' | tail -1)
  bytes=$(stat -c %s "$tmp/out/model.safetensors")
  printf '%s\t%s\t%s\t%s\n' "$series" "$(awk -v b="$bytes" -v f="$fp32" 'BEGIN {printf "%.2f", 100 * b / f}')" "$ppl" "${*//$tmp\//}" |
    tee -a "$tsv.tmp"
}

: >"$tsv.tmp"
printf '# series\tsize_pct_of_fp32\tppl\tsetting   (mix4m, WikiText-2 valid, %s windows of 256)\n' "$windows" >>"$tsv.tmp"
if want svd; then for r in 32 64 96 128 192; do run svd decompose --method svd --rank $r; done; fi
if want welore; then for t in 0.3 0.5 0.6 0.7; do run welore decompose --method welore --target $t; done; fi
if want monarch; then
  for s in 0.75 0.5 0.35 0.25; do run monarch decompose --method monarch --blocks 4 --share $s; done
fi
if want lqlora; then
  run lqlora decompose --method lqlora --bits 3 --rank 0
  run lqlora decompose --method lqlora --bpw 3.5 --dtype f16
  run lqlora decompose --method lqlora --bpw 4.0 --dtype f16
  run lqlora decompose --method lqlora --bits 3 --rank 16 --dtype f16
  run lqlora decompose --method lqlora --bits 4 --rank 16 --dtype f16
fi
if want lqlora-gptq; then
  for b in 2 3 4; do run "lqlora (GPTQ part)" decompose --method lqlora --bits $b --rank 16 --dtype f16 --quant gptq "${cal_args[@]}"; done
fi
for m in magnitude wanda sparsegpt; do
  want $m || continue
  c=()
  [ $m = magnitude ] || c=("${cal_args[@]}")
  for s in 0.3 0.5 0.6 0.7; do run "$m" decompose --method $m --sparsity $s --dtype f16 "${c[@]}"; done
  for nm in 4:8 2:4; do run "$m N:M" decompose --method $m --nm $nm --dtype f16 "${c[@]}"; done
done
if want slicegpt; then
  for s in 0.1 0.2 0.25 0.3; do run slicegpt decompose --method slicegpt --sparsity $s "${cal_args[@]}"; done
fi
methods=$("$wmat" methods --family decomposition)
if want dsformer && grep -q '^dsformer ' <<<"$methods"; then
  for r in 64 96 128; do run dsformer decompose --method dsformer --rank $r; done
fi
if want gptq; then
  for q in "--bits 2 --group 32" "--bits 3" "--bits 3 --group 64" "--bits 4" "--bits 4 --group 64" "--bits 8"; do
    # shellcheck disable=SC2086
    run "GPTQ (reference)" quantize --method gptq $q "${cal_args[@]}" --calib-tokens 16384
  done
fi
if [ -n "${ONLY:-}" ] && [ -f "$tsv" ]; then
  # some series: they replace their own rows of the existing table, the rest stay
  cut -f1 "$tsv.tmp" | grep -v '^#' | sort -u >"$tmp/redone"
  { grep -v '^fp32' "$tsv" | awk -F'\t' 'NR == FNR {r[$0] = 1; next} !($1 in r)' "$tmp/redone" -
    grep -v '^#' "$tsv.tmp"; } >"$tmp/merged"
  rm -f "$tsv.tmp"
  mv "$tmp/merged" "$tsv"
else
  mv "$tsv.tmp" "$tsv"
fi
fp=$("$wmat" eval "$model" "${eval_args[@]}" 2>/dev/null | sed -n 's/^perplexity *\([0-9.]*\).*/\1/p' | tail -1)
if [ -n "$fp" ]; then
  printf 'fp32\t0\t%s\t(line)\nfp32\t100\t%s\tno change\n' "$fp" "$fp" >>"$tsv"
fi
grep -v '^#' "$tsv" | cut -f1-3 >"$tmp/points.tsv"
"$wmat" plot "$tmp/points.tsv" "$svg" --xlabel "stored bytes, % of the fp32 model" --ylabel "perplexity (WikiText-2 valid)" \
  --title "mix4m: size against perplexity, every structured method and GPTQ" --ymax 40 --dashed "GPTQ (reference),fp32" --width 900
