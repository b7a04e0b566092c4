#!/usr/bin/env bash
# GPTQ of the TinyLlama-1.1B-shaped model (scripts/make-tinyllama.sh) end to end, with the per-stage
# breakdown, and the reference implementation's time next to it when one is given.
#
# usage: scripts/bench-gptq-1b.sh MODEL [OUTDIR]
#   MODEL: tinyllama-rand-f32.gguf (or -f16, or a shorter one made with LAYERS=N); OUTDIR (default a
#   temporary directory) receives the packed native model.
#   env: WMAT (default build/wmat), CALIB (default ../shared/data/golden/tinystories_valid_head.tok512.u16:
#        its ids are < 512, valid in the 32000-token vocabulary), TOKENS (default 16384 = 64 windows),
#        CTX (256), BITS (4), GROUP (128), THREADS (2), EXTRA (more `wmat quantize` options, e.g.
#        "--factor double"), CALIB_DTYPE (f32: the calibration forward's products, `--calib-dtype`;
#        "f32 bf16" runs wmat once with each, one after the other, and prints the ratio of their
#        calibration forward times and of their wall times), BLOCKS (quantize only blocks
#        0..BLOCKS-1, the others kept fp32 with --keep, so the calibration stops after them: a short
#        timing of the per-block costs; default all),
#        REF_CMD: a shell command that runs the reference flow (IST-DASLab's gptq.py with llama.py's
#        --true-sequential loop) on the same model, data and settings; it is timed with /usr/bin/time
#        in the same run, one after the other. When REF_CMD is unset and INSTALL_REF=1, the script's
#        own set-up installs Debian's python3-torch (apt-get), fetches the reference's source into
#        REF_DIR (default ~/.cache/wmat-gptq-ref; git clone of REF_SRC, default
#        https://github.com/IST-DASLab/gptq) and runs it with scripts/gptq-ref/llama_gguf_seq.py: the
#        reference's own GPTQ and Quantizer classes in llama.py's loop, on this GGUF (the reference
#        itself reads Hugging Face checkpoints through transformers, which Debian does not package;
#        the driver's docstring says what it adds). CI does not run this script.
#
# Prints wmat's report lines (calibration, time, breakdown, wrote), wall time and peak RSS of the
# whole process (/usr/bin/time), and the reference's wall time and peak RSS when it ran, with the
# ratio. Without a reference run the figures recorded in issue 20 are printed for orientation,
# labelled as such (1,631 s end to end, 268 s in the method, peak RSS 9.2 GB; measured on this
# machine class with 2 threads, quiet, Debian's python3-torch 1.13).
set -uo pipefail
model=${1:?usage: bench-gptq-1b.sh MODEL [OUTDIR]}
root=$(cd "$(dirname "$0")/.." && pwd)
wmat=${WMAT:-$root/build/wmat}
calib=${CALIB:-$root/../shared/data/golden/tinystories_valid_head.tok512.u16}
tokens=${TOKENS:-16384}
ctx=${CTX:-256}
bits=${BITS:-4}
group=${GROUP:-128}
threads=${THREADS:-2}
extra=${EXTRA:-}
dtypes=${CALIB_DTYPE:-f32}
blocks=${BLOCKS:-}
keep=()
if [ -n "$blocks" ]; then
    # blocks >= BLOCKS (up to 255) stay fp32: --keep globs on the tensor names ("model.layers.N.")
    pats=""
    for ((b = blocks; b < 256; b++)); do pats="$pats${pats:+,}*.layers.$b.*"; done
    keep=(--keep "$pats")
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=${2:-$tmp/out}
[ -x "$wmat" ] || { echo "bench-gptq-1b: $wmat not found (build first or set WMAT)" >&2; exit 1; }
[ -f "$model" ] || { echo "bench-gptq-1b: model $model not found (scripts/make-tinyllama.sh makes it)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench-gptq-1b: /usr/bin/time is needed for the peak RSS" >&2; exit 1; }

if [ -z "${REF_CMD:-}" ] && [ "${INSTALL_REF:-0}" = 1 ]; then
    # the reference flow: its own gptq.py / quant.py, driven by scripts/gptq-ref/llama_gguf_seq.py
    # (llama.py's true-sequential loop on this GGUF, with a torch LLaMA layer: no transformers)
    ref_dir=${REF_DIR:-$HOME/.cache/wmat-gptq-ref}
    # Debian's python (a python3 earlier on PATH, e.g. pyenv's, does not see Debian's torch)
    py=${PYTHON:-/usr/bin/python3}
    "$py" -c 'import torch, numpy' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-torch python3-numpy; }
    if [ ! -f "$ref_dir/gptq/gptq.py" ]; then
        mkdir -p "$ref_dir"
        git clone -q "${REF_SRC:-https://github.com/IST-DASLab/gptq}" "$ref_dir/gptq" ||
            { echo "bench-gptq-1b: could not fetch the reference (set REF_SRC to a local clone)" >&2; exit 1; }
    fi
    echo "reference source: $ref_dir/gptq at $(git -C "$ref_dir/gptq" rev-parse --short HEAD 2>/dev/null)"
    REF_CMD="$py $root/scripts/gptq-ref/llama_gguf_seq.py $model $calib --ref-dir $ref_dir/gptq --nsamples $((tokens / ctx)) --seqlen $ctx --wbits $bits --groupsize $group --threads $threads${blocks:+ --blocks $blocks}"
fi

# Both flows do their products in OpenBLAS (the reference through torch). A forced
# OPENBLAS_CORETYPE (some shells here set Haswell) holds torch's sgemm at AVX2 (measured 154
# against 227 GFLOP/s at 2 threads): run the benchmark with it unset for a fair comparison.
echo "blas          OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset} for both runs (unset is the fair setting)"
declare -A fwd walls
for dt in $dtypes; do
    echo "wmat: GPTQ ${bits} bits, groups of ${group}, $((tokens / ctx)) windows of ${ctx} tokens, stage (true-sequential), ${threads} threads, calibration forward $dt${blocks:+, blocks 0..$((blocks - 1)) only}"
    echo "load          $(uptime | sed 's/.*load average: //') (load average before the run)"
    # shellcheck disable=SC2086
    /usr/bin/time -f "process       %e s wall, %U s user, %S s system, peak RSS %M KB" -o "$tmp/time" \
        "$wmat" quantize "$model" "$out" --method gptq --bits "$bits" --group "$group" --calib "$calib" \
        --calib-tokens "$tokens" --calib-ctx "$ctx" --threads "$threads" --calib-dtype "$dt" "${keep[@]}" $extra \
        > "$tmp/wmat.txt" 2>&1
    rc=$?
    grep -E '^(calibration|time|breakdown|wrote|size) ' "$tmp/wmat.txt"
    cat "$tmp/time"
    [ $rc = 0 ] || { echo "bench-gptq-1b: wmat failed (exit $rc):" >&2; tail -5 "$tmp/wmat.txt" >&2; exit $rc; }
    fwd[$dt]=$(awk '/^breakdown/ {print $4}' "$tmp/wmat.txt")
    walls[$dt]=$(awk '{print $2}' "$tmp/time")
done
if [ -n "${fwd[f32]:-}" ] && [ -n "${fwd[bf16]:-}" ]; then
    awk -v a="${fwd[f32]}" -v b="${fwd[bf16]}" -v c="${walls[f32]}" -v d="${walls[bf16]}" 'BEGIN {
        printf "calib dtype   calibration forward f32 %.2f s, bf16 %.2f s: %.2fx; wall %.1f s against %.1f s: %.2fx (same run)\n",
               a, b, a / b, c, d, c / d }'
fi
wall=$(awk '{print $2}' "$tmp/time") # the last run's
cpu=$(awk '{print $5 + $8}' "$tmp/time")

if [ -n "${REF_CMD:-}" ]; then
    echo "reference: $REF_CMD"
    /usr/bin/time -f "%e %M %U %S" -o "$tmp/rtime" bash -c "$REF_CMD" > "$tmp/ref.txt" 2>&1 || {
        echo "bench-gptq-1b: the reference failed:" >&2
        tail -5 "$tmp/ref.txt" >&2
        exit 1
    }
    read -r rwall rrss ruser rsys < "$tmp/rtime"
    grep '^reference breakdown' "$tmp/ref.txt"
    echo "reference     $rwall s wall, $ruser s user, $rsys s system, peak RSS $rrss KB"
    echo "load          $(uptime | sed 's/.*load average: //') (load average after the reference)"
    awk -v a="$rwall" -v b="$wall" 'BEGIN { printf "ratio         wmat is %.2fx faster end to end (same run, wall)\n", a / b }'
    # on a shared machine the process CPU seconds are the comparable figure
    awk -v a="$ruser" -v b="$rsys" -v c="$cpu" 'BEGIN { printf "ratio (CPU)   %.1f s against %.1f s of process CPU (user + system): %.2fx\n", a + b, c, (a + b) / c }'
else
    echo "reference     not run (REF_CMD unset; INSTALL_REF=1 sets it up and runs it); recorded in issue 20 on this"
    echo "              machine class: 1631 s end to end, 268 s in the method, peak RSS 9.2 GB (22 blocks, 64 x 256 tokens,"
    echo "              4 bits, g128)"
    awk -v b="$wall" 'BEGIN { printf "ratio         1631 s / %.1f s = %.2fx against the recorded figure (not the same run)\n", b, 1631 / b }'
fi
