#!/usr/bin/env python3
"""test_spec.py - speculative decoding by prompt lookup (`--speculative-config`, vLLM's JSON)
through the server, against a server without it, on SmolLM2.

1. The same greedy requests to both (chat and completions, streamed and not, answers that copy
   their prompt and answers that do not, a stop string, max_tokens cutting a run of drafts,
   n = 2, logprobs, a frequency penalty, a JSON schema whose values the prompt holds, a seeded
   sampled request): the same text, logprobs, finish reasons and usage (a kept draft is the
   model's own greedy choice, its row read with the penalty, mask and logprobs of its own step;
   a sampled request keeps a draft when its own next draw picks it, so seeded answers match).
2. /metrics: drafts checked and kept (quiver_spec_*, and vLLM's spec_decode names) on the
   speculative server, none on the other; and the copying answers took fewer engine steps
   (quiver_engine_steps_total).
3. A bad --speculative-config stops the server at start with a message naming the problem.

Usage: test_spec.py <quiver-binary>. Exit 77 when SmolLM2 has not been fetched.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
SPEC = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 5, ' \
       '"prompt_lookup_min": 3, "disable_by_batch_size": 4}'

COPY = ("Rewrite this text with the spelling fixed, in full: The quick brown fox jumpd over "
        "the lazy dog. Then the dog woke up and chasd the fox acros the feild.")
LIST = "Turn this list into a numbered list: apples, pears, plums, cherries, figs, dates."
FREE = "Why is the sky blue?"
PERSON = ("Extract the person as JSON: Ada Lovelace, born 10 December 1815 in London, "
          "mathematician, wrote the first published algorithm.")
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "born": {"type": "string", "maxLength": 40},
    "city": {"type": "string", "maxLength": 20}, "job": {"type": "string", "maxLength": 30}},
    "required": ["name", "born", "city", "job"], "additionalProperties": False}


def answers(srv):
    """The requests of part 1, each as a comparable value."""
    c = srv.client()
    base = os.path.basename(T.MODEL)[:-len(".gguf")]
    out = []
    for q, extra in ((COPY, {}), (LIST, {}), (FREE, {}), (COPY, {"stop": ["fox"]}),
                     (LIST, {"max_tokens": 7}), (COPY, {"n": 2}),
                     (LIST, {"logprobs": True, "top_logprobs": 2}),
                     (LIST, {"temperature": 0.9, "seed": 5}),
                     (COPY, {"frequency_penalty": 0.5}),
                     (PERSON, {"response_format": {"type": "json_schema", "json_schema": {
                         "name": "person", "schema": SCHEMA}}})):
        kw = dict(model=base, messages=[{"role": "user", "content": q}], max_tokens=120,
                  temperature=0)
        kw.update(extra)
        r = c.chat.completions.create(**kw)
        lp = [[(t.token, round(t.logprob, 4)) for t in ch.logprobs.content]
              if ch.logprobs else None for ch in r.choices]
        out.append(([(ch.message.content, ch.finish_reason) for ch in r.choices], lp,
                    r.usage.completion_tokens))
    for q in (COPY, LIST):  # streamed
        text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
            model=base, messages=[{"role": "user", "content": q}], max_tokens=120,
            temperature=0, stream=True) if ch.choices)
        out.append(text)
    r = c.completions.create(model=base, prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                             max_tokens=40, temperature=0)
    out.append((r.choices[0].text, r.choices[0].finish_reason))
    return out


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    base = T.Server("--api-key", T.KEY)
    spec = T.Server("--api-key", T.KEY, "--speculative-config", SPEC)
    try:
        check(any("speculative decoding: prompt lookup, up to 4 draft tokens" in ln
                  for ln in spec.lines), "the start-up line says speculative decoding is on")
        steps0 = base.metrics().get("quiver_engine_steps_total", 0)
        steps1 = spec.metrics().get("quiver_engine_steps_total", 0)
        a0, a1 = answers(base), answers(spec)
        for i, (x, y) in enumerate(zip(a0, a1)):
            check(x == y, f"request {i}: the same answer with and without drafts "
                          f"({str(y)[:100]!r})")
        m0, m1 = base.metrics(), spec.metrics()
        steps0 = m0.get("quiver_engine_steps_total", 0) - steps0
        steps1 = m1.get("quiver_engine_steps_total", 0) - steps1
        drafts = m1.get("quiver_spec_draft_tokens_total", 0)
        kept = m1.get("quiver_spec_accepted_tokens_total", 0)
        check(m0.get("quiver_spec_draft_tokens_total", -1) == 0 and 0 < kept <= drafts and
              m1.get("vllm:spec_decode_num_accepted_tokens_total") == kept and
              m1.get("vllm:spec_decode_num_draft_tokens_total") == drafts,
              f"/metrics: {kept:.0f} of {drafts:.0f} drafts kept (none without)")
        check(0 < steps1 < steps0, f"fewer engine steps with drafts: {steps1:.0f} vs {steps0:.0f}")
    finally:
        for s in (base, spec):
            if s.proc.poll() is None:
                s.stop()
    for bad, words in (('{"method": "eagle", "num_speculative_tokens": 2}', "ngram"),
                       ('{"num_speculative_tokens": 99}', "1..16"),
                       ('{"num_speculative_tokens": 2, "lookahead": 1}', "unknown key"),
                       ('{"num_speculative_tokens": 1e30}', "positive integer"),
                       ('{"num_speculative_tokens": 4, "prompt_lookup_min": 6, '
                        '"prompt_lookup_max": 5}', "above"),
                       ("[4]", "JSON object")):
        p = subprocess.run([T.QUIVER, "serve", "--model", T.MODEL, "--port", "0",
                            "--speculative-config", bad], capture_output=True, text=True,
                           timeout=60)
        check(p.returncode == 2 and words in p.stderr,
              f"--speculative-config {bad}: refused at start ({p.returncode}, "
              f"{p.stderr.strip()[:80]!r})")
    return T.report([base, spec])


if __name__ == "__main__":
    sys.exit(main())
