#!/bin/sh
# CBQ against GPTQ (docs/QUANT.md "CBQ (issue 19)"): stories260K (per-OC) and
# mix4m (g128, down_proj per-OC by --group-fallback) at 2 and 3 bits, three
# disjoint calibration slices of 16384 TinyStories tokens, CBQ with windows of
# 1 block (block-wise) and 2 blocks (cross-block). One thread, --to none
# (fake-quant; test_cbq holds the packed model to the same logits).
# usage: scripts/cbq-table.sh BUILD OUTDIR [ITERS] [CALIB_WINDOWS]
set -eu
B=${1:-build}; O=${2:-cbq-out}; IT=${3:-40}; CW=${4:-16}
D=${WMAT_DATA:-../shared/data}
mkdir -p "$O"
for S in 0 1 2; do
  dd if=$D/golden/tinystories_valid_head.tok512.u16 of=$O/cal$S.u16 bs=32768 skip=$S count=1 2>/dev/null
done
run() { # model tag grid args...
  m=$1; tag=$2; shift 2
  if [ "$m" = mix4m ]; then
    ev="--eval $D/golden/wikitext2_valid_tokenized.tok512.u16 --max-windows 64 --ctx 256"
  else
    ev="--eval $D/golden/tinystories_valid_head.tok512.u16 --offset 65536 --max-windows 64 --ctx 256"
  fi
  for S in 0 1 2; do
    out=$("$B"/wmat quantize $D/models/$m.bin q --to none --quiet --threads 1 --calib $O/cal$S.u16 \
      --calib-tokens 16384 --calib-ctx 256 $ev "$@" 2>$O/$m-$tag-$S.err)
    ppl=$(echo "$out" | sed -n 's/^perplexity *\([0-9.]*\).*/\1/p')
    t=$(echo "$out" | sed -n 's/^time *\([0-9.]*\) s total.*/\1/p')
    bpw=$(echo "$out" | sed -n 's/^bits\/weight *\([0-9.]*\).*/\1/p')
    echo "$m $tag slice$S ppl $ppl bpw $bpw time $t" | tee -a $O/results.txt
  done
}
for BITS in 2 3; do
  for m in stories260K mix4m; do
    if [ $m = mix4m ]; then G="--group 128 --group-fallback"; else G=""; fi
    run $m gptq$BITS --method gptq --bits $BITS $G
    run $m cbq${BITS}w1 --method cbq --bits $BITS $G --cbq-window 1 --cbq-iters $IT --cbq-windows $CW
    run $m cbq${BITS}w2 --method cbq --bits $BITS $G --cbq-window 2 --cbq-iters $IT --cbq-windows $CW
  done
done
