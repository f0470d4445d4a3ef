//! `line-echo`: a connection plugin that echoes every line, doing the line
//! framing itself (the benchmark's plugin for the `connection-handler` world).
//!
//! Each call of `on_data` gets the next piece of the stream, split anywhere.
//! The plugin keeps the unterminated end of the stream (a partial line) in
//! the session and answers each call with one `Output`: every line completed
//! by this call, each followed by `\n`, in order. Lines are bytes: no UTF-8
//! is required and a `\r` before the `\n` is echoed like any other byte.
//!
//! - A partial line longer than [`MAX_LINE`] (1 MiB) fails the call with
//!   `line longer than 1 MiB`: the host logs it and closes the connection.
//! - When the peer ends the stream, an unterminated last line is echoed with
//!   a `\n` appended.
//!
//! The lines of a call are echoed as they came, so the work is to find the
//! last `\n` of the call (one scan backwards from its end) and to move bytes
//! only at a line that spans calls:
//!
//! - A call that holds only complete lines, after no partial line (the
//!   common case: the peer writes whole lines), is returned as it came: no
//!   copy, no allocation.
//! - A partial line is kept in a buffer that is reused from call to call.
use sockets_plugin::connection::{Connection, ConnectionInfo, Output};

/// The longest partial line kept, in bytes.
pub const MAX_LINE: usize = 1 << 20;

/// One connection: the unterminated end of the stream so far.
pub struct LineEcho {
    partial: Vec<u8>,
}

impl Connection for LineEcho {
    fn new(_info: ConnectionInfo) -> Self {
        LineEcho { partial: Vec::new() }
    }

    fn on_data(&mut self, mut data: Vec<u8>) -> Result<Output, String> {
        let Some(last) = data.iter().rposition(|&b| b == b'\n') else {
            // No line ends here: all of it extends the partial line.
            check_len(self.partial.len() + data.len())?;
            if self.partial.is_empty() && self.partial.capacity() < data.len() {
                self.partial = data; // take the buffer instead of copying into a small one
            } else {
                self.partial.extend_from_slice(&data);
            }
            return Ok(Output::none());
        };
        let rest = data.len() - (last + 1);
        check_len(rest)?;
        let echo = if self.partial.is_empty() {
            // Only this call's bytes: echo its buffer, minus the new partial line.
            self.partial.extend_from_slice(&data[last + 1..]);
            data.truncate(last + 1);
            data
        } else {
            // The kept partial line comes first: append this call's complete
            // lines to it, and keep this call's buffer for the new partial line.
            let mut echo = std::mem::take(&mut self.partial);
            echo.extend_from_slice(&data[..=last]);
            data.drain(..=last);
            self.partial = data;
            echo
        };
        Ok(Output::reply(echo))
    }

    fn on_end(&mut self) -> Result<Vec<u8>, String> {
        let mut rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            rest.push(b'\n');
        }
        Ok(rest)
    }
}

fn check_len(partial: usize) -> Result<(), String> {
    if partial > MAX_LINE { Err("line longer than 1 MiB".into()) } else { Ok(()) }
}

sockets_plugin::export_connection!(LineEcho);

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> LineEcho {
        LineEcho::new(ConnectionInfo { peer: "127.0.0.1:1".into(), local: "127.0.0.1:2".into() })
    }

    /// Feeds `pieces` one call each; returns the bytes echoed by each call.
    fn feed(s: &mut LineEcho, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
        pieces
            .iter()
            .map(|p| {
                let out = s.on_data(p.to_vec()).expect("on_data");
                assert!(!out.close);
                out.bytes
            })
            .collect()
    }

    #[test]
    fn whole_lines_are_echoed_in_one_output() {
        let mut s = session();
        assert_eq!(feed(&mut s, &[b"a\nbb\n\nccc\n"]), [b"a\nbb\n\nccc\n".to_vec()]);
        assert_eq!(s.on_end().unwrap(), b"");
    }

    #[test]
    fn whole_lines_are_returned_without_copy() {
        let mut s = session();
        let data = b"one\ntwo\n".to_vec();
        let ptr = data.as_ptr();
        let out = s.on_data(data).unwrap();
        assert_eq!(out.bytes.as_ptr(), ptr);
        assert_eq!(out.bytes, b"one\ntwo\n");
    }

    #[test]
    fn partial_lines_are_kept_across_calls() {
        let mut s = session();
        let got = feed(&mut s, &[b"he", b"llo", b"\nwor", b"ld\nx\ny", b"", b"z\n"]);
        let want: [&[u8]; 6] = [b"", b"", b"hello\n", b"world\nx\n", b"", b"yz\n"];
        assert_eq!(got, want);
    }

    #[test]
    fn every_split_gives_the_same_stream() {
        let stream: &[u8] = b"alpha\nbeta\r\n\n\xffgamma\ndelta";
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut s = session();
                let mut out: Vec<u8> = feed(&mut s, &[&stream[..a], &stream[a..b], &stream[b..]]).concat();
                out.extend(s.on_end().unwrap());
                assert_eq!(out, b"alpha\nbeta\r\n\n\xffgamma\ndelta\n", "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn end_echoes_the_unterminated_rest() {
        let mut s = session();
        assert_eq!(feed(&mut s, &[b"a\nrest"]), [b"a\n".to_vec()]);
        assert_eq!(s.on_end().unwrap(), b"rest\n");
    }

    #[test]
    fn a_partial_line_over_1_mib_fails() {
        let mut s = session();
        let half = vec![b'x'; MAX_LINE / 2];
        feed(&mut s, &[&half, &half]);
        assert_eq!(s.on_data(b"x".to_vec()).unwrap_err(), "line longer than 1 MiB");

        let mut s = session();
        let mut big = b"ok\n".to_vec();
        big.resize(3 + MAX_LINE + 1, b'y');
        assert_eq!(s.on_data(big).unwrap_err(), "line longer than 1 MiB");
    }

    #[test]
    fn a_line_of_exactly_1_mib_is_echoed() {
        let mut s = session();
        let line = vec![b'x'; MAX_LINE];
        feed(&mut s, &[&line[..10], &line[10..]]);
        let out = s.on_data(b"\n".to_vec()).unwrap();
        assert_eq!(out.bytes.len(), MAX_LINE + 1);
    }
}
