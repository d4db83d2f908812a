#!/usr/bin/env python3
"""Generates tests/fixtures/json_grammar/cases.json: JSON texts judged by Python's json module,
for tests/engine/test_json_grammar.c (the JSON-mode recogniser, engine/json_grammar.c).

- valid: byte strings that Python accepts as a JSON object: random documents (nested objects
  and arrays, strings with escapes and every UTF-8 length, integers, floats with exponents,
  literals) written by json.dumps with random indentation, separators and ensure_ascii, plus
  edge cases written by hand. Each is checked with json.loads before it is kept.
- invalid: byte strings that Python refuses (strict UTF-8 first, then json.loads with NaN and
  Infinity refused, as RFC 8259 does) or whose value is not an object: one-byte mutations
  (deletion, insertion, replacement) of valid documents, plus hand-written cases.

Whitespace runs stay below the recogniser's documented limit (32 bytes) and nesting below its
depth limit (64), and no document has whitespace before its opening or after its closing brace:
those limits are quiver's own rules, tested by hand in the C test, not JSON's.

Needs only the Python standard library. Run: python3 tests/oracle/gen_json_grammar_fixtures.py
"""
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "json_grammar", "cases.json")

CHARS = ("abcXYZ09 _-./:\\\"'\t\n\r\b\f\x01\x1f\x7f"
         "\u00e9\u00df\u0416\u4e2d\u20ac\uffee\U0001f600\U00010348\u2028")


def rand_str(rng, n_max=8):
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(0, n_max)))


def rand_number(rng):
    k = rng.randrange(6)
    if k == 0:
        return rng.randint(-10, 10)
    if k == 1:
        return rng.randint(-10**18, 10**18)
    if k == 2:
        return rng.uniform(-1e3, 1e3)
    if k == 3:
        return rng.choice([1e-7, -2.5e-12, 6.02e23, 1e300, -0.0, 0.5])
    return rng.randint(0, 99)


def rand_value(rng, depth):
    k = rng.randrange(9 if depth < 5 else 6)
    if k == 0:
        return rand_str(rng)
    if k == 1:
        return rand_number(rng)
    if k == 2:
        return rng.choice([True, False, None])
    if k in (3, 4, 5):
        return rand_str(rng, 3) if k == 5 else rand_number(rng)
    if k in (6, 7):
        return {rand_str(rng, 5): rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def dump(rng, obj):
    indent = rng.choice([None, None, 0, 1, 2, 4])
    seps = rng.choice([None, (",", ":"), (", ", ": "), (" ,", " : ")])
    text = json.dumps(obj, indent=indent, separators=seps, ensure_ascii=rng.random() < 0.5)
    return text.encode("utf-8")


def python_accepts(doc):
    try:
        text = doc.decode("utf-8")
        value = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(value, dict)


def within_limits(doc):
    run = 0
    for b in doc:
        run = run + 1 if b in b" \t\n\r" else 0
        if run > 32:
            return False
    return not doc[:1].isspace() and not doc[-1:].isspace()


HAND_VALID = [
    b'{}', b'{"":""}', b'{"a":[]}', b'{"a":{}}', b'{"a":[[[]]],"b":{"c":{"d":{}}}}',
    b'{"n":0}', b'{"n":-0}', b'{"n":-0.0e+5}', b'{"n":1E3}', b'{"n":1.5e-3}', b'{"n":123456789}',
    b'{"n":[0,1,-1,0.25,1e1,1E+1,1e-1]}', b'{"t":true,"f":false,"z":null}',
    b'{"s":"\\"\\\\\\/\\b\\f\\n\\r\\t"}', b'{"s":"\\u00e9\\uD83D\\uDE00\\u0000"}',
    b'{"s":"\\ud800"}',  # a lone surrogate escape: valid JSON text (RFC 8259 section 8.2)
    '{"s":"\u00e9\u0800\uffff\U00010000\U0010ffff"}'.encode("utf-8"),
    b'{"s":"\x7f"}', b'{\n  "a" : 1 ,\n  "b" : [ 1 , 2 ]\n}',
    b'{\r\n\t "a":1 \n}',
]

HAND_INVALID = [
    b'', b' ', b'[]', b'"x"', b'1', b'null', b'{', b'{"a"', b'{"a":', b'{"a":1', b'{"a":1,}',
    b'{,}', b'{"a" 1}', b'{"a":01}', b'{"a":00}', b'{"a":-}', b'{"a":.5}', b'{"a":1.}',
    b'{"a":1e}', b'{"a":1e+}', b'{"a":+1}', b'{"a":0x10}', b'{"a":NaN}', b'{"a":Infinity}',
    b'{"a":-Infinity}', b'{"a":tru}', b'{"a":True}', b'{"a":nul}', b'{"a":[1 2]}',
    b'{"a":[1,]}', b'{"a":[,1]}', b'{"a"}', b'{1:2}', b"{'a':1}", b'{"a":"\x01"}',
    b'{"a":"\n"}', b'{"a":"\\x"}', b'{"a":"\\u12G4"}', b'{"a":"\\u12"}', b'{"a":"\\U0041"}',
    b'{"a":"\xc0\xaf"}', b'{"a":"\xc1\xbf"}', b'{"a":"\xe0\x80\xaf"}', b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xf0\x80\x80\xaf"}', b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\xf5\x80\x80\x80"}',
    b'{"a":"\x80"}', b'{"a":"\xe2\x82"}', b'{"a":"\xff"}', b'{"a":1}}', b'{"a":1}x',
    b'{"a":1}{}', b'{"a":[}', b'{"a":{]}', b'{"a":[1}', b'{]', b'\xef\xbb\xbf{}', b'{"a"::1}',
    b'{"a":1,,"b":2}', b'{"a":1 "b":2}', b'{"a":"b"c}', b'{"a":truefalse}', b'{"a":- 1}',
]


def main():
    rng = random.Random(20261129)
    valid, invalid = [], []
    for doc in HAND_VALID:
        assert python_accepts(doc) and within_limits(doc), doc
        valid.append(doc)
    for doc in HAND_INVALID:
        assert not python_accepts(doc), doc
        invalid.append(doc)
    seen = set(valid) | set(invalid)
    while len(valid) < 260:
        obj = {rand_str(rng, 5): rand_value(rng, 1) for _ in range(rng.randint(0, 5))}
        doc = dump(rng, obj)
        if doc in seen or not within_limits(doc) or len(doc) > 600:
            continue
        assert python_accepts(doc), doc
        seen.add(doc)
        valid.append(doc)
    alphabet = b'{}[]:,"\\ 0123456789-+.eEtfnrulsa\x00\x01\x1f\x7f\x80\xbf\xc0\xc3\xe0\xed\xf0\xf4\xff\n'
    base = valid[:]
    while len(invalid) < 600:
        doc = bytearray(rng.choice(base))
        i = rng.randrange(len(doc) + 1)
        k = rng.randrange(3)
        if k == 0 and i < len(doc):
            del doc[i]
        elif k == 1:
            doc.insert(i, rng.choice(alphabet))
        elif i < len(doc):
            doc[i] = rng.choice(alphabet)
        doc = bytes(doc)
        if doc in seen or not doc or python_accepts(doc):
            continue
        seen.add(doc)
        invalid.append(doc)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "tests/oracle/gen_json_grammar_fixtures.py",
                   "judge": "Python json.loads (strict UTF-8, no NaN/Infinity) + isinstance dict",
                   "valid_hex": [d.hex() for d in valid],
                   "invalid_hex": [d.hex() for d in invalid]}, f, indent=0)
        f.write("\n")
    print(f"{OUT}: {len(valid)} valid, {len(invalid)} invalid")


if __name__ == "__main__":
    main()
