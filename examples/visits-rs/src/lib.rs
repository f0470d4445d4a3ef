use sockets_plugin::keyvalue::{atomics, store};
use sockets_plugin::{Plugin, Request, config};

struct Visits;

impl Plugin for Visits {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let name = String::from_utf8_lossy(&req.payload).trim().to_string();
        let greeting = config::get("greeting").ok().flatten().unwrap_or_else(|| "hello".into());
        let visits = store::open("default")
            .and_then(|bucket| atomics::increment(&bucket, &format!("visits/{name}"), 1))
            .map_err(|e| format!("store: {e:?}"))?;
        Ok(Some(format!("{greeting}, {name}! visit {visits}").into_bytes()))
    }
}

sockets_plugin::export!(Visits);
