#!/usr/bin/env bash
# setup-venv.sh — create the Python oracle environment used by tests/oracle/*.py.
#
# What: creates ${QV_ORACLE_VENV:-<repo>/.venv-oracle} (python3 -m venv) and installs the pinned
#   tests/oracle/requirements.txt into it (torch from the PyTorch CPU wheel index, the rest
#   from PyPI). Prints the venv path on stdout.
# What not: CI never runs it; the C build and tests do not need Python. Nothing outside the
#   venv directory is modified.
# Invariants: idempotent — when the venv already satisfies requirements.txt (checked with a
#   stamp holding the requirements' sha256), it does nothing but print the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${QV_ORACLE_VENV:-$repo/.venv-oracle}"
req="$here/requirements.txt"
py="${PYTHON:-python3}"

die() { echo "setup-venv: $*" >&2; exit 1; }

command -v "$py" >/dev/null 2>&1 || die "$py not found"
want="$(sha256sum "$req" | cut -d' ' -f1)"
stamp="$venv/.quiver-requirements.sha256"

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv"
    exit 0
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup-venv: creating $venv" >&2
    "$py" -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi

"$venv/bin/python" -m pip install --quiet --upgrade pip >&2 || die "pip upgrade failed"
torch_pin="$(grep -E '^torch==' "$req")"
"$venv/bin/python" -m pip install --quiet "$torch_pin" \
    --index-url https://download.pytorch.org/whl/cpu >&2 \
    || "$venv/bin/python" -m pip install --quiet "$torch_pin" >&2 \
    || die "installing $torch_pin failed"
"$venv/bin/python" -m pip install --quiet -r "$req" >&2 || die "pip install -r $req failed"

echo "$want" > "$stamp"
echo "$venv"
