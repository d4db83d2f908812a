#!/usr/bin/env bash
# test_schemathesis.sh - property-based API fuzzing: schemathesis generates requests from
# proto/openapi.yaml (valid and invalid bodies, paths, headers; multipart uploads included) and
# runs them against `quiver serve` on SmolLM2 (max_tokens capped at 8 by --max-tokens-limit,
# n at 16 by --queue-limit: on 2026-12-01 an ASan build beside other tests needed over 60 s, the
# client's timeout, for a fuzzed n=46 completion, 6 waves of 8 sequences; a larger n gets 400).
# Fails on any 5xx, any status code, content type, header or body that the spec does not
# document, and any schema-violating request the server accepts; then on a sanitizer report
# in the server's log or a non-zero exit after SIGTERM.
#
# The client lives in .venv-test (tests/server/requirements.txt, created or completed here).
# Bounded: 25 examples per operation, one worker, fixed seed (QV_SCHEMATHESIS_SEED overrides,
# QV_SCHEMATHESIS_EXAMPLES the count); 1200 s at most (alone, the ASan build took 272 s on
# 2026-11-30, but beside other tests on two cores 542 s). Skips (77) only when the model has not
# been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
qv_venv schemathesis

tmp=$(mktemp -d /tmp/quiver-schemathesis.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
api_key=st-api-key
admin_key=st-admin-key
mkdir -p "$tmp/load"
qv_serve "$tmp/server.log" --model "$model" --port 0 --threads 2 --adapter-store "$tmp/store" \
    --preload "shouting=$root/deploy/demo-adapters/shouting" \
    --api-key "$api_key" --admin-key "$admin_key" --adapter-load-dir "$tmp/load" \
    --max-tokens-limit 8 --max-prompt-tokens 256 --max-body-bytes 262144 --max-seqs 8 \
    --queue-limit 16

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_headers_conformance,response_schema_conformance,negative_data_rejection
rc=0
(cd "$tmp" && timeout 1200 "$venv/bin/schemathesis" run "$root/proto/openapi.yaml" \
    --url "http://127.0.0.1:$port" -H "Authorization: Bearer $admin_key" \
    --checks "$checks" --phases examples,coverage,fuzzing \
    -n "${QV_SCHEMATHESIS_EXAMPLES:-25}" --seed "${QV_SCHEMATHESIS_SEED:-20261128}" -w 1 \
    --request-timeout 60 --no-color --suppress-health-check all) || rc=$?
echo "schemathesis exit status: $rc"

kill -TERM "$pid"
src=0
wait "$pid" || src=$?
pid=
if [[ $src != 0 ]]; then
    echo "FAIL: the server exited with status $src after SIGTERM"
    rc=1
fi
if grep -E "Sanitizer|runtime error:" "$tmp/server.log"; then
    echo "FAIL: sanitizer report in the server log"
    rc=1
fi
if [[ $rc != 0 ]]; then
    echo "server log tail:"
    tail -20 "$tmp/server.log"
    exit 1
fi
echo "schemathesis: no finding"
