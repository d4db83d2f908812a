#!/usr/bin/env bash
# runtime-packages.sh - the Debian/Ubuntu packages a built binary needs at run time.
#
# What: reads the binary's direct shared-library dependencies (ELF NEEDED entries), resolves
#   each to the file the dynamic loader would load (ldd) and prints, one per line and sorted,
#   the packages that own those files (dpkg -S). apt installs their own dependencies, so the
#   runtime stage of the Dockerfile installs exactly this list on any Debian-family base image
#   (debian:12-slim, nvidia/cuda's Ubuntu images) without a hand-kept list of versioned names
#   (libmicrohttpd12 on Debian 12, libmicrohttpd12t64 on Ubuntu 24.04, ...).
# What not: CUDA libraries (libcudart, libcublas, libcublasLt) are skipped when no package
#   owns them (a toolkit installed from a .run file): the CUDA runtime base image provides them;
#   the driver's libcuda is never linked directly.
# Exit status: 0 with the list on stdout; 1 with a message on stderr when a library cannot be
#   resolved or belongs to no package.
# Usage: bash deploy/runtime-packages.sh build/quiver
set -euo pipefail

bin=${1:?usage: runtime-packages.sh BINARY}
[[ -x "$bin" ]] || { echo "runtime-packages: $bin is not an executable" >&2; exit 1; }
command -v readelf >/dev/null || { echo "runtime-packages: readelf (binutils) is missing" >&2; exit 1; }

declare -A path_of=()
while read -r name _ path _; do
    [[ "$path" == /* ]] && path_of[$name]=$path
done < <(ldd "$bin")

pkgs=()
while read -r soname; do
    path=${path_of[$soname]:-}
    [[ -n "$path" ]] || { echo "runtime-packages: $soname is not found by the loader" >&2; exit 1; }
    owner=""
    # merged-/usr systems list a file under /usr/lib or /lib depending on the package
    for p in "$path" "$(readlink -f "$path")" "${path#/usr}" "/usr$path"; do
        owner=$(dpkg -S "$p" 2>/dev/null | head -1 | cut -d: -f1) && [[ -n "$owner" ]] && break
    done
    if [[ -z "$owner" ]]; then
        case "$soname" in
        libcudart.so.* | libcublas.so.* | libcublasLt.so.*)
            echo "runtime-packages: $soname ($path) belongs to no package; the CUDA runtime image provides it" >&2
            continue
            ;;
        esac
        echo "runtime-packages: $path ($soname) belongs to no package" >&2
        exit 1
    fi
    pkgs+=("$owner")
done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')

printf '%s\n' "${pkgs[@]}" | sort -u
