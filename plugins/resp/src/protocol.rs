//! RESP2 requests in, RESP2 replies out: an incremental parser that keeps
//! a partial request across calls, and the reply encoders.
//!
//! Requests are what Redis accepts: arrays of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`) and inline commands (`GET k\r\n`,
//! split as `redis-server` splits them, quotes and escapes included). The
//! parser keeps its place in a partial request, so a large value arriving
//! in many reads is not scanned again at every read, and it bounds what it
//! holds: a header line, an inline request, a bulk string and a whole
//! request each have a limit, and going over one is a protocol error with
//! Redis's text, after which the connection is closed (as Redis does).

/// Longest inline request and longest `*`/`$` header line, as in Redis
/// (`PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE: usize = 64 << 10;
/// Most arguments of one request, checked at its `*N` header (Redis
/// 7.0.15 takes up to 2^31-1 from an authenticated client). In practice
/// `resp-max-request` stops a request earlier: each argument holds at
/// least [`ARG_OVERHEAD`] bytes, so 8 MiB is about 350,000 arguments.
pub const MAX_ARGS: usize = 1 << 20;
/// What one argument costs besides its bytes, in the bound of a request:
/// its `Vec` header.
const ARG_OVERHEAD: usize = std::mem::size_of::<Vec<u8>>();

/// The parser's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string (Redis's `proto-max-bulk-len`).
    pub max_bulk: usize,
    /// Most bytes one request may hold in memory: its arguments plus
    /// [`ARG_OVERHEAD`] per argument.
    pub max_request: usize,
}

/// A request the peer must not send: the reply is `-ERR Protocol error:
/// {0}` and the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// A request array being read: the arguments so far and what is next.
#[derive(Debug, Default)]
struct Partial {
    /// Arguments still to read.
    left: usize,
    args: Vec<Vec<u8>>,
    /// The length of the bulk string whose header was read, if any.
    bulk: Option<usize>,
    /// Bytes the arguments hold so far, with their overhead.
    held: usize,
}

/// The unread end of a connection's stream and the request being read.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    buf: Vec<u8>,
    /// Where the unparsed bytes of `buf` start.
    pos: usize,
    partial: Option<Partial>,
}

impl Parser {
    /// A parser with `limits`.
    pub fn new(limits: Limits) -> Self {
        Parser { limits, buf: Vec::new(), pos: 0, partial: None }
    }

    /// Append the next bytes of the stream.
    pub fn feed(&mut self, data: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held: the unparsed input and the arguments of a partial
    /// request.
    pub fn held(&self) -> usize {
        self.buf.len() - self.pos + self.partial.as_ref().map_or(0, |p| p.held)
    }

    /// The next complete request (its arguments; never empty), `None` if
    /// more bytes are needed.
    pub fn next_request(&mut self) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            let Some(partial) = self.partial.as_mut() else {
                let Some(&first) = self.buf.get(self.pos) else { return Ok(None) };
                if first != b'*' {
                    match self.inline()? {
                        Some(args) if args.is_empty() => continue,
                        other => return Ok(other),
                    }
                }
                let Some(line) = line(&self.buf[self.pos..], "too big mbulk count string")? else {
                    return Ok(None);
                };
                let count = parse_i64(&line[1..]).ok_or_else(|| error("invalid multibulk length"))?;
                self.pos += line.len() + 2;
                if count > MAX_ARGS as i64 {
                    return Err(error("invalid multibulk length"));
                }
                if count > 0 {
                    let left = count as usize;
                    self.partial =
                        Some(Partial { left, args: Vec::with_capacity(left.min(1024)), ..Default::default() });
                }
                continue;
            };
            if partial.left == 0 {
                let done = self.partial.take().map(|p| p.args).unwrap_or_default();
                return Ok(Some(done));
            }
            let rest = &self.buf[self.pos..];
            match partial.bulk {
                None => {
                    let Some(line) = line(rest, "too big bulk count string")? else { return Ok(None) };
                    // The line may be empty (`\r` first): Redis then names
                    // the `\r`.
                    let first = rest[0];
                    if first != b'$' {
                        return Err(error(&format!("expected '$', got '{}'", char::from(first))));
                    }
                    let len = parse_i64(&line[1..])
                        .filter(|&n| n >= 0 && n as u64 <= self.limits.max_bulk as u64)
                        .ok_or_else(|| error("invalid bulk length"))? as usize;
                    partial.held += len + ARG_OVERHEAD;
                    if partial.held > self.limits.max_request {
                        return Err(error(&format!("request of more than {} bytes", self.limits.max_request)));
                    }
                    self.pos += line.len() + 2;
                    partial.bulk = Some(len);
                }
                Some(len) => {
                    // Redis skips the two bytes after the string without
                    // looking at them; so do we.
                    if rest.len() < len + 2 {
                        return Ok(None);
                    }
                    partial.args.push(rest[..len].to_vec());
                    partial.bulk = None;
                    partial.left -= 1;
                    self.pos += len + 2;
                }
            }
        }
    }

    /// An inline request: one line, split as Redis splits it. `Some(vec![])`
    /// for a blank line.
    fn inline(&mut self) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        let rest = &self.buf[self.pos..];
        let Some(end) = rest.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
            if rest.len() > MAX_INLINE {
                return Err(error("too big inline request"));
            }
            return Ok(None);
        };
        let mut text = &rest[..end];
        if let [head @ .., b'\r'] = text {
            text = head;
        }
        let args = split_args(text).ok_or_else(|| error("unbalanced quotes in request"))?;
        self.pos += end + 1;
        Ok(Some(args))
    }
}

fn error(what: &str) -> ProtocolError {
    ProtocolError(what.to_string())
}

/// The line at the start of `buf`, without its `\r\n`; `None` if it is not
/// complete yet; an error (`too_big`) if it is longer than [`MAX_INLINE`].
fn line<'a>(buf: &'a [u8], too_big: &str) -> Result<Option<&'a [u8]>, ProtocolError> {
    match buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\r') {
        Some(end) if end + 1 < buf.len() => Ok(Some(&buf[..end])),
        Some(_) => Ok(None),
        None if buf.len() > MAX_INLINE => Err(error(too_big)),
        None => Ok(None),
    }
}

/// A decimal `i64` as Redis reads one (`string2ll`): an optional `-`,
/// digits, no leading zero, no `+`, no spaces.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] if !negative => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = i64::from(d - b'0');
        value = value.checked_mul(10)?;
        value = if negative { value.checked_sub(d)? } else { value.checked_add(d)? };
    }
    Some(value)
}

/// Split an inline request into arguments as Redis's `sdssplitargs` does:
/// separated by whitespace; `"..."` with `\n`, `\r`, `\t`, `\b`, `\a`,
/// `\xHH` and `\<char>` escapes; `'...'` with `\'`. A closing quote must be
/// followed by whitespace or the end. `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let mut quote: Option<u8> = None;
        loop {
            match quote {
                Some(b'"') => {
                    let c = *line.get(i)?;
                    if c == b'\\'
                        && line.get(i + 1) == Some(&b'x')
                        && let (Some(h), Some(l)) =
                            (line.get(i + 2).and_then(|&b| hex(b)), line.get(i + 3).and_then(|&b| hex(b)))
                    {
                        arg.push(h * 16 + l);
                        i += 4;
                        continue;
                    }
                    if c == b'\\' && i + 1 < line.len() {
                        arg.push(match line[i + 1] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                        i += 2;
                    } else if c == b'"' {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    } else {
                        arg.push(c);
                        i += 1;
                    }
                }
                Some(_) => {
                    let c = *line.get(i)?;
                    if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                        arg.push(b'\'');
                        i += 2;
                    } else if c == b'\'' {
                        if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                            return None;
                        }
                        i += 1;
                        break;
                    } else {
                        arg.push(c);
                        i += 1;
                    }
                }
                None => match line.get(i) {
                    None => break,
                    Some(&c) if is_space(c) => break,
                    Some(&c @ (b'"' | b'\'')) => {
                        quote = Some(c);
                        i += 1;
                    }
                    Some(&c) => {
                        arg.push(c);
                        i += 1;
                    }
                },
            }
        }
        args.push(arg);
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Reply encoders, appending to a connection's output.
pub mod reply {
    /// `+text\r\n`.
    pub fn simple(out: &mut Vec<u8>, text: &str) {
        out.push(b'+');
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// `-text\r\n`, with any `\r` or `\n` of `text` made a space (as
    /// Redis does: an error is one line).
    pub fn error(out: &mut Vec<u8>, text: &str) {
        out.push(b'-');
        out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        out.extend_from_slice(b"\r\n");
    }

    /// `:n\r\n`.
    pub fn integer(out: &mut Vec<u8>, n: impl std::fmt::Display) {
        out.extend_from_slice(format!(":{n}\r\n").as_bytes());
    }

    /// `$len\r\nbytes\r\n`.
    pub fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    /// `$-1\r\n`.
    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }

    /// `*n\r\n`: the header of an array of `n` replies.
    pub fn array(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(format!("*{n}\r\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_bulk: 1 << 20, max_request: 8 << 20 };

    fn all(p: &mut Parser) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut out = Vec::new();
        while let Some(req) = p.next_request()? {
            out.push(req);
        }
        Ok(out)
    }

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn requests_split_at_every_byte_parse_the_same() {
        let stream = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\nPING\r\n\r\n*0\r\n*-1\r\nget \"x y\" 'z'\n*1\r\n$4\r\nPING\r\n";
        let want = vec![
            vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\nb".to_vec()],
            args(&["PING"]),
            args(&["get", "x y", "z"]),
            args(&["PING"]),
        ];
        let mut whole = Parser::new(LIMITS);
        whole.feed(stream);
        assert_eq!(all(&mut whole).unwrap(), want);
        assert_eq!(whole.held(), 0);
        for cut in 0..stream.len() {
            let mut p = Parser::new(LIMITS);
            p.feed(&stream[..cut]);
            let mut got = all(&mut p).unwrap();
            p.feed(&stream[cut..]);
            got.extend(all(&mut p).unwrap());
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut p = Parser::new(LIMITS);
        let mut got = Vec::new();
        for b in stream {
            p.feed(&[*b]);
            got.extend(all(&mut p).unwrap());
        }
        assert_eq!(got, want);
    }

    #[test]
    fn protocol_errors_have_redis_text() {
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$1048577\r\n", "invalid bulk length"),
            (b"*99999999999\r\n", "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\nx\r\n", "expected '$', got 'x'"),
            (b"*1\r\n\r\n", "expected '$', got '\r'"),
            (b"set \"a\r\n", "unbalanced quotes in request"),
            (b"set \"a\"b\r\n", "unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let mut p = Parser::new(LIMITS);
            p.feed(input);
            assert_eq!(all(&mut p), Err(ProtocolError(want.to_string())), "{input:?}");
        }
        let mut p = Parser::new(LIMITS);
        p.feed(&vec![b'a'; MAX_INLINE + 1]);
        assert_eq!(all(&mut p), Err(error("too big inline request")));
        let mut p = Parser::new(LIMITS);
        p.feed(b"*");
        p.feed(&vec![b'1'; MAX_INLINE + 1]);
        assert_eq!(all(&mut p), Err(error("too big mbulk count string")));
    }

    #[test]
    fn a_request_over_its_bound_is_refused_before_it_is_read() {
        let mut p = Parser::new(Limits { max_bulk: 100, max_request: 250 });
        p.feed(b"*4\r\n$3\r\nSET\r\n$100\r\n");
        p.feed(&[b'x'; 102]);
        p.feed(b"$100\r\n");
        assert_eq!(all(&mut p), Err(error("request of more than 250 bytes")));
        assert!(p.held() < 400);
    }

    /// Random bytes and random mutations of valid requests, fed in random
    /// pieces: the parser never panics and never holds more than its
    /// bounds allow (a small stand-in for a fuzz target).
    #[test]
    fn random_input_never_panics_and_stays_bounded() {
        let limits = Limits { max_bulk: 64, max_request: 256 };
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"*$\r\n0123456789-\"' \\xabGETS";
        for round in 0..3000 {
            let mut stream: Vec<u8> = if round % 2 == 0 {
                (0..rand() % 200).map(|_| alphabet[(rand() % alphabet.len() as u64) as usize]).collect()
            } else {
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\nget \"a\\x41\" 'b'\r\n".to_vec()
            };
            for _ in 0..rand() % 4 {
                if !stream.is_empty() {
                    let at = (rand() % stream.len() as u64) as usize;
                    stream[at] = alphabet[(rand() % alphabet.len() as u64) as usize];
                }
            }
            let mut p = Parser::new(limits);
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + (rand() % rest.len() as u64) as usize;
                p.feed(&rest[..n]);
                rest = &rest[n..];
                match all(&mut p) {
                    Ok(_) => assert!(p.held() <= MAX_INLINE + limits.max_request + stream.len()),
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn inline_arguments_split_like_redis() {
        let cases: &[(&[u8], &[&[u8]])] = &[
            (b"  set  a   b ", &[b"set", b"a", b"b"]),
            (b"set \"a\\x00\\r\\n\\\"\" 'it\\'s'", &[b"set", b"a\x00\r\n\"", b"it's"]),
            (b"echo \"\"", &[b"echo", b""]),
            (b"a\tb", &[b"a", b"b"]),
        ];
        for (line, want) in cases {
            let want: Vec<Vec<u8>> = want.iter().map(|a| a.to_vec()).collect();
            assert_eq!(split_args(line), Some(want), "{line:?}");
        }
        assert_eq!(split_args(b"'abc"), None);
    }

    #[test]
    fn integers_parse_as_redis_parses_them() {
        for (text, want) in [
            ("0", Some(0)),
            ("-5", Some(-5)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("007", None),
            ("+1", None),
            ("-0", None),
            (" 1", None),
            ("", None),
            ("-", None),
        ] {
            assert_eq!(parse_i64(text.as_bytes()), want, "{text}");
        }
    }
}
