"""HTTP/1.1 over a byte stream, without any WebAssembly bindings.

The same protocol as the Rust plugin's plugins/http/src/proto.rs (same
routes, limits, status codes and closing rules), with its own parser
instead of httparse. Pure Python, so that it is unit-tested with a plain
`python3` (test_http_proto.py); connection.py wraps it in the exported
`session` resource and gives it the store and the clock.

Buffering is bounded: at most one request is kept between calls, and a
request is at most `max_header_bytes` of head plus `max_body` of body;
anything larger is answered 431 or 413 and the connection is closed.
"""

import re

# Largest body, head and number of header fields (see Limits).
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_HEADER_BYTES = 8 << 10
DEFAULT_MAX_HEADERS = 100
# Most bytes of responses built for one read (see Limits.max_output).
DEFAULT_MAX_OUTPUT = 1 << 20
# Most bytes of responses and stored values one connection moves (see
# Limits.max_moved; the Python plugin's default, under --max-memory's 64 MiB).
DEFAULT_MAX_MOVED = 32 << 20
# The most header fields `max-headers` may allow (as in the Rust plugin).
MAX_HEADERS_CAP = 1000

REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
    507: "Insufficient Storage",
}

# RFC 9110 token (method, header name) and request target (visible ASCII
# and obs-text), as httparse accepts them: the longest run at a position.
_TOKEN_RUN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_TARGET_RUN = re.compile(rb"[\x21-\x7e\x80-\xff]*")
# Empty lines before a request line (RFC 9112 2.2), as httparse skips them.
_EMPTY_LINES = re.compile(rb"(?:\r\n|\n)*")
_HEX = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_VERSIONS = {b"HTTP/1.1": 1, b"HTTP/1.0": 0}
# The end of a head: the first empty line.
_BLANK_LINE = re.compile(rb"\n\r?\n")
# A well-formed request line, and a header field (its value still to be
# stripped of spaces): one match each on the common path.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e\x80-\xff]+) HTTP/1\.([01])\r?\Z")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([\t\x20-\x7e\x80-\xff]*?)\r?\Z")


class Limits:
    """The limits of one request, and `max_output`: the most bytes of
    responses built for one read. The response that passes it is the last
    one of the read (`Connection: close`) and the pipelined requests after it
    are not answered (the client sends them again, RFC 9112 9.3.1)."""

    def __init__(self, max_body=DEFAULT_MAX_BODY, max_header_bytes=DEFAULT_MAX_HEADER_BYTES,
                 max_headers=DEFAULT_MAX_HEADERS, max_output=DEFAULT_MAX_OUTPUT, max_moved=None):
        self.max_body = max_body
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_output = max_output
        # Bytes of responses and stored values over the connection's life
        # (None: no limit): the response that passes it says Connection:
        # close. connection.py sets it because componentize-py 0.25 never
        # frees the bytes a plugin hands to the host (see connection.py).
        self.max_moved = max_moved


class KvError(Exception):
    """A failed key-value call; the text names the host's flag of a limit."""


class _Head:
    """The head of a request whose body has not all arrived yet."""

    __slots__ = ("method", "path", "head_len", "body_len", "keep_alive", "say_keep_alive",
                 "expect_continue", "minor")


# The 400 texts: httparse's error names, so that both plugins say the same.
_BAD_TOKEN = "malformed request: invalid token"
_BAD_NEW_LINE = "malformed request: invalid new line"
_BAD_VERSION = "malformed request: invalid HTTP version"
_BAD_NAME = "malformed request: invalid header name"
_BAD_VALUE = "malformed request: invalid header value"


class _Failed(Exception):
    """A request that cannot be served: answered `status`, then closed."""

    def __init__(self, status, why):
        super().__init__(why)
        self.status = status
        self.why = why


def _version_error(version):
    """A version that is not HTTP/1.0 or 1.1: 505 if it is shaped HTTP/d.d
    (or the start of it: the rest has not arrived), 400 if it is not a
    version at all (`http/1.1`, `FOO`): RFC 9112 2.3, HTTP-name is
    case-sensitive."""
    for got, want in zip(version, b"HTTP/0.0"):
        if not (0x30 <= got <= 0x39 if want == 0x30 else got == want):
            return _Failed(400, _BAD_VERSION)
    return _Failed(505, "the versions served are HTTP/1.0 and 1.1")


def _request_line(buf, s):
    """The request line at `s`, checked byte by byte as httparse does (also
    before it has all arrived, so that garbage is refused at once):
    (method, target, minor, end of the line), None if it is a correct start,
    or raises _Failed."""
    n = len(buf)
    e = _TOKEN_RUN.match(buf, s).end()
    if e == n:
        return None
    if e == s or buf[e] != 0x20:
        raise _Failed(400, _BAD_TOKEN)
    u = _TARGET_RUN.match(buf, e + 1).end()
    if u == n:
        return None
    if u == e + 1 or buf[u] != 0x20:
        raise _Failed(400, _BAD_TOKEN)
    try:
        target = buf[e + 1:u].decode("utf-8")
    except UnicodeDecodeError:
        raise _Failed(400, _BAD_TOKEN) from None
    version = buf[u + 1:u + 9]
    if len(version) < 8:
        if not b"HTTP/1.".startswith(version[:7]):
            raise _version_error(version)
        return None
    minor = _VERSIONS.get(version)
    if minor is None:
        raise _version_error(version)
    i = u + 9
    if i < n and buf[i] == 0x0D:
        i += 1
        if i < n and buf[i] != 0x0A:
            raise _Failed(400, _BAD_NEW_LINE)
    elif i < n and buf[i] != 0x0A:
        raise _Failed(400, _BAD_NEW_LINE)
    if i >= n:
        return None
    return buf[s:e], target, minor, i + 1


def _field_error(line):
    """Why a header line that is not `name: value` is refused, in httparse's
    words."""
    if line[:1] == b"\r":
        return _Failed(400, _BAD_NEW_LINE)
    name_end = _TOKEN_RUN.match(line).end()
    if name_end == 0 or line[name_end:name_end + 1] != b":":
        return _Failed(400, _BAD_NAME)
    return _Failed(400, _BAD_VALUE)


def _head_end(buf, start):
    """The end of the head that begins at `start` (after its blank line), or -1.

    Lines end with CRLF or a bare LF, as httparse accepts them."""
    m = _BLANK_LINE.search(buf, start)
    return -1 if m is None else m.end()


# More digits than this is over any limit: answered 413 without int(),
# which refuses strings of over 4300 digits (and is slow before that).
_MAX_LENGTH_DIGITS = 20


def _parse_length(value):
    """`Content-Length`: ASCII digits only; None if not. A number of more
    than 20 digits is returned as 10**20 (over any limit: 413), as the Rust
    plugin saturates it."""
    value = value.strip(b" \t")
    if not value or not value.isdigit():
        return None
    if len(value) > _MAX_LENGTH_DIGITS:
        return 10 ** _MAX_LENGTH_DIGITS
    return int(value)


def _origin_path(target):
    """The path of a request target without its query, or None."""
    if not target.startswith("/"):
        lower = target[:8].lower()
        if lower.startswith("http://"):
            rest = target[7:]
        elif lower.startswith("https://"):
            rest = target[8:]
        else:
            return None
        slash = rest.find("/")
        target = "/" if slash == -1 else rest[slash:]
    for sep in "?#":
        cut = target.find(sep)
        if cut != -1:
            target = target[:cut]
    return target


def _percent_decode(raw):
    """`/kv/{key}`'s key: the bytes of the target (UTF-8, as sent) percent-
    decoded, and UTF-8 (keys are strings)."""
    if "%" not in raw:
        return raw
    raw = raw.encode()
    if _HEX.search(raw):
        raise ValueError("a % in the key is not followed by two hex digits")
    out = bytearray()
    parts = raw.split(b"%")
    out += parts[0]
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out += part[2:]
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the key is not UTF-8 once decoded") from None


_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\nDate: " % (status, reason.encode()) for status, reason in REASONS.items()}
_CONNECTION = {None: b"\r\n\r\n", b"keep-alive": b"\r\nConnection: keep-alive\r\n\r\n",
               b"close": b"\r\nConnection: close\r\n\r\n"}


def _response(status, date, headers, body, head_only, conn):
    """The bytes of one response. `date` is bytes; `conn`: None,
    b"keep-alive" or b"close"."""
    fields = b"".join(b"%s: %s\r\n" % field for field in headers)
    return b"%s%s\r\n%sContent-Length: %d%s%s" % (
        _STATUS_LINES[status], date, fields, len(body), _CONNECTION[conn], b"" if head_only else body)


_TEXT = ((b"Content-Type", b"text/plain"),)
_OCTETS = ((b"Content-Type", b"application/octet-stream"),)


def _text(status, body):
    return status, _TEXT, body


def _not_allowed(allow):
    return 405, ((b"Allow", allow), (b"Content-Type", b"text/plain")), b"Method Not Allowed\n"


class Http:
    """One connection's protocol state.

    `services` has get(key) -> bytes | None, exists(key) -> bool,
    set(key, value), delete(key) (raising KvError) and date() -> str.
    `limits` is a Limits, or a str saying why the configured ones are
    unusable: then every request is answered 500 with it.
    """

    def __init__(self, services, limits):
        self.services = services
        if isinstance(limits, str):
            self.limits, self.config_error = Limits(), limits
        else:
            self.limits, self.config_error = limits, None
        # Bytes received and not yet used (at most one partial request), as
        # chunks joined only when a request may be complete: a large body
        # arriving in many reads is copied once, not once per read.
        self.chunks = []
        self.buffered = 0
        self.head = None
        self._date = None
        self._out_len = 0
        # Bytes of responses and PUT bodies so far (for max_moved).
        self._moved = 0

    def feed(self, data):
        """The next bytes of the stream: (bytes to write, close after them)."""
        self._date = None
        head = self.head
        if head is not None and self.buffered + len(data) < head.head_len + head.body_len:
            self.chunks.append(data)
            self.buffered += len(data)
            return b"", False
        if self.chunks:
            self.chunks.append(data)
            buf = b"".join(self.chunks)
        else:
            buf = data
        out = []
        used, close = self._serve(buf, out)
        rest = b"" if close else buf[used:]
        self.chunks = [rest] if rest else []
        self.buffered = len(rest)
        return b"".join(out), close

    def _date_now(self):
        if self._date is None:
            self._date = self.services.date().encode()
        return self._date

    def _serve(self, buf, out):
        at = 0
        # Bytes in `out` so far (for max_output).
        self._out_len = 0
        while True:
            if self.head is None:
                if at >= len(buf):
                    return at, False
                try:
                    head = self._parse_head(buf, at)
                except _Failed as failed:
                    body = ("%s %s\n" % (REASONS[failed.status], failed.why)).encode()
                    out.append(_response(failed.status, self._date_now(), _TEXT, body, False, b"close"))
                    return at, True
                if head is None:
                    return at, False
                self.head = head
            head = self.head
            end = head.head_len + head.body_len
            if len(buf) - at < end:
                if head.expect_continue and head.minor == 1:
                    out.append(b"HTTP/1.1 100 Continue\r\n\r\n")
                head.expect_continue = False
                return at, False
            self.head = None
            body = buf[at + head.head_len:at + end]
            at += end
            if self._respond(head, body, at < len(buf), out):
                return at, True

    def _check_fields(self, lines):
        """Header lines in order, as httparse checks them: the first bad one
        is 400, the one past max_headers 431."""
        most = self.limits.max_headers
        for count, line in enumerate(lines, 1):
            if _FIELD.match(line) is None:
                raise _field_error(line)
            if count > most:
                raise _Failed(431, "too many header fields")

    def _parse_head(self, buf, at):
        """The head at `at`, or None if it has not all arrived. Errors are
        found in the order httparse finds them, with its words: what is wrong
        in the request line even before the head has all arrived; then the
        header lines; then the size (the empty lines before the request line
        count in it, so that they are bounded too)."""
        limits = self.limits
        n = len(buf)
        s = _EMPTY_LINES.match(buf, at).end()
        if s < n and buf[s] == 0x0D and s + 1 < n:
            raise _Failed(400, _BAD_NEW_LINE)
        end = -1 if s >= n - 1 else _head_end(buf, s)
        if end == -1:
            line = _request_line(buf, s) if s < n and buf[s] != 0x0D else None
            if n - at > limits.max_header_bytes:
                if line is not None:
                    self._check_fields(buf[line[3]:].split(b"\n")[:-1])
                raise _Failed(431, "request header fields too large")
            return None
        lines = buf[s:end].split(b"\n")
        m = _REQUEST_LINE.match(lines[0])
        if m is not None:
            method, target, minor = m.group(1, 2, 3)
            try:
                target = target.decode("utf-8")
            except UnicodeDecodeError:
                raise _Failed(400, _BAD_TOKEN) from None
            minor = 1 if minor == b"1" else 0
        else:
            # A whole line: this raises (or agrees with the regex after all).
            line = _request_line(buf, s)
            if line is None:
                raise _Failed(400, _BAD_NEW_LINE)
            method, target, minor, _ = line
        # The last two items are the blank line and the empty rest.
        fields = lines[1:-2]
        matches = [_FIELD.match(line) for line in fields]
        if len(fields) > limits.max_headers or None in matches:
            self._check_fields(fields)
        if end - at > limits.max_header_bytes:
            raise _Failed(431, "request header fields too large")
        head_len = end - at
        body_len = None
        chunked = close = keep_alive = False
        expect_continue = False
        hosts = 0
        for f in matches:
            name, value = f.group(1, 2)
            value = value.strip(b" \t")
            name = name.lower()
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                n = _parse_length(value)
                if n is None:
                    raise _Failed(400, "Content-Length is not a number")
                if body_len is not None and body_len != n:
                    raise _Failed(400, "two different Content-Length values")
                body_len = n
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection":
                for token in value.split(b","):
                    token = token.strip(b" \t").lower()
                    close |= token == b"close"
                    keep_alive |= token == b"keep-alive"
            elif name == b"expect":
                if value.lower() != b"100-continue":
                    raise _Failed(417, "only Expect: 100-continue is understood")
                expect_continue = True
        if chunked and body_len is not None:
            raise _Failed(400, "both Content-Length and Transfer-Encoding")
        if chunked:
            raise _Failed(411, "a body needs Content-Length (Transfer-Encoding is not served)")
        if hosts > 1 or (minor == 1 and hosts == 0):
            raise _Failed(400, "exactly one Host header is required in HTTP/1.1")
        body_len = body_len or 0
        if body_len > limits.max_body:
            raise _Failed(413, "the body is over %d bytes (max-body)" % limits.max_body)
        path = _origin_path(target)
        if path is None:
            raise _Failed(400, "the request target is not a path")
        head = _Head()
        head.method = method
        head.path = path
        head.head_len = head_len
        head.body_len = body_len
        head.keep_alive = not close and (minor == 1 or keep_alive)
        head.say_keep_alive = minor == 0 and keep_alive and not close
        head.expect_continue = expect_continue and body_len > 0
        head.minor = minor
        return head

    def _respond(self, head, body, more, out):
        """Route a complete request and add its response; True if the
        connection closes after it. `more`: bytes of the read follow it."""
        status, headers, payload = self._route(head, body)
        head_only = head.method == b"HEAD"
        # Past max_output with requests still to answer: this response is the
        # last, so that one read cannot make the plugin build an output of
        # (pipelined requests x value size). Its head is not counted.
        sent = 0 if head_only else len(payload)
        full = more and self._out_len + sent > self.limits.max_output
        self._moved += sent + (len(body) if head.method == b"PUT" else 0)
        max_moved = self.limits.max_moved
        if max_moved is not None and self._moved > max_moved:
            full = True
        if not head.keep_alive or full:
            conn = b"close"
        elif head.say_keep_alive:
            conn = b"keep-alive"
        else:
            conn = None
        response = _response(status, self._date_now(), headers, payload, head_only, conn)
        self._out_len += len(response)
        out.append(response)
        return conn == b"close"

    def _route(self, head, body):
        if self.config_error is not None:
            return _text(500, ("Internal Server Error: %s\n" % self.config_error).encode())
        method, path = head.method, head.path
        if path == "/":
            if method in (b"GET", b"HEAD"):
                return _text(200, b"Hello, World!\n")
            return _not_allowed(b"GET, HEAD")
        if not path.startswith("/kv/") or len(path) == 4:
            return _text(404, b"Not Found\n")
        try:
            key = _percent_decode(path[4:])
        except ValueError as e:
            return _text(400, ("Bad Request: %s\n" % e).encode())
        services = self.services
        try:
            if method in (b"GET", b"HEAD"):
                value = services.get(key)
                if value is None:
                    return _text(404, b"Not Found\n")
                return 200, _OCTETS, value
            if method == b"PUT":
                existed = services.exists(key)
                services.set(key, body)
                return (204, (), b"") if existed else _text(201, b"Created\n")
            if method == b"DELETE":
                services.delete(key)
                return 204, (), b""
        except KvError as e:
            text = str(e)
            if "--kv-max-key" in text:
                status = 414
            elif "--kv-max-value" in text:
                status = 413
            elif "--kv-max-bucket-bytes" in text:
                status = 507
            else:
                status = 500
            return _text(status, ("%s: store: %s\n" % (REASONS[status], text)).encode())
        return _not_allowed(b"GET, HEAD, PUT, DELETE")
