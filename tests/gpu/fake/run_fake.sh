#!/usr/bin/env bash
# run_fake.sh - developer harness for the CUDA adapter path on a machine WITHOUT a GPU, beyond
# what ctest's emulated gpu tests (label gpuemu: test_cuda_{ops,sgmv,lora,forward,engine_lora}_emu)
# run: every program here links the REAL backend_cuda.c, lora_cuda.c, adapter_pool.c and
# kernels, the kernels run by the CPU emulator (tests/gpu/emu/), device memory from
# fake_cudart.c, cuBLAS from fake_cublas.c, all under ASan+UBSan when the build has it:
#   - fake_engine_prefetch.c: the engine's adapter prefetch (uploads before admission);
#   - fake_lora_churn.c: 40 adapters through a small pool against the CPU LoRA path;
#   - bench_gpu_lora --quick: the benchmark's host logic (its timings mean nothing here).
# It needs the CUDA headers and a CPU-only core library (forward.c and engine.c are rebuilt
# here with QV_HAVE_CUDA).
#   bash tests/gpu/fake/run_fake.sh [build dir of a -DQV_CUDA=OFF -DQV_SANITIZE_ADDRESS=ON build]
# Exit status: 0 when all pass.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
bdir=${1:-$root/build-sgmv-asan}
lib=$bdir/libquiver_core.a
[[ -f $lib ]] || { echo "no $lib (configure with -DQV_CUDA=OFF and build quiver_core)"; exit 2; }
cuda_inc=${CUDA_HOME:-/usr/local/cuda}/include
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
san=""
grep -q "QV_SANITIZE_ADDRESS:BOOL=ON" "$bdir/CMakeCache.txt" 2>/dev/null && san="-fsanitize=address,undefined"
cc() {
    gcc -std=c11 -O1 -g $san -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DQV_HAVE_CUDA=1 \
        -DQV_SOURCE_DIR=\"$root\" -I"$root" -I"$root/engine" -I"$root/tests" -I"$root/tests/gpu" \
        -I"$cuda_inc" -Wall -Wextra -Wno-missing-field-initializers "$@" \
        "$lib" -lcmocka -lpcre2-8 -lcjson -lutf8proc -lm -lpthread
}
cxx() {
    g++ -std=c++17 -O1 -g $san -fno-strict-aliasing -DQV_CUDA_EMU=1 -I"$root" -I"$root/engine" \
        -I"$root/tests/gpu" -isystem "$cuda_inc" -c "$@"
}
g=$root/tests/gpu
emu=$g/emu
cxx -o "$out/cuda_emu.o" "$emu/cuda_emu.cpp"
cxx -o "$out/emu_graph.o" "$emu/emu_graph.cpp"
cxx -include "$emu/cuda_emu.h" -o "$out/kernels_emu.o" "$emu/kernels_emu.cpp"
cxx -include "$emu/cuda_emu.h" -o "$out/sgmv_emu.o" "$emu/sgmv_emu.cpp"
cxx -include "$emu/cuda_emu.h" -o "$out/sample_emu.o" "$emu/sample_emu.cpp"
dev=("$root/engine/forward.c" "$root/engine/cuda/adapter_pool.c" "$root/engine/cuda/lora_cuda.c"
     "$g/fake/fake_cudart.c" "$out/cuda_emu.o" "$out/emu_graph.o" "$out/kernels_emu.o"
     "$out/sgmv_emu.o" "$out/sample_emu.o" "$g/fake/fake_cublas.c" "$root/engine/cuda/backend_cuda.c" -lstdc++)
cc -o "$out/prefetch" "$g/fake/fake_engine_prefetch.c" "$root/tests/test_util.c" \
    "$root/engine/engine.c" "${dev[@]}"
cc -o "$out/churn" "$g/fake/fake_lora_churn.c" "$root/tests/test_util.c" "${dev[@]}"
cc -o "$out/bench_lora" "$g/bench_gpu_lora.c" "$root/engine/cuda/synth_model.c" \
    "$g/fake/fake_probe.c" "${dev[@]}"
rc=0
# run NAME FILTER CMD...: runs CMD, shows its output lines matching FILTER (grep -E), counts a
# failure when CMD exits non-zero
run() {
    local name=$1 filter=$2
    shift 2
    echo "== $name"
    local st=0
    "$@" >"$out/log" 2>&1 || st=$?
    grep -E "$filter" "$out/log" || true
    [[ $st -eq 0 ]] || { echo "$name: exit status $st"; rc=1; }
}
run "engine adapter prefetch" "^[^q]|^quiver [^i]" "$out/prefetch"
run "adapter churn" "^[^q]|^quiver [^i]" env QV_CHURN_TOL=5e-2 "$out/churn"
run "bench_gpu_lora --quick" "^SUMMARY|failed|ERROR|error" "$out/bench_lora" --quick \
    --model "$root/tests/fixtures/models/tiny-llama-gqa"
echo "emulated-device run: $([[ $rc -eq 0 ]] && echo pass || echo FAIL)"
exit $rc
