#!/usr/bin/env bash
# quickstart.sh - the run command: install what is missing, build, fetch the default model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) and start quiver on it.
#
# With no arguments: an interactive chat when stdin is a terminal, otherwise one answer to a
# demo question. With arguments: they are passed to `quiver` (e.g. `generate --prompt "..."`),
# with --model defaulting to the fetched model.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh >&2
model=$(bash deploy/fetch-model.sh)
if [[ ! -f build/CMakeCache.txt ]]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQV_CUDA=OFF >/dev/null
fi
cmake --build build -j"$(nproc)" --target quiver >&2

if [[ $# -gt 0 ]]; then
    cmd=$1
    shift
    exec build/quiver "$cmd" --model "$model" "$@"
fi
if [[ -t 0 ]]; then
    exec build/quiver chat --model "$model" --temperature 0.7 --top-p 0.9 --seed "$RANDOM"
fi
exec build/quiver chat --model "$model" --max-tokens 64 \
    --message "What is the capital of France? Answer in one sentence."
