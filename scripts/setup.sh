#!/usr/bin/env bash
# Install what building and testing need, if it is missing. Safe to re-run.
#
#   - Debian packages: real clients the tests talk to the host with (socat,
#     netcat-openbsd, dig for the DNS plugin, curl for the HTTP plugins,
#     redis-cli and redis-benchmark for the RESP plugin), and redis-server
#     (the tests start their own on a free port, for the Redis key-value
#     backend and as the RESP plugin's backend). The peers only the protocol
#     benchmark runs (nsd, dnsperf, nginx, wrk) are installed by
#     `bench protocols` itself.
#   - The Rust target wasm32-wasip2 (plugins) and rustfmt/clippy.
#
# Python (componentize-py, zig) and npm (componentize-js) tools are installed
# by each plugin's own build.sh, pinned, under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(socat netcat-openbsd bind9-dnsutils curl redis-server redis-tools)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

installed=$(rustup target list --installed)
grep -qx wasm32-wasip2 <<<"$installed" || rustup target add wasm32-wasip2
components=$(rustup component list --installed)
for c in rustfmt clippy; do
  grep -q "^$c" <<<"$components" || rustup component add "$c"
done
