#!/usr/bin/env python3
"""Chat renderings with tools (tool definitions, an assistant's tool calls, tool results) by
the Qwen2.5-Instruct Jinja template, the way transformers' apply_chat_template renders it
(the environment of TOKENIZER.md: trim_blocks, lstrip_blocks, `tojson` = json.dumps with
ensure_ascii=False) and the way vLLM passes the request (tools and call arguments as the
objects the client's JSON text holds). Needs jinja2 (tests/oracle/requirements.txt).

Reads the template from tests/fixtures/tokenizer/chat.json (written by
gen_tokenizer_fixtures.py) and writes tests/fixtures/tokenizer/chat_tools.json:
{"cases": [{"template_name", "family", "tools_text" (the raw JSON text the client sent, or
null), "messages" (role, content, calls: [{"name", "arguments_text"}]),
"add_generation_prompt", "expected"}]}.
"""
import json
import os

import jinja2
import jinja2.ext
import jinja2.sandbox

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "fixtures", "tokenizer")

TOOLS = """[{"type": "function", "function": {"name": "get_weather",
  "description": "Weather in a city \\u2014 \\"now\\" or later\\n(°C)", "parameters": {
  "type": "object", "properties": {"city": {"type": "string", "description": "e.g. Zürich"},
  "days": {"type": "integer", "minimum": 1, "maximum": 7.0, "default": 1e0},
  "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}},
 {"type":"function","function":{"name":"now","parameters":{"type":"object","properties":{}},
  "strict":true,"x-extra":[0.5,-0.0,1E+2,12345678901234567890,null,false]}}]"""

CALL_W = {"name": "get_weather", "arguments_text": '{ "city" : "Paris", "days": 2.50 }'}
CALL_N = {"name": "now", "arguments_text": "{}"}
CALL_U = {"name": "get_weather", "arguments_text": '{"city": "S\\u00e3o Paulo \\ud83c\\udf27", "unit": "celsius"}'}

CONVS = {
    "ask": [{"role": "user", "content": "Weather in Paris?"}],
    "system_ask": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Weather in Paris?"}],
    "round_trip": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Weather in Paris and the time?"},
                   {"role": "assistant", "content": None, "calls": [CALL_W, CALL_N]},
                   {"role": "tool", "content": '{"sky": "sunny"}'},
                   {"role": "tool", "content": "12:00"},
                   {"role": "assistant", "content": "Sunny, noon."},
                   {"role": "user", "content": "And in São Paulo?"},
                   {"role": "assistant", "content": "Let me check.", "calls": [CALL_U]},
                   {"role": "tool", "content": "rain"}],
    "tool_first": [{"role": "tool", "content": "orphan result"},
                   {"role": "user", "content": "hi"}],
    "other_roles": [{"role": "user", "content": "a"},
                    {"role": "developer", "content": "dropped by the template"},
                    {"role": "system", "content": "a later system turn"},
                    {"role": "assistant", "content": ""},
                    {"role": "user", "content": "b"}],
}


def render(tmpl, msgs, tools, gen):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    jmsgs = []
    for m in msgs:
        j = {"role": m["role"], "content": m["content"]}
        if m.get("calls"):
            j["tool_calls"] = [{"type": "function", "function": {
                "name": c["name"], "arguments": json.loads(c["arguments_text"])}}
                for c in m["calls"]]
        jmsgs.append(j)
    return env.from_string(tmpl).render(messages=jmsgs, tools=tools, add_generation_prompt=gen,
                                        bos_token="", eos_token="<|im_end|>")


def main():
    with open(os.path.join(DIR, "chat.json"), encoding="utf-8") as f:
        tmpl = json.load(f)["templates"]["qwen25"]
    cases = []
    for cname, msgs in CONVS.items():
        for tools_text in (TOOLS, None):
            for gen in (True, False):
                tools = json.loads(tools_text) if tools_text else None
                exp = render(tmpl, msgs, tools, gen)
                cases.append({"template_name": "qwen25", "family": "qwen2.5",
                              "conversation": cname, "tools_text": tools_text,
                              "messages": [dict(m, content=m["content"] or "") for m in msgs],
                              "add_generation_prompt": gen, "expected": exp})
    with open(os.path.join(DIR, "chat_tools.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/oracle/gen_chat_tools_fixtures.py", "cases": cases}, f,
                  ensure_ascii=False, indent=0, separators=(",", ":"))
    print(f"{len(cases)} renderings")


if __name__ == "__main__":
    main()
