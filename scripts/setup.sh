#!/usr/bin/env bash
# Set up actorbox on a fresh Debian/Ubuntu machine, then run the demo or the tests.
#
#   bash scripts/setup.sh demo            # python examples/extension_host.py
#   bash scripts/setup.sh test [ARGS...]  # python -m pytest ARGS...
#
# Idempotent: it installs bubblewrap (as root) and creates .venv only when they
# are missing, and reinstalls the package only when pyproject.toml changed.
# PYTHON=/path/to/python3.x picks the interpreter (default: python3).
set -euo pipefail

usage() {
    echo "usage: bash scripts/setup.sh demo|test [pytest args...]" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
mode=$1
shift
case "$mode" in
    demo | test) ;;
    *) usage ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "setup: $*" >&2; }
die() {
    echo "setup: error: $*" >&2
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

apt_install() {
    # Quiet, but on failure show apt's output.
    local log
    log=$(mktemp)
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# -- Python >= 3.11 ------------------------------------------------------------------

PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 ||
    die "$PYTHON not found; install Python 3.11 or newer (Debian/Ubuntu: apt-get install python3 python3-venv)"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    die "actorbox needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=/path/to/python3.11 (or newer)"
fi
pyver=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')

# -- the actor sandbox: bubblewrap, and util-linux's setpriv/prlimit ----------------

missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
# Always there on Debian/Ubuntu, but minimal images may lack them.
{ command -v setpriv && command -v prlimit; } >/dev/null 2>&1 || missing+=(util-linux)
if [[ ${#missing[@]} -gt 0 ]]; then
    if is_root && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} for the actor sandbox (apt-get install ${missing[*]})"
        apt_install "${missing[@]}" || die "could not install ${missing[*]} (apt output above)"
    elif command -v apt-get >/dev/null 2>&1; then
        say "${missing[*]} missing: actors run sandboxed with bubblewrap and fail to start without it. Install with:"
        say "    sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    else
        say "${missing[*]} missing: install it with your package manager; actors run sandboxed with bubblewrap"
    fi
fi

# -- .venv ----------------------------------------------------------------------------

VENV=.venv
VPY=$VENV/bin/python

venv_ok() {
    [[ -x $VPY ]] && "$VPY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' >/dev/null 2>&1
}

if ! venv_ok; then
    if [[ -e $VENV ]]; then
        say "$VENV exists but its python does not run (or is older than 3.11); recreating it"
        rm -rf "$VENV"
    fi
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            say "installing the venv module (apt-get install python3-venv)"
            apt_install "python$pyver-venv" || apt_install python3-venv ||
                die "could not install python3-venv (apt output above)"
        else
            die "Python's venv module is missing; install it with: sudo apt-get install -y python3-venv (or python$pyver-venv)"
        fi
    fi
    say "creating $VENV with $PYTHON (Python $pyver)"
    "$PYTHON" -m venv "$VENV"
fi

# -- the package and its test dependencies -------------------------------------------

# Reinstall only when pyproject.toml (or this script) changed since the last
# successful install, and the install still imports.
stamp=$VENV/.actorbox-setup-stamp
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
installed() {
    # -P: don't let the checkout itself (the current directory) satisfy the check.
    "$VPY" -P - <<'PY' >/dev/null 2>&1
import importlib.metadata, importlib.util, sys
mods = ("actorbox", "scheduler", "sandbox", "torch", "pytest", "trio", "hypothesis", "numpy", "ray")
ok = all(importlib.util.find_spec(m) for m in mods)
sys.exit(0 if ok and importlib.metadata.version("torch").split("+")[0] == "2.13.0" else 1)
PY
}
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && installed; then
    say "$VENV is up to date"
else
    rm -f "$stamp"
    say "installing actorbox with its test dependencies into $VENV (torch 2.13.0 included; this can take a while)"
    # torch stays pinned to 2.13.0 here and in the test extra.
    "$VPY" -m pip install --quiet --disable-pip-version-check -e '.[test]' 'torch==2.13.0'
    echo "$want" >"$stamp"
fi

# -- run ------------------------------------------------------------------------------

case "$mode" in
    demo) exec "$VPY" examples/extension_host.py "$@" ;;
    test) exec "$VPY" -m pytest "$@" ;;
esac
