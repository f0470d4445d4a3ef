"""numbered: a sockets:plugin@0.2.0 `connection-handler` plugin in Python.

Every line of a connection is answered with its number; see numbered.py for
the protocol, and README.md.

componentize-py 0.25 binds an exported resource by name: the world exports
interface `connection`, which holds resource `session`, so the implementation
must be a class `Session` (the resource in PascalCase) in a top-level module
named `connection` (the interface in snake_case), i.e. this file. The WIT
constructor is `__init__`, the methods are `on_data` and `on_end`
(snake_case); returning a value is `ok(..)`, raising
`componentize_py_types.Err(message)` is `err(message)`, and the record
`output` is the dataclass `connection.Output(bytes=..., close=...)`. The
host dropping the session needs no code: there is no destructor to write.
"""

from componentize_py_types import Err
from wit_world.exports import connection
from wit_world.imports import log

from numbered import LineTooLong, Numbered


class Session(connection.Session):
    """One TCP connection."""

    def __init__(self, info: connection.ConnectionInfo) -> None:
        log.log(log.Level.DEBUG, f"numbered: open {info.peer}")
        self._state = Numbered()

    def on_data(self, data: bytes) -> connection.Output:
        try:
            out, close = self._state.feed(data)
        except LineTooLong:
            raise Err("line too long")
        return connection.Output(bytes=out, close=close)

    def on_end(self) -> bytes:
        return self._state.end()
