"""json-summary: a sockets:plugin@0.1.0 `handler` plugin written in Python.

The payload of each request (one UDP datagram, or one TCP frame with the
framing already removed by the host) is parsed as UTF-8 JSON, and the reply is
a compact JSON object that summarises it:

    {"a":1,"b":[1,2]}   ->  {"type":"object","keys":["a","b"],"bytes":17}
    [1,2,3]             ->  {"type":"array","length":3,"bytes":7}
    "hi"                ->  {"type":"string","bytes":4}
    42 / true / null    ->  {"type":"number"|"boolean"|"null","bytes":N}

`bytes` is always the length of the payload in bytes (not characters).
Object keys are listed in document order; a key repeated in the document is
listed once, at its first position (Python's dict semantics).

Payloads that cannot be summarised still get a reply, a JSON object with an
`error` member, so a client always learns why:

    (empty)             ->  {"error":"empty","bytes":0}
    b"\\xff\\xfe\\x00"      ->  {"error":"not utf-8","bytes":3}
    {"a":               ->  {"error":"invalid json: Expecting value: line 1 column 6 (char 5)","bytes":5}
    [[[[... (> 512 deep) -> {"error":"too deeply nested (limit 512)","bytes":N}
    NaN                 ->  {"error":"invalid json: non-standard constant NaN","bytes":3}
    (4301+ digit int)   ->  {"error":"invalid json: integer too long","bytes":N}

The error messages are deterministic: fixed strings, or Python's own `json`
messages (line, column and character offset of the problem), which depend
only on the payload.

Output encoding (one fixed rule, so replies are byte-for-byte predictable):
`json.dumps(..., separators=(",", ":"), ensure_ascii=False)` encoded as UTF-8.
Non-ASCII keys are therefore sent as raw UTF-8 (`{"é":"ü"}` ->
`{"type":"object","keys":["é"],"bytes":11}`), never as `\\u00e9` escapes. The
one exception: a key that contains a lone UTF-16 surrogate (legal in JSON as
`"\\ud800"`, but not encodable as UTF-8) keeps its `\\udXXX` escape, so the
reply is always valid UTF-8 and valid JSON.

Build with componentize-py (see build.sh and README.md). componentize-py
looks for a class named `WitWorld` in this module that implements the world's
exports; the generated bindings live in the `wit_world` package.
"""

import json
import re
from array import array
from itertools import accumulate

from componentize_py_types import Err
from wit_world import WitWorld as _WitWorldProtocol
from wit_world.imports import log, types

# Deepest nesting of arrays/objects that is parsed. Python's C JSON parser
# recurses once per level, and inside WebAssembly running out of stack is not
# a catchable RecursionError but a trap that kills the request (measured: a
# trap between 1,500 and 3,000 levels under the host's default wasm stack).
# Real JSON is far shallower; deeper payloads get a "too deeply nested" reply.
MAX_DEPTH = 512

# A JSON string literal (escapes included), so brackets inside strings are
# not counted as nesting.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# bytes.translate table: "[" and "{" become 0x01, "]" and "}" become 0xff,
# which array("b") reads as +1 and -1. Every other byte is deleted.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[{]}")


def _too_deep(payload: bytes) -> bool:
    """True if the payload nests arrays/objects deeper than MAX_DEPTH.

    Runs in C-implemented builtins only (regex, translate, accumulate, max),
    so it stays fast for a 1 MiB payload even inside WebAssembly.
    """
    if payload.count(b"[") + payload.count(b"{") <= MAX_DEPTH:
        return False  # cannot be deeper than the number of openers
    steps = array("b", _STRING.sub(b"", payload).translate(_BRACKETS, _NOT_BRACKETS))
    return max(accumulate(steps), default=0) > MAX_DEPTH


class _NonStandard(ValueError):
    """Raised for NaN, Infinity and -Infinity, which Python's parser accepts by
    default but RFC 8259 JSON does not have."""


def _reject_constant(name: str):
    raise _NonStandard(f"non-standard constant {name}")


def _type_name(value) -> str:
    """The JSON type of a value returned by json.loads."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _encode(obj) -> bytes:
    """Serialise a reply with the plugin's single, fixed output rule."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    # Lone surrogates (only possible inside object keys) cannot be UTF-8
    # encoded; "backslashreplace" turns each into the same `\udXXX` escape that
    # the client sent, which is valid inside a JSON string.
    return text.encode("utf-8", errors="backslashreplace")


def summarise(payload: bytes) -> dict:
    """Build the summary (or error) object for one payload.

    Pure function: the reply depends on the payload alone.
    """
    size = len(payload)
    if size == 0:
        return {"error": "empty", "bytes": 0}
    try:
        text = payload.decode("utf-8")  # strict: any invalid byte fails
    except UnicodeDecodeError:
        return {"error": "not utf-8", "bytes": size}
    if _too_deep(payload):
        return {"error": f"too deeply nested (limit {MAX_DEPTH})", "bytes": size}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        # str(e) is e.g. "Expecting value: line 1 column 1 (char 0)".
        return {"error": f"invalid json: {e}", "bytes": size}
    except RecursionError:  # a safety net: _too_deep should catch this first
        return {"error": f"too deeply nested (limit {MAX_DEPTH})", "bytes": size}
    except _NonStandard as e:
        return {"error": f"invalid json: {e}", "bytes": size}
    except ValueError:
        # An integer literal longer than Python's int-conversion limit (4300
        # digits); Python's own message is long and names a Python API.
        return {"error": "invalid json: integer too long", "bytes": size}

    kind = _type_name(value)
    summary = {"type": kind}
    if kind == "object":
        summary["keys"] = list(value.keys())
    elif kind == "array":
        summary["length"] = len(value)
    summary["bytes"] = size
    return summary


class WitWorld(_WitWorldProtocol):
    """The export of world `handler`: `handle(req) -> result<option<list<u8>>, string>`.

    Returning bytes means `ok(some(bytes))`; raising `Err(msg)` means
    `err(msg)`. This plugin always replies, so it never returns None.
    """

    def handle(self, req: types.Request) -> bytes:
        # The one use of the `log` import: a debug line per request. The host's
        # RUST_LOG filter decides whether it is kept.
        transport = "udp" if req.transport == types.Transport.UDP else "tcp"
        log.log(
            log.Level.DEBUG,
            f"json-summary: {len(req.payload)} bytes over {transport} from {req.peer}",
        )
        try:
            return _encode(summarise(bytes(req.payload)))
        except Exception as e:  # a bug here: let the host log it, reply nothing
            raise Err(f"json-summary internal error: {type(e).__name__}: {e}")
