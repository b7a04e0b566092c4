#!/usr/bin/env bash
# TIES over three models against the disk's read rate: `cat` of the same files and `wmat merge`
# alternated, the page cache dropped before every run (needs root for /proc/sys/vm/drop_caches).
#
# usage: scripts/merge-disk-rate.sh BASE M2 M3 [ROUNDS]
#   env: WMAT (default build/wmat), OUT (default a temporary directory), THREADS (default "2 1")
#
# Prints one line per run (wall, user, system seconds, max RSS) and, per setting, the mean and
# standard deviation of the walls and the input GB/s. docs/MERGING.md ("Measured") has a run on
# three 1.1B-shaped f16 GGUFs (scripts/make-tinyllama.sh with SEED=1337, 2, 3 and TYPES=f16).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wmat=${WMAT:-$root/build/wmat}
b=${1:?usage: merge-disk-rate.sh BASE M2 M3 [ROUNDS]}; m2=${2:?}; m3=${3:?}; rounds=${4:-3}
threads=${THREADS:-2 1}
[ -x "$wmat" ] || { echo "merge-disk-rate: $wmat not found (build first or set WMAT)" >&2; exit 1; }
[ -w /proc/sys/vm/drop_caches ] || { echo "merge-disk-rate: cannot drop the page cache (run as root)" >&2; exit 1; }
out=${OUT:-$(mktemp -d)}
bytes=$(stat -c %s "$b" "$m2" "$m3" | awk '{s += $1} END {print s}')
log=$(mktemp)
run() {
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches; sleep 1
    /usr/bin/time -f "%e %U %S %M" -o "$log.t" "$@" > /dev/null 2>&1
    read -r wall user sys rss < "$log.t"
    printf '%-10s load %-5s wall %6.2f s  user %5.2f s  sys %5.2f s  max RSS %7d KB\n' \
        "$name" "$(cut -d' ' -f1 /proc/loadavg)" "$wall" "$user" "$sys" "$rss"
    echo "$name $wall" >> "$log"
}
for ((r = 1; r <= rounds; r++)); do
    run cat bash -c 'cat "$0" "$1" "$2" > /dev/null' "$b" "$m2" "$m3"
    for t in $threads; do
        run "merge-t$t" "$wmat" merge --method ties --base "$b" "$m2" "$m3" --density 0.5 --lambda 1 \
            --dtype f16 "$out/merged.gguf" --threads "$t" --quiet
        rm -f "$out/merged.gguf"
    done
done
awk -v bytes="$bytes" '{ n[$1]++; s[$1] += $2; q[$1] += $2 * $2 }
    END { for (k in n) { m = s[k] / n[k]; sd = n[k] > 1 ? sqrt((q[k] - n[k] * m * m) / (n[k] - 1)) : 0;
          printf "%-10s %d runs: wall %.2f +- %.2f s, %.2f GB/s of input\n", k, n[k], m, sd, bytes / m / 1e9 } }' "$log" | sort
rm -f "$log" "$log.t"
[ -n "${OUT:-}" ] || rmdir "$out" 2>/dev/null || true
