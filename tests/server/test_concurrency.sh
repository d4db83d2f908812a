#!/usr/bin/env bash
# test_concurrency.sh - runs tests/server/test_concurrency.py (64 concurrent streaming requests
# over 16 generated LoRA adapters, each equal to its solo greedy output) against the quiver
# binary, with the client venv .venv-test (tests/server/requirements.txt; created or completed
# here when missing). Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai numpy
exec timeout 880 "$venv/bin/python" "$root/tests/server/test_concurrency.py" "$quiver"
