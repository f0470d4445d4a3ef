#!/usr/bin/env bash
# Build the reverse plugin (JavaScript) into a WebAssembly component.
#
# Usage (from anywhere; scripts/build-plugins.sh calls it from the repo root):
#   bash plugins/reverse/build.sh /abs/path/target/plugins/reverse.wasm
#
# Needs node (20+) and npm. Installs the exact versions in package-lock.json
# into plugins/reverse/node_modules (gitignored) with `npm ci`; a re-run skips
# that while the lock file is unchanged.
set -euo pipefail

out=${1:?usage: build.sh OUT_PATH}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac

# The stamp holds the hash of the lock file that node_modules was installed
# from; any change to package-lock.json triggers a fresh `npm ci`.
stamp="$here/node_modules/.reverse-build-stamp"
want=$(sha256sum "$here/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "reverse: installing npm dependencies (npm ci)" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$stamp"
fi

mkdir -p "$(dirname "$out")"
node "$here/build.mjs" "$out"
