#!/usr/bin/env bash
# Build every plugin under plugins/ into one folder, target/plugins/NAME.wasm.
# Usage: scripts/build-plugins.sh [--rust-only]
# Fails loudly (non-zero exit) if any plugin cannot be built: nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/plugins
mkdir -p "$OUT"

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# Rust: every cargo package under plugins/ except the SDK.
rust_plugins=()
for manifest in plugins/*/Cargo.toml examples/*/Cargo.toml; do
  dir=$(dirname "$manifest")
  name=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
  [ "$name" = "sockets-plugin" ] && continue
  rust_plugins+=("$name")
done
args=()
for p in "${rust_plugins[@]}"; do args+=(-p "$p"); done
cargo build --release --target wasm32-wasip2 "${args[@]}"
for p in "${rust_plugins[@]}"; do
  cp "target/wasm32-wasip2/release/${p//-/_}.wasm" "$OUT/$p.wasm"
  echo "built $OUT/$p.wasm (rust)"
done

[ "${1:-}" = "--rust-only" ] && exit 0
# Other languages: each plugins/NAME/build.sh writes $OUT/NAME.wasm.
for script in plugins/*/build.sh; do
  [ -e "$script" ] || continue
  name=$(basename "$(dirname "$script")")
  bash "$script" "$PWD/$OUT/$name.wasm"
  test -s "$OUT/$name.wasm" || { echo "error: $script did not produce $OUT/$name.wasm" >&2; exit 1; }
  echo "built $OUT/$name.wasm ($(basename "$(dirname "$script")"))"
done
