#!/usr/bin/env python3
"""Fixtures for engine/json_text.c: JSON texts and what Python's json.dumps(json.loads(text),
ensure_ascii=False) writes for them, with the default separators, with (",", ":") and with
indent=4 - the texts of Jinja's `tojson` and `tojson(indent=4)` in transformers' chat templates.
Needs only the standard library.

Writes tests/fixtures/json_text/cases.json: {"cases": [{"in_hex", "py", "py_compact", "py_indent4"}]},
and "invalid_hex": texts json.loads refuses (or whose dumps cannot be UTF-8 encoded).
"""
import json
import math
import os
import random
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "json_text", "cases.json")

HAND = [
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather in a '
    'city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, '
    '"days": {"type": "integer", "minimum": 1, "maximum": 7.0}}, "required": ["city"]}}}',
    '{"a":1,"b":[1,2,{"c":null}],"d":true,"e":false,"f":{}, "g":[], "h":""}',
    ' [ 1 , -0 , 0.0 , -0.0 , 1.50 , 1e2 , 1E+2 , 1e-5 , 1.5e-7 , 123456789012345678901234567890 ] ',
    '[0.1, 0.2, 0.30000000000000004, 1e16, 1e15, 9999999999999998, 1e-4, 0.0001234, 1e22, 1e-300]',
    '[1e308, 1.7976931348623157e308, 5e-324, 2.2250738585072014e-308, 1e400, -1e400, 3.14159265358979323846]',
    '["plain", "quote \\" backslash \\\\ slash \\/", "\\b\\f\\n\\r\\t", "\\u0001\\u001f\\u007f", '
    '"\\u00e9\\u4e2d\\ud83d\\ude00", "raw é 中 😀", "<tool_call>", "tab\\there"]',
    '{"nested": {"deeper": {"deepest": [[[]], [{}], {"k": [1, [2, [3]]]}]}}}',
    '{"key with spaces": 1, "\\u006bey": 2, "": 3}',
    '"just a string"', '42', '-7.25', 'null', 'true',
    '{"arguments": {"city": "Paris", "unit": "celsius"}}',
]
INVALID = ['{', '[1,]', '{"a" 1}', '01', '1.', '.5', '-', '"\\x"', '"\\ud800"', '"\\udc00x"',
           '{"a":1}}', "'a'", 'tru', '"a\nb"', '[1 2]', '', ' ', '{"a":1,}']


def rand_float(rng):
    kind = rng.randrange(4)
    if kind == 0:
        return struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    if kind == 1:
        return rng.uniform(-1e6, 1e6)
    if kind == 2:
        return rng.choice([1, -1]) * 10 ** rng.uniform(-30, 30)
    return round(rng.uniform(-100, 100), rng.randrange(0, 6))


def main():
    rng = random.Random(20261129)
    texts = list(HAND)
    floats = []
    while len(floats) < 400:
        f = rand_float(rng)
        if math.isfinite(f):
            floats.append(rng.choice(["%r", "%.17g", "%.6e", "%.3f", "%.20g", "%g"]) % f)
    # a float text needs a dot or an exponent to be a float in JSON
    floats = [t if any(c in t for c in ".eE") or "inf" in t or "nan" in t else t + ".0"
              for t in floats]
    texts += ["[" + ", ".join(floats[i:i + 20]) + "]" for i in range(0, len(floats), 20)]
    cases = []
    for t in texts:
        v = json.loads(t)
        cases.append({"in_hex": t.encode().hex(),
                      "py": json.dumps(v, ensure_ascii=False),
                      "py_compact": json.dumps(v, ensure_ascii=False, separators=(",", ":")),
                      "py_indent4": json.dumps(v, ensure_ascii=False, indent=4)})
    invalid = []
    for t in INVALID:
        try:
            json.dumps(json.loads(t), ensure_ascii=False).encode()
        except (ValueError, UnicodeEncodeError):
            invalid.append(t.encode().hex())
        else:
            raise SystemExit(f"{t!r} is valid for Python")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/oracle/gen_json_text_fixtures.py", "cases": cases,
                   "invalid_hex": invalid}, f, ensure_ascii=True, indent=0)
        f.write("\n")
    print(f"{len(cases)} cases, {len(invalid)} invalid texts")


if __name__ == "__main__":
    main()
