#!/usr/bin/env bash
# Install the Debian 12 packages wmat builds and tests with. Idempotent:
# packages already present are skipped. Run as root (or with sudo).
#   scripts/setup-deps.sh            build + test dependencies
#   scripts/setup-deps.sh --fuzz     also clang-14 and libFuzzer runtime
#   scripts/setup-deps.sh --peer     also Node.js/npm for the llama.cpp peer check
#   scripts/setup-deps.sh --report   also Chromium, to render the analysis report in tests
#   scripts/setup-deps.sh --mpi      also Open MPI (-DWMAT_WITH_MPI=ON builds, mpirun for tests/test_mpi.c)
set -euo pipefail

pkgs=(build-essential cmake pkg-config libopenblas-dev liblapacke-dev libcjson-dev libyaml-dev libcmocka-dev libdnnl-dev)
for arg in "$@"; do
  case "$arg" in
    --fuzz) pkgs+=(clang-14 libclang-rt-14-dev) ;;
    --peer) # a Node.js already on PATH (e.g. a newer one than Debian's) is kept
            if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then pkgs+=(nodejs npm); fi ;;
    --demo) pkgs+=(bible-kjv) ;;
    --report) pkgs+=(chromium) ;;
    --mpi) pkgs+=(libopenmpi-dev openmpi-bin) ;;
    *) echo "setup-deps: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-deps: $p already installed"
  else
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-deps: nothing to install"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup-deps: done"
