#!/usr/bin/env bash
# BCQ (ShiftAddLLM binary coding) against GPTQ at neighbouring bits per
# weight on mix4m (docs/QUANT.md, "BCQ"). Calibration: three disjoint slices
# of 16384 TinyStories tokens (slice s = tokens [16384 s, 16384 (s+1)) of
# golden/tinystories_valid_head.tok512.u16); evaluation: the first 64 windows
# of WikiText-2 valid, ctx 256 (the table's protocol). Prints
# "setting slice bpw perplexity" lines.
# Usage: scripts/bcq-matrix.sh [BUILD_DIR] [SLICES] [PATTERN]   (PATTERN: only the settings
# matching it, e.g. bcq; about 30-60 s per run on 2 busy cores)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
S=${2:-3}
P=${3:-}
D=../shared/data
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
settings=(
  "bcq --bits 2 --group 64"
  "gptq --bits 2 --group 64"
  "gptq --bits 2 --group 32"
  "bcq --bits 2"
  "gptq --bits 2"
  "bcq --bits 3 --group 64"
  "gptq --bits 3 --group 32"
  "bcq --bits 3"
  "gptq --bits 3"
  "gptq --bits 3 --group 64"
)
for s in $(seq 0 $((S - 1))); do
  dd if="$TS" of="$tmp/cal$s.u16" bs=32768 skip="$s" count=1 status=none
done
for setting in "${settings[@]}"; do
  [[ -n "$P" && "$setting" != *"$P"* ]] && continue
  for s in $(seq 0 $((S - 1))); do
    # shellcheck disable=SC2086
    out=$("$B/wmat" quantize $D/models/mix4m.bin "$tmp/q" --calib "$tmp/cal$s.u16" --calib-tokens 16384 \
        --calib-ctx 256 --eval "$WT" --max-windows 64 --to none --threads 1 --method $setting 2>&1)
    ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
    bpw=$(awk '/^bits\/weight/ {print $2}' <<< "$out")
    echo "$setting | $s | $bpw | $ppl"
  done
done
