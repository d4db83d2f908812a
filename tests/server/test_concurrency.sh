#!/usr/bin/env bash
# test_concurrency.sh - runs tests/server/test_concurrency.py (64 concurrent streaming requests
# over 16 generated LoRA adapters, each equal to its solo greedy output) against the quiver
# binary, with the client venv .venv-test (tests/server/requirements.txt; created or completed
# here when missing). Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
root=${QV_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
model="${QUIVER_HOME:-$HOME/.cache/quiver}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f $model ]]; then
    echo "SKIP: $model not found (run deploy/fetch-model.sh)"
    exit 77
fi
venv=$root/.venv-test
[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
if ! "$venv/bin/python" -c 'import openai, numpy' 2>/dev/null; then
    "$venv/bin/pip" install -q -r "$root/tests/server/requirements.txt"
fi
exec timeout 880 "$venv/bin/python" "$root/tests/server/test_concurrency.py" "$quiver"
