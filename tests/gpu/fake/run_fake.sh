#!/usr/bin/env bash
# run_fake.sh - runs the host logic of the CUDA adapter path on a machine WITHOUT a GPU:
# test_cuda_sgmv (pool staging/layout, segment tables, the test harness; the kernels replaced by
# their semantics in fake_cudart.c) and test_cuda_lora (engine/cuda/lora_cuda.c, the pool and
# forward.c's LoRA hooks against the CPU LoRA path, with fake_backend.c as the "cuda" backend),
# the engine's adapter prefetch (fake_engine_prefetch.c), adapter churn through a small pool
# against the CPU (fake_lora_churn.c) and bench_gpu_lora --quick (host logic
# only; its timings mean nothing; once with fake_backend.c, once with the real backend_cuda.c
# and the real kernels run by the CPU emulator tests/gpu/emu/), all under ASan+UBSan. A developer check, not part of ctest: it needs the CUDA headers and a
# CPU-only core library (its forward.c is rebuilt here with QV_HAVE_CUDA).
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
g=$root/tests/gpu
cc -o "$out/sgmv" "$g/test_cuda_sgmv.c" "$g/gpu_util.c" "$root/tests/test_util.c" \
    "$root/engine/cuda/adapter_pool.c" "$g/fake/fake_cudart.c" "$g/fake/fake_sgmv.c" "$g/fake/fake_backend.c"
cc -o "$out/lora" "$g/test_cuda_lora.c" "$g/gpu_util.c" "$root/tests/test_util.c" \
    "$root/engine/cuda/adapter_pool.c" "$root/engine/cuda/lora_cuda.c" "$root/engine/forward.c" \
    "$g/fake/fake_cudart.c" "$g/fake/fake_sgmv.c" "$g/fake/fake_backend.c"
# the engine's adapter prefetch (engine.c rebuilt with QV_HAVE_CUDA) and bench_gpu_lora's host
# logic (device-style entries of the fake backend: QV_FAKE_DEVICE_OPS=1)
cc -o "$out/prefetch" "$g/fake/fake_engine_prefetch.c" "$root/tests/test_util.c" \
    "$root/engine/engine.c" "$root/engine/forward.c" "$root/engine/cuda/adapter_pool.c" \
    "$root/engine/cuda/lora_cuda.c" "$g/fake/fake_cudart.c" "$g/fake/fake_sgmv.c" "$g/fake/fake_backend.c"
cc -o "$out/churn" "$g/fake/fake_lora_churn.c" "$root/tests/test_util.c" "$root/engine/forward.c" \
    "$root/engine/cuda/adapter_pool.c" "$root/engine/cuda/lora_cuda.c" "$g/fake/fake_cudart.c" "$g/fake/fake_sgmv.c" \
    "$g/fake/fake_backend.c"
bench_src=("$g/bench_gpu_lora.c" "$root/engine/forward.c" "$root/engine/cuda/adapter_pool.c"
           "$root/engine/cuda/lora_cuda.c" "$root/engine/cuda/synth_model.c"
           "$g/fake/fake_cudart.c" "$g/fake/fake_sgmv.c" "$g/fake/fake_probe.c")
cc -o "$out/bench_lora" "${bench_src[@]}" "$g/fake/fake_backend.c"
# the same with the REAL backend_cuda.c and the real kernels on the CPU emulator (tests/gpu/emu/)
emu=$root/tests/gpu/emu
cxx() {
    g++ -std=c++17 -O1 -g $san -fno-strict-aliasing -DQV_CUDA_EMU=1 -I"$root" -I"$root/engine" \
        -I"$root/tests/gpu" -isystem "$cuda_inc" -c "$@"
}
cxx -o "$out/cuda_emu.o" "$emu/cuda_emu.cpp"
cxx -o "$out/emu_graph.o" "$emu/emu_graph.cpp"
cxx -include "$emu/cuda_emu.h" -o "$out/kernels_emu.o" "$emu/kernels_emu.cpp"
cxx -include "$emu/cuda_emu.h" -o "$out/sgmv_emu.o" "$emu/sgmv_emu.cpp"
emu_objs=("$out/cuda_emu.o" "$out/emu_graph.o" "$out/kernels_emu.o" "$out/sgmv_emu.o"
          "$g/fake/fake_cublas.c" "$root/engine/cuda/backend_cuda.c" -lstdc++)
cc -o "$out/bench_lora_emu" "$g/bench_gpu_lora.c" "$root/engine/forward.c" \
    "$root/engine/cuda/adapter_pool.c" "$root/engine/cuda/lora_cuda.c" \
    "$root/engine/cuda/synth_model.c" "$g/fake/fake_cudart.c" "$g/fake/fake_probe.c" "${emu_objs[@]}"
cc -o "$out/churn_emu" "$g/fake/fake_lora_churn.c" "$root/tests/test_util.c" \
    "$root/engine/forward.c" "$root/engine/cuda/adapter_pool.c" "$root/engine/cuda/lora_cuda.c" \
    "$g/fake/fake_cudart.c" "${emu_objs[@]}"
rc=0
"$out/sgmv" 2>&1 | grep -Ev "^quiver info" | grep -E "OK|FAIL|ERROR|bitwise|pool:|outside tolerance: [1-9]" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
QV_CUDA_ADAPTER_POOL_MB=64 "$out/lora" 2>&1 | grep -Ev "^quiver info" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
"$out/prefetch" 2>&1 | grep -Ev "^quiver info" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
"$out/churn" 2>&1 | grep -Ev "^quiver info" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
QV_FAKE_DEVICE_OPS=1 "$out/bench_lora" --quick --model "$root/tests/fixtures/models/tiny-llama-gqa" \
    2>&1 | grep -Ev "^quiver (info|debug)" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
echo "== bench_gpu_lora --quick on the real backend_cuda.c and kernels (emulated)"
"$out/bench_lora_emu" --quick --model "$root/tests/fixtures/models/tiny-llama-gqa" \
    2>&1 | grep -E "^SUMMARY|failed|ERROR|error" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
echo "== adapter churn on the real backend_cuda.c and kernels (emulated)"
QV_CHURN_TOL=5e-2 "$out/churn_emu" 2>&1 | grep -Ev "^quiver info" || true
[[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
echo "fake-device run: $([[ $rc -eq 0 ]] && echo pass || echo FAIL)"
exit $rc
