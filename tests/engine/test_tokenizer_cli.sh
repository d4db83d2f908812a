#!/usr/bin/env bash
# test_tokenizer_cli.sh - end-to-end `quiver tokenize` / `quiver detokenize` on the committed
# SmolLM2 tokenizer.json fixture (and the GGUF when present). Expected ids are the HF oracle's
# (tokenizers.Tokenizer.from_file(tests/fixtures/tokenizer/smollm2/tokenizer.json)).
set -u
Q="$1"
SRC="${QV_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}"
M="$SRC/tests/fixtures/tokenizer/smollm2"
fail=0
check() { # name, got, want
    if [ "$2" != "$3" ]; then echo "FAIL $1: got [$2] want [$3]"; fail=1; else echo "ok $1"; fi
}
check tokenize "$("$Q" tokenize --model "$M" --text 'Hello world 123')" "[19556, 905, 216, 33, 34, 35]"
check specials "$("$Q" tokenize --model "$M" --text $'<|im_start|>user\nhi<|im_end|>')" \
    "[1, 4093, 198, 6004, 2]"
check no-special "$("$Q" tokenize --model "$M" --no-special --text '<|im_end|>')" \
    "[44, 108, 306, 79, 486, 108, 46]"
check detokenize "$("$Q" detokenize --model "$M" --ids '[1, 4093, 198, 6004, 2]')" \
    "$(printf '<|im_start|>user\nhi<|im_end|>')"
check skip-special "$("$Q" detokenize --model "$M" --ids '[1,4093,198,6004,2]' --skip-special)" \
    "$(printf 'user\nhi')"
"$Q" tokenize --model /nonexistent --text x 2>/dev/null; check missing-model-rc "$?" 1
"$Q" tokenize --text x 2>/dev/null; check usage-rc "$?" 2
"$Q" detokenize --model "$M" --ids '[1, "x"]' 2>/dev/null; check bad-ids-rc "$?" 2
"$Q" tokenize --help >/dev/null; check help-rc "$?" 0
G="$HOME/.cache/quiver/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$G" ]; then
    check gguf "$("$Q" tokenize --model "$G" --text 'Hello world 123')" "[19556, 905, 216, 33, 34, 35]"
fi
exit $fail
