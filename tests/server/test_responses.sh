#!/usr/bin/env bash
# test_responses.sh - runs tests/server/test_responses.py (OpenAI's Responses API with the
# official openai client: answers equal chat completions', the demo adapter's equals HF PEFT's,
# stream events, refusals) against the quiver binary, with the client venv of test_http.sh
# (.venv-test). Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai jsonschema
exec timeout 850 "$venv/bin/python" "$root/tests/server/test_responses.py" "$quiver"
