#!/usr/bin/env bash
# SPECS H6's check of DSFormer on mix4m's FFN matrices (gate/up/down) at 2x
# compression (f32 storage, index bytes counted), docs/DECOMP.md "DSFormer":
#   1. post hoc: truncated SVD at rank 93 against D S (SVD init, top-s of
#      V_k^T per column, D refit or not) at the same stored size;
#   2. fine-tuning (STEPS steps on the first 300k tokens of the TinyStories
#      head): straight-through top-s (dsformer), the first mask kept fixed
#      (dsformer-fixed) and low-rank fine-tuning at rank 93 (dsformer with
#      density 1), for each seed in SEEDS.
# Perplexity: WikiText-2 valid (ctx 256, 64 windows) and the held-out end of
# the TinyStories head (from token 300000, ctx 256, 64 windows).
# Usage: scripts/dsformer-h6.sh OUTDIR [STEPS=300] [SEEDS="1 2 3"] [THREADS=1]
# POSTHOC=0 skips part 1, ARMS="lr stf fixed" picks the fine-tuning arms (two
# invocations with different SEEDS/ARMS may run side by side on one OUTDIR).
set -euo pipefail
OUT=${1:?usage: dsformer-h6.sh OUTDIR [STEPS] [SEEDS] [THREADS]}
STEPS=${2:-300}
SEEDS=${3:-1 2 3}
TH=${4:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W="$ROOT/build/wmat"
D=${WMAT_DATA:-$ROOT/../shared/data}
M=$D/models/mix4m.bin
WT=$D/golden/wikitext2_valid_tokenized.tok512.u16
TS=$D/golden/tinystories_valid_head.tok512.u16
mkdir -p "$OUT"
TRAIN=$OUT/ts_train.u16
[ -s "$TRAIN" ] || head -c 600000 "$TS" > "$TRAIN" # the first 300000 tokens
RES=$OUT/results.tsv
POSTHOC=${POSTHOC:-1}
ARMS=${ARMS:-lr stf fixed}

ppl() { "$W" eval "$1" --tokens "$2" --ctx 256 --max-windows 64 ${3:+--offset $3} --threads "$TH" --json 2>/dev/null |
        sed -n 's/.*"ppl": \([0-9.]*\).*/\1/p'; }
ffn_bytes() { "$W" info "$1" 2>/dev/null | awk '/mlp\.(gate|up|down)_proj\.weight/ {s += $NF} END {print s}'; }
row() { # name model
    printf '%s\t%s\t%s\t%s\n' "$1" "$(ffn_bytes "$2")" "$(ppl "$2" "$WT")" "$(ppl "$2" "$TS" 300000)" | tee -a "$RES"
}

[ "$POSTHOC" = 1 ] && echo "# name	ffn_bytes	wikitext2_ppl	tinystories_heldout_ppl" | tee -a "$RES"
[ "$POSTHOC" = 1 ] && row dense "$M"
dec() { # name args...
    local n=$1; shift
    "$W" decompose "$M" "$OUT/$n" --targets gate,up,down --threads "$TH" "$@" > "$OUT/$n.log" 2>&1
    row "$n" "$OUT/$n"
}
if [ "$POSTHOC" = 1 ]; then
    # 2x of f32: svd rank 93 stores 93 (m + n) floats; D S at k 110, s 55
    # (f32 values, one index byte each) stores no more over gate+up+down
    dec svd_r93 --method svd --rank 93
    dec dsf_k110_s55_refit --method dsformer --rank 110 --nnz 55
    dec dsf_k110_s55_norefit --method dsformer --rank 110 --nnz 55 --no-refit
    dec dsf_c2_share0.25 --method dsformer --compression 2 --nnz-share 0.25
    dec dsf_c2_share0.5 --method dsformer --compression 2 --nnz-share 0.5
    dec dsf_c2_share0.75 --method dsformer --compression 2 --nnz-share 0.75
fi

for seed in $SEEDS; do
    for arm in $ARMS; do
        case $arm in
        lr) args=(--method dsformer --rank 93 --density 1) ;;
        stf) args=(--method dsformer --rank 110 --density 0.5) ;;
        fixed) args=(--method dsformer-fixed --rank 110 --density 0.5) ;;
        esac
        n=ft_${arm}_s$seed
        "$W" train "$M" "$OUT/$n" --data "$TRAIN" "${args[@]}" --lora-targets gate,up,down --steps "$STEPS" \
            --batch 4 --ctx 128 --lr 5e-4 --seed "$seed" --threads "$TH" > "$OUT/$n.log" 2>&1
        row "$n" "$OUT/$n"
    done
done
