#!/usr/bin/env python3
"""serve_cuda_emu.py - `quiver serve --device cuda` end to end over HTTP on the emulated device
(tests/gpu/emu/: the real CUDA backend, adapter pool and kernels, the kernels run on the CPU),
against `quiver serve` on the CPU, on SmolLM2-135M-Instruct with three committed PEFT adapters
(LoRA on all projections, IA3, prefix tuning) published with --preload.

Checks on the CUDA server: start-up reports the device adapter pool, its pinned host tier and
the CUDA graphs recorded; four concurrent greedy completions (base + the three adapters) give
the CPU server's text, or part from it only where the CPU's top two tokens are a near tie
(logprob gap below 0.25, the bf16 weights' error), and the adapters change the text; so does a
request merging the LoRA with itself (merged_adapters, TIES at density 0.5: an F32 LoRA made
on the server, unlike the file's BF16 one); a sampled
request (temperature 0.8) and a logprobs request complete; /metrics shows every token picked
on the device (no logits row copied to the host), adapter images in the pinned tier and on the device, and graph
replays. Then a server with --speculative-config: a prompt that asks for a copy gives the CPU
server's text (or parts at a near tie) with drafts kept (/metrics). Slow (every CUDA thread is
emulated): about three minutes.

Usage: serve_cuda_emu.py <quiver_emu> <quiver>. Exit 77 when the model has not been fetched.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "server"))
EMU, CPU = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
import test_http_api as T  # noqa: E402 - Server, check, failures (reads sys.argv[1])

if not os.path.exists(T.MODEL):
    print(f"SKIP: {T.MODEL} not found")
    sys.exit(77)

FIX = os.path.join(T.ROOT, "tests", "fixtures", "adapters", "smollm2")
ADAPTERS = {"lora": "lora_r8_all", "ia3": "ia3", "prefix": "prefix_nvt8"}
PROMPT = "The capital of France is"
N = 8
NEAR_TIE = 0.25
MERGED = {"ids": ["lora", "lora"], "weights": [0.7, 0.6], "merge_strategy": "ties",
          "density": 0.5}
MODEL_NAME = os.path.splitext(os.path.basename(T.MODEL))[0]
COPY = {"model": MODEL_NAME, "max_tokens": 12, "temperature": 0,
        "prompt": "Copy the line exactly.\nLine: the quick brown fox jumps over the lazy dog\n"
                  "Copy: the quick brown fox"}
check = T.check


def serve(binary, *extra):
    T.QUIVER = binary
    pre = []
    for name, d in ADAPTERS.items():
        pre += ["--preload", f"{name}={os.path.join(FIX, d)}"]
    return T.Server(*pre, *extra)


def complete(srv, model, **extra):
    body = {"model": model, "prompt": PROMPT, "max_tokens": N, "temperature": 0, **extra}
    st, _, data = srv.raw("POST", "/v1/completions", body, timeout=600)
    return st, T.json.loads(data)


def parts_at_near_tie(cpu_choice, text):
    """None when text equals the CPU text; else (index, gap) of the first CPU token where the
    texts part, with the CPU's top-2 logprob gap there."""
    if text == cpu_choice["text"]:
        return None
    lp = cpu_choice["logprobs"]
    prefix = ""
    for i, tok in enumerate(lp["tokens"]):
        if not text.startswith(prefix + tok):
            top = sorted(lp["top_logprobs"][i].values(), reverse=True)
            return i, (top[0] - top[1]) if len(top) > 1 else float("inf")
        prefix += tok
    return len(lp["tokens"]), float("inf")  # longer than the CPU text: not a tie


def spec_checks(cu0, want, m0):
    """Speculative decoding on the CUDA server (a server of its own): the copying prompt's
    greedy answer is the CPU server's (up to a near tie) with drafts checked and kept, and the
    same request on the server without drafts counted none."""
    check(m0.get("quiver_spec_draft_tokens_total", 0) == 0, "cuda: no drafts without the flag")
    cu0.stop()
    cu = serve(EMU, "--device", "cuda", "--max-seqs", "4", "--max-batch-tokens", "64",
               "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 4, '
               '"prompt_lookup_min": 2}')
    st, _, r = cu.raw("POST", "/v1/completions", COPY, timeout=600)
    text = T.json.loads(r)["choices"][0]["text"] if st == 200 else ""
    part = parts_at_near_tie(want["copy"], text)
    check(st == 200 and (part is None or part[1] < NEAR_TIE),
          f"cuda with drafts: the copying prompt gives the cpu text, or parts at a near tie "
          f"({part}): {text!r} vs {want['copy']['text']!r}")
    for _ in range(50):
        m = cu.metrics()
        if m.get("quiver_spec_accepted_tokens_total", 0) > 0:
            break
        time.sleep(0.1)
    drafts, kept = (m.get(f"quiver_spec_{k}_tokens_total", 0) for k in ("draft", "accepted"))
    check(kept > 0, f"cuda: drafts checked and kept ({drafts:.0f} drafts, {kept:.0f} kept)")
    return cu


def main():
    models = [MODEL_NAME] + list(ADAPTERS)
    cpu = serve(CPU)
    check("tokens (f32)" in "".join(cpu.lines), "cpu: K/V pages are f32 (start-up line)")
    want = {}
    for m in models:
        st, r = complete(cpu, m, logprobs=2)
        check(st == 200, f"cpu: {m} answers 200 ({st})")
        want[m] = r["choices"][0]
    texts = {m: want[m]["text"] for m in models}
    check(texts["ia3"] != texts[MODEL_NAME] and texts["prefix"] != texts[MODEL_NAME],
          f"cpu: IA3 and prefix tuning change the text {texts}")
    st, r = complete(cpu, MODEL_NAME, logprobs=2, merged_adapters=MERGED)
    check(st == 200, f"cpu: merged_adapters answers 200 ({st})")
    want["merged"] = r["choices"][0] if st == 200 else {"text": "", "logprobs": None}
    check(want["merged"]["text"] != want["lora"]["text"],
          f"cpu: the merged LoRA changes the text ({want['merged']['text']!r})")
    base_lp, lora_lp = (want[m]["logprobs"]["token_logprobs"] for m in (MODEL_NAME, "lora"))
    delta = max(abs(a - b) for a, b in zip(base_lp, lora_lp))
    check(delta > 1e-2, f"cpu: the LoRA changes the logprobs (by up to {delta:.3f})")
    st, _, r = cpu.raw("POST", "/v1/completions", dict(COPY, logprobs=2), timeout=600)
    check(st == 200, f"cpu: the copying prompt answers 200 ({st})")
    want["copy"] = T.json.loads(r)["choices"][0] if st == 200 else {"text": "", "logprobs": None}
    cpu.stop()

    cu = serve(EMU, "--device", "cuda", "--max-seqs", "4", "--max-batch-tokens", "64")
    log = "".join(cu.lines)
    check("pinned host tier" in log and "device adapter pool" in log,
          "cuda: start-up reports the adapter pool and its pinned host tier")
    check("decode-step shapes" in log, "cuda: start-up records the decode graphs")
    check("tokens (bf16)" in log, "cuda: K/V pages are bf16 by default (start-up line)")
    got = {}

    def run(m):
        got[m] = complete(cu, MODEL_NAME, merged_adapters=MERGED) if m == "merged" else \
            complete(cu, m)

    threads = [threading.Thread(target=run, args=(m,)) for m in models + ["merged"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in models + ["merged"]:
        st, r = got[m]
        check(st == 200, f"cuda: {m} answers 200 ({st})")
        if st != 200:
            continue
        text = r["choices"][0]["text"]
        check(r["usage"]["completion_tokens"] == N, f"cuda: {m} gives {N} tokens")
        part = parts_at_near_tie(want[m], text)
        if part is None:
            check(True, f"cuda: {m} gives the cpu text {text!r}")
        else:
            i, gap = part
            check(gap < NEAR_TIE, f"cuda: {m} parts from the cpu at token {i} where the cpu's "
                  f"top-2 gap is {gap:.3f} (near tie < {NEAR_TIE}): {text!r} vs "
                  f"{want[m]['text']!r}")
    st, r = complete(cu, "lora", temperature=0.8, seed=5, max_tokens=3)
    check(st == 200 and r["usage"]["completion_tokens"] == 3, f"cuda: a sampled request ({st})")
    st, r = complete(cu, MODEL_NAME, max_tokens=2, logprobs=2)
    check(st == 200 and r["usage"]["completion_tokens"] == 2 and r["choices"][0].get("logprobs"),
          f"cuda: a logprobs request ({st})")
    if st == 200 and r["choices"][0].get("logprobs"):
        got_lp = r["choices"][0]["logprobs"]
        cpu_lp = want[MODEL_NAME]["logprobs"]
        same = got_lp["tokens"] == cpu_lp["tokens"][:2]
        gap = max(abs(a - b) for a, b in zip(got_lp["token_logprobs"], cpu_lp["token_logprobs"]))
        check(same and gap < NEAR_TIE and len(got_lp["top_logprobs"][0]) == 2,
              f"cuda: device logprobs match the cpu's ({got_lp['tokens']} vs "
              f"{cpu_lp['tokens'][:2]}, largest difference {gap:.4f})")
    # /metrics is refreshed by the engine loop after a step, so a response can reach the client
    # before its last token is counted: wait (briefly) for the count.
    want_dev = (len(models) + 1) * N + 3 + 2
    for _ in range(50):
        m = cu.metrics()
        dev = m.get('quiver_sampled_tokens_total{where="device"}', 0)
        if dev >= want_dev:
            break
        time.sleep(0.1)
    host = m.get('quiver_sampled_tokens_total{where="host"}', 0)
    check(dev >= want_dev,
          f"cuda: greedy, sampled and logprobs tokens picked on the device ({dev})")
    check(host == 0, f"cuda: no logits row sampled on the host ({host})")
    pinned = m.get('quiver_adapter_resident{tier="pinned"}', 0)
    device = m.get('quiver_adapter_resident{tier="device"}', 0)
    check(pinned >= 2 and device >= 2,
          f"cuda: LoRA and IA3 images in the pinned tier ({pinned}) and on the device ({device})")
    check(m.get('quiver_adapter_bytes{tier="device"}', 0) > 0, "cuda: device adapter bytes")
    rep = m.get('quiver_cuda_graph_steps_total{mode="replayed"}', 0)
    check(rep > 0, f"cuda: decode steps replayed from CUDA graphs ({rep})")
    check(m.get('quiver_cuda_graph_steps_total{mode="refused"}', 0) == 0, "cuda: no graph refused")
    # structured output on the device path: constrained rows come back to the host, masked there
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0,
                                                     "maximum": 99}}, "required": ["a"],
              "additionalProperties": False}
    st, r = complete(cu, "lora", max_tokens=24, response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    text = r["choices"][0]["text"] if st == 200 else ""
    fin = r["choices"][0]["finish_reason"] if st == 200 else None
    try:
        obj = T.json.loads(text)
        ok = fin == "stop" and list(obj) == ["a"] and type(obj["a"]) is int and 0 <= obj["a"] <= 99
    except ValueError:
        ok = False
    check(ok, f"cuda: a json_schema answer under a LoRA follows the schema ({st} {fin} {text!r})")
    for _ in range(50):
        m2 = cu.metrics()
        if m2.get('quiver_sampled_tokens_total{where="host"}', 0) > host:
            break
        time.sleep(0.1)
    check(m2.get('quiver_sampled_tokens_total{where="host"}', 0) > host and
          m2.get('quiver_json_masks_total{source="computed"}', 0) > 0,
          "cuda: its rows were masked and sampled on the host")
    cu = spec_checks(cu, want, m)
    cu.stop()
    if T.failures:
        print(f"{len(T.failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


main()
