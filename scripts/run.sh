#!/usr/bin/env bash
# Build the host and the Rust plugins, then serve echo over UDP and TCP on
# 127.0.0.1:7000 (extra arguments go to `host`, e.g. --listen [::1]:7000).
# Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-plugins.sh --rust-only
cargo build --release -p host
exec target/release/host --plugin target/plugins/echo.wasm "$@"
