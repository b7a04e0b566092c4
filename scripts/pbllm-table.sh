#!/usr/bin/env bash
# PB-LLM against plain GPTQ at matched bits per weight (docs/QUANT.md,
# "PB-LLM"), over three disjoint calibration slices of the TinyStories
# stream (tokens [0, 16384), [16384, 32768), [32768, 49152)).
# stories260K: evaluation on the TinyStories stream from token 65536 (held
# out); mix4m: the first 64 windows of WikiText-2 valid (the tables' setting).
# Prints "model slice bpw perplexity method args" lines.
# Usage: scripts/pbllm-table.sh [BUILD_DIR] [MODELS...]   (stories260K mix4m)
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
    # bpw: per-OC GPTQ 2.32 / 3.32; PB-LLM 1.75 + 16 f on this model's widths
    cfgs=("gptq --bits 2" "gptq --bits 3" "gptq --bits 3 --group 32 --group-fallback"
          "pbllm --salient 0.036" "pbllm --salient 0.036 --metric magnitude"
          "pbllm --salient 0.1" "pbllm --salient 0.1 --metric magnitude" "pbllm --salient 0.1 --mu-alpha row"
          "pbllm --salient 0.116")
  else
    ev="--eval $WT"
    # bpw: GPTQ 2-bit per-OC 2.08, g32 2.75, 3-bit per-OC 3.08; PB-LLM 1.22 + 16 f
    cfgs=("gptq --bits 2" "gptq --bits 2 --group 32" "gptq --bits 3"
          "pbllm --salient 0.054" "pbllm --salient 0.096" "pbllm --salient 0.096 --metric magnitude"
          "pbllm --salient 0.116")
  fi
  for s in 0 1 2; do
    for c in "${cfgs[@]}"; do
      # shellcheck disable=SC2086
      out=$("$B/wmat" quantize $D/models/$model.bin "$tmp/q" --calib "$tmp/cal$s.u16" --calib-tokens 16384 \
            --calib-ctx 256 $ev --max-windows 64 --ctx 256 --to none --quiet -t 1 --method $c 2>&1)
      bpw=$(awk '/^bits\/weight/ {print $2}' <<< "$out")
      ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
      echo "$model $s $bpw $ppl $c"
    done
  done
done
