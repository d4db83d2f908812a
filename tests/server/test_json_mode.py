#!/usr/bin/env python3
"""JSON mode over HTTP (response_format {"type": "json_object"}, docs/http-api.md#json-mode) with
the official openai client, on SmolLM2-135M-Instruct: Python's json module judges every answer.

Usage: test_json_mode.py QUIVER_BINARY   (run by tests/server/test_json_mode.sh)
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check


def run_json_mode_tests(srv):
    """response_format {"type": "json_object"}: the answer is one JSON object (Python's json
    module judges), even for a prompt that asks for prose, streamed or not, sampled or greedy;
    asked for JSON, the constrained greedy answer equals the free one (the mask only removes
    what breaks the JSON); combinations that fight the forced end are refused."""
    client = srv.client()
    base = os.path.basename(T.MODEL)[:-len(".gguf")]
    jm = {"type": "json_object"}
    prose = [{"role": "user", "content": "Tell me about cats in two sentences."}]
    free = client.chat.completions.create(model=base, messages=prose, max_tokens=64,
                                          temperature=0).choices[0].message.content
    r = client.chat.completions.create(model=base, messages=prose, max_tokens=64, temperature=0,
                                       response_format=jm)
    text = r.choices[0].message.content
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    check(r.choices[0].finish_reason == "stop" and isinstance(obj, dict) and text != free,
          f"JSON mode: a prose prompt gets one JSON object {text[:60]!r} (free: {free[:40]!r})")
    parts, finish = [], None
    for ch in client.chat.completions.create(model=base, messages=prose, max_tokens=64,
                                             temperature=0, response_format=jm, stream=True):
        if ch.choices and ch.choices[0].delta.content:
            parts.append(ch.choices[0].delta.content)
        if ch.choices and ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    check("".join(parts) == text and finish == "stop", "JSON mode streamed: the same object")
    r = client.chat.completions.create(model=base, messages=prose, max_tokens=48,
                                       temperature=1.0, seed=7, n=4, response_format=jm)
    ok, stopped = True, 0
    for c in r.choices:
        if c.finish_reason == "stop":
            stopped += 1
            try:
                ok = ok and isinstance(json.loads(c.message.content), dict)
            except ValueError:
                ok = False
    check(ok and stopped >= 2, f"JSON mode sampled, n=4: every finished choice is one JSON "
          f"object ({stopped} finished)")
    ask = [{"role": "user", "content": 'Output a JSON object with the keys "name" and "age" for '
            'Bob, 42.'}]
    a = client.chat.completions.create(model=base, messages=ask, max_tokens=100, temperature=0)
    b = client.chat.completions.create(model=base, messages=ask, max_tokens=100, temperature=0,
                                       response_format=jm)
    check(a.choices[0].message.content == b.choices[0].message.content and
          isinstance(json.loads(b.choices[0].message.content), dict),
          f"JSON mode: asked for JSON, the constrained answer equals the free one "
          f"({b.choices[0].message.content!r})")
    # logprobs are the model's (the row before the mask): the same numbers as the free run's
    lp = [client.chat.completions.create(model=base, messages=ask, max_tokens=100, temperature=0,
                                         logprobs=True, top_logprobs=3, **extra).choices[0]
          for extra in ({}, {"response_format": jm})]
    vals = [[(t.token, t.logprob, [a.logprob for a in t.top_logprobs])
             for t in c.logprobs.content] for c in lp]
    check(vals[0] == vals[1] and len(vals[1]) > 0 and
          all(isinstance(v, float) for _, v, _ in vals[1]),
          f"JSON mode logprobs equal the free run's ({len(vals[1])} tokens)")
    # completions take it too (vLLM does)
    st, _, data = srv.raw("POST", "/v1/completions",
                          {"prompt": "The capital of France is", "max_tokens": 32,
                           "temperature": 0, "response_format": jm})
    out = json.loads(data)
    t = out["choices"][0]["text"] if st == 200 else ""
    fin = out["choices"][0]["finish_reason"] if st == 200 else None
    check(st == 200 and t.startswith("{") and (fin == "length" or isinstance(json.loads(t), dict)),
          f"JSON mode on /v1/completions: {st} {fin} {t[:60]!r}")
    body = {"messages": prose, "max_tokens": 8, "response_format": jm}
    T.expect_error(srv, "JSON mode with min_tokens", 400, "POST", "/v1/chat/completions",
                   dict(body, min_tokens=2), param="response_format")
    T.expect_error(srv, "JSON mode with ignore_eos", 400, "POST", "/v1/chat/completions",
                   dict(body, ignore_eos=True), param="response_format")
    T.expect_error(srv, "response_format of an unknown type", 400, "POST",
                   "/v1/chat/completions", dict(body, response_format={"type": "yaml"}),
                   param="response_format")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    srv = T.Server("--api-key", T.KEY, "--max-seqs", "8")
    try:
        run_json_mode_tests(srv)
    finally:
        if srv.proc.poll() is None:
            srv.stop()
    return T.report([srv])


if __name__ == "__main__":
    sys.exit(main())
