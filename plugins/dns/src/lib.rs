//! `dns`: an authoritative DNS server as a plugin of the `handler` world,
//! served on UDP and on TCP with `--framing u16` (the host strips and adds
//! the two-byte length of DNS over TCP; `handle` sees one message).
//!
//! Zones come from the configuration (`wasi:config`): variable `zone`, and
//! any `zone.<name>`, each one zone in master-file text (RFC 1035 5),
//! parsed by hickory-proto's zone parser.
//!
//! Parsing a zone costs far more than answering, and an instance lives for
//! one request by default, so the parsed zones sit in a `OnceLock` filled by
//! the `wizer-initialize` export: a host that runs it once at load and
//! snapshots the instance starts every fresh instance with the zones
//! parsed. On a host that does not, the first `handle` of each instance
//! parses (the same code, paid per fresh instance). A zone that does not
//! parse fails the initialisation (a trap, with the message), or, when
//! parsed lazily, makes every `handle` return the message as its error,
//! which the host logs.
#![deny(missing_docs)]

pub mod answer;
pub mod query;
pub mod reply;
pub mod zone;

use std::sync::OnceLock;

use zone::Zones;

/// The generated bindings of world `dns` (`wit/dns.wit`).
#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        world: "sockets:dns/dns",
        path: ["../../wit/services", "wit"],
        generate_all,
    });
}

use bindings::sockets::plugin::types::{Request, Transport};
use bindings::wasi::config::store as config;
use bindings::wasi::logging::logging;

/// The zones, parsed once per instance image.
static ZONES: OnceLock<Result<Zones, String>> = OnceLock::new();

/// The zones, parsed on first use.
fn zones() -> &'static Result<Zones, String> {
    ZONES.get_or_init(load)
}

/// Read the `zone` and `zone.*` variables and parse them.
fn load() -> Result<Zones, String> {
    let vars = config::get_all().map_err(|e| format!("zone: cannot read the configuration: {e:?}"))?;
    let mut texts: Vec<(&str, &str)> = vars
        .iter()
        .filter(|(k, _)| k == "zone" || k.starts_with("zone."))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // A fixed order, so an error names the same variable every time.
    texts.sort();
    Zones::parse(texts)
}

struct Dns;

impl bindings::Guest for Dns {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let zones = zones().as_ref().map_err(Clone::clone)?;
        Ok(answer::respond(zones, &req.payload, req.transport == Transport::Tcp))
    }

    fn wizer_initialize() {
        if let Err(e) = zones() {
            // One log line with the message, then a trap: the only way a
            // `func()` can fail. The host does not serve a plugin whose
            // zones are wrong, and keeps the version it had on a reload.
            logging::log(logging::Level::Error, "dns", e);
            panic!("{e}");
        }
    }
}

bindings::export!(Dns with_types_in bindings);

#[cfg(test)]
mod tests;
