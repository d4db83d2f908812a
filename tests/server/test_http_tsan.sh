#!/usr/bin/env bash
# test_http_tsan.sh - a short HTTP smoke test meant for a ThreadSanitizer build of quiver:
# `quiver serve` on SmolLM2 (max_tokens 4) with its HTTP threads, engine thread, libuv worker
# pool, adapter loader workers and signal thread all busy at once: concurrent completions and
# chats (streamed and not, base and adapter), two Responses API turns in one conversation while
# items are added to it, a background stream read by two clients while it is cancelled and
# polled, two requests waiting for one merged_adapters merge made on a loader worker, a
# client disconnecting mid-stream, an adapter
# upload validated on the worker pool (and an invalid one), the new adapter used then deleted,
# /v1/models and /metrics scraped while generating, then SIGTERM with a stream in flight
# (drained, exit 0). Fails when the server's stderr has a ThreadSanitizer report.
#
# Runs only when QV_TSAN=1 (tests/run.sh sets it for its TSan build), else exits 77: on a
# regular build the other server tests cover the same API. Skips (77) too when the model has
# not been fetched. The client is the Python of .venv-test (standard library only).
set -euo pipefail
quiver=$1
if [[ ${QV_TSAN:-0} != 1 ]]; then
    echo "SKIP: not a TSan run (set QV_TSAN=1 with a -DQV_SANITIZE_THREAD=ON build)"
    exit 77
fi
if ! grep -q __tsan_init "$quiver"; then
    echo "SKIP: $quiver was not built with -DQV_SANITIZE_THREAD=ON"
    exit 77
fi
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
python=$root/.venv-test/bin/python
[[ -x $python ]] || python=python3

tmp=$(mktemp -d /tmp/quiver-http-tsan.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT
# Report every race (not only the first) and keep serving; the log is checked at the end.
export TSAN_OPTIONS="${TSAN_OPTIONS:-} halt_on_error=0 exitcode=66"
# tenant keys (fair share, limits), re-read on SIGHUP during the concurrent round
printf 't1 tenant=one rpm=600 max_inflight=4\nt2 shout* tenant=two weight=2 manage=yes\n' \
    >"$tmp/keys"
qv_serve "$tmp/server.log" --model "$model" --port 0 --threads 2 --http-threads 2 \
    --adapter-store "$tmp/store" --preload "shouting=$root/deploy/demo-adapters/shouting" \
    --preload "pirate=$root/deploy/demo-adapters/pirate" \
    --api-key k --admin-key a --max-tokens-limit 4 --max-seqs 8 --drain-timeout-s 60 \
    --api-keys-file "$tmp/keys"

rc=0
QV_TSAN_TMP=$tmp timeout 500 "$python" - "$port" "$pid" "$root" <<'EOF' || rc=$?
import http.client, json, os, signal, socket, sys, threading, time, uuid

port, pid, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def raw(method, path, body=None, key="k", headers=None, timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    if key:
        h["Authorization"] = "Bearer " + key
    if isinstance(body, dict):
        body = json.dumps(body)
        h["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def generate(model, stream, chat, key="k", n=1):
    body = {"model": model, "max_tokens": 4, "temperature": 0.7 if n > 1 else 0, "stream": stream,
            "n": n}
    if chat:
        body["messages"] = [{"role": "user", "content": "Say hello."}]
    else:
        body["prompt"] = "The capital of France is"
    st, data = raw("POST", "/v1/chat/completions" if chat else "/v1/completions", body, key=key)
    return st, data


def hup():
    for _ in range(3):
        time.sleep(0.05)
        os.kill(pid, signal.SIGHUP)
    return "sent"


def multipart(fields, files):
    b = uuid.uuid4().hex
    out = [f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
           for k, v in fields.items()]
    for name, data in files:
        out.append(f'--{b}\r\nContent-Disposition: form-data; name="{name}"; '
                   f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                   .encode() + data + b"\r\n")
    out.append(f"--{b}--\r\n".encode())
    return b"".join(out), {"Content-Type": f"multipart/form-data; boundary={b}"}


demo = os.path.join(root, "deploy", "demo-adapters", "shouting")
files = [(n, open(os.path.join(demo, n), "rb").read())
         for n in ("adapter_config.json", "adapter_model.safetensors")]
ia3 = os.path.join(root, "tests", "fixtures", "adapters", "smollm2", "ia3")
bad_files = [("adapter_config.json", open(os.path.join(ia3, "adapter_config.json"), "rb").read()),
             files[1]]

results = {}


def job(name, fn, *args):
    try:
        results[name] = fn(*args)
    except Exception as e:  # noqa: BLE001 - reported below
        results[name] = ("error", repr(e))


def disconnect():
    body = json.dumps({"prompt": "1, 2, 3,", "max_tokens": 4, "stream": True})
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               + body).encode())
    s.recv(64)
    s.close()
    return "closed"


def upload(name, fs):
    body, h = multipart({"name": name}, fs)
    return raw("POST", "/v1/adapters", body, key="a", headers=h)


# a conversation that two responses (one streamed) and an items upload extend at once
st, data = raw("POST", "/v1/conversations", {"items": [{"role": "user", "content": "Hi."}]})
conv = json.loads(data)["id"] if st == 200 else "conv_missing"


def respond(stream):
    return raw("POST", "/v1/responses", {"model": "", "conversation": conv, "input": "Hello?",
                                         "max_output_tokens": 4, "stream": stream})


merge_body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2, "merged_adapters": {
    "ids": ["pirate", "pirate"], "weights": [0.5, 0.7], "merge_strategy": "ties",
    "density": 0.5}}}
jobs = [("stream-base", generate, "", True, False), ("json-base", generate, "", False, False),
        ("response", respond, False), ("response-stream", respond, True),
        ("conv-items", raw, "POST", f"/v1/conversations/{conv}/items",
         {"items": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        ("stream-chat-adapter", generate, "shouting", True, True),
        ("json-chat-adapter", generate, "shouting", False, True),
        ("json-chat-base", generate, "", False, True), ("disconnect", disconnect),
        ("upload", upload, "loud", files), ("upload-bad", upload, "bad", bad_files),
        ("models", raw, "GET", "/v1/models"), ("metrics", raw, "GET", "/metrics"),
        ("tenant-one", generate, "", True, False, "t1"),
        ("tenant-two", generate, "shouting", False, True, "t2"), ("sighup", hup),
        ("choices-stream", generate, "shouting", True, False, "k", 3),
        ("choices-json", generate, "", False, True, "k", 4),
        ("merge-a", raw, "POST", "/generate", merge_body),
        ("merge-b", raw, "POST", "/generate", merge_body)]
threads = [threading.Thread(target=job, args=j) for j in jobs]
t0 = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join(400)
print(f"concurrent round: {time.time() - t0:.1f} s", flush=True)
for name in ("stream-base", "json-base", "stream-chat-adapter", "json-chat-adapter",
             "json-chat-base", "models", "metrics", "tenant-one", "tenant-two", "choices-stream",
             "choices-json", "response", "response-stream", "conv-items", "merge-a", "merge-b"):
    st = results.get(name, (None,))[0]
    check(st == 200, f"{name}: 200 ({results.get(name, ('missing',))[0]})")
check(results.get("stream-base", (0, b""))[1].rstrip().endswith(b"data: [DONE]"),
      "the stream ends with [DONE]")
check(results.get("disconnect") == "closed", "a client disconnected mid-stream")
cj = json.loads(results.get("choices-json", (0, b"{}"))[1] or b"{}")
check(sorted(c["index"] for c in cj.get("choices", [])) == [0, 1, 2, 3], "n=4: four choices")
check(all(results.get("choices-stream", (0, b""))[1].count(f'"index":{i}'.encode()) > 0
          for i in range(3)), "n=3 streamed: chunks of every choice")
st, data = raw("GET", f"/v1/conversations/{conv}/items?limit=100")
n_items = len(json.loads(data).get("data", [])) if st == 200 else -1
check(n_items == 7, f"the conversation gained both turns and both items ({n_items} of 7)")

# background responses: a stream read by its own client and again by another while a third
# cancels it and a fourth polls; a background response polled to its end
c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
c.request("POST", "/v1/responses", body=json.dumps(
    {"model": "", "input": "Count to ten.", "max_output_tokens": 4, "background": True,
     "stream": True}), headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
r = c.getresponse()
first = r.readline() + r.readline()
bid = json.loads(first.split(b"data: ", 1)[1])["response"]["id"] if b"data: " in first else "x"


def poll_end(rid):
    for _ in range(2000):
        st, data = raw("GET", f"/v1/responses/{rid}")
        if st != 200 or json.loads(data)["status"] not in ("queued", "in_progress"):
            return st, data
        time.sleep(0.01)
    return 0, b"still running"


def bg_plain():
    st, data = raw("POST", "/v1/responses", {"model": "", "input": "Hi.", "max_output_tokens": 4,
                                             "background": True})
    return poll_end(json.loads(data)["id"]) if st == 200 else (st, data)


bg_threads = [threading.Thread(target=job, args=a) for a in (
    ("bg-own", lambda: (200, r.read())),
    ("bg-again", raw, "GET", f"/v1/responses/{bid}?stream=true"),
    ("bg-cancel", raw, "POST", f"/v1/responses/{bid}/cancel"), ("bg-poll", poll_end, bid),
    ("bg-plain", bg_plain))]
for t in bg_threads:
    t.start()
for t in bg_threads:
    t.join(300)
c.close()
for name in ("bg-own", "bg-again", "bg-cancel", "bg-poll", "bg-plain"):
    check(results.get(name, (None,))[0] == 200,
          f"{name}: 200 ({results.get(name, ('missing',))[0]})")
ends = (b"event: response.completed", b"event: response.cancelled", b"event: response.incomplete")
check(any(e in results.get("bg-again", (0, b""))[1] for e in ends) and
      any(e in first + results.get("bg-own", (0, b""))[1] for e in ends),
      "background: both readers of the stream see it end")
final = json.loads(results.get("bg-poll", (0, b"{}"))[1] or b"{}").get("status")
check(final in ("completed", "incomplete", "cancelled"), f"background: it ended ({final})")
check(json.loads(results.get("bg-plain", (0, b"{}"))[1] or b"{}").get("status") in
      ("completed", "incomplete"), "background: a polled response ended")

check(results.get("upload", (0,))[0] == 201, f"upload: 201 ({results.get('upload')})")
check(results.get("upload-bad", (0,))[0] == 422, f"invalid upload: 422 ({results.get('upload-bad')})")

st, data = generate("loud", False, False)
check(st == 200, f"the uploaded adapter serves ({st})")
st, data = raw("DELETE", "/v1/adapters/loud", key="a")
check(st == 200, f"DELETE the uploaded adapter ({st})")
st, data = raw("GET", "/health", key=None)
check(st == 200, "healthy")

# SIGTERM with a stream in flight (admitted: its headers arrived): it finishes with [DONE],
# /ready turns 503, and the server exits 0 (checked by the shell below). A background response
# queued just before runs to its end too (its log line, checked by the shell).
st, data = raw("POST", "/v1/responses", {"model": "", "input": "Bye.", "max_output_tokens": 4,
                                         "background": True})
check(st == 200, f"a background response before SIGTERM ({st})")
with open(os.path.join(os.environ["QV_TSAN_TMP"], "bg_id"), "w") as f:
    f.write(json.loads(data)["id"] if st == 200 else "none")
c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
c.request("POST", "/v1/completions", body=json.dumps(
    {"prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0, "stream": True}),
    headers={"Authorization": "Bearer k", "Content-Type": "application/json"})
r = c.getresponse()
os.kill(pid, signal.SIGTERM)
st_ready = None
for _ in range(100):
    try:
        st_ready = raw("GET", "/ready", key=None, timeout=10)[0]
    except OSError:
        break
    if st_ready == 503:
        break
    time.sleep(0.05)
rest = r.read()
c.close()
check(r.status == 200 and rest.rstrip().endswith(b"data: [DONE]"),
      f"the stream in flight at SIGTERM finished ({r.status})")
check(st_ready in (503, None), f"/ready is 503 while draining ({st_ready})")
sys.exit(1 if failures else 0)
EOF

src=0
for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then
    echo "FAIL: the server did not exit after SIGTERM"
    rc=1
else
    wait "$pid" || src=$?
    pid=
    if [[ $src != 0 ]]; then
        echo "FAIL: the server exited with status $src"
        rc=1
    fi
fi
bg_id=$(cat "$tmp/bg_id" 2>/dev/null || echo none)
if ! grep -q "request $bg_id .*status=200 .*(background)" "$tmp/server.log"; then
    echo "FAIL: the background response sent before SIGTERM did not finish ($bg_id)"
    rc=1
fi
n=$(grep -c "WARNING: ThreadSanitizer" "$tmp/server.log" || true)
if grep -q "ThreadSanitizer" "$tmp/server.log"; then
    echo "FAIL: $n ThreadSanitizer report(s) in the server log:"
    grep -A40 "WARNING: ThreadSanitizer" "$tmp/server.log" | head -200
    rc=1
fi
if [[ $rc != 0 ]]; then
    echo "server log tail:"
    tail -15 "$tmp/server.log"
    exit 1
fi
echo "TSan HTTP smoke test: no report"
