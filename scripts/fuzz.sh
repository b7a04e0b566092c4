#!/usr/bin/env bash
# Build the libFuzzer targets (clang-14, ASan + UBSan) in build-fuzz and run
# them. Usage:
#   scripts/fuzz.sh build                      # configure + build only
#   scripts/fuzz.sh run TARGET SECONDS [ARGS]  # one campaign on fuzz/corpus/TARGET
#   scripts/fuzz.sh ci [SECONDS]               # every target for SECONDS (default 30)
#   scripts/fuzz.sh merge TARGET DIR...        # minimize DIRs into fuzz/corpus/TARGET
# Campaigns run one at a time under nice -n 19. New corpus entries go to
# build-fuzz/corpus/TARGET (not into git); crashes to build-fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
B=${WMAT_FUZZ_BUILD:-$ROOT/build-fuzz}
CC_FUZZ=${CC_FUZZ:-clang-14}
TARGETS="safetensors gguf llama2c tokenizer tokens_u16 hf_config hf_index hf_tokenizer merge_config"
declare -A MAXLEN=([safetensors]=16384 [gguf]=16384 [llama2c]=4096 [tokenizer]=8192 [tokens_u16]=4096
                   [hf_config]=4096 [hf_index]=8192 [hf_tokenizer]=8192 [merge_config]=4096)
declare -A DICT=([safetensors]=safetensors [gguf]=gguf [llama2c]="" [tokenizer]=""
                 [tokens_u16]="" [hf_config]=json [hf_index]=json [hf_tokenizer]=json [merge_config]="")

build() {
  local flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
  CC=$CC_FUZZ cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DWMAT_FUZZ=ON \
    -DWMAT_WITH_DNNL=OFF -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
  local t list=""
  for t in $TARGETS; do list="$list fuzz_$t"; done
  # shellcheck disable=SC2086
  cmake --build "$B" -j"${JOBS:-2}" --target $list
}

run() { # TARGET SECONDS [extra libFuzzer args]
  local t=$1 secs=$2
  shift 2
  local d=()
  [ -n "${DICT[$t]}" ] && d=(-dict="$ROOT/fuzz/dict/${DICT[$t]}.dict")
  mkdir -p "$B/corpus/$t" "$B/artifacts/$t"
  # A fuzzer that holds a whole CPU would slow down the rest of the machine.
  # nice alone is not enough: with autogroup scheduling (Debian's default)
  # nice ranks threads only inside one session's group, and a group gets its
  # equal share whatever its members' nice. So the fuzzer runs in a session
  # of its own whose group is niced to 19 too.
  local cmd=(nice -n 19 "$B/fuzz/fuzz_$t" "$B/corpus/$t" "$ROOT/fuzz/corpus/$t" "${d[@]}"
    -max_len="${MAXLEN[$t]}" -rss_limit_mb=2048 -timeout=10 -max_total_time="$secs"
    -print_final_stats=1 -artifact_prefix="$B/artifacts/$t/" "$@")
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
  setsid --wait bash -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec "$@"' fuzz "${cmd[@]}"
}

case "${1:-build}" in
  build) build ;;
  run) run "$2" "$3" "${@:4}" ;;
  ci)
    build
    secs=${2:-30}
    for t in $TARGETS; do
      echo "== fuzz_$t ($secs s)"
      run "$t" "$secs" 2>&1 | tail -n 15
    done ;;
  merge)
    [ -x "$B/fuzz/fuzz_$2" ] || build >/dev/null
    t=$2
    shift 2
    mkdir -p "$ROOT/fuzz/corpus/$t"
    OMP_NUM_THREADS=1 nice -n 19 "$B/fuzz/fuzz_$t" -merge=1 -max_len="${MAXLEN[$t]}" \
      "$ROOT/fuzz/corpus/$t" "$@" ;;
  *) echo "usage: $0 build | run TARGET SECONDS | ci [SECONDS] | merge TARGET DIR..." >&2; exit 2 ;;
esac
