#!/usr/bin/env bash
# test_bad_model_input.sh - `quiver info --model PATH` end to end: a good model prints its
# report and exits 0; bad inputs exit 1 with exactly one stderr line naming the file and the
# problem; usage errors exit 2. Usage: bash test_bad_model_input.sh <quiver-binary>
set -u
QV="$1"
SRC="${QV_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
FX="$SRC/tests/fixtures/formats"
T="$(mktemp -d /tmp/qv_info_XXXXXX)"
trap 'rm -rf "$T"' EXIT
fail=0

ok() {
    local model="$1" want="$2"
    local out
    out="$("$QV" info --model "$model" 2>"$T/err")"
    local rc=$?
    if [ $rc -ne 0 ] || ! grep -q -- "$want" <<<"$out"; then
        echo "FAIL: info $model: rc=$rc, want '$want' in:"; echo "$out"; cat "$T/err"; fail=1
    fi
}

bad() {
    local model="$1" want="$2"
    "$QV" info --model "$model" >"$T/out" 2>"$T/err"
    local rc=$?
    local lines
    lines=$(wc -l <"$T/err")
    if [ $rc -ne 1 ] || [ "$lines" -ne 1 ] || ! grep -q -- "$want" "$T/err" ||
        ! grep -qF -- "$model" "$T/err" || [ -s "$T/out" ]; then
        echo "FAIL: info $model: rc=$rc, $lines stderr lines, want '$want':"; cat "$T/err"; fail=1
    fi
}

ok "$FX/llama_tied" "architecture:   llama"
ok "$FX/llama_tied.q8_0.gguf" "Q8_0"
ok "$FX/qwen2_tiny.q4_1.gguf" "architecture:   qwen2"
ok "$FX/llama_bias" "scaling llama3"
ok "$FX/mistral_tiny" "sliding window: 32"

bad "$T/does-not-exist.gguf" "No such file"
bad "$T" "config.json"
printf 'hello, not a model\n' >"$T/text.gguf"
bad "$T/text.gguf" "bad magic"
head -c 3000 "$FX/llama_tied.q8_0.gguf" >"$T/trunc.gguf"
bad "$T/trunc.gguf" "truncated"
mkdir "$T/hf"
cp "$FX/llama_tied/config.json" "$T/hf/"
head -c 5000 "$FX/llama_tied/model.safetensors" >"$T/hf/model.safetensors"
bad "$T/hf" "model.safetensors"
sed 's/"llama"/"bert"/' "$FX/llama_tied/config.json" >"$T/hf/config.json"
bad "$T/hf" "model_type 'bert' is not supported"

"$QV" info --help >/dev/null || { echo "FAIL: --help"; fail=1; }
"$QV" info >/dev/null 2>&1
[ $? -eq 2 ] || { echo "FAIL: missing --model should exit 2"; fail=1; }

[ $fail -eq 0 ] && echo "all quiver info checks passed"
exit $fail
