# lib.sh - shared set-up of the tests/server/test_*.sh wrappers (sourced, not run).
#  qv_need_model          sets $root and $model; exits 77 when the model has not been fetched
#  qv_venv MODULE...      sets $venv (.venv-test at the repository root) and creates or
#                         completes it from tests/server/requirements.txt unless every MODULE
#                         imports already
#  qv_serve LOG ARGS...   starts `$quiver serve ARGS...` in the background with stderr in LOG,
#                         sets $pid and $port once it listens; exits 1 when it does not start
#                         (the caller's EXIT trap should kill $pid)

root=${QV_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}

qv_need_model() {
    model="${QUIVER_HOME:-$HOME/.cache/quiver}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [[ ! -f $model ]]; then
        echo "SKIP: $model not found (run deploy/fetch-model.sh)"
        exit 77
    fi
}

qv_venv() {
    venv=$root/.venv-test
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    local imports
    imports=$(IFS=,; echo "$*")
    if ! "$venv/bin/python" -c "import $imports" 2>/dev/null; then
        "$venv/bin/pip" install -q -r "$root/tests/server/requirements.txt"
    fi
}

qv_serve() {
    local log=$1
    shift
    # the log exists before the child opens it: a sed racing the fork would fail (set -e)
    : >"$log"
    "$quiver" serve "$@" 2>"$log" &
    pid=$!
    port=
    for _ in $(seq 1 600); do
        port=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$log" 2>/dev/null || true)
        [[ -n $port ]] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if [[ -z $port ]]; then
        echo "FAIL: the server did not start"
        cat "$log"
        exit 1
    fi
    echo "server on port $port"
}
