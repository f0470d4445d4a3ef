#!/usr/bin/env bash
# Build the reverse plugin (JavaScript) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/reverse/build.sh /abs/path/target/plugins/reverse.wasm
#
# Needs node (20+) and npm. scripts/js-toolchain.sh installs the exact
# versions in package-lock.json into plugins/reverse/node_modules (gitignored)
# with `npm ci`; a re-run skips that while the lock file is unchanged. The
# other JavaScript plugins use the same node_modules.
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# npm ci (only when package-lock.json changed since the last install), shared
# with the other JavaScript plugins.
bash "$here/../../scripts/js-toolchain.sh"

mkdir -p "$(dirname "$out")"
node "$here/build.mjs" "$out"
