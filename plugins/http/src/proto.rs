//! HTTP/1.1 over a byte stream, without any WebAssembly bindings: framing
//! (requests split anywhere or pipelined), the limits, and the routes. The
//! session in `lib.rs` feeds it the bytes of `on-data` and gives it the
//! key-value store through [`Services`], so the whole protocol is unit-tested
//! natively with a fake store.
//!
//! Buffering is bounded: at most one request is kept between calls, and a
//! request is at most `max-header-bytes` of head plus `max-body` of body;
//! anything larger is answered 431 or 413 and the connection is closed
//! before more of it is kept.

use std::borrow::Cow;

/// Limits of one request, from `wasi:config` (see `lib.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest `Content-Length` accepted; more is 413.
    pub max_body: usize,
    /// Largest request head (request line and headers, with the blank
    /// line); more is 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request; more is 431.
    pub max_headers: usize,
    /// Most bytes of responses built for one read: the response that
    /// passes it is the last one of the read (`Connection: close`), and the
    /// pipelined requests after it are not answered (the client sends them
    /// again on a new connection, RFC 9112 §9.3.1).
    pub max_output: usize,
}

/// The defaults: 1 MiB of body (the host's default `--kv-max-value`), 8 KiB
/// of head (nginx's `large_client_header_buffers` line size), 100 headers,
/// and 1 MiB of responses per read (the host's default `--max-reply`).
pub const DEFAULT_LIMITS: Limits =
    Limits { max_body: 1 << 20, max_header_bytes: 8 << 10, max_headers: 100, max_output: 1 << 20 };

/// The most header fields `max-headers` may allow: the parser's slots are
/// allocated per request.
pub const MAX_HEADERS_CAP: usize = 1000;

/// A failed key-value call, as text (the host names the flag of a limit).
#[derive(Debug)]
pub struct KvError(pub String);

/// What a session needs from the host: the store and the clock.
pub trait Services {
    /// The value of `key`, if any.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    /// Whether `key` has a value.
    fn exists(&mut self, key: &str) -> Result<bool, KvError>;
    /// Set `key` to `value`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Remove `key` (no error if it has no value).
    fn delete(&mut self, key: &str) -> Result<(), KvError>;
    /// The `Date` header's value, now.
    fn date(&mut self) -> String;
}

/// The head of a request whose body has not all arrived yet.
#[derive(Debug)]
struct Head {
    method: Method,
    /// The path, before `?`.
    path: String,
    /// Bytes of the head, blank line included.
    head_len: usize,
    body_len: usize,
    keep_alive: bool,
    /// `Connection: keep-alive` must be said (an HTTP/1.0 client asked).
    say_keep_alive: bool,
    /// `Expect: 100-continue` was asked and not yet answered.
    expect_continue: bool,
    /// HTTP/1.1 (1) or HTTP/1.0 (0).
    minor: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Put,
    Delete,
    Other,
}

/// One connection's protocol state.
pub struct Http<S> {
    services: S,
    limits: Limits,
    /// A `wasi:config` value that could not be used: every request is
    /// answered 500 with it, so the operator sees why.
    config_error: Option<String>,
    /// Bytes received and not yet consumed: at most one partial request.
    buf: Vec<u8>,
    /// The current request's head, once parsed, while its body arrives.
    head: Option<Head>,
    /// The `Date` of this call's responses, made once per call.
    date: Option<String>,
}

/// What one call produced: the bytes to write, and whether to close after.
pub struct Reply {
    /// Responses, in request order.
    pub bytes: Vec<u8>,
    /// Close the connection after `bytes`.
    pub close: bool,
}

impl<S: Services> Http<S> {
    /// A connection's state, with its limits or the reason they are wrong.
    pub fn new(services: S, limits: Result<Limits, String>) -> Self {
        let (limits, config_error) = match limits {
            Ok(l) => (l, None),
            Err(e) => (DEFAULT_LIMITS, Some(e)),
        };
        Http { services, limits, config_error, buf: Vec::new(), head: None, date: None }
    }

    /// The next bytes of the stream: every complete request in them (and in
    /// what was kept) is answered, in order; the rest is kept.
    pub fn feed(&mut self, data: &[u8]) -> Reply {
        self.date = None;
        // The common case, whole requests in one read, parses `data` where
        // it is; only a partial request is copied into the buffer.
        let mut out = Vec::new();
        if self.buf.is_empty() {
            let (used, close) = self.serve(data, &mut out);
            if !close {
                self.buf.extend_from_slice(&data[used..]);
            }
            return Reply { bytes: out, close };
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.extend_from_slice(data);
        let (used, close) = self.serve(&buf, &mut out);
        buf.drain(..used);
        self.buf = if close { Vec::new() } else { buf };
        Reply { bytes: out, close }
    }

    /// Answer the complete requests at the start of `input`; returns the
    /// bytes they used and whether to close.
    fn serve(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            if self.head.is_none() {
                if rest.is_empty() {
                    return (at, false);
                }
                match self.parse_head(rest, out) {
                    Parsed::Partial => return (at, false),
                    Parsed::Closed => return (at, true),
                    Parsed::Head(head) => self.head = Some(head),
                }
            }
            let Some(head) = self.head.as_mut() else { return (at, false) };
            let end = head.head_len + head.body_len;
            if rest.len() < end {
                if head.expect_continue && head.minor == 1 {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                head.expect_continue = false;
                return (at, false);
            }
            let Some(head) = self.head.take() else { return (at, false) };
            let body = &rest[head.head_len..end];
            at += end;
            let more = at < input.len();
            if self.respond(&head, body, more, out) {
                return (at, true);
            }
        }
    }

    /// Parse the head at the start of `input`. An error is answered here
    /// (`Closed`).
    fn parse_head(&mut self, input: &[u8], out: &mut Vec<u8>) -> Parsed {
        // The default's slots on the stack; a larger limit allocates them.
        let mut stack = [httparse::EMPTY_HEADER; DEFAULT_LIMITS.max_headers];
        let mut heap = Vec::new();
        let slots = if self.limits.max_headers <= stack.len() {
            &mut stack[..self.limits.max_headers]
        } else {
            heap.resize(self.limits.max_headers, httparse::EMPTY_HEADER);
            &mut heap[..]
        };
        let mut req = httparse::Request::new(slots);
        let head_len = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) if n > self.limits.max_header_bytes => {
                return self.fail(out, 431, "request header fields too large");
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if input.len() > self.limits.max_header_bytes => {
                return self.fail(out, 431, "request header fields too large");
            }
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(httparse::Error::TooManyHeaders) => return self.fail(out, 431, "too many header fields"),
            Err(httparse::Error::Version) if !version_shaped(input) => {
                return self.fail(out, 400, "malformed request: invalid HTTP version");
            }
            Err(httparse::Error::Version) => return self.fail(out, 505, "the versions served are HTTP/1.0 and 1.1"),
            Err(e) => return self.fail(out, 400, &format!("malformed request: {e}")),
        };
        let minor = req.version.unwrap_or(1);
        let (mut body_len, mut chunked, mut close, mut keep_alive, mut hosts) = (None, false, false, false, 0);
        let mut expect_continue = false;
        for h in req.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let Some(n) = parse_length(h.value) else {
                    return self.fail(out, 400, "Content-Length is not a number");
                };
                if body_len.is_some_and(|seen| seen != n) {
                    return self.fail(out, 400, "two different Content-Length values");
                }
                body_len = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            } else if name.eq_ignore_ascii_case("host") {
                hosts += 1;
            } else if name.eq_ignore_ascii_case("expect") {
                if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    return self.fail(out, 417, "only Expect: 100-continue is understood");
                }
                expect_continue = true;
            }
        }
        if chunked && body_len.is_some() {
            return self.fail(out, 400, "both Content-Length and Transfer-Encoding");
        }
        if chunked {
            return self.fail(out, 411, "a body needs Content-Length (Transfer-Encoding is not served)");
        }
        if hosts > 1 || (minor == 1 && hosts == 0) {
            return self.fail(out, 400, "exactly one Host header is required in HTTP/1.1");
        }
        let body_len = body_len.unwrap_or(0);
        if body_len > self.limits.max_body as u64 {
            let why = format!("the body is over {} bytes (max-body)", self.limits.max_body);
            return self.fail(out, 413, &why);
        }
        let method = match req.method.unwrap_or("") {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        };
        let Some(path) = origin_path(req.path.unwrap_or("")) else {
            return self.fail(out, 400, "the request target is not a path");
        };
        Parsed::Head(Head {
            method,
            path: path.to_string(),
            head_len,
            body_len: body_len as usize,
            keep_alive: !close && (minor == 1 || keep_alive),
            say_keep_alive: minor == 0 && keep_alive && !close,
            expect_continue: expect_continue && body_len > 0,
            minor,
        })
    }

    /// Answer an unusable request and close.
    fn fail(&mut self, out: &mut Vec<u8>, status: u16, why: &str) -> Parsed {
        let body = format!("{} {why}\n", reason(status));
        let date = self.date();
        write_response(out, &date, status, TEXT, body.as_bytes(), false, Conn::Close);
        Parsed::Closed
    }

    fn date(&mut self) -> String {
        if self.date.is_none() {
            self.date = Some(self.services.date());
        }
        self.date.clone().unwrap_or_default()
    }

    /// Route a complete request and write its response; returns whether
    /// the connection closes after it. `more`: bytes of the read follow it.
    fn respond(&mut self, head: &Head, body: &[u8], more: bool, out: &mut Vec<u8>) -> bool {
        let (status, headers, payload) = self.route(head, body);
        let head_only = head.method == Method::Head;
        // Past max-output with requests still to answer: this response is
        // the last, so that one read cannot make the plugin build an output
        // of (pipelined requests x value size). Its head is not counted.
        let sent = if head_only { 0 } else { payload.len() };
        let full = more && out.len().saturating_add(sent) > self.limits.max_output;
        let conn = match (head.keep_alive && !full, head.say_keep_alive) {
            (false, _) => Conn::Close,
            (true, true) => Conn::KeepAlive,
            (true, false) => Conn::Default,
        };
        let date = self.date();
        write_response(out, &date, status, headers, &payload, head_only, conn);
        conn == Conn::Close
    }

    fn route(&mut self, head: &Head, body: &[u8]) -> Routed {
        if let Some(e) = &self.config_error {
            return text(500, format!("Internal Server Error: {e}\n"));
        }
        if head.path == "/" {
            return match head.method {
                Method::Get | Method::Head => (200, TEXT, Cow::Borrowed(&b"Hello, World!\n"[..])),
                _ => not_allowed(&[("Allow", "GET, HEAD"), ("Content-Type", "text/plain")]),
            };
        }
        let Some(raw_key) = head.path.strip_prefix("/kv/").filter(|k| !k.is_empty()) else {
            return (404, TEXT, Cow::Borrowed(&b"Not Found\n"[..]));
        };
        let key = match decode_key(raw_key) {
            Ok(key) => key,
            Err(why) => return text(400, format!("Bad Request: {why}\n")),
        };
        let result = match head.method {
            Method::Get | Method::Head => self.services.get(&key).map(|value| match value {
                Some(v) => (200, OCTETS, Cow::Owned(v)),
                None => (404, TEXT, Cow::Borrowed(&b"Not Found\n"[..])),
            }),
            Method::Put => self.services.exists(&key).and_then(|existed| {
                self.services.set(&key, body)?;
                Ok(if existed {
                    (204, NONE, Cow::Borrowed(&b""[..]))
                } else {
                    (201, TEXT, Cow::Borrowed(&b"Created\n"[..]))
                })
            }),
            Method::Delete => self.services.delete(&key).map(|()| (204, NONE, Cow::Borrowed(&b""[..]))),
            Method::Other => {
                return not_allowed(&[("Allow", "GET, HEAD, PUT, DELETE"), ("Content-Type", "text/plain")]);
            }
        };
        result.unwrap_or_else(|KvError(e)| {
            // The host names the flag of a limit in its error.
            let status = if e.contains("--kv-max-key") {
                414
            } else if e.contains("--kv-max-value") {
                413
            } else if e.contains("--kv-max-bucket-bytes") {
                507
            } else {
                500
            };
            text(status, format!("{}: store: {e}\n", reason(status)))
        })
    }
}

/// A response before it is written: status, headers, body.
type Routed = (u16, &'static [(&'static str, &'static str)], Cow<'static, [u8]>);

const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain")];
const OCTETS: &[(&str, &str)] = &[("Content-Type", "application/octet-stream")];
const NONE: &[(&str, &str)] = &[];

fn text(status: u16, body: String) -> Routed {
    (status, TEXT, Cow::Owned(body.into_bytes()))
}

fn not_allowed(headers: &'static [(&'static str, &'static str)]) -> Routed {
    (405, headers, Cow::Borrowed(&b"Method Not Allowed\n"[..]))
}

enum Parsed {
    Partial,
    Closed,
    Head(Head),
}

/// Which `Connection` header a response carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// None: HTTP/1.1's default, keep-alive.
    Default,
    /// `Connection: keep-alive`, to an HTTP/1.0 client that asked for it.
    KeepAlive,
    /// `Connection: close`: the connection is closed after this response.
    Close,
}

fn write_response(
    out: &mut Vec<u8>,
    date: &str,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
    conn: Conn,
) {
    // Plain appends: core::fmt showed in the profile of the hello route.
    out.reserve(160 + if head_only { 0 } else { body.len() });
    out.extend_from_slice(b"HTTP/1.1 ");
    push_number(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    push_number(out, body.len() as u64);
    out.extend_from_slice(match conn {
        Conn::Default => b"\r\n\r\n".as_slice(),
        Conn::KeepAlive => b"\r\nConnection: keep-alive\r\n\r\n",
        Conn::Close => b"\r\nConnection: close\r\n\r\n",
    });
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// Append `n` in decimal.
fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Internal Server Error",
    }
}

/// Whether the version of the request line at the start of `input` (after
/// empty lines), which httparse refused, is shaped `HTTP/d.d` (or the start
/// of it): then it is a version not served, 505; otherwise (`http/1.1`,
/// `FOO`) the line is malformed, 400 (RFC 9112 §2.3: HTTP-name is
/// case-sensitive). httparse refuses a version only after a valid method and
/// target, each followed by one space, and looks at 8 bytes of it.
fn version_shaped(input: &[u8]) -> bool {
    let start = input.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(input.len());
    let Some(version) = input[start..].splitn(3, |&b| b == b' ').nth(2) else { return false };
    version
        .iter()
        .take(8)
        .zip(b"HTTP/0.0")
        .all(|(&got, &want)| if want == b'0' { got.is_ascii_digit() } else { got == want })
}

/// `Content-Length`: ASCII digits only (no sign, no list). A number too
/// large for u64 saturates, so it is refused as too large, not malformed.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0u64, |n, &d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// The path of a request target, without the query: origin form (`/a?b`)
/// or absolute form (`http://host/a?b`, which a proxy-style client sends).
fn origin_path(target: &str) -> Option<&str> {
    let target = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return None;
        };
        rest.find('/').map_or("/", |i| &rest[i..])
    };
    Some(target.split(['?', '#']).next().unwrap_or(target))
}

/// The key of `/kv/{key}`: percent-decoded, and it must be UTF-8 (keys are
/// strings in `wasi:keyvalue`). A `%` not followed by two hex digits is an
/// error, not a literal `%`.
fn decode_key(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' && !(bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))) {
            return Err("a % in the key is not followed by two hex digits");
        }
    }
    percent_encoding::percent_decode(bytes)
        .decode_utf8()
        .map(|k| k.into_owned())
        .map_err(|_| "the key is not UTF-8 once decoded")
}

#[cfg(test)]
mod tests;
