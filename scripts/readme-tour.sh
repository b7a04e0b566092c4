#!/usr/bin/env bash
# Run README.md's "A tour of the command line" as written: every line of its
# first ```sh block, in order, in a scratch directory, with `wmat` the built
# CLI and D pointing at the shared data. A line that exits non-zero fails the
# tour, naming the line and its last output. Registered as the `readme_tour`
# test (skipped without ../shared/data or in sanitizer builds, where the
# same commands are covered by the CLI tests and would take ten times as long).
#
# usage: scripts/readme-tour.sh BUILD_DIR SOURCE_DIR     (exit 77: skipped)
set -uo pipefail
build=${1:?usage: readme-tour.sh BUILD_DIR SOURCE_DIR}
src=$(cd "${2:?usage: readme-tour.sh BUILD_DIR SOURCE_DIR}" && pwd)
if grep -qE '^WMAT_(SANITIZE|FAULT_INJECTION):BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  echo "SKIP: sanitizer or fault-injection build (the plain build runs the tour)"; exit 77
fi
data=${WMAT_DATA:-$src/../shared/data}
[ -d "$data/models" ] || { echo "SKIP: $data not found (the tour uses the shared checkpoints)"; exit 77; }
wmat=$(cd "$build" && pwd)/wmat
[ -x "$wmat" ] || { echo "FAIL: $wmat not built"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# the tour block: from the heading to the end of its first code block
awk '/^## A tour of the command line/ {t = 1} t && /^```sh/ {b = 1; next} b && /^```/ {exit} b {print}' "$src/README.md" >"$tmp/tour.sh"
n=$(grep -c . "$tmp/tour.sh")
[ "$n" -ge 10 ] || { echo "FAIL: README.md's tour block not found (or shorter than 10 lines)"; exit 1; }
mkdir "$tmp/work"
cd "$tmp/work" || exit 1
wmat() { "$wmat" "$@"; }
export -f wmat 2>/dev/null
export wmat
i=0
fail=0
t0=$SECONDS
while IFS= read -r line; do
  i=$((i + 1))
  [[ "$line" =~ ^[[:space:]]*$ ]] && continue
  s=$SECONDS
  # the line as the README has it; D= assignments are given the data dir
  cmd=${line/#D=..\/shared\/data/D=$data}
  if ! (eval "$cmd") >"$tmp/out" 2>&1 </dev/null; then
    echo "FAIL: README tour line $i: $line"
    tail -5 "$tmp/out" | sed 's/^/    /'
    fail=1
    break
  fi
  case "$cmd" in D=*) export D="$data" ;; esac
  printf '  ok %3ds  %s\n' $((SECONDS - s)) "${line:0:100}"
done <"$tmp/tour.sh"
[ $fail = 0 ] && echo "README tour: $n lines ok in $((SECONDS - t0)) s"
exit $fail
