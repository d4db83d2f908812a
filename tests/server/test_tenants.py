#!/usr/bin/env python3
"""test_tenants.py - tenants of --api-keys-file over HTTP: fair share, priorities, rate limits,
the in-flight cap, their metrics, and malformed policies.

Setup: `quiver serve` on SmolLM2-135M-Instruct Q4_1 with --max-seqs 1, so requests run one at
a time and the order in which they start streaming is the order the server admitted them.
Every generation is greedy with ignore_eos (each runs its full max_tokens).

1. Fair share. Tenant a sends a long streamed request, then (once it streams) 5 more, one at a
   time; once those wait, tenant b (two keys of one tenant) sends 2, one at a time. Strict
   arrival order would run b's after all of a's (6th and 7th of 8). The virtual token counters
   must run b's first request right after a's running one (2nd) and its second one by the 4th;
   each tenant's requests keep their own arrival order (the server's request counter in the
   completion ids). Each request is sent once the previous one waits: requests sent at once
   have no order between them.
2. Priorities. While a blocker of tenant a runs: tenant batch (priority=5 in the file, so its
   requests default to 5) sends 2 requests, then the main key sends one with "priority": 10,
   then tenant a sends one with the default priority 0, then batch one with "priority": 7.
   Admission order after the blocker: a (0), batch, batch (5), batch (7), main (10).
   Tenant batch asking for "priority": 4 is 403 permission_denied (param priority); the main
   key (no floor) may ask for -5; a priority that is not an integer is 400.
3. Limits. rpm=2: 2 requests pass, the 3rd is 429 rate_limit_exceeded with Retry-After about
   30 s. tpm=6: one request of ~5 prompt + 60 generated tokens puts the bucket deep in debt, the
   next is 429 rate_limit_exceeded naming tokens per minute. max_inflight=1: a 2nd request
   while one streams is 429 concurrency_limit_exceeded; after it ends, the next passes.
4. Metrics: per-tenant accepted and refused counts, generated tokens, in-flight back to 0.
5. SIGHUP re-reads the file: a removed key is 401 at once while its stream in flight finishes,
   a new key and a raised rpm apply, the tenants' counters survive; a malformed file leaves the
   previous keys in place (logged).
6. Malformed files stop start-up with the file and line in the message: an unknown option,
   conflicting values for one tenant, a bad tenant name, a key listed twice.

Against a sanitizer build (~30x slower) the same checks run with fewer generated tokens.
Usage: test_tenants.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
KEYS = """# tenants of the test
key-a        tenant=a
key-b1       tenant=b
key-b2       tenant=b weight=1   # a second key of tenant b
key-batch    tenant=batch priority=5
key-rpm      tenant=limited rpm=2
key-tpm      tenant=tokens tpm=6
key-one      tenant=one max_inflight=1
"""


def is_sanitized(path):
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def stream(srv, key, prompt, n, out, priority=None):
    """Streams one greedy completion with `key`; fills out: t_first (first data frame),
    t_done, status, text, error body."""
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True,
            "stream": True}
    if priority is not None:
        body["priority"] = priority
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    r = c.getresponse()
    out["status"] = r.status
    out["headers"] = dict(r.getheaders())
    if r.status != 200:
        out["body"] = r.read()
        c.close()
        return
    text = []
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        out.setdefault("t_first", time.monotonic())
        if line == "data: [DONE]":
            break
        chunk = json.loads(line[6:])
        out.setdefault("id", chunk["id"])
        out.setdefault("rank", int(chunk["id"].split("-", 1)[1][8:], 16))  # arrival counter
        for ch in chunk["choices"]:
            text.append(ch.get("text") or "")
    out["t_done"] = time.monotonic()
    out["text"] = "".join(text)
    c.close()


def start(srv, key, prompt, n, priority=None):
    out = {}
    th = threading.Thread(target=stream, args=(srv, key, prompt, n, out, priority))
    th.start()
    return th, out


def wait_streaming(out, timeout=300):
    t0 = time.monotonic()
    while "t_first" not in out and "status" not in out or (
            out.get("status") == 200 and "t_first" not in out):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("request did not start streaming")
        time.sleep(0.005)


def wait_queued(srv, n, timeout=60):
    """Waits until the server reports n requests waiting (quiver_queue_depth)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if srv.metrics().get("quiver_queue_depth", 0) >= n:
            return True
        time.sleep(0.01)
    return False


def order(srv, named, timeout=30):
    """Names in the order the server ran them. With --max-seqs 1 one request runs at a time,
    so the order of the server's per-request log lines (written as each answer ends) is the
    order of admission; the clients' own clocks would add their threads' scheduling delays."""
    t0 = time.monotonic()
    while True:
        at = {}
        for i, line in enumerate(list(srv.lines)):
            for k, o in named.items():
                if f" request {o['id']} " in line:
                    at[k] = i
        if len(at) == len(named) or time.monotonic() - t0 > timeout:
            return sorted(named, key=lambda k: at.get(k, len(srv.lines)))
        time.sleep(0.05)


def gen(srv, key, n=1, priority=None, prompt="Hello"):
    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True}
    if priority is not None:
        body["priority"] = priority
    st, hdrs, data = srv.raw("POST", "/v1/completions", body, key=key)
    return st, hdrs, json.loads(data)


def fair_share(srv, n_tok):
    # a0 runs long enough for everyone else to queue behind it
    a = [start(srv, "key-a", "Story number 0:", n_tok * 12)]
    wait_streaming(a[0][1])
    # One at a time, each once the previous one waits: requests sent at once reach the queue
    # in whichever order the server's HTTP threads finish parsing them, so only a sequence
    # has an arrival order to keep.
    for i in range(1, 6):
        a.append(start(srv, "key-a", f"Story number {i}:", n_tok))
        check(wait_queued(srv, i), f"a's request {i} waits")
    b = []
    for i, key in enumerate(("key-b1", "key-b2")):
        b.append(start(srv, key, f"Poem number {i}:", n_tok))
        check(wait_queued(srv, 6 + i), f"b's request {i} waits")
    check("t_done" not in a[0][1], "a's first request still runs when b's requests wait")
    for th, _ in a + b:
        th.join(600)
    named = {f"a{i}": o for i, (_, o) in enumerate(a)}
    named.update({f"b{i}": o for i, (_, o) in enumerate(b)})
    ok = all(o.get("status") == 200 and "t_first" in o for o in named.values())
    check(ok, f"fair share: all 8 requests stream ({[o.get('status') for o in named.values()]})")
    if not ok:
        return
    got = order(srv, named)
    print(f"fair share: admission order {got} (arrival order a0..a5, b0, b1)")
    b_got = [x for x in got if x[0] == "b"]
    check(got[1] == b_got[0], f"b's first request runs right after a's running one ({got})")
    check(got.index(b_got[1]) <= 3, f"b's second request runs by the 4th ({got})")
    for t in "ab":
        t_got = [x for x in got if x[0] == t]
        t_arrival = sorted(t_got, key=lambda x: named[x]["rank"])
        check(t_got == t_arrival,
              f"{t}'s requests keep their arrival order at the server ({t_arrival})")


def priorities(srv, n_tok):
    blocker = start(srv, "key-a", "Blocker:", n_tok * 4)
    wait_streaming(blocker[1])
    jobs = {}
    for name, key, prio in (("batch0", "key-batch", None), ("batch1", "key-batch", None),
                            ("main10", T.KEY, 10), ("a0", "key-a", None),
                            ("batch7", "key-batch", 7)):
        jobs[name] = start(srv, key, f"Request {name}:", n_tok, prio)
        check(wait_queued(srv, len(jobs)), f"{name} queued")
    for th, _ in list(jobs.values()) + [blocker]:
        th.join(600)
    named = {k: o for k, (_, o) in jobs.items()}
    ok = all(o.get("status") == 200 and "t_first" in o for o in named.values())
    check(ok, f"priorities: all 5 stream ({[o.get('status') for o in named.values()]})")
    if ok:
        got = order(srv, named)
        print(f"priorities: admission order {got}")
        check(got == ["a0", "batch0", "batch1", "batch7", "main10"],
              f"priority order 0, 5, 5, 7, 10 (arrival order within a priority): {got}")
    st, _, body = gen(srv, "key-batch", priority=4)
    check(st == 403 and body["error"]["code"] == "permission_denied"
          and body["error"]["param"] == "priority",
          f"a tenant asking for a priority above its floor is 403 ({st} {body})")
    check(gen(srv, "key-batch", priority=5)[0] == 200, "its floor itself is fine")
    check(gen(srv, T.KEY, priority=-5)[0] == 200, "the main key may ask for any priority")
    st, _, body = gen(srv, "key-a", priority=1.5)
    check(st == 400 and body["error"]["param"] == "priority",
          f"a priority that is not an integer is 400 ({st})")


def limits(srv):
    res = [gen(srv, "key-rpm") for _ in range(3)]
    check([r[0] for r in res] == [200, 200, 429], f"rpm=2: 200, 200, 429 ({[r[0] for r in res]})")
    st, hdrs, body = res[2]
    ra = int(hdrs.get("Retry-After", "0"))
    check(body["error"]["code"] == "rate_limit_exceeded" and 25 <= ra <= 31
          and "requests per minute" in body["error"]["message"]
          and body["error"]["type"] == "rate_limit_error",
          f"rpm refusal: rate_limit_exceeded, Retry-After {ra} s ({body['error']['message']})")

    st, _, body = gen(srv, "key-tpm", n=60, prompt="Tell me about the sea")
    used = body.get("usage", {}).get("total_tokens", 0) if st == 200 else 0
    check(st == 200 and used > 60, f"tpm=6: a request of {used} tokens passes")
    st, hdrs, body = gen(srv, "key-tpm")
    ra = int(hdrs.get("Retry-After", "0"))
    check(st == 429 and body["error"]["code"] == "rate_limit_exceeded"
          and "tokens per minute" in body["error"]["message"] and ra >= 1,
          f"tpm: the next request is 429 until the debt is paid ({st}, Retry-After {ra})")

    th, out = start(srv, "key-one", "A long story:", 64)
    wait_streaming(out)
    st, hdrs, body = gen(srv, "key-one")
    check(st == 429 and body["error"]["code"] == "concurrency_limit_exceeded"
          and hdrs.get("Retry-After") == "1",
          f"max_inflight=1: a second request while one streams is 429 ({st} {body})")
    th.join(600)
    check(out.get("status") == 200, "the streaming one finished")
    check(gen(srv, "key-one")[0] == 200, "after it, the next one passes")


def metrics(srv):
    m = srv.metrics()
    get = lambda name, **lab: m.get(name + "{" + ",".join(  # noqa: E731
        f'{k}="{v}"' for k, v in lab.items()) + "}", -1)
    check(get("quiver_tenant_requests_total", tenant="a") == 8,
          f"tenant a: 8 accepted requests ({get('quiver_tenant_requests_total', tenant='a')})")
    check(get("quiver_tenant_refused_total", tenant="limited", reason="rpm") == 1,
          "tenant limited: one rpm refusal")
    check(get("quiver_tenant_refused_total", tenant="tokens", reason="tpm") == 1,
          "tenant tokens: one tpm refusal")
    check(get("quiver_tenant_refused_total", tenant="one", reason="max_inflight") == 1,
          "tenant one: one max_inflight refusal")
    check(get("quiver_tenant_generation_tokens_total", tenant="tokens") == 60,
          f"tenant tokens: 60 generated tokens "
          f"({get('quiver_tenant_generation_tokens_total', tenant='tokens')})")
    inflight = {k: v for k, v in m.items() if k.startswith("quiver_tenant_inflight")}
    check(inflight and all(v == 0 for v in inflight.values()),
          f"nothing in flight at the end ({inflight})")
    check(get("quiver_tenant_virtual_tokens", tenant="b") > 0, "b's fair-share counter grew")
    check(get("quiver_tenant_requests_total", tenant="default") >= 2,
          "the main key counts as tenant default")


def wait_log(srv, text, n, timeout=30):
    """Waits until `text` appears in n server log lines."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if sum(text in ln for ln in srv.lines) >= n:
            return True
        time.sleep(0.02)
    return False


def reload(srv, kf):
    """SIGHUP re-reads the keys file: a removed key is 401 at once while its stream in flight
    finishes, a new key and a changed policy apply, the tenants' counters survive; a file
    that does not load changes nothing."""
    th, out = start(srv, "key-one", "A long story:", 64)
    wait_streaming(out)
    before = srv.metrics()
    with open(kf, "w") as f:
        f.write(KEYS.replace("key-one ", "# key-one removed ")
                .replace("tenant=limited rpm=2", "tenant=limited rpm=6000")
                + "key-new tenant=newbie max_inflight=1\n")
    srv.proc.send_signal(signal.SIGHUP)
    check(wait_log(srv, "SIGHUP: --api-keys-file re-read", 1), "SIGHUP: the keys file re-read")
    check(any("tenant newbie: weight 1, rpm none, tpm none, max_inflight 1" in ln
              for ln in srv.lines), "the new tenant's policy logged")
    check(gen(srv, "key-one")[0] == 401, "a removed key is 401 at once")
    th.join(600)
    check(out.get("status") == 200 and "t_done" in out,
          "its stream that was in flight finished")
    check(gen(srv, "key-new")[0] == 200, "a new key works")
    time.sleep(0.1)  # the bucket kept what was left (empty): 100 requests/s refill it
    res = [gen(srv, "key-rpm")[0] for _ in range(5)]
    check(res == [200] * 5, f"the raised rpm applies ({res})")
    after = srv.metrics()
    lab = 'quiver_tenant_requests_total{tenant="a"}'
    check(after[lab] == before[lab], "tenant counters survive the reload")
    check(after['quiver_tenant_inflight{tenant="one"}'] == 0,
          "the removed key's tenant has nothing in flight")

    with open(kf, "w") as f:
        f.write("key-x tenant=x rpm=oops\n")
    srv.proc.send_signal(signal.SIGHUP)
    check(wait_log(srv, "SIGHUP: --api-keys-file not re-read, the previous keys stay", 1),
          "a malformed file is refused with a message")
    check(gen(srv, "key-new")[0] == 200 and gen(srv, "key-x")[0] == 401,
          "the previous keys stay")


def malformed(kf):
    for text, why in (("k1 tenant=x burst=3\n", "1: unknown option 'burst=3'"),
                      ("k1 tenant=x rpm=5\nk2 tenant=x rpm=6\n", "2: tenant 'x' has rpm=5"),
                      ("k1 tenant=no/slash\n", "1: 'no/slash' is not a valid tenant name"),
                      ("k1\nk1 pir*\n", "2: the key is listed twice"),
                      ("k1 pir* rpm=5\n", "1: 'rpm=5' needs a tenant: add tenant=NAME"),
                      ("k1 tenant=default rpm=5\n", "1: tenant 'default' has no limits")):
        with open(kf, "w") as f:
            f.write(text)
        r = subprocess.run([T.QUIVER, "serve", "--model", T.MODEL, "--port", "0",
                            "--api-keys-file", kf], capture_output=True, text=True, timeout=120)
        check(r.returncode != 0 and why in r.stderr and kf in r.stderr,
              f"keys file refused at start-up: {why!r} (rc {r.returncode}: "
              f"{r.stderr.strip()[-160:]!r})")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    n_tok = 6 if is_sanitized(T.QUIVER) else 16
    kdir = tempfile.mkdtemp(prefix="quiver-tenants-")
    try:
        kf = os.path.join(kdir, "keys")
        with open(kf, "w") as f:
            f.write(KEYS)
        srv = T.Server("--api-key", T.KEY, "--api-keys-file", kf, "--max-seqs", "1")
        try:
            check(any("--api-keys-file: 7 keys (0 limited to some adapters, 0 managing adapters), 6 tenants" in ln
                      for ln in srv.lines), "start-up line counts keys and tenants")
            check(any("tenant batch: weight 1, rpm none, tpm none, max_inflight none, "
                      "priority >= 5" in ln for ln in srv.lines), "start-up line per tenant")
            fair_share(srv, n_tok)
            priorities(srv, n_tok)
            limits(srv)
            metrics(srv)
            reload(srv, kf)
        finally:
            check(srv.stop() == 0, "server exits 0")
        malformed(kf)
    finally:
        shutil.rmtree(kdir, ignore_errors=True)
    return T.report([srv])


if __name__ == "__main__":
    sys.exit(main())
