"""echo-py: the echo plugin, in Python (a sockets:plugin@0.1.0 `handler`).

It replies with the payload's bytes unchanged: an empty payload gets an empty
reply, `ok(some(b""))`, not `ok(none)`. It does nothing else, so that
`bench languages` measures what Python itself costs a request (the
interpreter's instance, the bindings' copies) and not the work of a plugin.

Built with componentize-py (see build.sh), which looks for a class named
`WitWorld` in this module implementing the world's exports; the bindings
(`wit_world`) are generated at build time.
"""

from wit_world import WitWorld as _WitWorldProtocol
from wit_world.imports import types


class WitWorld(_WitWorldProtocol):
    def handle(self, req: types.Request) -> bytes:
        # `list<u8>` arrives as `bytes`; returning bytes is `ok(some(bytes))`.
        return req.payload
