#!/usr/bin/env bash
# Speed of every structured weight kind against the dense model it came from,
# in the same process (build/bench_models): low-rank at about half the
# parameters, Monarch at half, 2:4 and 50% unstructured sparsity, LQ-LoRA (4-bit +
# rank 16), SliceGPT 25% with and without shortcuts, DSFormer at 2x, and GPTQ 4-bit as
# the quantized reference. Each variant is written once to OUTDIR (kept between runs:
# delete a file to redo it), then RUNS runs of bench_models over all of them.
#
# usage: scripts/decomp-speed.sh MODEL OUTDIR
#   env: BUILD (default build), RUNS (3), POSITIONS (bench_models --positions, default 128),
#        BUDGET (seconds per model per run, default 2), THREADS (1), CALIB (SliceGPT/GPTQ
#        calibration, default ../shared/data/text/tinystories_valid_head.txt), CALIB_TOKENS (4096),
#        RANK (low-rank rank, default: a quarter of the model's width, half the parameters of a
#        square matrix), ONLY (space-separated subset of: lr mon nm24 sp50 lq sl25 sl25n dsf q4),
#        SPLIT=1 (bench all variants in one process; default SPLIT=2: two groups, for 1B-scale models
#        whose variants do not fit in memory together)
# Example (the tables in docs/DECOMP.md, "Speed of every kind"):
#   scripts/decomp-speed.sh ../shared/data/models/mix4m.bin /tmp/spd
#   LAYERS=8 TYPES=f32 scripts/make-tinyllama.sh /tmp/l8
#   POSITIONS=32 scripts/decomp-speed.sh /tmp/l8/tinyllama-rand-L8-f32.gguf /tmp/spd-l8
set -euo pipefail
model=${1:?usage: decomp-speed.sh MODEL OUTDIR}
out=${2:?usage: decomp-speed.sh MODEL OUTDIR}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-$root/build}
wmat=$build/wmat
bench=$build/bench_models
runs=${RUNS:-3}
pos=${POSITIONS:-128}
budget=${BUDGET:-2}
th=${THREADS:-1}
calib=${CALIB:-$root/../shared/data/text/tinystories_valid_head.txt}
ctok=${CALIB_TOKENS:-4096}
only=${ONLY:-lr mon nm24 sp50 lq sl25 sl25n dsf q4}
[ -x "$wmat" ] || { echo "decomp-speed: $wmat not built (make)" >&2; exit 1; }
[ -x "$bench" ] || cmake --build "$build" --target bench_models >/dev/null
mkdir -p "$out"
dim=$("$wmat" info "$model" 2>/dev/null | sed -n 's/.*: dim \([0-9][0-9]*\),.*/\1/p' | head -1)
rank=${RANK:-$(( ${dim:-1024} / 4 ))}

make_one() { # NAME ARGS...: decompose (or quantize) MODEL into OUTDIR/NAME unless it exists
  local name=$1; shift
  [ -e "$out/$name" ] && return 0
  echo "decomp-speed: writing $name ($*)" >&2
  local t0=$SECONDS
  "$wmat" "$@" --threads "$th" >"$out/$name.log" 2>&1 || { echo "decomp-speed: $name failed:" >&2; tail -5 "$out/$name.log" >&2; return 1; }
  echo "decomp-speed: $name in $((SECONDS - t0)) s" >&2
}
cal=(--calib "$calib" --calib-tokens "$ctok" --calib-ctx 256)
variants=()
for v in $only; do
  case $v in
    lr) make_one lr decompose "$model" "$out/lr" --method svd --rank "$rank" ;;
    mon) make_one mon decompose "$model" "$out/mon" --method monarch --blocks 4 --share 0.5 ;;
    nm24) make_one nm24 decompose "$model" "$out/nm24" --method magnitude --nm 2:4 --dtype f16 ;;
    sp50) make_one sp50 decompose "$model" "$out/sp50" --method magnitude --sparsity 0.5 --dtype f16 ;;
    lq) make_one lq decompose "$model" "$out/lq" --method lqlora --bits 4 --rank 16 --dtype f16 ;;
    sl25) make_one sl25 decompose "$model" "$out/sl25" --method slicegpt --sparsity 0.25 "${cal[@]}" ;;
    sl25n) make_one sl25n decompose "$model" "$out/sl25n" --method slicegpt --sparsity 0.25 --no-shortcut "${cal[@]}" ;;
    dsf) make_one dsf decompose "$model" "$out/dsf" --method dsformer --compression 2 ;;
    q4) make_one q4 quantize "$model" "$out/q4" --method gptq --bits 4 --group 64 "${cal[@]}" ;;
    *) echo "decomp-speed: unknown variant $v" >&2; exit 2 ;;
  esac
  variants+=("$out/$v")
done

size_of() { du -sb "$1" | cut -f1; }
echo "# sizes (bytes on disk; dense: $(size_of "$model"))"
for v in "${variants[@]}"; do printf '%-8s %12d  %.1f%%\n' "$(basename "$v")" "$(size_of "$v")" \
  "$(echo "100 * $(size_of "$v") / $(size_of "$model")" | bc -l)"; done

# one process holds the dense model and the variants of its group
if [ "${SPLIT:-2}" = 1 ] || [ ${#variants[@]} -le 4 ]; then groups=("${variants[*]}")
else
  half=$(( (${#variants[@]} + 1) / 2 ))
  groups=("${variants[*]:0:$half}" "${variants[*]:$half}")
fi
for r in $(seq 1 "$runs"); do
  for g in "${groups[@]}"; do
    echo "# run $r: $(for v in $g; do basename "$v"; done | tr '\n' ' ')"
    # shellcheck disable=SC2086
    "$bench" --threads "$th" --budget "$budget" --positions "$pos" "$model" $g
  done
done
