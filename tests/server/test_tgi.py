#!/usr/bin/env python3
"""test_tgi.py - the TGI / LoRAX text-generation API (/generate, /generate_stream, LoRAX's
POST /) with the real clients: `lorax-client` (predibase's LoRAX Python client) and
`huggingface_hub`'s InferenceClient.text_generation, plus raw HTTP.

Setup: `quiver serve` on SmolLM2-135M-Instruct Q4_1 with --api-key and the demo LoRA `pirate`.

1. Greedy by default (TGI semantics): the generated token ids equal Hugging Face's greedy
   continuation (tests/fixtures/smollm2/golden.json), details (finish_reason length, token
   counts, per-token logprobs, null seed) are filled, and the text equals quiver's own
   /v1/completions answer. The same through huggingface_hub, streamed and not.
2. Streaming: one event per token; the concatenated token texts equal the last event's
   generated_text and the non-streamed answer; the last event has details. A chat-formatted
   input ends with the model's end token: finish_reason eos_token, its event special.
3. parameters.adapter_id names an adapter of the store: the LoRA's answer equals
   /v1/completions with model "pirate"; an unknown one is NotFoundError (404).
4. Sampling (do_sample, temperature, seed): the same seed gives the same text and
   details.seed echoes it; stop sequences end with stop_sequence; return_full_text,
   truncate, return_k_alternatives (the first alternative is the greedy token itself).
5. decoder_input_details: details.prefill lists the input tokens, the first with a null
   logprob, the others with HF's log_softmax values (tests/fixtures/smollm2/edits.json); with
   a stream it is a validation error.
6. Refusals, never silent: typical_p, best_of > 1, watermark, adapter_source s3 are
   validation errors (400, error_type "validation"); a missing key is
   401; bad JSON is 400; all in TGI's {"error", "error_type"} shape.
7. Structured output: LoRAX's parameters.response_format (a JSON schema, or JSON mode) and
   TGI's parameters.grammar {"type": "json"}: the answer is valid under the schema (jsonschema
   judges) and the same through both clients; regex grammars and schemas quiver cannot
   follow are validation errors.
8. merged_adapters (lorax-client's MergedAdapters): one adapter with weight 1 answers as that
   adapter; pirate + r8 (linear) differs from both, repeats itself, and is made once (one
   registry load for two requests); ties and seeded dare_ties run and repeat; the same object
   at the top level of /v1/completions and of chat (the openai client's extra_body) works;
   refused: an unknown part (404), a non-LoRA part (422 naming IA3), different ranks (422
   naming the projection; PEFT's "cat" takes them), adapter_id beside it and density 0 (400).
   With --max-merging 1, eight new merges sent at once each get 200 or 503 (Retry-After, the
   flag named), and a refused one succeeds when sent again.

Usage: test_tgi.py <quiver-binary>. Exit 77 when the model has not been fetched.
"""
import atexit
import http.client
import json
import os
import re
import shutil
import sys
import tempfile

import jsonschema

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_concurrency as TC  # noqa: E402 - make_adapter: a small random SmolLM2 LoRA
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
GOLDEN = T.GOLDEN  # HF greedy continuations of the SmolLM2 prompts


def run(srv):
    import lorax
    from huggingface_hub import InferenceClient
    base = f"http://127.0.0.1:{srv.port}"
    auth = {"Authorization": "Bearer " + T.KEY}
    lx = lorax.Client(base, headers=auth, timeout=300)
    hf = InferenceClient(model=base, headers=auth, timeout=300)

    # 1. greedy == HF
    g = GOLDEN["prompts"][0]
    n = 12
    r = lx.generate(g["text"], max_new_tokens=n)
    ids = [t.id for t in r.details.tokens]
    check(ids == g["greedy"][:n], f"lorax generate: greedy ids == HF {ids} vs {g['greedy'][:n]}")
    d = r.details
    check(d.finish_reason.value == "length" and d.generated_tokens == n and
          d.prompt_tokens == len(g["ids"]) and d.seed is None and d.prefill == [] and
          all(t.logprob <= 0 for t in d.tokens),
          f"details: length, {n} tokens, prompt {len(g['ids'])}, null seed, logprobs <= 0")
    st, _, data = srv.raw("POST", "/v1/completions",
                          {"prompt": g["text"], "max_tokens": n, "temperature": 0})
    oa = json.loads(data)["choices"][0]["text"]
    check(r.generated_text == oa == "".join(t.text for t in d.tokens),
          f"generated_text {r.generated_text!r} == /v1/completions {oa!r} == joined tokens")
    h = hf.text_generation(g["text"], max_new_tokens=n)
    check(h == oa, f"huggingface_hub text_generation: {h!r}")
    hs = "".join(hf.text_generation(g["text"], max_new_tokens=n, stream=True))
    check(hs == oa, f"huggingface_hub stream: {hs!r}")
    hd = hf.text_generation(g["text"], max_new_tokens=n, details=True)
    check([t.id for t in hd.details.tokens] == g["greedy"][:n], "huggingface_hub details ids")

    # 2. streaming
    events = list(lx.generate_stream(g["text"], max_new_tokens=n))
    text = "".join(e.token.text for e in events if not e.token.special)
    last = events[-1]
    check(len(events) == n and [e.token.id for e in events] == g["greedy"][:n],
          f"one event per token ({len(events)})")
    check(all(e.generated_text is None and e.details is None for e in events[:-1]) and
          last.generated_text == text == oa and last.details.generated_tokens == n,
          f"the last event carries generated_text {last.generated_text!r} and details")
    chat = ("<|im_start|>user\nWhat is the capital of France? Answer in one word.<|im_end|>\n"
            "<|im_start|>assistant\n")
    events = list(lx.generate_stream(chat, max_new_tokens=64))
    last = events[-1]
    check(last.details.finish_reason.value == "eos_token" and last.token.special and
          last.token.text == "<|im_end|>" and "<|im_end|>" not in last.generated_text,
          f"end token: eos_token, special event {last.token}, text {last.generated_text!r}")

    # 3. adapters
    r = lx.generate("Tell me about the sea.", adapter_id="pirate", max_new_tokens=16)
    st, _, data = srv.raw("POST", "/v1/completions", {"model": "pirate", "max_tokens": 16,
                                                      "prompt": "Tell me about the sea.",
                                                      "temperature": 0})
    want = json.loads(data)["choices"][0]["text"]
    check(r.generated_text == want, f"adapter_id pirate == /v1/completions pirate ({want!r})")
    base_r = lx.generate("Tell me about the sea.", max_new_tokens=16)
    check(base_r.generated_text != want, "the adapter changes the answer")
    try:
        lx.generate("Hi", adapter_id="no-such-adapter")
        check(False, "unknown adapter refused")
    except lorax.errors.NotFoundError as e:
        check("no-such-adapter" in str(e), f"unknown adapter: NotFoundError ({e})")

    # 4. sampling and options
    kw = dict(do_sample=True, temperature=0.9, top_p=0.95, seed=1234, max_new_tokens=24)
    a, b = lx.generate("Once upon a time", **kw), lx.generate("Once upon a time", **kw)
    check(a.generated_text == b.generated_text and a.details.seed == 1234,
          f"seeded sampling repeats, seed echoed ({a.details.seed})")
    c = lx.generate("Once upon a time", **dict(kw, seed=99))
    check(c.generated_text != a.generated_text, "another seed, another text")
    r = lx.generate("1, 2, 3, 4,", max_new_tokens=12, stop_sequences=[" 7"])
    check(r.details.finish_reason.value == "stop_sequence" and r.generated_text.endswith("6,"),
          f"stop_sequence ends before the stop text ({r.generated_text!r})")
    r = lx.generate(g["text"], max_new_tokens=4, return_full_text=True)
    check(r.generated_text.startswith(g["text"]) and r.generated_text[len(g["text"]):] ==
          "".join(t.text for t in r.details.tokens), "return_full_text")
    r = lx.generate(g["text"], max_new_tokens=2, truncate=2)
    check(r.details.prompt_tokens == 2, f"truncate keeps 2 prompt tokens ({r.details.prompt_tokens})")
    r = lx.generate(g["text"], max_new_tokens=3, return_k_alternatives=3)
    alts = [t.alternative_tokens for t in r.details.tokens]
    check(all(len(a) == 3 and a[0].id == t.id and a[0].logprob >= a[1].logprob >= a[2].logprob
              for a, t in zip(alts, r.details.tokens)),
          "return_k_alternatives: 3 per token, the greedy one first")

    # 5. decoder_input_details: the prompt's logprobs
    edits = json.load(open(os.path.join(T.ROOT, "tests", "fixtures", "smollm2", "edits.json")))
    sc = next(x for x in edits["prompt_logprobs"] if x["prompt"] == 0)
    r = lx.generate(g["text"], max_new_tokens=1, decoder_input_details=True)
    pre = r.details.prefill
    worst = max(abs(t.logprob - w["logprob"]) for t, w in zip(pre[1:], sc["rows"]))
    check([t.id for t in pre] == g["ids"] and pre[0].logprob is None and
          len(pre) == len(sc["rows"]) + 1 and worst < 2e-3 and
          "".join(t.text for t in pre) == g["text"],
          f"decoder_input_details: {len(pre)} prefill tokens, within {worst:.2g} of HF")
    st, _, data = srv.raw("POST", "/generate_stream", {"inputs": g["text"], "parameters": {
        "max_new_tokens": 1, "decoder_input_details": True}})
    err = json.loads(data)
    check(st == 400 and err.get("error_type") == "validation" and
          "decoder_input_details" in err["error"],
          f"decoder_input_details streamed: 400 validation ({st} {err})")

    # 7. structured output: LoRAX's response_format (a JSON schema, or JSON mode without one)
    # and TGI's grammar {"type": "json"}: jsonschema judges; both spellings give one answer
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "sure": {"type": "boolean"}},
              "required": ["city", "sure"]}
    ask = GOLDEN["prompts"][0]["text"]
    r = lx.generate(ask, max_new_tokens=48, details=True,
                    response_format={"type": "json_object", "schema": schema})
    try:
        ok = jsonschema.Draft202012Validator(schema).is_valid(json.loads(r.generated_text))
    except ValueError:
        ok = False
    check(ok and r.details.finish_reason == "eos_token",
          f"lorax response_format with a schema: {r.generated_text!r} "
          f"({r.details.finish_reason})")
    g = hf.text_generation(ask, max_new_tokens=48, grammar={"type": "json", "value": schema})
    check(g == r.generated_text, f"huggingface_hub grammar json: the same answer ({g!r})")
    st, _, data = srv.raw("POST", "/generate", {"inputs": ask, "parameters": {
        "max_new_tokens": 48, "response_format": {"type": "json_object"}}})
    text = json.loads(data).get("generated_text", "") if st == 200 else ""
    try:
        ok = isinstance(json.loads(text), dict)
    except ValueError:
        ok = False
    check(ok, f"response_format json_object without a schema: JSON mode, one object {text!r}")
    g = hf.text_generation("The year Paris hosted the Olympics was", max_new_tokens=8,
                           grammar={"type": "regex", "value": r" (1[89]|20)\d\d"})
    check(re.fullmatch(r" (1[89]|20)\d\d", g) is not None,
          f"huggingface_hub grammar regex: the whole text matches ({g!r})")
    for params, what in (({"grammar": {"type": "regex", "value": "(a)\\1"}}, "backreferences"),
                         ({"grammar": {"type": "json", "value": {"type": "number",
                                                                  "multipleOf": 0.25}}},
                          "multipleOf"),
                         ({"response_format": {"type": "yaml"}}, "response_format")):
        st, _, data = srv.raw("POST", "/generate", {"inputs": "Hi", "parameters": params})
        err = json.loads(data)
        check(st == 400 and err.get("error_type") == "validation" and what in err["error"],
              f"{what}: 400 validation ({st} {err})")

    # 8. merged_adapters
    from lorax.types import MergedAdapters
    sea = "Tell me about the sea."
    solo = lx.generate(sea, adapter_id="pirate", max_new_tokens=16)
    one = lx.generate(sea, max_new_tokens=16, merged_adapters=MergedAdapters(
        ids=["pirate"], weights=[1.0], density=1.0))
    check([t.id for t in one.details.tokens] == [t.id for t in solo.details.tokens],
          f"merged_adapters [pirate] weight 1 == adapter_id pirate ({one.generated_text!r})")
    r8 = lx.generate(sea, adapter_id="r8", max_new_tokens=16)
    pair = MergedAdapters(ids=["pirate", "r8"], weights=[1.0, 0.5], density=1.0)
    loads = srv.metrics()["quiver_adapter_loads_total"]
    lin = lx.generate(sea, max_new_tokens=16, merged_adapters=pair)
    lin2 = lx.generate(sea, max_new_tokens=16, merged_adapters=pair)
    made = srv.metrics()["quiver_adapter_loads_total"] - loads
    check(lin.generated_text == lin2.generated_text and
          lin.generated_text not in (solo.generated_text, r8.generated_text) and made == 1,
          f"pirate + r8 linear: its own answer, repeated, merged once ({made} loads): "
          f"{lin.generated_text!r}")
    for strat, extra in (("ties", {}), ("dare_ties", {"seed": 5})):
        body = {"inputs": sea, "parameters": {"max_new_tokens": 12, "merged_adapters": dict(
            ids=["pirate", "r8"], weights=[0.8, 0.6], merge_strategy=strat, density=0.5,
            majority_sign_method="frequency", **extra)}}
        got = [srv.raw("POST", "/generate", body) for _ in range(2)]
        texts = [json.loads(d).get("generated_text") for _, _, d in got]
        check(all(st == 200 for st, _, _ in got) and texts[0] == texts[1] and texts[0],
              f"{strat}: 200 and the same answer twice ({texts[0]!r})")
    st, _, data = srv.raw("POST", "/v1/completions", {
        "prompt": sea, "max_tokens": 16, "temperature": 0,
        "merged_adapters": {"ids": ["pirate"], "weights": [1]}})
    check(st == 200 and json.loads(data)["choices"][0]["text"] == solo.generated_text,
          f"/v1/completions merged_adapters [pirate] == pirate ({st})")
    c = srv.client().chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": sea}],
        extra_body={"merged_adapters": {"ids": ["pirate", "r8"], "weights": [1, 0.5]}})
    check(bool(c.choices[0].message.content), f"chat with merged_adapters ({c.choices[0]})")
    for ma, code, what in (({"ids": ["pirate", "no-such"]}, 404, "no-such"),
                           ({"ids": ["pirate", "ia3"]}, 422, "IA3"),
                           ({"ids": ["pirate", "r4"]}, 422, "q_proj"),
                           ({"ids": ["pirate"], "density": 0}, 400, "density")):
        st, _, data = srv.raw("POST", "/generate", {"inputs": sea, "parameters": {
            "max_new_tokens": 4, "merged_adapters": ma}})
        err = json.loads(data)
        check(st == code and what in err.get("error", ""), f"merged {ma}: {code} ({st} {err})")
    st, _, data = srv.raw("POST", "/generate", {"inputs": sea, "parameters": {
        "max_new_tokens": 8, "merged_adapters": {"ids": ["pirate", "r4"], "weights": [1, 0.5],
                                                 "merge_strategy": "cat"}}})
    check(st == 200 and json.loads(data).get("generated_text"),
          f"cat merges pirate (rank 8) with r4 (rank 4) ({st} {data[:80]})")
    st, _, data = srv.raw("POST", "/generate", {"inputs": sea, "parameters": {
        "adapter_id": "pirate", "merged_adapters": {"ids": ["r8"]}}})
    err = json.loads(data)
    check(st == 400 and "merged_adapters" in err.get("error", ""),
          f"adapter_id beside merged_adapters: 400 ({st} {err})")
    # --max-merging 1: new merges sent together get 200, or 503 with Retry-After while another
    # is being made (whether any must wait depends on timing: test_registry checks the limit
    # itself); each refused one then succeeds alone
    bodies = [{"inputs": sea, "parameters": {"max_new_tokens": 2, "merged_adapters": {
        "ids": ["pirate", "r8"], "weights": [1.0, 0.05 * (i + 1)]}}} for i in range(8)]
    conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120) for _ in bodies]
    for c, b in zip(conns, bodies):  # every request sent before any answer is read
        c.request("POST", "/generate", body=json.dumps(b), headers={
            "Authorization": "Bearer " + T.KEY, "Content-Type": "application/json"})
    answers = []
    for c in conns:
        r = c.getresponse()
        answers.append((r.status, dict(r.getheaders()), r.read()))
        c.close()
    busy = [i for i, (st, _, _) in enumerate(answers) if st == 503]
    check(all(st == 200 for i, (st, _, _) in enumerate(answers) if i not in busy),
          f"concurrent merges: 200 or 503 ({[a[0] for a in answers]})")
    for i in busy:
        st, h, data = answers[i]
        check(h.get("Retry-After") == "1" and "--max-merging" in json.loads(data)["error"],
              f"merge {i}: 503 with Retry-After and the limit named ({h} {data[:120]})")
        st, _, _ = srv.raw("POST", "/generate", bodies[i])
        check(st == 200, f"merge {i} retried alone: 200 ({st})")
    print(f"  ({len(busy)} of 8 concurrent new merges waited for --max-merging 1)")

    # 6. refusals
    for name, kw in (("typical_p", dict(typical_p=0.5)), ("watermark", dict(watermark=True)),
                     ("adapter_source", dict(adapter_id="pirate", adapter_source="s3"))):
        try:
            lx.generate("Hi", max_new_tokens=2, **kw)
            check(False, f"{name} refused")
        except lorax.errors.ValidationError as e:
            check(name in str(e), f"{name}: ValidationError ({e})")
    for body, what in (({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": True}},
                        "best_of"),
                       ({"inputs": 5}, "inputs"), ("{not json", "not valid JSON"),
                       ({"inputs": "Hi", "parameters": {"max_new_tokens": 0}},
                        "max_new_tokens")):
        st, _, data = srv.raw("POST", "/generate", body)
        err = json.loads(data)
        check(st == 400 and err.get("error_type") == "validation" and what in err["error"],
              f"{what}: 400 validation ({st} {err})")
    st, _, data = srv.raw("POST", "/generate_stream", {"inputs": "Hi"}, key=None)
    check(st == 401 and "error" in json.loads(data), f"no key: 401 in TGI shape ({st})")
    st, _, data = srv.raw("GET", "/generate")
    check(st == 405, f"GET /generate: 405 ({st})")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    fx = os.path.join(T.ROOT, "tests", "fixtures", "adapters")
    r4 = tempfile.mkdtemp(prefix="quiver-test-r4-")
    atexit.register(shutil.rmtree, r4, True)
    TC.make_adapter(r4, 0)  # rank 4 on q/v/o: pirate's q/v are rank 8
    srv = T.Server("--api-key", T.KEY, "--preload",
                   "pirate=" + os.path.join(T.ROOT, "deploy", "demo-adapters", "pirate"),
                   "--preload", "r8=" + os.path.join(fx, "smollm2", "lora_r8_all"),
                   "--preload", "ia3=" + os.path.join(fx, "smollm2", "ia3"),
                   "--preload", "r4=" + r4, "--max-merging", "1")
    try:
        run(srv)
    finally:
        check(srv.stop() == 0, "server exits 0")
    return T.report([srv])


if __name__ == "__main__":
    sys.exit(main())
