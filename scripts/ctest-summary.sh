#!/usr/bin/env bash
# Run CTest in BUILD_DIR (extra arguments go to ctest) and end with one line
# that counts passed, failed and skipped test cases, so that cases skipped for
# want of ../shared/data (or node, or a fault-injection build) are visible
# without -V. Exit status: ctest's.
# usage: scripts/ctest-summary.sh BUILD_DIR [ctest args...]
set -uo pipefail
build=${1:?usage: ctest-summary.sh BUILD_DIR [ctest args...]}
shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$build" && ctest "$@") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* +Passed +[0-9.]+ sec' "$log")
skipped=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*Skipped' "$log")
failed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*\*\*\*(Failed|Timeout|Exception|Not Run)|^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* \(Failed\)' "$log")
total=$((passed + skipped + failed))
echo "wmat tests: $passed passed, $failed failed, $skipped skipped (of $total cases)"
if [ "$skipped" -gt 0 ]; then
  echo "  skipped cases say why in their output (ctest -V -R NAME); most need ../shared/data beside the checkout"
fi
exit "$rc"
