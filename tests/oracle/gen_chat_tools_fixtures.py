#!/usr/bin/env python3
"""Chat renderings with tools (tool definitions, an assistant's tool calls, tool results) by
the Qwen2.5-Instruct, Llama-3.1-Instruct, Llama-3.2-Instruct, Mistral-7B-Instruct-v0.3 and
Mistral-Nemo-Instruct-2407 Jinja templates, the way
transformers' apply_chat_template renders them (the environment of TOKENIZER.md: trim_blocks,
lstrip_blocks, `tojson` = json.dumps with ensure_ascii=False, raise_exception, strftime_now)
and the way vLLM passes the request (tools and call arguments as the objects the client's JSON
text holds). Needs jinja2 (tests/oracle/requirements.txt).

Reads the Qwen2.5 template from tests/fixtures/tokenizer/chat.json (written by
gen_tokenizer_fixtures.py); the Llama and Mistral templates are below (sources cited there).
Writes tests/fixtures/tokenizer/chat_tools.json: {"templates": {name: source} (the Llama and
Mistral ones), "cases": [{"template_name", "family", "bos_token", "eos_token" (when not
"<|im_end|>"), "date" (what strftime_now("%d %b %Y") returned, or null), "tools_text" (the raw
JSON text the client sent, or null), "messages" (role, content, tool_call_id, calls: [{"name",
"arguments_text", "id"}]), "add_generation_prompt", "expected" (null when the template raised an
exception), "error"}]}.
"""
import datetime
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


# meta-llama/Llama-3.1-8B-Instruct, tokenizer_config.json "chat_template" (Llama 3.3 uses the
# same text).
LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# meta-llama/Llama-3.2-3B-Instruct (the 1B's is the same), as llama.cpp keeps it in
# models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja: 3.1's without builtin_tools, and
# today's date from strftime_now.
LLAMA32 = LLAMA31.replace("""{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}""", """{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}""")

# Single calls only (the Llama templates raise on more), whitespace to trim, the ipython role.
LLAMA_CONVS = {
    "ask": [{"role": "user", "content": "Weather in Paris?"}],
    "system_ask": [{"role": "system", "content": " \n Be brief.\u2003\n"},
                   {"role": "user", "content": "\tWeather in Paris? "}],
    "round_trip": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Weather in Paris?"},
                   {"role": "assistant", "content": None, "calls": [CALL_W]},
                   {"role": "tool", "content": '{"sky": "sunny"}'},
                   {"role": "assistant", "content": "Sunny."},
                   {"role": "user", "content": "And in São Paulo?"},
                   {"role": "assistant", "content": "Let me check.", "calls": [CALL_U]},
                   {"role": "tool", "content": "  rain\n \"heavy\" \\ 🌧"},
                   {"role": "ipython", "content": "raw"},
                   {"role": "user", "content": "Thanks"}],
    "tool_first": [{"role": "tool", "content": "orphan result"},
                   {"role": "user", "content": "hi"}],
    "other_roles": CONVS["other_roles"],
    "only_system": [{"role": "system", "content": "S"}],
    "two_calls": [{"role": "user", "content": "Weather and time?"},
                  {"role": "assistant", "content": None, "calls": [CALL_W, CALL_N]}],
}
# mistralai/Mistral-7B-Instruct-v0.3, tokenizer_config.json "chat_template" (the revision with
# tool use).
MISTRAL_V03 = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""
# mistralai/Mistral-Nemo-Instruct-2407, tokenizer_config.json "chat_template" (as its GGUF files
# carry it): v0.3's text without the spaces after [INST], [AVAILABLE_TOOLS], [TOOL_CALLS] and
# [TOOL_RESULTS], the assistant's content written as it is, and parentheses around the
# tool_calls test. Each edit below must apply exactly as many times as counted.
NEMO_EDITS = [('"[AVAILABLE_TOOLS] ["', '"[AVAILABLE_TOOLS]["', 1),
              ('"[INST] " +', '"[INST]" +', 2),
              ('{%- elif message.tool_calls is defined and message.tool_calls is not none %}',
               '{%- elif (message.tool_calls is defined and message.tool_calls is not none) %}', 1),
              ('"[TOOL_CALLS] ["', '"[TOOL_CALLS]["', 1),
              ('" " + message["content"]|trim + eos_token', 'message["content"] + eos_token', 1),
              ("'[TOOL_RESULTS] {", "'[TOOL_RESULTS]{", 1)]
MISTRAL_NEMO = MISTRAL_V03
for old, new, count in NEMO_EDITS:
    assert MISTRAL_NEMO.count(old) == count, old
    MISTRAL_NEMO = MISTRAL_NEMO.replace(old, new)
MCALL_W = dict(CALL_W, id="a1B2c3D4e")
MCALL_N = dict(CALL_N, id="Zz9Yy8Xx7")
MCALL_U = dict(CALL_U, id="ünïcödé12")  # 9 code points: Jinja's length
MISTRAL_CONVS = {
    "ask": CONVS["ask"],
    "system_ask": CONVS["system_ask"],
    "round_trip": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Weather in Paris and the time?"},
                   {"role": "assistant", "content": None, "calls": [MCALL_W, MCALL_N]},
                   {"role": "tool", "content": '{"sky": "sunny"}', "tool_call_id": "a1B2c3D4e"},
                   {"role": "tool", "content": "12:00", "tool_call_id": "Zz9Yy8Xx7"},
                   {"role": "assistant", "content": "  Sunny, noon.\n"},
                   {"role": "user", "content": "And in São Paulo?"},
                   {"role": "assistant", "content": "Let me check.", "calls": [MCALL_U]},
                   {"role": "tool_results", "content": "rain \"heavy\"",
                    "tool_call_id": "ünïcödé12"}],
    "round_trip_asks": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "calls": [MCALL_W]},
                        {"role": "tool", "content": "sunny", "tool_call_id": "a1B2c3D4e"},
                        {"role": "assistant", "content": "Sunny."},
                        {"role": "user", "content": "Thanks!"}],
    "same_user_twice": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"},
                        {"role": "user", "content": "hi"}],
    "tool_first": [{"role": "tool", "content": "orphan", "tool_call_id": "123456789"},
                   {"role": "user", "content": "hi"}],
    "call_id_long": [{"role": "user", "content": "Weather?"},
                     {"role": "assistant", "content": None,
                      "calls": [dict(CALL_W, id="call_0123456789")]}],
    "call_id_missing": [{"role": "user", "content": "Weather?"},
                        {"role": "assistant", "content": None, "calls": [CALL_W]}],
    "result_id_missing": [{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "content": None, "calls": [MCALL_W]},
                          {"role": "tool", "content": "sunny"}],
    "two_users": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    "assistant_first": [{"role": "assistant", "content": "a"},
                        {"role": "user", "content": "b"}],
    "later_system": [{"role": "user", "content": "a"},
                     {"role": "system", "content": "late"}],
    "other_roles": CONVS["other_roles"],
}
LLAMA_DATE = datetime.datetime(2026, 3, 5, 12, 0, 0)  # strftime_now's "now" in these renderings


def render(tmpl, msgs, tools, gen, bos="", eos="<|im_end|>", **kwargs):
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                      extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = LLAMA_DATE.strftime
    jmsgs = []
    for m in msgs:
        j = {"role": m["role"], "content": m["content"]}
        if m.get("calls"):
            j["tool_calls"] = [dict({"type": "function", "function": {
                "name": c["name"], "arguments": json.loads(c["arguments_text"])}},
                **({"id": c["id"]} if "id" in c else {})) for c in m["calls"]]
        if "tool_call_id" in m:
            j["tool_call_id"] = m["tool_call_id"]
        jmsgs.append(j)
    return env.from_string(tmpl).render(messages=jmsgs, tools=tools, add_generation_prompt=gen,
                                        bos_token=bos, eos_token=eos, **kwargs)


def main():
    with open(os.path.join(DIR, "chat.json"), encoding="utf-8") as f:
        tmpl = json.load(f)["templates"]["qwen25"]
    cases = []
    for cname, msgs in CONVS.items():
        for tools_text in (TOOLS, None):
            for gen in (True, False):
                tools = json.loads(tools_text) if tools_text else None
                exp = render(tmpl, msgs, tools, gen)
                cases.append({"template_name": "qwen25", "family": "qwen2.5", "bos_token": None,
                              "date": None, "conversation": cname, "tools_text": tools_text,
                              "messages": [dict(m, content=m["content"] or "") for m in msgs],
                              "add_generation_prompt": gen, "expected": exp})
    errors = 0
    for tname, fam, src in (("llama31", "llama3.1", LLAMA31), ("llama32", "llama3.2", LLAMA32)):
        for cname, msgs in LLAMA_CONVS.items():
            for tools_text in (TOOLS, None):
                for gen in (True, False):
                    tools = json.loads(tools_text) if tools_text else None
                    try:
                        exp, error = render(src, msgs, tools, gen, "<|begin_of_text|>"), None
                    except jinja2.exceptions.TemplateError as e:
                        exp, error = None, str(e)
                        errors += 1
                    cases.append({"template_name": tname, "family": fam,
                                  "bos_token": "<|begin_of_text|>",
                                  "date": LLAMA_DATE.strftime("%d %b %Y") if fam == "llama3.2"
                                  else None,
                                  "conversation": cname, "tools_text": tools_text,
                                  "messages": [dict(m, content=m["content"] or "") for m in msgs],
                                  "add_generation_prompt": gen, "expected": exp, "error": error})
    # chat_template_kwargs' date_string (vLLM passes it to the template as a variable): both
    # Llama templates print it in place of their own date
    for tname, fam, src in (("llama31", "llama3.1", LLAMA31), ("llama32", "llama3.2", LLAMA32)):
        for cname in ("ask", "system_ask"):
            msgs = LLAMA_CONVS[cname]
            for tools_text in (TOOLS, None):
                tools = json.loads(tools_text) if tools_text else None
                exp = render(src, msgs, tools, True, "<|begin_of_text|>",
                             date_string="01 Jan 1999")
                cases.append({"template_name": tname, "family": fam,
                              "bos_token": "<|begin_of_text|>",
                              "date": LLAMA_DATE.strftime("%d %b %Y") if fam == "llama3.2"
                              else None, "date_string": "01 Jan 1999",
                              "conversation": cname, "tools_text": tools_text,
                              "messages": [dict(m, content=m["content"] or "") for m in msgs],
                              "add_generation_prompt": True, "expected": exp, "error": None})
    for tname, fam, src in (("mistral_v03", "mistral-v0.3", MISTRAL_V03),
                            ("mistral_nemo", "mistral-nemo", MISTRAL_NEMO)):
        for cname, msgs, tools_text in ((c, m, t) for c, m in MISTRAL_CONVS.items()
                                        for t in (TOOLS, "[]", None)):
            tools = json.loads(tools_text) if tools_text else None
            try:
                exp, error = render(src, msgs, tools, True, "<s>", "</s>"), None
            except jinja2.exceptions.TemplateError as e:
                exp, error = None, str(e)
                errors += 1
            cases.append({"template_name": tname, "family": fam,
                          "bos_token": "<s>", "eos_token": "</s>", "date": None,
                          "conversation": cname, "tools_text": tools_text,
                          "messages": [dict(m, content=m["content"] or "") for m in msgs],
                          "add_generation_prompt": True, "expected": exp, "error": error})
    with open(os.path.join(DIR, "chat_tools.json"), "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/oracle/gen_chat_tools_fixtures.py",
                   "templates": {"llama31": LLAMA31, "llama32": LLAMA32,
                                 "mistral_v03": MISTRAL_V03, "mistral_nemo": MISTRAL_NEMO}, "cases": cases}, f,
                  ensure_ascii=False, indent=0, separators=(",", ":"))
    print(f"{len(cases)} renderings ({errors} raised)")


if __name__ == "__main__":
    main()
