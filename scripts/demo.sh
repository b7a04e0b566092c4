#!/usr/bin/env bash
# wmat's self-contained demo (make demo): on a fresh Debian 12 machine it
# installs the King James Bible (Debian's public-domain bible-kjv), trains a
# small byte-level model on it for a couple of minutes, then runs the rest of
# the pipeline that exists in this tree (eval, generate, and quantize /
# analyze when present) and prints a summary. The trained model is cached in
# .demo-cache/ so a second run is quick (DEMO_RETRAIN=1 trains again).
#   scripts/demo.sh [BUILD_DIR]          (default: build)
# Environment: DEMO_STEPS (schedule length, default 400), DEMO_SECONDS (training
# time limit, default 150), DEMO_THREADS (default 2).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
case "$build" in /*) ;; *) build="$here/$build" ;; esac
wmat="$build/wmat"
cache="$here/.demo-cache"
steps=${DEMO_STEPS:-400}
seconds=${DEMO_SECONDS:-150}
threads=${DEMO_THREADS:-2}
mkdir -p "$cache"

say() { printf '\n== %s\n' "$*"; }

if [ ! -x "$wmat" ]; then
  echo "demo: $wmat not found; build first (make)" >&2
  exit 1
fi

# 1. the text: Debian's bible-kjv prints the whole book with a verse range
if ! command -v bible >/dev/null 2>&1; then
  say "installing bible-kjv (Debian's public-domain King James Bible)"
  "$here/scripts/setup-deps.sh" --demo
fi
text="$cache/kjv.txt"
if [ ! -s "$text" ]; then
  bible -f "Gen1:1-Rev22:21" > "$text"
fi
bytes=$(wc -c < "$text")
# the last 2% (Revelation and a little before it) is held out
n_val=$((bytes / 50))
head -c $((bytes - n_val)) "$text" > "$cache/train.txt"
tail -c "$n_val" "$text" > "$cache/val.txt"
say "text: $(wc -l < "$text") lines, $bytes bytes (train $((bytes - n_val)), held out $n_val)"

# 2. train (cached)
model="$cache/kjv-small.gguf"
if [ ! -s "$model" ] || [ "${DEMO_RETRAIN:-0}" = 1 ]; then
  say "training a small byte-level model (preset 'small': dim 128, hidden 352, 4 layers) for up to $seconds s ($steps-step schedule) on $threads threads"
  "$wmat" train --init small "$model" --byte-tokenizer --data "$cache/train.txt" --eval "$cache/val.txt" \
    --steps "$steps" --time-limit "$seconds" --batch 16 --ctx 128 --lr 3e-3 --warmup 20 --eval-every 50 --max-windows 40 \
    --threads "$threads" --json --csv "$cache/loss.csv" --svg "$cache/loss.svg" > "$cache/train.json"
else
  say "using the cached model $model (DEMO_RETRAIN=1 to train again)"
fi
summary_train=$(cat "$cache/train.json" 2>/dev/null || echo '{}')

# 3. the rest of the pipeline
say "held-out perplexity (wmat eval, bytes)"
"$wmat" eval "$model" --text "$cache/val.txt" --ctx 128 --max-windows 100 --threads "$threads" | tee "$cache/eval.txt"
ppl=$(awk '/perplexity/ {print $2}' "$cache/eval.txt")

say "generation (wmat generate)"
"$wmat" generate "$model" --prompt "And God said" --steps 200 --temp 0.8 --seed 7 --threads "$threads" | tee "$cache/gen.txt"
echo

quant="not in this tree"
if "$wmat" quantize --help >/dev/null 2>&1; then
  say "quantization (wmat quantize)"
  if "$wmat" quantize "$model" "$cache/kjv-small-q4" --method rtn --bits 4 --group 32 --to none \
      --eval "$cache/val.txt" --ctx 128 --max-windows 100 --threads "$threads" > "$cache/quantize.txt"; then
    tail -n 4 "$cache/quantize.txt"
    quant="4-bit RTN (groups of 32): $(grep -i -m1 'perplexity\|ppl' "$cache/quantize.txt" | tr -s ' ' || echo 'see quantize.txt')"
  else
    quant="failed (see above)"
  fi
fi
analyze="not in this tree"
if "$wmat" analyze --help >/dev/null 2>&1; then
  say "analysis (wmat analyze)"
  if "$wmat" analyze "$model" --json-out "$cache/analyze.json" --threads "$threads" > "$cache/analyze.txt"; then
    head -n 20 "$cache/analyze.txt"
    analyze="report in $cache/analyze.txt"
  else
    analyze="failed (see above)"
  fi
fi

say "summary"
echo "model        $model ($(du -h "$model" | cut -f1))"
echo "training     $summary_train"
echo "held-out     perplexity per byte $ppl"
echo "loss curve   $cache/loss.svg ($cache/loss.csv)"
echo "quantize     $quant"
echo "analyze      $analyze"
if [ -d "$here/../shared/data" ]; then
  echo "also         ../shared/data is present: see docs/TRAINING.md for fine-tuning stories260K on Tiny Shakespeare"
fi
