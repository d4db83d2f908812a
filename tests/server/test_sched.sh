#!/usr/bin/env bash
# test_sched.sh - runs tests/server/test_sched.py (bounded wait under skewed adapter load,
# preemption by recompute invisible to clients) against the quiver binary, with the client
# venv of test_http.sh (.venv-test). Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai
exec timeout 300 "$venv/bin/python" "$root/tests/server/test_sched.py" "$quiver"
