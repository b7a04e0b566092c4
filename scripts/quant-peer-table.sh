#!/usr/bin/env bash
# wmat's measured bit allocation (and plain rows) against llama.cpp's IQ2/IQ3/
# K/Q4 types (lcq, with an imatrix from the same calibration slice), on mix4m
# (docs/QUANT.md "Peer table at 3.2 and 3.4 bpw"). Three disjoint calibration
# slices of 16384 TinyStories tokens (slice s = tokens [16384 s, 16384 (s+1))),
# each file scored on WikiText-2 valid (64 windows of 256) and on held-out
# TinyStories (tokens from 65536: 64 windows of 256, after every calibration
# slice). One thread. Prints one line per file:
#   PART  TOOL  SETTING  SLICE  BPW  PPL_WIKITEXT  PPL_TINYSTORIES_HELDOUT
# wmat's bpw: over the quantized (linear) tensors; llama.cpp's: lcq bpw's
# linear_bpw (the same 42 matrices), its embedding kept f32 (--embd f32).
#   LCQ=path/to/lcq scripts/quant-peer-table.sh OUTDIR [PART...]
# PARTS: lcq-SLICE (llama.cpp's types), alloc-SLICE (wmat --allocate at
# 3.2/3.4 bpw), plain-SLICE (wmat single settings), s260k (stories260K).
# env: LCQ_TYPES, ALLOC ("BPW=CANDIDATES ..."), PLAIN ("label=ARGS;...").
set -euo pipefail
OUT=${1:?OUTDIR}; shift
PARTS=${*:-lcq-0 alloc-0 lcq-1 alloc-1 lcq-2 alloc-2}
D=${D:-$(cd "$(dirname "$0")/../../shared/data" && pwd)}
W=${WMAT:-$(cd "$(dirname "$0")/.." && pwd)/build/wmat}
LCQ=${LCQ:?set LCQ to the lcq binary of llama.cpp-quant}
TS=$D/golden/tinystories_valid_head.tok512.u16
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
mkdir -p "$OUT"
for s in 0 1 2; do
  [ -f "$OUT/cal$s.u16" ] || dd if="$TS" of="$OUT/cal$s.u16" bs=32768 skip=$s count=1 status=none
done
# held out: 32768 tokens from 65536 (64 windows of 256 read 16385 of them)
[ -f "$OUT/heldout.u16" ] || dd if="$TS" of="$OUT/heldout.u16" bs=32768 skip=4 count=2 status=none
LCQ_TYPES=${LCQ_TYPES:-IQ2_M IQ2_S Q2_K IQ3_XXS IQ2_XXS Q4_0 Q4_K_S}
ALLOC=${ALLOC:-"3.2=bcq:2:64,bcq:3:oc,gptq:4:oc 3.4=bcq:2:64,bcq:3:oc,gptq:4:oc"}
lppl() { "$LCQ" ppl "$1" "$2" --ctx 256 --windows 64 --threads 1 2>/dev/null | grep -o '"ppl": *[0-9.]*' | grep -o '[0-9.]*$'; }
wppl() { "$W" eval "$1" --tokens "$2" --ctx 256 --max-windows 64 --threads 1 2>/dev/null | awk '/^perplexity/{print $2}'; }
lbpw() { "$LCQ" bpw "$1" 2>/dev/null | grep -o '"linear_bpw": *[0-9.]*' | grep -o '[0-9.]*$'; }
# wmat quantize MODEL, saved natively, scored on both streams; extra args after the label
wq() {  # part label slice model evalWT(1/0) args...
  local part=$1 label=$2 s=$3 model=$4 wt=$5; shift 5
  local f="$OUT/w-$part-$s.wm" log
  log="$OUT/w-$part-$s-$(echo "$label" | tr -c 'A-Za-z0-9.\n' _).log"
  "$W" quantize "$D/models/$model.bin" "$f" --calib "$OUT/cal$s.u16" --calib-tokens 16384 --calib-ctx 256 \
    --threads 1 "$@" > "$log" 2>&1
  local bpw a b="-"
  bpw=$(awk '/^bits\/weight/{print $2}' "$log")
  grep '^allocation ' "$log" | tail -1 >&2 || true
  a=$([ "$wt" = 1 ] && wppl "$f" "$WT" || echo -)
  b=$(wppl "$f" "$OUT/heldout.u16")
  echo "$model wmat $label $s $bpw $a $b"
  rm -rf "$f"
}
# the same, fake-quant (--to none), scored on held-out TinyStories only: for
# choices wmat cannot write natively (3-bit GPTQ codes of stories260K's
# 172-input down_proj: packed rows are 32-code chunks)
wqn() {  # label slice model args...
  local label=$1 s=$2 model=$3; shift 3
  local log
  log="$OUT/n-$model-$s-$(echo "$label" | tr -c 'A-Za-z0-9.\n' _).log"
  "$W" quantize "$D/models/$model.bin" "$OUT/none" --to none --calib "$OUT/cal$s.u16" --calib-tokens 16384 \
    --calib-ctx 256 --eval "$OUT/heldout.u16" --ctx 256 --max-windows 64 --threads 1 "$@" > "$log" 2>&1
  grep '^allocation ' "$log" | tail -1 >&2 || true
  echo "$model wmat $label $s $(awk '/^bits\/weight/{print $2}' "$log") - $(awk '/^perplexity/{print $2}' "$log")"
}
for P in $PARTS; do
  s=${P##*-}
  case $P in
    lcq-*)
      [ -f "$OUT/f32.gguf" ] || "$W" convert "$D/models/mix4m.bin" "$OUT/f32.gguf" --to gguf >/dev/null
      [ -f "$OUT/imat$s.gguf" ] || "$LCQ" imatrix "$OUT/f32.gguf" "$OUT/cal$s.u16" "$OUT/imat$s.gguf" --ctx 256 --windows 64 --threads 1 >/dev/null 2>&1
      for T in $LCQ_TYPES; do
        f="$OUT/l-$T-$s.gguf"
        "$LCQ" quantize "$OUT/f32.gguf" "$f" "$T" --imatrix "$OUT/imat$s.gguf" --embd f32 --threads 1 >/dev/null 2>&1
        echo "mix4m llama.cpp $T $s $(lbpw "$f") $(lppl "$f" "$WT") $(lppl "$f" "$OUT/heldout.u16")"
        rm -f "$f"
      done ;;
    alloc-*)
      for a in $ALLOC; do
        wq "alloc${a%%=*}" "allocate:${a#*=}@${a%%=*}" "$s" mix4m 1 --method bcq --bits 3 --allocate "${a#*=}" --bpw "${a%%=*}"
      done ;;
    plain-*)
      IFS=';' read -ra PL <<< "${PLAIN:-gptq:2:32=--method gptq --bits 2 --group 32;gptq:3:oc=--method gptq --bits 3;bcq:3:oc=--method bcq --bits 3;gptq:3:64=--method gptq --bits 3 --group 64;gptq:4:32=--method gptq --bits 4 --group 32}"
      for p in "${PL[@]}"; do
        # shellcheck disable=SC2086
        wq "plain" "${p%%=*}" "$s" mix4m 1 ${p#*=} --quiet
      done ;;
    s260kl-*)
      # stories260K: llama.cpp's types where its fallbacks allow (rows of 64 and 172
      # inputs: no 256-superblock fits); held-out TinyStories only (the
      # stories260K tables' evaluation); the last field: the types llama.cpp chose
      [ -f "$OUT/s260k.gguf" ] || "$W" convert "$D/models/stories260K.bin" "$OUT/s260k.gguf" --to gguf >/dev/null
      [ -f "$OUT/s260k-imat$s.gguf" ] || "$LCQ" imatrix "$OUT/s260k.gguf" "$OUT/cal$s.u16" "$OUT/s260k-imat$s.gguf" --ctx 256 --windows 64 --threads 1 >/dev/null 2>&1
      for T in ${S260K_TYPES:-IQ2_XXS Q2_K IQ3_XXS Q3_K_S Q4_0}; do
        f="$OUT/s-$T-$s.gguf"
        "$LCQ" quantize "$OUT/s260k.gguf" "$f" "$T" --imatrix "$OUT/s260k-imat$s.gguf" --embd f32 --threads 1 >/dev/null 2>&1
        echo "stories260K llama.cpp $T $s $(lbpw "$f") - $(lppl "$f" "$OUT/heldout.u16") $("$LCQ" bpw "$f" 2>/dev/null | grep -o '"linear_types": *"[^"]*"' | tr -d ' ')"
        rm -f "$f"
      done ;;
    s260kb-*)  # stories260K: BCQ per-row at 2 and 3 bits
      wq s260k bcq:2:oc "$s" stories260K 0 --method bcq --bits 2 --quiet
      wq s260k bcq:3:oc "$s" stories260K 0 --method bcq --bits 3 --quiet ;;
    s260ka-*)  # stories260K: the allocation at ~2.45 and ~3.6 bpw (the cheapest candidates need 2.338 / 3.338)
      wqn allocate:gptq:2:oc,bcq:2:oc,gptq:3:oc@2.45 "$s" stories260K --method gptq --bits 2 \
        --allocate gptq:2:oc,bcq:2:oc,gptq:3:oc --bpw 2.45
      wqn allocate:gptq:3:oc,bcq:3:oc,gptq:4:oc@3.6 "$s" stories260K --method gptq --bits 3 \
        --allocate gptq:3:oc,bcq:3:oc,gptq:4:oc --bpw 3.6 ;;
  esac
done
