//! `greeter`: an example connection plugin. A small line protocol, with
//! state kept per connection and the framing done by the plugin.
//!
//! | line          | reply                                                  |
//! |---------------|--------------------------------------------------------|
//! | `NAME <name>` | `OK`, and remembers the name for this connection      |
//! | `HELLO`       | `HELLO <name>`, or `HELLO stranger` before any `NAME` |
//! | `COUNT`       | the number of lines received so far, this one included |
//! | `QUIT`        | `BYE`, then the connection is closed                   |
//! | anything else | `ERR unknown command` (the connection stays open)      |
//! | over 4 KiB    | `ERR line too long`, then the connection is closed     |
//!
//! Lines end with `\n` (a `\r` before it is ignored), and so do replies.
//!
//! The host hands `on_data` the bytes of the stream as they arrive, split
//! anywhere: one call may hold half a line, or many lines. So the plugin
//! keeps the start of an unfinished line until its `\n` arrives, answers
//! every complete line, and bounds what it keeps.
use sockets_plugin::connection::{Connection, ConnectionInfo, Output};

/// The longest line accepted, without its `\n`.
const MAX_LINE: usize = 4096;

struct Greeter {
    /// The start of a line whose `\n` has not arrived yet.
    pending: Vec<u8>,
    name: Option<String>,
    lines: u64,
}

impl Connection for Greeter {
    fn new(_info: ConnectionInfo) -> Self {
        Greeter { pending: Vec::new(), name: None, lines: 0 }
    }

    fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
        let mut bytes = std::mem::take(&mut self.pending);
        bytes.extend_from_slice(&data);
        let mut reply = Vec::new();
        for piece in bytes.split_inclusive(|&b| b == b'\n') {
            let line = piece.strip_suffix(b"\n");
            if line.unwrap_or(piece).len() > MAX_LINE {
                reply.extend_from_slice(b"ERR line too long\n");
                return Ok(Output::reply_and_close(reply));
            }
            let Some(line) = line else {
                // The last piece has no `\n` yet: keep it for the next call.
                self.pending = piece.to_vec();
                break;
            };
            let line = String::from_utf8_lossy(line);
            let (answer, close) = self.command(line.strip_suffix('\r').unwrap_or(&line));
            reply.extend_from_slice(answer.as_bytes());
            reply.push(b'\n');
            if close {
                return Ok(Output::reply_and_close(reply));
            }
        }
        Ok(Output::reply(reply))
    }
}

impl Greeter {
    /// Answers one line: the reply (without `\n`), and whether to close.
    fn command(&mut self, line: &str) -> (String, bool) {
        self.lines += 1;
        let answer = match line {
            "HELLO" => format!("HELLO {}", self.name.as_deref().unwrap_or("stranger")),
            "COUNT" => self.lines.to_string(),
            "QUIT" => return ("BYE".into(), true),
            _ => match line.strip_prefix("NAME ") {
                Some(name) if !name.is_empty() => {
                    self.name = Some(name.to_string());
                    "OK".into()
                }
                _ => "ERR unknown command".into(),
            },
        };
        (answer, false)
    }
}

sockets_plugin::export_connection!(Greeter);

#[cfg(test)]
mod tests {
    use super::*;

    fn greeter() -> Greeter {
        Greeter::new(ConnectionInfo { peer: "127.0.0.1:4000".into(), local: "127.0.0.1:7000".into() })
    }

    fn call(g: &mut Greeter, data: &str) -> (String, bool) {
        let out = g.on_data(data.into()).unwrap();
        (String::from_utf8(out.bytes).unwrap(), out.close)
    }

    #[test]
    fn a_conversation() {
        let mut g = greeter();
        assert_eq!(call(&mut g, "HELLO\n"), ("HELLO stranger\n".into(), false));
        assert_eq!(call(&mut g, "NAME Ada\r\nHEL"), ("OK\n".into(), false));
        assert_eq!(call(&mut g, "LO\nCOUNT\nWHAT\n"), ("HELLO Ada\n4\nERR unknown command\n".into(), false));
        assert_eq!(call(&mut g, "QUIT\nHELLO\n"), ("BYE\n".into(), true));
    }

    #[test]
    fn long_lines_close_the_connection() {
        let mut g = greeter();
        let line = "x".repeat(MAX_LINE);
        assert_eq!(call(&mut g, &format!("{line}\n")), ("ERR unknown command\n".into(), false));
        assert_eq!(call(&mut g, &line), (String::new(), false));
        assert_eq!(call(&mut g, "x"), ("ERR line too long\n".into(), true));
    }
}
