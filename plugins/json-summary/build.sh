#!/usr/bin/env bash
# Build the json-summary plugin (Python) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/json-summary/build.sh /abs/path/target/plugins/json-summary.wasm
#
# Needs python3 (3.10+) with pip. Installs componentize-py, pinned, into
# target/pyenv/componentize-py-<version> with `pip install --target` (no venv,
# so Debian's python3-venv package is not needed, and PEP 668's
# "externally managed" guard does not apply). Re-runs skip the install.
set -euo pipefail

COMPONENTIZE_PY_VERSION=0.25.1

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

tooldir="$root/target/pyenv/componentize-py-$COMPONENTIZE_PY_VERSION"
stamp="$tooldir/.installed"
if [ ! -e "$stamp" ]; then
  echo "json-summary: installing componentize-py==$COMPONENTIZE_PY_VERSION into $tooldir" >&2
  rm -rf "$tooldir"
  python3 -m pip install --quiet --disable-pip-version-check --no-input --root-user-action=ignore \
    --target "$tooldir" "componentize-py==$COMPONENTIZE_PY_VERSION"
  touch "$stamp"
fi

componentize_py() {
  PYTHONPATH="$tooldir" python3 -c \
    'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' \
    "$@"
}

mkdir -p "$(dirname "$out")"
# Build to a temporary file first so that a failed build never leaves a
# truncated component at OUT_PATH.
tmp="$out.tmp.$$"
# app.py is copied to a scratch folder: componentize-py writes __pycache__
# next to the module it imports, and the source folder should stay clean.
src=$(mktemp -d)
trap 'rm -f "$tmp"; rm -rf "$src"' EXIT
cp "$here/app.py" "$src/"
# -d: the WIT package; -w: the world; -p: where app.py is; `app`: the module
# that defines class WitWorld.
componentize_py -d "$root/wit" -w handler componentize -p "$src" app -o "$tmp" >&2
mv -f "$tmp" "$out"
echo "json-summary: wrote $out ($(wc -c <"$out") bytes)" >&2
