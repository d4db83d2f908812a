#!/usr/bin/env bash
# serve_cuda_emu.sh - runs tests/gpu/fake/serve_cuda_emu.py (`quiver serve --device cuda` over
# HTTP on the emulated device, against the CPU server) with the client venv of the server tests.
# ctest test_serve_cuda_emu (labels gpuemu, slow) in CPU builds where the CUDA headers exist.
# Skips (77) only when the model has not been fetched.
#   bash tests/gpu/fake/serve_cuda_emu.sh BUILD/tests/quiver_emu BUILD/quiver
set -euo pipefail
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/../../server/lib.sh"
qv_need_model
qv_venv openai
exec timeout 850 "$venv/bin/python" "$root/tests/gpu/fake/serve_cuda_emu.py" "$1" "$2"
