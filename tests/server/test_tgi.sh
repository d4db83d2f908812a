#!/usr/bin/env bash
# test_tgi.sh - runs tests/server/test_tgi.py (the TGI / LoRAX API with lorax-client and
# huggingface_hub: /generate, /generate_stream, POST /) against the quiver
# binary, with the client venv of test_http.sh (.venv-test). Skips (77) only when the model has
# not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai lorax huggingface_hub jsonschema
exec timeout 600 "$venv/bin/python" "$root/tests/server/test_tgi.py" "$quiver"
