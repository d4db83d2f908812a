#!/usr/bin/env python3
"""JSON mode and structured output over HTTP (response_format {"type": "json_object"} and
{"type": "json_schema"}, docs/http-api.md#json-mode) with the official openai client, on
SmolLM2-135M-Instruct: Python's json module judges every JSON-mode answer, the jsonschema
package (and pydantic, through the client's parse()) every structured one.

Usage: test_json_mode.py QUIVER_BINARY   (run by tests/server/test_json_mode.sh)
"""
import datetime
import ipaddress
import json
import os
import re
import sys
import time
import uuid
from typing import Annotated, List, Optional, Tuple, Union

import jsonschema
import pydantic

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
    # vLLM's guided_whitespace_pattern "": the same object with no whitespace between tokens
    c = client.chat.completions.create(model=base, messages=ask, max_tokens=100, temperature=0,
                                       response_format=jm,
                                       extra_body={"guided_whitespace_pattern": ""}).choices[0]
    ctext = c.message.content
    try:
        same = json.loads(ctext) == json.loads(b.choices[0].message.content)
    except ValueError:
        same = False
    check(c.finish_reason == "stop" and same and
          ctext == json.dumps(json.loads(ctext), separators=(",", ":"), ensure_ascii=False),
          f"guided_whitespace_pattern \"\": compact JSON {ctext!r}")
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


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int = pydantic.Field(ge=0)
    landmarks: List[str] = pydantic.Field(max_length=3)  # a 135M model repeats itself
    mayor: Optional[str]


class Event(pydantic.BaseModel):
    title: str = pydantic.Field(max_length=30)
    date: Annotated[str, pydantic.StringConstraints(pattern=r"^\d{4}-\d{2}-\d{2}$")]
    code: Annotated[str, pydantic.StringConstraints(pattern=r"^[A-Z]{3}-\d{3}$")]
    attendees: int = pydantic.Field(ge=1, le=500)


class Booking(pydantic.BaseModel):
    """Typed fields whose schemas carry a `format` quiver enforces."""
    id: uuid.UUID
    at: datetime.datetime
    day: datetime.date
    server: ipaddress.IPv4Address
    contact: str = pydantic.Field(json_schema_extra={"format": "email"}, max_length=40)
    room: Tuple[int, str]  # prefixItems


class Meeting(pydantic.BaseModel):
    """A timedelta field (format duration) and a time."""
    title: str = pydantic.Field(max_length=30)
    length: datetime.timedelta
    starts: datetime.time


class Cat(pydantic.BaseModel):
    meows: int = pydantic.Field(ge=0, le=9)
    name: str = pydantic.Field(max_length=12)


class Dog(pydantic.BaseModel):
    barks: bool
    name: str = pydantic.Field(max_length=12)


class Shelter(pydantic.BaseModel):
    """An untagged union of models (anyOf of objects told apart by the first key written), an
    IPv6 field and a URL (format uri)."""
    pets: List[Union[Cat, Dog]] = pydantic.Field(min_length=2, max_length=3)
    gateway: ipaddress.IPv6Address
    website: pydantic.AnyUrl


PROFILE = {
    "$defs": {"Address": {"type": "object",
                          "properties": {"street": {"type": "string", "maxLength": 40},
                                         "zip": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
                          "required": ["street", "zip"], "additionalProperties": False},
              "Color": {"type": "string", "enum": ["red", "green", "blue"]}},
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 20},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "favorite": {"$ref": "#/$defs/Color"},
                   "address": {"$ref": "#/$defs/Address"},
                   "scores": {"type": "array", "items": {"type": "number"},
                              "minItems": 2, "maxItems": 4},
                   "member": {"type": "boolean"}},
    "required": ["name", "age", "favorite", "address", "scores", "member"],
    "additionalProperties": False}


def valid(text, schema):
    try:
        return jsonschema.Draft202012Validator(schema).is_valid(json.loads(text))
    except ValueError:
        return False


def run_structured_output_tests(srv):
    """response_format {"type": "json_schema"} (OpenAI), guided_json / structured_outputs (vLLM)
    and LoRAX's {"type": "json_object", "schema": ...}: every finished answer is valid under the
    schema (jsonschema judges), greedy or sampled, streamed or not, chat or completions; the
    openai client's parse() with a pydantic model gets a parsed object; guided_choice answers
    one of its strings; schemas quiver cannot follow are refused with the reason."""
    client = srv.client()
    base = os.path.basename(T.MODEL)[:-len(".gguf")]

    def rf(schema, name="x"):
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                       "strict": True}}

    # the openai client's own structured-output path: a pydantic model in, an instance out
    ask = [{"role": "user", "content": "Describe Paris as a JSON object."}]
    r = client.chat.completions.parse(model=base, messages=ask, max_tokens=160, temperature=0,
                                      response_format=City)
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "stop" and isinstance(m.parsed, City),
          f"parse() with a pydantic model: {m.parsed!r} from {m.content[:80]!r}")
    schema = City.model_json_schema()
    check(valid(m.content, schema), "the pydantic model's schema accepts the answer")
    # patterns and bounds (pydantic StringConstraints, Field(ge=, le=))
    r = client.chat.completions.parse(
        model=base, max_tokens=120, temperature=0, response_format=Event,
        messages=[{"role": "user", "content": "Describe a concert on 5 May 2025 as JSON."}])
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "stop" and isinstance(m.parsed, Event) and
          valid(m.content, Event.model_json_schema()),
          f"parse() with patterns and bounds: {m.parsed!r}")

    # formats (pydantic's datetime, date, UUID, IPv4Address fields; an email string) and a
    # tuple (prefixItems)
    r = client.chat.completions.parse(
        model=base, max_tokens=300, temperature=0, response_format=Booking,
        messages=[{"role": "user", "content": "Book a meeting room as JSON."}])
    m = r.choices[0].message
    fmt = jsonschema.Draft202012Validator.FORMAT_CHECKER
    check(r.choices[0].finish_reason == "stop" and isinstance(m.parsed, Booking) and
          isinstance(m.parsed.at, datetime.datetime) and isinstance(m.parsed.room[1], str) and
          jsonschema.Draft202012Validator(Booking.model_json_schema(),
                                          format_checker=fmt).is_valid(json.loads(m.content)),
          f"parse() with formats: {m.parsed!r} from {m.content[:120]!r}")

    # a timedelta (format duration: an ISO 8601 duration pydantic parses)
    r = client.chat.completions.parse(
        model=base, max_tokens=120, temperature=0, response_format=Meeting,
        messages=[{"role": "user", "content": "Plan a team meeting as JSON."}])
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "stop" and isinstance(m.parsed, Meeting) and
          isinstance(m.parsed.length, datetime.timedelta) and
          jsonschema.Draft202012Validator(Meeting.model_json_schema(),
                                          format_checker=fmt).is_valid(json.loads(m.content)),
          f"parse() with a timedelta: {m.parsed!r} from {m.content[:120]!r}")

    # a list of Union[Cat, Dog] without a discriminator, an IPv6Address and a URL
    r = client.chat.completions.parse(
        model=base, max_tokens=200, temperature=0, response_format=Shelter,
        messages=[{"role": "user", "content": "List the cats and dogs of an animal shelter."}])
    m = r.choices[0].message
    check(r.choices[0].finish_reason == "stop" and isinstance(m.parsed, Shelter) and
          all(isinstance(p, (Cat, Dog)) for p in m.parsed.pets) and
          jsonschema.Draft202012Validator(Shelter.model_json_schema(),
                                          format_checker=fmt).is_valid(json.loads(m.content)),
          f"parse() with Union[Cat, Dog], IPv6Address and AnyUrl: {m.parsed!r} from "
          f"{m.content[:160]!r}")

    prompts = {
        "profile": ("Make up a user profile.", PROFILE),
        "enum": ("Is the sky green? Answer yes or no.", {"enum": ["yes", "no"]}),
        "integer": ("How many legs does a spider have?", {"type": "integer"}),
        "map": ("Count the fruit: two apples and one pear.",
                {"type": "object", "additionalProperties": {"type": "integer"}}),
        "list": ("Name three colors.", {"type": "array", "items": {"type": "string",
                                                                   "maxLength": 12},
                                        "minItems": 3, "maxItems": 3}),
        "recursive": ("A family tree.",
                      {"type": "object",
                       "properties": {"name": {"type": "string", "maxLength": 10},
                                      "children": {"type": "array", "items": {"$ref": "#"},
                                                   "maxItems": 2}},
                       "required": ["name", "children"]}),
    }
    n_finished = 0
    for key, (prompt, schema) in prompts.items():
        msgs = [{"role": "user", "content": prompt}]
        g = client.chat.completions.create(model=base, messages=msgs, max_tokens=64,
                                           temperature=0, response_format=rf(schema))
        c = g.choices[0]
        check(c.finish_reason == "length" or valid(c.message.content, schema),
              f"{key}, greedy: {c.finish_reason} {c.message.content[:70]!r}")
        if key not in ("enum", "list", "map"):  # the others rarely finish when sampled
            continue
        r = client.chat.completions.create(model=base, messages=msgs, max_tokens=64,
                                           temperature=1.0, seed=11, n=3,
                                           response_format=rf(schema))
        done = [c.message.content for c in r.choices if c.finish_reason == "stop"]
        n_finished += len(done)
        check(all(valid(t, schema) for t in done),
              f"{key}, sampled n=3: {len(done)} finished, all valid {[t[:30] for t in done]}")
    check(n_finished >= 5, f"sampled: {n_finished} of 9 answers finished and were judged")
    # at least the short answers must finish inside the budget
    for key in ("profile", "enum", "list"):
        prompt, schema = prompts[key]
        c = client.chat.completions.create(
            model=base, messages=[{"role": "user", "content": prompt}], max_tokens=200,
            temperature=0, response_format=rf(schema)).choices[0]
        check(c.finish_reason == "stop" and valid(c.message.content, schema),
              f"{key}: a finished, valid answer {c.message.content[:60]!r}")
    # a schema sent again (same text, compiled again) shares the masks of the first request
    small = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                              "big": {"type": "boolean"}},
             "required": ["city", "big"], "additionalProperties": False}

    def masks():
        st, _, data = srv.raw("GET", "/metrics")
        out = {}
        for line in data.decode().splitlines():
            if line.startswith("quiver_json_masks_total{"):
                out[line.split('"')[1]] = int(float(line.split()[-1]))
        return out
    runs = []
    for _ in range(2):
        before = masks()
        c = client.chat.completions.create(
            model=base, messages=[{"role": "user", "content": "Is Paris big?"}], max_tokens=40,
            temperature=0, response_format=rf(small)).choices[0]
        after = masks()
        for _ in range(50):  # the counters follow the engine's steps: wait until they settle
            time.sleep(0.1)
            again = masks()
            if again == after:
                break
            after = again
        runs.append({k: after.get(k, 0) - before.get(k, 0) for k in ("computed", "cache")})
        check(valid(c.message.content, small), f"small schema: {c.message.content!r}")
    check(runs[0]["computed"] > 0 and runs[1]["computed"] < runs[0]["computed"] and
          runs[1]["cache"] > runs[0]["cache"],
          f"the same schema again reuses the cached masks (/metrics: first {runs[0]}, "
          f"second {runs[1]})")
    # streamed: the same text (the small schema: short answers, quick under the sanitizers)
    msgs = [{"role": "user", "content": "Is Paris big?"}]
    one = client.chat.completions.create(model=base, messages=msgs, max_tokens=40, temperature=0,
                                         response_format=rf(small)).choices[0].message.content
    parts = [ch.choices[0].delta.content or "" for ch in client.chat.completions.create(
        model=base, messages=msgs, max_tokens=40, temperature=0, response_format=rf(small),
        stream=True) if ch.choices]
    check("".join(parts) == one and valid(one, small),
          f"structured output streamed: the same text {one!r}")
    # vLLM guided_json (object and text), LoRAX's form, and /v1/completions
    for extra in ({"guided_json": small}, {"guided_json": json.dumps(small)},
                  {"response_format": {"type": "json_object", "schema": small}}):
        c = client.chat.completions.create(model=base, messages=msgs, max_tokens=40,
                                           temperature=0, extra_body=extra).choices[0]
        check(c.message.content == one, f"{list(extra)[0]}: the same answer as json_schema")
    st, _, data = srv.raw("POST", "/v1/completions",
                          {"prompt": "Three primes:", "max_tokens": 32, "temperature": 0,
                           "response_format": rf({"type": "array", "items": {"type": "integer"},
                                                  "maxItems": 3})})
    out = json.loads(data)
    t = out["choices"][0]["text"] if st == 200 else ""
    check(st == 200 and (out["choices"][0]["finish_reason"] == "length" or
                         valid(t, {"type": "array", "items": {"type": "integer"}, "maxItems": 3})),
          f"structured output on /v1/completions: {st} {t!r}")
    # vLLM's guided_choice and structured_outputs: one of the strings, as raw text
    review = [{"role": "user", "content": "Is this review positive or negative? 'I loved it, "
               "great food.'"}]
    for extra in ({"guided_choice": ["positive", "negative"]},
                  {"structured_outputs": {"choice": ["positive", "negative"]}}):
        c = client.chat.completions.create(model=base, messages=review, max_tokens=8,
                                           temperature=0, extra_body=extra).choices[0]
        check(c.message.content in ("positive", "negative") and c.finish_reason == "stop",
              f"{list(extra)[0]}: {c.message.content!r} ({c.finish_reason})")
    r = client.completions.create(model=base, prompt="The weather today is", max_tokens=8,
                                  temperature=1.0, seed=3, n=4,
                                  extra_body={"guided_choice": ["sunny", "rainy", "sun"]})
    texts = [c.text for c in r.choices]
    check(all(t in ("sunny", "rainy", "sun") for t in texts),
          f"guided_choice on /v1/completions, sampled n=4: {texts}")
    # vLLM's guided_regex and structured_outputs.regex: the whole text matches (Python's
    # re.fullmatch judges), greedy and sampled, streamed the same
    for pattern, ask in ((r"\d{3}-\d{3}-\d{4}", "Write a phone number."),
                         (r"(yes|no|maybe)", "Is Paris in France? Answer yes or no."),
                         (r"[A-Z][a-z]{1,9} [A-Z][a-z]{1,11}", "Name a famous scientist."),
                         (r"(?:[01]\d|2[0-3]):[0-5]\d", "What time is lunch?"),
                         (r"Paris|Zürich|東京", "Name a city.")):
        q = [{"role": "user", "content": ask}]
        outs = []
        for extra, kw in (({"guided_regex": pattern}, dict(temperature=0)),
                          ({"structured_outputs": {"regex": pattern}},
                           dict(temperature=1.0, seed=11, n=3))):
            r = client.chat.completions.create(model=base, messages=q, max_tokens=24,
                                               extra_body=extra, **kw)
            outs += [(c.message.content, c.finish_reason) for c in r.choices]
        streamed = "".join(ch.choices[0].delta.content or "" for ch in
                           client.chat.completions.create(model=base, messages=q, max_tokens=24,
                                                          temperature=0, stream=True,
                                                          extra_body={"guided_regex": pattern})
                           if ch.choices)
        check(all(f == "stop" and re.fullmatch(pattern, t) for t, f in outs) and
              streamed == outs[0][0],
              f"guided_regex {pattern}: every answer matches as a whole {outs}")
    # past the old 62-position limit: 64 hex digits (a DFA of 65 states), greedy and sampled
    sha = "[0-9a-f]{64}"
    r = client.chat.completions.create(model=base, max_tokens=80, temperature=0.8, seed=3, n=2,
                                       messages=[{"role": "user", "content": "Write a SHA-256."}],
                                       extra_body={"guided_regex": sha})
    outs = [(c.message.content, c.finish_reason) for c in r.choices]
    check(all(f == "stop" and re.fullmatch(sha, t) for t, f in outs),
          f"guided_regex {sha}: 64 hex digits, sampled n=2 {outs}")
    st, _, data = srv.raw("POST", "/v1/chat/completions",
                          {"messages": msgs, "max_tokens": 8, "guided_regex": "[ab]*a[ab]{20}"})
    err = json.loads(data).get("error", {}) if st == 400 else {}
    check(st == 400 and err.get("param") == "guided_regex" and
          "too many states" in err.get("message", ""),
          f"guided_regex whose automaton is too large: refused ({st} {err.get('message')!r})")
    # a request whose own bad_words remove every token its regex allows: a dead end, ended
    # with finish "stop" and an unfinished text, counted in /metrics (and logged)
    before = srv.metrics().get("quiver_structured_dead_ends_total", -1)
    r = client.completions.create(model=base, prompt="Say a", max_tokens=5, temperature=0,
                                  extra_body={"guided_regex": "a", "bad_words": ["a"]})
    # /metrics takes the engine's counters after each step, and the answer may reach the
    # client first: wait for the step's update (at most 10 s)
    deadline = time.time() + 10
    after = srv.metrics().get("quiver_structured_dead_ends_total", -1)
    while after == before and time.time() < deadline:
        time.sleep(0.05)
        after = srv.metrics().get("quiver_structured_dead_ends_total", -1)
    free_a = client.completions.create(model=base, prompt="Say a", max_tokens=5, temperature=0,
                                       extra_body={"guided_regex": "a"}).choices[0].text
    check(before >= 0 and after == before + 1 and r.choices[0].text == "" and free_a == "a",
          f"a dead end (regex 'a', bad word 'a') is counted: {before} -> {after}, "
          f"text {r.choices[0].text!r} (without the ban {free_a!r})")
    r = client.completions.create(model=base, prompt="The year was", max_tokens=8,
                                  temperature=1.0, seed=5, n=4,
                                  extra_body={"guided_regex": r" (1[89]|20)\d\d"})
    texts = [c.text for c in r.choices]
    check(all(re.fullmatch(r" (1[89]|20)\d\d", t) for t in texts),
          f"guided_regex on /v1/completions, sampled n=4: {texts}")
    c = client.chat.completions.create(
        model=base, messages=msgs, max_tokens=40, temperature=0,
        extra_body={"structured_outputs": {"json": small}}).choices[0]
    check(c.message.content == one, "structured_outputs.json: the same answer as json_schema")
    # refused, saying why
    body = {"messages": msgs, "max_tokens": 8}
    for fmt, param, words in (
            (rf({"type": "string", "pattern": "(a)\\1"}), "response_format", "backreferences"),
            (rf({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]}),
             "response_format", "begin differently"),
            ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format", "schema"),
            (rf({"$ref": "#/$defs/none"}), "response_format", "points at nothing")):
        st, _, data = srv.raw("POST", "/v1/chat/completions", dict(body, response_format=fmt))
        err = json.loads(data).get("error", {}) if st == 400 else {}
        check(st == 400 and err.get("param") == param and words in err.get("message", ""),
              f"refused: {words} ({st} {err.get('message', '')[:80]!r})")
    T.expect_error(srv, "guided_json that is not JSON", 400, "POST", "/v1/chat/completions",
                   dict(body, guided_json="{not json"), param="guided_json")
    T.expect_error(srv, "guided_choice with an empty string", 400, "POST",
                   "/v1/chat/completions", dict(body, guided_choice=["a", ""]),
                   param="guided_choice")
    T.expect_error(srv, "two structured outputs at once", 400, "POST", "/v1/chat/completions",
                   dict(body, guided_choice=["a"], response_format=rf(small)))
    T.expect_error(srv, "guided_regex quiver cannot follow", 400, "POST",
                   "/v1/chat/completions", dict(body, guided_regex="(a)\\1"),
                   param="guided_regex")
    T.expect_error(srv, "guided_regex not a string", 400, "POST", "/v1/chat/completions",
                   dict(body, guided_regex=["a"]), param="guided_regex")
    T.expect_error(srv, "structured_outputs.grammar", 400, "POST", "/v1/chat/completions",
                   dict(body, structured_outputs={"grammar": "root ::= x"}),
                   param="structured_outputs")
    T.expect_error(srv, "structured output with ignore_eos", 400, "POST", "/v1/chat/completions",
                   dict(body, response_format=rf(PROFILE), ignore_eos=True),
                   param="response_format")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    return T.report([T.run_on_server(("--api-key", T.KEY, "--max-seqs", "8"),
                                     run_json_mode_tests, run_structured_output_tests)])


if __name__ == "__main__":
    sys.exit(main())
