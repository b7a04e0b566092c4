#!/usr/bin/env bash
# Run every benchmark once, in order, and keep their output in bench-results/.
# usage: scripts/run-benchmarks.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mkdir -p bench-results
# the benchmarks are not part of `make`: build them (a no-op when current)
cmake --build "$build" --target wmat_benches -j"$(nproc)" >/dev/null || { echo "run-benchmarks: building wmat_benches in $build failed" >&2; exit 1; }
for b in "$build"/bench_*; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  echo "== $name"
  "$b" 2>&1 | tee "bench-results/$name.txt"
done
