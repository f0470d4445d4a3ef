#!/usr/bin/env bash
# Copy the WIT contract into the Rust SDK, so that the SDK is a crate of its
# own: `cargo package` ships only what is inside a package's directory, and a
# copied `plugins/sdk` cannot reach `../../wit`.
#   plugins/sdk/wit          = wit/ (the symlinked deps/plugin copied as files)
#   plugins/sdk/handler/wit  = wit/plugin.wit (sockets:plugin@0.1.0)
# wit/ is the source; run this after changing it. tests/it/sdk.rs fails while
# the copies differ.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf plugins/sdk/wit plugins/sdk/handler/wit
cp -RL wit plugins/sdk/wit
mkdir plugins/sdk/handler/wit
cp wit/plugin.wit plugins/sdk/handler/wit/plugin.wit
echo "copied wit/ into plugins/sdk/wit and plugins/sdk/handler/wit"
