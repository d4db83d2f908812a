#!/usr/bin/env bash
# test_spec.sh - runs tests/server/test_spec.py (speculative decoding by prompt lookup through
# the server: the same answers as a server without it, fewer steps) against the quiver binary,
# with the client venv of test_http.sh (.venv-test). Skips (77) only when the model has not been
# fetched.
set -euo pipefail
# 850 s: about 380 s under ASan+UBSan on two shared cores (2026-11-30), inside ctest's 900 s
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai
exec timeout 850 "$venv/bin/python" "$root/tests/server/test_spec.py" "$quiver"
