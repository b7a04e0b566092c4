#!/usr/bin/env bash
# DGQ (A8W4) against A16W4 GPTQ/RTN g64 and A8W4 per-channel RTN (docs/QUANT.md,
# "DGQ"), over three disjoint calibration slices of the TinyStories stream
# (tokens [16384 s, 16384 (s + 1)), s = 0, 1, 2). A8 rows run packed
# (--low-mem: every block packed once calibrated, so later blocks calibrate on
# int8 activations and the evaluation runs the int8 kernels); A16 rows fake-quant.
# stories260K: evaluation on the TinyStories stream from token 65536 (held
# out); mix4m: the first 64 windows of WikiText-2 valid.
# Prints "model slice bpw perplexity method args" lines.
# Usage: scripts/dgq-table.sh [BUILD_DIR] [MODELS...]   (stories260K mix4m)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
shift || true
MODELS=${*:-stories260K mix4m}
D=../shared/data
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for s in 0 1 2; do dd if="$TS" of="$tmp/cal$s.u16" bs=32768 skip=$s count=1 status=none; done
for model in $MODELS; do
  if [ "$model" = stories260K ]; then
    ev="--eval $TS --offset 65536"
    g="--group 32 --group-fallback"
  else
    ev="--eval $WT"
    g="--group 64"
  fi
  cfgs=("gptq --bits 4 $g" "rtn --bits 4 $g" "dgq $g --low-mem" "dgq --group 0 --no-smooth --no-search --low-mem"
        "gptq --bits 4" "dgq $g --no-smooth --low-mem" "dgq $g --act dynamic --low-mem")
  for s in 0 1 2; do
    for c in "${cfgs[@]}"; do
      # shellcheck disable=SC2086
      out=$("$B/wmat" quantize $D/models/$model.bin "$tmp/q" --calib "$tmp/cal$s.u16" --calib-tokens 16384 \
            --calib-ctx 256 $ev --max-windows 64 --ctx 256 --to none -t 1 --method $c 2>&1)
      [ -n "${DGQ_LOG:-}" ] && printf "%s\n" "== $model $s $c" "$out" >> "$DGQ_LOG"
      bpw=$(awk '/^bits\/weight/ {print $2}' <<< "$out")
      ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
      # groups with k_g >= 17, weighted by each tensor's group count (rows x cols / group)
      k17=$(awk '/ dgq a8w4 g/ {g = $4; sub("g", "", g); f = $6; sub("%", "", f);
                 for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+x[0-9]+$/) { split($i, d, "x"); n = d[1] * d[2] / g }
                 s += f * n; t += n} END {if (t) printf "%.2f", s / t}' <<< "$out")
      echo "$model $s $bpw $ppl $c${k17:+ k17=$k17%}"
    done
  done
done
