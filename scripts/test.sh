#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this).
# Installs what is missing, builds every plugin in every language once, then
# checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*" >&2; }

step "setup"
bash scripts/setup.sh
step "format"
cargo fmt --all --check
step "plugins (Rust, Python, JavaScript, C)"
bash scripts/build-plugins.sh
step "clippy"
cargo clippy --workspace --all-targets -- -D warnings
step "tests"
# --all-targets also builds the benchmarks and runs each one once, as a test.
cargo test --workspace --all-targets
cargo test --workspace --doc
step "all tests passed"
