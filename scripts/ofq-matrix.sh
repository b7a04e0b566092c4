#!/usr/bin/env bash
# OFQ (quantization-aware training) against GPTQ on mix4m (docs/QUANT.md,
# "OFQ (issue 19)"). Data: slice s = tokens [T s, T (s+1)) of
# golden/tinystories_valid_head.tok512.u16 (T = STEPS * 4 * 256 tokens): the
# QAT runs fine-tune on it (STEPS steps of 4 windows of 256, seed s), GPTQ
# calibrates on the same tokens. Evaluation: the first 64 windows of
# WikiText-2 valid, ctx 256, by `wmat eval` on the written model (GPTQ:
# the native directory quantize writes; gptq: the symmetric grid QAT trains on, gptq-asym: its
# default min-max grid; full: fp32 fine-tuning on the same tokens, the
# domain shift alone). Prints "setting | bits | slice | WikiText-2 perplexity | held-out
# TinyStories perplexity (64 windows of 256 from token 65536) |
# oscillations per step (whole run) | (last steps) | frozen" lines.
# Usage: [S0=first slice] scripts/ofq-matrix.sh [BUILD_DIR] [SLICES] [STEPS] [PATTERN] [BITS]
# (PATTERN: a shell pattern of the settings to run, e.g. 'ofq|gptq' needs @(...): give one name or '*')
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
S=${2:-3}
STEPS=${3:-32}
P=${4:-}
BITS=${5:-"2 3 4"}
LR=${LR:-5e-4}
D=../shared/data
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
T=$((STEPS * 4 * 256))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for s in $(seq 0 $((S - 1))); do
  dd if="$TS" of="$tmp/cal$s.u16" bs=$((2 * T)) skip="$s" count=1 status=none
done
settings=(ofq-lsq ofq-statsq ofq gptq gptq-asym full)
for bits in $BITS; do
  for setting in "${settings[@]}"; do
    [[ -n "$P" && "$setting" != $P ]] && continue
    [[ "$setting" == full && "$bits" != "${BITS%% *}" ]] && continue # fp32 fine-tuning: one set of rows
    for s in $(seq "${S0:-0}" $((S - 1))); do
      osc=- late=- frozen=-
      if [[ "$setting" == gptq* ]]; then
        sym=--sym
        [[ "$setting" == gptq-asym ]] && sym=--asym
        rm -rf "$tmp/m"
        "$B/wmat" quantize $D/models/mix4m.bin "$tmp/m" --method gptq --bits "$bits" $sym \
            --calib "$tmp/cal$s.u16" --calib-tokens "$T" --calib-ctx 256 --threads 1 > /dev/null 2>&1
        o="$tmp/m"
        out=$("$B/wmat" eval "$o" --tokens "$WT" --ctx 256 --max-windows 64 --threads 1 2>&1)
        ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
      else
        rm -rf "$tmp/m" "$tmp/m.bin"
        o="$tmp/m"
        extra=(--method "$setting" --qat-bits "$bits")
        [[ "$setting" == full ]] && o="$tmp/m.bin" && extra=()
        log=$("$B/wmat" train $D/models/mix4m.bin "$o" "${extra[@]}" --data "$tmp/cal$s.u16" --steps "$STEPS" \
            --batch 4 --ctx 256 --lr "$LR" --seed "$s" --threads 1 2>&1)
        out=$("$B/wmat" eval "$o" --tokens "$WT" --ctx 256 --max-windows 64 --threads 1 2>&1)
        ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
        osc=$(grep -o 'steps ([0-9.]* per step)' <<< "$log" | tail -1 | grep -o '[0-9.]* per' | cut -d' ' -f1 || true)
        late=$(grep 'qat: last' <<< "$log" | tail -1 | grep -o '([0-9.]* per step)' | tr -dc '0-9.' || true)
        frozen=$(grep -o 'frozen at the last step ([0-9.]*%)' <<< "$log" | tail -1 | tr -dc '0-9.' || true)
      fi
      # held-out TinyStories (the fine-tuning domain): 64 windows from token 65536
      ts=$("$B/wmat" eval "$o" --tokens "$TS" --offset 65536 --ctx 256 --max-windows 64 --threads 1 2>&1 \
          | awk '/^perplexity/ {print $2}')
      echo "$setting | $bits | $s | $ppl | $ts | ${osc:--} | ${late:--} | ${frozen:--}"
    done
  done
done
