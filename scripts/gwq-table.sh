#!/usr/bin/env bash
# docs/QUANT.md "GWQ (issue 13)" and "FineQuant-style adaptive groups (issue 13)":
# every cell one `wmat quantize ... --to none --eval`, one thread.
# usage: scripts/gwq-table.sh [BUILD_DIR] [gwq|finequant|all] [MODELS...]
# (docs/QUANT.md's mix4m GWQ table: the ablation rows have slices 0 and 1 only, cut for time; the main rows'
# slice 2 came from the same commands run alone)
# GWQ rows: three disjoint calibration slices of the TinyStories stream (tokens [16384 s, 16384 (s+1)),
# 64 windows of 256; the gradients on the first 8 of them); stories260K evaluated on the same stream
# from token 65536 (64 windows of 256), mix4m on the first 64 windows of WikiText-2 valid.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
WHAT=${2:-all}
shift 2 || true
MODELS=${*:-stories260K mix4m}
D=../shared/data
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for s in 0 1 2; do dd if="$TS" of="$tmp/cal$s.u16" bs=32768 skip=$s count=1 status=none; done
run() { # model ev calib-args method-args...
  local model=$1 ev=$2 cal=$3; shift 3
  # shellcheck disable=SC2086
  out=$("$B/wmat" quantize $D/models/$model.bin "$tmp/q" $cal $ev --max-windows 64 --ctx 256 --to none --quiet -t 1 \
        --method "$@" 2>&1) || { echo "$out" >&2; return 1; }
  bpw=$(awk '/^bits\/weight/ {print $2}' <<< "$out")
  ppl=$(awk '/^perplexity/ {print $2}' <<< "$out")
  echo "$bpw $ppl"
}
for model in $MODELS; do
  if [ "$model" = stories260K ]; then
    ev="--eval $TS --offset 65536"
    # inputs of 64 (g64 = per-OC); down_proj's 172 inputs are no multiple of 32: GPTQ per-OC in every row
    gw=(--group 64 --group-fallback --override down_proj=gptq)
    gp=(--group-fallback)
  else
    ev="--eval $WT"
    gw=(--group 64)
    gp=()
  fi
  if [ "$WHAT" != finequant ]; then
    for s in 0 1 2; do
      cal="--calib $tmp/cal$s.u16 --calib-tokens 16384 --calib-ctx 256"
      for bits in 3 2; do
        for sc in grad grad_w hessian magnitude random fisher; do  # fisher: stories260K only in QUANT.md
          echo "$model $s gwq ${bits}b g64 1% $sc: $(run "$model" "$ev" "$cal" gwq --bits $bits "${gw[@]}" --score $sc)"
        done
        echo "$model $s gwq ${bits}b g64 1% grad rtn: $(run "$model" "$ev" "$cal" gwq --bits $bits "${gw[@]}" --dense rtn)"
        echo "$model $s gptq ${bits}b g64: $(run "$model" "$ev" "$cal" gptq --bits $bits --group 64 "${gp[@]}")"
        echo "$model $s gptq ${bits}b g32: $(run "$model" "$ev" "$cal" gptq --bits $bits --group 32 "${gp[@]}")"
      done
    done
  fi
  if [ "$WHAT" != gwq ]; then
    # stories260K: --min-group 32 (its 64-wide inputs have no other candidate at 64)
    if [ "$model" = stories260K ]; then fq=(--min-group 32); fg=32; else fq=(); fg=64; fi
    for bits in 4 3; do
      echo "$model finequant ${bits}b tau 1.5: $(run "$model" "$ev" "" finequant --bits $bits "${fq[@]}")"
      echo "$model rtn ${bits}b sym g$fg: $(run "$model" "$ev" "" rtn --bits $bits --sym --group $fg --group-fallback)"
      echo "$model rtn ${bits}b sym per-OC: $(run "$model" "$ev" "" rtn --bits $bits --sym)"
    done
    echo "$model finequant 3b tau 1.1: $(run "$model" "$ev" "" finequant --bits 3 --tau 1.1 "${fq[@]}")"
  fi
done
