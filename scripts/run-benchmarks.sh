#!/usr/bin/env bash
# Run every benchmark once, in order, and keep their output in bench-results/.
# usage: scripts/run-benchmarks.sh [BUILD_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
mkdir -p bench-results
for b in "$build"/bench_*; do
  [ -x "$b" ] || continue
  name=$(basename "$b")
  echo "== $name"
  "$b" 2>&1 | tee "bench-results/$name.txt"
done
