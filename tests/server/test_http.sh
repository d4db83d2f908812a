#!/usr/bin/env bash
# test_http.sh - runs tests/server/test_http_api.py (the HTTP API with the official `openai`
# client) against the quiver binary. The client lives in the venv .venv-test at the repository
# root (tests/server/requirements.txt); it is created here when missing. Skips (77) only when
# the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv openai
exec timeout 1500 "$venv/bin/python" "$root/tests/server/test_http_api.py" "$quiver"
