#!/usr/bin/env bash
# Size-quality curves of the decomposition methods on a model: each setting
# decomposed with `wmat decompose`, evaluated in the same command on
# WikiText-2 valid (64 windows of 256 tokens), printed as one table row:
# method, settings, stored elements of all linear weights (decomposed
# factors + matrices kept dense) as a share of dense, perplexity.
#
# usage: scripts/decomp-curves.sh [MODEL] [WINDOWS]   (default ../shared/data/models/mix4m.bin, 64)
#        DECOMP=0 / SLICEGPT=0: leave out the per-matrix methods / the SliceGPT rows
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${WMAT_DATA:-$root/../shared/data}
model=${1:-$data/models/mix4m.bin}
windows=${2:-64}
wmat=${WMAT:-$root/build/wmat}
tok=$data/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

settings=(
  "svd --rank 32" "svd --rank 64" "svd --rank 96" "svd --rank 128"
  "welore --target 0.3" "welore --target 0.5" "welore --target 0.6" "welore --target 0.7"
  "monarch --blocks 4 --share 0.75" "monarch --blocks 4 --share 0.5" "monarch --blocks 4 --share 0.25"
  "monarch --blocks 16 --slab-rank 1"
)
# DECOMP=0 runs only the SliceGPT rows below
if [ "${DECOMP:-1}" = 0 ]; then settings=(); fi
printf '%-36s %14s %9s\n' "method and keys" "stored share" "ppl"
dense=""
for s in "${settings[@]}"; do
  # shellcheck disable=SC2086
  "$wmat" decompose "$model" "$tmp/out" --method $s --tokens "$tok" --ctx 256 --max-windows "$windows" >"$tmp/log" 2>&1 ||
    { echo "$s: failed: $(tail -1 "$tmp/log")"; continue; }
  # decomposed: "N -> M weights"; the linear weights in all: from svd at full size once
  read -r before after < <(sed -n 's/^decomposed .*: \([0-9]*\) -> \([0-9]*\) weights.*/\1 \2/p' "$tmp/log")
  ppl=$(sed -n 's/^perplexity [0-9.]* -> \([0-9.]*\).*/\1/p' "$tmp/log")
  base=$(sed -n 's/^perplexity \([0-9.]*\) -> .*/\1/p' "$tmp/log")
  if [ -z "$dense" ]; then dense=$before; fi
  share=$(awk -v a="$after" -v b="$before" -v d="$dense" 'BEGIN {printf "%.1f%%", 100 * (a + d - b) / d}')
  printf '%-36s %14s %9s\n' "$s" "$share" "$ppl"
done
[ -n "$dense" ] && echo "dense (fp32): ppl $base; stored share = (factors + matrices kept dense) / dense linear weights"

# SliceGPT (calibrated on TinyStories text, 64 windows of 256): the whole
# model shrinks (embedding, blocks, classifier), so its size is reported as
# parameters (shortcut matrices included) and bytes of model.safetensors
# against the dense model's, not as a share of the linear weights.
# SLICEGPT=0 skips these rows.
if [ "${SLICEGPT:-1}" != 0 ]; then
  calib=$data/text/tinystories_valid_head.txt
  printf '\n%-40s %12s %8s %12s %9s\n' "slicegpt keys" "parameters" "share" "bytes" "ppl"
  for s in 0.1 0.2 0.25 0.3; do
    for v in "" "--basis variance" "--basis random" "--no-shortcut"; do
      # shellcheck disable=SC2086
      "$wmat" decompose "$model" "$tmp/sl" --method slicegpt --sparsity $s $v --calib "$calib" --tokens "$tok" \
        --ctx 256 --max-windows "$windows" --threads 1 >"$tmp/log" 2>&1 ||
        { echo "slicegpt $s $v: failed: $(tail -1 "$tmp/log")"; continue; }
      read -r before after < <(sed -n 's/^decomposed .*: \([0-9]*\) -> \([0-9]*\) weights.*/\1 \2/p' "$tmp/log")
      ppl=$(sed -n 's/^perplexity [0-9.]* -> \([0-9.]*\).*/\1/p' "$tmp/log")
      bytes=$(stat -c %s "$tmp/sl/model.safetensors")
      share=$(awk -v a="$after" -v b="$before" 'BEGIN {printf "%.1f%%", 100 * a / b}')
      printf '%-40s %12s %8s %12s %9s\n' "--sparsity $s $v" "$after" "$share" "$bytes" "$ppl"
      rm -rf "$tmp/sl"
    done
  done
  echo "dense: $before parameters; share = sliced parameters (shortcuts included) / dense parameters"
fi
