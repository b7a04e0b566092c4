#!/bin/bash
# The layering rule of src/ (docs/ARCHITECTURE.md): a module may include
# headers of its own folder, of the modules below it and the public
# include/wmat.h, never of a module above it; only src/linalg includes the
# BLAS, LAPACK and oneDNN headers. tools/ (the CLI) sits above every module.
#
# usage: scripts/check-layers.sh [REPO_ROOT]   (CTest runs it as check_layers)
# Prints each violation as FILE: includes HEADER (...) and exits 1 if any.
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2

# The allowed order, lowest first: the one place it is written.
LAYERS="core linalg wop io model quant decomp train analyze merge experiment catalog tools"

# Headers only src/linalg may include (extended regular expression).
BACKEND_HEADERS='^(cblas|lapacke|lapacke_[a-z_]*|lapack|f77blas|openblas_config|dnnl|dnnl_[a-z_]*)\.h$|^oneapi/dnnl/'

# Known violations, "FILE HEADER" as resolved below (module/file.h), one a
# line. Each is a debt with a plan; a new violation fails the check.
ALLOWED="
"

rank_of() { # module -> its position in LAYERS, or nothing
    local i=0 m
    for m in $LAYERS; do
        [ "$m" = "$1" ] && { echo $i; return; }
        i=$((i + 1))
    done
}

allowed() { # "FILE HEADER"
    grep -qxF -- "$1" <<<"$ALLOWED"
}

fail=0
report() {
    echo "$1" >&2
    fail=1
}

# Every module folder must have a place in the order.
for dir in src/*/; do
    m=$(basename "$dir")
    [ -n "$(rank_of "$m")" ] || report "src/$m: module not in the layer order of scripts/check-layers.sh"
done

used_allowances=""
files=$(find src tools -name '*.[ch]' | sort)
for f in $files; do
    case $f in
    src/*) mod=${f#src/}; mod=${mod%%/*} ;;
    *) mod=tools ;;
    esac
    myrank=$(rank_of "$mod")
    [ -n "$myrank" ] || continue # reported above
    dir=$(dirname "$f")
    # "#include" lines: quoted (project) and angled (system) headers.
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\<([^\>]+)\> ]]; then
            h=${BASH_REMATCH[1]}
            if [[ $h =~ $BACKEND_HEADERS ]] && [ "$mod" != linalg ]; then
                if allowed "$f <$h>"; then
                    used_allowances+="$f <$h>"$'\n'
                else
                    report "$f: includes <$h> (BLAS/LAPACK/oneDNN are reached through src/linalg only)"
                fi
            fi
            continue
        fi
        [[ $line =~ ^[[:space:]]*#[[:space:]]*include[[:space:]]*\"([^\"]+)\" ]] || continue
        h=${BASH_REMATCH[1]}
        # Resolve as the compiler does: the including file's folder, then
        # the include path (src/, include/).
        if [ -f "$dir/$h" ]; then
            p=$(realpath -m --relative-to=. "$dir/$h")
        elif [ -f "src/$h" ]; then
            p=src/$h
        elif [ -f "include/$h" ]; then
            continue # the public header: anyone may include it
        else
            report "$f: includes \"$h\", which is not found (check-layers.sh resolves against the file's folder, src/, include/)"
            continue
        fi
        case $p in
        src/*/*) ;;
        include/*) continue ;;
        *) [ "$mod" = tools ] && [[ $p == tools/* ]] && continue
           report "$f: includes $p, outside src/ and include/"
           continue ;;
        esac
        rel=${p#src/}
        hmod=${rel%%/*}
        [ "$hmod" = "$mod" ] && continue
        hrank=$(rank_of "$hmod")
        [ -n "$hrank" ] || continue # its folder is reported above
        if [ "$hrank" -gt "$myrank" ]; then
            if allowed "$f $rel"; then
                used_allowances+="$f $rel"$'\n'
            else
                report "$f: includes $rel, but $hmod sits above $mod (order: $LAYERS)"
            fi
        fi
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include' "$f")
done

# An allowance that no longer matches anything is stale: say so, so the
# list only shrinks to what is still true.
while IFS= read -r a; do
    [ -z "$a" ] && continue
    [[ $a == \#* ]] && continue
    grep -qxF -- "$a" <<<"$used_allowances" || report "check-layers.sh: the allowance \"$a\" matches nothing now: remove it"
done <<<"$ALLOWED"

if [ $fail -ne 0 ]; then
    echo "check-layers: FAILED (see above)" >&2
    exit 1
fi
echo "check-layers: ok ($(echo "$files" | wc -l) files; order: $LAYERS)"
