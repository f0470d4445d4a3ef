//! `session-probe`: a test fixture for the `connection-handler` world that
//! reports what it was given and misbehaves on command.
//!
//! Every complete line of the stream (without its `\n`) is one command; the
//! unterminated end of the stream is kept for the next call, as `line-echo`
//! does, and a partial line longer than 1 MiB fails the call with
//! `line longer than 1 MiB`. The replies to all the lines of one `on_data`
//! call are concatenated into one `Output`.
//!
//! | line        | behaviour                                                        |
//! |-------------|------------------------------------------------------------------|
//! | `whoami`    | replies `peer=PEER local=LOCAL\n`, as the host passed them        |
//! | `set VALUE` | stores VALUE for this connection, replies `ok\n`                 |
//! | `get`       | replies the stored VALUE and `\n` (just `\n` if none was set)    |
//! | `count`     | replies `LINES BYTES\n`: the lines seen on this connection, this one included, and the bytes of data received on it so far, this call's included |
//! | `calls`     | replies the number of `on_data` calls so far, this one included, and `\n` |
//! | `trap`      | panics (a trap)                                                  |
//! | `err`       | returns `err("asked to fail")`                                   |
//! | `spin`      | spins forever (cut off by `--timeout`)                           |
//! | `sleep MS`  | sleeps MS milliseconds (a WASI host call), then replies `slept\n` |
//! | `quit`      | replies `bye\n` and closes; later lines of the same call are ignored |
//! | `big N`     | replies N bytes of `x`, then `\n`                                |
//! | `global`    | bumps a `static` counter and replies its value and `\n`: two connections share it only if they share an instance |
//! | anything else | echoes the line and `\n`                                      |
//!
//! - Opening: logs `session-probe: open peer=PEER local=LOCAL` (info).
//! - `on_end` (the peer closed its side): returns `end after LINES lines\n`.
//! - Dropping the session (its destructor, however the connection ended):
//!   logs `session-probe: dropped after LINES lines peer=PEER` (info).
use std::sync::atomic::{AtomicU64, Ordering};

use sockets_plugin::connection::{Connection, ConnectionInfo, Output, log};

/// The longest partial line kept, in bytes.
const MAX_LINE: usize = 1 << 20;

static GLOBAL: AtomicU64 = AtomicU64::new(0);

/// One connection.
pub struct Probe {
    info: ConnectionInfo,
    /// The unterminated end of the stream so far.
    partial: Vec<u8>,
    lines: u64,
    bytes: u64,
    calls: u64,
    value: Vec<u8>,
}

/// What a command asks of the call.
enum Next {
    Continue,
    Close,
}

impl Connection for Probe {
    fn new(info: ConnectionInfo) -> Self {
        log::info(&format!("session-probe: open peer={} local={}", info.peer, info.local));
        Probe { info, partial: Vec::new(), lines: 0, bytes: 0, calls: 0, value: Vec::new() }
    }

    fn on_data(&mut self, data: Vec<u8>) -> Result<Output, String> {
        self.calls += 1;
        self.bytes += data.len() as u64;
        let mut buf = if self.partial.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(&data);
            buf
        };
        let mut reply = Vec::new();
        let mut start = 0;
        while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + len];
            start += len + 1;
            self.lines += 1;
            if let Next::Close = self.command(line, &mut reply)? {
                return Ok(Output::reply_and_close(reply));
            }
        }
        buf.drain(..start);
        if buf.len() > MAX_LINE {
            return Err("line longer than 1 MiB".into());
        }
        self.partial = buf;
        Ok(Output::reply(reply))
    }

    fn on_end(&mut self) -> Result<Vec<u8>, String> {
        Ok(format!("end after {} lines\n", self.lines).into_bytes())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        log::info(&format!("session-probe: dropped after {} lines peer={}", self.lines, self.info.peer));
    }
}

impl Probe {
    /// Runs one command, appending its reply to `reply`.
    fn command(&mut self, line: &[u8], reply: &mut Vec<u8>) -> Result<Next, String> {
        match line {
            b"whoami" => {
                reply.extend_from_slice(format!("peer={} local={}", self.info.peer, self.info.local).as_bytes())
            }
            b"get" => reply.extend_from_slice(&self.value),
            b"count" => reply.extend_from_slice(format!("{} {}", self.lines, self.bytes).as_bytes()),
            b"calls" => reply.extend_from_slice(self.calls.to_string().as_bytes()),
            b"trap" => panic!("asked to trap"),
            b"err" => return Err("asked to fail".into()),
            b"spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            b"quit" => {
                reply.extend_from_slice(b"bye\n");
                return Ok(Next::Close);
            }
            b"global" => reply.extend_from_slice((GLOBAL.fetch_add(1, Ordering::SeqCst) + 1).to_string().as_bytes()),
            _ if line.starts_with(b"set ") => {
                self.value = line[4..].to_vec();
                reply.extend_from_slice(b"ok");
            }
            _ if line.starts_with(b"sleep ") => {
                std::thread::sleep(std::time::Duration::from_millis(number(&line[6..])?));
                reply.extend_from_slice(b"slept");
            }
            _ if line.starts_with(b"big ") => {
                let n = usize::try_from(number(&line[4..])?).map_err(|_| "bad number")?;
                reply.resize(reply.len() + n, b'x');
            }
            _ => reply.extend_from_slice(line),
        }
        reply.push(b'\n');
        Ok(Next::Continue)
    }
}

fn number(digits: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or_else(|| "bad number".to_string())
}

sockets_plugin::export_connection!(Probe);

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe::new(ConnectionInfo { peer: "127.0.0.1:4000".into(), local: "127.0.0.1:7000".into() })
    }

    fn call(p: &mut Probe, data: &[u8]) -> Output {
        p.on_data(data.to_vec()).expect("on_data")
    }

    #[test]
    fn commands_of_one_call_share_one_output() {
        let mut p = probe();
        let out = call(&mut p, b"whoami\nset a b\nget\nhello\nbig 3\n");
        assert_eq!(out, Output::reply(&b"peer=127.0.0.1:4000 local=127.0.0.1:7000\nok\na b\nhello\nxxx\n"[..]));
    }

    #[test]
    fn lines_split_across_calls() {
        let mut p = probe();
        assert_eq!(call(&mut p, b"g"), Output::none());
        assert_eq!(call(&mut p, b"e"), Output::none());
        assert_eq!(call(&mut p, b"t\ncou"), Output::reply(&b"\n"[..]));
        assert_eq!(call(&mut p, b"nt\ncalls\n"), Output::reply(&b"2 16\n4\n"[..]));
        assert_eq!(p.on_end().unwrap(), b"end after 3 lines\n");
    }

    #[test]
    fn quit_closes_and_ignores_the_rest_of_the_call() {
        let mut p = probe();
        assert_eq!(call(&mut p, b"a\nquit\nb\n"), Output::reply_and_close(&b"a\nbye\n"[..]));
    }

    #[test]
    fn err_and_long_lines_fail_the_call() {
        let mut p = probe();
        assert_eq!(p.on_data(b"a\nerr\n".to_vec()).unwrap_err(), "asked to fail");
        let mut p = probe();
        assert_eq!(p.on_data(vec![b'x'; MAX_LINE + 1]).unwrap_err(), "line longer than 1 MiB");
        assert_eq!(p.on_data(b"sleep x\n".to_vec()).unwrap_err(), "bad number");
    }

    #[test]
    fn global_counts_across_sessions_of_an_instance() {
        let (mut a, mut b) = (probe(), probe());
        let first: u64 = String::from_utf8(call(&mut a, b"global\n").bytes).unwrap().trim().parse().unwrap();
        let second: u64 = String::from_utf8(call(&mut b, b"global\n").bytes).unwrap().trim().parse().unwrap();
        assert!(second > first);
    }
}
