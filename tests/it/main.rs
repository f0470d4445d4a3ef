//! Integration tests: the real `host` binary on port 0, real sockets, and
//! assertions on the bytes that come back. Plugins come from
//! `target/plugins/` (built by `scripts/build-plugins.sh`).

mod support;

mod clients;
mod connection;
mod core;
mod hardening;
mod isolation;
mod languages;
mod output;
mod reload;
mod sdk;
mod state;
