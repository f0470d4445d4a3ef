#!/usr/bin/env bash
# Build the visits plugin (Python, sockets:services@0.1.0 world `handler`:
# sockets:plugin@0.2.0's handler plus wasi:keyvalue, wasi:config and
# wasi:logging) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/visits/build.sh /abs/path/target/plugins/visits.wasm
#
# Needs python3 (3.11+ for the glue tests, which import the generated
# bindings; 3.10 builds but skips them) with pip. componentize-py (pinned) is
# run through scripts/componentize-py.sh, which installs it into
# target/pyenv/componentize-py-<version> on first use (shared with the other
# Python plugins, so it is installed once).
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

componentize_py() { bash "$root/scripts/componentize-py.sh" "$@"; }
wit="$root/wit/services"

mkdir -p "$(dirname "$out")"
# Build to a temporary file first so that a failed build never leaves a
# truncated component at OUT_PATH.
tmp="$out.tmp.$$"
# Scratch folders: the bindings for the glue tests, and a copy of the
# sources (componentize-py writes __pycache__ next to the modules it imports,
# and this folder should stay clean).
scratch=$(mktemp -d)
trap 'rm -f "$tmp"; rm -rf "$scratch"' EXIT
mkdir "$scratch/src" "$scratch/bindings"

# The unit tests first (plain python3, well under a second): the logic with
# fake services (test_visits), then app.py's glue against the bindings
# componentize-py generates, with the imports faked (test_app).
componentize_py -d "$wit" -w handler bindings "$scratch/bindings" >/dev/null
if ! log=$(cd "$here" && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$scratch/bindings" \
  python3 -m unittest test_visits test_app 2>&1); then
  echo "$log" >&2
  echo "visits: unit tests failed" >&2
  exit 1
fi

cp "$here/app.py" "$here/visits.py" "$scratch/src/"
# -d: the services WIT package (its deps/ holds wasi:keyvalue, wasi:config,
# wasi:logging and sockets:plugin@0.2.0); -w: the world; -p: where the
# modules are; `app`: the module that defines class WitWorld.
componentize_py -d "$wit" -w handler componentize -p "$scratch/src" app -o "$tmp" >&2
mv -f "$tmp" "$out"
echo "visits: wrote $out ($(wc -c <"$out") bytes)" >&2
