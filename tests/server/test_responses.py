#!/usr/bin/env python3
"""OpenAI's Responses API (POST /v1/responses, docs/http-api.md#responses-api) with the official
openai client (`client.responses.create`) on SmolLM2-135M-Instruct.

The Responses API is chat completions under another shape, so every answer is checked against
the chat completions answer to the same conversation on the same server (greedy): the text,
token counts, logprobs, tool calls and structured output must be the same. The demo LoRA
adapter must give its Hugging Face PEFT greedy answer (deploy/demo-adapters/pirate/demo.json,
written by the reference oracle). Streams must carry the API's event sequence, with
consecutive sequence numbers, deltas that add up to the final text and a last event holding
the whole response. Kept responses: previous_response_id gives chat's answer to the whole
conversation; GET / DELETE /v1/responses/{id}; their input items, paged; store false;
other keys find nothing. input_tokens counts what a response would report as its input.
Conversations (client.conversations): responses in one answer as chat after its items and add
their turns; items are added, read and deleted; other keys find nothing. Item references read
kept items. With --responses-dir, two servers sharing the directory continue each other's
responses and conversations, see each other's deletes, and a restarted server finds them.
What quiver cannot do is refused with 400 naming the field.

Usage: test_responses.py QUIVER_BINARY   (run by tests/server/test_responses.sh)
"""
import json
import os
import shutil
import sys
import tempfile
import time

import jsonschema
import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIRATE = os.path.join(ROOT, "deploy", "demo-adapters", "pirate")
BASE = os.path.basename(T.MODEL)[:-len(".gguf")]

WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather",
           "parameters": {"type": "object",
                          "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"enum": ["celsius", "fahrenheit"]}},
                          "required": ["city", "unit"]}}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                            "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


def chat(srv, messages, **kw):
    body = {"model": BASE, "messages": messages, "temperature": 0, **kw}
    st, _, data = srv.raw("POST", "/v1/chat/completions", body)
    assert st == 200, (st, data)
    return json.loads(data)


def events_of(client, **kw):
    """Every event of a streamed response, as dicts."""
    return [ev.model_dump() for ev in client.responses.create(stream=True, **kw)]


def check_stream(evs, what):
    """The event grammar: created, in_progress (a background response still queued: created
    and queued with status queued, then in_progress), items (each added, its parts, done), then
    one completed / incomplete event; sequence numbers 0, 1, 2...; returns (final response,
    text from the deltas, {output_index: arguments from the deltas})."""
    types = [e["type"] for e in evs]
    check([e["sequence_number"] for e in evs] == list(range(len(evs))),
          f"{what}: sequence numbers count up from 0")
    queued = types[1:2] == ["response.queued"]
    head = 3 if queued else 2
    want = ["response.created"] + (["response.queued"] if queued else []) + \
        ["response.in_progress"]
    check(types[:head] == want, f"{what}: created, then in_progress ({types[:head]})")
    check(evs[0]["response"]["status"] == ("queued" if queued else "in_progress") and
          evs[0]["response"]["output"] == [] and
          evs[head - 1]["response"]["status"] == "in_progress" and
          (not queued or evs[1]["response"]["status"] == "queued"),
          f"{what}: response.created holds the response queued or in progress")
    check(types.count("response.in_progress") == 1 and types.count("response.queued") <= 1,
          f"{what}: in_progress once")
    check(types[-1] in ("response.completed", "response.incomplete") and
          sum(t in ("response.completed", "response.incomplete") for t in types) == 1,
          f"{what}: one final event, last ({types[-1]})")
    text, args, open_items = "", {}, set()
    for e in evs[head:-1]:
        t = e["type"]
        if t == "response.output_item.added":
            check(e["output_index"] not in open_items, f"{what}: an item is added once")
            open_items.add(e["output_index"])
            check(e["item"]["status"] == "in_progress", f"{what}: added items are in progress")
        elif t == "response.output_item.done":
            check(e["output_index"] in open_items, f"{what}: an item is done after it is added")
            open_items.discard(e["output_index"])
        elif t == "response.output_text.delta":
            check(e["output_index"] in open_items, f"{what}: text deltas inside their item")
            text += e["delta"]
        elif t == "response.function_call_arguments.delta":
            args[e["output_index"]] = args.get(e["output_index"], "") + e["delta"]
    check(not open_items, f"{what}: every item is done before the end")
    return evs[-1]["response"], text, args


def run_text(srv, client):
    msgs = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."}]
    want = chat(srv, msgs, max_tokens=24)
    r = client.responses.create(model=BASE, instructions="You are terse.",
                                input="Name three colours.", max_output_tokens=24,
                                temperature=0)
    d = r.model_dump()
    check(r.id.startswith("resp_") and d["object"] == "response",
          f"a response object ({r.id}, {d['object']})")
    check(r.output_text == want["choices"][0]["message"]["content"],
          f"text equals chat's ({r.output_text!r})")
    check(r.usage.input_tokens == want["usage"]["prompt_tokens"] and
          r.usage.output_tokens == want["usage"]["completion_tokens"] and
          r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens,
          f"usage equals chat's ({r.usage})")
    fin = want["choices"][0]["finish_reason"]
    check(r.status == ("incomplete" if fin == "length" else "completed"),
          f"status follows chat's finish {fin} ({r.status})")
    check(d["instructions"] == "You are terse." and d["max_output_tokens"] == 24 and
          d["temperature"] == 0 and d["store"] is True and d["previous_response_id"] is None,
          "the request's settings are repeated; kept (store true)")
    check([o["type"] for o in d["output"]] == ["message"] and
          d["output"][0]["role"] == "assistant" and
          d["output"][0]["content"][0]["type"] == "output_text",
          "one assistant message with one output_text part")

    # Cut by max_output_tokens: incomplete, with the reason.
    want = chat(srv, [{"role": "user", "content": "Tell me a long story."}], max_tokens=3)
    r = client.responses.create(model=BASE, input="Tell me a long story.",
                                max_output_tokens=3, temperature=0)
    check(r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens" and
          r.output_text == want["choices"][0]["message"]["content"] and
          r.usage.output_tokens == 3,
          f"max_output_tokens: incomplete, chat's text ({r.status}, {r.output_text!r})")

    # A list of items: developer (as system), user parts, an earlier assistant turn.
    items = [{"role": "developer", "content": "Answer in one word."},
             {"role": "user", "content": [{"type": "input_text", "text": "Sky colour?"}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Blue."}]},
             {"role": "user", "content": "And grass?"}]
    want = chat(srv, [{"role": "system", "content": "Answer in one word."},
                      {"role": "user", "content": "Sky colour?"},
                      {"role": "assistant", "content": "Blue."},
                      {"role": "user", "content": "And grass?"}], max_tokens=8)
    r = client.responses.create(model=BASE, input=items, max_output_tokens=8, temperature=0)
    check(r.output_text == want["choices"][0]["message"]["content"],
          f"input items equal the chat messages ({r.output_text!r})")

    # Streamed: the same text, the event grammar, the final response.
    evs = events_of(client, model=BASE, instructions="You are terse.",
                    input="Name three colours.", max_output_tokens=24, temperature=0)
    final, text, _ = check_stream(evs, "text stream")
    r = client.responses.create(model=BASE, instructions="You are terse.",
                                input="Name three colours.", max_output_tokens=24,
                                temperature=0)
    check(text == r.output_text and final["output"][0]["content"][0]["text"] == text,
          f"stream deltas add up to the answer ({text!r} vs {r.output_text!r})")
    check(final["usage"]["output_tokens"] == r.usage.output_tokens,
          "the final event carries the usage")
    types = [e["type"] for e in evs]
    check(types[2:4] == ["response.output_item.added", "response.content_part.added"] and
          types[-4:-1] == ["response.output_text.done", "response.content_part.done",
                           "response.output_item.done"],
          f"the message's events in order ({types[2:4]} ... {types[-4:-1]})")


def run_logprobs(srv, client):
    msgs = [{"role": "user", "content": "Say hello."}]
    want = chat(srv, msgs, max_tokens=6, logprobs=True, top_logprobs=2)
    want_lps = want["choices"][0]["logprobs"]["content"]
    r = client.responses.create(model=BASE, input="Say hello.", max_output_tokens=6,
                                temperature=0, include=["message.output_text.logprobs"],
                                top_logprobs=2)
    lps = r.output[0].content[0].logprobs
    check(len(lps) == len(want_lps) and
          all(a.token == b["token"] and abs(a.logprob - b["logprob"]) < 1e-5 and
              len(a.top_logprobs) == 2 for a, b in zip(lps, want_lps)),
          f"logprobs equal chat's ({len(lps)} vs {len(want_lps)} tokens)")
    evs = events_of(client, model=BASE, input="Say hello.", max_output_tokens=6, temperature=0,
                    include=["message.output_text.logprobs"], top_logprobs=2)
    n = sum(len(e["logprobs"]) for e in evs if e["type"] == "response.output_text.delta")
    check(n == len(want_lps), f"streamed deltas carry every token's logprobs ({n})")


def run_tools(srv, client):
    ask = "What is the weather like in Paris today?"
    chat_tool = {"type": "function", "function": {k: v for k, v in WEATHER.items()
                                                  if k != "type"}}
    for choice, chat_choice in (("required", "required"),
                                ({"type": "function", "name": "get_weather"},
                                 {"type": "function", "function": {"name": "get_weather"}})):
        want = chat(srv, [{"role": "user", "content": ask}], max_tokens=60, tools=[chat_tool],
                    tool_choice=chat_choice)
        wcalls = [(c["function"]["name"], c["function"]["arguments"])
                  for c in want["choices"][0]["message"]["tool_calls"]]
        r = client.responses.create(model=BASE, input=ask, max_output_tokens=60, temperature=0,
                                    tools=[WEATHER], tool_choice=choice)
        calls = [o for o in r.output if o.type == "function_call"]
        check([(c.name, c.arguments) for c in calls] == wcalls,
              f"tool_choice {choice}: the calls equal chat's ({calls})")
        ok = True
        for c in calls:
            try:
                jsonschema.validate(json.loads(c.arguments), WEATHER["parameters"])
            except (ValueError, jsonschema.ValidationError):
                ok = False
        check(calls and ok and all(c.call_id.startswith("call_") and c.status == "completed"
                                   for c in calls),
              f"tool_choice {choice}: valid arguments, call ids")
        evs = events_of(client, model=BASE, input=ask, max_output_tokens=60, temperature=0,
                        tools=[WEATHER], tool_choice=choice)
        final, _, args = check_stream(evs, f"tools stream {choice}")
        fcs = [o for o in final["output"] if o["type"] == "function_call"]
        check([a for _, a in sorted(args.items())] == [c["arguments"] for c in fcs] and
              [(c["name"], c["arguments"]) for c in fcs] == wcalls,
              f"tool_choice {choice}: streamed arguments equal the final calls")
        done = [e for e in evs if e["type"] == "response.function_call_arguments.done"]
        check([e["arguments"] for e in done] == [c["arguments"] for c in fcs],
              "function_call_arguments.done holds the arguments")
        pieces = [e for e in evs if e["type"] == "response.function_call_arguments.delta"]
        added = [i for i, e in enumerate(evs) if e["type"] == "response.output_item.added"]
        check(len(pieces) > 2 and added and added[0] < evs.index(pieces[0]),
              f"tool_choice {choice}: the arguments stream in pieces as they are written "
              f"({len(pieces)} deltas)")

    # The round trip: the call and its output as input items, as chat's assistant tool_calls
    # and tool message.
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather",
            "arguments": '{"city": "Paris", "unit": "celsius"}'}
    out = {"type": "function_call_output", "call_id": "call_1", "output": '{"sky": "sunny"}'}
    want = chat(srv, [{"role": "user", "content": ask},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": call["arguments"]}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": out["output"]}],
                max_tokens=16)
    r = client.responses.create(model=BASE, input=[{"role": "user", "content": ask}, call, out],
                                max_output_tokens=16, temperature=0)
    check(r.output_text == want["choices"][0]["message"]["content"],
          f"function_call / function_call_output items equal chat's tool turn ({r.output_text!r})")


def run_format(srv, client):
    ask = "Invent a person. Reply in JSON."
    want = chat(srv, [{"role": "user", "content": ask}], max_tokens=60,
                response_format={"type": "json_schema",
                                 "json_schema": {"name": "person", "schema": SCHEMA}})
    r = client.responses.create(model=BASE, input=ask, max_output_tokens=60, temperature=0,
                                text={"format": {"type": "json_schema", "name": "person",
                                                 "schema": SCHEMA}})
    try:
        jsonschema.validate(json.loads(r.output_text), SCHEMA)
        valid = True
    except (ValueError, jsonschema.ValidationError):
        valid = False
    check(valid and r.output_text == want["choices"][0]["message"]["content"],
          f"text.format json_schema: valid, chat's answer ({r.output_text!r})")
    want = chat(srv, [{"role": "user", "content": ask}], max_tokens=120,
                response_format={"type": "json_object"})
    r = client.responses.create(model=BASE, input=ask, max_output_tokens=120, temperature=0,
                                text={"format": {"type": "json_object"}})
    try:  # a JSON object unless cut by max_output_tokens
        valid = r.status == "incomplete" or isinstance(json.loads(r.output_text), dict)
    except ValueError:
        valid = False
    check(valid and r.output_text == want["choices"][0]["message"]["content"],
          f"text.format json_object: chat's JSON mode answer ({r.status}, {r.output_text!r})")


def run_adapter(client):
    demo = json.load(open(os.path.join(PIRATE, "demo.json")))
    p = demo["prompts"][0]
    r = client.responses.create(model=f"{BASE}:pirate", input=p["user"], temperature=0,
                                max_output_tokens=len(p["adapter_greedy"]) + 4)
    check(r.output_text == p["adapter_text"],
          f"the pirate adapter gives HF PEFT's answer ({r.output_text!r})")
    check(r.model == f"{BASE}:pirate", f"the model is echoed as sent ({r.model})")


def run_errors(srv, client):
    cases = [
        ({"input": "hi", "conversation": {"name": "x"}}, "conversation"),
        ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": "hi", "truncation": "middle"}, "truncation"),
        ({"input": "hi", "text": {"verbosity": "high"}}, "text.verbosity"),
        ({"input": "hi", "include": ["reasoning.summary"]}, "include"),
        ({"input": "hi", "max_tool_calls": -1}, "max_tool_calls"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "hi", "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "temperature": -1}, "temperature"),
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0]"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input[0]"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0]"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f",
                     "arguments": "not json"}]}, "input[0]"),
    ]
    for body, param in cases:
        st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, **body})
        err = json.loads(data).get("error", {}) if data.startswith(b"{") else {}
        check(st == 400 and err.get("param") == param and err.get("message"),
              f"refused: {json.dumps(body)[:70]} -> 400 {param} ({st} {err.get('param')})")
    # a bound on built-in tool calls and includes of items quiver never makes change nothing
    r = client.responses.create(model=BASE, input="Hi", temperature=0, max_output_tokens=6,
                                max_tool_calls=2, include=["reasoning.encrypted_content",
                                                           "web_search_call.results"])
    plain = client.responses.create(model=BASE, input="Hi", temperature=0, max_output_tokens=6)
    check(r.output_text == plain.output_text and r.max_tool_calls == 2 and
          plain.max_tool_calls is None,
          f"max_tool_calls and other includes: the same answer, max_tool_calls repeated")
    st, _, _ = srv.raw("POST", "/v1/responses", b"{not json")
    check(st == 400, f"malformed JSON: 400 ({st})")
    try:
        client.responses.create(model=f"{BASE}:no-such-adapter", input="hi")
        check(False, "an unknown adapter is refused")
    except openai.NotFoundError:
        check(True, "an unknown adapter: 404")
    st, h, _ = srv.raw("GET", "/v1/responses")
    check(st == 405 and "POST" in h.get("Allow", ""), f"GET /v1/responses: 405 ({st})")


def tool_turn(srv, ask, call, max_tokens):
    """Chat's answer after the question, the assistant's call and its output '{"sky": "sunny"}'."""
    return chat(srv, [{"role": "user", "content": ask},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": call.call_id, "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}}]},
                      {"role": "tool", "tool_call_id": call.call_id,
                       "content": '{"sky": "sunny"}'}], max_tokens=max_tokens)


def call_and_output(client, max_tokens):
    """A kept response that calls get_weather, then one answering it with the call's output
    (previous_response_id): the question, the call item and the second response."""
    ask = "What is the weather like in Paris today?"
    c1 = client.responses.create(model=BASE, input=ask, temperature=0, max_output_tokens=60,
                                 tools=[WEATHER], tool_choice="required")
    call = [o for o in c1.output if o.type == "function_call"][0]
    c2 = client.responses.create(model=BASE, previous_response_id=c1.id, temperature=0,
                                 max_output_tokens=max_tokens,
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": '{"sky": "sunny"}'}])
    return ask, call, c2


def run_store(srv, client):
    """Kept responses: previous_response_id continues a conversation as if the client had sent
    it whole (chat's answer to the same messages), GET / DELETE /v1/responses/{id}, store
    false, streamed responses kept too, and another API key finds nothing."""
    r1 = client.responses.create(model=BASE, input="My name is Ada. Say hi.", temperature=0,
                                 max_output_tokens=16)
    check(r1.model_dump()["store"] is True, "a response is kept by default (store true)")
    r2 = client.responses.create(model=BASE, previous_response_id=r1.id, temperature=0,
                                 input="What is my name?", max_output_tokens=16)
    want = chat(srv, [{"role": "user", "content": "My name is Ada. Say hi."},
                      {"role": "assistant", "content": r1.output_text},
                      {"role": "user", "content": "What is my name?"}], max_tokens=16)
    check(r2.output_text == want["choices"][0]["message"]["content"] and
          r2.usage.input_tokens == want["usage"]["prompt_tokens"],
          f"previous_response_id continues the conversation as chat's ({r2.output_text!r})")
    check(r2.previous_response_id == r1.id, "the response names its previous one")
    # a chain: the third turn sees both earlier ones
    r3 = client.responses.create(model=BASE, previous_response_id=r2.id, temperature=0,
                                 input="Thanks.", max_output_tokens=8)
    want = chat(srv, [{"role": "user", "content": "My name is Ada. Say hi."},
                      {"role": "assistant", "content": r1.output_text},
                      {"role": "user", "content": "What is my name?"},
                      {"role": "assistant", "content": r2.output_text},
                      {"role": "user", "content": "Thanks."}], max_tokens=8)
    check(r3.output_text == want["choices"][0]["message"]["content"],
          f"a chain of previous_response_id ({r3.output_text!r})")
    got = client.responses.retrieve(r1.id)
    check(got.id == r1.id and got.output_text == r1.output_text and got.status == r1.status,
          "GET /v1/responses/{id} gives the response back")
    st, _, _ = srv.raw("GET", f"/v1/responses/{r1.id}", key="another-key")
    check(st == 404, f"another API key does not find it ({st})")
    st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": "x",
                                                    "previous_response_id": r1.id},
                          key="another-key")
    check(st == 404 and json.loads(data)["error"]["param"] == "previous_response_id",
          f"nor continue it ({st})")
    # a function call and its output across two requests
    ask, call, c2 = call_and_output(client, 16)
    want = tool_turn(srv, ask, call, 16)
    check(c2.output_text == want["choices"][0]["message"]["content"],
          f"a kept call answered with its output ({c2.output_text!r})")
    # streamed responses are kept too; store false is not
    evs = events_of(client, model=BASE, input="Count to three.", temperature=0,
                    max_output_tokens=12)
    sid = evs[-1]["response"]["id"]
    check(client.responses.retrieve(sid).output_text ==
          evs[-1]["response"]["output"][0]["content"][0]["text"], "a streamed response is kept")
    r = client.responses.create(model=BASE, input="Hi", store=False, max_output_tokens=4)
    check(r.model_dump()["store"] is False, "store false says so")
    try:
        client.responses.retrieve(r.id)
        check(False, "store false: not kept")
    except openai.NotFoundError:
        check(True, "store false: not kept (404)")
    # deleted: gone for GET and for previous_response_id
    client.responses.delete(r1.id)
    for what, fn in (("GET", lambda: client.responses.retrieve(r1.id)),
                     ("previous_response_id",
                      lambda: client.responses.create(model=BASE, input="x",
                                                      previous_response_id=r1.id))):
        try:
            fn()
            check(False, f"deleted: {what} fails")
        except openai.NotFoundError:
            check(True, f"deleted: {what} is 404")
    st, _, _ = srv.raw("DELETE", f"/v1/responses/{r1.id}")
    check(st == 404, f"deleted twice: 404 ({st})")
    st, h, _ = srv.raw("POST", f"/v1/responses/{r2.id}")
    check(st == 405 and h.get("Allow") == "GET, DELETE", f"POST on a kept response: 405 ({st})")
    # r2 still continues: its conversation was kept whole, not as a link to r1
    r4 = client.responses.create(model=BASE, previous_response_id=r2.id, temperature=0,
                                 input="Thanks.", max_output_tokens=8)
    check(r4.output_text == r3.output_text, "a kept conversation outlives its first response")


def poll(client, rid, until, what, limit=300.0):
    """Retrieves response rid until until(response) holds (at most `limit` seconds)."""
    t_end = time.time() + limit
    while True:
        r = client.responses.retrieve(rid)
        if until(r) or time.time() > t_end:
            check(until(r), f"{what} (status {r.status})")
            return r
        time.sleep(0.05)


def settled(r):
    return r.status not in ("queued", "in_progress")


def run_background(srv, client):
    """background: true answers at once (queued or in progress); polling GET /v1/responses/{id}
    sees it run and end with chat's answer; cancel ends one for good (nothing taken after it,
    idempotent, its sequence freed); DELETE forgets a running one; previous_response_id waits
    for the end; a streamed one runs on when its client leaves; refusals."""
    ask = "Name three colors of the rainbow."
    r = client.responses.create(model=BASE, input=ask, temperature=0, max_output_tokens=24,
                                background=True)
    check(r.status in ("queued", "in_progress") and r.background is True and r.usage is None,
          f"background: answered at once, {r.status}, usage null")
    done = poll(client, r.id, settled, "background: polling sees it end")
    want = chat(srv, [{"role": "user", "content": ask}], max_tokens=24)
    check(done.status in ("completed", "incomplete") and done.background is True and
          done.output_text == want["choices"][0]["message"]["content"] and
          done.usage.output_tokens == want["usage"]["completion_tokens"] and
          done.usage.input_tokens == want["usage"]["prompt_tokens"],
          f"background: ends with chat's answer ({done.status}, {done.output_text!r})")
    items = [i.model_dump() for i in client.responses.input_items.list(r.id)]
    check(len(items) == 1 and items[0]["content"][0]["text"] == ask,
          "background: its input items once it ended")
    logged = [l for l in srv.lines if f" request {r.id} " in l]
    check(len(logged) == 1 and "status=200" in logged[0] and "(background)" in logged[0],
          f"background: one log line, when it ends ({logged})")

    # a long one (ignore_eos): in progress with output so far, then cancelled
    long_body = dict(model=BASE, input="Tell me a long story about a fox.", temperature=0,
                     max_output_tokens=3000, background=True, extra_body={"ignore_eos": True})
    b = client.responses.create(**long_body)
    mid = poll(client, b.id, lambda x: x.status == "in_progress" and x.output_text,
               "a long background response is in progress, with its output so far")
    check(mid.usage is None and mid.output[0].status == "in_progress",
          "in progress: usage null, the message in progress")
    st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": "Go on.",
                                                    "previous_response_id": b.id})
    check(st == 400 and "still in progress" in json.loads(data)["error"]["message"],
          f"previous_response_id of a running response: 400 ({st})")
    c = client.responses.cancel(b.id)
    check(c.status == "cancelled" and c.output_text.startswith(mid.output_text) and
          c.output[0].status == "incomplete" and c.usage.output_tokens > 0,
          f"cancel: cancelled with the output so far ({c.usage.output_tokens} tokens)")
    time.sleep(0.5)
    again = client.responses.cancel(b.id)
    got = client.responses.retrieve(b.id)
    check(got.status == "cancelled" and got.output_text == c.output_text and
          got.usage.output_tokens == c.usage.output_tokens and again.status == "cancelled" and
          again.output_text == c.output_text,
          "cancel: nothing is taken after it, and cancelling again answers the same")
    t_end = time.time() + 30
    while srv.metrics().get("quiver_running_sequences") and time.time() < t_end:
        time.sleep(0.05)
    check(srv.metrics().get("quiver_running_sequences") == 0,
          "cancel: the engine freed its sequence")
    logged = [l for l in srv.lines if f" request {b.id} " in l]
    check(len(logged) == 1 and "status=499" in logged[0] and "cancelled" in logged[0],
          f"cancel: logged as 499 ({logged})")

    # DELETE forgets a running one
    d = client.responses.create(**long_body)
    poll(client, d.id, lambda x: x.status == "in_progress", "another long one runs")
    items = list(client.responses.input_items.list(d.id))
    check(len(items) == 1, "input_items of a running background response")
    client.responses.delete(d.id)
    time.sleep(0.3)
    st, _, _ = srv.raw("GET", f"/v1/responses/{d.id}")
    check(st == 404, f"DELETE of a running background response forgets it ({st})")

    # streamed: the stream is the usual one; a client that leaves does not stop it
    evs = events_of(client, model=BASE, input=ask, temperature=0, max_output_tokens=24,
                    background=True)
    final, text, _ = check_stream(evs, "background stream")
    check(final["background"] is True and text == want["choices"][0]["message"]["content"],
          "background stream: chat's answer, background true")
    stream = client.responses.create(model=BASE, input=ask, temperature=0,
                                     max_output_tokens=24, background=True, stream=True)
    head = []
    for ev in stream:
        head.append(ev.model_dump())
        if sum(e["type"] == "response.output_text.delta" for e in head) == 3:
            break
    stream.close()
    rid, last = head[0]["response"]["id"], head[-1]["sequence_number"]
    # read again from where the client left, while it runs (or from the store once it ended)
    tail = [ev.model_dump() for ev in
            client.responses.retrieve(rid, stream=True, starting_after=last)]
    final, text, _ = check_stream(head + tail, "a background stream read again after event "
                                  f"{last}")
    check(tail[0]["sequence_number"] == last + 1 and text == want["choices"][0]["message"][
          "content"] and final["output"][0]["content"][0]["text"] == text,
          f"... goes on at event {last + 1} with the rest of chat's answer ({text!r})")
    left = poll(client, rid, settled, "background stream left by its client: runs to its end")
    check(left.output_text == text, f"... and is kept ({left.output_text!r})")
    again = [ev.model_dump() for ev in
             client.responses.retrieve(rid, stream=True, starting_after=last)]
    whole = [ev.model_dump() for ev in client.responses.retrieve(rid, stream=True)]
    check(again == tail and whole[:len(head)] == head and whole[len(head):] == tail,
          "once it ended the kept stream gives the same events, from any point")
    # a long one read again while it runs, then cancelled: the reader sees it end
    stream = client.responses.create(**long_body, stream=True)
    head = []
    for ev in stream:
        head.append(ev.model_dump())
        if len(head) == 6:
            break
    stream.close()
    lid = head[0]["response"]["id"]
    tail = []
    for ev in client.responses.retrieve(lid, stream=True, starting_after=5):
        tail.append(ev.model_dump())
        if len(tail) == 20:
            cut = client.responses.cancel(lid)
    evs = head + tail
    text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
    check([e["sequence_number"] for e in evs] == list(range(len(evs))) and len(tail) > 20 and
          evs[-1]["type"] == "response.cancelled" and
          evs[-1]["response"]["status"] == "cancelled" and
          evs[-1]["response"]["output"][0]["content"][0]["text"] == text == cut.output_text,
          f"a running stream read again, then cancelled: it ends with response.cancelled and "
          f"the text so far ({len(evs)} events, {len(text)} characters)")
    for path, param in ((f"/v1/responses/{rid}?stream=true&starting_after=x", "starting_after"),
                        (f"/v1/responses/{r.id}?stream=true", "stream")):
        st, _, data = srv.raw("GET", path)
        check(st == 400 and json.loads(data)["error"]["param"] == param,
              f"GET {path.split('/')[-1][:40]}: 400 {param} ({st})")
    check(srv.raw("GET", f"/v1/responses/{rid}?stream=true", key="another-key")[0] == 404,
          "another API key cannot read the stream")
    client.responses.delete(rid)
    check(srv.raw("GET", f"/v1/responses/{rid}?stream=true")[0] == 404,
          "a deleted response's stream is gone")

    # refusals
    for body, param in (({"background": True, "store": False}, "store"),
                        ({"background": "yes"}, "background")):
        st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": "hi", **body})
        check(st == 400 and json.loads(data)["error"]["param"] == param,
              f"background refused: {body} -> 400 {param} ({st})")
    plain = client.responses.create(model=BASE, input="Hi", max_output_tokens=4)
    st, _, data = srv.raw("POST", f"/v1/responses/{plain.id}/cancel")
    check(st == 400 and "background" in json.loads(data)["error"]["message"],
          f"cancel of a response that was not background: 400 ({st})")
    st, _, _ = srv.raw("POST", "/v1/responses/resp_nope/cancel")
    check(st == 404, f"cancel of an unknown response: 404 ({st})")
    st, h, _ = srv.raw("GET", f"/v1/responses/{plain.id}/cancel")
    check(st == 405 and h.get("Allow") == "POST", f"GET .../cancel: 405, Allow POST ({st})")
    st, _, data = srv.raw("GET", f"/v1/responses/{plain.id}?stream=true")
    check(st == 400 and json.loads(data)["error"]["param"] == "stream",
          f"a response that was not a background stream has none to read ({st})")
    st, _, _ = srv.raw("POST", f"/v1/responses/{r.id}/cancel", key="another-key")
    check(st == 404, f"another API key cannot cancel it ({st})")


def run_input_items(srv, client):
    """GET /v1/responses/{id}/input_items (client.responses.input_items.list): the items a kept
    response was generated from, the earlier turns' included, each with an id that stays the
    same down a chain, in the API's item shape; pages by limit / after / before, both orders."""
    first = [{"role": "developer", "content": "Answer briefly."},
             {"type": "message", "role": "user", "id": "msg_mine",
              "content": [{"type": "input_text", "text": "My name is Ada."},
                          {"type": "input_text", "text": "Say hi."}]}]
    r1 = client.responses.create(model=BASE, input=first, instructions="Be kind.",
                                 temperature=0, max_output_tokens=12)
    r2 = client.responses.create(model=BASE, previous_response_id=r1.id, temperature=0,
                                 input="What is my name?", max_output_tokens=12)
    asc = list(client.responses.input_items.list(r2.id, order="asc"))
    shape = [(i.type, i.role, [(c.type, c.text) for c in i.content]) for i in asc]
    want = [("message", "developer", [("input_text", "Answer briefly.")]),
            ("message", "user", [("input_text", "My name is Ada."), ("input_text", "Say hi.")]),
            ("message", "assistant", [("output_text", r1.output_text)]),
            ("message", "user", [("input_text", "What is my name?")])]
    check(shape == want, f"input items: the earlier turn, its answer, then the new input, "
          f"instructions not among them ({shape})")
    ids = [i.id for i in asc]
    check(len(set(ids)) == 4 and all(ids) and ids[1] == "msg_mine" and
          ids[2] == r1.output[0].id and asc[2].status == r1.output[0].status and
          all(i.status == "completed" for i in asc[:2] + asc[3:]),
          f"each item has an id (a client's own kept, the answer's the output's) and a status "
          f"({ids}, {[i.status for i in asc]})")
    desc = client.responses.input_items.list(r2.id)
    check([i.id for i in desc.data] == ids[::-1] and desc.first_id == ids[-1] and
          desc.last_id == ids[0] and desc.has_more is False,
          "the default order is the latest first, one page with first_id / last_id")
    r1_ids = [i.id for i in client.responses.input_items.list(r1.id, order="asc")]
    check(r1_ids == ids[:2], f"the first response's own input items, same ids ({r1_ids})")
    page = client.responses.input_items.list(r2.id, limit=1)
    check(len(page.data) == 1 and page.has_more and page.data[0].id == ids[-1],
          "limit 1: one item and has_more")
    walked = [i.id for i in client.responses.input_items.list(r2.id, limit=1)]
    check(walked == ids[::-1], f"the client's auto-paging (after = the last id) walks them all "
          f"({len(walked)} items)")
    st, _, data = srv.raw("GET", f"/v1/responses/{r2.id}/input_items?order=asc&after={ids[0]}"
                          f"&before={ids[3]}")
    got = json.loads(data) if st == 200 else {}
    check(st == 200 and [i["id"] for i in got.get("data", [])] == ids[1:3],
          f"after and before bound a page ({st})")
    # a function call and its output are items too
    _, call, c2 = call_and_output(client, 8)
    items = list(client.responses.input_items.list(c2.id, order="asc"))
    check([i.type for i in items] == ["message", "function_call", "function_call_output"] and
          items[1].id == call.id and items[1].arguments == call.arguments and
          items[2].call_id == call.call_id and items[2].output == '{"sky": "sunny"}' and
          items[2].id, f"a call and its output among the input items ({[i.type for i in items]})")
    # what is refused
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                         ("order=up", "order"), ("after=msg_nowhere", "after")):
        st, _, data = srv.raw("GET", f"/v1/responses/{r2.id}/input_items?{query}")
        check(st == 400 and json.loads(data)["error"]["param"] == param,
              f"input_items?{query}: 400 naming {param} ({st})")
    st, _, _ = srv.raw("GET", f"/v1/responses/{r2.id}/input_items", key="another-key")
    check(st == 404, f"another API key does not find its input items ({st})")
    st, h, _ = srv.raw("DELETE", f"/v1/responses/{r2.id}/input_items")
    check(st == 405 and h.get("Allow") == "GET", f"DELETE on input_items: 405, Allow GET ({st})")
    st, _, _ = srv.raw("GET", f"/v1/responses/{r2.id}/outputs")
    check(st == 404, f"another path under a response: 404 ({st})")
    client.responses.delete(r2.id)
    st, _, _ = srv.raw("GET", f"/v1/responses/{r2.id}/input_items")
    check(st == 404, f"a deleted response's input items: 404 ({st})")


def run_conversations(srv, client):
    """The Conversations API (client.conversations, its items) and responses.create with
    conversation=: each answer equals chat's answer to the conversation's items followed by the
    input, and the conversation then holds the input and the output (store false too, and
    after a stream); items added, read and deleted by id; metadata; other keys find nothing;
    what is malformed is 400 naming the field."""
    conv = client.conversations.create(items=[{"role": "user", "content": "My name is Ada."}],
                                       metadata={"topic": "names"})
    check(conv.id.startswith("conv_") and conv.object == "conversation" and
          conv.metadata == {"topic": "names"}, f"a conversation is created ({conv.id})")
    got = client.conversations.retrieve(conv.id)
    check(got.id == conv.id and got.created_at == conv.created_at and
          got.metadata == conv.metadata, "and retrieved")
    items = client.conversations.items.list(conv.id).data
    check(len(items) == 1 and items[0].role == "user" and items[0].id and
          [(c.type, c.text) for c in items[0].content] == [("input_text", "My name is Ada.")],
          "its first item, in the API's shape")
    history = [{"role": "user", "content": "My name is Ada."}]
    r1 = client.responses.create(model=BASE, conversation=conv.id, input="What is my name?",
                                 temperature=0, max_output_tokens=16)
    want = chat(srv, history + [{"role": "user", "content": "What is my name?"}], max_tokens=16)
    check(r1.output_text == want["choices"][0]["message"]["content"] and
          r1.usage.input_tokens == want["usage"]["prompt_tokens"] and
          r1.conversation.id == conv.id,
          f"a response in the conversation answers as chat after its items ({r1.output_text!r})")
    history += [{"role": "user", "content": "What is my name?"},
                {"role": "assistant", "content": r1.output_text}]
    items = list(client.conversations.items.list(conv.id, order="asc"))
    check([i.role for i in items] == ["user", "user", "assistant"] and
          items[2].id == r1.output[0].id,
          f"the conversation then holds the input and the output ({[i.role for i in items]})")
    # store false still adds to the conversation; {"id": ...} names it too
    r2 = client.responses.create(model=BASE, conversation={"id": conv.id}, input="Thanks.",
                                 temperature=0, max_output_tokens=8, store=False)
    want = chat(srv, history + [{"role": "user", "content": "Thanks."}], max_tokens=8)
    check(r2.output_text == want["choices"][0]["message"]["content"],
          f"a second turn sees the first ({r2.output_text!r})")
    history += [{"role": "user", "content": "Thanks."},
                {"role": "assistant", "content": r2.output_text}]
    n = len(list(client.conversations.items.list(conv.id)))
    check(n == 5, f"store false: the turn is still added to the conversation ({n} items)")
    # a streamed turn is added once it completes
    evs = events_of(client, model=BASE, conversation=conv.id, input="Bye.", temperature=0,
                    max_output_tokens=6)
    text = evs[-1]["response"]["output"][0]["content"][0]["text"]
    want = chat(srv, history + [{"role": "user", "content": "Bye."}], max_tokens=6)
    check(text == want["choices"][0]["message"]["content"], f"a streamed turn ({text!r})")
    items = list(client.conversations.items.list(conv.id, order="asc"))
    check(len(items) == 7 and items[-1].content[0].text == text,
          f"a streamed turn is added ({len(items)} items)")
    # items added, read, deleted
    added = client.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": "I live in Rome."},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Noted."}]}])
    check(len(added.data) == 2 and added.data[0].id and not added.has_more,
          "items.create answers the items added, with ids")
    one = client.conversations.items.retrieve(added.data[0].id, conversation_id=conv.id)
    check(one.id == added.data[0].id and one.content[0].text == "I live in Rome.",
          "items.retrieve finds one by id")
    after = client.conversations.items.delete(items[0].id, conversation_id=conv.id)
    check(after.id == conv.id and after.object == "conversation",
          "items.delete answers the conversation")
    ids = [i.id for i in client.conversations.items.list(conv.id, order="asc", limit=100)]
    check(len(ids) == 8 and items[0].id not in ids and ids[-2:] == [a.id for a in added.data],
          "the deleted item is gone, the added ones last")
    r3 = client.responses.create(model=BASE, conversation=conv.id, input="Where do I live?",
                                 temperature=0, max_output_tokens=8)
    want = chat(srv, history[1:] + [{"role": "user", "content": "Bye."},
                                    {"role": "assistant", "content": text},
                                    {"role": "user", "content": "I live in Rome."},
                                    {"role": "assistant", "content": "Noted."},
                                    {"role": "user", "content": "Where do I live?"}],
                max_tokens=8)
    check(r3.usage.input_tokens == want["usage"]["prompt_tokens"] and
          r3.output_text == want["choices"][0]["message"]["content"],
          f"a response after the edits reads the conversation as it now is ({r3.output_text!r})")
    upd = client.conversations.update(conv.id, metadata={"topic": "places"})
    check(upd.metadata == {"topic": "places"} and
          client.conversations.retrieve(conv.id).metadata == {"topic": "places"},
          "update replaces the metadata")
    # what is refused
    body = {"model": BASE, "input": "x"}
    for extra, code, param, what in (
            ({"conversation": "conv_nope"}, 404, "conversation", "an unknown conversation"),
            ({"conversation": conv.id, "previous_response_id": r1.id}, 400, "conversation",
             "conversation with previous_response_id"),
            ({"conversation": 5}, 400, "conversation", "a conversation that is no id")):
        st, _, data = srv.raw("POST", "/v1/responses", dict(body, **extra))
        err = json.loads(data)["error"]
        check(st == code and err["param"] == param, f"{what}: {code} ({st} {err['message']})")
    for path, payload, param in (
            ("/v1/conversations", {"items": [{"role": "user", "content": "x"}] * 21}, "items"),
            ("/v1/conversations", {"items": [{"role": "robot", "content": "x"}]}, "items[0]"),
            ("/v1/conversations", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
            (f"/v1/conversations/{conv.id}", {}, "metadata"),
            (f"/v1/conversations/{conv.id}/items", {"items": []}, "items")):
        st, _, data = srv.raw("POST", path, payload)
        check(st == 400 and json.loads(data)["error"]["param"] == param,
              f"POST {path.replace(conv.id, '{id}')} {str(payload)[:40]}: 400 naming {param} "
              f"({st})")
    for method, path, code in (("GET", f"/v1/conversations/{conv.id}/items/msg_nope", 404),
                               ("GET", f"/v1/responses/{conv.id}", 404),
                               ("GET", f"/v1/conversations/{r1.id}", 404),
                               ("GET", f"/v1/conversations/{conv.id}/other", 404),
                               ("GET", "/v1/conversations", 405),
                               ("PUT", f"/v1/conversations/{conv.id}", 405),
                               ("POST", f"/v1/conversations/{conv.id}/items/{ids[0]}", 405)):
        st, _, _ = srv.raw(method, path)
        check(st == code, f"{method} {path.replace(conv.id, '{id}')}: {code} ({st})")
    st, h, _ = srv.raw("GET", "/v1/conversations")
    check(h.get("Allow") == "POST", f"GET /v1/conversations: Allow POST ({h.get('Allow')})")
    for method, path in (("GET", f"/v1/conversations/{conv.id}"),
                         ("GET", f"/v1/conversations/{conv.id}/items"),
                         ("DELETE", f"/v1/conversations/{conv.id}")):
        st, _, _ = srv.raw(method, path, key="another-key")
        check(st == 404, f"another key: {method} {path.replace(conv.id, '{id}')} is 404 ({st})")
    st, _, _ = srv.raw("POST", "/v1/responses", dict(body, conversation=conv.id),
                       key="another-key")
    check(st == 404, f"another key cannot answer in it ({st})")
    m = srv.metrics()
    check(m.get("quiver_responses_store_records", 0) > 0 and
          m.get("quiver_responses_store_bytes", 0) > 0 and
          m.get("quiver_responses_store_limit_bytes") == 64 << 20 and
          m.get("quiver_responses_store_evictions_total") == 0,
          "/metrics: the store's records, bytes, limit (64 MiB) and evictions "
          f"({m.get('quiver_responses_store_records')}, {m.get('quiver_responses_store_bytes')})")
    gone = client.conversations.delete(conv.id)
    check(gone.deleted and gone.id == conv.id, "delete")
    try:
        client.conversations.retrieve(conv.id)
        check(False, "a deleted conversation is gone")
    except openai.NotFoundError:
        check(True, "a deleted conversation is gone (404)")


def run_item_references(srv, client):
    """Item references ({"type": "item_reference", "id"}), as clients send for the items of
    kept responses (the AI SDK does with store on): each reads the item it names, so the answer
    equals chat's to the conversation written out; unknown ids and other keys' items are 400."""
    r1 = client.responses.create(model=BASE, input="My name is Ada. Say hi.", temperature=0,
                                 max_output_tokens=12)
    asked = client.responses.input_items.list(r1.id).data[0]
    r2 = client.responses.create(model=BASE, temperature=0, max_output_tokens=12, input=[
        {"type": "item_reference", "id": asked.id},
        {"type": "item_reference", "id": r1.output[0].id},
        {"role": "user", "content": "What is my name?"}])
    want = chat(srv, [{"role": "user", "content": "My name is Ada. Say hi."},
                      {"role": "assistant", "content": r1.output_text},
                      {"role": "user", "content": "What is my name?"}], max_tokens=12)
    check(r2.output_text == want["choices"][0]["message"]["content"] and
          r2.usage.input_tokens == want["usage"]["prompt_tokens"],
          f"references to a kept input and output item read them ({r2.output_text!r})")
    items = list(client.responses.input_items.list(r2.id, order="asc"))
    check([i.id for i in items[:2]] == [asked.id, r1.output[0].id],
          "the referenced items keep their ids in the new conversation")
    # a call referenced, then answered
    ask = "What is the weather like in Paris today?"
    c1 = client.responses.create(model=BASE, input=ask, temperature=0, max_output_tokens=60,
                                 tools=[WEATHER], tool_choice="required")
    call = [o for o in c1.output if o.type == "function_call"][0]
    c2 = client.responses.create(model=BASE, temperature=0, max_output_tokens=16, input=[
        {"role": "user", "content": ask}, {"type": "item_reference", "id": call.id},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    want = tool_turn(srv, ask, call, 16)
    check(c2.output_text == want["choices"][0]["message"]["content"],
          f"a referenced function call, answered by its output ({c2.output_text!r})")
    n = client.responses.input_tokens.count(model=BASE, input=[
        {"type": "item_reference", "id": r1.output[0].id}, {"role": "user", "content": "x"}])
    check(n.input_tokens > 0, f"input_tokens reads references too ({n.input_tokens})")
    # items the Conversations API gave ids to: found in the conversation the request continues
    conv = client.conversations.create(items=[{"role": "user", "content": "I live in Oslo."},
                                              {"role": "assistant", "content": "Nice city."}])
    citems = list(client.conversations.items.list(conv.id, order="asc"))
    c3 = client.responses.create(model=BASE, temperature=0, max_output_tokens=12,
                                 conversation=conv.id, store=False, input=[
                                     {"type": "item_reference", "id": citems[0].id},
                                     {"role": "user", "content": "Where do I live?"}])
    want = chat(srv, [{"role": "user", "content": "I live in Oslo."},
                      {"role": "assistant", "content": "Nice city."},
                      {"role": "user", "content": "I live in Oslo."},
                      {"role": "user", "content": "Where do I live?"}], max_tokens=12)
    check(c3.output_text == want["choices"][0]["message"]["content"],
          f"a reference to a conversation's own item, in that conversation ({c3.output_text!r})")
    st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": [
        {"type": "item_reference", "id": citems[0].id}, {"role": "user", "content": "x"}]})
    check(st == 400 and json.loads(data)["error"]["param"] == "input[0]",
          f"... and outside it: 400 ({st})")
    for ref, key, what in (("msg_nowhere", T.KEY, "an unknown id"),
                           ("nounderscore", T.KEY, "an id quiver never made"),
                           (r1.output[0].id, "another-key", "another key's item")):
        st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": [
            {"role": "user", "content": "x"}, {"type": "item_reference", "id": ref}]}, key=key)
        err = json.loads(data).get("error", {})
        check(st == 400 and err.get("param") == "input[1]",
              f"a reference to {what}: 400 naming input[1] ({st} {err.get('message')})")


def run_input_tokens(srv, client):
    """POST /v1/responses/input_tokens (client.responses.input_tokens.count): for each body,
    the input_tokens that creating the response reports in its usage."""
    prev = client.responses.create(model=BASE, input="My name is Ada.", temperature=0,
                                   max_output_tokens=8)
    bodies = {
        "a string": dict(model=BASE, input="Hello there"),
        "instructions and items": dict(model=BASE, instructions="Be brief.", input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Hi."}]}]),
        "tools": dict(model=BASE, input="Weather in Paris?", tools=[WEATHER],
                      tool_choice="required"),
        "a json_schema format": dict(model=BASE, input="A person.", text={"format": {
            "type": "json_schema", "name": "person", "schema": SCHEMA}}),
        "previous_response_id": dict(model=BASE, previous_response_id=prev.id,
                                     input="What is my name?"),
        "an adapter": dict(model="pirate", input="Hello there"),
    }
    for what, body in bodies.items():
        n = client.responses.input_tokens.count(**body)
        used = client.responses.create(**body, max_output_tokens=1).usage.input_tokens
        check(n.object == "response.input_tokens" and n.input_tokens == used,
              f"input_tokens of {what}: {n.input_tokens} = the response's usage {used}")
    st, _, data = srv.raw("POST", "/v1/responses/input_tokens", {"model": "nope", "input": "x"})
    check(st == 404 and json.loads(data)["error"]["code"] == "model_not_found",
          f"input_tokens of an unknown model: 404 ({st})")
    st, _, data = srv.raw("POST", "/v1/responses/input_tokens",
                          {"model": BASE, "input": "x", "previous_response_id": "resp_nope"})
    check(st == 404 and json.loads(data)["error"]["param"] == "previous_response_id",
          f"input_tokens after an unknown response: 404 ({st})")
    st, _, data = srv.raw("POST", "/v1/responses/input_tokens", {"model": BASE, "input": 5})
    check(st == 400 and json.loads(data)["error"]["param"] == "input",
          f"input_tokens of a bad input: 400 naming input ({st})")
    st, h, _ = srv.raw("GET", "/v1/responses/input_tokens")
    check(st == 405 and h.get("Allow") == "POST", f"GET input_tokens: 405, Allow POST ({st})")


def run_truncation():
    """truncation "auto" on a server with --max-prompt-tokens 110: a conversation grown by
    previous_response_id past the limit keeps going, each answer equal to chat's answer to the
    same conversation less the fewest earliest turns that make chat accept it (instructions
    kept); truncation "disabled" is refused at the same point; a last turn that alone does not
    fit is refused either way; input_tokens counts the truncated prompt."""
    srv = T.Server("--max-prompt-tokens", "110")
    try:
        client = srv.client()
        sysmsg = {"role": "system", "content": "You are terse."}
        turns, prev, dropped = [], None, 0
        for i, fact in enumerate(("the sky is green", "the grass is blue", "fish can fly",
                                  "snow is warm", "the sun is cold", "water is dry")):
            ask = f"Remember fact {i}: {fact}. Say ok."
            body = dict(model=BASE, input=ask, instructions="You are terse.", temperature=0,
                        max_output_tokens=8, truncation="auto")
            if prev:
                body["previous_response_id"] = prev
            r = client.responses.create(**body)
            # chat's answer with the fewest earliest turns left out that it accepts
            for k in range(len(turns) + 1):
                cut = [m for t in turns[k:] for m in t] + [{"role": "user", "content": ask}]
                st, _, data = srv.raw("POST", "/v1/chat/completions",
                                      {"model": BASE, "messages": [sysmsg] + cut,
                                       "temperature": 0, "max_tokens": 8})
                if st == 200:
                    break
            want = json.loads(data) if st == 200 else None
            check(want is not None and r.output_text == want["choices"][0]["message"]["content"]
                  and r.usage.input_tokens == want["usage"]["prompt_tokens"] and
                  r.truncation == "auto",
                  f"turn {i}: truncation auto answers as chat with {k} earliest turn(s) left out "
                  f"({r.usage.input_tokens} prompt tokens, {r.output_text!r})")
            if k > 0 and not dropped:
                dropped = k
                st, _, data = srv.raw("POST", "/v1/responses", dict(body, truncation="disabled"))
                check(st == 400 and json.loads(data)["error"]["code"] == "context_length_exceeded",
                      f"turn {i}: the same with truncation disabled is 400 ({st})")
                n = client.responses.input_tokens.count(  # the SDK lacks max_output_tokens
                    **{k2: v for k2, v in body.items()
                       if k2 not in ("temperature", "max_output_tokens")},
                    extra_body={"max_output_tokens": 8})
                check(n.input_tokens == r.usage.input_tokens,
                      f"input_tokens counts the truncated prompt ({n.input_tokens})")
            turns.append([{"role": "user", "content": ask},
                          {"role": "assistant", "content": r.output_text}])
            prev = r.id
        check(dropped > 0, f"the conversation outgrew the limit and turns were left out "
              f"(first at {dropped})")
        # the kept conversation is whole: input_items lists every turn
        n_items = len(list(client.responses.input_items.list(prev)))
        check(n_items == 2 * len(turns) - 1,
              f"the kept conversation keeps the turns left out ({n_items} items)")
        st, _, data = srv.raw("POST", "/v1/responses", {
            "model": BASE, "input": "word " * 200, "truncation": "auto",
            "previous_response_id": prev})
        check(st == 400 and json.loads(data)["error"]["code"] == "context_length_exceeded",
              f"a last turn that alone does not fit: 400 even with truncation auto ({st})")
    finally:
        srv.stop()
    return srv


def run_shared_dir():
    """--responses-dir: two servers on one directory (two replicas behind a load balancer)
    continue each other's responses and conversations and see each other's deletes; other keys
    find nothing; a restarted server finds what was kept."""
    d = tempfile.mkdtemp(prefix="quiver-test-responses-")
    a = T.Server("--responses-dir", d)
    b = T.Server("--responses-dir", d)
    servers = [a, b]
    try:
        ca, cb = a.client(), b.client()
        r1 = ca.responses.create(model=BASE, input="My name is Ada. Say hi.", temperature=0,
                                 max_output_tokens=16)
        check(os.path.isfile(os.path.join(d, r1.id)), "a kept response is a file in the dir")
        got = cb.responses.retrieve(r1.id)
        check(got.output_text == r1.output_text, "the other server GETs it")
        check(b.raw("GET", f"/v1/responses/{r1.id}", key="another-key")[0] == 404,
              "another API key does not find it there")
        r2 = cb.responses.create(model=BASE, previous_response_id=r1.id, temperature=0,
                                 input="What is my name?", max_output_tokens=16)
        want = chat(a, [{"role": "user", "content": "My name is Ada. Say hi."},
                        {"role": "assistant", "content": r1.output_text},
                        {"role": "user", "content": "What is my name?"}], max_tokens=16)
        check(r2.output_text == want["choices"][0]["message"]["content"],
              f"the other server continues it as chat's answer ({r2.output_text!r})")
        conv = ca.conversations.create(items=[{"role": "user", "content": "My name is Ada."}])
        rb = cb.responses.create(model=BASE, conversation=conv.id, input="What is my name?",
                                 temperature=0, max_output_tokens=8)
        items = list(ca.conversations.items.list(conv.id, order="asc"))
        check([i.role for i in items] == ["user", "user", "assistant"] and
              items[2].id == rb.output[0].id,
              f"a turn on one server is in the conversation on the other "
              f"({[i.role for i in items]})")
        ra = ca.responses.create(model=BASE, conversation=conv.id, input="Thanks.",
                                 temperature=0, max_output_tokens=8)
        n = len(list(cb.conversations.items.list(conv.id)))
        check(n == 5 and ra.output_text, f"and the next turn, back on the first, too ({n} items)")
        cb.responses.delete(r1.id)
        check(a.raw("GET", f"/v1/responses/{r1.id}")[0] == 404 and
              not os.path.exists(os.path.join(d, r1.id)),
              "deleted on one server: gone on the other (and its file)")
    finally:
        for s in servers:
            s.stop()
    c = T.Server("--responses-dir", d)
    servers.append(c)
    try:
        got = c.client().responses.retrieve(r2.id)
        check(got.output_text == r2.output_text, "a restarted server finds a kept response")
        n = len(list(c.client().conversations.items.list(conv.id)))
        check(n == 5, f"and the conversation ({n} items)")
    finally:
        c.stop()
        shutil.rmtree(d, ignore_errors=True)
    return servers


def run_no_store():
    """--responses-store-mb 0: nothing is kept; previous_response_id is 404 and says why."""
    srv = T.Server("--responses-store-mb", "0")
    try:
        client = srv.client()
        r = client.responses.create(model=BASE, input="Hi", max_output_tokens=4)
        check(r.model_dump()["store"] is False, "a server that keeps none says store false")
        st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": "x",
                                                        "previous_response_id": r.id})
        err = json.loads(data)["error"]
        check(st == 404 and "keeps none" in err["message"] and
              err["code"] == "previous_response_not_found",
              f"previous_response_id without a store: 404 ({st} {err['message']})")
        check(srv.raw("GET", f"/v1/responses/{r.id}")[0] == 404, "GET without a store: 404")
        st, _, data = srv.raw("POST", "/v1/responses", {"model": BASE, "input": "x",
                                                        "background": True})
        check(st == 400 and json.loads(data)["error"]["param"] == "background",
              f"background without a store: 400 ({st})")
        check(srv.metrics().get("quiver_responses_store_limit_bytes") == 0,
              "/metrics: a store of 0 bytes")
        st, _, data = srv.raw("POST", "/v1/conversations", {})
        check(st == 404 and "keeps no conversations" in json.loads(data)["error"]["message"],
              f"no conversations without a store: 404 ({st})")
    finally:
        srv.stop()
    return srv


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    srv = T.Server("--preload", f"pirate={PIRATE}")
    try:
        client = srv.client()
        run_text(srv, client)
        run_logprobs(srv, client)
        run_tools(srv, client)
        run_format(srv, client)
        run_adapter(client)
        run_store(srv, client)
        run_input_items(srv, client)
        run_input_tokens(srv, client)
        run_item_references(srv, client)
        run_conversations(srv, client)
        run_background(srv, client)
        run_errors(srv, client)
    finally:
        srv.stop()
    other = run_no_store()
    trunc = run_truncation()
    shared = run_shared_dir()
    reports = [l for l in srv.lines + other.lines + trunc.lines + sum((s.lines for s in shared), [])
               if "Sanitizer" in l or "runtime error:" in l]
    check(not reports, f"no sanitizer report from the server ({reports[:1]})")
    if T.failures:
        print(f"{len(T.failures)} check(s) failed")
        print("server log tail:\n" + "".join(srv.lines[-20:]))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
