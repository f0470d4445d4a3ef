#!/usr/bin/env bash
# Build the http-py plugin (Python, sockets:services@0.1.0 world
# `connection-handler`: sockets:plugin@0.2.0's connection world plus
# wasi:keyvalue, wasi:config and wasi:logging) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/http-py/build.sh /abs/path/target/plugins/http-py.wasm
#
# Needs python3 (3.10+) with pip. componentize-py (pinned) is run through
# scripts/componentize-py.sh, which installs it into
# target/pyenv/componentize-py-<version> on first use (shared with the other
# Python plugins).
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# The protocol's unit tests first (plain python3, well under a second).
if ! log=$(cd "$here" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest test_http_proto 2>&1); then
  echo "$log" >&2
  echo "http-py: unit tests failed" >&2
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
cp "$here/connection.py" "$here/http_proto.py" "$src/"
# -d: the services WIT package; -w: the world. The main module is
# `connection`: componentize-py looks for the exported resource `session` of
# interface `connection` as class `Session` in a module of that name.
bash "$root/scripts/componentize-py.sh" -d "$root/wit/services" -w connection-handler \
  componentize -p "$src" connection -o "$tmp" >&2
mv -f "$tmp" "$out"
echo "http-py: wrote $out ($(wc -c <"$out") bytes)" >&2
