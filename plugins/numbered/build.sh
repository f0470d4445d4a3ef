#!/usr/bin/env bash
# Build the numbered plugin (Python, sockets:plugin@0.2.0 world
# `connection-handler`) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/numbered/build.sh /abs/path/target/plugins/numbered.wasm
#
# Needs python3 (3.10+) with pip. componentize-py (pinned) is run through
# scripts/componentize-py.sh, which installs it into
# target/pyenv/componentize-py-<version> on first use (shared with
# json-summary, so it is installed once).
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# The protocol's unit tests first (plain python3, well under a second).
if ! log=$(cd "$here" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest test_numbered 2>&1); then
  echo "$log" >&2
  echo "numbered: unit tests failed" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# Build to a temporary file first so that a failed build never leaves a
# truncated component at OUT_PATH.
tmp="$out.tmp.$$"
# The sources are copied to a scratch folder: componentize-py writes
# __pycache__ next to the modules it imports, and this folder should stay clean.
src=$(mktemp -d)
trap 'rm -f "$tmp"; rm -rf "$src"' EXIT
cp "$here/connection.py" "$here/numbered.py" "$src/"
# -d: the 0.2.0 WIT package; -w: the world. The main module is `connection`:
# componentize-py looks for the exported resource `session` of interface
# `connection` as class `Session` in a module named `connection`, and the
# world exports nothing else, so that module is all the app there is.
bash "$root/scripts/componentize-py.sh" -d "$root/wit/0.2.0" -w connection-handler \
  componentize -p "$src" connection -o "$tmp" >&2
mv -f "$tmp" "$out"
echo "numbered: wrote $out ($(wc -c <"$out") bytes)" >&2
