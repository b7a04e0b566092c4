#!/usr/bin/env bash
# Data parallelism on this machine (docs/SCALING.md): full training of mix4m
# (tokens/s) and GPTQ 4-bit quantization of mix4m (seconds, and the
# calibration's share) as 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x
# 1 thread, ROUNDS rounds (default 3), medians; then the all-reduce of
# mix4m's gradient (bench_allreduce) the cost model reads its bandwidth from.
# usage: scripts/bench-mpi.sh [BUILD_DIR]   (an MPI build: -DWMAT_WITH_MPI=ON; default build-mpi)
#   env: ROUNDS (3), STEPS (6), DATA (../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-mpi}
wmat=$build/wmat
data=${DATA:-../shared/data}
m=$data/models/mix4m.bin
t=$data/text/tinyshakespeare.txt
rounds=${ROUNDS:-3}
steps=${STEPS:-6}
[ -f "$m" ] || { echo "bench-mpi: $m not found" >&2; exit 1; }
command -v mpirun >/dev/null || { echo "bench-mpi: mpirun not found (apt-get install openmpi-bin)" >&2; exit 1; }
cmake --build "$build" --target wmat_cli bench_allreduce >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mpi() { mpirun -np "$1" --oversubscribe --bind-to none "${@:2}"; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# label -> runner: "1x1" and "1x2" are one process, "2x1" is mpirun -np 2
launch() {
  case "$1" in
    1x1) OMP_NUM_THREADS=1 "${@:2}" --threads 1 ;;
    1x2) OMP_NUM_THREADS=2 "${@:2}" --threads 2 ;;
    2x1) OMP_NUM_THREADS=1 mpi 2 "${@:2}" --threads 1 ;;
  esac
}
train_tps() { # tokens/s and the seconds per step spent waiting for the gradient sums
  launch "$1" "$wmat" train "$m" "$tmp/t.bin" --data "$t" --steps "$steps" --batch 8 --ctx 128 --warmup 0 --json 2>/dev/null |
    sed -n 's/.*"tokens_per_s": \([0-9.]*\).*"comm_seconds": \([0-9.]*\).*/\1 \2/p' | awk -v s="$steps" '{print $1, $2 / s}'
}
quant_s() { # total seconds and calibration seconds
  launch "$1" "$wmat" quantize "$m" "$tmp/q" --method gptq --bits 4 --calib "$t" --calib-tokens 8192 --calib-ctx 256 --quiet 2>&1 |
    awk '/^calibration/ {for (i = 1; i <= NF; i++) if ($i == "s;") c = $(i - 1)} /^time/ {s = $2} END {print s, c}'
}
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

echo "== mix4m ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)); $rounds rounds, medians"
declare -A tr tcm qt qc
for r in $(seq 1 "$rounds"); do
  for cfg in 1x1 1x2 2x1; do
    read -r x c < <(train_tps "$cfg")
    tr[$cfg]+="$x "
    tcm[$cfg]+="$c "
    read -r s c < <(quant_s "$cfg")
    qt[$cfg]+="$s "
    qc[$cfg]+="$c "
  done
done
echo "| ranks x threads | train tok/s (batch 8 x 128, $steps steps) | of a step, s waiting for the gradient sum | quantize s (gptq 4b, 32 windows x 256) | of which calibration s |"
echo "|---|---|---|---|---|"
for cfg in 1x1 1x2 2x1; do
  printf '| %s | %s | %s | %s | %s |\n' "$cfg" "$(tr ' ' '\n' <<<"${tr[$cfg]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${tcm[$cfg]}" | grep . | median)" \
    "$(tr ' ' '\n' <<<"${qt[$cfg]}" | grep . | median)" "$(tr ' ' '\n' <<<"${qc[$cfg]}" | grep . | median)"
  echo "  rounds: train ${tr[$cfg]}| comm ${tcm[$cfg]}| quantize ${qt[$cfg]}| calibration ${qc[$cfg]}" >&2
done
echo
echo "== all-reduce of mix4m's gradient (4558080 floats) and of 1/4 of it, 2 ranks"
mpi 2 "$build/bench_allreduce" 4558080 1139520
