#!/usr/bin/env bash
# Install the JavaScript plugins' toolchain (componentize-js and what it
# needs, the exact versions in plugins/reverse/package-lock.json) into
# plugins/reverse/node_modules, if it is not there yet. Shared by the
# JavaScript plugins' build.sh (reverse, shout), so the ~385 MB tree is
# installed once: shout imports componentize-js from that folder.
#
# Usage: bash scripts/js-toolchain.sh     (prints nothing on stdout)
#
# Needs node (20+) and npm. A re-run skips `npm ci` while the lock file is
# unchanged: the stamp holds the hash of the lock file that node_modules was
# installed from.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/plugins/reverse"
stamp="$dir/node_modules/.reverse-build-stamp"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  command -v npm >/dev/null || { echo "js-toolchain: npm is not installed (needed for componentize-js)" >&2; exit 1; }
  echo "js-toolchain: installing npm dependencies in plugins/reverse (npm ci)" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$stamp"
fi
