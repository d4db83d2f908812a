#!/usr/bin/env python3
"""test_concurrency.py - 64 concurrent streaming requests over 16 adapters against `quiver serve`
on the real SmolLM2-135M-Instruct GGUF.

The 16 adapters are small random LoRAs for SmolLM2 (rank 4 on q_proj/v_proj/o_proj of every
third layer) generated here at test time with numpy and a minimal safetensors writer,
deterministic seeds; their scale is chosen so their greedy outputs differ visibly from the base
model and from each other (checked). They are published with --preload.

Checks: 64 streams started at once (4 prompts x 16 adapters, greedy, max_tokens 12) through the
official `openai` client - half parsed by the client's typed Stream, half read as raw SSE
lines through the client's streaming-response API so `data: [DONE]` and the usage chunk are
seen - each complete (a finish_reason, [DONE]) and its text identical to the same request run
alone afterwards (non-streamed, solo); the adapters' outputs differ from the base and from one
another; the server was really batching (several sequences per step seen in /metrics); no
sanitizer report; SIGTERM exits 0.

Usage: test_concurrency.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import json
import os
import shutil
import struct
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
N_ADAPTERS = 16


def sanitized(path):
    """True when the binary was built with ASan or TSan (10-30x slower on this workload)."""
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


SLOW = sanitized(T.QUIVER)
# Greedy tokens per request: 12, or 6 under a sanitizer (the same 64 concurrent streams, less
# decoding) so the test stays within its time limit there too.
MAX_TOKENS = 6 if SLOW else 12
TIMEOUT = 800 if SLOW else 300
PROMPTS = [
    "Write a short sentence about the sea.",
    "What is the capital of France?",
    "Give me one tip for learning to cook.",
    "Describe a cat in a few words.",
]
# SmolLM2-135M: hidden 576, 9 heads, 3 KV heads of 64, 30 layers.
HIDDEN, KV_DIM, N_LAYERS = 576, 192, 30
SHAPES = {"q_proj": (HIDDEN, HIDDEN), "v_proj": (KV_DIM, HIDDEN), "o_proj": (HIDDEN, HIDDEN)}
RANK, ALPHA = 4, 8
LAYERS = list(range(0, N_LAYERS, 3))
B_SCALE = 0.15  # B ~ N(0, B_SCALE^2); A ~ N(0, 1/in): visible but not garbage (checked below)


def write_safetensors(path, tensors):
    """A minimal safetensors writer: F32 tensors, header padded to 8 bytes."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make_adapter(d, seed):
    rng = np.random.default_rng(1000 + seed)
    tensors = {}
    for layer in LAYERS:
        for mod, (n_out, n_in) in SHAPES.items():
            part = "self_attn"
            pre = f"base_model.model.model.layers.{layer}.{part}.{mod}"
            tensors[pre + ".lora_A.weight"] = rng.standard_normal((RANK, n_in)) / np.sqrt(n_in)
            tensors[pre + ".lora_B.weight"] = rng.standard_normal((n_out, RANK)) * B_SCALE
    os.makedirs(d, exist_ok=True)
    write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": ALPHA,
           "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
           "use_dora": False, "target_modules": sorted(SHAPES), "layers_to_transform": LAYERS,
           "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def stream_typed(client, model, prompt):
    """(text, finish_reason, saw_done=None) through the client's typed Stream."""
    s = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=MAX_TOKENS, temperature=0, stream=True)
    parts, finish = [], None
    for ch in s:
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
    return "".join(parts), finish, None, None


def stream_raw(client, model, prompt):
    """(text, finish_reason, saw_done, usage) from the raw SSE lines of the same client."""
    with client.chat.completions.with_streaming_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS,
            temperature=0, stream=True, stream_options={"include_usage": True}) as resp:
        parts, finish, done, usage, after_done = [], None, False, None, False
        for line in resp.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if done:
                after_done = True
            if data == "[DONE]":
                done = True
                continue
            ch = json.loads(data)
            if ch.get("usage"):
                usage = ch["usage"]
            for c in ch.get("choices", []):
                parts.append(c.get("delta", {}).get("content") or "")
                finish = c.get("finish_reason") or finish
    return "".join(parts), finish, done and not after_done, usage


def solo(srv, model, prompt):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS, "temperature": 0}
    st, _, data = srv.raw("POST", "/v1/chat/completions", body, timeout=TIMEOUT)
    if st != 200:
        return None, None, None
    r = json.loads(data)
    c = r["choices"][0]
    return c["message"]["content"], c["finish_reason"], r["usage"]["completion_tokens"]


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    tmp = tempfile.mkdtemp(prefix="quiver-concurrency-")
    srv = None
    try:
        names = []
        preload = []
        for i in range(N_ADAPTERS):
            name = f"rand{i:02d}"
            make_adapter(os.path.join(tmp, "src", name), i)
            names.append(name)
            preload += ["--preload", f"{name}={os.path.join(tmp, 'src', name)}"]
        srv = T.Server("--adapter-store", os.path.join(tmp, "store"), *preload, "--api-key",
                       T.KEY, "--max-seqs", "64", "--max-batch-tokens", "512")
        run(srv, names)
        rc = srv.stop()
        check(rc == 0, f"server exits 0 on SIGTERM ({rc})")
    finally:
        if srv and srv.proc.poll() is None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if srv:
        reports = [l for l in srv.lines if "Sanitizer" in l or "runtime error:" in l]
        check(not reports, f"no sanitizer report from the server ({reports[:1]})")
    if T.failures:
        print(f"{len(T.failures)} check(s) failed")
        if srv:
            print("server log tail:\n" + "".join(srv.lines[-20:]))
        return 1
    print("all checks passed")
    return 0


def run(srv, names):
    jobs = [(names[i % N_ADAPTERS], PROMPTS[(i // N_ADAPTERS + i) % len(PROMPTS)])
            for i in range(64)]
    check(len(set(jobs)) == 64, "64 distinct (adapter, prompt) pairs")
    client = srv.client().with_options(timeout=TIMEOUT)
    results = [None] * len(jobs)
    start = threading.Barrier(len(jobs))
    peak = {"running": 0}
    stop_watch = threading.Event()

    def work(i, model, prompt):
        try:
            start.wait(120)
            fn = stream_raw if i % 2 else stream_typed
            results[i] = fn(client, model, prompt)
        except Exception as e:  # noqa: BLE001 - reported as a failure below
            results[i] = ("error: %r" % e, None, False, None)

    def watch():
        while not stop_watch.is_set():
            try:
                m = srv.metrics()
                peak["running"] = max(peak["running"], m.get("quiver_running_sequences", 0))
            except Exception:  # noqa: BLE001 - best effort
                pass
            time.sleep(0.2)

    t0 = time.time()
    threads = [threading.Thread(target=work, args=(i, m, p)) for i, (m, p) in enumerate(jobs)]
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    stop_watch.set()
    t_conc = time.time() - t0
    print(f"64 concurrent streams: {t_conc:.1f} s, peak running {peak['running']:.0f}")
    check(all(r is not None for r in results), "every stream returned")
    errors = [r[0] for r in results if r and str(r[0]).startswith("error:")]
    check(not errors, f"no stream failed {errors[:2]}")
    check(all(r and r[1] in ("stop", "length") for r in results),
          f"every stream has a finish_reason {[r[1] for r in results if r][:8]}")
    raw = [r for i, r in enumerate(results) if i % 2 and r]
    check(len(raw) == 32 and all(r[2] for r in raw),
          "every raw stream ends with data: [DONE] (and nothing after it)")
    check(all(r[3] and r[3]["completion_tokens"] <= MAX_TOKENS and r[3]["prompt_tokens"] > 0
              for r in raw), "every raw stream has a usage chunk (include_usage)")
    check(peak["running"] >= 8, f"the server batched the streams (peak running "
          f"{peak['running']:.0f} >= 8)")

    # The same requests alone, one after another, after the concurrent run.
    t0 = time.time()
    bad = []
    solos = {}
    for i, (model, prompt) in enumerate(jobs):
        text, finish, n = solo(srv, model, prompt)
        solos[(model, prompt)] = text
        r = results[i]
        if not r or text is None or r[0] != text or r[1] != finish:
            bad.append((i, model, prompt[:20], r and r[0], text))
        elif r[3] and r[3]["completion_tokens"] != n:
            bad.append((i, model, "usage", r[3], n))
    print(f"64 solo requests: {time.time() - t0:.1f} s")
    check(not bad, f"each of the 64 streams equals its solo greedy output ({len(bad)} differ: "
          f"{bad[:2]})")

    # The adapters matter: each differs from the base somewhere, and they differ from each other.
    base = {p: solo(srv, base_name(), p)[0] for p in PROMPTS}
    differ = [n for n in names if any(solos.get((n, p)) not in (None, base[p]) for p in PROMPTS
                                      if (n, p) in solos)]
    check(len(differ) == N_ADAPTERS, f"every adapter's output differs from the base "
          f"({len(differ)}/{N_ADAPTERS})")
    per_prompt = {p: {solos[(n, p)] for n in names if (n, p) in solos} for p in PROMPTS}
    n_distinct = [len(v) for v in per_prompt.values()]
    check(sum(n_distinct) >= 20,
          f"adapters give different texts for one prompt (distinct per prompt {n_distinct})")
    p0 = PROMPTS[0]
    sample = [t for t in per_prompt[p0] if t != base[p0]][:2]
    print(f"{p0!r}: base {base[p0]!r}; adapters {sample!r}")


def base_name():
    return os.path.basename(T.MODEL)[:-len(".gguf")]


if __name__ == "__main__":
    sys.exit(main())
