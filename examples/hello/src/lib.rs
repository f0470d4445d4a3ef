use sockets_plugin::{Plugin, Request, log};

struct Hello;

impl Plugin for Hello {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let name = String::from_utf8(req.payload).map_err(|_| "the name is not UTF-8")?;
        log::info(&format!("greeting {name:?} from {}", req.peer));
        Ok(Some(format!("hello, {}!", name.trim()).into_bytes()))
    }
}

sockets_plugin::export!(Hello);
