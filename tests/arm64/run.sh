#!/usr/bin/env bash
# run.sh - the 64-bit Arm (aarch64) check on an x86-64 Debian host: cross-compiles the whole tree
# (CUDA off, warnings as errors) with tests/arm64/toolchain.cmake, then runs under qemu-user
# `quiver --version` and the tests that cover what differs on Arm: test_cpu_ops (the NEON
# matmul kernels of every dtype against the double-precision reference, their bitwise batch and
# thread-count invariance, the portable ops), the tiny models' forward pass against the HF
# oracle's logits, the LoRA kernels, batch invariance and the engine end to end, adapter
# loading, GGUF, safetensors, the tokenizer (PCRE2) and the thread pool (weak memory order).
# Installs what it needs (dpkg multiarch arm64, gcc-aarch64-linux-gnu, qemu-user, the arm64
# -dev packages) when missing; needs root for that, or the packages already there, and exits
# 77 (skip) when they cannot be installed (no root, no arm64 archive).
#
# Usage: tests/arm64/run.sh [BUILD_DIR]   (default build-arm64). About 4 minutes on two cores
# once installed, most of it qemu (emulated code runs 30-100x slower than native, so the
# SmolLM2 tests are left out). Correctness only: the NEON kernels' speed on real Arm hardware
# is not measured here.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-arm64}
pkgs=(gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross libpcre2-dev:arm64
    libcjson-dev:arm64 libutf8proc-dev:arm64 libcmocka-dev:arm64 libuv1-dev:arm64
    libmicrohttpd-dev:arm64)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=()
    if ((EUID != 0)); then
        if command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
            sudo=(sudo -n)
        else
            echo "arm64: missing ${missing[*]} and no root to install them: skipped" >&2
            exit 77
        fi
    fi
    echo "arm64: installing ${missing[*]}"
    if ! { dpkg --print-foreign-architectures | grep -qx arm64 ||
        "${sudo[@]}" dpkg --add-architecture arm64; } ||
        ! "${sudo[@]}" apt-get update -q > /dev/null ||
        ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}" \
            > /dev/null; then
        echo "arm64: could not install the cross toolchain: skipped" >&2
        exit 77
    fi
fi

tests=(test_cpu_ops test_forward_golden test_lora_kernels test_batch_invariance test_engine
    test_adapter_load test_adapter_refuse test_adapter_mixed test_prefix_cache test_gguf
    test_safetensors test_tokenizer test_cpu_threadpool)
mkdir -p "$build"
cmake -S "$root" -B "$build" -DCMAKE_TOOLCHAIN_FILE="$root/tests/arm64/toolchain.cmake" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQV_CUDA=OFF -DQV_FATAL_WARNINGS=ON > "$build/configure.log"
cmake --build "$build" -j"$(nproc)" > "$build/build.log" || {
    tail -40 "$build/build.log"
    exit 1
}
aarch64-linux-gnu-readelf -h "$build/quiver" | grep -q "Machine: *AArch64" || {
    echo "arm64: $build/quiver is not an aarch64 executable" >&2
    exit 1
}

emu=(qemu-aarch64)
"${emu[@]}" "$build/quiver" --version
# every test here runs under qemu (the toolchain's CMAKE_CROSSCOMPILING_EMULATOR)
regex="^($(IFS='|'; echo "${tests[*]}"))\$"
ctest --test-dir "$build" -j"$(nproc)" -R "$regex" --output-on-failure --timeout 900
