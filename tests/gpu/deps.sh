#!/usr/bin/env bash
# deps.sh - carry quiver's build dependencies to a lent GPU machine, which has CUDA and CMake but
# not the Debian -dev packages and no network.
#   bash tests/gpu/deps.sh fetch    # here: download the .deb files into .gpu-deps/ (ignored)
#   source tests/gpu/deps.sh unpack # there: unpack them under /tmp/qv-deps and export the paths
# pkg-config finds the unpacked .pc files through PKG_CONFIG_SYSROOT_DIR.
pkgs="libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3 libcjson-dev libcjson1
libutf8proc-dev libutf8proc2 libcmocka-dev libcmocka0 pkgconf pkgconf-bin libpkgconf3
libmicrohttpd-dev libmicrohttpd12 libuv1-dev libuv1"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case "${1:-}" in
fetch)
    mkdir -p "$root/.gpu-deps"
    (cd "$root/.gpu-deps" && apt-get download $pkgs)
    ;;
unpack)
    if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libpcre2-8 libcjson libutf8proc libmicrohttpd libuv 2>/dev/null; then
        return 0 2>/dev/null || exit 0
    fi
    d=/tmp/qv-deps
    mkdir -p $d
    for f in "$root"/.gpu-deps/*.deb; do dpkg -x "$f" $d; done
    # libmicrohttpd.pc names gnutls in Requires.private, which pkgconf resolves even for
    # --cflags. Only the server binary links libmicrohttpd and run.sh does not build it, so a
    # stub gnutls.pc (no flags) is enough for the configure step.
    pc=$d/usr/lib/x86_64-linux-gnu/pkgconfig
    if [[ ! -f $pc/gnutls.pc ]]; then
        printf 'Name: gnutls\nDescription: stub for configuring only\nVersion: 3.7.9\nLibs:\nCflags:\n' >$pc/gnutls.pc
    fi
    export PATH=$d/usr/bin:$PATH
    export PKG_CONFIG_SYSROOT_DIR=$d
    export PKG_CONFIG_PATH=$d/usr/lib/x86_64-linux-gnu/pkgconfig:$d/usr/share/pkgconfig
    export LD_LIBRARY_PATH=$d/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export CMAKE_PREFIX_PATH=$d/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export CPATH=$d/usr/include${CPATH:+:$CPATH}
    export LIBRARY_PATH=$d/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}
    ;;
*)
    echo "usage: deps.sh fetch | source deps.sh unpack" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
