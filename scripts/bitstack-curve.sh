#!/usr/bin/env bash
# BitStack's any-size curve on mix4m (docs/QUANT.md, "BitStack (issue 13)"):
# ONE stored stack (wmat quantize --method bitstack, 16 blocks of rank 1,
# the block order measured on 4 calibration windows), evaluated at every
# budget of BUDGETS by `wmat eval --bpw B` on WikiText-2 valid (64 windows of
# 256, one thread), against GPTQ g64 at 2 and 3 bits (the same calibration).
# Writes the TSV (series, bits per weight over the quantized tensors,
# perplexity) and draws it with `wmat plot`.
#
# usage: scripts/bitstack-curve.sh [OUT.svg] [TABLE.tsv]
#   (defaults docs/img/bitstack_curve.svg and the same name .tsv)
#   env: WMAT_DATA (default ../shared/data), WMAT (default build/wmat),
#        STACK=DIR: a stack already written by the quantize line below (skips it),
#        SLICE=s: calibration tokens [16384 s, 16384 (s + 1)) (default 0),
#        BUDGETS="1.11 1.3 ...", NO_GPTQ=1: leave the GPTQ points out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${WMAT_DATA:-$root/../shared/data}
wmat=${WMAT:-$root/build/wmat}
svg=${1:-$root/docs/img/bitstack_curve.svg}
tsv=${2:-${svg%.svg}.tsv}
slice=${SLICE:-0}
budgets=${BUDGETS:-1.11 1.3 1.5 1.75 2.0 2.2 2.38 2.6 2.8 3.0 3.2 3.38 3.6 4.0}
model=$data/models/mix4m.bin
tok=$data/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dd if="$data/golden/tinystories_valid_head.tok512.u16" of="$tmp/cal.u16" bs=2 skip=$((16384 * slice)) count=16384 status=none
cal=(--calib "$tmp/cal.u16" --calib-tokens 16384 --calib-ctx 256 --threads 1)
ev=(--tokens "$tok" --max-windows 64 --ctx 256 --threads 1)
stack=${STACK:-$tmp/stack}
if [ -z "${STACK:-}" ]; then
  "$wmat" quantize "$model" "$stack" --method bitstack --order-windows 4 "${cal[@]}" >"$tmp/q.log" 2>&1
fi
printf '# series\tbpw\tppl   (mix4m, WikiText-2 valid, 64 windows of 256; calibration slice %s)\n' "$slice" >"$tsv"
for b in $budgets; do
  "$wmat" eval "$stack" "${ev[@]}" --bpw "$b" >"$tmp/e.log" 2>&1
  bpw=$(sed -n 's/^budget .*(\([0-9.]*\) b\/w.*/\1/p' "$tmp/e.log")
  ppl=$(sed -n 's/^perplexity *\([0-9.]*\).*/\1/p' "$tmp/e.log")
  printf 'BitStack (one stack)\t%s\t%s\n' "$bpw" "$ppl" | tee -a "$tsv"
done
if [ -z "${NO_GPTQ:-}" ]; then
  for bits in 2 3; do
    "$wmat" quantize "$model" "$tmp/g$bits" --method gptq --bits $bits --group 64 "${cal[@]}" >"$tmp/g.log" 2>&1
    bpw=$(sed -n 's/^bits\/weight *\([0-9.]*\) over quantized.*/\1/p' "$tmp/g.log")
    ppl=$("$wmat" eval "$tmp/g$bits" "${ev[@]}" | sed -n 's/^perplexity *\([0-9.]*\).*/\1/p')
    printf 'GPTQ g64\t%s\t%s\n' "$bpw" "$ppl" | tee -a "$tsv"
  done
fi
"$wmat" plot "$tsv" "$svg" --xlabel "bits per weight (quantized tensors)" --ylabel "WikiText-2 perplexity" \
  --title "mix4m: one BitStack stack at any size vs GPTQ g64" --ymax 40
echo "wrote $svg"
