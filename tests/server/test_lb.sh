#!/usr/bin/env bash
# test_lb.sh - two quiver replicas behind nginx, configured with the nginx block of
# docs/deploy.md (taken from the document, upstream addresses and listen port replaced), the
# replicas sharing one adapter store as the document recommends:
#   - an adapter uploaded through the balancer is served by both replicas (each asked
#     directly, and through the balancer) without a restart;
#   - a streamed chat through the balancer arrives as several SSE events ending in [DONE];
#   - one replica drained with SIGTERM while requests keep coming through the balancer: every
#     request gets 200 (the balancer retries a draining replica's 503 on the other one) and
#     the drained replica exits 0;
#   - /ready through the balancer stays 200 while one replica is up;
#   - nginx's $request_id (set by the block) comes back on the answer and is on the log line
#     of the replica that served it.
# Needs nginx (tests/run.sh installs nginx-light); skips (77) without it or without the model.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
nginx=$(command -v nginx || echo /usr/sbin/nginx)
if [[ ! -x $nginx ]]; then
    echo "SKIP: nginx is not installed (apt-get install nginx-light)"
    exit 77
fi

tmp=$(mktemp -d /tmp/quiver-lb.XXXXXX)
chmod 755 "$tmp"
pids=()
ngx_pid=
cleanup() {
    for p in "${pids[@]}" ${pid:-}; do kill -9 "$p" 2>/dev/null || true; done
    if [[ -n $ngx_pid ]]; then kill "$ngx_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
ADMIN=lb-admin

# two replicas, one store
declare -a ports
for r in 0 1; do
    qv_serve "$tmp/replica$r.log" --model "$model" --port 0 --threads 1 --adapter-store "$tmp/store" \
        --admin-key "$ADMIN" --drain-timeout-s 30 --max-tokens-limit 64
    pids+=("$pid")
    ports[r]=$port
done

# the document's nginx block, made runnable
lbport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 - "$root/docs/deploy.md" "$tmp/nginx.conf" "$tmp" "$lbport" "${ports[0]}" "${ports[1]}" <<'EOF'
import re, sys
doc, out, tmp, lb, p0, p1 = sys.argv[1:]
block = re.search(r"```nginx\n(.*?)```", open(doc).read(), re.S).group(1)
servers = iter([f"127.0.0.1:{p0}", f"127.0.0.1:{p1}"])
block = re.sub(r"server \d+\.\d+\.\d+\.\d+:\d+", lambda m: "server " + next(servers), block)
block = re.sub(r"listen \d+;", f"listen 127.0.0.1:{lb};", block)
assert "127.0.0.1:" + p1 in block and f"listen 127.0.0.1:{lb}" in block, block
conf = f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/ngx-body;
    proxy_temp_path {tmp}/ngx-proxy;
    fastcgi_temp_path {tmp}/ngx-fcgi;
    uwsgi_temp_path {tmp}/ngx-uwsgi;
    scgi_temp_path {tmp}/ngx-scgi;
{block}
}}
"""
open(out, "w").write(conf)
EOF
[[ $(id -u) -eq 0 ]] && sed -i '1i user root;' "$tmp/nginx.conf"
"$nginx" -t -c "$tmp/nginx.conf" -p "$tmp" 2>"$tmp/nginx-t.log" ||
    { echo "FAIL: nginx rejects the document's configuration"; cat "$tmp/nginx-t.log"; exit 1; }
"$nginx" -c "$tmp/nginx.conf" -p "$tmp" 2>>"$tmp/nginx-error.log" &
ngx_pid=$!
lb=http://127.0.0.1:$lbport
for _ in $(seq 1 50); do curl -fsS -o /dev/null "$lb/ready" 2>/dev/null && break; sleep 0.1; done
curl -fsS -o /dev/null "$lb/ready" || { echo "FAIL: /ready through nginx"; cat "$tmp/nginx-error.log"; exit 1; }
echo "nginx on $lb -> replicas ${ports[0]} ${ports[1]}"

# 1. upload through the balancer; both replicas serve it
fx=$root/deploy/demo-adapters/shouting
code=$(curl -sS -o "$tmp/up.json" -w '%{http_code}' -H "Authorization: Bearer $ADMIN" -F name=loud \
    -F "adapter_config.json=@$fx/adapter_config.json" \
    -F "adapter_model.safetensors=@$fx/adapter_model.safetensors" "$lb/v1/adapters")
[[ $code == 201 ]] || { echo "FAIL: upload through nginx: $code $(cat "$tmp/up.json")"; exit 1; }
chat='{"model":"loud","temperature":0,"max_tokens":8,"messages":[{"role":"user","content":"Say hi"}]}'
declare -a answers
for r in 0 1; do
    answers[r]=$(curl -fsS "http://127.0.0.1:${ports[r]}/v1/chat/completions" \
        -H 'Content-Type: application/json' -d "$chat" | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')
done
[[ -n ${answers[0]} && ${answers[0]} == "${answers[1]}" ]] ||
    { echo "FAIL: the replicas answer differently on the uploaded adapter: '${answers[0]}' / '${answers[1]}'"; exit 1; }
for _ in 1 2 3 4; do
    got=$(curl -fsS "$lb/v1/chat/completions" -H 'Content-Type: application/json' -d "$chat" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')
    [[ $got == "${answers[0]}" ]] || { echo "FAIL: through nginx: '$got'"; exit 1; }
done
echo "uploaded through nginx, served by both replicas: '${answers[0]}'"
# the proxy's $request_id reaches the replicas' log lines and comes back to the client
xr=$(curl -fsS -D - -o /dev/null "$lb/v1/chat/completions" -H 'Content-Type: application/json' -d "$chat" |
    tr -d '\r' | sed -n 's/^[Xx]-[Rr]equest-[Ii]d: //p')
[[ $xr =~ ^[0-9a-f]{32}$ ]] || { echo "FAIL: no nginx request id in the answer ('$xr')"; exit 1; }
sleep 0.2
grep -q "x-request-id=$xr" "$tmp/replica0.log" "$tmp/replica1.log" ||
    { echo "FAIL: request id $xr on no replica's log line"; exit 1; }
echo "X-Request-Id $xr: in the answer and on the replica's log line"

# 2. streaming through the balancer
stream='{"model":"loud","temperature":0,"max_tokens":16,"stream":true,"messages":[{"role":"user","content":"Count to five"}]}'
curl -fsSN "$lb/v1/chat/completions" -H 'Content-Type: application/json' -d "$stream" >"$tmp/sse.txt"
events=$(grep -c '^data: {' "$tmp/sse.txt" || true)
tail -1 "$tmp/sse.txt" | grep -q '^data: \[DONE\]' ||
    grep -q '^data: \[DONE\]' "$tmp/sse.txt" || { echo "FAIL: no [DONE] in the stream"; exit 1; }
((events >= 3)) || { echo "FAIL: $events SSE events through nginx"; exit 1; }
echo "streamed through nginx: $events events + [DONE]"

# 3. drain replica 0 under load through the balancer
body='{"model":"loud","temperature":0,"max_tokens":24,"messages":[{"role":"user","content":"Tell me a story"}]}'
(
    for i in $(seq 1 24); do
        curl -sS -o /dev/null -w '%{http_code}\n' "$lb/v1/chat/completions" \
            -H 'Content-Type: application/json' -d "$body" &
        sleep 0.05
    done
    wait
) >"$tmp/codes.txt" &
load=$!
sleep 0.3
kill -TERM "${pids[0]}"
rc=0
wait "${pids[0]}" || rc=$?
wait "$load"
[[ $rc -eq 0 ]] || { echo "FAIL: the drained replica exited $rc"; exit 1; }
grep -q drained "$tmp/replica0.log" || { echo "FAIL: replica 0 did not drain"; exit 1; }
n200=$(grep -c '^200$' "$tmp/codes.txt" || true)
total=$(wc -l <"$tmp/codes.txt")
[[ $total -eq 24 && $n200 -eq 24 ]] ||
    { echo "FAIL: during the drain $n200 of $total requests got 200: $(sort "$tmp/codes.txt" | uniq -c | tr '\n' ' ')"; exit 1; }
served0=$(grep -c 'status=200' "$tmp/replica0.log" || true)
refused0=$(grep -c 'status=503' "$tmp/replica0.log" || true)
echo "drain: 24/24 requests 200 through nginx (replica 0 served $served0 in all, refused $refused0 while draining), exit 0"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$lb/ready")
[[ $code == 200 ]] || { echo "FAIL: /ready through nginx with one replica up: $code"; exit 1; }
kill -TERM "${pids[1]}"
wait "${pids[1]}" || { echo "FAIL: replica 1 did not stop cleanly"; exit 1; }
echo PASS
