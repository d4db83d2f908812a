#!/usr/bin/env bash
# run.sh - the test command: install what is missing, build, and pass every test.
#
# Steps: Debian packages (deploy/install-deps.sh) -> the default model (deploy/fetch-model.sh)
# -> the HTTP test client venv -> clang-format check -> a CUDA compile of the whole tree when
# nvcc is present (GPU tests skip without a GPU) -> aarch64 cross build + tests under qemu
# (tests/arm64/run.sh) -> TSan build of the threaded tests -> ASan+UBSan
# build + ctest -> release build with warnings as errors + the whole ctest suite, last, so the
# final summary printed is the full run's.
# Exits non-zero on the first failure. `.ci/run` calls exactly this script.
# Options (environment): QV_SKIP_ASAN=1, QV_SKIP_TSAN=1, QV_SKIP_CUDA=1, QV_SKIP_ARM64=1,
# QV_JOBS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=${QV_JOBS:-$(nproc)}

step() { printf '\n==== %s\n' "$*"; }

# ctest with a digest on failure: a long test's output is cut in the middle by log viewers, so
# the failed checks and sanitizer reports of the failing tests are repeated at the very end.
run_ctest() {
    local dir=$1
    shift
    if ctest --test-dir "$dir" --output-on-failure "$@"; then return 0; fi
    step "digest of the failures ($dir)"
    grep -aE '^(FAIL |not ok|Traceback|[A-Za-z]*Error:|.*\[ +(FAILED|ERROR) +\]|.*: error:|.*(Sanitizer|runtime error|Assertion))' \
        "$dir/Testing/Temporary/LastTest.log" 2>/dev/null | cut -c1-400 | tail -n 60 || true
    return 1
}

step "dependencies"
QV_TEST_DEPS=1 bash deploy/install-deps.sh
step "default model"
bash deploy/fetch-model.sh

step "test client (.venv-test: the official openai package for the HTTP API tests)"
[[ -x .venv-test/bin/python ]] || python3 -m venv .venv-test
.venv-test/bin/pip install -q -r tests/server/requirements.txt

step "format check"
if command -v clang-format >/dev/null 2>&1; then
    files=$(git ls-files '*.c' '*.h' '*.cu' 2>/dev/null || true)
    if [[ -n "$files" ]]; then
        # shellcheck disable=SC2086
        clang-format --dry-run --Werror $files
    fi
    echo "format: ok"
else
    echo "format: clang-format not installed, skipped"
fi

if [[ "${QV_SKIP_CUDA:-0}" != 1 ]] && command -v nvcc >/dev/null 2>&1; then
    step "CUDA build (compile + link; GPU tests skip without a device)"
    cmake -S . -B build-cuda -DQV_CUDA=ON -DQV_FATAL_WARNINGS=ON >/dev/null
    cmake --build build-cuda -j"$jobs"
    run_ctest build-cuda -L gpu
fi

if [[ "${QV_SKIP_ARM64:-0}" != 1 ]]; then
    step "aarch64 cross build (-Werror) + NEON kernels and engine tests under qemu"
    arm_rc=0
    bash tests/arm64/run.sh "$root/build-arm64" || arm_rc=$?
    if ((arm_rc == 77)); then
        echo "arm64: skipped (the cross toolchain could not be installed here)"
    elif ((arm_rc != 0)); then
        exit "$arm_rc"
    fi
fi

if [[ "${QV_SKIP_TSAN:-0}" != 1 ]]; then
    # The tests whose code runs on several threads: the CPU thread pool, the adapter registry's
    # loader workers, a tokenizer shared by threads, the engine on the CPU pool, the Responses
    # API's response store (HTTP threads share it), and the whole
    # server (tests/server/test_http_tsan.sh runs only against a TSan-built binary).
    tsan_tests="test_cpu_threadpool test_registry test_tokenizer_misc test_engine test_resp_store"
    step "TSan build (threaded tests)"
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DQV_SANITIZE_THREAD=ON \
        -DQV_FATAL_WARNINGS=ON -DQV_CUDA=OFF -DCMAKE_C_FLAGS_DEBUG="-O1 -g" >/dev/null
    # the CUDA adapter pool's converter thread on the host-memory CUDA runtime: configured
    # wherever the CUDA headers exist (CI's machine has them)
    if grep -q test_adapter_pool_threads build-tsan/tests/CTestTestfile.cmake; then
        tsan_tests+=" test_adapter_pool_threads"
    fi
    # shellcheck disable=SC2086
    cmake --build build-tsan -j"$jobs" --target $tsan_tests quiver
    step "tests (TSan)"
    TSAN_OPTIONS=halt_on_error=1 run_ctest build-tsan \
        -R "^($(tr ' ' '|' <<<"$tsan_tests"))\$"
    step "HTTP smoke test (TSan: the server's HTTP, engine, worker and signal threads)"
    QV_TSAN=1 run_ctest build-tsan -R '^test_http_tsan_sh$'
fi

if [[ "${QV_SKIP_ASAN:-0}" != 1 ]]; then
    step "ASan+UBSan build"
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQV_SANITIZE_ADDRESS=ON \
        -DQV_FATAL_WARNINGS=ON -DQV_CUDA=OFF -DCMAKE_C_FLAGS_DEBUG="-O1 -g" >/dev/null
    cmake --build build-asan -j"$jobs"
    step "tests (ASan+UBSan)"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
        run_ctest build-asan -j"$jobs" -LE slow
fi

step "release build (-Werror)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQV_FATAL_WARNINGS=ON -DQV_CUDA=OFF >/dev/null
cmake --build build -j"$jobs"
step "tests (release)"
run_ctest build -j"$jobs"

step "all tests passed"
