#!/bin/bash
# No process-wide mutable settings in the library (docs/ARCHITECTURE.md,
# "One execution context"): settings travel in a wmat_context and reach
# kernels as arguments. This check reads the compiled library rather than
# the source, so nothing escapes it: every symbol the compiler put in a
# writable data section (.data, .bss and their subsections, COMMON; not
# .rodata or .data.rel.ro, where `const` data goes) is a mutable variable
# with static storage, at file scope or a `static` inside a function.
#
# Allowed without a listing:
#   - thread-local storage (.tdata, .tbss): one copy per thread, not shared
#     (the last-error buffer of status.c, a thread's loan depth in gemm.c);
#   - the locks OpenMP makes for named critical sections (.gomp_critical_user_*);
#   - the sanitizers' own bookkeeping (__asan*, __odr_asan*, __ubsan*).
# An optimizing build may move a variable nobody writes to read-only data
# (and so past this check); the sanitizer build does not, which is why CTest
# runs the check there too.
# Everything else must be on the list below, each entry with the reason it
# is not a setting. A new entry needs the same kind of reason: a fact about
# the machine or the environment found once and never changed afterwards,
# a lock, or a test hook. Settings go in the context instead.
#
# usage: scripts/check-globals.sh LIBWMAT   (CTest runs it as check_globals on
#        the built static library; exit 77 = skipped when objdump is missing)
# Prints each unlisted variable as OBJECT: SYMBOL (SECTION, SIZE bytes) and
# exits 1 if any, or if a listed entry no longer matches anything.
set -u
lib=${1:?usage: check-globals.sh path/to/libwmat.a}
command -v objdump >/dev/null || { echo "check-globals: objdump not found: skipped"; exit 77; }
[ -f "$lib" ] || { echo "check-globals: $lib: no such file" >&2; exit 2; }

# "OBJECT SYMBOL" (object file without .o; a function-local static without
# the compiler's .N suffix), then the reason. A leading "?" marks an entry
# that exists only in some builds (not reported when absent).
ALLOWED='
gemm.c g             linalg probe: CPU features, which GEMM backends passed their self-check, the default backend (WMAT_GEMM_BACKEND), whether the user set OpenBLAS threads, the status line; written once under pthread_once, read-only afterwards
gemm.c g_once        the pthread_once control of that probe
gemm.c g_blas_use    the lock that makes lending OpenBLAS threads to LAPACK exclusive (OpenBLAS has one thread count per process; linalg.h)
gemm_dnnl.c g_engine the oneDNN CPU engine, created once by the linalg probe, never changed
kern_dense.c g_isa_bits the CPU ISA level of the dense weight kernels, detected once and stored atomically (same value from every thread)
dtype.c g_f16c      whether the CPU has F16C for the f16 array conversions, detected once and stored atomically (same value from every thread)
dtype.c isa         the CPU ISA of the f32 -> bf16 array conversion (core cannot ask src/wop), detected once and stored atomically (same value from every thread)
kernels.c isa        src/model: the decode kernels ISA (CPU features, WMAT_MATVEC read once), stored atomically (same value from every thread)
?alloc.c g_alloc_fail_at   fault injection (WMAT_FAULT_INJECTION builds only): test hook, the number of the allocation to fail
?alloc.c g_io_fail_at      fault injection: the same for I/O
?alloc.c g_alloc_calls     fault injection: allocations counted since arming
?alloc.c g_io_calls        fault injection: I/O calls counted since arming
'

found=$(objdump -t "$lib" 2>/dev/null | awk '
    /file format/ { obj = $1; sub(/:$/, "", obj); sub(/\.o$/, "", obj); next }
    /\t/ {
        split($0, half, "\t")
        n = split(half[1], f, " ")
        sec = f[n]
        split(half[2], g, " ")
        size = g[1]; name = g[2]
        if (name == "" || name == sec || name ~ /^\.L/) next
        if (name ~ /^__(odr_)?asan|^__ubsan/) next # sanitizer bookkeeping (-DWMAT_SANITIZE=ON)
        if (sec == "*COM*") { if (name ~ /^\.gomp_critical_user_/) next }
        else if (sec ~ /^\.(tdata|tbss)/) next
        else if (sec !~ /^\.(data|bss)(\.|$)/ || sec ~ /^\.data\.rel\.ro/) next
        sub(/\.[0-9]+$/, "", name)
        printf "%s %s %s %s\n", obj, name, sec, size
    }' | sort -u)
if [ -z "$found" ] && ! objdump -t "$lib" >/dev/null 2>&1; then
    echo "check-globals: objdump could not read $lib" >&2
    exit 2
fi

fail=0
used=""
while read -r obj sym sec size; do
    [ -z "$obj" ] && continue
    if grep -Eq "^\??$(printf '%s' "$obj" | sed 's/[.]/\\./g') $sym( |$)" <<<"$ALLOWED"; then
        used+="$obj $sym"$'\n'
    else
        echo "$obj: $sym ($sec, $((16#$size)) bytes): a mutable variable with static storage; pass the setting in the context (wmat_context / wmat_wexec), make it const, or list it in scripts/check-globals.sh with the reason it is not a setting" >&2
        fail=1
    fi
done <<<"$found"

# A listed entry that matches nothing is stale: the list only says what is true.
while read -r obj sym _; do
    [ -z "$obj" ] && continue
    [[ $obj == \?* ]] && continue
    grep -qxF -- "$obj $sym" <<<"$used" || { echo "check-globals.sh: the entry \"$obj $sym\" matches nothing now: remove it" >&2; fail=1; }
done <<<"$ALLOWED"

if [ $fail -ne 0 ]; then
    echo "check-globals: FAILED (see above)" >&2
    exit 1
fi
echo "check-globals: ok ($(grep -c . <<<"$found") listed variables in $(basename "$lib"); thread-local and OpenMP critical locks not counted)"
