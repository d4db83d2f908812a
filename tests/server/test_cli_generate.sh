#!/usr/bin/env bash
# test_cli_generate.sh - the quiver binary end to end on the real default model: text in, text
# out, compared with Hugging Face's greedy continuation of the same prompts
# (tests/fixtures/smollm2/golden.json, written by tests/oracle/gen_golden.py).
#  - generate: plain prompts, greedy, stopping at the end-of-generation token like HF would;
#  - chat: --message renders the SmolLM2 chat template; the answer equals HF's greedy answer to
#    the same rendered prompt;
#  - --stop cuts the text before the stop string; bad options and a bad model exit non-zero.
# Skips (77) only when the model has not been fetched.
set -euo pipefail
quiver=$1
# shellcheck source=tests/server/lib.sh
source "$(dirname "$0")/lib.sh"
qv_need_model
golden=$root/tests/fixtures/smollm2/golden.json
fail=0
expect() { # name, expected-file, actual-file
    if cmp -s "$2" "$3"; then
        echo "ok   $1"
    else
        echo "FAIL $1"
        echo "  expected: $(head -c 300 "$2" | od -c | head -5)"
        echo "  actual:   $(head -c 300 "$3" | od -c | head -5)"
        fail=1
    fi
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# HF's greedy text up to the first end-of-generation token, plus the newline quiver prints.
hf_text() { # index
    python3 - "$golden" "$1" <<'PY'
import json, sys
g = json.load(open(sys.argv[1]))
p = g["prompts"][int(sys.argv[2])]
text = p["greedy_text"]
for stop in ("<|im_end|>", "<|endoftext|>"):
    text = text.split(stop)[0]
sys.stdout.write(text + "\n")
PY
}
prompt_text() { python3 -c 'import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))["prompts"][int(sys.argv[2])]["text"])' "$golden" "$1"; }

# 0: "The capital of France is" stops at <|im_end|>; 1: "def fibonacci(n):" runs 32 tokens.
for i in 0 1; do
    hf_text $i >"$tmp/want$i"
    "$quiver" generate --model "$model" --prompt "$(prompt_text $i)" --max-tokens 32 --threads 2 >"$tmp/got$i"
    expect "generate prompt $i" "$tmp/want$i" "$tmp/got$i"
done

# Chat: golden prompt 2 is the SmolLM2 template rendered around this user message.
hf_text 2 >"$tmp/want2"
"$quiver" chat --model "$model" --message "What is the capital of France? Answer briefly." \
    --max-tokens 32 >"$tmp/got2"
expect "chat one-shot" "$tmp/want2" "$tmp/got2"

# --stop: the continuation of prompt 1 cut before the first "return".
python3 - "$tmp/want1" >"$tmp/want3" <<'PY'
import sys
t = open(sys.argv[1]).read()
sys.stdout.write(t.split("return")[0] + "\n")
PY
"$quiver" generate --model "$model" --prompt "$(prompt_text 1)" --max-tokens 32 --stop return >"$tmp/got3"
expect "stop string" "$tmp/want3" "$tmp/got3"

# --json: even asked for prose, the answer is one JSON object (Python's json module judges).
"$quiver" chat --model "$model" --message "Tell me about cats in two sentences." --json \
    --max-tokens 64 >"$tmp/got4"
if python3 -c 'import json, sys; sys.exit(not isinstance(json.load(open(sys.argv[1])), dict))' \
    "$tmp/got4"; then
    echo "ok   chat --json: $(tr -d '\n' <"$tmp/got4")"
else
    echo "FAIL chat --json: $(cat "$tmp/got4")"
    fail=1
fi

# --json-schema: the answer follows the schema (checked field by field by Python).
cat >"$tmp/schema.json" <<'JSON'
{"type": "object", "additionalProperties": false, "required": ["name", "age", "mood"],
 "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"},
                "mood": {"enum": ["happy", "sad"]}}}
JSON
"$quiver" chat --model "$model" --message "Bob is 42 and cheerful." --json-schema "$tmp/schema.json" \
    --max-tokens 64 >"$tmp/got5"
if python3 - "$tmp/got5" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(not (list(d) == ["name", "age", "mood"] and isinstance(d["name"], str) and
              len(d["name"]) <= 10 and type(d["age"]) is int and d["mood"] in ("happy", "sad")))
PY
then
    echo "ok   chat --json-schema: $(tr -d '\n' <"$tmp/got5")"
else
    echo "FAIL chat --json-schema: $(cat "$tmp/got5")"
    fail=1
fi

# Errors: usage errors exit 2, a bad model exits 1 with a one-line message.
set +e
echo '{"type": "number", "multipleOf": 0.5}' >"$tmp/bad_schema.json"
"$quiver" chat --model "$model" --message x --json-schema "$tmp/bad_schema.json" >/dev/null \
    2>"$tmp/err"; rc=$?
if [[ $rc == 2 ]] && grep -q "'multipleOf' must be a whole number" "$tmp/err"; then
    echo "ok   unsupported schema -> 2: $(cat "$tmp/err")"
else
    echo "FAIL unsupported schema rc=$rc: $(cat "$tmp/err")"; fail=1
fi
"$quiver" chat --model "$model" --message x --json --ignore-eos >/dev/null 2>"$tmp/err"; rc=$?
[[ $rc == 2 ]] && echo "ok   --json with --ignore-eos -> 2" || { echo "FAIL --json --ignore-eos rc=$rc"; fail=1; }
"$quiver" generate --model "$model" --prompt x --temperature -1 >/dev/null 2>"$tmp/err"; rc=$?
[[ $rc == 2 ]] && echo "ok   bad temperature -> 2" || { echo "FAIL bad temperature rc=$rc"; fail=1; }
printf 'GGUF\x03\x00\x00\x00garbage' >"$tmp/bad.gguf"
"$quiver" generate --model "$tmp/bad.gguf" --prompt x >/dev/null 2>"$tmp/err"; rc=$?
if [[ $rc == 1 && $(wc -l <"$tmp/err") -ge 1 ]]; then echo "ok   corrupt model -> 1: $(head -1 "$tmp/err")"; else echo "FAIL corrupt model rc=$rc"; fail=1; fi
"$quiver" generate --model /nonexistent --prompt x >/dev/null 2>"$tmp/err"; rc=$?
[[ $rc == 1 ]] && echo "ok   missing model -> 1: $(head -1 "$tmp/err")" || { echo "FAIL missing model rc=$rc"; fail=1; }
"$quiver" frobnicate >/dev/null 2>&1; rc=$?
[[ $rc == 2 ]] && echo "ok   unknown command -> 2" || { echo "FAIL unknown command rc=$rc"; fail=1; }
set -e
exit $fail
