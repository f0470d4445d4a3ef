#!/usr/bin/env bash
# Build the echo-js plugin (JavaScript, sockets:plugin@0.1.0 world `handler`)
# into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/echo-js/build.sh /abs/path/target/plugins/echo-js.wasm
#
# Needs node (20+) and npm. This plugin has no node_modules of its own: it
# uses componentize-js from plugins/reverse/node_modules, which
# scripts/js-toolchain.sh installs with `npm ci` from
# plugins/reverse/package-lock.json if it is not there yet.
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

command -v node >/dev/null || { echo "echo-js: error: node is not installed" >&2; exit 1; }
bash "$root/scripts/js-toolchain.sh"

mkdir -p "$(dirname "$out")"
# The 0.1.0 WIT package (wit/), world `handler`, as reverse.
node "$root/scripts/componentize-js.mjs" echo-js "$here/echo.js" "$root/wit" handler "$out"
