//! `echo`: replies with the payload it was given, byte for byte.
use sockets_plugin::{Plugin, Request};

struct Echo;

impl Plugin for Echo {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        Ok(Some(req.payload))
    }
}

sockets_plugin::export!(Echo);
