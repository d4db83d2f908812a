#!/usr/bin/env bash
# run.sh - the 64-bit Arm (aarch64) check on an x86-64 Debian host: cross-compiles the whole tree
# (CUDA off, warnings as errors) with tests/arm64/toolchain.cmake, then runs under qemu-user
# `quiver --version` and the tests that cover what differs on Arm: test_cpu_ops (the NEON
# matmul kernels of every dtype against the double-precision reference, their bitwise batch and
# thread-count invariance, the portable ops), the tiny models' forward pass against the HF
# oracle's logits, the LoRA kernels, batch invariance and the engine end to end, adapter
# loading, GGUF, safetensors, the tokenizer (PCRE2) and the thread pool (weak memory order).
# Installs what it needs when missing (deploy/install-deps.sh with QV_ARM64_DEPS=1: dpkg
# multiarch arm64, gcc-aarch64-linux-gnu, qemu-user, the arm64 -dev packages); exits 77 (skip)
# when they cannot be installed (no root, no arm64 archive).
#
# Usage: tests/arm64/run.sh [BUILD_DIR]   (default build-arm64). About 4 minutes on two cores
# once installed, most of it qemu (emulated code runs 30-100x slower than native, so the
# SmolLM2 tests are left out). Correctness only: the NEON kernels' speed on real Arm hardware
# is not measured here.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-arm64}
if ! QV_ARM64_DEPS=1 bash "$root/deploy/install-deps.sh"; then
    echo "arm64: could not install the cross toolchain: skipped" >&2
    exit 77
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
