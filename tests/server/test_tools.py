#!/usr/bin/env python3
"""Tool calls over HTTP (OpenAI `tools` with tool_choice "required", a named function or
allowed_tools, docs/http-api.md#tool-calls) with the official openai client on SmolLM2-135M-Instruct: every
call's name must be one of the tools and its arguments are judged by the jsonschema package
against that tool's parameters (and by pydantic, through the client's parse()).

Usage: test_tools.py QUIVER_BINARY   (run by tests/server/test_tools.sh)
"""
import json
import os
import re
import sys
import time

import jsonschema
import openai
import pydantic

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http_api as T  # noqa: E402 - the shared Server class, check() and failures

check = T.check

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 20},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a time zone",
    "parameters": {"type": "object",
                   "properties": {"zone": {"$ref": "#/$defs/Zone"}},
                   "required": ["zone"],
                   "$defs": {"Zone": {"type": "string", "pattern": "^[A-Z][a-z]+/[A-Z][a-z]+$"}}}}}
NOW = {"type": "function", "function": {"name": "now"}}  # no parameters: arguments {}
TOOLS = [WEATHER, TIME, NOW]
ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def params(name):
    for t in TOOLS:
        if t["function"]["name"] == name:
            return t["function"].get("parameters", {"type": "object", "properties": {},
                                                    "additionalProperties": False})
    return None


def valid_call(call, tmpl=None):
    """A call of one of TOOLS whose arguments, compact JSON text, fit its parameters."""
    p = params(call.function.name)
    try:
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, p)
    except (ValueError, TypeError, jsonschema.ValidationError):
        return False
    compact = json.dumps(args, separators=(",", ":"), ensure_ascii=False)
    return call.type == "function" and good_id(tmpl, call.id) and (
        call.function.arguments == compact)


def streamed_choices(client, **kw):
    """Each choice of a streamed answer: its calls put together by index (with the number of
    chunks that carried each one's pieces, and the pieces: (id, name, arguments) per chunk),
    its finish reason, its content, and how many logprobs entries its chunks carried."""
    out = {}
    for ch in client.chat.completions.create(stream=True, **kw):
        for choice in ch.choices:
            calls, _, _, _ = got = out.setdefault(choice.index, [{}, None, "", 0])
            d = choice.delta
            got[2] += d.content or ""
            if choice.logprobs and choice.logprobs.content:
                got[3] += len(choice.logprobs.content)
            for tc in d.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": "",
                                                "chunks": 0, "pieces": []})
                c["chunks"] += 1
                fn = tc.function
                c["pieces"].append((tc.id, fn.name if fn else None,
                                    fn.arguments if fn else None))
                if tc.id:
                    check(c["id"] is None, "a call's id comes once")
                    c["id"] = tc.id
                if fn and fn.name:
                    c["name"] = fn.name
                if fn and fn.arguments:
                    c["arguments"] += fn.arguments
            if choice.finish_reason:
                got[1] = choice.finish_reason
    return {i: ([v[0][k] for k in sorted(v[0])], v[1], v[2], v[3]) for i, v in out.items()}


def streamed(client, **kw):
    """The calls of a streamed answer's first choice, put together by index (see
    streamed_choices), its finish reason and its content."""
    return streamed_choices(client, **kw).get(0, ([], None, "", 0))[:3]


def in_pieces(s_call, call):
    """A streamed call came as the name first (with an id: the request's own), then arguments
    pieces without them, more than one chunk in all, adding up to the unstreamed call's
    arguments."""
    p = s_call["pieces"]
    return (len(p) > 1 and p[0][0] and p[0][1] == call.function.name and
            all(not i and not n for i, n, _ in p[1:]) and
            "".join(a or "" for _, _, a in p) == call.function.arguments)


def run(srv):
    client = srv.client()
    base = os.path.basename(T.MODEL)[:-len(".gguf")]
    kw = dict(model=base, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0)

    # required: the answer is calls, greedy and sampled
    r = client.chat.completions.create(tool_choice="required", **kw)
    c = r.choices[0]
    calls = c.message.tool_calls or []
    check(c.finish_reason == "tool_calls" and c.message.content is None and len(calls) >= 1 and
          all(valid_call(x) for x in calls) and len({x.id for x in calls}) == len(calls),
          f"required: valid calls {[(x.function.name, x.function.arguments) for x in calls]}")
    s_calls, s_finish, s_content = streamed(client, tool_choice="required", **kw)
    check(s_finish == "tool_calls" and not s_content and
          [(x["name"], x["arguments"]) for x in s_calls] ==
          [(x.function.name, x.function.arguments) for x in calls] and
          [x["id"] for x in s_calls] != [x.id for x in calls],  # ids are the request's own
          f"required streamed: the same calls ({len(s_calls)})")
    # allowed_tools: "required" over the allowed functions only, in chat's shape and the
    # Responses API's; "auto" needs a template that writes tools, as "auto" does
    # (a weather question: left to itself the model calls get_weather)
    allow = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "now"}},
        {"type": "function", "function": {"name": "get_time"}}]}}
    r = client.chat.completions.create(tool_choice=allow, **dict(kw, max_tokens=160))
    calls = r.choices[0].message.tool_calls or []
    check(calls and all(x.function.name in ("now", "get_time") and valid_call(x)
                        for x in calls),
          f"allowed_tools required: only now or get_time is called "
          f"({[(x.function.name, x.function.arguments) for x in calls]})")
    rr = client.responses.create(
        model=base, input=ASK[0]["content"], max_output_tokens=80, temperature=0,
        tools=[dict(type="function", **t["function"]) for t in TOOLS],
        tool_choice={"type": "allowed_tools", "mode": "required",
                     "tools": [{"type": "function", "name": "now"}]})
    fcs = [o for o in rr.output if o.type == "function_call"]
    check(fcs and all(o.name == "now" and json.loads(o.arguments) == {} for o in fcs) and
          rr.tool_choice.type == "allowed_tools",
          f"responses allowed_tools required: only now is called, the choice echoed "
          f"({[(o.name, o.arguments) for o in fcs]})")
    st, _, data = srv.raw("POST", "/v1/chat/completions", dict(
        model=base, messages=ASK, tools=TOOLS, max_tokens=4,
        tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
            {"type": "function", "function": {"name": "get_time"}}]}}))
    check(st == 400 and json.loads(data)["error"]["param"] == "tool_choice",
          f"allowed_tools auto without a template that writes tools: 400 ({st})")
    r = client.chat.completions.create(tool_choice="required", parallel_tool_calls=False, n=3,
                                       seed=11, **dict(kw, temperature=1.0))
    names = set()
    for ch in r.choices:
        names.add(ch.message.tool_calls[0].function.name if ch.message.tool_calls else None)
        check(ch.finish_reason == "length" or (
            ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1 and
            valid_call(ch.message.tool_calls[0])),
            f"required, sampled, not parallel: one valid call (choice {ch.index}: "
            f"{ch.finish_reason})")
    ids = [x.id for ch in r.choices for x in ch.message.tool_calls or []]
    check(len(ids) == len(set(ids)), f"call ids distinct across choices ({ids})")

    # a named function: one call of it, its arguments written as the model writes them
    named = {"type": "function", "function": {"name": "get_time"}}
    r = client.chat.completions.create(tool_choice=named, **kw)
    c = r.choices[0]
    calls = c.message.tool_calls or []
    check(c.finish_reason == "stop" and len(calls) == 1 and calls[0].function.name == "get_time"
          and valid_call(calls[0]),
          f"named: one valid get_time call ({calls[0].function.arguments if calls else None})")
    s_calls, s_finish, _ = streamed(client, tool_choice=named, **kw)
    check(s_finish == "stop" and len(s_calls) == 1 and s_calls[0]["name"] == "get_time" and
          s_calls[0]["id"] and calls and s_calls[0]["arguments"] == calls[0].function.arguments,
          "named streamed: the arguments arrive in pieces and add up to the same text")
    r = client.chat.completions.create(
        tool_choice={"type": "function", "function": {"name": "now"}}, **kw)
    calls = r.choices[0].message.tool_calls or []
    check(len(calls) == 1 and calls[0].function.arguments == "{}",
          f"a function without parameters takes {{}} ({calls[0].function.arguments if calls else None})")

    # the client's parse(): a strict pydantic tool, its arguments parsed into the model
    class Lookup(pydantic.BaseModel):
        city: str = pydantic.Field(max_length=20)
        days: int = pydantic.Field(ge=1, le=7)

    r = client.chat.completions.parse(
        model=base, messages=ASK, max_tokens=80, temperature=0,
        tools=[openai.pydantic_function_tool(Lookup)],
        tool_choice={"type": "function", "function": {"name": "Lookup"}})
    calls = r.choices[0].message.tool_calls or []
    parsed = calls[0].function.parsed_arguments if calls else None
    check(isinstance(parsed, Lookup) and 1 <= parsed.days <= 7,
          f"parse() with pydantic_function_tool: a Lookup instance ({parsed!r})")

    # the conversation goes on: the assistant's calls and the tool's result in the history
    first = client.chat.completions.create(tool_choice="required", **kw).choices[0].message
    history = ASK + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": x.id, "content": '{"sky": "sunny", "degrees": 21}'}
        for x in first.tool_calls]
    r = client.chat.completions.create(model=base, messages=history, tools=TOOLS,
                                       tool_choice="none", max_tokens=24, temperature=0)
    check(isinstance(r.choices[0].message.content, str) and r.choices[0].message.content and
          not r.choices[0].message.tool_calls,
          f"tool results in the history, tool_choice none: a text answer "
          f"({r.choices[0].message.content[:40]!r})")
    st, _, data = srv.raw("POST", "/tokenize", {"model": base, "messages": history,
                                                "add_generation_prompt": True})
    n_hist = json.loads(data).get("count", 0) if st == 200 else 0
    st, _, data = srv.raw("POST", "/tokenize", {"model": base, "messages": ASK,
                                                "add_generation_prompt": True})
    check(st == 200 and n_hist > json.loads(data)["count"] + 10,
          "the calls and results are part of the rendered prompt (/tokenize)")

    # cut by max_tokens: not calls, so the text comes back as content
    r = client.chat.completions.create(tool_choice="required", **dict(kw, max_tokens=4))
    c = r.choices[0]
    check(c.finish_reason == "length" and not c.message.tool_calls and
          isinstance(c.message.content, str) and c.message.content.startswith("["),
          f"cut by max_tokens: finish length, the partial text as content ({c.message.content!r})")

    # a call with arguments to write: streamed in pieces that add up to the unstreamed call;
    # cut by max_tokens inside them: the pieces so far, then finish length
    wkw = dict(kw, tools=[WEATHER])
    full = client.chat.completions.create(tool_choice="required", **wkw)
    f_calls = full.choices[0].message.tool_calls or []
    s_calls, s_finish, _ = streamed(client, tool_choice="required", **wkw)
    check(len(f_calls) >= 1 and len(f_calls[0].function.arguments) > 12 and
          [(x["name"], x["arguments"]) for x in s_calls] ==
          [(x.function.name, x.function.arguments) for x in f_calls] and
          all(x["chunks"] > 3 for x in s_calls) and s_finish == "tool_calls",
          f"required streamed: get_weather's arguments in pieces "
          f"({[(x['arguments'], x['chunks']) for x in s_calls]})")
    s_calls, s_finish, s_content = streamed(
        client, tool_choice="required",
        **dict(wkw, max_tokens=max(1, full.usage.completion_tokens - 4)))
    args = s_calls[0]["arguments"] if s_calls else ""
    check(s_finish == "length" and not s_content and len(s_calls) == 1 and
          args.startswith("{") and f_calls and
          f_calls[0].function.arguments.startswith(args) and
          len(args) < len(f_calls[0].function.arguments),
          f"required streamed, cut by max_tokens: the call so far, finish length "
          f"({args!r}, {s_finish})")
    s_calls, s_finish, s_content = streamed(client, tool_choice="required",
                                            **dict(kw, max_tokens=2))
    check(s_finish == "length" and not s_calls and s_content.startswith("["),
          f"required streamed, cut before a call began: the text, finish length "
          f"({s_content!r})")

    # refusals
    body = {"model": base, "messages": ASK, "tools": TOOLS, "max_tokens": 8}
    for extra, param, what in (
            ({}, "tool_choice", "auto (the default with tools) where the template has no tools"),
            ({"tool_choice": "auto"}, "tool_choice", "auto where the template has no tools"),
            ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
             "a function not in tools"),
            ({"tool_choice": "required", "response_format": {"type": "json_object"}},
             "tool_choice", "tools with JSON mode"),
            ({"tool_choice": "required", "ignore_eos": True}, "tool_choice",
             "constrained calls with ignore_eos"),
            ({"tool_choice": "required", "tools": [dict(WEATHER, function=dict(
                WEATHER["function"], parameters={"type": "object", "not": {}}))]}, "tools",
             "a parameters keyword quiver cannot follow"),
            ({"tool_choice": "required", "tools": [WEATHER, WEATHER]}, "tools",
             "a function declared twice"),
            ({"tool_choice": "required", "tools": [{"type": "function",
                                                    "function": {"name": "a b"}}]},
             "tools", "a bad function name"),
            ({"tool_choice": "required", "messages": [
                {"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {
                    "name": "now", "arguments": "not json"}}]}]}, "messages",
             "a history call whose arguments are not JSON")):
        T.expect_error(srv, f"refused: {what}", 400, "POST", "/v1/chat/completions",
                       dict(body, **extra), param=param)
    T.expect_error(srv, "refused: tools on completions", 400, "POST", "/v1/completions",
                   {"model": base, "prompt": "x", "tools": TOOLS, "tool_choice": "required"},
                   param="tools")


def weather_call(city, i, call_id=None):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id or f"c{i}", "type": "function",
         "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}


def good_id(tmpl, call_id):
    """Mistral's template refuses ids that are not 9 characters: quiver writes 9 letters and
    digits for it, "call_..." otherwise."""
    if tmpl == "mistral-v0.3":
        return re.fullmatch(r"[A-Za-z0-9]{9}", call_id) is not None
    return call_id.startswith("call_")


def prompt_of(srv, body):
    """The rendered prompt of a chat body, read back through /tokenize and /detokenize."""
    st, _, data = srv.raw("POST", "/tokenize", body)
    ids = json.loads(data)["tokens"] if st == 200 else []
    st, _, data = srv.raw("POST", "/detokenize", {"model": body["model"], "tokens": ids})
    return json.loads(data)["prompt"] if st == 200 else ""


def run_auto(srv, tmpl):
    """tool_choice "auto" with a template that writes tools (--chat-template qwen2.5, llama3.2
    or mistral-v0.3): the tools and the history's calls are in the prompt, the template's calls
    in the answer become calls, other answers are text; streamed answers hold back what may be
    a call, and stream a call as its name, then its arguments in pieces (Qwen's, which the
    model writes). SmolLM2 follows Qwen's <tool_call> few-shot; it does not write Llama's {"name": ...,
    "parameters": ...} calls or Mistral's [TOOL_CALLS] list reliably (it was never trained on
    those formats), so for them the reading of calls is covered by test_proto and here only the
    same answer streamed and not."""
    client = srv.client()
    base = os.path.basename(T.MODEL)[:-len(".gguf")]
    tools = [WEATHER]
    mistral = tmpl == "mistral-v0.3"
    cid = (lambda i: f"call{i:05d}") if mistral else (lambda i: f"c{i}")
    shots = []
    for i, city in enumerate(("Paris", "Berlin", "Madrid"), 1):
        shots += [{"role": "user", "content": f"Weather in {city}?"}, weather_call(city, i, cid(i))]
        if mistral:  # its template wants user and assistant turns to alternate around the calls
            shots += [{"role": "tool", "tool_call_id": cid(i), "content": "sunny"},
                      {"role": "assistant", "content": f"Sunny in {city}."}]
    shots.append({"role": "user", "content": "Weather in Rome?"})
    # chat_template_kwargs (vLLM passes them to the template): Llama 3.x prints date_string;
    # what quiver's rendering lacks is refused there; variables no template reads change nothing
    ask = {"model": base, "messages": ASK}
    plain = prompt_of(srv, ask)
    dated = prompt_of(srv, dict(ask, chat_template_kwargs={"date_string": "01 Jan 1999"}))
    inert = prompt_of(srv, dict(ask, chat_template_kwargs={"enable_thinking": False}))
    st, _, data = srv.raw("POST", "/v1/chat/completions", dict(
        ask, max_tokens=2, chat_template_kwargs={"tools_in_user_message": False}))
    llama = tmpl.startswith("llama3")
    undated = re.sub(r"Today Date: \d\d \w{3} \d{4}", "Today Date: 01 Jan 1999", plain)
    check(plain and inert == plain and dated == undated and
          ("Today Date: 01 Jan 1999" in dated) == llama and (st == 400) == llama,
          f"{tmpl}: chat_template_kwargs date_string printed where the template reads it, "
          f"tools_in_user_message false {'refused' if llama else 'inert'} ({st})")
    both = dict(model=base, messages=ASK, tools=[WEATHER, TIME])
    shown = prompt_of(srv, dict(both, tool_choice={"type": "allowed_tools", "allowed_tools": {
        "mode": "auto", "tools": [{"type": "function", "function": {"name": "get_time"}}]}}))
    full = prompt_of(srv, both)
    check("get_time" in shown and "get_weather" not in shown and "get_weather" in full,
          f"{tmpl}: allowed_tools auto shows the template only the allowed tools")
    kw = dict(model=base, messages=shots, tools=tools, max_tokens=60, temperature=0)
    r = client.chat.completions.create(**kw)  # auto: the default
    c = r.choices[0]
    calls = c.message.tool_calls or []
    ok = c.finish_reason == "tool_calls" and len(calls) >= 1 and all(
        x.function.name == "get_weather" and good_id(tmpl, x.id) and
        jsonschema.Draft202012Validator(WEATHER["function"]["parameters"]).is_valid(
            dict({"unit": "celsius"}, **json.loads(x.function.arguments))) for x in calls)
    if tmpl == "qwen2.5":
        check(ok, f"auto ({tmpl}): the model's <tool_call> block is a call "
              f"({[(x.function.name, x.function.arguments) for x in calls]}, "
              f"{c.message.content!r})")
    s_calls, s_finish, s_content = streamed(client, **kw)
    check(s_finish == c.finish_reason and (s_content or None) == c.message.content and
          [(x["name"], x["arguments"]) for x in s_calls] ==
          [(x.function.name, x.function.arguments) for x in calls],
          "auto streamed: the same content and calls")
    if tmpl == "qwen2.5":  # the model writes a call: it streams as it is written
        check(calls and len(calls[0].function.arguments) > 4 and len(s_calls) == len(calls) and
              all(in_pieces(x, y) for x, y in zip(s_calls, calls)) and
              "<tool_call>" not in s_content,
              f"auto ({tmpl}) streamed: the name first, then the arguments in pieces "
              f"({[x['pieces'] for x in s_calls]})")
        # n = 2 greedy, logprobs: each choice's pieces add up to the same calls, and its chunks
        # carry the logprobs of the unstreamed answer, each once
        lp = client.chat.completions.create(logprobs=True, **kw).choices[0].logprobs
        n_lps = len(lp.content) if lp and lp.content else 0
        got = streamed_choices(client, n=2, logprobs=True, **kw)
        check(sorted(got) == [0, 1] and n_lps > 10 and all(
            f == "tool_calls" and [(x["name"], x["arguments"]) for x in cs] ==
            [(x.function.name, x.function.arguments) for x in calls] and
            all(in_pieces(x, y) for x, y in zip(cs, calls)) and
            n_lp == n_lps for cs, f, _, n_lp in got.values()),
            f"auto ({tmpl}) streamed, n=2 with logprobs: both choices' calls in pieces, "
            f"{n_lps} logprobs each "
            f"({[(f, n_lp, [x['arguments'] for x in cs]) for cs, f, _, n_lp in got.values()]})")
        # cut by max_tokens inside the call's arguments (the longest such cut): the pieces so
        # far, then finish length; every cut: a prefix of the call, never the marker as content
        cut, tried = None, []
        for m in range(r.usage.completion_tokens - 1, 0, -1):
            s_calls, s_finish, s_content = streamed(client, **dict(kw, max_tokens=m))
            args = s_calls[0]["arguments"] if s_calls else ""
            tried.append((m, s_finish, args, s_content))
            if not (s_finish == "length" and len(s_calls) <= 1 and
                    "<tool_call>" not in s_content and
                    calls[0].function.arguments.startswith(args)):
                break
            if s_calls and s_calls[0]["name"] == calls[0].function.name and \
                    0 < len(args) < len(calls[0].function.arguments):
                cut = m
                break
        check(cut is not None and (tried[-1][3] or None) == c.message.content,
              f"auto ({tmpl}) streamed, cut by max_tokens in the call: the call so far, finish "
              f"length ({tried})")
    say = [{"role": "user", "content": "Say hello to Bob."}]
    r = client.chat.completions.create(**dict(kw, messages=say, tool_choice="auto"))
    c = r.choices[0]
    check(c.finish_reason in ("stop", "length") and not c.message.tool_calls and
          c.message.content and "<tool_call>" not in c.message.content and
          not c.message.content.lstrip().startswith("{"),
          f"auto ({tmpl}): a text answer stays text ({c.message.content[:40]!r})")
    s_calls, s_finish, s_content = streamed(client, **dict(kw, messages=say))
    check(not s_calls and s_content == c.message.content and s_finish == c.finish_reason,
          "auto streamed: the same text")
    counts = []
    for extra in ({}, {"tools": tools}):
        st, _, data = srv.raw("POST", "/tokenize", dict({"model": base, "messages": say}, **extra))
        counts.append(json.loads(data)["count"] if st == 200 else 0)
    check(counts[1] > counts[0] + 50, f"the template writes the tools into the prompt ({counts})")
    if tmpl == "llama3.2":  # today's date (strftime_now) in the system turn
        before = time.strftime("%d %b %Y")
        prompt = prompt_of(srv, {"model": base, "messages": say})
        dates = {before, time.strftime("%d %b %Y")}  # midnight may pass in between
        check(any(f"Cutting Knowledge Date: December 2023\nToday Date: {d}\n\n" in prompt
                  for d in dates),
              f"llama3.2: today's date in the system turn ({prompt[:160]!r})")
        prompt = prompt_of(srv, {"model": base, "messages": shots, "tools": tools})
        check('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", '
              '"parameters": {"city": "Berlin"}}<|eot_id|>' in prompt and
              '"name": "get_weather",\n        "description"' in prompt,
              "llama3.2: the history's calls as Llama writes them, the tools with indent=4")
        two = shots[:1] + [dict(weather_call("Paris", 1), tool_calls=weather_call(
            "Paris", 1)["tool_calls"] + weather_call("Oslo", 2)["tool_calls"])] + shots[-1:]
        st, _, data = srv.raw("POST", "/v1/chat/completions",
                              {"model": base, "messages": two, "tools": tools})
        check(st == 400 and "single tool-calls" in data.decode(),
              f"llama3.2: two calls in one message refused as the template does ({st})")
    if mistral:
        prompt = prompt_of(srv, {"model": base, "messages": shots, "tools": tools})
        check('[INST] Weather in Madrid?[/INST][TOOL_CALLS] [{"name": "get_weather", '
              '"arguments": {"city": "Madrid"}, "id": "call00003"}]' in prompt and
              '[TOOL_RESULTS] {"content": sunny, "call_id": "call00003"}[/TOOL_RESULTS] '
              'Sunny in Madrid.' in prompt and
              '[/AVAILABLE_TOOLS][INST] Weather in Rome?[/INST]' in prompt and
              prompt.count("[AVAILABLE_TOOLS] [") == 1,
              f"mistral-v0.3: the history's calls with their ids, the tools before the last "
              f"user turn ({prompt[-400:]!r})")
        bad = shots[:1] + [weather_call("Paris", 1, "call_1")] + shots[2:4] + shots[-1:]
        st, _, data = srv.raw("POST", "/v1/chat/completions",
                              {"model": base, "messages": bad, "tools": tools})
        check(st == 400 and "alphanumeric strings with length 9" in data.decode(),
              f"mistral-v0.3: a call id that is not 9 characters refused as the template does "
              f"({st})")
    if mistral:  # a named function's call and a streamed "required" one: Mistral's ids too
        named = {"type": "function", "function": {"name": "get_weather"}}
        r = client.chat.completions.create(**dict(kw, tool_choice=named, max_tokens=30))
        n_calls = r.choices[0].message.tool_calls or []
        s_calls, _, _ = streamed(client, **dict(kw, tool_choice=named, max_tokens=30))
        s_req, _, _ = streamed(client, **dict(kw, tool_choice="required"))
        ids = [x.id for x in n_calls] + [x["id"] or "" for x in s_calls + s_req]
        check(len(ids) == 3 and all(good_id(tmpl, i) for i in ids),
              f"mistral-v0.3: named and streamed calls have 9-character ids ({ids})")
    r = client.chat.completions.create(**dict(kw, tool_choice="required"))
    calls = r.choices[0].message.tool_calls or []
    check(len(calls) >= 1 and all(valid_call(x, tmpl) for x in calls),
          f"required with a template that writes tools: valid calls "
          f"({[(x.id, x.function.name) for x in calls]})")
    if mistral and calls:  # the answer's calls and their results go back as the history
        history = shots + [r.choices[0].message.model_dump(exclude_none=True)] + [
            {"role": "tool", "tool_call_id": x.id, "content": '{"sky": "sunny"}'} for x in calls]
        prompt = prompt_of(srv, {"model": base, "messages": history, "tools": tools})
        check(f'[TOOL_RESULTS] {{"content": {{"sky": "sunny"}}, "call_id": "{calls[0].id}"}}'
              f'[/TOOL_RESULTS]' in prompt and f'"id": "{calls[0].id}"}}' in prompt,
              f"mistral-v0.3: the answer's calls and their results render back "
              f"({prompt[-300:]!r})")
        r2 = client.chat.completions.create(**dict(kw, messages=history, max_tokens=8))
        check(r2.choices[0].finish_reason in ("stop", "length", "tool_calls"),
              "mistral-v0.3: the round trip is answered")


def main():
    if not os.path.isfile(T.MODEL):
        print(f"SKIP: {T.MODEL} not found (run deploy/fetch-model.sh)")
        return 77
    args = ("--api-key", T.KEY, "--max-seqs", "8")
    return T.report([T.run_on_server(args, run)] +
                    [T.run_on_server(args + ("--chat-template", tmpl),
                                     lambda srv, tmpl=tmpl: run_auto(srv, tmpl))
                     for tmpl in ("qwen2.5", "llama3.2", "mistral-v0.3")])


if __name__ == "__main__":
    sys.exit(main())
