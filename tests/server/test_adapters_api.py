#!/usr/bin/env python3
"""test_adapters_api.py - adapters over HTTP: `quiver serve` with an adapter store on the real
SmolLM2-135M-Instruct GGUF and the committed SmolLM2 adapters.

Checks: a greedy request on each PEFT fixture adapter (LoRA, prefix tuning, IA3) gives exactly
HF PEFT's greedy text (tests/fixtures/adapter_golden/smollm2/golden.json, cut at the first
end-of-generation token); the demo adapters give their HF greedy answers (demo.json); every
way of naming an adapter ("base:name", "name", adapter_id); mixed concurrent requests over the
base + 3 fixture adapters + 2 demo adapters each equal their solo output; 404 for unknown
names and path tricks; a load failure answered 422 with the loader's message (a corrupt
version planted in the store, and --max-rank); a restart on the same store serves what was
published before; the adapter name on the request log line.

Usage: test_adapters_api.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import json
import os
import shutil
import sys
import tempfile
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

ROOT = T.ROOT
FIX = os.path.join(ROOT, "tests", "fixtures")
GOLDEN = json.load(open(os.path.join(FIX, "adapter_golden", "smollm2", "golden.json")))
DEMO = os.path.join(ROOT, "deploy", "demo-adapters")
EOG = T.EOG
check = T.check


def cut_eog(text):
    for s in EOG:
        text = text.split(s)[0]
    return text


def fixture_cases():
    """(name, dir, [(prompt, hf_text, n_tokens)]) per committed PEFT fixture adapter."""
    out = []
    for c in GOLDEN["cases"]:
        d = os.path.join(FIX, c["adapter"])
        name = os.path.basename(c["adapter"]).replace("_", "-")
        prompts = [(p["text"], cut_eog(p["greedy_text"]), len(p["greedy"])) for p in c["prompts"]]
        out.append((name, d, prompts))
    return out


def demo_cases():
    out = []
    for name in ("pirate", "shouting"):
        d = os.path.join(DEMO, name)
        demo = json.load(open(os.path.join(d, "demo.json")))
        out.append((name, d, [(p["user"], p["adapter_text"]) for p in demo["prompts"]]))
    return out


def complete(srv, model, prompt, n, **extra):
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, **extra}
    st, _, data = srv.raw("POST", "/v1/completions", body)
    return st, json.loads(data)


def chat(srv, model, user, n=48):
    body = {"model": model, "messages": [{"role": "user", "content": user}], "max_tokens": n,
            "temperature": 0}
    st, _, data = srv.raw("POST", "/v1/chat/completions", body)
    return st, json.loads(data)


def text_of(resp):
    ch = resp["choices"][0]
    return ch["text"] if "text" in ch else ch["message"]["content"]


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    store = tempfile.mkdtemp(prefix="quiver-adapter-store-")
    servers = []
    try:
        run(store, servers)
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()
        shutil.rmtree(store, ignore_errors=True)
    reports = [l for s in servers for l in s.lines if "Sanitizer" in l or "runtime error:" in l]
    check(not reports, f"no sanitizer report from the servers ({reports[:1]})")
    if T.failures:
        print(f"{len(T.failures)} check(s) failed")
        for s in servers:
            print("server log tail:\n" + "".join(s.lines[-20:]))
        return 1
    print("all checks passed")
    return 0


def run(store, servers):
    fix, demo = fixture_cases(), demo_cases()
    preload = []
    for name, d, _ in fix + demo:
        preload += ["--preload", f"{name}={d}"]
    srv = T.Server("--adapter-store", store, *preload, "--max-seqs", "16")
    servers.append(srv)
    base = os.path.basename(T.MODEL)[:-len(".gguf")]

    # Each fixture adapter equals HF PEFT's greedy text, under each way of naming it.
    solo = {}
    for name, _, prompts in fix:
        for k, (prompt, want, n) in enumerate(prompts):
            st, r = complete(srv, f"{base}:{name}", prompt, n)
            got = text_of(r) if st == 200 else r
            check(st == 200 and got == want, f"{name} prompt {k} equals HF PEFT: {got!r}")
            solo[(name, k)] = got
        st, r = complete(srv, name, prompts[0][0], prompts[0][2])
        check(st == 200 and text_of(r) == solo[(name, 0)], f"{name}: model '<name>' alone")
        st, r = complete(srv, base, prompts[0][0], prompts[0][2], adapter_id=name)
        check(st == 200 and text_of(r) == solo[(name, 0)], f"{name}: adapter_id")
        check(st == 200 and r["model"] == base, f"{name}: model echoed as sent ({r.get('model')})")
    # The demo adapters answer as in their HF demo.
    for name, _, prompts in demo:
        for k, (user, want) in enumerate(prompts):
            st, r = chat(srv, name, user)
            got = text_of(r) if st == 200 else r
            check(st == 200 and got == want, f"demo {name} prompt {k} equals HF: {got!r}")
            solo[(name, k)] = got
    # The base model is unaffected by adapters having run.
    g = fix[0][2][0]
    st, r = complete(srv, base, g[0], g[2])
    base_text = text_of(r)
    hf_base = cut_eog(GOLDEN["cases"][0]["prompts"][0]["base_greedy_text"])
    check(st == 200 and base_text == hf_base, f"base after adapters equals HF base: {base_text!r}")

    # Mixed concurrent requests: base + 3 fixture adapters + 2 demo adapters, twice each.
    jobs = [("base", None)]
    jobs += [((name, 0), None) for name, _, _ in fix]
    jobs += [((name, 1), None) for name, _, _ in demo]
    jobs = jobs * 2
    results = [None] * len(jobs)

    def work(i, key):
        try:
            if key == "base":
                results[i] = text_of(complete(srv, base, g[0], g[2])[1])
            elif key[0] in dict((n, 1) for n, _, _ in fix):
                p = [c for c in fix if c[0] == key[0]][0][2][key[1]]
                results[i] = text_of(complete(srv, key[0], p[0], p[2])[1])
            else:
                p = [c for c in demo if c[0] == key[0]][0][2][key[1]]
                results[i] = text_of(chat(srv, key[0], p[0])[1])
        except Exception as e:  # noqa: BLE001 - reported as a mismatch below
            results[i] = f"error: {e}"

    threads = [threading.Thread(target=work, args=(i, k)) for i, (k, _) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    bad = [(k, results[i]) for i, (k, _) in enumerate(jobs)
           if results[i] != (base_text if k == "base" else solo[k])]
    check(not bad, f"{len(jobs)} concurrent mixed requests equal their solo outputs {bad[:2]}")

    # Errors: unknown names and path tricks are 404 model_not_found.
    good = {"prompt": "x", "max_tokens": 2}
    for what, body in (("unknown adapter", dict(good, model="no-such-adapter")),
                       ("unknown base:adapter", dict(good, model=base + ":no-such")),
                       ("unknown adapter_id", dict(good, adapter_id="no-such")),
                       ("wrong base with a known adapter", dict(good, model="other:pirate")),
                       ("path trick ../", dict(good, model="../" + os.path.basename(store))),
                       ("path trick in adapter_id", dict(good, adapter_id="../../etc/passwd")),
                       ("path trick objects/", dict(good, adapter_id="objects/x")),
                       ("dot-dot name", dict(good, adapter_id="a..b"))):
        T.expect_error(srv, what, 404, "POST", "/v1/completions", body)
    # A version id works as a name.
    names = sorted(os.listdir(os.path.join(store, "names")))
    check(names == sorted(n for n, _, _ in fix + demo), f"store names: {names}")
    version = open(os.path.join(store, "names", "pirate")).read().strip()
    st, r = chat(srv, version, demo[0][2][0][0])
    check(st == 200 and text_of(r) == solo[("pirate", 0)], "a version id names its adapter")

    # A corrupt version planted in the store fails at load with the loader's message (422).
    fake = "f" * 64
    os.makedirs(os.path.join(store, "objects", fake))
    with open(os.path.join(store, "objects", fake, "adapter_config.json"), "w") as f:
        f.write('{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    with open(os.path.join(store, "names", "broken"), "w") as f:
        f.write(fake + "\n")
    for attempt in (1, 2):  # the failure is not cached as a success
        st, _, data = srv.raw("POST", "/v1/completions", dict(good, model="broken"))
        err = json.loads(data).get("error", {})
        check(st == 422 and "adapter_model" in err.get("message", ""),
              f"corrupt adapter -> 422 with the loader's message (try {attempt}): {st} {data!r}")
    # The server is still healthy and serves the base.
    st, r = complete(srv, base, g[0], g[2])
    check(st == 200 and text_of(r) == base_text, "base still served after a load failure")
    log = "".join(srv.lines)
    check("adapter=pirate status=200" in log and "adapter=lora-r8-all status=200" in log,
          "request log lines carry the adapter name")
    rc = srv.stop()
    check(rc == 0, f"server exits 0 ({rc})")

    # Restart on the same store without --preload: everything published is still served.
    srv2 = T.Server("--adapter-store", store)
    servers.append(srv2)
    for name, _, prompts in demo:
        st, r = chat(srv2, name, prompts[0][0])
        check(st == 200 and text_of(r) == solo[(name, 0)], f"after restart: {name} still served")
    for name, _, prompts in fix:
        p = prompts[0]
        st, r = complete(srv2, name, p[0], p[2])
        check(st == 200 and text_of(r) == solo[(name, 0)], f"after restart: {name} still served")
    rc = srv2.stop()
    check(rc == 0, f"restarted server exits 0 ({rc})")

    # --max-rank refuses rank-8 LoRAs at load time with 422 and the loader's message; IA3 loads.
    srv3 = T.Server("--adapter-store", store, "--max-rank", "4")
    servers.append(srv3)
    st, _, data = srv3.raw("POST", "/v1/completions", dict(good, model="lora-r8-all"))
    check(st == 422 and b"max_rank=4" in data, f"--max-rank 4 refuses a rank-8 LoRA: {st} {data!r}")
    p = fix[2][2][0]
    st, r = complete(srv3, fix[2][0], p[0], p[2])
    check(st == 200 and text_of(r) == solo[(fix[2][0], 0)], f"--max-rank 4: {fix[2][0]} served")
    rc = srv3.stop()
    check(rc == 0, f"third server exits 0 ({rc})")

if __name__ == "__main__":
    sys.exit(main())
