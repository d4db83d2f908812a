#!/usr/bin/env bash
# test_tools.sh - runs tests/server/test_tools.py (tool calls through the server with the openai
# client: every call judged by jsonschema against its tool's parameters) against the quiver
# binary, with the client venv of test_http.sh (.venv-test). Skips (77) only when the model has
# not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai jsonschema pydantic
exec timeout 600 "$venv/bin/python" "$root/tests/server/test_tools.py" "$quiver"
