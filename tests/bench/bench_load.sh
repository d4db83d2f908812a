#!/usr/bin/env bash
# bench_load.sh - the side-by-side load benchmark of issue 5 item 7 on SmolLM2, in one run.
#
# What it does:
#   1. creates 8 distinct random LoRA adapters (rank 16 on all seven projections, fixed seeds)
#      with tests/bench/make_adapters.py;
#   2. starts two `quiver serve` processes on loopback with the adapters preloaded, each with its
#      own temporary adapter store: "mixed" (defaults: any number of adapters per batch) and
#      "one-adapter" (--max-loras 1: one adapter per batch, strict FIFO admission, i.e.
#      llama-server semantics);
#   3. sends 8 concurrent requests on the 8 different adapters to each server, interleaved
#      round by round (A B C, C B A, ...), and reports the aggregate throughput of both and the
#      median of the paired ratios (issue target >= 3x); as a reference, the same 8 requests
#      without adapter on the mixed server (the mixed / no-adapter ratio, BENCH.md R1);
#   4. runs an open-loop Poisson workload with Zipf popularity over the 8 adapters at a moderate
#      rate on the mixed server;
#   5. writes bench-results/load.json and bench-results/load.png and prints a table.
#
# Not a test (no pass/fail): a benchmark. Needs the default model
# (~/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf) and a built build/quiver. The Python
# client lives in .venv-bench at the repository root (tests/bench/requirements.txt), created here
# when missing. About 3-5 minutes on a 2-core VM.
#
# Usage: tests/bench/bench_load.sh [QUIVER_BINARY] [--rounds N] [--rate R] [--requests N]
#                                  [--max-tokens N] [--out DIR] [--threads N]
#                                  [--adapter-dtype F32|BF16|F16]   (adapter file dtype; F32 default)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
quiver=$root/build/quiver
rounds=7
rate=3
requests=90
max_tokens=32
out=$root/bench-results
threads=0
dtype=F32
while [[ $# -gt 0 ]]; do
    case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --max-tokens) max_tokens=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --adapter-dtype) dtype=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    -*) echo "bench_load.sh: unknown option $1" >&2; exit 2 ;;
    *) quiver=$1; shift ;;
    esac
done

model="${QUIVER_HOME:-$HOME/.cache/quiver}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f $model ]] || { echo "bench_load.sh: $model not found (run deploy/fetch-model.sh)" >&2; exit 1; }
[[ -x $quiver ]] || { echo "bench_load.sh: $quiver is not built (cmake --build build --target quiver)" >&2; exit 1; }

venv=$root/.venv-bench
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import aiohttp, matplotlib, numpy' 2>/dev/null; then
    echo "bench_load.sh: creating $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r "$root/tests/bench/requirements.txt"
fi
py=$venv/bin/python
lg=$root/tests/bench/loadgen.py

tmp=$(mktemp -d "${TMPDIR:-/tmp}/quiver-bench-load.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "== adapters: 8 x rank-16 $dtype LoRA on q,k,v,o,gate,up,down (random, seeds 1234..1241)"
preload=()
names=()
while IFS= read -r line; do
    preload+=(--preload "$line")
    names+=("${line%%=*}")
done < <("$py" "$root/tests/bench/make_adapters.py" "$tmp/adapters" --count 8 --rank 16 --dtype "$dtype")
adapters=$(IFS=,; echo "${names[*]}")

# start_server NAME EXTRA_FLAGS... : starts quiver serve on a free port; sets url_NAME, pid_NAME.
start_server() {
    local name=$1
    shift
    local log=$tmp/$name.log
    "$quiver" serve --port 0 --threads "$threads" --adapter-store "$tmp/store-$name" \
        --drain-timeout-s 5 "${preload[@]}" "$@" >"$log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local url=""
    for _ in $(seq 1 300); do
        url=$(sed -n 's/^quiver serve: listening on \(http[^ ]*\).*/\1/p' "$log" | head -n1)
        [[ -n $url ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "bench_load.sh: server $name died" >&2; exit 1; }
        sleep 0.2
    done
    [[ -n $url ]] || { cat "$log" >&2; echo "bench_load.sh: server $name did not start" >&2; exit 1; }
    for _ in $(seq 1 100); do
        curl -sf "$url/ready" >/dev/null && break
        sleep 0.2
    done
    printf -v "url_$name" '%s' "$url"
    printf -v "pid_$name" '%s' "$pid"
    echo "   $name: $url (pid $pid) $*"
}

echo "== servers ($(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
start_server mixed
start_server one --max-loras 1

echo "== side by side: 8 concurrent requests on 8 different adapters, $rounds interleaved rounds"
"$py" "$lg" pair --label "8 req / 8 adapters" \
    --target "mixed=$url_mixed@$pid_mixed" --target "one-adapter=$url_one@$pid_one" \
    --target "no-adapter=$url_mixed@$pid_mixed+base" \
    --adapters "$adapters" --burst 8 --rounds "$rounds" --popularity distinct \
    --prompt-len uniform:16:24 --output-len "fixed:$max_tokens" --temperature 0 --seed 3 \
    --out-json "$tmp/pair.json" >"$tmp/pair.txt"
grep '^  round' "$tmp/pair.txt"

# The one-adapter server is idle from here on; stop it so it cannot take CPU.
kill "$pid_one"
wait "$pid_one" 2>/dev/null || true

echo "== open loop: Poisson $rate req/s, Zipf(1.1) over 8 adapters, $requests requests"
"$py" "$lg" run --label "open Poisson $rate/s zipf1.1" --url "$url_mixed" \
    --server-pid "$pid_mixed" --adapters "$adapters" --popularity zipf:1.1 \
    --rate "$rate" --cv 1 --requests "$requests" --prompt-len lognormal:20:0.5:64 \
    --output-len "uniform:16:$((2 * max_tokens))" --temperature 0 --seed 11 \
    --out-json "$tmp/open.json" >/dev/null

echo "== results"
mkdir -p "$out"
"$py" "$lg" report "$tmp/pair.json" "$tmp/open.json" --out-json "$out/load.json" \
    --out-png "$out/load.png" --note "tests/bench/bench_load.sh; $dtype adapters; max_tokens $max_tokens; tree at $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
"$py" - "$out/load.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for run in d["runs"]:
    r = run.get("ratios", {}).get("mixed/one-adapter")
    if r:
        verdict = "met" if r["median"] >= 3.0 else "MISSED"
        print(f"issue target: mixed / one-adapter >= 3x: {verdict} ({r['median']:.2f}x)")
EOF
echo "wrote $out/load.json and $out/load.png"
