#!/usr/bin/env bash
# run.sh - runs the REAL engine/cuda/backend_cuda.c (deferred launches, the issue-6 switches and
# fusions, staging, launch counting) under test_cuda_ops and test_cuda_forward on a machine
# WITHOUT a GPU: the kernels are replaced by their documented semantics (fake_ops.c), the CUDA
# runtime by tests/gpu/fake/fake_cudart.c + fake_ops.c. Graphs are off (QV_CUDA_GRAPHS=0).
# A developer check of host logic, not part of ctest; it says nothing about the kernels.
#   bash tests/gpu/fakeops/run.sh [build dir of a -DQV_CUDA=OFF build, ASan recommended]
# Each test runs with the switches off, then with every switch on (QV_CUDA_GEMV=new
# QV_CUDA_FUSE=1 QV_CUDA_KV_BF16=1). Exit status: 0 when all pass.
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
bdir=${1:-$root/build-gpuperf-asan}
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
common=("$g/gpu_util.c" "$root/tests/test_util.c" "$root/engine/cuda/backend_cuda.c"
        "$g/fake/fake_cudart.c" "$g/fakeops/fake_ops.c")
cc -o "$out/ops" "$g/test_cuda_ops.c" "${common[@]}"
cc -o "$out/fwd" "$g/test_cuda_forward.c" "$root/engine/forward.c" "$root/engine/engine.c" \
    "$root/engine/cuda/lora_cuda.c" "$root/engine/cuda/adapter_pool.c" \
    "${common[@]}"
cc -o "$out/lora" "$g/test_cuda_lora.c" "$root/engine/forward.c" "$root/engine/cuda/lora_cuda.c" \
    "$root/engine/cuda/adapter_pool.c" "${common[@]}"
rc=0
for sw in "" "QV_CUDA_GEMV=new QV_CUDA_FUSE=1 QV_CUDA_KV_BF16=1"; do
    for t in ops fwd lora; do
        echo "== $t ${sw:-(switches off)}"
        env QV_CUDA_GRAPHS=0 $sw "$out/$t" 2>&1 | grep -Ev "^quiver info" || true
        [[ ${PIPESTATUS[0]} -eq 0 ]] || rc=1
    done
done
echo "fakeops run: $([[ $rc -eq 0 ]] && echo pass || echo FAIL)"
exit $rc
