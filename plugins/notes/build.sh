#!/usr/bin/env bash
# Build the notes plugin (JavaScript, sockets:services@0.1.0 world `handler`:
# sockets:plugin@0.2.0's handler plus wasi:keyvalue, wasi:config and
# wasi:logging) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/notes/build.sh /abs/path/target/plugins/notes.wasm
#
# Needs node (20+) and npm. This plugin has no node_modules of its own: it
# uses componentize-js from plugins/reverse/node_modules, which
# scripts/js-toolchain.sh installs with `npm ci` from
# plugins/reverse/package-lock.json if it is not there yet. (In
# scripts/build-plugins.sh notes is built before reverse, alphabetically, so
# here it may well be this script that installs it.)
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

command -v node >/dev/null || { echo "notes: error: node is not installed" >&2; exit 1; }
bash "$root/scripts/js-toolchain.sh"

# The protocol's unit tests first (node's built-in test runner, under a second).
if ! log=$(cd "$here" && node --test protocol.test.js 2>&1); then
  echo "$log" >&2
  echo "notes: unit tests failed" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# World `handler` of sockets:services@0.1.0: sockets:plugin@0.2.0's handler
# plus wasi:keyvalue, wasi:config and wasi:logging (in its deps/).
node "$root/scripts/componentize-js.mjs" notes "$here/notes.js" "$root/wit/services" handler "$out"
