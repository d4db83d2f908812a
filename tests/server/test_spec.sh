#!/usr/bin/env bash
# test_spec.sh - runs tests/server/test_spec.py (speculative decoding by prompt lookup through
# the server: the same answers as a server without it, fewer steps) against the quiver binary,
# with the client venv of test_http.sh (.venv-test). Skips (77) only when the model has not been
# fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai
exec timeout 600 "$venv/bin/python" "$root/tests/server/test_spec.py" "$quiver"
