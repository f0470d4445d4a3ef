#!/usr/bin/env bash
# Build the shout plugin (JavaScript, sockets:plugin@0.2.0 world
# `connection-handler`) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/shout/build.sh /abs/path/target/plugins/shout.wasm
#
# Needs node (20+) and npm. This plugin has no node_modules of its own: it
# uses componentize-js from plugins/reverse/node_modules, which
# scripts/js-toolchain.sh installs with `npm ci` from
# plugins/reverse/package-lock.json if it is not there yet (in
# scripts/build-plugins.sh, reverse's build has already done it).
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

command -v node >/dev/null || { echo "shout: error: node is not installed" >&2; exit 1; }
bash "$root/scripts/js-toolchain.sh"

# The protocol's unit tests first (node's built-in test runner, about a second).
if ! log=$(cd "$here" && node --test protocol.test.js 2>&1); then
  echo "$log" >&2
  echo "shout: unit tests failed" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
# The 0.2.0 WIT package, world `connection-handler`.
node "$root/scripts/componentize-js.mjs" shout "$here/shout.js" "$root/wit/0.2.0" connection-handler "$out"
