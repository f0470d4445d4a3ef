"""http-py: an HTTP/1.1 server as a `connection-handler` plugin in Python
(world `connection-handler` of wit/services: sockets:plugin@0.2.0's
connection world plus wasi:keyvalue, wasi:config and wasi:logging).

The same server as the Rust plugin in plugins/http: `GET /` says hello,
`GET`/`HEAD`/`PUT`/`DELETE /kv/{key}` use bucket `default`. The protocol is
in http_proto.py (pure Python, unit-tested); this module connects it to the
host: the session resource, the store, the clock and the limits from
`wasi:config` (`max-body`, `max-header-bytes`, `max-headers`, `max-output`).

`max-connection-bytes` (default 32 MiB) works around a leak in
componentize-py 0.25.1: every `bytes` a Python plugin hands to the host (the
`bytes` of `on_data`'s Output, the value of a wasi:keyvalue `set`) is copied
into linear memory that is never freed (componentize-py's runtime/src/lib.rs,
`impl Call for MyCall`, `maybe_pop_list`: `alloc::alloc` and a copy, not
registered with `defer_deallocate`; wit-dylib's list lowering takes that
pointer as is and defers no free for it). Nothing in Python can free it, so a
connection's instance would trap at `--max-memory` after about 55 MB. The
response that takes the connection's responses and stored values past the
limit says `Connection: close` and the plugin closes: the client reconnects
to a fresh instance instead of losing a response to a trap.

componentize-py 0.25 binds the exported resource `session` of interface
`connection` as class `Session` in a top-level module named `connection`
(this file); `on_data` returns the dataclass `connection.Output`.
"""

import time

from wit_world.exports import connection
from wit_world.imports import log, wasi_config_store, wasi_keyvalue_store

from http_proto import DEFAULT_MAX_BODY, DEFAULT_MAX_MOVED, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS, DEFAULT_MAX_OUTPUT
from http_proto import MAX_HEADERS_CAP
from http_proto import Http, KvError, Limits

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HUGE = 1 << 62


def _limits():
    """The limits from wasi:config, or a str saying which value is unusable."""

    def var(name, default, most):
        try:
            text = wasi_config_store.get(name)
        except Exception as e:  # componentize_py_types.Err(Error_Upstream | Error_Io)
            return None, "wasi:config %s: %r" % (name, getattr(e, "value", e))
        if text is None:
            return default, None
        try:
            n = int(text.strip())
        except ValueError:
            n = 0
        if not 0 < n <= most:
            return None, "wasi:config %s=%r is not a whole number from 1 to %d" % (name, text, most)
        return n, None

    values = []
    for name, default, most in (("max-body", DEFAULT_MAX_BODY, _HUGE),
                                ("max-header-bytes", DEFAULT_MAX_HEADER_BYTES, _HUGE),
                                ("max-headers", DEFAULT_MAX_HEADERS, MAX_HEADERS_CAP),
                                ("max-output", DEFAULT_MAX_OUTPUT, _HUGE),
                                ("max-connection-bytes", DEFAULT_MAX_MOVED, _HUGE)):
        n, error = var(name, default, most)
        if error is not None:
            return error
        values.append(n)
    return Limits(*values)


def _store_error(e):
    """The text of a wasi:keyvalue error (raised as Err(variant))."""
    value = getattr(e, "value", None)
    if isinstance(value, wasi_keyvalue_store.Error_Other):
        return value.value
    if isinstance(value, wasi_keyvalue_store.Error_AccessDenied):
        return 'access to bucket "default" denied (--kv-bucket)'
    if isinstance(value, wasi_keyvalue_store.Error_NoSuchStore):
        return "no such store"
    return repr(e)


class HostServices:
    """Bucket `default` (opened at the connection's first key-value request
    and kept) and the clock, as http_proto.Http wants them."""

    def __init__(self):
        self._bucket = None
        # The last Date made and its second: formatted once a second.
        self._second = -1
        self._date = ""

    def _open(self):
        if self._bucket is None:
            try:
                self._bucket = wasi_keyvalue_store.open("default")
            except Exception as e:
                raise KvError(_store_error(e)) from None
        return self._bucket

    def _call(self, name, *args):
        bucket = self._open()
        try:
            return getattr(bucket, name)(*args)
        except KvError:
            raise
        except Exception as e:
            raise KvError(_store_error(e)) from None

    def get(self, key):
        return self._call("get", key)

    def exists(self, key):
        return self._call("exists", key)

    def set(self, key, value):
        return self._call("set", key, value)

    def delete(self, key):
        return self._call("delete", key)

    def date(self):
        second = int(time.time())
        if second != self._second:
            t = time.gmtime(second)
            self._second = second
            self._date = "%s, %02d %s %d %02d:%02d:%02d GMT" % (
                _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)
        return self._date


class Session(connection.Session):
    """One TCP connection."""

    def __init__(self, info: connection.ConnectionInfo) -> None:
        limits = _limits()
        if isinstance(limits, str):
            log.log(log.Level.ERROR, limits)
        self._http = Http(HostServices(), limits)

    def on_data(self, data: bytes) -> connection.Output:
        out, close = self._http.feed(data)
        return connection.Output(bytes=out, close=close)

    def on_end(self) -> bytes:
        return b""
