"""The protocol of the `numbered` plugin, without any WebAssembly bindings.

Pure Python (no `wit_world` import), so that it can be unit-tested with a plain
`python3` (see test_numbered.py); connection.py wraps it in the exported
`session` resource.

Protocol, per connection:

- A line is the bytes before a `\\n` (any bytes; `\\r` is not special and is
  part of the line). Bytes after the last `\\n` are kept until the rest of
  their line arrives, however the stream is split into calls.
- Every line is answered `N LINE\\n`, N counting this connection's lines
  from 1 (decimal ASCII), LINE the line's bytes unchanged.
- The line `quit` (exactly these 4 bytes) is answered `bye\\n`, and the
  connection is closed after it; later lines in the same call are ignored.
- End of stream: `N lines\\n`, N the number of lines answered (`0 lines`,
  `1 lines`, ...). A partial line at the end (no `\\n`) is dropped, not counted.
- A line longer than MAX_LINE bytes (without its `\\n`) raises LineTooLong,
  as soon as it is known: when the partial line kept between calls grows past
  the limit, or when a complete line over the limit arrives in one call. The
  lines before it in the same call are not answered (the whole call fails).
"""

# Longest line accepted, in bytes, not counting its `\n`.
MAX_LINE = 64 * 1024


# The reply to a line: `%d %s\n` % (number, line).
_NUMBERED_LINE = b"%d %s\n"


class LineTooLong(Exception):
    """A line is longer than MAX_LINE bytes."""


class Numbered:
    """The state of one connection: lines answered, and a partial line."""

    def __init__(self) -> None:
        self.lines = 0
        self._partial = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Take the next bytes of the stream; return (bytes to write, close?)."""
        last = data.rfind(b"\n")
        if last < 0:
            self._partial += data
            if len(self._partial) > MAX_LINE:
                raise LineTooLong()
            return b"", False
        # Everything up to the last newline is complete lines.
        if self._partial:
            self._partial += data[:last]
            complete = bytes(self._partial)
        else:
            complete = data[:last]
        rest = data[last + 1 :]
        lines = complete.split(b"\n")
        # A `quit` line ends the connection: the lines after it are ignored
        # (even one over the limit).
        try:
            del lines[lines.index(b"quit") + 1 :]
            close = True
        except ValueError:
            close = False
        if max(map(len, lines)) > MAX_LINE:
            raise LineTooLong()
        first = self.lines + 1
        self.lines += len(lines)
        if close:
            lines.pop()
        # One C-level pass (map over zip, no Python bytecode per line): about
        # 25% faster than a for loop for many short lines.
        out = b"".join(map(_NUMBERED_LINE.__mod__, zip(range(first, first + len(lines)), lines)))
        if close:
            self._partial = bytearray()
            return out + b"bye\n", True
        if len(rest) > MAX_LINE:
            raise LineTooLong()
        self._partial = bytearray(rest)
        return out, False

    def end(self) -> bytes:
        """The peer closed its side: the last bytes to write."""
        return b"%d lines\n" % self.lines
