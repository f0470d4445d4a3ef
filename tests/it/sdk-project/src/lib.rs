use sockets_plugin::{Plugin, Request};

/// Adds up the numbers of a request: `2 + 3 + 4` -> `9`.
struct Adder;

impl Plugin for Adder {
    fn handle(req: Request) -> Result<Option<Vec<u8>>, String> {
        let text = String::from_utf8(req.payload).map_err(|_| "the request is not UTF-8")?;
        let mut sum: i64 = 0;
        for term in text.split('+') {
            let n: i64 = term.trim().parse().map_err(|_| format!("not a number: {term:?}"))?;
            sum = sum.checked_add(n).ok_or("the sum overflows")?;
        }
        Ok(Some(sum.to_string().into_bytes()))
    }
}

sockets_plugin::export!(Adder);
