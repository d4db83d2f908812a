#!/usr/bin/env bash
# test_adapter_inspect.sh - end-to-end `quiver adapter inspect` through the real binary on the
# committed PEFT / AdapterHub fixtures: kinds and ranks printed, compatibility with --model
# (yes, or the exact refusal and exit 1), pickle refusal, usage errors.
set -u
Q="$1"
SRC="${QV_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
A="$SRC/tests/fixtures/adapters"
M="$SRC/tests/fixtures/models"
fail=0
has() { # name, haystack, needle
    case "$2" in *"$3"*) echo "ok $1" ;; *) echo "FAIL $1: [$3] not in:"; echo "$2"; fail=1 ;; esac
}
rc() { # name, got, want
    if [ "$2" != "$3" ]; then echo "FAIL $1: rc $2 want $3"; fail=1; else echo "ok $1"; fi
}
out="$("$Q" adapter inspect "$A/tiny-llama-gqa/lora_patterns" --quiet)"; rc lora-rc $? 0
has lora-kind "$out" "kind: LORA"
has lora-pattern "$out" "down_proj layers 3/3  rank 6  scale 1.33333"
has lora-unchecked "$out" "compatibility: not checked"
out="$("$Q" adapter inspect "$A/tiny-llama-gqa/prefix_nvt5" --model "$M/tiny-llama-gqa" --quiet)"
rc prefix-rc $? 0
has prefix-nvt "$out" "virtual tokens: 5 (per-layer K/V, 2 kv heads x 16)"
has prefix-compat "$out" "compatible with $M/tiny-llama-gqa: yes"
out="$("$Q" adapter inspect "$A/tiny-llama-gqa/dora" --model "$M/tiny-llama-gqa.q4_1.gguf" --quiet)"
rc dora-gguf-rc $? 0
has dora-gguf "$out" "DoRA"
out="$("$Q" adapter inspect "$A/tiny-llama-gqa/seq_bn" --model "$M/tiny-llama" --quiet)"
rc mismatch-rc $? 1
has mismatch "$out" ": no: "
out="$("$Q" adapter inspect "$SRC/tests/fixtures/adapters_bad/pickle_peft" 2>&1)"; rc pickle-rc $? 1
has pickle "$out" "safe_serialization=True"
"$Q" adapter inspect >/dev/null 2>&1; rc usage-rc $? 2
"$Q" adapter --help >/dev/null; rc help-rc $? 0
exit $fail
