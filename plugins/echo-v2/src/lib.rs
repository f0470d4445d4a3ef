//! `echo-v2`: echo, built against the `handler` world of
//! `sockets:plugin@0.2.0` with `wit-bindgen` directly (no SDK).
//!
//! The 0.2.0 `handler` world has the same `handle` as 0.1.0; a plugin built
//! against it imports `sockets:plugin/log@0.2.0`, which the host offers
//! beside 0.1.0's. This one logs every request at debug level, so it does.

wit_bindgen::generate!({
    world: "handler",
    path: "../../wit/0.2.0",
});

use sockets::plugin::log::{Level, log};

struct Echo;

impl Guest for Echo {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        log(Level::Debug, &format!("echo-v2: {} bytes from {}", req.payload.len(), req.peer));
        Ok(Some(req.payload))
    }
}

export!(Echo);
