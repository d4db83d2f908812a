#!/usr/bin/env python3
"""Generates tests/fixtures/json_schema/cases.json: JSON Schemas and documents judged by the
`jsonschema` package, for tests/engine/test_json_schema.c (the structured-output recogniser,
engine/json_grammar.c).

For each schema (all inside the subset quiver compiles, docs/http-api.md#structured-output):
- valid: documents generated from the schema (random values, optional properties left out at
  random, random whitespace between tokens), each written as bytes and judged;
- invalid: mutations of them: one byte deleted, inserted or replaced, and value-level changes
  (a required property dropped, an undeclared property added, a value of the wrong type, one
  array item too many or too few, a string too long or too short), written out and judged.

The judge (`accepts`) says whether quiver must accept a text as a whole document:
1. the bytes are strict UTF-8 and strict JSON (json.loads, no NaN or Infinity), with no
   whitespace before or after the value and runs of at most 32 whitespace bytes (quiver's
   documented whitespace rule, as for JSON mode);
2. jsonschema.Draft202012Validator says the value is valid, with numbers that have a fraction
   or exponent read as Decimal, so that `1.0` is not an integer (quiver's documented rule:
   integers are written without fraction or exponent);
3. quiver's documented rules: enum and const values are written compactly (numbers as
   Python writes them); objects with declared properties: their keys appear in the
   schema's order, at most once, and only declared keys (checked by walking the document
   with the schema, below); in other objects a key may repeat, and each of its values must be
   valid (json.loads would keep only the last), and a map's minProperties / maxProperties
   count every member (jsonschema counts distinct keys);
4. patterns follow ECMA-262, whose \\d and \\w are ASCII: re.search with re.ASCII must match too;
   and a string under a pattern or an enforced format is written plainly: no printable ASCII
   character (U+0020..U+007E) as a \\u escape, no \\/ (quiver's documented rule);
5. quiver's documented type inference: a schema without type whose keywords belong to one
   type (properties -> object, items or prefixItems -> array, minLength -> string, minimum or
   multipleOf -> number) takes only that type; numbers under bounds or multipleOf are written
   without an exponent, and multiples are below 2^31 in magnitude;
6. `format`: jsonschema's FormatChecker (date, date-time and time through rfc3339-validator,
   uuid, ipv4, ipv6, uri through rfc3986-validator, hostname through fqdn) with quiver's
   documented deviations: year 0000 and 29 February of any year pass, a date-time, time, uri
   or hostname never ends with a newline (the validators' `$` allows one), a uuid is in the
   8-4-4-4-12 form, an email is local@domain in the plain form of docs/http-api.md (jsonschema
   only wants an "@"), a hostname is ASCII (Python's \\d and case folding take some other
   characters) of at most 253 characters, a duration is in whole numbers of at most 6 digits
   with its components in order (years, months, days, then T and hours, minutes, seconds; or
   weeks alone: isoduration also takes fractions, signs and longer numbers); other formats are
   not checked.
Every document whose verdict is "valid" is checked to be valid under (2) and (3) before it is
kept, and every "invalid" one to fail at least one of the five.

Needs the jsonschema, rfc3339-validator, rfc3986-validator, fqdn and isoduration packages
(tests/server/requirements.txt).
Deterministic (fixed seed).
Run: .venv-test/bin/python tests/oracle/gen_json_schema_fixtures.py
"""
import decimal
import json
import os
import random
import re

import zlib

import jsonschema
import rfc3339_validator  # noqa: F401 - jsonschema checks date-time and time only with it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "json_schema", "cases.json")

WS = " \t\n\r"
# characters of generated strings: ASCII, escapes, 2-, 3- and 4-byte UTF-8 (raw, never as
# \\u escapes: a surrogate pair would count as two characters in quiver, one in Python)
CHARS = "abcXYZ09 _-./:\\\"'\t\n\u00e9\u00df\u0416\u4e2d\u20ac\U0001f600"

SCHEMAS = [
    # an object with required and optional properties of every scalar kind
    {"type": "object",
     "properties": {
         "name": {"type": "string", "minLength": 1, "maxLength": 8},
         "age": {"type": "integer"},
         "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
         "active": {"type": "boolean"},
         "score": {"type": "number"},
         "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
     "required": ["name", "age"]},
    # recursion through $ref, pydantic style $defs
    {"$defs": {"Node": {"type": "object",
                        "properties": {"value": {"type": "integer"},
                                       "children": {"type": "array",
                                                    "items": {"$ref": "#/$defs/Node"},
                                                    "maxItems": 2}},
                        "required": ["value", "children"]}},
     "$ref": "#/$defs/Node"},
    # enum of scalars, values that are prefixes of others
    {"enum": ["red", "green", "gr", 1, 12, -3, True, None]},
    # a map: free keys, integer values
    {"type": "object", "additionalProperties": {"type": "integer"}},
    # an array of closed objects
    {"type": "array", "minItems": 1, "maxItems": 3,
     "items": {"type": "object", "additionalProperties": False,
               "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
               "required": ["x", "y"]}},
    # a list of types with a string length limit
    {"type": ["string", "integer", "null"], "maxLength": 3},
    # any value; any object
    {},
    {"type": "object"},
    # string lengths with multi-byte characters
    {"type": "string", "minLength": 2, "maxLength": 4},
    # anyOf told apart by the first byte; const
    {"anyOf": [{"type": "object", "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}},
                "required": ["kind"]},
               {"type": "array", "items": {"type": "integer"}},
               {"type": "string", "maxLength": 5}]},
    # only optional properties: any subset, in order
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"},
                                      "c": {"type": "string", "maxLength": 2}}},
    # property names that need escapes or are not ASCII
    {"type": "object",
     "properties": {"q\"k": {"type": "integer"}, "\u00e9": {"type": "boolean"},
                    "a/b": {"type": "null"}, "t\tb": {"type": "string", "maxLength": 1}},
     "required": ["q\"k", "a/b"]},
    # numeric bounds: inclusive and exclusive, integers and numbers, negative ranges
    {"type": "object",
     "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                    "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 120},
                    "p": {"type": "number", "minimum": 0, "maximum": 1},
                    "pos": {"type": "number", "exclusiveMinimum": 0},
                    "neg": {"type": "number", "minimum": -10, "exclusiveMaximum": -2},
                    "low": {"type": "integer", "minimum": -3},
                    "half": {"type": "integer", "minimum": 1.5, "exclusiveMaximum": 9},
                    "both": {"type": "number", "minimum": 0, "exclusiveMinimum": -5,
                             "maximum": 3, "exclusiveMaximum": 3}},
     "required": ["stars", "count", "p", "pos", "neg", "low", "half", "both"]},
    {"type": "array", "items": {"type": "integer", "minimum": -20, "maximum": -7}, "maxItems": 4},
    {"minimum": 0, "maximum": 0},
    # multipleOf: whole steps with and without bounds, negative ranges, numbers too
    {"type": "object",
     "properties": {"five": {"type": "integer", "multipleOf": 5},
                    "dozen": {"type": "integer", "multipleOf": 12, "minimum": -30,
                              "exclusiveMaximum": 48},
                    "even": {"type": "number", "multipleOf": 2, "exclusiveMinimum": 3,
                             "maximum": 11},
                    "big": {"type": "integer", "multipleOf": 1000003, "minimum": 1},
                    "whole": {"type": "number", "multipleOf": 1}},
     "required": ["five", "dozen", "even", "big", "whole"]},
    {"type": "array", "items": {"multipleOf": 7, "maximum": 100}, "maxItems": 4},
    # patterns (ECMA-262 syntax; the examples, an annotation, seed the generator)
    {"type": "object",
     "properties": {
         "date": {"type": "string", "pattern": "^\\d{4}-\\d{2}-\\d{2}$",
                  "examples": ["2026-11-29", "1999-01-01"]},
         "city": {"type": "string", "pattern": "^[A-Z][a-z]+( [A-Z][a-z]+)*$",
                  "examples": ["Paris", "New York", "Rio De Janeiro"]},
         "inside": {"type": "string", "pattern": "ab+c", "examples": ["xxabbbcyy", "abc", "zabc"]},
         "color": {"type": "string", "pattern": "^(red|gr(een|ay))?$",
                   "examples": ["", "red", "green", "gray"]},
         "mail": {"type": "string", "pattern": "^[^@\\s]+@[^@\\s]+\\.[a-z]{2,6}$",
                  "examples": ["bob@example.com", "a.b@c.io"]},
         "file": {"type": "string", "pattern": "\\.json$", "maxLength": 12,
                  "examples": ["a.json", "x/y.json"]},
         "accent": {"type": "string", "pattern": "^\\u00e9+\\w*.$",
                    "examples": ["\u00e9\u00e9", "\u00e9abc!", "\u00e9_\u4e2d"]},
         "lines": {"type": "string", "pattern": "^a\\nb{1,3}$", "examples": ["a\nb", "a\nbbb"]}},
     "required": ["date", "city", "inside", "color", "mail", "file", "accent", "lines"]},
    # discriminated unions: objects told apart by their first property's const or enum (tool
    # calls; tag values that are prefixes of one another), beside null
    {"type": "array", "minItems": 1, "maxItems": 3, "items": {"anyOf": [
        {"type": "object",
         "properties": {"name": {"const": "get_weather"},
                        "arguments": {"type": "object",
                                      "properties": {"city": {"type": "string", "maxLength": 6},
                                                     "unit": {"enum": ["c", "f"]}},
                                      "required": ["city"]}},
         "required": ["name", "arguments"]},
        {"type": "object",
         "properties": {"name": {"const": "get_time"},
                        "arguments": {"type": "object",
                                      "properties": {"tz": {"type": "integer", "minimum": -12,
                                                            "maximum": 14}}}},
         "required": ["name", "arguments"]},
        {"type": "object",
         "properties": {"name": {"enum": ["get", "get_all"]},
                        "arguments": {"type": "object",
                                      "additionalProperties": {"type": "boolean"}}},
         "required": ["name"]},
        {"type": "null"}]}},
    # pydantic's discriminated union: oneOf of $refs with the (ignored) OpenAPI discriminator
    {"type": "object",
     "properties": {"pet": {"oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
                            "discriminator": {"propertyName": "kind",
                                              "mapping": {"cat": "#/$defs/Cat",
                                                          "dog": "#/$defs/Dog"}}}},
     "required": ["pet"],
     "$defs": {"Cat": {"type": "object",
                       "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
                       "required": ["kind", "lives"]},
               "Dog": {"type": "object",
                       "properties": {"kind": {"const": "dog"},
                                      "good": {"type": "boolean"}},
                       "required": ["kind"]}}},
    # type inferred from keywords; allOf with one member; items: false
    {"properties": {"p": {"allOf": [{"minLength": 1, "maxLength": 2}]},
                    "e": {"type": "array", "items": False}},
     "required": ["p", "e"]},
    # formats quiver enforces; the examples seed the generator
    {"type": "object",
     "properties": {
         "day": {"type": "string", "format": "date",
                 "examples": ["2026-11-29", "2024-02-29", "1999-12-31", "0001-01-01"]},
         "at": {"type": "string", "format": "date-time",
                "examples": ["2026-11-29T22:30:00Z", "1999-01-31t00:00:00.123456+05:30",
                             "2020-06-30T23:59:59-08:00", "2024-02-29T12:00:00.5z"]},
         "clock": {"type": "string", "format": "time",
                   "examples": ["00:00:00Z", "23:59:59.999+14:00", "12:30:05-00:00"]},
         "id": {"type": "string", "format": "uuid",
                "examples": ["123e4567-e89b-12d3-a456-426614174000",
                             "00000000-0000-0000-0000-00000000000F"]},
         "ip": {"type": "string", "format": "ipv4",
                "examples": ["192.168.0.1", "0.0.0.0", "255.255.255.255", "10.20.250.199"]},
         "mail": {"type": "string", "format": "email",
                  "examples": ["bob@example.com", "a.b+c_d%e-f@sub-1.example.co", "x@y.z"]},
         "site": {"type": "string", "format": "uri",
                  "examples": ["https://example.com/a?b=c", "mailto:bob@example.com",
                               "urn:isbn:0451450523", "http://u:p@[::1]:8080/x/%20y/#top",
                               "ftp://1.2.3.4/", "x:"]},
         "when": {"anyOf": [{"type": "string", "format": "date", "examples": ["2001-09-11"]},
                            {"type": "null"}]}},
     "required": ["day", "at", "clock", "id", "ip", "mail"]},
    # tuples (prefixItems): pydantic's tuple[int, str, Literal["a", "b"]] and a prefix followed by
    # more items of another schema, at most five in all
    {"type": "object",
     "properties": {
         "fixed": {"type": "array", "minItems": 3, "maxItems": 3,
                   "prefixItems": [{"type": "integer"}, {"type": "string", "maxLength": 3},
                                   {"enum": ["a", "b"]}]},
         "open": {"type": "array", "minItems": 1, "maxItems": 5,
                  "prefixItems": [{"type": "boolean"}, {"type": "string", "format": "date",
                                                        "examples": ["2026-11-29"]}],
                  "items": {"type": "integer", "minimum": 0, "maximum": 9}},
         "closed": {"prefixItems": [{"type": "null"}, {"type": "number"}], "items": False}},
     "required": ["fixed", "open"]},
    # minProperties / maxProperties: counted in maps; in objects with declared properties only
    # where they always hold (the minimum within the required ones, the maximum above all)
    {"type": "object",
     "properties": {
         "scores": {"type": "object", "additionalProperties": {"type": "integer"},
                    "minProperties": 1, "maxProperties": 3},
         "tags": {"additionalProperties": {"type": "boolean"}, "maxProperties": 1},
         "point": {"type": "object", "properties": {"x": {"type": "number"},
                                                    "y": {"type": "number"}},
                   "required": ["x"], "minProperties": 1, "maxProperties": 2}},
     "required": ["scores", "point"]},
    # patterns over 62 characters once counts are expanded, and one whose automaton must track
    # the last 7 characters (2^7 subsets): quiver's DFA, not a 64-bit set of positions
    {"type": "object",
     "properties": {
         "sha": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                 "examples": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]},
         "words": {"type": "string", "pattern": "^(\\w+ ){2,40}\\w+$", "maxLength": 70,
                   "examples": ["a b c", "the quick brown fox jumps over the lazy dog"]},
         "tail": {"type": "string", "pattern": "(a|b)*a(a|b){6}$",
                  "examples": ["zabbbbbb", "ababababa", "xyz ab aaaaaaa"]},
         "line": {"type": "string", "pattern": "^[^\\n]{70,90}$",
                  "examples": ["x" * 70, "Lorem ipsum dolor sit amet, consectetur adipiscing "
                               "elit, sed do eiusmod tempor"]},
         "v6": {"type": "string", "format": "ipv6",
                "examples": ["2001:db8::8a2e:370:7334", "::", "::1", "fe80::1:2:3:4:5",
                             "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::ffff:192.168.1.1",
                             "1:2:3:4:5:6:10.0.0.255", "1::2:3.4.5.6", "ABCD:EF01::0000"]}},
     "required": ["sha", "words", "tail", "line", "v6"]},
    # IPv6 alone, many forms (Python's ipaddress judges, through jsonschema)
    {"type": "string", "format": "ipv6",
     "examples": ["::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                  "1::8", "1:2::7:8", "1:2:3::6:7:8", "1:2:3:4::7:8", "1:2:3:4:5::8",
                  "1::3:4:5:6:7:8", "fe80::abcd:ef01:2345:6789", "FFFF:ffff::0", "0000:0:00::000",
                  "::1.2.3.4", "::ffff:255.255.255.255", "1:2:3:4:5:6:1.2.3.4",
                  "1:2:3:4:5::1.2.3.4", "1::5:6:0.0.0.0", "2001:db8:85a3::8a2e:370:7334"]},
    # URIs alone, many forms (rfc3986-validator judges, through jsonschema), pydantic's HttpUrl
    # bounds
    {"type": "string", "format": "uri", "minLength": 1, "maxLength": 60,
     "examples": ["https://example.com", "http://a.b/c/d.html?x=1&y=%C3%A9#frag", "x:", "a+b.c-d:/",
                  "file:///etc/hosts", "mailto:Bob@Example.com", "urn:uuid:123e4567-e89b-12d3",
                  "http://[2001:db8::1]:8080/", "http://[v7.a:b]/", "ssh://git@host:22/r.git",
                  "tel:+1-201-555-0123", "data:,Hello%2C%20World", "http://h/p?q=/?#/?",
                  "news:comp.lang.c", "http://!$&'()*+,;=@h/"]},
    # hostnames (RFC 1123 labels as the fqdn package checks them, through jsonschema)
    {"type": "object",
     "properties": {
         "host": {"type": "string", "format": "hostname",
                  "examples": ["localhost", "example.com", "a-b.c-d.e", "EXAMPLE.org.", "x1.2y",
                               "a" * 63 + ".com", "123.456", "xn--bcher-kva.example"]},
         "short": {"type": "string", "format": "hostname", "maxLength": 12,
                   "examples": ["a.b", "host-1", "q"]}},
     "required": ["host", "short"]},
    # untagged unions of objects told apart by the first key written (pydantic's Union[Cat,
    # Dog] without a discriminator): "name" in both, but neither begins with it; beside null
    {"anyOf": [{"type": "object", "properties": {"meows": {"type": "integer", "minimum": 0,
                                                           "maximum": 9},
                                                 "name": {"type": "string", "maxLength": 5}},
                "required": ["meows", "name"]},
               {"type": "object", "properties": {"barks": {"type": "boolean"},
                                                 "name": {"type": "string", "maxLength": 5}},
                "required": ["barks"]},
               {"type": "null"}]},
    # keys that are prefixes of one another, optional properties before the first required one,
    # and a member that requires nothing (the empty object); oneOf of closed objects, so that
    # jsonschema finds exactly one member too
    {"type": "array", "maxItems": 3, "items": {"oneOf": [
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
         "additionalProperties": False},
        {"type": "object", "properties": {"ab": {"type": "string", "maxLength": 3}},
         "required": ["ab"], "additionalProperties": False},
        {"type": "object", "properties": {"x": {"type": "boolean"}, "y": {"type": "null"},
                                          "z": {"type": "integer", "minimum": 0, "maximum": 5}},
         "required": ["z"], "additionalProperties": False},
        {"type": "object", "properties": {"q": {"enum": ["u", "v"]}},
         "additionalProperties": False}]}},
    # ISO 8601 durations (pydantic's timedelta fields), as isoduration checks them through
    # jsonschema
    {"type": "object",
     "properties": {
         "wait": {"type": "string", "format": "duration",
                  "examples": ["P1Y2M3DT4H5M6S", "PT36H", "P2W", "P1Y3D", "P1DT1H1S", "PT0S",
                               "P10D", "PT1M30S", "P1M", "P0Y1D", "P999999D"]},
         "short": {"type": "string", "format": "duration", "maxLength": 6,
                   "examples": ["PT5M", "P1D", "P3W", "PT1H1S"]}},
     "required": ["wait", "short"]},
]


# ---- the schema walk shared by the generator and rule 3 ----

def resolve(schema, root):
    while isinstance(schema, dict) and "$ref" in schema:
        ref = schema["$ref"]
        node = root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            node = node[part.replace("~1", "/").replace("~0", "~")]
        schema = node
    if isinstance(schema, dict) and "allOf" in schema:
        return resolve(schema["allOf"][0], root)
    return schema


def json_type(v):
    if isinstance(v, bool):
        return "boolean"
    if v is None:
        return "null"
    if isinstance(v, (int, float, decimal.Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


NO_MEMBER = {"no member": True}


def first_keys(m):
    """The properties an object may begin with in quiver's order: those up to its first required
    one."""
    keys = []
    for k in m.get("properties", {}):
        keys.append(k)
        if k in m.get("required", []):
            break
    return keys


def value_tagged(objects):
    """Whether objects (anyOf members) are told apart by the value of their first property: it
    is required, of one name in all, a string enum or const (else by the first key written)."""
    tags = set()
    for m in objects:
        props = list(m.get("properties", {}).items())
        if not props or props[0][0] not in m.get("required", []):
            return False
        values = props[0][1].get("enum", [props[0][1].get("const")])
        if not all(isinstance(v, str) for v in values):
            return False
        tags.add(props[0][0])
    return len(tags) == 1


def pick_alternative(schema, root, value):
    """The anyOf / oneOf member a value belongs to: members differ in JSON type, or are objects
    told apart by their first property's const or enum, or by the first key written (the empty
    object: a member that requires nothing), as quiver requires."""
    schema = resolve(schema, root)
    alts = schema.get("anyOf", schema.get("oneOf")) if isinstance(schema, dict) else None
    if alts is not None:
        objects = [resolve(m, root) for m in alts if resolve(m, root).get("type") == "object"]
        tagged = len(objects) > 1
        by_value = tagged and value_tagged(objects)
        for m in alts:
            m = resolve(m, root)
            props = m.get("properties")
            if tagged and isinstance(value, dict) and m.get("type") == "object":
                if not by_value:
                    first = next(iter(value), None)
                    if (first in first_keys(m)) if value else not m.get("required"):
                        return m
                    continue
                tag, tag_schema = next(iter(props.items()))
                values = tag_schema.get("enum", [tag_schema.get("const")])
                if value.get(tag) in values:
                    return m
                continue
            types = m.get("type")
            types = [types] if isinstance(types, str) else (types or [])
            if "const" in m:
                types = [json_type(m["const"])]
            t = json_type(value)
            if t in types or (t == "number" and "integer" in types):
                return m
        # an object no member may begin so: quiver refuses it
        return NO_MEMBER if tagged and not by_value and isinstance(value, dict) else None
    return schema


def order_ok(pairs_value, schema, root):
    """Rules 3 and 4 on a value parsed with object_pairs_hook=list of pairs (objects are lists of
    (key, value) tuples tagged by the Pairs class)."""
    schema = pick_alternative(schema, root, from_pairs(pairs_value))
    if schema is NO_MEMBER:
        return False
    if not isinstance(schema, dict):
        return True
    bounds = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"}
    if bounds & schema.keys() and isinstance(pairs_value, Raw) and "e" in pairs_value.raw.lower():
        return False  # quiver's documented rule: bounded numbers are written without exponent
    if "multipleOf" in schema and isinstance(pairs_value, (int, Raw)) and \
            not isinstance(pairs_value, bool) and abs(from_pairs(pairs_value)) >= 2**31:
        return False  # quiver's documented rule: multiples are below 2^31 in magnitude
    if "pattern" in schema and isinstance(pairs_value, str) and \
            not re.search(schema["pattern"], pairs_value, re.ASCII):
        return False  # ECMA-262 classes: \d \w are ASCII (Python's str patterns: Unicode)
    if ("pattern" in schema or schema.get("format") in PLAIN_FORMATS) and \
            isinstance(pairs_value, RawStr) and escapes_ascii(pairs_value.raw):
        return False  # quiver's rule: such strings are written plainly
    if "enum" in schema or "const" in schema:  # quiver's rule: values written compactly
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if canonical(pairs_value) not in [json.dumps(x, ensure_ascii=False, separators=(",", ":"))
                                          for x in values]:
            return False
    if not ({"type", "enum", "const", "anyOf", "oneOf", "$ref"} & schema.keys()):
        # quiver's documented inference: keywords of one type make an untyped schema that type
        t = json_type(from_pairs(pairs_value))
        if ({"properties", "required", "additionalProperties"} & schema.keys() and t != "object"
                or {"items", "prefixItems", "minItems", "maxItems"} & schema.keys() and t != "array"
                or {"minLength", "maxLength"} & schema.keys() and t != "string"
                or bounds & schema.keys() and t != "number"):
            return False
    if isinstance(pairs_value, Pairs) and is_map(schema) and not (
            schema.get("minProperties", 0) <= len(pairs_value) <=
            schema.get("maxProperties", len(pairs_value))):
        return False  # quiver's rule: in a map each occurrence of a key counts
    if isinstance(pairs_value, Pairs):
        props = schema.get("properties")
        closed = props is not None or schema.get("additionalProperties") is False
        if closed:
            names = list((props or {}).keys())
            pos = -1
            for k, _ in pairs_value:
                if k not in names or names.index(k) <= pos:
                    return False
                pos = names.index(k)
        keys = [k for k, _ in pairs_value]
        for k, v in pairs_value:
            if props and k in props:
                sub = props[k]
            elif isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            else:
                sub = {}
            if not order_ok(v, sub, root):
                return False
            # quiver checks every member; json.loads keeps only the last of equal keys (the
            # fixtures' maps have no $ref in their value schemas)
            if keys.count(k) > 1 and not jsonschema.Draft202012Validator(sub).is_valid(
                    from_pairs(v)):
                return False
        return True
    if isinstance(pairs_value, list):
        items = schema.get("items", {})
        prefix = schema.get("prefixItems", [])
        return all(order_ok(v, prefix[i] if i < len(prefix) else
                            items if isinstance(items, dict) else {}, root)
                   for i, v in enumerate(pairs_value))
    return True


class Pairs(list):
    pass


class Raw(decimal.Decimal):
    """A number with a fraction or exponent, as written (json's parse_float)."""

    def __new__(cls, text):
        d = super().__new__(cls, text)
        d.raw = text
        return d


class RawStr(str):
    """A string that remembers its JSON text."""

    def __new__(cls, value, raw):
        s = super().__new__(cls, value)
        s.raw = raw
        return s


def pairs_decoder():
    """json.loads with objects as Pairs, floats as Raw and strings as RawStr."""
    dec = json.JSONDecoder(parse_float=Raw, parse_constant=_no_const,
                           object_pairs_hook=lambda p: Pairs(p))

    def parse_string(text, end, strict):
        value, after = json.decoder.scanstring(text, end, strict)
        return RawStr(value, text[end - 1:after]), after

    dec.parse_string = parse_string
    dec.scan_once = json.scanner.py_make_scanner(dec)
    return dec


def _no_const(name):
    raise ValueError(name)


PLAIN_FORMATS = ("date", "date-time", "time", "uuid", "ipv4", "ipv6", "email", "uri", "hostname",
                 "duration")


def escapes_ascii(raw):
    """Whether the JSON text of a string writes a printable ASCII character as an escape
    (\\/ or \\u0020..\\u007e; \\" and \\\\ are the plain forms of " and \\)."""
    for m in re.finditer(r"\\(u[0-9a-fA-F]{4}|.)", raw):
        e = m.group(1)
        if e == "/" or (len(e) == 5 and 0x20 <= int(e[1:], 16) <= 0x7E):
            return True
    return False


def canonical(v):
    """The compact text of a parsed value, numbers and strings as written."""
    if isinstance(v, (Raw, RawStr)):
        return v.raw
    if isinstance(v, Pairs):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + canonical(x)
                              for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ",".join(canonical(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def from_pairs(v):
    if isinstance(v, Pairs):
        return {k: from_pairs(x) for k, x in v}
    if isinstance(v, list):
        return [from_pairs(x) for x in v]
    return v


# ---- the judge ----

FORMATS = jsonschema.Draft202012Validator.FORMAT_CHECKER
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+", re.ASCII)
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DUR_TIME = r"T(?:NH(?:NM)?(?:NS)?|NM(?:NS)?|NS)"
DURATION = re.compile((r"P(?:(?:NY(?:NM)?(?:ND)?|NM(?:ND)?|ND)(?:" + _DUR_TIME + r")?|" +
                       _DUR_TIME + r"|NW)").replace("N", r"\d{1,6}"), re.ASCII)


def lenient_date(s):
    """quiver's documented deviations from RFC 3339 dates: year 0000 and 29 February of any
    year pass (the pattern cannot count leap years)."""
    if s[:4] == "0000":
        s = "2000" + s[4:]
    return s[:4] + "-02-28" + s[10:] if s[4:10] == "-02-29" else s


def with_format(name, check):
    base = FORMATS.checkers[name][0]
    FORMATS.checkers[name] = (lambda v: not isinstance(v, str) or check(v, base), ValueError)


with_format("date", lambda v, base: base(lenient_date(v)))
with_format("date-time", lambda v, base: not v.endswith("\n") and base(lenient_date(v)))
with_format("time", lambda v, base: not v.endswith("\n") and base(v))
with_format("uuid", lambda v, base: bool(UUID.fullmatch(v)) and base(v))
with_format("email", lambda v, base: bool(EMAIL.fullmatch(v)))
with_format("uri", lambda v, base: not v.endswith("\n") and base(v))
with_format("hostname", lambda v, base: v.isascii() and len(v) <= 253 and not v.endswith("\n")
            and base(v))
with_format("duration", lambda v, base: bool(DURATION.fullmatch(v)) and base(v))
for unchecked in [f for f in FORMATS.checkers if f not in ("date", "date-time", "time", "uuid",
                                                            "ipv4", "ipv6", "email", "uri",
                                                            "hostname", "duration", "regex")]:
    del FORMATS.checkers[unchecked]

def is_map(schema):
    return isinstance(schema, dict) and isinstance(schema.get("additionalProperties"), dict) \
        and not schema.get("properties")


def without_map_counts(schema):
    """The schema without the minProperties / maxProperties of maps, which rule 3 checks by
    counting members (a key may repeat in a map, and each occurrence counts)."""
    if isinstance(schema, dict):
        return {k: without_map_counts(v) for k, v in schema.items()
                if not (is_map(schema) and k in ("minProperties", "maxProperties"))}
    if isinstance(schema, list):
        return [without_map_counts(v) for v in schema]
    return schema


def accepts(doc: bytes, schema) -> bool:
    try:
        text = doc.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        return False
    if not text or text[0] in WS or text[-1] in WS:
        return False
    run = 0
    in_str = esc = False
    for ch in text:  # whitespace runs between tokens (not inside strings)
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        if ch in WS:
            run += 1
            if run > 32:
                return False
        else:
            run = 0

    def no_const(name):
        raise ValueError(name)

    try:
        value = json.loads(text, parse_float=decimal.Decimal, parse_constant=no_const)
        pairs = pairs_decoder().decode(text)
    except ValueError:
        return False
    with decimal.localcontext() as dc:  # multipleOf divides: exact on long numbers too
        dc.prec = 4000
        try:
            if not jsonschema.Draft202012Validator(without_map_counts(schema),
                                                   format_checker=FORMATS).is_valid(value):
                return False
        except decimal.InvalidOperation:  # a huge exponent under multipleOf: refused (rule 5)
            return False
    return order_ok(pairs, schema, schema)


# ---- generating documents ----

def gen_string(rng, lo=0, hi=None, chars=CHARS):
    hi = lo + 6 if hi is None else min(hi, lo + 6)
    return "".join(rng.choice(chars) for _ in range(rng.randint(lo, hi)))


def gen_value(schema, root, rng, depth=0):
    schema = resolve(schema, root)
    if schema is True or schema == {}:
        return gen_free(rng, depth)
    if "anyOf" in schema or "oneOf" in schema:
        return gen_value(rng.choice(schema.get("anyOf", schema.get("oneOf"))), root, rng, depth)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    types = schema.get("type")
    if types is None:
        types = ["object"] if "properties" in schema or "additionalProperties" in schema else (
            ["array"] if "items" in schema or "prefixItems" in schema else
            ["string"] if "minLength" in schema or "maxLength" in schema else [])
        if not types and ({"minimum", "maximum", "multipleOf"} & schema.keys()):
            types = ["number"]
        if not types:
            return gen_free(rng, depth)
    types = [types] if isinstance(types, str) else types
    t = rng.choice(types)
    if t == "object":
        if "properties" in schema or schema.get("additionalProperties") is False:
            out = Pairs()
            req = schema.get("required", [])
            for k, sub in schema.get("properties", {}).items():
                if k in req or rng.random() < 0.6:
                    out.append((k, gen_value(sub, root, rng, depth + 1)))
            return out
        if isinstance(schema.get("additionalProperties"), dict) and not (
                {"minProperties", "maxProperties"} & schema.keys()):
            return Pairs((gen_string(rng, 0, 4), gen_value(schema["additionalProperties"], root,
                                                            rng, depth + 1))
                         for _ in range(rng.randint(0, 3)))
        if isinstance(schema.get("additionalProperties"), dict):
            lo = schema.get("minProperties", 0)
            hi = min(schema.get("maxProperties", lo + 3), lo + 3)
            out, keys = Pairs(), set()
            for _ in range(rng.randint(lo, hi)):
                k = gen_string(rng, 1, 4)
                while k in keys:  # distinct keys: jsonschema counts them once
                    k += "x"
                keys.add(k)
                out.append((k, gen_value(schema["additionalProperties"], root, rng, depth + 1)))
            return out
        return gen_free(rng, depth, "object")
    if t == "array":
        lo, hi = schema.get("minItems", 0), schema.get("maxItems", 4)
        if depth > 3:
            hi = lo
        items = schema.get("items", {})
        prefix = schema.get("prefixItems", [])
        if items is False and not prefix:
            return []
        if items is False:
            hi = min(hi, len(prefix))
        n = rng.randint(lo, min(hi, lo + 3))
        return [gen_value(prefix[i] if i < len(prefix) else items, root, rng, depth + 1)
                for i in range(n)]
    if t == "string" and ("pattern" in schema or "format" in schema):
        return rng.choice(schema["examples"])
    if t == "string":
        return gen_string(rng, schema.get("minLength", 0), schema.get("maxLength"))
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    if "maximum" in schema and "exclusiveMaximum" in schema:
        hi = min(schema["maximum"], schema["exclusiveMaximum"])
    if "minimum" in schema and "exclusiveMinimum" in schema:
        lo = max(schema["minimum"], schema["exclusiveMinimum"])
    if "multipleOf" in schema and t in ("integer", "number"):
        k = schema["multipleOf"]
        a = -(2**31 - 1) if lo is None else lo + (1 if "exclusiveMinimum" in schema and
                                                      lo == schema["exclusiveMinimum"] else 0)
        b = 2**31 - 1 if hi is None else hi - (1 if "exclusiveMaximum" in schema and
                                                   hi == schema["exclusiveMaximum"] else 0)
        qa, qb = -((-a) // k), b // k  # the multiples k*qa .. k*qb lie in [a, b]
        v = k * rng.choice([qa, qb, rng.randint(qa, qb), rng.randint(max(qa, -3), min(qb, 3))])
        return float(v) if t == "number" and rng.random() < 0.3 else v
    if t == "integer" and (lo is not None or hi is not None):
        a = -10**6 if lo is None else int(lo) + (1 if "exclusiveMinimum" in schema or lo != int(lo) else 0)
        b = 10**6 if hi is None else int(hi) - (1 if "exclusiveMaximum" in schema else 0)
        return rng.choice([a, b, rng.randint(a, b)])
    if t == "number" and (lo is not None or hi is not None):
        a = -1e4 if lo is None else lo
        b = 1e4 if hi is None else hi
        v = rng.choice([a, b, round(rng.uniform(a, b), 3), round(rng.uniform(a, b), 1)])
        if ("exclusiveMinimum" in schema and v <= a) or ("exclusiveMaximum" in schema and v >= b):
            v = round((a + b) / 2, 3)
        return float(v) if rng.random() < 0.5 else v
    if t == "integer":
        return rng.choice([0, 7, -12, 123456789, rng.randint(-10**12, 10**12)])
    if t == "number":
        return rng.choice([0, -1, 2.5, 1e-7, -3.25e10, rng.uniform(-100, 100)])
    if t == "boolean":
        return rng.random() < 0.5
    return None


def gen_free(rng, depth, kind=None):
    k = kind or rng.choice(["object", "array", "string", "number", "bool", "null"])
    if depth > 3 and k in ("object", "array"):
        k = "string"
    if k == "object":
        return Pairs((gen_string(rng, 0, 3), gen_free(rng, depth + 1)) for _ in range(rng.randint(0, 3)))
    if k == "array":
        return [gen_free(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if k == "string":
        return gen_string(rng)
    if k == "number":
        return rng.choice([3, -0.5, 1e21, 42])
    return rng.random() < 0.5 if k == "bool" else None


def ws(rng):
    return "".join(rng.choice(WS) for _ in range(rng.choice([0, 0, 0, 1, 2, 4])))


def dump_scalar(v, escape=False):
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, float):
        return repr(v) if v == v else "0"
    if escape and isinstance(v, str) and v and zlib.crc32(v.encode()) % 4 == 0:
        # in mutated documents one string in four (chosen by its text, not by rng, so that the
        # rest stays as it was) has one character written as a \u escape
        i = zlib.crc32(v.encode()[::-1]) % len(v)
        return json.dumps(v[:i], ensure_ascii=False)[:-1] + "\\u%04x" % ord(v[i]) + \
            json.dumps(v[i + 1:], ensure_ascii=False)[1:] if ord(v[i]) < 0x10000 else \
            json.dumps(v, ensure_ascii=False)
    return json.dumps(v, ensure_ascii=False)


def write(v, rng, top=True, escape=False):
    """Compact JSON with random whitespace between tokens (none around the whole value);
    escape: some strings with a character as a \\u escape."""
    w = (lambda: ws(rng))
    if isinstance(v, Pairs):
        parts = [w() + json.dumps(k, ensure_ascii=False) + w() + ":" + w() +
                 write(x, rng, False, escape) + w() for k, x in v]
        s = "{" + ",".join(parts) + "}" if parts else "{" + w() + "}"
    elif isinstance(v, list):
        parts = [w() + write(x, rng, False, escape) + w() for x in v]
        s = "[" + ",".join(parts) + "]" if parts else "[" + w() + "]"
    else:
        s = dump_scalar(v, escape)
    return s


# ---- mutations ----

INSERT = b'{}[]",:-.0123456789aetfnrul \n\\/\xc3\xa9\xff'


def byte_mutation(doc: bytes, rng) -> bytes:
    i = rng.randrange(len(doc) + 1)
    k = rng.randrange(3)
    if k == 0 and doc:
        i = min(i, len(doc) - 1)
        return doc[:i] + doc[i + 1:]
    c = bytes([rng.choice(INSERT)])
    if k == 1 or not doc:
        return doc[:i] + c + doc[i:]
    i = min(i, len(doc) - 1)
    return doc[:i] + c + doc[i + 1:]


def value_mutation(v, schema, root, rng):
    """A changed copy of the value (maybe still valid; the judge decides)."""
    s = pick_alternative(schema, root, from_pairs(v))
    s = s if isinstance(s, dict) else {}
    if isinstance(v, Pairs) and v and rng.random() < 0.5:
        i = rng.randrange(len(v))
        k, x = v[i]
        props = s.get("properties", {})
        sub = props.get(k, s.get("additionalProperties", {}))
        out = Pairs(v)
        out[i] = (k, value_mutation(x, sub if isinstance(sub, dict) else {}, root, rng))
        return out
    if isinstance(v, Pairs):
        out = Pairs(v)
        r = rng.randrange(3)
        if r == 0 and out:
            del out[rng.randrange(len(out))]
        elif r == 1:
            out.insert(rng.randrange(len(out) + 1), ("zz", 1))
        elif len(out) > 1:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
        return out
    if isinstance(v, list):
        r = rng.randrange(3)
        if r == 0 and v:
            return v[:-1]
        if r == 1:
            return v + [v[0] if v else 1]
        if v:
            i = rng.randrange(len(v))
            items = s.get("items", {})
            prefix = s.get("prefixItems", [])
            sub = prefix[i] if i < len(prefix) else items if isinstance(items, dict) else {}
            return v[:i] + [value_mutation(v[i], sub, root, rng)] + v[i + 1:]
        return v
    if isinstance(v, str):
        return rng.choice([v + "xy", v[:-1], 5, None])
    if isinstance(v, bool) or v is None:
        return rng.choice(["true", 0, not v if isinstance(v, bool) else False])
    return rng.choice([str(v), True, v + 0.5, [v], v + 1, v - 1, -v, v * 10, 0, 0.0001, 0.0,
                       -0.5, float(v), decimal.Decimal("1E+0"), decimal.Decimal("25E-1"),
                       decimal.Decimal("-0.0"), decimal.Decimal("3.000"), -3.0, -2.0, -10.0])


def main():
    rng = random.Random(20261129)
    cases = []
    for schema in SCHEMAS:
        valid, invalid = set(), set()
        tries = 0
        while len(valid) < 40 and tries < 2000:
            tries += 1
            doc = write(gen_value(schema, schema, rng), rng).encode()
            if accepts(doc, schema):
                valid.add(doc)
            else:
                raise SystemExit(f"generated an invalid document {doc!r} for {schema}")
        base = sorted(valid)
        for _ in range(400):
            d = rng.choice(base)
            if rng.random() < 0.6:
                m = byte_mutation(d, rng)
            else:
                pv = json.loads(d, object_pairs_hook=lambda p: Pairs(p), parse_float=float)
                mv = value_mutation(pv, schema, schema, rng)
                m = write(mv, rng, escape=True).encode()
            (valid if accepts(m, schema) else invalid).add(m)
        invalid.discard(b"")
        cases.append({"schema": schema,
                      "valid_hex": [d.hex() for d in sorted(valid)],
                      "invalid_hex": [d.hex() for d in sorted(invalid)]})
        print(f"{json.dumps(schema)[:60]}: {len(valid)} valid, {len(invalid)} invalid")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "tests/oracle/gen_json_schema_fixtures.py",
                   "judge": "jsonschema Draft 2020-12 (Decimal non-integers) + strict JSON + "
                            "quiver's whitespace and property-order rules",
                   "jsonschema": __import__("importlib.metadata").metadata.version("jsonschema"),
                   "cases": cases}, f, indent=0, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    main()
