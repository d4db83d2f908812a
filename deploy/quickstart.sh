#!/usr/bin/env bash
# quickstart.sh - the run command: install what is missing, build, fetch the default model
# (SmolLM2-135M-Instruct, Q4_1 GGUF) and start quiver on it.
#
# With no arguments: the OpenAI-compatible HTTP server on http://127.0.0.1:8000 with the two
# demo adapters (pirate, shouting) published into the adapter store (Ctrl-C drains and exits). With arguments: they are passed to `quiver` (e.g. `chat`, or
# `generate --prompt "..."`), with --model set to the fetched model.
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
exec build/quiver serve --model "$model" \
    --preload pirate=deploy/demo-adapters/pirate --preload shouting=deploy/demo-adapters/shouting
