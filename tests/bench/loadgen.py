#!/usr/bin/env python3
"""loadgen.py - load generator for an OpenAI-compatible completions server (quiver serve).

Subcommands:
  run     one workload against one server. Open loop (default): arrivals Poisson, or Gamma with
          a coefficient of variation (--cv; cv 1 = Poisson), sent on schedule whether or not
          earlier requests finished. Burst (--burst N): closed loop, N requests sent at once,
          the next round only after all N finished (--rounds R).
  pair    the same burst, interleaved round by round over several servers (A B, B A, A B ...,
          BENCH.md 7.3), with the per-round ratio of the first target's aggregate throughput to
          each other target's; median, min and max of those ratios.
  report  merges JSON files written by run/pair into one JSON and one PNG (latency CDFs and
          throughput bars) and prints a short table.

Requests: POST /v1/completions with stream=true and stream_options.include_usage, so TTFT
(first streamed text), TPOT ((e2e - TTFT) / (completion tokens - 1)) and inter-token gaps are
measured per request, and the token counts come from the server's usage chunk. The adapter is
named by `model`. Adapter popularity: uniform, zipf:S (rank k has weight 1/k^S) or distinct
(request i -> adapter i mod N). Prompts are drawn from a word list (about one token per word
for this vocabulary); output lengths set max_tokens. --ignore-eos sends vLLM's `ignore_eos`
(quiver and vLLM accept it) so every request runs to max_tokens; otherwise the actual token
counts are what is reported.

Not here: starting servers, tokenizing (lengths are approximate), non-streaming requests.
Deterministic: the request list depends only on --seed and the distributions.
"""
import argparse
import asyncio
import json
import math
import os
import sys
import time

import numpy as np

WORDS = (
    "the river stone window garden music light morning story city market bridge winter summer "
    "forest mountain ocean island village road train station letter friend teacher student "
    "kitchen table chair paper pencil book library museum painting color orange yellow green "
    "blue purple silver golden quiet loud bright dark warm cold early late small large "
    "ancient modern simple careful gentle strong brave clever happy tired hungry curious "
    "walk run build write read sing dance paint cook travel listen remember discover explain "
    "carry follow gather open close begin finish answer question reason number pattern "
    "machine engine signal system network energy water fire earth wind cloud rain snow sun "
    "moon star planet field farm harbor tower castle door wall roof floor street corner "
    "evening night day week year history science language picture voice sound silence idea "
    "plan journey adventure mystery lesson promise memory dream message secret treasure map "
    "shadow mirror candle lantern blanket basket bottle coffee bread apple honey salt sugar"
).split()


# ---------------------------------------------------------------------------------------------
# Workload description


def parse_dist(spec):
    """'fixed:N', 'uniform:LO:HI' (inclusive) or 'lognormal:MEDIAN:SIGMA[:MAX]' -> dict."""
    parts = spec.split(":")
    kind = parts[0]
    try:
        nums = [float(x) for x in parts[1:]]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad length distribution '{spec}'")
    if kind == "fixed" and len(nums) == 1 and nums[0] >= 1:
        return {"kind": "fixed", "n": int(nums[0])}
    if kind == "uniform" and len(nums) == 2 and 1 <= nums[0] <= nums[1]:
        return {"kind": "uniform", "lo": int(nums[0]), "hi": int(nums[1])}
    if kind == "lognormal" and len(nums) in (2, 3) and nums[0] >= 1 and nums[1] >= 0:
        mx = int(nums[2]) if len(nums) == 3 else int(8 * nums[0])
        return {"kind": "lognormal", "median": nums[0], "sigma": nums[1], "max": mx}
    raise argparse.ArgumentTypeError(
        f"bad length distribution '{spec}' (fixed:N, uniform:LO:HI, lognormal:MEDIAN:SIGMA[:MAX])"
    )


def sample_len(rng, d):
    if d["kind"] == "fixed":
        return d["n"]
    if d["kind"] == "uniform":
        return int(rng.integers(d["lo"], d["hi"] + 1))
    x = rng.lognormal(math.log(d["median"]), d["sigma"])
    return int(min(max(1, round(x)), d["max"]))


def parse_popularity(spec):
    if spec in ("uniform", "distinct"):
        return {"kind": spec}
    if spec.startswith("zipf:"):
        s = float(spec[5:])
        if s <= 0:
            raise argparse.ArgumentTypeError("zipf exponent must be > 0")
        return {"kind": "zipf", "s": s}
    raise argparse.ArgumentTypeError(f"bad popularity '{spec}' (uniform, distinct, zipf:S)")


def popularity_weights(pop, n):
    if pop["kind"] == "zipf":
        w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** pop["s"]
    else:
        w = np.ones(n)
    return w / w.sum()


def build_requests(args, n):
    """The deterministic request list: adapter, prompt, max_tokens, arrival offset (open loop)."""
    rng = np.random.default_rng(args.seed)
    adapters = args.adapters
    weights = popularity_weights(args.popularity, len(adapters))
    reqs = []
    t = 0.0
    for i in range(n):
        if args.popularity["kind"] == "distinct":
            adapter = adapters[i % len(adapters)]
        else:
            adapter = adapters[int(rng.choice(len(adapters), p=weights))]
        plen = sample_len(rng, args.prompt_len)
        olen = sample_len(rng, args.output_len)
        words = rng.choice(len(WORDS), size=plen)
        prompt = " ".join(WORDS[w] for w in words)
        prompt = prompt[0].upper() + prompt[1:]
        if args.rate and args.rate > 0:
            # Gamma(shape 1/cv^2, scale cv^2/rate): mean 1/rate, cv as given; cv 1 = Poisson.
            k = 1.0 / (args.cv * args.cv)
            t += float(rng.gamma(k, 1.0 / (args.rate * k)))
        reqs.append(
            {"i": i, "adapter": adapter, "prompt": prompt, "prompt_words": plen,
             "max_tokens": olen, "arrival": t, "seed": args.seed + i}
        )
    return reqs


# ---------------------------------------------------------------------------------------------
# HTTP


async def resolve_base(session, url, headers):
    async with session.get(url + "/v1/models", headers=headers) as r:
        r.raise_for_status()
        data = await r.json()
    for m in data.get("data", []):
        if "adapter" not in m:
            return m["id"]
    return data["data"][0]["id"]


async def send_one(session, url, headers, req, args, base_name):
    """Sends one streaming completion; returns a record with timings (seconds) and counts."""
    model = base_name if req["adapter"] in ("", "base", base_name) else req["adapter"]
    body = {
        "model": model,
        "prompt": req["prompt"],
        "max_tokens": req["max_tokens"],
        "temperature": args.temperature,
        "seed": req["seed"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if args.ignore_eos:
        body["ignore_eos"] = True
    rec = {"i": req["i"], "adapter": req["adapter"], "max_tokens": req["max_tokens"],
           "status": None, "error": None, "ttft": None, "e2e": None, "tpot": None,
           "prompt_tokens": None, "completion_tokens": 0, "finish_reason": None, "itl": []}
    t0 = time.perf_counter()
    rec["t_send"] = t0
    last = None
    chunks = 0
    try:
        async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
            rec["status"] = r.status
            if r.status != 200:
                txt = await r.text()
                rec["error"] = f"http {r.status}: {txt[:200]}"
                rec["t_end"] = time.perf_counter()
                return rec
            done = False
            async for raw in r.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                msg = json.loads(payload)
                if "error" in msg:
                    rec["error"] = "stream error: " + json.dumps(msg["error"])[:200]
                    break
                if msg.get("usage"):
                    rec["prompt_tokens"] = msg["usage"].get("prompt_tokens")
                    rec["completion_tokens"] = msg["usage"].get("completion_tokens", 0)
                for ch in msg.get("choices", []):
                    if ch.get("text"):
                        if rec["ttft"] is None:
                            rec["ttft"] = now - t0
                        elif last is not None:
                            rec["itl"].append(now - last)
                        last = now
                        chunks += 1
                    if ch.get("finish_reason"):
                        rec["finish_reason"] = ch["finish_reason"]
            if not done and rec["error"] is None:
                rec["error"] = "stream ended without [DONE]"
    except (asyncio.TimeoutError, OSError, Exception) as e:  # noqa: B902 (report, never raise)
        rec["error"] = f"{type(e).__name__}: {e}"[:200]
    rec["t_end"] = time.perf_counter()
    rec["e2e"] = rec["t_end"] - t0
    if rec["error"] is None and not rec["completion_tokens"]:
        rec["completion_tokens"] = chunks  # server without include_usage: one chunk per token
    n = rec["completion_tokens"]
    if rec["error"] is None and rec["ttft"] is not None and n > 1:
        rec["tpot"] = (rec["e2e"] - rec["ttft"]) / (n - 1)
    return rec


def make_session(args):
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    return aiohttp.ClientSession(timeout=timeout, connector=conn)


def slo_of(args):
    return (args.slo_ttft, args.slo_tpot if args.slo_tpot > 0 else None)


def auth_headers(args):
    return {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}


def cpu_seconds(pid):
    """utime + stime of a process in seconds (Linux /proc), or None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


async def warmup(session, url, headers, args, base_name, adapters):
    """One short request per adapter, one at a time, so every adapter is loaded (cold loads
    stay out of the measurement)."""
    for a in adapters:
        req = {"i": -1, "adapter": a, "prompt": "Hello there", "max_tokens": 2, "seed": 0}
        rec = await send_one(session, url, headers, req, args, base_name)
        if rec["error"]:
            raise RuntimeError(f"warm-up request on '{a}' at {url} failed: {rec['error']}")


async def run_open(session, url, headers, args, base_name, reqs):
    start = time.perf_counter()

    async def fire(req):
        delay = start + req["arrival"] - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = await send_one(session, url, headers, req, args, base_name)
        rec["lateness"] = rec["t_send"] - (start + req["arrival"])
        return rec

    recs = await asyncio.gather(*(fire(r) for r in reqs))
    return recs, start


async def run_burst_round(session, url, headers, args, base_name, reqs, pid):
    c0 = cpu_seconds(pid)
    start = time.perf_counter()
    recs = await asyncio.gather(*(send_one(session, url, headers, r, args, base_name)
                                  for r in reqs))
    end = time.perf_counter()
    c1 = cpu_seconds(pid)
    rnd = summarize_window(recs, start, end)
    rnd["decode_tok_s"] = decode_rate(recs)
    if c0 is not None and c1 is not None:
        rnd["server_cpu_s"] = c1 - c0
        rnd["output_tok_per_cpu_s"] = rnd["output_tokens"] / max(c1 - c0, 1e-9)
    return recs, rnd


# ---------------------------------------------------------------------------------------------
# Statistics


def pct(values, qs=(50, 90, 99)):
    v = [x for x in values if x is not None]
    if not v:
        return {f"p{q}": None for q in qs} | {"mean": None, "n": 0}
    a = np.asarray(v, dtype=np.float64)
    out = {f"p{q}": float(np.percentile(a, q)) for q in qs}
    out["mean"] = float(a.mean())
    out["n"] = len(v)
    return out


def decode_rate(recs):
    """Aggregate after-first-token rate: tokens after each request's first one, divided by the
    length of the union of the requests' intervals [first token, end]. The wait for each
    request's own first token (its queueing and prefill) is left out, whether requests ran
    together or one after another; prefill of other requests that overlaps them is not."""
    spans = sorted((r["t_send"] + r["ttft"], r["t_end"]) for r in recs
                   if r["error"] is None and r["ttft"] is not None)
    toks = sum(max((r["completion_tokens"] or 0) - 1, 0) for r in recs
               if r["error"] is None and r["ttft"] is not None)
    total, cur_a, cur_b = 0.0, None, None
    for a, b in spans:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return toks / total if total > 0 else None


def summarize_window(recs, start, end):
    ok = [r for r in recs if r["error"] is None]
    out_tok = sum(r["completion_tokens"] or 0 for r in ok)
    in_tok = sum(r["prompt_tokens"] or 0 for r in ok)
    wall = max(end - start, 1e-9)
    return {"wall_s": wall, "requests": len(recs), "ok": len(ok), "output_tokens": out_tok,
            "prompt_tokens": in_tok, "output_tok_s": out_tok / wall,
            "total_tok_s": (out_tok + in_tok) / wall, "req_s": len(ok) / wall}


def summarize(recs, start, end, slo=None):
    """Aggregate figures; `slo` = (TTFT limit s, TPOT limit s or None) adds SLO attainment
    (S-LoRA: TTFT < 6 s) and goodput."""
    s = summarize_window(recs, start, end)
    ok = [r for r in recs if r["error"] is None]
    errors = {}
    for r in recs:
        if r["error"] is not None:
            key = f"http_{r['status']}" if r["status"] not in (None, 200) else r["error"].split(":")[0]
            errors[key] = errors.get(key, 0) + 1
    finish = {}
    for r in ok:
        finish[str(r["finish_reason"])] = finish.get(str(r["finish_reason"]), 0) + 1
    s["errors"] = errors
    s["error_count"] = sum(errors.values())
    s["finish_reasons"] = finish
    s["ttft_s"] = pct([r["ttft"] for r in ok])
    s["tpot_s"] = pct([r["tpot"] for r in ok])
    s["e2e_s"] = pct([r["e2e"] for r in ok])
    s["itl_s"] = pct([x for r in ok for x in r["itl"]])
    s["completion_tokens_per_request"] = pct([r["completion_tokens"] for r in ok])
    s["prompt_tokens_per_request"] = pct([r["prompt_tokens"] for r in ok])
    per_adapter = {}
    for r in recs:
        per_adapter[r["adapter"]] = per_adapter.get(r["adapter"], 0) + 1
    s["requests_per_adapter"] = per_adapter
    if slo is not None:
        ttft_slo, tpot_slo = slo
        good = [r for r in ok if r["ttft"] is not None and r["ttft"] <= ttft_slo
                and (tpot_slo is None or r["tpot"] is None or r["tpot"] <= tpot_slo)]
        s["slo"] = {"ttft_s": ttft_slo, "tpot_s": tpot_slo,
                    "attainment": len(good) / max(len(recs), 1),
                    "goodput_req_s": len(good) / max(end - start, 1e-9)}
    late = [r.get("lateness") for r in recs if r.get("lateness") is not None]
    if late:
        s["send_lateness_s"] = pct(late)
    return s


def slim(recs, t0):
    """Per-request records for the JSON: times relative to the run start, ITLs dropped."""
    out = []
    for r in recs:
        d = {k: v for k, v in r.items() if k not in ("itl", "t_send", "t_end")}
        d["t_send"] = r["t_send"] - t0
        out.append(d)
    return out


def config_of(args, mode):
    return {
        "mode": mode,
        "adapters": args.adapters,
        "popularity": args.popularity,
        "prompt_len_words": args.prompt_len,
        "output_len_max_tokens": args.output_len,
        "rate_req_s": args.rate if mode == "open" else None,
        "cv": args.cv if mode == "open" else None,
        "requests": args.requests,
        "burst": getattr(args, "burst", None),
        "rounds": getattr(args, "rounds", None),
        "temperature": args.temperature,
        "ignore_eos": args.ignore_eos,
        "slo_ttft_s": args.slo_ttft,
        "slo_tpot_s": args.slo_tpot or None,
        "seed": args.seed,
    }


# ---------------------------------------------------------------------------------------------
# Subcommands


async def cmd_run(args):
    headers = auth_headers(args)
    async with make_session(args) as session:
        base = await resolve_base(session, args.url, headers)
        if args.warmup:
            await warmup(session, args.url, headers, args, base, sorted(set(args.adapters)))
        if args.burst:
            reqs = build_requests(args, args.burst)
            all_recs, rounds = [], []
            t0 = time.perf_counter()
            for _ in range(args.rounds):
                recs, rnd = await run_burst_round(session, args.url, headers, args, base, reqs,
                                                  args.server_pid)
                all_recs += recs
                rounds.append(rnd)
            end = time.perf_counter()
            res = summarize(all_recs, t0, end, slo_of(args))
            res["rounds"] = rounds
            res["output_tok_s_rounds"] = pct([r["output_tok_s"] for r in rounds])
            mode = "burst"
        else:
            args.rate = args.rate or 1.0
            reqs = build_requests(args, args.requests)
            c0 = cpu_seconds(args.server_pid)
            all_recs, t0 = await run_open(session, args.url, headers, args, base, reqs)
            end = max(r["t_end"] for r in all_recs)
            res = summarize(all_recs, t0, end, slo_of(args))
            c1 = cpu_seconds(args.server_pid)
            if c0 is not None and c1 is not None:
                res["server_cpu_s"] = c1 - c0
                res["output_tok_per_cpu_s"] = res["output_tokens"] / max(c1 - c0, 1e-9)
            res["offered_req_s"] = len(reqs) / max(reqs[-1]["arrival"], 1e-9)
            mode = "open"
    out = {"kind": "run", "label": args.label or mode, "url": args.url, "base_model": base,
           "config": config_of(args, mode), "summary": res, "requests": slim(all_recs, t0)}
    write_json(args.out_json, out)
    if args.out_png:
        plot([out], args.out_png)
    print_table([out])


async def cmd_pair(args):
    headers = auth_headers(args)
    targets = []
    for spec in args.target:
        name, rest = spec.split("=", 1)
        base_only = rest.endswith("+base")
        if base_only:
            rest = rest[: -len("+base")]
        url, _, pid = rest.partition("@")
        targets.append({"name": name, "url": url.rstrip("/"), "pid": int(pid) if pid else None,
                        "base_only": base_only})
    reqs = build_requests(args, args.burst)
    base_reqs = [dict(r, adapter="base") for r in reqs]
    async with make_session(args) as session:
        base = await resolve_base(session, targets[0]["url"], headers)
        for t in targets:
            if args.warmup:
                names = ["base"] if t["base_only"] else sorted(set(args.adapters))
                await warmup(session, t["url"], headers, args, base, names)
            t["recs"], t["rounds"] = [], []
        t0 = time.perf_counter()
        for k in range(args.rounds):
            order = targets if k % 2 == 0 else list(reversed(targets))
            for t in order:
                recs, rnd = await run_burst_round(session, t["url"], headers, args, base,
                                                  base_reqs if t["base_only"] else reqs, t["pid"])
                rnd["round"] = k
                t["recs"] += recs
                t["rounds"].append(rnd)
                print(f"  round {k}: {t['name']:<12} {rnd['output_tok_s']:8.1f} tok/s "
                      f"({rnd['output_tokens']} tokens in {rnd['wall_s']:.2f} s, "
                      f"{rnd['ok']}/{rnd['requests']} ok)", flush=True)
    out_targets = []
    ref = targets[0]
    for t in targets:
        summ = summarize(t["recs"], 0.0, sum(r["wall_s"] for r in t["rounds"]), slo_of(args))
        summ["rounds"] = t["rounds"]
        summ["output_tok_s_rounds"] = pct([r["output_tok_s"] for r in t["rounds"]])
        cpu = [r.get("output_tok_per_cpu_s") for r in t["rounds"]]
        if all(c is not None for c in cpu):
            summ["output_tok_per_cpu_s_rounds"] = pct(cpu)
        out_targets.append({"name": t["name"], "url": t["url"], "summary": summ,
                            "requests": slim(t["recs"], t0)})
    ratios = {}
    for t in targets[1:]:
        rs = [a["output_tok_s"] / max(b["output_tok_s"], 1e-9)
              for a, b in zip(ref["rounds"], t["rounds"])]
        entry = {"per_round": rs, "median": float(np.median(rs)), "min": min(rs), "max": max(rs)}
        ca = [r.get("output_tok_per_cpu_s") for r in ref["rounds"]]
        cb = [r.get("output_tok_per_cpu_s") for r in t["rounds"]]
        if all(x is not None for x in ca + cb):
            rc = [a / max(b, 1e-9) for a, b in zip(ca, cb)]
            entry["per_cpu_second_median"] = float(np.median(rc))
        da = [r.get("decode_tok_s") for r in ref["rounds"]]
        db = [r.get("decode_tok_s") for r in t["rounds"]]
        if all(x for x in da + db):
            rd = [x / y for x, y in zip(da, db)]
            entry["decode_phase"] = {"median": float(np.median(rd)), "min": min(rd),
                                     "max": max(rd), "ref_tok_s": float(np.median(da)),
                                     "other_tok_s": float(np.median(db))}
        ratios[f"{ref['name']}/{t['name']}"] = entry
    out = {"kind": "pair", "label": args.label or "pair", "base_model": base,
           "config": config_of(args, "burst"), "targets": out_targets, "ratios": ratios}
    write_json(args.out_json, out)
    if args.out_png:
        plot([out], args.out_png)
    print_table([out])


def write_json(path, obj):
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def series(docs):
    """(label, summary, request records) for every measured run in the documents."""
    out = []
    for d in docs:
        if d["kind"] == "run":
            out.append((d["label"], d["summary"], d["requests"]))
        else:
            for t in d["targets"]:
                out.append((f"{d['label']}: {t['name']}", t["summary"], t["requests"]))
    return out


def print_table(docs):
    def ms(x):
        return "-" if x is None else f"{1000 * x:.0f}"

    rows = series(docs)
    print(f"{'run':<34} {'req':>5} {'err':>4} {'out tok/s':>9} {'req/s':>6} "
          f"{'TTFT p50/p99 ms':>16} {'TPOT p50/p99 ms':>16} {'e2e p50/p99 ms':>16}")
    for label, s, _ in rows:
        tput = s.get("output_tok_s_rounds", {}).get("p50") or s["output_tok_s"]
        print(f"{label[:34]:<34} {s['requests']:>5} {s['error_count']:>4} {tput:>9.1f} "
              f"{s['req_s']:>6.2f} "
              f"{ms(s['ttft_s']['p50']) + '/' + ms(s['ttft_s']['p99']):>16} "
              f"{ms(s['tpot_s']['p50']) + '/' + ms(s['tpot_s']['p99']):>16} "
              f"{ms(s['e2e_s']['p50']) + '/' + ms(s['e2e_s']['p99']):>16}")
    for d in docs:
        for name, r in d.get("ratios", {}).items():
            print(f"ratio {name}: median {r['median']:.2f}x (min {r['min']:.2f}, max "
                  f"{r['max']:.2f}) over {len(r['per_round'])} paired rounds"
                  + (f"; per server CPU-second {r['per_cpu_second_median']:.2f}x"
                     if "per_cpu_second_median" in r else ""))
            if "decode_phase" in r:
                e = r["decode_phase"]
                print(f"  after first token: {e['ref_tok_s']:.0f} vs {e['other_tok_s']:.0f} tok/s,"
                      f" median {e['median']:.2f}x (min {e['min']:.2f}, max {e['max']:.2f})")
    print("(burst rows: out tok/s is the median over rounds; req/s over the summed round time)")


def plot(docs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    rows = series(docs)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for ax, key, title in ((axes[0][0], "ttft", "TTFT"), (axes[0][1], "tpot", "TPOT"),
                           (axes[1][0], "e2e", "end-to-end latency")):
        for label, _, recs in rows:
            v = sorted(1000 * r[key] for r in recs if r.get(key) is not None and r["error"] is None)
            if v:
                ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"{title} (ms, log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{title} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[1][1]
    labels, vals, lo, hi = [], [], [], []
    for label, s, _ in rows:
        rr = s.get("rounds")
        if rr:
            v = [r["output_tok_s"] for r in rr]
            med = float(np.median(v))
            labels.append(label)
            vals.append(med)
            lo.append(med - min(v))
            hi.append(max(v) - med)
        else:
            labels.append(label)
            vals.append(s["output_tok_s"])
            lo.append(0)
            hi.append(0)
    x = np.arange(len(labels))
    ax.bar(x, vals, yerr=[lo, hi], capsize=4, color="tab:blue")
    for xi, v in zip(x, vals):
        ax.text(xi, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([lbl.replace(": ", ":\n") for lbl in labels], fontsize=7)
    ratio_txt = "; ".join(f"{k} = {r['median']:.2f}x" for d in docs
                          for k, r in d.get("ratios", {}).items())
    ax.set_title("aggregate output tokens/s (burst: median, min-max)"
                 + (f"\n{ratio_txt}" if ratio_txt else ""), fontsize=9)
    ax.set_ylabel("tokens/s")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(docs[0].get("base_model", "") + " - quiver load generator", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_report(args):
    docs = []
    for p in args.inputs:
        with open(p) as f:
            d = json.load(f)
        docs += d["runs"] if d.get("kind") == "report" else [d]  # a report re-plots its runs
    out = {"kind": "report", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine_info(), "runs": docs}
    if args.note:
        out["note"] = args.note
    write_json(args.out_json, out)
    if args.out_png:
        plot(docs, args.out_png)
    print_table(docs)


def machine_info():
    info = {"cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    return info


# ---------------------------------------------------------------------------------------------


def add_workload_args(p):
    p.add_argument("--adapters", default="",
                   help="comma-separated adapter names ('' or 'base' = the base model)")
    p.add_argument("--popularity", type=parse_popularity, default=None,
                   help="uniform | zipf:S | distinct (default: distinct for bursts, else uniform)")
    p.add_argument("--prompt-len", type=parse_dist, default=parse_dist("uniform:16:32"),
                   help="prompt length in words: fixed:N | uniform:LO:HI | "
                        "lognormal:MEDIAN:SIGMA[:MAX] (default uniform:16:32)")
    p.add_argument("--output-len", type=parse_dist, default=parse_dist("fixed:32"),
                   help="max_tokens distribution, same forms (default fixed:32)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos=true (vLLM extension; quiver accepts it)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--api-key", default=os.environ.get("QUIVER_API_KEY", ""))
    p.add_argument("--request-timeout", type=float, default=600)
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip the one-request-per-adapter warm-up")
    p.add_argument("--slo-ttft", type=float, default=6.0,
                   help="TTFT SLO in seconds for attainment/goodput (default 6, as S-LoRA)")
    p.add_argument("--slo-tpot", type=float, default=0.0,
                   help="TPOT SLO in seconds (default 0 = none)")
    p.add_argument("--label", default="")
    p.add_argument("--out-json", default="")
    p.add_argument("--out-png", default="")


def main():
    ap = argparse.ArgumentParser(description="open-loop / burst load generator for quiver",
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one workload against one server")
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--rate", type=float, default=1.0, help="open loop: mean arrivals per second")
    r.add_argument("--cv", type=float, default=1.0,
                   help="open loop: coefficient of variation of the gaps (1 = Poisson)")
    r.add_argument("--requests", type=int, default=60, help="open loop: number of requests")
    r.add_argument("--burst", type=int, default=0, help="closed loop: N requests at once")
    r.add_argument("--rounds", type=int, default=1, help="closed loop: rounds of --burst")
    r.add_argument("--server-pid", type=int, default=0, help="record this process's CPU time")
    add_workload_args(r)
    p = sub.add_parser("pair", help="interleaved bursts over several servers")
    p.add_argument("--target", action="append", required=True,
                   help="NAME=URL[@PID][+base], at least two; ratios are first / each other; "
                        "+base sends the same requests to the base model (no adapter)")
    p.add_argument("--burst", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    add_workload_args(p)
    m = sub.add_parser("report", help="merge run/pair JSON files into one JSON and PNG")
    m.add_argument("inputs", nargs="+")
    m.add_argument("--out-json", default="")
    m.add_argument("--out-png", default="")
    m.add_argument("--note", default="")
    args = ap.parse_args()

    if args.cmd == "report":
        cmd_report(args)
        return
    args.adapters = [a.strip() for a in args.adapters.split(",")] if args.adapters else ["base"]
    if args.popularity is None:
        args.popularity = parse_popularity("distinct" if args.burst else "uniform")
    if args.cmd == "pair":
        if len(args.target) < 2:
            ap.error("pair needs at least two --target")
        args.rate, args.cv, args.requests = 0.0, 1.0, args.burst
        asyncio.run(cmd_pair(args))
    else:
        if args.burst:
            args.rate, args.requests = 0.0, args.burst
        asyncio.run(cmd_run(args))


if __name__ == "__main__":
    sys.exit(main())
