#!/usr/bin/env python3
"""test_sched.py - scheduling over HTTP: no adapter starves under skewed load (bounded wait,
measured), and preemption by recompute when the KV cache runs out is invisible to clients.

Setup: `quiver serve` on SmolLM2-135M-Instruct Q4_1 with its own temporary adapter store and
five preloaded adapters: the hot one (demo LoRA "pirate") and three cold ones (demo LoRA
"shouting", the fixture LoRA lora_r8_all and the fixture prefix-tuning adapter prefix_nvt8,
whose K/V live in shared, refcounted KV pages), plus the base model. Every (model, prompt,
max_tokens) used below is first run alone, greedy, non-streamed: its "solo" output.

1. Bounded wait (server A: --max-seqs 4, default KV). 40 streamed greedy completions, 34 on
   the hot adapter (85%) and 6 spread over the 3 cold adapters and the base model, placed at
   fixed ranks through the burst (the last one is the 39th arrival), all sent within ~0.2 s
   (5 ms apart, so their arrival order is known); most of them wait. For request i:
     wait_i    = time from sending it to its first streamed token (its queue wait + prefill),
     service_i = time from its first to its last token,
     rank_i    = its arrival rank at the server (0-based, from the server's request-id counter),
     S         = max_i service_i over the same burst (the longest single-request service time
                 measured in this run).
   Asserted for every cold-adapter and base request:
     wait_i <= (rank_i / max_seqs + 2) * S
   i.e. it waits at most for the requests that arrived before it, max_seqs at a time, plus two
   service times of slack (its own prefill, a slot turning over, client/thread jitter). A
   scheduler that let the hot adapter's queue overtake (e.g. grouping by adapter) would push
   the late cold requests to the end and break the bound. Every request must also return the
   full text of its solo run. The same bound is reported for the hot requests.
2. Preemption (server B: --kv-mb 5, i.e. 7 pages of 16 tokens = 112 tokens, --max-seqs 4,
   --log-level debug). 16 streamed requests over all five models whose solo runs each fit the
   cache but, four at a time, need about twice its pages: every one returns 200 with text
   identical to its solo output, the server logged preemptions (engine debug line "preempted
   sequence") and /metrics' quiver_preemptions_total grew, and every
   KV page is free at the end.

Against a sanitizer build of quiver (ASan/TSan, ~30x slower) the same checks run on a smaller
load: 20 burst requests of 8 tokens (17 hot = 85%, cold ranks 4, 12 and 19), and 8 preemption
requests of 24 tokens in --kv-mb 3 (4 pages).

Usage: test_sched.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import openai  # noqa: E402
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

ROOT = T.ROOT
FIX = os.path.join(ROOT, "tests", "fixtures", "adapters", "smollm2")
DEMO = os.path.join(ROOT, "deploy", "demo-adapters")
check = T.check

MAX_SEQS = 4
HOT = "pirate"
COLD = ["shouting", "lora-r8-all", "prefix-nvt8"]
ADAPTERS = {"pirate": os.path.join(DEMO, "pirate"), "shouting": os.path.join(DEMO, "shouting"),
            "lora-r8-all": os.path.join(FIX, "lora_r8_all"),
            "prefix-nvt8": os.path.join(FIX, "prefix_nvt8")}
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,",
           "The three most important things about the ocean are",
           "def fibonacci(n):", "My favourite recipe for pancakes starts with",
           "In 1969, the first humans"]
# Full run (release build). A sanitizer build of quiver is ~30x slower: it gets the same checks
# on a smaller load (SANITIZED below) so that the test still finishes in about two minutes.
FULL = dict(n_burst=40, burst_tokens=24, cold_ranks={3: "shouting", 11: "lora-r8-all",
                                                     19: "prefix-nvt8", 27: None, 33: "shouting",
                                                     39: "prefix-nvt8"},
            n_preempt=16, preempt_tokens=48, kv_mb=5, timeout_s=120)
SANITIZED = dict(n_burst=20, burst_tokens=8, cold_ranks={4: "shouting", 12: "prefix-nvt8",
                                                         19: None},
                 n_preempt=8, preempt_tokens=24, kv_mb=3, timeout_s=600)
STAGGER_S = 0.005


def is_sanitized(path):
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def base_name():
    return os.path.basename(T.MODEL)[:-len(".gguf")]


def solo_text(srv, model, prompt, n):
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0}
    st, _, data = srv.raw("POST", "/v1/completions", body)
    if st != 200:
        raise RuntimeError(f"solo {model} {prompt!r}: HTTP {st} {data[:200]!r}")
    return json.loads(data)["choices"][0]["text"]


def id_rank(rid):
    """The server's arrival counter inside a completion id 'cmpl-<created hex8><n hex>'."""
    return int(rid.split("-", 1)[1][8:], 16)


def burst(srv, jobs, stagger, timeout_s):
    """Streams every (model, prompt, max_tokens) job from its own thread, job i sent i*stagger
    after a common start. Returns per job a dict: t_send, t_first, t_done, text, finish, id,
    error."""
    out = [dict() for _ in jobs]
    start = threading.Barrier(len(jobs) + 1)

    def work(i, model, prompt, n):
        r = out[i]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{srv.port}/v1", api_key=T.KEY,
                               max_retries=0, timeout=timeout_s)
        start.wait()
        time.sleep(i * stagger)
        r["t_send"] = time.monotonic()
        parts = []
        try:
            for chunk in client.completions.create(model=model, prompt=prompt, max_tokens=n,
                                                   temperature=0, stream=True):
                now = time.monotonic()
                r["id"] = chunk.id
                for ch in chunk.choices:
                    if "t_first" not in r:
                        r["t_first"] = now
                    if ch.text:
                        parts.append(ch.text)
                    if ch.finish_reason:
                        r["finish"] = ch.finish_reason
            r["t_done"] = time.monotonic()
            r["text"] = "".join(parts)
        except Exception as e:  # noqa: BLE001 - reported as a failed request
            r["error"] = repr(e)

    threads = [threading.Thread(target=work, args=(i, *j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join(300)
    return out


def bounded_wait(servers, cfg):
    srv = T.Server(*preload_args(), "--max-seqs", str(MAX_SEQS))
    servers.append(srv)
    base = base_name()
    jobs, kinds = [], []
    n_hot, n = 0, cfg["n_burst"]
    for i in range(n):
        if i in cfg["cold_ranks"]:
            m = cfg["cold_ranks"][i]
            jobs.append((m or base, PROMPTS[i % len(PROMPTS)], cfg["burst_tokens"]))
            kinds.append(m or "base")
        else:
            jobs.append((HOT, PROMPTS[n_hot % len(PROMPTS)], cfg["burst_tokens"]))
            kinds.append(HOT)
            n_hot += 1
    check(n_hot >= 0.85 * n and n - 1 in cfg["cold_ranks"],
          f"skew: {n_hot} of {n} requests on '{HOT}', the last arrival on a cold one")
    # Solo outputs; this also loads every adapter, so no cold load falls inside the burst.
    solo = {}
    for j in set(jobs):
        solo[j] = solo_text(srv, *j)
    res = burst(srv, jobs, STAGGER_S, cfg["timeout_s"])
    ok = [r for r in res if "error" not in r and "t_first" in r and "id" in r]
    check(len(ok) == len(jobs), f"all {len(jobs)} burst requests streamed to the end "
          f"({[r.get('error') for r in res if 'error' in r][:2]})")
    if len(ok) != len(jobs):
        return
    same = sum(1 for j, r in zip(jobs, res) if r["text"] == solo[j])
    check(same == len(jobs), f"every burst request equals its solo greedy output ({same}/{n})")
    ranks = sorted(id_rank(r["id"]) for r in res)
    for r in res:
        r["rank"] = ranks.index(id_rank(r["id"]))
        r["wait"] = r["t_first"] - r["t_send"]
        r["service"] = r["t_done"] - r["t_first"]
    # The ranks follow the sending order (5 ms apart): the bound below uses the server's.
    inversions = sum(1 for i in range(1, len(res)) if res[i]["rank"] < res[i - 1]["rank"])
    S = max(r["service"] for r in res)
    print(f"burst: longest service S = {S:.3f} s; arrival-order inversions vs sending order: "
          f"{inversions}")
    worst_hot = 0.0
    for i, (r, kind) in enumerate(zip(res, kinds)):
        bound = (r["rank"] / MAX_SEQS + 2) * S
        if kind == HOT:
            worst_hot = max(worst_hot, r["wait"] / bound)
            continue
        print(f"  {kind:12s} sent #{i:2d} rank {r['rank']:2d}: wait {r['wait']:.3f} s, "
              f"service {r['service']:.3f} s, bound {bound:.3f} s")
        check(r["wait"] <= bound,
              f"{kind} request (rank {r['rank']}) waited {r['wait']:.3f} s <= "
              f"(rank/{MAX_SEQS} + 2) * S = {bound:.3f} s")
    hot = [r["wait"] for r, k in zip(res, kinds) if k == HOT]
    cold = [r["wait"] for r, k in zip(res, kinds) if k != HOT]
    print(f"burst: hot waits mean {sum(hot) / len(hot):.3f} s max {max(hot):.3f} s; "
          f"cold/base waits mean {sum(cold) / len(cold):.3f} s max {max(cold):.3f} s; "
          f"hot requests' worst wait/bound ratio {worst_hot:.2f}")
    # Requests really waited: the last arrivals waited for several service rounds.
    check(res[-1]["wait"] > S, f"the last arrival waited behind the others "
          f"({res[-1]['wait']:.3f} s > S {S:.3f} s)")
    srv.stop()


def preemption(servers, cfg):
    srv = T.Server(*preload_args(), "--max-seqs", str(MAX_SEQS), "--kv-mb", str(cfg["kv_mb"]),
                   "--log-level", "debug")
    servers.append(srv)
    log = "".join(srv.lines)
    m = re.search(r"kv \d+ MiB = (\d+) pages x (\d+) tokens", log)
    check(m is not None, "server B prints its KV pages")
    if not m:
        return
    pages, page = int(m.group(1)), int(m.group(2))
    base = base_name()
    models = [HOT] + COLD + [base]
    n = cfg["n_preempt"]
    jobs = [(models[i % len(models)], PROMPTS[(i * 5 + 1) % len(PROMPTS)], cfg["preempt_tokens"])
            for i in range(n)]
    solo = {}
    for j in set(jobs):
        solo[j] = solo_text(srv, *j)
    mets = srv.metrics()
    pre0 = mets.get("quiver_preemptions_total")
    res = burst(srv, jobs, 0.0, cfg["timeout_s"])
    errors = [r.get("error") for r in res if "error" in r]
    check(not errors, f"small KV ({pages} pages x {page} tokens): all {n} requests return 200 "
          f"({errors[:2]})")
    same = sum(1 for j, r in zip(jobs, res) if r.get("text") == solo[j])
    check(same == len(jobs), f"small KV: every request equals its solo greedy output "
          f"({same}/{n})")
    for j, r in zip(jobs, res):
        if r.get("text") != solo[j]:
            print(f"  {j[0]} {j[1]!r}:\n    burst {r.get('text')!r}\n    solo  {solo[j]!r}")
    time.sleep(0.2)
    n_logged = sum(1 for line in srv.lines if "preempted sequence" in line)
    mets = srv.metrics()
    print(f"small KV: {n_logged} preemptions logged; quiver_preemptions_total "
          f"{mets.get('quiver_preemptions_total')} (before the burst {pre0})")
    check(n_logged > 0, f"small KV: the engine preempted ({n_logged} preemptions logged)")
    check(mets.get("quiver_preemptions_total", 0) - (pre0 or 0) > 0,
          "small KV: /metrics quiver_preemptions_total grew")
    # The gauges follow the engine step that retired the last sequence, which may come just
    # after its answer reached the client.
    deadline = time.time() + 5
    while mets.get("quiver_kv_pages_used", -1) != 0 and time.time() < deadline:
        time.sleep(0.05)
        mets = srv.metrics()
    check(mets.get("quiver_kv_pages_used", -1) == 0, "small KV: every KV page is free at the end")
    srv.stop()


def preload_args():
    out = []
    for name, d in ADAPTERS.items():
        out += ["--preload", f"{name}={d}"]
    return out


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    servers = []
    t0 = time.monotonic()
    cfg = SANITIZED if is_sanitized(T.QUIVER) else FULL
    if cfg is SANITIZED:
        print("sanitizer build: the smaller load")
    try:
        bounded_wait(servers, cfg)
        preemption(servers, cfg)
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
    reports = [l for s in servers for l in s.lines if "Sanitizer" in l or "runtime error:" in l]
    check(not reports, f"no sanitizer report from the servers ({reports[:1]})")
    print(f"test_sched: {time.monotonic() - t0:.1f} s")
    if T.failures:
        print(f"{len(T.failures)} check(s) failed")
        for s in servers:
            print("server log tail:\n" + "".join(s.lines[-20:]))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
