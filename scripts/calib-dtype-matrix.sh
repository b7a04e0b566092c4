#!/usr/bin/env bash
# GPTQ on mix4m with the fp32 and the bf16 calibration forward
# (`--calib-dtype`, docs/QUANT.md "GPTQ at 1.1B scale"): 3 and 4 bits,
# per-channel, g64 and g128; calibration on three disjoint slices of 16384
# TinyStories tokens (slice s = tokens [16384 s, 16384 (s+1)) of
# golden/tinystories_valid_head.tok512.u16), evaluation on the first 64
# windows of WikiText-2 valid, ctx 256, one thread (the tables' protocol).
# Prints "setting | dtype | slice | bpw | perplexity | calibration forward s"
# lines, then the mean and sd over the slices of each setting and dtype.
# mix4m's hidden width (704) is no multiple of 128: g128 quantizes down_proj
# per-channel (--group-fallback).
# Usage: scripts/calib-dtype-matrix.sh [BUILD_DIR] [SLICES] [PATTERN]   (PATTERN: only the
# settings containing it, e.g. "--bits 3")
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
  "--bits 4"
  "--bits 4 --group 128 --group-fallback"
  "--bits 4 --group 64"
  "--bits 3"
  "--bits 3 --group 128 --group-fallback"
  "--bits 3 --group 64"
)
for s in $(seq 0 $((S - 1))); do
  dd if="$TS" of="$tmp/cal$s.u16" bs=32768 skip="$s" count=1 status=none
done
for setting in "${settings[@]}"; do
  [[ -n "$P" && "$setting" != *"$P"* ]] && continue
  for dt in f32 bf16; do
    for s in $(seq 0 $((S - 1))); do
      # shellcheck disable=SC2086
      out=$("$B/wmat" quantize $D/models/mix4m.bin --to none --method gptq $setting --calib "$tmp/cal$s.u16" \
          --calib-tokens 16384 --calib-ctx 256 --eval "$WT" --max-windows 64 --ctx 256 --threads 1 --quiet \
          --calib-dtype $dt 2>&1) || { echo "$setting | $dt | $s: wmat failed: $(tail -1 <<< "$out")" >&2; continue; }
      ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
      bpw=$(awk '/^bits\/weight/ {print $2}' <<< "$out")
      fwd=$(awk '/^breakdown/ {print $4}' <<< "$out")
      echo "$setting | $dt | $s | $bpw | $ppl | $fwd"
    done
  done
done | tee "$tmp/rows"
echo "setting | dtype | mean | sd (over slices) | calibration forward s (mean)"
awk -F' [|] ' '{k = $1 " | " $2; n[k]++; s[k] += $5; q[k] += $5 * $5; f[k] += $6; if (!(k in o)) {o[k] = ++m; key[m] = k}}
     END {for (i = 1; i <= m; i++) {k = key[i]; mu = s[k] / n[k]; v = n[k] > 1 ? (q[k] - n[k] * mu * mu) / (n[k] - 1) : 0;
          if (v < 0) v = 0; printf "%s | %.3f | %.3f | %.2f\n", k, mu, sqrt(v), f[k] / n[k]}}' "$tmp/rows"
