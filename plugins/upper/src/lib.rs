//! `upper`: replies with the payload in ASCII upper case; an empty payload
//! gets no reply at all, which shows the `ok(none)` arm of the contract.
use sockets_plugin::{Plugin, Request, log};

struct Upper;

impl Plugin for Upper {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        if req.payload.is_empty() {
            log::debug(&format!("empty payload from {}: no reply", req.peer));
            return Ok(None);
        }
        Ok(Some(req.payload.to_ascii_uppercase()))
    }
}

sockets_plugin::export!(Upper);
