#!/usr/bin/env bash
# Throughput of generate, eval and train on mix4m with the default thread
# count against --threads 1 and --threads $(nproc), on the machine as it is
# and with one competing busy loop per BUSY (default 1: "a busy second core").
# usage: scripts/bench-threads.sh [BUILD_DIR]     env: BUSY (default 1), DATA (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
wmat=$build/wmat
data=${DATA:-../shared/data}
m=$data/models/mix4m.bin
e=$data/golden/wikitext2_valid_tokenized.tok512.u16
t=$data/text/tinyshakespeare.txt
[ -f "$m" ] || { echo "bench-threads: $m not found" >&2; exit 1; }
n=$(nproc)
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$tmp"' EXIT
run() { # label, extra args
  local g ev tr
  g=$("$wmat" generate "$m" --temp 0 --steps 200 --prompt "Once" $2 2>&1 >/dev/null | awk '/achieved tok\/s/ {print $3}')
  ev=$("$wmat" eval "$m" --tokens "$e" --ctx 256 --max-windows 16 $2 2>&1 | sed -n 's/.*(\([0-9.]*\) tokens\/s).*/\1/p')
  tr=$("$wmat" train "$m" "$tmp/t.bin" --data "$t" --steps 6 --batch 4 --ctx 128 $2 2>&1 | grep -o '[0-9]* tok/s' | tail -1 | cut -d' ' -f1)
  printf '| %-22s | %10s | %10s | %10s |\n' "$1" "$g" "$ev" "$tr"
}
table() {
  echo "| threads | generate tok/s | eval tok/s | train tok/s |"
  echo "|---|---|---|---|"
  run "default ($("$wmat" sysinfo --quick | awk '/^default threads/ {print $3}'))" ""
  run "--threads 1" "--threads 1"
  run "--threads $n" "--threads $n"
}
echo "== as the machine is (load: $(cut -d' ' -f1-4 /proc/loadavg))"
table
for ((i = 0; i < ${BUSY:-1}; i++)); do (while :; do :; done) & pids+=($!); done
sleep 1
echo
echo "== with ${BUSY:-1} busy loop(s) competing (load: $(cut -d' ' -f1-4 /proc/loadavg))"
table
