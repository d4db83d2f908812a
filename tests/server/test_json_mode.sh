#!/usr/bin/env bash
# test_json_mode.sh - runs tests/server/test_json_mode.py (JSON mode and structured output through the
# server: answers judged by Python's json module and jsonschema) against the quiver
# binary, with the client venv of test_http.sh (.venv-test). Skips (77) only when the model has
# not been fetched.
set -euo pipefail
# 850 s: about 470 s under ASan+UBSan on two shared cores (2026-11-30), inside ctest's 900 s
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai jsonschema pydantic
exec timeout 850 "$venv/bin/python" "$root/tests/server/test_json_mode.py" "$quiver"
