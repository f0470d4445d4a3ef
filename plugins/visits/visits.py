"""The logic of the `visits` plugin, without any WebAssembly bindings.

Pure Python (no `wit_world` import), so that it can be unit-tested with a plain
`python3` (see test_visits.py); app.py connects it to the host's imports
(wasi:keyvalue, wasi:config, wasi:logging) and exports `handle`.

One request, one visit:

- The payload is a name: UTF-8, with leading and trailing whitespace removed
  (`str.strip()`, so Unicode whitespace too, and the `\\r` of a CRLF line).
  An empty name is `world`.
- A name that is not UTF-8 is answered `name is not utf-8`; a name longer
  than MAX_NAME bytes (UTF-8, after stripping) `name too long`. Neither
  touches the store or the configuration.
- Otherwise the configuration variable `greeting` is read (missing:
  `hello`), the counter `visits/NAME` of bucket `default` is incremented by 1
  (atomically, by the host), and the reply is `GREETING, NAME! visit N`.
  One info line `NAME visit N` is logged (context `visits`).
- A store error is answered `store unavailable: DETAIL`, DETAIL being
  `no-such-store`, `access-denied` or the text of `other(...)`; a
  configuration error `config unavailable: TEXT` (the text of `upstream(...)`
  or `io(...)`). The configuration is read first, so a configuration error
  counts no visit.

Replies carry no trailing newline: on a TCP listener with `--framing lines`
the host adds the `\\n` (as for every `handler` plugin: see the README's
`--framing`), and a UDP reply is one datagram.
"""

from typing import Optional, Protocol

# Longest name accepted, in UTF-8 bytes after stripping whitespace.
MAX_NAME = 200

# The name used when the payload is empty (or only whitespace).
DEFAULT_NAME = "world"

# The greeting used when the configuration has no `greeting` variable.
DEFAULT_GREETING = "hello"

# The configuration variable holding the greeting.
GREETING_VAR = "greeting"

# The bucket the counters live in, and the prefix of their keys.
BUCKET = "default"
KEY_PREFIX = "visits/"


class StoreError(Exception):
    """The key-value store failed; `detail` is what the reply shows."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ConfigError(Exception):
    """The configuration store failed; `detail` is what the reply shows."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Services(Protocol):
    """What `visit` needs from the host (app.py wraps the real imports)."""

    def config_get(self, key: str) -> Optional[str]:
        """The configuration variable `key`, or None; raises ConfigError."""
        ...

    def increment(self, bucket: str, key: str, delta: int) -> int:
        """Open `bucket`, add `delta` to `key`, return the new value; raises StoreError."""
        ...

    def log_info(self, context: str, message: str) -> None:
        """One info line for the host's log."""
        ...


def parse_name(payload: bytes) -> "str | bytes":
    """The name in a payload (a str), or the reply refusing it (bytes)."""
    try:
        name = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return b"name is not utf-8"
    if len(name.encode("utf-8")) > MAX_NAME:
        return b"name too long"
    return name or DEFAULT_NAME


def visit(payload: bytes, services: Services) -> bytes:
    """Handle one request: the reply bytes (never raises StoreError/ConfigError)."""
    name = parse_name(payload)
    if isinstance(name, bytes):
        return name
    try:
        greeting = services.config_get(GREETING_VAR)
    except ConfigError as e:
        return f"config unavailable: {e.detail}".encode("utf-8")
    if greeting is None:
        greeting = DEFAULT_GREETING
    try:
        n = services.increment(BUCKET, KEY_PREFIX + name, 1)
    except StoreError as e:
        return f"store unavailable: {e.detail}".encode("utf-8")
    services.log_info("visits", f"{name} visit {n}")
    return f"{greeting}, {name}! visit {n}".encode("utf-8")

