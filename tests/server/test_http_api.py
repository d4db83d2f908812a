#!/usr/bin/env python3
"""test_http_api.py - `quiver serve` end to end on loopback with the official `openai` client
and raw HTTP, on the real SmolLM2-135M-Instruct GGUF.

Checks: completions and chat (greedy text equals Hugging Face's greedy continuation from
tests/fixtures/smollm2/golden.json and `quiver generate` / `quiver chat`), streaming (text
identical to the non-streamed result), usage counts, stop strings, logprobs, prompt as token
ids, every error status (401, 404, 405, 413, 400 naming the field, 429 with Retry-After, 503
while draining) with OpenAI error objects, a client disconnect mid-stream (the server stays
healthy and the KV pages come back, read from /metrics), 16 concurrent streams each identical
to its solo greedy output, and SIGTERM drain (in-flight request finishes, exit status 0).

Usage: test_http_api.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import openai

QUIVER = os.path.abspath(sys.argv[1])
ROOT = os.environ.get("QV_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
HOME = os.environ.get("QUIVER_HOME") or os.path.join(os.environ["HOME"], ".cache", "quiver")
MODEL = os.path.join(HOME, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
GOLDEN = json.load(open(os.path.join(ROOT, "tests", "fixtures", "smollm2", "golden.json")))
KEY = "test-key-123"
EOG = ("<|im_end|>", "<|endoftext|>")

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def hf_text(i):
    text = GOLDEN["prompts"][i]["greedy_text"]
    for s in EOG:
        text = text.split(s)[0]
    return text


class Server:
    """A `quiver serve` process on a free port; stderr is collected in a thread."""

    def __init__(self, *extra, model=None):
        if "--adapter-store" not in extra:  # an empty store of its own, never the user's
            store = tempfile.mkdtemp(prefix="quiver-test-store-")
            atexit.register(shutil.rmtree, store, True)
            extra = ("--adapter-store", store, *extra)
        self.proc = subprocess.Popen(
            [QUIVER, "serve", "--model", model or MODEL, "--port", "0", "--threads", "2", *extra],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            errors="backslashreplace")
        self.lines = []
        self.port = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"listening on http://[0-9.]+:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(60) or self.port is None:
            raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def raw(self, method, path, body=None, headers=None, key=KEY, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = "Bearer " + key
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, dict(r.getheaders()), data

    def metrics(self):
        st, _, data = self.raw("GET", "/metrics")
        assert st == 200, st
        out = {}
        for line in data.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=KEY,
                             max_retries=0, timeout=120)

    def stop(self, sig=signal.SIGTERM, timeout=60, send=True):
        if send and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def run_on_server(args, *runs):
    """Starts a server with args, calls each run(server), stops it (also on failure) and
    returns it, for report()."""
    srv = Server(*args)
    try:
        for run in runs:
            run(srv)
    finally:
        if srv.proc.poll() is None:
            srv.stop()
    return srv


def report(servers):
    """The end of a test script: checks the servers' logs for sanitizer reports, prints the
    verdict (with the first server's log tail on failure) and returns the exit status."""
    reports = [ln for s in servers for ln in s.lines if "Sanitizer" in ln or "runtime error:" in ln]
    check(not reports, f"no sanitizer report from the servers ({reports[:1]})")
    if failures:
        print(f"{len(failures)} check(s) failed")
        print("server log tail:\n" + "".join(servers[0].lines[-20:]))
        return 1
    print("all checks passed")
    return 0


def expect_error(srv, what, status, method, path, body=None, key=KEY, param=None, headers=None):
    st, hdrs, data = srv.raw(method, path, body, key=key, headers=headers)
    ok = st == status
    try:
        err = json.loads(data)["error"]
        ok = ok and isinstance(err["message"], str) and err["message"] and "type" in err
        ok = ok and "param" in err and "code" in err
        if param is not None:
            ok = ok and err["param"] == param
    except Exception:  # noqa: BLE001 - any malformed error body is a failure
        ok = False
    check(ok, f"{what}: HTTP {st} (want {status}) body {data[:160]!r}")
    return hdrs


def cli(*args):
    r = subprocess.run([QUIVER, *args, "--model", MODEL, "--threads", "2"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout


def stream_text(client, kind, **kw):
    """Streams a request; returns (text, finish_reason, usage, n_chunks)."""
    parts, finish, usage, n = [], None, None, 0
    fn = client.completions.create if kind == "completions" else client.chat.completions.create
    for chunk in fn(stream=True, **kw):
        n += 1
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            piece = ch.text if kind == "completions" else ch.delta.content
            if piece:
                parts.append(piece)
            if ch.finish_reason:
                finish = ch.finish_reason
    return "".join(parts), finish, usage, n


def main():
    if not os.path.isfile(MODEL):
        print(f"SKIP: {MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    srv = Server("--api-key", KEY, "--max-body-bytes", "65536", "--max-prompt-tokens", "512",
                 "--max-tokens-limit", "256", "--max-seqs", "16", "--drain-timeout-s", "30")
    try:
        run_api_tests(srv)
        run_edit_tests(srv)
        run_vllm_output_tests(srv)
        run_echo_tests(srv)
        run_prompt_logprobs_tests(srv)
        run_choice_tests(srv)
        run_prefix_cache_tests(srv)
        run_disconnect_test(srv)
        run_concurrency_test(srv)
        run_drain_test(srv)
    finally:
        srv.stop(signal.SIGKILL) if srv.proc.poll() is None else None
    run_queue_limit_test()
    r = subprocess.run([QUIVER, "serve", "--model", MODEL, "--port", "0", "--kv-dtype", "f16"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode != 0 and "--kv-dtype expects bf16 or f32, got 'f16'" in r.stderr,
          f"--kv-dtype f16 is refused at start-up (rc {r.returncode}: {r.stderr[-120:]!r})")
    run_json_log_test()
    reports = [l for l in srv.lines if "Sanitizer" in l or "runtime error:" in l]
    check(not reports, f"no sanitizer report from the server ({reports[:1]})")
    # Everything the server prints goes through its logger (libmicrohttpd's own lines too,
    # e.g. "Failed to send data" after the disconnect: a debug line, hidden at info).
    stray = [l for l in srv.lines if not l.startswith("quiver ") or "warn: http:" in l]
    check(not stray, f"every server stderr line comes from quiver's logger, no libmicrohttpd "
          f"warning for a client that left {stray[:2]}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        print("server log tail:\n" + "".join(srv.lines[-20:]))
        return 1
    print("all checks passed")
    return 0


def run_json_log_test():
    """--log-format json: every stderr line of a server's life (start-up, a request with an
    X-Request-Id and a quote in its adapter name, an error, the drain) is one JSON object with
    an RFC 3339 UTC time, a level, a logger and the message; the text of each message is the
    text mode's. The server also runs with --kv-dtype bf16 (K/V pages in bf16 on the CPU)."""
    srv = Server("--log-format", "json", "--api-key", KEY, "--kv-dtype", "bf16")
    try:
        st, _, body = srv.raw("POST", "/v1/completions",
                              {"prompt": "Hi", "max_tokens": 2, "temperature": 0},
                              headers={"X-Request-Id": "json-log-1"})
        check(st == 200 and json.loads(body)["usage"]["completion_tokens"] == 2,
              "a completion with --log-format json and --kv-dtype bf16")
        st, _, _ = srv.raw("POST", "/v1/completions", {"model": 'no"such', "prompt": "x"})
        check(st == 404, "an unknown model with --log-format json")
        check(srv.stop() == 0, "the json-logging server stops cleanly")
    finally:
        if srv.proc.poll() is None:
            srv.stop(signal.SIGKILL)
    objs, bad = [], []
    for line in srv.lines:
        try:
            objs.append(json.loads(line))
        except ValueError:
            bad.append(line)
    check(not bad and len(objs) >= 5, f"every line is JSON ({len(objs)} objects, bad: {bad[:2]})")
    t_re = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
    check(all(set(o) == {"time", "level", "logger", "msg"} and t_re.fullmatch(o["time"]) and
              o["level"] in ("debug", "info", "warn", "error") for o in objs),
          "each object has time (RFC 3339 UTC, ms), level, logger and msg")
    by = lambda pred: [o for o in objs if pred(o)]
    check(by(lambda o: o["logger"] == "serve" and o["msg"].startswith("listening on http://")),
          "the listening line (logger serve)")
    check(by(lambda o: o["logger"] == "serve" and o["msg"].startswith("budgets: kv ") and
             "x 16 tokens (bf16)" in o["msg"]), "the budgets line, with bf16 K/V pages")
    check(by(lambda o: o["level"] == "info" and "x-request-id=json-log-1" in o["msg"] and
             "status=200" in o["msg"]), "the request line with its X-Request-Id")
    check(by(lambda o: o["msg"] == "stopped"), "the stop line")


def run_api_tests(srv):
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]

    # Open endpoints and the model list.
    check(srv.raw("GET", "/health", key=None)[0] == 200, "/health without a key")
    check(srv.raw("GET", "/ready", key=None)[0] == 200, "/ready without a key")
    models = client.models.list()
    check([m.id for m in models.data] == [base], f"/v1/models lists the base ({base})")

    # Version: `quiver --version`, GET /version (open) and quiver_build_info agree with the
    # project version in CMakeLists.txt; the process_* metrics are there and plausible.
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        want_ver = re.search(r"project\(quiver VERSION ([0-9.]+)", f.read()).group(1)
    out = subprocess.run([QUIVER, "--version"], capture_output=True, text=True).stdout
    m_ver = re.fullmatch(r"quiver (\S+) \(commit (\S+), (cuda|cpu only)\)\n", out)
    check(m_ver is not None and m_ver.group(1) == want_ver, f"quiver --version: {out!r}")
    st, _, data = srv.raw("GET", "/version", key=None)
    ver = json.loads(data) if st == 200 else {}
    check(ver.get("version") == want_ver and m_ver is not None and
          ver.get("commit") == m_ver.group(2), f"GET /version without a key: {st} {ver}")
    m = srv.metrics()
    info = f'quiver_build_info{{version="{want_ver}",commit="{ver.get("commit")}",device="cpu"}}'
    check(m.get(info) == 1, f"/metrics {info}")
    check(m.get("process_resident_memory_bytes", 0) > 20e6 and
          m.get("process_virtual_memory_bytes", 0) >= m["process_resident_memory_bytes"],
          "process memory metrics")
    check(0 < m.get("process_cpu_seconds_total", -1) < 3600, "process_cpu_seconds_total")
    check(time.time() - 900 < m.get("process_start_time_seconds", 0) <= time.time() + 1,
          "process_start_time_seconds: the server started during this test")
    check(3 < m.get("process_open_fds", 0) <= m.get("process_max_fds", 0), "process fds")

    # X-Request-Id: echoed on every answer (errors and streams too) and written on the request's
    # log line; a generation request without one gets its completion id; a value that is not
    # 1-128 visible ASCII is ignored.
    body = {"model": base, "prompt": "Hi", "max_tokens": 2, "temperature": 0}
    st, h, data = srv.raw("POST", "/v1/completions", body, headers={"X-Request-Id": "trace-7f_A1"})
    check(st == 200 and h.get("X-Request-Id") == "trace-7f_A1", f"X-Request-Id echoed: {h}")
    for _ in range(50):
        if any("x-request-id=trace-7f_A1" in ln and "status=200" in ln for ln in srv.lines):
            break
        time.sleep(0.1)
    check(any("x-request-id=trace-7f_A1" in ln and "status=200" in ln for ln in srv.lines),
          "X-Request-Id on the request's log line")
    st, h, data = srv.raw("POST", "/v1/completions", body)
    check(st == 200 and h.get("X-Request-Id") == json.loads(data)["id"],
          "without X-Request-Id: the completion id in the header")
    st, h, _ = srv.raw("POST", "/v1/completions", "{not json", headers={"X-Request-Id": "err-1"})
    check(st == 400 and h.get("X-Request-Id") == "err-1", "X-Request-Id on an error")
    st, h, data = srv.raw("POST", "/v1/completions", dict(body, stream=True),
                          headers={"X-Request-Id": "sse-1"})
    check(st == 200 and h.get("X-Request-Id") == "sse-1" and b"[DONE]" in data,
          "X-Request-Id on a stream")
    for bad in ("has space", "x" * 129, "t\u00e9"):
        st, h, _ = srv.raw("GET", "/v1/models", headers={"X-Request-Id": bad.encode("latin-1")})
        check(st == 200 and "X-Request-Id" not in h, f"X-Request-Id {bad[:12]!r}... ignored")

    # Greedy completions equal HF's greedy continuation and `quiver generate`.
    for i in (0, 1):
        g = GOLDEN["prompts"][i]
        r = client.completions.create(model=base, prompt=g["text"], max_tokens=32,
                                      temperature=0)
        text = r.choices[0].text
        check(text == hf_text(i), f"completion {i} equals HF greedy text: {text!r}")
        check(text == cli("generate", "--prompt", g["text"], "--max-tokens", "32"),
              f"completion {i} equals `quiver generate`")
        ids = g["ids"]
        check(r.usage.prompt_tokens == len(ids), f"completion {i} usage.prompt_tokens")
        check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens,
              f"completion {i} usage.total_tokens")
        greedy = g["greedy"]
        want_finish = "stop" if any(s in g["greedy_text"][:len(text) + 20] for s in EOG) \
            else "length"
        check(r.choices[0].finish_reason == want_finish,
              f"completion {i} finish_reason {r.choices[0].finish_reason} (want {want_finish})")
        if want_finish == "length":
            check(r.usage.completion_tokens == 32, f"completion {i} usage.completion_tokens")
        else:
            n = next(k for k, t in enumerate(greedy) if t in (2, 0)) + 1
            check(r.usage.completion_tokens == n,
                  f"completion {i} completion_tokens {r.usage.completion_tokens} (want {n})")
        # Streamed text is identical to the non-streamed one; usage arrives at the end.
        s_text, s_finish, s_usage, n_chunks = stream_text(
            client, "completions", model=base, prompt=g["text"], max_tokens=32, temperature=0,
            stream_options={"include_usage": True})
        check(s_text == text and s_finish == r.choices[0].finish_reason and n_chunks > 3,
              f"streamed completion {i} equals the non-streamed one ({n_chunks} chunks)")
        check(s_usage is not None and s_usage.completion_tokens == r.usage.completion_tokens
              and s_usage.prompt_tokens == r.usage.prompt_tokens,
              f"streamed completion {i} usage")
        # The prompt as token ids gives the same continuation.
        r2 = client.completions.create(model=base, prompt=ids, max_tokens=32, temperature=0)
        check(r2.choices[0].text == text, f"completion {i} from token ids")

    # ignore_eos (vLLM extension): prompt 0 ends at <|im_end|>, HF's greedy run continues past
    # it for 32 tokens; with ignore_eos quiver generates all 32, and the text is HF's with the
    # special tokens skipped.
    g = GOLDEN["prompts"][0]
    r = client.completions.create(model=base, prompt=g["text"], max_tokens=32, temperature=0,
                                  extra_body={"ignore_eos": True})
    want = g["greedy_text"]
    for sp in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
        want = want.replace(sp, "")
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 32 and
          r.choices[0].text == want,
          f"ignore_eos: 32 tokens past <|im_end|>, text {r.choices[0].text!r} (want {want!r})")

    # Chat equals HF's greedy answer to the rendered template and `quiver chat`.
    msg = "What is the capital of France? Answer briefly."
    r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": msg}],
                                       max_tokens=32, temperature=0)
    answer = r.choices[0].message.content
    check(answer == hf_text(2), f"chat equals HF greedy answer: {answer!r}")
    check(answer == cli("chat", "--message", msg, "--max-tokens", "32"), "chat equals `quiver chat`")
    check(r.choices[0].message.role == "assistant" and r.object == "chat.completion",
          "chat response shape")
    check(r.usage.prompt_tokens == len(GOLDEN["prompts"][2]["ids"]),
          "chat usage.prompt_tokens")
    s_text, s_finish, _, _ = stream_text(client, "chat", model=base,
                                         messages=[{"role": "user", "content": msg}],
                                         max_tokens=32, temperature=0)
    check(s_text == answer and s_finish == r.choices[0].finish_reason,
          "streamed chat equals the non-streamed one")

    # Stop strings: the continuation of prompt 1 cut before the first "return".
    full = hf_text(1)
    cut = full.split("return")[0]
    r = client.completions.create(model=base, prompt=GOLDEN["prompts"][1]["text"],
                                  max_tokens=32, temperature=0, stop=["return", "zzz"])
    check(r.choices[0].text == cut and r.choices[0].finish_reason == "stop",
          f"stop string cuts the text: {r.choices[0].text!r}")
    s_text, s_finish, _, _ = stream_text(client, "completions", model=base,
                                         prompt=GOLDEN["prompts"][1]["text"], max_tokens=32,
                                         temperature=0, stop="return")
    check(s_text == cut and s_finish == "stop", "stop string while streaming")

    # Logprobs: completions (top-n alternatives), greedy token is the most likely one.
    r = client.completions.create(model=base, prompt=GOLDEN["prompts"][1]["text"],
                                  max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    ok = len(lp.tokens) == 8 and len(lp.token_logprobs) == 8 and len(lp.top_logprobs) == 8
    ok = ok and "".join(lp.tokens) == r.choices[0].text
    ok = ok and all(len(t) == 3 for t in lp.top_logprobs)
    ok = ok and all(abs(max(t.values()) - l) < 1e-5 for t, l in zip(lp.top_logprobs,
                                                                     lp.token_logprobs))
    ok = ok and all(l <= 0 for l in lp.token_logprobs)
    check(ok, "completion logprobs (8 tokens, top-3, greedy = argmax, text = tokens)")
    r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": msg}],
                                       max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    ok = len(content) >= 1 and all(len(c.top_logprobs) == 2 for c in content)
    ok = ok and all(abs(c.top_logprobs[0].logprob - c.logprob) < 1e-5 for c in content)
    ok = ok and "".join(c.token for c in content) == r.choices[0].message.content
    check(ok, "chat logprobs (top-2, greedy = argmax)")
    # No alternatives asked for: the chosen tokens still carry their log-probabilities.
    r0 = client.completions.create(model=base, prompt=GOLDEN["prompts"][1]["text"],
                                   max_tokens=8, temperature=0, logprobs=0)
    lp0 = r0.choices[0].logprobs
    check(len(lp0.tokens) == 8 and "".join(lp0.tokens) == r0.choices[0].text and
          all(abs(a - b) < 1e-5 for a, b in zip(lp0.token_logprobs, lp.token_logprobs)) and
          all(not t for t in lp0.top_logprobs), "completion logprobs=0: chosen tokens only")
    r0 = client.chat.completions.create(model=base, messages=[{"role": "user", "content": msg}],
                                        max_tokens=6, temperature=0, logprobs=True)
    c0 = r0.choices[0].logprobs.content
    check(len(c0) == len(content) and all(not c.top_logprobs for c in c0) and
          all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(c0, content)),
          "chat logprobs without top_logprobs: chosen tokens only")

    # Seeded sampling is reproducible; sampling parameters are accepted.
    kw = dict(model=base, prompt="Once upon a time", max_tokens=12, temperature=0.9, top_p=0.95,
              seed=1234, extra_body={"top_k": 40, "min_p": 0.02, "repetition_penalty": 1.1},
              presence_penalty=0.2, frequency_penalty=0.1)
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    check(a == b, "same seed, same sampled text")

    # Errors, OpenAI-style.
    good = {"model": base, "prompt": "hi", "max_tokens": 2}
    expect_error(srv, "no API key", 401, "POST", "/v1/completions", good, key=None)
    expect_error(srv, "wrong API key", 401, "POST", "/v1/completions", good, key="nope")
    expect_error(srv, "unknown route", 404, "GET", "/v1/nothing")
    # Fields that would change the answer and that quiver lacks are refused, never ignored;
    # the values that ask for nothing pass.
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    # (a schema quiver cannot follow: structured output refuses it and says why)
    schema = {"type": "json_schema",
              "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}}
    for extra, param in (({"response_format": schema}, "response_format"),
                         ({"tools": [{"type": "function", "function": {"name": "f"}}]},
                          "tool_choice"),  # auto, the default with tools
                         ({"guided_json": {"type": "number", "multipleOf": 0.5}}, "guided_json"),
                         ({"guided_regex": "(a)\\1"}, "guided_regex")):
        expect_error(srv, f"unsupported {param}", 400, "POST", "/v1/chat/completions",
                     dict(chat, **extra), param=param)
    for extra, param in (({"suffix": "x"}, "suffix"),
                         ({"best_of": 2}, "best_of")):
        expect_error(srv, f"unsupported {param}", 400, "POST", "/v1/completions",
                     dict(good, **extra), param=param)
    st, _, _ = srv.raw("POST", "/v1/chat/completions",
                       dict(chat, response_format={"type": "text"}, tools=[], tool_choice="none",
                            logit_bias={},
                            echo=False, best_of=1, min_tokens=0, user="u1"))
    check(st == 200, f"values that ask for nothing pass ({st})")
    # vLLM stop_token_ids: HF's greedy continuation of prompt 0 is " Paris" "." ...; stopping
    # at the id of "." ends after two tokens, without the stop token's text
    g0 = GOLDEN["prompts"][0]
    st, _, data = srv.raw("POST", "/v1/completions",
                          {"prompt": g0["text"], "max_tokens": 16, "temperature": 0,
                           "stop_token_ids": [g0["greedy"][1]]})
    out = json.loads(data)
    check(st == 200 and out["choices"][0]["finish_reason"] == "stop" and
          out["usage"]["completion_tokens"] == 2 and
          out["choices"][0]["text"] == hf_text(0)[:len(out["choices"][0]["text"])] and
          g0["greedy_text"].startswith(out["choices"][0]["text"] + "."),
          f"stop_token_ids ends at HF's 2nd greedy token ({out['choices'][0]['text']!r})")
    expect_error(srv, "stop_token_ids outside the vocabulary", 400, "POST", "/v1/completions",
                 dict(good, stop_token_ids=[10 ** 7]), param="stop_token_ids")
    # A name echoed in an error is cut to a byte limit: the JSON stays valid UTF-8 even when
    # the cut splits a character (found by schemathesis).
    long_name = urllib.parse.quote("a" + "\U0001d47b" * 60)
    st, _, data = srv.raw("GET", "/v1/adapters/" + long_name)
    try:
        msg = json.loads(data.decode("utf-8"))["error"]["message"]
        ok = st == 400 and msg.startswith("'a\U0001d47b")
    except (UnicodeDecodeError, ValueError, KeyError):
        ok = False
    check(ok, f"an error echoing a cut multi-byte name is valid UTF-8 JSON ({st} {data[:60]!r})")
    # A URL that decodes to a newline cannot forge a log line; log lines stay ASCII.
    srv.raw("GET", "/v1/x%0Aquiver%20info:%20forged")
    srv.raw("GET", "/health")
    time.sleep(0.2)
    check(not any(l.startswith("quiver info: forged") for l in srv.lines) and
          any("%0Aquiver" in l for l in srv.lines), "the request log line escapes the URL")
    expect_error(srv, "unknown adapter in model", 404, "POST", "/v1/completions",
                 dict(good, model=base + ":no-such-adapter"))
    expect_error(srv, "unknown model name", 404, "POST", "/v1/chat/completions",
                 {"model": "someone-elses-lora", "messages": [{"role": "user", "content": "x"}]})
    expect_error(srv, "unknown adapter_id", 404, "POST", "/v1/completions",
                 dict(good, adapter_id="nope"))
    h = expect_error(srv, "GET on a POST route", 405, "GET", "/v1/completions")
    check(h.get("Allow") == "POST", "405 carries Allow: POST")
    expect_error(srv, "body too large", 413, "POST", "/v1/completions",
                 json.dumps(dict(good, prompt="x" * 70000)))
    expect_error(srv, "malformed JSON", 400, "POST", "/v1/completions", "{\"prompt\": ")
    expect_error(srv, "wrong type", 400, "POST", "/v1/completions",
                 dict(good, temperature="hot"), param="temperature")
    expect_error(srv, "missing prompt", 400, "POST", "/v1/completions", {"max_tokens": 3},
                 param="prompt")
    expect_error(srv, "n = 0", 400, "POST", "/v1/completions", dict(good, n=0), param="n")
    expect_error(srv, "max_tokens over the limit", 400, "POST", "/v1/completions",
                 dict(good, max_tokens=257), param="max_tokens")
    expect_error(srv, "prompt over the token limit", 400, "POST", "/v1/completions",
                 dict(good, prompt=" hello" * 600))
    expect_error(srv, "token id outside the vocabulary", 400, "POST", "/v1/completions",
                 dict(good, prompt=[1, 2, 10 ** 6]), param="prompt")
    try:
        client.completions.create(model=base, prompt="x", max_tokens=2, n=0)
        check(False, "openai client sees 400 for n=0")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "openai client sees 400 for n=0")
    m = srv.metrics()
    check(m.get('quiver_requests_total{status="401"}', 0) >= 2 and
          m.get('quiver_requests_total{status="200"}', 0) >= 10,
          "/metrics counts requests by status")
    ok = True
    for h in ("quiver_time_to_first_token_seconds", "quiver_time_per_output_token_seconds",
              "quiver_e2e_request_latency_seconds"):
        buckets = [v for k, v in m.items() if k.startswith(h + "_bucket")]
        ok = ok and buckets == sorted(buckets) and buckets[-1] == m[h + "_count"]
        ok = ok and m[h + "_count"] >= 10 and m[h + "_sum"] > 0
    check(ok, "/metrics histograms are cumulative and count the requests")
    check(m["quiver_generation_tokens_total"] >= 32 * 2 and m["quiver_prompt_tokens_total"] > 0,
          "/metrics token counters")
    check(m["quiver_kv_pages_total"] > 0 and m["quiver_queue_depth"] == 0,
          "/metrics KV pool and queue gauges")


def run_edit_tests(srv):
    """OpenAI logit_bias and vLLM min_tokens against HF generate's sequence_bias /
    min_new_tokens (tests/fixtures/smollm2/edits.json, tests/oracle/gen_golden.py)."""
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    edits = json.load(open(os.path.join(ROOT, "tests", "fixtures", "smollm2", "edits.json")))
    for case in edits["cases"]:
        ids = GOLDEN["prompts"][case["prompt"]]["ids"]
        want_finish = "stop" if case["ended_by_eog"] else "length"
        body = {"model": base, "prompt": ids, "max_tokens": case["max_tokens"], "temperature": 0,
                "logit_bias": case["logit_bias"], "min_tokens": case["min_tokens"]}
        st, _, data = srv.raw("POST", "/v1/completions", body)
        out = json.loads(data) if st == 200 else {}
        got = out.get("choices", [{}])[0]
        check(st == 200 and got.get("text") == case["text"] and
              got.get("finish_reason") == want_finish and
              out["usage"]["completion_tokens"] == len(case["ids"]),
              f"{case['name']}: HF's greedy text under logit_bias / min_tokens "
              f"({st} {got.get('text')!r} {got.get('finish_reason')})")
        # streamed through the openai client, with logprobs (these rows sample on the host)
        text, finish, _, _ = stream_text(
            client, "completions", model=base, prompt=ids, max_tokens=case["max_tokens"],
            temperature=0, logprobs=1,
            logit_bias={k: int(v) for k, v in case["logit_bias"].items()},
            extra_body={"min_tokens": case["min_tokens"]})
        check(text == case["text"] and finish == want_finish,
              f"{case['name']}: streamed the same ({text!r} {finish})")
    # min_tokens holds stop strings back too (vLLM): '.' ends the chat answer at its first
    # '.' without min_tokens; with it, at the first '.' in text after the min_tokens-th token.
    chat = next(c for c in edits["cases"] if c["name"] == "chat_min")
    ids = GOLDEN["prompts"][2]["ids"]
    full = chat["text"]
    r = client.completions.create(model=base, prompt=ids, max_tokens=40, temperature=0,
                                  stop=["."])
    check(r.choices[0].text == full[:full.index(".")], f"stop '.' alone ({r.choices[0].text!r})")
    r = client.completions.create(model=base, prompt=ids, max_tokens=40, temperature=0,
                                  stop=["."], extra_body={"min_tokens": 20})
    got = r.choices[0].text
    check(r.choices[0].finish_reason == "stop" and full.startswith(got) and
          full[len(got):].startswith(".") and got.count(".") >= 1 and
          r.usage.completion_tokens > 20,
          f"min_tokens 20 skips the early '.' stops ({got!r}, {r.usage.completion_tokens})")
    # bad values
    good = {"model": base, "prompt": "x", "max_tokens": 4}
    for bad in ({"logit_bias": {"abc": 1}}, {"logit_bias": {"-1": 1}}, {"logit_bias": {"5": 101}},
                {"logit_bias": {"5": "high"}}, {"logit_bias": [1, 2]},
                {"logit_bias": {"49152": 1}}):
        expect_error(srv, f"bad logit_bias {bad['logit_bias']}", 400, "POST", "/v1/completions",
                     dict(good, **bad), param="logit_bias")
    for bad in (-1, 2.5, "3", 5):
        expect_error(srv, f"bad min_tokens {bad!r}", 400, "POST", "/v1/completions",
                     dict(good, min_tokens=bad), param="min_tokens")
    st, _, _ = srv.raw("POST", "/v1/chat/completions",
                       {"model": base, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 3, "logit_bias": {"5": -100, "5 ": 1}})
    check(st == 400, f"a logit_bias key with a space is refused ({st})")


def run_vllm_output_tests(srv):
    """vLLM's output options: skip_special_tokens, include_stop_str_in_output (stop strings and
    stop_token_ids), return_tokens_as_token_ids, allowed_token_ids, bad_words,
    truncate_prompt_tokens, stream_options.continuous_usage_stats; and
    its options quiver does not implement refused (400 naming them) where they ask for
    something."""
    base = os.path.basename(MODEL)[:-len(".gguf")]

    def post(body, path="/v1/completions"):
        st, _, data = srv.raw("POST", path, dict({"model": base, "temperature": 0}, **body))
        return st, (json.loads(data) if st == 200 else {})

    # skip_special_tokens: three forced <|im_start|> (a special added token, not an end)
    forced = {"prompt": "Hello", "max_tokens": 3, "logit_bias": {"1": 100}}
    st_a, a = post(forced)
    st_b, b = post(dict(forced, skip_special_tokens=False))
    check(st_a == 200 and st_b == 200 and a["choices"][0]["text"] == "" and
          b["choices"][0]["text"] == "<|im_start|>" * 3,
          f"skip_special_tokens: special tokens write no text by default, their text when "
          f"false ({a.get('choices')} {b.get('choices')})")
    # the free answer's tokens: their ids (return_tokens_as_token_ids) and their texts
    ids = GOLDEN["prompts"][0]["ids"]
    free = {"prompt": ids, "max_tokens": 24, "logprobs": 1}
    st, as_ids = post(dict(free, return_tokens_as_token_ids=True))
    st2, as_text = post(free)
    lp_ids, lp_text = as_ids["choices"][0]["logprobs"], as_text["choices"][0]["logprobs"]
    gen = [int(t.split(":", 1)[1]) for t in lp_ids["tokens"]]
    check(st == 200 and st2 == 200 and
          all(re.fullmatch(r"token_id:\d+", t) for t in lp_ids["tokens"]) and
          all(re.fullmatch(r"token_id:\d+", k) for d in lp_ids["top_logprobs"] for k in d) and
          lp_ids["token_logprobs"] == lp_text["token_logprobs"] and
          as_ids["choices"][0]["text"] == as_text["choices"][0]["text"],
          f"return_tokens_as_token_ids: logprobs name tokens token_id:<id>, the rest unchanged "
          f"({lp_ids['tokens'][:3]})")
    text, pieces = as_text["choices"][0]["text"], lp_text["tokens"]
    st, _, tok = srv.raw("POST", "/tokenize", {"model": base, "prompt": text,
                                               "add_special_tokens": False})
    check(st == 200 and json.loads(tok)["tokens"] == gen,
          f"the ids named are the answer's ids ({gen[:6]})")
    # include_stop_str_in_output with a stop string met in the free answer
    stop = text[8:12]
    at = text.find(stop)
    body = {"prompt": ids, "max_tokens": 24, "stop": [stop]}
    _, cut = post(body)
    _, kept = post(dict(body, include_stop_str_in_output=True))
    check(cut["choices"][0]["text"] == text[:at] and
          kept["choices"][0]["text"] == text[:at + len(stop)] and
          kept["choices"][0]["finish_reason"] == "stop",
          f"include_stop_str_in_output: the stop string {stop!r} ends the text "
          f"({kept['choices'][0]['text']!r})")
    # ... and with stop_token_ids: the stop token's text is the last
    k = next(i for i in range(4, len(gen)) if gen[i] not in gen[:i])
    body = {"prompt": ids, "max_tokens": 24, "stop_token_ids": [gen[k]]}
    _, cut = post(body)
    _, kept = post(dict(body, include_stop_str_in_output=True))
    check(cut["choices"][0]["text"] == "".join(pieces[:k]) and
          kept["choices"][0]["text"] == "".join(pieces[:k + 1]) and
          kept["usage"]["completion_tokens"] == k + 1,
          f"include_stop_str_in_output: a stop_token_ids token's text ends the text "
          f"({kept['choices'][0]['text']!r})")
    # ... and an end-of-generation token (<|im_end|> forced): its text only with the special
    # tokens kept, as vLLM's detokenizer gives it, with its logprob
    eog = {"prompt": "Hello", "max_tokens": 3, "logit_bias": {"2": 100}, "logprobs": 0}
    got = [post(dict(eog, **extra))[1] for extra in (
        {}, {"include_stop_str_in_output": True},
        {"include_stop_str_in_output": True, "skip_special_tokens": False})]
    check([g["choices"][0]["text"] for g in got] == ["", "", "<|im_end|>"] and
          all(g["choices"][0]["finish_reason"] == "stop" for g in got) and
          [len(g["choices"][0]["logprobs"]["tokens"]) for g in got] == [0, 0, 1],
          f"include_stop_str_in_output + skip_special_tokens false: the end token's text "
          f"({[g['choices'][0]['text'] for g in got]})")
    # allowed_token_ids: only those ids, sampled or greedy, end-of-generation included
    pair = [gen[0], gen[2]]
    st, two = post({"prompt": ids, "max_tokens": 12, "temperature": 1.0, "seed": 3,
                    "logprobs": 1, "return_tokens_as_token_ids": True,
                    "allowed_token_ids": pair})
    got = [int(t.split(":", 1)[1]) for t in two["choices"][0]["logprobs"]["tokens"]] \
        if st == 200 else []
    _, one = post({"prompt": ids, "max_tokens": 5, "allowed_token_ids": [gen[1]],
                   "logprobs": 0, "return_tokens_as_token_ids": True})
    check(len(got) == 12 and set(got) <= set(pair) and
          two["choices"][0]["finish_reason"] == "length" and
          one["choices"][0]["logprobs"]["tokens"] == [f"token_id:{gen[1]}"] * 5,
          f"allowed_token_ids: only the listed ids are drawn ({got}, "
          f"{one.get('choices', [{}])[0].get('text')!r})")
    expect_error(srv, "allowed_token_ids outside the vocabulary", 400, "POST", "/v1/completions",
                 {"model": base, "prompt": "x", "allowed_token_ids": [49152]},
                 param="allowed_token_ids")
    expect_error(srv, "allowed_token_ids with JSON mode", 400, "POST", "/v1/chat/completions",
                 {"model": base, "messages": [{"role": "user", "content": "x"}],
                  "allowed_token_ids": [5], "response_format": {"type": "json_object"}},
                 param="allowed_token_ids")
    # bad_words: neither the word's ids nor those of " word" appear in the answer
    def ids_of(t):
        st, _, d = srv.raw("POST", "/tokenize", {"model": base, "prompt": t,
                                                 "add_special_tokens": False})
        return json.loads(d)["tokens"] if st == 200 else []

    def has_run(seq, sub_seq):
        return any(seq[i:i + len(sub_seq)] == sub_seq for i in range(len(seq)))

    banned = [ids_of("Paris"), ids_of(" Paris"), ids_of("The"), ids_of(" The")]
    st, bw = post(dict(free, max_tokens=24, return_tokens_as_token_ids=True,
                       bad_words=["Paris", "  The"]))
    out = [int(t.split(":", 1)[1]) for t in bw["choices"][0]["logprobs"]["tokens"]] \
        if st == 200 else []
    check(st == 200 and any(has_run(gen, b) for b in banned) and len(out) > 0 and
          not any(has_run(out, b) for b in banned),
          f"bad_words: 'Paris' and 'The' (with or without a space) are avoided "
          f"({bw.get('choices', [{}])[0].get('text')!r})")
    # leading whitespace goes as Python's str.lstrip() removes it (no-break and ideographic
    # spaces too): the same answer
    st, bw2 = post(dict(free, max_tokens=24, return_tokens_as_token_ids=True,
                        bad_words=["\u00a0Paris", "\u3000\u2009The"]))
    check(st == 200 and bw2["choices"][0]["text"] == bw["choices"][0]["text"],
          f"bad_words: Unicode whitespace before a word is stripped as vLLM (Python) strips it "
          f"({bw2.get('choices', [{}])[0].get('text')!r})")
    for bad in (["x" * 200], [""], "Paris", [3], ["\u3000"]):
        expect_error(srv, f"bad_words {str(bad)[:20]}", 400, "POST", "/v1/completions",
                     {"model": base, "prompt": "x", "bad_words": bad}, param="bad_words")
    # truncate_prompt_tokens keeps the prompt's last ids
    _, t5 = post({"prompt": ids, "max_tokens": 8, "truncate_prompt_tokens": 5})
    _, last5 = post({"prompt": ids[-5:], "max_tokens": 8})
    _, whole = post({"prompt": ids, "max_tokens": 8, "truncate_prompt_tokens": -1})
    _, chat = post({"messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                    "max_tokens": 4, "truncate_prompt_tokens": 6}, "/v1/chat/completions")
    check(t5["usage"]["prompt_tokens"] == 5 and
          t5["choices"][0]["text"] == last5["choices"][0]["text"] and
          whole["usage"]["prompt_tokens"] == len(ids) and chat["usage"]["prompt_tokens"] == 6,
          f"truncate_prompt_tokens: the last ids only ({t5['usage']}, {chat.get('usage')})")
    for bad in (0, -2, 1.5, "3"):
        expect_error(srv, f"truncate_prompt_tokens {bad!r}", 400, "POST", "/v1/completions",
                     {"model": base, "prompt": "x", "truncate_prompt_tokens": bad},
                     param="truncate_prompt_tokens")
    expect_error(srv, "truncate_prompt_tokens with echo", 400, "POST", "/v1/completions",
                 {"model": base, "prompt": "x y z", "echo": True, "truncate_prompt_tokens": 1},
                 param="truncate_prompt_tokens")
    # options that change the answer and that quiver does not implement
    msgs = [{"role": "user", "content": "hi"}]
    for name, val in (("use_beam_search", True), ("logits_processors", ["x"]),
                      ("chat_template", "{{ messages }}"), ("chat_template_kwargs", 1),
                      ("documents", [{"text": "x"}]), ("guided_whitespace_pattern", " ")):
        expect_error(srv, f"refused: {name}", 400, "POST", "/v1/chat/completions",
                     {"model": base, "messages": msgs, "max_tokens": 2, name: val}, param=name)
    # continuous_usage_stats: every chunk carries its choice's usage so far (vLLM's form)
    client = srv.client()
    for kind in ("chat", "completions"):
        args = dict(model=base, max_tokens=12, n=2, temperature=1, seed=5, stream=True,
                    stream_options={"include_usage": True, "continuous_usage_stats": True})
        chunks = list(client.chat.completions.create(
            messages=[{"role": "user", "content": "Tell me about Paris."}], **args)
            if kind == "chat" else
            client.completions.create(prompt="The capital of France is", **args))
        final = chunks[-1].usage
        per = {0: [], 1: []}
        for c in chunks[:-1]:
            for ch in c.choices:
                per[ch.index].append(c.usage)
        counts = {i: [u.completion_tokens for u in us] for i, us in per.items()}
        check(not chunks[-1].choices and final is not None and
              all(us and all(u is not None and u.prompt_tokens == final.prompt_tokens and
                             u.total_tokens == u.prompt_tokens + u.completion_tokens
                             for u in us) for us in per.values()) and
              all(c == sorted(c) for c in counts.values()) and
              counts[0][-1] + counts[1][-1] == final.completion_tokens,
              f"continuous_usage_stats ({kind}, n = 2): each chunk's usage so far, "
              f"tokens {counts[0]} / {counts[1]}, final {final}")
    chunks = list(client.completions.create(
        model=base, prompt="Hi", max_tokens=3, stream=True,
        stream_options={"include_usage": False, "continuous_usage_stats": True}))
    check(all(c.usage is None for c in chunks),
          "continuous_usage_stats without include_usage: no usage (as vLLM)")
    st, _ = post({"messages": msgs, "max_tokens": 2, "use_beam_search": False,
                  "allowed_token_ids": [], "bad_words": [], "chat_template_kwargs": {},
                  "spaces_between_special_tokens": False, "chat_template": None},
                 "/v1/chat/completions")
    check(st == 200, f"values that ask for nothing pass ({st})")


def run_echo_tests(srv):
    """Completions echo: the prompt's text first and, with logprobs, its tokens' logprobs
    (null for the first), as lm-evaluation-harness scores with (max_tokens 0 or 1, echo,
    logprobs 1); values against HF's log_softmax of the prompt logits (tests/fixtures/smollm2/
    edits.json, tests/oracle/gen_golden.py)."""
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    edits = json.load(open(os.path.join(ROOT, "tests", "fixtures", "smollm2", "edits.json")))
    for sc in edits["prompt_logprobs"]:
        g = GOLDEN["prompts"][sc["prompt"]]
        for max_tokens in (0, 1):
            r = client.completions.create(model=base, prompt=g["ids"], max_tokens=max_tokens,
                                          echo=True, logprobs=2, temperature=0)
            lp = r.choices[0].logprobs
            n = len(g["ids"])
            got = lp.token_logprobs[1:n]
            worst = max(abs(a - b["logprob"]) for a, b in zip(got, sc["rows"]))
            worst_top = max(abs(max(t.values()) - b["top_logprobs"][0])
                            for t, b in zip(lp.top_logprobs[1:n], sc["rows"]))
            check(len(lp.tokens) == n + max_tokens and lp.token_logprobs[0] is None and
                  lp.top_logprobs[0] is None and len(got) == n - 1 and worst < 2e-3 and
                  worst_top < 2e-3 and all(len(t) == 2 for t in lp.top_logprobs[1:]) and
                  r.usage.completion_tokens == max_tokens and r.usage.prompt_tokens == n and
                  r.choices[0].text.startswith(g["text"]) and
                  (max_tokens or r.choices[0].text == g["text"]) and
                  lp.text_offset[:2] == [0, len(lp.tokens[0])],
                  f"echo p{sc['prompt']} max_tokens {max_tokens}: {n - 1} prompt logprobs within "
                  f"{worst:.2g} of HF (top-1 {worst_top:.2g}), text {r.choices[0].text[:40]!r}")
    # a text prompt, streamed: one first chunk with the echo and all its logprobs
    g = GOLDEN["prompts"][0]
    chunks = list(client.completions.create(model=base, prompt=g["text"], max_tokens=3,
                                            echo=True, logprobs=1, temperature=0, stream=True))
    first = chunks[0].choices[0]
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    toks = [t for c in chunks if c.choices and c.choices[0].logprobs
            for t in c.choices[0].logprobs.tokens]
    check(first.text.startswith(g["text"]) and first.logprobs.token_logprobs[0] is None and
          len(first.logprobs.tokens) >= len(g["ids"]) and
          text == g["text"] + hf_text(0)[:len(text) - len(g["text"])] and
          len(toks) == len(g["ids"]) + 3,
          f"streamed echo: the prompt and its logprobs lead ({first.text!r}, {len(toks)} tokens)")
    # echo without logprobs: the text only
    r = client.completions.create(model=base, prompt=g["text"], max_tokens=2, echo=True,
                                  temperature=0)
    check(r.choices[0].text.startswith(g["text"]) and r.choices[0].logprobs is None and
          r.usage.completion_tokens == 2, f"echo alone ({r.choices[0].text!r})")
    good = {"model": base, "prompt": "x"}
    expect_error(srv, "max_tokens 0 without echo", 400, "POST", "/v1/completions",
                 dict(good, max_tokens=0), param="max_tokens")
    # chat echo (vLLM): a last assistant message leads the answer's content, as with
    # continue_final_message the model goes on from it; a user message last adds nothing
    client = srv.client()
    part = "The capital of France is"
    msgs = [{"role": "user", "content": "Complete: the capital of France."},
            {"role": "assistant", "content": part}]
    cont = dict(model=base, messages=msgs, max_tokens=6, temperature=0,
                extra_body={"continue_final_message": True, "add_generation_prompt": False})
    plain = client.chat.completions.create(**cont)
    echoed = client.chat.completions.create(**dict(cont, extra_body=dict(
        cont["extra_body"], echo=True)))
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        stream=True, **dict(cont, extra_body=dict(cont["extra_body"], echo=True))) if c.choices)
    user_last = client.chat.completions.create(
        model=base, messages=msgs[:1], max_tokens=4, temperature=0, extra_body={"echo": True})
    user_plain = client.chat.completions.create(
        model=base, messages=msgs[:1], max_tokens=4, temperature=0)
    pc, ec = plain.choices[0].message.content, echoed.choices[0].message.content
    check(ec == part + pc and streamed == ec and
          echoed.usage.completion_tokens == plain.usage.completion_tokens and
          user_last.choices[0].message.content == user_plain.choices[0].message.content,
          f"chat echo: the last assistant message leads the content ({ec!r}; streamed the same; "
          f"a user message last adds nothing)")
    expect_error(srv, "echo on chat with tools", 400, "POST", "/v1/chat/completions",
                 {"model": base, "messages": [{"role": "user", "content": "x"}], "echo": True,
                  "tools": [{"type": "function", "function": {"name": "f"}}],
                  "tool_choice": "required"}, param="echo")
    expect_error(srv, "echo not a boolean", 400, "POST", "/v1/completions",
                 dict(good, echo="yes"), param="echo")


def run_prompt_logprobs_tests(srv):
    """vLLM prompt_logprobs: [null, {"<id>": {"logprob", "rank", "decoded_token"}, ...}] with the
    prompt token first and its alternatives ranked 1..; values against HF's log_softmax of the
    prompt logits (tests/fixtures/smollm2/edits.json, its top 2 per position)."""
    base = os.path.basename(MODEL)[:-len(".gguf")]
    edits = json.load(open(os.path.join(ROOT, "tests", "fixtures", "smollm2", "edits.json")))

    def post(body, path="/v1/completions"):
        st, _, data = srv.raw("POST", path, dict({"model": base, "temperature": 0}, **body))
        return st, (json.loads(data) if st == 200 else {})

    tol = 2e-3
    for sc in edits["prompt_logprobs"]:
        ids = GOLDEN["prompts"][sc["prompt"]]["ids"]
        st, r = post({"prompt": ids, "max_tokens": 1, "prompt_logprobs": 2})
        pl = r["choices"][0].get("prompt_logprobs") if st == 200 else None
        ok = st == 200 and pl is not None and len(pl) == len(ids) and pl[0] is None
        worst, bad = 0.0, []
        for j, row in enumerate(sc["rows"] if ok else [], start=1):
            e, tok = pl[j], str(ids[j])
            hf_top, hf_lp = row["top_ids"], row["top_logprobs"]
            worst = max([worst, abs(e[tok]["logprob"] - row["logprob"])] +
                        [abs(e[str(t)]["logprob"] - v) for t, v in zip(hf_top, hf_lp)
                         if str(t) in e])
            ranks = {k: v["rank"] for k, v in e.items()}
            top1 = [k for k, rk in ranks.items() if rk == 1]
            tie = abs(hf_lp[0] - hf_lp[1]) < tol
            if list(e)[0] != tok or sorted(rk for rk in ranks.values() if rk <= 2) != [1, 2] \
                    or len(e) != (2 if ranks[tok] <= 2 else 3):
                bad.append((j, "shape", e))
            elif not tie and top1 != [str(hf_top[0])]:
                bad.append((j, "top-1", e, hf_top))
            elif row["logprob"] < hf_lp[1] - tol and ranks[tok] <= 2:
                bad.append((j, "rank", e, row))
            elif ids[j] == hf_top[0] and not tie and ranks[tok] != 1:
                bad.append((j, "rank 1", e))
        check(ok and not bad and worst < tol,
              f"prompt_logprobs p{sc['prompt']}: {len(ids) - 1} positions within {worst:.2g} of "
              f"HF, ranks and alternatives consistent ({bad[:2]})")
    # decoded_token: the token's text, as echo's logprobs name it; echo's logprobs equal these
    ids = GOLDEN["prompts"][0]["ids"]
    st, r = post({"prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1,
                  "prompt_logprobs": 3})
    ch = r["choices"][0] if st == 200 else {}
    pl, lp = ch.get("prompt_logprobs"), ch.get("logprobs")
    check(st == 200 and pl and lp and len(pl) == len(ids) and
          all(pl[j][str(ids[j])]["decoded_token"] == lp["tokens"][j] and
              pl[j][str(ids[j])]["logprob"] == lp["token_logprobs"][j] and
              len(lp["top_logprobs"][j]) == 1 and 3 <= len(pl[j]) <= 4
              for j in range(1, len(ids))),
          "prompt_logprobs beside echo + logprobs: the same values and names, each its own "
          "count of alternatives")
    # 20 alternatives: descending, ranks 1..20, the token's rank its place or above 20
    st, r = post({"prompt": ids, "max_tokens": 1, "prompt_logprobs": 20})
    pl = r["choices"][0]["prompt_logprobs"] if st == 200 else None
    good = st == 200 and pl is not None
    for j in range(1, len(ids)) if good else []:
        e, tok = pl[j], str(ids[j])
        alts = sorted(e.items(), key=lambda kv: kv[1]["rank"])
        lps = [v["logprob"] for _, v in alts]
        place = [k for k, v in alts].index(tok) + 1
        good = good and lps == sorted(lps, reverse=True) and \
            [v["rank"] for _, v in alts][:20] == list(range(1, 21)) and \
            (place <= 20 and e[tok]["rank"] == place or
             place == 21 and e[tok]["rank"] > 20 and len(e) == 21)
    check(good, "prompt_logprobs 20: alternatives descending with ranks 1..20, the prompt "
          "token at its rank")
    # 0: the token alone; n = 2: each choice carries them
    st, r = post({"prompt": ids, "max_tokens": 2, "prompt_logprobs": 0, "n": 2,
                  "temperature": 1, "seed": 3})
    chs = r.get("choices", [])
    check(st == 200 and len(chs) == 2 and chs[0]["prompt_logprobs"] == chs[1]["prompt_logprobs"]
          and all(list(chs[0]["prompt_logprobs"][j]) == [str(ids[j])]
                  for j in range(1, len(ids))),
          "prompt_logprobs 0: the prompt token alone, in each of n = 2 choices")
    # chat: once at the top, one entry per prompt token
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    st, r = post({"messages": msgs, "max_tokens": 2, "prompt_logprobs": 1},
                 "/v1/chat/completions")
    pl = r.get("prompt_logprobs")
    check(st == 200 and pl and len(pl) == r["usage"]["prompt_tokens"] and pl[0] is None and
          all(1 <= len(e) <= 2 for e in pl[1:]) and
          "prompt_logprobs" not in r["choices"][0],
          f"chat prompt_logprobs: {len(pl or [])} entries at the top")
    # not asked: no field; refused values and streaming
    st, r = post({"prompt": "Hi", "max_tokens": 1})
    check(st == 200 and "prompt_logprobs" not in r["choices"][0], "no prompt_logprobs unasked")
    for bad_body in ({"prompt_logprobs": 21}, {"prompt_logprobs": -1},
                     {"prompt_logprobs": 1, "stream": True}):
        expect_error(srv, f"prompt_logprobs {bad_body}", 400, "POST", "/v1/completions",
                     dict({"model": base, "prompt": "x"}, **bad_body), param="prompt_logprobs")


def cached_tokens(usage):
    d = usage.prompt_tokens_details
    return None if d is None else d.cached_tokens


def run_prefix_cache_tests(srv, off=False):
    """The prefix cache: a repeated prompt takes its full KV pages (16 tokens each, all but the
    page of the last prompt token) from the cache, says so in usage.prompt_tokens_details
    (read through the openai client, streamed usage too) and in /metrics, and answers exactly
    as the first time (text and logprobs). Then the same against a --prefix-cache 0 server."""
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    prompt = "Prefix cache check: " + " ".join(f"item {i}," for i in range(30))
    kw = dict(model=base, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    m0 = srv.metrics()
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    s_usage, s_text = None, ""
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True},
                                           **kw):
        if chunk.usage:
            s_usage = chunk.usage
        for c in chunk.choices:
            s_text += c.text
    n_p = a.usage.prompt_tokens
    want = 0 if off else (n_p - 1) // 16 * 16
    tag = "--prefix-cache 0" if off else "prefix cache"
    check(cached_tokens(a.usage) == 0 and cached_tokens(b.usage) == want and want >= 16 - off * 16
          and s_usage is not None and cached_tokens(s_usage) == want,
          f"{tag}: cached_tokens 0, then {want} of {n_p}, streamed too "
          f"({[cached_tokens(u) if u else None for u in (a.usage, b.usage, s_usage)]})")
    check(b.choices[0].text == a.choices[0].text == s_text and
          b.choices[0].logprobs.token_logprobs == a.choices[0].logprobs.token_logprobs and
          b.choices[0].logprobs.top_logprobs == a.choices[0].logprobs.top_logprobs,
          f"{tag}: the repeat answers exactly as the first run ({b.choices[0].text!r})")
    m1 = srv.metrics()
    hits = m1["quiver_prefix_cache_hit_tokens_total"] - m0["quiver_prefix_cache_hit_tokens_total"]
    queries = (m1["quiver_prefix_cache_query_tokens_total"] -
               m0["quiver_prefix_cache_query_tokens_total"])
    check(hits == 2 * want and queries == 3 * n_p and
          (m1['quiver_prefix_cache_pages{state="all"}'] == 0) == off,
          f"{tag}: /metrics counts {hits:.0f} hit tokens of {queries:.0f} looked up")
    # a second chat turn: the first turn's prompt and answer (generated tokens, registered as
    # they were computed) come back from the cache, when the template renders the same tokens
    turn1 = [{"role": "user", "content": "Write two sentences about the sea."}]
    c1 = client.chat.completions.create(model=base, messages=turn1, max_tokens=60, temperature=0)
    turn2 = turn1 + [{"role": "assistant", "content": c1.choices[0].message.content},
                     {"role": "user", "content": "Now one about the sky."}]
    xrid = "turn2-" + ("off" if off else "on")
    c2 = client.chat.completions.create(model=base, messages=turn2, max_tokens=8, temperature=0,
                                        extra_headers={"X-Request-Id": xrid})
    done1 = c1.usage.prompt_tokens + c1.usage.completion_tokens - 1  # K/V computed in turn 1
    want = 0 if off else min(done1, c2.usage.prompt_tokens - 1) // 16 * 16
    check(cached_tokens(c2.usage) == want and (off or want > c1.usage.prompt_tokens),
          f"{tag}: a second chat turn takes {cached_tokens(c2.usage)} of "
          f"{c2.usage.prompt_tokens} prompt tokens from the cache (turn 1: "
          f"{c1.usage.prompt_tokens} + {c1.usage.completion_tokens}; want {want})")
    line = log_line(srv, xrid)
    check(f"tokens_cached={want} " in line,
          f"{tag}: the request's log line says tokens_cached ({line.strip()[-130:]})")
    # n = 3 on a new prompt: choices 1 and 2 wait for the pages choice 0 computes and adopt them
    r = client.completions.create(model=base, prompt="Three choices share " + prompt, max_tokens=6,
                                  temperature=0, n=3)
    want = 0 if off else (r.usage.prompt_tokens - 1) // 16 * 16
    check(cached_tokens(r.usage) == want and len({c.text for c in r.choices}) == 1,
          f"{tag}: n=3 on a new prompt reports {cached_tokens(r.usage)} cached tokens ({want})")
    if not off:
        srv_off = Server("--api-key", KEY, "--prefix-cache", "0")
        try:
            run_prefix_cache_tests(srv_off, off=True)
        finally:
            srv_off.stop()


def run_choice_tests(srv):
    """n > 1: each choice is its own sequence; choice i samples with seed + i, so it equals a
    one-choice request with that seed; greedy choices equal HF's greedy text."""
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    g = GOLDEN["prompts"][0]
    kw = dict(model=base, prompt=g["text"], max_tokens=12, temperature=0.9, top_p=0.95)
    r = client.completions.create(n=4, seed=1234, logprobs=1, **kw)
    solo = [client.completions.create(seed=1234 + i, logprobs=1, **kw).choices[0]
            for i in range(4)]
    got = sorted(r.choices, key=lambda c: c.index)
    check([c.index for c in got] == [0, 1, 2, 3] and
          all(c.text == s.text and c.logprobs.tokens == s.logprobs.tokens
              for c, s in zip(got, solo)) and len({c.text for c in got}) > 1,
          f"n=4: choice i is the seed + i sample ({[c.text for c in got]})")
    check(r.usage.prompt_tokens == len(g["ids"]) and
          r.usage.completion_tokens == sum(len(s.logprobs.tokens) for s in solo),
          f"n=4 usage: the prompt once, every choice's tokens ({r.usage})")
    parts, finish = {}, {}
    for chunk in client.completions.create(n=4, seed=1234, logprobs=1, stream=True, **kw):
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    check(parts == {i: s.text for i, s in enumerate(solo)} and
          finish == {i: s.finish_reason for i, s in enumerate(solo)},
          f"n=4 streamed: the same choices, each with its finish ({parts})")
    chat = dict(model=base, messages=[{"role": "user", "content": "Hi"}], temperature=0,
                max_tokens=8)
    one = client.chat.completions.create(**chat)
    r = client.chat.completions.create(n=3, **chat)
    check(len(r.choices) == 3 and
          all(c.message.content == one.choices[0].message.content for c in r.choices) and
          r.usage.completion_tokens == 3 * one.usage.completion_tokens,
          f"chat n=3 greedy: three answers equal to the one-choice answer ({r.usage})")
    r = client.completions.create(model=base, prompt=g["text"], max_tokens=32, temperature=0,
                                  n=2)
    check(all(c.text == hf_text(0)[:len(c.text)] and len(c.text) > 10 for c in r.choices),
          "n=2 greedy: both choices are HF's greedy text")
    expect_error(srv, "n over the limit", 400, "POST", "/v1/completions",
                 {"model": base, "prompt": "x", "n": 65}, param="n")
    # A batch of prompts (a list of texts, or of id lists): choice j of prompt p has index
    # p * n + j and equals a one-prompt request with seed + j.
    texts = [GOLDEN["prompts"][i]["text"] for i in (0, 1, 3)]
    kw = dict(model=base, max_tokens=8, temperature=0.8, seed=77)
    r = client.completions.create(prompt=texts, n=2, **kw)
    solo = [client.completions.create(prompt=t, **dict(kw, seed=77 + j)).choices[0].text
            for t in texts for j in range(2)]
    got = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    check(got == solo and r.usage.prompt_tokens == sum(len(GOLDEN["prompts"][i]["ids"])
                                                       for i in (0, 1, 3)),
          f"a batch of 3 prompts x n=2: each choice as its one-prompt request ({got})")
    ids = [GOLDEN["prompts"][i]["ids"] for i in (0, 1)]
    r = client.completions.create(model=base, prompt=ids, max_tokens=24, temperature=0)
    check([c.text for c in sorted(r.choices, key=lambda c: c.index)] ==
          [hf_text(0)[:len(r.choices[0].text)], hf_text(1)[:len(r.choices[1].text)]] and
          all(len(c.text) > 5 for c in r.choices),
          "a batch of id lists: HF's greedy text for each")
    for bad, param in (({"prompt": ["a", [1, 2]]}, "prompt"), ({"prompt": ["a", ""]}, "prompt"),
                       ({"prompt": ["a", "b"], "n": 40}, "n"), ({"prompt": [[1], []]}, "prompt")):
        expect_error(srv, f"bad batch {bad}", 400, "POST", "/v1/completions",
                     dict({"model": base, "max_tokens": 2}, **bad), param=param)


def run_disconnect_test(srv):
    for n in (1, 3):  # one sequence, or a request of three choices
        run_disconnect_once(srv, n)
    run_gone_while_waiting(srv)


def raw_post(port, body, xrid, stream=False):
    """Sends a completion request on a raw socket and returns the socket (nothing read)."""
    body = json.dumps(dict(body, stream=stream))
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"X-Request-Id: {xrid}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
    return s


def log_line(srv, xrid, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in srv.lines:
            if f"x-request-id={xrid}" in line:
                return line
        time.sleep(0.05)
    return ""


def run_gone_while_waiting(srv):
    """A client that leaves while its request waits for an answer that is not streamed, or
    waits in the queue, is noticed by the server's liveness check (libmicrohttpd does not watch
    suspended connections): the request is cancelled at once (status 499, fewer tokens than
    asked, nothing admitted for the queued one) instead of being computed for nobody."""
    base = os.path.basename(MODEL)[:-len(".gguf")]
    count = {"model": base, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 250, "temperature": 0}
    s = raw_post(srv.port, count, "gone-running")
    deadline = time.time() + 30
    while time.time() < deadline and srv.metrics()["quiver_running_sequences"] == 0:
        time.sleep(0.05)
    time.sleep(0.3)
    s.close()
    line = log_line(srv, "gone-running")
    m = re.search(r"status=(\d+) tokens_in=\d+ tokens_cached=\d+ tokens_out=(\d+)", line)
    check(m is not None and m.group(1) == "499" and int(m.group(2)) < 250,
          f"a non-streamed request whose client left is cancelled: {line.strip()[:160]!r}")
    # queued behind a running stream on a one-sequence server
    one = Server("--api-key", KEY, "--max-seqs", "1")
    try:
        # long enough to outlast the wait below on a fast machine (120 tokens took 0.6 s)
        a = raw_post(one.port, dict(count, max_tokens=600, ignore_eos=True), "runs-first",
                     stream=True)
        got = a.recv(4096)
        while b"data: " not in got:
            got += a.recv(4096)
        b = raw_post(one.port, count, "queued-gone")
        time.sleep(0.6)
        b.close()
        line = log_line(one, "queued-gone")
        m = re.search(r"status=(\d+) tokens_in=\d+ tokens_cached=\d+ tokens_out=(\d+) "
                      r"ttft=(\S+)", line)
        early = not any("x-request-id=runs-first" in l for l in one.lines)
        check(m is not None and m.group(1) == "499" and m.group(2) == "0" and
              m.group(3) == "-1.000s" and early,
              f"a queued request whose client left is dropped before admission, while the "
              f"running one goes on: {line.strip()[:160]!r}")
        while b"[DONE]" not in got:
            chunk = a.recv(65536)
            if not chunk:
                break
            got += chunk
        a.close()
        check(b"[DONE]" in got and "status=200" in log_line(one, "runs-first"),
              "the running stream completes")
    finally:
        one.stop()


def run_disconnect_once(srv, n):
    base = os.path.basename(MODEL)[:-len(".gguf")]
    # A counting prompt: the greedy continuation runs to max_tokens without an end token.
    body = json.dumps({"model": base, "prompt": "1, 2, 3, 4, 5, 6,",
                       "max_tokens": 250, "temperature": 0, "stream": True, "n": n})
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               + body).encode())
    got = b""
    while got.count(b"data: ") < 3 * n and b"[DONE]" not in got:  # 3 steps: gauges updated
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    during = srv.metrics()
    check(during["quiver_kv_pages_used"] > 0, "KV pages in use mid-stream "
          f"({during['quiver_kv_pages_used']:.0f})")
    check(b"[DONE]" not in got, "the stream was still running when the client left")
    s.close()
    deadline = time.time() + 20
    m = during
    while time.time() < deadline:
        m = srv.metrics()
        if m["quiver_kv_pages_used"] == 0 and m["quiver_running_sequences"] == 0:
            break
        time.sleep(0.1)
    check(m["quiver_kv_pages_used"] == 0 and m["quiver_running_sequences"] == 0,
          f"disconnect mid-stream frees the {n} sequence(s) and their KV pages")
    check(srv.raw("GET", "/health")[0] == 200, "healthy after the disconnect")
    deadline = time.time() + 5  # the line may reach the log after the pages came back
    while time.time() < deadline and not any("client disconnected" in l for l in srv.lines):
        time.sleep(0.05)
    check(any("client disconnected" in line for line in srv.lines),
          "the disconnect is logged")


def run_concurrency_test(srv):
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    prompts = [f"Fact number {i} about the ocean:" for i in range(8)] + \
              [f"def function_{i}(x):" for i in range(8)]
    solo = [client.completions.create(model=base, prompt=p, max_tokens=24,
                                      temperature=0).choices[0].text for p in prompts]
    results = [None] * 16

    def worker(i):
        try:
            results[i] = stream_text(client, "completions", model=base, prompt=prompts[i],
                                     max_tokens=24, temperature=0)[0]
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    peak = [0]

    def watch():
        while any(t.is_alive() for t in threads):
            try:
                peak[0] = max(peak[0], srv.metrics()["quiver_running_sequences"])
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.05)

    for t in threads:
        t.start()
    w = threading.Thread(target=watch)
    w.start()
    for t in threads:
        t.join(300)
    w.join()
    same = sum(1 for a, b in zip(results, solo) if a == b)
    check(same == 16, f"16 concurrent streams equal their solo greedy outputs ({same}/16)")
    for i, (a, b) in enumerate(zip(results, solo)):
        if a != b:
            print(f"  stream {i}: {a!r}\n  solo   {i}: {b!r}")
    check(peak[0] > 1, f"requests were batched together (peak running {peak[0]:.0f})")


def run_drain_test(srv):
    client = srv.client()
    base = os.path.basename(MODEL)[:-len(".gguf")]
    out = {}

    def inflight():
        try:
            # 256 tokens without EOS: long enough (over a second) that the server is still
            # draining when /ready and a new request are tried below
            out["r"] = stream_text(client, "completions", model=base,
                                   prompt="The history of the printing press", max_tokens=256,
                                   temperature=0, stream_options={"include_usage": True},
                                   extra_body={"ignore_eos": True})
        except Exception as e:  # noqa: BLE001
            out["r"] = e

    t = threading.Thread(target=inflight)
    t.start()
    deadline = time.time() + 20
    while time.time() < deadline and srv.metrics()["quiver_running_sequences"] == 0:
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    st = srv.raw("GET", "/ready", key=None)[0]
    check(st == 503, f"/ready is 503 while draining ({st})")
    expect_error(srv, "new request while draining", 503, "POST", "/v1/completions",
                 {"prompt": "x", "max_tokens": 2})
    t.join(120)
    r = out.get("r")
    ok = isinstance(r, tuple) and r[1] in ("length", "stop") and r[2] is not None
    check(ok and r[2].completion_tokens > 0,
          f"in-flight stream finished during drain: {r if not ok else r[1]}")
    rc = srv.stop(timeout=60, send=False)  # the SIGTERM above is the only one
    check(rc == 0, f"exit status 0 after drain ({rc})")


def run_queue_limit_test():
    srv = Server("--queue-limit", "0")
    try:
        h = expect_error(srv, "queue full", 429, "POST", "/v1/completions",
                         {"prompt": "x", "max_tokens": 2}, key=None)
        check(h.get("Retry-After") is not None, "429 carries Retry-After")
        expect_error(srv, "more choices than the queue holds: 400, not a retry", 400, "POST",
                     "/v1/completions", {"prompt": "x", "max_tokens": 2, "n": 2}, key=None,
                     param="n")
    finally:
        rc = srv.stop()
    check(rc == 0, f"idle server exits 0 on SIGTERM ({rc})")


if __name__ == "__main__":
    sys.exit(main())
