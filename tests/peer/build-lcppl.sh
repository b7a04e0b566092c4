#!/usr/bin/env bash
# Build tests/peer/lcppl.cpp (llama.cpp's perplexity protocol through its C API)
# against the llama.cpp libraries that node-llama-cpp ships prebuilt.
#   NLC_MODULES   node_modules folder holding node-llama-cpp (required)
#   LCPPL_BUILD   output folder (default: ${TMPDIR:-/tmp}/lcppl-build); the binary is $LCPPL_BUILD/lcppl
# Headers: llama.h and ggml's headers from the llama.cpp source node-llama-cpp
# ships (llama/gitRelease.bundle), the source its binaries were built from.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NLC=${NLC_MODULES:?set NLC_MODULES to the node_modules folder holding node-llama-cpp}
OUT=${LCPPL_BUILD:-${TMPDIR:-/tmp}/lcppl-build}
LIBDIR=$NLC/@node-llama-cpp/linux-x64/bins/linux-x64
BUNDLE=$NLC/node-llama-cpp/llama/gitRelease.bundle
[ -d "$LIBDIR" ] || { echo "build-lcppl: no prebuilt llama.cpp libraries at $LIBDIR" >&2; exit 1; }
[ -f "$BUNDLE" ] || { echo "build-lcppl: no llama.cpp source bundle at $BUNDLE" >&2; exit 1; }
command -v g++ >/dev/null || { echo "build-lcppl: no g++" >&2; exit 1; }
mkdir -p "$OUT"
if [ ! -f "$OUT/hdr/include/llama.h" ]; then
  rm -rf "$OUT/hdr" "$OUT/bundle.git"
  git clone -q --bare "$BUNDLE" "$OUT/bundle.git"
  mkdir -p "$OUT/hdr"
  git --git-dir="$OUT/bundle.git" archive HEAD include ggml/include | tar x -C "$OUT/hdr"
  git --git-dir="$OUT/bundle.git" rev-parse HEAD > "$OUT/hdr/COMMIT"
  rm -rf "$OUT/bundle.git"
fi
pick() { (cd "$LIBDIR" && ls $1 2>/dev/null | head -n 1) || true; }
LLAMA_SO=$(pick 'libllama.v*.so'); LLAMA_SO=${LLAMA_SO:-libllama.so}
GGML_SO=$(pick 'libggml.v*.so'); GGML_SO=${GGML_SO:-libggml.so}
g++ -O2 -std=c++17 -Wall -Wextra \
  -I"$OUT/hdr/include" -I"$OUT/hdr/ggml/include" \
  "$HERE/lcppl.cpp" -o "$OUT/lcppl.tmp" \
  -L"$LIBDIR" -l:"$LLAMA_SO" -l:"$GGML_SO" -l:libggml-base.so -ldl -Wl,-rpath,"$LIBDIR"
mv "$OUT/lcppl.tmp" "$OUT/lcppl"
echo "built $OUT/lcppl (llama.cpp headers $(cat "$OUT/hdr/COMMIT"), libraries $LIBDIR)"
