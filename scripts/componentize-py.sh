#!/usr/bin/env bash
# Run componentize-py, pinned, installing it on first use. Shared by the
# Python plugins' build.sh (json-summary, numbered), so it is installed once.
#
# Usage: bash scripts/componentize-py.sh ARGS...   (the arguments of componentize-py)
#   e.g. bash scripts/componentize-py.sh -d wit -w handler componentize -p SRC app -o OUT.wasm
#
# Needs python3 (3.10+) with pip. Installs componentize-py into
# target/pyenv/componentize-py-<version> with `pip install --target` (no venv,
# so Debian's python3-venv package is not needed, and PEP 668's
# "externally managed" guard does not apply). Re-runs skip the install.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tooldir="$root/target/pyenv/componentize-py-$COMPONENTIZE_PY_VERSION"
stamp="$tooldir/.installed"
if [ ! -e "$stamp" ]; then
  echo "componentize-py: installing componentize-py==$COMPONENTIZE_PY_VERSION into $tooldir" >&2
  rm -rf "$tooldir"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
    --target "$tooldir" "componentize-py==$COMPONENTIZE_PY_VERSION"
  touch "$stamp"
fi

# The package has no __main__, so its console-script entry point is called.
PYTHONPATH="$tooldir" exec python3 -c \
  'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
  "$@"
