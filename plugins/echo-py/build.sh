#!/usr/bin/env bash
# Build the echo-py plugin (Python) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/echo-py/build.sh /abs/path/target/plugins/echo-py.wasm
#
# Needs python3 (3.10+) with pip. componentize-py (pinned) is run through
# scripts/componentize-py.sh, which installs it into
# target/pyenv/componentize-py-<version> on first use (shared with the other
# Python plugins, so it is installed once).
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

componentize_py() { bash "$root/scripts/componentize-py.sh" "$@"; }

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
echo "echo-py: wrote $out ($(wc -c <"$out") bytes)" >&2
