#!/usr/bin/env bash
# AdaDim against its two fixed dimensions on mix4m, by calibration domain
# (docs/QUANT.md, "AdaDim"). Prints "bits setting method perplexity" lines.
# Usage: scripts/adadim-matrix.sh [BUILD_DIR]   (about 3 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
D=../shared/data
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# WikiText calibration from token 200000 on: disjoint from the evaluated first 64 windows
tail -c +400001 "$WT" > "$tmp/wt_calib.u16"
for bits in 3 4; do
  for setting in "TS:$TS:$TS:65536" "WT:$tmp/wt_calib.u16:$WT:0" "TS->WT:$TS:$WT:0"; do
    IFS=: read -r name cal ev off <<< "$setting"
    for m in "rtn" "rtn --per-ic" "adadim-rtn" "gptq" "gptq --per-ic" "adadim-gptq"; do
      # shellcheck disable=SC2086
      r=$("$B/wmat" quantize $D/models/mix4m.bin "$tmp/q" --bits $bits --calib "$cal" --calib-tokens 16384 \
          --calib-ctx 256 --eval "$ev" --offset "$off" --max-windows 64 --to none --quiet --method $m 2>&1 |
          awk '/^perplexity/ {print $2}')
      echo "$bits $name $m $r"
    done
  done
done
