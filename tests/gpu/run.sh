#!/usr/bin/env bash
# run.sh - the device script: build for Hopper (sm_90), run the gpu-labelled tests and print a
# short table. Meant for a lent GPU machine (H100/H200); finishes in a few minutes.
# Results go in docs/gpu-results.md with the date and the card.
set -uo pipefail
cd "$(dirname "$0")/../.."
t0=$(date +%s)
# The lent machine has CUDA and CMake but not the Debian -dev packages: unpack the carried ones
# (bash tests/gpu/deps.sh fetch, then carry .gpu-deps).
if [[ -d .gpu-deps ]]; then source tests/gpu/deps.sh unpack; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
cmake -S . -B build-gpu -DQV_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DQV_FATAL_WARNINGS=ON \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/tmp/qv-gpu-cmake.log 2>&1 || { tail -20 /tmp/qv-gpu-cmake.log; exit 1; }
cmake --build build-gpu -j"$(nproc)" >/tmp/qv-gpu-build.log 2>&1 || { tail -40 /tmp/qv-gpu-build.log; exit 1; }
t1=$(date +%s)
ctest --test-dir build-gpu -L gpu --output-on-failure -V >/tmp/qv-gpu-ctest.log 2>&1
rc=$?
grep -E "device 0|saxpy|SKIP|FAIL|Passed|Failed|tests passed" /tmp/qv-gpu-ctest.log | sed 's/^[0-9]*: //'
t2=$(date +%s)
echo
echo "| step | result | seconds |"
echo "|---|---|---|"
echo "| build (sm_90) | ok | $((t1 - t0)) |"
echo "| ctest -L gpu | $([ $rc -eq 0 ] && echo pass || echo FAIL) | $((t2 - t1)) |"
exit $rc
