#!/usr/bin/env python3
"""Generates tests/fixtures/json_schema/regex_docs.json: guided_regex documents (raw text whose
characters must match a pattern as a whole) judged by Python's `re.fullmatch`, for
tests/engine/test_json_schema.c (qv_json_schema_compile_regex, engine/json_grammar.c).

For each pattern (inside quiver's dialect, engine/json_regex.h, and written so that Python's
and ECMA-262's readings agree: no `.`, ASCII classes with re.ASCII), texts are:
- the hand-written examples;
- mutations of them: one character deleted, inserted or replaced (ASCII, 2-, 3- and 4-byte
  UTF-8 characters), seeded;
each with `match`: re.fullmatch(pattern, text, re.ASCII) is not None.

Only the standard library is needed. Deterministic (fixed seed).
Run: python3 tests/oracle/gen_regex_doc_fixtures.py
"""
import json
import os
import random
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "json_schema", "regex_docs.json")

PATTERNS = [
    (r"\d{3}-\d{3}-\d{4}", ["555-123-4567", "000-000-0000"]),
    (r"(yes|no|maybe)", ["yes", "no", "maybe"]),
    (r"^[A-Z][a-z]+ [A-Z][a-z]+$", ["Ada Lovelace", "Alan Turing"]),
    (r"[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}", ["ada@example.com",
                                                             "a.b+c@mail.co.uk"]),
    (r"-?(0|[1-9]\d*)(\.\d+)?", ["0", "-12.50", "3.14159", "42"]),
    (r"Paris|Londres|Zürich|東京", ["Paris", "Zürich", "東京", "Londres"]),
    (r"a*b?", ["", "aaa", "ab", "b"]),
    (r"cost: \d+\$", ["cost: 12$", "cost: 0$"]),
    (r"😀+( [😀🦙])?", ["😀", "😀😀 🦙"]),
    (r"[^\n,]{1,8}(,[^\n,]{1,8}){0,2}\n?", ["a,b,c\n", "été,hiver", "x"]),
    (r"\[(\d+(, \d+)*)?\]", ["[]", "[1, 22, 333]"]),
    (r"(?:[01]\d|2[0-3]):[0-5]\d", ["09:30", "23:59", "00:00"]),
    # over 62 characters once counts are expanded, and automata of many subsets
    (r"[0-9a-f]{64}", ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]),
    (r"[A-Za-z]{3,200}", ["abc", "x" * 200, "Supercalifragilisticexpialidocious"]),
    (r"[^\n]{10,300}\n", ["0123456789\n", "é" * 300 + "\n", "a line of text\n"]),
    (r"(\w+, ){0,99}\w+", ["a", "one, two, three", ", ".join(["w"] * 100)]),
    (r"[ab]*a[ab]{9}", ["a" * 10, "bbbabbbbbbbbb", "abbbbbbbbb"]),
    (r"(\d{1,3}\.){3}\d{1,3}( [a-z]{1,40})*", ["10.0.0.1", "192.168.100.200 home office"]),
]

CHARS = "ab-0519 .,:$@[]()\n\"\\éü東😀🦙ZA"


def mutations(rng, text, n):
    out = []
    for _ in range(n):
        t = list(text)
        op = rng.randrange(3) if t else 1
        i = rng.randrange(len(t) + (op == 1)) if t or op == 1 else 0
        if op == 0:
            del t[i]
        elif op == 1:
            t.insert(i, rng.choice(CHARS))
        else:
            t[i] = rng.choice(CHARS)
        out.append("".join(t))
    return out


def main():
    rng = random.Random(20261130)
    cases = []
    for pattern, examples in PATTERNS:
        texts = []
        for ex in examples:
            assert re.fullmatch(pattern, ex, re.ASCII), (pattern, ex)
            texts.append(ex)
            texts += mutations(rng, ex, 24)
            texts += mutations(rng, ex + ex[-1:], 4) + [ex[:len(ex) // 2], ex + ex]
        seen, docs = set(), []
        for t in texts:
            if t in seen:
                continue
            seen.add(t)
            docs.append({"text": t, "match": re.fullmatch(pattern, t, re.ASCII) is not None})
        cases.append({"pattern": pattern, "docs": docs})
        n_match = sum(d["match"] for d in docs)
        print(f"{pattern}: {len(docs)} texts, {n_match} match")
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"generator": "tests/oracle/gen_regex_doc_fixtures.py",
                   "judge": "re.fullmatch(pattern, text, re.ASCII)", "cases": cases}, f,
                  ensure_ascii=False, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
