#!/usr/bin/env bash
# llama.cpp's K-quant file types with imatrix (lcq) against wmat's same
# file types (--ggml FTYPE) with rtn (llama.cpp's reference search),
# imatrix (its weighted search) and gptq (error feedback into the blocks),
# on mix4m: three disjoint TinyStories calibration slices of 16384 tokens
# (slice s = tokens [16384 s, 16384 (s+1))), WikiText-2 valid, 64 windows
# of 256, one thread. Prints "ftype variant slice ppl bpw" rows (bpw: the
# whole file's tensors, lcq bpw's all_bpw).
#   LCQ=path/to/lcq scripts/ggml-kquant-table.sh OUTDIR [FTYPES...]
# VARIANTS (default "rtn lcq imatrix gptq gptq-d0.1") picks the rows.
set -euo pipefail
OUT=${1:?OUTDIR}; shift
FTYPES=${*:-Q4_K_M Q3_K_M Q4_K_S Q3_K_S}
D=${D:-$(cd "$(dirname "$0")/../../shared/data" && pwd)}
W=${WMAT:-$(cd "$(dirname "$0")/.." && pwd)/build/wmat}
LCQ=${LCQ:?set LCQ to the lcq binary of llama.cpp-quant}
EV="$D/golden/wikitext2_valid_tokenized.tok512.u16"
mkdir -p "$OUT"
[ -f "$OUT/f32.gguf" ] || "$W" convert "$D/models/mix4m.bin" "$OUT/f32.gguf" --to gguf >/dev/null
ppl() { "$W" eval "$1" --tokens "$EV" --ctx 256 --max-windows 64 --threads 1 2>/dev/null | awk '/^perplexity/{print $2}'; }
bpw() { "$LCQ" bpw "$1" 2>/dev/null | grep -o "\"all_bpw\": *[0-9.]*" | grep -o "[0-9.]*$" || true; }
for s in 0 1 2; do
  [ -f "$OUT/cal$s.u16" ] || dd if="$D/golden/tinystories_valid_head.tok512.u16" of="$OUT/cal$s.u16" bs=32768 skip=$s count=1 status=none
  [ -f "$OUT/imat$s.gguf" ] || "$LCQ" imatrix "$OUT/f32.gguf" "$OUT/cal$s.u16" "$OUT/imat$s.gguf" --ctx 256 --windows 64 --threads 1 2>/dev/null
done
VARIANTS=${VARIANTS:-rtn lcq imatrix gptq gptq-d0.1}
has() { case " $VARIANTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for F in $FTYPES; do
  f=$(echo "$F" | tr A-Z a-z)
  if has rtn; then
    "$W" quantize "$D/models/mix4m.bin" "$OUT/w-$f-rtn.gguf" --to gguf --ggml "$f" --method rtn --threads 1 --quiet >/dev/null
    echo "$F wmat-rtn - $(ppl "$OUT/w-$f-rtn.gguf") $(bpw "$OUT/w-$f-rtn.gguf")"
  fi
  for s in 0 1 2; do
    if has lcq; then
      "$LCQ" quantize "$OUT/f32.gguf" "$OUT/l-$f-$s.gguf" "$F" --imatrix "$OUT/imat$s.gguf" --threads 1 >/dev/null 2>&1
      echo "$F llama.cpp-imatrix $s $(ppl "$OUT/l-$f-$s.gguf") $(bpw "$OUT/l-$f-$s.gguf")"
    fi
    for v in imatrix gptq gptq-d0.1; do
      has "$v" || continue
      m=${v%%-*}; extra=""
      [ "$v" = gptq-d0.1 ] && extra="--damp 0.1"
      "$W" quantize "$D/models/mix4m.bin" "$OUT/w-$f-$v-$s.gguf" --to gguf --ggml "$f" --method "$m" --threads 1 --quiet \
        --calib "$OUT/cal$s.u16" --calib-tokens 16384 --calib-ctx 256 $extra >/dev/null 2>&1
      echo "$F wmat-$v $s $(ppl "$OUT/w-$f-$v-$s.gguf") $(bpw "$OUT/w-$f-$v-$s.gguf")"
    done
  done
done
