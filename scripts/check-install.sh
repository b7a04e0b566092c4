#!/usr/bin/env bash
# Install the build into a temporary prefix, then build and run a program
# (tests/install/hello.c) that finds wmat with pkg-config alone, against the
# shared library, and check that only the public API is exported.
# usage: scripts/check-install.sh BUILD_DIR SOURCE_DIR     (exit 77: skipped)
set -euo pipefail
build=${1:?usage: check-install.sh BUILD_DIR SOURCE_DIR}
src=${2:?usage: check-install.sh BUILD_DIR SOURCE_DIR}
# a sanitizer build's libwmat.so needs the sanitizer runtime loaded first:
# the install is checked in the plain build
if grep -qE '^WMAT_(SANITIZE|FAULT_INJECTION):BOOL=ON' "$build/CMakeCache.txt" 2>/dev/null; then
  echo "SKIP: sanitizer or fault-injection build (the plain build checks the install)"; exit 77
fi
command -v pkg-config >/dev/null || { echo "SKIP: pkg-config not installed"; exit 77; }
command -v cc >/dev/null || { echo "SKIP: no C compiler (cc)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
prefix="$tmp/prefix"
libdir=$(ls -d "$prefix"/lib* | head -1)
for f in "$prefix/bin/wmat" "$prefix/include/wmat.h" "$libdir/pkgconfig/wmat.pc" "$libdir/libwmat.a"; do
  [ -e "$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
so=$(ls "$libdir"/libwmat.so.*.*.* 2>/dev/null | head -1)
[ -n "$so" ] || { echo "FAIL: no versioned libwmat.so in $libdir"; exit 1; }
soname=$(objdump -p "$so" | awk '/SONAME/ {print $2}')
[ "$soname" = "libwmat.so.0" ] || { echo "FAIL: soname '$soname', want libwmat.so.0"; exit 1; }
internal=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -c '^wmat__' || true)
[ "$internal" = 0 ] || { echo "FAIL: libwmat.so exports $internal internal wmat__ symbols"; exit 1; }
export PKG_CONFIG_PATH="$libdir/pkgconfig"
# the .pc names the prefix given at configure time; point it at this one
cflags=$(pkg-config --define-variable=prefix="$prefix" --cflags wmat)
libs=$(pkg-config --define-variable=prefix="$prefix" --libs wmat)
cc -std=c11 -Wall -Wextra $cflags "$src/tests/install/hello.c" -o "$tmp/hello" $libs -lm
out=$(LD_LIBRARY_PATH="$libdir" "$tmp/hello")
echo "$out"
case "$out" in *"logits ok"*) ;; *) echo "FAIL: hello did not run"; exit 1 ;; esac
# ldd's output first: `ldd | grep -q` under pipefail fails when grep exits
# before ldd has written everything (SIGPIPE), a flaky failure of a good link
deps=$(LD_LIBRARY_PATH="$libdir" ldd "$tmp/hello")
case "$deps" in *"libwmat.so.0 => $libdir"*) ;; *) echo "FAIL: hello is not linked to the installed libwmat.so:"; echo "$deps"; exit 1 ;; esac
"$prefix/bin/wmat" --version >/dev/null 2>&1 || "$prefix/bin/wmat" help >/dev/null
echo "install check: ok ($so, soname $soname, $(nm -D --defined-only "$so" | grep -c ' T wmat_') exported functions)"
