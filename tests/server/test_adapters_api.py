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
published before; the adapter name on the request log line; uploads validated off the HTTP
thread (with commits slowed by QUIVER_TEST_UPLOAD_DELAY_MS and one HTTP thread, /health and a
generation answer while an upload is validated).

Usage: test_adapters_api.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

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


ADMIN = "admin-key-456"


def multipart(fields, files):
    """(body, content_type) of a multipart/form-data form: fields {k: str}, files
    [(field, filename, bytes)]."""
    b = uuid.uuid4().hex
    out = []
    for k, v in fields.items():
        out.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   .encode())
    for k, fn, data in files:
        out.append(f'--{b}\r\nContent-Disposition: form-data; name="{k}"; filename="{fn}"\r\n'
                   f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    out.append(f"--{b}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={b}"


def adapter_files(d, names=("adapter_config.json", "adapter_model.safetensors")):
    return [(n, n, open(os.path.join(d, n), "rb").read()) for n in names]


def upload(srv, method, path, fields, files, key=ADMIN):
    body, ctype = multipart(fields, files)
    st, _, data = srv.raw(method, path, body, headers={"Content-Type": ctype}, key=key)
    try:
        return st, json.loads(data)
    except ValueError:
        return st, data


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


def run_keys_file_test(store):
    """--api-keys-file: a key limited to "pir*" uses the base model and pirate, gets 403 on
    shouting and on a name that does not exist alike (it learns nothing of other adapters) and
    on a merge with shouting as a part (a merge of pirate with itself runs),
    sees only pirate in /v1/models and /v1/adapters and 404 for shouting's details; an
    unlimited key of the file and --api-key use everything; any other key gets 401; a file
    with a malformed key or no key stops start-up."""
    kdir = tempfile.mkdtemp(prefix="quiver-keys-")
    try:
        kf = os.path.join(kdir, "keys")
        with open(kf, "w") as f:
            f.write("# team keys\n\nteam-a-key   pir*   # only pirate\n\tall-key\n"
                    "team-m-key team-m-* manage=yes   # administers its own adapters\n")
        srv = T.Server("--adapter-store", store, "--api-key", "main-key", "--api-keys-file", kf)
        try:
            base = os.path.basename(T.MODEL)[:-len(".gguf")]
            msg = [{"role": "user", "content": "Hi"}]

            def gen(model, key):
                st, _, data = srv.raw("POST", "/v1/chat/completions",
                                      {"model": model, "messages": msg, "max_tokens": 2},
                                      key=key)
                return st, json.loads(data)

            check(gen("pirate", "team-a-key")[0] == 200, "limited key: its adapter")
            check(gen(base, "team-a-key")[0] == 200, "limited key: the base model")
            st, body = gen("shouting", "team-a-key")
            check(st == 403 and body["error"]["code"] == "permission_denied",
                  f"limited key: another adapter is 403 ({st} {body})")
            st2, body2 = gen("no-such-adapter", "team-a-key")
            check(st2 == 403 and body2["error"]["message"].replace("no-such-adapter", "X") ==
                  body["error"]["message"].replace("shouting", "X"),
                  "limited key: a missing adapter answers as an existing one it may not use")
            for ids, want in ((["pirate", "pirate"], 200), (["pirate", "shouting"], 403)):
                st, _, data = srv.raw("POST", "/v1/chat/completions", {
                    "messages": msg, "max_tokens": 2,
                    "merged_adapters": {"ids": ids, "weights": [0.5, 0.5]}}, key="team-a-key")
                check(st == want, f"limited key: merged_adapters {ids} is {want} ({st} {data})")
            st, _, data = srv.raw("GET", "/v1/models", key="team-a-key")
            ids = [m["id"] for m in json.loads(data)["data"]]
            check(st == 200 and ids == [base, "pirate"], f"limited key: /v1/models {ids}")
            check(srv.raw("GET", "/v1/models/pirate", key="team-a-key")[0] == 200 and
                  srv.raw("GET", "/v1/models/shouting", key="team-a-key")[0] == 404,
                  "limited key: GET /v1/models/{id} only for its adapters")
            st, _, data = srv.raw("GET", "/v1/adapters", key="team-a-key")
            names = [a["name"] for a in json.loads(data)["data"]]
            check(st == 200 and names == ["pirate"], f"limited key: /v1/adapters {names}")
            check(srv.raw("GET", "/v1/adapters/shouting", key="team-a-key")[0] == 404,
                  "limited key: another adapter's details are 404")
            check(srv.raw("GET", "/v1/adapters/pirate", key="team-a-key")[0] == 200,
                  "limited key: its adapter's details")
            for k in ("all-key", "main-key"):
                check(gen("shouting", k)[0] == 200, f"{k}: any adapter")
                st, _, data = srv.raw("GET", "/v1/models", key=k)
                check("shouting" in [m["id"] for m in json.loads(data)["data"]],
                      f"{k}: /v1/models lists every adapter")
            check(gen("pirate", "wrong-key")[0] == 401, "an unknown key is 401")
            check(srv.raw("GET", "/v1/models", key=None)[0] == 401, "no key is 401")
            check(any("--api-keys-file: 3 keys (2 limited to some adapters, 1 managing "
                      "adapters), 0 tenants" in ln for ln in srv.lines),
                  "start-up line counts the keys")
            run_manage_key_test(srv)
            run_catalog_test(srv, store)
        finally:
            check(srv.stop() == 0, "keys-file server exits 0")
        for text, why in (("caf\u00e9-key\n", "visible ASCII"), ("# none\n", "holds no key")):
            with open(kf, "w", encoding="utf-8") as f:
                f.write(text)
            r = subprocess.run([T.QUIVER, "serve", "--model", T.MODEL, "--port", "0",
                                "--adapter-store", store, "--api-keys-file", kf],
                               capture_output=True, text=True, timeout=120)
            check(r.returncode != 0 and why in r.stderr,
                  f"a keys file that fails ({why}) stops start-up (rc {r.returncode})")
    finally:
        shutil.rmtree(kdir, ignore_errors=True)


def run_catalog_test(srv, store):
    """Listing validators: ETag + If-None-Match -> 304 without a body; X-Quiver-Catalog
    changes with a publish and comes back with the delete (it hashes name -> version pairs),
    ignores residency (a load changes the ETag only), and is the same on a second replica
    serving the same store."""
    def listing(path="/v1/adapters", headers=None):
        return srv.raw("GET", path, headers=headers, key="main-key")

    st, h, body = listing()
    etag, cat = h.get("ETag"), h.get("X-Quiver-Catalog")
    check(st == 200 and etag and etag.startswith('"') and cat and len(cat) == 16,
          f"GET /v1/adapters: ETag {etag}, X-Quiver-Catalog {cat}")
    st, h, body = listing(headers={"If-None-Match": etag})
    check(st == 304 and body == b"" and h.get("ETag") == etag, f"If-None-Match: 304 ({st})")
    check(listing("/v1/models")[1].get("X-Quiver-Catalog") == cat,
          "/v1/models: the same catalog hash")
    # shouting's weights with a config of other bytes: a version of its own (never loaded)
    files = [(n, fn, data + b"\n" if n == "adapter_config.json" else data)
             for n, fn, data in adapter_files(os.path.join(DEMO, "shouting"))]
    st, _ = upload(srv, "POST", "/v1/adapters", {"name": "team-m-cat"}, files, key="team-m-key")
    st2, h, _ = listing(headers={"If-None-Match": etag})
    check(st == 201 and st2 == 200 and h.get("X-Quiver-Catalog") != cat,
          "a publish changes the catalog hash (and the ETag)")
    other = T.Server("--adapter-store", store, "--api-key", "main-key")
    try:
        h2 = other.raw("GET", "/v1/adapters", key="main-key")[1]
        check(h2.get("X-Quiver-Catalog") == h.get("X-Quiver-Catalog"),
              "a second replica on the same store reports the same catalog hash")
    finally:
        other.stop()
    _, h, body = listing()
    cat1, etag1 = h.get("X-Quiver-Catalog"), h.get("ETag")
    tier = {a["name"]: a["tier"] for a in json.loads(body)["data"]}.get("team-m-cat")
    st, _, _ = srv.raw("POST", "/v1/completions", key="main-key",
                       body={"model": "team-m-cat", "prompt": "Hi", "max_tokens": 1})
    _, h, body = listing()
    tier2 = {a["name"]: a["tier"] for a in json.loads(body)["data"]}.get("team-m-cat")
    check(st == 200 and tier == "disk" and tier2 == "host" and
          h.get("X-Quiver-Catalog") == cat1 and h.get("ETag") != etag1,
          f"a load ({tier} -> {tier2}) changes the ETag, not the catalog hash")
    srv.raw("DELETE", "/v1/adapters/team-m-cat", key="team-m-key")
    st, h, _ = listing()
    check(h.get("X-Quiver-Catalog") == cat, "the delete brings the catalog hash back")


def run_manage_key_test(srv):
    """A manage=yes key of the keys file (patterns team-m-*, no --admin-key on the server):
    uploads, replaces, uses and deletes adapters its patterns cover; any other name is 403
    permission_denied with nothing published; keys without manage= may not administer."""
    files = adapter_files(os.path.join(DEMO, "pirate"))
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "team-m-pirate"}, files,
                      key="team-m-key")
    check(st == 201, f"manage key: upload of a covered name is 201 ({st} {data})")
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "other-pirate"}, files,
                      key="team-m-key")
    check(st == 403 and data["error"]["code"] == "permission_denied"
          and data["error"]["param"] == "name",
          f"manage key: upload of another name is 403 permission_denied ({st} {data})")
    check(srv.raw("GET", "/v1/adapters/other-pirate", key="main-key")[0] == 404,
          "the refused upload published nothing")
    st, data = upload(srv, "PUT", "/v1/adapters/pirate", {}, files, key="team-m-key")
    check(st == 403 and data["error"]["code"] == "permission_denied",
          f"manage key: PUT over another adapter is 403 ({st})")
    st, data = upload(srv, "PUT", "/v1/adapters/team-m-pirate", {}, files, key="team-m-key")
    check(st in (200, 201), f"manage key: PUT of its adapter ({st})")
    st, _, _ = srv.raw("POST", "/v1/completions",
                       {"model": "team-m-pirate", "prompt": "Hello", "max_tokens": 4},
                       key="team-m-key")
    check(st == 200, f"manage key: uses its adapter ({st})")
    st, _, data = srv.raw("DELETE", "/v1/adapters/pirate", key="team-m-key")
    check(st == 403 and json.loads(data)["error"]["code"] == "permission_denied",
          f"manage key: DELETE of another adapter is 403 ({st})")
    for k in ("team-a-key", "all-key", "main-key"):
        st, _ = upload(srv, "POST", "/v1/adapters", {"name": "team-m-x"}, files, key=k)
        check(st == 403, f"{k} (no manage=) may not upload ({st})")
    st, _, data = srv.raw("DELETE", "/v1/adapters/team-m-pirate", key="team-m-key")
    check(st == 200, f"manage key: DELETE of its adapter ({st} {data[:120]!r})")
    check(srv.raw("GET", "/v1/adapters/team-m-pirate", key="main-key")[0] == 404,
          "deleted")


def run(store, servers):
    fix, demo = fixture_cases(), demo_cases()
    preload = []
    for name, d, _ in fix + demo:
        preload += ["--preload", f"{name}={d}"]
    srv = T.Server("--adapter-store", store, *preload, "--max-seqs", "16", "--admin-key", ADMIN,
                   "--adapter-load-dir", os.path.join(FIX, "adapters"))
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

    # Metrics: registry counters, per-adapter request counters, vLLM's lora_requests_info.
    m = srv.metrics()
    check(m.get("quiver_adapter_loads_total", 0) >= 5, "metrics: adapter loads counted")
    check(m.get('quiver_adapter_resident{tier="host"}', 0) >= 5, "metrics: 5 adapters resident")
    check(m.get('quiver_adapter_requests_total{adapter="pirate"}', 0) >= 4,
          "metrics: per-adapter request counter")
    check(m.get('quiver_adapter_acquires_total{result="hit"}', 0) > 0, "metrics: acquire hits")
    # Per-adapter tokens and latencies: one more pirate chat moves pirate's series by exactly
    # its usage, and the labels together add up to the server-wide token counters.
    st, r = chat(srv, "pirate", "Name a sea.", 12)
    check(st == 200, "a pirate chat for the per-adapter metrics")
    lab = '{adapter="pirate"}'
    want = {"quiver_adapter_requests_total" + lab: 1,
            "quiver_adapter_prompt_tokens_total" + lab: r["usage"]["prompt_tokens"],
            "quiver_adapter_generation_tokens_total" + lab: r["usage"]["completion_tokens"],
            "quiver_adapter_time_to_first_token_seconds_count" + lab: 1,
            "quiver_adapter_time_per_output_token_seconds_count" + lab: 1}
    for _ in range(50):  # counted when the request's connection closes, just after the answer
        m2 = srv.metrics()
        if m2.get("quiver_adapter_requests_total" + lab, 0) > m["quiver_adapter_requests_total" + lab]:
            break
        time.sleep(0.1)
    got = {k: m2.get(k, 0) - m.get(k, 0) for k in want}
    check(got == want, f"metrics: one pirate chat adds its usage to pirate's series {got} vs {want}")
    ttft_sum = m2.get("quiver_adapter_time_to_first_token_seconds_sum" + lab, 0) - \
        m.get("quiver_adapter_time_to_first_token_seconds_sum" + lab, 0)
    check(0 < ttft_sum < 60, f"metrics: pirate's TTFT sum grows by that request's TTFT ({ttft_sum})")
    for per, total in (("quiver_adapter_generation_tokens_total", "quiver_generation_tokens_total"),
                       ("quiver_adapter_prompt_tokens_total", "quiver_prompt_tokens_total")):
        s_lab = sum(v for k, v in m2.items() if k.startswith(per + "{"))
        check(s_lab == m2[total], f"metrics: {per} over all labels = {total} ({s_lab})")
    # the CUDA pool's pinned tier and admission deferrals: exported, zero on the CPU backend
    for k in ('quiver_adapter_resident{tier="pinned"}', 'quiver_adapter_bytes{tier="pinned"}',
              "quiver_adapter_admission_deferrals_total",
              'quiver_sampled_tokens_total{where="device"}'):
        check(m.get(k) == 0, f"metrics: {k} = {m.get(k)} on the cpu")
    check(m.get('quiver_sampled_tokens_total{where="host"}', 0) > 0,
          "metrics: tokens sampled on the host (cpu)")
    info = [k for k in m if k.startswith("vllm:lora_requests_info{")]
    check(len(info) == 1 and 'max_lora="16"' in info[0], f"metrics: lora_requests_info {info}")

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
    run_admin_tests(srv, store, fix, demo, solo, base)
    run_prefix_cache_test(srv, fix, demo, solo)
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
    p = fix[1][2][0]  # "up" holds the prefix-tuning version PUT last
    st, r = complete(srv2, "up", p[0], p[2])
    check(st == 200 and text_of(r) == solo[(fix[1][0], 0)], "after restart: uploaded 'up' served")
    st, data = upload(srv2, "POST", "/v1/adapters", {"name": "x"}, adapter_files(fix[0][1]))
    check(st == 403 and "--admin-key" in str(data), f"no --admin-key: uploads 403 ({st})")
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

    # No head-of-line blocking: with loads slowed to 8 s, a base request sent after a request on
    # a cold adapter finishes long before it (well inside the load, even on a sanitizer build
    # where 8 tokens take seconds); the adapter request then answers correctly.
    delay_s = 8.0
    os.environ["QUIVER_TEST_ADAPTER_LOAD_DELAY_MS"] = str(int(delay_s * 1000))
    try:
        srv4 = T.Server("--adapter-store", store)
    finally:
        del os.environ["QUIVER_TEST_ADAPTER_LOAD_DELAY_MS"]
    servers.append(srv4)
    out = {}
    name, _, prompts = demo[0]

    def cold():
        out["cold"] = chat(srv4, name, prompts[0][0])
        out["cold_t"] = time.time()

    t0 = time.time()
    th = threading.Thread(target=cold)
    th.start()
    time.sleep(0.3)
    st, r = complete(srv4, base, g[0], 8)
    t_base = time.time()
    th.join(60)
    st_c, r_c = out.get("cold", (0, {}))
    check(st == 200 and t_base - t0 < delay_s - 1.0 and t_base < out.get("cold_t", 0),
          f"a base request is not blocked by a cold adapter load ({t_base - t0:.2f} s, "
          f"load takes {delay_s:.0f} s)")
    check(st_c == 200 and text_of(r_c) == solo[(name, 0)] and out["cold_t"] - t0 >= delay_s,
          f"the cold adapter request answers after its load ({out.get('cold_t', 0) - t0:.2f} s)")
    rc = srv4.stop()
    check(rc == 0, f"fourth server exits 0 ({rc})")

    # A 2 MiB host budget holds pirate (1.8 MB) or shouting (0.7 MB), never both: concurrent
    # requests on the two wait for each other's release instead of failing, and stay exact.
    srv5 = T.Server("--adapter-store", store, "--adapter-host-mb", "2")
    servers.append(srv5)
    res = {}

    def one(i, name, k):
        res[i] = chat(srv5, name, dict((n, p) for n, _, p in demo)[name][k][0])

    jobs = [("pirate", 0), ("shouting", 0), ("pirate", 1), ("shouting", 1)] * 2
    ths = [threading.Thread(target=one, args=(i, n, k)) for i, (n, k) in enumerate(jobs)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(300)
    bad = [(jobs[i], res.get(i)) for i in range(len(jobs))
           if res.get(i, (0,))[0] != 200 or text_of(res[i][1]) != solo[jobs[i]]]
    check(not bad, f"2 MiB budget: {len(jobs)} alternating requests exact {bad[:1]}")
    m = srv5.metrics()
    ev = m.get('quiver_adapter_evictions_total{tier="host"}', 0)
    check(ev >= 1, f"2 MiB budget: evictions counted ({ev})")
    rc = srv5.stop()
    check(rc == 0, f"fifth server exits 0 ({rc})")

    run_keys_file_test(store)

    # Upload validation runs on the engine's worker pool, not on the HTTP thread: with commits
    # slowed to 4 s and a single HTTP thread, /health and a generation answer while an upload
    # is being validated; the upload then answers 201, and an invalid one 422. (4 s: a
    # sanitizer build on a loaded machine may take 2 s for the generation's first request.)
    os.environ["QUIVER_TEST_UPLOAD_DELAY_MS"] = "4000"
    try:
        srv6 = T.Server("--adapter-store", store, "--admin-key", ADMIN, "--http-threads", "1")
    finally:
        del os.environ["QUIVER_TEST_UPLOAD_DELAY_MS"]
    servers.append(srv6)
    up = {}

    def slow_upload(key, name, files):
        up[key] = upload(srv6, "POST", "/v1/adapters", {"name": name}, files)
        up[key + "_t"] = time.time()

    ia3_files = adapter_files(fix[2][1])
    wrong = ia3_files[:1] + adapter_files(DEMO + "/pirate")[1:]
    t0 = time.time()
    ths = [threading.Thread(target=slow_upload, args=("good", "slow-ia3", ia3_files)),
           threading.Thread(target=slow_upload, args=("bad", "slow-bad", wrong))]
    for t in ths:
        t.start()
    time.sleep(0.4)
    st_h, _, _ = srv6.raw("GET", "/health")
    t_h = time.time() - t0
    st_g, r_g = complete(srv6, base, g[0], 4)
    t_g = time.time() - t0
    for t in ths:
        t.join(60)
    t_up = up.get("good_t", 0) - t0
    check(st_h == 200 and t_h < 1.5, f"/health answers during an upload's validation ({t_h:.2f} s)")
    check(st_g == 200 and t_g < up.get("good_t", 0) - t0,
          f"a generation answers during an upload's validation ({t_g:.2f} s < {t_up:.2f} s)")
    st_u, d_u = up.get("good", (0, None))
    check(st_u == 201 and d_u.get("kind") == "IA3" and t_up >= 4.0,
          f"the slowed upload answers 201 after its validation: {st_u} {d_u} ({t_up:.2f} s)")
    st_b, d_b = up.get("bad", (0, None))
    check(st_b == 422 and "adapter_invalid" in str(d_b),
          f"an invalid upload answers 422 from the worker: {st_b} {d_b}")
    p = fix[2][2][0]
    st, r = complete(srv6, "slow-ia3", p[0], p[2])
    check(st == 200 and text_of(r) == solo[(fix[2][0], 0)], "the slowed upload serves")
    # SIGTERM while an upload is being validated: the drain waits for its answer (201).
    th = threading.Thread(target=slow_upload, args=("drain", "slow-drain", ia3_files))
    th.start()
    time.sleep(0.5)
    rc = srv6.stop()
    th.join(60)
    st_d = up.get("drain", (0, None))[0]
    check(rc == 0 and st_d == 201, f"SIGTERM during an upload's validation: 201 ({st_d}), "
          f"exit 0 ({rc})")

    # `quiver chat --adapter NAME` resolves NAME through the same store.
    env = dict(os.environ, QUIVER_ADAPTER_STORE=store)
    for name, _, prompts in demo:
        r = subprocess.run([T.QUIVER, "chat", "--model", T.MODEL, "--threads", "2", "--adapter",
                            name, "--message", prompts[0][0], "--temperature", "0",
                            "--max-tokens", "48"], capture_output=True, text=True, env=env,
                           timeout=300)
        got = r.stdout[:-1] if r.stdout.endswith("\n") else r.stdout
        check(r.returncode == 0 and got == solo[(name, 0)],
              f"quiver chat --adapter {name} (store name) equals the server: {got!r}")


def cached_of(resp):
    return ((resp.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens")


def run_prefix_cache_test(srv, fix, demo, solo):
    """The prefix cache is keyed by the loaded adapter version, never by the name: 'swap'
    uploaded with pirate's files is pirate's version (the store is content-addressed), so it
    reuses the K/V pirate computed for the same chat and answers as pirate. After a PUT of a
    LoRA's weights under the same name, nothing of the old version is reused (no stale K/V), and
    the LoRA, asked the same chat under its own name, reuses what 'swap' just computed."""
    (pname, pdir, pprompts), (lname, ldir) = demo[0], fix[0][:2]
    user = pprompts[0][0]
    st0, r0 = chat(srv, pname, user)  # pirate's pages for this chat are cached from here on
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "swap"}, adapter_files(pdir))
    check(st == 201, f"upload 'swap' ({pname}'s files): {st}")
    (st1, r1), (st2, r2) = chat(srv, "swap", user), chat(srv, "swap", user)
    check(st0 == st1 == st2 == 200 and text_of(r1) == text_of(r2) == solo[(pname, 0)] and
          cached_of(r1) >= 16 and cached_of(r2) == cached_of(r1),
          f"'swap' = {pname}'s version: its answer, with {pname}'s cached K/V "
          f"(cached_tokens {cached_of(r1)}, {cached_of(r2)})")
    c_swap = cached_of(r1)
    # lora-r8-all has served completions only, so no chat page of its version is cached yet.
    st, data = upload(srv, "PUT", "/v1/adapters/swap", {}, adapter_files(ldir))
    check(st == 200 and data.get("kind") == "LORA", f"PUT 'swap' with {lname}'s files: {st}")
    st, r = chat(srv, "swap", user)
    st_l, r_l = chat(srv, lname, user)
    check(st == st_l == 200 and cached_of(r) == 0 and text_of(r) == text_of(r_l) and
          text_of(r) != solo[(pname, 0)],
          f"after the PUT: nothing of {pname}'s K/V reused ({cached_of(r)}), "
          f"{lname}'s answer {text_of(r)[:40]!r}")
    check(cached_of(r_l) == c_swap,
          f"{lname} under its own name reuses the K/V 'swap' computed for its version "
          f"({cached_of(r_l)} cached)")
    st, _, _ = srv.raw("DELETE", "/v1/adapters/swap", key=ADMIN)
    check(st == 200, f"DELETE 'swap': {st}")
    # POST /reset_prefix_cache (vLLM's route): the admin key only; frees every cached page no
    # request holds, so the next request computes its whole prompt again
    codes = [srv.raw("POST", "/reset_prefix_cache", key=k)[0] for k in (None, "wrong")]
    st_get = srv.raw("GET", "/reset_prefix_cache", key=ADMIN)[0]
    st, _, data = srv.raw("POST", "/reset_prefix_cache", key=ADMIN)
    body = json.loads(data) if st == 200 else {}
    check(codes == [401, 403] and st_get == 405 and st == 200 and
          body.get("object") == "prefix_cache.reset" and body.get("pages_freed", 0) > 0,
          f"POST /reset_prefix_cache: 401/403 without the admin key, 405 on GET, then {st} {body}")
    m = srv.metrics()
    (st1, r1), (st2, r2) = chat(srv, pname, user), chat(srv, pname, user)
    pages = m.get('quiver_prefix_cache_pages{state="all"}')
    check(pages == 0 and cached_of(r1) == 0 and
          cached_of(r2) == c_swap and text_of(r1) == text_of(r2) == solo[(pname, 0)],
          f"after the reset: {pages} pages cached, {pname} computes its prompt again "
          f"(cached_tokens {cached_of(r1)}, then {cached_of(r2)})")


def run_admin_tests(srv, store, fix, demo, solo, base):
    """Listing, upload / PUT / DELETE, vLLM load/unload, and their refusals."""
    names = {n for n, _, _ in fix + demo}
    # GET /v1/models: the base then every adapter with kind, rank, version and tier.
    st, _, data = srv.raw("GET", "/v1/models")
    models = json.loads(data)["data"] if st == 200 else []
    ids = [m["id"] for m in models]
    check(st == 200 and ids[0] == base and names <= set(ids[1:]), f"/v1/models lists all: {ids}")
    by = {m["id"]: m for m in models}
    pir = by.get("pirate", {}).get("adapter", {})
    want_v = open(os.path.join(store, "names", "pirate")).read().strip()
    check(pir.get("kind") == "LORA" and pir.get("rank") == 8 and pir.get("version") == want_v
          and pir.get("tier") == "host", f"/v1/models pirate: {pir}")
    check(by.get("ia3", {}).get("adapter", {}).get("kind") == "IA3", "/v1/models ia3 kind")
    # GET /v1/models/{id} (openai's models.retrieve): the listing's object, under each name.
    client = srv.client()
    for mid in ("pirate", f"{base}:pirate"):
        got = client.models.retrieve(mid).model_dump(exclude_none=True)
        check(got == by.get("pirate"), f"models.retrieve({mid!r}) is the listing's: {got}")
    check(client.models.retrieve(base).model_dump(exclude_none=True) == by.get(base),
          "models.retrieve(base) is the listing's")
    for mid in ("nope", "other-base:pirate", "bad%20name"):
        T.expect_error(srv, f"GET /v1/models/{mid}", 404, "GET", f"/v1/models/{mid}")
    st, _, data = srv.raw("GET", "/v1/models/nope")
    check(json.loads(data)["error"].get("code") == "model_not_found", "404 model_not_found")
    st, _, data = srv.raw("GET", "/v1/adapters/shouting")
    one = json.loads(data)
    check(st == 200 and one.get("name") == "shouting" and one.get("tier") == "host",
          f"GET /v1/adapters/shouting: {one}")
    st, _, data = srv.raw("GET", "/v1/adapters")
    check(st == 200 and names <= {a["name"] for a in json.loads(data)["data"]}, "GET /v1/adapters")
    T.expect_error(srv, "GET unknown adapter", 404, "GET", "/v1/adapters/nope")
    T.expect_error(srv, "GET path trick", 400, "GET", "/v1/adapters/..%2f..%2fetc")

    ia3_dir, prefix_dir = fix[2][1], fix[1][1]
    # Refusals: no key 401, wrong key 403, names, pickles, missing or invalid files, conflicts.
    files = adapter_files(ia3_dir)
    st, _ = upload(srv, "POST", "/v1/adapters", {"name": "up"}, files, key=None)
    check(st == 401, f"upload without a key: 401 ({st})")
    st, _ = upload(srv, "POST", "/v1/adapters", {"name": "up"}, files, key="wrong")
    check(st == 403, f"upload with a non-admin key: 403 ({st})")
    for bad in ("../up", "a/b", "..", ".hidden", "x" * 200):
        st, data = upload(srv, "POST", "/v1/adapters", {"name": bad}, files)
        check(st == 400 and "name" in str(data), f"upload named {bad[:20]!r}: 400 ({st})")
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "pk"},
                      files[:1] + [("adapter_model.bin", "adapter_model.bin", b"\x80\x02}q\x00.")])
    check(st == 400 and "pickle" in str(data), f"pickle upload refused: {st} {data}")
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "pk"}, files[:1])
    check(st == 400 and "adapter_model.safetensors" in str(data), f"no weights: 400 ({st})")
    wrong = files[:1] + adapter_files(DEMO + "/pirate")[1:]
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "pk"}, wrong)
    check(st == 422 and "tmp" not in str(data), f"IA3 config + LoRA weights: 422 {st} {data}")
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "pk"},
                      [("adapter_config.json", "adapter_config.json", b"{not json")] + files[1:])
    check(st in (400, 422), f"malformed config: {st} {data}")
    check(not os.path.exists(os.path.join(store, "names", "pk")), "nothing published on refusals")
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "pirate"}, files)
    check(st == 409, f"POST over an existing name: 409 ({st})")

    # Upload -> use -> PUT a new version while a request of the old one runs -> DELETE -> 404.
    st, data = upload(srv, "POST", "/v1/adapters", {"name": "up"}, files)
    check(st == 201 and data.get("kind") == "IA3", f"upload: 201 {data}")
    p_ia3 = fix[2][2][0]
    st, r = complete(srv, "up", p_ia3[0], p_ia3[2])
    check(st == 200 and text_of(r) == solo[(fix[2][0], 0)], "uploaded adapter equals HF PEFT")
    client = srv.client()
    stream = client.completions.create(model="up", prompt=p_ia3[0], max_tokens=p_ia3[2],
                                       temperature=0, stream=True)
    parts = []
    it = iter(stream)
    first = next(it)
    parts.append(first.choices[0].text)
    st, _, mtext = srv.raw("GET", "/metrics")
    check('running_lora_adapters="up"' in mtext.decode(),
          "vllm:lora_requests_info names the running adapter")
    st, data = upload(srv, "PUT", "/v1/adapters/up", {}, adapter_files(prefix_dir))
    check(st == 200 and data.get("kind") == "PREFIX_TUNING", f"PUT new version: {st} {data}")
    p_pre = fix[1][2][0]
    st, r = complete(srv, "up", p_pre[0], p_pre[2])
    check(st == 200 and text_of(r) == solo[(fix[1][0], 0)], "after PUT: the new version serves")
    for ch in it:
        parts.append(ch.choices[0].text if ch.choices else "")
    check("".join(parts) == solo[(fix[2][0], 0)],
          "a request of the old version running across the PUT is unaffected")
    st, _, data = srv.raw("DELETE", "/v1/adapters/up", key=None)
    check(st == 401, f"DELETE without a key: 401 ({st})")
    st, _, data = srv.raw("DELETE", "/v1/adapters/up", key=ADMIN)
    check(st == 200, f"DELETE: 200 ({st} {data!r})")
    T.expect_error(srv, "use after DELETE", 404, "POST", "/v1/completions",
                   {"model": "up", "prompt": "x", "max_tokens": 2})
    T.expect_error(srv, "DELETE again", 404, "DELETE", "/v1/adapters/up", key=ADMIN)
    st, data = upload(srv, "PUT", "/v1/adapters/up", {}, adapter_files(prefix_dir))
    check(st == 200, f"PUT re-creates 'up' ({st})")

    # vLLM-compatible load / unload.
    lp = fix[0][1]
    body = {"lora_name": "vl", "lora_path": lp}
    T.expect_error(srv, "load_lora_adapter without a key", 401, "POST", "/v1/load_lora_adapter",
                   body, key=None)
    st, _, data = srv.raw("POST", "/v1/load_lora_adapter", body, key=ADMIN)
    check(st == 200 and b"vl" in data, f"load_lora_adapter: {st} {data!r}")
    p = fix[0][2][0]
    st, r = complete(srv, "vl", p[0], p[2])
    check(st == 200 and text_of(r) == solo[(fix[0][0], 0)], "vLLM-loaded adapter equals HF PEFT")
    T.expect_error(srv, "load_lora_adapter outside --adapter-load-dir", 403, "POST",
                   "/v1/load_lora_adapter",
                   {"lora_name": "vl2", "lora_path": os.path.join(DEMO, "pirate")}, key=ADMIN)
    T.expect_error(srv, "load_lora_adapter escaping with ..", 403, "POST",
                   "/v1/load_lora_adapter",
                   {"lora_name": "vl2", "lora_path": os.path.join(FIX, "adapters", "..", "..")},
                   key=ADMIN)
    T.expect_error(srv, "load_lora_adapter bad name", 400, "POST", "/v1/load_lora_adapter",
                   {"lora_name": "../vl", "lora_path": lp}, key=ADMIN)
    st, _, data = srv.raw("POST", "/v1/unload_lora_adapter", {"lora_name": "vl"}, key=ADMIN)
    check(st == 200, f"unload_lora_adapter: {st} {data!r}")
    T.expect_error(srv, "use after unload", 404, "POST", "/v1/completions",
                   {"model": "vl", "prompt": "x", "max_tokens": 2})


if __name__ == "__main__":
    sys.exit(main())
