#!/usr/bin/env bash
# test_sched.sh - runs tests/server/test_sched.py (bounded wait under skewed adapter load,
# preemption by recompute invisible to clients) against the quiver binary, with the client
# venv of test_http.sh (.venv-test). Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
root=${QV_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
model="${QUIVER_HOME:-$HOME/.cache/quiver}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ ! -f $model ]]; then
    echo "SKIP: $model not found (run deploy/fetch-model.sh)"
    exit 77
fi
venv=$root/.venv-test
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$root/tests/server/requirements.txt"
fi
exec timeout 300 "$venv/bin/python" "$root/tests/server/test_sched.py" "$quiver"
