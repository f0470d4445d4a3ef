//! Integration tests: the real `host` binary on port 0, real sockets, and
//! assertions on the bytes that come back. Plugins come from
//! `target/plugins/` (built by `scripts/build-plugins.sh`).

mod support;

mod admin;
mod cli;
mod clients;
mod connection;
mod core;
mod deploy;
mod dns;
mod hardening;
mod http;
mod init;
mod isolation;
mod languages;
mod ops;
mod output;
mod reload;
mod resp;
mod sdk;
mod services;
mod state;
mod systemd;
mod upgrade;
