#!/usr/bin/env bash
# Size-quality curves of the decomposition methods on a model: each setting
# decomposed with `wmat decompose`, evaluated in the same command on
# WikiText-2 valid (64 windows of 256 tokens), printed as one table row:
# method, settings, stored elements of all linear weights (decomposed
# factors + matrices kept dense) as a share of dense, perplexity.
#
# usage: scripts/decomp-curves.sh [MODEL] [WINDOWS]   (default ../shared/data/models/mix4m.bin, 64)
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
echo "dense (fp32): ppl $base; stored share = (factors + matrices kept dense) / dense linear weights"
